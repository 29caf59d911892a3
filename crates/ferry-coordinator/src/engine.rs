//! The workflow engine: one actor that owns every live task's state and is the only writer
//! of task and step rows.
//!
//! Each turn of the loop takes every message waiting (agent events, API requests), applies
//! them to the in-memory state, decides what to dispatch, commits all resulting row changes
//! in **one** transaction, and only then sends commands to agents and answers to callers.
//! Persist-then-act is what makes a crash safe: an agent is never told to start anything
//! that the database does not already record, and a completion is durable before anything
//! downstream starts, so after a restart completed steps never run again.
//!
//! Dispatch is seed 003's two-phase start, per step: `CreateJob` (the agent answers with its
//! job id; the job is IDLE), then `StartJob`. A step with inputs (INPUTS_READY) stays
//! pending until every input step has completed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ferry_core::pipeline::{self, CtrTaskRequest, HostInfo, PipelineSettings};
use ferry_core::retry::RetryPolicy;
use ferry_core::template::{self, TemplateContext};
use ferry_core::workflow::{Placement, WorkflowDef};
use ferry_core::{ErrorClass, JobState, Role, StepEvent, StepStatus, TaskEvent, TaskStatus};
use ferry_proto::v1::{self, agent_message, coordinator_message, job_event};
use ferry_proto::{error_class_from_wire, job_state_from_wire};
use ferry_store::{NewStep, NewTask, Store, WriteBatch, task_log, workflow_step, workflow_task};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::EngineError;
use crate::observe::{Observer, TaskOutcome};

/// What the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub heartbeat: Duration,
    pub agent_timeout: Duration,
    pub auto_resume: bool,
    /// What shapes every plan of the built-in CTR pipeline.
    pub pipeline: PipelineSettings,
    /// Prometheus metrics and webhook notifications.
    pub observer: Arc<Observer>,
    /// The first level of seed 003's path hierarchy in graph workflows' plans.
    pub coordinator_name: String,
}

/// Messages the engine processes, from the gRPC services.
pub enum EngineMsg {
    AgentAttached {
        conn_id: u64,
        register: v1::Register,
        tx: AgentTx,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    AgentDetached {
        name: String,
        conn_id: u64,
    },
    FromAgent {
        name: String,
        conn_id: u64,
        msg: agent_message::Msg,
    },
    Api(ApiRequest),
}

pub type AgentTx = mpsc::UnboundedSender<Result<v1::CoordinatorMessage, tonic::Status>>;
type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// Requests that change tasks; reads go straight to the store.
pub enum ApiRequest {
    CreateTask {
        workflow: String,
        name: String,
        params: BTreeMap<String, String>,
        reply: Reply<workflow_task::Model>,
    },
    /// Plans the built-in CTR pipeline on the connected agents and starts it.
    CreateCtrTask {
        request: Box<CtrTaskRequest>,
        reply: Reply<workflow_task::Model>,
    },
    /// Plans a graph workflow (seed 003) on the connected agents.
    PlanGraph {
        graph: Box<ferry_core::graph::GraphDef>,
        reply: Reply<WorkflowDef>,
    },
    /// Merges `patch` into a pending step's parameters (paused or failed tasks only).
    UpdateStepParams {
        task_id: i64,
        step: String,
        patch: serde_json::Value,
        user: String,
        reply: Reply<workflow_task::Model>,
    },
    Pause {
        task_id: i64,
        reply: Reply<workflow_task::Model>,
    },
    Resume {
        task_id: i64,
        reply: Reply<workflow_task::Model>,
    },
    Cancel {
        task_id: i64,
        reply: Reply<workflow_task::Model>,
    },
    Retry {
        task_id: i64,
        reply: Reply<workflow_task::Model>,
    },
    /// Approve or reject a step held in `awaiting_approval`.
    Decide {
        task_id: i64,
        step: String,
        approve: bool,
        user: String,
        comment: String,
        reply: Reply<workflow_task::Model>,
    },
    ListAgents {
        reply: oneshot::Sender<Vec<v1::AgentInfo>>,
    },
}

/// What followers of a task's log hear, after the change is committed.
#[derive(Debug, Clone)]
pub enum Broadcast {
    Log(task_log::Model),
    TaskStatus { task_id: i64, status: TaskStatus },
}

/// Handle the gRPC services use to talk to the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<EngineMsg>,
    broadcast: broadcast::Sender<Broadcast>,
}

impl EngineHandle {
    pub async fn send(&self, msg: EngineMsg) -> Result<(), EngineError> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| EngineError::ShuttingDown)
    }

    pub async fn request<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> ApiRequest,
    ) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(EngineMsg::Api(make(reply))).await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    pub async fn list_agents(&self) -> Result<Vec<v1::AgentInfo>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(EngineMsg::Api(ApiRequest::ListAgents { reply }))
            .await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Broadcast> {
        self.broadcast.subscribe()
    }
}

struct StepRt {
    row: workflow_step::Model,
    status: StepStatus,
    placement: Placement,
    deps: Vec<usize>,
    dependents: Vec<usize>,
    policy: RetryPolicy,
    /// The step's own limit for one attempt (`timeout_secs`).
    timeout: Option<Duration>,
}

struct TaskRt {
    row: workflow_task::Model,
    status: TaskStatus,
    steps: Vec<StepRt>,
}

impl TaskRt {
    fn completed_steps(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Completed)
            .count()
    }
}

struct AgentRt {
    role: Role,
    kinds: HashSet<String>,
    gpus: Vec<u32>,
    hostname: String,
    paths: BTreeMap<String, String>,
    ssh_to: Vec<String>,
    conn: Option<(u64, AgentTx)>,
    last_seen: Instant,
    /// When the agent went away (or, for agents known only from the database after a
    /// restart, when the engine started).
    offline_since: Option<Instant>,
    running: u32,
}

/// A create request in flight (phase one sent, no answer yet).
struct PendingCreate {
    task_id: i64,
    step: usize,
    attempt: i32,
    /// When `CreateJob` went out: unanswered past `workflow.agent_timeout`, the step is
    /// dispatched again.
    sent: Instant,
}

type StepKey = (i64, usize);

pub struct Engine {
    store: Store,
    settings: EngineSettings,
    rx: mpsc::Receiver<EngineMsg>,
    broadcast: broadcast::Sender<Broadcast>,
    tasks: HashMap<i64, TaskRt>,
    agents: HashMap<String, AgentRt>,
    jobs: HashMap<String, StepKey>,
    pending_creates: HashMap<u64, PendingCreate>,
    next_request_id: u64,
    next_log_id: i64,
    /// Steps that may have become dispatchable since the last turn.
    candidates: HashSet<StepKey>,
    /// Steps that found no agent to run them; re-examined when an agent attaches.
    waiting_for_agent: HashSet<StepKey>,
    retry_timers: BinaryHeap<Reverse<(Instant, i64, usize)>>,
    /// Attempts with a time limit: (deadline, task, step, attempt).
    deadlines: BinaryHeap<Reverse<(Instant, i64, usize, i32)>>,
    // What this turn will commit, then send.
    dirty_tasks: HashSet<i64>,
    dirty_steps: HashSet<StepKey>,
    new_logs: Vec<task_log::Model>,
    new_metrics: Vec<ferry_store::step_metric::Model>,
    new_chunks: Vec<ferry_store::transfer_chunk::Model>,
    /// Finished tasks to announce (metrics, webhooks) once their state is committed.
    finished: Vec<TaskOutcome>,
    outbox: Vec<(String, coordinator_message::Msg)>,
    replies: Vec<Box<dyn FnOnce() + Send>>,
    broadcasts: Vec<Broadcast>,
}

const LOG_SOURCE_ENGINE: &str = "engine";
/// Most messages handled in one turn (one transaction).
const MAX_BATCH: usize = 2048;

impl Engine {
    /// Loads unfinished tasks from the store and returns the engine and its handle.
    pub async fn start(
        store: Store,
        settings: EngineSettings,
    ) -> Result<(Engine, EngineHandle), EngineError> {
        let (tx, rx) = mpsc::channel(16 * 1024);
        let (broadcast, _) = broadcast::channel(16 * 1024);
        let next_log_id = store.max_log_id().await? + 1;
        let mut engine = Engine {
            store,
            settings,
            rx,
            broadcast: broadcast.clone(),
            tasks: HashMap::new(),
            agents: HashMap::new(),
            jobs: HashMap::new(),
            pending_creates: HashMap::new(),
            next_request_id: 1,
            next_log_id,
            candidates: HashSet::new(),
            waiting_for_agent: HashSet::new(),
            retry_timers: BinaryHeap::new(),
            deadlines: BinaryHeap::new(),
            dirty_tasks: HashSet::new(),
            dirty_steps: HashSet::new(),
            new_logs: Vec::new(),
            new_metrics: Vec::new(),
            new_chunks: Vec::new(),
            finished: Vec::new(),
            outbox: Vec::new(),
            replies: Vec::new(),
            broadcasts: Vec::new(),
        };
        engine.recover().await?;
        Ok((engine, EngineHandle { tx, broadcast }))
    }

