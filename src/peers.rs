//! The peers: where their daemons listen, the HTTP client that asks them, and the bounded
//! fan-out.
//!
//! Owns the address of each peer's API (an explicit `[peers]` entry, else the host of its
//! repmgr conninfo and `peer_port`), one keep-alive HTTP client per daemon (bound to
//! `source_address` when set, so a network cut between node addresses behaves like a real
//! one), reading what peers answer (`/vote`, `/release`, `/wal`, `/state`, into the types of
//! [`crate::wire`]), and the bounded fan-out ([`fan_out`]): asking many peers at once under one deadline, which the poll
//! cycle, `/realPrimary` and `primgr cluster` all use. Every failure of a peer becomes a value
//! (an answer that does not vote, a state that is not Primary); nothing here panics or waits
//! past the deadline, and no response body is read past [`MAX_BODY`].
//!
//! With a key in force ([`Signer`]) every request is signed (header [`auth::HEADER`]) and its
//! answer verified against the request's nonce, the peer asked and the cluster: an answer that
//! fails is no answer ([`PeerError::Unauthenticated`]), counted by peer and logged once when
//! failures start and once when they clear ([`Answers`]); the ticket each verified answer
//! brings is kept for the next state-changing request, and a 401 that brings a new one is
//! retried once at once ([`auth::worth_retrying`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderValue, USER_AGENT};
use hyper::{Method, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::auth::{
    self, AnswerClaims, ClusterId, Exchange, GrantEpoch, Keys, MAX_TICKET_PEERS, Nonce,
    RequestClaims, TicketBook,
};
use crate::conninfo;
use crate::db::NodeRow;
use crate::decide::State;
use crate::tls::ClientTls;
use crate::vote::Grant;
use crate::wire::{
    self, ReleaseAnswer, StateBody, VoteAnswer, VoteRequest, VoteScope, WalAnswer, WalStandby,
};

/// Largest response body read from a peer; anything longer is an error, not a vote.
pub const MAX_BODY: usize = 64 * 1024;

/// How long an idle keep-alive connection to a peer is kept. Shorter than the server's idle
/// timeout ([`crate::server::IDLE_TIMEOUT`]) so the client never reuses a connection the peer
/// is about to close.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a peer gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("body unreadable or over {MAX_BODY} bytes: {0}")]
    Body(String),
    #[error("HTTP {0}: {1}")]
    Unexpected(u16, String),
    #[error("answer not authentic, not counted: {0}")]
    Unauthenticated(String),
    #[error("answer not counted: {0}")]
    OtherCluster(String),
}

/// What a requester keeps of its peers' authenticated answers: the latest ticket of each, and
/// the answers that failed authentication (`/status`, `/metrics`).
#[derive(Debug, Default)]
pub struct Answers {
    tickets: Mutex<TicketBook>,
    failures: Mutex<BTreeMap<String, u64>>,
    /// Peers whose answers fail now (logged once when it starts and once when it clears).
    failing: Mutex<BTreeSet<String>>,
}

impl Answers {
    fn ticket(&self, peer: &str) -> Option<auth::Ticket> {
        self.tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
    }

    fn learn(&self, peer: &str, answer: &AnswerClaims) {
        self.tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .learn(peer, answer);
    }

    /// Records whether an answer of `peer` passed authentication (`Err`: why not).
    pub fn checked(&self, peer: &str, outcome: Result<(), &str>) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Err(why) => {
                let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                if failures.contains_key(peer) || failures.len() < MAX_TICKET_PEERS {
                    *failures.entry(peer.to_string()).or_default() += 1;
                }
                if failing.len() < MAX_TICKET_PEERS && failing.insert(peer.to_string()) {
                    warn!(peer = %peer, "answers of {peer} fail authentication and count as no answer: {why}");
                }
            }
            Ok(()) => {
                if failing.remove(peer) {
                    info!(peer = %peer, "answers of {peer} are authentic again");
                }
            }
        }
    }

    /// Answers that failed authentication, by peer, since the start.
    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Who signs the requests and checks the answers: the keys in force, this node, its cluster.
