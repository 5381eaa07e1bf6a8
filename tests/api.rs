//! The HTTP surface of one daemon, as haproxy and curl meet it: methods, unknown paths, the
//! answers before the first cycle and with the database down, bounded shutdown, independent
//! daemons in one process, and `/realPrimary` fan-outs shared by simultaneous callers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Daemon;
use primgr::Config;
use primgr_lab::http::{self, RawResponse};
use primgr_lab::{Lab, LabSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A daemon whose database is a closed port: it is Down, but serves.
fn dbless(name: &str) -> Config {
    let mut c = Config::for_node(name).expect("valid");
    c.node.listen = "127.0.0.1:0".parse().expect("addr");
    c.db.conninfo = "host=127.0.0.1 port=1 dbname=repmgr user=repmgr".into();
    c.timing.interval = Duration::from_millis(200);
    c.db.db_timeout = Duration::from_millis(300);
    c.timing.peer_timeout = Duration::from_millis(300);
    c.timing.max_staleness = Duration::from_secs(2);
    c
}

/// Sends `METHOD path` with `Connection: close` (and `extra` header lines) and returns the
/// response as it came.
async fn raw(addr: std::net::SocketAddr, method: &str, path: &str, extra: &str) -> RawResponse {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
    http::request(addr, request.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

#[tokio::test]
async fn methods_paths_and_a_down_database() {
    let mut d = Daemon::start(dbless("solo")).await;
    // Wait for the first cycle: the reason changes from "starting" to the database error.
    let v = common::wait_json_at(d.addr, "/status", Duration::from_secs(5), |v| {
        v["reason"].as_str().unwrap_or("").contains("connect")
    })
    .await;
    assert_eq!(v["database"]["reachable"], false, "{v}");

    for path in ["/state", "/"] {
        let r = http::get(d.addr, path, Duration::from_secs(1))
            .await
            .expect("get");
        assert_eq!((r.status, r.body.as_str()), (503, r#"{"state":"Down"}"#));
    }
    let r = http::get(d.addr, "/primary", Duration::from_secs(1))
        .await
        .expect("get");
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, r#"{"Primary":null,"node":"solo","state":"Down"}"#)
    );
    let r = http::get(d.addr, "/realPrimary", Duration::from_secs(1))
        .await
        .expect("get");
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, r#"{"realPrimary":null}"#)
    );

    // haproxy's default check: OPTIONS / — same status, no body.
    let options = raw(d.addr, "OPTIONS", "/", "").await;
    assert_eq!(options.status, 503, "{options:?}");
    assert!(
        options.body.is_empty(),
        "OPTIONS carries no body: {options:?}"
    );
    let head = raw(d.addr, "HEAD", "/state", "").await;
    assert_eq!(head.status, 503, "{head:?}");
    assert!(head.body.is_empty(), "HEAD carries no body: {head:?}");
    assert_eq!(head.header("cache-control"), Some("no-store"), "{head:?}");
    assert_eq!(
        head.header("content-type"),
        Some("application/json"),
        "{head:?}"
    );

    let post = raw(d.addr, "POST", "/state", "Content-Length: 0\r\n").await;
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(
        post.header("allow").map(str::to_ascii_lowercase).as_deref(),
        Some("get, head, options"),
        "{post:?}"
    );
    let r = http::get(d.addr, "/nope", Duration::from_secs(1))
        .await
        .expect("get");
    assert_eq!(r.status, 404);
    let r = http::get(d.addr, "/state/extra", Duration::from_secs(1))
        .await
        .expect("get");
    assert_eq!(r.status, 404);
    d.stop().await;
}

#[tokio::test]
async fn shutdown_is_bounded_even_with_idle_and_slow_clients() {
    let mut d = Daemon::start(dbless("solo")).await;
    // An idle keep-alive connection after one request, and one that sent half a request.
    let mut idle = TcpStream::connect(d.addr).await.expect("connect");
    idle.write_all(b"GET /state HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.expect("read");
    assert!(n > 0);
    let mut slow = TcpStream::connect(d.addr).await.expect("connect");
    slow.write_all(b"GET /state HTTP/1.1\r\nHo")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let took = d.stop().await;
    println!("shutdown with an idle and a half-sent connection took {took:?}");
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    // The listener is closed: new connections are refused.
    assert!(TcpStream::connect(d.addr).await.is_err());
}

#[tokio::test]
async fn two_daemons_in_one_process_share_nothing() {
    let mut a = Daemon::start(dbless("alpha")).await;
    let mut b = Daemon::start(dbless("beta")).await;
    for (d, name) in [(&a, "alpha"), (&b, "beta")] {
        let r = http::get(d.addr, "/status", Duration::from_secs(1))
            .await
            .expect("status");
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        assert_eq!(v["node"], name);
    }
    a.stop().await;
    // b keeps serving after a stopped.
    let r = http::get(b.addr, "/state", Duration::from_secs(1))
        .await
        .expect("b still serves");
    assert_eq!(r.status, 503);
    b.stop().await;
}

/// A fake peer that answers `/state` as a standby after `delay`, counting requests.
async fn slow_standby(delay: Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                if !matches!(
                    http::read_head(&mut s, &mut got, 16 * 1024).await,
                    Ok(Some(_))
                ) {
                    return;
                }
                if got.starts_with(b"GET /state ") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                // The slow part of the fake standby: it answers after `delay`.
                tokio::time::sleep(delay).await;
                let reply = http::response(
                    "202 Accepted",
                    "Connection: close\r\n",
                    br#"{"state":"Standby"}"#,
                );
                let _ = s.write_all(&reply).await;
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_real_primary_requests_share_one_fan_out() {
    let lab = Lab::build(LabSpec::standard(33)).await.expect("lab builds");
    let mut config = common::config_for(&lab, "node1");
    config.timing.peer_timeout = Duration::from_millis(800);
    let mut counters = Vec::new();
    for peer in ["node2", "node3", "node4"] {
        let (addr, count) = slow_standby(Duration::from_millis(300)).await;
        config.peers.insert(
            peer.to_string(),
            format!("http://{addr}").parse().expect("uri"),
        );
        counters.push(count);
    }
    let mut d = Daemon::start(config).await;
    // Wait until node1 knows the membership (its first successful cycle).
    common::wait_json_at(d.addr, "/status", Duration::from_secs(10), |v| {
        v["members"].as_array().map(|m| m.len()) == Some(4)
    })
    .await;
    let before: Vec<usize> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let requests = 50;
    let calls = (0..requests).map(|_| http::get(d.addr, "/realPrimary", Duration::from_secs(3)));
    let answers = futures_util::future::join_all(calls).await;
    for a in &answers {
        let a = a.as_ref().expect("answered");
        // The fake peers are standbys and node1 has no votes from them: nobody is Primary.
        assert_eq!(a.status, 503, "{}", a.body);
    }
    let asked: Vec<usize> = counters
        .iter()
        .zip(&before)
        .map(|(c, b)| c.load(Ordering::SeqCst) - b)
        .collect();
    println!("{requests} simultaneous /realPrimary requests asked each peer {asked:?} times");
    for n in &asked {
        assert!(
            (1..=2).contains(n),
            "{requests} simultaneous requests asked a peer {n} times"
        );
    }
    d.stop().await;
    lab.teardown().await.expect("teardown");
}
