//! Two sites cut apart, on a real cluster (issue 19): dc1 {node1, node2}, dc2 {node3, node4}
//! and a repmgr witness in dc3, one primgr daemon per node (child processes of this build,
//! with the lab's timings: `--interval 500ms --db-timeout 1s --peer-timeout 500ms`), one
//! haproxy per site running the shipped `contrib/haproxy.cfg` from an address of its site.
//!
//! The cut separates dc1 from dc2 for everything that crosses it: the daemons' requests (they
//! bind their node's address, so iptables DROP rules between the node addresses cut them),
//! each site's haproxy from the other site's nodes (it leaves from its own address), and
//! PostgreSQL's replication and repmgr to node1 (the `postgres` user cannot reach
//! node1:5432, so `repmgr standby promote` on node3 succeeds while node1 runs read-write).
//! node3 is then promoted and node4 follows it: two databases take writes, one per site.
//!
//! - `vote_scope = "site"` (the default, the seed's rule): both node1 and node3 answer 200,
//!   one per site, and writes land on both through the two haproxies: what the README says
//!   site scope does, asserted as such.
//! - `vote_scope = "cluster"`: never two 200s anywhere at any sample (every daemon's `/state`
//!   sampled every 20 ms through the whole event, no window excused); while the witness
//!   reaches both sites and names node1, node1 keeps its 200 at every sample and node3 never
//!   gets one; once the witness reaches only dc2 and names node3 (registered again against it,
//!   as its repmgrd would), node1 stops within `vote_lease + interval` and node3 answers 200
//!   within `vote_lease + handoff_delay·(1+ρ) + 3 × interval + peer_timeout` (the bound of
//!   docs/guarantees.md); through the two haproxies no write lands on node1 once one landed on
//!   node3.
//!
//! Latency between sites (the kernel has no `sch_netem`, so a delaying TCP proxy of the lab,
//! `primgr_lab::delay`, carries it): every daemon reaches the daemons of the other sites only
//! through a proxy that holds each chunk of each direction 30–80 ms (`[peers]` entries, one
//! per distant node, given as `--peer NAME=URL`); what else crosses the sites (replication,
//! haproxy's checks within a site) is not delayed. A healthy primary in cluster scope then
//! keeps its 200 at every sample for `PRIMGR_SCOPE_STEADY_SECS` (default 120; the closing
//! note reports a 10-minute run), and `--check-config` measures the round trip to every voter
//! and refuses a `peer_timeout` the distance would break, naming the key and the voter.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::clients::{Attempt, address_book, sample_every, shipped};
use common::sampler::{Sample, Sampler};
use common::{Daemon, INTERVAL, PEER_TIMEOUT, PRIMGR, settle_bound, timing_flags};
use primgr::Config;
use primgr_lab::delay::{Delay, DelayProxy};
use primgr_lab::haproxy::{Haproxy, WRITE};
use primgr_lab::{DAEMON_PORT, Lab, LabSpec, NodeSpec, subnet_of};

const DC1: [&str; 2] = ["node1", "node2"];
const DC2: [&str; 2] = ["node3", "node4"];
const WITNESS: &str = "witness";
/// Every daemon's `/state`, this often.
const PERIOD: Duration = Duration::from_millis(20);
/// A write session through each haproxy, this often.
const WRITE_EVERY: Duration = Duration::from_millis(50);

/// The defaults the daemons run with (`vote_lease`, `handoff_delay`, ρ).
fn defaults() -> Config {
    Config::for_node("any").expect("defaults")
}

/// dc1 {node1, node2}, dc2 {node3, node4}, a witness in dc3; node1 is the primary.
async fn two_sites(subnet: u8) -> Lab {
    Lab::build(
        LabSpec::new(
            subnet,
            vec![
                NodeSpec::new("node1", "dc1"),
                NodeSpec::new("node2", "dc1"),
                NodeSpec::new("node3", "dc2"),
                NodeSpec::new("node4", "dc2"),
            ],
        )
        .with_witness(WITNESS, "dc3"),
    )
    .await
    .expect("lab builds")
}

