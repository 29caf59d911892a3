//! Recovery and reconciliation: reloading unfinished tasks after a restart, matching the
//! jobs an agent reports at registration against the steps placed on it, and giving up the
//! steps of agents gone past `workflow.agent_timeout`.

use super::*;

impl Engine {
    /// Reloads every unfinished task. Steps that were on an agent stay as they are: the
    /// agent re-attaches them when it registers, or they are retried after the agent timeout.
    pub(super) async fn recover(&mut self) -> Result<(), EngineError> {
        let rows = self.store.unfinished_tasks().await?;
        let now = self.now();
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
                    self.agents
                        .entry(agent.clone())
                        .or_insert_with(|| AgentRt::new(Role::DataSource, now, true));
                    if let Some(job) = &step.row.job_id {
                        self.jobs.insert(
                            job.clone(),
                            ((id, step.row.step_order as usize), agent.clone()),
                        );
                    }
                }
            }
            // What its steps on agents hold counts against those agents again.
            self.count_holdings(id);
            if self.tasks[&id].status == TaskStatus::Running && !self.settings.auto_resume {
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

    pub(super) async fn load_task(&mut self, row: workflow_task::Model) -> Result<(), EngineError> {
        let steps = self.store.steps(row.id).await?;
        let mut task = build_task_rt(row, steps)?;
        // The workflow's limit as it is now (a task keeps no copy of its definition).
        task.max_active = match self.store.workflow_by_name(&task.row.workflow_name).await {
            Ok(Some(wf)) => Store::definition_of(&wf)
                .ok()
                .and_then(|d: WorkflowDef| d.max_active_tasks),
            _ => None,
        };
        // A back-off that was running when the coordinator stopped goes on where it was.
        let (now, wall) = (self.now(), Utc::now());
        for (i, s) in task.steps.iter_mut().enumerate() {
            if s.status != StepStatus::Pending {
                continue;
            }
            if let Some(left) = s.row.next_attempt_at.and_then(|t| (t - wall).to_std().ok()) {
                s.not_before = Some(now + left);
                self.retry_timers
                    .push(Reverse((now + left, task.row.id, i)));
            }
        }
        self.tasks.insert(task.row.id, task);
        Ok(())
    }

    /// Matches the jobs an agent reports against the steps the engine placed on it:
    /// re-attach what still runs, apply what finished while we were apart, re-dispatch what
    /// the agent lost, and cancel what nobody wants any more.
    pub(super) fn reconcile_agent_jobs(&mut self, agent: &str, reports: Vec<v1::JobReport>) {
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
            self.jobs.insert(r.job_id.clone(), (key, agent.to_owned()));
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

    /// The periodic checks: creates nobody answered, agents gone silent, and the steps of
    /// agents gone past the timeout.
    pub(super) fn on_tick(&mut self) {
        self.redispatch_unanswered_creates();
        let gone = self.check_liveness();
        if !gone.is_empty() {
            self.give_up_stranded(&gone);
        }
    }

    /// Steps on agents gone longer than `workflow.agent_timeout` fail as transient (and are
    /// retried elsewhere).
    fn give_up_stranded(&mut self, gone: &HashSet<String>) {
        let timeout = self.settings.agent_timeout;
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
}
