//! The HTTP server: accepting connections, their limits, and a bounded graceful shutdown.
//!
//! Owns how connections are served, not what is answered (that is [`crate::api`]). Every limit
//! that keeps a misbehaving client from hurting the health checks lives here: a cap on open
//! connections with slots kept for the members ([`MEMBER_RESERVE`]), a cap per client address
//! (`max_connections_per_client`, [`Clients`]), a cap on request-head size, a deadline for
//! each request head that also closes idle keep-alive connections (`idle_timeout`, kept by
//! one timer per connection: [`Activity`]), the
//! refusal of request bodies (no endpoint takes one) and of request targets without a path
//! ([`refusal`]), and a deadline for draining at shutdown. The accounting is per connection
//! (at accept and at its end), never per request. A member's connections may be served on a
//! runtime of their own ([`Policy::members_on`]), so that a flood from other clients does not
//! delay the peer protocol.
//! With TLS (`tls_cert_file`), each connection's handshake comes first, under the same timeout
//! as a request head, in the connection's own task.
//! What is answered comes in as a tower service per connection (the API's warp filters,
//! `warp::service(routes)`), run by hyper-util's `TowerToHyperService` behind those limits,
//! and, in front of it, an optional [`Direct`] answer: the health check, answered from what
//! the API holds without going through the service (the service answers everything else).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future;
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::service::{Service as _, service_fn};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;
use tracing::{debug, warn};

/// The default `idle_timeout`: a connection that does not send a complete request head within
/// this time of its start or of its last request is closed ([`Activity`]). The same deadline
/// runs while a keep-alive connection sits idle between requests, so it is also the idle
/// timeout. Longer than the peer client's pool idle time ([`crate::peers::POOL_IDLE_TIMEOUT`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) accepted; a larger one gets 431 and the
/// connection is closed.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most connections served at once; past it new connections are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// Of [`MAX_CONNECTIONS`], the slots only the members' addresses may take: other clients
/// together hold at most `MAX_CONNECTIONS - MEMBER_RESERVE`, so a member's vote request is
/// never refused because others hold every slot. A member keeps a few pooled connections to
/// each peer; 128 is room for a large cluster.
pub const MEMBER_RESERVE: usize = 128;

/// Length of the kernel's queue of connections not yet accepted ([`bind`]). The default of
/// the standard library and tokio (128) overflows under a burst of connects; an overflowed
/// queue drops the SYN of a health check, which then waits a full second for the
/// retransmission, and fails. 4096 is Linux's default `net.core.somaxconn` (since 5.4), which
/// caps it: a client reconnecting as fast as it can must outrun the accept loop by 4,096
/// connections before another client's SYN is dropped (one client's 4,500 held connections
/// reopened every 500 ms, `tests/flood.rs`, are about 8,500 connects a second).
pub const LISTEN_BACKLOG: u32 = 4096;

/// How long in-flight requests may take to finish after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(1500);

/// Binds the listening socket with a queue of [`LISTEN_BACKLOG`] pending connections.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What the server asks of the daemon at each accept (never per request): the limits in force
/// and whether a client address is a member's.
pub trait Clients: Send + Sync + 'static {
    /// `max_connections_per_client` and `idle_timeout` in force.
    fn limits(&self) -> Limits;
    /// Whether `ip` is a member's address (its peer requests come from it).
    fn is_member(&self, ip: IpAddr) -> bool;
}

