//! Never two primaries, on a real cluster: the race the vote leases close, directly and
//! through haproxy, a planned switchover and repmgrd's automatic failover through haproxy, a
//! restart of the healthy primary's daemon, and a healthy primary that never drops its 200.
//!
//! The race (measured on the code before the leases: node1 kept answering 200 for 697 ms after
//! node2 began to): a partial partition cuts replication and repmgr to node1 (the `postgres` OS
//! user cannot reach node1:5432) while every daemon still reaches node1's database and every
//! other daemon; node2 is promoted while node1 runs read-write; then node3 follows node2. The
//! daemons run with `--interval 1s --db-timeout 1s --peer-timeout 500ms`, started with the
//! phases of the issue: node3 0.1 s and node2 0.3 s after node1.
//!
//! What is checked, on every sample, without any excused sample: node2's first 200 comes at
//! least `handoff_delay` after node1's last 200 (an overlap is a negative gap); node1 stops
//! answering 200 within `vote_lease + interval` of the last voter moving; node2 answers 200
//! within `vote_lease + handoff_delay + 2 × interval` of it. Through haproxy: no write lands on
//! node1 after the first one landed on node2. Each test takes its lab subnet from
//! `primgr_lab::SUBNETS`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::clients::{Attempt, address_book, sample_every, shipped};
use common::sampler::{Sample, Sampler, two_hundreds};
use common::{Daemon, Fleet, settle_bound};
use primgr::Config;
use primgr_lab::haproxy::{Haproxy, WRITE};
use primgr_lab::{Lab, LabSpec, StopMode, subnet_of};

const PRIMGR: &str = env!("CARGO_BIN_EXE_primgr");
/// The timings.
const INTERVAL: Duration = Duration::from_secs(1);
const DB_TIMEOUT: Duration = Duration::from_secs(1);
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// Health checks of the direct scenario: every 10 ms per node.
const PERIOD: Duration = Duration::from_millis(10);
/// Write connections through haproxy: one every 20 ms.
const WRITE_EVERY: Duration = Duration::from_millis(20);

/// The defaults the daemons run with (`vote_lease`, `handoff_delay`, ρ).
fn defaults() -> Config {
    Config::for_node("any").expect("defaults")
}

fn daemon_args() -> Vec<String> {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    vec![
        "--interval".into(),
        d(INTERVAL),
        "--db-timeout".into(),
        d(DB_TIMEOUT),
        "--peer-timeout".into(),
        d(PEER_TIMEOUT),
    ]
}

/// The daemon of `node` as a process of this build with the timings, spawned.
fn spawn_daemon(lab: &Lab, node: &str) -> Daemon {
    lab.daemon(node, PRIMGR)
        .and_then(|d| d.args(daemon_args()).spawn())
        .unwrap_or_else(|e| panic!("spawn {node}: {e:#}"))
}

