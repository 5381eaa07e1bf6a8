//! conninfo: the libpq connection strings primgr reads (its own `conninfo`, and each node's in
//! `repmgr.nodes`), in key=value or URI form.
//!
//! Owns what primgr takes from them and what it shows of them: the network host of a node (the
//! default address of its daemon), and the text with every secret masked ([`redact`]: all that
//! `/status`, `primgr cluster`, the logs and `--check-config` ever show; [`Conninfo`], whose
//! `Debug` and `Display` are that). Masking reads the text exactly as tokio-postgres 0.7 does
//! (its key=value and URI parsers: quotes, escapes, percent-encoded keys, credentials up to the
//! first `@`) and shows only the values of libpq's non-secret keywords, so no spelling the
//! driver decodes to a password gets through; a text it cannot parse is masked after its first
//! key. [`secrets`] and [`scrub`] take those values out of error texts. Also libpq's `passfile`,
//! which the driver does not read: primgr takes it out of the conninfo, reads it as a file of
//! secrets ([`read_secret_file`]: a regular file, never through a symlink, private, bounded) and
//! looks the password up in it the way libpq does ([`pgpass_lookup`]). A passfile is shown as
//! the path it is; its contents never leave [`crate::db`].

use std::borrow::Cow;
use std::io::Read as _;
use std::ops::Range;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;

/// What every masked value is shown as.
pub const MASK: &str = "***";

/// The keys whose values are shown: libpq's connection keywords (PostgreSQL 17) and
/// tokio-postgres' `keepalives_retries`, except `password` and `sslpassword`. Every other key
/// is masked: the two secret ones, any spelling the driver does not take as given (`PASSWORD`,
/// a misspelt `pasword`), and keywords of later libpq versions that may hold a secret.
const SHOWN: &[&str] = &[
    "application_name",
    "channel_binding",
    "client_encoding",
    "connect_timeout",
    "dbname",
    "fallback_application_name",
    "gssdelegation",
    "gssencmode",
    "gsslib",
    "host",
    "hostaddr",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "krbsrvname",
    "load_balance_hosts",
    "options",
    "passfile",
    "port",
    "replication",
    "require_auth",
    "requirepeer",
    "service",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "sslcert",
    "sslcertmode",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslkey",
    "sslmode",
    "sslnegotiation",
    "sslrootcert",
    "sslsni",
    "target_session_attrs",
    "tcp_user_timeout",
    "user",
];

/// A conninfo whose `Debug` and `Display` show only its [`redact`]ed form, so that a
/// configuration printed with `{:?}` (or logged) reveals no secret. It dereferences to the
/// text itself, for what connects with it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Conninfo(String);

impl Conninfo {
    /// The text itself, secrets included: for connecting, never for showing.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Conninfo {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Conninfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conninfo({:?})", redact(&self.0))
    }
}

impl std::fmt::Display for Conninfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl From<String> for Conninfo {
    fn from(s: String) -> Conninfo {
        Conninfo(s)
    }
}

impl From<&str> for Conninfo {
    fn from(s: &str) -> Conninfo {
        Conninfo(s.to_string())
    }
}

