//! The engine in process: a real engine on a real store (SQLite in a temporary directory),
//! scripted agents on channels, and a clock the test moves by hand. Scheduling, retries,
//! timeouts, agent loss and recovery, each in milliseconds; the real-process tests in
//! `tests/` (crate `ferry-e2e`) cover the same engine through the daemons.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_coordinator::engine::{
    AgentTx, ApiRequest, Clock, Engine, EngineHandle, EngineMsg, EngineSettings,
};
use ferry_coordinator::observe::Observer;
use ferry_core::config::NotificationConfig;
use ferry_core::workflow::WorkflowDef;
use ferry_proto::v1::{self, agent_message, coordinator_message, job_event};
use ferry_store::Store;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

struct Harness {
    _dir: tempfile::TempDir,
    url: String,
    clock: Clock,
    handle: EngineHandle,
    store: Store,
    shutdown: CancellationToken,
    engine: tokio::task::JoinHandle<()>,
    next_conn: u64,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("ferry.db").display()
        );
        let clock = Clock::manual();
        let (store, handle, shutdown, engine) = start(&url, &clock).await;
        Harness {
            _dir: dir,
            url,
            clock,
            handle,
            store,
            shutdown,
            engine,
            next_conn: 1,
        }
    }

    /// Stops the engine (committing what it decided) and starts a new one on the same
    /// database, as a coordinator restart does. Agents must attach again.
    async fn restart(&mut self) {
        self.shutdown.cancel();
        (&mut self.engine).await.expect("engine stops");
        let (store, handle, shutdown, engine) = start(&self.url, &self.clock).await;
        self.store = store;
        self.handle = handle;
        self.shutdown = shutdown;
        self.engine = engine;
    }

    async fn agent(&mut self, name: &str, role: &str, jobs: Vec<v1::JobReport>) -> FakeAgent {
        self.agent_with(name, role, jobs, 0, &[]).await
    }

    /// An agent that declares `slots` (0: not limited) and `gpus`.
    async fn agent_with(
        &mut self,
        name: &str,
        role: &str,
        jobs: Vec<v1::JobReport>,
        slots: u32,
        gpus: &[u32],
    ) -> FakeAgent {
        let conn_id = self.next_conn;
        self.next_conn += 1;
        let (tx, rx): (AgentTx, _) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.handle
            .send(EngineMsg::AgentAttached {
                conn_id,
                register: v1::Register {
                    agent_name: name.into(),
                    role: role.into(),
                    kinds: vec!["noop".into(), "exec".into()],
                    jobs,
                    slots,
                    gpus: gpus.to_vec(),
                    ..Default::default()
                },
                tx,
                reply,
            })
            .await
            .expect("engine up");
        answer.await.expect("answer").expect("registered");
        let mut agent = FakeAgent {
            name: name.into(),
            conn_id,
            rx,
            handle: self.handle.clone(),
        };
        match agent.next().await {
            coordinator_message::Msg::Registered(_) => {}
            other => panic!("expected Registered, got {other:?}"),
        }
        agent
    }

    async fn apply(&self, yaml: &str) {
        let def = WorkflowDef::from_yaml(yaml).expect("valid workflow");
        self.store.apply_workflow(&def).await.expect("stored");
    }

    async fn create(&self, workflow: &str) -> i64 {
        self.handle
            .request(|reply| ApiRequest::CreateTask {
                workflow: workflow.into(),
                name: String::new(),
                params: BTreeMap::new(),
                opts: Default::default(),
                reply,
            })
            .await
            .expect("task created")
            .id
    }

    async fn request(
        &self,
        make: impl FnOnce(
            oneshot::Sender<
                Result<ferry_store::workflow_task::Model, ferry_coordinator::EngineError>,
            >,
        ) -> ApiRequest,
    ) -> Result<ferry_store::workflow_task::Model, ferry_coordinator::EngineError> {
        self.handle.request(make).await
    }

    /// Waits until every message sent so far was handled and its turn committed and sent:
    /// two round trips (the first may share a turn with earlier messages; the second comes
    /// after that turn's commit).
    async fn settle(&self) {
        for _ in 0..2 {
            self.handle.list_agents().await.expect("engine up");
        }
    }

    /// Moves the engine's clock (once what was sent before is handled) and runs its
    /// periodic checks.
    async fn advance(&self, by: Duration) {
        self.settle().await;
        self.clock.advance(by);
        self.handle.send(EngineMsg::Tick).await.expect("engine up");
        self.settle().await;
    }

    /// Lets `by` pass in steps of at most a second, the `alive` agents heartbeating at each.
    async fn pass(&self, by: Duration, alive: &[&FakeAgent]) {
        let mut left = by;
        while !left.is_zero() {
            for a in alive {
                a.heartbeat().await;
            }
            let step = left.min(Duration::from_secs(1));
            self.advance(step).await;
            left -= step;
        }
    }

    async fn status(&self, task: i64) -> (String, Vec<(String, String, i32)>) {
        self.settle().await;
        let row = self.store.task(task).await.expect("read").expect("task");
        let steps = self
            .store
            .steps(task)
            .await
            .expect("read")
            .into_iter()
            .map(|s| (s.step_name, s.status, s.attempt))
            .collect();
        (row.status, steps)
    }

    async fn logs(&self, task: i64) -> String {
        self.settle().await;
        self.store
            .logs(task, 0, 10_000)
            .await
            .expect("logs")
            .into_iter()
            .map(|l| format!("[{}] {}\n", l.step_name, l.message))
            .collect()
    }
}

async fn start(
    url: &str,
    clock: &Clock,
) -> (
    Store,
    EngineHandle,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let store = Store::connect(url).await.expect("store");
    let settings = EngineSettings {
        heartbeat: Duration::from_secs(1),
        agent_timeout: AGENT_TIMEOUT,
        auto_resume: true,
        pipeline: Default::default(),
        observer: Observer::new(NotificationConfig::default()),
        coordinator_name: "harness".into(),
        clock: clock.clone(),
        pools: BTreeMap::from([("hive".to_owned(), 2)]),
    };
    let (engine, handle) = Engine::start(store.clone(), settings)
        .await
        .expect("engine starts");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(engine.run(shutdown.clone()));
    (store, handle, shutdown, task)
}

struct FakeAgent {
    name: String,
    conn_id: u64,
    rx: mpsc::UnboundedReceiver<Result<v1::CoordinatorMessage, tonic::Status>>,
    handle: EngineHandle,
}

impl FakeAgent {
    async fn next(&mut self) -> coordinator_message::Msg {
        let got = tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no command within 5 s", self.name));
        got.expect("stream open")
            .expect("no error")
            .msg
            .expect("a message")
    }

    /// Nothing was sent to this agent (call after `Harness::settle`).
    fn nothing(&mut self) {
        if let Ok(m) = self.rx.try_recv() {
            panic!("{}: expected no command, got {m:?}", self.name);
        }
    }

