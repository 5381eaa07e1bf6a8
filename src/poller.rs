//! The poller: the interval task that drives the poll cycle ([`crate::cycle`]) with real I/O.
//!
//! Owns the I/O of a cycle: one database round trip; then, under one `peer_timeout` deadline,
//! the requests the cycle's plan names (votes from the site's voters, the release of a promise
//! this node's book holds for a node its metadata no longer names, a standby's `/wal` request to
//! its primary); the drain flag; then, under the holder's lock ([`crate::shared::Votes`]), the
//! conclusion, the publication of the snapshot and the retirement of the window it replaced.
//! What each step decides is `cycle.rs`'s, with the instants read here, at these points only:
//! the cycle's start (before observing: the snapshot's age counts from it), the plan (after
//! observing, before any request: votes count from it), each vote answer's arrival, a release's
//! decision ([`crate::shared::Votes::release`]) or its answer's arrival, the conclusion (under
//! the holder's lock), and the retirement (after the store).
//!
//! It also owns the log of what changed (`Transitions`): a verdict change, the database or a
//! voter starting or ceasing to fail, a node without a usable address, a release, the drain
//! flag, the replication lag becoming unknown. Each is logged once when it starts and once when
//! it clears, never on every tick. Each publication is handed to the `on_change` runner
//! ([`crate::hooks`]) without waiting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::Uri;
use tracing::{info, warn};

use crate::auth::{self, ClusterId};
use crate::config::Config;
use crate::cycle::{self, Asked, Gathered, Lag, Plan, ReleaseAnswer, Standing};
use crate::db::{Db, DbError, DbObservation};
use crate::decide::{State, Verdict};
use crate::hooks::Handoff;
use crate::peers::{ReleaseReply, VoteReply, fan_out, peer_url};
use crate::shared::Shared;
use crate::shutdown::Shutdown;
use crate::snapshot::{Drain, Member, Replication, SessionWatch, VoterReport};
use crate::{conninfo, control, reload};

/// Called once, after the first snapshot has been published.
pub type OnReady = Box<dyn FnOnce() + Send>;

/// Called at the start of every cycle with its number, from 1. For tests: a hook that panics
/// proves that a dead poller ends the daemon.
pub type CycleHook = Arc<dyn Fn(u64) + Send + Sync>;

/// The poll loop of one daemon.
pub struct Poller {
    shared: Arc<Shared>,
    db: Db,
    members: Arc<Vec<Member>>,
    log: Transitions,
    cycles: u64,
    hook: Option<CycleHook>,
    /// What a standby knows of its primary's position.
    lag: Lag,
    /// Vote requests that got no usable answer, by voter, since the start (`/metrics`).
    voter_failures: Arc<BTreeMap<String, u64>>,
    /// Where each publication goes for the `on_change` hook ([`crate::hooks`]).
    on_change: Handoff,
    /// The local database's system identifier, as last observed.
    system_identifier: Option<ClusterId>,
    /// Whether the local metadata lists this node as a witness.
    witness: bool,
    /// A witness's identity, learned from the primary its metadata names.
    learned: Option<ClusterId>,
}

/// Bound on resolving one member's host name (address mode).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_millis(200);

/// The shortest time between the starts of two cycles when a lost session wakes the poller.
pub const WAKE_GAP: Duration = Duration::from_millis(100);

impl Poller {
    pub fn new(shared: Arc<Shared>, db: Db, hook: Option<CycleHook>, on_change: Handoff) -> Poller {
        Poller {
            on_change,
            voter_failures: Arc::default(),
            shared,
            db,
            members: Arc::new(Vec::new()),
            log: Transitions::default(),
            cycles: 0,
            hook,
            lag: Lag::default(),
            system_identifier: None,
            witness: false,
            learned: None,
        }
    }

