//! Measurement 1: `GET /state` under wrk, measured as an outsider measures it: `wrk -t2` at 64
//! keep-alive connections (and, in a full run, at 64 paced by 5 ms, at 4, and with a new
//! connection per request), primgr, the baseline and a second copy of the baseline (the A/A
//! control) one after the other over at least 5 rounds, the order rotating; each server's CPU
//! time (user + system, `/proc/PID/stat`) over its own run divided by the requests wrk
//! completed. Reported per server, not only as ratios: requests per second, CPU µs per
//! request and p99 of each, their medians and spread (lowest–highest) over the rounds, and
//! the per-round ratios' medians. The control's ratios to the baseline are what the
//! measurement shows between two identical servers, its resolution: the p99 target ("no
//! worse than the baseline's") passes at a median ratio of at most 1.00, or of at most the
//! highest ratio the control reached in the same run. The load average is printed with each
//! run, since the machine's other work moves every figure here (the callgrind and allocation
//! counts are the ones it does not move).

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

/// One round of one load: the three servers, in the order they ran.
struct Round {
    mode: Mode,
    round: u32,
    order: [Who; 3],
    primgr: Run,
    baseline: Run,
    control: Run,
    load: String,
}

/// The servers measured in each round: primgr, the baseline, and a second copy of the
/// baseline (the A/A control, whose ratio to the baseline is the measurement's own noise).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Primgr,
    Baseline,
    Control,
}

impl Who {
    fn letter(self) -> &'static str {
        match self {
            Who::Primgr => "p",
            Who::Baseline => "b",
            Who::Control => "c",
        }
    }
}

/// The order of round `round` (from 1): the three rotate, so that each runs first, second and
/// third as often as the rounds allow.
fn order(round: u32) -> [Who; 3] {
    let all = [Who::Primgr, Who::Baseline, Who::Control];
    let k = (round.saturating_sub(1) % 3) as usize;
    [all[k], all[(k + 1) % 3], all[(k + 2) % 3]]
}

/// The load modes measured: all of [`MODES`] in a full run, the 64-connection one in a short.
fn modes(o: &Opts) -> Vec<Mode> {
    if o.short {
        MODES[..1].to_vec()
    } else {
        MODES.to_vec()
    }
}

