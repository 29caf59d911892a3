//! The built-in `ctr_pipeline` workflow (seed 000 §4): a task request of seed 000 §8.2
//! becomes a concrete DAG over the three hosts that will run it.
//!
//! The coordinator knows each connected agent's roots (FuxiCTR `data_root` and `model_root`,
//! `staging_dir`) and which servers it holds SSH keys for, from its registration. Planning
//! turns those into absolute paths on each host and decides, for every hop, which side runs
//! the transfer: the sender pushes when it has a key for the receiver, otherwise the receiver
//! pulls. No host ever reads another's disk.
//!
//! `${task_id}` placeholders stay in the plan; the engine renders them once the task exists.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ident::{PartitionSpec, TableRef};
use crate::kinds;
use crate::state::Role;
use crate::workflow::{Placement, StepDef, WorkflowDef};

/// The name of the built-in workflow, as stored and as shown by `ferry workflow list`.
pub const CTR_PIPELINE: &str = "ctr_pipeline";

/// Seed 000 §8.2's `TaskCreateRequest`, plus the model settings a FuxiCTR user would pass
/// in a model config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtrTaskRequest {
    pub name: String,
    /// FuxiCTR's experiment id; it becomes the model id. A model name prefix (`MMoE_test_v1`)
    /// picks the model when `model` is not given.
    pub experiment_id: String,
    pub sample_sql: String,
    pub infer_sql: String,
    /// Where the data source keeps the table's files on HDFS; recorded with the task (the
    /// embedded engine and `LOAD DATA LOCAL` load from the host's staging directory).
    #[serde(default)]
    pub hdfs_path: String,
    pub hive_table: String,
    /// Partition to (over)write, `dt=2026-01-22`; the day the task is created when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_server: Option<String>,
    /// The data-source agent; the only connected `data_source` agent when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// One of FuxiCTR's model names Ferry builds: LR, FM, DNN, WideDeep, DeepFM, PNN,
    /// DCN(v2), xDeepFM, AutoInt, FiBiNET, FinalMLP, DIN, MMoE, ShareBottom or PLE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Further model settings (embedding_dim, hidden_units, learning_rate, seed, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_params: BTreeMap<String, Value>,
    /// A FuxiCTR configuration folder on the training host (`model_config.yaml` and
    /// `dataset_config.yaml`, or FuxiCTR's folders of them): the experiment `experiment_id`
    /// there brings the model, its settings, the features and the labels; the data is the
    /// export of `sample_sql`. Then `model`, `model_params`, `batch_size` and `epochs` come
    /// from the configuration and must be left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuxictr_config: Option<String>,
}

/// A request field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct RequestError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> RequestError {
    RequestError {
        field,
        message: message.into(),
    }
}

/// The models the training agent builds (FuxiCTR's names; `DCN` is DCN v2).
const MODELS: &[&str] = &[
    "LR",
    "FM",
    "DNN",
    "WideDeep",
    "DeepFM",
    "PNN",
    "DCN",
    "DCNv2",
    "xDeepFM",
    "AutoInt",
    "FiBiNET",
    "FinalMLP",
    "DIN",
    "MMoE",
    "ShareBottom",
    "PLE",
];

/// The multi-task models: one tower per label (`click` and `conversion`).
const MULTI_TASK: &[&str] = &["MMoE", "ShareBottom", "PLE"];

/// Settings FuxiCTR users pass that the request fields already cover.
const RESERVED_MODEL_PARAMS: &[&str] = &["model", "model_id", "batch_size", "epochs"];

