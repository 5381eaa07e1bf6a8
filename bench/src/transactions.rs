//! Measurement 2: database transactions per health check, counted two ways over an idle and a
//! loaded window (see [`crate::pgstat`]).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use primgr_lab::Lab;

use crate::NODE;
use crate::opts::Opts;
use crate::pgstat;
use crate::report::{Findings, Line};
use crate::wrk::{Mode, Wrk};

/// The transaction count of measurement 2.
struct Xacts {
    idle_secs: f64,
    load_secs: f64,
    idle_xacts: i64,
    load_xacts: i64,
    checks: u64,
    idle_log: pgstat::Statements,
    load_log: pgstat::Statements,
    terminated: Vec<u32>,
}

impl Xacts {
    /// Transactions of the loaded window beyond the background rate over the same time.
    fn excess(&self) -> f64 {
        self.load_xacts as f64 - self.idle_xacts as f64 * self.load_secs / self.idle_secs
    }

    fn per_check(&self) -> f64 {
        self.excess().max(0.0) / self.checks.max(1) as f64
    }

    /// Zero per check: nothing but poll queries in the log under load, and no more
    /// transactions than the poller's background give or take two poll cycles (a window can
    /// hold one cycle more or less than the other at each edge; each cycle is one transaction).
    fn zero(&self) -> bool {
        self.load_log.total == self.load_log.poll_queries && self.excess() <= 2.0
    }

    fn report(&self, f: &mut Findings) -> Result<()> {
        writeln!(f.details, "2. {}\n", self.describe())?;
        f.lines.push(
            Line::new(
                "2 database transactions per health check",
                format!(
                    "{:.5} ({:+.1} xacts beyond the poller's background over {} checks)",
                    self.per_check(),
                    self.excess(),
                    self.checks
                ),
            )
            .target("0", self.zero()),
        );
        f.lines.push(Line::new(
            "2 statements logged for primgr, idle / loaded window",
            format!(
                "{} / {} (poll queries {} / {}; other {} / {})",
                self.idle_log.total,
                self.load_log.total,
                self.idle_log.poll_queries,
                self.load_log.poll_queries,
                self.idle_log.total - self.idle_log.poll_queries,
                self.load_log.total - self.load_log.poll_queries
            ),
        ));
        Ok(())
    }

    fn describe(&self) -> String {
        let others = if self.load_log.others.is_empty() {
            String::new()
        } else {
            format!("\n   other statements: {:?}", self.load_log.others)
        };
        format!(
            "database transactions (pg_stat_database of repmgr on node1, xact_commit + \
             xact_rollback; primgr's connections ended at each edge — {:?} — so the counts land):\n   \
             idle window {:.1} s: {} xacts, {} primgr statements ({} poll queries)\n   \
             loaded window {:.1} s: {} xacts, {} primgr statements ({} poll queries), {} health \
             checks\n   excess over the background rate: {:+.1} xacts → {:.6} per check{}",
            self.terminated,
            self.idle_secs,
            self.idle_xacts,
            self.idle_log.total,
            self.idle_log.poll_queries,
            self.load_secs,
            self.load_xacts,
            self.load_log.total,
            self.load_log.poll_queries,
            self.checks,
            self.excess(),
            self.per_check(),
            others
        )
    }
}

/// Measurement 2: counts the transactions over an idle and a loaded window and reports them.
pub(crate) async fn measure(
    o: &Opts,
    lab: &Lab,
    wrk: &Wrk,
    url: &str,
    f: &mut Findings,
) -> Result<()> {
    transactions(o, lab, wrk, url).await?.report(f)
}

async fn transactions(o: &Opts, lab: &Lab, wrk: &Wrk, url: &str) -> Result<Xacts> {
    let seconds = o.xact_seconds();
    pgstat::enable_statement_log(lab, NODE).await?;
    // Autovacuum workers would add transactions of their own to the database's counters.
    lab.psql_db(NODE, "postgres", "ALTER SYSTEM SET autovacuum = off")
        .await?;
    lab.psql_db(NODE, "postgres", "SELECT pg_reload_conf()")
        .await?;
    let r = transaction_windows(lab, wrk, url, seconds).await;
    let restore = async {
        pgstat::disable_statement_log(lab, NODE).await?;
        lab.psql_db(NODE, "postgres", "ALTER SYSTEM RESET autovacuum")
            .await?;
        lab.psql_db(NODE, "postgres", "SELECT pg_reload_conf()")
            .await
    }
    .await;
    let x = r?;
    restore?;
    Ok(x)
}

async fn transaction_windows(lab: &Lab, wrk: &Wrk, url: &str, seconds: u64) -> Result<Xacts> {
    let log = lab.node_log(NODE)?;
    let e0 = pgstat::edge(lab, NODE, "primgr").await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let e1 = pgstat::edge(lab, NODE, "primgr").await?;
    let t1 = Instant::now();
    let load = wrk.run(url, Mode::KeepAlive(64), seconds).await?;
    ensure!(
        load.status_errors == 0,
        "primgr answered {} health checks with a non-2xx status",
        load.status_errors
    );
    let e2 = pgstat::edge(lab, NODE, "primgr").await?;
    let t2 = Instant::now();
    Ok(Xacts {
        idle_secs: (t1 - t0).as_secs_f64(),
        load_secs: (t2 - t1).as_secs_f64(),
        idle_xacts: e1.xacts - e0.xacts,
        load_xacts: e2.xacts - e1.xacts,
        checks: load.requests,
        idle_log: pgstat::statements(&log, e0.log_offset, e1.log_offset, "primgr")?,
        load_log: pgstat::statements(&log, e1.log_offset, e2.log_offset, "primgr")?,
        terminated: vec![e0.terminated, e1.terminated, e2.terminated],
    })
}
