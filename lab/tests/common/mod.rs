//! Shared by the lab's own tests: step timings, the primary a node's metadata names, the
//! machine's iptables rules, a fake primgr daemon, and the check a test ends with (the lab
//! left nothing behind).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use primgr_lab::{Lab, PG_PORT, wait};

/// Prints how long each step took.
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    /// Prints `step` with the time since the last lap; returns it.
    pub fn lap(&mut self, step: &str) -> Duration {
        let took = self.0.elapsed();
        println!("{step:<52} {:>6.2}s", took.as_secs_f64());
        self.0 = Instant::now();
        took
    }
}

/// The active primary the node's own `repmgr.nodes` names.
pub async fn metadata_primary(lab: &Lab, node: &str) -> Result<String> {
    lab.primary_in_metadata(node)
        .await?
        .with_context(|| format!("no active primary in {node}'s repmgr.nodes"))
}

/// `iptables -S` of the whole machine.
pub fn iptables_s() -> Result<String> {
    let out = std::process::Command::new("iptables")
        .arg("-S")
        .output()
        .context("running iptables -S")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A fake primgr: a shell script that waits `delay` and then serves a fixed HTTP answer with
/// socat on its `--listen` address. socat runs as the script's child (not `exec`), so that the
/// process the pid file names keeps the listen address in its command line, as the lab's
/// cleanup requires before it stops a daemon it finds through a pid file.
pub fn write_fake_daemon(dir: &Path, delay: Duration) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let resp = dir.join("fake-response");
    std::fs::write(
        &resp,
        "HTTP/1.1 202 Accepted\r\nContent-Length: 7\r\n\r\nStandby",
    )?;
    let script = dir.join("fake-primgr.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do case $prev in --listen) L=$a;; esac; prev=$a; done\n\
             sleep {:.3}\n\
             socat TCP-LISTEN:${{L##*:}},bind=${{L%:*}},reuseaddr,fork SYSTEM:'cat {}'\n",
            delay.as_secs_f64(),
            resp.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

/// Tears the lab down and checks that nothing is left: no directory, no chain of the lab in
/// iptables, no postgres process under the directory, nothing listening on a node's
/// PostgreSQL port, no process naming one of the lab's files.
pub async fn teardown_leaves_nothing(lab: Lab) -> Result<()> {
    let dir = lab.dir().to_path_buf();
    let chain = primgr_lab::chain_name(lab.subnet());
    let addrs: Vec<SocketAddr> = lab
        .node_names()
        .iter()
        .map(|n| SocketAddr::from((lab.addr(n), PG_PORT)))
        .collect();
    lab.teardown().await?;
    ensure!(!dir.exists(), "{} still exists", dir.display());
    ensure!(
        !iptables_s()?.contains(&chain),
        "a chain {chain}* left behind"
    );
    ensure!(primgr_lab::postgres_processes_in(&dir).is_empty());
    for addr in addrs {
        ensure!(
            !wait::accepts(addr, Duration::from_millis(300)).await,
            "something still listens on {addr}"
        );
    }
    let left = std::process::Command::new("pgrep")
        .args(["-f", &dir.to_string_lossy()])
        .output()?;
    ensure!(
        left.stdout.is_empty(),
        "processes naming {} left: {}",
        dir.display(),
        String::from_utf8_lossy(&left.stdout)
    );
    Ok(())
}
