//! The training and inference hosts' step kinds, `train` and `infer`, on `ferry-ctr`.
//! A separate crate (like `ferry-agent-sql`) so that only those two daemons link burn.
//! Training and inference are CPU/GPU-bound: they run on blocking threads and report through
//! a clone of the job context; cancellation is checked between batches and parts.

mod monitor;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_agent::daemon::{AgentArgs, run_daemon_with};
use ferry_agent::policy::{Policy, check_identifier};
use ferry_agent::{AgentError, Executor, JobContext, JobError, JobFuture};
use ferry_core::Role;
use ferry_core::config::FerryConfig;
use ferry_core::kinds::{self, FuxiCtrConfig, InferParams, TrainParams};
use ferry_ctr::dataset::{PrepareOptions, prepare_dataset};
use ferry_ctr::device::{Device, devices_for};
use ferry_ctr::infer::{InferObserver, InferOptions, infer};
use ferry_ctr::train::{
    EpochReport, TrainObserver, TrainOptions, evaluate_test, metrics_line, metrics_line_with_gauc,
    train,
};
use ferry_ctr::{CtrError, FeatureSpec, ModelConfig};

/// Where this host keeps datasets and models, which devices it computes on, and where its
/// steps may reach (`agent.roots`).
#[derive(Clone)]
pub struct CtrHost {
    pub data_root: PathBuf,
    pub model_root: PathBuf,
    pub devices: Vec<Device>,
    pub policy: Policy,
}

impl CtrHost {
    /// `config` as executors see it (`daemon::effective_config`: absolute directories).
    pub fn from_config(config: &FerryConfig, gpus: &[u32]) -> Result<CtrHost, AgentError> {
        Ok(CtrHost {
            data_root: config.fuxictr_paths.data_root.clone(),
            model_root: config.fuxictr_paths.model_root.clone(),
            devices: devices_for(gpus).map_err(|e| AgentError::Setup(e.to_string()))?,
            policy: Policy::from_config(config),
        })
    }

    /// `{data_root}/{dataset_id}` and `{model_root}/{dataset_id}`, for a `dataset_id` that is
    /// one directory name (checked as the job received it, placeholders filled in), both
    /// under the agent's roots (symlinks resolved).
    pub fn dataset_dirs(&self, dataset_id: &str) -> Result<(PathBuf, PathBuf), JobError> {
        check_identifier("dataset_id", dataset_id)?;
        let under = |root: &Path, what: &str| {
            let dir = root.join(dataset_id);
            self.policy.confine_dest(what, &dir.to_string_lossy())
        };
        Ok((
            under(&self.data_root, "dataset directory")?,
            under(&self.model_root, "model directory")?,
        ))
    }
}

async fn run_with(role: Role, config: FerryConfig, args: AgentArgs) -> Result<(), AgentError> {
    let settings = ferry_agent::daemon::settings(role, &config, &args);
    let host = Arc::new(CtrHost::from_config(
        &ferry_agent::daemon::effective_config(&config, &settings),
        &settings.gpus,
    )?);
    let extra: Vec<Arc<dyn Executor>> = vec![
        Arc::new(TrainExecutor { host: host.clone() }),
        Arc::new(InferExecutor { host }),
        Arc::new(monitor::MonitorExecutor::new(
            &ferry_agent::daemon::effective_config(&config, &settings),
            &settings.coordinator_url,
        )),
    ];
    run_daemon_with(role, config, args, extra).await
}

/// Runs `ferry-train-agentd`: the generic kinds plus `train` and `infer`.
pub async fn run_train_agent(config: FerryConfig, args: AgentArgs) -> Result<(), AgentError> {
    run_with(Role::Training, config, args).await
}

/// Runs `ferry-infer-agentd`: the generic kinds plus `infer` and `train`.
pub async fn run_infer_agent(config: FerryConfig, args: AgentArgs) -> Result<(), AgentError> {
    run_with(Role::Inference, config, args).await
}

fn job_error(e: CtrError) -> JobError {
    match e {
        CtrError::Cancelled => JobError::transient("cancelled"),
        e if e.is_transient() => JobError::transient(e.to_string()),
        e => JobError::permanent(e.to_string()),
    }
}

