//! Events out: the `on_change` command, run on every change of this node's state or drain.
//!
//! Owns the runner and its rules. The poller hands what each cycle published ([`Facts`]: the
//! state `/state` answers at that moment, so a hook never hears Primary before the first 200,
//! and hears the end of a 200 at the next publication at the latest) to a [`Handoff`], a
//! watch channel: it never blocks and never waits, and keeps only the newest.
//! One [`Runner`] task per daemon takes them from there and runs the command with the facts in
//! `PRIMGR_*` environment variables ([`Run::env`]), one run at a time, its output logged line
//! by line, bounded by `on_change_timeout`, past which its whole process group is killed
//! (SIGKILL). When to run is [`Coalescer`]'s, a pure state machine: a change (of the state, or
//! of the drain) waits while a run is in progress; the changes made meanwhile are coalesced
//! into one run with the newest facts; after each run, if what it told is not the newest, the
//! command runs again, so none is lost at the end (a change undone during a run is no change).
//! Each run's outcome and duration are logged and counted in a [`Tally`], which `/metrics`
//! shows. Neither a poll cycle nor a health check ever waits for a hook.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::HookSettings;
use crate::decide::State;
use crate::shutdown::Shutdown;

/// Most output lines logged per run (stdout and stderr together); the rest is dropped.
pub const MAX_LINES: usize = 200;
/// Longest output line logged; a longer one is cut.
pub const MAX_LINE: usize = 1000;
/// How long after a run ends its output is still read (a background child may hold the pipes).
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// What a hook is told: one published snapshot, as seen by the node that published it.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub node: String,
    /// Its site (repmgr's `location`), when its row was found.
    pub site: Option<String>,
    pub state: State,
    pub reason: String,
    /// The active primary its metadata names.
    pub primary: Option<String>,
    /// The network host and the port of that primary's repmgr conninfo.
    pub primary_host: Option<String>,
    pub primary_port: Option<u16>,
    /// Votes counting toward a 200 when it was published, and a majority of the site.
    pub votes: usize,
    pub votes_needed: usize,
    /// The drain's reason while an operator has drained the node.
    pub drained: Option<String>,
    /// This daemon's API, for a hook that asks it again ([`api_url`]).
    pub url: String,
}

/// What makes a change, and what a run told: the state and whether the node is drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    pub state: State,
    pub drained: bool,
}

impl Facts {
    pub fn told(&self) -> Told {
        Told {
            state: self.state,
            drained: self.drained.is_some(),
        }
    }
}

/// The facts of one publication and the hook settings of the cycle that published it.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub facts: Facts,
    /// `on_change` (None: no hook).
    pub command: Option<PathBuf>,
    pub timeout: Duration,
}

/// One run of the hook.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub command: PathBuf,
    pub timeout: Duration,
    /// The newest facts when it starts.
    pub facts: Facts,
    /// What the previous run told (None: the first run since the daemon started or since
    /// `on_change` was set).
    pub previous: Option<Told>,
    /// Changes seen since the previous run started (more than one: coalesced).
    pub changes: u64,
}

impl Run {
    /// The environment of the run: every `PRIMGR_*` variable, always set (empty when there is
    /// nothing to say), on top of the daemon's own environment.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let f = &self.facts;
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let text = |t: &Option<String>| t.clone().unwrap_or_default();
        let vars = [
            ("PRIMGR_NODE", f.node.clone()),
            ("PRIMGR_SITE", text(&f.site)),
            ("PRIMGR_STATE", f.state.name().to_string()),
            (
                "PRIMGR_PREVIOUS_STATE",
                self.previous
                    .map_or(String::new(), |t| t.state.name().to_string()),
            ),
            ("PRIMGR_CODE", f.state.code().to_string()),
            ("PRIMGR_REASON", f.reason.clone()),
            ("PRIMGR_PRIMARY", text(&f.primary)),
            ("PRIMGR_PRIMARY_HOST", text(&f.primary_host)),
            (
                "PRIMGR_PRIMARY_PORT",
                f.primary_port.map_or(String::new(), |p| p.to_string()),
            ),
            ("PRIMGR_VOTES", f.votes.to_string()),
            ("PRIMGR_VOTES_NEEDED", f.votes_needed.to_string()),
            ("PRIMGR_DRAINED", flag(f.drained.is_some())),
            ("PRIMGR_DRAIN_REASON", text(&f.drained)),
            (
                "PRIMGR_PREVIOUS_DRAINED",
                self.previous.map_or(String::new(), |t| flag(t.drained)),
            ),
            ("PRIMGR_CHANGES", self.changes.to_string()),
            ("PRIMGR_URL", f.url.clone()),
        ];
        // An environment value cannot hold a NUL byte (the spawn would fail).
        vars.into_iter()
            .map(|(k, v)| (k, v.replace('\0', "")))
            .collect()
    }
}

