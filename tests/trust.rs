//! The trust model on a real cluster (issue 17): peers that are not the cluster change nothing.
//! Every lab is the standard one (node1..node3 in dc1, a 3-node site; node4 in dc2), every
//! daemon a process of this build with the lab timings and, when the build takes one, the
//! cluster's peer key (`--peer-key-file`, a line of `primgr keygen`, mode 0600).
//!
//! 1. A flood of unauthenticated `POST /release` and `GET /vote?candidate=...` from a
//!    non-member loopback address (also with a forged `X-Primgr-Auth` naming a member, and from
//!    a member's address) while the primary's daemon is restarted twice: it answers 200 again
//!    as fast as without the flood, and through haproxy no write is refused.
//! 2. node3's daemon replaced by an impostor on node3's address that grants every candidate
//!    (10-minute exclusive window) and answers every release `released: true`, unsigned or
//!    signed with a key that is not the cluster's; a stale node1 (restarted read-write after
//!    node2 was promoted) beside node2: never two 200s, and the impostor's votes never counted
//!    (`/status`: `peer_auth_failures` for node3, node3 in no held vote that counts).
//! 3. A daemon of another cluster (its own `initdb`, the same node names, the same key) at
//!    node3's address: its vote never counts (`/status`), never two 200s, and the stale node1,
//!    for which that daemon votes, never answers 200.
//!
//! Against a build without peer keys (before issue 17's fix) the same scenarios run without a
//! key and fail: the numbers they print are the "before" evidence.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::clients::{Attempt, address_book, sample_every, shipped};
use common::sampler::{Sample, Sampler, two_hundreds};
use common::{Daemon, PRIMGR, settle_bound, timing_flags};
use primgr::auth::{AnswerClaims, Exchange, Keys, Nonce, RequestClaims};
use primgr_lab::haproxy::{Haproxy, WRITE};
use primgr_lab::{Lab, LabSpec, NodeSpec, PG_PORT, http, node_address, subnet_of, wait};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Health checks of the samplers: every 20 ms per node.
const PERIOD: Duration = Duration::from_millis(20);
/// A write connection through haproxy every 20 ms.
const WRITE_EVERY: Duration = Duration::from_millis(20);
/// Concurrent loops of the flood.
const FLOOD_LOOPS: usize = 4;

// ---------------------------------------------------------------------------------------------
// Keys and daemons.

/// Whether this build's daemon takes a peer key (`--peer-key-file`).
fn keys_supported() -> bool {
    std::process::Command::new(PRIMGR)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--peer-key-file"))
        .unwrap_or(false)
}

/// A fresh key line: `primgr keygen` when the build has it, else the library's generator
/// (the same format).
fn key_line() -> String {
    let out = std::process::Command::new(PRIMGR).arg("keygen").output();
    if let Ok(o) = out
        && o.status.success()
    {
        let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if line.starts_with(primgr::auth::KEY_PREFIX) {
            return line;
        }
    }
    primgr::auth::generate_key_line().expect("a key from the OS's random source")
}

/// The cluster's key file, when the build takes keys: the lab's (`primgr_lab::peer_key_file`,
/// one `primgr keygen`-format line, mode 0600), which [`Lab::daemon`] passes to every lab
/// daemon; prints the mode.
fn cluster_key() -> Option<PathBuf> {
    if !keys_supported() {
        println!(
            "MODE: this build has no --peer-key-file: daemons run without a key (the code before \
             issue 17's fix)"
        );
        return None;
    }
    let path = primgr_lab::peer_key_file();
    println!("MODE: daemons run with --peer-key-file {}", path.display());
    Some(path)
}

fn key_flags(key: Option<&Path>) -> Vec<String> {
    key.map(|k| vec!["--peer-key-file".to_string(), k.display().to_string()])
        .unwrap_or_default()
}

