//! haproxy in front of a lab: renders the shipped `contrib/haproxy.cfg` for the lab's
//! addresses, runs Debian's `haproxy` as a child process, reads haproxy's own view of its
//! servers through the stats socket, and shows in the demo where the write and read ports lead.
//!
//! ## Rendering ([`render`])
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
//!
//! ## Lifecycle ([`Haproxy`])
//! [`Haproxy::start`] writes `<lab dir>/haproxy.cfg`, validates it with `haproxy -c -f`, runs
//! `haproxy -db -f` in its own process group and returns once the stats socket answers.
//! [`Haproxy::stop`] (and `Drop`) sends SIGTERM, waits up to [`STOP_GRACE`] (haproxy can take
//! ~1.5 s) and then SIGKILLs. The pid is also written to `<lab dir>/daemon-haproxy.pid` in the
//! lab's daemon pid-file format, so the lab's teardown and leftover cleanup (`Lab::build`,
//! `primgr-lab down`) stop a haproxy left behind by a crashed process too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cmd::{Run, log_tail, tool};
use crate::dashboard::{Section, one_line};
use crate::{Lab, procs};

/// The shipped configuration, `contrib/haproxy.cfg` of the repository.
pub const SHIPPED_CONFIG: &str = include_str!("../../contrib/haproxy.cfg");

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
/// How long a started haproxy may take until its stats socket answers.
const T_READY: Duration = Duration::from_secs(15);
/// Time for one stats socket command (connect, send, read to the end).
const T_STATS: Duration = Duration::from_secs(2);
/// How long [`Haproxy::stop`] waits after SIGTERM before SIGKILL (haproxy may take ~1.5 s).
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for the process to be gone after SIGKILL.
const T_KILLED: Duration = Duration::from_secs(2);
/// How long one `psql` probe through a listener may take (connect timeout 2 s inside).
const T_PROBE: Duration = Duration::from_secs(4);

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

/// One row of haproxy's `show stat` (a server, or a proxy's FRONTEND/BACKEND line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStat {
    /// Proxy (listen section) name, `pxname`.
    pub proxy: String,
    /// Server name, or `FRONTEND`/`BACKEND`, `svname`.
    pub server: String,
    /// `status`: `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (going up), `MAINT`, `OPEN`...
    pub status: String,
    /// `check_status` of the last check, e.g. `L7OK`, `L7STS`, `L4CON`, `L4TOUT`.
    pub check_status: String,
    /// `check_code`: the HTTP status of the last check, if any.
    pub check_code: Option<u16>,
    /// `scur`: current sessions.
    pub sessions: u64,
}

impl ServerStat {
    /// Whether haproxy sends traffic to it (`UP`, also `UP n/m` while going down).
    pub fn is_up(&self) -> bool {
        self.status == "UP" || self.status.starts_with("UP ")
    }

    /// A real server (not the FRONTEND/BACKEND summary line).
    pub fn is_server(&self) -> bool {
        self.server != "FRONTEND" && self.server != "BACKEND"
    }
}

/// Splits one CSV line (haproxy quotes fields containing commas with `"`).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Parses the CSV of `show stat` or `/stats;csv` (header line `# pxname,svname,...`).
pub fn parse_stat_csv(csv: &str) -> Result<Vec<ServerStat>> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or_else(|| anyhow!("empty stats output"))?;
    let header = header
        .strip_prefix("# ")
        .ok_or_else(|| anyhow!("stats output does not start with '# pxname,...': {header:?}"))?;
    let cols = csv_fields(header);
    let col = |name: &str| {
        cols.iter()
            .position(|c| c == name)
            .ok_or_else(|| anyhow!("stats output has no column {name}"))
    };
    let (px, sv, st, cs, cc, scur) = (
        col("pxname")?,
        col("svname")?,
        col("status")?,
        col("check_status")?,
        col("check_code")?,
        col("scur")?,
    );
    let mut out = Vec::new();
    for line in lines {
        let f = csv_fields(line);
        let get = |i: usize| f.get(i).cloned().unwrap_or_default();
        out.push(ServerStat {
            proxy: get(px),
            server: get(sv),
            status: get(st),
            check_status: get(cs),
            check_code: get(cc).parse().ok(),
            sessions: get(scur).parse().unwrap_or(0),
        });
    }
    Ok(out)
}

/// A running haproxy in front of a lab. See the [module documentation](self).
#[derive(Debug)]
pub struct Haproxy {
    child: Option<Child>,
    pid: i32,
    config: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    rendered: Rendered,
}

