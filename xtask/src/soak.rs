//! `cargo xtask chaos --soak MINUTES`: a long run under load and faults that watches the
//! coordinator's memory and open files.
//!
//! One coordinator as production runs it (mutual TLS, tokens, SQLite) and [`AGENTS`] agent
//! daemons (`ferry-source-agentd`, the agent with the least private memory per process) on
//! loopback. [`IN_FLIGHT`] tasks run at all times, each a small workflow of `noop` steps
//! that sleep a little (chains pinned to named agents, fan-outs and diamonds placed by role);
//! each task that completes is checked through the API and replaced by a new one. Faults
//! follow a schedule drawn from the seed (same seed, same schedule): agents are SIGKILLed,
//! alone or several at once, and restarted a few seconds later; client connections are
//! dropped in the middle of a call (a unary call cut after a few milliseconds, a log follow
//! held open and abandoned). The coordinator is never killed: its memory is what is measured.
//!
//! Every [`SAMPLE_EVERY`] the coordinator's resident memory (`VmRSS`) and open files (entries
//! of `/proc/PID/fd`) are sampled beside the tasks completed so far; a table over time closes
//! the run. See [`Report::check`] for what "flat" means, and [`Report::table`] for the table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_e2e::{Client, Cluster};
use ferry_proto::v1;

use crate::e2e::Rng;

/// Agent daemons in the cluster.
pub const AGENTS: usize = 50;
/// Tasks kept running at all times.
pub const IN_FLIGHT: usize = 20;
/// How often the coordinator's memory and open files are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The agent daemon every agent runs (see the module comment).
const AGENT_ROLE: &str = "source";
/// A task not finished this long after its creation is stuck: the longest chain here runs
/// in a few seconds, and an agent is down for at most [`RESTART_MAX_MS`] at a time.
const STUCK_AFTER: Duration = Duration::from_secs(120);
/// How long the tasks still running at the end of the load get to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(150);
/// A killed agent is restarted after this long (uniform).
const RESTART_MIN_MS: u64 = 1_500;
const RESTART_MAX_MS: u64 = 8_000;
/// Time between kill events (uniform; mean 10 s, six per minute).
const KILL_GAP_MS: (u64, u64) = (4_000, 16_000);
/// Chance that a kill event takes several agents (2 to 5) at once.
const BURST_CHANCE: f64 = 0.15;
/// Time between dropped client calls (uniform; mean 12.5 s).
const DROP_GAP_MS: (u64, u64) = (5_000, 20_000);

/// Runs the soak for `minutes` with the fault schedule of `seed`, prints the samples as they
/// come and the table at the end; fails when the coordinator did not stay flat or a task was
/// lost, stuck, failed or run twice.
pub fn run(minutes: u64, seed: u64) -> anyhow::Result<()> {
    let report = run_with_report(minutes, seed)?;
    println!();
    print!("{}", report.table());
    report.check()
}

/// Like [`run`], but returns the report (its [`Report::table`] for a closing note, its
/// [`Report::check`] for the verdict) instead of failing on what the run found. Fails only
/// when the cluster could not be set up.
pub fn run_with_report(minutes: u64, seed: u64) -> anyhow::Result<Report> {
    if minutes == 0 {
        bail!("--soak needs at least 1 minute");
    }
    let bin_dir = match std::env::var_os("FERRY_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // The daemons the tests use (`cargo xtask test` builds the same set).
            crate::cargo(&["build", "--workspace", "--bins"])?;
            crate::target_dir().join("debug")
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(soak(Duration::from_secs(minutes * 60), seed, bin_dir))
}

// ---------------------------------------------------------------------------------------
// The report

/// One reading of the coordinator and the load.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: usize,
    pub tasks_completed: usize,
    pub tasks_running: usize,
    pub agents_killed: usize,
    pub calls_dropped: usize,
    pub agents_down: usize,
    /// Taken after the load stopped (while the last tasks finish).
    pub draining: bool,
}

impl Sample {
    fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

/// What a soak saw.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub load: Duration,
    pub samples: Vec<Sample>,
    pub tasks_created: usize,
    pub tasks_completed: usize,
    pub steps_completed: usize,
    /// Step attempts retried (an agent killed under a running job, or gone past the timeout).
    pub step_retries: u64,
    pub agents_killed: usize,
    pub kill_events: usize,
    pub calls_dropped: usize,
    /// Resident memory of one agent daemon at the start, and the proportional share of all
    /// of them together (they share their program text), in MiB.
    pub agent_rss_mib: f64,
    pub agents_pss_mib: f64,
    /// Lost, stuck, failed or doubly completed tasks, and API errors.
    pub problems: Vec<String>,
}

