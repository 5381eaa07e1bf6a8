//! `primgr check`: a monitoring plugin (Nagios, Icinga, Naemon, keepalived's `vrrp_script`)
//! that asks the local daemon over HTTP, never the database.
//!
//! Owns the plugin's arguments ([`Args`], [`Which`]), the checks ([`Check`]) and their lag
//! thresholds, and the monitoring-plugins guidelines' output: one status line
//! `PRIMGR <CHECK> <LEVEL> - <text> | <perfdata>` and the exit status 0 OK, 1 WARNING,
//! 2 CRITICAL, 3 UNKNOWN ([`Level`]). [`judge`] turns the daemon's answers into that
//! [`Report`]: a pure function, table-tested; [`ask`] asks, all of it bounded by `--timeout`;
//! [`command`] is the whole subcommand.
//!
//! What each check asks and when it is OK:
//! - `primary`: `/status`; OK when the node answers 200 (Primary), CRITICAL in any other state
//!   (the line says which and why). keepalived moves a VIP with it.
//! - `replica [--warning SIZE] [--critical SIZE]`: `/replica` (the daemon's own rule: in
//!   recovery, not drained, fresh snapshot) and `/status` (why a lag is unknown); CRITICAL when
//!   `/replica` fails, WARNING or CRITICAL when the replay lag is above a threshold. An unknown
//!   lag is never OK: it counts as above every threshold given (WARNING when none is).
//! - `read-only`: `/read-only`; OK when the node serves reads (the primary, or a standby).
//! - `sync`: `/synchronous`; OK when the primary lists this standby as synchronous now, CRITICAL
//!   otherwise (asynchronous, not a standby, or a sync state that is not known).
//! - `cluster`: the view of `primgr cluster` ([`crate::cluster::gather`], each of its two
//!   rounds bounded by half the timeout); OK when exactly one node answers 200 and every member
//!   gave a readable answer, CRITICAL with none or several (split brain), WARNING with one but a
//!   member that gave no usable answer (it could be another) or answers Unknown (509).
//!
//! UNKNOWN is "the plugin could not determine": bad arguments or configuration, no answer
//! within the timeout, a refused connection, an answer that is not primgr's. The line says
//! which. (`sync` is not offered: `/status` carries no synchronous-standby state yet.)

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;
use tokio::time::Instant;

use crate::cluster::{ClusterReport, NodeReport, parse_timeout, parse_url};
use crate::config::Source;
use crate::decide::State;
use crate::peers::PeerClient;
use crate::units::{format_size, parse_size};
use crate::wire::{self, CheckBody, Status};

/// Default `--timeout`: bound on the whole check.
pub const DEFAULT_TIMEOUT: &str = "5s";

/// How long past `--timeout` the check may take to give up on its own deadlines before a
/// backstop ends it (the requests end by the deadline; this is only a guard).
const GRACE: Duration = Duration::from_millis(200);

/// `primgr check`: the arguments. Values stay text until [`prepare`] reads them, so that a bad
/// one is an UNKNOWN status line (exit 3), as monitoring systems expect, not a usage error.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(subcommand)]
    pub which: Which,
    /// API address of the local daemon, http://HOST:PORT [default: the `listen` of --config,
    /// else http://127.0.0.1:5999].
    #[arg(long, value_name = "URL", global = true)]
    pub url: Option<String>,
    /// The daemon's configuration file, for its `listen` address.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Bound on the whole check; without an answer by then the check is UNKNOWN.
    #[arg(long, value_name = "DURATION", global = true, default_value = DEFAULT_TIMEOUT)]
    pub timeout: String,
}

/// What to check.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// OK when this node answers 200 (Primary), CRITICAL in any other state.
    Primary,
    /// OK when this node serves reads as a standby (`/replica`) within the lag thresholds.
    ///
    /// WARNING above --warning, CRITICAL above --critical (replay lag in bytes behind the
    /// primary). An unknown lag is never OK: it counts as above every threshold given, and is a
    /// WARNING without thresholds.
    Replica {
        /// Replay lag above which the check is WARNING (e.g. 1MB; units B, kB, MB, GB, TB).
        #[arg(long, value_name = "SIZE")]
        warning: Option<String>,
        /// Replay lag above which the check is CRITICAL (e.g. 16MB).
        #[arg(long, value_name = "SIZE")]
        critical: Option<String>,
    },
    /// OK when this node serves reads (`/read-only`: the primary, or a standby).
    ReadOnly,
    /// OK when the primary lists this standby as synchronous (`/synchronous`).
    Sync,
    /// OK when exactly one node of the cluster answers 200 (asked as `primgr cluster` asks).
    Cluster,
}

impl Which {
    /// The name in the status line.
    fn title(&self) -> &'static str {
        match self {
            Which::Primary => Check::Primary,
            Which::Replica { .. } => Check::Replica(Thresholds::default()),
            Which::ReadOnly => Check::ReadOnly,
            Which::Sync => Check::Sync,
            Which::Cluster => Check::Cluster,
        }
        .title()
    }
}

/// Replay lag thresholds in bytes: above `warning` WARNING, above `critical` CRITICAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Thresholds {
    pub warning: Option<u64>,
    pub critical: Option<u64>,
}

/// A check with its arguments read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Primary,
    Replica(Thresholds),
    ReadOnly,
    Sync,
    Cluster,
}

impl Check {
    /// The name in the status line.
    pub fn title(self) -> &'static str {
        match self {
            Check::Primary => "PRIMARY",
            Check::Replica(_) => "REPLICA",
            Check::ReadOnly => "READ-ONLY",
            Check::Sync => "SYNC",
            Check::Cluster => "CLUSTER",
        }
    }
}

/// The service states of the monitoring-plugins guidelines; the exit status is the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Level {
    /// The exit status.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The word in the status line.
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
        }
    }
}

