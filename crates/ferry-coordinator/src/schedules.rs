//! Schedules and backfills: which runs are due (the rules are `ferry_core::schedule`'s, pure)
//! and creating them through the engine. A run's row (`schedule_runs`, unique per schedule
//! and logical date) is stored with its task in one transaction, so a coordinator restart,
//! a crash during creation or two coordinators racing never create a run twice; the cursor
//! moves only past runs created (or deliberately skipped), so none is missed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use ferry_core::TaskStatus;
use ferry_core::pipeline::CtrTaskRequest;
use ferry_core::schedule::{
    self, Cadence, CatchUp, Concurrency, Decision, LogicalRun, Reprocess, ScheduleError,
};
use ferry_core::template;
use ferry_store::{RunLink, Store, StoreError, backfill, schedule as schedule_row};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::{ApiRequest, EngineHandle, TaskOptions};
use crate::error::EngineError;

/// The most runs one backfill may cover.
pub const MAX_BACKFILL_RUNS: usize = 10_000;

/// The wall clock schedules run on: the system's, or one a test sets.
#[derive(Debug, Clone)]
pub enum WallClock {
    System,
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl WallClock {
    pub fn manual(at: DateTime<Utc>) -> WallClock {
        WallClock::Manual(Arc::new(Mutex::new(at)))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            WallClock::System => Utc::now(),
            WallClock::Manual(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Sets a manual clock (the system clock sets itself).
    pub fn set(&self, at: DateTime<Utc>) {
        if let WallClock::Manual(t) = self {
            *t.lock().unwrap_or_else(|p| p.into_inner()) = at;
        }
    }
}

/// What a schedule starts: a stored workflow with parameters, or a CTR task request.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Workflow {
        name: String,
        params: BTreeMap<String, String>,
    },
    /// A CTR task request (seed 000 §8.2) whose strings may hold the run's dates
    /// (`${ds}` in the SQL, the partition, the table).
    Ctr(serde_json::Value),
}

/// A schedule as a user creates it.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    pub name: String,
    pub target: Target,
    pub cron: String,
    pub timezone: String,
    pub catchup: CatchUp,
    pub max_catchup: u32,
    pub concurrency: Concurrency,
    pub priority: i32,
    pub paused: bool,
}

/// A backfill as a user asks for it.
#[derive(Debug, Clone)]
pub struct BackfillSpec {
    pub schedule: String,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub reverse: bool,
    pub max_active: u32,
    pub priority: i32,
    pub reprocess: Reprocess,
}

/// A backfill's runs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillProgress {
    pub done: usize,
    pub running: usize,
    pub failed: usize,
    pub left: usize,
}

/// What one pass created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// (schedule, logical date, task) of each run created.
    pub created: Vec<(String, DateTime<Utc>, i64)>,
    /// Runs found already created (by an earlier, interrupted pass or another coordinator).
    pub existing: usize,
    /// Runs skipped (catch-up policy, `skip` concurrency).
    pub skipped: u64,
}

