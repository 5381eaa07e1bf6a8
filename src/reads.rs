//! The read rules: `/replica`, `/read-only`, `/readiness`, `/health` and `/liveness`, as pure
//! functions of a snapshot, the parsed parameters and the time of the request.
//!
//! Owns Patroni's names and parameters (`lag`, `replication_state`, `lag_time`), with two
//! deliberate differences: a parameter that cannot be read is an error that says why (a 400,
//! where Patroni silently turns `lag=10mb` into "no limit"), and an unknown lag is never a small
//! lag (a `lag=` check answers 503 when the primary's position is not known within
//! `max_staleness`). A drained node fails every read rule; `/state` stays as it is.

use std::time::{Duration, Instant};

use crate::decide::State;
use crate::snapshot::{ReplicationState, Snapshot};
use crate::units::{format_size, parse_size};

/// The parameters of the read checks, all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadQuery {
    /// `lag=<size>`: replay lag behind the primary at most this many bytes.
    pub lag: Option<u64>,
    /// `replication_state=streaming|archive`.
    pub replication_state: Option<ReplicationState>,
    /// `lag_time=<duration>`: last replayed transaction at most this old, or nothing left to
    /// replay.
    pub lag_time: Option<Duration>,
}

/// Parses the query string of a read check. Every parameter must be known, given once and
/// readable; the error says which one is wrong and why.
pub fn parse_query(query: Option<&str>) -> Result<ReadQuery, String> {
    let mut q = ReadQuery::default();
    for (key, value) in query_pairs(query)? {
        let twice = || format!("parameter {key:?} is given more than once");
        match key.as_str() {
            "lag" => {
                let lag = parse_size(&value).map_err(|e| format!("lag: {value:?}: {e}"))?;
                if q.lag.replace(lag).is_some() {
                    return Err(twice());
                }
            }
            "replication_state" => {
                let state = match value.as_str() {
                    "streaming" => ReplicationState::Streaming,
                    "archive" => ReplicationState::Archive,
                    other => {
                        return Err(format!(
                            "replication_state: {other:?} is neither \"streaming\" nor \"archive\""
                        ));
                    }
                };
                if q.replication_state.replace(state).is_some() {
                    return Err(twice());
                }
            }
            "lag_time" => {
                let d = humantime::parse_duration(&value).map_err(|e| {
                    format!("lag_time: {value:?} is not a duration like \"10s\" ({e})")
                })?;
                if q.lag_time.replace(d).is_some() {
                    return Err(twice());
                }
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?} (known: lag, replication_state, lag_time)"
                ));
            }
        }
    }
    Ok(q)
}

/// The decoded `key=value` pairs of a query string, in order.
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(key)?, decode(value)?))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {text:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8"))
}

/// Whether a check passes: Ok, or why not.
pub type Outcome = Result<(), String>;

/// `/replica`: the local database is up and in recovery, the node is not drained, and every
/// given parameter holds.
pub fn replica(s: &Snapshot, q: &ReadQuery, now: Instant) -> Outcome {
    if let Some(w) = s.withheld(now) {
        return Err(w.reason().into());
    }
    if let Some(d) = &s.drained {
        return Err(format!("drained by an operator: {}", d.reason));
    }
    match (s.db.reachable, s.db.in_recovery) {
        (false, _) => return Err("the local database is unusable".into()),
        (true, Some(true)) => {}
        _ => return Err("not in recovery: not a replica".into()),
    }
    let r = s.replication.as_ref().ok_or("no replication facts")?;
    if let Some(want) = q.replication_state {
        let have = r.state();
        if have != Some(want) {
            return Err(format!(
                "replication_state is {}, not {}",
                have.map_or_else(|| r.receiver_text(), |h| h.name().to_string()),
                want.name()
            ));
        }
    }
    if let Some(max) = q.lag {
        let lag = r.lag().map_err(|why| {
            format!(
                "lag unknown ({why}); lag={} cannot be checked",
                format_size(max)
            )
        })?;
        if lag > max {
            return Err(format!(
                "replay lag {} is above lag={}",
                format_size(lag),
                format_size(max)
            ));
        }
    }
    if let Some(max_age) = q.lag_time {
        let caught_up = r.lag() == Ok(0);
        let age = r
            .last_replay_age
            .map(|a| a + s.age(now).unwrap_or_default());
        match age {
            _ if caught_up => {}
            Some(age) if age <= max_age => {}
            Some(age) => {
                return Err(format!(
                    "the last replayed transaction is {} old (lag_time={}) and WAL is left to replay",
                    humantime::format_duration(round(age)),
                    humantime::format_duration(max_age)
                ));
            }
            None => {
                return Err(
                    "no transaction replayed yet and WAL may be left to replay: lag_time cannot be checked"
                        .into(),
                );
            }
        }
    }
    Ok(())
}