/// One performance value, `'label'=value[UOM];[warn];[crit];[min];[max]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Perf {
    pub label: &'static str,
    /// The value with its unit; None when it could not be determined (written `U`).
    pub value: Option<String>,
    pub warn: Option<String>,
    pub crit: Option<String>,
    pub min: Option<String>,
}

impl Perf {
    /// A size in bytes (`B`), minimum 0, with the lag thresholds.
    fn bytes(label: &'static str, value: Option<u64>, t: Thresholds) -> Perf {
        Perf {
            label,
            value: value.map(|v| format!("{v}B")),
            warn: t.warning.map(|w| w.to_string()),
            crit: t.critical.map(|c| c.to_string()),
            min: Some("0".into()),
        }
    }

    /// A duration in seconds (`s`), minimum 0.
    fn seconds(label: &'static str, value: Duration) -> Perf {
        Perf {
            label,
            value: Some(format!("{:.3}s", value.as_secs_f64())),
            warn: None,
            crit: None,
            min: Some("0".into()),
        }
    }

    /// A count, minimum 0, with ranges (`1:1`: outside 1..1 alerts; `0`: above 0 alerts).
    fn count(label: &'static str, value: u64, warn: Option<&str>, crit: Option<&str>) -> Perf {
        Perf {
            label,
            value: Some(value.to_string()),
            warn: warn.map(String::from),
            crit: crit.map(String::from),
            min: Some("0".into()),
        }
    }
}

impl fmt::Display for Perf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields = [
            self.value.clone().unwrap_or_else(|| "U".into()),
            self.warn.clone().unwrap_or_default(),
            self.crit.clone().unwrap_or_default(),
            self.min.clone().unwrap_or_default(),
        ];
        let text = fields.join(";");
        write!(f, "'{}'={}", self.label, text.trim_end_matches(';'))
    }
}

/// The outcome of a check: its level, the text of its status line and its performance data.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub check: &'static str,
    pub level: Level,
    pub text: String,
    pub perf: Vec<Perf>,
}

impl Report {
    fn new(check: &'static str, level: Level, text: impl Into<String>) -> Report {
        Report {
            check,
            level,
            text: text.into(),
            perf: Vec::new(),
        }
    }

    fn with(mut self, perf: impl IntoIterator<Item = Perf>) -> Report {
        self.perf.extend(perf);
        self
    }
}

impl fmt::Display for Report {
    /// The status line, without its newline: `PRIMGR <CHECK> <LEVEL> - <text> | <perfdata>`.
    /// The text never holds `|` (which starts the performance data) or a line break.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: String = self
            .text
            .chars()
            .map(|c| match c {
                '|' => '/',
                c if c.is_control() => ' ',
                c => c,
            })
            .collect();
        write!(
            f,
            "PRIMGR {} {} - {}",
            self.check,
            self.level.name(),
            text.trim()
        )?;
        if !self.perf.is_empty() {
            let perf: Vec<String> = self.perf.iter().map(Perf::to_string).collect();
            write!(f, " | {}", perf.join(" "))?;
        }
        Ok(())
    }
}

/// What the daemon answered to one request: its status and body, or why there was none.
pub type Answer = Result<(u16, Bytes), String>;

/// Everything a check asked, as it came back.
#[derive(Debug, Clone)]
pub enum Answers {
    /// `/status`.
    Primary(Answer),
    /// `/replica` and `/status`, judged with the lag thresholds.
    Replica {
        thresholds: Thresholds,
        replica: Answer,
        status: Answer,
    },
    /// `/read-only`.
    ReadOnly(Answer),
    /// `/synchronous`.
    Sync(Answer),
    /// The view of `primgr cluster`.
    Cluster(ClusterReport),
}

