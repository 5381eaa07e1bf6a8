//! A seeded random schedule of faults on a real four-node repmgr lab (node1–3 in dc1, node4 in
//! dc2), each node with the real `primgr` binary bound to its node address, while a sampler on
//! its own thread reads every node's `/state` 20 times a second from 127.0.0.1.
//!
//! Faults, each chosen only when it is valid in the model of the cluster the test keeps:
//! failover (the primary killed hard, the dc1 standby with the most WAL promoted, the rest
//! following), a partial-partition failover (replication and repmgr to the primary cut, a dc1
//! standby promoted while the old primary keeps running read-write, the rest following: the race
//! the vote leases close), a stale old primary started without rejoin, rejoin, a database frozen
//! (SIGSTOP of the postmaster and its children), only the postmaster frozen, a peer link cut
//! (iptables DROP between two dc1 node addresses) and a daemon stopped; repairs: thaw, heal,
//! daemon restarted.
//! The seed is printed first; `PRIMGR_CHAOS_SEED=<seed>` replays the same schedule (the same
//! faults in the same order; timings vary). `PRIMGR_CHAOS_FAULTS` sets the number of faults
//! (default 15, a CI run of about three minutes). Whatever the seed, the schedule contains a
//! failover, a partial-partition failover, a stale old primary started beside the new one and a
//! frozen database, the faults the invariants below need (the unit test `every_seed_schedules_every_needed_kind` plays
//! 15,000 schedules on the model to show it); the summary prints how many samples each
//! invariant checked, and an invariant that checked none fails the test.
//!
//! Invariants, checked on every sample against the fault log:
//! 1. two nodes of one site never answer 200 at the same time: no window, no excuse (a run of
//!    200s lasts from its first 200 sample to the first sample after it that is not 200, so an
//!    overlap of runs is at least as long as any real one);
//! 2. a node whose database is stopped, frozen, or whose postmaster alone is frozen (it accepts
//!    no new client) answers 503 within `db_timeout` + `interval` + 500 ms, and until its
//!    database is back (a sample without an answer is invariant 3's);
//! 3. every running daemon answers every sample within 100 ms. A fifth primgr outside the
//!    cluster, which no fault touches, is sampled in the same rounds as a control, first and
//!    last in each round: a sample over the bound while a control sample of the same round was
//!    over it too (or unanswered) is excused as a stall of the machine (two cores shared with
//!    other work), counted and printed; a round without a control sample excuses nothing, and
//!    more excused samples than [`MAX_EXCUSED_SHARE`] of those checked is a violation;
//! 4. once everything is healed, exactly one node (the model's primary) answers 200 and every
//!    other 202 within [`heal_bound()`].
//!
//! Only the postmaster frozen: existing sessions keep working, new connections hang. The
//! daemon's pooled connection keeps working, but every cycle also proves that a new client can
//! connect, so the node is Down within `db_timeout` + `interval`: invariant 2 covers it too.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Daemon;
use common::child::{Primgr, scratch_dir};
use common::sampler::{Sample, Sampler};
use primgr_lab::stats::duration_quantile;
use primgr_lab::{Lab, LabSpec, StopMode, subnet_of};
use primgr_lab::{http, procfs};

const INTERVAL: Duration = Duration::from_millis(500);
const DB_TIMEOUT: Duration = Duration::from_secs(1);
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// The sampler's period per node (20 Hz).
const PERIOD: Duration = Duration::from_millis(50);
/// Invariant 2: a stopped or frozen database shows as 503 within this bound.
const DOWN_BOUND: Duration =
    Duration::from_millis((DB_TIMEOUT.as_millis() + INTERVAL.as_millis()) as u64 + 500);
/// Invariant 3: every answer within this bound.
const ANSWER_BOUND: Duration = Duration::from_millis(100);
/// Invariant 4: after the last repair, a lease and a handoff, two cycles and both timeouts,
/// plus slack (the lab tests' settle bound).
fn heal_bound() -> Duration {
    common::settle_bound()
}
/// Sampler target index of the control daemon (after the four nodes), sampled first in each
/// round; it is sampled again last in each round as target `CONTROL + 1`.
const CONTROL: usize = 4;
/// Invariant 3: at most this share of the checked samples may be excused as machine stalls
/// (a node over the bound while the control daemon was too). The control runs the same binary
/// on the same cores, so a stall it shares is the machine's; but an excuse without a limit
/// would let a run pass however much of it went unchecked. 2% of a default run (about 11,000
/// node samples) is about 230 samples, three seconds of rounds in which all four nodes and the
/// control were slow; a machine that stalls more than that is too loaded for invariant 3 to
/// say anything, and the run fails saying so.
const MAX_EXCUSED_SHARE: f64 = 0.02;
/// Open faults (frozen databases, cuts, stopped daemons) at most at once.
const MAX_OPEN: usize = 3;

/// splitmix64: small, fast, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from + 1))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Db {
    Running,
    Stopped,
    Frozen,
    PmFrozen,
}

struct NodeModel {
    name: String,
    site: String,
    db: Db,
    /// An old primary that has not been rejoined (stopped, or running read-write).
    stale: bool,
    daemon: bool,
}

struct Model {
    nodes: Vec<NodeModel>,
    primary: usize,
    cuts: Vec<(usize, usize)>,
    /// The old primary whose replication and repmgr traffic is cut (partial partition).
    partitioned: Option<usize>,
}

