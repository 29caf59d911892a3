//! `cargo xtask`: the one entry point for Ferry's developer workflows.
//!
//! - `cargo xtask test [ARGS]`: build the daemons, then run every test (README's test command).
//! - `cargo xtask demo`: the example workflow across two agents on this machine.
//! - `cargo xtask bench engine`: the engine's throughput and hand-off latency.
//! - `cargo xtask bench transfer`: verified transfer goodput against plain rsync.

mod bench_engine;
mod bench_transfer;
mod demo;

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
    /// README's main job: run the example workflow on this machine and show its progress.
    Demo,
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Engine throughput (concurrent chains of no-op steps across two agents) and hand-off
    /// latency (one chain alone).
    Engine(bench_engine::Options),
    /// Ferry's verified transfer against plain `rsync -a` over the same sshd.
    Transfer(bench_transfer::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Test { args } => test(&args),
        Cmd::Demo => demo::run(),
        Cmd::Bench(Bench::Engine(opts)) => bench_engine::run(opts),
        Cmd::Bench(Bench::Transfer(opts)) => bench_transfer::run(opts),
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
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
];

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
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !is_root {
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

fn test(extra: &[String]) -> anyhow::Result<()> {
    ensure_system_packages()?;
    // The integration tests spawn the real daemons, so build them first.
    cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}
