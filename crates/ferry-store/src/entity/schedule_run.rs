//! `schedule_runs`: one row per schedule and logical date that got a task (scheduled or
//! backfilled). Unique on (schedule_id, logical_date): a run is never created twice, whatever
//! restarts, crashes or racing coordinators do.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "schedule_runs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub schedule_id: i64,
    /// The date the run stands for (its data interval's start), not when it ran.
    pub logical_date: DateTimeUtc,
    /// The task now standing for the date (the newest, when a backfill re-ran it).
    pub task_id: Option<i64>,
    /// The backfill that created (or last re-ran) the run, if any.
    pub backfill_id: Option<i64>,
    /// How many tasks were created for the date.
    pub attempts: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
