//! sea-orm entities, one module per table. JSON columns are stored as TEXT so the same
//! schema works on SQLite and PostgreSQL.

pub mod agent_cursor;
pub mod api_token;
pub mod audit_entry;
pub mod backfill;
pub mod schedule;
pub mod schedule_run;
pub mod step_metric;
pub mod task_log;
pub mod task_log_archive;
pub mod transfer_chunk;
pub mod workflow;
pub mod workflow_graph;
pub mod workflow_step;
pub mod workflow_task;