/// A size for people: `512 bytes`, `46.0 MB`.
fn human(bytes: u64) -> String {
    let mut value = bytes as f64;
    let mut unit = "bytes";
    for next in ["kB", "MB", "GB", "TB"] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if unit == "bytes" {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// `/status`, read with its status code.
fn read_status(answer: &(u16, Bytes)) -> Result<Status, String> {
    Status::read(answer.0, &answer.1).map_err(|e| format!("not a primgr /status answer ({e})"))
}

/// A health check's answer (`/replica`, `/read-only`): 200 or 503 with its body.
fn read_check(path: &str, answer: &(u16, Bytes)) -> Result<CheckBody, String> {
    let (code, body) = answer;
    match code {
        200 | 503 => wire::decode::<CheckBody>(*code, body)
            .map_err(|e| format!("not a primgr {path} answer ({e})")),
        _ => Err(format!(
            "{path} answered HTTP {code}, {}",
            wire::describe_body(body)
        )),
    }
}

impl Answers {
    /// The name of the check in the status line.
    pub fn title(&self) -> &'static str {
        match self {
            Answers::Primary(_) => Check::Primary.title(),
            Answers::Replica { thresholds, .. } => Check::Replica(*thresholds).title(),
            Answers::ReadOnly(_) => Check::ReadOnly.title(),
            Answers::Sync(_) => Check::Sync.title(),
            Answers::Cluster(_) => Check::Cluster.title(),
        }
    }
}

/// The decision: what the daemon at `url` answered (in `elapsed`) as a status line and exit
/// status. Pure.
pub fn judge(url: &str, answers: &Answers, elapsed: Duration) -> Report {
    let title = answers.title();
    let time = Perf::seconds("time", elapsed);
    let no_answer = |e: &str| {
        Report::new(
            title,
            Level::Unknown,
            format!("no answer from the daemon at {url}: {e}"),
        )
        .with([time.clone()])
    };
    let unreadable = |e: String| {
        Report::new(title, Level::Unknown, format!("the daemon at {url}: {e}")).with([time.clone()])
    };
    match answers {
        Answers::Primary(answer) => {
            let status = match answer {
                Err(e) => return no_answer(e),
                Ok(a) => match read_status(a) {
                    Ok(s) => s,
                    Err(e) => return unreadable(e),
                },
            };
            judge_primary(&status).with([time])
        }
        Answers::Replica {
            thresholds,
            replica,
            status,
        } => {
            let body = match replica {
                Err(e) => return no_answer(e),
                Ok(a) => match read_check("/replica", a) {
                    Ok(b) => (a.0, b),
                    Err(e) => return unreadable(e),
                },
            };
            // `/status` only says why a lag is unknown and whether replay is paused.
            let status = status
                .as_ref()
                .ok()
                .and_then(|a| read_status(a).ok())
                .filter(|s| s.node == body.1.node);
            judge_replica(*thresholds, body.0, &body.1, status.as_ref()).with([time])
        }
        Answers::ReadOnly(answer) | Answers::Sync(answer) => {
            let (path, judge): (_, fn(u16, &CheckBody) -> Report) = match answers {
                Answers::Sync(_) => ("/synchronous", judge_sync),
                _ => ("/read-only", judge_read_only),
            };
            let (code, body) = match answer {
                Err(e) => return no_answer(e),
                Ok(a) => match read_check(path, a) {
                    Ok(b) => (a.0, b),
                    Err(e) => return unreadable(e),
                },
            };
            judge(code, &body).with([time])
        }
        Answers::Cluster(report) => match &report.error {
            Some(e) => Report::new(
                title,
                Level::Unknown,
                format!("cannot ask the daemon at {url} for the cluster's members: {e}"),
            )
            .with([time]),
            None => judge_cluster(&report.nodes).with([time]),
        },
    }
}

/// `check primary` from a `/status`: OK only for 200 Primary.
fn judge_primary(s: &Status) -> Report {
    let perf = [
        Perf::count("votes", s.votes, None, None),
        Perf::count("votes_needed", s.votes_needed, None, None),
    ]
    .into_iter()
    .chain(
        s.snapshot_age_ms
            .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
            .map(|age| Perf::seconds("snapshot_age", age)),
    );
    let reason = if s.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", s.reason)
    };
    let report = if State::from_answer(s.code, &s.state) == Some(State::Primary) {
        let drained = match &s.drained {
            Some(d) => format!(" (drained from reads: {})", d.reason),
            None => String::new(),
        };
        Report::new(
            "PRIMARY",
            Level::Ok,
            format!("{} is the primary{reason}{drained}", s.node),
        )
    } else {
        Report::new(
            "PRIMARY",
            Level::Critical,
            format!(
                "{} is {} (HTTP {}), not the primary{reason}",
                s.node, s.state, s.code
            ),
        )
    };
    report.with(perf)
}

/// `check replica` from `/replica` (and `/status`, for why a lag is unknown).
fn judge_replica(t: Thresholds, code: u16, body: &CheckBody, status: Option<&Status>) -> Report {
    let node = &body.node;
    let lag = body.lag_bytes.flatten();
    // No lag at all on a node that is no standby; `U` on a standby whose lag is unknown.
    let perf: Vec<Perf> = body
        .lag_bytes
        .map(|_| Perf::bytes("lag", lag, t))
        .into_iter()
        .collect();
    let report = |level, text: String| Report::new("REPLICA", level, text).with(perf.clone());
    if code != 200 {
        let why = body.reason.as_deref().unwrap_or("no reason given");
        return report(
            Level::Critical,
            format!(
                "{node} ({}) serves no reads as a standby: {why}",
                body.state
            ),
        );
    }
    let replication = status.and_then(|s| s.replication.as_ref());
    let paused = match replication.and_then(|r| r.replay_paused) {
        Some(true) => " (replay paused)",
        _ => "",
    };
    let Some(lag) = lag else {
        let why = replication
            .and_then(|r| r.lag_unknown.clone())
            .unwrap_or_else(|| "the daemon does not know the primary's position".into());
        let level = if t.critical.is_some() {
            Level::Critical
        } else {
            Level::Warning
        };
        return report(
            level,
            format!("{node}: replay lag unknown ({why}); an unknown lag is never OK"),
        );
    };
    let above = |limit: Option<u64>| limit.filter(|l| lag > *l);
    if let Some(c) = above(t.critical) {
        return report(
            Level::Critical,
            format!(
                "{node}: replay lag {} is above --critical {}{paused}",
                human(lag),
                format_size(c)
            ),
        );
    }
    if let Some(w) = above(t.warning) {
        return report(
            Level::Warning,
            format!(
                "{node}: replay lag {} is above --warning {}{paused}",
                human(lag),
                format_size(w)
            ),
        );
    }
    let receiver = body.replication_state.as_deref().unwrap_or("unknown");
    report(
        Level::Ok,
        format!(
            "{node} is a standby ({receiver}), replay lag {}{paused}",
            human(lag)
        ),
    )
}

/// `check sync` from `/synchronous`.
fn judge_sync(code: u16, body: &CheckBody) -> Report {
    judge_answer(
        (
            "SYNC",
            "is a synchronous standby",
            "is not a synchronous standby",
        ),
        code,
        body,
        "",
    )
}

/// `check read-only` from `/read-only`.
fn judge_read_only(code: u16, body: &CheckBody) -> Report {
    let lag = body.lag_bytes.flatten();
    let perf = lag.map(|l| Perf::bytes("lag", Some(l), Thresholds::default()));
    let lag_text = lag
        .map(|l| format!(", replay lag {}", human(l)))
        .unwrap_or_default();
    judge_answer(
        ("READ-ONLY", "serves reads", "serves no reads"),
        code,
        body,
        &lag_text,
    )
    .with(perf)
}

