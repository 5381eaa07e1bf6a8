//! One daemon: the entry point that runs its tasks.
//!
//! Owns the wiring of a daemon inside a process: [`run`] / [`run_with`] build its
//! [`Shared`] state, start the poller and the `on_change` runner (and the agent port and the
//! reload task when asked),
//! and serve the API (over HTTPS when `tls_cert_file` is set) on an already bound listener
//! until a shutdown future completes. Nothing is global: tests run several daemons in one process.
//!
//! The poll cycle and the peer protocol run on a runtime of their own (`PollThread`: a
//! current-thread runtime in an OS thread of its own, one per daemon): the poller, its peer
//! client's connections, its database sessions, and the members' connections to this
//! daemon's API (`/vote`, `/release`, `/wal`). Every other client is served on the caller's
//! runtime, so an HTTP flood delays neither a cycle nor a vote. The server learns the members'
//! addresses from the last published membership at each accept ([`server::Clients`]).
//! A poller that ends by itself (a panic in a cycle) ends the daemon with
//! [`RunError::PollerDied`], so that the process exits non-zero and its supervisor restarts
//! it, instead of serving "stale" forever.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::error;

use crate::config::Config;
use crate::db::{Db, DbError};
use crate::poller::{CycleHook, OnReady, Poller};
use crate::reload::Reloads;
use crate::shared::Shared;
use crate::tls::Tls;
use crate::{agent, api, hooks, reload, server, shutdown};

/// Why a daemon could not start or stopped by itself.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("conninfo: {0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Keys(#[from] crate::auth::KeyFileError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the poll task ended unexpectedly ({0}); stopping so that the service is restarted")]
    PollerDied(String),
    #[error("cannot start the poll thread: {0}")]
    PollThread(std::io::Error),
}

/// What a caller may add to a daemon beyond its configuration.
#[derive(Default)]
pub struct Options {
    /// Called once the first poll cycle has been published (systemd readiness, tests).
    pub on_ready: Option<OnReady>,
    /// Called at the start of every cycle (tests).
    pub cycle_hook: Option<CycleHook>,
    /// The bound agent-check listener, when `agent_listen` is set.
    pub agent: Option<TcpListener>,
    /// Reload on SIGHUP ([`reload::watch`]).
    pub reloads: Option<Reloads>,
}

/// Runs one daemon until `shutdown` completes: the poller and the HTTP API on `listener`.
///
/// Returns once the server has drained (at most [`server::DRAIN_TIMEOUT`]) and the poller has
/// stopped.
pub async fn run<F>(config: Config, listener: TcpListener, shutdown: F) -> Result<(), RunError>
where
    F: Future<Output = ()> + Send,
{
    run_with(config, listener, shutdown, Options::default()).await
}

/// [`run`] with [`Options`].
pub async fn run_with<F>(
    config: Config,
    listener: TcpListener,
    shutdown: F,
    options: Options,
) -> Result<(), RunError>
where
    F: Future<Output = ()> + Send,
{
    let db = Db::open(&config.db)?;
    let poll_thread = PollThread::start(&config.node.node_name).map_err(RunError::PollThread)?;
    let tls = Tls::load(
        config.tls.tls_cert_file.as_deref(),
        config.tls.tls_key_file.as_deref(),
        config.tls.tls_ca_file.as_deref(),
    )?;
    let shared = Arc::new(Shared::with_tls(config, tls));
    shared.auth.load(&shared.config())?;
    let (trigger, stop) = shutdown::channel();
    let (on_change, runner) = hooks::channel();
    let hooks = tokio::spawn(runner.run(stop.clone()));
    let poller = Poller::new(shared.clone(), db, options.cycle_hook, on_change);
    let mut polling = poll_thread
        .runtime
        .spawn(poller.run(stop.clone(), options.on_ready));
    if let Some(listener) = options.agent {
        tokio::spawn(agent::serve(listener, shared.clone(), stop.clone()));
    }
    if let Some(reloads) = options.reloads {
        tokio::spawn(reload::watch(reloads, shared.clone(), stop));
    }

    // Serve until asked to stop, or until the poller ends by itself.
    let mut died = None;
    let stop_serving = async {
        tokio::select! {
            _ = shutdown => {}
            ended = &mut polling => died = Some(match ended {
                Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
                Err(e) => e.to_string(),
                Ok(()) => "it returned".to_string(),
            }),
        }
    };
    let app = api::App::new(shared.clone());
    let policy = server::Policy {
        clients: Arc::new(Members(shared.clone())),
        members_on: Some(poll_thread.runtime.clone()),
        tls: shared.tls.server.as_ref().map(|t| t.config()),
        // The health check, answered in front of warp (`api`'s `Direct`).
        direct: Some(app.clone()),
    };
    server::serve_with(listener, |client| app.service(client), stop_serving, policy).await;

    if let Some(why) = died {
        let e = RunError::PollerDied(why);
        error!("{e}");
        return Err(e);
    }
    trigger.fire();
    let _ = polling.await;
    // A hook in progress is killed with its process group and reaped.
    let _ = hooks.await;
    Ok(())
}

/// The runtime of the poll cycle and the peer protocol: a current-thread runtime driven by an
/// OS thread of its own. Dropping it stops the thread (tasks still on it are dropped).
struct PollThread {
    runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl PollThread {
    fn start(node: &str) -> std::io::Result<PollThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("primgr-poll-{node}"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // A blocking task (a name resolution) is not waited for.
                runtime.shutdown_background();
            })?;
        Ok(PollThread {
            runtime: handle,
            _stop: stop,
        })
    }
}

/// What the server asks at each accept: the `http` keys in force, and the members' addresses
/// as the last published membership lists them (the host of each member's API address when it
/// is an IP address; a host name is not resolved on the accept path).
struct Members(Arc<Shared>);

impl server::Clients for Members {
    fn limits(&self) -> server::Limits {
        let http = &self.0.config().http;
        server::Limits {
            per_client: http.max_connections_per_client as usize,
            idle_timeout: http.idle_timeout,
        }
    }

    fn is_member(&self, ip: IpAddr) -> bool {
        let snapshot = self.0.store.peek();
        snapshot.members.iter().any(|m| {
            let host = m.url.as_ref().ok().and_then(|u| u.host());
            host.and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
                .is_some_and(|a| a.to_canonical() == ip)
        })
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into())
}