/// `--vote-scope <scope>` (nothing for the default).
fn scope_flags(scope: Option<&str>) -> Vec<String> {
    scope
        .map(|s| vec!["--vote-scope".to_string(), s.to_string()])
        .unwrap_or_default()
}

/// A daemon per node (witness included) as a process of this build with the lab's timings and
/// `extra` flags for each node, spawned and answering.
async fn start_daemons(lab: &Lab, extra: impl Fn(&str) -> Vec<String>) -> BTreeMap<String, Daemon> {
    let mut daemons = BTreeMap::new();
    for node in lab.node_names() {
        let d = lab
            .daemon(&node, PRIMGR)
            .and_then(|d| d.args(timing_flags()).args(extra(&node)).spawn())
            .unwrap_or_else(|e| panic!("spawn {node}: {e:#}"));
        daemons.insert(node, d);
    }
    for d in daemons.values_mut() {
        d.wait_listening(Duration::from_secs(10)).await;
    }
    daemons
}

/// Every node's `/state` code (0: no answer).
async fn codes(lab: &Lab) -> BTreeMap<String, u16> {
    let mut out = BTreeMap::new();
    for node in lab.node_names() {
        let r =
            primgr_lab::http::get(lab.daemon_addr(&node), "/state", Duration::from_secs(1)).await;
        out.insert(node, r.map(|r| r.status).unwrap_or(0));
    }
    out
}

/// Waits until exactly the nodes `want` answer 200; returns how long it took.
async fn wait_200s(lab: &Lab, want: &[&str], within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let c = codes(lab).await;
        let mut at: Vec<&str> = c
            .iter()
            .filter(|(_, code)| **code == 200)
            .map(|(n, _)| n.as_str())
            .collect();
        at.sort_unstable();
        if at == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "after {within:?} the 200s are not exactly {want:?}: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node` answers 200 (whoever else does); returns how long it took.
async fn wait_200_on(lab: &Lab, node: &str, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let c = codes(lab).await;
        if c.get(node) == Some(&200) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "after {within:?} {node} is not 200: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The address of site `n`'s haproxy: `127.0.<subnet>.(100 + n)` (`.100` is the lab's own
/// proxy address, which no test here uses).
fn haproxy_address(lab: &Lab, n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, lab.subnet(), 100 + n)
}

/// iptables DROP between `a` and `b`, both directions, in the lab's chain.
async fn drop_between(lab: &Lab, a: Ipv4Addr, b: Ipv4Addr) {
    for (s, d) in [(a, b), (b, a)] {
        let (s, d) = (s.to_string(), d.to_string());
        lab.add_rule(&["-s", &s, "-d", &d, "-j", "DROP"])
            .await
            .unwrap_or_else(|e| panic!("drop {s} -> {d}: {e:#}"));
    }
}

/// Cuts dc1 from dc2: the daemons of the two sites from each other, each site's haproxy from
/// the other site's nodes, and replication and repmgr to node1. The witness is not touched.
async fn cut_sites(lab: &Lab, hp1: Ipv4Addr, hp2: Ipv4Addr) {
    for a in DC1 {
        for b in DC2 {
            drop_between(lab, lab.addr(a), lab.addr(b)).await;
        }
        drop_between(lab, hp2, lab.addr(a)).await;
    }
    for b in DC2 {
        drop_between(lab, hp1, lab.addr(b)).await;
    }
    lab.cut_replication_to("node1")
        .await
        .expect("cut replication and repmgr to node1");
}

/// node3 promoted (it cannot reach node1), node4 following it.
async fn promote_in_dc2(lab: &Lab) {
    lab.promote("node3")
        .await
        .expect("repmgr standby promote node3");
    lab.follow("node4")
        .await
        .expect("repmgr standby follow node4");
}

/// A write session that landed on a read-write node: (node, started, answered).
type Landed = (String, Duration, Duration);

/// The write sessions that landed on a read-write node, and the failed ones; a session on a
/// standby fails the test (the write pool holds only 200s).
fn landings(attempts: &[Attempt]) -> (Vec<Landed>, usize) {
    let mut ok = Vec::new();
    let mut failed = 0;
    for a in attempts {
        match &a.outcome {
            Ok(l) if !l.in_recovery => ok.push((l.node.clone(), a.started, a.at)),
            Ok(l) => panic!("a write session reached standby {}: {a:?}", l.node),
            Err(_) => failed += 1,
        }
    }
    (ok, failed)
}

fn count_on(ok: &[Landed], node: &str) -> usize {
    ok.iter().filter(|l| l.0 == node).count()
}

/// Every node's span of 200 samples: from the start of its first to the end of its last.
fn spans(samples: &[Sample], names: &[String]) -> BTreeMap<String, (Duration, Duration, usize)> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.status == Some(200)) {
        let e = out
            .entry(names[s.target].clone())
            .or_insert((s.at, s.at + s.latency, 0));
        e.0 = e.0.min(s.at);
        e.1 = e.1.max(s.at + s.latency);
        e.2 += 1;
    }
    out
}