/// Measurement 1: `/state` under wrk, primgr, the baseline and the A/A control, the order
/// rotating.
pub(crate) async fn measure(o: &Opts, wrk: &Wrk, s: &Servers, f: &mut Findings) -> Result<()> {
    progress("1. /state under wrk: warming up ...");
    for u in [&s.primgr_url, &s.baseline_url, &s.control_url] {
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
            let order = order(round);
            let (mut primgr, mut baseline, mut control) = (None, None, None);
            for who in order {
                let (url, pid) = match who {
                    Who::Primgr => (&s.primgr_url, s.primgr_pid),
                    Who::Baseline => (&s.baseline_url, s.baseline_pid),
                    Who::Control => (&s.control_url, s.control_pid),
                };
                let r = one(url, pid).await?;
                if r.wrk.status_errors > 0 {
                    let why = if who == Who::Primgr {
                        primgr_account(s).await
                    } else {
                        String::new()
                    };
                    bail!(
                        "{who:?} answered {} of {} requests with a non-2xx status ({}){why}",
                        r.wrk.status_errors,
                        r.wrk.requests,
                        mode.label()
                    );
                }
                match who {
                    Who::Primgr => primgr = Some(r),
                    Who::Baseline => baseline = Some(r),
                    Who::Control => control = Some(r),
                }
            }
            let (Some(primgr), Some(baseline), Some(control)) = (primgr, baseline, control) else {
                bail!("a round ran without one of the three servers");
            };
            rounds.push(Round {
                mode,
                round,
                order,
                primgr,
                baseline,
                control,
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
        "order",
        "load avg",
        "req/s p / b / c",
        "p÷b",
        "CPU µs/req p / b / c",
        "p÷b",
        "p50 p / b / c",
        "p99 p / b / c",
        "p÷b",
        "c÷b",
        "errors p/b/c",
    ]);
    let (mut p_rps, mut b_rps, mut c_rps) = (vec![], vec![], vec![]);
    let (mut p_cpu, mut b_cpu, mut c_cpu) = (vec![], vec![], vec![]);
    let (mut p_p99, mut b_p99, mut c_p99) = (vec![], vec![], vec![]);
    let (mut rps_ratio, mut cpu_ratio, mut p99_ratio) = (vec![], vec![], vec![]);
    let (mut c_rps_ratio, mut c_cpu_ratio, mut c_p99_ratio) = (vec![], vec![], vec![]);
    for r in rounds {
        let (p, b, c) = (&r.primgr, &r.baseline, &r.control);
        p_rps.push(p.wrk.rps());
        b_rps.push(b.wrk.rps());
        c_rps.push(c.wrk.rps());
        p_cpu.push(p.cpu_us);
        b_cpu.push(b.cpu_us);
        c_cpu.push(c.cpu_us);
        p_p99.push(p.wrk.p99_us as f64);
        b_p99.push(b.wrk.p99_us as f64);
        c_p99.push(c.wrk.p99_us as f64);
        let b99 = (b.wrk.p99_us as f64).max(1.0);
        rps_ratio.push(p.wrk.rps() / b.wrk.rps());
        cpu_ratio.push(p.cpu_us / b.cpu_us);
        p99_ratio.push(p.wrk.p99_us as f64 / b99);
        c_rps_ratio.push(c.wrk.rps() / b.wrk.rps());
        c_cpu_ratio.push(c.cpu_us / b.cpu_us);
        c_p99_ratio.push(c.wrk.p99_us as f64 / b99);
        let last = |v: &Vec<f64>| v.last().copied().unwrap_or_default();
        t.row(vec![
            r.round.to_string(),
            r.order.map(Who::letter).join(" "),
            r.load.clone(),
            format!(
                "{:.0} / {:.0} / {:.0}",
                p.wrk.rps(),
                b.wrk.rps(),
                c.wrk.rps()
            ),
            format!("{:.3}", last(&rps_ratio)),
            format!("{:.2} / {:.2} / {:.2}", p.cpu_us, b.cpu_us, c.cpu_us),
            format!("{:.3}", last(&cpu_ratio)),
            format!(
                "{} / {} / {}",
                micros(p.wrk.p50_us as f64),
                micros(b.wrk.p50_us as f64),
                micros(c.wrk.p50_us as f64)
            ),
            format!(
                "{} / {} / {}",
                micros(p.wrk.p99_us as f64),
                micros(b.wrk.p99_us as f64),
                micros(c.wrk.p99_us as f64)
            ),
            format!("{:.3}", last(&p99_ratio)),
            format!("{:.3}", last(&c_p99_ratio)),
            format!(
                "{}/{}/{}",
                p.wrk.socket_errors, b.wrk.socket_errors, c.wrk.socket_errors
            ),
        ]);
    }
    let n = rps_ratio.len();
    t.row(vec![
        "median".into(),
        String::new(),
        String::new(),
        format!(
            "{:.0} / {:.0} / {:.0}",
            median(&p_rps),
            median(&b_rps),
            median(&c_rps)
        ),
        format!("{:.3}", median(&rps_ratio)),
        format!(
            "{:.2} / {:.2} / {:.2}",
            median(&p_cpu),
            median(&b_cpu),
            median(&c_cpu)
        ),
        format!("{:.3}", median(&cpu_ratio)),
        String::new(),
        format!(
            "{} / {} / {}",
            micros(median(&p_p99)),
            micros(median(&b_p99)),
            micros(median(&c_p99))
        ),
        format!("{:.3}", median(&p99_ratio)),
        format!("{:.3}", median(&c_p99_ratio)),
        String::new(),
    ]);
    writeln!(
        f.details,
        "1. GET /state, {}: wrk -t2, {} s per run, primgr (p), the baseline (b) and a second \
         copy of the baseline (c, the A/A control) one after the other, the order rotating; \
         CPU µs/req = the server process's user + system time over its run (/proc/PID/stat) \
         per request wrk completed; c÷b is what the measurement shows between two identical \
         servers:\n{}",
        mode.label(),
        o.seconds,
        t.render()
    )?;
    let label = mode.label();
    let cpu_r = median(&cpu_ratio);
    let rps_r = median(&rps_ratio);
    let p99_r = median(&p99_ratio);
    // The resolution of the p99 comparison: the highest ratio the A/A control reached.
    let p99_noise = quantile(&c_p99_ratio, 1.0);
    let main = mode == crate::MODES[0];
    let ratios = |v: &[f64]| spread(v, |x| format!("{x:.2}"));
    let mut cpu_line = Line::new(
        format!("1 /state server CPU per request primgr ÷ baseline, {label}"),
        format!(
            "{cpu_r:.2} (median of {n}; {} µs / {} µs; A/A {})",
            spread(&p_cpu, |v| format!("{v:.2}")),
            spread(&b_cpu, |v| format!("{v:.2}")),
            ratios(&c_cpu_ratio)
        ),
    );
    let mut rps_line = Line::new(
        format!("1 /state req/s primgr ÷ baseline, {label}"),
        format!(
            "{rps_r:.3} (median of {n}; {} / {}; A/A {})",
            spread(&p_rps, |v| format!("{v:.0}")),
            spread(&b_rps, |v| format!("{v:.0}")),
            ratios(&c_rps_ratio)
        ),
    );
    let mut p99_line = Line::new(
        format!("1 /state p99 primgr ÷ baseline, {label}"),
        format!(
            "{p99_r:.2} (median of {n}; {} / {}; A/A {})",
            spread(&p_p99, micros),
            spread(&b_p99, micros),
            ratios(&c_p99_ratio)
        ),
    );
    if main {
        cpu_line = cpu_line.target("≤ 1.20", cpu_r <= 1.20);
        rps_line = rps_line.target("≥ 0.85", rps_r >= 0.85);
        p99_line = p99_line.target(
            format!("≤ 1.00 or ≤ A/A's highest ({p99_noise:.2})"),
            p99_r <= 1.00_f64.max(p99_noise),
        );
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
