//! Ferry's agent: the runtime that connects to the coordinator and runs jobs, the
//! `Executor` contract, and the executors of the generic step kinds.

pub mod cleanup;
pub mod daemon;
pub mod docker;
pub mod exec;
pub mod executor;
pub mod jobio;
mod outbox;
mod output;
pub mod paths;
pub mod policy;
pub mod runtime;
pub mod services;
pub mod transfer;

pub use executor::{Executor, JobContext, JobError, JobFuture};
pub use runtime::{AgentError, AgentSettings, run};
