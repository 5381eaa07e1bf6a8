//! The typed messages end to end: a daemon (its database a closed port, so Down) answers every
//! endpoint, and each answer is read with the readers the other side uses (`peers::parse_*`,
//! `cluster::NodeReport::from_status`, the `wire` types). Each body must also be exactly the
//! serialization of the value read from it: a key the server sends that the type does not
//! know (a field renamed on the server's side only) would be dropped on the way and fail.

mod common;

use std::time::Duration;

use common::Daemon;
use hyper::Method;
use primgr::Config;
use primgr::cluster::NodeReport;
use primgr::peers::{self, PeerClient, VoteReply};
use primgr::snapshot::json_bytes;
use primgr::wire::{
    CheckBody, ErrorBody, PrimaryBody, RealPrimaryBody, StateBody, Status, VoteAnswer, VoteScope,
    WalAnswer,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A daemon whose database is a closed port: it is Down, but serves.
fn dbless(name: &str) -> Config {
    let mut c = Config::for_node(name).expect("valid");
    c.node.listen = "127.0.0.1:0".parse().expect("addr");
    c.db.conninfo = "host=127.0.0.1 port=1 dbname=repmgr user=repmgr".into();
    c.timing.interval = Duration::from_millis(200);
    c.db.db_timeout = Duration::from_millis(300);
    c.timing.peer_timeout = Duration::from_millis(300);
    c.timing.max_staleness = Duration::from_secs(2);
    c
}

/// The body read as a `T` and written again is the body, byte for byte.
fn same_bytes<T: Serialize>(path: &str, typed: &T, body: &[u8]) {
    assert_eq!(
        json_bytes(typed),
        body,
        "{path}: {}",
        String::from_utf8_lossy(body)
    );
}

fn read<T: Serialize + DeserializeOwned>(path: &str, status: u16, body: &[u8]) -> T {
    let typed: T = primgr::wire::decode(status, body).unwrap_or_else(|e| panic!("{path}: {e}"));
    same_bytes(path, &typed, body);
    typed
}

#[tokio::test]
async fn every_answer_is_read_by_the_other_side() {
    // Without a key, and this test's client (127.0.0.1) allowed: the bodies are what is
    // tested here; the authentication of the peer endpoints is tests/auth.rs's.
    let mut config = dbless("solo");
    config.peer.peer_allow = vec!["127.0.0.1".parse().expect("ip")];
    let mut d = Daemon::in_process(config)
        .without_lab_key()
        .spawn()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let base: hyper::Uri = format!("http://{}/", d.addr).parse().expect("uri");
    let client = PeerClient::new(None);
    let ask = |method: Method, path: &'static str| {
        let (client, base) = (&client, &base);
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            client
                .request(method, base, path, deadline)
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        }
    };
    // Wait for the first cycle: the reason changes from "starting" to the database error.
    let started = std::time::Instant::now();
    let (code, body) = loop {
        let (code, body) = ask(Method::GET, "/status").await;
        let status = Status::read(code, &body).expect("a /status document");
        if status.reason.contains("connect") {
            break (code, body);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut cases = 0;

    // /status, as `primgr cluster` and `primgr drain` read it.
    let status = Status::read(code, &body).expect("a /status document");
    same_bytes("/status", &status, &body);
    assert_eq!(
        (status.node.as_str(), status.state.as_str()),
        ("solo", "Down")
    );
    assert!(!status.database.reachable, "{status:?}");
    let report = NodeReport::from_status("solo", None, None, code, &body);
    assert_eq!(
        (
            report.state.as_deref(),
            report.error.as_deref(),
            report.code
        ),
        (Some("Down"), None, Some(503))
    );
    assert!(report.reason.is_some_and(|r| r.contains("connect")));
    cases += 1;

    // /state, as /realPrimary's fan-out reads it.
    let (code, body) = ask(Method::GET, "/state").await;
    let state: StateBody = read("/state", code, &body);
    assert_eq!(state.state, "Down");
    assert_eq!(
        peers::parse_state(code, &body),
        Ok(primgr::State::Down),
        "{state:?}"
    );
    cases += 1;

    // /vote, as a candidate reads it: this voter's database is down, no vote.
    let (code, body) = ask(Method::GET, "/vote?candidate=other").await;
    let answer = VoteAnswer::read(code, &body).expect("a /vote answer");
    same_bytes("/vote", &answer, &body);
    assert!(matches!(answer, VoteAnswer::Refusal(_)), "{answer:?}");
    assert!(
        matches!(
            peers::parse_vote(code, &body, "solo", "other", VoteScope::Site),
            VoteReply::Refused(_)
        ),
        "{answer:?}"
    );
    cases += 1;

    // /wal, as a standby reads it: no position.
    let (code, body) = ask(Method::GET, "/wal").await;
    let answer = WalAnswer::read(code, &body).expect("a /wal answer");
    same_bytes("/wal", &answer, &body);
    let wal = peers::parse_wal(code, &body, "solo");
    assert!(
        wal.as_ref()
            .is_err_and(|e| e.contains("solo reports no position")),
        "{wal:?}"
    );
    cases += 1;

    // POST /release names the epoch it undoes; without a key its sender is the one member
    // at the request's address, and this test's address is only `peer_allow`ed: refused, and
    // why, as the error body every endpoint uses. (How a voter reads a release answer:
    // `wire::tests::answers_read_back_with_their_status`; the lab's releases: tests/leases.rs.)
    let (code, body) = ask(Method::POST, "/release?undoes=AAAAAAAAAAAAAAAAAAAAAA.0").await;
    let error: ErrorBody = read("/release", code, &body);
    assert_eq!(code, 403, "{error:?}");
    assert!(error.error.contains("no member's own address"), "{error:?}");
    let (code, body) = ask(Method::POST, "/release").await;
    let error: ErrorBody = read("/release", code, &body);
    assert_eq!(code, 400, "{error:?}");
    assert!(error.error.contains("undoes"), "{error:?}");
    cases += 1;

    // The health checks, /primary, /realPrimary and the errors, as haproxy and operators read
    // them.
    for path in [
        "/replica",
        "/read-write",
        "/read-only",
        "/health",
        "/readiness",
    ] {
        let (code, body) = ask(Method::GET, path).await;
        let check: CheckBody = read(path, code, &body);
        assert_eq!((code, check.node.as_str()), (503, "solo"), "{path}");
        assert!(check.reason.is_some(), "{path}: {check:?}");
        cases += 1;
    }
    let (code, body) = ask(Method::GET, "/primary").await;
    let primary: PrimaryBody = read("/primary", code, &body);
    assert_eq!(primary.state.as_deref(), Some("Down"));
    let (code, body) = ask(Method::GET, "/realPrimary").await;
    let real: RealPrimaryBody = read("/realPrimary", code, &body);
    assert_eq!((code, real.real_primary), (503, None));
    cases += 2;
    for path in ["/nope", "/vote?candidate=a&candidate=b", "/replica?lag=x"] {
        let (code, body) = ask(Method::GET, path).await;
        let error: ErrorBody = read(path, code, &body);
        assert!(matches!(code, 400 | 404), "{path}: {code} {error:?}");
        cases += 1;
    }
    println!("{cases} answers of a daemon read by their readers and written back byte for byte");
    d.stop().await;
}
