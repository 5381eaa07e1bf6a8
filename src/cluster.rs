//! `primgr cluster`: the operator's view of the whole cluster, like `repmgr cluster show`.
//!
//! Owns asking one daemon for the membership (the `members` of its `/status`), asking every
//! member's `/status` at once (through the bounded fan-out of [`crate::peers`]), and turning the answers into a table or a JSON document with the
//! real primary (the one node that answers 200) or a split-brain warning, and the exit status
//! ([`exit_code`]): 0 when exactly one node answers 200, 1 otherwise, 2 when not even the first
//! node could be asked. An unreachable node is a row with its error, never left out.
//!
//! Timeouts: learning the membership and asking the members are each bounded by the
//! `--timeout` given to [`gather`] (default [`DEFAULT_TIMEOUT`]), so the whole command takes at
//! most twice that.

use std::time::Duration;

use hyper::Uri;
use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Keys;
use crate::peers::{Answers, PeerClient, Signer, fan_out};
use crate::tls::ClientTls;
use crate::wire::{Status, StatusSiteVotes, VoteScope};
use hyper::Method;

/// Default `--url`: the daemon on this machine.
pub const DEFAULT_URL: &str = "http://127.0.0.1:5999";
/// Default `--timeout`: bound on each of the two rounds of requests.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Exit status when exactly one node answers 200.
pub const EXIT_OK: u8 = 0;
/// Exit status when no node, or more than one, answers 200.
pub const EXIT_NO_SINGLE_PRIMARY: u8 = 1;
/// Exit status when nothing could be reached, not even the node given with `--url`.
pub const EXIT_UNREACHABLE: u8 = 2;

/// One node as its daemon described itself in `/status` (or why it could not).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    /// Its `node_name` in repmgr.nodes.
    pub name: String,
    /// Its site (`location`), when known.
    pub site: Option<String>,
    /// The API address asked (`host:port`), when it has one.
    pub address: Option<String>,
    /// HTTP status of its `/status` (its health-check code), None when it gave no answer.
    pub code: Option<u16>,
    /// The state it reports: Primary, Standby, Down or Unknown.
    pub state: Option<String>,
    /// Whom its local metadata names as primary.
    pub primary: Option<String>,
    /// Votes it got from its electorate (its site, or the cluster), when it held a vote.
    pub votes: Option<u64>,
    /// Votes it needed (0 when no vote was held).
    pub votes_needed: Option<u64>,
    /// Its `vote_scope`: `site` or `cluster` (None when it gave no answer).
    pub vote_scope: Option<VoteScope>,
    /// In cluster scope, a candidate's votes by site (empty otherwise).
    pub votes_by_site: Vec<StatusSiteVotes>,
    /// Age of the poll result it serves, in milliseconds.
    pub snapshot_age_ms: Option<f64>,
    /// Why it is in its state, as it says.
    pub reason: Option<String>,
    /// Why an operator drained it (`primgr drain`), when it is drained.
    pub drained: Option<String>,
    /// A standby's synchronous state as it learned it from the primary (`sync`, `quorum`,
    /// `potential`, `async`, `not listed`, or `unknown`); None on other roles.
    pub sync: Option<String>,
    /// Why it could not be asked or its answer could not be read.
    pub error: Option<String>,
}

impl NodeReport {
    /// A node that gave no usable answer.
    pub fn failed(
        name: &str,
        site: Option<String>,
        address: Option<String>,
        error: String,
    ) -> Self {
        NodeReport {
            name: name.to_string(),
            site,
            address,
            code: None,
            state: None,
            primary: None,
            votes: None,
            votes_needed: None,
            vote_scope: None,
            votes_by_site: Vec::new(),
            snapshot_age_ms: None,
            reason: None,
            drained: None,
            sync: None,
            error: Some(error),
        }
    }

