//! `task_logs`: the task's log stream (engine events and job output), in order.
//! Ids are assigned by the engine (the only writer) so followers can resume after an id.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "task_logs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i64,
    pub task_id: i64,
    pub step_name: String,
    pub ts: DateTimeUtc,
    pub level: String,
    pub source: String,
    #[sea_orm(column_type = "Text")]
    pub message: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
