//! A bad database behind the real `primgr` binary, against a real one-node repmgr lab: a role
//! that does not exist, a role that may not log in, a role without rights on the repmgr schema,
//! a database that does not exist, a database without the repmgr schema, and a `node_name` that
//! is not in `repmgr.nodes`. The daemon must keep running and answering (503 for the database
//! faults, 509 for the unknown node), say why in `/status`, and log each cause once, not on
//! every cycle; once the cause is fixed it must recover and log that once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::child::{Primgr, scratch_dir};
use common::{json_at, wait_cycles, wait_json_at};
use primgr_lab::{Lab, LabSpec, NodeSpec, subnet_of};
use serde_json::Value;

/// Poll cycles each daemon is seen to complete (distinct `observed_at`) before its log is
/// counted: many.
const CYCLES: usize = 10;
/// Bound on seeing them (the daemons poll every 200 ms).
const OBSERVE_WITHIN: Duration = Duration::from_secs(20);

struct Case {
    name: &'static str,
    node_name: &'static str,
    /// Replaces `user=` and `dbname=` in the node's conninfo.
    user: &'static str,
    dbname: &'static str,
    code: u16,
    /// Must appear in `/status` `reason` (and in `database.error` for a database fault).
    cause: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "role does not exist",
        node_name: "node1",
        user: "primgr_no_such_role",
        dbname: "repmgr",
        code: 503,
        cause: "role \"primgr_no_such_role\" does not exist",
    },
    Case {
        name: "role may not log in",
        node_name: "node1",
        user: "primgr_nologin",
        dbname: "repmgr",
        code: 503,
        cause: "not permitted to log in",
    },
    Case {
        name: "role without rights on repmgr",
        node_name: "node1",
        user: "primgr_norights",
        dbname: "repmgr",
        code: 503,
        cause: "permission denied for schema repmgr",
    },
    Case {
        name: "database does not exist",
        node_name: "node1",
        user: "repmgr",
        dbname: "primgr_no_such_db",
        code: 503,
        cause: "database \"primgr_no_such_db\" does not exist",
    },
    Case {
        name: "no repmgr schema",
        node_name: "node1",
        user: "repmgr",
        dbname: "postgres",
        code: 503,
        cause: "relation \"repmgr.nodes\" does not exist",
    },
    Case {
        name: "node_name not registered",
        node_name: "ghost",
        user: "repmgr",
        dbname: "repmgr",
        code: 509,
        cause: "node_name \"ghost\" is not in repmgr.nodes",
    },
];

/// Where the daemon of case `i` listens: `127.0.<lab subnet>.<101 + i>:5999`.
fn listen(lab: &Lab, i: usize) -> SocketAddr {
    SocketAddr::from((
        [127, 0, lab.subnet(), 101 + i as u8],
        primgr_lab::DAEMON_PORT,
    ))
}

