//! Training and inference on generated campaign data, through the files a user sees:
//! prepare → train (with resume, divergence and out-of-memory recovery) → infer (with resume).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray};
use arrow::record_batch::RecordBatch;

use burn::tensor::Device;
use ferry_ctr::dataset::{PrepareOptions, PreparedDataset, prepare_dataset};
use ferry_ctr::infer::{InferOptions, infer};
use ferry_ctr::train::{TrainOptions, load_trained, train};
use ferry_ctr::{EncodedBatch, FeatureProcessor, FeatureSpec, ModelConfig, ModelKind};
use ferry_sampledata::{SampleSpec, generate};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    infer_input: PathBuf,
    processor: FeatureProcessor,
    dataset: PreparedDataset,
}

impl Fixture {
    fn data_dir(&self) -> PathBuf {
        self.root.join("data/campaign")
    }
    fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join(name).join("campaign")
    }
}

fn fixture(labels: &[&str]) -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().to_owned();
    let mut spec = SampleSpec::new(6_000, 7);
    spec.infer_rows = 2_000;
    spec.rows_per_part = 500;
    let tables = generate(&root.join("warehouse"), &spec).expect("generate");
    let sample = tables
        .iter()
        .find(|t| t.table == "campaign_sample")
        .expect("sample table");
    let infer_table = tables
        .iter()
        .find(|t| t.table == "campaign_infer")
        .expect("infer table");
    let opts = PrepareOptions {
        rows_per_part: 1_500,
        ..PrepareOptions::default()
    };
    let (processor, dataset) = prepare_dataset(
        &sample.dir,
        &root.join("data/campaign"),
        "campaign",
        &FeatureSpec::campaign(labels),
        &opts,
    )
    .expect("prepare");
    Fixture {
        _tmp: tmp,
        root,
        infer_input: infer_table.dir.clone(),
        processor,
        dataset,
    }
}

fn small(kind: ModelKind, epochs: usize) -> ModelConfig {
    let mut c = ModelConfig::new(kind, &format!("{kind:?}_test"));
    c.embedding_dim = 4;
    c.hidden_units = vec![16, 16];
    c.expert_hidden_units = vec![16, 8];
    c.gate_hidden_units = vec![8];
    c.tower_hidden_units = vec![8];
    c.num_experts = 2;
    c.num_cross_layers = 2;
    c.cin_hidden_units = vec![4, 4];
    c.attention_dim = 8;
    c.num_heads = 2;
    c.mlp1_hidden_units = vec![16, 8];
    c.mlp2_hidden_units = vec![8];
    c.fs_hidden_units = vec![8];
    c.bottom_hidden_units = vec![16];
    c.stacked_hidden_units = vec![8];
    c.batch_size = 256;
    c.epochs = epochs;
    c.learning_rate = 3e-3;
    c.early_stop_patience = 10;
    c
}

/// Predictions of the trained best model on the first validation part.
fn predictions(f: &Fixture, model_dir: &Path, model_id: &str) -> Vec<f32> {
    predictions_on(&f.processor, &f.dataset, &f.data_dir(), model_dir, model_id)
}

/// [`predictions`] for a dataset of its own.
fn predictions_on(
    processor: &FeatureProcessor,
    dataset: &PreparedDataset,
    data_dir: &Path,
    model_dir: &Path,
    model_id: &str,
) -> Vec<f32> {
    let device = Device::flex();
    let (model, card) = load_trained(model_dir, model_id, &device).expect("load");
    let files = dataset.valid_files(data_dir);
    let batch: EncodedBatch =
        ferry_ctr::dataset::EncodedBatches::new(&processor.spec, &files[..1], 1_000, None)
            .next()
            .expect("a batch")
            .expect("read");
    model
        .predict(&ferry_ctr::model::Inputs::new(&batch, &card.shape, &device).expect("inputs"))
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32")
}

/// Training killed after its first epoch (as `stop_after_epochs` leaves it), then resumed.
fn killed_after_one_epoch_and_resumed(
    config: &ModelConfig,
    processor: &FeatureProcessor,
    dataset: &PreparedDataset,
    data_dir: &Path,
    model_dir: &Path,
) -> ferry_ctr::train::TrainOutcome {
    let opts = TrainOptions::new(data_dir, model_dir, Device::flex());
    killed_and_resumed_with(config, processor, dataset, opts)
}

/// [`killed_after_one_epoch_and_resumed`] with these options.
fn killed_and_resumed_with(
    config: &ModelConfig,
    processor: &FeatureProcessor,
    dataset: &PreparedDataset,
    mut opts: TrainOptions,
) -> ferry_ctr::train::TrainOutcome {
    opts.stop_after_epochs = Some(1);
    let first = train(config, processor, dataset, &opts, &mut ()).expect("epoch 1");
    assert!(!first.finished, "{:?} stopped after epoch 1", config.model);
    opts.stop_after_epochs = None;
    let second = train(config, processor, dataset, &opts, &mut ()).expect("resume");
    assert!(second.finished, "{:?} resumed to the end", config.model);
    second
}

/// A FuxiCTR configuration folder under `root` (`config/`), its two files as given.
fn fuxictr_config(root: &Path, datasets: &str, models: &str) -> PathBuf {
    let dir = root.join("config");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("dataset_config.yaml"), datasets).expect("write");
    std::fs::write(dir.join("model_config.yaml"), models).expect("write");
    dir
}

/// A seeded generator of draws in `0..n` (a linear congruential one), for generated rows.
fn draws(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed;
    move |n| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    }
}

/// One Parquet file of these columns, its folder created.
fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    std::fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
    let batch = RecordBatch::try_from_iter(columns).expect("batch");
    let file = std::fs::File::create(path).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("w");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

