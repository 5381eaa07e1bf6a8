//! The snapshot: everything one poll cycle learned, published at once and read by every request.
//!
//! Owns the shape of what is served and the rule that keeps a stale answer from being served:
//! a snapshot older than `max_staleness` (or none yet) is served as Down. The poller builds a
//! new [`Snapshot`] each cycle and swaps it into the [`SnapshotStore`] (an `ArcSwap`); request
//! handlers load it without locks or allocation. The bodies of `/state` are constants and the
//! body of `/primary` is rendered here, once per cycle, not per request.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::Uri;

use crate::db::DbError;
use crate::decide::{PeerAnswer, State, Verdict};

/// A voter asked in this cycle and what it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterReport {
    pub name: String,
    /// Its API address, or why it has none.
    pub url: Result<Uri, String>,
    pub answer: PeerAnswer,
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
    /// Its repmgr conninfo with any password removed.
    pub conninfo: String,
}

/// What the local database looked like in this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbStatus {
    pub reachable: bool,
    pub in_recovery: Option<bool>,
    pub error: Option<DbError>,
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
    /// This node's site (its `location`), when its row was found.
    pub site: Option<String>,
    /// The active primary named by the local metadata.
    pub primary: Option<String>,
    pub db: DbStatus,
    pub voters: Vec<VoterReport>,
    /// Every registered node. Kept from the last successful observation when the database is
    /// down, so `/realPrimary` still knows whom to ask.
    pub members: Arc<Vec<Member>>,
    /// Status and body of `/primary`, rendered once.
    primary_reply: (u16, Bytes),
}

/// The body of `/state` for each state.
pub fn state_body(state: State) -> Bytes {
    Bytes::from_static(match state {
        State::Primary => br#"{"state":"Primary"}"#,
        State::Standby => br#"{"state":"Standby"}"#,
        State::Down => br#"{"state":"Down"}"#,
        State::Unknown => br#"{"state":"Unknown"}"#,
    })
}

/// `/primary` when the local database is down, or nothing fresh is known.
const PRIMARY_DOWN: &[u8] = br#"{"Primary":null,"state":"Down"}"#;
/// `/primary` when the metadata names no active primary.
const PRIMARY_NONE: &[u8] = br#"{"Primary":null}"#;

/// Why a snapshot is not served as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// No cycle has completed yet.
    Starting,
    /// The newest snapshot is older than `max_staleness`.
    Stale,
}

impl Withheld {
    pub fn reason(self) -> &'static str {
        match self {
            Withheld::Starting => "starting: no poll cycle has completed yet",
            Withheld::Stale => "stale: the newest poll result is older than max_staleness",
        }
    }
}

impl Snapshot {
    /// The placeholder served until the first cycle completes.
    pub fn starting(members: Arc<Vec<Member>>) -> Snapshot {
        Snapshot {
            observed_at: None,
            observed_at_wall: SystemTime::now(),
            cycle_time: Duration::ZERO,
            verdict: Verdict {
                state: State::Down,
                reason: Withheld::Starting.reason().to_string(),
                votes: 0,
                needed: 0,
            },
            site: None,
            primary: None,
            db: DbStatus {
                reachable: false,
                in_recovery: None,
                error: None,
            },
            voters: Vec::new(),
            members,
            primary_reply: (503, Bytes::from_static(PRIMARY_DOWN)),
        }
    }

    /// A completed cycle's snapshot; renders the `/primary` reply.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        observed_at: Instant,
        observed_at_wall: SystemTime,
        cycle_time: Duration,
        verdict: Verdict,
        site: Option<String>,
        primary: Option<String>,
        db: DbStatus,
        voters: Vec<VoterReport>,
        members: Arc<Vec<Member>>,
    ) -> Snapshot {
        let primary_reply = match (&db.reachable, &primary) {
            (false, _) => (503, Bytes::from_static(PRIMARY_DOWN)),
            (true, Some(name)) => (
                200,
                Bytes::from(serde_json::json!({ "Primary": name }).to_string()),
            ),
            (true, None) => (503, Bytes::from_static(PRIMARY_NONE)),
        };
        Snapshot {
            observed_at: Some(observed_at),
            observed_at_wall,
            cycle_time,
            verdict,
            site,
            primary,
            db,
            voters,
            members,
            primary_reply,
        }
    }

    /// Age of the observation at `now` (None before the first cycle).
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.observed_at.map(|t| now.saturating_duration_since(t))
    }

    /// Whether the snapshot may not be served as it is at `now`, and why.
    pub fn withheld(&self, now: Instant, max_staleness: Duration) -> Option<Withheld> {
        match self.age(now) {
            None => Some(Withheld::Starting),
            Some(age) if age > max_staleness => Some(Withheld::Stale),
            Some(_) => None,
        }
    }

    /// The state served at `now`: the verdict, or Down when withheld.
    pub fn served_state(&self, now: Instant, max_staleness: Duration) -> State {
        match self.withheld(now, max_staleness) {
            Some(_) => State::Down,
            None => self.verdict.state,
        }
    }

    /// Status and body of `/primary` at `now`.
    pub fn primary_reply(&self, now: Instant, max_staleness: Duration) -> (u16, Bytes) {
        match self.withheld(now, max_staleness) {
            Some(_) => (503, Bytes::from_static(PRIMARY_DOWN)),
            None => self.primary_reply.clone(),
        }
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
            current: ArcSwap::from_pointee(Snapshot::starting(Arc::new(Vec::new()))),
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

/// A conninfo with any password replaced by `***` (key=value and URI forms).
pub fn redact_conninfo(conninfo: &str) -> String {
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        return redact_uri(trimmed);
    }
    redact_key_value(conninfo)
}