impl Model {
    fn open_faults(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.db, Db::Frozen | Db::PmFrozen) || !n.daemon)
            .count()
            + self.cuts.len()
    }

    fn dc1(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].site == "dc1")
            .collect()
    }

    /// The model after `action` (`promoted`: the node a failover promotes).
    fn apply(&mut self, action: Action, promoted: usize) {
        match action {
            Action::Failover => {
                let old = self.primary;
                self.nodes[old].db = Db::Stopped;
                self.nodes[old].stale = true;
                self.primary = promoted;
            }
            Action::PartialFailover => {
                let old = self.primary;
                self.nodes[old].stale = true;
                self.partitioned = Some(old);
                self.primary = promoted;
            }
            Action::StartStale(i) | Action::Thaw(i) => self.nodes[i].db = Db::Running,
            Action::Rejoin(i) => {
                self.nodes[i].db = Db::Running;
                self.nodes[i].stale = false;
                if self.partitioned == Some(i) {
                    self.partitioned = None;
                }
            }
            Action::Freeze(i) => self.nodes[i].db = Db::Frozen,
            Action::FreezePostmaster(i) => self.nodes[i].db = Db::PmFrozen,
            Action::Cut(a, b) => self.cuts.push((a, b)),
            Action::Heal(a, b) => self.cuts.retain(|c| *c != (a, b)),
            Action::StopDaemon(i) => self.nodes[i].daemon = false,
            Action::StartDaemon(i) => self.nodes[i].daemon = true,
        }
    }

    /// Every action valid now, with the weight of its kind.
    fn valid(&self) -> Vec<(Action, u32)> {
        let mut out = Vec::new();
        let n = self.nodes.len();
        let open = self.open_faults();
        let stale = self.nodes.iter().any(|x| x.stale);
        let standbys_running = (0..n)
            .filter(|&i| i != self.primary)
            .all(|i| self.nodes[i].db == Db::Running);
        if !stale && standbys_running {
            out.push((Action::Failover, 4));
            if self.nodes[self.primary].db == Db::Running {
                out.push((Action::PartialFailover, 4));
            }
        }
        for i in 0..n {
            let x = &self.nodes[i];
            // With its daemon running: a split brain nobody answers for tests nothing.
            if x.stale && x.db == Db::Stopped && x.daemon {
                out.push((Action::StartStale(i), 3));
            }
            if x.stale
                && matches!(x.db, Db::Stopped | Db::Running)
                && self.nodes[self.primary].db == Db::Running
            {
                out.push((Action::Rejoin(i), 3));
            }
            if x.db == Db::Running && open < MAX_OPEN {
                out.push((Action::Freeze(i), 2));
                out.push((Action::FreezePostmaster(i), 2));
            }
            if matches!(x.db, Db::Frozen | Db::PmFrozen) {
                out.push((Action::Thaw(i), 3));
            }
            if x.daemon && open < MAX_OPEN && self.nodes.iter().all(|y| y.daemon) {
                out.push((Action::StopDaemon(i), 2));
            }
            if !x.daemon {
                out.push((Action::StartDaemon(i), 3));
            }
        }
        let dc1 = self.dc1();
        for (k, &a) in dc1.iter().enumerate() {
            for &b in &dc1[k + 1..] {
                if self.cuts.contains(&(a, b)) {
                    out.push((Action::Heal(a, b), 3));
                } else if open < MAX_OPEN && self.cuts.len() < 2 {
                    out.push((Action::Cut(a, b), 2));
                }
            }
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Failover,
    PartialFailover,
    StartStale(usize),
    Rejoin(usize),
    Freeze(usize),
    FreezePostmaster(usize),
    Thaw(usize),
    Cut(usize, usize),
    Heal(usize, usize),
    StopDaemon(usize),
    StartDaemon(usize),
}

impl Action {
    fn kind(self) -> &'static str {
        match self {
            Action::Failover => "failover",
            Action::PartialFailover => "partial partition failover",
            Action::StartStale(_) => "stale primary started",
            Action::Rejoin(_) => "rejoin",
            Action::Freeze(_) => "database frozen",
            Action::FreezePostmaster(_) => "postmaster frozen",
            Action::Thaw(_) => "thaw",
            Action::Cut(..) => "link cut",
            Action::Heal(..) => "link healed",
            Action::StopDaemon(_) => "daemon stopped",
            Action::StartDaemon(_) => "daemon restarted",
        }
    }

    fn is_fault(self) -> bool {
        !matches!(
            self,
            Action::Thaw(_) | Action::Heal(..) | Action::StartDaemon(_)
        )
    }

    /// Least time to leave the cluster alone afterwards, so the fault is observed in full
    /// (a frozen or stopped database for longer than [`DOWN_BOUND`]).
    fn dwell(self) -> (u64, u64) {
        match self {
            Action::Failover | Action::Freeze(_) | Action::FreezePostmaster(_) => (3000, 4500),
            // The old primary's leases expire, then the handoff: watch the new one take over.
            Action::PartialFailover => (7000, 9000),
            Action::Cut(..) | Action::StopDaemon(_) | Action::StartStale(_) => (2000, 3500),
            _ => (800, 2000),
        }
    }
}

/// Fault kinds the invariants need at least once: a failover (it stops a database: invariant 2),
/// a partial-partition failover and a stale old primary started beside the new one (two
/// writable primaries in one site: invariant 1), a database frozen and a postmaster frozen
/// (invariant 2).
const NEEDED: [&str; 5] = [
    "failover",
    "partial partition failover",
    "stale primary started",
    "database frozen",
    "postmaster frozen",
];

/// The seeded schedule: which action comes next. At least `faults` faults, and every kind of
/// [`NEEDED`] at least once whatever the seed: once the faults left to schedule are no more
/// than the needed kinds not seen yet, only those kinds, the repairs that make them possible
/// and (while a split brain is still needed) a failover are chosen, for as long as it takes.
struct Schedule {
    faults: usize,
    done: usize,
    actions: usize,
    by_kind: BTreeMap<&'static str, usize>,
}

