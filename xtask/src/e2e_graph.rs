//! The e2e run's seed 003 scenario, on the same three hosts as the pipeline: DATA on
//! server_21 → DOCKER on training_server (Podman, a locally built image) → STANDALONE on
//! inference_server → download to the coordinator, each input delivered by a verified
//! transfer over the hosts' own sshds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ferry_proto::v1;

pub struct GraphRun<'a> {
    pub base: &'a Path,
    /// server_21, training_server, inference_server.
    pub host_dirs: &'a [PathBuf],
    pub cli: &'a dyn Fn(&[&str]) -> anyhow::Result<String>,
}

/// Words in a scrambled order, enough of them to span several 1 MiB transfer chunks.
fn words() -> Vec<String> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("word{:08}", x % 100_000_000)
        })
        .collect()
}

pub async fn run(g: &GraphRun<'_>, client: &mut ferry_e2e::Client) -> anyhow::Result<()> {
    let words = words();
    let data = g.host_dirs[0].join("data/graph");
    std::fs::create_dir_all(&data)?;
    let words_file = data.join("words.txt");
    std::fs::write(&words_file, words.join("\n") + "\n")?;
    let mut expected: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
    expected.sort();
    let expected: String = expected
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{}:{w}\n", i + 1))
        .collect();

    let graph = g.base.join("graph.yaml");
    std::fs::write(
        &graph,
        format!(
            r#"name: e2e_graph
description: DATA on server_21, DOCKER on training_server, STANDALONE on inference_server, download to the coordinator
nodes:
  - name: words
    service_type: DATA
    agent: server_21
    interfaces: [{{type: STDOUT, path: "{words}"}}]
  - name: shout
    service_type: DOCKER
    agent: training_server
    image: {image}
    entrypoint: [/bin/sh, -c]
    cmd: ["tr a-z A-Z < /input/words.txt | sort > /output/shouted.txt"]
    interfaces:
      - {{type: MOUNT, path: /input/, mount_function: OUTPUT}}
      - {{type: MOUNT, path: /output/, mount_function: INPUT}}
  - name: number
    service_type: STANDALONE
    agent: inference_server
    entrypoint: [grep, -n, ""]
    interfaces: [{{type: STDIN}}, {{type: STDOUT}}]
connections:
  - {{from: {{node: words, interface: STDOUT}}, to: {{node: shout, interface: MOUNT, path: /input/}}}}
  - {{from: {{node: shout, interface: MOUNT, path: /output/}}, to: {{node: number, interface: STDIN}}}}
  - {{from: {{node: number, interface: STDOUT}}, to: {{interface: STDOUT}}, destination_file_name: numbered.txt}}
"#,
            words = words_file.display(),
            image = ferry_e2e::podman::TEST_IMAGE,
        ),
    )?;
    let cli = g.cli;
    cli(&[
        "workflow",
        "create",
        "e2e_graph",
        "--from",
        &graph.display().to_string(),
    ])?;
    print!("{}", cli(&["workflow", "build", "e2e_graph"])?);
    let started = cli(&["--json", "workflow", "execute", "e2e_graph"])?;
    let task: serde_json::Value = serde_json::from_str(&started).context("ferry --json output")?;
    let task_id = task["id"].as_i64().context("task id")?;
    println!("== graph task {task_id} started with `ferry workflow execute e2e_graph`");
    let began = Instant::now();
    let mut last_log = 0;
    let detail = loop {
        if began.elapsed() > Duration::from_secs(300) {
            bail!("graph task {task_id} did not finish in 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let d = client.get_task(v1::TaskRef { task_id }).await?.into_inner();
        let logs = client
            .get_logs(v1::GetLogsRequest {
                task_id,
                after_id: last_log,
                limit: 0,
            })
            .await?
            .into_inner();
        for e in logs.entries {
            last_log = last_log.max(e.id);
            let time = e.timestamp.get(11..19).unwrap_or(&e.timestamp);
            println!("[{time}] [{}] {}", e.step, e.message);
        }
        match d.task.as_ref().map(|t| t.status.as_str()) {
            Some("completed") => break d,
            Some("failed" | "cancelled" | "paused") => bail!(
                "graph task {task_id} ended {}: {}",
                d.task
                    .as_ref()
                    .map(|t| t.status.clone())
                    .unwrap_or_default(),
                d.task
                    .as_ref()
                    .map(|t| t.status_reason.clone())
                    .unwrap_or_default()
            ),
            _ => {}
        }
    };
    let step = |name: &str| {
        detail
            .steps
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no step {name}"))
    };
    for (delivery, consumer) in [("words-to-shout", "shout"), ("shout-to-number", "number")] {
        ensure!(
            step(delivery)?.completed_at <= step(consumer)?.started_at,
            "{consumer} started before its input `{delivery}` was delivered"
        );
    }
    crate::e2e::check_transfers_verified(client, &detail).await?;
    let out = g.base.join("graph-download");
    print!(
        "{}",
        cli(&[
            "workflow",
            "download",
            &task_id.to_string(),
            "--node",
            "number",
            "--to",
            &out.display().to_string(),
        ])?
    );
    let got = std::fs::read_to_string(out.join("numbered.txt"))
        .context("the download has no numbered.txt")?;
    ensure!(
        got == expected,
        "numbered.txt differs from the expected {} lines (got {} lines)",
        words.len(),
        got.lines().count()
    );
    println!(
        "== graph: {} words went DATA → DOCKER → STANDALONE across three hosts and came back verified",
        words.len()
    );
    Ok(())
}