/// The limits in force for new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections one client address holds at once.
    pub per_client: usize,
    /// [`IDLE_TIMEOUT`] as configured (`idle_timeout`).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    /// The defaults of `max_connections_per_client` and `idle_timeout`.
    fn default() -> Limits {
        Limits {
            per_client: 256,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// No member known, the default limits: what [`serve`] runs with.
struct Defaults;

impl Clients for Defaults {
    fn limits(&self) -> Limits {
        Limits::default()
    }
    fn is_member(&self, _: IpAddr) -> bool {
        false
    }
}

/// How [`serve_with`] admits and places connections.
pub struct Policy {
    /// The limits in force and the members' addresses.
    pub clients: Arc<dyn Clients>,
    /// Where the members' connections are served: a runtime of their own (the poller's), so a
    /// flood from other clients delays neither the votes this node gives nor the ones it asks.
    /// None: on the caller's runtime, like every other connection.
    pub members_on: Option<tokio::runtime::Handle>,
    /// The listener's TLS configuration ([`crate::tls::ServerTls::config`]): every admitted
    /// connection is then served over TLS. Its handshake, in the connection's own task and
    /// holding its slot, must end within the idle timeout (the time a client has for its
    /// request head), or the connection is closed; a client that does not speak TLS fails the
    /// handshake and is closed. The certificate is resolved at each handshake, so a reload's
    /// renewed one applies without a new listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Requests answered in front of the service ([`Direct`]); None: the service answers all.
    pub direct: Option<Arc<dyn Direct>>,
}

/// An answer the server gives in front of the tower service: the API's health check
/// ([`crate::api::App`]'s), answered from what the API holds at once, without the service's
/// routing. Everything it does not answer (`None`) goes to the service, which stays the one
/// place every endpoint is defined; what it answers must be what the service would answer
/// (status, headers, body, counters), which the API's tests compare.
pub trait Direct: Send + Sync + 'static {
    /// The reply to a request without a body (the server refused any other) for `method
    /// uri` with `headers`, received at `now` (read before anything else of the request), or
    /// None when the service answers it.
    fn answer_now(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        now: Instant,
    ) -> Option<Response<Full<Bytes>>>;
}

/// When a connection last began a request, for its idle deadline: a connection that sends no
/// complete request head within the idle timeout of its start or of its last request's start
/// is closed (by the server's `idle_deadline`, one timer per connection). hyper's own
/// `header_read_timeout` arms a new timer for every request head (an allocation and two
/// updates of the runtime's timer wheel per request); this is a store per request and one
/// timer per connection, re-armed only when it fires. A request still being answered (a
/// `/realPrimary` fan-out) keeps the connection open; the time a response takes to be written
/// counts as idle time.
pub struct Activity {
    /// When the connection began to be served (after its TLS handshake, if any).
    start: Instant,
    /// The last request's start, in nanoseconds after `start`.
    last: AtomicU64,
    /// Requests whose answer is not ready yet.
    busy: AtomicU32,
}

impl Activity {
    fn new(start: Instant) -> Activity {
        Activity {
            start,
            last: AtomicU64::new(0),
            busy: AtomicU32::new(0),
        }
    }

    /// A request began at `now`: one relaxed store (only the connection's task writes).
    fn began(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.start).as_nanos() as u64;
        self.last.store(nanos, Ordering::Relaxed);
    }

    /// When the connection must be closed if no request begins before, as seen at `now`; None:
    /// it is due now.
    fn due(&self, idle: Duration, now: Instant) -> Option<Instant> {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return Some(now + idle);
        }
        let due = self.deadline(idle);
        (due > now).then_some(due)
    }

    /// The idle timeout after the last request's start (or the connection's).
    fn deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed)) + idle
    }
}

/// A request whose answer is not ready yet: keeps its connection from being closed as idle.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Drives `conn` until it ends, or until [`Activity::due`] says it has been idle for `idle`:
/// then it is dropped, which closes the connection (None). The timer is polled only when it
/// has fired or the task's waker changed, not at every wake of the connection: an elapsed
/// check (one atomic load) and a waker comparison per poll.
async fn idle_deadline<C: Future>(
    conn: C,
    activity: &Activity,
    idle: Duration,
) -> Option<C::Output> {
    let sleep = tokio::time::sleep_until(activity.deadline(idle).into());
    tokio::pin!(conn);
    tokio::pin!(sleep);
    // The waker the timer holds (None: not registered yet).
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let current = registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()) && !sleep.is_elapsed());
        if current {
            return Poll::Pending;
        }
        while sleep.as_mut().poll(cx).is_ready() {
            match activity.due(idle, Instant::now()) {
                Some(later) => sleep.as_mut().reset(later.into()),
                None => return Poll::Ready(None),
            }
        }
        registered = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// [`serve_with`] with the default limits, no members and every connection on the caller's