/// The RSS allowance: the last quarter's median may exceed the first reading after the
/// warm-up by this factor plus [`RSS_SLACK_MIB`].
///
/// Why these bounds. Noise: the coordinator starts near 57 MiB and fills its allocator's
/// pages and SQLite's page caches (2 MiB per pooled connection) in the first minute or two,
/// reaching about 70 MiB; after that, under this load, it moved by about 1 MiB over minutes
/// 2 to 10. The median over the last quarter ignores single spikes. So 1.25x + 16 MiB (about
/// +33 MiB) leaves more than 20 MiB over what a flat coordinator showed even when the warm-up
/// of a 2-minute run ends early. Leaks: this load (debug daemons, two cores) completes about
/// 600 tasks and 3,400 steps a minute, and a leak grows with the work. In a 10-minute run the
/// first reading after the warm-up (2:00) and the last quarter's median (about 8:45) are
/// some 4,000 tasks and 23,000 steps apart; the bound, which grows with that first reading,
/// is crossed by a leak of about 5.5 MiB a minute: 9 KiB a task (say, finished tasks left in
/// the engine's table) or 1.6 KiB a step (say, a step row kept with its parameters). The bound of a
/// 2-minute run is loose by the same measure (it catches only gross leaks); it checks that
/// the mode works.
pub const RSS_FACTOR: f64 = 1.25;
pub const RSS_SLACK_MIB: f64 = 16.0;
/// The open-files allowance over the first reading after the warm-up.
///
/// Noise: the coordinator holds about 70 descriptors (a connection per agent, SQLite's
/// files, listeners); the count moves down while agents are down (at most five at once) and
/// up by one or two for a dropped call's connection in flight: under ten either way. A leak
/// of one descriptor per agent reconnect (about nine a minute) or per dropped call (about
/// five a minute) passes 25 well within a 10-minute run.
pub const FD_SLACK: usize = 25;
/// The warm-up: the first fifth of the load, and at least this long.
pub const MIN_WARMUP: Duration = Duration::from_secs(30);

impl Report {
    fn warmup(&self) -> Duration {
        (self.load / 5).max(MIN_WARMUP)
    }

    /// The first reading after the warm-up, and the readings of the last quarter of the load.
    fn windows(&self) -> Option<(&Sample, Vec<&Sample>)> {
        let warm = self.warmup();
        let load: Vec<&Sample> = self.samples.iter().filter(|s| !s.draining).collect();
        let base = load.iter().find(|s| s.at >= warm)?;
        let tail_from = self.load.mul_f64(0.75);
        let tail: Vec<&Sample> = load
            .iter()
            .copied()
            .filter(|s| s.at >= tail_from && s.at > base.at)
            .collect();
        (!tail.is_empty()).then_some((base, tail))
    }

    /// The verdict: every task created completed once with every step completed once, none
    /// failed or stuck; and after the warm-up, the last quarter's median RSS is within
    /// [`RSS_FACTOR`] x the first reading + [`RSS_SLACK_MIB`], and its median open files
    /// within the first reading + [`FD_SLACK`].
    pub fn check(&self) -> anyhow::Result<()> {
        let mut failures = self.problems.clone();
        if self.tasks_completed != self.tasks_created {
            failures.push(format!(
                "{} tasks created, {} completed",
                self.tasks_created, self.tasks_completed
            ));
        }
        match self.windows() {
            None => failures.push(
                "too few samples after the warm-up to judge memory (run at least 1 minute)".into(),
            ),
            Some((base, tail)) => {
                let rss = median(tail.iter().map(|s| s.rss_mib()).collect());
                let rss_bound = RSS_FACTOR * base.rss_mib() + RSS_SLACK_MIB;
                if rss > rss_bound {
                    failures.push(format!(
                        "coordinator memory grew: last-quarter median RSS {rss:.1} MiB > {rss_bound:.1} MiB \
                         ({RSS_FACTOR} x {:.1} MiB at {} + {RSS_SLACK_MIB} MiB)",
                        base.rss_mib(),
                        clock(base.at)
                    ));
                }
                let fds = median(tail.iter().map(|s| s.fds as f64).collect());
                let fd_bound = (base.fds + FD_SLACK) as f64;
                if fds > fd_bound {
                    failures.push(format!(
                        "coordinator open files grew: last-quarter median {fds:.0} > {fd_bound:.0} \
                         ({} at {} + {FD_SLACK})",
                        base.fds,
                        clock(base.at)
                    ));
                }
            }
        }
        const SHOWN: usize = 20;
        if failures.len() > SHOWN {
            let more = failures.len() - SHOWN;
            failures.truncate(SHOWN);
            failures.push(format!("... and {more} more"));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("soak failed:\n  {}", failures.join("\n  "))
        }
    }

