//! The poller: the interval task that observes, asks, decides and publishes.
//!
//! Owns the poll cycle: one database round trip; then, under one `peer_timeout` deadline, the
//! vote requests to the site's voters (when this node stands for election) and the release of
//! a promise this node's book still holds for a node its metadata no longer names; then its
//! own vote (only when its own metadata names it); the verdict; and the publication of the
//! snapshot under the holder's lock ([`crate::vote::Votes`]). It also owns the log of what
//! changed: a verdict change, the database or a voter starting or ceasing to fail, a node
//! without a usable address, a release. Each is logged once when it starts and once when it
//! clears, never on every tick. Each publication is handed to the `on_change` runner
//! ([`crate::hooks`]) without waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::Uri;
use tracing::{info, warn};

use crate::config::Config;
use crate::db::{Db, DbError, DbObservation};
use crate::decide::{self, State};
use crate::hooks::Handoff;
use crate::peers::{ReleaseReply, VoteReply, fan_out, peer_url};
use crate::shared::Shared;
use crate::shutdown::Shutdown;
use crate::snapshot::{
    DbStatus, Drain, Member, PrimaryPosition, Replication, SessionWatch, Snapshot, VoterReport,
};
use crate::vote::{Ballot, HeldVote, Release};
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
    /// The primary's position as its daemon last reported it, and the instant (this node's
    /// clock) it was observed at the latest.
    primary_position: Option<(u64, Instant)>,
    /// The WAL receiver's last message time as last seen, and since when this node knows a
    /// message arrived at least that recently.
    receipt: Option<(String, Instant)>,
    /// When the previous cycle started.
    previous_start: Option<Instant>,
    /// Vote requests that got no usable answer, by voter, since the start (`/metrics`).
    voter_failures: Arc<BTreeMap<String, u64>>,
    /// Where each publication goes for the `on_change` hook ([`crate::hooks`]).
    on_change: Handoff,
}

