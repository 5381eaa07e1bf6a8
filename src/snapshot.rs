//! The snapshot: everything one poll cycle learned, published at once and read by every request.
//!
//! Owns the shape of what is served and the rules that keep a wrong 200 from being served: a
//! snapshot older than `max_staleness` (or none yet), or observed before the server closed one
//! of primgr's sessions ([`SessionWatch`]), is served as Down, and a Primary verdict
//! is served as 200 only inside the window of its votes ([`crate::vote::Window`]), checked
//! against the clock at the moment of the request. The poller builds a new [`Snapshot`] each
//! cycle and swaps it into the [`SnapshotStore`] (an `ArcSwap`); request handlers load it
//! without locks or allocation. The bodies of `/state` are constants. What an `on_change`
//! hook is told is a view of it ([`Snapshot::facts`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::Uri;
use serde::Serialize;

use crate::conninfo;
use crate::db::{DbError, DbObservation, Losses, Receiver};
use crate::decide::{self, Site, SiteVotes, State, Verdict};
use crate::hooks::{self, Facts, Tally};
use crate::peers::VoteReply;
use crate::vote::Ballot;
use crate::wire::{PrimaryBody, SyncState, WalStandby};

/// A voter asked in this cycle and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterReport {
    pub name: String,
    /// Its API address, or why it has none.
    pub url: Result<Uri, String>,
    pub reply: VoteReply,
    /// How long the answer took (None when it was never asked).
    pub latency: Option<Duration>,
}

/// A registered node of the cluster, as the local metadata last listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: i32,
    pub name: String,
    pub location: String,
    pub node_type: String,
    pub active: bool,
    /// Its API address, or why it has none.
    pub url: Result<Uri, String>,
    /// Its repmgr conninfo with any password masked.
    pub conninfo: String,
}

/// What the local database looked like in this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbStatus {
    pub reachable: bool,
    pub in_recovery: Option<bool>,
    pub error: Option<DbError>,
}

impl DbStatus {
    /// What an observation (or its failure) says of the database.
    pub fn of<O: std::borrow::Borrow<DbObservation>>(observed: Result<&O, &DbError>) -> DbStatus {
        match observed {
            Ok(obs) => DbStatus {
                reachable: true,
                in_recovery: Some(obs.borrow().in_recovery),
                error: None,
            },
            Err(e) => DbStatus {
                reachable: false,
                in_recovery: None,
                error: Some(e.clone()),
            },
        }
    }

    /// Not observed (yet).
    pub const UNKNOWN: DbStatus = DbStatus {
        reachable: false,
        in_recovery: None,
        error: None,
    };
}

/// Where the primary writes, as a standby learned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryPosition {
    /// Bytes since `0/0`.
    pub lsn: u64,
    /// Where it came from: the primary's daemon, or this standby's WAL receiver.
    pub source: &'static str,
}

/// The WAL receiver's state a `replication_state` check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationState {
    /// The WAL receiver is streaming from its upstream.
    Streaming,
    /// Recovery from the archive: in recovery with no WAL receiver.
    Archive,
}

impl ReplicationState {
    pub fn name(self) -> &'static str {
        match self {
            ReplicationState::Streaming => "streaming",
            ReplicationState::Archive => "archive",
        }
    }
}

/// A standby's replication in this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// WAL received (streaming), bytes since `0/0`.
    pub received: Option<u64>,
    /// WAL replayed, bytes since `0/0`.
    pub replayed: Option<u64>,
    /// The primary's position, known within `max_staleness`, or why it is not known.
    pub primary: Result<PrimaryPosition, String>,
    /// The WAL receiver, when one runs.
    pub receiver: Option<Receiver>,
    pub replay_paused: Option<bool>,
    /// Age of the last replayed transaction at the observation.
    pub last_replay_age: Option<Duration>,
    /// This standby's synchronous state as the primary's daemon reported it within
    /// `max_staleness` (None: no WAL sender of the primary bears its name), or why it is
    /// unknown ([`standby_sync`]).
    pub sync: Result<Option<SyncState>, String>,
}

