//! `cargo xtask demo`: an example workflow on this machine — a coordinator (SQLite state), a
//! data-source agent and a training agent as real processes on loopback, and a private sshd
//! standing in for the training host — with the log streamed as a user sees it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_e2e::Cluster;
use ferry_proto::v1;

/// The example workflow shipped in deploy/examples.
fn read_example() -> anyhow::Result<String> {
    let path = crate::workspace_root().join("deploy/examples/produce-ship-check.yaml");
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
    let servers = format!(
        "servers:\n  training_server:\n    host: 127.0.0.1\n    port: {}\n    username: {}\n    key_path: \"{}\"\n    role: training\ntransfer:\n  chunk_size: 262144\n  remote_ferry: \"{}\"\n",
        sshd.port,
        ferry_e2e::sshd::whoami(),
        sshd.path("user_key").display(),
        bin_dir.join("ferry").display()
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
    c.start_agent("source", "source-agent");
    c.start_agent("train", "train-agent");
    c.wait_for_agents(2).await;
    println!(
        "== coordinator at {}; agents source-agent (data_source), train-agent (training)",
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
    let out = area.join("demo");
    let task = client
        .create_task(v1::CreateTaskRequest {
            workflow: def.name.clone(),
            name: "demo".into(),
            params: HashMap::from([("out".to_owned(), out.display().to_string())]),
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
    while let Some(e) = tokio::time::timeout(Duration::from_secs(120), logs.message())
        .await
        .context("no progress for two minutes")??
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
            "   {:<10} {:<10} on {:<13} attempt {}",
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
    if t.status != "completed" {
        bail!("the demo task ended {}: {}", t.status, t.status_reason);
    }
    Ok(())
}
