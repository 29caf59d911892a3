//! `transfer_chunks` (seed 000 Appendix B): per-chunk state of a transfer step.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "transfer_chunks")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub task_id: i64,
    pub step_name: String,
    pub chunk_id: String,
    pub source_path: Option<String>,
    pub dest_path: Option<String>,
    pub offset: Option<i64>,
    pub size: Option<i64>,
    pub checksum: Option<String>,
    pub status: String,
    pub started_at: Option<DateTimeUtc>,
    pub completed_at: Option<DateTimeUtc>,
    pub retry_count: i32,
    #[sea_orm(column_type = "Text", nullable)]
    pub error_message: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
