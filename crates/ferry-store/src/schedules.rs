//! Schedules, their runs and backfills.
//!
//! A run (`schedule_runs`) is one logical date of a schedule that got a task. The pair
//! (schedule, logical date) is unique in the database, and a run row is only ever created in
//! the transaction that creates its task ([`crate::NewTask::run`]): whatever restarts, crashes
//! or racing coordinators do, a date never gets two scheduled runs, and a run never points at
//! a task that was not stored. A backfill re-running a date moves its run to the new task
//! ([`RunLink::replace`]) and counts the attempt.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait, TryInsertResult,
};

use crate::entity::{backfill, schedule, schedule_run, workflow_task};
use crate::{Result, Set, Store, StoreError};

/// A schedule to insert (already validated by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSchedule {
    /// Unique among schedules.
    pub name: String,
    /// `workflow` or `ctr`.
    pub target: String,
    /// The stored workflow's name, for target `workflow`.
    pub workflow: Option<String>,
    /// A CTR task request JSON template, for target `ctr`.
    pub request: Option<String>,
    /// Task parameters (JSON object of strings), date placeholders unrendered.
    pub params: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone the cron expression is read in.
    pub timezone: String,
    /// The catch-up policy's name (`ferry_core::schedule::CatchUp`).
    pub catchup: String,
    /// At most this many due runs at once under catch-up `all`.
    pub max_catchup: i32,
    /// The concurrency policy's name (`ferry_core::schedule::Concurrency`).
    pub concurrency: String,
    /// The priority of the tasks it creates.
    pub priority: i32,
    /// Created paused: no runs until resumed.
    pub paused: bool,
}

/// A backfill to insert; it starts `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBackfill {
    /// The schedule whose runs it creates.
    pub schedule_id: i64,
    /// The range's first date (`YYYY-MM-DD`).
    pub start_date: String,
    /// The range's last date (`YYYY-MM-DD`, included).
    pub end_date: String,
    /// Newest dates first.
    pub reverse: bool,
    /// At most this many of its runs at once.
    pub max_active: i32,
    /// The priority of the tasks it creates.
    pub priority: i32,
    /// The reprocess policy's name (`ferry_core::schedule::Reprocess`).
    pub reprocess: String,
}

/// The run of a schedule a new task is: stored with the task, in its transaction (see
/// [`crate::NewTask::run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLink {
    /// The schedule the run belongs to.
    pub schedule_id: i64,
    /// The date the run stands for.
    pub logical_date: DateTime<Utc>,
    /// The backfill creating the run, if any.
    pub backfill_id: Option<i64>,
    /// false: the date must have no run row yet (a scheduled run); a row already there fails
    /// the task's creation with [`StoreError::RunExists`] and nothing is stored. true: a row
    /// for the date is pointed at the new task (a backfill re-running a date), attempts + 1;
    /// with no row yet, one is created.
    pub replace: bool,
}

/// A run with the status of its task (`None`: it has no task, or the task is gone).
pub type RunWithStatus = (schedule_run::Model, Option<String>);

