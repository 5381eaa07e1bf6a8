//! The poll cycle as pure steps, which the poller drives with real I/O and `tests/sim.rs`
//! with simulated I/O: the same functions in both.
//!
//! Owns the order of a cycle and what each step decides, never a clock or a socket: every
//! instant is an argument.
//! 1. [`plan`]: from the database observation, this node's promise book and `now`, the
//!    requests to send: the votes to ask for (counted from [`Plan::sent`]), the release to ask
//!    for ([`crate::vote::Book::begin_release`]), the primary to ask where it writes (`/wal`).
//! 2. The driver sends them, under one `peer_timeout` deadline; a release ends in
//!    [`released`], whether the holder is another node or this one.
//! 3. [`conclude`]: from the replies, what else the cycle gathered and `now` (read under the
//!    holder's lock), this node's own vote, the ballot, the verdict and the snapshot.
//! 4. [`Conclusion::publish`]: the snapshot is stored, *then* the window it replaces is retired
//!    at an instant read after the store (a `/state` that loaded the old snapshot read its
//!    clock before that).
//!
//! It also owns what the request handlers decide for the protocol, so that the simulation
//! answers with the daemon's code: [`vote`] (`/vote`) and [`release`] (`/release`, and this
//! node's own holder in step 2); and [`Lag`], how a standby knows the primary's position and
//! its own synchronous state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::auth::GrantEpoch;
use crate::db::{DbError, DbObservation};
use crate::decide::{self, Verdict};
use crate::peers::{ReleaseReply, VoteReply};
use crate::snapshot::{
    DbStatus, Drain, Member, PrimaryPosition, Replication, SessionWatch, Snapshot, VoterReport,
    standby_sync,
};
use crate::vote::{
    Asking, Ballot, Book, Grant, HeldVote, Holder, LeaseRules, NoVote, Release, Window,
};
use crate::wire::{VoteRequest, VoteScope, WalStandby};

/// The requests one cycle sends, and what it needs from its observation to conclude.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// This node's name.
    pub me: String,
    /// When the requests are sent (this node's clock): a vote counts from here, so it must be
    /// read before any request goes out.
    pub sent: Instant,
    /// The voters to ask for their vote (the rest of its electorate: the other nodes of its
    /// site, or of the cluster in cluster scope; when this node stands for election).
    pub voters: Vec<String>,
    /// The holder of a promise this node's book would now give to someone else, to ask for a
    /// release (this node itself when its own metadata moved on), and the epoch of this node's
    /// grants it undoes. Until the next cycle's plan the book gives it no vote.
    pub release: Option<Asking>,
    /// The primary a standby asks where it writes (`/wal`).
    pub position_from: Option<String>,
    /// The active primary the metadata names.
    pub named: Option<String>,
    /// This node's site, when its row was found.
    pub site: Option<String>,
    /// Whether this node stands for election (not in recovery, registered, not a witness).
    pub candidate: bool,
    /// A majority of its electorate when it stands (0 otherwise).
    pub needed: usize,
    /// The rules it holds votes by.
    pub rules: LeaseRules,
}

/// Step 1: what to ask, from what the database said at the start of the cycle, at `now`.
pub fn plan(
    me: &str,
    rules: LeaseRules,
    observed: Result<&DbObservation, &DbError>,
    book: &mut Book,
    now: Instant,
) -> Plan {
    let role = observed.ok().map(|obs| decide::role(obs, me, rules.scope));
    let named = observed
        .ok()
        .and_then(DbObservation::named_primary)
        .map(String::from);
    let candidate = role.as_ref().is_some_and(|r| r.candidate);
    let voters = match &role {
        Some(r) if r.candidate => r.voters.iter().map(|v| v.node_name.clone()).collect(),
        _ => Vec::new(),
    };
    let needed = match &role {
        Some(r) if r.candidate => decide::majority(r.electorate_size()),
        _ => 0,
    };
    // A standby asks the daemon of the primary its metadata names where it writes.
    let position_from = match (observed, &named) {
        (Ok(obs), Some(p)) if obs.in_recovery && p != me => Some(p.clone()),
        _ => None,
    };
    Plan {
        me: me.to_string(),
        sent: now,
        voters,
        release: book.begin_release(named.as_deref(), now),
        position_from,
        site: role.and_then(|r| r.own).map(|o| o.location.clone()),
        named,
        candidate,
        needed,
        rules,
    }
}

