//! Vote leases: what this node promised as a voter, and what it holds as a candidate.
//!
//! Owns the rules that keep two nodes of one site from answering 200 at the same instant, as
//! pure code: every function takes the time (`now`, a monotonic [`Instant`] of this node's
//! clock) as an argument and never reads a clock, a socket or the database, so the
//! deterministic simulation (`tests/sim.rs`) drives the very same code with skewed clocks.
//!
//! ## The protocol
//! - **Voter** ([`Book`]). Asked for its vote at time `a`, a voter names whom its local metadata
//!   names as primary, X, and promises: it names no other node (itself included) until
//!   `a + vote_lease`. While a promise to Y is live it answers "no vote" to everyone but Y. A
//!   daemon that starts does not know what it promised before it stopped, so it grants no vote
//!   until `vote_lease` after its start. Each vote says how long the voter has promised no
//!   other node ([`Grant::exclusive`]).
//! - **Candidate** ([`LeaseRules::hold`], [`Ballot`]). A vote requested at `s` (when the request
//!   was *sent*, on the candidate's clock) counts until `s + vote_lease·(1−ρ)/(1+ρ)`: with clock
//!   rates within `1 ± ρ` of real time that ends before the voter's promise does. A candidate
//!   answers 200 only while a majority of its electorate (its site, or with
//!   `vote_scope = "cluster"` every node of the cluster: [`crate::decide::role`]) holds
//!   unexpired votes for it at the moment of the request. Any two majorities of one electorate
//!   share a voter, and no voter holds live promises to two nodes, so two 200s of one site (of
//!   the whole cluster, in cluster scope) never overlap.
//! - **Handoff**. A vote also *settles*: it counts toward a 200 only once the voter has promised
//!   no other node for `handoff_delay` (measured conservatively across both clocks). So a new
//!   primary answers 200 at the earliest `handoff_delay` after the last instant the old one
//!   could have, which covers haproxy's time to take the old one out of its write pool; a
//!   continuing primary, whose voters have named it all along, needs no handoff.
//! - **Release** ([`Holder`]). A node that no longer answers 200 (its database stopped, or its
//!   site names another node) can release the promises made to it. A release comes from one
//!   voter (authenticated: `crate::auth`) and names an **epoch** of that voter's grants
//!   ([`crate::auth::GrantEpoch`]: its boot and how many releases it began): the holder voids
//!   exactly that voter's votes of that boot granted in that epoch or earlier, no other
//!   voter's, no later grant ([`crate::auth::Fences`]), and tells the voter when it last could
//!   have answered 200. The voter then ends the promise at once, and the new primary only waits
//!   out the handoff, not a lease that nobody uses any more. When it begins to ask
//!   ([`Book::begin_release`]) the voter moves to the next epoch and, until its next cycle,
//!   gives the holder no vote, so the promise it ends is one the holder no longer counts. A
//!   release replayed or delivered late voids nothing its sender had not asked to void.
//!
//! Why no promise survives a restart: keeping them would need a durable write before every
//! answer and a clock base that survives the process; abstaining for `vote_lease` after a start
//! costs a continuing primary nothing as long as a majority of its site's other daemons keeps
//! running (a site of one or two nodes waits `vote_lease` after its primary's daemon restarts).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::auth::{BootId, Fences, GrantEpoch};
use crate::wire::VoteScope;

/// The rules shared by voters and candidates (from the configuration): the timing, and whose
/// majority a candidate needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseRules {
    /// How long a voter's promise lasts on the voter's clock.
    pub vote_lease: Duration,
    /// Whose majority a candidate needs: its site's or the whole cluster's
    /// ([`crate::decide::role`] builds the electorate from it).
    pub scope: VoteScope,
    /// How long a voter must have promised no other node before its vote can make a 200.
    pub handoff_delay: Duration,
    /// ρ: the most any daemon's monotonic clock rate differs from real time (0.01 = 1 %).
    pub drift: f64,
}

impl LeaseRules {
    /// How long after sending the request a candidate may count a vote whose lease is `lease`.
    pub fn counted_for(&self, lease: Duration) -> Duration {
        self.shrunk(lease)
    }

    /// A duration on one clock as the least it can be on another: ×(1−ρ)/(1+ρ), less
    /// [`ROUNDING`].
    fn shrunk(&self, d: Duration) -> Duration {
        d.mul_f64((1.0 - self.drift) / (1.0 + self.drift))
            .saturating_sub(ROUNDING)
    }

    /// The vote of `voter` for this node, from a grant requested at `sent` and received at
    /// `received` (both on this node's clock). The lease is the shorter of the voter's and
    /// ours, so a voter configured with a shorter lease is never over-trusted.
    ///
    /// The vote settles once the voter's exclusivity, counted on the safe side of both clocks,
    /// reaches `handoff_delay`: at `received + handoff_delay·(1+ρ) − exclusive`.
    pub fn hold(&self, voter: &str, sent: Instant, received: Instant, grant: &Grant) -> HeldVote {
        let lease = grant.lease.min(self.vote_lease);
        let wait = (self.handoff_delay.mul_f64(1.0 + self.drift) + ROUNDING)
            .saturating_sub(grant.exclusive);
        HeldVote {
            voter: voter.to_string(),
            epoch: grant.epoch,
            sent,
            valid_until: sent + self.counted_for(lease),
            settled_at: received.max(sent) + wait,
        }
    }

