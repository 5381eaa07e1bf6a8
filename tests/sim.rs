//! Deterministic simulation of the vote protocol, driving the daemon's own cycle code.
//!
//! A site of 3 or 5 daemons (sometimes with a witness) plus a node of another site, each with
//! its own monotonic clock `local(t) = offset + rate·t` (rate within 1 ± ρ, the extremes drawn
//! often), realised as `Instant`s, so that the library gets real instants of *that node's*
//! clock. Each daemon runs the poll cycle with the functions `poller.rs` calls, in its order:
//! `cycle::plan` when the database answers (votes counted from the plan's instant, the release
//! the book asks for), `cycle::released` when a release is answered, `cycle::conclude` when the
//! last reply is in or the deadline passes, then `Conclusion::publish` (store, then retire at an
//! instant read after the store; each of the two steps takes a moment here, up to 1 ms, during
//! which the old snapshot is still served and `/release` waits for the holder's lock). `/vote`
//! and `/release` are answered by `cycle::vote` and `cycle::release`, which the server's handlers
//! call, through the wire's whole milliseconds. Faults: promotions (views move at random later
//! times, some never; the old primary dies, stays read-write naming itself, or is demoted), a
//! primary cut off from its site, daemon restarts, SIGSTOP pauses, database outages and hangs,
//! one-way and two-way partitions, slow networks (delays up to `peer_timeout` each way), metadata
//! naming nobody for a while.
//!
//! What a node answers at real time `t` is `served_state(local(t))` of its latest published
//! snapshot (nothing while paused or stopped); the 200 intervals are computed exactly, piece by
//! piece between the edges where the answer can change, and the real `served_state` classifies
//! each piece. Invariants, strict to the nanosecond: no two 200s of one site overlap at all; a
//! new node's first 200 comes at least `handoff_delay` after another's last; liveness (a healthy
//! primary keeps its 200, a new primary gets it within a bound, a primary cut off from its site
//! loses it within `vote_lease + interval`).
//!
//! An adversary on the network acts in every schedule ([`Adversary`]): at random instants (one
//! every 20 ms to 2 s on average, drawn per schedule) it sends releases and vote requests in
//! any member's name without the key, replays any message it saw (requests admitted with no
//! freshness rule: more than the real network allows), and answers requests in progress in the
//! voter's or holder's name without its key. The same invariants hold with it; the summary
//! counts its actions, what was refused, and the healthy stretches checked while it acted.
//! Messages carry their MAC as a fact (genuine and bound to a request, or forged): the
//! cryptography itself is `src/auth.rs`'s, tested there and in `tests/auth.rs`.
//!
//! Planted bugs, each of which a test asserts is caught: (a) the driver takes the instant the
//! votes were requested when the replies are in (the lease counted from the answer); (b) a
//! restarted daemon's book grants at once; (c) candidates hold votes without a handoff; (d) a
//! release that fails authentication is applied; (e) a release voids every voter's votes (the
//! rule before releases named their epoch); (f) an answer that fails authentication is counted.
//! (d) and (e) only withhold 200s, so a liveness violation catches them. Bugs in `vote.rs` or
//! `cycle.rs` themselves (the rounding margin, the order of publication and retirement) are
//! caught by `simulation_finds_no_violation` when planted there.
//!
//! Not modelled: haproxy and its checks (an answer is the served state at one instant; a 200
//! decided just before a pause and sent after it is not); the JSON of the wire (only its whole
//! milliseconds); TCP (a message lost to a partition is never delivered late; only the
//! adversary duplicates one); clock rates that change over time (each node keeps one rate per
//! schedule); timer lateness (deadlines and intervals fire on time); other races inside a
//! daemon (a step of the poller or a request is atomic, which is what the holder's lock gives
//! the publication; a pause or stop during a publication takes effect after it); reloads;
//! changes of membership or site (`repmgr.nodes` always lists the same nodes: two views that
//! disagree on a site's members need not share a majority).
//!
//! `PRIMGR_SIM_SCHEDULES=N` runs N schedules (default 100,000); `PRIMGR_SIM_SEED=S` replays
//! schedule S and prints its event log (with `PRIMGR_SIM_MUTANT=a|b|c|d|e|f`, under that
//! mutant); `PRIMGR_SIM_ADVERSARY=off` runs without the adversary (to measure its cost).
//!
//! Cluster scope (`vote_scope = "cluster"`) has its own section at the end: two and three sites,
//! partitions between sites, the invariants cluster-wide, and mutant (s), a site majority
//! accepted in cluster scope (`PRIMGR_SIM_CLUSTER_SCHEDULES=N`; replay with
//! `PRIMGR_SIM_SCOPE=cluster PRIMGR_SIM_SEED=S`, and `PRIMGR_SIM_MUTANT=s`).

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use primgr::auth::{BootId, GrantEpoch};
use primgr::config::{Config, Origin, Settings};
use primgr::cycle::{self, Gathered, Plan, ReleaseAnswer, Standing};
use primgr::db::{DbError, DbObservation, NodeRow};
use primgr::decide::{self, State};
use primgr::peers::{ReleaseReply, VoteReply};
use primgr::snapshot::{Member, SessionWatch, Snapshot, VoterReport};
use primgr::vote::{Book, Grant, Holder, LeaseRules, Release};
use primgr::wire::{VoteRequest, VoteScope};

const NS: u64 = 1;
const MS: u64 = 1_000_000 * NS;
const SEC: u64 = 1000 * MS;
/// Clock rates are `(DEN + k) / DEN`, |k| ≤ ρ·DEN: exact rationals, so the extremes are exact.
const DEN: u64 = 1_000_000;
/// Schedules in CI.
const CI_SCHEDULES: u64 = 100_000;

// ---------------------------------------------------------------------------------------------
// Randomness

