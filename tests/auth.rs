//! Authenticated peers, as an operator and an attacker on the network meet them: `primgr
//! keygen`, the key file's checks, `/vote` and `/release` refused (401) when unsigned, signed
//! with another key, altered or replayed, with nothing changed; address mode (no key file)
//! answering only the members (403 to others); and a key rotation through SIGHUP that never
//! costs the primary a vote.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Fleet, PRIMGR};
use primgr::auth::{self, AnswerClaims, ClusterId, Exchange, Keys, Nonce, RequestClaims, Ticket};
use primgr_lab::http::{self, RawResponse};
use primgr_lab::{Lab, LabSpec, subnet_of};
use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("primgr-auth-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write_key_file(path: &Path, lines: &[&str], mode: u32) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write key file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn keygen() -> String {
    let out = Command::new(PRIMGR)
        .arg("keygen")
        .output()
        .expect("run keygen");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Catches: `primgr keygen` printing something `peer_key_file` does not accept (a key too
/// short, another prefix, several lines), or the same key twice (no randomness).
#[test]
fn keygen_prints_one_fresh_key_line_that_a_key_file_accepts() {
    let (a, b) = (keygen(), keygen());
    for out in [&a, &b] {
        assert_eq!(out.lines().count(), 1, "{out:?}");
        assert!(out.starts_with(auth::KEY_PREFIX), "{out:?}");
        let keys = Keys::parse(out).expect("keygen's line parses");
        assert_eq!(keys.ids().len(), 1);
    }
    assert_ne!(a, b, "two runs printed the same key");
    let both = Keys::parse(&format!("{a}{b}")).expect("two lines parse");
    assert_eq!(both.ids().len(), 2);
    println!("2 keygen lines parsed, distinct, and a rotation file of both");
}

/// Catches: a key file that others may read, a symbolic link (which the service user could
/// point anywhere), a directory or a missing file accepted at start; or an error that does not
/// name `peer_key_file` or that prints the key.
#[test]
fn a_key_file_others_may_read_a_symlink_or_an_unreadable_one_is_refused_naming_peer_key_file() {
    let dir = scratch("keyfile");
    let line = keygen();
    let secret = line.trim().trim_start_matches(auth::KEY_PREFIX).to_string();
    let good = dir.join("good.key");
    write_key_file(&good, &[line.trim()], 0o600);
    let readable = dir.join("readable.key");
    write_key_file(&readable, &[line.trim()], 0o644);
    let group = dir.join("group.key");
    write_key_file(&group, &[line.trim()], 0o640);
    let link = dir.join("link.key");
    std::os::unix::fs::symlink(&good, &link).expect("symlink");
    let missing = dir.join("missing.key");
    let check = |path: &Path| {
        Command::new(PRIMGR)
            .args(["--node-name", "node1", "--check-config", "--peer-key-file"])
            .arg(path)
            .output()
            .expect("run primgr")
    };
    let ok = check(&good);
    assert!(ok.status.success(), "{ok:?}");
    let mut refused = 0;
    for (path, why) in [
        (&readable, "chmod 600"),
        (&group, "chmod 600"),
        (&link, "symbolic link"),
        (&dir, "directory"),
        (&missing, "cannot read"),
    ] {
        let o = check(path);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "{}: {err}", path.display());
        assert!(err.contains("`peer_key_file`"), "{err}");
        assert!(
            err.contains(why),
            "{}: {why:?} not in {err}",
            path.display()
        );
        assert!(!err.contains(&secret), "the key is printed: {err}");
        refused += 1;
    }
    println!("{refused} key files refused naming peer_key_file, 1 accepted");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `method target` to `addr` with the auth header `signed` (if any), as sent by a
/// client on the network; the response as it came.
async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    signed: Option<&str>,
) -> RawResponse {
    let header = signed.map_or(String::new(), |h| format!("{}: {h}\r\n", auth::HEADER));
    let length = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\n{header}{length}Connection: close\r\n\r\n"
    );
    http::request(addr, request.as_bytes(), Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{method} {target}: {e:#}"))
}

fn body(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.decoded_body().expect("body")).into_owned()
}

/// A request signed with `keys` as `from` to `to` of `cluster`.
fn signed(
    keys: &Keys,
    from: &str,
    to: &str,
    cluster: Option<ClusterId>,
    ticket: Option<Ticket>,
    method: &str,
    target: &str,
) -> (String, Nonce) {
    let nonce = Nonce::random().expect("nonce");
    let claims = RequestClaims {
        from: from.into(),
        to: to.into(),
        cluster,
        nonce,
        ticket,
    };
    let exchange = Exchange {
        method,
        target,
        body: b"",
    };
    (keys.sign_request(&claims, &exchange), nonce)
}

/// The verified claims of a signed answer.
fn answer_claims(
    keys: &Keys,
    r: &RawResponse,
    nonce: &Nonce,
    method: &str,
    target: &str,
) -> AnswerClaims {
    let header = r.header(auth::HEADER).expect("a signed answer");
    let exchange = Exchange {
        method,
        target,
        body: b"",
    };
    let body = r.decoded_body().expect("body");
    keys.verify_answer(header, nonce, &exchange, r.status, &body)
        .expect("the answer verifies")
}

fn cluster_of(status: &Value) -> ClusterId {
    ClusterId(
        status["cluster_id"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no cluster_id in {status}")),
    )
}

fn counting_voters(status: &Value) -> Vec<String> {
    let mut voters: Vec<String> = status["held_votes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["counts"] == true)
        .filter_map(|v| v["voter"].as_str().map(String::from))
        .collect();
    voters.sort();
    voters
}

/// Catches: `/vote` or `/release` answered without a signature, with another cluster's key,
/// altered on the way (another candidate under the MAC of the first), replayed, or addressed
/// to another node or cluster; any of them changing a promise or a holder's votes, or not
/// counted in `/status`.
#[tokio::test]
async fn unsigned_forged_and_replayed_peer_requests_get_401_and_change_nothing() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "auth::unsigned_forged_and_replayed_peer_requests_get_401_and_change_nothing",
    )))
    .await
    .expect("lab builds");
    let mut fleet = Fleet::start(&lab).await;
    fleet.wait_normal().await;
    let keys = Keys::load(&primgr_lab::peer_key_file()).expect("the lab's key");
    let other = Keys::from_secrets(&[&[7u8; 32]]).expect("another key");
    let (node1, node3) = (fleet.addr("node1"), fleet.addr("node3"));
    let (_, s1) = fleet.json("node1", "/status").await;
    let (_, s3) = fleet.json("node3", "/status").await;
    assert_eq!(s1["peer_auth"], "key", "{s1}");
    let cluster = cluster_of(&s3);
    assert_eq!(cluster, cluster_of(&s1), "one cluster");
    let voters_before = counting_voters(&s1);
    assert!(voters_before.len() >= 2, "{s1}");
    let refused_before = s3["peer_requests_refused"].as_u64().unwrap_or(0);

    let mut cases = 0;
    let mut to_node3 = 0;
    let mut expect_401 = |r: RawResponse, want: &str, what: &str| {
        assert_eq!(r.status, 401, "{what}: {}", body(&r));
        assert!(
            body(&r).contains(want),
            "{what}: {want:?} not in {}",
            body(&r)
        );
        cases += 1;
    };
    // Unsigned.
    for (addr, method, target) in [
        (node3, "GET", "/vote?candidate=node2"),
        (node3, "GET", "/vote?candidate=node1"),
        (node3, "POST", "/release"),
        (node1, "POST", "/release"),
    ] {
        let r = send(addr, method, target, None).await;
        expect_401(
            r,
            "no x-primgr-auth header",
            &format!("unsigned {method} {target}"),
        );
        to_node3 += usize::from(addr == node3);
    }
    // Signed with another key.
    let (h, _) = signed(
        &other,
        "node2",
        "node3",
        Some(cluster),
        None,
        "GET",
        "/vote?candidate=node2",
    );
    expect_401(
        send(node3, "GET", "/vote?candidate=node2", Some(&h)).await,
        "not in this node's peer_key_file",
        "another key",
    );
    // Altered: the MAC of candidate node1, sent for node2.
    let (h, _) = signed(
        &keys,
        "node2",
        "node3",
        Some(cluster),
        None,
        "GET",
        "/vote?candidate=node1",
    );
    expect_401(
        send(node3, "GET", "/vote?candidate=node2", Some(&h)).await,
        "MAC does not match",
        "altered candidate",
    );
    // Addressed to another node, and of another cluster.
    let (h, _) = signed(
        &keys,
        "node2",
        "node4",
        Some(cluster),
        None,
        "GET",
        "/vote?candidate=node2",
    );
    expect_401(
        send(node3, "GET", "/vote?candidate=node2", Some(&h)).await,
        "addressed to \\\"node4\\\"",
        "another recipient",
    );
    let foreign = ClusterId(cluster.0 ^ 1);
    let (h, _) = signed(
        &keys,
        "node2",
        "node3",
        Some(foreign),
        None,
        "GET",
        "/vote?candidate=node2",
    );
    expect_401(
        send(node3, "GET", "/vote?candidate=node2", Some(&h)).await,
        "is not this node's cluster",
        "another cluster",
    );
    to_node3 += 4;

    // Replays: a genuine request without a ticket gets one in a signed 401; with it, the
    // request is admitted once; the same bytes again are a replay.
    for (addr, to, method, target) in [
        (node3, "node3", "GET", "/vote?candidate=node2"),
        // The epoch a release undoes is in its query, bound by the MAC like a candidate.
        (
            node1,
            "node1",
            "POST",
            "/release?undoes=AAAAAAAAAAAAAAAAAAAAAA.0",
        ),
    ] {
        let (h, nonce) = signed(&keys, "node2", to, Some(cluster), None, method, target);
        let r = send(addr, method, target, Some(&h)).await;
        let claims = answer_claims(&keys, &r, &nonce, method, target);
        expect_401(
            r,
            "no ticket",
            &format!("{method} {target} without a ticket"),
        );
        let (h, nonce) = signed(
            &keys,
            "node2",
            to,
            Some(cluster),
            claims.ticket,
            method,
            target,
        );
        let first = send(addr, method, target, Some(&h)).await;
        assert_ne!(
            first.status,
            401,
            "{method} {target} with a ticket: {}",
            body(&first)
        );
        answer_claims(&keys, &first, &nonce, method, target);
        let again = send(addr, method, target, Some(&h)).await;
        expect_401(again, "a replay", &format!("{method} {target} replayed"));
        // The replay is counted; asking for a ticket is not a refusal.
        to_node3 += usize::from(addr == node3);
    }

    // Nothing changed: node1 still holds the same voters' votes and answers 200, and node3
    // counted every refusal.
    tokio::time::sleep(common::INTERVAL * 3).await;
    let (code, s1) = fleet.json("node1", "/status").await;
    assert_eq!(code, 200, "{s1}");
    assert_eq!(counting_voters(&s1), voters_before, "{s1}");
    let (_, s3) = fleet.json("node3", "/status").await;
    let refused = s3["peer_requests_refused"].as_u64().unwrap_or(0) - refused_before;
    assert_eq!(refused, to_node3 as u64, "{s3}");
    let metrics = fleet.get("node3", "/metrics").await.expect("metrics");
    assert!(
        metrics
            .body
            .contains("primgr_peer_auth_mode{mode=\"key\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains(&format!(
            "primgr_peer_requests_refused_total {}",
            refused + refused_before
        )),
        "{}",
        metrics.body
    );
    assert!(
        s1["peer_auth_failures"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "members' answers all authentic: {s1}"
    );
    println!(
        "{cases} refusals (401) checked, {refused} counted by node3; node1 kept its votes of \
         {voters_before:?}"
    );
    fleet.stop_all().await;
    lab.teardown().await.expect("teardown");
}

