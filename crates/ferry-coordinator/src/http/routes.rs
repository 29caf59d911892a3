//! The HTTP routes: seed 000 §9's paths, and what the CLI and the dashboard need besides
//! (workflows, seed 003's graphs, approvals, outputs, agents, tokens, the audit log, login).
//! Each handler checks its input, calls the service and answers with a view.

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::access::ApiRole;
use ferry_proto::v1::{self, workflow_service_server::WorkflowService};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiError, ApiResult, Caller, JsonBody, P, Q, bounded, decode, json_bytes};
use super::session;
use super::state::AppState;
use super::views::*;
use crate::api::{MAX_LOG_PAGE, WorkflowApi};
use crate::error::ErrorCode;

/// Calls the service implementation as `caller` and unwraps its answer.
macro_rules! svc {
    ($st:expr, $method:ident, $caller:expr, $msg:expr) => {
        <WorkflowApi as WorkflowService>::$method(&$st.api, $caller.request($msg))
            .await
            .map_err(ApiError::from)?
            .into_inner()
    };
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry",
        description = "Ferry's workflow API (seed 000 §9): tasks of the CTR pipeline and of stored workflows, their steps, logs, metrics and progress; seed 003's graphs; approvals, agents, tokens and the audit log. Authenticate with `Authorization: Bearer TOKEN`, or log in for a session cookie (then send `X-CSRF-Token` with requests that change state).",
    ),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "tasks", description = "Seed 000 §9.1 and §9.2: tasks and their monitoring"),
        (name = "workflows", description = "Stored workflow definitions"),
        (name = "graphs", description = "Seed 003: building workflows as graphs"),
        (name = "access", description = "Login, tokens and the audit log"),
        (name = "system", description = "Agents, health and metrics"),
        (name = "schedules", description = "Schedules (cron runs with logical dates) and backfills"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(session::COOKIE))),
        );
    }
}

pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_task, list_tasks))
        .routes(routes!(get_task, cancel_task))
        .routes(routes!(retry_task))
        .routes(routes!(pause_task))
        .routes(routes!(resume_task))
        .routes(routes!(task_status))
        .routes(routes!(task_steps))
        .routes(routes!(task_logs))
        .routes(routes!(super::stream::log_stream))
        .routes(routes!(super::stream::event_stream))
        .routes(routes!(task_metrics))
        .routes(routes!(task_progress))
        .routes(routes!(task_approvals))
        .routes(routes!(approve_step))
        .routes(routes!(reject_step))
        .routes(routes!(update_step_params))
        .routes(routes!(task_outputs))
        .routes(routes!(output_file))
        .routes(routes!(list_workflows, apply_workflow))
        .routes(routes!(get_workflow))
        .routes(routes!(list_graphs, create_graph))
        .routes(routes!(get_graph, delete_graph))
        .routes(routes!(add_node))
        .routes(routes!(update_node, remove_node))
        .routes(routes!(add_connection))
        .routes(routes!(remove_connection))
        .routes(routes!(save_canvas))
        .routes(routes!(build_graph))
        .routes(routes!(execute_graph))
        .routes(routes!(list_agents))
        .routes(routes!(list_queue))
        .routes(routes!(create_schedule, list_schedules))
        .routes(routes!(get_schedule, delete_schedule))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
        .routes(routes!(create_backfill, list_backfills))
        .routes(routes!(cancel_backfill))
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(list_audit))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(whoami))
        .routes(routes!(health))
        .routes(routes!(metrics))
}

fn task_ref(task_id: i64) -> v1::TaskRef {
    v1::TaskRef { task_id }
}

fn created<T>(body: T) -> (StatusCode, Json<T>) {
    (StatusCode::CREATED, Json(body))
}

// ---- tasks (seed 000 §9.1) ----

/// Creates a task: seed 000 §8.2's CTR pipeline request (the body of seed 000 §14's curl
/// example), or a stored workflow's task when the body has a `workflow` field.
#[utoipa::path(
    post, path = "/api/workflow/tasks", tag = "tasks",
    request_body = CreateTaskBody,
    responses(
        (status = 201, description = "The task, created (it starts at once)", body = TaskView),
        (status = "4XX", description = "Refused; the body names the problem", body = ErrorBody),
    )
)]
async fn create_task(
    State(st): State<AppState>,
    caller: Caller,
    req: Request,
) -> ApiResult<(StatusCode, Json<TaskView>)> {
    let bytes = json_bytes(req).await?;
    let value: serde_json::Value = decode(&bytes)?;
    let Some(object) = value.as_object() else {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "the body must be a JSON object (a task request)",
        ));
    };
    let task = if object.contains_key("workflow") {
        let body: WorkflowTaskBody = decode(&bytes)?;
        svc!(
            st,
            create_task,
            caller,
            v1::CreateTaskRequest {
                workflow: body.workflow,
                name: body.name,
                params: body.params.into_iter().collect(),
                priority: body.priority,
            }
        )
    } else {
        let body: CtrTaskBody = decode(&bytes)?;
        svc!(st, create_ctr_task, caller, ctr_request(body)?)
    };
    Ok(created(TaskView::from(task)))
}

