//! Ferry's persistent state: sea-orm entities, migrations and the repository functions the
//! coordinator uses. SQLite by default; a `postgres://` URL works unchanged.
//!
//! Only the coordinator depends on this crate. The engine is the single writer of task and
//! step rows and commits each batch of changes in one transaction (see `commit`).

mod access;
mod batch;
pub mod entity;
mod logs;
pub mod migration;
mod schedules;

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::graph::GraphDef;
use ferry_core::workflow::WorkflowDef;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbErr, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

pub use access::AUDIT_PAGE;
pub use batch::{CommitReport, Quarantined, WriteBatch};
pub use entity::{
    agent_cursor, api_token, audit_entry, backfill, schedule, schedule_run, step_metric, task_log,
    task_log_archive, transfer_chunk, workflow, workflow_graph, workflow_step, workflow_task,
};
pub use schedules::{NewBackfill, NewSchedule, RunLink, RunWithStatus};
/// Re-exported so callers can build rows without depending on sea-orm themselves.
pub use sea_orm::ActiveValue::{NotSet, Set};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("cannot open database `{url}`: {source}")]
    Connect { url: String, source: DbErr },
    #[error("step `{step}`: {message}")]
    Refused { step: String, message: String },
    #[error("log archive {archive} is unreadable: {message}")]
    CorruptLogArchive { archive: i64, message: String },
    #[error("stored workflow `{name}` is unreadable: {message}")]
    CorruptWorkflow { name: String, message: String },
    /// A row with the same unique key is already stored (the text names it: "schedule
    /// `nightly`").
    #[error("{0} already exists")]
    Conflict(String),
    /// A task was to be a schedule's run for a logical date that already has one
    /// ([`RunLink::replace`] false): nothing was stored.
    #[error("schedule {schedule_id} already has a run for {logical_date}")]
    RunExists {
        schedule_id: i64,
        logical_date: DateTime<Utc>,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A task row to insert, with its steps.
pub struct NewTask {
    pub name: String,
    pub workflow_id: i64,
    pub workflow_name: String,
    pub params: String,
    pub status: String,
    /// Higher runs first when steps wait for capacity.
    pub priority: i32,
    /// The schedule run the task is, stored with it in its transaction (see [`RunLink`]).
    pub run: Option<RunLink>,
    pub steps: Vec<NewStep>,
}

pub struct NewStep {
    pub step_name: String,
    pub step_order: i32,
    pub kind: String,
    pub params: String,
    pub placement: String,
    pub depends_on: String,
    pub exec_constraint: String,
    pub max_retries: i32,
    pub backoff_ms: i64,
    pub timeout_secs: Option<i64>,
    /// The step's `resources` override (JSON), if any.
    pub resources: Option<String>,
}

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// Opens (creating if needed) the database at `url` and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            // WAL lets API reads proceed while the engine writes; NORMAL sync is durable
            // across process crashes (the coordinator's failure mode), at a fraction of FULL's cost.
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
        if url.starts_with("sqlite:") {
            opts.max_connections(4);
        }
        let db = Database::connect(opts)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact(url),
                source,
            })?;
        migration::Migrator::up(&db, None).await?;
        Ok(Store { db })
    }

    /// [`Self::connect`], waiting while the database cannot be reached (a server still
    /// starting or failing over, a mount not there yet): each failed try is reported to
    /// `on_retry` with the wait before the next, which doubles from 250 ms up to
    /// `max_delay`. Other errors (a failed migration) are returned at once.
    pub async fn connect_waiting(
        url: &str,
        max_delay: Duration,
        mut on_retry: impl FnMut(&StoreError, Duration),
    ) -> Result<Self> {
        let mut delay = Duration::from_millis(250).min(max_delay);
        loop {
            match Self::connect(url).await {
                Err(e @ StoreError::Connect { .. }) => {
                    on_retry(&e, delay);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max_delay);
                }
                other => return other,
            }
        }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    // ---- workflows -------------------------------------------------------------------

    /// Stores a (validated) definition, replacing any earlier one of the same name.
    pub async fn apply_workflow(&self, def: &WorkflowDef) -> Result<workflow::Model> {
        let now = Utc::now();
        let json = serde_json::to_string(def).map_err(|e| StoreError::CorruptWorkflow {
            name: def.name.clone(),
            message: e.to_string(),
        })?;
        let row = workflow::ActiveModel {
            name: Set(def.name.clone()),
            description: Set(def.description.clone()),
            definition: Set(json),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        workflow::Entity::insert(row)
            .on_conflict(
                OnConflict::column(workflow::Column::Name)
                    .update_columns([
                        workflow::Column::Description,
                        workflow::Column::Definition,
                        workflow::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec(&self.db)
            .await?;
        self.workflow_by_name(&def.name)
            .await?
            .ok_or_else(|| StoreError::Db(DbErr::RecordNotFound(def.name.clone())))
    }

    pub async fn list_workflows(&self) -> Result<Vec<workflow::Model>> {
        Ok(workflow::Entity::find()
            .order_by_asc(workflow::Column::Name)
            .all(&self.db)
            .await?)
    }

    pub async fn workflow_by_name(&self, name: &str) -> Result<Option<workflow::Model>> {
        Ok(workflow::Entity::find()
            .filter(workflow::Column::Name.eq(name))
            .one(&self.db)
            .await?)
    }

    /// Parses a stored definition.
    pub fn definition_of(row: &workflow::Model) -> Result<WorkflowDef> {
        serde_json::from_str(&row.definition).map_err(|e| StoreError::CorruptWorkflow {
            name: row.name.clone(),
            message: e.to_string(),
        })
    }

    // ---- graphs (seed 003's designer) -------------------------------------------------

    /// Stores a graph, replacing any earlier one of the same name (its creation time kept).
    pub async fn save_graph(&self, graph: &GraphDef) -> Result<workflow_graph::Model> {
        let now = Utc::now();
        let json = serde_json::to_string(graph).map_err(|e| StoreError::CorruptWorkflow {
            name: graph.name.clone(),
            message: e.to_string(),
        })?;
        let row = workflow_graph::ActiveModel {
            name: Set(graph.name.clone()),
            definition: Set(json),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        workflow_graph::Entity::insert(row)
            .on_conflict(
                OnConflict::column(workflow_graph::Column::Name)
                    .update_columns([
                        workflow_graph::Column::Definition,
                        workflow_graph::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec(&self.db)
            .await?;
        self.graph_by_name(&graph.name)
            .await?
            .ok_or_else(|| StoreError::Db(DbErr::RecordNotFound(graph.name.clone())))
    }

    pub async fn graph_by_name(&self, name: &str) -> Result<Option<workflow_graph::Model>> {
        Ok(workflow_graph::Entity::find()
            .filter(workflow_graph::Column::Name.eq(name))
            .one(&self.db)
            .await?)
    }

    pub async fn list_graphs(&self) -> Result<Vec<workflow_graph::Model>> {
        Ok(workflow_graph::Entity::find()
            .order_by_asc(workflow_graph::Column::Name)
            .all(&self.db)
            .await?)
    }

    /// Removes a graph; true when there was one.
    pub async fn delete_graph(&self, name: &str) -> Result<bool> {
        let r = workflow_graph::Entity::delete_many()
            .filter(workflow_graph::Column::Name.eq(name))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    /// Parses a stored graph.
    pub fn graph_of(row: &workflow_graph::Model) -> Result<GraphDef> {
        serde_json::from_str(&row.definition).map_err(|e| StoreError::CorruptWorkflow {
            name: row.name.clone(),
            message: e.to_string(),
        })
    }

    // ---- tasks and steps -------------------------------------------------------------

    /// Inserts a task and its steps in one transaction, started now. `render` turns a
    /// step's parameters into what it runs with, given the new task's id (placeholders such as
    /// `${task_id}`); if it refuses a step, nothing is stored and the error names the step.
    /// With `task.run`, the schedule's run row is written in the same transaction (see
    /// [`RunLink`]); a date that already has a run fails with [`StoreError::RunExists`] and
    /// nothing is stored.
    pub async fn insert_task(
        &self,
        task: NewTask,
        render: impl Fn(i64, &str) -> std::result::Result<String, String>,
    ) -> Result<(workflow_task::Model, Vec<workflow_step::Model>)> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let total = task.steps.len() as i32;
        let row = workflow_task::ActiveModel {
            name: Set(task.name),
            workflow_id: Set(task.workflow_id),
            workflow_name: Set(task.workflow_name),
            status: Set(task.status),
            current_step: Set(0),
            total_steps: Set(total),
            params: Set(task.params),
            priority: Set(task.priority),
            created_at: Set(now),
            updated_at: Set(now),
            started_at: Set(Some(now)),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        // Before the steps: a date that already has its run fails fast, whatever the task's
        // size. Dropping `txn` on an error rolls the task back.
        if let Some(link) = &task.run {
            schedules::link_run(&txn, link, row.id, now).await?;
        }
        // Built and inserted a few hundred rows at a time (a 100,000-step task is never held
        // twice), well under every backend's bound-parameter limit.
        let mut pending = task.steps.into_iter().peekable();
        while pending.peek().is_some() {
            let mut part = Vec::with_capacity(500);
            for s in pending.by_ref().take(500) {
                // Dropping `txn` on an error rolls the task back.
                let params = render(row.id, &s.params).map_err(|message| StoreError::Refused {
                    step: s.step_name.clone(),
                    message,
                })?;
                part.push(workflow_step::ActiveModel {
                    task_id: Set(row.id),
                    step_name: Set(s.step_name),
                    step_order: Set(s.step_order),
                    kind: Set(s.kind),
                    params: Set(params),
                    placement: Set(s.placement),
                    depends_on: Set(s.depends_on),
                    exec_constraint: Set(s.exec_constraint),
                    status: Set(ferry_core::StepStatus::Pending.as_str().to_owned()),
                    attempt: Set(0),
                    retry_count: Set(0),
                    max_retries: Set(s.max_retries),
                    backoff_ms: Set(s.backoff_ms),
                    timeout_secs: Set(s.timeout_secs),
                    resources: Set(s.resources),
                    updated_at: Set(now),
                    ..Default::default()
                });
            }
            workflow_step::Entity::insert_many(part)
                .exec_without_returning(&txn)
                .await?;
        }
        let steps = steps_of(&txn, row.id).await?;
        txn.commit().await?;
        Ok((row, steps))
    }

    pub async fn task(&self, id: i64) -> Result<Option<workflow_task::Model>> {
        Ok(workflow_task::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// Newest first.
    pub async fn list_tasks(
        &self,
        status: Option<&str>,
        limit: u64,
    ) -> Result<Vec<workflow_task::Model>> {
        self.find_tasks(&TaskFilter {
            status: status.map(str::to_owned),
            limit,
            ..TaskFilter::default()
        })
        .await
    }

    /// Tasks matching `filter`, newest first.
    pub async fn find_tasks(&self, filter: &TaskFilter) -> Result<Vec<workflow_task::Model>> {
        let mut q = workflow_task::Entity::find().order_by_desc(workflow_task::Column::Id);
        if let Some(s) = &filter.status {
            q = q.filter(workflow_task::Column::Status.eq(s.as_str()));
        }
        if let Some(w) = &filter.workflow {
            q = q.filter(workflow_task::Column::WorkflowName.eq(w.as_str()));
        }
        if let Some(n) = &filter.name_contains {
            q = q.filter(workflow_task::Column::Name.contains(n.as_str()));
        }
        if let Some(t) = filter.created_after {
            q = q.filter(workflow_task::Column::CreatedAt.gte(t));
        }
        if let Some(t) = filter.created_before {
            q = q.filter(workflow_task::Column::CreatedAt.lt(t));
        }
        if let Some(id) = filter.before_id {
            q = q.filter(workflow_task::Column::Id.lt(id));
        }
        Ok(q.limit(filter.limit).all(&self.db).await?)
    }

    /// Tasks the engine must keep driving after a restart.
    pub async fn unfinished_tasks(&self) -> Result<Vec<workflow_task::Model>> {
        use ferry_core::TaskStatus::*;
        Ok(workflow_task::Entity::find()
            .filter(workflow_task::Column::Status.is_in([
                Pending.as_str(),
                Running.as_str(),
                Paused.as_str(),
            ]))
            .order_by_asc(workflow_task::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// A task's steps in order.
    pub async fn steps(&self, task_id: i64) -> Result<Vec<workflow_step::Model>> {
        steps_of(&self.db, task_id).await
    }

    /// Makes `batch` storable (see [`WriteBatch::sanitize`]) and writes it in one
    /// transaction. When the database refuses it while still answering, the batch is split
    /// in halves until the refused rows stand alone; those are quarantined (returned in the
    /// report) and every other row is stored. An error means the database did not answer:
    /// nothing may be assumed stored, and writing the same batch again is safe (updates and
    /// upserts are idempotent, a log id is stored once).
    pub async fn commit(&self, batch: &mut WriteBatch) -> Result<CommitReport> {
        let mut report = CommitReport::default();
        batch.sanitize(&mut report);
        if batch.is_empty() {
            return Ok(report);
        }
        if self.write(batch).await.is_ok() {
            return Ok(report);
        }
        self.ping().await?;
        let (a, b) = batch.split_at(batch.len() / 2);
        let mut stack = vec![b, a];
        while let Some(part) = stack.pop() {
            let error = match self.write(&part).await {
                Ok(()) => continue,
                Err(e) => e,
            };
            // An outage looks like a refusal: ask the database before blaming a row.
            self.ping().await?;
            if part.len() > 1 {
                let (a, b) = part.split_at(part.len() / 2);
                stack.push(b);
                stack.push(a);
                continue;
            }
            // One row alone: once more, in case the refusal was the server's, not the row's.
            if self.write(&part).await.is_ok() {
                continue;
            }
            report
                .quarantined
                .push(part.describe_single(error.to_string()));
        }
        Ok(report)
    }

    async fn write(&self, batch: &WriteBatch) -> Result<()> {
        let txn = self.db.begin().await?;
        for t in &batch.tasks {
            t.clone()
                .into_active_model()
                .reset_all()
                .update(&txn)
                .await?;
        }
        for s in &batch.steps {
            s.clone()
                .into_active_model()
                .reset_all()
                .update(&txn)
                .await?;
        }
        // Stay well under every backend's bound-parameter limit.
        for chunk in batch.logs.chunks(500) {
            let rows = chunk
                .iter()
                .cloned()
                .map(IntoActiveModel::into_active_model);
            task_log::Entity::insert_many(rows)
                .on_conflict_do_nothing()
                .exec_without_returning(&txn)
                .await?;
        }
        for chunk in batch.metrics.chunks(500) {
            let rows = chunk.iter().cloned().map(|m| {
                let mut row = m.into_active_model();
                row.id = NotSet;
                row
            });
            step_metric::Entity::insert_many(rows)
                .exec_without_returning(&txn)
                .await?;
        }
        // Chunk rows are keyed by (task, step, chunk id): a later report replaces an earlier.
        for rows in batch.chunks.chunks(200) {
            let rows = rows.iter().cloned().map(|c| {
                let mut row = c.into_active_model();
                row.id = NotSet;
                row
            });
            transfer_chunk::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::columns([
                        transfer_chunk::Column::TaskId,
                        transfer_chunk::Column::StepName,
                        transfer_chunk::Column::ChunkId,
                    ])
                    .update_columns([
                        transfer_chunk::Column::SourcePath,
                        transfer_chunk::Column::DestPath,
                        transfer_chunk::Column::Offset,
                        transfer_chunk::Column::Size,
                        transfer_chunk::Column::Checksum,
                        transfer_chunk::Column::Status,
                        transfer_chunk::Column::StartedAt,
                        transfer_chunk::Column::CompletedAt,
                        transfer_chunk::Column::RetryCount,
                        transfer_chunk::Column::ErrorMessage,
                    ])
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }
        for c in &batch.cursors {
            agent_cursor::Entity::insert(c.clone().into_active_model())
                .on_conflict(
                    OnConflict::column(agent_cursor::Column::AgentName)
                        .update_columns([agent_cursor::Column::Instance, agent_cursor::Column::Seq])
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// How far each agent's numbered events are stored.
    pub async fn agent_cursors(&self) -> Result<Vec<agent_cursor::Model>> {
        Ok(agent_cursor::Entity::find().all(&self.db).await?)
    }

    // ---- logs and metrics -----------------------------------------------------------

    /// The largest log id in use, so the engine can continue numbering after a restart.
    pub async fn max_log_id(&self) -> Result<i64> {
        let last = task_log::Entity::find()
            .order_by_desc(task_log::Column::Id)
            .one(&self.db)
            .await?;
        Ok(last.map_or(0, |l| l.id))
    }

    pub async fn metrics(&self, task_id: i64) -> Result<Vec<step_metric::Model>> {
        Ok(step_metric::Entity::find()
            .filter(step_metric::Column::TaskId.eq(task_id))
            .order_by_asc(step_metric::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Chunk rows of a task (of one step, when given), in insertion order.
    pub async fn chunks(
        &self,
        task_id: i64,
        step_name: Option<&str>,
    ) -> Result<Vec<transfer_chunk::Model>> {
        let mut q =
            transfer_chunk::Entity::find().filter(transfer_chunk::Column::TaskId.eq(task_id));
        if let Some(s) = step_name {
            q = q.filter(transfer_chunk::Column::StepName.eq(s));
        }
        Ok(q.order_by_asc(transfer_chunk::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Checks the database answers (a refused write and an outage look alike).
    pub async fn ping(&self) -> Result<()> {
        self.db.execute_unprepared("SELECT 1").await?;
        Ok(())
    }
}

/// A task's steps in order, read a few thousand at a time: the driver's rows for a
/// 100,000-step task are never all in memory beside the models made from them.
async fn steps_of(db: &impl ConnectionTrait, task_id: i64) -> Result<Vec<workflow_step::Model>> {
    const PAGE: u64 = 2000;
    let mut out = Vec::new();
    let mut after = -1;
    loop {
        let page = workflow_step::Entity::find()
            .filter(workflow_step::Column::TaskId.eq(task_id))
            .filter(workflow_step::Column::StepOrder.gt(after))
            .order_by_asc(workflow_step::Column::StepOrder)
            .limit(PAGE)
            .all(db)
            .await?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        after = last.step_order;
        let full = page.len() as u64 == PAGE;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// A metric row to insert (the database assigns its id).
pub fn new_metric(
    task_id: i64,
    step_name: &str,
    name: &str,
    value: f64,
    idx: i64,
    ts: DateTime<Utc>,
) -> step_metric::Model {
    step_metric::Model {
        id: 0,
        task_id,
        step_name: step_name.to_owned(),
        name: name.to_owned(),
        value,
        idx,
        ts,
    }
}

/// Hides a password in a database URL before it goes into an error message.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://ferry:secret@db:5432/ferry"),
            "postgres://ferry:***@db:5432/ferry"
        );
        assert_eq!(redact("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
    }
}

/// Which tasks [`Store::find_tasks`] returns.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<String>,
    pub workflow: Option<String>,
    /// Tasks whose name contains this text.
    pub name_contains: Option<String>,
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Tasks with a smaller id: the next page after the task with this id.
    pub before_id: Option<i64>,
    pub limit: u64,
}