#[test]
fn the_dataset_directory_has_fuxictr_files_and_is_reused() {
    let f = fixture(&["click"]);
    let dir = f.data_dir();
    for name in [
        "feature_map.json",
        "feature_vocab.json",
        "feature_processor.json",
        "dataset.json",
    ] {
        assert!(dir.join(name).is_file(), "{name} missing");
    }
    assert_eq!(f.dataset.train_rows + f.dataset.valid_rows, 6_000);
    assert!(
        f.dataset.valid_rows > 300 && f.dataset.valid_rows < 900,
        "{:?}",
        f.dataset
    );
    // A second prepare (a resumed step) reuses the directory as is.
    let (_, again) = prepare_dataset(
        Path::new("/nonexistent"),
        &dir,
        "campaign",
        &FeatureSpec::campaign(&["click"]),
        &PrepareOptions::default(),
    )
    .expect("reuse");
    assert_eq!(again, f.dataset);

    // A new export under the same dataset id (here: one part fewer) rebuilds the dataset.
    let raw = f.root.join("raw_fewer");
    std::fs::create_dir_all(&raw).expect("dir");
    let sample = f.root.join("warehouse/default.db/campaign_sample");
    let mut parts = ferry_ctr::dataset::parquet_files(&sample).expect("parts");
    parts.pop();
    for p in &parts {
        std::fs::copy(p, raw.join(p.file_name().expect("name"))).expect("copy");
    }
    let (_, rebuilt) = prepare_dataset(
        &raw,
        &dir,
        "campaign",
        &FeatureSpec::campaign(&["click"]),
        &PrepareOptions {
            rows_per_part: 1_500,
            ..PrepareOptions::default()
        },
    )
    .expect("rebuild");
    assert_eq!(rebuilt.train_rows + rebuilt.valid_rows, 5_500);
    assert_ne!(rebuilt.source_fingerprint, f.dataset.source_fingerprint);

    // Validation rows from their own files (FuxiCTR's valid_data): every input row trains,
    // and the vocabulary is fitted on the training files only.
    let held_out = f.root.join("raw_valid");
    std::fs::create_dir_all(&held_out).expect("dir");
    let all = ferry_ctr::dataset::parquet_files(&sample).expect("parts");
    let last = all.last().expect("a part");
    std::fs::copy(last, held_out.join("valid.parquet")).expect("copy");
    let explicit_dir = f.root.join("data/explicit");
    let (processor, explicit) = prepare_dataset(
        &raw,
        &explicit_dir,
        "explicit",
        &FeatureSpec::campaign(&["click"]),
        &PrepareOptions {
            valid_dir: Some(held_out.clone()),
            ..PrepareOptions::default()
        },
    )
    .expect("explicit split");
    assert_eq!((explicit.train_rows, explicit.valid_rows), (5_500, 500));
    assert!(processor.vocab_sizes().iter().sum::<usize>() > 0);
    let empty = f.root.join("raw_empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let err = prepare_dataset(
        &raw,
        &f.root.join("data/no_valid"),
        "no_valid",
        &FeatureSpec::campaign(&["click"]),
        &PrepareOptions {
            valid_dir: Some(empty.clone()),
            ..PrepareOptions::default()
        },
    )
    .expect_err("an empty validation folder is refused");
    assert!(err.to_string().contains("validation folder"), "{err}");
}

#[test]
fn deepfm_learns_resumes_exactly_and_scores_parts_with_resume() {
    let f = fixture(&["click"]);
    let config = small(ModelKind::DeepFM, 3);
    let device = Device::flex();

    // Uninterrupted reference run.
    let full_dir = f.model_dir("full");
    let full = train(
        &config,
        &f.processor,
        &f.dataset,
        &TrainOptions::new(&f.data_dir(), &full_dir, device.clone()),
        &mut (),
    )
    .expect("train");
    assert!(full.finished);
    assert_eq!(full.state.history.len(), 3);
    let best = full.state.best_monitor.expect("a best AUC");
    assert!(
        best > 0.55,
        "DeepFM should learn some of the teacher's signal from 5,400 rows: AUC {best}"
    );
    for name in ["DeepFM_test.model", "DeepFM_test.log", "DeepFM_test.json"] {
        assert!(full_dir.join(name).is_file(), "{name} missing");
    }
    let events: Vec<_> = std::fs::read_dir(full_dir.join("DeepFM_test"))
        .expect("tensorboard dir")
        .collect();
    assert_eq!(events.len(), 1, "one event file");

    // Interrupted after epoch 1 (as if killed), then resumed: the same final model.
    let resumed_dir = f.model_dir("resumed");
    let mut opts = TrainOptions::new(&f.data_dir(), &resumed_dir, device.clone());
    opts.stop_after_epochs = Some(1);
    let first = train(&config, &f.processor, &f.dataset, &opts, &mut ()).expect("epoch 1");
    assert!(!first.finished);
    assert_eq!(first.state.completed_epochs, 1);
    opts.stop_after_epochs = None;
    let second = train(&config, &f.processor, &f.dataset, &opts, &mut ()).expect("resume");
    assert!(second.finished);
    assert_eq!(
        second
            .state
            .history
            .iter()
            .map(|r| r.val_auc.clone())
            .collect::<Vec<_>>(),
        full.state
            .history
            .iter()
            .map(|r| r.val_auc.clone())
            .collect::<Vec<_>>(),
        "resumed run must see exactly the same epochs"
    );
    assert_eq!(
        predictions(&f, &resumed_dir, "DeepFM_test"),
        predictions(&f, &full_dir, "DeepFM_test"),
        "final weights must equal the uninterrupted run's"
    );
    let log = std::fs::read_to_string(resumed_dir.join("DeepFM_test.log")).expect("log");
    assert!(log.contains("resuming DeepFM_test after epoch 1"), "{log}");

    // Inference: stop after 2 of 4 parts, resume, and only the missing parts are computed.
    let out = f.data_dir().join("exp1_inference_result");
    let mut iopts = InferOptions {
        input_dir: f.infer_input.clone(),
        data_dir: f.data_dir(),
        model_dir: full_dir.clone(),
        model_id: "DeepFM_test".into(),
        output_dir: out.clone(),
        batch_size: 300,
        devices: vec![device.clone()],
        stop_after_parts: Some(2),
        pipelined: true,
    };
    let partial = infer(&iopts, &()).expect("infer part");
    assert_eq!((partial.parts_total, partial.parts_computed), (4, 2));
    assert!(!partial.finished);
    let first_part_time = std::fs::metadata(out.join("part_0.parquet"))
        .and_then(|m| m.modified())
        .expect("part_0");
    // A stale lock from the "killed" run and a half-written part must not matter.
    std::fs::write(out.join(".inference_lock"), "999999999\n").expect("stale lock");
    std::fs::write(out.join(".part_3.parquet.tmp"), b"half").expect("tmp");
    iopts.stop_after_parts = None;
    let rest = infer(&iopts, &()).expect("resume");
    assert_eq!((rest.parts_computed, rest.parts_skipped), (2, 2));
    assert!(rest.finished);
    assert_eq!(rest.rows_total, 2_000);
    assert_eq!(rest.score_columns, vec!["click_score"]);
    assert_eq!(
        std::fs::metadata(out.join("part_0.parquet"))
            .and_then(|m| m.modified())
            .expect("part_0"),
        first_part_time,
        "completed parts are not recomputed"
    );
    assert!(!out.join(".inference_lock").exists(), "lock released");
    assert!(
        !out.join(".part_3.parquet.tmp").exists(),
        "leftover removed"
    );

    // A new export with fewer parts: old results are not reused or left behind.
    let fewer = f.root.join("infer_fewer");
    std::fs::create_dir_all(&fewer).expect("dir");
    let mut parts = ferry_ctr::dataset::parquet_files(&f.infer_input).expect("parts");
    parts.truncate(3);
    for p in &parts {
        std::fs::copy(p, fewer.join(p.file_name().expect("name"))).expect("copy");
    }
    iopts.input_dir = fewer;
    let redo = infer(&iopts, &()).expect("new inputs");
    assert_eq!((redo.parts_computed, redo.parts_skipped), (3, 0));
    assert_eq!(redo.rows_total, 1_500);
    assert!(!out.join("part_3.parquet").exists(), "stale part removed");
}

