//! Drain: taking a node out of the read pool without stopping anything, from the node itself.
//!
//! Owns the drain flag: a file `drain` in `state_dir` holding the operator's reason.
//! `primgr drain` writes it, `primgr undrain` removes it, the poller reads it every cycle, so a
//! drain takes effect within one interval and survives a restart of the daemon (and of the
//! machine: `state_dir` is persistent, `/var/lib/primgr` by default). Who may drain: whoever
//! may write in `state_dir` — the systemd unit's `StateDirectory=primgr` makes it the `primgr`
//! user's, mode 0750, so root and the service user, nobody else. The file is written to a
//! temporary name and renamed, so the poller never reads half a reason.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::snapshot::Drain;
use crate::wire::Status;

/// The name of the drain file in `state_dir`.
pub const DRAIN_FILE: &str = "drain";

/// Longest reason kept (the rest is cut): it is shown in `/status` and health-check bodies.
pub const MAX_REASON: usize = 200;

/// The drain file of `state_dir`.
pub fn drain_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DRAIN_FILE)
}

/// Drains the node: writes the flag with `reason` (atomically).
pub fn drain(state_dir: &Path, reason: &str) -> std::io::Result<()> {
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect();
    let path = drain_path(state_dir);
    let tmp = state_dir.join(format!(".{DRAIN_FILE}.{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", reason.trim()))?;
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Undrains the node; Ok(false) when it was not drained.
pub fn undrain(state_dir: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(drain_path(state_dir)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits (at most `within`) until the daemon at `url` shows the drain as wanted in its
/// `/status`; its node name, or why it did not.
pub async fn confirm(
    url: &hyper::Uri,
    drained: bool,
    within: std::time::Duration,
) -> Result<String, String> {
    let client = crate::peers::PeerClient::new(None);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let ask = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        let last = match client.get(url, "/status", ask.min(deadline)).await {
            Ok((code, body)) => match Status::read(code, &body) {
                Ok(s) if s.drained.is_some() == drained => return Ok(s.node),
                Ok(_) => "it does not show the change yet".to_string(),
                Err(_) => "its answer is not a primgr /status".to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Reads the flag: None when not drained; an error when `state_dir` cannot be read (the caller
/// logs it and serves as not drained).
pub fn read(state_dir: &Path) -> std::io::Result<Option<Drain>> {
    let path = drain_path(state_dir);
    let text = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let since = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    let text = String::from_utf8_lossy(&text[..text.len().min(4 * MAX_REASON)]);
    let reason = text.trim();
    Ok(Some(Drain {
        reason: if reason.is_empty() {
            "no reason given".into()
        } else {
            reason.chars().take(MAX_REASON).collect()
        },
        since,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_read_undrain() {
        let dir = std::env::temp_dir().join(format!("primgr-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), None);
        drain(&dir, "kernel update\nby alice").unwrap();
        let d = read(&dir).unwrap().unwrap();
        assert_eq!(d.reason, "kernel update by alice");
        drain(&dir, "").unwrap();
        assert_eq!(read(&dir).unwrap().unwrap().reason, "no reason given");
        assert!(undrain(&dir).unwrap());
        assert!(!undrain(&dir).unwrap());
        assert_eq!(read(&dir).unwrap(), None);
        // Nothing but the flag was ever left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
        assert!(drain(&dir, "x").is_err(), "a missing state_dir is an error");
    }
}
