//! What an operator runs against a real four-node repmgr cluster (node1–3 in dc1, node4 in dc2)
//! with a primgr per node: the `primgr cluster` command (the real binary) in normal operation,
//! after a failover, in split brain, with daemons stopped and with nothing listening; and the
//! least-privilege database role of contrib/least-privilege.sql instead of the repmgr superuser.

mod common;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use common::{Daemon, Fleet, config_for, settle_bound};
use primgr_lab::{Lab, LabSpec, subnet_of};
use serde_json::Value;

/// Bound on one run of `primgr cluster` (two rounds of at most 2 s each, plus start-up).
const COMMAND_BOUND: Duration = Duration::from_secs(15);

/// Runs the real `primgr` binary with `args`; returns exit code, stdout and stderr.
async fn primgr(args: &[&str]) -> (i32, String, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_primgr"))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out: Output = tokio::time::timeout(COMMAND_BOUND, run)
        .await
        .unwrap_or_else(|_| panic!("primgr {args:?} ran longer than {COMMAND_BOUND:?}"))
        .expect("run primgr");
    (
        out.status.code().expect("exit code, not a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `primgr cluster --url http://<daemon of node>` (plus `extra`).
async fn cluster(lab: &Lab, via: &str, extra: &[&str]) -> (i32, String, String) {
    let url = format!("http://{}", lab.daemon_addr(via));
    let mut args = vec!["cluster", "--url", url.as_str()];
    args.extend_from_slice(extra);
    primgr(&args).await
}

/// `primgr cluster` through `via`'s daemon: prints its table under `label`, asserts the exit
/// code, returns the table.
async fn table_via(lab: &Lab, via: &str, label: &str, code: i32) -> String {
    let (got, table, err) = cluster(lab, via, &[]).await;
    println!("{label}:\n{table}");
    assert_eq!(got, code, "{label}: {table}{err}");
    table
}

/// The table's rows by node name: Node, Site, Address, State, Code, Primary, Sync, Votes, Age,
/// Error / reason.
fn rows(table: &str) -> BTreeMap<String, Vec<String>> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.trim_start().starts_with("Node"),
        "no table header in:\n{table}"
    );
    lines
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with('-'))
        .map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.trim().to_string()).collect();
            (cells[0].clone(), cells)
        })
        .collect()
}

fn cell<'a>(rows: &'a BTreeMap<String, Vec<String>>, node: &str, column: usize) -> &'a str {
    rows.get(node)
        .unwrap_or_else(|| panic!("no row for {node}: {rows:?}"))
        .get(column)
        .map(String::as_str)
        .unwrap_or("")
}

const SITE: usize = 1;
const ADDRESS: usize = 2;
const STATE: usize = 3;
const CODE: usize = 4;
const PRIMARY: usize = 5;
const VOTES: usize = 7;
const DETAIL: usize = 9;

