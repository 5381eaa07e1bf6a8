//! Real PostgreSQL clients through haproxy: where a new session lands (as the server itself
//! says), a session every few milliseconds while something happens, and haproxy's own view of
//! its servers. Shared by the haproxy, lease and read tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use primgr_lab::Lab;
use primgr_lab::haproxy::{self, Haproxy, STATS};
use tokio::task::JoinSet;
use tokio_postgres::NoTls;

/// The shipped configuration, read from the repository at run time.
pub const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/haproxy.cfg");

/// A new client connection is opened this often while sampling (unless told otherwise).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// One client attempt: connect (libpq-style connect_timeout 2 s) and one query.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn shipped() -> String {
    std::fs::read_to_string(SHIPPED).unwrap_or_else(|e| panic!("reading {SHIPPED}: {e}"))
}

/// How long haproxy may take to follow a change of the daemons' answers: inter + fastinter and
/// two check timeouts as shipped, plus slack for a loaded 2-core machine.
pub fn haproxy_settle() -> Duration {
    Duration::from_millis(1000 + 500 + 2 * 800) + Duration::from_secs(3)
}

/// Where a session landed, as the server itself says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Landing {
    /// The lab node whose address is `inet_server_addr()`.
    pub node: String,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
}

/// lab address → node name.
pub fn address_book(lab: &Lab) -> Arc<BTreeMap<String, String>> {
    Arc::new(
        lab.node_names()
            .into_iter()
            .map(|n| (lab.addr(&n).to_string(), n))
            .collect(),
    )
}

fn conninfo(addr: SocketAddr) -> String {
    format!(
        "host={} port={} user=repmgr dbname=repmgr connect_timeout=2 application_name=haproxy-test",
        addr.ip(),
        addr.port()
    )
}

/// Opens a session through `addr` and asks the server who it is. The session stays open as
/// long as the returned client lives.
pub async fn connect(
    addr: SocketAddr,
    book: &BTreeMap<String, String>,
) -> Result<(tokio_postgres::Client, Landing), String> {
    let attempt = async {
        let (client, conn) = tokio_postgres::connect(&conninfo(addr), NoTls)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), host(inet_server_addr()), \
                 current_setting('cluster_name')",
                &[],
            )
            .await
            .map_err(|e| format!("query: {e}"))?;
        let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
        let server: String = row.try_get(1).map_err(|e| e.to_string())?;
        let own_name: String = row.try_get(2).map_err(|e| e.to_string())?;
        let node = book
            .get(&server)
            .ok_or_else(|| format!("landed on {server}, not a lab node"))?;
        assert_eq!(
            &own_name, node,
            "the server at {server} calls itself {own_name}"
        );
        Ok((
            client,
            Landing {
                node: node.clone(),
                in_recovery,
            },
        ))
    };
    tokio::time::timeout(CLIENT_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no answer within {CLIENT_TIMEOUT:?}"))?
}

/// One new session through `addr`, closed again.
pub async fn land(addr: SocketAddr, book: &BTreeMap<String, String>) -> Result<Landing, String> {
    connect(addr, book).await.map(|(_, l)| l)
}

/// One client attempt of a sampling run.
#[derive(Debug)]
pub struct Attempt {
    /// When it was answered (or failed), since the reference instant.
    pub at: Duration,
    /// When it was started, since the reference instant.
    pub started: Duration,
    pub outcome: Result<Landing, String>,
}

/// Opens a new session through `addr` every [`SAMPLE_EVERY`] (each in its own task, so a slow
/// one does not delay the next) from now until `min` has passed since `t0` and `done` holds
/// for the attempts so far, or `max` has passed. Returns every attempt, in answer order.
pub async fn sample(
    addr: SocketAddr,
    book: Arc<BTreeMap<String, String>>,
    t0: Instant,
    min: Duration,
    max: Duration,
    done: impl Fn(&[Attempt]) -> bool,
) -> Vec<Attempt> {
    sample_every(SAMPLE_EVERY, addr, book, t0, min, max, done).await
}

/// [`sample`] with a new session every `every`.
pub async fn sample_every(
    every: Duration,
    addr: SocketAddr,
    book: Arc<BTreeMap<String, String>>,
    t0: Instant,
    min: Duration,
    max: Duration,
    done: impl Fn(&[Attempt]) -> bool,
) -> Vec<Attempt> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = JoinSet::new();
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let elapsed = t0.elapsed();
                if elapsed >= max || (elapsed >= min && done(&samples)) {
                    break;
                }
                let book = book.clone();
                running.spawn(async move {
                    let started = t0.elapsed();
                    let outcome = land(addr, &book).await;
                    Attempt { at: t0.elapsed(), started, outcome }
                });
            }
            Some(r) = running.join_next() => samples.push(r.expect("client task")),
        }
    }
    while let Some(r) = running.join_next().await {
        samples.push(r.expect("client task"));
    }
    samples.sort_by_key(|s| s.at);
    samples
}

/// Nodes the successful samples landed on, with counts; and the number of failed attempts.
pub fn tally(samples: &[Attempt]) -> (BTreeMap<String, usize>, usize) {
    let mut on = BTreeMap::new();
    let mut failed = 0;
    for s in samples {
        match &s.outcome {
            Ok(l) => *on.entry(l.node.clone()).or_insert(0) += 1,
            Err(_) => failed += 1,
        }
    }
    (on, failed)
}

/// haproxy's view through both interfaces: the UP servers of `proxy` by the stats socket and
/// by `/stats;csv`; they must agree and be exactly `want`.
pub async fn assert_haproxy_view(hp: &Haproxy, proxy: &str, want: &[&str]) {
    let mut by_socket = hp.up_servers(proxy).await.expect("show stat");
    by_socket.sort();
    let url = hp.listener(STATS).expect("stats listener");
    let csv = primgr_lab::http::get(url, "/stats;csv", Duration::from_secs(2))
        .await
        .expect("GET /stats;csv");
    assert_eq!(csv.status, 200, "/stats;csv: {}", csv.body);
    let mut by_http: Vec<String> = haproxy::parse_stat_csv(&csv.body)
        .expect("parse /stats;csv")
        .into_iter()
        .filter(|s| s.proxy == proxy && s.is_server() && s.is_up())
        .map(|s| s.server)
        .collect();
    by_http.sort();
    assert_eq!(
        by_socket, by_http,
        "stats socket and /stats;csv disagree on {proxy}"
    );
    assert_eq!(by_socket, want, "{proxy}: servers UP in haproxy");
}
