//! SQL on a node: `psql` as `postgres` over the node's unix socket, and what the tests read
//! through it (recovery, streaming, the primary named by `repmgr.nodes`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::cmd::{Run, log_tail};
use crate::lab::{Lab, Node, T_PSQL, T_WAIT, pg_bin, s};
use crate::spec::PG_PORT;
use crate::wait::wait_for;

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
