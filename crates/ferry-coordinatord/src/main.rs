//! `ferry-coordinatord`: parses arguments, loads the config, starts tracing and runs the
//! coordinator library until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ferry_core::config::FerryConfig;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Ferry coordinator: workflow engine, gRPC and HTTP APIs"
)]
struct Args {
    /// YAML config file; `FERRY_*` variables override it.
    #[arg(long, short, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding `coordinator.listen` (port 0 picks a free port).
    #[arg(long)]
    listen: Option<String>,
    /// Database URL, overriding `coordinator.database_url`.
    #[arg(long)]
    database_url: Option<String>,
    /// Write the bound address to this file once listening (for scripts and tests).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// HTTP API listen address, overriding `coordinator.http_listen` (port 0 picks a free
    /// port; empty turns the HTTP API off).
    #[arg(long)]
    http_listen: Option<String>,
    /// Write the HTTP API's bound address to this file once listening.
    #[arg(long)]
    http_addr_file: Option<PathBuf>,
    /// `plain` or `json`.
    #[arg(long, default_value = "plain")]
    log_format: String,
}

/// The engine builds and drops large transient structures (a 100,000-step task is planned,
/// inserted and loaded at once); mimalloc hands that memory back where glibc kept it
/// resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let result = (|| -> anyhow::Result<()> {
        let mut config = FerryConfig::load(args.config.as_deref(), std::env::vars())?;
        if let Some(l) = &args.listen {
            config.coordinator.listen = l.clone();
        }
        if let Some(l) = &args.http_listen {
            config.coordinator.http_listen = l.clone();
        }
        if let Some(db) = &args.database_url {
            config.coordinator.database_url = db.clone();
        }
        config.validate()?;
        ferry_telemetry::init(args.log_format.parse()?)?;
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(&config.coordinator.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.coordinator.listen))?;
            let addr = listener.local_addr()?;
            if let Some(path) = &args.addr_file {
                std::fs::write(path, addr.to_string())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let http = ferry_coordinator::bind_http(&config).await?;
            if let (Some(path), Some(l)) = (&args.http_addr_file, &http) {
                std::fs::write(path, l.local_addr()?.to_string())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            ferry_coordinator::run(config, listener, http, ferry_coordinator_shutdown()).await?;
            Ok(())
        })
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-coordinatord: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn ferry_coordinator_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
