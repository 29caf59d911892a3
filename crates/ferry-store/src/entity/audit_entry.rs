//! `audit_log`: who did what through the client API, and when. Rows are only appended.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub ts: DateTimeUtc,
    /// The authenticated identity (a token's name), never a name the client typed.
    pub actor: String,
    /// What was done: `task.create`, `step.approve`, `token.revoke`, ...
    pub action: String,
    /// What it was done to: `task/12`, `task/12/step/load_hive`, `workflow/ctr`, ...
    pub target: String,
    /// Details (parameters changed, comment), as text.
    #[sea_orm(column_type = "Text")]
    pub detail: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
