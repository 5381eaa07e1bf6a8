//! The systemd unit as shipped (`contrib/primgr.service`, installed by the package as
//! `/lib/systemd/system/primgr.service`), checked for what an operator relies on: stopping it
//! never touches PostgreSQL (a dedicated user, so `RemoveIPC=yes` cannot remove the database's
//! shared memory), its file descriptor limit lets primgr reach its connection caps (checked
//! live: the binary holds `server::MAX_CONNECTIONS` connections under that limit), readiness and
//! reload work the systemd way, the sandbox stays, and `systemd-analyze verify` accepts it.
//! No systemd needed (works in a container): `systemd-analyze verify` only loads unit files.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const UNIT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/primgr.service");

/// Where the package installs the binary (`[package.metadata.deb]` assets in Cargo.toml).
const INSTALLED_BINARY: &str = "/usr/bin/primgr";

/// Largest pool `max_connections_in_pool` accepts (config.rs validates 1..=100).
const POOL_MAX: usize = 100;
/// Peer connections: a few per peer (the poller's vote and a shared `/realPrimary` fan-out at
/// once, idle keep-alive connections up to 4 per host) for a cluster of up to 64 nodes.
const PEER_CONNECTIONS: usize = 4 * 64;
/// The runtime's own descriptors: listeners, epoll, eventfds, stdio, journal, notify socket.
const RUNTIME_FDS: usize = 64;

/// One `Key=Value` line of the unit.
#[derive(Debug)]
struct Setting {
    section: String,
    key: String,
    value: String,
}

/// The unit's settings in file order. Comments (`#`, `;`) and blank lines are skipped;
/// systemd's line continuations are not used in the file and are refused.
fn unit() -> Vec<Setting> {
    let text = std::fs::read_to_string(UNIT_PATH).expect("read contrib/primgr.service");
    let mut section = String::new();
    let mut settings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "line {}: continuation lines", n + 1);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not Key=Value: {line}", n + 1));
        settings.push(Setting {
            section: section.clone(),
            key: key.trim().to_string(),
            value: value.trim().to_string(),
        });
    }
    settings
}

/// Every value of `key` in `[section]`, in order.
fn values<'a>(unit: &'a [Setting], section: &str, key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|s| s.section == section && s.key == key)
        .map(|s| s.value.as_str())
        .collect()
}

/// The single value of `key` in `[Service]`; fails when absent or repeated.
fn service<'a>(unit: &'a [Setting], key: &str) -> &'a str {
    match values(unit, "Service", key).as_slice() {
        [v] => v,
        [] => panic!("{key}= missing in [Service]"),
        many => panic!("{key}= set {} times in [Service]: {many:?}", many.len()),
    }
}

/// systemd's boolean spellings.
fn is_true(v: &str) -> bool {
    matches!(v, "yes" | "true" | "on" | "1")
}

/// Users whose IPC objects belong to a database server. `RemoveIPC=yes` for one of them removes
/// PostgreSQL's shared memory and semaphores when primgr stops.
const DATABASE_USERS: &[&str] = &["postgres", "postgresql", "enterprisedb", "repmgr"];

#[test]
fn runs_as_its_own_user_never_as_postgres() {
    let unit = unit();
    let user = service(&unit, "User");
    let group = service(&unit, "Group");
    // The user the package's postinst creates.
    assert_eq!(user, "primgr", "User=");
    assert_eq!(group, "primgr", "Group=");
    for extra in values(&unit, "Service", "SupplementaryGroups") {
        for g in extra.split_whitespace() {
            assert!(
                !DATABASE_USERS.contains(&g),
                "SupplementaryGroups={g}: primgr needs no database group"
            );
        }
    }
}

