//! Fake peers for the poll-cycle measurement: tiny HTTP/1.1 responders that answer a voter's
//! questions the way a healthy standby's primgr would (`/vote` 200 with a vote of their own
//! name for the primary, a lease, and an exclusivity of ten minutes; `/state` 202
//! `{"state":"Standby"}`; anything else 404), so that a site can grow to 64 voters without 64
//! databases.
//!
//! Real peers run on other machines; these share the benchmark's CPUs with the daemon under
//! test, so they are kept as cheap as possible: no HTTP library, a canned response per path,
//! keep-alive, requests without bodies only (the daemon's GETs). They run as tasks in the
//! benchmark's runtime and stop when [`FakePeers`] is dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use primgr_lab::http;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Largest request head a fake peer reads before giving up on the connection.
const MAX_HEAD: usize = 16 * 1024;

/// Running fake peers; their listeners and connections end on drop.
pub struct FakePeers {
    _tasks: JoinSet<()>,
}

/// The canned responses of one fake.
struct Answers {
    /// This fake's node name (the answers' signer).
    name: String,
    /// The lab's peer keys: a vote answer is signed for the request it answers, as a member's
    /// is (the lab's daemons count no unsigned answer).
    keys: Option<Arc<primgr::auth::Keys>>,
    vote_body: String,
    vote: Vec<u8>,
    standby: Vec<u8>,
    not_found: Vec<u8>,
}

fn response(status: &str, body: &str) -> Vec<u8> {
    http::response(
        status,
        "content-type: application/json\r\ncache-control: no-store\r\n",
        body.as_bytes(),
    )
}

impl FakePeers {
    /// Binds one responder per (node name, address) (all must be free), each voting as its
    /// node for `primary` on `/vote`.
    pub async fn start(peers: &[(String, SocketAddr)], primary: &str) -> Result<FakePeers> {
        let mut tasks = JoinSet::new();
        let keys = primgr::auth::Keys::load(&primgr_lab::peer_key_file())
            .map_err(|e| anyhow::anyhow!("fake peer: the lab's key file: {e}"))?;
        let keys = Arc::new(keys);
        for (name, addr) in peers {
            let addr = *addr;
            let vote_body = serde_json::json!({
                "node": name, "vote": primary, "lease_ms": 3000, "exclusive_ms": 600_000,
                "epoch": "AAAAAAAAAAAAAAAAAAAAAA.0"
            })
            .to_string();
            let answers = Arc::new(Answers {
                name: name.clone(),
                keys: Some(keys.clone()),
                vote: response("200 OK", &vote_body),
                vote_body,
                standby: response("202 Accepted", r#"{"state":"Standby"}"#),
                not_found: response("404 Not Found", ""),
            });
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("fake peer: binding {addr}"))?;
            tasks.spawn(async move {
                let mut conns = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve(stream, answers.clone()));
                    // Reap finished connections so the set does not grow.
                    while conns.try_join_next().is_some() {}
                }
            });
        }
        Ok(FakePeers { _tasks: tasks })
    }
}

/// Answers requests on one keep-alive connection until the client closes it.
async fn serve(mut stream: TcpStream, answers: Arc<Answers>) {
    let mut buf = Vec::with_capacity(1024);
    while let Ok(Some(end)) = http::read_head(&mut stream, &mut buf, MAX_HEAD).await {
        let signed = signed_vote(&buf[..end], &answers);
        let reply = match &signed {
            Some(reply) => reply.as_slice(),
            None => answer(&buf[..end], &answers),
        };
        let written = stream.write_all(reply).await;
        buf.drain(..end);
        if written.is_err() {
            return;
        }
    }
}

/// A `/vote` request that carries an `X-Primgr-Auth` header gets the vote signed for it
/// (bound to its nonce, method, target and this answer's status and body), as a member's daemon
/// signs it; None for anything else (the canned answers).
fn signed_vote(head: &[u8], answers: &Answers) -> Option<Vec<u8>> {
    let keys = answers.keys.as_ref()?;
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    if target.split('?').next() != Some("/vote") {
        return None;
    }
    let header = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case(primgr::auth::HEADER)
            .then(|| value.trim())
    })?;
    let request = primgr::auth::RequestClaims::parse(header).ok()?;
    let claims = primgr::auth::AnswerClaims {
        from: answers.name.clone(),
        to: request.from.clone(),
        cluster: request.cluster,
        ticket: None,
    };
    let exchange = primgr::auth::Exchange {
        method,
        target,
        body: b"",
    };
    let body = answers.vote_body.as_bytes();
    let mac = keys.sign_answer(&claims, &request.nonce, &exchange, 200, body);
    Some(http::response(
        "200 OK",
        &format!(
            "content-type: application/json\r\ncache-control: no-store\r\n{}: {mac}\r\n",
            primgr::auth::HEADER
        ),
        body,
    ))
}

/// The canned response for a request head.
fn answer<'a>(head: &[u8], answers: &'a Answers) -> &'a [u8] {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let _method = parts.next();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    match path {
        b"/vote" => &answers.vote,
        b"/state" | b"/" => &answers.standby,
        _ => &answers.not_found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_path() {
        let a = Answers {
            name: "fake1".into(),
            keys: None,
            vote_body: String::new(),
            vote: b"V".to_vec(),
            standby: b"S".to_vec(),
            not_found: b"N".to_vec(),
        };
        assert_eq!(answer(b"GET /vote HTTP/1.1\r\nHost: x\r\n\r\n", &a), b"V");
        assert_eq!(
            answer(b"GET /vote?candidate=node1 HTTP/1.1\r\n\r\n", &a),
            b"V"
        );
        assert_eq!(answer(b"GET /state HTTP/1.1\r\n\r\n", &a), b"S");
        assert_eq!(answer(b"GET /nope HTTP/1.1\r\n\r\n", &a), b"N");
        let r = String::from_utf8(response("200 OK", "{}")).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("content-length: 2\r\n\r\n{}"));
    }
}
