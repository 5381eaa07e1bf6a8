//! Counting what the daemon does in its database during a time window, two independent ways:
//!
//! - `pg_stat_database` (`xact_commit + xact_rollback` of database `repmgr`). PostgreSQL 15
//!   reports a long-lived connection's counts lazily (when idle for a while, or when it ends), so
//!   each window edge first ends the daemon's connections with `pg_terminate_backend(pid, 5000)`,
//!   which waits until the backend is gone, and a backend flushes its counts before it leaves the
//!   process array. The pool reconnects on the next poll. Everything the daemon did up to an
//!   edge is therefore counted at that edge. The readings run in database `postgres`, so they do
//!   not count themselves.
//! - The server log with `log_statement = 'all'` and `%a` (application name) in
//!   `log_line_prefix`: the statements logged for `application_name = primgr` between the two
//!   edges' log offsets.

use std::path::Path;

use anyhow::{Context, Result};

use primgr_lab::Lab;

/// Prefix that tags each log line with the application name (`app=primgr`).
pub const LOG_LINE_PREFIX: &str = "%m [%p] %q%u@%d app=%a ";

/// Turns on statement logging with application names on `node` (ALTER SYSTEM + reload).
pub async fn enable_statement_log(lab: &Lab, node: &str) -> Result<()> {
    lab.psql_db(node, "postgres", "ALTER SYSTEM SET log_statement = 'all'")
        .await?;
    lab.psql_db(
        node,
        "postgres",
        &format!("ALTER SYSTEM SET log_line_prefix = '{LOG_LINE_PREFIX}'"),
    )
    .await?;
    lab.psql_db(node, "postgres", "SELECT pg_reload_conf()")
        .await?;
    // A reload is asynchronous: wait until a new session sees it (psql output is trimmed).
    for _ in 0..50 {
        let v = lab
            .psql_db(node, "postgres", "SHOW log_line_prefix")
            .await?;
        if v == LOG_LINE_PREFIX.trim() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("{node}: log_line_prefix did not change after pg_reload_conf()")
}

/// Undoes [`enable_statement_log`].
pub async fn disable_statement_log(lab: &Lab, node: &str) -> Result<()> {
    lab.psql_db(node, "postgres", "ALTER SYSTEM RESET log_statement")
        .await?;
    lab.psql_db(node, "postgres", "ALTER SYSTEM RESET log_line_prefix")
        .await?;
    lab.psql_db(node, "postgres", "SELECT pg_reload_conf()")
        .await?;
    Ok(())
}

/// One window edge: the committed + rolled back transactions of `repmgr` and the log size, taken
/// after the daemon's connections have been ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    pub xacts: i64,
    pub log_offset: u64,
    /// Daemon connections that were ended at this edge.
    pub terminated: u32,
}

/// Ends the connections of `application_name` to `repmgr` and reads the counters.
pub async fn edge(lab: &Lab, node: &str, application_name: &str) -> Result<Edge> {
    let terminated = lab
        .psql_db(
            node,
            "postgres",
            &format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
                 FROM pg_stat_activity WHERE datname = 'repmgr' AND application_name = '{application_name}'"
            ),
        )
        .await?
        .parse::<u32>()
        .context("count of terminated backends")?;
    let xacts = lab
        .psql_db(
            node,
            "postgres",
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'repmgr'",
        )
        .await?
        .parse::<i64>()
        .context("xact_commit + xact_rollback")?;
    let log_offset = std::fs::metadata(lab.node_log(node)?)
        .context("size of the node's log")?
        .len();
    Ok(Edge {
        xacts,
        log_offset,
        terminated,
    })
}

/// Statements logged for one application between two log offsets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statements {
    /// All statements of the application.
    pub total: u64,
    /// Of those, the poll cycle's observation query (it reads `pg_is_in_recovery()`).
    pub poll_queries: u64,
    /// The first few statements that were not the poll query, for the report.
    pub others: Vec<String>,
}

/// Reads the node's log between `from` and `to` and counts `application_name`'s statements.
pub fn statements(log: &Path, from: u64, to: u64, application_name: &str) -> Result<Statements> {
    let bytes = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    let end = (to as usize).min(bytes.len());
    let start = (from as usize).min(end);
    Ok(count_statements(
        &String::from_utf8_lossy(&bytes[start..end]),
        application_name,
    ))
}

/// Counts the `statement:` / `execute ...:` lines of `application_name` in log text.
pub fn count_statements(text: &str, application_name: &str) -> Statements {
    let tag = format!(" app={application_name} ");
    let mut s = Statements::default();
    for line in text.lines() {
        if !line.contains(&tag) {
            continue;
        }
        let Some(i) = line.find("LOG:  ") else {
            continue;
        };
        let msg = &line[i + 6..];
        if !(msg.starts_with("statement: ") || msg.starts_with("execute ")) {
            continue;
        }
        s.total += 1;
        if msg.contains("pg_is_in_recovery()") {
            s.poll_queries += 1;
        } else if s.others.len() < 5 {
            s.others.push(msg.chars().take(120).collect());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_applications_statements() {
        let log = "\
2026-01-01 00:00:00.000 UTC [1] repmgr@repmgr app=primgr LOG:  execute <unnamed>: SELECT r.in_recovery FROM (SELECT pg_is_in_recovery() AS in_recovery) r
2026-01-01 00:00:00.001 UTC [2] postgres@postgres app=psql LOG:  statement: SELECT 1
2026-01-01 00:00:00.002 UTC [1] repmgr@repmgr app=primgr LOG:  statement: SELECT 2
2026-01-01 00:00:00.003 UTC [1] repmgr@repmgr app=primgr FATAL:  terminating connection due to administrator command
2026-01-01 00:00:00.004 UTC [3] repmgr@repmgr app=primgr2 LOG:  statement: SELECT 3
";
        let s = count_statements(log, "primgr");
        assert_eq!((s.total, s.poll_queries), (2, 1));
        assert_eq!(s.others, vec!["statement: SELECT 2".to_string()]);
    }
}