#[test]
fn remove_ipc_only_with_a_dedicated_user() {
    let unit = unit();
    let remove_ipc = values(&unit, "Service", "RemoveIPC")
        .last()
        .is_some_and(|v| is_true(v))
        || values(&unit, "Service", "DynamicUser")
            .last()
            .is_some_and(|v| is_true(v));
    // The unit keeps RemoveIPC=yes (part of the sandbox) ...
    assert!(remove_ipc, "RemoveIPC=yes expected (with a dedicated user)");
    // ... which is only safe when neither the user nor the group is shared with a database
    // server or with anything else on the machine.
    let user = values(&unit, "Service", "User");
    let group = values(&unit, "Service", "Group");
    let dynamic = values(&unit, "Service", "DynamicUser")
        .last()
        .is_some_and(|v| is_true(v));
    if !dynamic {
        let (user, group) = (user.last().copied(), group.last().copied());
        for (what, name) in [("User", user), ("Group", group)] {
            let name = name
                .unwrap_or_else(|| panic!("RemoveIPC=yes needs {what}= naming a dedicated user"));
            assert!(
                !DATABASE_USERS.contains(&name) && name != "root" && name != "nobody",
                "RemoveIPC=yes with {what}={name}: stopping primgr would remove that user's \
                 IPC objects (PostgreSQL's shared memory and semaphores for postgres)"
            );
        }
    }
}

/// The soft limit a `LimitNOFILE=` value sets (`soft:hard` or one value for both).
fn soft_limit(value: &str) -> usize {
    let soft = value.split(':').next().unwrap_or(value);
    if soft == "infinity" {
        return usize::MAX;
    }
    soft.parse()
        .unwrap_or_else(|_| panic!("LimitNOFILE={value}: not a number"))
}

/// What the connection caps add up to, with the reason for each part.
fn descriptors_needed() -> usize {
    primgr::server::MAX_CONNECTIONS
        + primgr::agent::MAX_CONNECTIONS
        + POOL_MAX
        + PEER_CONNECTIONS
        + RUNTIME_FDS
}

#[test]
fn file_descriptor_limit_covers_every_connection_cap() {
    let unit = unit();
    let limit = soft_limit(service(&unit, "LimitNOFILE"));
    let needed = descriptors_needed();
    assert!(
        limit >= needed,
        "LimitNOFILE={limit} < {needed} = {} HTTP + {} agent + {POOL_MAX} pool + \
         {PEER_CONNECTIONS} peer + {RUNTIME_FDS} runtime descriptors",
        primgr::server::MAX_CONNECTIONS,
        primgr::agent::MAX_CONNECTIONS
    );
}

#[test]
fn readiness_reload_state_and_paths() {
    let unit = unit();
    // READY=1 after the first poll cycle, STOPPING=1 on SIGTERM (tests/notify.rs).
    assert_eq!(service(&unit, "Type"), "notify");
    assert_eq!(service(&unit, "NotifyAccess"), "main");
    // `systemctl reload primgr` sends SIGHUP to the daemon.
    assert_eq!(service(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    // The packaged binary with the packaged configuration.
    assert_eq!(
        service(&unit, "ExecStart"),
        format!("{INSTALLED_BINARY} --config /etc/primgr/primgr.toml")
    );
    // /var/lib/primgr for the drain flag, owned by the service user, not world-readable.
    assert_eq!(service(&unit, "StateDirectory"), "primgr");
    assert_eq!(service(&unit, "StateDirectoryMode"), "0750");
    // A bad configuration (exit 64) is not restarted in a loop; anything else is.
    assert_eq!(service(&unit, "Restart"), "always");
    assert_eq!(service(&unit, "RestartPreventExitStatus"), "64");
    assert_eq!(values(&unit, "Install", "WantedBy"), ["multi-user.target"]);
}

#[test]
fn sandbox_is_kept() {
    let unit = unit();
    let expected = [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateMounts", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", "invisible"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("UMask", "0077"),
        ("ReadOnlyPaths", "/etc/primgr"),
    ];
    for (key, value) in expected {
        assert_eq!(service(&unit, key), value, "{key}=");
    }
    // Nothing but the state directory is made writable.
    for key in [
        "ReadWritePaths",
        "LogsDirectory",
        "RuntimeDirectory",
        "CacheDirectory",
    ] {
        assert!(values(&unit, "Service", key).is_empty(), "{key}= is set");
    }
}

/// `systemd-analyze verify` on the unit, with ExecStart pointing at the binary cargo built (it
/// checks that the command exists). It exits 0 even for unknown keys and unparsable values,
/// so any output at all fails the test.
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let text = std::fs::read_to_string(UNIT_PATH).expect("read unit");
    assert!(
        text.contains(INSTALLED_BINARY),
        "ExecStart names {INSTALLED_BINARY}"
    );
    let text = text.replace(
        &format!("ExecStart={INSTALLED_BINARY} "),
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_primgr")),
    );
    let dir = scratch_dir("verify");
    let copy = dir.join("primgr.service");
    std::fs::write(&copy, text).expect("write unit copy");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze (package systemd; contrib/install-deps installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && stderr.trim().is_empty() && stdout.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{stdout}{stderr}",
        out.status
    );
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("primgr-unit-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir
}

/// The soft and hard `Max open files` of a process, from /proc.
fn open_files_limit(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// One `GET /state` on `stream`; returns the status line. Reads exactly one response
/// (by Content-Length) so the connection stays usable and open.
fn get_state(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"GET /state HTTP/1.1\r\nHost: primgr\r\n\r\n")?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before a full response"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(head.lines().next().unwrap_or("").to_string());
            }
        }
    }
}

