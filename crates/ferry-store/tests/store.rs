//! The repository functions the engine relies on, against SQLite always and against a real
//! PostgreSQL when `FERRY_TEST_POSTGRES_URL` is set (`.ci/run` sets it up).

use chrono::Utc;
use ferry_core::workflow::WorkflowDef;
use ferry_store::{NewStep, NewTask, Store, WriteBatch, task_log};

fn def(name: &str, description: &str) -> WorkflowDef {
    WorkflowDef::from_yaml(&format!(
        "name: {name}\ndescription: {description}\nsteps:\n  - {{name: a, kind: noop, placement: {{role: training}}}}\n  - {{name: b, kind: noop, placement: {{role: training}}, inputs: [a]}}\n"
    ))
    .expect("test workflow")
}

fn new_task(workflow_id: i64, workflow: &str) -> NewTask {
    let step = |name: &str, order: i32, deps: &str| NewStep {
        step_name: name.into(),
        step_order: order,
        kind: "noop".into(),
        params: "{}".into(),
        placement: r#"{"role":"training"}"#.into(),
        depends_on: deps.into(),
        exec_constraint: if deps == "[]" {
            "NONE".into()
        } else {
            "INPUTS_READY".into()
        },
        max_retries: 3,
        backoff_ms: 2000,
        timeout_secs: None,
        resources: None,
    };
    NewTask {
        name: "t".into(),
        workflow_id,
        workflow_name: workflow.into(),
        params: "{}".into(),
        status: "running".into(),
        priority: 0,
        run: None,
        steps: vec![step("a", 0, "[]"), step("b", 1, r#"["a"]"#)],
    }
}

fn chunk_row(task_id: i64, status: &str, retries: i32) -> ferry_store::transfer_chunk::Model {
    ferry_store::transfer_chunk::Model {
        id: 0,
        task_id,
        step_name: "a".into(),
        chunk_id: "train/part-0.bin#0".into(),
        source_path: Some("/src/train/part-0.bin".into()),
        dest_path: Some("/dst/train/part-0.bin".into()),
        offset: Some(0),
        size: Some(1024),
        checksum: Some("ab".repeat(32)),
        status: status.into(),
        started_at: None,
        completed_at: None,
        retry_count: retries,
        error_message: None,
    }
}

async fn exercise(store: Store, suffix: &str) {
    let wf_name = format!("wf_{suffix}");
    // Apply twice: the second replaces the first, same id.
    let first = store
        .apply_workflow(&def(&wf_name, "one"))
        .await
        .expect("apply");
    let second = store
        .apply_workflow(&def(&wf_name, "two"))
        .await
        .expect("re-apply");
    assert_eq!(first.id, second.id);
    assert_eq!(second.description, "two");
    let stored = Store::definition_of(&second).expect("parses");
    assert_eq!(stored.steps.len(), 2);

    let (task, mut steps) = store
        .insert_task(new_task(first.id, &wf_name), |_, p| Ok(p.to_owned()))
        .await
        .expect("insert task");
    assert_eq!(task.total_steps, 2);
    assert_eq!(steps.len(), 2);
    assert!(
        store
            .unfinished_tasks()
            .await
            .expect("unfinished")
            .iter()
            .any(|t| t.id == task.id)
    );

    // One batch: a step completes, the task moves on, logs and a metric are appended.
    steps[0].status = "completed".into();
    steps[0].checkpoint_data = Some(r#"{"epoch":1}"#.into());
    let mut task_row = task.clone();
    task_row.current_step = 1;
    task_row.status = "completed".into();
    let base = store.max_log_id().await.expect("max id");
    let logs: Vec<task_log::Model> = (1..=3)
        .map(|i| task_log::Model {
            id: base + i,
            task_id: task.id,
            step_name: "a".into(),
            ts: Utc::now(),
            level: "INFO".into(),
            source: "engine".into(),
            message: format!("line {i}"),
        })
        .collect();
    let mut batch = WriteBatch {
        tasks: vec![task_row],
        steps: vec![steps[0].clone()],
        logs,
        metrics: vec![ferry_store::new_metric(
            task.id,
            "a",
            "auc",
            0.8,
            1,
            Utc::now(),
        )],
        chunks: vec![chunk_row(task.id, "in_progress", 0)],
        cursors: vec![ferry_store::agent_cursor::Model {
            agent_name: format!("agent-{suffix}"),
            instance: -5, // a u64 instance id past i64::MAX
            seq: 7,
        }],
    };
    store.commit(&mut batch).await.expect("commit");

    let steps = store.steps(task.id).await.expect("steps");
    assert_eq!(steps[0].status, "completed");
    assert_eq!(steps[0].checkpoint_data.as_deref(), Some(r#"{"epoch":1}"#));
    assert_eq!(steps[1].status, "pending");
    let row = store.task(task.id).await.expect("task").expect("exists");
    assert_eq!(row.status, "completed");
    assert!(
        !store
            .unfinished_tasks()
            .await
            .expect("unfinished")
            .iter()
            .any(|t| t.id == task.id)
    );
    let after_first = store.logs(task.id, base + 1, 100).await.expect("logs");
    assert_eq!(
        after_first
            .iter()
            .map(|l| l.message.as_str())
            .collect::<Vec<_>>(),
        ["line 2", "line 3"]
    );
    assert_eq!(store.max_log_id().await.expect("max"), base + 3);
    let cursor = |store: &Store| {
        let store = store.clone();
        let name = format!("agent-{suffix}");
        async move {
            store
                .agent_cursors()
                .await
                .expect("cursors")
                .into_iter()
                .find(|c| c.agent_name == name)
                .map(|c| (c.instance, c.seq))
        }
    };
    assert_eq!(cursor(&store).await, Some((-5, 7)));
    let mut moved = WriteBatch {
        cursors: vec![ferry_store::agent_cursor::Model {
            agent_name: format!("agent-{suffix}"),
            instance: -5,
            seq: 9,
        }],
        ..Default::default()
    };
    let report = store.commit(&mut moved).await.expect("cursor upsert");
    assert!(report.quarantined.is_empty(), "{report:?}");
    assert_eq!(cursor(&store).await, Some((-5, 9)));
    let metrics = store.metrics(task.id).await.expect("metrics");
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0].name, "auc");
    // Chunk rows are upserted by (task, step, chunk id).
    let mut again = WriteBatch {
        chunks: vec![chunk_row(task.id, "completed", 2)],
        ..Default::default()
    };
    store.commit(&mut again).await.expect("upsert");
    let chunks = store.chunks(task.id, Some("a")).await.expect("chunks");
    assert_eq!(chunks.len(), 1);
    assert_eq!(
        (chunks[0].status.as_str(), chunks[0].retry_count),
        ("completed", 2)
    );
    poison_pills(&store, task.id, steps[1].clone(), base + 3).await;
    rotation(&store, task.id).await;
    let listed = store.list_tasks(Some("completed"), 10).await.expect("list");
    assert!(listed.iter().any(|t| t.id == task.id));
}

/// A task's log past the limit: the oldest lines move into an archive and every line still
/// reads back in order, from any point.
async fn rotation(store: &Store, task_id: i64) {
    let base = store.max_log_id().await.expect("max id");
    let mut batch = WriteBatch {
        logs: (1..=100)
            .map(|i| task_log::Model {
                id: base + i,
                task_id,
                step_name: "a".into(),
                ts: Utc::now(),
                level: "INFO".into(),
                source: "stdout".into(),
                message: format!("{i:>100}"),
            })
            .collect(),
        ..Default::default()
    };
    store.commit(&mut batch).await.expect("commit");
    let messages = || async {
        store
            .logs(task_id, 0, 100_000)
            .await
            .expect("logs")
            .into_iter()
            .map(|l| l.message)
            .collect::<Vec<String>>()
    };
    let over = || async {
        store
            .tasks_over_log_size(5_000)
            .await
            .expect("sizes")
            .contains(&task_id)
    };
    let before = messages().await;
    assert!(over().await);
    let moved = store.rotate_logs(task_id, 5_000).await.expect("rotate");
    assert!(moved >= 75, "{moved} lines archived");
    assert!(!over().await);
    let after = messages().await;
    assert_eq!(after, before, "every line, in order, archived or not");
    // Paging from the middle of the archive and across its end.
    let page = store.logs(task_id, base + 50, 10).await.expect("page");
    let ids: Vec<i64> = page.iter().map(|l| l.id).collect();
    assert_eq!(ids, ((base + 51)..=(base + 60)).collect::<Vec<_>>());
    let tail = store.logs(task_id, base + 95, 100).await.expect("tail");
    assert_eq!(tail.len(), 5);
}

/// Values no column can hold, and a row the database refuses even after cleaning: the rest
/// of the batch is stored, the bad rows are reported, and the store keeps working.
async fn poison_pills(
    store: &Store,
    task_id: i64,
    mut step: ferry_store::workflow_step::Model,
    last_log: i64,
) {
    let log = |id: i64, message: String| task_log::Model {
        id,
        task_id,
        step_name: "b".into(),
        ts: Utc::now(),
        level: "INFO".into(),
        source: "agent".into(),
        message,
    };
    step.status = "running".into();
    step.error_message = Some("bad\0byte".into());
    let mut ghost = step.clone();
    ghost.id = i64::MAX / 2; // no such row: the update is refused
    ghost.step_name = "ghost".into();
    let mut long_chunk = chunk_row(task_id, "completed", 0);
    long_chunk.chunk_id = "c".repeat(300);
    long_chunk.checksum = Some("f".repeat(200));
    let mut batch = WriteBatch {
        steps: vec![ghost, step],
        logs: vec![
            log(last_log, "already stored".into()), // written again after a partial failure
            log(
                last_log + 1,
                format!("nul\0 and long {}", "x".repeat(70_000)),
            ),
        ],
        metrics: vec![
            ferry_store::new_metric(task_id, "b", "loss", f64::NAN, 1, Utc::now()),
            ferry_store::new_metric(task_id, "b", &"m".repeat(200), 1.5, 1, Utc::now()),
        ],
        chunks: vec![
            chunk_row(task_id, "in_progress", 0),
            chunk_row(task_id, "completed", 3), // same key twice in one upsert
            long_chunk,
        ],
        ..Default::default()
    };
    let report = store
        .commit(&mut batch)
        .await
        .expect("a bad row never fails the batch");
    let mut what: Vec<&str> = report.quarantined.iter().map(|q| q.what.as_str()).collect();
    what.sort_unstable();
    assert_eq!(
        what,
        ["metric `loss` of step `b`", "step `ghost`"],
        "{report:?}"
    );
    assert!(report.adjusted >= 5, "{report:?}");

    let steps = store.steps(task_id).await.expect("steps");
    assert_eq!(steps[1].status, "running", "the good step row was stored");
    assert_eq!(steps[1].error_message.as_deref(), Some("bad\u{FFFD}byte"));
    let logs = store.logs(task_id, last_log - 1, 10).await.expect("logs");
    assert_eq!(logs.len(), 2, "the repeated log id is stored once");
    assert_eq!(logs[0].message, "line 3");
    assert!(logs[1].message.starts_with("nul\u{FFFD} and long xxx"));
    assert_eq!(logs[1].message.chars().count(), ferry_core::limits::MESSAGE);
    let metrics = store.metrics(task_id).await.expect("metrics");
    assert!(metrics.iter().all(|m| m.value.is_finite()));
    assert!(
        metrics
            .iter()
            .any(|m| m.name.chars().count() == ferry_core::limits::METRIC_NAME)
    );
    let chunks = store.chunks(task_id, Some("a")).await.expect("chunks");
    assert_eq!(chunks.len(), 2);
    let first = chunks
        .iter()
        .find(|c| c.chunk_id == "train/part-0.bin#0")
        .expect("first chunk");
    assert_eq!(first.retry_count, 3, "the last report of a key wins");
    let long = chunks
        .iter()
        .find(|c| c.chunk_id.starts_with("ccc"))
        .expect("long chunk id, cut");
    assert_eq!(long.chunk_id.chars().count(), ferry_core::limits::CHUNK_ID);
    assert_eq!(
        long.checksum.as_deref().map(|c| c.chars().count()),
        Some(64)
    );
    // Nothing is stuck: the next batch commits as usual.
    let mut next = WriteBatch {
        logs: vec![log(last_log + 2, "after".into())],
        ..Default::default()
    };
    let report = store.commit(&mut next).await.expect("next commit");
    assert!(report.quarantined.is_empty());
}

#[tokio::test]
async fn sqlite_store_round_trips_the_engine_state() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("ferry.db").display()
    );
    exercise(Store::connect(&url).await.expect("connect"), "sqlite").await;
    // Reopening runs the migrations again without harm and keeps the data.
    let again = Store::connect(&url).await.expect("reconnect");
    assert_eq!(again.list_workflows().await.expect("list").len(), 1);
}

#[tokio::test]
async fn postgres_store_round_trips_the_engine_state() {
    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("FERRY_TEST_POSTGRES_URL is not set: the PostgreSQL tier is skipped");
        return;
    };
    let suffix = format!("pg_{}", std::process::id());
    exercise(
        Store::connect(&url).await.expect("connect to PostgreSQL"),
        &suffix,
    )
    .await;
}

