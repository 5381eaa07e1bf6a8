//! Process helpers reading `/proc` directly (no `ps`), used to find, freeze, thaw and kill the
//! lab's postmasters and daemons.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