/// `/vote?candidate=NAME` at `now`, against the published snapshot: a vote (a promise,
/// recorded in `book`) when the snapshot names the candidate; without a candidate, whom it
/// names ([`Book::answer_to`]). A candidate of a scope other than this voter's (`ours`) gets
/// no vote and the book is left as it is: its majority is of another electorate.
pub fn vote(
    book: &mut Book,
    request: &VoteRequest,
    ours: VoteScope,
    published: &Snapshot,
    now: Instant,
) -> Result<Grant, NoVote> {
    let candidate = request.candidate.as_deref();
    if candidate.is_some() && request.scope != ours {
        return Err(NoVote::OtherScope {
            ours,
            asked: request.scope,
        });
    }
    book.answer_to(candidate, published.named(now), now)
}

/// `POST /release?undoes=EPOCH` from the authenticated `voter` at `now`, against the published
/// snapshot: void that voter's votes of `undoes` and earlier (of the same boot), unless the
/// snapshot's window allows a 200 now or later ([`Holder::release`]). The caller holds the
/// holder's lock, which the poller publishes under, so `published` is the newest snapshot.
/// The one release path: `/release`, this node's own holder in a cycle, and the simulation.
pub fn release(
    holder: &mut Holder,
    published: &Snapshot,
    voter: &str,
    undoes: GrantEpoch,
    now: Instant,
) -> Release {
    holder.release(published.verdict.window, voter, undoes, now)
}

/// The answer to a cycle's release request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseAnswer {
    /// The holder is this node: its own [`release`].
    Own(Release),
    /// Another node's daemon answered (or could not be asked).
    Peer(ReleaseReply),
}

/// The voter's side of a release, at `now` (when the answer arrived): when `holder` released,
/// the promise to it ends ([`Book::release`]) and its last possible 200 on this node's clock is
/// returned; otherwise why not.
pub fn released(
    book: &mut Book,
    rules: &LeaseRules,
    holder: &str,
    answer: &ReleaseAnswer,
    now: Instant,
) -> Result<Instant, String> {
    let last_200 = match answer {
        ReleaseAnswer::Own(Release::Released { last_200 }) => *last_200,
        ReleaseAnswer::Peer(ReleaseReply::Released { last_200_ago }) => {
            rules.last_200_seen_at(now, *last_200_ago)
        }
        ReleaseAnswer::Own(Release::Refused(why))
        | ReleaseAnswer::Peer(ReleaseReply::Refused(why) | ReleaseReply::Failed(why)) => {
            return Err(why.clone());
        }
    };
    book.release(holder, last_200, now);
    Ok(last_200)
}

/// What a cycle gathered besides its plan: the voters' replies and what the snapshot carries.
#[derive(Debug, Clone)]
pub struct Gathered {
    /// When the cycle started, before it observed (the snapshot's age counts from here).
    pub started: Instant,
    /// The same moment on the wall clock, for humans.
    pub started_wall: SystemTime,
    /// The voters asked and their answers, each with its latency from [`Plan::sent`].
    pub voters: Vec<VoterReport>,
    pub members: Arc<Vec<Member>>,
    pub max_staleness: Duration,
    pub replication: Option<Replication>,
    pub drained: Option<Drain>,
    pub voter_failures: Arc<BTreeMap<String, u64>>,
    pub session: SessionWatch,
    /// The `on_change` runner's counters (`/metrics`).
    pub hooks: Arc<crate::hooks::Tally>,
}

