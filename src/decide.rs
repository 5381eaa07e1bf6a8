//! The verdict: a pure function from observations to a state.
//!
//! Owns the rules of the seed: Down when the local database cannot be observed, Standby when it
//! is in recovery, Primary when it is not in recovery and a majority of its own site (itself
//! included) names it as primary, Unknown otherwise. No I/O happens here, so every rule is
//! tested table by table.

use std::collections::BTreeSet;

use crate::db::{DbError, DbObservation, NodeRow};

/// What a node answers to a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Primary,
    Standby,
    Down,
    Unknown,
}

impl State {
    /// The HTTP status of `/state` for this state (the seed's codes).
    pub const fn code(self) -> u16 {
        match self {
            State::Primary => 200,
            State::Standby => 202,
            State::Down => 503,
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
        }
    }

    /// The state a `/state` answer describes, if status and body agree on one.
    pub fn from_answer(code: u16, name: &str) -> Option<State> {
        [State::Primary, State::Standby, State::Down, State::Unknown]
            .into_iter()
            .find(|s| s.code() == code && s.name() == name)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a voter said when asked whom its local metadata names as primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAnswer {
    /// It named this node.
    Named(String),
    /// It answered, but named nobody (its database is down, or its metadata has no primary).
    NoPrimary(String),
    /// It could not be asked or its answer made no sense.
    Failed(String),
}

impl PeerAnswer {
    /// The node named, if any.
    pub fn named(&self) -> Option<&str> {
        match self {
            PeerAnswer::Named(n) => Some(n),
            _ => None,
        }
    }
}

/// The outcome of one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub state: State,
    /// Why, in words an operator can act on.
    pub reason: String,
    /// Votes for this node, itself included (0 when no vote was held).
    pub votes: usize,
    /// Votes needed for a majority of the site (0 when no vote was held).
    pub needed: usize,
}

/// The majority of a site of `n` nodes: ⌊n/2⌋+1.
pub const fn majority(site_size: usize) -> usize {
    site_size / 2 + 1
}

/// This node's row and the other nodes of its site (its voters), when a vote is needed: the
/// database is observed, not in recovery, and this node is registered.
pub fn voters<'a>(obs: &'a DbObservation, me: &str) -> Option<(&'a NodeRow, Vec<&'a NodeRow>)> {
    if obs.in_recovery {
        return None;
    }
    let own = obs.nodes.iter().find(|n| n.node_name == me)?;
    let others = obs
        .nodes
        .iter()
        .filter(|n| n.location == own.location && n.node_name != me)
        .collect();
    Some((own, others))
}

/// The verdict of a cycle.
///
/// `answers` are the voters' answers by voter name; answers from nodes that are not voters of
/// this node's site are ignored, and each voter counts at most once.
pub fn verdict(
    me: &str,
    db: Result<&DbObservation, &DbError>,
    answers: &[(String, PeerAnswer)],
) -> Verdict {
    let obs = match db {
        Err(e) => return no_vote(State::Down, e.to_string()),
        Ok(obs) => obs,
    };
    if obs.in_recovery {
        return no_vote(State::Standby, "in recovery".into());
    }
    let Some((own, others)) = voters(obs, me) else {
        return no_vote(
            State::Unknown,
            format!("not in recovery, but node_name {me:?} is not in repmgr.nodes"),
        );
    };
    let site = &own.location;
    let size = others.len() + 1;
    let needed = majority(size);
    let voter_names: BTreeSet<&str> = others.iter().map(|n| n.node_name.as_str()).collect();
    let mut counted = BTreeSet::new();
    for (voter, answer) in answers {
        if voter_names.contains(voter.as_str()) && answer.named() == Some(me) {
            counted.insert(voter.as_str());
        }
    }
    let votes = counted.len() + 1;
    if votes >= needed {
        Verdict {
            state: State::Primary,
            reason: format!("not in recovery; {votes} of {size} nodes of site {site:?} name {me}"),
            votes,
            needed,
        }
    } else {
        Verdict {
            state: State::Unknown,
            reason: format!(
                "not in recovery, but only {votes} of {size} nodes of site {site:?} name {me} \
                 ({needed} needed)"
            ),
            votes,
            needed,
        }
    }
}

