//! Status table of the demo (`primgr-lab up`), built from independent [`Section`]s so that
//! further parts of the demo (e.g. haproxy) can add their own: write an `async fn` returning a
//! [`Section`] and add it to the list the binary collects before calling [`render`].

use std::time::Duration;

use crate::http;
use crate::{Lab, join_all};

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

/// Render sections as aligned text tables.
pub fn render(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections {
        out.push_str(&format!("== {} ==\n", s.title));
        if !s.header.is_empty() {
            let cols = s.header.len();
            let mut w: Vec<usize> = s.header.iter().map(|h| h.chars().count()).collect();
            for r in &s.rows {
                for (i, c) in r.iter().enumerate().take(cols) {
                    w[i] = w[i].max(c.chars().count());
                }
            }
            let line = |cells: &[String]| {
                let mut l = String::new();
                for (i, width) in w.iter().enumerate() {
                    let c = cells.get(i).map(String::as_str).unwrap_or("");
                    l.push_str(&format!("{c:<width$}  "));
                }
                l.trim_end().to_string() + "\n"
            };
            out.push_str(&line(&s.header));
            out.push_str(&line(&w.iter().map(|&n| "-".repeat(n)).collect::<Vec<_>>()));
            for r in &s.rows {
                out.push_str(&line(r));
            }
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
        let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary (rw)' END, \
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

/// Each daemon's `/state` (status code + body), `/primary` and `/realPrimary`, 1 s timeout each.
pub async fn daemons_section(lab: &Lab) -> Section {
    let mut sec = Section::new(
        "primgr daemons",
        &["node", "daemon", "/state", "/primary", "/realPrimary"],
    );
    let names = lab.node_names();
    sec.rows = join_all(names.iter().map(|n| daemon_row(lab, n)).collect()).await;
    sec.notes
        .push("/state: 200 Primary, 202 Standby, 503 Down, 509 Unknown".to_string());
    sec
}

async fn daemon_row(lab: &Lab, node: &str) -> Vec<String> {
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
    let running = if lab.daemon_running(node) {
        "up"
    } else {
        "not running"
    };
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