    /// Polls every `interval` (read again each cycle, so a reload applies at the next one)
    /// until `shutdown` fires. A cycle that takes longer than the interval is followed by the
    /// next at once. A cycle in progress is abandoned at shutdown. When the server closes a
    /// session, the next cycle starts early, though never sooner than [`WAKE_GAP`] after the
    /// previous one started (a server that keeps closing sessions is not asked in a loop).
    pub async fn run(mut self, mut shutdown: Shutdown, mut on_ready: Option<OnReady>) {
        let mut next = tokio::time::Instant::now();
        let mut previous: Option<tokio::time::Instant> = None;
        loop {
            let losses = self.db.losses();
            let woken = async {
                losses.woken().await;
                if let Some(p) = previous {
                    tokio::time::sleep_until(p + WAKE_GAP).await;
                }
            };
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep_until(next) => {}
                _ = woken => {}
            }
            let start = tokio::time::Instant::now();
            previous = Some(start);
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.cycle() => {}
            }
            if let Some(ready) = on_ready.take() {
                ready();
            }
            next = (start + self.shared.config().timing.interval).max(tokio::time::Instant::now());
        }
    }

    /// One cycle: observe, plan, ask, conclude, publish and retire, log.
    pub async fn cycle(&mut self) {
        self.cycles += 1;
        if let Some(hook) = &self.hook {
            hook(self.cycles);
        }
        let config = self.shared.config();
        self.follow_reload(&config);
        // Read before observing: a session the server closes from here on withholds what this
        // cycle publishes.
        let session = SessionWatch::before_observing(self.db.losses());
        let started = Instant::now();
        let started_wall = SystemTime::now();
        self.lag.cycle_started(started);
        let observed = self.db.observe().await;
        self.log.db(&observed);
        if let Ok(obs) = &observed {
            self.update_members(&config, obs);
            self.update_addresses(&config, obs).await;
        }
        self.update_identity(&config, &observed).await;

        let plan = cycle::plan(
            &config.node.node_name,
            config.leases,
            observed.as_ref(),
            &mut self.shared.votes.book(),
            Instant::now(),
        );
        let deadline = tokio::time::Instant::now() + config.timing.peer_timeout;
        let (voters, (), position) = tokio::join!(
            self.ask_votes(&config, &plan),
            self.release(&plan, deadline),
            self.ask_position(&plan, deadline)
        );
        self.count_failures(&voters);
        self.log.voters(&voters);
        let gathered = Gathered {
            started,
            started_wall,
            voters,
            members: Arc::clone(&self.members),
            max_staleness: config.timing.max_staleness,
            replication: self.replication(&config, &observed, position, started),
            drained: self.read_drain(&config),
            voter_failures: Arc::clone(&self.voter_failures),
            session,
            hooks: self.on_change.tally(),
        };

        // Under the holder's lock: no release interleaves, no vote it voided gets in.
        let shared = &*self.shared;
        let mut holder = shared.votes.holder();
        let previous = shared.store.load();
        let now = Instant::now();
        let conclusion = {
            let mut book = shared.votes.book();
            let standing = Standing {
                book: &mut book,
                holder: &holder,
                previous: &previous,
            };
            cycle::conclude(plan, observed.as_ref(), gathered, standing, now)
        };
        let verdict = conclusion.publish(&mut holder, |s| shared.store.store(s), Instant::now);
        drop(holder);
        self.log.verdict(&verdict);
        // The hook's runner takes what was published from here; this never waits.
        let published =
            shared
                .store
                .peek()
                .facts(&config.node.node_name, config.node.listen, Instant::now());
        self.on_change.offer(published, &config.hooks);
    }

    /// Asks the plan's voters for their votes, within `peer_timeout`.
    async fn ask_votes(&self, config: &Config, plan: &Plan) -> Vec<VoterReport> {
        let client = &self.shared.poll_client;
        let (me, sent) = (plan.me.as_str(), plan.sent);
        let keys = self.shared.auth.keys();
        let signer = keys.as_deref().map(|k| self.shared.auth.signer(k, me));
        let signer = signer.as_ref();
        let voters = plan.voters.iter().map(|name| (name, self.url_of(name)));
        fan_out(
            config.timing.peer_timeout,
            voters,
            |(name, url), deadline| async move {
                let (reply, latency) = match &url {
                    Ok(uri) => {
                        let reply = client
                            .ask_vote(signer, uri, name, me, plan.rules.scope, deadline)
                            .await;
                        (reply, Some(sent.elapsed()))
                    }
                    Err(why) => (VoteReply::Failed(format!("no address: {why}")), None),
                };
                VoterReport {
                    name: name.clone(),
                    url,
                    reply,
                    latency,
                }
            },
        )
        .await
    }

    /// Asks the plan's primary where it writes; its answer and when it was observed at the
    /// latest (this node's clock), or why there is none.
    async fn ask_position(&self, plan: &Plan, deadline: tokio::time::Instant) -> Option<Asked> {
        let primary = plan.position_from.as_deref()?;
        let keys = self.shared.auth.keys();
        let signer = keys
            .as_deref()
            .map(|k| self.shared.auth.signer(k, &plan.me));
        Some(match self.url_of(primary) {
            Err(why) => Err(format!("{primary} has no address: {why}")),
            Ok(uri) => self
                .shared
                .poll_client
                .ask_wal(signer.as_ref(), &uri, primary, deadline)
                .await
                // Observed `age` before it answered, and it answered after the plan's instant.
                .map(|w| {
                    let at = plan.sent.checked_sub(w.age).unwrap_or(plan.sent);
                    (w.lsn, at, w.standbys)
                }),
        })
    }

    /// A standby's replication ([`Lag`]); None for every other role.
    fn replication(
        &mut self,
        config: &Config,
        observed: &Result<DbObservation, DbError>,
        position: Option<Asked>,
        started: Instant,
    ) -> Option<Replication> {
        let obs = observed.as_ref().ok().filter(|obs| obs.in_recovery)?;
        let replication = self.lag.replication(
            &config.node.node_name,
            obs,
            position,
            config.timing.max_staleness,
            started,
        );
        self.log.lag(&replication);
        Some(replication)
    }

    /// The drain flag; an unreadable `state_dir` is logged once and counts as not drained.
    fn read_drain(&mut self, config: &Config) -> Option<Drain> {
        let read = control::read(&config.node.state_dir);
        self.log.drain(&config.node.state_dir, read)
    }

    /// Rebuilds the pool when a reload changed the database group.
    fn follow_reload(&mut self, config: &Config) {
        reload::follow_pool(&mut self.db, &config.db);
    }

    /// The API address of a node, from the membership.
    fn url_of(&self, node: &str) -> Result<Uri, String> {
        self.members
            .iter()
            .find(|m| m.name == node)
            .map_or_else(|| Err("not a registered node".into()), |m| m.url.clone())
    }

    /// Asks the plan's holder to release the promise this node's book holds for it (this
    /// node's own holder when it is this node, as `/release` answers), and ends the promise
    /// when it did.
    async fn release(&self, plan: &Plan, deadline: tokio::time::Instant) {
        let Some(asking) = plan.release.as_ref() else {
            return;
        };
        let holder = asking.holder.as_str();
        let votes = &self.shared.votes;
        let (answer, now) = if holder == plan.me {
            let (own, now) = votes.release(&self.shared.store, &plan.me, asking.undoes);
            (ReleaseAnswer::Own(own), now)
        } else {
            let reply = match self.url_of(holder) {
                Err(why) => ReleaseReply::Failed(format!("no address: {why}")),
                Ok(uri) => {
                    let keys = self.shared.auth.keys();
                    let signer = keys
                        .as_deref()
                        .map(|k| self.shared.auth.signer(k, &plan.me));
                    let client = &self.shared.poll_client;
                    client
                        .ask_release(signer.as_ref(), &uri, holder, asking.undoes, deadline)
                        .await
                }
            };
            (ReleaseAnswer::Peer(reply), Instant::now())
        };
        match cycle::released(&mut votes.book(), &plan.rules, holder, &answer, now) {
            Ok(at) => info!(
                holder = %holder,
                "released the vote promised to {holder}: it answers 200 no more (its last \
                 possible 200 was {} ms ago)",
                now.saturating_duration_since(at).as_millis()
            ),
            Err(why) => tracing::debug!(holder = %holder, "promise not released: {why}"),
        }
    }

    /// Rebuilds the membership from the observed rows (addresses follow `[peers]`, which a
    /// reload may change).
    fn update_members(&mut self, config: &Config, obs: &DbObservation) {
        let scheme = self.shared.client.scheme();
        let members: Vec<Member> = obs
            .nodes
            .iter()
            .map(|n| {
                let url = peer_url(n, &config.peers, config.peer.peer_port, scheme);
                if let Err(why) = &url {
                    if n.node_name != config.node.node_name {
                        self.log.without_address(&n.node_name, why);
                    }
                }
                Member {
                    node_id: n.node_id,
                    name: n.node_name.clone(),
                    location: n.location.clone(),
                    node_type: n.node_type.clone(),
                    active: n.active,
                    url,
                    conninfo: conninfo::redact(&n.conninfo),
                }
            })
            .collect();
        if *self.members != members {
            self.members = Arc::new(members);
        }
    }

    /// The members' addresses for address mode (`peer_key_file` not set): the host of every
    /// row's conninfo and of every `[peers]` entry, resolved now (a name that does not
    /// resolve within [`RESOLVE_TIMEOUT`] adds nothing this cycle), with the members at each
    /// address (a `/release` from an address names its sender).
    async fn update_addresses(&mut self, config: &Config, obs: &DbObservation) {
        if self.shared.auth.keys().is_some() {
            return;
        }
        let mut hosts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for n in &obs.nodes {
            if let Ok(host) = conninfo::host(&n.conninfo) {
                hosts.entry(host).or_default().insert(n.node_name.clone());
            }
        }
        for (name, uri) in &config.peers {
            if let Some(host) = uri.host() {
                let host = host.trim_matches(['[', ']']).to_string();
                hosts.entry(host).or_default().insert(name.clone());
            }
        }
        let mut addresses: HashMap<IpAddr, BTreeSet<String>> = HashMap::new();
        for (host, names) in hosts {
            if let Ok(ip) = host.parse::<IpAddr>() {
                addresses
                    .entry(ip.to_canonical())
                    .or_default()
                    .extend(names);
                continue;
            }
            if host.starts_with('/') {
                continue; // a socket directory: no network address
            }
            let lookup = tokio::net::lookup_host((host.as_str(), 0));
            if let Ok(Ok(found)) = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                for a in found {
                    let at = addresses.entry(a.ip().to_canonical()).or_default();
                    at.extend(names.iter().cloned());
                }
            }
        }
        self.shared.auth.set_members(addresses);
    }

    /// This node's cluster identity ([`crate::auth::cluster_identity`]): a data node's from
    /// its database (the last one observed while the database does not answer), a witness's
    /// from `cluster_id`.
    async fn update_identity(
        &mut self,
        config: &Config,
        observed: &Result<DbObservation, DbError>,
    ) {
        let me = &config.node.node_name;
        if let Ok(obs) = observed {
            self.witness = obs
                .nodes
                .iter()
                .any(|n| &n.node_name == me && n.node_type == "witness");
            if let Some(id) = obs.wal.system_identifier {
                self.system_identifier = Some(ClusterId::from_system_identifier(id));
            }
            if self.witness && config.peer.cluster_id.is_none() && self.learned.is_none() {
                self.learned = self.learn_identity(config, obs).await;
            }
        }
        let standing = if self.witness {
            auth::Standing::Witness(self.learned)
        } else {
            auth::Standing::Data(self.system_identifier)
        };
        let identity = auth::cluster_identity(config.peer.cluster_id, standing);
        self.log.identity(&identity);
        self.shared.auth.set_cluster(identity.ok());
    }

    /// A witness without `cluster_id`: the identity the primary its own metadata names
    /// reports in a signed answer (None without a key, or until it answers).
    async fn learn_identity(&self, config: &Config, obs: &DbObservation) -> Option<ClusterId> {
        let keys = self.shared.auth.keys()?;
        let primary = obs
            .nodes
            .iter()
            .find(|n| n.active && n.node_type == "primary")?;
        let url = self.url_of(&primary.node_name).ok()?;
        let signer = self.shared.auth.signer(&keys, &config.node.node_name);
        let deadline = tokio::time::Instant::now() + config.timing.peer_timeout;
        let client = &self.shared.client;
        match client
            .learn_cluster(&signer, &url, &primary.node_name, deadline)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                tracing::debug!(
                    "cluster identity not learned from {}: {e}",
                    primary.node_name
                );
                None
            }
        }
    }

    /// Counts the vote requests that got no usable answer (`/metrics`).
    fn count_failures(&mut self, voters: &[VoterReport]) {
        for v in voters {
            if matches!(v.reply, VoteReply::Failed(_)) {
                *Arc::make_mut(&mut self.voter_failures)
                    .entry(v.name.clone())
                    .or_default() += 1;
            }
        }
    }
}