/// The daemon of `node` as a process of this build with the lab timings (and the lab's key,
/// which [`Lab::daemon`] passes).
fn spawn(lab: &Lab, node: &str) -> Daemon {
    lab.daemon(node, PRIMGR)
        .and_then(|d| d.args(timing_flags()).spawn())
        .unwrap_or_else(|e| panic!("spawn the daemon of {node}: {e:#}"))
}

/// `/state` codes of `nodes` (0: no answer).
async fn codes(lab: &Lab, nodes: &[&str]) -> Vec<u16> {
    let mut out = Vec::new();
    for n in nodes {
        let r = http::get(lab.daemon_addr(n), "/state", Duration::from_secs(1)).await;
        out.push(r.map(|r| r.status).unwrap_or(0));
    }
    out
}

/// Waits until `nodes` answer `want`; panics with the last codes after `within`.
async fn wait_codes(lab: &Lab, nodes: &[&str], want: &[u16], within: Duration) -> Duration {
    let last = Mutex::new(Vec::new());
    let r = wait::wait_for_every(
        &format!("{nodes:?} answering {want:?}"),
        within,
        Duration::from_millis(20),
        || async {
            let c = codes(lab, nodes).await;
            let ok = c == want;
            *last.lock().unwrap_or_else(|e| e.into_inner()) = c;
            Ok(ok)
        },
    )
    .await;
    r.unwrap_or_else(|e| panic!("{e:#}; last {:?}", last.lock().map(|l| l.clone())))
}

/// Starts the daemons of `nodes` and waits until each answers.
async fn start_fleet(lab: &Lab, nodes: &[&str]) -> BTreeMap<String, Daemon> {
    let mut daemons = BTreeMap::new();
    for n in nodes {
        daemons.insert(n.to_string(), spawn(lab, n));
    }
    for d in daemons.values_mut() {
        d.wait_listening(Duration::from_secs(10)).await;
    }
    daemons
}

/// The `/status` of `addr`'s daemon: whether node3's vote counts among its held votes, and its
/// `peer_auth_failures` for node3 (None when the field is absent).
fn node3_in_status(status: &Value) -> (bool, Option<u64>) {
    let counted = status["held_votes"].as_array().is_some_and(|v| {
        v.iter()
            .any(|h| h["voter"] == "node3" && h["counts"] == true)
    });
    (counted, status["peer_auth_failures"]["node3"].as_u64())
}

/// 200 samples of target 1 that overlap in time a 200 sample of target 0 (two 200s at once).
fn overlapping(samples: &[Sample]) -> usize {
    let a = two_hundreds(samples, 0);
    let b = two_hundreds(samples, 1);
    b.iter()
        .filter(|n| a.iter().any(|o| n.0 <= o.1 && o.0 <= n.1))
        .count()
}

/// Watches `/status` of `nodes` every 200 ms until `done` (checked after each round) or
/// `within`: how many checks, how many times node3's vote counted (with the first such body),
/// and the largest `peer_auth_failures` for node3 seen per node.
async fn watch_status(
    lab: &Lab,
    nodes: &[&str],
    within: Duration,
    done: impl Fn() -> bool,
) -> StatusWatch {
    let mut w = StatusWatch::default();
    let t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        for n in nodes {
            let Ok(r) = http::get(lab.daemon_addr(n), "/status", Duration::from_secs(1)).await
            else {
                continue;
            };
            let Ok(status) = serde_json::from_str::<Value>(&r.body) else {
                continue;
            };
            w.checks += 1;
            let (counted, failures) = node3_in_status(&status);
            if counted {
                w.counted += 1;
                w.first_counted
                    .get_or_insert_with(|| format!("{n}: {}", status["held_votes"]));
            }
            if let Some(f) = failures {
                let e = w.failures.entry(n.to_string()).or_insert(0);
                *e = (*e).max(f);
            }
            w.last.insert(n.to_string(), status);
        }
        if done() || t.elapsed() >= within {
            return w;
        }
    }
}

