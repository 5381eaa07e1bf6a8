//! The HTTP server: accepting connections, their limits, and a bounded graceful shutdown.
//!
//! Owns how connections are served, not what is answered (that is [`crate::api`]). Every limit
//! that keeps a misbehaving client from hurting the health checks lives here: a cap on open
//! connections, a cap on request-head size, a timeout for reading a request head that also
//! closes idle keep-alive connections, and a deadline for draining at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// A connection that does not send a complete request head within this time is closed. The
/// same timer runs while a keep-alive connection sits idle between requests, so it is also the
/// idle timeout. Longer than the peer client's pool idle time ([`crate::peers::POOL_IDLE_TIMEOUT`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers) accepted; a larger one gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most connections served at once; past it new connections are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// How long in-flight requests may take to finish after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(1500);

/// Serves `service` on `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight requests finish (at most [`DRAIN_TIMEOUT`]) and returns.
pub async fn serve<S, B, F>(listener: TcpListener, service: S, shutdown: F)
where
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: Future<Output = ()> + Send,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let http = Arc::new(http);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused_logged = false;
    tokio::pin!(shutdown);

    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !refused_logged {
                warn!("{MAX_CONNECTIONS} connections open; closing new ones until some end");
                refused_logged = true;
            }
            continue;
        };
        refused_logged = false;
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(TokioIo::new(stream), service.clone());
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("connection ended with an error: {e}");
            }
            drop(slot);
        });
    }

    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("some requests were still running when the drain deadline passed");
    }
}
