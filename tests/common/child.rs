//! The real `primgr` binary as a child process, for tests that must see it as an operator does:
//! its own memory (`/proc/<pid>/status`), its open descriptors, its log, its exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use primgr_lab::{http, procfs, wait};

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

    /// Waits until `/state` answers (any status); panics with the log after `within` or when
    /// the process exits first.
    pub async fn wait_listening(&mut self, within: Duration) {
        let addr = self.addr;
        let exited = std::cell::Cell::new(false);
        let child = std::cell::RefCell::new(&mut self.child);
        let r = wait::wait_for_every(
            &format!("primgr answering on {addr}"),
            within,
            Duration::from_millis(50),
            || async {
                if !matches!(child.borrow_mut().try_wait(), Ok(None)) {
                    exited.set(true);
                    return Ok(true);
                }
                Ok(http::get(addr, "/state", Duration::from_millis(500))
                    .await
                    .is_ok())
            },
        )
        .await;
        assert!(!exited.get(), "primgr exited:\n{}", self.log_text());
        if let Err(e) = r {
            panic!("{e:#}:\n{}", self.log_text());
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...).
    pub fn status_kb(&self, field: &str) -> u64 {
        procfs::status_kb(self.pid(), field).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Number of open file descriptors.
    pub fn open_fds(&self) -> usize {
        procfs::open_fds(self.pid()).unwrap_or_else(|e| panic!("{e:#}"))
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

/// A fresh scratch directory for a test's files (logs), removed first if it exists.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("primgr-test-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