#[derive(Default)]
struct StatusWatch {
    checks: usize,
    counted: usize,
    first_counted: Option<String>,
    failures: BTreeMap<String, u64>,
    last: BTreeMap<String, Value>,
}

impl StatusWatch {
    fn print(&self, what: &str) {
        println!(
            "{what}: {} /status checks; node3's vote counted in {} (first: {}); \
             peer_auth_failures for node3: {:?}",
            self.checks,
            self.counted,
            self.first_counted.as_deref().unwrap_or("none"),
            self.failures
        );
        for (n, s) in &self.last {
            println!(
                "{what}: last /status of {n}: peer_auth {}, votes {}/{}, held_votes {}, voters {}",
                s["peer_auth"], s["votes"], s["votes_needed"], s["held_votes"], s["voters"]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test 1: the flood.

/// What the flood sent and got.
#[derive(Default, Debug)]
struct FloodTally {
    sent: u64,
    /// By kind of request and status ("release 401", "vote err", ...).
    answers: BTreeMap<String, u64>,
}

/// A flood of unauthenticated peer requests on its own thread and runtime (so it does not delay
/// the test's measurements more than the machine does): [`FLOOD_LOOPS`] loops, each sending,
/// by turns, `POST /release` and `GET /vote?candidate=C` to node1..node3's daemons, from the
/// attacker's address plain, from it with a forged `X-Primgr-Auth` naming node2 (signed with a
/// key that is not the cluster's), and from node2's own address with that header.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<FloodTally>,
}

impl Flood {
    fn start(lab: &Lab, attacker: IpAddr) -> Flood {
        let targets: Vec<(String, SocketAddr)> = ["node1", "node2", "node3"]
            .iter()
            .map(|n| (n.to_string(), lab.daemon_addr(n)))
            .collect();
        let member: IpAddr = lab.addr("node2").into();
        let wrong = Keys::parse(&key_line()).expect("a key line");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::Builder::new()
                .name("flood".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("flood runtime");
                    rt.block_on(flood(targets, attacker, member, wrong, stop, sent))
                })
                .expect("flood thread")
        };
        Flood { stop, sent, thread }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn stop(self) -> FloodTally {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("flood thread")
    }
}

async fn flood(
    targets: Vec<(String, SocketAddr)>,
    attacker: IpAddr,
    member: IpAddr,
    wrong: Keys,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> FloodTally {
    let targets = Arc::new(targets);
    let wrong = Arc::new(wrong);
    let mut loops = tokio::task::JoinSet::new();
    for l in 0..FLOOD_LOOPS {
        let (targets, wrong, stop, sent) =
            (targets.clone(), wrong.clone(), stop.clone(), sent.clone());
        loops.spawn(async move {
            let mut tally = FloodTally::default();
            let mut k = l;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let (to, addr) = &targets[k % targets.len()];
                let (kind, target) = match (k / 3) % 4 {
                    0 | 2 => ("release", "/release".to_string()),
                    1 => ("vote", "/vote?candidate=node2".to_string()),
                    _ => ("vote", "/vote?candidate=node4".to_string()),
                };
                let method = if kind == "release" { "POST" } else { "GET" };
                let (source, forged) = match (k / 12) % 3 {
                    0 => (attacker, false),
                    1 => (attacker, true),
                    _ => (member, true),
                };
                let mut req = format!(
                    "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: primgr/0\r\n\
                     Content-Length: 0\r\nConnection: close\r\n"
                );
                if forged {
                    let claims = RequestClaims {
                        from: "node2".into(),
                        to: to.clone(),
                        cluster: None,
                        nonce: Nonce::random().expect("nonce"),
                        ticket: None,
                    };
                    let exchange = Exchange {
                        method,
                        target: &target,
                        body: b"",
                    };
                    let header = wrong.sign_request(&claims, &exchange);
                    req.push_str(&format!("{}: {header}\r\n", primgr::auth::HEADER));
                }
                req.push_str("\r\n");
                let r = http::exchange(Some(source), *addr, req.as_bytes(), Duration::from_secs(1))
                    .await;
                let status = r
                    .ok()
                    .and_then(|raw| http::RawResponse::parse(&raw).ok())
                    .map_or("err".to_string(), |r| r.status.to_string());
                let who = match (source == attacker, forged) {
                    (true, false) => "attacker",
                    (true, true) => "attacker as node2",
                    _ => "node2's address as node2",
                };
                *tally
                    .answers
                    .entry(format!("{kind} from {who}: {status}"))
                    .or_insert(0) += 1;
                tally.sent += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            tally
        });
    }
    let mut all = FloodTally::default();
    while let Some(t) = loops.join_next().await {
        let t = t.expect("flood loop");
        all.sent += t.sent;
        for (k, v) in t.answers {
            *all.answers.entry(k).or_insert(0) += v;
        }
    }
    all
}

/// Restarts node1's daemon twice; returns how long after each start it answered 200 again.
/// Before each restart: node1 is 200 with its whole site's votes and haproxy's write pool is
/// node1.
async fn restart_primary_twice(
    lab: &Lab,
    daemons: &mut BTreeMap<String, Daemon>,
    hp: &Haproxy,
) -> Vec<Duration> {
    let mut took = Vec::new();
    for _ in 0..2 {
        // A probe that gets no answer within its second (a loaded machine) is "not yet".
        wait::wait_for_every(
            "node1 200 with its whole site's votes",
            settle_bound(),
            Duration::from_millis(50),
            || async {
                let r =
                    http::get(lab.daemon_addr("node1"), "/status", Duration::from_secs(1)).await;
                Ok(r.ok()
                    .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
                    .is_some_and(|s| s["votes"] == 3 && s["code"] == 200))
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        hp.wait_up(WRITE, &["node1"], settle_bound())
            .await
            .expect("write pool: node1");
        let d = daemons.get_mut("node1").expect("node1's daemon");
        d.stop().await;
        *d = spawn(lab, "node1");
        let started = Instant::now();
        wait_codes(lab, &["node1"], &[200], Duration::from_secs(30)).await;
        took.push(started.elapsed());
    }
    took
}

/// Write connections through haproxy while `during` runs: (attempted, refused).
async fn writes_during<F: std::future::Future>(
    lab: &Lab,
    write: SocketAddr,
    during: F,
) -> (F::Output, usize, usize, Vec<String>) {
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let sampling = {
        let done = done.clone();
        sample_every(
            WRITE_EVERY,
            write,
            address_book(lab),
            t0,
            Duration::ZERO,
            Duration::from_secs(300),
            move |_| done.load(Ordering::SeqCst),
        )
    };
    let (attempts, out) = tokio::join!(sampling, async {
        let out = during.await;
        done.store(true, Ordering::SeqCst);
        out
    });
    let refused: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.outcome.as_ref().map_or(true, |l| l.in_recovery))
        .collect();
    let why = refused
        .iter()
        .take(3)
        .map(|a| format!("{:?} at {:?}", a.outcome, a.at))
        .collect();
    (out, attempts.len(), refused.len(), why)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_releases_and_votes_costs_no_write() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "trust::a_flood_of_unauthenticated_releases_and_votes_costs_no_write",
    )))
    .await
    .expect("lab builds");
    let key = cluster_key();
    let key = key.as_deref();
    let all = ["node1", "node2", "node3", "node4"];
    let mut daemons = start_fleet(&lab, &all).await;
    wait_codes(&lab, &all, &[200, 202, 202, 202], settle_bound() * 2).await;
    let hp = Haproxy::start(&lab, &shipped()).await.expect("haproxy");
    let write = hp.listener(WRITE).expect("write listener");
    hp.wait_up(WRITE, &["node1"], settle_bound())
        .await
        .expect("write pool: node1");

    // Without the flood.
    let (quiet, q_attempted, q_refused, q_why) =
        writes_during(&lab, write, restart_primary_twice(&lab, &mut daemons, &hp)).await;
    println!(
        "without the flood: node1 200 again {quiet:?} after each restart of its daemon; \
         {q_attempted} writes through haproxy, {q_refused} refused {q_why:?}"
    );

    // With the flood, from an address of no member (and forging one).
    let attacker: IpAddr = node_address(lab.subnet(), 190).into();
    let flood = Flood::start(&lab, attacker);
    wait::wait_for_every(
        "the flood under way",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async { Ok(flood.sent() >= 200) },
    )
    .await
    .expect("the flood sends");
    let (flooded, f_attempted, f_refused, f_why) =
        writes_during(&lab, write, restart_primary_twice(&lab, &mut daemons, &hp)).await;
    let tally = flood.stop();
    println!(
        "with the flood from {attacker} ({} requests, {FLOOD_LOOPS} loops): node1 200 again \
         {flooded:?} after each restart of its daemon; {f_attempted} writes through haproxy, \
         {f_refused} refused {f_why:?}",
        tally.sent
    );
    for (k, v) in &tally.answers {
        println!("  flood: {k}: {v}");
    }
    let status = http::get(lab.daemon_addr("node1"), "/status", Duration::from_secs(2))
        .await
        .ok()
        .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
        .unwrap_or_default();
    println!(
        "node1 /status: peer_auth {}, peer_requests_refused {}",
        status["peer_auth"], status["peer_requests_refused"]
    );

    let slowest_quiet = quiet.iter().max().copied().unwrap_or_default();
    let bound = slowest_quiet + Duration::from_millis(500);
    assert_eq!(q_refused, 0, "writes refused without the flood: {q_why:?}");
    assert_eq!(f_refused, 0, "writes refused under the flood: {f_why:?}");
    for t in &flooded {
        assert!(
            *t <= bound,
            "under the flood node1 answered 200 again only {t:?} after a restart (without it: \
             {quiet:?}; bound {bound:?})"
        );
    }
    let accepted: u64 = tally
        .answers
        .iter()
        .filter(|(k, _)| k.ends_with(": 200"))
        .map(|(_, v)| v)
        .sum();
    if key.is_some() {
        assert_eq!(
            accepted, 0,
            "unauthenticated peer requests answered 200: {:?}",
            tally.answers
        );
    }
    drop(hp);
    drop(daemons);
    lab.teardown().await.expect("teardown");
}

// ---------------------------------------------------------------------------------------------
// Test 2: the impostor.

/// What an impostor served.
#[derive(Default)]
struct Served {
    votes: AtomicU64,
    releases: AtomicU64,
    signed: AtomicU64,
    other: AtomicU64,
}

/// An impostor daemon on `addr` (a voter's address and port): every `/vote?candidate=C` a
/// grant for C with a 10-minute exclusive window, every `POST /release` `released: true`
/// (`last_200_ms` 10000), `/state` a Standby; by turns unsigned and signed with `wrong`
/// (a well-formed `X-Primgr-Auth` bound to the request's nonce, with a key that is not the
/// cluster's). Keep-alive, as peers talk.
async fn impostor(
    addr: SocketAddr,
    name: &'static str,
    wrong: Keys,
) -> (Arc<Served>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("impostor binds {addr}: {e}"));
    let served = Arc::new(Served::default());
    let wrong = Arc::new(wrong);
    let task = {
        let served = served.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve_impostor(conn, name, wrong.clone(), served.clone()));
            }
        })
    };
    (served, task)
}