/// Asserts each listed node's state and code in the table.
fn assert_states(table: &str, want: &[(&str, &str, &str)]) {
    let r = rows(table);
    for (node, state, code) in want {
        assert_eq!(
            (cell(&r, node, STATE), cell(&r, node, CODE)),
            (*state, *code),
            "{node} in\n{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_command_through_failover_split_brain_and_stopped_daemons() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "operator::cluster_command_through_failover_split_brain_and_stopped_daemons",
    )))
    .await
    .expect("lab builds");
    let mut fleet = Fleet::start(&lab).await;
    let all = ["node1", "node2", "node3", "node4"];

    // 1. Normal: node1 is the real primary with all three votes of dc1.
    fleet.wait_normal().await;
    fleet
        .wait_json("node1", "/status", settle_bound(), |s| s["votes"] == 3)
        .await;
    // Asked through a standby: any daemon knows the membership.
    let table = table_via(&lab, "node3", "normal", 0).await;
    let r = rows(&table);
    assert_eq!(
        r.keys().collect::<Vec<_>>(),
        all,
        "every node, once:\n{table}"
    );
    assert_states(
        &table,
        &[
            ("node1", "Primary", "200"),
            ("node2", "Standby", "202"),
            ("node3", "Standby", "202"),
            ("node4", "Standby", "202"),
        ],
    );
    assert_eq!(cell(&r, "node1", VOTES), "3/2", "{table}");
    for node in all {
        assert_eq!(
            cell(&r, node, PRIMARY),
            "node1",
            "{node} names node1:\n{table}"
        );
        assert_eq!(
            cell(&r, node, ADDRESS),
            lab.daemon_addr(node).to_string(),
            "{table}"
        );
    }
    assert_eq!(cell(&r, "node2", SITE), "dc1");
    assert_eq!(cell(&r, "node4", SITE), "dc2");
    assert!(table.contains("Real primary: node1\n"), "{table}");

    // The JSON document states the same facts.
    let (code, json, err) = cluster(&lab, "node1", &["--json"]).await;
    assert_eq!(code, 0, "{json}{err}");
    let doc: Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(doc["real_primary"], "node1", "{doc}");
    assert_eq!(doc["exit_code"], 0, "{doc}");
    let nodes = doc["nodes"].as_array().expect("nodes");
    let summary: Vec<(String, u64)> = nodes
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["code"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("node1", 200),
            ("node2", 202),
            ("node3", 202),
            ("node4", 202)
        ]
        .map(|(n, c)| (n.to_string(), c))
    );

    // 2. Failover: node1 dies, node2 is promoted, node3 and node4 follow it.
    lab.failover("node1", "node2").await.expect("failover");
    fleet.wait_after_failover().await;
    // Asked through node1's daemon: its database is down, it still knows the members.
    for via in ["node1", "node4"] {
        let table = table_via(&lab, via, &format!("after failover, via {via}"), 0).await;
        assert_states(
            &table,
            &[
                ("node1", "Down", "503"),
                ("node2", "Primary", "200"),
                ("node3", "Standby", "202"),
                ("node4", "Standby", "202"),
            ],
        );
        let r = rows(&table);
        assert!(
            cell(&r, "node1", DETAIL).contains("database"),
            "node1's reason names its database:\n{table}"
        );
        assert!(table.contains("Real primary: node2\n"), "{table}");
    }

    // 3. Split brain: node1 comes back read-write without rejoin. It answers 509, node2 stays
    // the one 200, and the command still finds exactly one real primary.
    lab.start("node1").await.expect("start node1");
    fleet
        .wait_codes(&[("node1", 509), ("node2", 200)], settle_bound())
        .await;
    let table = table_via(&lab, "node1", "split brain, via node1", 0).await;
    assert_states(
        &table,
        &[
            ("node1", "Unknown", "509"),
            ("node2", "Primary", "200"),
            ("node3", "Standby", "202"),
            ("node4", "Standby", "202"),
        ],
    );
    let r = rows(&table);
    assert_eq!(
        cell(&r, "node1", PRIMARY),
        "node1",
        "its frozen metadata:\n{table}"
    );
    assert_eq!(cell(&r, "node1", VOTES), "1/2", "{table}");
    assert!(table.contains("Real primary: node2\n"), "{table}");
    assert!(table.contains("Warning: node1 is Unknown (509)"), "{table}");

    // 4. node4's daemon stops: node4 is a row with the connection error, not left out.
    let took = fleet
        .daemons
        .get_mut("node4")
        .expect("node4 daemon")
        .stop()
        .await;
    println!("node4's daemon stopped in {took:?}");
    let table = table_via(&lab, "node2", "node4's daemon stopped", 0).await;
    let r = rows(&table);
    assert_eq!(r.len(), 4, "{table}");
    assert_eq!(cell(&r, "node4", STATE), "unreachable", "{table}");
    assert_eq!(cell(&r, "node4", CODE), "-", "{table}");
    assert!(
        cell(&r, "node4", DETAIL).contains("Connection refused"),
        "node4's error:\n{table}"
    );
    assert!(table.contains("Warning: no answer from node4"), "{table}");

    // ...and asked directly, nothing answers: exit 2.
    let (code, out, err) = cluster(&lab, "node4", &[]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("cannot ask"), "{err}");

    // 5. node2's daemon stops too: no node answers 200 any more (node1 stays 509): exit 1.
    fleet
        .daemons
        .get_mut("node2")
        .expect("node2 daemon")
        .stop()
        .await;
    let table = table_via(&lab, "node3", "node2's and node4's daemons stopped", 1).await;
    assert_states(
        &table,
        &[("node1", "Unknown", "509"), ("node3", "Standby", "202")],
    );
    assert_eq!(
        cell(&rows(&table), "node2", STATE),
        "unreachable",
        "{table}"
    );
    assert!(table.contains("NO PRIMARY"), "{table}");

    fleet.stop_all().await;
    lab.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_command_with_nothing_listening_exits_2() {
    // An address of this test's subnet (shifted like every lab subnet) where no daemon runs.
    let subnet = primgr_lab::lab_subnet(subnet_of(
        "operator::cluster_command_with_nothing_listening_exits_2",
    ))
    .expect("subnet");
    let nobody = std::net::SocketAddr::from(([127, 0, subnet, 250], primgr_lab::DAEMON_PORT));
    let url = format!("http://{nobody}");
    let (code, out, err) = primgr(&["cluster", "--url", &url]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "nothing on stdout: {out}");
    assert!(err.contains(&format!("cannot ask {url}/")), "{err}");
    let bare = nobody.to_string();
    let (code, out, err) =
        primgr(&["cluster", "--url", &bare, "--json", "--timeout", "500ms"]).await;
    assert_eq!(code, 2, "{out}{err}");
    let doc: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert!(
        doc["error"].as_str().is_some_and(|e| e.contains("refused")),
        "{doc}"
    );
    assert_eq!(doc["exit_code"], 2);
    assert_eq!(doc["nodes"], serde_json::json!([]));
}