/// When to run: a pure state machine fed with every offer and the end of every run.
///
/// A run starts when none is in progress and the newest facts differ (in state or drain)
/// from what the last run told; so at most one runs at a time, each run gets the newest facts,
/// and once the offers stop and the last run ends, the last run told the newest facts.
#[derive(Debug, Default)]
pub struct Coalescer {
    /// The newest offer with a command.
    newest: Option<Offer>,
    /// What the newest offer would tell, to count changes.
    seen: Option<Told>,
    /// What the last run started told.
    told: Option<Told>,
    /// Changes seen since the last run started.
    changes: u64,
    running: bool,
}

impl Coalescer {
    /// A new publication: the run to start now, if any.
    pub fn offer(&mut self, offer: Offer) -> Option<Run> {
        if offer.command.is_none() {
            // No hook (or a reload removed it): nothing pending; a hook set later is told the
            // state of its time, as at start.
            *self = Coalescer {
                running: self.running,
                ..Coalescer::default()
            };
            return None;
        }
        let told = offer.facts.told();
        if self.seen != Some(told) {
            self.changes += 1;
            self.seen = Some(told);
        }
        self.newest = Some(offer);
        self.next()
    }

    /// The run in progress ended: the next run, if what it told is not the newest any more.
    pub fn finished(&mut self) -> Option<Run> {
        self.running = false;
        self.next()
    }

    /// Whether a run is in progress.
    pub fn running(&self) -> bool {
        self.running
    }

    fn next(&mut self) -> Option<Run> {
        if self.running {
            return None;
        }
        let offer = self.newest.as_ref()?;
        let told = offer.facts.told();
        if self.told == Some(told) {
            // Whatever changed meanwhile came back to what the hook was told.
            self.changes = 0;
            return None;
        }
        let command = offer.command.clone()?;
        let run = Run {
            command,
            timeout: offer.timeout,
            facts: offer.facts.clone(),
            previous: self.told,
            changes: std::mem::take(&mut self.changes),
        };
        self.told = Some(told);
        self.running = true;
        Some(run)
    }
}

/// How a run ended, as `/metrics` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Ok,
    /// Another exit status, a signal, or the command could not be started.
    Failed,
    /// Killed (with its process group) at `on_change_timeout`.
    Timeout,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Failed, Outcome::Timeout];

    /// The `outcome` label of `primgr_hook_runs_total`.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Runs by outcome and the last run's duration, since the daemon started (`/metrics`).
#[derive(Debug, Default)]
pub struct Tally {
    runs: [AtomicU64; 3],
    /// Nanoseconds + 1 of the last run (0: none yet).
    last: AtomicU64,
}

impl Tally {
    pub fn record(&self, outcome: Outcome, took: Duration) {
        self.runs[outcome as usize].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX - 1);
        self.last.store(nanos + 1, Ordering::Relaxed);
    }

    pub fn runs(&self, outcome: Outcome) -> u64 {
        self.runs[outcome as usize].load(Ordering::Relaxed)
    }

    /// How long the last run took (None before the first).
    pub fn last_duration(&self) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }
}

/// This daemon's API as a local hook reaches it: `listen`, with an unspecified address
/// (`0.0.0.0`, `::`) replaced by the loopback address.
pub fn api_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// The poller's end: hands over the newest facts without ever waiting.
#[derive(Debug)]
pub struct Handoff {
    tx: watch::Sender<Option<Offer>>,
    tally: Arc<Tally>,
}

