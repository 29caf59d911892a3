//! Training with per-epoch evaluation and checkpoints (seed 000 §4 stage 2, §7.1).
//!
//! Files under `{model_root}/{dataset_id}/`:
//! - `{model_id}.model` — the best model so far by validation AUC (burnpack);
//! - `{model_id}.json` — model config + input shape, enough to rebuild the model for inference;
//! - `feature_processor.json`, `feature_map.json`, `feature_vocab.json` — copies of the
//!   dataset's, so the model directory alone is what an inference host needs;
//! - `{model_id}.log` — one line per epoch and per recovery action;
//! - `{model_id}/events.out.tfevents.*` — loss and AUC per epoch for TensorBoard;
//! - `{model_id}.ckpt/epoch-N/{model,optim}.bpk` + `state.json`, and `{model_id}.ckpt/LATEST`
//!   naming the newest complete one (written last, by rename): resume starts there.
//!
//! Resume is exact: each epoch's shuffle and dropout are seeded from `(seed, epoch)`, and the
//! checkpoint carries the model, Adam's moments and step count, the learning rate and batch size.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::dataset::{EncodedBatches, PreparedDataset};
use crate::error::{CtrError, Result};
use crate::features::{EncodedBatch, FeatureProcessor, write_atomic};
use crate::metrics::{auc, logloss};
use crate::model::{CtrModel, InputShape, Inputs, ModelConfig, bce_with_logits, label_tensor};
use crate::tensorboard::EventWriter;

/// What is saved beside the model so inference can rebuild it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub config: ModelConfig,
    pub shape: InputShape,
    pub labels: Vec<String>,
    /// The dataset it was trained on ([`PreparedDataset::source_fingerprint`]).
    #[serde(default)]
    pub dataset_fingerprint: u64,
}

impl ModelCard {
    pub fn path(model_dir: &Path, model_id: &str) -> PathBuf {
        model_dir.join(format!("{model_id}.json"))
    }

    pub fn load(path: &Path) -> Result<ModelCard> {
        let bytes = std::fs::read(path).map_err(CtrError::io(path))?;
        serde_json::from_slice(&bytes).map_err(|e| CtrError::Corrupt {
            path: path.to_owned(),
            message: format!("not a model card: {e}"),
        })
    }

    /// The fields that must match for a checkpoint to be loadable into a new run.
    fn architecture(&self) -> serde_json::Value {
        let mut c = self.config.clone();
        c.batch_size = 0;
        c.epochs = 0;
        c.learning_rate = 0.0;
        c.early_stop_patience = 0;
        c.inference_batch_size = 0;
        serde_json::json!({ "config": c, "shape": self.shape })
    }
}

/// Per-epoch figures, reported to the coordinator and written to the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    /// Per task, in label order.
    pub val_auc: Vec<f64>,
    pub val_logloss: Vec<f64>,
    pub samples: u64,
    /// The training pass alone (data loading included, validation not).
    pub train_seconds: f64,
    /// The whole epoch: training, validation and checkpoint.
    pub seconds: f64,
    pub learning_rate: f64,
    pub batch_size: usize,
    pub improved: bool,
}

impl EpochReport {
    /// Training throughput over the epoch's training pass (FuxiCTR's "epoch wall" figure).
    pub fn samples_per_sec(&self) -> f64 {
        self.samples as f64 / self.train_seconds.max(1e-9)
    }

    /// The mean validation AUC over tasks.
    pub fn mean_auc(&self) -> f64 {
        self.val_auc.iter().sum::<f64>() / self.val_auc.len().max(1) as f64
    }
}

/// FuxiCTR's way of printing figures: `logloss: 0.447260 - AUC: 0.792416`, six decimals, one
/// pair per label (named when there are several).
pub fn metrics_line(labels: &[String], auc: &[f64], logloss: &[f64]) -> String {
    metrics_line_with_gauc(labels, auc, logloss, &[])
}

/// [`metrics_line`] with FuxiCTR's `gAUC` after each label's AUC, where given.
pub fn metrics_line_with_gauc(
    labels: &[String],
    auc: &[f64],
    logloss: &[f64],
    gauc: &[f64],
) -> String {
    let named = labels.len() > 1;
    auc.iter()
        .zip(logloss)
        .enumerate()
        .map(|(t, (a, l))| {
            let label = match labels.get(t) {
                Some(name) if named => format!("{name} "),
                _ => String::new(),
            };
            match gauc.get(t) {
                Some(g) => {
                    format!("{label}logloss: {l:.6} - {label}AUC: {a:.6} - {label}gAUC: {g:.6}")
                }
                None => format!("{label}logloss: {l:.6} - {label}AUC: {a:.6}"),
            }
        })
        .collect::<Vec<_>>()
        .join(" - ")
}