/// `/read-only`: the Primary (as `/state` decides it), or the `/replica` rule.
pub fn read_only(s: &Snapshot, q: &ReadQuery, now: Instant) -> Outcome {
    if s.served_state(now) == State::Primary {
        return match &s.drained {
            Some(d) => Err(format!("drained by an operator: {}", d.reason)),
            None => Ok(()),
        };
    }
    replica(s, q, now)
}

/// `/readiness`: the Primary, or a standby that streams within `lag` (default
/// `readiness_lag`) and is not drained.
pub fn readiness(s: &Snapshot, q: &ReadQuery, default_lag: u64, now: Instant) -> Outcome {
    if s.served_state(now) == State::Primary {
        return Ok(());
    }
    let q = ReadQuery {
        lag: Some(q.lag.unwrap_or(default_lag)),
        replication_state: Some(q.replication_state.unwrap_or(ReplicationState::Streaming)),
        lag_time: q.lag_time,
    };
    replica(s, &q, now)
}

/// `/health`: the local database is up, whatever its role.
pub fn health(s: &Snapshot, now: Instant) -> Outcome {
    if let Some(w) = s.withheld(now) {
        return Err(w.reason().into());
    }
    match &s.db.error {
        None if s.db.reachable => Ok(()),
        Some(e) => Err(e.to_string()),
        None => Err("the local database is unusable".into()),
    }
}