/// splitmix64: small, seeded, good enough.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut r = Rng(seed ^ 0x5eed_0f51_117a_7e00);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.below(hi - lo + 1)
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) < p * (1u64 << 53) as f64
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// A delay in `0..=max`: zero and near the maximum often.
    fn delay(&mut self, max: u64) -> u64 {
        match self.below(10) {
            0 | 1 => 0,
            2 | 3 => self.range(max - max / 20, max),
            _ => self.range(0, max),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// A planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutant {
    None,
    /// (a) The driver takes the plan's `sent` when the replies are in (every vote's lease
    /// counted from the last answer).
    LeaseFromAnswer,
    /// (b) A restarted daemon's book is created as if it started `vote_lease` earlier.
    RestartGrantsAtOnce,
    /// (c) Candidates hold votes with `handoff_delay` 0 (invariant 2 checks the configured one).
    NoHandoff,
    /// (d) A `/release` that fails authentication (the adversary's, in a member's name) is
    /// applied as if that member had sent it.
    UnauthenticatedRelease,
    /// (e) A release voids every voter's votes (the old global fence), not only its sender's.
    GlobalFence,
    /// (f) An answer that fails authentication (forged, or a replay bound to another request)
    /// is counted.
    ForgedAnswer,
    /// (s) Cluster scope: candidates accept a majority of their own site (they plan and decide
    /// in site scope while every voter answers in cluster scope).
    SiteMajority,
}

impl Mutant {
    fn from_env() -> Mutant {
        match std::env::var("PRIMGR_SIM_MUTANT").as_deref() {
            Ok("a") => Mutant::LeaseFromAnswer,
            Ok("b") => Mutant::RestartGrantsAtOnce,
            Ok("c") => Mutant::NoHandoff,
            Ok("d") => Mutant::UnauthenticatedRelease,
            Ok("e") => Mutant::GlobalFence,
            Ok("f") => Mutant::ForgedAnswer,
            Ok("s") => Mutant::SiteMajority,
            _ => Mutant::None,
        }
    }
}

#[derive(Clone)]
struct Params {
    config: Config,
    /// The rules candidates hold votes with (the configuration's, but under mutant (c)).
    held: LeaseRules,
    /// ρ in millionths.
    ppm: u64,
    interval: u64,
    db_timeout: u64,
    peer_timeout: u64,
    lease: u64,
    handoff: u64,
    defaults: bool,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

impl Params {
    fn new(config: Config, mutant: Mutant, defaults: bool) -> Params {
        let rules = config.leases;
        let held = if mutant == Mutant::NoHandoff {
            LeaseRules {
                handoff_delay: Duration::ZERO,
                ..rules
            }
        } else {
            rules
        };
        Params {
            held,
            ppm: (config.leases.drift * DEN as f64).round() as u64,
            interval: nanos(config.timing.interval),
            db_timeout: nanos(config.db.db_timeout),
            peer_timeout: nanos(config.timing.peer_timeout),
            lease: nanos(config.leases.vote_lease),
            handoff: nanos(config.leases.handoff_delay),
            defaults,
            config,
        }
    }

    /// The failover bound of the issue (`vote_lease + handoff_delay + 2·interval`), and the
    /// one asserted. A voter renews its promise to the old primary (whoever asks) until its
    /// poller observes the move (`Book::begin_release`): up to a cycle, `max(interval,
    /// db_timeout + peer_timeout)`, plus `db_timeout` later; the promise then runs `vote_lease`
    /// on the voter's clock; the handoff follows (`handoff_delay·(1+ρ)` on the candidate's
    /// clock); the candidate asks within a cycle and gets the answer within `peer_timeout`.
    /// Clock rates stretch the middle terms by 1/(1−ρ).
    fn failover_bounds(&self) -> (u64, u64) {
        let rho = self.config.leases.drift;
        let spec = self.lease + self.handoff + 2 * self.interval;
        let cycle = self.interval.max(self.db_timeout + self.peer_timeout);
        let bound = cycle
            + self.db_timeout
            + ((self.lease as f64 + self.handoff as f64 * (1.0 + rho)) / (1.0 - rho)) as u64
            + cycle
            + self.peer_timeout;
        (spec, bound)
    }

    /// The defaults half of the time, else a random variant that `Config` validates.
    fn draw(rng: &mut Rng, mutant: Mutant) -> Params {
        thread_local! {
            static DEFAULTS: Config = Config::for_node("n1").expect("defaults");
        }
        if rng.chance(0.5) {
            return Params::new(DEFAULTS.with(Config::clone), mutant, true);
        }
        loop {
            let interval = rng.pick(&[500u64, 1000, 1000, 2000]);
            let db = rng.pick(&[200u64, 500, 1000, 2000]);
            let peer = rng.pick(&[100u64, 250, 500, 1000]);
            let lease = rng.pick(&[2000u64, 2345, 3000, 3777, 4000, 6000, 10_000]);
            let handoff = rng.pick(&[0u64, 500, 1000, 2500, 4000]);
            let drift = rng.pick(&[0.0, 0.001, 0.01, 0.05, 0.1, 0.2]);
            let text = format!(
                "node_name = \"n1\"\ninterval = \"{interval}ms\"\ndb_timeout = \"{db}ms\"\n\
                 peer_timeout = \"{peer}ms\"\nvote_lease = \"{lease}ms\"\n\
                 handoff_delay = \"{handoff}ms\"\nclock_drift = {drift:?}\n"
            );
            thread_local! {
                static VALIDATED: std::cell::RefCell<HashMap<String, Result<Config, String>>> =
                    Default::default();
            }
            let validated = VALIDATED.with(|cache| {
                cache
                    .borrow_mut()
                    .entry(text.clone())
                    .or_insert_with(|| {
                        let settings = Settings::parse(&text).expect("valid TOML");
                        settings
                            .validate(&Origin::Defaults)
                            .map_err(|e| e.to_string())
                    })
                    .clone()
            });
            // The validation rule, restated: a vote must count longer than the renewal gap.
            let rules = LeaseRules {
                vote_lease: Duration::from_millis(lease),
                scope: VoteScope::Site,
                handoff_delay: Duration::from_millis(handoff),
                drift,
            };
            let gap = Config::renewal_gap(
                Duration::from_millis(interval),
                Duration::from_millis(db),
                Duration::from_millis(peer),
            );
            let expected = rules.counted_for(rules.vote_lease) > gap;
            assert_eq!(validated.is_ok(), expected, "{text}: {validated:?}");
            if let Ok(config) = validated {
                return Params::new(config, mutant, false);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clocks

/// A node's monotonic clock: `local(t) = off + ⌊t·num/DEN⌋` (nanoseconds).
#[derive(Clone, Copy, Debug)]
struct Clock {
    off: u64,
    num: u64,
}

impl Clock {
    fn local(&self, t: u64) -> u64 {
        // In u64 while it fits (schedules last minutes), exact either way.
        match t.checked_mul(self.num) {
            Some(x) => self.off + x / DEN,
            None => self.off + (t as u128 * self.num as u128 / DEN as u128) as u64,
        }
    }

    /// The first real instant at which the clock reads `local` or more.
    fn real(&self, local: u64) -> u64 {
        let d = local.saturating_sub(self.off);
        match d.checked_mul(DEN) {
            Some(x) => x.div_ceil(self.num),
            None => (d as u128 * DEN as u128).div_ceil(self.num as u128) as u64,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The world outside the daemons

#[derive(Debug, Clone, Copy)]
enum Act {
    /// The daemon stops (counted: it runs again when every stop has had its start).
    Stop(usize),
    Start(usize),
    Pause(usize),
    Resume(usize),
    /// The database refuses connections (`hang`: it accepts and never answers).
    DbDown(usize, bool),
    DbUp(usize, bool),
    Recovery(usize, bool),
    /// The node's metadata now names this primary.
    View(usize, usize),
    /// The node's metadata names no primary (two rows say primary), counted.
    Nobody(usize, bool),
    /// Messages from .0 to .1 are dropped, counted.
    Cut(usize, usize, bool),
    /// Every message takes up to `peer_timeout` each way, counted.
    Slow(bool),
}

#[derive(Clone)]
struct World {
    down: Vec<u32>,
    paused: Vec<u32>,
    db_down: Vec<u32>,
    hang: Vec<u32>,
    in_recovery: Vec<bool>,
    view: Vec<usize>,
    nobody: Vec<u32>,
    cut: Vec<Vec<u32>>,
    slow: u32,
}

impl World {
    /// Everything up and connected; `in_recovery` says which databases are standbys.
    fn new(in_recovery: Vec<bool>) -> World {
        let total = in_recovery.len();
        World {
            down: vec![0; total],
            paused: vec![0; total],
            db_down: vec![0; total],
            hang: vec![0; total],
            in_recovery,
            view: vec![0; total],
            nobody: vec![0; total],
            cut: vec![vec![0; total]; total],
            slow: 0,
        }
    }

    fn view(&self, j: usize) -> Option<usize> {
        (self.nobody[j] == 0).then_some(self.view[j])
    }

    fn link(&self, a: usize, b: usize) -> bool {
        self.cut[a][b] == 0 && self.cut[b][a] == 0
    }

    fn up(&self, j: usize) -> bool {
        self.down[j] == 0 && self.paused[j] == 0 && self.db_down[j] == 0 && self.hang[j] == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Events

#[derive(Debug, Clone)]
enum Ev {
    Cycle {
        n: usize,
        inc: u32,
    },
    DbDone {
        n: usize,
        inc: u32,
        id: u64,
    },
    Deadline {
        n: usize,
        inc: u32,
        id: u64,
    },
    VoteReq {
        from: usize,
        inc: u32,
        id: u64,
        to: usize,
        via: Via,
    },
    /// The answer as the peer client reads it.
    VoteRep {
        n: usize,
        inc: u32,
        id: u64,
        voter: usize,
        reply: VoteReply,
        mac: Mac,
    },
    RelReq {
        from: usize,
        inc: u32,
        id: u64,
        to: usize,
        /// The epoch of the sender's grants it undoes (`/release?undoes=`).
        undoes: GrantEpoch,
        via: Via,
    },
    /// The answer as the peer client reads it.
    RelRep {
        n: usize,
        inc: u32,
        id: u64,
        holder: usize,
        reply: ReleaseReply,
        mac: Mac,
    },
    /// The adversary acts.
    Adversary,
}

/// Who put a request on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The sender's daemon, signed with the cluster's key.
    Daemon,
    /// The adversary, replaying the bytes of a request a daemon sent earlier: its MAC is
    /// genuine. The answer goes to the adversary (it holds the connection).
    Replay,
    /// The adversary, in the name of `from`, without the key: its MAC fails.
    Forged,
}

/// An answer's MAC: genuine and bound to the nonce of the request (the requester's
/// incarnation and cycle) it answered, or forged. The requester counts an answer only when its
/// MAC is genuine and bound to the request it is waiting for (`PeerClient::exchange_signed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mac {
    Bound(u32, u64),
    Forged,
    /// Sent by the adversary: a replay of a genuine answer, bound to its original request.
    Replayed(u32, u64),
}

impl Ev {
    /// The node that processes the event.
    fn target(&self) -> usize {
        match *self {
            Ev::Cycle { n, .. }
            | Ev::DbDone { n, .. }
            | Ev::Deadline { n, .. }
            | Ev::VoteRep { n, .. }
            | Ev::RelRep { n, .. } => n,
            Ev::VoteReq { to, .. } | Ev::RelReq { to, .. } => to,
            Ev::Adversary => usize::MAX,
        }
    }
}

/// The event queue: keys (time, sequence, slot) sorted latest first (few events are pending
/// at a time, so this beats a heap in a debug build), the events in a slab.
#[derive(Default)]
struct Queue {
    keys: Vec<(u64, u64, u32)>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, t: u64, ev: Ev) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(ev);
                i
            }
            None => {
                self.slab.push(Some(ev));
                self.slab.len() as u32 - 1
            }
        };
        self.seq += 1;
        let key = (t, self.seq, slot);
        // Most events go near the latest end: a linear scan beats a binary search unoptimised.
        let at = self
            .keys
            .iter()
            .position(|k| *k < key)
            .unwrap_or(self.keys.len());
        self.keys.insert(at, key);
    }

    fn peek(&self) -> Option<u64> {
        self.keys.last().map(|k| k.0)
    }

    fn pop(&mut self) -> Option<(u64, Ev)> {
        let (t, _, slot) = self.keys.pop()?;
        self.free.push(slot);
        Some((t, self.slab[slot as usize].take().unwrap()))
    }
}

// ---------------------------------------------------------------------------------------------
// Daemons

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DbMode {
    Ok,
    Refused,
    Hang,
}

/// A poll cycle in progress.
struct Cycle {
    id: u64,
    /// `started` (local).
    start: u64,
    mode: DbMode,
    observed: Option<Result<Rc<DbObservation>, DbError>>,
    /// `cycle::plan`'s answer, once the database answered.
    plan: Option<Plan>,
    /// The fan-out deadline (local).
    deadline: u64,
    pending: usize,
    /// The voters' answers so far.
    voters: Vec<VoterReport>,
    /// Whether the release asked for was answered (a second answer to it is not read).
    released_answered: bool,
    waiting: bool,
}

struct Daemon {
    book: Book,
    holder: Holder,
    /// The latest snapshot, served from real time `visible_from`; `prev` before that.
    snap: Rc<Snapshot>,
    prev: Rc<Snapshot>,
    visible_from: u64,
    cycles: u64,
    c: Option<Cycle>,
}

impl Daemon {
    /// The snapshot a request sees at real time `t`.
    fn published(&self, t: u64) -> Rc<Snapshot> {
        if t < self.visible_from {
            self.prev.clone()
        } else {
            self.snap.clone()
        }
    }
}

struct Node {
    name: String,
    site: usize,
    witness: bool,
    clock: Clock,
    d: Option<Daemon>,
    inc: u32,
    deferred: Vec<Ev>,
    /// The poller publishes until then, under the holder's lock (real time).
    busy_until: u64,
    seg_start: u64,
    /// Real intervals answering 200, merged.
    iv: Vec<(u64, u64)>,
    /// The metadata as this node's database returns it (cached per view and recovery).
    obs: Option<(Option<usize>, bool, Rc<DbObservation>)>,
}

impl Node {
    /// A node named `name` of `site`, its daemon not started, with a clock drawn from `rng`:
    /// its rate at one end of ±`ppm` (most often) or anywhere between, and its offset.
    fn drawn(rng: &mut Rng, ppm: u64, name: String, site: usize, witness: bool) -> Node {
        let k = match rng.below(10) {
            0..=3 => -(ppm as i64),
            4..=7 => ppm as i64,
            _ => rng.range(0, 2 * ppm) as i64 - ppm as i64,
        };
        Node {
            name,
            site,
            witness,
            clock: Clock {
                off: rng.range(100 * SEC, 1000 * SEC),
                num: (DEN as i64 + k) as u64,
            },
            d: None,
            inc: 0,
            deferred: Vec::new(),
            busy_until: 0,
            seg_start: 0,
            iv: Vec::new(),
            obs: None,
        }
    }
}

/// The liveness conditions of the world between two faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Health {
    /// The primary of a healthy site ([`Sim::healthy`]).
    healthy: Option<usize>,
    /// A node that a majority of its site makes live, and that majority ([`Sim::live`]).
    live: Option<(usize, u32)>,
}

// ---------------------------------------------------------------------------------------------
// Outcome of one schedule

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Overlap,
    Handoff,
    Liveness,
}

#[derive(Default, Clone)]
struct Stats {
    schedules: u64,
    sites: [u64; 2],
    /// Cluster scope: schedules of 2 + 2 + a witness, of 3 + 2; partitions between sites;
    /// failovers (live stretch → first 200, ns) that began while sites were cut apart.
    cluster_topologies: [u64; 2],
    site_cuts: u64,
    cut_failover: Vec<u64>,
    witnesses: u64,
    events: u64,
    publications: u64,
    sim_ns: u128,
    overlaps: u64,
    handoffs: u64,
    liveness: u64,
    /// Changes of the node answering 200 within a site, and the smallest gap at one (ns),
    /// with the gap less `handoff_delay` (ns, signed).
    changes: u64,
    min_gap: Option<i64>,
    /// The smallest gap less `handoff_delay` (ns; negative: short of it).
    min_margin: Option<i64>,
    /// Failover times (live stretch start → first 200), defaults only (ns) and all configs
    /// (as a fraction of `vote_lease + handoff_delay + 2·interval`).
    failover_default: Vec<u64>,
    /// The same when the stretch began with a metadata move (the last voter moved).
    moved_default: Vec<u64>,
    moved_worst: (u64, u64),
    failover_ratio: Vec<f64>,
    over_spec: u64,
    /// A primary cut off from its site: last 200 − cut (ns), defaults only; and all configs
    /// as a fraction of `vote_lease + interval`.
    cutoff_default: Vec<u64>,
    cutoff_ratio: Vec<f64>,
    healthy_stretches: u64,
    healthy_ns: u128,
    healthy_200_ns: u128,
    /// Schedules with at least one 200 (so the protocol is not trivially safe).
    with_200: u64,
    /// What the adversary did, and what was refused.
    adv: AdvCounts,
    /// Healthy stretches checked during which the adversary acted, and its actions in them.
    healthy_attacked: u64,
    healthy_attacks: u64,
    violations: Vec<(u64, Kind, String)>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.schedules += o.schedules;
        self.sites[0] += o.sites[0];
        self.cluster_topologies[0] += o.cluster_topologies[0];
        self.cluster_topologies[1] += o.cluster_topologies[1];
        self.site_cuts += o.site_cuts;
        self.cut_failover.extend(o.cut_failover);
        self.sites[1] += o.sites[1];
        self.witnesses += o.witnesses;
        self.events += o.events;
        self.publications += o.publications;
        self.sim_ns += o.sim_ns;
        self.overlaps += o.overlaps;
        self.handoffs += o.handoffs;
        self.liveness += o.liveness;
        self.changes += o.changes;
        self.min_gap = opt_min(self.min_gap, o.min_gap);
        self.min_margin = opt_min(self.min_margin, o.min_margin);
        self.failover_default.extend(o.failover_default);
        self.moved_default.extend(o.moved_default);
        self.moved_worst = self.moved_worst.max(o.moved_worst);
        self.failover_ratio.extend(o.failover_ratio);
        self.over_spec += o.over_spec;
        self.cutoff_default.extend(o.cutoff_default);
        self.cutoff_ratio.extend(o.cutoff_ratio);
        self.healthy_stretches += o.healthy_stretches;
        self.healthy_ns += o.healthy_ns;
        self.healthy_200_ns += o.healthy_200_ns;
        self.with_200 += o.with_200;
        self.adv.merge(o.adv);
        self.healthy_attacked += o.healthy_attacked;
        self.healthy_attacks += o.healthy_attacks;
        self.violations.extend(o.violations);
    }

    /// Schedules with an overlap, with a handoff violation.
    fn bad_schedules(&self) -> (u64, u64) {
        let mut seen = (Vec::new(), Vec::new());
        for (seed, kind, _) in &self.violations {
            match kind {
                Kind::Overlap => seen.0.push(*seed),
                Kind::Handoff => seen.1.push(*seed),
                Kind::Liveness => {}
            }
        }
        for v in [&mut seen.0, &mut seen.1] {
            v.sort_unstable();
            v.dedup();
        }
        (seen.0.len() as u64, seen.1.len() as u64)
    }

    fn safety_violations(&self) -> u64 {
        self.overlaps + self.handoffs
    }
}

fn opt_min<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation of one schedule

struct Sim {
    seed: u64,
    p: Params,
    mutant: Mutant,
    rng: Rng,
    base: Instant,
    nodes: Vec<Node>,
    /// Size of the main site (nodes 0..n); the last node is of another site. In cluster scope
    /// every node (the electorate is the whole cluster).
    n: usize,
    /// Cluster scope ([`Sim::new_cluster`]): sites cut apart, one electorate for all.
    cluster: bool,
    /// Cluster scope: (cut, heal) of each partition between sites.
    site_cuts: Vec<(u64, u64)>,
    world: World,
    acts: Vec<(u64, Act)>,
    queue: Queue,
    end: u64,
    members: Arc<Vec<Member>>,
    /// (time, healthy primary, live candidate) after each change of the world.
    timeline: Vec<(u64, Health)>,
    /// When a node's metadata moved to a new primary.
    moved: Vec<u64>,
    /// (cut, heal, primary): the primary cut off from its whole site.
    cutoffs: Vec<(u64, u64, usize)>,
    log: Option<Vec<String>>,
    events: u64,
    publications: u64,
    /// The adversary on the network (every schedule unless `PRIMGR_SIM_ADVERSARY=off`).
    adv: Option<Adversary>,
}

fn ms_floor(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A voter's answer as the poller reports it (the simulation has no addresses).
fn voter_report(name: String, reply: VoteReply, latency: Option<Duration>) -> VoterReport {
    VoterReport {
        name,
        url: Err("simulated".into()),
        reply,
        latency,
    }
}

fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / SEC as f64)
}

impl Sim {
    fn new(seed: u64, mutant: Mutant, base: Instant, log: bool) -> Sim {
        let mut rng = Rng::new(seed);
        let p = Params::draw(&mut rng, mutant);
        let n = if rng.chance(0.6) { 3 } else { 5 };
        let total = n + 1;
        let witness = rng.chance(0.2).then_some(n - 1);
        let scale = (p.lease + p.handoff + 2 * p.interval).max(7500 * MS);
        let end = rng.range(2 * scale, 7 * scale / 2);
        let nodes = (0..total)
            .map(|j| {
                let name = if j < n {
                    format!("n{}", j + 1)
                } else {
                    "far".to_string()
                };
                Node::drawn(
                    &mut rng,
                    p.ppm,
                    name,
                    usize::from(j >= n),
                    Some(j) == witness,
                )
            })
            .collect();
        let world = World::new((0..total).map(|j| j != 0 && Some(j) != witness).collect());
        let mut sim = Sim {
            seed,
            p,
            mutant,
            rng,
            base,
            nodes,
            n,
            cluster: false,
            site_cuts: Vec::new(),
            world,
            acts: Vec::new(),
            queue: Queue::default(),
            end,
            members: Arc::new(Vec::new()),
            timeline: Vec::new(),
            moved: Vec::new(),
            cutoffs: Vec::new(),
            log: log.then(Vec::new),
            events: 0,
            publications: 0,
            adv: None,
        };
        sim.generate();
        sim.arm_adversary(seed ^ 0xad7e_5a21_0000_0000, total);
        sim
    }

    /// The adversary of this schedule (unless `PRIMGR_SIM_ADVERSARY=off`), drawn from `seed`:
    /// how often it acts, among `total` nodes; its first act is queued.
    fn arm_adversary(&mut self, seed: u64, total: usize) {
        if !adversary_on() {
            return;
        }
        let mut rng = Rng::new(seed);
        let gap = rng.pick(&[20 * MS, 100 * MS, 500 * MS, 2 * SEC]);
        let first = rng.range(0, gap);
        self.adv = Some(Adversary {
            rng,
            gap,
            tap: Vec::new(),
            epochs: vec![None; total],
            acted: Vec::new(),
            counts: AdvCounts::default(),
        });
        self.push(first, Ev::Adversary);
    }

    fn note(&mut self, t: u64, f: impl FnOnce(&Sim) -> String) {
        if self.log.is_some() {
            let line = format!("{:>9} {}", secs(t), f(self));
            self.log.get_or_insert_default().push(line);
        }
    }

    fn inst(&self, local: u64) -> Instant {
        self.base + Duration::from_nanos(local)
    }

    fn ns(&self, i: Instant) -> u64 {
        nanos(i.duration_since(self.base))
    }

    fn local(&self, n: usize, t: u64) -> u64 {
        self.nodes[n].clock.local(t)
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.queue.push(t, ev);
    }

    fn act(&mut self, t: u64, a: Act) {
        self.acts.push((t, a));
    }

    // -----------------------------------------------------------------------------------------
    // The schedule

    fn generate(&mut self) {
        let total = self.nodes.len();
        let warm = self.rng.chance(0.75);
        // The other site's daemon runs in a sixth of the schedules (its row is always there).
        let far_runs = self.rng.chance(1.0 / 6.0);
        for j in 0..total {
            if j == self.n && !far_runs {
                self.world.down[j] = 1;
            } else if warm {
                // Daemons that started long ago, with no promise made yet.
                let now = self.local(j, 0);
                let ago = self.rng.range(self.p.lease, 60 * SEC);
                let phase = self.rng.range(0, self.p.interval);
                self.start_daemon(j, 0, now - ago, phase);
            } else {
                self.world.down[j] = 1;
                let t = self.rng.range(0, self.p.interval);
                self.act(t, Act::Start(j));
            }
        }
        let p = self.p.clone();
        let settle = p.lease + p.handoff + 2 * p.interval;
        let mut t = if warm {
            self.rng.range(SEC, 4 * SEC)
        } else {
            settle + self.rng.range(0, 2 * SEC)
        };
        let mut cur = 0;
        while t + 4 * SEC < self.end {
            if self.cluster {
                cur = self.cluster_fault(t, cur);
            } else {
                match self.rng.below(100) {
                    0..=44 => cur = self.failover(t, cur, None),
                    45..=64 => cur = self.cutoff(t, cur),
                    65..=74 => cur = self.failover(t, cur, Some(2)),
                    _ => {}
                }
            }
            t += self.rng.range(settle / 2, 2 * settle);
        }
        for _ in 0..self.rng.below(7) {
            self.noise();
        }
        self.acts.sort_by_key(|a| a.0);
        let end = self.end;
        self.acts.retain(|a| a.0 <= end);
    }

    /// A promotion of another node at `t`; returns the new primary.
    fn failover(&mut self, t: u64, old: usize, fate: Option<u64>) -> usize {
        let total = self.nodes.len();
        let candidates: Vec<usize> = (0..self.n)
            .filter(|&j| j != old && !self.nodes[j].witness)
            .collect();
        let new = if !self.cluster && old < self.n && self.rng.chance(0.03) || candidates.is_empty()
        {
            self.n
        } else {
            self.rng.pick(&candidates)
        };
        if new == old {
            return old;
        }
        let s = SEC;
        match fate.unwrap_or_else(|| self.rng.below(4)) {
            0 => {
                // The old primary's database dies; later it may come back as a standby, or
                // read-write still naming itself.
                let hang = self.rng.chance(0.3);
                let td = t.saturating_sub(self.rng.range(0, 3 * s));
                self.act(td, Act::DbDown(old, hang));
                match self.rng.below(3) {
                    0 => {}
                    1 => {
                        let tb = t + self.rng.range(2 * s, 15 * s);
                        self.act(tb, Act::Recovery(old, true));
                        self.act(tb, Act::View(old, new));
                        self.act(tb, Act::DbUp(old, hang));
                    }
                    _ => {
                        let tb = t + self.rng.range(s, 10 * s);
                        self.act(tb, Act::DbUp(old, hang));
                    }
                }
            }
            1 => {
                // Split brain: the old primary keeps running read-write, its metadata frozen
                // naming itself; perhaps demoted later.
                if self.rng.chance(0.5) {
                    let td = t + self.rng.range(s, 20 * s);
                    self.act(td, Act::Recovery(old, true));
                    let tv = td + self.rng.range(0, 2 * s);
                    self.act(tv, Act::View(old, new));
                }
            }
            2 => {
                // Switchover: the old primary is demoted first.
                let td = t.saturating_sub(self.rng.range(0, 2 * s));
                self.act(td, Act::Recovery(old, true));
                let tv = td + self.rng.range(0, 3 * s);
                self.act(tv, Act::View(old, new));
            }
            _ => {
                // Split brain, and the old primary's daemon is stopped or restarted.
                let tr = t.saturating_sub(s) + self.rng.range(0, 2 * s);
                if self.rng.chance(0.5) {
                    self.act(tr, Act::Pause(old));
                    let back = tr + self.rng.range(100 * MS, 8 * s);
                    self.act(back, Act::Resume(old));
                } else {
                    self.restart(tr, old);
                }
            }
        }
        self.act(t, Act::Recovery(new, false));
        self.act(t, Act::View(new, new));
        let spread = self.p.lease + self.p.handoff;
        for j in 0..total {
            if j == old || j == new || self.rng.chance(0.1) {
                continue;
            }
            let dl = match self.rng.below(10) {
                0..=2 => self.rng.range(0, 300 * MS),
                3..=7 => self.rng.range(0, 4 * s),
                _ => self.rng.range(0, spread),
            };
            let tj = t + dl;
            if self.rng.chance(0.15) {
                let from = tj.saturating_sub(self.rng.range(0, 2 * s));
                self.act(from, Act::Nobody(j, true));
                self.act(tj, Act::Nobody(j, false));
            }
            self.act(tj, Act::View(j, new));
            if self.rng.chance(0.25) {
                let tr = (tj + self.rng.range(0, 3 * s)).saturating_sub(3 * s / 2);
                self.restart(tr, j);
            }
        }
        new
    }

    /// The primary is cut off from its whole site for a while; perhaps a failover meanwhile.
    fn cutoff(&mut self, t: u64, p: usize) -> usize {
        if p >= self.n {
            return p;
        }
        let least = self.p.lease + self.p.interval;
        let heal = t + self.rng.range(least + 500 * MS, least + 8 * SEC);
        for j in 0..self.n {
            if j != p {
                for (a, b) in [(p, j), (j, p)] {
                    self.act(t, Act::Cut(a, b, true));
                    self.act(heal, Act::Cut(a, b, false));
                }
            }
        }
        self.cutoffs.push((t, heal, p));
        if self.rng.chance(0.5) {
            let tf = t + self.rng.range(0, 3 * SEC);
            return self.failover(tf, p, Some(1));
        }
        p
    }

    fn restart(&mut self, t: u64, j: usize) {
        self.act(t, Act::Stop(j));
        let down = if self.rng.chance(0.5) {
            0
        } else {
            self.rng.range(0, 4 * SEC)
        };
        self.act(t + down, Act::Start(j));
    }

    fn noise(&mut self) {
        let total = self.nodes.len();
        let j = self.rng.below(total as u64) as usize;
        let t = self.rng.range(0, self.end);
        let s = SEC;
        match self.rng.below(6) {
            0 => self.restart(t, j),
            1 => {
                self.act(t, Act::Pause(j));
                let back = t + self.rng.range(100 * MS, 7 * s);
                self.act(back, Act::Resume(j));
            }
            2 => {
                let hang = self.rng.chance(0.3);
                self.act(t, Act::DbDown(j, hang));
                let back = t + self.rng.range(300 * MS, 6 * s);
                self.act(back, Act::DbUp(j, hang));
            }
            3 => {
                let k = (j + 1 + self.rng.below(total as u64 - 1) as usize) % total;
                let heal = t + self.rng.range(300 * MS, 8 * s);
                let both = self.rng.chance(0.5);
                for (a, b) in [(j, k), (k, j)] {
                    if both || a == j {
                        self.act(t, Act::Cut(a, b, true));
                        self.act(heal, Act::Cut(a, b, false));
                    }
                }
            }
            4 => {
                self.act(t, Act::Slow(true));
                let back = t + self.rng.range(s, 10 * s);
                self.act(back, Act::Slow(false));
            }
            _ => {
                self.act(t, Act::Nobody(j, true));
                let back = t + self.rng.range(500 * MS, 4 * s);
                self.act(back, Act::Nobody(j, false));
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // The run

    fn run(&mut self) {
        self.record_health(0, None);
        // The faults (sorted) come before the daemons' events of the same instant.
        let mut next_act = 0;
        loop {
            let act = self.acts.get(next_act).map(|a| a.0);
            let t = match (act, self.queue.peek()) {
                (Some(a), Some(q)) if a <= q => a,
                (Some(a), None) => a,
                (_, Some(q)) => q,
                (None, None) => break,
            };
            if t > self.end {
                break;
            }
            self.events += 1;
            if act == Some(t) {
                next_act += 1;
                self.apply(t, next_act - 1);
            } else {
                let (_, ev) = self.queue.pop().unwrap();
                self.dispatch(t, ev);
            }
        }
        for j in 0..self.nodes.len() {
            self.close_segment(j, self.end);
        }
    }

    fn dispatch(&mut self, t: u64, ev: Ev) {
        if let Ev::Adversary = ev {
            self.adversary_acts(t);
            return;
        }
        // Messages cut at delivery are lost (the adversary's own reach every node); a paused
        // daemon takes what arrives later.
        let link = match ev {
            Ev::VoteReq {
                from,
                to,
                via: Via::Daemon,
                ..
            }
            | Ev::RelReq {
                from,
                to,
                via: Via::Daemon,
                ..
            } => Some((from, to)),
            Ev::VoteRep {
                n,
                voter,
                mac: Mac::Bound(..),
                ..
            } => Some((voter, n)),
            Ev::RelRep {
                n,
                holder,
                mac: Mac::Bound(..),
                ..
            } => Some((holder, n)),
            _ => None,
        };
        if link.is_some_and(|(a, b)| self.world.cut[a][b] > 0) {
            return;
        }
        // The adversary taps every message that crosses the network.
        if link.is_some() && self.adv.is_some() {
            self.tap(&ev);
        }
        let n = ev.target();
        // While its poller publishes, a node's `/release` waits for the holder's lock, and the
        // poller's own events for the poller; `/vote` does not wait.
        let busy = self.nodes[n].busy_until;
        if t < busy && self.nodes[n].d.is_some() && !matches!(ev, Ev::VoteReq { .. }) {
            self.push(busy, ev);
            return;
        }
        if self.world.paused[n] > 0 && self.nodes[n].d.is_some() {
            self.nodes[n].deferred.push(ev);
            return;
        }
        match ev {
            Ev::Adversary => {}
            Ev::Cycle { n, inc } => {
                if self.nodes[n].inc == inc && self.nodes[n].d.is_some() {
                    self.cycle_start(t, n);
                }
            }
            Ev::DbDone { n, inc, id } => {
                if self.current(n, inc, id) {
                    self.db_done(t, n);
                }
            }
            Ev::Deadline { n, inc, id } => {
                if self.current(n, inc, id) && self.cycle(n).waiting {
                    self.decide(t, n);
                }
            }
            Ev::VoteReq {
                via: Via::Forged,
                from,
                to,
                ..
            } => self.refuse_forged(t, from, to, "/vote"),
            Ev::VoteReq {
                from,
                inc,
                id,
                to,
                via,
            } => self.answer_vote(t, from, inc, id, to, via),
            Ev::VoteRep {
                n,
                inc,
                id,
                voter,
                reply,
                mac,
            } => {
                if !self.counts_answer(n, inc, id, mac) {
                    return;
                }
                if self.receiving(t, n, inc, id) && !self.answered(n, voter) {
                    let received = self.inst(self.local(n, t));
                    let name = self.nodes[voter].name.clone();
                    let c = self.cycle_mut(n);
                    let sent = c.plan.as_ref().unwrap().sent;
                    c.voters
                        .push(voter_report(name, reply, Some(received - sent)));
                    self.replied(t, n);
                }
            }
            Ev::RelReq {
                via: Via::Forged,
                from,
                to,
                ..
            } if self.mutant != Mutant::UnauthenticatedRelease => {
                self.refuse_forged(t, from, to, "/release")
            }
            Ev::RelReq {
                from,
                inc,
                id,
                to,
                undoes,
                via,
            } => self.answer_release(t, from, inc, id, to, undoes, via),
            Ev::RelRep {
                n,
                inc,
                id,
                holder,
                reply,
                mac,
            } => {
                if !self.counts_answer(n, inc, id, mac) {
                    return;
                }
                if self.receiving(t, n, inc, id) && !self.cycle(n).released_answered {
                    self.cycle_mut(n).released_answered = true;
                    let now = self.inst(self.local(n, t));
                    let name = self.nodes[holder].name.clone();
                    let rules = self.cycle(n).plan.as_ref().unwrap().rules;
                    let d = self.nodes[n].d.as_mut().unwrap();
                    let answer = ReleaseAnswer::Peer(reply);
                    if let Ok(at) = cycle::released(&mut d.book, &rules, &name, &answer, now) {
                        self.note(t, |s| {
                            format!(
                                "{} released its promise to {name} (last 200 at {})",
                                s.nodes[n].name,
                                s.real_of(n, at)
                            )
                        });
                    }
                    self.replied(t, n);
                }
            }
        }
    }

    fn current(&self, n: usize, inc: u32, id: u64) -> bool {
        let node = &self.nodes[n];
        node.inc == inc
            && node
                .d
                .as_ref()
                .and_then(|d| d.c.as_ref())
                .is_some_and(|c| c.id == id)
    }

    /// A reply to the cycle in progress, before its deadline.
    fn receiving(&self, t: u64, n: usize, inc: u32, id: u64) -> bool {
        self.current(n, inc, id) && {
            let c = self.cycle(n);
            c.waiting && self.local(n, t) < c.deadline
        }
    }

    fn cycle(&self, n: usize) -> &Cycle {
        self.nodes[n].d.as_ref().unwrap().c.as_ref().unwrap()
    }

    fn cycle_mut(&mut self, n: usize) -> &mut Cycle {
        self.nodes[n].d.as_mut().unwrap().c.as_mut().unwrap()
    }

    fn replied(&mut self, t: u64, n: usize) {
        let c = self.cycle_mut(n);
        c.pending -= 1;
        if c.pending == 0 {
            self.decide(t, n);
        }
    }

    fn apply(&mut self, t: u64, i: usize) {
        let a = self.acts[i].1;
        self.note(t, |s| format!("fault {}", s.describe(a)));
        let bump = |c: &mut u32, on: bool| {
            if on { *c += 1 } else { *c -= 1 }
        };
        match a {
            Act::Stop(j) => {
                if self.world.down[j] == 0 {
                    self.close_segment(j, t);
                    let node = &mut self.nodes[j];
                    node.d = None;
                    node.inc += 1;
                    node.deferred.clear();
                    node.busy_until = 0;
                }
                self.world.down[j] += 1;
            }
            Act::Start(j) => {
                self.world.down[j] -= 1;
                if self.world.down[j] == 0 {
                    let now = self.local(j, t);
                    let boot = self.rng.range(0, 50 * MS);
                    self.start_daemon(j, t, now, boot);
                }
            }
            Act::Pause(j) => {
                self.close_segment(j, t);
                self.world.paused[j] += 1;
            }
            Act::Resume(j) => {
                self.close_segment(j, t);
                self.world.paused[j] -= 1;
                if self.world.paused[j] == 0 {
                    for ev in std::mem::take(&mut self.nodes[j].deferred) {
                        self.push(t, ev);
                    }
                }
            }
            Act::DbDown(j, true) => self.world.hang[j] += 1,
            Act::DbDown(j, false) => self.world.db_down[j] += 1,
            Act::DbUp(j, true) => self.world.hang[j] -= 1,
            Act::DbUp(j, false) => self.world.db_down[j] -= 1,
            Act::Recovery(j, r) => self.world.in_recovery[j] = r,
            Act::View(j, v) => self.world.view[j] = v,
            Act::Nobody(j, on) => bump(&mut self.world.nobody[j], on),
            Act::Cut(a, b, on) => bump(&mut self.world.cut[a][b], on),
            Act::Slow(on) => bump(&mut self.world.slow, on),
        }
        self.record_health(t, Some(a));
    }

    fn describe(&self, a: Act) -> String {
        let nm = |j: usize| self.nodes[j].name.as_str();
        match a {
            Act::Stop(j) => format!("{} daemon stops", nm(j)),
            Act::Start(j) => format!("{} daemon starts", nm(j)),
            Act::Pause(j) => format!("{} daemon paused", nm(j)),
            Act::Resume(j) => format!("{} daemon resumed", nm(j)),
            Act::DbDown(j, h) => format!("{} database {}", nm(j), if h { "hangs" } else { "down" }),
            Act::DbUp(j, h) => format!(
                "{} database up (was {})",
                nm(j),
                if h { "hung" } else { "down" }
            ),
            Act::Recovery(j, r) => format!("{} in_recovery = {r}", nm(j)),
            Act::View(j, v) => format!("{} metadata names {}", nm(j), nm(v)),
            Act::Nobody(j, on) => format!("{} metadata names nobody: {on}", nm(j)),
            Act::Cut(a, b, on) => format!("link {} -> {} cut: {on}", nm(a), nm(b)),
            Act::Slow(on) => format!("slow network: {on}"),
        }
    }

    /// Starts node `j`'s daemon at `t` (its clock reading `started`); its first cycle `first`
    /// later.
    fn start_daemon(&mut self, j: usize, t: u64, started: u64, first: u64) {
        let lease = self.p.config.leases.vote_lease;
        let book_start = if self.mutant == Mutant::RestartGrantsAtOnce {
            started - self.p.lease
        } else {
            started
        };
        let node = &mut self.nodes[j];
        node.inc += 1;
        // A boot id of its own for every start (the daemon draws it from the OS).
        let mut boot = [0u8; 16];
        boot[..8].copy_from_slice(&self.seed.to_be_bytes());
        boot[8..12].copy_from_slice(&(j as u32).to_be_bytes());
        boot[12..].copy_from_slice(&node.inc.to_be_bytes());
        let book = Book::new(lease, self.inst(book_start), BootId::from_bytes(boot));
        let holder = Holder::new(self.inst(started), lease);
        let node = &mut self.nodes[j];
        node.seg_start = t;
        node.busy_until = 0;
        let starting = Rc::new(Snapshot::starting());
        node.d = Some(Daemon {
            book,
            holder,
            snap: starting.clone(),
            prev: starting,
            visible_from: t,
            cycles: 0,
            c: None,
        });
        let inc = node.inc;
        self.push(t + first, Ev::Cycle { n: j, inc });
    }

    // -----------------------------------------------------------------------------------------
    // The poll cycle: `cycle.rs`'s steps, driven as `poller::cycle` drives them

    fn cycle_start(&mut self, t: u64, n: usize) {
        let start = self.local(n, t);
        let mode = if self.world.db_down[n] > 0 {
            DbMode::Refused
        } else if self.world.hang[n] > 0 {
            DbMode::Hang
        } else {
            DbMode::Ok
        };
        let latency = match mode {
            DbMode::Refused => self.rng.range(0, 2 * MS),
            DbMode::Hang => self.p.db_timeout,
            DbMode::Ok => match self.rng.below(10) {
                0..=5 => self.rng.range(0, 20 * MS),
                6..=7 => self.rng.range(0, self.p.db_timeout),
                _ => self
                    .rng
                    .range(self.p.db_timeout * 9 / 10, self.p.db_timeout),
            },
        };
        let inc = self.nodes[n].inc;
        let d = self.nodes[n].d.as_mut().unwrap();
        d.cycles += 1;
        let id = d.cycles;
        d.c = Some(Cycle {
            id,
            start,
            mode,
            observed: None,
            plan: None,
            deadline: 0,
            pending: 0,
            voters: Vec::new(),
            released_answered: false,
            waiting: false,
        });
        let done = self.nodes[n].clock.real(start + latency).max(t);
        self.push(done, Ev::DbDone { n, inc, id });
    }

    /// The metadata of node `n`'s database now.
    fn observation(&mut self, n: usize) -> Rc<DbObservation> {
        let view = self.world.view(n);
        let rec = self.world.in_recovery[n];
        if let Some((v, r, obs)) = &self.nodes[n].obs {
            if *v == view && *r == rec {
                return obs.clone();
            }
        }
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(j, node)| NodeRow {
                node_id: j as i32 + 1,
                node_name: node.name.clone(),
                node_type: if node.witness {
                    decide::WITNESS
                } else if Some(j) == view {
                    "primary"
                } else {
                    "standby"
                }
                .to_string(),
                active: true,
                location: format!("dc{}", node.site + 1),
                conninfo: format!("host=10.0.0.{}", j + 1),
            })
            .collect();
        let obs = Rc::new(DbObservation {
            in_recovery: rec,
            nodes,
            wal: Default::default(),
        });
        self.nodes[n].obs = Some((view, rec, obs.clone()));
        obs
    }

    fn db_done(&mut self, t: u64, n: usize) {
        let now = self.local(n, t);
        let mode = self.cycle(n).mode;
        let observed = match mode {
            DbMode::Refused => Err(DbError::Connect("connection refused".into())),
            DbMode::Hang => Err(DbError::Timeout(self.p.config.db.db_timeout)),
            DbMode::Ok if self.world.db_down[n] > 0 => {
                Err(DbError::Query("terminating connection".into()))
            }
            DbMode::Ok => Ok(self.observation(n)),
        };
        let me = self.nodes[n].name.clone();
        let at = self.inst(now);
        let held = self.p.held;
        let d = self.nodes[n].d.as_mut().unwrap();
        let plan = cycle::plan(&me, held, observed.as_ref().map(|o| &**o), &mut d.book, at);
        let inc = self.nodes[n].inc;
        let id = self.cycle(n).id;
        let voters: Vec<usize> = plan.voters.iter().map(|v| self.index(v)).collect();
        let mut pending = voters.len();
        for &v in &voters {
            self.send(
                t,
                n,
                v,
                Ev::VoteReq {
                    from: n,
                    inc,
                    id,
                    to: v,
                    via: Via::Daemon,
                },
            );
        }
        match plan.release.as_ref().map(|a| (a.holder.as_str(), a.undoes)) {
            // This node's own holder, as `POST /release` answers.
            Some((holder, undoes)) if holder == me => {
                let d = self.nodes[n].d.as_mut().unwrap();
                let published = d.published(t);
                let own = cycle::release(&mut d.holder, &published, &me, undoes, at);
                let own = ReleaseAnswer::Own(own);
                if let Ok(last_200) = cycle::released(&mut d.book, &plan.rules, &me, &own, at) {
                    self.note(t, |s| {
                        format!(
                            "{me} released its own vote (last 200 at {})",
                            s.real_of(n, last_200)
                        )
                    });
                }
            }
            Some((holder, undoes)) => {
                let h = self.index(holder);
                pending += 1;
                self.send(
                    t,
                    n,
                    h,
                    Ev::RelReq {
                        from: n,
                        inc,
                        id,
                        to: h,
                        undoes,
                        via: Via::Daemon,
                    },
                );
            }
            None => {}
        }
        let deadline = now + self.p.peer_timeout;
        let c = self.cycle_mut(n);
        c.observed = Some(observed);
        c.plan = Some(plan);
        c.deadline = deadline;
        c.waiting = true;
        c.pending = pending;
        if pending == 0 {
            self.decide(t, n);
        } else {
            let when = self.nodes[n].clock.real(deadline);
            self.push(when, Ev::Deadline { n, inc, id });
        }
    }

    fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|x| x.name == name).unwrap()
    }

    fn real_of(&self, n: usize, i: Instant) -> String {
        secs(self.nodes[n].clock.real(self.ns(i)))
    }

    /// Sends a message: lost if the link is cut now (or at delivery), else delayed.
    fn send(&mut self, t: u64, from: usize, to: usize, ev: Ev) {
        if self.world.cut[from][to] > 0 {
            return;
        }
        // A healthy link answers within `peer_timeout` on the fastest clock.
        let max = if self.world.slow > 0 {
            self.p.peer_timeout
        } else {
            (self.p.peer_timeout as f64 / 2.0 / (1.0 + self.p.config.leases.drift)) as u64
        };
        let delay = self.rng.delay(max);
        self.push(t + delay, ev);
    }

    /// `/vote` on `to`, asked by `from`: `cycle::vote` against the snapshot `to` serves now,
    /// read as the peer client reads the answer.
    fn answer_vote(&mut self, t: u64, from: usize, inc: u32, id: u64, to: usize, via: Via) {
        let now = self.inst(self.local(to, t));
        let candidate = self.nodes[from].name.clone();
        let scope = self.p.config.leases.scope;
        let answer = self.nodes[to].d.as_mut().map(|d| {
            let published = d.published(t);
            let request = VoteRequest {
                candidate: Some(candidate.clone()),
                scope,
            };
            cycle::vote(&mut d.book, &request, scope, &published, now)
        });
        // The reasons only matter to the log (formatting them costs time).
        let why = |no: &primgr::vote::NoVote| match self.log {
            Some(_) => format!("no vote: {}", no.reason()),
            None => String::new(),
        };
        // On the wire: whole milliseconds; a zero lease is no vote.
        let reply = match &answer {
            None => VoteReply::Failed("not running".into()),
            Some(Ok(g)) if g.to == candidate && !ms_floor(g.lease).is_zero() => {
                VoteReply::Granted(Grant {
                    to: g.to.clone(),
                    lease: ms_floor(g.lease),
                    exclusive: ms_floor(g.exclusive),
                    epoch: g.epoch,
                })
            }
            Some(Ok(g)) if g.to == candidate => VoteReply::Failed("a zero lease".into()),
            Some(Ok(g)) => VoteReply::Withdrawn(format!("votes for {}", g.to)),
            Some(Err(no)) if no.withdraws() => VoteReply::Withdrawn(why(no)),
            Some(Err(no)) => VoteReply::Refused(why(no)),
        };
        if self.log.is_some() {
            let (v, c) = (&self.nodes[to].name, &self.nodes[from].name);
            let line = match &reply {
                VoteReply::Granted(g) => {
                    format!("{v} votes for {c} (exclusive {})", secs(nanos(g.exclusive)))
                }
                VoteReply::Refused(why) | VoteReply::Withdrawn(why) | VoteReply::Failed(why) => {
                    format!("{v} gives {c} no vote: {why}")
                }
            };
            self.note(t, |_| line);
        }
        let ev = Ev::VoteRep {
            n: from,
            inc,
            id,
            voter: to,
            reply,
            mac: Mac::Bound(inc, id),
        };
        if via == Via::Daemon {
            self.send(t, to, from, ev);
        } else {
            // A replayed request: the adversary holds the connection and keeps the answer.
            self.tap(&ev);
        }
    }

    /// `POST /release` on `to`, asked by `from`: `cycle::release` against the snapshot `to`
    /// serves now (the holder's lock is free: a publication in progress delayed the request).
    #[allow(clippy::too_many_arguments)]
    fn answer_release(
        &mut self,
        t: u64,
        from: usize,
        inc: u32,
        id: u64,
        to: usize,
        undoes: GrantEpoch,
        via: Via,
    ) {
        let now = self.inst(self.local(to, t));
        let voter = self.nodes[from].name.clone();
        let reply = match self.nodes[to].d.as_mut() {
            None => ReleaseReply::Failed("not running".into()),
            Some(d) => {
                let published = d.published(t);
                match cycle::release(&mut d.holder, &published, &voter, undoes, now) {
                    Release::Released { last_200 } => {
                        if self.mutant == Mutant::GlobalFence {
                            global_fence(d, &published, now);
                        }
                        ReleaseReply::Released {
                            last_200_ago: ms_floor(now.saturating_duration_since(last_200)),
                        }
                    }
                    Release::Refused(why) => ReleaseReply::Refused(why),
                }
            }
        };
        self.note(t, |s| {
            format!(
                "{} {} release to {}",
                s.nodes[to].name,
                match reply {
                    ReleaseReply::Released { .. } => "grants",
                    _ => "refuses",
                },
                s.nodes[from].name
            )
        });
        let ev = Ev::RelRep {
            n: from,
            inc,
            id,
            holder: to,
            reply,
            mac: Mac::Bound(inc, id),
        };
        if via == Via::Daemon {
            self.send(t, to, from, ev);
        } else {
            self.tap(&ev);
        }
    }

    /// How long one step of a publication takes (real ns): often nothing, sometimes up to a
    /// millisecond (the poller's thread preempted between the store and the clock read).
    fn step_time(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=4 => 0,
            5..=7 => self.rng.range(1, 10_000),
            _ => self.rng.range(1, MS),
        }
    }

    /// The rest of the cycle at `t`: `cycle::conclude`, then `Conclusion::publish` (the store
    /// and the clock read after it each take a moment); the next cycle.
    fn decide(&mut self, t: u64, n: usize) {
        let now = self.inst(self.local(n, t));
        let mut c = self.nodes[n].d.as_mut().unwrap().c.take().unwrap();
        let mut plan = c.plan.take().unwrap();
        for name in &plan.voters {
            if !c.voters.iter().any(|v| &v.name == name) {
                let failed = VoteReply::Failed("no answer within peer_timeout".into());
                c.voters.push(voter_report(name.clone(), failed, None));
            }
        }
        if self.mutant == Mutant::LeaseFromAnswer {
            plan.sent = now;
            for v in c.voters.iter_mut().filter(|v| v.latency.is_some()) {
                v.latency = Some(Duration::ZERO);
            }
        }
        let gathered = Gathered {
            started: self.inst(c.start),
            started_wall: UNIX_EPOCH,
            voters: c.voters,
            members: self.members.clone(),
            max_staleness: self.p.config.timing.max_staleness,
            replication: None,
            drained: None,
            voter_failures: Arc::default(),
            session: SessionWatch::default(),
            hooks: Arc::default(),
        };
        let steps = [self.step_time(), self.step_time()];
        let (clock, base) = (self.nodes[n].clock, self.base);
        let d = self.nodes[n].d.as_mut().unwrap();
        let previous = d.snap.clone();
        let observed = c.observed.as_ref().unwrap().as_ref().map(|o| &**o);
        let standing = Standing {
            book: &mut d.book,
            holder: &d.holder,
            previous: &previous,
        };
        let conclusion = cycle::conclude(plan, observed, gathered, standing, now);
        // Each call `publish` makes, in its order, happens one step later than the one before.
        let cursor = Cell::new(t);
        let calls = Cell::new(0);
        let step = || {
            cursor.set(cursor.get() + steps[calls.get()]);
            calls.set(calls.get() + 1);
            cursor.get()
        };
        let mut stored = None;
        conclusion.publish(
            &mut d.holder,
            |snapshot| stored = Some((step(), snapshot)),
            || base + Duration::from_nanos(clock.local(step())),
        );
        let (stored_at, snapshot) = stored.expect("publish stores the snapshot");
        let end = cursor.get();
        // The old snapshot is served until the store.
        self.close_segment(n, stored_at);
        let d = self.nodes[n].d.as_mut().unwrap();
        d.prev = std::mem::replace(&mut d.snap, Rc::new(snapshot));
        d.visible_from = stored_at;
        self.nodes[n].busy_until = end;
        self.publications += 1;
        if self.log.is_some() {
            let me = self.nodes[n].name.clone();
            let snap = self.nodes[n].d.as_ref().unwrap().snap.clone();
            let window = snap.verdict.window.map_or(String::new(), |w| {
                format!(
                    " window [{}, {})",
                    self.real_of(n, w.from),
                    self.real_of(n, w.until)
                )
            });
            let votes: Vec<String> = snap
                .ballot
                .votes
                .iter()
                .map(|v| {
                    let r = |i: Instant| self.nodes[n].clock.real(self.ns(i));
                    format!(
                        "{} sent {} settles {} until {}",
                        v.voter,
                        r(v.sent),
                        r(v.settled_at),
                        r(v.valid_until)
                    )
                })
                .collect();
            self.note(stored_at, |_| {
                format!(
                    "{me} publishes {}{window}: {} {votes:?}",
                    snap.verdict.state, snap.verdict.reason
                )
            });
        }
        let next = (c.start + self.p.interval).max(self.local(n, end));
        let when = self.nodes[n].clock.real(next).max(end);
        let inc = self.nodes[n].inc;
        self.push(when, Ev::Cycle { n, inc });
    }

    // -----------------------------------------------------------------------------------------
    // What each node answers

    /// Records what node `n` answered from its last change up to `t`: the 200 pieces of
    /// `served_state` of its snapshot (nothing when stopped or paused).
    /// A fault during a publication (before the store, which was recorded ahead) records
    /// nothing: the publication takes effect first.
    fn close_segment(&mut self, n: usize, t: u64) {
        if t <= self.nodes[n].seg_start {
            return;
        }
        let from = std::mem::replace(&mut self.nodes[n].seg_start, t);
        let answering = self.world.paused[n] == 0 && self.world.down[n] == 0;
        let Some(d) = self.nodes[n].d.as_ref().filter(|_| answering) else {
            return;
        };
        let snap = d.snap.clone();
        let clock = self.nodes[n].clock;
        // Where the answer may change (local): staleness, and the window's ends.
        let mut cuts = [t; 5];
        if let Some(at) = snap.observed_at {
            let stale = self.ns(at) + nanos(snap.max_staleness);
            cuts[0] = clock.real(stale);
            cuts[1] = clock.real(stale + 1);
        }
        if let Some(w) = snap.verdict.window {
            cuts[2] = clock.real(self.ns(w.from));
            cuts[3] = clock.real(self.ns(w.until));
        }
        for c in &mut cuts {
            if *c <= from || *c > t {
                *c = t;
            }
        }
        cuts.sort_unstable();
        let mut a = from;
        for b in cuts {
            if b == a {
                continue;
            }
            let state = snap.served_state(self.inst(clock.local(a)));
            if state == State::Primary {
                let iv = &mut self.nodes[n].iv;
                match iv.last_mut() {
                    Some(last) if last.1 == a => last.1 = b,
                    _ => iv.push((a, b)),
                }
            }
            a = b;
        }
    }

    // -----------------------------------------------------------------------------------------
    // Liveness conditions of the world

    fn record_health(&mut self, t: u64, act: Option<Act>) {
        if let Some(Act::View(..)) = act {
            self.moved.push(t);
        }
        let h = Health {
            healthy: self.healthy(),
            live: self.live(),
        };
        if self.timeline.last().is_none_or(|l| l.1 != h) {
            self.timeline.push((t, h));
        }
    }

    /// The primary of a healthy site: every daemon, database and link up, one primary that
    /// every node names, every other node a standby or the witness, no slow network.
    fn healthy(&self) -> Option<usize> {
        let w = &self.world;
        if w.slow > 0 {
            return None;
        }
        let p = w.view(0)?;
        if p >= self.n || w.in_recovery[p] {
            return None;
        }
        for j in 0..self.n {
            if !w.up(j) || w.view(j) != Some(p) {
                return None;
            }
            if j != p && !self.nodes[j].witness && !w.in_recovery[j] {
                return None;
            }
            if (0..self.n).any(|k| !w.link(j, k)) {
                return None;
            }
        }
        Some(p)
    }

    /// A node of the main site that should answer 200: it is up, read-write, names itself, and
    /// a majority of the site (itself included) is up, names it and reaches it.
    /// With the set of those nodes (a bit mask).
    fn live(&self) -> Option<(usize, u32)> {
        let w = &self.world;
        if w.slow > 0 {
            return None;
        }
        for b in 0..self.n {
            if self.nodes[b].witness || !w.up(b) || w.in_recovery[b] || w.view(b) != Some(b) {
                continue;
            }
            let mut members = 0u32;
            for j in 0..self.n {
                if w.up(j) && w.view(j) == Some(b) && w.link(b, j) {
                    members |= 1 << j;
                }
            }
            if members.count_ones() as usize >= decide::majority(self.n) {
                return Some((b, members));
            }
        }
        None
    }

    // -----------------------------------------------------------------------------------------
    // Invariants

    fn check(&mut self) -> Stats {
        let mut st = Stats {
            schedules: 1,
            events: self.events,
            publications: self.publications,
            sim_ns: self.end as u128,
            ..Stats::default()
        };
        if self.cluster {
            st.cluster_topologies[usize::from(self.nodes.iter().all(|x| !x.witness))] += 1;
            st.site_cuts += self.site_cuts.len() as u64;
        } else {
            st.sites[usize::from(self.n == 5)] += 1;
        }
        if let Some(adv) = &self.adv {
            st.adv = adv.counts;
        }
        st.witnesses += u64::from(self.nodes.iter().any(|x| x.witness));
        if self.nodes.iter().any(|x| !x.iv.is_empty()) {
            st.with_200 += 1;
        }
        let d = self.p.handoff;
        // Cluster scope: one electorate, every node in one group.
        let cluster = self.cluster;
        for site in 0..2 {
            let mut ivs: Vec<(u64, u64, usize)> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, x)| if cluster { site == 0 } else { x.site == site })
                .flat_map(|(j, x)| x.iv.iter().map(move |&(a, b)| (a, b, j)))
                .collect();
            ivs.sort();
            for (i, &(a, b, j)) in ivs.iter().enumerate() {
                // The latest end of another node's earlier 200.
                let mut latest: Option<(u64, usize)> = None;
                for &(a2, b2, k) in &ivs[..i] {
                    if k == j {
                        continue;
                    }
                    let by = b2.min(b).saturating_sub(a);
                    if by > 0 {
                        st.overlaps += 1;
                        let what = format!(
                            "overlap: {} answers 200 in [{}, {}) and {} in [{}, {})",
                            self.nodes[k].name,
                            secs(a2),
                            secs(b2),
                            self.nodes[j].name,
                            secs(a),
                            secs(b)
                        );
                        st.violations.push((self.seed, Kind::Overlap, what));
                    } else if latest.is_none_or(|l| b2 > l.0) {
                        latest = Some((b2, k));
                    }
                }
                let Some((end, k)) = latest else {
                    continue;
                };
                let gap = a as i64 - end as i64;
                let first = ivs[..i].iter().filter(|x| x.2 == j).all(|x| x.1 <= end);
                if first {
                    st.changes += 1;
                    st.min_gap = opt_min(st.min_gap, Some(gap));
                    st.min_margin = opt_min(st.min_margin, Some(gap - d as i64));
                }
                if gap < (d as i64) {
                    st.handoffs += 1;
                    let what = format!(
                        "handoff: {} answers 200 from {}, {} ns after {}'s last 200 ended at {} \
                         (handoff_delay {})",
                        self.nodes[j].name,
                        secs(a),
                        gap,
                        self.nodes[k].name,
                        secs(end),
                        secs(d)
                    );
                    st.violations.push((self.seed, Kind::Handoff, what));
                }
            }
        }
        self.check_liveness(&mut st);
        st
    }

    /// Whether node `j` answers 200 at `t`, and the first 200 at or after `t` before `until`.
    fn first_200(&self, j: usize, t: u64, until: u64) -> Option<u64> {
        self.nodes[j]
            .iv
            .iter()
            .find(|&&(_, b)| b > t)
            .map(|&(a, _)| a.max(t))
            .filter(|&a| a < until)
    }

    fn check_liveness(&mut self, st: &mut Stats) {
        let p = &self.p;
        let rho = p.config.leases.drift;
        let stretch = (1.0 + rho) / (1.0 - rho);
        let (spec, bound) = p.failover_bounds();
        let cycle = p.interval.max(p.peer_timeout) + p.db_timeout + p.peer_timeout;
        // After this, a healthy site's primary holds only votes granted in the stretch.
        let settle = (p.lease as f64 * stretch) as u64 + cycle + p.interval;
        let mut segs: Vec<(u64, u64, Health)> = Vec::new();
        for (i, &(t, h)) in self.timeline.iter().enumerate() {
            let next = self.timeline.get(i + 1).map_or(self.end, |x| x.0);
            segs.push((t, next, h));
        }
        // A new primary gets its 200 within the bound once a majority of its site has been
        // live for it: up, naming it, reaching it (the same majority all along, from `h0`: the
        // majority-th earliest time since which a node has been in the live set).
        let k = decide::majority(self.n);
        let mut since = vec![0u64; self.n];
        let mut groups: Vec<(usize, u64, u64, u64)> = Vec::new(); // (b, h0, from, to)
        let mut prev: Option<(usize, u32)> = None;
        for &(a, e, h) in &segs {
            let Some((b, mask)) = h.live else {
                prev = None;
                continue;
            };
            for (j, s) in since.iter_mut().enumerate() {
                let was = prev.is_some_and(|(pb, pm)| pb == b && pm & 1 << j != 0);
                if mask & 1 << j != 0 && !was {
                    *s = a;
                }
            }
            let mut starts: Vec<u64> = (0..self.n)
                .filter(|j| mask & 1 << j != 0)
                .map(|j| since[j])
                .collect();
            starts.sort_unstable();
            let h0 = starts[k - 1];
            match groups.last_mut() {
                Some(g) if g.0 == b && g.1 == h0 && g.3 == a => g.3 = e,
                _ => groups.push((b, h0, a, e)),
            }
            prev = Some((b, mask));
        }
        for &(b, h0, _, h1) in &groups {
            let at_start = self.nodes[b].iv.iter().any(|&(a, e)| a <= h0 && h0 < e);
            if at_start || h1 == self.end && h1 - h0 < bound {
                continue;
            }
            match self.first_200(b, h0, h1) {
                Some(first) => {
                    let took = first - h0;
                    if p.defaults {
                        st.failover_default.push(took);
                        if self.moved.contains(&h0) {
                            st.moved_default.push(took);
                            st.moved_worst = st.moved_worst.max((took, self.seed));
                        }
                    }
                    st.failover_ratio.push(took as f64 / spec as f64);
                    if p.defaults && self.site_cuts.iter().any(|&(a, b)| a <= h0 && h0 < b) {
                        st.cut_failover.push(took);
                    }
                    st.over_spec += u64::from(took > spec);
                    if took > bound {
                        st.liveness += 1;
                        st.violations.push((
                            self.seed,
                            Kind::Liveness,
                            format!(
                                "{} live from {} answers 200 only {} later (bound {})",
                                self.nodes[b].name,
                                secs(h0),
                                secs(took),
                                secs(bound)
                            ),
                        ));
                    }
                }
                None if h1 - h0 > bound => {
                    st.liveness += 1;
                    st.violations.push((
                        self.seed,
                        Kind::Liveness,
                        format!(
                            "{} live in [{}, {}) never answers 200",
                            self.nodes[b].name,
                            secs(h0),
                            secs(h1)
                        ),
                    ));
                }
                None => {}
            }
        }
        // A healthy site's primary, once it answers 200 after the settling time, keeps it.
        let mut i = 0;
        while i < segs.len() {
            let Some(pr) = segs[i].2.healthy else {
                i += 1;
                continue;
            };
            let h0 = segs[i].0;
            let mut k = i;
            while k + 1 < segs.len() && segs[k + 1].2.healthy == Some(pr) {
                k += 1;
            }
            let h1 = segs[k].1;
            i = k + 1;
            let from = h0 + settle;
            if from >= h1 {
                continue;
            }
            st.healthy_stretches += 1;
            st.healthy_ns += (h1 - from) as u128;
            if let Some(adv) = &self.adv {
                let attacks = adv.acted.iter().filter(|&&a| from <= a && a < h1).count() as u64;
                st.healthy_attacks += attacks;
                st.healthy_attacked += u64::from(attacks > 0);
            }
            let pieces: Vec<(u64, u64)> = self.nodes[pr]
                .iv
                .iter()
                .filter(|&&(a, b)| b > from && a < h1)
                .map(|&(a, b)| (a.max(from), b.min(h1)))
                .collect();
            st.healthy_200_ns += pieces.iter().map(|x| (x.1 - x.0) as u128).sum::<u128>();
            let broken = pieces.len() > 1 || pieces.first().is_some_and(|x| x.1 < h1);
            let never = pieces.is_empty() && h1 - h0 > bound;
            if broken || never {
                st.liveness += 1;
                st.violations.push((
                    self.seed,
                    Kind::Liveness,
                    format!(
                        "healthy site, primary {} in [{}, {}): 200 pieces {:?}",
                        self.nodes[pr].name,
                        secs(h0),
                        secs(h1),
                        pieces
                            .iter()
                            .map(|x| (secs(x.0), secs(x.1)))
                            .collect::<Vec<_>>()
                    ),
                ));
            }
        }
        // A primary cut off from its whole site stops answering 200 within lease + interval.
        let limit = p.lease + p.interval;
        for &(tc, heal, pr) in &self.cutoffs {
            let at_cut = self.nodes[pr].iv.iter().any(|&(a, b)| a <= tc && tc < b);
            if !at_cut {
                continue;
            }
            let last = self.nodes[pr]
                .iv
                .iter()
                .filter(|&&(a, _)| a < heal)
                .map(|&(_, b)| b)
                .max()
                .unwrap_or(tc);
            let took = last.min(heal) - tc;
            if p.defaults {
                st.cutoff_default.push(took);
            }
            st.cutoff_ratio.push(took as f64 / limit as f64);
            if took > limit || last >= heal {
                st.liveness += 1;
                st.violations.push((
                    self.seed,
                    Kind::Liveness,
                    format!(
                        "{} cut off at {} answers 200 until {}",
                        self.nodes[pr].name,
                        secs(tc),
                        secs(last)
                    ),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The adversary on the network

/// Whether schedules have the adversary (`PRIMGR_SIM_ADVERSARY=off` runs them without, to
/// measure what it costs).
fn adversary_on() -> bool {
    std::env::var("PRIMGR_SIM_ADVERSARY").as_deref() != Ok("off")
}

/// The most messages the adversary remembers (the latest ones).
const TAP: usize = 64;

/// A host on the network without the cluster's key. It sees every message that crosses the
/// network (a tap, not a gate: it cannot keep one from arriving, which is a cut, a fault of its
/// own), and at random instants, one every `gap` on average, it
/// - sends `/release` to any daemon in any member's name, naming the latest grant epoch of
///   that member it saw (a forged MAC);
/// - sends `/vote?candidate=` to any daemon in any member's name (a forged MAC);
/// - replays any message it saw: a request to its recipient (a genuine MAC, admitted with no
///   freshness rule at all: more than the real network allows, where a replay needs a fresh
///   ticket and an unseen nonce; it keeps the answer), or an answer to its requester's request
///   in progress (a genuine MAC bound to the request it answered);
/// - answers a request in progress in the voter's or holder's name (a forged MAC): a vote with
///   a 10-minute lease and exclusivity, or "released" with a last 200 ten minutes ago.
///
/// The daemon's rules, as the sim applies them: a request whose MAC fails gets 401 and changes
/// nothing (`api.rs`'s `authenticate`); an answer counts only when its MAC is genuine and bound
/// to the request waited for (`PeerClient::exchange_signed`), else it is no answer and the
/// requester keeps waiting for the real one.
struct Adversary {
    rng: Rng,
    /// Mean time between two actions (real ns), drawn per schedule.
    gap: u64,
    /// The messages it saw, the latest last.
    tap: Vec<Ev>,
    /// The latest grant epoch it saw of each node.
    epochs: Vec<Option<GrantEpoch>>,
    /// When it acted (real ns).
    acted: Vec<u64>,
    counts: AdvCounts,
}

#[derive(Debug, Default, Clone, Copy)]
struct AdvCounts {
    actions: u64,
    forged_releases: u64,
    forged_votes: u64,
    replayed_requests: u64,
    replayed_answers: u64,
    forged_answers: u64,
    /// Requests refused for their MAC (401), and answers not counted for theirs.
    refused: u64,
    not_counted: u64,
}

impl AdvCounts {
    fn merge(&mut self, o: AdvCounts) {
        self.actions += o.actions;
        self.forged_releases += o.forged_releases;
        self.forged_votes += o.forged_votes;
        self.replayed_requests += o.replayed_requests;
        self.replayed_answers += o.replayed_answers;
        self.forged_answers += o.forged_answers;
        self.refused += o.refused;
        self.not_counted += o.not_counted;
    }
}

/// Mutant (e): the holder's release voids every vote it holds or received in the cycle in
/// progress, of every voter (what a release did before releases named their epoch).
fn global_fence(d: &mut Daemon, published: &Snapshot, now: Instant) {
    let held = published.ballot.votes.iter().map(|v| (&v.voter, v.epoch));
    let received =
        d.c.iter()
            .flat_map(|c| &c.voters)
            .filter_map(|v| match &v.reply {
                VoteReply::Granted(g) => Some((&v.name, g.epoch)),
                _ => None,
            });
    let all: Vec<(String, GrantEpoch)> = held
        .chain(received)
        .filter_map(|(v, e)| Some((v.clone(), e?)))
        .collect();
    for (voter, epoch) in all {
        d.holder.release(None, &voter, epoch, now);
    }
}

impl Sim {
    /// The adversary sees `ev` cross the network.
    fn tap(&mut self, ev: &Ev) {
        let Some(adv) = self.adv.as_mut() else {
            return;
        };
        if let Ev::VoteRep {
            voter,
            reply: VoteReply::Granted(g),
            ..
        } = ev
        {
            adv.epochs[*voter] = g.epoch.or(adv.epochs[*voter]);
        }
        if adv.tap.len() == TAP {
            adv.tap.remove(0);
        }
        adv.tap.push(ev.clone());
    }

    /// A request whose MAC fails: 401, nothing changes.
    fn refuse_forged(&mut self, t: u64, from: usize, to: usize, endpoint: &str) {
        if let Some(adv) = self.adv.as_mut() {
            adv.counts.refused += 1;
        }
        self.note(t, |s| {
            format!(
                "{} refuses {endpoint} in {}'s name without the key (401)",
                s.nodes[to].name, s.nodes[from].name
            )
        });
    }

    /// Whether node `n` counts an answer with `mac` to its request `(inc, id)`: only a genuine
    /// MAC bound to that request (or anything, under mutant (f)).
    fn counts_answer(&mut self, n: usize, inc: u32, id: u64, mac: Mac) -> bool {
        let bound = match mac {
            Mac::Bound(i, d) | Mac::Replayed(i, d) => (i, d) == (inc, id),
            Mac::Forged => false,
        };
        if bound || self.mutant == Mutant::ForgedAnswer {
            return true;
        }
        if let Some(adv) = self.adv.as_mut() {
            adv.counts.not_counted += 1;
        }
        let _ = n;
        false
    }

    /// Whether `voter` already answered node `n`'s cycle in progress.
    fn answered(&self, n: usize, voter: usize) -> bool {
        let name = &self.nodes[voter].name;
        self.cycle(n).voters.iter().any(|v| &v.name == name)
    }

    /// The adversary's action at `t`, and its next.
    fn adversary_acts(&mut self, t: u64) {
        let Some(mut adv) = self.adv.take() else {
            return;
        };
        let total = self.nodes.len() as u64;
        adv.acted.push(t);
        adv.counts.actions += 1;
        let dummy = GrantEpoch::first(BootId::from_bytes([0; 16]));
        let ev = match adv.rng.below(100) {
            0..=24 => {
                let h = adv.rng.below(total) as usize;
                let v = (h + 1 + adv.rng.below(total - 1) as usize) % total as usize;
                adv.counts.forged_releases += 1;
                Some(Ev::RelReq {
                    from: v,
                    inc: 0,
                    id: 0,
                    to: h,
                    undoes: adv.epochs[v].unwrap_or(dummy),
                    via: Via::Forged,
                })
            }
            25..=39 => {
                let v = adv.rng.below(total) as usize;
                let c = (v + 1 + adv.rng.below(total - 1) as usize) % total as usize;
                adv.counts.forged_votes += 1;
                Some(Ev::VoteReq {
                    from: c,
                    inc: 0,
                    id: 0,
                    to: v,
                    via: Via::Forged,
                })
            }
            40..=74 if !adv.tap.is_empty() => {
                let i = adv.rng.below(adv.tap.len() as u64) as usize;
                match adv.tap[i].clone() {
                    Ev::VoteReq {
                        via: Via::Daemon, ..
                    }
                    | Ev::RelReq {
                        via: Via::Daemon, ..
                    } => {
                        adv.counts.replayed_requests += 1;
                        Some(match adv.tap[i].clone() {
                            Ev::VoteReq {
                                from, inc, id, to, ..
                            } => Ev::VoteReq {
                                from,
                                inc,
                                id,
                                to,
                                via: Via::Replay,
                            },
                            Ev::RelReq {
                                from,
                                inc,
                                id,
                                to,
                                undoes,
                                ..
                            } => Ev::RelReq {
                                from,
                                inc,
                                id,
                                to,
                                undoes,
                                via: Via::Replay,
                            },
                            _ => unreachable!(),
                        })
                    }
                    // An answer, to the request its requester has in progress now.
                    Ev::VoteRep {
                        n,
                        voter,
                        reply,
                        mac: Mac::Bound(i0, d0),
                        ..
                    } => {
                        adv.counts.replayed_answers += 1;
                        let (inc, id) = self.in_progress(n);
                        Some(Ev::VoteRep {
                            n,
                            inc,
                            id,
                            voter,
                            reply,
                            mac: Mac::Replayed(i0, d0),
                        })
                    }
                    Ev::RelRep {
                        n,
                        holder,
                        reply,
                        mac: Mac::Bound(i0, d0),
                        ..
                    } => {
                        adv.counts.replayed_answers += 1;
                        let (inc, id) = self.in_progress(n);
                        Some(Ev::RelRep {
                            n,
                            inc,
                            id,
                            holder,
                            reply,
                            mac: Mac::Replayed(i0, d0),
                        })
                    }
                    _ => None,
                }
            }
            _ => {
                // Answers, in the name of the one asked, a request it saw lately.
                let recent: Vec<&Ev> = adv
                    .tap
                    .iter()
                    .rev()
                    .filter(|e| {
                        matches!(
                            e,
                            Ev::VoteReq {
                                via: Via::Daemon,
                                ..
                            } | Ev::RelReq {
                                via: Via::Daemon,
                                ..
                            }
                        )
                    })
                    .take(8)
                    .collect();
                if recent.is_empty() {
                    None
                } else {
                    let pick = recent[adv.rng.below(recent.len() as u64) as usize].clone();
                    adv.counts.forged_answers += 1;
                    let long = Duration::from_secs(600);
                    match pick {
                        Ev::VoteReq {
                            from, inc, id, to, ..
                        } => Some(Ev::VoteRep {
                            n: from,
                            inc,
                            id,
                            voter: to,
                            reply: VoteReply::Granted(Grant {
                                to: self.nodes[from].name.clone(),
                                lease: long,
                                exclusive: long,
                                epoch: Some(adv.epochs[to].unwrap_or(dummy)),
                            }),
                            mac: Mac::Forged,
                        }),
                        Ev::RelReq {
                            from, inc, id, to, ..
                        } => Some(Ev::RelRep {
                            n: from,
                            inc,
                            id,
                            holder: to,
                            reply: ReleaseReply::Released { last_200_ago: long },
                            mac: Mac::Forged,
                        }),
                        _ => None,
                    }
                }
            }
        };
        // Its messages take a moment too.
        let delay = adv.rng.range(0, self.p.peer_timeout / 2);
        let next = t + 1 + adv.rng.range(0, 2 * adv.gap);
        self.adv = Some(adv);
        if let Some(ev) = ev {
            self.push(t + delay, ev);
        }
        self.push(next, Ev::Adversary);
    }

    /// Node `n`'s incarnation and the id of its cycle in progress (0 when none).
    fn in_progress(&self, n: usize) -> (u32, u64) {
        let node = &self.nodes[n];
        let id = node
            .d
            .as_ref()
            .and_then(|d| d.c.as_ref())
            .map_or(0, |c| c.id);
        (node.inc, id)
    }
}

// ---------------------------------------------------------------------------------------------
// Running many schedules

fn run_one(seed: u64, mutant: Mutant, base: Instant, log: bool) -> (Stats, Option<Vec<String>>) {
    run_one_in(VoteScope::Site, seed, mutant, base, log)
}

/// [`run_one`] in `scope` (cluster scope: [`Sim::new_cluster`]).
fn run_one_in(
    scope: VoteScope,
    seed: u64,
    mutant: Mutant,
    base: Instant,
    log: bool,
) -> (Stats, Option<Vec<String>>) {
    let mut sim = match scope {
        VoteScope::Site => Sim::new(seed, mutant, base, log),
        VoteScope::Cluster => Sim::new_cluster(seed, mutant, base, log),
    };
    sim.run();
    let st = sim.check();
    if let Some(log) = sim.log.as_mut() {
        for x in &sim.nodes {
            log.push(format!(
                "{} (dc{}, rate {:+} ppm): 200 in {:?}",
                x.name,
                x.site + 1,
                x.clock.num as i64 - DEN as i64,
                x.iv.iter()
                    .map(|&(a, b)| format!("[{}, {})", secs(a), secs(b)))
                    .collect::<Vec<_>>()
            ));
        }
    }
    (st, sim.log)
}

/// Runs schedules `0..count` on every core; with `stop_at_first`, until a safety violation.
fn run_many(count: u64, mutant: Mutant, stop_at_first: bool) -> (Stats, Option<u64>) {
    run_many_in(VoteScope::Site, count, mutant, stop_at_first)
}

/// [`run_many`] in `scope`.
fn run_many_in(
    scope: VoteScope,
    count: u64,
    mutant: Mutant,
    stop_at_first: bool,
) -> (Stats, Option<u64>) {
    let base = Instant::now();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8) as u64;
    let found = std::sync::atomic::AtomicU64::new(u64::MAX);
    let stats: Vec<Stats> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let found = &found;
                s.spawn(move || {
                    let mut total = Stats::default();
                    let mut seed = k;
                    while seed < count {
                        if stop_at_first && seed > found.load(std::sync::atomic::Ordering::Relaxed)
                        {
                            break;
                        }
                        let (st, _) = run_one_in(scope, seed, mutant, base, false);
                        if caught_by(mutant, &st) {
                            found.fetch_min(seed, std::sync::atomic::Ordering::Relaxed);
                        }
                        total.merge(st);
                        seed += threads;
                    }
                    total
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = Stats::default();
    for st in stats {
        total.merge(st);
    }
    let first = found.into_inner();
    (total, (first != u64::MAX).then_some(first))
}

fn dist_ns(xs: &mut [u64]) -> String {
    if xs.is_empty() {
        return "none".into();
    }
    xs.sort_unstable();
    format!(
        "n={} min {} median {} p99 {} max {}",
        xs.len(),
        secs(xs[0]),
        secs(xs[xs.len() / 2]),
        secs(xs[xs.len() * 99 / 100]),
        secs(xs[xs.len() - 1])
    )
}

fn dist_f(xs: &mut [f64]) -> String {
    if xs.is_empty() {
        return "none".into();
    }
    xs.sort_by(f64::total_cmp);
    format!(
        "n={} min {:.3} median {:.3} p99 {:.3} max {:.3}",
        xs.len(),
        xs[0],
        xs[xs.len() / 2],
        xs[xs.len() * 99 / 100],
        xs[xs.len() - 1]
    )
}

fn report(st: &mut Stats, elapsed: Duration) {
    println!(
        "schedules {} ({} sites of 3, {} of 5, {} with a witness), {:.0} simulated hours, \
         {} events, {} publications, in {:.1}s",
        st.schedules,
        st.sites[0],
        st.sites[1],
        st.witnesses,
        st.sim_ns as f64 / 3.6e12,
        st.events,
        st.publications,
        elapsed.as_secs_f64()
    );
    println!(
        "1. overlaps (any, to the nanosecond): {}\n2. handoff violations (any gap short of \
         handoff_delay): {}; changes of the 200 node: {}, smallest gap {}, smallest gap − \
         handoff_delay {}",
        st.overlaps,
        st.handoffs,
        st.changes,
        st.min_gap
            .map_or("-".into(), |g| format!("{:.6}s", g as f64 / SEC as f64)),
        st.min_margin.map_or("-".into(), |g| format!("{g} ns")),
    );
    println!(
        "3. liveness violations: {}; schedules with a 200: {}",
        st.liveness, st.with_200
    );
    println!(
        "   failover (live stretch → first 200), defaults: {}",
        dist_ns(&mut st.failover_default)
    );
    let defaults = Params::new(Config::for_node("n1").unwrap(), Mutant::None, true);
    let (spec, bound) = defaults.failover_bounds();
    let over = st.moved_default.iter().filter(|&&x| x > spec).count();
    println!(
        "   last voter moves → first 200, defaults: {} (worst: seed {}); issue's bound {} \
         (above it: {over}), asserted {}",
        dist_ns(&mut st.moved_default),
        st.moved_worst.1,
        secs(spec),
        secs(bound)
    );
    println!(
        "   failover / (vote_lease + handoff_delay + 2·interval), all configs: {}; above 1: {}",
        dist_f(&mut st.failover_ratio),
        st.over_spec
    );
    println!(
        "   cut off → last 200, defaults: {}",
        dist_ns(&mut st.cutoff_default)
    );
    println!(
        "   cut off → last 200 / (vote_lease + interval), all configs: {}",
        dist_f(&mut st.cutoff_ratio)
    );
    println!(
        "   healthy stretches checked (every daemon, database and link of the site up, no slow \
         network, one read-write primary that every node names, the others standbys or the \
         witness; from vote_lease·(1+ρ)/(1−ρ) + a cycle + interval after the stretch began, \
         its primary's 200 must never break): {}, 200 for {:.4} of their time",
        st.healthy_stretches,
        st.healthy_200_ns as f64 / st.healthy_ns.max(1) as f64
    );
    let a = &st.adv;
    println!(
        "4. adversary: {} actions ({} releases and {} vote requests in a member's name without \
         the key, {} requests and {} answers replayed, {} answers forged in a voter's or \
         holder's name); requests refused for their MAC: {}, answers not counted: {}; healthy \
         stretches checked while it acted: {} ({} actions in them), every one of them kept \
         its 200 unless counted in 3.",
        a.actions,
        a.forged_releases,
        a.forged_votes,
        a.replayed_requests,
        a.replayed_answers,
        a.forged_answers,
        a.refused,
        a.not_counted,
        st.healthy_attacked,
        st.healthy_attacks
    );
    st.violations.sort_by_key(|v| v.0);
    for (seed, kind, what) in st.violations.iter().take(10) {
        println!("   seed {seed}: {kind:?}: {what}");
    }
}

fn schedules() -> u64 {
    std::env::var("PRIMGR_SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SCHEDULES)
}

/// The real code: no overlap, no handoff violation, no liveness violation.
#[test]
fn simulation_finds_no_violation() {
    if let Some(seed) = std::env::var("PRIMGR_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let mutant = Mutant::from_env();
        let (mut st, log) = run_one(seed, mutant, Instant::now(), true);
        for line in log.unwrap() {
            println!("{line}");
        }
        report(&mut st, Duration::ZERO);
        assert_eq!(st.violations.len(), 0, "seed {seed} under {mutant:?}");
        return;
    }
    let started = Instant::now();
    let (mut st, _) = run_many(schedules(), Mutant::None, false);
    report(&mut st, started.elapsed());
    assert!(
        st.with_200 * 2 > st.schedules,
        "too few schedules with a 200"
    );
    assert_eq!(st.overlaps, 0, "overlapping 200s");
    assert_eq!(st.handoffs, 0, "handoff violations");
    assert_eq!(st.liveness, 0, "liveness violations");
}

/// Schedules on which each mutant's detection rate is measured.
const RATE_SCHEDULES: u64 = 1000;

/// Whether a schedule's outcome catches `mutant`: a safety violation (an overlap, a handoff
/// short of `handoff_delay`); for the mutants that only cost 200s (d, e: more votes voided than
/// released), any violation, liveness included (a healthy primary's 200 lost, a new primary's
/// 200 later than the bound).
fn caught_by(mutant: Mutant, st: &Stats) -> bool {
    match mutant {
        Mutant::UnauthenticatedRelease | Mutant::GlobalFence => !st.violations.is_empty(),
        _ => st.safety_violations() > 0,
    }
}

fn caught(mutant: Mutant) {
    let started = Instant::now();
    let (rate, mut first) = run_many(RATE_SCHEDULES.min(schedules()), mutant, false);
    if first.is_none() {
        first = run_many(schedules(), mutant, true).1;
    }
    let Some(seed) = first else {
        panic!("{mutant:?} not caught in {} schedules", schedules());
    };
    let (one, _) = run_one(seed, mutant, Instant::now(), false);
    let (overlap, handoff) = rate.bad_schedules();
    let liveness = {
        let mut seeds: Vec<u64> = rate
            .violations
            .iter()
            .filter(|v| v.1 == Kind::Liveness)
            .map(|v| v.0)
            .collect();
        seeds.dedup();
        seeds.len()
    };
    let found = one
        .violations
        .iter()
        .find(|v| v.1 != Kind::Liveness)
        .or(one.violations.first())
        .map_or("", |v| v.2.as_str());
    println!(
        "{mutant:?}: first caught by schedule {seed} (PRIMGR_SIM_SEED={seed}), within the first \
         {} schedules ({:.1}s); of the first {} schedules, {} with an overlap, {} with a \
         handoff violation, {} with a liveness violation; at {seed}: {found}",
        seed + 1,
        started.elapsed().as_secs_f64(),
        rate.schedules,
        overlap,
        handoff,
        liveness,
    );
}

#[test]
fn mutant_lease_counted_from_the_answer_is_caught() {
    caught(Mutant::LeaseFromAnswer);
}

#[test]
fn mutant_restart_granting_at_once_is_caught() {
    caught(Mutant::RestartGrantsAtOnce);
}

#[test]
fn mutant_missing_handoff_is_caught() {
    caught(Mutant::NoHandoff);
}

/// (d): the adversary's releases in a member's name, without the key, accepted.
#[test]
fn mutant_unauthenticated_release_is_caught() {
    caught(Mutant::UnauthenticatedRelease);
}

/// (e): a release voids every voter's votes, not only its sender's.
#[test]
fn mutant_global_fence_is_caught() {
    caught(Mutant::GlobalFence);
}

/// (f): an answer that fails authentication counted.
#[test]
fn mutant_forged_answer_counted_is_caught() {
    caught(Mutant::ForgedAnswer);
}

// ---------------------------------------------------------------------------------------------
// Cluster scope (`vote_scope = "cluster"`, issue 19)
//
// Two topologies: dc1 {n1, n2}, dc2 {n3, n4} and a witness `w` in dc3; dc1 {n1, n2, n3},
// dc2 {n4, n5}. Every node is of the one electorate (`Sim::n` is the whole cluster), so the
// invariants above hold cluster-wide: no two 200s anywhere overlap, a new 200 anywhere comes
// `handoff_delay` after the last, the node a majority of the cluster makes live gets its 200
// within the failover bound, a healthy cluster's primary keeps it, a primary cut off from
// every node loses it within `vote_lease + interval`. Faults besides those of site scope:
// partitions between sites (each site on one side, the witness's site on one side, on both or
// on neither), often with a promotion on the other side whose metadata reaches the first side
// only after the heal while the old primary stays read-write naming itself (a split brain, the
// case `site` scope cannot help); a node cut off from its own site; failovers across sites.
// The adversary of site scope acts in these schedules too.
//
// `PRIMGR_SIM_CLUSTER_SCHEDULES=N` runs N schedules (default `CLUSTER_CI_SCHEDULES`);
// `PRIMGR_SIM_SEED=S PRIMGR_SIM_SCOPE=cluster` replays one with its log.

/// Cluster-scope schedules in CI (the 100,000-schedule run is reported in docs/guarantees.md).
const CLUSTER_CI_SCHEDULES: u64 = 30_000;

fn cluster_schedules() -> u64 {
    std::env::var("PRIMGR_SIM_CLUSTER_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CLUSTER_CI_SCHEDULES)
}

impl Params {
    /// [`Params::draw`] in cluster scope; under mutant (s) candidates hold votes in site scope.
    fn draw_cluster(rng: &mut Rng, mutant: Mutant) -> Params {
        let mut p = Params::draw(rng, mutant);
        p.config.leases.scope = VoteScope::Cluster;
        p.held.scope = if mutant == Mutant::SiteMajority {
            VoteScope::Site
        } else {
            VoteScope::Cluster
        };
        p
    }
}

impl Sim {
    /// A cluster-scope schedule: one of the two topologies, every node's daemon running.
    fn new_cluster(seed: u64, mutant: Mutant, base: Instant, log: bool) -> Sim {
        let mut rng = Rng::new(seed ^ 0x0c10_57e2);
        let p = Params::draw_cluster(&mut rng, mutant);
        // (name, site, witness)
        let layout: &[(&str, usize, bool)] = if rng.chance(0.5) {
            &[
                ("n1", 0, false),
                ("n2", 0, false),
                ("n3", 1, false),
                ("n4", 1, false),
                ("w", 2, true),
            ]
        } else {
            &[
                ("n1", 0, false),
                ("n2", 0, false),
                ("n3", 0, false),
                ("n4", 1, false),
                ("n5", 1, false),
            ]
        };
        let total = layout.len();
        let scale = (p.lease + p.handoff + 2 * p.interval).max(7500 * MS);
        let end = rng.range(2 * scale, 7 * scale / 2);
        let nodes = layout
            .iter()
            .map(|&(name, site, witness)| {
                Node::drawn(&mut rng, p.ppm, name.to_string(), site, witness)
            })
            .collect();
        let world = World::new(
            layout
                .iter()
                .enumerate()
                .map(|(j, l)| j != 0 && !l.2)
                .collect(),
        );
        let mut sim = Sim {
            seed,
            p,
            mutant,
            rng,
            base,
            nodes,
            n: total,
            cluster: true,
            site_cuts: Vec::new(),
            world,
            acts: Vec::new(),
            queue: Queue::default(),
            end,
            members: Arc::new(Vec::new()),
            timeline: Vec::new(),
            moved: Vec::new(),
            cutoffs: Vec::new(),
            log: log.then(Vec::new),
            events: 0,
            publications: 0,
            adv: None,
        };
        sim.generate();
        // The adversary of site scope, in cluster scope too.
        sim.arm_adversary(seed ^ 0xad7e_5a21_0c10_57e2, total);
        sim
    }

    /// One fault of a cluster-scope schedule at `t`; returns the primary after it.
    fn cluster_fault(&mut self, t: u64, cur: usize) -> usize {
        match self.rng.below(100) {
            0..=39 => self.site_partition(t, cur),
            40..=59 => self.failover(t, cur, None),
            60..=69 => self.cutoff(t, cur),
            70..=79 => {
                self.cut_from_site(t);
                cur
            }
            80..=87 => self.failover(t, cur, Some(2)),
            _ => cur,
        }
    }

    /// The sites are cut apart at `t` until a heal: each site on side A or B (the primary's
    /// site on A), the witness's site on one side, on both (it reaches every node) or on neither
    /// (cut off from all). Often a node on B is promoted meanwhile: B's metadata names it at
    /// once, A's only after the heal, and the old primary stays read-write naming itself until
    /// then, when it is demoted, or not at all (a split brain that outlives the cut).
    fn site_partition(&mut self, t: u64, cur: usize) -> usize {
        let sites = 1 + self.nodes.iter().map(|x| x.site).max().unwrap_or(0);
        let home = self.nodes[cur].site;
        // 0: side A, 1: side B, 2: both, 3: neither.
        let mut side = vec![0u8; sites];
        for (s, x) in side.iter_mut().enumerate() {
            *x = if s == home {
                0
            } else if s == 2 {
                self.rng.pick(&[0u8, 1, 2, 3])
            } else {
                1
            };
        }
        if sites == 2 && self.rng.chance(0.2) {
            // The primary's site on B: A is the other one (the same cut, seen from there).
            side.swap(0, 1);
        }
        let least = self.p.lease + self.p.interval;
        let heal = t + self.rng.range(least + 500 * MS, least + 12 * SEC);
        let total = self.nodes.len();
        let site_of: Vec<usize> = self.nodes.iter().map(|x| x.site).collect();
        let of = |j: usize| side[site_of[j]];
        for a in 0..total {
            for b in 0..total {
                let (sa, sb) = (of(a), of(b));
                let cut = a != b
                    && site_of[a] != site_of[b]
                    && (sa == 3 || sb == 3 || (sa < 2 && sb < 2 && sa != sb));
                if cut {
                    self.act(t, Act::Cut(a, b, true));
                    self.act(heal, Act::Cut(a, b, false));
                }
            }
        }
        self.site_cuts.push((t, heal));
        // The primary cut off from a majority of the cluster loses its 200 as one cut off
        // from every node does.
        let with_primary = (0..total)
            .filter(|&j| {
                j == cur || site_of[j] == home || {
                    let s = of(j);
                    s == 2 || (s < 2 && s == of(cur))
                }
            })
            .count();
        if with_primary < decide::majority(total) {
            self.cutoffs.push((t, heal, cur));
        }
        if !self.rng.chance(0.7) {
            return cur;
        }
        // A promotion on the other side of the cut, the metadata moving with it there only.
        let there: Vec<usize> = (0..total)
            .filter(|&j| !self.nodes[j].witness && of(j) != of(cur) && of(j) < 2)
            .collect();
        let Some(&new) = there.get(self.rng.below(there.len().max(1) as u64) as usize) else {
            return cur;
        };
        let tf = t + self.rng.range(0, 3 * SEC);
        self.act(tf, Act::Recovery(new, false));
        self.act(tf, Act::View(new, new));
        for j in 0..total {
            if j == new {
                continue;
            }
            let reach = of(j) == of(new) || of(j) == 2;
            let at = if reach {
                tf + self.rng.range(0, 2 * SEC)
            } else {
                heal + self.rng.range(0, 3 * SEC)
            };
            if j == cur {
                if self.rng.chance(0.7) {
                    self.act(at, Act::Recovery(cur, true));
                    self.act(at, Act::View(cur, new));
                }
                continue;
            }
            self.act(at, Act::View(j, new));
        }
        new
    }

    /// A node (not the witness) cut off from the other nodes of its own site for a while.
    fn cut_from_site(&mut self, t: u64) {
        let total = self.nodes.len();
        let j = self.rng.below(total as u64) as usize;
        let heal = t + self.rng.range(300 * MS, 8 * SEC);
        for k in 0..total {
            if k != j && self.nodes[k].site == self.nodes[j].site {
                for (a, b) in [(j, k), (k, j)] {
                    self.act(t, Act::Cut(a, b, true));
                    self.act(heal, Act::Cut(a, b, false));
                }
            }
        }
    }
}

fn report_cluster(st: &mut Stats, elapsed: Duration) {
    println!(
        "cluster scope: {} schedules of 2 + 2 + a witness, {} of 3 + 2; {} partitions between sites",
        st.cluster_topologies[0], st.cluster_topologies[1], st.site_cuts
    );
    report(st, elapsed);
    println!(
        "   majority side's first 200, live stretch begun while the sites were cut apart, \
         defaults: {}",
        dist_ns(&mut st.cut_failover)
    );
}

/// Cluster scope, the real code: no two 200s anywhere in the cluster overlap, no handoff
/// violation, the side with a majority of the cluster gets its 200 within the bound.
#[test]
fn cluster_scope_simulation_finds_no_violation() {
    let replay = std::env::var("PRIMGR_SIM_SCOPE").as_deref() == Ok("cluster");
    if let Some(seed) = std::env::var("PRIMGR_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|_| replay)
    {
        let mutant = Mutant::from_env();
        let (mut st, log) = run_one_in(VoteScope::Cluster, seed, mutant, Instant::now(), true);
        for line in log.unwrap() {
            println!("{line}");
        }
        report_cluster(&mut st, Duration::ZERO);
        assert_eq!(st.violations.len(), 0, "seed {seed} under {mutant:?}");
        return;
    }
    let started = Instant::now();
    let (mut st, _) = run_many_in(VoteScope::Cluster, cluster_schedules(), Mutant::None, false);
    report_cluster(&mut st, started.elapsed());
    let defaults = Params::new(Config::for_node("n1").unwrap(), Mutant::None, true);
    let (_, bound) = defaults.failover_bounds();
    println!(
        "   the bound, from the timing (defaults): max(interval, db_timeout + peer_timeout) × 2 \
         + db_timeout + (vote_lease + handoff_delay·(1+ρ))/(1−ρ) + peer_timeout = {}",
        secs(bound)
    );
    assert!(
        st.with_200 * 2 > st.schedules,
        "too few schedules with a 200"
    );
    assert!(
        st.site_cuts > 0 && !st.cut_failover.is_empty(),
        "no partition between sites"
    );
    assert_eq!(st.overlaps, 0, "overlapping 200s in the cluster");
    assert_eq!(st.handoffs, 0, "handoff violations");
    assert_eq!(st.liveness, 0, "liveness violations");
}

/// Mutant (s), a site majority accepted in cluster scope, is caught: two sites cut apart each
/// answer 200.
#[test]
fn mutant_site_majority_in_cluster_scope_is_caught() {
    let started = Instant::now();
    let mutant = Mutant::SiteMajority;
    let (rate, mut first) = run_many_in(VoteScope::Cluster, RATE_SCHEDULES, mutant, false);
    if first.is_none() {
        first = run_many_in(VoteScope::Cluster, cluster_schedules(), mutant, true).1;
    }
    let Some(seed) = first else {
        panic!("{mutant:?} not caught in {} schedules", cluster_schedules());
    };
    let (one, _) = run_one_in(VoteScope::Cluster, seed, mutant, Instant::now(), false);
    let (overlap, handoff) = rate.bad_schedules();
    println!(
        "{mutant:?}: first caught by schedule {seed} ({:.1}s); of the first {} schedules, {} \
         with an overlap, {} with a handoff violation; at {seed}: {}",
        started.elapsed().as_secs_f64(),
        rate.schedules,
        overlap,
        handoff,
        one.violations
            .iter()
            .find(|v| v.1 == Kind::Overlap)
            .map_or("", |v| v.2.as_str())
    );
    assert!(
        overlap > 0,
        "the mutant makes no overlap in {} schedules",
        rate.schedules
    );
}