/// The real binary, started under the unit's LimitNOFILE (as systemd would set it), holds
/// `server::MAX_CONNECTIONS` client connections at once and answers on every one of them.
/// Under the default soft limit of 1024 it stops accepting near connection 1000.
#[test]
fn binary_holds_max_connections_under_the_units_limit() {
    let unit = unit();
    let limit = soft_limit(service(&unit, "LimitNOFILE"));
    let connections = primgr::server::MAX_CONNECTIONS;

    // This test process holds the client ends: raise its own soft limit if needed (root may
    // also raise the hard limit).
    let (soft, hard) = open_files_limit("self");
    let want = (connections + 256) as u64;
    if soft < want {
        let status = Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={want}:{}", hard.max(want)))
            .status()
            .expect("run prlimit");
        assert!(
            status.success(),
            "cannot raise this test's open files limit to {want}"
        );
    }

    // A free port on an address of this test's own subnet.
    let subnet = primgr_lab::lab_subnet(primgr_lab::subnet_of(
        "systemd_unit::binary_holds_max_connections_under_the_units_limit",
    ))
    .expect("subnet");
    let ip = Ipv4Addr::new(127, 0, subnet, 1);
    let port = TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = SocketAddr::from((ip, port));
    // The daemon is a child process of prlimit, which execs primgr (the same pid). The
    // runtime is the child handle's (it is killed when the test ends, passed or failed).
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _in_runtime = runtime.enter();
    let mut daemon = primgr_lab::Daemon::process("/usr/bin/prlimit")
        .args([
            format!("--nofile={limit}:{limit}"),
            "--".to_string(),
            env!("CARGO_BIN_EXE_primgr").to_string(),
        ])
        // No database: every answer is 503 Down, which is all this test needs.
        .args([
            "--node-name",
            "node1",
            "--conninfo",
            "host=127.0.0.1 port=1 dbname=repmgr user=primgr",
        ])
        .listen(addr)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn prlimit primgr");
    let pid = daemon.pid().expect("running").to_string();

    // Up: the first connection gets an answer.
    let t0 = Instant::now();
    loop {
        let answered = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                get_state(&mut s)
            })
            .is_ok();
        if answered {
            break;
        }
        assert!(daemon.running(), "primgr exited at start");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "primgr not answering on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        open_files_limit(&pid).0,
        limit as u64,
        "the daemon runs under the unit's LimitNOFILE"
    );

    // Open them all, one request each, and keep them open.
    let t0 = Instant::now();
    let mut streams = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connection {} of {connections}: {e}", i + 1));
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("read timeout");
        let status = get_state(&mut s).unwrap_or_else(|e| {
            panic!(
                "connection {} of {connections} got no answer ({e}): primgr out of file \
                 descriptors under LimitNOFILE={limit}?",
                i + 1
            )
        });
        assert!(status.starts_with("HTTP/1.1 503"), "{status}");
        streams.push(s);
    }
    let opened_in = t0.elapsed();
    // All open at the same time, in the daemon too: one descriptor each.
    let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the daemon's fds")
        .count();
    println!(
        "{connections} connections answered in {opened_in:?}; the daemon holds {held} \
         descriptors under LimitNOFILE={limit}"
    );
    assert!(
        held >= connections,
        "the daemon holds {held} descriptors, fewer than the {connections} open connections \
         (some closed by the 10 s idle timeout while opening took {opened_in:?}?)"
    );
    drop(streams);
}
