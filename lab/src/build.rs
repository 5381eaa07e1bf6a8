//! Building a lab: `initdb` of the primary, its shared `postgresql.conf` and `pg_hba.conf`, each
//! node's `node.conf` and `repmgr.conf` (with repmgrd's automatic-failover settings when the
//! spec asks for repmgrd), `repmgr primary register`, `repmgr standby clone` + `standby
//! register` of the standbys and the witness's own `initdb` (in parallel), `repmgr witness
//! register`, and the wait until every standby streams and every node's `repmgr.nodes` is
//! complete.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::cmd::{Run, ensure_root};
use crate::lab::{Lab, MARKER, Node, PgUser, T_PSQL, T_WAIT, pg_bin, s};
use crate::spec::{DAEMON_PORT, LabSpec, PG_BIN, PG_PORT, node_address};
use crate::teardown::destroy;
use crate::wait::{accepts, join_all};

const T_INITDB: Duration = Duration::from_secs(90);
const T_CLONE: Duration = Duration::from_secs(180);

fn postgres_user() -> Result<PgUser> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == "postgres" {
            return Ok(PgUser {
                uid: f[2].parse().context("uid of postgres")?,
                gid: f[3].parse().context("gid of postgres")?,
            });
        }
    }
    bail!("no postgres user in /etc/passwd (is PostgreSQL installed?)")
}

