//! Workflow definitions: a DAG of steps, and the validation every definition passes
//! before it is stored or executed.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capacity::Resources;
use crate::kinds;
use crate::retry::{RetryPolicy, RetrySpec};
use crate::state::Role;

/// A workflow as users write it (YAML or JSON) and as the coordinator stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// At most this many tasks of the workflow run at once; the others' steps wait in the
    /// queue (no limit when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_tasks: Option<u32>,
    /// Its tasks' priority when steps wait for capacity (higher first; 0 when absent). A
    /// task created with a priority of its own keeps that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    pub steps: Vec<StepDef>,
}

/// One node of the DAG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub params: Value,
    pub placement: Placement,
    /// Upstream steps whose completion this step waits for (its INPUTS_READY constraint).
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// How long one attempt may take, in seconds, from its dispatch: past it the engine
    /// cancels the job and retries the step as after a transient failure. (`timeout` is
    /// accepted too.)
    #[serde(default, alias = "timeout", skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// What the step needs beyond its kind's default: slots, GPUs, a shared pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// Where a step runs: any agent of a role, or one named agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "PlacementRepr", into = "PlacementRepr")]
pub enum Placement {
    Role(Role),
    Agent(String),
}

/// How a placement is written: `{role: training}` or `{agent: train-1}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
}

impl TryFrom<PlacementRepr> for Placement {
    type Error = String;

    fn try_from(r: PlacementRepr) -> Result<Self, Self::Error> {
        match (r.role, r.agent) {
            (Some(role), None) => Ok(Placement::Role(role)),
            (None, Some(agent)) => Ok(Placement::Agent(agent)),
            _ => Err("placement needs exactly one of `role` or `agent`".into()),
        }
    }
}

impl From<Placement> for PlacementRepr {
    fn from(p: Placement) -> Self {
        match p {
            Placement::Role(role) => PlacementRepr {
                role: Some(role),
                agent: None,
            },
            Placement::Agent(agent) => PlacementRepr {
                role: None,
                agent: Some(agent),
            },
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Role(r) => write!(f, "role {r}"),
            Placement::Agent(a) => write!(f, "agent {a}"),
        }
    }
}

/// Seed 003's execution constraint of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Constraint {
    /// No inputs: ready as soon as it is started.
    #[serde(rename = "NONE")]
    None,
    /// Waits until every input has been delivered.
    #[serde(rename = "INPUTS_READY")]
    InputsReady,
}

impl StepDef {
    pub fn constraint(&self) -> Constraint {
        if self.inputs.is_empty() {
            Constraint::None
        } else {
            Constraint::InputsReady
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::for_kind(&self.kind).with_overrides(self.retry)
    }
}

/// One reason a definition is refused; each names the step (or workflow) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("workflow name `{0}` is invalid: use 1-100 letters, digits, `_`, `-` or `.`")]
    BadWorkflowName(String),
    #[error("workflow `{0}` must have at least one step")]
    NoSteps(String),
    #[error("step name `{0}` is invalid: use 1-50 letters, digits, `_` or `-`")]
    BadStepName(String),
    #[error("step `{0}` is defined more than once")]
    DuplicateStep(String),
    #[error("step `{step}`: {message}")]
    BadStep { step: String, message: String },
    #[error("step `{step}`: input `{input}` is not a step of this workflow")]
    UnknownInput { step: String, input: String },
    #[error("step `{0}` lists itself as an input")]
    SelfInput(String),
    #[error("cycle between steps: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("{0}")]
    BadLimit(String),
}

/// Every reason a definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid workflow: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidWorkflow {
    pub problems: Vec<ValidationError>,
}

/// The longest `timeout_secs` a step may set: a year. The engine adds it to the time now for
/// the attempt's deadline, which a larger value (up to `u64::MAX`) would overflow.
pub const MAX_TIMEOUT_SECS: u64 = 366 * 24 * 3600;

/// What a workflow name may be: 1-100 letters, digits, '_', '-' or '.'.
pub fn is_valid_workflow_name(s: &str) -> bool {
    valid_name(s, 100, &['.'])
}

