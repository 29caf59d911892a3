//! The scheduler: which pending steps may run (inputs complete, task running, back-off
//! over), on which agent, and phase one of the two-phase start; retry timers and attempt
//! deadlines.

use ferry_core::capacity::{Demand, Grant};

use super::*;

/// What one look at a queued step came to.
enum Attempt {
    Started,
    /// Not dispatchable now for a reason the queue does not track (inputs, back-off, a
    /// paused task, no agent at all): it comes back as a candidate when that changes.
    NotReady,
    /// Ready, but what it needs is taken: it stays queued with this reason.
    Waits(String),
}

/// A queued step's place: higher priority first, then the older task, then step order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct QueueKey(Reverse<i32>, i64, usize);

impl QueueKey {
    pub(super) fn of(task: &TaskRt, key: StepKey) -> QueueKey {
        QueueKey(Reverse(task.row.priority), key.0, key.1)
    }

    pub(super) fn key(self) -> StepKey {
        (self.1, self.2)
    }
}

impl Engine {
    pub(super) fn enqueue_pending(&mut self, task_id: i64) {
        if let Some(task) = self.tasks.get(&task_id) {
            for (i, s) in task.steps.iter().enumerate() {
                if s.status == StepStatus::Pending {
                    self.candidates.insert((task_id, i));
                }
            }
        }
    }

    pub(super) fn fire_due_retries(&mut self) {
        let now = self.now();
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
    pub(super) fn attempt_timed_out(&mut self, key: StepKey, attempt: i32) {
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

    /// Phase one for every step whose inputs are complete and that fits somewhere: pick an
    /// agent, give the step its slots and GPUs, and create the job. What does not fit waits
    /// in the queue, highest priority first, then oldest task, with what it waits for.
    pub(super) fn schedule(&mut self) {
        let requeue = std::mem::take(&mut self.capacity_changed) && !self.queue.is_empty();
        if self.candidates.is_empty() && !requeue {
            return;
        }
        for key in std::mem::take(&mut self.candidates) {
            if let Some(task) = self.tasks.get(&key.0) {
                self.queue.entry(QueueKey::of(task, key)).or_default();
            }
        }
        self.gauges_dirty = true;
        let order: Vec<QueueKey> = self.queue.keys().copied().collect();
        let clock_now = self.now();
        // Within one pass, steps that need what another step just did not find wait for
        // the same (a 10,000-step queue is not placed 10,000 times on full agents).
        let mut full: HashMap<(Placement, String, Demand), String> = HashMap::new();
        for qk in order {
            match self.try_start(qk.key(), clock_now, &mut full) {
                Attempt::Started | Attempt::NotReady => {
                    self.queue.remove(&qk);
                }
                Attempt::Waits(reason) => {
                    if let Some(r) = self.queue.get_mut(&qk)
                        && *r != reason
                    {
                        *r = reason;
                    }
                }
            }
        }
    }

    /// Starts `key` if it is ready and fits; else says what it waits for.
    fn try_start(
        &mut self,
        key: StepKey,
        clock_now: Instant,
        full: &mut HashMap<(Placement, String, Demand), String>,
    ) -> Attempt {
        let Some(task) = self.tasks.get(&key.0) else {
            return Attempt::NotReady;
        };
        if !task.status.dispatches() {
            return Attempt::NotReady; // paused: a retry timer firing now dispatches nothing
        }
        let step = &task.steps[key.1];
        if step.status != StepStatus::Pending {
            return Attempt::NotReady;
        }
        if step.not_before.is_some_and(|t| t > clock_now) {
            return Attempt::NotReady; // its retry timer will bring it back
        }
        if !step
            .deps
            .iter()
            .all(|&d| task.steps[d].status == StepStatus::Completed)
        {
            return Attempt::NotReady; // INPUTS_READY not yet satisfied
        }
        // A task that holds nothing yet starts only under its workflow's limit.
        if task.holding == 0
            && let Some(limit) = task.max_active
        {
            let active = self
                .active_by_workflow
                .get(&task.row.workflow_name)
                .copied()
                .unwrap_or(0);
            if active >= limit {
                return Attempt::Waits(format!(
                    "workflow {} has {active} of at most {limit} tasks running (max_active_tasks)",
                    task.row.workflow_name
                ));
            }
        }
        if let Some(pool) = &step.demand.pool {
            let used = self.pool_used.get(pool).copied().unwrap_or(0);
            match self.settings.pools.get(pool) {
                Some(&size) if used >= size => {
                    return Attempt::Waits(format!("pool {pool}: {used} of {size} in use"));
                }
                Some(_) => {}
                None => {
                    return Attempt::Waits(format!(
                        "pool {pool}, which is not configured (workflow.pools)"
                    ));
                }
            }
        }
        let class = (
            step.placement.clone(),
            step.row.kind.clone(),
            step.demand.clone(),
        );
        if let Some(reason) = full.get(&class) {
            return Attempt::Waits(reason.clone());
        }
        match self.place(&class.0, &class.1, &class.2) {
            Ok((agent, grant)) => {
                self.dispatch(key, agent, grant);
                Attempt::Started
            }
            Err(None) => {
                if self.waiting_for_agent.insert(key) {
                    let msg = format!("waiting for an agent ({}, kind {})", class.0, class.1);
                    self.log_step(key, "WARN", msg);
                }
                Attempt::NotReady
            }
            Err(Some(reason)) => {
                full.insert(class, reason.clone());
                Attempt::Waits(reason)
            }
        }
    }

    pub(super) fn dispatch(&mut self, key: StepKey, agent: String, grant: Grant) {
        self.check_approval(key);
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
                    gpu_ids: grant.gpu_ids.clone(),
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
            step.not_before = None;
        }
        self.step_event(key, StepEvent::Dispatch);
        if let Some(a) = self.agents.get_mut(&agent) {
            a.running += 1;
        }
        self.hold(key, &agent, grant);
        self.pending_creates.insert(
            request_id,
            PendingCreate {
                task_id: key.0,
                step: key.1,
                attempt,
                sent: self.now(),
            },
        );
        // A limit past what the clock can hold (stored before limits were checked) is no
        // limit rather than a panic of the engine.
        if let Some(due) = self
            .step(key)
            .timeout
            .and_then(|limit| self.now().checked_add(limit))
        {
            self.deadlines.push(Reverse((due, key.0, key.1, attempt)));
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

    /// A create nobody acknowledged within `workflow.agent_timeout` (the agent is alive but
    /// its answer never came): the step is dispatched again, without counting a retry.
    pub(super) fn redispatch_unanswered_creates(&mut self) {
        let now = self.now();
        let timeout = self.settings.agent_timeout;
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
    }
}
