//! Hostile HTTP against the real `primgr` binary: malformed request lines, invalid methods,
//! oversized heads, bodies on GET, non-UTF-8 paths, 1,000 idle and slow clients held open and
//! thousands of connections opened and dropped. Each hostile request must get a 4xx or a closed
//! connection; idle clients must be closed after `IDLE_TIMEOUT`; meanwhile a health checker on its
//! own thread keeps asking `/state` every 10 ms and every check must be answered (the test prints
//! the latency percentiles per phase), and the daemon's memory and descriptors stay bounded.
//!
//! No database is needed: the daemon's conninfo names a closed port, so it answers 503 (Down)
//! throughout, which is what every health check must keep getting.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::child::{Primgr, scratch_dir};
use common::sampler::{Sample, Sampler};
use primgr::server::{IDLE_TIMEOUT, MAX_HEAD_BYTES};
use primgr_lab::stats::duration_quantile;
use primgr_lab::{http, procfs, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Lab subnet 51 is this file's: the daemon listens on node1's address of that subnet,
/// 127.0.51.11:5999 (shifted by `PRIMGR_LAB_SUBNET_SHIFT`, see `primgr_lab::lab_subnet`).
const SUBNET: u8 = 51;
/// How long a hostile request may take to be answered or dropped.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// Slack over `IDLE_TIMEOUT` for an idle connection to be closed on a loaded machine.
const IDLE_SLACK: Duration = Duration::from_secs(3);
const IDLE_CONNECTIONS: usize = 1000;
/// Every hostile request is sent this many times.
const HOSTILE_ROUNDS: usize = 100;
const STORM_CONNECTIONS: usize = 10_000;
const STORM_WORKERS: usize = 50;
/// Connections opened per second during the storm. Unthrottled, the load generator shares the
/// two cores with the daemon and can always outrun its accept loop, until the listen queue
/// overflows and drops health checks' SYNs too (a flood, not a storm); 2,000/s is an eighth of
/// what the debug build accepts on a quiet machine.
const STORM_RATE: usize = 2000;

/// What a hostile client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The server closed (or reset) the connection without a response.
    Closed,
    /// Neither within [`ANSWER_WITHIN`].
    Hung,
}

/// Sends `head` then `extra` body bytes (while reading, ignoring write errors once the server
/// gave up) and returns the first status line's code, or how the connection ended.
async fn hostile(addr: SocketAddr, head: Vec<u8>, extra: usize) -> Outcome {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(&head).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = extra;
        while left > 0 {
            let n = left.min(chunk.len());
            if wr.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
        // Keep the write side open: a half-close would let the server end the connection for
        // a reason other than the request.
        tokio::time::sleep(ANSWER_WITHIN * 2).await;
    });
    let mut got = Vec::new();
    let outcome = tokio::time::timeout(ANSWER_WITHIN, async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(2).position(|w| w == b"\r\n") {
                return match http::status_code(&got[..end]) {
                    Some(code) => Outcome::Status(code),
                    None => panic!(
                        "not an HTTP status line: {:?}",
                        String::from_utf8_lossy(&got[..end])
                    ),
                };
            }
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or(Outcome::Hung);
    writer.abort();
    outcome
}

