//! `cargo xtask`: the one entry point for Ferry's developer workflows.
//!
//! - `cargo xtask test [ARGS]`: build the daemons, then run every test (README's test command).
//! - `cargo xtask demo`: the example workflow across two agents on this machine.
//! - `cargo xtask gen-data --rows N --out DIR`: the sample campaign warehouse.
//! - `cargo xtask bench engine`: the engine's throughput and hand-off latency.
//! - `cargo xtask bench transfer`: verified transfer goodput against plain rsync.
//! - `cargo xtask bench sql`: embedded export rows/s on generated data.
//! - `cargo xtask bench http`: the coordinator's HTTP face beside its gRPC API.
//! - `cargo xtask api-check`: schemathesis against the coordinator's HTTP API (OpenAPI).

mod api_check;
mod bench_ctr;
mod bench_engine;
mod bench_http;
mod bench_transfer;
mod chaos;
mod demo;
mod e2e;
mod e2e_graph;
mod fuzz;
mod modules;
mod soak;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the daemons and run the whole test suite; extra arguments go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// README's main job: run the example workflow on this machine and show its progress;
    /// then keep the coordinator and its dashboard up until Ctrl-C.
    Demo(demo::Options),
    /// The built-in CTR pipeline across three hosts (network namespaces as root, else
    /// loopback addresses), each with its own sshd and agent; `--faults` kills each daemon once.
    E2e(e2e::Options),
    /// Fault injection on the three-host pipeline: seeded trials, each compared with a clean
    /// run (`--soak MINUTES`: the load mode).
    Chaos(chaos::Options),
    /// Write the sample campaign tables (data-spec.md) into a warehouse directory.
    GenData {
        /// Training rows (`campaign_sample`); inference rows are a quarter of it.
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        /// Inference rows (`campaign_infer`), if not a quarter of `--rows`.
        #[arg(long)]
        infer_rows: Option<usize>,
        #[arg(long, default_value_t = 2024)]
        seed: u64,
        /// Warehouse directory (tables go to OUT/default.db/).
        #[arg(long)]
        out: PathBuf,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
    /// Every fuzz target of `fuzz/` (cargo-fuzz, libFuzzer) for `--secs` seconds each, from
    /// its seeds in `fuzz/corpus/`; fails naming the input that crashed, hung or over-allocated.
    Fuzz(fuzz::Options),
    /// schemathesis (from PyPI) against a real coordinator's HTTP API, as its OpenAPI
    /// document describes it, with tokens on; fails on any failure it reports.
    ApiCheck(api_check::Options),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Engine throughput (concurrent chains of no-op steps across two agents) and hand-off
    /// latency (one chain alone).
    Engine(bench_engine::Options),
    /// Ferry's verified transfer against plain `rsync -a` over the same sshd.
    Transfer(bench_transfer::Options),
    /// Export rows/s of the embedded SQL engine (release build), and of spark-sql beside it
    /// when FERRY_TEST_SPARK_SQL names a launcher.
    Sql {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
    },
    /// CTR training samples/s and inference rows/s (release build, CPU) beside FuxiCTR's.
    Ctr(bench_ctr::Options),
    /// Orchestration overhead: the e2e pipeline run by Ferry against the same work done with
    /// the raw tools (export, rsync, train, infer, load) in the same run.
    Pipeline(e2e::BenchOptions),
    /// The coordinator's HTTP/JSON face beside its gRPC API (release daemons, one run):
    /// request latency and rate, and log followers over WebSocket against `FollowLogs`.
    Http(bench_http::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Test { args } => test(&args),
        Cmd::Demo(opts) => demo::run(opts),
        Cmd::E2e(opts) => e2e::run(opts),
        Cmd::Chaos(opts) => chaos::run(opts),
        Cmd::GenData {
            rows,
            infer_rows,
            seed,
            out,
        } => gen_data(rows, infer_rows, seed, &out),
        Cmd::Fuzz(opts) => fuzz::run(opts),
        Cmd::ApiCheck(opts) => api_check::run(opts),
        Cmd::Bench(Bench::Engine(opts)) => bench_engine::run(opts),
        Cmd::Bench(Bench::Ctr(opts)) => bench_ctr::run(opts),
        Cmd::Bench(Bench::Pipeline(opts)) => e2e::bench(opts),
        Cmd::Bench(Bench::Transfer(opts)) => bench_transfer::run(opts),
        Cmd::Bench(Bench::Http(opts)) => bench_http::run(opts),
        Cmd::Bench(Bench::Sql { rows }) => {
            let work = std::env::temp_dir().join(format!("ferry-bench-sql-{}", std::process::id()));
            let rows = rows.to_string();
            let dir = work.display().to_string();
            let mut args = vec![
                "run",
                "--release",
                "-q",
                "-p",
                "ferry-sql",
                "--example",
                "export_bench",
                "--",
                &rows,
                &dir,
            ];
            // The Spark tier's launcher, when set, runs the same export on spark-sql beside it.
            let spark = std::env::var("FERRY_TEST_SPARK_SQL").ok();
            if let Some(launcher) = &spark {
                args.push(launcher);
            }
            let result = cargo(&args);
            let _ = std::fs::remove_dir_all(&work);
            result
        }
    }
}

