//! The JSON the HTTP face speaks: request bodies and answers, each with its OpenAPI schema.
//! Answers are made from the service's replies (the gRPC messages); JSON kept as text on the
//! wire (parameters, progress, checkpoints, graph definitions) is JSON here.

use std::collections::BTreeMap;

use ferry_proto::v1;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Text that holds JSON, as JSON (text that does not parse is kept as a string).
fn json(s: String) -> Option<Value> {
    if s.is_empty() {
        return None;
    }
    Some(serde_json::from_str(&s).unwrap_or(Value::String(s)))
}

/// The error body of every refusal and failure.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// `invalid_argument`, `not_found`, `already_exists`, `failed_precondition`,
    /// `unauthenticated`, `permission_denied`, `payload_too_large`,
    /// `unsupported_media_type`, `unavailable` or `internal`.
    pub code: String,
    pub message: String,
    /// The request field at fault (a JSON path such as `model_params.learning_rate`), when
    /// one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// A task (seed 000 §9). `task_id` and `status` answer task creation as seed 000 §14 shows.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub task_id: i64,
    pub name: String,
    pub workflow: String,
    /// pending, running, paused, completed, failed or cancelled.
    pub status: String,
    /// Why the task is paused or failed, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub current_step: i32,
    pub total_steps: i32,
    pub completed_steps: i32,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub params: BTreeMap<String, String>,
}

