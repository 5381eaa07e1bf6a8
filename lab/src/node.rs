//! Node operations: `pg_ctl` start/stop, `repmgr standby promote` / `standby follow` /
//! `node rejoin`, a whole failover, a promotion outside repmgr (`pg_ctl promote`), `repmgr
//! standby switchover` (through a fake `ssh` that runs repmgr's remote commands locally), a
//! witness registered again against a new primary, and
//! the runners for `pg_ctl` and `repmgr` as the `postgres` user.

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd::Run;
use crate::lab::{Lab, Node, T_WAIT, lock, pg_bin, s};
use crate::procfs;
use crate::spec::{PG_PORT, StopMode};
use crate::teardown::rejoin_logs;
use crate::wait::wait_for;

const T_PG_CTL: Duration = Duration::from_secs(90);
const T_REPMGR: Duration = Duration::from_secs(120);
const T_REJOIN: Duration = Duration::from_secs(180);
/// A switchover: shutdown of the primary (up to 60 s), promotion, rejoin, siblings following.
const T_SWITCHOVER: Duration = Duration::from_secs(240);

/// The fake `ssh` of [`Lab::fake_ssh`]; `@HOSTS@` becomes one `case` branch per node address,
/// `@CONFS@` the list of every node's repmgr.conf.
const FAKE_SSH: &str = r#"#!/bin/bash
# primgr-lab fake ssh for the lab in @DIR@: runs repmgr's "remote" command here, as the
# calling user, with the repmgr.conf of the node it was meant for. Lab node addresses only.
while [ $# -gt 0 ]; do
  case "$1" in
    -[bcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host="${1#*@}"
shift
case "$host" in
@HOSTS@  *) echo "primgr-lab fake ssh: $host is not a node of this lab" >&2; exit 255 ;;
esac
cmd="$*"
for c in@CONFS@; do cmd="${cmd//"$c"/"$conf"}"; done
exec /bin/bash -c "$cmd"
"#;

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
        self.wait_out_of_recovery(node).await
    }

    /// `repmgr standby follow` on the node (follows the current primary); returns once it streams.
    pub async fn follow(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        self.repmgr(&n, &["standby".into(), "follow".into()])
            .run()
            .await?;
        self.wait_streaming(node).await
    }

    /// Registers the witness again against `primary` (`repmgr witness register --force -h
    /// <primary>`), as repmgrd on a witness does after a failover: it copies `repmgr.nodes` from
    /// `primary`, so the witness's own metadata names the new primary. Run as the `postgres`
    /// user, like every repmgr command of the lab.
    pub async fn register_witness(&self, primary: &str) -> Result<()> {
        let witness = self
            .witness()
            .ok_or_else(|| anyhow::anyhow!("the lab has no witness"))?
            .to_string();
        let w = self.node(&witness)?;
        let p = self.try_addr(primary)?;
        self.repmgr(
            &w,
            &[
                "-h".into(),
                p.to_string(),
                "-p".into(),
                PG_PORT.to_string(),
                "-U".into(),
                "repmgr".into(),
                "-d".into(),
                "repmgr".into(),
                "witness".into(),
                "register".into(),
                "--force".into(),
            ],
        )
        .run()
        .await?;
        Ok(())
    }

    /// A failover as an operator runs it: the node `old_primary` stopped hard (`pg_ctl stop -m
    /// immediate`; nothing if it is not running), `new_primary` promoted ([`Lab::promote`]),
    /// then every other running node but the witness follows it ([`Lab::follow`], in spec
    /// order). Returns once they all stream from it.
    pub async fn failover(&self, old_primary: &str, new_primary: &str) -> Result<()> {
        self.node(old_primary)?;
        self.stop(old_primary, StopMode::Immediate).await?;
        self.promote(new_primary).await?;
        for n in self.data_nodes() {
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
        self.tracking_rejoin_logs(
            self.repmgr(
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
            .run(),
        )
        .await?;
        if !self.is_running(node) {
            self.pg_start(&n).await?;
        }
        self.wait_streaming(node).await
    }

    /// Promotion outside repmgr: `pg_ctl -D <data> -w promote` on a standby. Returns once it
    /// is out of recovery: writable, while its `repmgr.nodes` (as replicated) still names the
    /// old primary and calls it a standby.
    pub async fn promote_outside_repmgr(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        self.pg_ctl(&n, "promote", &[]).await?;
        self.wait_out_of_recovery(node).await
    }

    /// `repmgr standby switchover --siblings-follow` on the standby `node`: the primary is shut
    /// down cleanly, `node` promoted, the old primary rejoined as its standby and every other
    /// standby made to follow it. repmgr runs the commands meant for the other nodes over
    /// `ssh`; there is no sshd here, so the command runs with a fake `ssh` first in `PATH`
    /// (`<dir>/bin/ssh`, see [`Lab::fake_ssh`]). Returns once `node` is out of recovery and every
    /// other running node but the witness streams. The `/tmp/node-rejoin.*.log` files repmgr
    /// writes are removed at teardown.
    pub async fn switchover(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        let ssh = self.fake_ssh()?;
        let bin = ssh
            .parent()
            .map(s)
            .context("the fake ssh has no directory")?;
        self.tracking_rejoin_logs(
            self.repmgr(
                &n,
                &[
                    "standby".into(),
                    "switchover".into(),
                    "--siblings-follow".into(),
                ],
            )
            .env("PATH", format!("{bin}:/usr/sbin:/usr/bin:/sbin:/bin"))
            .timeout(T_SWITCHOVER)
            .run(),
        )
        .await?;
        self.wait_out_of_recovery(node).await?;
        for other in self.data_nodes() {
            if other != node && self.is_running(&other) {
                self.wait_streaming(&other).await?;
            }
        }
        Ok(())
    }

    /// Writes the lab's fake `ssh`, `<dir>/bin/ssh`, and returns its path. It stands in for
    /// repmgr's `ssh -o ... <host> <command>`: it drops the options, accepts only the address of
    /// a node of this lab (any other host: exit 255, like ssh), replaces every node's
    /// `repmgr.conf` path in the command by that node's (repmgr names its own configuration
    /// file in the remote commands) and runs the command locally with bash, as the calling user
    /// (postgres).
    pub fn fake_ssh(&self) -> Result<PathBuf> {
        let bin = self.dir.join("bin");
        std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
        self.set_owner(&bin, 0o755)?;
        let mut hosts = String::new();
        let mut confs = String::new();
        for name in self.node_names() {
            let n = self.node(&name)?;
            let conf = s(&n.conf());
            let _ = writeln!(hosts, "  {}) conf='{conf}' ;;", n.addr);
            let _ = write!(confs, " '{conf}'");
        }
        let script = FAKE_SSH
            .replace("@DIR@", &s(&self.dir))
            .replace("@HOSTS@", &hosts)
            .replace("@CONFS@", &confs);
        let path = bin.join("ssh");
        self.write_pg_file(&path, &script)?;
        self.set_owner(&path, 0o755)?;
        Ok(path)
    }

    /// Waits (up to 60 s) until the node is out of recovery.
    async fn wait_out_of_recovery(&self, node: &str) -> Result<()> {
        wait_for(&format!("{node} out of recovery"), T_WAIT, || async {
            Ok(!self.in_recovery(node).await?)
        })
        .await
        .map(drop)
    }

    /// Runs `op` (a repmgr command that may write `/tmp/node-rejoin.<epoch>.log`) and records
    /// the rejoin logs that appeared meanwhile, for teardown to remove, whatever `op` returned.
    async fn tracking_rejoin_logs<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        let before = rejoin_logs();
        let r = op.await;
        let new: Vec<PathBuf> = rejoin_logs()
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        lock(&self.created_files).extend(new);
        r
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
