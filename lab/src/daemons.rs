//! primgr daemons, one way to launch them: a [`DaemonBuilder`] says what runs — a task in this
//! process running `primgr::run_with` ([`Daemon::in_process`]), or a child process of a binary
//! ([`Daemon::process`]; [`Lab::daemon`] gives a lab node's usual command line) — and
//! [`DaemonBuilder::spawn`] starts it at once, without waiting for readiness (so tests can start
//! daemons in phases), and returns the one handle, [`Daemon`]: where it listens, readiness, its
//! end, stop, and for a child process its pid, log, signals (freeze, thaw, SIGHUP) and `/proc`
//! figures.
//!
//! A child process runs in its own process group (signals to the test's terminal do not reach
//! it; stopping it stops whatever it forked), with stdin from `/dev/null` and stdout and stderr
//! appended to its log when it has one. One with a pid file (a lab node's daemon:
//! `<dir>/daemon-<node>.pid`) is also found and stopped by the lab's teardown, its `Drop` and
//! the leftover cleanup of a crashed process. A dropped handle stops its daemon (SIGKILL to a
//! child's group; the stop signal to an in-process one), except a lab daemon while
//! `PRIMGR_LAB_KEEP` is set.
//!
//! The handle is a test harness's: the few helpers a test calls to wait for something
//! ([`Daemon::start`], [`Daemon::wait_listening`], [`Daemon::wait_log`], [`Daemon::stop`] of an
//! in-process daemon that failed) panic with what they saw instead of returning an error.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cmd::log_tail;
use crate::http;
use crate::lab::Lab;
use crate::procfs;
use crate::spec::PG_PORT;
use crate::wait::wait_for_every;

/// What a daemon will be; [`DaemonBuilder::spawn`] starts it.
pub struct DaemonBuilder {
    /// Names it in errors ("daemon of node1").
    what: String,
    kind: Kind,
}

enum Kind {
    InProcess(Box<primgr::Config>, Option<primgr::poller::CycleHook>),
    Process(Box<ProcessSpec>),
}

struct ProcessSpec {
    program: PathBuf,
    args: Vec<String>,
    /// Where it listens, when known (a `--listen` flag or [`DaemonBuilder::at`]).
    addr: Option<SocketAddr>,
    env: Vec<(String, Option<String>)>,
    log: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    dir: Option<PathBuf>,
}

impl DaemonBuilder {
    /// Names the daemon in errors and in its log's header line.
    pub fn named(mut self, what: impl Into<String>) -> Self {
        self.what = what.into();
        self
    }

    /// Where it listens: `config.node.listen` of an in-process daemon; `--listen <addr>` appended
    /// to a child's arguments.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        match &mut self.kind {
            Kind::InProcess(c, _) => c.node.listen = addr,
            Kind::Process(p) => {
                p.args.extend(["--listen".to_string(), addr.to_string()]);
                p.addr = Some(addr);
            }
        }
        self
    }

    /// Where a child listens when its arguments or its configuration file say so already
    /// (no flag added).
    pub fn at(mut self, addr: SocketAddr) -> Self {
        if let Kind::Process(p) = &mut self.kind {
            p.addr = Some(addr);
        }
        self
    }

    /// Called at the start of every poll cycle of an in-process daemon, with its number (to
    /// plant a failure).
    pub fn cycle_hook(mut self, hook: primgr::poller::CycleHook) -> Self {
        if let Kind::InProcess(_, h) = &mut self.kind {
            *h = Some(hook);
        }
        self
    }

    /// Runs it without the lab's peer key file ([`peer_key_file`]): an in-process daemon with
    /// no `peer_key_file` (address mode) unless the test sets another; a child without the
    /// `--peer-key-file` the lab added (the test may add its own).
    pub fn without_lab_key(mut self) -> Self {
        let lab = peer_key_file();
        match &mut self.kind {
            Kind::InProcess(c, _) => {
                if c.peer.peer_key_file.as_ref() == Some(&lab) {
                    c.peer.peer_key_file = None;
                }
            }
            Kind::Process(p) => {
                let lab = lab.display().to_string();
                if let Some(i) = p
                    .args
                    .windows(2)
                    .position(|w| w[0] == "--peer-key-file" && w[1] == lab)
                {
                    p.args.drain(i..i + 2);
                }
            }
        }
        self
    }

    /// Appends an argument of a child.
    pub fn arg(self, arg: impl Into<String>) -> Self {
        self.args([arg.into()])
    }

    /// Appends arguments of a child.
    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        if let Kind::Process(p) = &mut self.kind {
            p.args.extend(args.into_iter().map(Into::into));
        }
        self
    }

    /// Sets an environment variable of a child (it inherits the others).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        if let Kind::Process(p) = &mut self.kind {
            p.env.push((key.to_string(), Some(value.to_string())));
        }
        self
    }

    /// Removes an environment variable from a child's environment.
    pub fn env_remove(mut self, key: &str) -> Self {
        if let Kind::Process(p) = &mut self.kind {
            p.env.push((key.to_string(), None));
        }
        self
    }

    /// Appends a child's stdout and stderr to `path` (created if missing), after a header
    /// line with its command line.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        if let Kind::Process(p) = &mut self.kind {
            p.log = Some(path.into());
        }
        self
    }

    /// Records a child's pid in `path` (`<pid>\n<listen address>\n`), so that a lab's cleanup
    /// finds it (and stops it only while its command line still names that address).
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        if let Kind::Process(p) = &mut self.kind {
            p.pid_file = Some(path.into());
        }
        self
    }

    /// A child's working directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        if let Kind::Process(p) = &mut self.kind {
            p.dir = Some(dir.into());
        }
        self
    }

    /// Starts the daemon and returns at once (a few milliseconds; [`Daemon::ready`] waits until
    /// it answers). An in-process daemon's listeners (`listen`, and `agent_listen` when set)
    /// are bound here, so it accepts connections from the start; needs a tokio runtime.
    pub fn spawn(self) -> Result<Daemon> {
        let what = self.what;
        match self.kind {
            Kind::InProcess(config, hook) => spawn_in_process(what, *config, hook),
            Kind::Process(spec) => spawn_process(what, *spec),
        }
    }
}

