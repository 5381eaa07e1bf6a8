//! The defects of the review issue that need a real cluster, each checked the way a user would
//! see it: a repmgr witness is a Witness (never Primary, never 509, never a second primary in
//! `/realPrimary` or `primgr cluster`), a standby promoted outside repmgr is not confirmed by
//! its own stale metadata, a vote counts once per voter however the addresses are set, and a
//! connection whose query was abandoned is closed, never reused. Each test takes its lab
//! subnet from `primgr_lab::SUBNETS`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Fleet, settle_bound};
use primgr::Config;
use primgr::db::{Db, DbError};
use primgr_lab::{Lab, LabSpec, NodeSpec, subnet_of};
use serde_json::{Value, json};

const PRIMGR: &str = env!("CARGO_BIN_EXE_primgr");

/// `primgr cluster --json` against the daemon of `node`: its document and exit status.
fn cluster_json(fleet: &Fleet, node: &str) -> (Value, i32) {
    let out = Command::new(PRIMGR)
        .args(["cluster", "--json", "--url", &fleet.addr(node).to_string()])
        .output()
        .expect("run primgr cluster");
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (doc, out.status.code().unwrap_or(-1))
}

/// Item 1, a witness in a site of its own (dc3), then a standby promoted outside repmgr in a
/// site of one (node4 in dc2). Before the fix both answered 200 (a node counted its own vote
/// whatever its metadata said), `/realPrimary` reported a split brain and `primgr cluster`
/// exited 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_and_a_promotion_outside_repmgr_are_never_primary() {
    let lab = Lab::build(
        LabSpec::standard(subnet_of(
            "defects_lab::a_witness_and_a_promotion_outside_repmgr_are_never_primary",
        ))
        .with_witness("witness", "dc3"),
    )
    .await
    .expect("lab builds");
    let witness_type = lab
        .psql(
            "witness",
            "SELECT type FROM repmgr.nodes WHERE node_name = 'witness'",
        )
        .await
        .expect("read the witness's own row");
    assert_eq!(witness_type, "witness");
    let fleet = Fleet::start(&lab).await;
    fleet.wait_normal().await;
    fleet.wait_codes(&[("witness", 503)], settle_bound()).await;

    // The witness: 503 {"state":"Witness"}, out of every pool, and said so.
    let mut checked = 0;
    for path in [
        "/state",
        "/read-write",
        "/replica",
        "/read-only",
        "/readiness",
    ] {
        let r = fleet.get("witness", path).await.expect("witness answers");
        assert_eq!(r.status, 503, "witness {path}: {}", r.body);
        checked += 1;
    }
    assert_eq!(
        fleet.json("witness", "/state").await.1,
        json!({"state": "Witness"})
    );
    let (_, status) = fleet.json("witness", "/status").await;
    assert_eq!(status["state"], "Witness", "{status}");
    for node in ["node1", "node2", "witness"] {
        let (code, body) = fleet.json(node, "/realPrimary").await;
        assert_eq!(
            (code, body),
            (
                200,
                json!({"realPrimary": "node1", "witnesses": ["witness"]})
            ),
            "{node} /realPrimary"
        );
    }
    let (doc, exit) = cluster_json(&fleet, "node2");
    assert_eq!(
        (exit, &doc["real_primary"]),
        (0, &json!("node1")),
        "{doc:#}"
    );
    let witness_row = doc["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|r| r["name"] == "witness"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(witness_row["state"], "Witness", "{doc:#}");
    println!("witness: {checked} endpoints answer 503; /realPrimary and primgr cluster name node1");

    // node4, alone in dc2, promoted with pg_ctl: writable, but its metadata names node1. It
    // must not confirm itself: 509, never 200, while node1 stays the one primary.
    lab.promote_outside_repmgr("node4")
        .await
        .expect("pg_ctl promote node4");
    let waited = fleet.wait_codes(&[("node4", 509)], settle_bound()).await;
    let (_, status) = fleet.json("node4", "/status").await;
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or("")
            .contains("its own metadata names node1"),
        "{status}"
    );
    // Watch it for a while: never a 200, and node1 keeps its own.
    let t0 = Instant::now();
    let mut samples = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        let codes = fleet.codes().await;
        assert_ne!(codes["node4"], 200, "node4 answered 200: {codes:?}");
        assert_eq!(codes["node1"], 200, "{codes:?}");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (doc, exit) = cluster_json(&fleet, "node1");
    assert_eq!(
        (exit, &doc["real_primary"]),
        (0, &json!("node1")),
        "{doc:#}"
    );
    println!(
        "pg_ctl promote node4: 509 after {waited:?}; {samples} samples over 3 s, none 200 from node4"
    );
    lab.teardown().await.expect("teardown");
}

/// Item 1, a witness that shares the primary's site (dc1): it votes (a site of 4, 3 needed),
/// and answers Witness, never 509, and is never shown as a node to fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_in_the_primarys_site_votes_and_is_a_witness() {
    let lab = Lab::build(
        LabSpec::standard(subnet_of(
            "defects_lab::a_witness_in_the_primarys_site_votes_and_is_a_witness",
        ))
        .with_witness("witness", "dc1"),
    )
    .await
    .expect("lab builds");
    let fleet = Fleet::start(&lab).await;
    fleet.wait_normal().await;
    fleet.wait_codes(&[("witness", 503)], settle_bound()).await;
    let status = fleet
        .wait_json("node1", "/status", settle_bound(), |s| s["votes"] == 4)
        .await;
    assert_eq!(status["votes_needed"], 3, "{status}");
    let (_, w) = fleet.json("witness", "/status").await;
    assert_eq!(
        (w["state"].as_str(), w["code"].as_u64()),
        (Some("Witness"), Some(503)),
        "{w}"
    );
    let (doc, exit) = cluster_json(&fleet, "witness");
    assert_eq!(exit, 0, "{doc:#}");
    assert_eq!(doc["primaries"], json!(["node1"]), "{doc:#}");
    lab.teardown().await.expect("teardown");
}

