//! Step kinds the engine knows, and the parameters each takes.
//!
//! The coordinator validates parameters when a workflow is applied, so a typo fails at
//! `ferry workflow apply` instead of on an agent hours later. Agents parse the same structs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Run a program on the agent (seed 003's STANDALONE service).
pub const EXEC: &str = "exec";
/// Do nothing and succeed; kept for benchmarking the engine itself.
pub const NOOP: &str = "noop";
/// Move a directory between this agent and a configured server over SSH/rsync, verified
/// chunk by chunk.
pub const TRANSFER: &str = "transfer";

/// Run SQL on the data-source host and write the result as Parquet parts into staging.
pub const SQL_EXPORT: &str = "sql_export";
/// Load result parts into a Hive table's partition, idempotently, and verify the row count.
pub const HIVE_LOAD: &str = "hive_load";

/// Every kind a workflow may name.
/// Prepares the dataset and trains a CTR model on the training host (burn).
pub const TRAIN: &str = "train";
/// Scores inference data part by part with a trained model on the inference host.
pub const INFER: &str = "infer";

/// The pipeline's monitor stage: report, checkpoint retention (seed 000 stage 5).
pub const MONITOR: &str = "monitor";
/// Removes directories under the agent's roots (staging data after a pipeline run).
pub const CLEANUP: &str = "cleanup";

/// Seed 003's DATA service: offers files that already exist on the agent to its consumers.
pub const DATA: &str = "data";
/// Seed 003's DOCKER service: runs an image through a Docker-API-compatible engine.
pub const DOCKER: &str = "docker";
/// Sends a job's output to the coordinator (seed 003's self-peer download).
pub const UPLOAD: &str = "upload";

pub const KNOWN_KINDS: &[&str] = &[
    EXEC, NOOP, TRANSFER, SQL_EXPORT, HIVE_LOAD, TRAIN, INFER, MONITOR, CLEANUP, DATA, DOCKER,
    UPLOAD,
];

/// How a job of a graph workflow (seed 003) meets its connections. Every path is absolute
/// and comes from `ferry_core::jobpaths`, so sender and receiver agree on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobIo {
    /// `workflows/<coordinator>/<workflow_job>/jobs/<executor>/<job>/`.
    pub job_dir: String,
    /// Delivered inputs fed to standard input, one after the other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stdin: Vec<Delivery>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountIo>,
    /// Standard output goes to `{job_dir}/output/stdout/stdout` (a consumer reads it)
    /// instead of the job's log.
    #[serde(default)]
    pub capture_stdout: bool,
}

/// What one connection delivered: a directory under `input/<sender>/<sender_job>/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub dir: String,
    /// The connection's `destination_file_name`: the delivered file's name in a mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// A MOUNT interface: `path` inside the job, `dir` on the agent (`{job_dir}/mounts/...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountIo {
    pub path: String,
    pub dir: String,
    /// Deliveries linked into `dir` before the job starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Delivery>,
}

/// Parameters of a `data` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataParams {
    /// Files or directories on the agent (a directory offers its contents).
    pub paths: Vec<String>,
    /// Where they are published for transfers (hard links where possible).
    pub output_dir: String,
}

/// Parameters of a `docker` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerParams {
    pub image: String,
    /// Overrides the image's ENTRYPOINT when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names in `env` whose values are secret: never returned by the read API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
    pub io: JobIo,
    /// The container's network: `none` (default), `bridge`, `host`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Parameters of an `upload` step: `local_path`'s files go to the coordinator, filed under
/// the task and `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    pub local_path: String,
    pub node: String,
    /// The connection's `destination_file_name` (renames a single file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// Parameters of the `monitor` kind: the task's steps and metrics, read from the