    /// RSS growth after the warm-up, MiB per hour (least squares over the load's readings).
    pub fn rss_slope_mib_per_hour(&self) -> Option<f64> {
        let warm = self.warmup();
        let pts: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| !s.draining && s.at >= warm)
            .map(|s| (s.at.as_secs_f64() / 3600.0, s.rss_mib()))
            .collect();
        if pts.len() < 3 {
            return None;
        }
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        (sxx > 0.0).then(|| sxy / sxx)
    }

    /// The table over time (a row a minute; every 30 s in runs under five minutes), the
    /// totals and the bounds, ready to print.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let every = if self.load < Duration::from_secs(300) {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(60)
        };
        let _ = writeln!(
            out,
            "soak: {} min, seed {}, {AGENTS} agents ({AGENT_ROLE} daemon, {:.0} MiB RSS each, \
             {:.0} MiB PSS together), {IN_FLIGHT} tasks in flight; faults: agents SIGKILLed \
             and restarted, client calls dropped; the coordinator is never killed (its memory \
             is what is measured)",
            self.load.as_secs() / 60,
            self.seed,
            self.agent_rss_mib,
            self.agents_pss_mib,
        );
        let _ = writeln!(
            out,
            "  {:>6}  {:>8}  {:>8}  {:>7}  {:>10}  {:>13}  {:>13}",
            "time",
            "RSS MiB",
            "open fds",
            "threads",
            "tasks done",
            "agents killed",
            "calls dropped"
        );
        let warm = self.warmup();
        let mut rows: Vec<&Sample> = Vec::new();
        let mut next = Duration::ZERO;
        for (i, s) in self.samples.iter().enumerate() {
            let last = i + 1 == self.samples.len();
            if s.at >= next || last {
                rows.push(s);
                while next <= s.at {
                    next += every;
                }
            }
        }
        for s in rows {
            let note = if s.draining {
                "  (draining)"
            } else if s.at < warm {
                "  (warm-up)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:>6}  {:>8.1}  {:>8}  {:>7}  {:>10}  {:>13}  {:>13}{note}",
                clock(s.at),
                s.rss_mib(),
                s.fds,
                s.threads,
                s.tasks_completed,
                s.agents_killed,
                s.calls_dropped
            );
        }
        let _ = writeln!(
            out,
            "  tasks: {} created, {} completed ({} steps, {} step retries after faults); \
             faults: {} kill events ({} agents), {} calls dropped",
            self.tasks_created,
            self.tasks_completed,
            self.steps_completed,
            self.step_retries,
            self.kill_events,
            self.agents_killed,
            self.calls_dropped
        );
        if let Some((base, tail)) = self.windows() {
            let rss = median(tail.iter().map(|s| s.rss_mib()).collect());
            let fds = median(tail.iter().map(|s| s.fds as f64).collect());
            let _ = writeln!(
                out,
                "  flat: RSS {:.1} MiB after warm-up ({}), last-quarter median {rss:.1} MiB \
                 (bound {:.1}); open fds {} -> {fds:.0} (bound {}){}",
                base.rss_mib(),
                clock(base.at),
                RSS_FACTOR * base.rss_mib() + RSS_SLACK_MIB,
                base.fds,
                base.fds + FD_SLACK,
                self.rss_slope_mib_per_hour()
                    .map(|s| format!("; RSS trend {s:+.1} MiB/h"))
                    .unwrap_or_default()
            );
        }
        match self.check() {
            Ok(()) => {
                let _ = writeln!(out, "  verdict: flat, no task lost, stuck or run twice");
            }
            Err(e) => {
                let _ = writeln!(out, "  verdict: {e:#}");
            }
        }
        out
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

// ---------------------------------------------------------------------------------------
// The fault schedule