    /// Reloads every unfinished task. Steps that were on an agent stay as they are: the
    /// agent re-attaches them when it registers, or they are retried after the agent timeout.
    async fn recover(&mut self) -> Result<(), EngineError> {
        let rows = self.store.unfinished_tasks().await?;
        let now = Instant::now();
        for row in rows {
            let id = row.id;
            self.load_task(row).await?;
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            for step in &task.steps {
                if step.status.is_on_agent()
                    && let Some(agent) = &step.row.agent_name
                {
                    self.agents.entry(agent.clone()).or_insert_with(|| AgentRt {
                        role: Role::DataSource,
                        kinds: HashSet::new(),
                        gpus: Vec::new(),
                        hostname: String::new(),
                        paths: BTreeMap::new(),
                        ssh_to: Vec::new(),
                        conn: None,
                        last_seen: now,
                        offline_since: Some(now),
                        running: 0,
                    });
                    if let Some(job) = &step.row.job_id {
                        self.jobs
                            .insert(job.clone(), (id, step.row.step_order as usize));
                    }
                }
            }
            if task.status == TaskStatus::Running && !self.settings.auto_resume {
                self.task_event(
                    id,
                    TaskEvent::Hold,
                    Some("the coordinator restarted and workflow.auto_resume is off".into()),
                );
                self.log(
                    id,
                    "",
                    "INFO",
                    "task paused: coordinator restarted with auto_resume off".into(),
                );
            } else if self.tasks[&id].status == TaskStatus::Running {
                self.log(
                    id,
                    "",
                    "INFO",
                    "coordinator restarted: resuming task from persisted state".into(),
                );
            }
            self.enqueue_pending(id);
        }
        info!(tasks = self.tasks.len(), "recovered unfinished tasks");
        Ok(())
    }

    async fn load_task(&mut self, row: workflow_task::Model) -> Result<(), EngineError> {
        let steps = self.store.steps(row.id).await?;
        let task = build_task_rt(row, steps)?;
        self.tasks.insert(task.row.id, task);
        Ok(())
    }

