//! Synchronous standbys on a real cluster (node1 primary, node2 and node3 standbys, one site):
//! the sync checks as a user would curl them while the primary's `synchronous_standby_names`
//! changes (`FIRST 1 (node2)`, `ANY 1 (node2, node3)`), a synchronous standby that stops (the
//! primary moves `sync` to the other), what `/status`, `/wal` and `primgr cluster` say of each
//! standby; then through the real haproxy, a read pool checked with `/read-only-sync` that
//! sends no read to an asynchronous standby (sessions counted per node), also when the primary
//! moves `sync` from one standby to the other. Lab subnets come from `primgr_lab::SUBNETS`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::clients::{address_book, haproxy_settle, sample_every, shipped, tally};
use common::{Fleet, settle_bound};
use primgr_lab::haproxy::{Haproxy, READ};
use primgr_lab::{Lab, LabSpec, NodeSpec, StopMode, http, subnet_of};
use serde_json::Value;

const PRIMGR: &str = env!("CARGO_BIN_EXE_primgr");

/// node1 (the primary), node2 and node3, all in dc1.
fn three_nodes(subnet: u8) -> LabSpec {
    LabSpec::new(
        subnet,
        ["node1", "node2", "node3"]
            .into_iter()
            .map(|n| NodeSpec::new(n, "dc1"))
            .collect(),
    )
}

/// Status and body of `GET path` at `addr`.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = http::get(addr, path, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("GET {path} at {addr}: {e:#}"));
    (r.status, r.body)
}

/// Sets the primary's `synchronous_standby_names` and reloads it.
async fn set_sync_names(lab: &Lab, value: &str) {
    lab.psql(
        "node1",
        &format!("ALTER SYSTEM SET synchronous_standby_names = '{value}'"),
    )
    .await
    .expect("ALTER SYSTEM");
    lab.psql("node1", "SELECT pg_reload_conf()")
        .await
        .expect("reload");
}

/// The primary's own word: `application_name|sync_state` of each WAL sender.
async fn pg_sync_states(lab: &Lab) -> String {
    lab.psql(
        "node1",
        "SELECT string_agg(application_name || '=' || sync_state, ',' ORDER BY application_name) \
         FROM pg_stat_replication",
    )
    .await
    .expect("pg_stat_replication")
}