#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// SIGKILL these agents (indexes).
    Kill(Vec<usize>),
    /// Start them again.
    Restart(Vec<usize>),
    /// A fresh client connection dropped in the middle of a call: a log follow held for
    /// `hold_ms`, or a unary call cut after `hold_ms`.
    DropCall { follow: bool, hold_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Planned {
    at: Duration,
    fault: Fault,
}

/// The faults of a `load`-long run, in time order; a function of `seed` alone.
fn schedule(seed: u64, load: Duration) -> Vec<Planned> {
    let end = load.as_millis() as u64;
    let mut plan = Vec::new();
    // Kills: never an agent already down.
    let mut rng = Rng::new(seed);
    let mut down_until = [0u64; AGENTS];
    let mut t = 5_000;
    loop {
        t += rng.range(KILL_GAP_MS.0, KILL_GAP_MS.1);
        if t >= end {
            break;
        }
        let n = if rng.chance(BURST_CHANCE) {
            rng.range(2, 5) as usize
        } else {
            1
        };
        let mut victims = Vec::new();
        for _ in 0..n {
            let up: Vec<usize> = (0..AGENTS)
                .filter(|&i| down_until[i] <= t && !victims.contains(&i))
                .collect();
            if up.is_empty() {
                break;
            }
            victims.push(up[rng.range(0, up.len() as u64 - 1) as usize]);
        }
        let back = t + rng.range(RESTART_MIN_MS, RESTART_MAX_MS);
        for &v in &victims {
            down_until[v] = back;
        }
        plan.push(Planned {
            at: Duration::from_millis(t),
            fault: Fault::Kill(victims.clone()),
        });
        plan.push(Planned {
            at: Duration::from_millis(back),
            fault: Fault::Restart(victims),
        });
    }
    // Dropped calls, from a stream of their own (adding kinds of kill keeps these).
    let mut rng = Rng::new(seed ^ 0xD809_CA11);
    let mut t = 3_000;
    loop {
        t += rng.range(DROP_GAP_MS.0, DROP_GAP_MS.1);
        if t >= end {
            break;
        }
        let follow = rng.chance(0.5);
        let hold_ms = if follow {
            rng.range(200, 3_000)
        } else {
            rng.range(0, 5)
        };
        plan.push(Planned {
            at: Duration::from_millis(t),
            fault: Fault::DropCall { follow, hold_ms },
        });
    }
    plan.sort_by_key(|p| p.at);
    plan
}

/// A short fingerprint of a schedule, printed so two runs can be compared at a glance.
fn fingerprint(plan: &[Planned]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let text = format!("{plan:?}");
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    h
}

// ---------------------------------------------------------------------------------------
// The workflows

/// A workflow the load draws from: its name, YAML and step names.
struct Shape {
    name: String,
    yaml: String,
    steps: Vec<String>,
}

fn agent_name(i: usize) -> String {
    format!("soak-{i:02}")
}

const RETRY: &str = "retry: {max_retries: 20, backoff_ms: 250}";

fn shapes() -> Vec<Shape> {
    let mut out = Vec::new();
    let step = |y: &mut String,
                steps: &mut Vec<String>,
                name: &str,
                place: &str,
                sleep: u64,
                inputs: &[String]| {
        y.push_str(&format!(
            "  - {{name: {name}, kind: noop, params: {{sleep_ms: {sleep}}}, placement: {place}, {RETRY}"
        ));
        if !inputs.is_empty() {
            y.push_str(&format!(", inputs: [{}]", inputs.join(", ")));
        }
        y.push_str("}\n");
        steps.push(name.to_owned());
    };
    let pinned = |i: usize| format!("{{agent: {}}}", agent_name(i % AGENTS));
    let any = "{role: data_source}";
    // Chains of five, each step pinned to its own agent, the ten chains over all 50 agents.
    for k in 0..10 {
        let name = format!("soak_chain_{k}");
        let mut y = format!("name: {name}\nsteps:\n");
        let mut steps = Vec::new();
        for i in 0..5 {
            let inputs: Vec<String> = if i == 0 {
                Vec::new()
            } else {
                vec![format!("s{}", i - 1)]
            };
            let sleep = 100 + 150 * ((k + i) % 5) as u64;
            step(
                &mut y,
                &mut steps,
                &format!("s{i}"),
                &pinned(k * 5 + i),
                sleep,
                &inputs,
            );
        }
        out.push(Shape {
            name,
            yaml: y,
            steps,
        });
    }
    // Fan-outs: a root anywhere, six leaves on six agents, a join anywhere.
    for k in 0..6 {
        let name = format!("soak_fan_{k}");
        let mut y = format!("name: {name}\nsteps:\n");
        let mut steps = Vec::new();
        step(&mut y, &mut steps, "root", any, 100, &[]);
        let mut leaves = Vec::new();
        for j in 0..6 {
            let leaf = format!("leaf{j}");
            step(
                &mut y,
                &mut steps,
                &leaf,
                &pinned(7 * k + 8 * j + 3),
                200 + 100 * j as u64,
                &["root".to_owned()],
            );
            leaves.push(leaf);
        }
        step(&mut y, &mut steps, "join", any, 100, &leaves);
        out.push(Shape {
            name,
            yaml: y,
            steps,
        });
    }
    // Diamonds placed by role only: the engine picks among the agents up.
    for k in 0..4 {
        let name = format!("soak_diamond_{k}");
        let mut y = format!("name: {name}\nsteps:\n");
        let mut steps = Vec::new();
        let sleep = 150 + 100 * k as u64;
        step(&mut y, &mut steps, "a", any, sleep, &[]);
        step(&mut y, &mut steps, "b", any, sleep, &["a".to_owned()]);
        step(&mut y, &mut steps, "c", any, sleep, &["a".to_owned()]);
        step(
            &mut y,
            &mut steps,
            "d",
            any,
            sleep,
            &["b".to_owned(), "c".to_owned()],
        );
        out.push(Shape {
            name,
            yaml: y,
            steps,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------
// The run

/// Counters the load, the faults and the sampler share.
#[derive(Default)]
struct Shared {
    completed: AtomicUsize,
    running: AtomicUsize,
    killed: AtomicUsize,
    dropped: AtomicUsize,
    down: AtomicUsize,
    /// The newest task, for log follows to attach to.
    last_task: AtomicI64,
}

async fn soak(load: Duration, seed: u64, bin_dir: PathBuf) -> anyhow::Result<Report> {
    let plan = schedule(seed, load);
    let kill_events = plan
        .iter()
        .filter(|p| matches!(p.fault, Fault::Kill(_)))
        .count();
    println!(
        "soak: {} min, seed {seed}: {kill_events} kill events, {} dropped calls planned (schedule {:016x})",
        load.as_secs() / 60,
        plan.iter()
            .filter(|p| matches!(p.fault, Fault::DropCall { .. }))
            .count(),
        fingerprint(&plan)
    );
    let mut c = Cluster::secure("");
    c.bin_dir = bin_dir;
    c.env.push(("RUST_LOG".into(), "warn".into()));
    println!("soak: cluster in {}", c.dir.path().display());
    c.start_coordinator().await;
    let names: Vec<String> = (0..AGENTS).map(agent_name).collect();
    for n in &names {
        c.start_agent(AGENT_ROLE, n);
    }
    let client = c.client().await.max_decoding_message_size(256 << 20);
    wait_for_agents(&client, AGENTS, Duration::from_secs(120)).await?;
    let agent_memory = agent_memory(&c, &names);
    let (agent_rss_mib, agents_pss_mib) = agent_memory;
    println!(
        "soak: {AGENTS} agents connected ({agent_rss_mib:.0} MiB RSS each, {agents_pss_mib:.0} MiB PSS together)"
    );
    let shapes = shapes();
    for s in &shapes {
        c.apply(&s.yaml)
            .await
            .with_context(|| format!("applying {}", s.name))?;
    }
    let pid = c.coordinator_pid().context("the coordinator runs")?;
    println!("soak: the coordinator (pid {pid}) is never killed: its memory is what is measured");

    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let load_fut = async {
        let r = drive(client.clone(), &shapes, seed, start, load, pid, &shared).await;
        let _ = done_tx.send(true);
        r
    };
    let faults_fut = inject(&mut c, &plan, &names, start, load, &shared, done_rx.clone());
    let sample_fut = sampler(pid, start, load, &shared, done_rx);
    let (mut outcome, fault_problems, samples) = tokio::join!(load_fut, faults_fut, sample_fut);
    outcome.problems.extend(fault_problems);
    if let Some(why) = &outcome.gave_up {
        let log = c.path("coordinator.log");
        println!("soak: {why}; the coordinator's log: {}", log.display());
        let kept = std::mem::replace(&mut c.dir, tempfile::tempdir()?);
        let _ = kept.keep();
        let completed = shared.completed.load(Ordering::Relaxed);
        return Ok(report(
            seed,
            load,
            samples,
            &shared,
            kill_events,
            agent_memory,
            outcome,
            completed,
        ));
    }

    // Nothing lost, nothing extra: the coordinator's tasks are exactly the ones created.
    // A page holds at most 1,000 tasks: read them all, page by page.
    let mut all = Vec::new();
    let mut before_id = 0;
    loop {
        let page = client
            .clone()
            .list_tasks(v1::ListTasksRequest {
                limit: 1000,
                before_id,
                ..Default::default()
            })
            .await;
        match page {
            Ok(r) => {
                let r = r.into_inner();
                all.extend(r.tasks);
                if r.next_before_id == 0 {
                    break;
                }
                before_id = r.next_before_id;
            }
            Err(e) => {
                outcome
                    .problems
                    .push(format!("listing every task at the end: {e}"));
                break;
            }
        }
    }
    let known: BTreeSet<i64> = outcome.created.keys().copied().collect();
    let mut completed = 0;
    for t in &all {
        if !known.contains(&t.id) {
            outcome.problems.push(format!(
                "task {} ({}) was never created by the load",
                t.id, t.workflow
            ));
        } else if t.status == "completed" {
            completed += 1;
        } else {
            outcome.problems.push(format!(
                "task {} ({}) ended {}: {}",
                t.id, t.workflow, t.status, t.status_reason
            ));
        }
    }
    let listed: BTreeSet<i64> = all.iter().map(|t| t.id).collect();
    for id in known.difference(&listed).filter(|_| !all.is_empty()) {
        outcome
            .problems
            .push(format!("task {id} is missing from the coordinator"));
    }
    if !outcome.problems.is_empty() {
        println!(
            "soak: cluster files kept in {} for inspection",
            c.dir.path().display()
        );
        let kept = std::mem::replace(&mut c.dir, tempfile::tempdir()?);
        let _ = kept.keep();
    }
    Ok(report(
        seed,
        load,
        samples,
        &shared,
        kill_events,
        agent_memory,
        outcome,
        completed,
    ))
}

#[allow(clippy::too_many_arguments)]
fn report(
    seed: u64,
    load: Duration,
    samples: Vec<Sample>,
    shared: &Shared,
    kill_events: usize,
    (agent_rss_mib, agents_pss_mib): (f64, f64),
    outcome: Outcome,
    tasks_completed: usize,
) -> Report {
    Report {
        seed,
        load,
        samples,
        tasks_created: outcome.created.len(),
        tasks_completed,
        steps_completed: outcome.steps_completed,
        step_retries: outcome.step_retries,
        agents_killed: shared.killed.load(Ordering::Relaxed),
        kill_events,
        calls_dropped: shared.dropped.load(Ordering::Relaxed),
        agent_rss_mib,
        agents_pss_mib,
        problems: outcome.problems,
    }
}

async fn wait_for_agents(client: &Client, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut client = client.clone();
    loop {
        let agents = client
            .list_agents(v1::ListAgentsRequest {})
            .await
            .context("listing agents")?
            .into_inner()
            .agents;
        let up = agents.iter().filter(|a| a.connected).count();
        if up >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {up} of {n} agents connected after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One agent's RSS, and the PSS of all of them, in MiB.
fn agent_memory(c: &Cluster, names: &[String]) -> (f64, f64) {
    let kib = |pid: u32, file: &str, key: &str| -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let pids: Vec<u32> = names.iter().filter_map(|n| c.agent_pid(n)).collect();
    let rss = pids
        .first()
        .and_then(|&p| kib(p, "status", "VmRSS:"))
        .unwrap_or(0);
    let pss: u64 = pids
        .iter()
        .filter_map(|&p| kib(p, "smaps_rollup", "Pss:"))
        .sum();
    (rss as f64 / 1024.0, pss as f64 / 1024.0)
}

/// What the load saw.
struct Outcome {
    /// Every task created: id → its workflow.
    created: BTreeMap<i64, String>,
    steps_completed: usize,
    step_retries: u64,
    problems: Vec<String>,
    /// Why the load stopped early: the coordinator exited or stopped answering.
    gave_up: Option<String>,
}

/// Consecutive failed calls after which the coordinator counts as wedged (about 10 s).
const MAX_FAILED_CALLS: usize = 30;

/// Whether process `pid` runs (a child that exited stays a zombie until reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && (l.contains("zombie") || l.contains("dead")))
    })
}

/// Keeps [`IN_FLIGHT`] tasks running until `load` has passed, checks each one that
/// finishes, then waits for the last ones.
async fn drive(
    mut client: Client,
    shapes: &[Shape],
    seed: u64,
    start: Instant,
    load: Duration,
    pid: u32,
    shared: &Shared,
) -> Outcome {
    let mut rng = Rng::new(seed ^ 0x10AD);
    let by_name: HashMap<&str, &Shape> = shapes.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut out = Outcome {
        created: BTreeMap::new(),
        steps_completed: 0,
        step_retries: 0,
        problems: Vec::new(),
        gave_up: None,
    };
    let mut failed_calls = 0usize;
    // Task id → (workflow, created at).
    let mut in_flight: HashMap<i64, (String, Instant)> = HashMap::new();
    let end = start + load;
    let mut drain_deadline = None;
    loop {
        let now = Instant::now();
        if now < end {
            while in_flight.len() < IN_FLIGHT {
                let shape = &shapes[rng.range(0, shapes.len() as u64 - 1) as usize];
                match client
                    .create_task(v1::CreateTaskRequest {
                        workflow: shape.name.clone(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(t) => {
                        let id = t.into_inner().id;
                        out.created.insert(id, shape.name.clone());
                        in_flight.insert(id, (shape.name.clone(), Instant::now()));
                        shared.last_task.store(id, Ordering::Relaxed);
                    }
                    Err(e) => {
                        out.problems
                            .push(format!("creating a {} task: {e}", shape.name));
                        failed_calls += 1;
                        break;
                    }
                }
            }
        } else if in_flight.is_empty() {
            break;
        } else {
            let deadline = *drain_deadline.get_or_insert(now + DRAIN_TIMEOUT);
            if now > deadline {
                for (id, (wf, _)) in &in_flight {
                    out.problems.push(format!(
                        "task {id} ({wf}) did not finish within {DRAIN_TIMEOUT:?} after the load stopped"
                    ));
                }
                break;
            }
        }
        shared.running.store(in_flight.len(), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;

        let running: BTreeSet<i64> = match client
            .list_tasks(v1::ListTasksRequest {
                status: "running".into(),
                limit: 1000,
                ..Default::default()
            })
            .await
        {
            Ok(r) => {
                failed_calls = 0;
                r.into_inner().tasks.iter().map(|t| t.id).collect()
            }
            Err(e) => {
                failed_calls += 1;
                if !alive(pid) {
                    out.gave_up = Some(format!(
                        "the coordinator (pid {pid}) exited at {}; the soak never kills it, so \
                         it crashed or something else killed it",
                        clock(start.elapsed())
                    ));
                } else if failed_calls >= MAX_FAILED_CALLS {
                    out.gave_up = Some(format!(
                        "the coordinator stopped answering at {} ({failed_calls} calls failed in a row, last: {e})",
                        clock(start.elapsed())
                    ));
                }
                if let Some(why) = &out.gave_up {
                    out.problems.push(why.clone());
                    break;
                }
                if failed_calls == 1 {
                    out.problems.push(format!("listing running tasks: {e}"));
                }
                continue;
            }
        };
        let finished: Vec<i64> = in_flight
            .keys()
            .copied()
            .filter(|id| !running.contains(id))
            .collect();
        for id in finished {
            let Some((wf, created)) = in_flight.remove(&id) else {
                continue;
            };
            let shape = by_name.get(wf.as_str()).copied();
            match verify(&mut client, id, &wf, shape).await {
                Ok((steps, retries)) => {
                    out.steps_completed += steps;
                    out.step_retries += retries;
                    shared.completed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => out.problems.push(format!("task {id} ({wf}): {e:#}")),
            }
            let took = created.elapsed();
            if took > STUCK_AFTER {
                out.problems.push(format!(
                    "task {id} ({wf}) took {took:?} (stuck past {STUCK_AFTER:?})"
                ));
            }
        }
        // Stuck ones stop counting toward the load so that it goes on; they are reported.
        let stuck: Vec<i64> = in_flight
            .iter()
            .filter(|(_, (_, t))| t.elapsed() > STUCK_AFTER)
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            if let Some((wf, _)) = in_flight.remove(&id) {
                let detail = client
                    .get_task(v1::TaskRef { task_id: id })
                    .await
                    .map(|d| {
                        d.into_inner()
                            .steps
                            .iter()
                            .map(|s| format!("{}={}@{}", s.name, s.status, s.agent))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_else(|e| e.to_string());
                println!("soak: task {id} ({wf}) stuck: {detail}");
                out.problems.push(format!(
                    "task {id} ({wf}) stuck for {STUCK_AFTER:?}: {detail}"
                ));
            }
        }
    }
    shared.running.store(0, Ordering::Relaxed);
    out
}

/// A finished task completed, every step of its workflow completed, each exactly once (the
/// engine writes one `completed in` line per step completion). Returns its steps and retries.
async fn verify(
    client: &mut Client,
    id: i64,
    wf: &str,
    shape: Option<&Shape>,
) -> anyhow::Result<(usize, u64)> {
    let detail = client
        .get_task(v1::TaskRef { task_id: id })
        .await
        .context("get_task")?
        .into_inner();
    let task = detail.task.as_ref().context("no task in the answer")?;
    if task.status != "completed" {
        bail!("ended {}: {}", task.status, task.status_reason);
    }
    let expected: BTreeSet<&str> = shape
        .map(|s| s.steps.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let got: BTreeSet<&str> = detail.steps.iter().map(|s| s.name.as_str()).collect();
    if expected != got || detail.steps.len() != got.len() {
        bail!("{wf} has steps {expected:?}, the task {got:?}");
    }
    let mut retries = 0u64;
    for s in &detail.steps {
        if s.status != "completed" {
            bail!("step {} is {} in a completed task", s.name, s.status);
        }
        retries += u64::from(s.retry_count);
    }
    let logs = client
        .get_logs(v1::GetLogsRequest {
            task_id: id,
            after_id: 0,
            limit: 0,
        })
        .await
        .context("get_logs")?
        .into_inner()
        .entries;
    let mut completions: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &logs {
        if e.source == "engine" && !e.step.is_empty() && e.message.starts_with("completed in") {
            *completions.entry(e.step.as_str()).or_default() += 1;
        }
    }
    for s in &detail.steps {
        let n = completions.get(s.name.as_str()).copied().unwrap_or(0);
        if n != 1 {
            bail!("step {} completed {n} times", s.name);
        }
    }
    Ok((detail.steps.len(), retries))
}

/// Fires the schedule: kills and restarts agents, drops client calls. Returns problems
/// (a fresh connection the coordinator refused).
async fn inject(
    c: &mut Cluster,
    plan: &[Planned],
    names: &[String],
    start: Instant,
    load: Duration,
    shared: &Shared,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut down: BTreeSet<usize> = BTreeSet::new();
    for p in plan {
        // Restarts after the end of the load still happen (every agent comes back).
        if p.at >= load && !matches!(p.fault, Fault::Restart(_)) {
            continue;
        }
        // The load may end early (the coordinator gone): then stop too.
        if *done.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until((start + p.at).into()) => {}
            _ = done.changed() => break,
        }
        match &p.fault {
            Fault::Kill(victims) => {
                for &v in victims {
                    c.kill_agent(&names[v]);
                    down.insert(v);
                }
                shared.killed.fetch_add(victims.len(), Ordering::Relaxed);
                println!(
                    "fault {}: SIGKILL {}",
                    clock(p.at),
                    victims
                        .iter()
                        .map(|&v| names[v].as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            Fault::Restart(victims) => {
                for &v in victims {
                    if down.remove(&v) {
                        c.start_agent(AGENT_ROLE, &names[v]);
                    }
                }
            }
            Fault::DropCall { follow, hold_ms } => match c.try_client(None).await {
                Ok(mut client) => {
                    let task_id = shared.last_task.load(Ordering::Relaxed);
                    let (follow, hold) = (*follow, Duration::from_millis(*hold_ms));
                    tokio::spawn(async move {
                        if follow {
                            let call = client.follow_logs(v1::GetLogsRequest {
                                task_id,
                                after_id: 0,
                                limit: 0,
                            });
                            if let Ok(Ok(r)) =
                                tokio::time::timeout(Duration::from_secs(5), call).await
                            {
                                let mut stream = r.into_inner();
                                let _ = tokio::time::timeout(hold, async {
                                    while let Ok(Some(_)) = stream.message().await {}
                                })
                                .await;
                            }
                        } else {
                            let call = client.list_tasks(v1::ListTasksRequest {
                                limit: 500,
                                ..Default::default()
                            });
                            let _ = tokio::time::timeout(hold, call).await;
                        }
                        // Dropped here, the call possibly still in flight.
                    });
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => problems.push(format!(
                    "{}: a new client could not connect: {e}",
                    clock(p.at)
                )),
            },
        }
        shared.down.store(down.len(), Ordering::Relaxed);
    }
    for v in std::mem::take(&mut down) {
        c.start_agent(AGENT_ROLE, &names[v]);
    }
    shared.down.store(0, Ordering::Relaxed);
    problems
}

/// Reads the coordinator every [`SAMPLE_EVERY`] until the load is done, printing each reading.
async fn sampler(
    pid: u32,
    start: Instant,
    load: Duration,
    shared: &Shared,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut next = start;
    loop {
        let at = start.elapsed();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        let s = Sample {
            at,
            rss_kib: field("VmRSS:"),
            fds,
            threads: field("Threads:") as usize,
            tasks_completed: shared.completed.load(Ordering::Relaxed),
            tasks_running: shared.running.load(Ordering::Relaxed),
            agents_killed: shared.killed.load(Ordering::Relaxed),
            calls_dropped: shared.dropped.load(Ordering::Relaxed),
            agents_down: shared.down.load(Ordering::Relaxed),
            draining: at >= load,
        };
        println!(
            "sample {:>6}: rss {:>7.1} MiB  fds {:>4}  threads {:>3}  tasks {:>6} done {:>3} running  \
             agents {:>2}/{AGENTS} up  faults {} killed {} dropped{}",
            clock(s.at),
            s.rss_mib(),
            s.fds,
            s.threads,
            s.tasks_completed,
            s.tasks_running,
            AGENTS - s.agents_down,
            s.agents_killed,
            s.calls_dropped,
            if s.draining { "  (draining)" } else { "" }
        );
        samples.push(s);
        if *done.borrow() {
            return samples;
        }
        next += SAMPLE_EVERY;
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = done.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let load = Duration::from_secs(600);
        assert_eq!(schedule(7, load), schedule(7, load));
        assert_ne!(schedule(7, load), schedule(8, load));
    }

    #[test]
    fn the_schedule_kills_several_a_minute_and_brings_every_agent_back() {
        let load = Duration::from_secs(600);
        let plan = schedule(42, load);
        let kills: Vec<&Vec<usize>> = plan
            .iter()
            .filter_map(|p| match &p.fault {
                Fault::Kill(v) => Some(v),
                _ => None,
            })
            .collect();
        assert!(
            kills.len() >= 30,
            "{} kill events in 10 minutes",
            kills.len()
        );
        assert!(kills.iter().any(|v| v.len() > 1), "no burst in 10 minutes");
        let mut down = BTreeSet::new();
        for p in &plan {
            match &p.fault {
                Fault::Kill(v) => {
                    for i in v {
                        assert!(down.insert(*i), "agent {i} killed while down");
                    }
                }
                Fault::Restart(v) => {
                    for i in v {
                        assert!(down.remove(i), "agent {i} restarted while up");
                    }
                }
                Fault::DropCall { .. } => {}
            }
        }
        assert!(down.is_empty(), "agents never restarted: {down:?}");
        assert!(plan.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn the_workflows_parse_and_spread_over_all_agents() {
        let mut agents = BTreeSet::new();
        for s in shapes() {
            let def = ferry_core::workflow::WorkflowDef::from_yaml(&s.yaml)
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", s.name, s.yaml));
            assert_eq!(def.steps.len(), s.steps.len());
            for st in &def.steps {
                if let ferry_core::workflow::Placement::Agent(a) = &st.placement {
                    agents.insert(a.clone());
                }
            }
        }
        assert_eq!(agents.len(), AGENTS);
    }

    fn sample(at: u64, rss_mib: f64, fds: usize) -> Sample {
        Sample {
            at: Duration::from_secs(at),
            rss_kib: (rss_mib * 1024.0) as u64,
            fds,
            threads: 4,
            tasks_completed: 0,
            tasks_running: 0,
            agents_killed: 0,
            calls_dropped: 0,
            agents_down: 0,
            draining: false,
        }
    }

    fn report(samples: Vec<Sample>) -> Report {
        Report {
            seed: 1,
            load: Duration::from_secs(600),
            samples,
            tasks_created: 10,
            tasks_completed: 10,
            steps_completed: 50,
            step_retries: 0,
            agents_killed: 0,
            kill_events: 0,
            calls_dropped: 0,
            agent_rss_mib: 0.0,
            agents_pss_mib: 0.0,
            problems: Vec::new(),
        }
    }

    #[test]
    fn a_flat_run_passes_and_a_leak_fails() {
        // Ten minutes, a reading every 10 s; `mib(minute)` is the RSS.
        let run = |mib: &dyn Fn(f64) -> f64, fds: &dyn Fn(f64) -> usize| {
            report(
                (0..=60)
                    .map(|i| {
                        let m = i as f64 / 6.0;
                        sample(i * 10, mib(m), fds(m))
                    })
                    .collect(),
            )
        };
        let flat = run(&|m| 70.0 + (m * 7.0).sin(), &|_| 72);
        assert!(flat.check().is_ok(), "{}", flat.table());
        // What the coordinator does: 57 MiB, filling up in the first minute and a half.
        let warming = run(&|m| 57.0 + 13.0 * (m / 1.5).min(1.0), &|_| 72);
        assert!(warming.check().is_ok(), "{}", warming.table());
        // A leak of 6 MiB a minute fails; so does one of a descriptor every 10 s.
        let leak = run(&|m| 70.0 + 6.0 * m, &|_| 72);
        assert!(leak.check().is_err(), "{}", leak.table());
        let fds = run(&|_| 70.0, &|m| 72 + (6.0 * m) as usize);
        assert!(fds.check().is_err(), "{}", fds.table());
        let mut lost = run(&|_| 70.0, &|_| 72);
        lost.tasks_completed = 9;
        assert!(lost.check().is_err());
    }
}