impl PartialEq<str> for Conninfo {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<Conninfo> for String {
    fn eq(&self, other: &Conninfo) -> bool {
        *self == other.0
    }
}

impl PartialEq<&str> for Conninfo {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The network host of a conninfo (key=value or URI form): the first TCP `host`, else the
/// first `hostaddr`. A conninfo that only names a unix socket has none. Only `host` and
/// `hostaddr` are read: a member's conninfo in `repmgr.nodes` is written for libpq and may
/// hold keys or values the driver does not take (`sslpassword`, `sslmode=verify-full`).
pub fn host(conninfo: &str) -> Result<String, String> {
    let parsed = parse(conninfo).map_err(|e| format!("its conninfo cannot be parsed ({e})"))?;
    let config: tokio_postgres::Config = parsed
        .without(conninfo, |key| key != "host" && key != "hostaddr")
        .parse()
        .map_err(|_| "its host or hostaddr is not valid".to_string())?;
    let tcp = config.get_hosts().iter().find_map(|h| match h {
        Host::Tcp(name) if !name.is_empty() => Some(name.clone()),
        _ => None,
    });
    tcp.or_else(|| config.get_hostaddrs().first().map(|a| a.to_string()))
        .ok_or_else(|| "its conninfo names no network host (only a socket, or nothing)".into())
}

/// The port of a conninfo's first host, when it names one (without one, libpq uses 5432).
pub fn port(conninfo: &str) -> Option<u16> {
    let config: tokio_postgres::Config = conninfo.parse().ok()?;
    config.get_ports().first().copied()
}

/// The conninfo as it may be shown: every value whose key is not one of libpq's non-secret
/// keywords replaced by `***` (so `password`, `sslpassword`, a URI's `user:password@`, a
/// percent-encoded `pass%77ord`, and any key the driver would not take as written), read the
/// way tokio-postgres reads it. Text the driver ignores is masked too. A conninfo that
/// cannot be parsed is masked after its first key (`host=*** (cannot be parsed)`).
pub fn redact(conninfo: &str) -> String {
    match parse(conninfo) {
        Ok(parsed) => splice(
            conninfo,
            parsed
                .settings
                .iter()
                .filter(|s| s.masked)
                .map(|s| (s.raw_value.clone(), MASK))
                .chain(parsed.ignored.clone().map(|r| (r, MASK))),
        ),
        Err(e) => {
            let shown = match e.first_key {
                Some(key) => format!("{key}={MASK}"),
                None => MASK.to_string(),
            };
            format!("{}{shown} (cannot be parsed)", e.scheme)
        }
    }
}

/// Every value [`redact`] masks, as written and as the driver decodes it; for a conninfo
/// that cannot be parsed, everything after its first key. For [`scrub`].
pub fn secrets(conninfo: &str) -> Vec<String> {
    let mut out = Vec::new();
    match parse(conninfo) {
        Ok(parsed) => {
            for s in parsed.settings.iter().filter(|s| s.masked) {
                out.push(conninfo[s.raw_value.clone()].to_string());
                out.push(s.value.clone());
            }
            out.extend(parsed.ignored.map(|r| conninfo[r].to_string()));
        }
        Err(e) => out.push(conninfo[e.masked_from..].to_string()),
    }
    out.retain(|s| !s.trim().is_empty());
    out
}

/// `text` with every occurrence of each secret replaced by `***` (longest first, so that a
/// secret containing another is masked whole). For error texts that might quote a conninfo
/// value: a server's message quoting the user name that a malformed URI made of a password.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
        .into_iter()
        .fold(text.to_string(), |t, s| t.replace(s.as_str(), MASK))
}

/// The conninfo without its `passfile` setting (which the driver does not read), and that
/// setting's path. A conninfo that cannot be parsed is returned as it is.
pub fn take_passfile(conninfo: &str) -> (String, Option<PathBuf>) {
    let Ok(parsed) = parse(conninfo) else {
        return (conninfo.to_string(), None);
    };
    let passfile = parsed
        .settings
        .iter()
        .rfind(|s| s.droppable && s.key == "passfile")
        .map(|s| PathBuf::from(&s.value));
    match passfile {
        Some(path) => (
            parsed.without(conninfo, |key| key == "passfile"),
            Some(path),
        ),
        None => (conninfo.to_string(), None),
    }
}

/// Longest file of secrets read (a password file is a few lines).
pub const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a file of secrets (the `passfile`) the way a daemon should: the path itself must be
/// a regular file (a symbolic link is not followed: `O_NOFOLLOW`; a FIFO, device or directory
/// is refused after `fstat` on the opened file, and opening never blocks: `O_NONBLOCK`),
/// neither group nor others may read it (as libpq requires), and it holds at most
/// [`MAX_SECRET_FILE`] bytes. The error says why, never what the file holds.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                "it is a symbolic link (not followed); name the file itself".into()
            }
            _ => e.to_string(),
        })?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err("group or others may read it; chmod 0600 it, as libpq requires".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(format!("larger than {MAX_SECRET_FILE} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".into())
}

/// The password a libpq password file gives for a connection, as libpq reads it: the first
/// line `hostname:port:database:username:password` whose fields match (`*` matches anything,
/// `\:` and `\\` are escapes, `#` starts a comment). A socket connection matches the host
/// `localhost`.
pub fn pgpass_lookup(
    text: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), dbname, user];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields = split_pgpass(line);
            (fields.len() == 5).then_some(fields)
        })
        .find(|f| {
            f[..4]
                .iter()
                .zip(wanted)
                .all(|(have, want)| have == "*" || have == want)
        })
        .map(|mut f| f.swap_remove(4))
}

