//! Measurement 1: `GET /state` under wrk, measured as an outsider measures it: `wrk -t2` at 64
//! keep-alive connections (and, in a full run, at 4, and with a new connection per request),
//! primgr and the baseline one after the other over at least 5 rounds, alternating which goes
//! first; each server's CPU time (user + system, `/proc/PID/stat`) over its own run divided by
//! the requests wrk completed. Reported per server, not only as ratios: requests per second,
//! CPU µs per request and p99 of each, their medians and spread (lowest–highest) over the
//! rounds, and the per-round ratios' medians; the load average is printed with each run, since
//! the machine's other work moves every figure here (the callgrind and allocation counts are
//! the ones it does not move).

use std::fmt::Write as _;

use anyhow::{Result, bail};
use primgr_lab::procfs::{cpu_time, loadavg};
use primgr_lab::stats::{median, micros, quantile};
use primgr_lab::table::Table;

use crate::opts::Opts;
use crate::report::{Findings, Line};
use crate::wrk::{Mode, Wrk, WrkResult};
use crate::{MODES, Servers, progress};

/// One server's run: what wrk saw and the server's CPU per request.
#[derive(Clone, Debug)]
struct Run {
    wrk: WrkResult,
    cpu_us: f64,
}

/// One round of one load: both servers, and who went first.
struct Round {
    mode: Mode,
    round: u32,
    primgr_first: bool,
    primgr: Run,
    baseline: Run,
    load: String,
}

/// The load modes measured: all of [`MODES`] in a full run, the 64-connection one in a short.
fn modes(o: &Opts) -> Vec<Mode> {
    if o.short {
        MODES[..1].to_vec()
    } else {
        MODES.to_vec()
    }
}

/// Measurement 1: `/state` under wrk, primgr and the baseline alternating.
pub(crate) async fn measure(o: &Opts, wrk: &Wrk, s: &Servers, f: &mut Findings) -> Result<()> {
    progress("1. /state under wrk: warming up ...");
    for u in [&s.primgr_url, &s.baseline_url] {
        wrk.run(u, Mode::KeepAlive(64), 1).await?;
    }
    let mut rounds: Vec<Round> = Vec::new();
    for round in 1..=o.rounds {
        for mode in modes(o) {
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
                    let cpu_us = cpu.as_secs_f64() * 1e6 / r.requests as f64;
                    Ok::<_, anyhow::Error>(Run { wrk: r, cpu_us })
                }
            };
            let load = loadavg();
            let primgr_first = round % 2 == 1;
            let (primgr, baseline) = if primgr_first {
                let p = one(&s.primgr_url, s.primgr_pid).await?;
                (p, one(&s.baseline_url, s.baseline_pid).await?)
            } else {
                let b = one(&s.baseline_url, s.baseline_pid).await?;
                (one(&s.primgr_url, s.primgr_pid).await?, b)
            };
            for (who, r) in [("primgr", &primgr), ("baseline", &baseline)] {
                if r.wrk.status_errors > 0 {
                    let why = if who == "primgr" {
                        primgr_account(s).await
                    } else {
                        String::new()
                    };
                    bail!(
                        "{who} answered {} of {} requests with a non-2xx status ({}){why}",
                        r.wrk.status_errors,
                        r.wrk.requests,
                        mode.label()
                    );
                }
            }
            rounds.push(Round {
                mode,
                round,
                primgr_first,
                primgr,
                baseline,
                load,
            });
        }
    }
    for mode in modes(o) {
        report_mode(o, mode, rounds.iter().filter(|r| r.mode == mode), f)?;
    }
    Ok(())
}

/// "median (lowest–highest)" of `values`, each shown by `show`.
fn spread(values: &[f64], show: impl Fn(f64) -> String) -> String {
    format!(
        "{} ({}–{})",
        show(median(values)),
        show(quantile(values, 0.0)),
        show(quantile(values, 1.0))
    )
}

