//! Configuration: the TOML file, the command-line overrides, defaults and validation.
//!
//! Owns every setting of the daemon and the rules that make a setting valid, alone and together
//! (the lease must outlast the longest healthy renewal gap, the snapshot must outlive a cycle,
//! ...). Each key of the file has a flag of the same name (`max_connections_in_pool` is
//! `--max-connections-in-pool`); a flag overrides the file, the file overrides the default.
//! Whatever is wrong is reported with the key that holds it and, for the file, the line, so an
//! operator can fix it without guessing. A reload is "load again, validate, diff, swap"
//! ([`Config::restart_only_changes`] names what only a restart applies). `etc/primgr.toml`
//! documents every key with its default. [`Config`]'s `Display` shows every setting with the
//! conninfo's password masked (`--check-config`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Uri;
use serde::Deserialize;
use toml::Spanned;

use crate::conninfo;
use crate::vote::LeaseRules;

/// Default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5999";
/// Default conninfo of the local database (unix socket, repmgr database and user).
pub const DEFAULT_CONNINFO: &str =
    "host=/var/run/postgresql dbname=repmgr user=repmgr application_name=primgr";
/// Default size of the local connection pool (the seed's `max_connections_in_pool`).
pub const DEFAULT_POOL_SIZE: u32 = 3;
/// Default poll period.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default bound on connecting to and querying the local database, together.
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(1);
/// Default HTTP port of the peers' daemons.
pub const DEFAULT_PEER_PORT: u16 = 5999;
/// Default bound on a whole fan-out to the peers.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// Default length of a vote's promise (voter clock).
pub const DEFAULT_VOTE_LEASE: Duration = Duration::from_secs(3);
/// Default handoff: haproxy's `inter 1s fastinter 500ms fall 2` with `timeout check 800ms`
/// takes a server out within about 2.3 s of its last 200.
pub const DEFAULT_HANDOFF_DELAY: Duration = Duration::from_millis(2500);
/// Default ρ: monotonic clock rates differ from real time by at most 1 %.
pub const DEFAULT_CLOCK_DRIFT: f64 = 0.01;
/// Largest ρ accepted: beyond it leases shrink to nothing.
pub const MAX_CLOCK_DRIFT: f64 = 0.2;
/// Default directory of the daemon's state (the drain flag).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/primgr";
/// Default lag bound of `/readiness` (bytes).
pub const DEFAULT_READINESS_LAG: u64 = 16 << 20;
/// Default lag up to which the agent gives a standby its full weight (bytes).
pub const DEFAULT_AGENT_LAG_SOFT: u64 = 1 << 20;
/// Default lag at which the agent's weight has fallen to 10 %; beyond it, `down` (bytes).
pub const DEFAULT_AGENT_LAG_HARD: u64 = 16 << 20;
/// Default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The validated configuration of one daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Must equal `repmgr.nodes.node_name` of the local node.
    pub node_name: String,
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// libpq-style conninfo (key=value or URI) of the local database.
    pub conninfo: conninfo::Conninfo,
    /// Largest number of connections the pool keeps to the local database.
    pub max_connections_in_pool: u32,
    /// Poll period.
    pub interval: Duration,
    /// Bound on one observation of the local database (pool checkout, connect and query).
    pub db_timeout: Duration,
    /// Port of the peers' APIs when their address is derived from their repmgr conninfo.
    pub peer_port: u16,
    /// Bound on one whole fan-out to the peers (votes, releases, `/realPrimary`).
    pub peer_timeout: Duration,
    /// Local address the peer client binds its sockets to, if any.
    pub source_address: Option<IpAddr>,
    /// Oldest snapshot that may be served; older ones are served as Down (stale).
    pub max_staleness: Duration,
    /// Explicit peer API addresses by node name, overriding the derived ones.
    pub peers: BTreeMap<String, Uri>,
    /// Length of a vote's promise, on the voter's clock.
    pub vote_lease: Duration,
    /// How long a new primary waits after the last instant another could have answered 200.
    pub handoff_delay: Duration,
    /// ρ, the bound on monotonic clock rate differences (0.01 = 1 %).
    pub clock_drift: f64,
    /// Directory of the daemon's state (the drain flag).
    pub state_dir: PathBuf,
    /// Lag bound of `/readiness` for a standby (bytes).
    pub readiness_lag: u64,
    /// Address of the haproxy agent-check port, if any.
    pub agent_listen: Option<SocketAddr>,
    /// The agent gives a standby its full weight up to this lag (bytes).
    pub agent_lag_soft: u64,
    /// The agent's weight falls to 10 % at this lag; beyond it the standby is `down` (bytes).
    pub agent_lag_hard: u64,
    /// The log filter (`tracing` env-filter syntax: `info`, `primgr=debug`, ...).
    pub log_level: String,
}