/// `/liveness`: the poller publishes fresh snapshots (no database needed).
pub fn liveness(s: &Snapshot, now: Instant) -> Outcome {
    match s.withheld(now) {
        Some(w) => Err(w.reason().into()),
        None => Ok(()),
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::db::Receiver;
    use crate::decide::Verdict;
    use crate::snapshot::{DbStatus, Drain, PrimaryPosition, Replication};
    use crate::vote::Window;

    fn standby(at: Instant) -> Snapshot {
        Snapshot {
            observed_at: Some(at),
            verdict: Verdict {
                state: State::Standby,
                reason: "in recovery".into(),
                window: None,
            },
            db: DbStatus {
                reachable: true,
                in_recovery: Some(true),
                error: None,
            },
            replication: Some(Replication {
                received: Some(2000),
                replayed: Some(1000),
                primary: Ok(PrimaryPosition {
                    lsn: 1000 + (20 << 20),
                    source: "the primary's daemon",
                }),
                receiver: Some(Receiver {
                    status: Some("streaming".into()),
                    ..Receiver::default()
                }),
                replay_paused: Some(false),
                last_replay_age: Some(Duration::from_secs(30)),
            }),
            max_staleness: Duration::from_secs(5),
            members: Arc::new(Vec::new()),
            ..Snapshot::starting()
        }
    }

    fn q(text: &str) -> ReadQuery {
        parse_query(Some(text)).unwrap()
    }

    #[test]
    fn parameters_are_parsed_or_refused_with_the_reason() {
        assert_eq!(parse_query(None), Ok(ReadQuery::default()));
        assert_eq!(
            q("lag=16MB&replication_state=streaming&lag_time=10s"),
            ReadQuery {
                lag: Some(16 << 20),
                replication_state: Some(ReplicationState::Streaming),
                lag_time: Some(Duration::from_secs(10)),
            }
        );
        assert_eq!(q("lag=1048576").lag, Some(1 << 20));
        assert_eq!(q("lag=16%20MB").lag, Some(16 << 20));
        assert_eq!(q("lag_time=1m+30s").lag_time, Some(Duration::from_secs(90)));
        for (bad, why) in [
            ("lag=10mb", "unknown unit"),
            ("lag=-1", "not a size"),
            ("lag=", "not a size"),
            ("lag", "not a size"),
            ("lag=1MB&lag=2MB", "more than once"),
            ("replication_state=recovering", "neither"),
            ("lag_time=soon", "not a duration"),
            ("noloadbalance=1", "unknown parameter"),
            ("lag=%zz", "percent-encoding"),
        ] {
            let e = parse_query(Some(bad)).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn replica_rules() {
        let t = Instant::now();
        let s = standby(t);
        assert_eq!(replica(&s, &q(""), t), Ok(()));
        assert_eq!(replica(&s, &q("lag=32MB"), t), Ok(()));
        let e = replica(&s, &q("lag=16MB"), t).unwrap_err();
        assert!(e.contains("20MB is above lag=16MB"), "{e}");
        assert_eq!(replica(&s, &q("replication_state=streaming"), t), Ok(()));
        assert!(replica(&s, &q("replication_state=archive"), t).is_err());
        // lag_time: the last replayed transaction is 30 s old plus the snapshot's age.
        assert_eq!(replica(&s, &q("lag_time=31s"), t), Ok(()));
        assert!(replica(&s, &q("lag_time=31s"), t + Duration::from_secs(2)).is_err());
        // ... but a standby that has replayed everything passes whatever its age.
        let mut idle = standby(t);
        if let Some(r) = idle.replication.as_mut() {
            r.replayed = Some(1000 + (20 << 20));
        }
        assert_eq!(replica(&idle, &q("lag_time=1s"), t), Ok(()));
    }

    /// An unknown lag is never a small lag: a `lag=` check fails with the reason; a plain
    /// `/replica` does not need the lag.
    #[test]
    fn an_unknown_lag_fails_every_lag_check() {
        let t = Instant::now();
        let mut s = standby(t);
        if let Some(r) = s.replication.as_mut() {
            r.primary = Err("the primary's position is not known within max_staleness".into());
        }
        let e = replica(&s, &q("lag=1TB"), t).unwrap_err();
        assert!(e.contains("lag unknown"), "{e}");
        assert!(readiness(&s, &q(""), 16 << 20, t).is_err());
        assert!(replica(&s, &q("lag_time=1h"), t).is_ok(), "30 s old < 1 h");
        assert!(replica(&s, &q("lag_time=10s"), t).is_err());
        assert_eq!(replica(&s, &q(""), t), Ok(()));
    }

    #[test]
    fn drained_withheld_down_and_primaries() {
        let t = Instant::now();
        let mut s = standby(t);
        s.drained = Some(Drain {
            reason: "maintenance".into(),
            since: std::time::SystemTime::now(),
        });
        for outcome in [
            replica(&s, &q(""), t),
            read_only(&s, &q(""), t),
            readiness(&s, &q(""), 1 << 30, t),
        ] {
            assert!(outcome.unwrap_err().contains("maintenance"));
        }
        assert_eq!(health(&s, t), Ok(()));
        let stale = standby(t);
        let later = t + Duration::from_secs(6);
        assert!(
            replica(&stale, &q(""), later)
                .unwrap_err()
                .contains("stale")
        );
        assert!(liveness(&stale, later).is_err() && health(&stale, later).is_err());
        assert_eq!(liveness(&stale, t), Ok(()));
        let mut primary = standby(t);
        primary.db.in_recovery = Some(false);
        primary.verdict = Verdict {
            state: State::Primary,
            reason: String::new(),
            window: Some(Window {
                from: t,
                until: t + Duration::from_secs(3),
            }),
        };
        assert!(
            replica(&primary, &q(""), t)
                .unwrap_err()
                .contains("not a replica")
        );
        assert_eq!(read_only(&primary, &q("lag=0"), t), Ok(()));
        assert_eq!(readiness(&primary, &q(""), 0, t), Ok(()));
        // Outside its window it is Unknown: neither a primary nor a replica.
        let after = t + Duration::from_secs(4);
        assert!(read_only(&primary, &q(""), after).is_err());
        let mut down = standby(t);
        down.db.reachable = false;
        assert!(replica(&down, &q(""), t).is_err() && health(&down, t).is_err());
    }
}