/// Pairs of nodes whose spans of 200s overlap: two 200s at once, counted as conservatively as
/// the samples allow (a span covers every instant between a node's first and last 200).
fn overlaps(spans: &BTreeMap<String, (Duration, Duration, usize)>) -> Vec<String> {
    let v: Vec<_> = spans.iter().collect();
    let mut out = Vec::new();
    for (i, (a, sa)) in v.iter().enumerate() {
        for (b, sb) in &v[i + 1..] {
            if sa.0 <= sb.1 && sb.0 <= sa.1 {
                out.push(format!("{a} {sa:?} and {b} {sb:?}"));
            }
        }
    }
    out
}

/// Starts both haproxies (dc1's at `.101`, dc2's at `.102`) and waits until each one's write
/// pool is node1.
async fn haproxies(lab: &Lab) -> (Haproxy, Haproxy) {
    let template = shipped();
    let hp1 = Haproxy::start_site(lab, &template, "dc1", haproxy_address(lab, 1))
        .await
        .expect("haproxy of dc1");
    let hp2 = Haproxy::start_site(lab, &template, "dc2", haproxy_address(lab, 2))
        .await
        .expect("haproxy of dc2");
    for hp in [&hp1, &hp2] {
        hp.wait_up(WRITE, &["node1"], settle_bound())
            .await
            .expect("write pool: node1");
    }
    (hp1, hp2)
}

