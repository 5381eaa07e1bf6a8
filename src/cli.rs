//! The command line: flags and subcommands, and their conversion into settings.
//!
//! Owns what `primgr --help` shows and how each flag becomes a [`Settings`] value laid over the
//! configuration file (a flag per key, same name; see [`crate::config`]). `main.rs` parses with
//! [`Cli`] and does what [`Cli::command`] says; nothing here starts anything.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hyper::Uri;

use crate::config::{Config, Origin, Settings, from_flag};

/// Tells haproxy and operators which node of a repmgr cluster is the real primary.
///
/// Every setting can come from the TOML file given with --config and be overridden by the flag
/// of the same name; see etc/primgr.toml for each key and its default.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Without a command, run the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print it (passwords masked), and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Name of the local node in repmgr.nodes [default: the host name].
    #[arg(long)]
    node_name: Option<String>,
    /// HTTP listen address [default: 0.0.0.0:5999].
    #[arg(long)]
    listen: Option<String>,
    /// conninfo of the local database.
    #[arg(long)]
    conninfo: Option<String>,
    /// Connection pool size [default: 3].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    max_connections_in_pool: Option<String>,
    /// Poll period [default: 1s].
    #[arg(long, value_name = "DURATION")]
    interval: Option<String>,
    /// Bound on connecting to and querying the local database [default: 1s].
    #[arg(long, value_name = "DURATION")]
    db_timeout: Option<String>,
    /// Peers' API port [default: 5999].
    #[arg(long, value_name = "PORT", allow_negative_numbers = true)]
    peer_port: Option<String>,
    /// Bound on a whole fan-out to the peers [default: 500ms].
    #[arg(long, value_name = "DURATION")]
    peer_timeout: Option<String>,
    /// Local address for requests to peers [default: none].
    #[arg(long, value_name = "IP")]
    source_address: Option<String>,
    /// Oldest snapshot that may be served [default: 2 x (interval + db_timeout + peer_timeout)].
    #[arg(long, value_name = "DURATION")]
    max_staleness: Option<String>,
    /// Length of a vote's promise [default: 3s].
    #[arg(long, value_name = "DURATION")]
    vote_lease: Option<String>,
    /// Wait after another node's last possible 200 before answering 200 [default: 2500ms].
    #[arg(long, value_name = "DURATION")]
    handoff_delay: Option<String>,
    /// Bound on clock rate differences, ρ [default: 0.01].
    #[arg(long, value_name = "RATIO", allow_negative_numbers = true)]
    clock_drift: Option<String>,
    /// Directory of the daemon's state, the drain flag [default: /var/lib/primgr].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<String>,
    /// Lag bound of /readiness for a standby [default: 16MB].
    #[arg(long, value_name = "SIZE")]
    readiness_lag: Option<String>,
    /// haproxy agent-check address [default: off].
    #[arg(long, value_name = "ADDR")]
    agent_listen: Option<String>,
    /// Agent: full weight up to this lag [default: 1MB].
    #[arg(long, value_name = "SIZE")]
    agent_lag_soft: Option<String>,
    /// Agent: weight 10% at this lag, down beyond [default: 16MB].
    #[arg(long, value_name = "SIZE")]
    agent_lag_hard: Option<String>,
    /// Log filter [default: info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// A peer API address, NAME=http://HOST:PORT; repeatable. Replaces the file's entry of
    /// that node, keeps the others.
    #[arg(long = "peer", value_name = "NAME=URL")]
    peers: Vec<String>,
}

/// What to do instead of running the daemon.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show every node's state as its daemon reports it, and the real primary.
    ///
    /// Asks the daemon at --url for the cluster's members, then every member's /status at once.
    /// Exit status: 0 when exactly one node answers 200 (Primary), 1 when none or several do
    /// (split brain), 2 when not even --url could be reached.
    Cluster {
        /// API address of any primgr daemon of the cluster.
        #[arg(long, value_name = "URL", default_value = crate::cluster::DEFAULT_URL,
              value_parser = crate::cluster::parse_url)]
        url: Uri,
        /// Bound on each round of requests (learning the members; asking them all).
        #[arg(long, value_name = "DURATION", default_value = "2s",
              value_parser = crate::cluster::parse_timeout)]
        timeout: Duration,
        /// Print a JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Take this node out of the read pool (`/replica`, `/read-only`, `/readiness` and the
    /// agent's read answer fail), without stopping anything; `/state` stays as it is.
    ///
    /// Writes the drain flag in `state_dir` (only root and the service user can) and waits
    /// until the local daemon shows it. The drain survives restarts; `primgr undrain` ends it.
    Drain {
        /// Why, shown in /status, in the checks' bodies and by `primgr cluster`.
        #[arg(long, default_value = "drained by an operator")]
        reason: String,
        #[command(flatten)]
        local: Local,
    },
    /// Put this node back into the read pool (ends `primgr drain`).
    Undrain {
        #[command(flatten)]
        local: Local,
    },
    /// Check this node as a monitoring plugin (Nagios, Icinga, keepalived): `primary`,
    /// `replica`, `read-only` or `cluster`.
    ///
    /// Asks the local daemon (--url, else the `listen` of --config), never the database, and
    /// prints one status line with performance data. Exit status: 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN (no answer within --timeout, connection refused, bad arguments).
    Check(crate::check::Args),
}

