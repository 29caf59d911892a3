//! `cargo xtask bench ctr`: Ferry's CTR training and inference figures (release build, CPU).
//!
//! - `--baseline fuxictr`: FuxiCTR (PyTorch) runs in the same invocation on the same files: the
//!   FuxiCTR harness generates the data, then for each model Ferry, FuxiCTR and Ferry again
//!   train and score it back to back, and the table shows the ratio of FuxiCTR's figures to
//!   the mean of Ferry's two runs (so a drifting machine weighs on both sides). Needs a Python with `torch` and
//!   `fuxictr`, the harness's scripts and FuxiCTR's `model_zoo/` (docs/operations.md).
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
    #[arg(long, default_value = "deepfm,mmoe")]
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

/// Runs the `ctr_bench` example (release build) and returns its JSON figures.
fn ferry_bench(
    rows: usize,
    models: &str,
    work: &Path,
    data: Option<&Path>,
) -> anyhow::Result<serde_json::Value> {
    let json_path = work.join(format!("ferry-{}.json", models.replace(',', "-")));
    let dir = work.join("ferry");
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "run",
        "--release",
        "-q",
        "-p",
        "ferry-ctr",
        "--example",
        "ctr_bench",
        "--",
    ])
    .arg(rows.to_string())
    .arg(&dir)
    .arg(models)
    .env("FERRY_BENCH_JSON", &json_path)
    .current_dir(crate::workspace_root());
    if let Some(data) = data {
        cmd.env("FERRY_BENCH_DATA", data);
    }
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
    let figures = ferry_bench(opts.rows, &opts.models, work, None)?;
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
    Ok(())
}

/// FuxiCTR and Ferry on the same generated files, model by model, back to back.
fn side_by_side(opts: &Options, work: &Path) -> anyhow::Result<()> {
    let python = &opts.fuxictr_python;
    let harness = opts.fuxictr_harness.as_deref().context(
        "--baseline fuxictr needs --fuxictr-harness DIR (or FERRY_FUXICTR_HARNESS): the folder \
         with the FuxiCTR harness's gen_data.py and run_bench.py",
    )?;
    let zoo = opts.fuxictr_model_zoo.as_deref().context(
        "--baseline fuxictr needs --fuxictr-model-zoo DIR (or FERRY_FUXICTR_MODEL_ZOO): \
         FuxiCTR's model_zoo/ folder from its source repository",
    )?;
    for script in ["gen_data.py", "run_bench.py"] {
        anyhow::ensure!(
            harness.join(script).is_file(),
            "{} has no {script}",
            harness.display()
        );
    }
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
    println!(
        "generated {} training rows with the harness in {:.1}s",
        opts.rows,
        t.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for model in opts
        .models
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        // Ferry before and after FuxiCTR, averaged: a machine that drifts during the run
        // then weighs on both sides alike.
        println!("\n== {model}: Ferry ==");
        let before = ferry_bench(opts.rows, model, work, Some(&data))?;
        println!("\n== {model}: FuxiCTR ==");
        let out = work.join(format!("fuxictr-{model}.json"));
        // FuxiCTR logs every Ray step: keep its log aside and show its end if it fails.
        let log_path = work.join(format!("fuxictr-{model}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let t = std::time::Instant::now();
        let status = std::process::Command::new(python)
            .arg(harness.join("run_bench.py"))
            .args(["--model", model, "--format", "parquet"])
            .arg("--data")
            .arg(&data)
            .arg("--model-zoo")
            .arg(zoo)
            .arg("--data-root")
            .arg(work.join("fuxictr-data"))
            .arg("--model-root")
            .arg(work.join("fuxictr-models"))
            .arg("--out-json")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .status()
            .context("cannot run run_bench.py")?;
        if !status.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            anyhow::bail!("FuxiCTR's run_bench.py failed ({status})");
        }
        let fuxi: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&out).with_context(|| format!("read {}", out.display()))?,
        )?;
        println!(
            "{model}: FuxiCTR took {:.0}s; training {:.0} samples/s, inference {:.0} rows/s",
            t.elapsed().as_secs_f64(),
            fuxi["train_samples_per_s"].as_f64().unwrap_or(0.0),
            fuxi["predict_rows_per_s"].as_f64().unwrap_or(0.0)
        );
        println!("\n== {model}: Ferry again, after FuxiCTR ==");
        let after = ferry_bench(opts.rows, model, work, Some(&data))?;
        let first = |figures: &serde_json::Value| {
            figures["results"]
                .as_array()
                .and_then(|a| a.first())
                .cloned()
                .context("the Ferry benchmark reported no model")
        };
        rows.push((
            model.to_owned(),
            [first(&before)?, first(&after)?],
            before["peak_rss_mb"].clone(),
            fuxi,
        ));
    }

    println!(
        "\nFerry vs FuxiCTR, same files ({} training rows), same run, back to back:",
        opts.rows
    );
    print_header("FuxiCTR");
    for (model, [before, after], _, fuxi) in &rows {
        let get = |k: &str| fuxi[k].as_f64().unwrap_or(0.0);
        let (b, a) = (ferry_figures(before), ferry_figures(after));
        print_row(
            model,
            [0, 1, 2].map(|i| (b[i] + a[i]) / 2.0),
            [
                get("train_samples_per_s"),
                get("predict_rows_per_s"),
                get("forward_only_rows_per_s"),
            ],
        );
    }
    println!("(Ferry's figures: the mean of its runs before and after FuxiCTR's.)");
    for (model, [r, after], rss, fuxi) in &rows {
        let (b, a) = (ferry_figures(r), ferry_figures(after));
        println!(
            "{model}: Ferry before / after FuxiCTR: training {:.0} / {:.0} samples/s, \
             inference {:.0} / {:.0} rows/s",
            b[0], a[0], b[1], a[1]
        );
        println!(
            "{model}: validation AUC Ferry {} logloss {} | FuxiCTR {}; Ferry peak RSS {:.0} MB",
            r["val_auc"],
            r["val_logloss"],
            fuxi["valid_metrics"],
            rss.as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