    /// The voter-clock instant at which a holder's last 200 happened at the latest, when the
    /// holder said at reply time that it was `ago` ago (its clock) and the reply arrived at
    /// `received` (the voter's clock).
    pub fn last_200_seen_at(&self, received: Instant, ago: Duration) -> Instant {
        received.checked_sub(self.shrunk(ago)).unwrap_or(received)
    }
}

/// The margin every computed duration gives away on the safe side (shorter validity, longer
/// settling, a later last 200), so that the floating-point arithmetic of the drift factors
/// never rounds a bound the unsafe way (the simulation saw 1-2 ns short without it).
pub const ROUNDING: Duration = Duration::from_micros(1);

/// A vote as the voter grants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The node the vote is for (whom the voter's metadata names).
    pub to: String,
    /// How long the voter promised, on its clock.
    pub lease: Duration,
    /// How long the voter has promised no node other than `to` (on its clock).
    pub exclusive: Duration,
    /// The voter's epoch when it granted it: a release of the voter naming this epoch or a
    /// later one (of the same boot) voids it ([`Holder::release`]). None: a voter older than
    /// epochs (a rolling upgrade); no release voids that vote, it counts until it expires.
    pub epoch: Option<GrantEpoch>,
}

/// Why a voter gives no vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoVote {
    /// The daemon started less than `vote_lease` ago; `left` until it may vote.
    Starting { left: Duration },
    /// Its metadata names no primary, its database is down, or its view is stale.
    NamesNobody(String),
    /// Its metadata names this other node, not the candidate that asked.
    NamesOther(String),
    /// A promise to another node is live for `left` more.
    Promised { to: String, left: Duration },
    /// Its metadata names another node, and it is asking `to` to release its promise.
    Releasing { to: String },
    /// The candidate asked with `vote_scope` `asked`, this voter's is `ours`.
    OtherScope { ours: VoteScope, asked: VoteScope },
}

impl NoVote {
    /// The reason in words, as `/vote` shows it.
    pub fn reason(&self) -> String {
        match self {
            NoVote::Starting { left } => format!(
                "started recently: grants no vote for {} more (it does not know what it promised \
                 before it started)",
                humantime::format_duration(round_ms(*left))
            ),
            NoVote::NamesNobody(why) => why.clone(),
            NoVote::NamesOther(named) => format!("its metadata names {named}"),
            NoVote::Promised { to, left } => format!(
                "promised to {to} for {} more",
                humantime::format_duration(round_ms(*left))
            ),
            NoVote::Releasing { to } => {
                format!("its metadata names another node: it is asking {to} to release its promise")
            }
            NoVote::OtherScope { ours, asked } => format!(
                "this voter's vote_scope is {ours:?}, the candidate's {asked:?}: a majority is \
                 counted in one scope only (set the same vote_scope on every node)",
                ours = ours.name(),
                asked = asked.name()
            ),
        }
    }

    /// Whether the answer withdraws the asking candidate's earlier votes: this voter's metadata
    /// names another node (its promise, if any, still stands until it ends or is released).
    pub fn withdraws(&self) -> bool {
        matches!(self, NoVote::NamesOther(_) | NoVote::Releasing { .. })
    }