/// The fields of a password file line (`:` separates, `\` escapes).
fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => field.extend(chars.next()),
            ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// One `key=value` setting of a conninfo as the driver reads it.
#[derive(Debug)]
struct Setting {
    /// The key as the driver compares it (a URI query key percent-decoded).
    key: String,
    /// The value as the driver takes it (quotes and escapes resolved, or percent-decoded).
    value: String,
    /// Where the value is written (quotes included).
    raw_value: Range<usize>,
    /// Whether it is a key=value pair or a URI query parameter (the parts of a URI's
    /// authority are not).
    droppable: bool,
    /// Where the whole setting is written (key=value form: with the blanks before it; URI
    /// query: `key=value`).
    whole: Range<usize>,
    /// Whether [`redact`] masks the value.
    masked: bool,
}

/// A conninfo read the way tokio-postgres 0.7 reads it (`Config::from_str`: its `UrlParser`
/// when the text starts with `postgres://` or `postgresql://`, else its key=value `Parser`).
#[derive(Debug)]
struct Parsed {
    settings: Vec<Setting>,
    /// Text the driver stops at and ignores (key=value form, from a stray `=` on).
    ignored: Option<Range<usize>>,
    /// URI form: where the query starts (its `?`), if it has one; None for key=value form.
    query: Option<Option<usize>>,
}

/// Why a conninfo cannot be parsed; what [`redact`] may still show of it.
#[derive(Debug)]
struct Unparsable {
    why: &'static str,
    /// The URI scheme (`postgresql://`), or empty.
    scheme: &'static str,
    /// The first key, when it is a shown one ([`SHOWN`]).
    first_key: Option<String>,
    /// Everything from here on is masked.
    masked_from: usize,
}

impl std::fmt::Display for Unparsable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.why)
    }
}

impl Parsed {
    /// The conninfo without the settings whose key `drop` selects (key=value pairs and URI
    /// query parameters; a URI's authority is kept).
    fn without(&self, text: &str, drop: impl Fn(&str) -> bool) -> String {
        let dropped = |s: &&Setting| s.droppable && drop(&s.key);
        match self.query {
            None => splice(
                text,
                self.settings
                    .iter()
                    .filter(dropped)
                    .map(|s| (s.whole.clone(), "")),
            ),
            Some(None) => text.to_string(),
            Some(Some(q)) => {
                let kept: Vec<&str> = self
                    .settings
                    .iter()
                    .filter(|s| s.droppable && !drop(&s.key))
                    .map(|s| &text[s.whole.clone()])
                    .collect();
                match kept.is_empty() {
                    true => text[..q].to_string(),
                    false => format!("{}?{}", &text[..q], kept.join("&")),
                }
            }
        }
    }
}

/// `text` with each range replaced (ranges in order, not overlapping).
fn splice<'a>(text: &str, edits: impl Iterator<Item = (Range<usize>, &'a str)>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (range, with) in edits {
        out.push_str(&text[at..range.start]);
        out.push_str(with);
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}

fn shown(key: &str) -> bool {
    SHOWN.contains(&key)
}

/// Whether a value is masked: the key is not a shown one, or the value looks like it swallowed
/// a secret setting (a blank forgotten: `user=repmgr=password=s3`, `user='x password=s3'`):
/// it holds `password` in any case, or `=` outside `options` (whose `-c name=value` needs it).
fn masked(key: &str, value: &str) -> bool {
    !shown(key)
        || value.to_ascii_lowercase().contains("password")
        || (key != "options" && value.contains('='))
}

/// Reads a conninfo as the driver does.
fn parse(text: &str) -> Result<Parsed, Unparsable> {
    for scheme in ["postgres://", "postgresql://"] {
        if text.starts_with(scheme) {
            return parse_uri(text, scheme);
        }
    }
    parse_key_value(text)
}

