//! primgr daemon processes of the lab nodes: started with the node's address and conninfo,
//! logged to `<dir>/daemon-<node>.log`, recorded in `<dir>/daemon-<node>.pid` (so a crashed
//! test's daemons are found again), stopped, frozen and thawed.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::cmd::log_tail;
use crate::lab::{Lab, lock};
use crate::procfs;
use crate::spec::PG_PORT;
use crate::wait::{accepts, wait_for};

impl Lab {
    /// Start a primgr daemon for the node:
    /// `<primgr_bin> --node-name <node> --listen 127.0.X.1N:5999 --conninfo "host=127.0.X.1N
    /// port=5432 dbname=repmgr user=repmgr application_name=primgr" --source-address 127.0.X.1N
    /// <extra_args>`, stdout and stderr appended to [`Lab::daemon_log`]. Returns once spawned
    /// (see [`Lab::wait_daemon_ready`]). Killed by [`Lab::stop_daemon`], teardown and `Drop`.
    pub async fn spawn_daemon(
        &self,
        node: &str,
        primgr_bin: &Path,
        extra_args: &[String],
    ) -> Result<()> {
        let n = self.node(node)?;
        if self.daemon_running(node) {
            bail!("a daemon for {node} is already running");
        }
        ensure!(
            primgr_bin.is_file(),
            "primgr binary {} does not exist (build it first)",
            primgr_bin.display()
        );
        let listen = self.daemon_addr(node).to_string();
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            node.into(),
            "--listen".into(),
            listen.clone(),
            "--conninfo".into(),
            format!(
                "host={} port={PG_PORT} dbname=repmgr user=repmgr application_name=primgr",
                n.addr
            ),
            "--source-address".into(),
            n.addr.to_string(),
        ];
        args.extend(extra_args.iter().cloned());
        let log_path = self.daemon_log(node)?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(
            log,
            "==== primgr-lab: starting {} {}",
            primgr_bin.display(),
            args.join(" ")
        )
        .with_context(|| format!("writing {}", log_path.display()))?;
        let err = log.try_clone().context("duplicating log file handle")?;
        let mut cmd = tokio::process::Command::new(primgr_bin);
        cmd.args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", primgr_bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("daemon for {node} exited at once"))?;
        std::fs::write(self.daemon_pid_file(node), format!("{pid}\n{listen}\n"))
            .context("writing daemon pid file")?;
        lock(&self.daemons).insert(node.to_string(), child);
        Ok(())
    }

    /// Whether the node's daemon (spawned by this lab) is still running.
    pub fn daemon_running(&self, node: &str) -> bool {
        let mut d = lock(&self.daemons);
        match d.get_mut(node) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Pid of the node's daemon, if running.
    pub fn daemon_pid(&self, node: &str) -> Option<u32> {
        let mut d = lock(&self.daemons);
        let c = d.get_mut(node)?;
        match c.try_wait() {
            Ok(None) => c.id(),
            _ => None,
        }
    }

    /// Wait until the node's daemon accepts TCP connections on its listen address; fails early
    /// (with the log tail) if the daemon exits.
    pub async fn wait_daemon_ready(&self, node: &str, timeout: Duration) -> Result<()> {
        let addr = self.daemon_addr(node);
        let log = self.daemon_log(node)?;
        let exited = std::cell::Cell::new(false);
        wait_for(
            &format!("daemon of {node} listening on {addr}"),
            timeout,
            || async {
                if !self.daemon_running(node) {
                    exited.set(true);
                    return Ok(true);
                }
                Ok(accepts(addr, Duration::from_millis(300)).await)
            },
        )
        .await?;
        ensure!(
            !exited.get(),
            "daemon of {node} is not running\n--- tail of {} ---\n{}",
            log.display(),
            log_tail(&log, 20)
        );
        Ok(())
    }

    /// Stop the node's daemon: SIGTERM, then SIGKILL after 5 s. Does nothing if none runs.
    pub async fn stop_daemon(&self, node: &str) -> Result<()> {
        self.node(node)?;
        let child = lock(&self.daemons).remove(node);
        if let Some(mut child) = child {
            let pid = child.id().map(|p| p as i32);
            if let Some(pid) = pid {
                // The daemon leads its own process group: signal the group.
                procfs::signal_group(pid, libc::SIGCONT);
                procfs::signal_group(pid, libc::SIGTERM);
            }
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(r) => {
                    r.with_context(|| format!("waiting for daemon of {node}"))?;
                }
                Err(_) => {
                    if let Some(pid) = pid {
                        procfs::signal_group(pid, libc::SIGKILL);
                    }
                    child
                        .kill()
                        .await
                        .with_context(|| format!("killing daemon of {node}"))?;
                }
            }
            if let Some(pid) = pid {
                // Whatever the daemon forked.
                procfs::signal_group(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(self.daemon_pid_file(node));
        Ok(())
    }

    /// SIGSTOP the node's daemon (a hung daemon).
    pub async fn freeze_daemon(&self, node: &str) -> Result<()> {
        let pid = self
            .daemon_pid(node)
            .ok_or_else(|| anyhow!("no daemon running for {node}"))?;
        procfs::signal(pid as i32, libc::SIGSTOP);
        Ok(())
    }

    /// SIGCONT the node's daemon.
    pub async fn thaw_daemon(&self, node: &str) -> Result<()> {
        if let Some(pid) = self.daemon_pid(node) {
            procfs::signal(pid as i32, libc::SIGCONT);
        }
        Ok(())
    }
}