    async fn expect_create(&mut self) -> v1::CreateJob {
        match self.next().await {
            coordinator_message::Msg::CreateJob(c) => c,
            other => panic!("{}: expected CreateJob, got {other:?}", self.name),
        }
    }

    async fn expect_start(&mut self, job: &str) {
        match self.next().await {
            coordinator_message::Msg::StartJob(s) => assert_eq!(s.job_id, job),
            other => panic!("{}: expected StartJob, got {other:?}", self.name),
        }
    }

    async fn expect_cancel(&mut self, job: &str) {
        match self.next().await {
            coordinator_message::Msg::CancelJob(c) => assert_eq!(c.job_id, job),
            other => panic!("{}: expected CancelJob of {job}, got {other:?}", self.name),
        }
    }

    async fn send(&self, msg: agent_message::Msg) {
        self.send_numbered(0, msg).await;
    }

    async fn send_numbered(&self, seq: u64, msg: agent_message::Msg) {
        self.handle
            .send(EngineMsg::FromAgent {
                name: self.name.clone(),
                conn_id: self.conn_id,
                seq,
                msg,
            })
            .await
            .expect("engine up");
    }

    async fn event(&self, job: &str, event: job_event::Event) {
        self.send(agent_message::Msg::JobEvent(v1::JobEvent {
            job_id: job.into(),
            event: Some(event),
        }))
        .await;
    }

    async fn state(&self, job: &str, state: v1::JobState, error: &str) {
        self.event(
            job,
            job_event::Event::State(v1::JobStateChange {
                state: state as i32,
                error: error.into(),
                error_class: v1::ErrorClass::Transient as i32,
            }),
        )
        .await;
    }

    async fn heartbeat(&self) {
        self.send(agent_message::Msg::Heartbeat(v1::Heartbeat {
            seq: 1,
            running_jobs: 0,
        }))
        .await;
    }

    /// Answers the next create with `job`, then reports it running once started.
    async fn take_job(&mut self, job: &str) -> v1::CreateJob {
        let create = self.expect_create().await;
        self.send(agent_message::Msg::JobCreated(v1::JobCreated {
            request_id: create.request_id,
            job_id: job.into(),
            error: String::new(),
        }))
        .await;
        self.expect_start(job).await;
        self.state(job, v1::JobState::Running, "").await;
        create
    }

    async fn finish(&mut self, job: &str) {
        self.state(job, v1::JobState::Completed, "").await;
        match self.next().await {
            coordinator_message::Msg::ForgetJob(f) => assert_eq!(f.job_id, job),
            other => panic!("{}: expected ForgetJob, got {other:?}", self.name),
        }
    }
}

/// What an agent reports at registration of its job for step `a`, first attempt.
fn report(job: &str, task: i64, state: v1::JobState) -> v1::JobReport {
    v1::JobReport {
        job_id: job.into(),
        task_id: task,
        step: "a".into(),
        attempt: 1,
        state: state as i32,
        ..Default::default()
    }
}

fn chain(name: &str, extra: &str) -> String {
    format!(
        "name: {name}\nsteps:\n  - {{name: a, kind: noop, placement: {{agent: one}}{extra}}}\n  - {{name: b, kind: noop, placement: {{agent: two}}, inputs: [a]}}\n"
    )
}

#[tokio::test]
async fn a_chain_runs_across_two_agents_in_input_order() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let mut two = h.agent("two", "training", vec![]).await;
    h.apply(&chain("c", "")).await;
    let task = h.create("c").await;
    let create = one.take_job("j-a").await;
    assert_eq!((create.step.as_str(), create.attempt), ("a", 1));
    h.settle().await;
    two.nothing(); // b waits for a (INPUTS_READY)
    one.finish("j-a").await;
    two.take_job("j-b").await;
    two.finish("j-b").await;
    let (status, steps) = h.status(task).await;
    assert_eq!(status, "completed");
    assert!(
        steps
            .iter()
            .all(|(_, s, attempt)| s == "completed" && *attempt == 1)
    );
}

#[tokio::test]
async fn a_transient_failure_waits_its_backoff_then_runs_again() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let two = h.agent("two", "training", vec![]).await;
    h.apply(&chain("c", ", retry: {max_retries: 2, backoff_ms: 10000}"))
        .await;
    let task = h.create("c").await;
    one.take_job("j1").await;
    one.state("j1", v1::JobState::Failed, "disk hiccup").await;
    let _forget = one.next().await;
    h.pass(Duration::from_secs(9), &[&one, &two]).await;
    one.nothing(); // still backing off
    let (_, steps) = h.status(task).await;
    assert_eq!(steps[0].1, "pending");
    h.pass(Duration::from_secs(1), &[&one, &two]).await;
    let again = one.expect_create().await;
    assert_eq!(again.attempt, 2);
    assert!(
        h.logs(task)
            .await
            .contains("attempt failed: disk hiccup; retry 1/2 in 10.0s")
    );
}

#[tokio::test]
async fn a_retry_timer_firing_after_a_pause_dispatches_nothing_until_resume() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let two = h.agent("two", "training", vec![]).await;
    h.apply(&chain("c", ", retry: {max_retries: 2, backoff_ms: 1000}"))
        .await;
    let task = h.create("c").await;
    one.take_job("j1").await;
    one.state("j1", v1::JobState::Failed, "flaky").await;
    let _forget = one.next().await;
    h.request(|reply| ApiRequest::Pause {
        task_id: task,
        reply,
    })
    .await
    .expect("paused");
    h.pass(Duration::from_secs(5), &[&one, &two]).await;
    one.nothing();
    h.request(|reply| ApiRequest::Resume {
        task_id: task,
        reply,
    })
    .await
    .expect("resumed");
    assert_eq!(one.expect_create().await.attempt, 2);
}

#[tokio::test]
async fn an_unanswered_create_is_dispatched_again_and_a_late_answer_cancelled() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let _two = h.agent("two", "training", vec![]).await;
    h.apply(&chain("c", "")).await;
    let task = h.create("c").await;
    let first = one.expect_create().await; // never answered in time
    h.pass(Duration::from_secs(3), &[&one]).await;
    one.nothing();
    h.pass(Duration::from_secs(1), &[&one]).await;
    let second = one.expect_create().await;
    assert_eq!(second.attempt, 2);
    assert_ne!(second.request_id, first.request_id);
    // The first answer arrives now: nobody wants that job.
    one.send(agent_message::Msg::JobCreated(v1::JobCreated {
        request_id: first.request_id,
        job_id: "late".into(),
        error: String::new(),
    }))
    .await;
    one.expect_cancel("late").await;
    assert!(
        h.logs(task)
            .await
            .contains("agent one did not acknowledge the job within 3s; dispatching again")
    );
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_cancelled_and_retried() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    h.apply(&chain(
        "c",
        ", timeout_secs: 60, retry: {max_retries: 1, backoff_ms: 100}",
    ))
    .await;
    let task = h.create("c").await;
    one.take_job("j1").await;
    h.pass(Duration::from_secs(59), &[&one]).await;
    one.nothing();
    h.pass(Duration::from_secs(1), &[&one]).await; // 60 s
    one.expect_cancel("j1").await;
    h.pass(Duration::from_secs(1), &[&one]).await;
    assert_eq!(one.expect_create().await.attempt, 2);
    assert!(
        h.logs(task)
            .await
            .contains("attempt 1 timed out after 60s (timeout_secs)")
    );
}