/// runtime, over TLS with `tls`.
pub async fn serve<M, S, B, F>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    service_for: M,
    shutdown: F,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: Future<Output = ()> + Send,
{
    let policy = Policy {
        clients: Arc::new(Defaults),
        members_on: None,
        tls,
        direct: None,
    };
    serve_with(listener, service_for, shutdown, policy).await
}

/// Serves on `listener` until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (at most [`DRAIN_TIMEOUT`]) and returns. Each connection is answered by the
/// tower service that `service_for` makes for its client (the API's is
/// `warp::service(routes)`, see [`crate::api`]), run as a hyper service by hyper-util's
/// [`TowerToHyperService`]. Requests the server refuses itself ([`refusal`]) never reach it;
/// those it lets through carry no body, and reach it with an empty one. Connections are
/// admitted by [`ClientAdmission`] under `policy`'s limits, and a member's is served where
/// `policy` says.
pub async fn serve_with<M, S, B, F>(
    listener: TcpListener,
    service_for: M,
    shutdown: F,
    policy: Policy,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: Future<Output = ()> + Send,
{
    let graceful = GracefulShutdown::new();
    let mut admit = ClientAdmission::new(policy.clients);
    let tls = policy.tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);

    loop {
        let (stream, client, slot) = tokio::select! {
            _ = &mut shutdown => break,
            admitted = admit.next(&listener) => admitted,
        };
        let _ = stream.set_nodelay(true);
        // A member's connection moves to the members' runtime: registered with its reactor
        // and driven by its thread.
        let place = policy.members_on.as_ref().filter(|_| slot.member);
        let stream = match place {
            None => stream,
            Some(runtime) => {
                let moved = stream.into_std().and_then(|std| {
                    let _entered = runtime.enter();
                    TcpStream::from_std(std)
                });
                match moved {
                    Ok(stream) => stream,
                    Err(e) => {
                        debug!("a member's connection could not be moved: {e}");
                        continue;
                    }
                }
            }
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        // No hyper timer: the head deadline is the connection's [`Activity`] (`idle_deadline`).
        http.header_read_timeout(None)
            // Without max_header_size a head that arrives in one read is parsed whatever its
            // size; max_buf_size only bounds the buffer while a head is still incomplete.
            .max_header_size(MAX_HEAD_BYTES)
            .max_buf_size(MAX_HEAD_BYTES)
            .keep_alive(true)
            // One buffer and one write(2) per answer: hyper copies the body (19 bytes for a
            // health check) behind the head instead of queueing both for writev(2), which
            // costs about 430 fewer instructions per `/state` (docs/benchmarks.md). The bytes
            // on the wire are the same.
            .writev(false);
        let service = TowerToHyperService::new(service_for(client));
        let direct = policy.direct.clone();
        let activity = Arc::new(Activity::new(Instant::now()));
        let watched = Arc::clone(&activity);
        // No yield of our own per request: hyper's dispatcher gives way after 16 requests
        // read in one go from a pipelining client, and tokio's budget bounds a task's reads
        // and writes; either alone keeps a health check on another connection from waiting
        // behind the pipeline (`a_pipelining_client_never_keeps_a_health_check_waiting`).
        let gate = service_fn(move |request: Request<Incoming>| {
            // The one clock read of the request: its start for the idle deadline, and the
            // instant a direct answer is decided at.
            let now = Instant::now();
            activity.began(now);
            let direct = match refusal(&request) {
                Some(refused) => Some(refused),
                None => direct.as_ref().and_then(|d| {
                    d.answer_now(request.method(), request.uri(), request.headers(), now)
                }),
            };
            if let Some(reply) = direct {
                drop(request);
                return future::Either::Left(future::ready(Ok(reply.map(Either::Left))));
            }
            // No body (the refusal saw its end): the service gets an empty one.
            let mut reply = Box::pin(service.call(request.map(|_| Empty::new())));
            // Polled once here, so that a reply ready at once (every one but a fan-out's)
            // drops its request before hyper reads on: a request still alive then holds
            // hyper's read buffer, which hyper must then allocate anew (more than a box for
            // the future costs).
            match reply.as_mut().now_or_never() {
                Some(reply) => {
                    future::Either::Left(future::ready(reply.map(|r| r.map(Either::Right))))
                }
                None => {
                    let busy = Busy::new(&activity);
                    future::Either::Right(
                        async move {
                            let reply = reply.await.map(|r| r.map(Either::Right));
                            drop(busy);
                            reply
                        }
                        .boxed(),
                    )
                }
            }
        });
        if let Some(acceptor) = &tls {
            let (acceptor, http, watcher) = (acceptor.clone(), http.clone(), graceful.watcher());
            let idle = slot.idle_timeout;
            let served = async move {
                match tokio::time::timeout(idle, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let conn = http.serve_connection(TokioIo::new(stream), gate);
                        // The head deadline counts from the end of the handshake.
                        watched.began(Instant::now());
                        match idle_deadline(watcher.watch(conn), &watched, idle).await {
                            Some(Err(e)) => debug!("connection ended with an error: {e}"),
                            Some(Ok(())) => {}
                            None => debug!("{client}: no request head within {idle:?}"),
                        }
                    }
                    Ok(Err(e)) => debug!("{client}: TLS handshake failed: {e}"),
                    Err(_) => debug!("{client}: no TLS handshake within {idle:?}"),
                }
                drop(slot);
            };
            match place {
                Some(runtime) => drop(runtime.spawn(served)),
                None => drop(tokio::spawn(served)),
            }
            continue;
        }
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), gate));
        let idle = slot.idle_timeout;
        let served = async move {
            match idle_deadline(conn, &watched, idle).await {
                Some(Err(e)) => debug!("connection ended with an error: {e}"),
                Some(Ok(())) => {}
                None => debug!("{client}: no request head within {idle:?}"),
            }
            drop(slot);
        };
        match place {
            Some(runtime) => drop(runtime.spawn(served)),
            None => drop(tokio::spawn(served)),
        }
    }

    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("some requests were still running when the drain deadline passed");
    }
}

