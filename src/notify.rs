//! systemd readiness: the `sd_notify` protocol, without libsystemd.
//!
//! Owns telling the service manager "ready" (after the first poll cycle, so `systemctl start`
//! returns once the health check answers from a real observation) and "stopping" (when a
//! shutdown signal arrives). systemd passes the socket in `NOTIFY_SOCKET`: a file-system path,
//! or an abstract socket name written with a leading `@`. Each message is one datagram sent
//! from a fresh unbound, non-blocking Unix datagram socket: a full queue is reported as an
//! error at once, never waited for, so a notification cannot stall the daemon. Failures are
//! for the caller to log; they are never fatal.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tracing::{debug, warn};

/// The environment variable naming the service manager's socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an @abstract name")]
    Unsupported(OsString),
    #[error("cannot send to NOTIFY_SOCKET {0}: {1}")]
    Send(String, std::io::Error),
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notifier {
    /// A socket in the file system.
    Path(PathBuf),
    /// A socket in Linux's abstract namespace (the name without the `@`).
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The notifier named by `NOTIFY_SOCKET`, None when it is not set (not run by systemd, or
    /// not as `Type=notify`).
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var_os(NOTIFY_SOCKET) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => Notifier::parse(&v).map(Some),
        }
    }

    /// Reads a `NOTIFY_SOCKET` value.
    pub fn parse(value: &OsStr) -> Result<Notifier, NotifyError> {
        let bytes = value.as_bytes();
        match bytes.first() {
            Some(b'/') => Ok(Notifier::Path(PathBuf::from(value))),
            Some(b'@') if bytes.len() > 1 => Ok(Notifier::Abstract(bytes[1..].to_vec())),
            _ => Err(NotifyError::Unsupported(value.to_os_string())),
        }
    }

    fn describe(&self) -> String {
        match self {
            Notifier::Path(p) => p.display().to_string(),
            Notifier::Abstract(name) => format!("@{}", String::from_utf8_lossy(name)),
        }
    }

    /// Sends `state` (newline-separated `KEY=value` assignments) as one datagram.
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        let fail = |e| NotifyError::Send(self.describe(), e);
        let socket = UnixDatagram::unbound().map_err(fail)?;
        socket.set_nonblocking(true).map_err(fail)?;
        let sent = match self {
            Notifier::Path(path) => socket.send_to(state.as_bytes(), path),
            Notifier::Abstract(name) => send_abstract(&socket, name, state.as_bytes()),
        }
        .map_err(fail)?;
        if sent != state.len() {
            return Err(fail(std::io::Error::other(format!(
                "sent {sent} of {} bytes",
                state.len()
            ))));
        }
        Ok(())
    }

    /// Sends `state` and logs the outcome; a failure is a warning, nothing more.
    pub fn send_logged(&self, state: &str) {
        match self.send(state) {
            Ok(()) => {
                debug!(to = %self.describe(), state = %state.replace('\n', " "), "notified systemd")
            }
            Err(e) => warn!("{e}"),
        }
    }

    /// `READY=1` with a human-readable status line.
    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STOPPING=1`: the daemon has begun to shut down.
    pub fn stopping(&self) {
        self.send_logged("STOPPING=1\nSTATUS=shutting down");
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(socket: &UnixDatagram, name: &[u8], msg: &[u8]) -> std::io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(msg, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> std::io::Result<usize> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn socket_values() {
        assert_eq!(
            Notifier::parse(OsStr::new("/run/systemd/notify")).unwrap(),
            Notifier::Path("/run/systemd/notify".into())
        );
        assert_eq!(
            Notifier::parse(OsStr::new("@/org/freedesktop/systemd1/notify/1")).unwrap(),
            Notifier::Abstract(b"/org/freedesktop/systemd1/notify/1".to_vec())
        );
        for bad in ["@", "relative/path", "vsock:2:1234"] {
            assert!(Notifier::parse(OsStr::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_datagram_per_message_to_a_path() {
        let dir = std::env::temp_dir().join(format!("primgr-notify-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = Notifier::Path(path.clone());
        n.ready("serving\non 127.0.0.1:5999");
        n.stopping();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving on 127.0.0.1:5999");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=shutting down");
        drop(rx);
        // Nobody listening any more: an error to log, not a panic or a wait.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(n.send("READY=1"), Err(NotifyError::Send(..))));
        let _ = std::fs::remove_dir(&dir);
    }
}