impl Config {
    /// Defaults for everything, for a node of the given name (used by tests and the lab).
    pub fn for_node(node_name: impl Into<String>) -> Result<Config, ConfigError> {
        Settings {
            node_name: Some(Spanned::new(0..0, node_name.into())),
            ..Settings::default()
        }
        .validate(&Origin::Defaults)
    }

    /// The default `max_staleness` for a given interval and timeouts: two full cycles.
    pub fn default_max_staleness(
        interval: Duration,
        db_timeout: Duration,
        peer_timeout: Duration,
    ) -> Duration {
        (interval + db_timeout + peer_timeout) * 2
    }

    /// The longest a poll cycle can take: the database bound plus the fan-out bound.
    pub fn max_cycle(&self) -> Duration {
        self.db_timeout + self.peer_timeout
    }

    /// The longest time from sending a vote request to publishing the next cycle's renewal
    /// when every step ends within its bound: the next cycle starts at most
    /// `max(interval, peer_timeout)` after this one sent its requests, then observes (at most
    /// `db_timeout`) and asks (at most `peer_timeout`). A vote must count at least this long,
    /// or a healthy primary would drop its 200 between cycles.
    pub fn renewal_gap(
        interval: Duration,
        db_timeout: Duration,
        peer_timeout: Duration,
    ) -> Duration {
        interval.max(peer_timeout) + db_timeout + peer_timeout
    }

    /// The lease rules of this configuration.
    pub fn lease_rules(&self) -> LeaseRules {
        LeaseRules {
            vote_lease: self.vote_lease,
            handoff_delay: self.handoff_delay,
            drift: self.clock_drift,
        }
    }

    /// A short fingerprint of the configuration as [`Display`](std::fmt::Display) shows it
    /// (passwords masked, so it reveals nothing): 64-bit FNV-1a, in hex. Two nodes with the
    /// same settings show the same fingerprint; `/status` shows it, so an operator can see
    /// that a reload took effect.
    pub fn fingerprint(&self) -> String {
        let hash = self
            .to_string()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        format!("{hash:016x}")
    }

    /// This configuration with what only a restart can change taken from `running`: what a
    /// reload applies.
    pub fn reloadable_over(mut self, running: &Config) -> Config {
        self.listen = running.listen;
        self.agent_listen = running.agent_listen;
        self.node_name = running.node_name.clone();
        self.state_dir = running.state_dir.clone();
        self.source_address = running.source_address;
        self
    }

    /// The keys whose change a reload cannot apply (they need a restart), as `key: old → new`.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        if self.listen != new.listen {
            out.push(format!("listen: {} → {}", self.listen, new.listen));
        }
        if self.agent_listen != new.agent_listen {
            let show = |a: &Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
            out.push(format!(
                "agent_listen: {} → {}",
                show(&self.agent_listen),
                show(&new.agent_listen)
            ));
        }
        if self.source_address != new.source_address {
            let show = |a: &Option<IpAddr>| a.map_or("none".to_string(), |a| a.to_string());
            out.push(format!(
                "source_address: {} → {}",
                show(&self.source_address),
                show(&new.source_address)
            ));
        }
        if self.node_name != new.node_name {
            out.push(format!("node_name: {} → {}", self.node_name, new.node_name));
        }
        if self.state_dir != new.state_dir {
            out.push(format!(
                "state_dir: {} → {}",
                self.state_dir.display(),
                new.state_dir.display()
            ));
        }
        out
    }
}

