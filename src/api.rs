//! The HTTP API: what each endpoint answers, routed by warp filters in one table.
//!
//! Owns the routes ([`routes`]) and their replies, all from the snapshot: `/state` and `/` (the
//! health check), `/primary` (whom the local metadata names), `/realPrimary` (a fan-out to
//! every node's `/state`, shared by simultaneous callers), `/status` (everything the snapshot
//! knows); between daemons `/vote` (this node's vote, a leased promise), `POST /release`
//! (release the votes promised to this node, when it answers 200 no more) and `/wal` (where a
//! primary writes, with its WAL senders); and Patroni's checks `/replica`, `/read-write` =
//! `/leader`, `/read-only`, `/health`, `/liveness`, `/readiness`, `/synchronous` = `/sync`,
//! `/asynchronous` = `/async`, `/quorum`, `/read-only-sync`, `/read-only-quorum` (their rules
//! are [`crate::reads`]'s). Nothing here touches the database. The only state a request
//! changes is the promise book behind `/vote` and the holder behind `/release`
//! ([`crate::shared::Votes`]).
//!
//! ## warp filters, one table, a handler per endpoint
//! [`routes`] is the API as one warp 0.4 filter: the table names every path once (exactly: no
//! trailing slash, no extra segment) with its [`Endpoint`], `/state` first; then one filter
//! checks the method against the endpoint's and calls the endpoint's handler method, which
//! turns the snapshot and the parsed parameters into a status and a body; the request is
//! counted by endpoint and code ([`Endpoint::name`] labels `/metrics`). Every refusal is a
//! rejection, and one `recover` answers it: `NotAllowed` (the one custom rejection) is 405
//! with `Allow`, anything else (warp's `not_found` of a path no route matches) 404. The server
//! ([`crate::server`]) serves `warp::service(routes)` on each connection, behind its own
//! admission, head limits, timeouts and protocol-level refusals (bodies, targets without a
//! path), which never reach the filters.
//!
//! ## The health check in front of warp
//! `GET`, `HEAD` and `OPTIONS` of `/state` and `/` without an `X-Primgr-Auth` header are
//! answered in front of the filters: [`App`] is the server's [`crate::server::Direct`], which
//! the server asks first on every request (after its own refusals), and which answers those
//! from the snapshot exactly as [`routes`] does (the same status, headers and body, the lease
//! window checked at the request's instant, the same counter; `the_direct_health_check_
//! answers_as_warp_does` compares them). Every other request, a signed `/state` included,
//! goes to warp, which still routes every path, `/state` among them. What the filters cost
//! the health check (user-space instructions under callgrind, heap allocations) and what it
//! costs in front of them, against a bare hyper server, is in docs/benchmarks.md.
//! The filters are built so that a request that does reach them costs as little as warp
//! allows: the path segments are zero-sized types (nothing copied into each request's
//! future), `/state` is the first route tried and matches at the first `or`, the filters'
//! closures hold one reference per connection (warp clones them for every request), and no
//! routing step allocates (the query string is read only by the endpoints that take
//! parameters).

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{self, BoxFuture, Shared as SharedFuture};
use http_body_util::Empty;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tracing::warn;
use warp::path::FullPath;
use warp::{Filter, Rejection};

use crate::auth::{self, AnswerClaims, AuthError, Exchange, GrantEpoch, Keys, RequestClaims};
use crate::conninfo;
use crate::cycle;
use crate::decide::State;
use crate::metrics::{self, RequestCounters};
use crate::peers::{VoteReply, fan_out};
use crate::reads::{self, ReadQuery, SyncWanted};
use crate::shared::{Loaded, Shared};
use crate::snapshot::{Snapshot, json_bytes, state_body, sync_text};
use crate::vote::Release;
use crate::wire::{
    self, CheckBody, ErrorBody, RealPrimaryBody, RealPrimarySite, ReleaseAnswer, ReleaseRefusal,
    Released, Status, StatusConfig, StatusDatabase, StatusDrain, StatusHeldVote, StatusMember,
    StatusReplication, StatusSiteVotes, StatusVoter, VoteAnswer, VoteGrant, VoteRefusal,
    VoteRequest, VoteScope, WalAnswer, WalPosition, WalUnknown,
};

/// A reply of the API (warp turns it into its own response).
pub type Reply = Response<Bytes>;

/// The path of the health check, and `/`, which answers the same.
const STATE_PATHS: [&str; 2] = ["/state", "/"];

/// The health check in front of warp ([`crate::server::Direct`]): `GET`, `HEAD` and `OPTIONS`
/// of `/state` and `/` (whatever their query string, as the route ignores it) without an
/// `X-Primgr-Auth` header, answered as the API answers them through [`routes`]: the
/// same status, headers and body, decided at the request's `now` against the snapshot, the
/// same counter. Everything else, a signed `/state` (whose answer is signed) included, goes to
/// warp. It spares the health check warp's filters (routing, the boxed response body, the
/// header lookups of every route): what that saves is in docs/benchmarks.md.
impl crate::server::Direct for App {
    fn answer_now(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &hyper::HeaderMap,
        now: Instant,
    ) -> Option<Response<http_body_util::Full<Bytes>>> {
        if !STATE_PATHS.contains(&uri.path()) || !Endpoint::State.methods().allows(method) {
            return None;
        }
        const SIGNED: hyper::header::HeaderName =
            hyper::header::HeaderName::from_static(auth::HEADER);
        if headers.contains_key(SIGNED) {
            return None;
        }
        let (code, body) = self.state(now);
        let bodyless = method != Method::GET;
        let reply = json_reply(
            Endpoint::State,
            code,
            if bodyless { Bytes::new() } else { body },
        );
        self.count(Some(Endpoint::State), &reply);
        Some(reply.map(http_body_util::Full::new))
    }
}

/// The endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    State,
    Primary,
    RealPrimary,
    Status,
    Vote,
    Release,
    Wal,
    Replica,
    ReadWrite,
    ReadOnly,
    Health,
    Liveness,
    Readiness,
    Metrics,
    Sync,
    Async,
    Quorum,
    ReadOnlySync,
    ReadOnlyQuorum,
}

impl Endpoint {
    /// Every endpoint, in declaration order (`ALL[e as usize] == e`: the request counters'
    /// rows).
    const ALL: [Endpoint; 19] = [
        Endpoint::State,
        Endpoint::Primary,
        Endpoint::RealPrimary,
        Endpoint::Status,
        Endpoint::Vote,
        Endpoint::Release,
        Endpoint::Wal,
        Endpoint::Replica,
        Endpoint::ReadWrite,
        Endpoint::ReadOnly,
        Endpoint::Health,
        Endpoint::Liveness,
        Endpoint::Readiness,
        Endpoint::Metrics,
        Endpoint::Sync,
        Endpoint::Async,
        Endpoint::Quorum,
        Endpoint::ReadOnlySync,
        Endpoint::ReadOnlyQuorum,
    ];

    /// The endpoint's name in `/metrics` (`endpoint` label): its path (`/state` also answers
    /// `/`, `/read-write` also `/leader`).
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::State => "/state",
            Endpoint::Primary => "/primary",
            Endpoint::RealPrimary => "/realPrimary",
            Endpoint::Status => "/status",
            Endpoint::Vote => "/vote",
            Endpoint::Release => "/release",
            Endpoint::Wal => "/wal",
            Endpoint::Replica => "/replica",
            Endpoint::ReadWrite => "/read-write",
            Endpoint::ReadOnly => "/read-only",
            Endpoint::Health => "/health",
            Endpoint::Liveness => "/liveness",
            Endpoint::Readiness => "/readiness",
            Endpoint::Metrics => "/metrics",
            Endpoint::Sync => "/synchronous",
            Endpoint::Async => "/asynchronous",
            Endpoint::Quorum => "/quorum",
            Endpoint::ReadOnlySync => "/read-only-sync",
            Endpoint::ReadOnlyQuorum => "/read-only-quorum",
        }
    }

    /// The endpoints that change state between daemons: authenticated always (a key, else a
    /// member's address).
    fn is_peer(self) -> bool {
        matches!(self, Endpoint::Vote | Endpoint::Release)
    }

    /// The endpoints whose answers are signed when the request is: what a peer counts or
    /// reports (`/wal`, `/state` for `/realPrimary`, `/status` for `primgr cluster`).
    fn signs(self) -> bool {
        matches!(
            self,
            Endpoint::Vote | Endpoint::Release | Endpoint::Wal | Endpoint::State | Endpoint::Status
        )
    }

    /// Which methods the endpoint answers.
    fn methods(self) -> Methods {
        match self {
            // A vote is a promise: only a GET asks for one.
            Endpoint::Vote => Methods::Get,
            Endpoint::Release => Methods::Post,
            _ => Methods::Read,
        }
    }

    /// The media type of the endpoint's bodies.
    fn content_type(self) -> HeaderValue {
        const JSON: HeaderValue = HeaderValue::from_static("application/json");
        const TEXT: HeaderValue =
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
        match self {
            Endpoint::Metrics => TEXT,
            _ => JSON,
        }
    }
}