/// What a step name may be: 1-50 letters, digits, '_' or '-'.
pub fn is_valid_step_name(s: &str) -> bool {
    valid_name(s, 50, &[])
}

use crate::ident::is_plain_name as valid_name;

impl WorkflowDef {
    /// Parses a definition from YAML (JSON is valid YAML too).
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }

    pub fn step(&self, name: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Seed 003's phase-one checks (at least one step, known kinds) plus the DAG's own:
    /// unique names, inputs that exist, no cycles.
    pub fn validate(&self) -> Result<(), InvalidWorkflow> {
        let mut problems = Vec::new();
        if !is_valid_workflow_name(&self.name) {
            problems.push(ValidationError::BadWorkflowName(self.name.clone()));
        }
        if self.steps.is_empty() {
            problems.push(ValidationError::NoSteps(self.name.clone()));
        }
        if self.max_active_tasks == Some(0) {
            problems.push(ValidationError::BadLimit(
                "`max_active_tasks` must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        let mut seen = HashMap::new();
        for step in &self.steps {
            if !is_valid_step_name(&step.name) {
                problems.push(ValidationError::BadStepName(step.name.clone()));
            }
            if seen.insert(step.name.as_str(), ()).is_some() {
                problems.push(ValidationError::DuplicateStep(step.name.clone()));
            }
            if let Err(message) = kinds::validate_params(&step.kind, &step.params) {
                problems.push(ValidationError::BadStep {
                    step: step.name.clone(),
                    message,
                });
            }
            match step.timeout_secs {
                Some(0) => problems.push(ValidationError::BadStep {
                    step: step.name.clone(),
                    message: "`timeout_secs` must be at least 1".into(),
                }),
                Some(t) if t > MAX_TIMEOUT_SECS => problems.push(ValidationError::BadStep {
                    step: step.name.clone(),
                    message: format!(
                        "`timeout_secs` must be at most {MAX_TIMEOUT_SECS} (a year), not {t}"
                    ),
                }),
                _ => {}
            }
            if let Some(Err((field, message))) = step.resources.as_ref().map(Resources::check) {
                problems.push(ValidationError::BadStep {
                    step: step.name.clone(),
                    message: format!("`{field}` {message}"),
                });
            }
            if let Placement::Agent(a) = &step.placement
                && a.trim().is_empty()
            {
                problems.push(ValidationError::BadStep {
                    step: step.name.clone(),
                    message: "placement agent name must not be empty".into(),
                });
            }
        }
        for step in &self.steps {
            for input in &step.inputs {
                if input == &step.name {
                    problems.push(ValidationError::SelfInput(step.name.clone()));
                } else if !seen.contains_key(input.as_str()) {
                    problems.push(ValidationError::UnknownInput {
                        step: step.name.clone(),
                        input: input.clone(),
                    });
                }
            }
        }
        if problems.is_empty()
            && let Some(cycle) = self.find_cycle()
        {
            problems.push(ValidationError::Cycle(cycle));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidWorkflow { problems })
        }
    }

    /// A cycle as a path that starts and ends at the same step, if the inputs form one.
    /// Each step's inputs by index (unknown names left out; validation reports them).
    fn input_indices(&self) -> Vec<Vec<usize>> {
        let index: HashMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        self.steps
            .iter()
            .map(|s| {
                s.inputs
                    .iter()
                    .filter_map(|i| index.get(i.as_str()).copied())
                    .collect()
            })
            .collect()
    }

    fn find_cycle(&self) -> Option<Vec<String>> {
        let mut members = crate::dag::find_cycle(&self.input_indices())?;
        members.pop();
        // Edges point from a step to what it depends on; print the cycle in execution order
        // (dependency first), starting at the step defined first, so the message is stable.
        members.reverse();
        let first = (0..members.len()).min_by_key(|&i| members[i]).unwrap_or(0);
        members.rotate_left(first);
        members.push(members[0]);
        Some(
            members
                .iter()
                .map(|&n| self.steps[n].name.clone())
                .collect(),
        )
    }

    /// Steps in an order where every step comes after its inputs (ties keep definition
    /// order). Only meaningful for a validated definition.
    pub fn topological_order(&self) -> Vec<&StepDef> {
        crate::dag::stable_topological_order(&self.input_indices())
            .unwrap_or_default()
            .into_iter()
            .map(|i| &self.steps[i])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf(yaml: &str) -> WorkflowDef {
        WorkflowDef::from_yaml(yaml).expect("test yaml parses")
    }

    const CHAIN: &str = r#"
name: chain
steps:
  - name: produce
    kind: exec
    params: {program: "true"}
    placement: {role: data_source}
  - name: transform
    kind: exec
    params: {program: "true"}
    placement: {agent: train-1}
    inputs: [produce]
  - name: check
    kind: noop
    placement: {role: data_source}
    inputs: [transform]
"#;

    #[test]
    fn a_chain_validates_and_orders() {
        let w = wf(CHAIN);
        w.validate().expect("valid");
        let names: Vec<_> = w
            .topological_order()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["produce", "transform", "check"]);
        assert_eq!(w.steps[0].constraint(), Constraint::None);
        assert_eq!(w.steps[1].constraint(), Constraint::InputsReady);
    }

    #[test]
    fn a_cycle_is_named() {
        let w = wf(&CHAIN.replace(
            "    placement: {role: data_source}\n  - name: transform",
            "    placement: {role: data_source}\n    inputs: [check]\n  - name: transform",
        ));
        let err = w.validate().expect_err("cycle");
        assert_eq!(
            err.to_string(),
            "invalid workflow: cycle between steps: produce -> transform -> check -> produce"
        );
    }

    #[test]
    fn unknown_kind_unknown_input_and_duplicates_name_the_step() {
        let w = wf(r#"
name: bad
steps:
  - {name: a, kind: teleport, placement: {role: training}}
  - {name: b, kind: noop, placement: {role: training}, inputs: [zzz]}
  - {name: b, kind: noop, placement: {role: training}}
"#);
        let msg = w.validate().expect_err("invalid").to_string();
        assert!(
            msg.contains("step `a`: unknown step kind `teleport`"),
            "{msg}"
        );
        assert!(msg.contains("step `b`: input `zzz` is not a step"), "{msg}");
        assert!(msg.contains("step `b` is defined more than once"), "{msg}");
    }

    #[test]
    fn empty_workflows_and_self_inputs_are_refused() {
        let err = wf("name: empty\nsteps: []\n")
            .validate()
            .expect_err("empty");
        assert_eq!(err.problems, vec![ValidationError::NoSteps("empty".into())]);
        let err = wf("name: s\nsteps:\n  - {name: a, kind: noop, placement: {role: training}, inputs: [a]}\n")
            .validate()
            .expect_err("self");
        assert_eq!(err.problems, vec![ValidationError::SelfInput("a".into())]);
    }

    /// A time limit near `u64::MAX` passed validation, and the engine's `now + timeout` for the
    /// attempt's deadline panicked (the whole engine with it). The fuzz targets check that
    /// every accepted limit fits a deadline.
    #[test]
    fn time_limits_past_a_year_are_refused() {
        let step = |t: u64| {
            format!(
                "name: t\nsteps:\n  - {{name: a, kind: noop, placement: {{role: training}}, timeout_secs: {t}}}\n"
            )
        };
        assert!(wf(&step(MAX_TIMEOUT_SECS)).validate().is_ok());
        for t in [MAX_TIMEOUT_SECS + 1, i64::MAX as u64, u64::MAX] {
            let err = wf(&step(t)).validate().expect_err("too long");
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid workflow: step `a`: `timeout_secs` must be at most {MAX_TIMEOUT_SECS} (a year), not {t}"
                )
            );
        }
    }

    #[test]
    fn unknown_fields_in_a_definition_are_errors() {
        let err = WorkflowDef::from_yaml("name: x\nstepz: []\n").expect_err("typo");
        assert!(err.to_string().contains("stepz"), "{err}");
    }
}