/// The protocol state a cycle concludes against.
pub struct Standing<'a> {
    /// This node's promise book (its own vote).
    pub book: &'a mut Book,
    /// The holder, whose lock the caller holds until the publication is over.
    pub holder: &'a Holder,
    /// The snapshot published now, which this cycle's replaces.
    pub previous: &'a Snapshot,
}

/// A cycle's outcome: the snapshot to publish, and the window it replaces.
#[derive(Debug)]
pub struct Conclusion {
    pub snapshot: Snapshot,
    /// Retired once the snapshot is published ([`Conclusion::publish`]).
    replaced: Option<Window>,
}

/// Step 3: the snapshot, at `now` (read under the holder's lock, so that no release
/// interleaves): this node's own vote (only when its own metadata names it), the votes granted,
/// the ballot (less what a release voided or a voter withdrew) and the verdict.
pub fn conclude(
    plan: Plan,
    observed: Result<&DbObservation, &DbError>,
    gathered: Gathered,
    standing: Standing<'_>,
    now: Instant,
) -> Conclusion {
    let rules = plan.rules;
    let mut votes: Vec<HeldVote> = gathered
        .voters
        .iter()
        .filter_map(|v| match (&v.reply, v.latency) {
            (VoteReply::Granted(grant), Some(latency)) => {
                Some(rules.hold(&v.name, plan.sent, plan.sent + latency, grant))
            }
            _ => None,
        })
        .collect();
    let me = plan.me.as_str();
    if plan.candidate && plan.named.as_deref() == Some(me) {
        if let Ok(grant) = standing.book.answer(Ok(me), now) {
            votes.push(rules.hold(me, now, now, &grant));
        }
    }
    let withdrawn: Vec<&str> = gathered
        .voters
        .iter()
        .filter(|v| matches!(v.reply, VoteReply::Withdrawn(_)))
        .map(|v| v.name.as_str())
        .collect();
    let previous = standing.previous;
    let ballot = if plan.candidate {
        Ballot::next(
            &previous.ballot,
            votes,
            &withdrawn,
            standing.holder,
            plan.needed,
            now,
        )
    } else {
        Ballot::default()
    };
    let verdict = decide::verdict(me, rules.scope, observed, &ballot, now);
    let electorate = match observed {
        Ok(obs) if plan.candidate && rules.scope == VoteScope::Cluster => {
            decide::role(obs, me, rules.scope).sites()
        }
        _ => Vec::new(),
    };
    let snapshot = Snapshot {
        observed_at: Some(gathered.started),
        observed_at_wall: gathered.started_wall,
        cycle_time: now.saturating_duration_since(gathered.started),
        verdict,
        ballot,
        electorate,
        site: plan.site,
        primary: plan.named,
        db: DbStatus::of(observed),
        voters: gathered.voters,
        members: gathered.members,
        max_staleness: gathered.max_staleness,
        current_lsn: observed.ok().and_then(|o| o.wal.current),
        wal_senders: observed.ok().and_then(|o| o.wal.standbys.clone()),
        replication: gathered.replication,
        drained: gathered.drained,
        voter_failures: gathered.voter_failures,
        session: gathered.session,
        hooks: gathered.hooks,
    };
    Conclusion {
        replaced: previous.verdict.window,
        snapshot,
    }
}

impl Conclusion {
    /// Step 4, under the holder's lock: `store` publishes the snapshot, then the window it
    /// replaced is retired at the instant `clock` reads, called after the store. The replaced
    /// window could answer 200 until the store: a `/state` reads its clock before it loads the
    /// snapshot, so one that loaded the old snapshot decided at an instant before this one (its
    /// clock read, or the old snapshot's decision: [`Snapshot::judged_at`]; both precede
    /// its load, hence the store).
    /// (Retiring first would tell a later `/release` a last 200 earlier than the real one.)
    /// Returns the verdict published, for the log.
    pub fn publish(
        self,
        holder: &mut Holder,
        store: impl FnOnce(Snapshot),
        clock: impl FnOnce() -> Instant,
    ) -> Verdict {
        let verdict = self.snapshot.verdict.clone();
        store(self.snapshot);
        holder.retire(self.replaced, clock());
        verdict
    }
}