#[derive(Clone, Copy)]
pub struct Signer<'a> {
    pub keys: &'a Keys,
    /// This node's name (the requests' sender; the answers' recipient).
    pub me: &'a str,
    /// This node's cluster: an answer of another cluster is no answer. None for an operator's
    /// tool (`primgr cluster`), which checks only that the answer is the one to its request.
    pub cluster: Option<ClusterId>,
    /// Whether the answers must come from the peer asked, to this node, of this cluster (a
    /// daemon); an operator's tool knows none of it.
    pub addressed: bool,
    pub answers: &'a Answers,
}

impl std::fmt::Debug for Signer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("keys", self.keys)
            .field("me", &self.me)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The HTTP client of one daemon: plain HTTP, or https verified against `tls_ca_file`.
#[derive(Clone, Debug)]
pub struct PeerClient {
    client: Connection,
    user_agent: HeaderValue,
}

/// The client of one scheme: every peer is asked with the same one.
#[derive(Clone, Debug)]
enum Connection {
    Http(Client<HttpConnector, Empty<Bytes>>),
    /// https only: a peer's address is asked over TLS whatever scheme it was written with.
    Https(Client<HttpsConnector<HttpConnector>, Empty<Bytes>>),
}

impl PeerClient {
    /// A keep-alive client whose connections are made from `source_address` when it is set.
    /// Every request (connect included) is bounded by the deadline its caller gives.
    pub fn new(source_address: Option<IpAddr>) -> PeerClient {
        PeerClient::with_tls(source_address, None)
    }

