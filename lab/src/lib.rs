//! # primgr-lab: a real repmgr cluster on loopback addresses, for tests and demos
//!
//! [`Lab::build`] creates a PostgreSQL 15 + repmgr 5.3 cluster on this machine: node *N* of the
//! spec listens on `127.0.X.(10+N):5432` (X = the lab's *subnet*), has its own data directory,
//! unix socket directory, log file and `repmgr.conf` under the lab directory
//! (`/tmp/primgr-lab-<subnet>` by default), and is registered in `repmgr.nodes` with the
//! `location` of its [`NodeSpec`]. The first node is the primary, the others are cloned from it
//! (`repmgr standby clone --fast-checkpoint`) and stream from it. A 4-node build takes 5–15 s.
//!
//! The [`Lab`] then offers the operations a failover test needs: [`Lab::stop`], [`Lab::start`],
//! [`Lab::promote`], [`Lab::follow`], [`Lab::rejoin`] (pg_rewind), fault injection
//! ([`Lab::freeze`] = SIGSTOP of the postmaster and its children, [`Lab::freeze_postmaster`],
//! [`Lab::thaw`], iptables [`Lab::cut`] / [`Lab::heal`] between node addresses), SQL through
//! [`Lab::psql`], and primgr daemon processes ([`Lab::spawn_daemon`]). [`http`] is a tiny HTTP
//! client for the daemons' endpoints and [`dashboard`] renders the status table of the demo binary.
//! [`haproxy`] runs the shipped `contrib/haproxy.cfg`, rendered for the lab's addresses, in front
//! of a lab and reads haproxy's view of its servers.
//!
//! ## Requirements
//! Must run as **root** (PostgreSQL, psql and repmgr run as the `postgres` OS user through
//! `runuser -u postgres`; iptables needs root). [`Lab::build`] fails with a clear error otherwise.
//!
//! ## Cleanup
//! [`Lab::teardown`] stops everything and removes the lab directory, the lab's iptables chain
//! (`PRIMGR_LAB_<subnet>`, hooked into `INPUT` and `OUTPUT`; no other rule is touched) and the
//! `/tmp/node-rejoin.*.log` files the lab caused. If a `Lab` is dropped without `teardown` (for
//! example because a test panicked), `Drop` does the same synchronously. Leftovers of a crashed
//! process on the same subnet (postmasters and daemons found through the pid files in the lab
//! directory, the old directory, the old chain) are removed at the start of [`Lab::build`] and by
//! [`destroy_leftovers`] (`primgr-lab down`). Set `PRIMGR_LAB_KEEP=1` to keep a dropped lab
//! running for debugging, `PRIMGR_LAB_VERBOSE=1` to print build steps with timings to stderr.
//!
//! Several labs can run at once in one process on different subnets: nothing is shared but the
//! machine.
//!
//! ## Subnet shift
//! `PRIMGR_LAB_SUBNET_SHIFT=N` (default 0) moves every lab to another subnet, so that two
//! checkouts can run the lab tests on one machine at the same time: the subnet *s* a spec asks
//! for becomes `((s - 1 + N) % 254) + 1` (it stays in 1..=254). It is applied in one place,
//! [`lab_subnet`], when a spec is resolved ([`Lab::build`], [`LabSpec::lab_dir`],
//! [`destroy_leftovers`]); [`Lab::subnet`] returns the shifted value and every address, the
//! default directory `/tmp/primgr-lab-<subnet>`, the iptables chain and haproxy's proxy address
//! derive from it. Tests that need an address of their subnet without a lab call
//! [`lab_subnet`] too.
//!
//! ## Layout of a node (`<dir>/<node>/`)
//! `data/` (its `postgresql.conf` ends with `include 'node.conf'`; `node.conf` holds
//! `listen_addresses`, `port`, `unix_socket_directories`, `cluster_name`), `repmgr.conf`,
//! `postgres.log` (outside the data directory, so clones and rewinds do not copy it), `sock/`,
//! `config-archive/`. Daemons log to `<dir>/daemon-<node>.log`, pid in `<dir>/daemon-<node>.pid`.
//!
//! ## Example
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use primgr_lab::{Lab, LabSpec, StopMode};
//! let lab = Lab::build(LabSpec::standard(200)).await?;
//! lab.stop("node1", StopMode::Immediate).await?;
//! lab.promote("node2").await?;
//! lab.follow("node3").await?;
//! assert_eq!(lab.primary_in_metadata("node3").await?.as_deref(), Some("node2"));
//! lab.teardown().await?;
//! # Ok(()) }
//! ```

mod cmd;
pub mod dashboard;
mod firewall;
pub mod haproxy;
pub mod http;
mod procs;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::cmd::{Run, log_tail};

pub use crate::http::HttpResponse;

/// Directory of the PostgreSQL 15 binaries (and of `repmgr`).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Port of every node's PostgreSQL (each node has its own address).
pub const PG_PORT: u16 = 5432;
/// Port of every node's primgr daemon started by [`Lab::spawn_daemon`].
pub const DAEMON_PORT: u16 = 5999;

const T_INITDB: Duration = Duration::from_secs(90);
const T_PG_CTL: Duration = Duration::from_secs(90);
const T_CLONE: Duration = Duration::from_secs(180);
const T_REPMGR: Duration = Duration::from_secs(120);
const T_REJOIN: Duration = Duration::from_secs(180);
const T_PSQL: Duration = Duration::from_secs(15);
const T_WAIT: Duration = Duration::from_secs(60);
const MARKER: &str = ".primgr-lab";

/// Environment variable that shifts every lab subnet (see [`lab_subnet`]).
pub const SUBNET_SHIFT_ENV: &str = "PRIMGR_LAB_SUBNET_SHIFT";

/// `subnet` shifted by `shift` within 1..=254: `((subnet - 1 + shift) % 254) + 1`.
/// `subnet` must be in 1..=254 (see [`lab_subnet`], which checks it).
pub fn shift_subnet(subnet: u8, shift: u32) -> u8 {
    let s = u32::from(subnet.clamp(1, 254));
    // The result is in 1..=254.
    (((s - 1 + shift % 254) % 254) + 1) as u8
}

/// The shift set by `PRIMGR_LAB_SUBNET_SHIFT` (0 when unset or empty); an error when it is
/// not a whole number.
pub fn subnet_shift() -> Result<u32> {
    match std::env::var(SUBNET_SHIFT_ENV) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<u32>()
            .with_context(|| format!("{SUBNET_SHIFT_ENV}={v:?} is not a whole number (e.g. 100)")),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(0),
        Err(e) => bail!("{SUBNET_SHIFT_ENV}: {e}"),
    }
}

