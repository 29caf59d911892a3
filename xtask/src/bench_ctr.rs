//! `cargo xtask bench ctr`: Ferry's CTR training and inference figures (release build, CPU).
//!
//! - `--baseline fuxictr`: FuxiCTR (PyTorch) runs in the same invocation on the same files with
//!   the same settings: the FuxiCTR harness's `gen_data.py` generates the data
//!   (`xtask/fuxictr/add_history.py` adds the `click_history` sequence DIN attends over), and
//!   both sides read one FuxiCTR configuration folder, `xtask/fuxictr/config/` (experiment
//!   `<Model>_bench`): FuxiCTR through `xtask/fuxictr/run_expid.py` (its own `load_config`,
//!   `build_dataset`, `fit`, `predict`), Ferry through its FuxiCTR reader. For each model Ferry,
//!   FuxiCTR and Ferry again train and score back to back; the table shows Ferry (the mean of
//!   its two runs, so a drifting machine weighs on both sides) against FuxiCTR, the validation
//!   AUCs, the GFLOP/s share of the machine's GEMM peak on both sides, and peak RSS. Needs a
//!   Python with `torch` and `fuxictr`, the harness's scripts and FuxiCTR's `model_zoo/`
//!   (docs/operations.md).
//! - Without it: Ferry on the generated sample campaign data, beside FuxiCTR's figures from the
//!   reference file, marked as such (taken on an idle machine at another time).

use std::path::{Path, PathBuf};

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Training rows to generate (inference rows are a tenth).
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Comma list of models.
    #[arg(long, default_value = "deepfm,dcnv2,din,mmoe")]
    models: String,
    /// `fuxictr`: run FuxiCTR beside Ferry on the same files, in this run.
    #[arg(long, value_parser = ["fuxictr"])]
    baseline: Option<String>,
    /// The Python that has `torch` and `fuxictr` installed.
    #[arg(long, env = "FERRY_FUXICTR_PYTHON", default_value = "python3")]
    fuxictr_python: PathBuf,
    /// The folder with the harness's `gen_data.py` and `run_bench.py`.
    #[arg(long, env = "FERRY_FUXICTR_HARNESS")]
    fuxictr_harness: Option<PathBuf>,
    /// FuxiCTR's `model_zoo/` folder (its DeepFM and MMoE classes are not in the wheel).
    #[arg(long, env = "FERRY_FUXICTR_MODEL_ZOO")]
    fuxictr_model_zoo: Option<PathBuf>,
}

/// fuxictr-reference.md (FuxiCTR 2.3.10, PyTorch CPU, 2 threads, idle 2-core machine).
struct Reference {
    model: &'static str,
    train_samples_per_s: f64,
    predict_rows_per_s: f64,
    forward_only_rows_per_s: f64,
    val_auc: &'static str,
}

const REFERENCE: &[Reference] = &[
    Reference {
        model: "DeepFM",
        train_samples_per_s: 29_400.0,
        predict_rows_per_s: 46_150.0,
        forward_only_rows_per_s: 145_300.0,
        val_auc: "0.8034",
    },
    Reference {
        model: "MMoE",
        train_samples_per_s: 13_080.0,
        predict_rows_per_s: 21_430.0,
        forward_only_rows_per_s: 40_780.0,
        val_auc: "click 0.8035, conversion 0.8385",
    },
];

