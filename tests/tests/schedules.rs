//! Capacity and schedules through the real daemons: an agent that declares two slots and two
//! GPUs runs GPU steps two at a time, each job seeing only the GPU it was given; a schedule
//! made with the CLI creates runs on the coordinator's own timer, each with its logical date.

use std::time::Duration;

use ferry_e2e::{Cluster, lines};
use ferry_proto::v1;

/// The agent `gpuhost` (role data_source) with two slots and GPUs 0 and 1.
fn gpu_cluster() -> Cluster {
    Cluster::with_agent_config(
        "  slots: 2\n",
        "servers:\n  gpuhost:\n    role: data_source\n    host: 127.0.0.1\n    username: ferry\n    key_path: /nonexistent\n    gpus: [0, 1]\n",
    )
}

/// Runs the CLI; it must succeed. Its standard output.
fn cli_ok(c: &Cluster, args: &[&str]) -> String {
    let out = c.cli(args);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the schedule's newest backfill completed, none of its runs failing.
async fn backfill_done(client: &mut ferry_e2e::Client, schedule: &str) -> v1::Backfill {
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let b = client
            .list_backfills(v1::ListBackfillsRequest {
                schedule: schedule.into(),
            })
            .await
            .expect("listed")
            .into_inner()
            .backfills
            .remove(0);
        assert_eq!(b.failed, 0, "{b:?}");
        if b.status == "completed" {
            return b;
        }
        assert!(std::time::Instant::now() < deadline, "{b:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_steps_run_two_at_a_time_each_seeing_only_its_own_gpu() {
    let mut c = gpu_cluster();
    c.start_coordinator().await;
    c.start_agent("source", "gpuhost");
    c.wait_for_agents(1).await;
    let record = c.path("gpu.log");
    // Each step writes when it starts and ends, with the GPUs it sees.
    let script = format!(
        "echo \"start $FERRY_GPU_IDS $CUDA_VISIBLE_DEVICES $(date +%s%N)\" >> {r}; sleep 1; echo \"end $FERRY_GPU_IDS $CUDA_VISIBLE_DEVICES $(date +%s%N)\" >> {r}",
        r = record.display()
    );
    let mut yaml = "name: gpu_jobs\nsteps:\n".to_owned();
    for i in 0..6 {
        yaml.push_str(&format!(
            "  - name: g{i}\n    kind: exec\n    placement: {{agent: gpuhost}}\n    resources: {{gpus: 1}}\n    params:\n      program: sh\n      args: [\"-c\", {script:?}]\n"
        ));
    }
    c.apply(&yaml).await.expect("stored");
    let task = c.create_task("gpu_jobs").await;
    c.wait_status(task.id, "completed", Duration::from_secs(120))
        .await;
    // Replay the record: never more than two at once, never one GPU twice.
    let mut running: Vec<String> = Vec::new();
    let mut most = 0;
    for line in lines(&record) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.len(), 4, "`{line}`");
        let (event, gpu, cuda) = (parts[0], parts[1], parts[2]);
        assert_eq!(gpu, cuda, "CUDA sees the GPU the job was given: `{line}`");
        assert!(gpu == "0" || gpu == "1", "one GPU of the agent's: `{line}`");
        if event == "start" {
            assert!(
                !running.iter().any(|g| g == gpu),
                "GPU {gpu} given twice at once"
            );
            running.push(gpu.to_owned());
            most = most.max(running.len());
        } else {
            running.retain(|g| g != gpu);
        }
    }
    assert!(most <= 2, "more than two at once");
    assert_eq!(most, 2, "two ran at once");
    assert_eq!(lines(&record).len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_made_with_the_cli_runs_on_its_own_with_its_logical_dates() {
    let mut c = Cluster::new();
    c.env
        .push(("FERRY_WORKFLOW__SCHEDULE_INTERVAL".into(), "1".into()));
    c.start_coordinator().await;
    c.start_agent("source", "src-0");
    c.wait_for_agents(1).await;
    let record = c.path("runs.log");
    c.apply(&format!(
        "name: stamp\nsteps:\n  - name: a\n    kind: exec\n    placement: {{role: data_source}}\n    params:\n      program: sh\n      args: [\"-c\", \"echo ${{logical_date}} ${{param.table}} >> {}\"]\n",
        record.display()
    ))
    .await
    .expect("stored");
    // Bad input: a clear error naming the field, nothing stored.
    let bad = c.cli(&[
        "schedule",
        "create",
        "every_second",
        "--cron",
        "61 * * * *",
        "-w",
        "stamp",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("minute"), "{err}");
    let bad = c.cli(&[
        "schedule",
        "create",
        "every_second",
        "--cron",
        "* * * * * *",
        "--timezone",
        "Mars/Olympus",
        "-w",
        "stamp",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("timezone"));
    // Every second (six fields), in Shanghai's zone.
    let made = c.cli(&[
        "schedule",
        "create",
        "every_second",
        "--cron",
        "* * * * * *",
        "--timezone",
        "Asia/Shanghai",
        "-w",
        "stamp",
        "-p",
        "table=t_${ds_nodash}",
        "--concurrency",
        "allow",
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut client = c.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let detail = loop {
        let d = client
            .get_schedule(v1::ScheduleRef {
                name: "every_second".into(),
            })
            .await
            .expect("shown")
            .into_inner();
        if d.runs.iter().filter(|r| r.status == "completed").count() >= 2 {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no two completed runs: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Each run's logical date reached its job, in the schedule's zone, once.
    let written = lines(&record);
    for run in detail.runs.iter().filter(|r| r.status == "completed") {
        let want = format!("{} t_{}", run.logical_date, run.ds.replace('-', ""));
        assert!(run.logical_date.ends_with("+08:00"), "{run:?}");
        assert_eq!(
            written.iter().filter(|l| **l == want).count(),
            1,
            "`{want}` in {written:?}"
        );
    }
    // Paused: no new run.
    let paused = c.cli(&["schedule", "pause", "every_second"]);
    assert!(paused.status.success());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = client
        .get_schedule(v1::ScheduleRef {
            name: "every_second".into(),
        })
        .await
        .expect("shown")
        .into_inner()
        .runs
        .len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = client
        .get_schedule(v1::ScheduleRef {
            name: "every_second".into(),
        })
        .await
        .expect("shown")
        .into_inner()
        .runs
        .len();
    assert_eq!(before, after, "a paused schedule creates nothing");
    let listed = c.cli(&["schedule", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("paused"));
}

/// A daily export-and-load on the real SQL engine, backfilled over 30 days three at a time:
/// each run's date reaches its SQL and its partition, 30 partitions are loaded, never more
/// than three runs at once, and a second backfill of the range finds nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_day_backfill_loads_thirty_partitions_three_at_a_time() {
    let warehouse = tempfile::tempdir().expect("tmp");
    let mut spec = ferry_sampledata::SampleSpec::new(2_000, 5);
    spec.rows_per_part = 1_000;
    ferry_sampledata::generate(warehouse.path(), &spec).expect("sample data");
    let mut c = Cluster::with_config(&format!(
        "sql:\n  warehouse_dir: \"{}\"\n",
        warehouse.path().display()
    ));
    c.env
        .push(("FERRY_WORKFLOW__SCHEDULE_INTERVAL".into(), "1".into()));
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.wait_for_agents(1).await;
    let staging = c.path("work/staging/daily");
    c.apply(&format!(
        r#"name: daily_copy
steps:
  - name: export
    kind: sql_export
    placement: {{role: data_source}}
    params:
      sql: "SELECT sample_id, user_id, '${{ds}}' AS run_day FROM campaign_infer WHERE dt = '2026-01-22' LIMIT 20"
      output_dir: "{staging}/${{ds_nodash}}"
  - name: load
    kind: hive_load
    placement: {{role: data_source}}
    inputs: [export]
    params: {{table: scores.daily_copy, partition: "dt=${{ds}}", parts_dir: "{staging}/${{ds_nodash}}", expected_rows: 20}}
"#,
        staging = staging.display()
    ))
    .await
    .expect("stored");
    cli_ok(
        &c,
        &[
            "schedule",
            "create",
            "daily",
            "--cron",
            "0 0 * * *",
            "-w",
            "daily_copy",
            "--paused",
        ],
    );
    // A reversed range is refused, naming the field.
    let reversed = c.cli(&[
        "backfill",
        "create",
        "daily",
        "--start",
        "2026-01-30",
        "--end",
        "2026-01-01",
    ]);
    assert!(!reversed.status.success());
    assert!(String::from_utf8_lossy(&reversed.stderr).contains("end"));
    let dry = cli_ok(
        &c,
        &[
            "backfill",
            "create",
            "daily",
            "--start",
            "2026-01-01",
            "--end",
            "2026-01-30",
            "--dry-run",
        ],
    );
    assert!(dry.contains("30 runs would be created"), "{dry}");
    cli_ok(
        &c,
        &[
            "backfill",
            "create",
            "daily",
            "--start",
            "2026-01-01",
            "--end",
            "2026-01-30",
            "--max-active",
            "3",
        ],
    );
    let mut client = c.client().await;
    let b = backfill_done(&mut client, "daily").await;
    assert_eq!((b.done, b.running, b.left), (30, 0, 0), "{b:?}");
    // 30 partitions, each loaded by the run of its date.
    for day in 1..=30 {
        let part = warehouse
            .path()
            .join(format!("scores.db/daily_copy/dt=2026-01-{day:02}"));
        assert!(
            std::fs::read_dir(&part).is_ok_and(|d| d.count() > 0),
            "{} loaded",
            part.display()
        );
    }
    // Never more than three at once (the tasks' own times).
    let tasks = client
        .list_tasks(v1::ListTasksRequest {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("tasks")
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 30);
    let mut edges: Vec<(String, i32)> = Vec::new();
    for t in &tasks {
        assert_eq!(t.status, "completed");
        edges.push((t.started_at.clone(), 1));
        edges.push((t.completed_at.clone(), -1));
    }
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    assert!(most <= 3, "{most} runs at once");
    // The date reached the data: the partition of Jan 5 holds rows of run_day 2026-01-05.
    c.apply(&format!(
        r#"name: check_day
steps:
  - name: q
    kind: sql_export
    placement: {{role: data_source}}
    params:
      sql: "SELECT sample_id FROM scores.daily_copy WHERE dt = '2026-01-05' AND run_day = '2026-01-05'"
      output_dir: "{}/check"
"#,
        staging.display()
    ))
    .await
    .expect("stored");
    let check = c.create_task("check_day").await;
    let done = c
        .wait_status(check.id, "completed", Duration::from_secs(90))
        .await;
    let progress: serde_json::Value =
        serde_json::from_str(&ferry_e2e::step(&done, "q").progress_json).expect("json");
    assert_eq!(progress["rows"], 20);
    // Nothing is missing any more.
    let again = cli_ok(
        &c,
        &[
            "backfill",
            "create",
            "daily",
            "--start",
            "2026-01-01",
            "--end",
            "2026-01-30",
            "--dry-run",
        ],
    );
    assert!(again.contains("0 runs would be created"), "{again}");
}

/// The CTR pipeline (export, train, infer, load) as a daily schedule, backfilled for two
/// days: each run trains on the day before its date, scores its date, and loads the scores
/// into its date's partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_ctr_pipeline_backfilled_for_two_days_loads_each_days_partition() {
    let warehouse = tempfile::tempdir().expect("tmp");
    for (seed, sample_day, infer_day) in [
        (11, "2026-01-21", "2026-01-22"),
        (12, "2026-01-22", "2026-01-23"),
    ] {
        let mut spec = ferry_sampledata::SampleSpec::new(2_000, seed);
        spec.infer_rows = 500;
        spec.rows_per_part = 1_000;
        spec.sample_day = sample_day.into();
        spec.infer_day = infer_day.into();
        ferry_sampledata::generate(warehouse.path(), &spec).expect("sample data");
    }
    let data_root = tempfile::tempdir().expect("tmp");
    let mut c = Cluster::with_config(&format!(
        "sql:\n  warehouse_dir: \"{w}\"\nfuxictr_paths:\n  data_root: \"{d}/data\"\n  model_root: \"{d}/models\"\n",
        w = warehouse.path().display(),
        d = data_root.path().display()
    ));
    c.env
        .push(("FERRY_WORKFLOW__SCHEDULE_INTERVAL".into(), "1".into()));
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.start_agent("train", "train-1");
    c.start_agent("infer", "infer-1");
    c.wait_for_agents(3).await;
    let staging = c.path("work/staging");
    c.apply(&format!(
        r#"name: ctr_daily
steps:
  - name: export_sample
    kind: sql_export
    placement: {{role: data_source}}
    params: {{sql: "SELECT * FROM campaign_sample WHERE dt = '${{prev_ds}}'", output_dir: "{s}/${{ds_nodash}}/sample_data"}}
  - name: export_infer
    kind: sql_export
    placement: {{role: data_source}}
    params: {{sql: "SELECT * FROM campaign_infer WHERE dt = '${{ds}}'", output_dir: "{s}/${{ds_nodash}}/infer_data"}}
  - name: train
    kind: train
    placement: {{role: training}}
    inputs: [export_sample]
    params:
      dataset_id: "campaign_${{ds_nodash}}"
      sample_dir: "{s}/${{ds_nodash}}/sample_data"
      model: {{model: DeepFM, model_id: deepfm_daily, embedding_dim: 4, hidden_units: [8],
               batch_size: 256, epochs: 1, learning_rate: 0.003}}
  - name: infer
    kind: infer
    placement: {{role: inference}}
    inputs: [train, export_infer]
    params: {{dataset_id: "campaign_${{ds_nodash}}", model_id: deepfm_daily, expid: daily, input_dir: "{s}/${{ds_nodash}}/infer_data"}}
  - name: load
    kind: hive_load
    placement: {{role: data_source}}
    inputs: [infer]
    params: {{table: scores.campaign_scores, partition: "dt=${{ds}}", parts_dir: "{r}/campaign_${{ds_nodash}}/daily_inference_result", expected_rows: 500}}
"#,
        s = staging.display(),
        r = data_root.path().join("data").display()
    ))
    .await
    .expect("stored");
    cli_ok(
        &c,
        &[
            "schedule",
            "create",
            "ctr_daily",
            "--cron",
            "0 0 * * *",
            "-w",
            "ctr_daily",
            "--paused",
        ],
    );
    cli_ok(
        &c,
        &[
            "backfill",
            "create",
            "ctr_daily",
            "--start",
            "2026-01-22",
            "--end",
            "2026-01-23",
            "--max-active",
            "2",
        ],
    );
    let mut client = c.client().await;
    let b = backfill_done(&mut client, "ctr_daily").await;
    assert_eq!(b.done, 2, "{b:?}");
    let tasks = client
        .list_tasks(v1::ListTasksRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("tasks")
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 2);
    for (day, nodash) in [("2026-01-22", "20260122"), ("2026-01-23", "20260123")] {
        let t = tasks
            .iter()
            .find(|t| t.name == format!("ctr_daily_{nodash}"))
            .expect("the day's run");
        let logs = c.logs_text(t.id).await;
        assert!(
            logs.contains(&format!(
                "into scores.campaign_scores dt={day}; row count verified"
            )),
            "{logs}"
        );
        let part = warehouse
            .path()
            .join(format!("scores.db/campaign_scores/dt={day}"));
        assert!(
            std::fs::read_dir(&part).is_ok_and(|d| d.count() > 0),
            "{} loaded",
            part.display()
        );
    }
}
