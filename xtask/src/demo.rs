//! `cargo xtask demo`: the CTR pipeline on this machine — generated sample data in an embedded
//! warehouse, a coordinator (SQLite state), a data-source, a training and an inference agent as
//! real processes on loopback, each "host" with its own directories, and a private sshd that
//! every transfer goes through — with the log streamed as a user sees it. The task is the
//! built-in `ctr_pipeline`, created from seed 000's task request over the HTTP API (with the
//! curl command a user would type, and one to watch it while it runs); the report ends the run.

use std::time::Duration;

use anyhow::{Context, bail};
use ferry_e2e::Cluster;
use ferry_proto::v1;

/// `cargo xtask demo`'s options. The defaults are README's main job; the others shape the
/// run for the dashboard's browser test (a smaller, slower, gated run started from the page).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Stop when the task is done instead of serving the dashboard until Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
    /// Training rows generated (inference rows are a quarter of them).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1_000..=10_000_000))]
    pub rows: u64,
    /// Training epochs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub epochs: u32,
    /// rsync's `--bwlimit` for every transfer (e.g. `2M`), to watch a transfer's progress.
    #[arg(long)]
    pub bandwidth_limit: Option<String>,
    /// Transfer chunk size in bytes.
    #[arg(long, default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(65_536..=1 << 30))]
    pub chunk_size: u64,
    /// Treat the result table as a production table: its load waits for an approver.
    #[arg(long)]
    pub production: bool,
    /// Create no task: serve the cluster and its dashboard, to start a run from the page.
    #[arg(long)]
    pub no_task: bool,
    /// Once the cluster serves, write its addresses here (JSON: `base`, `token_file`, `ca`
    /// and the sample's SQL), for programs driving the demo.
    #[arg(long)]
    pub ready_file: Option<std::path::PathBuf>,
    /// Use the binaries already built (skip the system packages check and `cargo build`).
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if !opts.no_build {
        crate::ensure_system_packages()?;
        crate::cargo(&["build", "--workspace", "--bins"])?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(demo(opts))
}

/// Ctrl-C or SIGTERM (how a test or a service manager stops the demo); the cluster's
/// processes and its sshd stop when it is dropped.
async fn stopped() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

