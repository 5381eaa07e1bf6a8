//! User-space instructions per request, counted by valgrind's callgrind: a figure that, unlike
//! throughput and latency, does not move with whatever else the machine is doing. A server runs
//! under `valgrind --tool=callgrind`; after a warm-up its counters are zeroed
//! (`callgrind_control -z`), wrk sends a load, the counters are dumped (`callgrind_control -d`)
//! and the dump's total is divided by the requests wrk completed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::wrk::{Mode, Wrk};

/// Whether valgrind and callgrind_control are installed.
pub fn available() -> bool {
    ["valgrind", "callgrind_control"].iter().all(|tool| {
        std::process::Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A server to count: `program args`, answering on `url`.
pub struct Target<'a> {
    /// Names the dump files.
    pub label: &'a str,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub url: String,
}

/// Runs the target under callgrind (dumps in `work_dir`, removed afterwards), waits until its
/// URL answers 2xx, and returns the instructions per request of a `mode` load of `seconds`.
pub async fn instructions_per_request(
    work_dir: &Path,
    target: &Target<'_>,
    wrk: &Wrk,
    mode: Mode,
    seconds: u64,
) -> Result<f64> {
    let out_base = work_dir.join(format!("callgrind.{}", target.label));
    let program = target.program;
    let url = target.url.as_str();
    let mut child = tokio::process::Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}.%p", out_base.display()))
        .arg(program)
        .args(&target.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} under valgrind", program.display()))?;
    let pid = child.id().context("valgrind exited at once")?;
    let r = measure(pid, &out_base, url, wrk, mode, seconds).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    for f in dumps(&out_base, pid) {
        let _ = std::fs::remove_file(f);
    }
    r
}

async fn measure(
    pid: u32,
    out_base: &Path,
    url: &str,
    wrk: &Wrk,
    mode: Mode,
    seconds: u64,
) -> Result<f64> {
    // Under valgrind everything is ~50 times slower: wait for a 2xx answer.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = wrk.run(url, Mode::KeepAlive(1), 1).await
            && r.status_errors == 0
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("{url} under valgrind did not answer 2xx within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    control(pid, "-z").await?;
    let load = wrk.run(url, mode, seconds).await?;
    ensure!(
        load.status_errors == 0,
        "{url} under valgrind answered {} requests with a non-2xx status",
        load.status_errors
    );
    control(pid, "-d").await?;
    let dump = dumps(out_base, pid)
        .into_iter()
        .max()
        .with_context(|| format!("no callgrind dump for pid {pid}"))?;
    let text =
        std::fs::read_to_string(&dump).with_context(|| format!("reading {}", dump.display()))?;
    let total = summary(&text).with_context(|| format!("no summary in {}", dump.display()))?;
    Ok(total as f64 / load.requests as f64)
}

async fn control(pid: u32, what: &str) -> Result<()> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("callgrind_control")
            .arg(what)
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .with_context(|| format!("callgrind_control {what} {pid} timed out"))?
    .with_context(|| format!("running callgrind_control {what} {pid}"))?;
    ensure!(
        out.status.success(),
        "callgrind_control {what} {pid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The dump files of `pid`: `<base>.<pid>` and `<base>.<pid>.<n>`.
fn dumps(out_base: &Path, pid: u32) -> Vec<PathBuf> {
    let prefix = format!(
        "{}.{pid}",
        out_base
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let dir = out_base.parent().unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name == prefix || name.starts_with(&format!("{prefix}."))
        })
        .map(|e| e.path())
        .collect()
}

/// The `summary:` line of a callgrind dump (instructions executed).
fn summary(dump: &str) -> Option<u64> {
    dump.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 350216555\ntotals: 350216600\n";
        assert_eq!(summary(dump), Some(350_216_555));
        assert_eq!(summary("events: Ir\n"), None);
    }
}
