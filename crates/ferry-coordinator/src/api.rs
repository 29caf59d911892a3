//! The client gRPC service (seed 000 §9): reads come from the store, changes go through the
//! engine so they are ordered with everything else it does.

use std::pin::Pin;

use ferry_core::TaskStatus;
use ferry_core::workflow::WorkflowDef;
use ferry_proto::v1::{self, workflow_service_server::WorkflowService};
use ferry_store::{Store, step_metric, task_log, workflow, workflow_step, workflow_task};
use futures_util::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Auth, allow};
use crate::engine::{ApiRequest, EngineHandle};
use crate::error::EngineError;
use crate::follow::{FollowEvent, FollowOptions};
use ferry_core::access::{ApiRole, Principal};

pub struct WorkflowApi {
    pub store: Store,
    pub engine: EngineHandle,
    pub downloads: std::sync::Arc<crate::downloads::Downloads>,
    /// Graph edits are read-modify-write; one at a time.
    pub graph_edits: tokio::sync::Mutex<()>,
    pub auth: std::sync::Arc<Auth>,
    /// Schedules and backfills.
    pub schedules: crate::schedules::ScheduleService,
}

const DEFAULT_LIST_LIMIT: u64 = 100;
const MAX_LIST_LIMIT: u64 = 1000;
/// The most log lines one `GetLogs` page holds.
pub const MAX_LOG_PAGE: u64 = 10_000;

/// The store's filter for a `ListTasks` request, every value checked.
fn task_filter(r: &v1::ListTasksRequest) -> Result<ferry_store::TaskFilter, EngineError> {
    let text = |v: &str| (!v.is_empty()).then(|| v.to_owned());
    let time = |field: &str, v: &str| -> Result<_, EngineError> {
        if v.is_empty() {
            return Ok(None);
        }
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| Some(t.with_timezone(&chrono::Utc)))
            .map_err(|e| EngineError::InvalidField {
                field: field.to_owned(),
                message: format!("`{field}`: `{v}` is not an RFC 3339 time ({e})"),
            })
    };
    if !r.status.is_empty() {
        r.status
            .parse::<TaskStatus>()
            .map_err(|e| EngineError::InvalidField {
                field: "status".into(),
                message: format!("`status`: {e}"),
            })?;
    }
    if r.before_id < 0 {
        return Err(EngineError::InvalidField {
            field: "before_id".into(),
            message: "`before_id` must not be negative".into(),
        });
    }
    Ok(ferry_store::TaskFilter {
        status: text(&r.status),
        workflow: text(&r.workflow),
        name_contains: text(&r.name),
        created_after: time("created_after", &r.created_after)?,
        created_before: time("created_before", &r.created_before)?,
        before_id: (r.before_id > 0).then_some(r.before_id),
        limit: match u64::from(r.limit) {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        },
    })
}

pub(crate) fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn ts_opt(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(ts).unwrap_or_default()
}

pub(crate) fn store_err(e: ferry_store::StoreError) -> Status {
    Status::from(EngineError::Store(e))
}

pub fn task_to_wire(t: &workflow_task::Model, completed_steps: i32) -> v1::Task {
    v1::Task {
        id: t.id,
        name: t.name.clone(),
        workflow: t.workflow_name.clone(),
        status: t.status.clone(),
        status_reason: t.status_reason.clone().unwrap_or_default(),
        current_step: t.current_step,
        total_steps: t.total_steps,
        completed_steps,
        created_at: ts(t.created_at),
        updated_at: ts(t.updated_at),
        started_at: ts_opt(t.started_at),
        completed_at: ts_opt(t.completed_at),
        params: serde_json::from_str(&t.params).unwrap_or_default(),
    }
}