impl Schedule {
    fn new(faults: usize) -> Schedule {
        Schedule {
            faults,
            done: 0,
            actions: 0,
            by_kind: BTreeMap::new(),
        }
    }

    fn missing(&self) -> Vec<&'static str> {
        NEEDED
            .into_iter()
            .filter(|k| !self.by_kind.contains_key(k))
            .collect()
    }

    fn finished(&self) -> bool {
        self.done >= self.faults && self.missing().is_empty()
    }

    /// Whether `action` may come next while only the needed kinds are being completed.
    fn completes(action: Action, missing: &[&str]) -> bool {
        let kind = action.kind();
        missing.contains(&kind)
            // Repairs, the rejoin included: a stale old primary blocks the next failover.
            || matches!(
                action,
                Action::Thaw(_) | Action::Heal(..) | Action::StartDaemon(_) | Action::Rejoin(_)
            )
            || (action == Action::Failover && missing.contains(&"stale primary started"))
    }

    /// The next action: a kind first (kinds not seen yet weigh more, so a short run covers
    /// them all), then one of its valid instances.
    fn next(&self, model: &Model, rng: &mut Rng, seed: u64) -> Action {
        assert!(
            self.actions < 20 * self.faults + 100,
            "seed {seed}: the schedule did not get every needed kind in {} actions: {:?}",
            self.actions,
            self.by_kind
        );
        let missing = self.missing();
        let completing = self.faults.saturating_sub(self.done) <= missing.len();
        let valid: Vec<(Action, u32)> = model
            .valid()
            .into_iter()
            .filter(|(a, _)| !completing || Self::completes(*a, &missing))
            .collect();
        let mut kinds: Vec<(&'static str, u32)> = Vec::new();
        for (a, w) in &valid {
            if !kinds.iter().any(|(k, _)| *k == a.kind()) {
                let boost = if self.by_kind.contains_key(a.kind()) {
                    1
                } else {
                    4
                };
                kinds.push((a.kind(), w * boost));
            }
        }
        let total: u32 = kinds.iter().map(|(_, w)| w).sum();
        assert!(
            total > 0,
            "seed {seed}: no valid action (missing {missing:?})"
        );
        let mut pick = rng.below(total as usize) as u32;
        let kind = kinds
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(k, _)| *k)
            .expect("a kind");
        let instances: Vec<Action> = valid
            .iter()
            .filter(|(a, _)| a.kind() == kind)
            .map(|(a, _)| *a)
            .collect();
        instances[rng.below(instances.len())]
    }

    fn record(&mut self, action: Action) {
        self.actions += 1;
        *self.by_kind.entry(action.kind()).or_default() += 1;
        if action.is_fault() {
            self.done += 1;
        }
    }
}

/// The standard lab's model: node1..node3 in dc1 (node1 the primary), node4 in dc2.
fn standard_model() -> Model {
    let nodes = [
        ("node1", "dc1"),
        ("node2", "dc1"),
        ("node3", "dc1"),
        ("node4", "dc2"),
    ]
    .into_iter()
    .map(|(name, site)| NodeModel {
        name: name.into(),
        site: site.into(),
        db: Db::Running,
        stale: false,
        daemon: true,
    })
    .collect();
    Model {
        nodes,
        primary: 0,
        cuts: Vec::new(),
        partitioned: None,
    }
}

/// Whatever the seed and the number of faults, the schedule exercises every needed kind: the
/// schedules of 3,000 seeds at several fault counts, played on the model alone (a failover
/// promotes a dc1 standby chosen by the seed, as the real run picks among equals).
#[test]
fn every_seed_schedules_every_needed_kind() {
    let mut longest = 0;
    let mut checked = 0;
    for faults in [1, 2, 3, 5, 15] {
        for seed in 0..3000u64 {
            let mut model = standard_model();
            let mut rng = Rng(seed);
            let mut schedule = Schedule::new(faults);
            while !schedule.finished() {
                let action = schedule.next(&model, &mut rng, seed);
                let promoted = if matches!(action, Action::Failover | Action::PartialFailover) {
                    let dc1: Vec<usize> = model
                        .dc1()
                        .into_iter()
                        .filter(|&i| i != model.primary)
                        .collect();
                    dc1[rng.below(dc1.len())]
                } else {
                    model.primary
                };
                model.apply(action, promoted);
                schedule.record(action);
            }
            for kind in NEEDED {
                assert!(
                    schedule.by_kind.contains_key(kind),
                    "seed {seed}: no {kind}"
                );
            }
            assert!(schedule.done >= faults, "seed {seed}");
            longest = longest.max(schedule.actions);
            checked += 1;
        }
    }
    println!(
        "{checked} schedules checked, each with every needed kind; the longest had {longest} actions"
    );
}

/// An action and when it ran, in sampler time.
struct Event {
    what: String,
    start: Duration,
    end: Duration,
}

/// A span of time a node spent in some condition; `end` None = until the end of the run.
#[derive(Clone, Debug)]
struct Span {
    node: usize,
    what: Db,
    start: Duration,
    end: Option<Duration>,
}

struct Run {
    lab: Lab,
    model: Model,
    rng: Rng,
    sampler: Sampler,
    events: Vec<Event>,
    /// Database stopped, frozen or pm-frozen spans.
    db_spans: Vec<Span>,
    /// Daemon not answering on purpose: from the stop until the restarted one listens.
    daemon_down: Vec<Span>,
    /// A stale old primary running read-write beside the real one (split brain): from its
    /// start until its rejoin.
    split_brain: Vec<Span>,
    /// Each node's daemon (None while it is stopped), in node order.
    daemons: Vec<Option<Daemon>>,
    daemon_args: Vec<String>,
    seed: u64,
}