/// The runner's end, run as its own task ([`Runner::run`]).
#[derive(Debug)]
pub struct Runner {
    rx: watch::Receiver<Option<Offer>>,
    tally: Arc<Tally>,
}

/// A handoff and its runner, sharing one tally.
pub fn channel() -> (Handoff, Runner) {
    let (tx, rx) = watch::channel(None);
    let tally = Arc::new(Tally::default());
    (
        Handoff {
            tx,
            tally: Arc::clone(&tally),
        },
        Runner { rx, tally },
    )
}

impl Handoff {
    /// Hands over what a cycle published, with the hook settings it ran with. Never blocks:
    /// the newest replaces whatever the runner has not taken yet.
    pub fn offer(&self, facts: Facts, settings: &HookSettings) {
        self.tx.send_replace(Some(Offer {
            facts,
            command: settings.on_change.clone(),
            timeout: settings.on_change_timeout,
        }));
    }

    /// The runs counted so far (what each snapshot carries to `/metrics`).
    pub fn tally(&self) -> Arc<Tally> {
        Arc::clone(&self.tally)
    }
}

type Running = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Runner {
    /// Takes each offer as it comes and runs the hook when [`Coalescer`] says so, until
    /// `stop` fires (a run in progress is then killed with its process group) or the poller's
    /// end is gone (a run in progress may then finish).
    pub async fn run(mut self, mut stop: Shutdown) {
        let mut coalescer = Coalescer::default();
        let mut current: Option<Running> = None;
        loop {
            let start = tokio::select! {
                _ = stop.wait() => break,
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let offer = self.rx.borrow_and_update().clone();
                    offer.and_then(|o| coalescer.offer(o))
                }
                () = async {
                    if let Some(run) = current.as_mut() {
                        run.await;
                    }
                }, if current.is_some() => {
                    current = None;
                    coalescer.finished()
                }
            };
            if let Some(run) = start {
                current = Some(Box::pin(execute(
                    run,
                    Arc::clone(&self.tally),
                    stop.clone(),
                )));
            }
        }
        if let Some(run) = current {
            run.await;
        }
    }
}

/// How the process ended.
enum Ended {
    Exited(std::io::Result<ExitStatus>),
    TimedOut,
    Stopped,
}

