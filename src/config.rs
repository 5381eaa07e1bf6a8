//! Configuration: the TOML file, the command-line overrides, defaults and validation.
//!
//! Owns every setting of the daemon and the rules that make a setting valid. Each key of the
//! file has a flag of the same name (`max_connections_in_pool` is `--max-connections-in-pool`);
//! a flag overrides the file, the file overrides the default. Whatever is wrong is reported with
//! the key that holds it and, for the file, the line, so an operator can fix it without guessing.
//! `etc/primgr.toml` documents every key with its default.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Uri;
use serde::Deserialize;
use toml::Spanned;

/// Default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5999";
/// Default conninfo of the local database (unix socket, repmgr database and user).
pub const DEFAULT_CONNINFO: &str =
    "host=/var/run/postgresql dbname=repmgr user=repmgr application_name=primgr";
/// Default size of the local connection pool (the seed's `max_connections_in_pool`).
pub const DEFAULT_POOL_SIZE: u32 = 3;
/// Default poll period.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Default bound on connecting to and querying the local database, together.
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(2);
/// Default HTTP port of the peers' daemons.
pub const DEFAULT_PEER_PORT: u16 = 5999;
/// Default bound on a whole fan-out to the peers.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// The validated configuration of one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Must equal `repmgr.nodes.node_name` of the local node.
    pub node_name: String,
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// libpq-style conninfo (key=value or URI) of the local database.
    pub conninfo: String,
    /// Largest number of connections the pool keeps to the local database.
    pub max_connections_in_pool: u32,
    /// Poll period.
    pub interval: Duration,
    /// Bound on one observation of the local database (pool checkout, connect and query).
    pub db_timeout: Duration,
    /// Port of the peers' APIs when their address is derived from their repmgr conninfo.
    pub peer_port: u16,
    /// Bound on one whole fan-out to the peers (site vote, `/realPrimary`).
    pub peer_timeout: Duration,
    /// Local address the peer client binds its sockets to, if any.
    pub source_address: Option<IpAddr>,
    /// Oldest snapshot that may be served; older ones are served as Down (stale).
    pub max_staleness: Duration,
    /// Explicit peer API addresses by node name, overriding the derived ones.
    pub peers: BTreeMap<String, Uri>,
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
/// their parsing needs a friendly error (durations, addresses), with their span in the file.
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
    fn describe(&self, span: std::ops::Range<usize>, from_flag: bool) -> String {
        match self {
            _ if from_flag => "command line".to_string(),
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

    /// Lays `other` (command-line flags) over `self` (the file): what `other` sets wins.
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
            peers
        );
        self
    }

    /// Applies defaults and checks every value.
    pub fn validate(self, origin: &Origin) -> Result<Config, ConfigError> {
        let invalid = |key: &str, span: std::ops::Range<usize>, message: String| {
            let from_flag = span == FLAG_SPAN;
            ConfigError::Invalid {
                key: key.to_string(),
                origin: origin.describe(span, from_flag),
                message,
            }
        };

        let node_name = match self.node_name {
            Some(v) => {
                let span = v.span();
                let name = v.into_inner();
                if name.trim().is_empty() || name.trim() != name {
                    return Err(invalid(
                        "node_name",
                        span,
                        "must be a non-empty name without surrounding spaces".into(),
                    ));
                }
                name
            }
            None => host_name().ok_or_else(|| {
                invalid(
                    "node_name",
                    0..0,
                    "not set and the host name could not be read".into(),
                )
            })?,
        };

        let listen = match self.listen {
            Some(v) => {
                let span = v.span();
                v.get_ref().parse::<SocketAddr>().map_err(|e| {
                    invalid(
                        "listen",
                        span,
                        format!("{:?} is not an address:port ({e})", v.get_ref()),
                    )
                })?
            }
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|e| invalid("listen", 0..0, format!("bad default: {e}")))?,
        };

        let conninfo = match self.conninfo {
            Some(v) => {
                let span = v.span();
                let text = v.into_inner();
                text.parse::<tokio_postgres::Config>()
                    .map_err(|e| invalid("conninfo", span, format!("not a valid conninfo: {e}")))?;
                text
            }
            None => DEFAULT_CONNINFO.to_string(),
        };

        let max_connections_in_pool = match self.max_connections_in_pool {
            Some(v) => {
                let span = v.span();
                match u32::try_from(*v.get_ref()) {
                    Ok(n) if (1..=100).contains(&n) => n,
                    _ => {
                        return Err(invalid(
                            "max_connections_in_pool",
                            span,
                            format!("{} is not between 1 and 100", v.get_ref()),
                        ));
                    }
                }
            }
            None => DEFAULT_POOL_SIZE,
        };

        let duration = |key: &str, v: Option<Spanned<String>>, default: Duration| match v {
            Some(v) => {
                let span = v.span();
                let d = humantime::parse_duration(v.get_ref()).map_err(|e| {
                    invalid(
                        key,
                        span.clone(),
                        format!(
                            "{:?} is not a duration like \"2s\" or \"500ms\" ({e})",
                            v.get_ref()
                        ),
                    )
                })?;
                if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
                    return Err(invalid(
                        key,
                        span,
                        format!("{:?} must be between 10ms and 1h", v.get_ref()),
                    ));
                }
                Ok(d)
            }
            None => Ok(default),
        };
        let interval = duration("interval", self.interval, DEFAULT_INTERVAL)?;
        let db_timeout = duration("db_timeout", self.db_timeout, DEFAULT_DB_TIMEOUT)?;
        let peer_timeout = duration("peer_timeout", self.peer_timeout, DEFAULT_PEER_TIMEOUT)?;
        let staleness_span = self.max_staleness.as_ref().map(|v| v.span());
        let max_staleness = duration(
            "max_staleness",
            self.max_staleness,
            Config::default_max_staleness(interval, db_timeout, peer_timeout),
        )?;
        let floor = interval + db_timeout + peer_timeout;
        if max_staleness <= floor {
            return Err(invalid(
                "max_staleness",
                staleness_span.unwrap_or(0..0),
                format!(
                    "{} must be above interval + db_timeout + peer_timeout = {}, or every snapshot would be stale",
                    humantime::format_duration(max_staleness),
                    humantime::format_duration(floor)
                ),
            ));
        }

        let peer_port = match self.peer_port {
            Some(v) => {
                let span = v.span();
                match u16::try_from(*v.get_ref()) {
                    Ok(p) if p != 0 => p,
                    _ => {
                        return Err(invalid(
                            "peer_port",
                            span,
                            format!("{} is not a port (1-65535)", v.get_ref()),
                        ));
                    }
                }
            }
            None => DEFAULT_PEER_PORT,
        };

        let source_address = match self.source_address {
            Some(v) if v.get_ref().is_empty() => None,
            Some(v) => {
                let span = v.span();
                Some(v.get_ref().parse::<IpAddr>().map_err(|e| {
                    invalid(
                        "source_address",
                        span,
                        format!("{:?} is not an IP address ({e})", v.get_ref()),
                    )
                })?)
            }
            None => None,
        };

        let mut peers = BTreeMap::new();
        for (name, v) in self.peers.unwrap_or_default() {
            let key = format!("peers.{name}");
            let span = v.span();
            let uri = parse_peer_url(v.get_ref()).map_err(|m| invalid(&key, span, m))?;
            peers.insert(name, uri);
        }

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
        })
    }
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
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.db_timeout, Duration::from_secs(2));
        assert_eq!(c.peer_port, 5999);
        assert_eq!(c.peer_timeout, Duration::from_secs(1));
        assert_eq!(c.source_address, None);
        assert_eq!(c.max_staleness, Duration::from_secs(10));
        assert!(c.peers.is_empty());
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
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let e = err("node_name = \"n\"\ninterval = \"2 parsecs\"\n");
        assert!(e.contains("`interval`") && e.contains("line 2"), "{e}");
        let e = err("node_name = \"n\"\n\nlisten = \"nowhere\"\n");
        assert!(e.contains("`listen`") && e.contains("line 3"), "{e}");
        let e = err("node_name = \"n\"\nsource_address = \"300.1.1.1\"\n");
        assert!(e.contains("`source_address`"), "{e}");
        let e = err("node_name = \"n\"\npeer_port = 70000\n");
        assert!(e.contains("`peer_port`"), "{e}");
        let e = err("node_name = \"n\"\nmax_connections_in_pool = 0\n");
        assert!(e.contains("`max_connections_in_pool`"), "{e}");
        let e = err("node_name = \"n\"\nconninfo = \"host='unterminated\"\n");
        assert!(e.contains("`conninfo`"), "{e}");
        let e = err("node_name = \"n\"\n[peers]\nnode2 = \"ftp://x\"\n");
        assert!(e.contains("`peers.node2`") && e.contains("line 3"), "{e}");
        let e = err("node_name = \"\"\n");
        assert!(e.contains("`node_name`"), "{e}");
        let e = err("node_name = \"n\"\ninterval = \"0s\"\n");
        assert!(e.contains("`interval`"), "{e}");
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
        let e = err("node_name = \"n\"\nmax_staleness = \"4s\"\n");
        assert!(e.contains("`max_staleness`") && e.contains("line 2"), "{e}");
        // The default follows the other durations.
        let c = from_text("node_name = \"n\"\ninterval = \"10s\"\n").unwrap();
        assert_eq!(c.max_staleness, Duration::from_secs(26));
    }

    #[test]
    fn flags_override_the_file_and_are_named_as_such() {
        let file = Settings::parse("node_name = \"a\"\ninterval = \"3s\"\n").unwrap();
        let flags = Settings {
            interval: Some(from_flag("1s".to_string())),
            ..Settings::default()
        };
        let origin = Origin::File {
            path: "f".into(),
            text: String::new(),
        };
        let c = file.overlay(flags).validate(&origin).unwrap();
        assert_eq!(c.interval, Duration::from_secs(1));
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

    #[test]
    fn peer_urls_are_normalised() {
        assert_eq!(
            parse_peer_url("http://10.0.0.1:5999").unwrap().to_string(),
            "http://10.0.0.1:5999/"
        );
        assert!(parse_peer_url("https://x:1").is_err());
        assert!(parse_peer_url("x:1").is_err());
    }
}