/// The best model's figures on the test split (FuxiCTR's evaluation after training).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestReport {
    pub rows: u64,
    /// Per task, in label order.
    pub auc: Vec<f64>,
    pub logloss: Vec<f64>,
    /// Per task, when the dataset names a `group_id` (and a group holds both classes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gauc: Vec<f64>,
}

/// Everything needed to continue after a crash (the checkpoint's `state.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub completed_epochs: usize,
    /// The best monitored figure (see `ModelConfig::monitor`).
    pub best_monitor: Option<f64>,
    pub best_epoch: Option<usize>,
    pub learning_rate: f64,
    pub batch_size: usize,
    pub epochs_without_improvement: usize,
    pub rollbacks: usize,
    pub history: Vec<EpochReport>,
}

impl TrainState {
    /// The best epoch's mean validation AUC, whatever the monitor weighs.
    pub fn best_val_auc(&self) -> Option<f64> {
        let best = self.best_epoch?;
        self.history
            .iter()
            .find(|r| r.epoch == best)
            .map(EpochReport::mean_auc)
    }
}

/// Callbacks from a running training: progress, epochs, and whether to stop.
pub trait TrainObserver {
    fn on_batch(&mut self, _epoch: usize, _batches_done: usize, _rows_done: u64, _loss: f64) {}
    fn on_epoch(&mut self, _report: &EpochReport) {}
    fn on_event(&mut self, _message: &str) {}
    fn cancelled(&self) -> bool {
        false
    }
}

impl TrainObserver for () {}

#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// `{model_root}/{dataset_id}`.
    pub model_dir: PathBuf,
    /// `{data_root}/{dataset_id}` (prepared by [`crate::dataset::prepare_dataset`]).
    pub data_dir: PathBuf,
    pub device: Device,
    /// Further devices for data-parallel training (several GPUs): each batch is split into
    /// equal row ranges, one per device; each device computes its range's gradients on a copy
    /// of the model, the gradients are summed on `device` in device order, and one optimizer
    /// step updates the model there. The split and the order are fixed, so a resumed run
    /// repeats an uninterrupted one.
    pub replicas: Vec<Device>,
    /// On the CPU (one device, no dropout): each batch is split in this many equal row ranges,
    /// computed at the same time by as many threads, each with single-threaded kernels (two
    /// independent products keep two cores busier than one product split in two, and the
    /// element-wise work runs in parallel too). The gradients are summed in range order, so a
    /// run depends on this number, never on timing. Dropout draws from the backend's one RNG,
    /// which threads would share in a racy order, so with dropout one thread computes; and
    /// ranges are kept at 128 rows or more.
    pub cpu_threads: usize,
    /// Checkpoints kept besides the newest one.
    pub keep_checkpoints: usize,
    /// A batch loss above this multiple of the epoch's running mean counts as divergence.
    pub loss_spike_factor: f64,
    /// Rollbacks (divergence or out-of-memory) allowed before giving up.
    pub max_recoveries: usize,
    /// Stop after this many epochs in this call (the task is resumed later); for tests and
    /// for time-sliced runs.
    pub stop_after_epochs: Option<usize>,
    /// Fault injection: batches larger than this fail as if the device ran out of memory.
    pub simulate_oom_above: Option<usize>,
    /// Fault injection: the loss of this (epoch, batch) is replaced by NaN, once.
    pub simulate_nan_at: Option<(usize, usize)>,
}

impl TrainOptions {
    pub fn new(data_dir: &Path, model_dir: &Path, device: Device) -> TrainOptions {
        TrainOptions {
            model_dir: model_dir.to_owned(),
            data_dir: data_dir.to_owned(),
            device,
            replicas: Vec::new(),
            cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            keep_checkpoints: 1,
            loss_spike_factor: 20.0,
            max_recoveries: 4,
            stop_after_epochs: None,
            simulate_oom_above: None,
            simulate_nan_at: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub state: TrainState,
    /// Whether all epochs (or early stopping) finished; false after `stop_after_epochs`.
    pub finished: bool,
    pub stopped_early: bool,
    pub model_path: PathBuf,
}

struct Paths {
    model: PathBuf,
    log: PathBuf,
    ckpt: PathBuf,
    tensorboard: PathBuf,
}

impl Paths {
    fn new(dir: &Path, model_id: &str) -> Paths {
        Paths {
            model: dir.join(format!("{model_id}.model")),
            log: dir.join(format!("{model_id}.log")),
            ckpt: dir.join(format!("{model_id}.ckpt")),
            tensorboard: dir.join(model_id),
        }
    }
}

/// Why an epoch did not complete.
enum EpochFailure {
    /// Recoverable by rolling back: NaN or a loss spike (lower the learning rate), or the
    /// device ran out of memory (halve the batch size).
    Diverged(String),
    OutOfMemory(String),
    Fatal(CtrError),
}

fn log_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(CtrError::io(path))?;
    let now = chrono_like_now();
    writeln!(f, "{now} {line}").map_err(CtrError::io(path))
}

/// Seconds since the epoch, for log lines (no calendar dependency in this crate).
fn chrono_like_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("[{:.3}]", t.as_secs_f64())
}