fn is_name(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with('.')
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

impl CtrTaskRequest {
    /// Checks every field; the first problem found names its field.
    pub fn validate(&self) -> Result<(), RequestError> {
        if !is_name(&self.name) {
            return Err(bad(
                "name",
                format!(
                    "must be letters, digits, '_', '-' or '.' (it names the dataset directory), not `{}`",
                    self.name
                ),
            ));
        }
        if !is_name(&self.experiment_id) {
            return Err(bad(
                "experiment_id",
                format!(
                    "must be letters, digits, '_', '-' or '.' (it names the model files), not `{}`",
                    self.experiment_id
                ),
            ));
        }
        for (field, sql) in [
            ("sample_sql", &self.sample_sql),
            ("infer_sql", &self.infer_sql),
        ] {
            if sql.trim().is_empty() {
                return Err(bad(field, "must not be empty"));
            }
            // The plan passes the text through unchanged (`literal`): this is the SQL the
            // agent will run.
            crate::sql_guard::check_read_only(sql).map_err(|e| bad(field, e.to_string()))?;
            // And as the plan writes it (`$` escaped as `$$`), which the export step's own
            // check reads too: refused here, naming the field, not at task creation.
            crate::sql_guard::check_read_only(&literal(sql))
                .map_err(|e| bad(field, format!("{e} (as planned, with `$` written `$$`)")))?;
        }
        if !self.hdfs_path.is_empty() && !self.hdfs_path.starts_with('/') {
            return Err(bad("hdfs_path", "must be an absolute path"));
        }
        TableRef::parse(&self.hive_table).map_err(|e| bad("hive_table", e.to_string()))?;
        if let Some(p) = &self.partition {
            PartitionSpec::parse(p).map_err(|e| bad("partition", e.to_string()))?;
        }
        for (field, v) in [
            ("training_server", &self.training_server),
            ("inference_server", &self.inference_server),
            ("source_server", &self.source_server),
        ] {
            if let Some(v) = v
                && v.trim().is_empty()
            {
                return Err(bad(field, "must name an agent when given"));
            }
        }
        if self.batch_size == Some(0) {
            return Err(bad("batch_size", "must be at least 1"));
        }
        if self.epochs == Some(0) {
            return Err(bad("epochs", "must be at least 1"));
        }
        if let Some(m) = &self.model
            && !MODELS.iter().any(|k| k.eq_ignore_ascii_case(m))
        {
            return Err(bad(
                "model",
                format!("`{m}` is not one of {}", MODELS.join(", ")),
            ));
        }
        if let Some(dir) = &self.fuxictr_config {
            if dir.trim().is_empty() || dir.trim() != dir || dir.contains('\0') || dir.len() > 4096
            {
                return Err(bad(
                    "fuxictr_config",
                    "must name a folder on the training host",
                ));
            }
            for (field, given) in [
                ("model", self.model.is_some()),
                ("model_params", !self.model_params.is_empty()),
                ("batch_size", self.batch_size.is_some()),
                ("epochs", self.epochs.is_some()),
            ] {
                if given {
                    return Err(bad(
                        field,
                        format!(
                            "comes from the FuxiCTR configuration's experiment `{}` with `fuxictr_config`: leave it out",
                            self.experiment_id
                        ),
                    ));
                }
            }
        }
        if let Some(k) = self
            .model_params
            .keys()
            .find(|k| RESERVED_MODEL_PARAMS.contains(&k.as_str()))
        {
            return Err(bad(
                "model_params",
                format!("`{k}` is set by the request's own field, not in model_params"),
            ));
        }
        Ok(())
    }

    /// The model: `model` when given, else a model name the experiment id starts with
    /// (`MMoE_test_v1`), else DeepFM.
    pub fn model_name(&self) -> &'static str {
        let pick = |s: &str| MODELS.iter().find(|k| k.eq_ignore_ascii_case(s)).copied();
        if let Some(m) = self.model.as_deref().and_then(pick) {
            return m;
        }
        let prefix = self
            .experiment_id
            .split(['_', '-', '.'])
            .next()
            .unwrap_or_default();
        pick(prefix).unwrap_or("DeepFM")
    }
}

/// What the coordinator knows about a connected agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    pub name: String,
    pub role: Option<Role>,
    /// Absolute `data_root`, `model_root`, `staging_dir` on that host.
    pub paths: BTreeMap<String, String>,
    /// Servers this agent holds SSH keys for (its `servers` entries).
    pub ssh_to: Vec<String>,
    pub connected: bool,
}

impl HostInfo {
    fn path(&self, key: &'static str) -> Result<String, PlanError> {
        self.paths
            .get(key)
            .filter(|p| p.starts_with('/'))
            .map(|p| p.trim_end_matches('/').to_owned())
            .ok_or_else(|| PlanError::MissingPath {
                agent: self.name.clone(),
                key,
            })
    }
}