/// What was last logged, so each change is logged once.
#[derive(Default)]
struct Transitions {
    state: Option<State>,
    db_failure: Option<&'static str>,
    failing_voters: BTreeSet<String>,
    without_address: BTreeSet<String>,
    drain: Option<bool>,
    drain_unreadable: bool,
    position_unknown: bool,
    identity: Option<Result<ClusterId, auth::IdentityError>>,
}

impl Transitions {
    fn db(&mut self, observed: &Result<DbObservation, DbError>) {
        match observed {
            Err(e) if self.db_failure != Some(e.kind()) => {
                warn!("local database unusable: {e}");
                self.db_failure = Some(e.kind());
            }
            Ok(_) if self.db_failure.is_some() => {
                info!("local database answers again");
                self.db_failure = None;
            }
            _ => {}
        }
    }

    fn without_address(&mut self, node: &str, why: &str) {
        if self.without_address.insert(node.to_string()) {
            warn!(node = %node, "node has no usable API address and counts as unreachable: {why}");
        }
    }

    fn voters(&mut self, voters: &[VoterReport]) {
        for v in voters {
            let failing = matches!(v.reply, VoteReply::Failed(_));
            match (&v.reply, self.failing_voters.contains(&v.name)) {
                (VoteReply::Failed(why), false) => {
                    warn!(voter = %v.name, "voter gives no answer: {why}");
                    self.failing_voters.insert(v.name.clone());
                }
                (_, true) if !failing => {
                    info!(voter = %v.name, "voter answers again");
                    self.failing_voters.remove(&v.name);
                }
                _ => {}
            }
        }
    }

