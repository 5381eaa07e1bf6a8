//! The messages between processes: the body of every answer that crosses a process boundary,
//! as serde types that both sides use.
//!
//! Owns the shape of `/state` ([`StateBody`]), `/primary` ([`PrimaryBody`]), `/realPrimary`
//! ([`RealPrimaryBody`]), `/status` ([`Status`] and its parts), the health checks of
//! [`crate::reads`] ([`CheckBody`]), the error bodies ([`ErrorBody`]), and between daemons
//! `/vote` ([`VoteAnswer`]: a [`VoteGrant`] or a [`VoteRefusal`], which may be a withdrawal),
//! `POST /release` ([`ReleaseAnswer`]) and `/wal` ([`WalAnswer`]); and the line of the haproxy
//! agent port ([`AgentLine`], text, not JSON). The server builds these values and serializes
//! them; the peer client, `primgr cluster` and `primgr drain` read the same types, so a field
//! renamed on one side fails this module's tests (golden bodies and known bodies decoded). The
//! answers whose shape depends on their HTTP status are read together with it
//! (`VoteAnswer::read`, ...), so the status-to-shape rule is written once for both sides.
//!
//! ## Byte order
//! Every struct declares its fields in the byte order of their JSON keys: the bodies are the
//! ones the API has always served (`serde_json`'s map is sorted), byte for byte
//! (`every_body_serializes_with_sorted_keys` checks each type).
//!
//! ## Compatibility: readers ignore unknown fields, writers may add optional ones
//! No type here uses `#[serde(deny_unknown_fields)]`. During a rolling upgrade one daemon is
//! newer than its peers: its answers may carry a field an older reader does not know, and that
//! reader must still read them (denying unknown fields would turn every vote of an upgraded
//! voter into an error, and a rolling upgrade into an outage). The other way round, a newer
//! reader must read an older writer: a field a reader can do without is `#[serde(default)]`
//! (or an `Option`), and only what the reader acts on is required (a vote's `node`, `vote` and
//! lease; `/status`'s `node`, `code` and `state`). A missing required field, a wrong type or a
//! status that does not match the shape is an error, which every reader treats as "no answer"
//! (no vote, not a primary): unknown input fails closed. Hence the rule for changing the
//! protocol: add only fields whose absence (an older writer) and whose being ignored (an older
//! reader) are both safe; a change of meaning takes a new field or endpoint, never a new
//! meaning of an old one.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::GrantEpoch;

/// Why a reply is not the message its endpoint answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status}: {why}")]
pub struct Undecodable {
    /// The HTTP status of the reply.
    pub status: u16,
    /// What is wrong, with the start of the body.
    pub why: String,
}

impl Undecodable {
    fn new(status: u16, body: &[u8], why: impl fmt::Display) -> Undecodable {
        Undecodable {
            status,
            why: format!("{} ({why})", describe_body(body)),
        }
    }
}

/// Reads `body` (of a reply with `status`) as a `T`.
pub fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, Undecodable> {
    serde_json::from_slice(body).map_err(|e| Undecodable::new(status, body, e))
}

/// The start of a body, printable, for error messages.
pub fn describe_body(body: &[u8]) -> String {
    const SHOWN: usize = 80;
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]);
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    if body.len() > SHOWN {
        format!("unexpected body {text:?}...")
    } else {
        format!("unexpected body {text:?}")
    }
}

/// A field that may be absent (None), present but null (Some(None)) or have a value.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------------------------
// What haproxy, Patroni-style checks and operators read.

/// `/state` and `/`: `{"state":"Primary"}`; the status code says the same (200, 202, 503, 509).
/// The server serves constants of this shape ([`crate::snapshot::state_body`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateBody {
    /// `Primary`, `Standby`, `Down`, `Unknown` or `Witness`.
    pub state: String,
}

/// Any refusal: 400 (bad parameters), 404, 405, and the server's protocol-level refusals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `/primary`: whom this node's local metadata names (200), or nobody (503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryBody {
    /// The primary the metadata names; null when it names none or the database is down.
    #[serde(rename = "Primary")]
    pub primary: Option<String>,
    /// The node that answers.
    pub node: String,
    /// `Down` when the local database is down (or the snapshot is withheld), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `/realPrimary`: the one node that answers Primary (200), else null (503).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealPrimaryBody {
    /// Why the fan-out failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every node that answers Primary, when there are several (a split brain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primaries: Vec<String>,
    /// The one node that answers Primary.
    #[serde(rename = "realPrimary")]
    pub real_primary: Option<String>,
    /// The `vote_scope` of the node that answers, when it is `cluster` (absent: `site`).
    #[serde(default, skip_serializing_if = "VoteScope::is_site")]
    pub scope: VoteScope,
    /// In cluster scope, what every node answered, site by site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<RealPrimarySite>,
    /// The nodes that answer Witness (never primaries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub witnesses: Vec<String>,
}

/// `/realPrimary` `sites`: one site's nodes and the state each answered (null: no answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RealPrimarySite {
    pub nodes: std::collections::BTreeMap<String, Option<String>>,
    pub site: String,
}

/// The health checks `/replica`, `/read-write`, `/read-only`, `/health`, `/liveness`,
/// `/readiness`: 200 when the rule holds, else 503 with the `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckBody {
    /// Why an operator drained the node, when it is drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<String>,
    /// A standby's replay lag in bytes: absent on other roles, null when it is unknown.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub lag_bytes: Option<Option<u64>>,
    pub node: String,
    /// Why the rule does not hold (503 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A standby's WAL receiver state (absent on other roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    /// The state `/state` serves.
    pub state: String,
}