/// Runs blocking work on its own thread; a panic there is a permanent error, not a crash.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CtrError> + Send + 'static,
) -> Result<T, JobError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(r) => r.map_err(job_error),
        Err(e) => Err(JobError::permanent(format!("the job's thread failed: {e}"))),
    }
}

struct JobTrainObserver {
    ctx: JobContext,
    labels: Vec<String>,
    last_progress: std::time::Instant,
}

impl TrainObserver for JobTrainObserver {
    fn on_batch(&mut self, epoch: usize, batches: usize, rows: u64, loss: f64) {
        if self.last_progress.elapsed().as_secs_f64() >= 2.0 {
            self.last_progress = std::time::Instant::now();
            self.ctx.progress(&serde_json::json!({
                "stage": "training", "epoch": epoch + 1, "batches": batches,
                "rows": rows, "loss": loss,
            }));
        }
    }

    fn on_epoch(&mut self, r: &EpochReport) {
        let e = r.epoch as i64;
        self.ctx.metric("train_loss", r.train_loss, e);
        self.ctx.metric("val_auc", r.mean_auc(), e);
        for (t, (auc, ll)) in r.val_auc.iter().zip(&r.val_logloss).enumerate() {
            self.ctx.metric(&format!("val_auc_{t}"), *auc, e);
            self.ctx.metric(&format!("val_logloss_{t}"), *ll, e);
        }
        self.ctx.metric("samples_per_sec", r.samples_per_sec(), e);
        self.ctx.info(format!(
            "epoch {}: train loss {:.6} - [Metrics] {} - {:.0} samples/s{}",
            r.epoch,
            r.train_loss,
            metrics_line(&self.labels, &r.val_auc, &r.val_logloss),
            r.samples_per_sec(),
            if r.improved { " (best so far)" } else { "" }
        ));
        self.ctx.save_checkpoint(&serde_json::json!({
            "completed_epochs": r.epoch, "val_auc": r.val_auc,
        }));
    }

    fn on_event(&mut self, message: &str) {
        self.ctx.info(message.to_owned());
    }

    fn cancelled(&self) -> bool {
        self.ctx.cancellation().is_cancelled()
    }
}

pub struct TrainExecutor {
    host: Arc<CtrHost>,
}