/// Starts every daemon as a process, node1 first, node3 0.1 s and node2 0.3 s after it
/// (node4 with node1), and waits until node1 is the confirmed primary; returns the daemons.
async fn start_with_phases(lab: &Lab) -> BTreeMap<String, Daemon> {
    let t0 = tokio::time::Instant::now();
    let mut daemons = BTreeMap::new();
    for (node, at) in [("node1", 0), ("node4", 0), ("node3", 100), ("node2", 300)] {
        tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
        daemons.insert(node.to_string(), spawn_daemon(lab, node));
    }
    for d in daemons.values_mut() {
        d.wait_listening(Duration::from_secs(10)).await;
    }
    let bound = settle_bound() + INTERVAL * 2;
    let t = Instant::now();
    loop {
        let (code1, _) = common::json_at(lab.daemon_addr("node1"), "/state").await;
        let (code3, _) = common::json_at(lab.daemon_addr("node3"), "/state").await;
        if code1 == 200 && code3 == 202 {
            let since = tokio::time::Instant::now() - t0;
            println!("cold start: node1 answers 200 {since:?} after its daemon started");
            return daemons;
        }
        assert!(
            t.elapsed() < bound,
            "node1 never became the confirmed primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// haproxy with the shipped configuration, once its write pool is node1; and the write port.
async fn haproxy_writing_to_node1(lab: &Lab) -> (Haproxy, SocketAddr) {
    let hp = Haproxy::start(lab, &shipped()).await.expect("haproxy");
    hp.wait_up(WRITE, &["node1"], settle_bound())
        .await
        .expect("write pool: node1");
    let write = hp.listener(WRITE).expect("write listener");
    (hp, write)
}

/// The primgr binary of the switchover and repmgrd scenarios: `PRIMGR_COMPARE_BIN` when set
/// (to measure another build, e.g. the one before the leases, in the same lab), else this one.
fn scenario_bin() -> String {
    std::env::var("PRIMGR_COMPARE_BIN").unwrap_or_else(|_| PRIMGR.to_string())
}

/// Starts a daemon process per node from [`scenario_bin`] with the lab tests' timings
/// (`--interval 500ms --db-timeout 1s --peer-timeout 500ms`, flags every build knows) and
/// waits until node1 is the only 200; returns the daemons.
async fn start_processes(lab: &Lab) -> Vec<Daemon> {
    let bin = scenario_bin();
    let mut daemons = Vec::new();
    for node in lab.node_names() {
        let d = lab
            .daemon(&node, &bin)
            .and_then(|d| d.args(common::timing_flags()).spawn())
            .unwrap_or_else(|e| panic!("spawn {node}: {e:#}"));
        daemons.push(d);
    }
    let t = Instant::now();
    while codes(lab).await != [200, 202, 202, 202] {
        assert!(
            t.elapsed() < settle_bound() * 2,
            "never normal: {:?}",
            codes(lab).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("daemons: {bin}");
    daemons
}

/// Every node's `/state` code, in node order (0 when it did not answer).
async fn codes(lab: &Lab) -> Vec<u16> {
    let mut out = Vec::new();
    for node in lab.node_names() {
        let r =
            primgr_lab::http::get(lab.daemon_addr(&node), "/state", Duration::from_secs(1)).await;
        out.push(r.map(|r| r.status).unwrap_or(0));
    }
    out
}

/// The partial partition, the promotion of node2 and node3's follow; returns when node3's
/// follow ended (the last voter moved), as an instant.
async fn race(lab: &Lab) -> Instant {
    lab.cut_replication_to("node1")
        .await
        .expect("cut replication to node1");
    lab.promote("node2")
        .await
        .expect("repmgr standby promote node2");
    lab.follow("node3")
        .await
        .expect("repmgr standby follow node3");
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partial_partition_race_has_no_overlap() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "leases::the_partial_partition_race_has_no_overlap",
    )))
    .await
    .expect("lab builds");
    let _daemons = start_with_phases(&lab).await;
    let c = defaults();
    let t0 = Instant::now();
    let targets: Vec<SocketAddr> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| lab.daemon_addr(n))
        .collect();
    let sampler = Sampler::start(t0, targets, "/state", PERIOD, Duration::from_secs(1));
    let moved = race(&lab).await.duration_since(t0);
    // Until node2 answers 200 and node1 has stopped (bounded by the costs), then two
    // more seconds of watching.
    let failover_bound = c.leases.vote_lease + c.leases.handoff_delay + INTERVAL * 2;
    let t = Instant::now();
    loop {
        let s = sampler.samples();
        let new = two_hundreds(&s, 1);
        let old_last = two_hundreds(&s, 0).last().map(|x| x.0);
        if new
            .first()
            .is_some_and(|n| old_last.is_none_or(|o| o < n.0))
        {
            break;
        }
        assert!(
            t.elapsed() < failover_bound + Duration::from_secs(5),
            "node2 never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let watch_from = sampler.now();
    sampler
        .wait_samples(watch_from, 3 * 200, Duration::from_secs(10))
        .await;
    let samples = sampler.stop();

    let old = two_hundreds(&samples, 0);
    let new = two_hundreds(&samples, 1);
    let third = two_hundreds(&samples, 2);
    assert!(third.is_empty(), "node3 answered 200: {third:?}");
    let (Some(old_last), Some(new_first)) =
        (old.iter().map(|x| x.0).max(), new.first().map(|x| x.1))
    else {
        panic!("no 200 from node1 ({}) or node2 ({})", old.len(), new.len());
    };
    // Overlap, sample by sample: no 200 of node2 begins before a 200 of node1 ended.
    let overlapping = new
        .iter()
        .filter(|n| old.iter().any(|o| n.0 <= o.1))
        .count();
    let gap = new_first.saturating_sub(old_last);
    let failover = new_first.saturating_sub(moved);
    let old_stop = old_last.saturating_sub(moved);
    println!(
        "race: {} samples ({} per node every {PERIOD:?}); node1 200 in {} samples, node2 in {}; \
         overlapping samples: {overlapping}; node1's last 200 {:?} after the last voter moved, \
         node2's first 200 {failover:?} after it; gap {gap:?} (handoff_delay {:?})",
        samples.len(),
        samples.len() / 3,
        old.len(),
        new.len(),
        old_stop,
        c.leases.handoff_delay
    );
    assert_eq!(overlapping, 0, "two 200s at once");
    assert!(
        new_first >= old_last + c.leases.handoff_delay,
        "the handoff: node2's first 200 only {gap:?} after node1's last"
    );
    assert!(
        old_stop <= c.leases.vote_lease + INTERVAL,
        "node1 answered 200 {old_stop:?} after it lost its site (bound vote_lease + interval)"
    );
    assert!(
        failover <= failover_bound,
        "failover took {failover:?} (bound {failover_bound:?})"
    );
    lab.heal_replication_to("node1").await.expect("heal");
    lab.teardown().await.expect("teardown");
}

/// Write connections through `addr`, one every [`WRITE_EVERY`], until `done` holds (at least
/// `min`, at most `max`).
async fn writes(
    lab: &Lab,
    addr: SocketAddr,
    t0: Instant,
    min: Duration,
    max: Duration,
    done: impl Fn(&[Attempt]) -> bool,
) -> Vec<Attempt> {
    sample_every(WRITE_EVERY, addr, address_book(lab), t0, min, max, done).await
}

/// A write session that landed: node, started, answered at (since the test's start).
type Landed = (String, Duration, Duration);

/// Where writes landed: each session on a read-write node, and the failures. A session on a
/// standby fails the test.
fn landings(attempts: &[Attempt]) -> (Vec<Landed>, usize) {
    let (ok, on_standby, failed) = landings_and_standbys(attempts);
    if let Some(a) = on_standby.first() {
        panic!("a write connection reached a standby: {a:?}");
    }
    (ok, failed)
}

/// As [`landings`], with the sessions that reached a standby returned apart.
fn landings_and_standbys(attempts: &[Attempt]) -> (Vec<Landed>, Vec<Landed>, usize) {
    let mut ok = Vec::new();
    let mut on_standby = Vec::new();
    let mut failed = 0;
    for a in attempts {
        match &a.outcome {
            Ok(l) if !l.in_recovery => ok.push((l.node.clone(), a.started, a.at)),
            Ok(l) => on_standby.push((l.node.clone(), a.started, a.at)),
            Err(_) => failed += 1,
        }
    }
    (ok, on_standby, failed)
}

/// The longest time without a successful write between the first and the last attempt.
fn outage(ok: &[Landed]) -> Duration {
    ok.windows(2)
        .map(|w| w[1].2.saturating_sub(w[0].2))
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_haproxy_no_write_lands_on_the_old_primary_after_the_new() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "leases::through_haproxy_no_write_lands_on_the_old_primary_after_the_new",
    )))
    .await
    .expect("lab builds");
    let _daemons = start_with_phases(&lab).await;
    let (hp, write) = haproxy_writing_to_node1(&lab).await;
    let t0 = Instant::now();
    let sampling = writes(
        &lab,
        write,
        t0,
        Duration::ZERO,
        Duration::from_secs(60),
        |a| {
            // Until writes have landed on node2 for two seconds.
            let on_new: Vec<Duration> = a
                .iter()
                .filter(|a| a.outcome.as_ref().is_ok_and(|l| l.node == "node2"))
                .map(|a| a.at)
                .collect();
            on_new.first().is_some_and(|f| {
                on_new
                    .last()
                    .is_some_and(|l| *l >= *f + Duration::from_secs(2))
            })
        },
    );
    let (attempts, moved) = tokio::join!(sampling, async {
        // A second of writes on node1 first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        race(&lab).await.duration_since(t0)
    });
    let (ok, failed) = landings(&attempts);
    let first_new = ok
        .iter()
        .find(|l| l.0 == "node2")
        .map(|l| l.2)
        .expect("writes landed on node2");
    let on_old_after: Vec<_> = ok
        .iter()
        .filter(|l| l.0 == "node1" && l.2 >= first_new)
        .collect();
    let last_old = ok
        .iter()
        .filter(|l| l.0 == "node1")
        .map(|l| l.2)
        .max()
        .expect("writes landed on node1");
    println!(
        "through haproxy: {} write connections (one every {WRITE_EVERY:?}), {} on node1, {} on \
         node2, {failed} failed; last on node1 {:?} after the last voter moved, first on node2 \
         {:?} after it; write outage {:?}",
        attempts.len(),
        ok.iter().filter(|l| l.0 == "node1").count(),
        ok.iter().filter(|l| l.0 == "node2").count(),
        last_old.saturating_sub(moved),
        first_new.saturating_sub(moved),
        first_new.saturating_sub(last_old),
    );
    assert!(
        on_old_after.is_empty(),
        "writes landed on node1 after the first on node2: {on_old_after:?}"
    );
    drop(hp);
    lab.heal_replication_to("node1").await.expect("heal");
    lab.teardown().await.expect("teardown");
}

