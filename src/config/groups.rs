//! Every key of the configuration, declared once, by group: its field and doc comment, its
//! kind, its default, and `restart` when only a restart applies it.
//!
//! Adding a key is one declaration here (with its validation in `validate.rs` when it has
//! rules), a line in `etc/primgr.toml` and a row in the README; the TOML key, the flag, its
//! `--help`, `--check-config` and the reload's diff follow from the declaration.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::declare::{
    Addr, Conninfo, Count, Dir, IpList, LogFilter, MaybeAddr, MaybeClusterId, MaybeCommand,
    MaybeFile, MaybeIp, Name, Period, PeriodOrZero, Port, Ratio, Scope, Size, group,
};
use crate::auth::ClusterId;
use crate::vote::LeaseRules;

group! {
    /// The daemon itself: its name, where it listens, its state, its log.
    pub struct Node, flags NodeFlags {
        /// Name of the local node in repmgr.nodes (must equal its `node_name`).
        node_name: String as Name = computed "the host name", restart;
        /// Address the HTTP API listens on.
        listen: SocketAddr as Addr = "0.0.0.0:5999", restart;
        /// Directory of the daemon's state (the drain flag).
        state_dir: PathBuf as Dir = "/var/lib/primgr", restart;
        /// Log filter (`tracing` env-filter syntax: `info`, `primgr=debug`, ...).
        log_level: String as LogFilter = "info";
    }
}

group! {
    /// The local database: what a change rebuilds the pool from.
    pub struct DbSettings, flags DbFlags {
        /// conninfo (key=value or URI) of the local database.
        conninfo: String as Conninfo
            = "host=/var/run/postgresql dbname=repmgr user=repmgr application_name=primgr";
        /// Largest number of connections the pool keeps to the local database.
        max_connections_in_pool: u32 as Count = "3";
        /// Bound on one observation of the local database (pool checkout, connect and query).
        db_timeout: Duration as Period = "1s";
    }
}

group! {
    /// The poll cycle's clock: its period, the bound on a fan-out, the age of what is served.
    pub struct Timing, flags TimingFlags {
        /// Poll period.
        interval: Duration as Period = "1s";
        /// Bound on one whole fan-out to the peers (votes, releases, /realPrimary).
        peer_timeout: Duration as Period = "500ms";
        /// Oldest snapshot that may be served; older ones are served as Down (stale).
        max_staleness: Duration as Period = computed "2 x (interval + db_timeout + peer_timeout)";
    }
}

group! {
    /// Vote leases: the rules shared by voters and candidates, [`LeaseRules`].
    keys of LeaseRules, flags LeaseFlags {
        /// Length of a vote's promise, on the voter's clock.
        vote_lease => vote_lease: Period = "3s";
        /// Whose majority a primary needs: "site" (its own site's, the repmgr `location`) or
        /// "cluster" (every node of every site: one primary for the whole cluster).
        ///
        /// Every node must use the same scope: a voter refuses a candidate of the other
        /// scope. The electorate is every row of `repmgr.nodes`, witnesses and inactive nodes
        /// included (in site scope, those of the candidate's site). A reload (SIGHUP) applies
        /// it from the next cycle and the next vote answered.
        vote_scope => scope: Scope = "site";
        /// Wait after another node's last possible 200 before answering 200 ("0s": none).
        handoff_delay => handoff_delay: PeriodOrZero = "2500ms";
        /// Bound on monotonic clock rate differences, ρ (0.01 = 1 %).
        clock_drift => drift: Ratio = "0.01";
    }
}