/// Why a valid request cannot be planned on the agents that are connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("`{field}`: no connected agent named `{name}`{}", known_list(.known))]
    UnknownAgent {
        field: &'static str,
        name: String,
        known: Vec<String>,
    },
    #[error("`{field}`: agent `{name}` has role {actual}, not {wanted}")]
    WrongRole {
        field: &'static str,
        name: String,
        actual: String,
        wanted: Role,
    },
    #[error("no connected {role} agent; start one or name one with `{field}`")]
    NoAgent { role: Role, field: &'static str },
    #[error(
        "several connected {role} agents ({}); choose one with `{field}`",
        .names.join(", ")
    )]
    Ambiguous {
        role: Role,
        field: &'static str,
        names: Vec<String>,
    },
    #[error("agent `{agent}` did not report an absolute `{key}` at registration")]
    MissingPath { agent: String, key: &'static str },
    #[error(
        "no SSH key between `{from}` and `{to}` for {what}: give `{from}` a `servers.{to}` entry (push) or `{to}` a `servers.{from}` entry (pull)"
    )]
    NoSshRoute {
        from: String,
        to: String,
        what: &'static str,
    },
}

pub(crate) fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        " (none connected)".into()
    } else {
        format!(" (connected: {})", known.join(", "))
    }
}

/// Settings of the coordinator's config that shape every plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineSettings {
    /// `transfer.confirm_above`; 0 never asks.
    pub confirm_transfer_above: u64,
    /// `workflow.cleanup_staging`.
    pub cleanup_staging: bool,
    /// `workflow.keep_checkpoints`.
    pub keep_checkpoints: u32,
}

/// The three hosts a task runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineHosts {
    pub source: HostInfo,
    pub training: HostInfo,
    pub inference: HostInfo,
}

/// Picks the agents: those the request names (checking their roles), else the only
/// connected agent of each role.
pub fn select_hosts(req: &CtrTaskRequest, agents: &[HostInfo]) -> Result<PipelineHosts, PlanError> {
    let pick = |field: &'static str, named: &Option<String>, role: Role| {
        let connected: Vec<&HostInfo> = agents.iter().filter(|a| a.connected).collect();
        if let Some(name) = named {
            let a = connected.iter().find(|a| &a.name == name).ok_or_else(|| {
                PlanError::UnknownAgent {
                    field,
                    name: name.clone(),
                    known: connected.iter().map(|a| a.name.clone()).collect(),
                }
            })?;
            if a.role != Some(role) {
                return Err(PlanError::WrongRole {
                    field,
                    name: name.clone(),
                    actual: a.role.map(|r| r.to_string()).unwrap_or_default(),
                    wanted: role,
                });
            }
            return Ok((*a).clone());
        }
        let of_role: Vec<&&HostInfo> = connected.iter().filter(|a| a.role == Some(role)).collect();
        match of_role.as_slice() {
            [] => Err(PlanError::NoAgent { role, field }),
            [one] => Ok((**one).clone()),
            many => Err(PlanError::Ambiguous {
                role,
                field,
                names: many.iter().map(|a| a.name.clone()).collect(),
            }),
        }
    };
    Ok(PipelineHosts {
        source: pick("source_server", &req.source_server, Role::DataSource)?,
        training: pick("training_server", &req.training_server, Role::Training)?,
        inference: pick("inference_server", &req.inference_server, Role::Inference)?,
    })
}

/// Which stage of seed 000 §4 a step of the built-in pipeline belongs to; the log and the
/// `stage_duration_seconds` metric group by it.
pub fn stage_of(step: &str) -> &str {
    match step {
        "export_sample" | "export_infer" | "ship_sample" | "ship_infer_data" => "data_fetch",
        "check_config" | "train" | "ship_model" => "train",
        "infer" => "infer",
        "ship_results" | "load" => "transport",
        "monitor" | "cleanup_staging" => "monitor",
        other => other,
    }
}

/// How a log line names its step: `data_fetch/ship_sample` for the pipeline's steps (seed 000
/// §14 names stages), the step alone otherwise, `task` for the task's own lines.
pub fn log_label(step: &str) -> String {
    match step {
        "" => "task".to_owned(),
        s if stage_of(s) != s => format!("{}/{s}", stage_of(s)),
        s => s.to_owned(),
    }
}

