//! Configuration: every setting of the daemon, by group, with its default and its rules.
//!
//! Each key is declared once in `groups.rs` (field, doc comment, kind, default, whether only a
//! restart applies it); its TOML key, its flag of the same name (`max_connections_in_pool` is
//! `--max-connections-in-pool`), its `--help`, its line in `--check-config` and its entry in a
//! reload's diff come from that declaration (`declare.rs`). `file.rs` reads the file and lays
//! the flags over it (a flag overrides the file, the file the default); `validate.rs` holds
//! the rules of each group and across groups (the lease must outlast the longest healthy
//! renewal gap, the snapshot must outlive a cycle, ...). An error names the key and where it
//! came from (the file's line, or the command line), never the value. Sizes and durations are
//! [`crate::units`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hyper::Uri;

mod declare;
mod file;
mod groups;
mod validate;

pub use declare::{Change, Fallback, Group, Key};
pub use file::{Given, Origin, Raw, Settings, Source, TomlError};
pub use groups::{
    AgentFlags, AgentSettings, DbFlags, DbSettings, HookFlags, HookSettings, HttpFlags,
    HttpSettings, LeaseFlags, Node, NodeFlags, PeerFlags, PeerSettings, Reads, ReadsFlags, Timing,
    TimingFlags, TlsFlags, TlsSettings,
};
pub use validate::{IDLE_TIMEOUT_FLOOR, MOST_CONNECTIONS_PER_CLIENT, parse_peer_url};

use crate::vote::LeaseRules;

/// Why a configuration was refused. No message holds a value as it was given.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {} {error}", path.display())]
    Syntax { path: PathBuf, error: TomlError },
    /// A key is unknown, or its value is not acceptable, alone or with others.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

