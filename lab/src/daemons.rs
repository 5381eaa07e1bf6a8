//! primgr daemon processes of the lab nodes: started with the node's address and conninfo
//! (at once, without waiting for readiness, so tests can start them in phases), logged to
//! `<dir>/daemon-<node>.log`, recorded in `<dir>/daemon-<node>.pid` (so a crashed test's daemons
//! are found again), stopped, frozen and thawed.

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
    /// <extra_args>`, stdout and stderr appended to [`Lab::daemon_log`]. Killed by
    /// [`Lab::stop_daemon`], teardown and `Drop`. Works for a witness like for any node.
    ///
    /// Returns as soon as the process is spawned (a few milliseconds: it does not wait for
    /// the daemon to listen; [`Lab::wait_daemon_ready`] does), so a test can start daemons in
    /// phases at chosen offsets, e.g. node1 at `t`, node3 at `t + 100 ms`, node2 at
    /// `t + 300 ms`, each after `tokio::time::sleep_until(t + offset)`.
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
        let (mut out, err) = append_to(&log_path)?;
        writeln!(
            out,
            "==== primgr-lab: starting {} {}",
            primgr_bin.display(),
            args.join(" ")
        )
        .with_context(|| format!("writing {}", log_path.display()))?;
        let mut cmd = tokio::process::Command::new(primgr_bin);
        cmd.args(&args).current_dir(&self.dir);
        let child = spawn_logged(
            cmd,
            &format!("daemon for {node}"),
            (out, err),
            &self.daemon_pid_file(node),
            &listen,
        )?;
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
        if let Some(child) = child {
            stop_child(child, &format!("daemon of {node}")).await?;
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

/// Stops a process that leads its own process group (a primgr daemon, repmgrd): SIGCONT and
/// SIGTERM to the group, SIGKILL after 5 s, then SIGKILL to whatever it forked.
pub(crate) async fn stop_child(mut child: tokio::process::Child, what: &str) -> Result<()> {
    let pid = child.id().map(|p| p as i32);
    if let Some(pid) = pid {
        procfs::signal_group(pid, libc::SIGCONT);
        procfs::signal_group(pid, libc::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(r) => {
            r.with_context(|| format!("waiting for {what}"))?;
        }
        Err(_) => {
            if let Some(pid) = pid {
                procfs::signal_group(pid, libc::SIGKILL);
            }
            child
                .kill()
                .await
                .with_context(|| format!("killing {what}"))?;
        }
    }
    if let Some(pid) = pid {
        procfs::signal_group(pid, libc::SIGKILL);
    }
    Ok(())
}

/// A log file opened twice for appending (created if missing): stdout and stderr of a child.
pub(crate) fn append_to(path: &Path) -> Result<(std::fs::File, std::fs::File)> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let err = out.try_clone().context("duplicating log file handle")?;
    Ok((out, err))
}

/// Spawns a background process of the lab (`what` names it in errors): its own process group
/// (signals to the test's terminal do not reach it, and it is stopped with whatever it forks),
/// stdin from `/dev/null`, stdout and stderr to `log`, killed if the child handle is dropped.
/// Its pid is written to `pid_file` as `<pid>\n<marker>\n`, the marker being a string of its
/// command line, so that the leftover cleanup stops it only while it is still that process.
pub(crate) fn spawn_logged(
    mut cmd: tokio::process::Command,
    what: &str,
    log: (std::fs::File, std::fs::File),
    pid_file: &Path,
    marker: &str,
) -> Result<tokio::process::Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.0))
        .stderr(Stdio::from(log.1))
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = child.id().ok_or_else(|| anyhow!("{what} exited at once"))?;
    std::fs::write(pid_file, format!("{pid}\n{marker}\n"))
        .with_context(|| format!("writing {}", pid_file.display()))?;
    Ok(child)
}