/// A check that is the daemon's own 200 or 503 (`/read-only`, `/synchronous`): OK with what
/// passing means (and `detail` after the state), else CRITICAL with the daemon's reason.
fn judge_answer(
    (title, passes, fails): (&'static str, &str, &str),
    code: u16,
    body: &CheckBody,
    detail: &str,
) -> Report {
    if code == 200 {
        Report::new(
            title,
            Level::Ok,
            format!("{} {passes} ({}{detail})", body.node, body.state),
        )
    } else {
        Report::new(
            title,
            Level::Critical,
            format!(
                "{} ({}) {fails}: {}",
                body.node,
                body.state,
                body.reason.as_deref().unwrap_or("no reason given")
            ),
        )
    }
}

/// `check cluster` from every member's `/status` (as `primgr cluster` gathers them).
fn judge_cluster(nodes: &[NodeReport]) -> Report {
    let primaries: Vec<&str> = nodes
        .iter()
        .filter(|n| n.is_primary())
        .map(|n| n.name.as_str())
        .collect();
    // A member without a readable answer of its own could be a primary that nobody sees.
    let unusable: Vec<&str> = nodes
        .iter()
        .filter(|n| !n.answered() || n.error.is_some())
        .map(|n| n.name.as_str())
        .collect();
    let unconfirmed: Vec<&str> = nodes
        .iter()
        .filter(|n| n.code == Some(State::Unknown.code()) && n.error.is_none())
        .map(|n| n.name.as_str())
        .collect();
    let perf = [
        Perf::count("primaries", primaries.len() as u64, None, Some("1:1")),
        Perf::count("unconfirmed", unconfirmed.len() as u64, Some("0"), None),
        Perf::count("unreachable", unusable.len() as u64, Some("0"), None),
        Perf::count("nodes", nodes.len() as u64, None, None),
    ];
    let states: Vec<String> = nodes
        .iter()
        .map(|n| match (&n.state, &n.error) {
            (Some(s), None) => format!("{} {s}", n.name),
            _ => format!("{} no answer", n.name),
        })
        .collect();
    let states = format!("({})", states.join(", "));
    let (level, text) = if nodes.iter().all(|n| !n.answered()) {
        (
            Level::Unknown,
            format!("no member of the cluster answered {states}"),
        )
    } else {
        match primaries.as_slice() {
            [] => (
                Level::Critical,
                format!("no node answers 200 (Primary) {states}"),
            ),
            [one] if unusable.is_empty() && unconfirmed.is_empty() => {
                (Level::Ok, format!("{one} is the one primary {states}"))
            }
            [one] => {
                let mut why = Vec::new();
                if !unusable.is_empty() {
                    why.push(format!(
                        "{} {} no usable answer and could be another primary",
                        unusable.join(", "),
                        if unusable.len() == 1 { "gives" } else { "give" }
                    ));
                }
                if !unconfirmed.is_empty() {
                    why.push(format!(
                        "{} Unknown (509): writable, but not confirmed by its site",
                        unconfirmed.join(", ")
                    ));
                }
                (
                    Level::Warning,
                    format!("{one} is the one primary, but {} {states}", why.join("; ")),
                )
            }
            many => (
                Level::Critical,
                format!(
                    "SPLIT BRAIN: {} nodes answer 200 (Primary): {} {states}",
                    many.len(),
                    many.join(", ")
                ),
            ),
        }
    };
    Report::new("CLUSTER", level, text).with(perf)
}

/// Reads the arguments: the check with its thresholds, the daemon's address, the timeout.
/// A bad one is an UNKNOWN report that says which and why.
pub fn prepare(args: &Args) -> Result<(Check, Uri, Duration), Report> {
    let title = args.which.title();
    let bad = |what: &str, e: String| Report::new(title, Level::Unknown, format!("{what}: {e}"));
    let check = match &args.which {
        Which::Primary => Check::Primary,
        Which::ReadOnly => Check::ReadOnly,
        Which::Sync => Check::Sync,
        Which::Cluster => Check::Cluster,
        Which::Replica { warning, critical } => {
            let size = |flag: &str, v: &Option<String>| {
                v.as_deref()
                    .map(parse_size)
                    .transpose()
                    .map_err(|e| bad(&format!("bad {flag}"), e))
            };
            let t = Thresholds {
                warning: size("--warning", warning)?,
                critical: size("--critical", critical)?,
            };
            if let (Some(w), Some(c)) = (t.warning, t.critical)
                && w > c
            {
                return Err(bad(
                    "bad thresholds",
                    format!(
                        "--warning {} is above --critical {}",
                        format_size(w),
                        format_size(c)
                    ),
                ));
            }
            Check::Replica(t)
        }
    };
    let timeout = parse_timeout(&args.timeout).map_err(|e| bad("bad --timeout", e))?;
    let url = match (&args.url, &args.config) {
        // No TLS client here: an https address is refused rather than asked in plain HTTP.
        (Some(url), _) => parse_url(url)
            .and_then(|u| match u.scheme_str() {
                Some("https") => Err("https is not supported by primgr check".to_string()),
                _ => Ok(u),
            })
            .map_err(|e| bad("bad --url", e))?,
        (None, Some(path)) => listen_url(path).map_err(|e| bad("bad --config", e))?,
        (None, None) => parse_url(crate::cluster::DEFAULT_URL).map_err(|e| bad("--url", e))?,
    };
    Ok((check, url, timeout))
}

/// The local daemon's API address from its configuration file: its `listen`, with an
/// unspecified address (`0.0.0.0`) asked on the loopback.
fn listen_url(path: &Path) -> Result<Uri, String> {
    let (listen, _) = Source::local_daemon(Some(path.to_path_buf())).map_err(|e| e.to_string())?;
    parse_url(&listen.to_string())
}

/// `http://HOST:PORT` of the daemon asked, as the status line shows it.
fn shown(url: &Uri) -> String {
    match url.authority() {
        Some(a) => format!("http://{a}"),
        None => url.to_string(),
    }
}

/// Asks the daemon at `url` what `check` needs and judges the answers; everything ends by
/// `timeout` (the cluster view takes half of it for each of its two rounds).
pub async fn ask(check: Check, url: &Uri, timeout: Duration) -> Report {
    let started = Instant::now();
    let deadline = started + timeout;
    let client = PeerClient::new(None);
    let get = |path: &'static str| {
        let client = &client;
        async move {
            client
                .get(url, path, deadline)
                .await
                .map_err(|e| e.to_string())
        }
    };
    let work = async {
        match check {
            Check::Primary => Answers::Primary(get("/status").await),
            Check::Replica(thresholds) => {
                let (replica, status) = tokio::join!(get("/replica"), get("/status"));
                Answers::Replica {
                    thresholds,
                    replica,
                    status,
                }
            }
            Check::ReadOnly => Answers::ReadOnly(get("/read-only").await),
            Check::Sync => Answers::Sync(get("/synchronous").await),
            Check::Cluster => Answers::Cluster(crate::cluster::gather(url, timeout / 2).await),
        }
    };
    match tokio::time::timeout_at(deadline + GRACE, work).await {
        Ok(answers) => judge(&shown(url), &answers, started.elapsed()),
        Err(_) => Report::new(
            check.title(),
            Level::Unknown,
            format!(
                "no answer from the daemon at {} within {}",
                shown(url),
                humantime::format_duration(timeout)
            ),
        )
        .with([Perf::seconds("time", started.elapsed())]),
    }
}