    /// Runs until `shutdown` fires or every handle is dropped.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                msg = self.rx.recv() => match msg {
                    Some(m) => self.handle(m).await,
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
            let mut handled = 1;
            while handled < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(m) => self.handle(m).await,
                    Err(_) => break,
                }
                handled += 1;
            }
            self.fire_due_retries();
            self.schedule();
            self.flush(&shutdown).await;
        }
        // Make what was decided durable before exiting; agents keep running their jobs and
        // re-attach to the next coordinator.
        self.flush(&shutdown).await;
        info!("engine stopped");
    }

    // ---- message handling --------------------------------------------------------------

    async fn handle(&mut self, msg: EngineMsg) {
        match msg {
            EngineMsg::AgentAttached {
                conn_id,
                register,
                tx,
                reply,
            } => {
                let result = self.attach_agent(conn_id, register, tx);
                let _ = reply.send(result);
            }
            EngineMsg::AgentDetached { name, conn_id } => self.detach_agent(&name, conn_id),
            EngineMsg::FromAgent { name, conn_id, msg } => self.agent_message(&name, conn_id, msg),
            EngineMsg::Api(req) => self.api(req).await,
        }
    }

    fn attach_agent(
        &mut self,
        conn_id: u64,
        reg: v1::Register,
        tx: AgentTx,
    ) -> Result<(), EngineError> {
        let name = reg.agent_name.trim().to_owned();
        if name.is_empty() {
            return Err(EngineError::InvalidRequest(
                "agent_name must not be empty".into(),
            ));
        }
        let role: Role = reg
            .role
            .parse()
            .map_err(|e: ferry_core::state::UnknownValue| {
                EngineError::InvalidRequest(e.to_string())
            })?;
        let now = Instant::now();
        let _ = tx.send(Ok(v1::CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Registered(v1::Registered {
                heartbeat_interval_ms: self.settings.heartbeat.as_millis() as u64,
            })),
        }));
        let agent = self.agents.entry(name.clone()).or_insert_with(|| AgentRt {
            role,
            kinds: HashSet::new(),
            gpus: Vec::new(),
            hostname: String::new(),
            paths: BTreeMap::new(),
            ssh_to: Vec::new(),
            conn: None,
            last_seen: now,
            offline_since: None,
            running: 0,
        });
        agent.role = role;
        agent.kinds = reg.kinds.iter().cloned().collect();
        agent.gpus = reg.gpus.clone();
        agent.hostname = reg.hostname.clone();
        agent.paths = reg.paths.clone().into_iter().collect();
        agent.ssh_to = reg.ssh_to.clone();
        agent.conn = Some((conn_id, tx));
        agent.last_seen = now;
        agent.offline_since = None;
        info!(agent = %name, role = %role, jobs = reg.jobs.len(), "agent registered");
        self.reconcile_agent_jobs(&name, reg.jobs);
        self.candidates.extend(self.waiting_for_agent.drain());
        Ok(())
    }

    /// Matches the jobs an agent reports against the steps the engine placed on it:
    /// re-attach what still runs, apply what finished while we were apart, re-dispatch what
    /// the agent lost, and cancel what nobody wants any more.
    fn reconcile_agent_jobs(&mut self, agent: &str, reports: Vec<v1::JobReport>) {
        // Creates sent on the agent's previous connection will never be answered there; the
        // agent's report below says whether it created them.
        let tasks = &self.tasks;
        self.pending_creates.retain(|_, p| {
            tasks
                .get(&p.task_id)
                .is_none_or(|t| t.steps[p.step].row.agent_name.as_deref() != Some(agent))
        });
        let mut reported: HashSet<StepKey> = HashSet::new();
        for mut r in reports {
            let key = self
                .tasks
                .get(&r.task_id)
                .and_then(|t| t.steps.iter().position(|s| s.row.step_name == r.step))
                .map(|i| (r.task_id, i));
            let state = job_state_from_wire(r.state);
            let current = key.and_then(|k| {
                let step = &self.tasks[&k.0].steps[k.1];
                (step.status.is_on_agent()
                    && step.row.attempt == r.attempt as i32
                    && step.row.agent_name.as_deref() == Some(agent))
                .then_some(k)
            });
            let Some(key) = current else {
                // A job from an earlier attempt or a finished task.
                match state {
                    Some(s) if s.is_terminal() => self.send(agent, forget(&r.job_id)),
                    _ => self.send(agent, cancel(&r.job_id, "superseded")),
                }
                continue;
            };
            reported.insert(key);
            self.jobs.insert(r.job_id.clone(), key);
            {
                let step = &mut self.step_mut(key).row;
                if step.job_id.as_deref() != Some(r.job_id.as_str()) {
                    step.job_id = Some(r.job_id.clone());
                    self.dirty_steps.insert(key);
                }
            }
            // What the previous coordinator (or a broken stream) may have lost, applied as the
            // live events it repeats: chunk rows are upserted; a metric may be stored twice,
            // which readers tolerate (they key metrics by name and index).
            let mut replay = Vec::new();
            if !r.chunks.is_empty() {
                replay.push(job_event::Event::Chunks(v1::JobChunks {
                    chunks: std::mem::take(&mut r.chunks),
                }));
            }
            replay.extend(r.metrics.drain(..).map(job_event::Event::Metric));
            if !r.checkpoint_json.is_empty() {
                replay.push(job_event::Event::Checkpoint(v1::JobCheckpoint {
                    data_json: std::mem::take(&mut r.checkpoint_json),
                }));
            }
            if !r.progress_json.is_empty() {
                replay.push(job_event::Event::Progress(v1::JobProgress {
                    data_json: std::mem::take(&mut r.progress_json),
                }));
            }
            for event in replay {
                self.job_event(
                    agent,
                    v1::JobEvent {
                        job_id: r.job_id.clone(),
                        event: Some(event),
                    },
                );
            }
            match state {
                Some(JobState::Idle) | Some(JobState::Ready) | None => {
                    self.step_event(key, StepEvent::Created);
                    self.send(agent, start(&r.job_id));
                }
                Some(JobState::Running) => {
                    self.log_step(
                        key,
                        "INFO",
                        format!("re-attached to job {} on agent {agent}", r.job_id),
                    );
                    self.mark_running(key);
                }
                Some(JobState::Completed) => self.job_completed(key, agent, &r.job_id),
                Some(JobState::Failed) => {
                    let class = error_class_from_wire(r.error_class);
                    self.job_failed(key, &r.error, class);
                    self.send(agent, forget(&r.job_id));
                }
                Some(JobState::Cancelled) => {
                    self.job_failed(key, "job was cancelled on the agent", ErrorClass::Transient);
                    self.send(agent, forget(&r.job_id));
                }
            }
        }
        // Steps placed on this agent that it no longer knows: it restarted and lost them.
        let lost: Vec<StepKey> = self
            .tasks
            .iter()
            .flat_map(|(id, t)| {
                t.steps.iter().enumerate().filter_map(move |(i, s)| {
                    (s.status.is_on_agent() && s.row.agent_name.as_deref() == Some(agent))
                        .then_some((*id, i))
                })
            })
            .filter(|k| !reported.contains(k))
            .collect();
        for key in lost {
            let status = self.step(key).status;
            if status == StepStatus::Running {
                self.job_failed(
                    key,
                    &format!("agent {agent} restarted and lost the job"),
                    ErrorClass::Transient,
                );
            } else {
                // Never started: dispatch again without counting a retry.
                self.log_step(
                    key,
                    "INFO",
                    format!("agent {agent} does not know the job; dispatching again"),
                );
                self.requeue_without_retry(key);
            }
        }
    }

    fn detach_agent(&mut self, name: &str, conn_id: u64) {
        if let Some(agent) = self.agents.get_mut(name)
            && agent.conn.as_ref().is_some_and(|(id, _)| *id == conn_id)
        {
            agent.conn = None;
            agent.offline_since = Some(Instant::now());
            warn!(agent = %name, "agent disconnected");
        }
    }

    fn agent_message(&mut self, name: &str, conn_id: u64, msg: agent_message::Msg) {
        match self.agents.get_mut(name) {
            Some(a) if a.conn.as_ref().is_some_and(|(id, _)| *id == conn_id) => {
                a.last_seen = Instant::now()
            }
            _ => return, // a message from a replaced connection
        }
        match msg {
            agent_message::Msg::Register(_) => warn!(agent = %name, "duplicate register ignored"),
            agent_message::Msg::Heartbeat(hb) => {
                if let Some(a) = self.agents.get_mut(name) {
                    a.running = hb.running_jobs;
                }
            }
            agent_message::Msg::JobCreated(c) => self.job_created(name, c),
            agent_message::Msg::JobEvent(ev) => self.job_event(name, ev),
        }
    }

    fn job_created(&mut self, agent: &str, c: v1::JobCreated) {
        let Some(p) = self.pending_creates.remove(&c.request_id) else {
            // Too late (the step was dispatched again) or never asked: nobody wants the job.
            if !c.job_id.is_empty() {
                self.send(agent, cancel(&c.job_id, "no step wants this job"));
            }
            return;
        };
        let key = (p.task_id, p.step);
        let still_wanted = self.tasks.get(&p.task_id).is_some_and(|t| {
            let s = &t.steps[p.step];
            s.status == StepStatus::Dispatching && s.row.attempt == p.attempt
        });
        if !still_wanted {
            if !c.job_id.is_empty() {
                self.send(agent, cancel(&c.job_id, "step no longer wants this job"));
            }
            return;
        }
        if !c.error.is_empty() {
            self.job_failed(
                key,
                &format!("agent {agent} refused the job: {}", c.error),
                ErrorClass::Transient,
            );
            return;
        }
        self.jobs.insert(c.job_id.clone(), key);
        self.step_mut(key).row.job_id = Some(c.job_id.clone());
        self.step_event(key, StepEvent::Created);
        self.send(agent, start(&c.job_id));
    }

    fn job_event(&mut self, agent: &str, ev: v1::JobEvent) {
        let Some(&key) = self.jobs.get(&ev.job_id) else {
            debug!(job = %ev.job_id, "event for an unknown job ignored");
            return;
        };
        if !self.tasks.contains_key(&key.0) {
            self.jobs.remove(&ev.job_id);
            return;
        }
        // Only the step's current job may change it; logs of older attempts are still kept.
        let current = self.step(key).row.job_id.as_deref() == Some(ev.job_id.as_str());
        match ev.event {
            Some(job_event::Event::State(s)) => {
                if !current {
                    return;
                }
                match job_state_from_wire(s.state) {
                    Some(JobState::Running) => self.mark_running(key),
                    Some(JobState::Completed) => self.job_completed(key, agent, &ev.job_id),
                    Some(JobState::Failed) => {
                        self.job_failed(key, &s.error, error_class_from_wire(s.error_class));
                        self.jobs.remove(&ev.job_id);
                        self.send(agent, forget(&ev.job_id));
                    }
                    Some(JobState::Cancelled) => {
                        if !self.step(key).status.is_terminal() {
                            self.job_failed(
                                key,
                                "job was cancelled on the agent",
                                ErrorClass::Transient,
                            );
                        }
                        self.jobs.remove(&ev.job_id);
                        self.send(agent, forget(&ev.job_id));
                    }
                    _ => {}
                }
            }
            Some(job_event::Event::Log(l)) => {
                let level = match v1::LogLevel::try_from(l.level) {
                    Ok(v1::LogLevel::Debug) => "DEBUG",
                    Ok(v1::LogLevel::Warn) => "WARN",
                    Ok(v1::LogLevel::Error) => "ERROR",
                    _ => "INFO",
                };
                let step = self.step(key).row.step_name.clone();
                let source = if l.source.is_empty() {
                    "agent".to_owned()
                } else {
                    l.source
                };
                self.push_log(key.0, &step, level, &source, l.message);
            }
            // The next attempt's `CreateJob` carries the checkpoint: keep it within the
            // message limit (an oversized one is logged and the previous one kept).
            Some(job_event::Event::Checkpoint(c))
                if current && self.state_fits(key, "checkpoint", &c.data_json) =>
            {
                self.step_mut(key).row.checkpoint_data = Some(c.data_json);
            }
            Some(job_event::Event::Progress(p))
                if current && self.state_fits(key, "progress", &p.data_json) =>
            {
                self.step_mut(key).row.progress = Some(p.data_json);
            }
            Some(job_event::Event::Chunks(c)) => {
                let step = self.step(key).row.step_name.clone();
                let now = Utc::now();
                for ch in c.chunks {
                    self.new_chunks.push(chunk_row(key.0, &step, ch, now));
                }
            }
            Some(job_event::Event::Metric(m)) => {
                let step = self.step(key).row.step_name.clone();
                // A diverging run reports NaN; the store keeps finite numbers only.
                let value = match ferry_core::limits::check_metric(&m.name, m.value) {
                    Ok(v) => v,
                    Err(why) => {
                        warn!(task_id = key.0, step = %step, "{why}");
                        self.push_log(key.0, &step, "WARN", LOG_SOURCE_ENGINE, why);
                        return;
                    }
                };
                self.settings
                    .observer
                    .on_step_metric(key.0, &step, &m.name, value);
                self.new_metrics.push(ferry_store::new_metric(
                    key.0,
                    &step,
                    &m.name,
                    value,
                    m.index,
                    Utc::now(),
                ));
            }
            _ => {}
        }
    }

    /// Whether a checkpoint or progress document is small enough to keep; logs why not.
    fn state_fits(&mut self, key: StepKey, what: &str, json: &str) -> bool {
        let max = ferry_core::limits::STEP_STATE_BYTES;
        if json.len() <= max {
            return true;
        }
        self.log_step(
            key,
            "WARN",
            format!(
                "{what} of {} bytes refused (at most {max}); the previous one is kept",
                json.len()
            ),
        );
        false
    }

    // ---- step transitions ---------------------------------------------------------------

    fn mark_running(&mut self, key: StepKey) {
        let status = self.step(key).status;
        if matches!(status, StepStatus::Dispatching | StepStatus::Ready) {
            if self.step(key).row.started_at.is_none() {
                self.step_mut(key).row.started_at = Some(Utc::now());
            }
            self.step_event(key, StepEvent::Started);
            let agent = self.step(key).row.agent_name.clone().unwrap_or_default();
            self.log_step(key, "INFO", format!("running on agent {agent}"));
        }
    }

    fn job_completed(&mut self, key: StepKey, agent: &str, job_id: &str) {
        self.jobs.remove(job_id);
        self.send(agent, forget(job_id));
        if self.step(key).status.is_terminal() {
            return;
        }
        {
            let step = self.step_mut(key);
            step.row.completed_at = Some(Utc::now());
            step.row.error_message = None;
            step.row.next_attempt_at = None;
        }
        self.step_event(key, StepEvent::Completed);
        let elapsed = self.step_elapsed(key);
        self.log_step(key, "INFO", format!("completed in {elapsed}"));
        let task = self
            .tasks
            .get_mut(&key.0)
            .expect("key refers to a live task");
        task.row.current_step = task.completed_steps() as i32;
        self.dirty_tasks.insert(key.0);
        let dependents = task.steps[key.1].dependents.clone();
        for d in dependents {
            self.candidates.insert((key.0, d));
        }
        self.check_task_done(key.0);
    }

    /// Applies a failed attempt: retry with back-off, pause (permanent), or fail the task.
    fn job_failed(&mut self, key: StepKey, error: &str, class: ErrorClass) {
        if self.step(key).status.is_terminal() {
            return;
        }
        let error = if error.is_empty() {
            "job failed without a message"
        } else {
            error
        };
        let (retries, policy, name) = {
            let s = self.step(key);
            (s.row.retry_count as u32, s.policy, s.row.step_name.clone())
        };
        let task_status = self.tasks[&key.0].status;
        if task_status == TaskStatus::Cancelled {
            self.step_event(key, StepEvent::Cancel);
            return;
        }
        if class == ErrorClass::Approval {
            {
                let step = self.step_mut(key);
                step.row.error_message = Some(error.to_owned());
                step.row.job_id = None;
            }
            self.step_event(key, StepEvent::AwaitApproval);
            self.log_step(
                key,
                "WARN",
                format!(
                    "awaiting approval: {error} (ferry approve|reject {} {name})",
                    key.0
                ),
            );
            self.task_event(
                key.0,
                TaskEvent::Hold,
                Some(format!("step `{name}` awaits approval: {error}")),
            );
            return;
        }
        if class == ErrorClass::Transient && policy.allows_retry(retries) {
            let retry = retries + 1;
            let delay = policy.backoff(retry);
            let due = Instant::now() + delay;
            {
                let step = self.step_mut(key);
                step.row.retry_count = retry as i32;
                step.row.error_message = Some(error.to_owned());
                step.row.job_id = None;
                step.row.next_attempt_at =
                    Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default());
            }
            self.step_event(key, StepEvent::Requeue);
            self.settings.observer.on_retry(
                &self.tasks[&key.0].row.workflow_name,
                &self.step(key).row.kind,
            );
            self.retry_timers.push(Reverse((due, key.0, key.1)));
            self.log_step(
                key,
                "WARN",
                format!(
                    "attempt failed: {error}; retry {retry}/{} in {:.1}s",
                    policy.max_retries,
                    delay.as_secs_f64()
                ),
            );
            return;
        }
        {
            let step = self.step_mut(key);
            step.row.error_message = Some(error.to_owned());
            step.row.job_id = None;
            step.row.completed_at = Some(Utc::now());
        }
        self.step_event(key, StepEvent::Failed);
        if class == ErrorClass::Permanent {
            let reason = format!("step `{name}` failed permanently: {error}");
            self.log_step(
                key,
                "ERROR",
                format!("failed permanently: {error}; task paused"),
            );
            self.task_event(key.0, TaskEvent::Hold, Some(reason));
        } else {
            let reason = format!("step `{name}` failed after {retries} retries: {error}");
            self.log_step(
                key,
                "ERROR",
                format!("failed after {retries} retries: {error}"),
            );
            self.task_event(key.0, TaskEvent::Fail, Some(reason));
        }
    }

    fn requeue_without_retry(&mut self, key: StepKey) {
        let step = self.step_mut(key);
        step.row.job_id = None;
        step.row.agent_name = None;
        self.step_event(key, StepEvent::Requeue);
        self.candidates.insert(key);
    }

    fn check_task_done(&mut self, task_id: i64) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        if task.steps.iter().all(|s| s.status == StepStatus::Completed) {
            let elapsed = format_duration(
                (Utc::now() - task.row.started_at.unwrap_or(task.row.created_at))
                    .to_std()
                    .unwrap_or_default(),
            );
            self.log(
                task_id,
                "",
                "INFO",
                format!("workflow complete - total time: {elapsed}"),
            );
            self.task_event(task_id, TaskEvent::Complete, None);
        }
    }

    // ---- scheduling ---------------------------------------------------------------------

    fn enqueue_pending(&mut self, task_id: i64) {
        if let Some(task) = self.tasks.get(&task_id) {
            for (i, s) in task.steps.iter().enumerate() {
                if s.status == StepStatus::Pending {
                    self.candidates.insert((task_id, i));
                }
            }
        }
    }

    fn fire_due_retries(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((due, task, step))) = self.retry_timers.peek().copied() {
            if due > now {
                break;
            }
            self.retry_timers.pop();
            self.candidates.insert((task, step));
        }
        while let Some(Reverse((due, task, step, attempt))) = self.deadlines.peek().copied() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            self.attempt_timed_out((task, step), attempt);
        }
    }

    /// An attempt ran past its step's `timeout_secs`: cancel its job and retry the step as
    /// after a transient failure.
    fn attempt_timed_out(&mut self, key: StepKey, attempt: i32) {
        let Some(task) = self.tasks.get(&key.0) else {
            return;
        };
        let step = &task.steps[key.1];
        if step.row.attempt != attempt || !step.status.is_on_agent() {
            return; // that attempt already ended
        }
        let limit = step.timeout.unwrap_or_default().as_secs();
        if let (Some(agent), Some(job)) = (step.row.agent_name.clone(), step.row.job_id.clone()) {
            self.jobs.remove(&job);
            self.send(&agent, cancel(&job, "step timed out"));
        }
        self.pending_creates
            .retain(|_, p| (p.task_id, p.step) != key);
        self.job_failed(
            key,
            &format!("attempt {attempt} timed out after {limit}s (timeout_secs)"),
            ErrorClass::Transient,
        );
    }

    /// Phase one for every step whose inputs are complete: pick an agent and create the job.
    fn schedule(&mut self) {
        if self.candidates.is_empty() {
            return;
        }
        let mut keys: Vec<StepKey> = self.candidates.drain().collect();
        keys.sort_unstable();
        let now = Utc::now();
        for key in keys {
            let Some(task) = self.tasks.get(&key.0) else {
                continue;
            };
            if !task.status.dispatches() {
                continue; // paused: a retry timer firing now dispatches nothing
            }
            let step = &task.steps[key.1];
            if step.status != StepStatus::Pending {
                continue;
            }
            if step.row.next_attempt_at.is_some_and(|t| t > now) {
                continue; // its retry timer will bring it back
            }
            if !step
                .deps
                .iter()
                .all(|&d| task.steps[d].status == StepStatus::Completed)
            {
                continue; // INPUTS_READY not yet satisfied
            }
            let Some(agent) = self.pick_agent(&step.placement, &step.row.kind) else {
                if self.waiting_for_agent.insert(key) {
                    let msg = format!(
                        "waiting for an agent ({}, kind {})",
                        step.placement, step.row.kind
                    );
                    self.log_step(key, "WARN", msg);
                }
                continue;
            };
            self.dispatch(key, agent);
        }
    }

    fn pick_agent(&self, placement: &Placement, kind: &str) -> Option<String> {
        let usable = |a: &AgentRt| a.conn.is_some() && a.kinds.contains(kind);
        match placement {
            Placement::Agent(name) => self
                .agents
                .get(name)
                .filter(|a| usable(a))
                .map(|_| name.clone()),
            Placement::Role(role) => self
                .agents
                .iter()
                .filter(|(_, a)| a.role == *role && usable(a))
                .min_by_key(|(name, a)| (a.running, (*name).clone()))
                .map(|(name, _)| name.clone()),
        }
    }

    fn dispatch(&mut self, key: StepKey, agent: String) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let (create, attempt) = {
            let task = &self.tasks[&key.0];
            let step = &task.steps[key.1];
            let attempt = step.row.attempt + 1;
            (
                v1::CreateJob {
                    request_id,
                    task_id: key.0,
                    step: step.row.step_name.clone(),
                    attempt: attempt as u32,
                    kind: step.row.kind.clone(),
                    params_json: step.row.params.clone(),
                    checkpoint_json: step.row.checkpoint_data.clone().unwrap_or_default(),
                    task_name: task.row.name.clone(),
                },
                attempt,
            )
        };
        {
            let step = self.step_mut(key);
            step.row.attempt = attempt;
            step.row.agent_name = Some(agent.clone());
            step.row.job_id = None;
            step.row.next_attempt_at = None;
        }
        self.step_event(key, StepEvent::Dispatch);
        if let Some(a) = self.agents.get_mut(&agent) {
            a.running += 1;
        }
        self.pending_creates.insert(
            request_id,
            PendingCreate {
                task_id: key.0,
                step: key.1,
                attempt,
                sent: Instant::now(),
            },
        );
        if let Some(limit) = self.step(key).timeout {
            self.deadlines
                .push(Reverse((Instant::now() + limit, key.0, key.1, attempt)));
        }
        let retry_note = match self.step(key).row.retry_count {
            0 => String::new(),
            n => format!(" (retry {n})"),
        };
        self.log_step(
            key,
            "INFO",
            format!("dispatching to agent {agent}{retry_note}"),
        );
        self.send(&agent, coordinator_message::Msg::CreateJob(create));
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let timeout = self.settings.agent_timeout;
        // A create nobody acknowledged: the agent is alive but its answer never came.
        let unanswered: Vec<(u64, StepKey)> = self
            .pending_creates
            .iter()
            .filter(|(_, p)| now.duration_since(p.sent) > timeout)
            .map(|(id, p)| (*id, (p.task_id, p.step)))
            .collect();
        for (request_id, key) in unanswered {
            self.pending_creates.remove(&request_id);
            if self
                .tasks
                .get(&key.0)
                .is_some_and(|t| t.steps[key.1].status == StepStatus::Dispatching)
            {
                let agent = self.step(key).row.agent_name.clone().unwrap_or_default();
                self.log_step(
                    key,
                    "WARN",
                    format!(
                        "agent {agent} did not acknowledge the job within {}s; dispatching again",
                        timeout.as_secs()
                    ),
                );
                self.requeue_without_retry(key);
            }
        }
        // An agent that stopped talking is as good as gone.
        for (name, agent) in &mut self.agents {
            if agent.conn.is_some() && now.duration_since(agent.last_seen) > timeout {
                warn!(agent = %name, "agent missed its heartbeats; treating it as disconnected");
                agent.conn = None;
                agent.offline_since = Some(agent.last_seen);
            }
        }
        let gone: HashSet<String> = self
            .agents
            .iter()
            .filter(|(_, a)| {
                a.conn.is_none()
                    && a.offline_since
                        .is_some_and(|t| now.duration_since(t) > timeout)
            })
            .map(|(n, _)| n.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        let gone = &gone;
        let stranded: Vec<(StepKey, String)> = self
            .tasks
            .iter()
            .flat_map(|(id, t)| {
                t.steps.iter().enumerate().filter_map(move |(i, s)| {
                    let agent = s.row.agent_name.as_ref()?;
                    (s.status.is_on_agent() && gone.contains(agent))
                        .then(|| ((*id, i), agent.clone()))
                })
            })
            .collect();
        for (key, agent) in stranded {
            self.pending_creates
                .retain(|_, p| (p.task_id, p.step) != key);
            let msg = format!(
                "agent {agent} unreachable for more than {}s",
                timeout.as_secs()
            );
            self.job_failed(key, &msg, ErrorClass::Transient);
        }
    }

    // ---- API ----------------------------------------------------------------------------

    async fn api(&mut self, req: ApiRequest) {
        match req {
            ApiRequest::CreateTask {
                workflow,
                name,
                params,
                reply,
            } => {
                let result = self.create_task(&workflow, name, params).await;
                self.reply_after_commit(reply, result);
            }
            ApiRequest::PlanGraph { graph, reply } => {
                let hosts = self.host_infos();
                let result =
                    ferry_core::graph::plan(&graph, &hosts, &self.settings.coordinator_name)
                        .map_err(|e| match e {
                            ferry_core::graph::GraphPlanError::Invalid(e) => {
                                EngineError::InvalidRequest(e.to_string())
                            }
                            other => EngineError::FailedPrecondition(other.to_string()),
                        });
                let _ = reply.send(result);
            }
            ApiRequest::CreateCtrTask { request, reply } => {
                let result = self.create_ctr_task(*request).await;
                self.reply_after_commit(reply, result);
            }
            ApiRequest::UpdateStepParams {
                task_id,
                step,
                patch,
                user,
                reply,
            } => {
                let r = self
                    .with_task(task_id, |e, t| {
                        e.update_step_params(t, &step, &patch, &user)
                    })
                    .await;
                self.reply_after_commit(reply, r);
            }
            ApiRequest::Pause { task_id, reply } => {
                let r = self.with_task(task_id, |e, t| e.pause(t)).await;
                self.reply_after_commit(reply, r);
            }
            ApiRequest::Resume { task_id, reply } => {
                let r = self.with_task(task_id, |e, t| e.resume(t)).await;
                self.reply_after_commit(reply, r);
            }
            ApiRequest::Cancel { task_id, reply } => {
                let r = self.with_task(task_id, |e, t| e.cancel_task(t)).await;
                self.reply_after_commit(reply, r);
            }
            ApiRequest::Retry { task_id, reply } => {
                let r = self.with_task(task_id, |e, t| e.retry_task(t)).await;
                self.reply_after_commit(reply, r);
            }
            ApiRequest::Decide {
                task_id,
                step,
                approve,
                user,
                comment,
                reply,
            } => {
                let r = self
                    .with_task(task_id, |e, t| e.decide(t, &step, approve, &user, &comment))
                    .await;
                self.reply_after_commit(reply, r);
            }
            ApiRequest::ListAgents { reply } => {
                let now = Instant::now();
                let mut list: Vec<v1::AgentInfo> = self
                    .agents
                    .iter()
                    .map(|(name, a)| v1::AgentInfo {
                        name: name.clone(),
                        role: a.role.to_string(),
                        kinds: {
                            let mut k: Vec<String> = a.kinds.iter().cloned().collect();
                            k.sort();
                            k
                        },
                        gpus: a.gpus.clone(),
                        connected: a.conn.is_some(),
                        last_seen: format!(
                            "{:.1}s ago",
                            now.duration_since(a.last_seen).as_secs_f64()
                        ),
                        running_jobs: a.running,
                        hostname: a.hostname.clone(),
                        paths: a.paths.clone().into_iter().collect(),
                        ssh_to: a.ssh_to.clone(),
                    })
                    .collect();
                list.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(list);
            }
        }
    }

    /// Sends the answer once this turn's changes are committed, with the task row as
    /// committed.
    fn reply_after_commit(
        &mut self,
        reply: Reply<workflow_task::Model>,
        result: Result<i64, EngineError>,
    ) {
        match result {
            Ok(task_id) => {
                let row = self.tasks.get(&task_id).map(|t| t.row.clone());
                self.replies.push(Box::new(move || {
                    let _ =
                        reply.send(row.ok_or_else(|| {
                            EngineError::NotFound(format!("task {task_id} not found"))
                        }));
                }));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    async fn with_task(
        &mut self,
        task_id: i64,
        op: impl FnOnce(&mut Self, i64) -> Result<(), EngineError>,
    ) -> Result<i64, EngineError> {
        if !self.tasks.contains_key(&task_id) {
            let row = self
                .store
                .task(task_id)
                .await?
                .ok_or_else(|| EngineError::NotFound(format!("task {task_id} not found")))?;
            self.load_task(row).await?;
        }
        op(self, task_id)?;
        Ok(task_id)
    }

    async fn create_task(
        &mut self,
        workflow: &str,
        name: String,
        params: BTreeMap<String, String>,
    ) -> Result<i64, EngineError> {
        let wf = self
            .store
            .workflow_by_name(workflow)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("workflow `{workflow}` not found")))?;
        let def: WorkflowDef = Store::definition_of(&wf)?;
        self.create_task_from(wf.id, def, name, params).await
    }

    /// Plans seed 000's pipeline for `request` on the connected agents, stores the plan as
    /// the `ctr_pipeline` workflow (the latest plan; each task keeps its own steps) and
    /// starts it.
    async fn create_ctr_task(&mut self, request: CtrTaskRequest) -> Result<i64, EngineError> {
        request
            .validate()
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        let hosts = self.host_infos();
        let hosts = pipeline::select_hosts(&request, &hosts)
            .map_err(|e| EngineError::FailedPrecondition(e.to_string()))?;
        let today = Utc::now().format("%Y-%m-%d").to_string();
        let def = pipeline::plan(&request, &hosts, &self.settings.pipeline, &today)
            .map_err(|e| EngineError::FailedPrecondition(e.to_string()))?;
        let wf = self.store.apply_workflow(&def).await?;
        let mut params = BTreeMap::new();
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&request) {
            for (k, v) in fields {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                params.insert(k, text);
            }
        }
        let name = request.name.clone();
        let id = self.create_task_from(wf.id, def, name, params).await?;
        self.log(id, "", "INFO", format!("planned on {hosts}"));
        Ok(id)
    }

    /// What the planners know of the agents.
    fn host_infos(&self) -> Vec<HostInfo> {
        self.agents
            .iter()
            .map(|(name, a)| HostInfo {
                name: name.clone(),
                role: Some(a.role),
                paths: a.paths.clone(),
                ssh_to: a.ssh_to.clone(),
                connected: a.conn.is_some(),
            })
            .collect()
    }

    async fn create_task_from(
        &mut self,
        workflow_id: i64,
        def: WorkflowDef,
        name: String,
        params: BTreeMap<String, String>,
    ) -> Result<i64, EngineError> {
        def.validate()
            .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
        // Check every placeholder now, with a stand-in id, so the insert below cannot fail
        // half-way.
        let probe = TemplateContext {
            task_id: 0,
            task_name: &name,
            params: &params,
        };
        for s in &def.steps {
            template::render(&s.params, &probe)
                .map_err(|e| EngineError::InvalidRequest(format!("step `{}`: {e}", s.name)))?;
        }
        let task_name = if name.trim().is_empty() {
            format!("{}_{}", def.name, Utc::now().format("%Y%m%d_%H%M%S"))
        } else {
            name
        };
        // Refused, not cut: the user hears what to change.
        let invalid =
            |e: ferry_core::limits::ValueError| EngineError::InvalidRequest(e.to_string());
        ferry_core::limits::check_user_text(
            "task name",
            &task_name,
            Some(ferry_core::limits::TASK_NAME),
        )
        .map_err(invalid)?;
        for (k, v) in &params {
            ferry_core::limits::check_user_text(
                "a parameter name",
                k,
                Some(ferry_core::limits::SHORT_NAME),
            )
            .map_err(invalid)?;
            ferry_core::limits::check_user_text(&format!("parameter `{k}`"), v, None)
                .map_err(invalid)?;
        }
        let order: HashMap<&str, usize> = def
            .topological_order()
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut steps: Vec<_> = def.steps.iter().collect();
        steps.sort_by_key(|s| order.get(s.name.as_str()).copied().unwrap_or(usize::MAX));
        let params_json = serde_json::to_string(&params).unwrap_or_else(|_| "{}".into());
        let new_task = NewTask {
            name: task_name.clone(),
            workflow_id,
            workflow_name: def.name.clone(),
            params: params_json,
            status: TaskStatus::Running.as_str().to_owned(),
            steps: steps
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let policy = s.retry_policy();
                    NewStep {
                        step_name: s.name.clone(),
                        step_order: i as i32,
                        kind: s.kind.clone(),
                        params: s.params.to_string(),
                        placement: serde_json::to_string(&s.placement).unwrap_or_default(),
                        depends_on: serde_json::to_string(&s.inputs)
                            .unwrap_or_else(|_| "[]".into()),
                        exec_constraint: match s.constraint() {
                            ferry_core::workflow::Constraint::None => "NONE".into(),
                            ferry_core::workflow::Constraint::InputsReady => "INPUTS_READY".into(),
                        },
                        max_retries: policy.max_retries as i32,
                        backoff_ms: policy.backoff_ms as i64,
                        timeout_secs: s.timeout_secs.map(|t| t.min(i64::MAX as u64) as i64),
                    }
                })
                .collect(),
        };
        // Rendered with the task's id inside the insert's transaction: a crash never leaves a
        // task whose steps still hold placeholders.
        let render = |task_id: i64, raw: &str| {
            let raw: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
            let ctx = TemplateContext {
                task_id,
                task_name: &task_name,
                params: &params,
            };
            let rendered = template::render(&raw, &ctx)
                .map_err(|e| e.to_string())?
                .to_string();
            // A `CreateJob` carries the parameters; it must stay far below the message limit.
            if rendered.len() > ferry_core::limits::STEP_PARAMS_BYTES {
                return Err(format!(
                    "its rendered parameters take {} bytes; at most {} fit in a job",
                    rendered.len(),
                    ferry_core::limits::STEP_PARAMS_BYTES
                ));
            }
            Ok(rendered)
        };
        let (task_row, step_rows) = self.store.insert_task(new_task, render).await?;
        let id = task_row.id;
        let task = build_task_rt(task_row, step_rows)?;
        let keys: Vec<StepKey> = (0..task.steps.len()).map(|i| (id, i)).collect();
        self.tasks.insert(id, task);
        self.dirty_tasks.insert(id);
        self.dirty_steps.extend(keys);
        let count = self.tasks[&id].steps.len();
        self.log(
            id,
            "",
            "INFO",
            format!("task created from workflow {} with {count} steps", def.name),
        );
        self.broadcasts.push(Broadcast::TaskStatus {
            task_id: id,
            status: TaskStatus::Running,
        });
        self.enqueue_pending(id);
        Ok(id)
    }

    fn pause(&mut self, task_id: i64) -> Result<(), EngineError> {
        let status = self.tasks[&task_id].status;
        if !matches!(status, TaskStatus::Running | TaskStatus::Pending) {
            return Err(EngineError::FailedPrecondition(format!(
                "task {task_id} is {status}; only a running task can be paused"
            )));
        }
        self.task_event(task_id, TaskEvent::Pause, Some("paused by user".into()));
        self.log(
            task_id,
            "",
            "INFO",
            "task paused: running steps finish, no new step starts".into(),
        );
        Ok(())
    }

    fn resume(&mut self, task_id: i64) -> Result<(), EngineError> {
        let status = self.tasks[&task_id].status;
        if status != TaskStatus::Paused {
            return Err(EngineError::FailedPrecondition(format!(
                "task {task_id} is {status}; only a paused task can be resumed (use retry for a failed one)"
            )));
        }
        if let Some(waiting) = self.tasks[&task_id]
            .steps
            .iter()
            .find(|s| s.status == StepStatus::AwaitingApproval)
        {
            return Err(EngineError::FailedPrecondition(format!(
                "step `{}` of task {task_id} awaits approval: approve or reject it",
                waiting.row.step_name
            )));
        }
        self.requeue_failed_steps(task_id);
        self.task_event(task_id, TaskEvent::Resume, None);
        self.log(task_id, "", "INFO", "task resumed".into());
        self.enqueue_pending(task_id);
        Ok(())
    }

    fn retry_task(&mut self, task_id: i64) -> Result<(), EngineError> {
        let status = self.tasks[&task_id].status;
        if !matches!(
            status,
            TaskStatus::Failed | TaskStatus::Paused | TaskStatus::Cancelled
        ) {
            return Err(EngineError::FailedPrecondition(format!(
                "task {task_id} is {status}; only a failed, paused or cancelled task can be retried"
            )));
        }
        let requeued = self.requeue_failed_steps(task_id);
        self.task_event(task_id, TaskEvent::Retry, None);
        let completed_at = &mut self
            .tasks
            .get_mut(&task_id)
            .expect("task is loaded")
            .row
            .completed_at;
        *completed_at = None;
        self.log(
            task_id,
            "",
            "INFO",
            format!(
                "task retried from its failed steps: {}",
                requeued.join(", ")
            ),
        );
        self.enqueue_pending(task_id);
        Ok(())
    }

    /// The step of a loaded task named `step_name`.
    fn step_key(&self, task_id: i64, step_name: &str) -> Result<StepKey, EngineError> {
        self.tasks[&task_id]
            .steps
            .iter()
            .position(|s| s.row.step_name == step_name)
            .map(|index| (task_id, index))
            .ok_or_else(|| {
                EngineError::NotFound(format!("task {task_id} has no step `{step_name}`"))
            })
    }

    /// Changes a step's parameters before it runs again (seed 000 §7.3: after a training
    /// failure, retry with other hyperparameters). Only steps that have not completed, of a
    /// task that is not running, and only to parameters its kind accepts.
    fn update_step_params(
        &mut self,
        task_id: i64,
        step_name: &str,
        patch: &serde_json::Value,
        user: &str,
    ) -> Result<(), EngineError> {
        let status = self.tasks[&task_id].status;
        if !matches!(
            status,
            TaskStatus::Failed | TaskStatus::Paused | TaskStatus::Cancelled
        ) {
            return Err(EngineError::FailedPrecondition(format!(
                "task {task_id} is {status}; pause it (or let it fail) before changing a step"
            )));
        }
        let key = self.step_key(task_id, step_name)?;
        let step_status = self.step(key).status;
        if step_status == StepStatus::Completed || step_status.is_on_agent() {
            return Err(EngineError::FailedPrecondition(format!(
                "step `{step_name}` is {step_status}; only a step that has not completed can change"
            )));
        }
        if !patch.is_object() {
            return Err(EngineError::InvalidRequest(
                "the change must be a JSON object of parameters".into(),
            ));
        }
        if user.trim().is_empty() {
            return Err(EngineError::InvalidRequest(
                "a change needs the name of who makes it".into(),
            ));
        }
        let mut params: serde_json::Value =
            serde_json::from_str(&self.step(key).row.params).unwrap_or_default();
        merge_patch(&mut params, patch);
        ferry_core::kinds::validate_params(&self.step(key).row.kind, &params).map_err(|e| {
            EngineError::InvalidRequest(format!("step `{step_name}` after the change: {e}"))
        })?;
        self.step_mut(key).row.params = params.to_string();
        self.log_step(
            key,
            "INFO",
            format!("parameters changed by {user}: {patch}"),
        );
        Ok(())
    }

    /// Records a person's decision on a step held for approval. Approval puts the step back
    /// to pending (its next attempt finds the decision in its checkpoint) and resumes the
    /// task; rejection fails the step and leaves the task paused with the reason.
    fn decide(
        &mut self,
        task_id: i64,
        step_name: &str,
        approve: bool,
        user: &str,
        comment: &str,
    ) -> Result<(), EngineError> {
        let key = self.step_key(task_id, step_name)?;
        let status = self.step(key).status;
        if status != StepStatus::AwaitingApproval {
            return Err(EngineError::FailedPrecondition(format!(
                "step `{step_name}` of task {task_id} is {status}, not awaiting approval"
            )));
        }
        if user.trim().is_empty() {
            return Err(EngineError::InvalidRequest(
                "a decision needs the name of who makes it".into(),
            ));
        }
        let decision = if approve { "approved" } else { "rejected" };
        let at = Utc::now().to_rfc3339();
        let record = serde_json::json!({
            "decision": decision, "by": user, "at": at, "comment": comment,
        });
        {
            let step = self.step_mut(key);
            let mut data: serde_json::Value = step
                .row
                .checkpoint_data
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| serde_json::json!({}));
            data["approval"] = record;
            step.row.checkpoint_data = Some(data.to_string());
        }
        let note = if comment.is_empty() {
            String::new()
        } else {
            format!(": {comment}")
        };
        if approve {
            {
                let step = self.step_mut(key);
                step.row.error_message = None;
            }
            self.step_event(key, StepEvent::Approved);
            self.log_step(key, "INFO", format!("approved by {user} at {at}{note}"));
            self.task_event(task_id, TaskEvent::Resume, None);
            self.enqueue_pending(task_id);
        } else {
            let reason = format!("step `{step_name}` rejected by {user}{note}");
            {
                let step = self.step_mut(key);
                step.row.error_message = Some(format!("rejected by {user}{note}"));
                step.row.completed_at = Some(Utc::now());
            }
            self.step_event(key, StepEvent::Rejected);
            self.log_step(key, "WARN", format!("rejected by {user} at {at}{note}"));
            self.task_event(task_id, TaskEvent::Hold, Some(reason));
        }
        Ok(())
    }

    /// Puts failed and cancelled steps back to pending with a fresh retry budget.
    fn requeue_failed_steps(&mut self, task_id: i64) -> Vec<String> {
        let mut names = Vec::new();
        for i in 0..self.tasks[&task_id].steps.len() {
            let key = (task_id, i);
            if !matches!(
                self.step(key).status,
                StepStatus::Failed | StepStatus::Cancelled
            ) {
                continue;
            }
            self.step_event(key, StepEvent::Reset);
            let s = self.step_mut(key);
            s.row.retry_count = 0;
            s.row.error_message = None;
            s.row.job_id = None;
            s.row.completed_at = None;
            s.row.next_attempt_at = None;
            names.push(s.row.step_name.clone());
        }
        names
    }

    fn cancel_task(&mut self, task_id: i64) -> Result<(), EngineError> {
        let status = self.tasks[&task_id].status;
        if matches!(status, TaskStatus::Completed | TaskStatus::Cancelled) {
            return Err(EngineError::FailedPrecondition(format!(
                "task {task_id} is already {status}"
            )));
        }
        let mut to_cancel = Vec::new();
        let n = self.tasks[&task_id].steps.len();
        for i in 0..n {
            let key = (task_id, i);
            let s = self.step(key);
            if s.status.is_terminal() {
                continue;
            }
            if let (Some(agent), Some(job)) = (&s.row.agent_name, &s.row.job_id)
                && s.status.is_on_agent()
            {
                to_cancel.push((agent.clone(), job.clone()));
            }
            self.step_mut(key).row.completed_at = Some(Utc::now());
            self.step_event(key, StepEvent::Cancel);
        }
        for (agent, job) in to_cancel {
            self.send(&agent, cancel(&job, "task cancelled"));
        }
        self.task_event(task_id, TaskEvent::Cancel, Some("cancelled by user".into()));
        self.log(task_id, "", "INFO", "task cancelled".into());
        Ok(())
    }

    // ---- state helpers -------------------------------------------------------------------

    fn step(&self, key: StepKey) -> &StepRt {
        &self.tasks[&key.0].steps[key.1]
    }

    fn step_mut(&mut self, key: StepKey) -> &mut StepRt {
        self.dirty_steps.insert(key);
        &mut self
            .tasks
            .get_mut(&key.0)
            .expect("key refers to a live task")
            .steps[key.1]
    }

    /// Applies `event` to a step through the declared machine (`ferry_core::state`). An
    /// event that means nothing in the step's state is logged and changes nothing; returns
    /// whether the step moved.
    fn step_event(&mut self, key: StepKey, event: StepEvent) -> bool {
        let status = match self.step(key).status.on(event) {
            Ok(next) => next,
            Err(e) => {
                error!(task_id = key.0, step = %self.step(key).row.step_name, "{e}");
                return false;
            }
        };
        let was = self.step(key).status;
        if was.is_on_agent()
            && !status.is_on_agent()
            && let Some(agent) = self.step(key).row.agent_name.clone()
            && let Some(a) = self.agents.get_mut(&agent)
        {
            a.running = a.running.saturating_sub(1);
        }
        if status == StepStatus::Completed && was != StepStatus::Completed {
            let row = &self.step(key).row;
            let seconds = row
                .started_at
                .map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0)
                .unwrap_or(0.0);
            self.settings.observer.on_step_completed(
                &self.tasks[&key.0].row.workflow_name,
                pipeline::stage_of(&row.step_name),
                &row.kind,
                seconds.max(0.0),
            );
        }
        let step = self.step_mut(key);
        step.status = status;
        step.row.status = status.as_str().to_owned();
        step.row.updated_at = Utc::now();
        true
    }

    /// Applies `event` to a task through the declared machine; like [`Self::step_event`].
    fn task_event(&mut self, task_id: i64, event: TaskEvent, reason: Option<String>) -> bool {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return false;
        };
        let status = match task.status.on(event) {
            Ok(next) => next,
            Err(e) => {
                error!(task_id, "{e}");
                return false;
            }
        };
        task.status = status;
        task.row.status = status.as_str().to_owned();
        task.row.status_reason = reason;
        task.row.updated_at = Utc::now();
        if matches!(
            status,
            TaskStatus::Completed | TaskStatus::Cancelled | TaskStatus::Failed
        ) {
            task.row.completed_at = Some(Utc::now());
        }
        if matches!(
            status,
            TaskStatus::Completed | TaskStatus::Cancelled | TaskStatus::Failed
        ) {
            let outcome = TaskOutcome {
                task_id,
                name: task.row.name.clone(),
                workflow: task.row.workflow_name.clone(),
                status: status.as_str().to_owned(),
                reason: task.row.status_reason.clone(),
                duration_seconds: task
                    .row
                    .started_at
                    .map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0)
                    .unwrap_or(0.0)
                    .max(0.0),
                completed_steps: task.completed_steps(),
                total_steps: task.steps.len(),
            };
            self.finished.push(outcome);
        }
        self.dirty_tasks.insert(task_id);
        self.broadcasts
            .push(Broadcast::TaskStatus { task_id, status });
        info!(task_id, status = %status, "task status changed");
        true
    }

    fn step_elapsed(&self, key: StepKey) -> String {
        let row = &self.step(key).row;
        match (row.started_at, row.completed_at) {
            (Some(a), Some(b)) => format_duration((b - a).to_std().unwrap_or_default()),
            _ => "-".into(),
        }
    }

    fn log_step(&mut self, key: StepKey, level: &str, message: String) {
        let step = self.step(key).row.step_name.clone();
        self.log(key.0, &step, level, message);
    }

    fn log(&mut self, task_id: i64, step: &str, level: &str, message: String) {
        info!(task_id, step, "{message}");
        self.push_log(task_id, step, level, LOG_SOURCE_ENGINE, message);
    }

    fn push_log(&mut self, task_id: i64, step: &str, level: &str, source: &str, message: String) {
        let id = self.next_log_id;
        self.next_log_id += 1;
        self.new_logs.push(task_log::Model {
            id,
            task_id,
            step_name: step.to_owned(),
            ts: Utc::now(),
            level: level.to_owned(),
            source: source.to_owned(),
            message,
        });
    }

    fn send(&mut self, agent: &str, msg: coordinator_message::Msg) {
        self.outbox.push((agent.to_owned(), msg));
    }

    /// Rows the store could not keep: logged, counted, and told on their task (in the next
    /// turn's commit, as an engine line that always fits).
    fn quarantine(&mut self, report: ferry_store::CommitReport) {
        if report.adjusted > 0 {
            debug!(
                values = report.adjusted,
                "values cleaned or cut to fit their columns"
            );
        }
        if report.quarantined.is_empty() {
            return;
        }
        self.settings
            .observer
            .on_quarantined(report.quarantined.len() as u64);
        for q in report.quarantined {
            error!(task_id = q.task_id, row = %q.what, error = %q.error, "row quarantined");
            if self.tasks.contains_key(&q.task_id) {
                let message = format!(
                    "{} could not be stored and was quarantined: {}",
                    q.what,
                    ferry_core::limits::fitted(&q.error, 1024)
                );
                self.log(q.task_id, "", "WARN", message);
            }
        }
    }

    // ---- commit -------------------------------------------------------------------------

    /// Commits this turn's changes, then sends what they imply. A commit the database does
    /// not answer is retried (nothing is sent before it succeeds): losing the state would be
    /// worse than waiting. Rows it refuses are split off by the store and quarantined, so one
    /// bad value never stops the engine.
    async fn flush(&mut self, shutdown: &CancellationToken) {
        let mut batch = WriteBatch {
            tasks: self
                .dirty_tasks
                .iter()
                .filter_map(|id| self.tasks.get(id).map(|t| t.row.clone()))
                .collect(),
            steps: self
                .dirty_steps
                .iter()
                .filter_map(|(t, i)| self.tasks.get(t).map(|t| t.steps[*i].row.clone()))
                .collect(),
            logs: std::mem::take(&mut self.new_logs),
            metrics: std::mem::take(&mut self.new_metrics),
            chunks: std::mem::take(&mut self.new_chunks),
        };
        self.dirty_tasks.clear();
        self.dirty_steps.clear();
        let mut backoff = Duration::from_millis(100);
        let report = loop {
            match self.store.commit(&mut batch).await {
                Ok(report) => break report,
                Err(e) => {
                    error!(error = %e, "cannot persist engine state; retrying");
                    if shutdown.is_cancelled() && backoff >= Duration::from_secs(5) {
                        error!("giving up on persisting the last changes during shutdown");
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        self.quarantine(report);
        for (agent, msg) in self.outbox.drain(..) {
            let sent = self
                .agents
                .get(&agent)
                .and_then(|a| a.conn.as_ref())
                .is_some_and(|(_, tx)| {
                    tx.send(Ok(v1::CoordinatorMessage { msg: Some(msg) }))
                        .is_ok()
                });
            if !sent {
                // The agent is gone; its steps are recovered when it re-registers or times out.
                debug!(agent = %agent, "command not delivered: agent disconnected");
            }
        }
        for reply in self.replies.drain(..) {
            reply();
        }
        for log in batch.logs {
            let _ = self.broadcast.send(Broadcast::Log(log));
        }
        for b in self.broadcasts.drain(..) {
            let _ = self.broadcast.send(b);
        }
        for outcome in self.finished.drain(..) {
            self.settings.observer.on_task_finished(outcome);
        }
        // Forget finished tasks; the database has them.
        self.tasks
            .retain(|_, t| !matches!(t.status, TaskStatus::Completed | TaskStatus::Cancelled));
    }
}

fn build_task_rt(
    row: workflow_task::Model,
    steps: Vec<workflow_step::Model>,
) -> Result<TaskRt, EngineError> {
    let status: TaskStatus = row
        .status
        .parse()
        .map_err(|e: ferry_core::state::UnknownValue| {
            EngineError::InvalidRequest(format!("task {}: {e}", row.id))
        })?;
    let index: HashMap<String, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.step_name.clone(), i))
        .collect();
    let mut rts = Vec::with_capacity(steps.len());
    for s in steps {
        let corrupt = |what: &str| {
            EngineError::InvalidRequest(format!(
                "task {} step `{}`: bad {what}",
                s.task_id, s.step_name
            ))
        };
        let status: StepStatus = s.status.parse().map_err(|_| corrupt("status"))?;
        let placement: Placement =
            serde_json::from_str(&s.placement).map_err(|_| corrupt("placement"))?;
        let inputs: Vec<String> =
            serde_json::from_str(&s.depends_on).map_err(|_| corrupt("depends_on"))?;
        let deps = inputs
            .iter()
            .filter_map(|n| index.get(n).copied())
            .collect();
        let policy = RetryPolicy {
            max_retries: s.max_retries.max(0) as u32,
            backoff_ms: s.backoff_ms.max(0) as u64,
        };
        let timeout = s
            .timeout_secs
            .filter(|t| *t > 0)
            .map(|t| Duration::from_secs(t as u64));
        rts.push(StepRt {
            row: s,
            status,
            placement,
            deps,
            dependents: Vec::new(),
            policy,
            timeout,
        });
    }
    for i in 0..rts.len() {
        for d in rts[i].deps.clone() {
            rts[d].dependents.push(i);
        }
    }
    // Rows are ordered by step_order, which the engine uses as the step's index.
    for (i, s) in rts.iter_mut().enumerate() {
        s.row.step_order = i as i32;
    }
    Ok(TaskRt {
        row,
        status,
        steps: rts,
    })
}

/// A `transfer_chunks` row from an agent's chunk report (the store assigns its id).
fn chunk_row(
    task_id: i64,
    step: &str,
    c: v1::ChunkState,
    now: chrono::DateTime<Utc>,
) -> ferry_store::transfer_chunk::Model {
    let text = |s: String| (!s.is_empty()).then_some(s);
    ferry_store::transfer_chunk::Model {
        id: 0,
        task_id,
        step_name: step.to_owned(),
        chunk_id: c.chunk_id,
        source_path: text(c.source_path),
        dest_path: text(c.dest_path),
        offset: Some(c.offset),
        size: Some(c.size),
        checksum: text(c.checksum),
        started_at: (c.status == "in_progress").then_some(now),
        completed_at: (c.status == "completed").then_some(now),
        retry_count: c.retry_count as i32,
        error_message: text(c.error),
        status: c.status,
    }
}

fn start(job_id: &str) -> coordinator_message::Msg {
    coordinator_message::Msg::StartJob(v1::StartJob {
        job_id: job_id.to_owned(),
    })
}

fn cancel(job_id: &str, reason: &str) -> coordinator_message::Msg {
    coordinator_message::Msg::CancelJob(v1::CancelJob {
        job_id: job_id.to_owned(),
        reason: reason.to_owned(),
    })
}

fn forget(job_id: &str) -> coordinator_message::Msg {
    coordinator_message::Msg::ForgetJob(v1::ForgetJob {
        job_id: job_id.to_owned(),
    })
}

/// `1h52m30s`, `9m29s`, `3.2s`, `12ms`: how the seed's log examples print durations.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!(
            "{}h{:02}m{:02}s",
            secs / 3600,
            (secs % 3600) / 60,
            secs % 60
        )
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// RFC 7396 JSON merge patch: objects merge key by key, `null` removes, the rest replaces.
pub(crate) fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    if let serde_json::Value::Object(map) = target {
        for (k, v) in changes {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
    }
}
