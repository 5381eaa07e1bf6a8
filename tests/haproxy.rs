//! haproxy (Debian's 2.6) running the shipped `contrib/haproxy.cfg` — rendered for the lab's
//! addresses only, every option as shipped — in front of a real four-node repmgr cluster with a
//! primgr per node. Real PostgreSQL clients (tokio-postgres) connect through haproxy's write
//! and read ports and ask the server where they landed: in normal operation, when the
//! primary's primgr stops (open sessions are cut), after a failover, during split brain, and
//! when haproxy itself starts during split brain. haproxy's own view (stats socket and
//! `/stats;csv`) must agree.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::clients::{
    Attempt, Landing, SAMPLE_EVERY, SHIPPED, address_book, assert_haproxy_view, connect,
    haproxy_settle, land, sample, shipped, tally,
};
use common::{Daemon, Fleet, config_for, settle_bound};
use primgr_lab::haproxy::{self, Haproxy, READ, WRITE};
use primgr_lab::{Lab, LabSpec, StopMode, subnet_of};

/// The shipped file is a valid haproxy configuration as it stands (placeholder addresses).
#[tokio::test]
async fn shipped_config_is_valid() {
    let out = haproxy::check_config(std::path::Path::new(SHIPPED))
        .await
        .expect("haproxy -c accepts contrib/haproxy.cfg");
    println!("haproxy -c -f contrib/haproxy.cfg: {out}");
    assert_eq!(
        shipped(),
        haproxy::SHIPPED_CONFIG,
        "the demo embeds the same file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_only_the_real_primary() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "haproxy::writes_reach_only_the_real_primary",
    )))
    .await
    .expect("lab builds");
    let mut fleet = Fleet::start(&lab).await;
    let book = address_book(&lab);
    fleet.wait_normal().await;

    let mut hp = Haproxy::start(&lab, &shipped())
        .await
        .expect("haproxy starts with the rendered shipped config");
    let out = haproxy::check_config(hp.config_path())
        .await
        .expect("the rendered config is valid");
    println!("haproxy -c -f {}: {out}", hp.config_path().display());
    let (write, read) = (
        hp.listener(WRITE).expect("write listener"),
        hp.listener(READ).expect("read listener"),
    );
    let t = hp
        .wait_up(WRITE, &["node1"], haproxy_settle())
        .await
        .expect("write backend settles");
    hp.wait_up(READ, &["node2", "node3", "node4"], haproxy_settle())
        .await
        .expect("read backend settles");
    println!("haproxy started; backends settled after {t:?}");

    // 1. Every write connection lands on the primary, every read connection on a standby;
    // with leastconn and the sessions held open, reads spread over all three standbys.
    for i in 0..20 {
        let l = land(write, &book)
            .await
            .unwrap_or_else(|e| panic!("write #{i}: {e}"));
        assert_eq!(
            l,
            Landing {
                node: "node1".into(),
                in_recovery: false
            },
            "write #{i}"
        );
    }
    let mut held = Vec::new();
    let mut reads: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..30 {
        let (client, l) = connect(read, &book)
            .await
            .unwrap_or_else(|e| panic!("read #{i}: {e}"));
        assert!(
            l.in_recovery && l.node != "node1",
            "read #{i} landed on {l:?}"
        );
        *reads.entry(l.node).or_insert(0) += 1;
        held.push(client);
    }
    drop(held);
    println!("normal: 20/20 writes on node1; 30 reads on {reads:?}");
    assert_eq!(
        reads.keys().map(String::as_str).collect::<Vec<_>>(),
        ["node2", "node3", "node4"],
        "reads spread over every standby"
    );
    // 4. haproxy's own view agrees: exactly one server UP for writes.
    assert_haproxy_view(&hp, WRITE, &["node1"]).await;
    assert_haproxy_view(&hp, READ, &["node2", "node3", "node4"]).await;

    // on-marked-down shutdown-sessions: when node1's primgr stops answering, haproxy takes
    // node1 out and closes the sessions it carries, though node1's database is still up.
    let (session, l) = connect(write, &book).await.expect("write session");
    assert_eq!(l.node, "node1");
    fleet
        .daemons
        .get_mut("node1")
        .expect("node1 daemon")
        .stop()
        .await;
    let stopped = Instant::now();
    loop {
        if session.simple_query("SELECT 1").await.is_err() {
            break;
        }
        assert!(
            stopped.elapsed() < haproxy_settle(),
            "the write session through haproxy survived node1 being marked down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "node1's primgr stopped -> its write session closed by haproxy after {:?}",
        stopped.elapsed()
    );
    drop(session);
    assert_haproxy_view(&hp, WRITE, &[]).await;
    let refused = land(write, &book).await;
    assert!(
        refused.is_err(),
        "a write landed with no server UP: {refused:?}"
    );
    fleet.daemons.insert(
        "node1".into(),
        Daemon::start(config_for(&lab, "node1")).await,
    );
    hp.wait_up(WRITE, &["node1"], settle_bound() + haproxy_settle())
        .await
        .expect("node1 back in the write backend");

    // 2. Failover: node1 stops hard, node2 is promoted, node3 and node4 follow. New write
    // connections every 50 ms from the promotion on: the first one that lands on node2.
    lab.stop("node1", StopMode::Immediate)
        .await
        .expect("stop node1");
    lab.promote("node2").await.expect("promote node2");
    let promoted = Instant::now();
    let sampler = tokio::spawn(sample(
        write,
        book.clone(),
        promoted,
        Duration::ZERO,
        Duration::from_secs(60),
        |s: &[Attempt]| {
            s.iter()
                .any(|s| matches!(&s.outcome, Ok(l) if l.node == "node2"))
        },
    ));
    lab.follow("node3").await.expect("node3 follows");
    lab.follow("node4").await.expect("node4 follows");
    let followed = promoted.elapsed();
    let samples = sampler.await.expect("sampler");
    let first = samples
        .iter()
        .find(|s| s.outcome.is_ok())
        .expect("a write landed within 60 s of the promotion");
    let landed = first.outcome.as_ref().expect("ok");
    assert_eq!(
        landed,
        &Landing {
            node: "node2".into(),
            in_recovery: false
        },
        "first write after the failover"
    );
    let (on, failed) = tally(&samples);
    println!(
        "failover: promotion -> first write lands on node2 after {:?} ({} attempts refused \
         before; node3 and node4 had followed after {followed:?}); landings {on:?}",
        first.at, failed
    );
    assert_eq!(
        on.keys().collect::<Vec<_>>(),
        ["node2"],
        "writes after the failover"
    );
    hp.wait_up(WRITE, &["node2"], settle_bound() + haproxy_settle())
        .await
        .expect("write backend: node2 only");
    hp.wait_up(READ, &["node3", "node4"], settle_bound() + haproxy_settle())
        .await
        .expect("read backend: node3, node4");
    assert_haproxy_view(&hp, WRITE, &["node2"]).await;

    // 3. Split brain: node1 comes back read-write without rejoin. A new write connection
    // every 50 ms for 10 s: none may land on node1, and node2 keeps taking every write.
    lab.start("node1").await.expect("start node1");
    let restarted = Instant::now();
    assert_eq!(
        lab.psql("node1", "SELECT pg_is_in_recovery()")
            .await
            .expect("psql node1"),
        "f",
        "node1 is a stale read-write primary"
    );
    let window = Duration::from_secs(10);
    let samples = sample(write, book.clone(), restarted, window, window, |_| true).await;
    let (on, failed) = tally(&samples);
    println!(
        "split brain: {} write connections in {:?} (one every {SAMPLE_EVERY:?}): {on:?}, \
         {failed} failed, 0 on node1",
        samples.len(),
        window
    );
    assert!(
        samples.len() >= 100,
        "only {} samples in {window:?}",
        samples.len()
    );
    assert!(
        !on.contains_key("node1"),
        "a write landed on the stale primary: {on:?}"
    );
    assert_eq!(failed, 0, "writes failed during split brain: {samples:?}");
    assert_eq!(on.keys().collect::<Vec<_>>(), ["node2"]);
    for i in 0..10 {
        let l = land(read, &book)
            .await
            .unwrap_or_else(|e| panic!("read #{i}: {e}"));
        assert!(
            l.in_recovery && l.node != "node1",
            "read #{i} during split brain: {l:?}"
        );
    }
    // 4. haproxy agrees: node1 is out of both backends, node2 alone takes writes.
    assert_haproxy_view(&hp, WRITE, &["node2"]).await;
    assert_haproxy_view(&hp, READ, &["node3", "node4"]).await;
    let node1: Vec<_> = hp
        .show_stat()
        .await
        .expect("show stat")
        .into_iter()
        .filter(|s| s.server == "node1")
        .collect();
    // The write pool checks /state (509 Unknown), the read pool /replica (503: not a replica).
    assert!(
        node1.iter().all(|s| s.status == "DOWN"
            && s.check_code == Some(if s.proxy == WRITE { 509 } else { 503 })),
        "node1 in haproxy during split brain: {node1:?}"
    );

    // 3b. haproxy (re)started during split brain. haproxy 2.6 starts every server UP until
    // its first checks; the shipped guard refuses writes until exactly one server is UP.
    let stop_took = hp.stop().await.expect("haproxy stops");
    hp = Haproxy::start(&lab, &shipped())
        .await
        .expect("haproxy starts again");
    let started = Instant::now();
    let samples = sample(
        write,
        book.clone(),
        started,
        Duration::from_secs(5),
        Duration::from_secs(30),
        |s: &[Attempt]| s.iter().any(|s| s.outcome.is_ok()),
    )
    .await;
    let (on, failed) = tally(&samples);
    let first_ok = samples.iter().find(|s| s.outcome.is_ok()).map(|s| s.at);
    println!(
        "haproxy restarted during split brain (stop took {stop_took:?}): {} write connections \
         in the first {:?}: {on:?}, {failed} refused, first write on node2 after {first_ok:?}",
        samples.len(),
        samples.last().map(|s| s.at).unwrap_or_default()
    );
    assert!(
        !on.contains_key("node1"),
        "a write landed on the stale primary: {on:?}"
    );
    assert_eq!(
        on.keys().collect::<Vec<_>>(),
        ["node2"],
        "writes after haproxy's start"
    );
    assert_haproxy_view(&hp, WRITE, &["node2"]).await;

    hp.stop().await.expect("haproxy stops");
    fleet.stop_all().await;
    lab.teardown().await.expect("teardown");
}
