//! Shared by the integration tests: in-process primgr daemons beside a lab cluster, and the
//! waits and probes a user would run against them.
#![allow(dead_code)]

pub mod agent;
pub mod child;
pub mod clients;
pub mod sampler;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use primgr::Config;
use primgr_lab::http::{self, HttpResponse};
use primgr_lab::{Lab, wait};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Poll timings used by the lab daemons: short, so scenarios settle quickly.
pub const INTERVAL: Duration = Duration::from_millis(500);
pub const DB_TIMEOUT: Duration = Duration::from_secs(1);
pub const PEER_TIMEOUT: Duration = Duration::from_millis(500);

/// The lab timings as command-line flags, for daemons run as processes.
pub fn timing_flags() -> Vec<String> {
    [
        ("--interval", INTERVAL),
        ("--db-timeout", DB_TIMEOUT),
        ("--peer-timeout", PEER_TIMEOUT),
    ]
    .into_iter()
    .flat_map(|(flag, d)| [flag.to_string(), humantime::format_duration(d).to_string()])
    .collect()
}

/// The configuration of the daemon of `node`: listens on the node's address, binds its peer
/// requests to it, reads the node's own database over TCP.
pub fn config_for(lab: &Lab, node: &str) -> Config {
    let mut c = Config::for_node(node).expect("default config is valid");
    c.node.listen = lab.daemon_addr(node);
    c.db.conninfo = format!("{} application_name=primgr", lab.conninfo(node));
    c.timing.interval = INTERVAL;
    c.db.db_timeout = DB_TIMEOUT;
    c.timing.peer_timeout = PEER_TIMEOUT;
    c.peer.source_address = Some(lab.addr(node).into());
    c.timing.max_staleness = Config::default_max_staleness(INTERVAL, DB_TIMEOUT, PEER_TIMEOUT);
    c
}

/// One daemon running in this process.
pub struct Daemon {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    /// The daemon's result. A daemon dropped without [`Daemon::stop`] is left to the end of the
    /// test's runtime, which cancels its poller; that result is nobody's concern.
    task: Option<JoinHandle<Result<(), primgr::RunError>>>,
}