impl From<v1::Task> for TaskView {
    fn from(t: v1::Task) -> Self {
        TaskView {
            task_id: t.id,
            name: t.name,
            workflow: t.workflow,
            status: t.status,
            status_reason: opt(t.status_reason),
            current_step: t.current_step,
            total_steps: t.total_steps,
            completed_steps: t.completed_steps,
            created_at: t.created_at,
            updated_at: t.updated_at,
            started_at: opt(t.started_at),
            completed_at: opt(t.completed_at),
            params: t.params.into_iter().collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub name: String,
    pub step_order: i32,
    pub kind: String,
    /// pending, ready, dispatching, running, awaiting_approval, completed, failed,
    /// cancelled, ...
    pub status: String,
    pub placement: String,
    pub inputs: Vec<String>,
    pub constraint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub retry_count: u32,
    pub max_retries: u32,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Value>,
    /// The step's last progress document (bytes, chunks, ETA, epochs, a load's preview).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

impl From<v1::Step> for StepView {
    fn from(s: v1::Step) -> Self {
        StepView {
            name: s.name,
            step_order: s.step_order,
            kind: s.kind,
            status: s.status,
            placement: s.placement,
            inputs: s.inputs,
            constraint: s.constraint,
            agent: opt(s.agent),
            job_id: opt(s.job_id),
            retry_count: s.retry_count,
            max_retries: s.max_retries,
            attempt: s.attempt,
            error_message: opt(s.error_message),
            checkpoint: json(s.checkpoint_json),
            progress: json(s.progress_json),
            started_at: opt(s.started_at),
            completed_at: opt(s.completed_at),
        }
    }
}

/// A task with its steps.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskDetailView {
    #[serde(flatten)]
    pub task: TaskView,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    /// Pass as `before_id` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before_id: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepsView {
    pub steps: Vec<StepView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogView {
    pub id: i64,
    pub task_id: i64,
    /// The step that wrote the line; empty for the engine's own lines about the task.
    pub step: String,
    pub timestamp: String,
    /// DEBUG, INFO, WARN or ERROR.
    pub level: String,
    /// stdout, stderr, engine or agent.
    pub source: String,
    pub message: String,
}

impl From<v1::LogEntry> for LogView {
    fn from(l: v1::LogEntry) -> Self {
        let level = match v1::LogLevel::try_from(l.level) {
            Ok(v1::LogLevel::Debug) => "DEBUG",
            Ok(v1::LogLevel::Warn) => "WARN",
            Ok(v1::LogLevel::Error) => "ERROR",
            _ => "INFO",
        };
        LogView {
            id: l.id,
            task_id: l.task_id,
            step: l.step,
            timestamp: l.timestamp,
            level: level.to_owned(),
            source: l.source,
            message: l.message,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub entries: Vec<LogView>,
    /// Pass as `after_id` for the next page; absent when this page is not full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after_id: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricView {
    pub step: String,
    pub name: String,
    pub value: f64,
    /// Epoch or other ordinal the value belongs to.
    pub index: i64,
    pub timestamp: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetricsView {
    pub metrics: Vec<MetricView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepProgressView {
    pub step: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
    pub chunks_total: u32,
    pub chunks_completed: u32,
    pub chunks_failed: u32,
    /// Re-sends of chunks that failed verification.
    pub chunk_retries: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgressView {
    pub steps: Vec<StepProgressView>,
}

/// A step held for a person's decision, with what it would do (a load's preview rows).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    pub task_id: i64,
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// The first rows that would be written.
    pub preview: Vec<Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApprovalsView {
    pub approvals: Vec<ApprovalView>,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Recorded with the decision (who decides is the caller's identity).
    #[serde(default)]
    pub comment: String,
}

/// Seed 000 §8.2's task request for the built-in CTR pipeline (seed 000 §14's body).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CtrTaskBody {
    pub name: String,
    /// FuxiCTR's experiment id; a model name prefix (`MMoE_test_v1`) picks the model.
    pub experiment_id: String,
    pub sample_sql: String,
    pub infer_sql: String,
    #[serde(default)]
    pub hdfs_path: String,
    pub hive_table: String,
    /// Partition to (over)write, `dt=2026-01-22`; the day the task is created when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// LR, FM, DNN, WideDeep, DeepFM, PNN, DCN(v2), xDeepFM, AutoInt, FiBiNET, FinalMLP, MMoE, ShareBottom or PLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Further model settings (embedding_dim, hidden_units, learning_rate, seed, ...).
    #[serde(default)]
    pub model_params: BTreeMap<String, Value>,
    /// A FuxiCTR configuration folder on the training host: the experiment
    /// `experiment_id` there brings the model, its settings, the features and the labels
    /// (leave out `model`, `model_params`, `batch_size` and `epochs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuxictr_config: Option<String>,
}

/// A task of a stored workflow, with values for its `${param.NAME}` placeholders.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowTaskBody {
    /// The stored workflow's name.
    pub workflow: String,
    /// The task's name; the workflow's name with a timestamp when absent.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Its priority when steps wait for capacity (higher first); the workflow's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// `POST /api/workflow/tasks`: the CTR pipeline's request, or a stored workflow's task (a
/// body with a `workflow` field).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CreateTaskBody {
    Workflow(WorkflowTaskBody),
    Ctr(Box<CtrTaskBody>),
}

/// A task's status, as a filter.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatusFilter {
    Pending,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatusFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatusFilter::Pending => "pending",
            TaskStatusFilter::Running => "running",
            TaskStatusFilter::Paused => "paused",
            TaskStatusFilter::Completed => "completed",
            TaskStatusFilter::Failed => "failed",
            TaskStatusFilter::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    /// Only tasks in this status.
    #[param(inline)]
    pub status: Option<TaskStatusFilter>,
    /// Only tasks of this workflow.
    pub workflow: Option<String>,
    /// Only tasks whose name contains this text.
    pub name: Option<String>,
    /// RFC 3339: only tasks created at or after this time.
    #[param(format = DateTime)]
    pub created_after: Option<String>,
    /// RFC 3339: only tasks created before this time.
    #[param(format = DateTime)]
    pub created_before: Option<String>,
    /// Only tasks older than this id (the previous page's `next_before_id`).
    #[param(minimum = 1)]
    pub before_id: Option<i64>,
    /// Tasks per page, newest first: 100 when absent, at most 1,000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only lines after this id.
    #[param(minimum = 0)]
    pub after_id: Option<i64>,
    /// Lines per page: 10,000 when absent (the most a page holds).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Send the log history after this line id first (0: from the first line).
    #[param(minimum = 0)]
    pub after_id: Option<i64>,
}

/// One message of a task's stream (WebSocket text frames, Server-Sent Events' data).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamMessage {
    Log(LogView),
    /// A step's state: every step's at the start (and after a slow client is skipped
    /// ahead), then each change.
    Step {
        step: String,
        status: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        progress: Option<Value>,
    },
    /// A step's progress document (bytes, chunks, ETA, epochs).
    Progress {
        step: String,
        progress: Value,
    },
    /// The last message: the task's end state.
    End {
        status: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The stream failed (the message says why); the connection closes after it.
    Error {
        message: String,
    },
}

/// One Server-Sent Event of a task's stream, as an event-stream parser reads it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamEvent {
    /// The message's `type`.
    #[schema(inline)]
    pub event: StreamEventName,
    /// The log line's id (`log` events only): resume after it with `after_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A StreamMessage, as JSON text.
    pub data: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamEventName {
    Log,
    Step,
    Progress,
    End,
    Error,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowView {
    pub id: i64,
    pub name: String,
    pub description: String,
    /// The definition as `ferry workflow apply` takes it (secret env values masked).
    pub definition: Value,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /api/workflows`' body: a workflow definition as `ferry workflow apply` takes it, in
/// JSON (the handler reads it as ferry-core's `WorkflowDef`; this is its schema).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct WorkflowDefBody {
    /// 1-100 letters, digits, '_', '-' or '.'.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,100}$")]
    name: String,
    #[serde(default)]
    description: String,
    /// The DAG's steps; `inputs` name other steps of the same definition.
    #[schema(min_items = 1)]
    steps: Vec<StepDefBody>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct StepDefBody {
    /// 1-50 letters, digits, '_' or '-'; unique in the workflow.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,50}$")]
    name: String,
    /// The step's kind (`noop`, `sql_export`, `transfer`, `train`, ...).
    kind: String,
    /// The kind's parameters.
    #[serde(default)]
    params: Option<Value>,
    placement: PlacementBody,
    /// Steps whose completion this step waits for.
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    retry: Option<RetryBody>,
    /// Seconds one attempt may take from its dispatch (at most a year).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_622_400)]
    timeout_secs: Option<u64>,
}

/// Where a step runs: any agent of a role, or one named agent (exactly one of the two).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PlacementBody {
    #[serde(default)]
    #[schema(inline)]
    role: Option<AgentRole>,
    #[serde(default)]
    #[schema(pattern = "\\S")]
    agent: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentRole {
    DataSource,
    Training,
    Inference,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RetryBody {
    #[serde(default)]
    max_retries: Option<u32>,
    /// First back-off in milliseconds; each further retry doubles it.
    #[serde(default)]
    backoff_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowsView {
    pub workflows: Vec<WorkflowView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GraphView {
    pub name: String,
    /// The graph: name, description, nodes, connections, canvas (secret env values masked).
    pub definition: Value,
    pub created_at: String,
    pub updated_at: String,
    /// What validation finds now (empty: ready to build).
    pub problems: Vec<String>,
}

impl From<v1::Graph> for GraphView {
    fn from(g: v1::Graph) -> Self {
        GraphView {
            name: g.name,
            definition: json(g.definition_json).unwrap_or(Value::Null),
            created_at: g.created_at,
            updated_at: g.updated_at,
            problems: g.problems,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GraphsView {
    pub graphs: Vec<GraphView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGraphBody {
    /// 1-100 letters, digits, '_', '-' or '.'.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,100}$")]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A whole graph (nodes, connections, canvas); its name must match `name`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub definition: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanvasBody {
    #[schema(exclusive_minimum = 0.0)]
    pub zoom: f64,
    pub pan_x: f64,
    pub pan_y: f64,
    #[serde(default)]
    pub snap_to_grid: bool,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    /// The task's name; `<graph>_<timestamp>` when absent.
    #[serde(default)]
    pub task_name: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OutputFileView {
    pub node: String,
    /// Relative to the node's output directory, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Where to GET the file's bytes.
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OutputsView {
    pub files: Vec<OutputFileView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    pub name: String,
    pub role: String,
    pub kinds: Vec<String>,
    pub gpus: Vec<u32>,
    pub connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    pub running_jobs: u32,
    pub hostname: String,
    /// The agent's roots (data_root, model_root, staging_dir) as it reported them.
    pub paths: BTreeMap<String, String>,
    /// Servers it holds SSH keys for.
    pub ssh_to: Vec<String>,
    /// The agent's build version, as it registered.
    pub version: String,
    /// Steps it runs at once (0: not limited), and the slots its running steps take.
    pub slots: u32,
    pub slots_in_use: u32,
    /// The GPU ids given to its running steps.
    pub gpus_in_use: Vec<u32>,
}

impl From<v1::AgentInfo> for AgentView {
    fn from(a: v1::AgentInfo) -> Self {
        AgentView {
            name: a.name,
            role: a.role,
            kinds: a.kinds,
            gpus: a.gpus,
            connected: a.connected,
            last_seen: opt(a.last_seen),
            running_jobs: a.running_jobs,
            hostname: a.hostname,
            version: a.version,
            slots: a.slots,
            slots_in_use: a.slots_in_use,
            gpus_in_use: a.gpus_in_use,
            paths: a.paths.into_iter().collect(),
            ssh_to: a.ssh_to,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentsView {
    pub agents: Vec<AgentView>,
}

/// A ready step waiting for capacity.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueuedStepView {
    /// 1 is next.
    pub position: u32,
    pub task_id: i64,
    pub task_name: String,
    pub workflow: String,
    pub step: String,
    pub priority: i32,
    /// What it needs, in words ("1 slot, 1 GPU").
    pub needs: String,
    /// What it waits for, in words.
    pub waits_for: String,
}

impl From<v1::QueuedStep> for QueuedStepView {
    fn from(q: v1::QueuedStep) -> Self {
        QueuedStepView {
            position: q.position,
            task_id: q.task_id,
            task_name: q.task_name,
            workflow: q.workflow,
            step: q.step,
            priority: q.priority,
            needs: q.needs,
            waits_for: q.waits_for,
        }
    }
}

/// Ready steps waiting for capacity, in the order they get it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    pub steps: Vec<QueuedStepView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    pub roles: Vec<String>,
    pub created_by: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl From<v1::TokenInfo> for TokenView {
    fn from(t: v1::TokenInfo) -> Self {
        TokenView {
            id: t.id,
            name: t.name,
            roles: t.roles,
            created_by: t.created_by,
            created_at: t.created_at,
            revoked_at: opt(t.revoked_at),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokensView {
    pub tokens: Vec<TokenView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenBody {
    /// Who the token speaks for: what approvals and the audit log record.
    #[schema(pattern = "^[A-Za-z0-9.@_-]{1,100}$")]
    pub name: String,
    #[schema(min_items = 1)]
    pub roles: Vec<RoleName>,
}

/// A role a token may hold.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    Viewer,
    Operator,
    Approver,
    Author,
    Admin,
}

impl RoleName {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleName::Viewer => "viewer",
            RoleName::Operator => "operator",
            RoleName::Approver => "approver",
            RoleName::Author => "author",
            RoleName::Admin => "admin",
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedTokenView {
    pub info: TokenView,
    /// The secret itself; not stored, not shown again.
    pub token: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub timestamp: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    /// Pass as `before_id` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before_id: Option<i64>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries per page, newest first: 100 when absent, at most 1,000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only entries older than this id (the previous page's `next_before_id`).
    #[param(minimum = 1)]
    pub before_id: Option<i64>,
    /// Only this identity's entries.
    pub actor: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmIView {
    pub name: String,
    pub roles: Vec<String>,
    /// Whether the coordinator checks tokens at all.
    pub auth_enabled: bool,
    /// The token to send as `X-CSRF-Token` with state-changing requests made with the
    /// session cookie; absent for bearer-token callers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// A bearer token (as `ferry token create` printed it).
    pub token: String,
}

// ---- schedules and backfills ----

/// A schedule: a stored workflow (`workflow` with `params`) or a CTR task request (`ctr`)
/// run on a cron in a time zone, one run per logical date.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    pub name: String,
    /// The stored workflow each run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Its task parameters; values may hold the run's dates (`${ds}`).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The CTR task request each run starts; its strings may hold the run's dates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctr: Option<CtrTaskBody>,
    /// Five fields (minute hour day month weekday), or six with seconds first.
    pub cron: String,
    /// An IANA time zone (`Asia/Shanghai`); UTC when absent.
    #[serde(default)]
    pub timezone: String,
    /// none, latest (default) or all: missed runs after downtime.
    #[serde(default)]
    pub catchup: String,
    /// The most missed runs created after downtime (default 1).
    #[serde(default)]
    pub max_catchup: u32,
    /// allow, skip, queue (default) or replace: when the previous run still runs.
    #[serde(default)]
    pub concurrency: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub paused: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    pub id: i64,
    pub name: String,
    /// `workflow` or `ctr`.
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    pub params: BTreeMap<String, String>,
    pub cron: String,
    pub timezone: String,
    pub catchup: String,
    pub max_catchup: u32,
    pub concurrency: String,
    pub priority: i32,
    pub paused: bool,
    /// The newest logical date considered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    pub created_at: String,
    /// The next runs' logical dates.
    pub next_runs: Vec<String>,
}

impl From<v1::Schedule> for ScheduleView {
    fn from(s: v1::Schedule) -> Self {
        ScheduleView {
            id: s.id,
            name: s.name,
            target: s.target,
            workflow: opt(s.workflow),
            request: serde_json::from_str(&s.request_json).ok(),
            params: s.params.into_iter().collect(),
            cron: s.cron,
            timezone: s.timezone,
            catchup: s.catchup,
            max_catchup: s.max_catchup,
            concurrency: s.concurrency,
            priority: s.priority,
            paused: s.paused,
            cursor: opt(s.cursor),
            created_at: s.created_at,
            next_runs: s.next_runs,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SchedulesView {
    pub schedules: Vec<ScheduleView>,
}

/// One run of a schedule (a logical date) and its task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleRunView {
    pub logical_date: String,
    pub ds: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill_id: Option<i64>,
    pub attempts: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ScheduleDetailView {
    pub schedule: ScheduleView,
    /// Oldest first (the latest 500).
    pub runs: Vec<ScheduleRunView>,
}

impl From<v1::ScheduleDetail> for ScheduleDetailView {
    fn from(d: v1::ScheduleDetail) -> Self {
        ScheduleDetailView {
            schedule: ScheduleView::from(d.schedule.unwrap_or_default()),
            runs: d
                .runs
                .into_iter()
                .map(|r| ScheduleRunView {
                    logical_date: r.logical_date,
                    ds: r.ds,
                    task_id: (r.task_id != 0).then_some(r.task_id),
                    status: opt(r.status),
                    backfill_id: (r.backfill_id != 0).then_some(r.backfill_id),
                    attempts: r.attempts,
                })
                .collect(),
        }
    }
}

/// A backfill: a schedule's runs over a range of dates.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillBody {
    pub schedule: String,
    /// YYYY-MM-DD in the schedule's zone; both ends included.
    pub start: String,
    pub end: String,
    /// Newest first.
    #[serde(default)]
    pub reverse: bool,
    /// Runs of the backfill at once (default 1).
    #[serde(default)]
    pub max_active: u32,
    #[serde(default)]
    pub priority: i32,
    /// missing (default), failed or all.
    #[serde(default)]
    pub reprocess: String,
    /// Store nothing; answer with the runs it would create.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackfillView {
    pub id: i64,
    pub schedule: String,
    pub start: String,
    pub end: String,
    pub reverse: bool,
    pub max_active: u32,
    pub priority: i32,
    pub reprocess: String,
    /// running, completed or cancelled.
    pub status: String,
    pub done: u32,
    pub running: u32,
    pub failed: u32,
    pub left: u32,
    pub created_at: String,
}

impl From<v1::Backfill> for BackfillView {
    fn from(b: v1::Backfill) -> Self {
        BackfillView {
            id: b.id,
            schedule: b.schedule,
            start: b.start,
            end: b.end,
            reverse: b.reverse,
            max_active: b.max_active,
            priority: b.priority,
            reprocess: b.reprocess,
            status: b.status,
            done: b.done,
            running: b.running,
            failed: b.failed,
            left: b.left,
            created_at: b.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackfillResultView {
    /// Absent for a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillView>,
    /// The dates (`ds`) of the runs it creates (would create), in order.
    pub runs: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackfillsView {
    pub backfills: Vec<BackfillView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BackfillQuery {
    /// Only this schedule's backfills.
    #[serde(default)]
    pub schedule: String,
}