/// The checkout `cargo xtask` was run in. `cargo run` sets CARGO_MANIFEST_DIR at run time; the
/// compile-time value is only a fallback, because checkouts sharing one target directory (a CI
/// clone beside a working copy) can run an xtask binary built from the other checkout.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("..")
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Debian packages the tests and the demo need, with a file each one provides.
const SYSTEM_PACKAGES: &[(&str, &[&str])] = &[
    ("openssh-server", &["/usr/sbin/sshd"]),
    ("openssh-client", &["/usr/bin/ssh", "/usr/bin/ssh-keygen"]),
    ("rsync", &["/usr/bin/rsync"]),
    // The demo talks to the HTTP API as a user would.
    ("curl", &["/usr/bin/curl"]),
    // DOCKER jobs: Podman's Docker-compatible service and a locally built busybox image.
    ("podman", &["/usr/bin/podman"]),
    ("runc", &["/usr/bin/runc"]),
    ("crun", &["/usr/bin/crun"]),
    ("fuse-overlayfs", &["/usr/bin/fuse-overlayfs"]),
    ("slirp4netns", &["/usr/bin/slirp4netns"]),
    ("uidmap", &["/usr/bin/newuidmap"]),
    ("busybox-static", &["/bin/busybox"]),
];

/// Whether this process runs as root (it may then install packages and create namespaces).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs missing packages when running as root; otherwise says exactly what to install.
pub fn ensure_system_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = SYSTEM_PACKAGES
        .iter()
        .filter(|(_, files)| !files.iter().all(|f| std::path::Path::new(f).exists()))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing system packages: {}. Install them with: sudo apt-get install -y {}",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let update = Command::new("apt-get").args(["update", "-qq"]).status()?;
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !update.success() || !install.success() {
        bail!("apt-get could not install {}", missing.join(" "));
    }
    Ok(())
}

fn gen_data(
    rows: usize,
    infer_rows: Option<usize>,
    seed: u64,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let mut spec = ferry_sampledata::SampleSpec::new(rows, seed);
    if let Some(n) = infer_rows {
        spec.infer_rows = n;
    }
    let started = std::time::Instant::now();
    for t in ferry_sampledata::generate(out, &spec)? {
        println!(
            "{}: {} rows in {} parts at {} (clicks {}, conversions {})",
            t.table,
            t.rows,
            t.parts,
            t.dir.display(),
            t.clicks,
            t.conversions
        );
    }
    println!(
        "done in {:.1}s (seed {seed})",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Heavy dependencies stay with the daemons that need them (docs/ARCHITECTURE.md).
const FORBIDDEN_LINKS: &[(&str, &str)] = &[
    ("ferry-train-agentd", "datafusion"),
    ("ferry-infer-agentd", "datafusion"),
    ("ferry-coordinatord", "datafusion"),
    ("ferry-source-agentd", "burn"),
    ("ferry-coordinatord", "burn"),
    ("ferry-cli", "burn"),
    ("ferry-cli", "datafusion"),
];

fn check_architecture() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (daemon, forbidden) in FORBIDDEN_LINKS {
        let out = Command::new(&cargo)
            .args(["tree", "-p", daemon, "-e", "normal", "--prefix", "none"])
            .current_dir(workspace_root())
            .output()
            .with_context(|| format!("cargo tree -p {daemon}"))?;
        if !out.status.success() {
            bail!(
                "cargo tree -p {daemon} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        if tree
            .lines()
            .any(|l| l.starts_with(&format!("{forbidden} v")))
        {
            bail!("architecture invariant broken: {daemon} links {forbidden}");
        }
    }
    println!("architecture: daemons link only what their role needs");
    let cycles = modules::cycles(&workspace_root())?;
    if !cycles.is_empty() {
        bail!(
            "architecture invariant broken: modules that import each other:\n  {}",
            cycles.join("\n  ")
        );
    }
    println!("architecture: no module imports one that imports it back");
    Ok(())
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    ensure_system_packages()?;
    check_architecture()?;
    // The integration tests spawn the real daemons, so build them first.
    cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}
