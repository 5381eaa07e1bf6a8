//! The `primgr` command: parse the command line, load the configuration, then run the daemon
//! until SIGTERM or SIGINT (telling systemd when it is ready and when it stops) or run a
//! subcommand. Only wiring: everything else lives in the library.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hyper::Uri;
use primgr::cli::{Cli, Command, Local};
use primgr::config::Source;
use primgr::control;
use primgr::reload::{LogFilter, Reloads};
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
        Some(Command::Cluster {
            url,
            timeout,
            json,
            peer_key_file,
            tls_ca_file,
        }) => {
            return cluster(
                url,
                *timeout,
                *json,
                peer_key_file.as_deref(),
                tls_ca_file.as_deref(),
            );
        }
        Some(Command::Drain { reason, local }) => return drain(local, Some(reason)),
        Some(Command::Undrain { local }) => return drain(local, None),
        Some(Command::Check(args)) => return ExitCode::from(primgr::check::command(args)),
        Some(Command::Keygen) => {
            return match primgr::auth::generate_key_line() {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("primgr keygen: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let (source, config) = match cli.load() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("primgr: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        print!("# configuration is valid\n{config}");
        return check_distance(&config);
    }

    // RUST_LOG, when set, wins over `log_level` (and then a reload leaves the filter alone).
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(&config.node.log_level));
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
    runtime.block_on(serve(source, config, log_filter))
}

/// `--check-config` in cluster scope: the round trip to every voter against `peer_timeout`
/// ([`primgr::distance`]); a refusal exits as a bad configuration does.
fn check_distance(config: &primgr::Config) -> ExitCode {
    if !primgr::distance::applies(config) {
        return ExitCode::SUCCESS;
    }
    let Some(runtime) = small_runtime("--check-config") else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(primgr::distance::check(config)) {
        Ok(lines) => {
            for line in lines {
                println!("# {line}");
            }
            ExitCode::SUCCESS
        }
        Err(refusal) => {
            eprintln!("primgr: bad configuration: {refusal}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
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
fn cluster(
    url: &Uri,
    timeout: Duration,
    json: bool,
    key_file: Option<&Path>,
    ca_file: Option<&Path>,
) -> ExitCode {
    let keys = match key_file.map(primgr::auth::Keys::load).transpose() {
        Ok(keys) => keys,
        Err(e) => {
            eprintln!("primgr cluster: --peer-key-file: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match ca_file.map(primgr::tls::ClientTls::load).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("primgr cluster: --tls-ca-file: {}", e.reason);
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = small_runtime("cluster") else {
        return ExitCode::FAILURE;
    };
    let report = runtime.block_on(primgr::cluster::gather_with(
        url,
        timeout,
        keys.as_ref(),
        tls.as_ref(),
    ));
    if json {
        println!("{:#}", report.to_json());
    } else if report.error.is_some() {
        eprint!("primgr cluster: {}", report.render());
    } else {
        print!("{}", report.render());
    }
    ExitCode::from(report.exit_code())
}

async fn serve(source: Source, config: primgr::Config, log_filter: Option<LogFilter>) -> ExitCode {
    let listener = match primgr::server::bind(config.node.listen) {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen on {} (`listen`): {e}", config.node.listen);
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let agent = match config
        .agent
        .agent_listen
        .map(primgr::server::bind)
        .transpose()
    {
        Ok(a) => a,
        Err(e) => {
            error!(
                "cannot listen on {:?} (`agent_listen`): {e}",
                config.agent.agent_listen
            );
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let reloads = match primgr::shutdown::hangups() {
        Ok(hangups) => Some(Reloads {
            source,
            hangups,
            log_filter,
        }),
        Err(e) => {
            warn!("cannot watch for SIGHUP ({e}); reloads are off");
            None
        }
    };
    info!(
        node = %config.node.node_name,
        listen = %config.node.listen,
        interval = %humantime::format_duration(config.timing.interval),
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
            config.node.node_name,
            config.node.listen,
            humantime::format_duration(config.timing.interval)
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
        Err(
            e @ (primgr::RunError::Db(_) | primgr::RunError::Keys(_) | primgr::RunError::Tls(_)),
        ) => {
            error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        // Already logged with its cause; a non-zero status lets the supervisor restart us.
        Err(primgr::RunError::PollerDied(_)) => ExitCode::FAILURE,
        Err(e @ primgr::RunError::PollThread(_)) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
