//! The systemd unit as shipped (`contrib/primgr.service`, installed by the package as
//! `/lib/systemd/system/primgr.service`), checked for what an operator relies on: stopping it
//! never touches PostgreSQL (a dedicated user, so `RemoveIPC=yes` cannot remove the database's
//! shared memory), its file descriptor limit lets primgr reach its connection caps (checked
//! live: the binary holds `server::MAX_CONNECTIONS` connections under that limit), readiness and
//! reload work the systemd way, the sandbox stays, a start that fails because another process
//! holds the port is retried forever (not given up by systemd's start limit), `MemoryMax` and
//! `TasksMax` hold at the connection caps (measured on the binary), and `systemd-analyze
//! verify` accepts it.
//! No systemd needed (works in a container): `systemd-analyze verify` only loads unit files.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

/// The tests that hold `server::MAX_CONNECTIONS` connections run one at a time: together
/// they would compete for this process's descriptors and the machine's two cores, and the
/// daemon's 10 s head timeout would close connections before they are all open.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// This test process holds the client ends of `connections` connections: raise its own soft
/// limit if needed (root may also raise the hard limit).
fn raise_own_open_files(connections: usize) {
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
}

/// Kills the daemon when the test ends, passed or failed.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    // One client address holds every slot but the members' reserve (with the per-client
    // limit raised to its ceiling).
    let connections = primgr::server::MAX_CONNECTIONS - primgr::server::MEMBER_RESERVE;
    let _alone = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    raise_own_open_files(connections);

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
            "--max-connections-per-client",
            "3968",
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

/// Exit status of `primgr` when `listen` cannot be bound (main.rs, EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: i32 = 69;

/// A systemd time span (`2`, `2s`, `500ms`, `1min`, `infinity`); a bare number is seconds.
fn timespan(value: &str) -> Duration {
    if value == "infinity" {
        return Duration::MAX;
    }
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let n: u64 = value[..digits]
        .parse()
        .unwrap_or_else(|_| panic!("{value:?}: not a time span"));
    match value[digits..].trim() {
        "" | "s" | "sec" => Duration::from_secs(n),
        "ms" | "msec" => Duration::from_millis(n),
        "min" | "m" => Duration::from_secs(60 * n),
        "h" | "hr" => Duration::from_secs(3600 * n),
        unit => panic!("{value:?}: unknown unit {unit:?}"),
    }
}

/// systemd's start rate limit: whether a unit whose every start fails, restarted
/// `restart_sec` after each failure, is refused a start ("start request repeated too
/// quickly", then it stays failed) within `over`. The rule of systemd's `ratelimit_below()`
/// (src/basic/ratelimit.c): a window begins at a start; later starts within `interval` of that
/// beginning count, and the one past `burst` is refused; a start more than `interval` after
/// the beginning opens a new window. An interval of 0 disables the limit. Each failing start
/// is taken to last no time at all, which only makes starts denser (the pessimistic case).
fn given_up(interval: Duration, burst: u32, restart_sec: Duration, over: Duration) -> bool {
    if interval.is_zero() {
        return false;
    }
    let (mut begin, mut num) = (None::<Duration>, 0u32);
    let mut t = Duration::ZERO;
    while t <= over {
        match begin {
            Some(b) if t - b <= interval => {
                num += 1;
                if num > burst {
                    return true;
                }
            }
            _ => (begin, num) = (Some(t), 1),
        }
        t += restart_sec;
    }
    false
}

