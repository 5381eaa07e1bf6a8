//! # primgr-lab: a real repmgr cluster on loopback addresses, for tests and demos
//!
//! [`Lab::build`] creates a PostgreSQL 15 + repmgr 5.3 cluster on this machine: node *N* of the
//! spec listens on `127.0.X.(10+N):5432` (X = the lab's *subnet*), has its own data directory,
//! unix socket directory, log file and `repmgr.conf` under the lab directory
//! (`/tmp/primgr-lab-<subnet>` by default), and is registered in `repmgr.nodes` with the
//! `location` of its [`NodeSpec`]. The first node is the primary, the others are cloned from it
//! (`repmgr standby clone --fast-checkpoint`) and stream from it. A 4-node build takes 5–15 s.
//!
//! A spec may add a repmgr witness ([`LabSpec::with_witness`]: its own `initdb`, the next
//! address, registered with `repmgr witness register`) and build every node for repmgrd
//! ([`LabSpec::with_repmgrd`]).
//!
//! The [`Lab`] then offers the operations a failover test needs: node operations
//! ([`Lab::stop`], [`Lab::start`], [`Lab::promote`], [`Lab::follow`], [`Lab::failover`],
//! [`Lab::rejoin`] with pg_rewind, [`Lab::promote_outside_repmgr`], [`Lab::switchover`],
//! [`Lab::register_witness`] against a new primary), SQL
//! ([`Lab::psql`] and the readers built on it: recovery, streaming, [`Lab::upstream_of`], the
//! metadata's primary, WAL positions, [`Lab::pause_replay`], [`Lab::write_wal`]), faults
//! ([`Lab::freeze`] = SIGSTOP of the postmaster and its children, [`Lab::freeze_postmaster`],
//! [`Lab::thaw`], iptables [`Lab::cut`] / [`Lab::heal`] between node addresses, the partial
//! partition [`Lab::cut_replication_to`]), a node's primgr daemon ([`Lab::daemon`]) and repmgrd
//! ([`Lab::start_repmgrd`]). Every primgr daemon of the tests, the demo and the benchmark is
//! launched one way, through a [`DaemonBuilder`], in this process or as a child process, and
//! held through one handle, [`Daemon`]; every test takes its subnet from one table,
//! [`SUBNETS`] ([`subnet_of`]). Beside the lab, the crate holds the one copy of
//! what the tests and the benchmark share: the raw HTTP exchange ([`http`]), bounded waits
//! ([`wait`]), `/proc` readers ([`procfs`]), quantiles ([`stats`]), text tables ([`table`]) and
//! a delaying TCP proxy that puts distance between sites ([`delay`]);
//! [`haproxy`] runs the shipped `contrib/haproxy.cfg`, rendered for the lab's addresses, in
//! front of a lab, and [`dashboard`] is what the demo binary shows.
//!
//! ## Layout: one file per concern
//! ```text
//! lib.rs             this header, the module list, the re-exports
//! spec.rs            addresses and the spec: subnet shift, addresses, names, NodeSpec, LabSpec
//! lab.rs             the Lab value: fields, node name -> address and paths, accessors
//! build.rs           building: initdb, conf files, register, clone, witness, wait until complete
//! node.rs            node operations: pg_ctl, promote, follow, failover, rejoin, switchover
//! sql.rs             psql (socket as postgres, TCP as root), what is read and done through it
//! faults.rs          faults: freeze/thaw, cuts and rules, partial partitions (owner rules)
//! firewall.rs        iptables primitives: the lab's chains, their jumps, their rules
//! subnets.rs         the one table of test subnets, by test name
//! daemons.rs         primgr daemons, in process or child processes: builder, handle, signals
//! repmgrd.rs         repmgrd processes for automatic failover: start, monitoring, stop
//! teardown.rs        teardown, Drop, leftover cleanup
//! cmd.rs             external commands with a timeout, as root or postgres; ensure_root
//! procfs.rs          /proc: the lab's processes; RSS, CPU time, fds, load, overflows
//! wait.rs            bounded waits on a condition or a listening address; join_all
//! http.rs            the raw HTTP/1.1 exchange, client and fake-server side
//! stats.rs           quantiles and median of numbers and durations; figures
//! delay.rs           a delaying TCP proxy: distance between sites (no netem on this kernel)
//! table.rs           text tables with aligned columns
//! dashboard.rs       what the demo shows (nodes, daemons, haproxy, how to reach things)
//! haproxy/mod.rs     haproxy in front of a lab: the process and its stats socket
//! haproxy/config.rs  the shipped haproxy.cfg rendered for a lab; haproxy -c
//! haproxy/stat.rs    haproxy's `show stat` CSV parsed into ServerStat rows
//! main.rs            the demo binary `primgr-lab up|down`
//! ```
//! The benchmark (`primgr-bench` and its `baseline` server) is a crate of its own, `bench/`,
//! built on this one.
//!
//! ## Requirements
//! Must run as **root** (PostgreSQL, psql and repmgr run as the `postgres` OS user through
//! `runuser -u postgres`; iptables needs root). [`Lab::build`] fails with a clear error otherwise.
//!
//! ## Cleanup
//! [`Lab::teardown`] stops everything (primgr daemons, repmgrd, postmasters) and removes the lab
//! directory, the lab's iptables chains (`PRIMGR_LAB_<subnet>`, hooked into `INPUT` and
//! `OUTPUT`, and `PRIMGR_LAB_<subnet>_REPL`, hooked into `OUTPUT`; no other rule is touched) and
//! the `/tmp/node-rejoin.*.log` files the lab caused. If a `Lab` is dropped without `teardown` (for
//! example because a test panicked), `Drop` does the same synchronously. Leftovers of a crashed
//! process on the same subnet (postmasters, daemons and repmgrd found through the pid files in
//! the lab directory, the old directory, the old chains) are removed at the start of
//! [`Lab::build`] and by [`destroy_leftovers`] (`primgr-lab down`). Set `PRIMGR_LAB_KEEP=1` to keep a dropped lab
//! running for debugging, `PRIMGR_LAB_VERBOSE=1` to print build steps with timings to stderr.
//!
//! Several labs can run at once in one process on different subnets: nothing is shared but the
//! machine.
//!
//! ## Subnets
//! Every test that uses lab addresses takes its subnet from [`SUBNETS`] by its name
//! (`LabSpec::standard(subnet_of("cluster::stopped_standby_and_frozen_primary"))`), so no two
//! tests share one: the lab's unit tests check the table, and `tests/subnets.rs` checks that
//! the test sources take their subnets from it and from nowhere else.
//!
//! ## Subnet shift
//! `PRIMGR_LAB_SUBNET_SHIFT=N` (default 0) moves every lab to another subnet, so that two
//! checkouts can run the lab tests on one machine at the same time: the subnet *s* a spec asks
//! for becomes `((s - 1 + N) % 254) + 1` (it stays in 1..=254). It is applied in one place,
//! [`lab_subnet`], when a spec is resolved ([`Lab::build`], [`LabSpec::lab_dir`],
//! [`destroy_leftovers`]); [`Lab::subnet`] returns the shifted value and every address, the
//! default directory `/tmp/primgr-lab-<subnet>`, the iptables chain and haproxy's proxy address
//! derive from it. Tests that need an address of their subnet without a lab call
//! [`lab_subnet`] too.
//!
//! ## Layout of a node (`<dir>/<node>/`)
//! `data/` (its `postgresql.conf` ends with `include 'node.conf'`; `node.conf` holds
//! `listen_addresses`, `port`, `unix_socket_directories`, `cluster_name`), `repmgr.conf`,
//! `postgres.log` (outside the data directory, so clones and rewinds do not copy it), `sock/`,
//! `config-archive/`, `repmgrd.log`. Daemons log to `<dir>/daemon-<node>.log`, pid in
//! `<dir>/daemon-<node>.pid`; repmgrd's pid is in `<dir>/repmgrd-<node>.pid`; the fake `ssh` of
//! switchovers is `<dir>/bin/ssh`.
//!
//! ## Example
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use primgr_lab::{Lab, LabSpec, StopMode};
//! let lab = Lab::build(LabSpec::standard(200)).await?;
//! lab.stop("node1", StopMode::Immediate).await?;
//! lab.promote("node2").await?;
//! lab.follow("node3").await?;
//! assert_eq!(lab.primary_in_metadata("node3").await?.as_deref(), Some("node2"));
//! lab.teardown().await?;
//! # Ok(()) }
//! ```

mod build;
mod cmd;
mod daemons;
pub mod dashboard;
pub mod delay;
mod faults;
mod firewall;
pub mod haproxy;
pub mod http;
mod lab;
mod node;
pub mod procfs;
mod repmgrd;
mod spec;
mod sql;
pub mod stats;
mod subnets;
pub mod table;
mod teardown;
pub mod wait;

pub use crate::cmd::ensure_root;
pub use crate::daemons::{Daemon, DaemonBuilder, Ended, peer_key_file};
pub use crate::faults::CutMode;
pub use crate::http::HttpResponse;
pub use crate::lab::Lab;
pub use crate::spec::{
    DAEMON_PORT, LabSpec, NodeSpec, PG_BIN, PG_PORT, SUBNET_SHIFT_ENV, StopMode, chain_name,
    default_dir, lab_subnet, node_address, parse_subnet, replication_chain_name, shift_subnet,
    subnet_shift,
};
pub use crate::subnets::{SUBNETS, subnet_of};
pub use crate::teardown::{destroy_leftovers, postgres_processes_in};
pub(crate) use crate::wait::join_all;
