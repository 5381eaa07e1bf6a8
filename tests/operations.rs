//! Issue 12's operations features against real components: the haproxy agent-check port
//! (through haproxy 2.6 and real PostgreSQL clients on the lab, and against hostile clients),
//! reload on SIGHUP of the real binary under load, and `/metrics` read by a parser of the
//! Prometheus text format. Each test's lab subnet is its entry in `primgr_lab::SUBNETS`.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent::{
    ADMIN_DRAIN, AgentRow, agent_addr, agent_fleet, agent_line, agent_rows, ask_agent,
    configured_primgr, servers_state, state_dir, wait_rows,
};
use common::clients::{address_book, connect, haproxy_settle, land, shipped};
use common::phases::Phases;
use common::sampler::Sampler;
use common::{Daemon, config_for, json_at, wait_json_at};
use primgr::Config;
use primgr::agent::{MAX_CONNECTIONS, READ_TIMEOUT};
use primgr_lab::haproxy::{self, Haproxy};
use primgr_lab::{Lab, LabSpec, http, lab_subnet, subnet_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The agent read listener of the shipped variant.
const READ_AGENT: &str = "postgres_read_agent";
/// The same listener with `weight 100` on its servers (added by these tests, port 5004).
const READ_AGENT_W100: &str = "postgres_read_agent_w100";
/// A write listener with `agent-send "write\n"` (added by these tests, port 5003).
const WRITE_AGENT: &str = "postgres_write_agent";

/// Soft and hard lag bounds of the agent test: 40 MB of lag gives an intermediate weight.
const LAG_SOFT: u64 = 1 << 20;
const LAG_HARD: u64 = 128 << 20;
/// WAL written on the primary while a standby's replay is paused.
const WAL_TO_WRITE: u64 = 40 << 20;

/// The shipped configuration with its agent variant enabled (`#agent ` removed, as the comment
/// says), plus two sections derived from that variant: the same read pool with `weight 100`
/// on its servers (port 5004), and a write pool whose agent is asked `write\n` (port 5003).
fn agent_config() -> String {
    let enabled = shipped().replace("#agent ", "");
    let at = enabled
        .find(&format!("listen {READ_AGENT}\n"))
        .expect("the shipped file has the commented agent variant");
    let section = &enabled[at..];
    assert!(
        section.contains("bind 0.0.0.0:5002")
            && section
                .contains("agent-check agent-port 5998 agent-inter 1s agent-send \"read\\n\""),
        "the shipped agent variant changed:\n{section}"
    );
    let w100 = section
        .replacen(
            &format!("listen {READ_AGENT}\n"),
            &format!("listen {READ_AGENT_W100}\n"),
            1,
        )
        .replacen("bind 0.0.0.0:5002", "bind 0.0.0.0:5004", 1)
        .replacen(
            "agent-send \"read\\n\"",
            "agent-send \"read\\n\" weight 100",
            1,
        );
    let write = section
        .replacen(
            &format!("listen {READ_AGENT}\n"),
            &format!("listen {WRITE_AGENT}\n"),
            1,
        )
        .replacen("bind 0.0.0.0:5002", "bind 0.0.0.0:5003", 1)
        .replacen("uri /replica", "uri /state", 1)
        .replacen("agent-send \"read\\n\"", "agent-send \"write\\n\"", 1);
    format!("{enabled}\n{w100}\n{write}")
}

fn print_rows(label: &str, rows: &[AgentRow]) {
    println!("-- show stat, {label}:");
    for r in rows {
        println!("   {}", r.line());
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The agent port against hostile clients (no database needed).
// ---------------------------------------------------------------------------------------------

/// A daemon whose database does not exist (nothing listens at its conninfo), with its agent
/// port: its answers are constant (`down #...` for both pools, but different lines).
async fn lone_daemon(subnet: u8) -> (Daemon, SocketAddr, SocketAddr) {
    let ip = Ipv4Addr::new(127, 0, subnet, 11);
    let mut config = Config::for_node("node1").expect("defaults");
    config.node.listen = SocketAddr::from((ip, 5999));
    config.agent.agent_listen = Some(SocketAddr::from((ip, 5998)));
    config.db.conninfo = format!("host={ip} port=5432 dbname=repmgr user=repmgr connect_timeout=1");
    config.timing.interval = common::INTERVAL;
    config.db.db_timeout = common::DB_TIMEOUT;
    config.timing.peer_timeout = common::PEER_TIMEOUT;
    config.timing.max_staleness =
        Config::default_max_staleness(common::INTERVAL, common::DB_TIMEOUT, common::PEER_TIMEOUT);
    config.node.state_dir = state_dir(subnet, "node1");
    let agent = config.agent.agent_listen.expect("set");
    let d = Daemon::start(config).await;
    let addr = d.addr;
    wait_json_at(addr, "/status", Duration::from_secs(10), |v| {
        !v["observed_at"].is_null()
    })
    .await;
    (d, addr, agent)
}

/// The agent port treats hostile clients as the HTTP port does: a silent client is answered for
/// the read pool after READ_TIMEOUT and closed; garbage is `read`; 1 MB gets one line and a
/// close; beyond MAX_CONNECTIONS connections at once the others are closed at once, and the HTTP
/// health check keeps answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_hostile_input() {
    let t_start = Instant::now();
    let subnet = lab_subnet(subnet_of("operations::agent_hostile_input")).expect("subnet");
    let (mut daemon, http_addr, agent) = lone_daemon(subnet).await;
    let read = agent_line(agent, b"read\n").await;
    let write = agent_line(agent, b"write\n").await;
    println!("agent {agent}: read pool {read:?}; write pool {write:?}");
    assert!(read.starts_with("down #") && write.starts_with("down #"));
    assert_ne!(read, write, "the pools get different lines");

    // A silent client: answered for the read pool after READ_TIMEOUT, then closed.
    let r = ask_agent(agent, b"", Duration::from_secs(3)).await;
    println!(
        "silent client: {:?} after {:?} (READ_TIMEOUT {READ_TIMEOUT:?}), closed: {}",
        r.text, r.took, r.closed
    );
    assert_eq!(r.text.trim_end(), read);
    assert!(r.closed, "{r:?}");
    assert!(
        r.took >= READ_TIMEOUT && r.took < READ_TIMEOUT + Duration::from_millis(500),
        "{:?}",
        r.took
    );

    // Garbage: treated as `read`.
    for garbage in [
        &b"\xff\xfe\x00\x01garbage\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\n",
        b"writ\n",
        b"write please\n",
    ] {
        let r = ask_agent(agent, garbage, Duration::from_secs(3)).await;
        assert_eq!(r.text.trim_end(), read, "{garbage:?}: {r:?}");
        assert!(r.closed && r.took < READ_TIMEOUT, "{garbage:?}: {r:?}");
    }
    assert_eq!(agent_line(agent, b"WRITE\r\n").await, write);
    println!(
        "5 garbage requests: each got the read-pool line at once; \"WRITE\\r\\n\" the write line"
    );

    // 1 MB sent: the agent reads at most MAX_REQUEST bytes, answers one line and closes.
    let mut s = TcpStream::connect(agent).await.expect("connect");
    let t0 = Instant::now();
    let (mut rd, mut wr) = s.split();
    let send = async {
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0usize;
        while sent < 1 << 20 {
            match wr.write(&chunk).await {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    };
    let receive = async {
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
        (out, r, t0.elapsed())
    };
    let (sent, (out, r, took)) = tokio::join!(send, receive);
    let text = String::from_utf8_lossy(&out);
    println!(
        "1 MB client: wrote {sent} bytes; got {text:?} then {} after {took:?}",
        match &r {
            Ok(Ok(_)) => "EOF".to_string(),
            Ok(Err(e)) => format!("error {e}"),
            Err(_) => "no end within 5 s".to_string(),
        }
    );
    assert!(r.is_ok(), "the agent closes a client that sends 1 MB");
    assert_eq!(text.trim_end(), read, "one line, the read pool's");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // More than MAX_CONNECTIONS at once: those beyond are closed at once, the HTTP health
    // check keeps answering (sampled every 10 ms meanwhile).
    let sampler = Sampler::start(
        Instant::now(),
        vec![http_addr],
        "/state",
        Duration::from_millis(10),
        Duration::from_secs(1),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = MAX_CONNECTIONS + 64;
    // A slot is held READ_TIMEOUT by a silent client: the burst must open all its connections
    // within that time; a burst slowed down by a loaded machine is tried again (3 at most).
    let mut attempt = 0;
    let (answered, refused, opened) = loop {
        attempt += 1;
        let (answered, refused, opened) = burst(agent, n, &read).await;
        if !refused.is_empty() || attempt == 3 {
            break (answered, refused, opened);
        }
        println!("burst {attempt}: {n} opened in {opened:?}, none refused; again");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let samples = sampler.stop();
    let refused_last = refused.iter().map(|r| r.1).max().unwrap_or_default();
    let answered_first = answered.iter().map(|r| r.1).min().unwrap_or_default();
    println!(
        "{n} connections opened in {opened:?}: {} answered (first answer at {answered_first:?}), \
         {} closed without an answer (all by {refused_last:?}); the first refused was #{}",
        answered.len(),
        refused.len(),
        refused.iter().map(|r| r.0).min().unwrap_or(0)
    );
    assert_eq!(answered.len() + refused.len(), n);
    assert!(
        answered.len() >= MAX_CONNECTIONS,
        "at least MAX_CONNECTIONS are served"
    );
    assert!(
        !refused.is_empty(),
        "the connections beyond the limit are closed"
    );
    assert!(
        refused.iter().all(|(i, _)| *i >= MAX_CONNECTIONS),
        "only connections beyond the limit are refused"
    );
    let unanswered: Vec<_> = samples.iter().filter(|s| s.status.is_none()).collect();
    let worst = samples.iter().map(|s| s.latency).max().unwrap_or_default();
    println!(
        "HTTP /state meanwhile: {} samples, {} unanswered, slowest {worst:?}",
        samples.len(),
        unanswered.len()
    );
    assert!(samples.len() > 20, "the sampler ran");
    assert!(unanswered.is_empty(), "{unanswered:?}");
    assert_eq!(agent_line(agent, b"read\n").await, read, "served again");

    // `write` without its newline, the connection kept open: what arrived before
    // READ_TIMEOUT counts, so it is the write pool's answer (never the read pool's, which
    // would put a standby into a write pool that relies on the agent alone).
    let mut s = TcpStream::connect(agent).await.expect("connect");
    s.write_all(b"write").await.expect("send");
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await;
    println!(
        "\"write\" without a newline (connection open) is answered {:?}",
        out.trim_end()
    );
    assert_eq!(
        out.trim_end(),
        write,
        "\"write\" without its newline is the write pool"
    );

    daemon.stop().await;
    println!("agent_hostile_input: {:?}", t_start.elapsed());
}

/// Opens `n` silent connections to the agent one after the other, then reads each to its end:
/// (index, when it ended) of those answered with `read` and of those closed without an answer,
/// and how long the opening took.
async fn burst(
    agent: SocketAddr,
    n: usize,
    read: &str,
) -> (Vec<(usize, Duration)>, Vec<(usize, Duration)>, Duration) {
    let t0 = Instant::now();
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(TcpStream::connect(agent).await.expect("connect"));
    }
    let opened = t0.elapsed();
    let mut readers = tokio::task::JoinSet::new();
    for (i, mut s) in streams.into_iter().enumerate() {
        readers.spawn(async move {
            let mut out = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            (i, out, r.is_ok(), t0.elapsed())
        });
    }
    let (mut answered, mut refused) = (Vec::new(), Vec::new());
    while let Some(j) = readers.join_next().await {
        let (i, out, ended, at) = j.expect("reader");
        assert!(ended, "connection {i} never ended");
        if out.is_empty() {
            refused.push((i, at));
        } else {
            assert_eq!(String::from_utf8_lossy(&out).trim_end(), read, "#{i}");
            answered.push((i, at));
        }
    }
    (answered, refused, opened)
}

// ---------------------------------------------------------------------------------------------
// The shipped agent variant and haproxy's weights (no lab: fake agents and checks).
// ---------------------------------------------------------------------------------------------

/// Serves `line` to every agent connection on `addr` (after reading what haproxy sends).
async fn fake_agent(addr: SocketAddr, line: String) {
    let l = TcpListener::bind(addr).await.expect("bind fake agent");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let line = line.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
                let _ = s.write_all(format!("{line}\n").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

/// Answers 200 to every HTTP check on `addr`.
async fn fake_check(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.expect("bind fake check");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = http::read_head(&mut s, &mut buf, 8192).await;
                let _ = s
                    .write_all(&http::response(
                        "200 OK",
                        "connection: close\r\n",
                        b"Standby",
                    ))
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
}

/// The shipped agent variant with a standby 40 MB behind (the agent answers `up ready 72%`, as
/// primgr does for agent_lag_soft 1MB / agent_lag_hard 128MB) must keep that standby in the
/// read pool with a reduced share. haproxy applies `N%` to the server's configured weight,
/// which is 1 when the configuration sets none: 72% of 1 is 0, so the shipped variant takes
/// every lagging standby (lag > agent_lag_soft) out of the pool entirely, as if drained. The
/// `weight 100` section shows what the variant needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_agent_variant_keeps_a_lagging_standby_in_the_pool() {
    let subnet = lab_subnet(subnet_of(
        "operations::shipped_agent_variant_keeps_a_lagging_standby_in_the_pool",
    ))
    .expect("subnet");
    let nodes: Vec<(String, Ipv4Addr)> = (1..=4)
        .map(|i| (format!("node{i}"), primgr_lab::node_address(subnet, i)))
        .collect();
    let percent = primgr::agent::weight(WAL_TO_WRITE, LAG_SOFT, LAG_HARD).expect("not down");
    for (i, (_, ip)) in nodes.iter().enumerate() {
        let line = match i {
            0 => "down #not in recovery: not a replica".to_string(),
            3 => format!("up ready {percent}%"),
            _ => "up ready 100%".to_string(),
        };
        fake_agent(SocketAddr::from((*ip, 5998)), line).await;
        fake_check(SocketAddr::from((*ip, 5999))).await;
    }
    let dir = common::child::scratch_dir(&format!("ops-weights-{subnet}"));
    let socket = dir.join("haproxy.sock");
    let rendered = haproxy::render(
        &agent_config(),
        &nodes,
        haproxy::proxy_address(subnet),
        &socket,
    )
    .expect("render");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, &rendered.text).expect("write haproxy.cfg");
    haproxy::check_config(&cfg).await.expect("haproxy -c");
    let log = std::fs::File::create(dir.join("haproxy.log")).expect("log");
    let mut child = std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("start haproxy");
    let stat = |proxy: &'static str| {
        let socket = socket.clone();
        async move {
            let mut s = tokio::net::UnixStream::connect(&socket).await.ok()?;
            s.write_all(b"show stat\n").await.ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.ok()?;
            Some(parse_weights(&out, proxy))
        }
    };
    let t0 = Instant::now();
    let mut settled = None;
    let (mut shipped_w, mut fixed_w) = (BTreeMap::new(), BTreeMap::new());
    while t0.elapsed() < Duration::from_secs(10) {
        if let (Some(a), Some(b)) = (stat(READ_AGENT).await, stat(READ_AGENT_W100).await) {
            (shipped_w, fixed_w) = (a, b);
            // Settled: the agents have answered (node1 down, node4 reduced); then two more
            // agent intervals, so that every server of both pools has had its answer.
            if fixed_w.get("node4").is_some_and(|w| w.1 == percent)
                && shipped_w.get("node1").is_some_and(|w| w.0.contains("DOWN"))
            {
                let at = *settled.get_or_insert_with(Instant::now);
                if at.elapsed() > Duration::from_millis(2500) {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    println!("agent answers: node1 down, node2-3 `up ready 100%`, node4 `up ready {percent}%`");
    println!("{READ_AGENT} (as shipped) status/weight: {shipped_w:?}");
    println!("{READ_AGENT_W100} (weight 100) status/weight: {fixed_w:?}");
    assert_eq!(
        fixed_w.get("node4").map(|w| w.1),
        Some(percent),
        "with weight 100 the lagging standby keeps {percent}% of a share"
    );
    let node4 = shipped_w.get("node4").map(|w| w.1).unwrap_or(0);
    assert!(
        node4 > 0,
        "contrib/haproxy.cfg's agent variant: the standby the agent answers `up ready {percent}%` \
         for has weight {node4} in haproxy (no share at all, as if drained), because haproxy \
         applies the percentage to the configured weight, 1 by default. Add `weight 100` to the \
         variant's default-server line. Weights: {shipped_w:?}"
    );
}

/// `server → (status, weight)` of `proxy` in a `show stat` CSV.
fn parse_weights(csv: &str, proxy: &str) -> BTreeMap<String, (String, u32)> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |n: &str| header.iter().position(|c| *c == n).unwrap_or(usize::MAX);
    let (px, sv, st, w) = (col("pxname"), col("svname"), col("status"), col("weight"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(px) == Some(&proxy))
        .filter(|f| f.get(sv).is_some_and(|s| s.starts_with("node")))
        .map(|f| {
            (
                f[sv].to_string(),
                (
                    f.get(st).unwrap_or(&"").to_string(),
                    f.get(w).and_then(|w| w.parse().ok()).unwrap_or(0),
                ),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The agent through haproxy, on the lab.
// ---------------------------------------------------------------------------------------------

/// Opens `n` sessions through `addr` one after the other and keeps them open (haproxy's
/// leastconn then spreads them by weight); returns where they landed. The sessions close when
/// the returned clients are dropped.
async fn hold(
    addr: SocketAddr,
    book: &BTreeMap<String, String>,
    n: usize,
) -> (BTreeMap<String, usize>, Vec<tokio_postgres::Client>) {
    let mut on = BTreeMap::new();
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let (c, l) = connect(addr, book)
            .await
            .unwrap_or_else(|e| panic!("session #{i} through {addr}: {e}"));
        assert!(l.in_recovery, "#{i} landed on {l:?}");
        *on.entry(l.node).or_insert(0) += 1;
        clients.push(c);
    }
    (on, clients)
}

/// Waits until haproxy counts no session on any server of `proxies` (closed ones drained).
async fn wait_no_sessions(hp: &Haproxy, proxies: &[&str]) {
    for p in proxies {
        wait_rows(hp, p, Duration::from_secs(10), |rows| {
            rows.iter().all(|r| r.sessions == 0)
        })
        .await;
    }
}

/// `primgr drain|undrain --config FILE [--reason R]` (the real binary); its output.
async fn drain_command(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_primgr"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("primgr drain ends")
    .expect("run primgr");
    assert!(out.status.success(), "primgr {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The agent lines of every node for both pools.
async fn agent_lines(lab: &Lab) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for n in lab.node_names() {
        let a = agent_addr(lab, &n);
        out.insert(
            n,
            (
                agent_line(a, b"read\n").await,
                agent_line(a, b"write\n").await,
            ),
        );
    }
    out
}

fn weight_of(line: &str) -> Option<u32> {
    line.strip_prefix("up ready ")?
        .strip_suffix('%')?
        .parse()
        .ok()
}

/// haproxy 2.6 with the shipped agent variant in front of the lab, daemons with
/// `agent_listen = <node>:5998`, in phases that report separately: (a) every standby takes
/// reads at full weight, the write agent says `up ready 100%` on the primary only; (b) `primgr
/// drain` → haproxy drains the node (no new session), `primgr undrain` → back; (c) a standby
/// whose replay is paused while ~40 MB of WAL is written gets an intermediate weight and a
/// proportional share of new sessions (with `weight 100`; the shipped variant gives it none,
/// see the test above); (d) full weight again once it replays. Real PostgreSQL sessions through
/// haproxy; `show stat` rows printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_through_haproxy() {
    let t_start = Instant::now();
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "operations::agent_through_haproxy",
    )))
    .await
    .expect("lab builds");
    let subnet = lab.subnet();
    let mut fleet = agent_fleet(&lab, |_, c| {
        c.agent.agent_lag_soft = LAG_SOFT;
        c.agent.agent_lag_hard = LAG_HARD;
    })
    .await;
    let book = address_book(&lab);
    fleet.wait_normal().await;
    let hp = Haproxy::start(&lab, &agent_config())
        .await
        .expect("haproxy starts with the agent variant");
    let read = hp.listener(READ_AGENT).expect("5002");
    let read100 = hp.listener(READ_AGENT_W100).expect("5004");
    let write = hp.listener(WRITE_AGENT).expect("5003");
    println!(
        "haproxy listeners: {READ_AGENT} {read}, {READ_AGENT_W100} {read100}, {WRITE_AGENT} {write}"
    );
    let standbys = ["node2", "node3", "node4"];
    let mut phases = Phases::new("agent_through_haproxy");

    phases
        .run("(a) every standby takes reads at full weight", async {
            let all_up = |rows: &[AgentRow]| {
                rows.iter().all(|r| {
                    (r.server == "node1") == (r.status != "UP") && r.agent_status.starts_with("L7")
                }) && standbys
                    .iter()
                    .all(|s| common::agent::row(rows, s).weight == rows[1].weight)
            };
            let (rows, t) = wait_rows(&hp, READ_AGENT, haproxy_settle(), all_up).await;
            let (rows100, _) = wait_rows(&hp, READ_AGENT_W100, haproxy_settle(), all_up).await;
            let (wrows, _) = wait_rows(&hp, WRITE_AGENT, haproxy_settle(), |rows| {
                rows.iter().all(|r| {
                    (r.server == "node1") == (r.status == "UP") && r.agent_status.starts_with("L7")
                })
            })
            .await;
            println!("haproxy settled after {t:?}");

            // The agent port, asked directly (TCP), for both pools.
            let lines = agent_lines(&lab).await;
            for (n, (r, w)) in &lines {
                println!("agent {n}: read {r:?}, write {w:?}");
            }
            assert_eq!(lines["node1"].1, "up ready 100%");
            assert!(lines["node1"].0.starts_with("down #"), "{lines:?}");
            for s in standbys {
                assert_eq!(lines[s].0, "up ready 100%");
                assert!(lines[s].1.starts_with("down #Standby"), "{lines:?}");
            }

            print_rows("(a) normal", &rows);
            print_rows("(a) normal", &rows100);
            print_rows("(a) normal", &wrows);
            for s in standbys {
                assert_eq!(common::agent::row(&rows100, s).weight, 100);
                assert!(common::agent::row(&rows, s).weight > 0);
            }
            let (on, held) = hold(read, &book, 30).await;
            println!("(a) 30 sessions held through {READ_AGENT}: {on:?}");
            for s in standbys {
                assert!(
                    (8..=12).contains(&on.get(s).copied().unwrap_or(0)),
                    "{on:?}"
                );
            }
            drop(held);
            for i in 0..10 {
                let l = land(write, &book)
                    .await
                    .unwrap_or_else(|e| panic!("write #{i}: {e}"));
                assert_eq!(l.node, "node1", "write #{i}");
                assert!(!l.in_recovery);
            }
            println!("write pool ({WRITE_AGENT}): 10/10 sessions on node1");
            wait_no_sessions(&hp, &[READ_AGENT]).await;
        })
        .await;

    // (b) Drain node3 with the real binary: `drain` at once, no new session there.
    let node3_toml = lab.dir().join("ops-node3.toml");
    std::fs::write(
        &node3_toml,
        format!(
            "node_name = \"node3\"\nlisten = \"{}\"\nstate_dir = \"{}\"\n",
            lab.daemon_addr("node3"),
            common::agent::state_dir_path(subnet, "node3").display()
        ),
    )
    .expect("write node3 toml");
    let cfg = node3_toml.to_string_lossy().to_string();
    let drained = phases
        .run("(b) primgr drain and undrain through haproxy", async {
            let drained_at = Instant::now();
            let out = drain_command(&["drain", "--config", &cfg, "--reason", "ops test"]).await;
            println!("(b) the command took {:?}", drained_at.elapsed());
            println!("(b) primgr drain: {out}");
            let line = agent_line(agent_addr(&lab, "node3"), b"read\n").await;
            println!("(b) agent node3 read: {line:?}");
            assert!(line.starts_with("drain"), "{line}");
            // haproxy: the agent's `drain` sets the server's admin state to drain (no new
            // session), and the HTTP check (/replica answers 503 to a drained node) takes it
            // down after `fall 2`.
            let mut seen: Vec<(String, Duration)> = Vec::new();
            let t = loop {
                let rows = agent_rows(&hp, READ_AGENT).await;
                let r = common::agent::row(&rows, "node3");
                let state = servers_state(&hp, READ_AGENT).await["node3"];
                let now = format!("{} admin {:#x} agent {}", r.status, state.0, r.agent_status);
                if seen.last().is_none_or(|l| l.0 != now) {
                    seen.push((now, drained_at.elapsed()));
                }
                if state.0 & ADMIN_DRAIN != 0 && r.status != "UP" {
                    break drained_at.elapsed();
                }
                assert!(
                    drained_at.elapsed() < Duration::from_secs(5),
                    "node3 not drained in haproxy: {seen:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let rows = agent_rows(&hp, READ_AGENT).await;
            print_rows(&format!("(b) node3 drained ({t:?})"), &rows);
            println!("(b) node3 in haproxy since the drain: {seen:?}");
            let (on, held) = hold(read, &book, 30).await;
            println!("(b) 30 sessions held while node3 is drained: {on:?}");
            assert_eq!(on.get("node3"), None, "no new session on a drained standby");
            drop(held);
            let out = drain_command(&["undrain", "--config", &cfg]).await;
            println!("(b) primgr undrain: {out}");
            let (rows, t) = wait_rows(&hp, READ_AGENT, haproxy_settle(), |rows| {
                let r = common::agent::row(rows, "node3");
                r.status == "UP" && r.weight == common::agent::row(rows, "node2").weight
            })
            .await;
            assert_eq!(
                servers_state(&hp, READ_AGENT).await["node3"].0 & ADMIN_DRAIN,
                0
            );
            print_rows(&format!("(b) node3 undrained, back after {t:?}"), &rows);
            wait_no_sessions(&hp, &[READ_AGENT]).await;
            let (on, held) = hold(read, &book, 30).await;
            println!("(b) 30 sessions held after undrain: {on:?}");
            assert!(on.get("node3").copied().unwrap_or(0) >= 8, "{on:?}");
            drop(held);
            wait_no_sessions(&hp, &[READ_AGENT]).await;
        })
        .await;
    if drained.is_none() {
        // The next phase starts from an undrained node3 whatever (b) left.
        let _ = tokio::process::Command::new(env!("CARGO_BIN_EXE_primgr"))
            .args(["undrain", "--config", &cfg])
            .output()
            .await;
    }

    phases
        .run("(c) a lagging standby gets a proportional weight", async {
            // node2's replay paused while ~40 MB of WAL is written on node1.
            lab.pause_replay("node2").await.expect("pause replay");
            let written = lab
                .write_wal("node1", WAL_TO_WRITE >> 20)
                .await
                .expect("write WAL");
            println!(
                "(c) wrote {} kB of WAL on node1 with node2's replay paused",
                written >> 10
            );
            let n2 = agent_addr(&lab, "node2");
            let t0 = Instant::now();
            // The weight once it is steady: the same answer for 1.2 s (over two poll cycles, so
            // that node2 knows the primary's final position).
            let mut steady: Vec<u32> = Vec::new();
            let percent = loop {
                let line = agent_line(n2, b"read\n").await;
                match weight_of(&line) {
                    Some(w) if w < 100 => {
                        if steady.last().is_some_and(|l| *l != w) {
                            steady.clear();
                        }
                        steady.push(w);
                        if steady.len() > 4 {
                            break w;
                        }
                    }
                    _ => steady.clear(),
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "node2's agent says {line:?}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            };
            let (_, status) = fleet.json("node2", "/status").await;
            let lag = status["replication"]["lag_bytes"]
                .as_u64()
                .expect("lag known");
            println!(
                "(c) node2: lag {} kB (/status), agent `up ready {percent}%` (expected {:?})",
                lag >> 10,
                primgr::agent::weight(lag, LAG_SOFT, LAG_HARD)
            );
            assert!(
                (10..100).contains(&percent),
                "an intermediate weight: {percent}"
            );
            let (rows100, t) = wait_rows(&hp, READ_AGENT_W100, Duration::from_secs(5), |rows| {
                common::agent::row(rows, "node2").weight == percent
            })
            .await;
            let (rows, _) = wait_rows(&hp, READ_AGENT, Duration::from_secs(5), |rows| {
                common::agent::row(rows, "node2").weight < common::agent::row(rows, "node3").weight
            })
            .await;
            print_rows(
                &format!("(c) node2 lagging, weight {percent} after {t:?}"),
                &rows100,
            );
            print_rows("(c) node2 lagging", &rows);
            let (on, held) = hold(read100, &book, 40).await;
            let share = f64::from(percent) / f64::from(percent + 200);
            println!(
                "(c) 40 sessions held through {READ_AGENT_W100}: {on:?} (node2's expected share \
                 {percent}/{} = {:.1} sessions)",
                percent + 200,
                40.0 * share
            );
            let got = on.get("node2").copied().unwrap_or(0);
            assert!(
                (got as f64 - 40.0 * share).abs() <= 2.5,
                "node2's share follows its weight: {on:?}"
            );
            assert!(got < on["node3"] && got < on["node4"], "{on:?}");
            drop(held);
            let (on, held) = hold(read, &book, 30).await;
            println!("(c) 30 sessions held through {READ_AGENT} (as shipped): {on:?}");
            assert!(
                on.get("node2").copied().unwrap_or(0) < on["node3"].min(on["node4"]),
                "{on:?}"
            );
            drop(held);
            wait_no_sessions(&hp, &[READ_AGENT, READ_AGENT_W100]).await;
        })
        .await;
    phases
        .run("(d) replay resumed: full weight again", async {
            // From whatever (c) left: its sessions closed, replay resumed.
            wait_no_sessions(&hp, &[READ_AGENT, READ_AGENT_W100]).await;
            lab.resume_replay("node2").await.expect("resume replay");
            let resumed = Instant::now();
            let (rows100, t) = wait_rows(&hp, READ_AGENT_W100, Duration::from_secs(15), |rows| {
                standbys
                    .iter()
                    .all(|s| common::agent::row(rows, s).weight == 100)
            })
            .await;
            let (rows, _) = wait_rows(&hp, READ_AGENT, Duration::from_secs(5), |rows| {
                common::agent::row(rows, "node2").weight == common::agent::row(rows, "node3").weight
            })
            .await;
            print_rows(
                &format!("(d) replay resumed, weight 100 after {t:?}"),
                &rows100,
            );
            print_rows("(d) replay resumed", &rows);
            println!(
                "(d) back to full weight {:?} after resume",
                resumed.elapsed()
            );
            let (on, held) = hold(read100, &book, 30).await;
            println!("(d) 30 sessions held after resume: {on:?}");
            assert!(on.get("node2").copied().unwrap_or(0) >= 8, "{on:?}");
            drop(held);
            let (wrows, _) = wait_rows(&hp, WRITE_AGENT, Duration::from_secs(1), |_| true).await;
            print_rows("write pool at the end", &wrows);
        })
        .await;

    hp.stop().await.expect("haproxy stops");
    fleet.stop_all().await;
    lab.teardown().await.expect("teardown");
    println!("agent_through_haproxy: {:?}", t_start.elapsed());
    phases.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. Reload on SIGHUP, the real binary under load.
// ---------------------------------------------------------------------------------------------

/// node1's configuration file for the reload test.
struct Node1File {
    ip: Ipv4Addr,
    state_dir: std::path::PathBuf,
    interval: &'static str,
    log_level: &'static str,
    listen_port: u16,
    agent_port: u16,
    app: &'static str,
}

impl Node1File {
    fn text(&self) -> String {
        let ip = self.ip;
        format!(
            "# primgr of node1 (reload test)\n\
             node_name = \"node1\"\n\
             listen = \"{ip}:{}\"\n\
             conninfo = \"host={ip} port=5432 dbname=repmgr user=repmgr application_name={}\"\n\
             interval = \"{}\"\n\
             db_timeout = \"1s\"\n\
             peer_timeout = \"500ms\"\n\
             source_address = \"{ip}\"\n\
             agent_listen = \"{ip}:{}\"\n\
             state_dir = \"{}\"\n\
             log_level = \"{}\"\n\
             peer_key_file = \"{}\"\n",
            self.listen_port,
            self.app,
            self.interval,
            self.agent_port,
            self.state_dir.display(),
            self.log_level,
            primgr_lab::peer_key_file().display()
        )
    }
}

/// The application names of the sessions on node1 that start with `primgr-reload`.
async fn reload_sessions(lab: &Lab) -> String {
    lab.psql(
        "node1",
        "SELECT string_agg(application_name || '=' || n, ' ' ORDER BY application_name) FROM \
         (SELECT application_name, count(*) AS n FROM pg_stat_activity \
          WHERE application_name LIKE 'primgr-reload%' GROUP BY 1) s",
    )
    .await
    .expect("pg_stat_activity")
}

/// Writes `text` to the daemon's configuration file and sends SIGHUP, once the wall clock has
/// passed the running configuration's `loaded_at` (so that the reload shows a new one; its
/// resolution is a millisecond, so this wait is nearly always over at once). Returns the
/// log's length before the reload.
async fn reload(primgr: &Daemon, file: &Path, text: String) -> usize {
    let addr = primgr.addr;
    let shown = json_at(addr, "/status").await.1["config"]["loaded_at"].clone();
    let shown = shown.as_str().expect("loaded_at");
    let loaded_at =
        humantime::parse_rfc3339(shown).unwrap_or_else(|e| panic!("loaded_at {shown:?}: {e}"));
    primgr_lab::wait::wait_for_every(
        "the wall clock past loaded_at",
        Duration::from_secs(2),
        Duration::from_millis(1),
        || async { Ok(std::time::SystemTime::now() > loaded_at + Duration::from_millis(1)) },
    )
    .await
    .expect("the clock moves");
    std::fs::write(file, text).expect("write config");
    let from = primgr.log_text().len();
    primgr.hangup().expect("SIGHUP");
    from
}

/// SIGHUP of the real binary (`primgr --config FILE`, nothing else) while `/state` is sampled
/// every 10 ms and the agent asked every 20 ms, in phases that report separately: (a) interval
/// and log_level apply, /status shows the new fingerprint and loaded_at; (b) listen and
/// agent_listen are logged as ignored, and served where they were; (c) an unknown key and a bad
/// value are refused with key and line, the running configuration stays; (d) a new conninfo
/// rebuilds the pool (pg_stat_activity); (e) under that load, not one sample unanswered or
/// other than 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load() {
    let t_start = Instant::now();
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "operations::reload_under_load",
    )))
    .await
    .expect("lab builds");
    let subnet = lab.subnet();
    let mut others = Vec::new();
    for n in ["node2", "node3", "node4"] {
        others.push(Daemon::start(config_for(&lab, n)).await);
    }
    let dir = common::child::scratch_dir(&format!("ops-reload-{subnet}"));
    let (file, log) = (dir.join("primgr.toml"), dir.join("primgr.log"));
    let ip = lab.addr("node1");
    let mut conf = Node1File {
        ip,
        state_dir: state_dir(subnet, "node1"),
        interval: "500ms",
        log_level: "info",
        listen_port: 5999,
        agent_port: 5998,
        app: "primgr-reload-a",
    };
    std::fs::write(&file, conf.text()).expect("write config");
    let addr = SocketAddr::from((ip, 5999));
    let agent = SocketAddr::from((ip, 5998));
    let mut primgr = configured_primgr(&file, addr, &log);
    primgr.wait_listening(Duration::from_secs(10)).await;
    wait_json_at(addr, "/status", common::settle_bound() * 2, |v| {
        v["code"] == 200
    })
    .await;
    let status = |addr| async move { json_at(addr, "/status").await.1 };
    let s0 = status(addr).await;
    println!(
        "node1's primgr (pid {}) answers 200; config {} loaded at {}",
        primgr.pid().expect("running"),
        s0["config"]["fingerprint"],
        s0["config"]["loaded_at"]
    );

    // The load: /state every 10 ms (its own thread), the agent's write answer every 20 ms.
    let load_from = Instant::now();
    let sampler = Sampler::start(
        load_from,
        vec![addr],
        "/state",
        Duration::from_millis(10),
        Duration::from_secs(1),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let agent_poll = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut bad) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = ask_agent(agent, b"write\n", Duration::from_secs(1)).await;
                if r.text == "up ready 100%\n" && r.closed {
                    ok += 1;
                } else {
                    bad.push(r);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, bad)
        })
    };
    let mut phases = Phases::new("reload_under_load");

    phases
        .run("(a) interval and log_level apply", async {
            let before = status(addr).await;
            assert_eq!(primgr.log_text().matches(" DEBUG ").count(), 0);
            conf.interval = "700ms";
            conf.log_level = "debug";
            let from = reload(&primgr, &file, conf.text()).await;
            let t0 = Instant::now();
            let sa = wait_json_at(addr, "/status", Duration::from_secs(5), |v| {
                v["interval_ms"].as_f64() == Some(700.0)
            })
            .await;
            let took = t0.elapsed();
            let new = primgr
                .wait_log(from, "log_level is now \"debug\"", Duration::from_secs(5))
                .await;
            // The daemon's debug lines (each poll cycle logs some) follow within two cycles.
            let t1 = Instant::now();
            let debug = primgr
                .wait_log(from, " DEBUG ", Duration::from_secs(5))
                .await;
            println!(
                "(a) interval 500ms → 700ms, log_level info → debug: /status interval_ms {} \
                 after {took:?}; fingerprint {} → {}; loaded_at {} → {}; first DEBUG line \
                 {:?} after the change; log: {:?}",
                sa["interval_ms"],
                before["config"]["fingerprint"],
                sa["config"]["fingerprint"],
                before["config"]["loaded_at"],
                sa["config"]["loaded_at"],
                t1.elapsed(),
                new.lines()
                    .filter(|l| l.contains("reload") || l.contains("log_level"))
                    .collect::<Vec<_>>()
            );
            assert_ne!(sa["config"]["fingerprint"], before["config"]["fingerprint"]);
            assert_ne!(sa["config"]["loaded_at"], before["config"]["loaded_at"]);
            assert!(
                debug.contains(" DEBUG "),
                "the log filter follows log_level"
            );
        })
        .await;

    phases
        .run("(b) listen and agent_listen need a restart", async {
            let before = status(addr).await;
            let was_debug = conf.log_level == "debug";
            conf.log_level = "info";
            conf.listen_port = 6001;
            conf.agent_port = 6998;
            let from = reload(&primgr, &file, conf.text()).await;
            let new = primgr
                .wait_log(from, "agent_listen", Duration::from_secs(5))
                .await;
            let sb = wait_json_at(addr, "/status", Duration::from_secs(5), |v| {
                v["config"]["loaded_at"] != before["config"]["loaded_at"]
            })
            .await;
            let ignored: Vec<&str> = new
                .lines()
                .filter(|l| l.contains("needs a restart"))
                .collect();
            println!("(b) listen → :6001, agent_listen → :6998: {ignored:#?}");
            assert!(
                new.contains(&format!("`listen: {ip}:5999 → {ip}:6001` needs a restart"))
                    && new.contains(&format!(
                        "`agent_listen: {ip}:5998 → {ip}:6998` needs a restart"
                    )),
                "{new}"
            );
            assert_eq!(
                http::get(addr, "/state", Duration::from_secs(1))
                    .await
                    .map(|r| r.status)
                    .ok(),
                Some(200)
            );
            assert!(
                TcpStream::connect((ip, 6001)).await.is_err(),
                "not listening on :6001"
            );
            assert!(
                TcpStream::connect((ip, 6998)).await.is_err(),
                "no agent on :6998"
            );
            assert_eq!(agent_line(agent, b"write\n").await, "up ready 100%");
            if was_debug {
                // Back to info: from the line that says so, two poll cycles log no DEBUG line.
                let text = primgr
                    .wait_log(from, "log_level is now \"info\"", Duration::from_secs(5))
                    .await;
                let mark = from + text.find("log_level is now \"info\"").expect("found");
                common::wait_cycles(addr, 2, Duration::from_secs(5)).await;
                let late = primgr.log_text()[mark..].to_string();
                let late_debug = late.matches(" DEBUG ").count();
                println!(
                    "(b) fingerprint {}, loaded_at {}; DEBUG lines over two cycles after \
                     log_level is info again: {late_debug}",
                    sb["config"]["fingerprint"], sb["config"]["loaded_at"]
                );
                assert_eq!(late_debug, 0, "{late}");
            }
        })
        .await;

    phases
        .run(
            "(c) bad files are refused, the configuration stays",
            async {
                let before = status(addr).await;
                let good = conf.text();
                let lines = good.lines().count();
                let unknown = format!("{good}intervall = \"2s\"\n");
                let interval_line = good
                    .lines()
                    .position(|l| l.starts_with("interval ="))
                    .expect("interval line")
                    + 1;
                let bad_value = good.replace(
                    &format!("interval = \"{}\"", conf.interval),
                    "interval = \"2 parsecs\"",
                );
                for (label, text, key, line) in [
                    ("unknown key", unknown, "intervall", lines + 1),
                    ("bad value", bad_value, "`interval`", interval_line),
                ] {
                    let from = reload(&primgr, &file, text).await;
                    // The refusal is the reload's last word: nothing of that file is applied after.
                    let new = primgr
                        .wait_log(from, "reload refused", Duration::from_secs(5))
                        .await;
                    let refused: String = new
                        .lines()
                        .skip_while(|l| !l.contains("reload refused"))
                        .take(8)
                        .collect::<Vec<_>>()
                        .join("\n");
                    println!("(c) {label}: {refused}");
                    assert!(
                        refused.contains(key) && refused.contains(&format!("line {line}")),
                        "{label}: the log names {key} and line {line}: {refused}"
                    );
                    let sc = status(addr).await;
                    assert_eq!(
                        sc["config"], before["config"],
                        "{label}: the old configuration stays"
                    );
                    assert_eq!(sc["interval_ms"], before["interval_ms"]);
                }
                assert!(primgr.running());
            },
        )
        .await;

    phases
        .run("(d) a new conninfo rebuilds the pool", async {
            let before = reload_sessions(&lab).await;
            conf.listen_port = 5999;
            conf.agent_port = 5998;
            conf.app = "primgr-reload-b";
            let from = reload(&primgr, &file, conf.text()).await;
            let t0 = Instant::now();
            let sessions = loop {
                let s = reload_sessions(&lab).await;
                if s.contains("primgr-reload-b=") && !s.contains("primgr-reload-a=") {
                    break s;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(15),
                    "sessions on node1: {s}\n{}",
                    &primgr.log_text()[from..]
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let sd = status(addr).await;
            println!(
                "(d) application_name a → b: node1's sessions {before:?} → {sessions:?} after \
                 {:?}; /status conninfo {}",
                t0.elapsed(),
                sd["database"]["conninfo"]
            );
            assert!(
                sd["database"]["conninfo"]
                    .as_str()
                    .is_some_and(|c| c.contains("primgr-reload-b"))
            );
        })
        .await;

    // Two more poll cycles under load after the last reload, then the load's verdict.
    common::wait_cycles(addr, 2, Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (agent_ok, agent_bad) = agent_poll.await.expect("agent poller");
    let load_for = load_from.elapsed();
    let samples = sampler.stop();
    phases
        .run("(e) every check answered 200 across the reloads", async {
            let wrong: Vec<_> = samples.iter().filter(|s| s.status != Some(200)).collect();
            let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
            latencies.sort();
            // One sample every 10 ms: at least half of them, or the sampler did not run.
            let expected = (load_for.as_millis() / 10) as usize;
            println!(
                "load across 5 reloads ({load_for:.1?}): {} /state samples (one per 10 ms would \
                 be {expected}), {} not 200, median {:?}, slowest {:?}; agent write answers: \
                 {agent_ok} `up ready 100%`, {} other",
                samples.len(),
                wrong.len(),
                latencies
                    .get(latencies.len() / 2)
                    .copied()
                    .unwrap_or_default(),
                latencies.last().copied().unwrap_or_default(),
                agent_bad.len()
            );
            assert!(samples.len() >= expected / 2, "the sampler ran");
            // The agent is asked every 20 ms plus the exchange: a quarter of that, at least.
            assert!(agent_ok >= expected / 8, "the agent poller ran");
            assert!(wrong.is_empty(), "{wrong:?}");
            assert!(agent_bad.is_empty(), "{agent_bad:?}");
        })
        .await;

    primgr.kill().await;
    for mut d in others {
        d.stop().await;
    }
    lab.teardown().await.expect("teardown");
    println!("reload_under_load: {:?}", t_start.elapsed());
    phases.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. /metrics, read by a parser of the Prometheus text format.
// ---------------------------------------------------------------------------------------------

/// A label set's text (`a="x",b="y"`) read strictly by the exposition format: values in double
/// quotes with only `\\`, `\"` and `\n` escaped; the pairs, unescaped.
fn strict_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("no name=\" in {rest:?}"))?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value in {text:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {text:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in a value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

/// One scrape: every line must be a comment, a `# HELP`/`# TYPE` line or a sample (as
/// prometheus-parse reads them), every family must have its `# TYPE` line before its samples,
/// every label set must be well escaped. The parsed scrape, and the raw text.
async fn scrape(addr: SocketAddr) -> (prometheus_parse::Scrape, String) {
    use prometheus_parse::LineInfo;
    let r = http::get(addr, "/metrics", Duration::from_secs(2))
        .await
        .expect("GET /metrics");
    assert_eq!(r.status, 200);
    let text = r.body;
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = 0;
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Ignored => panic!("not in the text format: {line:?}"),
            LineInfo::Type { metric_name, .. } => {
                assert!(
                    typed.insert(metric_name.clone()),
                    "TYPE twice: {metric_name}"
                );
            }
            LineInfo::Sample {
                metric_name,
                labels,
                ..
            } => {
                samples += 1;
                assert!(
                    typed.contains(metric_name),
                    "{metric_name} has no # TYPE line before its samples"
                );
                if let Some(l) = labels {
                    strict_labels(l).unwrap_or_else(|e| panic!("{line:?}: {e}"));
                }
            }
            _ => {}
        }
    }
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("prometheus-parse reads it");
    assert_eq!(parsed.samples.len(), samples, "every sample line parsed");
    for s in &parsed.samples {
        assert!(
            !matches!(s.value, prometheus_parse::Value::Untyped(_)),
            "{} is untyped",
            s.metric
        );
        assert!(
            parsed.docs.contains_key(&s.metric),
            "{} has no # HELP",
            s.metric
        );
    }
    (parsed, text)
}

/// The value of the sample `name` whose labels include `labels`.
fn metric(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// `promtool check metrics` on `text` (Debian's `prometheus` package, installed by
/// contrib/install-deps): it must parse the text (its lint remarks are printed, not asserted).
fn promtool(text: &str) {
    use std::io::Write as _;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = child.expect("run promtool (contrib/install-deps installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("promtool check metrics: {:?} {said}", out.status.code());
    assert!(!said.contains("error while linting"), "{said}");
}

/// `SUM(xact_commit + xact_rollback)` of node1's pg_stat_database.
async fn transactions(lab: &Lab) -> i64 {
    lab.psql(
        "node1",
        "SELECT sum(xact_commit + xact_rollback)::bigint FROM pg_stat_database",
    )
    .await
    .expect("pg_stat_database")
    .parse()
    .expect("a number")
}

/// A standby that streams and replays everything is less than this far behind (a poll cycle
/// of a quiet lab writes a few kB at most).
const LAG_QUIET: f64 = (1 << 20) as f64;

/// `primgr_replication_lag_bytes` of `addr`, with `primgr_replication_lag_known` 1, and
/// `/status`'s `lag_bytes` read right after it, from the same poll cycle (retried until
/// `observed_at` did not change in between).
async fn lag_agreeing(addr: SocketAddr) -> (f64, f64) {
    for _ in 0..20 {
        let before = json_at(addr, "/status").await.1["observed_at"].clone();
        let (m, _) = scrape(addr).await;
        let (_, s) = json_at(addr, "/status").await;
        if s["observed_at"] != before {
            continue;
        }
        assert_eq!(metric(&m, "primgr_replication_lag_known", &[]), Some(1.0));
        let gauge = metric(&m, "primgr_replication_lag_bytes", &[]).expect("the lag gauge");
        let shown = s["replication"]["lag_bytes"].as_f64().expect("lag_bytes");
        return (gauge, shown);
    }
    panic!("{addr}: no scrape within one poll cycle in 20 tries");
}

/// Waits until `primgr_replication_lag_bytes` of `addr` satisfies `check`; returns it.
async fn wait_lag(addr: SocketAddr, within: Duration, check: impl Fn(f64) -> bool) -> f64 {
    let t0 = Instant::now();
    loop {
        let (m, _) = scrape(addr).await;
        let lag = metric(&m, "primgr_replication_lag_bytes", &[]);
        if let Some(l) = lag.filter(|l| check(*l)) {
            return l;
        }
        assert!(
            t0.elapsed() < within,
            "{addr}: lag gauge {lag:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/metrics` of a primary and a standby read by prometheus-parse (every line understood, every
/// family typed and documented, label values escaped by the format's rules): the state gauges,
/// votes equal to /status's, the standby's lag (equal to /status's, and following a paused and
/// resumed replay), request counters that follow requests, a voter name with `"` and `\`
/// escaped, and no database transaction caused by 1000 scrapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_agree() {
    let t_start = Instant::now();
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "operations::metrics_parse_and_agree",
    )))
    .await
    .expect("lab builds");
    let mut fleet = common::Fleet::start(&lab).await;
    fleet.wait_normal().await;
    let (n1, n2) = (fleet.addr("node1"), fleet.addr("node2"));

    // States: Primary on node1, Standby on node2; one 1 per node.
    let states = ["Primary", "Standby", "Witness", "Down", "Unknown"];
    for (node, addr, want) in [("node1", n1, "Primary"), ("node2", n2, "Standby")] {
        let (m, text) = scrape(addr).await;
        let got: Vec<(&str, f64)> = states
            .iter()
            .map(|s| (*s, metric(&m, "primgr_state", &[("state", s)]).expect(s)))
            .collect();
        println!("{node} primgr_state: {got:?}");
        for (s, v) in &got {
            assert_eq!(*v, f64::from(u8::from(*s == want)), "{node} {s}");
        }
        if node == "node1" {
            println!("--- node1 /metrics ---\n{text}---");
            promtool(&text);
        }
    }
    // The standby's lag: what /status says (the same cycle), small while it replays, at least
    // the WAL written while its replay is paused, small again once it replays.
    let (lag, status_lag) = lag_agreeing(n2).await;
    println!("node2 quiet: primgr_replication_lag_bytes {lag}, /status lag_bytes {status_lag}");
    assert_eq!(lag, status_lag);
    assert!(lag < LAG_QUIET, "a quiet standby is {lag} bytes behind");
    lab.pause_replay("node2").await.expect("pause replay");
    let written = lab.write_wal("node1", 8).await.expect("write WAL");
    let t0 = Instant::now();
    let paused = wait_lag(n2, Duration::from_secs(10), |l| l >= written as f64).await;
    println!(
        "node2 replay paused, {written} bytes of WAL written on node1: the gauge shows \
         {paused} bytes after {:?}",
        t0.elapsed()
    );
    let (lag, status_lag) = lag_agreeing(n2).await;
    assert_eq!(lag, status_lag, "the gauge is /status's lag");
    lab.resume_replay("node2").await.expect("resume replay");
    let t0 = Instant::now();
    let resumed = wait_lag(n2, Duration::from_secs(10), |l| l < LAG_QUIET).await;
    println!(
        "node2 replay resumed: the gauge shows {resumed} bytes after {:?}",
        t0.elapsed()
    );

    // Votes agree with /status (two requests a moment apart: retry until a cycle did not
    // change them in between).
    let mut agreed = None;
    for _ in 0..20 {
        let (m, _) = scrape(n1).await;
        let s = json_at(n1, "/status").await.1;
        let from_metrics = (
            metric(&m, "primgr_votes", &[]),
            metric(&m, "primgr_votes_needed", &[]),
        );
        let from_status = (s["votes"].as_f64(), s["votes_needed"].as_f64());
        if from_metrics == from_status {
            agreed = Some(from_metrics);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("node1 votes / votes_needed, /metrics = /status: {agreed:?}");
    assert!(agreed.is_some_and(|(v, n)| v >= n && n == Some(2.0)));

    // Request counters grow with requests.
    let (before, _) = scrape(n1).await;
    for _ in 0..25 {
        http::get(n1, "/state", Duration::from_secs(1))
            .await
            .expect("/state");
    }
    let (after, _) = scrape(n1).await;
    let count = |m: &prometheus_parse::Scrape, e: &str| {
        metric(
            m,
            "primgr_http_requests_total",
            &[("endpoint", e), ("code", "200")],
        )
        .unwrap_or(0.0)
    };
    println!(
        "node1 requests: /state {} → {}, /metrics {} → {}",
        count(&before, "/state"),
        count(&after, "/state"),
        count(&before, "/metrics"),
        count(&after, "/metrics")
    );
    assert_eq!(count(&after, "/state") - count(&before, "/state"), 25.0);
    assert_eq!(count(&after, "/metrics") - count(&before, "/metrics"), 1.0);

    // Label values escaped: a voter whose name holds `"` and `\` (a row of repmgr.nodes in
    // dc1 at an address where nothing answers).
    let evil = "ops\"quote\\back";
    let ghost = Ipv4Addr::new(127, 0, lab.subnet(), 19);
    lab.psql(
        "node1",
        &format!(
            "INSERT INTO repmgr.nodes (node_id, upstream_node_id, active, node_name, type, \
             location, priority, conninfo, repluser, config_file) VALUES (9, 1, true, \
             $n${evil}$n$, 'standby', 'dc1', 0, 'host={ghost} port=5432 dbname=repmgr \
             user=repmgr', 'repmgr', '/nonexistent/repmgr.conf')"
        ),
    )
    .await
    .expect("insert the ghost voter");
    let t0 = Instant::now();
    let line = loop {
        let (_, text) = scrape(n1).await;
        if let Some(l) = text
            .lines()
            // The ghost's line (another voter may have failed a cycle at start too).
            .find(|l| l.starts_with("primgr_voter_failures_total{") && l.contains("ops"))
        {
            break l.to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no voter failure:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    lab.psql("node1", "DELETE FROM repmgr.nodes WHERE node_id = 9")
        .await
        .expect("delete the ghost voter");
    let labels = &line["primgr_voter_failures_total{".len()..line.rfind('}').expect("}")];
    let parsed = strict_labels(labels).expect("well escaped");
    println!("escaped label: {line}  → voter = {:?}", parsed[0].1);
    assert_eq!(labels, r#"voter="ops\"quote\\back""#);
    assert_eq!(parsed, [("voter".to_string(), evil.to_string())]);

    // A scrape is no database traffic: node1's transactions during 1000 scrapes grow no more
    // than during as long without scrapes (the poll cycles).
    let window = Duration::from_secs(4);
    let x0 = transactions(&lab).await;
    tokio::time::sleep(window).await;
    let x1 = transactions(&lab).await;
    let t0 = Instant::now();
    for _ in 0..1000 {
        let r = http::get(n1, "/metrics", Duration::from_secs(2))
            .await
            .expect("/metrics");
        assert_eq!(r.status, 200);
    }
    let scraping = t0.elapsed();
    tokio::time::sleep(window.saturating_sub(scraping)).await;
    let x2 = transactions(&lab).await;
    println!(
        "node1 transactions: {} in {window:?} without scrapes, {} in {:?} with 1000 scrapes \
         (scraping took {scraping:?})",
        x1 - x0,
        x2 - x1,
        window.max(scraping)
    );
    assert!(
        x2 - x1 <= (x1 - x0) * 2 + 20,
        "1000 scrapes made database transactions"
    );

    fleet.stop_all().await;
    lab.teardown().await.expect("teardown");
    println!("metrics_parse_and_agree: {:?}", t_start.elapsed());
}