/// Item 2: a vote names its voter, and counts only as that voter's and never as this node's.
/// A site of five (3 votes needed): node1's `[peers]` points node3 and node4 at node2's daemon,
/// and node5 at node1's own daemon (an alias back to itself). Before the fix node1 counted
/// five votes; it holds two (its own and node2's) and is not Primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_counts_once_however_the_addresses_are_set() {
    let mut spec = LabSpec::standard(subnet_of(
        "defects_lab::a_vote_counts_once_however_the_addresses_are_set",
    ));
    spec.nodes = (1..=5)
        .map(|i| NodeSpec::new(format!("node{i}"), "dc1"))
        .collect();
    let lab = Lab::build(spec).await.expect("lab builds");
    let node2 = format!("http://{}", lab.daemon_addr("node2"));
    let node1 = format!("http://{}", lab.daemon_addr("node1"));
    let fleet = Fleet::start_with(&lab, |node, config: &mut Config| {
        if node == "node1" {
            for (voter, url) in [("node3", &node2), ("node4", &node2), ("node5", &node1)] {
                config
                    .peers
                    .insert(voter.into(), url.parse().expect("peer url"));
            }
        }
    })
    .await;
    // Let every daemon through its start-up abstention, then look at node1's ballot.
    let status = fleet
        .wait_json("node1", "/status", settle_bound(), |s| {
            s["voters"].as_array().is_some_and(|v| {
                v.iter()
                    .filter(|v| v["name"] == "node2")
                    .any(|v| v["vote"] == "node1")
            })
        })
        .await;
    let voters = status["voters"].as_array().cloned().unwrap_or_default();
    for v in &voters {
        let (name, error) = (
            v["name"].as_str().unwrap_or(""),
            v["error"].as_str().unwrap_or(""),
        );
        match name {
            "node2" => assert_eq!(v["vote"], "node1", "{v}"),
            // No vote, and the error names the daemon that really answered (with the lab's
            // key the answer's signed responder is checked first: "answered by \"node2\"").
            "node3" | "node4" => {
                assert!(v["vote"].is_null() && error.contains("\"node2\""), "{v}")
            }
            "node5" => assert!(v["vote"].is_null() && error.contains("\"node1\""), "{v}"),
            other => panic!("unexpected voter {other}: {v}"),
        }
    }
    // Watch node1 for a few cycles: never 200, never more than 2 votes.
    let t0 = Instant::now();
    let mut samples = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        let (code, s) = fleet.json("node1", "/status").await;
        assert_ne!(code, 200, "{s}");
        assert!(
            s["held_votes"].as_array().is_some_and(|h| h.len() <= 2),
            "{s}"
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "node1 with 4 addresses reaching 2 daemons: {samples} samples, none 200, 2 votes held"
    );
    lab.teardown().await.expect("teardown");
}

/// Item 7: a connection whose query was abandoned at `db_timeout` is closed, never handed out
/// again. The pooled session's backend is stopped (SIGSTOP) so that the query hangs; the
/// observation times out; once the backend runs again it must be gone (its client closed the
/// connection), and the next observation uses a new backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_abandoned_at_the_timeout_is_closed() {
    let lab = Lab::build(LabSpec {
        nodes: vec![NodeSpec::new("node1", "dc1")],
        ..LabSpec::standard(subnet_of(
            "defects_lab::a_connection_abandoned_at_the_timeout_is_closed",
        ))
    })
    .await
    .expect("lab builds");
    let app = "primgr-pool-test";
    let conninfo = format!("{} application_name={app}", lab.conninfo("node1"));
    let db = Db::new(&conninfo, 1, Duration::from_secs(1)).expect("pool");
    db.observe().await.expect("first observation");
    // The pooled session; the new-connection probe's sessions end at once.
    let backends = || async {
        lab.psql(
            "node1",
            &format!(
                "SELECT pid FROM pg_stat_activity WHERE application_name = '{app}' ORDER BY pid"
            ),
        )
        .await
        .expect("pg_stat_activity")
    };
    let t0 = Instant::now();
    let pooled = loop {
        let pids = backends().await;
        if pids.lines().count() == 1 {
            break pids;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "sessions: {pids}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid: i32 = pooled.trim().parse().expect("pid");
    signal(pid, "STOP");
    let t1 = Instant::now();
    let e = db
        .observe()
        .await
        .expect_err("the stopped session times out");
    assert!(matches!(e, DbError::Timeout(_)), "{e}");
    println!("abandoned after {:?}: {e}", t1.elapsed());
    signal(pid, "CONT");
    let t2 = Instant::now();
    loop {
        let pids = backends().await;
        if !pids.lines().any(|l| l.trim() == pid.to_string()) {
            break;
        }
        assert!(
            t2.elapsed() < Duration::from_secs(5),
            "backend {pid} of the abandoned connection is still connected: {pids}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("backend {pid} gone {:?} after it ran again", t2.elapsed());
    db.observe()
        .await
        .expect("the next observation, on a new connection");
    let pids = backends().await;
    assert!(!pids.contains(&pid.to_string()), "{pids}");
    lab.teardown().await.expect("teardown");
}

/// `kill -<sig> <pid>` (as root).
fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}
