//! The read rules: `/replica`, `/read-only`, `/readiness`, `/health`, `/liveness` and the
//! synchronous ones (`/sync`, `/async`, `/quorum`, `/read-only-sync`, `/read-only-quorum`), as
//! pure functions of a snapshot, the parsed parameters and the time of the request.
//!
//! Owns Patroni's names and parameters (`lag`, `mode`, `replication_state`, and primgr's own
//! `lag_time`), with deliberate differences: a parameter that cannot be read is an error that
//! says why (a 400, where Patroni silently turns `lag=10mb` into "no limit"), an unknown lag is
//! never a small lag (a `lag=` check answers 503 when the primary's position is not known within
//! `max_staleness`), and an unknown synchronous state is neither synchronous nor asynchronous
//! (every sync check answers 503 when the primary's WAL senders are not known within
//! `max_staleness`). A drained node fails every read rule; `/state` stays as it is.

use std::time::{Duration, Instant};

use crate::decide::State;
use crate::snapshot::{LagMode, ReplicationState, Snapshot, sync_text};
use crate::units::{format_size, parse_size};
use crate::wire::SyncState;

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
    /// `mode=apply|write`: `lag` counted to the replayed (default) or the received position.
    pub mode: Option<LagMode>,
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
            "mode" => {
                let mode = match value.as_str() {
                    "apply" => LagMode::Apply,
                    "write" => LagMode::Write,
                    other => {
                        return Err(format!(
                            "mode: {other:?} is neither \"apply\" nor \"write\""
                        ));
                    }
                };
                if q.mode.replace(mode).is_some() {
                    return Err(twice());
                }
            }
            tag if tag.starts_with("tag_") => {
                return Err(format!(
                    "{tag}: primgr has no node tags (Patroni's `tags`); to take a node out of \
                     the read pool, `primgr drain` it"
                ));
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?} (known: lag, mode, replication_state, lag_time)"
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
        let mode = q.mode.unwrap_or_default();
        let lag = r.lag_in(mode).map_err(|why| {
            format!(
                "lag unknown ({why}); lag={} cannot be checked",
                format_size(max)
            )
        })?;
        if lag > max {
            return Err(format!(
                "{} lag {} is above lag={}",
                match mode {
                    LagMode::Apply => "replay",
                    LagMode::Write => "write",
                },
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
        mode: q.mode,
    };
    replica(s, &q, now)
}

/// Which standbys a synchronous check accepts, by the primary's `sync_state` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncWanted {
    /// `sync` (`FIRST n (...)` or a plain list): `/synchronous`, `/read-only-sync`.
    Sync,
    /// `quorum` (`ANY n (...)`): `/quorum`, `/read-only-quorum`.
    Quorum,
    /// Neither (`async`, `potential`, or not among the primary's WAL senders):
    /// `/asynchronous`.
    Async,
}

impl SyncWanted {
    pub fn name(self) -> &'static str {
        match self {
            SyncWanted::Sync => "synchronous",
            SyncWanted::Quorum => "a quorum standby",
            SyncWanted::Async => "asynchronous",
        }
    }

    /// Whether the primary's word for this standby (None: not among its WAL senders) is one
    /// this check accepts.
    pub fn accepts(self, have: Option<SyncState>) -> bool {
        match self {
            SyncWanted::Sync => have == Some(SyncState::Sync),
            SyncWanted::Quorum => have == Some(SyncState::Quorum),
            SyncWanted::Async => {
                matches!(have, None | Some(SyncState::Async | SyncState::Potential))
            }
        }
    }
}