#[tokio::test]
async fn a_silent_agent_loses_its_step_to_another() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let mut two = h.agent("two", "training", vec![]).await;
    h.apply("name: r\nsteps:\n  - {name: a, kind: noop, placement: {role: training}}\n")
        .await;
    let task = h.create("r").await;
    // Placed on the first agent by name order (both idle).
    one.take_job("j1").await;
    h.pass(Duration::from_secs(4), &[&two]).await;
    let (_, steps) = h.status(task).await;
    assert_eq!(steps[0].1, "pending", "{steps:?}");
    h.pass(Duration::from_secs(2), &[&two]).await; // the retry back-off
    let create = two.expect_create().await;
    assert_eq!(create.attempt, 2);
    assert!(
        h.logs(task)
            .await
            .contains("agent one unreachable for more than 3s")
    );
}

#[tokio::test]
async fn a_completion_racing_a_cancel_leaves_the_step_cancelled() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let _two = h.agent("two", "training", vec![]).await;
    h.apply(&chain("c", "")).await;
    let task = h.create("c").await;
    one.take_job("j1").await;
    h.request(|reply| ApiRequest::Cancel {
        task_id: task,
        reply,
    })
    .await
    .expect("cancelled");
    one.expect_cancel("j1").await;
    // The job had finished before the cancel reached the agent.
    one.state("j1", v1::JobState::Completed, "").await;
    let (status, steps) = h.status(task).await;
    assert_eq!(status, "cancelled");
    assert_eq!(steps[0].1, "cancelled");
    assert_eq!(steps[1].1, "cancelled");
}

#[tokio::test]
async fn a_job_reported_after_the_engine_gave_it_up_is_cancelled() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let mut two = h.agent("two", "training", vec![]).await;
    h.apply("name: r\nsteps:\n  - {name: a, kind: noop, placement: {role: training}, retry: {backoff_ms: 100}}\n")
        .await;
    let task = h.create("r").await;
    one.take_job("old").await;
    // `one` goes silent; its step moves to `two`.
    h.pass(Duration::from_secs(5), &[&two]).await;
    two.take_job("new").await;
    // `one` comes back and reports its old job still running: it is told to stop it, and the
    // step stays with `two`.
    let mut back = h
        .agent(
            "one",
            "training",
            vec![report("old", task, v1::JobState::Running)],
        )
        .await;
    back.expect_cancel("old").await;
    two.finish("new").await;
    let (status, steps) = h.status(task).await;
    assert_eq!(status, "completed");
    assert_eq!(steps[0].2, 2, "the second attempt completed it");
    drop(one);
}

#[tokio::test]
async fn a_job_that_finished_while_the_coordinator_was_down_is_not_run_again() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let _two = h.agent("two", "training", vec![]).await;
    h.apply(&chain("c", "")).await;
    let task = h.create("c").await;
    one.take_job("j-a").await;
    h.settle().await;
    h.restart().await;
    // The job completed meanwhile; the agent says so at registration.
    let mut one = h
        .agent(
            "one",
            "training",
            vec![v1::JobReport {
                metrics: vec![v1::JobMetric {
                    name: "rows".into(),
                    value: 10.0,
                    index: 0,
                }],
                ..report("j-a", task, v1::JobState::Completed)
            }],
        )
        .await;
    match one.next().await {
        coordinator_message::Msg::ForgetJob(f) => assert_eq!(f.job_id, "j-a"),
        other => panic!("expected ForgetJob, got {other:?}"),
    }
    let mut two = h.agent("two", "training", vec![]).await;
    two.take_job("j-b").await;
    two.finish("j-b").await;
    h.settle().await;
    one.nothing(); // a ran once
    let (status, steps) = h.status(task).await;
    assert_eq!(status, "completed");
    assert_eq!(steps[0].2, 1);
    let metrics = h.store.metrics(task).await.expect("metrics");
    assert_eq!(
        metrics.len(),
        1,
        "the metric reported at registration was kept"
    );
}

#[tokio::test]
async fn a_nan_metric_is_refused_and_the_engine_goes_on() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let mut two = h.agent("two", "training", vec![]).await;
    h.apply(&chain("c", "")).await;
    let task = h.create("c").await;
    one.take_job("j-a").await;
    for (name, value) in [("loss", f64::NAN), ("loss", f64::INFINITY), ("auc", 0.75)] {
        one.event(
            "j-a",
            job_event::Event::Metric(v1::JobMetric {
                name: name.into(),
                value,
                index: 1,
            }),
        )
        .await;
    }
    one.event(
        "j-a",
        job_event::Event::Log(v1::JobLog {
            level: v1::LogLevel::Info as i32,
            source: "stdout".into(),
            message: "nul\0byte".into(),
            timestamp: String::new(),
        }),
    )
    .await;
    one.finish("j-a").await;
    two.take_job("j-b").await;
    two.finish("j-b").await;
    let (status, _) = h.status(task).await;
    assert_eq!(status, "completed");
    let metrics = h.store.metrics(task).await.expect("metrics");
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0].name, "auc");
    let logs = h.logs(task).await;
    assert!(
        logs.contains("metric `loss` = NaN is not a finite number; not stored"),
        "{logs}"
    );
    assert!(logs.contains("nul\u{FFFD}byte"), "{logs}");
    // And the next task runs.
    let next = h.create("c").await;
    one.take_job("j-a2").await;
    one.finish("j-a2").await;
    two.take_job("j-b2").await;
    two.finish("j-b2").await;
    assert_eq!(h.status(next).await.0, "completed");
}

#[tokio::test]
async fn a_step_whose_parameters_cannot_fit_a_job_is_refused_at_creation() {
    let h = Harness::new().await;
    let big = "x".repeat(ferry_core::limits::STEP_PARAMS_BYTES + 1);
    h.apply(&format!(
        "name: big\nsteps:\n  - {{name: small, kind: noop, placement: {{role: training}}}}\n  - {{name: huge, kind: exec, placement: {{role: training}}, params: {{program: echo, args: [\"{big}\"]}}}}\n"
    ))
    .await;
    let err = h
        .handle
        .request(|reply| ApiRequest::CreateTask {
            workflow: "big".into(),
            name: String::new(),
            params: BTreeMap::new(),
            opts: Default::default(),
            reply,
        })
        .await
        .expect_err("too large for a CreateJob");
    let text = err.to_string();
    assert!(
        text.starts_with("step `huge`: its rendered parameters take 1048"),
        "{text}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::InvalidArgument
    );
    // Nothing half-created.
    assert!(h.store.list_tasks(None, 10).await.expect("list").is_empty());
}