/// The concrete DAG for one request on `hosts`. `today` (`YYYY-MM-DD`) is the partition
/// day when the request names none.
pub fn plan(
    req: &CtrTaskRequest,
    hosts: &PipelineHosts,
    settings: &PipelineSettings,
    today: &str,
) -> Result<WorkflowDef, PlanError> {
    req.validate()?;
    let (src, trn, inf) = (&hosts.source, &hosts.training, &hosts.inference);
    let dataset_id = req.name.as_str();
    let model_id = req.experiment_id.as_str();
    // The task id keeps two tasks of the same name apart on the data source.
    let staging = format!("{}/{}_task${{task_id}}", src.path("staging_dir")?, req.name);
    let train_data = format!("{}/{dataset_id}", trn.path("data_root")?);
    let train_models = format!("{}/{dataset_id}", trn.path("model_root")?);
    let infer_data = format!("{}/{dataset_id}", inf.path("data_root")?);
    let infer_models = format!("{}/{dataset_id}", inf.path("model_root")?);
    let results = format!("{infer_data}/{model_id}_inference_result");
    let partition = req
        .partition
        .clone()
        .unwrap_or_else(|| format!("dt={today}"));

    let hop = |name: &str,
               what: &'static str,
               from: (&HostInfo, String),
               to: (&HostInfo, String),
               inputs: &[&str]|
     -> Result<StepDef, PlanError> {
        let (runner, direction, server, local, remote) = if from.0.ssh_to.contains(&to.0.name) {
            (from.0, "push", &to.0.name, from.1, to.1)
        } else if to.0.ssh_to.contains(&from.0.name) {
            (to.0, "pull", &from.0.name, to.1, from.1)
        } else {
            return Err(PlanError::NoSshRoute {
                from: from.0.name.clone(),
                to: to.0.name.clone(),
                what,
            });
        };
        let mut params = json!({
            "direction": direction, "server": server,
            "local_path": local, "remote_path": remote,
        });
        if settings.confirm_transfer_above > 0 {
            params["confirm_above"] = json!(settings.confirm_transfer_above);
        }
        Ok(step(name, kinds::TRANSFER, runner, params, inputs))
    };

    let sample_dir = format!("{train_data}/sample_data");
    let (mut train_params, check) = match &req.fuxictr_config {
        Some(dir) => {
            let fuxictr = json!({"config_dir": literal(dir), "expid": model_id});
            let train =
                json!({"dataset_id": dataset_id, "sample_dir": sample_dir, "fuxictr": fuxictr});
            // The same, checked on the training host before anything is exported; no GPU is
            // held.
            let mut check = train.clone();
            check["check_only"] = json!(true);
            check["gpu_count"] = json!(0);
            (train, Some(check))
        }
        None => (train_params(req, model_id, sample_dir), None),
    };
    if let Some(g) = req.gpu_count {
        train_params["gpu_count"] = json!(g);
    }
    let exports_after: &[&str] = if check.is_some() {
        &["check_config"]
    } else {
        &[]
    };

    let mut steps = vec![
        step(
            "export_sample",
            kinds::SQL_EXPORT,
            src,
            json!({"sql": literal(&req.sample_sql), "output_dir": format!("{staging}/sample_data")}),
            exports_after,
        ),
        step(
            "export_infer",
            kinds::SQL_EXPORT,
            src,
            json!({"sql": literal(&req.infer_sql), "output_dir": format!("{staging}/infer_data")}),
            exports_after,
        ),
        hop(
            "ship_sample",
            "the training data",
            (src, format!("{staging}/sample_data")),
            (trn, format!("{train_data}/sample_data")),
            &["export_sample"],
        )?,
        step("train", kinds::TRAIN, trn, train_params, &["ship_sample"]),
        hop(
            "ship_model",
            "the model",
            (trn, train_models.clone()),
            (inf, infer_models),
            &["train"],
        )?,
        hop(
            "ship_infer_data",
            "the inference data",
            (src, format!("{staging}/infer_data")),
            (inf, format!("{infer_data}/infer_data")),
            &["export_infer"],
        )?,
        step(
            "infer",
            kinds::INFER,
            inf,
            json!({
                "dataset_id": dataset_id, "model_id": model_id, "expid": model_id,
                "input_dir": format!("{infer_data}/infer_data"),
            }),
            &["ship_model", "ship_infer_data"],
        ),
        hop(
            "ship_results",
            "the inference results",
            (inf, results),
            (src, format!("{staging}/results")),
            &["infer"],
        )?,
        step(
            "load",
            kinds::HIVE_LOAD,
            src,
            json!({
                "table": req.hive_table, "partition": partition,
                "parts_dir": format!("{staging}/results"),
            }),
            &["ship_results"],
        ),
    ];
    if let Some(check) = check {
        steps.insert(0, step("check_config", kinds::TRAIN, trn, check, &[]));
    }
    let model = match &req.fuxictr_config {
        Some(_) => format!("FuxiCTR experiment {model_id}"),
        None => req.model_name().to_owned(),
    };
    let mut facts = BTreeMap::from([
        ("dataset_id".to_owned(), dataset_id.to_owned()),
        ("model_id".to_owned(), model_id.to_owned()),
        ("model".to_owned(), model),
        ("hive_table".to_owned(), req.hive_table.clone()),
        ("partition".to_owned(), partition),
        ("training_server".to_owned(), trn.name.clone()),
        ("inference_server".to_owned(), inf.name.clone()),
        ("source_server".to_owned(), src.name.clone()),
    ]);
    if !req.hdfs_path.is_empty() {
        facts.insert("hdfs_path".into(), literal(&req.hdfs_path));
    }
    if let Some(dir) = &req.fuxictr_config {
        facts.insert("fuxictr_config".into(), literal(dir));
    }
    let mut monitor = json!({
        "report_path": format!("{train_models}/{model_id}_report.json"),
        "facts": facts,
    });
    if settings.keep_checkpoints > 0 {
        monitor["model_root"] = json!(trn.path("model_root")?);
        monitor["keep_checkpoints"] = json!(settings.keep_checkpoints);
    }
    steps.push(step("monitor", kinds::MONITOR, trn, monitor, &["load"]));
    if settings.cleanup_staging {
        steps.push(step(
            "cleanup_staging",
            kinds::CLEANUP,
            src,
            json!({"paths": [staging]}),
            &["monitor"],
        ));
    }
    Ok(WorkflowDef {
        name: CTR_PIPELINE.into(),
        description:
            "Built-in CTR pipeline (seed 000 §4): data_fetch → train → infer → transport → monitor"
                .into(),
        max_active_tasks: None,
        priority: None,
        steps,
    })
}

