//! `/metrics`: the Prometheus text format (version 0.0.4), rendered from the snapshot.
//!
//! Owns the metric names and what they mean, and the request counters they read
//! ([`RequestCounters`], one relaxed atomic increment per request). No database traffic: a
//! scrape reads the snapshot and the counters like any health check. For teams without
//! Prometheus, `/status` says the same in JSON.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `primgr_state{state}` | gauge | 1 for the state `/state` answers now, 0 for the others |
//! | `primgr_votes` / `primgr_votes_needed` | gauge | votes counting toward a 200 now / a majority of the electorate (the site, or the cluster in cluster scope) |
//! | `primgr_vote_scope{scope}` | gauge | 1 for the `vote_scope` in force (`site`, `cluster`), 0 for the other |
//! | `primgr_site_votes{site}` / `primgr_site_members{site}` | gauge | cluster scope, a candidate: votes counting now / members of its electorate, site by site |
//! | `primgr_cycle_duration_seconds` | gauge | how long the last poll cycle took |
//! | `primgr_snapshot_age_seconds` | gauge | age of the poll result served |
//! | `primgr_database_up` | gauge | 1 when the last cycle observed the local database |
//! | `primgr_database_sessions_closed_total` | counter | primgr's sessions the server ended (each withholds the snapshot until the next cycle; restarts with the pool) |
//! | `primgr_replication_lag_bytes` | gauge | a standby's replay lag (absent when unknown) |
//! | `primgr_replication_lag_known` | gauge | 1 when a standby's lag is known |
//! | `primgr_drained` | gauge | 1 while an operator has drained the node |
//! | `primgr_voter_failures_total{voter}` | counter | vote requests that got no usable answer |
//! | `primgr_http_requests_total{endpoint,code}` | counter | requests answered |
//! | `primgr_config_loaded_timestamp_seconds` | gauge | when the configuration in force was loaded (wall clock) |
//! | `primgr_hook_runs_total{outcome}` | counter | `on_change` runs ended `ok` (exit 0), `failed` (other exit, signal, not started) or `timeout` (killed) |
//! | `primgr_hook_last_duration_seconds` | gauge | how long the last `on_change` run took (absent before the first) |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use crate::decide::State;
use crate::hooks::Outcome;
use crate::snapshot::Snapshot;
use crate::wire::VoteScope;

/// The codes counted per endpoint (anything else counts as `other`).
const CODES: [u16; 10] = [200, 202, 400, 404, 405, 409, 413, 500, 503, 509];

/// Requests answered, by endpoint and status code.
#[derive(Debug)]
pub struct RequestCounters {
    endpoints: Vec<&'static str>,
    counts: Vec<[AtomicU64; CODES.len() + 1]>,
}

impl RequestCounters {
    /// Counters for these endpoint names (rows indexed as given).
    pub fn new(endpoints: impl IntoIterator<Item = &'static str>) -> RequestCounters {
        let endpoints: Vec<&'static str> = endpoints.into_iter().collect();
        RequestCounters {
            counts: endpoints
                .iter()
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            endpoints,
        }
    }

