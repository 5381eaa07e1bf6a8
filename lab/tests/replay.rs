//! Paused replay and WAL written on purpose in a real lab (its subnet from
//! `primgr_lab::SUBNETS`, shifted by `PRIMGR_LAB_SUBNET_SHIFT`): node2's replay paused while node1 writes about 48 MB of WAL;
//! node2 keeps receiving (its receive position reaches the primary's) while its replay position
//! stays where it paused, node3 replays everything, and node2 catches up once resumed. Must run
//! as root.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{Clock, teardown_leaves_nothing};
use primgr_lab::{Lab, LabSpec, subnet_of, wait};

const MIB: f64 = 1024.0 * 1024.0;

/// Waits until the standby's `what` position (receive or replay) reaches `target`.
async fn wait_position(lab: &Lab, node: &str, what: &str, target: u64) -> Result<Duration> {
    wait::wait_for(
        &format!("{node} {what} position at {target}"),
        Duration::from_secs(60),
        || async {
            let at = match what {
                "receive" => lab.receive_lsn(node).await?,
                _ => lab.replay_lsn(node).await?,
            };
            Ok(at.is_some_and(|at| at >= target))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replay_keeps_receiving_and_catches_up() -> Result<()> {
    let mut c = Clock::start();
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "lab/replay::paused_replay_keeps_receiving_and_catches_up",
    )))
    .await?;
    c.lap("build 4 nodes");
    ensure!(
        lab.receive_lsn("node1").await?.is_none(),
        "a primary has no receive position"
    );
    let start = lab.current_wal_lsn("node1").await?;

    lab.pause_replay("node2").await?;
    ensure!(lab.replay_paused("node2").await?);
    ensure!(!lab.replay_paused("node3").await?);
    let paused_at = lab.replay_lsn("node2").await?.context("node2 replays")?;
    c.lap("pause replay on node2");

    let written = lab.write_wal("node1", 48).await?;
    let took = c.lap("write 48 MB of WAL on node1");
    let target = lab.current_wal_lsn("node1").await?;
    ensure!(
        target - start >= written,
        "the position moved by what was written"
    );
    println!(
        "    {:.1} MB of WAL in {:.1} s ({:.0} MB/s)",
        written as f64 / MIB,
        took.as_secs_f64(),
        written as f64 / MIB / took.as_secs_f64()
    );
    ensure!(written >= 48 * 1024 * 1024);

    let received = wait_position(&lab, "node2", "receive", target).await?;
    let replayed3 = wait_position(&lab, "node3", "replay", target).await?;
    println!(
        "    node2 received up to the primary's position {received:?} after the write, node3 \
         replayed it {replayed3:?} after"
    );
    let still = lab.replay_lsn("node2").await?.context("node2 replays")?;
    assert_eq!(still, paused_at, "node2's replay did not move while paused");
    let behind = target - still;
    ensure!(
        behind >= written,
        "node2's replay is behind by all that was written ({behind} bytes)"
    );
    println!(
        "    node2 paused: received all, replay {:.1} MB behind",
        behind as f64 / MIB
    );
    c.lap("positions while paused");

    lab.resume_replay("node2").await?;
    ensure!(!lab.replay_paused("node2").await?);
    let caught_up = wait_position(&lab, "node2", "replay", target).await?;
    println!(
        "    node2 replayed the {:.1} MB {caught_up:?} after resuming",
        behind as f64 / MIB
    );
    assert!(lab.is_streaming("node2").await?);
    c.lap("resume replay on node2");

    teardown_leaves_nothing(lab).await?;
    c.lap("teardown");
    Ok(())
}
