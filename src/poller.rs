//! The poller: the interval task that observes, asks the site, decides and publishes.
//!
//! Owns the poll cycle (one database round trip, a concurrent fan-out to the voters under one
//! deadline, the verdict, a new snapshot) and the log of what changed: a verdict change, the
//! database or a voter starting or ceasing to fail, a node without a usable address. Each is
//! logged once when it starts and once when it clears, never on every tick.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::future::join_all;
use tracing::{info, warn};

use crate::config::Config;
use crate::db::{Db, DbError, DbObservation};
use crate::decide::{self, PeerAnswer, State};
use crate::peers::{PeerClient, peer_url};
use crate::shutdown::Shutdown;
use crate::snapshot::{DbStatus, Member, Snapshot, SnapshotStore, VoterReport, redact_conninfo};

/// Called once, after the first snapshot has been published.
pub type OnReady = Box<dyn FnOnce() + Send>;

/// The poll loop of one daemon.
pub struct Poller {
    config: Arc<Config>,
    db: Db,
    client: PeerClient,
    store: Arc<SnapshotStore>,
    members: Arc<Vec<Member>>,
    log: Transitions,
}

/// What was last logged, so each change is logged once.
#[derive(Default)]
struct Transitions {
    state: Option<State>,
    db_failure: Option<&'static str>,
    failing_voters: BTreeSet<String>,
    without_address: BTreeSet<String>,
}

impl Poller {
    pub fn new(
        config: Arc<Config>,
        db: Db,
        client: PeerClient,
        store: Arc<SnapshotStore>,
    ) -> Poller {
        Poller {
            config,
            db,
            client,
            store,
            members: Arc::new(Vec::new()),
            log: Transitions::default(),
        }
    }

    /// Polls every `interval` until `shutdown` fires. A cycle in progress is abandoned at
    /// shutdown; nothing it would have published matters any more.
    pub async fn run(mut self, mut shutdown: Shutdown, mut on_ready: Option<OnReady>) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let snapshot = tokio::select! {
                _ = shutdown.wait() => return,
                s = self.cycle() => s,
            };
            self.store.store(snapshot);
            if let Some(ready) = on_ready.take() {
                ready();
            }
        }
    }

    /// One cycle: observe, vote if needed, decide; returns the snapshot to publish.
    pub async fn cycle(&mut self) -> Snapshot {
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let observed = self.db.observe().await;
        self.log_db(&observed);
        if let Ok(obs) = &observed {
            self.update_members(obs);
        }

        let config = Arc::clone(&self.config);
        let me = config.node_name.as_str();
        let (site, voter_rows) = match &observed {
            Ok(obs) => match decide::voters(obs, me) {
                Some((own, others)) => (Some(own.location.clone()), others),
                None => (
                    obs.nodes
                        .iter()
                        .find(|n| n.node_name == me)
                        .map(|n| n.location.clone()),
                    Vec::new(),
                ),
            },
            Err(_) => (None, Vec::new()),
        };

        let deadline = tokio::time::Instant::now() + self.config.peer_timeout;
        let asks = voter_rows.iter().map(|row| {
            let url = self
                .members
                .iter()
                .find(|m| m.name == row.node_name)
                .map(|m| m.url.clone())
                .unwrap_or_else(|| peer_url(row, &self.config.peers, self.config.peer_port));
            let client = &self.client;
            async move {
                let (answer, latency) = match &url {
                    Ok(uri) => {
                        let t0 = Instant::now();
                        let answer = client.ask_primary(uri, deadline).await;
                        (answer, Some(t0.elapsed()))
                    }
                    Err(why) => (PeerAnswer::Failed(format!("no address: {why}")), None),
                };
                VoterReport {
                    name: row.node_name.clone(),
                    url,
                    answer,
                    latency,
                }
            }
        });
        let voters: Vec<VoterReport> = join_all(asks).await;
        self.log_voters(&voters);

        let answers: Vec<(String, PeerAnswer)> = voters
            .iter()
            .map(|v| (v.name.clone(), v.answer.clone()))
            .collect();
        let verdict = decide::verdict(me, observed.as_ref(), &answers);
        self.log_verdict(&verdict);

        let (db, primary) = match &observed {
            Ok(obs) => (
                DbStatus {
                    reachable: true,
                    in_recovery: Some(obs.in_recovery),
                    error: None,
                },
                obs.named_primary().map(String::from),
            ),
            Err(e) => (
                DbStatus {
                    reachable: false,
                    in_recovery: None,
                    error: Some(e.clone()),
                },
                None,
            ),
        };
        Snapshot::new(
            started,
            started_wall,
            started.elapsed(),
            verdict,
            site,
            primary,
            db,
            voters,
            self.members.clone(),
        )
    }

    /// Rebuilds the membership when the registered nodes changed.
    fn update_members(&mut self, obs: &DbObservation) {
        let unchanged = self.members.len() == obs.nodes.len()
            && self.members.iter().zip(&obs.nodes).all(|(m, n)| {
                m.node_id == n.node_id
                    && m.name == n.node_name
                    && m.location == n.location
                    && m.node_type == n.node_type
                    && m.active == n.active
                    && m.conninfo == redact_conninfo(&n.conninfo)
            });
        if unchanged {
            return;
        }
        let members: Vec<Member> = obs
            .nodes
            .iter()
            .map(|n| {
                let url = peer_url(n, &self.config.peers, self.config.peer_port);
                if let Err(why) = &url {
                    if n.node_name != self.config.node_name
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
                    conninfo: redact_conninfo(&n.conninfo),
                }
            })
            .collect();
        self.members = Arc::new(members);
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
            let failing = matches!(v.answer, PeerAnswer::Failed(_));
            match (&v.answer, self.log.failing_voters.contains(&v.name)) {
                (PeerAnswer::Failed(why), false) => {
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
            State::Primary | State::Standby => {
                info!(state = %verdict.state, code, "state is now {}: {}", verdict.state, verdict.reason)
            }
            State::Down | State::Unknown => {
                warn!(state = %verdict.state, code, "state is now {}: {}", verdict.state, verdict.reason)
            }
        }
        self.log.state = Some(verdict.state);
    }
}
