//! The file and the flags: reading the TOML file into [`Settings`] (each value with its place),
//! laying the command line's flags over it, and where each value came from ([`Origin`]), so
//! that an error names the key and the line. [`Source`] remembers the file and the flags, so
//! that a reload reads the same file again with the same flags over it.
//!
//! A TOML error names the line and the key, never the text: the parser's own message is shown
//! (it describes what was expected, not what was written), the offending line is not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::{Config, ConfigError};

/// A value as the file or a flag gives it, before its kind reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// A table, each key and value with its span.
    Table(Vec<(Spanned<String>, Spanned<Raw>)>),
    /// What no key takes (an array, a date-time, an integer beyond i64): what it is.
    Other(&'static str),
    /// A command-line flag's text.
    Flag(String),
}

impl Raw {
    /// What the value is, for a message ("an integer"): never the value itself.
    pub fn what(&self) -> &'static str {
        match self {
            Raw::Text(_) | Raw::Flag(_) => "a string",
            Raw::Integer(_) => "an integer",
            Raw::Float(_) => "a float",
            Raw::Boolean(_) => "a boolean",
            Raw::Table(_) => "a table",
            Raw::Other(what) => what,
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Boolean(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Integer(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Other("an integer too large"), Raw::Integer))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Text(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Text(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Raw::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Raw>>()?;
            entries.push((key, value));
        }
        Ok(Raw::Table(entries))
    }
}

/// One value as given: what, and where (its span in the file, or the command line).
#[derive(Debug, Clone, PartialEq)]
pub struct Given {
    pub raw: Raw,
    pub span: Range<usize>,
}

/// A span that marks a value given on the command line rather than in the file.
pub(super) const FLAG_SPAN: Range<usize> = usize::MAX..usize::MAX;

/// Settings as written in the file or on the command line, before they are read: each key's
/// value with its place. What is missing takes its default when validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    keys: BTreeMap<String, Given>,
    /// The `[peers]` table, entry by entry.
    peers: BTreeMap<String, Given>,
    /// What is wrong regardless of values (an unknown key, `peers` that is not a table),
    /// reported first by validation: (key, span, message).
    problems: Vec<(String, Range<usize>, String)>,
}

/// A TOML syntax error: where, the key whose value it is in when that is a known key (and the
/// line that key is on), and what the parser expected.
#[derive(Debug, Clone, PartialEq)]
pub struct TomlError {
    pub line: usize,
    pub key: Option<(String, usize)>,
    pub message: String,
}

impl std::error::Error for TomlError {}

impl std::fmt::Display for TomlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        match &self.key {
            Some((key, line)) if *line == self.line => write!(f, " (`{key}`)")?,
            Some((key, line)) => write!(f, " (in the value of `{key}`, line {line})")?,
            None => {}
        }
        write!(f, ": not valid TOML: {}", self.message)
    }
}

