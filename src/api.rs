//! The HTTP API: what each endpoint answers, routed in one table.
//!
//! Owns the routes ([`route`]) and their replies, all from the snapshot: `/state` and `/` (the
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
//! ## One hyper service, one `match`, no warp
//! The service is a plain `hyper` service function; the routing table is a `match` on the path.
//! warp's filters were measured with `contrib/bench` (callgrind, user-space instructions per
//! `GET /state` at 4 keep-alive connections): through a warp catch-all filter 12,195, answered
//! before warp 10,183, a bare hyper server 7,923; the 64-connection throughput ratio against
//! that bare server went from 0.895 to 1.03. Every endpoint here is a fixed path answered from
//! the snapshot, so warp's composition buys nothing that a `match` does not say as plainly,
//! and costs 20 % on the path haproxy calls thousands of times a second; so there is no warp.
//! Protocol-level refusals (bodies, targets without a path, head limits) are the server's
//! ([`crate::server`]).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared as SharedFuture};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tracing::warn;

use crate::conninfo;
use crate::cycle;
use crate::decide::State;
use crate::metrics::{self, RequestCounters};
use crate::peers::{VoteReply, fan_out};
use crate::reads;
use crate::reads::SyncWanted;
use crate::server::{Answer, Handler};
use crate::shared::{Loaded, Shared};
use crate::snapshot::{Snapshot, json_bytes, state_body, sync_text};
use crate::vote::Release;
use crate::wire::{
    CheckBody, ErrorBody, RealPrimaryBody, ReleaseAnswer, ReleaseRefusal, Released, Status,
    StatusConfig, StatusDatabase, StatusDrain, StatusHeldVote, StatusMember, StatusReplication,
    StatusVoter, VoteAnswer, VoteGrant, VoteRefusal, WalAnswer, WalPosition, WalUnknown,
};

/// A reply of the API.
pub type Reply = Response<Full<Bytes>>;

/// The endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
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

/// Endpoint names for the request counters, in the order of [`Endpoint`], and a last row for
/// requests that matched no route.
const ENDPOINT_NAMES: &[&str] = &[
    "/state",
    "/primary",
    "/realPrimary",
    "/status",
    "/vote",
    "/release",
    "/wal",
    "/replica",
    "/read-write",
    "/read-only",
    "/health",
    "/liveness",
    "/readiness",
    "/metrics",
    "/synchronous",
    "/asynchronous",
    "/quorum",
    "/read-only-sync",
    "/read-only-quorum",
    "unrouted",
];

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

/// The routing table: every path the API answers, and how.
fn route(path: &str) -> Option<(Endpoint, Methods)> {
    use Endpoint::*;
    Some(match path {
        // The seed's endpoints.
        "/" | "/state" => (State, Methods::Read),
        "/primary" => (Primary, Methods::Read),
        "/realPrimary" => (RealPrimary, Methods::Read),
        "/status" => (Status, Methods::Read),
        // Between daemons: the vote, its release, the primary's WAL position.
        "/vote" => (Vote, Methods::Get),
        "/release" => (Release, Methods::Post),
        "/wal" => (Wal, Methods::Read),
        // Patroni's health checks (see `reads`).
        "/replica" => (Replica, Methods::Read),
        "/read-write" | "/leader" => (ReadWrite, Methods::Read),
        "/read-only" => (ReadOnly, Methods::Read),
        "/health" => (Health, Methods::Read),
        "/liveness" => (Liveness, Methods::Read),
        "/readiness" => (Readiness, Methods::Read),
        // Patroni's synchronous checks (see `reads::sync_standby`).
        "/synchronous" | "/sync" => (Sync, Methods::Read),
        "/asynchronous" | "/async" => (Async, Methods::Read),
        "/quorum" => (Quorum, Methods::Read),
        "/read-only-sync" | "/read-only-synchronous" => (ReadOnlySync, Methods::Read),
        "/read-only-quorum" => (ReadOnlyQuorum, Methods::Read),
        // For teams with Prometheus (`/status` is the probe that needs none).
        "/metrics" => (Metrics, Methods::Read),
        _ => return None,
    })
}