fn report_mode<'a>(
    o: &Opts,
    mode: Mode,
    rounds: impl Iterator<Item = &'a Round>,
    f: &mut Findings,
) -> Result<()> {
    let mut t = Table::new(&[
        "round",
        "first",
        "load avg",
        "req/s p / b",
        "ratio",
        "CPU µs/req p / b",
        "ratio",
        "p50 p / b",
        "p99 p / b",
        "errors p/b",
    ]);
    let (mut p_rps, mut b_rps, mut p_cpu, mut b_cpu) = (vec![], vec![], vec![], vec![]);
    let (mut p_p99, mut b_p99) = (vec![], vec![]);
    let (mut rps_ratio, mut cpu_ratio, mut p99_ratio) = (vec![], vec![], vec![]);
    for r in rounds {
        let (p, b) = (&r.primgr, &r.baseline);
        p_rps.push(p.wrk.rps());
        b_rps.push(b.wrk.rps());
        p_cpu.push(p.cpu_us);
        b_cpu.push(b.cpu_us);
        p_p99.push(p.wrk.p99_us as f64);
        b_p99.push(b.wrk.p99_us as f64);
        rps_ratio.push(p.wrk.rps() / b.wrk.rps());
        cpu_ratio.push(p.cpu_us / b.cpu_us);
        p99_ratio.push(p.wrk.p99_us as f64 / (b.wrk.p99_us as f64).max(1.0));
        t.row(vec![
            r.round.to_string(),
            if r.primgr_first { "primgr" } else { "baseline" }.into(),
            r.load.clone(),
            format!("{:.0} / {:.0}", p.wrk.rps(), b.wrk.rps()),
            format!("{:.3}", rps_ratio.last().copied().unwrap_or_default()),
            format!("{:.2} / {:.2}", p.cpu_us, b.cpu_us),
            format!("{:.3}", cpu_ratio.last().copied().unwrap_or_default()),
            format!(
                "{} / {}",
                micros(p.wrk.p50_us as f64),
                micros(b.wrk.p50_us as f64)
            ),
            format!(
                "{} / {}",
                micros(p.wrk.p99_us as f64),
                micros(b.wrk.p99_us as f64)
            ),
            format!("{}/{}", p.wrk.socket_errors, b.wrk.socket_errors),
        ]);
    }
    let n = rps_ratio.len();
    t.row(vec![
        "median".into(),
        String::new(),
        String::new(),
        format!("{:.0} / {:.0}", median(&p_rps), median(&b_rps)),
        format!("{:.3}", median(&rps_ratio)),
        format!("{:.2} / {:.2}", median(&p_cpu), median(&b_cpu)),
        format!("{:.3}", median(&cpu_ratio)),
        String::new(),
        format!("{} / {}", micros(median(&p_p99)), micros(median(&b_p99))),
        String::new(),
    ]);
    writeln!(
        f.details,
        "1. GET /state, {}: wrk -t2, {} s per run, primgr (p) and the baseline (b) one after \
         the other, alternating which goes first; CPU µs/req = the server process's user + \
         system time over its run (/proc/PID/stat) per request wrk completed:\n{}",
        mode.label(),
        o.seconds,
        t.render()
    )?;
    let label = mode.label();
    let cpu_r = median(&cpu_ratio);
    let rps_r = median(&rps_ratio);
    let p99_r = median(&p99_ratio);
    let main = mode == crate::MODES[0];
    let mut cpu_line = Line::new(
        format!("1 /state server CPU per request primgr ÷ baseline, {label}"),
        format!(
            "{cpu_r:.2} (median of {n}; {} µs / {} µs)",
            spread(&p_cpu, |v| format!("{v:.2}")),
            spread(&b_cpu, |v| format!("{v:.2}"))
        ),
    );
    let mut rps_line = Line::new(
        format!("1 /state req/s primgr ÷ baseline, {label}"),
        format!(
            "{rps_r:.3} (median of {n}; {} / {})",
            spread(&p_rps, |v| format!("{v:.0}")),
            spread(&b_rps, |v| format!("{v:.0}"))
        ),
    );
    let mut p99_line = Line::new(
        format!("1 /state p99 primgr ÷ baseline, {label}"),
        format!(
            "{p99_r:.2} (median of {n}; {} / {})",
            spread(&p_p99, micros),
            spread(&b_p99, micros)
        ),
    );
    if main {
        cpu_line = cpu_line.target("≤ 1.20", cpu_r <= 1.20);
        rps_line = rps_line.target("≥ 0.85", rps_r >= 0.85);
        p99_line = p99_line.target("≤ 1.00", p99_r <= 1.00);
    }
    f.lines.extend([cpu_line, rps_line, p99_line]);
    Ok(())
}

/// primgr's own account of answers that were not 2xx: its `/state` counters by status, why it
/// serves what it serves now, and the end of its log.
async fn primgr_account(s: &Servers) -> String {
    let mut out = String::new();
    let timeout = std::time::Duration::from_secs(2);
    match primgr_lab::http::get(s.primgr_addr, "/metrics", timeout).await {
        Ok(r) => {
            let counted = r
                .body
                .lines()
                .filter(|l| l.starts_with("primgr_http_requests_total{endpoint=\"state\""));
            for line in counted {
                let _ = write!(out, "\n  {line}");
            }
        }
        Err(e) => {
            let _ = write!(out, "\n  /metrics: {e:#}");
        }
    }
    if let Ok(r) = primgr_lab::http::get(s.primgr_addr, "/status", timeout).await {
        let _ = write!(out, "\n  /status: {}", r.body);
    }
    if let Some(log) = &s.primgr_log {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(20)..] {
            let _ = write!(out, "\n  log: {line}");
        }
    }
    out
}