async fn serve_impostor(mut conn: TcpStream, name: &str, wrong: Arc<Keys>, served: Arc<Served>) {
    let mut buf = Vec::new();
    loop {
        let Ok(Some(end)) = http::read_head(&mut conn, &mut buf, 16 * 1024).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split_whitespace();
        let method = first.next().unwrap_or_default().to_string();
        let target = first.next().unwrap_or_default().to_string();
        let mut length = 0usize;
        let mut auth = None;
        let mut close = false;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => length = v.parse().unwrap_or(0),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    k if k == primgr::auth::HEADER => auth = Some(v.to_string()),
                    _ => {}
                }
            }
        }
        while buf.len() < end + length {
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body_in = buf[end..end + length].to_vec();
        buf.drain(..end + length);
        let path = target.split('?').next().unwrap_or_default();
        let (status, body) = match path {
            "/vote" => {
                served.votes.fetch_add(1, Ordering::Relaxed);
                let candidate = target
                    .split_once("candidate=")
                    .map(|(_, c)| c.split('&').next().unwrap_or_default().to_string())
                    .unwrap_or_default();
                (
                    200,
                    serde_json::json!({
                        "epoch": "AAAAAAAAAAAAAAAAAAAAAA.0", "exclusive_ms": 600_000, "lease_ms": 600_000,
                        "node": name, "vote": candidate
                    }),
                )
            }
            "/release" => {
                served.releases.fetch_add(1, Ordering::Relaxed);
                (
                    200,
                    serde_json::json!({"last_200_ms": 10_000, "node": name, "released": true}),
                )
            }
            "/state" | "/" => (202, serde_json::json!({"state": "Standby"})),
            _ => {
                served.other.fetch_add(1, Ordering::Relaxed);
                (404, serde_json::json!({"error": "not found"}))
            }
        };
        let body = body.to_string().into_bytes();
        let n = served.votes.load(Ordering::Relaxed) + served.releases.load(Ordering::Relaxed);
        let mut headers = "content-type: application/json\r\n".to_string();
        if n % 2 == 0
            && let Some(claims) = auth.as_deref().and_then(|h| RequestClaims::parse(h).ok())
        {
            let answer = AnswerClaims {
                from: name.to_string(),
                to: claims.from.clone(),
                cluster: claims.cluster,
                ticket: None,
            };
            let exchange = Exchange {
                method: &method,
                target: &target,
                body: &body_in,
            };
            let header = wrong.sign_answer(&answer, &claims.nonce, &exchange, status, &body);
            headers.push_str(&format!("{}: {header}\r\n", primgr::auth::HEADER));
            served.signed.fetch_add(1, Ordering::Relaxed);
        }
        let reason = match status {
            200 => "200 OK",
            202 => "202 Accepted",
            _ => "404 Not Found",
        };
        if conn
            .write_all(&http::response(reason, &headers, &body))
            .await
            .is_err()
            || close
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_at_a_voters_address_is_never_counted() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "trust::an_impostor_at_a_voters_address_is_never_counted",
    )))
    .await
    .expect("lab builds");
    cluster_key();
    let all = ["node1", "node2", "node3", "node4"];
    let mut daemons = start_fleet(&lab, &all).await;
    wait_codes(&lab, &all, &[200, 202, 202, 202], settle_bound() * 2).await;

    // node3's daemon stops; the impostor takes its address and port.
    if let Some(mut d) = daemons.remove("node3") {
        d.stop().await;
    }
    let wrong = Keys::parse(&key_line()).expect("a key line");
    let (served, imp) = impostor(lab.daemon_addr("node3"), "node3", wrong).await;

    let Split {
        samples,
        promoted,
        stale,
        watch,
    } = split_brain(&lab).await;
    imp.abort();

    let both = overlapping(&samples);
    let node2_first = two_hundreds(&samples, 1).first().map(|s| s.0);
    let node1_after = node2_first.map_or(0, |f| {
        two_hundreds(&samples, 0)
            .iter()
            .filter(|s| s.0 >= f)
            .count()
    });
    let node1_stale = two_hundreds(&samples, 0)
        .iter()
        .filter(|s| s.0 >= stale)
        .count();
    println!(
        "impostor: served {} votes, {} releases ({} answers signed with a wrong key), {} other",
        served.votes.load(Ordering::Relaxed),
        served.releases.load(Ordering::Relaxed),
        served.signed.load(Ordering::Relaxed),
        served.other.load(Ordering::Relaxed)
    );
    println!(
        "split brain beside the impostor: {} samples of /state (node1, node2 every {PERIOD:?}, \
         node2 promoted at {promoted:?}, node1 stale from {stale:?}); samples with two 200s: \
         {both}; node1 200 after node2's first 200 ({node2_first:?}): {node1_after}; node1 200 \
         while stale: {node1_stale}",
        samples.len()
    );
    watch.print("impostor");
    let metric = unauthenticated_answers_of_node3(&lab, "node1").await;
    println!(
        "impostor: node1's /metrics primgr_peer_answers_unauthenticated_total{{peer=\"node3\"}}: \
         {metric:?}"
    );
    assert_eq!(both, 0, "two 200s at once");
    assert_eq!(
        watch.counted, 0,
        "the impostor's vote counted: {:?}",
        watch.first_counted
    );
    for n in ["node1", "node2"] {
        let f = watch.failures.get(n).copied().unwrap_or(0);
        assert!(
            f > 0,
            "{n}'s /status shows no peer_auth_failures for node3 ({:?})",
            watch.failures
        );
    }
    assert!(
        metric.is_some_and(|m| m > 0.0),
        "node1's /metrics counts no unauthenticated answer of node3: {metric:?}"
    );
    drop(daemons);
    lab.teardown().await.expect("teardown");
}