    /// Reads a `/status` answer of the node `name`; an answer that is not primgr's `/status`
    /// (or is another node's) keeps its code and carries an error.
    pub fn from_status(
        name: &str,
        site: Option<String>,
        address: Option<String>,
        code: u16,
        body: &[u8],
    ) -> Self {
        let Ok(status) = Status::read(code, body) else {
            let mut r = NodeReport::failed(
                name,
                site,
                address,
                format!("HTTP {code}: not a primgr /status answer"),
            );
            r.code = Some(code);
            return r;
        };
        let error = (status.node != name).then(|| {
            format!(
                "this address answers as node {:?}, not {name:?}",
                status.node
            )
        });
        NodeReport {
            name: name.to_string(),
            site: site.or(status.site),
            address,
            code: Some(code),
            state: Some(status.state),
            primary: status.primary,
            votes: Some(status.votes),
            votes_needed: Some(status.votes_needed),
            vote_scope: Some(status.vote_scope),
            votes_by_site: status.votes_by_site,
            snapshot_age_ms: status.snapshot_age_ms,
            reason: Some(status.reason).filter(|r| !r.is_empty()),
            drained: status.drained.map(|d| d.reason),
            sync: status
                .replication
                .map(|r| r.sync_state.unwrap_or_else(|| "unknown".into())),
            error,
        }
    }

    /// Whether it answers 200 (Primary), i.e. haproxy would send writes to it: only a
    /// well-formed `/status` of the node asked, saying Primary with code 200, counts.
    pub fn is_primary(&self) -> bool {
        self.code == Some(200) && self.state.as_deref() == Some("Primary") && self.error.is_none()
    }

    /// Whether it gave any HTTP answer.
    pub fn answered(&self) -> bool {
        self.code.is_some()
    }
}

/// Everything one run of `primgr cluster` learned.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterReport {
    /// The daemon asked for the membership.
    pub url: String,
    /// Why the membership could not be learned (nothing else was asked then).
    pub error: Option<String>,
    /// Remarks on how the membership was learned.
    pub notes: Vec<String>,
    /// Every member, in the order of repmgr.nodes.
    pub nodes: Vec<NodeReport>,
}

impl ClusterReport {
    /// The nodes answering 200.
    pub fn primaries(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.is_primary())
            .map(|n| n.name.as_str())
            .collect()
    }

    /// The nodes that gave no HTTP answer.
    pub fn unreachable(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| !n.answered())
            .map(|n| n.name.as_str())
            .collect()
    }

    /// The exit status of the command; see [`exit_code`].
    pub fn exit_code(&self) -> u8 {
        exit_code(self.error.is_some(), &self.nodes)
    }

    /// The `vote_scope` the nodes that answered report, each scope with its nodes: one entry
    /// when they agree.
    pub fn scopes(&self) -> Vec<(VoteScope, Vec<&str>)> {
        let mut out: Vec<(VoteScope, Vec<&str>)> = Vec::new();
        for n in &self.nodes {
            let Some(scope) = n.vote_scope.filter(|_| n.error.is_none()) else {
                continue;
            };
            match out.iter_mut().find(|(s, _)| *s == scope) {
                Some((_, names)) => names.push(&n.name),
                None => out.push((scope, vec![&n.name])),
            }
        }
        out
    }

    /// The machine-readable document printed by `--json`: the same facts as the table.
    pub fn to_json(&self) -> Value {
        let primaries = self.primaries();
        let scopes = self.scopes();
        json!({
            "vote_scope": match scopes.as_slice() {
                [(one, _)] => Some(one.name()),
                _ => None,
            },
            "mixed_vote_scopes": scopes.len() > 1,
            "url": self.url,
            "error": self.error,
            "notes": self.notes,
            "nodes": self.nodes,
            "primaries": primaries,
            "real_primary": match primaries.as_slice() { [one] => Some(*one), _ => None },
            "split_brain": primaries.len() > 1,
            "unreachable": self.unreachable(),
            "exit_code": self.exit_code(),
        })
    }

    /// The table and, under it, the real primary or what is wrong.
    pub fn render(&self) -> String {
        if let Some(e) = &self.error {
            return format!("cannot ask {} for the cluster's members: {e}\n", self.url);
        }
        let mut out = render_table(&self.nodes);
        out.push('\n');
        for note in &self.notes {
            out.push_str(&format!("Note: {note}\n"));
        }
        let scopes = self.scopes();
        if let [(scope, _)] = scopes.as_slice() {
            out.push_str(&format!("Vote scope: {scope}\n"));
        }
        match self.primaries().as_slice() {
            [one] => out.push_str(&format!("Real primary: {one}\n")),
            [] => out.push_str("NO PRIMARY: no node answers 200\n"),
            many => out.push_str(&format!(
                "SPLIT BRAIN: {} nodes answer 200 (Primary): {}\n",
                many.len(),
                many.join(", ")
            )),
        }
        for n in self.nodes.iter().filter(|n| !n.votes_by_site.is_empty()) {
            let sites: Vec<String> = n
                .votes_by_site
                .iter()
                .map(|s| format!("{} {}/{}", s.site, s.votes, s.members))
                .collect();
            out.push_str(&format!(
                "Votes of {} by site: {}\n",
                n.name,
                sites.join(", ")
            ));
        }
        if scopes.len() > 1 {
            let each: Vec<String> = scopes
                .iter()
                .map(|(scope, names)| format!("{scope} on {}", names.join(", ")))
                .collect();
            out.push_str(&format!(
                "Warning: the nodes do not share one vote_scope ({}): a voter refuses a \
                 candidate of the other scope, and a majority of one scope need not meet one of \
                 the other; set the same vote_scope on every node\n",
                each.join("; ")
            ));
        }
        for n in self.nodes.iter().filter(|n| n.code == Some(509)) {
            let electorate = match n.vote_scope {
                Some(VoteScope::Cluster) => "the cluster",
                _ => "its site",
            };
            out.push_str(&format!(
                "Warning: {} is Unknown (509): writable, but {electorate} does not confirm it; \
                 fence it or rejoin it (repmgr node rejoin)\n",
                n.name
            ));
        }
        let unreachable = self.unreachable();
        if !unreachable.is_empty() {
            out.push_str(&format!(
                "Warning: no answer from {}\n",
                unreachable.join(", ")
            ));
        }
        out
    }
}