/// `/status`: everything the snapshot knows. Its HTTP status is `code`. Read by
/// `primgr cluster` and `primgr drain`; only `code`, `node` and `state` are required (see the
/// module header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The cluster identity this node uses (the system identifier, in decimal), when it has
    /// one ([`crate::auth::cluster_identity`]).
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// The code `/state` answers (the HTTP status of this answer).
    pub code: u16,
    #[serde(default)]
    pub config: StatusConfig,
    #[serde(default)]
    pub cycle_ms: f64,
    #[serde(default)]
    pub database: StatusDatabase,
    /// Set while an operator has drained the node.
    #[serde(default)]
    pub drained: Option<StatusDrain>,
    #[serde(default)]
    pub handoff_delay_ms: f64,
    /// The votes this node holds.
    #[serde(default)]
    pub held_votes: Vec<StatusHeldVote>,
    #[serde(default)]
    pub interval_ms: f64,
    #[serde(default)]
    pub max_staleness_ms: f64,
    /// Every registered node, as the local metadata last listed it.
    #[serde(default)]
    pub members: Vec<StatusMember>,
    /// The node that answers.
    pub node: String,
    /// When the snapshot served was observed (RFC 3339, wall clock).
    #[serde(default)]
    pub observed_at: Option<String>,
    /// How peers are authenticated: `"key"` (`peer_key_file`) or `"addresses"`.
    #[serde(default)]
    pub peer_auth: String,
    /// Answers of each peer that failed authentication (counted as no answer), since start.
    #[serde(default)]
    pub peer_auth_failures: std::collections::BTreeMap<String, u64>,
    /// Peer requests (`/vote`, `/release`, signed reads) refused (401, 403) since start.
    #[serde(default)]
    pub peer_requests_refused: u64,
    /// Whom the local metadata names as primary.
    #[serde(default)]
    pub primary: Option<String>,
    /// Why the node is in its state.
    #[serde(default)]
    pub reason: String,
    /// A standby's replication (null on other roles).
    #[serde(default)]
    pub replication: Option<StatusReplication>,
    /// The node's site (its repmgr `location`), when known.
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub snapshot_age_ms: Option<f64>,
    /// The state `/state` serves.
    pub state: String,
    /// The daemon's version.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub vote_lease_ms: f64,
    /// Whose majority a primary needs (`vote_scope` in force): `site` or `cluster`.
    #[serde(default)]
    pub vote_scope: VoteScope,
    /// The voters asked in the last cycle and what they answered.
    #[serde(default)]
    pub voters: Vec<StatusVoter>,
    /// Votes that count now.
    #[serde(default)]
    pub votes: u64,
    /// In cluster scope, a candidate's electorate site by site with the votes that count now
    /// (empty in site scope, and when the node is no candidate).
    #[serde(default)]
    pub votes_by_site: Vec<StatusSiteVotes>,
    /// Votes needed (0 when the node is no candidate).
    #[serde(default)]
    pub votes_needed: u64,
}

impl Status {
    /// Reads a `/status` answer: the body must be a status document whose `code` is the HTTP
    /// status it came with.
    pub fn read(status: u16, body: &[u8]) -> Result<Status, Undecodable> {
        let doc: Status = decode(status, body)?;
        if doc.code != status {
            return Err(Undecodable::new(
                status,
                body,
                format_args!("its code {} is not its HTTP status", doc.code),
            ));
        }
        Ok(doc)
    }
}

/// `/status` `config`: the configuration in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusConfig {
    pub fingerprint: String,
    /// When it was loaded (RFC 3339, wall clock).
    pub loaded_at: String,
}

/// `/status` `database`: the local database in the last cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusDatabase {
    /// The configured conninfo, password masked.
    pub conninfo: String,
    /// Where a primary writes (`16/B374D848`).
    pub current_lsn: Option<String>,
    pub error: Option<String>,
    pub in_recovery: Option<bool>,
    pub reachable: bool,
    /// Sessions of primgr the server has closed since the daemon started.
    pub sessions_closed_by_server: u64,
    /// A primary's WAL senders (`pg_stat_replication`): each standby's synchronous state as
    /// this primary sees it; null on other roles or when the list could not be read.
    pub wal_senders: Option<Vec<WalStandby>>,
}

/// `/status` `drained`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusDrain {
    pub reason: String,
    /// Since when (RFC 3339, wall clock).
    pub since: String,
}

/// `/status` `held_votes`: one vote this node holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusHeldVote {
    /// Whether it counts now (settled and unexpired).
    pub counts: bool,
    /// Until it expires (negative: expired that long ago).
    pub expires_in_ms: i64,
    /// Until it settles (0 once settled).
    pub settles_in_ms: i64,
    pub voter: String,
}

/// `/status` `members`: one registered node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusMember {
    pub active: bool,
    /// Its API address, or null with `address_error`.
    pub address: Option<String>,
    pub address_error: Option<String>,
    /// Its repmgr conninfo, password masked.
    pub conninfo: String,
    pub name: String,
    pub node_id: i32,
    /// Its repmgr `location`.
    pub site: String,
    /// Its repmgr node type (`primary`, `standby`, `witness`).
    #[serde(rename = "type")]
    pub node_type: String,
}

/// `/status` `replication`: a standby's replication in the last cycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReplication {
    pub lag_bytes: Option<u64>,
    /// Why the lag is unknown, when it is.
    pub lag_unknown: Option<String>,
    pub last_replay_age_ms: Option<f64>,
    pub primary_lsn: Option<String>,
    /// Where the primary's position came from.
    pub primary_lsn_from: Option<String>,
    pub received_lsn: Option<String>,
    pub receiver_state: String,
    pub replay_paused: Option<bool>,
    pub replayed_lsn: Option<String>,
    /// This standby's synchronous state as the primary's daemon reported it within
    /// `max_staleness`: `sync`, `quorum`, `potential`, `async`, or `not listed` (no WAL sender
    /// of the primary bears its name); null when unknown.
    pub sync_state: Option<String>,
    /// Why the synchronous state is unknown, when it is.
    pub sync_unknown: Option<String>,
    /// `host:port` of the upstream.
    pub upstream: Option<String>,
}

/// `/status` `votes_by_site`: one site of a candidate's electorate (cluster scope).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusSiteVotes {
    /// Its nodes in the electorate (this node included when it is of this site).
    pub members: u64,
    pub site: String,
    /// The members whose vote counts now.
    pub voters: Vec<String>,
    /// How many: `voters`' length.
    pub votes: u64,
}

/// `/status` `voters`: one voter asked in the last cycle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusVoter {
    pub address: Option<String>,
    /// Why it gave no vote, when it gave none.
    pub error: Option<String>,
    pub latency_ms: Option<f64>,
    pub name: String,
    /// Whom it voted for.
    pub vote: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Between daemons.

/// Whose majority a candidate needs (`vote_scope`): its own site's (`site`, the default), or
/// the whole cluster's (`cluster`). It travels in the vote request (`scope=cluster`) and in the
/// answer (`"scope":"cluster"`); absent, it is `site`, so the bodies and requests of site scope
/// are those of daemons older than scopes, byte for byte. A voter refuses a candidate of the
/// other scope and a candidate counts no answer of the other scope: a majority is only a
/// majority of one electorate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoteScope {
    /// A majority of the candidate's site (its repmgr `location`).
    #[default]
    Site,
    /// A majority of every node of the cluster, all sites together.
    Cluster,
}

impl VoteScope {
    /// Both scopes.
    pub const ALL: [VoteScope; 2] = [VoteScope::Site, VoteScope::Cluster];