/// Data-parallel training (each batch split over two devices, here both the CPU, or over two
/// CPU threads): the same model as one thread on one device up to float rounding, and bit for
/// bit the same on a second run.
#[test]
fn data_parallel_training_matches_one_device_and_repeats_exactly() {
    let f = fixture(&["click"]);
    let config = small(ModelKind::DeepFM, 2);
    let device = Device::flex();
    let run_with = |name: &str, replicas: Vec<Device>, cpu_threads: usize| {
        let dir = f.model_dir(name);
        let mut opts = TrainOptions::new(&f.data_dir(), &dir, device.clone());
        opts.replicas = replicas;
        opts.cpu_threads = cpu_threads;
        let outcome = train(&config, &f.processor, &f.dataset, &opts, &mut ()).expect("train");
        assert!(outcome.finished);
        (outcome, predictions(&f, &dir, &config.model_id))
    };
    let run = |name: &str, replicas: Vec<Device>| run_with(name, replicas, 1);
    let (single, p_single) = run("single", Vec::new());
    let (split, p_split) = run("split", vec![device.clone()]);
    let (again, p_again) = run("split_again", vec![device.clone()]);
    assert_eq!(p_split, p_again, "a data-parallel run repeats exactly");
    let (threads, p_threads) = run_with("threads", Vec::new(), 2);
    let (_, p_threads_again) = run_with("threads_again", Vec::new(), 2);
    assert_eq!(
        p_threads, p_threads_again,
        "a run on two threads repeats exactly"
    );
    let t = threads.state.best_monitor.expect("auc");
    let s = single.state.best_monitor.expect("auc");
    assert!(
        (t - s).abs() < 1e-3,
        "validation AUC on two threads {t} vs one {s}"
    );
    let worst_threads = p_single
        .iter()
        .zip(&p_threads)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst_threads < 1e-3,
        "one thread vs two: largest difference {worst_threads}"
    );
    assert_eq!(
        split.state.history[1].val_auc,
        again.state.history[1].val_auc
    );
    let worst = p_single
        .iter()
        .zip(&p_split)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-3,
        "one device vs two: largest difference {worst}"
    );
    let (a, b) = (
        single.state.best_monitor.expect("auc"),
        split.state.best_monitor.expect("auc"),
    );
    assert!((a - b).abs() < 1e-3, "validation AUC {a} vs {b}");
    // The ranges' losses are weighted by their share of the batch: the reported loss is the
    // batch mean, not a sum over devices.
    let (l1, l2) = (
        single.state.history[0].train_loss,
        split.state.history[0].train_loss,
    );
    assert!((l1 - l2).abs() < 1e-3 * l1, "training loss {l1} vs {l2}");
}

#[test]
fn mmoe_trains_both_tasks_and_recovers_from_nan_and_oom() {
    let f = fixture(&["click", "conversion"]);
    let mut config = small(ModelKind::MMoE, 2);
    config.model_id = "mmoe_nan".into();
    let dir = f.model_dir("models");
    let mut opts = TrainOptions::new(&f.data_dir(), &dir, Device::flex());
    opts.simulate_nan_at = Some((1, 3));
    let out = train(&config, &f.processor, &f.dataset, &opts, &mut ()).expect("train");
    assert!(out.finished);
    assert_eq!(out.state.history.last().map(|r| r.val_auc.len()), Some(2));
    assert_eq!(out.state.rollbacks, 1);
    assert_eq!(out.state.learning_rate, config.learning_rate * 0.5);
    let log = std::fs::read_to_string(dir.join("mmoe_nan.log")).expect("log");
    assert!(log.contains("diverged"), "{log}");

    let mut config = small(ModelKind::MMoE, 1);
    config.model_id = "mmoe_oom".into();
    let mut opts = TrainOptions::new(&f.data_dir(), &dir, Device::flex());
    opts.simulate_oom_above = Some(100);
    let out = train(&config, &f.processor, &f.dataset, &opts, &mut ()).expect("train");
    assert!(out.finished);
    assert_eq!(out.state.batch_size, 64, "256 → 128 → 64");
}