/// A restart of the healthy primary's daemon costs no write: its voters have named it all
/// along, so it needs no handoff, and haproxy (`fall 2`) does not take it out for one failed
/// check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_primarys_daemon_loses_no_write() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "leases::restarting_the_primarys_daemon_loses_no_write",
    )))
    .await
    .expect("lab builds");
    let mut daemons = start_with_phases(&lab).await;
    let (hp, write) = haproxy_writing_to_node1(&lab).await;
    let t0 = Instant::now();
    let window = Duration::from_secs(6);
    let (attempts, back) = tokio::join!(writes(&lab, write, t0, window, window, |_| true), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let node1 = daemons.get_mut("node1").expect("node1's daemon");
        node1.stop().await;
        *node1 = spawn_daemon(&lab, "node1");
        let restarted = Instant::now();
        let t = Instant::now();
        loop {
            if let Ok(r) =
                primgr_lab::http::get(lab.daemon_addr("node1"), "/state", Duration::from_secs(1))
                    .await
            {
                if r.status == 200 {
                    return restarted.elapsed();
                }
            }
            assert!(t.elapsed() < Duration::from_secs(4), "node1 not 200 again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (ok, failed) = landings(&attempts);
    println!(
        "primary's daemon restarted: 200 again {back:?} after the restart; {} writes, {failed} \
         failed, longest gap between writes {:?}",
        ok.len(),
        outage(&ok)
    );
    assert_eq!(failed, 0, "write connections failed across the restart");
    assert!(ok.iter().all(|l| l.0 == "node1"));
    assert!(
        back < defaults().leases.handoff_delay,
        "the restarted primary waited {back:?}: a continuing primary needs no handoff"
    );
    drop(hp);
    lab.teardown().await.expect("teardown");
}

/// A planned switchover (`repmgr standby switchover --siblings-follow`) through haproxy, with a
/// write connection every 20 ms: the write outage (the longest time without a successful write)
/// stays within 1.5 s of the 3.1 s measured before the leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_through_haproxy() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "leases::a_switchover_through_haproxy",
    )))
    .await
    .expect("lab builds");
    let _daemons = start_processes(&lab).await;
    let (hp, write) = haproxy_writing_to_node1(&lab).await;
    let t0 = Instant::now();
    // What node1's primgr says meanwhile, to compare with where the sessions land.
    let node1_state = Sampler::start(
        t0,
        vec![lab.daemon_addr("node1")],
        "/state",
        WRITE_EVERY,
        Duration::from_secs(1),
    );
    let (attempts, took) = tokio::join!(
        writes(
            &lab,
            write,
            t0,
            Duration::ZERO,
            Duration::from_secs(60),
            |a| {
                a.iter()
                    .rev()
                    .take(50)
                    .filter(|a| a.outcome.as_ref().is_ok_and(|l| l.node == "node2"))
                    .count()
                    == 50
            }
        ),
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let t = Instant::now();
            lab.switchover("node2").await.expect("switchover to node2");
            t.elapsed()
        }
    );
    // repmgr restarts node1 as a standby as soon as node2 is promoted, here within a few
    // hundred ms of stopping it: sooner than haproxy can take node1 out of the write pool
    // (`fall 2`: two failed checks, at least `fastinter` apart, whatever primgr answers). A
    // session opened in between reaches the standby and its writes fail (read-only); none lands
    // on a second read-write node. Counted and shown, not hidden.
    let (ok, on_standby, failed) = landings_and_standbys(&attempts);
    let gap = outage(&ok);
    // primgr itself never says Primary for node1 once a session has found node1 a standby
    // (before, its snapshot did until its next poll: the database restarted within one).
    let node1_state = node1_state.stop();
    let lies = on_standby.first().map_or(0, |first| {
        node1_state
            .iter()
            .filter(|s| s.at >= first.2 && s.status == Some(200))
            .count()
    });
    println!(
        "switchover: node1's /state sampled {} times; 200 after the first session found node1 \
         a standby: {lies}",
        node1_state.len()
    );
    assert_eq!(
        lies, 0,
        "primgr said Primary for node1 after it had become a standby"
    );
    let standby_window = match (on_standby.first(), on_standby.last()) {
        (Some(a), Some(b)) => format!(" answered from {:?} to {:?}", a.2, b.2),
        _ => String::new(),
    };
    println!(
        "switchover: repmgr took {took:?}; {} writes ({failed} failed); write outage {gap:?} \
         (before the leases: 3.1 s; target at most 4.6 s); sessions that reached node1 as a \
         standby before haproxy took it out: {}{standby_window}",
        ok.len(),
        on_standby.len()
    );
    assert!(
        on_standby.iter().all(|s| s.0 == "node1"),
        "a write session reached a standby other than the demoted node1: {on_standby:?}"
    );
    let first_new = ok
        .iter()
        .find(|l| l.0 == "node2")
        .map(|l| l.2)
        .expect("on node2");
    assert!(
        ok.iter().all(|l| l.0 != "node1" || l.2 < first_new),
        "a write landed on node1 after node2"
    );
    assert!(gap <= Duration::from_millis(4600), "write outage {gap:?}");
    drop(hp);
    lab.teardown().await.expect("teardown");
}

