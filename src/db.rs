//! Observation of the local database: one bounded round trip per poll cycle.
//!
//! Owns the connection pool (bb8, at most `max_connections_in_pool` connections, never
//! connecting at start-up so the daemon starts with its database down), the single query that
//! reads `pg_is_in_recovery()`, the WAL positions, the WAL receiver and a primary's WAL senders
//! (each standby's `sync_state`) together with every row of `repmgr.nodes`, and the proof that
//! the server still accepts a new client: each observation also opens a connection of its own
//! and closes it at once (a postmaster that accepts no one makes the node Down even while the
//! pooled connection still answers). The query runs as an unnamed, typed statement (`query_typed`): one round trip, no prepare, no
//! text pasted into SQL. A connection whose query was abandoned (at `db_timeout`, or at shutdown) is
//! closed, never handed out again: the pool's manager ([`Manager`]) marks each connection busy
//! while it runs a query and counts a busy connection as broken when it comes back. The
//! manager also watches each connection's end: when the *server* closes one (a shutdown or
//! restart of PostgreSQL, which every demotion of a primary goes through), it counts a lost
//! session at once ([`Losses`]), so that a snapshot observed before that instant is no longer
//! served (see [`crate::snapshot::Withheld::SessionLost`]) and the poller observes again. Nothing
//! here decides anything; it only says what the database said, or why it could not be asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8::{ErrorSink, ManageConnection, Pool, RunError};
use bb8_postgres::PostgresConnectionManager;
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config as PgConfig, NoTls};

use crate::config::DbSettings;
use crate::wire::WalStandby;

/// One row of `repmgr.nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node_id: i32,
    pub node_name: String,
    /// `primary`, `standby` or `witness`.
    pub node_type: String,
    pub active: bool,
    /// The site.
    pub location: String,
    /// How repmgr reaches the node; its host is the default address of the node's daemon.
    pub conninfo: String,
}

/// What one successful round trip to the local database returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbObservation {
    pub in_recovery: bool,
    /// Every row of `repmgr.nodes`, ordered by `node_id`.
    pub nodes: Vec<NodeRow>,
    /// WAL positions and the WAL receiver.
    pub wal: WalObservation,
}

/// WAL positions (bytes since `0/0`) and replication, as the local database reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalObservation {
    /// `pg_current_wal_lsn()`: where a primary writes.
    pub current: Option<u64>,
    /// `pg_last_wal_receive_lsn()`: what a standby has received (streaming).
    pub received: Option<u64>,
    /// `pg_last_wal_replay_lsn()`: what a standby has replayed.
    pub replayed: Option<u64>,
    /// `pg_is_wal_replay_paused()` of a standby.
    pub replay_paused: Option<bool>,
    /// How old the last replayed transaction was, in milliseconds: `now() -
    /// pg_last_xact_replay_timestamp()` on the standby (its wall clock against the primary's
    /// commit timestamps: the one place wall clocks enter, because `lag_time` is defined so).
    pub last_replay_age_ms: Option<i64>,
    /// The WAL receiver, when one runs.
    pub receiver: Option<Receiver>,
    /// A primary's WAL senders (`pg_stat_replication`, read in the same statement): each
    /// standby's `sync_state`. None in recovery, or when the list could not be read.
    pub standbys: Option<Vec<WalStandby>>,
    /// `pg_control_system().system_identifier`: the streaming-replication cluster's identity
    /// (shared by a primary and its standbys; [`crate::auth::cluster_identity`]). Read in the
    /// same statement; None when it could not be read.
    pub system_identifier: Option<i64>,
}

/// The WAL receiver (`pg_stat_wal_receiver`). Its details need `pg_read_all_stats`; without
/// it only its existence is visible and the rest is None.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receiver {
    /// `streaming`, `starting`, `waiting`, `restarting`, `stopping`.
    pub status: Option<String>,
    /// The upstream's end of WAL as it last reported it.
    pub latest_end: Option<u64>,
    /// When the last message from the upstream arrived (text, used only to see it change).
    pub last_msg_receipt: Option<String>,
    /// `host:port` of the upstream.
    pub sender: Option<String>,
}

