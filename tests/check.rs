//! `primgr check`, the monitoring plugin (the real binary), as Nagios, Icinga or keepalived run
//! it: against a real three-node repmgr cluster (node1 primary, node2 and node3 standbys, one
//! site) with a primgr daemon process per node, every exit code: 0 OK, 1 WARNING (a standby's
//! replay paused past --warning; an unknown lag; a member without an answer), 2 CRITICAL (a
//! standby asked for the primary; a lag past --critical; no primary), 3 UNKNOWN (a SIGSTOPped
//! daemon, within the timeout); the default address from --config; the shipped keepalived
//! script line against the lab. Without a lab: a daemon that accepts and never answers, a port
//! where nothing listens, bad arguments, and contrib/keepalived.conf checked by
//! `keepalived -t`. Its lab subnet is in `primgr_lab::SUBNETS`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{settle_bound, timing_flags, wait_json_at};
use primgr_lab::{Daemon, Lab, LabSpec, NodeSpec, StopMode, subnet_of};

const PRIMGR: &str = env!("CARGO_BIN_EXE_primgr");
const KEEPALIVED_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/keepalived.conf");

/// Bound on one run of `primgr check` whatever happens (its own --timeout is smaller).
const RUN_BOUND: Duration = Duration::from_secs(20);

/// One run of `primgr check`: its exit status, its one status line, how long it took.
#[derive(Debug)]
struct Run {
    code: i32,
    line: String,
    took: Duration,
}

/// Runs `primgr check <args>`; asserts that it printed exactly one line on stdout and nothing
/// on stderr, as a monitoring plugin must.
async fn check(args: &[&str]) -> Run {
    let t0 = Instant::now();
    let run = tokio::process::Command::new(PRIMGR)
        .arg("check")
        .args(args)
        .kill_on_drop(true)
        .output();
    let out: Output = tokio::time::timeout(RUN_BOUND, run)
        .await
        .unwrap_or_else(|_| panic!("primgr check {args:?} ran longer than {RUN_BOUND:?}"))
        .expect("run primgr");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "primgr check {args:?}: not one line: {stdout:?} (stderr {stderr:?})"
    );
    assert!(
        stderr.is_empty(),
        "primgr check {args:?}: stderr {stderr:?}"
    );
    Run {
        code: out.status.code().expect("an exit status, not a signal"),
        line: stdout.trim_end().to_string(),
        took,
    }
}

/// Wall-clock slack for starting and ending a `primgr` process on a loaded 2-core machine; the
/// check's own `'time'` performance value is the precise measure.
const PROCESS_SLACK: Duration = Duration::from_secs(4);

impl Run {
    /// The `'time'` the check reports in its performance data: how long it waited for answers.
    fn reported(&self) -> Duration {
        let value = self
            .line
            .split("'time'=")
            .nth(1)
            .and_then(|v| v.split('s').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no 'time' in {:?}", self.line));
        Duration::from_secs_f64(value)
    }

    /// Asserts that the check waited between `min` and `max` (its own measure) and ended
    /// within `max` plus [`PROCESS_SLACK`] on the wall clock.
    fn waited(&self, min: Duration, max: Duration) {
        let reported = self.reported();
        assert!(
            reported >= min && reported <= max,
            "waited {reported:?}, not within {min:?}..{max:?}: {self:?}"
        );
        assert!(self.took < max + PROCESS_SLACK, "{self:?}");
    }
}

/// Exit statuses seen, for the summary.
#[derive(Default)]
struct Tally(BTreeMap<i32, usize>);

impl Tally {
    /// Runs `primgr check <args>`, asserts its exit status and that its line contains every
    /// `wanted` text; prints the line.
    async fn expect(&mut self, label: &str, args: &[&str], code: i32, wanted: &[&str]) -> Run {
        let r = check(args).await;
        println!("{label}: exit {} in {:?}\n  {}", r.code, r.took, r.line);
        assert_eq!(r.code, code, "{label}: {}", r.line);
        for w in wanted {
            assert!(r.line.contains(w), "{label}: {:?} lacks {w:?}", r.line);
        }
        *self.0.entry(r.code).or_default() += 1;
        r
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(code, n)| format!("exit {code}: {n}"))
            .collect();
        format!(
            "{} runs of primgr check ({})",
            self.0.values().sum::<usize>(),
            parts.join(", ")
        )
    }
}