/// Name of the request counters' last row: requests that matched no route.
const UNROUTED: &str = "unrouted";

/// The request counters' row of `endpoint` (`None`: no route matched).
fn counter_row(endpoint: Option<Endpoint>) -> usize {
    endpoint.map_or(Endpoint::ALL.len(), |e| e as usize)
}

/// Which methods an endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Methods {
    /// GET, HEAD and OPTIONS (HEAD and OPTIONS: same status, no body).
    Read,
    /// GET only: the answer changes state (a vote is a promise).
    Get,
    /// POST only.
    Post,
}

impl Methods {
    fn allows(self, m: &Method) -> bool {
        match self {
            Methods::Read => m == Method::GET || m == Method::HEAD || m == Method::OPTIONS,
            Methods::Get => m == Method::GET,
            Methods::Post => m == Method::POST,
        }
    }

    fn allow_header(self) -> &'static str {
        match self {
            Methods::Read => "GET, HEAD, OPTIONS",
            Methods::Get => "GET",
            Methods::Post => "POST",
        }
    }
}

/// The one custom rejection: the path names `Endpoint`, which does not answer the method
/// (405 with `Allow`, see [`App::refused`]). A path that names no endpoint is warp's own
/// `not_found` (404).
#[derive(Debug)]
struct NotAllowed(Endpoint);

impl warp::reject::Reject for NotAllowed {}

/// A matched route: the endpoint, and the query string for the endpoints that take
/// parameters (`None` for the others, whatever the request carried).
type Route = (Endpoint, Option<String>);

/// The path `/$segment` and nothing after it, as a warp filter. Like `warp::path!` the
/// segment is a zero-sized type, so no string is carried (and copied into every request's
/// future); unlike it there is no leading `any()`, one filter fewer to nest per route.
macro_rules! exactly {
    ($segment:literal) => {{
        #[derive(Clone, Copy)]
        struct Segment;
        impl AsRef<str> for Segment {
            fn as_ref(&self) -> &str {
                $segment
            }
        }
        warp::path(Segment).and(warp::path::end())
    }};
}

/// The first of the filters that matches, tried in order: `a.or(b.or(c ...))`. Nested to the
/// right, so a request for the first route pays for one `or`, not for one per route.
macro_rules! first_of {
    ($one:expr $(,)?) => { $one };
    ($first:expr, $($rest:expr),+ $(,)?) => { $first.or(first_of!($($rest),+)).unify() };
}

/// The API of `app` for connections from `client`, as warp filters: the routing table (every
/// path once, to its [`Endpoint`]; `/state` first, the health check), then the method check,
/// the handler of the endpoint (`App::answer`) and the request counter; a refusal (404,
/// 405) goes through the one `recover` (`App::refused`). Built once per connection (a few
/// words: the filters are plain values), so the client's address needs no per-request
/// extension.
pub fn routes(
    app: &Arc<App>,
    client: SocketAddr,
) -> impl Filter<Extract = (Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    use Endpoint::*;
    // Grouped, each group a nest of its own: one chain of sixteen `or`s nests warp's types
    // deeper than the compiler's recursion limit allows.
    let table = first_of![
        // The health check first: it is matched at the first try.
        at(exactly!("state"), State),
        root(State),
        first_of![
            at(exactly!("primary"), Primary),
            at(exactly!("realPrimary"), RealPrimary),
            at(exactly!("status"), Status),
            // For teams with Prometheus (`/status` is the probe that needs none).
            at(exactly!("metrics"), Metrics),
        ],
        // Between daemons: the vote, its release, the primary's WAL position.
        first_of![
            with_query(exactly!("vote"), Vote),
            with_query(exactly!("release"), Release),
            at(exactly!("wal"), Wal),
        ],
        // Patroni's health checks (see `reads`).
        first_of![
            with_query(exactly!("replica"), Replica),
            at(exactly!("read-write"), ReadWrite),
            at(exactly!("leader"), ReadWrite),
            with_query(exactly!("read-only"), ReadOnly),
            at(exactly!("health"), Health),
            at(exactly!("liveness"), Liveness),
            with_query(exactly!("readiness"), Readiness),
        ],
        // Patroni's synchronous checks (see `reads::sync_standby`).
        first_of![
            with_query(exactly!("synchronous"), Sync),
            with_query(exactly!("sync"), Sync),
            with_query(exactly!("asynchronous"), Async),
            with_query(exactly!("async"), Async),
            with_query(exactly!("quorum"), Quorum),
            with_query(exactly!("read-only-sync"), ReadOnlySync),
            with_query(exactly!("read-only-synchronous"), ReadOnlySync),
            with_query(exactly!("read-only-quorum"), ReadOnlyQuorum),
        ],
    ];
    // warp clones the closures of a filter for every request: their one reference is to
    // this connection's own counter, not to the app's, which every core's requests would
    // contend for.
    let answering = Arc::new(Connection {
        app: Arc::clone(app),
        client,
    });
    let refusing = Arc::clone(&answering);
    table
        .and(warp::path::full())
        .and(warp::method())
        // A header lookup; a MAC only for a request that carries the header.
        .and(warp::header::optional::<String>(auth::HEADER))
        .and_then(
            move |(endpoint, query): Route,
                  path: FullPath,
                  method: Method,
                  signed: Option<String>| {
                // warp's `end` matches `/state/` like `/state`; the API never has.
                let path = path.as_str();
                if path.len() > 1 && path.ends_with('/') {
                    return future::Either::Left(future::ready(Err(warp::reject::not_found())));
                }
                let Connection { app, client } = &*answering;
                let request = Asked {
                    client: *client,
                    endpoint,
                    query: query.as_deref(),
                    method,
                    path,
                    signed: signed.as_deref(),
                };
                app.answer(request)
            },
        )
        .recover(move |rejection| {
            future::ready(Ok::<_, Infallible>(refusing.app.refused(&rejection)))
        })
        .unify()
}

/// One request, as the handler sees it.
struct Asked<'a> {
    client: SocketAddr,
    endpoint: Endpoint,
    /// The query string of the endpoints that take parameters.
    query: Option<&'a str>,
    method: Method,
    /// The path as sent.
    path: &'a str,
    /// Its `X-Primgr-Auth` header, if any.
    signed: Option<&'a str>,
}

/// A request whose MAC verified under a key in force: what its answer's MAC binds.
struct Verified {
    keys: Arc<Keys>,
    claims: RequestClaims,
    method: Method,
    target: String,
}

/// The app, as one connection's routes see it.
struct Connection {
    app: Arc<App>,
    /// The client at the other end.
    client: SocketAddr,
}

/// The path `path` (see [`exactly`]), answered by `endpoint`, which takes no parameters.
fn at(
    path: impl Filter<Extract = (), Error = Rejection> + Copy,
    endpoint: Endpoint,
) -> impl Filter<Extract = (Route,), Error = Rejection> + Copy {
    path.map(move || (endpoint, None))
}

/// `/`, answered by `endpoint`.
fn root(endpoint: Endpoint) -> impl Filter<Extract = (Route,), Error = Rejection> + Copy {
    warp::path::end().map(move || (endpoint, None))
}

/// The path `path`, answered by `endpoint`, which reads its parameters from the query string.
fn with_query(
    path: impl Filter<Extract = (), Error = Rejection> + Copy,
    endpoint: Endpoint,
) -> impl Filter<Extract = (Route,), Error = Rejection> + Copy {
    // `raw` rejects a request without a query string: that is a request without parameters.
    let query = warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
    at(path, endpoint)
        .and(query)
        .map(move |_, query| (endpoint, query))
}

/// Most client addresses remembered for the "OPTIONS /primary" warning; past it, no more
/// warnings (a hostile client cannot grow the set without bound).
const MAX_WARNED: usize = 1024;

