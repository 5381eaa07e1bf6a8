//! The `primgr` command: parse the command line, load the configuration, then run the daemon
//! until SIGTERM or SIGINT (telling systemd when it is ready and when it stops) or run a
//! subcommand. Only wiring: everything else lives in the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hyper::Uri;
use primgr::cli::{Cli, Command, Local};
use primgr::control;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Exit status for a bad configuration or command line (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit status when the listen address cannot be bound (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

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
    match &cli.command {
        Some(Command::Cluster { url, timeout, json }) => return cluster(url, *timeout, *json),
        Some(Command::Drain { reason, local }) => return drain(local, Some(reason)),
        Some(Command::Undrain { local }) => return drain(local, None),
        Some(Command::Check(args)) => return ExitCode::from(primgr::check::command(args)),
        None => {}
    }
    let config = match cli.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("primgr: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        print!("# configuration is valid\n{config}");
        return ExitCode::SUCCESS;
    }

    // RUST_LOG, when set, wins over `log_level` (and then a reload leaves the filter alone).
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_level));
    let (filter, log_filter) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let log_filter = (!from_env).then_some(log_filter);

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
    runtime.block_on(serve(cli, config, log_filter))
}

/// The handle that changes the log filter on a reload (None when RUST_LOG decides).
type LogFilter =
    Option<tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>>;

/// On each SIGHUP, loads the configuration again (the same file, the same flags over it): a
/// valid one goes to the daemon (and its `log_level` to the log filter), a bad one is logged
/// with its key and line and changes nothing.
fn watch_reloads(
    mut hangups: tokio::signal::unix::Signal,
    cli: Cli,
    mut log_level: String,
    log_filter: LogFilter,
) -> tokio::sync::mpsc::UnboundedReceiver<primgr::Config> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            info!("SIGHUP received; reading the configuration again");
            let config = match cli.load() {
                Ok(c) => c,
                Err(e) => {
                    error!("reload refused, the running configuration stays: {e}");
                    continue;
                }
            };
            if let Some(handle) = log_filter
                .as_ref()
                .filter(|_| config.log_level != log_level)
            {
                match handle.reload(EnvFilter::new(&config.log_level)) {
                    Ok(()) => info!("log_level is now {:?}", config.log_level),
                    Err(e) => warn!("cannot change the log filter: {e}"),
                }
                log_level = config.log_level.clone();
            }
            if tx.send(config).is_err() {
                return;
            }
        }
    });
    rx
}

/// A single-threaded runtime for a subcommand.
fn small_runtime(what: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("primgr {what}: cannot start the runtime: {e}");
            None
        }
    }
}

/// `primgr drain` (with a reason) / `primgr undrain`: writes or removes the flag, then waits
/// for the local daemon to show it.
fn drain(local: &Local, reason: Option<&str>) -> ExitCode {
    let what = if reason.is_some() { "drain" } else { "undrain" };
    let (dir, url) = match local.resolve() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("primgr {what}: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let changed = match reason {
        Some(r) => control::drain(&dir, r).map(|()| true),
        None => control::undrain(&dir),
    };
    match changed {
        Err(e) => {
            eprintln!(
                "primgr {what}: cannot change {}: {e} (run as root or as the service user)",
                control::drain_path(&dir).display()
            );
            return ExitCode::FAILURE;
        }
        Ok(false) => println!("not drained; nothing to do"),
        Ok(true) => {}
    }
    let Some(runtime) = small_runtime(what) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(control::confirm(
        &url,
        reason.is_some(),
        Duration::from_secs(10),
    )) {
        Ok(node) => {
            println!("{node} is {what}ed (the daemon at {url} shows it)");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!(
                "the flag is {}; the daemon at {url} did not show it within 10 s ({why}): it \
                 takes effect at its next cycle once it runs",
                if reason.is_some() {
                    "written"
                } else {
                    "removed"
                }
            );
            ExitCode::SUCCESS
        }
    }
}

/// `primgr cluster`: prints the table (or JSON) and exits with its status.
fn cluster(url: &Uri, timeout: Duration, json: bool) -> ExitCode {
    let Some(runtime) = small_runtime("cluster") else {
        return ExitCode::FAILURE;
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

async fn serve(cli: Cli, config: primgr::Config, log_filter: LogFilter) -> ExitCode {
    let listener = match primgr::server::bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen on {} (`listen`): {e}", config.listen);
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let agent = match config.agent_listen.map(primgr::server::bind).transpose() {
        Ok(a) => a,
        Err(e) => {
            error!(
                "cannot listen on {:?} (`agent_listen`): {e}",
                config.agent_listen
            );
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let reloads = match primgr::shutdown::hangups() {
        Ok(hangups) => Some(watch_reloads(
            hangups,
            cli,
            config.log_level.clone(),
            log_filter,
        )),
        Err(e) => {
            warn!("cannot watch for SIGHUP ({e}); reloads are off");
            None
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
    let options = primgr::Options {
        on_ready,
        agent,
        reloads,
        ..primgr::Options::default()
    };
    match primgr::run_with(config, listener, shutdown, options).await {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e @ primgr::RunError::Db(_)) => {
            error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        // Already logged with its cause; a non-zero status lets the supervisor restart us.
        Err(primgr::RunError::PollerDied(_)) => ExitCode::FAILURE,
    }
}
