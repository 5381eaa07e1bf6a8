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
//! (`--interval 1s --peer-timeout 500ms`), starts `baseline` (the smallest hyper server that
//! answers `GET /state` with the same status, headers and body as node1's daemon), and measures:
//!
//! 1. `GET /state` as an outsider measures it: `wrk -t2` at 64 keep-alive connections (a full
//!    run also at 64 that each wait 5 ms between an answer and the next request, at 4, and
//!    with a new connection per request: 16 connections sending `Connection: close`);
//!    primgr, the baseline and a second copy of the baseline (the A/A control, the
//!    measurement's resolution) one after the other over 5 rounds, the order rotating; each
//!    server's CPU per request from `/proc/PID/stat` over its run; req/s, CPU µs per request
//!    and p99 of each, medians and spread, and the ratios;
//!    the heap allocations per request of both servers, counted in-process
//!    (`allocations.rs`); then, when valgrind is installed, the user-space instructions per
//!    request of each under callgrind (figures the machine's other load does not move);
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

// Layout (one module per measurement, then the tools they use):
//   opts.rs           command line
//   report.rs         the summary lines, the machine, the printed report
//   throughput.rs     1. /state under wrk, primgr, the baseline and the A/A control rotating
//   allocations.rs    1. heap allocations per /state, in-process (the global allocator)
//   instructions.rs   1. instructions per /state under callgrind (noise-free part of 1)
//   transactions.rs   2. database transactions per health check
//   memory.rs         3. resident memory after the load
//   real_primary.rs   4. /realPrimary latency, healthy and with a peer blackholed
//   poll_cycle.rs     5. poll cycle wall time at 2..64 voters
//   wrk.rs            load generation with wrk
//   callgrind.rs      valgrind's callgrind around a server
//   pgstat.rs         pg_stat_database and statement-log counts of a window
//   fake.rs           fake peers for measurement 5
//   hello.rs          the baseline's server (also the `baseline` binary's)
// Shared with the tests (one copy in primgr-lab): statistics (`stats`), tables (`table`),
// /proc readers (`procfs`), the raw HTTP exchange (`http`), bounded waits (`wait`).

mod allocations;
mod callgrind;
mod fake;
mod hello;
mod instructions;
mod memory;
mod opts;
mod pgstat;
mod poll_cycle;
mod real_primary;
mod report;
mod throughput;
mod transactions;
mod wrk;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use primgr_lab::http::{self, RawResponse};
use primgr_lab::wait::{listening, wait_for_every};
use primgr_lab::{DAEMON_PORT, Lab, LabSpec};

use crate::opts::{Opts, USAGE};
use crate::report::{Findings, Machine, Outcome, render, write_report};
use crate::wrk::{Mode, Wrk};

/// Counts the allocations of the servers measured in-process ([`allocations`]).
#[global_allocator]
static ALLOCATOR: allocations::Counting = allocations::Counting;

/// Daemon settings of the whole run (the poll-cycle measurement changes node1's interval).
const INTERVAL: &str = "1s";
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
const MODES: [Mode; 4] = [
    Mode::KeepAlive(64),
    Mode::Paced(64, 5),
    Mode::KeepAlive(4),
    Mode::Close(16),
];
/// Bound on one HTTP exchange made by the bench itself.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The two servers under test.
struct Servers {
    primgr_url: String,
    primgr_addr: SocketAddr,
    primgr_pid: u32,
    /// primgr's log, for what it said when it answered anything but 2xx.
    primgr_log: Option<std::path::PathBuf>,
    baseline_url: String,
    baseline_pid: u32,
    /// A second copy of the baseline, the A/A control: what the measurement shows between two
    /// identical servers is its noise.
    control_url: String,
    control_pid: u32,
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
    let mut daemons = BTreeMap::new();
    for n in lab.node_names() {
        let daemon = lab
            .daemon(&n, &o.primgr)?
            .args(daemon_args(INTERVAL))
            .spawn()?;
        daemons.insert(n, daemon);
    }
    for d in daemons.values_mut() {
        d.ready(Duration::from_secs(30)).await?;
    }
    wait_site(lab).await?;
    let node1 = daemons.get_mut(NODE).context("the lab has no node1")?;

