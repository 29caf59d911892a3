//! The engine, exercised through the real daemons: DAG execution across agents, validation,
//! coordinator crashes, pause/resume, cancel, retries, agent loss.

use std::path::Path;
use std::time::Duration;

use ferry_e2e::{Cluster, lines, step};
use ferry_proto::v1;

const T: Duration = Duration::from_secs(60);

/// A workflow of `sh -c` steps. Each entry: (name, role, inputs, script, extra YAML lines).
fn shell_workflow(name: &str, steps: &[(&str, &str, &[&str], &str, &str)]) -> String {
    let mut y = format!("name: {name}\nsteps:\n");
    for (step, placement, inputs, script, extra) in steps {
        let placement = if let Some(agent) = placement.strip_prefix("agent:") {
            format!("{{agent: {agent}}}")
        } else {
            format!("{{role: {placement}}}")
        };
        y.push_str(&format!(
            "  - name: {step}\n    kind: exec\n    placement: {placement}\n    inputs: {inputs:?}\n    params:\n      program: sh\n      args: [\"-c\", {script:?}]\n"
        ));
        for line in extra.lines() {
            y.push_str(&format!("    {line}\n"));
        }
    }
    y
}

async fn cluster_with_two_agents() -> Cluster {
    let mut c = Cluster::new();
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.start_agent("train", "train-1");
    c.wait_for_agents(2).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_step_dag_runs_across_two_agents() {
    let c = cluster_with_two_agents().await;
    let d = c.dir.path().display();
    let wf = shell_workflow(
        "produce_transform_check",
        &[
            (
                "produce",
                "data_source",
                &[],
                &format!("seq 1 100 > {d}/numbers.txt; echo produced 100 numbers"),
                "",
            ),
            (
                "transform",
                "training",
                &["produce"],
                &format!(
                    "awk '{{s+=$1}} END {{print s}}' {d}/numbers.txt > {d}/sum.txt; echo sum=$(cat {d}/sum.txt)"
                ),
                "",
            ),
            (
                "check",
                "agent:src-1",
                &["transform"],
                &format!("test \"$(cat {d}/sum.txt)\" = 5050"),
                "retry: {max_retries: 0}",
            ),
        ],
    );
    c.apply(&wf).await.expect("valid workflow");
    let task = c.create_task("produce_transform_check").await;
    let done = c.wait_status(task.id, "completed", T).await;

    assert_eq!(
        std::fs::read_to_string(c.path("sum.txt"))
            .expect("sum written")
            .trim(),
        "5050"
    );
    assert_eq!(step(&done, "produce").agent, "src-1");
    assert_eq!(step(&done, "transform").agent, "train-1");
    assert_eq!(step(&done, "transform").constraint, "INPUTS_READY");
    assert_eq!(step(&done, "produce").constraint, "NONE");
    for s in &done.steps {
        assert_eq!(s.status, "completed", "{s:?}");
        assert_eq!(s.attempt, 1, "each step ran once: {s:?}");
        assert!(!s.job_id.is_empty());
    }
    // Steps ran in dependency order.
    let order = |n: &str| step(&done, n).started_at.clone();
    assert!(order("produce") <= order("transform") && order("transform") <= order("check"));
    let logs = c.logs_text(task.id).await;
    assert!(
        logs.contains("[produce] stdout: produced 100 numbers"),
        "{logs}"
    );
    assert!(logs.contains("[transform] stdout: sum=5050"), "{logs}");
    assert!(logs.contains("workflow complete"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_workflows_are_rejected_with_the_step_named() {
    let mut c = Cluster::new();
    c.start_coordinator().await;
    let cycle = "name: cyclic\nsteps:\n  - {name: a, kind: noop, placement: {role: training}, inputs: [c]}\n  - {name: b, kind: noop, placement: {role: training}, inputs: [a]}\n  - {name: c, kind: noop, placement: {role: training}, inputs: [b]}\n";
    let err = c.apply(cycle).await.expect_err("a cycle is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "invalid workflow: cycle between steps: a -> b -> c -> a"
    );

    let unknown = "name: unknown_kind\nsteps:\n  - {name: fetch, kind: noop, placement: {role: training}}\n  - {name: teleport_it, kind: teleport, placement: {role: training}, inputs: [fetch]}\n";
    let err = c
        .apply(unknown)
        .await
        .expect_err("an unknown kind is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("step `teleport_it`: unknown step kind `teleport`"),
        "{}",
        err.message()
    );

    // Nothing was stored for either.
    let list = c
        .client()
        .await
        .list_workflows(v1::ListWorkflowsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(list.workflows.is_empty(), "{list:?}");
    // And a task of a workflow that does not exist is a clear error.
    let err = c
        .client()
        .await
        .create_task(v1::CreateTaskRequest {
            workflow: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such workflow");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "workflow `nope` not found");
}

/// A chain whose steps append to a side-effect file, the middle one slowly.
fn side_effect_chain(dir: &Path, name: &str, middle_secs: u32) -> String {
    let fx = dir.join("effects.txt");
    let fx = fx.display();
    shell_workflow(
        name,
        &[
            ("a", "data_source", &[], &format!("echo a >> {fx}"), ""),
            (
                "b",
                "training",
                &["a"],
                &format!("echo b-start >> {fx}; sleep {middle_secs}; echo b >> {fx}"),
                "",
            ),
            ("c", "data_source", &["b"], &format!("echo c >> {fx}"), ""),
        ],
    )
}

async fn wait_step_running(c: &Cluster, task: i64, name: &str) {
    c.wait_until(task, T, &format!("{name} running"), |d| {
        step(d, name).status == "running"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_resumes_and_reattaches_the_running_step() {
    let mut c = cluster_with_two_agents().await;
    c.apply(&side_effect_chain(c.dir.path(), "chain", 4))
        .await
        .expect("valid");
    let task = c.create_task("chain").await;
    wait_step_running(&c, task.id, "b").await;

    c.kill_coordinator();
    c.start_coordinator().await;

    let done = c.wait_status(task.id, "completed", T).await;
    assert_eq!(
        lines(&c.path("effects.txt")),
        ["a", "b-start", "b", "c"],
        "no completed step ran twice"
    );
    assert_eq!(step(&done, "a").attempt, 1);
    assert_eq!(step(&done, "b").attempt, 1, "b was re-attached, not re-run");
    let logs = c.logs_text(task.id).await;
    assert!(logs.contains("re-attached to job"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_finishes_while_the_coordinator_is_down_is_not_run_again() {
    let mut c = cluster_with_two_agents().await;
    c.apply(&side_effect_chain(c.dir.path(), "chain", 1))
        .await
        .expect("valid");
    let task = c.create_task("chain").await;
    wait_step_running(&c, task.id, "b").await;

    c.kill_coordinator();
    // b finishes with nobody listening; the agent keeps its result.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lines(&c.path("effects.txt")), ["a", "b-start", "b"]);
    c.start_coordinator().await;

    c.wait_status(task.id, "completed", T).await;
    assert_eq!(lines(&c.path("effects.txt")), ["a", "b-start", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_steps_and_resume_continues() {
    let c = cluster_with_two_agents().await;
    c.apply(&side_effect_chain(c.dir.path(), "chain", 2))
        .await
        .expect("valid");
    let task = c.create_task("chain").await;
    wait_step_running(&c, task.id, "b").await;

    let paused = c
        .client()
        .await
        .pause_task(v1::TaskRef { task_id: task.id })
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(paused.status, "paused");
    // b is allowed to finish; c must not start while paused.
    c.wait_until(task.id, T, "b completed", |d| {
        step(d, "b").status == "completed"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let d = c.task(task.id).await;
    assert_eq!(step(&d, "c").status, "pending");
    assert_eq!(d.task.as_ref().map(|t| t.status.as_str()), Some("paused"));
    assert_eq!(lines(&c.path("effects.txt")), ["a", "b-start", "b"]);

    let err = c
        .client()
        .await
        .pause_task(v1::TaskRef { task_id: task.id })
        .await
        .expect_err("already paused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    c.client()
        .await
        .resume_task(v1::TaskRef { task_id: task.id })
        .await
        .expect("resume");
    c.wait_status(task.id, "completed", T).await;
    assert_eq!(lines(&c.path("effects.txt")), ["a", "b-start", "b", "c"]);
}

fn process_alive(pid: i32) -> bool {
    // A zombie has exited; only its parent has not reaped it yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_process_on_the_agent() {
    let c = cluster_with_two_agents().await;
    let pidfile = c.path("sleeper.pid");
    let wf = shell_workflow(
        "sleeper",
        &[
            // `$$$$` is the shell's `$$`: step parameters treat `$$` as an escaped `$`.
            (
                "sleep",
                "training",
                &[],
                &format!("echo $$$$ > {}; exec sleep 1000", pidfile.display()),
                "",
            ),
            ("after", "training", &["sleep"], "true", ""),
        ],
    );
    c.apply(&wf).await.expect("valid");
    let task = c.create_task("sleeper").await;
    wait_step_running(&c, task.id, "sleep").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let pid: i32 = loop {
        if let Ok(p) = std::fs::read_to_string(&pidfile)
            && let Ok(p) = p.trim().parse()
        {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the step never wrote its pid"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(process_alive(pid));

    let t = c
        .client()
        .await
        .cancel_task(v1::TaskRef { task_id: task.id })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(t.status, "cancelled");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while process_alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "process {pid} survived the cancel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = c.task(task.id).await;
    assert_eq!(step(&d, "sleep").status, "cancelled");
    assert_eq!(step(&d, "after").status, "cancelled");
    let err = c
        .client()
        .await
        .cancel_task(v1::TaskRef { task_id: task.id })
        .await
        .expect_err("already cancelled");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_runs_the_task_again_from_its_failed_step() {
    let c = cluster_with_two_agents().await;
    let fx = c.path("effects.txt");
    let flag = c.path("fixed");
    let wf = shell_workflow(
        "fragile",
        &[
            (
                "a",
                "data_source",
                &[],
                &format!("echo a >> {}", fx.display()),
                "",
            ),
            (
                "b",
                "training",
                &["a"],
                &format!("echo b >> {}; test -f {}", fx.display(), flag.display()),
                "retry: {max_retries: 1, backoff_ms: 100}",
            ),
            (
                "c",
                "data_source",
                &["b"],
                &format!("echo c >> {}", fx.display()),
                "",
            ),
        ],
    );
    c.apply(&wf).await.expect("valid");
    let task = c.create_task("fragile").await;
    let failed = c.wait_status(task.id, "failed", T).await;
    let b = step(&failed, "b");
    assert_eq!(b.status, "failed");
    assert_eq!(b.retry_count, 1, "one retry was made before giving up");
    assert!(b.error_message.contains("exited with code 1"), "{b:?}");
    assert!(
        failed
            .task
            .as_ref()
            .is_some_and(|t| t.status_reason.contains("step `b` failed after 1 retries")),
        "{failed:?}"
    );
    assert_eq!(step(&failed, "c").status, "pending");

    std::fs::write(&flag, "").expect("fix the cause");
    c.client()
        .await
        .retry_task(v1::TaskRef { task_id: task.id })
        .await
        .expect("retry");
    let done = c.wait_status(task.id, "completed", T).await;
    assert_eq!(
        lines(&fx),
        ["a", "b", "b", "b", "c"],
        "a did not run again; b ran twice, then once more"
    );
    assert_eq!(step(&done, "a").attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_permanent_ones_pause_the_task() {
    let c = cluster_with_two_agents().await;
    let counter = c.path("count");
    let wf = shell_workflow(
        "flaky",
        &[
            (
                "flaky",
                "training",
                &[],
                // Fails on the first two attempts, succeeds on the third.
                &format!(
                    "echo x >> {0}; test $(wc -l < {0}) -ge 3",
                    counter.display()
                ),
                "retry: {max_retries: 3, backoff_ms: 100}",
            ),
            (
                "bad_input",
                "training",
                &["flaky"],
                "echo 'no such table' >&2; exit 3",
                "params_extra: none",
            ),
        ],
    );
    // `permanent_exit_codes` goes into params; patch the YAML of the second step.
    let wf = wf.replace("    params_extra: none\n", "").replace(
        "args: [\"-c\", \"echo 'no such table' >&2; exit 3\"]",
        "args: [\"-c\", \"echo 'no such table' >&2; exit 3\"]\n      permanent_exit_codes: [3]",
    );
    c.apply(&wf).await.expect("valid");
    let task = c.create_task("flaky").await;
    let paused = c.wait_status(task.id, "paused", T).await;
    let flaky = step(&paused, "flaky");
    assert_eq!(flaky.status, "completed");
    assert_eq!(flaky.retry_count, 2);
    assert_eq!(flaky.attempt, 3);
    let bad = step(&paused, "bad_input");
    assert_eq!(bad.status, "failed");
    assert_eq!(bad.retry_count, 0, "a permanent error is not retried");
    let reason = paused
        .task
        .as_ref()
        .map(|t| t.status_reason.clone())
        .unwrap_or_default();
    assert_eq!(
        reason,
        "step `bad_input` failed permanently: `sh` exited with code 3"
    );
    let logs = c.logs_text(task.id).await;
    assert!(logs.contains("retry 1/3"), "{logs}");
    assert!(logs.contains("stderr: no such table"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_agent_has_its_step_retried_on_another() {
    let mut c = Cluster::new();
    c.start_coordinator().await;
    c.start_agent("train", "train-1");
    c.wait_for_agents(1).await;
    let fx = c.path("effects.txt");
    let wf = shell_workflow(
        "long",
        &[(
            "work",
            "training",
            &[],
            &format!("echo $FERRY_ATTEMPT >> {}; sleep 3", fx.display()),
            "retry: {backoff_ms: 100}",
        )],
    );
    c.apply(&wf).await.expect("valid");
    let task = c.create_task("long").await;
    wait_step_running(&c, task.id, "work").await;
    c.start_agent("train", "train-2");
    c.wait_for_agents(2).await;

    c.kill_agent("train-1");
    let done = c.wait_status(task.id, "completed", T).await;
    let work = step(&done, "work");
    assert_eq!(work.agent, "train-2");
    assert_eq!(work.attempt, 2);
    assert_eq!(work.retry_count, 1);
    let logs = c.logs_text(task.id).await;
    assert!(logs.contains("agent train-1 unreachable"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_refuses_a_bad_config_naming_the_key() {
    let c = Cluster::with_config("transfer:\n  paralel_workers: 2\n");
    let out = std::process::Command::new(ferry_e2e::bin("ferry-coordinatord"))
        .arg("--config")
        .arg(&c.config)
        .output()
        .expect("run coordinatord");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("paralel_workers"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_coordinator_cleanly_and_state_survives() {
    let mut c = cluster_with_two_agents().await;
    c.apply(&side_effect_chain(c.dir.path(), "chain", 1))
        .await
        .expect("valid");
    let task = c.create_task("chain").await;
    c.wait_status(task.id, "completed", T).await;
    let status = c.stop_coordinator().expect("coordinator was running");
    assert!(status.success(), "exit status {status}");
    c.start_coordinator().await;
    let d = c.task(task.id).await;
    assert_eq!(d.task.map(|t| t.status), Some("completed".into()));
    assert_eq!(lines(&c.path("effects.txt")), ["a", "b-start", "b", "c"]);
}

/// A cluster whose coordinator keeps its state in the PostgreSQL database that
/// `FERRY_TEST_POSTGRES_E2E_URL` names; `None` (the tier skipped) when it is not set.
/// The PostgreSQL tests share one database, and a database serves one coordinator at a time
/// (two engines would both recover each other's tasks and number log lines alike): they run
/// one after the other.
static ONE_COORDINATOR_PER_DATABASE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn postgres_cluster() -> Option<Cluster> {
    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_E2E_URL") else {
        eprintln!("FERRY_TEST_POSTGRES_E2E_URL is not set: the PostgreSQL tier is skipped");
        return None;
    };
    let mut c = Cluster::new();
    // The environment override is how operators point the coordinator elsewhere, too.
    c.env.push(("FERRY_COORDINATOR__DATABASE_URL".into(), url));
    Some(c)
}

/// The same crash-and-resume run with the state in a real PostgreSQL, when
/// `FERRY_TEST_POSTGRES_E2E_URL` names an (empty) database; `.ci/run` sets one up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_runs_and_recovers_on_postgresql() {
    let _alone = ONE_COORDINATOR_PER_DATABASE.lock().await;
    let Some(mut c) = postgres_cluster() else {
        return;
    };
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.start_agent("train", "train-1");
    c.wait_for_agents(2).await;
    let name = format!("pg_chain_{}", std::process::id());
    c.apply(&side_effect_chain(c.dir.path(), &name, 3))
        .await
        .expect("valid");
    let task = c.create_task(&name).await;
    wait_step_running(&c, task.id, "b").await;
    c.kill_coordinator();
    c.start_coordinator().await;
    c.wait_status(task.id, "completed", T).await;
    assert_eq!(lines(&c.path("effects.txt")), ["a", "b-start", "b", "c"]);
}

/// A step saves its progress as a checkpoint, fails, and its retry starts from the checkpoint
/// instead of from scratch; progress and metrics reach the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_step_gets_its_checkpoint_back() {
    let c = cluster_with_two_agents().await;
    let fx = c.path("parts.txt");
    let fx = fx.display();
    // Processes parts 1..6 and saves a checkpoint after each; the first attempt dies after
    // part 3. The retry resumes after the last checkpointed part.
    let script = format!(
        r#"start=$(echo "$FERRY_CHECKPOINT" | sed -n 's/.*"done":\([0-9]*\).*/\1/p'); start=${{start:-0}}
i=$((start + 1))
while [ $i -le 6 ]; do
  echo "part $i" >> {fx}
  echo "::ferry-checkpoint:: {{\"done\":$i}}"
  echo "::ferry-progress:: {{\"parts\":$i,\"of\":6}}"
  echo "::ferry-metric:: parts_per_attempt $i $FERRY_ATTEMPT"
  if [ $i -eq 3 ] && [ "$FERRY_ATTEMPT" = 1 ]; then echo crashing >&2; exit 1; fi
  i=$((i + 1))
done"#
    )
    // `$` is the template escape in step params: double every `$` for the shell.
    .replace('$', "$$");
    let wf = shell_workflow(
        "resumable",
        &[(
            "parts",
            "training",
            &[],
            &script,
            "retry: {max_retries: 2, backoff_ms: 100}",
        )],
    );
    c.apply(&wf).await.expect("valid");
    let task = c.create_task("resumable").await;
    let done = c.wait_status(task.id, "completed", T).await;
    let parts = step(&done, "parts");
    assert_eq!(parts.attempt, 2);
    assert_eq!(
        lines(&c.path("parts.txt")),
        ["part 1", "part 2", "part 3", "part 4", "part 5", "part 6"],
        "no part was redone"
    );
    assert_eq!(parts.checkpoint_json, r#"{"done":6}"#);
    assert_eq!(parts.progress_json, r#"{"of":6,"parts":6}"#);
    let metrics = c.metrics(task.id).await;
    assert_eq!(metrics.metrics.len(), 6);
    assert!(
        metrics
            .metrics
            .iter()
            .all(|m| m.name == "parts_per_attempt")
    );
    // The marker lines are not in the log; the ordinary stderr line is.
    let logs = c.logs_text(task.id).await;
    assert!(!logs.contains("::ferry-"), "{logs}");
    assert!(logs.contains("stderr: crashing"), "{logs}");
}

/// A step that reports what a diverging training run reports (NaN and infinite metrics),
/// prints a NUL byte and a metric name longer than its column, while the coordinator is
/// killed and restarted (the agent re-reports every metric at registration). Neither its task
/// nor the next one is held up.
async fn bad_values_never_stop_the_engine(c: &mut Cluster, name: &str) {
    let release = c.path(&format!("{name}.release"));
    let long_name = "m".repeat(200);
    let script = format!(
        "echo '::ferry-metric:: loss nan 1'; echo '::ferry-metric:: loss inf 2'; \
         echo '::ferry-metric:: loss 0.25 3'; echo '::ferry-metric:: {long_name} 1.5'; \
         printf 'nul\\000byte\\n'; \
         while [ ! -e {} ]; do sleep 0.1; done",
        release.display()
    );
    c.apply(&shell_workflow(
        name,
        &[(
            "diverge",
            "training",
            &[],
            &script,
            "retry: {max_retries: 0}",
        )],
    ))
    .await
    .expect("valid");
    let task = c.create_task(name).await;
    let deadline = std::time::Instant::now() + T;
    loop {
        let logs = c.logs_text(task.id).await;
        if logs.contains("stdout: nul") {
            assert!(
                logs.contains("metric `loss` = NaN is not a finite number; not stored"),
                "{logs}"
            );
            assert!(
                logs.contains("metric `loss` = inf is not a finite number"),
                "{logs}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no output: {logs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The coordinator goes down and comes back; the agent re-reports the job with its
    // metrics, NaN included.
    c.kill_coordinator();
    c.start_coordinator().await;
    wait_step_running(c, task.id, "diverge").await;
    std::fs::write(&release, b"").expect("release the step");
    c.wait_status(task.id, "completed", T).await;
    let metrics = c.metrics(task.id).await.metrics;
    assert!(metrics.iter().all(|m| m.value.is_finite()), "{metrics:?}");
    assert!(
        metrics.iter().any(|m| m.name == "loss" && m.value == 0.25),
        "{metrics:?}"
    );
    assert!(
        metrics
            .iter()
            .any(|m| m.name.starts_with("mmm") && m.name.chars().count() == 100),
        "the long name is cut to its column: {metrics:?}"
    );
    // The next task runs as usual.
    let next = c.create_task(name).await;
    std::fs::write(&release, b"").expect("release");
    c.wait_status(next.id, "completed", T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_metric_and_other_bad_values_never_stop_the_engine() {
    let mut c = cluster_with_two_agents().await;
    bad_values_never_stop_the_engine(&mut c, "diverging").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_never_stop_the_engine_on_postgresql() {
    let _alone = ONE_COORDINATOR_PER_DATABASE.lock().await;
    let Some(mut c) = postgres_cluster() else {
        return;
    };
    c.start_coordinator().await;
    c.start_agent("train", "train-1");
    c.wait_for_agents(1).await;
    bad_values_never_stop_the_engine(&mut c, &format!("pg_diverging_{}", std::process::id())).await;
}

/// A step past its `timeout_secs` is cancelled on its agent (its process ends) and retried;
/// when no retry is left the task fails naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_past_its_timeout_is_cancelled_and_retried() {
    let c = cluster_with_two_agents().await;
    let started = c.path("started.txt");
    let script = format!("echo $$FERRY_ATTEMPT >> {}; sleep 60", started.display());
    c.apply(&shell_workflow(
        "slow",
        &[(
            "hang",
            "training",
            &[],
            &script,
            "timeout_secs: 1\nretry: {max_retries: 1, backoff_ms: 100}",
        )],
    ))
    .await
    .expect("valid");
    let task = c.create_task("slow").await;
    let failed = c.wait_status(task.id, "failed", T).await;
    let hang = step(&failed, "hang");
    assert_eq!(hang.attempt, 2, "{hang:?}");
    assert!(
        hang.error_message
            .contains("timed out after 1s (timeout_secs)"),
        "{hang:?}"
    );
    assert_eq!(lines(&started), ["1", "2"]);
    let logs = c.logs_text(task.id).await;
    assert!(logs.contains("attempt 1 timed out after 1s"), "{logs}");
    // Both processes were stopped: soon no shell of this test is left.
    let pattern = format!("{}; sleep 60", started.display());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ps = std::process::Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .expect("pgrep");
        if ps.stdout.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {}",
            String::from_utf8_lossy(&ps.stdout)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every log line of a task, paging through the API.
async fn all_log_messages(c: &Cluster, task: i64) -> Vec<String> {
    let mut client = c.client().await;
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let page = client
            .get_logs(v1::GetLogsRequest {
                task_id: task,
                after_id: after,
                limit: 5000,
            })
            .await
            .expect("logs")
            .into_inner()
            .entries;
        let Some(last) = page.last() else {
            return out;
        };
        after = last.id;
        out.extend(page.into_iter().map(|e| e.message));
    }
}

/// The coordinator is killed while a job floods its log: after the restart every line is
/// stored exactly once (the agent sends what was not acknowledged again; the coordinator
/// skips what it already stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_stream_loses_no_log_line_and_stores_none_twice() {
    let mut c = cluster_with_two_agents().await;
    let n = 20_000;
    // About 4 s of output: 100 lines at a time.
    let script = format!(
        "i=1; while [ $$i -le {n} ]; do echo line-$$i; \
         if [ $$((i % 100)) -eq 0 ]; then sleep 0.02; fi; i=$$((i+1)); done"
    );
    c.apply(&shell_workflow(
        "flood",
        &[("flood", "training", &[], &script, "retry: {max_retries: 0}")],
    ))
    .await
    .expect("valid");
    let task = c.create_task("flood").await;
    // Kill it while lines are arriving.
    let deadline = std::time::Instant::now() + T;
    loop {
        let logs = c.logs_text(task.id).await;
        if logs.contains("stdout: line-") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no output: {logs}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = all_log_messages(&c, task.id).await.len();
    c.kill_coordinator();
    assert!(
        before < n,
        "the kill came while lines were still arriving ({before} stored)"
    );
    c.start_coordinator().await;
    c.wait_status(task.id, "completed", T).await;
    let lines: Vec<String> = all_log_messages(&c, task.id)
        .await
        .into_iter()
        .filter(|m| m.starts_with("line-"))
        .collect();
    let mut seen = vec![0u32; n + 1];
    for l in &lines {
        let i: usize = l["line-".len()..].parse().expect("numbered line");
        seen[i] += 1;
    }
    let missing: Vec<usize> = (1..=n).filter(|&i| seen[i] == 0).collect();
    let twice: Vec<usize> = (1..=n).filter(|&i| seen[i] > 1).collect();
    assert!(
        missing.is_empty(),
        "{} lines missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        twice.is_empty(),
        "{} lines twice, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
}

/// A task's log past `workflow.log_rotation_size`: older lines move into compressed archives
/// and the log API (what `ferry logs` reads) still returns every line, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_logs_are_rotated_into_archives_and_still_read_in_full() {
    let mut c = Cluster::new();
    c.env
        .push(("FERRY_WORKFLOW__LOG_ROTATION_SIZE".into(), "20000".into()));
    c.start_coordinator().await;
    c.start_agent("train", "train-1");
    c.wait_for_agents(1).await;
    let n = 3000;
    let release = c.path("rotate.release");
    let script = format!(
        "i=1; while [ $$i -le {n} ]; do echo line-$$i; i=$$((i+1)); done; \
         while [ ! -e {} ]; do sleep 0.1; done",
        release.display()
    );
    c.apply(&shell_workflow(
        "chatty",
        &[("talk", "training", &[], &script, "")],
    ))
    .await
    .expect("valid");
    let task = c.create_task("chatty").await;
    // Wait until the rotation moved lines out of the table.
    let deadline = std::time::Instant::now() + T;
    loop {
        let lines = all_log_messages(&c, task.id).await;
        if lines.iter().any(|l| l == &format!("line-{n}"))
            && c.read_log("coordinator")
                .contains("older log lines rotated")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rotation: {} lines",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(&release, b"").expect("release");
    c.wait_status(task.id, "completed", T).await;
    let lines: Vec<String> = all_log_messages(&c, task.id)
        .await
        .into_iter()
        .filter(|m| m.starts_with("line-"))
        .collect();
    let expected: Vec<String> = (1..=n).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines, expected, "every line, once, in order");
    // And the CLI reads the same log.
    let out = c.cli(&["logs", &task.id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("line-1\n") || text.contains("line-1 "),
        "{text}"
    );
    assert!(text.contains(&format!("line-{n}")), "{text}");
}
