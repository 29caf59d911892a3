//! Schedules, their runs and backfills, against SQLite always and against a real PostgreSQL
//! when `FERRY_TEST_POSTGRES_URL` is set (`.ci/run` sets it up).

use chrono::{DateTime, TimeZone, Utc};
use ferry_core::workflow::WorkflowDef;
use ferry_store::{
    NewBackfill, NewSchedule, NewStep, NewTask, RunLink, Store, StoreError, TaskFilter, WriteBatch,
};

fn def(name: &str) -> WorkflowDef {
    WorkflowDef::from_yaml(&format!(
        "name: {name}\ndescription: scheduled\nsteps:\n  - {{name: a, kind: noop, placement: {{role: training}}}}\n"
    ))
    .expect("test workflow")
}

/// A run as the assertions compare it: date, task, backfill, attempts, task status.
type SeenRun<'a> = (
    DateTime<Utc>,
    Option<i64>,
    Option<i64>,
    i32,
    Option<&'a str>,
);

fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, d, 0, 0, 0)
        .single()
        .expect("a date")
}

fn new_schedule(name: &str, workflow: &str) -> NewSchedule {
    NewSchedule {
        name: name.into(),
        target: "workflow".into(),
        workflow: Some(workflow.into()),
        request: None,
        params: r#"{"date":"${ds}"}"#.into(),
        cron: "0 0 * * *".into(),
        timezone: "UTC".into(),
        catchup: "latest".into(),
        max_catchup: 10,
        concurrency: "queue".into(),
        priority: 3,
        paused: false,
    }
}

fn new_task(workflow_id: i64, workflow: &str, run: Option<RunLink>) -> NewTask {
    NewTask {
        name: "scheduled".into(),
        workflow_id,
        workflow_name: workflow.into(),
        params: "{}".into(),
        status: "running".into(),
        priority: 0,
        run,
        steps: vec![NewStep {
            step_name: "a".into(),
            step_order: 0,
            kind: "noop".into(),
            params: "{}".into(),
            placement: r#"{"role":"training"}"#.into(),
            depends_on: "[]".into(),
            exec_constraint: "NONE".into(),
            max_retries: 0,
            backoff_ms: 1000,
            timeout_secs: None,
            resources: None,
        }],
    }
}

fn link(schedule_id: i64, logical_date: DateTime<Utc>) -> Option<RunLink> {
    Some(RunLink {
        schedule_id,
        logical_date,
        backfill_id: None,
        replace: false,
    })
}

async fn task_count(store: &Store, workflow: &str) -> usize {
    store
        .find_tasks(&TaskFilter {
            workflow: Some(workflow.to_owned()),
            limit: 10_000,
            ..TaskFilter::default()
        })
        .await
        .expect("tasks")
        .len()
}

