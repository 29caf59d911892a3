//! What the engine keeps in memory: tasks and steps (rows as stored plus what scheduling
//! needs: dependencies, dependents, retry policy, time limit, back-off), agents, event cursors
//! and creates in flight. No IO and nothing from the engine: built from stored rows and
//! registrations, task and step status changed only through the declared state machines of
//! `ferry_core::state`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use ferry_core::capacity::{Demand, Grant, Resources, Usage};
use ferry_core::retry::RetryPolicy;
use ferry_core::workflow::Placement;
use ferry_core::{Role, StepStatus, TaskStatus};
use ferry_store::{workflow_step, workflow_task};
use tokio::time::Instant;

use crate::error::EngineError;
use ferry_proto::v1;

/// Where the engine sends an agent its commands (the agent's stream).
pub type AgentTx =
    tokio::sync::mpsc::UnboundedSender<Result<v1::CoordinatorMessage, tonic::Status>>;

pub(super) struct StepRt {
    pub(super) row: workflow_step::Model,
    pub(super) status: StepStatus,
    pub(super) placement: Placement,
    pub(super) deps: Vec<usize>,
    pub(super) dependents: Vec<usize>,
    pub(super) policy: RetryPolicy,
    /// The step's own limit for one attempt (`timeout_secs`).
    pub(super) timeout: Option<Duration>,
    /// While backing off before a retry: not dispatched before this (the engine's clock;
    /// `next_attempt_at` is the same moment in wall time, for readers).
    pub(super) not_before: Option<Instant>,
    /// What it needs on an agent while it runs (its kind's default, its `resources`).
    pub(super) demand: Demand,
    /// What its current attempt holds (slots, GPU ids), from dispatch until it ends.
    pub(super) grant: Option<Grant>,
}

pub(super) struct TaskRt {
    pub(super) row: workflow_task::Model,
    pub(super) status: TaskStatus,
    pub(super) steps: Vec<StepRt>,
    /// How many steps are completed (kept as they change: a 100,000-step task is not
    /// counted again at every completion).
    completed: usize,
    /// Its workflow's `max_active_tasks`.
    pub(super) max_active: Option<u32>,
    /// How many of its steps hold a grant on an agent: the task is active while any does.
    pub(super) holding: u32,
}

impl TaskRt {
    pub(super) fn completed_steps(&self) -> usize {
        self.completed
    }

    pub(super) fn all_completed(&self) -> bool {
        self.completed == self.steps.len()
    }

    /// Sets step `i`'s status, as the state machine decided, and its stored string.
    pub(super) fn set_step_status(&mut self, i: usize, status: StepStatus) {
        let step = &mut self.steps[i];
        match (
            step.status == StepStatus::Completed,
            status == StepStatus::Completed,
        ) {
            (false, true) => self.completed += 1,
            (true, false) => self.completed -= 1,
            _ => {}
        }
        step.status = status;
        step.row.status = status.as_str().to_owned();
        step.row.updated_at = Utc::now();
    }
}

pub(super) fn build_task_rt(
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
        let resources: Option<Resources> = match &s.resources {
            Some(r) => Some(serde_json::from_str(r).map_err(|_| corrupt("resources"))?),
            None => None,
        };
        let params: serde_json::Value = serde_json::from_str(&s.params).unwrap_or_default();
        let demand = Demand::of_step(&s.kind, &params, resources.as_ref());
        // A step on an agent holds what it was given (restored after a restart).
        let grant = status.is_on_agent().then(|| Grant {
            slots: demand.slots,
            gpu_ids: s
                .gpu_ids
                .as_deref()
                .and_then(|g| serde_json::from_str(g).ok())
                .unwrap_or_default(),
        });
        rts.push(StepRt {
            row: s,
            status,
            placement,
            deps,
            dependents: Vec::new(),
            policy,
            timeout,
            not_before: None,
            demand,
            grant,
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
    let completed = rts
        .iter()
        .filter(|s| s.status == StepStatus::Completed)
        .count();
    Ok(TaskRt {
        row,
        status,
        steps: rts,
        completed,
        max_active: None,
        // Counted when the engine takes the grants (`Engine::count_holdings`).
        holding: 0,
    })
}

pub(super) struct AgentRt {
    pub(super) role: Role,
    pub(super) kinds: HashSet<String>,
    pub(super) gpus: Vec<u32>,
    pub(super) hostname: String,
    /// The agent's build version, as it registered.
    pub(super) version: String,
    pub(super) paths: BTreeMap<String, String>,
    pub(super) ssh_to: Vec<String>,
    pub(super) conn: Option<(u64, AgentTx)>,
    pub(super) last_seen: Instant,
    /// When the agent went away (or, for agents known only from the database after a
    /// restart, when the engine started).
    pub(super) offline_since: Option<Instant>,
    pub(super) running: u32,
    /// Steps it runs at once (`agent.slots`; 0: not limited).
    pub(super) slots: u32,
    /// What the steps dispatched to it hold.
    pub(super) usage: Usage,
}

impl AgentRt {
    /// An agent as first seen: registering now, or (`offline`) known only from the steps a
    /// restarted coordinator found placed on it.
    pub(super) fn new(role: Role, now: Instant, offline: bool) -> AgentRt {
        AgentRt {
            role,
            kinds: HashSet::new(),
            gpus: Vec::new(),
            hostname: String::new(),
            version: String::new(),
            paths: BTreeMap::new(),
            ssh_to: Vec::new(),
            conn: None,
            last_seen: now,
            offline_since: offline.then_some(now),
            running: 0,
            slots: 0,
            usage: Usage::default(),
        }
    }

    /// What it offers to the scheduler.
    pub(super) fn offer(&self) -> ferry_core::capacity::Offer<'_> {
        ferry_core::capacity::Offer {
            slots: self.slots,
            gpus: &self.gpus,
        }
    }
}

/// How far an agent instance's numbered events are applied (and, once committed, stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    pub(super) instance: u64,
    pub(super) seq: u64,
}

/// A create request in flight (phase one sent, no answer yet).
pub(super) struct PendingCreate {
    pub(super) task_id: i64,
    pub(super) step: usize,
    pub(super) attempt: i32,
    /// When `CreateJob` went out: unanswered past `workflow.agent_timeout`, the step is
    /// dispatched again.
    pub(super) sent: Instant,
}
