//! A health-check sampler that cannot be slowed down by the test it observes.
//!
//! It runs on its own OS thread with its own single-threaded tokio runtime, so neither the lab's
//! helpers nor in-process daemons nor a hostile load generator in the test's runtime delay it.
//! Every `period` it starts one GET per target, each on a fresh connection from 127.0.0.1 (what
//! haproxy's `option httpchk` does), bounded by `timeout`, and records when it started, what it
//! got and how long it took. A slow answer never delays the next sample: each runs as its own
//! task. Each round starts its requests from the last target to the first, so that a reference
//! target placed last (a control daemon) is started first: its latency then includes any stall
//! of the sampler during the round. [`Sampler::bracketed`] orders a round so that the control
//! is sampled once more after all the others (recorded as target `targets.len()`), so that a stall that begins
//! after the first control answer is seen by the second. The sampler's thread asks for a higher scheduling priority
//! (`renice -n -10`, best effort), so that other work on a shared machine delays the instrument
//! less than what it measures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use primgr_lab::http;

/// One health check.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request started, since the sampler's `t0`.
    pub at: Duration,
    /// Index of the target in the list given to [`Sampler::start`].
    pub target: usize,
    /// The status, or None when there was no complete answer within the timeout.
    pub status: Option<u16>,
    /// Time to the complete answer (or to the failure).
    pub latency: Duration,
    /// Why there was no answer.
    pub error: Option<String>,
}

/// A running sampler; [`Sampler::stop`] ends it and returns every sample.
pub struct Sampler {
    t0: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `path` on every target every `period`, each request bounded by `timeout`.
    /// Times are measured from `t0`.
    pub fn start(
        t0: Instant,
        targets: Vec<SocketAddr>,
        path: &'static str,
        period: Duration,
        timeout: Duration,
    ) -> Sampler {
        let order = targets.into_iter().enumerate().rev().collect();
        Self::start_in_order(t0, order, path, period, timeout)
    }

    /// The round order of [`Sampler::start`] with the last target (a control) sampled first
    /// and, as target `targets.len()`, once more last (for [`Sampler::start_in_order`]).
    pub fn bracketed(targets: Vec<SocketAddr>) -> Vec<(usize, SocketAddr)> {
        let n = targets.len();
        let control = targets.last().copied();
        let mut order: Vec<(usize, SocketAddr)> = targets.into_iter().enumerate().rev().collect();
        order.extend(control.map(|c| (n, c)));
        order
    }

    /// [`Sampler::start`] sampling the `(target index, address)` pairs of `order` in that
    /// order every round.
    pub fn start_in_order(
        t0: Instant,
        order: Vec<(usize, SocketAddr)>,
        path: &'static str,
        period: Duration,
        timeout: Duration,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::Builder::new()
                .name("sampler".into())
                .spawn(move || {
                    raise_priority();
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("sampler runtime");
                    rt.block_on(run(t0, order, path, period, timeout, stop, samples));
                })
                .expect("sampler thread")
        };
        Sampler {
            t0,
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Time since `t0`.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// A copy of the samples recorded so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many samples have completed that started at `from` or later.
    pub fn count_since(&self, from: Duration) -> usize {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.at >= from)
            .count()
    }

    /// Waits until `n` samples that started at `from` or later have completed; panics after
    /// `within` (the sampler runs on its own thread, so this only observes it).
    pub async fn wait_samples(&self, from: Duration, n: usize, within: Duration) {
        primgr_lab::wait::wait_for_every(
            &format!("{n} samples since {from:?}"),
            within,
            Duration::from_millis(20),
            || async move { Ok(self.count_since(from) >= n) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#} (got {})", self.count_since(from)));
    }

    /// Stops sampling, waits for requests in flight, returns every sample ordered by time.
    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("sampler thread panicked");
        }
        let mut all = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        all.sort_by_key(|s| (s.at, s.target));
        all
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn run(
    t0: Instant,
    order: Vec<(usize, SocketAddr)>,
    path: &'static str,
    period: Duration,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut in_flight = tokio::task::JoinSet::new();
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        for (target, addr) in order.iter().copied() {
            let samples = samples.clone();
            in_flight.spawn(async move {
                let started = Instant::now();
                let r = http::get(addr, path, timeout).await;
                let latency = started.elapsed();
                let sample = Sample {
                    at: started.duration_since(t0),
                    target,
                    status: r.as_ref().ok().map(|r| r.status),
                    latency,
                    error: r.err().map(|e| format!("{e:#}")),
                };
                samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(sample);
            });
        }
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

/// Renices the calling thread (Linux: a thread id is a valid `renice -p` target). Best effort:
/// without the permission the sampler runs at normal priority.
fn raise_priority() {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    let Some(tid) = link.file_name().and_then(|t| t.to_str()).map(String::from) else {
        return;
    };
    let _ = std::process::Command::new("renice")
        .args(["-n", "-10", "-p", &tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Every 200 sample of `target`, as (start, end): when it was sent and when its answer came.
pub fn two_hundreds(samples: &[Sample], target: usize) -> Vec<(Duration, Duration)> {
    samples
        .iter()
        .filter(|s| s.target == target && s.status == Some(200))
        .map(|s| (s.at, s.at + s.latency))
        .collect()
}
