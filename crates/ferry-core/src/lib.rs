//! Ferry's domain model. No IO beyond reading one config file, no async runtime.
//!
//! Everything the coordinator, the agents and the CLI must agree on lives here:
//! identifiers, the workflow DAG and its validation, the job/step/task state machines,
//! retry policy, step-kind parameters, and the configuration schema.

pub mod access;
pub mod capacity;
pub mod config;
pub mod dag;
pub mod graph;
pub mod ident;
pub mod jobpaths;
pub mod json;
pub mod kinds;
pub mod limits;
pub mod pipeline;
pub mod retry;
pub mod schedule;
pub mod sql_guard;
pub mod state;
pub mod template;
pub mod units;
pub mod workflow;

pub use state::{ErrorClass, JobState, Role, StepEvent, StepStatus, TaskEvent, TaskStatus};