fn load_module(model: CtrModel, path: &Path) -> Result<CtrModel> {
    let record = ModuleRecord::load(path).map_err(|e| CtrError::Corrupt {
        path: path.to_owned(),
        message: format!("cannot read model: {e:?}"),
    })?;
    model
        .try_load_record(record)
        .map_err(|e| CtrError::Corrupt {
            path: path.to_owned(),
            message: format!("model does not match its config: {e:?}"),
        })
}

fn save_module(model: &CtrModel, path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    model
        .clone()
        .into_record()
        .save(&tmp)
        .map_err(|e| CtrError::Io {
            path: tmp.clone(),
            source: std::io::Error::other(format!("{e:?}")),
        })?;
    ferry_fs::persist(&tmp, path).map_err(CtrError::io(path))
}

/// Loads the best model saved for `model_id` (for inference), on `device`.
pub fn load_trained(
    model_dir: &Path,
    model_id: &str,
    device: &Device,
) -> Result<(CtrModel, ModelCard)> {
    let card = ModelCard::load(&ModelCard::path(model_dir, model_id))?;
    let model = CtrModel::structure(&card.config, &card.shape, device)?;
    let model = load_module(model, &Paths::new(model_dir, model_id).model)?;
    Ok((model, card))
}

/// The best model's figures on the prepared test split, as FuxiCTR evaluates `test_data`
/// after training (written to the model's log too); `None` without a test split.
pub fn evaluate_test(
    config: &ModelConfig,
    processor: &FeatureProcessor,
    dataset: &PreparedDataset,
    opts: &TrainOptions,
) -> Result<Option<TestReport>> {
    if dataset.test_parts.is_empty() {
        return Ok(None);
    }
    let (model, card) = load_trained(&opts.model_dir, &config.model_id, &opts.device)?;
    let (auc, logloss, gauc) = evaluate(
        "test",
        &model,
        processor,
        &card.shape,
        &dataset.test_files(&opts.data_dir),
        config.inference_batch_size,
        &opts.device,
    )?;
    let report = TestReport {
        rows: dataset.test_rows,
        auc,
        logloss,
        gauc,
    };
    log_line(
        &Paths::new(&opts.model_dir, &config.model_id).log,
        &format!(
            "test ({} rows): [Metrics] {}",
            report.rows,
            metrics_line_with_gauc(&card.labels, &report.auc, &report.logloss, &report.gauc)
        ),
    )?;
    Ok(Some(report))
}

fn evaluate(
    split: &str,
    model: &CtrModel,
    processor: &FeatureProcessor,
    shape: &InputShape,
    files: &[PathBuf],
    batch_size: usize,
    device: &Device,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let valid = model.valid();
    let tasks = shape.num_tasks;
    let mut labels: Vec<Vec<f32>> = vec![Vec::new(); tasks];
    let mut scores: Vec<Vec<f32>> = vec![Vec::new(); tasks];
    let mut groups: Vec<i64> = Vec::new();
    for batch in EncodedBatches::new(&processor.spec, files, batch_size, None) {
        let batch = batch?;
        let probs = valid.predict(&Inputs::new(&batch, shape, device)?);
        let data = probs
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| CtrError::Data(format!("cannot read predictions: {e:?}")))?;
        let l = batch.label_width();
        for r in 0..batch.rows {
            for t in 0..tasks {
                labels[t].push(batch.labels[r * l + t]);
                scores[t].push(data[r * tasks + t]);
            }
        }
        groups.extend_from_slice(&batch.groups);
    }
    // gAUC where rows carry groups (a `group_id`) and some group holds both classes.
    let gauc: Vec<f64> = if groups.is_empty() {
        Vec::new()
    } else {
        (0..tasks)
            .filter_map(|t| crate::metrics::gauc(&labels[t], &scores[t], &groups))
            .collect()
    };
    let mut aucs = Vec::with_capacity(tasks);
    let mut losses = Vec::with_capacity(tasks);
    for t in 0..tasks {
        aucs.push(auc(&labels[t], &scores[t]).ok_or_else(|| {
            CtrError::Data(format!(
                "{split} labels of {} have a single class: AUC is undefined",
                processor.spec.labels[t]
            ))
        })?);
        losses.push(logloss(&labels[t], &scores[t]));
    }
    Ok((aucs, losses, gauc))
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("outofmemory") || m.contains("oom")
}