impl std::fmt::Display for Config {
    /// Every setting, one per line, as TOML would write it; the conninfo's password masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        writeln!(f, "node_name = {:?}", self.node_name)?;
        writeln!(f, "listen = \"{}\"", self.listen)?;
        writeln!(f, "conninfo = {:?}", conninfo::redact(&self.conninfo))?;
        writeln!(
            f,
            "max_connections_in_pool = {}",
            self.max_connections_in_pool
        )?;
        writeln!(f, "interval = {:?}", d(self.interval))?;
        writeln!(f, "db_timeout = {:?}", d(self.db_timeout))?;
        writeln!(f, "peer_port = {}", self.peer_port)?;
        writeln!(f, "peer_timeout = {:?}", d(self.peer_timeout))?;
        match self.source_address {
            Some(a) => writeln!(f, "source_address = \"{a}\"")?,
            None => writeln!(f, "# source_address: not set")?,
        }
        writeln!(f, "max_staleness = {:?}", d(self.max_staleness))?;
        writeln!(f, "vote_lease = {:?}", d(self.vote_lease))?;
        writeln!(f, "handoff_delay = {:?}", d(self.handoff_delay))?;
        writeln!(f, "clock_drift = {}", self.clock_drift)?;
        writeln!(f, "state_dir = {:?}", self.state_dir.display().to_string())?;
        writeln!(f, "readiness_lag = {:?}", format_size(self.readiness_lag))?;
        match self.agent_listen {
            Some(a) => writeln!(f, "agent_listen = \"{a}\"")?,
            None => writeln!(f, "# agent_listen: off")?,
        }
        writeln!(f, "agent_lag_soft = {:?}", format_size(self.agent_lag_soft))?;
        writeln!(f, "agent_lag_hard = {:?}", format_size(self.agent_lag_hard))?;
        writeln!(f, "log_level = {:?}", self.log_level)?;
        writeln!(f, "[peers]")?;
        for (name, uri) in &self.peers {
            writeln!(f, "{name} = \"{uri}\"")?;
        }
        Ok(())
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or an unknown key.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is present but not acceptable.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

/// Settings as written in the file or on the command line, before validation.
///
/// Every value is optional; what is missing takes the default. Values are kept as text where
/// their parsing needs a friendly error (durations, sizes, addresses), with their span in the
/// file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub node_name: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub conninfo: Option<Spanned<String>>,
    pub max_connections_in_pool: Option<Spanned<i64>>,
    pub interval: Option<Spanned<String>>,
    pub db_timeout: Option<Spanned<String>>,
    pub peer_port: Option<Spanned<i64>>,
    pub peer_timeout: Option<Spanned<String>>,
    pub source_address: Option<Spanned<String>>,
    pub max_staleness: Option<Spanned<String>>,
    pub vote_lease: Option<Spanned<String>>,
    pub handoff_delay: Option<Spanned<String>>,
    pub clock_drift: Option<Spanned<f64>>,
    pub state_dir: Option<Spanned<String>>,
    pub readiness_lag: Option<Spanned<String>>,
    pub agent_listen: Option<Spanned<String>>,
    pub agent_lag_soft: Option<Spanned<String>>,
    pub agent_lag_hard: Option<Spanned<String>>,
    pub log_level: Option<Spanned<String>>,
    pub peers: Option<BTreeMap<String, Spanned<String>>>,
}

/// Where settings came from, to name it in errors.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Built-in defaults only.
    Defaults,
    /// A file, whose text is kept to turn spans into line numbers.
    File { path: PathBuf, text: String },
}

impl Origin {
    fn describe(&self, span: std::ops::Range<usize>) -> String {
        match self {
            _ if span == FLAG_SPAN => "command line".to_string(),
            Origin::Defaults => "defaults".to_string(),
            Origin::File { path, text } => {
                let upto = span.start.min(text.len());
                let line = text.as_bytes()[..upto]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1;
                format!("{} line {line}", path.display())
            }
        }
    }
}

/// A span that marks a value given on the command line rather than in the file.
const FLAG_SPAN: std::ops::Range<usize> = usize::MAX..usize::MAX;

/// Wraps a command-line value so that errors say it came from the command line.
pub fn from_flag<T>(value: T) -> Spanned<T> {
    Spanned::new(FLAG_SPAN, value)
}

