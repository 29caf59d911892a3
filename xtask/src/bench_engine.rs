//! `cargo xtask bench engine`: release daemons on loopback, SQLite state, `noop` steps.
//!
//! Throughput: many concurrent tasks, each a chain of no-op steps alternating between two
//! agents; total steps per second from the first task's creation to the last completion.
//! Latency: one chain alone; each hand-off is the time from step N reported done to step
//! N+1 started on the other agent, both as the coordinator recorded them.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use ferry_e2e::Cluster;
use ferry_proto::v1;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Concurrent tasks in the throughput run.
    #[arg(long, default_value_t = 200)]
    tasks: usize,
    /// Steps per task in the throughput run.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Steps in the latency chain.
    #[arg(long, default_value_t = 200)]
    chain: usize,
    /// Chains in the one large workflow (0: skip it).
    #[arg(long, default_value_t = 1000)]
    large_chains: usize,
    /// Steps per chain in the large workflow (1000 x 100 = 100,000 steps).
    #[arg(long, default_value_t = 100)]
    large_steps: usize,
}

const TARGET_STEPS_PER_S: f64 = 1000.0;
const TARGET_P50_MS: f64 = 5.0;
const TARGET_P99_MS: f64 = 50.0;
const TARGET_RSS_MIB: f64 = 512.0;
/// Slots per agent in the capacity run that queues steps.
const CAPACITY_SLOTS: u32 = 64;
/// Slots per agent in the capacity run with room for every ready step.
const ROOMY_SLOTS: u32 = 4096;

/// One workflow of `chains` independent chains of `steps` no-op steps, each chain
/// alternating between the two agents.
fn large_yaml(name: &str, chains: usize, steps: usize) -> String {
    let mut y = format!("name: {name}\nsteps:\n");
    for c in 0..chains {
        for i in 0..steps {
            let agent = if (c + i) % 2 == 0 {
                "bench-a"
            } else {
                "bench-b"
            };
            y.push_str(&format!(
                "  - {{name: c{c}_s{i}, kind: noop, placement: {{agent: {agent}}}"
            ));
            if i > 0 {
                y.push_str(&format!(", inputs: [c{c}_s{}]", i - 1));
            }
            y.push_str("}\n");
        }
    }
    y
}

/// The peak resident memory of a process (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

fn chain_yaml(name: &str, steps: usize) -> String {
    let mut y = format!("name: {name}\nsteps:\n");
    for i in 0..steps {
        let agent = if i % 2 == 0 { "bench-a" } else { "bench-b" };
        y.push_str(&format!(
            "  - {{name: s{i}, kind: noop, placement: {{agent: {agent}}}"
        ));
        if i > 0 {
            y.push_str(&format!(", inputs: [s{}]", i - 1));
        }
        y.push_str("}\n");
    }
    y
}

fn parse_ts(s: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("bad timestamp `{s}`"))?
        .with_timezone(&Utc))
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "ferry-coordinatord",
        "-p",
        "ferry-source-agentd",
        "-p",
        "ferry-train-agentd",
    ])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(opts))
}

/// What one cluster measured.
struct Measures {
    wall: f64,
    throughput: f64,
    handoffs: usize,
    p50: f64,
    p99: f64,
    max: f64,
    large: Option<LargeRun>,
}