/// The `train` step's parameters from the request's own model settings.
fn train_params(req: &CtrTaskRequest, model_id: &str, sample_dir: String) -> Value {
    let mut model = serde_json::Map::new();
    for (k, v) in &req.model_params {
        model.insert(k.clone(), literal_value(v));
    }
    model.insert("model".into(), json!(req.model_name()));
    if req.model_name() == "DIN" {
        // The campaign's ad field and the ads clicked before it, unless the request names others.
        model
            .entry("din_target_field")
            .or_insert_with(|| json!("C10"));
        model
            .entry("din_sequence_field")
            .or_insert_with(|| json!("click_history"));
    }
    model.insert("model_id".into(), json!(model_id));
    if let Some(b) = req.batch_size {
        model.insert("batch_size".into(), json!(b));
    }
    if let Some(e) = req.epochs {
        model.insert("epochs".into(), json!(e));
    }
    let mut train_params = json!({
        "dataset_id": req.name,
        "sample_dir": sample_dir,
        "model": Value::Object(model),
    });
    if MULTI_TASK.contains(&req.model_name()) {
        train_params["labels"] = json!(["click", "conversion"]);
    }
    train_params
}

/// The user's text as a template that renders back to itself (`$` → `$$`), so a `${` in a
/// query is never taken for a placeholder.
pub(crate) fn literal(s: &str) -> String {
    s.replace('$', "$$")
}

pub(crate) fn literal_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(literal(s)),
        Value::Array(a) => Value::Array(a.iter().map(literal_value).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), literal_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn step(name: &str, kind: &str, host: &HostInfo, params: Value, inputs: &[&str]) -> StepDef {
    StepDef {
        name: name.into(),
        kind: kind.into(),
        params,
        placement: Placement::Agent(host.name.clone()),
        inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
        retry: None,
        timeout_secs: None,
        resources: None,
    }
}