impl DbObservation {
    /// The active primary named by this metadata, if exactly one row is an active primary.
    pub fn named_primary(&self) -> Option<&str> {
        let mut primaries = self
            .nodes
            .iter()
            .filter(|n| n.node_type == "primary" && n.active);
        match (primaries.next(), primaries.next()) {
            (Some(p), None) => Some(&p.node_name),
            _ => None,
        }
    }
}

/// Why the local database could not be observed. Each of them makes the node Down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    #[error("database did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("cannot connect to database: {0}")]
    Connect(String),
    #[error("query failed: {0}")]
    Query(String),
    #[error("not a repmgr database: {0}")]
    NotRepmgr(String),
    #[error("the server accepts no new connection: {0}")]
    NoNewConnection(String),
}

impl DbError {
    /// A short stable kind, so that a change of error text does not count as a new failure.
    pub fn kind(&self) -> &'static str {
        match self {
            DbError::Timeout(_) => "timeout",
            DbError::Connect(_) => "connect",
            DbError::Query(_) => "query",
            DbError::NotRepmgr(_) => "not_repmgr",
            DbError::NoNewConnection(_) => "no_new_connection",
        }
    }
}

/// The single statement of a poll cycle. LEFT JOINs keep the local facts when the table is
/// empty or no WAL receiver runs. Functions that fail on the wrong role (a primary's
/// `pg_current_wal_lsn()` on a standby, a standby's `pg_is_wal_replay_paused()` on a primary)
/// sit behind a CASE on the recovery flag. A primary's WAL senders come as one JSON array
/// (`[{"name":..,"state":..,"sync_state":..}]`, [`WalStandby`]), read from one call of
/// `pg_stat_replication`, so that they belong to the same instant as the WAL position.
const OBSERVE_SQL: &str = "SELECT r.in_recovery, n.node_id, n.node_name, n.type, n.active, \
     n.location, n.conninfo, r.current_lsn, r.receive_lsn, r.replay_lsn, r.replay_paused, \
     r.replay_age_ms, r.receiver, r.receiver_status, r.latest_end_lsn, r.last_msg_receipt, \
     r.sender, r.standbys, r.system_identifier \
     FROM (SELECT s.in_recovery, \
             (SELECT c.system_identifier FROM pg_control_system() c) AS system_identifier, \
             CASE WHEN s.in_recovery THEN NULL \
                  ELSE (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 END AS current_lsn, \
             CASE WHEN s.in_recovery THEN NULL \
                  ELSE (SELECT COALESCE(json_agg(json_build_object( \
                          'name', COALESCE(x.application_name, ''), 'state', x.state, \
                          'sync_state', x.sync_state) ORDER BY x.pid), '[]')::text \
                        FROM pg_stat_replication x) END AS standbys, \
             (pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::int8 AS receive_lsn, \
             (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 AS replay_lsn, \
             CASE WHEN s.in_recovery THEN pg_is_wal_replay_paused() END AS replay_paused, \
             (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::int8 \
                 AS replay_age_ms, \
             w.pid IS NOT NULL AS receiver, w.status AS receiver_status, \
             (w.latest_end_lsn - '0/0'::pg_lsn)::int8 AS latest_end_lsn, \
             w.last_msg_receipt_time::text AS last_msg_receipt, \
             w.sender_host || ':' || w.sender_port AS sender \
           FROM (SELECT pg_is_in_recovery() AS in_recovery) s \
           LEFT JOIN pg_stat_wal_receiver w ON true) r \
     LEFT JOIN repmgr.nodes n ON true ORDER BY n.node_id";

/// Sessions the server closed (not primgr): a count that only grows, and a wake-up for the
/// poller. Each pool has its own.
#[derive(Debug, Default)]
pub struct Losses {
    count: AtomicU64,
    wake: Notify,
}

