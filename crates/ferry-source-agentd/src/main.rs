//! `ferry-source-agentd`: the agent of the data-source host (Server 21). Parses arguments, loads the
//! config, starts tracing and runs the agent library until SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ferry_agent::daemon::AgentArgs;
use ferry_core::config::FerryConfig;

fn main() -> ExitCode {
    let args = AgentArgs::parse();
    let result = (|| -> anyhow::Result<()> {
        let config = FerryConfig::load(args.config.as_deref(), std::env::vars())?;
        ferry_telemetry::init(args.log_format.parse()?)?;
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        runtime.block_on(ferry_agent_sql::run_source_agent(config, args))?;
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-source-agentd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