fn ctr_request(body: CtrTaskBody) -> Result<v1::CtrTaskRequest, ApiError> {
    let model_params_json = if body.model_params.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&body.model_params)
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.to_string()))?
    };
    Ok(v1::CtrTaskRequest {
        name: body.name,
        experiment_id: body.experiment_id,
        sample_sql: body.sample_sql,
        infer_sql: body.infer_sql,
        hdfs_path: body.hdfs_path,
        hive_table: body.hive_table,
        partition: body.partition,
        training_server: body.training_server,
        inference_server: body.inference_server,
        source_server: body.source_server,
        gpu_count: body.gpu_count,
        batch_size: body.batch_size,
        epochs: body.epochs,
        model: body.model,
        model_params_json,
        fuxictr_config: body.fuxictr_config,
    })
}

/// Lists tasks, newest first, a page at a time.
#[utoipa::path(
    get, path = "/api/workflow/tasks", tag = "tasks",
    params(TaskQuery),
    responses(
        (status = 200, description = "A page of tasks", body = TaskPage),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn list_tasks(
    State(st): State<AppState>,
    caller: Caller,
    Q(q): Q<TaskQuery>,
) -> ApiResult<Json<TaskPage>> {
    // As documented: the service reads 0 as "absent" and caps the page, which a client
    // that sent the value would not expect.
    bounded("limit", q.limit, 1, Some(1000))?;
    bounded("before_id", q.before_id, 1, None)?;
    for (field, value) in [
        ("created_after", &q.created_after),
        ("created_before", &q.created_before),
    ] {
        if value.as_deref() == Some("") {
            return Err(ApiError::field(
                ErrorCode::InvalidArgument,
                field,
                format!("`{field}` must be an RFC 3339 time, not empty"),
            ));
        }
    }
    let out = svc!(
        st,
        list_tasks,
        caller,
        v1::ListTasksRequest {
            status: q.status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
            limit: q.limit.unwrap_or(0),
            workflow: q.workflow.unwrap_or_default(),
            name: q.name.unwrap_or_default(),
            created_after: q.created_after.unwrap_or_default(),
            created_before: q.created_before.unwrap_or_default(),
            before_id: q.before_id.unwrap_or(0),
        }
    );
    Ok(Json(TaskPage {
        tasks: out.tasks.into_iter().map(TaskView::from).collect(),
        next_before_id: (out.next_before_id > 0).then_some(out.next_before_id),
    }))
}

/// A task with its steps.
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task and its steps", body = TaskDetailView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn get_task(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<TaskDetailView>> {
    let out = svc!(st, get_task, caller, task_ref(id));
    let task = out
        .task
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the service answered without a task"))?;
    Ok(Json(TaskDetailView {
        task: task.into(),
        steps: out.steps.into_iter().map(StepView::from).collect(),
    }))
}

/// Cancels a task (its running steps are stopped; what it produced is kept).
#[utoipa::path(
    delete, path = "/api/workflow/tasks/{id}", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task, cancelled", body = TaskView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn cancel_task(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<TaskView>> {
    Ok(Json(svc!(st, cancel_task, caller, task_ref(id)).into()))
}

/// Re-queues the task's failed (and cancelled) steps and runs it again from there.
#[utoipa::path(
    post, path = "/api/workflow/tasks/{id}/retry", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task, running again", body = TaskView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn retry_task(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<TaskView>> {
    Ok(Json(svc!(st, retry_task, caller, task_ref(id)).into()))
}

/// Pauses a running task (running steps finish; no new step starts).
#[utoipa::path(
    post, path = "/api/workflow/tasks/{id}/pause", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task, paused", body = TaskView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn pause_task(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<TaskView>> {
    Ok(Json(svc!(st, pause_task, caller, task_ref(id)).into()))
}

/// Resumes a paused task.
#[utoipa::path(
    post, path = "/api/workflow/tasks/{id}/resume", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task, running", body = TaskView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn resume_task(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<TaskView>> {
    Ok(Json(svc!(st, resume_task, caller, task_ref(id)).into()))
}

// ---- monitoring (seed 000 §9.2) ----

/// The task's current status.
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}/status", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn task_status(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<TaskView>> {
    Ok(Json(svc!(st, get_task_status, caller, task_ref(id)).into()))
}

