//! conninfo: the libpq connection strings primgr reads (its own `conninfo`, and each node's in
//! `repmgr.nodes`), in key=value or URI form.
//!
//! Owns what primgr takes from them and what it shows of them: the network host of a node (the
//! default address of its daemon) and the text with any password masked, which is all that
//! `/status`, `primgr cluster`, the logs and `--check-config` ever show. A `passfile` is shown
//! as the path it is; primgr never opens it (libpq-style authentication is the driver's business).

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

/// A conninfo with any password replaced by `***` (key=value and URI forms).
pub fn redact(conninfo: &str) -> String {
    let trimmed = conninfo.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        return redact_uri(trimmed);
    }
    redact_key_value(conninfo)
}

fn redact_uri(uri: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Walks key=value pairs with libpq's quoting rules and masks the value of `password`.
fn redact_key_value(conninfo: &str) -> String {
    let mut out = String::with_capacity(conninfo.len());
    let mut chars = conninfo.chars().peekable();
    loop {
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            out.push(c);
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
            break;
        }
        out.push_str(&key);
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            out.push(c);
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            // Not a key=value pair; copy the rest as it is.
            out.extend(chars);
            break;
        }
        out.push('=');
        chars.next();
        while let Some(c) = chars.peek().copied().filter(|c| c.is_whitespace()) {
            out.push(c);
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            value.push('\'');
            chars.next();
            while let Some(c) = chars.next() {
                value.push(c);
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => break,
                    _ => {}
                }
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| !c.is_whitespace()) {
                value.push(c);
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                }
            }
        }
        if key.eq_ignore_ascii_case("password") {
            out.push_str("***");
        } else {
            out.push_str(&value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
