//! `backfills`: a schedule's runs over a past range of dates, requested by an operator.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "backfills")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub schedule_id: i64,
    /// The first date of the range (`YYYY-MM-DD`, in the schedule's time zone).
    pub start_date: String,
    /// The last date of the range (`YYYY-MM-DD`, included).
    pub end_date: String,
    /// Newest dates first.
    pub reverse: bool,
    /// At most this many of its runs at once.
    pub max_active: i32,
    /// The priority of the tasks it creates.
    pub priority: i32,
    /// Which dates of the range get a run: `missing`, `failed` or `all`
    /// (`ferry_core::schedule::Reprocess`).
    pub reprocess: String,
    /// `running`, `completed` or `cancelled`.
    pub status: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// When it stopped running (completed or cancelled).
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