fn log_line(job: &str, text: &str) -> agent_message::Msg {
    agent_message::Msg::JobEvent(v1::JobEvent {
        job_id: job.into(),
        event: Some(job_event::Event::Log(v1::JobLog {
            level: v1::LogLevel::Info as i32,
            source: "stdout".into(),
            message: text.into(),
            timestamp: String::new(),
        })),
    })
}

#[tokio::test]
async fn numbered_events_sent_again_are_stored_once_and_acknowledged_after_the_commit() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let _two = h.agent("two", "training", vec![]).await;
    h.apply(&chain("c", "")).await;
    let task = h.create("c").await;
    one.take_job("j").await;
    for seq in 1..=2 {
        one.send_numbered(seq, log_line("j", &format!("line {seq}")))
            .await;
    }
    match one.next().await {
        coordinator_message::Msg::Ack(a) => assert_eq!(a.seq, 2),
        other => panic!("expected Ack, got {other:?}"),
    }
    // The stream breaks; the agent reconnects (same instance) and sends everything from 1
    // again, then more.
    h.handle
        .send(EngineMsg::AgentDetached {
            name: "one".into(),
            conn_id: one.conn_id,
        })
        .await
        .expect("engine up");
    let mut again = h
        .agent(
            "one",
            "training",
            vec![report("j", task, v1::JobState::Running)],
        )
        .await;
    for seq in 1..=3 {
        again
            .send_numbered(seq, log_line("j", &format!("line {seq}")))
            .await;
    }
    h.settle().await;
    let logs = h.logs(task).await;
    for n in 1..=3 {
        assert_eq!(
            logs.matches(&format!("line {n}\n")).count(),
            1,
            "line {n} once: {logs}"
        );
    }
    let mut acked = 0;
    while let Ok(Ok(m)) = again.rx.try_recv() {
        if let Some(coordinator_message::Msg::Ack(a)) = m.msg {
            acked = acked.max(a.seq);
        }
    }
    assert_eq!(acked, 3);
    // After a coordinator restart the cursor is read back: 3 is still known as stored.
    h.restart().await;
    let again = h
        .agent(
            "one",
            "training",
            vec![report("j", task, v1::JobState::Running)],
        )
        .await;
    again.send_numbered(3, log_line("j", "line 3")).await;
    again.send_numbered(4, log_line("j", "line 4")).await;
    let logs = h.logs(task).await;
    assert_eq!(logs.matches("line 3\n").count(), 1, "{logs}");
    assert_eq!(logs.matches("line 4\n").count(), 1, "{logs}");
}

/// Attaches under `name` and returns the engine's answer (without reading messages).
async fn try_attach(h: &mut Harness, name: &str) -> Result<(), String> {
    let conn_id = h.next_conn;
    h.next_conn += 1;
    let (tx, _rx): (AgentTx, _) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    h.handle
        .send(EngineMsg::AgentAttached {
            conn_id,
            register: v1::Register {
                agent_name: name.into(),
                role: "training".into(),
                kinds: vec!["noop".into()],
                ..Default::default()
            },
            tx,
            reply,
        })
        .await
        .expect("engine up");
    answer.await.expect("answer").map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_second_connection_under_a_live_name_is_refused_until_the_first_falls_silent() {
    let mut h = Harness::new().await;
    let one = h.agent("one", "training", vec![]).await;
    let refused = try_attach(&mut h, "one").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("agent `one` is already connected")),
        "{refused:?}"
    );
    // Still refused while the first heartbeats.
    h.pass(Duration::from_secs(5), &[&one]).await;
    assert!(try_attach(&mut h, "one").await.is_err());
    // Silent past the timeout: the name may be taken again (the agent reconnecting).
    h.pass(AGENT_TIMEOUT + Duration::from_secs(1), &[]).await;
    assert_eq!(try_attach(&mut h, "one").await, Ok(()));
}

#[tokio::test]
async fn reports_about_another_agents_job_are_dropped() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    let mut evil = h.agent("evil", "training", vec![]).await;
    h.apply(&chain("c", "")).await;
    let task = h.create("c").await;
    // A forged answer to the create sent to `one` is dropped; `one`'s own answer counts.
    let create = one.expect_create().await;
    evil.send(agent_message::Msg::JobCreated(v1::JobCreated {
        request_id: create.request_id,
        job_id: "forged".into(),
        error: String::new(),
    }))
    .await;
    h.settle().await;
    evil.nothing();
    one.send(agent_message::Msg::JobCreated(v1::JobCreated {
        request_id: create.request_id,
        job_id: "j1".into(),
        error: String::new(),
    }))
    .await;
    one.expect_start("j1").await;
    one.state("j1", v1::JobState::Running, "").await;
    // A forged COMPLETED for `one`'s job changes nothing.
    evil.state("j1", v1::JobState::Completed, "").await;
    let (_, steps) = h.status(task).await;
    assert_eq!(steps[0].1, "running", "{steps:?}");
    evil.nothing();
    one.nothing();
    // The real agent's report still counts.
    one.finish("j1").await;
    let (_, steps) = h.status(task).await;
    assert_eq!(steps[0].1, "completed", "{steps:?}");
}

impl FakeAgent {
    async fn fail(&mut self, job: &str, error: &str, class: v1::ErrorClass) {
        self.event(
            job,
            job_event::Event::State(v1::JobStateChange {
                state: v1::JobState::Failed as i32,
                error: error.into(),
                error_class: class as i32,
            }),
        )
        .await;
        match self.next().await {
            coordinator_message::Msg::ForgetJob(f) => assert_eq!(f.job_id, job),
            other => panic!("{}: expected ForgetJob, got {other:?}", self.name),
        }
    }
}

