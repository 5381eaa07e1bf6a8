//! The `primgr` command: parse the command line, load the configuration, run the daemon until
//! SIGTERM or SIGINT (telling systemd when it is ready and when it stops), or run the
//! `cluster` subcommand. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hyper::Uri;
use primgr::config::{Origin, Settings, from_flag};
use tracing::{error, info, warn};

/// Exit status for a bad configuration or command line (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit status when the listen address cannot be bound (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

/// Tells haproxy and operators which node of a repmgr cluster is the real primary.
///
/// Every setting can come from the TOML file given with --config and be overridden by the flag
/// of the same name; see etc/primgr.toml for each key and its default.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Without a command, run the daemon.
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print it, and exit.
    #[arg(long)]
    check_config: bool,
    /// Name of the local node in repmgr.nodes [default: the host name].
    #[arg(long)]
    node_name: Option<String>,
    /// HTTP listen address [default: 0.0.0.0:5999].
    #[arg(long)]
    listen: Option<String>,
    /// conninfo of the local database.
    #[arg(long)]
    conninfo: Option<String>,
    /// Connection pool size [default: 3].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    max_connections_in_pool: Option<String>,
    /// Poll period [default: 2s].
    #[arg(long, value_name = "DURATION")]
    interval: Option<String>,
    /// Bound on connecting to and querying the local database [default: 2s].
    #[arg(long, value_name = "DURATION")]
    db_timeout: Option<String>,
    /// Peers' API port [default: 5999].
    #[arg(long, value_name = "PORT", allow_negative_numbers = true)]
    peer_port: Option<String>,
    /// Bound on a whole fan-out to the peers [default: 1s].
    #[arg(long, value_name = "DURATION")]
    peer_timeout: Option<String>,
    /// Local address for requests to peers [default: none].
    #[arg(long, value_name = "IP")]
    source_address: Option<String>,
    /// Oldest snapshot that may be served [default: 2 x (interval + db_timeout + peer_timeout)].
    #[arg(long, value_name = "DURATION")]
    max_staleness: Option<String>,
    /// A peer API address override, NAME=http://HOST:PORT; repeatable. Replaces the file's [peers].
    #[arg(long = "peer", value_name = "NAME=URL")]
    peers: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show every node's state as its daemon reports it, and the real primary.
    ///
    /// Asks the daemon at --url for the cluster's members, then every member's /status at once.
    /// Exit status: 0 when exactly one node answers 200 (Primary), 1 when none or several do
    /// (split brain), 2 when not even --url could be reached.
    Cluster {
        /// API address of any primgr daemon of the cluster.
        #[arg(long, value_name = "URL", default_value = primgr::cluster::DEFAULT_URL,
              value_parser = primgr::cluster::parse_url)]
        url: Uri,
        /// Bound on each round of requests (learning the members; asking them all).
        #[arg(long, value_name = "DURATION", default_value = "2s",
              value_parser = primgr::cluster::parse_timeout)]
        timeout: Duration,
        /// Print a JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    /// The flags as settings to lay over the file.
    fn settings(&self) -> Result<Settings, String> {
        let int = |key: &str, v: &Option<String>| -> Result<_, String> {
            v.as_ref()
                .map(|s| {
                    s.parse::<i64>()
                        .map(from_flag)
                        .map_err(|_| format!("command line: `{key}`: {s:?} is not a number"))
                })
                .transpose()
        };
        let text = |v: &Option<String>| v.clone().map(from_flag);
        let peers = if self.peers.is_empty() {
            None
        } else {
            let mut map = std::collections::BTreeMap::new();
            for p in &self.peers {
                let (name, url) = p.split_once('=').ok_or_else(|| {
                    format!("command line: `peers`: {p:?} is not NAME=http://HOST:PORT")
                })?;
                map.insert(name.to_string(), from_flag(url.to_string()));
            }
            Some(map)
        };
        Ok(Settings {
            node_name: text(&self.node_name),
            listen: text(&self.listen),
            conninfo: text(&self.conninfo),
            max_connections_in_pool: int("max_connections_in_pool", &self.max_connections_in_pool)?,
            interval: text(&self.interval),
            db_timeout: text(&self.db_timeout),
            peer_port: int("peer_port", &self.peer_port)?,
            peer_timeout: text(&self.peer_timeout),
            source_address: text(&self.source_address),
            max_staleness: text(&self.max_staleness),
            peers,
        })
    }
}

fn load(cli: &Cli) -> Result<primgr::Config, String> {
    let (file, origin) = match &cli.config {
        Some(path) => Settings::load(path).map_err(|e| e.to_string())?,
        None => (Settings::default(), Origin::Defaults),
    };
    file.overlay(cli.settings()?)
        .validate(&origin)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(Command::Cluster { url, timeout, json }) = &cli.command {
        return cluster(url, *timeout, *json);
    }
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("primgr: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        println!("configuration is valid:\n{config:#?}");
        return ExitCode::SUCCESS;
    }

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

/// `primgr cluster`: prints the table (or JSON) and exits with its status.
fn cluster(url: &Uri, timeout: Duration, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("primgr cluster: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(primgr::cluster::gather(url, timeout));
    if json {
        println!("{:#}", report.to_json());
    } else if report.error.is_some() {
        eprint!("primgr cluster: {}", report.render());
    } else {
        print!("{}", report.render());
    }
    ExitCode::from(report.exit_code())
}

async fn serve(config: primgr::Config) -> ExitCode {
    let listener = match primgr::server::bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen on {} (`listen`): {e}", config.listen);
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    info!(
        node = %config.node_name,
        listen = %config.listen,
        interval = %humantime::format_duration(config.interval),
        "primgr {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let notifier = match primgr::notify::Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            warn!("{e}; not notifying systemd");
            None
        }
    };
    let on_ready: Option<primgr::poller::OnReady> = notifier.clone().map(|n| {
        let status = format!(
            "node {}: serving on {}, polling every {}",
            config.node_name,
            config.listen,
            humantime::format_duration(config.interval)
        );
        Box::new(move || n.ready(&status)) as primgr::poller::OnReady
    });
    let shutdown = async move {
        match primgr::shutdown::signal().await {
            Ok(name) => info!("{name} received; shutting down"),
            Err(e) => error!("cannot watch for signals ({e}); shutting down"),
        }
        if let Some(n) = &notifier {
            n.stopping();
        }
    };
    match primgr::run_with_ready(config, listener, shutdown, on_ready).await {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