fn url(lab: &Lab, node: &str) -> String {
    format!("http://{}", lab.daemon_addr(node))
}

/// A configuration file naming only `listen`.
fn config_listening(dir: &Path, name: &str, listen: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("listen = \"{listen}\"\n")).expect("write config");
    path.to_string_lossy().into_owned()
}

/// The command line of contrib/keepalived.conf's `vrrp_script`, split into words.
fn keepalived_script_words() -> Vec<String> {
    let conf = std::fs::read_to_string(KEEPALIVED_CONF).expect("contrib/keepalived.conf");
    let line = conf
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("script \""))
        .expect("a script line in contrib/keepalived.conf");
    let command = line
        .trim_start_matches("script \"")
        .split('"')
        .next()
        .unwrap_or_default();
    command.split_whitespace().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exit_code_against_a_live_cluster() {
    let lab = Lab::build(LabSpec {
        nodes: ["node1", "node2", "node3"]
            .map(|n| NodeSpec::new(n, "dc1"))
            .to_vec(),
        ..LabSpec::standard(subnet_of("check::every_exit_code_against_a_live_cluster"))
    })
    .await
    .expect("lab builds");
    let mut daemons: std::collections::BTreeMap<String, Daemon> = lab
        .node_names()
        .into_iter()
        .map(|node| {
            let d = lab
                .daemon(&node, PRIMGR)
                .and_then(|d| d.args(timing_flags()).spawn())
                .unwrap_or_else(|e| panic!("spawn the daemon of {node}: {e:#}"));
            (node, d)
        })
        .collect();
    for (node, d) in daemons.iter_mut() {
        d.ready(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("the daemon of {node} listens: {e:#}"));
    }
    let (p, s1, s2) = (url(&lab, "node1"), url(&lab, "node2"), url(&lab, "node3"));
    let status = |node: &str| lab.daemon_addr(node);
    wait_json_at(status("node1"), "/status", settle_bound(), |s| {
        s["code"] == 200
    })
    .await;
    for node in ["node2", "node3"] {
        wait_json_at(status(node), "/status", settle_bound(), |s| {
            s["code"] == 202 && s["replication"]["lag_bytes"].is_u64()
        })
        .await;
    }
    let mut t = Tally::default();

    // 1. Normal operation.
    let r = t
        .expect(
            "primary on the primary",
            &["primary", "--url", &p],
            0,
            &["PRIMGR PRIMARY OK - node1 is the primary", "| 'votes'="],
        )
        .await;
    r.waited(Duration::ZERO, Duration::from_secs(1));
    t.expect(
        "primary on a standby",
        &["primary", "--url", &s1],
        2,
        &["PRIMGR PRIMARY CRITICAL - node2 is Standby (HTTP 202), not the primary"],
    )
    .await;
    let lag_args = ["--warning", "1MB", "--critical", "16MB"];
    let mut args = vec!["replica", "--url", s1.as_str()];
    args.extend(lag_args);
    t.expect(
        "replica on a standby",
        &args,
        0,
        &[
            "PRIMGR REPLICA OK - node2 is a standby (streaming), replay lag",
            ";1048576;16777216;0",
        ],
    )
    .await;
    t.expect(
        "replica on the primary",
        &["replica", "--url", &p],
        2,
        &["CRITICAL - node1 (Primary) serves no reads as a standby: not in recovery: not a replica | 'time'="],
    )
    .await;
    for (node, u) in [("node1", &p), ("node3", &s2)] {
        t.expect(
            &format!("read-only on {node}"),
            &["read-only", "--url", u],
            0,
            &[&format!("PRIMGR READ-ONLY OK - {node} serves reads")],
        )
        .await;
    }
    t.expect(
        "cluster through a standby",
        &["cluster", "--url", &s2],
        0,
        &[
            "PRIMGR CLUSTER OK - node1 is the one primary (node1 Primary, node2 Standby, node3 Standby)",
            "'primaries'=1;;1:1;0",
        ],
    )
    .await;

    // 1b. Synchronous standbys: the primary lists node2 as synchronous, node3 stays
    // asynchronous; `check sync` passes on node2 only. Then back to asynchronous replication.
    let set_sync_names = |value: &'static str| {
        let lab = &lab;
        async move {
            let set = match value {
                "" => "ALTER SYSTEM RESET synchronous_standby_names".to_string(),
                v => format!("ALTER SYSTEM SET synchronous_standby_names = '{v}'"),
            };
            lab.psql("node1", &set).await.expect("ALTER SYSTEM");
            lab.psql("node1", "SELECT pg_reload_conf()")
                .await
                .expect("reload");
        }
    };
    set_sync_names("FIRST 1 (node2)").await;
    wait_json_at(status("node2"), "/status", settle_bound(), |s| {
        s["replication"]["sync_state"] == "sync"
    })
    .await;
    t.expect(
        "sync on the synchronous standby",
        &["sync", "--url", &s1],
        0,
        &["PRIMGR SYNC OK - node2 is a synchronous standby (Standby)"],
    )
    .await;
    for (url, node) in [(&s2, "node3 (Standby)"), (&p, "node1 (Primary)")] {
        t.expect(
            &format!("sync on {node}"),
            &["sync", "--url", url],
            2,
            &[&format!(
                "PRIMGR SYNC CRITICAL - {node} is not a synchronous standby"
            )],
        )
        .await;
    }
    set_sync_names("").await;
    wait_json_at(status("node2"), "/status", settle_bound(), |s| {
        s["replication"]["sync_state"] == "async"
    })
    .await;

    // 2. The address from --config (the way `primgr drain` finds the daemon), and the shipped
    // keepalived script line, its paths pointed at this build and a file naming the node's
    // `listen`: it passes on the primary only.
    let c2 = config_listening(
        lab.dir(),
        "node2.toml",
        &lab.daemon_addr("node2").to_string(),
    );
    t.expect(
        "primary with --config of node2",
        &["primary", "--config", &c2],
        2,
        &["node2 is Standby"],
    )
    .await;
    let words = keepalived_script_words();
    assert_eq!(
        words[..3],
        ["/usr/bin/primgr", "check", "primary"],
        "{words:?}"
    );
    for (node, code) in [("node1", 0), ("node2", 2)] {
        let conf = config_listening(
            lab.dir(),
            &format!("{node}.toml"),
            &lab.daemon_addr(node).to_string(),
        );
        let args: Vec<String> = words[2..]
            .iter()
            .map(|w| {
                if w == "/etc/primgr/primgr.toml" {
                    conf.clone()
                } else {
                    w.clone()
                }
            })
            .collect();
        assert!(args.contains(&conf), "the script names --config: {words:?}");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        t.expect(&format!("keepalived's script on {node}"), &args, code, &[])
            .await;
    }

    // 3. node2's replay paused while the primary writes 48 MB: its lag passes both thresholds.
    lab.psql("node2", "SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    lab.psql(
        "node1",
        "CREATE TABLE t (i int, s text); \
         INSERT INTO t SELECT g, repeat('x', 80) FROM generate_series(1, 400000) g",
    )
    .await
    .expect("write 48 MB");
    let st = wait_json_at(status("node2"), "/status", settle_bound(), |s| {
        s["replication"]["lag_bytes"]
            .as_u64()
            .is_some_and(|l| l > 32 << 20)
    })
    .await;
    println!("node2 paused: lag {} bytes", st["replication"]["lag_bytes"]);
    t.expect(
        "replica past --warning",
        &[
            "replica",
            "--url",
            &s1,
            "--warning",
            "1MB",
            "--critical",
            "1GB",
        ],
        1,
        &[
            "PRIMGR REPLICA WARNING - node2: replay lag ",
            "is above --warning 1MB (replay paused)",
        ],
    )
    .await;
    t.expect(
        "replica past --critical",
        &args_with(&["replica", "--url", &s1], &lag_args),
        2,
        &[
            "PRIMGR REPLICA CRITICAL - node2: replay lag ",
            "is above --critical 16MB (replay paused)",
        ],
    )
    .await;
    t.expect(
        "read-only with a paused replay (no lag bound)",
        &["read-only", "--url", &s1],
        0,
        &["node2 serves reads (Standby, replay lag "],
    )
    .await;
    lab.psql("node2", "SELECT pg_wal_replay_resume()")
        .await
        .expect("resume replay");
    let caught_up = Instant::now();
    wait_json_at(status("node2"), "/status", settle_bound(), |s| {
        s["replication"]["lag_bytes"]
            .as_u64()
            .is_some_and(|l| l < 1 << 20)
    })
    .await;
    println!(
        "node2 resumed: lag under 1MB after {:?}",
        caught_up.elapsed()
    );
    t.expect(
        "replica caught up",
        &args_with(&["replica", "--url", &s1], &lag_args),
        0,
        &["OK - node2 is a standby"],
    )
    .await;

    // 4. node3's daemon stopped (SIGSTOP): it accepts connections and never answers.
    daemons["node3"].freeze().expect("SIGSTOP node3's daemon");
    for which in ["primary", "replica", "read-only"] {
        let r = t
            .expect(
                &format!("{which} on a stopped daemon"),
                &[which, "--url", &s2, "--timeout", "1s"],
                3,
                &[
                    "UNKNOWN - no answer from the daemon at",
                    "no answer within 1s",
                ],
            )
            .await;
        // The requests end at the deadline; a backstop 200 ms later.
        r.waited(Duration::from_secs(1), Duration::from_millis(1200));
    }
    let r = t
        .expect(
            "cluster with a stopped member",
            &["cluster", "--url", &p, "--timeout", "2s"],
            1,
            &[
                "PRIMGR CLUSTER WARNING - node1 is the one primary, but node3 gives no usable answer",
                "'unreachable'=1;0;;0",
            ],
        )
        .await;
    // Each of the cluster view's two rounds takes at most half the timeout.
    r.waited(Duration::from_secs(1), Duration::from_millis(2200));
    t.expect(
        "cluster through the stopped daemon",
        &["cluster", "--url", &s2, "--timeout", "1s"],
        3,
        &["UNKNOWN - cannot ask the daemon at"],
    )
    .await;
    daemons["node3"].thaw().expect("SIGCONT");

    // 5. The primary's database stops: no primary, and the standbys' lag becomes unknown.
    lab.stop("node1", StopMode::Fast).await.expect("stop node1");
    wait_json_at(status("node1"), "/status", settle_bound(), |s| {
        s["code"] == 503
    })
    .await;
    let st = wait_json_at(status("node2"), "/status", settle_bound(), |s| {
        s["replication"]["lag_bytes"].is_null() && s["replication"]["lag_unknown"].is_string()
    })
    .await;
    println!("node2: {}", st["replication"]["lag_unknown"]);
    t.expect(
        "primary on a stopped database",
        &["primary", "--url", &p],
        2,
        &["CRITICAL - node1 is Down (HTTP 503)"],
    )
    .await;
    t.expect(
        "read-only on a stopped database",
        &["read-only", "--url", &p],
        2,
        &["CRITICAL - node1 (Down) serves no reads"],
    )
    .await;
    t.expect(
        "cluster without a primary",
        &["cluster", "--url", &s1],
        2,
        &[
            "PRIMGR CLUSTER CRITICAL - no node answers 200 (Primary) (node1 Down, ",
            "'primaries'=0;;1:1;0",
        ],
    )
    .await;
    t.expect(
        "replica, lag unknown, no thresholds",
        &["replica", "--url", &s1],
        1,
        &[
            "PRIMGR REPLICA WARNING - node2: replay lag unknown (the primary's position is not known",
            "an unknown lag is never OK",
            "'lag'=U;;;0",
        ],
    )
    .await;
    t.expect(
        "replica, lag unknown, with --critical",
        &args_with(&["replica", "--url", &s1], &lag_args),
        2,
        &[
            "CRITICAL - node2: replay lag unknown",
            "'lag'=U;1048576;16777216;0",
        ],
    )
    .await;

    println!("{}", t.summary());
    for code in 0..=3 {
        assert!(t.0.contains_key(&code), "exit {code} never seen");
    }
    lab.teardown().await.expect("teardown");
}