fn req(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// The hostile requests: (what, bytes sent as the head, body bytes sent after it).
fn hostile_requests() -> Vec<(&'static str, Vec<u8>, usize)> {
    let big = "a".repeat(MAX_HEAD_BYTES + 1024);
    let many_headers: String = (0..2000)
        .map(|i| format!("X-Header-{i}: value\r\n"))
        .collect();
    let mut junk: Vec<u8> = (0u8..=255).collect();
    junk.extend_from_slice(b"\r\n\r\n");
    vec![
        ("garbage request line", req("GARBAGE\r\n\r\n"), 0),
        ("binary junk", junk, 0),
        ("NULs only", vec![0u8; 512], 0),
        ("request line without version", req("GET /state\r\n\r\n"), 0),
        (
            "unknown HTTP version",
            req("GET /state HTTP/9.9\r\nHost: x\r\n\r\n"),
            0,
        ),
        (
            "extra token in request line",
            req("GET /state HTTP/1.1 extra\r\nHost: x\r\n\r\n"),
            0,
        ),
        (
            "path without leading slash",
            req("GET state HTTP/1.1\r\nHost: x\r\n\r\n"),
            0,
        ),
        (
            "HTTP/2 preface on HTTP/1",
            req("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            0,
        ),
        (
            "method with invalid characters",
            req("G@T /state HTTP/1.1\r\nHost: x\r\n\r\n"),
            0,
        ),
        (
            "unknown method",
            req("FROB /state HTTP/1.1\r\nHost: x\r\n\r\n"),
            0,
        ),
        (
            "DELETE",
            req("DELETE /state HTTP/1.1\r\nHost: x\r\n\r\n"),
            0,
        ),
        ("TRACE", req("TRACE /state HTTP/1.1\r\nHost: x\r\n\r\n"), 0),
        (
            "CONNECT",
            req("CONNECT 127.0.0.1:5432 HTTP/1.1\r\nHost: x\r\n\r\n"),
            0,
        ),
        (
            "method of 70 KiB",
            format!("{big} /state HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            0,
        ),
        (
            "path of 70 KiB",
            format!("GET /{big} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
            0,
        ),
        (
            "one header over 64 KiB",
            format!("GET /state HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            0,
        ),
        (
            "2000 headers (~50 KiB)",
            format!("GET /state HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            0,
        ),
        (
            "header name with a space",
            req("GET /state HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n"),
            0,
        ),
        (
            "header without colon",
            req("GET /state HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n"),
            0,
        ),
        (
            "bare CR in a header value",
            req("GET /state HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n"),
            0,
        ),
        (
            "two Content-Lengths",
            req(
                "GET /state HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            ),
            0,
        ),
        (
            "negative Content-Length",
            req("GET /state HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
            0,
        ),
        (
            "body on GET",
            req("GET /state HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"),
            0,
        ),
        (
            "chunked body on GET",
            req(
                "GET /state HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            ),
            0,
        ),
        (
            "100 MB body on GET",
            req("GET /state HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n"),
            8 << 20,
        ),
        (
            "body on HEAD",
            req("HEAD /state HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"),
            0,
        ),
        (
            "POST with a body",
            req("POST /state HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"),
            0,
        ),
        (
            "non-UTF-8 path",
            b"GET /\xff\xfe\xc3\x28 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            0,
        ),
        (
            "percent-encoded non-UTF-8 path",
            req("GET /%ff%fe%c3%28 HTTP/1.1\r\nHost: x\r\n\r\n"),
            0,
        ),
        (
            "NUL in the path",
            b"GET /st\0ate HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            0,
        ),
        (
            "path traversal",
            req("GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"),
            0,
        ),
        (
            "unknown path",
            req("GET /state/../admin HTTP/1.1\r\nHost: x\r\n\r\n"),
            0,
        ),
    ]
}

/// Latency figures of the health checks made between `from` and `to`; panics if one failed.
fn phase_report(
    name: &str,
    samples: &[Sample],
    from: Duration,
    to: Duration,
) -> (Duration, Duration) {
    let phase: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .collect();
    assert!(!phase.is_empty(), "{name}: no health checks were made");
    let failed: Vec<&&Sample> = phase.iter().filter(|s| s.status != Some(503)).collect();
    assert!(
        failed.is_empty(),
        "{name}: {} of {} health checks failed, first: {:?}",
        failed.len(),
        phase.len(),
        failed[0]
    );
    let lat: Vec<Duration> = phase.iter().map(|s| s.latency).collect();
    let (p50, p99, max) = (
        duration_quantile(&lat, 0.5),
        duration_quantile(&lat, 0.99),
        duration_quantile(&lat, 1.0),
    );
    println!(
        "  {name:<28} {:>6} checks   p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        phase.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    (p99, max)
}

/// Holds one idle or slow connection until the server closes it; returns how long after the
/// client's last complete action the close came (None: not closed within the bound).
async fn idle_client(addr: SocketAddr, kind: usize) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).await.expect("connect idle client");
    let mut since = Instant::now();
    let mut buf = [0u8; 1024];
    match kind {
        // Connects and says nothing.
        0 => {}
        // Sends half a request head and stops.
        1 => s
            .write_all(b"GET /state HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("partial head"),
        // Completes one keep-alive request, reads the answer, then idles.
        2 => {
            s.write_all(b"GET /state HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("request");
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("{\"state\":\"Down\"}") {
                let n = s.read(&mut buf).await.expect("read answer");
                assert!(n > 0, "keep-alive connection closed right after its answer");
                got.extend_from_slice(&buf[..n]);
            }
            since = Instant::now();
        }
        // Slowloris: a header byte every 500 ms, never finishing the head. The head timeout
        // counts from the start of the head, so trickling does not extend it.
        _ => {
            let (mut rd, mut wr) = s.into_split();
            let trickle = tokio::spawn(async move {
                let _ = wr.write_all(b"GET /state HTTP/1.1\r\nX-Slow: ").await;
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if wr.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            });
            let closed = tokio::time::timeout(IDLE_TIMEOUT + IDLE_SLACK, async {
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            trickle.abort();
            return closed.ok().map(|_| since.elapsed());
        }
    }
    tokio::time::timeout(IDLE_TIMEOUT + IDLE_SLACK, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|_| since.elapsed())
}

/// One connection of the storm, opened and dropped in one of five ways.
async fn storm_client(addr: SocketAddr, kind: usize) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        panic!("storm connect failed");
    };
    match kind {
        0 => {}
        1 => {
            let _ = s.set_zero_linger(); // dropped with a reset
        }
        2 => {
            let _ = s.write_all(b"GET /state HTTP/1.1\r\nHo").await;
        }
        3 => {
            let _ = s.write_all(b"GET /state HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let _ = s.set_zero_linger(); // gone before the answer is read
        }
        _ => {
            let _ = s
                .write_all(b"GET /state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_4xx_or_a_closed_connection_and_health_checks_keep_answering() {
    let host = primgr_lab::node_address(primgr_lab::lab_subnet(SUBNET).expect("subnet"), 1);
    let addr = SocketAddr::from((host, primgr_lab::DAEMON_PORT));
    let conninfo = format!("host={host} port=1 dbname=repmgr user=repmgr connect_timeout=1");
    let dir = scratch_dir("hostile-http");
    let mut daemon = Primgr::spawn(
        addr,
        &[
            "--node-name",
            "n1",
            "--conninfo",
            &conninfo,
            "--interval",
            "500ms",
            // Every hostile client here and the checker share 127.0.0.1: the per-client limit
            // is tests/flood.rs's subject, so this test raises it to its ceiling.
            "--max-connections-per-client",
            "3968",
        ],
        "info",
        &dir.join("primgr.log"),
    );
    daemon.wait_listening(Duration::from_secs(10)).await;
    // The first cycle has run once /state says Down (503): from then on it is a steady 503.
    wait::wait_for("/state answers 503", Duration::from_secs(10), || async {
        Ok(http::get(addr, "/state", Duration::from_secs(1))
            .await
            .is_ok_and(|r| r.status == 503))
    })
    .await
    .expect("the daemon's first cycle");

    let t0 = Instant::now();
    let checker = Sampler::start(
        t0,
        vec![addr],
        "/state",
        Duration::from_millis(10),
        Duration::from_secs(1),
    );
    // A quiet phase of 100 checks (about a second) for the baseline figures.
    checker
        .wait_samples(Duration::ZERO, 100, Duration::from_secs(10))
        .await;
    let base_rss = daemon.status_kb("VmRSS");
    let base_fds = daemon.open_fds();
    let base_overflows = procfs::listen_overflows().expect("/proc/net/netstat");
    let mut phases = vec![("quiet", Duration::ZERO, checker.now())];

    // 1. Hostile requests, each on its own connection, every kind at once, round after round.
    let start = checker.now();
    let mut results = Vec::new();
    for round in 0..HOSTILE_ROUNDS {
        let mut set = JoinSet::new();
        for (i, (what, head, extra)) in hostile_requests().into_iter().enumerate() {
            set.spawn(async move { (i, what, hostile(addr, head, extra).await) });
        }
        while let Some(r) = set.join_next().await {
            let (i, what, outcome) = r.expect("hostile client");
            results.push((round * 1000 + i, what, outcome));
        }
    }
    results.sort_by_key(|r| r.0);
    phases.push(("hostile requests", start, checker.now()));
    println!(
        "hostile requests ({} kinds x {HOSTILE_ROUNDS} rounds; first round shown, every round checked):",
        results.len() / HOSTILE_ROUNDS
    );
    let mut bad = Vec::new();
    for (i, what, outcome) in &results {
        if *i < 1000 {
            println!("  {what:<34} {outcome:?}");
        }
        let ok = match outcome {
            Outcome::Status(code) => (400..500).contains(code),
            Outcome::Closed => true,
            Outcome::Hung => false,
        };
        if !ok {
            bad.push(format!("{what}: {outcome:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "answered with something other than 4xx or a close: {bad:#?}"
    );
    // The limits that name a status give it (a reset may eat it, but not turn it into 2xx).
    for (_, what, outcome) in &results {
        if what.contains("body on GET") || *what == "body on HEAD" {
            assert!(
                matches!(outcome, Outcome::Status(413) | Outcome::Closed),
                "{what}: {outcome:?}"
            );
        }
        if what.contains("64 KiB") || what.contains("70 KiB") {
            assert!(
                matches!(
                    outcome,
                    Outcome::Status(431) | Outcome::Status(414) | Outcome::Closed
                ),
                "{what}: {outcome:?}"
            );
        }
    }

    // 2. 1,000 idle and slow clients held open at once; the server must close each of them
    // IDLE_TIMEOUT after its last complete action.
    let start = checker.now();
    let mut idle = JoinSet::new();
    for i in 0..IDLE_CONNECTIONS {
        idle.spawn(async move { (i % 4, idle_client(addr, i % 4).await) });
        // Paced: a burst of hundreds of connects at once can overflow the listen backlog,
        // and a silent client's handshake then completes only when the kernel retries it,
        // seconds later, which would blur the idle-timeout figures.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    // Until the daemon holds every client (bounded well within IDLE_TIMEOUT, after which it
    // starts closing them); the assertion below wants at least 90 % of them.
    let _ = wait::wait_for(
        "the daemon holds every idle client",
        IDLE_TIMEOUT / 2,
        || async { Ok(daemon.open_fds() >= base_fds + IDLE_CONNECTIONS) },
    )
    .await;
    let held_fds = daemon.open_fds();
    let held_rss = daemon.status_kb("VmRSS");
    println!(
        "{IDLE_CONNECTIONS} idle clients held: daemon has {held_fds} descriptors open (baseline {base_fds}), \
         VmRSS {held_rss} kB (baseline {base_rss} kB, +{} kB)",
        held_rss.saturating_sub(base_rss)
    );
    assert!(
        held_fds >= base_fds + IDLE_CONNECTIONS * 9 / 10,
        "the daemon should be holding the idle connections: {held_fds} descriptors"
    );
    let mut closes: Vec<Vec<Duration>> = vec![Vec::new(); 4];
    let mut never_closed = 0;
    while let Some(r) = idle.join_next().await {
        match r.expect("idle client") {
            (kind, Some(after)) => closes[kind].push(after),
            (_, None) => never_closed += 1,
        }
    }
    phases.push(("1000 idle/slow clients", start, checker.now()));
    for (kind, name) in ["silent", "half a head", "idle keep-alive", "slowloris"]
        .iter()
        .enumerate()
    {
        let c = &closes[kind];
        println!(
            "  {name:<16} {} closed by the server after {:.2}..{:.2} s",
            c.len(),
            duration_quantile(c, 0.0).as_secs_f64(),
            duration_quantile(c, 1.0).as_secs_f64()
        );
    }
    assert_eq!(
        never_closed,
        0,
        "{never_closed} idle clients were not closed within {:?}",
        IDLE_TIMEOUT + IDLE_SLACK
    );
    let all: Vec<Duration> = closes.concat();
    assert!(
        duration_quantile(&all, 0.0) >= IDLE_TIMEOUT - Duration::from_millis(500),
        "an idle client was closed before IDLE_TIMEOUT: {:?}",
        duration_quantile(&all, 0.0)
    );

    // 3. A storm: connections opened and dropped in five ways, by 50 clients at once.
    let start = checker.now();
    let storm_started = Instant::now();
    let mut storm = JoinSet::new();
    let storm_start = tokio::time::Instant::now();
    for w in 0..STORM_WORKERS {
        storm.spawn(async move {
            let mut i = w;
            while i < STORM_CONNECTIONS {
                // Connection i is opened at i / STORM_RATE seconds, not earlier.
                let due = Duration::from_secs_f64(i as f64 / STORM_RATE as f64);
                tokio::time::sleep_until(storm_start + due).await;
                storm_client(addr, i % 5).await;
                i += STORM_WORKERS;
            }
        });
    }
    while let Some(r) = storm.join_next().await {
        r.expect("storm client");
    }
    let storm_time = storm_started.elapsed();
    phases.push(("open-and-drop storm", start, checker.now()));
    println!(
        "storm: {STORM_CONNECTIONS} connections opened and dropped in {storm_time:.2?} ({:.0}/s)",
        STORM_CONNECTIONS as f64 / storm_time.as_secs_f64()
    );

    // Half-open leftovers of the storm (half a head, no answer read) end at the head timeout.
    let start = checker.now();
    let _ = wait::wait_for(
        "the storm's descriptors are closed",
        IDLE_TIMEOUT + IDLE_SLACK,
        || async { Ok(daemon.open_fds() <= base_fds + 5) },
    )
    .await;
    let fds_after = daemon.open_fds();
    // An "after" phase of 100 checks (asserted on below with the others).
    checker
        .wait_samples(start, 100, Duration::from_secs(10))
        .await;
    phases.push(("after", start, checker.now()));
    let samples = checker.stop();
    println!(
        "listen-queue overflows on this machine during the test: {}",
        procfs::listen_overflows().expect("/proc/net/netstat") - base_overflows
    );

    println!("health checks (GET /state every 10 ms, new connection each, from another thread):");
    let mut worst_p99 = Duration::ZERO;
    for (name, from, to) in &phases {
        let (p99, _) = phase_report(name, &samples, *from, *to);
        worst_p99 = worst_p99.max(p99);
    }
    println!(
        "worst p99 of a phase: {:.2} ms",
        worst_p99.as_secs_f64() * 1e3
    );
    let all_lat: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    let overall_p99 = duration_quantile(&all_lat, 0.99);
    // The kernel's counters are approximate (per-CPU caches): the peak is at least every
    // VmRSS read.
    let hwm = daemon.status_kb("VmHWM").max(held_rss);
    let rss = daemon.status_kb("VmRSS");
    println!(
        "overall: {} checks, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        overall_p99.as_secs_f64() * 1e3,
        duration_quantile(&all_lat, 1.0).as_secs_f64() * 1e3
    );
    println!(
        "daemon memory: VmRSS baseline {base_rss} kB, with {IDLE_CONNECTIONS} idle clients {held_rss} kB, \
         at the end {rss} kB; peak (VmHWM) {hwm} kB; descriptors {base_fds} -> {held_fds} -> {fds_after}"
    );

    assert!(daemon.running(), "the daemon died:\n{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    assert!(
        fds_after <= base_fds + 5,
        "descriptors leaked: {base_fds} before, {fds_after} after"
    );
    // Bounded memory: 1,000 held connections and the storm cost the daemon less than 32 MiB.
    assert!(
        hwm < base_rss + 32 * 1024,
        "peak memory {hwm} kB, baseline {base_rss} kB"
    );
    // The bound printed is the bound asserted: p99 under 100 ms over the whole test (and every
    // check answered within its 1 s timeout, above). 100 ms is the honest bound for this test:
    // it runs the debug build on a 2-core machine shared with other work, beside a load
    // generator on the same cores, where a daemon that stalls behind hostile clients takes
    // hundreds of milliseconds or the full second, while a healthy one stays far under it. A
    // 10 ms bound would measure the machine's other tenants rather than the daemon; the p99
    // figures printed above show how far under the bound a run stays.
    let p99_bound = Duration::from_millis(100);
    println!(
        "p99 < {} ms overall (asserted): {}",
        p99_bound.as_millis(),
        if overall_p99 < p99_bound {
            "met"
        } else {
            "NOT met"
        }
    );
    assert!(
        overall_p99 < p99_bound,
        "health-check p99 {overall_p99:?} (worst phase {worst_p99:?})"
    );
}
