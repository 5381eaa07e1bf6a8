//! What the tasks of one daemon share: the configuration in force (swapped by a reload, see
//! [`crate::reload`]), the published snapshot, the vote book and holder behind their locks
//! ([`Votes`]), and the peer client.
//!
//! Owns the locks of the protocol's state: what `/vote` and
//! `/release` may change, and the holder's lock the poller publishes under; and the peer
//! authentication in force ([`PeerAuth`]: the keys of `peer_key_file`, the replay guard, the
//! tickets peers gave, the cluster identity, the members' addresses, the counters), and the
//! TLS files in force ([`crate::tls::Tls`]: the listener's certificate, the peers' CA). Nothing
//! here is global: each daemon has its own.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tracing::{info, warn};

use crate::auth::{BootId, ClusterId, GrantEpoch, KeyFileError, Keys, ReplayGuard};

use crate::config::Config;
use crate::cycle;
use crate::peers::{Answers, PeerClient, Signer};
use crate::snapshot::SnapshotStore;
use crate::tls::Tls;
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
    /// Peer authentication: keys, replay guard, tickets, identity, addresses, counters.
    pub auth: PeerAuth,
    /// The listener's certificate and the peers' CA in force (a reload re-reads them).
    pub tls: Tls,
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
    /// The state of a daemon starting now with `config`, without TLS.
    pub fn new(config: Config) -> Shared {
        Shared::with_tls(config, Tls::default())
    }

    /// The state of a daemon starting now with `config` and its TLS files loaded (the peer
    /// client speaks https when `tls` has a CA).
    pub fn with_tls(config: Config, tls: Tls) -> Shared {
        let started = Instant::now();
        Shared {
            client: PeerClient::with_tls(config.peer.source_address, tls.client.as_ref()),
            poll_client: PeerClient::with_tls(config.peer.source_address, tls.client.as_ref()),
            tls,
            votes: Votes::new(config.leases.vote_lease, started),
            auth: PeerAuth::new(config.leases.vote_lease, started),
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
    /// The votes of a daemon that started at `started`. Its grants' boot id comes from the
    /// OS's random source; were it to fail, from the wall clock and the process id (a boot id
    /// shared with another process of this node would only void more of its grants after a
    /// release: never fewer).
    pub fn new(vote_lease: std::time::Duration, started: Instant) -> Votes {
        let boot = BootId::random().unwrap_or_else(|_| {
            let mut bytes = [0u8; 16];
            let wall = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            bytes[..8].copy_from_slice(&wall.to_be_bytes());
            bytes[8..12].copy_from_slice(&std::process::id().to_be_bytes());
            BootId::from_bytes(bytes)
        });
        Votes {
            book: Mutex::new(Book::new(vote_lease, started, boot)),
            holder: Mutex::new(Holder::new(started, vote_lease)),
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
    pub fn release(
        &self,
        store: &SnapshotStore,
        voter: &str,
        undoes: GrantEpoch,
    ) -> (Release, Instant) {
        let mut holder = self.holder();
        let now = Instant::now();
        let answer = cycle::release(&mut holder, &store.peek(), voter, undoes, now);
        (answer, now)
    }

    /// A reload's new `vote_lease`: the book's later promises, and how long the holder
    /// remembers releases (never shorter than before).
    pub fn set_lease(&self, vote_lease: std::time::Duration) {
        self.holder().set_lease(vote_lease);
        self.book().set_lease(vote_lease);
    }
}

/// The peer authentication of one daemon (see [`crate::auth`] for the rules): the keys in
/// force (none: address mode), the recipient's replay guard, the tickets peers gave this
/// node, its cluster identity, the members' addresses (address mode), and what was refused.
#[derive(Debug)]
pub struct PeerAuth {
    keys: ArcSwapOption<Keys>,
    /// None when the OS's random source failed at start: no state-changing request is
    /// admitted (safe: no vote, no release).
    guard: Mutex<Option<ReplayGuard>>,
    /// The tickets peers gave and the answers that failed authentication.
    pub answers: Answers,
    cluster: Mutex<Option<ClusterId>>,
    /// The members' addresses, resolved by the poller each cycle, with the members at each.
    members: ArcSwap<HashMap<IpAddr, BTreeSet<String>>>,
    /// Peer requests refused (401, 403).
    refused: AtomicU64,
}

impl PeerAuth {
    fn new(vote_lease: std::time::Duration, started: Instant) -> PeerAuth {
        PeerAuth {
            keys: ArcSwapOption::empty(),
            guard: Mutex::new(ReplayGuard::new(started, vote_lease).ok()),
            answers: Answers::default(),
            cluster: Mutex::new(None),
            members: ArcSwap::default(),
            refused: AtomicU64::new(0),
        }
    }

    /// Loads `peer_key_file` of `config` (none: address mode) and puts it in force; the
    /// ticket lifetime follows `vote_lease`. A refused file changes nothing.
    pub fn load(&self, config: &Config) -> Result<(), KeyFileError> {
        let keys = match &config.peer.peer_key_file {
            Some(path) => Some(Arc::new(Keys::load(path)?)),
            None => None,
        };
        match (&keys, self.keys.load().as_ref()) {
            (Some(new), Some(old)) if new.ids() != old.ids() => info!("peer keys: now {new}"),
            (Some(new), None) => info!("peer keys: {new}"),
            (None, _) => warn!(
                "no peer_key_file: /vote and /release are answered only from the members' \
                 addresses and peer_allow, and peers' answers are trusted by address (set \
                 peer_key_file: see `primgr keygen`)"
            ),
            _ => {}
        }
        self.keys.store(keys);
        if let Some(guard) = self.guard().as_mut() {
            guard.set_lifetime(config.leases.vote_lease);
        }
        Ok(())
    }

    /// The keys in force, if any.
    pub fn keys(&self) -> Option<Arc<Keys>> {
        self.keys.load_full()
    }

    /// The signer of this node's peer requests under `keys` (a daemon's: answers must come
    /// from the peer asked, to `me`, of this node's cluster).
    pub fn signer<'a>(&'a self, keys: &'a Keys, me: &'a str) -> Signer<'a> {
        Signer {
            keys,
            me,
            cluster: self.cluster(),
            addressed: true,
            answers: &self.answers,
        }
    }

    /// `"key"` or `"addresses"`.
    pub fn mode(&self) -> &'static str {
        if self.keys.load().is_some() {
            "key"
        } else {
            "addresses"
        }
    }

    /// The replay guard.
    pub fn guard(&self) -> MutexGuard<'_, Option<ReplayGuard>> {
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's cluster identity, when it has one.
    pub fn cluster(&self) -> Option<ClusterId> {
        *self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the identity ([`crate::auth::cluster_identity`], by the poller).
    pub fn set_cluster(&self, id: Option<ClusterId>) {
        *self.cluster.lock().unwrap_or_else(|p| p.into_inner()) = id;
    }

    /// Whether `ip` is a member's address (address mode).
    pub fn is_member(&self, ip: IpAddr) -> bool {
        self.members.load().contains_key(&ip)
    }

    /// The member whose address `ip` is (address mode: a release's sender), or why none can be
    /// told: no member has it (a `peer_allow` address), or several have it.
    pub fn member_at(&self, ip: IpAddr) -> Result<String, String> {
        let members = self.members.load();
        let names = members.get(&ip).map(|n| n.iter().collect::<Vec<_>>());
        match names.as_deref() {
            Some([one]) => Ok((*one).clone()),
            Some(several) if !several.is_empty() => Err(format!(
                "{ip} is the address of {} members ({}): without peer_key_file a release must \
                 come from the one address of one member, to void only what that member granted",
                several.len(),
                several
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Err(format!(
                "{ip} is no member's own address (peer_allow): without peer_key_file a release \
                 must come from its member's address, to void only what that member granted"
            )),
        }
    }

    /// The members' addresses with the members at each (by the poller, each cycle).
    pub fn set_members(&self, members: HashMap<IpAddr, BTreeSet<String>>) {
        if **self.members.load() != members {
            self.members.store(Arc::new(members));
        }
    }

    /// Counts a refused peer request.
    pub fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Peer requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}
