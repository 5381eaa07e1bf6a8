//! The HTTP server: accepting connections, their limits, and a bounded graceful shutdown.
//!
//! Owns how connections are served, not what is answered (that is [`crate::api`]). Every limit
//! that keeps a misbehaving client from hurting the health checks lives here: a cap on open
//! connections, a cap on request-head size, a timeout for reading a request head that also
//! closes idle keep-alive connections, the refusal of request bodies (no endpoint takes one) and
//! of request targets without a path ([`refusal`]), and a deadline for draining at shutdown.
//! With TLS (`tls_cert_file`), each connection's handshake comes first, under the same timeout
//! as a request head, in the connection's own task.
//! What is answered comes in as a tower service per connection (the API's warp filters,
//! `warp::service(routes)`), run by hyper-util's `TowerToHyperService` behind those limits.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future;
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::service::{Service as _, service_fn};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;
use tracing::{debug, warn};

/// A connection that does not send a complete request head within this time is closed. The
/// same timer runs while a keep-alive connection sits idle between requests, so it is also the
/// idle timeout. Longer than the peer client's pool idle time ([`crate::peers::POOL_IDLE_TIMEOUT`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) accepted; a larger one gets 431 and the
/// connection is closed.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most connections served at once; past it new connections are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// Length of the kernel's queue of connections not yet accepted ([`bind`]). The default of
/// the standard library and tokio (128) overflows under a burst of connects; an overflowed
/// queue drops the SYN of a health check, which then waits a full second for the
/// retransmission.
pub const LISTEN_BACKLOG: u32 = 1024;

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

/// Serves on `listener` until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish (at most [`DRAIN_TIMEOUT`]) and returns. Each connection is answered by the
/// tower service that `service_for` makes for its client (the API's is
/// `warp::service(routes)`, see [`crate::api`]), run as a hyper service by hyper-util's
/// [`TowerToHyperService`]. Requests the server refuses itself ([`refusal`]) never reach it;
/// those it lets through carry no body, and reach it with an empty one.
///
/// With `tls` (the listener's configuration, [`crate::tls::ServerTls::config`]) every
/// admitted connection is served over TLS: its handshake, in the connection's own task and
/// holding its slot, must end within [`IDLE_TIMEOUT`] (the time a client has for its request
/// head), or the connection is closed; a client that does not speak TLS (plain HTTP to an
/// HTTPS port) fails the handshake and is closed. The limits above then apply to what the
/// client sends inside TLS. The certificate is resolved at each handshake, so a reload's
/// renewed one applies without a new listener.
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
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        // Without max_header_size a head that arrives in one read is parsed whatever its size;
        // max_buf_size only bounds the buffer while a head is still incomplete.
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let http = Arc::new(http);
    let graceful = GracefulShutdown::new();
    let mut admit = Admission::new(MAX_CONNECTIONS, "HTTP");
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);

    loop {
        let (stream, client, slot) = tokio::select! {
            _ = &mut shutdown => break,
            admitted = admit.next(&listener) => admitted,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service_for(client));
        let gate = service_fn(move |request: Request<Incoming>| {
            let now = match refusal(&request) {
                Some(refused) => Ok(refused.map(Either::Left)),
                None => {
                    // No body (the refusal saw its end): the service gets an empty one.
                    let mut reply = Box::pin(service.call(request.map(|_| Empty::new())));
                    // Polled once here, so that a reply ready at once (every one but a
                    // fan-out's) drops its request before hyper reads on: a request still
                    // alive then holds hyper's read buffer, which hyper must then allocate
                    // anew (more than a box for the future costs).
                    match reply.as_mut().now_or_never() {
                        Some(reply) => reply.map(|r| r.map(Either::Right)),
                        None => {
                            return future::Either::Right(
                                reply.map(|reply| reply.map(|r| r.map(Either::Right))),
                            );
                        }
                    }
                }
            };
            future::Either::Left(future::ready(now))
        });
        if let Some(acceptor) = &tls {
            let (acceptor, http, watcher) = (acceptor.clone(), http.clone(), graceful.watcher());
            tokio::spawn(async move {
                match tokio::time::timeout(IDLE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let conn = http.serve_connection(TokioIo::new(stream), gate);
                        if let Err(e) = watcher.watch(conn).await {
                            debug!("connection ended with an error: {e}");
                        }
                    }
                    Ok(Err(e)) => debug!("{client}: TLS handshake failed: {e}"),
                    Err(_) => debug!("{client}: no TLS handshake within {IDLE_TIMEOUT:?}"),
                }
                drop(slot);
            });
            continue;
        }
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), gate));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("connection ended with an error: {e}");
            }
            drop(slot);
        });
    }

    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("some requests were still running when the drain deadline passed");
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

    #[tokio::test]
    async fn oversized_heads_bodies_and_targets_without_a_path_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
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
}