/// The line of a byte offset (from 1).
fn line_of(text: &str, at: usize) -> usize {
    let upto = at.min(text.len());
    text.as_bytes()[..upto]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Settings {
    /// Reads and parses a TOML file. Unknown keys are kept for validation to report with their
    /// line; syntax errors name the line (and its key when it is one).
    pub fn load(path: &Path) -> Result<(Settings, Origin), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let settings = Self::parse(&text).map_err(|error| ConfigError::Syntax {
            path: path.to_path_buf(),
            error,
        })?;
        Ok((
            settings,
            Origin::File {
                path: path.to_path_buf(),
                text,
            },
        ))
    }

    /// Parses TOML text into settings.
    pub fn parse(text: &str) -> Result<Settings, TomlError> {
        let document = toml::from_str::<Spanned<Raw>>(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let line = line_of(text, at);
            // A date-time reaches the visitor as a private map whose key is no spanned
            // string: no key takes a date-time.
            let message = if e.message().contains("$__toml_private_datetime") {
                "a date-time, which no key takes".to_string()
            } else {
                e.message().to_string()
            };
            TomlError {
                line,
                key: key_on_line(text, line),
                message,
            }
        })?;
        let mut settings = Settings::default();
        let Raw::Table(entries) = document.into_inner() else {
            return Ok(settings);
        };
        for (key, value) in entries {
            let (key_span, key) = (key.span(), key.into_inner());
            let (span, raw) = (value.span(), value.into_inner());
            if key == "peers" {
                match raw {
                    Raw::Table(peers) => {
                        for (name, url) in peers {
                            let span = url.span();
                            settings.peers.insert(
                                name.into_inner(),
                                Given {
                                    raw: url.into_inner(),
                                    span,
                                },
                            );
                        }
                    }
                    other => settings.problems.push((
                        key,
                        span,
                        format!(
                            "must be a table of node_name = \"http://host:port\", not {}",
                            other.what()
                        ),
                    )),
                }
            } else if super::is_key(&key) {
                settings.keys.insert(key, Given { raw, span });
            } else {
                settings
                    .problems
                    .push((key, key_span, "unknown key".to_string()));
            }
        }
        Ok(settings)
    }

    /// Sets `key` as a flag gives it.
    pub fn set_flag(&mut self, key: &str, text: String) {
        self.keys.insert(
            key.to_string(),
            Given {
                raw: Raw::Flag(text),
                span: FLAG_SPAN,
            },
        );
    }

    /// Sets a `--peer NAME=URL` entry.
    pub fn set_peer_flag(&mut self, name: &str, url: String) {
        self.peers.insert(
            name.to_string(),
            Given {
                raw: Raw::Flag(url),
                span: FLAG_SPAN,
            },
        );
    }

    /// These settings, with `key` set as a flag to `text` when nothing sets it.
    pub fn or_flag(mut self, key: &str, text: &str) -> Settings {
        if !self.keys.contains_key(key) {
            self.set_flag(key, text.to_string());
        }
        self
    }

    /// Lays `other` (command-line flags) over `self` (the file): what `other` sets wins. Peer
    /// entries merge one by one: a flag's entry replaces the file's entry of that node only.
    pub fn overlay(mut self, other: Settings) -> Settings {
        self.keys.extend(other.keys);
        self.peers.extend(other.peers);
        self.problems.extend(other.problems);
        self
    }

    /// The value given for `key`, if any.
    pub fn given(&self, key: &str) -> Option<&Given> {
        self.keys.get(key)
    }

    /// The `[peers]` entries given.
    pub fn peers(&self) -> &BTreeMap<String, Given> {
        &self.peers
    }

    /// The first problem found while parsing, if any.
    pub(super) fn first_problem(&self) -> Option<&(String, Range<usize>, String)> {
        self.problems.first()
    }

    /// Applies defaults and checks every value, alone and together.
    pub fn validate(self, origin: &Origin) -> Result<Config, ConfigError> {
        super::validate::config(&self, origin)
    }
}

/// The key whose value line `line` of `text` is in, and the line of that key, when it is a key
/// this configuration knows (or the `[peers]` header): an unknown word is not repeated, it
/// could be anything. A line that starts no statement (inside a multi-line string) belongs to
/// the statement above it.
fn key_on_line(text: &str, line: usize) -> Option<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = line.min(lines.len());
    while at >= 1 {
        let l = lines[at - 1].trim();
        if l.starts_with('[') {
            return l
                .trim_start_matches('[')
                .starts_with("peers")
                .then(|| ("peers".to_string(), at));
        }
        if let Some((key, _)) = l.split_once('=') {
            let key = key.trim();
            let bare = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if bare {
                return super::is_key(key).then(|| (key.to_string(), at));
            }
        }
        at -= 1;
    }
    None
}

/// Where settings came from, to name it in errors.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Built-in defaults and flags only.
    Defaults,
    /// A file, whose text is kept to turn spans into line numbers.
    File { path: PathBuf, text: String },
}

impl Origin {
    /// "command line", "defaults" or "FILE line N".
    pub fn describe(&self, span: Range<usize>) -> String {
        match self {
            _ if span == FLAG_SPAN => "command line".to_string(),
            Origin::Defaults => "defaults".to_string(),
            Origin::File { path, text } => {
                format!("{} line {}", path.display(), line_of(text, span.start))
            }
        }
    }
}

/// Where a configuration comes from: the file, if any, and the flags laid over it. Loading
/// again (a reload) reads the file again and lays the same flags over it.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub flags: Settings,
}

impl Source {
    /// The local daemon's API address and state directory, from the file (if any) alone, for
    /// the commands that talk to the daemon on this host (`drain`, `check`): its `listen`, an
    /// unspecified address (`0.0.0.0`) asked on the loopback. A node_name is not needed.
    pub fn local_daemon(file: Option<PathBuf>) -> Result<(SocketAddr, PathBuf), ConfigError> {
        let source = Source {
            file,
            ..Source::default()
        };
        let (settings, origin) = source.settings()?;
        let config = settings.or_flag("node_name", "local").validate(&origin)?;
        let mut listen = config.node.listen;
        if listen.ip().is_unspecified() {
            listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok((listen, config.node.state_dir))
    }

    /// The configuration: the file (if any), the flags over it, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let (file, origin) = self.settings()?;
        file.overlay(self.flags.clone()).validate(&origin)
    }

    /// The file's settings (none without a file) and their origin.
    pub fn settings(&self) -> Result<(Settings, Origin), ConfigError> {
        match &self.file {
            Some(path) => Settings::load(path),
            None => Ok((Settings::default(), Origin::Defaults)),
        }
    }
}
