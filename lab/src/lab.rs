//! The [`Lab`] value: what a built lab holds (its subnet, directory, nodes, repmgrd, timings),
//! how a node name resolves to its address and paths ([`Node`]), the public accessors, and the
//! small helpers every room uses (ownership of files for `postgres`, timed steps).

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::spec::{DAEMON_PORT, NodeSpec, PG_BIN, PG_PORT, node_address};

#[derive(Clone, Copy, Debug)]
pub(crate) struct PgUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// A resolved node of the lab: its name, 1-based position (= repmgr `node_id`), address and
/// directory `<lab dir>/<name>/`.
pub(crate) struct Node<'a> {
    pub(crate) name: &'a str,
    pub(crate) index: usize,
    pub(crate) addr: Ipv4Addr,
    pub(crate) dir: PathBuf,
}

impl Node<'_> {
    pub(crate) fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub(crate) fn conf(&self) -> PathBuf {
        self.dir.join("repmgr.conf")
    }
    pub(crate) fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }
    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }
    pub(crate) fn archive(&self) -> PathBuf {
        self.dir.join("config-archive")
    }
    /// Log of repmgrd and of the promote/follow commands it runs (`log_file` of repmgr.conf).
    pub(crate) fn repmgrd_log(&self) -> PathBuf {
        self.dir.join("repmgrd.log")
    }
}

/// Locks a mutex, also when a panicking holder poisoned it (the data is still consistent:
/// every holder only pushes or removes whole entries).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A path as a command-line argument.
pub(crate) fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Path of a PostgreSQL/repmgr binary.
pub(crate) fn pg_bin(tool: &str) -> String {
    format!("{PG_BIN}/{tool}")
}

/// Bound on one `psql` of the lab (the process is killed when it passes).
pub(crate) const T_PSQL: Duration = Duration::from_secs(15);
/// Bound on the lab's waits for a state (streaming, out of recovery, metadata complete).
pub(crate) const T_WAIT: Duration = Duration::from_secs(60);

/// Name of the lab's marker file: a directory holding it may be deleted by the cleanup.
pub(crate) const MARKER: &str = ".primgr-lab";

/// A running lab cluster. See the [crate documentation](crate).
pub struct Lab {
    /// The effective subnet (after the shift).
    pub(crate) subnet: u8,
    pub(crate) dir: PathBuf,
    /// Every node in `node_id` order: the spec's nodes, then the witness.
    pub(crate) nodes: Vec<NodeSpec>,
    /// Name of the witness, if the spec has one (the last of `nodes`).
    pub(crate) witness: Option<String>,
    /// Whether the nodes were built for repmgrd.
    pub(crate) repmgrd: bool,
    pub(crate) pg: PgUser,
    /// repmgrd processes by node name (`repmgrd.rs`).
    pub(crate) repmgrds: Mutex<HashMap<String, tokio::process::Child>>,
    /// Files outside the lab directory that the lab caused (removed at teardown).
    pub(crate) created_files: Mutex<Vec<PathBuf>>,
    /// Serialises the lab's iptables changes.
    pub(crate) fw_lock: Arc<Mutex<()>>,
    pub(crate) timings: Mutex<Vec<(String, Duration)>>,
    pub(crate) verbose: bool,
    /// Set by a successful teardown: `Drop` has nothing left to do.
    pub(crate) done: bool,
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
    pub(crate) fn record(&self, label: &str, d: Duration) {
        lock(&self.timings).push((label.to_string(), d));
        if self.verbose {
            eprintln!(
                "[primgr-lab {}] {label}: {:.2}s",
                self.subnet,
                d.as_secs_f64()
            );
        }
    }

    pub(crate) async fn step<T>(
        &self,
        label: &str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let t = Instant::now();
        let r = fut.await;
        self.record(label, t.elapsed());
        r
    }

    pub(crate) fn set_owner(&self, path: &Path, mode: u32) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.pg.uid), Some(self.pg.gid))
            .with_context(|| format!("chown postgres {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))
    }

    pub(crate) fn write_pg_file(&self, path: &Path, contents: &str) -> Result<()> {
        std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
        self.set_owner(path, 0o644)
    }

    pub(crate) fn node(&self, name: &str) -> Result<Node<'_>> {
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

    pub(crate) fn primary_spec(&self) -> Result<Node<'_>> {
        let first = self.nodes.first().ok_or_else(|| anyhow!("empty lab"))?;
        self.node(&first.name)
    }

    /// The subnet (third address octet) of this lab: the spec's, shifted by
    /// `PRIMGR_LAB_SUBNET_SHIFT` ([`lab_subnet`](crate::lab_subnet)).
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node names in `node_id` order: the spec's nodes (the first one was the initial
    /// primary), then the witness if there is one.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The names of the nodes that replicate (every node but the witness).
    pub fn data_nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| Some(&n.name) != self.witness.as_ref())
            .map(|n| n.name.clone())
            .collect()
    }

    /// The witness's name, if the lab has one.
    pub fn witness(&self) -> Option<&str> {
        self.witness.as_deref()
    }

    /// Whether `node` is the lab's witness.
    pub fn is_witness(&self, node: &str) -> bool {
        self.witness.as_deref() == Some(node)
    }

    /// The node whose address is `addr`, if any.
    pub fn node_at(&self, addr: Ipv4Addr) -> Option<String> {
        self.node_names()
            .into_iter()
            .find(|n| self.try_addr(n).is_ok_and(|a| a == addr))
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

    pub(crate) fn daemon_pid_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("daemon-{node}.pid"))
    }

    /// Durations of the build steps (and "build total").
    pub fn timings(&self) -> Vec<(String, Duration)> {
        lock(&self.timings).clone()
    }
}