/// Admits HTTP connections: at most [`MAX_CONNECTIONS`] in all, of which other clients than
/// the members hold at most `MAX_CONNECTIONS - MEMBER_RESERVE`, and at most
/// `max_connections_per_client` per client address. A connection past a limit is closed at
/// once (logged once until that limit admits again: per address for the per-client limit); a
/// failing `accept` (out of file descriptors) backs off instead of spinning.
pub struct ClientAdmission {
    clients: Arc<dyn Clients>,
    tally: Arc<Mutex<Tally>>,
    full_logged: bool,
}

/// Open connections: by client address, and in all for members and for the others.
#[derive(Debug, Default)]
struct Tally {
    by_address: HashMap<IpAddr, usize>,
    members: usize,
    others: usize,
    /// Addresses whose refusal was logged, until one of their connections is admitted again.
    logged: HashSet<IpAddr>,
}

/// An admitted connection's place in the tally, given back when it ends.
pub struct ClientSlot {
    tally: Arc<Mutex<Tally>>,
    ip: IpAddr,
    /// Whether it is a member's.
    pub member: bool,
    /// The idle timeout in force when it was admitted.
    pub idle_timeout: Duration,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut t = lock(&self.tally);
        if let Some(n) = t.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.by_address.remove(&self.ip);
                t.logged.remove(&self.ip);
            }
        }
        if self.member {
            t.members -= 1;
        } else {
            t.others -= 1;
        }
    }
}

/// The tally's lock (a poisoned one is taken as it is: every statement leaves it consistent).
fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// [`MAX_CONNECTIONS`] open (a member), or `MAX_CONNECTIONS - MEMBER_RESERVE` held by others.
    Full,
    /// Its address holds `max_connections_per_client` already.
    PerClient,
}

impl ClientAdmission {
    /// Admission under the limits and members `clients` gives at each accept.
    pub fn new(clients: Arc<dyn Clients>) -> ClientAdmission {
        ClientAdmission {
            clients,
            tally: Arc::default(),
            full_logged: false,
        }
    }