/// The subnet a lab asked for as `requested` really uses: `requested` shifted by
/// `PRIMGR_LAB_SUBNET_SHIFT` ([`shift_subnet`]). Every address, directory, chain and proxy
/// address of a lab derives from this value ([`Lab::subnet`]); tests that need an address of
/// "their" subnet without a lab derive it from here too.
pub fn lab_subnet(requested: u8) -> Result<u8> {
    ensure!(
        (1..=254).contains(&requested),
        "subnet {requested} is outside 1..=254 (0 is 127.0.0.x, which the machine uses)"
    );
    Ok(shift_subnet(requested, subnet_shift()?))
}

/// Default lab directory of a subnet: `/tmp/primgr-lab-<subnet>`.
pub fn default_dir(subnet: u8) -> PathBuf {
    PathBuf::from(format!("/tmp/primgr-lab-{subnet}"))
}

/// Name of the lab's own iptables chain: `PRIMGR_LAB_<subnet>`.
pub fn chain_name(subnet: u8) -> String {
    format!("PRIMGR_LAB_{subnet}")
}

/// Address of the node with 1-based `index` in a lab on `subnet`: `127.0.<subnet>.<10+index>`.
pub fn node_address(subnet: u8, index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, subnet, (10 + index).min(255) as u8)
}

/// Fails with a clear error unless the effective user is root.
pub fn ensure_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "primgr-lab must run as root (euid is {euid}): it runs PostgreSQL as the postgres user \
         through runuser and manages iptables rules; run the tests/demo as root"
    );
    Ok(())
}

/// One node of a lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node name (`node_name` in repmgr), letters, digits, `_` and `-` only.
    pub name: String,
    /// repmgr `location` (site) of the node.
    pub location: String,
}

impl NodeSpec {
    /// A node named `name` at `location`.
    pub fn new(name: impl Into<String>, location: impl Into<String>) -> Self {
        NodeSpec {
            name: name.into(),
            location: location.into(),
        }
    }
}

/// What to build. The first node is the primary; node *N* (1-based position) gets address
/// `127.0.<subnet>.<10+N>` and repmgr `node_id` *N*.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// The requested subnet, 1..=254. The lab uses [`lab_subnet`]`(subnet)` (this value
    /// shifted by `PRIMGR_LAB_SUBNET_SHIFT`) as the third octet of its addresses and to name
    /// its default directory and its chain.
    pub subnet: u8,
    /// Lab directory; `None` = [`default_dir`]. The `postgres` user must be able to enter it.
    pub dir: Option<PathBuf>,
    /// The nodes, primary first.
    pub nodes: Vec<NodeSpec>,
}

impl LabSpec {
    /// node1..node3 at location `dc1`, node4 at `dc2`; node1 is the primary.
    pub fn standard(subnet: u8) -> Self {
        LabSpec {
            subnet,
            dir: None,
            nodes: vec![
                NodeSpec::new("node1", "dc1"),
                NodeSpec::new("node2", "dc1"),
                NodeSpec::new("node3", "dc1"),
                NodeSpec::new("node4", "dc2"),
            ],
        }
    }

    /// The subnet the lab will use: [`lab_subnet`]`(self.subnet)`.
    pub fn effective_subnet(&self) -> Result<u8> {
        lab_subnet(self.subnet)
    }

    /// The directory the lab will use (the default one names the effective subnet).
    pub fn lab_dir(&self) -> Result<PathBuf> {
        match &self.dir {
            Some(d) => Ok(d.clone()),
            None => Ok(default_dir(self.effective_subnet()?)),
        }
    }

    fn validate(&self) -> Result<()> {
        self.effective_subnet()?;
        ensure!(!self.nodes.is_empty(), "a lab needs at least one node");
        ensure!(self.nodes.len() <= 200, "at most 200 nodes");
        for (i, n) in self.nodes.iter().enumerate() {
            ensure!(
                !n.name.is_empty()
                    && n.name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "bad node name {:?} (letters, digits, '_' and '-' only)",
                n.name
            );
            ensure!(
                !n.location.is_empty() && !n.location.contains(['\'', '\\', '\n']),
                "bad location {:?} of {}",
                n.location,
                n.name
            );
            ensure!(
                !self.nodes[..i].iter().any(|o| o.name == n.name),
                "duplicate node name {}",
                n.name
            );
        }
        Ok(())
    }
}

/// How [`Lab::stop`] shuts a node down (`pg_ctl stop -m ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// `-m immediate`: like a crash (no checkpoint, crash recovery at next start).
    Immediate,
    /// `-m fast`: clean shutdown.
    Fast,
}

impl StopMode {
    fn arg(self) -> &'static str {
        match self {
            StopMode::Immediate => "immediate",
            StopMode::Fast => "fast",
        }
    }
}

/// How [`Lab::cut_with`] blocks traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Silently drop packets (connects time out): a real partition.
    Drop,
    /// Reject TCP with a reset (connects fail at once).
    Reject,
}

impl CutMode {
    fn rule(self, src: &str, dst: &str) -> Vec<String> {
        let mut r: Vec<String> = ["-s", src, "-d", dst]
            .iter()
            .map(|s| s.to_string())
            .collect();
        match self {
            CutMode::Drop => r.extend(["-j".into(), "DROP".into()]),
            CutMode::Reject => r.extend(
                ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]
                    .iter()
                    .map(|s| s.to_string()),
            ),
        }
        r
    }
}

#[derive(Clone, Copy, Debug)]
struct PgUser {
    uid: u32,
    gid: u32,
}

fn postgres_user() -> Result<PgUser> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == "postgres" {
            return Ok(PgUser {
                uid: f[2].parse().context("uid of postgres")?,
                gid: f[3].parse().context("gid of postgres")?,
            });
        }
    }
    bail!("no postgres user in /etc/passwd (is PostgreSQL installed?)")
}

/// A resolved node of the lab.
struct Node<'a> {
    name: &'a str,
    index: usize,
    addr: Ipv4Addr,
    dir: PathBuf,
}