/// The task's steps in order.
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}/steps", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The steps", body = StepsView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn task_steps(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<StepsView>> {
    let out = svc!(st, get_steps, caller, task_ref(id));
    Ok(Json(StepsView {
        steps: out.steps.into_iter().map(StepView::from).collect(),
    }))
}

/// The task's log history, a page at a time (archived lines included).
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}/logs", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id"), LogQuery),
    responses(
        (status = 200, description = "A page of log lines", body = LogPage),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn task_logs(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
    Q(q): Q<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    let after_id = bounded("after_id", q.after_id, 0, None)?.unwrap_or(0);
    let page = MAX_LOG_PAGE as u32;
    let limit = bounded("limit", q.limit, 1, Some(page))?.unwrap_or(page);
    let out = svc!(
        st,
        get_logs,
        caller,
        v1::GetLogsRequest {
            task_id: id,
            after_id,
            limit,
        }
    );
    let full = out.entries.len() == limit as usize;
    let next_after_id = out.entries.last().filter(|_| full).map(|l| l.id);
    Ok(Json(LogPage {
        entries: out.entries.into_iter().map(LogView::from).collect(),
        next_after_id,
    }))
}

/// Training metrics (AUC, logloss per epoch, ...), as the steps reported them.
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}/metrics", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The metrics", body = MetricsView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn task_metrics(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<MetricsView>> {
    let out = svc!(st, get_metrics, caller, task_ref(id));
    Ok(Json(MetricsView {
        metrics: out
            .metrics
            .into_iter()
            .map(|m| MetricView {
                step: m.step,
                name: m.name,
                value: m.value,
                index: m.index,
                timestamp: m.timestamp,
            })
            .collect(),
    }))
}

/// Every step's progress and its transfer chunks by state.
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}/progress", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Progress per step", body = ProgressView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn task_progress(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<ProgressView>> {
    let out = svc!(st, get_progress, caller, task_ref(id));
    Ok(Json(ProgressView {
        steps: out
            .steps
            .into_iter()
            .map(|s| StepProgressView {
                step: s.step,
                status: s.status,
                progress: (!s.progress_json.is_empty())
                    .then(|| serde_json::from_str(&s.progress_json).ok())
                    .flatten(),
                chunks_total: s.chunks_total,
                chunks_completed: s.chunks_completed,
                chunks_failed: s.chunks_failed,
                chunk_retries: s.chunk_retries,
            })
            .collect(),
    }))
}

// ---- interventions (seed 000 §7.3) ----

/// The task's steps held for a person's decision, with the rows a load would write.
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}/approvals", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "Steps awaiting approval", body = ApprovalsView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn task_approvals(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<ApprovalsView>> {
    let out = svc!(st, get_steps, caller, task_ref(id));
    let approvals = out
        .steps
        .into_iter()
        .filter(|s| s.status == ferry_core::StepStatus::AwaitingApproval.as_str())
        .map(|s| {
            let progress: serde_json::Value =
                serde_json::from_str(&s.progress_json).unwrap_or_default();
            let text = |k: &str| progress.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            ApprovalView {
                task_id: id,
                step: s.name,
                table: text("table"),
                partition: text("partition"),
                preview: progress
                    .get("preview")
                    .and_then(|p| p.as_array())
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect();
    Ok(Json(ApprovalsView { approvals }))
}

/// Approves a step held in `awaiting_approval`; recorded with the caller's identity.
#[utoipa::path(
    post, path = "/api/workflow/tasks/{id}/steps/{step}/approve", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id"), ("step" = String, Path, description = "The step's name")),
    request_body = DecisionBody,
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = "4XX", description = "Refused, or no such task or step", body = ErrorBody),
    )
)]
async fn approve_step(
    State(st): State<AppState>,
    caller: Caller,
    P((id, step)): P<(i64, String)>,
    JsonBody(body): JsonBody<DecisionBody>,
) -> ApiResult<Json<TaskView>> {
    let d = v1::StepDecision {
        task_id: id,
        step,
        user: String::new(),
        comment: body.comment,
    };
    Ok(Json(svc!(st, approve_step, caller, d).into()))
}

/// Rejects a step held in `awaiting_approval` (the step fails); recorded with the caller.
#[utoipa::path(
    post, path = "/api/workflow/tasks/{id}/steps/{step}/reject", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id"), ("step" = String, Path, description = "The step's name")),
    request_body = DecisionBody,
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = "4XX", description = "Refused, or no such task or step", body = ErrorBody),
    )
)]
async fn reject_step(
    State(st): State<AppState>,
    caller: Caller,
    P((id, step)): P<(i64, String)>,
    JsonBody(body): JsonBody<DecisionBody>,
) -> ApiResult<Json<TaskView>> {
    let d = v1::StepDecision {
        task_id: id,
        step,
        user: String::new(),
        comment: body.comment,
    };
    Ok(Json(svc!(st, reject_step, caller, d).into()))
}

