//! `ferry-infer-agentd`: the agent of the inference host. Parses arguments, loads the
//! config, starts tracing and runs the agent library until SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ferry_agent::daemon::AgentArgs;
use ferry_agent_ctr::run_infer_agent;
use ferry_core::config::FerryConfig;

/// Batches allocate and free tensors of megabytes each; see the workspace manifest.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = AgentArgs::parse();
    let result = (|| -> anyhow::Result<()> {
        let config = FerryConfig::load(args.config.as_deref(), std::env::vars())?;
        ferry_telemetry::init(args.log_format.parse()?)?;
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        runtime.block_on(run_infer_agent(config, args))?;
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-infer-agentd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
