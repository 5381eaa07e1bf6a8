//! What the tasks of one daemon share: the configuration in force (swapped by a reload, see
//! [`crate::reload`]), the published snapshot, the vote book and holder, and the peer client.
//! Nothing here is global: each daemon has its own.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::peers::PeerClient;
use crate::snapshot::SnapshotStore;
use crate::vote::Votes;

/// What the tasks of one daemon share.
#[derive(Debug)]
pub struct Shared {
    loaded: ArcSwap<Loaded>,
    pub store: SnapshotStore,
    pub votes: Votes,
    pub client: PeerClient,
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