/// Changes a not-yet-completed step's parameters of a paused or failed task (a JSON merge
/// patch, RFC 7396: `null` removes a key); then retry or resume the task.
#[utoipa::path(
    patch, path = "/api/workflow/tasks/{id}/steps/{step}/params", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id"), ("step" = String, Path, description = "The step's name")),
    request_body(content = Object, description = "A JSON merge patch of the step's parameters"),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = "4XX", description = "Refused, or no such task or step", body = ErrorBody),
    )
)]
async fn update_step_params(
    State(st): State<AppState>,
    caller: Caller,
    P((id, step)): P<(i64, String)>,
    JsonBody(patch): JsonBody<serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<Json<TaskView>> {
    let patch_json = serde_json::Value::Object(patch).to_string();
    let u = v1::StepParamsUpdate {
        task_id: id,
        step,
        patch_json,
        user: String::new(),
    };
    Ok(Json(svc!(st, update_step_params, caller, u).into()))
}

// ---- outputs (seed 003's downloads) ----

/// The files the task's nodes sent to the coordinator.
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}/outputs", tag = "tasks",
    params(("id" = i64, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The files", body = OutputsView),
        (status = "4XX", description = "Refused, or no such task", body = ErrorBody),
    )
)]
async fn task_outputs(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<OutputsView>> {
    // The service checks the role and that the task exists.
    svc!(st, get_task_status, caller, task_ref(id));
    let files = st.api.downloads.files(id, None).map_err(ApiError::from)?;
    let files = files
        .into_iter()
        .map(|f| OutputFileView {
            size: std::fs::metadata(&f.full).map(|m| m.len()).unwrap_or(0),
            url: format!(
                "/api/workflow/tasks/{id}/outputs/{}/{}",
                encode_segment(&f.node),
                encode_segment(&f.path)
            ),
            node: f.node,
            path: f.path,
        })
        .collect();
    Ok(Json(OutputsView { files }))
}

/// One output file's bytes.
#[utoipa::path(
    get, path = "/api/workflow/tasks/{id}/outputs/{node}/{path}", tag = "tasks",
    params(
        ("id" = i64, Path, description = "The task's id"),
        ("node" = String, Path, description = "The node that sent it"),
        ("path" = String, Path, description = "The file's path under the node's outputs"),
    ),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = "4XX", description = "Refused, or no such file", body = ErrorBody),
    )
)]
async fn output_file(
    State(st): State<AppState>,
    caller: Caller,
    P((id, node, path)): P<(i64, String, String)>,
) -> ApiResult<Response> {
    svc!(st, get_task_status, caller, task_ref(id));
    // Only a file the listing names is served: nothing outside the task's outputs.
    let files = st
        .api
        .downloads
        .files(id, Some(&node))
        .map_err(ApiError::from)?;
    let Some(f) = files.into_iter().find(|f| f.path == path) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("task {id} has no output `{path}` from node `{node}`"),
        ));
    };
    let file = tokio::fs::File::open(&f.full).await.map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot open {}: {e}", f.full.display()),
        )
    })?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    let name = f
        .path
        .rsplit('/')
        .next()
        .unwrap_or("output")
        .replace('"', "");
    let mut res = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(res)
}

// ---- workflows ----

fn workflow_view(w: v1::Workflow) -> ApiResult<WorkflowView> {
    let wire = w.definition.unwrap_or_default();
    let def = ferry_core::workflow::WorkflowDef::try_from(wire)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let definition = serde_json::to_value(&def)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(WorkflowView {
        id: w.id,
        name: def.name.clone(),
        description: def.description.clone(),
        definition,
        created_at: w.created_at,
        updated_at: w.updated_at,
    })
}