fn spawn_in_process(
    what: String,
    config: primgr::Config,
    cycle_hook: Option<primgr::poller::CycleHook>,
) -> Result<Daemon> {
    let listener = primgr::server::bind(config.node.listen)
        .with_context(|| format!("{what}: binding {}", config.node.listen))?;
    let agent = match config.agent.agent_listen {
        Some(a) => Some(
            primgr::server::bind(a).with_context(|| format!("{what}: binding the agent {a}"))?,
        ),
        None => None,
    };
    let addr = listener.local_addr().context("the listener's address")?;
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let options = primgr::Options {
            agent,
            cycle_hook,
            ..primgr::Options::default()
        };
        let stop = async {
            let _ = rx.await;
        };
        primgr::run_with(config, listener, stop, options).await
    });
    Ok(Daemon {
        addr,
        what,
        runs: Runs::Task {
            stop: Some(tx),
            task: Some(task),
        },
        log: None,
        pid_file: None,
    })
}

fn spawn_process(what: String, spec: ProcessSpec) -> Result<Daemon> {
    ensure!(
        spec.program.is_file(),
        "{what}: {} does not exist (build it first)",
        spec.program.display()
    );
    let addr = spec.addr.ok_or_else(|| {
        anyhow!("{what}: where it listens is unknown (DaemonBuilder::listen or ::at)")
    })?;
    let (out, err) = match &spec.log {
        Some(path) => {
            let (mut out, err) = append_to(path)?;
            // The command line as a reader of the log may see it: a conninfo's secrets masked,
            // like everything the daemon itself logs.
            let shown: Vec<String> = spec
                .args
                .iter()
                .zip(std::iter::once(None).chain(spec.args.iter().map(Some)))
                .map(|(arg, before)| match before.map(String::as_str) {
                    Some("--conninfo") => primgr::conninfo::redact(arg),
                    _ => arg.clone(),
                })
                .collect();
            writeln!(
                out,
                "==== primgr-lab: starting {} {}",
                spec.program.display(),
                shown.join(" ")
            )
            .with_context(|| format!("writing {}", path.display()))?;
            (Stdio::from(out), Stdio::from(err))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    for (key, value) in &spec.env {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    if let Some(dir) = &spec.dir {
        cmd.current_dir(dir);
    }
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = child.id().ok_or_else(|| anyhow!("{what} exited at once"))?;
    if let Some(pid_file) = &spec.pid_file {
        write_pid_file(pid_file, pid, &addr.to_string())?;
    }
    Ok(Daemon {
        addr,
        what,
        runs: Runs::Child(Some(child)),
        log: spec.log,
        pid_file: spec.pid_file,
    })
}

/// A running daemon (in this process or a child process): the one handle of every test.
/// Dropping it stops the daemon (see the module header).
pub struct Daemon {
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    what: String,
    runs: Runs,
    log: Option<PathBuf>,
    pid_file: Option<PathBuf>,
}

enum Runs {
    Task {
        stop: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<Result<(), primgr::RunError>>>,
    },
    /// None once stopped.
    Child(Option<tokio::process::Child>),
}

/// How a daemon ended by itself ([`Daemon::wait_end`]).
#[derive(Debug)]
pub enum Ended {
    /// An in-process daemon's result.
    Task(Result<(), primgr::RunError>),
    /// An in-process daemon's task panicked (the panic's message).
    Panicked(String),
    /// A child's exit status.
    Process(std::process::ExitStatus),
}

impl Daemon {
    /// A daemon in this process, `primgr::run_with(config, ...)` on its own tokio task: its
    /// HTTP API on `config.node.listen` (port 0: any free port, see [`Daemon::addr`]), its agent
    /// port on `config.agent.agent_listen` when set; with the lab's peer key file
    /// ([`peer_key_file`]) unless the config names one.
    pub fn in_process(mut config: primgr::Config) -> DaemonBuilder {
        if config.peer.peer_key_file.is_none() {
            config.peer.peer_key_file = Some(peer_key_file());
        }
        DaemonBuilder {
            what: format!("primgr {}", config.node.node_name),
            kind: Kind::InProcess(Box::new(config), None),
        }
    }

    /// A daemon as a child process of `program` (the `primgr` binary, or a fake of it), with
    /// the arguments the builder adds.
    pub fn process(program: impl AsRef<Path>) -> DaemonBuilder {
        let program = program.as_ref().to_path_buf();
        DaemonBuilder {
            what: program.display().to_string(),
            kind: Kind::Process(Box::new(ProcessSpec {
                program,
                args: Vec::new(),
                addr: None,
                env: Vec::new(),
                log: None,
                pid_file: None,
                dir: None,
            })),
        }
    }

    /// [`Daemon::in_process`] of `config`, spawned; panics when its listeners cannot be bound.
    pub async fn start(config: primgr::Config) -> Daemon {
        Daemon::in_process(config)
            .spawn()
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The child's pid while it runs (None for an in-process daemon).
    pub fn pid(&self) -> Option<u32> {
        match &self.runs {
            Runs::Child(Some(c)) => c.id(),
            _ => None,
        }
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        match &mut self.runs {
            Runs::Task { task, .. } => task.as_ref().is_some_and(|t| !t.is_finished()),
            Runs::Child(c) => c.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))),
        }
    }

    /// Waits until `GET /state` gets an answer (any status); fails at once, with the tail of
    /// its log, when the daemon ends first, and after `within`.
    pub async fn ready(&mut self, within: Duration) -> Result<()> {
        let (addr, what) = (self.addr, self.what.clone());
        let exited = std::cell::Cell::new(false);
        let r = {
            let this = std::cell::RefCell::new(&mut *self);
            wait_for_every(
                &format!("{what} answering on {addr}"),
                within,
                Duration::from_millis(50),
                || async {
                    if !this.borrow_mut().running() {
                        exited.set(true);
                        return Ok(true);
                    }
                    Ok(http::get(addr, "/state", Duration::from_millis(500))
                        .await
                        .is_ok())
                },
            )
            .await
        };
        let tail = || match &self.log {
            Some(log) => format!("\n--- tail of {} ---\n{}", log.display(), log_tail(log, 20)),
            None => String::new(),
        };
        if exited.get() {
            bail!("{what} ended before it answered{}", tail());
        }
        r.map(drop).map_err(|e| anyhow!("{e:#}{}", tail()))
    }

    /// [`Daemon::ready`], panicking with what it saw.
    pub async fn wait_listening(&mut self, within: Duration) {
        if let Err(e) = self.ready(within).await {
            panic!("{e:#}");
        }
    }

    /// Waits (at most `within`) for the daemon to end by itself; None if it still runs.
    pub async fn wait_end(&mut self, within: Duration) -> Option<Ended> {
        match &mut self.runs {
            Runs::Task { task, .. } => {
                let handle = task.as_mut()?;
                let joined = tokio::time::timeout(within, handle).await.ok()?;
                task.take();
                Some(match joined {
                    Ok(result) => Ended::Task(result),
                    Err(e) => Ended::Panicked(e.to_string()),
                })
            }
            Runs::Child(c) => {
                let child = c.as_mut()?;
                let status = tokio::time::timeout(within, child.wait()).await.ok()?;
                status.ok().map(Ended::Process)
            }
        }
    }

    /// Stops the daemon and waits until it has ended; returns how long that took. An
    /// in-process daemon gets its stop signal (it drains, as on SIGTERM) and must end without
    /// an error (this panics otherwise); a child gets SIGCONT and SIGTERM (to its group),
    /// SIGKILL after 5 s. Stopping a stopped daemon does nothing.
    pub async fn stop(&mut self) -> Duration {
        let t0 = Instant::now();
        match &mut self.runs {
            Runs::Task { stop, task } => {
                if let Some(tx) = stop.take() {
                    let _ = tx.send(());
                }
                if let Some(task) = task.take() {
                    let result = task
                        .await
                        .unwrap_or_else(|e| panic!("{}: the task failed: {e}", self.what));
                    if let Err(e) = result {
                        panic!("{} ended with an error: {e}", self.what);
                    }
                }
            }
            Runs::Child(c) => {
                if let Some(child) = c.take()
                    && let Err(e) = stop_child(child, &self.what).await
                {
                    eprintln!("primgr-lab: {e:#}");
                }
                if let Some(pid_file) = &self.pid_file {
                    let _ = std::fs::remove_file(pid_file);
                }
            }
        }
        t0.elapsed()
    }

    /// Kills a child at once (SIGKILL to its group) and waits for it; an in-process daemon
    /// gets its stop signal without being waited for.
    pub async fn kill(&mut self) {
        match &mut self.runs {
            Runs::Task { stop, .. } => {
                if let Some(tx) = stop.take() {
                    let _ = tx.send(());
                }
            }
            Runs::Child(c) => {
                if let Some(mut child) = c.take() {
                    if let Some(pid) = child.id() {
                        procfs::signal_group(pid as i32, libc::SIGKILL);
                    }
                    let _ = child.wait().await;
                }
            }
        }
    }

    /// SIGSTOP to the child (a hung daemon).
    pub fn freeze(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT to the child.
    pub fn thaw(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGTERM to the child (what `systemctl stop primgr` sends), without waiting: see
    /// [`Daemon::wait_end`] (and [`Daemon::stop`], which waits).
    pub fn terminate(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// SIGHUP to the child (what `systemctl reload primgr` sends: a reload).
    pub fn hangup(&self) -> Result<()> {
        self.signal(libc::SIGHUP)
    }

    fn signal(&self, sig: i32) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not a running process", self.what))?;
        ensure!(
            procfs::signal(pid as i32, sig),
            "signal {sig} to {} ({pid})",
            self.what
        );
        Ok(())
    }

    /// The child's log file, when it has one.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Everything the child logged so far (empty without a log).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// Waits until the log has more than `from` bytes and the text after `from` contains
    /// `want`; returns that text. Panics with that text after `within`.
    pub async fn wait_log(&self, from: usize, want: &str, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let text = self.log_text();
            let new = text.get(from..).unwrap_or_default();
            if new.contains(want) {
                return new.to_string();
            }
            if t0.elapsed() > within {
                panic!(
                    "after {within:?} the log of {} has no {want:?} after byte {from}:\n{new}",
                    self.what
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A `kB` field of the child's `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...); panics when
    /// it cannot be read.
    pub fn status_kb(&self, field: &str) -> u64 {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.what));
        procfs::status_kb(pid, field).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The child's open file descriptors; panics when they cannot be read.
    pub fn open_fds(&self) -> usize {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.what));
        procfs::open_fds(pid).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        match &mut self.runs {
            Runs::Task { stop, .. } => {
                // The task is left to the end of the test's runtime, which cancels it.
                if let Some(tx) = stop.take() {
                    let _ = tx.send(());
                }
            }
            Runs::Child(c) => {
                let Some(child) = c.take() else {
                    return;
                };
                if self.pid_file.is_some()
                    && std::env::var_os("PRIMGR_LAB_KEEP").is_some_and(|v| v != "0")
                {
                    // A lab daemon kept for debugging; its pid file finds it again.
                    std::mem::forget(child);
                    return;
                }
                if let Some(pid) = child.id() {
                    procfs::signal_group(pid as i32, libc::SIGCONT);
                    procfs::signal_group(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

impl Lab {
    /// The daemon of `node` as a child process of `program` (the `primgr` binary), with the
    /// lab's command line: `--node-name <node> --listen 127.0.X.1N:5999 --conninfo
    /// "host=127.0.X.1N port=5432 dbname=repmgr user=repmgr application_name=primgr"
    /// --source-address 127.0.X.1N`, then what the builder adds; stdout and stderr appended to
    /// [`Lab::daemon_log`], the pid in `<dir>/daemon-<node>.pid` (so teardown, `Drop` and the
    /// leftover cleanup stop it too), run in the lab directory. Works for a witness like for
    /// any node.
    pub fn daemon(&self, node: &str, program: impl AsRef<Path>) -> Result<DaemonBuilder> {
        let n = self.node(node)?;
        Ok(Daemon::process(program)
            .named(format!("daemon of {node}"))
            .args([
                "--peer-key-file".to_string(),
                peer_key_file().display().to_string(),
                "--node-name".to_string(),
                node.to_string(),
                "--conninfo".to_string(),
                format!(
                    "host={} port={PG_PORT} dbname=repmgr user=repmgr application_name=primgr",
                    n.addr
                ),
                "--source-address".to_string(),
                n.addr.to_string(),
            ])
            .listen(self.daemon_addr(node))
            .log(self.daemon_log(node)?)
            .pid_file(self.daemon_pid_file(node))
            .dir(&self.dir))
    }
}

/// The peer key file every daemon this process launches shares (`--peer-key-file`): one
/// fresh key (`primgr::auth::generate_key_line`), mode 0600, written once per process under
/// the temporary directory. Panics when it cannot be written (no daemon could start).
pub fn peer_key_file() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("primgr-lab-keys-{}", std::process::id()));
        let path = dir.join("peer.key");
        let write = || -> Result<()> {
            std::fs::create_dir_all(&dir)?;
            let line = primgr::auth::generate_key_line()?;
            let _ = std::fs::remove_file(&path);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            writeln!(f, "{line}")?;
            Ok(())
        };
        if let Err(e) = write() {
            panic!("writing the lab's peer key file {}: {e:#}", path.display());
        }
        path
    })
    .clone()
}

/// Stops a process that leads its own process group (a primgr daemon, repmgrd): SIGCONT and
/// SIGTERM to the group, SIGKILL after 5 s, then SIGKILL to whatever it forked.
pub(crate) async fn stop_child(mut child: tokio::process::Child, what: &str) -> Result<()> {
    let pid = child.id().map(|p| p as i32);
    if let Some(pid) = pid {
        procfs::signal_group(pid, libc::SIGCONT);
        procfs::signal_group(pid, libc::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(r) => {
            r.with_context(|| format!("waiting for {what}"))?;
        }
        Err(_) => {
            if let Some(pid) = pid {
                procfs::signal_group(pid, libc::SIGKILL);
            }
            child
                .kill()
                .await
                .with_context(|| format!("killing {what}"))?;
        }
    }
    if let Some(pid) = pid {
        procfs::signal_group(pid, libc::SIGKILL);
    }
    Ok(())
}

/// A log file opened twice for appending (created if missing): stdout and stderr of a child.
pub(crate) fn append_to(path: &Path) -> Result<(std::fs::File, std::fs::File)> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let err = out.try_clone().context("duplicating log file handle")?;
    Ok((out, err))
}

/// Spawns a background process of the lab (`what` names it in errors): its own process group
/// (signals to the test's terminal do not reach it, and it is stopped with whatever it forks),
/// stdin from `/dev/null`, stdout and stderr to `log`, killed if the child handle is dropped.
/// Its pid is written to `pid_file` ([`write_pid_file`]).
pub(crate) fn spawn_logged(
    mut cmd: tokio::process::Command,
    what: &str,
    log: (std::fs::File, std::fs::File),
    pid_file: &Path,
    marker: &str,
) -> Result<tokio::process::Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.0))
        .stderr(Stdio::from(log.1))
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = child.id().ok_or_else(|| anyhow!("{what} exited at once"))?;
    write_pid_file(pid_file, pid, marker)?;
    Ok(child)
}

/// Writes `<pid>\n<marker>\n` to `pid_file`, the marker being a string of the process's
/// command line, so that the leftover cleanup stops it only while it is still that process.
fn write_pid_file(pid_file: &Path, pid: u32, marker: &str) -> Result<()> {
    std::fs::write(pid_file, format!("{pid}\n{marker}\n"))
        .with_context(|| format!("writing {}", pid_file.display()))
}
