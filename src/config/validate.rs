//! Validation: reading each key with its kind and default, then the rules of each group and the
//! rules across groups, each error naming the key that holds it and where it was given.
//!
//! A rule across keys blames the first key involved that was given (a default is nobody's
//! mistake). Messages state the rule and the bounds it computed, never a value as given.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use hyper::Uri;

use super::declare::Kind;
use super::file::{Given, Origin, Raw, Settings};
use super::{
    AgentSettings, Config, ConfigError, DbSettings, HookSettings, HttpSettings, Node, PeerSettings,
    Timing, TlsSettings,
};
use crate::units::format_millis;
use crate::vote::LeaseRules;

/// Largest ρ accepted: beyond it leases shrink to nothing.
pub const MAX_CLOCK_DRIFT: f64 = 0.2;

/// The settings being validated and their origin: reads keys and places errors.
pub struct Check<'a> {
    settings: &'a Settings,
    origin: &'a Origin,
}

impl Check<'_> {
    /// Whether `key` was given (in the file or as a flag).
    pub fn is_set(&self, key: &str) -> bool {
        self.settings.given(key).is_some()
    }

    /// The error for `key`, placed where it was given (or in the defaults).
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let span = self.settings.given(key).map(|g| g.span.clone());
        self.invalid_at(key, span, message.into())
    }

    fn invalid_at(&self, key: &str, span: Option<Range<usize>>, message: String) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            origin: span.map_or("defaults".to_string(), |s| self.origin.describe(s)),
            message,
        }
    }

    fn read_given<K: Kind>(&self, key: &str, given: &Given) -> Result<K::Value, ConfigError> {
        let value = match &given.raw {
            Raw::Flag(text) => K::parse(text),
            raw => K::from_toml(raw),
        };
        value.map_err(|m| self.invalid_at(key, Some(given.span.clone()), m))
    }

    /// `key` as given, else its default text, read by its kind.
    pub fn read<K: Kind>(&self, key: &str, default: &str) -> Result<K::Value, ConfigError> {
        match self.settings.given(key) {
            Some(given) => self.read_given::<K>(key, given),
            None => K::parse(default).map_err(|m| self.invalid(key, format!("bad default: {m}"))),
        }
    }

    /// `key` as given, else a placeholder that its group's validation replaces.
    pub fn read_computed<K: Kind>(&self, key: &str) -> Result<K::Value, ConfigError>
    where
        K::Value: Default,
    {
        match self.settings.given(key) {
            Some(given) => self.read_given::<K>(key, given),
            None => Ok(K::Value::default()),
        }
    }

    /// The `[peers]` table, each entry a peer URL.
    pub fn read_peers(&self) -> Result<BTreeMap<String, Uri>, ConfigError> {
        let mut peers = BTreeMap::new();
        for (name, given) in self.settings.peers() {
            let key = format!("peers.{name}");
            let url = match &given.raw {
                Raw::Text(t) | Raw::Flag(t) => parse_peer_url(t),
                other => Err(format!("must be a string, not {}", other.what())),
            };
            let url = url.map_err(|m| self.invalid_at(&key, Some(given.span.clone()), m))?;
            peers.insert(name.clone(), url);
        }
        Ok(peers)
    }
}

/// Reads, then validates, group by group and across groups.
pub(super) fn config(settings: &Settings, origin: &Origin) -> Result<Config, ConfigError> {
    let check = Check { settings, origin };
    if let Some((key, span, message)) = settings.first_problem() {
        return Err(check.invalid_at(key, Some(span.clone()), message.clone()));
    }
    let mut c = Config::read(&check)?;
    node(&mut c.node, &check)?;
    db(&c.db, &check)?;
    timing(&mut c.timing, &c.db, &check)?;
    leases(&c.leases, &c.timing, &c.db, &check)?;
    peer(&c.peer, &check)?;
    agent(&c.agent, &check)?;
    hooks(&c.hooks, &check)?;
    http(&c.http, &check)?;
    tls(&c.tls, &check)?;
    Ok(c)
}

