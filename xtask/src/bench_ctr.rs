//! `cargo xtask bench ctr`: Ferry's CTR training and inference figures (release build, CPU)
//! beside FuxiCTR's figures from the reference file, marked as such: they were taken on an idle
//! machine, so only an idle run of this benchmark is comparable with them. (Running FuxiCTR in
//! the same invocation, on the same files, is the next step; see docs/decisions.md.)

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Training rows to generate (inference rows are a tenth).
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Comma list of models.
    #[arg(long, default_value = "deepfm,mmoe")]
    models: String,
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
    let json_path = work.join("figures.json");
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let rows = opts.rows.to_string();
    let dir = work.display().to_string();
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "run",
                "--release",
                "-q",
                "-p",
                "ferry-ctr",
                "--example",
                "ctr_bench",
                "--",
                &rows,
                &dir,
                &opts.models,
            ])
            .env("FERRY_BENCH_JSON", &json_path)
            .current_dir(crate::workspace_root())
            .status()
            .context("cannot run cargo")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&work);
        anyhow::bail!("the CTR benchmark failed ({status})");
    }
    let figures: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json_path).with_context(|| format!("read {}", json_path.display()))?,
    )?;
    let _ = std::fs::remove_dir_all(&work);

    println!(
        "\nFerry (this run) vs FuxiCTR (reference file, idle machine; not measured in this run):"
    );
    println!(
        "{:<8} {:>14} {:>14} {:>7} | {:>14} {:>14} {:>7} | {:>14} {:>14} {:>7}",
        "model",
        "train/s Ferry",
        "FuxiCTR",
        "ratio",
        "infer/s Ferry",
        "FuxiCTR",
        "ratio",
        "fwd/s Ferry",
        "FuxiCTR",
        "ratio"
    );
    for r in figures["results"].as_array().into_iter().flatten() {
        let model = r["model"].as_str().unwrap_or("?");
        let Some(reference) = REFERENCE.iter().find(|x| x.model == model) else {
            continue;
        };
        let get = |k: &str| r[k].as_f64().unwrap_or(0.0);
        let (t, p, f) = (
            get("train_samples_per_s"),
            get("predict_rows_per_s"),
            get("forward_only_rows_per_s"),
        );
        println!(
            "{model:<8} {t:>14.0} {:>14.0} {:>6.2}x | {p:>14.0} {:>14.0} {:>6.2}x | {f:>14.0} {:>14.0} {:>6.2}x",
            reference.train_samples_per_s,
            t / reference.train_samples_per_s,
            reference.predict_rows_per_s,
            p / reference.predict_rows_per_s,
            reference.forward_only_rows_per_s,
            f / reference.forward_only_rows_per_s,
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