fn args_with<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

/// A daemon that accepts connections and never answers, a port where nothing listens, and bad
/// arguments: all UNKNOWN (3), each within its timeout, with the reason in the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_and_bad_arguments_are_unknown() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    // Port 1 on the loopback: nothing listens there.
    let refused_url = "http://127.0.0.1:1".to_string();
    let mut t = Tally::default();
    for which in ["primary", "replica", "read-only", "cluster"] {
        let r = t
            .expect(
                &format!("{which}, silent daemon"),
                &[which, "--url", &silent_url, "--timeout", "1s"],
                3,
                // The cluster view gives each of its two rounds half the timeout.
                &[
                    " UNKNOWN - ",
                    if which == "cluster" {
                        "no answer within 500ms"
                    } else {
                        "no answer within 1s"
                    },
                ],
            )
            .await;
        let timeout = if which == "cluster" {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(1)
        };
        r.waited(timeout, Duration::from_millis(1200));
        let r = t
            .expect(
                &format!("{which}, nothing listens"),
                &[which, "--url", &refused_url],
                3,
                &[" UNKNOWN - ", "Connection refused"],
            )
            .await;
        r.waited(Duration::ZERO, Duration::from_millis(500));
    }
    for (args, wanted) in [
        (
            &["replica", "--warning", "16MB", "--critical", "1MB"][..],
            "PRIMGR REPLICA UNKNOWN - bad thresholds: --warning 16MB is above --critical 1MB",
        ),
        (
            &["replica", "--critical", "10mb"],
            "PRIMGR REPLICA UNKNOWN - bad --critical: unknown unit",
        ),
        (
            &["primary", "--timeout", "0s"],
            "PRIMGR PRIMARY UNKNOWN - bad --timeout",
        ),
        (
            &["cluster", "--url", "https://db1:5999"],
            "PRIMGR CLUSTER UNKNOWN - bad --url",
        ),
        (
            &["read-only", "--config", "/nonexistent/primgr.toml"],
            "PRIMGR READ-ONLY UNKNOWN - bad --config",
        ),
    ] {
        t.expect(&format!("{args:?}"), args, 3, &[wanted]).await;
    }
    holder.abort();
    println!("{}", t.summary());
}

