//! `task_log_archives`: a task's older log lines, rotated out of `task_logs` (gzip of JSON
//! lines), with the id range they cover.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "task_log_archives")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub task_id: i64,
    pub first_id: i64,
    pub last_id: i64,
    pub lines: i64,
    /// Uncompressed size of the lines' messages.
    pub bytes: i64,
    #[sea_orm(column_type = "Blob")]
    pub data: Vec<u8>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