fn no_vote(state: State, reason: String) -> Verdict {
    Verdict {
        state,
        reason,
        votes: 0,
        needed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    fn answers(size: usize, yes: usize, no: PeerAnswer) -> Vec<(String, PeerAnswer)> {
        (2..=size)
            .map(|i| {
                let a = if i - 2 < yes {
                    PeerAnswer::Named("n1".into())
                } else {
                    no.clone()
                };
                (format!("n{i}"), a)
            })
            .collect()
    }

    #[test]
    fn down_when_the_database_cannot_be_observed() {
        for e in [
            DbError::Timeout(std::time::Duration::from_secs(2)),
            DbError::Connect("refused".into()),
            DbError::Query("boom".into()),
            DbError::NotRepmgr("relation \"repmgr.nodes\" does not exist".into()),
        ] {
            let v = verdict("n1", Err(&e), &[]);
            assert_eq!(v.state, State::Down);
            assert_eq!(v.state.code(), 503);
            assert_eq!(v.reason, e.to_string());
        }
    }

    #[test]
    fn standby_when_in_recovery_whatever_the_votes() {
        let mut obs = cluster(3);
        obs.in_recovery = true;
        let v = verdict(
            "n1",
            Ok(&obs),
            &answers(3, 2, PeerAnswer::Failed("x".into())),
        );
        assert_eq!((v.state, v.state.code()), (State::Standby, 202));
        assert!(voters(&obs, "n1").is_none(), "a standby holds no vote");
    }

    #[test]
    fn unknown_when_own_row_is_missing() {
        let obs = cluster(3);
        let v = verdict("ghost", Ok(&obs), &[]);
        assert_eq!((v.state, v.state.code()), (State::Unknown, 509));
        assert!(
            v.reason.contains("\"ghost\" is not in repmgr.nodes"),
            "{}",
            v.reason
        );
    }

    /// Every site size from 1 to 5 with every number of confirming voters, and for the other
    /// voters every kind of non-vote: another name, no primary, an error.
    #[test]
    fn majority_of_own_site_for_every_size_and_vote_count() {
        let non_votes = [
            PeerAnswer::Named("n2".into()),
            PeerAnswer::NoPrimary("database down".into()),
            PeerAnswer::Failed("timed out".into()),
        ];
        for (size, needed) in [(1usize, 1usize), (2, 2), (3, 2), (4, 3), (5, 3)] {
            for yes in 0..size {
                for no in &non_votes {
                    let obs = cluster(size);
                    let v = verdict("n1", Ok(&obs), &answers(size, yes, no.clone()));
                    let votes = yes + 1;
                    let want = if votes >= needed {
                        State::Primary
                    } else {
                        State::Unknown
                    };
                    assert_eq!(
                        (v.state, v.votes, v.needed),
                        (want, votes, needed),
                        "size {size}, {yes} yes, others {no:?}: {}",
                        v.reason
                    );
                }
            }
        }
    }

    #[test]
    fn the_split_brain_table() {
        // Old primary n1 came back read-write; its site names n2.
        let obs = cluster(3);
        let site_names_n2 = vec![
            ("n2".to_string(), PeerAnswer::Named("n2".into())),
            ("n3".to_string(), PeerAnswer::Named("n2".into())),
        ];
        assert_eq!(
            verdict("n1", Ok(&obs), &site_names_n2).state,
            State::Unknown
        );
        // n2 with n1 (stale, names itself) and n3 (names n2): 2 of 3.
        let answers_for_n2 = vec![
            ("n1".to_string(), PeerAnswer::Named("n1".into())),
            ("n3".to_string(), PeerAnswer::Named("n2".into())),
        ];
        assert_eq!(
            verdict("n2", Ok(&obs), &answers_for_n2).state,
            State::Primary
        );
    }

    #[test]
    fn answers_from_outside_the_site_or_twice_do_not_count() {
        let obs = cluster(3);
        let stuffed = vec![
            ("far".to_string(), PeerAnswer::Named("n1".into())),
            ("n2".to_string(), PeerAnswer::Named("n1".into())),
            ("n2".to_string(), PeerAnswer::Named("n1".into())),
            ("stranger".to_string(), PeerAnswer::Named("n1".into())),
        ];
        let v = verdict("n1", Ok(&obs), &stuffed);
        assert_eq!((v.votes, v.needed, v.state), (2, 2, State::Primary));
        let only_outsiders = &stuffed[..1];
        assert_eq!(
            verdict("n1", Ok(&obs), only_outsiders).state,
            State::Unknown
        );
    }

    #[test]
    fn inactive_rows_of_the_site_still_count_as_voters() {
        let mut obs = cluster(3);
        obs.nodes[1].active = false;
        let (_, others) = voters(&obs, "n1").unwrap();
        assert_eq!(others.len(), 2);
    }

    #[test]
    fn a_primary_alone_in_its_site_is_primary() {
        let obs = cluster(1);
        let v = verdict("n1", Ok(&obs), &[]);
        assert_eq!((v.state, v.votes, v.needed), (State::Primary, 1, 1));
    }

    #[test]
    fn states_round_trip_through_answers() {
        for s in [State::Primary, State::Standby, State::Down, State::Unknown] {
            assert_eq!(State::from_answer(s.code(), s.name()), Some(s));
        }
        assert_eq!(State::from_answer(200, "Standby"), None);
        assert_eq!(State::from_answer(500, "Primary"), None);
    }
}
