//! A primary whose database goes away between two polls is not served as 200 from the snapshot
//! observed before.
//!
//! Every demotion of a PostgreSQL primary restarts its postmaster, and repmgr can restart a
//! demoted primary as a standby within a few hundred milliseconds (measured in
//! `tests/leases.rs`'s switchover): quicker than one poll. The server ends every session when it
//! stops, so the daemon counts the session it loses and withholds the snapshot observed before
//! that instant at once (503 "session lost"), then observes again.
//!
//! Lab: the standard cluster, daemons polling every 2 s, so a stop right after a cycle falls
//! well inside one poll; node1's `/state` is sampled every 10 ms.

mod common;

use std::time::{Duration, Instant};

use common::Fleet;
use common::sampler::Sampler;
use primgr_lab::{Lab, LabSpec, StopMode};

/// Long enough that a stop and a second of downtime fit between two polls.
const INTERVAL: Duration = Duration::from_secs(2);
/// The lease must outlast the longest healthy gap between two renewals (`--check-config`'s
/// rule): 2 s interval + 1 s `db_timeout` + 0.5 s `peer_timeout` < 4 s·(1−ρ)/(1+ρ).
const VOTE_LEASE: Duration = Duration::from_secs(4);
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_between_two_polls_is_down_at_once() {
    let lab = Lab::build(LabSpec::standard(87)).await.expect("lab builds");
    let fleet = slow_fleet(&lab).await;
    let settle = settle();
    fleet
        .wait_codes(
            &[
                ("node1", 200),
                ("node2", 202),
                ("node3", 202),
                ("node4", 202),
            ],
            settle,
        )
        .await;

    let (t0, sampler) = right_after_a_cycle(&fleet).await;
    let stop_began = t0.elapsed();
    lab.stop("node1", StopMode::Fast).await.expect("stop node1");
    let stopped = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart_began = t0.elapsed();
    lab.start("node1").await.expect("start node1");
    let back = fleet.wait_codes(&[("node1", 200)], settle).await;
    let samples = sampler.stop();

    // While the database was down (from the end of `pg_ctl stop` to the start of `pg_ctl
    // start`), no sample may be a 200.
    let down: Vec<_> = samples
        .iter()
        .filter(|s| s.at >= stopped && s.at + s.latency <= restart_began)
        .collect();
    let lies = down.iter().filter(|s| s.status == Some(200)).count();
    let first_not_200 = samples
        .iter()
        .find(|s| s.at >= stop_began && s.status != Some(200))
        .map(|s| s.at.saturating_sub(stop_began));
    let (_, status) = fleet.json("node1", "/status").await;
    let closed = status["database"]["sessions_closed_by_server"]
        .as_u64()
        .unwrap_or(0);
    let metrics = fleet.get("node1", "/metrics").await.expect("/metrics").body;
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("primgr_database_sessions_closed_total "))
        .map(str::to_string);
    assert_eq!(
        counted,
        Some(closed.to_string()),
        "/metrics and /status disagree"
    );
    println!(
        "database stopped between two polls (interval {INTERVAL:?}): pg_ctl stop took {:?}; \
         {} samples while it was down, {lies} of them 200; first non-200 {:?} after the stop \
         began; sessions the server closed: {closed}; 200 again {:?} after pg_ctl start returned",
        stopped - stop_began,
        down.len(),
        first_not_200,
        back,
    );
    assert!(
        down.len() >= 50,
        "too few samples while down: {}",
        down.len()
    );
    assert_eq!(lies, 0, "a stopped database was served as Primary");
    assert!(closed >= 1, "the daemon did not see its session closed");
    let first = first_not_200.expect("node1 never left 200");
    assert!(
        first <= stopped - stop_began + Duration::from_millis(200),
        "node1 left 200 only {first:?} after the stop began (pg_ctl stop took {:?})",
        stopped - stop_began
    );
    lab.teardown().await.expect("teardown");
}

