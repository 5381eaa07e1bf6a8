//! The `on_change` hook as an operator meets it.
//!
//! Without a database (a daemon whose database refuses connections is Down, and `primgr drain`
//! gives it changes on demand): each change runs the hook once with the facts in `PRIMGR_*`,
//! and no change runs nothing; changes during a slow run are coalesced into one run with the
//! newest facts, none lost at the end, while the poll cycle and `/state` go on; a run past
//! `on_change_timeout` is killed with its whole process group and counted, a failing one too,
//! and the runner goes on; stopping the daemon kills a run in progress; the real binary takes
//! `--on-change`, logs each run and the hook's output, and refuses a path that is not an
//! executable file.
//!
//! On a real four-node repmgr lab (node1–3 in dc1, node4 in dc2), the two examples of
//! `contrib/hooks/`: `pgbouncer-repoint` on every node re-points a real pgbouncer at node1,
//! then, after a failover, at node2 (a client through pgbouncer reaches the primary each time);
//! `fence-unknown` on every node leaves the primary alone at start and after a failover, and
//! fences the old primary started again read-write (the split brain of the lab notes): it
//! answers 509, a new write session succeeds at first, and after `FENCE_AFTER` a new write
//! session fails with "read-only transaction" and a write transaction left open is ended.
//!
//! Subnets come from the lab's table (`primgr_lab::SUBNETS`): one for the pgbouncer lab, one for
//! the fence lab, and one that every daemon without a database shares (each on its own host
//! address), under the first such test's name.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Daemon, Fleet, wait_cycles};
use primgr::Config;
use primgr_lab::{Lab, LabSpec, lab_subnet, node_address, subnet_of, wait};

/// The subnet shared by the daemons without a database (each test takes its own hosts).
fn no_db_subnet() -> u8 {
    subnet_of("hooks::every_change_runs_the_hook_once_with_the_facts")
}

/// Bound on any wait for a hook run that should come within a few cycles.
const RUN_BOUND: Duration = Duration::from_secs(15);

/// A directory for one test's hook and what its runs leave behind.
struct HookDir(PathBuf);

