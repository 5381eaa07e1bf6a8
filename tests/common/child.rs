//! The real `primgr` binary as a child process, for tests that must see it as an operator does:
//! its own memory (`/proc/<pid>/status`), its open descriptors, its log, its exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use primgr_lab::http;

/// A running `primgr` process; killed when dropped.
pub struct Primgr {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Primgr {
    /// Starts `primgr --listen <addr> <args>` with `RUST_LOG=<log_filter>`, stdout and stderr
    /// appended to `log`.
    pub fn spawn(addr: SocketAddr, args: &[&str], log_filter: &str, log: &Path) -> Primgr {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_primgr"))
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env("RUST_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start primgr");
        Primgr {
            child,
            addr,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/state` answers (any status); panics with the log after `within`.
    pub async fn wait_listening(&mut self, within: Duration) {
        let t0 = Instant::now();
        loop {
            if http::get(self.addr, "/state", Duration::from_millis(500))
                .await
                .is_ok()
            {
                return;
            }
            assert!(self.running(), "primgr exited:\n{}", self.log_text());
            assert!(
                t0.elapsed() < within,
                "primgr not answering after {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...).
    pub fn status_kb(&self, field: &str) -> u64 {
        proc_status_kb(self.pid(), field)
            .unwrap_or_else(|| panic!("{field} of pid {} unreadable", self.pid()))
    }

    /// Number of open file descriptors.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Primgr {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A fresh scratch directory for a test's files (logs), removed first if it exists.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("primgr-test-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
