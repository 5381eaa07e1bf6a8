//! A repmgr witness in a real lab (its subnet from `primgr_lab::SUBNETS`, shifted by
//! `PRIMGR_LAB_SUBNET_SHIFT`): the
//! standard four nodes plus a witness at its own site, as repmgr and PostgreSQL see it; then
//! daemons started in phases (node1 at t, node3 at t + 100 ms, the witness at t + 300 ms), as a
//! test that places start-up races needs them. Must run as root.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::{Clock, teardown_leaves_nothing, write_fake_daemon};
use primgr_lab::{Lab, LabSpec, procfs, subnet_of};
use tokio::time::{Instant, sleep_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_node_and_daemons_in_phases() -> Result<()> {
    let mut c = Clock::start();
    let lab = Lab::build(
        LabSpec::standard(subnet_of("lab/witness::witness_node_and_daemons_in_phases"))
            .with_witness("witness", "dc3"),
    )
    .await?;
    c.lap("build 4 nodes + witness");
    assert_eq!(
        lab.node_names(),
        ["node1", "node2", "node3", "node4", "witness"]
    );
    assert_eq!(lab.data_nodes(), ["node1", "node2", "node3", "node4"]);
    assert_eq!(lab.witness(), Some("witness"));
    assert_eq!(
        lab.addr("witness"),
        primgr_lab::node_address(lab.subnet(), 5),
        "the next node slot"
    );

    // repmgr's view, on the primary, a standby (replicated) and the witness (its own copy).
    for on in ["node1", "node3", "witness"] {
        assert_eq!(
            lab.psql(
                on,
                "SELECT node_id || '|' || type || '|' || location || '|' || active \
                 FROM repmgr.nodes WHERE node_name = 'witness'"
            )
            .await?,
            "5|witness|dc3|true",
            "the witness's row on {on}"
        );
        assert_eq!(
            lab.psql(on, "SELECT count(*) FROM repmgr.nodes WHERE active")
                .await?,
            "5",
            "{on}"
        );
        assert_eq!(lab.primary_in_metadata(on).await?.as_deref(), Some("node1"));
    }
    // PostgreSQL's view: never in recovery, its own initdb (another system identifier than
    // the cluster's clones), not a replication peer of the primary.
    ensure!(
        !lab.in_recovery("witness").await?,
        "a witness is never in recovery"
    );
    let sysid = "SELECT system_identifier FROM pg_control_system()";
    let (primary, standby, witness) = (
        lab.psql("node1", sysid).await?,
        lab.psql("node2", sysid).await?,
        lab.psql("witness", sysid).await?,
    );
    assert_eq!(primary, standby, "a standby is a clone");
    ensure!(witness != primary, "the witness has its own initdb");
    assert_eq!(
        lab.psql(
            "node1",
            "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication"
        )
        .await?,
        "node2,node3,node4"
    );
    assert_eq!(
        lab.psql("witness", "SHOW listen_addresses").await?,
        lab.addr("witness").to_string()
    );
    c.lap("checks of the witness");

    // Daemons in phases. The fake daemon listens only 1 s after it starts: spawn must return
    // without waiting for it, or the phases could not be placed.
    let fake = write_fake_daemon(lab.dir(), Duration::from_secs(1))?;
    let phases = [
        ("node1", Duration::ZERO),
        ("node3", Duration::from_millis(100)),
        ("witness", Duration::from_millis(300)),
    ];
    let t = Instant::now() + Duration::from_millis(50);
    let mut started = Vec::new();
    let mut daemons = Vec::new();
    for (node, offset) in phases {
        sleep_until(t + offset).await;
        let before = Instant::now();
        let daemon = lab.daemon(node, &fake)?.spawn()?;
        let took = before.elapsed();
        let pid = daemon.pid().expect("spawned daemon runs");
        println!(
            "    spawn of {node}'s daemon at t + {:>3} ms returned in {:.2} ms",
            offset.as_millis(),
            took.as_secs_f64() * 1e3
        );
        ensure!(
            took < Duration::from_millis(250),
            "spawning {node}'s daemon took {took:?}: it must not wait for readiness"
        );
        started.push((node, offset, procfs::start_time(pid)?));
        daemons.push(daemon);
    }
    // The processes started in the planned phases (start times have 10 ms resolution).
    let t0 = started[0].2;
    for (node, offset, at) in &started[1..] {
        let after = at.saturating_sub(t0);
        println!(
            "    {node} started {} ms after node1 (planned {} ms)",
            after.as_millis(),
            offset.as_millis()
        );
        ensure!(
            after + Duration::from_millis(20) >= *offset
                && after <= *offset + Duration::from_millis(200),
            "{node} started {after:?} after node1, planned {offset:?}"
        );
    }
    for daemon in &mut daemons {
        daemon.ready(Duration::from_secs(10)).await?;
    }
    let r =
        primgr_lab::http::get(lab.daemon_addr("witness"), "/state", Duration::from_secs(1)).await?;
    assert_eq!(r.status, 202, "the witness's daemon answers on its address");
    c.lap("daemons in phases, witness included");

    teardown_leaves_nothing(lab).await?;
    c.lap("teardown");
    Ok(())
}