/// The exit status: [`EXIT_UNREACHABLE`] when the membership could not be learned or no node
/// answered at all, [`EXIT_OK`] when exactly one node answers 200, else
/// [`EXIT_NO_SINGLE_PRIMARY`].
pub fn exit_code(membership_failed: bool, nodes: &[NodeReport]) -> u8 {
    if membership_failed || !nodes.iter().any(NodeReport::answered) {
        return EXIT_UNREACHABLE;
    }
    match nodes.iter().filter(|n| n.is_primary()).count() {
        1 => EXIT_OK,
        _ => EXIT_NO_SINGLE_PRIMARY,
    }
}

/// Column headers of the table.
const HEADERS: [&str; 10] = [
    "Node",
    "Site",
    "Address",
    "State",
    "Code",
    "Primary",
    "Sync",
    "Votes",
    "Age",
    "Error / reason",
];

/// The table, one row per node, columns separated by `|` (like `repmgr cluster show`).
///
/// Sync is a standby's synchronous state as the primary reports it; votes are "got/needed" when
/// the node held a vote; the last column shows why a node could not be asked, else why it is
/// neither Primary nor Standby.
pub fn render_table(nodes: &[NodeReport]) -> String {
    let dash = || "-".to_string();
    let rows: Vec<[String; 10]> = nodes
        .iter()
        .map(|n| {
            let votes = match (n.votes, n.votes_needed) {
                (Some(v), Some(needed)) if needed > 0 => format!("{v}/{needed}"),
                _ => dash(),
            };
            let detail = match (&n.error, n.state.as_deref()) {
                (Some(e), _) => e.clone(),
                (None, Some("Primary" | "Standby" | "Witness")) => String::new(),
                (None, _) => n.reason.clone().unwrap_or_default(),
            };
            [
                n.name.clone(),
                n.site.clone().unwrap_or_else(dash),
                n.address.clone().unwrap_or_else(dash),
                match (&n.state, &n.drained) {
                    (Some(s), Some(_)) => format!("{s} (drained)"),
                    (Some(s), None) => s.clone(),
                    (None, _) => "unreachable".into(),
                },
                n.code.map(|c| c.to_string()).unwrap_or_else(dash),
                n.primary.clone().unwrap_or_else(dash),
                n.sync.clone().unwrap_or_else(dash),
                votes,
                n.snapshot_age_ms
                    .map(|ms| format!("{:.1}s", ms / 1000.0))
                    .unwrap_or_else(dash),
                one_line(&detail),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect();
        format!("{}\n", text.join("|").trim_end())
    };
    let mut out = line(&HEADERS.map(String::from));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    out.push_str(&format!("{}\n", rule.join("+")));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

/// Control characters (newlines in database errors) would break the table.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Parses `--url`: `http://HOST:PORT`, `https://HOST:PORT`, or `HOST:PORT` (the scheme of the
/// requests follows `--tls-ca-file`).
pub fn parse_url(text: &str) -> Result<Uri, String> {
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    crate::config::parse_peer_url(&with_scheme)
}

/// Parses `--timeout`: a positive duration such as `2s` or `500ms`.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than zero".into()),
        Err(e) => Err(format!("{text:?} is not a duration ({e})")),
    }
}

/// `host:port` of an API address, as shown in the table.
fn authority(uri: &Uri) -> String {
    uri.authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| uri.to_string())
}

