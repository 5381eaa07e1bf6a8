//! No secret on any page. A distinct secret is planted in every input that may hold one: a
//! configuration file's conninfo (key=value with quotes, escapes and blanks; URI with a
//! password in its userinfo and a percent-encoded `pass%77ord` key), the `--conninfo` flag, a
//! passfile, each member's `repmgr.nodes.conninfo` in a real lab (key=value, URI,
//! `sslpassword`: the lab trusts loopback, so the passwords are never asked for and every
//! conninfo stays connectable), configurations that are refused, and the configurations a
//! running daemon is given at a SIGHUP (refused and accepted). Then every output is searched
//! for every piece of every secret: `/status`, `/metrics`, `/realPrimary`, `/state` of each
//! daemon, `primgr cluster` (text and `--json`), `--check-config` (printed configuration and
//! errors) and each daemon's log (its stderr, at debug level). Without a lab: a TOML syntax
//! error on the conninfo line (at start, at `--check-config` and at a SIGHUP), and `Config`'s
//! `Debug`.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::child::{Primgr, scratch_dir};
use common::{json_at, settle_bound, timing_flags, wait_json_at};
use primgr_lab::{Lab, LabSpec, NodeSpec, http};

/// Lab subnet 131 is this file's.
const SUBNET: u8 = 131;

/// Bound on one run of the `primgr` command.
const COMMAND_BOUND: Duration = Duration::from_secs(15);

/// A planted secret: where it was planted, and its pieces (each distinctive, so that finding
/// one in an output can only mean it leaked; together they cover the whole secret, whatever
/// the quoting, escaping or percent-encoding around them).
struct Secret {
    planted: &'static str,
    pieces: &'static [&'static str],
}

const FILE_KV: Secret = Secret {
    planted: "node1's config file, key=value: password='zFk1qZ zFk1rZ\\'zFk1sZ'",
    pieces: &["zFk1qZ", "zFk1rZ", "zFk1sZ"],
};
const FLAG_URI: Secret = Secret {
    planted: "node2's --conninfo flag, URI: userinfo password and pass%77ord=",
    pieces: &["zFl2aZ", "zFl2bZ"],
};
const PASSFILE: Secret = Secret {
    planted: "node3's passfile",
    pieces: &["zPf3aZ"],
};
const FILE_URI: Secret = Secret {
    planted: "a config file's URI conninfo: userinfo password (percent-encoded @) and pa%73sword=",
    pieces: &["zFu4aZ", "zFu4bZ", "zFu4cZ"],
};
const MEMBER1: Secret = Secret {
    planted: "node1's repmgr.nodes conninfo, key=value password=",
    pieces: &["zMn1aZ"],
};
const MEMBER2: Secret = Secret {
    planted: "node2's repmgr.nodes conninfo, URI userinfo and pass%77ord=",
    pieces: &["zMn2aZ", "zMn2bZ"],
};
const MEMBER3: Secret = Secret {
    planted: "node3's repmgr.nodes conninfo, sslpassword='... ...'",
    pieces: &["zMn3aZ", "zMn3bZ"],
};
const REFUSED_KEY: Secret = Secret {
    planted: "a config file whose conninfo says PASSWORD= (refused: unknown key)",
    pieces: &["zBk5aZ"],
};
const REFUSED_QUOTE: Secret = Secret {
    planted: "a config file whose conninfo has an unterminated quote (refused)",
    pieces: &["zBq5bZ"],
};
const REFUSED_FLAG: Secret = Secret {
    planted: "a --conninfo flag with a bad sslmode (refused)",
    pieces: &["zBf5cZ"],
};
const HUP_REFUSED: Secret = Secret {
    planted: "node1's config file at a SIGHUP, refused (bad sslmode)",
    pieces: &["zHb7aZ"],
};
const HUP_ACCEPTED: Secret = Secret {
    planted: "node1's config file at a SIGHUP, accepted (a new password)",
    pieces: &["zHg7bZ"],
};
const TOML_ERROR: Secret = Secret {
    planted: "a TOML syntax error on the conninfo line",
    pieces: &["zTx8aZ", "zTx8bZ"],
};