impl Run {
    fn name(&self, i: usize) -> String {
        self.model.nodes[i].name.clone()
    }

    fn db_down(&mut self, i: usize, what: Db) {
        let start = self.sampler.now();
        self.db_spans.push(Span {
            node: i,
            what,
            start,
            end: None,
        });
    }

    fn db_up(&mut self, i: usize) {
        close_spans(&mut self.db_spans, i, self.sampler.now());
    }

    fn check<T>(&self, what: &str, r: anyhow::Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("seed {}: {what} failed: {e:#}", self.seed))
    }

    /// Runs `action` on the lab, records its spans, updates the model; returns what it did.
    async fn apply(&mut self, action: Action) -> String {
        let mut promoted = self.model.primary;
        let what = match action {
            Action::Failover => {
                let old = self.model.primary;
                let old_name = self.name(old);
                self.db_up(old); // a frozen primary is thawed by the stop
                let r = self.lab.stop(&old_name, StopMode::Immediate).await;
                self.check("kill primary", r);
                self.db_down(old, Db::Stopped);
                promoted = self.promote_best(old).await;
                format!(
                    "{old_name} killed, {} promoted, the rest follow",
                    self.name(promoted)
                )
            }
            Action::PartialFailover => {
                let old = self.model.primary;
                let old_name = self.name(old);
                let r = self.lab.cut_replication_to(&old_name).await;
                self.check("cut replication to the primary", r);
                // From now on two writable primaries run in one site until the rejoin.
                self.split_brain.push(Span {
                    node: old,
                    what: Db::Running,
                    start: self.sampler.now(),
                    end: None,
                });
                promoted = self.promote_best(old).await;
                format!(
                    "replication to {old_name} cut, {} promoted while {old_name} runs \
                     read-write, the rest follow",
                    self.name(promoted)
                )
            }
            Action::StartStale(i) => {
                self.db_up(i);
                let r = self.lab.start(&self.name(i)).await;
                self.check("start stale", r);
                self.split_brain.push(Span {
                    node: i,
                    what: Db::Running,
                    start: self.sampler.now(),
                    end: None,
                });
                format!("{} started without rejoin (read-write)", self.name(i))
            }
            Action::Rejoin(i) => {
                self.db_up(i);
                let (node, primary) = (self.name(i), self.name(self.model.primary));
                if self.model.partitioned == Some(i) {
                    let r = self.lab.heal_replication_to(&node).await;
                    self.check("heal replication", r);
                }
                close_spans(&mut self.split_brain, i, self.sampler.now());
                let r = self.lab.rejoin(&node, &primary).await;
                self.check("rejoin", r);
                format!("{node} rejoins {primary}")
            }
            Action::Freeze(i) => {
                let r = self.lab.freeze(&self.name(i)).await;
                self.check("freeze", r);
                self.db_down(i, Db::Frozen);
                format!("{} frozen", self.name(i))
            }
            Action::FreezePostmaster(i) => {
                let r = self.lab.freeze_postmaster(&self.name(i)).await;
                self.check("freeze postmaster", r);
                self.db_down(i, Db::PmFrozen);
                format!("{} postmaster frozen", self.name(i))
            }
            Action::Thaw(i) => {
                self.db_up(i);
                let r = self.lab.thaw(&self.name(i)).await;
                self.check("thaw", r);
                format!("{} thawed", self.name(i))
            }
            Action::Cut(a, b) => {
                let r = self.lab.cut(&self.name(a), &self.name(b)).await;
                self.check("cut", r);
                format!("{} -x- {}", self.name(a), self.name(b))
            }
            Action::Heal(a, b) => {
                let r = self.lab.heal(&self.name(a), &self.name(b)).await;
                self.check("heal", r);
                format!("{} --- {}", self.name(a), self.name(b))
            }
            Action::StopDaemon(i) => {
                let start = self.sampler.now();
                self.daemon_down.push(Span {
                    node: i,
                    what: Db::Stopped,
                    start,
                    end: None,
                });
                if let Some(mut d) = self.daemons[i].take() {
                    d.stop().await;
                }
                format!("daemon of {} stopped", self.name(i))
            }
            Action::StartDaemon(i) => {
                let node = self.name(i);
                let r = self
                    .lab
                    .daemon(&node, common::PRIMGR)
                    .and_then(|d| d.args(self.daemon_args.iter().cloned()).spawn());
                let mut daemon = self.check("spawn daemon", r);
                let r = daemon.ready(Duration::from_secs(10)).await;
                self.check("daemon ready", r);
                self.daemons[i] = Some(daemon);
                close_spans(&mut self.daemon_down, i, self.sampler.now());
                format!("daemon of {node} restarted")
            }
        };
        self.model.apply(action, promoted);
        what
    }

    /// Promotes the dc1 standby that received the most WAL (so every other can follow it) and
    /// makes every other node but `old` follow it; returns it.
    async fn promote_best(&mut self, old: usize) -> usize {
        let mut lsns = Vec::new();
        for i in 0..self.model.nodes.len() {
            if i == old {
                continue;
            }
            let r = self.lab.receive_lsn(&self.name(i)).await;
            let lsn = self.check("read lsn", r).unwrap_or(0);
            lsns.push((i, lsn));
        }
        let best = lsns
            .iter()
            .filter(|(i, _)| self.model.nodes[*i].site == "dc1")
            .map(|(_, l)| *l)
            .max()
            .unwrap_or(0);
        let candidates: Vec<usize> = lsns
            .iter()
            .filter(|(i, l)| self.model.nodes[*i].site == "dc1" && *l == best)
            .map(|(i, _)| *i)
            .collect();
        let new = candidates[self.rng.below(candidates.len())];
        let r = self.lab.promote(&self.name(new)).await;
        self.check("promote", r);
        for (i, _) in &lsns {
            if *i != new {
                let r = self.lab.follow(&self.name(*i)).await;
                self.check("follow", r);
            }
        }
        new
    }

    async fn act(&mut self, action: Action) {
        let start = self.sampler.now();
        let what = self.apply(action).await;
        let end = self.sampler.now();
        println!(
            "  {:>7.2}s  +{:>5.2}s  {:<22} {what}",
            start.as_secs_f64(),
            (end - start).as_secs_f64(),
            action.kind()
        );
        self.events.push(Event { what, start, end });
    }
}