/// The API of one daemon.
pub struct App {
    shared: Arc<Shared>,
    real_primary: Arc<Flights<RealPrimary>>,
    /// Clients already warned about checking `/primary` (see [`App::primary`]).
    warned: Mutex<HashSet<IpAddr>>,
    /// Requests answered, by endpoint and code (`/metrics`).
    requests: RequestCounters,
}

/// An answer: at once (every endpoint but `/realPrimary`), or when the other nodes have
/// answered. Answering at once keeps the health check free of any future to box.
type Answer = future::Either<
    future::Ready<Result<Reply, Rejection>>,
    BoxFuture<'static, Result<Reply, Rejection>>,
>;

impl App {
    pub fn new(shared: Arc<Shared>) -> Arc<App> {
        let names = Endpoint::ALL.iter().map(|e| e.name()).chain([UNROUTED]);
        Arc::new(App {
            shared,
            real_primary: Arc::default(),
            warned: Mutex::new(HashSet::new()),
            requests: RequestCounters::new(names),
        })
    }

    /// The service that answers a connection from `client`: `warp::service(routes)`.
    pub fn service(
        self: &Arc<Self>,
        client: SocketAddr,
    ) -> impl tower_service::Service<
        Request<Empty<Bytes>>,
        Response = warp::reply::Response,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        warp::service(routes(self, client))
    }

    /// The reply of `endpoint` to `method` from `client` (with the query string of the
    /// endpoints that take parameters), counted; a method the endpoint does not answer is
    /// refused ([`NotAllowed`]).
    fn answer(self: &Arc<Self>, request: Asked<'_>) -> Answer {
        let Asked {
            client,
            endpoint,
            query,
            ..
        } = request;
        let method = request.method.clone();
        let methods = endpoint.methods();
        if !methods.allows(&method) {
            return future::Either::Left(future::ready(Err(warp::reject::custom(NotAllowed(
                endpoint,
            )))));
        }
        // Peer authentication: the peer endpoints always, a read only when it is signed
        // (`/state` without the header goes straight on).
        let verified = if endpoint.is_peer() || (request.signed.is_some() && endpoint.signs()) {
            match self.authenticate(&request) {
                Ok(verified) => verified,
                Err(reply) => {
                    self.count(Some(endpoint), &reply);
                    return future::Either::Left(future::ready(Ok(*reply)));
                }
            }
        } else {
            None
        };
        let bodyless = method == Method::HEAD || method == Method::OPTIONS;
        // The clock is read before the snapshot is loaded: a 200 is decided at an instant
        // that precedes the publication of any later snapshot (see `vote` on releases).
        let now = Instant::now();
        let (code, body) = match endpoint {
            Endpoint::State => self.state(now),
            Endpoint::Primary => self.primary(client, &method, now),
            Endpoint::RealPrimary => {
                let app = Arc::clone(self);
                return future::Either::Right(Box::pin(async move {
                    let (code, body) = app.real_primary().await;
                    let reply =
                        json_reply(endpoint, code, if bodyless { Bytes::new() } else { body });
                    app.count(Some(endpoint), &reply);
                    Ok(reply)
                }));
            }
            Endpoint::Status => self.status(now),
            Endpoint::Metrics => self.metrics(now),
            Endpoint::Vote => match vote_request(query) {
                Ok(request) => self.vote(&request, now),
                Err(why) => (400, json_bytes(&ErrorBody { error: why })),
            },
            Endpoint::Release => match release_undoes(query) {
                Ok(undoes) => match self.release_sender(client, verified.as_ref()) {
                    Ok(voter) => self.release(&voter, undoes),
                    Err(why) => (403, json_bytes(&ErrorBody { error: why })),
                },
                Err(why) => (400, json_bytes(&ErrorBody { error: why })),
            },
            Endpoint::Wal => self.wal(now),
            Endpoint::ReadWrite => self.read_write(now),
            Endpoint::Health => self.health(now),
            Endpoint::Liveness => self.liveness(now),
            Endpoint::Replica
            | Endpoint::ReadOnly
            | Endpoint::Readiness
            | Endpoint::Sync
            | Endpoint::Async
            | Endpoint::Quorum
            | Endpoint::ReadOnlySync
            | Endpoint::ReadOnlyQuorum => {
                let query = match reads::parse_query(query) {
                    Ok(q) => q,
                    Err(why) => {
                        // With its body, whatever the method.
                        let reply =
                            json_reply(endpoint, 400, json_bytes(&ErrorBody { error: why }));
                        self.count(Some(endpoint), &reply);
                        return future::Either::Left(future::ready(Ok(reply)));
                    }
                };
                match endpoint {
                    Endpoint::Replica => self.replica(&query, now),
                    Endpoint::ReadOnly => self.read_only(&query, now),
                    Endpoint::Sync => self.sync(&query, SyncWanted::Sync, now),
                    Endpoint::Async => self.sync(&query, SyncWanted::Async, now),
                    Endpoint::Quorum => self.sync(&query, SyncWanted::Quorum, now),
                    Endpoint::ReadOnlySync => self.read_only_sync(&query, SyncWanted::Sync, now),
                    Endpoint::ReadOnlyQuorum => {
                        self.read_only_sync(&query, SyncWanted::Quorum, now)
                    }
                    _ => self.readiness(&query, now),
                }
            }
        };
        let mut reply = json_reply(endpoint, code, if bodyless { Bytes::new() } else { body });
        if let Some(verified) = &verified {
            self.sign(&mut reply, verified);
        }
        self.count(Some(endpoint), &reply);
        future::Either::Left(future::ready(Ok(reply)))
    }

    /// Whether `request` may be answered: `Ok(Some)` with its verified claims when a key is
    /// in force (its answer is then signed), `Ok(None)` in address mode from a member's
    /// address (or a signed read there: answered unsigned); else the refusal (401 with the
    /// reason, signed when the request itself verified; 403 from a non-member's address in
    /// address mode), counted. A refusal changes nothing: the replay guard remembers a nonce
    /// only of a request it admits.
    fn authenticate(&self, request: &Asked<'_>) -> Result<Option<Verified>, Box<Reply>> {
        let auth = &self.shared.auth;
        let endpoint = request.endpoint;
        let refuse = |code: StatusCode, why: String| {
            auth.count_refused();
            let mut r = Response::new(json_bytes(&ErrorBody { error: why }));
            *r.status_mut() = code;
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        };
        let Some(keys) = auth.keys() else {
            if !endpoint.is_peer() {
                return Ok(None);
            }
            let ip = request.client.ip().to_canonical();
            let config = self.shared.config();
            if auth.is_member(ip) || config.peer.peer_allow.contains(&ip) {
                return Ok(None);
            }
            return Err(Box::new(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "{ip} is not a member's address: without peer_key_file, {} is answered only \
                     to the members (repmgr.nodes, [peers]) and peer_allow",
                    endpoint.name()
                ),
            )));
        };
        let Some(header) = request.signed else {
            return Err(Box::new(refuse(
                StatusCode::UNAUTHORIZED,
                AuthError::Missing.to_string(),
            )));
        };
        let target = match request.query {
            Some(q) => format!("{}?{q}", request.path),
            None => request.path.to_string(),
        };
        let exchange = Exchange {
            method: request.method.as_str(),
            target: &target,
            body: b"",
        };
        let claims = keys
            .verify_request(header, &exchange)
            .map_err(|e| Box::new(refuse(StatusCode::UNAUTHORIZED, e.to_string())))?;
        let verified = Verified {
            keys,
            claims,
            method: request.method.clone(),
            target,
        };
        if !endpoint.is_peer() {
            // A read changes nothing: the answer bound to the request's nonce is enough.
            return Ok(Some(verified));
        }
        let refuse_signed = |e: AuthError| {
            let mut r = json_reply(
                endpoint,
                401,
                json_bytes(&ErrorBody {
                    error: e.to_string(),
                }),
            );
            // Asking again with the fresh ticket of this answer is the protocol's first
            // round trip with a (re)started peer, not a refusal worth counting.
            if !e.wants_ticket() {
                auth.count_refused();
            }
            self.sign(&mut r, &verified);
            r
        };
        let me = self.shared.config().node.node_name.clone();
        if let Err(e) = verified.claims.addressed(&me, auth.cluster()) {
            return Err(Box::new(refuse_signed(e)));
        }
        // `/vote` without a candidate only says whom the metadata names.
        let changes = endpoint == Endpoint::Release
            || !matches!(vote_request(request.query), Ok(r) if r.candidate.is_none());
        if changes {
            let admitted = match auth.guard().as_mut() {
                Some(guard) => guard.admit(&verified.claims, Instant::now()),
                None => Err(AuthError::Busy(
                    "the OS's random source failed at start: no ticket".into(),
                )),
            };
            if let Err(e) = admitted {
                return Err(Box::new(refuse_signed(e)));
            }
        }
        Ok(Some(verified))
    }

    /// Signs `reply`, the answer to the verified request, with a fresh ticket for its sender.
    fn sign(&self, reply: &mut Reply, verified: &Verified) {
        let auth = &self.shared.auth;
        let sender = &verified.claims.from;
        let ticket = auth
            .guard()
            .as_ref()
            .map(|g| g.ticket(sender, Instant::now()));
        let claims = AnswerClaims {
            from: self.shared.config().node.node_name.clone(),
            to: sender.clone(),
            cluster: auth.cluster(),
            ticket,
        };
        let exchange = Exchange {
            method: verified.method.as_str(),
            target: &verified.target,
            body: b"",
        };
        let value = verified.keys.sign_answer(
            &claims,
            &verified.claims.nonce,
            &exchange,
            reply.status().as_u16(),
            reply.body(),
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            reply.headers_mut().insert(auth::HEADER, value);
        }
    }

    /// The reply to a refused request, counted: 405 with `Allow` for a method the endpoint
    /// does not answer ([`NotAllowed`]), else 404 (no route matched).
    fn refused(&self, rejection: &Rejection) -> Reply {
        let (endpoint, reply) = match rejection.find::<NotAllowed>() {
            Some(NotAllowed(endpoint)) => (Some(*endpoint), not_allowed(*endpoint)),
            None => (None, error(StatusCode::NOT_FOUND, "not found")),
        };
        self.count(endpoint, &reply);
        reply
    }

    fn count(&self, endpoint: Option<Endpoint>, reply: &Reply) {
        self.requests
            .count(counter_row(endpoint), reply.status().as_u16());
    }

    /// `/state` and `/`, the health check: a lock-free load, an atomic counter read (a
    /// session lost since the observation) and two comparisons; the body is a constant.
    fn state(&self, now: Instant) -> (u16, Bytes) {
        let state = self.shared.store.peek().served_state(now);
        (state.code(), state_body(state))
    }

    /// `/primary`: whom the local metadata names (the seed's endpoint).
    fn primary(&self, client: SocketAddr, method: &Method, now: Instant) -> (u16, Bytes) {
        if method == Method::OPTIONS {
            self.warn_primary_check(client);
        }
        let me = self.shared.config().node.node_name.clone();
        self.shared.store.peek().primary_reply(&me, now)
    }

    /// `/status`: everything the snapshot knows ([`status_json`]).
    fn status(&self, now: Instant) -> (u16, Bytes) {
        let snapshot = self.shared.store.load();
        let mut status = status_json(&self.shared.loaded(), &snapshot, now);
        let auth = &self.shared.auth;
        status.cluster_id = auth.cluster().map(|c| c.to_string());
        status.peer_auth = auth.mode().to_string();
        status.peer_auth_failures = auth.answers.failures();
        status.peer_requests_refused = auth.refused();
        (snapshot.served_state(now).code(), json_bytes(&status))
    }

    /// `/metrics`: the Prometheus text ([`metrics::render`]).
    fn metrics(&self, now: Instant) -> (u16, Bytes) {
        let snapshot = self.shared.store.load();
        let auth = &self.shared.auth;
        let failures = auth.answers.failures();
        let extra = metrics::Extra {
            requests: self.requests.snapshot(),
            voter_failures: &snapshot.voter_failures,
            config_loaded: self.shared.loaded().at,
            peer_auth: auth.mode(),
            peer_auth_failures: &failures,
            peer_requests_refused: auth.refused(),
            vote_scope: self.shared.config().leases.scope,
        };
        (200, metrics::render(&snapshot, &extra, now).into())
    }

    /// `/read-write` (= `/leader`): 200 where `/state` answers 200.
    fn read_write(&self, now: Instant) -> (u16, Bytes) {
        let snapshot = self.shared.store.peek();
        let outcome = match snapshot.served_state(now) {
            State::Primary => Ok(()),
            _ => Err(snapshot.served_reason(now)),
        };
        self.check_reply(&snapshot, outcome, now)
    }

    /// `/health`: [`reads::health`].
    fn health(&self, now: Instant) -> (u16, Bytes) {
        let snapshot = self.shared.store.peek();
        self.check_reply(&snapshot, reads::health(&snapshot, now), now)
    }

    /// `/liveness`: [`reads::liveness`].
    fn liveness(&self, now: Instant) -> (u16, Bytes) {
        let snapshot = self.shared.store.peek();
        self.check_reply(&snapshot, reads::liveness(&snapshot, now), now)
    }

    /// `/replica`: [`reads::replica`].
    fn replica(&self, query: &ReadQuery, now: Instant) -> (u16, Bytes) {
        let snapshot = self.shared.store.peek();
        self.check_reply(&snapshot, reads::replica(&snapshot, query, now), now)
    }

    /// `/read-only`: [`reads::read_only`].
    fn read_only(&self, query: &ReadQuery, now: Instant) -> (u16, Bytes) {
        let snapshot = self.shared.store.peek();
        self.check_reply(&snapshot, reads::read_only(&snapshot, query, now), now)
    }

    /// `/readiness`: [`reads::readiness`].
    fn readiness(&self, query: &ReadQuery, now: Instant) -> (u16, Bytes) {
        let snapshot = self.shared.store.peek();
        let lag = self.shared.config().reads.readiness_lag;
        self.check_reply(&snapshot, reads::readiness(&snapshot, query, lag, now), now)
    }

    /// `/synchronous`, `/asynchronous`, `/quorum`: [`reads::sync_standby`].
    fn sync(&self, query: &ReadQuery, wanted: SyncWanted, now: Instant) -> (u16, Bytes) {
        let snapshot = self.shared.store.peek();
        let outcome = reads::sync_standby(&snapshot, query, wanted, now);
        self.check_reply(&snapshot, outcome, now)
    }

    /// `/read-only-sync`, `/read-only-quorum`: [`reads::read_only_sync`].
    fn read_only_sync(&self, query: &ReadQuery, wanted: SyncWanted, now: Instant) -> (u16, Bytes) {
        let snapshot = self.shared.store.peek();
        let outcome = reads::read_only_sync(&snapshot, query, wanted, now);
        self.check_reply(&snapshot, outcome, now)
    }

    /// A health-check reply: 200 or 503, with the node, its state, and why not.
    fn check_reply(&self, s: &Snapshot, outcome: reads::Outcome, now: Instant) -> (u16, Bytes) {
        let mut body = CheckBody {
            drained: s.drained.as_ref().map(|d| d.reason.clone()),
            lag_bytes: s.replication.as_ref().map(|r| r.lag().ok()),
            node: self.shared.config().node.node_name.clone(),
            reason: None,
            replication_state: s.replication.as_ref().map(|r| r.receiver_text()),
            state: s.served_state(now).name().to_string(),
        };
        match outcome {
            Ok(()) => (200, json_bytes(&body)),
            Err(why) => {
                body.reason = Some(why);
                (503, json_bytes(&body))
            }
        }
    }

    /// haproxy checks with `OPTIONS`; a Patroni configuration that checks `/primary` would
    /// send writes to every healthy node, since primgr's `/primary` is the seed's (whom the
    /// metadata names). Said once per client address.
    fn warn_primary_check(&self, client: SocketAddr) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.len() < MAX_WARNED && warned.insert(client.ip()) {
            warn!(
                client = %client.ip(),
                "OPTIONS /primary looks like a Patroni-style haproxy check: primgr's /primary \
                 answers 200 on EVERY healthy node (it says whom the metadata names). Check \
                 /state or /read-write for the write pool"
            );
        }
    }

    /// `/wal`: where this node's database writes, when it is not in recovery.
    fn wal(&self, now: Instant) -> (u16, Bytes) {
        let node = self.shared.config().node.node_name.clone();
        let s = self.shared.store.peek();
        let why = match (s.withheld(now), s.db.in_recovery, s.current_lsn) {
            (Some(w), _, _) => w.reason(),
            (None, Some(false), Some(lsn)) => {
                let age_ms = s.age(now).unwrap_or_default().as_millis() as u64;
                let standbys = s.wal_senders.clone();
                let position = WalAnswer::Position(WalPosition {
                    age_ms,
                    lsn,
                    node,
                    standbys,
                });
                return (position.status(), json_bytes(&position));
            }
            (None, Some(true), _) => "in recovery: not a primary",
            _ => "the local database is unusable",
        };
        let unknown = WalAnswer::Unknown(WalUnknown {
            lsn: (),
            node,
            reason: why.to_string(),
        });
        (unknown.status(), json_bytes(&unknown))
    }

    /// `/vote?candidate=NAME`: a vote for the candidate when the local metadata names it, and
    /// the promise that goes with it (see [`crate::vote`]); without a candidate, whom the
    /// metadata names. A candidate of another `vote_scope` gets no vote; the answer carries
    /// this node's scope.
    fn vote(&self, request: &VoteRequest, now: Instant) -> (u16, Bytes) {
        let (node, scope) = {
            let config = self.shared.config();
            (config.node.node_name.clone(), config.leases.scope)
        };
        let snapshot = self.shared.store.peek();
        let given = cycle::vote(
            &mut self.shared.votes.book(),
            request,
            scope,
            &snapshot,
            now,
        );
        let answer = match given {
            Ok(grant) => VoteAnswer::Grant(VoteGrant {
                epoch: grant.epoch,
                exclusive_ms: grant.exclusive.as_millis() as u64,
                lease_ms: grant.lease.as_millis() as u64,
                node,
                scope,
                vote: grant.to,
            }),
            Err(no) => VoteAnswer::Refusal(VoteRefusal {
                ms_left: no.left().map(|d| d.as_millis() as u64),
                node,
                reason: no.reason(),
                scope,
                vote: (),
                withdrawn: no.withdraws(),
            }),
        };
        (answer.status(), json_bytes(&answer))
    }

    /// Who sent a `/release`: the authenticated sender (key mode), or the one member whose
    /// address the request came from (address mode; no member, or several, at that address:
    /// refused, and why).
    fn release_sender(
        &self,
        client: SocketAddr,
        verified: Option<&Verified>,
    ) -> Result<String, String> {
        match verified {
            Some(v) => Ok(v.claims.from.clone()),
            None => self.shared.auth.member_at(client.ip().to_canonical()),
        }
    }

    /// `POST /release?undoes=EPOCH` from `voter`: void the votes `voter` granted in that epoch
    /// or earlier (no other voter's), unless this node answers 200 or is about to; say when it
    /// last could have.
    fn release(&self, voter: &str, undoes: GrantEpoch) -> (u16, Bytes) {
        let node = self.shared.config().node.node_name.clone();
        let (answer, now) = self.shared.votes.release(&self.shared.store, voter, undoes);
        let answer = match answer {
            Release::Released { last_200 } => ReleaseAnswer::Released(Released {
                last_200_ms: now.saturating_duration_since(last_200).as_millis() as u64,
                node,
                released: true,
            }),
            Release::Refused(why) => ReleaseAnswer::Refused(ReleaseRefusal {
                node,
                reason: why,
                released: false,
            }),
        };
        (answer.status(), json_bytes(&answer))
    }

    /// `/realPrimary`: every known node's `/state` at once (this node's from its snapshot),
    /// within `peer_timeout`; simultaneous requests share one fan-out.
    async fn real_primary(self: &Arc<Self>) -> (u16, Bytes) {
        let app = Arc::clone(self);
        let outcome = self
            .real_primary
            .join(move || tokio::spawn(async move { app.fan_out_states().await }))
            .await;
        match outcome {
            Ok(found) => found.reply(),
            Err(e) => (
                503,
                json_bytes(&RealPrimaryBody {
                    error: Some(e),
                    ..RealPrimaryBody::default()
                }),
            ),
        }
    }

    async fn fan_out_states(&self) -> RealPrimary {
        let config = self.shared.config();
        let now = Instant::now();
        let snapshot = self.shared.store.load();
        let me = &config.node.node_name;
        let own = snapshot.served_state(now);
        let client = &self.shared.client;
        let keys = self.shared.auth.keys();
        let signer = keys.as_deref().map(|k| self.shared.auth.signer(k, me));
        let signer = signer.as_ref();
        let others = snapshot.members.iter().filter(|m| &m.name != me);
        let mut answers = vec![(me.clone(), Ok(own))];
        answers.extend(
            fan_out(
                config.timing.peer_timeout,
                others,
                |m, deadline| async move {
                    let state = match &m.url {
                        Ok(url) => client
                            .ask_state(signer, url, &m.name, deadline)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(why) => Err(format!("no address: {why}")),
                    };
                    (m.name.clone(), state)
                },
            )
            .await,
        );
        let found = RealPrimary {
            answers,
            scope: config.leases.scope,
            sites: snapshot
                .members
                .iter()
                .map(|m| (m.name.clone(), m.location.clone()))
                .collect(),
        };
        let primaries = found.primaries();
        if primaries.len() > 1 {
            warn!(
                ?primaries,
                "more than one node answers Primary: split brain"
            );
        }
        found
    }
}