    /// Time left before this answer may change by itself, if bounded.
    pub fn left(&self) -> Option<Duration> {
        match self {
            NoVote::Starting { left } | NoVote::Promised { left, .. } => Some(*left),
            NoVote::NamesNobody(_)
            | NoVote::NamesOther(_)
            | NoVote::Releasing { .. }
            | NoVote::OtherScope { .. } => None,
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A live promise.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Promise {
    to: String,
    until: Instant,
}

/// The voter's promise book: at most one live promise at any instant.
#[derive(Debug, Clone)]
pub struct Book {
    vote_lease: Duration,
    /// No vote before this instant: `vote_lease` after the daemon started.
    accepting_from: Instant,
    promise: Option<Promise>,
    /// For each node promised before, when the last promise to it ended (expired or released).
    ended: BTreeMap<String, Instant>,
    /// The node this voter's poller asks to release its promise in the current cycle
    /// ([`Book::begin_release`]): it gets no vote meanwhile.
    releasing: Option<String>,
    /// The epoch of the grants it makes now: its boot, and how many releases it began.
    epoch: GrantEpoch,
}

/// A release a voter asks for: of the promises made to `holder`, the grants of `undoes` and
/// every earlier epoch of the same boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asking {
    pub holder: String,
    pub undoes: GrantEpoch,
}

impl Book {
    /// The book of a daemon that started at `started`, whose process is `boot` (a random id,
    /// new at every start: [`BootId::random`]).
    pub fn new(vote_lease: Duration, started: Instant, boot: BootId) -> Book {
        Book {
            vote_lease,
            accepting_from: started + vote_lease,
            promise: None,
            ended: BTreeMap::new(),
            releasing: None,
            epoch: GrantEpoch::first(boot),
        }
    }

    /// The epoch of the grants it makes now.
    pub fn epoch(&self) -> GrantEpoch {
        self.epoch
    }

    /// Sets the length of later promises (a reload); promises already made keep theirs.
    pub fn set_lease(&mut self, vote_lease: Duration) {
        self.vote_lease = vote_lease;
    }

    /// Answers `candidate`'s request for this node's vote: a vote only when its metadata names
    /// the candidate; any other answer leaves the book as it is, so a request from one node
    /// never stretches a promise to another. Without a candidate (an operator's `GET /vote`),
    /// as [`Book::answer`].
    pub fn answer_to(
        &mut self,
        candidate: Option<&str>,
        named: Result<&str, &str>,
        now: Instant,
    ) -> Result<Grant, NoVote> {
        match (candidate, named) {
            (Some(c), Ok(n)) if c != n => Err(NoVote::NamesOther(n.to_string())),
            _ => self.answer(named, now),
        }
    }

    /// Answers a request for this node's vote at `now`, when its metadata names `named` (or
    /// nobody, with the reason). A vote is a promise: it is recorded before it is returned.
    pub fn answer(&mut self, named: Result<&str, &str>, now: Instant) -> Result<Grant, NoVote> {
        if now < self.accepting_from {
            return Err(NoVote::Starting {
                left: self.accepting_from - now,
            });
        }
        self.expire(now);
        let to = named.map_err(|why| NoVote::NamesNobody(why.to_string()))?;
        if self.releasing.as_deref() == Some(to) {
            return Err(NoVote::Releasing { to: to.to_string() });
        }
        match &mut self.promise {
            Some(p) if p.to != to => Err(NoVote::Promised {
                to: p.to.clone(),
                left: p.until - now,
            }),
            Some(p) => {
                p.until = p.until.max(now + self.vote_lease);
                Ok(self.grant(to, now))
            }
            None => {
                self.promise = Some(Promise {
                    to: to.to_string(),
                    until: now + self.vote_lease,
                });
                Ok(self.grant(to, now))
            }
        }
    }

    fn grant(&self, to: &str, now: Instant) -> Grant {
        Grant {
            to: to.to_string(),
            lease: self.vote_lease,
            exclusive: now.saturating_duration_since(self.exclusive_since(to)),
            epoch: Some(self.epoch),
        }
    }

    /// Since when this voter has promised no node other than `to` (at the earliest, the end
    /// of the abstention after its start: an earlier process may have promised anyone).
    fn exclusive_since(&self, to: &str) -> Instant {
        self.ended
            .iter()
            .filter(|(n, _)| n.as_str() != to)
            .map(|(_, at)| *at)
            .fold(self.accepting_from, Instant::max)
    }

    /// Moves a promise that has run out into the record of ended promises.
    fn expire(&mut self, now: Instant) {
        if let Some(p) = self.promise.take_if(|p| p.until <= now) {
            self.end(p.to, p.until);
        }
    }

    fn end(&mut self, to: String, at: Instant) {
        let entry = self.ended.entry(to).or_insert(at);
        *entry = (*entry).max(at);
    }

    /// The node holding a live promise that this voter would now give to someone else: the
    /// node to ask for a release. None when there is no such promise.
    pub fn to_release(&self, named: Option<&str>, now: Instant) -> Option<&str> {
        let p = self.promise.as_ref().filter(|p| p.until > now)?;
        match named {
            Some(n) if n != p.to => Some(&p.to),
            _ => None,
        }
    }

    /// [`Book::to_release`] at the start of a poll cycle, whose answer the poller then asks for
    /// a release: from now until the next cycle's call, this voter gives that node no vote.
    /// The release undoes the grants of the epoch in force until now (and every earlier one);
    /// the book moves to the next epoch, so a grant it makes from now on is not undone by it
    /// (nor by any replay of it).
    ///
    /// Its published view may still name the holder (the poller publishes the new one at the
    /// end of the cycle), and the holder, once released, may ask again before the answer to the
    /// release arrives here. A vote granted then would answer a request sent after the release,
    /// which the holder counts, and the answer to the release would end the promise under it:
    /// this voter could then vote for another node while the holder answers 200 on its vote.
    pub fn begin_release(&mut self, named: Option<&str>, now: Instant) -> Option<Asking> {
        self.releasing = self.to_release(named, now).map(String::from);
        let holder = self.releasing.clone()?;
        let undoes = self.epoch;
        self.epoch = undoes.next();
        Some(Asking { holder, undoes })
    }

    /// `holder` released the promises made to it; it could have answered 200 at the latest at
    /// `last_200` (this voter's clock). The promise ends now, and counts as having ended at
    /// `last_200` for the exclusivity of later votes (never later than the promise's own end).
    pub fn release(&mut self, holder: &str, last_200: Instant, now: Instant) {
        self.expire(now);
        if let Some(p) = self.promise.take_if(|p| p.to == holder) {
            self.end(p.to, last_200.min(p.until).min(now));
        }
    }

    /// The live promise, if any: whom, and until when.
    pub fn promise(&self, now: Instant) -> Option<(&str, Instant)> {
        self.promise
            .as_ref()
            .filter(|p| p.until > now)
            .map(|p| (p.to.as_str(), p.until))
    }
}

/// A vote this node holds as a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldVote {
    /// The node that gave it (this node for its own vote).
    pub voter: String,
    /// The voter's epoch when it granted it (None: a voter older than epochs).
    pub epoch: Option<GrantEpoch>,
    /// When the request was sent (this node's clock).
    pub sent: Instant,
    /// The vote counts before this instant.
    pub valid_until: Instant,
    /// The vote can make a 200 from this instant (handoff).
    pub settled_at: Instant,
}

impl HeldVote {
    /// Whether it counts toward a 200 at `now`.
    pub fn counts(&self, now: Instant) -> bool {
        self.settled_at <= now && now < self.valid_until
    }