/// The whole `primgr check`: reads the arguments, asks, prints the status line on stdout and
/// returns the exit status (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
pub fn command(args: &Args) -> u8 {
    let report = match prepare(args) {
        Err(report) => report,
        Ok((check, url, timeout)) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(ask(check, &url, timeout)),
            Err(e) => Report::new(
                check.title(),
                Level::Unknown,
                format!("cannot start the runtime: {e}"),
            ),
        },
    };
    println!("{report}");
    report.level.code()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const URL: &str = "http://127.0.0.1:5999";
    const MB: u64 = 1 << 20;

    fn ok(code: u16, body: serde_json::Value) -> Answer {
        Ok((code, Bytes::from(body.to_string())))
    }

    fn status(code: u16, state: &str, extra: serde_json::Value) -> Answer {
        let mut doc = json!({"node": "node1", "code": code, "state": state,
            "reason": format!("reason of {state}"), "votes": 3, "votes_needed": 2,
            "snapshot_age_ms": 312.4});
        if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        ok(code, doc)
    }

    fn check_body(code: u16, state: &str, lag: serde_json::Value, reason: Option<&str>) -> Answer {
        let mut doc = json!({"node": "node2", "state": state, "lag_bytes": lag,
            "replication_state": "streaming"});
        if let Some(r) = reason {
            doc["reason"] = json!(r);
        }
        ok(code, doc)
    }

    fn standby_status(lag_unknown: Option<&str>, paused: bool) -> Answer {
        ok(
            202,
            json!({"node": "node2", "code": 202, "state": "Standby", "replication": {
                "lag_bytes": null, "lag_unknown": lag_unknown, "receiver_state": "streaming",
                "replay_paused": paused}}),
        )
    }

    fn line(answers: Answers) -> (u8, String) {
        let r = judge(URL, &answers, Duration::from_millis(3));
        (r.level.code(), r.to_string())
    }

    /// Every case: its check, answers, exit status and what its line must contain.
    #[test]
    fn answers_to_exit_codes_and_lines() {
        let t = |w: Option<u64>, c: Option<u64>| Thresholds {
            warning: w,
            critical: c,
        };
        let both = t(Some(MB), Some(16 * MB));
        let replica = |thresholds: Thresholds, r: Answer| Answers::Replica {
            thresholds,
            replica: r,
            status: standby_status(None, false),
        };
        let cases: Vec<(&str, Answers, u8, &[&str])> = vec![
            (
                "primary: 200 Primary",
                Answers::Primary(status(200, "Primary", json!({}))),
                0,
                &[
                    "PRIMGR PRIMARY OK - node1 is the primary: reason of Primary | ",
                    "'votes'=3;;;0 'votes_needed'=2;;;0 'snapshot_age'=0.312s;;;0 'time'=0.003s;;;0",
                ],
            ),
            (
                "primary: drained, still the primary",
                Answers::Primary(status(
                    200,
                    "Primary",
                    json!({"drained": {"reason": "kernel", "since": "x"}}),
                )),
                0,
                &["OK - node1 is the primary", "(drained from reads: kernel)"],
            ),
            (
                "primary: a standby",
                Answers::Primary(status(202, "Standby", json!({}))),
                2,
                &[
                    "PRIMGR PRIMARY CRITICAL - node1 is Standby (HTTP 202), not the primary: reason of Standby |",
                ],
            ),
            (
                "primary: Unknown (509)",
                Answers::Primary(status(509, "Unknown", json!({}))),
                2,
                &["CRITICAL - node1 is Unknown (HTTP 509)"],
            ),
            (
                "primary: Down",
                Answers::Primary(status(503, "Down", json!({}))),
                2,
                &["CRITICAL - node1 is Down (HTTP 503)"],
            ),
            (
                "primary: a witness",
                Answers::Primary(status(503, "Witness", json!({}))),
                2,
                &["CRITICAL - node1 is Witness"],
            ),
            (
                "primary: a body that says Primary with another code is not read",
                Answers::Primary(ok(
                    200,
                    json!({"node": "node1", "code": 202, "state": "Primary"}),
                )),
                3,
                &["UNKNOWN - the daemon at http://127.0.0.1:5999: not a primgr /status answer"],
            ),
            (
                "primary: not primgr",
                Answers::Primary(Ok((200, Bytes::from_static(b"<html>It works!</html>")))),
                3,
                &["UNKNOWN", "not a primgr /status answer", "It works!"],
            ),
            (
                "primary: no answer",
                Answers::Primary(Err("no answer within 5s".into())),
                3,
                &[
                    "PRIMGR PRIMARY UNKNOWN - no answer from the daemon at http://127.0.0.1:5999: no answer within 5s | 'time'=0.003s;;;0",
                ],
            ),
            (
                "replica: streaming, small lag",
                replica(both, check_body(200, "Standby", json!(4096), None)),
                0,
                &[
                    "PRIMGR REPLICA OK - node2 is a standby (streaming), replay lag 4.0 kB | 'lag'=4096B;1048576;16777216;0 'time'=0.003s;;;0",
                ],
            ),
            (
                "replica: lag at the warning threshold is OK",
                replica(both, check_body(200, "Standby", json!(MB), None)),
                0,
                &["OK - node2 is a standby (streaming), replay lag 1.0 MB"],
            ),
            (
                "replica: above --warning",
                replica(both, check_body(200, "Standby", json!(MB + 1), None)),
                1,
                &[
                    "PRIMGR REPLICA WARNING - node2: replay lag 1.0 MB is above --warning 1MB |",
                    "'lag'=1048577B;",
                ],
            ),
            (
                "replica: above --critical, replay paused",
                Answers::Replica {
                    thresholds: both,
                    replica: check_body(200, "Standby", json!(48 * MB), None),
                    status: standby_status(None, true),
                },
                2,
                &["CRITICAL - node2: replay lag 48.0 MB is above --critical 16MB (replay paused)"],
            ),
            (
                "replica: above --critical without --warning",
                replica(
                    t(None, Some(16 * MB)),
                    check_body(200, "Standby", json!(17 * MB), None),
                ),
                2,
                &["CRITICAL", "'lag'=17825792B;;16777216;0"],
            ),
            (
                "replica: no thresholds, a large lag is OK",
                replica(
                    t(None, None),
                    check_body(200, "Standby", json!(1u64 << 40), None),
                ),
                0,
                &[
                    "OK - node2 is a standby (streaming), replay lag 1.0 TB | 'lag'=1099511627776B;;;0",
                ],
            ),
            (
                "replica: unknown lag without thresholds is a WARNING, with the daemon's why",
                Answers::Replica {
                    thresholds: t(None, None),
                    replica: check_body(200, "Standby", json!(null), None),
                    status: standby_status(Some("the primary's position is not known"), false),
                },
                1,
                &[
                    "WARNING - node2: replay lag unknown (the primary's position is not known); an unknown lag is never OK | 'lag'=U;;;0",
                ],
            ),
            (
                "replica: unknown lag with only --warning",
                replica(
                    t(Some(MB), None),
                    check_body(200, "Standby", json!(null), None),
                ),
                1,
                &[
                    "WARNING - node2: replay lag unknown (the daemon does not know the primary's position)",
                    "'lag'=U;1048576;;0",
                ],
            ),
            (
                "replica: unknown lag with --critical",
                replica(both, check_body(200, "Standby", json!(null), None)),
                2,
                &[
                    "CRITICAL - node2: replay lag unknown",
                    "'lag'=U;1048576;16777216;0",
                ],
            ),
            (
                "replica: /status unreadable, still judged by /replica",
                Answers::Replica {
                    thresholds: both,
                    replica: check_body(200, "Standby", json!(null), None),
                    status: Err("no answer within 5s".into()),
                },
                2,
                &["CRITICAL - node2: replay lag unknown (the daemon does not know"],
            ),
            (
                "replica: /replica fails on the primary, which has no lag at all",
                replica(
                    both,
                    ok(
                        503,
                        json!({"node": "node1", "state": "Primary",
                            "reason": "not in recovery: not a replica"}),
                    ),
                ),
                2,
                &[
                    "PRIMGR REPLICA CRITICAL - node1 (Primary) serves no reads as a standby: not in recovery: not a replica | 'time'=0.003s;;;0",
                ],
            ),
            (
                "replica: drained",
                replica(
                    t(None, None),
                    check_body(
                        503,
                        "Standby",
                        json!(0),
                        Some("drained by an operator: kernel"),
                    ),
                ),
                2,
                &[
                    "CRITICAL - node2 (Standby) serves no reads as a standby: drained by an operator: kernel",
                ],
            ),
            (
                "replica: an old daemon without /replica",
                replica(both, ok(404, json!({"error": "not found"}))),
                3,
                &[
                    "UNKNOWN - the daemon at http://127.0.0.1:5999: /replica answered HTTP 404, unexpected body",
                ],
            ),
            (
                "replica: refused",
                Answers::Replica {
                    thresholds: both,
                    replica: Err("request failed: connection refused".into()),
                    status: Err("request failed: connection refused".into()),
                },
                3,
                &[
                    "UNKNOWN - no answer from the daemon at http://127.0.0.1:5999: request failed: connection refused",
                ],
            ),
            (
                "sync: a synchronous standby",
                Answers::Sync(check_body(200, "Standby", json!(0), None)),
                0,
                &["PRIMGR SYNC OK - node2 is a synchronous standby (Standby)"],
            ),
            (
                "sync: an asynchronous standby",
                Answers::Sync(check_body(
                    503,
                    "Standby",
                    json!(0),
                    Some("the primary lists it as async"),
                )),
                2,
                &[
                    "PRIMGR SYNC CRITICAL - node2 (Standby) is not a synchronous standby: the primary lists it as async",
                ],
            ),
            (
                "sync: a 503 that is not a check body",
                Answers::Sync(ok(503, json!({"error": "too many connections"}))),
                3,
                &["UNKNOWN", "not a primgr /synchronous answer"],
            ),
            (
                "read-only: a standby",
                Answers::ReadOnly(check_body(200, "Standby", json!(0), None)),
                0,
                &[
                    "PRIMGR READ-ONLY OK - node2 serves reads (Standby, replay lag 0 bytes) | 'lag'=0B;;;0",
                ],
            ),
            (
                "read-only: the primary",
                Answers::ReadOnly(ok(200, json!({"node": "node1", "state": "Primary"}))),
                0,
                &["OK - node1 serves reads (Primary) | 'time'="],
            ),
            (
                "read-only: down",
                Answers::ReadOnly(check_body(
                    503,
                    "Down",
                    json!(null),
                    Some("the local database is unusable"),
                )),
                2,
                &["CRITICAL - node2 (Down) serves no reads: the local database is unusable"],
            ),
            (
                "read-only: a 503 that is not a check body",
                Answers::ReadOnly(ok(503, json!({"error": "too many connections"}))),
                3,
                &["UNKNOWN", "not a primgr /read-only answer"],
            ),
        ];
        let mut n = 0;
        for (name, answers, code, wanted) in cases {
            let (got, text) = line(answers);
            assert_eq!(got, code, "{name}: {text}");
            for w in wanted {
                assert!(text.contains(w), "{name}: {text:?} lacks {w:?}");
            }
            assert!(!text.contains('\n'), "{name}: {text:?}");
            assert_eq!(text.matches('|').count(), 1, "{name}: {text:?}");
            n += 1;
        }
        println!("{n} answers judged: exit status and status line as expected");
    }

    fn node(name: &str, code: u16, state: &str) -> NodeReport {
        let body = json!({"node": name, "code": code, "state": state});
        NodeReport::from_status(name, None, None, code, body.to_string().as_bytes())
    }

    fn gone(name: &str) -> NodeReport {
        NodeReport::failed(name, None, None, "request failed: refused".into())
    }

    #[test]
    fn cluster_views_to_exit_codes() {
        let view = |nodes: Vec<NodeReport>| {
            Answers::Cluster(ClusterReport {
                url: URL.into(),
                error: None,
                notes: vec![],
                nodes,
            })
        };
        let p = |n| node(n, 200, "Primary");
        let s = |n| node(n, 202, "Standby");
        let cases: Vec<(&str, Answers, u8, &[&str])> = vec![
            (
                "one primary, all answer",
                view(vec![
                    p("node1"),
                    s("node2"),
                    s("node3"),
                    node("w", 503, "Witness"),
                ]),
                0,
                &[
                    "PRIMGR CLUSTER OK - node1 is the one primary (node1 Primary, node2 Standby, node3 Standby, w Witness) | 'primaries'=1;;1:1;0 'unconfirmed'=0;0;;0 'unreachable'=0;0;;0 'nodes'=4;;;0 'time'=",
                ],
            ),
            (
                "one primary, a standby down (its daemon answers 503)",
                view(vec![p("node1"), node("node2", 503, "Down")]),
                0,
                &["OK - node1 is the one primary (node1 Primary, node2 Down)"],
            ),
            (
                "one primary, a member unreachable",
                view(vec![p("node1"), s("node2"), gone("node3")]),
                1,
                &[
                    "WARNING - node1 is the one primary, but node3 gives no usable answer and could be another primary (node1 Primary",
                    "'unreachable'=1;0;;0",
                ],
            ),
            (
                "one primary, another node's daemon at a member's address",
                view(vec![
                    p("node1"),
                    NodeReport::from_status(
                        "node2",
                        None,
                        None,
                        200,
                        json!({"node": "node1", "code": 200, "state": "Primary"})
                            .to_string()
                            .as_bytes(),
                    ),
                ]),
                1,
                &["WARNING - node1 is the one primary, but node2 gives no usable answer"],
            ),
            (
                "one primary, a stale writable old primary (509)",
                view(vec![node("node1", 509, "Unknown"), p("node2"), s("node3")]),
                1,
                &[
                    "WARNING - node2 is the one primary, but node1 Unknown (509)",
                    "'unconfirmed'=1;0;;0",
                ],
            ),
            (
                "no primary",
                view(vec![node("node1", 503, "Down"), s("node2"), s("node3")]),
                2,
                &[
                    "PRIMGR CLUSTER CRITICAL - no node answers 200 (Primary) (node1 Down, node2 Standby, node3 Standby)",
                    "'primaries'=0;;1:1;0",
                ],
            ),
            (
                "split brain",
                view(vec![p("node1"), p("node2"), s("node3")]),
                2,
                &[
                    "CRITICAL - SPLIT BRAIN: 2 nodes answer 200 (Primary): node1, node2",
                    "'primaries'=2;;1:1;0",
                ],
            ),
            (
                "nobody answered",
                view(vec![gone("node1"), gone("node2")]),
                3,
                &["UNKNOWN - no member of the cluster answered"],
            ),
            (
                "the members could not be learned",
                Answers::Cluster(ClusterReport {
                    url: URL.into(),
                    error: Some("no answer within 2.5s".into()),
                    notes: vec![],
                    nodes: vec![],
                }),
                3,
                &[
                    "UNKNOWN - cannot ask the daemon at http://127.0.0.1:5999 for the cluster's members: no answer within 2.5s",
                ],
            ),
        ];
        let mut n = 0;
        for (name, answers, code, wanted) in cases {
            let (got, text) = line(answers);
            assert_eq!(got, code, "{name}: {text}");
            for w in wanted {
                assert!(text.contains(w), "{name}: {text:?} lacks {w:?}");
            }
            n += 1;
        }
        println!("{n} cluster views judged");
    }

    /// A daemon's numbers are input: absurd ones are left out of the performance data, never
    /// a panic.
    #[test]
    fn absurd_numbers_from_the_daemon_are_left_out() {
        for age in ["-5.0", "1e300", "null"] {
            let body = format!(
                r#"{{"node":"node1","code":200,"state":"Primary","snapshot_age_ms":{age}}}"#
            );
            let r = judge(
                URL,
                &Answers::Primary(Ok((200, Bytes::from(body)))),
                Duration::ZERO,
            );
            assert_eq!(r.level, Level::Ok, "{r}");
            assert!(!r.to_string().contains("snapshot_age"), "{age}: {r}");
        }
    }

    #[test]
    fn the_line_never_breaks_or_starts_perfdata_early() {
        let r = judge(
            URL,
            &Answers::Primary(status(
                503,
                "Down",
                json!({"reason": "cannot connect:\nFATAL | role \"x\"\r"}),
            )),
            Duration::ZERO,
        );
        let text = r.to_string();
        assert_eq!(r.level, Level::Critical);
        assert!(
            text.contains("cannot connect: FATAL / role \"x\" | 'votes'"),
            "{text:?}"
        );
        assert_eq!(text.matches('|').count(), 1, "{text:?}");
    }

    fn args(which: Which, url: Option<&str>, timeout: &str) -> Args {
        Args {
            which,
            url: url.map(String::from),
            config: None,
            timeout: timeout.into(),
        }
    }

    fn replica_args(w: Option<&str>, c: Option<&str>) -> Args {
        args(
            Which::Replica {
                warning: w.map(String::from),
                critical: c.map(String::from),
            },
            None,
            "5s",
        )
    }

    #[test]
    fn arguments_are_read_or_unknown() {
        let (check, url, timeout) = prepare(&replica_args(Some("1MB"), Some("16MB"))).unwrap();
        assert_eq!(
            check,
            Check::Replica(Thresholds {
                warning: Some(MB),
                critical: Some(16 * MB)
            })
        );
        assert_eq!(url.to_string(), "http://127.0.0.1:5999/");
        assert_eq!(timeout, Duration::from_secs(5));
        let (_, url, timeout) =
            prepare(&args(Which::Primary, Some("10.0.0.1:6000"), "250ms")).unwrap();
        assert_eq!(
            (url.to_string(), timeout),
            ("http://10.0.0.1:6000/".into(), Duration::from_millis(250))
        );
        let mut n = 2;
        for (a, want) in [
            (
                replica_args(Some("1XB"), None),
                "PRIMGR REPLICA UNKNOWN - bad --warning: unknown unit",
            ),
            (replica_args(None, Some("-1")), "bad --critical"),
            (
                replica_args(Some("16MB"), Some("1MB")),
                "bad thresholds: --warning 16MB is above --critical 1MB",
            ),
            (
                args(Which::Primary, Some("https://db1:5999"), "5s"),
                "PRIMGR PRIMARY UNKNOWN - bad --url",
            ),
            (
                args(Which::Cluster, None, "0s"),
                "PRIMGR CLUSTER UNKNOWN - bad --timeout: must be more than zero",
            ),
            (
                args(Which::ReadOnly, None, "soon"),
                "PRIMGR READ-ONLY UNKNOWN - bad --timeout",
            ),
        ] {
            let r = prepare(&a).unwrap_err();
            assert_eq!(r.level, Level::Unknown);
            assert!(r.to_string().contains(want), "{r}");
            n += 1;
        }
        let missing = Args {
            config: Some("/nonexistent/primgr.toml".into()),
            ..args(Which::Primary, None, "5s")
        };
        assert!(
            prepare(&missing)
                .unwrap_err()
                .to_string()
                .contains("bad --config")
        );
        println!("{} argument sets read or refused as UNKNOWN", n + 1);
    }

    #[test]
    fn listen_comes_from_the_configuration() {
        let dir = std::env::temp_dir().join(format!("primgr-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("primgr.toml");
        for (listen, want) in [
            ("127.0.0.7:6001", "http://127.0.0.7:6001/"),
            ("0.0.0.0:6002", "http://127.0.0.1:6002/"),
        ] {
            std::fs::write(&file, format!("listen = \"{listen}\"\n")).unwrap();
            let a = Args {
                config: Some(file.clone()),
                ..args(Which::Primary, None, "5s")
            };
            assert_eq!(prepare(&a).unwrap().1.to_string(), want);
            // --url wins over the file.
            let a = Args {
                url: Some("127.0.0.9:7000".into()),
                ..a
            };
            assert_eq!(prepare(&a).unwrap().1.to_string(), "http://127.0.0.9:7000/");
        }
        std::fs::write(&file, "listen = \"nowhere\"\n").unwrap();
        let a = Args {
            config: Some(file.clone()),
            ..args(Which::Primary, None, "5s")
        };
        let e = prepare(&a).unwrap_err().to_string();
        assert!(e.contains("bad --config") && e.contains("listen"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn perfdata_format() {
        let t = Thresholds {
            warning: Some(1),
            critical: None,
        };
        assert_eq!(Perf::bytes("lag", Some(5), t).to_string(), "'lag'=5B;1;;0");
        assert_eq!(Perf::bytes("lag", None, t).to_string(), "'lag'=U;1;;0");
        assert_eq!(
            Perf::seconds("time", Duration::from_millis(2)).to_string(),
            "'time'=0.002s;;;0"
        );
        assert_eq!(
            Perf::count("primaries", 1, None, Some("1:1")).to_string(),
            "'primaries'=1;;1:1;0"
        );
        assert_eq!(human(0), "0 bytes");
        assert_eq!(human(1023), "1023 bytes");
        assert_eq!(human(1536), "1.5 kB");
        assert_eq!(human(48 * MB), "48.0 MB");
    }
}
