//! `workflow_tasks` (seed 000 Appendix B): one execution of a workflow.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "workflow_tasks")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub name: String,
    pub workflow_id: i64,
    pub workflow_name: String,
    // Seed 000 §8.2's CTR request fields; empty for other workflows.
    pub experiment_id: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub sample_sql: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub infer_sql: Option<String>,
    pub hdfs_path: Option<String>,
    pub hive_table: Option<String>,
    pub status: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub status_reason: Option<String>,
    pub current_step: i32,
    pub total_steps: i32,
    pub training_server: Option<String>,
    pub inference_server: Option<String>,
    /// Task parameters (JSON object of strings).
    #[sea_orm(column_type = "Text")]
    pub params: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub completed_at: Option<DateTimeUtc>,
    /// Higher runs first when steps wait for capacity (default 0).
    pub priority: i32,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