    /// Whether it is unexpired at `now` (settled or not).
    pub fn live(&self, now: Instant) -> bool {
        now < self.valid_until
    }
}

/// The votes a candidate holds after a cycle, and how many make a majority of its site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ballot {
    pub votes: Vec<HeldVote>,
    /// A majority of the site (0: no vote held, e.g. a standby).
    pub needed: usize,
}

/// When a candidate may answer 200: from `from` (a majority of settled votes) until `until`
/// (the first instant after that at which fewer than a majority still count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: Instant,
    pub until: Instant,
}

impl Window {
    /// Whether `now` lies in the window.
    pub fn contains(&self, now: Instant) -> bool {
        self.from <= now && now < self.until
    }
}

impl Ballot {
    /// The ballot a cycle publishes at `now`: the votes `granted` in this cycle, plus the
    /// votes of `previous` that were not renewed and are still live (the voter's promise
    /// stands until it expires), less every vote its voter released ([`Holder::admits`]), and
    /// less the votes of the voters `withdrawn`: those that answered in this cycle that their
    /// metadata names another node ([`NoVote::withdraws`]).
    ///
    /// Dropping a withdrawn vote early only withholds 200s (it is always safe). It is what lets a
    /// stale primary stop answering 200 as soon as its site has moved, instead of when the
    /// last promise it holds runs out; once it answers 200 no more, it grants the release the
    /// voter asks for, and the new primary waits for the handoff only.
    ///
    /// A renewal settles no later than the vote it renews: while a vote is live, its voter's
    /// promise runs on without a break (a release would have voided the vote, a restart makes
    /// the voter abstain until after it expired), so the renewal's voter has been exclusive
    /// since then as well. Its own `settled_at` can come out later only by the noise of
    /// measuring it (a slower answer), which must not take back a 200 already given.
    pub fn next(
        previous: &Ballot,
        granted: Vec<HeldVote>,
        withdrawn: &[&str],
        holder: &Holder,
        needed: usize,
        now: Instant,
    ) -> Ballot {
        let kept: Vec<&HeldVote> = previous
            .votes
            .iter()
            .filter(|v| v.live(now) && holder.admits(v))
            .filter(|v| !withdrawn.contains(&v.voter.as_str()))
            .collect();
        let mut votes = granted;
        votes.retain(|v| holder.admits(v));
        for v in &mut votes {
            if let Some(old) = kept.iter().find(|o| o.voter == v.voter) {
                v.settled_at = v.settled_at.min(old.settled_at);
            }
        }
        let carried: Vec<HeldVote> = kept
            .into_iter()
            .filter(|o| !votes.iter().any(|g| g.voter == o.voter))
            .cloned()
            .collect();
        votes.extend(carried);
        Ballot { votes, needed }
    }

    /// How many votes count toward a 200 at `now`.
    pub fn counting(&self, now: Instant) -> usize {
        self.votes.iter().filter(|v| v.counts(now)).count()
    }

    /// How many votes are unexpired at `now`.
    pub fn live(&self, now: Instant) -> usize {
        self.votes.iter().filter(|v| v.live(now)).count()
    }

    /// The first window, at or after `now`, in which a majority of the votes count; None if
    /// there is none (or no majority is needed, which never happens for a candidate).
    ///
    /// Later windows (a majority lost, then regained by votes settling later) are left out:
    /// the next cycle computes them again, and leaving them out can only withhold a 200.
    pub fn window(&self, now: Instant) -> Option<Window> {
        if self.needed == 0 {
            return None;
        }
        // The count only changes at these instants; try each in order.
        let mut edges: Vec<Instant> = self
            .votes
            .iter()
            .flat_map(|v| [v.settled_at.max(now), v.valid_until])
            .filter(|t| *t >= now)
            .collect();
        edges.push(now);
        edges.sort();
        edges.dedup();
        let from = edges
            .iter()
            .copied()
            .find(|t| self.counting(*t) >= self.needed)?;
        let until = edges
            .iter()
            .copied()
            .filter(|t| *t > from)
            .find(|t| self.counting(*t) < self.needed)
            .unwrap_or(from);
        Some(Window { from, until })
    }
}