group! {
    /// How this node reaches its peers' APIs (besides the `[peers]` table).
    pub struct PeerSettings, flags PeerFlags {
        /// Port of the peers' APIs when their address is derived from their repmgr conninfo.
        peer_port: u16 as Port = "5999";
        /// Local address the peer client binds its sockets to.
        source_address: Option<IpAddr> as MaybeIp = "", restart;
        /// File of the cluster's peer keys, one `hmac-sha256:` line each (`primgr keygen`);
        /// the first signs, every one verifies (not set: peers are trusted by address only).
        ///
        /// Must be a regular file that only its owner may read (chmod 600). Read at start and
        /// at each reload (SIGHUP): rotate by adding the new key second on every node, then
        /// first, then dropping the old one.
        peer_key_file: Option<PathBuf> as MaybeFile = "";
        /// The cluster's identity for a repmgr witness: the primary's system identifier
        /// (not set: a witness learns it from the primary its metadata names).
        ///
        /// On a data node it must equal its database's own system identifier.
        cluster_id: Option<ClusterId> as MaybeClusterId = "";
        /// More addresses whose peer requests are answered without a key file, besides the
        /// members' (comma-separated IP addresses; not set: none).
        peer_allow: Vec<IpAddr> as IpList = "";
    }
}

group! {
    /// The read checks' parameters.
    pub struct Reads, flags ReadsFlags {
        /// Lag bound of /readiness for a standby (bytes, or kB, MB, GB, TB).
        readiness_lag: u64 as Size = "16MB";
    }
}

group! {
    /// The haproxy agent-check port.
    pub struct AgentSettings, flags AgentFlags {
        /// Address of the haproxy agent-check port (not set: no agent port).
        agent_listen: Option<SocketAddr> as MaybeAddr = "", restart;
        /// The agent gives a standby its full weight up to this lag.
        agent_lag_soft: u64 as Size = "1MB";
        /// The agent's weight falls to 10 % at this lag; beyond it the standby is `down`.
        agent_lag_hard: u64 as Size = "16MB";
    }
}

group! {
    /// Events out: the command run on every change of this node's state or drain
    /// ([`crate::hooks`]).
    pub struct HookSettings, flags HookFlags {
        /// Command run on every change of this node's state or drain, with the facts in
        /// PRIMGR_* environment variables (not set: none).
        ///
        /// An absolute path to an executable regular file, run without arguments, one run at a
        /// time, never in the poll cycle's way; changes during a run are coalesced (the newest
        /// wins). A reload applies it from the next cycle.
        on_change: Option<PathBuf> as MaybeCommand = "";
        /// Bound on one run of `on_change`; past it, its whole process group is killed.
        on_change_timeout: Duration as Period = "30s";
    }
}

group! {
    /// The HTTP API's connections: what one client may hold, how long an idle one stays
    /// ([`crate::server`]).
    pub struct HttpSettings, flags HttpFlags {
        /// Most connections one client address may hold open at once; past it its new
        /// connections are closed at once. haproxy (one check connection per server and check)
        /// and the members (a few pooled connections each) stay far below it; it keeps one
        /// address from taking the slots of every other. Between 1 and 3968 (the server's cap
        /// of 4096 less the 128 slots kept for the members).
        max_connections_per_client: u32 as Count = "256";
        /// A connection that sends no complete request head within this time of its start or
        /// of its last request (a keep-alive connection idle between requests included) is
        /// closed.
        idle_timeout: Duration as Period = "10s";
    }
}

group! {
    /// TLS: HTTPS on `listen`, and https to the peers ([`crate::tls`]).
    pub struct TlsSettings, flags TlsFlags {
        /// PEM certificate chain (the node's first) served on `listen` over HTTPS, with
        /// `tls_key_file` (not set: plain HTTP).
        ///
        /// Its subject alternative names must hold the addresses that haproxy and the peers
        /// ask (IP SANs for IP addresses). Re-read at each reload (SIGHUP): a renewed
        /// certificate applies to the next handshakes, on the same listener.
        tls_cert_file: Option<PathBuf> as MaybeFile = "", restart;
        /// PEM private key of `tls_cert_file` (both or neither; not set: plain HTTP).
        ///
        /// Must be a regular file that only its owner may read (chmod 600).
        tls_key_file: Option<PathBuf> as MaybeFile = "", restart;
        /// PEM CA certificates that the peers' certificates must chain to; set, the peer
        /// requests use https (not set: plain HTTP to the peers).
        ///
        /// Re-read at each reload (SIGHUP).
        tls_ca_file: Option<PathBuf> as MaybeFile = "", restart;
    }
}
