//! The command line of `primgr-bench`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub(crate) const USAGE: &str = "\
usage: primgr-bench [--short] [--rounds N] [--seconds S] [--subnet N] [--out FILE]
                    [--primgr PATH] [--baseline PATH] [--only LIST] [--strict]

  --short          CI mode: /state at 64 connections only, 5 rounds of 1 s per load run,
                   few samples (about a minute)
  --rounds N       rounds of primgr/baseline/control load runs, the order rotating (default 5)
  --seconds S      length of each load run (default 5; short 1)
  --subnet N       lab subnet, addresses 127.0.N.x (default 61; short 62; shifted by
                   $PRIMGR_LAB_SUBNET_SHIFT like every lab subnet)
  --out FILE       where to write the report (default target/bench/report.txt)
  --primgr PATH    primgr binary (default: `primgr` next to this executable)
  --baseline PATH  baseline binary (default: `baseline` next to this executable)
  --only LIST      run only these measurements, e.g. 1,3 (default 1,2,3,4,5; 3 reads the
                   memory after whatever load 1 and 2 produced)
  --strict         exit with status 3 when a target is missed
Must run as root (PostgreSQL lab, iptables).";

#[derive(Debug, Clone)]
pub(crate) struct Opts {
    pub(crate) short: bool,
    pub(crate) rounds: u32,
    pub(crate) seconds: u64,
    pub(crate) subnet: u8,
    pub(crate) out: PathBuf,
    pub(crate) primgr: PathBuf,
    pub(crate) baseline: PathBuf,
    pub(crate) strict: bool,
    /// Measurements to run (1..=5).
    pub(crate) only: Vec<u8>,
}

impl Opts {
    pub(crate) fn parse(args: &[String]) -> Result<Opts> {
        let short = args.iter().any(|a| a == "--short");
        let here = std::env::current_exe().context("locating the current executable")?;
        let mut o = Opts {
            short,
            rounds: 5,
            seconds: if short { 1 } else { 5 },
            subnet: if short {
                primgr_lab::subnet_of("primgr-bench --short")
            } else {
                primgr_lab::subnet_of("primgr-bench")
            },
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
                "--rounds" => o.rounds = number(a, &val(a)?, 1..=100)? as u32,
                "--seconds" => o.seconds = number(a, &val(a)?, 1..=600)?,
                "--subnet" => o.subnet = primgr_lab::parse_subnet(&val(a)?)?,
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
    pub(crate) fn work_dir(&self) -> PathBuf {
        self.out
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    }

    /// Whether measurement `n` was asked for.
    pub(crate) fn runs(&self, n: u8) -> bool {
        self.only.contains(&n)
    }

    /// Samples of the sequential measurements (4 and 5).
    pub(crate) fn samples(&self, full: usize, short: usize) -> usize {
        if self.short { short } else { full }
    }

    /// Length of the two windows of the transaction count.
    pub(crate) fn xact_seconds(&self) -> u64 {
        (self.seconds * 2).max(4)
    }
}

/// The whole number `v` of flag `flag`, which must lie in `range`.
fn number(flag: &str, v: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64> {
    v.parse()
        .ok()
        .filter(|n| range.contains(n))
        .with_context(|| format!("bad {flag} {v:?} ({}..={})", range.start(), range.end()))
}