#[tokio::test]
async fn an_approval_holds_only_for_the_parameters_it_was_given_for() {
    let mut h = Harness::new().await;
    let mut one = h.agent("one", "training", vec![]).await;
    h.apply(
        "name: g\nsteps:\n  - {name: a, kind: exec, placement: {agent: one}, params: {program: \"true\"}}\n",
    )
    .await;
    let task = h.create("g").await;
    one.take_job("j1").await;
    one.fail("j1", "loads into prod.t", v1::ErrorClass::Approval)
        .await;
    let (status, steps) = h.status(task).await;
    assert_eq!(
        (status.as_str(), steps[0].1.as_str()),
        ("paused", "awaiting_approval")
    );
    let decide = |reply| ApiRequest::Decide {
        task_id: task,
        step: "a".into(),
        approve: true,
        user: "alice".into(),
        comment: String::new(),
        reply,
    };
    h.request(decide).await.expect("approved");
    let approved = |c: &v1::CreateJob| {
        serde_json::from_str::<serde_json::Value>(&c.checkpoint_json)
            .ok()
            .and_then(|v| v["approval"]["decision"].as_str().map(str::to_owned))
            == Some("approved".into())
    };
    let second = one.take_job("j2").await;
    assert!(approved(&second), "{}", second.checkpoint_json);
    // The approved attempt fails; retried unchanged, the approval still holds.
    one.fail("j2", "parts dir missing", v1::ErrorClass::Permanent)
        .await;
    h.request(|reply| ApiRequest::Retry {
        task_id: task,
        reply,
    })
    .await
    .expect("retry");
    let third = one.take_job("j3").await;
    assert!(approved(&third), "{}", third.checkpoint_json);
    one.fail("j3", "parts dir missing", v1::ErrorClass::Permanent)
        .await;
    // Retried with other parameters, it asks again.
    h.request(|reply| ApiRequest::UpdateStepParams {
        task_id: task,
        step: "a".into(),
        patch: serde_json::json!({"args": ["--table", "prod.other"]}),
        user: "bob".into(),
        reply,
    })
    .await
    .expect("params changed");
    h.request(|reply| ApiRequest::Retry {
        task_id: task,
        reply,
    })
    .await
    .expect("retry");
    let fourth = one.take_job("j4").await;
    assert!(!approved(&fourth), "{}", fourth.checkpoint_json);
    assert!(h.logs(task).await.contains(
        "the decision by alice was for other parameters or inputs; the step asks for approval again"
    ));
}

#[tokio::test]
async fn a_placeholder_that_renders_into_a_path_is_refused_at_creation() {
    let h = Harness::new().await;
    h.apply(
        "name: t\nsteps:\n  - {name: train, kind: train, placement: {role: training}, params: {dataset_id: \"${param.x}\", sample_dir: /d, model: {model: DeepFM, model_id: m1}}}\n",
    )
    .await;
    let create = |x: &str| {
        let params = BTreeMap::from([("x".to_owned(), x.to_owned())]);
        move |reply| ApiRequest::CreateTask {
            workflow: "t".into(),
            name: String::new(),
            params,
            opts: Default::default(),
            reply,
        }
    };
    let refused = h.request(create("/tmp/escape")).await;
    assert!(
        refused.as_ref().is_err_and(|e| e
            .to_string()
            .contains("step `train` once its placeholders are filled in")),
        "{refused:?}"
    );
    h.request(create("campaign_1"))
        .await
        .expect("a plain name is fine");
}

// ---- capacity ----

/// `n` independent noop steps named `s0..`, each with `extra` (YAML flow-map entries).
fn independent(name: &str, n: usize, placement: &str, extra: &str) -> String {
    let mut yaml = format!("name: {name}\nsteps:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{name: s{i}, kind: noop, placement: {placement}{extra}}}\n"
        ));
    }
    yaml
}

impl FakeAgent {
    /// Creates answered so far: takes every create sent to this agent (answering and
    /// starting each), and returns them.
    async fn take_all(&mut self, h: &Harness, next_job: &mut u32) -> Vec<(String, v1::CreateJob)> {
        h.settle().await;
        let mut creates = Vec::new();
        while let Ok(m) = self.rx.try_recv() {
            match m.expect("no error").msg.expect("a message") {
                coordinator_message::Msg::CreateJob(c) => creates.push(c),
                coordinator_message::Msg::ForgetJob(_) => {}
                other => panic!("{}: expected CreateJob, got {other:?}", self.name),
            }
        }
        let mut taken = Vec::new();
        for c in creates {
            *next_job += 1;
            let job = format!("{}-j{next_job}", self.name);
            self.send(agent_message::Msg::JobCreated(v1::JobCreated {
                request_id: c.request_id,
                job_id: job.clone(),
                error: String::new(),
            }))
            .await;
            self.expect_start(&job).await;
            self.state(&job, v1::JobState::Running, "").await;
            taken.push((job, c));
        }
        taken
    }
}

#[tokio::test]
async fn ten_one_gpu_steps_on_two_slots_and_two_gpus_run_two_at_a_time_never_sharing_a_gpu() {
    let mut h = Harness::new().await;
    h.apply(&independent(
        "gpu_work",
        10,
        "{agent: gpu}",
        ", resources: {gpus: 1}",
    ))
    .await;
    let mut gpu = h.agent_with("gpu", "training", vec![], 2, &[0, 1]).await;
    let task = h.create("gpu_work").await;
    let mut next_job = 0;
    let mut running: Vec<(String, Vec<u32>)> = Vec::new();
    let mut done = 0;
    let mut most = 0;
    while done < 10 {
        for (job, c) in gpu.take_all(&h, &mut next_job).await {
            assert_eq!(c.gpu_ids.len(), 1, "one GPU per step: {c:?}");
            running.push((job, c.gpu_ids));
        }
        most = most.max(running.len());
        assert!(running.len() <= 2, "more than two at once: {running:?}");
        let mut held: Vec<u32> = running.iter().flat_map(|(_, g)| g.clone()).collect();
        held.sort_unstable();
        let before = held.len();
        held.dedup();
        assert_eq!(before, held.len(), "a GPU given twice: {running:?}");
        assert!(
            !running.is_empty(),
            "nothing runs and {done} of 10 are done"
        );
        // While two run, the rest wait in the queue, saying for what.
        if done == 0 {
            let queue = h.handle.list_queue().await.expect("queue");
            assert_eq!(queue.len(), 8, "{queue:?}");
            assert_eq!(queue[0].position, 1);
            assert!(
                queue[0].waits_for.contains("2 of 2 slots in use"),
                "{queue:?}"
            );
            assert_eq!(queue[0].needs, "1 slot, 1 GPU");
        }
        let (job, _) = running.remove(0);
        gpu.state(&job, v1::JobState::Completed, "").await;
        done += 1;
    }
    assert_eq!(most, 2, "two ran at once");
    let (status, _) = h.status(task).await;
    assert_eq!(status, "completed");
    assert!(h.handle.list_queue().await.expect("queue").is_empty());
}

#[tokio::test]
async fn two_hundred_one_slot_steps_over_fifty_one_slot_agents_run_fifty_at_a_time() {
    let mut h = Harness::new().await;
    h.apply(&independent("wide", 200, "{role: data_source}", ""))
        .await;
    let mut agents = Vec::new();
    for i in 0..50 {
        agents.push(
            h.agent_with(&format!("a{i:02}"), "data_source", vec![], 1, &[])
                .await,
        );
    }
    let task = h.create("wide").await;
    let mut next_job = 0;
    for round in 0..4 {
        let mut started = Vec::new();
        for a in &mut agents {
            let taken = a.take_all(&h, &mut next_job).await;
            assert_eq!(
                taken.len(),
                1,
                "round {round}: {} took {}",
                a.name,
                taken.len()
            );
            started.push(taken[0].0.clone());
        }
        assert_eq!(started.len(), 50);
        let waiting = h.handle.list_queue().await.expect("queue").len();
        assert_eq!(waiting, 150 - round * 50, "round {round}");
        for (a, job) in agents.iter().zip(&started) {
            a.state(job, v1::JobState::Completed, "").await;
        }
    }
    let (status, _) = h.status(task).await;
    assert_eq!(status, "completed");
}

