//! `agent_cursors`: the last numbered event of each agent instance that is stored.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "agent_cursors")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub agent_name: String,
    /// The agent process's random instance id (stored as its bit pattern).
    pub instance: i64,
    pub seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