/// Every node's `/state` code now (0 when it did not answer).
async fn codes(addrs: &[SocketAddr]) -> Vec<u16> {
    let mut out = Vec::new();
    for a in addrs {
        out.push(
            http::get(*a, "/state", Duration::from_secs(1))
                .await
                .map(|r| r.status)
                .unwrap_or(0),
        );
    }
    out
}

/// Ends the node's open spans at `now`.
fn close_spans(spans: &mut [Span], node: usize, now: Duration) {
    for s in spans
        .iter_mut()
        .filter(|s| s.node == node && s.end.is_none())
    {
        s.end = Some(now);
    }
}

/// Whether the sample (from its start to its answer) touches one of the node's spans.
fn touches(spans: &[Span], sample: &Sample, end_of_run: Duration) -> bool {
    let (from, to) = (sample.at, sample.at + sample.latency);
    spans
        .iter()
        .any(|s| s.node == sample.target && s.start <= to && from <= s.end.unwrap_or(end_of_run))
}

/// The codes of `nodes` in 100 ms steps from `from` to `to` (the last sample of each step;
/// `-` none, `x` no answer), for a report.
fn timeline(
    samples: &[Sample],
    nodes: &[usize],
    names: &[String],
    from: Duration,
    to: Duration,
) -> String {
    let mut out = String::new();
    for &n in nodes {
        out.push_str(&format!("      {:<6}", names[n]));
        let mut t = from;
        while t < to {
            let code = samples
                .iter()
                .rfind(|s| s.target == n && s.at >= t && s.at < t + Duration::from_millis(100))
                .map(|s| {
                    s.status
                        .map_or("x".to_string(), |c| (c / 100 * 10 + c % 10).to_string())
                })
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!("{code:>3}"));
            t += Duration::from_millis(100);
        }
        out.push('\n');
    }
    out
}

/// Each node's runs of 200 as [first 200 sample, first later sample that is not 200).
fn runs_of_200(samples: &[Sample], node: usize) -> Vec<(Duration, Duration)> {
    let mut runs = Vec::new();
    let mut open: Option<Duration> = None;
    let mut last = Duration::ZERO;
    for s in samples.iter().filter(|s| s.target == node) {
        match (s.status == Some(200), open) {
            (true, None) => open = Some(s.at),
            (false, Some(from)) => {
                runs.push((from, s.at));
                open = None;
            }
            _ => {}
        }
        last = s.at;
    }
    if let Some(from) = open {
        runs.push((from, last + PERIOD));
    }
    runs
}

