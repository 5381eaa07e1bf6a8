//! Reads haproxy can trust, on a real cluster: every read endpoint and parameter as a user would
//! check it with curl (and every bad parameter refused with its reason), the standby's lag and
//! replication facts in `/status`, `/read-write` answering exactly like `/state`, the warning
//! for a Patroni-style `OPTIONS /primary` check, a postmaster that accepts no one, and drain;
//! then through the real haproxy with the shipped `/replica?lag=16MB` read check: a standby
//! whose replay is paused while 48 MB are written loses its reads and gets them back, a
//! replication cut for every standby makes every `lag=` check fail, and a drained standby gets
//! no new session. Lab subnets 101-105 are this file's.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clients::{address_book, haproxy_settle, land, sample_every, shipped, tally};
use common::sampler::Sampler;
use common::{Fleet, config_for, settle_bound};
use primgr_lab::haproxy::{Haproxy, READ, WRITE};
use primgr_lab::{Lab, LabSpec, http};
use serde_json::Value;

const PRIMGR: &str = env!("CARGO_BIN_EXE_primgr");

/// Status and body of `method path` on `addr`, from `source` when given.
async fn ask_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (u16, String) {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let bytes = http::exchange(source, addr, raw.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    if method == "HEAD" {
        // No body follows a HEAD answer, whatever its Content-Length says.
        let head = String::from_utf8_lossy(&bytes);
        let status = http::status_code(head.as_bytes()).expect("status line");
        return (status, String::new());
    }
    let r = http::parse_response(&bytes).unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
    (r.status, r.body)
}

/// A daemon per node, each with a state directory of its own in the lab directory (the drain
/// flag); the directories by node.
async fn fleet_with_state_dirs(lab: &Lab) -> (Fleet, Vec<(String, std::path::PathBuf)>) {
    let dirs: Vec<_> = lab
        .node_names()
        .iter()
        .map(|n| {
            let d = lab.dir().join(format!("state-{n}"));
            std::fs::create_dir_all(&d).expect("state dir");
            (n.clone(), d)
        })
        .collect();
    let fleet = Fleet::start_with(lab, |node, c| {
        if let Some((_, d)) = dirs.iter().find(|(n, _)| n == node) {
            c.node.state_dir = d.clone();
        }
    })
    .await;
    (fleet, dirs)
}

async fn ask(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    ask_from(None, addr, method, path).await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_endpoint_and_parameter() {
    let lab = Lab::build(LabSpec::standard(101))
        .await
        .expect("lab builds");
    let (fleet, state_dirs) = fleet_with_state_dirs(&lab).await;
    fleet.wait_normal().await;
    // Wait until the standby knows the primary's position (asked from node1's daemon).
    fleet
        .wait_json("node2", "/status", settle_bound(), |s| {
            s["replication"]["lag_bytes"].is_u64()
        })
        .await;
    let (p, s) = (fleet.addr("node1"), fleet.addr("node2"));
    let mut checked = 0;
    for (addr, path, want) in [
        (p, "/read-write", 200),
        (p, "/leader", 200),
        (p, "/replica", 503),
        (p, "/read-only", 200),
        (p, "/read-only?lag=0", 200),
        (p, "/health", 200),
        (p, "/liveness", 200),
        (p, "/readiness", 200),
        (s, "/read-write", 503),
        (s, "/leader", 503),
        (s, "/replica", 200),
        (s, "/replica?lag=16MB", 200),
        (s, "/replica?lag=16777216", 200),
        (s, "/replica?replication_state=streaming", 200),
        (s, "/replica?replication_state=archive", 503),
        (s, "/replica?lag_time=1h", 200),
        (
            s,
            "/replica?lag=16MB&replication_state=streaming&lag_time=1h",
            200,
        ),
        (s, "/read-only", 200),
        (s, "/read-only?lag=16MB", 200),
        (s, "/health", 200),
        (s, "/liveness", 200),
        (s, "/readiness", 200),
    ] {
        for method in ["GET", "HEAD", "OPTIONS"] {
            let (code, body) = ask(addr, method, path).await;
            assert_eq!(code, want, "{method} {path} on {addr}: {body}");
            if method == "GET" {
                let v = json(&body);
                assert!(v["node"].is_string() && v["state"].is_string(), "{body}");
                if want == 503 {
                    assert!(v["reason"].is_string(), "{path}: a 503 says why: {body}");
                }
            } else {
                assert!(body.is_empty(), "{method} {path}: {body}");
            }
            checked += 1;
        }
    }
    // Bad parameters: 400 with the reason, Patroni's silent "no limit" never.
    for (path, why) in [
        ("/replica?lag=10mb", "unknown unit"),
        ("/replica?lag=-1", "not a size"),
        ("/replica?lag=", "not a size"),
        ("/replica?lagg=1MB", "unknown parameter"),
        ("/replica?replication_state=recovering", "neither"),
        ("/replica?lag_time=soon", "not a duration"),
        ("/read-only?lag=1MB&lag=2MB", "more than once"),
        ("/readiness?lag=1.5MB", "unknown unit"),
    ] {
        let (code, body) = ask(s, "GET", path).await;
        assert_eq!(code, 400, "{path}: {body}");
        let e = json(&body)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(e.contains(why), "{path}: {e}");
        checked += 1;
    }
    // /status: a standby's positions, lag, receiver and upstream; the primary's position.
    let (_, st) = fleet.json("node2", "/status").await;
    let r = &st["replication"];
    for key in [
        "received_lsn",
        "replayed_lsn",
        "primary_lsn",
        "last_replay_age_ms",
    ] {
        assert!(!r[key].is_null(), "{key}: {st}");
    }
    assert_eq!(r["receiver_state"], "streaming", "{st}");
    assert_eq!(
        r["primary_lsn_from"].as_str().map(|s| !s.is_empty()),
        Some(true)
    );
    assert_eq!(
        r["upstream"].as_str(),
        Some(format!("{}:5432", lab.addr("node1")).as_str()),
        "{st}"
    );
    let (_, pst) = fleet.json("node1", "/status").await;
    assert!(pst["database"]["current_lsn"].is_string(), "{pst}");
    assert!(pst["replication"].is_null(), "{pst}");
    println!(
        "{checked} endpoint checks; node2 lag {} bytes",
        r["lag_bytes"]
    );

    // Drain: node2 leaves every read check, `/state` stays truthful; it survives a restart.
    // As an operator would: `primgr drain` with the daemon's configuration file, which says
    // where the flag lives and where the daemon listens (to confirm the drain took effect).
    let state_dir = &state_dirs
        .iter()
        .find(|(n, _)| n == "node2")
        .expect("node2")
        .1;
    let conf = lab.dir().join("node2-primgr.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = \"{s}\"\nstate_dir = \"{}\"\n",
            state_dir.display()
        ),
    )
    .expect("config file");
    let out = std::process::Command::new(PRIMGR)
        .args(["drain", "--reason", "kernel update", "--config"])
        .arg(&conf)
        .output()
        .expect("primgr drain");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("node2 is drained"),
        "the daemon confirmed it: {said}"
    );
    fleet
        .wait_json("node2", "/status", settle_bound(), |s| {
            s["drained"]["reason"] == "kernel update"
        })
        .await;
    for path in ["/replica", "/read-only", "/readiness"] {
        let (code, body) = ask(s, "GET", path).await;
        assert_eq!(code, 503, "drained {path}: {body}");
        assert!(body.contains("kernel update"), "{body}");
    }
    assert_eq!(
        ask(s, "GET", "/state").await.0,
        202,
        "/state stays truthful"
    );
    let out = std::process::Command::new(PRIMGR)
        .args(["cluster", "--url", &s.to_string()])
        .output()
        .expect("primgr cluster");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("Standby (drained)"), "{table}");
    let out = std::process::Command::new(PRIMGR)
        .args(["undrain", "--config"])
        .arg(&conf)
        .output()
        .expect("primgr undrain");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("node2 is undrained"));
    fleet
        .wait_json("node2", "/status", settle_bound(), |s| {
            s["drained"].is_null()
        })
        .await;
    assert_eq!(ask(s, "GET", "/replica").await.0, 200);
    lab.teardown().await.expect("teardown");
}