fn step_to_wire(s: &workflow_step::Model) -> v1::Step {
    let placement = match serde_json::from_str::<ferry_core::workflow::Placement>(&s.placement) {
        Ok(p) => p.to_string(),
        Err(_) => s.placement.clone(),
    };
    v1::Step {
        name: s.step_name.clone(),
        step_order: s.step_order,
        kind: s.kind.clone(),
        status: s.status.clone(),
        placement,
        inputs: serde_json::from_str(&s.depends_on).unwrap_or_default(),
        constraint: s.exec_constraint.clone(),
        agent: s.agent_name.clone().unwrap_or_default(),
        job_id: s.job_id.clone().unwrap_or_default(),
        retry_count: s.retry_count.max(0) as u32,
        max_retries: s.max_retries.max(0) as u32,
        error_message: s.error_message.clone().unwrap_or_default(),
        checkpoint_json: s.checkpoint_data.clone().unwrap_or_default(),
        progress_json: s.progress.clone().unwrap_or_default(),
        started_at: ts_opt(s.started_at),
        completed_at: ts_opt(s.completed_at),
        attempt: s.attempt.max(0) as u32,
    }
}

pub(crate) fn log_to_wire(l: &task_log::Model) -> v1::LogEntry {
    let level = match l.level.as_str() {
        "DEBUG" => v1::LogLevel::Debug,
        "WARN" => v1::LogLevel::Warn,
        "ERROR" => v1::LogLevel::Error,
        _ => v1::LogLevel::Info,
    };
    v1::LogEntry {
        id: l.id,
        task_id: l.task_id,
        step: l.step_name.clone(),
        timestamp: ts(l.ts),
        level: level as i32,
        source: l.source.clone(),
        message: l.message.clone(),
    }
}

fn metric_to_wire(m: &step_metric::Model) -> v1::Metric {
    v1::Metric {
        step: m.step_name.clone(),
        name: m.name.clone(),
        value: m.value,
        index: m.idx,
        timestamp: ts(m.ts),
    }
}

pub(crate) fn workflow_to_wire(w: &workflow::Model) -> Result<v1::Workflow, Status> {
    let mut def = Store::definition_of(w).map_err(store_err)?;
    // Secret env values never leave the coordinator.
    for step in &mut def.steps {
        ferry_core::kinds::mask_secrets(&mut step.params);
    }
    Ok(v1::Workflow {
        id: w.id,
        definition: Some(v1::WorkflowDefinition::from(&def)),
        created_at: ts(w.created_at),
        updated_at: ts(w.updated_at),
    })
}

impl WorkflowApi {
    async fn task_row(&self, id: i64) -> Result<workflow_task::Model, Status> {
        self.store
            .task(id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Status::not_found(format!("task {id} not found")))
    }

    async fn decide(
        &self,
        who: &Principal,
        d: v1::StepDecision,
        approve: bool,
    ) -> Result<Response<v1::Task>, Status> {
        let target = format!("task/{}/step/{}", d.task_id, d.step);
        let comment = d.comment.clone();
        let row = self
            .engine
            .request(|reply| ApiRequest::Decide {
                task_id: d.task_id,
                step: d.step,
                approve,
                user: who.name.clone(),
                comment: d.comment,
                reply,
            })
            .await?;
        let action = if approve {
            "step.approve"
        } else {
            "step.reject"
        };
        self.audit(who, action, &target, &comment).await;
        self.task_reply(row).await
    }

    /// Appends to the audit log; a failure is logged (the action itself has happened).
    pub(crate) async fn audit(&self, who: &Principal, action: &str, target: &str, detail: &str) {
        if let Err(e) = self.store.audit(&who.name, action, target, detail).await {
            tracing::error!(error = %e, actor = %who.name, action, target, "cannot write the audit log");
        }
    }