/// The two halves, each on its own: (a) a healthy primary whose session an administrator ends
/// (`pg_terminate_backend`) answers 200 again after one early poll, not after a whole interval
/// (the lost session wakes the poller); (b) when the new observation is slow (the postmaster
/// frozen, so a new connection waits for `db_timeout`), the snapshot observed before is still
/// withheld from the instant the session ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_withholds_the_snapshot_and_wakes_the_poller() {
    let lab = Lab::build(LabSpec::standard(88)).await.expect("lab builds");
    let fleet = slow_fleet(&lab).await;
    let settle = settle();
    fleet.wait_codes(&[("node1", 200)], settle).await;
    // An administrator's session, opened while the postmaster still accepts one.
    let (admin, conn) = tokio_postgres::connect(&lab.conninfo("node1"), tokio_postgres::NoTls)
        .await
        .expect("admin session");
    tokio::spawn(conn);
    let end_primgr_sessions = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                               WHERE application_name = 'primgr'";

    // (a) The next regular poll is about 2 s away.
    let (t0, sampler) = right_after_a_cycle(&fleet).await;
    let ended_at = t0.elapsed();
    admin
        .execute(end_primgr_sessions, &[])
        .await
        .expect("terminate");
    fleet.wait_codes(&[("node1", 200)], INTERVAL).await;
    let back_at = t0.elapsed();
    let samples = sampler.stop();
    let blip: Vec<_> = samples
        .iter()
        .filter(|s| s.at >= ended_at && s.status != Some(200))
        .collect();
    let blip_span = blip
        .last()
        .map(|s| s.at + s.latency - ended_at)
        .unwrap_or_default();
    println!(
        "(a) primgr's session ended by an administrator on a healthy primary: {} non-200 samples \
         over {blip_span:?} (interval {INTERVAL:?}); 200 again {:?} after the terminate",
        blip.len(),
        back_at - ended_at
    );
    assert!(
        back_at - ended_at < Duration::from_millis(600),
        "the early poll did not come: 200 again only {:?} after the session ended",
        back_at - ended_at
    );

    // (b) The postmaster frozen first: the woken poll cannot connect until `db_timeout`. First
    // the pool's session must be back (the early poll opens it).
    let count_primgr = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'primgr' \
                        AND state = 'idle'";
    let pooled = Instant::now();
    while admin
        .query_one(count_primgr, &[])
        .await
        .expect("count sessions")
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            pooled.elapsed() < INTERVAL * 2,
            "primgr's pooled session never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (t0, sampler) = sample_node1(&fleet);
    lab.freeze_postmaster("node1").await.expect("SIGSTOP");
    let ended = admin
        .query_one(end_primgr_sessions, &[])
        .await
        .expect("terminate")
        .get::<_, i64>(0);
    let ended_at = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let thawed_at = t0.elapsed();
    lab.thaw("node1").await.expect("SIGCONT");
    fleet.wait_codes(&[("node1", 200)], settle).await;
    let samples = sampler.stop();
    // The backend exits and its socket closes just after `pg_terminate_backend` returns.
    let grace = Duration::from_millis(20);
    let after: Vec<_> = samples
        .iter()
        .filter(|s| s.at >= ended_at + grace && s.at + s.latency <= thawed_at)
        .collect();
    let lies = after.iter().filter(|s| s.status == Some(200)).count();
    println!(
        "(b) postmaster frozen, {ended} primgr session(s) ended: {} samples from {grace:?} after \
         the terminate to the thaw, {lies} of them 200",
        after.len()
    );
    assert!(ended >= 1, "no primgr session to end");
    assert!(after.len() >= 50, "too few samples: {}", after.len());
    assert_eq!(
        lies, 0,
        "the snapshot observed before the session ended was served"
    );
    lab.teardown().await.expect("teardown");
}

/// A daemon per node of `lab`, polling every [`INTERVAL`].
async fn slow_fleet(lab: &Lab) -> Fleet {
    Fleet::start_with(lab, |_, c| {
        c.timing.interval = INTERVAL;
        c.leases.vote_lease = VOTE_LEASE;
        c.timing.max_staleness =
            primgr::Config::default_max_staleness(INTERVAL, c.db.db_timeout, c.timing.peer_timeout);
    })
    .await
}

/// How long the slow fleet may take to settle: the voters abstain for `vote_lease` after
/// they start, then the handoff, then a poll or two.
fn settle() -> Duration {
    VOTE_LEASE + Duration::from_secs(3) + INTERVAL * 3
}

/// Waits until node1's daemon has just published a cycle (so that its next poll is about
/// [`INTERVAL`] away), then samples its `/state` ([`sample_node1`]).
async fn right_after_a_cycle(fleet: &Fleet) -> (Instant, Sampler) {
    let (_, before) = fleet.json("node1", "/status").await;
    let observed = before["observed_at"].clone();
    fleet
        .wait_json("node1", "/status", INTERVAL * 2, |s| {
            s["observed_at"] != observed
        })
        .await;
    sample_node1(fleet)
}

/// Samples node1's `/state` every [`SAMPLE_EVERY`] from now (`t0`).
fn sample_node1(fleet: &Fleet) -> (Instant, Sampler) {
    let t0 = Instant::now();
    let sampler = Sampler::start(
        t0,
        vec![fleet.addr("node1")],
        "/state",
        SAMPLE_EVERY,
        Duration::from_secs(1),
    );
    (t0, sampler)
}
