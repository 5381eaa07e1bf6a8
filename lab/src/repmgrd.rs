//! repmgrd, repmgr's daemon for automatic failover, on the nodes of a lab built with
//! [`LabSpec::with_repmgrd`](crate::LabSpec::with_repmgrd) (`shared_preload_libraries =
//! 'repmgr'` and a `repmgr.conf` with `failover=automatic`, `promote_command`,
//! `follow_command`, `reconnect_attempts=2`, `reconnect_interval=1`, `monitor_interval_secs=1`).
//!
//! [`Lab::start_repmgrd`] runs `repmgrd -f <node>/repmgr.conf --daemonize=false` as the
//! `postgres` user in its own process group; repmgrd and the promote/follow commands it runs
//! log to `<node>/repmgrd.log`. The pid is recorded in `<dir>/repmgrd-<node>.pid` (with the
//! configuration path, which its command line names), so teardown, `Drop` and the leftover
//! cleanup of a crashed process stop it too.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail, ensure};

use crate::cmd::{PG_HOME, log_tail};
use crate::daemons::{append_to, spawn_logged, stop_child};
use crate::lab::{Lab, lock, pg_bin, s};
use crate::wait::wait_for;

impl Lab {
    /// Starts repmgrd on the node, as the module header of `repmgrd.rs` says (the lab must be
    /// built with [`LabSpec::with_repmgrd`](crate::LabSpec::with_repmgrd)). Returns once the
    /// process is spawned; [`Lab::wait_repmgrd_monitoring`] waits until it monitors. Fails if
    /// the lab was built without repmgrd or one already runs for the node.
    pub async fn start_repmgrd(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        ensure!(
            self.repmgrd,
            "lab {} was built without repmgrd (LabSpec::with_repmgrd)",
            self.subnet
        );
        ensure!(
            !self.repmgrd_running(node),
            "repmgrd already runs for {node}"
        );
        let conf = s(&n.conf());
        let mut cmd = tokio::process::Command::new(pg_bin("repmgrd"));
        cmd.args(["-f", conf.as_str(), "--daemonize=false"])
            .uid(self.pg.uid)
            .gid(self.pg.gid)
            .env_clear()
            .env("HOME", PG_HOME)
            .env("LC_ALL", "C")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(&self.dir);
        let child = spawn_logged(
            cmd,
            &format!("repmgrd of {node}"),
            append_to(&n.repmgrd_log())?,
            &self.repmgrd_pid_file(node),
            &conf,
        )?;
        lock(&self.repmgrds).insert(node.to_string(), child);
        Ok(())
    }

    /// Whether repmgrd (started by this lab) runs for the node.
    pub fn repmgrd_running(&self, node: &str) -> bool {
        lock(&self.repmgrds)
            .get_mut(node)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The node's repmgrd log (repmgrd's own lines and those of the promote and follow
    /// commands it ran).
    pub fn repmgrd_log(&self, node: &str) -> Result<PathBuf> {
        Ok(self.node(node)?.repmgrd_log())
    }

    /// Waits until the node's repmgrd monitors: its log says `monitoring connection to
    /// upstream node` on a standby, `starting monitoring of node` on a primary or a witness.
    /// Returns how long that took. Fails early, with the log tail, if repmgrd exits.
    pub async fn wait_repmgrd_monitoring(&self, node: &str, timeout: Duration) -> Result<Duration> {
        let log = self.repmgrd_log(node)?;
        let says = if self.in_recovery(node).await? {
            "monitoring connection to upstream node"
        } else {
            "starting monitoring of node"
        };
        let took = wait_for(
            &format!("repmgrd of {node} logging {says:?}"),
            timeout,
            || async {
                if !self.repmgrd_running(node) {
                    return Ok(true);
                }
                Ok(std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains(says))
            },
        )
        .await?;
        if !self.repmgrd_running(node) {
            bail!(
                "repmgrd of {node} exited\n--- tail of {} ---\n{}",
                log.display(),
                log_tail(&log, 20)
            );
        }
        Ok(took)
    }

    /// Stops the node's repmgrd: SIGTERM to its process group, SIGKILL after 5 s. Does nothing
    /// if none runs.
    pub async fn stop_repmgrd(&self, node: &str) -> Result<()> {
        self.node(node)?;
        let child = lock(&self.repmgrds).remove(node);
        if let Some(child) = child {
            stop_child(child, &format!("repmgrd of {node}")).await?;
        }
        let _ = std::fs::remove_file(self.repmgrd_pid_file(node));
        Ok(())
    }

    fn repmgrd_pid_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("repmgrd-{node}.pid"))
    }
}
