//! End-to-end test of the lab itself on a real 4-node cluster, and a second lab at the same
//! time on another subnet (each test's subnet from `primgr_lab::SUBNETS`, shifted by
//! `PRIMGR_LAB_SUBNET_SHIFT`). Must run as root.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::{Clock, iptables_s, metadata_primary, teardown_leaves_nothing, write_fake_daemon};
use primgr_lab::{Lab, LabSpec, PG_PORT, StopMode, subnet_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_lifecycle() -> Result<()> {
    let mut c = Clock::start();
    let lab = Lab::build(LabSpec::standard(subnet_of("lab/lab::lab_lifecycle"))).await?;
    c.lap("build 4-node lab");
    for (step, d) in lab.timings() {
        println!("    {step:<41} {:>6.2}s", d.as_secs_f64());
    }
    let dir = lab.dir().to_path_buf();
    let subnet = primgr_lab::lab_subnet(subnet_of("lab/lab::lab_lifecycle"))?;
    assert_eq!(lab.subnet(), subnet);
    assert_eq!(dir, primgr_lab::default_dir(subnet));
    assert_eq!(lab.addr("node3").to_string(), format!("127.0.{subnet}.13"));
    assert_eq!(
        lab.conninfo("node4"),
        format!("host=127.0.{subnet}.14 port=5432 dbname=repmgr user=repmgr")
    );

    ensure!(!lab.in_recovery("node1").await?, "node1 must be primary");
    for n in ["node2", "node3", "node4"] {
        let upstream = lab.upstream_of(n).await?;
        ensure!(
            upstream.as_deref() == Some("node1"),
            "{n} streams from {upstream:?}"
        );
    }
    assert_eq!(metadata_primary(&lab, "node3").await?, "node1");
    assert_eq!(
        lab.psql(
            "node3",
            "SELECT node_name || ':' || location FROM repmgr.nodes ORDER BY node_id"
        )
        .await?,
        "node1:dc1\nnode2:dc1\nnode3:dc1\nnode4:dc2"
    );
    // repmgr.nodes conninfo as the daemons will see it.
    println!(
        "    conninfo of node2 in repmgr.nodes: {}",
        lab.psql(
            "node1",
            "SELECT conninfo FROM repmgr.nodes WHERE node_name = 'node2'"
        )
        .await?
    );
    c.lap("checks after build");

    lab.stop("node1", StopMode::Immediate).await?;
    ensure!(!lab.is_running("node1"));
    c.lap("stop node1 immediate");
    lab.promote("node2").await?;
    c.lap("promote node2");
    lab.follow("node3").await?;
    c.lap("follow node3");
    lab.follow("node4").await?;
    c.lap("follow node4");
    assert_eq!(metadata_primary(&lab, "node3").await?, "node2");
    assert_eq!(metadata_primary(&lab, "node4").await?, "node2");

    lab.start("node1").await?;
    c.lap("start node1 (split brain)");
    ensure!(!lab.in_recovery("node1").await?, "node1 must be read-write");
    assert_eq!(metadata_primary(&lab, "node1").await?, "node1");

    lab.rejoin("node1", "node2").await?;
    c.lap("rejoin node1 to node2");
    assert_eq!(metadata_primary(&lab, "node1").await?, "node2");
    // node1 streams from node2, and so do the others.
    for n in ["node1", "node3", "node4"] {
        assert_eq!(lab.upstream_of(n).await?.as_deref(), Some("node2"), "{n}");
    }
    // node.conf survived the rewind
    assert_eq!(
        lab.psql("node1", "SHOW listen_addresses").await?,
        lab.addr("node1").to_string()
    );

    lab.freeze("node2").await?;
    ensure!(lab.is_frozen("node2"));
    let t = Instant::now();
    let r = lab
        .psql_timeout("node2", "SELECT 1", Duration::from_secs(2))
        .await;
    ensure!(r.is_err(), "psql on frozen node2 must fail, got {r:?}");
    ensure!(t.elapsed() < Duration::from_secs(4), "timeout not honoured");
    c.lap("freeze node2 + failing psql");
    lab.thaw("node2").await?;
    assert_eq!(lab.psql("node2", "SELECT 1").await?, "1");
    c.lap("thaw node2");

    lab.freeze_postmaster("node3").await?;
    ensure!(
        lab.psql_timeout("node3", "SELECT 1", Duration::from_secs(2))
            .await
            .is_err()
    );
    lab.thaw("node3").await?;
    assert_eq!(lab.psql("node3", "SELECT 1").await?, "1");
    c.lap("freeze_postmaster node3 + thaw");

    lab.cut("node1", "node2").await?;
    let chain = primgr_lab::chain_name(subnet);
    let (a1, a2, a3) = (lab.addr("node1"), lab.addr("node2"), lab.addr("node3"));
    let rules = iptables_s()?;
    println!(
        "    {}",
        rules
            .lines()
            .filter(|l| l.contains(&chain))
            .collect::<Vec<_>>()
            .join("\n    ")
    );
    ensure!(rules.contains(&format!("-A {chain} -s {a1}/32 -d {a2}/32 -j DROP")));
    ensure!(rules.contains(&format!("-A {chain} -s {a2}/32 -d {a1}/32 -j DROP")));
    ensure!(rules.contains(&format!("-A INPUT -j {chain}")));
    ensure!(rules.contains(&format!("-A OUTPUT -j {chain}")));
    assert_eq!(lab.firewall_rules().await?.len(), 3);
    // A connection bound to node1's address towards node2's postgres now times out.
    let node2_pg = SocketAddr::from((a2, PG_PORT));
    ensure!(
        !connects_from(a1, node2_pg).await?,
        "cut node1 -> node2 must block"
    );
    ensure!(connects_from(a3, node2_pg).await?);
    c.lap("cut node1<->node2");
    lab.heal("node1", "node2").await?;
    let rules = iptables_s()?;
    ensure!(!rules.contains(&format!("{a1}/32")), "rules left: {rules}");
    c.lap("heal node1<->node2");
    lab.cut("node3", "node4").await?;
    lab.heal_all().await?;
    ensure!(!iptables_s()?.contains(&format!("{a3}/32")));

    teardown_leaves_nothing(lab).await?;
    c.lap("teardown");
    Ok(())
}

/// Whether a TCP connect from a bound source address succeeds within 1 s.
async fn connects_from(src: Ipv4Addr, dst: SocketAddr) -> Result<bool> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    Ok(matches!(
        tokio::time::timeout(Duration::from_secs(1), sock.connect(dst)).await,
        Ok(Ok(_))
    ))
}

