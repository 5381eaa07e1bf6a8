//! haproxy in front of a lab: the process and what it says. [`Haproxy::start`] writes
//! `<lab dir>/haproxy.cfg` (the shipped configuration rendered by [`config`]), validates it
//! with `haproxy -c -f`, runs `haproxy -db -f` in its own process group and returns once the
//! stats socket answers; [`Haproxy::show_stat`] and friends read haproxy's view of its servers
//! through that socket ([`stat`]). [`Haproxy::stop`] (and `Drop`) sends SIGTERM, waits up to
//! [`STOP_GRACE`] (haproxy can take ~1.5 s) and then SIGKILLs. The pid is also written to
//! `<lab dir>/daemon-haproxy.pid` in the lab's daemon pid-file format, so the lab's teardown and
//! leftover cleanup (`Lab::build`, `primgr-lab down`) stop a haproxy left behind by a crashed
//! process too. [`Haproxy::start_site`] runs one more instance per site (its own files, its
//! own address, and its checks and connections leaving from that address, so the lab's cuts
//! separate it from another site's nodes). What the demo shows of it is in `dashboard.rs`.

pub mod config;
pub mod stat;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cmd::{log_tail, tool};
use crate::{Lab, procfs};

pub use config::{
    PROXY_HOST, READ, Rendered, SHIPPED_CONFIG, STATS, WRITE, check_config, proxy_address, render,
};
pub use stat::{ServerStat, csv_fields, parse_stat_csv};

/// How long a started haproxy may take until its stats socket answers.
const T_READY: Duration = Duration::from_secs(15);
/// Time for one stats socket command (connect, send, read to the end).
const T_STATS: Duration = Duration::from_secs(2);
/// How long [`Haproxy::stop`] waits after SIGTERM before SIGKILL (haproxy may take ~1.5 s).
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for the process to be gone after SIGKILL.
const T_KILLED: Duration = Duration::from_secs(2);

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
        Haproxy::launch(lab, template, None).await
    }

    /// A second (third...) haproxy of one site of the lab, as a deployment with one haproxy per
    /// datacenter has: [`Haproxy::start`] with its files named after `site`
    /// (`<lab dir>/haproxy-<site>.cfg`, `.sock`, `.log`, `daemon-haproxy-<site>.pid`), its
    /// listeners bound to `address` instead of the lab's proxy address, and one line added to
    /// `defaults`, `source <address>`, so that its health checks and its connections to the
    /// servers leave from that address: the lab's address cuts ([`Lab::cut`]) then separate it
    /// from the nodes of another site as they separate the nodes.
    pub async fn start_site(
        lab: &Lab,
        template: &str,
        site: &str,
        address: Ipv4Addr,
    ) -> Result<Haproxy> {
        ensure!(
            !site.is_empty()
                && site
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "bad site name {site:?} for a haproxy's files"
        );
        Haproxy::launch(lab, template, Some((site, address))).await
    }

    async fn launch(lab: &Lab, template: &str, site: Option<(&str, Ipv4Addr)>) -> Result<Haproxy> {
        let dir = lab.dir();
        let nodes: Vec<(String, Ipv4Addr)> = lab
            .node_names()
            .into_iter()
            .map(|n| {
                let a = lab.addr(&n);
                (n, a)
            })
            .collect();
        let (stem, proxy) = match site {
            Some((site, address)) => (format!("haproxy-{site}"), address),
            None => ("haproxy".to_string(), proxy_address(lab.subnet())),
        };
        let socket = dir.join(format!("{stem}.sock"));
        let mut rendered = render(template, &nodes, proxy, &socket)?;
        if site.is_some() {
            rendered.text = with_source(&rendered.text, proxy)?;
        }
        let config = dir.join(format!("{stem}.cfg"));
        std::fs::write(&config, &rendered.text)
            .with_context(|| format!("writing {}", config.display()))?;
        check_config(&config).await?;
        let _ = std::fs::remove_file(&socket);
        let log = dir.join(format!("{stem}.log"));
        let (out, err) = crate::daemons::append_to(&log)?;
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
        let pid_file = dir.join(format!("daemon-{stem}.pid"));
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
        procfs::signal_group(self.pid, libc::SIGTERM);
        let deadline = t0 + STOP_GRACE;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                procfs::signal_group(self.pid, libc::SIGKILL);
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

/// `text` with `source <address>` as the first line of its `defaults` section.
fn with_source(text: &str, address: Ipv4Addr) -> Result<String> {
    let mut out = String::with_capacity(text.len() + 40);
    let mut added = false;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if !added && line.split('#').next().unwrap_or("").trim() == "defaults" {
            out.push_str(&format!("    source {address}\n"));
            added = true;
        }
    }
    ensure!(
        added,
        "the configuration has no `defaults` section to add `source` to"
    );
    Ok(out)
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        procfs::signal_group(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            procfs::signal_group(self.pid, libc::SIGKILL);
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_instance_leaves_from_its_own_address() {
        let r = render(
            SHIPPED_CONFIG,
            &[("node1".into(), crate::node_address(9, 1))],
            Ipv4Addr::new(127, 0, 9, 101),
            Path::new("/lab/haproxy-dc1.sock"),
        )
        .unwrap();
        let text = with_source(&r.text, Ipv4Addr::new(127, 0, 9, 101)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let at = lines.iter().position(|l| *l == "defaults").unwrap();
        assert_eq!(lines[at + 1], "    source 127.0.9.101");
        assert_eq!(text.matches("source 127.0.9.101").count(), 1);
        assert_eq!(
            r.listeners[WRITE],
            "127.0.9.101:5000".parse::<SocketAddr>().unwrap()
        );
        assert!(with_source("global\n", Ipv4Addr::LOCALHOST).is_err());
    }
}