    /// Counts one request of endpoint `index` answered with `code`.
    pub fn count(&self, index: usize, code: u16) {
        let slot = CODES.iter().position(|c| *c == code).unwrap_or(CODES.len());
        if let Some(row) = self.counts.get(index) {
            row[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every non-zero count: (endpoint, code, count).
    pub fn snapshot(&self) -> Vec<(&'static str, String, u64)> {
        let mut out = Vec::new();
        for (name, row) in self.endpoints.iter().zip(&self.counts) {
            for (slot, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let code = CODES.get(slot).map_or("other".into(), |c| c.to_string());
                    out.push((*name, code, n));
                }
            }
        }
        out
    }
}

/// What `/metrics` shows besides the snapshot.
pub struct Extra<'a> {
    pub requests: Vec<(&'static str, String, u64)>,
    pub voter_failures: &'a BTreeMap<String, u64>,
    pub config_loaded: SystemTime,
    /// `"key"` or `"addresses"` ([`crate::shared::PeerAuth::mode`]).
    pub peer_auth: &'static str,
    /// Answers of each peer that failed authentication.
    pub peer_auth_failures: &'a BTreeMap<String, u64>,
    /// Peer requests refused (401, 403).
    pub peer_requests_refused: u64,
    /// The `vote_scope` in force.
    pub vote_scope: VoteScope,
}

/// The exposition text.
pub fn render(s: &Snapshot, extra: &Extra<'_>, now: Instant) -> String {
    let mut out = String::with_capacity(2048);
    let served = s.served_state(now);
    family(
        &mut out,
        "primgr_state",
        "gauge",
        "1 for the state /state answers now.",
    );
    for state in State::ALL {
        let v = u8::from(state == served);
        let _ = writeln!(out, "primgr_state{{state=\"{}\"}} {v}", state.name());
    }
    gauge(
        &mut out,
        "primgr_votes",
        "Votes counting toward a 200 now.",
        s.ballot.counting(now) as f64,
    );
    gauge(
        &mut out,
        "primgr_votes_needed",
        "A majority of the electorate: the site, or the cluster in cluster scope (0 when not a \
         candidate).",
        s.ballot.needed as f64,
    );
    family(
        &mut out,
        "primgr_vote_scope",
        "gauge",
        "1 for the vote_scope in force: site or cluster.",
    );
    for scope in VoteScope::ALL {
        let v = u8::from(scope == extra.vote_scope);
        let _ = writeln!(out, "primgr_vote_scope{{scope=\"{scope}\"}} {v}");
    }
    let by_site = s.votes_by_site(now);
    if !by_site.is_empty() {
        family(
            &mut out,
            "primgr_site_votes",
            "gauge",
            "Cluster scope: votes counting toward a 200 now, by site of the voter.",
        );
        for site in &by_site {
            let (name, n) = (label(&site.site), site.voters.len());
            let _ = writeln!(out, "primgr_site_votes{{site=\"{name}\"}} {n}");
        }
        family(
            &mut out,
            "primgr_site_members",
            "gauge",
            "Cluster scope: the members of the electorate, by site.",
        );
        for site in &by_site {
            let (name, n) = (label(&site.site), site.members);
            let _ = writeln!(out, "primgr_site_members{{site=\"{name}\"}} {n}");
        }
    }
    gauge(
        &mut out,
        "primgr_cycle_duration_seconds",
        "How long the last poll cycle took.",
        s.cycle_time.as_secs_f64(),
    );
    if let Some(age) = s.age(now) {
        gauge(
            &mut out,
            "primgr_snapshot_age_seconds",
            "Age of the poll result served.",
            age.as_secs_f64(),
        );
    }
    gauge(
        &mut out,
        "primgr_database_up",
        "1 when the last cycle observed the local database.",
        f64::from(u8::from(s.db.reachable)),
    );
    family(
        &mut out,
        "primgr_database_sessions_closed_total",
        "counter",
        "primgr's database sessions that the server ended (a stop or restart of PostgreSQL).",
    );
    let _ = writeln!(
        out,
        "primgr_database_sessions_closed_total {}",
        s.session.closed()
    );
    if let Some(r) = &s.replication {
        let lag = r.lag();
        if let Ok(bytes) = lag {
            gauge(
                &mut out,
                "primgr_replication_lag_bytes",
                "Replay lag behind the primary (standbys).",
                bytes as f64,
            );
        }
        gauge(
            &mut out,
            "primgr_replication_lag_known",
            "1 when the replay lag is known (standbys).",
            f64::from(u8::from(lag.is_ok())),
        );
    }
    gauge(
        &mut out,
        "primgr_drained",
        "1 while an operator has drained this node.",
        f64::from(u8::from(s.drained.is_some())),
    );
    counters_by(
        &mut out,
        "primgr_voter_failures_total",
        "Vote requests that got no usable answer.",
        "voter",
        extra.voter_failures,
    );
    family(
        &mut out,
        "primgr_peer_auth_mode",
        "gauge",
        "1 for how peers are authenticated: key (peer_key_file) or addresses.",
    );
    for mode in ["key", "addresses"] {
        let v = u8::from(mode == extra.peer_auth);
        let _ = writeln!(out, "primgr_peer_auth_mode{{mode=\"{mode}\"}} {v}");
    }
    counters_by(
        &mut out,
        "primgr_peer_answers_unauthenticated_total",
        "Peer answers that failed authentication (counted as no answer).",
        "peer",
        extra.peer_auth_failures,
    );
    family(
        &mut out,
        "primgr_peer_requests_refused_total",
        "counter",
        "Peer requests refused for want of authentication (401) or of a member's address (403).",
    );
    let _ = writeln!(
        out,
        "primgr_peer_requests_refused_total {}",
        extra.peer_requests_refused
    );
    family(
        &mut out,
        "primgr_http_requests_total",
        "counter",
        "HTTP requests answered.",
    );
    for (endpoint, code, n) in &extra.requests {
        let _ = writeln!(
            out,
            "primgr_http_requests_total{{endpoint=\"{endpoint}\",code=\"{code}\"}} {n}"
        );
    }
    let loaded = extra
        .config_loaded
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    gauge(
        &mut out,
        "primgr_config_loaded_timestamp_seconds",
        "When the configuration in force was loaded.",
        loaded,
    );
    family(
        &mut out,
        "primgr_hook_runs_total",
        "counter",
        "on_change runs, by outcome (ok: exit 0; failed; timeout: killed).",
    );
    for outcome in Outcome::ALL {
        let _ = writeln!(
            out,
            "primgr_hook_runs_total{{outcome=\"{}\"}} {}",
            outcome.name(),
            s.hooks.runs(outcome)
        );
    }
    if let Some(took) = s.hooks.last_duration() {
        gauge(
            &mut out,
            "primgr_hook_last_duration_seconds",
            "How long the last on_change run took.",
            took.as_secs_f64(),
        );
    }
    out
}

/// A counter family with one sample per peer, labelled `key` with the peer's name.
fn counters_by(out: &mut String, name: &str, help: &str, key: &str, by: &BTreeMap<String, u64>) {
    family(out, name, "counter", help);
    for (peer, n) in by {
        let _ = writeln!(out, "{name}{{{key}=\"{}\"}} {n}", label(peer));
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    family(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value with `\`, `"` and newlines escaped.
fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The extras of a site-scope node in key mode that has answered nothing yet, with
    /// `failures` (empty) for its per-peer counters.
    fn quiet(failures: &BTreeMap<String, u64>) -> Extra<'_> {
        Extra {
            requests: Vec::new(),
            voter_failures: failures,
            config_loaded: SystemTime::UNIX_EPOCH,
            peer_auth: "key",
            peer_auth_failures: failures,
            peer_requests_refused: 0,
            vote_scope: VoteScope::Site,
        }
    }

    #[test]
    fn counters_count_by_endpoint_and_code() {
        let c = RequestCounters::new(["/state", "/status"]);
        for _ in 0..3 {
            c.count(0, 200);
        }
        c.count(0, 509);
        c.count(1, 418);
        c.count(7, 200); // no such endpoint: ignored
        assert_eq!(
            c.snapshot(),
            [
                ("/state", "200".to_string(), 3),
                ("/state", "509".to_string(), 1),
                ("/status", "other".to_string(), 1)
            ]
        );
    }

    /// The hook's runs by outcome, always (0 before any), and the last run's duration once
    /// there was one.
    #[test]
    fn hook_runs_by_outcome_and_the_last_duration() {
        let s = Snapshot::starting();
        let failures = BTreeMap::new();
        let extra = quiet(&failures);
        let before = render(&s, &extra, Instant::now());
        for outcome in ["ok", "failed", "timeout"] {
            let line = format!("primgr_hook_runs_total{{outcome=\"{outcome}\"}} 0\n");
            assert!(before.contains(&line), "{before}");
        }
        assert!(!before.contains("primgr_hook_last_duration_seconds"));
        s.hooks
            .record(Outcome::Failed, std::time::Duration::from_millis(1500));
        let after = render(&s, &extra, Instant::now());
        assert!(after.contains("primgr_hook_runs_total{outcome=\"failed\"} 1\n"));
        assert!(after.contains("# TYPE primgr_hook_runs_total counter\n"));
        assert!(
            after.contains("\nprimgr_hook_last_duration_seconds 1.5\n"),
            "{after}"
        );
    }

    /// The scope in force is one of two gauges at 1; in cluster scope a candidate's votes and
    /// members by site follow, and in site scope they are absent.
    #[test]
    fn the_vote_scope_and_the_votes_by_site() {
        use crate::decide::Site;
        use crate::vote::{Ballot, HeldVote};
        let now = Instant::now();
        let mut s = Snapshot::starting();
        s.ballot = Ballot {
            votes: ["n3", "n4"]
                .map(|v| HeldVote {
                    voter: v.into(),
                    epoch: None,
                    sent: now,
                    valid_until: now + std::time::Duration::from_secs(3),
                    settled_at: now,
                })
                .into(),
            needed: 3,
        };
        let failures = BTreeMap::new();
        let mut extra = quiet(&failures);
        let text = render(&s, &extra, now);
        assert!(
            text.contains("primgr_vote_scope{scope=\"site\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("primgr_vote_scope{scope=\"cluster\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("primgr_site_votes"), "{text}");
        extra.vote_scope = VoteScope::Cluster;
        s.electorate = [("dc1", vec!["n1", "n2"]), ("dc2", vec!["n3", "n4"])]
            .map(|(site, members)| Site {
                site: site.into(),
                members: members.into_iter().map(String::from).collect(),
            })
            .into();
        let text = render(&s, &extra, now);
        for line in [
            "primgr_vote_scope{scope=\"cluster\"} 1",
            "primgr_votes 2",
            "primgr_votes_needed 3",
            "primgr_site_votes{site=\"dc1\"} 0",
            "primgr_site_votes{site=\"dc2\"} 2",
            "primgr_site_members{site=\"dc1\"} 2",
            "primgr_site_members{site=\"dc2\"} 2",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line}: {text}");
        }
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