/// Trains `config` on the prepared dataset, resuming from the newest checkpoint if there is one.
pub fn train(
    config: &ModelConfig,
    processor: &FeatureProcessor,
    dataset: &PreparedDataset,
    opts: &TrainOptions,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome> {
    config.validate()?;
    if dataset.train_rows == 0 || dataset.valid_rows == 0 {
        return Err(CtrError::Data(format!(
            "dataset {} has {} training and {} validation rows",
            dataset.dataset_id, dataset.train_rows, dataset.valid_rows
        )));
    }
    for (label, rate) in processor.spec.labels.iter().zip(&dataset.label_rates) {
        if *rate <= 0.0 || *rate >= 1.0 {
            return Err(CtrError::Data(format!(
                "label {label} has a single class in the training split (positive rate {rate})"
            )));
        }
    }
    let num_tasks = if config.model.is_multi_task() {
        processor.spec.labels.len()
    } else {
        1
    };
    let shape = InputShape {
        vocab_sizes: processor.vocab_sizes(),
        num_numeric: processor.spec.numeric.len(),
        num_tasks,
        sequences: crate::model::SequenceShape::of(processor),
        names: processor
            .spec
            .numeric
            .iter()
            .chain(&processor.spec.categorical)
            .chain(processor.spec.sequence.iter().map(|q| &q.name))
            .cloned()
            .collect(),
        categorical_shares: crate::model::InputShape::categorical_shares_of(&processor.spec),
        embedding_dims: crate::model::InputShape::embedding_dims_of(
            &processor.spec,
            config.embedding_dim,
        ),
    };
    let card = ModelCard {
        config: config.clone(),
        shape: shape.clone(),
        labels: processor.spec.labels[..num_tasks].to_vec(),
        dataset_fingerprint: dataset.source_fingerprint,
    };
    std::fs::create_dir_all(&opts.model_dir).map_err(CtrError::io(&opts.model_dir))?;
    let paths = Paths::new(&opts.model_dir, &config.model_id);
    let card_path = ModelCard::path(&opts.model_dir, &config.model_id);

    let device = opts.device.clone().autodiff();
    let pools = cpu_pools(config, opts);
    let mut model = CtrModel::new(config, &shape, &device)?;
    let mut optim = new_optimizer();
    let mut state = TrainState {
        completed_epochs: 0,
        best_monitor: None,
        best_epoch: None,
        learning_rate: config.learning_rate,
        batch_size: config.batch_size,
        epochs_without_improvement: 0,
        rollbacks: 0,
        history: Vec::new(),
    };

    // Resume from the newest complete checkpoint.
    if let Some(epoch_dir) = latest_checkpoint(&paths.ckpt)? {
        let saved = ModelCard::load(&card_path)?;
        if saved.architecture() != card.architecture() {
            return Err(CtrError::Config(format!(
                "{} holds a checkpoint of a different model or dataset shape; use another \
                 model_id or remove the checkpoint to start over",
                paths.ckpt.display()
            )));
        }
        if saved.dataset_fingerprint != card.dataset_fingerprint {
            return Err(CtrError::Config(format!(
                "{} holds a checkpoint trained on another export of dataset {}; use another \
                 model_id or remove the checkpoint to start over",
                paths.ckpt.display(),
                dataset.dataset_id
            )));
        }
        (model, optim, state) = load_checkpoint(&epoch_dir, model, optim)?;
        // Changed training settings (a retry with new hyperparameters) apply from here on.
        if config.learning_rate != saved.config.learning_rate {
            state.learning_rate = config.learning_rate;
        }
        if config.batch_size != saved.config.batch_size {
            state.batch_size = config.batch_size;
        }
        let msg = format!(
            "resuming {} after epoch {} from {}",
            config.model_id,
            state.completed_epochs,
            epoch_dir.display()
        );
        log_line(&paths.log, &msg)?;
        observer.on_event(&msg);
    }
    write_atomic(
        &card_path,
        &serde_json::to_vec_pretty(&card)
            .map_err(|e| CtrError::Config(format!("cannot serialise model card: {e}")))?,
    )?;
    // The fitted features travel with the model: shipping `{model_root}/{dataset_id}/` to an
    // inference host is enough to score there.
    processor.save(&opts.model_dir)?;
    let mut events = EventWriter::open(&paths.tensorboard)?;

    let train_files = dataset.train_files(&opts.data_dir);
    let valid_files = dataset.valid_files(&opts.data_dir);
    let mut epochs_this_call = 0;
    let mut stopped_early = false;
    while state.completed_epochs < config.epochs {
        if state.epochs_without_improvement >= config.early_stop_patience.max(1)
            && state.best_epoch.is_some()
        {
            stopped_early = true;
            break;
        }
        if opts
            .stop_after_epochs
            .is_some_and(|n| epochs_this_call >= n)
        {
            break;
        }
        let epoch = state.completed_epochs;
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_epoch(
                &model,
                config,
                &mut optim,
                &state,
                epoch,
                processor,
                &shape,
                &train_files,
                opts,
                &device,
                &pools,
                observer,
            )
        }));
        let outcome = match result {
            Ok(r) => r,
            Err(p) => {
                let m = panic_message(p.as_ref());
                if is_out_of_memory(&m) {
                    Err(EpochFailure::OutOfMemory(m))
                } else {
                    Err(EpochFailure::Fatal(CtrError::Device(format!(
                        "training failed in epoch {}: {m}",
                        epoch + 1
                    ))))
                }
            }
        };
        match outcome {
            Ok((trained, train_loss, samples)) => {
                let train_seconds = started.elapsed().as_secs_f64();
                model = trained;
                let (val_auc, val_logloss, _) = evaluate(
                    "validation",
                    &model,
                    processor,
                    &shape,
                    &valid_files,
                    config.inference_batch_size,
                    &opts.device,
                )?;
                let mut report = EpochReport {
                    epoch: epoch + 1,
                    train_loss,
                    val_auc,
                    val_logloss,
                    samples,
                    train_seconds,
                    seconds: started.elapsed().as_secs_f64(),
                    learning_rate: state.learning_rate,
                    batch_size: state.batch_size,
                    improved: false,
                };
                let monitor = config.monitored(&report.val_auc, &report.val_logloss);
                if state
                    .best_monitor
                    .is_none_or(|b| config.improves(monitor, b))
                {
                    report.improved = true;
                    state.best_monitor = Some(monitor);
                    state.best_epoch = Some(epoch + 1);
                    state.epochs_without_improvement = 0;
                    save_module(&model.valid(), &paths.model)?;
                } else {
                    state.epochs_without_improvement += 1;
                }
                state.completed_epochs = epoch + 1;
                state.history.push(report.clone());
                save_checkpoint(&paths.ckpt, &model, &optim, &state, opts.keep_checkpoints)?;
                log_line(
                    &paths.log,
                    &format!(
                        "epoch {}/{}: train loss {:.6} - [Metrics] {} - {:.0} samples/s{}",
                        report.epoch,
                        config.epochs,
                        report.train_loss,
                        metrics_line(&card.labels, &report.val_auc, &report.val_logloss),
                        report.samples_per_sec(),
                        if report.improved { " (best)" } else { "" }
                    ),
                )?;
                events.scalar("train/loss", report.epoch, report.train_loss)?;
                for (t, label) in card.labels.iter().enumerate() {
                    events.scalar(
                        &format!("valid/{label}/AUC"),
                        report.epoch,
                        report.val_auc[t],
                    )?;
                    events.scalar(
                        &format!("valid/{label}/logloss"),
                        report.epoch,
                        report.val_logloss[t],
                    )?;
                }
                observer.on_epoch(&report);
                epochs_this_call += 1;
            }
            Err(EpochFailure::Fatal(e)) => return Err(e),
            Err(failure) => {
                let (action, diverged) = match failure {
                    EpochFailure::Diverged(m) => (format!("diverged ({m})"), true),
                    EpochFailure::OutOfMemory(m) => (format!("out of memory ({m})"), false),
                    EpochFailure::Fatal(e) => return Err(e),
                };
                if state.rollbacks >= opts.max_recoveries {
                    return Err(CtrError::Diverged(format!(
                        "epoch {}: {action}; gave up after {} recoveries",
                        epoch + 1,
                        state.rollbacks
                    )));
                }
                // Roll back to the best checkpoint (divergence) or the newest one (memory),
                // or to a fresh model when there is none yet.
                let mut next_lr = state.learning_rate;
                let mut next_batch = state.batch_size;
                if diverged {
                    next_lr *= 0.5;
                } else {
                    next_batch = (next_batch / 2).max(1);
                }
                let to_best = diverged;
                let rollbacks = state.rollbacks + 1;
                let target = if to_best {
                    best_checkpoint(&paths.ckpt, &state)?
                } else {
                    latest_checkpoint(&paths.ckpt)?
                };
                match target {
                    Some(dir) => {
                        (model, optim, state) = load_checkpoint(
                            &dir,
                            CtrModel::new(config, &shape, &device)?,
                            new_optimizer(),
                        )?;
                    }
                    None => {
                        model = CtrModel::new(config, &shape, &device)?;
                        optim = new_optimizer();
                        state.completed_epochs = 0;
                        state.history.clear();
                        state.best_monitor = None;
                        state.best_epoch = None;
                        state.epochs_without_improvement = 0;
                    }
                }
                state.learning_rate = next_lr;
                state.batch_size = next_batch;
                state.rollbacks = rollbacks;
                let msg = format!(
                    "epoch {}: {action}; rolled back to epoch {} with learning rate {} and batch size {}",
                    epoch + 1,
                    state.completed_epochs,
                    state.learning_rate,
                    state.batch_size
                );
                log_line(&paths.log, &msg)?;
                observer.on_event(&msg);
            }
        }
    }
    let finished = state.completed_epochs >= config.epochs || stopped_early;
    if stopped_early {
        let msg = format!(
            "early stop after epoch {}: no better validation AUC for {} epochs; best is epoch {}",
            state.completed_epochs,
            state.epochs_without_improvement,
            state.best_epoch.unwrap_or(0)
        );
        log_line(&paths.log, &msg)?;
        observer.on_event(&msg);
    }
    Ok(TrainOutcome {
        state,
        finished,
        stopped_early,
        model_path: paths.model,
    })
}

