//! What agents report about their jobs: creation answers, state changes, logs, checkpoints,
//! progress, chunk states and metrics, each checked before it reaches the commit.

use super::*;

impl Engine {
    pub(super) fn job_created(&mut self, agent: &str, c: v1::JobCreated) {
        // Only the agent the create went to may answer it.
        if let Some(p) = self.pending_creates.get(&c.request_id) {
            let owner = self
                .tasks
                .get(&p.task_id)
                .and_then(|t| t.steps[p.step].row.agent_name.as_deref());
            if owner != Some(agent) {
                security_event(
                    agent,
                    &format!(
                        "JobCreated for request {} dropped: it was sent to {}",
                        c.request_id,
                        owner.unwrap_or("no agent")
                    ),
                );
                return;
            }
        }
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
        self.jobs.insert(c.job_id.clone(), (key, agent.to_owned()));
        self.step_mut(key).row.job_id = Some(c.job_id.clone());
        self.step_event(key, StepEvent::Created);
        self.send(agent, start(&c.job_id));
    }

    pub(super) fn job_event(&mut self, agent: &str, ev: v1::JobEvent) {
        let Some((key, owner)) = self.jobs.get(&ev.job_id) else {
            debug!(job = %ev.job_id, "event for an unknown job ignored");
            return;
        };
        let key = *key;
        if owner != agent {
            security_event(
                agent,
                &format!(
                    "event for job {} dropped: the job runs on {owner}",
                    ev.job_id
                ),
            );
            return;
        }
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
                self.broadcasts.push(Broadcast::Progress {
                    task_id: key.0,
                    step: self.step(key).row.step_name.clone(),
                    progress_json: p.data_json.clone(),
                });
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
    pub(super) fn state_fits(&mut self, key: StepKey, what: &str, json: &str) -> bool {
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

    pub(super) fn mark_running(&mut self, key: StepKey) {
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

    pub(super) fn job_completed(&mut self, key: StepKey, agent: &str, job_id: &str) {
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
            step.not_before = None;
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
    pub(super) fn job_failed(&mut self, key: StepKey, error: &str, class: ErrorClass) {
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
            let due = self.now() + delay;
            {
                let step = self.step_mut(key);
                step.not_before = Some(due);
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

    pub(super) fn requeue_without_retry(&mut self, key: StepKey) {
        let step = self.step_mut(key);
        step.row.job_id = None;
        step.row.agent_name = None;
        self.step_event(key, StepEvent::Requeue);
        self.candidates.insert(key);
    }

    pub(super) fn check_task_done(&mut self, task_id: i64) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        if task.all_completed() {
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
}

/// A `transfer_chunks` row from an agent's chunk report (the store assigns its id).
pub(super) fn chunk_row(
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
