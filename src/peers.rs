//! The peers: where their daemons listen, the HTTP client that asks them, and the fan-out.
//!
//! Owns the address of each peer's API (an explicit `[peers]` entry, else the host of its
//! repmgr conninfo and `peer_port`), one keep-alive HTTP client per daemon (bound to
//! `source_address` when set, so a network cut between node addresses behaves like a real
//! one), and asking many peers at once under one deadline. Every failure of a peer becomes a
//! value (an answer that does not vote, a state that is not Primary); nothing here panics or
//! waits past the deadline, and no response body is read past [`MAX_BODY`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper::header::{HeaderValue, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use tokio::time::Instant;
use tokio_postgres::config::Host;

use crate::db::NodeRow;
use crate::decide::{PeerAnswer, State};

/// Largest response body read from a peer; anything longer is an error, not a vote.
pub const MAX_BODY: usize = 64 * 1024;

/// How long an idle keep-alive connection to a peer is kept. Shorter than the server's idle
/// timeout ([`crate::server::IDLE_TIMEOUT`]) so the client never reuses a connection the peer
/// is about to close.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a peer gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(String),
    #[error("body unreadable or over {MAX_BODY} bytes: {0}")]
    Body(String),
    #[error("HTTP {0}: {1}")]
    Unexpected(u16, String),
}

/// The HTTP client of one daemon.
#[derive(Clone, Debug)]
pub struct PeerClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    user_agent: HeaderValue,
}

impl PeerClient {
    /// A keep-alive client whose connects are bounded by `connect_timeout` and, when
    /// `source_address` is set, made from that local address.
    pub fn new(source_address: Option<IpAddr>, connect_timeout: Duration) -> PeerClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_local_address(source_address);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(4)
            .build(connector);
        PeerClient {
            client,
            user_agent: HeaderValue::from_static(concat!("primgr/", env!("CARGO_PKG_VERSION"))),
        }
    }

    /// GETs `path` from the peer at `base` and returns status and body, by `deadline`.
    pub async fn get(
        &self,
        base: &Uri,
        path: &str,
        deadline: Instant,
    ) -> Result<(u16, Bytes), PeerError> {
        // In whole milliseconds: it is shown to operators ("no answer within 500ms").
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = Duration::from_millis(((left.as_micros() + 500) / 1000) as u64);
        let uri = join(base, path)?;
        let mut request = hyper::Request::new(Empty::new());
        *request.uri_mut() = uri;
        request
            .headers_mut()
            .insert(USER_AGENT, self.user_agent.clone());
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| PeerError::Request(error_chain(&e)))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| PeerError::Body(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or(Err(PeerError::Timeout(budget)))
    }

    /// Asks a voter whom its local metadata names as primary (`/primary`).
    pub async fn ask_primary(&self, base: &Uri, deadline: Instant) -> PeerAnswer {
        match self.get(base, "/primary", deadline).await {
            Err(e) => PeerAnswer::Failed(e.to_string()),
            Ok((status, body)) => parse_primary(status, &body),
        }
    }

    /// Asks a node for its state (`/state`).
    pub async fn ask_state(&self, base: &Uri, deadline: Instant) -> Result<State, PeerError> {
        let (status, body) = self.get(base, "/state", deadline).await?;
        parse_state(status, &body)
    }
}

/// Reads a `/primary` answer: 200 `{"Primary":"name"}` names a node; a 503 with
/// `"Primary":null` names nobody; anything else is a failure.
pub fn parse_primary(status: u16, body: &[u8]) -> PeerAnswer {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let primary = json.as_ref().and_then(|j| j.get("Primary"));
    match (status, primary) {
        (200, Some(Value::String(name))) if !name.is_empty() => PeerAnswer::Named(name.clone()),
        (503, Some(Value::Null)) => {
            let why = match json.as_ref().and_then(|j| j.get("state")) {
                Some(Value::String(s)) => format!("names no primary (state {s})"),
                _ => "names no primary".to_string(),
            };
            PeerAnswer::NoPrimary(why)
        }
        _ => PeerAnswer::Failed(format!("HTTP {status}: {}", describe_body(body))),
    }
}

/// Reads a `/state` answer: status and body must agree on one of the four states.
pub fn parse_state(status: u16, body: &[u8]) -> Result<State, PeerError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    match json.as_ref().and_then(|j| j.get("state")) {
        Some(Value::String(name)) => State::from_answer(status, name)
            .ok_or_else(|| PeerError::Unexpected(status, format!("state {name:?}"))),
        _ => Err(PeerError::Unexpected(status, describe_body(body))),
    }
}