    /// [`PeerClient::new`], over https when `tls` is given: each peer's certificate must
    /// chain to its CA and name the address asked; a peer that fails the handshake gives no
    /// answer ([`PeerError::Request`]).
    pub fn with_tls(source_address: Option<IpAddr>, tls: Option<&ClientTls>) -> PeerClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_local_address(source_address);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(4);
        let client = match tls {
            None => Connection::Http(builder.build(connector)),
            Some(tls) => {
                // The https connector refuses an http:// URI itself; [`join`] writes https.
                connector.enforce_http(false);
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*tls.config()).clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(connector);
                Connection::Https(builder.build(https))
            }
        };
        PeerClient {
            client,
            user_agent: HeaderValue::from_static(concat!("primgr/", env!("CARGO_PKG_VERSION"))),
        }
    }

    /// The scheme of every request: `https` with a CA, else `http`.
    pub fn scheme(&self) -> &'static str {
        match self.client {
            Connection::Http(_) => "http",
            Connection::Https(_) => "https",
        }
    }

    /// GETs `path` from the peer at `base` and returns status and body, by `deadline`.
    pub async fn get(
        &self,
        base: &Uri,
        path: &str,
        deadline: Instant,
    ) -> Result<(u16, Bytes), PeerError> {
        self.request(Method::GET, base, path, deadline).await
    }

    /// Sends a body-less `method` request for `path` to the peer at `base`; status and body,
    /// by `deadline`.
    pub async fn request(
        &self,
        method: Method,
        base: &Uri,
        path: &str,
        deadline: Instant,
    ) -> Result<(u16, Bytes), PeerError> {
        self.send(method, base, path, None, deadline)
            .await
            .map(|(status, body, _)| (status, body))
    }

    /// Sends `method` `path` to `peer` at `base`: signed and its answer verified when a
    /// `signer` is given (see the module's header), plain otherwise; status and body, by
    /// `deadline`. `peer` is the node asked (None: unknown, for an operator's tool).
    pub async fn exchange(
        &self,
        signer: Option<&Signer<'_>>,
        method: Method,
        base: &Uri,
        peer: Option<&str>,
        path: &str,
        deadline: Instant,
    ) -> Result<(u16, Bytes), PeerError> {
        let Some(signer) = signer else {
            return self.request(method, base, path, deadline).await;
        };
        self.exchange_signed(signer, method, base, peer, path, deadline)
            .await
            .map(|(status, body, _)| (status, body))
    }

    /// A witness learning its cluster's identity ([`crate::auth::Standing::Witness`]): asks
    /// `primary` (whom its own metadata names) for a signed `/state` and returns the identity
    /// its authenticated answer claims. The answer must come from `primary` to this node; the
    /// cluster is what is learned, so it is not compared.
    pub async fn learn_cluster(
        &self,
        signer: &Signer<'_>,
        base: &Uri,
        primary: &str,
        deadline: Instant,
    ) -> Result<Option<ClusterId>, PeerError> {
        let unaddressed = Signer {
            addressed: false,
            ..*signer
        };
        let (_, _, claims) = self
            .exchange_signed(
                &unaddressed,
                Method::GET,
                base,
                Some(primary),
                "/state",
                deadline,
            )
            .await?;
        claims
            .check_peer(primary, signer.me)
            .map_err(|e| PeerError::Unauthenticated(e.to_string()))?;
        Ok(claims.cluster)
    }

    async fn exchange_signed(
        &self,
        signer: &Signer<'_>,
        method: Method,
        base: &Uri,
        peer: Option<&str>,
        path: &str,
        deadline: Instant,
    ) -> Result<(u16, Bytes, AnswerClaims), PeerError> {
        let book = peer.unwrap_or("");
        let exchange = Exchange {
            method: method.as_str(),
            target: path,
            body: b"",
        };
        let mut retried = false;
        loop {
            let ticket = signer.answers.ticket(book);
            let nonce = Nonce::random().map_err(|e| PeerError::Request(e.to_string()))?;
            let claims = RequestClaims {
                from: signer.me.to_string(),
                to: peer.unwrap_or("-").to_string(),
                cluster: signer.cluster,
                nonce,
                ticket,
            };
            let header = signer.keys.sign_request(&claims, &exchange);
            let header = HeaderValue::from_str(&header)
                .map_err(|e| PeerError::Request(format!("auth header: {e}")))?;
            let (status, body, answer) = self
                .send(method.clone(), base, path, Some(header), deadline)
                .await?;
            let verified = match answer.as_deref() {
                None => Err(format!(
                    "HTTP {status} without {}: not signed with the cluster's key",
                    auth::HEADER
                )),
                Some(h) => signer
                    .keys
                    .verify_answer(h, &nonce, &exchange, status, &body)
                    .and_then(|a| {
                        match (signer.addressed, peer) {
                            (true, Some(p)) => a.check_peer(p, signer.me)?,
                            (true, None) => a.check_peer(&a.from, signer.me)?,
                            (false, _) => {}
                        }
                        Ok(a)
                    })
                    .map_err(|e| e.to_string()),
            };
            let answer = match verified {
                Ok(a) => a,
                Err(why) => {
                    signer.answers.checked(book, Err(&why));
                    return Err(PeerError::Unauthenticated(why));
                }
            };
            signer.answers.checked(book, Ok(()));
            signer.answers.learn(book, &answer);
            // Authentic; counted only in this node's cluster (a peer or this node without an
            // identity yet is no forgery, but its answer counts no more than another
            // cluster's).
            if signer.addressed
                && peer.is_some()
                && let Err(e) = answer.check(&answer.from, signer.me, signer.cluster)
            {
                return Err(PeerError::OtherCluster(e.to_string()));
            }
            if !retried && auth::worth_retrying(status, ticket.as_ref(), &answer) {
                retried = true;
                continue;
            }
            return Ok((status, body, answer));
        }
    }

    /// Sends a body-less request with the auth header `signed` (if any): status, body and
    /// the answer's auth header, by `deadline`.
    async fn send(
        &self,
        method: Method,
        base: &Uri,
        path: &str,
        signed: Option<HeaderValue>,
        deadline: Instant,
    ) -> Result<(u16, Bytes, Option<String>), PeerError> {
        // In whole milliseconds: it is shown to operators ("no answer within 500ms").
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = Duration::from_millis(((left.as_micros() + 500) / 1000) as u64);
        let uri = join(self.scheme(), base, path)?;
        let mut request = hyper::Request::new(Empty::new());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        request
            .headers_mut()
            .insert(USER_AGENT, self.user_agent.clone());
        if let Some(signed) = signed {
            request.headers_mut().insert(auth::HEADER, signed);
        }
        let exchange = async {
            let response = match &self.client {
                Connection::Http(c) => c.request(request).await,
                Connection::Https(c) => c.request(request).await,
            }
            .map_err(|e| PeerError::Request(error_chain(&e)))?;
            let status = response.status().as_u16();
            let answer = response
                .headers()
                .get(auth::HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| PeerError::Body(e.to_string()))?
                .to_bytes();
            Ok((status, body, answer))
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or(Err(PeerError::Timeout(budget)))
    }

    /// Asks a voter for its vote (`GET /vote?candidate=<me>`, and `&scope=cluster` in cluster
    /// scope); `voter` is the node asked, `me` this node, `scope` its `vote_scope`.
    pub async fn ask_vote(
        &self,
        signer: Option<&Signer<'_>>,
        base: &Uri,
        voter: &str,
        me: &str,
        scope: VoteScope,
        deadline: Instant,
    ) -> VoteReply {
        let request = VoteRequest {
            candidate: Some(me.to_string()),
            scope,
        };
        let answer = self
            .exchange(
                signer,
                Method::GET,
                base,
                Some(voter),
                &request.target(),
                deadline,
            )
            .await;
        match answer {
            Err(e) => VoteReply::Failed(e.to_string()),
            Ok((status, body)) => parse_vote(status, &body, voter, me, scope),
        }
    }

    /// Asks the daemon of the primary `node` where its database writes (`/wal`): the position,
    /// its WAL senders and how old that observation was when it answered.
    pub async fn ask_wal(
        &self,
        signer: Option<&Signer<'_>>,
        base: &Uri,
        node: &str,
        deadline: Instant,
    ) -> Result<PrimaryWal, String> {
        let (status, body) = self
            .exchange(signer, Method::GET, base, Some(node), "/wal", deadline)
            .await
            .map_err(|e| e.to_string())?;
        parse_wal(status, &body, node)
    }

    /// Asks a node for its state (`/state`).
    pub async fn ask_state(
        &self,
        signer: Option<&Signer<'_>>,
        base: &Uri,
        node: &str,
        deadline: Instant,
    ) -> Result<State, PeerError> {
        let (status, body) = self
            .exchange(signer, Method::GET, base, Some(node), "/state", deadline)
            .await?;
        parse_state(status, &body)
    }

    /// Asks `holder` to release the promises this node made to it up to its epoch `undoes`
    /// (`POST /release?undoes=EPOCH`; the query is bound by the request's MAC).
    pub async fn ask_release(
        &self,
        signer: Option<&Signer<'_>>,
        base: &Uri,
        holder: &str,
        undoes: GrantEpoch,
        deadline: Instant,
    ) -> ReleaseReply {
        let path = format!("/release?{}={undoes}", wire::RELEASE_UNDOES);
        let answer = self
            .exchange(signer, Method::POST, base, Some(holder), &path, deadline)
            .await;
        match answer {
            Err(e) => ReleaseReply::Failed(e.to_string()),
            Ok((status, body)) => parse_release(status, &body, holder),
        }
    }
}

