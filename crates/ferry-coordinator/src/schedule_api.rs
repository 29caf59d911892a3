//! The schedule and backfill calls of the workflow service: wire values checked and turned
//! into [`crate::schedules`]' specs, its rows turned into wire values.

use chrono::NaiveDate;
use ferry_core::schedule::{CatchUp, Concurrency, Reprocess};
use ferry_proto::v1;
use ferry_store::{backfill, schedule as schedule_row};
use tonic::Status;

use crate::api::{WorkflowApi, store_err};
use crate::error::EngineError;
use crate::schedules::{BackfillSpec, ScheduleSpec, Target, invalid, parse_date};

/// Runs shown with a schedule.
const RUNS_SHOWN: u64 = 500;

fn field(field: &str, message: impl Into<String>) -> Status {
    Status::from(invalid(field, message))
}

/// A policy from the wire: its default when empty, else one of its names.
fn policy<T: std::str::FromStr + Default>(name: &str, raw: &str) -> Result<T, Status>
where
    T::Err: std::fmt::Display,
{
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(T::default());
    }
    raw.parse()
        .map_err(|e: T::Err| field(name, format!("{name}: {e}")))
}

fn date(name: &str, raw: &str) -> Result<NaiveDate, Status> {
    parse_date(name, raw).map_err(Status::from)
}

impl WorkflowApi {
    pub(crate) fn schedule_to_wire(&self, s: &schedule_row::Model) -> v1::Schedule {
        v1::Schedule {
            id: s.id,
            name: s.name.clone(),
            target: s.target.clone(),
            workflow: s.workflow.clone().unwrap_or_default(),
            request_json: s.request.clone().unwrap_or_default(),
            params: serde_json::from_str(&s.params).unwrap_or_default(),
            cron: s.cron.clone(),
            timezone: s.timezone.clone(),
            catchup: s.catchup.clone(),
            max_catchup: s.max_catchup.max(0) as u32,
            concurrency: s.concurrency.clone(),
            priority: s.priority,
            paused: s.paused,
            cursor: s.cursor.map(|c| c.to_rfc3339()).unwrap_or_default(),
            created_at: s.created_at.to_rfc3339(),
            next_runs: self
                .schedules
                .upcoming(s, 3)
                .iter()
                .filter_map(|r| r.placeholders().get("logical_date").cloned())
                .collect(),
        }
    }

    pub(crate) async fn backfill_to_wire(
        &self,
        b: &backfill::Model,
    ) -> Result<v1::Backfill, Status> {
        let schedule = self
            .store
            .schedule(b.schedule_id)
            .await
            .map_err(store_err)?
            .map(|s| s.name)
            .unwrap_or_default();
        let p = self.schedules.progress(b).await?;
        Ok(v1::Backfill {
            id: b.id,
            schedule,
            start: b.start_date.clone(),
            end: b.end_date.clone(),
            reverse: b.reverse,
            max_active: b.max_active.max(0) as u32,
            priority: b.priority,
            reprocess: b.reprocess.clone(),
            status: b.status.clone(),
            done: p.done as u32,
            running: p.running as u32,
            failed: p.failed as u32,
            left: p.left as u32,
            created_at: b.created_at.to_rfc3339(),
        })
    }

    pub(crate) async fn create_schedule_call(
        &self,
        r: v1::CreateScheduleRequest,
    ) -> Result<v1::Schedule, Status> {
        let target = match r.target {
            Some(v1::create_schedule_request::Target::Workflow(w)) => Target::Workflow {
                name: w,
                params: r.params.into_iter().collect(),
            },
            Some(v1::create_schedule_request::Target::Ctr(c)) => {
                let request: ferry_core::pipeline::CtrTaskRequest =
                    c.try_into()
                        .map_err(|e: ferry_core::pipeline::RequestError| {
                            Status::from(EngineError::from(e))
                        })?;
                Target::Ctr(
                    serde_json::to_value(&request)
                        .map_err(|e| Status::internal(format!("request: {e}")))?,
                )
            }
            None => {
                return Err(field(
                    "workflow",
                    "a schedule needs a `workflow` or a `ctr` request",
                ));
            }
        };
        let timezone = if r.timezone.trim().is_empty() {
            "UTC".to_owned()
        } else {
            r.timezone
        };
        let spec = ScheduleSpec {
            name: r.name,
            target,
            cron: r.cron,
            timezone,
            catchup: policy::<CatchUp>("catchup", &r.catchup)?,
            max_catchup: r.max_catchup.max(1),
            concurrency: policy::<Concurrency>("concurrency", &r.concurrency)?,
            priority: r.priority,
            paused: r.paused,
        };
        let row = self.schedules.create(spec).await?;
        Ok(self.schedule_to_wire(&row))
    }