fn node(n: &mut Node, check: &Check) -> Result<(), ConfigError> {
    if !check.is_set("node_name") {
        n.node_name = host_name().ok_or_else(|| {
            check.invalid("node_name", "not set and the host name could not be read")
        })?;
    }
    Ok(())
}

fn db(d: &DbSettings, check: &Check) -> Result<(), ConfigError> {
    if !(1..=100).contains(&d.max_connections_in_pool) {
        return Err(check.invalid("max_connections_in_pool", "must be between 1 and 100"));
    }
    Ok(())
}

/// `max_staleness` (by default two full cycles) must exceed one cycle, or every snapshot
/// would be stale.
fn timing(t: &mut Timing, db: &DbSettings, check: &Check) -> Result<(), ConfigError> {
    if !check.is_set("max_staleness") {
        t.max_staleness = Config::default_max_staleness(t.interval, db.db_timeout, t.peer_timeout);
    }
    let floor = t.interval + db.db_timeout + t.peer_timeout;
    if t.max_staleness <= floor {
        return Err(check.invalid(
            "max_staleness",
            format!(
                "must be above interval + db_timeout + peer_timeout = {}, or every snapshot \
                 would be stale",
                format_millis(floor)
            ),
        ));
    }
    Ok(())
}

/// ρ within bounds; and a vote must count, on the candidate's clock, longer than the longest
/// healthy renewal gap, or a healthy primary would lose its 200 between two cycles.
fn leases(l: &LeaseRules, t: &Timing, db: &DbSettings, check: &Check) -> Result<(), ConfigError> {
    if !(0.0..=MAX_CLOCK_DRIFT).contains(&l.drift) {
        return Err(check.invalid(
            "clock_drift",
            format!("must be between 0 and {MAX_CLOCK_DRIFT}"),
        ));
    }
    let gap = Config::renewal_gap(t.interval, db.db_timeout, t.peer_timeout);
    let counted = l.counted_for(l.vote_lease);
    if counted <= gap {
        // Name the first of the keys involved that was given (the lease when it was).
        let key = [
            "vote_lease",
            "interval",
            "db_timeout",
            "peer_timeout",
            "clock_drift",
        ]
        .into_iter()
        .find(|k| check.is_set(k))
        .unwrap_or("vote_lease");
        return Err(check.invalid(
            key,
            format!(
                "a vote of vote_lease counts {} on the candidate's clock (× (1−ρ)/(1+ρ), ρ = \
                 clock_drift), which must be above the longest healthy renewal gap \
                 max(interval, peer_timeout) + db_timeout + peer_timeout = {}, or a healthy \
                 primary would lose its 200 between two cycles",
                format_millis(counted),
                format_millis(gap)
            ),
        ));
    }
    Ok(())
}

fn peer(p: &PeerSettings, check: &Check) -> Result<(), ConfigError> {
    if p.peer_port == 0 {
        return Err(check.invalid("peer_port", "must be a port (1-65535)"));
    }
    if let Some(path) = &p.peer_key_file {
        crate::auth::Keys::load(path).map_err(|e| {
            check.invalid("peer_key_file", format!("{}: {}", path.display(), e.reason))
        })?;
    }
    Ok(())
}

fn agent(a: &AgentSettings, check: &Check) -> Result<(), ConfigError> {
    if a.agent_lag_hard <= a.agent_lag_soft {
        let key = if check.is_set("agent_lag_hard") {
            "agent_lag_hard"
        } else {
            "agent_lag_soft"
        };
        return Err(check.invalid(key, "agent_lag_hard must be above agent_lag_soft"));
    }
    Ok(())
}

/// `on_change`, when set, names an executable regular file (a symbolic link to one will do);
/// checked at every load, so a reload that names a missing file changes nothing.
fn hooks(h: &HookSettings, check: &Check) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = &h.on_change else {
        return Ok(());
    };
    let problem = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("no such file".to_string()),
        Err(e) => Some(format!("cannot be read ({})", e.kind())),
        Ok(m) if !m.is_file() => Some("not a regular file".to_string()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Some("not executable (no x permission bit)".to_string())
        }
        Ok(_) => None,
    };
    match problem {
        Some(why) => Err(check.invalid(
            "on_change",
            format!("must name an executable regular file: {why}"),
        )),
        None => Ok(()),
    }
}