/// Creates the due runs of every schedule and backfill, on a timer.
#[derive(Clone)]
pub struct ScheduleService {
    store: Store,
    engine: EngineHandle,
    clock: WallClock,
    /// A run due at most this long ago is on time (catch-up `none` creates it).
    grace: TimeDelta,
}

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> EngineError {
    EngineError::InvalidField {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn schedule_error(e: ScheduleError) -> EngineError {
    invalid(e.field(), e.to_string())
}

/// Whether a run's task still occupies its schedule (for the concurrency policy): pending or
/// running. A paused or failed run waits for a person, not for the schedule.
fn still_runs(status: Option<&str>) -> bool {
    matches!(
        status.and_then(|s| s.parse::<TaskStatus>().ok()),
        Some(TaskStatus::Pending | TaskStatus::Running)
    )
}

impl ScheduleService {
    /// `tick` is how often [`Self::run`] looks; runs due within `2 x tick` (at least a
    /// minute) are on time.
    pub fn new(store: Store, engine: EngineHandle, clock: WallClock, tick: Duration) -> Self {
        let grace = TimeDelta::from_std(tick * 2)
            .unwrap_or(TimeDelta::MAX)
            .max(TimeDelta::minutes(1));
        ScheduleService {
            store,
            engine,
            clock,
            grace,
        }
    }

    /// Looks every `every` until `shutdown`.
    pub async fn run(self, every: Duration, shutdown: CancellationToken) {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = timer.tick() => {
                    if let Err(e) = self.tick().await {
                        warn!(error = %e, "schedules: a pass failed; the next one tries again");
                    }
                }
            }
        }
    }

    /// One pass: every unpaused schedule's due runs, then every running backfill.
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let now = self.clock.now();
        let mut report = TickReport::default();
        for s in self.store.list_schedules().await? {
            if s.paused {
                continue;
            }
            if let Err(e) = self.tick_schedule(&s, now, &mut report).await {
                warn!(schedule = %s.name, error = %e, "schedule: runs not created this pass");
            }
        }
        for b in self.store.active_backfills().await? {
            if let Err(e) = self.tick_backfill(&b, now, &mut report).await {
                warn!(backfill = b.id, error = %e, "backfill: runs not created this pass");
            }
        }
        Ok(report)
    }

    async fn tick_schedule(
        &self,
        s: &schedule_row::Model,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        let cadence = Cadence::new(&s.cron, &s.timezone).map_err(schedule_error)?;
        let catchup: CatchUp = s
            .catchup
            .parse()
            .map_err(|e| invalid("catchup", format!("{e}")))?;
        let concurrency: Concurrency = s
            .concurrency
            .parse()
            .map_err(|e| invalid("concurrency", format!("{e}")))?;
        let after = s.cursor.unwrap_or(s.created_at);
        let due = schedule::due_runs(
            &cadence,
            catchup,
            s.max_catchup.max(1) as u32,
            after,
            now,
            self.grace,
        );
        report.skipped += due.skipped_count;
        for run in &due.create {
            // `allow` needs no look at the previous run.
            let previous = match concurrency {
                Concurrency::Allow => None,
                _ => self.store.latest_scheduled_run(s.id).await?,
            };
            let previous_task = previous
                .as_ref()
                .filter(|(r, status)| {
                    r.logical_date < run.logical_date && still_runs(status.as_deref())
                })
                .and_then(|(r, _)| r.task_id);
            match schedule::decide(concurrency, previous_task.is_some()) {
                Decision::Start => {}
                Decision::Skip => {
                    info!(schedule = %s.name, logical_date = %run.logical_date, "skipped: the previous run still runs (concurrency skip)");
                    report.skipped += 1;
                    self.store
                        .advance_schedule_cursor(s.id, run.logical_date)
                        .await?;
                    continue;
                }
                // The cursor stays: the next pass looks again.
                Decision::Wait => return Ok(()),
                Decision::StartAfterCancellingPrevious => {
                    if let Some(task_id) = previous_task {
                        info!(schedule = %s.name, task_id, "cancelling the previous run (concurrency replace)");
                        self.engine
                            .request(|reply| ApiRequest::Cancel { task_id, reply })
                            .await?;
                    }
                }
            }
            let link = RunLink {
                schedule_id: s.id,
                logical_date: run.logical_date,
                backfill_id: None,
                replace: false,
            };
            match self.create_run(s, run, link, s.priority).await {
                Ok(task_id) => {
                    info!(schedule = %s.name, logical_date = %run.logical_date, task_id, "scheduled run created");
                    report
                        .created
                        .push((s.name.clone(), run.logical_date, task_id));
                }
                Err(e) if run_exists(&e) => report.existing += 1,
                Err(e) => return Err(e),
            }
            self.store
                .advance_schedule_cursor(s.id, run.logical_date)
                .await?;
        }
        if let Some(cursor) = due.cursor {
            self.store.advance_schedule_cursor(s.id, cursor).await?;
        }
        Ok(())
    }

    /// Creates the task of one run, with its run row, through the engine.
    async fn create_run(
        &self,
        s: &schedule_row::Model,
        run: &LogicalRun,
        link: RunLink,
        priority: i32,
    ) -> Result<i64, EngineError> {
        let dates = run.placeholders();
        let name = run_name(&s.name, run);
        let opts = TaskOptions {
            priority: Some(priority),
            run: Some(link),
        };
        match target_of(s)? {
            Target::Workflow { name: wf, params } => {
                let mut params = render_params(&params, &dates);
                params.extend(dates);
                let row = self
                    .engine
                    .request(|reply| ApiRequest::CreateTask {
                        workflow: wf,
                        name,
                        params,
                        opts,
                        reply,
                    })
                    .await?;
                Ok(row.id)
            }
            Target::Ctr(template_request) => {
                let rendered = template::fill_in_value(&template_request, &dates);
                let mut request: CtrTaskRequest = serde_json::from_value(rendered)
                    .map_err(|e| invalid("request", format!("not a CTR task request: {e}")))?;
                request.name = name;
                let plan = self.engine.plan_ctr(&request)?;
                let wf = self.store.apply_workflow(&plan.def).await?;
                let mut params = plan.params;
                params.extend(dates);
                let row = self
                    .engine
                    .request(|reply| ApiRequest::CreatePlanned {
                        workflow_id: wf.id,
                        def: Box::new(plan.def),
                        name: request.name.clone(),
                        params,
                        note: Some(format!(
                            "run of schedule {} planned on {}",
                            s.name, plan.hosts
                        )),
                        opts,
                        reply,
                    })
                    .await?;
                Ok(row.id)
            }
        }
    }

    async fn tick_backfill(
        &self,
        b: &backfill::Model,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        let Some(s) = self.store.schedule(b.schedule_id).await? else {
            self.store.set_backfill_status(b.id, "cancelled").await?;
            return Ok(());
        };
        let plan = self.backfill_plan(&s, b, now).await?;
        let mut running = plan
            .iter()
            .filter(|p| matches!(p.state, RunState::Running { ours: true }))
            .count();
        let mut open = false;
        for p in &plan {
            match p.state {
                RunState::Running { .. } => open = true,
                RunState::Create { replace } => {
                    open = true;
                    if running >= b.max_active.max(1) as usize {
                        continue;
                    }
                    let link = RunLink {
                        schedule_id: s.id,
                        logical_date: p.run.logical_date,
                        backfill_id: Some(b.id),
                        replace,
                    };
                    match self.create_run(&s, &p.run, link, b.priority).await {
                        Ok(task_id) => {
                            info!(backfill = b.id, logical_date = %p.run.logical_date, task_id, "backfill run created");
                            report
                                .created
                                .push((s.name.clone(), p.run.logical_date, task_id));
                            running += 1;
                        }
                        Err(e) if run_exists(&e) => report.existing += 1,
                        Err(e) => return Err(e),
                    }
                }
                RunState::Done | RunState::Failed | RunState::NotNeeded => {}
            }
        }
        if !open {
            info!(backfill = b.id, "backfill completed");
            self.store.set_backfill_status(b.id, "completed").await?;
        }
        Ok(())
    }

    /// Each run of a backfill's range and what it is to the backfill now.
    async fn backfill_plan(
        &self,
        s: &schedule_row::Model,
        b: &backfill::Model,
        now: DateTime<Utc>,
    ) -> Result<Vec<PlannedRun>, EngineError> {
        let cadence = Cadence::new(&s.cron, &s.timezone).map_err(schedule_error)?;
        let start = parse_date("start", &b.start_date)?;
        let end = parse_date("end", &b.end_date)?;
        let reprocess: Reprocess = b
            .reprocess
            .parse()
            .map_err(|e| invalid("reprocess", format!("{e}")))?;
        let runs: Vec<LogicalRun> =
            schedule::backfill_runs(&cadence, start, end, b.reverse, MAX_BACKFILL_RUNS)
                .map_err(schedule_error)?
                .into_iter()
                .filter(|r| r.interval_end <= now)
                .collect();
        let existing = self.existing_runs(s.id, &runs).await?;
        Ok(runs
            .into_iter()
            .map(|run| {
                let state = match existing.get(&run.logical_date) {
                    Some((row, status)) => {
                        let ours = row.backfill_id == Some(b.id);
                        let parsed = status.as_deref().and_then(|t| t.parse::<TaskStatus>().ok());
                        if still_runs(status.as_deref()) {
                            RunState::Running { ours }
                        } else if ours && row.task_id.is_some() {
                            match parsed {
                                Some(TaskStatus::Completed) => RunState::Done,
                                _ => RunState::Failed,
                            }
                        } else if reprocess.includes(parsed.filter(|_| row.task_id.is_some())) {
                            RunState::Create { replace: true }
                        } else {
                            RunState::NotNeeded
                        }
                    }
                    None => RunState::Create { replace: false },
                };
                PlannedRun { run, state }
            })
            .collect())
    }

    async fn existing_runs(
        &self,
        schedule_id: i64,
        runs: &[LogicalRun],
    ) -> Result<
        HashMap<DateTime<Utc>, (ferry_store::schedule_run::Model, Option<String>)>,
        EngineError,
    > {
        let (Some(first), Some(last)) = (
            runs.iter().map(|r| r.logical_date).min(),
            runs.iter().map(|r| r.logical_date).max(),
        ) else {
            return Ok(HashMap::new());
        };
        Ok(self
            .store
            .schedule_runs(
                schedule_id,
                Some(first),
                Some(last + TimeDelta::seconds(1)),
                MAX_BACKFILL_RUNS as u64,
            )
            .await?
            .into_iter()
            .map(|(row, status)| (row.logical_date, (row, status)))
            .collect())
    }

    // ---- what the API calls

    /// Checks and stores a schedule; nothing is stored when a value is wrong.
    pub async fn create(&self, spec: ScheduleSpec) -> Result<schedule_row::Model, EngineError> {
        if !ferry_core::workflow::is_valid_workflow_name(&spec.name) {
            return Err(invalid(
                "name",
                format!(
                    "schedule name `{}` is invalid: use 1-100 letters, digits, `_`, `-` or `.`",
                    spec.name
                ),
            ));
        }
        let cadence = Cadence::new(&spec.cron, &spec.timezone).map_err(schedule_error)?;
        schedule::check_max_catchup(spec.max_catchup).map_err(schedule_error)?;
        if let Target::Workflow { params, .. } = &spec.target {
            for (k, v) in params {
                ferry_core::limits::check_user_text(
                    "a parameter name",
                    k,
                    Some(ferry_core::limits::SHORT_NAME),
                )
                .and_then(|()| {
                    ferry_core::limits::check_user_text(&format!("parameter `{k}`"), v, None)
                })
                .map_err(|e| invalid("params", e.to_string()))?;
            }
        }
        let (target, workflow, request, params) = match &spec.target {
            Target::Workflow { name, params } => {
                let Some(wf) = self.store.workflow_by_name(name).await? else {
                    return Err(invalid("workflow", format!("workflow `{name}` not found")));
                };
                // Every parameter its steps use is given (or is a run's date).
                let def: ferry_core::workflow::WorkflowDef = Store::definition_of(&wf)?;
                let mut used = Vec::new();
                for step in &def.steps {
                    template::referenced_params(&step.params, &mut used);
                }
                if let Some(missing) = used.iter().find(|p| {
                    !params.contains_key(p.as_str())
                        && !schedule::PLACEHOLDER_NAMES.contains(&p.as_str())
                }) {
                    return Err(invalid(
                        "params",
                        format!(
                            "workflow `{name}` uses parameter `{missing}`; give it with the schedule's params"
                        ),
                    ));
                }
                (
                    "workflow",
                    Some(name.clone()),
                    None,
                    serde_json::to_string(params).unwrap_or_else(|_| "{}".into()),
                )
            }
            Target::Ctr(request) => {
                // The request must be valid once a date fills it in.
                if let Some(probe) = cadence
                    .next_after(self.clock.now())
                    .and_then(|t| cadence.run_at(t).ok())
                {
                    let rendered = template::fill_in_value(request, &probe.placeholders());
                    let mut r: CtrTaskRequest = serde_json::from_value(rendered)
                        .map_err(|e| invalid("request", format!("not a CTR task request: {e}")))?;
                    r.name = run_name(&spec.name, &probe);
                    r.validate().map_err(EngineError::from)?;
                }
                ("ctr", None, Some(request.to_string()), "{}".to_owned())
            }
        };
        let row = self
            .store
            .insert_schedule(ferry_store::NewSchedule {
                name: spec.name.clone(),
                target: target.to_owned(),
                workflow,
                request,
                params,
                cron: spec.cron.trim().to_owned(),
                timezone: spec.timezone.trim().to_owned(),
                catchup: spec.catchup.to_string(),
                max_catchup: spec.max_catchup as i32,
                concurrency: spec.concurrency.to_string(),
                priority: spec.priority,
                paused: spec.paused,
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => EngineError::AlreadyExists(format!(
                    "a schedule named `{}` already exists",
                    spec.name
                )),
                e => e.into(),
            })?;
        // Runs start after now (the schedule's clock): the first is the first tick after
        // it, due once its interval has passed.
        self.store
            .advance_schedule_cursor(row.id, self.clock.now())
            .await?;
        info!(schedule = %row.name, cadence = %cadence, "schedule created");
        self.by_name(&row.name).await
    }

    pub async fn by_name(&self, name: &str) -> Result<schedule_row::Model, EngineError> {
        self.store
            .schedule_by_name(name)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("schedule `{name}` not found")))
    }

    /// The next `n` runs' logical dates (and when each is due) from now.
    pub fn upcoming(&self, s: &schedule_row::Model, n: usize) -> Vec<LogicalRun> {
        let Ok(cadence) = Cadence::new(&s.cron, &s.timezone) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut t = s.cursor.unwrap_or(s.created_at).max(
            cadence
                .prev_before(self.clock.now())
                .unwrap_or_else(|| self.clock.now()),
        );
        while out.len() < n {
            let Some(next) = cadence.next_after(t) else {
                break;
            };
            let Ok(run) = cadence.run_at(next) else {
                break;
            };
            t = next;
            out.push(run);
        }
        out
    }

    /// Stores a backfill after checking it (a range with runs, no overlap with a running
    /// backfill of the same schedule); `dry_run` stores nothing and returns what it would
    /// create.
    pub async fn backfill(
        &self,
        spec: BackfillSpec,
        dry_run: bool,
    ) -> Result<(Option<backfill::Model>, Vec<LogicalRun>), EngineError> {
        let s = self.by_name(&spec.schedule).await?;
        let cadence = Cadence::new(&s.cron, &s.timezone).map_err(schedule_error)?;
        if spec.max_active == 0 || spec.max_active as usize > MAX_BACKFILL_RUNS {
            return Err(invalid(
                "max_active",
                format!("must be between 1 and {MAX_BACKFILL_RUNS}"),
            ));
        }
        let runs = schedule::backfill_runs(
            &cadence,
            spec.start,
            spec.end,
            spec.reverse,
            MAX_BACKFILL_RUNS,
        )
        .map_err(schedule_error)?;
        let now = self.clock.now();
        if runs.iter().all(|r| r.interval_end > now) {
            return Err(invalid(
                "end",
                "no run of the range is due yet (each run starts once its interval has ended)",
            ));
        }
        for other in self.store.active_backfills().await? {
            if other.schedule_id != s.id {
                continue;
            }
            let (Ok(a0), Ok(a1)) = (
                parse_date("start", &other.start_date),
                parse_date("end", &other.end_date),
            ) else {
                continue;
            };
            if schedule::ranges_overlap((a0, a1), (spec.start, spec.end)) {
                return Err(invalid(
                    "start",
                    format!(
                        "the range overlaps running backfill {} of schedule {} ({} to {}); cancel it or pick another range",
                        other.id, s.name, other.start_date, other.end_date
                    ),
                ));
            }
        }
        // What it would create now, by the same rules the passes follow.
        let probe = backfill::Model {
            id: -1,
            schedule_id: s.id,
            start_date: spec.start.to_string(),
            end_date: spec.end.to_string(),
            reverse: spec.reverse,
            max_active: spec.max_active as i32,
            priority: spec.priority,
            reprocess: spec.reprocess.to_string(),
            status: "running".into(),
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let would: Vec<LogicalRun> = self
            .backfill_plan(&s, &probe, now)
            .await?
            .into_iter()
            .filter(|p| matches!(p.state, RunState::Create { .. }))
            .map(|p| p.run)
            .collect();
        if dry_run {
            return Ok((None, would));
        }
        let row = self
            .store
            .insert_backfill(ferry_store::NewBackfill {
                schedule_id: s.id,
                start_date: spec.start.to_string(),
                end_date: spec.end.to_string(),
                reverse: spec.reverse,
                max_active: spec.max_active as i32,
                priority: spec.priority,
                reprocess: spec.reprocess.to_string(),
            })
            .await?;
        info!(backfill = row.id, schedule = %s.name, runs = would.len(), "backfill created");
        Ok((Some(row), would))
    }

    /// A backfill's runs by state.
    pub async fn progress(&self, b: &backfill::Model) -> Result<BackfillProgress, EngineError> {
        let Some(s) = self.store.schedule(b.schedule_id).await? else {
            return Ok(BackfillProgress::default());
        };
        let mut p = BackfillProgress::default();
        for planned in self.backfill_plan(&s, b, self.clock.now()).await? {
            match planned.state {
                RunState::Done => p.done += 1,
                RunState::Running { ours: true } => p.running += 1,
                RunState::Failed => p.failed += 1,
                RunState::Create { .. } | RunState::Running { ours: false } => p.left += 1,
                RunState::NotNeeded => {}
            }
        }
        Ok(p)
    }

    /// Stops a backfill: no run starts any more and its running tasks are cancelled.
    pub async fn cancel_backfill(&self, id: i64) -> Result<backfill::Model, EngineError> {
        let b = self
            .store
            .backfill(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("backfill {id} not found")))?;
        if b.status != "running" {
            return Err(EngineError::FailedPrecondition(format!(
                "backfill {id} is {}; only a running backfill can be cancelled",
                b.status
            )));
        }
        // First no new run, then stop the running ones.
        self.store.set_backfill_status(id, "cancelled").await?;
        for (row, status) in self.store.runs_of_backfill(id).await? {
            if let (Some(task_id), true) = (row.task_id, still_runs(status.as_deref())) {
                match self
                    .engine
                    .request(|reply| ApiRequest::Cancel { task_id, reply })
                    .await
                {
                    Ok(_) | Err(EngineError::FailedPrecondition(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        info!(backfill = id, "backfill cancelled");
        self.store
            .backfill(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("backfill {id} not found")))
    }
}

/// What a run of a backfill's range is to it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    /// To create; `replace`: the date has a run already (re-run by the reprocess mode).
    Create { replace: bool },
    /// Its task still runs (`ours`: one this backfill created).
    Running { ours: bool },
    /// Created by this backfill and completed.
    Done,
    /// Created by this backfill and failed or cancelled.
    Failed,
    /// The reprocess mode leaves it alone.
    NotNeeded,
}

struct PlannedRun {
    run: LogicalRun,
    state: RunState,
}

fn run_exists(e: &EngineError) -> bool {
    matches!(e, EngineError::Store(StoreError::RunExists { .. }))
}

/// A calendar date (`YYYY-MM-DD`); the error names `field`.
pub(crate) fn parse_date(field: &str, s: &str) -> Result<NaiveDate, EngineError> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| invalid(field, format!("{field}: `{s}` is not a date (YYYY-MM-DD)")))
}

