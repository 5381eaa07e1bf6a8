//! The Prometheus alert rules of `contrib/prometheus/primgr-rules.yml` on what a real cluster's
//! primgrs export. A four-node lab (node1..node3 in dc1, node4 in dc2) with a daemon per node
//! is scraped every second (every node's `/metrics`) through three phases:
//! 1. healthy: node1 the primary;
//! 2. a failover: node1's database stops, and node2 is promoted (`repmgr standby promote`,
//!    node3 and node4 follow) only once no node has answered Primary for PrimgrNoPrimary's
//!    `for` and 5 s more (repmgrd's own detection takes a minute by default);
//! 3. a split brain: node1 started again read-write without rejoin; meanwhile node4's daemon
//!    is stopped (a target that no longer answers).
//!
//! The samples become a promtool unit test, as Prometheus would have stored them (the target
//! labels `job`, `instance`, `node`, `site`; `up` 1 or 0 per scrape; a staleness marker for a
//! series that a scrape no longer shows), with what each phase must show in `ALERTS` (pending
//! and firing alerts, as the rule manager writes them): nothing at all while healthy,
//! PrimgrTwoPrimaries never (primgr never answers 200 on two nodes: the old primary answers
//! 509), PrimgrNoPrimary from `for` after the gap began until node2's first 200,
//! PrimgrSplitBrain and PrimgrShortOfVotes (node1) and PrimgrDaemonDown (node4) from `for`
//! after their conditions began. `promtool test rules` (Debian's `prometheus` package) runs
//! it; the file stays in a temporary directory when it fails. The same file against rules
//! whose PrimgrSplitBrain does not count Unknown must fail, so the checks can fail. Lab
//! subnet 131 is this file's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Fleet, settle_bound};
use primgr_lab::{Lab, LabSpec, StopMode, http, wait};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/prometheus/primgr-rules.yml"
);
/// Scrape and rule evaluation interval: one slot of the recording.
const STEP: Duration = Duration::from_secs(1);
/// A scrape that takes longer fails (`up` 0), as with Prometheus' `scrape_timeout`.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);
/// The scrape job's name, as the rules expect it.
const JOB: &str = "primgr";
/// Length of the healthy phase, in slots.
const HEALTHY: usize = 20;
/// How long a condition is kept beyond an alert's `for`, in slots.
const MARGIN: usize = 5;
/// Prometheus' lookback: a sample older than this is not seen.
const LOOKBACK: usize = 300;

/// What the rules file says of one alert: its `for` and its `severity` label.
#[derive(Debug, Clone)]
struct Rule {
    for_: Duration,
    severity: String,
}

/// The alerts of the rules file (a line reader: `- alert:`, then its `for:` and `severity:`).
fn rules() -> BTreeMap<String, Rule> {
    let text = std::fs::read_to_string(RULES).unwrap_or_else(|e| panic!("{RULES}: {e}"));
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Option<Duration>, Option<String>)> = None;
    let mut finish = |c: Option<(String, Option<Duration>, Option<String>)>| {
        if let Some((name, for_, severity)) = c {
            let rule = Rule {
                for_: for_.unwrap_or_default(),
                severity: severity.unwrap_or_else(|| panic!("{name} has no severity")),
            };
            out.insert(name, rule);
        }
    };
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            finish(current.take());
            current = Some((name.trim().to_string(), None, None));
        } else if let Some((_, for_, severity)) = current.as_mut() {
            if let Some(v) = line.strip_prefix("for:") {
                *for_ = Some(humantime::parse_duration(v.trim()).expect("for: a duration"));
            } else if let Some(v) = line.strip_prefix("severity:") {
                *severity = Some(v.trim().to_string());
            }
        }
    }
    finish(current.take());
    out
}

/// A duration in slots.
fn slots(d: Duration) -> usize {
    (d.as_millis() / STEP.as_millis()) as usize
}

