//! The HTTP API: what each endpoint answers, from the snapshot.
//!
//! Owns the routes and their replies: `/state` and `/` (the health check), `/primary` (what the
//! local metadata names; the site vote asks this), `/realPrimary` (a fan-out to every node's
//! `/state`, shared by simultaneous callers), `/status` (everything the snapshot knows, for
//! operators and probes). Every endpoint answers GET, HEAD and OPTIONS; other methods get 405,
//! other paths 404. Nothing here touches the database: handlers only read the snapshot.
//!
//! [`service`] is what the server runs: it answers the health check (GET or HEAD of `/state`
//! or `/`, what haproxy sends many times a second) itself, straight from the snapshot, and
//! hands every other request to the warp [`routes`]. Going through warp's routing cost more
//! user-space work than the whole answer (measured with `contrib/bench`); both paths build the
//! reply with the same function, so the answer is the same byte for byte.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{
    BoxFuture, Either as EitherFuture, MapOk, Shared, TryFutureExt, join_all,
};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tracing::warn;
use warp::Filter;

use crate::config::Config;
use crate::decide::{PeerAnswer, State};
use crate::peers::PeerClient;
use crate::snapshot::{Snapshot, SnapshotStore, redact_conninfo, state_body};

/// What the handlers share: the configuration, the snapshot and the peer client.
pub struct App {
    config: Arc<Config>,
    store: Arc<SnapshotStore>,
    client: PeerClient,
    flight: Mutex<Option<Flight>>,
}

/// One `/realPrimary` fan-out, awaited by every request that arrives while it runs.
type Flight = Shared<BoxFuture<'static, Arc<RealPrimary>>>;

/// The outcome of a `/realPrimary` fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealPrimary {
    /// Each node asked and its state, or why it gave none.
    pub answers: Vec<(String, Result<State, String>)>,
    /// Every node that answered Primary.
    pub primaries: Vec<String>,
}

impl RealPrimary {
    /// Status and body: 200 with the one primary, else 503 (listing them when several).
    pub fn reply(&self) -> (u16, Bytes) {
        let body = match self.primaries.as_slice() {
            [one] => return (200, Bytes::from(json!({ "realPrimary": one }).to_string())),
            [] => json!({ "realPrimary": null }),
            many => json!({ "realPrimary": null, "primaries": many }),
        };
        (503, Bytes::from(body.to_string()))
    }
}

impl App {
    pub fn new(config: Arc<Config>, store: Arc<SnapshotStore>, client: PeerClient) -> Arc<App> {
        Arc::new(App {
            config,
            store,
            client,
            flight: Mutex::new(None),
        })
    }

