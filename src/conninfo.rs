//! conninfo: the libpq connection strings primgr reads (its own `conninfo`, and each node's in
//! `repmgr.nodes`), in key=value or URI form.
//!
//! Owns what primgr takes from them and what it shows of them: the network host of a node (the
//! default address of its daemon), the text with any password masked (all that `/status`,
//! `primgr cluster`, the logs and `--check-config` ever show), and libpq's `passfile`, which
//! the driver does not read: primgr takes it out of the conninfo and looks the password up in
//! it the way libpq does ([`pgpass_lookup`]). A passfile is shown as the path it is; its
//! contents never leave [`crate::db`].

use std::path::PathBuf;

use tokio_postgres::config::Host;

/// The network host of a conninfo (key=value or URI form): the first TCP `host`, else the
/// first `hostaddr`. A conninfo that only names a unix socket has none.
pub fn host(conninfo: &str) -> Result<String, String> {
    let config: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|e| format!("its conninfo cannot be parsed: {e}"))?;
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

/// A conninfo with any password replaced by `***` (key=value and URI forms).
pub fn redact(conninfo: &str) -> String {
    rewrite(conninfo, |key, value| {
        match key.eq_ignore_ascii_case("password") {
            true => Some("***".into()),
            false => Some(value.to_string()),
        }
    })
}

/// The conninfo without its `passfile` setting (which the driver does not read), and that
/// setting's path.
pub fn take_passfile(conninfo: &str) -> (String, Option<PathBuf>) {
    let mut passfile = None;
    let rest = rewrite(conninfo, |key, value| {
        if key == "passfile" {
            passfile = Some(PathBuf::from(unquote(value)));
            None
        } else {
            Some(value.to_string())
        }
    });
    (rest, passfile)
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

/// The value of a key=value pair as libpq reads it: quotes removed, escapes resolved.
fn unquote(raw: &str) -> String {
    let inner = raw
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .unwrap_or(raw);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Rewrites a conninfo pair by pair: `f(key, value)` returns the new value (as it is
/// written, quotes included), or None to drop the pair. Both forms keep everything else as
/// written.
fn rewrite(conninfo: &str, f: impl FnMut(&str, &str) -> Option<String>) -> String {
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        return rewrite_uri(trimmed, f);
    }
    rewrite_key_value(conninfo, f)
}

fn rewrite_uri(uri: &str, mut f: impl FnMut(&str, &str) -> Option<String>) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, password)) => match f("password", password) {
                Some(p) => format!("{user}:{p}@{hosts}"),
                None => format!("{user}@{hosts}"),
            },
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .filter_map(|kv| match kv.split_once('=') {
                    Some((k, v)) => f(k, v).map(|v| format!("{k}={v}")),
                    None => Some(kv.to_string()),
                })
                .collect();
            if query.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", query.join("&"))
            }
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Walks key=value pairs with libpq's quoting rules.
fn rewrite_key_value(conninfo: &str, mut f: impl FnMut(&str, &str) -> Option<String>) -> String {
    let mut out = String::with_capacity(conninfo.len());
    let mut chars = conninfo.chars().peekable();
    loop {
        let mut space = String::new();
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            space.push(c);
            chars.next();
        }
        let mut key = String::new();
        while let Some(c) = chars
            .peek()
            .copied()
            .filter(|c| *c != '=' && !c.is_whitespace())
        {
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            out.push_str(&space);
            break;
        }
        let mut pair = format!("{space}{key}");
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            pair.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            // Not a key=value pair; copy the rest as it is.
            out.push_str(&pair);
            out.extend(chars);
            break;
        }
        pair.push('=');
        chars.next();
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            pair.push(c);
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            value.push('\'');
            chars.next();
            while let Some(c) = chars.next() {
                value.push(c);
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    _ => {}
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| !c.is_whitespace()) {
                value.push(c);
                chars.next();
                if c == '\\' {
                    value.extend(chars.next());
                }
            }
        }
        if let Some(v) = f(&key, &value) {
            out.push_str(&pair);
            out.push_str(&v);
        }
    }
    out
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
    fn passwords_are_redacted() {
        let cases = [
            (
                "host=db password=secret user=u",
                "host=db password=*** user=u",
            ),
            ("password = 'se cr\\'et' host=db", "password = *** host=db"),
            ("host=db user=u", "host=db user=u"),
            ("PASSWORD=x", "PASSWORD=***"),
            (
                "postgresql://u:secret@db:5432/repmgr?sslmode=disable&password=x",
                "postgresql://u:***@db:5432/repmgr?sslmode=disable&password=***",
            ),
            ("postgres://u@db/repmgr", "postgres://u@db/repmgr"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
            assert!(!redact(input).contains("secret"));
        }
    }
}
