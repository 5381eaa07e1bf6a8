//! Measurement 5: the poll cycle's wall time (`cycle_ms` of `/status`) at 2, 8, 32 and 64
//! voters; voters beyond the lab's own are fake peers ([`crate::fake`]) inserted into
//! `repmgr.nodes`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use primgr_lab::stats::{median, quantile};
use primgr_lab::table::Table;
use primgr_lab::{DAEMON_PORT, Daemon, Lab, http};
use serde_json::Value;

use crate::opts::Opts;
use crate::report::{Findings, Line};
use crate::{CYCLE_INTERVAL_MS, HTTP_TIMEOUT, NODE, PEER_TIMEOUT_MS, VOTERS, fake, progress};

/// Measurement 5: the poll cycle at 2, 8, 32 and 64 voters; `daemon` is node1's, restarted
/// here with a shorter interval.
pub(crate) async fn measure(
    o: &Opts,
    lab: &Lab,
    daemon: &mut Daemon,
    f: &mut Findings,
) -> Result<()> {
    let cycles = poll_cycles(o, lab, daemon).await?;
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

async fn poll_cycles(o: &Opts, lab: &Lab, daemon: &mut Daemon) -> Result<Vec<Cycles>> {
    let max_fakes = VOTERS.iter().max().copied().unwrap_or(2) - 2;
    let peers: Vec<(String, SocketAddr)> = (1..=max_fakes)
        .map(|k| {
            let addr = SocketAddr::from((fake_addr(lab.subnet(), k), DAEMON_PORT));
            (format!("fake{k}"), addr)
        })
        .collect();
    let _fakes = fake::FakePeers::start(&peers, NODE).await?;
    daemon.stop().await;
    let args = [
        "--interval".to_string(),
        format!("{CYCLE_INTERVAL_MS}ms"),
        "--peer-timeout".into(),
        format!("{PEER_TIMEOUT_MS}ms"),
    ];
    *daemon = lab.daemon(NODE, &o.primgr)?.args(args).spawn()?;
    daemon.ready(Duration::from_secs(30)).await?;
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
            .is_some_and(|v| v.iter().all(|x| x["vote"] == NODE));
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
