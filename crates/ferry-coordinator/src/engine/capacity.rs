//! Capacity: which agent has room for a step (slots, GPUs), what a dispatched step holds
//! until it ends, pools and workflows' active tasks. The rules are `ferry_core::capacity`'s;
//! this keeps the counts.

use ferry_core::capacity::{self, Demand, Grant, Resource, Resources, Shortfall};

use super::*;
use crate::observe::AgentLoad;

/// The most agents named in a "waits for" reason.
const NAMED_IN_REASON: usize = 3;
/// How often the capacity gauges are published at most.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

impl Engine {
    /// The agent `demand` goes to (connected, runs `kind`, matches `placement`, has room;
    /// the least used first) and what it is given there. `Err(None)`: no agent could run it
    /// at all; `Err(Some(why))`: none has room now.
    pub(super) fn place(
        &self,
        placement: &Placement,
        kind: &str,
        demand: &Demand,
    ) -> Result<(String, Grant), Option<String>> {
        let usable = |a: &AgentRt| a.conn.is_some() && a.kinds.contains(kind);
        let agents: Vec<(&String, &AgentRt)> = match placement {
            Placement::Agent(name) => self
                .agents
                .get_key_value(name)
                .filter(|(_, a)| usable(a))
                .into_iter()
                .collect(),
            Placement::Role(role) => self
                .agents
                .iter()
                .filter(|(_, a)| a.role == *role && usable(a))
                .collect(),
        };
        if agents.is_empty() {
            return Err(None);
        }
        let mut best: Option<((u32, u32, &String), Grant)> = None;
        let mut never = 0;
        let mut reasons = Vec::new();
        for (name, a) in &agents {
            match capacity::fit(&a.offer(), &a.usage, demand) {
                Ok(grant) => {
                    let load = (a.usage.slots, a.running, *name);
                    if best.as_ref().is_none_or(|(b, _)| load < *b) {
                        best = Some((load, grant));
                    }
                }
                Err(s) => {
                    if matches!(s, Shortfall::Never(..)) {
                        never += 1;
                    }
                    if reasons.len() < NAMED_IN_REASON {
                        reasons.push(format!("{name}: {}", s.message()));
                    }
                }
            }
        }
        if let Some(((_, _, name), grant)) = best {
            return Ok((name.clone(), grant));
        }
        let more = agents.len().saturating_sub(NAMED_IN_REASON);
        let named = if more > 0 {
            format!("{}; {more} more", reasons.join("; "))
        } else {
            reasons.join("; ")
        };
        Err(Some(if never == agents.len() {
            format!("needs {demand}, more than any connected agent ({placement}) has: {named}")
        } else {
            format!("{demand} free on an agent ({placement}): {named}")
        }))
    }