/// `{schedule}_{ds_nodash}`, with the time when the cadence is finer than a day.
fn run_name(schedule: &str, run: &LogicalRun) -> String {
    let dates = run.placeholders();
    let day = dates.get("ds_nodash").cloned().unwrap_or_default();
    let start = dates.get("logical_date").cloned().unwrap_or_default();
    // `2026-01-22T00:00:00+08:00`: the time is after the `T`.
    let time = start.get(11..16).unwrap_or("00:00");
    if time == "00:00" {
        format!("{schedule}_{day}")
    } else {
        format!("{schedule}_{day}T{}", time.replace(':', ""))
    }
}

fn target_of(s: &schedule_row::Model) -> Result<Target, EngineError> {
    match s.target.as_str() {
        "workflow" => Ok(Target::Workflow {
            name: s.workflow.clone().unwrap_or_default(),
            params: serde_json::from_str(&s.params).unwrap_or_default(),
        }),
        "ctr" => Ok(Target::Ctr(
            serde_json::from_str(s.request.as_deref().unwrap_or("{}")).map_err(|e| {
                EngineError::Internal(format!("schedule {}: stored request: {e}", s.name))
            })?,
        )),
        other => Err(EngineError::Internal(format!(
            "schedule {}: unknown target `{other}`",
            s.name
        ))),
    }
}

/// The task parameters of a run: each value with the run's dates filled in (`${ds}`; the
/// rest as written).
fn render_params(
    params: &BTreeMap<String, String>,
    dates: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    params
        .iter()
        .map(|(k, v)| (k.clone(), template::fill_in(v, dates)))
        .collect()
}