/// Which position a lag is counted to (`mode=` of the read checks, as Patroni's `/readiness`
/// takes it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LagMode {
    /// To the replayed position (`pg_last_wal_replay_lsn()`): what readers see.
    #[default]
    Apply,
    /// To the received position (`pg_last_wal_receive_lsn()`, or the replayed one when that
    /// is further, as in archive recovery): what is safe on the standby's disk.
    Write,
}

impl LagMode {
    pub fn name(self) -> &'static str {
        match self {
            LagMode::Apply => "apply",
            LagMode::Write => "write",
        }
    }
}

/// This standby's synchronous state from the primary's WAL senders, as its daemon answered
/// them observed at `at` (`known`): unknown when no answer is fresh (observed more than
/// `max_staleness` before `now`), when the answer carried no list (an older daemon), and for a
/// name that two WAL senders bear with different states, that one bears with its state hidden
/// or an unknown state, or that no sender bears while a sender without a name might be it.
/// None: no WAL sender of the primary bears this name (this standby does not stream from the
/// primary itself, or not yet). Pure; `why` says why nothing is known when `known` is None.
pub fn standby_sync(
    me: &str,
    known: Option<(Instant, Option<&[WalStandby]>)>,
    why: &str,
    now: Instant,
    max_staleness: Duration,
) -> Result<Option<SyncState>, String> {
    let why = if why.is_empty() {
        "no fresh answer"
    } else {
        why
    };
    let stale = || {
        format!(
            "the primary's WAL senders are not known within max_staleness ({}): {why}",
            humantime::format_duration(max_staleness)
        )
    };
    let senders = match known {
        None => return Err(stale()),
        Some((at, _)) if now.saturating_duration_since(at) > max_staleness => return Err(stale()),
        Some((_, None)) => {
            return Err(
                "the primary's daemon reports no WAL senders (an older primgr, or its \
                        list could not be read)"
                    .into(),
            );
        }
        Some((_, Some(senders))) => senders,
    };
    let mine: Vec<Option<SyncState>> = senders
        .iter()
        .filter(|s| s.name == me)
        .map(|s| s.sync_state)
        .collect();
    match mine.as_slice() {
        [] if senders.iter().any(|s| s.name.is_empty()) => Err(
            "not among the primary's named WAL senders, and one has no name: it may be this \
             standby"
                .into(),
        ),
        [] => Ok(None),
        [first, rest @ ..] if rest.iter().any(|r| r != first) => Err(format!(
            "{} WAL senders of the primary bear the name {me} with different states",
            mine.len()
        )),
        [None, ..] => Err(
            "the primary hides its WAL senders' sync_state (its primgr role lacks \
             pg_read_all_stats)"
                .into(),
        ),
        [Some(SyncState::Unknown), ..] => {
            Err("the primary reports a sync_state this version does not know".into())
        }
        [Some(state), ..] => Ok(Some(*state)),
    }
}

/// The synchronous state in words, for `/status` and the reasons of the sync checks.
pub fn sync_text(sync: Option<SyncState>) -> &'static str {
    match sync {
        Some(s) => s.name(),
        None => "not listed",
    }
}

impl Replication {
    /// Replay lag behind the primary in bytes (WAL not even received counts too), or why it
    /// is unknown.
    pub fn lag(&self) -> Result<u64, String> {
        let primary = self.primary.as_ref().map_err(Clone::clone)?;
        let replayed = self
            .replayed
            .ok_or("this standby reports no replay position")?;
        Ok(primary.lsn.saturating_sub(replayed))
    }

