//! Measurement 1: `GET /state` under wrk at 64 and 4 keep-alive connections and with a new
//! connection per request, primgr and the baseline alternating over several rounds.

use std::fmt::Write as _;

use anyhow::{Result, ensure};
use primgr_lab::procfs::cpu_time;
use primgr_lab::stats::{median, micros};
use primgr_lab::table::Table;

use crate::opts::Opts;
use crate::report::{Findings, Line};
use crate::wrk::{Mode, Wrk, WrkResult};
use crate::{MODES, Servers, progress};

/// Measurement 1: `/state` under wrk, primgr and the baseline alternating.
pub(crate) async fn measure(o: &Opts, wrk: &Wrk, s: &Servers, f: &mut Findings) -> Result<()> {
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