/// tokio-postgres' key=value `Parser`: blanks, a key (up to a blank or `=`), blanks, `=`,
/// blanks, a value: `'quoted'` (`\` escapes any character) or plain (up to a blank; `\`
/// escapes). An empty key ends the parse, whatever follows; an empty plain value is an error.
fn parse_key_value(text: &str) -> Result<Parsed, Unparsable> {
    let mut it = text.char_indices().peekable();
    let mut settings = Vec::new();
    let mut ignored = None;
    // The first key when it is a shown one, and where masking starts when the text cannot
    // be parsed: after that key, or at it when it is not a shown one.
    let mut first: Option<(Option<String>, usize)> = None;
    let at = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        it.peek().map_or(text.len(), |&(i, _)| i)
    };
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        let start = at(&mut it);
        skip_ws(&mut it);
        let key_start = at(&mut it);
        while it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key_end = at(&mut it);
        let key = &text[key_start..key_end];
        if key.is_empty() {
            if key_end < text.len() {
                ignored = Some(key_end..text.len());
            }
            break;
        }
        let (first_key, masked_from) = first
            .get_or_insert_with(|| match shown(key) {
                true => (Some(key.to_string()), key_end),
                false => (None, key_start),
            })
            .clone();
        let fail = |why| Unparsable {
            why,
            scheme: "",
            first_key: first_key.clone(),
            masked_from,
        };
        skip_ws(&mut it);
        if it.next_if(|&(_, c)| c == '=').is_none() {
            return Err(fail("a key without `=`"));
        }
        skip_ws(&mut it);
        let value_start = at(&mut it);
        let mut value = String::new();
        if it.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match it.next() {
                    None => return Err(fail("an unterminated quoted value")),
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => value.extend(it.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|&(_, c)| !c.is_whitespace()) {
                match c {
                    '\\' => value.extend(it.next().map(|(_, c)| c)),
                    c => value.push(c),
                }
            }
            if value.is_empty() {
                return Err(fail("a key without a value"));
            }
        }
        let end = at(&mut it);
        settings.push(Setting {
            masked: masked(key, &value),
            key: key.to_string(),
            value,
            raw_value: value_start..end,
            droppable: true,
            whole: start..end,
        });
    }
    Ok(Parsed {
        settings,
        ignored,
        query: None,
    })
}

/// tokio-postgres' `UrlParser`: `scheme://[user[:password]@]hosts[/dbname][?key=value&...]`,
/// where the credentials end at the first `@` anywhere, user, port, dbname, query keys and
/// values are percent-decoded (and must be UTF-8, except the password), and a query key ends
/// at the first `=` (so `a&b=c` is the key `a&b`).
fn parse_uri(text: &str, scheme: &'static str) -> Result<Parsed, Unparsable> {
    let fail = |why| Unparsable {
        why,
        scheme,
        first_key: None,
        masked_from: scheme.len(),
    };
    let mut settings = Vec::new();
    let mut at = scheme.len();
    if let Some(rel) = text[at..].find('@') {
        let creds = at..at + rel;
        let written = &text[creds.clone()];
        // A user name with these comes from an `@` after the authority (in a query value,
        // say): the driver takes it for a user name, but it is more likely part of a secret.
        let suspicious = written.contains(['/', '?', '=', '&']);
        let (user, password) = match written.split_once(':') {
            Some((u, _)) => (
                creds.start..creds.start + u.len(),
                Some(creds.start + u.len() + 1..creds.end),
            ),
            None => (creds.clone(), None),
        };
        let user_value =
            decode(&text[user.clone()]).ok_or_else(|| fail("a user name that is not UTF-8"))?;
        settings.push(Setting {
            key: "user".into(),
            masked: suspicious || masked("user", &user_value),
            value: user_value,
            raw_value: user.clone(),
            droppable: false,
            whole: user,
        });
        if let Some(p) = password {
            settings.push(Setting {
                key: "password".into(),
                value: decode_lossy(&text[p.clone()]),
                raw_value: p.clone(),
                droppable: false,
                whole: p,
                masked: true,
            });
        }
        at = creds.end + 1;
    }
    let hosts_end = text[at..].find(['/', '?']).map_or(text.len(), |i| at + i);
    let mut chunk_start = at;
    for chunk in text[at..hosts_end].split(',').filter(|_| hosts_end > at) {
        let range = chunk_start..chunk_start + chunk.len();
        chunk_start = range.end + 1;
        let (host, port) = match chunk.strip_prefix('[') {
            Some(rest) => {
                let (host, rest) = rest
                    .split_once(']')
                    .ok_or_else(|| fail("an IPv6 host without `]`"))?;
                match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None if rest.is_empty() => (host, None),
                    None => return Err(fail("text after an IPv6 host")),
                }
            }
            None => match chunk.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (chunk, None),
            },
        };
        let host = host_param(host).ok_or_else(|| fail("a host that is not UTF-8"))?;
        let port =
            decode(port.unwrap_or("5432")).ok_or_else(|| fail("a port that is not UTF-8"))?;
        settings.push(Setting {
            key: "host".into(),
            masked: masked("host", &host) || masked("port", &port),
            value: host,
            raw_value: range.clone(),
            droppable: false,
            whole: range,
        });
    }
    at = hosts_end;
    if text[at..].starts_with('/') {
        let end = text[at..].find('?').map_or(text.len(), |i| at + i);
        let dbname =
            decode(&text[at + 1..end]).ok_or_else(|| fail("a database name that is not UTF-8"))?;
        settings.push(Setting {
            key: "dbname".into(),
            masked: masked("dbname", &dbname),
            value: dbname,
            raw_value: at + 1..end,
            droppable: false,
            whole: at + 1..end,
        });
        at = end;
    }
    let query = text[at..].starts_with('?').then_some(at);
    if query.is_some() {
        at += 1;
        while at < text.len() {
            let eq = text[at..]
                .find('=')
                .map(|i| at + i)
                .ok_or_else(|| fail("a query parameter without `=`"))?;
            let key = decode(&text[at..eq]).ok_or_else(|| fail("a query key that is not UTF-8"))?;
            let value_end = text[eq + 1..].find('&').map_or(text.len(), |i| eq + 1 + i);
            let raw = &text[eq + 1..value_end];
            let value = match key.as_str() {
                "host" => host_param(raw),
                _ => decode(raw),
            }
            .ok_or_else(|| fail("a query value that is not UTF-8"))?;
            settings.push(Setting {
                masked: masked(&key, &value),
                key,
                value,
                raw_value: eq + 1..value_end,
                droppable: true,
                whole: at..value_end,
            });
            at = (value_end + 1).min(text.len());
        }
    }
    Ok(Parsed {
        settings,
        ignored: None,
        query: Some(query),
    })
}