/// `/read-write` answers exactly like `/state` (200 only on the confirmed primary), sample by
/// sample through a failover, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_answers_like_state() {
    let lab = Lab::build(LabSpec::standard(102))
        .await
        .expect("lab builds");
    let fleet = Fleet::start(&lab).await;
    fleet.wait_normal().await;
    let nodes = ["node1", "node2", "node3", "node4"];
    let t0 = Instant::now();
    let pairs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watch = {
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| fleet.addr(n)).collect();
        let pairs = pairs.clone();
        tokio::spawn(async move {
            while t0.elapsed() < Duration::from_secs(25) {
                for a in &addrs {
                    // The two checks back to back.
                    let s = http::get(*a, "/state", Duration::from_secs(1)).await;
                    let w = http::get(*a, "/read-write", Duration::from_secs(1)).await;
                    if let (Ok(s), Ok(w)) = (s, w) {
                        pairs
                            .lock()
                            .expect("pairs")
                            .push((*a, s.status == 200, w.status == 200));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.failover("node1", "node2").await.expect("failover");
    watch.await.expect("watcher");
    let pairs = pairs.lock().expect("pairs").clone();
    // Both answers come from the same rule; they can only differ when the node's state changed
    // between the two requests (a new snapshot, or its votes expiring). Then the /read-write
    // answer must be the node's next /state answer. Any other disagreement is a violation.
    let mut changes = 0;
    let mut violations = Vec::new();
    for (k, (addr, state, rw)) in pairs.iter().enumerate() {
        if state == rw {
            continue;
        }
        let next = pairs[k + 1..].iter().find(|p| p.0 == *addr).map(|p| p.1);
        if next == Some(*rw) {
            changes += 1;
        } else {
            violations.push((addr, state, rw, next));
        }
    }
    let primaries = pairs.iter().filter(|(_, s, _)| *s).count();
    println!(
        "/state vs /read-write: {} pairs ({primaries} with /state 200), {changes} straddling a \
         change of state, {} violations",
        pairs.len(),
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:?}");
    assert!(primaries > 100, "the primary was sampled");
    lab.teardown().await.expect("teardown");
}

/// haproxy's default check is `OPTIONS`; `OPTIONS /primary` is a Patroni habit that would send
/// writes everywhere with primgr: warned once per client address, naming /state and /read-write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patroni_style_primary_check_is_warned_once_per_client() {
    let lab = Lab::build(LabSpec {
        nodes: vec![primgr_lab::NodeSpec::new("node1", "dc1")],
        ..LabSpec::standard(103)
    })
    .await
    .expect("lab builds");
    lab.spawn_daemon("node1", PRIMGR.as_ref(), &[])
        .await
        .expect("daemon");
    lab.wait_daemon_ready("node1", Duration::from_secs(10))
        .await
        .expect("ready");
    let addr = lab.daemon_addr("node1");
    for _ in 0..5 {
        ask(addr, "OPTIONS", "/primary").await;
    }
    // Another client address; a GET of /primary (an operator's curl) warns nobody.
    let other: IpAddr = "127.0.0.2".parse().expect("ip");
    for _ in 0..3 {
        ask_from(Some(other), addr, "GET", "/primary").await;
        ask_from(Some(other), addr, "OPTIONS", "/primary").await;
    }
    let log_path = lab.daemon_log("node1").expect("log");
    let t = Instant::now();
    let warnings = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("OPTIONS /primary"))
            .map(String::from)
            .collect();
        if lines.len() >= 2 || t.elapsed() > Duration::from_secs(5) {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings.iter().any(|l| l.contains("127.0.0.1")));
    assert!(warnings.iter().any(|l| l.contains("127.0.0.2")));
    assert!(
        warnings
            .iter()
            .all(|l| l.contains("/state") && l.contains("/read-write"))
    );
    lab.teardown().await.expect("teardown");
}

/// A postmaster that accepts no one (SIGSTOP of the postmaster alone: its backends, and the
/// daemon's pooled session, keep working) is Down within `db_timeout` + `interval`; SIGCONT
/// brings it back. Also measures what the new-connection proof costs the database per cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postmaster_that_accepts_no_one_is_down() {
    let lab = Lab::build(LabSpec::standard(104))
        .await
        .expect("lab builds");
    let fleet = Fleet::start(&lab).await;
    fleet.wait_normal().await;
    let config = config_for(&lab, "node1");
    // The cost: sessions started on node1 per poll cycle of its daemon.
    let sessions = || async {
        lab.psql_db(
            "node1",
            "postgres",
            "SELECT sessions FROM pg_stat_database WHERE datname = 'repmgr'",
        )
        .await
        .expect("sessions")
        .trim()
        .parse::<u64>()
        .expect("a number")
    };
    let cycles = || async {
        // Each cycle publishes a new observed_at.
        fleet.json("node1", "/status").await.1["observed_at"].clone()
    };
    let (s0, c0) = (sessions().await, cycles().await);
    let mut seen = 0u64;
    let mut last = c0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let c = cycles().await;
        if c != last {
            seen += 1;
            last = c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s1 = sessions().await;
    println!(
        "new-connection proof: {} sessions started on node1's repmgr database over {seen} cycles \
         of its daemon",
        s1 - s0
    );
    assert!(seen >= 5, "cycles seen: {seen}");

    let t0 = Instant::now();
    let sampler = Sampler::start(
        t0,
        vec![fleet.addr("node1")],
        "/state",
        Duration::from_millis(20),
        Duration::from_secs(1),
    );
    lab.freeze_postmaster("node1")
        .await
        .expect("SIGSTOP postmaster");
    let frozen = sampler.now();
    let bound = config.db.db_timeout + config.timing.interval;
    sampler
        .wait_samples(
            frozen + bound + Duration::from_secs(1),
            10,
            Duration::from_secs(10),
        )
        .await;
    lab.thaw("node1").await.expect("SIGCONT");
    let thawed = sampler.now();
    sampler
        .wait_samples(thawed + Duration::from_secs(3), 10, Duration::from_secs(10))
        .await;
    let samples = sampler.stop();
    let last_200 = samples
        .iter()
        .filter(|s| s.at >= frozen && s.at < thawed && s.status == Some(200))
        .map(|s| s.at)
        .max()
        .unwrap_or(frozen);
    let down_after = last_200.saturating_sub(frozen);
    let back = samples
        .iter()
        .find(|s| s.at >= thawed && s.status == Some(200))
        .map(|s| s.at.saturating_sub(thawed));
    let (_, st) = fleet.json("node1", "/status").await;
    println!(
        "postmaster frozen: last 200 {down_after:?} after the SIGSTOP (bound {bound:?}); 200 \
         again {back:?} after the SIGCONT"
    );
    assert!(
        down_after <= bound,
        "still 200 {down_after:?} after the postmaster froze"
    );
    assert!(back.is_some(), "never 200 again; {st}");
    // Between the bound and the thaw, every answer was 503 with the reason.
    let after: Vec<_> = samples
        .iter()
        .filter(|s| s.at > frozen + bound && s.at + s.latency < thawed)
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|s| s.status == Some(503)),
        "{:?}",
        after.iter().find(|s| s.status != Some(503))
    );
    lab.teardown().await.expect("teardown");
}