/// Every model added for FuxiCTR's users: trained for two epochs, killed after the first
/// and resumed, it ends with the same history and bit for bit the same predictions.
#[test]
fn every_zoo_model_resumes_exactly_after_a_kill() {
    let f = fixture(&["click", "conversion"]);
    let mut configs: Vec<ModelConfig> = [
        ModelKind::DNN,
        ModelKind::WideDeep,
        ModelKind::PNN,
        ModelKind::XDeepFM,
        ModelKind::AutoInt,
        ModelKind::FiBiNET,
        ModelKind::FinalMLP,
        ModelKind::ShareBottom,
        ModelKind::PLE,
    ]
    .into_iter()
    .map(|k| small(k, 2))
    .collect();
    let mut dcn = small(ModelKind::DCN, 2);
    dcn.model_structure = ferry_ctr::model::DcnStructure::StackedParallel;
    dcn.use_low_rank_mixture = true;
    dcn.low_rank = 4;
    configs.push(dcn);
    // Batch norm's running averages travel with the checkpoint.
    let mut bn = small(ModelKind::DNN, 2);
    bn.batch_norm = true;
    bn.model_id = "DNN_bn".into();
    configs.push(bn);
    let mut cases: Vec<(ModelConfig, FeatureProcessor)> = configs
        .into_iter()
        .map(|c| (c, f.processor.clone()))
        .collect();
    // DNN and DCNv2 with a width per feature (FuxiCTR's per-feature embedding_dim).
    let mut widths = f.processor.clone();
    widths.spec.embedding_dims = [("I1", 2), ("C1", 8), ("C7", 6), ("C26", 3)]
        .into_iter()
        .map(|(n, d)| (n.to_owned(), Some(d)))
        .collect();
    for kind in [ModelKind::DNN, ModelKind::DCN] {
        let mut c = small(kind, 2);
        c.model_id = format!("{kind:?}_widths");
        cases.push((c, widths.clone()));
    }
    for (config, processor) in cases {
        let kind = config.model;
        let full_dir = f.model_dir(&format!("{}_full", config.model_id));
        let full = train(
            &config,
            &processor,
            &f.dataset,
            &TrainOptions::new(&f.data_dir(), &full_dir, Device::flex()),
            &mut (),
        )
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert!(full.finished, "{kind:?}");
        // The click label (the first): a multi-task model's monitor averages in the sparse
        // conversion label too.
        let history = &full.state.history;
        let click = history
            .iter()
            .filter_map(|r| r.val_auc.first().copied())
            .fold(0.0, f64::max);
        assert!(
            click > 0.55,
            "{kind:?} learns some of the click signal: AUC {click}"
        );

        let resumed_dir = f.model_dir(&format!("{}_resumed", config.model_id));
        let second = killed_after_one_epoch_and_resumed(
            &config,
            &processor,
            &f.dataset,
            &f.data_dir(),
            &resumed_dir,
        );
        let aucs = |s: &ferry_ctr::train::TrainState| {
            s.history
                .iter()
                .map(|r| r.val_auc.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(aucs(&second.state), aucs(&full.state), "{kind:?}");
        let id = &config.model_id;
        assert_eq!(
            predictions(&f, &resumed_dir, id),
            predictions(&f, &full_dir, id),
            "{kind:?}: the resumed model equals the uninterrupted one"
        );
    }
}

#[test]
fn every_model_trains_one_epoch_and_bad_configs_are_named() {
    let f = fixture(&["click", "conversion"]);
    for kind in [ModelKind::LR, ModelKind::FM, ModelKind::DCN] {
        let config = small(kind, 1);
        let out = train(
            &config,
            &f.processor,
            &f.dataset,
            &TrainOptions::new(&f.data_dir(), &f.model_dir("each"), Device::flex()),
            &mut (),
        )
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert!(out.state.best_monitor.is_some_and(|a| a > 0.5), "{kind:?}");
    }
    let mut bad = small(ModelKind::DeepFM, 1);
    bad.learning_rate = -1.0;
    let err = train(
        &bad,
        &f.processor,
        &f.dataset,
        &TrainOptions::new(&f.data_dir(), &f.model_dir("bad"), Device::flex()),
        &mut (),
    )
    .expect_err("bad lr");
    assert!(err.to_string().contains("learning_rate"), "{err}");
}

#[test]
fn a_fuxictr_configuration_as_a_team_has_it_trains_to_the_end() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut spec = SampleSpec::new(3_000, 11);
    spec.infer_rows = 100;
    spec.rows_per_part = 1_000;
    let tables = generate(&root.join("warehouse"), &spec).expect("generate");
    let sample = tables
        .iter()
        .find(|t| t.table == "campaign_sample")
        .expect("sample table");
    // FuxiCTR's layout: the configuration in `config/`, paths relative to the folder the
    // experiment runs in, one section per dataset and per experiment, `Base` under each.
    let work = root.join("model_zoo/DeepFM");
    std::fs::create_dir_all(work.join("config")).expect("mkdir");
    let rel = pathdiff(&sample.dir, &work);
    std::fs::write(
        work.join("config/dataset_config.yaml"),
        format!(
            "campaign_fx:\n    data_root: ../../data/\n    data_format: parquet\n    train_data: {rel}\n    min_categr_count: 2\n    feature_cols:\n        - {{name: [{}], active: True, dtype: float, type: numeric, normalizer: MinMaxScaler}}\n        - {{name: [{}], active: True, dtype: str, type: categorical}}\n        - {{name: user_id, active: True, dtype: str, type: meta}}\n    label_col: {{name: click, dtype: float}}\n",
            (1..=13).map(|i| format!("I{i}")).collect::<Vec<_>>().join(", "),
            (1..=26).map(|i| format!("C{i}")).collect::<Vec<_>>().join(", "),
        ),
    )
    .expect("write");
    std::fs::write(
        work.join("config/model_config.yaml"),
        "Base:\n    model_root: './checkpoints/'\n    num_workers: 3\n    verbose: 1\n    early_stop_patience: 2\n    pickle_feature_encoder: True\n    save_best_only: True\n    eval_steps: null\n    debug_mode: False\n    group_id: null\n    use_features: null\n    feature_specs: null\n    feature_config: null\n\nDeepFM_fx:\n    model: DeepFM\n    dataset_id: campaign_fx\n    loss: 'binary_crossentropy'\n    metrics: ['logloss', 'AUC']\n    task: binary_classification\n    optimizer: adam\n    hidden_units: [16, 16]\n    hidden_activations: relu\n    net_regularizer: 0\n    embedding_regularizer: 0\n    learning_rate: 3.e-3\n    batch_norm: False\n    net_dropout: 0\n    batch_size: 256\n    embedding_dim: 4\n    epochs: 2\n    shuffle: True\n    seed: 2019\n    monitor: 'AUC'\n    monitor_mode: 'max'\n",
    )
    .expect("write");

    let e = ferry_ctr::fuxictr::load(&work.join("config"), "DeepFM_fx", &work).expect("load");
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    assert_eq!(e.features.min_categr_count, 2);
    assert_eq!(e.features.id_columns, ["user_id"]);
    let data_dir = root.join("data").join(&e.dataset_id);
    let (processor, dataset) = prepare_dataset(
        &e.data.train,
        &data_dir,
        &e.dataset_id,
        &e.features,
        &PrepareOptions::default(),
    )
    .expect("prepare");
    assert!(data_dir.join("feature_map.json").is_file());
    let model_dir = root.join("checkpoints").join(&e.dataset_id);
    let out = train(
        &e.model,
        &processor,
        &dataset,
        &TrainOptions::new(&data_dir, &model_dir, Device::flex()),
        &mut (),
    )
    .expect("train");
    assert!(out.finished);
    assert_eq!(out.state.history.len(), 2);
    assert!(model_dir.join("DeepFM_fx.model").is_file());
}

/// Numbers put in quantile buckets and tokens hashed into buckets (FuxiCTR's
/// `category_processor`), read from a FuxiCTR configuration over CSV: the model learns a click
/// that depends on which bucket a value falls in, and the model card round-trips.
#[test]
fn bucketed_numbers_and_hashed_tokens_are_learnt() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    std::fs::create_dir_all(root.join("data")).expect("mkdir");
    // A click when the number is in its top fifth or the token is one of three "good" ones,
    // else rarely; the number's scale says nothing a linear model on it could use alone.
    let mut seed: u64 = 7;
    let mut next = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) as f64 / (1u64 << 31) as f64
    };
    for (file, rows) in [("train.csv", 6_000), ("valid.csv", 1_500)] {
        let mut csv = String::from("x,tok,clk\n");
        for _ in 0..rows {
            let x = (next() * 50.0).powi(3);
            let tok = (next() * 40.0) as u32;
            let hot = x > 40.0_f64.powi(3) || tok < 3;
            let clk = u8::from(if hot { next() < 0.9 } else { next() < 0.1 });
            csv.push_str(&format!("{x:.3},t{tok},{clk}\n"));
        }
        std::fs::write(root.join("data").join(file), csv).expect("write");
    }
    std::fs::create_dir_all(root.join("config")).expect("mkdir");
    std::fs::write(
        root.join("config/dataset_config.yaml"),
        "buckets:\n  data_format: csv\n  train_data: data/train.csv\n  valid_data: data/valid.csv\n  feature_cols:\n    - {name: x, active: True, dtype: float, type: categorical, category_processor: quantile_bucket, num_buckets: 10}\n    - {name: tok, active: True, dtype: str, type: categorical, category_processor: hash_bucket, num_buckets: 64}\n  label_col: {name: clk, dtype: float}\n",
    )
    .expect("write");
    std::fs::write(
        root.join("config/model_config.yaml"),
        "DNN_buckets:\n  model: DNN\n  dataset_id: buckets\n  embedding_dim: 4\n  hidden_units: [16]\n  learning_rate: 1.e-2\n  batch_size: 128\n  epochs: 3\n  seed: 2024\n",
    )
    .expect("write");
    let e = ferry_ctr::fuxictr::load(&root.join("config"), "DNN_buckets", root).expect("load");
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    let data_dir = root.join("out/buckets");
    let opts = PrepareOptions {
        valid_dir: e.data.valid.clone(),
        ..PrepareOptions::default()
    };
    let (processor, dataset) =
        prepare_dataset(&e.data.train, &data_dir, &e.dataset_id, &e.features, &opts)
            .expect("prepare");
    assert_eq!(processor.vocab_sizes(), [10, 64]);
    assert_eq!(processor.boundaries["x"].len(), 9);
    let map = std::fs::read_to_string(data_dir.join("feature_map.json")).expect("map");
    assert!(
        map.contains("\"category_processor\": \"quantile_bucket\""),
        "{map}"
    );
    assert!(
        map.contains("\"category_processor\": \"hash_bucket\""),
        "{map}"
    );
    let model_dir = root.join("models/buckets");
    let out = train(
        &e.model,
        &processor,
        &dataset,
        &TrainOptions::new(&data_dir, &model_dir, Device::flex()),
        &mut (),
    )
    .expect("train");
    // The best any model can do on this data is about 0.86; one that knew only the number's
    // bucket about 0.78, only the token about 0.60: above 0.8, both fields were learnt.
    let auc = out.state.best_val_auc().unwrap_or(0.0);
    assert!(
        auc > 0.8,
        "both buckets carry the signal: validation AUC {auc}"
    );
    // The saved model and processor: the same buckets, the same table sizes.
    let (_, card) = load_trained(&model_dir, "DNN_buckets", &Device::flex()).expect("model");
    assert_eq!(card.shape.vocab_sizes, [10, 64]);
    let saved = FeatureProcessor::load(&data_dir).expect("processor");
    assert_eq!(saved.boundaries, processor.boundaries);
}