/// repmgrd's automatic failover (`reconnect_attempts=2`, `reconnect_interval=1`) through
/// haproxy: node1's database stops; repmgrd promotes a standby of dc1 and the others follow.
/// Measured: when the new primary answers 200 after node1's database stopped (5.9 s before
/// the leases), and the write outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repmgrd_failover_through_haproxy() {
    let lab = Lab::build(
        LabSpec::standard(subnet_of("leases::repmgrd_failover_through_haproxy")).with_repmgrd(),
    )
    .await
    .expect("lab builds");
    for node in lab.node_names() {
        lab.start_repmgrd(&node).await.expect("repmgrd");
    }
    let _daemons = start_processes(&lab).await;
    let (hp, write) = haproxy_writing_to_node1(&lab).await;
    let t0 = Instant::now();
    let stop_at = Duration::from_secs(1);
    let (attempts, new_primary) = tokio::join!(
        writes(
            &lab,
            write,
            t0,
            Duration::ZERO,
            Duration::from_secs(90),
            |a| {
                a.iter()
                    .rev()
                    .take(50)
                    .filter(|a| a.outcome.as_ref().is_ok_and(|l| l.node != "node1"))
                    .count()
                    == 50
            }
        ),
        async {
            tokio::time::sleep(stop_at).await;
            lab.stop("node1", StopMode::Immediate)
                .await
                .expect("stop node1");
            let t = Instant::now();
            loop {
                let codes = codes(&lab).await;
                let names = lab.node_names();
                if let Some(k) = (1..codes.len()).find(|&k| codes[k] == 200) {
                    return (names[k].clone(), t.elapsed());
                }
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "no new primary: {codes:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    );
    let (ok, failed) = landings(&attempts);
    println!(
        "repmgrd failover: {} answers 200 {:?} after node1's database stopped (before the \
         leases: 5.9 s); {} writes ({failed} failed); write outage {:?}",
        new_primary.0,
        new_primary.1,
        ok.len(),
        outage(&ok)
    );
    let first_new = ok
        .iter()
        .find(|l| l.0 != "node1")
        .map(|l| l.2)
        .expect("a new primary took writes");
    assert!(ok.iter().all(|l| l.0 != "node1" || l.2 < first_new));
    drop(hp);
    lab.teardown().await.expect("teardown");
}

/// A healthy primary never drops its 200: `PRIMGR_STEADY_SECS` seconds (default 30; the
/// closing note reports a 10-minute run) of `/state` every 50 ms on node1, every sample 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_primary_never_drops_a_200() {
    let secs: u64 = std::env::var("PRIMGR_STEADY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "leases::a_healthy_primary_never_drops_a_200",
    )))
    .await
    .expect("lab builds");
    let fleet = Fleet::start(&lab).await;
    fleet.wait_normal().await;
    let t0 = Instant::now();
    let sampler = Sampler::start(
        t0,
        vec![lab.daemon_addr("node1")],
        "/state",
        Duration::from_millis(50),
        Duration::from_secs(1),
    );
    sampler
        .wait_samples(
            Duration::ZERO,
            (secs * 20) as usize,
            Duration::from_secs(secs * 2 + 10),
        )
        .await;
    let samples = sampler.stop();
    let not_200: Vec<&Sample> = samples.iter().filter(|s| s.status != Some(200)).collect();
    println!(
        "steady: {} samples of node1's /state over {secs} s, {} not 200",
        samples.len(),
        not_200.len()
    );
    assert!(
        not_200.is_empty(),
        "the healthy primary dropped its 200: {:?}",
        &not_200[..not_200.len().min(5)]
    );
    lab.teardown().await.expect("teardown");
}