/// Declares the groups of [`Config`] once: its fields, the flags (one `clap::Args` per group,
/// flattened, and `--peer`), and what is done to every group (read, shown, compared).
macro_rules! groups {
    ($( $(#[doc = $doc:literal])* $field:ident: $group:ident, $flags:ident; )*) => {
        /// The validated configuration of one daemon, by group; `peers` is the `[peers]` table.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $field: $group, )*
            /// Explicit peer API addresses by node name (`[peers]`), overriding the derived ones.
            pub peers: BTreeMap<String, Uri>,
        }

        /// Every flag that sets a key, by group, and `--peer` for `[peers]`.
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct Flags {
            $( #[command(flatten)] $field: $flags, )*
            /// A peer API address, NAME=http://HOST:PORT; repeatable. Replaces the file's entry
            /// of that node, keeps the others.
            #[arg(long = "peer", value_name = "NAME=URL")]
            peers: Vec<String>,
        }

        impl Flags {
            /// The flags given, as settings to lay over the file.
            pub fn settings(self) -> Result<Settings, String> {
                let mut settings = Settings::default();
                $( self.$field.lay(&mut settings); )*
                for p in self.peers {
                    let (name, url) = p.split_once('=').ok_or_else(|| {
                        "command line: `peers`: a --peer is not NAME=http://HOST:PORT".to_string()
                    })?;
                    settings.set_peer_flag(name, url.to_string());
                }
                Ok(settings)
            }
        }

        /// Every key, group by group, in declaration order.
        pub fn keys() -> impl Iterator<Item = &'static Key> {
            [$( <$group as Group>::KEYS, )*].into_iter().flatten()
        }

        impl Config {
            /// Reads every group from what was given (no rule across keys yet).
            fn read(check: &validate::Check<'_>) -> Result<Config, ConfigError> {
                Ok(Config {
                    $( $field: <$group as Group>::read(check)?, )*
                    peers: check.read_peers()?,
                })
            }

            /// Every key with its value as TOML (`None`: not set), group by group.
            fn lines(&self) -> Vec<(&'static str, Option<String>)> {
                let mut out = Vec::new();
                $( self.$field.show(&mut out); )*
                out
            }

            /// The keys whose values differ in `new` (secrets masked), the `[peers]` table as
            /// one key.
            pub fn changes(&self, new: &Config) -> Vec<Change> {
                let mut out = Vec::new();
                $( self.$field.changes(&new.$field, &mut out); )*
                if self.peers != new.peers {
                    let show = |p: &BTreeMap<String, Uri>| {
                        Some(p.iter().map(|(n, u)| format!("{n}={u}")).collect::<Vec<_>>().join(" "))
                    };
                    out.push(Change {
                        key: "peers",
                        old: show(&self.peers),
                        new: show(&new.peers),
                        restart: false,
                    });
                }
                out
            }

            /// Takes from `running` every key only a restart applies.
            pub fn keep_restart_only(&mut self, running: &Config) {
                $( self.$field.keep_restart_only(&running.$field); )*
            }
        }
    };
}

groups! {
    /// The daemon itself: `node_name`, `listen`, `state_dir`, `log_level`.
    node: Node, NodeFlags;
    /// The local database: `conninfo`, `max_connections_in_pool`, `db_timeout`.
    db: DbSettings, DbFlags;
    /// The poll cycle's clock: `interval`, `peer_timeout`, `max_staleness`.
    timing: Timing, TimingFlags;
    /// Vote leases: `vote_lease`, `vote_scope`, `handoff_delay`, `clock_drift`.
    leases: LeaseRules, LeaseFlags;
    /// The peers' addresses: `peer_port`, `source_address`.
    peer: PeerSettings, PeerFlags;
    /// The read checks: `readiness_lag`.
    reads: Reads, ReadsFlags;
    /// The haproxy agent: `agent_listen`, `agent_lag_soft`, `agent_lag_hard`.
    agent: AgentSettings, AgentFlags;
    /// Events out: `on_change`, `on_change_timeout`.
    hooks: HookSettings, HookFlags;
    /// The HTTP API's connections: `max_connections_per_client`, `idle_timeout`.
    http: HttpSettings, HttpFlags;
    /// TLS: `tls_cert_file`, `tls_key_file`, `tls_ca_file`.
    tls: TlsSettings, TlsFlags;
}

/// Whether `key` is a key of the configuration (the `[peers]` table aside).
fn is_key(key: &str) -> bool {
    keys().any(|k| k.name == key)
}

impl Config {
    /// Defaults for everything, for a node of the given name (used by tests and the lab).
    pub fn for_node(node_name: impl Into<String>) -> Result<Config, ConfigError> {
        let mut settings = Settings::default();
        settings.set_flag("node_name", node_name.into());
        settings.validate(&Origin::Defaults)
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
        self.db.db_timeout + self.timing.peer_timeout
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
}

impl std::fmt::Display for Config {
    /// Every setting, one per line, as TOML would write it (a key not set as a comment); the
    /// conninfo's password masked. What `--check-config` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (key, value) in self.lines() {
            match value {
                Some(v) => writeln!(f, "{key} = {v}")?,
                None => writeln!(f, "# {key}: not set")?,
            }
        }
        writeln!(f, "[peers]")?;
        for (name, uri) in &self.peers {
            writeln!(f, "{name} = \"{uri}\"")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn from_text(text: &str) -> Result<Config, ConfigError> {
        let settings = Settings::parse(text).map_err(|error| ConfigError::Syntax {
            path: "t.toml".into(),
            error,
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
        assert_eq!(c.node.node_name, "node1");
        assert_eq!(c.node.listen, "0.0.0.0:5999".parse::<SocketAddr>().unwrap());
        assert_eq!(
            c.db.conninfo,
            "host=/var/run/postgresql dbname=repmgr user=repmgr application_name=primgr"
        );
        assert_eq!(c.db.max_connections_in_pool, 3);
        assert_eq!(c.timing.interval, Duration::from_secs(1));
        assert_eq!(c.db.db_timeout, Duration::from_secs(1));
        assert_eq!(c.peer.peer_port, 5999);
        assert_eq!(c.timing.peer_timeout, Duration::from_millis(500));
        assert_eq!(c.peer.source_address, None);
        assert_eq!(c.timing.max_staleness, Duration::from_secs(5));
        assert!(c.peers.is_empty());
        assert_eq!(c.leases.vote_lease, Duration::from_secs(3));
        assert_eq!(c.leases.scope, crate::wire::VoteScope::Site);
        assert_eq!(c.leases.handoff_delay, Duration::from_millis(2500));
        assert_eq!(c.leases.drift, 0.01);
        assert_eq!(c.node.state_dir, PathBuf::from("/var/lib/primgr"));
        assert_eq!(c.reads.readiness_lag, 16 << 20);
        assert_eq!(c.agent.agent_listen, None);
        assert_eq!(
            (c.agent.agent_lag_soft, c.agent.agent_lag_hard),
            (1 << 20, 16 << 20)
        );
        assert_eq!(c.node.log_level, "info");
        assert_eq!(c.hooks.on_change, None);
        assert_eq!(c.hooks.on_change_timeout, Duration::from_secs(30));
    }

    /// The example file sets every key that has a default to that default (the others are
    /// commented out): read as it ships, it gives the defaults. And it names every key.
    #[test]
    fn the_example_file_gives_the_defaults_and_names_every_key() {
        let text = include_str!("../../etc/primgr.toml");
        let shipped = from_text(&format!("node_name = \"node1\"\n{text}")).unwrap();
        assert_eq!(shipped, from_text("node_name = \"node1\"").unwrap());
        let mut named = 0;
        for key in keys() {
            let set = format!("\n{} = ", key.name);
            let commented = format!("\n# {} = ", key.name);
            assert!(
                text.contains(&set) || text.contains(&commented),
                "etc/primgr.toml has no line for `{}`",
                key.name
            );
            named += 1;
        }
        println!("etc/primgr.toml names all {named} keys");
    }

    /// Each declaration is complete: a doc comment, a default that its kind reads.
    #[test]
    fn every_key_is_declared_with_a_doc_and_a_default() {
        let mut n = 0;
        for key in keys() {
            assert!(!key.doc.trim().is_empty(), "`{}` has no doc", key.name);
            assert!(key.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            n += 1;
        }
        // Every default is read by its kind (a bad default would refuse the defaults).
        assert!(Config::for_node("n").is_ok());
        let restart: Vec<&str> = keys().filter(|k| k.restart).map(|k| k.name).collect();
        assert_eq!(
            restart,
            [
                "node_name",
                "listen",
                "state_dir",
                "source_address",
                "agent_listen",
                "tls_cert_file",
                "tls_key_file",
                "tls_ca_file"
            ]
        );
        println!(
            "{n} keys, each with a doc and a default; {} need a restart",
            restart.len()
        );
    }

    #[test]
    fn node_name_defaults_to_host_name() {
        let c = from_text("").unwrap();
        assert_eq!(Some(c.node.node_name), validate::host_name());
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
vote_scope = "cluster"
handoff_delay = "3s"
clock_drift = 0.05
state_dir = "/run/primgr-test"
readiness_lag = "1GB"
agent_listen = "127.0.0.12:5998"
agent_lag_soft = "512kB"
agent_lag_hard = "64MB"
log_level = "primgr=debug"
on_change = "/bin/true"
on_change_timeout = "5s"
[peers]
node1 = "http://127.0.0.11:6000"
"#,
        )
        .unwrap();
        assert_eq!(c.node.listen.port(), 6000);
        assert_eq!(c.db.max_connections_in_pool, 5);
        assert_eq!(c.timing.interval, Duration::from_millis(500));
        assert_eq!(c.timing.peer_timeout, Duration::from_millis(250));
        assert_eq!(c.peer.peer_port, 7000);
        assert_eq!(c.peer.source_address, Some("127.0.0.12".parse().unwrap()));
        assert_eq!(c.timing.max_staleness, Duration::from_secs(20));
        assert_eq!(c.peers["node1"].to_string(), "http://127.0.0.11:6000/");
        assert_eq!(
            (c.leases.vote_lease, c.leases.handoff_delay),
            (Duration::from_secs(4), Duration::from_secs(3))
        );
        assert_eq!(c.leases.drift, 0.05);
        assert_eq!(c.leases.scope, crate::wire::VoteScope::Cluster);
        assert_eq!(c.reads.readiness_lag, 1 << 30);
        assert_eq!(
            c.agent.agent_listen,
            Some("127.0.0.12:5998".parse().unwrap())
        );
        assert_eq!(
            (c.agent.agent_lag_soft, c.agent.agent_lag_hard),
            (512 << 10, 64 << 20)
        );
        assert_eq!(c.node.log_level, "primgr=debug");
        assert_eq!(c.hooks.on_change, Some(PathBuf::from("/bin/true")));
        assert_eq!(c.hooks.on_change_timeout, Duration::from_secs(5));
        // `--check-config` writes it back as a file that reads the same.
        let again = from_text(&c.to_string()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let cases = [
            ("interval = \"2 parsecs\"", "interval"),
            ("\nlisten = \"nowhere\"", "listen"),
            ("source_address = \"300.1.1.1\"", "source_address"),
            ("peer_port = 70000", "peer_port"),
            ("peer_port = 0", "peer_port"),
            ("max_connections_in_pool = 0", "max_connections_in_pool"),
            ("max_connections_in_pool = -3", "max_connections_in_pool"),
            ("conninfo = \"host='unterminated\"", "conninfo"),
            ("[peers]\nnode2 = \"ftp://x\"", "peers.node2"),
            ("[peers]\nnode2 = 5", "peers.node2"),
            ("peers = 5", "peers"),
            ("interval = \"0s\"", "interval"),
            ("handoff_delay = \"5ms\"", "handoff_delay"),
            ("clock_drift = 0.5", "clock_drift"),
            ("vote_scope = \"world\"", "vote_scope"),
            ("vote_scope = \"Cluster\"", "vote_scope"),
            ("vote_scope = 1", "vote_scope"),
            ("clock_drift = -0.01", "clock_drift"),
            ("clock_drift = nan", "clock_drift"),
            ("state_dir = \"relative/dir\"", "state_dir"),
            ("readiness_lag = \"10mb\"", "readiness_lag"),
            ("agent_listen = \"5998\"", "agent_listen"),
            ("agent_lag_hard = \"512kB\"", "agent_lag_hard"),
            ("log_level = \"info,[\"", "log_level"),
            ("node_name = \" n\"", "node_name"),
            ("interval = 1979-05-27", "interval"),
            ("interval = [\"1s\"]", "interval"),
            ("on_change = \"hooks/on-change\"", "on_change"),
            ("on_change = \"/nonexistent/primgr-hook\"", "on_change"),
            ("on_change = \"/etc\"", "on_change"),
            ("on_change = \"/etc/passwd\"", "on_change"),
            ("on_change_timeout = \"0s\"", "on_change_timeout"),
            ("on_change_timeout = 30", "on_change_timeout"),
        ];
        for (line, key) in cases {
            let text = format!("log_level = \"info\"\n{line}\n");
            let e = err(&text);
            let want_line = 2 + line.matches('\n').count();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(&format!("line {want_line}")),
                "{line:?}: {e}"
            );
        }
        println!(
            "{} bad values, each named with its key and line",
            cases.len()
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_with_line() {
        let e = err("node_name = \"n\"\nintervall = \"2s\"\n");
        assert!(e.contains("intervall") && e.contains("line 2"), "{e}");
        let e = err("node_name = \"n\"\n[intervals]\nx = 1\n");
        assert!(e.contains("intervals") && e.contains("line 2"), "{e}");
        let e = err("node_name = \"n\"\ninterval = 2\n");
        assert!(e.contains("`interval`") && e.contains("line 2"), "{e}");
        let e = err("node_name = \"n\"\ninterval = \n");
        assert!(e.contains("line 2") && e.contains("`interval`"), "{e}");
        let e = err("node_name = \"n\"\ninterval = \"1s\"\ninterval = \"2s\"\n");
        assert!(e.contains("line 3") && e.contains("duplicate"), "{e}");
    }

    /// issue 17: a typo on the conninfo line must not put its password in the journal. Every
    /// error about a value (TOML syntax, a kind, a rule) names the key and the line, and holds
    /// none of the text given.
    #[test]
    fn errors_name_key_and_line_never_the_value() {
        let secret = "S3cr3t-pw";
        let mut cases: Vec<(String, &str)> = vec![
            // TOML syntax errors on the conninfo line.
            (
                format!("conninfo = \"host=db password={secret}\n"),
                "conninfo",
            ),
            (
                format!("conninfo = \"host=db password={secret}\"x\"\n"),
                "conninfo",
            ),
            (
                format!("conninfo = host=db password={secret}\n"),
                "conninfo",
            ),
            (
                format!("conninfo = \"host=db password={secret}\\q\"\n"),
                "conninfo",
            ),
            (
                format!("conninfo = 'host=db password={secret}\n"),
                "conninfo",
            ),
            (
                format!("conninfo = \"\"\"host=db password={secret}\n"),
                "conninfo",
            ),
            // Conninfos the driver refuses.
            (
                format!("conninfo = \"host=db password='{secret}\"\n"),
                "conninfo",
            ),
            (
                format!("conninfo = \"host=db password {secret}\"\n"),
                "conninfo",
            ),
            (format!("conninfo = \"host=db {secret}=1\"\n"), "conninfo"),
            (
                format!("conninfo = \"host=db sslmode={secret}\"\n"),
                "conninfo",
            ),
            (
                format!("conninfo = \"postgresql://u:{secret}@db:nope/x\"\n"),
                "conninfo",
            ),
        ];
        // The secret in every other key, as a string.
        for key in keys().filter(|k| k.name != "conninfo") {
            cases.push((format!("{} = \"{secret}\"\n", key.name), key.name));
        }
        cases.push((format!("[peers]\nnode2 = \"{secret}\"\n"), "peers.node2"));
        cases.push((
            format!("[peers]\nnode2 = \"ftp://{secret}:1\"\n"),
            "peers.node2",
        ));
        let mut checked = 0;
        for (line, key) in &cases {
            let text = format!("log_level = \"info\"\n{line}");
            let Err(e) = from_text(&text) else {
                // A name is a name, and a word is a log filter (a target).
                assert!(["node_name", "log_level"].contains(key), "{text}");
                continue;
            };
            let e = e.to_string();
            let want_line = 2 + line.trim_end().matches('\n').count();
            assert!(
                !e.contains(secret) && !e.contains("S3cr"),
                "{key}: the error repeats the value: {e}"
            );
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(&format!("line {want_line}")),
                "{key}: {e}"
            );
            checked += 1;
        }
        // Flags too.
        for key in keys().filter(|k| !["node_name", "log_level"].contains(&k.name)) {
            let mut flags = Settings::default();
            flags.set_flag(key.name, secret.to_string());
            let e = Settings::default()
                .overlay(flags)
                .validate(&Origin::Defaults)
                .expect_err(key.name)
                .to_string();
            assert!(!e.contains("S3cr") && e.contains("command line"), "{e}");
            checked += 1;
        }
        println!("{checked} refused values (file and flags), none repeated in its error");
    }

    /// `on_change` names an executable regular file, and the error says which rule failed.
    #[test]
    fn on_change_must_name_an_executable_regular_file() {
        for (path, why) in [
            ("relative/hook", "absolute path"),
            ("/nonexistent/primgr-hook", "no such file"),
            ("/etc", "not a regular file"),
            ("/etc/passwd", "not executable"),
        ] {
            let e = err(&format!("node_name = \"n\"\non_change = \"{path}\"\n"));
            assert!(
                e.contains("`on_change`") && e.contains("line 2") && e.contains(why),
                "{path}: {e}"
            );
            assert!(!e.contains(path), "the error repeats the path: {e}");
        }
        // A symbolic link to an executable will do; an empty string is "not set".
        let c = from_text("node_name = \"n\"\non_change = \"/bin/sh\"\n").unwrap();
        assert_eq!(c.hooks.on_change, Some(PathBuf::from("/bin/sh")));
        let c = from_text("node_name = \"n\"\non_change = \"\"\n").unwrap();
        assert_eq!(c.hooks.on_change, None);
    }

    #[test]
    fn max_staleness_must_exceed_a_cycle() {
        let e = err("node_name = \"n\"\nmax_staleness = \"2s\"\n");
        assert!(e.contains("`max_staleness`") && e.contains("line 2"), "{e}");
        // The default follows the other durations.
        let c = from_text("node_name = \"n\"\ninterval = \"10s\"\nvote_lease = \"20s\"\n").unwrap();
        assert_eq!(c.timing.max_staleness, Duration::from_millis(23_000));
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
        let mut flags = Settings::default();
        flags.set_flag("interval", "1500ms".to_string());
        let origin = Origin::File {
            path: "f".into(),
            text: String::new(),
        };
        let c = file.overlay(flags).validate(&origin).unwrap();
        assert_eq!(c.timing.interval, Duration::from_millis(1500));
        assert_eq!(c.node.node_name, "a");
        let mut flags = Settings::default();
        flags.set_flag("db_timeout", "soon".to_string());
        let e = Settings::default()
            .overlay(flags)
            .validate(&origin)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("command line") && e.contains("`db_timeout`"),
            "{e}"
        );
        // A number as a flag is text, read as the file's number would be.
        let mut flags = Settings::default();
        flags.set_flag("max_connections_in_pool", "7".to_string());
        flags.set_flag("clock_drift", "0.02".to_string());
        flags.set_flag("vote_scope", "cluster".to_string());
        let c = Settings::default()
            .or_flag("node_name", "n")
            .overlay(flags)
            .validate(&Origin::Defaults)
            .unwrap();
        assert_eq!((c.db.max_connections_in_pool, c.leases.drift), (7, 0.02));
        assert_eq!(c.leases.scope, crate::wire::VoteScope::Cluster);
    }

    /// `--peer` flags merge into the file's `[peers]` entry by entry.
    #[test]
    fn peer_flags_merge_per_entry() {
        let file = Settings::parse(
            "node_name = \"a\"\n[peers]\nnode2 = \"http://10.0.0.2:5999\"\nnode3 = \"http://10.0.0.3:5999\"\n",
        )
        .unwrap();
        let mut flags = Settings::default();
        flags.set_peer_flag("node3", "http://10.9.9.3:6000".to_string());
        flags.set_peer_flag("node4", "http://10.9.9.4:6000".to_string());
        let c = file.overlay(flags).validate(&Origin::Defaults).unwrap();
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
        assert_eq!(
            parse_peer_url("https://10.0.0.1:5999/x")
                .unwrap()
                .to_string(),
            "https://10.0.0.1:5999/"
        );
        assert!(parse_peer_url("ftp://x:1").is_err());
        assert!(parse_peer_url("x:1").is_err());
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
            c.db.conninfo = conninfo.into();
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

    /// `Debug` (what a `{:?}` in a log or a panic would print) masks the password too.
    #[test]
    fn debug_masks_the_password() {
        let mut c = Config::for_node("n").unwrap();
        c.db.conninfo = "host=db user=primgr password=s3cret".into();
        let shown = format!("{c:?} {c:#?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("password=***"),
            "{shown}"
        );
        assert!(shown.contains("interval: \"1s\""), "{shown}");
    }

    #[test]
    fn fingerprints_follow_the_settings_not_the_password() {
        let a = Config::for_node("n").unwrap();
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        let mut b = a.clone();
        b.timing.interval = Duration::from_millis(900);
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut p1 = a.clone();
        p1.db.conninfo = "host=db password=one".into();
        let mut p2 = a.clone();
        p2.db.conninfo = "host=db password=two".into();
        assert_eq!(
            p1.fingerprint(),
            p2.fingerprint(),
            "the hash never depends on a password"
        );
    }

    /// The diff names each changed key (masked), and which need a restart; keeping the
    /// restart-only keys leaves nothing that needs one.
    #[test]
    fn changes_name_what_needs_a_restart() {
        let a = Config::for_node("n").unwrap();
        let mut b = a.clone();
        b.timing.interval = Duration::from_millis(900);
        b.node.log_level = "debug".into();
        b.db.conninfo = "host=db password=two".into();
        let shown: Vec<String> = a.changes(&b).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            shown,
            [
                "log_level: info → debug",
                "conninfo: host=/var/run/postgresql dbname=repmgr user=repmgr \
                 application_name=primgr → host=db password=***",
                "interval: 1s → 900ms"
            ]
        );
        assert!(a.changes(&b).iter().all(|c| !c.restart));
        b.node.listen = "127.0.0.1:6000".parse().unwrap();
        b.agent.agent_listen = Some("127.0.0.1:5998".parse().unwrap());
        let restart: Vec<String> = a
            .changes(&b)
            .iter()
            .filter(|c| c.restart)
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            restart,
            [
                "listen: 0.0.0.0:5999 → 127.0.0.1:6000",
                "agent_listen: not set → 127.0.0.1:5998"
            ]
        );
        let mut applied = b.clone();
        applied.keep_restart_only(&a);
        assert_eq!(
            (applied.node.listen, applied.agent.agent_listen),
            (a.node.listen, a.agent.agent_listen)
        );
        assert_eq!(applied.timing.interval, Duration::from_millis(900));
        assert!(a.changes(&applied).iter().all(|c| !c.restart));
        assert!(a.changes(&a.clone()).is_empty());
    }
}