impl Settings {
    /// Reads and parses a TOML file. Unknown keys and wrong types are errors naming key and line.
    pub fn load(path: &Path) -> Result<(Settings, Origin), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let settings = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        Ok((
            settings,
            Origin::File {
                path: path.to_path_buf(),
                text,
            },
        ))
    }

    /// Parses TOML text into settings; the error is TOML's message, which has line and key.
    pub fn parse(text: &str) -> Result<Settings, String> {
        toml::from_str::<Settings>(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Lays `other` (command-line flags) over `self` (the file): what `other` sets wins. Peer
    /// entries merge one by one: a flag's entry replaces the file's entry of that node only.
    pub fn overlay(mut self, other: Settings) -> Settings {
        macro_rules! take {
            ($($field:ident),*) => { $( if other.$field.is_some() { self.$field = other.$field; } )* };
        }
        take!(
            node_name,
            listen,
            conninfo,
            max_connections_in_pool,
            interval,
            db_timeout,
            peer_port,
            peer_timeout,
            source_address,
            max_staleness,
            vote_lease,
            handoff_delay,
            clock_drift,
            state_dir,
            readiness_lag,
            agent_listen,
            agent_lag_soft,
            agent_lag_hard,
            log_level
        );
        if let Some(flags) = other.peers {
            self.peers.get_or_insert_default().extend(flags);
        }
        self
    }

    /// Applies defaults and checks every value, alone and together.
    pub fn validate(self, origin: &Origin) -> Result<Config, ConfigError> {
        let v = Validator { origin };
        let node_name = match self.node_name {
            Some(name) => v.check(&name, "node_name", |n| {
                (!n.trim().is_empty() && n.trim() == n)
                    .then(|| n.clone())
                    .ok_or("must be a non-empty name without surrounding spaces".into())
            })?,
            None => host_name().ok_or_else(|| {
                v.invalid(
                    "node_name",
                    0..0,
                    "not set and the host name could not be read".into(),
                )
            })?,
        };
        let listen = v.or(self.listen, "listen", DEFAULT_LISTEN, parse_addr)?;
        let conninfo = v.or(self.conninfo, "conninfo", DEFAULT_CONNINFO, |t| {
            conninfo::take_passfile(t)
                .0
                .parse::<tokio_postgres::Config>()
                .map(|_| t.into())
                .map_err(|e| format!("not a valid conninfo: {e}"))
        })?;
        let max_connections_in_pool = match &self.max_connections_in_pool {
            Some(n) => v.check(n, "max_connections_in_pool", |n| match u32::try_from(*n) {
                Ok(n) if (1..=100).contains(&n) => Ok(n),
                _ => Err(format!("{n} is not between 1 and 100")),
            })?,
            None => DEFAULT_POOL_SIZE,
        };
        let interval = v.duration(self.interval.as_ref(), "interval", DEFAULT_INTERVAL)?;
        let db_timeout = v.duration(self.db_timeout.as_ref(), "db_timeout", DEFAULT_DB_TIMEOUT)?;
        let peer_timeout = v.duration(
            self.peer_timeout.as_ref(),
            "peer_timeout",
            DEFAULT_PEER_TIMEOUT,
        )?;
        let max_staleness = v.duration(
            self.max_staleness.as_ref(),
            "max_staleness",
            Config::default_max_staleness(interval, db_timeout, peer_timeout),
        )?;
        let floor = interval + db_timeout + peer_timeout;
        if max_staleness <= floor {
            return Err(v.invalid(
                "max_staleness",
                span(&self.max_staleness),
                format!(
                    "{} must be above interval + db_timeout + peer_timeout = {}, or every \
                     snapshot would be stale",
                    fmt_d(max_staleness),
                    fmt_d(floor)
                ),
            ));
        }
        let peer_port = match &self.peer_port {
            Some(p) => v.check(p, "peer_port", |p| match u16::try_from(*p) {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(format!("{p} is not a port (1-65535)")),
            })?,
            None => DEFAULT_PEER_PORT,
        };
        let source_address = match &self.source_address {
            Some(a) if a.get_ref().is_empty() => None,
            Some(a) => Some(v.check(a, "source_address", |t| {
                t.parse::<IpAddr>()
                    .map_err(|e| format!("{t:?} is not an IP address ({e})"))
            })?),
            None => None,
        };
        let mut peers = BTreeMap::new();
        for (name, url) in self.peers.unwrap_or_default() {
            peers.insert(
                name.clone(),
                v.check(&url, &format!("peers.{name}"), |t| parse_peer_url(t))?,
            );
        }

        let vote_lease = v.duration(self.vote_lease.as_ref(), "vote_lease", DEFAULT_VOTE_LEASE)?;
        let handoff_delay = match &self.handoff_delay {
            // Zero is allowed (no handoff: haproxy may briefly route to both); see the docs.
            Some(d) if humantime::parse_duration(d.get_ref()).is_ok_and(|d| d.is_zero()) => {
                Duration::ZERO
            }
            d => v.duration(d.as_ref(), "handoff_delay", DEFAULT_HANDOFF_DELAY)?,
        };
        let clock_drift = match &self.clock_drift {
            Some(r) => v.check(r, "clock_drift", |r| {
                if (0.0..=MAX_CLOCK_DRIFT).contains(r) {
                    Ok(*r)
                } else {
                    Err(format!("{r} is not between 0 and {MAX_CLOCK_DRIFT}"))
                }
            })?,
            None => DEFAULT_CLOCK_DRIFT,
        };
        let rules = LeaseRules {
            vote_lease,
            handoff_delay,
            drift: clock_drift,
        };
        let gap = Config::renewal_gap(interval, db_timeout, peer_timeout);
        if rules.counted_for(vote_lease) <= gap {
            // Name the first of the keys involved that was set (the lease when it was).
            let (key, at) = [
                (
                    "vote_lease",
                    span(&self.vote_lease),
                    self.vote_lease.is_some(),
                ),
                ("interval", span(&self.interval), self.interval.is_some()),
                (
                    "db_timeout",
                    span(&self.db_timeout),
                    self.db_timeout.is_some(),
                ),
                (
                    "peer_timeout",
                    span(&self.peer_timeout),
                    self.peer_timeout.is_some(),
                ),
                (
                    "clock_drift",
                    span(&self.clock_drift),
                    self.clock_drift.is_some(),
                ),
            ]
            .into_iter()
            .find(|k| k.2)
            .map_or(("vote_lease", 0..0), |k| (k.0, k.1));
            return Err(v.invalid(
                key,
                at,
                format!(
                    "a vote of vote_lease {} counts {} on the candidate's clock (× (1−ρ)/(1+ρ), \
                     ρ = clock_drift = {clock_drift}), which must be above the longest healthy \
                     renewal gap max(interval, peer_timeout) + db_timeout + peer_timeout = {}, \
                     or a healthy primary would lose its 200 between two cycles",
                    fmt_d(vote_lease),
                    fmt_d(rules.counted_for(vote_lease)),
                    fmt_d(gap)
                ),
            ));
        }

        let state_dir = match &self.state_dir {
            Some(d) => v.check(d, "state_dir", |t| {
                let p = PathBuf::from(t);
                if p.is_absolute() {
                    Ok(p)
                } else {
                    Err(format!("{t:?} must be an absolute path"))
                }
            })?,
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let readiness_lag = v.size(
            self.readiness_lag.as_ref(),
            "readiness_lag",
            DEFAULT_READINESS_LAG,
        )?;
        let agent_listen = match &self.agent_listen {
            Some(a) if a.get_ref().is_empty() => None,
            Some(a) => Some(v.check(a, "agent_listen", |t| parse_addr(t))?),
            None => None,
        };
        let agent_lag_soft = v.size(
            self.agent_lag_soft.as_ref(),
            "agent_lag_soft",
            DEFAULT_AGENT_LAG_SOFT,
        )?;
        let agent_lag_hard = v.size(
            self.agent_lag_hard.as_ref(),
            "agent_lag_hard",
            DEFAULT_AGENT_LAG_HARD,
        )?;
        if agent_lag_hard <= agent_lag_soft {
            let blame = if self.agent_lag_hard.is_some() {
                ("agent_lag_hard", span(&self.agent_lag_hard))
            } else {
                ("agent_lag_soft", span(&self.agent_lag_soft))
            };
            return Err(v.invalid(
                blame.0,
                blame.1,
                format!(
                    "agent_lag_hard ({}) must be above agent_lag_soft ({})",
                    format_size(agent_lag_hard),
                    format_size(agent_lag_soft)
                ),
            ));
        }
        let log_level = v.or(self.log_level, "log_level", DEFAULT_LOG_LEVEL, |t| {
            tracing_subscriber::EnvFilter::try_new(t)
                .map(|_| t.to_string())
                .map_err(|e| format!("{t:?} is not a log filter ({e})"))
        })?;

        Ok(Config {
            node_name,
            listen,
            conninfo,
            max_connections_in_pool,
            interval,
            db_timeout,
            peer_port,
            peer_timeout,
            source_address,
            max_staleness,
            peers,
            vote_lease,
            handoff_delay,
            clock_drift,
            state_dir,
            readiness_lag,
            agent_listen,
            agent_lag_soft,
            agent_lag_hard,
            log_level,
        })
    }
}

/// Turns a value's span into "where" and wraps parse errors with key and place.
struct Validator<'a> {
    origin: &'a Origin,
}

impl Validator<'_> {
    fn invalid(&self, key: &str, span: std::ops::Range<usize>, message: String) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            origin: self.origin.describe(span),
            message,
        }
    }

    /// Checks one present value.
    fn check<T, U>(
        &self,
        value: &Spanned<T>,
        key: &str,
        parse: impl FnOnce(&T) -> Result<U, String>,
    ) -> Result<U, ConfigError> {
        parse(value.get_ref()).map_err(|m| self.invalid(key, value.span(), m))
    }

    /// A text value, or the default text, parsed the same way.
    fn or<U>(
        &self,
        value: Option<Spanned<String>>,
        key: &str,
        default: &str,
        parse: impl Fn(&str) -> Result<U, String>,
    ) -> Result<U, ConfigError> {
        match value {
            Some(v) => self.check(&v, key, |t| parse(t)),
            None => {
                parse(default).map_err(|m| self.invalid(key, 0..0, format!("bad default: {m}")))
            }
        }
    }

    /// A duration between 10 ms and 1 h.
    fn duration(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        self.check(value, key, |t| {
            let d = humantime::parse_duration(t)
                .map_err(|e| format!("{t:?} is not a duration like \"2s\" or \"500ms\" ({e})"))?;
            if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
                return Err(format!("{t:?} must be between 10ms and 1h"));
            }
            Ok(d)
        })
    }

    /// A size in bytes, `kB`, `MB`, `GB` or `TB`.
    fn size(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match value {
            Some(v) => self.check(v, key, |t| parse_size(t)),
            None => Ok(default),
        }
    }
}