/// The candidate side of a release: which votes still count, and when this node last could
/// have answered 200.
#[derive(Debug, Clone)]
pub struct Holder {
    started: Instant,
    /// The grants each voter released ([`Fences`]): only the sender's own, of the epochs it
    /// named.
    fences: Fences,
    /// The latest instant at which a window already replaced could have answered 200.
    last_200: Option<Instant>,
}

/// The outcome of a request to release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Released: every vote of the sender granted in the epoch it named or earlier is void;
    /// 200 was possible at the latest at `last_200` (this node's clock).
    Released { last_200: Instant },
    /// Not released, and why (this node answers 200, or is about to).
    Refused(String),
}

impl Holder {
    /// The holder of a daemon that started at `started`, whose votes count at most
    /// `vote_lease` after their request. Whatever an earlier process answered, it answered
    /// before this one started.
    pub fn new(started: Instant, vote_lease: Duration) -> Holder {
        Holder {
            started,
            fences: Fences::new(vote_lease),
            last_200: None,
        }
    }

    /// Sets the lease (a reload): fences are remembered at least as long as votes may count.
    pub fn set_lease(&mut self, vote_lease: Duration) {
        self.fences.set_lease(vote_lease);
    }

    /// Whether `vote` may still be counted: its voter has not released its epoch. A vote
    /// without an epoch (a voter older than epochs) is never released: its voter's releases
    /// name no epoch and are refused, so it keeps its promise until the vote expires.
    pub fn admits(&self, vote: &HeldVote) -> bool {
        vote.epoch
            .as_ref()
            .is_none_or(|e| self.fences.admits(&vote.voter, e))
    }

    /// The published window `window` is replaced at `now`: remember until when it could have
    /// answered 200.
    pub fn retire(&mut self, window: Option<Window>, now: Instant) {
        if let Some(w) = window.filter(|w| w.from < now) {
            let end = w.until.min(now);
            self.last_200 = Some(self.last_200.map_or(end, |l| l.max(end)));
        }
    }