/// A member listed in the first node's `/status`.
struct Listed {
    name: String,
    site: Option<String>,
    address: Result<Uri, String>,
}

fn members_of(status: &Status) -> Vec<Listed> {
    status
        .members
        .iter()
        .filter(|m| !m.name.is_empty())
        .map(|m| {
            let address = match &m.address {
                Some(a) => a
                    .parse::<Uri>()
                    .map_err(|e| format!("its address {a:?} is not a URL: {e}")),
                None => Err(format!(
                    "no address: {}",
                    m.address_error.as_deref().unwrap_or("unknown")
                )),
            };
            Listed {
                name: m.name.clone(),
                site: Some(m.site.clone()).filter(|s| !s.is_empty()),
                address,
            }
        })
        .collect()
}

/// Asks the daemon at `url` for the members, then every member's `/status` at once; each round
/// is bounded by `timeout`.
pub async fn gather(url: &Uri, timeout: Duration) -> ClusterReport {
    gather_signed(url, timeout, None).await
}

/// [`gather`], each request signed with `keys` (`--peer-key-file`) and each answer verified:
/// an answer not signed with the cluster's key is reported as an error, not as a state.
pub async fn gather_signed(url: &Uri, timeout: Duration, keys: Option<&Keys>) -> ClusterReport {
    gather_with(url, timeout, keys, None).await
}