    async fn task_reply(&self, row: workflow_task::Model) -> Result<Response<v1::Task>, Status> {
        Ok(Response::new(task_to_wire(&row, row.current_step)))
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<v1::LogEntry, Status>> + Send>>;
type OutputStream = Pin<Box<dyn Stream<Item = Result<v1::OutputChunk, Status>> + Send>>;

#[tonic::async_trait]
impl WorkflowService for WorkflowApi {
    async fn create_graph(
        &self,
        req: Request<v1::CreateGraphRequest>,
    ) -> Result<Response<v1::Graph>, Status> {
        let who = allow(&req, ApiRole::Author)?;
        let r = req.into_inner();
        let target = format!("graph/{}", r.name);
        let out = WorkflowApi::create_graph(self, r).await?;
        self.audit(&who, "graph.create", &target, "").await;
        Ok(out)
    }

    async fn get_graph(&self, req: Request<v1::GraphRef>) -> Result<Response<v1::Graph>, Status> {
        allow(&req, ApiRole::Viewer)?;
        WorkflowApi::get_graph(self, &req.into_inner().name).await
    }

    async fn list_graphs(
        &self,
        req: Request<v1::ListGraphsRequest>,
    ) -> Result<Response<v1::ListGraphsResponse>, Status> {
        allow(&req, ApiRole::Viewer)?;
        WorkflowApi::list_graphs(self).await
    }

    async fn delete_graph(
        &self,
        req: Request<v1::GraphRef>,
    ) -> Result<Response<v1::Graph>, Status> {
        let who = allow(&req, ApiRole::Author)?;
        let name = req.into_inner().name;
        let out = WorkflowApi::delete_graph(self, &name).await?;
        self.audit(&who, "graph.delete", &format!("graph/{name}"), "")
            .await;
        Ok(out)
    }

    async fn add_node(&self, req: Request<v1::NodeEdit>) -> Result<Response<v1::Graph>, Status> {
        let who = allow(&req, ApiRole::Author)?;
        let r = req.into_inner();
        let target = format!("graph/{}", r.graph);
        let out = WorkflowApi::add_node(self, r).await?;
        self.audit(&who, "graph.add_node", &target, "").await;
        Ok(out)
    }

    async fn update_node(&self, req: Request<v1::NodeEdit>) -> Result<Response<v1::Graph>, Status> {
        let who = allow(&req, ApiRole::Author)?;
        let r = req.into_inner();
        let target = format!("graph/{}", r.graph);
        let out = WorkflowApi::update_node(self, r).await?;
        self.audit(&who, "graph.update_node", &target, "").await;
        Ok(out)
    }

    async fn remove_node(&self, req: Request<v1::NodeEdit>) -> Result<Response<v1::Graph>, Status> {
        let who = allow(&req, ApiRole::Author)?;
        let r = req.into_inner();
        let target = format!("graph/{}", r.graph);
        let out = WorkflowApi::remove_node(self, r).await?;
        self.audit(&who, "graph.remove_node", &target, "").await;
        Ok(out)
    }

    async fn add_connection(
        &self,
        req: Request<v1::ConnectionEdit>,
    ) -> Result<Response<v1::Graph>, Status> {
        let who = allow(&req, ApiRole::Author)?;
        let r = req.into_inner();
        let target = format!("graph/{}", r.graph);
        let out = WorkflowApi::add_connection(self, r).await?;
        self.audit(&who, "graph.add_connection", &target, "").await;
        Ok(out)
    }

    async fn remove_connection(
        &self,
        req: Request<v1::ConnectionEdit>,
    ) -> Result<Response<v1::Graph>, Status> {
        let who = allow(&req, ApiRole::Author)?;
        let r = req.into_inner();
        let target = format!("graph/{}", r.graph);
        let out = WorkflowApi::remove_connection(self, r).await?;
        self.audit(&who, "graph.remove_connection", &target, "")
            .await;
        Ok(out)
    }

    async fn save_canvas(
        &self,
        req: Request<v1::CanvasEdit>,
    ) -> Result<Response<v1::Graph>, Status> {
        let who = allow(&req, ApiRole::Author)?;
        let r = req.into_inner();
        let target = format!("graph/{}", r.graph);
        let out = WorkflowApi::save_canvas(self, r).await?;
        self.audit(&who, "graph.save_canvas", &target, "").await;
        Ok(out)
    }

    async fn build_graph(
        &self,
        req: Request<v1::GraphRef>,
    ) -> Result<Response<v1::Workflow>, Status> {
        let who = allow(&req, ApiRole::Author)?;
        let name = req.into_inner().name;
        let out = self.build_graph_reply(&name).await?;
        self.audit(&who, "graph.build", &format!("graph/{name}"), "")
            .await;
        Ok(out)
    }

    async fn execute_graph(
        &self,
        req: Request<v1::ExecuteGraphRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let r = req.into_inner();
        let graph = r.graph.clone();
        let out = WorkflowApi::execute_graph(self, r).await?;
        let target = format!("task/{}", out.get_ref().id);
        self.audit(&who, "graph.execute", &target, &format!("graph {graph}"))
            .await;
        Ok(out)
    }

    type DownloadOutputStream = OutputStream;

    async fn download_output(
        &self,
        req: Request<v1::DownloadRequest>,
    ) -> Result<Response<Self::DownloadOutputStream>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let r = req.into_inner();
        self.task_row(r.task_id).await?;
        let node = (!r.node.is_empty()).then_some(r.node.as_str());
        let files = self.downloads.files(r.task_id, node)?;
        if files.is_empty() {
            return Err(Status::not_found(match node {
                Some(n) => format!(
                    "task {} has no output from node `{n}` at the coordinator (yet)",
                    r.task_id
                ),
                None => format!(
                    "task {} has sent no output to the coordinator (yet)",
                    r.task_id
                ),
            }));
        }
        let rx = crate::downloads::Downloads::stream(files, node.is_none());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn apply_workflow(
        &self,
        req: Request<v1::ApplyWorkflowRequest>,
    ) -> Result<Response<v1::Workflow>, Status> {
        let who = allow(&req, ApiRole::Author)?;
        let wire = req
            .into_inner()
            .definition
            .ok_or_else(|| Status::invalid_argument("request has no workflow definition"))?;
        let def =
            WorkflowDef::try_from(wire).map_err(|e| Status::invalid_argument(e.to_string()))?;
        def.validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let row = self.store.apply_workflow(&def).await.map_err(store_err)?;
        self.audit(
            &who,
            "workflow.apply",
            &format!("workflow/{}", row.name),
            "",
        )
        .await;
        Ok(Response::new(workflow_to_wire(&row)?))
    }

    async fn list_workflows(
        &self,
        req: Request<v1::ListWorkflowsRequest>,
    ) -> Result<Response<v1::ListWorkflowsResponse>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let rows = self.store.list_workflows().await.map_err(store_err)?;
        let workflows = rows
            .iter()
            .map(workflow_to_wire)
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ListWorkflowsResponse { workflows }))
    }

    async fn get_workflow(
        &self,
        req: Request<v1::GetWorkflowRequest>,
    ) -> Result<Response<v1::Workflow>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let name = req.into_inner().name;
        let row = self
            .store
            .workflow_by_name(&name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Status::not_found(format!("workflow `{name}` not found")))?;
        Ok(Response::new(workflow_to_wire(&row)?))
    }

    async fn create_task(
        &self,
        req: Request<v1::CreateTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let r = req.into_inner();
        if r.workflow.trim().is_empty() {
            return Err(Status::invalid_argument(
                "`workflow` must name a stored workflow",
            ));
        }
        let params: std::collections::BTreeMap<String, String> = r.params.into_iter().collect();
        let detail = serde_json::to_string(&params).unwrap_or_default();
        let workflow = r.workflow.clone();
        let row = self
            .engine
            .request(|reply| ApiRequest::CreateTask {
                workflow: r.workflow,
                name: r.name,
                params: params.into_iter().collect(),
                opts: crate::engine::TaskOptions {
                    priority: r.priority,
                    run: None,
                },
                reply,
            })
            .await?;
        self.audit(
            &who,
            "task.create",
            &format!("task/{}", row.id),
            &format!("workflow {workflow}; params {detail}"),
        )
        .await;
        self.task_reply(row).await
    }

    async fn list_tasks(
        &self,
        req: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let r = req.into_inner();
        let filter = task_filter(&r)?;
        let rows = self.store.find_tasks(&filter).await.map_err(store_err)?;
        // A full page may have a next one; its last task is where that starts.
        let next_before_id = match rows.last() {
            Some(last) if rows.len() as u64 == filter.limit => last.id,
            _ => 0,
        };
        Ok(Response::new(v1::ListTasksResponse {
            tasks: rows
                .iter()
                .map(|t| task_to_wire(t, t.current_step))
                .collect(),
            next_before_id,
        }))
    }

    async fn get_task(
        &self,
        req: Request<v1::TaskRef>,
    ) -> Result<Response<v1::TaskDetail>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let id = req.into_inner().task_id;
        let row = self.task_row(id).await?;
        let steps = self.store.steps(id).await.map_err(store_err)?;
        Ok(Response::new(v1::TaskDetail {
            task: Some(task_to_wire(&row, row.current_step)),
            steps: steps.iter().map(step_to_wire).collect(),
        }))
    }

    async fn cancel_task(&self, req: Request<v1::TaskRef>) -> Result<Response<v1::Task>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let task_id = req.into_inner().task_id;
        let row = self
            .engine
            .request(|reply| ApiRequest::Cancel { task_id, reply })
            .await?;
        self.audit(&who, "task.cancel", &format!("task/{task_id}"), "")
            .await;
        self.task_reply(row).await
    }

    async fn retry_task(&self, req: Request<v1::TaskRef>) -> Result<Response<v1::Task>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let task_id = req.into_inner().task_id;
        let row = self
            .engine
            .request(|reply| ApiRequest::Retry { task_id, reply })
            .await?;
        self.audit(&who, "task.retry", &format!("task/{task_id}"), "")
            .await;
        self.task_reply(row).await
    }

    async fn pause_task(&self, req: Request<v1::TaskRef>) -> Result<Response<v1::Task>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let task_id = req.into_inner().task_id;
        let row = self
            .engine
            .request(|reply| ApiRequest::Pause { task_id, reply })
            .await?;
        self.audit(&who, "task.pause", &format!("task/{task_id}"), "")
            .await;
        self.task_reply(row).await
    }

    async fn resume_task(&self, req: Request<v1::TaskRef>) -> Result<Response<v1::Task>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let task_id = req.into_inner().task_id;
        let row = self
            .engine
            .request(|reply| ApiRequest::Resume { task_id, reply })
            .await?;
        self.audit(&who, "task.resume", &format!("task/{task_id}"), "")
            .await;
        self.task_reply(row).await
    }

    async fn create_ctr_task(
        &self,
        req: Request<v1::CtrTaskRequest>,
    ) -> Result<Response<v1::Task>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        // The field at fault travels with the refusal (`ferry-error-field`; JSON `field`).
        let request: ferry_core::pipeline::CtrTaskRequest = req
            .into_inner()
            .try_into()
            .map_err(|e: ferry_core::pipeline::RequestError| Status::from(EngineError::from(e)))?;
        // Planned here, on the engine's snapshot of the hosts; stored as the `ctr_pipeline`
        // workflow (the latest plan; each task keeps its own steps); started by the engine.
        let plan = self.engine.plan_ctr(&request)?;
        let wf = self
            .store
            .apply_workflow(&plan.def)
            .await
            .map_err(store_err)?;
        let row = self
            .engine
            .request(|reply| ApiRequest::CreatePlanned {
                workflow_id: wf.id,
                def: Box::new(plan.def),
                name: request.name.clone(),
                params: plan.params,
                note: Some(format!("planned on {}", plan.hosts)),
                opts: Default::default(),
                reply,
            })
            .await?;
        self.audit(
            &who,
            "task.create",
            &format!("task/{}", row.id),
            "ctr_pipeline",
        )
        .await;
        self.task_reply(row).await
    }

    async fn update_step_params(
        &self,
        req: Request<v1::StepParamsUpdate>,
    ) -> Result<Response<v1::Task>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let u = req.into_inner();
        let patch: serde_json::Value = serde_json::from_str(&u.patch_json)
            .map_err(|e| Status::invalid_argument(format!("`patch_json` is not JSON: {e}")))?;
        let row = self
            .engine
            .request(|reply| ApiRequest::UpdateStepParams {
                task_id: u.task_id,
                step: u.step.clone(),
                patch,
                user: who.name.clone(),
                reply,
            })
            .await?;
        let target = format!("task/{}/step/{}", u.task_id, u.step);
        // The audit keeps which env keys changed, not their values (they may be secret).
        let mut shown: serde_json::Value = serde_json::from_str(&u.patch_json).unwrap_or_default();
        if let Some(env) = shown.get_mut("env").and_then(|e| e.as_object_mut()) {
            for v in env.values_mut() {
                *v = serde_json::Value::String(ferry_core::kinds::MASK.into());
            }
        }
        self.audit(&who, "step.update_params", &target, &shown.to_string())
            .await;
        self.task_reply(row).await
    }

    async fn approve_step(
        &self,
        req: Request<v1::StepDecision>,
    ) -> Result<Response<v1::Task>, Status> {
        let who = allow(&req, ApiRole::Approver)?;
        self.decide(&who, req.into_inner(), true).await
    }

    async fn reject_step(
        &self,
        req: Request<v1::StepDecision>,
    ) -> Result<Response<v1::Task>, Status> {
        let who = allow(&req, ApiRole::Approver)?;
        self.decide(&who, req.into_inner(), false).await
    }

    async fn get_task_status(
        &self,
        req: Request<v1::TaskRef>,
    ) -> Result<Response<v1::Task>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let row = self.task_row(req.into_inner().task_id).await?;
        self.task_reply(row).await
    }

    async fn get_steps(&self, req: Request<v1::TaskRef>) -> Result<Response<v1::StepList>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let id = req.into_inner().task_id;
        self.task_row(id).await?;
        let steps = self.store.steps(id).await.map_err(store_err)?;
        Ok(Response::new(v1::StepList {
            steps: steps.iter().map(step_to_wire).collect(),
        }))
    }

    async fn get_logs(
        &self,
        req: Request<v1::GetLogsRequest>,
    ) -> Result<Response<v1::LogList>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let r = req.into_inner();
        self.task_row(r.task_id).await?;
        let limit = match u64::from(r.limit) {
            0 => MAX_LOG_PAGE,
            n => n.min(MAX_LOG_PAGE),
        };
        let rows = self
            .store
            .logs(r.task_id, r.after_id, limit)
            .await
            .map_err(store_err)?;
        Ok(Response::new(v1::LogList {
            entries: rows.iter().map(log_to_wire).collect(),
        }))
    }

    type FollowLogsStream = LogStream;

    async fn follow_logs(
        &self,
        req: Request<v1::GetLogsRequest>,
    ) -> Result<Response<Self::FollowLogsStream>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let r = req.into_inner();
        self.task_row(r.task_id).await?;
        let events = crate::follow::follow(
            self.store.clone(),
            &self.engine,
            r.task_id,
            r.after_id,
            FollowOptions { states: false },
        );
        let lines = ReceiverStream::new(events).filter_map(|e| match e {
            Ok(FollowEvent::Log(l)) => Some(Ok(log_to_wire(&l))),
            Ok(_) => None,
            Err(e) => Some(Err(Status::from(e))),
        });
        Ok(Response::new(Box::pin(lines)))
    }

    async fn get_metrics(
        &self,
        req: Request<v1::TaskRef>,
    ) -> Result<Response<v1::MetricList>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let id = req.into_inner().task_id;
        self.task_row(id).await?;
        let rows = self.store.metrics(id).await.map_err(store_err)?;
        Ok(Response::new(v1::MetricList {
            metrics: rows.iter().map(metric_to_wire).collect(),
        }))
    }

    async fn get_progress(
        &self,
        req: Request<v1::TaskRef>,
    ) -> Result<Response<v1::ProgressList>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let id = req.into_inner().task_id;
        self.task_row(id).await?;
        let steps = self.store.steps(id).await.map_err(store_err)?;
        let chunks = self.store.chunks(id, None).await.map_err(store_err)?;
        Ok(Response::new(v1::ProgressList {
            steps: steps
                .iter()
                .map(|s| {
                    let mine = chunks.iter().filter(|c| c.step_name == s.step_name);
                    let count =
                        |status: &str| mine.clone().filter(|c| c.status == status).count() as u32;
                    v1::StepProgress {
                        step: s.step_name.clone(),
                        status: s.status.clone(),
                        progress_json: s.progress.clone().unwrap_or_default(),
                        chunks_total: mine.clone().count() as u32,
                        chunks_completed: count("completed"),
                        chunks_failed: count("failed"),
                        chunk_retries: mine.clone().map(|c| c.retry_count.max(0) as u32).sum(),
                    }
                })
                .collect(),
        }))
    }

    async fn list_agents(
        &self,
        req: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        allow(&req, ApiRole::Viewer)?;
        Ok(Response::new(v1::ListAgentsResponse {
            agents: self.engine.list_agents().await?,
        }))
    }

    async fn list_queue(
        &self,
        req: Request<v1::ListQueueRequest>,
    ) -> Result<Response<v1::ListQueueResponse>, Status> {
        allow(&req, ApiRole::Viewer)?;
        let steps = self.engine.list_queue().await?;
        Ok(Response::new(v1::ListQueueResponse {
            steps: steps
                .into_iter()
                .map(|q| v1::QueuedStep {
                    position: q.position,
                    task_id: q.task_id,
                    task_name: q.task_name,
                    workflow: q.workflow,
                    step: q.step,
                    priority: q.priority,
                    needs: q.needs,
                    waits_for: q.waits_for,
                })
                .collect(),
        }))
    }

    async fn create_schedule(
        &self,
        req: Request<v1::CreateScheduleRequest>,
    ) -> Result<Response<v1::Schedule>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let out = self.create_schedule_call(req.into_inner()).await?;
        self.audit(
            &who,
            "schedule.create",
            &format!("schedule/{}", out.name),
            &out.cron,
        )
        .await;
        Ok(Response::new(out))
    }

    async fn list_schedules(
        &self,
        req: Request<v1::ListSchedulesRequest>,
    ) -> Result<Response<v1::ListSchedulesResponse>, Status> {
        allow(&req, ApiRole::Viewer)?;
        Ok(Response::new(self.list_schedules_call().await?))
    }

    async fn get_schedule(
        &self,
        req: Request<v1::ScheduleRef>,
    ) -> Result<Response<v1::ScheduleDetail>, Status> {
        allow(&req, ApiRole::Viewer)?;
        Ok(Response::new(
            self.get_schedule_call(&req.into_inner().name).await?,
        ))
    }

    async fn pause_schedule(
        &self,
        req: Request<v1::ScheduleRef>,
    ) -> Result<Response<v1::Schedule>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let name = req.into_inner().name;
        let out = self.set_schedule_paused_call(&name, true).await?;
        self.audit(&who, "schedule.pause", &format!("schedule/{name}"), "")
            .await;
        Ok(Response::new(out))
    }

    async fn resume_schedule(
        &self,
        req: Request<v1::ScheduleRef>,
    ) -> Result<Response<v1::Schedule>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let name = req.into_inner().name;
        let out = self.set_schedule_paused_call(&name, false).await?;
        self.audit(&who, "schedule.resume", &format!("schedule/{name}"), "")
            .await;
        Ok(Response::new(out))
    }

    async fn delete_schedule(
        &self,
        req: Request<v1::ScheduleRef>,
    ) -> Result<Response<v1::Schedule>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let name = req.into_inner().name;
        let out = self.delete_schedule_call(&name).await?;
        self.audit(&who, "schedule.delete", &format!("schedule/{name}"), "")
            .await;
        Ok(Response::new(out))
    }

    async fn create_backfill(
        &self,
        req: Request<v1::CreateBackfillRequest>,
    ) -> Result<Response<v1::BackfillResult>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let r = req.into_inner();
        let (dry, target, range) = (
            r.dry_run,
            format!("schedule/{}", r.schedule),
            format!("{}..{}", r.start, r.end),
        );
        let out = self.create_backfill_call(r).await?;
        if !dry {
            self.audit(&who, "backfill.create", &target, &range).await;
        }
        Ok(Response::new(out))
    }

    async fn list_backfills(
        &self,
        req: Request<v1::ListBackfillsRequest>,
    ) -> Result<Response<v1::ListBackfillsResponse>, Status> {
        allow(&req, ApiRole::Viewer)?;
        Ok(Response::new(
            self.list_backfills_call(&req.into_inner().schedule).await?,
        ))
    }

    async fn cancel_backfill(
        &self,
        req: Request<v1::BackfillRef>,
    ) -> Result<Response<v1::Backfill>, Status> {
        let who = allow(&req, ApiRole::Operator)?;
        let id = req.into_inner().id;
        let out = self.cancel_backfill_call(id).await?;
        self.audit(&who, "backfill.cancel", &format!("backfill/{id}"), "")
            .await;
        Ok(Response::new(out))
    }

    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreatedToken>, Status> {
        let who = allow(&req, ApiRole::Admin)?;
        let r = req.into_inner();
        ferry_core::access::check_token_name(&r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let roles = ferry_core::access::parse_roles(&r.roles.join(","))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let roles = ferry_core::access::roles_to_string(&roles);
        let token = crate::auth::new_token().map_err(Status::from)?;
        let row = self
            .store
            .insert_token(&r.name, &roles, &crate::auth::hash_token(&token), &who.name)
            .await
            .map_err(store_err)?;
        self.auth.insert(&row);
        self.audit(
            &who,
            "token.create",
            &format!("token/{}", row.id),
            &format!("{} as {roles}", r.name),
        )
        .await;
        Ok(Response::new(v1::CreatedToken {
            info: Some(token_to_wire(&row)),
            token,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        allow(&req, ApiRole::Admin)?;
        let rows = self.store.tokens().await.map_err(store_err)?;
        Ok(Response::new(v1::ListTokensResponse {
            tokens: rows.iter().map(token_to_wire).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<v1::TokenRef>,
    ) -> Result<Response<v1::TokenInfo>, Status> {
        let who = allow(&req, ApiRole::Admin)?;
        let id = req.into_inner().id;
        let row = self
            .store
            .revoke_token(id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Status::not_found(format!("token {id} not found")))?;
        self.auth.insert(&row);
        self.audit(&who, "token.revoke", &format!("token/{id}"), &row.name)
            .await;
        Ok(Response::new(token_to_wire(&row)))
    }

    async fn list_audit(
        &self,
        req: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        allow(&req, ApiRole::Admin)?;
        let r = req.into_inner();
        let rows = self
            .store
            .audit_entries(u64::from(r.limit), r.before_id, &r.actor)
            .await
            .map_err(store_err)?;
        Ok(Response::new(v1::ListAuditResponse {
            entries: rows
                .iter()
                .map(|e| v1::AuditEntry {
                    id: e.id,
                    timestamp: ts(e.ts),
                    actor: e.actor.clone(),
                    action: e.action.clone(),
                    target: e.target.clone(),
                    detail: e.detail.clone(),
                })
                .collect(),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<v1::WhoAmIRequest>,
    ) -> Result<Response<v1::WhoAmIResponse>, Status> {
        let who = allow(&req, ApiRole::Viewer)?;
        Ok(Response::new(v1::WhoAmIResponse {
            name: who.name,
            roles: who.roles.iter().map(|r| r.to_string()).collect(),
            auth_enabled: self.auth.enabled(),
        }))
    }
}

fn token_to_wire(t: &ferry_store::api_token::Model) -> v1::TokenInfo {
    v1::TokenInfo {
        id: t.id,
        name: t.name.clone(),
        roles: t.roles.split(',').map(str::to_owned).collect(),
        created_by: t.created_by.clone(),
        created_at: ts(t.created_at),
        revoked_at: ts_opt(t.revoked_at),
    }
}
