//! TLS, in process (no database needed): certificates made here with rcgen (a CA, node
//! certificates with the loopback address as an IP SAN, an expired one, one of another CA).
//!
//! - the API over HTTPS answers `/state`; plain HTTP to the TLS port gets no HTTP answer, and
//!   the port keeps serving;
//! - the peer client with `tls_ca_file` gets an answer from a peer whose certificate chains to
//!   the CA, and none (an error, counted as no answer by every fan-out) from a peer whose
//!   certificate expired or is signed by another CA;
//! - a reload (the SIGHUP path, `primgr::reload::reload`) puts a renewed certificate in force
//!   on the same listener; a bad new certificate refuses the reload and the old one stays.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use primgr::config::{Settings, Source};
use primgr::peers::PeerClient;
use primgr::shared::Shared;
use primgr::tls::{ClientTls, Tls};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A CA: its certificate and key.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("CA");
    Ca { cert, key }
}

/// A node certificate for 127.0.0.1 signed by `ca` (PEM certificate, PEM key); `expired`: its
/// validity ended in 2001.
fn node_cert(ca: &Ca, expired: bool) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().expect("ip"))];
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("signed");
    (cert.pem(), key.serialize_pem())
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("primgr-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// Writes a certificate and key pair as `cert.pem` and `key.pem` (0600) in `d`.
fn write_pair(d: &Path, (cert, key): &(String, String)) -> (PathBuf, PathBuf) {
    let (c, k) = (d.join("cert.pem"), d.join("key.pem"));
    std::fs::write(&c, cert).expect("cert");
    std::fs::write(&k, key).expect("key");
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (c, k)
}

fn write_ca(d: &Path, ca: &Ca) -> PathBuf {
    let p = d.join("ca.pem");
    std::fs::write(&p, ca.cert.pem()).expect("ca");
    p
}

/// A daemon's HTTP side (the API's routes, no poller: `/state` answers from an empty
/// snapshot) on a port-0 listener, with the configuration file at `toml`; its shared state
/// and where it listens.
async fn serve(toml: &Path) -> (Arc<Shared>, SocketAddr, Source) {
    let source = Source {
        file: Some(toml.to_path_buf()),
        flags: Settings::default(),
    };
    let config = source.load().expect("the configuration loads");
    let tls = Tls::load(
        config.tls.tls_cert_file.as_deref(),
        config.tls.tls_key_file.as_deref(),
        config.tls.tls_ca_file.as_deref(),
    )
    .expect("TLS files load");
    let shared = Arc::new(Shared::with_tls(config, tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server_tls = shared.tls.server.as_ref().map(|t| t.config());
    let app = primgr::api::App::new(shared.clone());
    tokio::spawn(async move {
        let app = app;
        primgr::server::serve(
            listener,
            server_tls,
            |client| app.service(client),
            std::future::pending(),
        )
        .await
    });
    (shared, addr, source)
}

fn config_file(d: &Path, cert: &Path, key: &Path, ca: &Path) -> PathBuf {
    let p = d.join("primgr.toml");
    std::fs::write(
        &p,
        format!(
            "node_name = \"n1\"\nconninfo = \"host=127.0.0.1 port=1 dbname=x\"\n\
             tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_ca_file = \"{}\"\n",
            cert.display(),
            key.display(),
            ca.display()
        ),
    )
    .expect("toml");
    p
}

fn base(addr: SocketAddr) -> Uri {
    format!("http://{addr}/").parse().expect("uri")
}

async fn ask_state(client: &PeerClient, addr: SocketAddr) -> Result<u16, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    client
        .get(&base(addr), "/state", deadline)
        .await
        .map(|(status, _)| status)
        .map_err(|e| e.to_string())
}

/// Sends a plain HTTP request and returns what came back before the server closed.
async fn plain_http(addr: SocketAddr) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s
        .write_all(b"GET /state HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(12), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the TLS port closes a plain HTTP connection");
    out
}

#[tokio::test]
async fn https_answers_plain_http_is_closed_and_bad_peer_certificates_are_refused() {
    let (good_ca, other_ca) = (ca("cluster CA"), ca("another CA"));
    let d = dir("serve");
    let ca_file = write_ca(&d, &good_ca);
    let mut cases = 0;

    // A good node, an expired one, one of another CA: each a daemon's HTTPS port.
    let mut ports = Vec::new();
    for (name, pair) in [
        ("good", node_cert(&good_ca, false)),
        ("expired", node_cert(&good_ca, true)),
        ("foreign", node_cert(&other_ca, false)),
    ] {
        let nd = dir(name);
        let (cert, key) = write_pair(&nd, &pair);
        let (_, addr, _) = serve(&config_file(&nd, &cert, &key, &ca_file)).await;
        ports.push((name, addr));
    }
    let client = PeerClient::with_tls(None, Some(&ClientTls::load(&ca_file).expect("CA")));
    assert_eq!(client.scheme(), "https");
    for (name, addr) in &ports {
        let answer = ask_state(&client, *addr).await;
        println!("{name}: {answer:?}");
        match *name {
            // No poller: the empty snapshot is served as 509 (or 503); any HTTP answer
            // shows that TLS carried the request.
            "good" => assert!(
                matches!(answer, Ok(509 | 503)),
                "{name}: an answer over HTTPS: {answer:?}"
            ),
            "expired" => {
                let e = answer.expect_err("an expired certificate is refused");
                assert!(e.to_lowercase().contains("expired"), "{e}");
            }
            _ => {
                let e = answer.expect_err("a certificate of another CA is refused");
                assert!(e.contains("UnknownIssuer") || e.contains("issuer"), "{e}");
            }
        }
        cases += 1;
    }

    // Plain HTTP to the TLS port: no HTTP answer, the connection closed; HTTPS still served.
    let good = ports[0].1;
    for _ in 0..3 {
        let back = plain_http(good).await;
        assert!(
            !back.starts_with(b"HTTP/"),
            "no HTTP answer on the TLS port: {:?}",
            String::from_utf8_lossy(&back)
        );
        assert!(matches!(ask_state(&client, good).await, Ok(509 | 503)));
        cases += 1;
    }

    // A plain client (no CA) to the TLS port gets no answer either.
    let plain = PeerClient::new(None);
    assert_eq!(plain.scheme(), "http");
    assert!(ask_state(&plain, good).await.is_err());
    cases += 1;
    println!("TLS cases checked: {cases}");
}

#[tokio::test]
async fn a_reload_renews_the_certificate_on_the_same_listener() {
    let (good_ca, other_ca) = (ca("cluster CA"), ca("another CA"));
    let d = dir("reload");
    let ca_file = write_ca(&d, &good_ca);
    // Starts with a certificate of another CA: the cluster's clients refuse it.
    let (cert, key) = write_pair(&d, &node_cert(&other_ca, false));
    let (shared, addr, source) = serve(&config_file(&d, &cert, &key, &ca_file)).await;
    let client = PeerClient::with_tls(None, Some(&ClientTls::load(&ca_file).expect("CA")));
    assert!(ask_state(&client, addr).await.is_err(), "refused before");
    let before = shared.tls.server.as_ref().and_then(|t| t.certificate());

    // The renewed certificate is written over the same files; SIGHUP's reload reads it.
    write_pair(&d, &node_cert(&good_ca, false));
    primgr::reload::reload(&source, &shared, None).expect("the reload applies");
    let after = shared.tls.server.as_ref().and_then(|t| t.certificate());
    assert_ne!(before, after, "the certificate in force changed");
    let answer = ask_state(&client, addr).await;
    assert!(
        matches!(answer, Ok(509 | 503)),
        "the same listener serves the renewed certificate: {answer:?}"
    );

    // A bad new certificate (not PEM; then a key that is not the certificate's): the reload
    // is refused naming the key, and the certificate in force stays.
    std::fs::write(&cert, "not a certificate").expect("write");
    let e = primgr::reload::reload(&source, &shared, None)
        .expect_err("refused")
        .to_string();
    println!("refused: {e}");
    assert!(e.contains("`tls_cert_file`"), "{e}");
    let (good_cert, _) = node_cert(&good_ca, false);
    let (_, other_key) = node_cert(&good_ca, false);
    std::fs::write(&cert, good_cert).expect("write");
    std::fs::write(&key, other_key).expect("write");
    let e = primgr::reload::reload(&source, &shared, None)
        .expect_err("refused")
        .to_string();
    println!("refused: {e}");
    assert!(e.contains("`tls_key_file`"), "{e}");
    assert_eq!(
        shared.tls.server.as_ref().and_then(|t| t.certificate()),
        after,
        "the certificate in force stays"
    );
    assert!(matches!(ask_state(&client, addr).await, Ok(509 | 503)));
    println!("reload cases checked: 4");
}

/// Both or neither of tls_cert_file and tls_key_file; a key file others may read is refused;
/// each error names the key.
#[test]
fn the_tls_keys_are_validated_naming_the_key() {
    let good_ca = ca("cluster CA");
    let d = dir("validate");
    let (cert, key) = write_pair(&d, &node_cert(&good_ca, false));
    let load = |lines: &str| {
        let p = d.join("v.toml");
        std::fs::write(&p, format!("node_name = \"n1\"\n{lines}")).expect("toml");
        Source {
            file: Some(p),
            flags: Settings::default(),
        }
        .load()
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let c = format!("tls_cert_file = \"{}\"\n", cert.display());
    let k = format!("tls_key_file = \"{}\"\n", key.display());
    assert!(load(&format!("{c}{k}")).is_ok());
    let cases = [
        (c.clone(), "`tls_cert_file`"),
        (k.clone(), "`tls_key_file`"),
        (
            "tls_ca_file = \"/nonexistent/ca.pem\"\n".to_string(),
            "`tls_ca_file`",
        ),
    ];
    for (lines, key_named) in &cases {
        let e = load(lines).expect_err("refused");
        assert!(e.contains(key_named), "{e}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = load(&format!("{c}{k}")).expect_err("a readable key is refused");
    assert!(
        e.contains("`tls_key_file`") && e.contains("chmod 600"),
        "{e}"
    );
    println!("validation cases checked: {}", cases.len() + 2);
}

/// The `show stat` rows of haproxy's stats socket: (server, status, check_status).
async fn haproxy_servers(socket: &Path) -> Vec<(String, String, String)> {
    let Ok(mut s) = tokio::net::UnixStream::connect(socket).await else {
        return Vec::new();
    };
    let _ = s.write_all(b"show stat\n").await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(sv), Some(st), Some(ck)) = (col("svname"), col("status"), col("check_status")) else {
        return Vec::new();
    };
    lines
        .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() > ck.max(st).max(sv) && f[sv] != "BACKEND" && f[sv] != "FRONTEND")
        .map(|f| (f[sv].clone(), f[st].clone(), f[ck].clone()))
        .collect()
}

/// A real haproxy checks two TLS daemons with `check-ssl verify required ca-file`: the one
/// whose certificate chains to the CA passes its checks (UP, L7OK), the one whose certificate
/// another CA signed fails them at the TLS layer (DOWN, L6...). No database here: the daemons
/// answer `/state` 503, which the check expects; what is shown is the TLS layer of haproxy's
/// checks. (The lab test with a real primary's 200 is not written yet.)
#[tokio::test]
async fn haproxy_check_ssl_verifies_the_certificate() {
    let (good_ca, other_ca) = (ca("cluster CA"), ca("another CA"));
    let d = dir("haproxy");
    let ca_file = write_ca(&d, &good_ca);
    let mut servers = Vec::new();
    for (name, pair) in [
        ("good", node_cert(&good_ca, false)),
        ("foreign", node_cert(&other_ca, false)),
    ] {
        let nd = dir(&format!("haproxy-{name}"));
        let (cert, key) = write_pair(&nd, &pair);
        let (_, addr, _) = serve(&config_file(&nd, &cert, &key, &ca_file)).await;
        servers.push(format!(
            "    server {name} {addr} check check-ssl verify required ca-file {} inter 100ms \
             fall 1 rise 1\n",
            ca_file.display()
        ));
    }
    let socket = d.join("stats.sock");
    let cfg = d.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n\
             \x20   timeout server 5s\n    timeout check 1s\n\
             backend primgr\n    option httpchk GET /state\n    http-check expect status 503\n{}",
            socket.display(),
            servers.concat()
        ),
    )
    .expect("haproxy.cfg");
    let mut haproxy = tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy is installed (apt-get install haproxy)");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut polls = 0;
    let seen = loop {
        let rows = haproxy_servers(&socket).await;
        polls += 1;
        let find = |n: &str| rows.iter().find(|r| r.0 == n).cloned();
        if let (Some(g), Some(f)) = (find("good"), find("foreign"))
            && g.1 == "UP"
            && g.2.starts_with("L7OK")
            && f.1 == "DOWN"
            && f.2.starts_with("L6")
        {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "haproxy's view after {polls} polls: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("haproxy's view ({polls} polls): {seen:?}");
    let _ = haproxy.kill().await;
}

/// The lab (real PostgreSQL and repmgr, 4 nodes): every daemon serves HTTPS with a certificate
/// for its node's address and asks its peers over https against the CA. node1 gets its 200,
/// which takes the votes of its site, asked over TLS; `/realPrimary` (a fan-out of `/state`
/// over TLS) names node1; `primgr cluster --tls-ca-file` finds exactly one primary.
#[tokio::test]
async fn real_primary_votes_and_cluster_over_tls() {
    let lab = primgr_lab::Lab::build(primgr_lab::LabSpec::standard(primgr_lab::subnet_of(
        "tls::real_primary_votes_and_cluster_over_tls",
    )))
    .await
    .expect("lab builds");
    let cluster_ca = ca("cluster CA");
    let d = dir("lab");
    let ca_file = write_ca(&d, &cluster_ca);
    let mut files = std::collections::BTreeMap::new();
    for node in lab.node_names() {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![SanType::IpAddress(lab.addr(&node).into())];
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &cluster_ca.cert, &cluster_ca.key)
            .expect("signed");
        let nd = dir(&format!("lab-{node}"));
        files.insert(node, write_pair(&nd, &(cert.pem(), key.serialize_pem())));
    }
    let fleet = common::Fleet::start_with(&lab, |node, c| {
        let (cert, key) = &files[node];
        c.tls.tls_cert_file = Some(cert.clone());
        c.tls.tls_key_file = Some(key.clone());
        c.tls.tls_ca_file = Some(ca_file.clone());
    })
    .await;
    let client = PeerClient::with_tls(None, Some(&ClientTls::load(&ca_file).expect("CA")));
    let want = [
        ("node1", 200),
        ("node2", 202),
        ("node3", 202),
        ("node4", 202),
    ];
    let start = std::time::Instant::now();
    let mut polls = 0;
    loop {
        let mut seen = Vec::new();
        for (node, _) in want {
            seen.push(ask_state(&client, fleet.addr(node)).await);
        }
        polls += 1;
        if seen.iter().zip(want).all(|(s, (_, w))| *s == Ok(w)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "states over https after {polls} polls: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "states over https as expected after {:?} ({polls} polls)",
        start.elapsed()
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (status, body) = client
        .get(&base(fleet.addr("node3")), "/realPrimary", deadline)
        .await
        .expect("/realPrimary over https");
    let body = String::from_utf8_lossy(&body).into_owned();
    println!("/realPrimary on node3: {status} {body}");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("node1"), "{body}");

    // A plain-HTTP client gets nothing from these ports.
    assert!(
        ask_state(&PeerClient::new(None), fleet.addr("node1"))
            .await
            .is_err()
    );

    let keys = primgr::auth::Keys::load(&primgr_lab::peer_key_file()).ok();
    let tls = ClientTls::load(&ca_file).expect("CA");
    let report = primgr::cluster::gather_with(
        &base(fleet.addr("node2")),
        Duration::from_secs(3),
        keys.as_ref(),
        Some(&tls),
    )
    .await;
    println!("{}", report.render());
    assert_eq!(report.exit_code(), 0, "{}", report.render());
    let without = primgr::cluster::gather_with(
        &base(fleet.addr("node2")),
        Duration::from_secs(3),
        keys.as_ref(),
        None,
    )
    .await;
    assert_ne!(without.exit_code(), 0, "plain HTTP reaches no daemon");

    // A real haproxy with the shipped configuration, its checks over TLS verified against
    // the cluster's CA: node1 UP in the write pool after a passed check (L7OK), the standbys
    // DOWN (202). Then with another CA as its ca-file: every server, node1 included, DOWN at
    // the TLS layer (L6RSP), whatever it would answer.
    let other = ca("another CA");
    let other_file = d.join("other-ca.pem");
    std::fs::write(&other_file, other.cert.pem()).expect("other CA");
    for (ca_path, node1_up) in [(&ca_file, true), (&other_file, false)] {
        let template = common::clients::shipped().replace(
            "default-server check port 5999",
            &format!(
                "default-server check port 5999 check-ssl verify required ca-file {}",
                ca_path.display()
            ),
        );
        assert_ne!(
            template,
            common::clients::shipped(),
            "the check line is found"
        );
        let hp = primgr_lab::haproxy::Haproxy::start(&lab, &template)
            .await
            .expect("haproxy starts");
        let start = std::time::Instant::now();
        let seen = loop {
            let rows = hp.servers("postgres_write").await.unwrap_or_default();
            let node1 = rows.iter().find(|r| r.server == "node1");
            let done = match node1 {
                Some(r) if node1_up => {
                    r.is_up()
                        && r.check_status.starts_with("L7OK")
                        && rows
                            .iter()
                            .filter(|r| r.server != "node1")
                            .all(|r| !r.is_up() && r.check_status.starts_with("L7STS"))
                }
                Some(_) => rows
                    .iter()
                    .all(|r| !r.is_up() && r.check_status.starts_with("L6")),
                None => false,
            };
            if done {
                break rows;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "haproxy's write pool with {}: {rows:?}",
                ca_path.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let view: Vec<_> = seen
            .iter()
            .map(|r| format!("{} {} {}", r.server, r.status, r.check_status))
            .collect();
        println!(
            "haproxy ({}) after {:?}: {view:?}",
            if node1_up { "cluster CA" } else { "another CA" },
            start.elapsed()
        );
        hp.stop().await.expect("haproxy stops");
    }
    println!("lab TLS cases checked: 6");
}