impl Losses {
    /// How many sessions the server has closed so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Counts a session the server closed and wakes the poller (a permit is kept if it is not
    /// waiting yet).
    pub fn lost(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// Completes after the next [`Losses::lost`] (or at once if one happened since the last
    /// wake-up was taken).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

/// bb8-postgres's manager (it checks a connection's health), connecting itself so that it can
/// watch each connection's end; its connections know whether a query is running on them.
#[derive(Debug)]
pub struct Manager {
    inner: PostgresConnectionManager<NoTls>,
    config: PgConfig,
    losses: Arc<Losses>,
}

/// A pooled connection: the client, and whether a query was started on it and not seen to end.
pub struct Tracked {
    client: tokio_postgres::Client,
    busy: bool,
}

impl ManageConnection for Manager {
    type Connection = Tracked;
    type Error = tokio_postgres::Error;

    /// Connects, and runs the connection in a task of its own. That task ends with an error
    /// only when the session ends by the server's doing (its `FATAL` at a shutdown, or the
    /// socket closing); when primgr drops the client, it ends cleanly after `Terminate`. An
    /// error counts as a lost session.
    async fn connect(&self) -> Result<Tracked, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let losses = Arc::clone(&self.losses);
        tokio::spawn(async move {
            if connection.await.is_err() {
                losses.lost();
            }
        });
        Ok(Tracked {
            client,
            busy: false,
        })
    }

    async fn is_valid(&self, conn: &mut Tracked) -> Result<(), tokio_postgres::Error> {
        self.inner.is_valid(&mut conn.client).await
    }

    /// A connection comes back broken when its server closed it, or when the future running
    /// a query on it was dropped before the answer (a timeout): its session may still be
    /// busy, so it is closed rather than reused.
    fn has_broken(&self, conn: &mut Tracked) -> bool {
        conn.busy || conn.client.is_closed()
    }
}

/// The local database, through a small pool.
#[derive(Clone)]
pub struct Db {
    pool: Pool<Manager>,
    /// What the pool was built from.
    settings: DbSettings,
    timeout: Duration,
    connect_errors: LastConnectError,
    losses: Arc<Losses>,
    /// The conninfo's secrets ([`crate::conninfo::secrets`]), taken out of every error text.
    secrets: Vec<String>,
}

/// bb8 hands failed connection attempts to an error sink and lets `get()` time out; this sink
/// keeps the latest one so an observation can say "connection refused" instead of "timeout",
/// and wakes the observation waiting for a connection so that it fails at once instead of at
/// the end of `db_timeout` (a stopped database is then Down one cycle after it stopped).
#[derive(Debug, Clone, Default)]
struct LastConnectError(Arc<Mutex<Option<(Instant, String)>>>, Arc<Notify>);

impl LastConnectError {
    /// The latest connection error seen after `since`, if any.
    fn since(&self, since: Instant) -> Option<String> {
        let last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, e)| e.clone())
    }

    /// Waits for a connection error after `since`.
    async fn next(&self, since: Instant) -> String {
        loop {
            let notified = self.1.notified();
            tokio::pin!(notified);
            // Registered before looking, so an error sunk in between is not missed.
            notified.as_mut().enable();
            if let Some(e) = self.since(since) {
                return e;
            }
            notified.await;
        }
    }
}

