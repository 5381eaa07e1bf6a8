//! A partial partition and a promotion outside repmgr in a real lab (its subnet from
//! `primgr_lab::SUBNETS`, shifted by `PRIMGR_LAB_SUBNET_SHIFT`). Must run as root.
//!
//! 1. `cut_replication_to(node1)`: the `postgres` OS user can no longer reach node1's database
//!    over TCP (WAL receivers, repmgr), root still can; `repmgr standby promote` on node3
//!    succeeds while node1 keeps running read-write, and `repmgr standby follow` moves node2
//!    and node4 to node3.
//! 2. `promote_outside_repmgr(node4)`: node4 is writable while its `repmgr.nodes` still names
//!    node3 as the primary and node4 as a standby.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::{Clock, iptables_s, metadata_primary, teardown_leaves_nothing};
use primgr_lab::{Lab, LabSpec, PG_BIN, PG_PORT, subnet_of, wait};

/// `SELECT 1` through TCP on `node` as the `postgres` OS user (what the WAL receivers and
/// repmgr do): whether it answered, and how long it took.
fn postgres_user_reaches(lab: &Lab, node: &str) -> Result<(bool, Duration)> {
    let t = std::time::Instant::now();
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{PG_BIN}/psql"), "-XAtq"])
        .arg(format!(
            "host={} port={PG_PORT} user=repmgr dbname=repmgr connect_timeout=3",
            lab.addr(node)
        ))
        .args(["-c", "SELECT 1"])
        .current_dir("/")
        .output()?;
    Ok((out.status.success(), t.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_partition_then_promotion_outside_repmgr() -> Result<()> {
    let mut c = Clock::start();
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "lab/partition::partial_partition_then_promotion_outside_repmgr",
    )))
    .await?;
    c.lap("build 4 nodes");

    // 1. The partial partition.
    lab.cut_replication_to("node1").await?;
    c.lap("cut replication to node1");
    let (chain, addr) = (
        primgr_lab::replication_chain_name(lab.subnet()),
        lab.addr("node1"),
    );
    let rules = iptables_s()?;
    ensure!(
        rules.contains(&format!("-A OUTPUT -j {chain}"))
            && !rules.contains(&format!("-A INPUT -j {chain}")),
        "the chain is hooked into OUTPUT only:\n{rules}"
    );
    let rule = rules
        .lines()
        .find(|l| l.starts_with(&format!("-A {chain} ")))
        .unwrap_or_default();
    for part in [
        format!("-d {addr}/32"),
        format!("--dport {PG_PORT}"),
        "-m owner --uid-owner".to_string(),
        "-j REJECT --reject-with tcp-reset".to_string(),
    ] {
        ensure!(rule.contains(&part), "{part:?} not in {rule:?}");
    }
    println!("    {rule}");
    let (reached, took) = postgres_user_reaches(&lab, "node1")?;
    ensure!(!reached, "the postgres user still reaches node1");
    println!("    postgres -> node1 over TCP refused after {took:?}");
    ensure!(postgres_user_reaches(&lab, "node2")?.0, "only node1 is cut");
    assert_eq!(
        lab.psql_tcp("node1", "SELECT 1").await?,
        "1",
        "root reaches node1 over TCP"
    );
    assert_eq!(
        lab.psql("node1", "SELECT 1").await?,
        "1",
        "the lab's psql (a unix socket) reaches node1"
    );
    // The existing replication connections were ended and cannot come back.
    let lost = wait::wait_for(
        "node2..node4 stop streaming",
        Duration::from_secs(30),
        || async {
            for n in ["node2", "node3", "node4"] {
                if lab.is_streaming(n).await? {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    println!("    standbys without a WAL receiver {lost:?} after the cut");
    assert_eq!(
        lab.psql("node1", "SELECT count(*) FROM pg_stat_replication")
            .await?,
        "0"
    );
    c.lap("checks of the cut");

    lab.promote("node3").await?;
    c.lap("repmgr standby promote node3 (node1 unreachable)");
    ensure!(
        !lab.in_recovery("node1").await?,
        "node1 keeps running read-write"
    );
    lab.psql("node1", "CREATE TABLE written_on_node1 (x int)")
        .await?;
    lab.psql("node3", "CREATE TABLE written_on_node3 (x int)")
        .await?;
    lab.follow("node2").await?;
    lab.follow("node4").await?;
    c.lap("repmgr standby follow node2, node4");
    for n in ["node2", "node4"] {
        assert_eq!(lab.upstream_of(n).await?.as_deref(), Some("node3"), "{n}");
        assert_eq!(
            lab.psql(n, "SELECT to_regclass('written_on_node3') IS NOT NULL")
                .await?,
            "t",
            "{n} has node3's writes"
        );
    }
    for n in ["node2", "node3", "node4"] {
        assert_eq!(metadata_primary(&lab, n).await?, "node3", "{n}");
    }
    assert_eq!(
        lab.psql(
            "node3",
            "SELECT node_name || ':' || type || ':' || active FROM repmgr.nodes \
             WHERE node_name IN ('node1', 'node3') ORDER BY node_id"
        )
        .await?,
        "node1:primary:false\nnode3:primary:true"
    );
    // node1's own metadata still names itself: a split brain the partition hides from repmgr.
    assert_eq!(metadata_primary(&lab, "node1").await?, "node1");
    lab.heal_replication_to("node1").await?;
    ensure!(
        !iptables_s()?.contains(&format!("-A {chain} ")),
        "the rule is gone"
    );
    ensure!(postgres_user_reaches(&lab, "node1")?.0);
    c.lap("heal");

    // 2. A promotion outside repmgr.
    lab.promote_outside_repmgr("node4").await?;
    c.lap("pg_ctl promote node4");
    ensure!(!lab.in_recovery("node4").await?);
    lab.psql("node4", "CREATE TABLE written_on_node4 (x int)")
        .await?;
    assert_eq!(metadata_primary(&lab, "node4").await?, "node3");
    assert_eq!(
        lab.psql(
            "node4",
            "SELECT type FROM repmgr.nodes WHERE node_name = 'node4'"
        )
        .await?,
        "standby",
        "node4's metadata still calls it a standby"
    );
    assert_eq!(lab.upstream_of("node4").await?, None);

    teardown_leaves_nothing(lab).await?;
    c.lap("teardown");
    Ok(())
}
