//! `repmgr standby switchover --siblings-follow` in a real lab (its subnet from
//! `primgr_lab::SUBNETS`, shifted by `PRIMGR_LAB_SUBNET_SHIFT`), through the lab's fake `ssh`: afterwards node2 is the primary,
//! the old primary node1 is a streaming standby of node2, node3 and node4 follow node2, and
//! every node's `repmgr.nodes` names node2. Must run as root.

mod common;

use anyhow::{Result, ensure};
use common::{Clock, metadata_primary, teardown_leaves_nothing};
use primgr_lab::{Lab, LabSpec, subnet_of};

/// The names of the `/tmp/node-rejoin.*.log` files there are now.
fn rejoin_logs() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("node-rejoin.") && n.ends_with(".log"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_to_node2_with_siblings_following() -> Result<()> {
    let mut c = Clock::start();
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "lab/switchover::switchover_to_node2_with_siblings_following",
    )))
    .await?;
    c.lap("build 4 nodes");

    // The fake ssh serves the lab's node addresses only.
    let ssh = lab.fake_ssh()?;
    let run = |host: &str| {
        std::process::Command::new(&ssh)
            .args(["-o", "Batchmode=yes", "-q", host, "echo", "reached"])
            .output()
    };
    let out = run(&format!("postgres@{}", lab.addr("node3")))?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "reached");
    let out = run("10.0.0.1")?;
    assert_eq!(
        out.status.code(),
        Some(255),
        "a host outside the lab is refused"
    );

    let logs_before = rejoin_logs();
    lab.switchover("node2").await?;
    c.lap("repmgr standby switchover --siblings-follow (node2)");

    ensure!(!lab.in_recovery("node2").await?, "node2 is the primary");
    for n in ["node1", "node3", "node4"] {
        assert_eq!(
            lab.upstream_of(n).await?.as_deref(),
            Some("node2"),
            "{n} streams from node2"
        );
    }
    for n in lab.node_names() {
        assert_eq!(metadata_primary(&lab, &n).await?, "node2", "on {n}");
        assert_eq!(
            lab.psql(
                &n,
                "SELECT type || ':' || upstream_node_id FROM repmgr.nodes WHERE node_name = 'node1'"
            )
            .await?,
            "standby:2",
            "node1's row on {n}"
        );
    }
    // node1 is still itself after the rejoin (node.conf kept).
    assert_eq!(
        lab.psql("node1", "SHOW listen_addresses").await?,
        lab.addr("node1").to_string()
    );
    let written: Vec<String> = rejoin_logs()
        .into_iter()
        .filter(|l| !logs_before.contains(l))
        .collect();
    println!("    rejoin logs repmgr wrote: {written:?}");
    c.lap("checks after the switchover");

    teardown_leaves_nothing(lab).await?;
    for l in &written {
        ensure!(
            !std::path::Path::new("/tmp").join(l).exists(),
            "/tmp/{l} left behind"
        );
    }
    c.lap("teardown");
    Ok(())
}