    /// `voter` asks to release the grants it made in `undoes` or earlier (same boot): voids
    /// exactly those, unless the published `current` window allows a 200 now or later. No
    /// other voter's vote, and no later grant of this one, is touched.
    pub fn release(
        &mut self,
        current: Option<Window>,
        voter: &str,
        undoes: GrantEpoch,
        now: Instant,
    ) -> Release {
        if let Some(w) = current {
            if w.contains(now) {
                return Release::Refused("answers 200".into());
            }
            if now < w.from {
                return Release::Refused("handing off: about to answer 200".into());
            }
        }
        if let Err(full) = self.fences.release(voter, undoes, now) {
            return Release::Refused(full.to_string());
        }
        self.retire(current, now);
        Release::Released {
            last_200: self.last_200.unwrap_or(self.started).max(self.started),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_secs(3);
    const D: Duration = Duration::from_millis(2500);

    fn rules(drift: f64) -> LeaseRules {
        LeaseRules {
            vote_lease: L,
            scope: VoteScope::Site,
            handoff_delay: D,
            drift,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn boot(b: u8) -> BootId {
        BootId::from_bytes([b; 16])
    }

    /// The first epoch of voter `b`'s process.
    fn epoch(b: u8) -> GrantEpoch {
        GrantEpoch::first(boot(b))
    }

    #[test]
    fn a_voter_abstains_for_a_lease_after_it_starts() {
        let t0 = Instant::now();
        let mut book = Book::new(L, t0, boot(1));
        let e = book.answer(Ok("n1"), t0 + ms(2999)).unwrap_err();
        assert_eq!(e, NoVote::Starting { left: ms(1) });
        let g = book.answer(Ok("n1"), t0 + L).unwrap();
        assert_eq!((g.to.as_str(), g.lease, g.exclusive), ("n1", L, ms(0)));
        let g = book.answer(Ok("n1"), t0 + ms(10_000)).unwrap();
        assert_eq!(
            g.exclusive,
            ms(7000),
            "exclusive since the abstention ended"
        );
    }

    /// A request of one candidate never touches a promise to another: the voter's metadata
    /// names n1, n2 asks: no vote, and n1's promise is not stretched.
    #[test]
    fn a_vote_is_promised_only_to_the_candidate_that_asked() {
        let t0 = Instant::now();
        let mut book = Book::new(L, t0, boot(1));
        let t = t0 + L;
        book.answer_to(Some("n1"), Ok("n1"), t).unwrap();
        assert_eq!(
            book.answer_to(Some("n2"), Ok("n1"), t + ms(2000)),
            Err(NoVote::NamesOther("n1".into()))
        );
        assert_eq!(
            book.promise(t + ms(2000)),
            Some(("n1", t + L)),
            "not stretched"
        );
        // An operator's plain GET /vote answers (and promises) as the metadata says.
        assert_eq!(
            book.answer_to(None, Ok("n1"), t + ms(2000)).unwrap().to,
            "n1"
        );
        assert_eq!(book.promise(t + ms(2000)), Some(("n1", t + ms(2000) + L)));
    }

    #[test]
    fn a_live_promise_to_one_node_refuses_every_other() {
        let t0 = Instant::now();
        let mut book = Book::new(L, t0, boot(1));
        let t = t0 + L;
        book.answer(Ok("n1"), t).unwrap();
        // Renewed at t+1s: the promise now runs to t+4s.
        book.answer(Ok("n1"), t + ms(1000)).unwrap();
        for other in ["n2", "n3"] {
            assert_eq!(
                book.answer(Ok(other), t + ms(3999)),
                Err(NoVote::Promised {
                    to: "n1".into(),
                    left: ms(1)
                })
            );
        }
        assert_eq!(book.to_release(Some("n2"), t + ms(2000)), Some("n1"));
        assert_eq!(book.to_release(Some("n1"), t + ms(2000)), None);
        // Expired: n2 gets it, exclusive from the end of n1's promise.
        let g = book.answer(Ok("n2"), t + ms(4500)).unwrap();
        assert_eq!(g.exclusive, ms(500));
        // The metadata naming nobody is no vote, and does not end the promise to n2.
        assert!(matches!(
            book.answer(Err("database down"), t + ms(5000)),
            Err(NoVote::NamesNobody(_))
        ));
        assert_eq!(book.promise(t + ms(5000)).map(|p| p.0), Some("n2"));
    }

    #[test]
    fn a_release_ends_the_promise_at_the_holders_last_200() {
        let t0 = Instant::now();
        let mut book = Book::new(L, t0, boot(1));
        let t = t0 + L;
        book.answer(Ok("n1"), t).unwrap();
        // n1 says its last 200 was at t+200ms; the promise would run to t+3s.
        book.release("n1", t + ms(200), t + ms(1000));
        assert_eq!(book.promise(t + ms(1000)), None);
        let g = book.answer(Ok("n2"), t + ms(1000)).unwrap();
        assert_eq!(g.exclusive, ms(800));
        // A release by a node holding no promise changes nothing.
        book.release("n3", t + ms(1000), t + ms(1100));
        assert_eq!(book.promise(t + ms(1100)).map(|p| p.0), Some("n2"));
    }

    /// The release race the simulation found (tests/sim.rs, PRIMGR_SIM_SEED=1217 before this
    /// fix): this voter's metadata now names n2, so it asks n1 to release; n1 releases, then
    /// asks for its vote again before the answer to the release arrives, while this voter's
    /// published view still names n1. A vote then would be one n1 counts (requested after it
    /// released) under a promise the answer to the release ends.
    #[test]
    fn a_voter_asking_for_a_release_gives_the_holder_no_vote() {
        let t0 = Instant::now();
        let mut book = Book::new(L, t0, boot(1));
        let t = t0 + L;
        book.answer(Ok("n1"), t).unwrap();
        let before = book.answer(Ok("n1"), t + ms(900)).unwrap().epoch.unwrap();
        let asking = book.begin_release(Some("n2"), t + ms(1000)).unwrap();
        assert_eq!((asking.holder.as_str(), asking.undoes), ("n1", before));
        assert_eq!(
            book.epoch(),
            before.next(),
            "later grants are of the next epoch"
        );
        let no = book.answer(Ok("n1"), t + ms(1500)).unwrap_err();
        assert_eq!(no, NoVote::Releasing { to: "n1".into() });
        assert_eq!(no.left(), None);
        assert_eq!(book.promise(t + ms(1500)), Some(("n1", t + ms(900) + L)));
        book.release("n1", t + ms(200), t + ms(1600));
        assert_eq!(book.promise(t + ms(1600)), None);
        let g = book.answer(Ok("n2"), t + ms(1700)).unwrap();
        assert_eq!(g.exclusive, ms(1500));
        assert_eq!(g.epoch, Some(before.next()));
        // The next cycle: nothing to release any more.
        assert_eq!(book.begin_release(Some("n2"), t + ms(2000)), None);
        assert_eq!(
            book.answer(Ok("n1"), t + ms(2100)).unwrap_err().left(),
            Some(ms(2600))
        );
    }

    #[test]
    fn a_vote_counts_from_the_send_and_settles_after_the_handoff() {
        let r = rules(0.01);
        let s = Instant::now();
        let received = s + ms(40);
        let fresh = Grant {
            to: "n2".into(),
            lease: L,
            exclusive: ms(0),
            epoch: Some(epoch(3)),
        };
        let v = r.hold("n3", s, received, &fresh);
        // 3 s × 0.99/1.01 = 2.9406 s after the send (less the rounding margin).
        assert_eq!(v.valid_until - s, L.mul_f64(0.99 / 1.01) - ROUNDING);
        // 2.5 s × 1.01 after the answer arrived (plus the rounding margin).
        assert_eq!(v.settled_at - received, ms(2525) + ROUNDING);
        assert!(!v.counts(s + ms(2000)) && v.live(s + ms(2000)));
        let old = Grant {
            exclusive: ms(60_000),
            ..fresh.clone()
        };
        let v = r.hold("n3", s, received, &old);
        assert_eq!(
            v.settled_at, received,
            "a continuing primary needs no handoff"
        );
        // A voter with a longer lease is trusted only for ours.
        let long = Grant {
            lease: ms(60_000),
            ..fresh
        };
        assert_eq!(r.hold("n3", s, received, &long).valid_until, v.valid_until);
    }

    /// The ballot after `previous` when only `renewed` was granted (a majority of 2 needed).
    fn renewing(previous: &Ballot, renewed: &HeldVote, holder: &Holder, at: Instant) -> Ballot {
        Ballot::next(previous, vec![renewed.clone()], &[], holder, 2, at)
    }

    fn vote(voter: &str, t: Instant, settled: u64, until: u64) -> HeldVote {
        HeldVote {
            voter: voter.into(),
            epoch: Some(epoch(voter.as_bytes()[1])),
            sent: t,
            valid_until: t + ms(until),
            settled_at: t + ms(settled),
        }
    }

    #[test]
    fn the_window_is_where_a_majority_counts() {
        let t = Instant::now();
        let ballot = Ballot {
            votes: vec![
                vote("n1", t, 0, 3000),
                vote("n2", t, 1000, 2000),
                vote("n3", t, 1500, 4000),
            ],
            needed: 2,
        };
        assert_eq!(
            ballot.window(t),
            Some(Window {
                from: t + ms(1000),
                until: t + ms(3000)
            })
        );
        assert_eq!(ballot.counting(t + ms(1600)), 3);
        // Asked later, the window starts then.
        assert_eq!(
            ballot.window(t + ms(2500)).map(|w| w.from),
            Some(t + ms(2500))
        );
        // No majority ever: no window.
        let short = Ballot {
            votes: vec![vote("n1", t, 0, 1000), vote("n2", t, 1000, 2000)],
            needed: 2,
        };
        assert_eq!(short.window(t), None);
        assert_eq!(Ballot::default().window(t), None);
    }

    #[test]
    fn the_next_ballot_carries_live_votes_and_drops_voided_ones() {
        let t = Instant::now();
        let previous = Ballot {
            votes: vec![
                vote("n1", t, 0, 3000),
                vote("n2", t, 0, 1000),
                vote("n3", t, 0, 3000),
            ],
            needed: 2,
        };
        let renewed = vote("n3", t + ms(1500), 0, 3000);
        let holder = Holder::new(t, L);
        let b = renewing(&previous, &renewed, &holder, t + ms(1500));
        // n3 renewed, n1 carried, n2 expired.
        let voters: Vec<&str> = b.votes.iter().map(|v| v.voter.as_str()).collect();
        assert_eq!(voters, ["n3", "n1"]);
        // The renewal is settled since the vote it renews was.
        assert_eq!(
            b.votes[0],
            HeldVote {
                settled_at: t,
                ..renewed.clone()
            }
        );
        // n1's release voids n1's votes only: n3's renewal and nothing else of n2 or n3.
        let mut holder = Holder::new(t, L);
        holder.release(None, "n1", epoch(b'1'), t + ms(1000));
        let b = renewing(&previous, &renewed, &holder, t + ms(1500));
        let settled = HeldVote {
            settled_at: t,
            ..renewed.clone()
        };
        assert_eq!(b.votes, [settled]);
        // n3's release of its first epoch voids its renewal too; a grant of its next epoch
        // (made after it began to ask) counts.
        holder.release(None, "n3", epoch(b'3'), t + ms(1000));
        let b = renewing(&previous, &renewed, &holder, t + ms(1500));
        assert_eq!(b.votes, []);
        let later = HeldVote {
            epoch: Some(epoch(b'3').next()),
            ..renewed.clone()
        };
        let b = renewing(&previous, &later, &holder, t + ms(1500));
        assert_eq!(b.votes, [later]);
        // A vote of a daemon older than epochs (a rolling upgrade) names none: no release
        // voids it (that daemon's releases name no epoch and are refused, so its promise runs
        // to its end), and it counts until it expires.
        let legacy = HeldVote {
            epoch: None,
            ..renewed.clone()
        };
        let b = renewing(&previous, &legacy, &holder, t + ms(1500));
        assert_eq!(b.votes, std::slice::from_ref(&legacy));
        assert!(
            !b.votes[0].counts(legacy.valid_until),
            "it counts until it expires"
        );
    }

    /// A voter whose metadata names another node withdraws its earlier vote at once: the stale
    /// primary loses its majority now, not when the promise runs out; a voter that is merely
    /// silent (a failed request, a restart, a database down) keeps its live vote carried.
    #[test]
    fn a_voter_naming_another_node_withdraws_its_vote() {
        let t = Instant::now();
        let previous = Ballot {
            votes: vec![vote("n1", t, 0, 3000), vote("n2", t, 0, 3000)],
            needed: 2,
        };
        let own = vote("n1", t + ms(1000), 0, 3000);
        let holder = Holder::new(t, L);
        let now = t + ms(1000);
        let silent = Ballot::next(&previous, vec![own.clone()], &[], &holder, 2, now);
        assert_eq!(
            silent.counting(now),
            2,
            "a silent voter's live vote is carried"
        );
        let moved = Ballot::next(&previous, vec![own.clone()], &["n2"], &holder, 2, now);
        let voters: Vec<&str> = moved.votes.iter().map(|v| v.voter.as_str()).collect();
        assert_eq!(voters, ["n1"]);
        assert_eq!(
            moved.window(now),
            None,
            "no majority left: no 200 from now on"
        );
        // A release is then granted at once: nothing in the window answers 200 any more.
        let mut holder = Holder::new(t, L);
        holder.retire(silent.window(t), now);
        assert!(matches!(
            holder.release(moved.window(now), "n2", epoch(b'2'), now),
            Release::Released { last_200 } if last_200 == now
        ));
        // The refusals that withdraw, and those that do not.
        let names_other = NoVote::NamesOther("n3".into());
        let releasing = NoVote::Releasing { to: "n1".into() };
        assert!(names_other.withdraws() && releasing.withdraws());
        for silent in [
            NoVote::Starting { left: ms(10) },
            NoVote::NamesNobody("database down".into()),
            NoVote::Promised {
                to: "n3".into(),
                left: ms(10),
            },
        ] {
            assert!(!silent.withdraws(), "{silent:?}");
        }
    }

    /// The liveness glitch the simulation found (tests/sim.rs, PRIMGR_SIM_SEED=533 before this fix): a
    /// new primary's votes settle `handoff_delay` after its voters' last promise to another
    /// node ended, measured from each answer's arrival; a renewal whose answer came slower
    /// settled later than the vote it replaced, and the primary dropped its 200 for a moment.
    #[test]
    fn a_renewal_does_not_unsettle_a_vote() {
        let t = Instant::now();
        let previous = Ballot {
            votes: vec![vote("n1", t, 1000, 3000), vote("n2", t, 1000, 3000)],
            needed: 2,
        };
        // Renewed at 500 ms; the slower answer puts its settling at 1.2 s.
        let renewed = HeldVote {
            settled_at: t + ms(1200),
            ..vote("n2", t + ms(500), 0, 3000)
        };
        let holder = Holder::new(t, L);
        let b = renewing(&previous, &renewed, &holder, t + ms(1100));
        assert_eq!(b.votes[0].settled_at, t + ms(1000));
        assert_eq!(b.votes[0].valid_until, renewed.valid_until);
        assert_eq!(b.window(t + ms(1100)).map(|w| w.from), Some(t + ms(1100)));
        // Once the previous vote expired, or was voided by a release, the renewal stands alone.
        let b = renewing(&previous, &renewed, &holder, t + ms(3000));
        assert_eq!(b.votes, std::slice::from_ref(&renewed));
        // n2's release voids n2's earlier vote (and nothing of n1's): a renewal of its next
        // epoch (granted after it began to ask) settles by itself.
        let mut holder = Holder::new(t, L);
        holder.release(None, "n2", epoch(b'2'), t + ms(400));
        let next = HeldVote {
            epoch: Some(epoch(b'2').next()),
            ..renewed
        };
        let b = renewing(&previous, &next, &holder, t + ms(1100));
        assert_eq!(b.votes, [next, previous.votes[0].clone()]);
    }

    #[test]
    fn a_holder_releases_only_when_it_cannot_answer_200() {
        let t0 = Instant::now();
        let e = epoch(b'2');
        let mut h = Holder::new(t0, L);
        let w = Window {
            from: t0 + ms(1000),
            until: t0 + ms(4000),
        };
        assert!(matches!(
            h.release(Some(w), "n2", e, t0 + ms(500)),
            Release::Refused(_)
        ));
        assert!(matches!(
            h.release(Some(w), "n2", e, t0 + ms(2000)),
            Release::Refused(_)
        ));
        let v2 = vote("n2", t0, 0, 3000);
        assert!(h.admits(&v2), "a refused release voids nothing");
        // The window was replaced at 2.5 s by a snapshot without one.
        h.retire(Some(w), t0 + ms(2500));
        assert_eq!(
            h.release(None, "n2", e, t0 + ms(3000)),
            Release::Released {
                last_200: t0 + ms(2500)
            }
        );
        assert!(!h.admits(&v2) && h.admits(&vote("n3", t0, 0, 3000)));
        // Applied again (a replay): nothing changes; a later epoch still counts.
        h.release(None, "n2", e, t0 + ms(3100));
        let next = HeldVote {
            epoch: Some(e.next()),
            ..v2.clone()
        };
        assert!(!h.admits(&v2) && h.admits(&next));
        // A window that expired by itself: released, last 200 at its end.
        let mut h = Holder::new(t0, L);
        assert_eq!(
            h.release(Some(w), "n2", e, t0 + ms(5000)),
            Release::Released {
                last_200: t0 + ms(4000)
            }
        );
        // Never a 200 since the start: an earlier process may have answered until then.
        let mut h = Holder::new(t0, L);
        assert_eq!(
            h.release(None, "n2", e, t0 + ms(100)),
            Release::Released { last_200: t0 }
        );
    }
}