/// One scrape target: a node's daemon.
#[derive(Debug, Clone)]
struct Target {
    node: String,
    site: String,
    addr: SocketAddr,
}

impl Target {
    /// The labels Prometheus gives the target's series (scrape.yml's static labels).
    fn labels(&self) -> BTreeMap<String, String> {
        [
            ("job", JOB.to_string()),
            ("instance", self.addr.to_string()),
            ("node", self.node.clone()),
            ("site", self.site.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// A series in Prometheus' notation: `name{label="value",...}`, labels sorted.
fn series_name(name: &str, labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{name}{{{}}}", inner.join(","))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Point {
    Value(f64),
    Stale,
}

/// What Prometheus would have stored.
#[derive(Debug, Default)]
struct Recording {
    targets: Vec<Target>,
    /// Series -> slot -> point.
    series: BTreeMap<String, BTreeMap<usize, Point>>,
    /// Each target's series (by node) in its last successful scrape.
    present: BTreeMap<String, BTreeSet<String>>,
    /// Slots 0..slots are recorded.
    slots: usize,
    scrapes: usize,
    failed: usize,
}

type Samples = Vec<(String, BTreeMap<String, String>, f64)>;

impl Recording {
    /// One scrape of `target` in `slot`: its samples, or why it failed.
    fn record(&mut self, slot: usize, target: &Target, scraped: Result<Samples, String>) {
        let labels = target.labels();
        let up = u8::from(scraped.is_ok());
        self.series
            .entry(series_name("up", &labels))
            .or_default()
            .insert(slot, Point::Value(up.into()));
        let mut now = BTreeSet::new();
        self.scrapes += 1;
        match scraped {
            Ok(samples) => {
                for (name, metric_labels, value) in samples {
                    let mut all = metric_labels;
                    all.extend(labels.clone());
                    let key = series_name(&name, &all);
                    self.series
                        .entry(key.clone())
                        .or_default()
                        .insert(slot, Point::Value(value));
                    now.insert(key);
                }
            }
            Err(_) => self.failed += 1,
        }
        let before = self.present.insert(target.node.clone(), now.clone());
        for gone in before.unwrap_or_default().difference(&now) {
            self.series
                .entry(gone.clone())
                .or_default()
                .insert(slot, Point::Stale);
        }
        self.slots = self.slots.max(slot + 1);
    }

    fn target(&self, node: &str) -> &Target {
        self.targets
            .iter()
            .find(|t| t.node == node)
            .unwrap_or_else(|| panic!("no target {node}"))
    }

    /// The key of `node`'s series `name` with the extra labels `extra`.
    fn key(&self, name: &str, node: &str, extra: &[(&str, &str)]) -> String {
        let mut labels = self.target(node).labels();
        labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        series_name(name, &labels)
    }

    /// The value an instant query sees at `slot`: the latest sample within the lookback, none
    /// after a staleness marker.
    fn value_at(&self, key: &str, slot: usize) -> Option<f64> {
        let (at, point) = self.series.get(key)?.range(..=slot).next_back()?;
        match point {
            Point::Value(v) if slot - at <= LOOKBACK => Some(*v),
            _ => None,
        }
    }

    fn value(&self, name: &str, node: &str, extra: &[(&str, &str)], slot: usize) -> Option<f64> {
        self.value_at(&self.key(name, node, extra), slot)
    }

    fn state(&self, node: &str, state: &str, slot: usize) -> Option<f64> {
        self.value("primgr_state", node, &[("state", state)], slot)
    }

    /// No node answers Primary, and at least one is seen.
    fn no_primary(&self, slot: usize) -> bool {
        let seen: Vec<f64> = self
            .targets
            .iter()
            .filter_map(|t| self.state(&t.node, "Primary", slot))
            .collect();
        !seen.is_empty() && seen.iter().all(|v| *v == 0.0)
    }

    /// node1 answers Unknown (writable, unconfirmed) while node2 answers Primary.
    fn split_brain(&self, slot: usize) -> bool {
        self.state("node1", "Unknown", slot) == Some(1.0)
            && self.state("node2", "Primary", slot) == Some(1.0)
    }

    /// `node` holds fewer votes than it needs.
    fn short_of_votes(&self, node: &str, slot: usize) -> bool {
        match (
            self.value("primgr_votes", node, &[], slot),
            self.value("primgr_votes_needed", node, &[], slot),
        ) {
            (Some(v), Some(n)) => v < n,
            _ => false,
        }
    }

    fn down(&self, node: &str, slot: usize) -> bool {
        self.value("up", node, &[], slot) == Some(0.0)
    }

    /// The first slot from `from` on where `cond` holds, and for how many slots in a row
    /// it holds from there (up to the last recorded slot).
    fn run(&self, from: usize, cond: impl Fn(usize) -> bool) -> Option<(usize, usize)> {
        let start = (from..self.slots).find(|s| cond(*s))?;
        let len = (start..self.slots).take_while(|s| cond(*s)).count();
        Some((start, len))
    }

    /// The promtool input series.
    fn input_series(&self) -> String {
        let mut out = String::new();
        for (key, points) in &self.series {
            let values: Vec<String> = (0..self.slots)
                .map(|s| match points.get(&s) {
                    Some(Point::Value(v)) => format!("{v}"),
                    Some(Point::Stale) => "stale".into(),
                    None => "_".into(),
                })
                .collect();
            let _ = writeln!(
                out,
                "      - series: {}\n        values: '{}'",
                yaml_quote(key),
                values.join(" ")
            );
        }
        out
    }
}

fn yaml_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Scrapes every target once per [`STEP`] into a shared [`Recording`].
struct Recorder {
    recording: Arc<Mutex<Recording>>,
    t0: tokio::time::Instant,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// One scrape: the samples of `/metrics`, or why there are none.
async fn scrape(addr: SocketAddr) -> Result<Samples, String> {
    let r = http::get(addr, "/metrics", SCRAPE_TIMEOUT)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if r.status != 200 {
        return Err(format!("status {}", r.status));
    }
    let parsed = prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("not the text format: {e}"))?;
    Ok(parsed
        .samples
        .into_iter()
        .filter_map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some((s.metric, labels, v))
        })
        .collect())
}

impl Recorder {
    fn start(targets: Vec<Target>) -> Recorder {
        let recording = Arc::new(Mutex::new(Recording {
            targets: targets.clone(),
            ..Recording::default()
        }));
        let t0 = tokio::time::Instant::now();
        let (tx, mut rx) = oneshot::channel();
        let shared = recording.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(t0, STEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = &mut rx => return,
                    at = tick.tick() => {
                        let slot = ((at - t0).as_millis() / STEP.as_millis()) as usize;
                        let results =
                            wait::join_all(targets.iter().map(|t| scrape(t.addr)).collect()).await;
                        let mut rec = shared.lock().expect("recording");
                        for (t, r) in targets.iter().zip(results) {
                            rec.record(slot, t, r);
                        }
                    }
                }
            }
        });
        Recorder {
            recording,
            t0,
            stop: Some(tx),
            task,
        }
    }

    /// The slot of this moment (the next scrape records into it or a later one).
    fn slot(&self) -> usize {
        (self.t0.elapsed().as_millis() / STEP.as_millis()) as usize
    }

    /// Waits (checking every 200 ms) until `check` holds on the recording; panics after
    /// `within`.
    async fn wait(&self, what: &str, within: Duration, check: impl Fn(&Recording) -> bool) {
        let t0 = Instant::now();
        loop {
            if check(&self.recording.lock().expect("recording")) {
                return;
            }
            assert!(
                t0.elapsed() < within,
                "{what}: not within {within:?} ({} slots recorded)",
                self.recording.lock().expect("recording").slots
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn finish(mut self) -> Recording {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("recorder task");
        Arc::try_unwrap(self.recording)
            .expect("recording no longer shared")
            .into_inner()
            .expect("recording")
    }
}

/// One promql_expr_test: at `slot`, `expr` returns exactly `samples` (each with value 1).
struct Check {
    slot: usize,
    expr: String,
    samples: Vec<String>,
}

/// `ALERTS{alertname=...,alertstate="firing",...}` with the alert's labels.
fn firing(alert: &str, rule: &Rule, labels: &[(&str, &str)]) -> String {
    let mut all: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.insert("alertname".into(), alert.into());
    all.insert("alertstate".into(), "firing".into());
    all.insert("severity".into(), rule.severity.clone());
    series_name("ALERTS", &all)
}

fn firing_expr(alert: &str) -> String {
    format!("ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}")
}

/// The promtool test file of the rules at `rules`.
fn test_file(rules: &str, rec: &Recording, checks: &[Check]) -> String {
    let mut out = format!(
        "# Generated by tests/alerts.rs from a lab run's /metrics, one sample per {STEP:?}.\n\
         rule_files:\n  - {}\nevaluation_interval: {}s\ntests:\n  - interval: {}s\n    \
         input_series:\n",
        yaml_quote(rules),
        STEP.as_secs(),
        STEP.as_secs()
    );
    out.push_str(&rec.input_series());
    out.push_str("    promql_expr_test:\n");
    for c in checks {
        let _ = writeln!(
            out,
            "      - expr: {}\n        eval_time: {}s\n        exp_samples:{}",
            yaml_quote(&c.expr),
            c.slot as u64 * STEP.as_secs(),
            if c.samples.is_empty() { " []" } else { "" }
        );
        for s in &c.samples {
            let _ = writeln!(
                out,
                "          - labels: {}\n            value: 1",
                yaml_quote(s)
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_on_a_real_failover_and_split_brain() {
    let rules = rules();
    let rule = |name: &str| -> Rule {
        rules
            .get(name)
            .unwrap_or_else(|| panic!("{RULES} has no alert {name}"))
            .clone()
    };
    let no_primary = rule("PrimgrNoPrimary");
    let split = rule("PrimgrSplitBrain");
    let short = rule("PrimgrShortOfVotes");
    let down = rule("PrimgrDaemonDown");
    // Checked never to be even pending, below: it must exist.
    rule("PrimgrTwoPrimaries");
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    assert!(
        promtool.is_ok_and(|o| o.status.success()),
        "promtool is missing: contrib/install-deps installs it (Debian's prometheus package)"
    );

    let lab = Lab::build(LabSpec::standard(131))
        .await
        .expect("lab builds");
    let mut fleet = Fleet::start(&lab).await;
    fleet.wait_normal().await;
    fleet
        .wait_json("node1", "/status", settle_bound(), |s| s["votes"] == 3)
        .await;
    let targets: Vec<Target> = lab
        .node_names()
        .into_iter()
        .map(|node| Target {
            site: lab.location(&node).expect("location"),
            addr: fleet.addr(&node),
            node,
        })
        .collect();
    let recorder = Recorder::start(targets);
    let bound = |d: Duration| d + settle_bound() * 2;

    // 1. Healthy.
    recorder
        .wait("the healthy phase", bound(STEP * HEALTHY as u32), |r| {
            r.slots >= HEALTHY
        })
        .await;
    let healthy_end = recorder.slot();

    // 2. Failover: node1's database stops; node2 is promoted once no primary has been seen
    // for PrimgrNoPrimary's `for` and MARGIN slots more.
    lab.stop("node1", StopMode::Immediate)
        .await
        .expect("stop node1");
    let stopped = recorder.slot();
    let gap_for = slots(no_primary.for_);
    recorder
        .wait(
            "no primary for PrimgrNoPrimary's `for`",
            bound(no_primary.for_),
            |r| {
                r.run(stopped, |s| r.no_primary(s))
                    .is_some_and(|(_, len)| len >= gap_for + MARGIN)
            },
        )
        .await;
    let promoted = recorder.slot();
    lab.promote("node2").await.expect("promote node2");
    for n in ["node3", "node4"] {
        lab.follow(n).await.expect("follow");
    }
    fleet.wait_after_failover().await;

    // 3. Split brain: node1 back read-write without rejoin; node4's daemon stops.
    lab.start("node1").await.expect("start node1");
    let restarted = recorder.slot();
    fleet
        .wait_codes(&[("node1", 509), ("node2", 200)], settle_bound())
        .await;
    fleet
        .daemons
        .get_mut("node4")
        .expect("node4's daemon")
        .stop()
        .await;
    let daemon_stopped = recorder.slot();
    let longest = [&split, &short, &down]
        .iter()
        .map(|r| slots(r.for_))
        .max()
        .unwrap_or(0);
    recorder
        .wait(
            "the split brain and node4's silence for their alerts' `for`",
            bound(STEP * (longest + MARGIN) as u32),
            |r| {
                let lasts = |from, cond: &dyn Fn(usize) -> bool| {
                    r.run(from, cond)
                        .is_some_and(|(s, len)| s + len == r.slots && len >= longest + MARGIN)
                };
                lasts(restarted, &|s| r.split_brain(s))
                    && lasts(restarted, &|s| r.short_of_votes("node1", s))
                    && lasts(daemon_stopped, &|s| r.down("node4", s))
            },
        )
        .await;
    let rec = recorder.finish().await;
    fleet.stop_all().await;
    lab.teardown().await.expect("teardown");

    // What each phase must show, from the recording.
    let end = rec.slots;
    let mut checks = Vec::new();
    for slot in 0..healthy_end.min(end) {
        checks.push(Check {
            slot,
            expr: "ALERTS".into(),
            samples: vec![],
        });
    }
    let healthy_checks = checks.len();
    // Never two 200s in a site, in any phase: not even pending.
    for slot in 0..end {
        checks.push(Check {
            slot,
            expr: "ALERTS{alertname=\"PrimgrTwoPrimaries\"}".into(),
            samples: vec![],
        });
    }
    // The firing window of `alert` for a condition that began at `start` and held `len`
    // slots: not yet at `start + for - 1`, firing from `start + for` while it holds, resolved
    // on the first slot it no longer holds.
    let mut window = |alert: &str, rule: &Rule, sample: String, start: usize, len: usize| {
        let for_ = slots(rule.for_);
        assert!(
            len > for_,
            "{alert}: its condition lasted {len} s, not past its `for`"
        );
        let expr = firing_expr(alert);
        checks.push(Check {
            slot: start + for_ - 1,
            expr: expr.clone(),
            samples: vec![],
        });
        for slot in start + for_..start + len {
            checks.push(Check {
                slot,
                expr: expr.clone(),
                samples: vec![sample.clone()],
            });
        }
        if start + len < end {
            checks.push(Check {
                slot: start + len,
                expr,
                samples: vec![],
            });
        }
        len - for_
    };

    let (gap_start, gap_len) = rec
        .run(stopped, |s| rec.no_primary(s))
        .expect("a slot without a primary after node1 stopped");
    assert!(
        gap_start <= stopped + 5,
        "node1 stopped answering Primary {} s after its database stopped",
        gap_start - stopped
    );
    assert!(
        gap_start + gap_len >= promoted,
        "a primary answered before node2 was promoted"
    );
    let fired_gap = window(
        "PrimgrNoPrimary",
        &no_primary,
        firing("PrimgrNoPrimary", &no_primary, &[("job", JOB)]),
        gap_start,
        gap_len,
    );
    let (split_start, split_len) = rec
        .run(restarted, |s| rec.split_brain(s))
        .expect("node1 Unknown beside node2 Primary");
    let site = rec.target("node1").site.clone();
    let fired_split = window(
        "PrimgrSplitBrain",
        &split,
        firing("PrimgrSplitBrain", &split, &[("job", JOB), ("site", &site)]),
        split_start,
        split_len,
    );
    // A node's alerts carry its target labels.
    let node1 = rec.target("node1").labels();
    let node1: Vec<(&str, &str)> = node1
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (short_start, short_len) = rec
        .run(restarted, |s| rec.short_of_votes("node1", s))
        .expect("node1 short of votes");
    let fired_short = window(
        "PrimgrShortOfVotes",
        &short,
        firing("PrimgrShortOfVotes", &short, &node1),
        short_start,
        short_len,
    );
    let node4 = rec.target("node4").labels();
    let node4: Vec<(&str, &str)> = node4
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (down_start, down_len) = rec
        .run(daemon_stopped, |s| rec.down("node4", s))
        .expect("node4 not scraped");
    let fired_down = window(
        "PrimgrDaemonDown",
        &down,
        firing("PrimgrDaemonDown", &down, &node4),
        down_start,
        down_len,
    );
    // At the end exactly these fire: nothing else.
    checks.push(Check {
        slot: end - 1,
        expr: "ALERTS{alertstate=\"firing\"}".into(),
        samples: vec![
            firing("PrimgrSplitBrain", &split, &[("job", JOB), ("site", &site)]),
            firing("PrimgrShortOfVotes", &short, &node1),
            firing("PrimgrDaemonDown", &down, &node4),
        ],
    });

    let dir = std::env::temp_dir().join(format!("primgr-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("alerts.test.yml");
    std::fs::write(&path, test_file(RULES, &rec, &checks)).expect("write the promtool test");
    let (ok, text) = promtool_test(&path);
    println!(
        "recorded {end} s: {} scrapes ({} failed), {} series; healthy {healthy_end} s; \
         node1 stopped at {stopped} s, no primary from {gap_start} s for {gap_len} s \
         (node2 promoted at {promoted} s); node1 restarted at {restarted} s, split brain from \
         {split_start} s; node4's daemon stopped at {daemon_stopped} s",
        rec.scrapes,
        rec.failed,
        rec.series.len()
    );
    println!(
        "{} checks ({healthy_checks} healthy slots without any alert, {end} slots without \
         PrimgrTwoPrimaries); firing slots: PrimgrNoPrimary {fired_gap}, PrimgrSplitBrain \
         {fired_split}, PrimgrShortOfVotes {fired_short}, PrimgrDaemonDown {fired_down}",
        checks.len()
    );
    println!("promtool test rules {}:\n{text}", path.display());
    assert!(
        ok,
        "promtool test rules failed (the file is kept: {})",
        path.display()
    );

    // The same checks fail on rules that miss this split brain (Unknown not counted as
    // read-write): they can fail.
    let rules_text = std::fs::read_to_string(RULES).expect("rules");
    let weak = rules_text.replace(r#"state=~"Primary|Unknown""#, r#"state=~"Primary""#);
    assert_ne!(weak, rules_text, "PrimgrSplitBrain counts Unknown");
    let weak_rules = dir.join("weak-rules.yml");
    std::fs::write(&weak_rules, weak).expect("write");
    let weak_path = dir.join("weak.test.yml");
    let weak_file = test_file(&weak_rules.to_string_lossy(), &rec, &checks);
    std::fs::write(&weak_path, weak_file).expect("write");
    let (ok, text) = promtool_test(&weak_path);
    assert!(!ok, "rules that miss the split brain passed too:\n{text}");
    let failed = text.matches("PrimgrSplitBrain").count();
    assert!(failed > 0, "{text}");
    println!("rules without Unknown in PrimgrSplitBrain: promtool fails ({failed} mentions)");
    std::fs::remove_dir_all(&dir).expect("remove the temp dir");
}

/// `promtool test rules FILE`: whether it passed, and what it printed.
fn promtool_test(path: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(path)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
