//! Reload: on SIGHUP, load the configuration again (the same file, the same flags over it),
//! validate it, diff it against the one in force and swap it in; then rebuild what a changed
//! group needs.
//!
//! Owns the rule of a reload. Every key takes effect at the next cycle, except those declared
//! `restart` (`node_name`, `listen`, `state_dir`, `source_address`, `agent_listen`, the TLS
//! files' paths), which keep
//! their running value and are logged as needing a restart. What a changed key rebuilds: the
//! log filter (`log_level`, unless `RUST_LOG` decides), the vote book's lease for later
//! promises (`vote_lease`), and, at the poller's next cycle, the pool when the database group
//! ([`DbSettings`]) differs from the one the pool was built with ([`follow_pool`]); the TLS
//! files in force are read again (a renewed certificate or CA applies to the next handshakes,
//! on the same listener; [`crate::tls`]). A bad file
//! is logged with its key and line (never its values) and changes nothing.

use std::sync::Arc;

use tokio::signal::unix::Signal;
use tracing::{error, info, warn};
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::{Change, Config, ConfigError, DbSettings, Source};
use crate::db::Db;
use crate::shared::Shared;
use crate::shutdown::Shutdown;

/// The handle that changes the log filter of the process.
pub type LogFilter = tracing_subscriber::reload::Handle<EnvFilter, Registry>;

/// What a daemon needs to reload itself.
pub struct Reloads {
    /// Where its configuration came from: the file, and the flags laid over it.
    pub source: Source,
    /// The SIGHUPs.
    pub hangups: Signal,
    /// The log filter that follows `log_level` (None when `RUST_LOG` decides).
    pub log_filter: Option<LogFilter>,
}

/// What a reload did, key by key (secrets masked).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Keys now in force.
    pub changed: Vec<Change>,
    /// Keys only a restart applies: their running value stays.
    pub ignored: Vec<Change>,
}

/// Diff and swap: puts `new` in force, but for the keys only a restart applies, and gives the
/// vote book the new `vote_lease` for its later promises (those made keep theirs).
pub fn apply(shared: &Shared, mut new: Config) -> Applied {
    let running = shared.config();
    let (ignored, changed): (Vec<Change>, Vec<Change>) =
        running.changes(&new).into_iter().partition(|c| c.restart);
    new.keep_restart_only(&running);
    if new.leases.vote_lease != running.leases.vote_lease {
        shared.votes.set_lease(new.leases.vote_lease);
    }
    // The key file was read by the validation; read again to put it in force (a file that
    // changed in between is refused and the keys in force stay).
    if let Err(e) = shared.auth.load(&new) {
        error!("reload: {e}; the peer keys in force stay");
    }
    // The TLS files in force (their paths only a restart changes) are read again: a renewed
    // certificate applies to the next handshakes on the same listener. The validation read
    // them; one that changed in between is refused and what is in force stays.
    for e in shared.tls.reload() {
        error!("reload: {e}; the TLS file in force stays");
    }
    shared.put(new);
    Applied { changed, ignored }
}

/// Loads the configuration again from `source` and applies it ([`apply`]); the log filter
/// follows a new `log_level`. A configuration that does not load changes nothing.
pub fn reload(
    source: &Source,
    shared: &Shared,
    log_filter: Option<&LogFilter>,
) -> Result<Applied, ConfigError> {
    let applied = apply(shared, source.load()?);
    if let Some(handle) = log_filter
        && applied.changed.iter().any(|c| c.key == "log_level")
    {
        let level = shared.config().node.log_level.clone();
        match handle.reload(EnvFilter::new(&level)) {
            Ok(()) => info!("log_level is now {level:?}"),
            Err(e) => warn!("cannot change the log filter: {e}"),
        }
    }
    Ok(applied)
}

/// Reloads at each SIGHUP until the daemon stops, and logs what each reload did.
pub async fn watch(mut reloads: Reloads, shared: Arc<Shared>, mut stop: Shutdown) {
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            hangup = reloads.hangups.recv() => if hangup.is_none() { return },
        }
        info!("SIGHUP received; reading the configuration again");
        match reload(&reloads.source, &shared, reloads.log_filter.as_ref()) {
            Err(e) => error!("reload refused, the running configuration stays: {e}"),
            Ok(applied) => {
                for change in &applied.ignored {
                    warn!("reload: `{change}` needs a restart; ignored until then");
                }
                let changed: Vec<String> = applied.changed.iter().map(|c| c.to_string()).collect();
                info!(
                    fingerprint = %shared.loaded().fingerprint,
                    "configuration reloaded ({}); it applies from the next cycle",
                    if changed.is_empty() { "no change".to_string() } else { changed.join("; ") }
                );
            }
        }
    }
}