    /// As the configuration, the query and the bodies write it.
    pub const fn name(self) -> &'static str {
        match self {
            VoteScope::Site => "site",
            VoteScope::Cluster => "cluster",
        }
    }

    /// Whether it is the default, `site` (left out of requests and bodies).
    pub fn is_site(&self) -> bool {
        *self == VoteScope::Site
    }
}

impl fmt::Display for VoteScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for VoteScope {
    type Err = String;
    fn from_str(text: &str) -> Result<VoteScope, String> {
        VoteScope::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| "must be \"site\" or \"cluster\"".to_string())
    }
}

/// `GET /vote?candidate=NAME&scope=cluster`: a candidate's request for a vote (its query).
/// Without a candidate, an operator's question: whom the voter's metadata names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VoteRequest {
    pub candidate: Option<String>,
    /// The candidate's `vote_scope`; `scope` absent from the query is `site`.
    pub scope: VoteScope,
}

impl VoteRequest {
    /// The request target as a candidate sends it (and signs it: the MAC binds the target, so
    /// the scope is authenticated with the candidate). `scope` is sent only in cluster scope:
    /// a voter older than scopes refuses an unknown parameter, which in site scope would turn
    /// a rolling upgrade into an outage, and in cluster scope is the refusal wanted.
    pub fn target(&self) -> String {
        let mut target = "/vote".to_string();
        let mut sep = '?';
        if let Some(c) = &self.candidate {
            target.push_str(&format!("{sep}candidate={}", encode_component(c)));
            sep = '&';
        }
        if !self.scope.is_site() {
            target.push_str(&format!("{sep}scope={}", self.scope));
        }
        target
    }

    /// Reads the (decoded) query parameters: `candidate` (one non-empty name) and `scope`
    /// (`site` or `cluster`), each at most once; anything else is an error.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<VoteRequest, String> {
        let mut request = VoteRequest::default();
        let mut scope = None;
        for (key, value) in pairs {
            match key.as_str() {
                "candidate" if request.candidate.is_none() && !value.is_empty() => {
                    request.candidate = Some(value.clone());
                }
                "candidate" => return Err("candidate: one non-empty node name".into()),
                "scope" if scope.is_none() => {
                    scope = Some(value.parse().map_err(|e| format!("scope: {e}"))?);
                }
                "scope" => return Err("scope: given twice".into()),
                other => {
                    return Err(format!(
                        "unknown parameter {other:?} (known: candidate, scope)"
                    ));
                }
            }
        }
        request.scope = scope.unwrap_or_default();
        Ok(request)
    }
}

/// Percent-encoding of a query component: unreserved characters as they are.
pub fn encode_component(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// `/vote?candidate=NAME`: a grant (200) or a refusal (503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum VoteAnswer {
    Grant(VoteGrant),
    Refusal(VoteRefusal),
}

/// The query parameter of `POST /release` that names the epoch of the sender's grants it
/// undoes: `/release?undoes=<boot id>.<n>` ([`GrantEpoch`]).
pub const RELEASE_UNDOES: &str = "undoes";

/// A vote: the voter `node` promises `vote` for `lease_ms` (on its clock), granted in its
/// `epoch` (a release it sends later names the epoch it undoes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteGrant {
    /// The voter's epoch when it granted the vote: `<boot id>.<n>`. Absent from the votes of
    /// a daemon older than epochs (during a rolling upgrade): such a vote counts, and no
    /// release voids it (that daemon's releases name no epoch and are refused, so it keeps
    /// its promise to the end: slower, never unsafe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<GrantEpoch>,
    /// How long the voter has promised no other node (on its clock).
    pub exclusive_ms: u64,
    /// How long the promise lasts (on the voter's clock); never 0.
    pub lease_ms: u64,
    /// The voter.
    pub node: String,
    /// The voter's `vote_scope` (absent: `site`).
    #[serde(default, skip_serializing_if = "VoteScope::is_site")]
    pub scope: VoteScope,
    /// The candidate voted for.
    pub vote: String,
}

/// No vote: why, and for how long at least; `withdrawn` when the voter's metadata names another
/// node, so that a vote it gave the candidate before no longer counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRefusal {
    /// How long the reason holds at least, when known.
    pub ms_left: Option<u64>,
    /// The voter.
    pub node: String,
    #[serde(default)]
    pub reason: String,
    /// The voter's `vote_scope` (absent: `site`).
    #[serde(default, skip_serializing_if = "VoteScope::is_site")]
    pub scope: VoteScope,
    /// Always null: a refusal votes for nobody (a refusal that names a node is no refusal).
    pub vote: (),
    /// Absent from voters older than withdrawals: false.
    #[serde(default)]
    pub withdrawn: bool,
}

impl VoteAnswer {
    /// The HTTP status it is served with.
    pub fn status(&self) -> u16 {
        match self {
            VoteAnswer::Grant(_) => 200,
            VoteAnswer::Refusal(_) => 503,
        }
    }

    /// The voter that answers.
    pub fn node(&self) -> &str {
        match self {
            VoteAnswer::Grant(g) => &g.node,
            VoteAnswer::Refusal(r) => &r.node,
        }
    }

    /// The voter's `vote_scope`.
    pub fn scope(&self) -> VoteScope {
        match self {
            VoteAnswer::Grant(g) => g.scope,
            VoteAnswer::Refusal(r) => r.scope,
        }
    }

    /// Reads a `/vote` reply: 200 a grant with a lease, 503 a refusal, anything else an error.
    pub fn read(status: u16, body: &[u8]) -> Result<VoteAnswer, Undecodable> {
        match status {
            200 => {
                let grant: VoteGrant = decode(status, body)?;
                if grant.lease_ms == 0 {
                    return Err(Undecodable::new(status, body, "a vote without a lease"));
                }
                Ok(VoteAnswer::Grant(grant))
            }
            503 => decode(status, body).map(VoteAnswer::Refusal),
            _ => Err(Undecodable::new(status, body, "not a /vote status")),
        }
    }
}

/// `POST /release`: released (200) or refused (409).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ReleaseAnswer {
    Released(Released),
    Refused(ReleaseRefusal),
}

/// The holder `node` voided the votes promised to it; it could have answered 200 at the latest
/// `last_200_ms` before it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub last_200_ms: u64,
    pub node: String,
    /// Always true.
    pub released: bool,
}

/// The holder `node` keeps its votes: it answers 200, or is about to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRefusal {
    pub node: String,
    #[serde(default)]
    pub reason: String,
    /// Always false.
    pub released: bool,
}

impl ReleaseAnswer {
    /// The HTTP status it is served with.
    pub fn status(&self) -> u16 {
        match self {
            ReleaseAnswer::Released(_) => 200,
            ReleaseAnswer::Refused(_) => 409,
        }
    }