async fn demo(opts: Options) -> anyhow::Result<()> {
    let exit_when_done = opts.exit_when_done;
    let bin_dir = crate::target_dir().join("debug");
    let sshd = ferry_e2e::sshd::Sshd::start();
    let area = sshd.path("area");
    std::fs::create_dir_all(&area)?;
    let agent_lines = format!(
        "  roots: [\"{}\"]\n  known_hosts: \"{}\"\n",
        area.display(),
        sshd.path("known_hosts").display()
    );
    let rows = usize::try_from(opts.rows).context("--rows")?;
    let mut spec = ferry_sampledata::SampleSpec::new(rows, 2024);
    spec.infer_rows = (rows / 4).max(1_000);
    spec.rows_per_part = 50_000;
    let warehouse = area.join("source/warehouse");
    println!(
        "== generating {rows} training and {} inference rows into {}",
        spec.infer_rows,
        warehouse.display()
    );
    ferry_sampledata::generate(&warehouse, &spec).context("sample data")?;
    let server = |name: &str, role: &str| {
        format!(
            "  {name}:\n    host: 127.0.0.1\n    port: {}\n    username: {}\n    key_path: \"{}\"\n    role: {role}\n",
            sshd.port,
            ferry_e2e::sshd::whoami(),
            sshd.path("user_key").display(),
        )
    };
    let mut servers = format!(
        "servers:\n{}{}{}transfer:\n  chunk_size: {}\n  remote_ferry: \"{}\"\n",
        server("server_21", "data_source"),
        server("training_server", "training"),
        server("inference_server", "inference"),
        opts.chunk_size,
        bin_dir.join("ferry").display(),
    );
    if let Some(limit) = &opts.bandwidth_limit {
        servers.push_str(&format!(
            "  bandwidth_limit: {}\n",
            serde_json::json!(limit)
        ));
    }
    servers.push_str(&format!(
        "sql:\n  warehouse_dir: \"{}\"\n  rows_per_part: 50000\n",
        warehouse.display()
    ));
    if opts.production {
        servers.push_str("  production_tables: [\"results.*\"]\n");
    }
    // As production runs: mutual TLS from the deployment's own CA, and tokens.
    let mut c = Cluster::with_agent_config(&agent_lines, &servers).into_secure();
    c.bin_dir = bin_dir;
    println!(
        "== private sshd for the training host on 127.0.0.1:{}",
        sshd.port
    );
    c.env.push(("RUST_LOG".into(), "warn".into()));
    println!(
        "== starting a coordinator and three agents in {}",
        c.dir.path().display()
    );
    c.start_coordinator().await;
    // Each host keeps its FuxiCTR data, models and staging apart, as on separate machines.
    let roots = |host: &str| {
        vec![
            (
                "FERRY_STORAGE__STAGING_DIR".to_owned(),
                area.join(host).join("staging").display().to_string(),
            ),
            (
                "FERRY_FUXICTR_PATHS__DATA_ROOT".to_owned(),
                area.join(host).join("data").display().to_string(),
            ),
            (
                "FERRY_FUXICTR_PATHS__MODEL_ROOT".to_owned(),
                area.join(host).join("models").display().to_string(),
            ),
        ]
    };
    // Agents are named after their `servers` entries: that is how the coordinator knows which
    // host each one can reach over SSH.
    c.start_agent_with_env("source", "server_21", &roots("source"));
    c.start_agent_with_env("train", "training_server", &roots("train"));
    c.start_agent_with_env("infer", "inference_server", &roots("infer"));
    c.wait_for_agents(3).await;
    println!(
        "== coordinator at {}; agents server_21 (data_source), training_server (training), inference_server (inference)",
        c.url()
    );
    println!(
        "== mutual TLS and tokens are on: try `ferry --config {} --coordinator {} whoami` while it runs",
        c.path("cli.yaml").display(),
        c.url()
    );

    let secure = c
        .secure
        .as_ref()
        .context("the demo cluster runs with TLS and tokens")?;
    let api = Api {
        base: c.http_url(),
        ca: secure.pki.join("ca.pem"),
        token_file: secure.pki.join("bootstrap.token"),
    };
    println!(
        "== HTTP API at {} (OpenAPI document /api/openapi.json, reference /api/docs)",
        api.base
    );
    println!(
        "== dashboard at {}/ : log in with the token in {}",
        api.base,
        api.token_file.display()
    );
    let mut client = c.client().await;
    let request = ferry_core::pipeline::CtrTaskRequest {
        name: "campaign_demo".into(),
        experiment_id: "DeepFM_demo".into(),
        sample_sql: format!(
            "SELECT * FROM campaign_sample WHERE dt = '{}'",
            spec.sample_day
        ),
        infer_sql: format!(
            "SELECT * FROM campaign_infer WHERE dt = '{}'",
            spec.infer_day
        ),
        hive_table: "results.campaign_scores".into(),
        partition: Some(format!("dt={}", spec.infer_day)),
        epochs: Some(opts.epochs),
        batch_size: Some(2048),
        model_params: [
            ("embedding_dim", serde_json::json!(8)),
            ("hidden_units", serde_json::json!([64, 64])),
            ("learning_rate", serde_json::json!(0.002)),
            ("seed", serde_json::json!(2024)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        ..Default::default()
    };
    if let Some(path) = &opts.ready_file {
        let ready = serde_json::json!({
            "base": api.base,
            "token_file": api.token_file,
            "ca": api.ca,
            "request": request,
        });
        // Whole or not at all: a program polling for it never reads half of it.
        ferry_fs::write_atomic(path, &serde_json::to_vec_pretty(&ready)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if opts.no_task {
        println!(
            "== no task created: start one from the dashboard ({}/runs/new), e.g. with this request:\n{}",
            api.base,
            serde_json::to_string_pretty(&request)?
        );
        println!("== Ctrl-C stops it");
        stopped().await?;
        println!("== stopping");
        return finish(c);
    }
    println!(
        "== task request (seed 000 §8.2):\n{}",
        serde_yaml::to_string(&request).unwrap_or_default()
    );
    // Created over HTTP as seed 000 §14 does it, with the command a user would type.
    let body_file = c.path("task-request.json");
    std::fs::write(&body_file, serde_json::to_string_pretty(&request)?)?;
    println!(
        "== creating it: {} -H 'Content-Type: application/json' -d @{} {}/api/workflow/tasks",
        api.curl_line(),
        body_file.display(),
        api.base
    );
    let created: serde_json::Value = serde_json::from_str(&api.curl(&[
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data-binary".into(),
        format!("@{}", body_file.display()),
        format!("{}/api/workflow/tasks", api.base),
    ])?)
    .context("the API's answer is not JSON")?;
    let task_id = created["task_id"]
        .as_i64()
        .with_context(|| format!("no task_id in the answer: {created}"))?;
    let task = client
        .get_task_status(v1::TaskRef { task_id })
        .await
        .context("read the task back")?
        .into_inner();
    println!(
        "== task {} created ({}): the built-in {} with {} steps",
        task.id,
        created["status"].as_str().unwrap_or("?"),
        task.workflow,
        task.total_steps
    );
    println!(
        "== while it runs: {} {}/api/workflow/tasks/{}/progress",
        api.curl_line(),
        api.base,
        task.id
    );
    println!(
        "   live: wss://{}/api/workflow/tasks/{}/logs/stream (WebSocket), {}/api/workflow/tasks/{}/events (SSE)\n",
        c.http_addr, task.id, api.base, task.id
    );

    let mut logs = client
        .follow_logs(v1::GetLogsRequest {
            task_id: task.id,
            after_id: 0,
            limit: 0,
        })
        .await?
        .into_inner();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(600), logs.message())
        .await
        .context("no progress for ten minutes")??
    {
        let time = e.timestamp.get(11..23).unwrap_or(&e.timestamp);
        let stage = ferry_core::pipeline::log_label(&e.step);
        println!("[{time}] [{stage}] {}", e.message);
    }
    let detail = client
        .get_task(v1::TaskRef { task_id: task.id })
        .await?
        .into_inner();
    let t = detail.task.unwrap_or_default();
    println!("\n== task {} {}", t.id, t.status);
    for s in &detail.steps {
        println!(
            "   {:<16} {:<10} on {:<13} attempt {}",
            s.name, s.status, s.agent, s.attempt
        );
    }
    let progress = client
        .get_progress(v1::TaskRef { task_id: task.id })
        .await?
        .into_inner();
    for p in progress.steps.iter().filter(|p| p.chunks_total > 0) {
        println!(
            "   {}: {}/{} chunks verified at the destination, {} failed, {} re-sent",
            p.step, p.chunks_completed, p.chunks_total, p.chunks_failed, p.chunk_retries
        );
    }
    let metrics = client
        .get_metrics(v1::TaskRef { task_id: task.id })
        .await?
        .into_inner();
    for m in metrics.metrics.iter().filter(|m| {
        [
            "val_auc",
            "train_loss",
            "samples_per_sec",
            "inference_rows_per_sec",
        ]
        .contains(&m.name.as_str())
    }) {
        println!("   metric {:<24} {:>3} {:>12.4}", m.name, m.index, m.value);
    }
    if t.status != "completed" {
        bail!("the demo task ended {}: {}", t.status, t.status_reason);
    }
    let report_path = area.join("train/models/campaign_demo/DeepFM_demo_report.json");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path)
            .with_context(|| format!("no report at {}", report_path.display()))?,
    )?;
    println!("\n== report {}", report_path.display());
    for e in report["training"]["epochs"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "   epoch {}: train loss {:.4}, validation AUC {:.4}, {:.0} samples/s",
            e["epoch"],
            e["train_loss"].as_f64().unwrap_or(f64::NAN),
            e["val_auc"].as_f64().unwrap_or(f64::NAN),
            e["samples_per_sec"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!(
        "   inference: {:.0} rows at {:.0} rows/s; loaded into results.campaign_scores; total {:.0}s",
        report["inference"]["rows"].as_f64().unwrap_or(0.0),
        report["inference"]["rows_per_sec"].as_f64().unwrap_or(0.0),
        report["total_seconds"].as_f64().unwrap_or(0.0)
    );
    if exit_when_done {
        return finish(c);
    }
    println!(
        "\n== the run stays up for you to look at: dashboard {}/runs/{} (token in {}); Ctrl-C stops it",
        api.base,
        t.id,
        api.token_file.display()
    );
    stopped().await?;
    println!("== stopping");
    finish(c)
}

/// Stops the agents as a service manager would (they close their SSH masters) and checks
/// that no ssh process of the run outlives it.
fn finish(mut c: Cluster) -> anyhow::Result<()> {
    c.stop_agents(std::time::Duration::from_secs(10));
    let left = ferry_transfer::ssh::ssh_processes_under(c.dir.path());
    anyhow::ensure!(
        left.is_empty(),
        "ssh processes {left:?} outlived the demo's agents"
    );
    Ok(())
}

/// The coordinator's HTTP API as the demo's user reaches it: curl over TLS checked against
/// the run's CA, with the bootstrap token (read from its file, never printed).
struct Api {
    base: String,
    ca: std::path::PathBuf,
    token_file: std::path::PathBuf,
}

impl Api {
    /// The start of a curl command that works against the API while the demo runs.
    fn curl_line(&self) -> String {
        format!(
            "curl --cacert {} -H \"Authorization: Bearer $(cat {})\"",
            self.ca.display(),
            self.token_file.display()
        )
    }

    /// Runs curl with `args`; the body of a 2xx answer.
    fn curl(&self, args: &[String]) -> anyhow::Result<String> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("reading {}", self.token_file.display()))?;
        let out = std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--fail-with-body", "--cacert"])
            .arg(&self.ca)
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", token.trim()))
            .args(args)
            .output()
            .context("running curl")?;
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "curl failed: {} {body}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(body)
    }
}