impl Lab {
    /// Build the cluster described by `spec` (see the crate docs), after removing leftovers of an
    /// earlier lab in the same directory/subnet. Returns once every standby streams from the
    /// primary and every node's `repmgr.nodes` lists all nodes as active. On error everything
    /// created so far is cleaned up again.
    pub async fn build(spec: LabSpec) -> Result<Lab> {
        ensure_root()?;
        spec.validate()?;
        let started = Instant::now();
        let pg = postgres_user()?;
        let mut dir = spec.lab_dir()?;
        if dir.is_relative() {
            dir = std::env::current_dir()
                .context("current directory")?
                .join(dir);
        }
        let subnet = spec.effective_subnet()?;
        {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || destroy(subnet, &d, &[]))
                .await
                .context("cleanup task failed")?
                .with_context(|| {
                    format!("removing leftovers of an earlier lab in {}", dir.display())
                })?;
        }
        let nodes = spec.all_nodes();
        for i in 1..=nodes.len() {
            let ip = node_address(subnet, i);
            for port in [PG_PORT, DAEMON_PORT] {
                let addr = SocketAddr::from((ip, port));
                if accepts(addr, Duration::from_millis(500)).await {
                    bail!(
                        "{addr} is already in use by a process that is not part of a lab in {} \
                         (use another subnet or stop it)",
                        dir.display()
                    );
                }
            }
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(MARKER), format!("primgr-lab subnet {subnet}\n"))
            .with_context(|| format!("writing marker in {}", dir.display()))?;
        let lab = Lab {
            subnet,
            dir,
            nodes,
            witness: spec.witness.map(|w| w.name),
            repmgrd: spec.repmgrd,
            pg,
            repmgrds: Mutex::new(HashMap::new()),
            created_files: Mutex::new(Vec::new()),
            fw_lock: Arc::new(Mutex::new(())),
            timings: Mutex::new(Vec::new()),
            verbose: std::env::var_os("PRIMGR_LAB_VERBOSE").is_some_and(|v| v != "0"),
            done: false,
        };
        // From here on, an error drops `lab`, which cleans up.
        lab.set_owner(&lab.dir, 0o755)?;
        let probe = Run::new(
            "check that postgres can enter the lab directory",
            ["test".to_string(), "-x".into(), s(&lab.dir)],
        )
        .postgres()
        .timeout(Duration::from_secs(10))
        .output()
        .await?;
        ensure!(
            probe.status.success(),
            "the postgres user cannot enter {}: choose a lab directory whose parents are \
             world-executable (e.g. under /tmp)",
            lab.dir.display()
        );
        lab.setup().await?;
        lab.record("build total", started.elapsed());
        Ok(lab)
    }

    fn repmgr_conf(&self, n: &Node<'_>, location: &str) -> String {
        let pg_ctl = pg_bin("pg_ctl");
        let data = s(&n.data());
        let log = s(&n.log());
        format!(
            "node_id={id}\n\
             node_name='{name}'\n\
             conninfo='host={addr} port={PG_PORT} user=repmgr dbname=repmgr connect_timeout=2'\n\
             data_directory='{data}'\n\
             location='{location}'\n\
             pg_bindir='{PG_BIN}'\n\
             repmgr_bindir='{PG_BIN}'\n\
             replication_user='repmgr'\n\
             use_replication_slots=no\n\
             repmgrd_pid_file='{pidfile}'\n\
             service_start_command='{pg_ctl} -D {data} -l {log} -w -t 60 start'\n\
             service_stop_command='{pg_ctl} -D {data} -m fast -w -t 60 stop'\n\
             service_restart_command='{pg_ctl} -D {data} -l {log} -m fast -w -t 60 restart'\n\
             service_reload_command='{pg_ctl} -D {data} reload'\n\
             {repmgrd}",
            id = n.index,
            name = n.name,
            addr = n.addr,
            pidfile = s(&n.dir.join("repmgrd.pid")),
            repmgrd = if self.repmgrd {
                self.repmgrd_conf(n)
            } else {
                String::new()
            },
        )
    }

    /// repmgrd's part of a node's `repmgr.conf`: automatic failover, reacting within seconds.
    fn repmgrd_conf(&self, n: &Node<'_>) -> String {
        let repmgr = pg_bin("repmgr");
        let conf = s(&n.conf());
        format!(
            "failover=automatic\n\
             promote_command='{repmgr} standby promote -f {conf} --log-to-file'\n\
             follow_command='{repmgr} standby follow -f {conf} --log-to-file --upstream-node-id=%n'\n\
             reconnect_attempts=2\n\
             reconnect_interval=1\n\
             monitor_interval_secs=1\n\
             log_file='{log}'\n",
            log = s(&n.repmgrd_log()),
        )
    }

    fn write_node_conf(&self, n: &Node<'_>) -> Result<()> {
        let conf = format!(
            "# written by primgr-lab after every clone/rewind (not copied between nodes)\n\
             listen_addresses = '{addr}'\n\
             port = {PG_PORT}\n\
             unix_socket_directories = '{sock}'\n\
             cluster_name = '{name}'\n",
            addr = n.addr,
            sock = s(&n.sock()),
            name = n.name,
        );
        self.write_pg_file(&n.data().join("node.conf"), &conf)
    }

    async fn setup(&self) -> Result<()> {
        for ns in &self.nodes {
            let n = self.node(&ns.name)?;
            for d in [n.dir.clone(), n.sock(), n.archive()] {
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                self.set_owner(&d, 0o755)?;
            }
            self.write_pg_file(&n.conf(), &self.repmgr_conf(&n, &ns.location))?;
            if self.repmgrd {
                // repmgrd (as postgres) appends to it, and so does the lab (as root).
                self.write_pg_file(&n.repmgrd_log(), "")?;
            }
        }
        let p = self.primary_spec()?;
        self.step(&format!("initdb {}", p.name), self.init_data_dir(&p))
            .await?;
        self.step(&format!("start {}", p.name), self.pg_start(&p))
            .await?;
        self.step(&format!("register {}", p.name), async {
            self.create_repmgr_database(&p).await?;
            self.repmgr(&p, &["primary".into(), "register".into()])
                .run()
                .await
        })
        .await?;
        // The standbys clone the primary while the witness runs its own initdb.
        let others: Vec<&str> = self.nodes[1..].iter().map(|n| n.name.as_str()).collect();
        for r in join_all(others.iter().map(|name| self.setup_node(name)).collect()).await {
            r?;
        }
        // Registered last, the witness copies a complete repmgr.nodes from the primary.
        if let Some(w) = &self.witness {
            let w = self.node(w)?;
            self.step(
                &format!("register witness {}", w.name),
                self.repmgr(
                    &w,
                    &[
                        "-h".into(),
                        p.addr.to_string(),
                        "-p".into(),
                        PG_PORT.to_string(),
                        "-U".into(),
                        "repmgr".into(),
                        "-d".into(),
                        "repmgr".into(),
                        "witness".into(),
                        "register".into(),
                    ],
                )
                .run(),
            )
            .await?;
        }
        let standbys = self.data_nodes().split_off(1);
        let t = Instant::now();
        for r in join_all(standbys.iter().map(|n| self.wait_streaming(n)).collect()).await {
            r?;
        }
        let total = self.nodes.len();
        for r in join_all(
            self.nodes
                .iter()
                .map(|ns| self.wait_metadata_complete(&ns.name, total))
                .collect(),
        )
        .await
        {
            r?;
        }
        self.record("wait streaming + metadata", t.elapsed());
        Ok(())
    }

    async fn wait_metadata_complete(&self, node: &str, total: usize) -> Result<()> {
        self.wait_sql(
            node,
            "SELECT count(*) FROM repmgr.nodes WHERE active",
            &total.to_string(),
            T_WAIT,
        )
        .await
        .map(drop)
    }

    /// `CREATE ROLE repmgr SUPERUSER REPLICATION LOGIN` and `CREATE DATABASE repmgr` (the
    /// primary, and the witness, which does not replicate them).
    async fn create_repmgr_database(&self, n: &Node<'_>) -> Result<()> {
        for sql in [
            "CREATE ROLE repmgr SUPERUSER REPLICATION LOGIN",
            "CREATE DATABASE repmgr OWNER repmgr",
        ] {
            self.psql_in(n, "postgres", sql, T_PSQL).await?;
        }
        Ok(())
    }

    /// A data directory of its own: `initdb`, the shared settings, `pg_hba.conf`, `node.conf`
    /// (the primary's and the witness's; standbys get theirs by cloning).
    async fn init_data_dir(&self, p: &Node<'_>) -> Result<()> {
        Run::new(
            format!("initdb {}", p.name),
            [
                pg_bin("initdb"),
                "-D".into(),
                s(&p.data()),
                "-U".into(),
                "postgres".into(),
                "-A".into(),
                "trust".into(),
                "--no-locale".into(),
                "-E".into(),
                "UTF8".into(),
                "--no-sync".into(),
                "--data-checksums".into(),
                "--wal-segsize=1".into(),
            ],
        )
        .postgres()
        .cwd(&self.dir)
        .timeout(T_INITDB)
        .run()
        .await?;
        let conf_path = p.data().join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .with_context(|| format!("opening {}", conf_path.display()))?;
        f.write_all(
            b"\n# ---- primgr-lab (shared by all nodes; node specifics in node.conf) ----\n\
              wal_level = replica\n\
              max_wal_senders = 16\n\
              hot_standby = on\n\
              wal_keep_size = '128MB'\n\
              min_wal_size = '8MB'\n\
              max_wal_size = '64MB'\n\
              wal_log_hints = on\n\
              fsync = off\n\
              shared_buffers = '32MB'\n\
              max_connections = 50\n\
              wal_retrieve_retry_interval = '1s'\n\
              log_line_prefix = '%m [%p] %q%u@%d '\n\
              include 'node.conf'\n",
        )
        .with_context(|| format!("writing {}", conf_path.display()))?;
        if self.repmgrd {
            f.write_all(b"shared_preload_libraries = 'repmgr'\n")
                .with_context(|| format!("writing {}", conf_path.display()))?;
        }
        self.write_pg_file(
            &p.data().join("pg_hba.conf"),
            "# primgr-lab: trust everything local (tests only)\n\
             local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.0/8 trust\n\
             host replication all 127.0.0.0/8 trust\n",
        )?;
        self.set_owner(&p.data().join("pg_hba.conf"), 0o600)?;
        self.write_node_conf(p)
    }

    /// A standby (cloned and registered) or the witness (its own data directory, started, with
    /// the repmgr role and database; registered later).
    async fn setup_node(&self, name: &str) -> Result<()> {
        if self.is_witness(name) {
            let w = self.node(name)?;
            self.step(&format!("initdb {name}"), self.init_data_dir(&w))
                .await?;
            self.step(&format!("start {name}"), self.pg_start(&w))
                .await?;
            return self.create_repmgr_database(&w).await;
        }
        let n = self.node(name)?;
        let p = self.primary_spec()?;
        self.step(
            &format!("clone {name}"),
            self.repmgr(
                &n,
                &[
                    "-h".into(),
                    p.addr.to_string(),
                    "-U".into(),
                    "repmgr".into(),
                    "-d".into(),
                    "repmgr".into(),
                    "--fast-checkpoint".into(),
                    "standby".into(),
                    "clone".into(),
                ],
            )
            .log(&p.log())
            .timeout(T_CLONE)
            .run(),
        )
        .await?;
        self.write_node_conf(&n)?;
        self.step(&format!("start {name}"), self.pg_start(&n))
            .await?;
        self.step(
            &format!("register {name}"),
            self.repmgr(&n, &["standby".into(), "register".into()])
                .run(),
        )
        .await?;
        Ok(())
    }
}