    let primgr_addr = lab.daemon_addr(NODE);
    let primgr_state = fetch_raw(primgr_addr, "/state").await?;
    let baseline_addr = SocketAddr::from((primgr_lab::node_address(lab.subnet(), 0), DAEMON_PORT));
    let control_addr = SocketAddr::new(baseline_addr.ip(), DAEMON_PORT + 1);
    let start_baseline = |addr: SocketAddr| {
        tokio::process::Command::new(&o.baseline)
            .arg(addr.to_string())
            .arg(primgr_state.status.to_string())
            .arg(String::from_utf8_lossy(&primgr_state.body).into_owned())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", o.baseline.display()))
    };
    let mut baseline = start_baseline(baseline_addr)?;
    let mut control = start_baseline(control_addr)?;
    let servers = Servers {
        primgr_url: format!("http://{primgr_addr}/state"),
        primgr_addr,
        primgr_pid: node1.pid().context("node1's daemon is not running")?,
        primgr_log: node1.log_path().map(Into::into),
        baseline_url: format!("http://{baseline_addr}/state"),
        baseline_pid: baseline.id().context("baseline exited at once")?,
        control_url: format!("http://{control_addr}/state"),
        control_pid: control
            .id()
            .context("the control baseline exited at once")?,
    };
    for addr in [baseline_addr, control_addr] {
        listening(addr, Duration::from_secs(10)).await?;
        let baseline_state = fetch_raw(addr, "/state").await?;
        ensure!(
            same_answer(&primgr_state, &baseline_state),
            "the baseline at {addr} does not answer like primgr:\nprimgr:   {}\nbaseline: {}",
            describe(&primgr_state),
            describe(&baseline_state)
        );
    }
    writeln!(
        f.details,
        "GET /state — both answer: {}\n",
        describe(&primgr_state)
    )?;

    if o.runs(1) {
        throughput::measure(o, wrk, &servers, &mut f).await?;
        // Blocking (a client thread and two runtimes of its own): off this runtime's workers.
        tokio::task::block_in_place(|| allocations::measure(&mut f))?;
    }
    if o.runs(2) {
        progress("2. database transactions per health check ...");
        transactions::measure(o, lab, wrk, &servers.primgr_url, &mut f).await?;
    }
    if o.runs(3) {
        memory::measure(&servers, &mut f)?;
    }
    for b in [&mut baseline, &mut control] {
        b.start_kill().ok();
        let _ = b.wait().await;
    }
    if o.runs(1) {
        instructions::measure(o, lab, wrk, &primgr_state, &mut f).await?;
    }
    if o.runs(4) {
        progress("4. /realPrimary latency ...");
        real_primary::measure(o, lab, &mut f).await?;
    }
    if o.runs(5) {
        progress("5. poll cycle vs number of voters ...");
        poll_cycle::measure(o, lab, node1, &mut f).await?;
    }
    for d in daemons.values_mut() {
        d.stop().await;
    }
    Ok(render(o, machine, f))
}

/// Waits until node1 answers 200 and every other node 202 on `/state`.
async fn wait_site(lab: &Lab) -> Result<()> {
    let names = lab.node_names();
    let last = std::cell::RefCell::new(Vec::new());
    wait_for_every(
        "the site settles (node1 200, others 202)",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let mut codes = Vec::new();
            for n in &names {
                let code = http::get(lab.daemon_addr(n), "/state", HTTP_TIMEOUT)
                    .await
                    .map(|r| r.status)
                    .unwrap_or(0);
                codes.push((n.clone(), code));
            }
            let settled = codes
                .iter()
                .all(|(n, c)| *c == if n == NODE { 200 } else { 202 });
            *last.borrow_mut() = codes;
            Ok(settled)
        },
    )
    .await
    .map(drop)
    .with_context(|| format!("last codes: {:?}", last.borrow()))
}

/// `GET path` over a fresh connection; the response as sent.
async fn fetch_raw(addr: SocketAddr, path: &str) -> Result<RawResponse> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http::request(addr, request.as_bytes(), HTTP_TIMEOUT).await
}

/// Whether two answers are the same to a client: same status line, same header names, same
/// values except `date`, same body. (`connection` is left out: the bench asked for
/// `Connection: close` and both servers echo it.)
fn same_answer(a: &RawResponse, b: &RawResponse) -> bool {
    let key = |r: &RawResponse| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| k != "connection")
            .map(|(k, v)| {
                (
                    k.clone(),
                    if k == "date" {
                        String::new()
                    } else {
                        v.clone()
                    },
                )
            })
            .collect();
        h.sort();
        h
    };
    a.status_line == b.status_line && key(a) == key(b) && a.body == b.body
}

/// An answer on one line for the report (the date left out).
fn describe(r: &RawResponse) -> String {
    let headers: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| k != "connection")
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
        r.status_line,
        headers.join(", "),
        String::from_utf8_lossy(&r.body)
    )
}