/// [`gather_signed`], over https when `tls` is given (`--tls-ca-file`): every daemon's
/// certificate must chain to that CA and name the address asked, or it gives no answer.
pub async fn gather_with(
    url: &Uri,
    timeout: Duration,
    keys: Option<&Keys>,
    tls: Option<&ClientTls>,
) -> ClusterReport {
    let answers = Answers::default();
    let signer = keys.map(|keys| Signer {
        keys,
        me: "primgr-cluster",
        cluster: None,
        addressed: false,
        answers: &answers,
    });
    let signer = signer.as_ref();
    let client = PeerClient::with_tls(None, tls);
    let mut report = ClusterReport {
        url: url.to_string(),
        error: None,
        notes: Vec::new(),
        nodes: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let first = match client
        .exchange(signer, Method::GET, url, None, "/status", deadline)
        .await
    {
        Ok((code, body)) => match Status::read(code, &body) {
            Ok(status) => status,
            Err(_) => {
                report.error = Some("its answer is not a primgr /status document".into());
                return report;
            }
        },
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let mut members = members_of(&first);
    if members.is_empty() {
        let name = first.node.clone();
        report.notes.push(format!(
            "{name} lists no members (its database has not been read yet); showing only {name}"
        ));
        members.push(Listed {
            name,
            site: first.site.clone(),
            address: Ok(url.clone()),
        });
    }
    let client = &client;
    report.nodes = fan_out(timeout, members, |m, deadline| async move {
        let uri = match m.address {
            Ok(uri) => uri,
            Err(why) => return NodeReport::failed(&m.name, m.site, None, why),
        };
        let address = Some(authority(&uri));
        let asked = client
            .exchange(
                signer,
                Method::GET,
                &uri,
                Some(&m.name),
                "/status",
                deadline,
            )
            .await;
        match asked {
            Ok((code, body)) => NodeReport::from_status(&m.name, m.site, address, code, &body),
            Err(e) => NodeReport::failed(&m.name, m.site, address, e.to_string()),
        }
    })
    .await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, code: u16, state: &str, primary: &str, votes: (u64, u64)) -> NodeReport {
        NodeReport {
            name: name.into(),
            site: Some("dc1".into()),
            address: Some(format!("127.0.0.1:{}", 5990 + name.len())),
            code: Some(code),
            state: Some(state.into()),
            primary: Some(primary.into()),
            votes: Some(votes.0),
            votes_needed: Some(votes.1),
            vote_scope: Some(VoteScope::Site),
            votes_by_site: Vec::new(),
            snapshot_age_ms: Some(312.4),
            reason: Some(format!("reason of {name}")),
            drained: None,
            sync: (state == "Standby").then(|| "async".into()),
            error: None,
        }
    }

    fn down(name: &str) -> NodeReport {
        NodeReport::failed(
            name,
            Some("dc2".into()),
            Some("127.0.0.9:5999".into()),
            "request failed: connection refused".into(),
        )
    }

    fn cells(table: &str, name: &str) -> Vec<String> {
        let row = table
            .lines()
            .find(|l| l.split('|').next().map(str::trim) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"));
        row.split('|').map(|c| c.trim().to_string()).collect()
    }

    #[test]
    fn exit_codes() {
        let p1 = node("node1", 200, "Primary", "node1", (3, 2));
        let p2 = node("node2", 200, "Primary", "node2", (2, 2));
        let s = node("node3", 202, "Standby", "node1", (0, 0));
        let u = node("node4", 509, "Unknown", "node4", (1, 2));
        assert_eq!(
            exit_code(false, &[p1.clone(), s.clone(), down("x")]),
            EXIT_OK
        );
        assert_eq!(
            exit_code(false, &[u.clone(), p2.clone(), s.clone()]),
            EXIT_OK
        );
        assert_eq!(
            exit_code(false, &[p1.clone(), p2.clone(), s.clone()]),
            EXIT_NO_SINGLE_PRIMARY
        );
        assert_eq!(
            exit_code(false, &[s.clone(), u.clone()]),
            EXIT_NO_SINGLE_PRIMARY
        );
        assert_eq!(exit_code(false, &[down("a"), down("b")]), EXIT_UNREACHABLE);
        assert_eq!(exit_code(false, &[]), EXIT_UNREACHABLE);
        assert_eq!(exit_code(true, &[p1]), EXIT_UNREACHABLE);
    }

    #[test]
    fn table_has_a_row_per_node_with_its_facts() {
        let nodes = vec![
            node("node1", 200, "Primary", "node1", (3, 2)),
            node("node2", 202, "Standby", "node1", (0, 0)),
            down("node3"),
        ];
        let table = render_table(&nodes);
        assert_eq!(table.lines().count(), 2 + nodes.len(), "{table}");
        let header: Vec<String> = table
            .lines()
            .next()
            .unwrap()
            .split('|')
            .map(|c| c.trim().into())
            .collect();
        assert_eq!(header, HEADERS.map(String::from));
        assert_eq!(
            cells(&table, "node1"),
            [
                "node1",
                "dc1",
                "127.0.0.1:5995",
                "Primary",
                "200",
                "node1",
                "-",
                "3/2",
                "0.3s",
                ""
            ]
        );
        assert_eq!(
            cells(&table, "node2"),
            [
                "node2",
                "dc1",
                "127.0.0.1:5995",
                "Standby",
                "202",
                "node1",
                "async",
                "-",
                "0.3s",
                ""
            ]
        );
        assert_eq!(
            cells(&table, "node3"),
            [
                "node3",
                "dc2",
                "127.0.0.9:5999",
                "unreachable",
                "-",
                "-",
                "-",
                "-",
                "-",
                "request failed: connection refused"
            ]
        );
        // Columns line up: every separator at the same offsets in every line.
        let bars = |l: &str| {
            l.match_indices(['|', '+'])
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        let lines: Vec<&str> = table.lines().collect();
        for l in &lines[1..] {
            assert_eq!(bars(l), bars(lines[0]), "{table}");
        }
    }

    #[test]
    fn down_and_unknown_nodes_show_their_reason() {
        let mut d = node("node1", 503, "Down", "node1", (0, 0));
        d.reason = Some("cannot connect to database:\nrefused".into());
        let u = node("node5", 509, "Unknown", "node5", (1, 2));
        let table = render_table(&[d, u]);
        assert_eq!(
            cells(&table, "node1")[9],
            "cannot connect to database: refused"
        );
        assert_eq!(cells(&table, "node5")[7], "1/2");
        assert_eq!(cells(&table, "node5")[9], "reason of node5");
    }

    fn report(nodes: Vec<NodeReport>) -> ClusterReport {
        ClusterReport {
            url: "http://127.0.0.1:5999/".into(),
            error: None,
            notes: vec![],
            nodes,
        }
    }

    #[test]
    fn summary_names_the_real_primary_or_the_split_brain() {
        let one = report(vec![
            node("node1", 509, "Unknown", "node1", (1, 2)),
            node("node2", 200, "Primary", "node2", (2, 2)),
            down("node4"),
        ]);
        let text = one.render();
        assert!(text.contains("Real primary: node2\n"), "{text}");
        assert!(text.contains("Warning: node1 is Unknown (509)"), "{text}");
        assert!(text.contains("Warning: no answer from node4"), "{text}");
        assert!(!text.contains("SPLIT BRAIN"), "{text}");
        let doc = one.to_json();
        assert_eq!(doc["real_primary"], "node2");
        assert_eq!(doc["exit_code"], 0);
        assert_eq!(doc["unreachable"], json!(["node4"]));
        assert_eq!(
            doc["nodes"][2]["error"],
            "request failed: connection refused"
        );
        assert_eq!(doc["nodes"][1]["votes"], 2);

        let two = report(vec![
            node("node1", 200, "Primary", "node1", (2, 2)),
            node("node2", 200, "Primary", "node2", (2, 2)),
        ]);
        let text = two.render();
        assert!(
            text.contains("SPLIT BRAIN: 2 nodes answer 200 (Primary): node1, node2"),
            "{text}"
        );
        assert!(!text.contains("Real primary"), "{text}");
        let doc = two.to_json();
        assert_eq!(
            (doc["split_brain"].clone(), doc["real_primary"].clone()),
            (json!(true), Value::Null)
        );
        assert_eq!(doc["exit_code"], 1);

        let none = report(vec![node("node2", 202, "Standby", "node1", (0, 0))]);
        assert!(none.render().contains("NO PRIMARY"));
        assert_eq!(none.exit_code(), 1);
    }

    /// Cluster scope: the scope is said once, a candidate's votes by site under the table
    /// (from its `/status`), and nodes that do not share one scope are a warning.
    #[test]
    fn the_vote_scope_and_the_votes_by_site_are_shown() {
        let body = json!({
            "node": "node3", "site": "dc2", "state": "Unknown", "code": 509,
            "primary": "node3", "votes": 2, "votes_needed": 3, "vote_scope": "cluster",
            "votes_by_site": [
                {"site": "dc1", "members": 2, "votes": 0, "voters": []},
                {"site": "dc2", "members": 2, "votes": 2, "voters": ["node3", "node4"]},
                {"site": "dc3", "members": 1, "votes": 0, "voters": []}
            ]
        });
        let node3 = NodeReport::from_status("node3", None, None, 509, body.to_string().as_bytes());
        assert_eq!(node3.vote_scope, Some(VoteScope::Cluster));
        let standby = json!({"node": "node4", "code": 202, "state": "Standby",
            "vote_scope": "cluster"});
        let node4 =
            NodeReport::from_status("node4", None, None, 202, standby.to_string().as_bytes());
        let r = report(vec![node3.clone(), node4, down("node5")]);
        let text = r.render();
        assert!(text.contains("Vote scope: cluster\n"), "{text}");
        assert!(
            text.contains("Votes of node3 by site: dc1 0/2, dc2 2/2, dc3 0/1\n"),
            "{text}"
        );
        assert!(text.contains("the cluster does not confirm it"), "{text}");
        assert!(!text.contains("do not share"), "{text}");
        let doc = r.to_json();
        assert_eq!(doc["vote_scope"], "cluster");
        assert_eq!(doc["mixed_vote_scopes"], false);
        assert_eq!(
            doc["nodes"][0]["votes_by_site"][1]["voters"],
            json!(["node3", "node4"])
        );
        // One node of site scope among them: said, with who is which.
        let site = json!({"node": "node1", "code": 200, "state": "Primary"});
        let node1 = NodeReport::from_status("node1", None, None, 200, site.to_string().as_bytes());
        assert_eq!(node1.vote_scope, Some(VoteScope::Site), "absent: site");
        let r = report(vec![node1, node3]);
        let text = r.render();
        assert!(
            text.contains(
                "Warning: the nodes do not share one vote_scope (site on node1; cluster on node3)"
            ),
            "{text}"
        );
        assert!(!text.contains("Vote scope:"), "{text}");
        assert_eq!(r.to_json()["mixed_vote_scopes"], true);
        assert_eq!(r.to_json()["vote_scope"], Value::Null);
    }

    #[test]
    fn status_answers_are_read_or_flagged() {
        let body = br#"{"node":"node2","site":"dc1","state":"Unknown","code":509,"primary":"node1",
            "votes":1,"votes_needed":2,"snapshot_age_ms":12.5,"reason":"only 1 of 3"}"#;
        let r = NodeReport::from_status("node2", None, None, 509, body);
        assert_eq!(
            (
                r.state.as_deref(),
                r.code,
                r.votes,
                r.votes_needed,
                r.site.as_deref(),
                r.error
            ),
            (
                Some("Unknown"),
                Some(509),
                Some(1),
                Some(2),
                Some("dc1"),
                None
            )
        );
        let r = NodeReport::from_status("node3", None, None, 509, body);
        assert!(r.error.unwrap().contains("answers as node \"node2\""));
        let r = NodeReport::from_status("node3", None, None, 404, br#"{"error":"not found"}"#);
        assert_eq!((r.code, r.state), (Some(404), None));
        assert!(r.error.unwrap().contains("not a primgr /status answer"));
    }

    /// Only a well-formed `/status` of the node asked, saying Primary with 200, is a primary:
    /// any other 200 (another program, another node's daemon, a body that disagrees with its
    /// status) is shown with its error and not counted.
    #[test]
    fn only_a_well_formed_status_of_the_node_asked_counts_as_a_primary() {
        let good = br#"{"node":"node1","state":"Primary","code":200,"votes":2,"votes_needed":2}"#;
        assert!(NodeReport::from_status("node1", None, None, 200, good).is_primary());
        for (name, body) in [
            // Another node's daemon behind this address.
            ("node2", &good[..]),
            // Not primgr at all.
            ("node1", br#"{"status":"ok"}"#),
            ("node1", b"<html>It works!</html>"),
            // No node name.
            ("node1", br#"{"state":"Primary","code":200}"#),
            // A body that disagrees with its status code.
            ("node1", br#"{"node":"node1","state":"Primary","code":509}"#),
            ("node1", br#"{"node":"node1","state":"Witness","code":200}"#),
        ] {
            let r = NodeReport::from_status(name, None, None, 200, body);
            assert!(
                !r.is_primary(),
                "{name} {body:?} counted as a primary: {r:?}"
            );
            assert!(
                r.error.is_some() || r.state.as_deref() != Some("Primary"),
                "{r:?}"
            );
        }
        let report = report(vec![
            NodeReport::from_status("node1", None, None, 200, good),
            NodeReport::from_status("node2", None, None, 200, good),
        ]);
        assert_eq!(report.primaries(), ["node1"]);
        assert_eq!(report.exit_code(), EXIT_OK);
    }

    #[test]
    fn urls_and_timeouts() {
        assert_eq!(
            parse_url("http://10.0.0.1:5999").unwrap().to_string(),
            "http://10.0.0.1:5999/"
        );
        assert_eq!(
            parse_url("db1:6000").unwrap().to_string(),
            "http://db1:6000/"
        );
        assert_eq!(
            parse_url("https://db1:5999").unwrap().to_string(),
            "https://db1:5999/"
        );
        assert!(parse_url("ftp://db1:5999").is_err());
        assert!(parse_url("http://").is_err());
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("soon").is_err());
    }

    #[test]
    fn members_come_from_status() {
        let body = json!({"node":"node1","code":202,"state":"Standby","members":[
            {"name":"node1","site":"dc1","address":"http://127.0.0.11:5999/"},
            {"name":"node2","site":"dc1","address":null,"address_error":"its conninfo names no network host"},
            {"site":"dc1","address":"http://127.0.0.13:5999/"},
        ]});
        let status = Status::read(202, body.to_string().as_bytes()).unwrap();
        let m = members_of(&status);
        assert_eq!(m.len(), 2, "a member without a name is left out");
        assert_eq!(
            m[0].address.as_ref().unwrap().to_string(),
            "http://127.0.0.11:5999/"
        );
        assert!(
            m[1].address
                .as_ref()
                .unwrap_err()
                .contains("no network host")
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_an_error_not_a_hang() {
        // Port 1 on loopback: nothing listens there.
        let url = parse_url("127.0.0.1:1").unwrap();
        let t0 = std::time::Instant::now();
        let r = gather(&url, Duration::from_secs(2)).await;
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert!(r.error.is_some(), "{r:?}");
        assert_eq!(r.exit_code(), EXIT_UNREACHABLE);
        assert!(
            r.render().contains("cannot ask http://127.0.0.1:1/"),
            "{}",
            r.render()
        );
    }
}