/// coordinator, are written as `report_path`; older runs under `model_root` are archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorParams {
    pub report_path: String,
    /// Where pipeline runs keep their model directories (`{model_root}/{dataset_id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_root: Option<String>,
    /// How many runs' model directories to keep; 0 keeps all.
    #[serde(default)]
    pub keep_checkpoints: u32,
    /// Free-form facts copied into the report (dataset id, model id, table, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
}

/// Parameters of the `cleanup` kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupParams {
    pub paths: Vec<String>,
}

/// Parameters of a `train` step. Files go to `{data_root}/{dataset_id}/` and
/// `{model_root}/{dataset_id}/` of the host's `fuxictr_paths`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    pub dataset_id: String,
    /// The exported sample data (raw Parquet parts) on this host. With `fuxictr`, the data
    /// the configuration's features and model train on, in place of its `train_data`,
    /// `valid_data` and `test_data` (the CTR pipeline's export); those files when absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sample_dir: String,
    /// FuxiCTR-style model settings: `model`, `model_id`, `embedding_dim`, `hidden_units`,
    /// `batch_size`, `epochs`, `learning_rate`, `seed`, ... (checked by the training host).
    /// Absent with `fuxictr`.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub model: Value,
    /// FuxiCTR's own configuration files on this host, as a FuxiCTR team has them: features,
    /// labels, data files and model settings all come from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuxictr: Option<FuxiCtrConfig>,
    /// Label columns; `[click]` when empty (`[click, conversion]` for the multi-task MMoE, ShareBottom and PLE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Fraction of rows held out for validation (default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_ratio: Option<f64>,
    /// How many of the agent's GPUs to use (the first N of `servers.<agent>.gpus`); 0 trains
    /// on the CPU; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_count: Option<u32>,
    /// Read and check the `fuxictr` configuration, then stop: nothing is read from the data
    /// or written. The CTR pipeline runs this first, so a configuration the training host
    /// refuses stops the task before any export.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check_only: bool,
}

/// A FuxiCTR configuration (`model_config.yaml` and `dataset_config.yaml`, or their folders)
/// and the experiment to run from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FuxiCtrConfig {
    /// The folder holding the configuration files.
    pub config_dir: String,
    /// The experiment id (a section of the model configuration; `Base` lies under it).
    pub expid: String,
    /// Where the configuration's relative data paths start, as FuxiCTR's scripts run there;
    /// the configuration folder's parent when absent (FuxiCTR's model folders:
    /// `run_expid.py` beside `config/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<String>,
}

/// Parameters of an `infer` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferParams {
    pub dataset_id: String,
    pub model_id: String,
    /// The exported inference data (raw Parquet parts) on this host.
    pub input_dir: String,
    /// Names the result directory `{data_root}/{dataset_id}/{expid}_inference_result/`.
    pub expid: String,
    /// Rows per forward pass (default 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

/// Dataset, model and experiment ids become directory and file names.
fn check_name(key: &str, v: &str) -> Result<(), String> {
    if v.is_empty()
        || v.starts_with('.')
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(format!(
            "`{key}` must be a name of letters, digits, '_', '-' or '.', not `{v}`"
        ));
    }
    Ok(())
}

/// Parameters of a `sql_export` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlExportParams {
    /// The user's query, passed to the engine unchanged.
    pub sql: String,
    /// Directory on the data-source host that receives `part-NNNNN.parquet`.
    pub output_dir: String,
    /// Overrides `sql.rows_per_part`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_part: Option<usize>,
}

/// Parameters of a `hive_load` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiveLoadParams {
    /// `db.table` (validated as identifiers).
    pub table: String,
    /// `column=value` of the partition to (re)write.
    pub partition: String,
    /// Directory holding the Parquet parts to load.
    pub parts_dir: String,
    /// The row count the partition must have afterwards (what inference produced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_rows: Option<u64>,
}

/// Which way a transfer goes, seen from the agent that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferDirection {
    /// This agent's `local_path` → the server's `remote_path`.
    Push,
    /// The server's `remote_path` → this agent's `local_path`.
    Pull,
    /// This agent's `local_path` → its own `remote_path` (both ends on this host; no server).
    Local,
}