pub fn run(opts: Options) -> anyhow::Result<()> {
    let work: PathBuf =
        std::env::temp_dir().join(format!("ferry-bench-ctr-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let result = match opts.baseline.as_deref() {
        Some("fuxictr") => side_by_side(&opts, &work),
        _ => against_reference(&opts, &work),
    };
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Where `ctr_bench` finds its data and settings.
enum Input<'a> {
    /// Sample campaign data it generates.
    Sample,
    /// Experiment ids of a FuxiCTR configuration folder, run with `work` as the working
    /// directory (its relative data paths resolve there).
    FuxiCtr(&'a Path),
}

/// Runs the `ctr_bench` example (release build) and returns its JSON figures.
fn ferry_bench(
    rows: usize,
    models: &str,
    work: &Path,
    input: Input<'_>,
) -> anyhow::Result<serde_json::Value> {
    let json_path = work.join(format!("ferry-{}.json", models.replace(',', "-")));
    let dir = work.join("ferry");
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["run", "--release", "-q", "--manifest-path"])
        .arg(crate::workspace_root().join("Cargo.toml"))
        .args(["-p", "ferry-ctr", "--example", "ctr_bench", "--"])
        .arg(rows.to_string())
        .arg(&dir)
        .arg(models)
        .env("FERRY_BENCH_JSON", &json_path);
    match input {
        Input::Sample => cmd.current_dir(crate::workspace_root()),
        Input::FuxiCtr(config) => cmd.env("FERRY_BENCH_CONFIG", config).current_dir(work),
    };
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        anyhow::bail!("the CTR benchmark failed ({status})");
    }
    let figures = serde_json::from_slice(
        &std::fs::read(&json_path).with_context(|| format!("read {}", json_path.display()))?,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn print_header(baseline: &str) {
    println!(
        "{:<8} {:>14} {:>14} {:>7} | {:>14} {:>14} {:>7} | {:>14} {:>14} {:>7}",
        "model",
        "train/s Ferry",
        baseline,
        "ratio",
        "infer/s Ferry",
        baseline,
        "ratio",
        "fwd/s Ferry",
        baseline,
        "ratio"
    );
}

fn print_row(model: &str, ferry: [f64; 3], baseline: [f64; 3]) {
    let [t, p, f] = ferry;
    let [bt, bp, bf] = baseline;
    println!(
        "{model:<8} {t:>14.0} {bt:>14.0} {:>7} | {p:>14.0} {bp:>14.0} {:>7} | {f:>14.0} {bf:>14.0} {:>7}",
        ratio(t, bt),
        ratio(p, bp),
        ratio(f, bf),
    );
}

fn ferry_figures(r: &serde_json::Value) -> [f64; 3] {
    let get = |k: &str| r[k].as_f64().unwrap_or(0.0);
    [
        get("train_samples_per_s"),
        get("predict_rows_per_s"),
        get("forward_only_rows_per_s"),
    ]
}

/// Ferry on the sample campaign data beside the reference file's FuxiCTR figures.
fn against_reference(opts: &Options, work: &Path) -> anyhow::Result<()> {
    let figures = ferry_bench(opts.rows, &opts.models, work, Input::Sample)?;
    println!(
        "\nFerry (this run) vs FuxiCTR (reference file, idle machine; not measured in this run; \
         `--baseline fuxictr` measures it in the same run):"
    );
    print_header("FuxiCTR");
    for r in figures["results"].as_array().into_iter().flatten() {
        let model = r["model"].as_str().unwrap_or("?");
        let Some(reference) = REFERENCE.iter().find(|x| x.model == model) else {
            continue;
        };
        print_row(
            model,
            ferry_figures(r),
            [
                reference.train_samples_per_s,
                reference.predict_rows_per_s,
                reference.forward_only_rows_per_s,
            ],
        );
        println!(
            "         validation AUC Ferry {} (sample campaign data) | FuxiCTR {} (its gen_data.py data)",
            r["val_auc"], reference.val_auc
        );
    }
    println!(
        "peak RSS {:.0} MB for {} training rows",
        figures["peak_rss_mb"].as_f64().unwrap_or(0.0),
        figures["rows"]
    );
    let peak = figures["gemm_peak_gflops"].as_f64().unwrap_or(0.0);
    for r in figures["results"].as_array().into_iter().flatten() {
        let gflops = r["train_gflops_per_s"].as_f64().unwrap_or(0.0);
        println!(
            "{}: training {gflops:.1} GFLOP/s in matrix products, {} of this machine's f32 GEMM peak ({peak:.1} GFLOP/s)",
            r["model"].as_str().unwrap_or("?"),
            share(gflops, peak)
        );
    }
    Ok(())
}

fn share(gflops: f64, peak: f64) -> String {
    if peak > 0.0 {
        format!("{:.0}%", 100.0 * gflops / peak)
    } else {
        "-".into()
    }
}

/// The bench's experiments: the sections of `model_config.yaml` in `config`, `Base` aside
/// (`<Model>_bench`).
fn experiments(config: &Path) -> anyhow::Result<Vec<String>> {
    let path = config.join("model_config.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let file: serde_yaml::Mapping =
        serde_yaml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    Ok(file
        .keys()
        .filter_map(serde_yaml::Value::as_str)
        .filter(|k| *k != "Base")
        .map(str::to_owned)
        .collect())
}

/// The targets for Ferry's training speed over FuxiCTR's on the CPU.
fn target_ratio(expid: &str) -> f64 {
    if matches!(expid, "DeepFM_bench" | "DCNv2_bench") {
        2.0
    } else {
        1.5
    }
}

/// FuxiCTR's validation AUC (for multi-task models, its `AUC` is the mean over labels).
fn fuxictr_auc(metrics: &serde_json::Value) -> Option<f64> {
    metrics["AUC"].as_f64()
}

/// Ferry's validation AUC, the mean over labels.
fn ferry_auc(result: &serde_json::Value) -> Option<f64> {
    let aucs: Vec<f64> = result["val_auc"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64)
}

/// FuxiCTR and Ferry on the same generated files with the same configuration, model by model,
/// back to back.
fn side_by_side(opts: &Options, work: &Path) -> anyhow::Result<()> {
    let python = &opts.fuxictr_python;
    let harness = opts.fuxictr_harness.as_deref().context(
        "--baseline fuxictr needs --fuxictr-harness DIR (or FERRY_FUXICTR_HARNESS): the folder \
         with the FuxiCTR harness's gen_data.py",
    )?;
    let zoo = opts.fuxictr_model_zoo.as_deref().context(
        "--baseline fuxictr needs --fuxictr-model-zoo DIR (or FERRY_FUXICTR_MODEL_ZOO): \
         FuxiCTR's model_zoo/ folder from its source repository",
    )?;
    anyhow::ensure!(
        harness.join("gen_data.py").is_file(),
        "{} has no gen_data.py",
        harness.display()
    );
    let ours = crate::workspace_root().join("xtask/fuxictr");
    let config = ours.join("config");
    let known = experiments(&config)?;
    let expids: Vec<&str> = opts
        .models
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            (known.iter())
                .find(|e| e.eq_ignore_ascii_case(&format!("{m}_bench")))
                .map(String::as_str)
                .with_context(|| {
                    format!(
                        "no bench experiment for {m}; there are {}",
                        known.join(", ")
                    )
                })
        })
        .collect::<anyhow::Result<_>>()?;
    let probe = std::process::Command::new(python)
        .args(["-c", "import torch, fuxictr"])
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(
        probe.success(),
        "{} cannot import torch and fuxictr; install them with \
         `python3 -m venv VENV && VENV/bin/pip install torch fuxictr==2.3.10` and pass \
         --fuxictr-python VENV/bin/python",
        python.display()
    );

    // The configuration's relative paths: ./synth/{train,valid,test}.parquet.
    let data = work.join("synth");
    let t = std::time::Instant::now();
    let status = std::process::Command::new(python)
        .arg(harness.join("gen_data.py"))
        .arg("--out")
        .arg(&data)
        .args(["--rows", &opts.rows.to_string(), "--seed", "2024"])
        .args(["--format", "parquet"])
        .status()
        .context("cannot run gen_data.py")?;
    anyhow::ensure!(status.success(), "gen_data.py failed ({status})");
    // DIN's experiments (`DIN_bench`, `DINDice_bench`) read the click history.
    if expids.iter().any(|e| e.starts_with("DIN")) {
        let status = std::process::Command::new(python)
            .arg(ours.join("add_history.py"))
            .arg("--data")
            .arg(&data)
            .status()
            .context("cannot run add_history.py")?;
        anyhow::ensure!(status.success(), "add_history.py failed ({status})");
    }
    println!(
        "generated {} training rows with the harness in {:.1}s",
        opts.rows,
        t.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for expid in &expids {
        // Ferry before and after FuxiCTR, averaged: a machine that drifts during the run
        // then weighs on both sides alike.
        println!("\n== {expid}: Ferry ==");
        let before = ferry_bench(opts.rows, expid, work, Input::FuxiCtr(&config))?;
        println!("\n== {expid}: FuxiCTR ==");
        let out = work.join(format!("fuxictr-{expid}.json"));
        // FuxiCTR logs every Ray step: keep its log aside and show its end if it fails.
        let log_path = work.join(format!("fuxictr-{expid}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let t = std::time::Instant::now();
        let status = std::process::Command::new(python)
            .arg(ours.join("run_expid.py"))
            .arg("--config")
            .arg(&config)
            .args(["--expid", expid])
            .arg("--model-zoo")
            .arg(zoo)
            .arg("--out-json")
            .arg(&out)
            .current_dir(work)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .status()
            .context("cannot run run_expid.py")?;
        if !status.success() {
            // One model FuxiCTR cannot run (or that was stopped) does not lose the others.
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            eprintln!("FuxiCTR's run of {expid} failed ({status}); going on with the next model");
            failed.push(expid.to_string());
            continue;
        }
        let fuxi: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&out).with_context(|| format!("read {}", out.display()))?,
        )?;
        println!(
            "{expid}: FuxiCTR took {:.0}s; training {:.0} samples/s, inference {:.0} rows/s",
            t.elapsed().as_secs_f64(),
            fuxi["train_samples_per_s"].as_f64().unwrap_or(0.0),
            fuxi["predict_rows_per_s"].as_f64().unwrap_or(0.0)
        );
        // FuxiCTR's processed data is not needed again; the disk is.
        let _ = std::fs::remove_dir_all(work.join("fuxictr_data"));
        println!("\n== {expid}: Ferry again, after FuxiCTR ==");
        let after = ferry_bench(opts.rows, expid, work, Input::FuxiCtr(&config))?;
        rows.push((expid.to_string(), before, after, fuxi));
    }

    println!(
        "\nFerry vs FuxiCTR, same files ({} training rows), same configuration, same run, back to back:",
        opts.rows
    );
    print_header("FuxiCTR");
    let first = |figures: &serde_json::Value| figures["results"][0].clone();
    for (expid, before, after, fuxi) in &rows {
        let get = |k: &str| fuxi[k].as_f64().unwrap_or(0.0);
        let (b, a) = (ferry_figures(&first(before)), ferry_figures(&first(after)));
        print_row(
            expid.trim_end_matches("_bench"),
            [0, 1, 2].map(|i| (b[i] + a[i]) / 2.0),
            [
                get("train_samples_per_s"),
                get("predict_rows_per_s"),
                get("forward_only_rows_per_s"),
            ],
        );
    }
    println!("(Ferry's figures: the mean of its runs before and after FuxiCTR's.)\n");
    for (expid, before, after, fuxi) in &rows {
        let model = expid.trim_end_matches("_bench");
        let (rb, ra) = (first(before), first(after));
        let (b, a) = (ferry_figures(&rb), ferry_figures(&ra));
        let ferry_train = (b[0] + a[0]) / 2.0;
        let fuxi_train = fuxi["train_samples_per_s"].as_f64().unwrap_or(0.0);
        let target = target_ratio(expid);
        let ratio = if fuxi_train > 0.0 {
            ferry_train / fuxi_train
        } else {
            0.0
        };
        println!(
            "{model}: training ratio {ratio:.2}x (target >= {target}x: {}); Ferry before / after FuxiCTR {:.0} / {:.0} samples/s, inference {:.0} / {:.0} rows/s",
            if ratio >= target { "met" } else { "missed" },
            b[0],
            a[0],
            b[1],
            a[1]
        );
        let (fa, xa) = (ferry_auc(&rb), fuxictr_auc(&fuxi["valid_metrics"]));
        match (fa, xa) {
            (Some(fa), Some(xa)) => println!(
                "{model}: validation AUC Ferry {fa:.4} | FuxiCTR {xa:.4}: {:+.4} (within ±0.003: {})",
                fa - xa,
                if (fa - xa).abs() <= 0.003 {
                    "yes"
                } else {
                    "no"
                }
            ),
            _ => println!(
                "{model}: validation AUC Ferry {} | FuxiCTR {}",
                rb["val_auc"], fuxi["valid_metrics"]
            ),
        }
        // The same matrix products on both sides: FuxiCTR's rate times Ferry's count.
        let peak = before["gemm_peak_gflops"].as_f64().unwrap_or(0.0);
        let flops = rb["train_flops_per_row"].as_f64().unwrap_or(0.0);
        let (fg, xg) = (flops * ferry_train / 1e9, flops * fuxi_train / 1e9);
        println!(
            "{model}: {:.2} MFLOP per training row: Ferry {fg:.1} GFLOP/s ({}), FuxiCTR {xg:.1} GFLOP/s ({}) of the f32 GEMM peak {peak:.1} GFLOP/s",
            flops / 1e6,
            share(fg, peak),
            share(xg, peak)
        );
        println!(
            "{model}: peak RSS Ferry {:.0} MB, FuxiCTR {:.0} MB (its main process; Ray's workers not counted)",
            before["peak_rss_mb"].as_f64().unwrap_or(0.0),
            fuxi["peak_rss_mb"].as_f64().unwrap_or(0.0)
        );
    }
    if !failed.is_empty() {
        println!("FuxiCTR did not finish: {}", failed.join(", "));
    }
    Ok(())
}