#[tokio::test]
async fn a_step_needing_more_gpus_than_any_agent_has_is_refused_at_creation() {
    let mut h = Harness::new().await;
    h.apply(&independent(
        "big",
        1,
        "{role: training}",
        ", resources: {gpus: 3}",
    ))
    .await;
    let _gpu = h.agent_with("gpu", "training", vec![], 4, &[0, 1]).await;
    let refused = h
        .request(|reply| ApiRequest::CreateTask {
            workflow: "big".into(),
            name: String::new(),
            params: BTreeMap::new(),
            opts: Default::default(),
            reply,
        })
        .await;
    match refused {
        Err(ferry_coordinator::EngineError::InvalidField { field, message }) => {
            assert_eq!(field, "steps.s0.resources.gpus");
            assert!(
                message.contains("needs 3 GPUs; the agent has 2"),
                "{message}"
            );
        }
        other => panic!("expected a refusal naming the field, got {other:?}"),
    }
    assert!(
        h.store.list_tasks(None, 10).await.expect("read").is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn a_pool_and_max_active_tasks_bound_what_runs_and_priority_orders_the_queue() {
    let mut h = Harness::new().await;
    // Three exports in the `hive` pool (size 2 in the harness), on an unlimited agent.
    h.apply(&independent(
        "exports",
        3,
        "{agent: wide}",
        ", resources: {pool: hive}",
    ))
    .await;
    let mut wide = h.agent_with("wide", "data_source", vec![], 0, &[]).await;
    let exports = h.create("exports").await;
    let mut next_job = 0;
    let first = wide.take_all(&h, &mut next_job).await;
    assert_eq!(first.len(), 2, "two in the pool at once");
    let queue = h.handle.list_queue().await.expect("queue");
    assert_eq!(queue.len(), 1);
    assert!(
        queue[0].waits_for.contains("pool hive: 2 of 2"),
        "{queue:?}"
    );
    wide.state(&first[0].0, v1::JobState::Completed, "").await;
    let third = wide.take_all(&h, &mut next_job).await;
    assert_eq!(third.len(), 1, "the third once one left the pool");
    for (job, _) in first.iter().skip(1).chain(&third) {
        wide.state(job, v1::JobState::Completed, "").await;
    }
    assert_eq!(h.status(exports).await.0, "completed");

    // One task of `solo` at a time; a one-slot agent, and priorities.
    h.apply("name: solo\nmax_active_tasks: 1\nsteps:\n  - {name: a, kind: noop, placement: {agent: one}}\n  - {name: b, kind: noop, placement: {agent: one}, inputs: [a]}\n")
        .await;
    h.apply(
        "name: urgent\npriority: 5\nsteps:\n  - {name: a, kind: noop, placement: {agent: one}}\n",
    )
    .await;
    h.apply("name: later\nsteps:\n  - {name: a, kind: noop, placement: {agent: one}}\n")
        .await;
    let mut one = h.agent_with("one", "data_source", vec![], 1, &[]).await;
    let solo1 = h.create("solo").await;
    let solo2 = h.create("solo").await;
    let taken = one.take_all(&h, &mut next_job).await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].1.task_id, solo1);
    let later = h.create("later").await;
    let urgent = h.create("urgent").await;
    let queue = h.handle.list_queue().await.expect("queue");
    let order: Vec<i64> = queue.iter().map(|q| q.task_id).collect();
    assert_eq!(
        order,
        vec![urgent, solo2, later],
        "priority first, then age: {queue:?}"
    );
    let solo2_waits = &queue[1].waits_for;
    assert!(
        solo2_waits.contains("workflow solo has 1 of at most 1 tasks running"),
        "{solo2_waits}"
    );
    // solo1's first step ends: its second step competes with urgent for the one slot;
    // urgent (priority 5) wins, and solo2 still waits for solo1 to finish.
    one.state(&taken[0].0, v1::JobState::Completed, "").await;
    let next = one.take_all(&h, &mut next_job).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].1.task_id, urgent, "the higher priority first");
    one.state(&next[0].0, v1::JobState::Completed, "").await;
    let next = one.take_all(&h, &mut next_job).await;
    assert_eq!((next[0].1.task_id, next[0].1.step.as_str()), (solo1, "b"));
    one.state(&next[0].0, v1::JobState::Completed, "").await;
    let next = one.take_all(&h, &mut next_job).await;
    assert_eq!(next[0].1.task_id, solo2, "solo2 once solo1 is done");
    one.state(&next[0].0, v1::JobState::Completed, "").await;
    let next = one.take_all(&h, &mut next_job).await;
    assert_eq!((next[0].1.task_id, next[0].1.step.as_str()), (solo2, "b"));
    one.state(&next[0].0, v1::JobState::Completed, "").await;
    let next = one.take_all(&h, &mut next_job).await;
    assert_eq!(next[0].1.task_id, later);
}

#[tokio::test]
async fn what_a_running_step_holds_survives_a_coordinator_restart() {
    let mut h = Harness::new().await;
    h.apply(&independent(
        "gpu_work",
        3,
        "{agent: gpu}",
        ", resources: {gpus: 1}",
    ))
    .await;
    let mut gpu = h.agent_with("gpu", "training", vec![], 4, &[0, 1]).await;
    let task = h.create("gpu_work").await;
    let mut next_job = 0;
    let running = gpu.take_all(&h, &mut next_job).await;
    assert_eq!(running.len(), 2);
    h.restart().await;
    // The agent comes back with its two jobs still running.
    let reports: Vec<v1::JobReport> = running
        .iter()
        .map(|(job, c)| v1::JobReport {
            job_id: job.clone(),
            task_id: task,
            step: c.step.clone(),
            attempt: c.attempt,
            state: v1::JobState::Running as i32,
            ..Default::default()
        })
        .collect();
    let mut gpu = h.agent_with("gpu", "training", reports, 4, &[0, 1]).await;
    let none = gpu.take_all(&h, &mut next_job).await;
    assert!(none.is_empty(), "both GPUs are still held: {none:?}");
    let queue = h.handle.list_queue().await.expect("queue");
    assert!(
        queue[0].waits_for.contains("2 of 2 GPUs in use"),
        "{queue:?}"
    );
    let freed = running[1].1.gpu_ids.clone();
    gpu.state(&running[1].0, v1::JobState::Completed, "").await;
    let third = gpu.take_all(&h, &mut next_job).await;
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].1.gpu_ids, freed, "the GPU that was freed");
}

// ---- schedules and backfills (the clock under the test's control) ----

use chrono::{DateTime, TimeZone, Utc};
use ferry_coordinator::schedules::{
    BackfillSpec, ScheduleService, ScheduleSpec, Target, TickReport, WallClock,
};
use ferry_core::schedule::{CatchUp, Concurrency, Reprocess};