/// Where the local daemon keeps its state and listens, for `drain` and `undrain`.
#[derive(clap::Args, Debug)]
pub struct Local {
    /// The daemon's configuration file (for `state_dir` and `listen`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The daemon's state directory [default: the configuration's `state_dir`].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl Local {
    /// The state directory, and the local daemon's API address.
    pub fn resolve(&self) -> Result<(PathBuf, Uri), String> {
        let (settings, origin) = match &self.config {
            Some(path) => Settings::load(path).map_err(|e| e.to_string())?,
            None => (Settings::default(), Origin::Defaults),
        };
        // Only `state_dir` and `listen` matter here; a node_name is not needed.
        let settings = Settings {
            node_name: settings
                .node_name
                .or_else(|| Some(from_flag("local".into()))),
            ..settings
        };
        let config = settings.validate(&origin).map_err(|e| e.to_string())?;
        let mut listen = config.listen;
        if listen.ip().is_unspecified() {
            listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let url = crate::cluster::parse_url(&listen.to_string())?;
        Ok((self.state_dir.clone().unwrap_or(config.state_dir), url))
    }
}

impl Cli {
    /// The flags as settings to lay over the file.
    fn settings(&self) -> Result<Settings, String> {
        let int = |key: &str, v: &Option<String>| -> Result<_, String> {
            v.as_ref()
                .map(|s| {
                    s.parse::<i64>()
                        .map(from_flag)
                        .map_err(|_| format!("command line: `{key}`: {s:?} is not a number"))
                })
                .transpose()
        };
        let text = |v: &Option<String>| v.clone().map(from_flag);
        let clock_drift = self
            .clock_drift
            .as_ref()
            .map(|s| {
                s.parse::<f64>().map(from_flag).map_err(|_| {
                    format!("command line: `clock_drift`: {s:?} is not a number like 0.01")
                })
            })
            .transpose()?;
        let peers = if self.peers.is_empty() {
            None
        } else {
            let mut map = std::collections::BTreeMap::new();
            for p in &self.peers {
                let (name, url) = p.split_once('=').ok_or_else(|| {
                    format!("command line: `peers`: {p:?} is not NAME=http://HOST:PORT")
                })?;
                map.insert(name.to_string(), from_flag(url.to_string()));
            }
            Some(map)
        };
        Ok(Settings {
            node_name: text(&self.node_name),
            listen: text(&self.listen),
            conninfo: text(&self.conninfo),
            max_connections_in_pool: int("max_connections_in_pool", &self.max_connections_in_pool)?,
            interval: text(&self.interval),
            db_timeout: text(&self.db_timeout),
            peer_port: int("peer_port", &self.peer_port)?,
            peer_timeout: text(&self.peer_timeout),
            source_address: text(&self.source_address),
            max_staleness: text(&self.max_staleness),
            vote_lease: text(&self.vote_lease),
            handoff_delay: text(&self.handoff_delay),
            clock_drift,
            state_dir: text(&self.state_dir),
            readiness_lag: text(&self.readiness_lag),
            agent_listen: text(&self.agent_listen),
            agent_lag_soft: text(&self.agent_lag_soft),
            agent_lag_hard: text(&self.agent_lag_hard),
            log_level: text(&self.log_level),
            peers,
        })
    }

    /// The configuration: the file (if any), the flags laid over it, validated. The error
    /// names the key and where it came from.
    pub fn load(&self) -> Result<Config, String> {
        let (file, origin) = match &self.config {
            Some(path) => Settings::load(path).map_err(|e| e.to_string())?,
            None => (Settings::default(), Origin::Defaults),
        };
        file.overlay(self.settings()?)
            .validate(&origin)
            .map_err(|e| e.to_string())
    }
}