    /// The holder that answers.
    pub fn node(&self) -> &str {
        match self {
            ReleaseAnswer::Released(r) => &r.node,
            ReleaseAnswer::Refused(r) => &r.node,
        }
    }

    /// Reads a `/release` reply: 200 released, 409 refused, and `released` must say the same.
    pub fn read(status: u16, body: &[u8]) -> Result<ReleaseAnswer, Undecodable> {
        let answer = match status {
            200 => ReleaseAnswer::Released(decode(status, body)?),
            409 => ReleaseAnswer::Refused(decode(status, body)?),
            _ => return Err(Undecodable::new(status, body, "not a /release status")),
        };
        match &answer {
            ReleaseAnswer::Released(Released {
                released: false, ..
            })
            | ReleaseAnswer::Refused(ReleaseRefusal { released: true, .. }) => Err(
                Undecodable::new(status, body, "`released` contradicts the status"),
            ),
            _ => Ok(answer),
        }
    }
}

/// `/wal`: where a primary writes (200), or why this node reports no position (503).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum WalAnswer {
    Position(WalPosition),
    Unknown(WalUnknown),
}

/// Where `node` writes: `lsn` (bytes since `0/0`), observed `age_ms` before it answered, and
/// its WAL senders as `pg_stat_replication` listed them in the same observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalPosition {
    pub age_ms: u64,
    pub lsn: u64,
    pub node: String,
    /// Absent from daemons older than synchronous standbys (and when the list could not be
    /// read): every standby's synchronous state is then unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standbys: Option<Vec<WalStandby>>,
}

/// One WAL sender of a primary (a row of its `pg_stat_replication`): a standby streaming from
/// it, named by its `application_name`, which repmgr sets to the standby's node name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalStandby {
    /// `application_name`; empty when the server shows none.
    #[serde(default)]
    pub name: String,
    /// `state`: `streaming`, `catchup`, `startup`, `backup` or `stopping`; null when hidden.
    #[serde(default)]
    pub state: Option<String>,
    /// `sync_state`; null when hidden (the role lacks `pg_read_all_stats`).
    #[serde(default)]
    pub sync_state: Option<SyncState>,
}

/// `pg_stat_replication.sync_state`: whether the primary waits for this standby at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// Not waited for.
    Async,
    /// Would become synchronous if a synchronous one went away (`FIRST n`).
    Potential,
    /// Waited for (`FIRST n (...)`, or a plain list).
    Sync,
    /// A candidate of a quorum (`ANY n (...)`).
    Quorum,
    /// A value this version does not know (a later PostgreSQL): never taken for any of the
    /// above, so a sync check fails on it.
    #[serde(other)]
    Unknown,
}

impl SyncState {
    /// The name PostgreSQL gives it.
    pub fn name(self) -> &'static str {
        match self {
            SyncState::Async => "async",
            SyncState::Potential => "potential",
            SyncState::Sync => "sync",
            SyncState::Quorum => "quorum",
            SyncState::Unknown => "unknown",
        }
    }
}

/// `node` reports no position (in recovery, database unusable, snapshot withheld).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalUnknown {
    /// Always null.
    #[serde(default)]
    pub lsn: (),
    pub node: String,
    #[serde(default)]
    pub reason: String,
}

impl WalAnswer {
    /// The HTTP status it is served with.
    pub fn status(&self) -> u16 {
        match self {
            WalAnswer::Position(_) => 200,
            WalAnswer::Unknown(_) => 503,
        }
    }

    /// The node that answers.
    pub fn node(&self) -> &str {
        match self {
            WalAnswer::Position(p) => &p.node,
            WalAnswer::Unknown(u) => &u.node,
        }
    }

    /// Reads a `/wal` reply: 200 a position, 503 none.
    pub fn read(status: u16, body: &[u8]) -> Result<WalAnswer, Undecodable> {
        match status {
            200 => decode(status, body).map(WalAnswer::Position),
            503 => decode(status, body).map(WalAnswer::Unknown),
            _ => Err(Undecodable::new(status, body, "not a /wal status")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The haproxy agent port.

/// One answer of the agent port, a line haproxy applies at once: `up ready N%`,
/// `down #<why>` or `drain #<why>` (the text after `#` is a comment haproxy shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentLine {
    /// In the pool with weight `N` percent (0 to 100).
    Up { weight: u32 },
    /// Out of the pool.
    Down(String),
    /// No new connections (an operator drained the node).
    Drain(String),
}

impl fmt::Display for AgentLine {
    /// The line without its newline; control characters in the comment (which would end the
    /// line early) are written as spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, why) = match self {
            AgentLine::Up { weight } => return write!(f, "up ready {weight}%"),
            AgentLine::Down(why) => ("down", why),
            AgentLine::Drain(why) => ("drain", why),
        };
        write!(f, "{word} #")?;
        for c in why.chars() {
            write!(f, "{}", if c.is_control() { ' ' } else { c })?;
        }
        Ok(())
    }
}

impl FromStr for AgentLine {
    type Err = String;