    /// Lag behind the primary counted to the position `mode` names, or why it is unknown.
    pub fn lag_in(&self, mode: LagMode) -> Result<u64, String> {
        match mode {
            LagMode::Apply => self.lag(),
            LagMode::Write => {
                let primary = self.primary.as_ref().map_err(Clone::clone)?;
                let written = self
                    .received
                    .max(self.replayed)
                    .ok_or("this standby reports neither a receive nor a replay position")?;
                Ok(primary.lsn.saturating_sub(written))
            }
        }
    }

    /// The receiver's state as a `replication_state` check sees it: streaming, archive
    /// recovery (no receiver), or neither (None).
    pub fn state(&self) -> Option<ReplicationState> {
        match &self.receiver {
            None => Some(ReplicationState::Archive),
            Some(r) if r.status.as_deref() == Some("streaming") => {
                Some(ReplicationState::Streaming)
            }
            Some(_) => None,
        }
    }

    /// The receiver's state in words.
    pub fn receiver_text(&self) -> String {
        match &self.receiver {
            None => "archive (no WAL receiver)".into(),
            Some(r) => match &r.status {
                Some(s) => s.clone(),
                None => "unknown (the WAL receiver's details need pg_read_all_stats)".into(),
            },
        }
    }
}

/// An operator's drain of this node ([`crate::control`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    pub reason: String,
    /// When it was drained, for humans.
    pub since: SystemTime,
}

/// The result of one poll cycle.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When the cycle started (its database observation is at least this recent); None for the
    /// placeholder served before the first cycle completes.
    pub observed_at: Option<Instant>,
    /// The same moment on the wall clock, for humans.
    pub observed_at_wall: SystemTime,
    /// How long the cycle took.
    pub cycle_time: Duration,
    pub verdict: Verdict,
    /// The votes this node holds (`needed` is 0 when it is not a candidate).
    pub ballot: Ballot,
    /// In cluster scope, a candidate's electorate site by site (every member's name); empty
    /// otherwise (site scope, or no candidate).
    pub electorate: Vec<Site>,
    /// This node's site (its `location`), when its row was found.
    pub site: Option<String>,
    /// The active primary named by the local metadata.
    pub primary: Option<String>,
    pub db: DbStatus,
    pub voters: Vec<VoterReport>,
    /// Every registered node. Kept from the last successful observation when the database is
    /// down, so `/realPrimary` still knows whom to ask.
    pub members: Arc<Vec<Member>>,
    /// `max_staleness` of the configuration this cycle ran with.
    pub max_staleness: Duration,
    /// Where a primary writes (`pg_current_wal_lsn()`), bytes since `0/0`.
    pub current_lsn: Option<u64>,
    /// A primary's WAL senders, observed with `current_lsn` (served by `/wal`).
    pub wal_senders: Option<Vec<WalStandby>>,
    /// A standby's replication (None for every other role).
    pub replication: Option<Replication>,
    /// Set while an operator has drained this node.
    pub drained: Option<Drain>,
    /// Vote requests that got no usable answer, by voter, since the daemon started.
    pub voter_failures: Arc<BTreeMap<String, u64>>,
    /// Whether the server has closed a session since this observation began.
    pub session: SessionWatch,
    /// The `on_change` runs since the daemon started (live counters).
    pub hooks: Arc<Tally>,
}

/// The body of `/state` for each state: a [`crate::wire::StateBody`], as constants (the hot
/// path allocates nothing).
pub fn state_body(state: State) -> Bytes {
    Bytes::from_static(match state {
        State::Primary => br#"{"state":"Primary"}"#,
        State::Standby => br#"{"state":"Standby"}"#,
        State::Down => br#"{"state":"Down"}"#,
        State::Unknown => br#"{"state":"Unknown"}"#,
        State::Witness => br#"{"state":"Witness"}"#,
    })
}

/// Why a snapshot is not served as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// No cycle has completed yet.
    Starting,
    /// The server closed one of primgr's database sessions after this observation began: the
    /// database restarted or is stopping (every demotion of a primary restarts it), so what
    /// was observed may no longer hold. The poller has been woken to observe again.
    SessionLost,
    /// The newest snapshot is older than `max_staleness`.
    Stale,
}

