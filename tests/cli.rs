//! The `primgr` binary's configuration handling, as an operator meets it: the shipped example
//! is valid and documents the defaults; every bad configuration exits 64 naming the key (and
//! line) or the cause, before anything starts.

use std::process::{Command, Output};

fn primgr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_primgr"))
        .args(args)
        .output()
        .expect("run primgr")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs primgr with `args`; asserts exit status 64 and that stderr names every one of `wants`.
fn exits_64_naming(args: &[&str], wants: &[&str]) {
    let o = primgr(args);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(64), "{args:?}: {e}");
    for want in wants {
        assert!(e.contains(want), "{args:?}: {want:?} not in {e:?}");
    }
}

fn example() -> String {
    format!("{}/etc/primgr.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_example_is_valid_and_states_the_defaults() {
    let o = primgr(&[
        "--config",
        &example(),
        "--node-name",
        "node1",
        "--check-config",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // The example's values are the built-in defaults.
    let defaults = primgr(&["--node-name", "node1", "--check-config"]);
    assert!(defaults.status.success());
    assert_eq!(out, String::from_utf8_lossy(&defaults.stdout));
    for want in [
        "listen = \"0.0.0.0:5999\"",
        "max_connections_in_pool = 3",
        "interval = \"1s\"",
        "peer_timeout = \"500ms\"",
        "max_staleness = \"5s\"",
        "vote_lease = \"3s\"",
        "handoff_delay = \"2s 500ms\"",
        "clock_drift = 0.01",
    ] {
        assert!(out.contains(want), "{want} missing in {out}");
    }
}

#[test]
fn flags_override_the_file() {
    let o = primgr(&[
        "--config",
        &example(),
        "--node-name",
        "n",
        "--interval",
        "750ms",
        "--check-config",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("interval = \"750ms\""));
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("primgr-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn bad_configurations_exit_64_naming_the_key_or_cause() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown.toml",
            "node_name = \"a\"\nintervall = \"2s\"\n",
            &["intervall", "line 2"],
        ),
        (
            "duration.toml",
            "node_name = \"a\"\ndb_timeout = \"soon\"\n",
            &["`db_timeout`", "line 2"],
        ),
        (
            "address.toml",
            "listen = \"0.0.0.0\"\n",
            &["`listen`", "line 1"],
        ),
        (
            "source.toml",
            "source_address = \"localhost\"\n",
            &["`source_address`", "line 1"],
        ),
        (
            "type.toml",
            "peer_port = \"5999\"\n",
            &["peer_port", "line 1"],
        ),
        ("syntax.toml", "interval = \"2s\n", &["line 1"]),
        (
            "staleness.toml",
            "max_staleness = \"1s\"\n",
            &["`max_staleness`"],
        ),
        (
            "peer.toml",
            "[peers]\nnode2 = \"10.0.0.2:5999\"\n",
            &["`peers.node2`", "line 2"],
        ),
    ];
    for (name, text, wants) in cases {
        let path = write(name, text);
        let path = path.to_str().expect("utf8 path");
        exits_64_naming(
            &["--config", path, "--node-name", "n", "--check-config"],
            wants,
        );
    }
}

#[test]
fn missing_or_unreadable_files_and_bad_flags_exit_64() {
    exits_64_naming(
        &["--config", "/nonexistent/primgr.toml", "--check-config"],
        &["/nonexistent/primgr.toml"],
    );
    // A directory cannot be read as a file, even by root.
    exits_64_naming(
        &["--config", "/", "--check-config"],
        &["cannot read config file"],
    );
    exits_64_naming(
        &[
            "--node-name",
            "n",
            "--max-connections-in-pool",
            "lots",
            "--check-config",
        ],
        &["`max_connections_in_pool`"],
    );
    exits_64_naming(&["--no-such-flag"], &[]);
}

#[test]
fn the_daemon_does_not_start_on_a_bad_config() {
    // Without --check-config a bad file still stops before listening.
    let path = write("run.toml", "listen = \"127.0.0.1:1\"\ninterval = \"-1s\"\n");
    let path = path.to_str().expect("utf8 path");
    exits_64_naming(&["--config", path, "--node-name", "n"], &["`interval`"]);
}
