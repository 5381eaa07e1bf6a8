//! Load generation with `wrk` (Debian's package): one run against one URL, its numbers read
//! from a Lua `done` hook (exact microseconds, no unit parsing).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

/// How the load generator uses its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `n` keep-alive connections, each sending the next request as soon as the last is answered.
    KeepAlive(u32),
    /// `n` connections that send `Connection: close`: a new TCP connection per request, as
    /// haproxy's health checks do.
    Close(u32),
    /// `n` keep-alive connections, each waiting `ms` milliseconds after an answer before it
    /// sends the next request (wrk's Lua `delay`): a load below saturation, as a fleet of
    /// checkers makes it, where the latency is the server's and not a queue's. wrk measures
    /// each request from its write, so the wait is not counted.
    Paced(u32, u32),
}

impl Mode {
    pub fn connections(self) -> u32 {
        match self {
            Mode::KeepAlive(n) | Mode::Close(n) | Mode::Paced(n, _) => n,
        }
    }

    pub fn label(self) -> String {
        match self {
            Mode::KeepAlive(n) => format!("keep-alive, {n} conns"),
            Mode::Close(n) => format!("new conn/request, {n} conns"),
            Mode::Paced(n, ms) => format!("keep-alive, {n} conns, {ms} ms between requests"),
        }
    }
}

/// What one wrk run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub duration: Duration,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Socket errors (connect, read, write, timeout) and non-2xx/3xx answers.
    pub socket_errors: u64,
    pub status_errors: u64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64().max(1e-9)
    }
}

/// The Lua hook that prints the numbers on one line.
const SCRIPT: &str = r#"-- written by primgr-bench
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "PRIMGR_BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d socket_errors=%d status_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"#;

/// The pause of [`Mode::Paced`], in milliseconds, for wrk's `delay` hook.
fn paced_script(ms: u32) -> String {
    format!("{SCRIPT}delay = function() return {ms} end\n")
}

/// Runs wrk; knows where its Lua scripts live.
#[derive(Clone, Debug)]
pub struct Wrk {
    dir: PathBuf,
    script: PathBuf,
    threads: u32,
}

impl Wrk {
    /// Writes the script into `dir` and checks that wrk is installed.
    pub fn new(dir: &Path, threads: u32) -> Result<Wrk> {
        let script = dir.join("wrk-report.lua");
        std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
        let probe = std::process::Command::new("wrk")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        ensure!(
            probe.is_ok(),
            "wrk is not installed (Debian: apt-get install wrk; contrib/install-deps does it)"
        );
        Ok(Wrk {
            dir: dir.to_path_buf(),
            script,
            threads,
        })
    }

    /// `wrk -t<threads> -c<n> -d<secs> --timeout 2s [-H 'Connection: close'] -s <script> <url>`.
    pub async fn run(&self, url: &str, mode: Mode, seconds: u64) -> Result<WrkResult> {
        let conns = mode.connections();
        let threads = self.threads.min(conns).max(1);
        let mut cmd = tokio::process::Command::new("wrk");
        cmd.arg(format!("-t{threads}"))
            .arg(format!("-c{conns}"))
            .arg(format!("-d{seconds}s"))
            .args(["--timeout", "2s"]);
        if let Mode::Close(_) = mode {
            cmd.args(["-H", "Connection: close"]);
        }
        let script = match mode {
            Mode::Paced(_, ms) => {
                let path = self.dir.join(format!("wrk-paced-{ms}ms.lua"));
                std::fs::write(&path, paced_script(ms))
                    .with_context(|| format!("writing {}", path.display()))?;
                path
            }
            _ => self.script.clone(),
        };
        cmd.arg("-s")
            .arg(&script)
            .arg(url)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(seconds + 30), cmd.output())
            .await
            .with_context(|| format!("wrk on {url} did not finish"))?
            .with_context(|| format!("running wrk on {url}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk on {url} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse(&stdout).with_context(|| format!("reading wrk's output for {url}:\n{stdout}"))
    }
}

/// Reads the line printed by [`SCRIPT`].
pub fn parse(stdout: &str) -> Result<WrkResult> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("PRIMGR_BENCH "))
        .context("no PRIMGR_BENCH line")?;
    let field = |name: &str| -> Result<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name}"))?
            .parse::<u64>()
            .with_context(|| format!("bad {name}"))
    };
    let r = WrkResult {
        requests: field("requests")?,
        duration: Duration::from_micros(field("duration_us")?),
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        max_us: field("max_us")?,
        socket_errors: field("socket_errors")?,
        status_errors: field("status_errors")?,
    };
    ensure!(r.requests > 0, "no request completed");
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_hook_line() {
        let out = "Running 1s test\nPRIMGR_BENCH requests=1209 duration_us=1004906 p50_us=1093 \
                   p99_us=6996 max_us=9821 socket_errors=0 status_errors=3\n";
        let r = parse(out).unwrap();
        assert_eq!(r.requests, 1209);
        assert_eq!((r.p50_us, r.p99_us, r.max_us), (1093, 6996, 9821));
        assert_eq!((r.socket_errors, r.status_errors), (0, 3));
        assert!((r.rps() - 1203.1).abs() < 0.1);
        assert!(parse("Running 1s test\n").is_err());
        assert!(parse("PRIMGR_BENCH requests=0 duration_us=1 p50_us=1 p99_us=1 max_us=1 socket_errors=0 status_errors=0").is_err());
    }
}