/// Parameters of a `transfer` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferParams {
    pub direction: TransferDirection,
    /// Name of the other host in the config's `servers` (host, port, user, key); empty for
    /// a local transfer.
    #[serde(default)]
    pub server: String,
    /// Directory on this agent (must be under one of its roots).
    pub local_path: String,
    /// Directory on the other host.
    pub remote_path: String,
    /// `blake3` (default) or `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Overrides `transfer.compression`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<bool>,
    /// Overrides `transfer.chunk_size` (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    /// A transfer of more bytes than this waits for a person's confirmation (seed 000 §7.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_above: Option<u64>,
}

/// Parameters of an `exec` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names in `env` whose values are secret: never returned by the read API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
    /// Working directory on the agent; the agent's own work dir when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Exit codes that mean "retrying cannot help": the task pauses instead of retrying.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permanent_exit_codes: Vec<i32>,
    /// Kill the program (and fail the attempt, transiently) after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// A graph workflow's job: stdin, mounts and stdout from its connections. The working
    /// directory is then `{job_dir}/mounts`, so a MOUNT `/input/` is `./input/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<JobIo>,
}

/// Parameters of a `noop` step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopParams {
    /// Optional pause before succeeding.
    #[serde(default)]
    pub sleep_ms: u64,
}

/// Checks `agent.allow.kinds` (config cannot: it sits below this module).
pub fn check_allowed_kinds(kinds: &[String]) -> Result<(), String> {
    match kinds.iter().find(|k| !KNOWN_KINDS.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "`agent.allow.kinds`: `{k}` is not a step kind (kinds: {})",
            KNOWN_KINDS.join(", ")
        )),
        None => Ok(()),
    }
}

/// What the read API shows instead of a secret value.
pub const MASK: &str = "********";

fn check_secret_env(env: &BTreeMap<String, String>, secret: &[String]) -> Result<(), String> {
    match secret.iter().find(|k| !env.contains_key(*k)) {
        Some(k) => Err(format!("`secret_env` names `{k}`, which is not in `env`")),
        None => Ok(()),
    }
}

/// Replaces the values of `params.env` named in `params.secret_env` (exec and docker steps)
/// with [`MASK`]: what every read of a definition returns.
pub fn mask_secrets(params: &mut Value) {
    let secret: Vec<String> = params
        .get("secret_env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(env) = params.get_mut("env").and_then(Value::as_object_mut) {
        for k in secret {
            if let Some(v) = env.get_mut(&k) {
                *v = Value::String(MASK.into());
            }
        }
    }
}

/// Checks that `params` are well-formed for `kind`. Returns a message fit to follow
/// "step `x`: ". A value holding a placeholder (`${param.day}`) is checked once the task
/// fills it in (`validate_rendered`).
pub fn validate_params(kind: &str, params: &Value) -> Result<(), String> {
    validate(kind, params, false)
}

/// `validate_params` for parameters as a job receives them, placeholders filled in: nothing
/// is skipped (a `${` still in a value is taken literally and must pass the same rules).
/// The coordinator runs it on rendered parameters and agents again before running a job.
pub fn validate_rendered(kind: &str, params: &Value) -> Result<(), String> {
    validate(kind, params, true)
}