#[tokio::test]
async fn a_bad_database_url_is_a_clear_error() {
    let err = Store::connect("sqlite:///nonexistent-dir/x/ferry.db?mode=rwc")
        .await
        .err()
        .expect("cannot open");
    assert!(
        err.to_string()
            .starts_with("cannot open database `sqlite:///nonexistent-dir/x/ferry.db?mode=rwc`"),
        "{err}"
    );
}

/// A coordinator started before its database is reachable waits for it instead of exiting
/// (found by `cargo xtask chaos`: a coordinator restarted while PostgreSQL was down exited).
/// Here the database's directory appears a second after the first try.
#[tokio::test]
async fn connect_waiting_waits_for_the_database_to_appear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let later = dir.path().join("not-mounted-yet");
    let url = format!("sqlite://{}/ferry.db?mode=rwc", later.display());
    let mut tries = 0;
    let appear = later.clone();
    let mounted = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        std::fs::create_dir_all(&appear).expect("create the directory");
    });
    let started = std::time::Instant::now();
    let store = Store::connect_waiting(&url, std::time::Duration::from_millis(200), |e, _| {
        assert!(e.to_string().contains("cannot open database"), "{e}");
        tries += 1;
    })
    .await
    .expect("connected once the directory exists");
    mounted.await.expect("the directory task");
    assert!(tries >= 2, "connected after {tries} failed tries");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    assert!(
        store
            .list_workflows()
            .await
            .expect("a working store")
            .is_empty()
    );
}
