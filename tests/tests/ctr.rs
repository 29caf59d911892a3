//! Training and inference through the whole system: the source agent exports sample and
//! inference data, the training agent trains (metrics per epoch reach the coordinator), the
//! inference agent scores part by part, and the source agent loads the scores into a table.

use std::time::Duration;

use ferry_e2e::{Cluster, step};
use ferry_proto::v1;
use ferry_sampledata::{SampleSpec, generate};

const T: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_train_infer_and_load_scores() {
    let warehouse = tempfile::tempdir().expect("tmp");
    let mut spec = SampleSpec::new(4_000, 11);
    spec.infer_rows = 1_500;
    spec.rows_per_part = 1_000;
    generate(warehouse.path(), &spec).expect("sample data");
    let data_root = tempfile::tempdir().expect("tmp");
    let extra = format!(
        "sql:\n  warehouse_dir: \"{w}\"\n  rows_per_part: 500\nfuxictr_paths:\n  data_root: \"{d}/data\"\n  model_root: \"{d}/models\"\n",
        w = warehouse.path().display(),
        d = data_root.path().display()
    );
    let mut c = Cluster::with_config(&extra);
    c.start_coordinator().await;
    c.start_agent("source", "src-1");
    c.start_agent("train", "train-1");
    c.start_agent("infer", "infer-1");
    c.wait_for_agents(3).await;

    // Under the agents' work dir: one of their roots.
    let staging = c.path("work/staging");
    let wf = format!(
        r#"name: ctr_mini
steps:
  - name: export_sample
    kind: sql_export
    placement: {{role: data_source}}
    params: {{sql: "SELECT * FROM campaign_sample WHERE dt = '2026-01-21'", output_dir: "{s}/sample_data"}}
  - name: export_infer
    kind: sql_export
    placement: {{role: data_source}}
    params: {{sql: "SELECT * FROM campaign_infer WHERE dt = '2026-01-22'", output_dir: "{s}/infer_data"}}
  - name: train
    kind: train
    placement: {{role: training}}
    inputs: [export_sample]
    params:
      dataset_id: campaign
      sample_dir: "{s}/sample_data"
      model: {{model: DeepFM, model_id: deepfm_e2e, embedding_dim: 4, hidden_units: [16],
               batch_size: 256, epochs: 2, learning_rate: 0.003}}
  - name: infer
    kind: infer
    placement: {{role: inference}}
    inputs: [train, export_infer]
    params: {{dataset_id: campaign, model_id: deepfm_e2e, expid: e2e, input_dir: "{s}/infer_data", batch_size: 400}}
  - name: load
    kind: hive_load
    placement: {{role: data_source}}
    inputs: [infer]
    params: {{table: scores.campaign_scores, partition: "dt=2026-01-22", parts_dir: "{r}", expected_rows: 1500}}
"#,
        s = staging.display(),
        r = data_root
            .path()
            .join("data/campaign/e2e_inference_result")
            .display()
    );
    c.apply(&wf).await.expect("valid workflow");
    let task = c.create_task("ctr_mini").await;
    let done = c.wait_status(task.id, "completed", T).await;

    let metrics = c.metrics(task.id).await;
    let aucs: Vec<f64> = metrics
        .metrics
        .iter()
        .filter(|m| m.name == "val_auc")
        .map(|m| m.value)
        .collect();
    assert_eq!(aucs.len(), 2, "one validation AUC per epoch: {metrics:?}");
    assert!(aucs.iter().all(|a| *a > 0.0 && *a < 1.0), "{aucs:?}");
    assert!(
        aucs.iter().any(|a| *a > 0.5),
        "the model learns something from 3,600 rows: {aucs:?}"
    );

    let infer = step(&done, "infer");
    let progress: serde_json::Value = serde_json::from_str(&infer.progress_json).expect("json");
    assert_eq!(progress["rows"], 1500);
    assert_eq!(progress["parts"], 3, "one result part per exported part");
    let logs = c.logs_text(task.id).await;
    assert!(logs.contains("training complete: best epoch"), "{logs}");
    assert!(
        logs.contains("loaded 1500 rows in 3 parts into scores.campaign_scores dt=2026-01-22; row count verified"),
        "{logs}"
    );
    let model_dir = data_root.path().join("models/campaign");
    for f in ["deepfm_e2e.model", "deepfm_e2e.log", "deepfm_e2e.json"] {
        assert!(model_dir.join(f).is_file(), "{f} missing");
    }
    assert!(
        data_root
            .path()
            .join("data/campaign/feature_map.json")
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_agent_killed_mid_training_resumes_after_the_last_epoch() {
    let warehouse = tempfile::tempdir().expect("tmp");
    let mut spec = SampleSpec::new(12_000, 3);
    spec.infer_rows = 10;
    spec.rows_per_part = 4_000;
    let tables = generate(warehouse.path(), &spec).expect("sample data");
    let sample_dir = tables[0].dir.clone();
    let roots = tempfile::tempdir().expect("tmp");
    // The sample data is read from the warehouse: one of the agent's roots.
    let extra = format!(
        "fuxictr_paths:\n  data_root: \"{d}/data\"\n  model_root: \"{d}/models\"\nsql:\n  warehouse_dir: \"{w}\"\n",
        d = roots.path().display(),
        w = warehouse.path().display()
    );
    let mut c = Cluster::with_config(&extra);
    c.start_coordinator().await;
    c.start_agent("train", "train-1");
    c.wait_for_agents(1).await;
    let wf = format!(
        r#"name: train_only
steps:
  - name: train
    kind: train
    placement: {{role: training}}
    retry: {{backoff_ms: 200}}
    params:
      dataset_id: campaign
      sample_dir: "{s}"
      model: {{model: DeepFM, model_id: deepfm_kill, embedding_dim: 8, hidden_units: [64, 64],
               batch_size: 512, epochs: 3, learning_rate: 0.002}}
"#,
        s = sample_dir.display()
    );
    c.apply(&wf).await.expect("valid workflow");
    let task = c.create_task("train_only").await;

    // Kill the agent (and the training in it) as soon as epoch 1 is reported.
    let epochs = |m: &v1::MetricList| -> Vec<i64> {
        m.metrics
            .iter()
            .filter(|m| m.name == "val_auc")
            .map(|m| m.index)
            .collect()
    };
    let deadline = std::time::Instant::now() + T;
    loop {
        let m = c.metrics(task.id).await;
        if !epochs(&m).is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "epoch 1 never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.kill_agent("train-1");
    c.start_agent("train", "train-1");
    let done = c.wait_status(task.id, "completed", T).await;
    let train = step(&done, "train");
    assert!(train.attempt >= 2, "the step ran again after the kill");

    let logs = c.logs_text(task.id).await;
    assert!(logs.contains("resuming deepfm_kill after epoch"), "{logs}");
    let m = c.metrics(task.id).await;
    let mut seen = epochs(&m);
    seen.sort_unstable();
    let before = seen.len();
    seen.dedup();
    assert_eq!(before, seen.len(), "no epoch was trained twice: {seen:?}");
    assert_eq!(seen.first(), Some(&1));
    assert_eq!(seen.last(), Some(&3));
    let state =
        std::fs::read_to_string(roots.path().join("models/campaign/deepfm_kill.ckpt/LATEST"))
            .expect("checkpoint");
    assert_eq!(state.trim(), "epoch-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_train_step_runs_a_fuxictr_configuration_and_names_what_it_cannot_follow() {
    let warehouse = tempfile::tempdir().expect("tmp");
    let mut spec = SampleSpec::new(3_000, 5);
    spec.infer_rows = 10;
    spec.rows_per_part = 1_000;
    let tables = generate(warehouse.path(), &spec).expect("sample data");
    let sample_dir = tables[0].dir.clone();
    // A FuxiCTR model folder inside the warehouse (one of the agent's roots): `config/`
    // beside where `run_expid.py` runs, data paths relative to that folder.
    let work = warehouse.path().join("model_zoo/DeepFM");
    std::fs::create_dir_all(work.join("config")).expect("mkdir");
    let rel = sample_dir
        .strip_prefix(warehouse.path())
        .expect("under the warehouse");
    let write = |activations: &str| {
        std::fs::write(
            work.join("config/dataset_config.yaml"),
            format!(
                "campaign:\n  data_format: parquet\n  train_data: ../../{0}\n  test_data: ../../{0}\n  feature_cols:\n    - {{name: [{1}], active: True, dtype: float, type: numeric, normalizer: MinMaxScaler}}\n    - {{name: [{2}], active: True, dtype: str, type: categorical}}\n  label_col: {{name: click, dtype: float}}\n",
                rel.display(),
                (1..=13).map(|i| format!("I{i}")).collect::<Vec<_>>().join(", "),
                (1..=26).map(|i| format!("C{i}")).collect::<Vec<_>>().join(", "),
            ),
        )
        .expect("write");
        std::fs::write(
            work.join("config/model_config.yaml"),
            format!(
                "Base:\n  model_root: './checkpoints/'\n  verbose: 1\n  shuffle: True\nDeepFM_fx:\n  model: DeepFM\n  dataset_id: campaign\n  embedding_dim: 4\n  hidden_units: [16, 16]\n  batch_size: 256\n  epochs: 1\n  embedding_regularizer: 1.e-8\n  hidden_activations: {activations}\n  monitor: AUC\n  monitor_mode: max\n  sparkle: 3\n"
            ),
        )
        .expect("write");
    };
    let roots = tempfile::tempdir().expect("tmp");
    let extra = format!(
        "fuxictr_paths:\n  data_root: \"{d}/data\"\n  model_root: \"{d}/models\"\nsql:\n  warehouse_dir: \"{w}\"\n",
        d = roots.path().display(),
        w = warehouse.path().display()
    );
    let mut c = Cluster::with_config(&extra);
    c.start_coordinator().await;
    c.start_agent("train", "train-1");
    c.wait_for_agents(1).await;
    let wf = |name: &str| {
        format!(
            "name: {name}\nsteps:\n  - name: train\n    kind: train\n    placement: {{role: training}}\n    params:\n      dataset_id: campaign\n      fuxictr: {{config_dir: \"{}\", expid: DeepFM_fx}}\n",
            work.join("config").display()
        )
    };

    // What Ferry cannot follow yet stops the step at once, by name.
    write("Dice");
    c.apply(&wf("fx_refused")).await.expect("valid workflow");
    let task = c.create_task("fx_refused").await;
    let paused = c.wait_status(task.id, "paused", T).await;
    assert_eq!(
        step(&paused, "train").retry_count,
        0,
        "refusals are permanent"
    );
    let reason = paused.task.map(|t| t.status_reason).unwrap_or_default();
    assert!(reason.contains("hidden_activations"), "{reason}");

    // As the CTR pipeline runs it (`fuxictr_config` in a task request): the configuration is
    // checked first, and a refusal stops the task there, before any data would be exported.
    let piped = |name: &str| {
        let params = format!(
            "dataset_id: exported, sample_dir: \"{}\", fuxictr: {{config_dir: \"{}\", expid: DeepFM_fx}}",
            sample_dir.display(),
            work.join("config").display()
        );
        format!(
            "name: {name}\nsteps:\n  - name: check_config\n    kind: train\n    placement: {{role: training}}\n    params: {{{params}, check_only: true, gpu_count: 0}}\n  - name: train\n    kind: train\n    placement: {{role: training}}\n    inputs: [check_config]\n    params: {{{params}}}\n"
        )
    };
    c.apply(&piped("fx_piped_refused"))
        .await
        .expect("valid workflow");
    let task = c.create_task("fx_piped_refused").await;
    let paused = c.wait_status(task.id, "paused", T).await;
    let reason = paused
        .task
        .as_ref()
        .map(|t| t.status_reason.clone())
        .unwrap_or_default();
    assert!(reason.contains("hidden_activations"), "{reason}");
    assert_eq!(step(&paused, "check_config").status, "failed");
    assert_eq!(
        step(&paused, "train").status,
        "pending",
        "nothing ran after the check"
    );

    // The same configuration with ReLU trains (its L2 penalty on the embeddings included);
    // the unknown key is logged, not fatal.
    write("relu");
    c.apply(&wf("fx_train")).await.expect("valid workflow");
    let task = c.create_task("fx_train").await;
    c.wait_status(task.id, "completed", T).await;
    let logs = c.logs_text(task.id).await;
    assert!(logs.contains("sparkle is not a setting"), "{logs}");
    assert!(logs.contains("training complete: best epoch"), "{logs}");
    // FuxiCTR's figures, and its test_data scored by the best model.
    assert!(logs.contains("epoch 1: train loss"), "{logs}");
    assert!(logs.contains("- [Metrics] logloss: "), "{logs}");
    assert!(
        logs.contains("test evaluation of the best model (") && logs.contains(" - AUC: "),
        "{logs}"
    );
    let models = roots.path().join("models/campaign");
    assert!(models.join("DeepFM_fx.model").is_file());

    // Piped: the check passes without reading data, and the training reads the step's
    // folder under the step's dataset id, the configuration's own files passed over.
    c.apply(&piped("fx_piped")).await.expect("valid workflow");
    let task = c.create_task("fx_piped").await;
    c.wait_status(task.id, "completed", T).await;
    let logs = c.logs_text(task.id).await;
    assert!(
        logs.contains("DeepFM with 39 fields and labels click; the configuration is accepted"),
        "{logs}"
    );
    assert!(
        logs.contains("campaign: train_data is not read; the data is"),
        "{logs}"
    );
    assert!(logs.contains("training complete: best epoch"), "{logs}");
    assert!(
        !logs.contains("test evaluation"),
        "the configuration's test_data is not the task's: {logs}"
    );
    assert!(
        roots
            .path()
            .join("models/exported/DeepFM_fx.model")
            .is_file()
    );
    assert!(
        roots
            .path()
            .join("data/campaign/feature_map.json")
            .is_file()
    );
}