/// Percent-decoding as the driver does it (`percent_encoding::percent_decode`), as UTF-8.
fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

/// Percent-decoding of a value the driver takes as bytes (a URI's password).
fn decode_lossy(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The driver's URI host: a socket path (starting with `/`, any bytes) or UTF-8 text.
fn host_param(s: &str) -> Option<String> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(s).collect();
    match bytes.first() {
        Some(b'/') => Some(String::from_utf8_lossy(&bytes).into_owned()),
        _ => String::from_utf8(bytes).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_in_both_forms() {
        assert_eq!(port("host=10.0.0.1 port=6432 dbname=repmgr"), Some(6432));
        assert_eq!(port("postgresql://u@db:5433/repmgr"), Some(5433));
        assert_eq!(port("host=10.0.0.1 dbname=repmgr"), None);
        assert_eq!(port("host='unterminated"), None);
    }

    #[test]
    fn the_passfile_is_taken_out_of_both_forms() {
        assert_eq!(
            take_passfile("host=db passfile='/etc/primgr/my pgpass' user=u"),
            (
                "host=db user=u".to_string(),
                Some(PathBuf::from("/etc/primgr/my pgpass"))
            )
        );
        assert_eq!(
            take_passfile("postgresql://u@db/repmgr?passfile=/p&sslmode=disable"),
            (
                "postgresql://u@db/repmgr?sslmode=disable".to_string(),
                Some(PathBuf::from("/p"))
            )
        );
        assert_eq!(
            take_passfile("postgresql://u@db/repmgr?passfile=/p").0,
            "postgresql://u@db/repmgr"
        );
        assert_eq!(take_passfile("host=db"), ("host=db".to_string(), None));
    }

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let file = "# comment\n\
                    other:5432:repmgr:primgr:wrong\n\
                    db:5433:*:primgr:wrong-port\n\
                    db:*:repmgr:primgr:p\\:a\\\\ss\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(file, "db", 5432, "repmgr", "primgr").as_deref(),
            Some("p:a\\ss")
        );
        assert_eq!(
            pgpass_lookup(file, "db", 5433, "x", "primgr").as_deref(),
            Some("wrong-port")
        );
        assert_eq!(
            pgpass_lookup(file, "zz", 1, "x", "y").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            pgpass_lookup("db:5432:repmgr:primgr\n", "db", 5432, "repmgr", "primgr"),
            None
        );
    }

    #[test]
    fn host_from_key_value_conninfo() {
        let cases = [
            (
                "host=127.0.5.11 port=5432 user=repmgr dbname=repmgr connect_timeout=2",
                "127.0.5.11",
            ),
            (
                "user=repmgr host='db-2.example.com' dbname=repmgr",
                "db-2.example.com",
            ),
            ("hostaddr=10.1.2.3 dbname=repmgr", "10.1.2.3"),
            ("host=/var/run/postgresql,db3 dbname=repmgr", "db3"),
            ("host=db1,db2 port=5432,5433", "db1"),
        ];
        for (conninfo, want) in cases {
            assert_eq!(host(conninfo).as_deref(), Ok(want), "{conninfo}");
        }
    }

    #[test]
    fn host_from_uri_conninfo() {
        let cases = [
            (
                "postgresql://repmgr@db-1:5432/repmgr?connect_timeout=2",
                "db-1",
            ),
            ("postgres://repmgr:secret@10.0.0.7/repmgr", "10.0.0.7"),
            ("postgresql:///repmgr?host=db9", "db9"),
        ];
        for (conninfo, want) in cases {
            assert_eq!(host(conninfo).as_deref(), Ok(want), "{conninfo}");
        }
    }

    #[test]
    fn no_host_is_an_error_not_a_guess() {
        for conninfo in [
            "host=/var/run/postgresql dbname=repmgr",
            "dbname=repmgr",
            "host='broken",
        ] {
            assert!(host(conninfo).is_err(), "{conninfo}");
        }
    }

    #[test]
    fn host_of_a_libpq_conninfo_with_keys_the_driver_refuses() {
        // repmgr.nodes is written for libpq: keys and values tokio-postgres does not take
        // must not cost a member its address.
        let cases = [
            (
                "host=db3 sslpassword='x y' sslmode=verify-full sslrootcert=/r.pem",
                "db3",
            ),
            (
                "postgresql://u:pw@db4:5432/repmgr?sslmode=verify-ca&pass%77ord=x",
                "db4",
            ),
            ("hostaddr=10.0.0.9 gssencmode=disable", "10.0.0.9"),
        ];
        for (conninfo, want) in cases {
            assert_eq!(host(conninfo).as_deref(), Ok(want), "{conninfo}");
        }
    }

    /// Each secret of `cases` is masked; `shown` parts stay as written.
    fn assert_masked(cases: &[(&str, &str, &[&str])]) {
        for (input, want, secrets) in cases {
            let out = redact(input);
            assert_eq!(&out, want, "{input}");
            for secret in *secrets {
                assert!(!out.contains(secret), "{secret:?} in {out:?}");
            }
        }
        println!("{} conninfos masked as expected", cases.len());
    }

    #[test]
    fn secrets_are_masked_in_the_key_value_form() {
        assert_masked(&[
            (
                "host=db password=secret user=u",
                "host=db password=*** user=u",
                &["secret"],
            ),
            (
                "password = 'se cr\\'et' host=db",
                "password = *** host=db",
                &["se cr", "et"],
            ),
            ("host=db user=u", "host=db user=u", &[]),
            // The driver (like libpq) takes keys as written: these are not its password, and
            // not shown either.
            (
                "PASSWORD=upper Password=mixed",
                "PASSWORD=*** Password=***",
                &["upper", "mixed"],
            ),
            ("pasword=typo host=db", "pasword=*** host=db", &["typo"]),
            (
                "host=db sslpassword=keypass sslkey=/k.pem",
                "host=db sslpassword=*** sslkey=/k.pem",
                &["keypass"],
            ),
            // Escapes in a plain value, no blank before the next key after a quote.
            (
                "password=a\\ b\\'c host=db",
                "password=*** host=db",
                &["a\\ b", "b\\'c"],
            ),
            ("password='q'host=db", "password=***host=db", &["'q'"]),
            // A value may hold `=`: `password= host=x` is the password "host=x".
            (
                "password= host=x user=u",
                "password= *** user=u",
                &["host=x"],
            ),
            // The driver stops at a stray `=` and ignores the rest: masked.
            ("host=db =secret", "host=db ***", &["secret"]),
            // Unicode blanks separate as they do for the driver.
            (
                "password=s3\u{2003}host=db",
                "password=***\u{2003}host=db",
                &["s3"],
            ),
            ("", "", &[]),
        ]);
    }

    #[test]
    fn secrets_are_masked_in_the_uri_form() {
        assert_masked(&[
            (
                "postgresql://u:secret@db:5432/repmgr?sslmode=disable&password=x",
                "postgresql://u:***@db:5432/repmgr?sslmode=disable&password=***",
                &["secret"],
            ),
            ("postgres://u@db/repmgr", "postgres://u@db/repmgr", &[]),
            // Percent-encoded keys are decoded by the driver: `pass%77ord` is `password`.
            (
                "postgresql://u@db/repmgr?pass%77ord=enc&%73slpassword=enc2",
                "postgresql://u@db/repmgr?pass%77ord=***&%73slpassword=***",
                &["enc"],
            ),
            // The credentials end at the first `@` anywhere: here the driver takes
            // `db/r?password=p` for the user name. Masked whole.
            (
                "postgresql://db/r?password=p@ss",
                "postgresql://***@ss",
                &["password=p"],
            ),
            (
                "postgresql://u:p%40ss@db/r",
                "postgresql://u:***@db/r",
                &["p%40ss"],
            ),
            // A key ends at the first `=`: `a&password` is one (unknown, masked) key.
            (
                "postgresql://db/r?a&password=x",
                "postgresql://db/r?a&password=***",
                &["=x"],
            ),
            // A blank before the scheme makes it the key=value form, which fails: masked.
            (" postgresql://u:pw@db/r", "*** (cannot be parsed)", &["pw"]),
        ]);
    }

    #[test]
    fn an_unparsable_conninfo_is_masked_after_its_first_key() {
        assert_masked(&[
            (
                "host=db password='unterminated",
                "host=*** (cannot be parsed)",
                &["unterminated", "db"],
            ),
            ("host=db password=", "host=*** (cannot be parsed)", &["db"]),
            ("secret host=db", "*** (cannot be parsed)", &["secret"]),
            (
                "postgresql://u:pw@[::1/r",
                "postgresql://*** (cannot be parsed)",
                &["pw"],
            ),
            (
                "postgresql://u:pw@db/r?password",
                "postgresql://*** (cannot be parsed)",
                &["pw"],
            ),
            (
                "postgresql://u:pw@db/r?pass%FFword=x",
                "postgresql://*** (cannot be parsed)",
                &["pw"],
            ),
        ]);
        assert_eq!(secrets("host=db password='x y"), ["=db password='x y"]);
    }

    #[test]
    fn scrub_takes_every_secret_out_of_a_text() {
        let s = secrets("postgresql://db/r?password=p@ss");
        let text = "FATAL: password authentication failed for user \"db/r?password=p\"";
        let out = scrub(text, &s);
        assert!(!out.contains("password=p"), "{out}");
        assert!(
            out.starts_with("FATAL: password authentication failed"),
            "{out}"
        );
        let s = secrets("host=db password='a b'");
        assert_eq!(scrub("x a b y 'a b'", &s), "x *** y ***");
        assert_eq!(scrub("nothing here", &secrets("host=db")), "nothing here");
    }

    #[test]
    fn conninfo_debug_and_display_mask() {
        let c = Conninfo::from("host=db password=hunter2");
        assert_eq!(format!("{c:?}"), "Conninfo(\"host=db password=***\")");
        assert_eq!(c.to_string(), "host=db password=***");
        assert_eq!(c.as_str(), "host=db password=hunter2");
        assert!(c == "host=db password=hunter2");
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    /// Against the driver itself: for generated conninfos in both forms, whenever
    /// tokio-postgres parses one, so does [`parse`], and the password the driver would send
    /// never appears in [`redact`]'s output nor survives [`scrub`] with [`secrets`].
    #[test]
    fn the_driver_password_never_shows_in_generated_conninfos() {
        // Secret keys get values marked `Zq9`, other keys never do: whatever the driver takes
        // for a password or a user name and holds the mark must not show.
        let kv_secret_keys = ["password", "PASSWORD", "pass%77ord"];
        let kv_keys = ["host", "user", "dbname", "port", "application_name"];
        let kv_secrets = [
            "Zq9s3cr",
            "'Zq9 s3\\'cr'",
            "Zq9\\ s3",
            "'Zq9=s3'",
            "@Zq9",
            "'Zq9\\\\y'",
        ];
        let kv_values = ["db", "5432", "a=b", "''", "'x y'", "u@v"];
        let glue = [" ", "  ", "\t", " = ", "=", "\u{a0}"];
        let uri_secret_keys = ["password", "pass%77ord", "pa%73sword"];
        let uri_keys = ["sslmode", "user", "dbname", "application_name", "host"];
        let uri_secrets = [
            "Zq9s3cr", "Zq9%20s3", "Zq9%40s3", "Zq9&s3", "Zq9@s3", "%5Aq9",
        ];
        let uri_values = ["disable", "db", "a=b", "u%40v"];
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let (mut cases, mut with_password, mut parsed) = (0, 0, 0);
        for _ in 0..20_000 {
            let text = if rng.next() % 2 == 0 {
                let mut t = String::new();
                for _ in 0..1 + rng.next() % 4 {
                    let g = rng.pick(&glue);
                    t.push_str(rng.pick(&[" ", "", "  "]));
                    let secret = rng.next() % 3 == 0;
                    t.push_str(rng.pick(if secret { &kv_secret_keys } else { &kv_keys }));
                    t.push_str(if g.contains('=') { g } else { "=" });
                    t.push_str(rng.pick(if secret { &kv_secrets } else { &kv_values }));
                    t.push_str(rng.pick(&glue));
                }
                t
            } else {
                let mut t = rng.pick(&["postgresql://", "postgres://"]).to_string();
                t.push_str(rng.pick(&["", "u@", "u:Zq9pw@", "u:Zq9%3Apw@", ":Zq9pw@"]));
                t.push_str(rng.pick(&["db", "db:5432", "[::1]:5432", "db1,db2", ""]));
                t.push_str(rng.pick(&["", "/repmgr", "/"]));
                for i in 0..rng.next() % 4 {
                    t.push(if i == 0 { '?' } else { '&' });
                    let secret = rng.next() % 3 == 0;
                    t.push_str(rng.pick(if secret { &uri_secret_keys } else { &uri_keys }));
                    t.push('=');
                    t.push_str(rng.pick(if secret { &uri_secrets } else { &uri_values }));
                }
                t
            };
            cases += 1;
            let Ok(config) = text.parse::<tokio_postgres::Config>() else {
                continue;
            };
            parsed += 1;
            assert!(
                parse(&text).is_ok(),
                "the driver parses {text:?}, parse() does not"
            );
            let password = config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            let marked = [password.as_deref(), config.get_user()]
                .into_iter()
                .flatten()
                .filter(|v| v.contains("Zq9"))
                .map(str::to_string)
                .collect::<Vec<_>>();
            if marked.is_empty() {
                continue;
            }
            with_password += 1;
            let shown = redact(&text);
            for secret in marked {
                assert!(
                    !shown.contains(&secret),
                    "{secret:?} shows in {shown:?} (from {text:?})"
                );
                let scrubbed = scrub(&format!("error near {secret}."), &secrets(&text));
                assert!(
                    !scrubbed.contains(&secret),
                    "{secret:?} not scrubbed (from {text:?})"
                );
                assert!(
                    !shown.contains("Zq9"),
                    "a part of {secret:?} shows in {shown:?}"
                );
            }
        }
        println!(
            "{cases} generated conninfos, {parsed} parsed by the driver, {with_password} with a \
             secret the driver would use: none shown"
        );
        assert!(
            with_password > 1000,
            "too few cases with a password: {with_password}"
        );
    }

    #[test]
    fn secret_files_must_be_regular_private_and_small() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("primgr-secret-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, "*:*:*:*:pw\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&file).as_deref(), Ok("*:*:*:*:pw\n"));

        let link = dir.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = read_secret_file(&link).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");

        let fifo = dir.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Opening does not block on a FIFO without a writer, and it is refused.
        assert_eq!(read_secret_file(&fifo), Err("not a regular file".into()));
        assert_eq!(read_secret_file(&dir), Err("not a regular file".into()));

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_secret_file(&file).unwrap_err().contains("chmod 0600"));

        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_FILE as usize + 1]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_secret_file(&big).unwrap_err().contains("larger than"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