/// The stored workflow definitions.
#[utoipa::path(
    get, path = "/api/workflows", tag = "workflows",
    responses(
        (status = 200, description = "The workflows", body = WorkflowsView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn list_workflows(
    State(st): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<WorkflowsView>> {
    let out = svc!(st, list_workflows, caller, v1::ListWorkflowsRequest {});
    Ok(Json(WorkflowsView {
        workflows: out
            .workflows
            .into_iter()
            .map(workflow_view)
            .collect::<ApiResult<_>>()?,
    }))
}

/// Stores a workflow definition (as `ferry workflow apply` takes it, in JSON), replacing
/// the one with the same name.
#[utoipa::path(
    post, path = "/api/workflows", tag = "workflows",
    request_body = WorkflowDefBody,
    responses(
        (status = 201, description = "The stored workflow", body = WorkflowView),
        (status = "4XX", description = "Refused; the body names the problem", body = ErrorBody),
    )
)]
async fn apply_workflow(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(def): JsonBody<ferry_core::workflow::WorkflowDef>,
) -> ApiResult<(StatusCode, Json<WorkflowView>)> {
    let req = v1::ApplyWorkflowRequest {
        definition: Some(v1::WorkflowDefinition::from(&def)),
    };
    let out = svc!(st, apply_workflow, caller, req);
    Ok(created(workflow_view(out)?))
}

/// One stored workflow.
#[utoipa::path(
    get, path = "/api/workflows/{name}", tag = "workflows",
    params(("name" = String, Path, description = "The workflow's name")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowView),
        (status = "4XX", description = "Refused, or no such workflow", body = ErrorBody),
    )
)]
async fn get_workflow(
    State(st): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<WorkflowView>> {
    let out = svc!(st, get_workflow, caller, v1::GetWorkflowRequest { name });
    Ok(Json(workflow_view(out)?))
}

// ---- graphs (seed 003) ----

/// The stored graphs.
#[utoipa::path(
    get, path = "/api/graphs", tag = "graphs",
    responses(
        (status = 200, description = "The graphs", body = GraphsView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn list_graphs(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<GraphsView>> {
    let out = svc!(st, list_graphs, caller, v1::ListGraphsRequest {});
    Ok(Json(GraphsView {
        graphs: out.graphs.into_iter().map(GraphView::from).collect(),
    }))
}

/// Creates a graph, empty or from a whole definition.
#[utoipa::path(
    post, path = "/api/graphs", tag = "graphs",
    request_body = CreateGraphBody,
    responses(
        (status = 201, description = "The graph", body = GraphView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn create_graph(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateGraphBody>,
) -> ApiResult<(StatusCode, Json<GraphView>)> {
    let definition_json = match body.definition {
        Some(d) => d.to_string(),
        None => String::new(),
    };
    let req = v1::CreateGraphRequest {
        name: body.name,
        description: body.description,
        definition_json,
    };
    Ok(created(svc!(st, create_graph, caller, req).into()))
}

fn graph_ref(name: String) -> v1::GraphRef {
    v1::GraphRef { name }
}

/// One graph, with what validation finds now.
#[utoipa::path(
    get, path = "/api/graphs/{name}", tag = "graphs",
    params(("name" = String, Path, description = "The graph's name")),
    responses(
        (status = 200, description = "The graph", body = GraphView),
        (status = "4XX", description = "Refused, or no such graph", body = ErrorBody),
    )
)]
async fn get_graph(
    State(st): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<GraphView>> {
    Ok(Json(svc!(st, get_graph, caller, graph_ref(name)).into()))
}

/// Deletes a graph (the workflow built from it stays).
#[utoipa::path(
    delete, path = "/api/graphs/{name}", tag = "graphs",
    params(("name" = String, Path, description = "The graph's name")),
    responses(
        (status = 200, description = "The deleted graph", body = GraphView),
        (status = "4XX", description = "Refused, or no such graph", body = ErrorBody),
    )
)]
async fn delete_graph(
    State(st): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<GraphView>> {
    Ok(Json(svc!(st, delete_graph, caller, graph_ref(name)).into()))
}

/// Adds a node (seed 003's node: name, type, interfaces, parameters, placement).
#[utoipa::path(
    post, path = "/api/graphs/{name}/nodes", tag = "graphs",
    params(("name" = String, Path, description = "The graph's name")),
    request_body(content = Object, description = "The node"),
    responses(
        (status = 201, description = "The graph", body = GraphView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn add_node(
    State(st): State<AppState>,
    caller: Caller,
    P(graph): P<String>,
    JsonBody(node): JsonBody<serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<(StatusCode, Json<GraphView>)> {
    let e = v1::NodeEdit {
        graph,
        node: String::new(),
        node_json: serde_json::Value::Object(node).to_string(),
    };
    Ok(created(svc!(st, add_node, caller, e).into()))
}

/// Changes a node with a JSON merge patch; a new name is carried into its connections.
#[utoipa::path(
    patch, path = "/api/graphs/{name}/nodes/{node}", tag = "graphs",
    params(("name" = String, Path, description = "The graph's name"), ("node" = String, Path, description = "The node's name")),
    request_body(content = Object, description = "A JSON merge patch of the node"),
    responses(
        (status = 200, description = "The graph", body = GraphView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn update_node(
    State(st): State<AppState>,
    caller: Caller,
    P((graph, node)): P<(String, String)>,
    JsonBody(patch): JsonBody<serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<Json<GraphView>> {
    let e = v1::NodeEdit {
        graph,
        node,
        node_json: serde_json::Value::Object(patch).to_string(),
    };
    Ok(Json(svc!(st, update_node, caller, e).into()))
}

/// Removes a node and every connection that touches it.
#[utoipa::path(
    delete, path = "/api/graphs/{name}/nodes/{node}", tag = "graphs",
    params(("name" = String, Path, description = "The graph's name"), ("node" = String, Path, description = "The node's name")),
    responses(
        (status = 200, description = "The graph", body = GraphView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn remove_node(
    State(st): State<AppState>,
    caller: Caller,
    P((graph, node)): P<(String, String)>,
) -> ApiResult<Json<GraphView>> {
    let e = v1::NodeEdit {
        graph,
        node,
        node_json: String::new(),
    };
    Ok(Json(svc!(st, remove_node, caller, e).into()))
}

/// Connects two nodes' interfaces (`{from: {node, interface, path}, to: ...}`).
#[utoipa::path(
    post, path = "/api/graphs/{name}/connections", tag = "graphs",
    params(("name" = String, Path, description = "The graph's name")),
    request_body(content = Object, description = "The connection"),
    responses(
        (status = 201, description = "The graph", body = GraphView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn add_connection(
    State(st): State<AppState>,
    caller: Caller,
    P(graph): P<String>,
    JsonBody(c): JsonBody<serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<(StatusCode, Json<GraphView>)> {
    let e = v1::ConnectionEdit {
        graph,
        connection_json: serde_json::Value::Object(c).to_string(),
        index: 0,
    };
    Ok(created(svc!(st, add_connection, caller, e).into()))
}

/// Removes the connection at `index` in the graph's list.
#[utoipa::path(
    delete, path = "/api/graphs/{name}/connections/{index}", tag = "graphs",
    params(("name" = String, Path, description = "The graph's name"), ("index" = u32, Path, description = "The connection's index")),
    responses(
        (status = 200, description = "The graph", body = GraphView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn remove_connection(
    State(st): State<AppState>,
    caller: Caller,
    P((graph, index)): P<(String, u32)>,
) -> ApiResult<Json<GraphView>> {
    let e = v1::ConnectionEdit {
        graph,
        connection_json: String::new(),
        index,
    };
    Ok(Json(svc!(st, remove_connection, caller, e).into()))
}

/// Saves the designer's canvas (zoom, pan, snap to grid).
#[utoipa::path(
    put, path = "/api/graphs/{name}/canvas", tag = "graphs",
    params(("name" = String, Path, description = "The graph's name")),
    request_body = CanvasBody,
    responses(
        (status = 200, description = "The graph", body = GraphView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn save_canvas(
    State(st): State<AppState>,
    caller: Caller,
    P(graph): P<String>,
    JsonBody(c): JsonBody<CanvasBody>,
) -> ApiResult<Json<GraphView>> {
    let e = v1::CanvasEdit {
        graph,
        zoom: c.zoom,
        pan_x: c.pan_x,
        pan_y: c.pan_y,
        snap_to_grid: c.snap_to_grid,
    };
    Ok(Json(svc!(st, save_canvas, caller, e).into()))
}

/// Validates the graph and plans it on the connected agents; stores the plan as the
/// workflow of the same name.
#[utoipa::path(
    post, path = "/api/graphs/{name}/build", tag = "graphs",
    params(("name" = String, Path, description = "The graph's name")),
    responses(
        (status = 200, description = "The planned workflow", body = WorkflowView),
        (status = "4XX", description = "Refused; the message names every problem", body = ErrorBody),
    )
)]
async fn build_graph(
    State(st): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<WorkflowView>> {
    let out = svc!(st, build_graph, caller, graph_ref(name));
    Ok(Json(workflow_view(out)?))
}

/// Builds the graph and starts a task of it; answers as soon as the task exists.
#[utoipa::path(
    post, path = "/api/graphs/{name}/execute", tag = "graphs",
    params(("name" = String, Path, description = "The graph's name")),
    request_body = ExecuteBody,
    responses(
        (status = 201, description = "The task", body = TaskView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn execute_graph(
    State(st): State<AppState>,
    caller: Caller,
    P(graph): P<String>,
    JsonBody(body): JsonBody<ExecuteBody>,
) -> ApiResult<(StatusCode, Json<TaskView>)> {
    let r = v1::ExecuteGraphRequest {
        graph,
        task_name: body.task_name,
        params: body.params.into_iter().collect(),
    };
    Ok(created(svc!(st, execute_graph, caller, r).into()))
}

// ---- system ----

/// The agents the coordinator knows, connected or not.
#[utoipa::path(
    get, path = "/api/agents", tag = "system",
    responses(
        (status = 200, description = "The agents", body = AgentsView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn list_agents(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<AgentsView>> {
    let out = svc!(st, list_agents, caller, v1::ListAgentsRequest {});
    Ok(Json(AgentsView {
        agents: out.agents.into_iter().map(AgentView::from).collect(),
    }))
}

/// Ready steps waiting for capacity (slots, GPUs, a pool, their workflow's
/// `max_active_tasks`), in the order they get it, with what each waits for.
#[utoipa::path(
    get, path = "/api/queue", tag = "system",
    responses(
        (status = 200, description = "The queue", body = QueueView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn list_queue(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<QueueView>> {
    let out = svc!(st, list_queue, caller, v1::ListQueueRequest {});
    Ok(Json(QueueView {
        steps: out.steps.into_iter().map(QueuedStepView::from).collect(),
    }))
}

// ---- schedules and backfills ----

/// Creates a schedule; nothing is stored when a value is wrong (`error.field` names it).
#[utoipa::path(
    post, path = "/api/schedules", tag = "schedules",
    request_body = ScheduleBody,
    responses(
        (status = 201, description = "The schedule", body = ScheduleView),
        (status = "4XX", description = "Refused; the body names the field", body = ErrorBody),
    )
)]
async fn create_schedule(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<ScheduleBody>,
) -> ApiResult<(StatusCode, Json<ScheduleView>)> {
    use v1::create_schedule_request::Target;
    let target = match (body.workflow, body.ctr) {
        (Some(w), None) => Target::Workflow(w),
        (None, Some(c)) => Target::Ctr(ctr_request(c)?),
        _ => {
            return Err(ApiError::field(
                ErrorCode::InvalidArgument,
                "workflow",
                "give either `workflow` or `ctr`",
            ));
        }
    };
    let req = v1::CreateScheduleRequest {
        name: body.name,
        target: Some(target),
        params: body.params.into_iter().collect(),
        cron: body.cron,
        timezone: body.timezone,
        catchup: body.catchup,
        max_catchup: body.max_catchup,
        concurrency: body.concurrency,
        priority: body.priority,
        paused: body.paused,
    };
    Ok(created(ScheduleView::from(svc!(
        st,
        create_schedule,
        caller,
        req
    ))))
}

/// The schedules, by name.
#[utoipa::path(
    get, path = "/api/schedules", tag = "schedules",
    responses(
        (status = 200, description = "The schedules", body = SchedulesView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn list_schedules(
    State(st): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<SchedulesView>> {
    let out = svc!(st, list_schedules, caller, v1::ListSchedulesRequest {});
    Ok(Json(SchedulesView {
        schedules: out.schedules.into_iter().map(ScheduleView::from).collect(),
    }))
}

/// A schedule and its runs by logical date.
#[utoipa::path(
    get, path = "/api/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "The schedule and its runs", body = ScheduleDetailView),
        (status = "4XX", description = "Refused or not found", body = ErrorBody),
    )
)]
async fn get_schedule(
    State(st): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<ScheduleDetailView>> {
    let out = svc!(st, get_schedule, caller, v1::ScheduleRef { name });
    Ok(Json(out.into()))
}

/// Deletes a schedule (its running backfills are cancelled; its tasks stay).
#[utoipa::path(
    delete, path = "/api/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "The schedule, deleted", body = ScheduleView),
        (status = "4XX", description = "Refused or not found", body = ErrorBody),
    )
)]
async fn delete_schedule(
    State(st): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<ScheduleView>> {
    let out = svc!(st, delete_schedule, caller, v1::ScheduleRef { name });
    Ok(Json(out.into()))
}

/// Pauses a schedule: no run is created until it resumes (the catch-up policy then decides
/// about the runs missed meanwhile).
#[utoipa::path(
    post, path = "/api/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = "4XX", description = "Refused or not found", body = ErrorBody),
    )
)]
async fn pause_schedule(
    State(st): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<ScheduleView>> {
    let out = svc!(st, pause_schedule, caller, v1::ScheduleRef { name });
    Ok(Json(out.into()))
}

/// Resumes a paused schedule.
#[utoipa::path(
    post, path = "/api/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = "4XX", description = "Refused or not found", body = ErrorBody),
    )
)]
async fn resume_schedule(
    State(st): State<AppState>,
    caller: Caller,
    P(name): P<String>,
) -> ApiResult<Json<ScheduleView>> {
    let out = svc!(st, resume_schedule, caller, v1::ScheduleRef { name });
    Ok(Json(out.into()))
}

/// Starts a backfill (or, with `dry_run`, lists the runs it would create).
#[utoipa::path(
    post, path = "/api/backfills", tag = "schedules",
    request_body = BackfillBody,
    responses(
        (status = 201, description = "The backfill and its runs", body = BackfillResultView),
        (status = "4XX", description = "Refused; the body names the field", body = ErrorBody),
    )
)]
async fn create_backfill(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<BackfillBody>,
) -> ApiResult<(StatusCode, Json<BackfillResultView>)> {
    let req = v1::CreateBackfillRequest {
        schedule: body.schedule,
        start: body.start,
        end: body.end,
        reverse: body.reverse,
        max_active: body.max_active,
        priority: body.priority,
        reprocess: body.reprocess,
        dry_run: body.dry_run,
    };
    let out = svc!(st, create_backfill, caller, req);
    Ok(created(BackfillResultView {
        backfill: out.backfill.map(BackfillView::from),
        runs: out.runs,
    }))
}

/// Backfills, newest first, with their progress.
#[utoipa::path(
    get, path = "/api/backfills", tag = "schedules",
    params(BackfillQuery),
    responses(
        (status = 200, description = "The backfills", body = BackfillsView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn list_backfills(
    State(st): State<AppState>,
    caller: Caller,
    Q(q): Q<BackfillQuery>,
) -> ApiResult<Json<BackfillsView>> {
    let out = svc!(
        st,
        list_backfills,
        caller,
        v1::ListBackfillsRequest {
            schedule: q.schedule
        }
    );
    Ok(Json(BackfillsView {
        backfills: out.backfills.into_iter().map(BackfillView::from).collect(),
    }))
}

/// Cancels a backfill: no run of it starts any more, and its running tasks are cancelled.
#[utoipa::path(
    post, path = "/api/backfills/{id}/cancel", tag = "schedules",
    params(("id" = i64, Path, description = "Backfill id")),
    responses(
        (status = 200, description = "The backfill", body = BackfillView),
        (status = "4XX", description = "Refused or not found", body = ErrorBody),
    )
)]
async fn cancel_backfill(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<BackfillView>> {
    let out = svc!(st, cancel_backfill, caller, v1::BackfillRef { id });
    Ok(Json(out.into()))
}

/// Whether the coordinator answers (no credentials needed).
#[utoipa::path(
    get, path = "/api/health", tag = "system", security(()),
    responses((status = 200, description = "Serving", body = Object))
)]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "serving"}))
}

/// Prometheus metrics (seed 000 §13.1), in the text exposition format.
#[utoipa::path(
    get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain", body = String),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn metrics(State(st): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(ApiRole::Viewer)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        st.observer.render(),
    )
        .into_response())
}

// ---- access ----

/// Bearer tokens (role `admin`).
#[utoipa::path(
    get, path = "/api/tokens", tag = "access",
    responses(
        (status = 200, description = "The tokens (never their secrets)", body = TokensView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn list_tokens(State(st): State<AppState>, caller: Caller) -> ApiResult<Json<TokensView>> {
    let out = svc!(st, list_tokens, caller, v1::ListTokensRequest {});
    Ok(Json(TokensView {
        tokens: out.tokens.into_iter().map(TokenView::from).collect(),
    }))
}

/// Creates a token (role `admin`); its secret is in this answer only.
#[utoipa::path(
    post, path = "/api/tokens", tag = "access",
    request_body = CreateTokenBody,
    responses(
        (status = 201, description = "The token", body = CreatedTokenView),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn create_token(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateTokenBody>,
) -> ApiResult<(StatusCode, Json<CreatedTokenView>)> {
    let r = v1::CreateTokenRequest {
        name: body.name,
        roles: body.roles.iter().map(|r| r.as_str().to_owned()).collect(),
    };
    let out = svc!(st, create_token, caller, r);
    let info = out.info.ok_or_else(|| {
        ApiError::new(ErrorCode::Internal, "the service answered without a token")
    })?;
    Ok(created(CreatedTokenView {
        info: info.into(),
        token: out.token,
    }))
}

/// Revokes a token (role `admin`): its calls and sessions end at once.
#[utoipa::path(
    delete, path = "/api/tokens/{id}", tag = "access",
    params(("id" = i64, Path, description = "The token's id")),
    responses(
        (status = 200, description = "The revoked token", body = TokenView),
        (status = "4XX", description = "Refused, or no such token", body = ErrorBody),
    )
)]
async fn revoke_token(
    State(st): State<AppState>,
    caller: Caller,
    P(id): P<i64>,
) -> ApiResult<Json<TokenView>> {
    Ok(Json(
        svc!(st, revoke_token, caller, v1::TokenRef { id }).into(),
    ))
}

/// The audit log (role `admin`), newest first, a page at a time.
#[utoipa::path(
    get, path = "/api/audit", tag = "access",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = "4XX", description = "Refused", body = ErrorBody),
    )
)]
async fn list_audit(
    State(st): State<AppState>,
    caller: Caller,
    Q(q): Q<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = bounded("limit", q.limit, 1, Some(1000))?.unwrap_or(100);
    let before_id = bounded("before_id", q.before_id, 1, None)?.unwrap_or(0);
    let r = v1::ListAuditRequest {
        limit,
        before_id,
        actor: q.actor.unwrap_or_default(),
    };
    let out = svc!(st, list_audit, caller, r);
    let full = out.entries.len() == limit as usize;
    let next_before_id = out.entries.last().filter(|_| full).map(|e| e.id);
    Ok(Json(AuditPage {
        entries: out
            .entries
            .into_iter()
            .map(|e| AuditView {
                id: e.id,
                timestamp: e.timestamp,
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
            })
            .collect(),
        next_before_id,
    }))
}

async fn who_view(st: &AppState, caller: &Caller, csrf: Option<String>) -> ApiResult<WhoAmIView> {
    let out = svc!(st, who_am_i, caller, v1::WhoAmIRequest {});
    Ok(WhoAmIView {
        name: out.name,
        roles: out.roles,
        auth_enabled: out.auth_enabled,
        csrf_token: csrf,
    })
}

/// Turns a token into a browser session: an HttpOnly, SameSite=Strict cookie, and the CSRF
/// token to send as `X-CSRF-Token` with requests that change state.
#[utoipa::path(
    post, path = "/api/login", tag = "access", security(()),
    request_body = LoginBody,
    responses(
        (status = 200, description = "Logged in; the cookie is set", body = WhoAmIView),
        (status = "4XX", description = "Unknown or revoked token", body = ErrorBody),
    )
)]
async fn login(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<LoginBody>,
) -> ApiResult<Response> {
    let principal = st
        .auth
        .authenticate(Some(&format!("Bearer {}", body.token.trim())))?;
    let caller = Caller(principal);
    let s = st.sessions.open(body.token.trim())?;
    let view = who_view(&st, &caller, Some(s.csrf)).await?;
    let mut res = Json(view).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&s.id, st.tls)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// Ends the browser session.
#[utoipa::path(
    post, path = "/api/logout", tag = "access", security(()),
    responses((status = 204, description = "Logged out; the cookie is cleared"))
)]
async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Response {
    st.sessions.close(&headers);
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(st.tls)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// Who the caller is, as the coordinator authenticated them (and the session's CSRF token).
#[utoipa::path(
    get, path = "/api/whoami", tag = "access",
    responses(
        (status = 200, description = "The caller", body = WhoAmIView),
        (status = "4XX", description = "Not authenticated", body = ErrorBody),
    )
)]
async fn whoami(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> ApiResult<Json<WhoAmIView>> {
    let csrf = st.sessions.csrf(&headers);
    Ok(Json(who_view(&st, &caller, csrf).await?))
}

/// A path segment with everything but unreserved characters percent-encoded (a file's
/// `/` included: the whole path is one segment).
fn encode_segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
