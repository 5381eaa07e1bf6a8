//! Addresses and the spec: what a lab is made of before it is built. The subnet shift
//! (`PRIMGR_LAB_SUBNET_SHIFT`), the node addresses `127.0.<subnet>.<10+N>`, the default directory
//! and chain names, the ports, [`NodeSpec`] / [`LabSpec`] and their validation, [`StopMode`].

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};

/// Directory of the PostgreSQL 15 binaries (and of `repmgr`).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Port of every node's PostgreSQL (each node has its own address).
pub const PG_PORT: u16 = 5432;
/// Port of every node's primgr daemon ([`Lab::daemon`](crate::Lab::daemon) listens there).
pub const DAEMON_PORT: u16 = 5999;

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
/// address of a lab derives from this value ([`Lab::subnet`](crate::Lab::subnet)); tests that
/// need an address of "their" subnet without a lab derive it from here too.
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

/// Name of the lab's own iptables chain, hooked into `INPUT` and `OUTPUT`:
/// `PRIMGR_LAB_<subnet>`.
pub fn chain_name(subnet: u8) -> String {
    format!("PRIMGR_LAB_{subnet}")
}

/// Name of the lab's chain for partial partitions, hooked into `OUTPUT` only (the `owner`
/// match works there only): `PRIMGR_LAB_<subnet>_REPL`.
pub fn replication_chain_name(subnet: u8) -> String {
    format!("PRIMGR_LAB_{subnet}_REPL")
}

/// Address of the node with 1-based `index` in a lab on `subnet`: `127.0.<subnet>.<10+index>`.
pub fn node_address(subnet: u8, index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, subnet, (10 + index).min(255) as u8)
}

/// Parses a `--subnet` value of the lab's binaries: 1..=254.
pub fn parse_subnet(v: &str) -> Result<u8> {
    v.trim()
        .parse::<u8>()
        .ok()
        .filter(|n| (1..=254).contains(n))
        .with_context(|| format!("bad subnet {v:?} (1..=254)"))
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
/// `127.0.<subnet>.<10+N>` and repmgr `node_id` *N*; a witness comes after the nodes (the next
/// address and `node_id`).
///
/// ```
/// use primgr_lab::LabSpec;
/// let spec = LabSpec::standard(240).with_witness("witness", "dc3").with_repmgrd();
/// assert_eq!(spec.nodes.len(), 4);
/// assert_eq!(spec.witness.as_ref().map(|w| w.location.as_str()), Some("dc3"));
/// assert!(spec.repmgrd);
/// ```
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
    /// A repmgr witness: its own `initdb` (not a clone), a superuser `repmgr` and a database
    /// `repmgr`, its own `repmgr.conf` (node_id, node_name, location), registered with
    /// `repmgr witness register -h <primary>`. `repmgr.nodes` then has its row with
    /// `type = 'witness'`; it is never in recovery.
    pub witness: Option<NodeSpec>,
    /// Build every node for repmgrd: `shared_preload_libraries = 'repmgr'` and a
    /// `repmgr.conf` for automatic failover (see `Lab::start_repmgrd`).
    pub repmgrd: bool,
}

impl LabSpec {
    /// A lab of `nodes` (the first is the primary) on `subnet`, in the default directory,
    /// without witness and repmgrd.
    pub fn new(subnet: u8, nodes: Vec<NodeSpec>) -> Self {
        LabSpec {
            subnet,
            dir: None,
            nodes,
            witness: None,
            repmgrd: false,
        }
    }

    /// node1..node3 at location `dc1`, node4 at `dc2`; node1 is the primary.
    pub fn standard(subnet: u8) -> Self {
        LabSpec::new(
            subnet,
            vec![
                NodeSpec::new("node1", "dc1"),
                NodeSpec::new("node2", "dc1"),
                NodeSpec::new("node3", "dc1"),
                NodeSpec::new("node4", "dc2"),
            ],
        )
    }

    /// The same lab with a repmgr witness named `name` at `location` (its own site, or one
    /// of the nodes' sites: the caller's choice).
    pub fn with_witness(mut self, name: impl Into<String>, location: impl Into<String>) -> Self {
        self.witness = Some(NodeSpec::new(name, location));
        self
    }

    /// The same lab built for repmgrd ([`LabSpec::repmgrd`]).
    pub fn with_repmgrd(mut self) -> Self {
        self.repmgrd = true;
        self
    }

    /// Every node the lab builds in `node_id` order: the nodes, then the witness.
    pub(crate) fn all_nodes(&self) -> Vec<NodeSpec> {
        self.nodes.iter().chain(&self.witness).cloned().collect()
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

    pub(crate) fn validate(&self) -> Result<()> {
        self.effective_subnet()?;
        ensure!(!self.nodes.is_empty(), "a lab needs at least one node");
        let all = self.all_nodes();
        ensure!(all.len() <= 200, "at most 200 nodes");
        for (i, n) in all.iter().enumerate() {
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
                !all[..i].iter().any(|o| o.name == n.name),
                "duplicate node name {}",
                n.name
            );
        }
        Ok(())
    }
}

/// How [`Lab::stop`](crate::Lab::stop) shuts a node down (`pg_ctl stop -m ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// `-m immediate`: like a crash (no checkpoint, crash recovery at next start).
    Immediate,
    /// `-m fast`: clean shutdown.
    Fast,
}

impl StopMode {
    pub(crate) fn arg(self) -> &'static str {
        match self {
            StopMode::Immediate => "immediate",
            StopMode::Fast => "fast",
        }
    }
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