    /// The current snapshot (for tests and embedding).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.store.load()
    }

    /// Asks every known node's `/state` at once (this node from its own snapshot), within
    /// `peer_timeout`. Requests that arrive while a fan-out runs wait for that one.
    pub async fn real_primary(self: &Arc<Self>) -> Arc<RealPrimary> {
        let flight = {
            let mut slot = self.flight.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(flight) => flight.clone(),
                None => {
                    let app = Arc::clone(self);
                    let task = tokio::spawn(async move {
                        let outcome = Arc::new(app.fan_out_states().await);
                        *app.flight.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        outcome
                    });
                    let flight: Flight = async move {
                        task.await.unwrap_or_else(|e| {
                            Arc::new(RealPrimary {
                                answers: vec![],
                                primaries: vec![format!("fan-out failed: {e}")],
                            })
                        })
                    }
                    .boxed()
                    .shared();
                    *slot = Some(flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    async fn fan_out_states(&self) -> RealPrimary {
        let snapshot = self.store.load();
        let me = &self.config.node_name;
        let own = snapshot.served_state(Instant::now(), self.config.max_staleness);
        let deadline = tokio::time::Instant::now() + self.config.peer_timeout;
        let asks = snapshot
            .members
            .iter()
            .filter(|m| &m.name != me)
            .map(|m| async move {
                let state = match &m.url {
                    Ok(url) => self
                        .client
                        .ask_state(url, deadline)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(why) => Err(format!("no address: {why}")),
                };
                (m.name.clone(), state)
            });
        let mut answers = vec![(me.clone(), Ok(own))];
        answers.extend(join_all(asks).await);
        let primaries: Vec<String> = answers
            .iter()
            .filter(|(_, s)| *s == Ok(State::Primary))
            .map(|(n, _)| n.clone())
            .collect();
        if primaries.len() > 1 {
            warn!(
                ?primaries,
                "more than one node answers Primary: split brain"
            );
        }
        RealPrimary { answers, primaries }
    }
}

/// The HTTP service of one daemon: the health check answered directly, everything else by
/// [`routes`] (see the module documentation).
pub fn service(
    app: Arc<App>,
) -> ApiService<
    impl Service<
        Request<Incoming>,
        Response = warp::reply::Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static,
> {
    let routes =
        hyper_util::service::TowerToHyperService::new(warp::service(routes(Arc::clone(&app))));
    ApiService { app, routes }
}

/// See [`service`].
#[derive(Clone)]
pub struct ApiService<R> {
    app: Arc<App>,
    routes: R,
}

/// A reply of [`ApiService`]: the health check's own body, or the routes' body.
pub type ApiResponse<B> = Response<Either<Full<Bytes>, B>>;

impl<R, B> Service<Request<Incoming>> for ApiService<R>
where
    R: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
{
    type Response = ApiResponse<B>;
    type Error = Infallible;
    #[allow(clippy::type_complexity)]
    type Future = EitherFuture<
        Ready<Result<ApiResponse<B>, Infallible>>,
        MapOk<R::Future, fn(Response<B>) -> ApiResponse<B>>,
    >;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let method = request.method();
        if (method == Method::GET || method == Method::HEAD)
            && matches!(request.uri().path(), "/" | "/state")
        {
            let (code, body) = state_reply(&self.app, Instant::now());
            let reply = json_reply(code, body).map(|b| Either::Left(Full::new(b)));
            return EitherFuture::Left(ready(Ok(reply)));
        }
        let wrap: fn(Response<B>) -> ApiResponse<B> = |r| r.map(Either::Right);
        EitherFuture::Right(self.routes.call(request).map_ok(wrap))
    }
}

/// Status and body of `/state` at `now`.
fn state_reply(app: &App, now: Instant) -> (u16, Bytes) {
    let state = app.store.peek().served_state(now, app.config.max_staleness);
    (state.code(), state_body(state))
}

/// The routes of one daemon, as a warp filter.
pub fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (Response<Bytes>,), Error = std::convert::Infallible>
+ Clone
+ Send
+ Sync
+ 'static {
    warp::method()
        .and(warp::path::full())
        .and(warp::any().map(move || Arc::clone(&app)))
        .then(
            |method: Method, path: warp::path::FullPath, app: Arc<App>| async move {
                handle(&app, &method, path.as_str()).await
            },
        )
}

#[derive(Clone, Copy)]
enum Endpoint {
    State,
    Primary,
    RealPrimary,
    Status,
}

async fn handle(app: &Arc<App>, method: &Method, path: &str) -> Response<Bytes> {
    let endpoint = match path {
        "/" | "/state" => Endpoint::State,
        "/primary" => Endpoint::Primary,
        "/realPrimary" => Endpoint::RealPrimary,
        "/status" => Endpoint::Status,
        _ => return error(StatusCode::NOT_FOUND, "not found"),
    };
    if method != Method::GET && method != Method::HEAD && method != Method::OPTIONS {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        return r;
    }
    let now = Instant::now();
    let max_staleness = app.config.max_staleness;
    let (code, body) = match endpoint {
        Endpoint::State => state_reply(app, now),
        Endpoint::Primary => app.store.peek().primary_reply(now, max_staleness),
        Endpoint::RealPrimary => app.real_primary().await.reply(),
        Endpoint::Status => {
            let snapshot = app.store.load();
            let state = snapshot.served_state(now, max_staleness);
            let status = status_json(&app.config, &snapshot, now);
            (state.code(), Bytes::from(status.to_string()))
        }
    };
    let body = if method == Method::OPTIONS {
        Bytes::new()
    } else {
        body
    };
    json_reply(code, body)
}

fn json_reply(code: u16, body: Bytes) -> Response<Bytes> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, message: &'static str) -> Response<Bytes> {
    json_reply(
        status.as_u16(),
        Bytes::from(json!({ "error": message }).to_string()),
    )
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Everything the snapshot knows, as served by `/status`.
pub fn status_json(config: &Config, snapshot: &Snapshot, now: Instant) -> Value {
    let state = snapshot.served_state(now, config.max_staleness);
    let reason = match snapshot.withheld(now, config.max_staleness) {
        Some(w) => w.reason().to_string(),
        None => snapshot.verdict.reason.clone(),
    };
    let voters: Vec<Value> = snapshot
        .voters
        .iter()
        .map(|v| {
            let (said, error) = match &v.answer {
                PeerAnswer::Named(n) => (Some(n.as_str()), None),
                PeerAnswer::NoPrimary(why) => (None, Some(why.as_str())),
                PeerAnswer::Failed(why) => (None, Some(why.as_str())),
            };
            json!({
                "name": v.name,
                "address": v.url.as_ref().ok().map(|u| u.to_string()),
                "primary": said,
                "votes_for_us": said == Some(config.node_name.as_str()),
                "error": error,
                "latency_ms": v.latency.map(millis),
            })
        })
        .collect();
    let members: Vec<Value> = snapshot
        .members
        .iter()
        .map(|m| {
            json!({
                "node_id": m.node_id,
                "name": m.name,
                "site": m.location,
                "type": m.node_type,
                "active": m.active,
                "address": m.url.as_ref().ok().map(|u| u.to_string()),
                "address_error": m.url.as_ref().err(),
                "conninfo": m.conninfo,
            })
        })
        .collect();
    json!({
        "node": config.node_name,
        "site": snapshot.site,
        "state": state.name(),
        "code": state.code(),
        "reason": reason,
        "primary": snapshot.primary,
        "votes": snapshot.verdict.votes,
        "votes_needed": snapshot.verdict.needed,
        "voters": voters,
        "database": {
            "reachable": snapshot.db.reachable,
            "in_recovery": snapshot.db.in_recovery,
            "error": snapshot.db.error.as_ref().map(|e| e.to_string()),
            "conninfo": redact_conninfo(&config.conninfo),
        },
        "members": members,
        "snapshot_age_ms": snapshot.age(now).map(millis),
        "observed_at": snapshot.observed_at.map(|_| humantime::format_rfc3339_millis(snapshot.observed_at_wall).to_string()),
        "cycle_ms": millis(snapshot.cycle_time),
        "interval_ms": millis(config.interval),
        "max_staleness_ms": millis(config.max_staleness),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::decide::Verdict;
    use crate::snapshot::DbStatus;

    /// Sends one request on a fresh connection; the whole answer without its `date` header.
    async fn exchange(addr: std::net::SocketAddr, method: &str, target: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("answered in time")
            .unwrap();
        String::from_utf8_lossy(&out)
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    fn snapshot(state: State) -> Snapshot {
        Snapshot::new(
            Instant::now(),
            SystemTime::now(),
            Duration::ZERO,
            Verdict {
                state,
                reason: String::new(),
                votes: 0,
                needed: 0,
            },
            Some("dc1".into()),
            Some("node1".into()),
            DbStatus {
                reachable: true,
                in_recovery: Some(state != State::Primary),
                error: None,
            },
            Vec::new(),
            Arc::new(Vec::new()),
        )
    }

    #[tokio::test]
    async fn the_health_check_is_answered_exactly_like_the_routes_answer_it() {
        let config = Arc::new(Config::for_node("node1").unwrap());
        let store = Arc::new(SnapshotStore::default());
        let app = App::new(
            config,
            store.clone(),
            PeerClient::new(None, Duration::from_secs(1)),
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let start = |listener: TcpListener, direct: bool| {
            let app = Arc::clone(&app);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                if direct {
                    crate::server::serve(listener, service(app), shutdown).await;
                } else {
                    let routes =
                        hyper_util::service::TowerToHyperService::new(warp::service(routes(app)));
                    crate::server::serve(listener, routes, shutdown).await;
                }
            })
        };
        let direct = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let via_warp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = (direct.local_addr().unwrap(), via_warp.local_addr().unwrap());
        let servers = [start(direct, true), start(via_warp, false)];

        let requests = [
            ("GET", "/state"),
            ("HEAD", "/state"),
            ("GET", "/"),
            ("HEAD", "/"),
            ("GET", "/state?check=1"),
            ("OPTIONS", "/state"),
            ("POST", "/state"),
            ("GET", "/primary"),
            ("GET", "/nowhere"),
        ];
        // Starting (served as Down), then each verdict.
        for state in [
            None,
            Some(State::Primary),
            Some(State::Standby),
            Some(State::Unknown),
        ] {
            if let Some(s) = state {
                store.store(snapshot(s));
            }
            for (method, target) in requests {
                let (x, y) = (
                    exchange(a, method, target).await,
                    exchange(b, method, target).await,
                );
                assert_eq!(x, y, "{method} {target} in state {state:?}");
                assert!(x.starts_with("HTTP/1.1 "), "{x}");
            }
            let want = state.unwrap_or(State::Down);
            let answer = exchange(a, "GET", "/state").await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {}", want.code()))
                    && answer.ends_with(&format!(r#"{{"state":"{}"}}"#, want.name())),
                "{answer}"
            );
        }
        stop.send(true).unwrap();
        for s in servers {
            s.await.unwrap();
        }
    }
}