/// Largest `max_connections_per_client`: the HTTP server's cap on open connections (4096) less
/// the slots it keeps for the members (128); the server's unit tests check the sum.
pub const MOST_CONNECTIONS_PER_CLIENT: u32 = 3968;

/// Shortest `idle_timeout` is above this: the peer client's pool idle time (5 s), so a peer
/// never reuses a connection this server is closing; the peer client's tests check it.
pub const IDLE_TIMEOUT_FLOOR: Duration = Duration::from_secs(5);

/// `max_connections_per_client` leaves room for others within the server's cap (less the
/// members' reserve); `idle_timeout` outlasts the peer client's pool idle time and stays short
/// enough to free idle slots.
fn http(h: &HttpSettings, check: &Check) -> Result<(), ConfigError> {
    let most = MOST_CONNECTIONS_PER_CLIENT;
    if !(1..=most).contains(&h.max_connections_per_client) {
        return Err(check.invalid(
            "max_connections_per_client",
            format!("must be between 1 and {most} (the server's cap less the members' reserve)"),
        ));
    }
    let floor = IDLE_TIMEOUT_FLOOR;
    let ceiling = Duration::from_secs(300);
    if h.idle_timeout <= floor || h.idle_timeout > ceiling {
        return Err(check.invalid(
            "idle_timeout",
            format!(
                "must be above the peer client's pool idle time ({}) and at most {}",
                format_millis(floor),
                format_millis(ceiling)
            ),
        ));
    }
    Ok(())
}

/// `tls_cert_file` and `tls_key_file` both or neither; every file set must load (a
/// certificate with its own key, a key file only its owner may read, CA certificates), so a
/// reload that names a bad or mismatched file changes nothing.
fn tls(t: &TlsSettings, check: &Check) -> Result<(), ConfigError> {
    match (&t.tls_cert_file, &t.tls_key_file) {
        (Some(_), None) => {
            return Err(check.invalid("tls_cert_file", "needs tls_key_file too (both or neither)"));
        }
        (None, Some(_)) => {
            return Err(check.invalid("tls_key_file", "needs tls_cert_file too (both or neither)"));
        }
        _ => {}
    }
    if let Some(key) = &t.tls_key_file {
        if let Some(why) = private_file_problem(key) {
            return Err(check.invalid("tls_key_file", format!("{}: {why}", key.display())));
        }
    }
    crate::tls::Tls::load(
        t.tls_cert_file.as_deref(),
        t.tls_key_file.as_deref(),
        t.tls_ca_file.as_deref(),
    )
    .map(|_| ())
    .map_err(|e| check.invalid(e.key, e.reason))
}

/// Why a secret file is not fit to hold a private key: not a regular file (a symbolic link
/// to one will do), or readable by others than its owner.
fn private_file_problem(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("no such file".into()),
        Err(e) => Some(format!("cannot be read ({})", e.kind())),
        Ok(m) if !m.is_file() => Some("not a regular file".into()),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Some(format!(
            "others than its owner may access it (mode {:o}): chmod 600",
            m.permissions().mode() & 0o777
        )),
        Ok(_) => None,
    }
}

/// Parses a peer's API base address: `http://host:port` or `https://host:port` (a path, if
/// any, is ignored; the scheme of the requests follows `tls_ca_file`, whichever is written).
/// The error never repeats the text.
pub fn parse_peer_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("not a URL like http://10.0.0.12:5999 ({e})"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => "http",
        Some("https") => "https",
        _ => return Err("must start with http:// or https://".into()),
    };
    let authority = uri.authority().ok_or("has no host")?;
    Uri::builder()
        .scheme(scheme)
        .authority(authority.as_str())
        .path_and_query("/")
        .build()
        .map_err(|e| format!("not a URL ({e})"))
}

/// The machine's host name, as the default `node_name`.
pub(super) fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}