/// Through the real haproxy with the shipped read check (`/replica?lag=16MB`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_reads_follow_replay_lag_cuts_and_drain() {
    let lab = Lab::build(LabSpec::standard(105))
        .await
        .expect("lab builds");
    let (fleet, state_dirs) = fleet_with_state_dirs(&lab).await;
    fleet.wait_normal().await;
    let hp = Haproxy::start(&lab, &shipped()).await.expect("haproxy");
    hp.wait_up(WRITE, &["node1"], settle_bound())
        .await
        .expect("write pool");
    hp.wait_up(READ, &["node2", "node3", "node4"], settle_bound())
        .await
        .expect("read pool");
    let read = hp.listener(READ).expect("read listener");
    let book = address_book(&lab);

    // 1. node2's replay paused, 48 MB written on the primary: within 5 s no new read lands on
    // node2, while node3 and node4 keep taking them.
    lab.psql("node2", "SELECT pg_wal_replay_pause()")
        .await
        .expect("pause");
    lab.psql(
        "node1",
        "CREATE TABLE IF NOT EXISTS t (i int, s text); \
         INSERT INTO t SELECT g, repeat('x', 80) FROM generate_series(1, 400000) g",
    )
    .await
    .expect("write 48 MB");
    let written = Instant::now();
    let st = fleet
        .wait_json("node2", "/status", settle_bound(), |s| {
            s["replication"]["lag_bytes"]
                .as_u64()
                .is_some_and(|l| l > 16 << 20)
        })
        .await;
    println!(
        "node2 lag {} bytes once the 48 MB were written",
        st["replication"]["lag_bytes"]
    );
    let t0 = Instant::now();
    let attempts = sample_every(
        Duration::from_millis(50),
        read,
        book.clone(),
        t0,
        Duration::from_secs(8),
        Duration::from_secs(8),
        |_| true,
    )
    .await;
    let after_5s: Vec<_> = attempts
        .iter()
        .filter(|a| t0 + a.started >= written + Duration::from_secs(5))
        .collect();
    let on2 = after_5s
        .iter()
        .filter(|a| a.outcome.as_ref().is_ok_and(|l| l.node == "node2"))
        .count();
    let (on, failed) = tally(&attempts);
    println!(
        "paused replay on node2: reads {on:?}, {failed} failed; {on2} on node2 from 5 s after the write"
    );
    assert_eq!(on2, 0, "reads still land on the lagging node2");
    assert!(on.get("node3").is_some_and(|n| *n > 10) && on.get("node4").is_some_and(|n| *n > 10));
    lab.psql("node2", "SELECT pg_wal_replay_resume()")
        .await
        .expect("resume");
    hp.wait_up(
        READ,
        &["node2", "node3", "node4"],
        haproxy_settle() + settle_bound(),
    )
    .await
    .expect("node2 back in the read pool");
    let back = land(read, &book).await.expect("a read");
    println!(
        "replay resumed: node2 back in the read pool (a read landed on {})",
        back.node
    );

    // 2. Replication cut for every standby and more WAL written: every lag= check fails (the
    // lag counts WAL a standby has not even received).
    lab.cut_replication_to("node1")
        .await
        .expect("cut replication");
    lab.psql(
        "node1",
        "INSERT INTO t SELECT g, repeat('x', 80) FROM generate_series(1, 400000) g",
    )
    .await
    .expect("write 48 MB more");
    for node in ["node2", "node3", "node4"] {
        fleet
            .wait_json(node, "/status", settle_bound(), |s| {
                s["replication"]["lag_bytes"]
                    .as_u64()
                    .is_some_and(|l| l > 16 << 20)
            })
            .await;
        let (code, _) = ask(fleet.addr(node), "GET", "/replica?lag=16MB").await;
        assert_eq!(code, 503, "{node}");
    }
    hp.wait_up(READ, &[], haproxy_settle())
        .await
        .expect("no standby takes reads");
    let refused = land(read, &book).await;
    assert!(
        refused.is_err(),
        "a read landed with every standby behind: {refused:?}"
    );
    println!("replication cut for every standby: the read pool is empty");
    lab.heal_replication_to("node1").await.expect("heal");
    hp.wait_up(
        READ,
        &["node2", "node3", "node4"],
        haproxy_settle() + settle_bound(),
    )
    .await
    .expect("read pool back");

    // 3. A drained standby gets no new session.
    let dir = &state_dirs
        .iter()
        .find(|(n, _)| n == "node3")
        .expect("node3")
        .1;
    primgr::control::drain(dir, "maintenance").expect("drain node3");
    hp.wait_up(READ, &["node2", "node4"], haproxy_settle() + settle_bound())
        .await
        .expect("node3 out of the read pool");
    let attempts = sample_every(
        Duration::from_millis(50),
        read,
        book.clone(),
        Instant::now(),
        Duration::from_secs(2),
        Duration::from_secs(2),
        |_| true,
    )
    .await;
    let (on, _) = tally(&attempts);
    println!("node3 drained: reads {on:?}");
    assert!(!on.contains_key("node3"));
    drop(hp);
    lab.teardown().await.expect("teardown");
}
