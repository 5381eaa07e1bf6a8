//! The verdict: a pure function from observations and held votes to a state.
//!
//! Owns the rules of the seed, made safe: Down when the local database cannot be observed,
//! Witness for a repmgr witness (never a primary, never in a pool), Standby when in recovery,
//! Primary when not in recovery and a majority of its electorate holds unexpired, settled
//! votes for it ([`crate::vote`]), Unknown otherwise. A node counts its own vote only when its
//! own metadata names it as the active primary (the poller asks its own promise book then,
//! like any voter). No I/O and no clock here: `now` is an argument, so every rule is tested
//! table by table and the simulation drives the same code.
//!
//! ## The electorate ([`role`])
//! With `vote_scope = "site"` (the seed's rule) it is every row of `repmgr.nodes` whose
//! `location` is the candidate's; with `"cluster"`, every row, all sites together. Witnesses
//! vote; rows with `active = false` are members too. Any two majorities of one fixed
//! electorate share a voter, and a voter holds no two live promises, so two 200s never
//! overlap; leaving out the inactive rows would let the electorate shrink on one side of a
//! partition (repmgr marks the old primary inactive where it promotes a new one, and only
//! there), and two majorities of two different electorates need not share anyone. An inactive
//! node that is really gone costs a vote, as a stopped node does; `repmgr node unregister`
//! (or `repmgr standby unregister`) takes it out of the electorate on every node at once,
//! which is the operator's act of changing the membership.

use crate::db::{DbError, DbObservation, NodeRow};
use crate::vote::{Ballot, Window};
use crate::wire::VoteScope;

/// What a node answers to a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Primary,
    Standby,
    Down,
    Unknown,
    /// A repmgr witness: answers 503, never Primary, never 509, never in a read pool.
    Witness,
}

impl State {
    /// Every state, in the order of the seed (and the witness last).
    pub const ALL: [State; 5] = [
        State::Primary,
        State::Standby,
        State::Down,
        State::Unknown,
        State::Witness,
    ];

    /// The HTTP status of `/state` for this state (the seed's codes; a witness is 503).
    pub const fn code(self) -> u16 {
        match self {
            State::Primary => 200,
            State::Standby => 202,
            State::Down | State::Witness => 503,
            State::Unknown => 509,
        }
    }

    /// The name used in the JSON bodies.
    pub const fn name(self) -> &'static str {
        match self {
            State::Primary => "Primary",
            State::Standby => "Standby",
            State::Down => "Down",
            State::Unknown => "Unknown",
            State::Witness => "Witness",
        }
    }

    /// The state a `/state` answer describes, if status and body agree on one.
    pub fn from_answer(code: u16, name: &str) -> Option<State> {
        State::ALL
            .into_iter()
            .find(|s| s.code() == code && s.name() == name)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Primary means "may answer 200 within `window`"; outside it the node answers Unknown.
    pub state: State,
    /// Why, in words an operator can act on.
    pub reason: String,
    /// When a Primary may answer 200 (None for every other state).
    pub window: Option<Window>,
}

/// The majority of an electorate of `n` nodes: ⌊n/2⌋+1.
pub const fn majority(size: usize) -> usize {
    size / 2 + 1
}

/// `repmgr.nodes.type` of a witness.
pub const WITNESS: &str = "witness";

/// What a cycle must do, given the observation: who this node is, and whether it stands for
/// election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role<'a> {
    /// This node's row, when registered.
    pub own: Option<&'a NodeRow>,
    /// The rest of its electorate: its voters (active or not, witnesses included), the other
    /// nodes of its site in site scope, every other node in cluster scope.
    pub voters: Vec<&'a NodeRow>,
    /// Whether it asks for votes: observed, not in recovery, registered, not a witness.
    pub candidate: bool,
    /// The scope the electorate was built for.
    pub scope: VoteScope,
}

impl Role<'_> {
    /// The size of the electorate, this node included.
    pub fn electorate_size(&self) -> usize {
        self.voters.len() + 1
    }

    /// The electorate by site, in the order of the sites' names: each site and its members'
    /// names (this node included); empty when this node is not registered.
    pub fn sites(&self) -> Vec<Site> {
        let Some(own) = self.own else {
            return Vec::new();
        };
        let mut sites: Vec<Site> = Vec::new();
        for row in std::iter::once(own).chain(self.voters.iter().copied()) {
            let name = row.node_name.clone();
            match sites.iter_mut().find(|s| s.site == row.location) {
                Some(s) => s.members.push(name),
                None => sites.push(Site {
                    site: row.location.clone(),
                    members: vec![name],
                }),
            }
        }
        sites.sort_by(|a, b| a.site.cmp(&b.site));
        sites
    }
}