/// Rejoin of a crashed (never restarted) old primary, daemon processes, and a lab dropped
/// without teardown (as in a panicking test) being cleaned up by Drop, while another lab runs
/// at the same time on another subnet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_rejoin_daemons_and_drop() -> Result<()> {
    let mut c = Clock::start();
    let spec = LabSpec::new(
        subnet_of("lab/lab::crash_rejoin_daemons_and_drop"),
        vec![
            primgr_lab::NodeSpec::new("a1", "dc1"),
            primgr_lab::NodeSpec::new("a2", "dc2"),
        ],
    );
    let lab = Lab::build(spec).await?;
    c.lap("[2-node lab] build 2-node lab");
    let subnet = primgr_lab::lab_subnet(subnet_of("lab/lab::crash_rejoin_daemons_and_drop"))?;
    assert_eq!(lab.addr("a2"), primgr_lab::node_address(subnet, 2));
    ensure!(lab.in_recovery("a2").await?);
    assert_eq!(lab.location("a2")?, "dc2");

    lab.stop("a1", StopMode::Immediate).await?;
    lab.promote("a2").await?;
    c.lap("[2-node lab] crash a1, promote a2");
    lab.rejoin("a1", "a2").await?;
    c.lap("[2-node lab] rejoin crashed a1 to a2");
    assert_eq!(lab.upstream_of("a1").await?.as_deref(), Some("a2"));
    assert_eq!(metadata_primary(&lab, "a1").await?, "a2");

    let fake = write_fake_daemon(lab.dir(), Duration::ZERO)?;
    let mut daemons = Vec::new();
    for n in ["a1", "a2"] {
        daemons.push(lab.daemon(n, &fake)?.args(["--interval", "1s"]).spawn()?);
    }
    for d in &mut daemons {
        d.ready(Duration::from_secs(5)).await?;
    }
    let r = primgr_lab::http::get(lab.daemon_addr("a1"), "/state", Duration::from_secs(1)).await?;
    assert_eq!((r.status, r.body.as_str()), (202, "Standby"));
    let r = primgr_lab::http::get_from(
        Some(lab.addr("a2").into()),
        lab.daemon_addr("a1"),
        "/state",
        Duration::from_secs(1),
    )
    .await?;
    assert_eq!(r.status, 202);
    daemons[0].stop().await;
    ensure!(!daemons[0].running() && daemons[1].running());
    daemons[0] = lab.daemon("a1", &fake)?.spawn()?;
    daemons[0].ready(Duration::from_secs(5)).await?;
    c.lap("[2-node lab] fake daemons");

    lab.cut("a1", "a2").await?;
    ensure!(
        primgr_lab::http::get_from(
            Some(lab.addr("a2").into()),
            lab.daemon_addr("a1"),
            "/state",
            Duration::from_secs(1),
        )
        .await
        .is_err(),
        "cut must block a2 -> a1"
    );
    lab.freeze("a1").await?;
    let dir = lab.dir().to_path_buf();
    // The daemons' handles are lost, as a crashed test's would be: the lab finds its daemons
    // through their pid files.
    std::mem::forget(daemons);
    drop(lab);
    c.lap("[2-node lab] drop (frozen, cut, daemons running)");
    ensure!(!dir.exists());
    ensure!(!iptables_s()?.contains(&primgr_lab::chain_name(subnet)));
    ensure!(primgr_lab::postgres_processes_in(&dir).is_empty());
    let socats = std::process::Command::new("pgrep")
        .args(["-f", &format!("bind=127.0.{subnet}.")])
        .output()?;
    ensure!(
        socats.stdout.is_empty(),
        "fake daemons left: {}",
        String::from_utf8_lossy(&socats.stdout)
    );
    Ok(())
}
