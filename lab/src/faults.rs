//! Faults: a database frozen (SIGSTOP of the postmaster and its children, or of the postmaster
//! alone) and thawed, network cuts in the lab's own iptables chain (DROP or REJECT between node
//! addresses, arbitrary rules), and partial partitions (replication and repmgr cut from a node
//! that keeps running). The iptables primitives are in `firewall.rs`.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::firewall;
use crate::lab::{Lab, lock};
use crate::procfs;
use crate::spec::{PG_PORT, chain_name, replication_chain_name};
use crate::wait::wait_for_every;

/// Sends `sig` (SIGSTOP or SIGCONT) to `pids` and waits (up to 10 s) until each is stopped
/// (SIGSTOP) or not (SIGCONT), or gone.
async fn signal_and_wait(node: &str, pids: &[i32], sig: i32) -> Result<()> {
    for &p in pids {
        procfs::signal(p, sig);
    }
    let stop = sig == libc::SIGSTOP;
    wait_for_every(
        &format!(
            "the processes of {node} {}",
            if stop { "stopped" } else { "running" }
        ),
        Duration::from_secs(10),
        Duration::from_millis(5),
        || async {
            Ok(pids
                .iter()
                .all(|&p| !procfs::alive(p) || procfs::stopped(p) == stop))
        },
    )
    .await
    .map(drop)
}

/// How [`Lab::cut_with`] blocks traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Silently drop packets (connects time out): a real partition.
    Drop,
    /// Reject TCP with a reset (connects fail at once).
    Reject,
}

impl CutMode {
    fn rule(self, src: &str, dst: &str) -> Vec<String> {
        let mut r: Vec<String> = ["-s", src, "-d", dst]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match self {
            CutMode::Drop => r.extend(["-j".into(), "DROP".into()]),
            CutMode::Reject => r.extend(
                ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]
                    .iter()
                    .map(|s| s.to_string()),
            ),
        }
        r
    }
}

impl Lab {
    /// Whether the node's postmaster is stopped by SIGSTOP.
    pub fn is_frozen(&self, node: &str) -> bool {
        self.node(node)
            .ok()
            .and_then(|n| procfs::postmaster_pid(&n.data()))
            .is_some_and(procfs::stopped)
    }

    /// SIGSTOP the node's postmaster and all its children (a hung database: connections and
    /// queries hang; TCP connects still succeed). Returns once they are all stopped (a signal
    /// takes effect when the kernel next schedules the process, later on a loaded machine).
    pub async fn freeze(&self, node: &str) -> Result<()> {
        let pm = self.running_postmaster(node)?;
        let mut pids = vec![pm];
        pids.extend(procfs::children(pm));
        signal_and_wait(node, &pids, libc::SIGSTOP).await
    }

    /// SIGSTOP only the postmaster: existing sessions keep working, new connections hang.
    /// Returns once it is stopped.
    pub async fn freeze_postmaster(&self, node: &str) -> Result<()> {
        let pm = self.running_postmaster(node)?;
        signal_and_wait(node, &[pm], libc::SIGSTOP).await
    }

    /// SIGCONT the postmaster and all its children; returns once none is stopped any more.
    /// Does nothing if the node is not running.
    pub async fn thaw(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        if let Some(pm) = procfs::postmaster_pid(&n.data()) {
            let mut pids = vec![pm];
            pids.extend(procfs::children(pm));
            signal_and_wait(node, &pids, libc::SIGCONT).await?;
        }
        Ok(())
    }

    fn running_postmaster(&self, node: &str) -> Result<i32> {
        let n = self.node(node)?;
        procfs::postmaster_pid(&n.data()).ok_or_else(|| anyhow!("{node} is not running"))
    }

    /// Runs `f` on the lab's chain `chain` on a blocking thread, one iptables change at a time.
    async fn fw<T, F>(&self, chain: String, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&str) -> Result<T> + Send + 'static,
    {
        let l = self.fw_lock.clone();
        tokio::task::spawn_blocking(move || {
            let _g = lock(&l);
            f(&chain)
        })
        .await
        .context("iptables task failed")?
    }

    /// The lab's main chain (hooked into INPUT and OUTPUT).
    fn chain(&self) -> String {
        chain_name(self.subnet)
    }

    /// Drop all packets between the two nodes' addresses, both directions (iptables DROP in the
    /// lab's chain). Only affects connections whose source is bound to a node address.
    pub async fn cut(&self, a: &str, b: &str) -> Result<()> {
        self.cut_with(a, b, CutMode::Drop).await
    }

