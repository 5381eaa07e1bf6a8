//! Running external commands with a timeout, optionally as the `postgres` OS user, and the
//! check that the lab runs as root ([`ensure_root`]).
//!
//! Every command runs in its own process group (so Ctrl-C in a terminal does not reach it and a
//! timeout can kill it together with whatever it forked), with stdin from `/dev/null`. On failure
//! the error names the command and carries its stdout, stderr and, if given, the tail of a log file
//! (usually the node's PostgreSQL log).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Fails with a clear error unless the effective user is root.
pub fn ensure_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    anyhow::ensure!(
        euid == 0,
        "primgr-lab must run as root (euid is {euid}): it runs PostgreSQL as the postgres user \
         through runuser and manages iptables rules; run the tests/demo as root"
    );
    Ok(())
}

/// Home directory given to commands run as `postgres`.
pub(crate) const PG_HOME: &str = "/var/lib/postgresql";

/// Absolute path of a system tool, falling back to a `PATH` lookup.
pub(crate) fn tool(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    name.to_string()
}

/// Output of a finished command.
#[derive(Debug)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A command to run (builder).
#[derive(Clone, Debug)]
pub(crate) struct Run {
    what: String,
    argv: Vec<String>,
    as_postgres: bool,
    cwd: Option<PathBuf>,
    env: Vec<(String, String)>,
    timeout: Duration,
    log: Option<PathBuf>,
}

impl Run {
    /// `what` is a short human description used in errors ("initdb node1").
    pub fn new<I, S>(what: impl Into<String>, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Run {
            what: what.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            as_postgres: false,
            cwd: None,
            env: Vec::new(),
            timeout: Duration::from_secs(30),
            log: None,
        }
    }

    /// Run as the `postgres` OS user: `runuser -u postgres -- env HOME=... cmd`.
    pub fn postgres(mut self) -> Self {
        self.as_postgres = true;
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_string(), v.into()));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Append the tail of this log file to errors.
    pub fn log(mut self, path: &Path) -> Self {
        self.log = Some(path.to_path_buf());
        self
    }

    fn full_argv(&self) -> Vec<String> {
        if !self.as_postgres {
            return self.argv.clone();
        }
        let mut v = vec![
            tool("runuser"),
            "-u".into(),
            "postgres".into(),
            "--".into(),
            "env".into(),
            format!("HOME={PG_HOME}"),
            "LC_ALL=C".into(),
        ];
        for (k, val) in &self.env {
            v.push(format!("{k}={val}"));
        }
        v.extend(self.argv.iter().cloned());
        v
    }

    fn display(&self) -> String {
        self.argv
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains([' ', '\'', '"']) {
                    format!("'{}'", a.replace('\'', r"'\''"))
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn failure(&self, headline: String, stdout: &str, stderr: &str) -> anyhow::Error {
        let mut msg = format!(
            "{}: {headline}\n  command: {}{}",
            self.what,
            self.display(),
            if self.as_postgres {
                " (as postgres)"
            } else {
                ""
            }
        );
        let stderr = stderr.trim();
        let stdout = stdout.trim();
        if !stderr.is_empty() {
            msg.push_str(&format!("\n--- stderr ---\n{stderr}"));
        }
        if !stdout.is_empty() {
            msg.push_str(&format!("\n--- stdout ---\n{}", tail_str(stdout, 40)));
        }
        if let Some(log) = &self.log {
            msg.push_str(&format!(
                "\n--- tail of {} ---\n{}",
                log.display(),
                log_tail(log, 25)
            ));
        }
        anyhow!(msg)
    }

    /// The command to spawn: its own process group, stdin from `/dev/null`, stdout and stderr
    /// piped.
    fn command(&self) -> Result<std::process::Command> {
        let argv = self.full_argv();
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| anyhow!("{}: empty command", self.what))?;
        let mut cmd = std::process::Command::new(prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        if !self.as_postgres {
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
        }
        Ok(cmd)
    }

    /// Run and return the output whatever the exit status; errors only if the command cannot
    /// be started or times out (it is then killed with its whole process group).
    pub async fn output(&self) -> Result<Output> {
        let mut cmd = tokio::process::Command::from(self.command()?);
        cmd.kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{}: cannot start {}", self.what, self.display()))?;
        let pid = child.id();
        let out_buf = Arc::new(Mutex::new(Vec::new()));
        let err_buf = Arc::new(Mutex::new(Vec::new()));
        let p1 = tokio::spawn(pump(child.stdout.take(), out_buf.clone()));
        let p2 = tokio::spawn(pump(child.stderr.take(), err_buf.clone()));
        let res = tokio::time::timeout(self.timeout, child.wait()).await;
        let status = match res {
            Ok(status) => status.with_context(|| format!("{}: waiting for command", self.what))?,
            Err(_) => {
                if let Some(pid) = pid {
                    // SAFETY: plain syscall; the group was created for this command.
                    unsafe {
                        libc::kill(-(pid as i32), libc::SIGKILL);
                    }
                }
                let _ = child.kill().await;
                p1.abort();
                p2.abort();
                return Err(self.failure(
                    format!("timed out after {:?} (killed)", self.timeout),
                    &buf_string(&out_buf),
                    &buf_string(&err_buf),
                ));
            }
        };
        // A grandchild could keep the pipes open; do not wait for it forever.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = p1.await;
            let _ = p2.await;
        })
        .await;
        Ok(Output {
            status,
            stdout: buf_string(&out_buf),
            stderr: buf_string(&err_buf),
        })
    }

    /// Run; error on non-zero exit. Returns trimmed stdout.
    pub async fn run(&self) -> Result<String> {
        let out = self.output().await?;
        if !out.status.success() {
            return Err(self.failure(format!("failed ({})", out.status), &out.stdout, &out.stderr));
        }
        Ok(out.stdout.trim().to_string())
    }

    /// Synchronous variant of [`Run::output`] (for `Drop` and blocking contexts).
    pub fn output_sync(&self) -> Result<Output> {
        let child = self
            .command()?
            .spawn()
            .with_context(|| format!("{}: cannot start {}", self.what, self.display()))?;
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(self.timeout) {
            Ok(out) => {
                let out = out.with_context(|| format!("{}: waiting for command", self.what))?;
                Ok(Output {
                    status: out.status,
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
            Err(_) => {
                // SAFETY: plain syscall on the command's own process group.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                let _ = rx.recv_timeout(Duration::from_secs(2));
                Err(self.failure(
                    format!("timed out after {:?} (killed)", self.timeout),
                    "",
                    "",
                ))
            }
        }
    }

    /// Synchronous variant of [`Run::run`].
    pub fn run_sync(&self) -> Result<String> {
        let out = self.output_sync()?;
        if !out.status.success() {
            return Err(self.failure(format!("failed ({})", out.status), &out.stdout, &out.stderr));
        }
        Ok(out.stdout.trim().to_string())
    }
}

async fn pump<R: AsyncRead + Unpin>(r: Option<R>, buf: Arc<Mutex<Vec<u8>>>) {
    let Some(mut r) = r else { return };
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]),
        }
    }
}

fn buf_string(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

fn tail_str(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Last `lines` lines of a (log) file, or a note why it cannot be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            // Only look at the last 64 KiB.
            let start = bytes.len().saturating_sub(64 * 1024);
            tail_str(&String::from_utf8_lossy(&bytes[start..]), lines)
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}