/// Write sessions through `hp`'s write port every [`WRITE_EVERY`] until `stop` holds.
async fn writes_until(
    lab: &Lab,
    hp: &Haproxy,
    t0: Instant,
    max: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<Attempt> {
    let addr = hp.listener(WRITE).expect("write listener");
    sample_every(
        WRITE_EVERY,
        addr,
        address_book(lab),
        t0,
        Duration::ZERO,
        max,
        |_| stop.load(std::sync::atomic::Ordering::SeqCst),
    )
    .await
}

/// The sampler over every node's daemon (targets in `lab.node_names()` order).
fn sample_all(lab: &Lab, t0: Instant) -> (Sampler, Vec<String>) {
    let names = lab.node_names();
    let targets: Vec<SocketAddr> = names.iter().map(|n| lab.daemon_addr(n)).collect();
    (
        Sampler::start(t0, targets, "/state", PERIOD, Duration::from_secs(1)),
        names,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_scope_gives_two_200s_one_per_site() {
    let lab = two_sites(subnet_of("scope::site_scope_gives_two_200s_one_per_site")).await;
    let _daemons = start_daemons(&lab, |_| Vec::new()).await;
    wait_200s(&lab, &["node1"], settle_bound() + INTERVAL * 4).await;
    let (hp1, hp2) = haproxies(&lab).await;
    let t0 = Instant::now();
    let (sampler, names) = sample_all(&lab, t0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let max = Duration::from_secs(90);
    let (w1, w2, (cut, promoted, both)) = tokio::join!(
        writes_until(&lab, &hp1, t0, max, &stop),
        writes_until(&lab, &hp2, t0, max, &stop),
        async {
            let cut = t0.elapsed();
            cut_sites(&lab, haproxy_address(&lab, 1), haproxy_address(&lab, 2)).await;
            promote_in_dc2(&lab).await;
            let promoted = t0.elapsed();
            // Site scope: dc2's majority is {node3, node4}; node3 answers 200 beside node1.
            let took = wait_200s(&lab, &["node1", "node3"], settle_bound() + INTERVAL * 4).await;
            // Then 3 s of both sites writing.
            tokio::time::sleep(Duration::from_secs(3)).await;
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            (cut, promoted, took)
        }
    );
    let samples = sampler.stop();
    let spans = spans(&samples, &names);
    let overlapping = overlaps(&spans);
    let (ok1, failed1) = landings(&w1);
    let (ok2, failed2) = landings(&w2);
    let first3 = spans.get("node3").map(|s| s.0).expect("node3 answered 200");
    let both_after =
        |ok: &[Landed], node: &str| ok.iter().filter(|l| l.0 == node && l.1 >= first3).count();
    println!(
        "site scope: {} samples of {} daemons every {PERIOD:?}; 200s by node {:?}; cut at \
         {cut:?}, node3 promoted at {promoted:?}, both 200 {both:?} later; overlapping pairs: \
         {}",
        samples.len(),
        names.len(),
        spans
            .iter()
            .map(|(n, s)| (n.as_str(), s.2))
            .collect::<Vec<_>>(),
        overlapping.len()
    );
    println!(
        "site scope, writes: dc1's haproxy {} sessions ({} on node1, {} on node1 after node3's \
         first 200, {failed1} failed); dc2's haproxy {} sessions ({} on node1 before the cut, \
         {} on node3, {failed2} failed)",
        w1.len(),
        count_on(&ok1, "node1"),
        both_after(&ok1, "node1"),
        w2.len(),
        count_on(&ok2, "node1"),
        count_on(&ok2, "node3"),
    );
    // As documented: two 200s at once, one per site, and never a standby's or the witness's.
    assert_eq!(
        spans.keys().collect::<Vec<_>>(),
        ["node1", "node3"],
        "the 200s of site scope"
    );
    assert_eq!(
        overlapping.len(),
        1,
        "node1 and node3 at once: {overlapping:?}"
    );
    // And writes on both sides after node3's first 200: the data diverges.
    assert!(
        both_after(&ok1, "node1") > 0,
        "no write on node1 after node3's 200"
    );
    assert!(
        both_after(&ok2, "node3") > 0,
        "no write on node3 after its 200"
    );
    drop((hp1, hp2));
    lab.heal_all().await.expect("heal");
    lab.teardown().await.expect("teardown");
}

/// The bound within which the side with the witness gains the 200 once the witness names its
/// candidate (docs/guarantees.md): the witness sees its metadata change within an interval,
/// its promise to the old primary runs out within `vote_lease` (it cannot release it across
/// the cut), the new primary's vote then settles after `handoff_delay`·(1+ρ), and its next
/// cycle (an interval, then `peer_timeout`) counts it; one interval more for a loaded machine.
fn gain_bound() -> Duration {
    let c = defaults();
    c.leases.vote_lease
        + c.leases.handoff_delay.mul_f64(1.0 + c.leases.drift)
        + INTERVAL * 3
        + PEER_TIMEOUT
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scope_never_two_200s_and_the_witness_side_keeps_or_gains_it() {
    let lab = two_sites(subnet_of(
        "scope::cluster_scope_never_two_200s_and_the_witness_side_keeps_or_gains_it",
    ))
    .await;
    let _daemons = start_daemons(&lab, |_| scope_flags(Some("cluster"))).await;
    wait_200s(&lab, &["node1"], settle_bound() + INTERVAL * 4).await;
    let (hp1, hp2) = haproxies(&lab).await;
    let c = defaults();
    let t0 = Instant::now();
    let (sampler, names) = sample_all(&lab, t0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let max = Duration::from_secs(120);
    let hold_for = gain_bound();
    let (w1, w2, (cut, promoted, moved, gained)) = tokio::join!(
        writes_until(&lab, &hp1, t0, max, &stop),
        writes_until(&lab, &hp2, t0, max, &stop),
        async {
            // 1. The witness reaches both sites and names node1: node1 holds its 200, node3
            //    never gets one, for as long as node3 would need to gain it.
            let cut = t0.elapsed();
            cut_sites(&lab, haproxy_address(&lab, 1), haproxy_address(&lab, 2)).await;
            promote_in_dc2(&lab).await;
            let promoted = t0.elapsed();
            tokio::time::sleep(hold_for).await;
            // 2. The witness loses dc1 and names node3 (registered again against it, as its
            //    repmgrd would): dc2 holds the majority of the cluster now.
            for a in DC1 {
                drop_between(&lab, lab.addr(WITNESS), lab.addr(a)).await;
            }
            lab.register_witness("node3")
                .await
                .expect("witness registered against node3");
            let moved = t0.elapsed();
            wait_200_on(&lab, "node3", gain_bound() + Duration::from_secs(10)).await;
            let gained = t0.elapsed();
            // Then 3 s of writes on dc2's side.
            tokio::time::sleep(Duration::from_secs(3)).await;
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            (cut, promoted, moved, gained)
        }
    );
    let samples = sampler.stop();
    let spans = spans(&samples, &names);
    let overlapping = overlaps(&spans);
    let node1 = names.iter().position(|n| n == "node1").expect("node1");
    let in_phase1 = |s: &&Sample| s.at >= cut && s.at + s.latency <= moved;
    let node1_phase1: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.target == node1)
        .filter(in_phase1)
        .collect();
    let node1_lost: Vec<&&Sample> = node1_phase1
        .iter()
        .filter(|s| s.status != Some(200))
        .collect();
    let (last1, first3) = (
        spans.get("node1").map(|s| s.1).expect("node1 answered 200"),
        spans.get("node3").map(|s| s.0).expect("node3 answered 200"),
    );
    let (ok1, failed1) = landings(&w1);
    let (ok2, failed2) = landings(&w2);
    let all: Vec<&Landed> = ok1.iter().chain(&ok2).collect();
    let first_write3 = all
        .iter()
        .filter(|l| l.0 == "node3")
        .map(|l| l.1)
        .min()
        .expect("writes landed on node3");
    let late_on_1: Vec<&&Landed> = all
        .iter()
        .filter(|l| l.0 == "node1" && l.2 >= first_write3)
        .collect();
    println!(
        "cluster scope: {} samples of {} daemons every {PERIOD:?}; 200s by node {:?}; overlapping \
         pairs: {}",
        samples.len(),
        names.len(),
        spans
            .iter()
            .map(|(n, s)| (n.as_str(), s.2))
            .collect::<Vec<_>>(),
        overlapping.len()
    );
    println!(
        "cluster scope, witness reaches both: cut at {cut:?}, node3 promoted at {promoted:?}; \
         node1 200 in {} of {} samples until {moved:?}; node3's first 200 at {first3:?}",
        node1_phase1.len() - node1_lost.len(),
        node1_phase1.len(),
    );
    println!(
        "cluster scope, witness reaches dc2 only and names node3 at {moved:?}: node1's last 200 \
         ends {:?} later (bound vote_lease + interval = {:?}), node3's first 200 {:?} later \
         (bound {:?}; seen by the test at {gained:?})",
        last1.saturating_sub(moved),
        c.leases.vote_lease + INTERVAL,
        first3.saturating_sub(moved),
        gain_bound()
    );
    println!(
        "cluster scope, writes: dc1's haproxy {} sessions ({} on node1, {failed1} failed); \
         dc2's haproxy {} sessions ({} on node1, {} on node3, {failed2} failed); on node1 after \
         the first on node3: {}",
        w1.len(),
        count_on(&ok1, "node1"),
        w2.len(),
        count_on(&ok2, "node1"),
        count_on(&ok2, "node3"),
        late_on_1.len()
    );
    assert!(overlapping.is_empty(), "two 200s at once: {overlapping:?}");
    assert!(
        node1_lost.is_empty(),
        "node1 (the side with the witness) lost its 200: {:?}",
        &node1_lost[..node1_lost.len().min(5)]
    );
    assert!(
        first3 >= moved,
        "node3 answered 200 before the witness named it"
    );
    assert!(
        last1.saturating_sub(moved) <= c.leases.vote_lease + INTERVAL,
        "node1 answered 200 {:?} after the witness left it",
        last1.saturating_sub(moved)
    );
    assert!(
        first3.saturating_sub(moved) <= gain_bound(),
        "node3 gained its 200 {:?} after the witness named it (bound {:?})",
        first3.saturating_sub(moved),
        gain_bound()
    );
    assert!(
        late_on_1.is_empty(),
        "writes on node1 after the first on node3: {late_on_1:?}"
    );
    drop((hp1, hp2));
    lab.heal_all().await.expect("heal");
    lab.teardown().await.expect("teardown");
}

/// Each direction between two sites: 30–80 ms per chunk (a round trip 60–160 ms).
fn wan() -> Delay {
    Delay::between(Duration::from_millis(30), Duration::from_millis(80))
}

/// The site of a node of [`two_sites`].
fn site_of(node: &str) -> &'static str {
    if DC1.contains(&node) {
        "dc1"
    } else if DC2.contains(&node) {
        "dc2"
    } else {
        "dc3"
    }
}

/// The sites apart: one delaying proxy per node, at `127.0.<subnet>.(50 + N)`, in front of
/// node N's daemon; a daemon of another site asks node N there (a `[peers]` entry).
struct Distant {
    proxies: BTreeMap<String, DelayProxy>,
}

impl Distant {
    async fn start(lab: &Lab, delay: Delay) -> Distant {
        let mut proxies = BTreeMap::new();
        for (i, node) in lab.node_names().into_iter().enumerate() {
            let at = SocketAddr::from((
                Ipv4Addr::new(127, 0, lab.subnet(), 51 + i as u8),
                DAEMON_PORT,
            ));
            let p = DelayProxy::start(at, lab.daemon_addr(&node), None, delay)
                .await
                .unwrap_or_else(|e| panic!("proxy of {node}: {e:#}"));
            proxies.insert(node, p);
        }
        Distant { proxies }
    }

    /// `--peer NAME=URL` for every node of another site than `node`: its proxy.
    fn peer_flags(&self, node: &str) -> Vec<String> {
        self.proxies
            .iter()
            .filter(|(other, _)| site_of(other) != site_of(node))
            .flat_map(|(other, p)| ["--peer".to_string(), format!("{other}=http://{}", p.addr())])
            .collect()
    }

    /// Connections and bytes each proxy carried.
    fn stats(&self) -> Vec<(String, primgr_lab::delay::ProxyStats)> {
        self.proxies
            .iter()
            .map(|(n, p)| (n.clone(), p.stats()))
            .collect()
    }
}

/// The lab of [`two_sites`] with [`Distant`] sites, every daemon in cluster scope with the
/// default timings (`interval` 1s, `db_timeout` 1s, `peer_timeout` 500ms, `vote_lease` 3s),
/// node1 the confirmed primary.
async fn distant_cluster(subnet: u8) -> (Lab, Distant, BTreeMap<String, Daemon>) {
    let lab = two_sites(subnet).await;
    let distant = Distant::start(&lab, wan()).await;
    let mut daemons = BTreeMap::new();
    for node in lab.node_names() {
        let d = lab
            .daemon(&node, PRIMGR)
            .and_then(|d| {
                d.args(scope_flags(Some("cluster")))
                    .args(distant.peer_flags(&node))
                    .spawn()
            })
            .unwrap_or_else(|e| panic!("spawn {node}: {e:#}"));
        daemons.insert(node, d);
    }
    for d in daemons.values_mut() {
        d.wait_listening(Duration::from_secs(10)).await;
    }
    let c = defaults();
    let within = settle_bound() + c.timing.interval * 4;
    wait_200s(&lab, &["node1"], within).await;
    (lab, distant, daemons)
}

/// A healthy primary in cluster scope, with 30–80 ms each way to every voter of another site
/// (three of its four voters), keeps its 200 at every sample: `PRIMGR_SCOPE_STEADY_SECS`
/// seconds (default 120) of node1's `/state` every 50 ms; the vote round trips are read from
/// node1's `/status` (`voters[].latency_ms`, the time from sending the request to the answer)
/// once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_primary_keeps_its_200_with_distant_voters() {
    let secs: u64 = std::env::var("PRIMGR_SCOPE_STEADY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let (lab, distant, _daemons) = distant_cluster(subnet_of(
        "scope::a_healthy_primary_keeps_its_200_with_distant_voters",
    ))
    .await;
    let t0 = Instant::now();
    let sampler = Sampler::start(
        t0,
        vec![lab.daemon_addr("node1")],
        "/state",
        Duration::from_millis(50),
        Duration::from_secs(1),
    );
    // Vote round trips by voter, and votes granted, from node1's /status once a second.
    let mut rtts: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut granted: BTreeMap<String, usize> = BTreeMap::new();
    let mut reads = 0;
    let end = t0 + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Ok(r) =
            primgr_lab::http::get(lab.daemon_addr("node1"), "/status", Duration::from_secs(1)).await
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.body)
        {
            reads += 1;
            for voter in v["voters"].as_array().into_iter().flatten() {
                let name = voter["name"].as_str().unwrap_or("?").to_string();
                if let Some(ms) = voter["latency_ms"].as_f64() {
                    rtts.entry(name.clone()).or_default().push(ms);
                }
                if voter["vote"].as_str() == Some("node1") {
                    *granted.entry(name).or_default() += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let samples = sampler.stop();
    let not_200: Vec<&Sample> = samples.iter().filter(|s| s.status != Some(200)).collect();
    let q = |v: &[f64], q: f64| primgr_lab::stats::quantile(v, q);
    let distant_rtts: Vec<f64> = rtts
        .iter()
        .filter(|(n, _)| site_of(n) != "dc1")
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    let local = rtts.get("node2").cloned().unwrap_or_default();
    println!(
        "distant voters, cluster scope, {}–{} ms each way: {} samples of node1's /state over \
         {secs} s, {} not 200",
        wan().min.as_millis(),
        wan().max.as_millis(),
        samples.len(),
        not_200.len()
    );
    println!(
        "vote round trips from {reads} reads of /status: distant voters (node3, node4, witness) \
         {} votes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; node2 (same site) p50 {:.2} ms; \
         votes for node1 by voter {granted:?}",
        distant_rtts.len(),
        q(&distant_rtts, 0.5),
        q(&distant_rtts, 0.99),
        q(&distant_rtts, 1.0),
        q(&local, 0.5),
    );
    println!("proxies: {:?}", distant.stats());
    assert!(
        not_200.is_empty(),
        "the healthy primary dropped its 200: {:?}",
        &not_200[..not_200.len().min(5)]
    );
    // The distant votes did cross the distance: at least two proxy delays each.
    assert!(
        !distant_rtts.is_empty() && q(&distant_rtts, 0.0) >= 60.0,
        "distant votes did not go through the delaying proxies: {rtts:?}"
    );
    for voter in ["node3", "node4", "witness"] {
        assert!(
            granted.get(voter).copied().unwrap_or(0) > 0,
            "{voter} never voted for node1 across the distance: {granted:?}"
        );
    }
    drop(distant);
    lab.teardown().await.expect("teardown");
}

/// `primgr --check-config` of node1 as its daemon runs (cluster scope, the proxies as
/// `[peers]`), with `extra` flags: exit code, stdout, stderr.
async fn check_config(lab: &Lab, peers: &[String], extra: &[&str]) -> (i32, String, String) {
    let mut args: Vec<String> = vec![
        "--check-config".into(),
        "--node-name".into(),
        "node1".into(),
        "--conninfo".into(),
        format!("{} application_name=primgr", lab.conninfo("node1")),
        "--source-address".into(),
        lab.addr("node1").to_string(),
        "--peer-key-file".into(),
        primgr_lab::peer_key_file().display().to_string(),
    ];
    args.extend(scope_flags(Some("cluster")));
    args.extend(peers.iter().cloned());
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(PRIMGR).args(&args).output(),
    )
    .await
    .expect("--check-config ends within 30 s")
    .expect("--check-config runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--check-config` in cluster scope measures the round trip to every voter and refuses a
/// `peer_timeout` below 3 round trips to the farthest one (exit 64, naming the key and the
/// voter), accepts one above, and accepts the refused one when the voters are near (no
/// proxy): the distance is what is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_a_peer_timeout_the_distance_breaks() {
    let (lab, distant, _daemons) = distant_cluster(subnet_of(
        "scope::check_config_refuses_a_peer_timeout_the_distance_breaks",
    ))
    .await;
    let far = distant.peer_flags("node1");
    // 250 ms < 3 × (the largest of 5 round trips of 60–160 ms) unless all five stay under
    // 84 ms (a chance of about 1 in 60,000).
    let (code, out, err) = check_config(&lab, &far, &["--peer-timeout", "250ms"]).await;
    println!(
        "--check-config --peer-timeout 250ms, voters 30–80 ms away each way: exit {code}\n{err}"
    );
    assert_eq!(code, 64, "refused as a bad configuration: {out}{err}");
    assert!(err.contains("`peer_timeout`"), "names the key: {err}");
    assert!(
        ["voter node3", "voter node4", "voter witness"]
            .iter()
            .any(|v| err.contains(v)),
        "names a distant voter: {err}"
    );
    // 1 s > 3 × 333 ms: room for a loaded machine's scheduling on top of the distance (the
    // lease rule then wants a shorter db_timeout: 1s + 500ms + 1s = 2.5s < 2.94s counted).
    let accepted = ["--peer-timeout", "1s", "--db-timeout", "500ms"];
    let (code, out, err) = check_config(&lab, &far, &accepted).await;
    let measured: Vec<&str> = out.lines().filter(|l| l.starts_with("# voter ")).collect();
    println!(
        "--check-config --peer-timeout 1s --db-timeout 500ms: exit {code}\n{}",
        measured.join("\n")
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(measured.len(), 4, "one line per voter: {out}");
    // The same refused timing, with the voters near: accepted.
    let (code, out, err) = check_config(&lab, &[], &["--peer-timeout", "250ms"]).await;
    let measured: Vec<&str> = out.lines().filter(|l| l.starts_with("# voter ")).collect();
    println!(
        "--check-config --peer-timeout 250ms, voters near: exit {code}\n{}",
        measured.join("\n")
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(measured.len(), 4, "{out}");
    drop(distant);
    lab.teardown().await.expect("teardown");
}

/// Without a database to read the members from, `--check-config` in cluster scope accepts the
/// configuration and says that nothing was measured (it may run before the cluster does); in
/// site scope it measures nothing and prints no such line.
#[test]
fn check_config_without_a_database_measures_nothing_and_says_so() {
    let run = |scope: &str| {
        std::process::Command::new(PRIMGR)
            .args([
                "--check-config",
                "--node-name",
                "node1",
                "--conninfo",
                "host=127.0.0.1 port=1 dbname=repmgr user=repmgr",
                "--vote-scope",
                scope,
            ])
            .output()
            .expect("primgr runs")
    };
    let cluster = run("cluster");
    let out = String::from_utf8_lossy(&cluster.stdout);
    let note: Vec<&str> = out.lines().filter(|l| l.contains("not measured")).collect();
    println!(
        "cluster scope, no database: exit {:?}, {note:?}",
        cluster.status.code()
    );
    assert_eq!(cluster.status.code(), Some(0), "{out}");
    assert_eq!(note.len(), 1, "{out}");
    assert!(note[0].starts_with("# round trips to the voters not measured: the database"));
    let site = run("site");
    let out = String::from_utf8_lossy(&site.stdout);
    assert_eq!(site.status.code(), Some(0), "{out}");
    assert!(!out.contains("round trip"), "{out}");
}
