//! primgr: tells haproxy and operators which node of a repmgr cluster is the real primary.
//!
//! One daemon runs beside each PostgreSQL node. A poll task observes the local database every
//! `interval`, asks the other nodes of its site (of the whole cluster with
//! `vote_scope = "cluster"`) for their votes (leased promises), decides a
//! verdict and publishes it as a snapshot; the HTTP handlers only read that snapshot, so a
//! health check never reaches the database.
//!
//! Layout, one concern per module (imports flow downwards in this list's reverse: a module
//! uses only modules listed below it):
//! - [`cli`]: the command line, flags and subcommands, and their conversion into settings;
//! - [`daemon`]: the entry point that runs one daemon's tasks ([`run`]);
//! - [`poller`]: drives the cycle with real I/O (database, peers, clock) and logs transitions;
//! - [`reload`]: SIGHUP: load again, validate, diff, swap; rebuilds what a changed group needs;
//! - [`api`]: the routing table and what each endpoint answers, from the snapshot;
//! - [`agent`]: the haproxy agent-check port, one line per connection, from the snapshot;
//! - [`metrics`]: `/metrics` in the Prometheus text format, and the request counters;
//! - [`server`]: connections, limits, protocol-level refusals and draining;
//! - [`check`]: `primgr check`, a monitoring plugin: one status line and exit status from the
//!   local daemon's answers;
//! - [`cluster`]: the `primgr cluster` operator view over every node's `/status`;
//! - [`control`]: the drain flag (`primgr drain` / `undrain`), local to the node;
//! - [`shared`]: what one daemon's tasks share (configuration in force, snapshot, votes behind locks);
//! - [`cycle`]: the poll cycle as pure steps (plan, conclude, publish), the `/vote` and `/release`
//!   decisions, a standby's lag; driven by the poller and by the simulation;
//! - [`reads`]: the read rules (`/replica`, `/read-only`, `/readiness`, ...) and their parameters;
//! - [`snapshot`]: what one cycle publishes, and the staleness and window rules of serving it;
//! - [`hooks`]: `on_change`: one runner, coalescing, timeout, never in the poll cycle's way;
//! - [`peers`]: peer addresses, the HTTP client, reading peers' answers, the bounded fan-out;
//! - [`decide`]: the verdict, a pure function of observations and held votes;
//! - [`db`]: the pool and the single query that observes the local database;
//! - [`config`]: settings by group, each key declared once; the file and flags, validation;
//! - [`vote`]: vote leases: the voter's promise book, the candidate's ballot, releases; pure;
//! - [`tls`]: the certificate, key and CA files read into rustls' server and client
//!   configurations, each behind a swap that a reload renews; no sockets;
//! - [`wire`]: the serde types of every body between processes, for writers and readers alike;
//! - [`auth`]: peer keys, the MACs over requests and answers, replay tickets, the grant
//!   epochs a release undoes, the cluster identity; pure;
//! - [`conninfo`]: the host of a conninfo, and the conninfo with its password masked;
//! - [`units`]: sizes (`16MB`) and durations (`500ms`) as operators write them;
//! - [`shutdown`]: signals and the stop token; [`notify`]: systemd readiness (sd_notify).
//!
//! [`run`] starts a whole daemon on an already bound listener and stops it when a future
//! completes, so tests can run several daemons in one process (they share nothing).

pub mod agent;
pub mod api;
pub mod auth;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conninfo;
pub mod control;
pub mod cycle;
pub mod daemon;
pub mod db;
pub mod decide;
pub mod hooks;
pub mod metrics;
pub mod notify;
pub mod peers;
pub mod poller;
pub mod reads;
pub mod reload;
pub mod server;
pub mod shared;
pub mod shutdown;
pub mod snapshot;
pub mod tls;
pub mod units;
pub mod vote;
pub mod wire;

pub use config::Config;
pub use daemon::{Options, RunError, run, run_with};
pub use decide::State;