fn at(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, min, s)
        .single()
        .expect("a valid time")
}

/// One `exec` step on agent `one` whose arguments hold the run's date and a parameter.
const DATED: &str = "name: dated\nsteps:\n  - {name: a, kind: exec, placement: {agent: one}, params: {program: echo, args: [\"${ds}\", \"${param.table}\"]}}\n";

impl Harness {
    fn schedules(&self, clock: &WallClock) -> ScheduleService {
        ScheduleService::new(
            self.store.clone(),
            self.handle.clone(),
            clock.clone(),
            Duration::from_secs(10),
        )
    }

    /// The (ds, task status) of every run of schedule `name`, oldest first.
    async fn runs(&self, name: &str) -> Vec<(String, Option<String>)> {
        self.settle().await;
        let s = self
            .store
            .schedule_by_name(name)
            .await
            .expect("read")
            .expect("the schedule");
        self.store
            .schedule_runs(s.id, None, None, 10_000)
            .await
            .expect("runs")
            .into_iter()
            .map(|(r, status)| (r.logical_date.format("%Y-%m-%d").to_string(), status))
            .collect()
    }
}

fn daily(name: &str, catchup: CatchUp, concurrency: Concurrency) -> ScheduleSpec {
    ScheduleSpec {
        name: name.into(),
        target: Target::Workflow {
            name: "dated".into(),
            params: BTreeMap::from([("table".to_owned(), "t_${ds_nodash}".to_owned())]),
        },
        cron: "0 0 * * *".into(),
        timezone: "UTC".into(),
        catchup,
        max_catchup: 10,
        concurrency,
        priority: 0,
        paused: false,
    }
}

fn created(report: &TickReport) -> Vec<String> {
    report
        .created
        .iter()
        .map(|(_, d, _)| d.format("%Y-%m-%d").to_string())
        .collect()
}

#[tokio::test]
async fn a_daily_schedule_creates_exactly_one_run_per_day_across_restarts_and_racing_coordinators()
{
    let mut h = Harness::new().await;
    h.apply(DATED).await;
    let mut one = h.agent("one", "data_source", vec![]).await;
    let clock = WallClock::manual(at(2026, 1, 1, 10, 0, 0));
    let svc = h.schedules(&clock);
    svc.create(daily("nightly", CatchUp::All, Concurrency::Allow))
        .await
        .expect("created");
    // Created at 10:00: the first run is the interval starting at the next midnight, due a
    // day later.
    clock.set(at(2026, 1, 2, 0, 0, 5));
    assert!(created(&svc.tick().await.expect("tick")).is_empty());
    clock.set(at(2026, 1, 3, 0, 0, 5));
    assert_eq!(
        created(&svc.tick().await.expect("tick")),
        vec!["2026-01-02"]
    );
    // The run's date reached the job.
    let mut next_job = 0;
    let taken = one.take_all(&h, &mut next_job).await;
    assert_eq!(taken.len(), 1);
    let params = &taken[0].1.params_json;
    assert!(
        params.contains("\"2026-01-02\"") && params.contains("t_20260102"),
        "{params}"
    );
    one.state(&taken[0].0, v1::JobState::Completed, "").await;

    // A tick that crashed after creating the next run but before moving the cursor: the run
    // row exists with its task. The restarted coordinator's pass finds it, creates nothing.
    clock.set(at(2026, 1, 4, 0, 0, 5));
    let s = h
        .store
        .schedule_by_name("nightly")
        .await
        .expect("read")
        .expect("schedule");
    h.request(|reply| ApiRequest::CreateTask {
        workflow: "dated".into(),
        name: "nightly_20260103".into(),
        params: BTreeMap::from([
            ("table".to_owned(), "t_20260103".to_owned()),
            ("ds".to_owned(), "2026-01-03".to_owned()),
        ]),
        opts: ferry_coordinator::engine::TaskOptions {
            priority: None,
            run: Some(ferry_store::RunLink {
                schedule_id: s.id,
                logical_date: at(2026, 1, 3, 0, 0, 0),
                backfill_id: None,
                replace: false,
            }),
        },
        reply,
    })
    .await
    .expect("the interrupted tick's task");
    h.restart().await;
    let svc = h.schedules(&clock);
    let report = svc.tick().await.expect("tick");
    assert!(created(&report).is_empty(), "{report:?}");
    assert_eq!(report.existing, 1);

    // Two coordinators racing on the same database, the same moment.
    let other = h.schedules(&clock);
    clock.set(at(2026, 1, 5, 0, 0, 5));
    let (a, b) = tokio::join!(svc.tick(), other.tick());
    let (a, b) = (a.expect("tick"), b.expect("tick"));
    assert_eq!(
        created(&a).len() + created(&b).len(),
        1,
        "one of them created it: {a:?} {b:?}"
    );
    // Ticking again changes nothing.
    assert!(created(&svc.tick().await.expect("tick")).is_empty());
    let days: Vec<String> = h.runs("nightly").await.into_iter().map(|r| r.0).collect();
    assert_eq!(days, vec!["2026-01-02", "2026-01-03", "2026-01-04"]);
}

#[tokio::test]
async fn catch_up_none_latest_and_all_after_three_days_down() {
    let mut h = Harness::new().await;
    h.apply(DATED).await;
    let _one = h.agent("one", "data_source", vec![]).await;
    let clock = WallClock::manual(at(2026, 1, 1, 10, 0, 0));
    let svc = h.schedules(&clock);
    // Bad input is refused with the field named, and nothing is stored.
    let mut no_table = daily("no_table", CatchUp::All, Concurrency::Allow);
    no_table.target = Target::Workflow {
        name: "dated".into(),
        params: BTreeMap::new(),
    };
    let mut bad_cron = daily("bad_cron", CatchUp::All, Concurrency::Allow);
    bad_cron.cron = "0 25 * * *".into();
    let mut bad_zone = daily("bad_zone", CatchUp::All, Concurrency::Allow);
    bad_zone.timezone = "Europe/Pariss".into();
    for (spec, want) in [
        (no_table, "params"),
        (bad_cron, "cron"),
        (bad_zone, "timezone"),
    ] {
        match svc.create(spec).await {
            Err(ferry_coordinator::EngineError::InvalidField { field, .. }) => {
                assert_eq!(field, want)
            }
            other => panic!("expected a refusal naming `{want}`, got {other:?}"),
        }
    }
    assert!(h.store.list_schedules().await.expect("read").is_empty());
    for (name, policy) in [
        ("none", CatchUp::None),
        ("latest", CatchUp::Latest),
        ("all", CatchUp::All),
    ] {
        svc.create(daily(name, policy, Concurrency::Allow))
            .await
            .expect("created");
    }
    clock.set(at(2026, 1, 3, 0, 0, 5));
    let first = svc.tick().await.expect("tick");
    assert_eq!(
        first.created.len(),
        3,
        "each made its on-time run: {first:?}"
    );
    // Down from Jan 3 to Jan 6 05:00: the runs of Jan 3, 4 and 5 were missed (the last one
    // due at midnight, five hours ago: late too).
    clock.set(at(2026, 1, 6, 5, 0, 0));
    svc.tick().await.expect("tick");
    let days = |runs: Vec<(String, Option<String>)>| -> Vec<String> {
        runs.into_iter().map(|r| r.0).collect()
    };
    assert_eq!(days(h.runs("none").await), vec!["2026-01-02"]);
    assert_eq!(
        days(h.runs("latest").await),
        vec!["2026-01-02", "2026-01-05"]
    );
    assert_eq!(
        days(h.runs("all").await),
        vec!["2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"]
    );
    // The next on-time run comes for each, once.
    clock.set(at(2026, 1, 7, 0, 0, 5));
    let report = svc.tick().await.expect("tick");
    assert_eq!(report.created.len(), 3, "{report:?}");
    assert!(created(&report).iter().all(|d| d == "2026-01-06"));
}