    /// [`Lab::cut`] choosing DROP or TCP-reset REJECT.
    pub async fn cut_with(&self, a: &str, b: &str, mode: CutMode) -> Result<()> {
        let (x, y) = (self.try_addr(a)?.to_string(), self.try_addr(b)?.to_string());
        self.fw(self.chain(), move |chain| {
            firewall::ensure_chain(chain, firewall::BOTH)?;
            for (src, dst) in [(&x, &y), (&y, &x)] {
                firewall::add_rule(chain, &mode.rule(src, dst))?;
            }
            Ok(())
        })
        .await
    }

    /// Remove the cut between the two nodes (both directions, DROP and REJECT rules).
    pub async fn heal(&self, a: &str, b: &str) -> Result<()> {
        let (x, y) = (self.try_addr(a)?.to_string(), self.try_addr(b)?.to_string());
        self.fw(self.chain(), move |chain| {
            for (src, dst) in [(&x, &y), (&y, &x)] {
                for mode in [CutMode::Drop, CutMode::Reject] {
                    firewall::delete_rule(chain, &mode.rule(src, dst))?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Remove every rule of the lab's chains (cuts, added rules, partial partitions).
    pub async fn heal_all(&self) -> Result<()> {
        self.fw(self.chain(), firewall::flush).await?;
        self.fw(replication_chain_name(self.subnet), firewall::flush)
            .await
    }

    /// Add an arbitrary rule to the lab's chain, e.g. `["-d", "127.0.77.11", "-p", "tcp",
    /// "--dport", "5432", "-j", "DROP"]` (cuts a database for clients that do not bind).
    /// Removed by [`Lab::heal_all`], [`Lab::remove_rule`] and teardown.
    pub async fn add_rule(&self, rule: &[&str]) -> Result<()> {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        self.fw(self.chain(), move |chain| {
            firewall::ensure_chain(chain, firewall::BOTH)?;
            firewall::add_rule(chain, &rule)
        })
        .await
    }

    /// Remove a rule added with [`Lab::add_rule`].
    pub async fn remove_rule(&self, rule: &[&str]) -> Result<()> {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        self.fw(self.chain(), move |chain| {
            firewall::delete_rule(chain, &rule)
        })
        .await
    }

    /// `iptables -S` of the lab's chains: the main chain, then the partial-partition chain
    /// (each empty if it does not exist yet).
    pub async fn firewall_rules(&self) -> Result<Vec<String>> {
        let mut rules = self.fw(self.chain(), firewall::list).await?;
        rules.extend(
            self.fw(replication_chain_name(self.subnet), firewall::list)
                .await?,
        );
        Ok(rules)
    }

    /// A partial partition: `node` keeps running, and every process still reaches it except
    /// those of the `postgres` OS user, which carry replication and every repmgr command.
    ///
    /// As root, REJECTs (TCP reset) every TCP connection the `postgres` user opens to
    /// `<node address>:5432` (an `-m owner --uid-owner postgres` rule in the lab's chain
    /// `PRIMGR_LAB_<subnet>_REPL`, hooked into OUTPUT only, where the owner match works), then
    /// ends the replication connections the node already serves (`SELECT
    /// pg_terminate_backend(pid) FROM pg_stat_replication` over its unix socket, which no rule
    /// touches). The standbys' WAL receivers cannot reconnect, `repmgr standby promote` on a
    /// standby finds the node unreachable, while clients running as root (the primgr daemons,
    /// [`Lab::psql_tcp`]) and the lab's own `psql` (a unix socket) still reach it. Undone by
    /// [`Lab::heal_replication_to`], [`Lab::heal_all`] and teardown.
    pub async fn cut_replication_to(&self, node: &str) -> Result<()> {
        let rule = self.replication_rule(node)?;
        self.fw(replication_chain_name(self.subnet), move |chain| {
            firewall::ensure_chain(chain, firewall::OUTPUT_ONLY)?;
            firewall::add_rule(chain, &rule)
        })
        .await?;
        self.psql(
            node,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication",
        )
        .await?;
        Ok(())
    }

    /// Removes the rule of [`Lab::cut_replication_to`] for `node`: the `postgres` user reaches
    /// it again (WAL receivers that still point to it reconnect within a second or so).
    pub async fn heal_replication_to(&self, node: &str) -> Result<()> {
        let rule = self.replication_rule(node)?;
        self.fw(replication_chain_name(self.subnet), move |chain| {
            firewall::delete_rule(chain, &rule)
        })
        .await
    }

    fn replication_rule(&self, node: &str) -> Result<Vec<String>> {
        let addr = self.try_addr(node)?.to_string();
        let (port, uid) = (PG_PORT.to_string(), self.pg.uid.to_string());
        Ok([
            "-d",
            &addr,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect())
    }
}
