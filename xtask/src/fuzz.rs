//! `cargo xtask fuzz [--secs N] [TARGET...]`: every fuzz target of `fuzz/` (cargo-fuzz,
//! libFuzzer) for N seconds each, starting from its committed seeds in `fuzz/corpus/TARGET/`.
//!
//! Installs what it needs (the nightly toolchain, cargo-fuzz), builds every target once, then
//! runs each binary with limits that turn a hang or an unbounded allocation into a failure.
//! New corpus entries go to a temporary directory, so a run leaves the checkout unchanged; a
//! crashing input is kept in `fuzz/artifacts/TARGET/` and named in the error.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::workspace_root;

/// The cargo-fuzz release `.ci/run` and this task install (the same command as for cargo-deny).
const CARGO_FUZZ: &str = "cargo-fuzz";

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds each target runs (libFuzzer's `-max_total_time`).
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Build with this sanitizer (`none`, `address`, ...). Ferry's crates forbid unsafe code,
    /// so `none` (several times faster to build and run) is the default; `address` checks
    /// the dependencies' unsafe code too.
    #[arg(long, default_value = "none")]
    sanitizer: String,
    /// Largest input libFuzzer generates, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_len: usize,
    /// Targets to run (default: all; `cargo fuzz list` in `fuzz/` names them).
    targets: Vec<String>,
}

/// libFuzzer options shared by every run: an input that takes more than 10 s is a hang; a
/// process above 2 GiB, or (with a sanitizer) one allocation above 512 MiB, is a failure. The
/// fuzz crate also refuses any single allocation above 512 MiB without a sanitizer.
const LIMITS: &[&str] = &[
    "-timeout=10",
    "-rss_limit_mb=2048",
    "-malloc_limit_mb=512",
    "-print_final_stats=1",
];

pub fn run(opts: Options) -> anyhow::Result<()> {
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    ensure_tools()?;
    let target_dir = fuzz_target_dir();
    let all = list_targets(&fuzz_dir)?;
    let targets = if opts.targets.is_empty() {
        all.clone()
    } else {
        for t in &opts.targets {
            if !all.contains(t) {
                bail!("no fuzz target `{t}` (targets: {})", all.join(", "));
            }
        }
        opts.targets.clone()
    };

    let started = Instant::now();
    println!(
        "fuzz: building {} target(s), sanitizer {}",
        targets.len(),
        opts.sanitizer
    );
    let mut build = Command::new("cargo");
    build
        .args(["+nightly", "fuzz", "build", "--sanitizer", &opts.sanitizer])
        .args(targets_arg(&targets, &all))
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target_dir);
    let status = build.status().context("cannot run cargo fuzz build")?;
    if !status.success() {
        bail!("`cargo fuzz build` failed ({status})");
    }
    println!("fuzz: built in {:.0?}", started.elapsed());

    let bin_dir = target_dir.join(host_triple()?).join("release");
    let mut summary = Vec::new();
    for t in &targets {
        summary.push(run_target(&fuzz_dir, &bin_dir, t, &opts)?);
    }
    println!("fuzz: every target ran {} s without a failure:", opts.secs);
    for line in summary {
        println!("  {line}");
    }
    Ok(())
}

/// `cargo fuzz build` builds every target without a name, one with a name.
fn targets_arg(targets: &[String], all: &[String]) -> Vec<String> {
    if targets.len() == 1 && all.len() > 1 {
        targets.to_vec()
    } else {
        Vec::new()
    }
}

/// Outside the clone (CI caches it), and apart from the workspace's target directory: the
/// fuzz build's flags differ, and sharing would rebuild one or the other every time.
fn fuzz_target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_FUZZ_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/ferry-fuzz-target"),
        None => workspace_root().join("fuzz/target"),
    }
}

fn ensure_tools() -> anyhow::Result<()> {
    let nightly = Command::new("cargo")
        .args(["+nightly", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !nightly {
        println!("fuzz: installing the nightly toolchain (libFuzzer's instrumentation needs it)");
        let status = Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .status()
            .context("cannot run rustup")?;
        if !status.success() {
            bail!("`rustup toolchain install nightly` failed ({status})");
        }
    }
    let have_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_fuzz {
        println!("fuzz: installing {CARGO_FUZZ}");
        let install_target = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/cargo-install-target"))
            .unwrap_or_else(|| std::env::temp_dir().join("cargo-install-target"));
        let status = Command::new("cargo")
            .args(["install", "--locked", CARGO_FUZZ, "--target-dir"])
            .arg(&install_target)
            .status()
            .context("cannot run cargo install")?;
        if !status.success() {
            bail!("`cargo install {CARGO_FUZZ}` failed ({status})");
        }
    }
    Ok(())
}

fn list_targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir))
        .output()
        .context("cannot run cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "`cargo fuzz list` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    if names.is_empty() {
        bail!("`cargo fuzz list` names no target");
    }
    Ok(names)
}

fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("cannot run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host triple")
}

/// Runs one target; returns its summary line, or an error naming the input that failed.
fn run_target(
    fuzz_dir: &Path,
    bin_dir: &Path,
    target: &str,
    opts: &Options,
) -> anyhow::Result<String> {
    let seeds = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&seeds)
        .with_context(|| format!("cannot create {}", seeds.display()))?;
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("cannot create {}", artifacts.display()))?;
    // New entries go here (libFuzzer writes to its first corpus directory only).
    let work = tempfile::tempdir().context("cannot create a temporary corpus directory")?;
    let bin = bin_dir.join(target);
    println!("fuzz: {target} for {} s", opts.secs);
    let mut child = Command::new(&bin)
        .arg(work.path())
        .arg(&seeds)
        .arg(format!("-max_total_time={}", opts.secs))
        .arg(format!("-max_len={}", opts.max_len))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(LIMITS)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    // libFuzzer reports on stderr: kept whole, shown only when the target fails.
    let mut log = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            log.push(line.unwrap_or_default());
        }
    }
    let status = child.wait().context("fuzz target did not finish")?;
    let stat = |name: &str| {
        log.iter()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    if !status.success() {
        let tail = log.len().saturating_sub(60);
        eprintln!("{}", log[tail..].join("\n"));
        let input = log.iter().find_map(|l| {
            l.split_once("Test unit written to ")
                .map(|(_, p)| p.trim().to_owned())
        });
        match input {
            Some(path) => bail!(
                "fuzz target `{target}` failed ({status}) on {path}\n  reproduce: cargo +nightly fuzz run --sanitizer {} {target} {path}\n  minimize:  cargo +nightly fuzz tmin --sanitizer {} {target} {path}",
                opts.sanitizer,
                opts.sanitizer
            ),
            None => bail!(
                "fuzz target `{target}` failed ({status}) and wrote no input; its log is above"
            ),
        }
    }
    let corpus = log
        .iter()
        .rev()
        .find_map(|l| {
            l.split_once(" corp: ")
                .map(|(_, r)| r.split_whitespace().next().unwrap_or("?").to_owned())
        })
        .unwrap_or_else(|| "?".into());
    Ok(format!(
        "{target}: {} runs ({}/s), corpus {corpus}, peak RSS {} MB",
        stat("number_of_executed_units"),
        stat("average_exec_per_sec"),
        stat("peak_rss_mb"),
    ))
}