    /// Takes a slot for a connection from `ip`, or says why not.
    pub fn admit(&mut self, ip: IpAddr) -> Result<ClientSlot, Refused> {
        let limits = self.clients.limits();
        let member = self.clients.is_member(ip);
        let mut t = lock(&self.tally);
        let open = t.by_address.get(&ip).copied().unwrap_or(0);
        let full = if member {
            t.members + t.others >= MAX_CONNECTIONS
        } else {
            t.others >= MAX_CONNECTIONS - MEMBER_RESERVE
        };
        if full {
            return Err(Refused::Full);
        }
        if open >= limits.per_client {
            return Err(Refused::PerClient);
        }
        *t.by_address.entry(ip).or_default() += 1;
        if member {
            t.members += 1;
        } else {
            t.others += 1;
        }
        if t.logged.remove(&ip) {
            debug!(client = %ip, "admitting this client's connections again");
        }
        Ok(ClientSlot {
            tally: Arc::clone(&self.tally),
            ip,
            member,
            idle_timeout: limits.idle_timeout,
        })
    }

    /// The next admitted connection, its client, and its slot.
    pub async fn next(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr, ClientSlot) {
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("HTTP: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let ip = client.ip().to_canonical();
            match self.admit(ip) {
                Ok(slot) => {
                    self.full_logged = false;
                    return (stream, client, slot);
                }
                Err(Refused::Full) if !self.full_logged => {
                    warn!(
                        "HTTP: {} connections open ({} kept for the members); closing new \
                         ones until some end",
                        MAX_CONNECTIONS - MEMBER_RESERVE,
                        MEMBER_RESERVE
                    );
                    self.full_logged = true;
                }
                Err(Refused::PerClient) => {
                    if lock(&self.tally).logged.insert(ip) {
                        warn!(
                            client = %ip,
                            "HTTP: {ip} holds max_connections_per_client connections; closing \
                             its new ones until some end"
                        );
                    }
                }
                Err(Refused::Full) => {}
            }
        }
    }
}

/// Accepts connections up to a cap: beyond it, new connections are closed at once (logged once
/// until one is admitted again), and a failing `accept` (out of file descriptors) backs off
/// instead of spinning. Each admitted connection holds a slot until it ends.
pub struct Admission {
    slots: Arc<Semaphore>,
    cap: usize,
    what: &'static str,
    refused_logged: bool,
}

impl Admission {
    /// At most `cap` connections of the `what` listener at once.
    pub fn new(cap: usize, what: &'static str) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            what,
            refused_logged: false,
        }
    }

    /// The next admitted connection, its client, and its slot.
    pub async fn next(
        &mut self,
        listener: &TcpListener,
    ) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("{}: accept failed: {e}", self.what);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    self.refused_logged = false;
                    return (stream, client, slot);
                }
                Err(_) if !self.refused_logged => {
                    warn!(
                        "{}: {} connections open; closing new ones until some end",
                        self.what, self.cap
                    );
                    self.refused_logged = true;
                }
                Err(_) => {}
            }
        }
    }
}

