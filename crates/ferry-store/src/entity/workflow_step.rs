//! `workflow_steps` (seed 000 Appendix B) plus what the DAG engine needs: the step's kind,
//! parameters, placement, dependencies, constraint, and the job that runs it on an agent.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workflow_steps")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub task_id: i64,
    pub step_name: String,
    pub step_order: i32,
    pub kind: String,
    /// Rendered parameters (JSON).
    #[sea_orm(column_type = "Text")]
    pub params: String,
    /// Placement as JSON (`{"role": ...}` or `{"agent": ...}`).
    pub placement: String,
    /// Names of the steps this one waits for (JSON array).
    #[sea_orm(column_type = "Text")]
    pub depends_on: String,
    /// `NONE` or `INPUTS_READY`.
    pub exec_constraint: String,
    pub status: String,
    pub agent_name: Option<String>,
    pub job_id: Option<String>,
    /// Dispatch attempts so far; identifies the current job on its agent.
    pub attempt: i32,
    pub retry_count: i32,
    pub max_retries: i32,
    pub backoff_ms: i64,
    /// The engine cancels and retries an attempt running longer (seconds).
    pub timeout_secs: Option<i64>,
    pub next_attempt_at: Option<DateTimeUtc>,
    pub started_at: Option<DateTimeUtc>,
    pub completed_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error_message: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub checkpoint_data: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub progress: Option<String>,
    pub updated_at: DateTimeUtc,
    /// The step's `resources` override (JSON), if it has one.
    #[sea_orm(column_type = "Text", nullable)]
    pub resources: Option<String>,
    /// The GPU ids its current attempt was given (JSON array), while it holds them.
    #[sea_orm(column_type = "Text", nullable)]
    pub gpu_ids: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