/// The bounded fan-out: asks every target at once, every request bounded by the same deadline,
/// `timeout` from now, which `ask` receives with its target. The poll cycle (votes and
/// releases), `/realPrimary` and `primgr cluster` all ask through it. The answers come back in
/// the order of `targets`, each within the deadline, since every request of [`PeerClient`]
/// ends by the deadline it is given.
pub async fn fan_out<T, F, Fut>(
    timeout: Duration,
    targets: impl IntoIterator<Item = T>,
    mut ask: F,
) -> Vec<Fut::Output>
where
    F: FnMut(T, Instant) -> Fut,
    Fut: Future,
{
    let deadline = Instant::now() + timeout;
    join_all(targets.into_iter().map(|t| ask(t, deadline))).await
}

/// A voter's answer to `/vote`, as the candidate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteReply {
    /// It voted for this node.
    Granted(Grant),
    /// It gave no vote to this node: it names nobody, or has promised another, or started
    /// recently; a live vote it gave before still counts.
    Refused(String),
    /// It gave no vote to this node because its metadata names another node: a vote it gave
    /// before no longer counts ([`crate::vote::Ballot::next`]).
    Withdrawn(String),
    /// It could not be asked, or its answer was not a vote of the node asked.
    Failed(String),
}

/// Reads a `/vote` answer of `voter`, asked by `me` in `scope`. Only a well-formed answer that
/// names the voter asked (not this node, not another) is a vote: two rows whose addresses reach
/// the same daemon, or an address that leads back to this node, never count twice. An answer
/// of another scope (a voter configured with another `vote_scope`, or older than scopes when
/// this node's is `cluster`) counts as no answer, and says why.
pub fn parse_vote(status: u16, body: &[u8], voter: &str, me: &str, scope: VoteScope) -> VoteReply {
    let answer = match VoteAnswer::read(status, body) {
        Ok(answer) => answer,
        Err(e) => return VoteReply::Failed(e.to_string()),
    };
    let node = answer.node();
    if node != voter || voter == me {
        return VoteReply::Failed(format!(
            "this address answers as node {node:?}, not as voter {voter:?}: not counted"
        ));
    }
    if answer.scope() != scope {
        let reason = match &answer {
            VoteAnswer::Refusal(r) if !r.reason.is_empty() => format!(" ({})", r.reason),
            _ => String::new(),
        };
        return VoteReply::Failed(format!(
            "voter {voter} answers in vote_scope {:?}, this node's is {:?}: not counted{reason}",
            answer.scope().name(),
            scope.name()
        ));
    }
    match answer {
        VoteAnswer::Grant(g) if g.vote == me => VoteReply::Granted(Grant {
            to: g.vote,
            lease: Duration::from_millis(g.lease_ms),
            exclusive: Duration::from_millis(g.exclusive_ms),
            epoch: g.epoch,
        }),
        VoteAnswer::Grant(g) => VoteReply::Withdrawn(format!("votes for {}", g.vote)),
        VoteAnswer::Refusal(r) => {
            let why = if r.reason.is_empty() {
                "no vote".to_string()
            } else {
                format!("no vote: {}", r.reason)
            };
            if r.withdrawn {
                VoteReply::Withdrawn(why)
            } else {
                VoteReply::Refused(why)
            }
        }
    }
}