/// Catches: address mode (no `peer_key_file`) answering `/vote` or `/release` to any address
/// (the one-client release flood of issue 17), refusing the members themselves (no 200), or
/// not saying which mode is in force.
#[tokio::test]
async fn without_a_key_file_only_the_members_addresses_are_answered() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "auth::without_a_key_file_only_the_members_addresses_are_answered",
    )))
    .await
    .expect("lab builds");
    let mut fleet = Fleet {
        daemons: Default::default(),
    };
    for node in lab.node_names() {
        let config = common::config_for(&lab, &node);
        let d = Daemon::in_process(config)
            .without_lab_key()
            .spawn()
            .expect("spawn");
        fleet.daemons.insert(node, d);
    }
    // The members' requests come from their addresses: votes flow, node1 is the primary.
    fleet.wait_normal().await;
    let (_, s3) = fleet.json("node3", "/status").await;
    assert_eq!(s3["peer_auth"], "addresses", "{s3}");
    let refused_before = s3["peer_requests_refused"].as_u64().unwrap_or(0);
    let mut cases = 0;
    for (node, method, target) in [
        ("node3", "GET", "/vote?candidate=node1"),
        ("node3", "GET", "/vote?candidate=node2"),
        ("node3", "POST", "/release"),
        ("node1", "POST", "/release"),
    ] {
        // From 127.0.0.1: not a member's address.
        let r = send(fleet.addr(node), method, target, None).await;
        assert_eq!(r.status, 403, "{method} {target}: {}", body(&r));
        assert!(body(&r).contains("not a member's address"), "{}", body(&r));
        cases += 1;
    }
    let (code, s1) = fleet.json("node1", "/status").await;
    assert_eq!(code, 200, "{s1}");
    let (_, s3) = fleet.json("node3", "/status").await;
    let refused = s3["peer_requests_refused"].as_u64().unwrap_or(0) - refused_before;
    assert_eq!(refused, 3, "{s3}");
    let metrics = fleet.get("node3", "/metrics").await.expect("metrics");
    assert!(
        metrics
            .body
            .contains("primgr_peer_auth_mode{mode=\"addresses\"} 1"),
        "{}",
        metrics.body
    );
    println!("{cases} requests from a non-member refused (403); node1 is 200 on members' votes");
    fleet.stop_all().await;
    lab.teardown().await.expect("teardown");
}