/// One site's part of an electorate: its name and its members' names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub site: String,
    pub members: Vec<String>,
}

/// One site's part of an electorate with the votes for a candidate: its members, and those of
/// them whose vote is among the votes counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteVotes {
    pub site: String,
    pub members: usize,
    /// The members holding a vote, in the order of the site's members.
    pub voters: Vec<String>,
}

impl std::fmt::Display for SiteVotes {
    /// `dc1 2/2`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.site, self.voters.len(), self.members)
    }
}

/// The votes of `voters` (names) counted site by site in `sites`; a name of no site counts
/// nowhere.
pub fn by_site<'v>(
    sites: &[Site],
    voters: impl Iterator<Item = &'v str> + Clone,
) -> Vec<SiteVotes> {
    sites
        .iter()
        .map(|s| SiteVotes {
            site: s.site.clone(),
            members: s.members.len(),
            voters: s
                .members
                .iter()
                .filter(|m| voters.clone().any(|v| v == m.as_str()))
                .cloned()
                .collect(),
        })
        .collect()
}

/// This node's role in the observed metadata, its electorate that of `scope`.
pub fn role<'a>(obs: &'a DbObservation, me: &str, scope: VoteScope) -> Role<'a> {
    let own = obs.nodes.iter().find(|n| n.node_name == me);
    let voters = match own {
        Some(own) => obs
            .nodes
            .iter()
            .filter(|n| n.node_name != me)
            .filter(|n| scope == VoteScope::Cluster || n.location == own.location)
            .collect(),
        None => Vec::new(),
    };
    let candidate = !obs.in_recovery && own.is_some_and(|o| o.node_type != WITNESS);
    Role {
        own,
        voters,
        candidate,
        scope,
    }
}

/// The verdict of a cycle at `now`, from the observation and the votes held (the ballot's
/// `needed` is ignored: the majority comes from the observed electorate of `scope`).
pub fn verdict(
    me: &str,
    scope: VoteScope,
    db: Result<&DbObservation, &DbError>,
    ballot: &Ballot,
    now: std::time::Instant,
) -> Verdict {
    let obs = match db {
        Err(e) => return plain(State::Down, e.to_string()),
        Ok(obs) => obs,
    };
    let role = role(obs, me, scope);
    if role.own.is_some_and(|o| o.node_type == WITNESS) {
        return plain(
            State::Witness,
            "a repmgr witness: it votes, but is never a primary and takes no reads".into(),
        );
    }
    if obs.in_recovery {
        return plain(State::Standby, "in recovery".into());
    }
    let Some(own) = role.own else {
        return plain(
            State::Unknown,
            format!("not in recovery, but node_name {me:?} is not in repmgr.nodes"),
        );
    };
    let size = role.electorate_size();
    let needed = majority(size);
    let counted = Ballot {
        votes: ballot
            .votes
            .iter()
            .filter(|v| v.voter == me || role.voters.iter().any(|r| r.node_name == v.voter))
            .cloned()
            .collect(),
        needed,
    };
    let live = counted.live(now);
    let named = match obs.named_primary() {
        Some(p) if p == me => String::new(),
        Some(p) => format!("; its own metadata names {p}"),
        None => "; its own metadata names no primary".into(),
    };
    let electorate = match scope {
        VoteScope::Site => format!("nodes of site {:?}", own.location),
        VoteScope::Cluster => {
            let live = counted.votes.iter().filter(|v| v.live(now));
            let sites: Vec<String> = by_site(&role.sites(), live.map(|v| v.voter.as_str()))
                .iter()
                .map(SiteVotes::to_string)
                .collect();
            format!("nodes of the cluster ({})", sites.join(", "))
        }
    };
    match counted.window(now) {
        Some(window) => Verdict {
            state: State::Primary,
            reason: format!(
                "not in recovery; {live} of {size} {electorate} hold a vote for {me}{named}"
            ),
            window: Some(window),
        },
        None if live >= needed => plain(
            State::Unknown,
            format!(
                "not in recovery; {live} of {size} {electorate} vote for {me}, but too few of \
                 those votes will settle before they expire{named}"
            ),
        ),
        None => plain(
            State::Unknown,
            format!(
                "not in recovery, but only {live} of {size} {electorate} hold a vote for {me} \
                 ({needed} needed){named}"
            ),
        ),
    }
}