/// One run: spawn in its own process group, log its output, wait within its timeout (else
/// kill the group), log and count the outcome.
async fn execute(run: Run, tally: Arc<Tally>, mut stop: Shutdown) {
    let started = Instant::now();
    let (state, command) = (run.facts.state, run.command.display().to_string());
    let previous = run
        .previous
        .map_or("nothing yet".to_string(), |t| t.state.name().to_string());
    let coalesced = match run.changes {
        0 | 1 => String::new(),
        n => format!(", {n} changes coalesced"),
    };
    let mut cmd = tokio::process::Command::new(&run.command);
    // The hook is not the service: systemd's notify socket is the daemon's alone.
    cmd.envs(run.env())
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            tally.record(Outcome::Failed, started.elapsed());
            warn!(
                hook = %command,
                "on_change for {state} (was {previous}) could not be started: {e}"
            );
            return;
        }
    };
    let group = child.id();
    let budget = Arc::new(AtomicUsize::new(MAX_LINES));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(log_output(out, "stdout", Arc::clone(&budget))));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(log_output(err, "stderr", Arc::clone(&budget))));
    }
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status),
        () = tokio::time::sleep(run.timeout) => Ended::TimedOut,
        _ = stop.wait() => Ended::Stopped,
    };
    if !matches!(ended, Ended::Exited(_)) {
        // Not reaped yet, so the group's id is still the child's own.
        kill_group(group);
        let _ = child.wait().await;
    }
    let took = started.elapsed();
    for mut reader in readers {
        if tokio::time::timeout(OUTPUT_GRACE, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
    let ms = took.as_millis();
    match ended {
        Ended::Exited(Ok(status)) if status.success() => {
            tally.record(Outcome::Ok, took);
            info!(hook = %command, "on_change for {state} (was {previous}{coalesced}): exit 0 in {ms} ms");
        }
        Ended::Exited(result) => {
            tally.record(Outcome::Failed, took);
            let how = match result {
                Ok(status) => status.to_string(),
                Err(e) => format!("cannot be waited for: {e}"),
            };
            warn!(hook = %command, "on_change for {state} (was {previous}{coalesced}) failed: {how}, after {ms} ms");
        }
        Ended::TimedOut => {
            tally.record(Outcome::Timeout, took);
            warn!(
                hook = %command,
                "on_change for {state} (was {previous}{coalesced}) overran on_change_timeout ({}): \
                 its process group was killed after {ms} ms",
                humantime::format_duration(run.timeout)
            );
        }
        Ended::Stopped => {
            info!(hook = %command, "on_change for {state} killed with its process group: the daemon stops");
        }
    }
}

/// SIGKILL to the process group `group` (the child's own, from `process_group(0)`).
fn kill_group(group: Option<u32>) {
    // Never 0 (our own group) nor 1 (kill(-1) would signal every process we may signal).
    let Some(group) = group
        .and_then(|g| libc::pid_t::try_from(g).ok())
        .filter(|g| *g > 1)
    else {
        return;
    };
    // SAFETY: kill(2) takes two integers and touches no memory of this process; a negative pid
    // names the process group. The child is not reaped yet, so no other group has this id.
    let done = unsafe { libc::kill(-group, libc::SIGKILL) };
    if done != 0 {
        let e = std::io::Error::last_os_error();
        // ESRCH: the group is already gone.
        if e.raw_os_error() != Some(libc::ESRCH) {
            warn!("on_change: cannot kill process group {group}: {e}");
        }
    }
}

/// Logs a run's output, line by line, within the run's shared line budget.
async fn log_output(
    mut pipe: impl AsyncRead + Unpin,
    stream: &'static str,
    budget: Arc<AtomicUsize>,
) {
    let mut lines = Lines::default();
    let mut buf = [0u8; 4096];
    let mut emit = |line: String| {
        let left = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .unwrap_or_else(|n| n);
        match left {
            0 => {}
            1 => warn!("on_change {stream}: {line} (further output of this run is not logged)"),
            _ => info!("on_change {stream}: {line}"),
        }
    };
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lines.feed(&buf[..n]).into_iter().for_each(&mut emit),
        }
    }
    if let Some(last) = lines.finish() {
        emit(last);
    }
}

/// Output cut into lines of at most [`MAX_LINE`] bytes (the rest of a longer line dropped);
/// invalid UTF-8 replaced.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
    /// The current line is over [`MAX_LINE`]: drop until its end.
    cut: bool,
}