/// A holder's answer to `/release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseReply {
    /// Released; it could have answered 200 at the latest this long before it answered.
    Released {
        last_200_ago: Duration,
    },
    /// Not released (it answers 200, or is about to).
    Refused(String),
    Failed(String),
}

/// Reads a `/release` answer of `holder`.
pub fn parse_release(status: u16, body: &[u8], holder: &str) -> ReleaseReply {
    let answer = match ReleaseAnswer::read(status, body) {
        Ok(answer) if answer.node() == holder => answer,
        Ok(answer) => {
            return ReleaseReply::Failed(format!(
                "HTTP {status}: not a release answer of {holder}: it answers as {:?}",
                answer.node()
            ));
        }
        Err(e) => {
            return ReleaseReply::Failed(format!("not a release answer of {holder}: {e}"));
        }
    };
    match answer {
        ReleaseAnswer::Released(r) => ReleaseReply::Released {
            last_200_ago: Duration::from_millis(r.last_200_ms),
        },
        ReleaseAnswer::Refused(r) if r.reason.is_empty() => ReleaseReply::Refused("refused".into()),
        ReleaseAnswer::Refused(r) => ReleaseReply::Refused(r.reason),
    }
}

/// What a primary's daemon answered to `/wal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryWal {
    /// Where it writes, bytes since `0/0`.
    pub lsn: u64,
    /// How long before it answered it observed `lsn` and `standbys`.
    pub age: Duration,
    /// Its WAL senders (None from a daemon older than synchronous standbys).
    pub standbys: Option<Vec<WalStandby>>,
}