/// The shortest time between the starts of two cycles when a lost session wakes the poller.
pub const WAKE_GAP: Duration = Duration::from_millis(100);

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
}

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
            primary_position: None,
            receipt: None,
            previous_start: None,
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

    /// One cycle: observe, release, ask, vote, decide, publish.
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
        let observed = self.db.observe().await;
        self.log_db(&observed);
        if let Ok(obs) = &observed {
            self.update_members(&config, obs);
        }
        let me = config.node.node_name.as_str();
        let role = observed.as_ref().ok().map(|obs| decide::role(obs, me));
        let named = observed
            .as_ref()
            .ok()
            .and_then(|o| o.named_primary())
            .map(String::from);

        // Whom to ask: the voters when this node stands for election; the holder of a promise
        // this node would now give to someone else.
        let voters: Vec<(String, Result<Uri, String>)> = match &role {
            Some(r) if r.candidate => r
                .voters
                .iter()
                .map(|row| (row.node_name.clone(), self.url_of(&row.node_name)))
                .collect(),
            _ => Vec::new(),
        };
        // From here until the next cycle, the book gives that holder no vote (see
        // `Book::begin_release`): the published view may still name it.
        let release_from = self
            .shared
            .votes
            .book()
            .begin_release(named.as_deref(), Instant::now());

        let client = &self.shared.client;
        let sent = Instant::now();
        let ask = fan_out(
            config.timing.peer_timeout,
            voters,
            |(name, url), deadline| async move {
                let (reply, latency) = match &url {
                    Ok(uri) => {
                        let reply = client.ask_vote(uri, &name, me, deadline).await;
                        (reply, Some(sent.elapsed()))
                    }
                    Err(why) => (VoteReply::Failed(format!("no address: {why}")), None),
                };
                VoterReport {
                    name,
                    url,
                    reply,
                    latency,
                }
            },
        );
        // A standby asks the daemon of the primary its metadata names where it writes.
        let upstream = match (&observed, &named) {
            (Ok(obs), Some(p)) if obs.in_recovery && p != me => Some(p.clone()),
            _ => None,
        };
        let deadline = tokio::time::Instant::now() + config.timing.peer_timeout;
        let (voters, (), position) = tokio::join!(
            ask,
            self.release(&config, release_from, deadline),
            self.ask_position(upstream, deadline)
        );
        self.log_voters(&voters);
        let replication = match &observed {
            Ok(obs) if obs.in_recovery => Some(self.replication(&config, obs, position, started)),
            _ => None,
        };
        let drained = self.read_drain(&config);

        // This node's own vote: only when its own metadata names it.
        let rules = config.leases;
        let mut votes: Vec<HeldVote> = voters
            .iter()
            .filter_map(|v| match (&v.reply, v.latency) {
                (VoteReply::Granted(grant), Some(latency)) => {
                    Some(rules.hold(&v.name, sent, sent + latency, grant))
                }
                _ => None,
            })
            .collect();
        let candidate = role.as_ref().is_some_and(|r| r.candidate);
        if candidate && named.as_deref() == Some(me) {
            let at = Instant::now();
            let own = self.shared.votes.book().answer(Ok(me), at);
            if let Ok(grant) = own {
                votes.push(rules.hold(me, at, at, &grant));
            }
        }

        // Publish under the holder's lock: no vote voided by a release gets in.
        let shared = Arc::clone(&self.shared);
        let mut holder = shared.votes.holder();
        let now = Instant::now();
        let previous = shared.store.load();
        let needed = role
            .as_ref()
            .filter(|r| r.candidate)
            .map_or(0, |r| decide::majority(r.site_size()));
        let withdrawn: Vec<&str> = voters
            .iter()
            .filter(|v| matches!(v.reply, VoteReply::Withdrawn(_)))
            .map(|v| v.name.as_str())
            .collect();
        let ballot = if candidate {
            Ballot::next(&previous.ballot, votes, &withdrawn, &holder, needed, now)
        } else {
            Ballot::default()
        };
        let verdict = decide::verdict(me, observed.as_ref(), &ballot, now);
        self.log_verdict(&verdict);
        let db = DbStatus::of(observed.as_ref());
        let replaced = previous.verdict.window;
        shared.store.store(Snapshot {
            observed_at: Some(started),
            observed_at_wall: started_wall,
            cycle_time: started.elapsed(),
            verdict,
            ballot,
            site: role
                .as_ref()
                .and_then(|r| r.own)
                .map(|o| o.location.clone()),
            primary: named,
            db,
            voters,
            members: self.members.clone(),
            max_staleness: config.timing.max_staleness,
            current_lsn: observed.as_ref().ok().and_then(|o| o.wal.current),
            replication,
            drained,
            voter_failures: Arc::clone(&self.voter_failures),
            session,
            hooks: self.on_change.tally(),
        });
        // The replaced window could still answer 200 until the new snapshot was stored: a
        // `/state` reads its clock before it loads the snapshot, so one that loaded the old
        // snapshot decided at an instant before this one.
        holder.retire(replaced, Instant::now());
        drop(holder);
        // The hook's runner takes what was published from here; this never waits.
        let published = shared.store.peek().facts(me, config.node.listen, now);
        self.on_change.offer(published, &config.hooks);
        self.previous_start = Some(started);
    }

    /// Asks the daemon of `primary` where it writes; its answer and when it was observed at
    /// the latest (this node's clock), or why there is none.
    async fn ask_position(
        &self,
        primary: Option<String>,
        deadline: tokio::time::Instant,
    ) -> Option<Result<(u64, Instant), String>> {
        let primary = primary?;
        let sent = Instant::now();
        Some(match self.url_of(&primary) {
            Err(why) => Err(format!("{primary} has no address: {why}")),
            Ok(uri) => self
                .shared
                .client
                .ask_wal(&uri, &primary, deadline)
                .await
                // Observed `age` before it answered, and it answered after we sent.
                .map(|(lsn, age)| (lsn, sent.checked_sub(age).unwrap_or(sent))),
        })
    }

    /// A standby's replication: its positions, and the primary's position from the freshest
    /// source known within `max_staleness` (the primary's daemon, or the WAL receiver's
    /// `latest_end_lsn` while it streams and keeps receiving), else why it is unknown.
    fn replication(
        &mut self,
        config: &Config,
        obs: &DbObservation,
        asked: Option<Result<(u64, Instant), String>>,
        now: Instant,
    ) -> Replication {
        let fresh = |at: Instant| now.saturating_duration_since(at) <= config.timing.max_staleness;
        let mut why = match asked {
            Some(Ok(position)) => {
                self.primary_position = Some(position);
                String::new()
            }
            Some(Err(e)) => e,
            None => "its metadata names no other primary".into(),
        };
        let from_daemon = self
            .primary_position
            .filter(|(_, at)| fresh(*at))
            .map(|(lsn, _)| lsn);
        let receiver = obs.wal.receiver.clone();
        let streaming = receiver
            .as_ref()
            .filter(|r| r.status.as_deref() == Some("streaming"));
        // The receiver's latest_end_lsn counts while messages keep arriving: its last receipt
        // time changed since the previous cycle began.
        let from_receiver =
            match streaming.and_then(|r| r.last_msg_receipt.clone().zip(r.latest_end)) {
                Some((token, end)) => {
                    let since = match &self.receipt {
                        Some((seen, at)) if *seen == token => *at,
                        _ => self.previous_start.unwrap_or(now),
                    };
                    self.receipt = Some((token, since));
                    fresh(since).then_some(end)
                }
                None => {
                    self.receipt = None;
                    None
                }
            };
        let primary = match (from_daemon, from_receiver) {
            (Some(a), Some(b)) if b > a => Ok(PrimaryPosition {
                lsn: b,
                source: "the WAL receiver",
            }),
            (Some(a), _) => Ok(PrimaryPosition {
                lsn: a,
                source: "the primary's daemon",
            }),
            (None, Some(b)) => Ok(PrimaryPosition {
                lsn: b,
                source: "the WAL receiver",
            }),
            (None, None) => {
                if why.is_empty() {
                    why = "no fresh answer".into();
                }
                Err(format!(
                    "the primary's position is not known within max_staleness ({}): {why}",
                    humantime::format_duration(config.timing.max_staleness)
                ))
            }
        };
        if primary.is_err() != self.log.position_unknown {
            self.log.position_unknown = primary.is_err();
            match &primary {
                Err(e) => warn!("replication lag unknown: {e}"),
                Ok(p) => info!("replication lag known again (from {})", p.source),
            }
        }
        Replication {
            received: obs.wal.received,
            replayed: obs.wal.replayed,
            primary,
            receiver,
            replay_paused: obs.wal.replay_paused,
            last_replay_age: obs
                .wal
                .last_replay_age_ms
                .map(|ms| std::time::Duration::from_millis(ms.max(0) as u64)),
        }
    }

    /// The drain flag; an unreadable `state_dir` is logged once and counts as not drained.
    fn read_drain(&mut self, config: &Config) -> Option<Drain> {
        let drained = match control::read(&config.node.state_dir) {
            Ok(d) => {
                self.log.drain_unreadable = false;
                d
            }
            Err(e) => {
                if !self.log.drain_unreadable {
                    warn!(
                        "cannot read the drain flag in {} (`state_dir`): {e}; serving as not drained",
                        config.node.state_dir.display()
                    );
                    self.log.drain_unreadable = true;
                }
                None
            }
        };
        if self.log.drain != Some(drained.is_some()) {
            match &drained {
                Some(d) => info!("drained by an operator: {}", d.reason),
                None if self.log.drain.is_some() => info!("undrained"),
                None => {}
            }
            self.log.drain = Some(drained.is_some());
        }
        drained
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

    /// Asks `holder` to release the promise this node's book holds for it (this node's own
    /// holder when it is this node), and ends the promise when it did.
    async fn release(
        &self,
        config: &Config,
        holder: Option<String>,
        deadline: tokio::time::Instant,
    ) {
        let Some(holder) = holder else {
            return;
        };
        let votes = &self.shared.votes;
        let last_200 = if holder == config.node.node_name {
            let mut own = votes.holder();
            let now = Instant::now();
            match own.release(self.shared.store.peek().verdict.window, now) {
                Release::Released { last_200 } => Ok(last_200),
                Release::Refused(why) => Err(why),
            }
        } else {
            match self.url_of(&holder) {
                Err(why) => Err(format!("no address: {why}")),
                Ok(uri) => match self
                    .shared
                    .client
                    .ask_release(&uri, &holder, deadline)
                    .await
                {
                    ReleaseReply::Released { last_200_ago } => {
                        Ok(config.leases.last_200_seen_at(Instant::now(), last_200_ago))
                    }
                    ReleaseReply::Refused(why) | ReleaseReply::Failed(why) => Err(why),
                },
            }
        };
        match last_200 {
            Ok(at) => {
                let now = Instant::now();
                votes.book().release(&holder, at, now);
                info!(
                    holder = %holder,
                    "released the vote promised to {holder}: it answers 200 no more (its last \
                     possible 200 was {} ms ago)",
                    now.saturating_duration_since(at).as_millis()
                );
            }
            Err(why) => tracing::debug!(holder = %holder, "promise not released: {why}"),
        }
    }

    /// Rebuilds the membership from the observed rows (addresses follow `[peers]`, which a
    /// reload may change).
    fn update_members(&mut self, config: &Config, obs: &DbObservation) {
        let members: Vec<Member> = obs
            .nodes
            .iter()
            .map(|n| {
                let url = peer_url(n, &config.peers, config.peer.peer_port);
                if let Err(why) = &url {
                    if n.node_name != config.node.node_name
                        && self.log.without_address.insert(n.node_name.clone())
                    {
                        warn!(node = %n.node_name, "node has no usable API address and counts as unreachable: {why}");
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

    fn log_db(&mut self, observed: &Result<DbObservation, DbError>) {
        match observed {
            Err(e) if self.log.db_failure != Some(e.kind()) => {
                warn!("local database unusable: {e}");
                self.log.db_failure = Some(e.kind());
            }
            Ok(_) if self.log.db_failure.is_some() => {
                info!("local database answers again");
                self.log.db_failure = None;
            }
            _ => {}
        }
    }

    fn log_voters(&mut self, voters: &[VoterReport]) {
        for v in voters {
            let failing = matches!(v.reply, VoteReply::Failed(_));
            if failing {
                *Arc::make_mut(&mut self.voter_failures)
                    .entry(v.name.clone())
                    .or_default() += 1;
            }
            match (&v.reply, self.log.failing_voters.contains(&v.name)) {
                (VoteReply::Failed(why), false) => {
                    warn!(voter = %v.name, "voter gives no answer: {why}");
                    self.log.failing_voters.insert(v.name.clone());
                }
                (_, true) if !failing => {
                    info!(voter = %v.name, "voter answers again");
                    self.log.failing_voters.remove(&v.name);
                }
                _ => {}
            }
        }
    }

    fn log_verdict(&mut self, verdict: &decide::Verdict) {
        if self.log.state == Some(verdict.state) {
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
        self.log.state = Some(verdict.state);
    }
}