fn span<T>(v: &Option<Spanned<T>>) -> std::ops::Range<usize> {
    v.as_ref().map(|v| v.span()).unwrap_or(0..0)
}

/// A duration for messages, to the millisecond.
fn fmt_d(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

fn parse_addr(t: &str) -> Result<SocketAddr, String> {
    t.parse::<SocketAddr>()
        .map_err(|e| format!("{t:?} is not an address:port ({e})"))
}

/// Parses a WAL size the way PostgreSQL and Patroni write them: a whole number of bytes, or a
/// number with one of the units `kB`, `MB`, `GB`, `TB` (1024-based, case as PostgreSQL writes
/// them). Anything else (`10mb`, `-1`, `1.5MB`, an empty text) is an error that says why.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size: a whole number of bytes, optionally with kB, MB, GB or TB"
        ));
    }
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "kB" => 10,
        "MB" => 20,
        "GB" => 30,
        "TB" => 40,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (units are kB, MB, GB, TB, as in PostgreSQL)"
            ));
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A size in the largest unit that shows it exactly (`16MB`, `1536kB`, `100`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TB"), (30, "GB"), (20, "MB"), (10, "kB")] {
        if bytes != 0 && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Parses a peer's API base address: `http://host:port` (a path, if any, is ignored).
pub fn parse_peer_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{text:?} must start with http:// (peers speak plain HTTP)"
        ));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{text:?} has no host"))?;
    Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query("/")
        .build()
        .map_err(|e| format!("{text:?}: {e}"))
}

