//! The defects found in review (issue "a witness that says Primary, a bogus /realPrimary, a
//! unit that can hurt PostgreSQL"), each proven fixed by what a user would check. The items
//! that need a real cluster are in `tests/defects_lab.rs`; the verdict, vote and `/realPrimary`
//! rules are also unit-tested table by table in `src/`.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use primgr::{Config, Options, RunError};
use tokio::net::TcpListener;

const PRIMGR: &str = env!("CARGO_BIN_EXE_primgr");

/// Item 6: a poller that dies (here: a cycle that panics) ends the daemon with an error that
/// says why, instead of serving "stale" forever; the HTTP port closes, so the process (whose
/// `main` maps the error to a non-zero exit) is restarted by its supervisor.
#[tokio::test]
async fn a_dead_poller_ends_the_daemon() {
    let mut config = Config::for_node("node1").expect("defaults");
    // Nothing listens on port 1: the database is down, the cycles run anyway.
    config.db.conninfo = "host=127.0.0.1 port=1 dbname=repmgr user=repmgr".into();
    config.timing.interval = Duration::from_millis(50);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hook: primgr::poller::CycleHook = Arc::new(|cycle| {
        if cycle == 3 {
            panic!("planted failure in cycle {cycle}");
        }
    });
    let options = Options {
        cycle_hook: Some(hook),
        ..Options::default()
    };
    let t0 = Instant::now();
    let never = std::future::pending::<()>();
    let ended = tokio::time::timeout(
        Duration::from_secs(10),
        primgr::run_with(config, listener, never, options),
    )
    .await
    .expect("the daemon ends by itself, without a shutdown signal");
    println!(
        "the daemon ended {:?} after its start: {ended:?}",
        t0.elapsed()
    );
    match ended {
        Err(RunError::PollerDied(why)) => {
            assert!(why.contains("planted failure in cycle 3"), "{why}")
        }
        other => panic!("expected PollerDied, got {other:?}"),
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the HTTP port is closed once the daemon ended"
    );
}

/// Item 5: `--check-config` prints the configuration with the password masked, in key=value
/// and URI forms; a passfile is shown as its path, and never opened.
#[test]
fn check_config_never_prints_a_password() {
    let passfile = std::env::temp_dir().join(format!("primgr-passfile-{}", std::process::id()));
    std::fs::write(&passfile, "*:*:*:*:FILE-SECRET\n").expect("write passfile");
    let passfile = passfile.display().to_string();
    for conninfo in [
        "host=db user=primgr password=s3cret dbname=repmgr".to_string(),
        "host=db user=primgr password='s3 cret' dbname=repmgr".to_string(),
        "postgresql://primgr:s3cret@db:5432/repmgr".to_string(),
        "postgresql://primgr@db/repmgr?password=s3cret&sslmode=disable".to_string(),
        format!("host=db user=primgr passfile={passfile} dbname=repmgr"),
    ] {
        let out = Command::new(PRIMGR)
            .args([
                "--check-config",
                "--node-name",
                "node1",
                "--conninfo",
                &conninfo,
            ])
            .output()
            .expect("run primgr");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{conninfo}: {stderr}");
        for secret in ["s3cret", "s3 cret", "FILE-SECRET"] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{conninfo} shows {secret:?}:\n{stdout}{stderr}"
            );
        }
        if conninfo.contains("passfile") {
            assert!(stdout.contains(&format!("passfile={passfile}")), "{stdout}");
        } else {
            assert!(stdout.contains("***"), "{stdout}");
        }
        assert!(
            stdout.contains("vote_lease = "),
            "every setting is shown: {stdout}"
        );
    }
    let _ = std::fs::remove_file(&passfile);
}