/// The answer the server gives itself, if any: a request that carries a body (a
/// `Content-Length` above zero or any `Transfer-Encoding`) gets 413 without the body being
/// read, since no endpoint takes one and a health check never sends one; a target without a
/// path (the authority form of `CONNECT host:port`, or `GET host`) gets 400. Both close the
/// connection, since the request was not read to its end.
pub fn refusal(request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let (status, body): (_, &'static [u8]) = if !request.body().is_end_stream() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            br#"{"error":"request bodies are not accepted"}"#,
        )
    } else if request.uri().path_and_query().is_none() {
        (
            StatusCode::BAD_REQUEST,
            br#"{"error":"the request target has no path"}"#,
        )
    } else {
        return None;
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends `raw` on a fresh connection and returns everything the server wrote until it
    /// closed the connection.
    async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(raw).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out));
        // A reset after the answer is fine; the bytes read so far are kept.
        let _ = read.await.expect("the server closes the connection");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Answers 200 "ok" to whatever it is given.
    #[derive(Clone)]
    struct Ok200;
    impl Service<Request<Empty<Bytes>>> for Ok200 {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Empty<Bytes>>) -> Self::Future {
            std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
        }
    }

    /// Admission under the default limits (`max_connections_per_client` 256) with the
    /// members 10.0.0.11 and 10.0.0.12.
    struct TwoMembers;
    impl Clients for TwoMembers {
        fn limits(&self) -> Limits {
            Limits::default()
        }
        fn is_member(&self, ip: IpAddr) -> bool {
            ip == IpAddr::from([10, 0, 0, 11]) || ip == IpAddr::from([10, 0, 0, 12])
        }
    }

    #[test]
    fn one_address_cannot_take_the_slots_of_another_nor_the_members() {
        let mut admit = ClientAdmission::new(Arc::new(TwoMembers));
        let per_client = Limits::default().per_client;
        // One address: its own limit, then refused; another address is still admitted.
        let hog = IpAddr::from([10, 0, 0, 99]);
        let mut held: Vec<ClientSlot> = (0..per_client)
            .map(|_| admit.admit(hog).expect("under the per-client limit"))
            .collect();
        assert_eq!(admit.admit(hog).err(), Some(Refused::PerClient));
        let haproxy = IpAddr::from([10, 0, 0, 1]);
        let check = admit.admit(haproxy).expect("another address is admitted");
        drop(check);
        // Many addresses fill the others' share: every further other is refused, members not.
        let mut n = 0u32;
        while held.len() < MAX_CONNECTIONS - MEMBER_RESERVE {
            let ip = IpAddr::from((0x0b00_0000 + n / 200).to_be_bytes());
            held.push(admit.admit(ip).expect("others below their share"));
            n += 1;
        }
        assert_eq!(admit.admit(haproxy).err(), Some(Refused::Full));
        let members: Vec<ClientSlot> = (0..MEMBER_RESERVE)
            .map(|i| {
                let ip = IpAddr::from([10, 0, 0, 11 + (i % 2) as u8]);
                admit.admit(ip).expect("members take the reserve")
            })
            .collect();
        assert!(members.iter().all(|m| m.member));
        assert_eq!(
            admit.admit(IpAddr::from([10, 0, 0, 11])).err(),
            Some(Refused::Full),
            "the cap holds for members too"
        );
        // Slots come back when connections end.
        held.truncate(0);
        drop(members);
        let t = lock(&admit.tally);
        assert_eq!((t.members, t.others, t.by_address.len()), (0, 0, 0));
        println!(
            "admission: {per_client} per client, {} for others, {MEMBER_RESERVE} kept for members",
            MAX_CONNECTIONS - MEMBER_RESERVE
        );
    }

    /// The bounds the configuration validates against are this server's and the peer
    /// client's; the defaults of [`Limits`] are the keys' defaults.
    #[test]
    fn the_configurations_bounds_and_defaults_are_the_servers() {
        assert_eq!(
            crate::config::MOST_CONNECTIONS_PER_CLIENT as usize,
            MAX_CONNECTIONS - MEMBER_RESERVE
        );
        assert_eq!(
            crate::config::IDLE_TIMEOUT_FLOOR,
            crate::peers::POOL_IDLE_TIMEOUT
        );
        let c = crate::Config::for_node("n").unwrap();
        assert_eq!(
            Limits::default(),
            Limits {
                per_client: c.http.max_connections_per_client as usize,
                idle_timeout: c.http.idle_timeout
            }
        );
    }

    #[tokio::test]
    async fn oversized_heads_bodies_and_targets_without_a_path_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, None, |_| Ok200, async {
            let _ = stopped.await;
        }));

        let close = "Connection: close\r\n";
        let plain = exchange(
            addr,
            format!("GET / HTTP/1.1\r\nHost: x\r\n{close}\r\n").as_bytes(),
        )
        .await;
        assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");

        // One header just over the limit, sent in a single write.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n{close}\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let r = exchange(addr, big.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");

        for body in [
            "Content-Length: 5\r\n\r\nhello",
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            // The connection is closed after the 413 even though the client asked to keep it.
            let r = exchange(
                addr,
                format!("GET / HTTP/1.1\r\nHost: x\r\n{body}").as_bytes(),
            )
            .await;
            assert!(r.starts_with("HTTP/1.1 413"), "{body}: {r}");
            assert!(r.contains("connection: close"), "{r}");
        }
        for target in ["CONNECT 127.0.0.1:5432", "GET state"] {
            let r = exchange(
                addr,
                format!("{target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await;
            assert!(r.starts_with("HTTP/1.1 400"), "{target}: {r}");
        }
        let empty = exchange(
            addr,
            format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{close}\r\n").as_bytes(),
        )
        .await;
        assert!(
            empty.starts_with("HTTP/1.1 200"),
            "an empty body is no body: {empty}"
        );

        let _ = stop.send(());
        server.await.unwrap();
    }

    /// A client that pipelines requests as fast as it can write them must not keep a health
    /// check on another connection waiting behind its buffered requests, even on a runtime
    /// with one thread: the pipelining connection's task gives way (hyper's dispatcher yields
    /// after 16 requests read in one go, and tokio's budget bounds its reads and writes).
    #[tokio::test]
    async fn a_pipelining_client_never_keeps_a_health_check_waiting() {
        use std::io::{Read, Write};
        use std::sync::atomic::AtomicUsize;
        const PIPELINED: usize = 100_000;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, None, |_| Ok200, async {
            let _ = stopped.await;
        }));

        // The pipelining client: one thread writes every request at once, another counts the
        // answers as they come.
        let answered = Arc::new(AtomicUsize::new(0));
        let (started, flowing) = tokio::sync::oneshot::channel::<()>();
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let pipeline = std::thread::spawn(move || {
            let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
            let batch = one.repeat(1000);
            for _ in 0..PIPELINED / 1000 {
                writer.write_all(&batch).unwrap();
            }
            writer
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
        });
        let counted = Arc::clone(&answered);
        let reader = std::thread::spawn(move || {
            let (mut stream, mut started) = (stream, Some(started));
            let needle = b"HTTP/1.1 200 ";
            let mut buf = vec![0u8; 64 * 1024];
            let mut carry = 0;
            loop {
                let n = stream.read(&mut buf[carry..]).unwrap();
                if n == 0 {
                    break;
                }
                let end = carry + n;
                let found = buf[..end]
                    .windows(needle.len())
                    .filter(|w| w == needle)
                    .count();
                if counted.fetch_add(found, Ordering::SeqCst) + found >= 1000 {
                    if let Some(started) = started.take() {
                        let _ = started.send(());
                    }
                }
                // Keep a partial status line for the next read.
                carry = (needle.len() - 1).min(end);
                buf.copy_within(end - carry..end, 0);
            }
        });

        // Once answers are flowing, a health check on a new connection.
        flowing.await.unwrap();
        let seen = Arc::clone(&answered);
        let (check, before, after) = tokio::task::spawn_blocking(move || {
            let before = seen.load(Ordering::SeqCst);
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            (out, before, seen.load(Ordering::SeqCst))
        })
        .await
        .unwrap();
        tokio::task::spawn_blocking(move || {
            pipeline.join().unwrap();
            reader.join().unwrap();
        })
        .await
        .unwrap();
        let total = answered.load(Ordering::SeqCst);
        println!(
            "pipelining: {total} answers on one connection; the health check was answered \
             after {} of them ({before} before it connected, {after} when it was answered)",
            after - before
        );
        assert!(check.starts_with("HTTP/1.1 200"), "{check}");
        assert_eq!(total, PIPELINED + 1, "every pipelined request is answered");
        // The bound: tokio looks for new I/O (here, the check's connection and its request)
        // at least once every 61 task polls, and hyper answers at most 16 pipelined requests
        // per poll: about 1,000 answers, a millisecond of a release build. Four times that
        // is the test's margin. Either mechanism alone keeps within it (measured by planting:
        // without hyper's yield, 256 answers; the connection run `unconstrained` by tokio's
        // budget, 1,008); with neither, the check waited behind 96,143 and this failed.
        assert!(
            after - before < 4 * 61 * 16,
            "the health check waited behind {} pipelined answers",
            after - before
        );
        let _ = stop.send(());
        server.await.unwrap();
    }
}
