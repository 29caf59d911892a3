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
use ferry_core::json::merge_patch;
use ferry_core::pipeline::{self, CtrTaskRequest, HostInfo, PipelineSettings};
use ferry_core::template::{self, TemplateContext};
use ferry_core::units::format_duration;
use ferry_core::workflow::{Placement, WorkflowDef};
use ferry_core::{ErrorClass, JobState, Role, StepEvent, StepStatus, TaskEvent, TaskStatus};
use ferry_proto::v1::{self, agent_message, coordinator_message, job_event};
use ferry_proto::{error_class_from_wire, job_state_from_wire};
use ferry_store::{NewStep, NewTask, Store, WriteBatch, task_log, workflow_task};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

mod agents;
mod capacity;
mod commands;
mod commit;
mod events;
mod model;
mod planning;
mod recovery;
mod scheduler;

use crate::error::EngineError;
use crate::observe::{Observer, TaskOutcome};
pub use capacity::QueuedStep;
use model::{AgentRt, Cursor, PendingCreate, StepRt, TaskRt, build_task_rt};
use scheduler::QueueKey;

/// The engine's time: the system's, or one a test moves by hand (the in-process harness),
/// so that back-offs, deadlines and agent timeouts are tested in milliseconds.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<std::sync::Mutex<Instant>>),
}

impl Clock {
    /// A clock that stands still until [`Clock::advance`] moves it.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(std::sync::Mutex::new(Instant::now())))
    }

    pub fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Manual(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Moves a manual clock forward (the system clock moves by itself).
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(t) = self {
            *t.lock().unwrap_or_else(|p| p.into_inner()) += by;
        }
    }
}

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
    pub clock: Clock,
    /// `workflow.pools`: pools shared across workflows and their sizes.
    pub pools: BTreeMap<String, u32>,
}

/// How a task is created beyond its workflow and parameters.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    /// Its priority in the queue (the workflow's `priority`, else 0, when absent).
    pub priority: Option<i32>,
    /// The run of a schedule (or backfill) it is: stored with the task in one transaction,
    /// unique per schedule and logical date.
    pub run: Option<ferry_store::RunLink>,
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
        /// The event's number (`AgentMessage.seq`); 0 when not numbered.
        seq: u64,
        msg: agent_message::Msg,
    },
    Api(ApiRequest),
    /// Runs the periodic checks (agent liveness, unanswered creates, timers) now; the
    /// in-process harness sends it after moving a manual clock.
    Tick,
}

pub use model::AgentTx;

/// A message from an agent about what is not its own (another agent's job or create):
/// dropped, and logged as a security event.
fn security_event(agent: &str, what: &str) {
    crate::auth::security_event(what, agent);
}
type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// Requests that change tasks; reads go straight to the store.
pub enum ApiRequest {
    CreateTask {
        workflow: String,
        name: String,
        params: BTreeMap<String, String>,
        opts: TaskOptions,
        reply: Reply<workflow_task::Model>,
    },
    /// Starts a task from a plan made outside the engine (the built-in CTR pipeline, see
    /// [`EngineHandle::plan_ctr`]) and stored as workflow `workflow_id`; `note` goes into the
    /// task's log.
    CreatePlanned {
        workflow_id: i64,
        def: Box<WorkflowDef>,
        name: String,
        params: BTreeMap<String, String>,
        note: Option<String>,
        opts: TaskOptions,
        reply: Reply<workflow_task::Model>,
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
    ListQueue {
        reply: oneshot::Sender<Vec<QueuedStep>>,
    },
}

/// What followers of a task hear (log lines, state changes, progress), after the change is
/// committed.
#[derive(Debug, Clone)]
pub enum Broadcast {
    Log(task_log::Model),
    TaskStatus {
        task_id: i64,
        status: TaskStatus,
    },
    Step {
        task_id: i64,
        step: String,
        status: StepStatus,
    },
    /// A step's progress document (bytes, chunks, ETA, epochs), as its agent reported it.
    Progress {
        task_id: i64,
        step: String,
        progress_json: String,
    },
}

/// Handle the gRPC services use to talk to the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<EngineMsg>,
    broadcast: broadcast::Sender<Broadcast>,
    hosts: tokio::sync::watch::Receiver<Vec<HostInfo>>,
    planning: Arc<planning::PlanSettings>,
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

    pub async fn list_queue(&self) -> Result<Vec<QueuedStep>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.send(EngineMsg::Api(ApiRequest::ListQueue { reply }))
            .await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Broadcast> {
        self.broadcast.subscribe()
    }

    /// The hosts the engine knows now (roles, roots, SSH peers, connected or not), as the
    /// planners of the CTR pipeline and of graphs read them, without a turn of the engine.
    pub fn hosts(&self) -> Vec<HostInfo> {
        self.hosts.borrow().clone()
    }
}