/// `feature_map.json` and `feature_vocab.json` byte for byte as FuxiCTR 2.3.10 wrote them for the
/// same rows and configuration (`tests/fixtures/fuxictr/written/`, made by its `make.py`).
#[test]
fn feature_files_are_byte_for_byte_what_fuxictr_wrote_for_the_same_rows() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuxictr/written");
    let e = ferry_ctr::fuxictr::load(&fixture.join("config"), "DNN_t", &fixture).expect("load");
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    let tmp = tempfile::tempdir().expect("tmp");
    let data_dir = tmp.path().join(&e.dataset_id);
    let opts = PrepareOptions {
        valid_dir: e.data.valid.clone(),
        test_dir: e.data.test.clone(),
        ..PrepareOptions::default()
    };
    prepare_dataset(&e.data.train, &data_dir, &e.dataset_id, &e.features, &opts).expect("prepare");
    for file in ["feature_map.json", "feature_vocab.json"] {
        let ours = std::fs::read_to_string(data_dir.join(file)).expect("ours");
        let theirs = std::fs::read_to_string(fixture.join("expected").join(file)).expect("theirs");
        assert_eq!(ours, theirs, "{file}");
    }
}

/// `path` relative to `base` (both absolute, `base` not under `path`).
fn pathdiff(path: &Path, base: &Path) -> String {
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out: Vec<String> = vec!["..".into(); b.len() - common];
    out.extend(
        p[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    out.join("/")
}

/// FuxiCTR's own demo as its users have it: `demo/config/example4_config` (DeepFM on the
/// tiny CSV data, `../data/tiny_csv/...` from `demo/`), vendored unchanged, its L2 penalty on
/// the embeddings included. The feature map Ferry writes matches the one
/// FuxiCTR wrote for the same rows (its `data/tiny_parquet/feature_map.json`), training runs
/// to the end and the best model is scored on `test_data`, reported as FuxiCTR reports it.
#[test]
fn fuxictr_s_demo_trains_from_its_tiny_csv_and_scores_the_test_split() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuxictr");
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path();
    let config = repo.join("demo/config/example4_config");
    std::fs::create_dir_all(&config).expect("mkdir");
    std::fs::create_dir_all(repo.join("data/tiny_csv")).expect("mkdir");
    for f in ["train_sample.csv", "valid_sample.csv", "test_sample.csv"] {
        std::fs::copy(
            fixtures.join("data/tiny_csv").join(f),
            repo.join("data/tiny_csv").join(f),
        )
        .expect("copy");
    }
    std::fs::copy(
        fixtures.join("example4/dataset_config.yaml"),
        config.join("dataset_config.yaml"),
    )
    .expect("copy");
    std::fs::copy(
        fixtures.join("example4/model_config.yaml"),
        config.join("model_config.yaml"),
    )
    .expect("copy");

    let work = repo.join("demo");
    let e = ferry_ctr::fuxictr::load(&config, "DeepFM_test_csv", &work).expect("load");
    assert_eq!(e.data.format, ferry_ctr::fuxictr::DataFormat::Csv);
    let data_dir = repo.join("data").join(&e.dataset_id);
    let opts = PrepareOptions {
        valid_dir: e.data.valid.clone(),
        test_dir: e.data.test.clone(),
        ..PrepareOptions::default()
    };
    let (processor, dataset) =
        prepare_dataset(&e.data.train, &data_dir, &e.dataset_id, &e.features, &opts)
            .expect("prepare");
    assert_eq!(
        (dataset.train_rows, dataset.valid_rows, dataset.test_rows),
        (100, 100, 100)
    );

    // Field by field, what FuxiCTR wrote for these rows (it names the dataset differently,
    // and its configuration gave each feature a `source`, which example 4's does not).
    let ours: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("feature_map.json")).expect("feature_map.json"),
    )
    .expect("json");
    let theirs: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures.join("data/tiny_parquet/feature_map.json")).expect("read"),
    )
    .expect("json");
    for key in ["num_fields", "total_features", "input_length", "labels"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    let fields = |m: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        m["features"]
            .as_array()
            .expect("features")
            .iter()
            .flat_map(|f| f.as_object().expect("feature").clone())
            .map(|(name, mut v)| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("source");
                }
                (name, v)
            })
            .collect()
    };
    assert_eq!(fields(&ours), fields(&theirs));

    let model_dir = repo.join("demo/checkpoints").join(&e.dataset_id);
    let topts = TrainOptions::new(&data_dir, &model_dir, Device::flex());
    let out = train(&e.model, &processor, &dataset, &topts, &mut ()).expect("train");
    assert!(out.finished);
    let test = ferry_ctr::train::evaluate_test(&e.model, &processor, &dataset, &topts)
        .expect("test")
        .expect("a test split");
    assert_eq!(test.rows, 100);
    assert!(test.auc[0] > 0.0 && test.auc[0] < 1.0, "{test:?}");
    assert!(
        test.logloss[0].is_finite() && test.logloss[0] > 0.0,
        "{test:?}"
    );
    let log = std::fs::read_to_string(model_dir.join("DeepFM_test_csv.log")).expect("log");
    let line = format!(
        "test (100 rows): [Metrics] logloss: {:.6} - AUC: {:.6}",
        test.logloss[0], test.auc[0]
    );
    assert!(log.contains(&line), "{line} not in\n{log}");
    assert!(log.contains("epoch 1/1: train loss"), "{log}");
}

