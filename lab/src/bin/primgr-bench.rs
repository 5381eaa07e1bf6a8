//! `primgr-bench`: shows that a health check costs nothing. Run it through `contrib/bench`
//! (builds the release binaries first); must run as root.
//!
//! ```text
//! primgr-bench [--short] [--rounds N] [--seconds S] [--subnet N] [--out FILE]
//!              [--primgr PATH] [--baseline PATH] [--only LIST] [--strict]
//! ```
//!
//! It builds a real lab cluster (node1..node3 in dc1, node4 in dc2, subnet 61; 62 with
//! `--short`), runs the release `primgr` daemon of every node as a process
//! (`--interval 2s --peer-timeout 500ms`), starts `baseline` (the smallest hyper server that
//! answers `GET /state` with the same status, headers and body as node1's daemon), and measures:
//!
//! 1. `GET /state` with wrk at 64 and at 4 keep-alive connections and with a new connection per
//!    request (16 connections sending `Connection: close`), alternating primgr and the baseline
//!    over several rounds; ratios per round and their median, and each server's CPU time per
//!    request; then, when valgrind is installed, the user-space instructions per request of
//!    each under callgrind (a figure the machine's other load does not move);
//! 2. database transactions per health check: `pg_stat_database` of `repmgr` over a window under
//!    load, minus the background of the poller over an idle window, with the daemon's
//!    connections ended at every window edge so that PostgreSQL 15 reports their counts, and
//!    cross-checked with the statements `log_statement = 'all'` logs for `application_name
//!    primgr`;
//! 3. the daemon's resident memory after that load (and the baseline's);
//! 4. `/realPrimary` latency with every peer healthy and with node2 blackholed (iptables DROP
//!    between node1's and node2's addresses);
//! 5. the poll cycle's wall time (`cycle_ms` of `/status`) at 2, 8, 32 and 64 voters: node1's
//!    site grows with rows inserted into `repmgr.nodes` whose addresses are fake peers served by
//!    this process; node1's daemon is restarted with `--interval 250ms` to sample many cycles.
//!
//! It prints one table with every figure, its target and PASS/MISS, and writes it to `--out`
//! (default `target/bench/report.txt`). A missed target is reported, not an error: the exit
//! status is non-zero only when the run itself broke (or, with `--strict`, 3 on a MISS).
//! Everything it creates (lab, iptables chain, processes, repmgr rows) is removed at the end,
//! also on Ctrl-C.

#[path = "../bench/callgrind.rs"]
mod callgrind;
#[path = "../bench/fake.rs"]
mod fake;
#[path = "../bench/pgstat.rs"]
mod pgstat;
#[path = "../bench/report.rs"]
mod report;
#[path = "../bench/wrk.rs"]
mod wrk;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use primgr_lab::{CutMode, DAEMON_PORT, Lab, LabSpec, http};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{Table, median, micros, quantile, verdict};
use crate::wrk::{Mode, Wrk, WrkResult};

const USAGE: &str = "\
usage: primgr-bench [--short] [--rounds N] [--seconds S] [--subnet N] [--out FILE]
                    [--primgr PATH] [--baseline PATH] [--only LIST] [--strict]

  --short          CI mode: 1 round of 2 s per load run, few samples (about a minute)
  --rounds N       rounds of alternating primgr/baseline load runs (default 5; short 1)
  --seconds S      length of each load run (default 5; short 2)
  --subnet N       lab subnet, addresses 127.0.N.x (default 61; short 62; shifted by
                   $PRIMGR_LAB_SUBNET_SHIFT like every lab subnet)
  --out FILE       where to write the report (default target/bench/report.txt)
  --primgr PATH    primgr binary (default: `primgr` next to this executable)
  --baseline PATH  baseline binary (default: `baseline` next to this executable)
  --only LIST      run only these measurements, e.g. 1,3 (default 1,2,3,4,5; 3 reads the
                   memory after whatever load 1 and 2 produced)
  --strict         exit with status 3 when a target is missed
Must run as root (PostgreSQL lab, iptables).";