    fn identity(&mut self, identity: &Result<ClusterId, auth::IdentityError>) {
        if self.identity.as_ref() == Some(identity) {
            return;
        }
        match identity {
            Ok(id) => info!("cluster identity: {id}"),
            Err(e) => warn!("no cluster identity, so no vote is granted or counted: {e}"),
        }
        self.identity = Some(identity.clone());
    }

    fn lag(&mut self, replication: &Replication) {
        let primary = &replication.primary;
        if primary.is_err() != self.position_unknown {
            self.position_unknown = primary.is_err();
            match primary {
                Err(e) => warn!("replication lag unknown: {e}"),
                Ok(p) => info!("replication lag known again (from {})", p.source),
            }
        }
    }

    /// The drain flag as read from `state_dir`: an unreadable one counts as not drained.
    fn drain(
        &mut self,
        state_dir: &std::path::Path,
        read: Result<Option<Drain>, impl std::fmt::Display>,
    ) -> Option<Drain> {
        let drained = match read {
            Ok(d) => {
                self.drain_unreadable = false;
                d
            }
            Err(e) => {
                if !self.drain_unreadable {
                    warn!(
                        "cannot read the drain flag in {} (`state_dir`): {e}; serving as not drained",
                        state_dir.display()
                    );
                    self.drain_unreadable = true;
                }
                None
            }
        };
        if self.drain != Some(drained.is_some()) {
            match &drained {
                Some(d) => info!("drained by an operator: {}", d.reason),
                None if self.drain.is_some() => info!("undrained"),
                None => {}
            }
            self.drain = Some(drained.is_some());
        }
        drained
    }

    fn verdict(&mut self, verdict: &Verdict) {
        if self.state == Some(verdict.state) {
            return;
        }
        let code = verdict.state.code();
        match verdict.state {
            State::Primary | State::Standby | State::Witness => {
                info!(state = %verdict.state, code, "state is now {}: {}", verdict.state, verdict.reason)
            }
            State::Down | State::Unknown => {
                warn!(state = %verdict.state, code, "state is now {}: {}", verdict.state, verdict.reason)
            }
        }
        self.state = Some(verdict.state);
    }
}