async fn bench(opts: Options) -> anyhow::Result<()> {
    // The same load on the same machine, one after the other: without TLS and tokens (a
    // loopback coordinator), then as production runs (mutual TLS, a token on every call).
    // Both without capacity limits (agents declare `slots: 0`), so that the ratio is TLS's.
    let plain = measure(&opts, false, 0).await?;
    let secure = measure(&opts, true, 0).await?;
    // Capacity checks off (`slots: 0`), on with room for every ready step (`slots:
    // ROOMY_SLOTS`: the checks' own cost), and on with fewer slots than ready steps
    // (`slots: CAPACITY_SLOTS`: the queue fills and drains), alternated twice on the plain
    // setup; the best of each.
    let mut off = Vec::new();
    let mut roomy = Vec::new();
    let mut on = Vec::new();
    for _ in 0..2 {
        off.push(measure(&opts, false, 0).await?.throughput);
        roomy.push(measure(&opts, false, ROOMY_SLOTS).await?.throughput);
        on.push(measure(&opts, false, CAPACITY_SLOTS).await?.throughput);
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (off, roomy, on) = (best(&off), best(&roomy), best(&on));
    let total = opts.tasks * opts.steps;
    println!();
    println!("engine benchmark (release daemons, SQLite, loopback gRPC, 2 agents)");
    for (label, m) in [("TLS off", &plain), ("TLS on ", &secure)] {
        println!(
            "  {label}: throughput {} tasks x {} no-op steps = {total} steps in {:.2} s -> {:.0} steps/s \
             (target >= {TARGET_STEPS_PER_S:.0}; ratio {:.2}x); hand-off over {} hand-offs: p50 {:.2} ms \
             (target <= {TARGET_P50_MS}), p99 {:.2} ms (target <= {TARGET_P99_MS}), max {:.2} ms",
            opts.tasks,
            opts.steps,
            m.wall,
            m.throughput,
            m.throughput / TARGET_STEPS_PER_S,
            m.handoffs,
            m.p50,
            m.p99,
            m.max,
        );
    }
    println!(
        "  TLS on / TLS off: throughput {:.2}x, hand-off p50 {:.2}x",
        secure.throughput / plain.throughput,
        secure.p50 / plain.p50.max(1e-9)
    );
    println!(
        "  capacity checks: throughput {off:.0} steps/s without (slots: 0); with checks on and \
         room for all (slots: {ROOMY_SLOTS}) {roomy:.0} steps/s -> {:.2}x (goal >= 0.90x); with \
         slots: {CAPACITY_SLOTS} per agent ({} ready steps at the start, the rest queued) \
         {on:.0} steps/s -> {:.2}x",
        roomy / off.max(1e-9),
        opts.tasks,
        on / off.max(1e-9)
    );
    for (label, m) in [("TLS off", &plain), ("TLS on ", &secure)] {
        if let Some(l) = &m.large {
            println!(
                "  {label}: one workflow of {} steps ({} chains x {}): applied in {:.2} s, task created in {:.2} s, \
                 ran in {:.2} s -> {:.0} steps/s (target >= {TARGET_STEPS_PER_S:.0}; ratio {:.2}x); \
                 coordinator peak RSS {:.0} MiB (target < {TARGET_RSS_MIB:.0}; ratio {:.2}x)",
                l.steps,
                opts.large_chains,
                opts.large_steps,
                l.apply_s,
                l.create_s,
                l.run_s,
                l.steps as f64 / l.run_s,
                l.steps as f64 / l.run_s / TARGET_STEPS_PER_S,
                l.peak_rss_mib,
                l.peak_rss_mib / TARGET_RSS_MIB,
            );
        }
    }
    Ok(())
}

async fn measure(opts: &Options, secure: bool, slots: u32) -> anyhow::Result<Measures> {
    let c = Cluster::with_agent_config(&format!("  slots: {slots}\n"), "");
    let mut c = if secure { c.into_secure() } else { c };
    c.bin_dir = crate::target_dir().join("release");
    c.env.push(("RUST_LOG".into(), "warn".into()));
    c.start_coordinator().await;
    c.start_agent("source", "bench-a");
    c.start_agent("train", "bench-b");
    c.wait_for_agents(2).await;
    c.apply(&chain_yaml("bench_chain", opts.steps)).await?;
    c.apply(&chain_yaml("bench_latency", opts.chain)).await?;

    // Warm-up: one task through every code path.
    let warm = c.create_task("bench_chain").await;
    c.wait_status(warm.id, "completed", Duration::from_secs(60))
        .await;

    // ---- throughput
    let mut creators = Vec::new();
    for _ in 0..opts.tasks {
        let mut client = c.client().await;
        creators.push(tokio::spawn(async move {
            client
                .create_task(v1::CreateTaskRequest {
                    workflow: "bench_chain".into(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().id)
        }));
    }
    let mut ids = Vec::new();
    for h in creators {
        ids.push(h.await??);
    }
    let mut client = c.client().await;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = client
            .list_tasks(v1::ListTasksRequest {
                status: "completed".into(),
                limit: (opts.tasks + 10) as u32,
                ..Default::default()
            })
            .await?
            .into_inner()
            .tasks
            .len();
        // The bench tasks plus the warm-up task.
        if done > opts.tasks {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {} tasks completed", opts.tasks + 1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut first, mut last) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
    for id in &ids {
        let t = client
            .get_task_status(v1::TaskRef { task_id: *id })
            .await?
            .into_inner();
        let created = parse_ts(&t.created_at)?;
        let completed = parse_ts(&t.completed_at)?;
        first = Some(first.map_or(created, |f| f.min(created)));
        last = Some(last.map_or(completed, |l| l.max(completed)));
    }
    let (Some(first), Some(last)) = (first, last) else {
        bail!("no tasks ran")
    };
    let wall = (last - first).to_std()?.as_secs_f64();
    let total = opts.tasks * opts.steps;
    let throughput = total as f64 / wall;

    // ---- latency
    let task = c.create_task("bench_latency").await;
    let done = c
        .wait_status(task.id, "completed", Duration::from_secs(600))
        .await;
    let mut handoffs: Vec<f64> = Vec::new();
    for pair in done.steps.windows(2) {
        let finished = parse_ts(&pair[0].completed_at)?;
        let started = parse_ts(&pair[1].started_at)?;
        handoffs.push((started - finished).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    handoffs.sort_by(f64::total_cmp);
    let pct = |p: f64| handoffs[((handoffs.len() as f64 - 1.0) * p).round() as usize];
    let (p50, p99) = (pct(0.50), pct(0.99));

    // ---- one large workflow (once, on the production setup)
    let large = if secure && opts.large_chains > 0 && opts.large_steps > 0 {
        Some(large_run(&c, opts.large_chains, opts.large_steps).await?)
    } else {
        None
    };
    Ok(Measures {
        wall,
        throughput,
        handoffs: handoffs.len(),
        p50,
        p99,
        max: handoffs.last().copied().unwrap_or_default(),
        large,
    })
}

struct LargeRun {
    steps: usize,
    apply_s: f64,
    create_s: f64,
    run_s: f64,
    peak_rss_mib: f64,
}

/// Applies one workflow of `chains x steps` no-op steps, runs a task of it to the end, and
/// reads the coordinator's peak memory.
async fn large_run(c: &Cluster, chains: usize, steps: usize) -> anyhow::Result<LargeRun> {
    let total = chains * steps;
    let def =
        ferry_core::workflow::WorkflowDef::from_yaml(&large_yaml("bench_large", chains, steps))
            .context("large workflow")?;
    let mut client = c
        .client()
        .await
        .max_decoding_message_size(ferry_core::limits::REQUEST_BYTES)
        .max_encoding_message_size(ferry_core::limits::REQUEST_BYTES);
    let t = Instant::now();
    client
        .apply_workflow(v1::ApplyWorkflowRequest {
            definition: Some((&def).into()),
        })
        .await
        .context("applying the large workflow")?;
    let apply_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let task = client
        .create_task(v1::CreateTaskRequest {
            workflow: "bench_large".into(),
            ..Default::default()
        })
        .await
        .context("creating the large task")?
        .into_inner();
    let create_s = t.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let status = loop {
        let t = client
            .get_task_status(v1::TaskRef { task_id: task.id })
            .await?
            .into_inner();
        if matches!(
            t.status.as_str(),
            "completed" | "failed" | "paused" | "cancelled"
        ) {
            break t;
        }
        if Instant::now() > deadline {
            bail!("the large task did not finish: {t:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if status.status != "completed" {
        bail!(
            "the large task ended {}: {}",
            status.status,
            status.status_reason
        );
    }
    let run_s = (parse_ts(&status.completed_at)? - parse_ts(&status.created_at)?)
        .to_std()?
        .as_secs_f64();
    let pid = c.coordinator_pid().context("the coordinator is running")?;
    Ok(LargeRun {
        steps: total,
        apply_s,
        create_s,
        run_s,
        peak_rss_mib: peak_rss_mib(pid)?,
    })
}