/// `/synchronous` = `/sync`, `/quorum`, `/asynchronous` = `/async`: the `/replica` rule (same
/// parameters), and the primary lists this standby as `want` says, as its daemon reported it
/// within `max_staleness`. An unknown synchronous state fails every one of them.
pub fn sync_standby(s: &Snapshot, q: &ReadQuery, want: SyncWanted, now: Instant) -> Outcome {
    replica(s, q, now)?;
    let r = s.replication.as_ref().ok_or("no replication facts")?;
    let have = r
        .sync
        .as_ref()
        .map_err(|why| format!("synchronous state unknown: {why}"))?;
    if want.accepts(*have) {
        Ok(())
    } else {
        Err(format!(
            "the primary lists this standby as {}: not {}",
            sync_text(*have),
            want.name()
        ))
    }
}

/// `/read-only-sync` (`want` Sync), `/read-only-quorum` (`want` Quorum): the Primary (as
/// `/state` decides it, not drained), or the [`sync_standby`] rule.
pub fn read_only_sync(s: &Snapshot, q: &ReadQuery, want: SyncWanted, now: Instant) -> Outcome {
    if s.served_state(now) == State::Primary {
        return match &s.drained {
            Some(d) => Err(format!("drained by an operator: {}", d.reason)),
            None => Ok(()),
        };
    }
    sync_standby(s, q, want, now)
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
                sync: Ok(Some(SyncState::Async)),
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
            q("lag=16MB&replication_state=streaming&lag_time=10s&mode=write"),
            ReadQuery {
                lag: Some(16 << 20),
                replication_state: Some(ReplicationState::Streaming),
                lag_time: Some(Duration::from_secs(10)),
                mode: Some(LagMode::Write),
            }
        );
        assert_eq!(q("mode=apply").mode, Some(LagMode::Apply));
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
            ("mode=replay", "neither \"apply\" nor \"write\""),
            ("mode=", "neither"),
            ("mode=write&mode=apply", "more than once"),
            ("tag_dc=east", "no node tags"),
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

    /// `mode=write` counts the lag to the received position (the replayed one when that is
    /// further), `mode=apply` (the default) to the replayed one; `/readiness` takes it too.
    #[test]
    fn lag_modes() {
        let t = Instant::now();
        // Replayed 1000, received 1000 + 19 MB, the primary at 1000 + 20 MB.
        let mut s = standby(t);
        if let Some(r) = s.replication.as_mut() {
            r.received = Some(1000 + (19 << 20));
        }
        let mut n = 0;
        for (query, ok) in [
            ("lag=20MB", true),
            ("lag=19MB", false),
            ("lag=19MB&mode=apply", false),
            ("lag=19MB&mode=write", true),
            ("lag=1MB&mode=write", true),
            ("lag=1048575&mode=write", false),
            ("mode=write", true),
        ] {
            assert_eq!(replica(&s, &q(query), t).is_ok(), ok, "{query}");
            n += 1;
        }
        let e = replica(&s, &q("lag=1kB&mode=write"), t).unwrap_err();
        assert!(e.starts_with("write lag 1MB"), "{e}");
        assert!(readiness(&s, &q("lag=19MB"), 0, t).is_err());
        assert!(readiness(&s, &q("lag=19MB&mode=write"), 0, t).is_ok());
        assert!(readiness(&s, &q("mode=write"), 1 << 20, t).is_ok());
        assert!(readiness(&s, &q("mode=write"), (1 << 20) - 1, t).is_err());
        // Archive recovery: nothing received, the replayed position counts for both.
        let mut archive = standby(t);
        if let Some(r) = archive.replication.as_mut() {
            r.received = None;
        }
        assert_eq!(
            replica(&archive, &q("lag=20MB&mode=write"), t),
            replica(&archive, &q("lag=20MB"), t)
        );
        println!("{} lag mode cases", n + 6);
    }

    /// Every sync check against every synchronous state a standby can know, and an unknown
    /// one: the table is Patroni's (sync only for `sync`, quorum only for `quorum`, async for
    /// the rest), and unknown fails all of them.
    #[test]
    fn sync_checks_table() {
        use SyncWanted::{Async, Quorum, Sync};
        let t = Instant::now();
        let known = |state: Result<Option<SyncState>, &str>| {
            let mut s = standby(t);
            if let Some(r) = s.replication.as_mut() {
                r.sync = state.map_err(String::from);
            }
            s
        };
        type Known = Result<Option<SyncState>, &'static str>;
        let states: [(Known, [bool; 3]); 6] = [
            (Ok(Some(SyncState::Sync)), [true, false, false]),
            (Ok(Some(SyncState::Quorum)), [false, true, false]),
            (Ok(Some(SyncState::Potential)), [false, false, true]),
            (Ok(Some(SyncState::Async)), [false, false, true]),
            (Ok(None), [false, false, true]),
            (Err("not known within max_staleness"), [false, false, false]),
        ];
        let mut n = 0;
        for (state, want) in &states {
            let s = known(*state);
            for (check, ok) in [Sync, Quorum, Async].into_iter().zip(want) {
                let outcome = sync_standby(&s, &q(""), check, t);
                assert_eq!(outcome.is_ok(), *ok, "{check:?} on {state:?}: {outcome:?}");
                // The read-only variants answer alike on a standby.
                if check != Async {
                    assert_eq!(read_only_sync(&s, &q(""), check, t), outcome);
                }
                if let Err(e) = &outcome {
                    let says = match state {
                        Err(_) => "synchronous state unknown",
                        Ok(_) => "the primary lists this standby as",
                    };
                    assert!(e.contains(says), "{e}");
                }
                n += 1;
            }
        }
        // The /replica parameters apply, with their reasons.
        let sync = known(Ok(Some(SyncState::Sync)));
        assert!(sync_standby(&sync, &q("lag=32MB"), Sync, t).is_ok());
        let e = sync_standby(&sync, &q("lag=1MB"), Sync, t).unwrap_err();
        assert!(e.contains("replay lag"), "{e}");
        assert!(sync_standby(&sync, &q("replication_state=archive"), Sync, t).is_err());
        assert!(sync_standby(&sync, &q("lag_time=1s"), Sync, t).is_err());
        // The /replica rule comes first: a drained or stale synchronous standby fails.
        let mut drained = known(Ok(Some(SyncState::Sync)));
        drained.drained = Some(Drain {
            reason: "maintenance".into(),
            since: std::time::SystemTime::now(),
        });
        for check in [Sync, Quorum, Async] {
            let e = sync_standby(&drained, &q(""), check, t).unwrap_err();
            assert!(e.contains("maintenance"), "{e}");
        }
        let later = t + Duration::from_secs(6);
        assert!(
            sync_standby(&sync, &q(""), Sync, later)
                .unwrap_err()
                .contains("stale")
        );
        println!(
            "{} sync check cases, and 8 with parameters, drain or staleness",
            n
        );
    }

    /// The primary passes `/read-only-sync` and `/read-only-quorum` (whatever its parameters),
    /// never `/sync`, `/quorum` or `/async`; outside its window, or drained, it passes none.
    #[test]
    fn sync_checks_on_the_primary() {
        use SyncWanted::{Async, Quorum, Sync};
        let t = Instant::now();
        let mut primary = standby(t);
        primary.db.in_recovery = Some(false);
        primary.replication = None;
        primary.verdict = Verdict {
            state: State::Primary,
            reason: String::new(),
            window: Some(Window {
                from: t,
                until: t + Duration::from_secs(3),
            }),
        };
        for want in [Sync, Quorum] {
            assert_eq!(read_only_sync(&primary, &q("lag=0"), want, t), Ok(()));
            let after = t + Duration::from_secs(4);
            assert!(read_only_sync(&primary, &q(""), want, after).is_err());
        }
        for want in [Sync, Quorum, Async] {
            let e = sync_standby(&primary, &q(""), want, t).unwrap_err();
            assert!(e.contains("not a replica"), "{e}");
        }
        primary.drained = Some(Drain {
            reason: "maintenance".into(),
            since: std::time::SystemTime::now(),
        });
        assert!(read_only_sync(&primary, &q(""), Sync, t).is_err());
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
