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