/// FuxiCTR's multi-task experiments as its users have them (`model_zoo/multitask/*/config`,
/// vendored unchanged with their 100-row `data/tiny_mtl` CSV files): 16 categorical fields,
/// 63 numeric ones used as they are (no `normalizer`), an L2 penalty on the embeddings, two
/// labels. Each trains to the end and is scored on the test split for both labels.
#[test]
fn fuxictr_s_multitask_demos_train_from_their_tiny_mtl_csv() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuxictr");
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path();
    std::fs::create_dir_all(repo.join("data/tiny_mtl")).expect("mkdir");
    for f in ["train.csv", "test.csv"] {
        std::fs::copy(
            fixtures.join("data/tiny_mtl").join(f),
            repo.join("data/tiny_mtl").join(f),
        )
        .expect("copy");
    }
    for (folder, model, expid) in [
        ("mmoe", "MMoE", "MMoE_test"),
        ("sharebottom", "ShareBottom", "ShareBottom_test"),
        ("ple", "PLE", "PLE_test"),
    ] {
        // Where FuxiCTR's run_expid.py runs: model_zoo/multitask/<model>/.
        let work = repo.join("model_zoo/multitask").join(model);
        let config = work.join("config");
        std::fs::create_dir_all(&config).expect("mkdir");
        for f in ["dataset_config.yaml", "model_config.yaml"] {
            std::fs::copy(fixtures.join(folder).join(f), config.join(f)).expect("copy");
        }
        let e = ferry_ctr::fuxictr::load(&config, expid, &work).expect("load");
        assert!(e.warnings.is_empty(), "{expid}: {:?}", e.warnings);
        assert_eq!(e.features.labels, ["click", "conversion"]);
        assert_eq!(
            (e.features.categorical.len(), e.features.numeric.len()),
            (16, 63)
        );
        assert_eq!(
            e.features.normalizer.get("numerical_1"),
            Some(&ferry_ctr::features::Normalizer::None)
        );
        assert_eq!(e.model.embedding_regularizer.len(), 1, "{expid}");
        let data_dir = repo.join("data").join(format!("{}_{model}", e.dataset_id));
        let opts = PrepareOptions {
            valid_dir: e.data.valid.clone(),
            test_dir: e.data.test.clone(),
            ..PrepareOptions::default()
        };
        let (processor, dataset) =
            prepare_dataset(&e.data.train, &data_dir, &e.dataset_id, &e.features, &opts)
                .expect("prepare");
        assert_eq!((dataset.train_rows, dataset.test_rows), (100, 100));
        let map: serde_json::Value = serde_json::from_slice(
            &std::fs::read(data_dir.join("feature_map.json")).expect("feature_map.json"),
        )
        .expect("json");
        assert_eq!(map["num_fields"], 79, "{expid}");
        assert_eq!(map["labels"], serde_json::json!(["click", "conversion"]));

        let model_dir = work.join("checkpoints").join(&e.dataset_id);
        let topts = TrainOptions::new(&data_dir, &model_dir, Device::flex());
        let out = train(&e.model, &processor, &dataset, &topts, &mut ())
            .unwrap_or_else(|err| panic!("{expid}: {err}"));
        assert!(out.finished, "{expid}");
        let test = ferry_ctr::train::evaluate_test(&e.model, &processor, &dataset, &topts)
            .expect("test")
            .expect("a test split");
        assert_eq!((test.auc.len(), test.logloss.len()), (2, 2), "{expid}");
        assert!(
            test.logloss.iter().all(|l| l.is_finite() && *l > 0.0),
            "{expid}: {test:?}"
        );
    }
}

/// A click that only a sequence feature explains: `clk` is 1 exactly when the user's history
/// holds token `t3`. Trained from Parquet with the history as a `^`-separated sequence, DeepFM
/// and DNN learn it through the pooled embeddings, and inference scores new rows with it.
#[test]
fn a_sequence_feature_is_learnt_end_to_end() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut next = draws(0x9E37_79B9_7F4A_7C15);
    let mut write = |dir: &Path, rows: usize| {
        let mut items = Vec::new();
        let mut hists = Vec::new();
        let mut clicks = Vec::new();
        for _ in 0..rows {
            items.push(format!("i{}", next(5)));
            let len = 1 + next(6) as usize;
            let tokens: Vec<String> = (0..len).map(|_| format!("t{}", next(20))).collect();
            clicks.push(if tokens.iter().any(|t| t == "t3") {
                1.0
            } else {
                0.0
            });
            hists.push(tokens.join("^"));
        }
        write_parquet(
            &dir.join("part-0.parquet"),
            vec![
                ("item", Arc::new(StringArray::from(items)) as ArrayRef),
                ("hist", Arc::new(StringArray::from(hists)) as ArrayRef),
                ("clk", Arc::new(Float64Array::from(clicks)) as ArrayRef),
            ],
        );
    };
    write(&root.join("train"), 4_000);
    write(&root.join("infer"), 1_000);

    let mut spec = FeatureSpec {
        id_columns: Vec::new(),
        numeric: Vec::new(),
        categorical: vec!["item".into()],
        labels: vec!["clk".into()],
        min_categr_count: 1,
        min_categr_counts: Default::default(),
        share_embedding: Default::default(),
        normalizer: Default::default(),
        fill_na: Default::default(),
        sequence: Vec::new(),
        group_id: None,
        bucketize: Default::default(),
        embedding_dims: Default::default(),
        na_token: Default::default(),
        integer_keys: Default::default(),
    };
    spec.sequence.push(ferry_ctr::features::SequenceSpec {
        name: "hist".into(),
        splitter: "^".into(),
        max_len: 0,
        padding: ferry_ctr::features::Padding::Post,
        pooling: ferry_ctr::features::Pooling::Mean,
        share_embedding: None,
    });
    let data_dir = root.join("data/seq");
    let (processor, dataset) = prepare_dataset(
        &root.join("train"),
        &data_dir,
        "seq",
        &spec,
        &PrepareOptions::default(),
    )
    .expect("prepare");
    assert_eq!(processor.spec.sequence[0].max_len, 6, "the longest history");
    for kind in [ModelKind::DeepFM, ModelKind::DNN] {
        let mut config = small(kind, 4);
        config.learning_rate = 0.01;
        let model_dir = root.join(format!("models/{kind:?}"));
        let out = train(
            &config,
            &processor,
            &dataset,
            &TrainOptions::new(&data_dir, &model_dir, Device::flex()),
            &mut (),
        )
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let auc = out.state.best_val_auc().unwrap_or(0.0);
        assert!(
            auc > 0.95,
            "{kind:?} reads the history: validation AUC {auc}"
        );

        let result = root.join(format!("scores/{kind:?}"));
        let scored = infer(
            &InferOptions {
                input_dir: root.join("infer"),
                output_dir: result.clone(),
                data_dir: data_dir.clone(),
                model_dir: model_dir.clone(),
                model_id: config.model_id.clone(),
                batch_size: 256,
                devices: vec![Device::flex()],
                stop_after_parts: None,
                pipelined: true,
            },
            &(),
        )
        .expect("infer");
        assert_eq!(scored.rows_total, 1_000);
    }
}

