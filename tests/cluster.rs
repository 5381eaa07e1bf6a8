//! The daemon against a real four-node repmgr cluster (node1–3 in dc1, node4 in dc2), with a
//! primgr per node bound to the node's own address: what haproxy and an operator would see in
//! normal operation, failover, split brain, rejoin, a stopped standby and a frozen database.

mod common;

use std::time::{Duration, Instant};

use common::{DB_TIMEOUT, Fleet, INTERVAL, settle_bound};
use primgr::wire::VoteScope;
use primgr_lab::{Lab, LabSpec, StopMode, subnet_of};
use serde_json::json;

async fn assert_everyone_names(fleet: &Fleet, nodes: &[&str], primary: &str) {
    for node in nodes {
        // `/primary` names whom the local metadata names, and the node that says so.
        let (code, body) = fleet.json(node, "/primary").await;
        assert_eq!(
            (code, body),
            (200, json!({ "Primary": primary, "node": node })),
            "{node} /primary"
        );
        let (code, body) = fleet.json(node, "/realPrimary").await;
        assert_eq!(
            (code, body),
            (200, json!({ "realPrimary": primary })),
            "{node} /realPrimary"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_failover_split_brain_and_rejoin() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "cluster::normal_failover_split_brain_and_rejoin",
    )))
    .await
    .expect("lab builds");
    let fleet = Fleet::start(&lab).await;
    let all = ["node1", "node2", "node3", "node4"];

    // 1. Normal: node1 is the confirmed primary, everyone else a standby, and all agree.
    fleet.wait_normal().await;
    for (node, state) in [
        ("node1", "Primary"),
        ("node2", "Standby"),
        ("node4", "Standby"),
    ] {
        let (_, body) = fleet.json(node, "/state").await;
        assert_eq!(body, json!({ "state": state }), "{node}");
        let (_, root) = fleet.json(node, "/").await;
        assert_eq!(root, body, "{node}: / and /state agree");
    }
    assert_everyone_names(&fleet, &all, "node1").await;
    // Once every standby has polled, all of dc1 votes for node1.
    let status = fleet
        .wait_json("node1", "/status", settle_bound(), |s| s["votes"] == 3)
        .await;
    assert_eq!(status["votes_needed"], 2, "{status}");
    assert_eq!(status["site"], "dc1", "{status}");

    // 2. Failover: node1 dies, node2 is promoted, node3 and node4 follow it.
    // node2 needs a majority of dc1: node3 names it once it follows node2 and replicates
    // node2's metadata. Until then node2 is Unknown (509), never 200 without votes.
    let stopped = Instant::now();
    lab.failover("node1", "node2").await.expect("failover");
    let failed_over = stopped.elapsed();
    fleet.wait_codes(&[("node2", 200)], settle_bound()).await;
    let t_node2 = stopped.elapsed();
    fleet.wait_after_failover().await;
    println!(
        "failover: node1 stopped -> node2 answers 200 after {t_node2:?} \
         (of which {failed_over:?} to stop node1, promote node2 and have node3 and node4 follow)"
    );
    assert_eq!(
        fleet.json("node1", "/state").await.1,
        json!({ "state": "Down" })
    );
    assert_eq!(
        fleet.json("node1", "/primary").await,
        (
            503,
            json!({ "Primary": null, "state": "Down", "node": "node1" })
        )
    );
    // Every live daemon, node1's included (its database is down, its daemon is not).
    assert_everyone_names(&fleet, &["node2", "node3", "node4"], "node2").await;
    assert_eq!(
        fleet.json("node1", "/realPrimary").await,
        (200, json!({ "realPrimary": "node2" }))
    );

    // 3. Split brain: node1 comes back read-write without rejoin. It still names itself, its
    // site names node2: it must never answer 200, and node2 stays the only primary.
    lab.start("node1").await.expect("start node1");
    assert_eq!(
        lab.psql("node1", "SELECT pg_is_in_recovery()")
            .await
            .unwrap(),
        "f"
    );
    let started = Instant::now();
    let mut samples = 0;
    loop {
        let codes = fleet.codes().await;
        samples += 1;
        assert_ne!(
            codes["node1"], 200,
            "stale primary node1 answered 200: {codes:?}"
        );
        assert_eq!(
            codes["node2"], 200,
            "node2 lost its 200 during split brain: {codes:?}"
        );
        if codes["node1"] == 509 && started.elapsed() > INTERVAL * 4 {
            break;
        }
        assert!(
            started.elapsed() < settle_bound() * 2,
            "node1 never became 509: {codes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "split brain: node1 answers 509 ({} samples, none 200) within {:?} of its start",
        samples,
        started.elapsed()
    );
    assert_eq!(
        fleet.json("node1", "/primary").await,
        (200, json!({ "Primary": "node1", "node": "node1" })),
        "node1's own frozen metadata still names itself"
    );
    let (_, status) = fleet.json("node1", "/status").await;
    assert_eq!(
        (status["votes"].clone(), status["votes_needed"].clone()),
        (json!(1), json!(2)),
        "{status}"
    );
    for node in all {
        assert_eq!(
            fleet.json(node, "/realPrimary").await,
            (200, json!({ "realPrimary": "node2" })),
            "{node} /realPrimary during split brain"
        );
    }

    // 4. node1 rejoins as a standby of node2.
    lab.rejoin("node1", "node2").await.expect("rejoin node1");
    fleet
        .wait_codes(
            &[
                ("node1", 202),
                ("node2", 200),
                ("node3", 202),
                ("node4", 202),
            ],
            settle_bound(),
        )
        .await;
    assert_everyone_names(&fleet, &all, "node2").await;

    lab.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_standby_and_frozen_primary() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "cluster::stopped_standby_and_frozen_primary",
    )))
    .await
    .expect("lab builds");
    let fleet = Fleet::start(&lab).await;
    fleet.wait_normal().await;

    // 5. A standby's PostgreSQL stops: its daemon keeps answering, 503; the primary keeps its
    // majority (2 of 3); restarted, the standby answers 202 again.
    lab.stop("node3", StopMode::Fast).await.expect("stop node3");
    let t = fleet
        .wait_codes(
            &[("node3", 503)],
            DB_TIMEOUT + INTERVAL * 2 + Duration::from_secs(1),
        )
        .await;
    println!("standby stopped -> 503 after {t:?}");
    assert_eq!(
        fleet.json("node3", "/state").await,
        (503, json!({ "state": "Down" }))
    );
    assert_eq!(
        fleet.codes().await["node1"],
        200,
        "node1 keeps 2 of 3 votes"
    );
    lab.start("node3").await.expect("start node3");
    let t = fleet.wait_codes(&[("node3", 202)], settle_bound()).await;
    println!("standby restarted -> 202 after {t:?}");

    // 6. The primary's database freezes (postmaster and every backend stopped): the daemon
    // must stop saying 200 within db_timeout + interval, and answer in milliseconds meanwhile.
    lab.freeze("node1").await.expect("freeze node1");
    let frozen = Instant::now();
    let bound = DB_TIMEOUT + INTERVAL + Duration::from_millis(500);
    let mut worst = Duration::ZERO;
    let mut down_after = None;
    while frozen.elapsed() < bound + Duration::from_secs(2) {
        let t0 = Instant::now();
        let r = fleet
            .get("node1", "/state")
            .await
            .expect("daemon answers while its database is frozen");
        worst = worst.max(t0.elapsed());
        if r.status == 503 && down_after.is_none() {
            down_after = Some(frozen.elapsed());
        }
        if down_after.is_some() {
            assert_eq!(r.status, 503, "a frozen database came back as {}", r.status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let down_after = down_after.expect("frozen primary never answered 503");
    println!("frozen primary -> 503 after {down_after:?}; slowest /state meanwhile {worst:?}");
    assert!(
        down_after <= bound,
        "503 took {down_after:?}, bound {bound:?}"
    );
    assert!(
        worst < Duration::from_millis(100),
        "a /state took {worst:?} while the database was frozen"
    );
    let (_, status) = fleet.json("node1", "/status").await;
    assert!(
        status["database"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("did not answer"),
        "{status}"
    );
    lab.thaw("node1").await.expect("thaw node1");
    let t = fleet.wait_codes(&[("node1", 200)], settle_bound()).await;
    println!("thawed primary -> 200 after {t:?}");

    lab.teardown().await.expect("teardown");
}

/// `vote_scope = "cluster"` on node1–3 (dc1) and, to see a mismatch, `site` on node4 (dc2):
/// node1 holds a majority of the whole cluster (3 of 4: dc1's three; node4 refuses a candidate
/// of the other scope and says why), and `/status`, `/metrics`, `/realPrimary` and
/// `primgr cluster` show the scope and the votes by site as an operator reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scope_status_metrics_real_primary_and_cluster_view() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "cluster::cluster_scope_status_metrics_real_primary_and_cluster_view",
    )))
    .await
    .expect("lab builds");
    let fleet = Fleet::start_with(&lab, |node, c| {
        if node != "node4" {
            c.leases.scope = VoteScope::Cluster;
        }
    })
    .await;
    fleet.wait_normal().await;
    let status = fleet
        .wait_json("node1", "/status", settle_bound(), |s| s["votes"] == 3)
        .await;
    assert_eq!(status["vote_scope"], "cluster", "{status}");
    assert_eq!(status["votes_needed"], 3, "a majority of 4: {status}");
    assert_eq!(
        status["votes_by_site"],
        json!([
            {"members": 3, "site": "dc1", "voters": ["node1", "node2", "node3"], "votes": 3},
            {"members": 1, "site": "dc2", "voters": [], "votes": 0}
        ]),
        "{status}"
    );
    let node4 = status["voters"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "node4"))
        .cloned()
        .unwrap_or_default();
    let why = node4["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("vote_scope") && why.contains("not counted"),
        "{node4}"
    );
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("nodes of the cluster (dc1 3/3, dc2 0/1)"),
        "{status}"
    );
    let (_, standby) = fleet.json("node4", "/status").await;
    assert_eq!(standby["vote_scope"], "site", "{standby}");

    let metrics = fleet.get("node1", "/metrics").await.expect("metrics").body;
    for line in [
        "primgr_vote_scope{scope=\"cluster\"} 1",
        "primgr_site_votes{site=\"dc1\"} 3",
        "primgr_site_votes{site=\"dc2\"} 0",
        "primgr_site_members{site=\"dc2\"} 1",
    ] {
        assert!(metrics.contains(&format!("{line}\n")), "{line}:\n{metrics}");
    }

    let (code, real) = fleet.json("node2", "/realPrimary").await;
    assert_eq!(code, 200, "{real}");
    assert_eq!(real["realPrimary"], "node1");
    assert_eq!(real["scope"], "cluster");
    assert_eq!(
        real["sites"],
        json!([
            {"site": "dc1", "nodes": {"node1": "Primary", "node2": "Standby", "node3": "Standby"}},
            {"site": "dc2", "nodes": {"node4": "Standby"}}
        ])
    );
    let (_, site) = fleet.json("node4", "/realPrimary").await;
    assert_eq!(
        site,
        json!({"realPrimary": "node1"}),
        "site scope: as before"
    );

    let url = format!("http://{}", fleet.addr("node1"))
        .parse()
        .expect("url");
    let report = primgr::cluster::gather(&url, Duration::from_secs(3)).await;
    let text = report.render();
    println!("{text}");
    assert!(
        text.contains("Votes of node1 by site: dc1 3/3, dc2 0/1\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "do not share one vote_scope (cluster on node1, node2, node3; site on node4)"
        ),
        "{text}"
    );
    assert_eq!(report.exit_code(), 0, "{text}");
    lab.teardown().await.expect("teardown");
}
