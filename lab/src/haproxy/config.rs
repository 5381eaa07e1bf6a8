//! The shipped `contrib/haproxy.cfg` rendered for a lab ([`render`]) and validated with
//! `haproxy -c` ([`check_config`]).
//!
//! The lab proves the **shipped** options, so rendering changes addresses only and keeps every
//! other line as shipped:
//! - each section's `server NAME ADDR:PORT OPTIONS` lines become one line per lab node
//!   (`server nodeN 127.0.X.1N:PORT OPTIONS`; the shipped lines of a section must agree on port
//!   and options, so nothing shipped is dropped);
//! - `bind ADDR:PORT ...` keeps the port and binds the lab's proxy address
//!   [`proxy_address`] `127.0.X.100`;
//! - `stats socket PATH ...` (required, in `global`) moves into the lab directory;
//! - `log` lines of `global` go to stdout (haproxy's stdout is `<lab dir>/haproxy.log`).
//!
//! The health checks go to `port 5999` of each server's address: the lab daemons' address
//! ([`crate::DAEMON_PORT`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};

use crate::cmd::{Run, tool};

/// The shipped configuration, `contrib/haproxy.cfg` of the repository.
pub const SHIPPED_CONFIG: &str = include_str!("../../../contrib/haproxy.cfg");

/// Name of the write listener in the shipped configuration (only the primary, 200).
pub const WRITE: &str = "postgres_write";
/// Name of the read listener in the shipped configuration (the standbys, 202).
pub const READ: &str = "postgres_read";
/// Name of the HTTP stats listener in the shipped configuration (`/stats`, `/stats;csv`).
pub const STATS: &str = "stats";

/// Last octet of the lab's proxy address `127.0.X.100`.
pub const PROXY_HOST: u8 = 100;

/// How long `haproxy -c` may take.
const T_CHECK_CONFIG: Duration = Duration::from_secs(15);

/// The lab's proxy address: `127.0.<subnet>.100`.
pub fn proxy_address(subnet: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, subnet, PROXY_HOST)
}

/// A configuration rendered for a lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The configuration text.
    pub text: String,
    /// Bound address of each listener (`listen`/`frontend` section name → `bind`).
    pub listeners: BTreeMap<String, SocketAddr>,
    /// Path of the stats socket.
    pub stats_socket: PathBuf,
}

const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "peers",
    "resolvers",
    "userlist",
    "program",
    "mailers",
    "cache",
    "ring",
    "http-errors",
];

/// Whitespace-separated tokens of the part of `line` before a `#`, with their byte offsets.
fn tokens(line: &str) -> Vec<(usize, &str)> {
    let code = line.split('#').next().unwrap_or("");
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in code.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &code[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &code[s..]));
    }
    out
}

fn split_addr(what: &str, addr: &str, lineno: usize) -> Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("line {lineno}: {what} address {addr:?} has no :PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("line {lineno}: {what} address {addr:?}: bad port"))?;
    Ok((host.to_string(), port))
}

