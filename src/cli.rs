//! The command line: flags and subcommands, and their conversion into settings.
//!
//! Owns what `primgr --help` shows: the subcommands and their options, and the configuration's
//! flags (one per key, declared with the key in [`crate::config`]), which become the
//! [`Source`] of the configuration: the file with the flags laid over it. `main.rs` parses with
//! [`Cli`] and does what [`Cli::command`] says; nothing here starts anything.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hyper::Uri;

use crate::config::{Config, Flags, Source};

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
    /// One flag per configuration key, named as the key.
    #[command(flatten)]
    flags: Flags,
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
        /// The cluster's peer key file: sign every request and accept only answers signed
        /// with one of its keys (the daemons' `peer_key_file`).
        #[arg(long, value_name = "FILE")]
        peer_key_file: Option<PathBuf>,
        /// PEM CA certificates of the daemons' TLS certificates (the daemons'
        /// `tls_ca_file`): ask every daemon over https and verify it against them.
        #[arg(long, value_name = "FILE")]
        tls_ca_file: Option<PathBuf>,
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
    /// Print one fresh peer key line for `peer_key_file` (256 bits from the OS's random
    /// source) and exit.
    ///
    /// `primgr keygen > /etc/primgr/peer.key && chmod 600 /etc/primgr/peer.key`, then copy
    /// the same file to every node.
    Keygen,
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
        let (listen, state_dir) =
            Source::local_daemon(self.config.clone()).map_err(|e| e.to_string())?;
        let url = crate::cluster::parse_url(&listen.to_string())?;
        Ok((self.state_dir.clone().unwrap_or(state_dir), url))
    }
}

impl Cli {
    /// Where the configuration comes from: the file given with --config (if any) and the flags
    /// to lay over it, each time it is loaded (at start and at each reload).
    pub fn source(&self) -> Result<Source, String> {
        Ok(Source {
            file: self.config.clone(),
            flags: self.flags.clone().settings()?,
        })
    }

    /// The configuration: the file (if any), the flags laid over it, validated; and its
    /// source, to load it again at a reload. The error names the key and where it came from.
    pub fn load(&self) -> Result<(Source, Config), String> {
        let source = self.source()?;
        let config = source.load().map_err(|e| e.to_string())?;
        Ok((source, config))
    }
}
