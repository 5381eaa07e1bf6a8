//! How a key is declared: one line in a group ([`group!`]) gives its field, its doc comment,
//! its kind and default, and whether a reload can apply it. From that line come the TOML key,
//! the flag of the same name with its `--help`, the line `--check-config` prints, the key's
//! entry in the reload's diff, and its place in the error messages.
//!
//! Owns the kinds of values ([`Kind`]): how each is read from the file and from a flag, how it
//! is written back, and the words of its errors, which never repeat the value.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::file::Raw;
use crate::auth::ClusterId;
use crate::wire::VoteScope;
use crate::{conninfo, units};

/// A key, as its declaration gives it (for `--help`, the diff and the tests).
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The TOML key; the flag is the same with `-` for `_`.
    pub name: &'static str,
    /// The doc comment of its field.
    pub doc: &'static str,
    /// What it is when not given.
    pub default: Fallback,
    /// Only a restart applies a change (a reload keeps the running value and says so).
    pub restart: bool,
}

/// What a key is when neither the file nor a flag gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fallback {
    /// This text, read as a flag's would be (`""` is "not set" for an optional key).
    Text(&'static str),
    /// Computed by its group's validation from other settings; described in `--help`.
    Computed(&'static str),
}

impl Fallback {
    /// As `--help` and the README show it.
    pub fn describe(&self) -> &'static str {
        match self {
            Fallback::Text("") => "not set",
            Fallback::Text(t) | Fallback::Computed(t) => t,
        }
    }
}

/// One key whose value differs between two configurations (secrets masked).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: &'static str,
    pub old: Option<String>,
    pub new: Option<String>,
    /// Only a restart applies it.
    pub restart: bool,
}

impl std::fmt::Display for Change {
    /// `key: old → new`, values as `--check-config` shows them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| {
            v.as_deref()
                .map_or("not set".to_string(), |v| v.trim_matches('"').to_string())
        };
        write!(f, "{}: {} → {}", self.key, show(&self.old), show(&self.new))
    }
}

/// A value as `--check-config` shows it, for `Debug`.
pub struct Shown(pub Option<String>);

impl std::fmt::Debug for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_deref().unwrap_or("not set"))
    }
}