/// What the primary's daemon answered to `/wal`: where it writes, the instant (this node's
/// clock) it observed that at the latest, and its WAL senders then; or why there is no answer.
pub type Asked = Result<(u64, Instant, Option<Vec<WalStandby>>), String>;

/// How a standby knows where its primary writes: the primary's daemon's last answer, or its
/// WAL receiver's `latest_end_lsn` while messages keep arriving; each counts within
/// `max_staleness`. And its synchronous state: the primary's daemon's last answer, within
/// `max_staleness` ([`standby_sync`]).
#[derive(Debug, Clone, Default)]
pub struct Lag {
    /// The primary's position as its daemon last reported it, and the instant (this node's
    /// clock) it was observed at the latest.
    primary_position: Option<(u64, Instant)>,
    /// The primary's WAL senders as its daemon last reported them: which primary, when
    /// observed, the list.
    primary_senders: Option<(String, Instant, Option<Vec<WalStandby>>)>,
    /// The WAL receiver's last message time as last seen, and since when this node knows a
    /// message arrived at least that recently.
    receipt: Option<(String, Instant)>,
    /// When the previous cycle started, and the current one.
    previous_start: Option<Instant>,
    start: Option<Instant>,
}

impl Lag {
    /// A cycle starts at `started`.
    pub fn cycle_started(&mut self, started: Instant) {
        self.previous_start = self.start.replace(started);
    }