fn plain(state: State, reason: String) -> Verdict {
    Verdict {
        state,
        reason,
        window: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::vote::HeldVote;

    fn node(id: i32, name: &str, location: &str) -> NodeRow {
        NodeRow {
            node_id: id,
            node_name: name.into(),
            node_type: if id == 1 { "primary" } else { "standby" }.into(),
            active: true,
            location: location.into(),
            conninfo: format!("host=127.0.0.{id}"),
        }
    }

    /// A primary "n1" in a site of `size` nodes, plus one node of another site.
    fn cluster(size: usize) -> DbObservation {
        let mut nodes: Vec<NodeRow> = (1..=size)
            .map(|i| node(i as i32, &format!("n{i}"), "dc1"))
            .collect();
        nodes.push(node(99, "far", "dc2"));
        DbObservation {
            in_recovery: false,
            nodes,
            wal: Default::default(),
        }
    }

    /// A vote of `voter` that counts from `t` for 3 s.
    fn vote(voter: &str, t: Instant) -> HeldVote {
        HeldVote {
            voter: voter.into(),
            epoch: Some(crate::auth::GrantEpoch::first(
                crate::auth::BootId::from_bytes([1; 16]),
            )),
            sent: t,
            valid_until: t + Duration::from_secs(3),
            settled_at: t,
        }
    }

    fn ballot(voters: &[&str], t: Instant) -> Ballot {
        Ballot {
            votes: voters.iter().map(|v| vote(v, t)).collect(),
            needed: 0,
        }
    }

    #[test]
    fn down_when_the_database_cannot_be_observed() {
        let t = Instant::now();
        for e in [
            DbError::Timeout(Duration::from_secs(2)),
            DbError::Connect("refused".into()),
            DbError::Query("boom".into()),
            DbError::NotRepmgr("relation \"repmgr.nodes\" does not exist".into()),
        ] {
            let v = verdict("n1", VoteScope::Site, Err(&e), &ballot(&["n1", "n2"], t), t);
            assert_eq!((v.state, v.state.code()), (State::Down, 503));
            assert_eq!(v.reason, e.to_string());
        }
    }

    #[test]
    fn standby_when_in_recovery_whatever_the_votes() {
        let t = Instant::now();
        let mut obs = cluster(3);
        obs.in_recovery = true;
        let v = verdict(
            "n1",
            VoteScope::Site,
            Ok(&obs),
            &ballot(&["n1", "n2", "n3"], t),
            t,
        );
        assert_eq!(
            (v.state, v.state.code(), v.window),
            (State::Standby, 202, None)
        );
        assert!(
            !role(&obs, "n1", VoteScope::Site).candidate,
            "a standby asks for no vote"
        );
    }

    #[test]
    fn unknown_when_own_row_is_missing() {
        let t = Instant::now();
        let v = verdict(
            "ghost",
            VoteScope::Site,
            Ok(&cluster(3)),
            &ballot(&["n2", "n3"], t),
            t,
        );
        assert_eq!((v.state, v.state.code()), (State::Unknown, 509));
        assert!(
            v.reason.contains("\"ghost\" is not in repmgr.nodes"),
            "{}",
            v.reason
        );
    }

    /// A witness (never in recovery) is never Primary, never 509, whatever votes it has, in a
    /// site of its own or a shared one.
    #[test]
    fn a_witness_is_a_witness() {
        let t = Instant::now();
        for (location, size) in [("dc3", 1), ("dc1", 4)] {
            let mut obs = cluster(3);
            obs.nodes.push(NodeRow {
                node_type: WITNESS.into(),
                ..node(5, "w", location)
            });
            let r = role(&obs, "w", VoteScope::Site);
            assert!(!r.candidate && r.electorate_size() == size);
            let v = verdict(
                "w",
                VoteScope::Site,
                Ok(&obs),
                &ballot(&["w", "n1", "n2", "n3"], t),
                t,
            );
            assert_eq!(
                (v.state, v.state.code(), v.window),
                (State::Witness, 503, None)
            );
        }
        // The witness is a voter of the primary's site when it shares it.
        let mut obs = cluster(3);
        obs.nodes.push(NodeRow {
            node_type: WITNESS.into(),
            ..node(5, "w", "dc1")
        });
        assert_eq!(role(&obs, "n1", VoteScope::Site).electorate_size(), 4);
    }

    /// Every site size from 1 to 5 with every number of votes held (its own among them or
    /// not): Primary exactly when a majority of the site holds a vote.
    #[test]
    fn majority_of_own_site_for_every_size_and_vote_count() {
        let t = Instant::now();
        for (size, needed) in [(1usize, 1usize), (2, 2), (3, 2), (4, 3), (5, 3)] {
            let obs = cluster(size);
            let names: Vec<String> = (1..=size).map(|i| format!("n{i}")).collect();
            for mask in 0u32..(1 << size) {
                let voters: Vec<&str> = (0..size)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| names[i].as_str())
                    .collect();
                let v = verdict("n1", VoteScope::Site, Ok(&obs), &ballot(&voters, t), t);
                let want = if voters.len() >= needed {
                    State::Primary
                } else {
                    State::Unknown
                };
                assert_eq!(v.state, want, "size {size}, votes {voters:?}: {}", v.reason);
                assert_eq!(v.window.is_some(), want == State::Primary);
            }
        }
    }

    #[test]
    fn votes_from_outside_the_site_or_strangers_do_not_count() {
        let t = Instant::now();
        let obs = cluster(3);
        let v = verdict(
            "n1",
            VoteScope::Site,
            Ok(&obs),
            &ballot(&["far", "stranger", "n2"], t),
            t,
        );
        assert_eq!(v.state, State::Unknown, "{}", v.reason);
        let v = verdict(
            "n1",
            VoteScope::Site,
            Ok(&obs),
            &ballot(&["n2", "n3"], t),
            t,
        );
        assert_eq!(v.state, State::Primary, "{}", v.reason);
    }

    #[test]
    fn the_window_comes_from_the_votes() {
        let t = Instant::now();
        let obs = cluster(3);
        let mut b = ballot(&["n1", "n2"], t);
        b.votes[1].settled_at = t + Duration::from_secs(1);
        b.votes[1].valid_until = t + Duration::from_secs(2);
        let v = verdict("n1", VoteScope::Site, Ok(&obs), &b, t);
        assert_eq!(
            v.window,
            Some(Window {
                from: t + Duration::from_secs(1),
                until: t + Duration::from_secs(2)
            })
        );
        // Enough votes, but one settles only after the other expired: no window.
        b.votes[1].settled_at = t + Duration::from_secs(3);
        b.votes[1].valid_until = t + Duration::from_secs(4);
        let v = verdict("n1", VoteScope::Site, Ok(&obs), &b, t);
        assert_eq!((v.state, v.window), (State::Unknown, None));
        assert!(v.reason.contains("settle"), "{}", v.reason);
    }

    #[test]
    fn a_node_alone_in_its_site_needs_its_own_vote() {
        let t = Instant::now();
        let obs = cluster(1);
        assert_eq!(
            verdict("n1", VoteScope::Site, Ok(&obs), &ballot(&["n1"], t), t).state,
            State::Primary
        );
        // Promoted outside repmgr: its metadata names another node, so it holds no own vote.
        let v = verdict("n1", VoteScope::Site, Ok(&obs), &ballot(&[], t), t);
        assert_eq!(v.state, State::Unknown);
        assert!(v.reason.contains("only 0 of 1"), "{}", v.reason);
    }

    /// Sites of the given sizes (`dc1` first, the candidate `n1` in it), `witness` as the last
    /// node of the last site when set, every node named `n<i>`.
    fn sites(sizes: &[usize], witness: bool) -> DbObservation {
        let mut nodes = Vec::new();
        for (s, &size) in sizes.iter().enumerate() {
            for _ in 0..size {
                let i = nodes.len() + 1;
                nodes.push(node(i as i32, &format!("n{i}"), &format!("dc{}", s + 1)));
            }
        }
        if witness {
            nodes.last_mut().expect("a node").node_type = WITNESS.into();
        }
        DbObservation {
            in_recovery: false,
            nodes,
            wal: Default::default(),
        }
    }

    /// Cluster scope, table by table: the topologies of the issue (2 + 2 and a witness in a
    /// third site, 3 + 2) and others, every subset of votes (the candidate's own among them or
    /// not): Primary exactly when a majority of every node of the cluster holds a vote,
    /// whatever the sites; a majority of its own site alone is never enough (it is in site
    /// scope, checked on the same subsets).
    #[test]
    fn cluster_scope_needs_a_majority_of_the_whole_cluster() {
        let t = Instant::now();
        let mut cases = 0;
        let mut site_only = 0;
        for (sizes, witness) in [
            (&[2usize, 2, 1][..], true),
            (&[3, 2], false),
            (&[2, 2], false),
            (&[1, 1, 1], false),
            (&[3, 3, 1], true),
            (&[1], false),
        ] {
            let obs = sites(sizes, witness);
            let total: usize = sizes.iter().sum();
            let needed = majority(total);
            let names: Vec<String> = (1..=total).map(|i| format!("n{i}")).collect();
            let own_site = sizes[0];
            let role_c = role(&obs, "n1", VoteScope::Cluster);
            assert_eq!(role_c.electorate_size(), total, "{sizes:?}");
            assert_eq!(
                role(&obs, "n1", VoteScope::Site).electorate_size(),
                own_site
            );
            for mask in 0u32..(1 << total) {
                let voters: Vec<&str> = (0..total)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| names[i].as_str())
                    .collect();
                let b = ballot(&voters, t);
                let v = verdict("n1", VoteScope::Cluster, Ok(&obs), &b, t);
                let want = if voters.len() >= needed {
                    State::Primary
                } else {
                    State::Unknown
                };
                assert_eq!(v.state, want, "{sizes:?}, votes {voters:?}: {}", v.reason);
                assert_eq!(v.window.is_some(), want == State::Primary);
                assert!(v.reason.contains("nodes of the cluster ("), "{}", v.reason);
                let in_site = (0..own_site).filter(|i| mask & (1 << i) != 0).count();
                let site = verdict("n1", VoteScope::Site, Ok(&obs), &b, t);
                assert_eq!(site.state == State::Primary, in_site >= majority(own_site));
                if site.state == State::Primary && want != State::Primary {
                    site_only += 1;
                }
                cases += 1;
            }
        }
        assert!(
            site_only > 0,
            "the table has site majorities that are no cluster majority"
        );
        println!(
            "{cases} cluster-scope cases; {site_only} of them a site majority that is no \
             majority of the cluster (Unknown)"
        );
    }

    /// The reason says the scope's electorate and the votes by site; rows with
    /// `active = false` are members (the electorate does not shrink on one side of a cut);
    /// a stranger's vote does not count.
    #[test]
    fn cluster_scope_counts_inactive_members_and_says_the_votes_by_site() {
        let t = Instant::now();
        let mut obs = sites(&[2, 2, 1], true);
        let v = verdict(
            "n1",
            VoteScope::Cluster,
            Ok(&obs),
            &ballot(&["n1", "n2", "n5"], t),
            t,
        );
        assert_eq!(v.state, State::Primary);
        assert_eq!(
            v.reason,
            "not in recovery; 3 of 5 nodes of the cluster (dc1 2/2, dc2 0/2, dc3 1/1) hold a \
             vote for n1"
        );
        // dc2 promoted n3 and marked n1 inactive there: n3's electorate is still all five.
        obs.nodes[0].active = false;
        let r = role(&obs, "n3", VoteScope::Cluster);
        assert_eq!((r.electorate_size(), r.candidate), (5, true));
        let v = verdict(
            "n3",
            VoteScope::Cluster,
            Ok(&obs),
            &ballot(&["n3", "n4"], t),
            t,
        );
        assert_eq!(v.state, State::Unknown, "{}", v.reason);
        assert!(v.reason.contains("only 2 of 5") && v.reason.contains("(3 needed)"));
        let v = verdict(
            "n3",
            VoteScope::Cluster,
            Ok(&obs),
            &ballot(&["n3", "n4", "stranger", "far"], t),
            t,
        );
        assert_eq!(
            v.state,
            State::Unknown,
            "strangers do not count: {}",
            v.reason
        );
        let v = verdict(
            "n3",
            VoteScope::Cluster,
            Ok(&obs),
            &ballot(&["n3", "n4", "n5"], t),
            t,
        );
        assert_eq!(v.state, State::Primary, "{}", v.reason);
        // A witness is never a candidate, in either scope.
        let r = role(&obs, "n5", VoteScope::Cluster);
        assert_eq!((r.electorate_size(), r.candidate), (5, false));
        let v = verdict(
            "n5",
            VoteScope::Cluster,
            Ok(&obs),
            &ballot(&["n1", "n2", "n5"], t),
            t,
        );
        assert_eq!(v.state, State::Witness);
        // By site, in the order of the sites' names.
        let sites = role(&obs, "n4", VoteScope::Cluster).sites();
        let by = by_site(&sites, ["n1", "n4", "x"].into_iter());
        let shown: Vec<String> = by.iter().map(SiteVotes::to_string).collect();
        assert_eq!(shown, ["dc1 1/2", "dc2 1/2", "dc3 0/1"]);
        assert_eq!(by[1].voters, ["n4"]);
        assert!(role(&obs, "ghost", VoteScope::Cluster).sites().is_empty());
    }

    #[test]
    fn states_round_trip_through_answers() {
        for s in State::ALL {
            assert_eq!(State::from_answer(s.code(), s.name()), Some(s));
        }
        assert_eq!(State::from_answer(200, "Standby"), None);
        assert_eq!(State::from_answer(500, "Primary"), None);
        assert_eq!(State::from_answer(200, "Witness"), None);
    }
}
