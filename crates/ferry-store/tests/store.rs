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
    };
    NewTask {
        name: "t".into(),
        workflow_id,
        workflow_name: workflow.into(),
        params: "{}".into(),
        status: "running".into(),
        steps: vec![step("a", 0, "[]"), step("b", 1, r#"["a"]"#)],
    }
}

fn chunk_row(task_id: i64, status: &str, retries: i32) -> ferry_store::transfer_chunk::ActiveModel {
    use sea_orm::Set;
    ferry_store::transfer_chunk::ActiveModel {
        task_id: Set(task_id),
        step_name: Set("a".into()),
        chunk_id: Set("train/part-0.bin#0".into()),
        source_path: Set(Some("/src/train/part-0.bin".into())),
        dest_path: Set(Some("/dst/train/part-0.bin".into())),
        offset: Set(Some(0)),
        size: Set(Some(1024)),
        checksum: Set(Some("ab".repeat(32))),
        status: Set(status.into()),
        retry_count: Set(retries),
        ..Default::default()
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
        .insert_task(new_task(first.id, &wf_name))
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
    let batch = WriteBatch {
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
    };
    store.commit(&batch).await.expect("commit");

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
    let metrics = store.metrics(task.id).await.expect("metrics");
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0].name, "auc");
    // Chunk rows are upserted by (task, step, chunk id).
    let again = WriteBatch {
        chunks: vec![chunk_row(task.id, "completed", 2)],
        ..Default::default()
    };
    store.commit(&again).await.expect("upsert");
    let chunks = store.chunks(task.id, Some("a")).await.expect("chunks");
    assert_eq!(chunks.len(), 1);
    assert_eq!(
        (chunks[0].status.as_str(), chunks[0].retry_count),
        ("completed", 2)
    );
    // Chunk rows are upserted by (task, step, chunk id).
    let again = WriteBatch {
        chunks: vec![chunk_row(task.id, "completed", 2)],
        ..Default::default()
    };
    store.commit(&again).await.expect("upsert");
    let chunks = store.chunks(task.id, Some("a")).await.expect("chunks");
    assert_eq!(chunks.len(), 1);
    assert_eq!(
        (chunks[0].status.as_str(), chunks[0].retry_count),
        ("completed", 2)
    );
    let listed = store.list_tasks(Some("completed"), 10).await.expect("list");
    assert!(listed.iter().any(|t| t.id == task.id));
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