    /// A standby's replication at `now` (the start of its cycle): its positions, and the
    /// primary's position from the freshest source known within `max_staleness` (the
    /// primary's daemon, whose answer in this cycle is `asked`, or the WAL receiver), else why
    /// it is unknown; and the synchronous state the primary's daemon reported for `me`.
    pub fn replication(
        &mut self,
        me: &str,
        obs: &DbObservation,
        asked: Option<Asked>,
        max_staleness: Duration,
        now: Instant,
    ) -> Replication {
        let fresh = |at: Instant| now.saturating_duration_since(at) <= max_staleness;
        let mut why = match asked {
            Some(Ok((lsn, at, senders))) => {
                self.primary_position = Some((lsn, at));
                let primary = obs.named_primary().unwrap_or_default().to_string();
                self.primary_senders = Some((primary, at, senders));
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
                    humantime::format_duration(max_staleness)
                ))
            }
        };
        // Only the list of the primary the metadata names now counts (not a former one's).
        let senders = self.primary_senders.as_ref();
        let senders = senders.filter(|(from, ..)| Some(from.as_str()) == obs.named_primary());
        let known = senders.map(|(_, at, list)| (*at, list.as_deref()));
        let sync = standby_sync(me, known, &why, now, max_staleness);
        Replication {
            sync,
            received: obs.wal.received,
            replayed: obs.wal.replayed,
            primary,
            receiver,
            replay_paused: obs.wal.replay_paused,
            last_replay_age: obs
                .wal
                .last_replay_age_ms
                .map(|ms| Duration::from_millis(ms.max(0) as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::db::NodeRow;
    use crate::decide::State;

    const L: Duration = Duration::from_secs(3);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn boot(b: u8) -> crate::auth::BootId {
        crate::auth::BootId::from_bytes([b; 16])
    }

    /// What a voter whose metadata names n1 publishes at `t`.
    fn serving_n1(t: Instant) -> Snapshot {
        Snapshot {
            observed_at: Some(t),
            primary: Some("n1".into()),
            db: DbStatus::of(Ok(&metadata("n1", true))),
            max_staleness: ms(5000),
            ..Snapshot::starting()
        }
    }

    /// A site-scope candidate's request.
    fn ask(candidate: &str) -> VoteRequest {
        VoteRequest {
            candidate: Some(candidate.into()),
            scope: VoteScope::Site,
        }
    }

    fn rules() -> LeaseRules {
        LeaseRules {
            vote_lease: L,
            scope: VoteScope::Site,
            handoff_delay: ms(2500),
            drift: 0.01,
        }
    }

    /// A site of three in dc1 (`primary` names the primary row) and `far` in dc2.
    fn metadata(primary: &str, in_recovery: bool) -> DbObservation {
        let row = |name: &str, location: &str| NodeRow {
            node_id: 1,
            node_name: name.into(),
            node_type: if name == primary {
                "primary"
            } else {
                "standby"
            }
            .into(),
            active: true,
            location: location.into(),
            conninfo: format!("host={name}"),
        };
        DbObservation {
            in_recovery,
            nodes: vec![
                row("n1", "dc1"),
                row("n2", "dc1"),
                row("n3", "dc1"),
                row("far", "dc2"),
            ],
            wal: Default::default(),
        }
    }

    fn gathered(started: Instant, voters: Vec<VoterReport>) -> Gathered {
        Gathered {
            started,
            started_wall: SystemTime::UNIX_EPOCH,
            voters,
            members: Arc::default(),
            max_staleness: ms(5000),
            replication: None,
            drained: None,
            voter_failures: Arc::default(),
            session: SessionWatch::default(),
            hooks: Arc::default(),
        }
    }

    fn granted(name: &str, to: &str, latency: Duration, exclusive: Duration) -> VoterReport {
        VoterReport {
            name: name.into(),
            url: Err("test".into()),
            reply: VoteReply::Granted(Grant {
                to: to.into(),
                lease: L,
                exclusive,
                epoch: Some(GrantEpoch::first(boot(name.as_bytes()[1]))),
            }),
            latency: Some(latency),
        }
    }

    #[test]
    fn a_primary_asks_its_site_and_a_standby_asks_where_its_primary_writes() {
        let t0 = Instant::now();
        let mut book = Book::new(L, t0, boot(3));
        let obs = metadata("n1", false);
        let p = plan("n1", rules(), Ok(&obs), &mut book, t0 + ms(10));
        assert_eq!(p.voters, ["n2", "n3"], "its site, not dc2");
        assert_eq!((p.candidate, p.needed, p.sent), (true, 2, t0 + ms(10)));
        assert_eq!(p.named.as_deref(), Some("n1"));
        assert_eq!((p.release, p.position_from), (None, None));
        let obs = metadata("n1", true);
        let p = plan("n2", rules(), Ok(&obs), &mut book, t0);
        assert!(p.voters.is_empty() && !p.candidate && p.needed == 0);
        assert_eq!(p.position_from.as_deref(), Some("n1"));
        let down = DbError::Connect("refused".into());
        let p = plan("n1", rules(), Err(&down), &mut book, t0);
        assert_eq!((p.voters.len(), p.named, p.site), (0, None, None));
    }

    /// Cluster scope: a candidate asks every other node, all sites, and needs a majority of
    /// them all; a voter refuses a candidate of the other scope (without a promise: its book
    /// is untouched), and an operator's plain `GET /vote` is answered in either scope.
    #[test]
    fn cluster_scope_asks_every_node_and_a_voter_refuses_the_other_scope() {
        let t0 = Instant::now();
        let mut book = Book::new(L, t0, boot(1));
        let obs = metadata("n1", false);
        let cluster = LeaseRules {
            scope: VoteScope::Cluster,
            ..rules()
        };
        let p = plan("n1", cluster, Ok(&obs), &mut book, t0);
        assert_eq!(p.voters, ["n2", "n3", "far"]);
        assert_eq!((p.candidate, p.needed), (true, 3));
        let t = t0 + L;
        let published = serving_n1(t);
        let asked = VoteRequest {
            scope: VoteScope::Cluster,
            ..ask("n1")
        };
        for (request, ours) in [(&asked, VoteScope::Site), (&ask("n1"), VoteScope::Cluster)] {
            let no = vote(&mut book, request, ours, &published, t).unwrap_err();
            assert_eq!(
                no,
                NoVote::OtherScope {
                    ours,
                    asked: request.scope
                }
            );
            assert!(!no.withdraws() && no.left().is_none());
            assert!(no.reason().contains("vote_scope"), "{}", no.reason());
            assert_eq!(book.promise(t), None, "no promise");
        }
        let g = vote(&mut book, &asked, VoteScope::Cluster, &published, t).unwrap();
        assert_eq!(g.to, "n1");
        let operator = VoteRequest::default();
        assert!(vote(&mut book, &operator, VoteScope::Cluster, &published, t).is_ok());
    }

    /// The metadata moved from n1 to n2 while this voter's promise to n1 is live: the plan
    /// asks n1 to release, the book refuses n1 meanwhile, and the answer ends the promise.
    #[test]
    fn a_moved_view_asks_the_holder_to_release_and_its_answer_ends_the_promise() {
        let t0 = Instant::now();
        let t = t0 + L;
        let mut book = Book::new(L, t0, boot(3));
        let published = serving_n1(t);
        assert_eq!(
            vote(&mut book, &ask("n1"), VoteScope::Site, &published, t)
                .unwrap()
                .to,
            "n1"
        );
        let moved = metadata("n2", true);
        let p = plan("n3", rules(), Ok(&moved), &mut book, t + ms(1000));
        let asking = p.release.unwrap();
        assert_eq!(asking.holder, "n1");
        assert_eq!(asking.undoes, GrantEpoch::first(boot(3)));
        assert_eq!(
            vote(
                &mut book,
                &ask("n1"),
                VoteScope::Site,
                &published,
                t + ms(1100)
            ),
            Err(NoVote::Releasing { to: "n1".into() })
        );
        let refused = ReleaseAnswer::Peer(ReleaseReply::Refused("answers 200".into()));
        assert!(released(&mut book, &rules(), "n1", &refused, t + ms(1200)).is_err());
        assert_eq!(book.promise(t + ms(1200)).map(|p| p.0), Some("n1"));
        let ok = ReleaseAnswer::Peer(ReleaseReply::Released {
            last_200_ago: ms(400),
        });
        let at = released(&mut book, &rules(), "n1", &ok, t + ms(1300)).unwrap();
        assert!(at >= t + ms(900), "never earlier than the holder said");
        assert_eq!(book.promise(t + ms(1300)), None);
    }

    #[test]
    fn release_refuses_inside_the_published_window_and_grants_after_it() {
        let t0 = Instant::now();
        let mut holder = Holder::new(t0, L);
        let e = GrantEpoch::first(boot(2));
        let mut published = Snapshot::starting();
        published.verdict.window = Some(Window {
            from: t0 + ms(100),
            until: t0 + ms(2000),
        });
        assert!(matches!(
            release(&mut holder, &published, "n2", e, t0 + ms(500)),
            Release::Refused(_)
        ));
        assert_eq!(
            release(&mut holder, &published, "n2", e, t0 + ms(2500)),
            Release::Released {
                last_200: t0 + ms(2000)
            }
        );
        // Its own holder: the same path, the instant on the same clock.
        let mut book = Book::new(L, t0, boot(3));
        let answer = ReleaseAnswer::Own(Release::Released { last_200: t0 });
        assert_eq!(
            released(&mut book, &rules(), "n1", &answer, t0 + ms(10)),
            Ok(t0)
        );
    }

    /// A candidate named by its metadata: its own vote and a majority of the site, votes
    /// counted from the send; a withdrawn voter's carried vote is dropped.
    #[test]
    fn conclude_counts_votes_from_the_send_and_adds_its_own() {
        let t0 = Instant::now();
        let mut book = Book::new(L, t0, boot(3));
        let holder = Holder::new(t0, L);
        let obs = metadata("n1", false);
        // Long after the start: its own vote needs no handoff either.
        let sent = t0 + ms(60_000);
        let p = plan("n1", rules(), Ok(&obs), &mut book, sent);
        let voters = vec![granted("n2", "n1", ms(40), ms(60_000))];
        let now = sent + ms(50);
        let previous = Snapshot::starting();
        let c = conclude(
            p,
            Ok(&obs),
            gathered(t0, voters),
            Standing {
                book: &mut book,
                holder: &holder,
                previous: &previous,
            },
            now,
        );
        let s = &c.snapshot;
        assert_eq!(s.verdict.state, State::Primary);
        let got: Vec<(&str, Instant)> = s
            .ballot
            .votes
            .iter()
            .map(|v| (v.voter.as_str(), v.sent))
            .collect();
        assert_eq!(got, [("n2", sent), ("n1", now)]);
        assert_eq!(s.ballot.votes[0].valid_until, sent + rules().counted_for(L));
        assert_eq!(s.observed_at, Some(t0));
        assert_eq!(
            book.promise(now).map(|p| p.0),
            Some("n1"),
            "its own promise"
        );
        // The next cycle: n2 now names another node, n3 is silent.
        let previous = c.snapshot;
        let p = plan("n1", rules(), Ok(&obs), &mut book, now + ms(1000));
        let withdrawn = VoterReport {
            reply: VoteReply::Withdrawn("votes for n3".into()),
            ..granted("n2", "n1", ms(1), ms(0))
        };
        let later = now + ms(1010);
        let c = conclude(
            p,
            Ok(&obs),
            gathered(now, vec![withdrawn]),
            Standing {
                book: &mut book,
                holder: &holder,
                previous: &previous,
            },
            later,
        );
        let voters: Vec<&str> = c
            .snapshot
            .ballot
            .votes
            .iter()
            .map(|v| v.voter.as_str())
            .collect();
        assert_eq!(voters, ["n1"]);
        assert_eq!(c.snapshot.verdict.window, None);
    }

    /// A standby's knowledge of the primary's position: the daemon's answer while fresh, the
    /// WAL receiver's while its messages keep arriving, else why neither counts.
    #[test]
    fn lag_takes_the_freshest_position_and_says_why_there_is_none() {
        let t0 = Instant::now();
        let stale = ms(5000);
        let mut lag = Lag::default();
        let mut obs = metadata("n1", true);
        lag.cycle_started(t0);
        let r = lag.replication("n2", &obs, Some(Ok((100, t0, None))), stale, t0);
        assert_eq!(
            r.primary.map(|p| (p.lsn, p.source)),
            Ok((100, "the primary's daemon"))
        );
        // The daemon no longer answers; its last answer counts until it is stale.
        let t = t0 + ms(4000);
        lag.cycle_started(t);
        let r = lag.replication("n2", &obs, Some(Err("timed out".into())), stale, t);
        assert_eq!(r.primary.map(|p| p.lsn), Ok(100));
        let t = t0 + ms(6000);
        lag.cycle_started(t);
        let r = lag.replication("n2", &obs, Some(Err("timed out".into())), stale, t);
        let why = r.primary.unwrap_err();
        assert!(why.contains("timed out"), "{why}");
        // A streaming receiver whose last message keeps changing counts, and a frozen one
        // stops counting once the previous cycle's start is stale.
        obs.wal.receiver = Some(crate::db::Receiver {
            status: Some("streaming".into()),
            latest_end: Some(300),
            last_msg_receipt: Some("a".into()),
            sender: None,
        });
        let t = t0 + ms(7000);
        lag.cycle_started(t);
        let r = lag.replication("n2", &obs, None, stale, t);
        assert_eq!(
            r.primary.map(|p| (p.lsn, p.source)),
            Ok((300, "the WAL receiver"))
        );
        let t = t0 + ms(12_500);
        lag.cycle_started(t);
        let r = lag.replication("n2", &obs, None, stale, t);
        assert!(r.primary.is_err(), "frozen since the cycle at 6 s");
    }

    /// A standby's synchronous state: from the named primary's answer while it is fresh (also
    /// when a later ask fails), unknown once stale, and never from a former primary's list.
    #[test]
    fn sync_state_comes_from_the_named_primary_within_max_staleness() {
        use crate::wire::SyncState;
        let t0 = Instant::now();
        let stale = ms(5000);
        let mut lag = Lag::default();
        let senders = Some(vec![WalStandby {
            name: "n2".into(),
            state: Some("streaming".into()),
            sync_state: Some(SyncState::Sync),
        }]);
        let obs = metadata("n1", true);
        lag.cycle_started(t0);
        let r = lag.replication("n2", &obs, Some(Ok((100, t0, senders))), stale, t0);
        assert_eq!(r.sync, Ok(Some(SyncState::Sync)));
        let r = lag.replication("n3", &obs, None, stale, t0);
        assert_eq!(r.sync, Ok(None), "n3 is not among n1's WAL senders");
        let t = t0 + ms(4000);
        let r = lag.replication("n2", &obs, Some(Err("timed out".into())), stale, t);
        assert_eq!(r.sync, Ok(Some(SyncState::Sync)), "still fresh");
        let t = t0 + ms(6000);
        let r = lag.replication("n2", &obs, Some(Err("timed out".into())), stale, t);
        assert!(r.sync.is_err_and(|e| e.contains("timed out")));
        // A failover: the metadata names n3 now; n1's fresh list no longer counts.
        lag.replication("n2", &obs, Some(Ok((100, t, None))), stale, t);
        let r = lag.replication("n2", &obs, None, stale, t);
        assert!(r.sync.is_err_and(|e| e.contains("reports no WAL senders")));
        let senders = Some(vec![WalStandby {
            name: "n2".into(),
            state: Some("streaming".into()),
            sync_state: Some(SyncState::Sync),
        }]);
        lag.replication("n2", &obs, Some(Ok((100, t, senders))), stale, t);
        let moved = metadata("n3", true);
        let r = lag.replication("n2", &moved, Some(Err("in recovery".into())), stale, t);
        assert!(
            r.sync.is_err_and(|e| e.contains("in recovery")),
            "n1's list is n1's"
        );
    }

    /// The order the daemon and the simulation both get: store, then read the clock, then
    /// retire the replaced window at that instant.
    #[test]
    fn publish_stores_then_retires_at_an_instant_read_after_the_store() {
        let t0 = Instant::now();
        let mut holder = Holder::new(t0, L);
        let w = Window {
            from: t0,
            until: t0 + ms(3000),
        };
        let mut snapshot = Snapshot::starting();
        snapshot.verdict.state = State::Standby;
        let c = Conclusion {
            snapshot,
            replaced: Some(w),
        };
        let order = RefCell::new(Vec::new());
        let verdict = c.publish(
            &mut holder,
            |s| {
                order
                    .borrow_mut()
                    .push(format!("store {}", s.verdict.state))
            },
            || {
                order.borrow_mut().push("clock".to_string());
                t0 + ms(1000)
            },
        );
        assert_eq!(verdict.state, State::Standby);
        assert_eq!(*order.borrow(), ["store Standby", "clock"]);
        assert_eq!(
            holder.release(None, "n2", GrantEpoch::first(boot(2)), t0 + ms(1500)),
            Release::Released {
                last_200: t0 + ms(1000)
            }
        );
    }
}