/// Waits (every 50 ms) until every `(node, path, code)` holds; returns how long it took.
async fn wait_codes(fleet: &Fleet, want: &[(&str, &str, u16)], within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let mut wrong = Vec::new();
        for (node, path, code) in want {
            let (got, body) = get(fleet.addr(node), path).await;
            if got != *code {
                wrong.push(format!("{node} {path}: {got} {body}"));
            }
        }
        if wrong.is_empty() {
            return t0.elapsed();
        }
        if t0.elapsed() > within {
            panic!("after {within:?}: {wrong:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts every `(node, path, code)` now; returns how many were checked.
async fn assert_codes(fleet: &Fleet, want: &[(&str, &str, u16)]) -> usize {
    for (node, path, code) in want {
        let (got, body) = get(fleet.addr(node), path).await;
        assert_eq!(got, *code, "{node} {path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
        if *code == 503 {
            assert!(
                v["reason"].is_string(),
                "{node} {path}: a 503 says why: {body}"
            );
        }
    }
    want.len()
}

/// The sync state each standby's `/status` reports.
async fn status_sync(fleet: &Fleet, node: &str) -> Value {
    fleet.json(node, "/status").await.1["replication"]["sync_state"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_checks_follow_the_primary() {
    let lab = Lab::build(three_nodes(subnet_of(
        "sync::sync_checks_follow_the_primary",
    )))
    .await
    .expect("lab builds");
    let fleet = Fleet::start(&lab).await;
    fleet
        .wait_codes(
            &[("node1", 200), ("node2", 202), ("node3", 202)],
            settle_bound(),
        )
        .await;
    let mut checked = 0;

    // 0. No synchronous standby: both standbys are asynchronous.
    wait_codes(
        &fleet,
        &[("node2", "/async", 200), ("node3", "/async", 200)],
        settle_bound(),
    )
    .await;
    checked += assert_codes(
        &fleet,
        &[
            ("node1", "/read-only-sync", 200),
            ("node1", "/read-only-quorum", 200),
            ("node1", "/sync", 503),
            ("node1", "/async", 503),
            ("node2", "/sync", 503),
            ("node2", "/read-only-sync", 503),
            ("node3", "/quorum", 503),
        ],
    )
    .await;

    // 1. FIRST 1 (node2): node2 is synchronous, node3 asynchronous.
    set_sync_names(&lab, "FIRST 1 (node2)").await;
    let took = wait_codes(
        &fleet,
        &[("node2", "/sync", 200), ("node3", "/async", 200)],
        settle_bound(),
    )
    .await;
    println!(
        "FIRST 1 (node2): the primary says {}; node2 /sync 200 {took:?} after the reload",
        pg_sync_states(&lab).await,
    );
    checked += assert_codes(
        &fleet,
        &[
            ("node2", "/sync", 200),
            ("node2", "/synchronous", 200),
            ("node2", "/read-only-sync", 200),
            ("node2", "/read-only-synchronous", 200),
            ("node2", "/sync?lag=16MB&replication_state=streaming", 200),
            ("node2", "/sync?lag=16MB&mode=write", 200),
            ("node2", "/sync?lag_time=1h", 200),
            ("node2", "/async", 503),
            ("node2", "/asynchronous", 503),
            ("node2", "/quorum", 503),
            ("node2", "/read-only-quorum", 503),
            ("node3", "/sync", 503),
            ("node3", "/read-only-sync", 503),
            ("node3", "/async", 200),
            ("node3", "/async?lag=16MB", 200),
            ("node3", "/quorum", 503),
            ("node1", "/read-only-sync", 200),
            ("node1", "/sync", 503),
            ("node2", "/replica", 200),
            ("node3", "/replica", 200),
        ],
    )
    .await;
    // HEAD and OPTIONS (haproxy's default check) answer the same, without a body.
    for method in ["HEAD", "OPTIONS"] {
        for (node, code) in [("node2", 200), ("node3", 503)] {
            let raw = format!("{method} /sync HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let bytes = http::exchange(
                None,
                fleet.addr(node),
                raw.as_bytes(),
                Duration::from_secs(2),
            )
            .await
            .expect("exchange");
            assert_eq!(
                http::status_code(&bytes),
                Some(code),
                "{method} /sync on {node}"
            );
            checked += 1;
        }
    }
    // The same parameters and 400s as /replica.
    for (path, why) in [
        ("/sync?lag=10mb", "unknown unit"),
        ("/async?lag=", "not a size"),
        ("/quorum?mode=replay", "neither"),
        ("/read-only-sync?lag=1MB&lag=2MB", "more than once"),
        ("/sync?tag_dc=east", "no node tags"),
        ("/read-only-quorum?lagg=1", "unknown parameter"),
    ] {
        let (code, body) = get(fleet.addr("node2"), path).await;
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains(why), "{path}: {body}");
        checked += 1;
    }
    // What the primary serves (/wal, /status) and what each standby learned (/status).
    let (code, wal) = fleet.json("node1", "/wal").await;
    assert_eq!(code, 200, "{wal}");
    let senders = |v: &Value| -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["name"].as_str().unwrap_or_default().to_string(),
                            s["sync_state"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    let want = vec![
        ("node2".to_string(), "sync".to_string()),
        ("node3".to_string(), "async".to_string()),
    ];
    assert_eq!(senders(&wal["standbys"]), want, "/wal: {wal}");
    let (_, st) = fleet.json("node1", "/status").await;
    assert_eq!(senders(&st["database"]["wal_senders"]), want, "{st}");
    assert_eq!(status_sync(&fleet, "node2").await, "sync");
    assert_eq!(status_sync(&fleet, "node3").await, "async");
    let out = std::process::Command::new(PRIMGR)
        .args(["cluster", "--url", &fleet.addr("node1").to_string()])
        .output()
        .expect("primgr cluster");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    println!("primgr cluster with FIRST 1 (node2):\n{table}");
    let sync_cell = |node: &str| {
        table
            .lines()
            .find(|l| l.split('|').next().map(str::trim) == Some(node))
            .and_then(|l| l.split('|').nth(6))
            .map(|c| c.trim().to_string())
            .unwrap_or_default()
    };
    assert!(
        table.lines().next().is_some_and(|h| h.contains("Sync")),
        "{table}"
    );
    assert_eq!(
        [sync_cell("node1"), sync_cell("node2"), sync_cell("node3")],
        ["-", "sync", "async"],
        "{table}"
    );
    checked += 4;

    // 2. ANY 1 (node2, node3): both are quorum standbys.
    set_sync_names(&lab, "ANY 1 (node2, node3)").await;
    let took = wait_codes(
        &fleet,
        &[("node2", "/quorum", 200), ("node3", "/quorum", 200)],
        settle_bound(),
    )
    .await;
    println!(
        "ANY 1 (node2, node3): the primary says {}; both /quorum 200 after {took:?}",
        pg_sync_states(&lab).await
    );
    checked += assert_codes(
        &fleet,
        &[
            ("node2", "/quorum", 200),
            ("node3", "/quorum", 200),
            ("node2", "/read-only-quorum", 200),
            ("node3", "/read-only-quorum?lag=16MB", 200),
            ("node1", "/read-only-quorum", 200),
            ("node2", "/sync", 503),
            ("node3", "/sync", 503),
            ("node2", "/async", 503),
            ("node3", "/async", 503),
            ("node3", "/read-only-sync", 503),
        ],
    )
    .await;
    assert_eq!(status_sync(&fleet, "node3").await, "quorum");

    // 3. FIRST 1 (node2, node3): node2 is synchronous, node3 potential (asynchronous for the
    // checks). node2 stops: the primary makes node3 synchronous, and node3's /sync follows.
    set_sync_names(&lab, "FIRST 1 (node2, node3)").await;
    wait_codes(
        &fleet,
        &[("node2", "/sync", 200), ("node3", "/async", 200)],
        settle_bound(),
    )
    .await;
    assert_eq!(status_sync(&fleet, "node3").await, "potential");
    checked += assert_codes(&fleet, &[("node3", "/sync", 503)]).await;
    lab.stop("node2", StopMode::Fast).await.expect("stop node2");
    let stopped = Instant::now();
    let took = wait_codes(
        &fleet,
        &[("node3", "/sync", 200), ("node2", "/sync", 503)],
        settle_bound(),
    )
    .await;
    println!(
        "node2 stopped: the primary says {}; node3 /sync 200 {took:?} after the stop",
        pg_sync_states(&lab).await
    );
    checked += assert_codes(
        &fleet,
        &[
            ("node3", "/sync", 200),
            ("node3", "/read-only-sync", 200),
            ("node3", "/async", 503),
            ("node2", "/sync", 503),
            ("node2", "/async", 503),
            ("node2", "/read-only-sync", 503),
        ],
    )
    .await;
    assert!(stopped.elapsed() < settle_bound() + Duration::from_secs(5));

    // 4. The primary's daemon stops answering: the standby's sync state becomes unknown within
    // max_staleness, and every sync check fails (it is neither sync nor async).
    let mut fleet = fleet;
    let node1 = fleet.daemons.get_mut("node1").expect("node1's daemon");
    node1.stop().await;
    let dropped = Instant::now();
    let took = wait_codes(
        &fleet,
        &[
            ("node3", "/sync", 503),
            ("node3", "/async", 503),
            ("node3", "/read-only-sync", 503),
        ],
        settle_bound(),
    )
    .await;
    let (_, st) = fleet.json("node3", "/status").await;
    let unknown = st["replication"]["sync_unknown"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(st["replication"]["sync_state"].is_null(), "{st}");
    assert!(unknown.contains("max_staleness"), "{st}");
    let (code, body) = get(fleet.addr("node3"), "/replica").await;
    assert_eq!(code, 200, "/replica needs no sync state: {body}");
    println!(
        "node1's daemon stopped: node3's sync checks 503 {took:?} after ({:?} since the stop): {unknown}",
        dropped.elapsed()
    );
    checked += 4;
    println!("{checked} checks of the sync endpoints, /wal, /status and primgr cluster");
    lab.teardown().await.expect("teardown");
}

/// haproxy's read pool checked with `/read-only-sync`: the primary and the synchronous standby
/// take reads, the asynchronous one none, also after the primary moves `sync` to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_read_only_sync_pool_skips_asynchronous_standbys() {
    let lab = Lab::build(three_nodes(subnet_of(
        "sync::haproxy_read_only_sync_pool_skips_asynchronous_standbys",
    )))
    .await
    .expect("lab builds");
    let fleet = Fleet::start(&lab).await;
    fleet
        .wait_codes(
            &[("node1", 200), ("node2", 202), ("node3", 202)],
            settle_bound(),
        )
        .await;
    set_sync_names(&lab, "FIRST 1 (node2)").await;
    wait_codes(
        &fleet,
        &[
            ("node2", "/read-only-sync", 200),
            ("node3", "/read-only-sync", 503),
        ],
        settle_bound(),
    )
    .await;
    // The shipped configuration, its read check on /read-only-sync instead of /replica?lag=16MB.
    let shipped = shipped();
    let check = "http-check send meth GET uri /replica?lag=16MB";
    assert!(shipped.contains(check), "the shipped read check changed");
    let config = shipped.replace(check, "http-check send meth GET uri /read-only-sync");
    let hp = Haproxy::start(&lab, &config).await.expect("haproxy");
    hp.wait_up(READ, &["node1", "node2"], haproxy_settle() + settle_bound())
        .await
        .expect("read pool: the primary and node2");
    let read = hp.listener(READ).expect("read listener");
    let book = address_book(&lab);

    // 1. Steady: sessions land on node1 and node2, never on node3.
    let t0 = Instant::now();
    let attempts = sample_every(
        Duration::from_millis(25),
        read,
        book.clone(),
        t0,
        Duration::from_secs(4),
        Duration::from_secs(4),
        |_| true,
    )
    .await;
    let (on, failed) = tally(&attempts);
    println!(
        "FIRST 1 (node2), read pool on /read-only-sync: sessions per node {on:?}, {failed} failed"
    );
    assert_eq!(
        on.get("node3"),
        None,
        "a read landed on the asynchronous node3"
    );
    assert!(on.get("node1").is_some_and(|n| *n > 10), "{on:?}");
    assert!(on.get("node2").is_some_and(|n| *n > 10), "{on:?}");
    assert_eq!(failed, 0);

    // 2. The primary moves `sync` to node3 while reads keep coming: node2 leaves the pool
    // once its daemon and haproxy have seen it (the window is measured), node3 joins; after
    // that window no read lands on node2.
    let t0 = Instant::now();
    let switch = Duration::from_secs(1);
    let sampling = {
        let book = book.clone();
        tokio::spawn(async move {
            sample_every(
                Duration::from_millis(25),
                read,
                book,
                t0,
                Duration::from_secs(14),
                Duration::from_secs(14),
                |_| true,
            )
            .await
        })
    };
    tokio::time::sleep_until((t0 + switch).into()).await;
    set_sync_names(&lab, "FIRST 1 (node3)").await;
    let switched = t0.elapsed();
    let attempts = sampling.await.expect("sampling");
    // primgr's side: node1 sees the change in its next cycle, node2 learns it in its next
    // one; then haproxy's two failed checks (haproxy_settle has slack for a loaded machine).
    let bound = common::INTERVAL * 2 + common::DB_TIMEOUT + common::PEER_TIMEOUT + haproxy_settle();
    let after = |a: &&common::clients::Attempt| a.started >= switched + bound;
    let late: Vec<_> = attempts.iter().filter(after).collect();
    let mut late_on = std::collections::BTreeMap::new();
    for a in &late {
        if let Ok(l) = &a.outcome {
            *late_on.entry(l.node.clone()).or_insert(0usize) += 1;
        }
    }
    let late_failed = late.iter().filter(|a| a.outcome.is_err()).count();
    let last_on_node2 = attempts
        .iter()
        .filter(|a| a.outcome.as_ref().is_ok_and(|l| l.node == "node2"))
        .map(|a| a.started)
        .max();
    let (on, failed) = tally(&attempts);
    let why: Vec<&String> = attempts
        .iter()
        .filter_map(|a| a.outcome.as_ref().err())
        .collect();
    println!(
        "sync moved from node2 to node3 at {switched:?} ({}): sessions per node {on:?}, {failed} \
         failed {why:?}; last session on node2 started {:?} after the switch; from {bound:?} \
         after it: {late_on:?}, {late_failed} failed",
        pg_sync_states(&lab).await,
        last_on_node2.map(|t| t.saturating_sub(switched)),
    );
    assert!(late.len() > 50, "sampled after the window: {}", late.len());
    assert!(
        last_on_node2.is_some_and(|t| t < switched + bound),
        "node2 took reads until {last_on_node2:?}"
    );
    assert_eq!(
        late_on.get("node2"),
        None,
        "reads on node2 after it became asynchronous"
    );
    assert!(late_on.get("node3").is_some_and(|n| *n > 10), "{late_on:?}");
    assert_eq!(late_failed, 0);
    let before: Vec<_> = attempts.iter().filter(|a| a.started < switched).collect();
    assert!(
        before
            .iter()
            .all(|a| a.outcome.as_ref().is_ok_and(|l| l.node != "node3")),
        "a read landed on node3 while it was asynchronous"
    );
    hp.wait_up(READ, &["node1", "node3"], haproxy_settle())
        .await
        .expect("read pool: the primary and node3");
    drop(hp);
    lab.teardown().await.expect("teardown");
}