impl Node<'_> {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    fn conf(&self) -> PathBuf {
        self.dir.join("repmgr.conf")
    }
    fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }
    fn archive(&self) -> PathBuf {
        self.dir.join("config-archive")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn pg_bin(tool: &str) -> String {
    format!("{PG_BIN}/{tool}")
}

/// Poll `check` every 100 ms until it returns `Ok(true)` or `timeout` passes.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("{what}: not reached after {timeout:?}")),
                None => anyhow!("{what}: not reached after {timeout:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run futures concurrently (in the current task) and collect their outputs in order.
pub(crate) async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// A running lab cluster. See the [crate documentation](crate).
pub struct Lab {
    subnet: u8,
    dir: PathBuf,
    nodes: Vec<NodeSpec>,
    pg: PgUser,
    daemons: Mutex<HashMap<String, tokio::process::Child>>,
    created_files: Mutex<Vec<PathBuf>>,
    fw_lock: Arc<Mutex<()>>,
    timings: Mutex<Vec<(String, Duration)>>,
    verbose: bool,
    done: bool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("subnet", &self.subnet)
            .field("dir", &self.dir)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Build the cluster described by `spec` (see the crate docs), after removing leftovers of an
    /// earlier lab in the same directory/subnet. Returns once every standby streams from the
    /// primary and every node's `repmgr.nodes` lists all nodes as active. On error everything
    /// created so far is cleaned up again.
    pub async fn build(spec: LabSpec) -> Result<Lab> {
        ensure_root()?;
        spec.validate()?;
        let started = Instant::now();
        let pg = postgres_user()?;
        let mut dir = spec.lab_dir()?;
        if dir.is_relative() {
            dir = std::env::current_dir()
                .context("current directory")?
                .join(dir);
        }
        let subnet = spec.effective_subnet()?;
        {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || destroy(subnet, &d, &[]))
                .await
                .context("cleanup task failed")?
                .with_context(|| {
                    format!("removing leftovers of an earlier lab in {}", dir.display())
                })?;
        }
        for i in 1..=spec.nodes.len() {
            let ip = node_address(subnet, i);
            for port in [PG_PORT, DAEMON_PORT] {
                let addr = SocketAddr::from((ip, port));
                if let Ok(Ok(_)) = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    bail!(
                        "{addr} is already in use by a process that is not part of a lab in {} \
                         (use another subnet or stop it)",
                        dir.display()
                    );
                }
            }
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(MARKER), format!("primgr-lab subnet {subnet}\n"))
            .with_context(|| format!("writing marker in {}", dir.display()))?;
        let lab = Lab {
            subnet,
            dir,
            nodes: spec.nodes,
            pg,
            daemons: Mutex::new(HashMap::new()),
            created_files: Mutex::new(Vec::new()),
            fw_lock: Arc::new(Mutex::new(())),
            timings: Mutex::new(Vec::new()),
            verbose: std::env::var_os("PRIMGR_LAB_VERBOSE").is_some_and(|v| v != "0"),
            done: false,
        };
        // From here on, an error drops `lab`, which cleans up.
        lab.set_owner(&lab.dir, 0o755)?;
        let probe = Run::new(
            "check that postgres can enter the lab directory",
            ["test".to_string(), "-x".into(), s(&lab.dir)],
        )
        .postgres()
        .timeout(Duration::from_secs(10))
        .output()
        .await?;
        ensure!(
            probe.status.success(),
            "the postgres user cannot enter {}: choose a lab directory whose parents are \
             world-executable (e.g. under /tmp)",
            lab.dir.display()
        );
        lab.setup().await?;
        lab.record("build total", started.elapsed());
        Ok(lab)
    }

    fn record(&self, label: &str, d: Duration) {
        lock(&self.timings).push((label.to_string(), d));
        if self.verbose {
            eprintln!(
                "[primgr-lab {}] {label}: {:.2}s",
                self.subnet,
                d.as_secs_f64()
            );
        }
    }

    async fn step<T>(&self, label: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let t = Instant::now();
        let r = fut.await;
        self.record(label, t.elapsed());
        r
    }

    fn set_owner(&self, path: &Path, mode: u32) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.pg.uid), Some(self.pg.gid))
            .with_context(|| format!("chown postgres {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))
    }

    fn write_pg_file(&self, path: &Path, contents: &str) -> Result<()> {
        std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
        self.set_owner(path, 0o644)
    }

    fn node(&self, name: &str) -> Result<Node<'_>> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| {
                anyhow!(
                    "no node {name:?} in this lab (nodes: {})",
                    self.node_names().join(", ")
                )
            })?;
        Ok(Node {
            name: &self.nodes[i].name,
            index: i + 1,
            addr: node_address(self.subnet, i + 1),
            dir: self.dir.join(&self.nodes[i].name),
        })
    }

    fn primary_spec(&self) -> Result<Node<'_>> {
        let first = self.nodes.first().ok_or_else(|| anyhow!("empty lab"))?;
        self.node(&first.name)
    }

    fn repmgr_conf(&self, n: &Node<'_>, location: &str) -> String {
        let pg_ctl = pg_bin("pg_ctl");
        let data = s(&n.data());
        let log = s(&n.log());
        format!(
            "node_id={id}\n\
             node_name='{name}'\n\
             conninfo='host={addr} port={PG_PORT} user=repmgr dbname=repmgr connect_timeout=2'\n\
             data_directory='{data}'\n\
             location='{location}'\n\
             pg_bindir='{PG_BIN}'\n\
             repmgr_bindir='{PG_BIN}'\n\
             replication_user='repmgr'\n\
             use_replication_slots=no\n\
             repmgrd_pid_file='{pidfile}'\n\
             service_start_command='{pg_ctl} -D {data} -l {log} -w -t 60 start'\n\
             service_stop_command='{pg_ctl} -D {data} -m fast -w -t 60 stop'\n\
             service_restart_command='{pg_ctl} -D {data} -l {log} -m fast -w -t 60 restart'\n\
             service_reload_command='{pg_ctl} -D {data} reload'\n",
            id = n.index,
            name = n.name,
            addr = n.addr,
            pidfile = s(&n.dir.join("repmgrd.pid")),
        )
    }

    fn write_node_conf(&self, n: &Node<'_>) -> Result<()> {
        let conf = format!(
            "# written by primgr-lab after every clone/rewind (not copied between nodes)\n\
             listen_addresses = '{addr}'\n\
             port = {PG_PORT}\n\
             unix_socket_directories = '{sock}'\n\
             cluster_name = '{name}'\n",
            addr = n.addr,
            sock = s(&n.sock()),
            name = n.name,
        );
        self.write_pg_file(&n.data().join("node.conf"), &conf)
    }

    fn psql_run(&self, n: &Node<'_>, db: &str, sql: &str, timeout: Duration) -> Run {
        Run::new(
            format!("psql on {}", n.name),
            [
                pg_bin("psql"),
                "-X".into(),
                "-A".into(),
                "-t".into(),
                "-q".into(),
                "-v".into(),
                "ON_ERROR_STOP=1".into(),
                "-h".into(),
                s(&n.sock()),
                "-p".into(),
                PG_PORT.to_string(),
                "-U".into(),
                "postgres".into(),
                "-d".into(),
                db.into(),
                "-c".into(),
                sql.into(),
            ],
        )
        .postgres()
        .cwd(&self.dir)
        .env("PGCONNECT_TIMEOUT", timeout.as_secs().max(2).to_string())
        .timeout(timeout)
        .log(&n.log())
    }

    async fn psql_in(
        &self,
        n: &Node<'_>,
        db: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.psql_run(n, db, sql, timeout).run().await
    }

    fn repmgr(&self, n: &Node<'_>, args: &[String]) -> Run {
        let mut argv = vec![pg_bin("repmgr"), "-f".into(), s(&n.conf())];
        argv.extend(args.iter().cloned());
        let what = args
            .iter()
            .filter(|a| !a.starts_with('-'))
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        Run::new(format!("repmgr {what} on {}", n.name), argv)
            .postgres()
            .cwd(&self.dir)
            .log(&n.log())
            .timeout(T_REPMGR)
    }

    async fn pg_start(&self, n: &Node<'_>) -> Result<()> {
        self.pg_ctl(n, "start", &["-l".into(), s(&n.log())]).await
    }

    async fn pg_stop(&self, n: &Node<'_>, mode: StopMode) -> Result<()> {
        self.pg_ctl(n, "stop", &["-m".into(), mode.arg().into()])
            .await
    }

    /// `pg_ctl -D <data> <options> -w -t 60 <action>` as postgres, logged to the node's log.
    async fn pg_ctl(&self, n: &Node<'_>, action: &str, options: &[String]) -> Result<()> {
        let mut argv = vec![pg_bin("pg_ctl"), "-D".into(), s(&n.data())];
        argv.extend(options.iter().cloned());
        argv.extend(["-w".into(), "-t".into(), "60".into(), action.into()]);
        let what = match options {
            [flag, mode] if flag == "-m" => format!("pg_ctl {action} -m {mode} {}", n.name),
            _ => format!("pg_ctl {action} {}", n.name),
        };
        Run::new(what, argv)
            .postgres()
            .cwd(&self.dir)
            .log(&n.log())
            .timeout(T_PG_CTL)
            .run()
            .await
            .map(drop)
    }

    async fn setup(&self) -> Result<()> {
        for ns in &self.nodes {
            let n = self.node(&ns.name)?;
            for d in [n.dir.clone(), n.sock(), n.archive()] {
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                self.set_owner(&d, 0o755)?;
            }
            self.write_pg_file(&n.conf(), &self.repmgr_conf(&n, &ns.location))?;
        }
        let p = self.primary_spec()?;
        self.step(&format!("initdb {}", p.name), self.init_primary(&p))
            .await?;
        self.step(&format!("start {}", p.name), self.pg_start(&p))
            .await?;
        self.step(&format!("register {}", p.name), async {
            self.psql_in(
                &p,
                "postgres",
                "CREATE ROLE repmgr SUPERUSER REPLICATION LOGIN",
                T_PSQL,
            )
            .await?;
            self.psql_in(
                &p,
                "postgres",
                "CREATE DATABASE repmgr OWNER repmgr",
                T_PSQL,
            )
            .await?;
            self.repmgr(&p, &["primary".into(), "register".into()])
                .run()
                .await
        })
        .await?;
        let standbys: Vec<&str> = self.nodes[1..].iter().map(|n| n.name.as_str()).collect();
        let results = join_all(
            standbys
                .iter()
                .map(|name| self.setup_standby(name))
                .collect(),
        )
        .await;
        for r in results {
            r?;
        }
        let t = Instant::now();
        for r in join_all(standbys.iter().map(|n| self.wait_streaming(n)).collect()).await {
            r?;
        }
        let total = self.nodes.len();
        for r in join_all(
            self.nodes
                .iter()
                .map(|ns| self.wait_metadata_complete(&ns.name, total))
                .collect(),
        )
        .await
        {
            r?;
        }
        self.record("wait streaming + metadata", t.elapsed());
        Ok(())
    }

    async fn wait_metadata_complete(&self, node: &str, total: usize) -> Result<()> {
        let want = total.to_string();
        wait_for(
            &format!("{node}: repmgr.nodes lists all {total} nodes as active"),
            T_WAIT,
            || async {
                Ok(self
                    .psql(node, "SELECT count(*) FROM repmgr.nodes WHERE active")
                    .await?
                    == want)
            },
        )
        .await
    }

    async fn init_primary(&self, p: &Node<'_>) -> Result<()> {
        Run::new(
            format!("initdb {}", p.name),
            [
                pg_bin("initdb"),
                "-D".into(),
                s(&p.data()),
                "-U".into(),
                "postgres".into(),
                "-A".into(),
                "trust".into(),
                "--no-locale".into(),
                "-E".into(),
                "UTF8".into(),
                "--no-sync".into(),
                "--data-checksums".into(),
                "--wal-segsize=1".into(),
            ],
        )
        .postgres()
        .cwd(&self.dir)
        .timeout(T_INITDB)
        .run()
        .await?;
        let conf_path = p.data().join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .with_context(|| format!("opening {}", conf_path.display()))?;
        f.write_all(
            b"\n# ---- primgr-lab (shared by all nodes; node specifics in node.conf) ----\n\
              wal_level = replica\n\
              max_wal_senders = 16\n\
              hot_standby = on\n\
              wal_keep_size = '128MB'\n\
              min_wal_size = '8MB'\n\
              max_wal_size = '64MB'\n\
              wal_log_hints = on\n\
              fsync = off\n\
              shared_buffers = '32MB'\n\
              max_connections = 50\n\
              wal_retrieve_retry_interval = '1s'\n\
              log_line_prefix = '%m [%p] %q%u@%d '\n\
              include 'node.conf'\n",
        )
        .with_context(|| format!("writing {}", conf_path.display()))?;
        self.write_pg_file(
            &p.data().join("pg_hba.conf"),
            "# primgr-lab: trust everything local (tests only)\n\
             local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.0/8 trust\n\
             host replication all 127.0.0.0/8 trust\n",
        )?;
        self.set_owner(&p.data().join("pg_hba.conf"), 0o600)?;
        self.write_node_conf(p)
    }

    async fn setup_standby(&self, name: &str) -> Result<()> {
        let n = self.node(name)?;
        let p = self.primary_spec()?;
        self.step(
            &format!("clone {name}"),
            self.repmgr(
                &n,
                &[
                    "-h".into(),
                    p.addr.to_string(),
                    "-U".into(),
                    "repmgr".into(),
                    "-d".into(),
                    "repmgr".into(),
                    "--fast-checkpoint".into(),
                    "standby".into(),
                    "clone".into(),
                ],
            )
            .log(&p.log())
            .timeout(T_CLONE)
            .run(),
        )
        .await?;
        self.write_node_conf(&n)?;
        self.step(&format!("start {name}"), self.pg_start(&n))
            .await?;
        self.step(
            &format!("register {name}"),
            self.repmgr(&n, &["standby".into(), "register".into()])
                .run(),
        )
        .await?;
        Ok(())
    }

    // ---------------------------------------------------------------- accessors

    /// The subnet (third address octet) of this lab: the spec's, shifted by
    /// `PRIMGR_LAB_SUBNET_SHIFT` ([`lab_subnet`]).
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node names in spec order (the first one was the initial primary).
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// repmgr `location` of a node.
    pub fn location(&self, node: &str) -> Result<String> {
        let n = self.node(node)?;
        Ok(self.nodes[n.index - 1].location.clone())
    }

    /// Address of a node (`127.0.<subnet>.<10+N>`).
    ///
    /// # Panics
    /// If there is no such node (a programming error in the test); see [`Lab::try_addr`].
    pub fn addr(&self, node: &str) -> Ipv4Addr {
        match self.try_addr(node) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    /// Address of a node, or an error for an unknown name.
    pub fn try_addr(&self, node: &str) -> Result<Ipv4Addr> {
        Ok(self.node(node)?.addr)
    }

    /// `host=127.0.X.1N port=5432 dbname=repmgr user=repmgr`.
    ///
    /// # Panics
    /// If there is no such node.
    pub fn conninfo(&self, node: &str) -> String {
        format!(
            "host={} port={PG_PORT} dbname=repmgr user=repmgr",
            self.addr(node)
        )
    }

    /// Where the node's daemon listens: `127.0.X.1N:5999`.
    ///
    /// # Panics
    /// If there is no such node.
    pub fn daemon_addr(&self, node: &str) -> SocketAddr {
        SocketAddr::from((self.addr(node), DAEMON_PORT))
    }

    /// Data directory of a node.
    pub fn data_dir(&self, node: &str) -> Result<PathBuf> {
        Ok(self.node(node)?.data())
    }

    /// The node's `repmgr.conf`.
    pub fn repmgr_conf_path(&self, node: &str) -> Result<PathBuf> {
        Ok(self.node(node)?.conf())
    }

    /// The node's PostgreSQL log file.
    pub fn node_log(&self, node: &str) -> Result<PathBuf> {
        Ok(self.node(node)?.log())
    }

    /// The node's unix socket directory.
    pub fn socket_dir(&self, node: &str) -> Result<PathBuf> {
        Ok(self.node(node)?.sock())
    }

    /// Log file (stdout + stderr) of the node's daemon.
    pub fn daemon_log(&self, node: &str) -> Result<PathBuf> {
        self.node(node)?;
        Ok(self.dir.join(format!("daemon-{node}.log")))
    }

    fn daemon_pid_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("daemon-{node}.pid"))
    }

    /// Durations of the build steps (and "build total").
    pub fn timings(&self) -> Vec<(String, Duration)> {
        lock(&self.timings).clone()
    }

    // ---------------------------------------------------------------- node control

    /// Whether the node's postmaster is running (frozen counts as running).
    pub fn is_running(&self, node: &str) -> bool {
        self.node(node)
            .ok()
            .and_then(|n| procs::postmaster_pid(&n.data()))
            .is_some()
    }

    /// Whether the node's postmaster is stopped by SIGSTOP.
    pub fn is_frozen(&self, node: &str) -> bool {
        self.node(node)
            .ok()
            .and_then(|n| procs::postmaster_pid(&n.data()))
            .is_some_and(procs::stopped)
    }

    /// Pid of the node's running postmaster.
    pub fn postmaster_pid(&self, node: &str) -> Option<i32> {
        self.node(node)
            .ok()
            .and_then(|n| procs::postmaster_pid(&n.data()))
    }

    /// Stop the node (`pg_ctl stop -m immediate|fast -w`). Thaws it first; does nothing if it
    /// is not running.
    pub async fn stop(&self, node: &str, mode: StopMode) -> Result<()> {
        let n = self.node(node)?;
        self.thaw(node).await?;
        if procs::postmaster_pid(&n.data()).is_none() {
            return Ok(());
        }
        self.pg_stop(&n, mode).await
    }

    /// Start the node (`pg_ctl start -w`: returns once it accepts connections). Does nothing if
    /// it is running.
    pub async fn start(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        if procs::postmaster_pid(&n.data()).is_some() {
            return Ok(());
        }
        self.pg_start(&n).await
    }

    /// `repmgr standby promote` on the node; returns once it is out of recovery.
    pub async fn promote(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        self.repmgr(&n, &["standby".into(), "promote".into()])
            .run()
            .await?;
        wait_for(&format!("{node} out of recovery"), T_WAIT, || async {
            Ok(!self.in_recovery(node).await?)
        })
        .await
    }

    /// `repmgr standby follow` on the node (follows the current primary); returns once it streams.
    pub async fn follow(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        self.repmgr(&n, &["standby".into(), "follow".into()])
            .run()
            .await?;
        self.wait_streaming(node).await
    }

    /// Turn the (old primary) node into a standby of `new_primary`: stop it (fast) if running,
    /// `CHECKPOINT` on `new_primary`, then `repmgr node rejoin -d '<conninfo of new_primary>'
    /// --force-rewind --config-files=node.conf --config-archive-dir=...`. Returns once the node
    /// streams.
    pub async fn rejoin(&self, node: &str, new_primary: &str) -> Result<()> {
        let n = self.node(node)?;
        let p = self.node(new_primary)?;
        self.stop(node, StopMode::Fast).await?;
        self.psql_in(&p, "postgres", "CHECKPOINT", T_WAIT).await?;
        let before = rejoin_logs();
        let r = self
            .repmgr(
                &n,
                &[
                    "node".into(),
                    "rejoin".into(),
                    "-d".into(),
                    format!("{} connect_timeout=2", self.conninfo(new_primary)),
                    "--force-rewind".into(),
                    "--config-files=node.conf".into(),
                    format!("--config-archive-dir={}", s(&n.archive())),
                ],
            )
            .timeout(T_REJOIN)
            .run()
            .await;
        let new: Vec<PathBuf> = rejoin_logs()
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        lock(&self.created_files).extend(new);
        r?;
        if !self.is_running(node) {
            self.pg_start(&n).await?;
        }
        self.wait_streaming(node).await
    }

    /// SIGSTOP the node's postmaster and all its children (a hung database: connections and
    /// queries hang; TCP connects still succeed).
    pub async fn freeze(&self, node: &str) -> Result<()> {
        let pm = self.running_postmaster(node)?;
        procs::signal(pm, libc::SIGSTOP);
        for c in procs::children(pm) {
            procs::signal(c, libc::SIGSTOP);
        }
        Ok(())
    }

    /// SIGSTOP only the postmaster: existing sessions keep working, new connections hang.
    pub async fn freeze_postmaster(&self, node: &str) -> Result<()> {
        let pm = self.running_postmaster(node)?;
        procs::signal(pm, libc::SIGSTOP);
        Ok(())
    }

    /// SIGCONT the postmaster and all its children. Does nothing if the node is not running.
    pub async fn thaw(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        if let Some(pm) = procs::postmaster_pid(&n.data()) {
            procs::signal(pm, libc::SIGCONT);
            for c in procs::children(pm) {
                procs::signal(c, libc::SIGCONT);
            }
        }
        Ok(())
    }

    fn running_postmaster(&self, node: &str) -> Result<i32> {
        let n = self.node(node)?;
        procs::postmaster_pid(&n.data()).ok_or_else(|| anyhow!("{node} is not running"))
    }

    // ---------------------------------------------------------------- SQL

    /// Run SQL on the node (database `repmgr`, as `postgres`, through its unix socket, `psql
    /// -XAt`, 15 s timeout); returns trimmed stdout (rows separated by newlines, columns by `|`).
    pub async fn psql(&self, node: &str, sql: &str) -> Result<String> {
        self.psql_timeout(node, sql, T_PSQL).await
    }

    /// [`Lab::psql`] with a timeout (the psql process is killed when it passes).
    pub async fn psql_timeout(&self, node: &str, sql: &str, timeout: Duration) -> Result<String> {
        let n = self.node(node)?;
        self.psql_in(&n, "repmgr", sql, timeout).await
    }

    /// [`Lab::psql`] in another database.
    pub async fn psql_db(&self, node: &str, db: &str, sql: &str) -> Result<String> {
        let n = self.node(node)?;
        self.psql_in(&n, db, sql, T_PSQL).await
    }

    /// `pg_is_in_recovery()` of the node.
    pub async fn in_recovery(&self, node: &str) -> Result<bool> {
        match self
            .psql(node, "SELECT pg_is_in_recovery()")
            .await?
            .as_str()
        {
            "t" => Ok(true),
            "f" => Ok(false),
            other => bail!("unexpected pg_is_in_recovery() on {node}: {other:?}"),
        }
    }

    /// Whether the node is a standby whose WAL receiver is streaming.
    pub async fn is_streaming(&self, node: &str) -> Result<bool> {
        Ok(self
            .psql(
                node,
                "SELECT pg_is_in_recovery() AND EXISTS \
                 (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')",
            )
            .await?
            == "t")
    }

    /// Wait (up to 60 s) until the node is a standby whose WAL receiver is streaming.
    pub async fn wait_streaming(&self, node: &str) -> Result<()> {
        self.wait_streaming_timeout(node, T_WAIT).await
    }

    /// [`Lab::wait_streaming`] with a timeout.
    pub async fn wait_streaming_timeout(&self, node: &str, timeout: Duration) -> Result<()> {
        let n = self.node(node)?;
        wait_for(&format!("{node} streaming"), timeout, || {
            self.is_streaming(node)
        })
        .await
        .map_err(|e| {
            e.context(format!(
                "--- tail of {} ---\n{}",
                n.log().display(),
                log_tail(&n.log(), 20)
            ))
        })
    }

    /// The primary according to the node's own `repmgr.nodes`:
    /// `SELECT node_name FROM repmgr.nodes WHERE type='primary' AND active` (the first by
    /// node_id if several; `None` if none).
    pub async fn primary_in_metadata(&self, node: &str) -> Result<Option<String>> {
        let out = self
            .psql(
                node,
                "SELECT node_name FROM repmgr.nodes WHERE type = 'primary' AND active \
                 ORDER BY node_id",
            )
            .await?;
        Ok(out.lines().next().map(|l| l.trim().to_string()))
    }

    // ---------------------------------------------------------------- network faults

    async fn fw<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&str) -> Result<T> + Send + 'static,
    {
        let chain = chain_name(self.subnet);
        let l = self.fw_lock.clone();
        tokio::task::spawn_blocking(move || {
            let _g = lock(&l);
            f(&chain)
        })
        .await
        .context("iptables task failed")?
    }

    /// Drop all packets between the two nodes' addresses, both directions (iptables DROP in the
    /// lab's chain). Only affects connections whose source is bound to a node address.
    pub async fn cut(&self, a: &str, b: &str) -> Result<()> {
        self.cut_with(a, b, CutMode::Drop).await
    }

    /// [`Lab::cut`] choosing DROP or TCP-reset REJECT.
    pub async fn cut_with(&self, a: &str, b: &str, mode: CutMode) -> Result<()> {
        let (x, y) = (self.try_addr(a)?.to_string(), self.try_addr(b)?.to_string());
        self.fw(move |chain| {
            firewall::ensure_chain(chain)?;
            for (src, dst) in [(&x, &y), (&y, &x)] {
                let rule = mode.rule(src, dst);
                firewall::add_rule(chain, &rule.iter().map(String::as_str).collect::<Vec<_>>())?;
            }
            Ok(())
        })
        .await
    }

    /// Remove the cut between the two nodes (both directions, DROP and REJECT rules).
    pub async fn heal(&self, a: &str, b: &str) -> Result<()> {
        let (x, y) = (self.try_addr(a)?.to_string(), self.try_addr(b)?.to_string());
        self.fw(move |chain| {
            for (src, dst) in [(&x, &y), (&y, &x)] {
                for mode in [CutMode::Drop, CutMode::Reject] {
                    let rule = mode.rule(src, dst);
                    firewall::delete_rule(
                        chain,
                        &rule.iter().map(String::as_str).collect::<Vec<_>>(),
                    )?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Remove every rule of the lab's chain.
    pub async fn heal_all(&self) -> Result<()> {
        self.fw(firewall::flush).await
    }

    /// Add an arbitrary rule to the lab's chain, e.g. `["-d", "127.0.77.11", "-p", "tcp",
    /// "--dport", "5432", "-j", "DROP"]` (cuts a database for clients that do not bind).
    /// Removed by [`Lab::heal_all`], [`Lab::remove_rule`] and teardown.
    pub async fn add_rule(&self, rule: &[&str]) -> Result<()> {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        self.fw(move |chain| {
            firewall::ensure_chain(chain)?;
            firewall::add_rule(chain, &rule.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
    }

    /// Remove a rule added with [`Lab::add_rule`].
    pub async fn remove_rule(&self, rule: &[&str]) -> Result<()> {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        self.fw(move |chain| {
            firewall::delete_rule(chain, &rule.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
    }

    /// `iptables -S <lab chain>` (empty if the chain does not exist yet).
    pub async fn firewall_rules(&self) -> Result<Vec<String>> {
        self.fw(firewall::list).await
    }

    // ---------------------------------------------------------------- daemons

    /// Start a primgr daemon for the node:
    /// `<primgr_bin> --node-name <node> --listen 127.0.X.1N:5999 --conninfo "host=127.0.X.1N
    /// port=5432 dbname=repmgr user=repmgr application_name=primgr" --source-address 127.0.X.1N
    /// <extra_args>`, stdout and stderr appended to [`Lab::daemon_log`]. Returns once spawned
    /// (see [`Lab::wait_daemon_ready`]). Killed by [`Lab::stop_daemon`], teardown and `Drop`.
    pub async fn spawn_daemon(
        &self,
        node: &str,
        primgr_bin: &Path,
        extra_args: &[String],
    ) -> Result<()> {
        let n = self.node(node)?;
        if self.daemon_running(node) {
            bail!("a daemon for {node} is already running");
        }
        ensure!(
            primgr_bin.is_file(),
            "primgr binary {} does not exist (build it first)",
            primgr_bin.display()
        );
        let listen = self.daemon_addr(node).to_string();
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            node.into(),
            "--listen".into(),
            listen.clone(),
            "--conninfo".into(),
            format!(
                "host={} port={PG_PORT} dbname=repmgr user=repmgr application_name=primgr",
                n.addr
            ),
            "--source-address".into(),
            n.addr.to_string(),
        ];
        args.extend(extra_args.iter().cloned());
        let log_path = self.daemon_log(node)?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(
            log,
            "==== primgr-lab: starting {} {}",
            primgr_bin.display(),
            args.join(" ")
        )
        .with_context(|| format!("writing {}", log_path.display()))?;
        let err = log.try_clone().context("duplicating log file handle")?;
        let mut cmd = tokio::process::Command::new(primgr_bin);
        cmd.args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", primgr_bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("daemon for {node} exited at once"))?;
        std::fs::write(self.daemon_pid_file(node), format!("{pid}\n{listen}\n"))
            .context("writing daemon pid file")?;
        lock(&self.daemons).insert(node.to_string(), child);
        Ok(())
    }

    /// Whether the node's daemon (spawned by this lab) is still running.
    pub fn daemon_running(&self, node: &str) -> bool {
        let mut d = lock(&self.daemons);
        match d.get_mut(node) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Pid of the node's daemon, if running.
    pub fn daemon_pid(&self, node: &str) -> Option<u32> {
        let mut d = lock(&self.daemons);
        let c = d.get_mut(node)?;
        match c.try_wait() {
            Ok(None) => c.id(),
            _ => None,
        }
    }

    /// Wait until the node's daemon accepts TCP connections on its listen address; fails early
    /// (with the log tail) if the daemon exits.
    pub async fn wait_daemon_ready(&self, node: &str, timeout: Duration) -> Result<()> {
        let addr = self.daemon_addr(node);
        let log = self.daemon_log(node)?;
        wait_for(
            &format!("daemon of {node} listening on {addr}"),
            timeout,
            || async {
                if !self.daemon_running(node) {
                    bail!(
                        "daemon of {node} is not running\n--- tail of {} ---\n{}",
                        log.display(),
                        log_tail(&log, 20)
                    );
                }
                Ok(matches!(
                    tokio::time::timeout(
                        Duration::from_millis(300),
                        tokio::net::TcpStream::connect(addr)
                    )
                    .await,
                    Ok(Ok(_))
                ))
            },
        )
        .await
    }

    /// Stop the node's daemon: SIGTERM, then SIGKILL after 5 s. Does nothing if none runs.
    pub async fn stop_daemon(&self, node: &str) -> Result<()> {
        self.node(node)?;
        let child = lock(&self.daemons).remove(node);
        if let Some(mut child) = child {
            let pid = child.id().map(|p| p as i32);
            if let Some(pid) = pid {
                // The daemon leads its own process group: signal the group.
                procs::signal_group(pid, libc::SIGCONT);
                procs::signal_group(pid, libc::SIGTERM);
            }
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(r) => {
                    r.with_context(|| format!("waiting for daemon of {node}"))?;
                }
                Err(_) => {
                    if let Some(pid) = pid {
                        procs::signal_group(pid, libc::SIGKILL);
                    }
                    child
                        .kill()
                        .await
                        .with_context(|| format!("killing daemon of {node}"))?;
                }
            }
            if let Some(pid) = pid {
                // Whatever the daemon forked.
                procs::signal_group(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(self.daemon_pid_file(node));
        Ok(())
    }

    /// SIGSTOP the node's daemon (a hung daemon).
    pub async fn freeze_daemon(&self, node: &str) -> Result<()> {
        let pid = self
            .daemon_pid(node)
            .ok_or_else(|| anyhow!("no daemon running for {node}"))?;
        procs::signal(pid as i32, libc::SIGSTOP);
        Ok(())
    }

    /// SIGCONT the node's daemon.
    pub async fn thaw_daemon(&self, node: &str) -> Result<()> {
        if let Some(pid) = self.daemon_pid(node) {
            procs::signal(pid as i32, libc::SIGCONT);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- teardown

    /// Stop daemons and all nodes, remove the lab's iptables chain, the lab directory and the
    /// rejoin log files. (`Drop` does the same if this was not called.)
    pub async fn teardown(mut self) -> Result<()> {
        let mut errs = Vec::new();
        let names: Vec<String> = lock(&self.daemons).keys().cloned().collect();
        for n in names {
            if let Err(e) = self.stop_daemon(&n).await {
                errs.push(format!("{e:#}"));
            }
        }
        let (subnet, dir) = (self.subnet, self.dir.clone());
        let files = lock(&self.created_files).clone();
        let r = tokio::task::spawn_blocking(move || destroy(subnet, &dir, &files))
            .await
            .context("teardown task failed")?;
        self.done = true;
        if let Err(e) = r {
            errs.push(format!("{e:#}"));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("teardown of lab {}: {}", self.subnet, errs.join("\n"))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if std::env::var_os("PRIMGR_LAB_KEEP").is_some_and(|v| v != "0") {
            eprintln!(
                "primgr-lab: PRIMGR_LAB_KEEP set, leaving lab {} running in {} \
                 (remove it with `primgr-lab down --subnet {}`)",
                self.subnet,
                self.dir.display(),
                self.subnet
            );
            // Detach the daemons so they survive too.
            for (_, c) in lock(&self.daemons).drain() {
                std::mem::forget(c);
            }
            return;
        }
        let files = lock(&self.created_files).clone();
        if let Err(e) = destroy(self.subnet, &self.dir, &files) {
            eprintln!(
                "primgr-lab: cleanup of lab {} ({}) incomplete: {e:#}",
                self.subnet,
                self.dir.display()
            );
        }
    }
}

/// `/tmp/node-rejoin.*.log` files (written by repmgr rejoin/switchover).
fn rejoin_logs() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name().to_str()?.to_string();
        (name.starts_with("node-rejoin.") && name.ends_with(".log")).then(|| e.path())
    })
    .collect()
}

/// Remove what a lab built for `subnet` left behind in `dir` (default [`default_dir`]): daemons
/// and postmasters found through the pid files in the directory (SIGTERM/immediate shutdown,
/// then SIGKILL), the lab's iptables chain and the directory itself. `subnet` is the requested
/// one, like [`LabSpec::subnet`]: it is shifted by `PRIMGR_LAB_SUBNET_SHIFT` ([`lab_subnet`]).
/// Synchronous; needs root. A directory without the lab's marker file is never deleted.
pub fn destroy_leftovers(subnet: u8, dir: Option<&Path>) -> Result<()> {
    ensure_root()?;
    let subnet = lab_subnet(subnet)?;
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_dir(subnet));
    destroy(subnet, &dir, &[])
}

fn destroy(subnet: u8, dir: &Path, extra_files: &[PathBuf]) -> Result<()> {
    let mut errs: Vec<String> = Vec::new();
    if dir.exists() {
        kill_daemons(dir);
        if let Err(e) = stop_postmasters(dir) {
            errs.push(format!("{e:#}"));
        }
    }
    if let Err(e) = firewall::remove_chain(&chain_name(subnet)) {
        errs.push(format!("{e:#}"));
    }
    if dir.exists() {
        let empty = std::fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_none());
        if dir.join(MARKER).exists() || empty {
            let mut last = None;
            for _ in 0..20 {
                match std::fs::remove_dir_all(dir) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(e) = last {
                errs.push(format!("removing {}: {e}", dir.display()));
            }
        } else {
            errs.push(format!(
                "refusing to delete {}: not empty and not a primgr-lab directory (no {MARKER})",
                dir.display()
            ));
        }
    }
    for f in extra_files {
        let _ = std::fs::remove_file(f);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        bail!(errs.join("\n"))
    }
}

fn kill_daemons(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut pids = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("daemon-") && name.ends_with(".pid")) {
            continue;
        }
        let Ok(content) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut lines = content.lines();
        let (Some(pid), Some(listen)) = (
            lines.next().and_then(|l| l.trim().parse::<i32>().ok()),
            lines.next(),
        ) else {
            continue;
        };
        // Only signal the process if it is still the daemon we started.
        if procs::alive(pid) && procs::cmdline(pid).is_some_and(|c| c.contains(listen.trim())) {
            // The daemon leads its own process group: signal the group.
            procs::signal_group(pid, libc::SIGCONT);
            procs::signal_group(pid, libc::SIGTERM);
            pids.push(pid);
        }
    }
    procs::wait_gone(&pids, Duration::from_secs(5));
    for &pid in &pids {
        procs::signal_group(pid, libc::SIGKILL);
    }
    procs::wait_gone(&pids, Duration::from_secs(2));
}

fn stop_postmasters(dir: &Path) -> Result<()> {
    let mut pms = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Some(pm) = procs::postmaster_pid(&e.path().join("data")) {
                pms.push(pm);
            }
        }
    }
    // Immediate shutdown, like `pg_ctl stop -m immediate`, for all nodes at once.
    for &pm in &pms {
        procs::signal(pm, libc::SIGCONT);
        for c in procs::children(pm) {
            procs::signal(c, libc::SIGCONT);
        }
        procs::signal(pm, libc::SIGQUIT);
    }
    for pm in procs::wait_gone(&pms, Duration::from_secs(15)) {
        for c in procs::children(pm) {
            procs::signal(c, libc::SIGKILL);
        }
        procs::signal(pm, libc::SIGKILL);
    }
    // Orphaned backends (e.g. of a postmaster killed earlier).
    let stragglers = procs::postgres_processes_under(dir);
    for &p in &stragglers {
        procs::signal(p, libc::SIGCONT);
        procs::signal(p, libc::SIGKILL);
    }
    let mut all = pms;
    all.extend(stragglers);
    let left = procs::wait_gone(&all, Duration::from_secs(5));
    ensure!(
        left.is_empty(),
        "postgres processes of {} still alive: {left:?}",
        dir.display()
    );
    Ok(())
}

/// Pids of live `postgres` processes whose working directory is inside `dir` (all processes of a
/// lab's postmasters; empty after teardown).
pub fn postgres_processes_in(dir: &Path) -> Vec<i32> {
    procs::postgres_processes_under(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_shift_stays_in_1_to_254() {
        assert_eq!(shift_subnet(51, 0), 51);
        assert_eq!(shift_subnet(51, 100), 151);
        assert_eq!(shift_subnet(200, 100), 46);
        assert_eq!(shift_subnet(254, 1), 1);
        assert_eq!(shift_subnet(1, 253), 254);
        assert_eq!(shift_subnet(7, 254), 7);
        for s in 1..=254u8 {
            for n in [0, 1, 100, 253, 254, 1000] {
                assert!((1..=254).contains(&shift_subnet(s, n)), "{s} + {n}");
            }
        }
    }
}
