//! What the tasks of one daemon share: the configuration in force (swapped by a reload, see
//! [`crate::reload`]), the published snapshot, the vote book and holder behind their locks
//! ([`Votes`]), and the peer client.
//!
//! Owns the locks of the protocol's state: what `/vote` and
//! `/release` may change, and the holder's lock the poller publishes under. Nothing here is
//! global: each daemon has its own.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::cycle;
use crate::peers::PeerClient;
use crate::snapshot::SnapshotStore;
use crate::vote::{Book, Holder, Release};

/// What the tasks of one daemon share.
#[derive(Debug)]
pub struct Shared {
    loaded: ArcSwap<Loaded>,
    pub store: SnapshotStore,
    pub votes: Votes,
    /// The request handlers' peer client (`/realPrimary`).
    pub client: PeerClient,
    /// The poller's own peer client (votes, releases, `/wal`): its connections live on the
    /// poller's runtime ([`crate::daemon`]), never on the one that serves other clients.
    pub poll_client: PeerClient,
    /// When the daemon started.
    pub started: Instant,
}

/// The configuration in force, and when it was loaded.
#[derive(Debug)]
pub struct Loaded {
    pub config: Arc<Config>,
    /// Wall clock, for humans.
    pub at: SystemTime,
    /// [`Config::fingerprint`].
    pub fingerprint: String,
}

impl Loaded {
    fn new(config: Config) -> Loaded {
        Loaded {
            fingerprint: config.fingerprint(),
            config: Arc::new(config),
            at: SystemTime::now(),
        }
    }
}

impl Shared {
    /// The state of a daemon starting now with `config`.
    pub fn new(config: Config) -> Shared {
        let started = Instant::now();
        Shared {
            client: PeerClient::new(config.peer.source_address),
            poll_client: PeerClient::new(config.peer.source_address),
            votes: Votes::new(config.leases.vote_lease, started),
            loaded: ArcSwap::from_pointee(Loaded::new(config)),
            store: SnapshotStore::default(),
            started,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.loaded.load().config)
    }

    /// The configuration in force, when it was loaded and its fingerprint.
    pub fn loaded(&self) -> Arc<Loaded> {
        self.loaded.load_full()
    }

    /// Puts `config` in force, loaded now (a reload: [`crate::reload::apply`]).
    pub fn put(&self, config: Config) {
        self.loaded.store(Arc::new(Loaded::new(config)));
    }
}

/// A daemon's two halves of the protocol, shared by its poller and its request handlers: the
/// promise book behind `/vote` and the holder behind `/release` (and the poller's publication,
/// which happens under the holder's lock so that no vote a release voided is published). The
/// decisions are [`crate::cycle`]'s and [`crate::vote`]'s; this is only where they are kept.
///
/// Lock order: the holder, then the book (the poller's conclusion takes its own vote under the
/// holder's lock); never the book, then the holder.
#[derive(Debug)]
pub struct Votes {
    book: Mutex<Book>,
    holder: Mutex<Holder>,
}

impl Votes {
    /// The votes of a daemon that started at `started`.
    pub fn new(vote_lease: std::time::Duration, started: Instant) -> Votes {
        Votes {
            book: Mutex::new(Book::new(vote_lease, started)),
            holder: Mutex::new(Holder::new(started)),
        }
    }

    /// The promise book (a poisoned lock is taken as it is: the book stays consistent after
    /// every statement).
    pub fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The holder; keep the guard while publishing a snapshot.
    pub fn holder(&self) -> MutexGuard<'_, Holder> {
        self.holder.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A release of this node's holder ([`cycle::release`]), for `POST /release` and for the
    /// poller when it is its own holder; with the instant it was decided at. The holder's lock
    /// first: the poller publishes under it, so the snapshot read here is the newest and no
    /// vote requested before now can be published after.
    pub fn release(&self, store: &SnapshotStore) -> (Release, Instant) {
        let mut holder = self.holder();
        let now = Instant::now();
        let answer = cycle::release(&mut holder, &store.peek(), now);
        (answer, now)
    }
}
