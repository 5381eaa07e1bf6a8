//! primgr: tells haproxy and operators which node of a repmgr cluster is the real primary.
//!
//! One daemon runs beside each PostgreSQL node. A poll task observes the local database every
//! `interval`, asks the other nodes of its site whom they name as primary, decides a verdict
//! and publishes it as a snapshot; the HTTP handlers only read that snapshot, so a health
//! check never reaches the database.
//!
//! Layout, one concern per module:
//! - [`config`]: settings, defaults, validation with the key and line of every error;
//! - [`db`]: the pool and the single query that observes the local database;
//! - [`peers`]: peer addresses, the HTTP client and the bounded fan-out;
//! - [`decide`]: the verdict, a pure function of the observations;
//! - [`snapshot`]: the published result and the staleness rule;
//! - [`poller`]: the interval task that ties the above together and logs transitions;
//! - [`api`]: the endpoints; [`server`]: connections, limits and draining;
//! - [`shutdown`]: signals and the stop token; [`notify`]: systemd readiness (sd_notify);
//! - [`cluster`]: the `primgr cluster` operator view over every node's `/status`.
//!
//! [`run`] starts a whole daemon on an already bound listener and stops it when a future
//! completes, so tests can run several daemons in one process (they share nothing).

pub mod api;
pub mod cluster;
pub mod config;
pub mod db;
pub mod decide;
pub mod notify;
pub mod peers;
pub mod poller;
pub mod server;
pub mod shutdown;
pub mod snapshot;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
pub use decide::State;

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("conninfo: {0}")]
    Db(#[from] db::DbError),
}

/// Runs one daemon until `shutdown` completes: the poller and the HTTP API on `listener`.
///
/// Returns once the server has drained (at most [`server::DRAIN_TIMEOUT`]) and the poller has
/// stopped.
pub async fn run<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), StartError>
where
    F: Future<Output = ()> + Send,
{
    run_with_ready(config, listener, shutdown, None).await
}

/// Like [`run`], and calls `on_ready` once the first poll cycle has been published (systemd
/// readiness, tests).
pub async fn run_with_ready<F>(
    config: Config,
    listener: TcpListener,
    shutdown: F,
    on_ready: Option<poller::OnReady>,
) -> Result<(), StartError>
where
    F: Future<Output = ()> + Send,
{
    let config = Arc::new(config);
    let db = db::Db::new(
        &config.conninfo,
        config.max_connections_in_pool,
        config.db_timeout,
    )?;
    let client = peers::PeerClient::new(config.source_address, config.peer_timeout);
    let store = Arc::new(snapshot::SnapshotStore::default());
    let (trigger, stop) = shutdown::channel();

    let poller = poller::Poller::new(config.clone(), db, client.clone(), store.clone());
    let polling = tokio::spawn(poller.run(stop, on_ready));

    let app = api::App::new(config, store, client);
    server::serve(listener, api::service(app), shutdown).await;

    trigger.fire();
    let _ = polling.await;
    Ok(())
}