/// Most client addresses remembered for the "OPTIONS /primary" warning; past it, no more
/// warnings (a hostile client cannot grow the set without bound).
const MAX_WARNED: usize = 1024;

/// The API of one daemon.
pub struct App {
    shared: Arc<Shared>,
    real_primary: Arc<Flights<RealPrimary>>,
    /// Clients already warned about checking `/primary` (see [`App::answer`]).
    warned: Mutex<HashSet<IpAddr>>,
    /// Requests answered, by endpoint and code (`/metrics`).
    requests: RequestCounters,
}

impl Handler for App {
    fn handle(self: &Arc<Self>, client: SocketAddr, request: Request<Incoming>) -> Answer {
        let routed = route(request.uri().path());
        let index = routed.map_or(ENDPOINT_NAMES.len() - 1, |r| r.0 as usize);
        match self.answer(client, request.method(), request.uri(), routed) {
            Answer::Now(reply) => {
                self.requests.count(index, reply.status().as_u16());
                Answer::Now(reply)
            }
            Answer::Later(reply) => {
                let app = Arc::clone(self);
                Answer::Later(Box::pin(async move {
                    let reply = reply.await;
                    app.requests.count(index, reply.status().as_u16());
                    reply
                }))
            }
        }
    }
}

impl App {
    pub fn new(shared: Arc<Shared>) -> Arc<App> {
        Arc::new(App {
            shared,
            real_primary: Arc::default(),
            warned: Mutex::new(HashSet::new()),
            requests: RequestCounters::new(ENDPOINT_NAMES),
        })
    }