/// contrib/keepalived.conf passes `keepalived -t`, with two changes that the machine needs:
/// /usr/bin/primgr is this build (keepalived checks that the script exists and is secure), and
/// the script user is root (Debian 12's keepalived 2.2.7 kills its own config test when it is
/// not: acassen/keepalived#2617; the daemon itself is not affected). A broken copy fails, so
/// the check can fail.
#[test]
fn keepalived_accepts_the_shipped_configuration() {
    let shipped = std::fs::read_to_string(KEEPALIVED_CONF).expect("contrib/keepalived.conf");
    assert_eq!(
        shipped.matches("/usr/bin/primgr").count(),
        1,
        "one script line"
    );
    assert_eq!(shipped.matches("script_user primgr").count(), 1);
    let testable = shipped
        .replace("/usr/bin/primgr", PRIMGR)
        .replace("script_user primgr", "script_user root");
    let dir = std::env::temp_dir().join(format!("primgr-test-keepalived-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let good = dir.join("keepalived.conf");
    std::fs::write(&good, &testable).expect("write");
    let broken = dir.join("broken.conf");
    std::fs::write(&broken, testable.replace("fall 1", "fal 1")).expect("write");
    let run = |file: &Path| {
        let out = std::process::Command::new("keepalived")
            .arg("-t")
            .arg("-f")
            .arg(file)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run keepalived ({e}): install it with contrib/install-deps")
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&good);
    assert_eq!(
        code,
        Some(0),
        "keepalived -t refuses the shipped file:\n{text}"
    );
    assert!(text.trim().is_empty(), "keepalived -t warns:\n{text}");
    let (code, text) = run(&broken);
    assert_ne!(
        code,
        Some(0),
        "keepalived -t accepted a broken file:\n{text}"
    );
    assert!(text.contains("fal"), "{text}");
    std::fs::remove_dir_all(&dir).expect("clean up");
    println!("keepalived -t: shipped file accepted, broken copy refused ({code:?})");
}
