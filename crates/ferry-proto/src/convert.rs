//! Wire ↔ domain conversions.

use ferry_core::retry::RetrySpec;
use ferry_core::workflow::{Placement, StepDef, WorkflowDef};
use ferry_core::{ErrorClass, JobState, Role};

use crate::v1;

#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    #[error("step `{step}`: params_json is not valid JSON: {source}")]
    BadParams {
        step: String,
        source: serde_json::Error,
    },
    #[error("step `{step}`: placement is missing (set `role` or `agent`)")]
    MissingPlacement { step: String },
    #[error("step `{step}`: {source}")]
    BadRole {
        step: String,
        source: ferry_core::state::UnknownValue,
    },
    #[error("request has no workflow definition")]
    MissingDefinition,
}

impl TryFrom<v1::WorkflowDefinition> for WorkflowDef {
    type Error = ConversionError;

    fn try_from(d: v1::WorkflowDefinition) -> Result<Self, Self::Error> {
        let steps = d
            .steps
            .into_iter()
            .map(StepDef::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WorkflowDef {
            name: d.name,
            description: d.description,
            max_active_tasks: d.max_active_tasks,
            priority: d.priority,
            steps,
        })
    }
}

impl TryFrom<v1::StepDefinition> for StepDef {
    type Error = ConversionError;

    fn try_from(s: v1::StepDefinition) -> Result<Self, Self::Error> {
        let params = if s.params_json.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&s.params_json).map_err(|source| ConversionError::BadParams {
                step: s.name.clone(),
                source,
            })?
        };
        let placement = match s.placement {
            Some(v1::step_definition::Placement::Role(r)) => Placement::Role(
                r.parse::<Role>()
                    .map_err(|source| ConversionError::BadRole {
                        step: s.name.clone(),
                        source,
                    })?,
            ),
            Some(v1::step_definition::Placement::Agent(a)) => Placement::Agent(a),
            None => return Err(ConversionError::MissingPlacement { step: s.name }),
        };
        let retry = (s.max_retries.is_some() || s.backoff_ms.is_some()).then_some(RetrySpec {
            max_retries: s.max_retries,
            backoff_ms: s.backoff_ms,
        });
        Ok(StepDef {
            name: s.name,
            kind: s.kind,
            params,
            placement,
            inputs: s.inputs,
            retry,
            timeout_secs: s.timeout_secs,
            resources: (s.slots.is_some() || s.gpus.is_some() || s.pool.is_some()).then_some(
                ferry_core::capacity::Resources {
                    slots: s.slots,
                    gpus: s.gpus,
                    pool: s.pool,
                },
            ),
        })
    }
}

impl From<&WorkflowDef> for v1::WorkflowDefinition {
    fn from(d: &WorkflowDef) -> Self {
        v1::WorkflowDefinition {
            name: d.name.clone(),
            description: d.description.clone(),
            steps: d.steps.iter().map(v1::StepDefinition::from).collect(),
            max_active_tasks: d.max_active_tasks,
            priority: d.priority,
        }
    }
}

impl From<&StepDef> for v1::StepDefinition {
    fn from(s: &StepDef) -> Self {
        v1::StepDefinition {
            name: s.name.clone(),
            kind: s.kind.clone(),
            params_json: if s.params.is_null() {
                String::new()
            } else {
                s.params.to_string()
            },
            placement: Some(match &s.placement {
                Placement::Role(r) => v1::step_definition::Placement::Role(r.as_str().to_owned()),
                Placement::Agent(a) => v1::step_definition::Placement::Agent(a.clone()),
            }),
            inputs: s.inputs.clone(),
            max_retries: s.retry.and_then(|r| r.max_retries),
            backoff_ms: s.retry.and_then(|r| r.backoff_ms),
            timeout_secs: s.timeout_secs,
            slots: s.resources.as_ref().and_then(|r| r.slots),
            gpus: s.resources.as_ref().and_then(|r| r.gpus),
            pool: s.resources.as_ref().and_then(|r| r.pool.clone()),
        }
    }
}

pub fn job_state_to_wire(s: JobState) -> v1::JobState {
    match s {
        JobState::Idle => v1::JobState::Idle,
        JobState::Ready => v1::JobState::Ready,
        JobState::Running => v1::JobState::Running,
        JobState::Completed => v1::JobState::Completed,
        JobState::Failed => v1::JobState::Failed,
        JobState::Cancelled => v1::JobState::Cancelled,
    }
}