impl ErrorSink<tokio_postgres::Error> for LastConnectError {
    fn sink(&self, error: tokio_postgres::Error) {
        // A connect that timed out is reported as the observation's timeout, not as a cause.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::TimedOut {
                    return;
                }
            }
            source = e.source();
        }
        if error.to_string().contains("timeout") {
            return;
        }
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), error_text(&error)));
        self.1.notify_waiters();
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Db {
    /// Builds the pool of a database group without connecting (see [`Db::new`]).
    pub fn open(settings: &DbSettings) -> Result<Db, DbError> {
        Db::new(
            &settings.conninfo,
            settings.max_connections_in_pool,
            settings.db_timeout,
        )
    }

    /// The settings the pool was built from.
    pub fn settings(&self) -> &DbSettings {
        &self.settings
    }

    /// Builds the pool without connecting. `timeout` bounds every observation as a whole and
    /// also each connection attempt (libpq `connect_timeout`, pool checkout) and each statement
    /// on the server (`statement_timeout`), so that a query outliving its caller is cancelled
    /// by the server as well.
    pub fn new(conninfo: &str, pool_size: u32, timeout: Duration) -> Result<Db, DbError> {
        let settings = DbSettings {
            conninfo: conninfo.to_string(),
            max_connections_in_pool: pool_size,
            db_timeout: timeout,
        };
        let mut secrets = crate::conninfo::secrets(conninfo);
        let (conninfo, passfile) = crate::conninfo::take_passfile(conninfo);
        let mut config: PgConfig = conninfo
            .parse()
            .map_err(|e| DbError::Connect(format!("bad conninfo: {e}")))?;
        if let Some(path) = passfile.filter(|_| config.get_password().is_none()) {
            if let Some(password) = password_from(&path, &config)? {
                secrets.push(password.clone());
                config.password(password);
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("primgr");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let statement_timeout = format!("-c statement_timeout={}", timeout.as_millis().max(1));
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {statement_timeout}"),
            _ => statement_timeout,
        };
        config.options(options);
        let losses = Arc::new(Losses::default());
        let manager = Manager {
            inner: PostgresConnectionManager::new(config.clone(), NoTls),
            config,
            losses: Arc::clone(&losses),
        };
        let connect_errors = LastConnectError::default();
        let pool = Pool::builder()
            .max_size(pool_size)
            .connection_timeout(timeout)
            // Validating on checkout would cost a second round trip per cycle; a broken
            // connection is noticed by the query itself (and retried once, below).
            .test_on_check_out(false)
            // Report a refused connection as it is instead of retrying until the timeout.
            .retry_connection(false)
            .idle_timeout(Some(Duration::from_secs(600)))
            .error_sink(Box::new(connect_errors.clone()))
            .build_unchecked(manager);
        Ok(Db {
            pool,
            settings,
            timeout,
            connect_errors,
            losses,
            secrets,
        })
    }

    /// The sessions of this pool that the server closed.
    pub fn losses(&self) -> Arc<Losses> {
        Arc::clone(&self.losses)
    }

    /// Observes the database once, within the timeout: the query on a pooled connection and,
    /// at the same time, a new connection that is closed at once.
    pub async fn observe(&self) -> Result<DbObservation, DbError> {
        let scrub = |t: String| crate::conninfo::scrub(&t, &self.secrets);
        self.observe_unscrubbed().await.map_err(|e| match e {
            DbError::Timeout(d) => DbError::Timeout(d),
            DbError::Connect(t) => DbError::Connect(scrub(t)),
            DbError::Query(t) => DbError::Query(scrub(t)),
            DbError::NotRepmgr(t) => DbError::NotRepmgr(scrub(t)),
            DbError::NoNewConnection(t) => DbError::NoNewConnection(scrub(t)),
        })
    }

    async fn observe_unscrubbed(&self) -> Result<DbObservation, DbError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let attempt = async {
            match self.observe_once().await {
                // A pooled connection whose server went away fails once with "closed"; the
                // pool drops it, so a second attempt gets a fresh connection.
                Err(Retry::Closed(_)) => self.observe_once().await,
                other => other,
            }
        };
        let (observed, accepted) = tokio::join!(
            tokio::time::timeout_at(deadline, attempt),
            tokio::time::timeout_at(deadline, self.pool.dedicated_connection()),
        );
        let observed = match observed {
            Ok(Ok(obs)) => Ok(obs),
            Ok(Err(Retry::Closed(e) | Retry::Final(e))) => Err(e),
            Err(_) => Err(DbError::Timeout(self.timeout)),
        }
        .map_err(|e| match e {
            // The pool's checkout timed out because connecting failed: say why.
            DbError::Timeout(_) => match self
                .connect_errors
                .since(deadline.into_std() - self.timeout)
            {
                Some(text) => DbError::Connect(text),
                None => e,
            },
            other => other,
        })?;
        match accepted {
            Ok(Ok(_new_client)) => Ok(observed),
            Ok(Err(e)) => Err(DbError::NoNewConnection(error_text(&e))),
            Err(_) => Err(DbError::NoNewConnection(format!(
                "a new connection got no answer within {} (db_timeout), while an existing \
                 session still answers",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    async fn observe_once(&self) -> Result<DbObservation, Retry> {
        let asked = Instant::now();
        let checkout = tokio::select! {
            checkout = self.pool.get() => checkout,
            // The connection attempt made for this checkout failed: say so now.
            e = self.connect_errors.next(asked) => return Err(Retry::Final(DbError::Connect(e))),
        };
        let mut conn = checkout.map_err(|e| match e {
            RunError::User(e) => Retry::Final(DbError::Connect(error_text(&e))),
            RunError::TimedOut => Retry::Final(match self.connect_errors.since(asked) {
                Some(e) => DbError::Connect(e),
                None => DbError::Timeout(self.timeout),
            }),
        })?;
        conn.busy = true;
        let rows = conn.client.query_typed(OBSERVE_SQL, &[]).await;
        // Reached only when the query ended (with rows or an error): the session is idle again.
        conn.busy = false;
        let rows = rows.map_err(|e| {
            if e.is_closed() {
                return Retry::Closed(DbError::Connect(error_text(&e)));
            }
            let missing = matches!(
                e.code(),
                Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME
                    || *c == SqlState::UNDEFINED_COLUMN
            );
            if missing {
                Retry::Final(DbError::NotRepmgr(error_text(&e)))
            } else {
                Retry::Final(DbError::Query(error_text(&e)))
            }
        })?;
        parse_rows(&rows).map_err(Retry::Final)
    }
}

/// The password `passfile` gives for this connection, as libpq would read it. Like libpq, a
/// file that others may read is refused (here with an error, since a daemon has no terminal to
/// warn on), and so is anything but a regular file ([`crate::conninfo::read_secret_file`]).
fn password_from(path: &std::path::Path, config: &PgConfig) -> Result<Option<String>, DbError> {
    let bad = |why: String| DbError::Connect(format!("passfile {}: {why}", path.display()));
    let text = crate::conninfo::read_secret_file(path).map_err(bad)?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        // A socket connection matches "localhost", as in libpq.
        _ => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or(user);
    Ok(crate::conninfo::pgpass_lookup(
        &text, &host, port, dbname, user,
    ))
}

enum Retry {
    Closed(DbError),
    Final(DbError),
}

fn parse_rows(rows: &[tokio_postgres::Row]) -> Result<DbObservation, DbError> {
    let bad = |e: tokio_postgres::Error| DbError::Query(format!("unexpected row: {e}"));
    let lsn = |row: &tokio_postgres::Row, i: usize| -> Result<Option<u64>, DbError> {
        Ok(row
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map(|v| v.max(0) as u64))
    };
    let Some(first) = rows.first() else {
        return Err(DbError::Query("the observation returned no row".into()));
    };
    let receiver = first
        .try_get::<_, bool>(12)
        .map_err(bad)?
        .then(|| Receiver {
            status: first.try_get(13).ok().flatten(),
            latest_end: lsn(first, 14).ok().flatten(),
            last_msg_receipt: first.try_get(15).ok().flatten(),
            sender: first.try_get(16).ok().flatten(),
        });
    let wal = WalObservation {
        current: lsn(first, 7)?,
        received: lsn(first, 8)?,
        replayed: lsn(first, 9)?,
        replay_paused: first.try_get(10).map_err(bad)?,
        last_replay_age_ms: first.try_get(11).map_err(bad)?,
        receiver,
        // Not readable: unknown, which fails every sync check (and nothing else).
        standbys: first
            .try_get::<_, Option<String>>(17)
            .ok()
            .flatten()
            .and_then(|json| serde_json::from_str(&json).ok()),
        system_identifier: first.try_get::<_, Option<i64>>(18).ok().flatten(),
    };
    let in_recovery = first.try_get::<_, bool>(0).map_err(bad)?;
    let mut nodes = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(node_id) = row.try_get::<_, Option<i32>>(1).map_err(bad)? else {
            continue; // the LEFT JOIN row of an empty table
        };
        nodes.push(NodeRow {
            node_id,
            node_name: row.try_get::<_, String>(2).map_err(bad)?,
            node_type: row.try_get::<_, String>(3).map_err(bad)?,
            active: row.try_get::<_, bool>(4).map_err(bad)?,
            location: row.try_get::<_, String>(5).map_err(bad)?,
            conninfo: row.try_get::<_, String>(6).map_err(bad)?,
        });
    }
    Ok(DbObservation {
        in_recovery,
        nodes,
        wal,
    })
}

/// The most useful text of a driver error: the server's message when there is one.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i32, name: &str, ty: &str, active: bool) -> NodeRow {
        NodeRow {
            node_id: id,
            node_name: name.into(),
            node_type: ty.into(),
            active,
            location: "dc1".into(),
            conninfo: String::new(),
        }
    }

    #[test]
    fn named_primary_is_the_single_active_primary() {
        let mut obs = DbObservation {
            in_recovery: true,
            wal: WalObservation::default(),
            nodes: vec![
                row(1, "node1", "primary", false),
                row(2, "node2", "primary", true),
                row(3, "node3", "standby", true),
            ],
        };
        assert_eq!(obs.named_primary(), Some("node2"));
        obs.nodes[0].active = true;
        assert_eq!(
            obs.named_primary(),
            None,
            "two active primaries name nobody"
        );
        obs.nodes.clear();
        assert_eq!(obs.named_primary(), None);
    }

    #[tokio::test]
    async fn a_refused_connection_fails_at_once_not_at_the_timeout() {
        // Nothing listens on port 1: every connection attempt is refused.
        let db = Db::new(
            "host=127.0.0.1 port=1 dbname=repmgr user=repmgr",
            3,
            Duration::from_secs(3),
        )
        .expect("conninfo");
        for _ in 0..3 {
            let t0 = Instant::now();
            let e = db.observe().await.expect_err("nothing listens");
            assert!(
                matches!(&e, DbError::Connect(text) if text.contains("refused")),
                "{e}"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "took {:?}",
                t0.elapsed()
            );
        }
    }

    /// A passfile gives the password of the matching line, is refused when others may read
    /// it, and a missing one is an error that names it.
    #[tokio::test]
    async fn the_passfile_gives_the_password() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("primgr-db-pgpass-{}", std::process::id()));
        std::fs::write(&path, "db:5432:repmgr:primgr:s3cret\n").unwrap();
        let config: PgConfig = "host=db user=primgr dbname=repmgr".parse().unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = password_from(&path, &config).unwrap_err().to_string();
        assert!(e.contains("chmod 0600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            password_from(&path, &config).unwrap().as_deref(),
            Some("s3cret")
        );
        let other: PgConfig = "host=elsewhere user=primgr dbname=repmgr".parse().unwrap();
        assert_eq!(password_from(&path, &other).unwrap(), None);
        let conninfo = format!(
            "host=db user=primgr dbname=repmgr passfile={}",
            path.display()
        );
        assert!(Db::new(&conninfo, 1, Duration::from_secs(1)).is_ok());
        std::fs::remove_file(&path).unwrap();
        let e = Db::new(&conninfo, 1, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("passfile"), "{e}");
    }

    #[test]
    fn bad_conninfo_is_an_error_not_a_panic() {
        assert!(Db::new("host='x", 3, Duration::from_secs(1)).is_err());
    }
}