impl Executor for TrainExecutor {
    fn kind(&self) -> &'static str {
        kinds::TRAIN
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let host = self.host.clone();
        Box::pin(async move {
            let p: TrainParams = ctx.params()?;
            let (config, spec, sample_dir, FuxiSplits { valid, test }) = match &p.fuxictr {
                Some(f) => from_fuxictr(&host, &ctx, &p.dataset_id, f, &p.sample_dir)?,
                None => {
                    let config: ModelConfig = serde_json::from_value(p.model.clone())
                        .map_err(|e| JobError::permanent(format!("model settings: {e}")))?;
                    config
                        .validate()
                        .map_err(|e| JobError::permanent(e.to_string()))?;
                    let labels: Vec<String> = if !p.labels.is_empty() {
                        p.labels.clone()
                    } else if config.model.is_multi_task() {
                        vec!["click".into(), "conversion".into()]
                    } else {
                        vec!["click".into()]
                    };
                    let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                    // DIN attends over the campaign's click history; the other models leave it.
                    let spec = if config.model == ferry_ctr::ModelKind::DIN {
                        FeatureSpec::campaign_with_history(&label_refs)
                    } else {
                        FeatureSpec::campaign(&label_refs)
                    };
                    let sample_dir = host.policy.confine("sample directory", &p.sample_dir)?;
                    (config, spec, sample_dir, FuxiSplits::default())
                }
            };
            // Checked before anything is read or written.
            check_identifier("model.model_id", &config.model_id)?;
            let (data_dir, model_dir) = host.dataset_dirs(&p.dataset_id)?;
            if p.check_only {
                let expid = p.fuxictr.as_ref().map_or("", |f| f.expid.as_str());
                ctx.info(format!(
                    "FuxiCTR experiment {expid}: {:?} with {} fields and labels {}; the configuration is accepted",
                    config.model,
                    spec.num_fields(),
                    spec.labels.join(", ")
                ));
                ctx.progress(&serde_json::json!({
                    "stage": "checked", "model": format!("{:?}", config.model),
                    "model_id": config.model_id, "fields": spec.num_fields(),
                    "labels": spec.labels,
                }));
                return Ok(());
            }
            // The GPUs the coordinator gave the job when it gave some (it counts them, so
            // two jobs never share one); else `gpu_count` picks the first N of the host's
            // devices; 0 means the CPU.
            let given = (!ctx.gpu_ids.is_empty())
                .then(|| devices_for(&ctx.gpu_ids))
                .transpose()
                .map_err(|e| JobError::permanent(e.to_string()))?;
            let devices: Vec<Device> = match (given, p.gpu_count) {
                (Some(given), _) => given,
                (None, Some(0)) => vec![Device::flex()],
                (None, Some(n)) if n as usize > host.devices.len() => {
                    return Err(JobError::permanent(format!(
                        "gpu_count {n} asks for more devices than this host has ({})",
                        host.devices.len()
                    )));
                }
                (None, Some(n)) => host.devices[..n as usize].to_vec(),
                (None, None) => host.devices.clone(),
            };
            let Some(device) = devices.first().cloned() else {
                return Err(JobError::permanent("this host has no device to train on"));
            };
            ctx.info(format!("starting training on {}", describe(&devices)));
            if devices.len() > 1 {
                ctx.info(format!(
                    "data-parallel over {} devices: each batch is split between them",
                    devices.len()
                ));
            }
            let replicas = devices[1..].to_vec();
            let mut prep = PrepareOptions::default();
            if let Some(r) = p.valid_ratio {
                prep.valid_ratio = r;
            }
            prep.valid_dir = valid;
            prep.test_dir = test;
            prep.seed = config.seed;
            let ctx2 = ctx.clone();
            let outcome = blocking(move || {
                ctx2.info(format!(
                    "preparing dataset {} from {}...",
                    data_dir.display(),
                    sample_dir.display()
                ));
                let (processor, dataset) =
                    prepare_dataset(&sample_dir, &data_dir, &p.dataset_id, &spec, &prep)?;
                ctx2.info(format!(
                    "dataset ready: {} training rows, {} validation rows{}, {} fields",
                    dataset.train_rows,
                    dataset.valid_rows,
                    if dataset.test_parts.is_empty() {
                        String::new()
                    } else {
                        format!(", {} test rows", dataset.test_rows)
                    },
                    processor.spec.num_fields()
                ));
                ctx2.info(format!(
                    "training {:?} `{}` for {} epochs on {:?}...",
                    config.model, config.model_id, config.epochs, device
                ));
                let mut opts = TrainOptions::new(&data_dir, &model_dir, device);
                opts.replicas = replicas;
                let mut observer = JobTrainObserver {
                    ctx: ctx2.clone(),
                    labels: processor.spec.labels.clone(),
                    last_progress: std::time::Instant::now(),
                };
                let outcome = train(&config, &processor, &dataset, &opts, &mut observer)?;
                // The test split is scored once the training is over (not after a pause).
                let test = if outcome.finished {
                    evaluate_test(&config, &processor, &dataset, &opts)?
                } else {
                    None
                };
                Ok((outcome, test, processor.spec.labels.clone()))
            })
            .await?;
            let (outcome, test, labels) = outcome;
            if let Some(t) = &test {
                ctx.info(format!(
                    "test evaluation of the best model ({} rows): [Metrics] {}",
                    t.rows,
                    metrics_line_with_gauc(&labels, &t.auc, &t.logloss, &t.gauc)
                ));
                let mean = t.auc.iter().sum::<f64>() / t.auc.len().max(1) as f64;
                ctx.metric("test_auc", mean, 0);
                for (i, (auc, ll)) in t.auc.iter().zip(&t.logloss).enumerate() {
                    ctx.metric(&format!("test_auc_{i}"), *auc, 0);
                    ctx.metric(&format!("test_logloss_{i}"), *ll, 0);
                }
                for (i, g) in t.gauc.iter().enumerate() {
                    ctx.metric(&format!("test_gauc_{i}"), *g, 0);
                }
            }
            let best = outcome.state.best_val_auc().unwrap_or(0.0);
            ctx.info(format!(
                "training complete: best epoch {} with validation AUC {best:.4}; model {}",
                outcome.state.best_epoch.unwrap_or(0),
                outcome.model_path.display()
            ));
            ctx.metric("best_val_auc", best, 0);
            ctx.progress(&serde_json::json!({
                "stage": "trained", "model_path": outcome.model_path,
                "best_epoch": outcome.state.best_epoch, "best_val_auc": best,
                "epochs": outcome.state.history,
                "stopped_early": outcome.stopped_early,
                "test": test,
            }));
            Ok(())
        })
    }
}

