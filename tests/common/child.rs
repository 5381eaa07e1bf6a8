//! The real `primgr` binary as a child process, for tests that must see it as an operator does
//! (its own memory, its open descriptors, its log, its exit): the shorthand for the usual
//! command line, through the one builder, and scratch directories for its files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use primgr_lab::Daemon;

/// The shorthand for `primgr --listen <addr> <args>` as a child process (the name the tests
/// call it by; what it returns is the one handle, [`Daemon`]).
pub struct Primgr;

impl Primgr {
    /// Starts `primgr --listen <addr> <args>` with `RUST_LOG=<log_filter>`, stdout and stderr
    /// appended to `log`; returns at once (see [`Daemon::wait_listening`]).
    pub fn spawn(addr: SocketAddr, args: &[&str], log_filter: &str, log: &Path) -> Daemon {
        Daemon::process(super::PRIMGR)
            .listen(addr)
            .args(args.iter().copied())
            .env("RUST_LOG", log_filter)
            .log(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// A fresh scratch directory for a test's files (logs), removed first if it exists.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("primgr-test-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