/// `None` for UNSPECIFIED or a value this build does not know.
pub fn job_state_from_wire(raw: i32) -> Option<JobState> {
    Some(match v1::JobState::try_from(raw).ok()? {
        v1::JobState::Unspecified => return None,
        v1::JobState::Idle => JobState::Idle,
        v1::JobState::Ready => JobState::Ready,
        v1::JobState::Running => JobState::Running,
        v1::JobState::Completed => JobState::Completed,
        v1::JobState::Failed => JobState::Failed,
        v1::JobState::Cancelled => JobState::Cancelled,
    })
}

pub fn error_class_to_wire(c: ErrorClass) -> v1::ErrorClass {
    match c {
        ErrorClass::Transient => v1::ErrorClass::Transient,
        ErrorClass::Permanent => v1::ErrorClass::Permanent,
        ErrorClass::Approval => v1::ErrorClass::Approval,
    }
}

/// Unknown or unspecified classes count as transient: retrying is the safe default.
pub fn error_class_from_wire(raw: i32) -> ErrorClass {
    match v1::ErrorClass::try_from(raw) {
        Ok(v1::ErrorClass::Permanent) => ErrorClass::Permanent,
        Ok(v1::ErrorClass::Approval) => ErrorClass::Approval,
        _ => ErrorClass::Transient,
    }
}

impl TryFrom<v1::CtrTaskRequest> for ferry_core::pipeline::CtrTaskRequest {
    type Error = ferry_core::pipeline::RequestError;

    fn try_from(r: v1::CtrTaskRequest) -> Result<Self, Self::Error> {
        let model_params = if r.model_params_json.trim().is_empty() {
            Default::default()
        } else {
            serde_json::from_str(&r.model_params_json).map_err(|e| {
                ferry_core::pipeline::RequestError {
                    field: "model_params",
                    message: format!("not a JSON object of settings: {e}"),
                }
            })?
        };
        Ok(ferry_core::pipeline::CtrTaskRequest {
            name: r.name,
            experiment_id: r.experiment_id,
            sample_sql: r.sample_sql,
            infer_sql: r.infer_sql,
            hdfs_path: r.hdfs_path,
            hive_table: r.hive_table,
            partition: r.partition,
            training_server: r.training_server,
            inference_server: r.inference_server,
            source_server: r.source_server,
            gpu_count: r.gpu_count,
            batch_size: r.batch_size,
            epochs: r.epochs,
            model: r.model,
            model_params,
            fuxictr_config: r.fuxictr_config,
        })
    }
}

impl From<&ferry_core::pipeline::CtrTaskRequest> for v1::CtrTaskRequest {
    fn from(r: &ferry_core::pipeline::CtrTaskRequest) -> Self {
        v1::CtrTaskRequest {
            name: r.name.clone(),
            experiment_id: r.experiment_id.clone(),
            sample_sql: r.sample_sql.clone(),
            infer_sql: r.infer_sql.clone(),
            hdfs_path: r.hdfs_path.clone(),
            hive_table: r.hive_table.clone(),
            partition: r.partition.clone(),
            training_server: r.training_server.clone(),
            inference_server: r.inference_server.clone(),
            source_server: r.source_server.clone(),
            gpu_count: r.gpu_count,
            batch_size: r.batch_size,
            epochs: r.epochs,
            model: r.model.clone(),
            model_params_json: if r.model_params.is_empty() {
                String::new()
            } else {
                serde_json::to_string(&r.model_params).unwrap_or_default()
            },
            fuxictr_config: r.fuxictr_config.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_round_trip() {
        let def = WorkflowDef::from_yaml(
            "name: w\nsteps:\n  - {name: a, kind: exec, params: {program: ls}, placement: {agent: x}, retry: {max_retries: 1}}\n  - {name: b, kind: noop, placement: {role: inference}, inputs: [a]}\n",
        )
        .expect("yaml");
        let wire = v1::WorkflowDefinition::from(&def);
        let back = WorkflowDef::try_from(wire).expect("converts");
        assert_eq!(back, def);
    }

    #[test]
    fn every_job_state_round_trips() {
        for s in JobState::ALL {
            assert_eq!(job_state_from_wire(job_state_to_wire(*s) as i32), Some(*s));
        }
        assert_eq!(job_state_from_wire(0), None);
    }
}
