//! Planning on the hosts the engine knows: the built-in CTR pipeline and seed 003's graphs
//! are planned by the API's task from a snapshot of the agents (published by the engine when
//! they change), not inside a turn of the engine; only the resulting task goes through it.

use super::*;

/// What shapes plans, fixed at start.
#[derive(Debug)]
pub(super) struct PlanSettings {
    pub(super) pipeline: PipelineSettings,
    pub(super) coordinator_name: String,
}

/// A plan of the built-in pipeline, ready to be stored and started.
pub struct CtrPlan {
    pub def: WorkflowDef,
    /// The request's fields as the task's parameters.
    pub params: BTreeMap<String, String>,
    /// Which hosts it runs on, for the task's log.
    pub hosts: String,
}

impl EngineHandle {
    /// Plans a graph workflow on the agents known now.
    pub fn plan_graph(
        &self,
        graph: &ferry_core::graph::GraphDef,
    ) -> Result<WorkflowDef, EngineError> {
        ferry_core::graph::plan(graph, &self.hosts(), &self.planning.coordinator_name).map_err(
            |e| match e {
                ferry_core::graph::GraphPlanError::Invalid(e) => {
                    EngineError::InvalidRequest(e.to_string())
                }
                other => EngineError::FailedPrecondition(other.to_string()),
            },
        )
    }

    /// Plans seed 000's pipeline for `request` on the agents connected now.
    pub fn plan_ctr(&self, request: &CtrTaskRequest) -> Result<CtrPlan, EngineError> {
        request.validate().map_err(EngineError::from)?;
        let hosts = pipeline::select_hosts(request, &self.hosts())
            .map_err(|e| EngineError::FailedPrecondition(e.to_string()))?;
        let today = Utc::now().format("%Y-%m-%d").to_string();
        let def = pipeline::plan(request, &hosts, &self.planning.pipeline, &today)
            .map_err(|e| EngineError::FailedPrecondition(e.to_string()))?;
        let mut params = BTreeMap::new();
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(request) {
            for (k, v) in fields {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                params.insert(k, text);
            }
        }
        Ok(CtrPlan {
            def,
            params,
            hosts: hosts.to_string(),
        })
    }
}