fn validate(kind: &str, params: &Value, rendered: bool) -> Result<(), String> {
    // Checked when the task fills the placeholder in.
    let later = |v: &str| !rendered && v.contains("${");
    match kind {
        EXEC => {
            let p: ExecParams = parse_params(params)?;
            if p.program.trim().is_empty() {
                return Err("`program` must not be empty".into());
            }
            check_secret_env(&p.env, &p.secret_env)?;
            if p.timeout_secs == Some(0) {
                return Err("`timeout_secs` must be at least 1".into());
            }
            match &p.io {
                Some(io) => check_io(io),
                None => Ok(()),
            }
        }
        NOOP => parse_params::<NoopParams>(params).map(|_| ()),
        TRANSFER => {
            let p: TransferParams = parse_params(params)?;
            if p.direction != TransferDirection::Local && p.server.trim().is_empty() {
                return Err("`server` must name a server of the config".into());
            }
            if p.local_path.trim().is_empty() || p.remote_path.trim().is_empty() {
                return Err("`local_path` and `remote_path` must not be empty".into());
            }
            if let Some(a) = &p.algorithm {
                a.parse::<crate::config::HashAlgorithm>()
                    .map_err(|e| format!("`algorithm` {e}"))?;
            }
            if p.chunk_size == Some(0) {
                return Err("`chunk_size` must be at least 1".into());
            }
            Ok(())
        }
        SQL_EXPORT => {
            let p: SqlExportParams = parse_params(params)?;
            if p.sql.trim().is_empty() || p.output_dir.trim().is_empty() {
                return Err("`sql` and `output_dir` must not be empty".into());
            }
            // As written, and as it reads once the task fills its placeholders in (`$$` is a
            // `$`, `${...}` a name): the text may be either, and both must be one read.
            for sql in [p.sql.as_str(), &sql_as_rendered(&p.sql)] {
                crate::sql_guard::check_read_only(sql).map_err(|e| format!("`sql`: {e}"))?;
            }
            if p.rows_per_part == Some(0) {
                return Err("`rows_per_part` must be at least 1".into());
            }
            Ok(())
        }
        HIVE_LOAD => {
            let p: HiveLoadParams = parse_params(params)?;
            crate::ident::TableRef::parse(&p.table).map_err(|e| e.to_string())?;
            if !later(&p.partition) {
                crate::ident::PartitionSpec::parse(&p.partition).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        TRAIN => {
            let p: TrainParams = parse_params(params)?;
            if !later(&p.dataset_id) {
                check_name("dataset_id", &p.dataset_id)?;
            }
            if p.check_only && p.fuxictr.is_none() {
                return Err("`check_only` checks a `fuxictr` configuration: name one".into());
            }
            if let Some(f) = &p.fuxictr {
                if !p.model.is_null() || !p.labels.is_empty() {
                    return Err("with `fuxictr`, the model and labels come from its configuration: leave out `model` and `labels`".into());
                }
                if p.sample_dir.len() != p.sample_dir.trim().len() {
                    return Err("`sample_dir` must not start or end with spaces".into());
                }
                if f.config_dir.trim().is_empty() {
                    return Err("`fuxictr.config_dir` must not be empty".into());
                }
                if f.work_dir.as_ref().is_some_and(|w| w.trim().is_empty()) {
                    return Err("`fuxictr.work_dir` must not be empty".into());
                }
                if !later(&f.expid) {
                    check_name("fuxictr.expid", &f.expid)?;
                }
                return Ok(());
            }
            if p.sample_dir.trim().is_empty() {
                return Err("`sample_dir` must not be empty".into());
            }
            let model = p.model.as_object().ok_or(
                "`model` must be a mapping of model settings (or name a `fuxictr` configuration)",
            )?;
            for key in ["model", "model_id"] {
                if !model.contains_key(key) {
                    return Err(format!("`model.{key}` is missing"));
                }
            }
            if let Some(r) = p.valid_ratio
                && !(r > 0.0 && r < 1.0)
            {
                return Err("`valid_ratio` must be between 0 and 1".into());
            }
            Ok(())
        }
        INFER => {
            let p: InferParams = parse_params(params)?;
            for (key, v) in [
                ("dataset_id", &p.dataset_id),
                ("model_id", &p.model_id),
                ("expid", &p.expid),
            ] {
                if !later(v) {
                    check_name(key, v)?;
                }
            }
            if p.batch_size == Some(0) {
                return Err("`batch_size` must be at least 1".into());
            }
            Ok(())
        }
        MONITOR => {
            let p: MonitorParams = parse_params(params)?;
            if p.report_path.trim().is_empty() {
                return Err("`report_path` must not be empty".into());
            }
            if p.keep_checkpoints > 0 && p.model_root.is_none() {
                return Err("`keep_checkpoints` needs `model_root`".into());
            }
            Ok(())
        }
        CLEANUP => {
            let p: CleanupParams = parse_params(params)?;
            if p.paths.iter().any(|x| x.trim().is_empty()) {
                return Err("`paths` must not contain empty paths".into());
            }
            Ok(())
        }
        DATA => {
            let p: DataParams = parse_params(params)?;
            if p.paths.is_empty() || p.paths.iter().any(|x| x.trim().is_empty()) {
                return Err("`paths` must list the files the DATA service offers".into());
            }
            check_absolute("output_dir", &p.output_dir)
        }
        DOCKER => {
            let p: DockerParams = parse_params(params)?;
            if p.image.trim().is_empty() {
                return Err("`image` must not be empty".into());
            }
            check_secret_env(&p.env, &p.secret_env)?;
            if p.timeout_secs == Some(0) {
                return Err("`timeout_secs` must be at least 1".into());
            }
            check_io(&p.io)
        }
        UPLOAD => {
            let p: UploadParams = parse_params(params)?;
            check_absolute("local_path", &p.local_path)?;
            if p.node.trim().is_empty() {
                return Err("`node` must not be empty".into());
            }
            Ok(())
        }
        other => Err(format!(
            "unknown step kind `{other}` (known kinds: {})",
            KNOWN_KINDS.join(", ")
        )),
    }
}

/// A `sql` template as the read-only check should see it before the task fills it in: `$$`
/// is a `$`, and each `${...}` placeholder stands for a name. (The agent checks the rendered
/// text again before it runs it, so a placeholder's value cannot add a statement there.)
fn sql_as_rendered(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let _ = crate::template::scan(template, |piece| {
        match piece {
            crate::template::Piece::Text(t) => out.push_str(t),
            crate::template::Piece::Escaped => out.push('$'),
            crate::template::Piece::Placeholder(_) => out.push_str("placeholder"),
            // Its `$` comes next as text; the check sees the rest as written.
            crate::template::Piece::Unterminated => {}
        }
        Ok::<(), std::convert::Infallible>(())
    });
    out
}

fn check_absolute(key: &str, path: &str) -> Result<(), String> {
    // A placeholder (`${task_id}`) is filled in when the task is created.
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(format!("`{key}` must be an absolute path, not `{path}`"))
    }
}

fn check_io(io: &JobIo) -> Result<(), String> {
    check_absolute("io.job_dir", &io.job_dir)?;
    for m in &io.mounts {
        if !m.path.starts_with('/') {
            return Err(format!(
                "mount path `{}` must be absolute (the path inside the job)",
                m.path
            ));
        }
        check_absolute("io.mounts.dir", &m.dir)?;
    }
    for d in io
        .stdin
        .iter()
        .chain(io.mounts.iter().flat_map(|m| &m.sources))
    {
        check_absolute("delivery dir", &d.dir)?;
        if let Some(f) = &d.file_name
            && (f.is_empty() || f.contains('/') || f == "." || f == "..")
        {
            return Err(format!("`file_name` must be a plain file name, not `{f}`"));
        }
    }
    Ok(())
}

/// Deserializes a step's parameters; `null` counts as an empty object.
pub fn parse_params<T: serde::de::DeserializeOwned>(params: &Value) -> Result<T, String> {
    let value = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params.clone()
    };
    serde_json::from_value(value).map_err(|e| format!("invalid params: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_needs_a_program_and_rejects_unknown_fields() {
        assert!(validate_params(EXEC, &json!({"program": "true"})).is_ok());
        let err = validate_params(EXEC, &json!({})).expect_err("program missing");
        assert!(err.contains("program"), "{err}");
        let err = validate_params(EXEC, &json!({"program": "x", "argz": []})).expect_err("typo");
        assert!(err.contains("argz"), "{err}");
    }

    #[test]
    fn hive_load_names_are_checked_when_the_workflow_is_applied() {
        let ok = json!({"table": "prod.scores", "partition": "dt=2026-01-22", "parts_dir": "/s"});
        assert!(validate_params(HIVE_LOAD, &ok).is_ok());
        let evil = json!({"table": "a; DROP TABLE b", "partition": "dt=1", "parts_dir": "/s"});
        let err = validate_params(HIVE_LOAD, &evil).expect_err("refused");
        assert!(
            err.starts_with("invalid identifier `a; DROP TABLE b`"),
            "{err}"
        );
    }

    #[test]
    fn sql_export_runs_one_read_only_query() {
        let params = |sql: &str| json!({"sql": sql, "output_dir": "/staging/x"});
        assert_eq!(validate_params(SQL_EXPORT, &params("SELECT 1;")), Ok(()));
        assert_eq!(
            validate_params(SQL_EXPORT, &params("SELECT 1; DROP TABLE t")),
            Err(
                "`sql`: an export runs exactly one statement; found a second one: `DROP TABLE t`"
                    .into()
            )
        );
        assert_eq!(
            validate_params(SQL_EXPORT, &params("COPY (SELECT 1) TO '/tmp/x'")),
            Err("`sql`: `COPY` is not a read: an export runs one SELECT or WITH query".into())
        );
        // Placeholders are filled in later; `$$` is a `$`.
        let templated = "SELECT * FROM db.t_${param.table} WHERE dt = '${param.day}' AND s = '$$'";
        assert_eq!(validate_params(SQL_EXPORT, &params(templated)), Ok(()));
        assert_eq!(
            validate_params(SQL_EXPORT, &params("SELECT '${task_id}'; INSERT INTO t SELECT 1")),
            Err("`sql`: an export runs exactly one statement; found a second one: `INSERT INTO t SELECT 1`".into())
        );
        assert_eq!(sql_as_rendered("a$$b${x}c$d${"), "a$bplaceholderc$d${");
        // Rendered text is checked as it is, too: `${` hides nothing.
        assert!(
            validate_params(SQL_EXPORT, &params("SELECT 1 ${; DROP TABLE t}"))
                .is_err_and(|e| e.contains("found a second one: `DROP TABLE t}`"))
        );
    }

    #[test]
    fn unknown_kinds_list_the_known_ones() {
        let err = validate_params("frobnicate", &Value::Null).expect_err("unknown");
        assert_eq!(
            err,
            "unknown step kind `frobnicate` (known kinds: exec, noop, transfer, sql_export, hive_load, train, infer, monitor, cleanup, data, docker, upload)"
        );
    }

    #[test]
    fn train_and_infer_params_name_what_is_wrong() {
        let ok = serde_json::json!({"dataset_id": "campaign", "sample_dir": "/d",
            "model": {"model": "DeepFM", "model_id": "m1"}});
        assert_eq!(validate_params(TRAIN, &ok), Ok(()));
        let no_id = serde_json::json!({"dataset_id": "campaign", "sample_dir": "/d",
            "model": {"model": "DeepFM"}});
        assert_eq!(
            validate_params(TRAIN, &no_id),
            Err("`model.model_id` is missing".into())
        );
        let escape = serde_json::json!({"dataset_id": "../etc", "sample_dir": "/d",
            "model": {"model": "DeepFM", "model_id": "m1"}});
        assert!(
            validate_params(TRAIN, &escape)
                .is_err_and(|e| e.contains("`dataset_id` must be a name"))
        );
        // FuxiCTR's configuration brings the model and labels: not both. Its data may be
        // replaced by the step's (the pipeline's export).
        let fuxi = serde_json::json!({"dataset_id": "tiny", "fuxictr":
            {"config_dir": "/cfg", "expid": "DeepFM_test"}});
        assert_eq!(validate_params(TRAIN, &fuxi), Ok(()));
        let exported = serde_json::json!({"dataset_id": "tiny", "sample_dir": "/d", "fuxictr":
            {"config_dir": "/cfg", "expid": "DeepFM_test"}, "check_only": true});
        assert_eq!(validate_params(TRAIN, &exported), Ok(()));
        let both = serde_json::json!({"dataset_id": "tiny", "labels": ["click"], "fuxictr":
            {"config_dir": "/cfg", "expid": "DeepFM_test"}});
        assert!(validate_params(TRAIN, &both).is_err_and(|e| e.contains("leave out")));
        let check_what = serde_json::json!({"dataset_id": "tiny", "sample_dir": "/d",
            "model": {"model": "DeepFM", "model_id": "m1"}, "check_only": true});
        assert!(validate_params(TRAIN, &check_what).is_err_and(|e| e.contains("check_only")));
        let bad_id = serde_json::json!({"dataset_id": "tiny", "fuxictr":
            {"config_dir": "/cfg", "expid": "../x"}});
        assert!(validate_params(TRAIN, &bad_id).is_err_and(|e| e.contains("fuxictr.expid")));
        let typo = serde_json::json!({"dataset_id": "tiny", "fuxictr":
            {"config_dir": "/cfg", "expid": "e", "workdir": "/w"}});
        assert!(validate_params(TRAIN, &typo).is_err_and(|e| e.contains("workdir")));
        let infer = serde_json::json!({"dataset_id": "c_${task_id}", "model_id": "m1",
            "input_dir": "/i", "expid": "e1", "batch_size": 0});
        assert_eq!(
            validate_params(INFER, &infer),
            Err("`batch_size` must be at least 1".into())
        );
    }

    #[test]
    fn rendered_values_get_the_checks_their_placeholders_skipped() {
        let train = json!({"dataset_id": "${param.x}", "sample_dir": "/d",
            "model": {"model": "DeepFM", "model_id": "m1"}});
        assert_eq!(validate_params(TRAIN, &train), Ok(()));
        let escaped = json!({"dataset_id": "/tmp/escape", "sample_dir": "/d",
            "model": {"model": "DeepFM", "model_id": "m1"}});
        assert!(
            validate_rendered(TRAIN, &escaped)
                .is_err_and(|e| e.contains("`dataset_id` must be a name"))
        );
        // A `${` that survives rendering (written `$${`) is a literal, not a pass.
        assert!(validate_rendered(TRAIN, &train).is_err());
        let infer = json!({"dataset_id": "c", "model_id": "${param.m}", "input_dir": "/i",
            "expid": "e1"});
        assert_eq!(validate_params(INFER, &infer), Ok(()));
        assert!(validate_rendered(INFER, &infer).is_err());
        let load = json!({"table": "a.b", "partition": "${param.p}", "parts_dir": "/s"});
        assert_eq!(validate_params(HIVE_LOAD, &load), Ok(()));
        let load = json!({"table": "a.b", "partition": "dt=1/../x", "parts_dir": "/s"});
        assert!(validate_rendered(HIVE_LOAD, &load).is_err());
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_env_values_are_masked_and_must_exist() {
        let mut p = json!({"program": "run", "env": {"TOKEN": "s3cret", "MODE": "fast"},
            "secret_env": ["TOKEN"]});
        assert_eq!(validate_params(EXEC, &p), Ok(()));
        mask_secrets(&mut p);
        assert_eq!(p["env"]["TOKEN"], MASK);
        assert_eq!(p["env"]["MODE"], "fast");
        let bad = json!({"program": "run", "env": {}, "secret_env": ["TOKEN"]});
        assert!(validate_params(EXEC, &bad).is_err_and(|e| e.contains("`TOKEN`")));
    }
}