impl Daemon {
    /// Starts a daemon with `config` on its `listen` address, and its agent-check port on
    /// `agent_listen` when that is set.
    pub async fn start(config: Config) -> Daemon {
        let listener = primgr::server::bind(config.node.listen)
            .unwrap_or_else(|e| panic!("bind {}: {e}", config.node.listen));
        let agent = config
            .agent
            .agent_listen
            .map(|a| primgr::server::bind(a).unwrap_or_else(|e| panic!("bind agent {a}: {e}")));
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let options = primgr::Options {
                agent,
                ..primgr::Options::default()
            };
            let stop = async {
                let _ = rx.await;
            };
            primgr::run_with(config, listener, stop, options).await
        });
        Daemon {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the daemon and waits until it has exited; returns how long that took.
    pub async fn stop(&mut self) -> Duration {
        let t0 = Instant::now();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let result = task.await.expect("daemon task ends cleanly");
            result.expect("daemon runs until it is stopped");
        }
        t0.elapsed()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A daemon per lab node.
pub struct Fleet {
    pub daemons: BTreeMap<String, Daemon>,
}

impl Fleet {
    pub async fn start(lab: &Lab) -> Fleet {
        Fleet::start_with(lab, |_, _| {}).await
    }

    /// A daemon per node, each configuration adjusted by `adjust(node, config)` first.
    pub async fn start_with(lab: &Lab, adjust: impl Fn(&str, &mut Config)) -> Fleet {
        let mut daemons = BTreeMap::new();
        for node in lab.node_names() {
            let mut config = config_for(lab, &node);
            adjust(&node, &mut config);
            daemons.insert(node.clone(), Daemon::start(config).await);
        }
        Fleet { daemons }
    }

    pub fn addr(&self, node: &str) -> SocketAddr {
        self.daemons[node].addr
    }

    /// GET `path` from the daemon of `node` (1 s bound).
    pub async fn get(&self, node: &str, path: &str) -> anyhow::Result<HttpResponse> {
        http::get(self.addr(node), path, Duration::from_secs(1)).await
    }

    /// Every node's `/state` status code (0 when it did not answer).
    pub async fn codes(&self) -> BTreeMap<String, u16> {
        let mut out = BTreeMap::new();
        for node in self.daemons.keys() {
            let code = self
                .get(node, "/state")
                .await
                .map(|r| r.status)
                .unwrap_or(0);
            out.insert(node.clone(), code);
        }
        out
    }

    /// Waits until every listed node answers `/state` with its listed code; returns the time
    /// it took, or panics with the last codes seen after `within`.
    pub async fn wait_codes(&self, want: &[(&str, u16)], within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let codes = self.codes().await;
            if want.iter().all(|(n, c)| codes.get(*n) == Some(c)) {
                return t0.elapsed();
            }
            if t0.elapsed() > within {
                let mut status = String::new();
                for (n, _) in want {
                    if let Ok(r) = self.get(n, "/status").await {
                        status.push_str(&format!("\n{n}: {}", r.body));
                    }
                }
                panic!("after {within:?} wanted {want:?}, last saw {codes:?}; status:{status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node1..node4 of the standard lab answer `codes` (in that order).
    pub async fn wait_standard(&self, codes: [u16; 4]) -> Duration {
        let want: Vec<(&str, u16)> = ["node1", "node2", "node3", "node4"]
            .into_iter()
            .zip(codes)
            .collect();
        self.wait_codes(&want, settle_bound()).await
    }

    /// Waits for the standard lab's normal state: node1 answers 200, node2-4 answer 202.
    pub async fn wait_normal(&self) -> Duration {
        self.wait_standard([200, 202, 202, 202]).await
    }

    /// Waits for the standard lab after `lab.failover("node1", "node2")`: node1 (its database
    /// down) answers 503, node2 200, node3 and node4 202.
    pub async fn wait_after_failover(&self) -> Duration {
        self.wait_standard([503, 200, 202, 202]).await
    }

    /// The JSON body of `path` on `node`, with its status.
    pub async fn json(&self, node: &str, path: &str) -> (u16, Value) {
        json_at(self.addr(node), path).await
    }

    /// Waits until `path` on `node` returns JSON for which `check` holds; returns it.
    pub async fn wait_json(
        &self,
        node: &str,
        path: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_json_at(self.addr(node), path, within, check).await
    }

    pub async fn stop_all(&mut self) {
        for d in self.daemons.values_mut() {
            d.stop().await;
        }
    }
}

/// How long a state change may take to show: a daemon that starts grants no vote for
/// `vote_lease`, a new primary waits out the handoff (`handoff_delay` × (1+ρ)), then two
/// cycles and both timeouts, plus slack for a loaded 2-core machine.
pub fn settle_bound() -> Duration {
    let c = Config::for_node("any").expect("defaults");
    c.leases.vote_lease
        + c.leases.handoff_delay.mul_f64(1.0 + c.leases.drift)
        + INTERVAL * 2
        + DB_TIMEOUT
        + PEER_TIMEOUT
        + Duration::from_secs(2)
}

/// The JSON body of `path` at `addr` (1 s bound), with its status; panics when there is no
/// answer or it is not JSON.
pub async fn json_at(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = http::get(addr, path, Duration::from_secs(1))
        .await
        .unwrap_or_else(|e| panic!("{addr} {path}: {e:#}"));
    let v = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("{addr} {path}: body {:?} is not JSON: {e}", r.body));
    (r.status, v)
}

/// Waits (polling every 50 ms) until `path` at `addr` returns JSON for which `check` holds;
/// returns it, or panics with the last one after `within`.
pub async fn wait_json_at(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::cell::RefCell::new(Value::Null);
    let r = wait::wait_for_every(
        &format!("{addr} {path} as wanted"),
        within,
        Duration::from_millis(50),
        || async {
            let (_, v) = json_at(addr, path).await;
            let ok = check(&v);
            *last.borrow_mut() = v;
            Ok(ok)
        },
    )
    .await;
    if let Err(e) = r {
        panic!("{e:#}; last {}", last.borrow());
    }
    last.into_inner()
}

/// Waits until the daemon at `addr` has completed `n` more poll cycles (`n` new values of
/// `observed_at` in `/status`); returns how long that took, panics after `within`.
pub async fn wait_cycles(addr: SocketAddr, n: usize, within: Duration) -> Duration {
    let first = json_at(addr, "/status").await.1["observed_at"].clone();
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    wait::wait_for_every(
        &format!("{n} more poll cycles of {addr}"),
        within,
        Duration::from_millis(50),
        || async {
            let at = json_at(addr, "/status").await.1["observed_at"].clone();
            if !at.is_null() && at != first {
                seen.borrow_mut().insert(at.to_string());
            }
            Ok(seen.borrow().len() >= n)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}