    /// `key`'s attempt takes `grant` on `agent`.
    pub(super) fn hold(&mut self, key: StepKey, agent: &str, grant: Grant) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.usage.take(&grant);
        }
        let Some(task) = self.tasks.get_mut(&key.0) else {
            return;
        };
        if task.holding == 0 {
            *self
                .active_by_workflow
                .entry(task.row.workflow_name.clone())
                .or_default() += 1;
        }
        task.holding += 1;
        let step = &mut task.steps[key.1];
        if let Some(pool) = &step.demand.pool {
            *self.pool_used.entry(pool.clone()).or_default() += 1;
        }
        step.row.gpu_ids =
            (!grant.gpu_ids.is_empty()).then(|| serde_json::json!(grant.gpu_ids).to_string());
        step.grant = Some(grant);
        self.dirty_steps.insert(key);
        self.gauges_dirty = true;
    }

    /// `key`'s attempt ended (or went back to pending): what it held is free again.
    pub(super) fn release(&mut self, key: StepKey) {
        let Some(task) = self.tasks.get_mut(&key.0) else {
            return;
        };
        let step = &mut task.steps[key.1];
        let Some(grant) = step.grant.take() else {
            return;
        };
        step.row.gpu_ids = None;
        if let Some(pool) = &step.demand.pool
            && let Some(used) = self.pool_used.get_mut(pool)
        {
            *used = used.saturating_sub(1);
        }
        if let Some(agent) = &step.row.agent_name
            && let Some(a) = self.agents.get_mut(agent)
        {
            a.usage.release(&grant);
        }
        task.holding = task.holding.saturating_sub(1);
        if task.holding == 0
            && let Some(n) = self.active_by_workflow.get_mut(&task.row.workflow_name)
        {
            *n = n.saturating_sub(1);
        }
        self.dirty_steps.insert(key);
        self.capacity_changed = true;
        self.gauges_dirty = true;
    }

    /// Counts what the steps of a task loaded from the store hold (after a restart): each
    /// grant is taken again through [`Self::hold`], the one place that counts.
    pub(super) fn count_holdings(&mut self, task_id: i64) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.holding = 0;
        let held: Vec<(usize, String, Grant)> = task
            .steps
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| {
                let grant = s.grant.take()?;
                Some((i, s.row.agent_name.clone().unwrap_or_default(), grant))
            })
            .collect();
        for (i, agent, grant) in held {
            self.hold((task_id, i), &agent, grant);
        }
    }

    /// Refuses a step that no agent known for its placement could ever run (more GPUs or
    /// slots than any of them has). With no agent known yet, nothing is refused: the step
    /// waits for one.
    pub(super) fn check_fits_somewhere(
        &self,
        step: &str,
        placement: &Placement,
        kind: &str,
        resources: Option<&Resources>,
        demand: &Demand,
    ) -> Result<(), EngineError> {
        let known: Vec<&AgentRt> = self
            .agents
            .iter()
            .filter(|(name, a)| match placement {
                Placement::Agent(n) => *name == n,
                Placement::Role(r) => a.role == *r,
            })
            .map(|(_, a)| a)
            .filter(|a| a.kinds.is_empty() || a.kinds.contains(kind))
            .collect();
        let mut short = None;
        for a in &known {
            match capacity::could_fit(&a.offer(), demand) {
                Ok(()) => return Ok(()),
                Err(Shortfall::Never(resource, why)) => short = Some((resource, why)),
                Err(Shortfall::Busy(_)) => {}
            }
        }
        // No agent known yet: the step waits for one.
        let Some((resource, why)) = short else {
            return Ok(());
        };
        // The field the user wrote: `resources`, else a train step's `gpu_count`.
        let field = match resource {
            Resource::Slots => "resources.slots",
            Resource::Gpus if resources.is_some_and(|r| r.gpus.is_some()) => "resources.gpus",
            Resource::Gpus if kind == ferry_core::kinds::TRAIN => "params.gpu_count",
            Resource::Gpus => "resources.gpus",
        };
        Err(EngineError::InvalidField {
            field: format!("steps.{step}.{field}"),
            message: format!(
                "step `{step}` needs {demand}, more than any agent ({placement}) has ({why}): it could never run"
            ),
        })
    }

    /// Publishes the queue's length and every agent's load to the metrics, when they may
    /// have changed, at most once a second (not at every turn of a busy engine).
    pub(super) fn publish_capacity(&mut self) {
        let now = self.now();
        if !self.gauges_dirty
            || self
                .gauges_published
                .is_some_and(|t| now.duration_since(t) < GAUGES_EVERY)
        {
            return;
        }
        self.gauges_dirty = false;
        self.gauges_published = Some(now);
        let loads: Vec<AgentLoad> = self
            .agents
            .iter()
            .map(|(name, a)| AgentLoad {
                agent: name.clone(),
                slots: a.slots,
                slots_in_use: a.usage.slots,
                gpus: a.gpus.len() as u32,
                gpus_in_use: a.usage.gpus.len() as u32,
            })
            .collect();
        self.settings
            .observer
            .set_capacity(self.queue.len(), &loads);
    }

    /// The queue as users see it: each waiting step, its place and what it waits for.
    pub(super) fn queue_view(&self) -> Vec<QueuedStep> {
        self.queue
            .iter()
            .enumerate()
            .filter_map(|(i, (qk, reason))| {
                let (task_id, index) = qk.key();
                let task = self.tasks.get(&task_id)?;
                let step = task.steps.get(index)?;
                Some(QueuedStep {
                    position: i as u32 + 1,
                    task_id,
                    task_name: task.row.name.clone(),
                    workflow: task.row.workflow_name.clone(),
                    step: step.row.step_name.clone(),
                    priority: task.row.priority,
                    needs: step.demand.to_string(),
                    waits_for: reason.clone(),
                })
            })
            .collect()
    }
}

/// A step waiting for capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedStep {
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