/// A group of settings: a struct whose every field is a key, declared with `group!`.
pub trait Group: Sized {
    /// Its keys, in declaration order.
    const KEYS: &'static [Key];
    /// Reads every key from what was given, with defaults; no rule across keys yet.
    fn read(check: &super::validate::Check<'_>) -> Result<Self, super::ConfigError>;
    /// Each key with its value as TOML (`None`: not set), for `--check-config`.
    fn show(&self, out: &mut Vec<(&'static str, Option<String>)>);
    /// The keys whose values differ in `new`.
    fn changes(&self, new: &Self, out: &mut Vec<Change>);
    /// Takes from `running` the value of every key only a restart applies.
    fn keep_restart_only(&mut self, running: &Self);
}

/// The text of a flag's `--help`: the first paragraph of its key's doc comment, and the
/// default.
pub fn flag_help(doc: &str, default: Fallback) -> String {
    let first: Vec<&str> = doc
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let text = first.join(" ");
    let text = text.strip_suffix('.').unwrap_or(&text);
    format!("{text} [default: {}]", default.describe())
}

/// How values of one kind are read, written back and named.
pub trait Kind {
    type Value: Clone + PartialEq + std::fmt::Debug;
    /// The flag's placeholder in `--help`.
    const PLACEHOLDER: &'static str;
    /// Reads the value from text: a flag, a default, or a TOML string. The error says what is
    /// wrong, never what the text was.
    fn parse(text: &str) -> Result<Self::Value, String>;
    /// Reads the value from the file; by default a TOML string, read by [`Kind::parse`].
    fn from_toml(raw: &Raw) -> Result<Self::Value, String> {
        match raw {
            Raw::Text(t) | Raw::Flag(t) => Self::parse(t),
            other => Err(format!("must be a string, not {}", other.what())),
        }
    }
    /// The value as TOML, for `--check-config`; `None` when not set.
    fn show(value: &Self::Value) -> Option<String>;
}

fn quoted(text: &str) -> Option<String> {
    Some(format!("{text:?}"))
}

/// A name: not empty, no surrounding spaces.
pub struct Name;

impl Kind for Name {
    type Value = String;
    const PLACEHOLDER: &'static str = "NAME";
    fn parse(text: &str) -> Result<String, String> {
        if text.trim().is_empty() || text.trim() != text {
            return Err("must be a non-empty name without surrounding spaces".into());
        }
        Ok(text.to_string())
    }
    fn show(value: &String) -> Option<String> {
        quoted(value)
    }
}

/// A libpq conninfo (key=value or URI); its password is masked when shown.
pub struct Conninfo;

impl Kind for Conninfo {
    type Value = String;
    const PLACEHOLDER: &'static str = "CONNINFO";
    fn parse(text: &str) -> Result<String, String> {
        match conninfo::take_passfile(text)
            .0
            .parse::<tokio_postgres::Config>()
        {
            Ok(_) => Ok(text.to_string()),
            Err(e) => Err(format!("not a valid conninfo: {}", conninfo_error(&e))),
        }
    }
    fn show(value: &String) -> Option<String> {
        quoted(&conninfo::redact(value))
    }
}

/// What is wrong with a conninfo, in words that hold none of its text: the driver's messages
/// may quote a character or an unknown key word, which could be part of a password.
fn conninfo_error(e: &tokio_postgres::Error) -> String {
    let cause = std::error::Error::source(e).map_or(String::new(), |c| c.to_string());
    if let Some(option) = cause
        .strip_prefix("invalid value for option `")
        .and_then(|o| o.strip_suffix('`'))
    {
        // The driver names only options it knows: a fixed word, never the text given.
        return format!("an invalid value for option `{option}`");
    }
    if cause.starts_with("unknown option") {
        "an unknown option (see libpq's parameter key words)".into()
    } else if cause.starts_with("unterminated") {
        "an unterminated quoted value".into()
    } else if cause == "unexpected EOF" {
        "it ends too early (a key word without `=` and a value?)".into()
    } else if let Some(at) = cause
        .strip_prefix("unexpected character at byte ")
        .and_then(|r| r.split(':').next())
    {
        format!("an unexpected character at byte {at}")
    } else {
        "a syntax error (key=value pairs, or a postgresql:// URI)".into()
    }
}

/// A whole number of `N`, `PORT`, ... (TOML integers; flags in decimal).
macro_rules! whole_number {
    ($(#[doc = $doc:literal])* $kind:ident: $ty:ty, $placeholder:literal) => {
        $(#[doc = $doc])*
        pub struct $kind;

        impl Kind for $kind {
            type Value = $ty;
            const PLACEHOLDER: &'static str = $placeholder;
            fn parse(text: &str) -> Result<$ty, String> {
                text.trim()
                    .parse::<i64>()
                    .map_err(|_| "must be a whole number".to_string())
                    .and_then(|n| Self::from_toml(&Raw::Integer(n)))
            }
            fn from_toml(raw: &Raw) -> Result<$ty, String> {
                match raw {
                    Raw::Integer(n) => <$ty>::try_from(*n).map_err(|_| {
                        format!("must be a whole number from {} to {}", <$ty>::MIN, <$ty>::MAX)
                    }),
                    Raw::Flag(t) => Self::parse(t),
                    other => Err(format!("must be a whole number, not {}", other.what())),
                }
            }
            fn show(value: &$ty) -> Option<String> {
                Some(value.to_string())
            }
        }
    };
}

whole_number! {
    /// A count.
    Count: u32, "N"
}
whole_number! {
    /// A TCP port (its group refuses 0 where that matters).
    Port: u16, "PORT"
}

/// A fraction (`0.01`).
pub struct Ratio;

impl Kind for Ratio {
    type Value = f64;
    const PLACEHOLDER: &'static str = "RATIO";
    fn parse(text: &str) -> Result<f64, String> {
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite())
            .ok_or_else(|| "must be a number like 0.01".to_string())
    }
    fn from_toml(raw: &Raw) -> Result<f64, String> {
        match raw {
            Raw::Float(r) if r.is_finite() => Ok(*r),
            #[allow(clippy::cast_precision_loss)]
            Raw::Integer(n) => Ok(*n as f64),
            Raw::Flag(t) => Self::parse(t),
            Raw::Float(_) => Err("must be a finite number".into()),
            other => Err(format!("must be a number like 0.01, not {}", other.what())),
        }
    }
    fn show(value: &f64) -> Option<String> {
        Some(value.to_string())
    }
}

/// Shortest and longest [`Period`].
const PERIODS: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));

/// A duration between 10 ms and 1 h, in humantime's syntax.
pub struct Period;

impl Kind for Period {
    type Value = Duration;
    const PLACEHOLDER: &'static str = "DURATION";
    fn parse(text: &str) -> Result<Duration, String> {
        let d = units::parse_duration(text)?;
        if d < PERIODS.0 || d > PERIODS.1 {
            return Err("must be between 10ms and 1h".into());
        }
        Ok(d)
    }
    fn show(value: &Duration) -> Option<String> {
        quoted(&units::format_duration(*value))
    }
}

/// A [`Period`], or zero (`"0s"`: none).
pub struct PeriodOrZero;

impl Kind for PeriodOrZero {
    type Value = Duration;
    const PLACEHOLDER: &'static str = "DURATION";
    fn parse(text: &str) -> Result<Duration, String> {
        match units::parse_duration(text) {
            Ok(d) if d.is_zero() => Ok(d),
            _ => Period::parse(text).map_err(|e| format!("{e}, or 0s")),
        }
    }
    fn show(value: &Duration) -> Option<String> {
        quoted(&units::format_duration(*value))
    }
}

/// A vote scope: `"site"` or `"cluster"` ([`VoteScope`]).
pub struct Scope;

impl Kind for Scope {
    type Value = VoteScope;
    const PLACEHOLDER: &'static str = "SCOPE";
    fn parse(text: &str) -> Result<VoteScope, String> {
        text.parse()
    }
    fn show(value: &VoteScope) -> Option<String> {
        quoted(value.name())
    }
}

/// A size in bytes, or with PostgreSQL's units (`16MB`).
pub struct Size;

impl Kind for Size {
    type Value = u64;
    const PLACEHOLDER: &'static str = "SIZE";
    fn parse(text: &str) -> Result<u64, String> {
        units::parse_size(text)
    }
    fn show(value: &u64) -> Option<String> {
        quoted(&units::format_size(*value))
    }
}

/// An IP address and port.
pub struct Addr;

impl Kind for Addr {
    type Value = SocketAddr;
    const PLACEHOLDER: &'static str = "ADDR";
    fn parse(text: &str) -> Result<SocketAddr, String> {
        text.parse()
            .map_err(|_| "not an address:port like 0.0.0.0:5999".to_string())
    }
    fn show(value: &SocketAddr) -> Option<String> {
        quoted(&value.to_string())
    }
}

/// An [`Addr`], or nothing (`""`).
pub struct MaybeAddr;

impl Kind for MaybeAddr {
    type Value = Option<SocketAddr>;
    const PLACEHOLDER: &'static str = "ADDR";
    fn parse(text: &str) -> Result<Option<SocketAddr>, String> {
        (!text.is_empty()).then(|| Addr::parse(text)).transpose()
    }
    fn show(value: &Option<SocketAddr>) -> Option<String> {
        value.as_ref().and_then(Addr::show)
    }
}

/// An IP address, or nothing (`""`).
pub struct MaybeIp;

impl Kind for MaybeIp {
    type Value = Option<IpAddr>;
    const PLACEHOLDER: &'static str = "IP";
    fn parse(text: &str) -> Result<Option<IpAddr>, String> {
        (!text.is_empty())
            .then(|| {
                text.parse()
                    .map_err(|_| "not an IP address like 10.0.0.11".to_string())
            })
            .transpose()
    }
    fn show(value: &Option<IpAddr>) -> Option<String> {
        value.as_ref().and_then(|a| quoted(&a.to_string()))
    }
}

/// An absolute path of a directory.
pub struct Dir;

impl Kind for Dir {
    type Value = PathBuf;
    const PLACEHOLDER: &'static str = "DIR";
    fn parse(text: &str) -> Result<PathBuf, String> {
        let p = PathBuf::from(text);
        if p.is_absolute() {
            Ok(p)
        } else {
            Err("must be an absolute path".into())
        }
    }
    fn show(value: &PathBuf) -> Option<String> {
        quoted(&value.display().to_string())
    }
}

/// An absolute path of a command, or nothing (`""`); its group checks that it is an
/// executable regular file.
pub struct MaybeCommand;

impl Kind for MaybeCommand {
    type Value = Option<PathBuf>;
    const PLACEHOLDER: &'static str = "PATH";
    fn parse(text: &str) -> Result<Option<PathBuf>, String> {
        maybe_absolute(text, "must be an absolute path to an executable file")
    }
    fn show(value: &Option<PathBuf>) -> Option<String> {
        show_path(value)
    }
}

/// An absolute path (`why` when `text` is not one), or nothing (`""`).
fn maybe_absolute(text: &str, why: &str) -> Result<Option<PathBuf>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let p = PathBuf::from(text);
    if p.is_absolute() {
        Ok(Some(p))
    } else {
        Err(why.into())
    }
}

/// A path as the configuration writes it (quoted), or nothing.
fn show_path(value: &Option<PathBuf>) -> Option<String> {
    value
        .as_ref()
        .and_then(|p| quoted(&p.display().to_string()))
}

/// An absolute path of a file, or nothing (`""`); its group checks the file itself.
pub struct MaybeFile;

impl Kind for MaybeFile {
    type Value = Option<PathBuf>;
    const PLACEHOLDER: &'static str = "PATH";
    fn parse(text: &str) -> Result<Option<PathBuf>, String> {
        maybe_absolute(text, "must be an absolute path")
    }
    fn show(value: &Option<PathBuf>) -> Option<String> {
        show_path(value)
    }
}

/// A cluster identity (a PostgreSQL system identifier in decimal), or nothing (`""`).
pub struct MaybeClusterId;

impl Kind for MaybeClusterId {
    type Value = Option<ClusterId>;
    const PLACEHOLDER: &'static str = "ID";
    fn parse(text: &str) -> Result<Option<ClusterId>, String> {
        if text.is_empty() {
            return Ok(None);
        }
        ClusterId::parse(text).map(Some).map_err(|_| {
            "not a system identifier (the decimal number of `SELECT system_identifier FROM \
             pg_control_system()` on the primary)"
                .to_string()
        })
    }
    fn from_toml(raw: &Raw) -> Result<Option<ClusterId>, String> {
        match raw {
            Raw::Text(t) | Raw::Flag(t) => Self::parse(t),
            Raw::Integer(i) => Self::parse(&i.to_string()),
            other => Err(format!("must be a string, not {}", other.what())),
        }
    }
    fn show(value: &Option<ClusterId>) -> Option<String> {
        value.as_ref().and_then(|c| quoted(&c.to_string()))
    }
}

/// A comma-separated list of IP addresses (`""`: none).
pub struct IpList;

impl Kind for IpList {
    type Value = Vec<IpAddr>;
    const PLACEHOLDER: &'static str = "IPS";
    fn parse(text: &str) -> Result<Vec<IpAddr>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .enumerate()
            .map(|(i, t)| {
                t.parse().map_err(|_| {
                    format!(
                        "item {} is not an IP address like 10.0.0.11 (a comma-separated list)",
                        i + 1
                    )
                })
            })
            .collect()
    }
    fn show(value: &Vec<IpAddr>) -> Option<String> {
        let text: Vec<String> = value.iter().map(|a| a.to_string()).collect();
        quoted(&text.join(","))
    }
}