/// DIN over fields attended together, as FuxiCTR's Amazon configurations write them: the
/// candidate (item, category) against the history of (item, category) pairs, one attention
/// unit over both embeddings side by side (`!!python/tuple`). It learns "the candidate is in
/// the history", and a killed run resumes exactly.
#[test]
fn din_attends_over_fields_together_and_resumes_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut next = draws(0x9E37_79B9_7F4A_7C15);
    let (mut items, mut cates, mut item_hists, mut cate_hists, mut clicks) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..5_000 {
        let item = next(12);
        let len = 1 + next(5) as usize;
        let hist: Vec<u64> = (0..len).map(|_| next(12)).collect();
        clicks.push(if hist.contains(&item) { 1.0 } else { 0.0 });
        items.push(format!("item{item}"));
        cates.push(format!("cate{}", item % 3));
        let join =
            |f: &dyn Fn(u64) -> String| hist.iter().map(|h| f(*h)).collect::<Vec<_>>().join("^");
        item_hists.push(join(&|h| format!("item{h}")));
        cate_hists.push(join(&|h| format!("cate{}", h % 3)));
    }
    write_parquet(
        &root.join("train/part-0.parquet"),
        vec![
            ("item", Arc::new(StringArray::from(items)) as ArrayRef),
            ("cate", Arc::new(StringArray::from(cates)) as ArrayRef),
            (
                "item_hist",
                Arc::new(StringArray::from(item_hists)) as ArrayRef,
            ),
            (
                "cate_hist",
                Arc::new(StringArray::from(cate_hists)) as ArrayRef,
            ),
            ("clk", Arc::new(Float64Array::from(clicks)) as ArrayRef),
        ],
    );
    let config_dir = fuxictr_config(
        root,
        "pairs:\n    data_format: parquet\n    train_data: train/part-0.parquet\n    feature_cols:\n        - {name: [item, cate], active: True, dtype: str, type: categorical}\n        - {name: item_hist, active: True, dtype: str, type: sequence, splitter: ^, max_len: 4, share_embedding: item}\n        - {name: cate_hist, active: True, dtype: str, type: sequence, splitter: ^, max_len: 4, share_embedding: cate}\n    label_col: {name: clk, dtype: float}\n",
        "DIN_pairs:\n    model: DIN\n    dataset_id: pairs\n    learning_rate: 1.e-2\n    batch_size: 128\n    embedding_dim: 8\n    dnn_hidden_units: [32, 16]\n    attention_hidden_units: [16]\n    attention_hidden_activations: Dice\n    din_target_field: [!!python/tuple [item, cate]]\n    din_sequence_field: [!!python/tuple [item_hist, cate_hist]]\n    feature_specs: [{name: item_hist, feature_encoder: null}, {name: cate_hist, feature_encoder: null}]\n    epochs: 8\n    seed: 2019\n",
    );
    let e = ferry_ctr::fuxictr::load(&config_dir, "DIN_pairs", root).expect("load");
    let data_dir = root.join("data/pairs");
    let (processor, dataset) = prepare_dataset(
        &e.data.train,
        &data_dir,
        &e.dataset_id,
        &e.features,
        &PrepareOptions::default(),
    )
    .expect("prepare");
    let full_dir = root.join("models/full");
    let full = train(
        &e.model,
        &processor,
        &dataset,
        &TrainOptions::new(&data_dir, &full_dir, Device::flex()),
        &mut (),
    )
    .expect("train");
    let auc = full.state.best_val_auc().unwrap_or(0.0);
    assert!(
        auc > 0.9,
        "DIN finds the candidate pair in the history: validation AUC {auc}"
    );
    let resumed_dir = root.join("models/resumed");
    killed_after_one_epoch_and_resumed(&e.model, &processor, &dataset, &data_dir, &resumed_dir);
    let predict = |dir: &Path| predictions_on(&processor, &dataset, &data_dir, dir, "DIN_pairs");
    assert_eq!(
        predict(&resumed_dir),
        predict(&full_dir),
        "resumed = uninterrupted"
    );

    // Sequences attended together must line up: a different max_len is refused by name.
    let mut uneven = e.features.clone();
    uneven.sequence[1].max_len = 3;
    let uneven_dir = root.join("data/uneven");
    let (p2, d2) = prepare_dataset(
        &e.data.train,
        &uneven_dir,
        "uneven",
        &uneven,
        &PrepareOptions::default(),
    )
    .expect("prepare");
    let err = train(
        &e.model,
        &p2,
        &d2,
        &TrainOptions::new(&uneven_dir, &root.join("models/uneven"), Device::flex()),
        &mut (),
    )
    .expect_err("refused");
    assert!(
        err.to_string().contains("max_len") && err.to_string().contains("item_hist"),
        "{err}"
    );
}

