//! `cargo xtask demo`: the CTR pipeline on this machine — generated sample data in an embedded
//! warehouse, a coordinator (SQLite state), a data-source, a training and an inference agent as
//! real processes on loopback, each "host" with its own directories, and a private sshd that
//! every transfer goes through — with the log streamed as a user sees it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_e2e::Cluster;
use ferry_proto::v1;

/// The pipeline workflow shipped in deploy/examples.
fn read_example() -> anyhow::Result<String> {
    let path = crate::workspace_root().join("deploy/examples/ctr-pipeline.yaml");
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run() -> anyhow::Result<()> {
    crate::ensure_system_packages()?;
    crate::cargo(&["build", "--workspace", "--bins"])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(demo())
}

async fn demo() -> anyhow::Result<()> {
    let bin_dir = crate::target_dir().join("debug");
    let sshd = ferry_e2e::sshd::Sshd::start();
    let area = sshd.path("area");
    std::fs::create_dir_all(&area)?;
    let agent_lines = format!(
        "  roots: [\"{}\"]\n  known_hosts: \"{}\"\n",
        area.display(),
        sshd.path("known_hosts").display()
    );
    let rows = 200_000;
    let mut spec = ferry_sampledata::SampleSpec::new(rows, 2024);
    spec.infer_rows = 50_000;
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
    let servers = format!(
        "servers:\n{}{}{}transfer:\n  chunk_size: 4194304\n  remote_ferry: \"{}\"\nsql:\n  warehouse_dir: \"{}\"\n  rows_per_part: 50000\n",
        server("server_21", "data_source"),
        server("training_server", "training"),
        server("inference_server", "inference"),
        bin_dir.join("ferry").display(),
        warehouse.display(),
    );
    let mut c = Cluster::with_agent_config(&agent_lines, &servers);
    c.bin_dir = bin_dir;
    println!(
        "== private sshd for the training host on 127.0.0.1:{}",
        sshd.port
    );
    c.env.push(("RUST_LOG".into(), "warn".into()));
    println!(
        "== starting a coordinator and two agents in {}",
        c.dir.path().display()
    );
    c.start_coordinator().await;
    // Each host keeps its FuxiCTR data and models apart, as on separate machines.
    let roots = |host: &str| {
        vec![
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
    c.start_agent_with_env("source", "source-agent", &roots("source"));
    c.start_agent_with_env("train", "train-agent", &roots("train"));
    c.start_agent_with_env("infer", "infer-agent", &roots("infer"));
    c.wait_for_agents(3).await;
    println!(
        "== coordinator at {}; agents source-agent (data_source), train-agent (training), infer-agent (inference)",
        c.url()
    );

    let def = ferry_core::workflow::WorkflowDef::from_yaml(&read_example()?)
        .context("example workflow")?;
    let mut client = c.client().await;
    client
        .apply_workflow(v1::ApplyWorkflowRequest {
            definition: Some((&def).into()),
        })
        .await
        .context("apply the example workflow")?;
    let task = client
        .create_task(v1::CreateTaskRequest {
            workflow: def.name.clone(),
            name: "demo".into(),
            params: HashMap::from([
                ("area".to_owned(), area.display().to_string()),
                ("day".to_owned(), spec.sample_day.clone()),
                ("infer_day".to_owned(), spec.infer_day.clone()),
            ]),
        })
        .await?
        .into_inner();
    println!("== task {} created from workflow {}\n", task.id, def.name);

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
        let step = if e.step.is_empty() { "task" } else { &e.step };
        println!("[{time}] [{step}] {}", e.message);
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
    Ok(())
}
