//! `primgr-lab`: local demo of primgr on a real 4-node repmgr cluster (must run as root).
//!
//! ```text
//! primgr-lab up   [--subnet N] [--dir DIR] [--primgr PATH] [--interval DUR] [--refresh SECS]
//!                 [--no-daemons] [--no-haproxy] [-- EXTRA PRIMGR ARGS...]
//! primgr-lab down [--subnet N] [--dir DIR]
//! ```
//!
//! `up` builds the standard lab (node1..node3 in dc1, node4 in dc2 on 127.0.N.11..14), starts a
//! primgr daemon per node (binary: `--primgr`, else `$PRIMGR_BIN`, else `primgr` next to this
//! executable), starts haproxy with the shipped `contrib/haproxy.cfg` rendered for the lab
//! (write port 127.0.N.100:5000, read port 127.0.N.100:5001; see `primgr_lab::haproxy`) and
//! prints every `--refresh` seconds (default 2) a status table, including which node new
//! connections through haproxy's write and read ports reach. Ctrl-C or SIGTERM tears everything
//! down. `down` removes a lab left behind by a killed `up` or test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use primgr_lab::dashboard::{self, Section};
use primgr_lab::haproxy::{self, Haproxy};
use primgr_lab::{Daemon, Lab, LabSpec};
use tokio::signal::unix::{Signal, SignalKind, signal};

const USAGE: &str = "\
usage:
  primgr-lab up   [--subnet N] [--dir DIR] [--primgr PATH] [--interval DUR] [--refresh SECS]
                  [--no-daemons] [--no-haproxy] [-- EXTRA PRIMGR ARGS...]
  primgr-lab down [--subnet N] [--dir DIR]

  --subnet N      third octet of the node addresses 127.0.N.11.. (default 77; shifted by
                  $PRIMGR_LAB_SUBNET_SHIFT like every lab subnet)
  --dir DIR       lab directory (default /tmp/primgr-lab-N)
  --primgr PATH   primgr binary (default $PRIMGR_BIN, else `primgr` next to this executable)
  --interval DUR  passed to every daemon as `--interval DUR` (default 1s; `none`: not passed)
  --refresh SECS  status print period (default 2)
  --no-daemons    only build the cluster and show it (implies --no-haproxy)
  --no-haproxy    do not start haproxy (contrib/haproxy.cfg) in front of the cluster
  -- ARGS         further arguments for every primgr daemon
Must run as root.";

#[derive(Debug)]
struct Opts {
    subnet: u8,
    dir: Option<PathBuf>,
    primgr: Option<PathBuf>,
    interval: Option<String>,
    refresh: Duration,
    daemons: bool,
    haproxy: bool,
    extra: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        subnet: primgr_lab::subnet_of("primgr-lab up"),
        dir: None,
        primgr: None,
        interval: Some("1s".to_string()),
        refresh: Duration::from_secs(2),
        daemons: true,
        haproxy: true,
        extra: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--subnet" => o.subnet = primgr_lab::parse_subnet(&val("--subnet")?)?,
            "--dir" => o.dir = Some(val("--dir")?.into()),
            "--primgr" => o.primgr = Some(val("--primgr")?.into()),
            "--interval" => {
                let v = val("--interval")?;
                o.interval = (v != "none").then_some(v);
            }
            "--refresh" => {
                let v = val("--refresh")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s >= 0.2 && *s <= 3600.0)
                    .with_context(|| format!("bad --refresh {v:?} (seconds)"))?;
                o.refresh = Duration::from_secs_f64(secs);
            }
            "--no-daemons" => o.daemons = false,
            "--no-haproxy" => o.haproxy = false,
            "--" => {
                o.extra = it.by_ref().cloned().collect();
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(o)
}