/// The outcome of a `/realPrimary` fan-out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RealPrimary {
    /// Each node asked and its state, or why it gave none.
    pub answers: Vec<(String, Result<State, String>)>,
    /// The `vote_scope` of this node.
    pub scope: VoteScope,
    /// Each node's site (its repmgr `location`), as the membership lists it.
    pub sites: BTreeMap<String, String>,
}

impl RealPrimary {
    /// Every node that answered Primary.
    pub fn primaries(&self) -> Vec<&str> {
        self.answers
            .iter()
            .filter(|(_, s)| *s == Ok(State::Primary))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The nodes that answered Witness.
    pub fn witnesses(&self) -> Vec<&str> {
        self.answers
            .iter()
            .filter(|(_, s)| *s == Ok(State::Witness))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Every answer, site by site (in the order of the sites' names; a node of no known site
    /// under `""`).
    fn by_site(&self) -> Vec<RealPrimarySite> {
        let mut sites: BTreeMap<&str, RealPrimarySite> = BTreeMap::new();
        for (node, state) in &self.answers {
            let site = self.sites.get(node).map_or("", String::as_str);
            let entry = sites.entry(site).or_insert_with(|| RealPrimarySite {
                nodes: BTreeMap::new(),
                site: site.to_string(),
            });
            let state = state.as_ref().ok().map(|s| s.name().to_string());
            entry.nodes.insert(node.clone(), state);
        }
        sites.into_values().collect()
    }

    /// Status and body: 200 with the one primary, else 503 (listing them when several).
    /// Witnesses are listed as such, never as primaries.
    pub fn reply(&self) -> (u16, Bytes) {
        let owned = |names: Vec<&str>| names.into_iter().map(String::from).collect();
        let primaries = self.primaries();
        let body = RealPrimaryBody {
            error: None,
            real_primary: match primaries.as_slice() {
                [one] => Some(one.to_string()),
                _ => None,
            },
            primaries: if primaries.len() > 1 {
                owned(primaries)
            } else {
                Vec::new()
            },
            scope: self.scope,
            sites: match self.scope {
                VoteScope::Site => Vec::new(),
                VoteScope::Cluster => self.by_site(),
            },
            witnesses: owned(self.witnesses()),
        };
        let code = if body.real_primary.is_some() {
            200
        } else {
            503
        };
        (code, json_bytes(&body))
    }
}

/// One computation at a time, awaited by every caller that arrives while it runs; the next
/// caller after it ends (well or not) starts afresh. A task that panics or is cancelled is an
/// error for its callers, never a result.
struct Flights<T> {
    current: Mutex<Option<(u64, Flight<T>)>>,
    next_id: std::sync::atomic::AtomicU64,
}

type Flight<T> = SharedFuture<BoxFuture<'static, Result<Arc<T>, String>>>;

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            current: Mutex::new(None),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl<T: Send + Sync + 'static> Flights<T> {
    /// Joins the running flight, or starts one with `start`.
    fn join(self: &Arc<Self>, start: impl FnOnce() -> tokio::task::JoinHandle<T>) -> Flight<T> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, flight)) = current.as_ref() {
            return flight.clone();
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let task = start();
        let flights = Arc::clone(self);
        let flight: Flight<T> = async move {
            let outcome = task
                .await
                .map(Arc::new)
                .map_err(|e| format!("fan-out failed: {e}"));
            flights.end(id);
            outcome
        }
        .boxed()
        .shared();
        *current = Some((id, flight.clone()));
        flight
    }

