//! The data-source kinds through the whole system: `sql_export` on the source agent against
//! a generated warehouse, then `hive_load` of the parts into a table partition, verified.

use std::time::Duration;

use ferry_e2e::{Cluster, step};
use ferry_proto::v1;
use ferry_sampledata::{SampleSpec, generate};

const T: Duration = Duration::from_secs(90);

/// A cluster with a source agent over a freshly generated warehouse (kept alive by the
/// returned directory).
async fn cluster() -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut spec = SampleSpec::new(3_000, 5);
    spec.rows_per_part = 1_000;
    generate(dir.path(), &spec).expect("sample data");
    let extra = format!(
        "sql:\n  warehouse_dir: \"{}\"\n  rows_per_part: 700\n",
        dir.path().display()
    );
    let mut c = Cluster::with_config(&extra);
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.wait_for_agents(1).await;
    (c, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_load_into_a_partition_verifies_the_row_count() {
    let (c, warehouse) = cluster().await;
    let warehouse = warehouse.path();
    let staging = c.path("work/staging/infer_data");
    let wf = format!(
        r#"name: export_load
steps:
  - name: export
    kind: sql_export
    placement: {{role: data_source}}
    params:
      sql: "SELECT sample_id, user_id, C1 FROM campaign_infer WHERE dt = '${{param.day}}'"
      output_dir: "{staging}"
  - name: load
    kind: hive_load
    placement: {{role: data_source}}
    inputs: [export]
    params: {{table: scores.campaign_copy, partition: "dt=${{param.day}}", parts_dir: "{staging}", expected_rows: 750}}
"#,
        staging = staging.display()
    );
    c.apply(&wf).await.expect("valid");
    let mut client = c.client().await;
    let create = |day: &str| v1::CreateTaskRequest {
        workflow: "export_load".into(),
        name: String::new(),
        params: [("day".to_owned(), day.to_owned())].into_iter().collect(),
        priority: None,
    };
    let task = client
        .create_task(create("2026-01-22"))
        .await
        .expect("create")
        .into_inner();
    let done = c.wait_status(task.id, "completed", T).await;
    let export = step(&done, "export");
    let progress: serde_json::Value = serde_json::from_str(&export.progress_json).expect("json");
    assert_eq!(progress["rows"], 750);
    assert_eq!(progress["parts"], 2, "700 rows per part");
    assert!(
        progress["schema"].as_array().is_some_and(|s| s.len() == 3),
        "{progress}"
    );
    let logs = c.logs_text(task.id).await;
    assert!(logs.contains("exported 750 rows"), "{logs}");
    assert!(
        logs.contains(
            "loaded 750 rows in 2 parts into scores.campaign_copy dt=2026-01-22; row count verified"
        ),
        "{logs}"
    );
    let table = warehouse.join("scores.db/campaign_copy/dt=2026-01-22");
    assert_eq!(std::fs::read_dir(&table).expect("partition").count(), 2);

    // Loading the same day again (a rerun) leaves the same rows, not twice as many.
    let again = client
        .create_task(create("2026-01-22"))
        .await
        .expect("create")
        .into_inner();
    c.wait_status(again.id, "completed", T).await;
    assert_eq!(std::fs::read_dir(&table).expect("partition").count(), 2);

    // A day with no data pauses the task: the source data is not ready.
    let empty = client
        .create_task(create("2030-01-01"))
        .await
        .expect("create")
        .into_inner();
    let paused = c.wait_status(empty.id, "paused", T).await;
    let reason = paused.task.map(|t| t.status_reason).unwrap_or_default();
    assert_eq!(
        reason,
        "step `export` failed permanently: source data not ready: the query returned 0 rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_into_production_tables_wait_for_an_approval_with_a_preview() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut spec = SampleSpec::new(2_000, 5);
    spec.rows_per_part = 1_000;
    generate(dir.path(), &spec).expect("sample data");
    let extra = format!(
        "sql:\n  warehouse_dir: \"{}\"\n  production_tables: [\"prod.*\"]\n",
        dir.path().display()
    );
    // As production runs: TLS and tokens; decisions are recorded under the token's name.
    let mut c = Cluster::secure(&extra);
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.wait_for_agents(1).await;
    let alice = c
        .client()
        .await
        .create_token(v1::CreateTokenRequest {
            name: "alice".into(),
            roles: vec!["operator".into(), "approver".into()],
        })
        .await
        .expect("token for alice")
        .into_inner()
        .token;
    let as_alice = [("FERRY_TOKEN", alice.as_str())];
    let staging = c.path("work/staging/infer_data");
    let wf = format!(
        r#"name: to_prod
steps:
  - name: export
    kind: sql_export
    placement: {{role: data_source}}
    params: {{sql: "SELECT sample_id, C1 FROM campaign_infer", output_dir: "{s}"}}
  - name: load
    kind: hive_load
    placement: {{role: data_source}}
    inputs: [export]
    params: {{table: prod.campaign_scores, partition: "dt=2026-01-22", parts_dir: "{s}"}}
"#,
        s = staging.display()
    );
    c.apply(&wf).await.expect("valid");
    let task = c.create_task("to_prod").await;
    let paused = c.wait_status(task.id, "paused", T).await;
    let load = step(&paused, "load");
    assert_eq!(load.status, "awaiting_approval");
    let reason = paused
        .task
        .as_ref()
        .map(|t| t.status_reason.clone())
        .unwrap_or_default();
    assert!(reason.contains("step `load` awaits approval"), "{reason}");
    let progress: serde_json::Value = serde_json::from_str(&load.progress_json).expect("json");
    assert_eq!(
        progress["preview"].as_array().map(Vec::len),
        Some(5),
        "{progress}"
    );
    assert!(progress["preview"][0]["sample_id"].is_i64(), "{progress}");
    let partition = dir.path().join("prod.db/campaign_scores/dt=2026-01-22");
    assert!(!partition.exists(), "nothing is loaded before the approval");

    // Resume is refused while a decision is pending; a rejection keeps the task paused.
    let out = c.cli(&["task", "resume", &task.id.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("awaits approval"));
    let out = c.cli_with_env(
        &[
            "reject",
            &task.id.to_string(),
            "load",
            "-c",
            "scores look off",
        ],
        &as_alice,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rejected = c.task(task.id).await;
    assert_eq!(step(&rejected, "load").status, "failed");
    let reason = rejected.task.map(|t| t.status_reason).unwrap_or_default();
    assert_eq!(reason, "step `load` rejected by alice: scores look off");

    // Retried, the load asks again; approved, it runs, and the decision is on record.
    let out = c.cli_with_env(&["task", "retry", &task.id.to_string()], &as_alice);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = c.wait_status(task.id, "paused", T).await;
    assert_eq!(step(&again, "load").status, "awaiting_approval");
    let out = c.cli_with_env(
        &["approve", &task.id.to_string(), "load", "-c", "checked"],
        &as_alice,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = c.wait_status(task.id, "completed", T).await;
    let checkpoint: serde_json::Value =
        serde_json::from_str(&step(&done, "load").checkpoint_json).expect("json");
    assert_eq!(checkpoint["approval"]["decision"], "approved");
    assert_eq!(checkpoint["approval"]["by"], "alice");
    assert!(
        checkpoint["approval"]["params_hash"].is_string(),
        "the approval is bound to what was approved: {checkpoint}"
    );
    assert!(partition.is_dir());
    let logs = c.logs_text(task.id).await;
    assert!(logs.contains("rejected by alice"), "{logs}");
    assert!(logs.contains("approved by alice"), "{logs}");
    assert!(logs.contains("load approved by alice"), "{logs}");
}