    pub(crate) async fn list_schedules_call(&self) -> Result<v1::ListSchedulesResponse, Status> {
        let rows = self.store.list_schedules().await.map_err(store_err)?;
        Ok(v1::ListSchedulesResponse {
            schedules: rows.iter().map(|s| self.schedule_to_wire(s)).collect(),
        })
    }

    pub(crate) async fn get_schedule_call(&self, name: &str) -> Result<v1::ScheduleDetail, Status> {
        let s = self.schedules.by_name(name).await?;
        let runs = self
            .store
            .latest_schedule_runs(s.id, RUNS_SHOWN)
            .await
            .map_err(store_err)?;
        let cadence = ferry_core::schedule::Cadence::new(&s.cron, &s.timezone).ok();
        let runs = runs
            .into_iter()
            .map(|(row, status)| {
                let dates = cadence
                    .as_ref()
                    .and_then(|c| c.run_at(row.logical_date).ok())
                    .map(|r| r.placeholders())
                    .unwrap_or_default();
                v1::ScheduleRun {
                    logical_date: dates
                        .get("logical_date")
                        .cloned()
                        .unwrap_or_else(|| row.logical_date.to_rfc3339()),
                    ds: dates.get("ds").cloned().unwrap_or_default(),
                    task_id: row.task_id.unwrap_or_default(),
                    status: status.unwrap_or_default(),
                    backfill_id: row.backfill_id.unwrap_or_default(),
                    attempts: row.attempts.max(0) as u32,
                }
            })
            .collect();
        Ok(v1::ScheduleDetail {
            schedule: Some(self.schedule_to_wire(&s)),
            runs,
        })
    }

    pub(crate) async fn set_schedule_paused_call(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<v1::Schedule, Status> {
        let s = self.schedules.by_name(name).await?;
        self.store
            .set_schedule_paused(s.id, paused)
            .await
            .map_err(store_err)?;
        let s = self.schedules.by_name(name).await?;
        Ok(self.schedule_to_wire(&s))
    }

    pub(crate) async fn delete_schedule_call(&self, name: &str) -> Result<v1::Schedule, Status> {
        let s = self.schedules.by_name(name).await?;
        for b in self.store.active_backfills().await.map_err(store_err)? {
            if b.schedule_id == s.id {
                self.schedules.cancel_backfill(b.id).await?;
            }
        }
        self.store.delete_schedule(s.id).await.map_err(store_err)?;
        Ok(self.schedule_to_wire(&s))
    }

    pub(crate) async fn create_backfill_call(
        &self,
        r: v1::CreateBackfillRequest,
    ) -> Result<v1::BackfillResult, Status> {
        let spec = BackfillSpec {
            schedule: r.schedule,
            start: date("start", &r.start)?,
            end: date("end", &r.end)?,
            reverse: r.reverse,
            max_active: r.max_active.max(1),
            priority: r.priority,
            reprocess: policy::<Reprocess>("reprocess", &r.reprocess)?,
        };
        let (row, runs) = self.schedules.backfill(spec, r.dry_run).await?;
        let backfill = match &row {
            Some(b) => Some(self.backfill_to_wire(b).await?),
            None => None,
        };
        Ok(v1::BackfillResult {
            backfill,
            runs: runs
                .iter()
                .filter_map(|r| r.placeholders().get("ds").cloned())
                .collect(),
        })
    }

    pub(crate) async fn list_backfills_call(
        &self,
        schedule: &str,
    ) -> Result<v1::ListBackfillsResponse, Status> {
        let id = if schedule.trim().is_empty() {
            None
        } else {
            Some(self.schedules.by_name(schedule).await?.id)
        };
        let mut out = Vec::new();
        for b in self.store.list_backfills(id).await.map_err(store_err)? {
            out.push(self.backfill_to_wire(&b).await?);
        }
        Ok(v1::ListBackfillsResponse { backfills: out })
    }

    pub(crate) async fn cancel_backfill_call(&self, id: i64) -> Result<v1::Backfill, Status> {
        let b = self.schedules.cancel_backfill(id).await?;
        self.backfill_to_wire(&b).await
    }
}