type StepKey = (i64, usize);

pub struct Engine {
    store: Store,
    /// What the planners read (see [`EngineHandle::hosts`]); republished when agents change.
    hosts: tokio::sync::watch::Sender<Vec<HostInfo>>,
    settings: EngineSettings,
    rx: mpsc::Receiver<EngineMsg>,
    broadcast: broadcast::Sender<Broadcast>,
    tasks: HashMap<i64, TaskRt>,
    agents: HashMap<String, AgentRt>,
    /// How far each agent's numbered events are applied; stored with each commit.
    cursors: HashMap<String, Cursor>,
    dirty_cursors: HashSet<String>,
    /// Job id → its step and the agent that runs it (the only sender whose events about
    /// the job count).
    jobs: HashMap<String, (StepKey, String)>,
    pending_creates: HashMap<u64, PendingCreate>,
    next_request_id: u64,
    next_log_id: i64,
    /// Steps that may have become dispatchable since the last turn.
    candidates: HashSet<StepKey>,
    /// Steps that found no agent to run them; re-examined when an agent attaches.
    waiting_for_agent: HashSet<StepKey>,
    /// Ready steps waiting for capacity (slots, GPUs, a pool, their workflow's
    /// `max_active_tasks`) in the order they get it, each with what it waits for.
    queue: BTreeMap<QueueKey, String>,
    /// Something was freed (a step ended, an agent came): the queue is looked at again.
    capacity_changed: bool,
    /// The queue or an agent's load changed since the gauges were last published.
    gauges_dirty: bool,
    /// When they were.
    gauges_published: Option<Instant>,
    /// Steps running in each pool.
    pool_used: HashMap<String, u32>,
    /// Tasks of each workflow holding capacity (for `max_active_tasks`).
    active_by_workflow: HashMap<String, u32>,
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
    fn now(&self) -> Instant {
        self.settings.clock.now()
    }

    /// Loads unfinished tasks from the store and returns the engine and its handle.
    pub async fn start(
        store: Store,
        settings: EngineSettings,
    ) -> Result<(Engine, EngineHandle), EngineError> {
        let (tx, rx) = mpsc::channel(16 * 1024);
        let (broadcast, _) = broadcast::channel(16 * 1024);
        let next_log_id = store.max_log_id().await? + 1;
        let cursors = store
            .agent_cursors()
            .await?
            .into_iter()
            .map(|c| {
                let cursor = Cursor {
                    instance: c.instance as u64,
                    seq: c.seq.max(0) as u64,
                };
                (c.agent_name, cursor)
            })
            .collect();
        let (hosts_tx, hosts) = tokio::sync::watch::channel(Vec::new());
        let planning = Arc::new(planning::PlanSettings {
            pipeline: settings.pipeline.clone(),
            coordinator_name: settings.coordinator_name.clone(),
        });
        let mut engine = Engine {
            hosts: hosts_tx,
            store,
            settings,
            rx,
            broadcast: broadcast.clone(),
            tasks: HashMap::new(),
            agents: HashMap::new(),
            cursors,
            dirty_cursors: HashSet::new(),
            jobs: HashMap::new(),
            pending_creates: HashMap::new(),
            next_request_id: 1,
            next_log_id,
            candidates: HashSet::new(),
            waiting_for_agent: HashSet::new(),
            queue: BTreeMap::new(),
            capacity_changed: false,
            gauges_dirty: true,
            gauges_published: None,
            pool_used: HashMap::new(),
            active_by_workflow: HashMap::new(),
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
        engine.publish_hosts();
        Ok((
            engine,
            EngineHandle {
                tx,
                broadcast,
                hosts,
                planning,
            },
        ))
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
            let busy_since = self.now();
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
            self.publish_capacity();
            self.flush(&shutdown).await;
            let busy = self.now().duration_since(busy_since);
            if busy > self.settings.agent_timeout / 2 {
                self.forgive_stall(busy);
            }
        }
        // Make what was decided durable before exiting; agents keep running their jobs and
        // re-attach to the next coordinator.
        self.flush(&shutdown).await;
        info!("engine stopped");
    }

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
            EngineMsg::FromAgent {
                name,
                conn_id,
                seq,
                msg,
            } => self.agent_message(&name, conn_id, seq, msg),
            EngineMsg::Api(req) => self.api(req).await,
            EngineMsg::Tick => self.on_tick(),
        }
    }

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
        if was.is_on_agent() && !status.is_on_agent() {
            self.release(key);
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
        self.dirty_steps.insert(key);
        self.tasks
            .get_mut(&key.0)
            .expect("key refers to a live task")
            .set_step_status(key.1, status);
        if status != was {
            self.broadcasts.push(Broadcast::Step {
                task_id: key.0,
                step: self.step(key).row.step_name.clone(),
                status,
            });
        }
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
