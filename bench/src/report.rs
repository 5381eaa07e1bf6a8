//! What the run reports: the summary lines with their targets and verdicts ([`Line`]), the
//! detail tables the measurements write ([`Findings`]), the machine it ran on ([`Machine`]), and
//! the printed report ([`render`]).

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result};
use primgr_lab::procfs::loadavg;
use primgr_lab::table::Table;

use crate::opts::Opts;
use crate::{INTERVAL, PEER_TIMEOUT_MS};

pub(crate) fn write_report(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The printed report and how many targets it misses.
pub(crate) struct Outcome {
    pub(crate) text: String,
    pub(crate) missed: usize,
}

/// What the report says about the machine.
pub(crate) struct Machine {
    date: String,
    cpu: String,
    cpus: usize,
    kernel: String,
    revision: String,
    load_before: String,
}

impl Machine {
    pub(crate) fn probe() -> Machine {
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

/// One line of the summary table.
pub(crate) struct Line {
    what: String,
    value: String,
    target: String,
    /// None: informational, no target.
    pass: Option<bool>,
}

impl Line {
    pub(crate) fn new(what: impl Into<String>, value: impl Into<String>) -> Line {
        Line {
            what: what.into(),
            value: value.into(),
            target: "—".into(),
            pass: None,
        }
    }
    pub(crate) fn target(mut self, target: impl Into<String>, pass: bool) -> Line {
        self.target = target.into();
        self.pass = Some(pass);
        self
    }
}

/// What the measurements write: detail tables and summary lines.
#[derive(Default)]
pub(crate) struct Findings {
    pub(crate) details: String,
    pub(crate) lines: Vec<Line>,
}

pub(crate) fn render(o: &Opts, machine: &Machine, mut f: Findings) -> Outcome {
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
         primgr and the baseline (and its copy, the A/A control) run tokio multi-thread with 2 \
         workers; wrk (2 threads) shares the same CPUs, so runs take turns\n\n",
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

/// "PASS" or "MISS".
fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}