    /// Forgets flight `id` once it has ended, so that the next caller starts afresh.
    fn end(&self, id: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|(c, _)| *c == id) {
            *current = None;
        }
    }
}

/// A reply of `endpoint` with its media type, never cached.
fn json_reply(endpoint: Endpoint, code: u16, body: Bytes) -> Reply {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, endpoint.content_type());
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A `/vote` request's parameters (`candidate`, `scope`); any other parameter is an error.
fn vote_request(query: Option<&str>) -> Result<VoteRequest, String> {
    VoteRequest::from_pairs(&reads::query_pairs(query)?)
}

/// The epoch a `/release` undoes: exactly one parameter `undoes=<boot id>.<n>`; anything else
/// (none, another parameter, a malformed epoch) is an error and the release changes nothing.
fn release_undoes(query: Option<&str>) -> Result<GrantEpoch, String> {
    let key = wire::RELEASE_UNDOES;
    let usage = || {
        format!(
            "a release names the epoch of the sender's grants it undoes: /release?{key}=<boot \
             id>.<n>, as its vote answers gave it"
        )
    };
    match reads::query_pairs(query)?.as_slice() {
        [(k, v)] if k == key => GrantEpoch::parse(v)
            .ok_or_else(|| format!("{key}: {v:?} is not a grant epoch; {}", usage())),
        [] => Err(format!("no {key}: {}", usage())),
        [(k, _)] => Err(format!("unknown parameter {k:?} (known: {key})")),
        _ => Err(format!("one parameter only: {}", usage())),
    }
}