#[allow(clippy::too_many_arguments)]
fn run_epoch(
    model: &CtrModel,
    config: &ModelConfig,
    optim: &mut ModuleOptimizer,
    state: &TrainState,
    epoch: usize,
    processor: &FeatureProcessor,
    shape: &InputShape,
    files: &[PathBuf],
    opts: &TrainOptions,
    device: &Device,
    pools: &[rayon::ThreadPool],
    observer: &mut dyn TrainObserver,
) -> std::result::Result<(CtrModel, f64, u64), EpochFailure> {
    // Shuffle and dropout depend only on (seed, epoch, recovery attempt): an epoch run after a
    // resume sees exactly what it would have seen uninterrupted.
    let seed = crate::rng::SplitMix64::hash(
        config.seed
            ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (state.rollbacks as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    device.seed(seed);
    let replicas: Vec<Device> = opts.replicas.iter().map(|d| d.clone().autodiff()).collect();
    for (i, d) in replicas.iter().enumerate() {
        // Each device draws its own dropout stream, fixed by (seed, device index).
        d.seed(crate::rng::SplitMix64::hash(seed ^ (i as u64 + 1)));
    }
    let mut model = model.clone();
    let mut loss_sum = 0.0;
    let mut batches = 0usize;
    let mut rows = 0u64;
    for batch in EncodedBatches::new(&processor.spec, files, state.batch_size, Some(seed)) {
        if observer.cancelled() {
            return Err(EpochFailure::Fatal(CtrError::Cancelled));
        }
        let batch = batch.map_err(EpochFailure::Fatal)?;
        if opts.simulate_oom_above.is_some_and(|max| batch.rows > max) {
            return Err(EpochFailure::OutOfMemory(format!(
                "simulated: batch of {} rows does not fit",
                batch.rows
            )));
        }
        let (mut value, grads) = if !pools.is_empty() {
            threaded_gradients(&model, config, &batch, processor, shape, device, pools)
                .map_err(EpochFailure::Fatal)?
        } else if replicas.is_empty() {
            let loss = range_loss(&model, &batch, batch.rows, shape, device, Some(config))
                .map_err(EpochFailure::Fatal)?;
            let value = loss.clone().into_scalar::<f32>() as f64;
            (value, GradientsParams::from_grads(loss.backward(), &model))
        } else {
            data_parallel_gradients(&model, config, &batch, processor, shape, device, &replicas)
                .map_err(EpochFailure::Fatal)?
        };
        if opts.simulate_nan_at == Some((epoch, batches)) && state.rollbacks == 0 {
            value = f64::NAN;
        }
        let mean = if batches > 0 {
            loss_sum / batches as f64
        } else {
            value
        };
        if !value.is_finite() || (batches >= 10 && value > mean * opts.loss_spike_factor) {
            return Err(EpochFailure::Diverged(format!(
                "batch {} loss {value} (epoch mean so far {mean:.4})",
                batches + 1
            )));
        }
        model = optim.step(state.learning_rate, model, grads);
        loss_sum += value;
        batches += 1;
        rows += batch.rows as u64;
        observer.on_batch(epoch, batches, rows, value);
    }
    Ok((model, loss_sum / batches.max(1) as f64, rows))
}

/// One batch's mean loss and gradients, computed in equal row ranges on `main` and `replicas`
/// (see [`TrainOptions::replicas`]). Each range's loss is weighted by its share of the rows,
/// so the summed gradients are the whole batch's.
fn data_parallel_gradients(
    model: &CtrModel,
    config: &ModelConfig,
    batch: &EncodedBatch,
    processor: &FeatureProcessor,
    shape: &InputShape,
    main: &Device,
    replicas: &[Device],
) -> Result<(f64, GradientsParams)> {
    let devices: Vec<&Device> = std::iter::once(main).chain(replicas).collect();
    let shards = batch.split_rows(devices.len(), &processor.spec);
    let mut accumulator = GradientsAccumulator::new();
    let mut losses = Vec::with_capacity(devices.len());
    for (i, (device, shard)) in devices.iter().zip(&shards).enumerate() {
        let copy = if i == 0 {
            model.clone()
        } else {
            model.clone().fork(device)
        };
        let loss = range_loss(
            &copy,
            shard,
            batch.rows,
            shape,
            device,
            (i == 0).then_some(config),
        )?;
        // Queue every device's work before reading anything back, so GPUs overlap.
        let grads = GradientsParams::from_grads(loss.backward(), &copy).to_device(main, &copy);
        accumulator.accumulate(model, grads);
        losses.push(loss);
    }
    let value = losses
        .into_iter()
        .map(|l| l.into_scalar::<f32>() as f64)
        .sum();
    Ok((value, accumulator.grads()))
}

const MIN_RANGE_ROWS: usize = 128;

/// One single-threaded pool per CPU thread of [`TrainOptions::cpu_threads`] (none when one
/// thread computes): the products inside each range then stay on that range's thread.
fn cpu_pools(config: &ModelConfig, opts: &TrainOptions) -> Vec<rayon::ThreadPool> {
    // Ranges of fewer than 128 rows make products too thin to pay for a thread. A batch norm
    // normalises over the whole batch and updates its running averages once per batch, so it
    // (like dropout, whose draws follow the batch) keeps a batch on one thread. DIN's Dice
    // normalises each range by that range's statistics (as a data-parallel PyTorch run
    // without synchronised batch norm does), and its running averages are updated once per
    // batch from all the ranges' statistics taken together.
    if !opts.replicas.is_empty()
        || config.dropout > 0.0
        || config.mlp1_dropout > 0.0
        || config.mlp2_dropout > 0.0
        || config.batch_norm
        || config.mlp1_batch_norm
        || config.mlp2_batch_norm
        || opts.device != Device::flex()
    {
        return Vec::new();
    }
    let threads = opts.cpu_threads.min(config.batch_size / MIN_RANGE_ROWS);
    crate::parallel::single_thread_pools(threads, "ferry-train")
}

/// A row range's loss, weighted by its share of the batch's rows, so the losses (and the
/// gradients) of a batch's ranges sum to the batch's mean.
/// The first range (`penalties` given) also carries the model's regularization term, once per
/// batch as in FuxiCTR.
fn range_loss(
    model: &CtrModel,
    range: &EncodedBatch,
    batch_rows: usize,
    shape: &InputShape,
    device: &Device,
    penalties: Option<&ModelConfig>,
) -> Result<Tensor<1>> {
    let x = Inputs::new(range, shape, device)?;
    let y = label_tensor(range, shape.num_tasks, device);
    let share = range.rows as f64 / batch_rows as f64;
    let loss = bce_with_logits(model.forward(&x), y).mul_scalar(share);
    let reg =
        penalties.and_then(|c| model.regularization(&c.embedding_regularizer, &c.net_regularizer));
    Ok(match reg {
        Some(r) => loss + r,
        None => loss,
    })
}

/// One batch's mean loss and gradients, its row ranges computed at the same time on the CPU
/// (see [`TrainOptions::cpu_threads`]). The first range uses the model itself; the others
/// use copies with their own autodiff graphs (shared parameter nodes would merge the graphs
/// and serialise the threads on one lock). Gradients are keyed by parameter, so they sum
/// into the model's.
fn threaded_gradients(
    model: &CtrModel,
    config: &ModelConfig,
    batch: &EncodedBatch,
    processor: &FeatureProcessor,
    shape: &InputShape,
    device: &Device,
    pools: &[rayon::ThreadPool],
) -> Result<(f64, GradientsParams)> {
    let ranges = batch.split_rows(pools.len(), &processor.spec);
    let results = crate::parallel::on_pools(&ranges, pools, |i, range| -> Result<_> {
        let copy = if i == 0 {
            model.clone()
        } else {
            model.valid().train()
        };
        let (loss, stats) = crate::model::collecting_dice_stats(|| {
            range_loss(
                &copy,
                range,
                batch.rows,
                shape,
                device,
                (i == 0).then_some(config),
            )
        });
        let loss = loss?;
        let value = loss.clone().into_scalar::<f32>() as f64;
        Ok((
            value,
            GradientsParams::from_grads(loss.backward(), &copy),
            stats,
        ))
    });
    let mut accumulator = GradientsAccumulator::new();
    let mut value = 0.0;
    let mut dice_stats = Vec::with_capacity(results.len());
    for result in results {
        let (v, grads, stats) = result?;
        accumulator.accumulate(model, grads);
        value += v;
        dice_stats.push(stats);
    }
    model.update_dice_running_stats(dice_stats);
    Ok((value, accumulator.grads()))
}

/// Adam with PyTorch's epsilon (burn's default is 1e-5), as FuxiCTR trains; fused on the CPU
/// (`crate::optim`).
pub fn new_optimizer() -> ModuleOptimizer {
    crate::optim::FusedAdam::init()
}

fn epoch_dir(ckpt: &Path, epoch: usize) -> PathBuf {
    ckpt.join(format!("epoch-{epoch}"))
}

fn latest_checkpoint(ckpt: &Path) -> Result<Option<PathBuf>> {
    let latest = ckpt.join("LATEST");
    match std::fs::read_to_string(&latest) {
        Ok(name) => {
            let dir = ckpt.join(name.trim());
            if dir.join("state.json").is_file() {
                Ok(Some(dir))
            } else {
                Err(CtrError::Corrupt {
                    path: latest,
                    message: format!("names {} which is incomplete", dir.display()),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CtrError::Io {
            path: latest,
            source: e,
        }),
    }
}

fn best_checkpoint(ckpt: &Path, state: &TrainState) -> Result<Option<PathBuf>> {
    match state.best_epoch {
        Some(best) if epoch_dir(ckpt, best).join("state.json").is_file() => {
            Ok(Some(epoch_dir(ckpt, best)))
        }
        _ => latest_checkpoint(ckpt),
    }
}

fn save_checkpoint(
    ckpt: &Path,
    model: &CtrModel,
    optim: &ModuleOptimizer,
    state: &TrainState,
    keep: usize,
) -> Result<()> {
    let dir = epoch_dir(ckpt, state.completed_epochs);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(CtrError::io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(CtrError::io(&dir))?;
    save_module(model, &dir.join("model.bpk"))?;
    let optim_path = dir.join("optim.bpk");
    optim.save(&optim_path).map_err(|e| CtrError::Io {
        path: optim_path.clone(),
        source: std::io::Error::other(format!("{e:?}")),
    })?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| CtrError::Config(format!("cannot serialise training state: {e}")))?;
    write_atomic(&dir.join("state.json"), &json)?;
    write_atomic(
        &ckpt.join("LATEST"),
        format!("epoch-{}", state.completed_epochs).as_bytes(),
    )?;
    // Prune: keep the newest `keep + 1` and the best.
    let keep_from = state.completed_epochs.saturating_sub(keep);
    for e in 1..keep_from {
        if Some(e) == state.best_epoch {
            continue;
        }
        let old = epoch_dir(ckpt, e);
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(CtrError::io(&old))?;
        }
    }
    Ok(())
}

fn load_checkpoint(
    dir: &Path,
    model: CtrModel,
    optim: ModuleOptimizer,
) -> Result<(CtrModel, ModuleOptimizer, TrainState)> {
    let state_path = dir.join("state.json");
    let bytes = std::fs::read(&state_path).map_err(CtrError::io(&state_path))?;
    let state: TrainState = serde_json::from_slice(&bytes).map_err(|e| CtrError::Corrupt {
        path: state_path,
        message: e.to_string(),
    })?;
    let model = load_module(model, &dir.join("model.bpk"))?;
    let optim_path = dir.join("optim.bpk");
    let optim = optim.load(&optim_path).map_err(|e| CtrError::Corrupt {
        path: optim_path,
        message: format!("cannot read optimizer state: {e:?}"),
    })?;
    Ok((model, optim, state))
}
