//! repmgrd's automatic failover in a real lab (its subnet from `primgr_lab::SUBNETS`, shifted
//! by `PRIMGR_LAB_SUBNET_SHIFT`): the standard lab built for repmgrd, repmgrd on every node, the
//! primary stopped hard; repmgrd promotes a dc1 standby by itself and the others follow it,
//! as every survivor's `repmgr.nodes` says. Prints how long each part took. Must run as root.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Clock, metadata_primary, teardown_leaves_nothing};
use primgr_lab::{Lab, LabSpec, StopMode, subnet_of, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repmgrd_promotes_a_dc1_standby_and_the_others_follow() -> Result<()> {
    let mut c = Clock::start();
    let lab = Lab::build(
        LabSpec::standard(subnet_of(
            "lab/repmgrd::repmgrd_promotes_a_dc1_standby_and_the_others_follow",
        ))
        .with_repmgrd(),
    )
    .await?;
    c.lap("build 4 nodes for repmgrd");
    assert_eq!(
        lab.psql("node2", "SHOW shared_preload_libraries").await?,
        "repmgr"
    );
    for n in lab.node_names() {
        lab.start_repmgrd(&n).await?;
    }
    for n in lab.node_names() {
        let took = lab
            .wait_repmgrd_monitoring(&n, Duration::from_secs(60))
            .await?;
        println!("    repmgrd of {n} monitoring after {took:?}");
        ensure!(lab.repmgrd_running(&n));
    }
    c.lap("repmgrd on every node");

    lab.stop("node1", StopMode::Immediate).await?;
    let stopped = Instant::now();
    let survivors = ["node2", "node3", "node4"];
    // Some standby leaves recovery: repmgrd promoted it.
    let promoted = std::cell::Cell::new(None);
    let took = wait::wait_for(
        "a standby promoted by repmgrd",
        Duration::from_secs(90),
        || async {
            for n in survivors {
                if !lab.in_recovery(n).await? {
                    promoted.set(Some(n));
                    return Ok(true);
                }
            }
            Ok(false)
        },
    )
    .await?;
    let new = promoted.get().context("a promoted node")?;
    println!("    {new} promoted by repmgrd {took:?} after node1 stopped");
    assert_eq!(
        lab.location(new)?,
        "dc1",
        "repmgrd promotes a standby of node1's site"
    );
    // The others follow it, and every survivor's metadata names it.
    let others: Vec<&str> = survivors.into_iter().filter(|n| *n != new).collect();
    let followed = wait::wait_for(
        "the other standbys follow the new primary",
        Duration::from_secs(90),
        || async {
            for n in &others {
                if lab.upstream_of(n).await?.as_deref() != Some(new) {
                    return Ok(false);
                }
                if lab.primary_in_metadata(n).await?.as_deref() != Some(new) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    let total = stopped.elapsed();
    println!(
        "    {} follow {new} {:?} after node1 stopped (failover complete in {total:?})",
        others.join(" and "),
        took + followed
    );
    c.lap("automatic failover");
    let new_id = lab
        .psql(
            new,
            &format!("SELECT node_id FROM repmgr.nodes WHERE node_name = '{new}'"),
        )
        .await?;
    for n in survivors {
        assert_eq!(metadata_primary(&lab, n).await?, new, "{n}");
        let rows = lab
            .psql(
                n,
                "SELECT node_name || ':' || type || ':' || active || ':' \
                 || coalesce(upstream_node_id::text, '-') FROM repmgr.nodes ORDER BY node_id",
            )
            .await?;
        println!("    repmgr.nodes on {n}: {}", rows.replace('\n', ", "));
        for line in rows.lines() {
            let f: Vec<&str> = line.split(':').collect();
            match f[0] {
                "node1" => assert_eq!(&f[1..3], ["primary", "false"], "on {n}: {line}"),
                name if name == new => {
                    assert_eq!(&f[1..3], ["primary", "true"], "on {n}: {line}")
                }
                _ => assert_eq!(
                    &f[1..],
                    ["standby", "true", new_id.as_str()],
                    "on {n}: {line}"
                ),
            }
        }
    }
    let log = std::fs::read_to_string(lab.repmgrd_log(new)?)?;
    ensure!(
        log.contains("promot"),
        "{new}'s repmgrd log tells of the promotion:\n{log}"
    );

    teardown_leaves_nothing(lab).await?;
    c.lap("teardown (repmgrd stopped)");
    Ok(())
}