/// Reads a `/wal` answer of `node`: 200 `{"node":..., "lsn": N, "age_ms": A, "standbys": [...]}`.
pub fn parse_wal(status: u16, body: &[u8], node: &str) -> Result<PrimaryWal, String> {
    let answer = match WalAnswer::read(status, body) {
        Ok(answer) if answer.node() == node => answer,
        Ok(answer) => {
            return Err(format!(
                "HTTP {status}: not a /wal answer of {node}: it answers as {:?}",
                answer.node()
            ));
        }
        Err(e) => return Err(format!("not a /wal answer of {node}: {e}")),
    };
    match answer {
        WalAnswer::Position(p) => Ok(PrimaryWal {
            lsn: p.lsn,
            age: Duration::from_millis(p.age_ms),
            standbys: p.standbys,
        }),
        WalAnswer::Unknown(u) => Err(format!(
            "{node} reports no position: {}",
            if u.reason.is_empty() {
                "no reason"
            } else {
                &u.reason
            }
        )),
    }
}

/// Reads a `/state` answer: status and body must agree on one of the states.
pub fn parse_state(status: u16, body: &[u8]) -> Result<State, PeerError> {
    match wire::decode::<StateBody>(status, body) {
        Ok(StateBody { state }) => State::from_answer(status, &state)
            .ok_or_else(|| PeerError::Unexpected(status, format!("state {state:?}"))),
        Err(e) => Err(PeerError::Unexpected(status, e.why)),
    }
}

