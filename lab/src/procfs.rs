//! Everything read from `/proc` (no `ps`): finding, freezing, thawing and killing the lab's
//! postmasters and daemons (crate-internal), and the readers the tests and the benchmark share:
//! a process's memory ([`status_kb`]), CPU time ([`cpu_time`]), open descriptors
//! ([`open_fds`]) and start time ([`start_time`]), and the machine's load average
//! ([`loadavg`]), CPU ticks ([`machine_cpu_ticks`]) and listen-queue overflows
//! ([`listen_overflows`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// State letter of a process (`R`, `S`, `T`, `Z`, ...), `None` if it does not exist.
pub(crate) fn state(pid: i32) -> Option<char> {
    stat_fields(pid).and_then(|f| f.first().and_then(|s| s.chars().next()))
}

/// Fields of `/proc/<pid>/stat` after the command name: state, ppid, pgrp, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Alive = exists and is not a zombie.
pub(crate) fn alive(pid: i32) -> bool {
    matches!(state(pid), Some(c) if c != 'Z' && c != 'X')
}

/// Stopped by a signal (`kill -STOP`).
pub(crate) fn stopped(pid: i32) -> bool {
    matches!(state(pid), Some('T'))
}

fn all_pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Direct children of `pid`.
pub(crate) fn children(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            stat_fields(p)
                .and_then(|f| f.get(1).and_then(|pp| pp.parse::<i32>().ok()))
                .is_some_and(|pp| pp == pid)
        })
        .collect()
}

pub(crate) fn exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

pub(crate) fn cwd(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Command line with NUL separators replaced by spaces.
pub(crate) fn cmdline(pid: i32) -> Option<String> {
    let b = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&b)
            .replace('\0', " ")
            .trim()
            .to_string(),
    )
}

fn is_postgres_exe(pid: i32) -> bool {
    exe(pid).is_some_and(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("postgres"))
    })
}

/// Send a signal; returns false if it could not be delivered. Never signals pid <= 1.
pub(crate) fn signal(pid: i32, sig: i32) -> bool {
    if pid <= 1 {
        return false;
    }
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Send a signal to the process group `pgid` (a daemon started with its own group).
pub(crate) fn signal_group(pgid: i32, sig: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: plain syscall.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// First line of a pid file as a pid.
pub(crate) fn read_pid_file(path: &Path) -> Option<i32> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().next()?.trim().parse().ok().filter(|&p| p > 1)
}

/// The running postmaster of a data directory, verified through `/proc` (its executable is
/// `postgres` and its working directory is the data directory), so a stale pid file whose pid
/// was reused by another process is ignored.
pub(crate) fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let pid = read_pid_file(&data_dir.join("postmaster.pid"))?;
    if !alive(pid) || !is_postgres_exe(pid) {
        return None;
    }
    let c = cwd(pid)?;
    let want = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    (c == want || c == data_dir).then_some(pid)
}

/// All live `postgres` processes whose working directory is inside `dir`.
pub(crate) fn postgres_processes_under(dir: &Path) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| alive(p) && is_postgres_exe(p) && cwd(p).is_some_and(|c| c.starts_with(dir)))
        .collect()
}

/// Wait until none of `pids` is alive; returns those still alive at the deadline.
pub(crate) fn wait_gone(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clock ticks per second of `/proc` times (`_SC_CLK_TCK`, 100 on Linux).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// A numeric field of `/proc/<pid>/stat`, numbered as in `proc(5)` (3 = state, 14 = utime).
fn stat_number(pid: u32, field: usize) -> Result<u64> {
    let fields = stat_fields(pid as i32).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // `stat_fields` starts at field 3 (the state).
    fields
        .get(field.saturating_sub(3))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad field {field} of /proc/{pid}/stat"))
}

/// User + system CPU time the process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let ticks = stat_number(pid, 14)? + stat_number(pid, 15)?;
    Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_second()))
}

/// When the process started, as time since boot (10 ms resolution).
pub fn start_time(pid: u32) -> Result<Duration> {
    Ok(Duration::from_secs_f64(
        stat_number(pid, 22)? as f64 / ticks_per_second(),
    ))
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in kB.
pub fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Number of open file descriptors of the process.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count())
}

/// The machine's load average over 1, 5 and 15 minutes, as `/proc/loadavg` writes it
/// (`"0.52 0.61 0.70"`); empty when it cannot be read.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The machine's CPU ticks since boot from the `cpu` line of `/proc/stat`: user, nice, system,
/// idle, iowait, irq, softirq, steal.
pub fn machine_cpu_ticks() -> Result<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    line.split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| {
            v.parse()
                .with_context(|| format!("bad /proc/stat line {line:?}"))
        })
        .collect()
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`ListenOverflows` of `/proc/net/netstat`; machine-wide).
pub fn listen_overflows() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").context("reading /proc/net/netstat")?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        anyhow::bail!("no TcpExt lines in /proc/net/netstat");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .context("no ListenOverflows in /proc/net/netstat")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() -> Result<()> {
        let me = std::process::id();
        assert!(status_kb(me, "VmRSS")? > 0);
        assert!(status_kb(me, "VmHWM")? >= status_kb(me, "VmRSS")? / 2);
        assert!(open_fds(me)? >= 3);
        // Busy until the kernel has counted a tick of CPU time (10 ms; on a loaded machine
        // a fixed 50 ms of wall time may get none), 5 s at most.
        let busy = Instant::now();
        while cpu_time(me)? == Duration::ZERO && busy.elapsed() < Duration::from_secs(5) {
            for _ in 0..100_000 {
                std::hint::black_box(0u64.wrapping_add(1));
            }
        }
        assert!(cpu_time(me)? > Duration::ZERO);
        assert!(start_time(me)? > Duration::ZERO);
        assert_eq!(loadavg().split_whitespace().count(), 3);
        assert_eq!(machine_cpu_ticks()?.len(), 8);
        listen_overflows()?;
        assert!(status_kb(me, "NoSuchField").is_err());
        Ok(())
    }
}
