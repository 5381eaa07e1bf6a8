//! The HTTP API: what each endpoint answers, from the snapshot.
//!
//! Owns the routes and their replies: `/state` and `/` (the health check), `/primary` (what the
//! local metadata names; the site vote asks this), `/realPrimary` (a fan-out to every node's
//! `/state`, shared by simultaneous callers), `/status` (everything the snapshot knows, for
//! operators and probes). Every endpoint answers GET, HEAD and OPTIONS; other methods get 405,
//! other paths 404. Nothing here touches the database: handlers only read the snapshot.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, join_all};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
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
        Endpoint::State => {
            let state = app.store.peek().served_state(now, max_staleness);
            (state.code(), state_body(state))
        }
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
