//! Node operations: `pg_ctl` start/stop, `repmgr standby promote` / `standby follow` /
//! `node rejoin`, a whole failover, and the runners for `pg_ctl` and `repmgr` as the `postgres`
//! user.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::cmd::Run;
use crate::lab::{Lab, Node, T_WAIT, lock, pg_bin, s};
use crate::procfs;
use crate::spec::StopMode;
use crate::teardown::rejoin_logs;
use crate::wait::wait_for;

const T_PG_CTL: Duration = Duration::from_secs(90);
const T_REPMGR: Duration = Duration::from_secs(120);
const T_REJOIN: Duration = Duration::from_secs(180);

impl Lab {
    /// Whether the node's postmaster is running (frozen counts as running).
    pub fn is_running(&self, node: &str) -> bool {
        self.postmaster_pid(node).is_some()
    }

    /// Pid of the node's running postmaster.
    pub fn postmaster_pid(&self, node: &str) -> Option<i32> {
        self.node(node)
            .ok()
            .and_then(|n| procfs::postmaster_pid(&n.data()))
    }

    /// Stop the node (`pg_ctl stop -m immediate|fast -w`). Thaws it first; does nothing if it
    /// is not running.
    pub async fn stop(&self, node: &str, mode: StopMode) -> Result<()> {
        let n = self.node(node)?;
        self.thaw(node).await?;
        if procfs::postmaster_pid(&n.data()).is_none() {
            return Ok(());
        }
        self.pg_stop(&n, mode).await
    }

    /// Start the node (`pg_ctl start -w`: returns once it accepts connections). Does nothing if
    /// it is running.
    pub async fn start(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        if procfs::postmaster_pid(&n.data()).is_some() {
            return Ok(());
        }
        self.pg_start(&n).await
    }

    /// `repmgr standby promote` on the node; returns once it is out of recovery.
    pub async fn promote(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        self.repmgr(&n, &["standby".into(), "promote".into()])
            .run()
            .await?;
        wait_for(&format!("{node} out of recovery"), T_WAIT, || async {
            Ok(!self.in_recovery(node).await?)
        })
        .await
        .map(drop)
    }

    /// `repmgr standby follow` on the node (follows the current primary); returns once it streams.
    pub async fn follow(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        self.repmgr(&n, &["standby".into(), "follow".into()])
            .run()
            .await?;
        self.wait_streaming(node).await
    }

    /// A failover as an operator runs it: the node `old_primary` stopped hard (`pg_ctl stop -m
    /// immediate`; nothing if it is not running), `new_primary` promoted ([`Lab::promote`]),
    /// then every other running node follows it ([`Lab::follow`], in spec order). Returns once
    /// they all stream from it.
    pub async fn failover(&self, old_primary: &str, new_primary: &str) -> Result<()> {
        self.node(old_primary)?;
        self.stop(old_primary, StopMode::Immediate).await?;
        self.promote(new_primary).await?;
        for n in self.node_names() {
            if n != old_primary && n != new_primary && self.is_running(&n) {
                self.follow(&n).await?;
            }
        }
        Ok(())
    }

    /// Turn the (old primary) node into a standby of `new_primary`: stop it (fast) if running,
    /// `CHECKPOINT` on `new_primary`, then `repmgr node rejoin -d '<conninfo of new_primary>'
    /// --force-rewind --config-files=node.conf --config-archive-dir=...`. Returns once the node
    /// streams.
    pub async fn rejoin(&self, node: &str, new_primary: &str) -> Result<()> {
        let n = self.node(node)?;
        let p = self.node(new_primary)?;
        self.stop(node, StopMode::Fast).await?;
        self.psql_in(&p, "postgres", "CHECKPOINT", T_WAIT).await?;
        let before = rejoin_logs();
        let r = self
            .repmgr(
                &n,
                &[
                    "node".into(),
                    "rejoin".into(),
                    "-d".into(),
                    format!("{} connect_timeout=2", self.conninfo(new_primary)),
                    "--force-rewind".into(),
                    "--config-files=node.conf".into(),
                    format!("--config-archive-dir={}", s(&n.archive())),
                ],
            )
            .timeout(T_REJOIN)
            .run()
            .await;
        let new: Vec<PathBuf> = rejoin_logs()
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        lock(&self.created_files).extend(new);
        r?;
        if !self.is_running(node) {
            self.pg_start(&n).await?;
        }
        self.wait_streaming(node).await
    }

    /// `repmgr -f <node's repmgr.conf> <args>` as postgres, logged to the node's log.
    pub(crate) fn repmgr(&self, n: &Node<'_>, args: &[String]) -> Run {
        let mut argv = vec![pg_bin("repmgr"), "-f".into(), s(&n.conf())];
        argv.extend(args.iter().cloned());
        let what = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        Run::new(format!("repmgr {what} on {}", n.name), argv)
            .postgres()
            .cwd(&self.dir)
            .log(&n.log())
            .timeout(T_REPMGR)
    }

    pub(crate) async fn pg_start(&self, n: &Node<'_>) -> Result<()> {
        self.pg_ctl(n, "start", &["-l".into(), s(&n.log())]).await
    }

    pub(crate) async fn pg_stop(&self, n: &Node<'_>, mode: StopMode) -> Result<()> {
        self.pg_ctl(n, "stop", &["-m".into(), mode.arg().into()])
            .await
    }

    /// `pg_ctl -D <data> <options> -w -t 60 <action>` as postgres, logged to the node's log.
    pub(crate) async fn pg_ctl(
        &self,
        n: &Node<'_>,
        action: &str,
        options: &[String],
    ) -> Result<()> {
        let mut argv = vec![pg_bin("pg_ctl"), "-D".into(), s(&n.data())];
        argv.extend(options.iter().cloned());
        argv.extend(["-w".into(), "-t".into(), "60".into(), action.into()]);
        let what = match options {
            [flag, mode] if flag == "-m" => format!("pg_ctl {action} -m {mode} {}", n.name),
            _ => format!("pg_ctl {action} {}", n.name),
        };
        Run::new(what, argv)
            .postgres()
            .cwd(&self.dir)
            .log(&n.log())
            .timeout(T_PG_CTL)
            .run()
            .await
            .map(drop)
    }
}