impl HookDir {
    fn new(name: &str) -> HookDir {
        let dir = std::env::temp_dir().join(format!("primgr-hooks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).expect("hook dir");
        HookDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes an executable script `name` with `body` (after `#!/bin/sh`, `dir` set to this
    /// directory); returns its path.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(name);
        let text = format!("#!/bin/sh\ndir='{}'\n{body}", self.0.display());
        std::fs::write(&path, text).expect("write hook");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// The recording hook: each run writes its `PRIMGR_*` variables to `run-N.env` (N from 1),
    /// notes an overlap with another run, then sleeps `$dir/sleep` seconds and exits with
    /// `$dir/exit` when those files exist.
    fn recorder(&self) -> PathBuf {
        self.script(
            "record",
            r#"[ -e "$dir/running" ] && touch "$dir/overlap"
touch "$dir/running"
n=$(( $(cat "$dir/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$dir/count"
env | grep '^PRIMGR_' | sort > "$dir/run-$n.tmp" && mv "$dir/run-$n.tmp" "$dir/run-$n.env"
[ -e "$dir/sleep" ] && sleep "$(cat "$dir/sleep")"
rm -f "$dir/running"
[ -e "$dir/exit" ] && exit "$(cat "$dir/exit")"
exit 0
"#,
        )
    }

    /// The number of runs recorded so far.
    fn runs(&self) -> usize {
        std::fs::read_to_string(self.path("count"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The variables of run `n`, once it has written them (panics after [`RUN_BOUND`]).
    async fn run_env(&self, n: usize) -> BTreeMap<String, String> {
        let path = self.path(&format!("run-{n}.env"));
        wait::wait_for_every(
            &format!("hook run {n}"),
            RUN_BOUND,
            Duration::from_millis(20),
            || async { Ok(path.exists()) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        std::fs::read_to_string(&path)
            .expect("run env")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }
}

impl Drop for HookDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A daemon on `127.0.<153>.<host>:5999` whose database refuses connections (so it is Down),
/// with `hook` as `on_change` and the drain flag in `dir`.
fn no_db_config(host: u8, hook: &Path, timeout: Duration, dir: &HookDir) -> Config {
    let subnet = lab_subnet(no_db_subnet()).expect("subnet");
    let mut c = Config::for_node(format!("hooks{host}")).expect("defaults");
    c.node.listen = SocketAddr::from((Ipv4Addr::new(127, 0, subnet, host), 5999));
    c.node.state_dir = dir.state_dir();
    // Nothing listens on port 9 of the subnet's first address: refused at once.
    c.db.conninfo =
        format!("host=127.0.{subnet}.1 port=9 dbname=repmgr user=repmgr connect_timeout=1");
    c.timing.interval = common::INTERVAL;
    c.timing.max_staleness =
        Config::default_max_staleness(common::INTERVAL, c.db.db_timeout, c.timing.peer_timeout);
    c.hooks.on_change = Some(hook.to_path_buf());
    c.hooks.on_change_timeout = timeout;
    c
}

/// `/metrics` of the daemon at `addr`, as name{labels} -> value.
async fn metrics(addr: SocketAddr) -> BTreeMap<String, f64> {
    let r = primgr_lab::http::get(addr, "/metrics", Duration::from_secs(2))
        .await
        .expect("/metrics");
    r.body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// `primgr_hook_runs_total` by outcome: (ok, failed, timeout).
async fn hook_runs(addr: SocketAddr) -> (u64, u64, u64) {
    let m = metrics(addr).await;
    let n = |o: &str| {
        m.get(&format!("primgr_hook_runs_total{{outcome=\"{o}\"}}"))
            .copied()
            .unwrap_or_else(|| panic!("no primgr_hook_runs_total{{outcome={o}}} in {m:?}"))
            as u64
    };
    (n("ok"), n("failed"), n("timeout"))
}

/// Waits until `/metrics` counts `want` (ok, failed, timeout) runs.
async fn wait_hook_runs(addr: SocketAddr, want: (u64, u64, u64), within: Duration) {
    let last = std::cell::Cell::new((0, 0, 0));
    let r = wait::wait_for_every(
        &format!("hook runs {want:?}"),
        within,
        Duration::from_millis(50),
        || async {
            last.set(hook_runs(addr).await);
            Ok(last.get() == want)
        },
    )
    .await;
    if let Err(e) = r {
        panic!("{e:#}; last {:?}", last.get());
    }
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_runs_the_hook_once_with_the_facts() {
    let dir = HookDir::new("facts");
    let hook = dir.recorder();
    let config = no_db_config(201, &hook, Duration::from_secs(10), &dir);
    let listen = config.node.listen;
    let mut daemon = Daemon::start(config).await;

    let first = dir.run_env(1).await;
    let want = [
        ("PRIMGR_NODE", "hooks201"),
        ("PRIMGR_SITE", ""),
        ("PRIMGR_STATE", "Down"),
        ("PRIMGR_PREVIOUS_STATE", ""),
        ("PRIMGR_CODE", "503"),
        ("PRIMGR_PRIMARY", ""),
        ("PRIMGR_PRIMARY_HOST", ""),
        ("PRIMGR_PRIMARY_PORT", ""),
        ("PRIMGR_VOTES", "0"),
        ("PRIMGR_VOTES_NEEDED", "0"),
        ("PRIMGR_DRAINED", "0"),
        ("PRIMGR_DRAIN_REASON", ""),
        ("PRIMGR_PREVIOUS_DRAINED", ""),
        ("PRIMGR_CHANGES", "1"),
    ];
    let mut checked = 0;
    for (k, v) in want {
        assert_eq!(
            first.get(k).map(String::as_str),
            Some(v),
            "{k} in {first:?}"
        );
        checked += 1;
    }
    assert_eq!(first["PRIMGR_URL"], format!("http://{listen}"));
    assert!(
        first["PRIMGR_REASON"].contains("database"),
        "{}",
        first["PRIMGR_REASON"]
    );
    checked += 2;

    // No change, no run.
    wait_cycles(daemon.addr, 3, RUN_BOUND).await;
    assert_eq!(dir.runs(), 1, "a cycle without a change ran the hook");

    primgr::control::drain(&dir.state_dir(), "maintenance window").expect("drain");
    let drained = dir.run_env(2).await;
    for (k, v) in [
        ("PRIMGR_STATE", "Down"),
        ("PRIMGR_PREVIOUS_STATE", "Down"),
        ("PRIMGR_DRAINED", "1"),
        ("PRIMGR_DRAIN_REASON", "maintenance window"),
        ("PRIMGR_PREVIOUS_DRAINED", "0"),
        ("PRIMGR_CHANGES", "1"),
    ] {
        assert_eq!(drained.get(k).map(String::as_str), Some(v), "{k}");
        checked += 1;
    }
    primgr::control::undrain(&dir.state_dir()).expect("undrain");
    let undrained = dir.run_env(3).await;
    for (k, v) in [
        ("PRIMGR_DRAINED", "0"),
        ("PRIMGR_DRAIN_REASON", ""),
        ("PRIMGR_PREVIOUS_DRAINED", "1"),
    ] {
        assert_eq!(undrained.get(k).map(String::as_str), Some(v), "{k}");
        checked += 1;
    }
    wait_hook_runs(daemon.addr, (3, 0, 0), RUN_BOUND).await;
    let m = metrics(daemon.addr).await;
    let last = m["primgr_hook_last_duration_seconds"];
    assert!(last > 0.0 && last < 5.0, "last duration {last}");
    assert!(!dir.path("overlap").exists(), "two runs at once");
    daemon.stop().await;
    println!(
        "3 runs for 3 changes (start, drain, undrain), none for 3 cycles without one; \
         {checked} variables checked; last run {:.1} ms",
        last * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_during_a_slow_run_are_coalesced_and_the_cycle_goes_on() {
    let dir = HookDir::new("coalesce");
    let hook = dir.recorder();
    std::fs::write(dir.path("sleep"), "3").expect("sleep file");
    let config = no_db_config(202, &hook, Duration::from_secs(20), &dir);
    let mut daemon = Daemon::start(config).await;
    let addr = daemon.addr;
    let state_dir = dir.state_dir();

    // Run 1 (Down, at start) sleeps 3 s; three changes meanwhile, each published by a cycle.
    dir.run_env(1).await;
    let t0 = Instant::now();
    let mut slowest_state = Duration::ZERO;
    for drained in [true, false, true] {
        if drained {
            primgr::control::drain(&state_dir, "coalesce me").expect("drain");
        } else {
            primgr::control::undrain(&state_dir).expect("undrain");
        }
        // The poll cycle goes on while the hook runs, and /state answers at once.
        wait_cycles(addr, 1, Duration::from_secs(3)).await;
        let asked = Instant::now();
        let r = primgr_lab::http::get(addr, "/state", Duration::from_secs(1))
            .await
            .expect("/state");
        assert_eq!(r.status, 503);
        slowest_state = slowest_state.max(asked.elapsed());
    }
    let changes_took = t0.elapsed();
    assert!(
        changes_took < Duration::from_millis(2800),
        "the changes were not all made during run 1 ({changes_took:?})"
    );
    assert_eq!(dir.runs(), 1, "a run started while another ran");
    let second = dir.run_env(2).await;
    assert_eq!(second["PRIMGR_DRAINED"], "1", "the newest wins");
    assert_eq!(second["PRIMGR_PREVIOUS_DRAINED"], "0");
    let coalesced: u32 = second["PRIMGR_CHANGES"].parse().expect("a count");
    assert!(coalesced >= 2, "{second:?}");
    // The last change, made during run 2, is not lost when it ends.
    primgr::control::undrain(&state_dir).expect("undrain");
    let third = dir.run_env(3).await;
    assert_eq!(third["PRIMGR_DRAINED"], "0");
    std::fs::remove_file(dir.path("sleep")).expect("rm sleep");
    wait_hook_runs(addr, (3, 0, 0), RUN_BOUND).await;
    wait_cycles(addr, 3, RUN_BOUND).await;
    assert_eq!(dir.runs(), 3, "a run without a change");
    assert!(!dir.path("overlap").exists(), "two runs at once");
    daemon.stop().await;
    println!(
        "4 changes (3 during a 3 s run, in {changes_took:?}) gave 2 runs after the first, the \
         one after the slow run telling {coalesced} changes coalesced; cycles went on during \
         the run and /state answered within {slowest_state:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_is_killed_with_its_process_group() {
    let dir = HookDir::new("timeout");
    let hook = dir.script(
        "hang-or-exit",
        r#"if [ -e "$dir/hang" ]; then
    sleep 300 &
    echo $! > "$dir/grandchild.pid"
    echo $$ > "$dir/child.pid"
    sleep 300
fi
touch "$dir/ran-$PRIMGR_DRAINED"
exit "$(cat "$dir/exit" 2>/dev/null || echo 0)"
"#,
    );
    std::fs::write(dir.path("hang"), "").expect("hang file");
    let timeout = Duration::from_secs(1);
    let config = no_db_config(203, &hook, timeout, &dir);
    let mut daemon = Daemon::start(config).await;
    let addr = daemon.addr;

    let pids = wait::wait_for_every(
        "the hook and its background child",
        RUN_BOUND,
        Duration::from_millis(20),
        || async {
            Ok(read_pid(&dir.path("child.pid")).is_some()
                && read_pid(&dir.path("grandchild.pid")).is_some())
        },
    )
    .await;
    pids.unwrap_or_else(|e| panic!("{e:#}"));
    let started = Instant::now();
    let child = read_pid(&dir.path("child.pid")).expect("child pid");
    let grandchild = read_pid(&dir.path("grandchild.pid")).expect("grandchild pid");
    wait_hook_runs(addr, (0, 0, 1), Duration::from_secs(5)).await;
    let killed_after = started.elapsed();
    wait::wait_for_every(
        "the hook's process group gone",
        Duration::from_secs(3),
        Duration::from_millis(20),
        || async { Ok(ended(child) && ended(grandchild)) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}: child {child} grandchild {grandchild}"));
    let m = metrics(addr).await;
    let took = m["primgr_hook_last_duration_seconds"];
    assert!(
        (timeout.as_secs_f64()..timeout.as_secs_f64() + 1.0).contains(&took),
        "a timed-out run took {took} s"
    );

    // The runner goes on: the next change runs the hook (exit 0), then one that fails.
    std::fs::remove_file(dir.path("hang")).expect("rm hang");
    primgr::control::drain(&dir.state_dir(), "after the timeout").expect("drain");
    wait_hook_runs(addr, (1, 0, 1), RUN_BOUND).await;
    assert!(dir.path("ran-1").exists());
    std::fs::write(dir.path("exit"), "3").expect("exit file");
    primgr::control::undrain(&dir.state_dir()).expect("undrain");
    wait_hook_runs(addr, (1, 1, 1), RUN_BOUND).await;
    assert!(dir.path("ran-0").exists());
    daemon.stop().await;
    println!(
        "a hook with a background child, on_change_timeout {timeout:?}: counted as timeout \
         {killed_after:?} after it started (run {took:.2} s), both processes ended; then \
         one run ok and one failed (exit 3), each counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_daemon_kills_a_run_in_progress() {
    let dir = HookDir::new("stop");
    let hook = dir.script("hang", "echo $$ > \"$dir/child.pid\"\nexec sleep 300\n");
    let config = no_db_config(204, &hook, Duration::from_secs(600), &dir);
    let mut daemon = Daemon::start(config).await;
    wait::wait_for_every(
        "the hook running",
        RUN_BOUND,
        Duration::from_millis(20),
        || async { Ok(read_pid(&dir.path("child.pid")).is_some()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let child = read_pid(&dir.path("child.pid")).expect("pid");
    let took = daemon.stop().await;
    assert!(
        took < Duration::from_secs(3),
        "the daemon took {took:?} to stop"
    );
    assert!(ended(child), "the hook outlived its daemon");
    println!("a daemon stopped in {took:?} with a hook running, which it killed");
}

/// The real binary: `--on-change` and `--on-change-timeout`, each run logged with the hook's
/// output; a path that is not an executable file refused at start with exit 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_the_flag_and_logs_each_run() {
    let dir = HookDir::new("binary");
    let hook = dir.script(
        "hello",
        "echo \"hello from the hook: $PRIMGR_NODE is $PRIMGR_STATE, notify=${NOTIFY_SOCKET:-unset}\"\n\
         echo oops >&2\n",
    );
    let subnet = lab_subnet(no_db_subnet()).expect("subnet");
    let listen = format!("127.0.{subnet}.205:5999");
    let conninfo = format!("host=127.0.{subnet}.1 port=9 dbname=repmgr user=repmgr");
    let state_dir = dir.state_dir().display().to_string();
    let base = [
        "--node-name",
        "flagnode",
        "--listen",
        &listen,
        "--conninfo",
        &conninfo,
        "--state-dir",
        &state_dir,
    ];
    for (bad, why) in [
        ("hooks/hello", "absolute path"),
        ("/etc/passwd", "not executable"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_primgr"))
            .args(base)
            .args(["--on-change", bad])
            .output()
            .await
            .expect("run primgr");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{bad}: {err}");
        assert!(
            err.contains("`on_change`") && err.contains(why),
            "{bad}: {err}"
        );
    }

    let log = dir.path("daemon.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_primgr"))
        .args(base)
        .arg("--on-change")
        .arg(&hook)
        .args(["--on-change-timeout", "5s"])
        // systemd's socket is the service's, not the hook's.
        .env("NOTIFY_SOCKET", dir.path("no-notify-socket"))
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start primgr");
    let text = std::cell::RefCell::new(String::new());
    let seen = wait::wait_for_every(
        "the run in the log",
        RUN_BOUND,
        Duration::from_millis(50),
        || async {
            *text.borrow_mut() = std::fs::read_to_string(&log).unwrap_or_default();
            let t = text.borrow();
            Ok(t.contains("on_change for Down (was nothing yet): exit 0 in"))
        },
    )
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let text = text.into_inner();
    seen.unwrap_or_else(|e| panic!("{e:#}\n{text}"));
    for line in [
        "on_change stdout: hello from the hook: flagnode is Down, notify=unset",
        "on_change stderr: oops",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    println!("2 bad --on-change paths refused with exit 64; a run logged with its 2 output lines");
}

// ---------------------------------------------------------------------------------------------
// The examples of contrib/hooks/ on a real cluster.

/// The path of a script of `contrib/hooks/`.
fn contrib(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/hooks")
        .join(name)
}

/// A wrapper that sets `env` (name, value) and runs `contrib/hooks/<name>`, as a systemd
/// drop-in's `Environment=` lines do for the service; it also appends the script's output
/// and exit status to [`hook_log`] (in-process daemons log nowhere a test can read).
fn wrapper(lab: &Lab, node: &str, name: &str, env: &[(&str, String)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mut text = String::from("#!/bin/sh\n");
    for (k, v) in env {
        text.push_str(&format!("export {k}='{v}'\n"));
    }
    text.push_str(&format!(
        "start=$(date -u +%T.%N)\nout=$('{}' 2>&1); rc=$?\n\
         printf '%s-%s %s %s: %s\\n' \"$start\" \"$(date -u +%T.%N)\" \"$PRIMGR_STATE\" \"exit $rc\" \"$out\" >> '{}'\n\
         printf '%s\\n' \"$out\"\nexit $rc\n",
        contrib(name).display(),
        hook_log(lab, node).display()
    ));
    let path = lab.dir().join(format!("{name}-{node}"));
    std::fs::write(&path, text).expect("wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The wall clock (UTC) as the wrappers write it, to the millisecond: HH:MM:SS.mmm.
fn clock() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = t.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.subsec_millis()
    )
}

/// What the wrapper of `node` recorded of its runs.
fn hook_log(lab: &Lab, node: &str) -> PathBuf {
    lab.dir().join(format!("hook-{node}.log"))
}

/// Every node's [`hook_log`], for a failure message.
fn hook_logs(lab: &Lab) -> String {
    lab.node_names()
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(hook_log(lab, n)).unwrap_or_default();
            format!("--- {n}'s hook runs:\n{text}")
        })
        .collect()
}

/// A pgbouncer (Debian's) on `addr:6432`, run as `postgres` from `dir`, killed when dropped.
struct Pgbouncer {
    dir: PathBuf,
    addr: Ipv4Addr,
}

impl Pgbouncer {
    fn ini(&self) -> PathBuf {
        self.dir.join("pgbouncer.ini")
    }

    /// Writes the configuration with `line` in [databases] and starts pgbouncer.
    fn start(dir: PathBuf, addr: Ipv4Addr, line: &str) -> Pgbouncer {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&dir).expect("pgbouncer dir");
        let ini = format!(
            "[databases]\n{line}\n\n[pgbouncer]\nlisten_addr = {addr}\nlisten_port = 6432\n\
             unix_socket_dir =\nauth_type = trust\nauth_file = {d}/userlist.txt\n\
             admin_users = pgbouncer\npool_mode = session\nserver_connect_timeout = 2\n\
             server_login_retry = 1\n\
             logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
            d = dir.display()
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("ini");
        std::fs::write(
            dir.join("userlist.txt"),
            "\"repmgr\" \"\"\n\"pgbouncer\" \"\"\n",
        )
        .expect("userlist");
        for f in ["pgbouncer.ini", "userlist.txt"] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        let status = std::process::Command::new("chown")
            .args(["postgres:postgres", &dir.display().to_string()])
            .status()
            .expect("chown");
        assert!(status.success());
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "pgbouncer", "-d", "-q"])
            .arg(dir.join("pgbouncer.ini"))
            .current_dir(&dir)
            .output()
            .expect("pgbouncer (contrib/install-deps installs it)");
        assert!(
            out.status.success(),
            "pgbouncer did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Pgbouncer { dir, addr }
    }

    /// `inet_server_addr()` and `pg_is_in_recovery()` of a new client through pgbouncer.
    async fn reaches(&self) -> anyhow::Result<(String, bool)> {
        let client = connect(&format!(
            "host={} port=6432 user=repmgr dbname=repmgr connect_timeout=2",
            self.addr
        ))
        .await?;
        let row = client
            .query_one("SELECT host(inet_server_addr()), pg_is_in_recovery()", &[])
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// The [databases] line of `db`.
    fn line(&self, db: &str) -> String {
        std::fs::read_to_string(self.ini())
            .expect("ini")
            .lines()
            .find(|l| l.starts_with(&format!("{db} =")))
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.dir.join("pgbouncer.pid")) {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            for _ in 0..50 {
                if ended(pid) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A tokio-postgres client on `conninfo` (its connection driven by a task).
async fn connect(conninfo: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Waits until a new client through pgbouncer reaches `want` (an address), not in recovery.
async fn wait_reaches(
    lab: &Lab,
    pgbouncer: &Pgbouncer,
    want: Ipv4Addr,
    within: Duration,
) -> Duration {
    let last = std::cell::RefCell::new(String::new());
    let r = wait::wait_for_every(
        &format!("a client through pgbouncer reaching {want}"),
        within,
        Duration::from_millis(50),
        || async {
            let got = pgbouncer.reaches().await;
            *last.borrow_mut() = format!("{got:?}");
            Ok(matches!(got, Ok((a, false)) if a == want.to_string()))
        },
    )
    .await;
    r.unwrap_or_else(|e| panic!("{e:#}; last {}\n{}", last.borrow(), hook_logs(lab)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_follows_the_primary_through_a_failover() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "hooks::pgbouncer_follows_the_primary_through_a_failover",
    )))
    .await
    .expect("lab builds");
    let subnet = lab.subnet();
    let bouncer_addr = node_address(subnet, 90);
    // Pointed at nowhere to start with: the first primary's hook must point it at node1.
    let nowhere = node_address(subnet, 89);
    let pgbouncer = Pgbouncer::start(
        lab.dir().join("pgbouncer"),
        bouncer_addr,
        &format!("repmgr = host={nowhere} port=5432 dbname=repmgr pool_size=5"),
    );
    let ini = pgbouncer.ini().display().to_string();
    let admin = format!("host={bouncer_addr} port=6432 dbname=pgbouncer user=pgbouncer");
    let mut fleet = Fleet::start_with(&lab, |node, c| {
        let env = [
            ("PGBOUNCER_INI", ini.clone()),
            ("PGBOUNCER_DB", "repmgr".to_string()),
            ("PGBOUNCER_ADMIN", admin.clone()),
        ];
        c.hooks.on_change = Some(wrapper(&lab, node, "pgbouncer-repoint", &env));
        c.hooks.on_change_timeout = Duration::from_secs(20);
    })
    .await;
    fleet.wait_normal().await;
    let node1_200 = clock();
    let to_node1 = wait_reaches(&lab, &pgbouncer, lab.addr("node1"), RUN_BOUND).await;
    assert_eq!(
        pgbouncer.line("repmgr"),
        format!(
            "repmgr = host={} port=5432 dbname=repmgr pool_size=5",
            lab.addr("node1")
        )
    );

    lab.failover("node1", "node2").await.expect("failover");
    fleet.wait_after_failover().await;
    let node2_200 = clock();
    let to_node2 = wait_reaches(&lab, &pgbouncer, lab.addr("node2"), RUN_BOUND).await;
    assert_eq!(
        pgbouncer.line("repmgr"),
        format!(
            "repmgr = host={} port=5432 dbname=repmgr pool_size=5",
            lab.addr("node2")
        )
    );
    // A write through pgbouncer lands on the new primary.
    let client = connect(&format!(
        "host={bouncer_addr} port=6432 user=repmgr dbname=repmgr connect_timeout=2"
    ))
    .await
    .expect("through pgbouncer");
    client
        .batch_execute(
            "CREATE TABLE public.hook_probe (n int); INSERT INTO public.hook_probe VALUES (1)",
        )
        .await
        .expect("a write through pgbouncer");
    let on_node2 = lab
        .psql("node2", "SELECT count(*) FROM public.hook_probe")
        .await
        .expect("read on node2");
    assert_eq!(on_node2, "1");

    // Every node ran the hook; none failed; only the primaries re-pointed pgbouncer.
    let mut runs = BTreeMap::new();
    for node in lab.node_names() {
        let (ok, failed, timeout) = hook_runs(fleet.addr(&node)).await;
        assert_eq!((failed, timeout), (0, 0), "{node}");
        assert!(ok >= 1, "{node} never ran its hook");
        runs.insert(node, ok);
    }
    let logs = hook_logs(&lab);
    fleet.stop_all().await;
    drop(pgbouncer);
    lab.teardown().await.expect("teardown");
    println!(
        "a client through pgbouncer reached node1 {to_node1:?} after node1's 200 was seen (at \
         {node1_200}), node2 {to_node2:?} after node2's 200 was seen (at {node2_200}, after the \
         failover); a write through it landed on node2; runs ok per node {runs:?}, none \
         failed; each run (start-end, UTC):\n{logs}"
    );
}

/// Whether a new session on `node` can write: Ok, or the server's error message.
async fn try_write(lab: &Lab, node: &str) -> Result<(), String> {
    let client = connect(&format!(
        "host={} port=5432 user=repmgr dbname=repmgr connect_timeout=2",
        lab.addr(node)
    ))
    .await
    .map_err(|e| format!("connect: {e}"))?;
    client
        .batch_execute("INSERT INTO public.fence_probe VALUES (1)")
        .await
        .map_err(|e| {
            e.as_db_error()
                .map_or(e.to_string(), |d| d.message().to_string())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_makes_a_split_brain_old_primary_refuse_writes() {
    const FENCE_AFTER: Duration = Duration::from_secs(15);
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "hooks::the_fence_makes_a_split_brain_old_primary_refuse_writes",
    )))
    .await
    .expect("lab builds");
    lab.psql("node1", "CREATE TABLE public.fence_probe (n int)")
        .await
        .expect("table");
    let fence_log = |node: &str| lab.dir().join(format!("fence-{node}.log"));
    let mut fleet = Fleet::start_with(&lab, |node, c| {
        let env = [
            ("FENCE_AFTER", FENCE_AFTER.as_secs().to_string()),
            (
                "FENCE_CONNINFO",
                format!(
                    "host={} port=5432 user=repmgr dbname=repmgr",
                    lab.addr(node)
                ),
            ),
            ("FENCE_LOG", fence_log(node).display().to_string()),
        ];
        c.hooks.on_change = Some(wrapper(&lab, node, "fence-unknown", &env));
        c.hooks.on_change_timeout = FENCE_AFTER + Duration::from_secs(20);
    })
    .await;
    // At start node1 is Unknown for a few seconds (votes, handoff); after a failover node2 is,
    // while it hands off. FENCE_AFTER is longer than both: neither is fenced.
    fleet.wait_normal().await;
    lab.failover("node1", "node2").await.expect("failover");
    fleet.wait_after_failover().await;

    lab.start("node1").await.expect("node1 starts, read-write");
    let t509 = Instant::now();
    fleet
        .wait_codes(&[("node1", 509), ("node2", 200)], common::settle_bound())
        .await;
    let seen_509 = t509.elapsed();
    let t0 = Instant::now();
    // Before FENCE_AFTER: node1 still takes writes (what the fence is for).
    try_write(&lab, "node1")
        .await
        .expect("a write on node1 before the fence");
    let writer = connect(&format!(
        "host={} port=5432 user=repmgr dbname=repmgr application_name=open-writer",
        lab.addr("node1")
    ))
    .await
    .expect("a session on node1");
    writer
        .batch_execute("BEGIN; INSERT INTO public.fence_probe VALUES (2)")
        .await
        .expect("an open write transaction on node1");
    let early = t0.elapsed();
    assert!(early < FENCE_AFTER / 2, "the test itself took {early:?}");

    let last = std::cell::RefCell::new(String::new());
    let fenced = wait::wait_for_every(
        "a new write session on node1 refused",
        FENCE_AFTER + Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let r = try_write(&lab, "node1").await;
            *last.borrow_mut() = format!("{r:?}");
            Ok(matches!(&r, Err(m) if m.contains("read-only transaction")))
        },
    )
    .await;
    fenced.unwrap_or_else(|e| panic!("{e:#}; last {}", last.borrow()));
    let fenced_after = t0.elapsed();
    assert!(
        fenced_after + Duration::from_secs(1) >= FENCE_AFTER,
        "fenced {fenced_after:?} after the 509 was seen, before FENCE_AFTER ({FENCE_AFTER:?})"
    );
    // The open write transaction was ended (the fence ends sessions once new transactions
    // are read-only: wait for its last line).
    wait::wait_for_every(
        "the fence's last line",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let log = std::fs::read_to_string(fence_log("node1")).unwrap_or_default();
            Ok(log.contains("fenced. Undo:"))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", hook_logs(&lab)));
    let commit = writer.batch_execute("COMMIT").await;
    assert!(commit.is_err(), "the open write transaction survived");
    let log = std::fs::read_to_string(fence_log("node1")).expect("node1's fence log");
    for what in [
        "fencing if it stays Unknown for 15 s",
        "new transactions are read-only",
        "application open-writer",
        "fenced. Undo:",
    ] {
        assert!(
            log.contains(what),
            "no {what:?} in node1's fence log:\n{log}"
        );
    }
    // The real primary was never fenced, nor anyone else; every run ended well.
    try_write(&lab, "node2")
        .await
        .expect("node2, the primary, takes writes");
    let node2_log = std::fs::read_to_string(fence_log("node2")).unwrap_or_default();
    for node in ["node2", "node3", "node4"] {
        let l = std::fs::read_to_string(fence_log(node)).unwrap_or_default();
        assert!(!l.contains("fenced."), "{node} was fenced:\n{l}");
    }
    let mut runs = BTreeMap::new();
    for node in lab.node_names() {
        let (ok, failed, timeout) = hook_runs(fleet.addr(&node)).await;
        assert_eq!((failed, timeout), (0, 0), "{node}");
        runs.insert(node, ok);
    }
    fleet.stop_all().await;
    lab.teardown().await.expect("teardown");
    println!(
        "node1 answered 509 {seen_509:?} after it started read-write; a write then succeeded; \
         {fenced_after:?} after the 509 (FENCE_AFTER {FENCE_AFTER:?}) a new write session \
         failed with \"read-only transaction\" and the open write transaction was ended; \
         node2 (Unknown while handing off) never fenced; runs ok per node {runs:?}\n\
         node1's fence log:\n{log}node2's fence log:\n{node2_log}"
    );
}