fn primgr_binary(o: &Opts) -> Result<PathBuf> {
    let p = match (&o.primgr, std::env::var_os("PRIMGR_BIN")) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => std::env::current_exe()
            .context("locating the current executable")?
            .with_file_name("primgr"),
    };
    if !p.is_file() {
        bail!(
            "primgr binary not found at {} (build it with `cargo build`, or pass --primgr PATH / \
             set PRIMGR_BIN, or use --no-daemons)",
            p.display()
        );
    }
    Ok(p)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("up") => match parse(&args[1..]) {
            Ok(o) => up(o).await,
            Err(e) => Err(e),
        },
        Some("down") => match parse(&args[1..]) {
            Ok(o) => primgr_lab::destroy_leftovers(o.subnet, o.dir.as_deref())
                .map(|()| println!("lab {} removed", o.subnet)),
            Err(e) => Err(e),
        },
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("primgr-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(o: Opts) -> Result<()> {
    primgr_lab::ensure_root()?;
    let bin = if o.daemons {
        Some(primgr_binary(&o)?)
    } else {
        None
    };
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut spec = LabSpec::standard(o.subnet);
    spec.dir = o.dir.clone();
    eprintln!(
        "primgr-lab: building lab {} in {} ...",
        spec.effective_subnet()?,
        spec.lab_dir()?.display()
    );
    let t = Instant::now();
    let lab = tokio::select! {
        r = Lab::build(spec) => r?,
        _ = sigint.recv() => bail!("interrupted during build (leftovers, if any: primgr-lab down --subnet {})", o.subnet),
        _ = sigterm.recv() => bail!("terminated during build"),
    };
    eprintln!(
        "primgr-lab: cluster ready in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let r = demo(&lab, &o, bin, &mut sigint, &mut sigterm).await;
    eprintln!("primgr-lab: tearing down lab {} ...", lab.subnet());
    let td = lab.teardown().await;
    r?;
    td?;
    eprintln!("primgr-lab: done");
    Ok(())
}

async fn demo(
    lab: &Lab,
    o: &Opts,
    bin: Option<PathBuf>,
    sigint: &mut Signal,
    sigterm: &mut Signal,
) -> Result<()> {
    let mut daemons: BTreeMap<String, Daemon> = BTreeMap::new();
    if let Some(bin) = &bin {
        let mut extra = Vec::new();
        if let Some(i) = &o.interval {
            extra.extend(["--interval".to_string(), i.clone()]);
        }
        extra.extend(o.extra.iter().cloned());
        for n in lab.node_names() {
            let daemon = lab.daemon(&n, bin)?.args(extra.iter().cloned()).spawn()?;
            daemons.insert(n, daemon);
        }
        for d in daemons.values_mut() {
            if let Err(e) = d.ready(Duration::from_secs(10)).await {
                eprintln!("primgr-lab: warning: {e:#}");
            }
        }
    }
    // haproxy checks the daemons: without them every server would be DOWN.
    let hp = if bin.is_some() && o.haproxy {
        match Haproxy::start(lab, haproxy::SHIPPED_CONFIG).await {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("primgr-lab: warning: haproxy not started: {e:#}");
                None
            }
        }
    } else {
        None
    };
    // SAFETY: isatty has no preconditions.
    let tty = unsafe { libc::isatty(1) } == 1;
    let started = Instant::now();
    loop {
        let text = dashboard::render(&collect(lab, &mut daemons, hp.as_ref()).await);
        if tty {
            print!("\x1b[H\x1b[2J");
        }
        println!(
            "primgr-lab {} — t+{}s — Ctrl-C stops and tears everything down\n\n{text}",
            lab.subnet(),
            started.elapsed().as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(o.refresh) => {}
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    if let Some(h) = hp {
        h.stop().await?;
    }
    for d in daemons.values_mut() {
        d.stop().await;
    }
    Ok(())
}

/// Everything printed each round. To show another part of the demo (e.g. haproxy), write an
/// `async fn(&Lab) -> Section` (see `primgr_lab::dashboard`) and add it here.
async fn collect(
    lab: &Lab,
    daemons: &mut BTreeMap<String, Daemon>,
    hp: Option<&Haproxy>,
) -> Vec<Section> {
    let running: BTreeMap<String, bool> = daemons
        .iter_mut()
        .map(|(n, d)| (n.clone(), d.running()))
        .collect();
    let with_daemons = !daemons.is_empty();
    let (nodes, daemon_sec) = tokio::join!(dashboard::nodes_section(lab), async {
        if with_daemons {
            Some(dashboard::daemons_section(lab, &running).await)
        } else {
            None
        }
    });
    let mut v = vec![nodes];
    v.extend(daemon_sec);
    if let Some(hp) = hp {
        v.push(dashboard::haproxy_section(lab, hp).await);
    }
    v.push(dashboard::access_section(lab, with_daemons));
    v
}