#[tokio::test]
async fn skip_and_queue_concurrency_when_the_previous_run_still_runs() {
    let mut h = Harness::new().await;
    h.apply(DATED).await;
    let mut one = h.agent("one", "data_source", vec![]).await;
    let clock = WallClock::manual(at(2026, 1, 1, 10, 0, 0));
    let svc = h.schedules(&clock);
    svc.create(daily("skipper", CatchUp::All, Concurrency::Skip))
        .await
        .expect("created");
    svc.create(daily("queuer", CatchUp::All, Concurrency::Queue))
        .await
        .expect("created");
    clock.set(at(2026, 1, 3, 0, 0, 5));
    assert_eq!(svc.tick().await.expect("tick").created.len(), 2);
    let mut next_job = 0;
    let first = one.take_all(&h, &mut next_job).await;
    assert_eq!(first.len(), 2, "both first runs run");
    // A day later both first runs still run.
    clock.set(at(2026, 1, 4, 0, 0, 5));
    let report = svc.tick().await.expect("tick");
    assert!(report.created.is_empty(), "{report:?}");
    assert_eq!(report.skipped, 1, "skip drops the run");
    // The first runs end; queue's waiting run starts, skip's was dropped for good.
    for (job, _) in &first {
        one.state(job, v1::JobState::Completed, "").await;
    }
    h.settle().await;
    let report = svc.tick().await.expect("tick");
    assert_eq!(created(&report), vec!["2026-01-03"]);
    assert_eq!(report.created[0].0, "queuer");
    let days = |runs: Vec<(String, Option<String>)>| -> Vec<String> {
        runs.into_iter().map(|r| r.0).collect()
    };
    assert_eq!(days(h.runs("skipper").await), vec!["2026-01-02"]);
    assert_eq!(
        days(h.runs("queuer").await),
        vec!["2026-01-02", "2026-01-03"]
    );
}

#[tokio::test]
async fn a_backfill_of_thirty_days_runs_three_at_a_time_cancels_cleanly_and_reruns_only_what_is_missing()
 {
    let mut h = Harness::new().await;
    h.apply(DATED).await;
    let mut one = h.agent("one", "data_source", vec![]).await;
    let clock = WallClock::manual(at(2026, 1, 1, 0, 0, 0));
    let svc = h.schedules(&clock);
    let mut spec = daily("daily", CatchUp::None, Concurrency::Allow);
    spec.paused = true;
    svc.create(spec).await.expect("created");
    clock.set(at(2026, 3, 1, 0, 0, 0));
    let range = |reprocess| BackfillSpec {
        schedule: "daily".into(),
        start: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"),
        end: chrono::NaiveDate::from_ymd_opt(2026, 1, 30).expect("date"),
        reverse: false,
        max_active: 3,
        priority: 0,
        reprocess,
    };
    let (none, would) = svc
        .backfill(range(Reprocess::Missing), true)
        .await
        .expect("dry run");
    assert!(none.is_none());
    assert_eq!(would.len(), 30, "a dry run lists every date");
    assert!(
        h.store
            .list_tasks(None, 100)
            .await
            .expect("read")
            .is_empty()
    );
    let (b, _) = svc
        .backfill(range(Reprocess::Missing), false)
        .await
        .expect("created");
    let b = b.expect("stored");
    // An overlapping one is refused while it runs.
    let overlap = svc.backfill(range(Reprocess::All), false).await;
    assert!(
        matches!(&overlap, Err(ferry_coordinator::EngineError::InvalidField { field, .. }) if field == "start"),
        "{overlap:?}"
    );
    let mut next_job = 0;
    let mut done = 0;
    // Ten rounds of three, cancelled after four.
    for round in 0..4 {
        h.settle().await;
        svc.tick().await.expect("tick");
        let taken = one.take_all(&h, &mut next_job).await;
        assert_eq!(taken.len(), 3, "round {round}: three at once");
        if round < 3 {
            for (job, _) in &taken {
                one.state(job, v1::JobState::Completed, "").await;
                done += 1;
            }
        }
    }
    // Three run now; cancel: they are cancelled, nothing new starts.
    let cancelled = svc.cancel_backfill(b.id).await.expect("cancelled");
    assert_eq!(cancelled.status, "cancelled");
    h.settle().await;
    for _ in 0..3 {
        match one.next().await {
            coordinator_message::Msg::CancelJob(_) => {}
            other => panic!("expected CancelJob, got {other:?}"),
        }
    }
    svc.tick().await.expect("tick");
    assert!(one.take_all(&h, &mut next_job).await.is_empty());
    let tasks = h.store.list_tasks(None, 100).await.expect("read");
    assert_eq!(tasks.len(), 12);
    assert!(
        tasks
            .iter()
            .all(|t| t.status == "completed" || t.status == "cancelled"),
        "no task left running: {:?}",
        tasks.iter().map(|t| &t.status).collect::<Vec<_>>()
    );
    // Again with `missing`: the 9 done dates stay; the 3 cancelled ones are not missing
    // either (they have a run); 18 are left.
    let (again, would) = svc
        .backfill(range(Reprocess::Missing), false)
        .await
        .expect("created");
    assert_eq!(would.len(), 18, "only what has no run yet");
    assert_eq!(done, 9);
    let again = again.expect("stored");
    let p = svc.progress(&again).await.expect("progress");
    assert_eq!((p.done, p.running, p.left), (0, 0, 18));
    // `failed` picks up the three cancelled dates too.
    let (_, would) = svc
        .backfill(
            BackfillSpec {
                start: chrono::NaiveDate::from_ymd_opt(2026, 2, 1).expect("date"),
                end: chrono::NaiveDate::from_ymd_opt(2026, 2, 2).expect("date"),
                ..range(Reprocess::Failed)
            },
            true,
        )
        .await
        .expect("dry run");
    assert_eq!(would.len(), 2);
}