/// The machine's host name, as the default `node_name`.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_text(text: &str) -> Result<Config, ConfigError> {
        let settings = Settings::parse(text).map_err(|message| ConfigError::Parse {
            path: "t.toml".into(),
            message,
        })?;
        settings.validate(&Origin::File {
            path: "t.toml".into(),
            text: text.to_string(),
        })
    }

    fn err(text: &str) -> String {
        match from_text(text) {
            Ok(c) => panic!("accepted {text:?} as {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = from_text("node_name = \"node1\"").unwrap();
        assert_eq!(c.node_name, "node1");
        assert_eq!(c.listen, "0.0.0.0:5999".parse().unwrap());
        assert_eq!(c.conninfo, DEFAULT_CONNINFO);
        assert_eq!(c.max_connections_in_pool, 3);
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.db_timeout, Duration::from_secs(1));
        assert_eq!(c.peer_port, 5999);
        assert_eq!(c.peer_timeout, Duration::from_millis(500));
        assert_eq!(c.source_address, None);
        assert_eq!(c.max_staleness, Duration::from_secs(5));
        assert!(c.peers.is_empty());
        assert_eq!(c.vote_lease, Duration::from_secs(3));
        assert_eq!(c.handoff_delay, Duration::from_millis(2500));
        assert_eq!(c.clock_drift, 0.01);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/primgr"));
        assert_eq!(c.readiness_lag, 16 << 20);
        assert_eq!(c.agent_listen, None);
        assert_eq!((c.agent_lag_soft, c.agent_lag_hard), (1 << 20, 16 << 20));
        assert_eq!(c.log_level, "info");
    }

    /// The example file sets every key that has a default to that default (the others are
    /// commented out): read as it ships, it gives the defaults.
    #[test]
    fn the_example_file_gives_the_defaults() {
        let text = include_str!("../etc/primgr.toml");
        let shipped = from_text(&format!("node_name = \"node1\"\n{text}")).unwrap();
        assert_eq!(shipped, from_text("node_name = \"node1\"").unwrap());
    }

    #[test]
    fn node_name_defaults_to_host_name() {
        let c = from_text("").unwrap();
        assert_eq!(Some(c.node_name), host_name());
    }

    #[test]
    fn full_file_is_read() {
        let c = from_text(
            r#"
node_name = "node2"
listen = "127.0.0.12:6000"
conninfo = "host=127.0.0.12 dbname=repmgr user=repmgr"
max_connections_in_pool = 5
interval = "500ms"
db_timeout = "1s"
peer_port = 7000
peer_timeout = "250ms"
source_address = "127.0.0.12"
max_staleness = "20s"
vote_lease = "4s"
handoff_delay = "3s"
clock_drift = 0.05
state_dir = "/run/primgr-test"
readiness_lag = "1GB"
agent_listen = "127.0.0.12:5998"
agent_lag_soft = "512kB"
agent_lag_hard = "64MB"
log_level = "primgr=debug"
[peers]
node1 = "http://127.0.0.11:6000"
"#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.max_connections_in_pool, 5);
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.peer_timeout, Duration::from_millis(250));
        assert_eq!(c.source_address, Some("127.0.0.12".parse().unwrap()));
        assert_eq!(c.max_staleness, Duration::from_secs(20));
        assert_eq!(c.peers["node1"].to_string(), "http://127.0.0.11:6000/");
        assert_eq!(
            (c.vote_lease, c.handoff_delay),
            (Duration::from_secs(4), Duration::from_secs(3))
        );
        assert_eq!(c.clock_drift, 0.05);
        assert_eq!(c.readiness_lag, 1 << 30);
        assert_eq!(c.agent_listen, Some("127.0.0.12:5998".parse().unwrap()));
        assert_eq!((c.agent_lag_soft, c.agent_lag_hard), (512 << 10, 64 << 20));
        assert_eq!(c.log_level, "primgr=debug");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let cases = [
            ("interval = \"2 parsecs\"", "interval"),
            ("\nlisten = \"nowhere\"", "listen"),
            ("source_address = \"300.1.1.1\"", "source_address"),
            ("peer_port = 70000", "peer_port"),
            ("max_connections_in_pool = 0", "max_connections_in_pool"),
            ("conninfo = \"host='unterminated\"", "conninfo"),
            ("[peers]\nnode2 = \"ftp://x\"", "peers.node2"),
            ("interval = \"0s\"", "interval"),
            ("clock_drift = 0.5", "clock_drift"),
            ("clock_drift = -0.01", "clock_drift"),
            ("state_dir = \"relative/dir\"", "state_dir"),
            ("readiness_lag = \"10mb\"", "readiness_lag"),
            ("agent_listen = \"5998\"", "agent_listen"),
            ("agent_lag_hard = \"512kB\"", "agent_lag_hard"),
            ("log_level = \"info,[\"", "log_level"),
        ];
        for (line, key) in cases {
            let text = format!("node_name = \"n\"\n{line}\n");
            let e = err(&text);
            let want_line = 2 + line.matches('\n').count();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(&format!("line {want_line}")),
                "{line:?}: {e}"
            );
        }
        let e = err("node_name = \"\"\n");
        assert!(e.contains("`node_name`"), "{e}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_with_line() {
        let e = err("node_name = \"n\"\nintervall = \"2s\"\n");
        assert!(e.contains("intervall") && e.contains("line 2"), "{e}");
        let e = err("node_name = \"n\"\ninterval = 2\n");
        assert!(e.contains("interval") && e.contains("line 2"), "{e}");
        let e = err("node_name = \"n\"\ninterval = \n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn max_staleness_must_exceed_a_cycle() {
        let e = err("node_name = \"n\"\nmax_staleness = \"2s\"\n");
        assert!(e.contains("`max_staleness`") && e.contains("line 2"), "{e}");
        // The default follows the other durations.
        let c = from_text("node_name = \"n\"\ninterval = \"10s\"\nvote_lease = \"20s\"\n").unwrap();
        assert_eq!(c.max_staleness, Duration::from_millis(23_000));
    }

    /// A lease that does not outlast the longest healthy renewal gap would make a healthy
    /// primary flap: refused, naming the lease (or the drift that shrinks it).
    #[test]
    fn the_lease_must_outlast_a_healthy_renewal_gap() {
        // Defaults: gap = max(1s, 500ms) + 1s + 500ms = 2.5s; 3s × 0.99/1.01 = 2.94s.
        assert!(from_text("node_name = \"n\"\n").is_ok());
        let e = err("node_name = \"n\"\nvote_lease = \"2500ms\"\n");
        assert!(
            e.contains("`vote_lease`") && e.contains("line 2") && e.contains("2s 500ms"),
            "{e}"
        );
        let e = err("node_name = \"n\"\ninterval = \"2s\"\n");
        assert!(e.contains("`interval`") && e.contains("line 2"), "{e}");
        let e = err("node_name = \"n\"\nclock_drift = 0.1\n");
        assert!(e.contains("`clock_drift`") && e.contains("line 2"), "{e}");
        // A slow peer_timeout counts twice when it is longer than the interval.
        let e = err("node_name = \"n\"\npeer_timeout = \"1500ms\"\nvote_lease = \"4s\"\n");
        assert!(e.contains("`vote_lease`") && e.contains("4s"), "{e}");
        assert!(
            from_text("node_name = \"n\"\npeer_timeout = \"1500ms\"\nvote_lease = \"5s\"\n")
                .is_ok()
        );
    }

    #[test]
    fn flags_override_the_file_and_are_named_as_such() {
        let file =
            Settings::parse("node_name = \"a\"\ninterval = \"2s\"\nvote_lease = \"6s\"\n").unwrap();
        let flags = Settings {
            interval: Some(from_flag("1500ms".to_string())),
            ..Settings::default()
        };
        let origin = Origin::File {
            path: "f".into(),
            text: String::new(),
        };
        let c = file.overlay(flags).validate(&origin).unwrap();
        assert_eq!(c.interval, Duration::from_millis(1500));
        assert_eq!(c.node_name, "a");
        let flags = Settings {
            db_timeout: Some(from_flag("soon".to_string())),
            ..Settings::default()
        };
        let e = Settings::default()
            .overlay(flags)
            .validate(&origin)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("command line") && e.contains("`db_timeout`"),
            "{e}"
        );
    }

    /// `--peer` flags merge into the file's `[peers]` entry by entry.
    #[test]
    fn peer_flags_merge_per_entry() {
        let file = Settings::parse(
            "node_name = \"a\"\n[peers]\nnode2 = \"http://10.0.0.2:5999\"\nnode3 = \"http://10.0.0.3:5999\"\n",
        )
        .unwrap();
        let mut flags = BTreeMap::new();
        flags.insert(
            "node3".to_string(),
            from_flag("http://10.9.9.3:6000".to_string()),
        );
        flags.insert(
            "node4".to_string(),
            from_flag("http://10.9.9.4:6000".to_string()),
        );
        let c = file
            .overlay(Settings {
                peers: Some(flags),
                ..Settings::default()
            })
            .validate(&Origin::Defaults)
            .unwrap();
        let peers: Vec<String> = c.peers.iter().map(|(n, u)| format!("{n}={u}")).collect();
        assert_eq!(
            peers,
            [
                "node2=http://10.0.0.2:5999/",
                "node3=http://10.9.9.3:6000/",
                "node4=http://10.9.9.4:6000/"
            ]
        );
    }

    #[test]
    fn peer_urls_are_normalised() {
        assert_eq!(
            parse_peer_url("http://10.0.0.1:5999").unwrap().to_string(),
            "http://10.0.0.1:5999/"
        );
        assert!(parse_peer_url("https://x:1").is_err());
        assert!(parse_peer_url("x:1").is_err());
    }

    #[test]
    fn sizes_are_postgresql_sizes() {
        for (text, want) in [
            ("0", 0),
            ("16777216", 16 << 20),
            ("10kB", 10 << 10),
            ("16MB", 16 << 20),
            ("16 MB", 16 << 20),
            ("2GB", 2 << 30),
            ("1TB", 1 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in [
            "10mb",
            "10KB",
            "-1",
            "",
            "MB",
            "1.5MB",
            "10 parsecs",
            "99999999999TB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        for n in [0, 100, 1536 << 10, 16 << 20, 3 << 30] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(16 << 20), "16MB");
    }

    /// `--check-config` shows the configuration, never a password (key=value and URI forms);
    /// a passfile is shown as its path.
    #[test]
    fn the_display_masks_the_password() {
        for conninfo in [
            "host=db user=primgr password=s3cret dbname=repmgr",
            "postgresql://primgr:s3cret@db/repmgr",
            "postgresql://primgr@db/repmgr?password=s3cret",
            "host=db user=primgr passfile=/etc/primgr/pgpass password='s3 cret'",
        ] {
            let mut c = Config::for_node("n").unwrap();
            c.conninfo = conninfo.into();
            let shown = c.to_string();
            assert!(
                !shown.contains("s3cret") && !shown.contains("s3 cret"),
                "{shown}"
            );
            assert!(shown.contains("***"), "{shown}");
            if conninfo.contains("passfile") {
                assert!(shown.contains("passfile=/etc/primgr/pgpass"), "{shown}");
            }
        }
    }

    #[test]
    fn fingerprints_follow_the_settings_not_the_password() {
        let a = Config::for_node("n").unwrap();
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        let mut b = a.clone();
        b.interval = Duration::from_millis(900);
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut p1 = a.clone();
        p1.conninfo = "host=db password=one".into();
        let mut p2 = a.clone();
        p2.conninfo = "host=db password=two".into();
        assert_eq!(
            p1.fingerprint(),
            p2.fingerprint(),
            "the hash never depends on a password"
        );
    }

    #[test]
    fn reload_names_what_needs_a_restart() {
        let a = Config::for_node("n").unwrap();
        let mut b = a.clone();
        b.interval = Duration::from_millis(900);
        b.log_level = "debug".into();
        assert!(a.restart_only_changes(&b).is_empty());
        b.listen = "127.0.0.1:6000".parse().unwrap();
        b.agent_listen = Some("127.0.0.1:5998".parse().unwrap());
        assert_eq!(
            a.restart_only_changes(&b),
            [
                "listen: 0.0.0.0:5999 → 127.0.0.1:6000",
                "agent_listen: off → 127.0.0.1:5998"
            ]
        );
        let applied = b.clone().reloadable_over(&a);
        assert_eq!(
            (applied.listen, applied.agent_listen),
            (a.listen, a.agent_listen)
        );
        assert_eq!(applied.interval, Duration::from_millis(900));
        assert!(a.restart_only_changes(&applied).is_empty());
    }
}