impl fmt::Display for PipelineHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data source {}, training {}, inference {}",
            self.source.name, self.training.name, self.inference.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `ctr_request` fuzz target: SQL with a `$` passed the request's check, but
    /// the plan writes it with `$$` (a literal `$` in a template), which the export step's
    /// check reads as an unterminated dollar quote; the task was refused at creation with an
    /// error about a step instead of the field.
    #[test]
    fn sql_that_the_plan_cannot_carry_is_refused_by_field() {
        let req = CtrTaskRequest {
            name: "campaign".into(),
            experiment_id: "DeepFM_test".into(),
            sample_sql: "SELECT * FROM ca$paign_sample".into(),
            infer_sql: "SELECT * FROM campaign_infer".into(),
            hive_table: "default.scores".into(),
            ..Default::default()
        };
        let err = req.validate().expect_err("refused");
        assert_eq!(err.field, "sample_sql", "{err}");
        assert!(err.message.contains("as planned"), "{err}");
    }

    fn request() -> CtrTaskRequest {
        CtrTaskRequest {
            name: "campaign_2026_01_22".into(),
            experiment_id: "MMoE_test_v1".into(),
            sample_sql: "SELECT * FROM campaign_sample WHERE dt = '2026-01-21'".into(),
            infer_sql: "SELECT * FROM campaign_infer WHERE dt = '2026-01-22'".into(),
            hdfs_path: "/hdfs/data/campaign".into(),
            hive_table: "prod.campaign_scores".into(),
            ..Default::default()
        }
    }

    fn host(name: &str, role: Role, ssh_to: &[&str]) -> HostInfo {
        HostInfo {
            name: name.into(),
            role: Some(role),
            paths: BTreeMap::from([
                ("data_root".into(), format!("/{name}/data/")),
                ("model_root".into(), format!("/{name}/models")),
                ("staging_dir".into(), format!("/{name}/staging")),
            ]),
            ssh_to: ssh_to.iter().map(|s| (*s).to_owned()).collect(),
            connected: true,
        }
    }

    fn agents() -> Vec<HostInfo> {
        vec![
            host(
                "server_21",
                Role::DataSource,
                &["training_server", "inference_server"],
            ),
            host("training_server", Role::Training, &["inference_server"]),
            host("inference_server", Role::Inference, &[]),
        ]
    }

    #[test]
    fn every_field_error_names_the_field() {
        type Breakage = fn(&mut CtrTaskRequest);
        let cases: Vec<(Breakage, &str)> = vec![
            (|r| r.name = "a b".into(), "name"),
            (|r| r.experiment_id = String::new(), "experiment_id"),
            (|r| r.sample_sql = " ".into(), "sample_sql"),
            (|r| r.infer_sql = "DROP TABLE x".into(), "infer_sql"),
            (
                |r| r.sample_sql = "SELECT 1; DROP TABLE t".into(),
                "sample_sql",
            ),
            (
                |r| r.infer_sql = "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a".into(),
                "infer_sql",
            ),
            (|r| r.hdfs_path = "relative".into(), "hdfs_path"),
            (|r| r.hive_table = "a; DROP TABLE b".into(), "hive_table"),
            (|r| r.partition = Some("dt".into()), "partition"),
            (|r| r.batch_size = Some(0), "batch_size"),
            (|r| r.epochs = Some(0), "epochs"),
            (|r| r.model = Some("GPT".into()), "model"),
            (
                |r| r.training_server = Some(String::new()),
                "training_server",
            ),
        ];
        for (break_it, field) in cases {
            let mut r = request();
            break_it(&mut r);
            let e = r.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with(&format!("`{field}`: ")), "{e}");
        }
        assert!(request().validate().is_ok());
    }

    #[test]
    fn the_queries_must_be_one_read_each() {
        let mut r = request();
        r.sample_sql = "SELECT 1 -- ;\n; DROP TABLE t".into();
        assert_eq!(
            r.validate().map_err(|e| e.to_string()),
            Err("`sample_sql`: an export runs exactly one statement; found a second one: `DROP TABLE t`".into())
        );
        r.sample_sql = "SELECT ';' AS x FROM t;".into();
        r.infer_sql = "COPY (SELECT 1) TO '/tmp/x'".into();
        assert_eq!(
            r.validate().map_err(|e| e.to_string()),
            Err(
                "`infer_sql`: `COPY` is not a read: an export runs one SELECT or WITH query".into()
            )
        );
    }

    #[test]
    fn the_model_comes_from_the_request_or_the_experiment_prefix() {
        let mut r = request();
        assert_eq!(r.model_name(), "MMoE");
        r.experiment_id = "baseline".into();
        assert_eq!(r.model_name(), "DeepFM");
        r.model = Some("dcn".into());
        assert_eq!(r.model_name(), "DCN");
    }

    #[test]
    fn plan_pushes_where_keys_allow_and_pulls_otherwise() {
        let hosts = select_hosts(&request(), &agents()).expect("hosts");
        let def = plan(
            &request(),
            &hosts,
            &PipelineSettings::default(),
            "2026-01-22",
        )
        .expect("plan");
        def.validate().expect("a valid DAG");
        let s = |n: &str| def.step(n).expect(n).clone();
        // Source holds keys for both → pushes; the inference host holds none, so the data
        // source pulls the results.
        assert_eq!(s("ship_sample").params["direction"], "push");
        assert_eq!(
            s("ship_sample").params["remote_path"],
            "/training_server/data/campaign_2026_01_22/sample_data"
        );
        assert_eq!(s("ship_results").params["direction"], "pull");
        assert_eq!(
            s("ship_results").placement,
            Placement::Agent("server_21".into())
        );
        assert_eq!(s("ship_results").params["server"], "inference_server");
        assert_eq!(
            s("ship_results").params["remote_path"],
            "/inference_server/data/campaign_2026_01_22/MMoE_test_v1_inference_result"
        );
        assert_eq!(s("train").params["labels"], json!(["click", "conversion"]));
        assert_eq!(s("load").params["partition"], "dt=2026-01-22");
        assert_eq!(
            s("monitor").params["report_path"],
            "/training_server/models/campaign_2026_01_22/MMoE_test_v1_report.json"
        );
        assert!(def.step("cleanup_staging").is_none());
    }

    #[test]
    fn a_fuxictr_configuration_is_checked_on_the_training_host_before_any_export() {
        let mut r = request();
        r.experiment_id = "DeepFM_test".into();
        r.fuxictr_config = Some("/training_server/data/fuxictr/config".into());
        r.gpu_count = Some(1);
        let hosts = select_hosts(&r, &agents()).expect("hosts");
        let def = plan(&r, &hosts, &PipelineSettings::default(), "2026-01-22").expect("plan");
        def.validate().expect("a valid DAG");
        let s = |n: &str| def.step(n).expect(n).clone();
        let check = s("check_config");
        assert_eq!(check.placement, Placement::Agent("training_server".into()));
        assert_eq!(check.kind, kinds::TRAIN);
        assert!(check.inputs.is_empty());
        assert_eq!(check.params["check_only"], true);
        assert_eq!(check.params["gpu_count"], 0, "a check holds no GPU");
        kinds::validate_params(kinds::TRAIN, &check.params).expect("a valid train step");
        for export in ["export_sample", "export_infer"] {
            assert_eq!(
                s(export).inputs,
                vec!["check_config".to_owned()],
                "{export}"
            );
        }
        let train = s("train");
        kinds::validate_params(kinds::TRAIN, &train.params).expect("a valid train step");
        assert_eq!(
            train.params["fuxictr"],
            json!({"config_dir": "/training_server/data/fuxictr/config", "expid": "DeepFM_test"})
        );
        assert_eq!(
            train.params["sample_dir"],
            "/training_server/data/campaign_2026_01_22/sample_data"
        );
        assert_eq!(train.params["gpu_count"], 1);
        // The model and labels are the configuration's.
        assert!(train.params.get("model").is_none() && train.params.get("labels").is_none());
        assert_eq!(stage_of("check_config"), "train");
        assert_eq!(
            s("monitor").params["facts"]["model"],
            "FuxiCTR experiment DeepFM_test"
        );
        // Without one, the plan is as before: no check, exports start at once.
        let def = plan(
            &request(),
            &hosts,
            &PipelineSettings::default(),
            "2026-01-22",
        )
        .expect("plan");
        assert!(def.step("check_config").is_none());
        assert!(def.step("export_sample").expect("export").inputs.is_empty());
    }

    #[test]
    fn settings_the_fuxictr_configuration_brings_are_refused_beside_it() {
        type Extra = fn(&mut CtrTaskRequest);
        let cases: Vec<(Extra, &str)> = vec![
            (|r| r.model = Some("DCN".into()), "model"),
            (
                |r| {
                    r.model_params.insert("embedding_dim".into(), json!(8));
                },
                "model_params",
            ),
            (|r| r.batch_size = Some(64), "batch_size"),
            (|r| r.epochs = Some(2), "epochs"),
            (|r| r.fuxictr_config = Some(" ".into()), "fuxictr_config"),
            (
                |r| r.fuxictr_config = Some("/a\0b".into()),
                "fuxictr_config",
            ),
        ];
        for (extra, field) in cases {
            let mut r = request();
            r.fuxictr_config = Some("/cfg".into());
            extra(&mut r);
            let e = r.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        let mut r = request();
        r.fuxictr_config = Some("/cfg".into());
        r.gpu_count = Some(2);
        assert!(r.validate().is_ok());
    }

    #[test]
    fn hosts_without_keys_either_way_are_refused_by_name() {
        let mut a = agents();
        a[1].ssh_to.clear(); // training cannot reach inference, nor the reverse
        let hosts = select_hosts(&request(), &a).expect("hosts");
        let e = plan(
            &request(),
            &hosts,
            &PipelineSettings::default(),
            "2026-01-22",
        )
        .expect_err("no route");
        assert!(
            e.to_string()
                .contains("between `training_server` and `inference_server` for the model"),
            "{e}"
        );
    }

    #[test]
    fn host_selection_checks_names_roles_and_ambiguity() {
        let mut r = request();
        r.training_server = Some("gpu-9".into());
        let e = select_hosts(&r, &agents()).expect_err("unknown");
        assert!(
            e.to_string()
                .starts_with("`training_server`: no connected agent named `gpu-9`"),
            "{e}"
        );
        r.training_server = Some("inference_server".into());
        let e = select_hosts(&r, &agents()).expect_err("role");
        assert!(
            e.to_string().contains("has role inference, not training"),
            "{e}"
        );
        let mut a = agents();
        a.push(host("training_2", Role::Training, &[]));
        let e = select_hosts(&request(), &a).expect_err("ambiguous");
        assert!(
            e.to_string().contains("choose one with `training_server`"),
            "{e}"
        );
        a.retain(|h| h.role != Some(Role::Inference) && h.name != "training_2");
        let e = select_hosts(&request(), &a).expect_err("missing");
        assert!(
            e.to_string().starts_with("no connected inference agent"),
            "{e}"
        );
    }

    #[test]
    fn settings_add_confirmation_retention_and_cleanup() {
        let hosts = select_hosts(&request(), &agents()).expect("hosts");
        let settings = PipelineSettings {
            confirm_transfer_above: 1 << 30,
            cleanup_staging: true,
            keep_checkpoints: 3,
        };
        let def = plan(&request(), &hosts, &settings, "2026-01-22").expect("plan");
        def.validate().expect("valid");
        assert_eq!(
            def.step("ship_sample").expect("hop").params["confirm_above"],
            1u64 << 30
        );
        assert_eq!(
            def.step("monitor").expect("m").params["keep_checkpoints"],
            3
        );
        let c = def.step("cleanup_staging").expect("cleanup");
        assert_eq!(
            c.params["paths"][0],
            "/server_21/staging/campaign_2026_01_22_task${task_id}"
        );
        assert_eq!(stage_of("ship_infer_data"), "data_fetch");
        assert_eq!(log_label("ship_infer_data"), "data_fetch/ship_infer_data");
        assert_eq!(log_label("train"), "train");
        assert_eq!(log_label(""), "task");
    }

    #[test]
    fn user_text_with_dollars_survives_rendering() {
        let mut r = request();
        r.sample_sql = "SELECT '${not_a_placeholder}' AS s, '$$' AS d FROM t".into();
        let hosts = select_hosts(&r, &agents()).expect("hosts");
        let def = plan(&r, &hosts, &PipelineSettings::default(), "2026-01-22").expect("plan");
        let params = BTreeMap::new();
        let ctx = crate::template::TemplateContext {
            task_id: 7,
            task_name: "t",
            params: &params,
        };
        let rendered = crate::template::render(&def.step("export_sample").expect("s").params, &ctx)
            .expect("renders");
        assert_eq!(rendered["sql"], r.sample_sql.as_str());
        assert_eq!(
            rendered["output_dir"],
            "/server_21/staging/campaign_2026_01_22_task7/sample_data"
        );
    }
}
