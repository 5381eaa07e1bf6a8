//! SQL on a node: `psql` as `postgres` over the node's unix socket (or as root over TCP,
//! [`psql_over_tcp`]), and what the tests read and do through it: recovery, streaming and the
//! upstream, the primary named by `repmgr.nodes`, WAL positions (`pg_current_wal_lsn()`,
//! `pg_last_wal_receive_lsn()`, `pg_last_wal_replay_lsn()` in bytes), paused replay and WAL
//! written on purpose.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{Run, log_tail};
use crate::lab::{Lab, Node, T_PSQL, T_WAIT, pg_bin, s};
use crate::spec::PG_PORT;
use crate::wait::wait_for;

/// Bound on one batch of [`Lab::write_wal`].
const T_WRITE: Duration = Duration::from_secs(120);

impl Lab {
    /// Run SQL on the node (database `repmgr`, as `postgres`, through its unix socket, `psql
    /// -XAt`, 15 s timeout); returns trimmed stdout (rows separated by newlines, columns by `|`).
    pub async fn psql(&self, node: &str, sql: &str) -> Result<String> {
        self.psql_timeout(node, sql, T_PSQL).await
    }

    /// [`Lab::psql`] with a timeout (the psql process is killed when it passes).
    pub async fn psql_timeout(&self, node: &str, sql: &str, timeout: Duration) -> Result<String> {
        let n = self.node(node)?;
        self.psql_in(&n, "repmgr", sql, timeout).await
    }

    /// [`Lab::psql`] in another database.
    pub async fn psql_db(&self, node: &str, db: &str, sql: &str) -> Result<String> {
        let n = self.node(node)?;
        self.psql_in(&n, db, sql, T_PSQL).await
    }

    /// `pg_is_in_recovery()` of the node.
    pub async fn in_recovery(&self, node: &str) -> Result<bool> {
        match self
            .psql(node, "SELECT pg_is_in_recovery()")
            .await?
            .as_str()
        {
            "t" => Ok(true),
            "f" => Ok(false),
            other => bail!("unexpected pg_is_in_recovery() on {node}: {other:?}"),
        }
    }

    /// Whether the node is a standby whose WAL receiver is streaming.
    pub async fn is_streaming(&self, node: &str) -> Result<bool> {
        Ok(self
            .psql(
                node,
                "SELECT pg_is_in_recovery() AND EXISTS \
                 (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')",
            )
            .await?
            == "t")
    }

    /// Wait (up to 60 s) until the node is a standby whose WAL receiver is streaming.
    pub async fn wait_streaming(&self, node: &str) -> Result<()> {
        self.wait_streaming_timeout(node, T_WAIT).await
    }

    /// [`Lab::wait_streaming`] with a timeout.
    pub async fn wait_streaming_timeout(&self, node: &str, timeout: Duration) -> Result<()> {
        let n = self.node(node)?;
        wait_for(&format!("{node} streaming"), timeout, || {
            self.is_streaming(node)
        })
        .await
        .map(drop)
        .map_err(|e| {
            e.context(format!(
                "--- tail of {} ---\n{}",
                n.log().display(),
                log_tail(&n.log(), 20)
            ))
        })
    }

    /// The primary according to the node's own `repmgr.nodes`:
    /// `SELECT node_name FROM repmgr.nodes WHERE type='primary' AND active` (the first by
    /// node_id if several; `None` if none).
    pub async fn primary_in_metadata(&self, node: &str) -> Result<Option<String>> {
        let out = self
            .psql(
                node,
                "SELECT node_name FROM repmgr.nodes WHERE type = 'primary' AND active \
                 ORDER BY node_id",
            )
            .await?;
        Ok(out.lines().next().map(|l| l.trim().to_string()))
    }

    pub(crate) fn psql_run(&self, n: &Node<'_>, db: &str, sql: &str, timeout: Duration) -> Run {
        Run::new(
            format!("psql on {}", n.name),
            [
                pg_bin("psql"),
                "-X".into(),
                "-A".into(),
                "-t".into(),
                "-q".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "-h".into(),
                s(&n.sock()),
                "-p".into(),
                PG_PORT.to_string(),
                "-U".into(),
                "postgres".into(),
                "-d".into(),
                db.into(),
                "-c".into(),
                sql.into(),
            ],
        )
        .postgres()
        .cwd(&self.dir)
        .env("PGCONNECT_TIMEOUT", timeout.as_secs().max(2).to_string())
        .timeout(timeout)
        .log(&n.log())
    }

    /// [`Lab::psql`] as **root** over TCP to the node's address (`psql_over_tcp`: user and
    /// database `repmgr`), which is what a client or a primgr daemon sees; a partial partition
    /// ([`Lab::cut_replication_to`]) does not stop it.
    pub async fn psql_tcp(&self, node: &str, sql: &str) -> Result<String> {
        let addr = SocketAddr::from((self.try_addr(node)?, PG_PORT));
        psql_over_tcp(addr, "primgr-lab", sql, T_PSQL).await
    }