/// Renders `template` (the shipped configuration) for the lab nodes `nodes` (name, address):
/// see the [module documentation](self). Errors name the template line.
pub fn render(
    template: &str,
    nodes: &[(String, Ipv4Addr)],
    proxy: Ipv4Addr,
    stats_socket: &Path,
) -> Result<Rendered> {
    ensure!(!nodes.is_empty(), "no lab nodes to render servers for");
    let mut text = String::from(
        "# Rendered by primgr-lab from contrib/haproxy.cfg: server addresses, bind addresses, the\n\
         # stats socket and the global log target replaced; every other line as shipped.\n",
    );
    let mut listeners = BTreeMap::new();
    let mut socket_seen = false;
    let mut section = String::new();
    let mut section_name = String::new();
    // (port, options after the address) of the first server line of the current section.
    let mut servers: Option<(u16, String)> = None;
    for (i, line) in template.lines().enumerate() {
        let lineno = i + 1;
        let toks = tokens(line);
        let Some(&(_, first)) = toks.first() else {
            text.push_str(line);
            text.push('\n');
            continue;
        };
        let indent = &line[..toks[0].0];
        if SECTIONS.contains(&first) {
            section = first.to_string();
            section_name = toks.get(1).map(|t| t.1.to_string()).unwrap_or_default();
            servers = None;
            text.push_str(line);
            text.push('\n');
            continue;
        }
        match (section.as_str(), first) {
            (_, "server") => {
                ensure!(
                    toks.len() >= 3,
                    "line {lineno}: server line without address: {line:?}"
                );
                let (_, port) = split_addr("server", toks[2].1, lineno)?;
                let rest = line[toks[2].0 + toks[2].1.len()..].to_string();
                let options = tokens(&rest)
                    .iter()
                    .map(|t| t.1)
                    .collect::<Vec<_>>()
                    .join(" ");
                match &servers {
                    None => {
                        for (name, addr) in nodes {
                            let _ = writeln!(text, "{indent}server {name} {addr}:{port}{rest}");
                        }
                        servers = Some((port, options));
                    }
                    Some((p, o)) => ensure!(
                        *p == port && *o == options,
                        "line {lineno}: server lines of {section} {section_name} differ in port \
                         or options ({p} {o:?} vs {port} {options:?}); the lab renders one line \
                         per node from the first and would drop the difference"
                    ),
                }
            }
            ("listen" | "frontend", "bind") => {
                ensure!(
                    toks.len() >= 2,
                    "line {lineno}: bind without address: {line:?}"
                );
                let (_, port) = split_addr("bind", toks[1].1, lineno)?;
                let addr = SocketAddr::from((proxy, port));
                ensure!(
                    listeners.insert(section_name.clone(), addr).is_none(),
                    "line {lineno}: second bind in {section} {section_name} (the lab supports one)"
                );
                let rest = &line[toks[1].0 + toks[1].1.len()..];
                let _ = writeln!(text, "{indent}bind {addr}{rest}");
            }
            ("global", "stats") if toks.get(1).is_some_and(|t| t.1 == "socket") => {
                ensure!(toks.len() >= 3, "line {lineno}: stats socket without path");
                ensure!(!socket_seen, "line {lineno}: second stats socket");
                socket_seen = true;
                let rest = &line[toks[2].0 + toks[2].1.len()..];
                let _ = writeln!(
                    text,
                    "{indent}stats socket {}{rest}",
                    stats_socket.display()
                );
            }
            ("global", "log") => {
                let _ = writeln!(text, "{indent}log stdout format raw local0");
            }
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    ensure!(
        socket_seen,
        "the configuration has no `stats socket` in `global` (the lab reads server states there)"
    );
    Ok(Rendered {
        text,
        listeners,
        stats_socket: stats_socket.to_path_buf(),
    })
}

/// `haproxy -c -f <path>`: Ok with haproxy's output if the configuration is valid, else an
/// error carrying haproxy's messages.
pub async fn check_config(path: &Path) -> Result<String> {
    let out = Run::new(
        format!("haproxy -c -f {}", path.display()),
        [
            tool("haproxy"),
            "-c".to_string(),
            "-f".to_string(),
            path.to_string_lossy().into_owned(),
        ],
    )
    .timeout(T_CHECK_CONFIG)
    .output()
    .await?;
    let text = format!("{}{}", out.stdout, out.stderr).trim().to_string();
    ensure!(
        out.status.success(),
        "haproxy -c -f {}: {}\n{text}",
        path.display(),
        out.status
    );
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_nodes() -> Vec<(String, Ipv4Addr)> {
        (1..=3)
            .map(|i| (format!("node{i}"), crate::node_address(9, i)))
            .collect()
    }

    #[test]
    fn renders_addresses_and_keeps_options() {
        let t = "global\n    log /dev/log local0\n    stats socket /run/x.sock mode 600 level admin\n\
                 listen w\n    bind 0.0.0.0:5000\n    http-check expect status 200 # only 200\n\
                 \x20   server a 10.0.0.1:5432 check port 5999\n    server b 10.0.0.2:5432 check port 5999\n";
        let r = render(t, &lab_nodes(), proxy_address(9), Path::new("/lab/h.sock")).unwrap();
        assert_eq!(
            r.text.lines().skip(2).collect::<Vec<_>>(),
            [
                "global",
                "    log stdout format raw local0",
                "    stats socket /lab/h.sock mode 600 level admin",
                "listen w",
                "    bind 127.0.9.100:5000",
                "    http-check expect status 200 # only 200",
                "    server node1 127.0.9.11:5432 check port 5999",
                "    server node2 127.0.9.12:5432 check port 5999",
                "    server node3 127.0.9.13:5432 check port 5999",
            ]
        );
        assert_eq!(r.listeners["w"], "127.0.9.100:5000".parse().unwrap());
    }

    #[test]
    fn refuses_what_it_would_lose() {
        for (template, error) in [
            (
                "global\n stats socket /x\nlisten w\n server a 1.1.1.1:5432 check\n server b 1.1.1.2:5432\n",
                "differ",
            ),
            ("listen w\n bind :5000\n", "stats socket"),
            (
                "global\n stats socket /x\nlisten w\n server a nowhere\n",
                "line 4",
            ),
        ] {
            let e = render(template, &lab_nodes(), proxy_address(9), Path::new("/s"))
                .expect_err(template);
            assert!(e.to_string().contains(error), "{template:?}: {e}");
        }
    }

    #[test]
    fn renders_the_shipped_config() {
        let r = render(
            SHIPPED_CONFIG,
            &lab_nodes(),
            proxy_address(9),
            Path::new("/lab/h.sock"),
        )
        .unwrap();
        // BTreeMap order: postgres_read < postgres_write < stats.
        assert_eq!(r.listeners.keys().collect::<Vec<_>>(), [READ, WRITE, STATS]);
        assert_eq!(r.listeners[WRITE], "127.0.9.100:5000".parse().unwrap());
        assert_eq!(r.listeners[READ], "127.0.9.100:5001".parse().unwrap());
        // Comments (the commented agent variant among them) stay as shipped.
        let live: Vec<&str> = r
            .text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert!(!live.iter().any(|l| l.contains("10.0.0.")), "{}", r.text);
        // 3 nodes in each of the two PostgreSQL listeners.
        assert_eq!(live.iter().filter(|l| l.contains("server node")).count(), 6);
    }
}