impl Withheld {
    pub fn reason(self) -> &'static str {
        match self {
            Withheld::Starting => "starting: no poll cycle has completed yet",
            Withheld::SessionLost => {
                "session lost: the database closed primgr's session after the last observation \
                 (a restart or shutdown); observing again"
            }
            Withheld::Stale => "stale: the newest poll result is older than max_staleness",
        }
    }
}

/// The sessions the server had closed when an observation began: the snapshot is withheld as
/// soon as the count moves on. Checking it costs one atomic load.
#[derive(Debug, Clone, Default)]
pub struct SessionWatch {
    losses: Arc<Losses>,
    seen: u64,
}

impl SessionWatch {
    /// Read before an observation begins.
    pub fn before_observing(losses: Arc<Losses>) -> SessionWatch {
        let seen = losses.count();
        SessionWatch { losses, seen }
    }

    /// Whether the server has closed a session since.
    pub fn lost(&self) -> bool {
        self.losses.count() != self.seen
    }

    /// How many sessions the server has closed, since the pool was built.
    pub fn closed(&self) -> u64 {
        self.losses.count()
    }
}

impl Snapshot {
    /// The placeholder served until the first cycle completes.
    pub fn starting() -> Snapshot {
        Snapshot {
            observed_at: None,
            observed_at_wall: SystemTime::now(),
            cycle_time: Duration::ZERO,
            verdict: Verdict {
                state: State::Down,
                reason: Withheld::Starting.reason().to_string(),
                window: None,
            },
            ballot: Ballot::default(),
            electorate: Vec::new(),
            site: None,
            primary: None,
            db: DbStatus::UNKNOWN,
            voters: Vec::new(),
            members: Arc::new(Vec::new()),
            max_staleness: Duration::ZERO,
            current_lsn: None,
            wal_senders: None,
            replication: None,
            drained: None,
            voter_failures: Arc::default(),
            session: SessionWatch::default(),
            hooks: Arc::default(),
        }
    }

    /// In cluster scope, a candidate's votes counting at `now`, site by site (empty otherwise).
    pub fn votes_by_site(&self, now: Instant) -> Vec<SiteVotes> {
        let counting = self.ballot.votes.iter().filter(|v| v.counts(now));
        decide::by_site(&self.electorate, counting.map(|v| v.voter.as_str()))
    }

    /// What an `on_change` hook is told of this snapshot, published by node `me` listening on
    /// `listen`: the state `/state` answers at `now` and why (a Primary verdict whose window has
    /// not begun is Unknown, handing off: a hook never hears Primary before the first 200),
    /// the drain, the primary its metadata names (with that primary's host and port from its
    /// repmgr conninfo) and the votes counting at `now`.
    pub fn facts(&self, me: &str, listen: std::net::SocketAddr, now: Instant) -> Facts {
        let primary = self
            .primary
            .as_ref()
            .and_then(|p| self.members.iter().find(|m| &m.name == p));
        Facts {
            node: me.to_string(),
            site: self.site.clone(),
            state: self.served_state(now),
            reason: self.served_reason(now),
            primary: self.primary.clone(),
            primary_host: primary.and_then(|m| conninfo::host(&m.conninfo).ok()),
            primary_port: primary.and_then(|m| conninfo::port(&m.conninfo)),
            votes: self.ballot.counting(now),
            votes_needed: self.ballot.needed,
            drained: self.drained.as_ref().map(|d| d.reason.clone()),
            url: hooks::api_url(listen),
        }
    }