fn describe_body(body: &[u8]) -> String {
    const SHOWN: usize = 80;
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]);
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    if body.len() > SHOWN {
        format!("unexpected body {text:?}...")
    } else {
        format!("unexpected body {text:?}")
    }
}

fn join(base: &Uri, path: &str) -> Result<Uri, PeerError> {
    let authority = base
        .authority()
        .ok_or_else(|| PeerError::Request(format!("address {base} has no host")))?;
    Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path)
        .build()
        .map_err(|e| PeerError::Request(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The API address of a node: its `[peers]` entry, else `http://<conninfo host>:<peer_port>`.
pub fn peer_url(
    row: &NodeRow,
    overrides: &BTreeMap<String, Uri>,
    peer_port: u16,
) -> Result<Uri, String> {
    if let Some(uri) = overrides.get(&row.node_name) {
        return Ok(uri.clone());
    }
    let host = conninfo_host(&row.conninfo)?;
    let authority = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{peer_port}"),
        _ => format!("{host}:{peer_port}"),
    };
    Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query("/")
        .build()
        .map_err(|e| format!("host {host:?} of its conninfo is not usable in a URL: {e}"))
}

/// The network host of a conninfo (key=value or URI form): the first TCP `host`, else the
/// first `hostaddr`. A conninfo that only names a unix socket has none.
pub fn conninfo_host(conninfo: &str) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, conninfo: &str) -> NodeRow {
        NodeRow {
            node_id: 1,
            node_name: name.into(),
            node_type: "standby".into(),
            active: true,
            location: "dc1".into(),
            conninfo: conninfo.into(),
        }
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
        for (conninfo, host) in cases {
            assert_eq!(conninfo_host(conninfo).as_deref(), Ok(host), "{conninfo}");
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
        for (conninfo, host) in cases {
            assert_eq!(conninfo_host(conninfo).as_deref(), Ok(host), "{conninfo}");
        }
    }

    #[test]
    fn no_host_is_an_error_not_a_guess() {
        for conninfo in [
            "host=/var/run/postgresql dbname=repmgr",
            "dbname=repmgr",
            "host='broken",
        ] {
            assert!(conninfo_host(conninfo).is_err(), "{conninfo}");
        }
    }

    #[test]
    fn peer_url_prefers_overrides_then_conninfo() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "node2".to_string(),
            "http://10.9.9.9:7000/".parse::<Uri>().unwrap(),
        );
        let r = row("node2", "host=127.0.0.12");
        assert_eq!(
            peer_url(&r, &overrides, 5999).unwrap().to_string(),
            "http://10.9.9.9:7000/"
        );
        let r = row("node3", "host=127.0.0.13 port=5432");
        assert_eq!(
            peer_url(&r, &overrides, 5999).unwrap().to_string(),
            "http://127.0.0.13:5999/"
        );
        let r = row("node6", "host=::1");
        assert_eq!(
            peer_url(&r, &overrides, 6000).unwrap().to_string(),
            "http://[::1]:6000/"
        );
        let r = row("node4", "host=/tmp");
        assert!(peer_url(&r, &overrides, 5999).is_err());
    }

    #[test]
    fn primary_answers() {
        assert_eq!(
            parse_primary(200, br#"{"Primary":"node1"}"#),
            PeerAnswer::Named("node1".into())
        );
        assert!(matches!(
            parse_primary(503, br#"{"Primary":null,"state":"Down"}"#),
            PeerAnswer::NoPrimary(s) if s.contains("Down")
        ));
        assert!(matches!(
            parse_primary(503, br#"{"Primary":null}"#),
            PeerAnswer::NoPrimary(_)
        ));
        for (status, body) in [
            (200, &b"node1"[..]),
            (200, br#"{"primary":"node1"}"#),
            (200, br#"{"Primary":1}"#),
            (200, br#"{"Primary":""}"#),
            (500, br#"{"Primary":"node1"}"#),
            (302, b""),
            (200, b"\xff\xfe"),
        ] {
            assert!(
                matches!(parse_primary(status, body), PeerAnswer::Failed(_)),
                "{status} {body:?}"
            );
        }
    }

    #[test]
    fn state_answers_need_status_and_body_to_agree() {
        assert_eq!(
            parse_state(200, br#"{"state":"Primary"}"#),
            Ok(State::Primary)
        );
        assert_eq!(
            parse_state(509, br#"{"state":"Unknown"}"#),
            Ok(State::Unknown)
        );
        assert!(parse_state(200, br#"{"state":"Standby"}"#).is_err());
        assert!(parse_state(200, b"<html>ok</html>").is_err());
    }
}
