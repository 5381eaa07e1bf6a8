//! systemd readiness of the real `primgr` binary, as systemd would see it: a Unix datagram
//! socket named in NOTIFY_SOCKET gets READY=1 once the first poll cycle is done (even when that
//! cycle found the database down), and STOPPING=1 on SIGTERM, after which the process exits 0.
//! No systemd needed: the test plays the service manager's side of the socket.

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Daemon, PRIMGR};
use primgr_lab::Ended;

use primgr_lab::wait;

/// Generous bounds for a loaded 2-core machine; the daemon polls every 200 ms.
const READY_WITHIN: Duration = Duration::from_secs(10);
const EXIT_WITHIN: Duration = Duration::from_secs(2);

/// Starts primgr on a free port of 127.0.0.1 against a closed database port (its first cycle
/// ends Down at once), NOTIFY_SOCKET set, its output in `log`.
fn spawn_primgr(notify_socket: &str, log: PathBuf) -> Daemon {
    Daemon::process(PRIMGR)
        .listen(free_local_addr())
        .args([
            "--node-name",
            "node1",
            "--conninfo",
            "host=127.0.0.1 port=1 dbname=repmgr user=repmgr",
            "--interval",
            "200ms",
            "--db-timeout",
            "200ms",
            "--peer-timeout",
            "200ms",
        ])
        .env("NOTIFY_SOCKET", notify_socket)
        .env("RUST_LOG", "warn,primgr=debug")
        .log(log)
        .spawn()
        .expect("spawn primgr")
}

/// The next datagram, as text.
fn recv(socket: &UnixDatagram, within: Duration) -> String {
    socket.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 4096];
    let len = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within {within:?}: {e}"));
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Sends SIGTERM (what systemd sends to stop the service), waits for the exit; fails (the
/// handle kills the daemon when dropped) when it takes longer than `within`.
async fn stop_with_sigterm(
    daemon: &mut Daemon,
    within: Duration,
) -> (std::process::ExitStatus, Duration) {
    daemon.terminate().expect("SIGTERM");
    let t0 = Instant::now();
    match daemon.wait_end(within).await {
        Some(Ended::Process(status)) => (status, t0.elapsed()),
        other => panic!("primgr did not exit within {within:?} of SIGTERM: {other:?}"),
    }
}

/// A fresh log file for one daemon (outside the directories the tests remove when they end).
fn log_file(what: &str) -> PathBuf {
    let log = std::env::temp_dir().join(format!("primgr-notify-{what}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    log
}

/// READY=1 after the first cycle, then STOPPING=1 and exit 0 on SIGTERM. The socket is read
/// blocking: the daemon is another process, nothing of this runtime needs to run meanwhile.
async fn ready_then_stopping(socket: &UnixDatagram, notify_socket: &str, what: &str) {
    let t0 = Instant::now();
    let mut child = spawn_primgr(notify_socket, log_file(what));
    let ready = recv(socket, READY_WITHIN);
    let ready_after = t0.elapsed();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {ready:?}"));
    assert!(status.contains("node1"), "{status}");
    // Ready means the first cycle ran: the daemon is still running, not exiting.
    assert!(child.running(), "primgr exited after READY=1");

    let (exit, exit_after) = stop_with_sigterm(&mut child, EXIT_WITHIN).await;
    let stopping = recv(socket, EXIT_WITHIN);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let log = child.log_text();
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    // Both notifications were sent and logged, while the database was down all along.
    assert_eq!(log.matches("notified systemd").count(), 2, "{log}");
    println!("{notify_socket}: READY=1 after {ready_after:?}, exit {exit_after:?} after SIGTERM");
}

#[tokio::test]
async fn ready_and_stopping_on_a_path_socket() {
    let dir = std::env::temp_dir().join(format!("primgr-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    ready_then_stopping(&socket, path.to_str().expect("utf-8 path"), "path").await;
    drop(socket);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn ready_and_stopping_on_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("primgr-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .expect("abstract address");
    let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
    ready_then_stopping(&socket, &format!("@{name}"), "abstract").await;
}

/// A free TCP port on 127.0.0.1 (the kernel's pick, released at once).
fn free_local_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

#[tokio::test]
async fn a_dead_notify_socket_is_not_fatal() {
    // NOTIFY_SOCKET names a path nobody listens on: primgr warns and serves on.
    let dir = std::env::temp_dir().join(format!("primgr-notify-dead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("nobody.sock");
    let mut child = spawn_primgr(path.to_str().expect("utf-8 path"), log_file("dead"));
    let addr = child.addr;
    // The notification fails when the first cycle is done ...
    wait::wait_for(
        "the failed notification is logged",
        READY_WITHIN,
        || async { Ok(child.log_text().contains("cannot send to NOTIFY_SOCKET")) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}; log:\n{}", child.log_text()));
    // ... and the daemon polls on: three more cycles at 200 ms.
    let took = common::wait_cycles(addr, 3, Duration::from_secs(5)).await;
    assert!(child.running(), "primgr died");
    let serving = child.log_text();
    assert_eq!(
        serving.matches("cannot send to NOTIFY_SOCKET").count(),
        1,
        "READY=1 is sent (and its failure logged) once, not every cycle:\n{serving}"
    );
    let (exit, _) = stop_with_sigterm(&mut child, EXIT_WITHIN).await;
    let log = child.log_text();
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    // STOPPING=1 failed the same way, and the daemon still exited cleanly.
    assert_eq!(
        log.matches("cannot send to NOTIFY_SOCKET").count(),
        2,
        "{log}"
    );
    println!("three more poll cycles {took:?} after the failed notification");
    let _ = std::fs::remove_dir_all(&dir);
}
