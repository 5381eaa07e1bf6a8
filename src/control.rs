//! Drain: taking a node out of the read pool without stopping anything, from the node itself.
//!
//! Owns the drain flag: a file `drain` in `state_dir` holding the operator's reason.
//! `primgr drain` writes it, `primgr undrain` removes it, the poller reads it every cycle, so a
//! drain takes effect within one interval and survives a restart of the daemon (and of the
//! machine: `state_dir` is persistent, `/var/lib/primgr` by default). Who may drain: whoever
//! may write in `state_dir` — the systemd unit's `StateDirectory=primgr` makes it the `primgr`
//! user's, mode 0750, so root and the service user, nobody else. The file is written to a
//! temporary name and renamed, so the poller never reads half a reason.
//!
//! The service user owns `state_dir`, so it can plant anything there, and `primgr drain` often
//! runs as root: no path in `state_dir` is ever followed. The temporary file is created
//! exclusively (`O_CREAT|O_EXCL`, with `O_NOFOLLOW`; whatever sits at its name is unlinked
//! first, never written through), the rename replaces a planted `drain` symlink itself, and
//! the flag is read through `O_NOFOLLOW`, only when it is a regular file, at most
//! [`MAX_FLAG_BYTES`].

use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::snapshot::Drain;
use crate::wire::Status;

/// The name of the drain file in `state_dir`.
pub const DRAIN_FILE: &str = "drain";

/// Longest reason kept (the rest is cut): it is shown in `/status` and health-check bodies.
pub const MAX_REASON: usize = 200;

/// Most bytes of the flag ever read (a reason is at most [`MAX_REASON`] characters).
pub const MAX_FLAG_BYTES: u64 = 4096;

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
    let written = create_new(&tmp).and_then(|mut file| {
        // Readable by the daemon's user whoever writes it (root's umask may be 077); the
        // reason is no secret, it is shown in /status.
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.write_all(format!("{}\n", reason.trim()).as_bytes())
    });
    written
        .and_then(|()| std::fs::rename(&tmp, &path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Creates `path` as a new file, never through a symlink: whatever is at that name (a
/// leftover, or a symlink planted by whoever may write in `state_dir`) is unlinked first (an
/// unlink removes the link, not its target), then the file is created with `O_CREAT|O_EXCL`
/// and `O_NOFOLLOW`; if something reappears at the name in between, this fails instead.
fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
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
/// A flag that is not a regular file (a symlink, a FIFO, a directory) is such an error:
/// never followed, never waited on.
pub fn read(state_dir: &Path) -> std::io::Result<Option<Drain>> {
    let path = drain_path(state_dir);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(std::io::Error::other(format!(
                "{} is a symbolic link; not followed",
                path.display()
            )));
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let since = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    let mut text = Vec::new();
    file.take(MAX_FLAG_BYTES).read_to_end(&mut text)?;
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

    /// A scratch `state_dir` and, beside it, an `outside` directory with a victim file.
    fn scratch(name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let root =
            std::env::temp_dir().join(format!("primgr-control-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (state, outside) = (root.join("state"), root.join("outside"));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), "precious\n").unwrap();
        (root, state, outside)
    }

    /// Every entry of `dir` with its kind and contents.
    fn listing(dir: &Path) -> Vec<(String, bool, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e.file_type().unwrap().is_symlink();
                let bytes = if link {
                    Vec::new()
                } else {
                    std::fs::read(e.path()).unwrap_or_default()
                };
                (e.file_name().to_string_lossy().into_owned(), link, bytes)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn drain_never_writes_through_a_planted_symlink() {
        let (root, state, outside) = scratch("symlinks");
        let victim = outside.join("victim");
        let before = listing(&outside);
        let tmp = state.join(format!(".{DRAIN_FILE}.{}", std::process::id()));
        let mut checked = 0;
        // At the temporary name, at the flag itself, and at both; each to a file outside
        // state_dir and to a name outside that does not exist yet (which O_CREAT would make).
        for target in [victim.clone(), outside.join("new")] {
            for planted in [
                vec![tmp.clone()],
                vec![drain_path(&state)],
                vec![tmp.clone(), drain_path(&state)],
            ] {
                for link in &planted {
                    let _ = std::fs::remove_file(link);
                    std::os::unix::fs::symlink(&target, link).unwrap();
                }
                drain(&state, "kernel update").unwrap();
                assert_eq!(
                    listing(&outside),
                    before,
                    "outside state_dir changed ({planted:?} -> {target:?})"
                );
                let meta = std::fs::symlink_metadata(drain_path(&state)).unwrap();
                assert!(meta.file_type().is_file(), "the flag is a regular file now");
                assert_eq!(meta.permissions().mode() & 0o777, 0o644);
                assert_eq!(read(&state).unwrap().unwrap().reason, "kernel update");
                assert!(
                    !tmp.exists() && std::fs::symlink_metadata(&tmp).is_err(),
                    "no temporary file left"
                );
                checked += 1;
            }
        }
        println!("{checked} planted symlinks: nothing outside state_dir changed");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_flag_is_read_only_as_a_small_regular_file() {
        let (root, state, outside) = scratch("read");
        let flag = drain_path(&state);
        // A symlink, even to a readable file: not followed, an error (served as not drained).
        std::fs::write(outside.join("victim"), "not a reason\n").unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), &flag).unwrap();
        let e = read(&state).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // Undrain removes the link, not its target.
        assert!(undrain(&state).unwrap());
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "not a reason\n"
        );
        // A FIFO without a writer: refused at once, never waited on.
        let status = std::process::Command::new("mkfifo")
            .arg(&flag)
            .status()
            .unwrap();
        assert!(status.success());
        let t0 = std::time::Instant::now();
        assert!(
            read(&state)
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
        std::fs::remove_file(&flag).unwrap();
        std::fs::create_dir(&flag).unwrap();
        assert!(
            read(&state)
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
        std::fs::remove_dir(&flag).unwrap();
        // A huge flag: read up to MAX_FLAG_BYTES, the reason cut to MAX_REASON.
        std::fs::write(&flag, "y".repeat(8 << 20)).unwrap();
        let d = read(&state).unwrap().unwrap();
        assert_eq!(d.reason.chars().count(), MAX_REASON);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
