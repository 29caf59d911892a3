//! The CTR benchmark behind `cargo xtask bench ctr` (release build): generates the sample
//! campaign data, prepares the dataset, trains DeepFM and MMoE for one epoch at the FuxiCTR
//! reference shapes and scores the inference table, printing training samples/s, end-to-end and
//! forward-only inference rows/s, validation AUC/logloss and peak RSS.
//!
//! Usage: `ctr_bench ROWS WORKDIR [MODELS]` with MODELS a comma list of `deepfm,mmoe`.
//! With `FERRY_BENCH_JSON=FILE` the figures are also written as JSON.
//!
//! `FERRY_BENCH_CPU_THREADS=N` sets `TrainOptions::cpu_threads` (default: every core).
//!
//! With `FERRY_BENCH_CONFIG=DIR`, a FuxiCTR configuration folder (`model_config.yaml` and
//! `dataset_config.yaml`), MODELS are its experiment ids: each is read with Ferry's FuxiCTR
//! reader (features, model settings and data files, relative paths against the working
//! directory), so Ferry trains what FuxiCTR's `run_expid.py` would from the same folder.
//!
//! Before the models, it measures the machine's f32 GEMM peak with the backend's own products
//! (one product on every core, and one single-threaded product per core at the same time), and
//! reports each model's training GFLOP/s (its matrix products, [`CtrModel::forward_flops_per_row`]
//! × 3 × samples/s) and that figure's share of the peak.
//!
//! With `FERRY_BENCH_DATA=DIR`, a folder of `train.parquet`, `valid.parquet` and `test.parquet`
//! (the FuxiCTR baseline harness's generated data, columns `click, conversion, I1..I13,
//! C1..C26`), it trains on those splits and scores `test.parquet` instead of generating the
//! sample campaign data, so both sides of a side-by-side run see the same rows.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Tensor;
use ferry_ctr::dataset::{EncodedBatches, PrepareOptions, prepare_dataset};
use ferry_ctr::device::Device;
use ferry_ctr::infer::{InferOptions, infer};
use ferry_ctr::model::Inputs;
use ferry_ctr::train::{TrainOptions, load_trained, train};
use ferry_ctr::{FeatureSpec, ModelConfig, ModelKind, fuxictr};
use ferry_sampledata::{SampleSpec, generate};

/// The allocator of the training and inference daemons (see the workspace manifest).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Puts each split file in a folder of its own (hard links, else copies), since the dataset
/// preparation and inference read every Parquet file under a folder.
type Splits = (PathBuf, Option<PathBuf>, PathBuf);
fn split_folders(files: [&Path; 3], work: &Path) -> Result<Splits, Box<dyn std::error::Error>> {
    let mut dirs = Vec::new();
    for (split, from) in ["train", "valid", "test"].into_iter().zip(files) {
        if !from.is_file() {
            return Err(format!("the {split} split {} is missing", from.display()).into());
        }
        let dir = work.join("given").join(split);
        std::fs::create_dir_all(&dir)?;
        let to = dir.join(format!("{split}.parquet"));
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to)?;
        }
        dirs.push(dir);
    }
    let test = dirs.pop().ok_or("no test folder")?;
    let valid = dirs.pop();
    let train = dirs.pop().ok_or("no train folder")?;
    Ok((train, valid, test))
}