    /// The node whose WAL receiver the node streams from (its `pg_stat_wal_receiver` with status
    /// `streaming`, by sender address); `None` when it does not stream.
    pub async fn upstream_of(&self, node: &str) -> Result<Option<String>> {
        let host = self
            .psql(
                node,
                "SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            )
            .await?;
        if host.is_empty() {
            return Ok(None);
        }
        let addr = host
            .parse()
            .with_context(|| format!("sender_host {host:?} of {node}"))?;
        Ok(Some(self.node_at(addr).with_context(|| {
            format!("{node} streams from {host}, which is not a node of this lab")
        })?))
    }

    /// `pg_current_wal_lsn()` of a primary, in bytes.
    pub async fn current_wal_lsn(&self, node: &str) -> Result<u64> {
        self.lsn(node, "pg_current_wal_lsn()")
            .await?
            .with_context(|| format!("no current WAL position on {node}"))
    }

    /// `pg_last_wal_receive_lsn()` of a standby, in bytes (`None` on a primary).
    pub async fn receive_lsn(&self, node: &str) -> Result<Option<u64>> {
        self.lsn(node, "pg_last_wal_receive_lsn()").await
    }

    /// `pg_last_wal_replay_lsn()` of a standby, in bytes (`None` on a primary).
    pub async fn replay_lsn(&self, node: &str) -> Result<Option<u64>> {
        self.lsn(node, "pg_last_wal_replay_lsn()").await
    }

    async fn lsn(&self, node: &str, function: &str) -> Result<Option<u64>> {
        let out = self
            .psql(node, &format!("SELECT ({function} - '0/0')::bigint"))
            .await?;
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some(out.parse().with_context(|| {
            format!("{function} of {node}: {out:?}")
        })?))
    }

    /// `pg_wal_replay_pause()` on a standby; returns once replay is paused. The standby keeps
    /// receiving WAL ([`Lab::receive_lsn`] moves, [`Lab::replay_lsn`] does not).
    pub async fn pause_replay(&self, node: &str) -> Result<()> {
        self.psql(node, "SELECT pg_wal_replay_pause()").await?;
        self.wait_replay_state(node, "paused").await
    }

    /// `pg_wal_replay_resume()` on a standby; returns once replay runs again.
    pub async fn resume_replay(&self, node: &str) -> Result<()> {
        self.psql(node, "SELECT pg_wal_replay_resume()").await?;
        self.wait_replay_state(node, "not paused").await
    }

    /// Whether the standby's replay is paused (`pg_get_wal_replay_pause_state()`).
    pub async fn replay_paused(&self, node: &str) -> Result<bool> {
        Ok(self
            .psql(node, "SELECT pg_get_wal_replay_pause_state()")
            .await?
            == "paused")
    }

    async fn wait_replay_state(&self, node: &str, state: &str) -> Result<()> {
        self.wait_sql(
            node,
            "SELECT pg_get_wal_replay_pause_state()",
            state,
            T_WAIT,
        )
        .await
        .map(drop)
    }

    /// Waits (polling every 100 ms) until [`Lab::psql`] of `sql` on the node returns `want`;
    /// returns how long that took.
    pub async fn wait_sql(
        &self,
        node: &str,
        sql: &str,
        want: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        wait_for(
            &format!("{sql:?} on {node} = {want:?}"),
            timeout,
            || async { Ok(self.psql(node, sql).await? == want) },
        )
        .await
    }

    /// Writes at least `megabytes` MiB of WAL on a primary: rows of 80 bytes inserted into the
    /// scratch table `primgr_lab_wal` of database `postgres` (about 48 MB of WAL per 400,000
    /// rows, a few seconds with the lab's settings), in batches until the WAL position moved by
    /// that much. Returns the bytes of WAL written.
    pub async fn write_wal(&self, node: &str, megabytes: u64) -> Result<u64> {
        let n = self.node(node)?;
        let want = megabytes * 1024 * 1024;
        let start = self.current_wal_lsn(node).await?;
        self.psql_in(
            &n,
            "postgres",
            "CREATE TABLE IF NOT EXISTS primgr_lab_wal (g int, pad text)",
            T_PSQL,
        )
        .await?;
        let mut written = 0;
        // About 7,500 rows per MiB (~140 bytes of WAL a row); the estimate only sizes the
        // batches, the WAL position decides.
        for _ in 0..100 {
            if written >= want {
                return Ok(written);
            }
            let rows = (want - written) / (1024 * 1024) * 7_000 + 1_000;
            self.psql_in(
                &n,
                "postgres",
                &format!(
                    "INSERT INTO primgr_lab_wal SELECT g, repeat('x', 80) \
                     FROM generate_series(1, {rows}) g"
                ),
                T_WRITE,
            )
            .await?;
            written = self.current_wal_lsn(node).await?.saturating_sub(start);
        }
        ensure!(
            written >= want,
            "{node}: only {written} bytes of WAL after 100 batches"
        );
        Ok(written)
    }

    pub(crate) async fn psql_in(
        &self,
        n: &Node<'_>,
        db: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.psql_run(n, db, sql, timeout).run().await
    }
}

/// `psql -XAtq` run as **root** over TCP to `addr` as database user `repmgr`, database
/// `repmgr` (what a client or a primgr daemon sees, unlike [`Lab::psql`], which runs as
/// `postgres` over the node's unix socket). libpq's `connect_timeout` is 2 s; the whole run is
/// bounded by `timeout`. Columns are separated by `|`; returns trimmed stdout.
pub async fn psql_over_tcp(
    addr: SocketAddr,
    application_name: &str,
    sql: &str,
    timeout: Duration,
) -> Result<String> {
    let conninfo = format!(
        "host={} port={} user=repmgr dbname=repmgr connect_timeout=2 \
         application_name={application_name}",
        addr.ip(),
        addr.port()
    );
    Run::new(
        format!("psql through {addr}"),
        [
            pg_bin("psql"),
            "-XAtq".to_string(),
            "-F".to_string(),
            "|".to_string(),
            conninfo,
            "-c".to_string(),
            sql.to_string(),
        ],
    )
    .timeout(timeout)
    .run()
    .await
}