    /// Reads a line as the agent writes it (with or without its newline).
    fn from_str(line: &str) -> Result<AgentLine, String> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if let Some(w) = line
            .strip_prefix("up ready ")
            .and_then(|w| w.strip_suffix('%'))
        {
            return match w.parse::<u32>() {
                Ok(weight) if weight <= 100 => Ok(AgentLine::Up { weight }),
                _ => Err(format!("not a weight: {line:?}")),
            };
        }
        if let Some(why) = line.strip_prefix("down #") {
            return Ok(AgentLine::Down(why.to_string()));
        }
        if let Some(why) = line.strip_prefix("drain #") {
            return Ok(AgentLine::Drain(why.to_string()));
        }
        Err(format!("not an agent line: {line:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The first epoch of a boot id of zeros: `AAAAAAAAAAAAAAAAAAAAAA.0` on the wire.
    fn epoch() -> GrantEpoch {
        GrantEpoch::first(crate::auth::BootId::from_bytes([0; 16]))
    }

    fn text<T: Serialize>(message: &T) -> String {
        serde_json::to_string(message).unwrap()
    }

    /// Serializes `message`, compares it with `golden` byte for byte, and reads `golden` back
    /// into the same value: a field renamed in the struct fails one direction or the other.
    fn golden<T>(message: &T, golden: &str) -> usize
    where
        T: Serialize + DeserializeOwned + PartialEq + fmt::Debug,
    {
        assert_eq!(text(message), golden);
        let back: T = serde_json::from_str(golden).unwrap_or_else(|e| panic!("{golden}: {e}"));
        assert_eq!(&back, message, "{golden}");
        1
    }

    fn sample_status() -> Status {
        Status {
            cluster_id: Some("7319220318244000001".into()),
            code: 200,
            config: StatusConfig {
                fingerprint: "ab12".into(),
                loaded_at: "2026-12-04T10:00:00.000Z".into(),
            },
            cycle_ms: 3.25,
            database: StatusDatabase {
                conninfo: "host=10.0.0.1 password=***".into(),
                current_lsn: Some("0/3000060".into()),
                error: None,
                in_recovery: Some(false),
                reachable: true,
                sessions_closed_by_server: 2,
                wal_senders: Some(vec![WalStandby {
                    name: "node2".into(),
                    state: Some("streaming".into()),
                    sync_state: Some(SyncState::Async),
                }]),
            },
            drained: Some(StatusDrain {
                reason: "kernel update".into(),
                since: "2026-12-04T09:00:00Z".into(),
            }),
            handoff_delay_ms: 0.0,
            held_votes: vec![StatusHeldVote {
                counts: true,
                expires_in_ms: -5,
                settles_in_ms: 0,
                voter: "node2".into(),
            }],
            interval_ms: 1000.0,
            max_staleness_ms: 10000.0,
            members: vec![StatusMember {
                active: true,
                address: None,
                address_error: Some("no host".into()),
                conninfo: "host=/tmp".into(),
                name: "node2".into(),
                node_id: 2,
                site: "dc1".into(),
                node_type: "standby".into(),
            }],
            node: "node1".into(),
            observed_at: Some("2026-12-04T10:00:01.500Z".into()),
            peer_auth: "key".into(),
            peer_auth_failures: [("node3".to_string(), 2)].into(),
            peer_requests_refused: 5,
            primary: Some("node1".into()),
            reason: "2 of 3 votes".into(),
            replication: Some(StatusReplication {
                lag_bytes: Some(16),
                lag_unknown: None,
                last_replay_age_ms: Some(12.5),
                primary_lsn: Some("0/10".into()),
                primary_lsn_from: Some("the primary's daemon".into()),
                received_lsn: Some("0/8".into()),
                receiver_state: "streaming".into(),
                replay_paused: Some(false),
                replayed_lsn: Some("0/0".into()),
                sync_state: Some("sync".into()),
                sync_unknown: None,
                upstream: Some("10.0.0.1:5432".into()),
            }),
            site: Some("dc1".into()),
            snapshot_age_ms: Some(312.4),
            state: "Primary".into(),
            version: "0.1.0".into(),
            vote_lease_ms: 3000.0,
            vote_scope: VoteScope::Cluster,
            voters: vec![StatusVoter {
                address: Some("http://10.0.0.2:5999/".into()),
                error: None,
                latency_ms: Some(1.5),
                name: "node2".into(),
                vote: Some("node1".into()),
            }],
            votes: 2,
            votes_by_site: vec![StatusSiteVotes {
                members: 2,
                site: "dc1".into(),
                voters: vec!["node1".into(), "node2".into()],
                votes: 2,
            }],
            votes_needed: 2,
        }
    }

    /// The bodies as the API serves them (README, "HTTP API"), byte for byte, and read back.
    #[test]
    fn golden_bodies() {
        let mut n = 0;
        n += golden(
            &StateBody {
                state: "Standby".into(),
            },
            r#"{"state":"Standby"}"#,
        );
        n += golden(
            &ErrorBody {
                error: "not found".into(),
            },
            r#"{"error":"not found"}"#,
        );
        n += golden(
            &PrimaryBody {
                primary: Some("node1".into()),
                node: "node3".into(),
                state: None,
            },
            r#"{"Primary":"node1","node":"node3"}"#,
        );
        n += golden(
            &PrimaryBody {
                primary: None,
                node: "node3".into(),
                state: Some("Down".into()),
            },
            r#"{"Primary":null,"node":"node3","state":"Down"}"#,
        );
        n += golden(
            &RealPrimaryBody {
                real_primary: Some("node2".into()),
                witnesses: vec!["w".into()],
                ..RealPrimaryBody::default()
            },
            r#"{"realPrimary":"node2","witnesses":["w"]}"#,
        );
        n += golden(
            &RealPrimaryBody {
                primaries: vec!["node1".into(), "node2".into()],
                ..RealPrimaryBody::default()
            },
            r#"{"primaries":["node1","node2"],"realPrimary":null}"#,
        );
        n += golden(
            &RealPrimaryBody {
                error: Some("fan-out failed".into()),
                ..RealPrimaryBody::default()
            },
            r#"{"error":"fan-out failed","realPrimary":null}"#,
        );
        n += golden(
            &CheckBody {
                drained: None,
                lag_bytes: None,
                node: "node1".into(),
                reason: None,
                replication_state: None,
                state: "Primary".into(),
            },
            r#"{"node":"node1","state":"Primary"}"#,
        );
        n += golden(
            &CheckBody {
                drained: Some("kernel".into()),
                lag_bytes: Some(None),
                node: "node2".into(),
                reason: Some("lag unknown".into()),
                replication_state: Some("streaming".into()),
                state: "Standby".into(),
            },
            r#"{"drained":"kernel","lag_bytes":null,"node":"node2","reason":"lag unknown","replication_state":"streaming","state":"Standby"}"#,
        );
        n += golden(
            &CheckBody {
                drained: None,
                lag_bytes: Some(Some(0)),
                node: "node2".into(),
                reason: None,
                replication_state: Some("streaming".into()),
                state: "Standby".into(),
            },
            r#"{"lag_bytes":0,"node":"node2","replication_state":"streaming","state":"Standby"}"#,
        );
        n += golden(
            &VoteGrant {
                epoch: Some(epoch()),
                exclusive_ms: 41200,
                lease_ms: 3000,
                node: "node3".into(),
                scope: VoteScope::Site,
                vote: "node2".into(),
            },
            r#"{"epoch":"AAAAAAAAAAAAAAAAAAAAAA.0","exclusive_ms":41200,"lease_ms":3000,"node":"node3","vote":"node2"}"#,
        );
        n += golden(
            &VoteRefusal {
                ms_left: Some(1200),
                node: "node3".into(),
                reason: "promised to node1 for 1.2s more".into(),
                scope: VoteScope::Site,
                vote: (),
                withdrawn: false,
            },
            r#"{"ms_left":1200,"node":"node3","reason":"promised to node1 for 1.2s more","vote":null,"withdrawn":false}"#,
        );
        n += golden(
            &VoteRefusal {
                ms_left: None,
                node: "node3".into(),
                reason: "its metadata names node2".into(),
                scope: VoteScope::Site,
                vote: (),
                withdrawn: true,
            },
            r#"{"ms_left":null,"node":"node3","reason":"its metadata names node2","vote":null,"withdrawn":true}"#,
        );
        n += golden(
            &Released {
                last_200_ms: 1500,
                node: "node1".into(),
                released: true,
            },
            r#"{"last_200_ms":1500,"node":"node1","released":true}"#,
        );
        n += golden(
            &ReleaseRefusal {
                node: "node1".into(),
                reason: "answers 200".into(),
                released: false,
            },
            r#"{"node":"node1","reason":"answers 200","released":false}"#,
        );
        n += golden(
            &WalPosition {
                age_ms: 40,
                lsn: 123456,
                node: "node1".into(),
                standbys: None,
            },
            r#"{"age_ms":40,"lsn":123456,"node":"node1"}"#,
        );
        n += golden(
            &WalPosition {
                age_ms: 40,
                lsn: 123456,
                node: "node1".into(),
                standbys: Some(vec![
                    WalStandby {
                        name: "node2".into(),
                        state: Some("streaming".into()),
                        sync_state: Some(SyncState::Sync),
                    },
                    WalStandby {
                        name: "node3".into(),
                        state: None,
                        sync_state: None,
                    },
                ]),
            },
            concat!(
                r#"{"age_ms":40,"lsn":123456,"node":"node1","standbys":["#,
                r#"{"name":"node2","state":"streaming","sync_state":"sync"},"#,
                r#"{"name":"node3","state":null,"sync_state":null}]}"#
            ),
        );
        n += golden(
            &WalUnknown {
                lsn: (),
                node: "node1".into(),
                reason: "in recovery: not a primary".into(),
            },
            r#"{"lsn":null,"node":"node1","reason":"in recovery: not a primary"}"#,
        );
        n += golden(
            &sample_status(),
            concat!(
                r#"{"cluster_id":"7319220318244000001","code":200,"config":{"fingerprint":"ab12","loaded_at":"2026-12-04T10:00:00.000Z"},"#,
                r#""cycle_ms":3.25,"database":{"conninfo":"host=10.0.0.1 password=***","#,
                r#""current_lsn":"0/3000060","error":null,"in_recovery":false,"reachable":true,"#,
                r#""sessions_closed_by_server":2,"wal_senders":[{"name":"node2","#,
                r#""state":"streaming","sync_state":"async"}]},"drained":{"reason":"kernel update","#,
                r#""since":"2026-12-04T09:00:00Z"},"handoff_delay_ms":0.0,"held_votes":[{"counts":true,"#,
                r#""expires_in_ms":-5,"settles_in_ms":0,"voter":"node2"}],"interval_ms":1000.0,"#,
                r#""max_staleness_ms":10000.0,"members":[{"active":true,"address":null,"#,
                r#""address_error":"no host","conninfo":"host=/tmp","name":"node2","node_id":2,"#,
                r#""site":"dc1","type":"standby"}],"node":"node1","#,
                r#""observed_at":"2026-12-04T10:00:01.500Z","peer_auth":"key","#,
                r#""peer_auth_failures":{"node3":2},"peer_requests_refused":5,"#,
                r#""primary":"node1","reason":"2 of 3 votes","#,
                r#""replication":{"lag_bytes":16,"lag_unknown":null,"last_replay_age_ms":12.5,"#,
                r#""primary_lsn":"0/10","primary_lsn_from":"the primary's daemon","received_lsn":"0/8","#,
                r#""receiver_state":"streaming","replay_paused":false,"replayed_lsn":"0/0","#,
                r#""sync_state":"sync","sync_unknown":null,"upstream":"10.0.0.1:5432"},"site":"dc1","snapshot_age_ms":312.4,"state":"Primary","#,
                r#""version":"0.1.0","vote_lease_ms":3000.0,"vote_scope":"cluster","voters":[{"address":"http://10.0.0.2:5999/","#,
                r#""error":null,"latency_ms":1.5,"name":"node2","vote":"node1"}],"votes":2,"#,
                r#""votes_by_site":[{"members":2,"site":"dc1","voters":["node1","node2"],"votes":2}],"votes_needed":2}"#
            ),
        );
        println!("{n} golden bodies serialized and read back");
    }

    /// Every type writes its keys in sorted order, as `serde_json`'s map (which built these
    /// bodies before they were typed) does: same bytes as before, at every level of nesting.
    #[test]
    fn every_body_serializes_with_sorted_keys() {
        let mut status = sample_status();
        let mut bodies = vec![text(&status)];
        status.drained = None;
        status.replication = None;
        bodies.push(text(&status));
        bodies.extend([
            text(&StateBody {
                state: "Down".into(),
            }),
            text(&ErrorBody { error: "x".into() }),
            text(&PrimaryBody {
                primary: None,
                node: "n".into(),
                state: Some("Down".into()),
            }),
            text(&RealPrimaryBody {
                error: Some("e".into()),
                primaries: vec!["a".into(), "b".into()],
                real_primary: None,
                scope: VoteScope::Cluster,
                sites: vec![RealPrimarySite {
                    nodes: [("a".to_string(), Some("Primary".to_string()))].into(),
                    site: "dc1".into(),
                }],
                witnesses: vec!["w".into()],
            }),
            text(&CheckBody {
                drained: Some("d".into()),
                lag_bytes: Some(Some(1)),
                node: "n".into(),
                reason: Some("r".into()),
                replication_state: Some("s".into()),
                state: "Standby".into(),
            }),
            text(&VoteAnswer::Grant(VoteGrant {
                epoch: Some(epoch()),
                exclusive_ms: 1,
                lease_ms: 2,
                node: "n".into(),
                scope: VoteScope::Site,
                vote: "m".into(),
            })),
            text(&VoteAnswer::Refusal(VoteRefusal {
                ms_left: None,
                node: "n".into(),
                reason: "r".into(),
                scope: VoteScope::Site,
                vote: (),
                withdrawn: true,
            })),
            text(&ReleaseAnswer::Released(Released {
                last_200_ms: 1,
                node: "n".into(),
                released: true,
            })),
            text(&ReleaseAnswer::Refused(ReleaseRefusal {
                node: "n".into(),
                reason: "r".into(),
                released: false,
            })),
            text(&WalAnswer::Position(WalPosition {
                age_ms: 1,
                lsn: 2,
                node: "n".into(),
                standbys: Some(vec![WalStandby {
                    name: "m".into(),
                    state: Some("streaming".into()),
                    sync_state: Some(SyncState::Quorum),
                }]),
            })),
            text(&WalAnswer::Unknown(WalUnknown {
                lsn: (),
                node: "n".into(),
                reason: "r".into(),
            })),
        ]);
        for body in &bodies {
            let sorted = serde_json::from_str::<Value>(body).unwrap().to_string();
            assert_eq!(body, &sorted);
        }
        println!(
            "{} bodies, keys in sorted order at every level",
            bodies.len()
        );
    }

    /// Each answer read with the status it is served with is the same answer: the server's
    /// status-to-shape rule and the reader's are one.
    #[test]
    fn answers_read_back_with_their_status() {
        let votes = [
            VoteAnswer::Grant(VoteGrant {
                epoch: Some(epoch()),
                exclusive_ms: 0,
                lease_ms: 3000,
                node: "n3".into(),
                scope: VoteScope::Site,
                vote: "n1".into(),
            }),
            VoteAnswer::Refusal(VoteRefusal {
                ms_left: Some(5),
                node: "n3".into(),
                reason: "promised to n2".into(),
                scope: VoteScope::Site,
                vote: (),
                withdrawn: false,
            }),
        ];
        for v in &votes {
            assert_eq!(
                VoteAnswer::read(v.status(), text(v).as_bytes()).as_ref(),
                Ok(v)
            );
        }
        let releases = [
            ReleaseAnswer::Released(Released {
                last_200_ms: 7,
                node: "n1".into(),
                released: true,
            }),
            ReleaseAnswer::Refused(ReleaseRefusal {
                node: "n1".into(),
                reason: "answers 200".into(),
                released: false,
            }),
        ];
        for r in &releases {
            assert_eq!(
                ReleaseAnswer::read(r.status(), text(r).as_bytes()).as_ref(),
                Ok(r)
            );
        }
        let wals = [
            WalAnswer::Position(WalPosition {
                age_ms: 4,
                lsn: 9,
                node: "n1".into(),
                standbys: Some(Vec::new()),
            }),
            WalAnswer::Unknown(WalUnknown {
                lsn: (),
                node: "n1".into(),
                reason: "in recovery".into(),
            }),
        ];
        for w in &wals {
            assert_eq!(
                WalAnswer::read(w.status(), text(w).as_bytes()).as_ref(),
                Ok(w)
            );
        }
        let status = sample_status();
        assert_eq!(Status::read(200, text(&status).as_bytes()), Ok(status));
        println!("6 answers and 1 status read back with their status");
    }

    /// A rolling upgrade: a newer writer's extra field is ignored, an older writer's missing
    /// optional field takes its default; what a reader acts on stays required.
    #[test]
    fn newer_and_older_peers_are_read() {
        let newer =
            br#"{"epoch":"AAAAAAAAAAAAAAAAAAAAAA.0","exclusive_ms":0,"lease_ms":3000,"node":"n3","vote":"n1","scope":"cluster"}"#;
        assert!(matches!(
            VoteAnswer::read(200, newer),
            Ok(VoteAnswer::Grant(g)) if g.lease_ms == 3000
        ));
        // A voter older than epochs: a grant without one.
        let no_epoch = br#"{"exclusive_ms":0,"lease_ms":3000,"node":"n3","vote":"n1"}"#;
        assert!(matches!(
            VoteAnswer::read(200, no_epoch),
            Ok(VoteAnswer::Grant(g)) if g.epoch.is_none()
        ));
        // A voter older than withdrawals: no `withdrawn`, a refusal.
        let older = br#"{"ms_left":null,"node":"n3","reason":"r","vote":null}"#;
        assert!(matches!(
            VoteAnswer::read(503, older),
            Ok(VoteAnswer::Refusal(r)) if !r.withdrawn
        ));
        let status = br#"{"node":"n1","code":202,"state":"Standby","future":{"x":1}}"#;
        let s = Status::read(202, status).unwrap();
        assert_eq!((s.node.as_str(), s.votes, s.members.len()), ("n1", 0, 0));
        let member = br#"{"node":"n1","code":202,"state":"Standby","members":[{"name":"n2"}]}"#;
        assert_eq!(Status::read(202, member).unwrap().members[0].name, "n2");
        let check = br#"{"node":"n2","state":"Standby","lag_bytes":null,"new":true}"#;
        assert_eq!(
            serde_json::from_slice::<CheckBody>(check)
                .unwrap()
                .lag_bytes,
            Some(None)
        );
        let mut n = 6;
        // What a reader acts on is required; a wrong type or status is an error.
        for (status, body) in [
            (
                200,
                &br#"{"lease_ms":3000,"exclusive_ms":0,"vote":"n1"}"#[..],
            ),
            (200, br#"{"node":"n3","vote":"n1","exclusive_ms":0}"#),
            // A grant with a malformed epoch could never be released (one without an epoch,
            // of a daemon older than epochs, is read: see below).
            (
                200,
                br#"{"epoch":"x.1","node":"n3","vote":"n1","lease_ms":3000,"exclusive_ms":0}"#,
            ),
            (
                200,
                br#"{"node":"n3","vote":"n1","lease_ms":0,"exclusive_ms":0}"#,
            ),
            (
                200,
                br#"{"node":"n3","vote":"n1","lease_ms":"3000","exclusive_ms":0}"#,
            ),
            (
                200,
                br#"{"node":"n3","Vote":"n1","lease_ms":3000,"exclusive_ms":0}"#,
            ),
            (503, br#"{"node":"n3","vote":"n1","reason":"r"}"#),
            (503, br#"{"node":"n3","reason":"r"}"#),
            (503, br#"{"node":"n3","vote":null,"withdrawn":"yes"}"#),
            (
                500,
                br#"{"node":"n3","vote":"n1","lease_ms":3000,"exclusive_ms":0}"#,
            ),
        ] {
            assert!(VoteAnswer::read(status, body).is_err(), "{status} {body:?}");
            n += 1;
        }
        for (status, body) in [
            (
                200,
                &br#"{"node":"n1","released":false,"last_200_ms":1}"#[..],
            ),
            (409, br#"{"node":"n1","released":true}"#),
            (200, br#"{"node":"n1","released":true}"#),
            (404, br#"{"error":"not found"}"#),
        ] {
            assert!(
                ReleaseAnswer::read(status, body).is_err(),
                "{status} {body:?}"
            );
            n += 1;
        }
        for (status, body) in [
            (200, &br#"{"node":"n1","lsn":-1,"age_ms":40}"#[..]),
            (503, br#"{"node":"n1","lsn":5,"reason":"r"}"#),
        ] {
            assert!(WalAnswer::read(status, body).is_err(), "{status} {body:?}");
            n += 1;
        }
        for (status, body) in [
            (200, &br#"{"node":"n1","state":"Primary"}"#[..]),
            (200, br#"{"node":"n1","state":"Primary","code":509}"#),
            (200, br#"{"code":200,"state":"Primary"}"#),
            (200, b"<html>It works!</html>"),
        ] {
            assert!(Status::read(status, body).is_err(), "{status} {body:?}");
            n += 1;
        }
        println!("{n} bodies: 5 from other versions read, the rest refused");
    }

    /// `/wal`'s standbys: an older primary's daemon sends none (every sync state is then
    /// unknown), a later PostgreSQL's new `sync_state` is Unknown (never sync), and a malformed
    /// list is an error like any malformed answer.
    #[test]
    fn wal_standbys_from_older_and_newer_daemons() {
        let older = br#"{"age_ms":40,"lsn":7,"node":"n1"}"#;
        assert!(matches!(
            WalAnswer::read(200, older),
            Ok(WalAnswer::Position(p)) if p.standbys.is_none() && p.lsn == 7
        ));
        let newer = br#"{"age_ms":4,"lsn":7,"node":"n1","standbys":[
            {"name":"n2","state":"streaming","sync_state":"sync","flush_lag_ms":3},
            {"name":"n3","state":"streaming","sync_state":"eventual"},
            {"name":"n4"}]}"#;
        let Ok(WalAnswer::Position(p)) = WalAnswer::read(200, newer) else {
            panic!("a /wal answer with standbys");
        };
        let states: Vec<_> = p
            .standbys
            .unwrap_or_default()
            .iter()
            .map(|s| s.sync_state)
            .collect();
        assert_eq!(
            states,
            [Some(SyncState::Sync), Some(SyncState::Unknown), None]
        );
        let mut n = 2;
        for bad in [
            &br#"{"age_ms":4,"lsn":7,"node":"n1","standbys":{"n2":"sync"}}"#[..],
            br#"{"age_ms":4,"lsn":7,"node":"n1","standbys":[{"name":"n2","sync_state":1}]}"#,
        ] {
            assert!(WalAnswer::read(200, bad).is_err(), "{bad:?}");
            n += 1;
        }
        println!("{n} /wal bodies with or without standbys");
    }

    #[test]
    fn decode_errors_show_the_status_the_body_and_why() {
        let e = VoteAnswer::read(200, br#"{"node":"n3","vote":"n1"}"#).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("HTTP 200: unexpected body "), "{text}");
        assert!(text.contains("missing field `exclusive_ms`"), "{text}");
        let long = vec![b'x'; 200];
        assert!(describe_body(&long).ends_with("..."));
        assert_eq!(describe_body(b"a\nb"), r#"unexpected body "ab""#);
    }

    #[test]
    fn agent_lines_read_back() {
        let lines = [
            (AgentLine::Up { weight: 100 }, "up ready 100%"),
            (AgentLine::Up { weight: 10 }, "up ready 10%"),
            (
                AgentLine::Down("Standby: a standby".into()),
                "down #Standby: a standby",
            ),
            (
                AgentLine::Drain("drained: kernel update".into()),
                "drain #drained: kernel update",
            ),
        ];
        for (line, written) in &lines {
            assert_eq!(line.to_string(), *written);
            assert_eq!(written.parse::<AgentLine>().as_ref(), Ok(line));
            assert_eq!(
                format!("{written}\n").parse::<AgentLine>().as_ref(),
                Ok(line)
            );
        }
        // A comment never ends the line early.
        assert_eq!(
            AgentLine::Down("cannot connect:\nrefused\r".into()).to_string(),
            "down #cannot connect: refused "
        );
        for bad in ["up ready 101%", "up ready x%", "up 100%", "maint", ""] {
            assert!(bad.parse::<AgentLine>().is_err(), "{bad:?}");
        }
        println!("{} agent lines written and read back", lines.len());
    }

    /// The scope on the wire: absent in site scope (the bodies and targets of daemons older
    /// than scopes), `scope=cluster` in the query and `"scope":"cluster"` in the answer
    /// otherwise; read back the same; a bad scope is an error naming the parameter.
    #[test]
    fn the_vote_scope_travels_in_the_request_and_the_answer() {
        let site = VoteRequest {
            candidate: Some("node 1".into()),
            scope: VoteScope::Site,
        };
        assert_eq!(site.target(), "/vote?candidate=node%201");
        let cluster = VoteRequest {
            scope: VoteScope::Cluster,
            ..site.clone()
        };
        assert_eq!(cluster.target(), "/vote?candidate=node%201&scope=cluster");
        let pairs = |q: &[(&str, &str)]| -> Vec<(String, String)> {
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            VoteRequest::from_pairs(&pairs(&[("candidate", "node 1")])),
            Ok(site.clone())
        );
        for q in [
            &[("candidate", "node 1"), ("scope", "cluster")][..],
            &[("scope", "cluster"), ("candidate", "node 1")],
        ] {
            assert_eq!(VoteRequest::from_pairs(&pairs(q)), Ok(cluster.clone()));
        }
        assert_eq!(
            VoteRequest::from_pairs(&pairs(&[("candidate", "node 1"), ("scope", "site")])),
            Ok(site)
        );
        assert_eq!(
            VoteRequest::from_pairs(&[]),
            Ok(VoteRequest::default()),
            "an operator's GET /vote"
        );
        for (bad, why) in [
            (&[("scope", "world")][..], "scope: must be"),
            (&[("scope", "site"), ("scope", "site")], "given twice"),
            (&[("candidate", "")], "candidate"),
            (&[("site", "dc1")], "unknown parameter \"site\""),
        ] {
            let e = VoteRequest::from_pairs(&pairs(bad)).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let grant = VoteGrant {
            epoch: None,
            exclusive_ms: 1,
            lease_ms: 3000,
            node: "node3".into(),
            scope: VoteScope::Cluster,
            vote: "node1".into(),
        };
        golden(
            &grant,
            r#"{"exclusive_ms":1,"lease_ms":3000,"node":"node3","scope":"cluster","vote":"node1"}"#,
        );
        let refusal = VoteRefusal {
            ms_left: None,
            node: "node3".into(),
            reason: "r".into(),
            scope: VoteScope::Cluster,
            vote: (),
            withdrawn: false,
        };
        golden(
            &refusal,
            r#"{"ms_left":null,"node":"node3","reason":"r","scope":"cluster","vote":null,"withdrawn":false}"#,
        );
        let bad = br#"{"exclusive_ms":1,"lease_ms":3000,"node":"n3","scope":"galaxy","vote":"n1"}"#;
        assert!(
            VoteAnswer::read(200, bad).is_err(),
            "an unknown scope fails closed"
        );
        for s in VoteScope::ALL {
            assert_eq!(s.name().parse::<VoteScope>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        println!("vote requests and answers of both scopes written and read back");
    }
}
