//! systemd readiness of the real `primgr` binary, as systemd would see it: a Unix datagram
//! socket named in NOTIFY_SOCKET gets READY=1 once the first poll cycle is done (even when that
//! cycle found the database down), and STOPPING=1 on SIGTERM, after which the process exits 0.
//! No systemd needed: the test plays the service manager's side of the socket.

mod common;

use std::io::Read as _;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use primgr_lab::wait;

/// Generous bounds for a loaded 2-core machine; the daemon polls every 200 ms.
const READY_WITHIN: Duration = Duration::from_secs(10);
const EXIT_WITHIN: Duration = Duration::from_secs(2);

/// Starts primgr on `127.0.0.1:0` against a closed database port (its first cycle ends Down
/// at once).
fn spawn_primgr(notify_socket: &str) -> Child {
    spawn_primgr_on(notify_socket, "127.0.0.1:0")
}

/// [`spawn_primgr`] listening on `listen`.
fn spawn_primgr_on(notify_socket: &str, listen: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_primgr"))
        .args([
            "--node-name",
            "node1",
            "--listen",
            listen,
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
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
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

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Waits for the exit; kills the child and fails when it takes longer than `within`.
fn wait_exit(child: &mut Child, within: Duration) -> (std::process::ExitStatus, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return (status, t0.elapsed());
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("primgr did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// READY=1 after the first cycle, then STOPPING=1 and exit 0 on SIGTERM.
fn ready_then_stopping(socket: &UnixDatagram, notify_socket: &str) {
    let t0 = Instant::now();
    let mut child = spawn_primgr(notify_socket);
    let ready = recv(socket, READY_WITHIN);
    let ready_after = t0.elapsed();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {ready:?}"));
    assert!(status.contains("node1"), "{status}");
    // Ready means the first cycle ran: the daemon is still running, not exiting.
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "primgr exited after READY=1"
    );

    sigterm(&child);
    let stopping = recv(socket, EXIT_WITHIN);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let (exit, exit_after) = wait_exit(&mut child, EXIT_WITHIN);
    let log = stderr_of(&mut child);
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    // Both notifications were sent and logged, while the database was down all along.
    assert_eq!(log.matches("notified systemd").count(), 2, "{log}");
    println!("{notify_socket}: READY=1 after {ready_after:?}, exit {exit_after:?} after SIGTERM");
}

#[test]
fn ready_and_stopping_on_a_path_socket() {
    let dir = std::env::temp_dir().join(format!("primgr-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    ready_then_stopping(&socket, path.to_str().expect("utf-8 path"));
    drop(socket);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ready_and_stopping_on_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("primgr-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .expect("abstract address");
    let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
    ready_then_stopping(&socket, &format!("@{name}"));
}

/// A free TCP port on 127.0.0.1 (the kernel's pick, released at once).
fn free_local_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The child's stderr, read on a thread as it comes.
fn capture_stderr(child: &mut Child) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().expect("piped stderr");
    let sink = text.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = err.read(&mut buf) {
            let mut t = sink.lock().unwrap_or_else(|e| e.into_inner());
            t.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, reader)
}

#[tokio::test]
async fn a_dead_notify_socket_is_not_fatal() {
    // NOTIFY_SOCKET names a path nobody listens on: primgr warns and serves on.
    let dir = std::env::temp_dir().join(format!("primgr-notify-dead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("nobody.sock");
    let addr = free_local_addr();
    let mut child = spawn_primgr_on(path.to_str().expect("utf-8 path"), &addr.to_string());
    let (stderr, reader) = capture_stderr(&mut child);
    let logged = || stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The notification fails when the first cycle is done ...
    wait::wait_for(
        "the failed notification is logged",
        READY_WITHIN,
        || async { Ok(logged().contains("cannot send to NOTIFY_SOCKET")) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}; log:\n{}", logged()));
    // ... and the daemon polls on: three more cycles at 200 ms.
    let took = common::wait_cycles(addr, 3, Duration::from_secs(5)).await;
    assert!(child.try_wait().expect("try_wait").is_none(), "primgr died");
    let serving = logged();
    assert_eq!(
        serving.matches("cannot send to NOTIFY_SOCKET").count(),
        1,
        "READY=1 is sent (and its failure logged) once, not every cycle:\n{serving}"
    );
    sigterm(&child);
    let (exit, _) = wait_exit(&mut child, EXIT_WITHIN);
    reader.join().expect("stderr reader");
    let log = logged();
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