/// Inserts `link`'s run row for the new task `task_id`, inside the task's transaction.
pub(crate) async fn link_run(
    txn: &impl ConnectionTrait,
    link: &RunLink,
    task_id: i64,
    now: DateTime<Utc>,
) -> Result<()> {
    let row = schedule_run::ActiveModel {
        schedule_id: Set(link.schedule_id),
        logical_date: Set(link.logical_date),
        task_id: Set(Some(task_id)),
        backfill_id: Set(link.backfill_id),
        attempts: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    let key = [
        schedule_run::Column::ScheduleId,
        schedule_run::Column::LogicalDate,
    ];
    if link.replace {
        // Qualified: in DO UPDATE, PostgreSQL would find a bare `attempts` ambiguous with
        // `excluded.attempts`.
        let attempts = Expr::col((schedule_run::Entity, schedule_run::Column::Attempts)).add(1);
        schedule_run::Entity::insert(row)
            .on_conflict(
                OnConflict::columns(key)
                    .update_columns([
                        schedule_run::Column::TaskId,
                        schedule_run::Column::BackfillId,
                        schedule_run::Column::UpdatedAt,
                    ])
                    .value(schedule_run::Column::Attempts, attempts)
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        return Ok(());
    }
    // DO NOTHING rather than a unique violation: the outcome reads the same on every backend,
    // and a racing transaction's row (PostgreSQL waits for it to commit or roll back) counts
    // as there.
    let inserted = schedule_run::Entity::insert(row)
        .on_conflict_do_nothing_on(key)
        .exec_without_returning(txn)
        .await?;
    match inserted {
        TryInsertResult::Inserted(n) if n > 0 => Ok(()),
        _ => Err(StoreError::RunExists {
            schedule_id: link.schedule_id,
            logical_date: link.logical_date,
        }),
    }
}

impl Store {
    // ---- schedules --------------------------------------------------------------------

    /// Stores a new schedule. A name already taken is [`StoreError::Conflict`].
    pub async fn insert_schedule(&self, s: NewSchedule) -> Result<schedule::Model> {
        let now = Utc::now();
        let name = s.name.clone();
        let row = schedule::ActiveModel {
            name: Set(s.name),
            target: Set(s.target),
            workflow: Set(s.workflow),
            request: Set(s.request),
            params: Set(s.params),
            cron: Set(s.cron),
            timezone: Set(s.timezone),
            catchup: Set(s.catchup),
            max_catchup: Set(s.max_catchup),
            concurrency: Set(s.concurrency),
            priority: Set(s.priority),
            paused: Set(s.paused),
            cursor: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        let inserted = schedule::Entity::insert(row)
            .on_conflict_do_nothing_on([schedule::Column::Name])
            .exec(&self.db)
            .await?;
        let TryInsertResult::Inserted(r) = inserted else {
            return Err(StoreError::Conflict(format!("schedule `{name}`")));
        };
        self.schedule(r.last_insert_id)
            .await?
            .ok_or_else(|| StoreError::Db(sea_orm::DbErr::RecordNotFound(name)))
    }

    /// The schedule with `id`, if any.
    pub async fn schedule(&self, id: i64) -> Result<Option<schedule::Model>> {
        Ok(schedule::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// The schedule named `name`, if any.
    pub async fn schedule_by_name(&self, name: &str) -> Result<Option<schedule::Model>> {
        Ok(schedule::Entity::find()
            .filter(schedule::Column::Name.eq(name))
            .one(&self.db)
            .await?)
    }

    /// Every schedule, by name.
    pub async fn list_schedules(&self) -> Result<Vec<schedule::Model>> {
        Ok(schedule::Entity::find()
            .order_by_asc(schedule::Column::Name)
            .all(&self.db)
            .await?)
    }

    /// Pauses or resumes a schedule; false when there is no such schedule.
    pub async fn set_schedule_paused(&self, id: i64, paused: bool) -> Result<bool> {
        let r = schedule::Entity::update_many()
            .col_expr(schedule::Column::Paused, Expr::value(paused))
            .col_expr(schedule::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(schedule::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected > 0)
    }

    /// Removes a schedule with its runs and backfills, in one transaction; the tasks its runs
    /// created stay. False when there is no such schedule.
    pub async fn delete_schedule(&self, id: i64) -> Result<bool> {
        let txn = self.db.begin().await?;
        schedule_run::Entity::delete_many()
            .filter(schedule_run::Column::ScheduleId.eq(id))
            .exec(&txn)
            .await?;
        backfill::Entity::delete_many()
            .filter(backfill::Column::ScheduleId.eq(id))
            .exec(&txn)
            .await?;
        let r = schedule::Entity::delete_by_id(id).exec(&txn).await?;
        txn.commit().await?;
        Ok(r.rows_affected > 0)
    }

    /// Moves the cursor forward only (UPDATE ... WHERE cursor IS NULL OR cursor < new): two
    /// coordinators can never move it back. An older or equal `cursor`, or no such schedule,
    /// changes nothing.
    pub async fn advance_schedule_cursor(&self, id: i64, cursor: DateTime<Utc>) -> Result<()> {
        schedule::Entity::update_many()
            .col_expr(schedule::Column::Cursor, Expr::value(cursor))
            .col_expr(schedule::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(schedule::Column::Id.eq(id))
            .filter(
                Condition::any()
                    .add(schedule::Column::Cursor.is_null())
                    .add(schedule::Column::Cursor.lt(cursor)),
            )
            .exec(&self.db)
            .await?;
        Ok(())
    }

    // ---- runs ---------------------------------------------------------------------------

    /// The runs of a schedule with logical dates in `[from, to)` (either bound optional),
    /// oldest first, at most `limit`, each with its task's status.
    pub async fn schedule_runs(
        &self,
        schedule_id: i64,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        limit: u64,
    ) -> Result<Vec<RunWithStatus>> {
        let mut q = schedule_run::Entity::find()
            .filter(schedule_run::Column::ScheduleId.eq(schedule_id))
            .order_by_asc(schedule_run::Column::LogicalDate);
        if let Some(from) = from {
            q = q.filter(schedule_run::Column::LogicalDate.gte(from));
        }
        if let Some(to) = to {
            q = q.filter(schedule_run::Column::LogicalDate.lt(to));
        }
        let runs = q.limit(limit).all(&self.db).await?;
        self.with_status(runs).await
    }

    /// The newest `limit` runs of a schedule, oldest first, each with its task's status.
    pub async fn latest_schedule_runs(
        &self,
        schedule_id: i64,
        limit: u64,
    ) -> Result<Vec<RunWithStatus>> {
        let mut runs = schedule_run::Entity::find()
            .filter(schedule_run::Column::ScheduleId.eq(schedule_id))
            .order_by_desc(schedule_run::Column::LogicalDate)
            .limit(limit)
            .all(&self.db)
            .await?;
        runs.reverse();
        self.with_status(runs).await
    }

    /// The scheduled run (not a backfill's) with the newest logical date that has a task,
    /// with that task's status: what a schedule's concurrency policy looks at, so backfills
    /// neither hold up nor are held up by scheduled runs.
    pub async fn latest_scheduled_run(&self, schedule_id: i64) -> Result<Option<RunWithStatus>> {
        let run = schedule_run::Entity::find()
            .filter(schedule_run::Column::ScheduleId.eq(schedule_id))
            .filter(schedule_run::Column::TaskId.is_not_null())
            .filter(schedule_run::Column::BackfillId.is_null())
            .order_by_desc(schedule_run::Column::LogicalDate)
            .one(&self.db)
            .await?;
        Ok(self.with_status(run.into_iter().collect()).await?.pop())
    }

    /// The runs a backfill created or last re-ran, oldest logical date first, each with its
    /// task's status.
    pub async fn runs_of_backfill(&self, backfill_id: i64) -> Result<Vec<RunWithStatus>> {
        let runs = schedule_run::Entity::find()
            .filter(schedule_run::Column::BackfillId.eq(backfill_id))
            .order_by_asc(schedule_run::Column::LogicalDate)
            .all(&self.db)
            .await?;
        self.with_status(runs).await
    }

    /// Pairs each run with its task's status: one query for all the tasks (a few hundred
    /// ids at a time), not one per run.
    async fn with_status(&self, runs: Vec<schedule_run::Model>) -> Result<Vec<RunWithStatus>> {
        let mut ids: Vec<i64> = runs.iter().filter_map(|r| r.task_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut status: HashMap<i64, String> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let rows: Vec<(i64, String)> = workflow_task::Entity::find()
                .select_only()
                .column(workflow_task::Column::Id)
                .column(workflow_task::Column::Status)
                .filter(workflow_task::Column::Id.is_in(chunk.iter().copied()))
                .into_tuple()
                .all(&self.db)
                .await?;
            status.extend(rows);
        }
        Ok(runs
            .into_iter()
            .map(|r| {
                let s = r.task_id.and_then(|id| status.get(&id).cloned());
                (r, s)
            })
            .collect())
    }

    // ---- backfills ----------------------------------------------------------------------

    /// Stores a new backfill, `running`.
    pub async fn insert_backfill(&self, b: NewBackfill) -> Result<backfill::Model> {
        let now = Utc::now();
        let row = backfill::ActiveModel {
            schedule_id: Set(b.schedule_id),
            start_date: Set(b.start_date),
            end_date: Set(b.end_date),
            reverse: Set(b.reverse),
            max_active: Set(b.max_active),
            priority: Set(b.priority),
            reprocess: Set(b.reprocess),
            status: Set(BACKFILL_RUNNING.to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            finished_at: Set(None),
            ..Default::default()
        };
        Ok(row.insert(&self.db).await?)
    }

    /// The backfill with `id`, if any.
    pub async fn backfill(&self, id: i64) -> Result<Option<backfill::Model>> {
        Ok(backfill::Entity::find_by_id(id).one(&self.db).await?)
    }

    /// Backfills (of one schedule, when given), newest first.
    pub async fn list_backfills(&self, schedule_id: Option<i64>) -> Result<Vec<backfill::Model>> {
        let mut q = backfill::Entity::find().order_by_desc(backfill::Column::Id);
        if let Some(id) = schedule_id {
            q = q.filter(backfill::Column::ScheduleId.eq(id));
        }
        Ok(q.all(&self.db).await?)
    }

    /// The backfills still `running`, oldest first.
    pub async fn active_backfills(&self) -> Result<Vec<backfill::Model>> {
        Ok(backfill::Entity::find()
            .filter(backfill::Column::Status.eq(BACKFILL_RUNNING))
            .order_by_asc(backfill::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Sets a backfill's status; any status but `running` sets `finished_at` to now (and
    /// `running` clears it). No such backfill changes nothing.
    pub async fn set_backfill_status(&self, id: i64, status: &str) -> Result<()> {
        let now = Utc::now();
        let finished = (status != BACKFILL_RUNNING).then_some(now);
        backfill::Entity::update_many()
            .col_expr(backfill::Column::Status, Expr::value(status))
            .col_expr(backfill::Column::FinishedAt, Expr::value(finished))
            .col_expr(backfill::Column::UpdatedAt, Expr::value(now))
            .filter(backfill::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

/// A backfill's status while it creates runs.
const BACKFILL_RUNNING: &str = "running";