/// GFLOP/s of `reps` products of two n×n f32 matrices on the backend, after one warm-up.
fn gemm_gflops(n: usize, reps: usize, device: &Device) -> f64 {
    let a = Tensor::<2>::ones([n, n], device);
    let b = Tensor::<2>::ones([n, n], device);
    let _ = a.clone().matmul(b.clone()).into_data();
    let t = Instant::now();
    for _ in 0..reps {
        let _ = a.clone().matmul(b.clone()).into_data();
    }
    2.0 * (n * n * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// The machine's f32 GEMM peak as the backend reaches it: one product over every core, and one
/// single-threaded product per core at the same time (how training computes its row ranges);
/// the larger is the peak.
fn gemm_peak(device: &Device) -> (f64, f64) {
    let (n, reps) = (1024, 12);
    let one = gemm_gflops(n, reps, device);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let per_core: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cores)
            .map(|_| {
                s.spawn(|| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .map_or(0.0, |pool| pool.install(|| gemm_gflops(n, reps, device)))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    (one, per_core)
}

/// One model to measure: what it trains on and with which settings.
struct Job {
    name: String,
    dataset_id: String,
    features: FeatureSpec,
    config: ModelConfig,
    train: PathBuf,
    valid: Option<PathBuf>,
    test: PathBuf,
}

fn config(kind: ModelKind) -> ModelConfig {
    // fuxictr-reference.md: embedding 16, Adam 1e-3, batch 4096, 1 epoch, no dropout.
    let mut c = ModelConfig::new(kind, &format!("{kind:?}_bench"));
    c.embedding_dim = 16;
    c.hidden_units = vec![400, 400, 400];
    c.num_experts = 4;
    c.expert_hidden_units = vec![512, 256];
    c.gate_hidden_units = vec![128, 64];
    c.tower_hidden_units = vec![128, 64];
    c.batch_size = 4096;
    c.epochs = 1;
    c.learning_rate = 1e-3;
    c.inference_batch_size = 10_000;
    c
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: ctr_bench ROWS WORKDIR [deepfm,mmoe | experiment ids]";
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().ok_or(usage)?.parse()?;
    let work = std::path::PathBuf::from(args.next().ok_or(usage)?);
    let names: Vec<String> = args
        .next()
        .unwrap_or_else(|| "deepfm,mmoe".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let device = Device::flex();

    let (one, per_core) = gemm_peak(&device);
    let peak = one.max(per_core);
    println!(
        "f32 GEMM peak {peak:.1} GFLOP/s (one 1024³ product on every core {one:.1}, one \
         single-threaded product per core at once {per_core:.1})"
    );

    let mut jobs = Vec::new();
    if let Some(config_dir) = std::env::var_os("FERRY_BENCH_CONFIG").map(PathBuf::from) {
        let cwd = std::env::current_dir()?;
        for expid in &names {
            let e = fuxictr::load(&config_dir, expid, &cwd)?;
            for w in &e.warnings {
                println!("{expid}: {w}");
            }
            let (valid, test) = match (&e.data.valid, &e.data.test) {
                (Some(v), Some(t)) => (v, t),
                _ => {
                    return Err(format!("{expid}: the bench needs valid_data and test_data").into());
                }
            };
            let (train, valid, test) =
                split_folders([&e.data.train, valid, test], &work.join(expid))?;
            let mut config = e.model;
            config.inference_batch_size = 10_000;
            jobs.push(Job {
                name: expid.clone(),
                dataset_id: e.dataset_id.clone(),
                features: e.features,
                config,
                train,
                valid,
                test,
            });
        }
    } else {
        let kinds: Vec<ModelKind> = names
            .iter()
            .map(|m| ModelKind::parse(m).ok_or(format!("unknown model {m}")))
            .collect::<Result<_, _>>()?;
        let given = std::env::var_os("FERRY_BENCH_DATA").map(std::path::PathBuf::from);
        let (train, valid, test) = match &given {
            Some(dir) => {
                let [a, b, c] =
                    ["train", "valid", "test"].map(|s| dir.join(format!("{s}.parquet")));
                split_folders([&a, &b, &c], &work)?
            }
            None => {
                let t = Instant::now();
                let mut spec = SampleSpec::new(rows, 2024);
                spec.infer_rows = (rows / 10).max(1);
                spec.rows_per_part = 100_000;
                let tables = generate(&work.join("warehouse"), &spec)?;
                println!(
                    "generated {rows} training rows and {} inference rows in {:.1}s",
                    spec.infer_rows,
                    t.elapsed().as_secs_f64()
                );
                (tables[0].dir.clone(), None, tables[1].dir.clone())
            }
        };
        for kind in kinds {
            let labels: &[&str] = if kind.is_multi_task() {
                &["click", "conversion"]
            } else {
                &["click"]
            };
            let mut features = if kind == ModelKind::DIN {
                FeatureSpec::campaign_with_history(labels)
            } else {
                FeatureSpec::campaign(labels)
            };
            if given.is_some() {
                // The harness's files carry no id columns.
                features.id_columns.clear();
            }
            let mut config = config(kind);
            if kind == ModelKind::DIN {
                config.din_target_field = vec!["C10".into()];
                config.din_sequence_field = vec!["click_history".into()];
            }
            jobs.push(Job {
                name: format!("{kind:?}"),
                dataset_id: "campaign".into(),
                features,
                config,
                train: train.clone(),
                valid: valid.clone(),
                test: test.clone(),
            });
        }
    }

    let mut results = Vec::new();
    for job in jobs {
        let Job {
            name,
            dataset_id,
            features,
            config: cfg,
            train: sample_dir,
            valid: valid_dir,
            test: infer_dir,
        } = job;
        let kind = cfg.model;
        let data_dir = work.join(format!("data/{name}"));
        let model_dir = work.join(format!("models/{name}"));
        let t = Instant::now();
        let (processor, dataset) = prepare_dataset(
            &sample_dir,
            &data_dir,
            &dataset_id,
            &features,
            &PrepareOptions {
                valid_dir: valid_dir.clone(),
                ..PrepareOptions::default()
            },
        )?;
        let prep_secs = t.elapsed().as_secs_f64();
        let categories: usize = processor.vocab_sizes().iter().sum();
        println!(
            "\n{name} ({kind:?}): prepared {} train / {} valid rows ({categories} categorical features) in {prep_secs:.1}s",
            dataset.train_rows, dataset.valid_rows
        );
        let mut train_opts = TrainOptions::new(&data_dir, &model_dir, device.clone());
        if let Some(n) = std::env::var("FERRY_BENCH_CPU_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            train_opts.cpu_threads = n;
        }
        let outcome = train(&cfg, &processor, &dataset, &train_opts, &mut ())?;
        let report = outcome
            .state
            .history
            .last()
            .ok_or("training produced no epoch")?
            .clone();
        let (model, card) = load_trained(&model_dir, &cfg.model_id, &device)?;
        let flops = model.forward_flops_per_row(&card.shape, cfg.embedding_dim);
        let gflops = 3.0 * flops * report.samples_per_sec() / 1e9;
        println!(
            "{name}: training {:.0} samples/s ({} samples in {:.1}s), validation AUC {:?} logloss {:?}",
            report.samples_per_sec(),
            report.samples,
            report.train_seconds,
            report.val_auc,
            report.val_logloss
        );
        println!(
            "{name}: {:.2} MFLOP per training row in matrix products: {gflops:.1} GFLOP/s, {:.0}% of the GEMM peak",
            3.0 * flops / 1e6,
            100.0 * gflops / peak
        );

        // End to end: load model and processor, read, encode, score, write Parquet parts.
        // Side by side in one run: one thread doing every stage (the baseline), then the
        // pipelined default (read + encode, score, write on their own threads).
        let out = data_dir.join("bench_inference_result");
        let run_infer = |pipelined: bool| {
            let _ = std::fs::remove_dir_all(&out);
            infer(
                &InferOptions {
                    input_dir: infer_dir.clone(),
                    data_dir: data_dir.clone(),
                    model_dir: model_dir.clone(),
                    model_id: cfg.model_id.clone(),
                    output_dir: out.clone(),
                    batch_size: cfg.inference_batch_size,
                    devices: vec![device.clone()],
                    stop_after_parts: None,
                    pipelined,
                },
                &(),
            )
        };
        let sequential = run_infer(false)?;
        let inferred = run_infer(true)?;
        println!(
            "{name}: inference pipelined {:.0} vs one thread {:.0} rows/s: {:.3}x (same run)",
            inferred.rows_per_sec(),
            sequential.rows_per_sec(),
            inferred.rows_per_sec() / sequential.rows_per_sec()
        );
        // Forward only: encoded batches already in memory.
        let batches: Vec<_> = EncodedBatches::new(
            &processor.spec,
            &dataset.valid_files(&data_dir),
            cfg.inference_batch_size,
            None,
        )
        .collect::<Result<_, _>>()?;
        let inputs: Vec<Inputs> = batches
            .iter()
            .map(|b| Inputs::new(b, &card.shape, &device))
            .collect::<Result<_, _>>()?;
        let t = Instant::now();
        let mut forward_rows = 0usize;
        for x in &inputs {
            let p = model.predict(x).into_data();
            forward_rows += p.num_elements() / card.shape.num_tasks;
        }
        let forward_rate = forward_rows as f64 / t.elapsed().as_secs_f64();
        println!(
            "{name}: inference {:.0} rows/s end to end ({} rows, {} parts), {forward_rate:.0} rows/s forward only",
            inferred.rows_per_sec(),
            inferred.rows_total,
            inferred.parts_total
        );
        results.push(serde_json::json!({
            "model": name,
            "kind": format!("{kind:?}"),
            "train_rows": dataset.train_rows,
            "preprocess_s": prep_secs,
            "train_samples_per_s": report.samples_per_sec(),
            "train_flops_per_row": 3.0 * flops,
            "train_gflops_per_s": gflops,
            "val_auc": report.val_auc,
            "val_logloss": report.val_logloss,
            "predict_rows_per_s": inferred.rows_per_sec(),
            "forward_only_rows_per_s": forward_rate,
        }));
    }
    let rss = peak_rss_mb();
    println!("\npeak RSS {rss:.0} MB");
    if let Ok(path) = std::env::var("FERRY_BENCH_JSON") {
        let json = serde_json::json!({
            "rows": rows,
            "peak_rss_mb": rss,
            "gemm_peak_gflops": peak,
            "gemm_one_product_gflops": one,
            "gemm_per_core_gflops": per_core,
            "results": results,
        });
        std::fs::write(Path::new(&path), serde_json::to_vec_pretty(&json)?)?;
    }
    Ok(())
}
