//! Measurement 1, allocations: heap allocations per `GET /state` of primgr's server and of the
//! baseline's, counted in this process by a counting global allocator ([`Counting`]).
//!
//! Both servers run here, each on a runtime of the daemon's shape (tokio multi-thread, 2
//! workers), on 127.0.0.1 (an ephemeral port; no lab address): primgr's is the library's
//! `server::serve_with` with the daemon's policy (the API's routes behind the server's limits,
//! the health check answered in front of warp) against a fixed snapshot (a Primary whose votes
//! hold for a day, so every request goes through the lease-window check and answers 200);
//! the baseline's is `hello.rs`, the server of the `baseline` binary. Only allocations made on
//! the servers' runtime threads are counted (a thread-local mark set when each starts), so
//! the client, a plain thread of this process sending requests one at a time and reading each
//! answer whole, counts nothing. After a warm-up, the count over [`REQUESTS`] keep-alive
//! requests on one connection, divided by that number, is the allocations per request; the
//! same with a new connection per request (`Connection: close`) gives what a connection adds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hyper::StatusCode;
use primgr::State;
use primgr::decide::Verdict;
use primgr::server::{Clients, Limits, Policy};
use primgr::shared::Shared;
use primgr::snapshot::{Snapshot, state_body};
use primgr::vote::Window;

use crate::report::{Findings, Line};
use crate::{hello, progress};

/// Requests counted per run (after [`WARM_UP`] uncounted ones).
const REQUESTS: u64 = 20_000;
const WARM_UP: u64 = 2_000;
/// Requests counted with a new connection each.
const CLOSE_REQUESTS: u64 = 2_000;

/// The global allocator of `primgr-bench`: the system's, counting the allocations (and
/// reallocations) made on marked threads. A global allocator is process-wide by nature; the
/// count is only read by this measurement.
pub struct Counting;

/// Allocations and reallocations made on marked threads since the process started.
static COUNTED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's allocations are counted (a server runtime's thread).
    static MARKED: Cell<bool> = const { Cell::new(false) };
}

fn marked() -> bool {
    MARKED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded to `System` unchanged; the count is a relaxed atomic add.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if marked() {
            COUNTED.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if marked() {
            COUNTED.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if marked() {
            COUNTED.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// A runtime of the daemon's shape whose threads' allocations are counted.
fn counted_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| MARKED.with(|m| m.set(true)))
        .build()
        .context("starting a counted runtime")
}

/// No member, the default limits.
struct NoMembers;

impl Clients for NoMembers {
    fn limits(&self) -> Limits {
        Limits::default()
    }
    fn is_member(&self, _: std::net::IpAddr) -> bool {
        false
    }
}

/// A Primary whose votes hold for a day: `/state` answers 200 after the window check.
fn primary_snapshot(now: Instant) -> Snapshot {
    let day = Duration::from_secs(86_400);
    let mut s = Snapshot::starting();
    s.observed_at = Some(now);
    s.max_staleness = day;
    s.verdict = Verdict {
        state: State::Primary,
        reason: "a fixed snapshot".into(),
        window: Some(Window {
            from: now,
            until: now + day,
        }),
    };
    s
}

/// Allocations per request of one server: keep-alive, and a new connection per request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted {
    pub(crate) keep_alive: f64,
    pub(crate) per_connection: f64,
}

/// Measurement 1, allocations of primgr's server and of the baseline's.
pub(crate) fn measure(f: &mut Findings) -> Result<()> {
    progress("1. allocations per /state, in-process ...");
    let primgr = count_primgr(true)?;
    let through_warp = count_primgr(false)?;
    let baseline = count_baseline()?;
    f.lines.push(
        Line::new(
            "1 heap allocations per /state, primgr / baseline (in-process, keep-alive)",
            format!("{:.2} / {:.2}", primgr.keep_alive, baseline.keep_alive),
        )
        .target(
            "≤ baseline",
            primgr.keep_alive <= baseline.keep_alive + 0.005,
        ),
    );
    f.lines.push(Line::new(
        "1 heap allocations per /state on a new connection each, primgr / baseline",
        format!(
            "{:.2} / {:.2}",
            primgr.per_connection, baseline.per_connection
        ),
    ));
    f.lines.push(Line::new(
        "1 heap allocations per /state through warp's filters (no direct answer), keep-alive",
        format!("{:.2}", through_warp.keep_alive),
    ));
    Ok(())
}

/// primgr's server (the library's, as the daemon runs it) against a fixed snapshot; with
/// `direct` false, without the health check's direct answer (every request through warp).
fn count_primgr(direct: bool) -> Result<Counted> {
    let runtime = counted_runtime()?;
    let config = primgr::Config::for_node("node1").context("a default configuration")?;
    let shared = Arc::new(Shared::new(config));
    shared.store.store(primary_snapshot(Instant::now()));
    let app = primgr::api::App::new(shared);
    let listener = runtime
        .block_on(async { primgr::server::bind(SocketAddr::from(([127, 0, 0, 1], 0))) })
        .context("binding primgr's server")?;
    let addr = listener.local_addr()?;
    let policy = Policy {
        clients: Arc::new(NoMembers),
        members_on: None,
        tls: None,
        direct: direct.then(|| app.clone() as Arc<dyn primgr::server::Direct>),
    };
    let server = runtime.spawn(async move {
        primgr::server::serve_with(
            listener,
            |client| app.service(client),
            std::future::pending(),
            policy,
        )
        .await
    });
    let counted = count(addr);
    server.abort();
    counted
}

/// The baseline's server, answering what primgr answers.
fn count_baseline() -> Result<Counted> {
    let runtime = counted_runtime()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
            [127, 0, 0, 1],
            0,
        ))))
        .context("binding the baseline's server")?;
    let addr = listener.local_addr()?;
    let server = runtime.spawn(hello::serve(
        listener,
        StatusCode::OK,
        state_body(State::Primary),
    ));
    let counted = count(addr);
    server.abort();
    counted
}