/// A start that fails (here: the port is held by another process) is retried for as long as
/// it fails, every RestartSec, never given up: the start limit is off, the bind failure's exit
/// status is not among those that prevent a restart, and the retries are spaced.
#[test]
fn a_failing_start_is_retried_forever_without_hammering() {
    let unit = unit();
    assert_eq!(service(&unit, "Restart"), "always");
    let prevented: Vec<&str> = values(&unit, "Service", "RestartPreventExitStatus")
        .into_iter()
        .flat_map(str::split_whitespace)
        .collect();
    assert!(
        !prevented.contains(&EXIT_UNAVAILABLE.to_string().as_str()),
        "RestartPreventExitStatus={prevented:?}: a bind failure would never be retried"
    );
    let restart = timespan(service(&unit, "RestartSec"));
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(10)).contains(&restart),
        "RestartSec={restart:?}: between 1 s (no busy loop) and 10 s (haproxy waits for it)"
    );
    // systemd's defaults apply unless [Unit] sets them (DefaultStartLimitIntervalSec=10s,
    // DefaultStartLimitBurst=5).
    let interval = values(&unit, "Unit", "StartLimitIntervalSec")
        .last()
        .map_or(Duration::from_secs(10), |v| timespan(v));
    let burst = values(&unit, "Unit", "StartLimitBurst")
        .last()
        .map_or(5, |v| v.parse().expect("StartLimitBurst is a number"));
    // The model sees the unit as it was (RestartSec=1, the default limit) give up within a
    // minute, and with a 2 s RestartSec too: that is the failure this test guards against.
    let minute = Duration::from_secs(60);
    assert!(given_up(
        Duration::from_secs(10),
        5,
        Duration::from_secs(1),
        minute
    ));
    assert!(given_up(
        Duration::from_secs(10),
        5,
        Duration::from_secs(2),
        minute
    ));
    let day = Duration::from_secs(24 * 3600);
    assert!(
        !given_up(interval, burst, restart, day),
        "StartLimitIntervalSec={interval:?} StartLimitBurst={burst} RestartSec={restart:?}: \
         systemd gives up restarting a primgr that cannot start (another process holds its \
         port) and it stays down after the port is free"
    );
    println!(
        "failing starts every {restart:?} with StartLimitIntervalSec={interval:?}: {} starts in \
         a day, none refused",
        day.as_secs() / restart.as_secs().max(1)
    );
}

/// Waits at most `within` for `child` to exit; its status code.
fn exit_code_within(child: &mut Child, within: Duration) -> Option<i32> {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        if t0.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What systemd sees when another process holds the port: primgr says so and exits 69 (each
/// restart the same while the port is held); the first start after the port is freed serves.
#[test]
fn a_held_port_exits_69_and_the_next_start_after_it_is_freed_serves() {
    // Another process's socket on the address primgr is configured for (a subnet no other
    // test uses).
    let subnet = primgr_lab::lab_subnet(primgr_lab::subnet_of(
        "systemd_unit::a_held_port_exits_69_and_the_next_start_after_it_is_freed_serves",
    ))
    .expect("subnet");
    let ip = Ipv4Addr::new(127, 0, subnet, 1);
    let holder = TcpListener::bind((ip, 0)).expect("hold a port");
    let addr = holder.local_addr().expect("held address");
    let dir = scratch_dir("held-port");
    let start = |log: &str| {
        Command::new(env!("CARGO_BIN_EXE_primgr"))
            .args(["--max-connections-per-client", "3968"])
            .args(["--node-name", "node1", "--listen", &addr.to_string()])
            .args([
                "--conninfo",
                "host=127.0.0.1 port=1 dbname=repmgr user=primgr",
            ])
            .arg("--state-dir")
            .arg(&dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).expect("log file"))
            .spawn()
            .expect("spawn primgr")
    };
    for attempt in 1..=3 {
        let mut child = Daemon(start("held.log"));
        let code = exit_code_within(&mut child.0, Duration::from_secs(10));
        let log = std::fs::read_to_string(dir.join("held.log")).unwrap_or_default();
        assert_eq!(
            code,
            Some(EXIT_UNAVAILABLE),
            "start {attempt} with {addr} held elsewhere: {log}"
        );
        assert!(
            log.contains(&format!("cannot listen on {addr} (`listen`)")) && log.contains("in use"),
            "the log says why: {log}"
        );
    }
    drop(holder);
    // systemd starts it again (Restart=always, 69 not prevented, no start limit): it serves.
    let mut daemon = Daemon(start("freed.log"));
    let t0 = Instant::now();
    loop {
        let answered =
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                get_state(&mut s)
            });
        if let Ok(status) = answered {
            assert!(status.starts_with("HTTP/1.1 503"), "{status}");
            break;
        }
        assert!(
            daemon.0.try_wait().expect("try_wait").is_none(),
            "primgr exited with the port free: {}",
            std::fs::read_to_string(dir.join("freed.log")).unwrap_or_default()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not serving on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "3 starts with {addr} held: exit {EXIT_UNAVAILABLE} each; first start after it was \
         freed: serving in {:?}",
        t0.elapsed()
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `MemoryMax=` value in bytes (`K`, `M`, `G` suffixes are powers of 1024).
fn bytes(value: &str) -> u64 {
    let (n, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("{value:?}: not a size"));
    n * match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => panic!("{value:?}: unknown unit"),
    }
}

/// A `kB` field of /proc/<pid>/status, in bytes.
fn status_bytes(pid: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kb * 1024
}

/// The kernel's default receive buffer of a TCP socket (`net.ipv4.tcp_rmem`, middle value):
/// what it may queue for a connection that primgr does not read yet.
fn tcp_receive_buffer() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(131_072)
}

