//! Bounded waits: poll a condition until it holds or a deadline passes ([`wait_for`],
//! [`wait_for_every`]), wait until something accepts TCP connections on an address
//! ([`listening`]), and run futures side by side in one task ([`join_all`]). Used by the lab's
//! rooms, the integration tests and the benchmark, so that nothing sleeps for a fixed time where
//! a condition can be awaited.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// Polls `check` every 100 ms until it returns `Ok(true)`; returns how long that took, or an
/// error naming `what` (with the last error `check` returned, if any) once `timeout` passed.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    wait_for_every(what, timeout, Duration::from_millis(100), check).await
}

/// [`wait_for`] polling every `period`.
pub async fn wait_for_every<F, Fut>(
    what: &str,
    timeout: Duration,
    period: Duration,
    mut check: F,
) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let t0 = Instant::now();
    loop {
        let last = match check().await {
            Ok(true) => return Ok(t0.elapsed()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if t0.elapsed() >= timeout {
            return Err(match last {
                Some(e) => e.context(format!("{what}: not reached after {timeout:?}")),
                None => anyhow!("{what}: not reached after {timeout:?}"),
            });
        }
        tokio::time::sleep(period).await;
    }
}

/// Whether a TCP connection to `addr` is accepted within `within`.
pub async fn accepts(addr: SocketAddr, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Waits until `addr` accepts TCP connections (polled every 50 ms); returns how long it took.
pub async fn listening(addr: SocketAddr, timeout: Duration) -> Result<Duration> {
    wait_for_every(
        &format!("something listening on {addr}"),
        timeout,
        Duration::from_millis(50),
        || async move { Ok(accepts(addr, Duration::from_millis(300)).await) },
    )
    .await
}

/// Runs futures concurrently (in the current task) and collects their outputs in order.
pub async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