/// A FuxiCTR configuration's validation and test files, beside its training files.
#[derive(Default)]
struct FuxiSplits {
    valid: Option<PathBuf>,
    test: Option<PathBuf>,
}

/// The model, features and data files of a FuxiCTR configuration on this host: every path
/// confined to the agent's roots, refused with the key's name where Ferry cannot follow it.
/// With `sample_dir` (the CTR pipeline's export), that is the data, under the step's
/// `dataset_id`; else the configuration's own files, whose dataset must be the step's.
fn from_fuxictr(
    host: &CtrHost,
    ctx: &JobContext,
    dataset_id: &str,
    f: &FuxiCtrConfig,
    sample_dir: &str,
) -> Result<(ModelConfig, FeatureSpec, PathBuf, FuxiSplits), JobError> {
    let config_dir = host
        .policy
        .confine("FuxiCTR configuration folder", &f.config_dir)?;
    let folder = (!sample_dir.is_empty())
        .then(|| host.policy.confine("sample directory", sample_dir))
        .transpose()?;
    let e = match &folder {
        Some(dir) => ferry_ctr::fuxictr::load_with(
            &config_dir,
            &f.expid,
            ferry_ctr::fuxictr::DataFrom::Folder(dir),
        ),
        None => {
            let work_dir = match &f.work_dir {
                Some(w) => host.policy.confine("FuxiCTR working folder", w)?,
                None => config_dir
                    .parent()
                    .map_or_else(|| config_dir.clone(), Path::to_owned),
            };
            ferry_ctr::fuxictr::load(&config_dir, &f.expid, &work_dir)
        }
    }
    .map_err(|e| JobError::permanent(format!("FuxiCTR configuration: {e}")))?;
    for w in &e.warnings {
        ctx.info(format!("FuxiCTR configuration: {w}"));
    }
    if let Some(dir) = folder {
        return Ok((e.model, e.features, dir, FuxiSplits::default()));
    }
    if e.dataset_id != dataset_id {
        return Err(JobError::permanent(format!(
            "experiment {} trains on dataset {}, but the step names dataset {dataset_id}",
            e.expid, e.dataset_id
        )));
    }
    let confine = |what: &str, path: &Path| -> Result<PathBuf, JobError> {
        // Resolved as the system resolves it when FuxiCTR opens it (its configurations say
        // `../data/...`), then confined to the roots like any path.
        let real = std::fs::canonicalize(path)
            .map_err(|e| JobError::permanent(format!("{what} {}: {e}", path.display())))?;
        let text = real.to_str().ok_or_else(|| {
            JobError::permanent(format!("{what}: {} is not valid UTF-8", real.display()))
        })?;
        host.policy.confine(what, text)
    };
    let train = confine("train_data", &e.data.train)?;
    let valid = e
        .data
        .valid
        .as_deref()
        .map(|v| confine("valid_data", v))
        .transpose()?;
    let test = e
        .data
        .test
        .as_deref()
        .map(|t| confine("test_data", t))
        .transpose()?;
    Ok((e.model, e.features, train, FuxiSplits { valid, test }))
}

struct JobInferObserver {
    ctx: JobContext,
}

impl InferObserver for JobInferObserver {
    fn on_part(&self, done: usize, total: usize, rows: u64) {
        self.ctx.progress(&serde_json::json!({
            "stage": "inference", "parts_done": done, "parts_total": total, "rows": rows,
        }));
    }

    fn cancelled(&self) -> bool {
        self.ctx.cancellation().is_cancelled()
    }
}

pub struct InferExecutor {
    host: Arc<CtrHost>,
}

/// `{data_dir}/{expid}_inference_result`, `data_dir` being `{data_root}/{dataset_id}`
/// (`CtrHost::dataset_dirs`) and `expid` one name.
pub fn inference_result_dir(data_dir: &Path, expid: &str) -> Result<PathBuf, JobError> {
    check_identifier("expid", expid)?;
    Ok(data_dir.join(format!("{expid}_inference_result")))
}