fn redact_uri(uri: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Walks key=value pairs with libpq's quoting rules and masks the value of `password`.
fn redact_key_value(conninfo: &str) -> String {
    let mut out = String::with_capacity(conninfo.len());
    let mut chars = conninfo.chars().peekable();
    loop {
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            out.push(c);
            chars.next();
        }
        let mut key = String::new();
        while let Some(c) = chars
            .peek()
            .copied()
            .filter(|c| *c != '=' && !c.is_whitespace())
        {
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        out.push_str(&key);
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            out.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            // Not a key=value pair; copy the rest as it is.
            out.extend(chars);
            break;
        }
        out.push('=');
        chars.next();
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            out.push(c);
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            value.push('\'');
            chars.next();
            while let Some(c) = chars.next() {
                value.push(c);
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => break,
                    _ => {}
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| !c.is_whitespace()) {
                value.push(c);
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                }
            }
        }
        if key.eq_ignore_ascii_case("password") {
            out.push_str("***");
        } else {
            out.push_str(&value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(state: State) -> Verdict {
        Verdict {
            state,
            reason: String::new(),
            votes: 0,
            needed: 0,
        }
    }

    fn snapshot(primary: Option<&str>, reachable: bool, at: Instant) -> Snapshot {
        Snapshot::new(
            at,
            SystemTime::now(),
            Duration::ZERO,
            verdict(State::Primary),
            Some("dc1".into()),
            primary.map(String::from),
            DbStatus {
                reachable,
                in_recovery: Some(false),
                error: None,
            },
            Vec::new(),
            Arc::new(Vec::new()),
        )
    }

    #[test]
    fn starting_and_stale_snapshots_are_served_as_down() {
        let now = Instant::now();
        let max = Duration::from_secs(10);
        let start = Snapshot::starting(Arc::new(Vec::new()));
        assert_eq!(start.served_state(now, max), State::Down);
        assert_eq!(start.withheld(now, max), Some(Withheld::Starting));
        let fresh = snapshot(Some("node1"), true, now);
        assert_eq!(
            fresh.served_state(now + Duration::from_secs(9), max),
            State::Primary
        );
        assert_eq!(
            fresh.served_state(now + Duration::from_secs(11), max),
            State::Down
        );
        let (code, body) = fresh.primary_reply(now + Duration::from_secs(11), max);
        assert_eq!((code, &body[..]), (503, PRIMARY_DOWN));
    }

    #[test]
    fn primary_replies() {
        let now = Instant::now();
        let max = Duration::from_secs(10);
        let (code, body) = snapshot(Some("node\"1"), true, now).primary_reply(now, max);
        assert_eq!((code, &body[..]), (200, &br#"{"Primary":"node\"1"}"#[..]));
        let (code, body) = snapshot(None, true, now).primary_reply(now, max);
        assert_eq!((code, &body[..]), (503, &br#"{"Primary":null}"#[..]));
        let (code, body) = snapshot(Some("node1"), false, now).primary_reply(now, max);
        assert_eq!(
            (code, &body[..]),
            (503, &br#"{"Primary":null,"state":"Down"}"#[..])
        );
    }

    #[test]
    fn state_bodies_are_the_seed_json() {
        for s in [State::Primary, State::Standby, State::Down, State::Unknown] {
            let v: serde_json::Value = serde_json::from_slice(&state_body(s)).unwrap();
            assert_eq!(v, serde_json::json!({ "state": s.name() }));
        }
    }

    #[test]
    fn passwords_are_redacted() {
        let cases = [
            (
                "host=db password=secret user=u",
                "host=db password=*** user=u",
            ),
            ("password = 'se cr\\'et' host=db", "password = *** host=db"),
            ("host=db user=u", "host=db user=u"),
            ("PASSWORD=x", "PASSWORD=***"),
            (
                "postgresql://u:secret@db:5432/repmgr?sslmode=disable&password=x",
                "postgresql://u:***@db:5432/repmgr?sslmode=disable&password=***",
            ),
            ("postgres://u@db/repmgr", "postgres://u@db/repmgr"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_conninfo(input), want, "{input}");
            assert!(!redact_conninfo(input).contains("secret"));
        }
    }
}