async fn exercise(store: Store, suffix: &str) {
    let wf_name = format!("sched_wf_{suffix}");
    let wf = store.apply_workflow(&def(&wf_name)).await.expect("apply");

    // ---- schedules: unique names, pause, cursor -----------------------------------------
    let name = format!("nightly_{suffix}");
    let s = store
        .insert_schedule(new_schedule(&name, &wf_name))
        .await
        .expect("insert schedule");
    assert_eq!(
        (s.name.as_str(), s.priority, s.paused, s.cursor),
        (name.as_str(), 3, false, None)
    );
    assert_eq!(s.workflow.as_deref(), Some(wf_name.as_str()));
    let err = store
        .insert_schedule(new_schedule(&name, &wf_name))
        .await
        .expect_err("the name is taken");
    assert!(
        matches!(&err, StoreError::Conflict(what) if what.contains(&name)),
        "{err}"
    );
    assert!(err.to_string().ends_with("already exists"), "{err}");
    assert_eq!(
        store.schedule_by_name(&name).await.expect("by name"),
        Some(s.clone())
    );
    assert_eq!(store.schedule(s.id).await.expect("by id"), Some(s.clone()));
    let other = store
        .insert_schedule(new_schedule(&format!("hourly_{suffix}"), &wf_name))
        .await
        .expect("another schedule");
    let listed: Vec<String> = store
        .list_schedules()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.ends_with(suffix))
        .collect();
    assert_eq!(
        listed,
        [format!("hourly_{suffix}"), name.clone()],
        "by name"
    );

    assert!(store.set_schedule_paused(s.id, true).await.expect("pause"));
    let paused = store.schedule(s.id).await.expect("read").expect("exists");
    assert!(paused.paused);
    assert!(paused.updated_at >= s.updated_at);
    assert!(
        !store
            .set_schedule_paused(i64::MAX / 2, true)
            .await
            .expect("no such")
    );
    assert!(
        store
            .set_schedule_paused(s.id, false)
            .await
            .expect("resume")
    );

    let cursor = |id: i64| {
        let store = store.clone();
        async move {
            store
                .schedule(id)
                .await
                .expect("read")
                .expect("exists")
                .cursor
        }
    };
    store
        .advance_schedule_cursor(s.id, day(5))
        .await
        .expect("advance");
    assert_eq!(cursor(s.id).await, Some(day(5)));
    store
        .advance_schedule_cursor(s.id, day(3))
        .await
        .expect("back");
    assert_eq!(
        cursor(s.id).await,
        Some(day(5)),
        "the cursor never moves back"
    );
    store
        .advance_schedule_cursor(s.id, day(5))
        .await
        .expect("same");
    assert_eq!(cursor(s.id).await, Some(day(5)));
    store
        .advance_schedule_cursor(s.id, day(6))
        .await
        .expect("forward");
    assert_eq!(cursor(s.id).await, Some(day(6)));
    assert_eq!(cursor(other.id).await, None, "only its own schedule moves");

    // ---- a task and its run, in one transaction ---------------------------------------
    let before = task_count(&store, &wf_name).await;
    let (t1, _) = store
        .insert_task(new_task(wf.id, &wf_name, link(s.id, day(1))), |_, p| {
            Ok(p.to_owned())
        })
        .await
        .expect("a task with its run");
    assert_eq!(task_count(&store, &wf_name).await, before + 1);
    let runs = store
        .schedule_runs(s.id, None, None, 100)
        .await
        .expect("runs");
    assert_eq!(runs.len(), 1);
    let (run, status) = &runs[0];
    assert_eq!(
        (run.logical_date, run.task_id, run.backfill_id, run.attempts),
        (day(1), Some(t1.id), None, 1)
    );
    assert_eq!(status.as_deref(), Some("running"));

    // The same date again: refused with its own error, and no task is stored.
    let err = store
        .insert_task(new_task(wf.id, &wf_name, link(s.id, day(1))), |_, p| {
            Ok(p.to_owned())
        })
        .await
        .expect_err("the date already has its run");
    assert!(
        matches!(err, StoreError::RunExists { schedule_id, logical_date }
            if schedule_id == s.id && logical_date == day(1)),
        "{err}"
    );
    assert_eq!(
        task_count(&store, &wf_name).await,
        before + 1,
        "no task stored"
    );

    // A step refused while rendering: neither the task nor its run is stored.
    let err = store
        .insert_task(new_task(wf.id, &wf_name, link(s.id, day(9))), |_, _| {
            Err("no".into())
        })
        .await
        .expect_err("refused");
    assert!(matches!(err, StoreError::Refused { .. }), "{err}");
    assert_eq!(task_count(&store, &wf_name).await, before + 1);
    assert_eq!(
        store
            .schedule_runs(s.id, Some(day(9)), None, 10)
            .await
            .expect("runs")
            .len(),
        0,
        "the run rolled back with its task"
    );

    // Two coordinators racing for the same date: exactly one wins.
    let (a, b) = tokio::join!(
        store.insert_task(new_task(wf.id, &wf_name, link(s.id, day(2))), |_, p| {
            Ok(p.to_owned())
        }),
        store.insert_task(new_task(wf.id, &wf_name, link(s.id, day(2))), |_, p| {
            Ok(p.to_owned())
        }),
    );
    let (won, lost) = match (a, b) {
        (Ok((t, _)), Err(e)) | (Err(e), Ok((t, _))) => (t, e),
        (a, b) => panic!(
            "exactly one must succeed: {:?} / {:?}",
            a.map(|t| t.0.id),
            b.map(|t| t.0.id)
        ),
    };
    assert!(matches!(lost, StoreError::RunExists { .. }), "{lost}");
    assert_eq!(task_count(&store, &wf_name).await, before + 2);
    let day2 = store
        .schedule_runs(s.id, Some(day(2)), Some(day(3)), 10)
        .await
        .expect("runs");
    assert_eq!(day2.len(), 1);
    assert_eq!(day2[0].0.task_id, Some(won.id));

    // ---- a backfill re-running a date, and one running a new date ---------------------
    let bf = store
        .insert_backfill(NewBackfill {
            schedule_id: s.id,
            start_date: "2026-01-01".into(),
            end_date: "2026-01-04".into(),
            reverse: true,
            max_active: 2,
            priority: 7,
            reprocess: "all".into(),
        })
        .await
        .expect("backfill");
    assert_eq!(
        (
            bf.status.as_str(),
            bf.finished_at,
            bf.reverse,
            bf.max_active
        ),
        ("running", None, true, 2)
    );
    let replace = |date: DateTime<Utc>| {
        Some(RunLink {
            schedule_id: s.id,
            logical_date: date,
            backfill_id: Some(bf.id),
            replace: true,
        })
    };
    let (t1b, _) = store
        .insert_task(new_task(wf.id, &wf_name, replace(day(1))), |_, p| {
            Ok(p.to_owned())
        })
        .await
        .expect("re-run day 1");
    let (t1c, _) = store
        .insert_task(new_task(wf.id, &wf_name, replace(day(1))), |_, p| {
            Ok(p.to_owned())
        })
        .await
        .expect("re-run day 1 again");
    let (t4, _) = store
        .insert_task(new_task(wf.id, &wf_name, replace(day(4))), |_, p| {
            Ok(p.to_owned())
        })
        .await
        .expect("backfill a new date");
    assert_eq!(task_count(&store, &wf_name).await, before + 5);

    // Statuses come from the tasks: complete the first re-run's successor.
    let mut done = store.task(t1c.id).await.expect("read").expect("exists");
    done.status = "completed".into();
    let mut batch = WriteBatch {
        tasks: vec![done],
        ..Default::default()
    };
    store.commit(&mut batch).await.expect("commit");

    let runs = store
        .schedule_runs(s.id, None, None, 100)
        .await
        .expect("runs");
    let seen: Vec<SeenRun<'_>> = runs
        .iter()
        .map(|(r, st)| {
            (
                r.logical_date,
                r.task_id,
                r.backfill_id,
                r.attempts,
                st.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (day(1), Some(t1c.id), Some(bf.id), 3, Some("completed")),
            (day(2), Some(won.id), None, 1, Some("running")),
            (day(4), Some(t4.id), Some(bf.id), 1, Some("running")),
        ],
        "oldest first, re-runs counted, statuses from the tasks"
    );
    assert_ne!(t1b.id, t1c.id);
    let limited = store
        .schedule_runs(s.id, Some(day(2)), None, 1)
        .await
        .expect("limited");
    assert_eq!(
        limited.iter().map(|r| r.0.logical_date).collect::<Vec<_>>(),
        [day(2)]
    );
    let (latest, status) = store
        .latest_scheduled_run(s.id)
        .await
        .expect("latest")
        .expect("there is one");
    // Day 4 is a backfill's: the newest scheduled run is day 2's.
    assert_eq!(
        (latest.logical_date, status.as_deref()),
        (day(2), Some("running"))
    );
    assert_eq!(
        store.latest_scheduled_run(other.id).await.expect("latest"),
        None
    );
    let of_backfill: Vec<DateTime<Utc>> = store
        .runs_of_backfill(bf.id)
        .await
        .expect("backfill runs")
        .into_iter()
        .map(|(r, _)| r.logical_date)
        .collect();
    assert_eq!(of_backfill, [day(1), day(4)]);

    // ---- backfill status --------------------------------------------------------------
    let bf2 = store
        .insert_backfill(NewBackfill {
            schedule_id: other.id,
            start_date: "2026-01-01".into(),
            end_date: "2026-01-02".into(),
            reverse: false,
            max_active: 1,
            priority: 0,
            reprocess: "missing".into(),
        })
        .await
        .expect("another backfill");
    let active = |store: &Store| {
        let store = store.clone();
        async move {
            store
                .active_backfills()
                .await
                .expect("active")
                .into_iter()
                .map(|b| b.id)
                .filter(|id| [bf.id, bf2.id].contains(id))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(active(&store).await, [bf.id, bf2.id]);
    store
        .set_backfill_status(bf.id, "completed")
        .await
        .expect("complete");
    let finished = store.backfill(bf.id).await.expect("read").expect("exists");
    assert_eq!(finished.status, "completed");
    assert!(finished.finished_at.is_some());
    assert_eq!(active(&store).await, [bf2.id]);
    store
        .set_backfill_status(bf2.id, "cancelled")
        .await
        .expect("cancel");
    assert!(
        store
            .backfill(bf2.id)
            .await
            .expect("read")
            .expect("exists")
            .finished_at
            .is_some()
    );
    store
        .set_backfill_status(bf2.id, "running")
        .await
        .expect("resume");
    assert_eq!(
        store
            .backfill(bf2.id)
            .await
            .expect("read")
            .expect("exists")
            .finished_at,
        None
    );
    let of_s: Vec<i64> = store
        .list_backfills(Some(s.id))
        .await
        .expect("list")
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(of_s, [bf.id]);
    let all: Vec<i64> = store
        .list_backfills(None)
        .await
        .expect("list")
        .into_iter()
        .map(|b| b.id)
        .filter(|id| [bf.id, bf2.id].contains(id))
        .collect();
    assert_eq!(all, [bf2.id, bf.id], "newest first");

    // ---- deleting a schedule takes its runs and backfills, not its tasks ---------------
    assert!(store.delete_schedule(s.id).await.expect("delete"));
    assert_eq!(store.schedule(s.id).await.expect("read"), None);
    assert!(
        store
            .schedule_runs(s.id, None, None, 100)
            .await
            .expect("runs")
            .is_empty()
    );
    assert!(
        store
            .runs_of_backfill(bf.id)
            .await
            .expect("runs")
            .is_empty()
    );
    assert_eq!(store.backfill(bf.id).await.expect("read"), None);
    assert!(store.backfill(bf2.id).await.expect("read").is_some());
    assert_eq!(task_count(&store, &wf_name).await, before + 5, "tasks stay");
    assert!(store.task(t1.id).await.expect("read").is_some());
    assert!(!store.delete_schedule(s.id).await.expect("again"));
    // The name is free again.
    store
        .insert_schedule(new_schedule(&name, &wf_name))
        .await
        .expect("the name is free again");
}

#[tokio::test]
async fn sqlite_schedules_runs_and_backfills() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("ferry.db").display()
    );
    let store = Store::connect(&url).await.expect("connect");
    exercise(store.clone(), "sqlite").await;

    // The migration goes down and up again.
    use sea_orm_migration::MigratorTrait;
    ferry_store::migration::Migrator::down(store.connection(), Some(1))
        .await
        .expect("down");
    assert!(store.list_schedules().await.is_err(), "the table is gone");
    ferry_store::migration::Migrator::up(store.connection(), None)
        .await
        .expect("up again");
    assert!(store.list_schedules().await.expect("list").is_empty());
}

#[tokio::test]
async fn postgres_schedules_runs_and_backfills() {
    let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") else {
        eprintln!("FERRY_TEST_POSTGRES_URL is not set: the PostgreSQL tier is skipped");
        return;
    };
    let suffix = format!("pg_{}", std::process::id());
    exercise(
        Store::connect(&url).await.expect("connect to PostgreSQL"),
        &suffix,
    )
    .await;
}