/// What [`split_brain`] saw.
struct Split {
    /// `/state` of node1 (target 0) and node2 (target 1) every [`PERIOD`].
    samples: Vec<Sample>,
    /// When node2 had been promoted, and when node1 was back read-write (sampler time).
    promoted: Duration,
    stale: Duration,
    /// `/status` of node1 and node2 over the same time.
    watch: StatusWatch,
}

/// node2 promoted (node3's and node4's databases follow it) and node1 back read-write without
/// a rejoin (its metadata still names itself), sampled from before the failover until node1
/// has been back for `settle_bound` (a vote settles, a handoff passes, haproxy would follow)
/// and 3 s more.
async fn split_brain(lab: &Lab) -> Split {
    let sampler = Sampler::start(
        Instant::now(),
        vec![lab.daemon_addr("node1"), lab.daemon_addr("node2")],
        "/state",
        PERIOD,
        Duration::from_secs(1),
    );
    lab.failover("node1", "node2").await.expect("failover");
    let promoted = sampler.now();
    lab.start("node1").await.expect("start node1");
    assert_eq!(
        lab.psql("node1", "SELECT pg_is_in_recovery()")
            .await
            .expect("psql node1"),
        "f",
        "node1 is read-write (split brain)"
    );
    let stale = sampler.now();
    let until = stale + settle_bound() + Duration::from_secs(3);
    let watch = watch_status(
        lab,
        &["node1", "node2"],
        until + Duration::from_secs(30),
        || sampler.now() >= until,
    )
    .await;
    Split {
        samples: sampler.stop(),
        promoted,
        stale,
        watch,
    }
}