/// Catches: a rotation (new key second everywhere, then first, then the old one dropped, one
/// node at a time, by SIGHUP) that makes a node refuse or discount another's messages for a
/// moment: the primary would lose a vote, or its 200.
#[tokio::test]
async fn rotating_the_key_loses_no_vote() {
    let lab = Lab::build(LabSpec::standard(subnet_of(
        "auth::rotating_the_key_loses_no_vote",
    )))
    .await
    .expect("lab builds");
    let (old, new) = (keygen(), keygen());
    let (old, new) = (old.trim(), new.trim());
    let nodes = lab.node_names();
    let file = |node: &str| lab.dir().join(format!("{node}-rotation.key"));
    for node in &nodes {
        write_key_file(&file(node), &[old], 0o600);
    }
    let mut daemons = Vec::new();
    for node in &nodes {
        let mut d = lab
            .daemon(node, PRIMGR)
            .expect("daemon")
            .without_lab_key()
            .args([
                "--peer-key-file".to_string(),
                file(node).display().to_string(),
            ])
            .args(common::timing_flags())
            .spawn()
            .expect("spawn");
        d.wait_listening(Duration::from_secs(10)).await;
        daemons.push(d);
    }
    let node1 = lab.daemon_addr("node1");
    let primary = || async {
        common::wait_json_at(node1, "/status", common::settle_bound(), |v| {
            v["state"] == "Primary"
        })
        .await
    };
    primary().await;
    let needed = |v: &Value| v["votes_needed"].as_u64().unwrap_or(99);
    let steps: [&[&str]; 3] = [&[old, new], &[new, old], &[new]];
    let mut samples = 0;
    for (i, lines) in steps.iter().enumerate() {
        // One node at a time: every pair of neighbours in the rotation meets.
        for (n, node) in nodes.iter().enumerate() {
            write_key_file(&file(node), lines, 0o600);
            daemons[n].hangup().expect("SIGHUP");
            let until = Instant::now() + common::INTERVAL * 3;
            while Instant::now() < until {
                let (code, v) = common::json_at(node1, "/status").await;
                assert_eq!(code, 200, "step {i}, {node} reloaded: {v}");
                assert!(
                    v["votes"].as_u64().unwrap_or(0) >= needed(&v),
                    "step {i}, {node}: {v}"
                );
                assert!(
                    v["peer_auth_failures"]
                        .as_object()
                        .is_some_and(|m| m.is_empty()),
                    "step {i}, {node}: {v}"
                );
                samples += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Every daemon took the last file: the old key no longer verifies anywhere.
    for node in &nodes {
        let log = std::fs::read_to_string(lab.daemon_log(node).expect("log")).unwrap_or_default();
        assert!(log.contains("peer keys: now 1 key(s)"), "{node}: {log}");
    }
    println!(
        "{} nodes rotated in 3 steps, one node at a time: node1 answered 200 with its votes in \
         all {samples} samples",
        nodes.len()
    );
    for d in &mut daemons {
        d.stop().await;
    }
    lab.teardown().await.expect("teardown");
}