/// Waits until `node`'s `/status` reason contains `text`; returns the status.
async fn wait_reason(fleet: &Fleet, node: &str, text: &str) -> Value {
    fleet
        .wait_json(node, "/status", settle_bound(), |s| {
            s["reason"].as_str().is_some_and(|r| r.contains(text))
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_role_is_enough() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "operator::least_privilege_role_is_enough",
    )))
    .await
    .expect("lab builds");
    // The shipped script, as an operator runs it on the primary; twice, as it is idempotent.
    let script = include_str!("../contrib/least-privilege.sql");
    for _ in 0..2 {
        lab.psql("node1", script)
            .await
            .expect("least-privilege.sql runs");
    }
    assert_eq!(
        lab.psql(
            "node1",
            "SELECT rolsuper, rolreplication, rolcreaterole, rolcreatedb, rolbypassrls \
             FROM pg_roles WHERE rolname = 'primgr'"
        )
        .await
        .expect("role"),
        "f|f|f|f|f",
        "primgr is an ordinary role"
    );

    // A daemon per node that logs in as primgr instead of repmgr.
    let mut daemons = BTreeMap::new();
    for node in lab.node_names() {
        let mut config = config_for(&lab, &node);
        let conninfo = config.db.conninfo.replace("user=repmgr", "user=primgr");
        assert_ne!(
            conninfo, config.db.conninfo,
            "conninfo names the user: {conninfo}"
        );
        config.db.conninfo = conninfo;
        daemons.insert(node, Daemon::start(config).await);
    }
    let mut fleet = Fleet { daemons };
    let healthy = [
        ("node1", 200),
        ("node2", 202),
        ("node3", 202),
        ("node4", 202),
    ];
    fleet.wait_codes(&healthy, settle_bound()).await;
    fleet
        .wait_json("node1", "/status", settle_bound(), |s| s["votes"] == 3)
        .await;
    // They really are primgr's sessions, on the primary and on a standby.
    for node in ["node1", "node4"] {
        let users = lab
            .psql(
                node,
                "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity \
                 WHERE application_name = 'primgr'",
            )
            .await
            .expect("pg_stat_activity");
        assert_eq!(users, "primgr", "{node}'s primgr sessions");
    }

    // Without SELECT on repmgr.nodes: Down, the reason says why, the daemons keep serving.
    lab.psql("node1", "REVOKE SELECT ON repmgr.nodes FROM primgr")
        .await
        .expect("revoke select");
    fleet
        .wait_codes(
            &[
                ("node1", 503),
                ("node2", 503),
                ("node3", 503),
                ("node4", 503),
            ],
            settle_bound(),
        )
        .await;
    for node in ["node1", "node3"] {
        let status = wait_reason(&fleet, node, "permission denied").await;
        assert_eq!(status["state"], "Down", "{status}");
        assert!(
            status["database"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("permission denied for table nodes")),
            "{status}"
        );
    }
    let table = table_via(&lab, "node2", "without SELECT", 1).await;
    assert!(
        cell(&rows(&table), "node1", DETAIL).contains("permission denied"),
        "{table}"
    );

    // Without USAGE on the schema (SELECT granted again): Down as well, so both are needed.
    lab.psql(
        "node1",
        "GRANT SELECT ON repmgr.nodes TO primgr; REVOKE USAGE ON SCHEMA repmgr FROM primgr",
    )
    .await
    .expect("swap grants");
    let status = wait_reason(&fleet, "node2", "permission denied for schema repmgr").await;
    assert_eq!(status["state"], "Down", "{status}");

    // The documented grants again: healthy again, without restarting anything.
    lab.psql("node1", script)
        .await
        .expect("least-privilege.sql runs");
    fleet.wait_codes(&healthy, settle_bound()).await;

    fleet.stop_all().await;
    lab.teardown().await.expect("teardown");
}