/// `path` at the peer `base`, in the client's `scheme` (the one the configuration sets,
/// whatever `base` was written with).
fn join(scheme: &str, base: &Uri, path: &str) -> Result<Uri, PeerError> {
    let authority = base
        .authority()
        .ok_or_else(|| PeerError::Request(format!("address {base} has no host")))?;
    Uri::builder()
        .scheme(scheme)
        .authority(authority.as_str())
        .path_and_query(path)
        .build()
        .map_err(|e| PeerError::Request(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The API address of a node: its `[peers]` entry, else `<conninfo host>:<peer_port>`, in
/// `scheme` (the client's, [`PeerClient::scheme`]: `https` when `tls_ca_file` is set).
pub fn peer_url(
    row: &NodeRow,
    overrides: &BTreeMap<String, Uri>,
    peer_port: u16,
    scheme: &str,
) -> Result<Uri, String> {
    if let Some(uri) = overrides.get(&row.node_name) {
        return join(scheme, uri, "/").map_err(|e| e.to_string());
    }
    let host = conninfo::host(&row.conninfo)?;
    let authority = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{peer_port}"),
        _ => format!("{host}:{peer_port}"),
    };
    Uri::builder()
        .scheme(scheme)
        .authority(authority.as_str())
        .path_and_query("/")
        .build()
        .map_err(|e| format!("host {host:?} of its conninfo is not usable in a URL: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, conninfo: &str) -> NodeRow {
        NodeRow {
            node_id: 1,
            node_name: name.into(),
            node_type: "standby".into(),
            active: true,
            location: "dc1".into(),
            conninfo: conninfo.into(),
        }
    }

    #[test]
    fn peer_url_prefers_overrides_then_conninfo() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "node2".to_string(),
            "http://10.9.9.9:7000/".parse::<Uri>().unwrap(),
        );
        let r = row("node2", "host=127.0.0.12");
        assert_eq!(
            peer_url(&r, &overrides, 5999, "http").unwrap().to_string(),
            "http://10.9.9.9:7000/"
        );
        let r = row("node3", "host=127.0.0.13 port=5432");
        assert_eq!(
            peer_url(&r, &overrides, 5999, "http").unwrap().to_string(),
            "http://127.0.0.13:5999/"
        );
        // With tls_ca_file the scheme is https, for derived and explicit addresses alike.
        let r = row("node3", "host=127.0.0.13 port=5432");
        assert_eq!(
            peer_url(&r, &overrides, 5999, "https").unwrap().to_string(),
            "https://127.0.0.13:5999/"
        );
        let r = row("node2", "host=127.0.0.12");
        assert_eq!(
            peer_url(&r, &overrides, 5999, "https").unwrap().to_string(),
            "https://10.9.9.9:7000/"
        );
        let r = row("node6", "host=::1");
        assert_eq!(
            peer_url(&r, &overrides, 6000, "http").unwrap().to_string(),
            "http://[::1]:6000/"
        );
        let r = row("node4", "host=/tmp");
        assert!(peer_url(&r, &overrides, 5999, "http").is_err());
    }

    /// An answer of the other scope is no answer, whatever it says, and says why; an answer
    /// without a scope (a voter older than scopes) is of site scope.
    #[test]
    fn a_vote_of_another_scope_is_not_counted() {
        let site = br#"{"node":"n3","vote":"n1","lease_ms":3000,"exclusive_ms":250}"#;
        let cluster =
            br#"{"node":"n3","vote":"n1","lease_ms":3000,"exclusive_ms":250,"scope":"cluster"}"#;
        let refused = br#"{"node":"n3","vote":null,"reason":"this voter's vote_scope is \"site\"","scope":"site"}"#;
        assert!(matches!(
            parse_vote(200, cluster, "n3", "n1", VoteScope::Cluster),
            VoteReply::Granted(g) if g.to == "n1"
        ));
        assert!(matches!(
            parse_vote(200, site, "n3", "n1", VoteScope::Site),
            VoteReply::Granted(_)
        ));
        for (status, body, scope) in [
            (200, &site[..], VoteScope::Cluster),
            (200, &cluster[..], VoteScope::Site),
            (503, &refused[..], VoteScope::Cluster),
        ] {
            let reply = parse_vote(status, body, "n3", "n1", scope);
            assert!(
                matches!(&reply, VoteReply::Failed(w) if w.contains("vote_scope") && w.contains("not counted")),
                "{reply:?}"
            );
        }
    }

    /// Only a well-formed vote of the voter asked, for this node, with a lease, is a vote.
    #[test]
    fn vote_answers() {
        let granted = br#"{"epoch":"AAAAAAAAAAAAAAAAAAAAAA.0","node":"n3","vote":"n1","lease_ms":3000,"exclusive_ms":250}"#;
        assert_eq!(
            parse_vote(200, granted, "n3", "n1", VoteScope::Site),
            VoteReply::Granted(Grant {
                to: "n1".into(),
                lease: Duration::from_secs(3),
                exclusive: Duration::from_millis(250),
                epoch: Some(GrantEpoch::first(auth::BootId::from_bytes([0; 16]))),
            })
        );
        // Another voter's answer (two rows reaching one daemon), or this node's own daemon
        // reached through an alias: not counted.
        for (voter, me) in [("n2", "n1"), ("n3", "n3")] {
            assert!(
                matches!(parse_vote(200, granted, voter, me, VoteScope::Site), VoteReply::Failed(w) if w.contains("answers as node")),
                "{voter} {me}"
            );
        }
        assert!(matches!(
            parse_vote(200, br#"{"epoch":"AAAAAAAAAAAAAAAAAAAAAA.0","node":"n3","vote":"n2","lease_ms":3000,"exclusive_ms":0}"#, "n3", "n1", VoteScope::Site),
            VoteReply::Withdrawn(w) if w.contains("n2")
        ));
        assert!(matches!(
            parse_vote(503, br#"{"node":"n3","vote":null,"reason":"promised to n2"}"#, "n3", "n1", VoteScope::Site),
            VoteReply::Refused(w) if w.contains("promised to n2")
        ));
        // Its metadata names another node: the vote it gave before is withdrawn.
        assert!(matches!(
            parse_vote(
                503,
                br#"{"node":"n3","vote":null,"reason":"its metadata names n2","withdrawn":true}"#,
                "n3",
                "n1",
                VoteScope::Site
            ),
            VoteReply::Withdrawn(w) if w.contains("names n2")
        ));
        // A refusal without a reason (or `withdrawn`, from a voter older than withdrawals).
        assert_eq!(
            parse_vote(
                503,
                br#"{"node":"n3","vote":null}"#,
                "n3",
                "n1",
                VoteScope::Site
            ),
            VoteReply::Refused("no vote".into())
        );
        // Anything but `true` is not a withdrawal: a malformed flag makes no answer at all.
        assert!(matches!(
            parse_vote(
                503,
                br#"{"node":"n3","vote":null,"withdrawn":"yes"}"#,
                "n3",
                "n1",
                VoteScope::Site
            ),
            VoteReply::Failed(_)
        ));
        for (status, body) in [
            (200, &b"n1"[..]),
            (200, br#"{"node":"n3","vote":"n1"}"#),
            (
                200,
                br#"{"node":"n3","vote":"n1","lease_ms":0,"exclusive_ms":0}"#,
            ),
            (
                200,
                br#"{"node":"n3","vote":"n1","lease_ms":-5,"exclusive_ms":0}"#,
            ),
            (200, br#"{"vote":"n1","lease_ms":3000,"exclusive_ms":0}"#),
            (
                500,
                br#"{"node":"n3","vote":"n1","lease_ms":3000,"exclusive_ms":0}"#,
            ),
            (200, br#"{"Primary":"n1","node":"n3"}"#),
            (302, b""),
            (200, b"\xff\xfe"),
        ] {
            assert!(
                matches!(
                    parse_vote(status, body, "n3", "n1", VoteScope::Site),
                    VoteReply::Failed(_)
                ),
                "{status} {body:?}"
            );
        }
        // A voter older than epochs (a rolling upgrade): its vote counts, without an epoch.
        let legacy = br#"{"node":"n3","vote":"n1","lease_ms":3000,"exclusive_ms":250}"#;
        assert!(matches!(
            parse_vote(200, legacy, "n3", "n1", VoteScope::Site),
            VoteReply::Granted(Grant { epoch: None, .. })
        ));
    }

    #[test]
    fn wal_answers() {
        assert_eq!(
            parse_wal(200, br#"{"node":"n1","lsn":123456,"age_ms":40}"#, "n1"),
            Ok(PrimaryWal {
                lsn: 123456,
                age: Duration::from_millis(40),
                standbys: None
            })
        );
        let with = br#"{"node":"n1","lsn":9,"age_ms":0,"standbys":[{"name":"n2","state":"streaming","sync_state":"sync"}]}"#;
        assert_eq!(
            parse_wal(200, with, "n1").map(|w| w.standbys),
            Ok(Some(vec![WalStandby {
                name: "n2".into(),
                state: Some("streaming".into()),
                sync_state: Some(wire::SyncState::Sync),
            }]))
        );
        for (status, body) in [
            (200, &br#"{"node":"n2","lsn":123456,"age_ms":40}"#[..]),
            (200, br#"{"node":"n1","lsn":-1,"age_ms":40}"#),
            (200, br#"{"node":"n1","lsn":"0/1E240","age_ms":40}"#),
            (503, br#"{"node":"n1","lsn":null,"reason":"in recovery"}"#),
            (404, br#"{"error":"not found"}"#),
        ] {
            assert!(parse_wal(status, body, "n1").is_err(), "{status} {body:?}");
        }
    }

    #[test]
    fn release_answers() {
        assert_eq!(
            parse_release(
                200,
                br#"{"node":"n1","released":true,"last_200_ms":1500}"#,
                "n1"
            ),
            ReleaseReply::Released {
                last_200_ago: Duration::from_millis(1500)
            }
        );
        assert!(matches!(
            parse_release(409, br#"{"node":"n1","released":false,"reason":"answers 200"}"#, "n1"),
            ReleaseReply::Refused(w) if w == "answers 200"
        ));
        for (status, body) in [
            (
                200,
                &br#"{"node":"n2","released":true,"last_200_ms":1500}"#[..],
            ),
            (200, br#"{"node":"n1","released":true}"#),
            (404, br#"{"error":"not found"}"#),
        ] {
            assert!(
                matches!(parse_release(status, body, "n1"), ReleaseReply::Failed(_)),
                "{status} {body:?}"
            );
        }
    }

    #[test]
    fn state_answers_need_status_and_body_to_agree() {
        assert_eq!(
            parse_state(200, br#"{"state":"Primary"}"#),
            Ok(State::Primary)
        );
        assert_eq!(
            parse_state(509, br#"{"state":"Unknown"}"#),
            Ok(State::Unknown)
        );
        assert!(parse_state(200, br#"{"state":"Standby"}"#).is_err());
        assert!(parse_state(200, b"<html>ok</html>").is_err());
    }
}