/// Rebuilds the pool when the database group in force differs from the one it was built
/// with (a new conninfo, pool size or `db_timeout`): new connections from then on. Called by
/// the poller at the start of each cycle.
pub fn follow_pool(db: &mut Db, wanted: &DbSettings) {
    if db.settings() == wanted {
        return;
    }
    match Db::open(wanted) {
        Ok(new) => {
            info!("reload: the database settings changed; new connections from now on");
            *db = new;
        }
        // Validated when loaded, so this does not happen; keep the old pool if it does.
        Err(e) => warn!("reload: cannot use the new database settings ({e}); keeping the old ones"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("primgr-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// A reload reads the same file with the same flags over it; what a restart applies stays
    /// and is reported; a new `vote_lease` reaches the book; a new `vote_scope` is in force (the
    /// next cycle and the next vote read it there); a bad file changes nothing.
    #[test]
    fn a_reload_loads_again_diffs_and_swaps() {
        let path = file(
            "a.toml",
            "node_name = \"n1\"\nlisten = \"127.0.0.1:5999\"\ninterval = \"1s\"\n",
        );
        let mut flags = crate::config::Settings::default();
        flags.set_flag("peer_timeout", "400ms".into());
        let source = Source {
            file: Some(path.clone()),
            flags,
        };
        let shared = Shared::new(source.load().expect("loads"));
        let before = shared.loaded();

        std::fs::write(
            &path,
            "node_name = \"n1\"\nlisten = \"127.0.0.1:6000\"\ninterval = \"700ms\"\n\
             vote_lease = \"4s\"\npeer_timeout = \"900ms\"\nvote_scope = \"cluster\"\n",
        )
        .expect("write");
        let applied = reload(&source, &shared, None).expect("reloads");
        let shown = |c: &[Change]| c.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shown(&applied.ignored),
            ["listen: 127.0.0.1:5999 → 127.0.0.1:6000"]
        );
        assert_eq!(
            shown(&applied.changed),
            [
                "interval: 1s → 700ms",
                "max_staleness: 4s 800ms → 4s 200ms",
                "vote_lease: 3s → 4s",
                "vote_scope: site → cluster"
            ],
            "the flag still wins over the file's peer_timeout"
        );
        let now = shared.config();
        assert_eq!(now.timing.interval, Duration::from_millis(700));
        assert_eq!(now.timing.peer_timeout, Duration::from_millis(400));
        assert_eq!(now.leases.scope, crate::wire::VoteScope::Cluster);
        assert_eq!(now.node.listen, before.config.node.listen);
        assert_ne!(shared.loaded().fingerprint, before.fingerprint);
        let promise = shared
            .votes
            .book()
            .answer(Ok("n1"), shared.started + Duration::from_secs(10));
        assert_eq!(promise.ok().map(|g| g.lease), Some(Duration::from_secs(4)));

        let in_force = shared.loaded();
        std::fs::write(&path, "node_name = \"n1\"\ninterval = \"2 parsecs\"\n").expect("write");
        let e = reload(&source, &shared, None)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("`interval`") && e.contains("line 2"), "{e}");
        assert!(Arc::ptr_eq(&in_force, &shared.loaded()), "nothing changed");
    }

    /// The pool is rebuilt when, and only when, the database group differs.
    #[tokio::test]
    async fn the_pool_follows_the_database_group() {
        let config = Config::for_node("n").expect("defaults");
        let mut db = Db::open(&config.db).expect("pool");
        let mut same = config.db.clone();
        follow_pool(&mut db, &same);
        assert_eq!(db.settings(), &config.db);
        same.max_connections_in_pool = 5;
        follow_pool(&mut db, &same);
        assert_eq!(db.settings().max_connections_in_pool, 5);
        same.conninfo = "host=/tmp dbname=other".into();
        follow_pool(&mut db, &same);
        assert_eq!(db.settings(), &same);
    }
}