/// `primgr_peer_answers_unauthenticated_total{peer="node3"}` in `/metrics` of `node`.
async fn unauthenticated_answers_of_node3(lab: &Lab, node: &str) -> Option<f64> {
    let r = http::get(lab.daemon_addr(node), "/metrics", Duration::from_secs(1))
        .await
        .ok()?;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("primgr_peer_answers_unauthenticated_total{peer=\"node3\"} "))
        .and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Test 3: another cluster.

/// The other cluster: its own `initdb`, node1..node3 in dc1, the names of the first.
async fn other_cluster() -> Lab {
    let nodes = ["node1", "node2", "node3"]
        .into_iter()
        .map(|n| NodeSpec::new(n, "dc1"))
        .collect();
    Lab::build(LabSpec::new(subnet_of("trust::other_cluster"), nodes))
        .await
        .expect("the other cluster builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_of_another_cluster_at_a_voters_address_is_never_counted() {
    let (lab, other) = tokio::join!(
        async {
            Lab::build(LabSpec::standard(subnet_of(
                "trust::a_daemon_of_another_cluster_at_a_voters_address_is_never_counted",
            )))
            .await
            .expect("lab builds")
        },
        other_cluster()
    );
    let ids = (
        lab.psql("node1", "SELECT system_identifier FROM pg_control_system()")
            .await
            .expect("system identifier"),
        other
            .psql("node1", "SELECT system_identifier FROM pg_control_system()")
            .await
            .expect("system identifier"),
    );
    println!(
        "system identifiers: this cluster {}, the other {}",
        ids.0, ids.1
    );
    assert_ne!(ids.0, ids.1, "two initdb, two identities");
    let key = cluster_key();
    let key = key.as_deref();
    let mut daemons = start_fleet(&lab, &["node1", "node2", "node4"]).await;
    // The other cluster's node3 daemon (its own database, the same key) at this node3's
    // address and port.
    let mut foreign = Daemon::process(PRIMGR)
        .named("the other cluster's daemon of node3")
        .args([
            "--node-name".to_string(),
            "node3".to_string(),
            "--conninfo".to_string(),
            format!(
                "host={} port={PG_PORT} dbname=repmgr user=repmgr application_name=primgr",
                other.addr("node3")
            ),
            "--source-address".to_string(),
            lab.addr("node3").to_string(),
        ])
        .args(timing_flags())
        .args(key_flags(key))
        .listen(lab.daemon_addr("node3"))
        .log(other.daemon_log("node3").expect("log path"))
        .pid_file(other.dir().join("daemon-node3.pid"))
        .dir(other.dir())
        .spawn()
        .expect("the foreign daemon starts");
    foreign.wait_listening(Duration::from_secs(10)).await;
    let started = Instant::now();
    wait_codes(
        &lab,
        &["node1", "node2", "node3"],
        &[200, 202, 202],
        settle_bound() * 2,
    )
    .await;

    // Phase 1: normal operation, watched until the foreign daemon has been up for a vote
    // lease and 4 cycles (it grants from then on): node3's vote never counts for node1.
    let lease = primgr::Config::for_node("any")
        .expect("defaults")
        .leases
        .vote_lease;
    let until = lease + common::INTERVAL * 4 + Duration::from_secs(2);
    let normal = watch_status(&lab, &["node1"], until + Duration::from_secs(30), || {
        started.elapsed() >= until
    })
    .await;
    normal.print("another cluster, normal");

    // Phase 2: node2 promoted, node1 stale; the foreign daemon's metadata names node1.
    let Split {
        samples,
        stale,
        watch: split,
        ..
    } = split_brain(&lab).await;
    let both = overlapping(&samples);
    let node1_stale = two_hundreds(&samples, 0)
        .iter()
        .filter(|s| s.0 >= stale)
        .count();
    println!(
        "another cluster, split brain: {} samples of /state (node1, node2 every {PERIOD:?}); \
         samples with two 200s: {both}; node1 200 while stale (the foreign daemon votes for \
         it): {node1_stale}",
        samples.len()
    );
    split.print("another cluster, split brain");
    assert_eq!(
        normal.counted + split.counted,
        0,
        "the other cluster's vote counted: {:?} {:?}",
        normal.first_counted,
        split.first_counted
    );
    assert_eq!(both, 0, "two 200s at once");
    assert_eq!(node1_stale, 0, "the stale node1 answered 200");
    foreign.stop().await;
    drop(daemons.remove("node1"));
    drop(daemons);
    other
        .teardown()
        .await
        .expect("teardown of the other cluster");
    lab.teardown().await.expect("teardown");
}