fn names_of(nodes: &[usize], names: &[String]) -> String {
    nodes
        .iter()
        .map(|&n| names[n].as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_faults_never_make_primgr_lie_hang_or_crash() {
    let seed = std::env::var("PRIMGR_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let faults: usize = std::env::var("PRIMGR_CHAOS_FAULTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    println!("chaos seed {seed} (rerun with PRIMGR_CHAOS_SEED={seed}), {faults} faults");

    let lab = Lab::build(LabSpec::standard(subnet_of(
        "chaos::random_faults_never_make_primgr_lie_hang_or_crash",
    )))
    .await
    .expect("lab builds");
    let daemon_args: Vec<String> = vec![
        "--interval".into(),
        format!("{}ms", INTERVAL.as_millis()),
        "--db-timeout".into(),
        format!("{}ms", DB_TIMEOUT.as_millis()),
        "--peer-timeout".into(),
        format!("{}ms", PEER_TIMEOUT.as_millis()),
    ];
    let names = lab.node_names();
    let mut daemons = Vec::new();
    for n in &names {
        let d = lab
            .daemon(n, common::PRIMGR)
            .and_then(|d| d.args(daemon_args.iter().cloned()).spawn())
            .expect("spawn daemon");
        daemons.push(d);
    }
    for d in &mut daemons {
        d.wait_listening(Duration::from_secs(10)).await;
    }
    let addrs: Vec<SocketAddr> = names.iter().map(|n| lab.daemon_addr(n)).collect();
    let t = Instant::now();
    while codes(&addrs).await != [200, 202, 202, 202] {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the cluster never settled: {:?}",
            codes(&addrs).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let nodes = names
        .iter()
        .map(|n| NodeModel {
            name: n.clone(),
            site: lab.location(n).expect("location"),
            db: Db::Running,
            stale: false,
            daemon: true,
        })
        .collect();
    let load_at_start = procfs::loadavg();
    let cpu_at_start = procfs::machine_cpu_ticks().expect("/proc/stat");
    let t0 = Instant::now();
    // The control: one more primgr, outside the cluster (its database is a closed port), that
    // no fault touches. When it is as slow as a node in the same round of samples, the machine
    // (or the sampler) stalled, not that node's daemon.
    let control_ip = std::net::Ipv4Addr::new(127, 0, lab.subnet(), 99);
    let control_addr = SocketAddr::from((control_ip, primgr_lab::DAEMON_PORT));
    let control_conninfo = format!("host={control_ip} port=1 dbname=repmgr user=repmgr");
    let mut control_args = vec!["--node-name", "control", "--conninfo", &control_conninfo];
    control_args.extend(daemon_args.iter().map(String::as_str));
    let mut control = Primgr::spawn(
        control_addr,
        &control_args,
        "warn",
        &scratch_dir("chaos-control").join("primgr.log"),
    );
    control.wait_listening(Duration::from_secs(10)).await;
    let mut targets = addrs.clone();
    targets.push(control_addr);
    let sampler = Sampler::start_in_order(
        t0,
        Sampler::bracketed(targets),
        "/state",
        PERIOD,
        Duration::from_secs(1),
    );
    let mut run = Run {
        lab,
        model: Model {
            nodes,
            primary: 0,
            cuts: Vec::new(),
            partitioned: None,
        },
        rng: Rng(seed),
        sampler,
        events: Vec::new(),
        db_spans: Vec::new(),
        daemon_down: Vec::new(),
        split_brain: Vec::new(),
        daemons: daemons.into_iter().map(Some).collect(),
        daemon_args,
        seed,
    };
    // A second of every target sampled before the first fault.
    run.sampler
        .wait_samples(
            Duration::ZERO,
            20 * (addrs.len() + 1),
            Duration::from_secs(10),
        )
        .await;

    // The schedule.
    println!("     time     took  action                 what");
    let mut schedule = Schedule::new(faults);
    while !schedule.finished() {
        let action = schedule.next(&run.model, &mut run.rng, seed);
        run.act(action).await;
        schedule.record(action);
        let (lo, hi) = action.dwell();
        let pause = run.rng.millis(lo, hi);
        tokio::time::sleep(pause).await;
    }

    // Heal everything.
    println!("  healing:");
    for i in 0..run.model.nodes.len() {
        if matches!(run.model.nodes[i].db, Db::Frozen | Db::PmFrozen) {
            run.act(Action::Thaw(i)).await;
        }
    }
    for (a, b) in run.model.cuts.clone() {
        run.act(Action::Heal(a, b)).await;
    }
    for i in 0..run.model.nodes.len() {
        if !run.model.nodes[i].daemon {
            run.act(Action::StartDaemon(i)).await;
        }
    }
    for i in 0..run.model.nodes.len() {
        if run.model.nodes[i].stale {
            run.act(Action::Rejoin(i)).await;
        }
    }
    let rules = run.lab.firewall_rules().await.expect("iptables -S");
    assert!(
        rules.iter().all(|r| !r.contains(" -j ")),
        "rules left in the lab's chain after healing: {rules:?}"
    );
    let healed = run.sampler.now();
    let primary = run.model.primary;
    let want: Vec<u16> = (0..addrs.len())
        .map(|i| if i == primary { 200 } else { 202 })
        .collect();
    // Wait until the expected codes hold for 2 s in a row (the samples decide below).
    let mut stable_since: Option<Instant> = None;
    let wait = Instant::now();
    loop {
        if codes(&addrs).await == want {
            let s = *stable_since.get_or_insert_with(Instant::now);
            if s.elapsed() >= Duration::from_secs(2) {
                break;
            }
        } else {
            stable_since = None;
        }
        if wait.elapsed() > heal_bound() + Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let samples = run.sampler.stop();
    let end = samples.last().map(|s| s.at).unwrap_or_default();

    // ---- invariants
    let mut violations: Vec<String> = Vec::new();
    let sites: BTreeMap<String, Vec<usize>> =
        run.model
            .nodes
            .iter()
            .enumerate()
            .fold(BTreeMap::new(), |mut m, (i, n)| {
                m.entry(n.site.clone()).or_default().push(i);
                m
            });
    // 1. One 200 per site. Checked: every answered sample of a node that shares its site; the
    // ones that matter most are those of a stale old primary running beside the real one.
    let shares_site = |i: usize| sites.values().any(|m| m.len() > 1 && m.contains(&i));
    let inv1_checked = samples
        .iter()
        .filter(|s| s.target < CONTROL && s.status.is_some() && shares_site(s.target))
        .count();
    let inv1_split_brain = samples
        .iter()
        .filter(|s| s.status.is_some() && touches(&run.split_brain, s, end))
        .count();
    let runs: Vec<Vec<(Duration, Duration)>> =
        (0..addrs.len()).map(|i| runs_of_200(&samples, i)).collect();
    let mut worst_overlap = Duration::ZERO;
    let mut overlaps = 0;
    for members in sites.values() {
        for (k, &a) in members.iter().enumerate() {
            for &b in &members[k + 1..] {
                for ra in &runs[a] {
                    for rb in &runs[b] {
                        let (from, to) = (ra.0.max(rb.0), ra.1.min(rb.1));
                        if from >= to {
                            continue;
                        }
                        overlaps += 1;
                        worst_overlap = worst_overlap.max(to - from);
                        println!(
                            "  overlap: {} and {} both 200 from {:.2}s to {:.2}s (VIOLATION)",
                            names[a],
                            names[b],
                            from.as_secs_f64(),
                            to.as_secs_f64(),
                        );
                        print!(
                            "    codes of {} every 100 ms from {:.1}s (20 = 200, 22 = 202, 53 = 503, 59 = 509):\n{}",
                            names_of(members, &names),
                            from.saturating_sub(Duration::from_secs(2)).as_secs_f64(),
                            timeline(
                                &samples,
                                members,
                                &names,
                                from.saturating_sub(Duration::from_secs(2)),
                                to + Duration::from_secs(1)
                            )
                        );
                        violations.push(format!(
                            "inv 1: {} and {} both 200 from {:.2}s to {:.2}s",
                            names[a],
                            names[b],
                            from.as_secs_f64(),
                            to.as_secs_f64()
                        ));
                    }
                }
            }
        }
    }

    // 2. Stopped or frozen database: 503 within DOWN_BOUND, until it is back.
    let mut inv2_checked: BTreeMap<&str, usize> = BTreeMap::new();
    let mut worst_to_503 = Duration::ZERO;
    for span in &run.db_spans {
        let span_end = span.end.unwrap_or(end);
        let node_samples: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.target == span.node && s.at >= span.start && s.at < span_end)
            .collect();
        // Time to the first 503, when the daemon ran all along (a restarted one starts as 503).
        if let Some(k) = node_samples.iter().position(|s| s.status == Some(503)) {
            let daemon_ran = !node_samples[..=k]
                .iter()
                .any(|s| touches(&run.daemon_down, s, end));
            if daemon_ran && span_end - span.start > DOWN_BOUND {
                worst_to_503 = worst_to_503.max(node_samples[k].at - span.start);
            }
        }
        for s in node_samples
            .iter()
            .filter(|s| s.at >= span.start + DOWN_BOUND)
        {
            // No answer at all is invariant 3's business (a stopped daemon, or a stall of the
            // machine that the control daemon saw too); what is answered must be 503.
            if s.status.is_none() {
                continue;
            }
            *inv2_checked
                .entry(match span.what {
                    Db::Stopped => "stopped",
                    Db::Frozen => "frozen",
                    _ => "postmaster frozen",
                })
                .or_default() += 1;
            if s.status != Some(503) {
                violations.push(format!(
                    "inv 2: {} ({:?} since {:.2}s) answered {:?} at {:.2}s",
                    names[span.node],
                    span.what,
                    span.start.as_secs_f64(),
                    s.status,
                    s.at.as_secs_f64()
                ));
            }
        }
    }

    // 3. Every running daemon answers every sample within ANSWER_BOUND. A sample over the
    // bound is excused as a stall of the whole machine only when the control daemon shows the
    // stall in the same round (a control sample of that round unanswered or over the bound, at
    // the round's start or its end); a round without any control sample is no evidence, so its
    // samples are judged like any other. The excused samples are counted and capped: more than
    // MAX_EXCUSED_SHARE of the checked samples is a violation of its own.
    let control_samples: Vec<&Sample> = samples.iter().filter(|s| s.target >= CONTROL).collect();
    // The control samples of the round of a sample started at `at` (empty: the round has none).
    let control_round = |at: Duration| -> Vec<&Sample> {
        let k = control_samples.partition_point(|c| c.at + PERIOD / 2 < at);
        control_samples[k..]
            .iter()
            .take_while(|c| c.at < at + PERIOD / 2)
            .copied()
            .collect()
    };
    // The slowest control sample of that round (an unanswered one first), if the round has one.
    let control_at = |at: Duration| -> Option<&Sample> {
        control_round(at)
            .into_iter()
            .max_by_key(|c| (c.status.is_none(), c.latency))
    };
    let control_stalled = |at: Duration| {
        control_at(at).is_some_and(|c| c.status.is_none() || c.latency > ANSWER_BOUND)
    };
    let mut inv3_checked = 0;
    let mut machine_stalls = 0;
    let mut without_control = 0;
    let mut latencies = Vec::new();
    let mut worst_own = Duration::ZERO;
    for s in samples.iter().filter(|s| s.target < CONTROL) {
        if touches(&run.daemon_down, s, end) {
            continue;
        }
        inv3_checked += 1;
        latencies.push(s.latency);
        if control_at(s.at).is_none() {
            without_control += 1;
        }
        let stalled = control_stalled(s.at);
        if !stalled {
            worst_own = worst_own.max(s.latency);
        }
        if s.status.is_some() && s.latency <= ANSWER_BOUND {
            continue;
        }
        if stalled {
            machine_stalls += 1;
            continue;
        }
        violations.push(format!(
            "inv 3: {} at {:.2}s: {:?} after {:?} {}",
            names[s.target],
            s.at.as_secs_f64(),
            s.status,
            s.latency,
            s.error.as_deref().unwrap_or("")
        ));
    }
    let max_excused = (inv3_checked as f64 * MAX_EXCUSED_SHARE).floor() as usize;
    if machine_stalls > max_excused {
        violations.push(format!(
            "inv 3: {machine_stalls} samples over the bound excused as machine stalls, more than \
             the cap of {max_excused} ({:.0}% of {inv3_checked}): the machine is too loaded for \
             invariant 3 to say anything",
            MAX_EXCUSED_SHARE * 100.0
        ));
    }
    let worst_answer = duration_quantile(&latencies, 1.0);
    let control_latencies: Vec<Duration> = control_samples.iter().map(|c| c.latency).collect();
    let mut slowest: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.target < CONTROL && s.status.is_some())
        .collect();
    slowest.sort_by_key(|s| std::cmp::Reverse(s.latency));
    let during = |at: Duration| {
        run.events
            .iter()
            .find(|e| e.start <= at && at <= e.end)
            .map_or("no action running".to_string(), |e| e.what.clone())
    };

    // 4. After healing, exactly the model's primary answers 200 and every other node 202.
    let mut converged = healed;
    for (i, code) in want.iter().enumerate() {
        if let Some(last_bad) = samples
            .iter()
            .rfind(|s| s.target == i && s.at >= healed && s.status != Some(*code))
        {
            converged = converged.max(last_bad.at + PERIOD);
        }
    }
    let convergence = converged - healed;
    let tail = samples.iter().filter(|s| s.at >= converged).count();
    if convergence > heal_bound() || tail < addrs.len() * 20 {
        violations.push(format!(
            "inv 4: after healing at {:.2}s the codes {want:?} held only from {:.2}s ({tail} samples after)",
            healed.as_secs_f64(),
            converged.as_secs_f64()
        ));
    }

    // ---- summary
    let duration = end.as_secs_f64();
    println!("\nchaos summary");
    println!(
        "  machine load         {} at the start, {} at the end (1/5/15 min, 2 cores)",
        load_at_start,
        procfs::loadavg()
    );
    let cpu: Vec<u64> = procfs::machine_cpu_ticks()
        .expect("/proc/stat")
        .iter()
        .zip(&cpu_at_start)
        .map(|(b, a)| b.saturating_sub(*a))
        .collect();
    let total: u64 = cpu.iter().sum::<u64>().max(1);
    let pct = |i: usize| cpu.get(i).copied().unwrap_or(0) as f64 * 100.0 / total as f64;
    println!(
        "  machine cpu          user {:.0}%, system {:.0}%, idle {:.0}%, iowait {:.0}%, steal {:.0}% over the run",
        pct(0) + pct(1),
        pct(2) + pct(5) + pct(6),
        pct(3),
        pct(4),
        pct(7)
    );
    println!("  seed                 {seed}");
    println!(
        "  faults               {} ({} actions with repairs)",
        schedule.done,
        run.events.len()
    );
    for (kind, n) in &schedule.by_kind {
        println!("    {kind:<22} {n}");
    }
    println!("  run                  {duration:.1} s");
    println!(
        "  samples              {} of the nodes ({:.1}/s per node), {} of the control",
        samples.len() - control_samples.len(),
        (samples.len() - control_samples.len()) as f64 / addrs.len() as f64 / duration,
        control_samples.len()
    );
    println!(
        "  inv 1 worst overlap  {:.0} ms ({overlaps} overlaps, each a violation)",
        worst_overlap.as_secs_f64() * 1e3
    );
    println!(
        "  inv 2 down -> 503    worst {:.0} ms (bound {} ms)",
        worst_to_503.as_secs_f64() * 1e3,
        DOWN_BOUND.as_millis()
    );
    println!(
        "  inv 3 answer time    worst {:.1} ms, p99 {:.1} ms (bound {} ms), {inv3_checked} samples checked",
        worst_answer.as_secs_f64() * 1e3,
        duration_quantile(&latencies, 0.99).as_secs_f64() * 1e3,
        ANSWER_BOUND.as_millis()
    );
    println!(
        "    worst while the control daemon answered within the bound: {:.1} ms",
        worst_own.as_secs_f64() * 1e3
    );
    println!(
        "    control daemon: worst {:.1} ms, p99 {:.1} ms",
        duration_quantile(&control_latencies, 1.0).as_secs_f64() * 1e3,
        duration_quantile(&control_latencies, 0.99).as_secs_f64() * 1e3,
    );
    println!(
        "    excused as machine stalls (the control over the bound in the same round): \
         {machine_stalls} of {inv3_checked} samples (cap {max_excused}); {without_control} \
         samples in rounds without a control sample, judged without excuse"
    );
    for s in slowest.iter().take(3) {
        println!(
            "    {:.1} ms: {} at {:.2}s ({}); control {:.1} ms",
            s.latency.as_secs_f64() * 1e3,
            names[s.target],
            s.at.as_secs_f64(),
            during(s.at),
            control_at(s.at).map_or(f64::NAN, |c| c.latency.as_secs_f64() * 1e3)
        );
    }
    println!(
        "  inv 4 healed -> one 200 (primary {})  {:.0} ms (bound {} ms)",
        names[primary],
        convergence.as_secs_f64() * 1e3,
        heal_bound().as_millis()
    );
    let inv2_total: usize = inv2_checked.values().sum();
    println!("  samples checked per invariant:");
    println!(
        "    inv 1  {inv1_checked} (nodes sharing a site), {inv1_split_brain} of them during a split brain"
    );
    println!("    inv 2  {inv2_total} (database {inv2_checked:?})");
    println!("    inv 3  {inv3_checked}");
    println!("    inv 4  {tail} (after convergence)");
    for (inv, n) in [
        (
            "1 (split brain: a stale primary started beside the real one)",
            inv1_split_brain,
        ),
        ("2 (a database stopped or frozen)", inv2_total),
        (
            "2 (a postmaster alone frozen)",
            inv2_checked.get("postmaster frozen").copied().unwrap_or(0),
        ),
        ("3 (a running daemon sampled)", inv3_checked),
        ("4 (samples after healing)", tail),
    ] {
        if n == 0 {
            violations.push(format!("inv {inv} was never exercised"));
        }
    }
    println!("  violations           {}", violations.len());
    for v in violations.iter().take(30) {
        println!("    {v}");
    }
    let logs: Vec<String> = names
        .iter()
        .map(|n| {
            std::fs::read_to_string(run.lab.daemon_log(n).expect("log path")).unwrap_or_default()
        })
        .collect();
    for (n, log) in names.iter().zip(&logs) {
        assert!(
            !log.contains("panicked"),
            "seed {seed}: the daemon of {n} panicked:\n{log}"
        );
    }
    assert!(
        violations.is_empty(),
        "seed {seed}: {} invariant violations (see the summary)",
        violations.len()
    );
    assert!(control.running(), "the control daemon exited");
    for d in run.daemons.iter_mut().flatten() {
        d.stop().await;
    }
    let Run { lab, .. } = run;
    lab.teardown().await.expect("teardown");
}