impl Haproxy {
    /// Renders `template` for `lab` (usually [`SHIPPED_CONFIG`] or the file read at run time),
    /// writes it to `<lab dir>/haproxy.cfg`, validates it with `haproxy -c`, starts
    /// `haproxy -db -f` and returns once its stats socket answers (within 15 s; fails early with
    /// the log tail if haproxy exits, e.g. because a port is taken).
    pub async fn start(lab: &Lab, template: &str) -> Result<Haproxy> {
        let dir = lab.dir();
        let nodes: Vec<(String, Ipv4Addr)> = lab
            .node_names()
            .into_iter()
            .map(|n| {
                let a = lab.addr(&n);
                (n, a)
            })
            .collect();
        let socket = dir.join("haproxy.sock");
        let rendered = render(template, &nodes, proxy_address(lab.subnet()), &socket)?;
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, &rendered.text)
            .with_context(|| format!("writing {}", config.display()))?;
        check_config(&config).await?;
        let _ = std::fs::remove_file(&socket);
        let log = dir.join("haproxy.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().context("duplicating log file handle")?;
        let child = std::process::Command::new(tool("haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .context("starting haproxy")?;
        let pid = i32::try_from(child.id()).context("haproxy pid")?;
        let pid_file = dir.join("daemon-haproxy.pid");
        let mut hp = Haproxy {
            child: Some(child),
            pid,
            config,
            pid_file,
            log,
            rendered,
        };
        std::fs::write(
            &hp.pid_file,
            format!("{pid}\n{}\n", hp.config.to_string_lossy()),
        )
        .context("writing haproxy pid file")?;
        let deadline = Instant::now() + T_READY;
        loop {
            if let Some(status) = hp.try_wait()? {
                bail!(
                    "haproxy exited at start ({status}); {}:\n{}",
                    hp.log.display(),
                    log_tail(&hp.log, 20)
                );
            }
            match hp.command("show info").await {
                Ok(_) => return Ok(hp),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "haproxy not ready after {T_READY:?}; log:\n{}",
                        log_tail(&hp.log, 20)
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        match &mut self.child {
            Some(c) => c.try_wait().context("waiting for haproxy"),
            None => bail!("haproxy was stopped"),
        }
    }

    /// Whether the haproxy process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Pid of the haproxy process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The rendered configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// haproxy's stdout/stderr (server transitions, one line per session).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The stats socket.
    pub fn stats_socket(&self) -> &Path {
        &self.rendered.stats_socket
    }

    /// The rendered configuration (text, listeners).
    pub fn rendered(&self) -> &Rendered {
        &self.rendered
    }

    /// Bound address of the listener `name` (e.g. [`WRITE`], [`READ`], [`STATS`]).
    pub fn listener(&self, name: &str) -> Result<SocketAddr> {
        self.rendered
            .listeners
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("the configuration has no listener {name:?}"))
    }

    /// One command on the stats socket (e.g. `show stat`, `show servers state`); its output.
    pub async fn command(&self, cmd: &str) -> Result<String> {
        let socket = &self.rendered.stats_socket;
        let exchange = async {
            let mut s = tokio::net::UnixStream::connect(socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            s.write_all(format!("{cmd}\n").as_bytes()).await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            anyhow::Ok(out)
        };
        tokio::time::timeout(T_STATS, exchange)
            .await
            .map_err(|_| anyhow!("stats socket command {cmd:?}: no answer within {T_STATS:?}"))?
            .with_context(|| format!("stats socket command {cmd:?}"))
    }

    /// `show stat`, parsed.
    pub async fn show_stat(&self) -> Result<Vec<ServerStat>> {
        parse_stat_csv(&self.command("show stat").await?)
    }

    /// The servers (no FRONTEND/BACKEND lines) of proxy `proxy`, in configuration order.
    pub async fn servers(&self, proxy: &str) -> Result<Vec<ServerStat>> {
        Ok(self
            .show_stat()
            .await?
            .into_iter()
            .filter(|s| s.proxy == proxy && s.is_server())
            .collect())
    }

    /// Names of the servers of `proxy` that haproxy considers UP.
    pub async fn up_servers(&self, proxy: &str) -> Result<Vec<String>> {
        Ok(self
            .servers(proxy)
            .await?
            .into_iter()
            .filter(ServerStat::is_up)
            .map(|s| s.server)
            .collect())
    }

    /// Waits until exactly the servers `want` of `proxy` are UP (status exactly `UP`, no
    /// transition pending); returns how long it took, or an error with the last view.
    pub async fn wait_up(&self, proxy: &str, want: &[&str], within: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            let last = self.servers(proxy).await;
            if let Ok(servers) = &last {
                let settled = servers
                    .iter()
                    .all(|s| s.status == "UP" || s.status == "DOWN");
                let mut up: Vec<&str> = servers
                    .iter()
                    .filter(|s| s.is_up())
                    .map(|s| s.server.as_str())
                    .collect();
                up.sort_unstable();
                let mut want = want.to_vec();
                want.sort_unstable();
                if settled && up == want {
                    return Ok(t0.elapsed());
                }
            }
            if t0.elapsed() > within {
                bail!("after {within:?}, {proxy} UP servers are not exactly {want:?}: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops haproxy: SIGTERM, up to [`STOP_GRACE`] for it to exit, then SIGKILL. Returns how
    /// long it took.
    pub async fn stop(mut self) -> Result<Duration> {
        let t0 = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        procs::signal_group(self.pid, libc::SIGTERM);
        let deadline = t0 + STOP_GRACE;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                procs::signal_group(self.pid, libc::SIGKILL);
                let killed = Instant::now() + T_KILLED;
                while child.try_wait()?.is_none() {
                    ensure!(
                        Instant::now() < killed,
                        "haproxy {} survives SIGKILL",
                        self.pid
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(&self.pid_file);
        Ok(t0.elapsed())
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        procs::signal_group(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            procs::signal_group(self.pid, libc::SIGKILL);
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
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
    let conninfo = format!(
        "host={} port={} user=repmgr dbname=repmgr connect_timeout=2 application_name=primgr-lab-probe",
        addr.ip(),
        addr.port()
    );
    let out = Run::new(
        format!("psql through {addr}"),
        [
            format!("{}/psql", crate::PG_BIN),
            "-XAtq".to_string(),
            "-F".to_string(),
            "|".to_string(),
            conninfo,
            "-c".to_string(),
            "SELECT host(inet_server_addr()), pg_is_in_recovery()".to_string(),
        ],
    )
    .timeout(T_PROBE)
    .run()
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
pub async fn section(lab: &Lab, hp: &Haproxy) -> Section {
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
        let sock = Path::new("/s");
        let t = "global\n stats socket /x\nlisten w\n server a 1.1.1.1:5432 check\n server b 1.1.1.2:5432\n";
        let e = render(t, &lab_nodes(), proxy_address(9), sock).unwrap_err();
        assert!(e.to_string().contains("differ"), "{e}");
        let e = render(
            "listen w\n bind :5000\n",
            &lab_nodes(),
            proxy_address(9),
            sock,
        );
        assert!(e.unwrap_err().to_string().contains("stats socket"));
        let e = render(
            "global\n stats socket /x\nlisten w\n server a nowhere\n",
            &lab_nodes(),
            proxy_address(9),
            sock,
        );
        assert!(e.unwrap_err().to_string().contains("line 4"));
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
        assert!(!r.text.contains("10.0.0."), "{}", r.text);
        // 3 nodes in each of the two PostgreSQL listeners.
        assert_eq!(r.text.matches("server node").count(), 6);
    }

    #[test]
    fn parses_show_stat() {
        let csv = "# pxname,svname,qcur,qmax,scur,status,check_status,check_code,last_chk\n\
                   postgres_write,FRONTEND,,,0,OPEN,,,\n\
                   postgres_write,node1,0,0,2,UP,L7OK,200,\"OK, fine\"\n\
                   postgres_write,node2,0,0,0,DOWN,L7STS,202,Accepted\n\
                   postgres_write,node3,0,0,0,UP 1/2,L7STS,509,x\n";
        let s = parse_stat_csv(csv).unwrap();
        let servers: Vec<_> = s.iter().filter(|s| s.is_server()).collect();
        assert_eq!(servers.len(), 3);
        assert_eq!(
            (
                servers[0].status.as_str(),
                servers[0].check_code,
                servers[0].sessions
            ),
            ("UP", Some(200), 2)
        );
        assert!(servers[0].is_up() && !servers[1].is_up() && servers[2].is_up());
        assert_eq!(servers[1].check_status, "L7STS");
        assert!(parse_stat_csv("").is_err());
        assert!(parse_stat_csv("pxname\n").is_err());
    }
}