    /// Age of the observation at `now` (None before the first cycle).
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.observed_at.map(|t| now.saturating_duration_since(t))
    }

    /// Whether the snapshot may not be served as it is at `now`, and why.
    pub fn withheld(&self, now: Instant) -> Option<Withheld> {
        match self.age(now) {
            None => Some(Withheld::Starting),
            Some(_) if self.session.lost() => Some(Withheld::SessionLost),
            Some(age) if age > self.max_staleness => Some(Withheld::Stale),
            Some(_) => None,
        }
    }

    /// The instant the verdict was decided at: the end of the cycle that published it.
    pub fn decided_at(&self) -> Option<Instant> {
        self.observed_at.map(|started| started + self.cycle_time)
    }

    /// The instant a request that read its clock at `now` and then loaded this snapshot is
    /// judged at: `now`, or the snapshot's [`decided_at`](Self::decided_at) when that is later.
    /// A request reads its clock before it loads the snapshot (the retiring of a replaced
    /// window counts on that order, [`crate::cycle::Conclusion::publish`]), so a cycle may
    /// publish between the two; the request then holds a snapshot decided after its clock
    /// read, whose window, held without a break, opens only at that decision. The request is
    /// in truth past the decision (it loaded what was published after it) and before its own
    /// answer, so judging it there is judging it at a real instant of its own: without this,
    /// a healthy primary answered 509 to such a request (1 of 350,078 under `contrib/bench`).
    pub fn judged_at(&self, now: Instant) -> Instant {
        self.decided_at().map_or(now, |decided| now.max(decided))
    }

    /// The state served to a request that read its clock at `now` ([`judged_at`](Self::judged_at)):
    /// Down when withheld; a Primary outside the window of its votes is Unknown; otherwise the
    /// verdict. This is the health check's whole decision.
    pub fn served_state(&self, now: Instant) -> State {
        let now = self.judged_at(now);
        if self.withheld(now).is_some() {
            return State::Down;
        }
        match (self.verdict.state, self.verdict.window) {
            (State::Primary, Some(w)) if w.contains(now) => State::Primary,
            (State::Primary, _) => State::Unknown,
            (state, _) => state,
        }
    }

    /// Why the node is in its served state at `now`, for `/status` and the logs.
    pub fn served_reason(&self, now: Instant) -> String {
        let now = self.judged_at(now);
        if let Some(w) = self.withheld(now) {
            return w.reason().to_string();
        }
        let reason = &self.verdict.reason;
        match (self.verdict.state, self.verdict.window) {
            (State::Primary, Some(w)) if now < w.from => format!(
                "handing off: another node may have answered 200 less than handoff_delay ago; \
                 200 in {} ({reason})",
                ms(w.from - now)
            ),
            (State::Primary, Some(w)) if now >= w.until => format!(
                "the votes held expired {} ago and were not renewed ({reason})",
                ms(now - w.until)
            ),
            _ => reason.clone(),
        }
    }

    /// Whom this node names as primary when asked for its vote at `now`: its metadata's active
    /// primary, or why it names nobody (nothing fresh is known, its database is unusable, its
    /// metadata names no active primary).
    pub fn named(&self, now: Instant) -> Result<&str, &'static str> {
        match (self.withheld(now), &self.primary) {
            (Some(w), _) => Err(w.reason()),
            (None, _) if !self.db.reachable => Err("its local database is unusable"),
            (None, Some(p)) => Ok(p.as_str()),
            (None, None) => Err("its metadata names no active primary"),
        }
    }

    /// Status and body of `/primary` at `now`: whom the local metadata names, and who says so.
    pub fn primary_reply(&self, me: &str, now: Instant) -> (u16, Bytes) {
        let (code, primary, state) = match (self.withheld(now), &self.primary) {
            (None, Some(name)) if self.db.reachable => (200, Some(name.clone()), None),
            (None, None) if self.db.reachable => (503, None, None),
            _ => (503, None, Some(State::Down.name().to_string())),
        };
        let body = PrimaryBody {
            primary,
            node: me.to_string(),
            state,
        };
        (code, json_bytes(&body))
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// A body as response bytes (a [`crate::wire`] type, or any JSON value).
pub fn json_bytes<T: Serialize + ?Sized>(body: &T) -> Bytes {
    match serde_json::to_vec(body) {
        Ok(bytes) => Bytes::from(bytes),
        // Not reached: every map key of the wire types is a field name and no Serialize impl
        // they use fails (wire's golden tests serialize each one). Said rather than panicked.
        Err(_) => Bytes::from_static(br#"{"error":"the answer could not be serialized"}"#),
    }
}

/// The published snapshot of one daemon.
#[derive(Debug)]
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
}

impl Default for SnapshotStore {
    fn default() -> Self {
        SnapshotStore {
            current: ArcSwap::from_pointee(Snapshot::starting()),
        }
    }
}

impl SnapshotStore {
    /// The current snapshot; cheap, lock-free.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A guard to the current snapshot without touching the reference count (hot path).
    pub fn peek(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Publishes a new snapshot.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vote::Window;
    use crate::wire::StateBody;
    use serde_json::json;

    fn snapshot(state: State, primary: Option<&str>, reachable: bool, at: Instant) -> Snapshot {
        Snapshot {
            observed_at: Some(at),
            verdict: Verdict {
                state,
                reason: "why".into(),
                window: (state == State::Primary).then_some(Window {
                    from: at,
                    until: at + Duration::from_secs(3),
                }),
            },
            primary: primary.map(String::from),
            db: DbStatus {
                reachable,
                in_recovery: Some(false),
                error: None,
            },
            max_staleness: Duration::from_secs(10),
            ..Snapshot::starting()
        }
    }

    /// A hook is told what `/state` answers: a Primary is Primary only inside its window
    /// (Unknown while it hands off or after its votes expire), a withheld snapshot is Down; and
    /// the named primary's host and port come from its conninfo.
    #[test]
    fn a_hook_is_told_what_state_answers() {
        let at = Instant::now();
        let listen = "0.0.0.0:5999".parse().expect("addr");
        let mut s = snapshot(State::Primary, Some("node1"), true, at);
        s.members = Arc::new(vec![Member {
            node_id: 1,
            name: "node1".into(),
            location: "dc1".into(),
            node_type: "primary".into(),
            active: true,
            url: Err("none".into()),
            conninfo: "host=10.0.0.11 port=5433 user=repmgr password=***".into(),
        }]);
        s.verdict.window = Some(Window {
            from: at + Duration::from_secs(2),
            until: at + Duration::from_secs(5),
        });
        let handing_off = s.facts("node1", listen, at + Duration::from_secs(1));
        assert_eq!(handing_off.state, State::Unknown);
        assert!(
            handing_off.reason.starts_with("handing off"),
            "{}",
            handing_off.reason
        );
        let primary = s.facts("node1", listen, at + Duration::from_secs(3));
        assert_eq!(primary.state, State::Primary);
        assert_eq!(
            (primary.primary_host.as_deref(), primary.primary_port),
            (Some("10.0.0.11"), Some(5433))
        );
        assert_eq!(primary.url, "http://127.0.0.1:5999");
        let expired = s.facts("node1", listen, at + Duration::from_secs(6));
        assert_eq!(expired.state, State::Unknown);
        let stale = s.facts("node1", listen, at + Duration::from_secs(11));
        assert_eq!(stale.state, State::Down);
        s.drained = Some(Drain {
            reason: "upgrade".into(),
            since: SystemTime::now(),
        });
        let drained = s.facts("node1", listen, at + Duration::from_secs(3));
        assert_eq!(drained.drained.as_deref(), Some("upgrade"));
        assert_eq!(drained.primary, Some("node1".into()));
    }

    /// A session the server closes after the observation began withholds the snapshot at once,
    /// whatever its verdict: a primary restarted as a standby within one poll is Down, not 200.
    #[test]
    fn a_session_lost_after_the_observation_withholds_it() {
        let now = Instant::now();
        let losses = Arc::new(Losses::default());
        losses.lost();
        let primary = Snapshot {
            session: SessionWatch::before_observing(Arc::clone(&losses)),
            ..snapshot(State::Primary, Some("node1"), true, now)
        };
        assert_eq!(
            primary.served_state(now),
            State::Primary,
            "earlier losses do not count"
        );
        losses.lost();
        assert_eq!(primary.withheld(now), Some(Withheld::SessionLost));
        assert_eq!(primary.served_state(now), State::Down);
        assert!(primary.served_reason(now).starts_with("session lost"));
        let (code, _) = primary.primary_reply("node1", now);
        assert_eq!(code, 503);
    }

    #[test]
    fn starting_and_stale_snapshots_are_served_as_down() {
        let now = Instant::now();
        let start = Snapshot::starting();
        assert_eq!(start.served_state(now), State::Down);
        assert_eq!(start.withheld(now), Some(Withheld::Starting));
        let fresh = snapshot(State::Standby, Some("node1"), true, now);
        assert_eq!(
            fresh.served_state(now + Duration::from_secs(9)),
            State::Standby
        );
        assert_eq!(
            fresh.served_state(now + Duration::from_secs(11)),
            State::Down
        );
        let (code, body) = fresh.primary_reply("node2", now + Duration::from_secs(11));
        assert_eq!(
            (code, &body[..]),
            (
                503,
                &br#"{"Primary":null,"node":"node2","state":"Down"}"#[..]
            )
        );
    }

    /// A Primary is served as 200 only inside its window; before it (handing off) and after it
    /// (votes expired) it is Unknown, and `/status` says which.
    #[test]
    fn a_primary_is_200_only_inside_its_window() {
        let t = Instant::now();
        let mut s = snapshot(State::Primary, Some("node1"), true, t);
        s.verdict.window = Some(Window {
            from: t + Duration::from_secs(1),
            until: t + Duration::from_secs(3),
        });
        let at = |ms: u64| t + Duration::from_millis(ms);
        assert_eq!(s.served_state(at(999)), State::Unknown);
        assert!(s.served_reason(at(999)).starts_with("handing off"));
        assert_eq!(s.served_state(at(1000)), State::Primary);
        assert_eq!(s.served_state(at(2999)), State::Primary);
        assert_eq!(s.served_state(at(3000)), State::Unknown);
        assert!(s.served_reason(at(3500)).contains("expired 500 ms ago"));
        s.verdict.window = None;
        assert_eq!(s.served_state(at(1500)), State::Unknown);
    }

    /// A request reads its clock, then loads the snapshot; a cycle that publishes in between
    /// hands it a window that opens at the cycle's decision, after the request's clock read.
    /// It is judged at the decision (the earliest instant it can be at), not before it: a
    /// primary that holds its votes without a break stays 200, and a window that opens later
    /// (a handoff) or has closed is still not 200.
    #[test]
    fn a_request_that_read_its_clock_before_the_snapshot_was_decided_is_judged_at_the_decision() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let mut s = snapshot(State::Primary, Some("node1"), true, t);
        s.cycle_time = Duration::from_millis(8);
        assert_eq!(s.decided_at(), Some(at(8)));
        s.verdict.window = Some(Window {
            from: at(8),
            until: at(3000),
        });
        for clock_read in [0, 1, 7, 8, 9, 2999] {
            assert_eq!(
                s.served_state(at(clock_read)),
                State::Primary,
                "clock read {clock_read} ms after the cycle began"
            );
        }
        assert_eq!(s.served_state(at(3000)), State::Unknown);
        s.verdict.window = Some(Window {
            from: at(2508),
            until: at(5000),
        });
        assert_eq!(s.served_state(at(1)), State::Unknown);
        assert!(
            s.served_reason(at(1)).contains("200 in 2500 ms"),
            "{}",
            s.served_reason(at(1))
        );
    }

    #[test]
    fn primary_replies_name_the_node_that_answers() {
        let now = Instant::now();
        let reply = |p: Option<&str>, up: bool| {
            let (code, body) = snapshot(State::Standby, p, up, now).primary_reply("n3", now);
            (
                code,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        };
        assert_eq!(
            reply(Some("node\"1"), true),
            (200, json!({"Primary": "node\"1", "node": "n3"}))
        );
        assert_eq!(
            reply(None, true),
            (503, json!({"Primary": null, "node": "n3"}))
        );
        assert_eq!(
            reply(Some("node1"), false),
            (503, json!({"Primary": null, "state": "Down", "node": "n3"}))
        );
    }

    /// A standby's synchronous state from the primary's WAL senders: its own entry, or not
    /// listed; unknown when the list is stale, absent, ambiguous or hides the state.
    #[test]
    fn a_standby_learns_its_sync_state_from_the_primary() {
        let t = Instant::now();
        let max = Duration::from_secs(5);
        let sender = |name: &str, sync: Option<SyncState>| WalStandby {
            name: name.into(),
            state: Some("streaming".into()),
            sync_state: sync,
        };
        let list = vec![
            sender("node2", Some(SyncState::Sync)),
            sender("node3", Some(SyncState::Potential)),
            sender("node4", Some(SyncState::Quorum)),
            sender("node5", None),
            sender("node6", Some(SyncState::Async)),
            sender("node6", Some(SyncState::Sync)),
            sender("node7", Some(SyncState::Unknown)),
            sender("node8", Some(SyncState::Async)),
            sender("node8", Some(SyncState::Async)),
        ];
        let mut n = 0;
        for (me, want) in [
            ("node2", Ok(Some(SyncState::Sync))),
            ("node3", Ok(Some(SyncState::Potential))),
            ("node4", Ok(Some(SyncState::Quorum))),
            ("node5", Err("pg_read_all_stats")),
            ("node6", Err("different states")),
            ("node7", Err("does not know")),
            ("node8", Ok(Some(SyncState::Async))),
            ("node9", Ok(None)),
        ] {
            let got = standby_sync(me, Some((t, Some(&list))), "", t, max);
            match (&got, want) {
                (Ok(g), Ok(w)) => assert_eq!(*g, w, "{me}"),
                (Err(e), Err(why)) => assert!(e.contains(why), "{me}: {e}"),
                _ => panic!("{me}: {got:?}"),
            }
            n += 1;
        }
        // A sender without a name might be this standby: not listed is then unknown.
        let unnamed = vec![sender("", Some(SyncState::Sync))];
        let e = standby_sync("node9", Some((t, Some(&unnamed))), "", t, max).unwrap_err();
        assert!(e.contains("no name"), "{e}");
        assert_eq!(
            standby_sync("node2", Some((t, Some(&list))), "", t + max, max),
            Ok(Some(SyncState::Sync)),
            "known within max_staleness"
        );
        let later = t + max + Duration::from_millis(1);
        for (known, why) in [
            (
                Some((t, Some(&list[..]))),
                "not known within max_staleness (5s): timeout",
            ),
            (None, "not known within max_staleness (5s): timeout"),
            (Some((t + max, None)), "reports no WAL senders"),
        ] {
            let e = standby_sync("node2", known, "timeout", later, max).unwrap_err();
            assert!(e.contains(why), "{e}");
            n += 1;
        }
        println!("{} sync states derived, and 2 at the edges", n);
    }

    /// The constant bodies of `/state` are the wire type's, byte for byte.
    #[test]
    fn state_bodies_are_the_wire_type() {
        for s in State::ALL {
            let typed = StateBody {
                state: s.name().into(),
            };
            assert_eq!(state_body(s), json_bytes(&typed), "{s}");
        }
        println!("{} /state bodies equal their wire type", State::ALL.len());
    }
}
