//! For the operations tests: daemons with an agent-check port (in-process, through
//! `primgr::run_with`), a raw agent client, haproxy's `show stat` rows with the agent's columns,
//! and the real `primgr` binary run from a configuration file only (so that a reload can change
//! every key, `listen` and `conninfo` too, and `log_level` is not pinned by `RUST_LOG`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use primgr::Config;
use primgr_lab::Lab;
use primgr_lab::haproxy::Haproxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Daemon, Fleet, config_for};

/// The agent port of the shipped haproxy variant (`agent-port 5998`).
pub const AGENT_PORT: u16 = 5998;

/// Starts a daemon with `config`, serving its agent port on `config.agent.agent_listen` when set.
pub async fn start_daemon(config: Config) -> Daemon {
    Daemon::start(config).await
}

/// The agent address of a lab node: `<node address>:5998`.
pub fn agent_addr(lab: &Lab, node: &str) -> SocketAddr {
    SocketAddr::from((lab.addr(node), AGENT_PORT))
}

/// The state directory of the daemon of `node` of the lab on `subnet` (see [`state_dir`]).
pub fn state_dir_path(subnet: u8, node: &str) -> PathBuf {
    std::env::temp_dir().join(format!("primgr-test-ops-{subnet}-{node}"))
}

/// A fresh state directory for the daemon of `node` of the lab on `subnet` (the drain flag).
pub fn state_dir(subnet: u8, node: &str) -> PathBuf {
    let dir = state_dir_path(subnet, node);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create state dir");
    dir
}

/// A daemon per lab node with its agent on `<node address>:5998` and its own state directory,
/// each configuration adjusted by `adjust(node, config)` last.
pub async fn agent_fleet(lab: &Lab, adjust: impl Fn(&str, &mut Config)) -> Fleet {
    let mut daemons = std::collections::BTreeMap::new();
    for node in lab.node_names() {
        let mut config = config_for(lab, &node);
        config.agent.agent_listen = Some(agent_addr(lab, &node));
        config.node.state_dir = state_dir(lab.subnet(), &node);
        adjust(&node, &mut config);
        daemons.insert(node.clone(), start_daemon(config).await);
    }
    Fleet { daemons }
}

/// What an agent connection gave: the bytes up to the end of the stream, and whether the
/// stream ended cleanly (EOF) rather than with a reset or a timeout.
#[derive(Debug)]
pub struct AgentReply {
    pub text: String,
    pub closed: bool,
    /// From connect to the end of the stream.
    pub took: Duration,
    pub error: Option<String>,
}

/// Connects to an agent, sends `send` (nothing when empty), reads until the agent closes
/// (bounded by `within`).
pub async fn ask_agent(addr: SocketAddr, send: &[u8], within: Duration) -> AgentReply {
    let t0 = Instant::now();
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        if !send.is_empty() {
            s.write_all(send).await?;
        }
        let mut out = Vec::new();
        let r = s.read_to_end(&mut out).await.map(|_| ());
        Ok::<_, std::io::Error>((out, r))
    };
    match tokio::time::timeout(within, exchange).await {
        Err(_) => AgentReply {
            text: String::new(),
            closed: false,
            took: t0.elapsed(),
            error: Some(format!("no end within {within:?}")),
        },
        Ok(Err(e)) => AgentReply {
            text: String::new(),
            closed: false,
            took: t0.elapsed(),
            error: Some(e.to_string()),
        },
        Ok(Ok((out, r))) => AgentReply {
            text: String::from_utf8_lossy(&out).into_owned(),
            closed: r.is_ok(),
            took: t0.elapsed(),
            error: r.err().map(|e| e.to_string()),
        },
    }
}

/// The agent's line for `pool` (`b"read\n"`, `b"write\n"`), without its newline; panics when
/// there is no clean one-line answer.
pub async fn agent_line(addr: SocketAddr, send: &[u8]) -> String {
    let r = ask_agent(addr, send, Duration::from_secs(3)).await;
    assert!(
        r.closed && r.text.ends_with('\n') && r.text.matches('\n').count() == 1,
        "agent {addr} {send:?}: {r:?}"
    );
    r.text.trim_end().to_string()
}

/// One server row of haproxy's `show stat`, with the agent's columns.
#[derive(Clone, Debug)]
pub struct AgentRow {
    pub proxy: String,
    pub server: String,
    pub status: String,
    /// Effective weight (`weight`).
    pub weight: u32,
    /// Current sessions (`scur`).
    pub sessions: u64,
    /// Sessions sent to it since start (`lbtot`).
    pub total: u64,
    pub check_status: String,
    pub check_code: String,
    pub agent_status: String,
    /// The agent's last answer as haproxy read it (`last_agt`).
    pub last_agent: String,
}

impl AgentRow {
    /// The row as printed in the report.
    pub fn line(&self) -> String {
        format!(
            "{:<22} {:<6} {:<6} weight {:>3}  scur {:>2} lbtot {:>3}  check {} {:<3}  agent {} {:?}",
            self.proxy,
            self.server,
            self.status,
            self.weight,
            self.sessions,
            self.total,
            self.check_status,
            self.check_code,
            self.agent_status,
            self.last_agent
        )
    }
}

