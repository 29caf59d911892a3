//! `ferry schedule` and `ferry backfill`: runs on a cron with logical dates, and re-runs over
//! a range of dates.

use std::path::PathBuf;

use anyhow::{Context, bail};
use ferry_core::pipeline::CtrTaskRequest;
use ferry_proto::v1;

use crate::access::Client;
use crate::{parse_kv, print_json, print_table, status};

#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCmd {
    /// Create a schedule: a stored workflow (`-w`) or a CTR task request (`--request FILE`)
    /// started on a cron in a time zone, one run per logical date. Values may hold the run's
    /// dates: `${ds}`, `${ds_nodash}`, `${prev_ds}`, `${next_ds}`, `${logical_date}`,
    /// `${data_interval_start}`, `${data_interval_end}`.
    Create {
        name: String,
        /// Five fields (minute hour day month weekday), e.g. `0 2 * * *`.
        #[arg(long)]
        cron: String,
        /// An IANA time zone (`Asia/Shanghai`).
        #[arg(long, default_value = "UTC")]
        timezone: String,
        #[arg(long, short)]
        workflow: Option<String>,
        /// `KEY=VALUE` task parameters for the workflow; repeatable.
        #[arg(long = "param", short = 'p', value_parser = parse_kv)]
        params: Vec<(String, String)>,
        /// A YAML or JSON CTR task request (seed 000 §8.2).
        #[arg(long)]
        request: Option<PathBuf>,
        /// Missed runs after downtime: none, latest or all.
        #[arg(long, default_value = "latest")]
        catchup: String,
        /// The most missed runs created after downtime.
        #[arg(long, default_value_t = 1)]
        max_catchup: u32,
        /// When the previous run still runs: allow, skip, queue or replace.
        #[arg(long, default_value = "queue")]
        concurrency: String,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    List,
    /// A schedule, its next runs and its runs by logical date.
    Show {
        name: String,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Delete a schedule (its running backfills are cancelled; its tasks stay).
    Delete {
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum BackfillCmd {
    /// Run a schedule over a range of dates (in its zone, both ends included).
    Create {
        schedule: String,
        #[arg(long)]
        start: String,
        #[arg(long)]
        end: String,
        /// Newest first.
        #[arg(long)]
        reverse: bool,
        /// Runs at once.
        #[arg(long, default_value_t = 1)]
        max_active: u32,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Which dates run: missing (no run yet), failed (no run or a failed one), all.
        #[arg(long, default_value = "missing")]
        reprocess: String,
        /// List the runs it would create; store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Backfills with their progress (done, running, failed, left).
    List {
        #[arg(long)]
        schedule: Option<String>,
    },
    /// Stop a backfill: no run of it starts any more, its running tasks are cancelled.
    Cancel { id: i64 },
}

fn schedule_json(s: &v1::Schedule) -> serde_json::Value {
    serde_json::json!({
        "id": s.id, "name": s.name, "target": s.target, "workflow": s.workflow,
        "cron": s.cron, "timezone": s.timezone, "catchup": s.catchup,
        "max_catchup": s.max_catchup, "concurrency": s.concurrency, "priority": s.priority,
        "paused": s.paused, "cursor": s.cursor, "next_runs": s.next_runs,
    })
}

fn backfill_json(b: &v1::Backfill) -> serde_json::Value {
    serde_json::json!({
        "id": b.id, "schedule": b.schedule, "start": b.start, "end": b.end,
        "reverse": b.reverse, "max_active": b.max_active, "priority": b.priority,
        "reprocess": b.reprocess, "status": b.status, "done": b.done, "running": b.running,
        "failed": b.failed, "left": b.left,
    })
}

fn print_schedule(s: &v1::Schedule) {
    let target = if s.target == "workflow" {
        format!("workflow {}", s.workflow)
    } else {
        "the CTR pipeline".to_owned()
    };
    println!(
        "schedule {} ({}): {} on `{}` in {}; catch-up {} (at most {}), concurrency {}, priority {}",
        s.name,
        if s.paused { "paused" } else { "active" },
        target,
        s.cron,
        s.timezone,
        s.catchup,
        s.max_catchup,
        s.concurrency,
        s.priority
    );
    if !s.next_runs.is_empty() {
        println!("  next runs: {}", s.next_runs.join(", "));
    }
}

pub async fn schedule(client: &mut Client, cmd: ScheduleCmd, json: bool) -> anyhow::Result<()> {
    let one = |name: String| v1::ScheduleRef { name };
    let s = match cmd {
        ScheduleCmd::Create {
            name,
            cron,
            timezone,
            workflow,
            params,
            request,
            catchup,
            max_catchup,
            concurrency,
            priority,
            paused,
        } => {
            use v1::create_schedule_request::Target;
            let target = match (workflow, request) {
                (Some(w), None) => Target::Workflow(w),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let r: CtrTaskRequest = serde_yaml::from_str(&text).with_context(|| {
                        format!("{} is not a valid task request", path.display())
                    })?;
                    Target::Ctr(v1::CtrTaskRequest::from(&r))
                }
                _ => bail!("give either a workflow (-w) or a CTR task request (--request FILE)"),
            };
            if matches!(target, Target::Ctr(_)) && !params.is_empty() {
                bail!("a CTR schedule takes its request's fields, not --param");
            }
            client
                .create_schedule(v1::CreateScheduleRequest {
                    name,
                    target: Some(target),
                    params: params.into_iter().collect(),
                    cron,
                    timezone,
                    catchup,
                    max_catchup,
                    concurrency,
                    priority,
                    paused,
                })
                .await
                .map_err(status)?
                .into_inner()
        }
        ScheduleCmd::List => {
            let list = client
                .list_schedules(v1::ListSchedulesRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json {
                return print_json(&serde_json::Value::Array(
                    list.schedules.iter().map(schedule_json).collect(),
                ));
            }
            let rows = list
                .schedules
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        if s.target == "workflow" {
                            s.workflow.clone()
                        } else {
                            "ctr".into()
                        },
                        s.cron.clone(),
                        s.timezone.clone(),
                        if s.paused { "paused" } else { "active" }.into(),
                        s.next_runs.first().cloned().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["NAME", "RUNS", "CRON", "ZONE", "STATE", "NEXT RUN"], rows);
            return Ok(());
        }
        ScheduleCmd::Show { name } => {
            let d = client
                .get_schedule(one(name))
                .await
                .map_err(status)?
                .into_inner();
            let s = d.schedule.unwrap_or_default();
            if json {
                let runs: Vec<_> = d
                    .runs
                    .iter()
                    .map(|r| {
                        serde_json::json!({"logical_date": r.logical_date, "ds": r.ds,
                            "task_id": r.task_id, "status": r.status,
                            "backfill_id": r.backfill_id, "attempts": r.attempts})
                    })
                    .collect();
                let mut v = schedule_json(&s);
                v["runs"] = serde_json::Value::Array(runs);
                return print_json(&v);
            }
            print_schedule(&s);
            let rows = d
                .runs
                .iter()
                .map(|r| {
                    vec![
                        r.ds.clone(),
                        r.logical_date.clone(),
                        r.task_id.to_string(),
                        r.status.clone(),
                        if r.backfill_id == 0 {
                            "scheduled".into()
                        } else {
                            format!("backfill {}", r.backfill_id)
                        },
                    ]
                })
                .collect();
            print_table(&["DS", "LOGICAL DATE", "TASK", "STATUS", "BY"], rows);
            return Ok(());
        }
        ScheduleCmd::Pause { name } => client
            .pause_schedule(one(name))
            .await
            .map_err(status)?
            .into_inner(),
        ScheduleCmd::Resume { name } => client
            .resume_schedule(one(name))
            .await
            .map_err(status)?
            .into_inner(),
        ScheduleCmd::Delete { name } => {
            let s = client
                .delete_schedule(one(name))
                .await
                .map_err(status)?
                .into_inner();
            if json {
                return print_json(&schedule_json(&s));
            }
            println!("schedule {} deleted", s.name);
            return Ok(());
        }
    };
    if json {
        print_json(&schedule_json(&s))
    } else {
        print_schedule(&s);
        Ok(())
    }
}

pub async fn backfill(client: &mut Client, cmd: BackfillCmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        BackfillCmd::Create {
            schedule,
            start,
            end,
            reverse,
            max_active,
            priority,
            reprocess,
            dry_run,
        } => {
            let out = client
                .create_backfill(v1::CreateBackfillRequest {
                    schedule,
                    start,
                    end,
                    reverse,
                    max_active,
                    priority,
                    reprocess,
                    dry_run,
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                return print_json(&serde_json::json!({
                    "backfill": out.backfill.as_ref().map(backfill_json),
                    "runs": out.runs,
                }));
            }
            match &out.backfill {
                Some(b) => println!(
                    "backfill {} of {} created: {} runs, {} at a time",
                    b.id,
                    b.schedule,
                    out.runs.len(),
                    b.max_active
                ),
                None => println!("dry run: {} runs would be created", out.runs.len()),
            }
            for ds in &out.runs {
                println!("  {ds}");
            }
        }
        BackfillCmd::List { schedule } => {
            let list = client
                .list_backfills(v1::ListBackfillsRequest {
                    schedule: schedule.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                return print_json(&serde_json::Value::Array(
                    list.backfills.iter().map(backfill_json).collect(),
                ));
            }
            let rows = list
                .backfills
                .iter()
                .map(|b| {
                    vec![
                        b.id.to_string(),
                        b.schedule.clone(),
                        format!("{}..{}", b.start, b.end),
                        b.status.clone(),
                        format!(
                            "{} done, {} running, {} failed, {} left",
                            b.done, b.running, b.failed, b.left
                        ),
                    ]
                })
                .collect();
            print_table(&["ID", "SCHEDULE", "RANGE", "STATUS", "PROGRESS"], rows);
        }
        BackfillCmd::Cancel { id } => {
            let b = client
                .cancel_backfill(v1::BackfillRef { id })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                return print_json(&backfill_json(&b));
            }
            println!(
                "backfill {} cancelled ({} done, {} failed, {} not run)",
                b.id, b.done, b.failed, b.left
            );
        }
    }
    Ok(())
}