/// A log filter in `tracing`'s env-filter syntax (`info`, `primgr=debug,warn`).
pub struct LogFilter;

impl Kind for LogFilter {
    type Value = String;
    const PLACEHOLDER: &'static str = "FILTER";
    fn parse(text: &str) -> Result<String, String> {
        tracing_subscriber::EnvFilter::try_new(text)
            .map(|_| text.to_string())
            .map_err(|_| "not a log filter like \"info\" or \"primgr=debug,warn\"".to_string())
    }
    fn show(value: &String) -> Option<String> {
        quoted(value)
    }
}

/// Declares a group of settings: each key once, as
/// `/// doc` `key: Type as Kind = "default" [, restart];` (or `= computed "how"`, for a default
/// its group's validation computes). `keys of Existing` maps keys onto the fields of a struct
/// defined elsewhere (`key => field: ...`), so that the struct is not declared twice.
///
/// It writes the struct (unless it exists), its [`Group`] impl and a `clap::Args` struct of
/// flags, one per key, named as the key, whose `--help` is the key's doc and default.
macro_rules! group {
    (
        $(#[doc = $gdoc:literal])*
        pub struct $group:ident, flags $flags:ident {
            $(
                $(#[doc = $doc:literal])*
                $key:ident: $ty:ty as $kind:ty = $($computed:ident)? $default:literal
                    $(, $restart:ident)?;
            )*
        }
    ) => {
        $(#[doc = $gdoc])*
        #[derive(Clone, PartialEq)]
        pub struct $group {
            $( $(#[doc = $doc])* pub $key: $ty, )*
        }

        /// Each key as `--check-config` shows it: a secret is masked here too.
        impl std::fmt::Debug for $group {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut d = f.debug_struct(stringify!($group));
                $(
                    d.field(
                        stringify!($key),
                        &$crate::config::declare::Shown(
                            <$kind as $crate::config::declare::Kind>::show(&self.$key),
                        ),
                    );
                )*
                d.finish()
            }
        }
        $crate::config::declare::group! {
            @impl $group, $flags {
                $( [$($doc)*] $key => $key: $kind = $($computed)? $default $(, $restart)?; )*
            }
        }
    };
    (
        $(#[doc = $gdoc:literal])*
        keys of $group:ident, flags $flags:ident {
            $(
                $(#[doc = $doc:literal])*
                $key:ident => $field:ident: $kind:ty = $($computed:ident)? $default:literal
                    $(, $restart:ident)?;
            )*
        }
    ) => {
        $crate::config::declare::group! {
            @impl $group, $flags {
                $( [$($doc)*] $key => $field: $kind = $($computed)? $default $(, $restart)?; )*
            }
        }
    };
    (@impl $group:ident, $flags:ident {
        $(
            [$($doc:literal)*] $key:ident => $field:ident: $kind:ty = $($computed:ident)?
                $default:literal $(, $restart:ident)?;
        )*
    }) => {
        #[doc = concat!("The flags of [`", stringify!($group), "`]: one per key, named as the key.")]
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct $flags {
            $(
                #[arg(
                    long,
                    value_name = <$kind as $crate::config::declare::Kind>::PLACEHOLDER,
                    allow_negative_numbers = true,
                    help = $crate::config::declare::flag_help(
                        concat!($($doc, "\n",)*),
                        $crate::config::declare::fallback!($($computed)? $default),
                    ),
                )]
                $key: Option<String>,
            )*
        }

        impl $flags {
            /// Lays the flags given over `settings`.
            pub fn lay(self, settings: &mut $crate::config::Settings) {
                $( if let Some(text) = self.$key { settings.set_flag(stringify!($key), text); } )*
            }
        }

        impl $crate::config::declare::Group for $group {
            const KEYS: &'static [$crate::config::declare::Key] = &[
                $(
                    $crate::config::declare::Key {
                        name: stringify!($key),
                        doc: concat!($($doc, "\n",)*),
                        default: $crate::config::declare::fallback!($($computed)? $default),
                        restart: $crate::config::declare::restart!($($restart)?),
                    },
                )*
            ];

            fn read(
                check: &$crate::config::validate::Check<'_>,
            ) -> Result<Self, $crate::config::ConfigError> {
                Ok($group {
                    $(
                        $field: $crate::config::declare::read!(
                            check, $kind, $key, $($computed)? $default
                        )?,
                    )*
                })
            }

            fn show(&self, out: &mut Vec<(&'static str, Option<String>)>) {
                $(
                    out.push((
                        stringify!($key),
                        <$kind as $crate::config::declare::Kind>::show(&self.$field),
                    ));
                )*
            }

            fn changes(&self, new: &Self, out: &mut Vec<$crate::config::declare::Change>) {
                $(
                    if self.$field != new.$field {
                        out.push($crate::config::declare::Change {
                            key: stringify!($key),
                            old: <$kind as $crate::config::declare::Kind>::show(&self.$field),
                            new: <$kind as $crate::config::declare::Kind>::show(&new.$field),
                            restart: $crate::config::declare::restart!($($restart)?),
                        });
                    }
                )*
            }

            fn keep_restart_only(&mut self, _running: &Self) {
                $( $crate::config::declare::keep!($($restart)? self.$field, _running.$field); )*
            }
        }
    };
}

/// A key's [`Fallback`] from its declaration.
macro_rules! fallback {
    (computed $how:literal) => {
        $crate::config::declare::Fallback::Computed($how)
    };
    ($text:literal) => {
        $crate::config::declare::Fallback::Text($text)
    };
}

/// Reads one key: its given value, or its default text, or (computed) a placeholder that its
/// group's validation replaces.
macro_rules! read {
    ($check:ident, $kind:ty, $key:ident, computed $how:literal) => {
        $check.read_computed::<$kind>(stringify!($key))
    };
    ($check:ident, $kind:ty, $key:ident, $text:literal) => {
        $check.read::<$kind>(stringify!($key), $text)
    };
}

/// Whether a key is marked `restart`.
macro_rules! restart {
    () => {
        false
    };
    (restart) => {
        true
    };
}

/// For a key marked `restart`: the running value stays.
macro_rules! keep {
    (restart $field:expr, $running:expr) => {
        $field = $running.clone()
    };
    ($field:expr, $running:expr) => {};
}

pub(crate) use {fallback, group, keep, read, restart};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind refuses what it cannot read without repeating it.
    #[test]
    fn kinds_never_repeat_a_refused_text() {
        let secret = "pw-S3cr3t";
        let texts = [
            secret.to_string(),
            format!("host=db {secret}"),
            format!("host=db password {secret}"),
            format!("host=db password='{secret}"),
            format!("host=db {secret}=x"),
            format!("postgresql://u:{secret}@db:port/x"),
            format!("1{secret}"),
            format!(" {secret} "),
            String::new(),
        ];
        let mut refused = 0;
        for text in &texts {
            let errors = [
                Name::parse(text).err(),
                Conninfo::parse(text).err(),
                Count::parse(text).err(),
                Port::parse(text).err(),
                Ratio::parse(text).err(),
                Period::parse(text).err(),
                PeriodOrZero::parse(text).err(),
                Size::parse(text).err(),
                Addr::parse(text).err(),
                MaybeAddr::parse(text).err(),
                MaybeIp::parse(text).err(),
                Dir::parse(text).err(),
                MaybeCommand::parse(text).err(),
                MaybeFile::parse(text).err(),
                MaybeClusterId::parse(text).err(),
                IpList::parse(text).err(),
                LogFilter::parse(text).err(),
            ];
            for e in errors.into_iter().flatten() {
                assert!(!e.contains("S3cr3t"), "{text:?}: {e}");
                refused += 1;
            }
        }
        assert!(refused >= texts.len() * 10, "{refused}");
        println!("{refused} refusals by 17 kinds, none repeating the text");
    }

    #[test]
    fn conninfo_errors_say_what_is_wrong() {
        for (text, want) in [
            ("host='unterminated", "unterminated"),
            ("host=db sslmode=sometimes", "option `sslmode`"),
            ("host=db nonsense=1", "unknown option"),
            ("host=db password", "ends too early"),
        ] {
            let e = Conninfo::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn help_is_the_first_paragraph_and_the_default() {
        let help = flag_help(
            " Poll period:\n how often.\n\n More for the curious.\n",
            Fallback::Text("1s"),
        );
        assert_eq!(help, "Poll period: how often [default: 1s]");
        assert_eq!(
            flag_help(" Off.\n", Fallback::Text("")),
            "Off [default: not set]"
        );
    }
}