/// The server rows of `proxy` in haproxy's `show stat`.
pub async fn agent_rows(hp: &Haproxy, proxy: &str) -> Vec<AgentRow> {
    let csv = hp.command("show stat").await.expect("show stat");
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header = primgr_lab::haproxy::csv_fields(
        lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .expect("show stat header"),
    );
    let col = |name: &str| {
        header
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("show stat has no column {name}"))
    };
    let cols = [
        "pxname",
        "svname",
        "status",
        "weight",
        "scur",
        "lbtot",
        "check_status",
        "check_code",
        "agent_status",
        "last_agt",
    ]
    .map(col);
    lines
        .map(primgr_lab::haproxy::csv_fields)
        .filter(|f| f.get(cols[0]).is_some_and(|p| p == proxy))
        .filter(|f| {
            f.get(cols[1])
                .is_some_and(|s| s != "FRONTEND" && s != "BACKEND")
        })
        .map(|f| {
            let get = |i: usize| f.get(cols[i]).cloned().unwrap_or_default();
            AgentRow {
                proxy: get(0),
                server: get(1),
                status: get(2),
                weight: get(3).parse().unwrap_or(0),
                sessions: get(4).parse().unwrap_or(0),
                total: get(5).parse().unwrap_or(0),
                check_status: get(6),
                check_code: get(7),
                agent_status: get(8),
                last_agent: get(9),
            }
        })
        .collect()
}

/// Waits until the rows of `proxy` satisfy `check`; returns them and the time it took, or
/// panics with the last rows after `within`.
pub async fn wait_rows(
    hp: &Haproxy,
    proxy: &str,
    within: Duration,
    check: impl Fn(&[AgentRow]) -> bool,
) -> (Vec<AgentRow>, Duration) {
    let t0 = Instant::now();
    loop {
        let rows = agent_rows(hp, proxy).await;
        if check(&rows) {
            return (rows, t0.elapsed());
        }
        if t0.elapsed() > within {
            let shown: Vec<String> = rows.iter().map(AgentRow::line).collect();
            panic!(
                "after {within:?}, {proxy} is not as wanted:\n{}",
                shown.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The row of `server` among `rows`.
pub fn row<'a>(rows: &'a [AgentRow], server: &str) -> &'a AgentRow {
    rows.iter()
        .find(|r| r.server == server)
        .unwrap_or_else(|| panic!("no server {server} in {rows:?}"))
}

/// The real `primgr` binary run as `primgr --config FILE` and nothing else, without `RUST_LOG`
/// (so that the file's `log_level` decides, and a reload may change it); stdout and stderr
/// go to `log`. Killed when dropped.
pub struct ConfiguredPrimgr {
    child: Child,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl ConfiguredPrimgr {
    pub fn spawn(config: &Path, log: &Path) -> ConfiguredPrimgr {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_primgr"))
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start primgr");
        ConfiguredPrimgr {
            child,
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGHUP (`kill -HUP <pid>`, what `systemctl reload primgr` does).
    pub fn hangup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -HUP {}", self.pid());
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has more than `from` bytes and the text after `from` contains
    /// `want`; returns that text. Panics with the log after `within`.
    pub async fn wait_log(&self, from: usize, want: &str, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let text = self.log_text();
            let new = text.get(from..).unwrap_or_default();
            if new.contains(want) {
                return new.to_string();
            }
            if t0.elapsed() > within {
                panic!("after {within:?} the log has no {want:?} after byte {from}:\n{new}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ConfiguredPrimgr {
    fn drop(&mut self) {
        self.kill();
    }
}

/// haproxy's `SRV_ADMF_FDRAIN`: the server was set to drain (by the agent or the CLI).
pub const ADMIN_DRAIN: u32 = 0x08;

/// `server → (srv_admin_state, srv_uweight)` of backend `proxy` in `show servers state`.
pub async fn servers_state(
    hp: &Haproxy,
    proxy: &str,
) -> std::collections::BTreeMap<String, (u32, u32)> {
    let out = hp
        .command(&format!("show servers state {proxy}"))
        .await
        .expect("show servers state");
    let mut lines = out.lines().filter(|l| !l.trim().is_empty()).skip(1);
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .expect("show servers state header")
        .split_whitespace()
        .collect();
    let col = |n: &str| {
        header
            .iter()
            .position(|c| *c == n)
            .unwrap_or_else(|| panic!("no column {n} in {header:?}"))
    };
    let (name, admin, uweight) = (col("srv_name"), col("srv_admin_state"), col("srv_uweight"));
    lines
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > uweight)
        .map(|f| {
            (
                f[name].to_string(),
                (
                    f[admin].parse().unwrap_or(0),
                    f[uweight].parse().unwrap_or(0),
                ),
            )
        })
        .collect()
}
