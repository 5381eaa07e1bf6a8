//! Measurement 1, noise-free part: user-space instructions per `/state` of primgr and of the
//! baseline, each under callgrind.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Result;
use primgr_lab::http::RawResponse;
use primgr_lab::{DAEMON_PORT, Lab};

use crate::opts::Opts;
use crate::report::{Findings, Line};
use crate::wrk::{Mode, Wrk};
use crate::{INTERVAL, NODE, callgrind, daemon_args, progress};

/// Measurement 1, noise-free part: user-space instructions per `/state`, primgr (a second
/// daemon for node1 on 127.0.X.9, reading node1's database) and the baseline (on 127.0.X.10)
/// each under callgrind, one after the other.
pub(crate) async fn measure(
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
    // The lab's daemons answer only signed vote requests: this one signs with the same key.
    primgr_args.extend([
        "--peer-key-file".to_string(),
        primgr_lab::peer_key_file().display().to_string(),
    ]);
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