/// 405, with the methods `endpoint` answers.
fn not_allowed(endpoint: Endpoint) -> Reply {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut().insert(
        ALLOW,
        HeaderValue::from_static(endpoint.methods().allow_header()),
    );
    r
}

/// An error reply: `{"error": message}`, as JSON.
fn error(status: StatusCode, message: &'static str) -> Reply {
    let mut r = Response::new(json_bytes(&ErrorBody {
        error: message.to_string(),
    }));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A WAL position as PostgreSQL writes it (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Milliseconds from `now` to `t` (negative when `t` is past).
fn ms_until(now: Instant, t: Instant) -> i64 {
    if t >= now {
        (t - now).as_millis() as i64
    } else {
        -((now - t).as_millis() as i64)
    }
}

/// Everything the snapshot knows, as served by `/status`.
pub fn status_json(loaded: &Loaded, snapshot: &Snapshot, now: Instant) -> Status {
    let config = &loaded.config;
    let state = snapshot.served_state(now);
    let address = |url: &Result<Uri, String>| url.as_ref().ok().map(|u| u.to_string());
    let voters = snapshot
        .voters
        .iter()
        .map(|v| {
            let (vote, error) = match &v.reply {
                VoteReply::Granted(g) => (Some(g.to.clone()), None),
                VoteReply::Refused(why) | VoteReply::Withdrawn(why) | VoteReply::Failed(why) => {
                    (None, Some(why.clone()))
                }
            };
            StatusVoter {
                address: address(&v.url),
                error,
                latency_ms: v.latency.map(millis),
                name: v.name.clone(),
                vote,
            }
        })
        .collect();
    let held_votes = snapshot
        .ballot
        .votes
        .iter()
        .map(|v| StatusHeldVote {
            counts: v.counts(now),
            expires_in_ms: ms_until(now, v.valid_until),
            settles_in_ms: ms_until(now, v.settled_at).max(0),
            voter: v.voter.clone(),
        })
        .collect();
    let members = snapshot
        .members
        .iter()
        .map(|m| StatusMember {
            active: m.active,
            address: address(&m.url),
            address_error: m.url.as_ref().err().cloned(),
            conninfo: m.conninfo.clone(),
            name: m.name.clone(),
            node_id: m.node_id,
            site: m.location.clone(),
            node_type: m.node_type.clone(),
        })
        .collect();
    let replication = snapshot.replication.as_ref().map(|r| StatusReplication {
        lag_bytes: r.lag().ok(),
        lag_unknown: r.lag().err(),
        last_replay_age_ms: r
            .last_replay_age
            .map(|a| millis(a + snapshot.age(now).unwrap_or_default())),
        primary_lsn: r.primary.as_ref().ok().map(|p| lsn_text(p.lsn)),
        primary_lsn_from: r.primary.as_ref().ok().map(|p| p.source.to_string()),
        received_lsn: r.received.map(lsn_text),
        receiver_state: r.receiver_text(),
        replay_paused: r.replay_paused,
        replayed_lsn: r.replayed.map(lsn_text),
        sync_state: r.sync.as_ref().ok().map(|s| sync_text(*s).to_string()),
        sync_unknown: r.sync.as_ref().err().cloned(),
        upstream: r.receiver.as_ref().and_then(|w| w.sender.clone()),
    });
    Status {
        cluster_id: None,
        code: state.code(),
        config: StatusConfig {
            fingerprint: loaded.fingerprint.clone(),
            loaded_at: humantime::format_rfc3339_millis(loaded.at).to_string(),
        },
        cycle_ms: millis(snapshot.cycle_time),
        database: StatusDatabase {
            conninfo: conninfo::redact(&config.db.conninfo),
            current_lsn: snapshot.current_lsn.map(lsn_text),
            error: snapshot.db.error.as_ref().map(|e| e.to_string()),
            in_recovery: snapshot.db.in_recovery,
            reachable: snapshot.db.reachable,
            sessions_closed_by_server: snapshot.session.closed(),
            wal_senders: snapshot.wal_senders.clone(),
        },
        drained: snapshot.drained.as_ref().map(|d| StatusDrain {
            reason: d.reason.clone(),
            since: humantime::format_rfc3339_seconds(d.since).to_string(),
        }),
        handoff_delay_ms: millis(config.leases.handoff_delay),
        held_votes,
        interval_ms: millis(config.timing.interval),
        max_staleness_ms: millis(config.timing.max_staleness),
        members,
        node: config.node.node_name.clone(),
        observed_at: snapshot
            .observed_at
            .map(|_| humantime::format_rfc3339_millis(snapshot.observed_at_wall).to_string()),
        peer_auth: String::new(),
        peer_auth_failures: Default::default(),
        peer_requests_refused: 0,
        primary: snapshot.primary.clone(),
        reason: snapshot.served_reason(now),
        replication,
        site: snapshot.site.clone(),
        snapshot_age_ms: snapshot.age(now).map(millis),
        state: state.name().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        vote_lease_ms: millis(config.leases.vote_lease),
        vote_scope: config.leases.scope,
        voters,
        votes: snapshot.ballot.counting(now) as u64,
        votes_by_site: snapshot
            .votes_by_site(now)
            .into_iter()
            .map(|s| StatusSiteVotes {
                members: s.members as u64,
                site: s.site,
                votes: s.voters.len() as u64,
                voters: s.voters,
            })
            .collect(),
        votes_needed: snapshot.ballot.needed as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A fan-out task that fails is an error for its callers, and the next caller starts a new
    /// one instead of getting the same failure again (issue: a failed fan-out was served as
    /// `200 {"realPrimary":"fan-out failed: ..."}` forever).
    #[tokio::test]
    async fn a_failed_flight_is_an_error_and_the_next_starts_afresh() {
        let flights: Arc<Flights<RealPrimary>> = Arc::default();
        let failed = flights
            .join(|| tokio::spawn(async { panic!("boom") }))
            .await;
        assert!(
            matches!(&failed, Err(e) if e.contains("fan-out failed")),
            "{failed:?}"
        );
        let ok = flights
            .join(|| {
                tokio::spawn(async {
                    RealPrimary {
                        answers: vec![("n1".into(), Ok(State::Primary))],
                        ..RealPrimary::default()
                    }
                })
            })
            .await
            .expect("a fresh flight");
        assert_eq!(ok.reply().0, 200);
    }

    /// Callers that arrive while a flight runs share it: one computation.
    #[tokio::test]
    async fn simultaneous_callers_share_one_flight() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let flights: Arc<Flights<u32>> = Arc::default();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let started = AtomicU32::new(0);
        let first = flights.join(|| {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = wait.await;
                7
            })
        });
        let second = flights.join(|| {
            started.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async { 8 })
        });
        go.send(()).expect("the flight waits");
        assert_eq!((*first.await.unwrap(), *second.await.unwrap()), (7, 7));
        assert_eq!(started.load(Ordering::SeqCst), 1, "one computation");
    }

    #[test]
    fn real_primary_replies() {
        let r = |answers: Vec<(&str, Result<State, String>)>| {
            let found = RealPrimary {
                answers: answers
                    .into_iter()
                    .map(|(n, s)| (n.to_string(), s))
                    .collect(),
                ..RealPrimary::default()
            };
            let (code, body) = found.reply();
            (code, serde_json::from_slice::<Value>(&body).unwrap())
        };
        assert_eq!(
            r(vec![("n1", Ok(State::Primary)), ("w", Ok(State::Witness))]),
            (200, json!({"realPrimary": "n1", "witnesses": ["w"]}))
        );
        assert_eq!(
            r(vec![("n1", Ok(State::Primary)), ("n2", Ok(State::Primary))]),
            (503, json!({"realPrimary": null, "primaries": ["n1", "n2"]}))
        );
        assert_eq!(
            r(vec![
                ("n1", Ok(State::Unknown)),
                ("n2", Err("timeout".into()))
            ]),
            (503, json!({"realPrimary": null}))
        );
    }

    /// Cluster scope: `/realPrimary` says so and lists every answer site by site; in site
    /// scope its body is the same as before scopes.
    #[test]
    fn real_primary_shows_the_scope_and_the_answers_by_site() {
        let found = RealPrimary {
            answers: vec![
                ("n1".into(), Ok(State::Primary)),
                ("n2".into(), Ok(State::Standby)),
                ("n3".into(), Ok(State::Unknown)),
                ("n4".into(), Err("timeout".into())),
                ("w".into(), Ok(State::Witness)),
            ],
            scope: VoteScope::Cluster,
            sites: [
                ("n1", "dc1"),
                ("n2", "dc1"),
                ("n3", "dc2"),
                ("n4", "dc2"),
                ("w", "dc3"),
            ]
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .into(),
        };
        let (code, body) = found.reply();
        assert_eq!(
            (code, serde_json::from_slice::<Value>(&body).unwrap()),
            (
                200,
                json!({"realPrimary": "n1", "witnesses": ["w"], "scope": "cluster", "sites": [
                    {"site": "dc1", "nodes": {"n1": "Primary", "n2": "Standby"}},
                    {"site": "dc2", "nodes": {"n3": "Unknown", "n4": null}},
                    {"site": "dc3", "nodes": {"w": "Witness"}}
                ]})
            )
        );
        let site = RealPrimary {
            scope: VoteScope::Site,
            ..found
        };
        let (_, body) = site.reply();
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            json!({"realPrimary": "n1", "witnesses": ["w"]})
        );
    }

    /// `/status` says the scope in force and, in cluster scope, a candidate's votes counting
    /// now site by site (a settling vote is not counted yet; an expired one no more).
    #[test]
    fn status_shows_the_scope_and_the_votes_by_site() {
        use crate::decide::Site;
        use crate::vote::{Ballot, HeldVote};
        let mut config = crate::Config::for_node("n3").expect("config");
        config.leases.scope = VoteScope::Cluster;
        let loaded = Loaded {
            fingerprint: config.fingerprint(),
            config: Arc::new(config),
            at: std::time::SystemTime::UNIX_EPOCH,
        };
        let now = Instant::now();
        let vote = |voter: &str, settled: i64, until: u64| HeldVote {
            voter: voter.into(),
            epoch: None,
            sent: now,
            valid_until: now + Duration::from_millis(until),
            settled_at: if settled < 0 {
                now
            } else {
                now + Duration::from_millis(settled as u64)
            },
        };
        let mut snapshot = Snapshot::starting();
        snapshot.observed_at = Some(now);
        snapshot.max_staleness = Duration::from_secs(5);
        snapshot.ballot = Ballot {
            votes: vec![
                vote("n3", -1, 3000),
                vote("n4", -1, 3000),
                vote("w", 500, 3000),
                vote("n1", -1, 0),
            ],
            needed: 3,
        };
        let site = |name: &str, members: &[&str]| Site {
            site: name.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        snapshot.electorate = vec![
            site("dc1", &["n1", "n2"]),
            site("dc2", &["n3", "n4"]),
            site("dc3", &["w"]),
        ];
        let status = status_json(&loaded, &snapshot, now);
        assert_eq!(status.vote_scope, VoteScope::Cluster);
        let doc = serde_json::to_value(&status).unwrap();
        assert_eq!(doc["vote_scope"], "cluster");
        assert_eq!(
            doc["votes_by_site"],
            json!([
                {"members": 2, "site": "dc1", "voters": [], "votes": 0},
                {"members": 2, "site": "dc2", "voters": ["n3", "n4"], "votes": 2},
                {"members": 1, "site": "dc3", "voters": [], "votes": 0}
            ])
        );
        assert_eq!((status.votes, status.votes_needed), (2, 3));
        // Site scope, or no candidate: no electorate by site.
        snapshot.electorate.clear();
        let mut config = (*loaded.config).clone();
        config.leases.scope = VoteScope::Site;
        let loaded = Loaded {
            config: Arc::new(config),
            ..loaded
        };
        let doc = serde_json::to_value(status_json(&loaded, &snapshot, now)).unwrap();
        assert_eq!(
            (doc["vote_scope"].clone(), doc["votes_by_site"].clone()),
            (json!("site"), json!([]))
        );
    }

    /// `/vote` through the routing table: a candidate of the other scope gets a 503 that says
    /// why, in this voter's scope; a bad scope is a 400.
    #[tokio::test]
    async fn a_vote_of_the_other_scope_is_refused_and_says_why() {
        use tower_service::Service as _;
        let mut config = crate::Config::for_node("n1").expect("config");
        config.peer.peer_allow = vec!["127.0.0.1".parse().expect("ip")];
        config.leases.scope = VoteScope::Cluster;
        let app = App::new(Arc::new(Shared::new(config)));
        let get = |target: &str| {
            use http_body_util::BodyExt as _;
            let request = Request::builder()
                .uri(target)
                .body(Empty::<Bytes>::new())
                .expect("request");
            let client: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
            let reply = app.service(client).call(request);
            async move {
                let reply = reply.await.expect("infallible");
                let code = reply.status().as_u16();
                let body = reply.into_body().collect().await.expect("body").to_bytes();
                (code, body)
            }
        };
        let (code, body) = get("/vote?candidate=n2").await;
        assert_eq!(code, 503);
        let answer = VoteAnswer::read(503, &body).expect("a refusal");
        let VoteAnswer::Refusal(r) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(
            (r.node.as_str(), r.scope, r.withdrawn),
            ("n1", VoteScope::Cluster, false)
        );
        assert!(
            r.reason
                .contains("vote_scope is \"cluster\", the candidate's \"site\""),
            "{}",
            r.reason
        );
        // Its own scope: refused for another reason (the daemon just started).
        let (code, body) = get("/vote?candidate=n2&scope=cluster").await;
        let body = String::from_utf8_lossy(&body).to_string();
        assert_eq!(code, 503);
        assert!(
            body.contains("started recently") && body.contains("\"scope\":\"cluster\""),
            "{body}"
        );
        let (code, body) = get("/vote?candidate=n2&scope=galaxy").await;
        assert_eq!(code, 400, "{body:?}");
    }

    /// Sends `method target` through [`routes`] (as the server would, without a body) and
    /// returns the status, the `Allow` header and the endpoint row the request was counted in.
    async fn ask(app: &Arc<App>, method: Method, target: &str) -> (u16, Option<String>, String) {
        use tower_service::Service as _;
        let before = app.requests.snapshot();
        let client: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        let request = Request::builder()
            .method(method)
            .uri(target)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let reply = app.service(client).call(request).await.expect("infallible");
        let after = app.requests.snapshot();
        let counted: Vec<&str> = after
            .iter()
            .filter(|row| !before.contains(row))
            .map(|(endpoint, _, _)| *endpoint)
            .collect();
        assert_eq!(counted.len(), 1, "{target}: counted once: {counted:?}");
        let allow = reply
            .headers()
            .get(ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        (reply.status().as_u16(), allow, counted[0].to_string())
    }

    /// Every path of the table reaches its endpoint (counted under its name), exactly: a
    /// trailing slash, an extra segment, another case or an empty segment is 404 (counted as
    /// unrouted), and a method the endpoint does not answer is 405 with `Allow`.
    #[tokio::test]
    async fn the_routing_table() {
        let mut config = crate::Config::for_node("n1").expect("config");
        // No key: the peer endpoints answer the members and `peer_allow` (the test's client).
        config.peer.peer_allow = vec!["127.0.0.1".parse().expect("ip")];
        let app = App::new(Arc::new(Shared::new(config)));
        let routed = [
            ("/", "/state"),
            ("/state", "/state"),
            ("/state?x=1", "/state"),
            ("/primary", "/primary"),
            ("/status", "/status"),
            ("/vote?candidate=n2", "/vote"),
            ("/wal", "/wal"),
            ("/replica", "/replica"),
            ("/replica?lag=1MB", "/replica"),
            ("/read-write", "/read-write"),
            ("/leader", "/read-write"),
            ("/read-only", "/read-only"),
            ("/health", "/health"),
            ("/liveness", "/liveness"),
            ("/readiness", "/readiness"),
            ("/metrics", "/metrics"),
        ];
        for (target, name) in routed {
            let (code, _, counted) = ask(&app, Method::GET, target).await;
            assert!(code != 404 && code != 405, "GET {target}: {code}");
            assert_eq!(counted, name, "GET {target}");
        }
        // A release names the epoch it undoes, exactly; without a key, its sender is the one
        // member at the request's address (a `peer_allow` address names nobody).
        let epoch = "AAAAAAAAAAAAAAAAAAAAAA.0";
        for bad in [
            "/release".to_string(),
            "/release?undoes=x.1".into(),
            format!("/release?undoes={epoch}&undoes={epoch}"),
            format!("/release?undo={epoch}"),
        ] {
            let (code, _, counted) = ask(&app, Method::POST, &bad).await;
            assert_eq!((code, counted.as_str()), (400, "/release"), "{bad}");
        }
        let target = format!("/release?undoes={epoch}");
        let (code, _, _) = ask(&app, Method::POST, &target).await;
        assert_eq!(code, 403, "a peer_allow address is no member's");
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let both = ["n2".to_string(), "n3".to_string()];
        app.shared
            .auth
            .set_members([(ip, both.iter().cloned().collect())].into());
        let (code, _, _) = ask(&app, Method::POST, &target).await;
        assert_eq!(code, 403, "two members at one address: ambiguous");
        app.shared
            .auth
            .set_members([(ip, both[..1].iter().cloned().collect())].into());
        let (code, _, counted) = ask(&app, Method::POST, &target).await;
        assert_eq!(
            (code, counted.as_str()),
            (200, "/release"),
            "nothing to hold back"
        );
        let (code, _, _) = ask(&app, Method::GET, "/replica?lag=x").await;
        assert_eq!(code, 400, "a bad parameter");
        let unrouted = [
            "/State",
            "/state/",
            "/state/extra",
            "//",
            "//state",
            "/nope",
            "/leader/",
        ];
        for target in unrouted {
            assert_eq!(
                ask(&app, Method::GET, target).await,
                (404, None, UNROUTED.to_string()),
                "GET {target}"
            );
        }
        let refused = [
            (Method::POST, "/state", "GET, HEAD, OPTIONS", "/state"),
            (Method::DELETE, "/", "GET, HEAD, OPTIONS", "/state"),
            (Method::HEAD, "/vote", "GET", "/vote"),
            (Method::GET, "/release", "POST", "/release"),
            (Method::POST, "/metrics", "GET, HEAD, OPTIONS", "/metrics"),
        ];
        for (method, target, allow, name) in refused.clone() {
            assert_eq!(
                ask(&app, method.clone(), target).await,
                (405, Some(allow.to_string()), name.to_string()),
                "{method} {target}"
            );
        }
        println!(
            "{} routed, {} unrouted and {} refused requests checked",
            routed.len() + 2,
            unrouted.len(),
            refused.len()
        );
    }

    /// The health check answered in front of warp ([`crate::server::Direct`]) is warp's
    /// answer: for `/state`, `/` and `/state?x=1`, by GET, HEAD and OPTIONS, in each served
    /// state (a Primary in its window, the same Primary after its window, a Standby, a
    /// starting node), the same status, headers and body, counted in the same row; whatever
    /// else (another method, path or a signed request) is left to warp.
    #[tokio::test]
    async fn the_direct_health_check_answers_as_warp_does() {
        use crate::server::Direct as _;
        use crate::vote::Window;
        use http_body_util::BodyExt as _;
        use tower_service::Service as _;

        let app = App::new(Arc::new(Shared::new(
            crate::Config::for_node("n1").expect("config"),
        )));
        let client: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut primary = Snapshot::starting();
        primary.observed_at = Some(t0);
        primary.max_staleness = 2 * hour;
        primary.verdict.state = State::Primary;
        primary.verdict.window = Some(Window {
            from: t0,
            until: t0 + hour,
        });
        let mut standby = primary.clone();
        standby.verdict.state = State::Standby;
        standby.verdict.window = None;
        // (snapshot, the instant asked at, the state it answers, whether warp, which
        // decides at its own `now`, answers the same)
        let cases = [
            (
                primary.clone(),
                t0 + Duration::from_secs(1),
                State::Primary,
                true,
            ),
            (
                primary,
                t0 + hour + Duration::from_secs(1),
                State::Unknown,
                false,
            ),
            (standby, t0 + Duration::from_secs(1), State::Standby, true),
            (Snapshot::starting(), t0, State::Down, true),
        ];
        let (mut answered, mut compared) = (0, 0);
        for (snapshot, at, state, same_now) in cases {
            app.shared.store.store(snapshot);
            let code = state.code().to_string();
            for target in ["/state", "/", "/state?x=1"] {
                for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
                    let what = format!("{method} {target} ({state})");
                    let uri: Uri = target.parse().expect("uri");
                    let before = app.requests.snapshot();
                    let direct = app
                        .answer_now(&method, &uri, &hyper::HeaderMap::new(), at)
                        .unwrap_or_else(|| panic!("{what} is answered directly"));
                    let after = app.requests.snapshot();
                    let rows =
                        |from: &Vec<(&'static str, String, u64)>,
                         to: &Vec<(&'static str, String, u64)>| {
                            to.iter()
                                .filter(|r| !from.contains(r))
                                .map(|(e, c, _)| (*e, c.clone()))
                                .collect::<Vec<_>>()
                        };
                    assert_eq!(rows(&before, &after), [("/state", code.clone())], "{what}");
                    let (parts, body) = direct.into_parts();
                    let body = body.collect().await.expect("body").to_bytes();
                    assert_eq!(parts.status.as_u16(), state.code(), "{what}");
                    let expected = if method == Method::GET {
                        state_body(state)
                    } else {
                        Bytes::new()
                    };
                    assert_eq!(body, expected, "{what}");
                    answered += 1;
                    if !same_now {
                        continue;
                    }
                    let request = Request::builder()
                        .method(method.clone())
                        .uri(target)
                        .body(Empty::<Bytes>::new())
                        .expect("request");
                    let routed = app.service(client).call(request).await.expect("infallible");
                    assert_eq!(
                        rows(&after, &app.requests.snapshot()),
                        [("/state", code.clone())],
                        "{what}"
                    );
                    let (wparts, wbody) = routed.into_parts();
                    let wbody = wbody.collect().await.expect("body").to_bytes();
                    assert_eq!(wparts.status, parts.status, "{what}");
                    assert_eq!(wparts.headers, parts.headers, "{what}");
                    assert_eq!(wbody, body, "{what}");
                    compared += 1;
                }
            }
        }
        let mut signed = hyper::HeaderMap::new();
        signed.insert(auth::HEADER, HeaderValue::from_static("v1 anything"));
        let left = [
            (Method::POST, "/state", hyper::HeaderMap::new()),
            (Method::DELETE, "/", hyper::HeaderMap::new()),
            (Method::GET, "/state/", hyper::HeaderMap::new()),
            (Method::GET, "//state", hyper::HeaderMap::new()),
            (Method::GET, "/State", hyper::HeaderMap::new()),
            (Method::GET, "/status", hyper::HeaderMap::new()),
            (Method::GET, "/read-write", hyper::HeaderMap::new()),
            (Method::GET, "/state", signed),
        ];
        for (method, target, headers) in &left {
            let uri: Uri = target.parse().expect("uri");
            assert!(
                app.answer_now(method, &uri, headers, Instant::now())
                    .is_none(),
                "{method} {target} ({headers:?}) is warp's"
            );
        }
        println!(
            "direct health check: {answered} answers checked, {compared} compared with warp's, \
             {} requests left to warp",
            left.len()
        );
    }

    /// The request counters' rows are the endpoints in declaration order, then `unrouted`.
    #[test]
    fn counter_rows_follow_the_endpoints() {
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(counter_row(Some(*e)), i, "{e:?}");
        }
        assert_eq!(counter_row(None), Endpoint::ALL.len());
        assert!(Methods::Read.allows(&Method::OPTIONS) && !Methods::Read.allows(&Method::POST));
        assert!(!Methods::Get.allows(&Method::HEAD) && !Methods::Post.allows(&Method::GET));
    }
}