/// The arithmetic of the unit's `MemoryMax=` and `TasksMax=` comments, against the real binary
/// at its worst: `server::MAX_CONNECTIONS` connections each holding an incomplete request head
/// just under `server::MAX_HEAD_BYTES`. Its peak RSS, plus what the kernel may queue for every
/// connection, plus the other caps' share, stays under MemoryMax; its threads stay under
/// TasksMax.
#[test]
fn memory_and_tasks_limits_hold_at_the_connection_cap() {
    let unit = unit();
    let memory_max = bytes(service(&unit, "MemoryMax"));
    let tasks_max: usize = service(&unit, "TasksMax")
        .parse()
        .expect("TasksMax is a number");
    let limit = soft_limit(service(&unit, "LimitNOFILE"));
    // One client address holds every slot but the members' reserve (with the per-client
    // limit raised to its ceiling).
    let connections = primgr::server::MAX_CONNECTIONS - primgr::server::MEMBER_RESERVE;
    let head = primgr::server::MAX_HEAD_BYTES - 1024;
    let _alone = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    raise_own_open_files(connections);

    let subnet = primgr_lab::lab_subnet(primgr_lab::subnet_of(
        "systemd_unit::memory_and_tasks_limits_hold_at_the_connection_cap",
    ))
    .expect("subnet");
    let ip = Ipv4Addr::new(127, 0, subnet, 1);
    let port = TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = SocketAddr::from((ip, port));
    let mut daemon = Daemon(
        Command::new("prlimit")
            .arg(format!("--nofile={limit}:{limit}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_primgr"))
            .args(["--max-connections-per-client", "3968"])
            .args(["--node-name", "node1", "--listen", &addr.to_string()])
            .args([
                "--conninfo",
                "host=127.0.0.1 port=1 dbname=repmgr user=primgr",
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prlimit primgr"),
    );
    let pid = daemon.0.id().to_string();
    let t0 = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            get_state(&mut s)
        })
        .is_err()
    {
        assert!(
            daemon.0.try_wait().expect("try_wait").is_none(),
            "primgr exited"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not serving on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let threads = || std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    let at_rest = status_bytes(&pid, "VmRSS");

    let mut pad = b"GET /state HTTP/1.1\r\nHost: primgr\r\nX-Pad: ".to_vec();
    pad.resize(head, b'a');
    let t0 = Instant::now();
    let mut streams = Vec::with_capacity(connections);
    let mut most_threads = threads();
    for i in 0..connections {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connection {} of {connections}: {e}", i + 1));
        s.write_all(&pad)
            .unwrap_or_else(|e| panic!("head of connection {}: {e}", i + 1));
        streams.push(s);
        if i % 512 == 0 {
            most_threads = most_threads.max(threads());
        }
    }
    let sent_in = t0.elapsed();
    // The daemon reads the heads as they come; its peak is reached before its head timeout
    // (server::IDLE_TIMEOUT) starts closing them.
    while t0.elapsed() < primgr::server::IDLE_TIMEOUT {
        most_threads = most_threads.max(threads());
        std::thread::sleep(Duration::from_millis(200));
    }
    let peak = status_bytes(&pid, "VmHWM");
    drop(streams);

    let kernel = connections as u64 * tcp_receive_buffer();
    // The other caps' share, as in the unit's comment: agent, pool and peer connections.
    let mib = 1u64 << 20;
    let others = 36 * mib + 15 * mib + 38 * mib;
    let total = peak + kernel + others;
    println!(
        "{connections} connections with {head}-byte heads sent in {sent_in:?}: RSS {} MiB at \
         rest, peak {} MiB ({} KiB per connection); + kernel receive buffers {} MiB + other \
         caps {} MiB = {} MiB <= MemoryMax {} MiB; threads at most {most_threads} <= TasksMax \
         {tasks_max}",
        at_rest / mib,
        peak / mib,
        (peak - at_rest) / connections as u64 / 1024,
        kernel / mib,
        others / mib,
        total / mib,
        memory_max / mib
    );
    assert!(
        peak - at_rest >= connections as u64 * 32 * 1024,
        "the daemon held less than half of every head ({} MiB): the measurement measured nothing",
        (peak - at_rest) / mib
    );
    assert!(total <= memory_max, "MemoryMax={memory_max} < {total}");
    assert!(
        most_threads <= tasks_max,
        "{most_threads} threads > TasksMax={tasks_max}"
    );
}
