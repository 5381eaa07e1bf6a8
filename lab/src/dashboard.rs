//! What the demo (`primgr-lab up`) shows: a status print built from independent [`Section`]s
//! (the PostgreSQL nodes, the primgr daemons, haproxy's ports and where new connections through
//! them land, how to reach things). Further parts of the demo add their own: write an
//! `async fn` returning a [`Section`] and add it to the list the binary collects before calling
//! [`render`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::haproxy::{Haproxy, READ, STATS, WRITE};
use crate::sql::psql_over_tcp;
use crate::table::Table;
use crate::{Lab, http, join_all};

/// How long one `psql` probe through a listener may take (connect timeout 2 s inside).
const T_PROBE: Duration = Duration::from_secs(4);

/// One block of the status print: a titled table plus free-form lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// Title line.
    pub title: String,
    /// Column headers (may be empty for a notes-only section).
    pub header: Vec<String>,
    /// Table rows (each as long as `header`).
    pub rows: Vec<Vec<String>>,
    /// Lines printed after the table.
    pub notes: Vec<String>,
}

impl Section {
    /// An empty section with a title and column headers.
    pub fn new(title: impl Into<String>, header: &[&str]) -> Self {
        Section {
            title: title.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// Render sections as aligned text tables ([`Table`]) followed by their notes.
pub fn render(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections {
        out.push_str(&format!("== {} ==\n", s.title));
        if !s.header.is_empty() {
            let mut t = Table::new(&s.header);
            for r in &s.rows {
                t.row(r.clone());
            }
            out.push_str(&t.render());
        }
        for n in &s.notes {
            out.push_str(n);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// Shorten a body to one line of at most `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        s.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    } else {
        s
    }
}

/// PostgreSQL view of every node: process state, `pg_is_in_recovery()`, WAL receiver status and
/// the primary named by the node's own `repmgr.nodes`.
pub async fn nodes_section(lab: &Lab) -> Section {
    let mut sec = Section::new(
        "PostgreSQL nodes",
        &[
            "node",
            "address",
            "location",
            "process",
            "role",
            "wal receiver",
            "metadata primary",
        ],
    );
    let names = lab.node_names();
    let rows = join_all(names.iter().map(|n| node_row(lab, n)).collect()).await;
    sec.rows = rows;
    sec
}

async fn node_row(lab: &Lab, node: &str) -> Vec<String> {
    let process = if !lab.is_running(node) {
        "stopped"
    } else if lab.is_frozen(node) {
        "FROZEN"
    } else {
        "running"
    };
    let (mut role, mut recv, mut meta) = ("-".to_string(), "-".to_string(), "-".to_string());
    if process == "running" {
        let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' \
                   WHEN EXISTS (SELECT 1 FROM repmgr.nodes WHERE type = 'witness' \
                   AND node_name = current_setting('cluster_name')) THEN 'witness' \
                   ELSE 'primary (rw)' END, \
                   coalesce((SELECT status || ' from ' || coalesce(sender_host, '?') \
                             FROM pg_stat_wal_receiver), '-'), \
                   coalesce((SELECT string_agg(node_name, ',' ORDER BY node_id) FROM repmgr.nodes \
                             WHERE type = 'primary' AND active), '-')";
        match lab.psql_timeout(node, sql, Duration::from_secs(2)).await {
            Ok(out) => {
                let f: Vec<&str> = out.split('|').collect();
                role = f.first().unwrap_or(&"?").to_string();
                recv = f.get(1).unwrap_or(&"?").to_string();
                meta = f.get(2).unwrap_or(&"?").to_string();
            }
            Err(e) => {
                role = format!(
                    "error: {}",
                    one_line(format!("{e:#}").lines().next().unwrap_or(""), 40)
                )
            }
        }
    }
    vec![
        node.to_string(),
        lab.addr(node).to_string(),
        lab.location(node).unwrap_or_default(),
        process.to_string(),
        role,
        recv,
        meta,
    ]
}

/// Each daemon's `/state` (status code + body), `/primary` and `/realPrimary`, 1 s timeout each;
/// `running` says which daemons still run (by node name).
pub async fn daemons_section(lab: &Lab, running: &BTreeMap<String, bool>) -> Section {
    let mut sec = Section::new(
        "primgr daemons",
        &["node", "daemon", "/state", "/primary", "/realPrimary"],
    );
    let names = lab.node_names();
    sec.rows = join_all(
        names
            .iter()
            .map(|n| daemon_row(lab, n, running.get(n).copied().unwrap_or(false)))
            .collect(),
    )
    .await;
    sec.notes
        .push("/state: 200 Primary, 202 Standby, 503 Down, 509 Unknown".to_string());
    sec
}

async fn daemon_row(lab: &Lab, node: &str, running: bool) -> Vec<String> {
    let addr = lab.daemon_addr(node);
    let t = Duration::from_secs(1);
    let show = |r: anyhow::Result<http::HttpResponse>| match r {
        Ok(r) => format!("{} {}", r.status, one_line(&r.body, 40)),
        Err(e) => one_line(&format!("ERR {}", root_cause(&e)), 40),
    };
    let (state, primary, real) = tokio::join!(
        http::get(addr, "/state", t),
        http::get(addr, "/primary", t),
        http::get(addr, "/realPrimary", t),
    );
    let running = if running { "up" } else { "not running" };
    vec![
        node.to_string(),
        running.to_string(),
        show(state),
        show(primary),
        show(real),
    ]
}

fn root_cause(e: &anyhow::Error) -> String {
    e.root_cause().to_string()
}

/// How to reach things from a shell.
pub fn access_section(lab: &Lab, with_daemons: bool) -> Section {
    let mut sec = Section::new("how to reach things", &[]);
    for n in lab.node_names() {
        let a = lab.addr(&n);
        let mut line = format!("{n}: psql -h {a} -U repmgr repmgr");
        if with_daemons {
            line.push_str(&format!("   |   curl {}/state", lab.daemon_addr(&n)));
        }
        sec.notes.push(line);
    }
    sec.notes.push(format!(
        "lab dir {} (node logs: <node>/postgres.log, daemon logs: daemon-<node>.log); \
         repmgr: runuser -u postgres -- {}/repmgr -f {}/node1/repmgr.conf cluster show",
        lab.dir().display(),
        crate::PG_BIN,
        lab.dir().display()
    ));
    sec
}

/// Where one new connection through a listener landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Landing {
    /// `inet_server_addr()` of the session.
    pub server_addr: String,
    /// The lab node with that address, if any.
    pub node: Option<String>,
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
}

/// Opens one new session through `addr` with `psql` (as user `repmgr`, database `repmgr`,
/// connect timeout 2 s, whole run bounded by 4 s) and asks where it landed.
pub async fn probe(lab: &Lab, addr: SocketAddr) -> Result<Landing> {
    let out = psql_over_tcp(
        addr,
        "primgr-lab-probe",
        "SELECT host(inet_server_addr()), pg_is_in_recovery()",
        T_PROBE,
    )
    .await?;
    let (server_addr, rec) = out
        .trim()
        .split_once('|')
        .ok_or_else(|| anyhow!("unexpected psql output {out:?}"))?;
    let node = lab
        .node_names()
        .into_iter()
        .find(|n| lab.addr(n).to_string() == server_addr);
    Ok(Landing {
        server_addr: server_addr.to_string(),
        node,
        in_recovery: rec == "t",
    })
}

fn show_landing(r: &Result<Landing>) -> String {
    match r {
        Ok(l) => format!(
            "{} ({})",
            l.node.as_deref().unwrap_or(&l.server_addr),
            if l.in_recovery {
                "standby"
            } else {
                "read-write"
            }
        ),
        Err(e) => format!("no server: {}", one_line(&e.root_cause().to_string(), 50)),
    }
}

/// The demo's haproxy block: for the write and the read port, haproxy's UP servers and where
/// new connections land (one probe through the write port, three through the read port).
pub async fn haproxy_section(lab: &Lab, hp: &Haproxy) -> Section {
    let mut sec = Section::new(
        format!("haproxy (contrib/haproxy.cfg, pid {})", hp.pid()),
        &["port", "address", "haproxy UP", "new connections land on"],
    );
    let stats = hp.show_stat().await;
    for (name, probes) in [(WRITE, 1), (READ, 3)] {
        let Ok(addr) = hp.listener(name) else {
            continue;
        };
        let up = match &stats {
            Ok(rows) => {
                let up: Vec<&str> = rows
                    .iter()
                    .filter(|s| s.proxy == name && s.is_server() && s.is_up())
                    .map(|s| s.server.as_str())
                    .collect();
                if up.is_empty() {
                    "none".to_string()
                } else {
                    up.join(",")
                }
            }
            Err(e) => format!("? {}", one_line(&e.to_string(), 30)),
        };
        let mut landed = Vec::new();
        for _ in 0..probes {
            let l = show_landing(&probe(lab, addr).await);
            if !landed.contains(&l) {
                landed.push(l);
            }
        }
        sec.rows.push(vec![
            name.to_string(),
            addr.to_string(),
            up,
            landed.join(", "),
        ]);
    }
    for (name, what) in [(WRITE, "writes"), (READ, "reads")] {
        if let Ok(a) = hp.listener(name) {
            sec.notes.push(format!(
                "{what}: psql -h {} -p {} -U repmgr repmgr",
                a.ip(),
                a.port()
            ));
        }
    }
    if let Ok(a) = hp.listener(STATS) {
        sec.notes
            .push(format!("stats: curl 'http://{a}/stats;csv'"));
    }
    sec.notes.push(format!(
        "echo 'show stat' | socat stdio unix-connect:{}   (config {}, log {})",
        hp.stats_socket().display(),
        hp.config_path().display(),
        hp.log_path().display()
    ));
    sec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned() {
        let mut s = Section::new("t", &["a", "bb"]);
        s.rows.push(vec!["xxx".into(), "y".into()]);
        s.notes.push("note".into());
        assert_eq!(render(&[s]), "== t ==\na    bb\n---  --\nxxx  y\nnote\n\n");
        assert_eq!(one_line("a\n b  c", 4), "a b…");
    }
}