/// Counts the server on `addr`'s allocations per request.
fn count(addr: SocketAddr) -> Result<Counted> {
    let keep = b"GET /state HTTP/1.1\r\nHost: bench\r\n\r\n";
    let close = b"GET /state HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let mut conn = Client::connect(addr)?;
    for _ in 0..WARM_UP {
        conn.exchange(keep)?;
    }
    let before = COUNTED.load(Ordering::Relaxed);
    for _ in 0..REQUESTS {
        conn.exchange(keep)?;
    }
    let keep_alive = (COUNTED.load(Ordering::Relaxed) - before) as f64 / REQUESTS as f64;
    drop(conn);
    for _ in 0..WARM_UP / 10 {
        Client::connect(addr)?.exchange(close)?;
    }
    // Connections that ended have freed what they held; allocations are what is counted.
    let before = COUNTED.load(Ordering::Relaxed);
    for _ in 0..CLOSE_REQUESTS {
        Client::connect(addr)?.exchange(close)?;
    }
    let per_connection = (COUNTED.load(Ordering::Relaxed) - before) as f64 / CLOSE_REQUESTS as f64;
    Ok(Counted {
        keep_alive,
        per_connection,
    })
}

/// A blocking HTTP/1.1 client of one connection that reads each answer whole.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Sends `request` and reads its answer (a 200 with a `content-length` body).
    fn exchange(&mut self, request: &[u8]) -> Result<()> {
        self.stream.write_all(request)?;
        self.buf.clear();
        let mut chunk = [0u8; 1024];
        loop {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("the server closed the connection before answering");
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = complete(&self.buf) {
                ensure!(
                    self.buf.starts_with(b"HTTP/1.1 200 "),
                    "not a 200: {}",
                    String::from_utf8_lossy(&self.buf[..end])
                );
                ensure!(end == self.buf.len(), "more than one answer");
                return Ok(());
            }
        }
    }
}

/// The length of the answer at the start of `buf` when it is complete.
fn complete(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..head]).ok()?;
    let length: usize = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head + length).then_some(head + length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_complete_with_its_body() {
        let a = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(complete(a), Some(a.len()));
        assert_eq!(complete(&a[..a.len() - 1]), None);
        assert_eq!(complete(b"HTTP/1.1 200 OK\r\n"), None);
    }
}