impl Lines {
    /// The lines that `bytes` completes.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                out.push(self.take());
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(b);
            } else {
                self.cut = true;
            }
        }
        out
    }

    /// The last line, when the output did not end with a newline.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty() || self.cut).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut line = String::from_utf8_lossy(&self.partial)
            .trim_end_matches('\r')
            .to_string();
        if std::mem::take(&mut self.cut) {
            line.push_str(" [cut]");
        }
        self.partial.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(state: State, drained: bool) -> Facts {
        Facts {
            node: "node1".into(),
            site: Some("dc1".into()),
            state,
            reason: format!("reason of {state}"),
            primary: Some("node1".into()),
            primary_host: Some("10.0.0.11".into()),
            primary_port: Some(5432),
            votes: 2,
            votes_needed: 2,
            drained: drained.then(|| "maintenance".to_string()),
            url: "http://127.0.0.1:5999".into(),
        }
    }

    fn offer(state: State, drained: bool) -> Offer {
        Offer {
            facts: facts(state, drained),
            command: Some("/usr/local/bin/hook".into()),
            timeout: Duration::from_secs(30),
        }
    }

    /// The first publication runs the hook with no previous state; the same state again runs
    /// nothing; a change runs it with the previous state.
    #[test]
    fn a_change_runs_the_hook_and_no_change_does_not() {
        let mut c = Coalescer::default();
        let first = c.offer(offer(State::Standby, false)).expect("first run");
        assert_eq!((first.previous, first.changes), (None, 1));
        assert!(c.running());
        assert_eq!(c.finished(), None);
        assert_eq!(c.offer(offer(State::Standby, false)), None, "no change");
        let mut other_reason = offer(State::Standby, false);
        other_reason.facts.reason = "another reason".into();
        assert_eq!(c.offer(other_reason), None, "a reason alone is no change");
        let run = c.offer(offer(State::Primary, false)).expect("a change");
        assert_eq!(
            run.previous,
            Some(Told {
                state: State::Standby,
                drained: false
            })
        );
        assert_eq!((run.facts.state, run.changes), (State::Primary, 1));
        assert_eq!(c.finished(), None);
        let drained = c.offer(offer(State::Primary, true)).expect("a drain");
        assert!(drained.facts.drained.is_some());
    }

    /// Changes during a run wait for it, are coalesced into one run with the newest facts, and
    /// a change undone during a run runs nothing.
    #[test]
    fn changes_during_a_run_are_coalesced_the_newest_wins() {
        let mut c = Coalescer::default();
        assert!(c.offer(offer(State::Primary, false)).is_some());
        for s in [State::Unknown, State::Down, State::Standby] {
            assert_eq!(c.offer(offer(s, false)), None, "one at a time");
        }
        let run = c.finished().expect("the newest runs after the end");
        assert_eq!((run.facts.state, run.changes), (State::Standby, 3));
        assert_eq!(run.previous.map(|t| t.state), Some(State::Primary));
        // Undone during the run: nothing to tell.
        assert_eq!(c.offer(offer(State::Unknown, false)), None);
        assert_eq!(c.offer(offer(State::Standby, false)), None);
        assert_eq!(c.finished(), None);
        assert!(!c.running());
    }

    /// Without a command nothing runs and nothing waits; a command set later is told the state
    /// of its time, with no previous state.
    #[test]
    fn no_command_no_run_and_a_later_one_starts_afresh() {
        let mut c = Coalescer::default();
        assert!(c.offer(offer(State::Primary, false)).is_some());
        let mut none = offer(State::Standby, false);
        none.command = None;
        assert_eq!(c.offer(none.clone()), None);
        assert_eq!(c.finished(), None, "nothing pending once unset");
        assert_eq!(c.offer(none), None);
        let run = c.offer(offer(State::Standby, false)).expect("set again");
        assert_eq!((run.previous, run.changes), (None, 1));
    }

    /// A tiny deterministic generator (xorshift64*), so the random walk is the same each run.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    /// Random interleavings of publications and run ends: never two runs at once, each run
    /// starts with the newest facts and tells what the previous run told as its previous, no
    /// run repeats what the hook was last told, and once the publications stop and the runs
    /// end, the last run told the newest facts.
    #[test]
    fn random_interleavings_keep_the_invariants() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut walks, mut steps, mut runs) = (0, 0, 0);
        for _ in 0..2000 {
            walks += 1;
            let mut c = Coalescer::default();
            let mut running = false;
            let mut newest: Option<Facts> = None;
            let mut last_told: Option<Told> = None;
            for _ in 0..rng.below(60) + 1 {
                steps += 1;
                let started = if rng.below(3) == 0 {
                    if !running {
                        continue;
                    }
                    running = false;
                    c.finished()
                } else {
                    let state = State::ALL[rng.below(5) as usize];
                    let o = offer(state, rng.below(4) == 0);
                    newest = Some(o.facts.clone());
                    c.offer(o)
                };
                if let Some(run) = started {
                    assert!(!running, "two runs at once");
                    assert_eq!(Some(&run.facts), newest.as_ref(), "not the newest");
                    assert_eq!(run.previous, last_told);
                    assert_ne!(
                        Some(run.facts.told()),
                        last_told,
                        "a run that tells nothing"
                    );
                    assert!(run.changes >= 1);
                    last_told = Some(run.facts.told());
                    running = true;
                    runs += 1;
                }
            }
            // The publications stop; the run in progress ends, and so does any it starts.
            while running {
                running = false;
                if let Some(run) = c.finished() {
                    assert_eq!(Some(&run.facts), newest.as_ref());
                    last_told = Some(run.facts.told());
                    running = true;
                    runs += 1;
                }
            }
            assert_eq!(last_told, newest.map(|f| f.told()), "lost at the end");
        }
        println!("{walks} random walks, {steps} steps, {runs} runs: the invariants held");
    }

    #[test]
    fn the_environment_says_everything_and_nothing_is_missing() {
        let run = Run {
            command: "/hook".into(),
            timeout: Duration::from_secs(1),
            facts: Facts {
                reason: "a\0b".into(),
                ..facts(State::Unknown, true)
            },
            previous: Some(Told {
                state: State::Primary,
                drained: false,
            }),
            changes: 3,
        };
        let env: std::collections::BTreeMap<_, _> = run.env().into_iter().collect();
        let want = [
            ("PRIMGR_NODE", "node1"),
            ("PRIMGR_SITE", "dc1"),
            ("PRIMGR_STATE", "Unknown"),
            ("PRIMGR_PREVIOUS_STATE", "Primary"),
            ("PRIMGR_CODE", "509"),
            ("PRIMGR_REASON", "ab"),
            ("PRIMGR_PRIMARY", "node1"),
            ("PRIMGR_PRIMARY_HOST", "10.0.0.11"),
            ("PRIMGR_PRIMARY_PORT", "5432"),
            ("PRIMGR_VOTES", "2"),
            ("PRIMGR_VOTES_NEEDED", "2"),
            ("PRIMGR_DRAINED", "1"),
            ("PRIMGR_DRAIN_REASON", "maintenance"),
            ("PRIMGR_PREVIOUS_DRAINED", "0"),
            ("PRIMGR_CHANGES", "3"),
            ("PRIMGR_URL", "http://127.0.0.1:5999"),
        ];
        assert_eq!(env.len(), want.len());
        for (k, v) in want {
            assert_eq!(env[k], v, "{k}");
        }
        // A first run: the previous values are empty, not absent.
        let first = Run {
            previous: None,
            ..run
        };
        let env: std::collections::BTreeMap<_, _> = first.env().into_iter().collect();
        assert_eq!(
            (
                env["PRIMGR_PREVIOUS_STATE"].as_str(),
                env["PRIMGR_PREVIOUS_DRAINED"].as_str()
            ),
            ("", "")
        );
    }

    #[test]
    fn the_api_url_reaches_an_unspecified_listen_address_on_the_loopback() {
        let url = |a: &str| api_url(a.parse().expect("addr"));
        assert_eq!(url("0.0.0.0:5999"), "http://127.0.0.1:5999");
        assert_eq!(url("[::]:6000"), "http://[::1]:6000");
        assert_eq!(url("10.0.0.11:5999"), "http://10.0.0.11:5999");
    }

    #[test]
    fn output_is_cut_into_bounded_lines() {
        let mut l = Lines::default();
        assert_eq!(l.feed(b"one\ntw"), ["one"]);
        assert_eq!(l.feed(b"o\r\n\nthree"), ["two", ""]);
        assert_eq!(l.finish().as_deref(), Some("three"));
        assert_eq!(l.finish(), None);
        let long = vec![b'x'; MAX_LINE + 10];
        let lines = l.feed(&[long.as_slice(), b"\nok\n"].concat());
        assert_eq!(lines[0].len(), MAX_LINE + " [cut]".len());
        assert!(lines[0].ends_with(" [cut]"));
        assert_eq!(lines[1], "ok");
        assert_eq!(l.feed(&[0xff, b'\n']), ["\u{fffd}"]);
    }

    #[test]
    fn the_tally_counts_by_outcome_and_keeps_the_last_duration() {
        let t = Tally::default();
        assert_eq!(t.last_duration(), None);
        t.record(Outcome::Ok, Duration::from_millis(5));
        t.record(Outcome::Timeout, Duration::ZERO);
        t.record(Outcome::Ok, Duration::from_millis(7));
        let runs: Vec<u64> = Outcome::ALL.iter().map(|o| t.runs(*o)).collect();
        assert_eq!(runs, [2, 0, 1]);
        assert_eq!(t.last_duration(), Some(Duration::from_millis(7)));
    }
}