impl Executor for InferExecutor {
    fn kind(&self) -> &'static str {
        kinds::INFER
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let host = self.host.clone();
        Box::pin(async move {
            let p: InferParams = ctx.params()?;
            // Checked before anything is read or written.
            check_identifier("model_id", &p.model_id)?;
            let (data_dir, model_dir) = host.dataset_dirs(&p.dataset_id)?;
            let input_dir = host.policy.confine("input directory", &p.input_dir)?;
            // The GPUs the coordinator gave the job, else every device of the host.
            let devices = if ctx.gpu_ids.is_empty() {
                host.devices.clone()
            } else {
                devices_for(&ctx.gpu_ids).map_err(|e| JobError::permanent(e.to_string()))?
            };
            let opts = InferOptions {
                input_dir,
                output_dir: inference_result_dir(&data_dir, &p.expid)?,
                data_dir,
                model_dir,
                model_id: p.model_id.clone(),
                batch_size: p.batch_size.unwrap_or(10_000),
                devices,
                stop_after_parts: None,
                pipelined: true,
            };
            ctx.info(format!(
                "scoring {} with model {} on {} device(s)...",
                opts.input_dir.display(),
                p.model_id,
                opts.devices.len()
            ));
            let ctx2 = ctx.clone();
            let outcome = blocking(move || infer(&opts, &JobInferObserver { ctx: ctx2 })).await?;
            ctx.info(format!(
                "inference complete: {} parts ({} computed now, {} kept from before), {} rows, {:.0} rows/s",
                outcome.parts_total,
                outcome.parts_computed,
                outcome.parts_skipped,
                outcome.rows_total,
                outcome.rows_per_sec()
            ));
            ctx.metric("inference_rows", outcome.rows_total as f64, 0);
            ctx.metric("inference_rows_per_sec", outcome.rows_per_sec(), 0);
            ctx.progress(&serde_json::json!({
                "stage": "inferred", "rows": outcome.rows_total, "parts": outcome.parts_total,
                "score_columns": outcome.score_columns,
            }));
            ctx.save_checkpoint(&serde_json::json!({"rows": outcome.rows_total}));
            Ok(())
        })
    }
}

fn describe(devices: &[Device]) -> String {
    match devices {
        [one] => format!("{one:?}"),
        many => format!("{} devices ({:?})", many.len(), many),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::config::AllowConfig;

    fn host(root: &Path) -> CtrHost {
        CtrHost {
            data_root: root.join("data"),
            model_root: root.join("models"),
            devices: Vec::new(),
            policy: Policy::new(vec![root.to_owned()], AllowConfig::default()),
        }
    }

    #[test]
    fn a_rendered_dataset_id_that_escapes_its_root_is_refused() {
        let root = tempfile::tempdir().expect("tmp");
        let host = host(root.path());
        let (data, models) = host.dataset_dirs("campaign").expect("a name");
        assert_eq!(data, root.path().join("data/campaign"));
        assert_eq!(models, root.path().join("models/campaign"));
        // `${param.x}` rendered to an absolute path would replace data_root in `join`.
        for bad in ["/tmp/escape", "../escape", "a/b", "..", "."] {
            let e = host.dataset_dirs(bad).expect_err(bad);
            assert!(e.message.contains("single directory name"), "{e}");
            assert_eq!(e.class, ferry_core::ErrorClass::Permanent);
        }
        assert!(inference_result_dir(&data, "../x").is_err());
        assert_eq!(
            inference_result_dir(&data, "e1").expect("a name"),
            data.join("e1_inference_result")
        );
        // A dataset directory that is a symlink out of the root.
        let outside = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(root.path().join("data")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), root.path().join("data/linked"))
            .expect("symlink");
        let e = host.dataset_dirs("linked").expect_err("symlink");
        assert!(e.message.contains("symlink"), "{e}");
        // Roots that do not hold the FuxiCTR directories.
        let elsewhere = CtrHost {
            policy: Policy::new(vec![outside.path().to_owned()], AllowConfig::default()),
            ..host
        };
        assert!(elsewhere.dataset_dirs("campaign").is_err());
    }
}