async fn status(addr: SocketAddr) -> (u16, Value) {
    json_at(addr, "/status").await
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_schema_and_node_name_keep_the_daemon_up_and_say_why_once() {
    let subnet = subnet_of(
        "bad_database::bad_credentials_schema_and_node_name_keep_the_daemon_up_and_say_why_once",
    );
    let lab = Lab::build(LabSpec::new(subnet, vec![NodeSpec::new("node1", "dc1")]))
        .await
        .expect("lab builds");
    for sql in [
        "CREATE ROLE primgr_nologin NOLOGIN",
        "CREATE ROLE primgr_norights LOGIN",
    ] {
        lab.psql_db("node1", "postgres", sql).await.expect(sql);
    }
    let dir = scratch_dir("bad-database");
    let host = lab.addr("node1");
    let mut daemons = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let conninfo = format!(
            "host={host} port=5432 user={} dbname={} application_name=primgr",
            case.user, case.dbname
        );
        daemons.push(Primgr::spawn(
            listen(&lab, i),
            &[
                "--node-name",
                case.node_name,
                "--conninfo",
                &conninfo,
                "--interval",
                "200ms",
                "--db-timeout",
                "500ms",
                "--peer-timeout",
                "500ms",
            ],
            "info",
            &dir.join(format!("daemon-{i}.log")),
        ));
    }
    for d in &mut daemons {
        d.wait_listening(Duration::from_secs(10)).await;
    }

    // Many cycles: every daemon answers its code on every poll once the first cycle is done,
    // until each has been seen completing CYCLES of them.
    let t0 = Instant::now();
    let mut cycles: Vec<std::collections::BTreeSet<String>> = vec![Default::default(); CASES.len()];
    while cycles.iter().any(|c| c.len() < CYCLES) {
        assert!(
            t0.elapsed() < OBSERVE_WITHIN,
            "cycles seen per case after {OBSERVE_WITHIN:?}: {:?}",
            cycles.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
        for (i, case) in CASES.iter().enumerate() {
            let (code, s) = status(listen(&lab, i)).await;
            if s["observed_at"].is_null() {
                continue; // still starting
            }
            assert_eq!(code, case.code, "{}: {s}", case.name);
            cycles[i].insert(s["observed_at"].to_string());
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    println!("{:<32} {:>5} {:>7}  reason", "case", "code", "cycles");
    for (i, case) in CASES.iter().enumerate() {
        let d = &mut daemons[i];
        assert!(
            d.running(),
            "{}: the daemon exited:\n{}",
            case.name,
            d.log_text()
        );
        let (code, s) = status(listen(&lab, i)).await;
        let reason = s["reason"].as_str().unwrap_or_default().to_string();
        println!(
            "{:<32} {code:>5} {:>7}  {reason}",
            case.name,
            cycles[i].len()
        );
        assert_eq!(code, case.code, "{}: {s}", case.name);
        assert!(
            reason.contains(case.cause),
            "{}: reason {reason:?} lacks {:?}",
            case.name,
            case.cause
        );
        let log = d.log_text();
        assert!(
            !log.contains("panicked"),
            "{}: the daemon panicked:\n{log}",
            case.name
        );
        let state_changes = count(&log, "state is now");
        assert_eq!(
            state_changes, 1,
            "{}: state logged {state_changes} times:\n{log}",
            case.name
        );
        if case.code == 503 {
            let error = s["database"]["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(case.cause),
                "{}: database.error {error:?}",
                case.name
            );
            assert_eq!(s["database"]["reachable"], false, "{}: {s}", case.name);
            let db_lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("local database unusable"))
                .collect();
            assert_eq!(
                db_lines.len(),
                1,
                "{}: the cause was logged {} times:\n{log}",
                case.name,
                db_lines.len()
            );
            assert!(
                db_lines[0].contains(case.cause),
                "{}: logged {:?}",
                case.name,
                db_lines[0]
            );
        } else {
            assert_eq!(
                count(&log, "local database unusable"),
                0,
                "{}:\n{log}",
                case.name
            );
            assert_eq!(s["database"]["reachable"], true, "{}: {s}", case.name);
            assert_eq!(s["state"], "Unknown", "{}: {s}", case.name);
            let line = log
                .lines()
                .find(|l| l.contains("state is now"))
                .unwrap_or_default();
            assert!(line.contains(case.cause), "{}: logged {line:?}", case.name);
        }
    }

    // Fixing the cause while the daemon runs: the role may log in (a new cause: no rights,
    // logged once), then gets its rights (Primary: a one-node site is its own majority).
    let nologin = CASES
        .iter()
        .position(|c| c.user == "primgr_nologin")
        .expect("case");
    let addr = listen(&lab, nologin);
    lab.psql_db("node1", "postgres", "ALTER ROLE primgr_nologin LOGIN")
        .await
        .expect("alter role");
    wait_json_at(addr, "/status", Duration::from_secs(5), |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("permission denied for schema repmgr"))
    })
    .await;
    lab.psql("node1", "GRANT USAGE ON SCHEMA repmgr TO primgr_nologin; GRANT SELECT ON repmgr.nodes TO primgr_nologin")
        .await
        .expect("grant");
    let t = Instant::now();
    wait_json_at(addr, "/status", Duration::from_secs(5), |s| {
        s["code"] == 200
    })
    .await;
    // Three more cycles, then the log tells the story once per change.
    wait_cycles(addr, 3, Duration::from_secs(5)).await;
    let log = daemons[nologin].log_text();
    let unusable: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("local database unusable"))
        .collect();
    assert_eq!(unusable.len(), 2, "one line per cause:\n{log}");
    assert!(unusable[1].contains("permission denied"), "{log}");
    assert_eq!(count(&log, "local database answers again"), 1, "{log}");
    assert_eq!(count(&log, "state is now Primary"), 1, "{log}");
    println!(
        "fixed while running: the nologin daemon recovered to 200 in {:?} after the grant",
        t.elapsed()
    );

    drop(daemons);
    lab.teardown().await.expect("teardown");
}
