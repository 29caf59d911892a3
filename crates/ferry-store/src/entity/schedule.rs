//! `schedules`: workflows (or CTR requests) started on a cron cadence, one row per name.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "schedules")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub name: String,
    /// What a run starts: `workflow` (a stored workflow) or `ctr` (a CTR task request).
    pub target: String,
    /// The stored workflow's name, for target `workflow`.
    pub workflow: Option<String>,
    /// A CTR task request JSON template, for target `ctr`.
    #[sea_orm(column_type = "Text", nullable)]
    pub request: Option<String>,
    /// Task parameters (JSON object of strings); they may hold date placeholders.
    #[sea_orm(column_type = "Text")]
    pub params: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone the cron expression is read in (`UTC`, `Europe/Paris`).
    pub timezone: String,
    /// What happens to runs missed while the coordinator was down: `none`, `latest` or `all`
    /// (`ferry_core::schedule::CatchUp`).
    pub catchup: String,
    /// At most this many due runs are created at once under catch-up `all`.
    pub max_catchup: i32,
    /// What a run that comes due while the previous one still runs does: `allow`, `skip`,
    /// `queue` or `replace` (`ferry_core::schedule::Concurrency`).
    pub concurrency: String,
    /// The priority of the tasks it creates.
    pub priority: i32,
    /// A paused schedule creates no runs (backfills still do).
    pub paused: bool,
    /// The newest logical date considered so far; it only ever moves forward.
    pub cursor: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
