//! Tokens and the audit log: who may call the client API, and what each caller did.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::entity::{api_token, audit_entry};
use crate::{Result, Set, Store};

/// What the audit log shows at most per read.
pub const AUDIT_PAGE: u64 = 1000;

impl Store {
    /// Stores a token's hash under `name` with `roles` (comma-separated, already checked).
    pub async fn insert_token(
        &self,
        name: &str,
        roles: &str,
        token_hash: &str,
        created_by: &str,
    ) -> Result<api_token::Model> {
        let row = api_token::ActiveModel {
            name: Set(ferry_core::limits::fitted(name, 100)),
            roles: Set(roles.to_owned()),
            token_hash: Set(token_hash.to_owned()),
            created_by: Set(ferry_core::limits::fitted(created_by, 100)),
            created_at: Set(Utc::now()),
            revoked_at: Set(None),
            ..Default::default()
        };
        Ok(row.insert(&self.db).await?)
    }

    /// Every token row, revoked ones included, oldest first.
    pub async fn tokens(&self) -> Result<Vec<api_token::Model>> {
        Ok(api_token::Entity::find()
            .order_by_asc(api_token::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Revokes the token with `id`; the row stays (the audit log names it). Returns the row,
    /// or `None` when there is no such token.
    pub async fn revoke_token(&self, id: i64) -> Result<Option<api_token::Model>> {
        let Some(row) = api_token::Entity::find_by_id(id).one(&self.db).await? else {
            return Ok(None);
        };
        if row.revoked_at.is_some() {
            return Ok(Some(row));
        }
        let mut active: api_token::ActiveModel = row.into();
        active.revoked_at = Set(Some(Utc::now()));
        Ok(Some(active.update(&self.db).await?))
    }

    /// Appends one audit entry (text cut to its columns).
    pub async fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) -> Result<()> {
        use ferry_core::limits::fitted;
        audit_entry::ActiveModel {
            ts: Set(Utc::now()),
            actor: Set(fitted(actor, 100)),
            action: Set(fitted(action, 50)),
            target: Set(fitted(target, 255)),
            detail: Set(fitted(detail, 100_000)),
            ..Default::default()
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// Audit entries, newest first: at most `limit` (capped at [`AUDIT_PAGE`]), older than
    /// `before_id` when it is non-zero, only `actor`'s when it is non-empty.
    pub async fn audit_entries(
        &self,
        limit: u64,
        before_id: i64,
        actor: &str,
    ) -> Result<Vec<audit_entry::Model>> {
        let mut q = audit_entry::Entity::find().order_by_desc(audit_entry::Column::Id);
        if before_id > 0 {
            q = q.filter(audit_entry::Column::Id.lt(before_id));
        }
        if !actor.is_empty() {
            q = q.filter(audit_entry::Column::Actor.eq(actor));
        }
        let limit = if limit == 0 {
            100
        } else {
            limit.min(AUDIT_PAGE)
        };
        Ok(q.limit(limit).all(&self.db).await?)
    }
}