/// DIN as FuxiCTR users run it: the clicked-item history shares the item field's vocabulary and
/// embedding, and the model attends over the history with the candidate item (Dice in the
/// attention unit). The click here is exactly "the candidate is in the history", which
/// target attention reads directly. DIN learns it, and a run killed after its first epoch
/// and resumed ends with the same model as an uninterrupted one (Dice's running averages
/// included).
#[test]
fn din_attends_over_a_shared_sequence_and_resumes_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let mut next = draws(0x2545_F491_4F6C_DD1D);
    let (mut items, mut hists, mut clicks, mut users) = (vec![], vec![], vec![], vec![]);
    for _ in 0..5_000 {
        let item = next(12);
        let len = 1 + next(5) as usize;
        let hist: Vec<u64> = (0..len).map(|_| next(12)).collect();
        clicks.push(if hist.contains(&item) { 1.0 } else { 0.0 });
        items.push(format!("item{item}"));
        users.push(format!("u{}", next(7)));
        hists.push(
            hist.iter()
                .map(|h| format!("item{h}"))
                .collect::<Vec<_>>()
                .join("^"),
        );
    }
    write_parquet(
        &root.join("train/part-0.parquet"),
        vec![
            ("user", Arc::new(StringArray::from(users)) as ArrayRef),
            ("item", Arc::new(StringArray::from(items)) as ArrayRef),
            ("hist", Arc::new(StringArray::from(hists)) as ArrayRef),
            ("clk", Arc::new(Float64Array::from(clicks)) as ArrayRef),
        ],
    );

    // FuxiCTR's own configuration shape for DIN (its demo's keys).
    let config_dir = fuxictr_config(
        root,
        "seq_demo:\n    data_format: parquet\n    train_data: train/part-0.parquet\n    test_data: train/part-0.parquet\n    feature_cols:\n        - {name: user, active: True, dtype: str, type: meta}\n        - {name: item, active: True, dtype: str, type: categorical}\n        - {name: hist, active: True, dtype: str, type: sequence, splitter: ^, max_len: 4, share_embedding: item}\n    label_col: {name: clk, dtype: float}\n",
        "DIN_demo:\n    model: DIN\n    dataset_id: seq_demo\n    loss: 'binary_crossentropy'\n    metrics: ['logloss', 'AUC']\n    task: binary_classification\n    optimizer: adam\n    learning_rate: 1.e-2\n    embedding_regularizer: 0\n    net_regularizer: 0\n    batch_size: 128\n    embedding_dim: 8\n    dnn_hidden_units: [32, 16]\n    dnn_activations: relu\n    attention_hidden_units: [16]\n    attention_hidden_activations: \"Dice\"\n    attention_output_activation: null\n    attention_dropout: 0\n    din_target_field: item\n    din_sequence_field: hist\n    feature_specs: [{name: hist, feature_encoder: null}]\n    net_dropout: 0\n    batch_norm: False\n    epochs: 10\n    shuffle: True\n    seed: 2019\n    monitor: 'AUC'\n    monitor_mode: 'max'\n    group_id: user\n",
    );
    let e = ferry_ctr::fuxictr::load(&config_dir, "DIN_demo", root).expect("load");
    assert_eq!(e.features.group_id.as_deref(), Some("user"));
    assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    assert_eq!(
        e.features.sequence[0].share_embedding.as_deref(),
        Some("item")
    );
    let data_dir = root.join("data/seq_demo");
    let (processor, dataset) = prepare_dataset(
        &e.data.train,
        &data_dir,
        &e.dataset_id,
        &e.features,
        &PrepareOptions {
            test_dir: e.data.test.clone(),
            ..PrepareOptions::default()
        },
    )
    .expect("prepare");
    let map: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("feature_map.json")).expect("feature_map.json"),
    )
    .expect("json");
    assert_eq!(map["features"][1]["hist"]["share_embedding"], "item");
    assert_eq!(
        map["features"][1]["hist"]["vocab_size"],
        map["features"][0]["item"]["vocab_size"]
    );

    let full_dir = root.join("models/full");
    let full = train(
        &e.model,
        &processor,
        &dataset,
        &TrainOptions::new(&data_dir, &full_dir, Device::flex()),
        &mut (),
    )
    .expect("train");
    let auc = full.state.best_val_auc().unwrap_or(0.0);
    assert!(
        auc > 0.9,
        "DIN finds the candidate in the history: validation AUC {auc}"
    );
    // Scored on the test split with FuxiCTR's gAUC over the users.
    let topts = TrainOptions::new(&data_dir, &full_dir, Device::flex());
    let test = ferry_ctr::train::evaluate_test(&e.model, &processor, &dataset, &topts)
        .expect("test")
        .expect("a test split");
    assert_eq!(test.gauc.len(), 1);
    assert!(test.gauc[0] > 0.8 && test.gauc[0] <= 1.0, "{test:?}");
    let log = std::fs::read_to_string(full_dir.join("DIN_demo.log")).expect("log");
    assert!(log.contains(&format!("gAUC: {:.6}", test.gauc[0])), "{log}");

    let resumed_dir = root.join("models/resumed");
    killed_after_one_epoch_and_resumed(&e.model, &processor, &dataset, &data_dir, &resumed_dir);
    let predict = |dir: &Path| predictions_on(&processor, &dataset, &data_dir, dir, "DIN_demo");
    assert_eq!(
        predict(&resumed_dir),
        predict(&full_dir),
        "resumed = uninterrupted"
    );

    // Dice in the DNN too (FuxiCTR's `dnn_activations: Dice`): it learns, and its running
    // statistics travel with the checkpoint.
    let mut dice = e.model.clone();
    dice.dnn_activations = "Dice".into();
    let full_dice = root.join("models/full_dice");
    let full = train(
        &dice,
        &processor,
        &dataset,
        &TrainOptions::new(&data_dir, &full_dice, Device::flex()),
        &mut (),
    )
    .expect("train");
    let auc = full.state.best_val_auc().unwrap_or(0.0);
    assert!(auc > 0.9, "DIN with Dice in its DNN: validation AUC {auc}");
    let resumed_dice = root.join("models/resumed_dice");
    killed_after_one_epoch_and_resumed(&dice, &processor, &dataset, &data_dir, &resumed_dice);
    assert_eq!(
        predict(&resumed_dice),
        predict(&full_dice),
        "resumed = uninterrupted, with Dice in the DNN"
    );

    // On two threads (batches of 256 in two ranges of 128), each range's Dice normalises by
    // that range's statistics and the running averages take both ranges once per batch: it
    // learns, a second run repeats it exactly, and a killed run resumes exactly.
    let mut threaded = dice.clone();
    threaded.batch_size = 256;
    let two_threads = |dir: &Path| {
        let mut opts = TrainOptions::new(&data_dir, dir, Device::flex());
        opts.cpu_threads = 2;
        opts
    };
    let run = |name: &str| {
        let dir = root.join("models").join(name);
        let out =
            train(&threaded, &processor, &dataset, &two_threads(&dir), &mut ()).expect("train");
        (out, predict(&dir))
    };
    let (out, p_threads) = run("threads");
    let auc = out.state.best_val_auc().unwrap_or(0.0);
    assert!(
        auc > 0.9,
        "DIN with Dice on two threads: validation AUC {auc}"
    );
    let (_, p_again) = run("threads_again");
    assert_eq!(p_threads, p_again, "a run on two threads repeats exactly");
    let resumed_threads = root.join("models/resumed_threads");
    killed_and_resumed_with(
        &threaded,
        &processor,
        &dataset,
        two_threads(&resumed_threads),
    );
    assert_eq!(
        predict(&resumed_threads),
        p_threads,
        "resumed = uninterrupted, on two threads"
    );
}
