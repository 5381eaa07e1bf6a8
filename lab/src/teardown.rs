//! Teardown: stopping the primgr daemons (through their pid files), repmgrd and the
//! postmasters, removing the lab's iptables chains, its directory and the
//! `/tmp/node-rejoin.*.log` files it caused; on [`Lab::teardown`], on `Drop`, and for leftovers
//! of a crashed process ([`destroy_leftovers`], run before every build).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::ensure_root;
use crate::firewall;
use crate::lab::{Lab, MARKER, lock};
use crate::procfs;
use crate::spec::{chain_name, default_dir, lab_subnet, replication_chain_name};

impl Lab {
    /// Stop repmgrd, the daemons still running (found through their pid files: SIGTERM,
    /// SIGKILL after 5 s) and all nodes, remove the lab's iptables chains, the lab directory
    /// and the rejoin log files. (`Drop` does the same if this was not called.)
    pub async fn teardown(mut self) -> Result<()> {
        let mut errs = Vec::new();
        let names: Vec<String> = lock(&self.repmgrds).keys().cloned().collect();
        for n in names {
            if let Err(e) = self.stop_repmgrd(&n).await {
                errs.push(format!("{e:#}"));
            }
        }
        let (subnet, dir) = (self.subnet, self.dir.clone());
        let files = lock(&self.created_files).clone();
        let r = tokio::task::spawn_blocking(move || destroy(subnet, &dir, &files))
            .await
            .context("teardown task failed")?;
        self.done = true;
        if let Err(e) = r {
            errs.push(format!("{e:#}"));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("teardown of lab {}: {}", self.subnet, errs.join("\n"))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if std::env::var_os("PRIMGR_LAB_KEEP").is_some_and(|v| v != "0") {
            eprintln!(
                "primgr-lab: PRIMGR_LAB_KEEP set, leaving lab {} running in {} \
                 (remove it with `primgr-lab down --subnet {}`)",
                self.subnet,
                self.dir.display(),
                self.subnet
            );
            // Detach repmgrd so that it survives too (a daemon's handle keeps its own).
            for (_, c) in lock(&self.repmgrds).drain() {
                std::mem::forget(c);
            }
            return;
        }
        let files = lock(&self.created_files).clone();
        if let Err(e) = destroy(self.subnet, &self.dir, &files) {
            eprintln!(
                "primgr-lab: cleanup of lab {} ({}) incomplete: {e:#}",
                self.subnet,
                self.dir.display()
            );
        }
    }
}

/// `/tmp/node-rejoin.*.log` files (written by repmgr rejoin/switchover).
pub(crate) fn rejoin_logs() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name().to_str()?.to_string();
        (name.starts_with("node-rejoin.") && name.ends_with(".log")).then(|| e.path())
    })
    .collect()
}

/// Remove what a lab built for `subnet` left behind in `dir` (default [`default_dir`]): daemons,
/// repmgrd and postmasters found through the pid files in the directory (SIGTERM/immediate
/// shutdown, then SIGKILL), the lab's iptables chains and the directory itself. `subnet` is the
/// requested one, like [`LabSpec::subnet`](crate::LabSpec::subnet): it is shifted by
/// `PRIMGR_LAB_SUBNET_SHIFT` ([`lab_subnet`]).
/// Synchronous; needs root. A directory without the lab's marker file is never deleted.
pub fn destroy_leftovers(subnet: u8, dir: Option<&Path>) -> Result<()> {
    ensure_root()?;
    let subnet = lab_subnet(subnet)?;
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_dir(subnet));
    destroy(subnet, &dir, &[])
}

pub(crate) fn destroy(subnet: u8, dir: &Path, extra_files: &[PathBuf]) -> Result<()> {
    let mut errs: Vec<String> = Vec::new();
    if dir.exists() {
        kill_daemons(dir);
        if let Err(e) = stop_postmasters(dir) {
            errs.push(format!("{e:#}"));
        }
    }
    for (chain, hooks) in [
        (chain_name(subnet), firewall::BOTH),
        (replication_chain_name(subnet), firewall::OUTPUT_ONLY),
    ] {
        if let Err(e) = firewall::remove_chain(&chain, hooks) {
            errs.push(format!("{e:#}"));
        }
    }
    if dir.exists() {
        let empty = std::fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_none());
        if dir.join(MARKER).exists() || empty {
            let mut last = None;
            for _ in 0..20 {
                match std::fs::remove_dir_all(dir) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(e) = last {
                errs.push(format!("removing {}: {e}", dir.display()));
            }
        } else {
            errs.push(format!(
                "refusing to delete {}: not empty and not a primgr-lab directory (no {MARKER})",
                dir.display()
            ));
        }
    }
    for f in extra_files {
        let _ = std::fs::remove_file(f);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        bail!(errs.join("\n"))
    }
}

fn kill_daemons(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut pids = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // primgr daemons and haproxy (`daemon-*.pid`), repmgrd (`repmgrd-*.pid`).
        if !((name.starts_with("daemon-") || name.starts_with("repmgrd-"))
            && name.ends_with(".pid"))
        {
            continue;
        }
        let Ok(content) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut lines = content.lines();
        let (Some(pid), Some(listen)) = (
            lines.next().and_then(|l| l.trim().parse::<i32>().ok()),
            lines.next(),
        ) else {
            continue;
        };
        // Only signal the process if it is still the daemon we started.
        if procfs::alive(pid) && procfs::cmdline(pid).is_some_and(|c| c.contains(listen.trim())) {
            // The daemon leads its own process group: signal the group.
            procfs::signal_group(pid, libc::SIGCONT);
            procfs::signal_group(pid, libc::SIGTERM);
            pids.push(pid);
        }
    }
    procfs::wait_gone(&pids, Duration::from_secs(5));
    for &pid in &pids {
        procfs::signal_group(pid, libc::SIGKILL);
    }
    procfs::wait_gone(&pids, Duration::from_secs(2));
}

fn stop_postmasters(dir: &Path) -> Result<()> {
    let mut pms = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Some(pm) = procfs::postmaster_pid(&e.path().join("data")) {
                pms.push(pm);
            }
        }
    }
    // Immediate shutdown, like `pg_ctl stop -m immediate`, for all nodes at once.
    for &pm in &pms {
        procfs::signal(pm, libc::SIGCONT);
        for c in procfs::children(pm) {
            procfs::signal(c, libc::SIGCONT);
        }
        procfs::signal(pm, libc::SIGQUIT);
    }
    for pm in procfs::wait_gone(&pms, Duration::from_secs(15)) {
        for c in procfs::children(pm) {
            procfs::signal(c, libc::SIGKILL);
        }
        procfs::signal(pm, libc::SIGKILL);
    }
    // Orphaned backends (e.g. of a postmaster killed earlier).
    let stragglers = procfs::postgres_processes_under(dir);
    for &p in &stragglers {
        procfs::signal(p, libc::SIGCONT);
        procfs::signal(p, libc::SIGKILL);
    }
    let mut all = pms;
    all.extend(stragglers);
    let left = procfs::wait_gone(&all, Duration::from_secs(5));
    ensure!(
        left.is_empty(),
        "postgres processes of {} still alive: {left:?}",
        dir.display()
    );
    Ok(())
}

/// Pids of live `postgres` processes whose working directory is inside `dir` (all processes of a
/// lab's postmasters; empty after teardown).
pub fn postgres_processes_in(dir: &Path) -> Vec<i32> {
    procfs::postgres_processes_under(dir)
}
