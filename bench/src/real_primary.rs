//! Measurement 4: `/realPrimary` latency with every peer healthy and with node2 blackholed
//! (iptables DROP between node1's and node2's addresses).

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use primgr_lab::stats::{median, micros, quantile};
use primgr_lab::{CutMode, Lab, http};

use crate::opts::Opts;
use crate::report::{Findings, Line};
use crate::{BLACKHOLED, HTTP_TIMEOUT, NODE, PEER_TIMEOUT_MS, wait_site};

/// Measurement 4: `/realPrimary` with every peer healthy, then with one blackholed.
pub(crate) async fn measure(o: &Opts, lab: &Lab, f: &mut Findings) -> Result<()> {
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