    /// The reply to `method` on `uri` from `client`, routed to `routed`: at once for every
    /// endpoint but `/realPrimary`, which waits for the other nodes.
    fn answer(
        self: &Arc<Self>,
        client: SocketAddr,
        method: &Method,
        uri: &Uri,
        routed: Option<(Endpoint, Methods)>,
    ) -> Answer {
        let Some((endpoint, methods)) = routed else {
            return Answer::Now(error(StatusCode::NOT_FOUND, "not found"));
        };
        if !methods.allows(method) {
            return Answer::Now(not_allowed(methods));
        }
        let bodyless = method == Method::HEAD || method == Method::OPTIONS;
        // The clock is read before the snapshot is loaded: a 200 is decided at an instant
        // that precedes the publication of any later snapshot (see `vote` on releases).
        let now = Instant::now();
        let (code, body) = match endpoint {
            // The health check: a lock-free load, an atomic counter read (a session lost since the
            // observation) and two comparisons; the body is a constant.
            Endpoint::State => {
                let state = self.shared.store.peek().served_state(now);
                (state.code(), state_body(state))
            }
            Endpoint::Primary => {
                if method == Method::OPTIONS {
                    self.warn_primary_check(client);
                }
                let me = self.shared.config().node.node_name.clone();
                self.shared.store.peek().primary_reply(&me, now)
            }
            Endpoint::RealPrimary => {
                let app = Arc::clone(self);
                return Answer::Later(Box::pin(async move {
                    let (code, body) = app.real_primary().await;
                    json_reply(code, if bodyless { Bytes::new() } else { body })
                }));
            }
            Endpoint::Status => {
                let snapshot = self.shared.store.load();
                let status = status_json(&self.shared.loaded(), &snapshot, now);
                (snapshot.served_state(now).code(), json_bytes(&status))
            }
            Endpoint::Metrics => {
                let snapshot = self.shared.store.load();
                let extra = metrics::Extra {
                    requests: self.requests.snapshot(),
                    voter_failures: &snapshot.voter_failures,
                    config_loaded: self.shared.loaded().at,
                };
                let text = metrics::render(&snapshot, &extra, now);
                let mut r = json_reply(200, if bodyless { Bytes::new() } else { text.into() });
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return Answer::Now(r);
            }
            Endpoint::Vote => match vote_candidate(uri.query()) {
                Ok(candidate) => self.vote(candidate.as_deref(), now),
                Err(why) => (400, json_bytes(&ErrorBody { error: why })),
            },
            Endpoint::Release => self.release(),
            Endpoint::Wal => self.wal(now),
            Endpoint::ReadWrite => {
                let snapshot = self.shared.store.peek();
                let outcome = match snapshot.served_state(now) {
                    State::Primary => Ok(()),
                    _ => Err(snapshot.served_reason(now)),
                };
                self.check_reply(&snapshot, outcome, now)
            }
            Endpoint::Health | Endpoint::Liveness => {
                let snapshot = self.shared.store.peek();
                let outcome = match endpoint {
                    Endpoint::Health => reads::health(&snapshot, now),
                    _ => reads::liveness(&snapshot, now),
                };
                self.check_reply(&snapshot, outcome, now)
            }
            Endpoint::Replica
            | Endpoint::ReadOnly
            | Endpoint::Readiness
            | Endpoint::Sync
            | Endpoint::Async
            | Endpoint::Quorum
            | Endpoint::ReadOnlySync
            | Endpoint::ReadOnlyQuorum => {
                let query = match reads::parse_query(uri.query()) {
                    Ok(q) => q,
                    Err(why) => {
                        return Answer::Now(json_reply(400, json_bytes(&ErrorBody { error: why })));
                    }
                };
                let snapshot = self.shared.store.peek();
                let outcome = match endpoint {
                    Endpoint::Replica => reads::replica(&snapshot, &query, now),
                    Endpoint::ReadOnly => reads::read_only(&snapshot, &query, now),
                    Endpoint::Sync => reads::sync_standby(&snapshot, &query, SyncWanted::Sync, now),
                    Endpoint::Async => {
                        reads::sync_standby(&snapshot, &query, SyncWanted::Async, now)
                    }
                    Endpoint::Quorum => {
                        reads::sync_standby(&snapshot, &query, SyncWanted::Quorum, now)
                    }
                    Endpoint::ReadOnlySync => {
                        reads::read_only_sync(&snapshot, &query, SyncWanted::Sync, now)
                    }
                    Endpoint::ReadOnlyQuorum => {
                        reads::read_only_sync(&snapshot, &query, SyncWanted::Quorum, now)
                    }
                    _ => reads::readiness(
                        &snapshot,
                        &query,
                        self.shared.config().reads.readiness_lag,
                        now,
                    ),
                };
                self.check_reply(&snapshot, outcome, now)
            }
        };
        Answer::Now(json_reply(code, if bodyless { Bytes::new() } else { body }))
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
    /// metadata names.
    fn vote(&self, candidate: Option<&str>, now: Instant) -> (u16, Bytes) {
        let node = self.shared.config().node.node_name.clone();
        let snapshot = self.shared.store.peek();
        let given = cycle::vote(&mut self.shared.votes.book(), candidate, &snapshot, now);
        let answer = match given {
            Ok(grant) => VoteAnswer::Grant(VoteGrant {
                exclusive_ms: grant.exclusive.as_millis() as u64,
                lease_ms: grant.lease.as_millis() as u64,
                node,
                vote: grant.to,
            }),
            Err(no) => VoteAnswer::Refusal(VoteRefusal {
                ms_left: no.left().map(|d| d.as_millis() as u64),
                node,
                reason: no.reason(),
                vote: (),
                withdrawn: no.withdraws(),
            }),
        };
        (answer.status(), json_bytes(&answer))
    }

    /// `POST /release`: void every vote requested before now, unless this node answers 200 or
    /// is about to; say when it last could have.
    fn release(&self) -> (u16, Bytes) {
        let node = self.shared.config().node.node_name.clone();
        let (answer, now) = self.shared.votes.release(&self.shared.store);
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
        let others = snapshot.members.iter().filter(|m| &m.name != me);
        let mut answers = vec![(me.clone(), Ok(own))];
        answers.extend(
            fan_out(
                config.timing.peer_timeout,
                others,
                |m, deadline| async move {
                    let state = match &m.url {
                        Ok(url) => client
                            .ask_state(url, deadline)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(why) => Err(format!("no address: {why}")),
                    };
                    (m.name.clone(), state)
                },
            )
            .await,
        );
        let found = RealPrimary { answers };
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealPrimary {
    /// Each node asked and its state, or why it gave none.
    pub answers: Vec<(String, Result<State, String>)>,
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

fn json_reply(code: u16, body: Bytes) -> Reply {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The `candidate` of a `/vote` request, if given; any other parameter is an error.
fn vote_candidate(query: Option<&str>) -> Result<Option<String>, String> {
    let mut candidate = None;
    for (key, value) in reads::query_pairs(query)? {
        match key.as_str() {
            "candidate" if candidate.is_none() && !value.is_empty() => candidate = Some(value),
            "candidate" => return Err("candidate: one non-empty node name".into()),
            other => return Err(format!("unknown parameter {other:?} (known: candidate)")),
        }
    }
    Ok(candidate)
}

fn not_allowed(methods: Methods) -> Reply {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(methods.allow_header()));
    r
}

fn error(status: StatusCode, message: &'static str) -> Reply {
    let body = ErrorBody {
        error: message.to_string(),
    };
    json_reply(status.as_u16(), json_bytes(&body))
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
        primary: snapshot.primary.clone(),
        reason: snapshot.served_reason(now),
        replication,
        site: snapshot.site.clone(),
        snapshot_age_ms: snapshot.age(now).map(millis),
        state: state.name().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        vote_lease_ms: millis(config.leases.vote_lease),
        voters,
        votes: snapshot.ballot.counting(now) as u64,
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

    #[test]
    fn the_routing_table() {
        assert_eq!(route("/"), Some((Endpoint::State, Methods::Read)));
        assert_eq!(route("/state"), Some((Endpoint::State, Methods::Read)));
        assert_eq!(route("/vote"), Some((Endpoint::Vote, Methods::Get)));
        assert_eq!(route("/release"), Some((Endpoint::Release, Methods::Post)));
        for (path, endpoint, counted_as) in [
            ("/sync", Endpoint::Sync, "/synchronous"),
            ("/synchronous", Endpoint::Sync, "/synchronous"),
            ("/async", Endpoint::Async, "/asynchronous"),
            ("/asynchronous", Endpoint::Async, "/asynchronous"),
            ("/quorum", Endpoint::Quorum, "/quorum"),
            ("/read-only-sync", Endpoint::ReadOnlySync, "/read-only-sync"),
            (
                "/read-only-synchronous",
                Endpoint::ReadOnlySync,
                "/read-only-sync",
            ),
            (
                "/read-only-quorum",
                Endpoint::ReadOnlyQuorum,
                "/read-only-quorum",
            ),
        ] {
            assert_eq!(route(path), Some((endpoint, Methods::Read)), "{path}");
            assert_eq!(ENDPOINT_NAMES[endpoint as usize], counted_as, "{path}");
        }
        assert_eq!(ENDPOINT_NAMES.len(), Endpoint::ReadOnlyQuorum as usize + 2);
        assert_eq!(route("/State"), None);
        assert_eq!(route("/state/"), None);
        assert!(Methods::Read.allows(&Method::OPTIONS) && !Methods::Read.allows(&Method::POST));
        assert!(!Methods::Get.allows(&Method::HEAD) && !Methods::Post.allows(&Method::GET));
    }
}
