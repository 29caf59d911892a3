//! API commands: creating tasks (from a stored workflow, the built-in CTR pipeline or a
//! graph plan), pause, resume, cancel, retry, parameter changes and approval decisions. Each
//! answers once the change it made is committed.

use super::*;

impl Engine {
    pub(super) async fn api(&mut self, req: ApiRequest) {
        match req {
            ApiRequest::CreateTask {
                workflow,
                name,
                params,
                opts,
                reply,
            } => {
                let result = self.create_task(&workflow, name, params, opts).await;
                self.reply_after_commit(reply, result);
            }
            ApiRequest::CreatePlanned {
                workflow_id,
                def,
                name,
                params,
                note,
                opts,
                reply,
            } => {
                let result = self
                    .create_task_from(workflow_id, *def, name, params, opts)
                    .await;
                if let (Ok(id), Some(note)) = (&result, note) {
                    self.log(*id, "", "INFO", note);
                }
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
                let now = self.now();
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
                        version: a.version.clone(),
                        paths: a.paths.clone().into_iter().collect(),
                        ssh_to: a.ssh_to.clone(),
                        slots: a.slots,
                        slots_in_use: a.usage.slots,
                        gpus_in_use: a.usage.gpus.iter().copied().collect(),
                    })
                    .collect();
                list.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = reply.send(list);
            }
            ApiRequest::ListQueue { reply } => {
                let _ = reply.send(self.queue_view());
            }
        }
    }

    /// Sends the answer once this turn's changes are committed, with the task row as
    /// committed.
    pub(super) fn reply_after_commit(
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

    pub(super) async fn with_task(
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

    pub(super) async fn create_task(
        &mut self,
        workflow: &str,
        name: String,
        params: BTreeMap<String, String>,
        opts: TaskOptions,
    ) -> Result<i64, EngineError> {
        let wf = self
            .store
            .workflow_by_name(workflow)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("workflow `{workflow}` not found")))?;
        let def: WorkflowDef = Store::definition_of(&wf)?;
        self.create_task_from(wf.id, def, name, params, opts).await
    }

    /// Plans seed 000's pipeline for `request` on the connected agents, stores the plan as
    /// the `ctr_pipeline` workflow (the latest plan; each task keeps its own steps) and
    /// starts it.
    pub(super) async fn create_task_from(
        &mut self,
        workflow_id: i64,
        def: WorkflowDef,
        name: String,
        params: BTreeMap<String, String>,
        opts: TaskOptions,
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
            let rendered = template::render(&s.params, &probe)
                .map_err(|e| EngineError::InvalidRequest(format!("step `{}`: {e}", s.name)))?;
            // What a placeholder turns into gets every check its `${...}` skipped (a name
            // that becomes a path, SQL that becomes two statements).
            ferry_core::kinds::validate_rendered(&s.kind, &rendered).map_err(|e| {
                EngineError::InvalidRequest(format!(
                    "step `{}` once its placeholders are filled in: {e}",
                    s.name
                ))
            })?;
            // What it needs must exist: a configured pool, an agent big enough.
            if let Some(r) = &s.resources {
                r.check_pool(&self.settings.pools)
                    .map_err(|(field, message)| EngineError::InvalidField {
                        field: format!("steps.{}.{field}", s.name),
                        message: format!("step `{}`: `{field}` {message}", s.name),
                    })?;
            }
            let demand =
                ferry_core::capacity::Demand::of_step(&s.kind, &rendered, s.resources.as_ref());
            self.check_fits_somewhere(
                &s.name,
                &s.placement,
                &s.kind,
                s.resources.as_ref(),
                &demand,
            )?;
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
        // The definition's steps are consumed in topological order (a 100,000-step workflow
        // is not held twice while the task is created).
        let order: Vec<usize> = {
            let index: HashMap<&str, usize> = def
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.as_str(), i))
                .collect();
            def.topological_order()
                .iter()
                .filter_map(|s| index.get(s.name.as_str()).copied())
                .collect()
        };
        let workflow_name = def.name.clone();
        let (max_active, priority) = (
            def.max_active_tasks,
            opts.priority.or(def.priority).unwrap_or(0),
        );
        let mut slots: Vec<Option<ferry_core::workflow::StepDef>> =
            def.steps.into_iter().map(Some).collect();
        let params_json = serde_json::to_string(&params).unwrap_or_else(|_| "{}".into());
        let new_task = NewTask {
            name: task_name.clone(),
            workflow_id,
            workflow_name: workflow_name.clone(),
            params: params_json,
            status: TaskStatus::Running.as_str().to_owned(),
            priority,
            run: opts.run,
            steps: order
                .iter()
                .filter_map(|&i| slots[i].take())
                .enumerate()
                .map(|(i, s)| {
                    let policy = s.retry_policy();
                    NewStep {
                        step_order: i as i32,
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
                        resources: s
                            .resources
                            .as_ref()
                            .filter(|r| !r.is_empty())
                            .and_then(|r| serde_json::to_string(r).ok()),
                        step_name: s.name,
                        kind: s.kind,
                    }
                })
                .collect(),
        };
        drop(slots);
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
        let mut task = build_task_rt(task_row, step_rows)?;
        task.max_active = max_active;
        // The rows are stored as they are (rendered, pending): nothing to write again.
        self.tasks.insert(id, task);
        let count = self.tasks[&id].steps.len();
        self.log(
            id,
            "",
            "INFO",
            format!("task created from workflow {workflow_name} with {count} steps"),
        );
        self.broadcasts.push(Broadcast::TaskStatus {
            task_id: id,
            status: TaskStatus::Running,
        });
        self.enqueue_pending(id);
        Ok(id)
    }

    pub(super) fn pause(&mut self, task_id: i64) -> Result<(), EngineError> {
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

    pub(super) fn resume(&mut self, task_id: i64) -> Result<(), EngineError> {
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

    pub(super) fn retry_task(&mut self, task_id: i64) -> Result<(), EngineError> {
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
    pub(super) fn step_key(&self, task_id: i64, step_name: &str) -> Result<StepKey, EngineError> {
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
    pub(super) fn update_step_params(
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
        // The log shows the change with secret env values masked.
        let mut shown = patch.clone();
        if let (Some(env), Some(secret)) = (
            shown.get_mut("env").and_then(|e| e.as_object_mut()),
            params.get("secret_env").and_then(|s| s.as_array()),
        ) {
            for k in secret.iter().filter_map(|k| k.as_str()) {
                if let Some(v) = env.get_mut(k) {
                    *v = serde_json::Value::String(ferry_core::kinds::MASK.into());
                }
            }
        }
        self.log_step(
            key,
            "INFO",
            format!("parameters changed by {user}: {shown}"),
        );
        Ok(())
    }

    /// Records a person's decision on a step held for approval. Approval puts the step back
    /// to pending (its next attempt finds the decision in its checkpoint) and resumes the
    /// task; rejection fails the step and leaves the task paused with the reason.
    pub(super) fn decide(
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
            "params_hash": approval_hash(&self.step(key).row),
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

    /// An approval holds only for what was approved: before a step runs again, an approval
    /// recorded for other parameters or inputs is removed, so the step asks again.
    pub(super) fn check_approval(&mut self, key: StepKey) {
        let row = &self.step(key).row;
        let Some(mut data) = row
            .checkpoint_data
            .as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        else {
            return;
        };
        let Some(approval) = data.get("approval") else {
            return;
        };
        if approval.get("params_hash").and_then(|h| h.as_str()) == Some(&approval_hash(row)) {
            return;
        }
        let by = approval
            .get("by")
            .and_then(|b| b.as_str())
            .unwrap_or("someone")
            .to_owned();
        if let Some(obj) = data.as_object_mut() {
            obj.remove("approval");
        }
        self.step_mut(key).row.checkpoint_data = Some(data.to_string());
        self.log_step(
            key,
            "WARN",
            format!(
                "the decision by {by} was for other parameters or inputs; the step asks for approval again"
            ),
        );
    }

    /// Puts failed and cancelled steps back to pending with a fresh retry budget.
    pub(super) fn requeue_failed_steps(&mut self, task_id: i64) -> Vec<String> {
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
            s.not_before = None;
            names.push(s.row.step_name.clone());
        }
        names
    }

    pub(super) fn cancel_task(&mut self, task_id: i64) -> Result<(), EngineError> {
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
}

/// What an approval is bound to: the step's kind, parameters and inputs (hex BLAKE3).
pub(super) fn approval_hash(row: &ferry_store::workflow_step::Model) -> String {
    let mut h = blake3::Hasher::new();
    for part in [&row.kind, &row.params, &row.depends_on] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.finalize().to_hex().to_string()
}