const ALL: &[&Secret] = &[
    &FILE_KV,
    &FLAG_URI,
    &PASSFILE,
    &FILE_URI,
    &MEMBER1,
    &MEMBER2,
    &MEMBER3,
    &REFUSED_KEY,
    &REFUSED_QUOTE,
    &REFUSED_FLAG,
    &HUP_REFUSED,
    &HUP_ACCEPTED,
];

/// Every output checked: a name and its text.
#[derive(Default)]
struct Outputs(Vec<(String, String)>);

impl Outputs {
    fn add(&mut self, name: impl Into<String>, text: impl Into<String>) {
        self.0.push((name.into(), text.into()));
    }

    /// Every (output, secret piece) found; prints what was checked.
    fn leaks(&self, secrets: &[&Secret]) -> Vec<String> {
        let mut leaks = Vec::new();
        let pieces: usize = secrets.iter().map(|s| s.pieces.len()).sum();
        let bytes: usize = self.0.iter().map(|(_, t)| t.len()).sum();
        for (name, text) in &self.0 {
            for secret in secrets {
                for piece in secret.pieces {
                    if let Some(at) = text.find(piece) {
                        let from = text[..at]
                            .char_indices()
                            .rev()
                            .nth(60)
                            .map_or(0, |(i, _)| i);
                        let to = (at + piece.len() + 60).min(text.len());
                        let to = (to..=text.len()).find(|i| text.is_char_boundary(*i));
                        leaks.push(format!(
                            "{piece} ({}) in {name}: ...{}...",
                            secret.planted,
                            &text[from..to.unwrap_or(text.len())]
                        ));
                    }
                }
            }
        }
        println!(
            "{} outputs ({bytes} bytes) x {pieces} pieces of {} planted secrets: {} found",
            self.0.len(),
            secrets.len(),
            leaks.len()
        );
        leaks
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An SQL string literal holding `s`.
fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs the real `primgr` binary; exit code and stdout + stderr.
async fn primgr(args: &[&str]) -> (i32, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_primgr"))
        .args(args)
        .env("RUST_LOG", "debug")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(COMMAND_BOUND, run)
        .await
        .unwrap_or_else(|_| panic!("primgr {args:?} ran longer than {COMMAND_BOUND:?}"))
        .expect("run primgr");
    (
        out.status.code().expect("exit code, not a signal"),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `kill -HUP pid` (what `systemctl reload primgr` does).
fn hangup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -HUP {pid}");
}

/// Waits until `log` has `want` after byte `from`; the text after `from`.
async fn wait_log(log: &Path, from: usize, want: &str, within: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let new = text.get(from..).unwrap_or_default();
        if new.contains(want) {
            return new.to_string();
        }
        assert!(
            t0.elapsed() < within,
            "after {within:?} {} has no {want:?} after byte {from}:\n{new}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

/// Writes `text` to `path`, mode 0600.
fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A configuration file with `conninfo` (and nothing else).
fn config_file(path: &Path, conninfo: &str) -> PathBuf {
    write_private(
        path,
        &format!(
            "# planted by tests/secrets.rs\nconninfo = {}\n",
            toml_string(conninfo)
        ),
    );
    path.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_planted_secret_reaches_any_output() {
    let lab = Lab::build(LabSpec::new(
        SUBNET,
        vec![
            NodeSpec::new("node1", "dc1"),
            NodeSpec::new("node2", "dc1"),
            NodeSpec::new("node3", "dc1"),
        ],
    ))
    .await
    .expect("lab builds");
    let dir = scratch_dir(&format!("secrets-{}", lab.subnet()));
    let ip = |n: &str| lab.addr(n);

    // Each member's conninfo in repmgr.nodes holds a secret; the hosts stay as they were, so
    // every daemon still finds its peers there.
    let members = [
        (
            "node1",
            format!(
                "host={} port=5432 user=repmgr dbname=repmgr connect_timeout=2 password=zMn1aZ",
                ip("node1")
            ),
        ),
        (
            "node2",
            format!(
                "postgresql://repmgr:zMn2aZ@{}:5432/repmgr?connect_timeout=2&pass%77ord=zMn2bZ",
                ip("node2")
            ),
        ),
        (
            "node3",
            format!(
                "host={} port=5432 user=repmgr dbname=repmgr connect_timeout=2 \
                 sslpassword='zMn3aZ zMn3bZ'",
                ip("node3")
            ),
        ),
    ];
    for (node, conninfo) in &members {
        lab.psql(
            "node1",
            &format!(
                "UPDATE repmgr.nodes SET conninfo = {} WHERE node_name = '{node}'",
                sql_string(conninfo)
            ),
        )
        .await
        .expect("plant a member's conninfo");
    }

    // The daemons' own inputs.
    let base = |n: &str| {
        format!(
            "host={} port=5432 dbname=repmgr user=repmgr application_name=primgr",
            ip(n)
        )
    };
    let file_kv = format!("{} password='zFk1qZ zFk1rZ\\'zFk1sZ'", base("node1"));
    let node1_file = config_file(&dir.join("node1.toml"), &file_kv);
    let node1_original = config_file(&dir.join("node1-original.toml"), &file_kv);
    let flag_uri = format!(
        "postgresql://repmgr:zFl2aZ@{}:5432/repmgr?application_name=primgr&pass%77ord=zFl2bZ",
        ip("node2")
    );
    let node2_file = dir.join("node2.toml");
    write_private(&node2_file, "log_level = \"debug\"\n");
    let pgpass = dir.join("pgpass");
    write_private(&pgpass, "*:*:*:*:zPf3aZ\n");
    let node3_file = config_file(
        &dir.join("node3.toml"),
        &format!("{} passfile={}", base("node3"), pgpass.display()),
    );
    let file_uri = config_file(
        &dir.join("uri.toml"),
        &format!(
            "postgresql://repmgr:zFu4aZ%40zFu4bZ@{}:5432/repmgr?pa%73sword=zFu4cZ",
            ip("node1")
        ),
    );
    let refused_key = config_file(
        &dir.join("refused-key.toml"),
        &format!("{} PASSWORD=zBk5aZ", base("node1")),
    );
    let refused_quote = config_file(
        &dir.join("refused-quote.toml"),
        &format!("{} password='zBq5bZ", base("node1")),
    );

    let mut daemons = Vec::new();
    for (node, file, extra) in [
        ("node1", &node1_file, vec![]),
        ("node2", &node2_file, vec!["--conninfo", flag_uri.as_str()]),
        ("node3", &node3_file, vec![]),
    ] {
        let state = dir.join(format!("state-{node}"));
        std::fs::create_dir_all(&state).expect("state dir");
        let source = ip(node).to_string();
        let mut args: Vec<String> = [
            "--config",
            &file.display().to_string(),
            "--node-name",
            node,
            "--source-address",
            &source,
            "--state-dir",
            &state.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(timing_flags());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        daemons.push(Primgr::spawn(
            lab.daemon_addr(node),
            &args,
            "debug",
            &dir.join(format!("daemon-{node}.log")),
        ));
    }
    for d in &mut daemons {
        d.wait_listening(Duration::from_secs(20)).await;
    }
    let addr = |n: &str| lab.daemon_addr(n);

    // Settled, and every daemon shows the planted members: the secrets reached it.
    for (node, code) in [("node1", 200), ("node2", 202), ("node3", 202)] {
        wait_json_at(addr(node), "/status", settle_bound() * 2, |s| {
            let conninfo = |m: &str| {
                s["members"]
                    .as_array()
                    .and_then(|ms| ms.iter().find(|x| x["name"] == m))
                    .and_then(|x| x["conninfo"].as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            // The planted rows (whatever is shown of their values: that is checked below).
            s["code"] == code
                && conninfo("node1").contains("password=")
                && conninfo("node2").contains("pass%77ord=")
                && conninfo("node3").contains("sslpassword=")
                && s["votes"].as_u64() >= s["votes_needed"].as_u64()
        })
        .await;
    }
    let s3 = json_at(addr("node3"), "/status").await.1;
    assert!(
        s3["database"]["conninfo"]
            .as_str()
            .is_some_and(|c| c.contains(&format!("passfile={}", pgpass.display()))),
        "node3 uses its passfile: {}",
        s3["database"]
    );

    // SIGHUP of node1: a refused configuration, then an accepted one with a new password.
    let node1_log = daemons[0].log.clone();
    let from = log_len(&node1_log);
    config_file(
        &node1_file,
        &format!("{} password=zHb7aZ sslmode=bogus", base("node1")),
    );
    hangup(daemons[0].pid());
    let refused = wait_log(&node1_log, from, "reload refused", Duration::from_secs(10)).await;
    assert!(
        refused.contains("conninfo"),
        "the refusal names the key: {refused}"
    );
    let from = log_len(&node1_log);
    config_file(
        &node1_file,
        &format!(
            "{} password=zHg7bZ application_name=primgr-b",
            base("node1")
        ),
    );
    hangup(daemons[0].pid());
    wait_log(
        &node1_log,
        from,
        "the database settings changed",
        Duration::from_secs(10),
    )
    .await;
    wait_json_at(addr("node1"), "/status", settle_bound(), |s| {
        s["database"]["conninfo"]
            .as_str()
            .is_some_and(|c| c.contains("primgr-b") && c.contains("password=***"))
            && s["code"] == 200
    })
    .await;

    // Every output.
    let mut out = Outputs::default();
    for node in ["node1", "node2", "node3"] {
        for path in ["/status", "/metrics", "/realPrimary", "/state"] {
            let r = http::get(addr(node), path, Duration::from_secs(3))
                .await
                .unwrap_or_else(|e| panic!("{node} {path}: {e:#}"));
            out.add(format!("{node} {path}"), r.body);
        }
    }
    for via in ["node1", "node3"] {
        let url = format!("http://{}", addr(via));
        let (code, text) = primgr(&["cluster", "--url", &url]).await;
        assert_eq!(code, 0, "primgr cluster via {via}: {text}");
        assert!(text.contains("node3"), "{text}");
        out.add(format!("primgr cluster --url {url}"), text);
        let (code, text) = primgr(&["cluster", "--url", &url, "--json"]).await;
        assert_eq!(code, 0, "primgr cluster --json via {via}: {text}");
        out.add(format!("primgr cluster --json --url {url}"), text);
    }
    let path = |p: &Path| p.display().to_string();
    let checks: Vec<(String, Vec<String>, i32)> = vec![
        (
            "node1 (original file)".into(),
            vec!["--config".into(), path(&node1_original)],
            0,
        ),
        (
            "node1 (file after SIGHUP)".into(),
            vec!["--config".into(), path(&node1_file)],
            0,
        ),
        (
            "node2 (file and flag)".into(),
            vec![
                "--config".into(),
                path(&node2_file),
                "--conninfo".into(),
                flag_uri.clone(),
            ],
            0,
        ),
        (
            "node3 (passfile)".into(),
            vec!["--config".into(), path(&node3_file)],
            0,
        ),
        (
            "URI file".into(),
            vec!["--config".into(), path(&file_uri)],
            0,
        ),
        (
            "PASSWORD= file".into(),
            vec!["--config".into(), path(&refused_key)],
            64,
        ),
        (
            "unterminated quote".into(),
            vec!["--config".into(), path(&refused_quote)],
            64,
        ),
        (
            "bad flag".into(),
            vec![
                "--conninfo".into(),
                format!("{} password=zBf5cZ sslmode=bogus", base("node1")),
            ],
            64,
        ),
    ];
    for (label, args, want) in &checks {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--node-name", "node1", "--check-config"]);
        let (code, text) = primgr(&args).await;
        assert_eq!(code, *want, "--check-config, {label}: {text}");
        match want {
            0 => assert!(text.contains("conninfo = \""), "{label}: {text}"),
            _ => assert!(text.contains("conninfo"), "{label}: names the key: {text}"),
        }
        out.add(format!("--check-config, {label}"), text);
    }
    for (node, d) in ["node1", "node2", "node3"].iter().zip(&daemons) {
        let log = d.log_text();
        assert!(log.contains(" DEBUG "), "{node} logs at debug level");
        out.add(format!("{node}'s log"), log);
    }

    let leaks = out.leaks(ALL);
    for d in &mut daemons {
        d.kill();
    }
    lab.teardown().await.expect("teardown");
    assert!(leaks.is_empty(), "secrets found:\n{}", leaks.join("\n"));
}

/// A TOML syntax error on the conninfo line: `--check-config`, a start and a SIGHUP of a
/// running daemon each refuse it, naming the key or the line, and print no part of the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toml_error_on_the_conninfo_line_prints_no_secret() {
    let subnet = primgr_lab::lab_subnet(SUBNET).expect("subnet");
    let dir = scratch_dir(&format!("secrets-toml-{subnet}"));
    let addr = SocketAddr::from(([127, 0, subnet, 201], 5999));
    let conninfo = "host=127.0.0.1 port=1 dbname=repmgr user=primgr";
    let good = format!(
        "node_name = \"node1\"\nconninfo = \"{conninfo} password=zGoodZ\"\nstate_dir = \"{}\"\n",
        dir.display()
    );
    // An unterminated string, and a string followed by more on its line.
    let broken = [
        good.replace("password=zGoodZ\"", "password=zTx8aZ"),
        good.replace("password=zGoodZ\"", "password=zTx8bZ\" sslmode=disable"),
    ];
    let file = dir.join("primgr.toml");
    let mut out = Outputs::default();
    for (i, text) in broken.iter().enumerate() {
        write_private(&file, text);
        let (code, text) =
            primgr(&["--config", &file.display().to_string(), "--check-config"]).await;
        assert_eq!(code, 64, "{text}");
        assert!(
            text.contains("line 2") || text.contains("conninfo"),
            "{text}"
        );
        out.add(format!("--check-config, TOML error {i}"), text);
        let (code, text) = primgr(&["--config", &file.display().to_string()]).await;
        assert_eq!(code, 64, "{text}");
        out.add(format!("start, TOML error {i}"), text);
    }
    write_private(&file, &good);
    let log = dir.join("daemon.log");
    let mut daemon = Primgr::spawn(
        addr,
        &["--config", &file.display().to_string()],
        "debug",
        &log,
    );
    daemon.wait_listening(Duration::from_secs(10)).await;
    for text in &broken {
        let from = log_len(&log);
        write_private(&file, text);
        hangup(daemon.pid());
        wait_log(&log, from, "reload refused", Duration::from_secs(10)).await;
    }
    assert!(daemon.running(), "a refused reload changes nothing");
    out.add("the daemon's log", daemon.log_text());
    daemon.kill();
    let leaks = out.leaks(&[&TOML_ERROR]);
    assert!(leaks.is_empty(), "secrets found:\n{}", leaks.join("\n"));
}

/// `Config`'s `Debug` (and `Display`, what `--check-config` prints) shows no secret.
#[test]
fn config_debug_shows_no_secret() {
    let mut checked = 0;
    for conninfo in [
        "host=db user=u password='zDb9 zDb9\\'x'",
        "postgresql://u:zDb9@db/repmgr?pass%77ord=zDb9",
        "host=db sslpassword=zDb9",
    ] {
        let mut c = primgr::Config::for_node("n").expect("defaults");
        c.db.conninfo = conninfo.into();
        for shown in [format!("{c:?}"), format!("{c:#?}"), c.to_string()] {
            assert!(!shown.contains("zDb9"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
            checked += 1;
        }
    }
    println!("{checked} renderings of a Config: no secret");
}