/// Daemon settings of the whole run (the poll-cycle measurement changes node1's interval).
const INTERVAL: &str = "2s";
const PEER_TIMEOUT_MS: u64 = 500;
/// node1's interval while the poll cycle is sampled.
const CYCLE_INTERVAL_MS: u64 = 250;
/// The measured node (the primary).
const NODE: &str = "node1";
/// Node that is blackholed for the `/realPrimary` measurement.
const BLACKHOLED: &str = "node2";
/// Voter counts of the poll-cycle measurement.
const VOTERS: [usize; 4] = [2, 8, 32, 64];
/// The load modes of measurement 1.
const MODES: [Mode; 3] = [Mode::KeepAlive(64), Mode::KeepAlive(4), Mode::Close(16)];
/// Bound on one HTTP exchange made by the bench itself.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Opts {
    short: bool,
    rounds: u32,
    seconds: u64,
    subnet: u8,
    out: PathBuf,
    primgr: PathBuf,
    baseline: PathBuf,
    strict: bool,
    /// Measurements to run (1..=5).
    only: Vec<u8>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let short = args.iter().any(|a| a == "--short");
        let here = std::env::current_exe().context("locating the current executable")?;
        let mut o = Opts {
            short,
            rounds: if short { 1 } else { 5 },
            seconds: if short { 2 } else { 5 },
            subnet: if short { 62 } else { 61 },
            out: PathBuf::from("target/bench/report.txt"),
            primgr: here.with_file_name("primgr"),
            baseline: here.with_file_name("baseline"),
            strict: false,
            only: vec![1, 2, 3, 4, 5],
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| {
                it.next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value\n{USAGE}"))
            };
            match a.as_str() {
                "--short" => {}
                "--strict" => o.strict = true,
                "--rounds" => {
                    let v = val(a)?;
                    o.rounds = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=100).contains(n))
                        .with_context(|| format!("bad --rounds {v:?} (1..=100)"))?;
                }
                "--seconds" => {
                    let v = val(a)?;
                    o.seconds = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=600).contains(n))
                        .with_context(|| format!("bad --seconds {v:?} (1..=600)"))?;
                }
                "--subnet" => {
                    let v = val(a)?;
                    o.subnet = v
                        .parse()
                        .ok()
                        .filter(|&n: &u8| (1..=254).contains(&n))
                        .with_context(|| format!("bad --subnet {v:?} (1..=254)"))?;
                }
                "--only" => {
                    let v = val(a)?;
                    o.only = v
                        .split(',')
                        .map(|x| x.trim().parse::<u8>().ok().filter(|n| (1..=5).contains(n)))
                        .collect::<Option<Vec<u8>>>()
                        .with_context(|| format!("bad --only {v:?} (e.g. 1,2,5)"))?;
                }
                "--out" => o.out = val(a)?.into(),
                "--primgr" => o.primgr = val(a)?.into(),
                "--baseline" => o.baseline = val(a)?.into(),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        // The daemons start in the lab directory: a relative path would not resolve there.
        for p in [&mut o.primgr, &mut o.baseline] {
            if let Ok(abs) = p.canonicalize() {
                *p = abs;
            }
        }
        Ok(o)
    }

    /// Where scratch files go: the directory of the report.
    fn work_dir(&self) -> PathBuf {
        self.out
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    }

    /// Whether measurement `n` was asked for.
    fn runs(&self, n: u8) -> bool {
        self.only.contains(&n)
    }

    /// Samples of the sequential measurements (4 and 5).
    fn samples(&self, full: usize, short: usize) -> usize {
        if self.short { short } else { full }
    }

    /// Length of the two windows of the transaction count.
    fn xact_seconds(&self) -> u64 {
        (self.seconds * 2).max(4)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("primgr-bench: {e:#}");
            return ExitCode::from(64);
        }
    };
    match run(&opts).await {
        Ok(outcome) => {
            println!("{}", outcome.text);
            if let Err(e) = write_report(&opts.out, &outcome.text) {
                eprintln!("primgr-bench: {e:#}");
                return ExitCode::FAILURE;
            }
            eprintln!("primgr-bench: report written to {}", opts.out.display());
            if opts.strict && outcome.missed > 0 {
                eprintln!("primgr-bench: {} target(s) missed", outcome.missed);
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("primgr-bench: the run failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_report(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The printed report and how many targets it misses.
struct Outcome {
    text: String,
    missed: usize,
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("primgr-bench: {msg}");
}

async fn run(o: &Opts) -> Result<Outcome> {
    primgr_lab::ensure_root()?;
    for (what, p) in [("primgr", &o.primgr), ("baseline", &o.baseline)] {
        ensure!(
            p.is_file(),
            "{what} binary not found at {} (contrib/bench builds it: cargo build --release \
             --workspace)",
            p.display()
        );
    }
    let work_dir = o.work_dir();
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let wrk = Wrk::new(&work_dir, 2)?;
    let machine = Machine::probe();

    let spec = LabSpec::standard(o.subnet);
    progress(format!("building lab {} ...", spec.effective_subnet()?));
    let lab = Lab::build(spec).await?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("SIGINT handler")?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let result = tokio::select! {
        r = measure(o, &lab, &wrk, &machine) => r,
        _ = sigint.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = sigterm.recv() => Err(anyhow::anyhow!("terminated")),
    };
    progress("tearing down the lab ...");
    let td = lab.teardown().await;
    let outcome = result?;
    td?;
    Ok(outcome)
}

/// What the report says about the machine.
struct Machine {
    date: String,
    cpu: String,
    cpus: usize,
    kernel: String,
    revision: String,
    load_before: String,
}

impl Machine {
    fn probe() -> Machine {
        let cmd = |prog: &str, args: &[&str]| -> Option<String> {
            let out = std::process::Command::new(prog)
                .args(args)
                .stderr(Stdio::null())
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let revision = match cmd("git", &["rev-parse", "--short", "HEAD"]) {
            Some(rev) => {
                let dirty = cmd("git", &["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                if dirty { format!("{rev}+changes") } else { rev }
            }
            None => "unknown revision".into(),
        };
        Machine {
            date: cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            revision,
            load_before: loadavg(),
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One line of the summary table.
struct Line {
    what: String,
    value: String,
    target: String,
    /// None: informational, no target.
    pass: Option<bool>,
}

impl Line {
    fn new(what: impl Into<String>, value: impl Into<String>) -> Line {
        Line {
            what: what.into(),
            value: value.into(),
            target: "—".into(),
            pass: None,
        }
    }
    fn target(mut self, target: impl Into<String>, pass: bool) -> Line {
        self.target = target.into();
        self.pass = Some(pass);
        self
    }
}

/// What the measurements write: detail tables and summary lines.
#[derive(Default)]
struct Findings {
    details: String,
    lines: Vec<Line>,
}

/// The two servers under test.
struct Servers {
    primgr_url: String,
    primgr_pid: u32,
    baseline_url: String,
    baseline_pid: u32,
}

fn daemon_args(interval: &str) -> Vec<String> {
    vec![
        "--interval".into(),
        interval.into(),
        "--peer-timeout".into(),
        format!("{PEER_TIMEOUT_MS}ms"),
    ]
}

async fn measure(o: &Opts, lab: &Lab, wrk: &Wrk, machine: &Machine) -> Result<Outcome> {
    let mut f = Findings::default();

    progress("starting a primgr daemon per node ...");
    for n in lab.node_names() {
        lab.spawn_daemon(&n, &o.primgr, &daemon_args(INTERVAL))
            .await?;
    }
    for n in lab.node_names() {
        lab.wait_daemon_ready(&n, Duration::from_secs(30)).await?;
    }
    wait_site(lab).await?;

    let primgr_addr = lab.daemon_addr(NODE);
    let primgr_state = fetch_raw(primgr_addr, "/state").await?;
    let baseline_addr = SocketAddr::from((primgr_lab::node_address(lab.subnet(), 0), DAEMON_PORT));
    let mut baseline = tokio::process::Command::new(&o.baseline)
        .arg(baseline_addr.to_string())
        .arg(primgr_state.status.to_string())
        .arg(String::from_utf8_lossy(&primgr_state.body).into_owned())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", o.baseline.display()))?;
    let servers = Servers {
        primgr_url: format!("http://{primgr_addr}/state"),
        primgr_pid: lab
            .daemon_pid(NODE)
            .context("node1's daemon is not running")?,
        baseline_url: format!("http://{baseline_addr}/state"),
        baseline_pid: baseline.id().context("baseline exited at once")?,
    };
    wait_listening(baseline_addr).await?;
    let baseline_state = fetch_raw(baseline_addr, "/state").await?;
    ensure!(
        primgr_state.same_as(&baseline_state),
        "the baseline does not answer like primgr:\nprimgr:   {}\nbaseline: {}",
        primgr_state.describe(),
        baseline_state.describe()
    );
    writeln!(
        f.details,
        "GET /state — both answer: {}\n",
        primgr_state.describe()
    )?;

    if o.runs(1) {
        throughput(o, wrk, &servers, &mut f).await?;
    }
    if o.runs(2) {
        progress("2. database transactions per health check ...");
        let xacts = transactions(o, lab, wrk, &servers.primgr_url).await?;
        xacts.report(&mut f)?;
    }
    if o.runs(3) {
        resident_memory(&servers, &mut f)?;
    }
    baseline.start_kill().ok();
    let _ = baseline.wait().await;
    if o.runs(1) {
        instruction_counts(o, lab, wrk, &primgr_state, &mut f).await?;
    }
    if o.runs(4) {
        progress("4. /realPrimary latency ...");
        real_primary_latency(o, lab, &mut f).await?;
    }
    if o.runs(5) {
        progress("5. poll cycle vs number of voters ...");
        poll_cycle_scaling(o, lab, &mut f).await?;
    }
    Ok(render(o, machine, f))
}

/// Measurement 1: `/state` under wrk, primgr and the baseline alternating.
async fn throughput(o: &Opts, wrk: &Wrk, s: &Servers, f: &mut Findings) -> Result<()> {
    progress("1. /state under wrk: warming up ...");
    for u in [&s.primgr_url, &s.baseline_url] {
        wrk.run(u, Mode::KeepAlive(64), 1).await?;
    }
    // (mode, round, primgr, baseline, CPU µs per request of primgr and of the baseline)
    let mut runs: Vec<(Mode, u32, WrkResult, WrkResult, f64, f64)> = Vec::new();
    for round in 1..=o.rounds {
        for mode in MODES {
            progress(format!(
                "1. round {round}/{}: {} ({} s each) ...",
                o.rounds,
                mode.label(),
                o.seconds
            ));
            let one = |url: &str, pid: u32| {
                let url = url.to_string();
                async move {
                    let cpu0 = cpu_time(pid)?;
                    let r = wrk.run(&url, mode, o.seconds).await?;
                    let cpu = cpu_time(pid)? - cpu0;
                    Ok::<_, anyhow::Error>((r.clone(), cpu.as_secs_f64() * 1e6 / r.requests as f64))
                }
            };
            let ((p, pcpu), (b, bcpu)) = if round % 2 == 1 {
                let p = one(&s.primgr_url, s.primgr_pid).await?;
                (p, one(&s.baseline_url, s.baseline_pid).await?)
            } else {
                let b = one(&s.baseline_url, s.baseline_pid).await?;
                (one(&s.primgr_url, s.primgr_pid).await?, b)
            };
            for (who, r) in [("primgr", &p), ("baseline", &b)] {
                ensure!(
                    r.status_errors == 0,
                    "{who} answered {} of {} requests with a non-2xx status ({})",
                    r.status_errors,
                    r.requests,
                    mode.label()
                );
            }
            runs.push((mode, round, p, b, pcpu, bcpu));
        }
    }
    let mut t = Table::new(&[
        "load",
        "round",
        "primgr req/s",
        "baseline req/s",
        "ratio",
        "primgr p50 / p99",
        "baseline p50 / p99",
        "p99 ratio",
        "CPU/req p / b",
        "errors p/b",
    ]);
    for mode in MODES {
        let mut ratios = Vec::new();
        let mut p99_ratios = Vec::new();
        let mut cpu_ratios = Vec::new();
        for (_, round, p, b, pcpu, bcpu) in runs.iter().filter(|r| r.0 == mode) {
            let ratio = p.rps() / b.rps();
            let p99_ratio = p.p99_us as f64 / (b.p99_us as f64).max(1.0);
            ratios.push(ratio);
            p99_ratios.push(p99_ratio);
            cpu_ratios.push(pcpu / bcpu);
            t.row(vec![
                mode.label(),
                round.to_string(),
                format!("{:.0}", p.rps()),
                format!("{:.0}", b.rps()),
                format!("{ratio:.3}"),
                format!("{} / {}", micros(p.p50_us as f64), micros(p.p99_us as f64)),
                format!("{} / {}", micros(b.p50_us as f64), micros(b.p99_us as f64)),
                format!("{p99_ratio:.2}"),
                format!("{pcpu:.1} / {bcpu:.1} µs"),
                format!("{}/{}", p.socket_errors, b.socket_errors),
            ]);
        }
        let (r, pr, cr) = (median(&ratios), median(&p99_ratios), median(&cpu_ratios));
        t.row(vec![
            mode.label(),
            "median".into(),
            String::new(),
            String::new(),
            format!("{r:.3}"),
            String::new(),
            String::new(),
            format!("{pr:.2}"),
            format!("ratio {cr:.2}"),
            String::new(),
        ]);
        f.lines.push(
            Line::new(
                format!("1 /state req/s primgr ÷ baseline, {}", mode.label()),
                format!("{r:.3} (median of {})", ratios.len()),
            )
            .target("≥ 0.90", r >= 0.90),
        );
        f.lines.push(
            Line::new(
                format!("1 /state p99 primgr ÷ baseline, {}", mode.label()),
                format!("{pr:.2} (median of {})", p99_ratios.len()),
            )
            .target("≤ 1.20", pr <= 1.20),
        );
        f.lines.push(Line::new(
            format!(
                "1 /state server CPU per request primgr ÷ baseline, {}",
                mode.label()
            ),
            format!("{cr:.2} (median of {})", cpu_ratios.len()),
        ));
    }
    writeln!(
        f.details,
        "1. GET /state with wrk -t2 (alternating; odd rounds primgr first), {} s per run; \
         CPU/req = the server process's user + system time per request:\n{}",
        o.seconds,
        t.render()
    )?;
    Ok(())
}

/// Measurement 1, noise-free part: user-space instructions per `/state`, primgr (a second
/// daemon for node1 on 127.0.X.9, reading node1's database) and the baseline (on 127.0.X.10)
/// each under callgrind, one after the other.
async fn instruction_counts(
    o: &Opts,
    lab: &Lab,
    wrk: &Wrk,
    answer: &RawResponse,
    f: &mut Findings,
) -> Result<()> {
    let what =
        "1 user-space instructions per /state, primgr / baseline (callgrind, keep-alive, 4 conns)";
    if !callgrind::available() {
        f.lines
            .push(Line::new(what, "skipped: valgrind is not installed"));
        return Ok(());
    }
    progress("1. instructions per request under callgrind ...");
    let primgr_addr = SocketAddr::from((Ipv4Addr::new(127, 0, lab.subnet(), 9), DAEMON_PORT));
    let baseline_addr = SocketAddr::from((primgr_lab::node_address(lab.subnet(), 0), DAEMON_PORT));
    let mut primgr_args = vec![
        "--node-name".to_string(),
        NODE.into(),
        "--listen".into(),
        primgr_addr.to_string(),
        "--conninfo".into(),
        format!(
            "host={} port={} dbname=repmgr user=repmgr application_name=primgr-callgrind",
            lab.addr(NODE),
            primgr_lab::PG_PORT
        ),
    ];
    primgr_args.extend(daemon_args(INTERVAL));
    let targets = [
        callgrind::Target {
            label: "primgr",
            program: &o.primgr,
            args: primgr_args,
            url: format!("http://{primgr_addr}/state"),
        },
        callgrind::Target {
            label: "baseline",
            program: &o.baseline,
            args: vec![
                baseline_addr.to_string(),
                answer.status.to_string(),
                String::from_utf8_lossy(&answer.body).into_owned(),
            ],
            url: format!("http://{baseline_addr}/state"),
        },
    ];
    let mut counts = Vec::new();
    for t in &targets {
        counts.push(
            callgrind::instructions_per_request(
                &o.work_dir(),
                t,
                wrk,
                Mode::KeepAlive(4),
                o.seconds,
            )
            .await?,
        );
    }
    f.lines.push(Line::new(
        what,
        format!(
            "{:.0} / {:.0} = {:.2}",
            counts[0],
            counts[1],
            counts[0] / counts[1]
        ),
    ));
    Ok(())
}

/// Measurement 3: resident memory of both servers after the load.
fn resident_memory(s: &Servers, f: &mut Findings) -> Result<()> {
    let (p_rss, p_hwm) = memory(s.primgr_pid)?;
    let (b_rss, b_hwm) = memory(s.baseline_pid)?;
    f.lines.push(
        Line::new(
            "3 primgr resident memory after the load (VmRSS; peak VmHWM)",
            format!("{} (peak {})", mib(p_rss), mib(p_hwm)),
        )
        .target("≤ 10 MiB (peak)", p_hwm <= 10 * 1024 * 1024),
    );
    f.lines.push(Line::new(
        "3 baseline resident memory after the load (VmRSS; peak VmHWM)",
        format!("{} (peak {})", mib(b_rss), mib(b_hwm)),
    ));
    Ok(())
}

/// Measurement 4: `/realPrimary` with every peer healthy, then with one blackholed.
async fn real_primary_latency(o: &Opts, lab: &Lab, f: &mut Findings) -> Result<()> {
    let healthy = real_primary(lab, o.samples(30, 10)).await?;
    lab.cut_with(NODE, BLACKHOLED, CutMode::Drop).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cut = real_primary(lab, o.samples(9, 3)).await;
    lab.heal(NODE, BLACKHOLED).await?;
    let cut = cut?;
    let limit_us = (PEER_TIMEOUT_MS + 50) as f64 * 1000.0;
    f.lines.push(Line::new(
        "4 /realPrimary, every peer healthy (p50; max)",
        format!(
            "{} ({}; {} requests)",
            micros(median(&healthy)),
            micros(quantile(&healthy, 1.0)),
            healthy.len()
        ),
    ));
    let cut_p50 = median(&cut);
    f.lines.push(
        Line::new(
            format!("4 /realPrimary, {BLACKHOLED} blackholed (p50; max)"),
            format!(
                "{} ({}; {} requests)",
                micros(cut_p50),
                micros(quantile(&cut, 1.0)),
                cut.len()
            ),
        )
        .target(
            format!("≤ peer_timeout + 50 ms = {} ms", PEER_TIMEOUT_MS + 50),
            cut_p50 <= limit_us,
        ),
    );
    wait_site(lab).await
}

/// Measurement 5: the poll cycle at 2, 8, 32 and 64 voters.
async fn poll_cycle_scaling(o: &Opts, lab: &Lab, f: &mut Findings) -> Result<()> {
    let cycles = poll_cycles(o, lab).await?;
    let mut t = Table::new(&[
        "voters",
        "cycles",
        "cycle p50",
        "p90",
        "max",
        "slowest voter p50",
    ]);
    for c in &cycles {
        t.row(vec![
            c.voters.to_string(),
            c.cycle_ms.len().to_string(),
            format!("{:.2} ms", median(&c.cycle_ms)),
            format!("{:.2} ms", quantile(&c.cycle_ms, 0.9)),
            format!("{:.2} ms", quantile(&c.cycle_ms, 1.0)),
            format!("{:.2} ms", median(&c.slowest_voter_ms)),
        ]);
    }
    writeln!(
        f.details,
        "5. poll cycle (cycle_ms of node1's /status: database query + fan-out to the voters; \
         interval {CYCLE_INTERVAL_MS} ms; voters beyond node2 and node3 are fake peers served by \
         primgr-bench on the same CPUs):\n{}",
        t.render()
    )?;
    let first = cycles.first().map_or(f64::NAN, |c| median(&c.cycle_ms));
    let last = cycles.last().map_or(f64::NAN, |c| median(&c.cycle_ms));
    let ratio = last / first;
    f.lines.push(
        Line::new(
            "5 poll cycle p50 at 2 / 8 / 32 / 64 voters",
            cycles
                .iter()
                .map(|c| format!("{:.2}", median(&c.cycle_ms)))
                .collect::<Vec<_>>()
                .join(" / ")
                + " ms",
        )
        .target(format!("64 ≤ 2 × 2 (ratio {ratio:.2})"), ratio <= 2.0),
    );
    Ok(())
}

fn render(o: &Opts, machine: &Machine, mut f: Findings) -> Outcome {
    // In the order of the measurements (the callgrind count of 1 runs after 3).
    f.lines
        .sort_by_key(|l| l.what.split_whitespace().next().map(str::to_string));
    let mut summary = Table::new(&["measurement", "value", "target", "verdict"]);
    let mut missed = 0;
    for l in &f.lines {
        if l.pass == Some(false) {
            missed += 1;
        }
        summary.row(vec![
            l.what.clone(),
            l.value.clone(),
            l.target.clone(),
            l.pass.map_or("", verdict).to_string(),
        ]);
    }
    let mode = if o.short {
        "short mode (a smoke test: too few samples for the verdicts to mean much)"
    } else {
        "full mode"
    };
    let mut text = format!(
        "primgr benchmark, {} — {mode}: {} round(s) × {} s per load run\n\
         machine: {}, {} CPUs, Linux {}; load average {} at start, {} at end\n\
         primgr {}; daemons: --interval {INTERVAL} --peer-timeout {PEER_TIMEOUT_MS}ms (release build)\n\
         primgr and the baseline both run tokio multi-thread with 2 workers; wrk (2 threads) \
         shares the same CPUs, so runs alternate\n\n",
        machine.date,
        o.rounds,
        o.seconds,
        machine.cpu,
        machine.cpus,
        machine.kernel,
        machine.load_before,
        loadavg(),
        machine.revision,
    );
    text.push_str(&f.details);
    text.push_str("Summary:\n");
    text.push_str(&summary.render());
    text.push_str(&format!(
        "\n{} of {} targets met.\n",
        f.lines.iter().filter(|l| l.pass == Some(true)).count(),
        f.lines.iter().filter(|l| l.pass.is_some()).count()
    ));
    Outcome { text, missed }
}

/// User + system CPU time of a process so far.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad /proc/{pid}/stat field {}", i + 3))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64(
        (ticks(11)? + ticks(12)?) as f64 / hz,
    ))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// VmRSS and VmHWM of a process, in bytes.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad line {line:?}"))?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Waits until node1 answers 200 and every other node 202 on `/state`.
async fn wait_site(lab: &Lab) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut codes = Vec::new();
        for n in lab.node_names() {
            let code = http::get(lab.daemon_addr(&n), "/state", HTTP_TIMEOUT)
                .await
                .map(|r| r.status)
                .unwrap_or(0);
            codes.push((n.clone(), code));
        }
        if codes
            .iter()
            .all(|(n, c)| *c == if n == NODE { 200 } else { 202 })
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the site did not settle (node1 200, others 202) within 60 s: {codes:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A whole response as it came over the wire.
struct RawResponse {
    status: u16,
    status_line: String,
    /// (lower-case name, value), in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    /// Same status line, same header names, same values except `date`, same body.
    fn same_as(&self, other: &RawResponse) -> bool {
        let key = |r: &RawResponse| {
            let mut h: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = if k == "date" {
                        String::new()
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect();
            h.sort();
            h
        };
        self.status_line == other.status_line && key(self) == key(other) && self.body == other.body
    }

    fn describe(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| {
                if k == "date" {
                    format!("{k}: …")
                } else {
                    format!("{k}: {v}")
                }
            })
            .collect();
        format!(
            "{} [{}] {}",
            self.status_line,
            headers.join(", "),
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// `GET path` over a fresh connection; the response as sent.
async fn fetch_raw(addr: SocketAddr, path: &str) -> Result<RawResponse> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("GET http://{addr}{path}: no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        // The bench asked for `Connection: close`; both servers echo it.
        .filter(|(k, _)| k != "connection")
        .collect();
    Ok(RawResponse {
        status,
        status_line,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// The transaction count of measurement 2.
struct Xacts {
    idle_secs: f64,
    load_secs: f64,
    idle_xacts: i64,
    load_xacts: i64,
    checks: u64,
    idle_log: pgstat::Statements,
    load_log: pgstat::Statements,
    terminated: Vec<u32>,
}

impl Xacts {
    /// Transactions of the loaded window beyond the background rate over the same time.
    fn excess(&self) -> f64 {
        self.load_xacts as f64 - self.idle_xacts as f64 * self.load_secs / self.idle_secs
    }

    fn per_check(&self) -> f64 {
        self.excess().max(0.0) / self.checks.max(1) as f64
    }

    /// Zero per check: nothing but poll queries in the log under load, and no more
    /// transactions than the poller's background give or take two poll cycles (a window can
    /// hold one cycle more or less than the other at each edge; each cycle is one transaction).
    fn zero(&self) -> bool {
        self.load_log.total == self.load_log.poll_queries && self.excess() <= 2.0
    }

    fn report(&self, f: &mut Findings) -> Result<()> {
        writeln!(f.details, "2. {}\n", self.describe())?;
        f.lines.push(
            Line::new(
                "2 database transactions per health check",
                format!(
                    "{:.5} ({:+.1} xacts beyond the poller's background over {} checks)",
                    self.per_check(),
                    self.excess(),
                    self.checks
                ),
            )
            .target("0", self.zero()),
        );
        f.lines.push(Line::new(
            "2 statements logged for primgr, idle / loaded window",
            format!(
                "{} / {} (poll queries {} / {}; other {} / {})",
                self.idle_log.total,
                self.load_log.total,
                self.idle_log.poll_queries,
                self.load_log.poll_queries,
                self.idle_log.total - self.idle_log.poll_queries,
                self.load_log.total - self.load_log.poll_queries
            ),
        ));
        Ok(())
    }

    fn describe(&self) -> String {
        let others = if self.load_log.others.is_empty() {
            String::new()
        } else {
            format!("\n   other statements: {:?}", self.load_log.others)
        };
        format!(
            "database transactions (pg_stat_database of repmgr on node1, xact_commit + \
             xact_rollback; primgr's connections ended at each edge — {:?} — so the counts land):\n   \
             idle window {:.1} s: {} xacts, {} primgr statements ({} poll queries)\n   \
             loaded window {:.1} s: {} xacts, {} primgr statements ({} poll queries), {} health \
             checks\n   excess over the background rate: {:+.1} xacts → {:.6} per check{}",
            self.terminated,
            self.idle_secs,
            self.idle_xacts,
            self.idle_log.total,
            self.idle_log.poll_queries,
            self.load_secs,
            self.load_xacts,
            self.load_log.total,
            self.load_log.poll_queries,
            self.checks,
            self.excess(),
            self.per_check(),
            others
        )
    }
}

async fn transactions(o: &Opts, lab: &Lab, wrk: &Wrk, url: &str) -> Result<Xacts> {
    let seconds = o.xact_seconds();
    pgstat::enable_statement_log(lab, NODE).await?;
    // Autovacuum workers would add transactions of their own to the database's counters.
    lab.psql_db(NODE, "postgres", "ALTER SYSTEM SET autovacuum = off")
        .await?;
    lab.psql_db(NODE, "postgres", "SELECT pg_reload_conf()")
        .await?;
    let r = transaction_windows(lab, wrk, url, seconds).await;
    let restore = async {
        pgstat::disable_statement_log(lab, NODE).await?;
        lab.psql_db(NODE, "postgres", "ALTER SYSTEM RESET autovacuum")
            .await?;
        lab.psql_db(NODE, "postgres", "SELECT pg_reload_conf()")
            .await
    }
    .await;
    let x = r?;
    restore?;
    Ok(x)
}

async fn transaction_windows(lab: &Lab, wrk: &Wrk, url: &str, seconds: u64) -> Result<Xacts> {
    let log = lab.node_log(NODE)?;
    let e0 = pgstat::edge(lab, NODE, "primgr").await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let e1 = pgstat::edge(lab, NODE, "primgr").await?;
    let t1 = Instant::now();
    let load = wrk.run(url, Mode::KeepAlive(64), seconds).await?;
    ensure!(
        load.status_errors == 0,
        "primgr answered {} health checks with a non-2xx status",
        load.status_errors
    );
    let e2 = pgstat::edge(lab, NODE, "primgr").await?;
    let t2 = Instant::now();
    Ok(Xacts {
        idle_secs: (t1 - t0).as_secs_f64(),
        load_secs: (t2 - t1).as_secs_f64(),
        idle_xacts: e1.xacts - e0.xacts,
        load_xacts: e2.xacts - e1.xacts,
        checks: load.requests,
        idle_log: pgstat::statements(&log, e0.log_offset, e1.log_offset, "primgr")?,
        load_log: pgstat::statements(&log, e1.log_offset, e2.log_offset, "primgr")?,
        terminated: vec![e0.terminated, e1.terminated, e2.terminated],
    })
}

/// `n` sequential `GET /realPrimary` on node1 (new connection each); their latencies in µs.
async fn real_primary(lab: &Lab, n: usize) -> Result<Vec<f64>> {
    let addr = lab.daemon_addr(NODE);
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = http::get(addr, "/realPrimary", HTTP_TIMEOUT).await?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(
            r.status == 200 && r.body.contains(&format!("\"{NODE}\"")),
            "/realPrimary answered {} {}",
            r.status,
            r.body
        );
    }
    Ok(v)
}

/// Address of fake peer `k` (1-based): `127.0.<subnet>.<100+k>`.
fn fake_addr(subnet: u8, k: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, subnet, (100 + k) as u8)
}

/// The sampled cycles at one voter count.
struct Cycles {
    voters: usize,
    cycle_ms: Vec<f64>,
    /// Per cycle, the latency of the slowest voter (the fan-out's share of the cycle).
    slowest_voter_ms: Vec<f64>,
}

async fn poll_cycles(o: &Opts, lab: &Lab) -> Result<Vec<Cycles>> {
    let max_fakes = VOTERS.iter().max().copied().unwrap_or(2) - 2;
    let addrs: Vec<SocketAddr> = (1..=max_fakes)
        .map(|k| SocketAddr::from((fake_addr(lab.subnet(), k), DAEMON_PORT)))
        .collect();
    let _fakes = fake::FakePeers::start(&addrs, NODE).await?;
    lab.stop_daemon(NODE).await?;
    let args = vec![
        "--interval".to_string(),
        format!("{CYCLE_INTERVAL_MS}ms"),
        "--peer-timeout".into(),
        format!("{PEER_TIMEOUT_MS}ms"),
    ];
    lab.spawn_daemon(NODE, &o.primgr, &args).await?;
    lab.wait_daemon_ready(NODE, Duration::from_secs(30)).await?;
    let r = sample_cycles(o, lab).await;
    let cleanup = lab
        .psql(NODE, "DELETE FROM repmgr.nodes WHERE node_id > 100")
        .await;
    let r = r?;
    cleanup?;
    Ok(r)
}

async fn sample_cycles(o: &Opts, lab: &Lab) -> Result<Vec<Cycles>> {
    let location = lab.location(NODE)?;
    let own_voters = lab
        .node_names()
        .iter()
        .filter(|n| n.as_str() != NODE && lab.location(n).ok().as_ref() == Some(&location))
        .count();
    let wanted = o.samples(40, 12);
    let mut out = Vec::new();
    for voters in VOTERS {
        ensure!(
            voters >= own_voters,
            "the lab already has {own_voters} voters"
        );
        let fakes = voters - own_voters;
        lab.psql(
            NODE,
            &format!(
                "DELETE FROM repmgr.nodes WHERE node_id > 100; \
                 INSERT INTO repmgr.nodes (node_id, upstream_node_id, active, node_name, type, \
                 location, priority, conninfo, repluser, config_file) \
                 SELECT 100 + k, 1, true, 'fake' || k, 'standby', '{location}', 0, \
                 format('host=127.0.{}.%s port=5432 user=repmgr dbname=repmgr', 100 + k), \
                 'repmgr', '' FROM generate_series(1, {fakes}) AS k",
                lab.subnet()
            ),
        )
        .await?;
        progress(format!("5. {voters} voters ..."));
        out.push(cycles_at(lab, voters, wanted).await?);
    }
    Ok(out)
}

/// Samples `wanted` poll cycles of node1 once it asks `voters` voters and all vote for it
/// (the first two such cycles are skipped: they open the connections to new voters).
async fn cycles_at(lab: &Lab, voters: usize, wanted: usize) -> Result<Cycles> {
    let addr = lab.daemon_addr(NODE);
    let budget = Duration::from_secs(30)
        + Duration::from_millis(CYCLE_INTERVAL_MS + PEER_TIMEOUT_MS) * (wanted as u32 + 4);
    let deadline = Instant::now() + budget;
    let mut last_seen: Option<String> = None;
    let mut skipped = 0;
    let mut samples = Cycles {
        voters,
        cycle_ms: Vec::new(),
        slowest_voter_ms: Vec::new(),
    };
    let mut last_status = Value::Null;
    let mut pause = Duration::ZERO;
    while samples.cycle_ms.len() < wanted {
        if Instant::now() > deadline {
            bail!(
                "{voters} voters: only {} cycles sampled within {budget:?}; last /status: {last_status}",
                samples.cycle_ms.len()
            );
        }
        tokio::time::sleep(pause).await;
        pause = Duration::from_millis(CYCLE_INTERVAL_MS / 4);
        let Ok(r) = http::get(addr, "/status", HTTP_TIMEOUT).await else {
            continue;
        };
        let Ok(status) = serde_json::from_str::<Value>(&r.body) else {
            continue;
        };
        // Rendering /status costs the daemon CPU: ask half-way between two cycles, never
        // while one runs.
        if let Some(age) = status["snapshot_age_ms"].as_f64() {
            let interval = CYCLE_INTERVAL_MS as f64;
            let wait = interval - age.rem_euclid(interval) + interval / 2.0;
            pause = Duration::from_secs_f64(wait.clamp(10.0, 2.0 * interval) / 1000.0);
        }
        let observed = status["observed_at"].as_str().map(String::from);
        let asked = status["voters"].as_array().map_or(0, Vec::len);
        let all_for_us = status["voters"]
            .as_array()
            .is_some_and(|v| v.iter().all(|x| x["votes_for_us"] == Value::Bool(true)));
        let cycle_ms = status["cycle_ms"].as_f64();
        let slowest = status["voters"].as_array().map(|v| {
            v.iter()
                .filter_map(|x| x["latency_ms"].as_f64())
                .fold(0.0, f64::max)
        });
        let fresh = observed.is_some() && observed != last_seen;
        last_status = status;
        if !fresh {
            continue;
        }
        last_seen = observed;
        if asked != voters || !all_for_us {
            skipped = 0;
            continue;
        }
        if skipped < 2 {
            skipped += 1;
            continue;
        }
        if let (Some(ms), Some(slowest)) = (cycle_ms, slowest) {
            samples.cycle_ms.push(ms);
            samples.slowest_voter_ms.push(slowest);
        }
    }
    Ok(samples)
}
