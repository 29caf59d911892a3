//! Ferry's configuration: one YAML file (seed 000 §8.1's keys plus the coordinator's and the
//! agent's own) with `FERRY_*` environment overrides.
//!
//! Strict by design: an unknown key or a value of the wrong type is an error that names the
//! key. The environment is passed in rather than read globally, so tests can feed it.
//! Override syntax: `FERRY_WORKFLOW__HEARTBEAT_INTERVAL=5` sets `workflow.heartbeat_interval`
//! (`__` separates levels; keys are lower-cased).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Yaml};
use figment::value::{Dict, Value};
use serde::{Deserialize, Serialize};

use crate::state::Role;

pub const ENV_PREFIX: &str = "FERRY_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("invalid configuration: `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FerryConfig {
    /// The hosts of the deployment, by name (seed 000 §8.1 `servers`).
    pub servers: BTreeMap<String, ServerConfig>,
    pub storage: StorageConfig,
    pub fuxictr_paths: FuxiCtrPaths,
    pub transfer: TransferConfig,
    pub workflow: WorkflowConfig,
    pub coordinator: CoordinatorConfig,
    pub agent: AgentConfig,
    pub sql: SqlConfig,
    /// Mutual TLS between agents, clients and the coordinator (all three paths set, or none).
    pub tls: TlsConfig,
    /// Bearer tokens for client calls.
    pub auth: AuthConfig,
    /// A lab without TLS or tokens on a non-loopback address: allowed, with a warning at
    /// every start. Never the default.
    pub insecure: bool,
}

/// `tls:`: PEM files. The coordinator presents `cert` and accepts agents whose certificate
/// chains to `ca`; agents present theirs and check the coordinator's against `ca`. The CLI
/// needs only `ca` (it authenticates with a token); `cert` and `key` add a client certificate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsConfig {
    /// Whether TLS is configured (`ca` named).
    pub fn enabled(&self) -> bool {
        !self.ca.as_os_str().is_empty()
    }
}

/// `auth:`: where tokens come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Coordinator: a file holding a token with the `admin` role, for creating the first
    /// tokens. Setting it turns token checks on.
    pub bootstrap_token_file: PathBuf,
    /// Coordinator: require tokens even without a bootstrap file (tokens already in the
    /// database). On whenever `bootstrap_token_file` is set.
    pub required: bool,
    /// CLI: a file holding the token to send (`FERRY_TOKEN` wins).
    pub token_file: PathBuf,
}

impl AuthConfig {
    /// Whether the coordinator checks tokens on client calls.
    pub fn enabled(&self) -> bool {
        self.required || !self.bootstrap_token_file.as_os_str().is_empty()
    }
}

/// Which SQL engine the data-source host runs (`sql.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqlEngineKind {
    #[serde(rename = "embedded")]
    Embedded,
    #[serde(rename = "spark-sql")]
    SparkSql,
    #[serde(rename = "beeline")]
    Beeline,
    #[serde(rename = "hive")]
    Hive,
}

impl SqlEngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SqlEngineKind::Embedded => "embedded",
            SqlEngineKind::SparkSql => "spark-sql",
            SqlEngineKind::Beeline => "beeline",
            SqlEngineKind::Hive => "hive",
        }
    }
}

/// How chunks are hashed (`transfer.hash_algorithm`, a transfer step's `algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// Fast (several GB/s per core); the default.
    Blake3,
    /// For sites that require SHA-256.
    Sha256,
}

impl std::str::FromStr for HashAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blake3" => Ok(HashAlgorithm::Blake3),
            "sha256" => Ok(HashAlgorithm::Sha256),
            other => Err(format!("must be blake3 or sha256, not `{other}`")),
        }
    }
}

/// The data-source host's SQL engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// `embedded` (DataFusion over `warehouse_dir`), `spark-sql`, `beeline` or `hive`.
    pub engine: SqlEngineKind,
    /// Command of an external engine; `{sql}` is replaced by the statement. Empty: the
    /// engine's default (e.g. `["spark-sql", "-S", "-e", "{sql}"]`).
    pub command: Vec<String>,
    /// The embedded engine's warehouse: `<dir>/<db>.db/<table>/[<col>=<value>/]*.parquet`.
    pub warehouse_dir: PathBuf,
    /// Rows per exported Parquet part.
    pub rows_per_part: usize,
    /// Tables (`db.table`, `*` matches any run of characters, e.g. `prod.*`) whose loads need
    /// a person's approval, shown with a preview of the rows.
    pub production_tables: Vec<String>,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            engine: SqlEngineKind::Embedded,
            command: Vec::new(),
            warehouse_dir: "./warehouse".into(),
            rows_per_part: 1_000_000,
            production_tables: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    pub username: String,
    /// One private key (seed 000 §8.1); `key_paths` adds more.
    #[serde(default)]
    pub key_path: PathBuf,
    /// Private keys tried in order, after `key_path` (rotation without downtime: add the new
    /// key, deploy it, then remove the old one). Each must be mode 600 or narrower.
    #[serde(default)]
    pub key_paths: Vec<PathBuf>,
    pub role: Role,
    #[serde(default)]
    pub gpus: Vec<u32>,
}

impl ServerConfig {
    /// The private keys to try, in order: `key_path`, then `key_paths`.
    pub fn keys(&self) -> Vec<PathBuf> {
        let mut keys = Vec::new();
        if !self.key_path.as_os_str().is_empty() {
            keys.push(self.key_path.clone());
        }
        keys.extend(self.key_paths.iter().cloned());
        keys
    }
}

fn default_ssh_port() -> u16 {
    22
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub staging_dir: PathBuf,
    pub checkpoint_dir: PathBuf,
    pub temp_dir: PathBuf,
    pub server_21_staging: PathBuf,
    pub hdfs_staging: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            staging_dir: "/data/staging".into(),
            checkpoint_dir: "/data/checkpoints".into(),
            temp_dir: "/data/tmp".into(),
            server_21_staging: "/tmp/staging".into(),
            hdfs_staging: "/hdfs/staging".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FuxiCtrPaths {
    pub data_root: PathBuf,
    pub model_root: PathBuf,
}

impl Default for FuxiCtrPaths {
    fn default() -> Self {
        FuxiCtrPaths {
            data_root: "./data/".into(),
            model_root: "./checkpoints/".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferMethod {
    Rsync,
    Scp,
    Sftp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    pub method: TransferMethod,
    pub chunk_size: u64,
    pub max_retries: u32,
    pub parallel_workers: u32,
    pub compression: bool,
    pub checksum_verify: bool,
    /// rsync `--bwlimit` value, e.g. `100M`; empty for no limit.
    pub bandwidth_limit: String,
    /// `blake3` (fast, default) or `sha256` for chunk checksums.
    pub hash_algorithm: HashAlgorithm,
    /// The `ferry` CLI on the other hosts, used to build and verify manifests there.
    pub remote_ferry: String,
    /// Transfers larger than this many bytes wait for a person's confirmation before they
    /// start (seed 000 §7.3); 0 never asks.
    pub confirm_above: u64,
    /// Seconds an SSH master to another host stays up without use before it exits by
    /// itself (kept across steps so a hop pays no new login).
    pub ssh_idle_timeout: u64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            method: TransferMethod::Rsync,
            chunk_size: 100 * 1024 * 1024,
            max_retries: crate::retry::TRANSFER_MAX_RETRIES,
            parallel_workers: 4,
            compression: true,
            checksum_verify: true,
            bandwidth_limit: String::new(),
            hash_algorithm: HashAlgorithm::Blake3,
            remote_ferry: "ferry".into(),
            confirm_above: 0,
            ssh_idle_timeout: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkflowConfig {
    /// Seconds between agent heartbeats.
    pub heartbeat_interval: u64,
    /// Seconds an agent may stay away before its steps are retried elsewhere or failed;
    /// three heartbeats when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_timeout: Option<u64>,
    /// Bytes of log messages a task keeps in `task_logs`; past it the older lines move into
    /// a compressed archive, still readable through `ferry logs`. 0: never rotate.
    pub log_rotation_size: u64,
    /// Epochs between training checkpoints.
    pub checkpoint_interval: u32,
    /// Continue running tasks when the coordinator restarts (otherwise they pause).
    pub auto_resume: bool,
    pub notification: NotificationConfig,
    /// The monitor stage removes a pipeline task's staging data on the data-source host.
    pub cleanup_staging: bool,
    /// The monitor stage keeps this many pipeline runs' model directories under
    /// `model_root` and moves older ones to `{model_root}/archive/`; 0 keeps all.
    pub keep_checkpoints: u32,
    /// Pools shared across workflows: name → how many steps in it may run at once,
    /// wherever they run (a step joins one with `resources.pool`; e.g. `hive: 2` for
    /// exports against one Hive cluster).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, u32>,
    /// Seconds between the coordinator's looks at schedules and backfills for due runs.
    pub schedule_interval: u64,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        WorkflowConfig {
            heartbeat_interval: 30,
            agent_timeout: None,
            log_rotation_size: 100 * 1024 * 1024,
            checkpoint_interval: 1,
            auto_resume: true,
            notification: NotificationConfig::default(),
            cleanup_staging: false,
            keep_checkpoints: 5,
            pools: BTreeMap::new(),
            schedule_interval: 10,
        }
    }
}

impl WorkflowConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval)
    }

    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.agent_timeout.unwrap_or(self.heartbeat_interval * 3))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationConfig {
    pub on_complete: bool,
    pub on_failure: bool,
    pub webhook_url: String,
}

impl Default for NotificationConfig {
    fn default() -> Self {
        NotificationConfig {
            on_complete: false,
            on_failure: true,
            webhook_url: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// gRPC listen address.
    pub listen: String,
    /// `sqlite://PATH?mode=rwc` (default) or `postgres://...`.
    pub database_url: String,
    /// Where the HTTP/JSON API, its WebSocket streams, the OpenAPI document and Prometheus'
    /// `/metrics` listen (seed 000 §9); empty: not served.
    pub http_listen: String,
    /// The HTTP listener's certificate and key (PEM), for browsers that trust another CA
    /// than the agents; empty: `tls.cert` and `tls.key` when TLS is configured.
    pub http_tls_cert: PathBuf,
    pub http_tls_key: PathBuf,
    /// The coordinator's name: the first level of seed 003's path hierarchy on every agent.
    pub name: String,
    /// Where outputs sent to the coordinator (graph workflows' downloads) are kept.
    pub data_dir: PathBuf,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: "127.0.0.1:50051".into(),
            database_url: "sqlite://ferry.db?mode=rwc".into(),
            http_listen: String::new(),
            http_tls_cert: PathBuf::new(),
            http_tls_key: PathBuf::new(),
            name: "coordinator".into(),
            data_dir: "./coordinator-data".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The agent's name; the host name when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the coordinator's gRPC endpoint is.
    pub coordinator_url: String,
    /// Directory for the agent's jobs' working files.
    pub work_dir: PathBuf,
    /// Milliseconds between attempts to reach the coordinator.
    pub reconnect_interval_ms: u64,
    /// Directories this agent may read and write; transfers outside them are refused.
    /// Empty: the work dir, `storage.staging_dir` and the FuxiCTR data and model roots.
    pub roots: Vec<PathBuf>,
    /// known_hosts file for SSH host-key checking; `~/.ssh/known_hosts` when empty.
    pub known_hosts: PathBuf,
    /// Accept and record the host key of a server seen for the first time (a changed key
    /// is still refused).
    pub accept_new_host_keys: bool,
    /// The Docker-API engine DOCKER jobs run on (`unix:///run/podman/podman.sock`);
    /// `DOCKER_HOST`, else `/var/run/docker.sock`, when empty.
    pub docker_host: String,
    /// What this host lets steps do (least privilege).
    pub allow: AllowConfig,
    /// How many steps this agent runs at once (a step takes one slot unless its
    /// `resources.slots` says more); the host's cores when absent, 0 for no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
}

/// `agent.allow`: which step kinds this host runs and what they may reach.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowConfig {
    /// Step kinds this host accepts (`exec`, `docker`, `sql_export`, ...); empty: every kind
    /// its role runs.
    pub kinds: Vec<String>,
    /// For `exec`: the programs (absolute paths or bare names) that may run; empty: any.
    pub programs: Vec<String>,
    /// For `docker`: the container may use the network (default: `--network none`).
    pub docker_network: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: None,
            coordinator_url: "http://127.0.0.1:50051".into(),
            work_dir: "./agent-work".into(),
            reconnect_interval_ms: 1000,
            roots: Vec::new(),
            known_hosts: PathBuf::new(),
            accept_new_host_keys: false,
            docker_host: String::new(),
            allow: AllowConfig::default(),
            slots: None,
        }
    }
}

impl AgentConfig {
    /// The directories transfers may touch (see `roots`).
    pub fn effective_roots(&self, config: &FerryConfig) -> Vec<PathBuf> {
        if !self.roots.is_empty() {
            return self.roots.clone();
        }
        vec![
            self.work_dir.clone(),
            config.storage.staging_dir.clone(),
            config.sql.warehouse_dir.clone(),
            config.fuxictr_paths.data_root.clone(),
            config.fuxictr_paths.model_root.clone(),
        ]
    }
}

impl FerryConfig {
    /// Loads defaults ← `file` (if given) ← `FERRY_*` variables from `env`, then validates.
    pub fn load<I, K, V>(file: Option<&Path>, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut figment = Figment::from(Serialized::defaults(FerryConfig::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Yaml::file_exact(path));
        }
        figment = figment.merge(EnvOverrides(env_overrides(env)));
        let config: FerryConfig = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a YAML document (no file, no environment); for tests and tools.
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(FerryConfig::default())).merge(Yaml::string(text));
        let config: FerryConfig = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks of values that parse but make no sense; each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, server) in &self.servers {
            let key = |field: &str| format!("servers.{name}.{field}");
            if server.host.trim().is_empty() {
                return Err(invalid(key("host"), "must not be empty"));
            }
            if server.port == 0 {
                return Err(invalid(key("port"), "must be between 1 and 65535"));
            }
            if server.username.trim().is_empty() {
                return Err(invalid(key("username"), "must not be empty"));
            }
            if server.key_path.as_os_str().is_empty() && server.key_paths.is_empty() {
                return Err(invalid(
                    key("key_path"),
                    "name at least one private key (`key_path` or `key_paths`)",
                ));
            }
        }
        let hook = &self.workflow.notification.webhook_url;
        if !hook.is_empty() && !hook.starts_with("http://") {
            return Err(invalid(
                "workflow.notification.webhook_url",
                format!(
                    "`{hook}` is not an http:// URL (https needs the TLS support that comes with mutual TLS)"
                ),
            ));
        }
        let http = &self.coordinator.http_listen;
        if !http.is_empty() && http.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "coordinator.http_listen",
                format!("`{http}` is not an address like 127.0.0.1:8001"),
            ));
        }
        let (cert, key) = (
            &self.coordinator.http_tls_cert,
            &self.coordinator.http_tls_key,
        );
        if cert.as_os_str().is_empty() != key.as_os_str().is_empty() {
            return Err(invalid(
                "coordinator.http_tls_cert",
                "set both `http_tls_cert` and `http_tls_key`, or neither",
            ));
        }
        let coordinator = &self.coordinator.name;
        if !crate::workflow::is_valid_step_name(coordinator) {
            return Err(invalid(
                "coordinator.name",
                format!(
                    "`{coordinator}` must be 1-50 letters, digits, '_' or '-' (it names a directory on every agent)"
                ),
            ));
        }
        if self.transfer.chunk_size == 0 {
            return Err(invalid("transfer.chunk_size", "must be at least 1 byte"));
        }
        if self.transfer.parallel_workers == 0 {
            return Err(invalid("transfer.parallel_workers", "must be at least 1"));
        }
        if !(1..=86_400).contains(&self.transfer.ssh_idle_timeout) {
            return Err(invalid(
                "transfer.ssh_idle_timeout",
                "must be between 1 and 86400 seconds",
            ));
        }
        let bw = &self.transfer.bandwidth_limit;
        if !bw.is_empty() && !valid_bwlimit(bw) {
            return Err(invalid(
                "transfer.bandwidth_limit",
                format!("`{bw}` is not a rate like 100M, 512K or 1G"),
            ));
        }
        // Accepted by the schema (seed 000 §8.1) but not built: refused rather than ignored.
        if self.transfer.method != TransferMethod::Rsync {
            return Err(invalid(
                "transfer.method",
                "only `rsync` is supported: every transfer runs rsync over SSH and is verified chunk by chunk",
            ));
        }
        if !self.transfer.checksum_verify {
            return Err(invalid(
                "transfer.checksum_verify",
                "`false` is not supported: a transfer is complete only when every chunk verified at the destination",
            ));
        }
        if !self.sql.command.is_empty() && !self.sql.command.iter().any(|a| a.contains("{sql}")) {
            return Err(invalid(
                "sql.command",
                "no argument contains the `{sql}` placeholder",
            ));
        }
        if self.sql.rows_per_part == 0 {
            return Err(invalid("sql.rows_per_part", "must be at least 1"));
        }
        for p in &self.sql.production_tables {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '*')
            {
                return Err(invalid(
                    "sql.production_tables",
                    format!("`{p}` is not a table pattern like `prod.*` or `db.table`"),
                ));
            }
        }
        for (name, size) in &self.workflow.pools {
            let key = format!("workflow.pools.{name}");
            if !crate::capacity::is_pool_name(name) {
                return Err(invalid(
                    key,
                    "a pool name is 1-50 letters, digits, `_` or `-`",
                ));
            }
            if *size == 0 {
                return Err(invalid(key, "a pool must allow at least 1 step"));
            }
        }
        if let Some(slots) = self.agent.slots
            && slots > crate::capacity::MAX_SLOTS
        {
            return Err(invalid(
                "agent.slots",
                format!(
                    "must be at most {} (0 for no limit)",
                    crate::capacity::MAX_SLOTS
                ),
            ));
        }
        if self.workflow.heartbeat_interval == 0 {
            return Err(invalid(
                "workflow.heartbeat_interval",
                "must be at least 1 second",
            ));
        }
        if self.workflow.agent_timeout == Some(0) {
            return Err(invalid(
                "workflow.agent_timeout",
                "must be at least 1 second",
            ));
        }
        if self.workflow.checkpoint_interval != 1 {
            return Err(invalid(
                "workflow.checkpoint_interval",
                "only 1 is supported: training saves a checkpoint after every epoch (what exact resume needs)",
            ));
        }
        if self.coordinator.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "coordinator.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:50051",
                    self.coordinator.listen
                ),
            ));
        }
        let db = &self.coordinator.database_url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(invalid(
                "coordinator.database_url",
                format!("`{db}` is neither a sqlite: nor a postgres:// URL"),
            ));
        }
        let cu = &self.agent.coordinator_url;
        if !(cu.starts_with("http://") || cu.starts_with("https://")) {
            return Err(invalid(
                "agent.coordinator_url",
                format!("`{cu}` is not an http(s) URL like http://127.0.0.1:50051"),
            ));
        }
        if self.agent.reconnect_interval_ms == 0 {
            return Err(invalid("agent.reconnect_interval_ms", "must be at least 1"));
        }
        let tls = &self.tls;
        if tls.cert.as_os_str().is_empty() != tls.key.as_os_str().is_empty() {
            return Err(invalid("tls", "name both `cert` and `key` (or neither)"));
        }
        if !tls.cert.as_os_str().is_empty() && tls.ca.as_os_str().is_empty() {
            return Err(invalid(
                "tls.ca",
                "must name the CA certificate when `cert` is set",
            ));
        }
        Ok(())
    }
}

fn valid_bwlimit(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| "KMGTkmgt".contains(c));
    !digits.is_empty() && s.len() - digits.len() <= 1 && digits.chars().all(|c| c.is_ascii_digit())
}

/// The `FERRY_*` overrides as a figment provider, named so errors say where a bad key came from.
struct EnvOverrides(Dict);

impl figment::Provider for EnvOverrides {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("FERRY_* environment variables")
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.0.clone()))
    }
}

/// Turns `FERRY_A__B=v` pairs into a nested dictionary `{a: {b: v}}`. Values are parsed the
/// way figment parses environment values (numbers, booleans, arrays like `[0, 1]`).
///
/// Every config key lives in a section, so an override always has a `__`; other `FERRY_*`
/// variables (`FERRY_CONFIG`, `FERRY_COORDINATOR` for the CLI, ...) are not config keys.
fn env_overrides<I, K, V>(env: I) -> Dict
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut root = Dict::new();
    for (key, value) in env {
        let Some(path) = key.as_ref().strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !path.contains("__") {
            continue;
        }
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(String::is_empty) {
            continue;
        }
        let value: Value = value
            .as_ref()
            .parse()
            .unwrap_or_else(|_| Value::from(value.as_ref().to_owned()));
        insert_path(&mut root, &parts, value);
    }
    root
}

fn insert_path(dict: &mut Dict, parts: &[String], value: Value) {
    match parts {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_EXAMPLE: &str = r#"
servers:
  server_21:
    host: "your-server-21-host"
    port: 22
    username: "username"
    key_path: "/path/to/private/key"
    role: "data_source"
  training_server:
    host: "training-server-host"
    username: "username"
    key_path: "/path/to/private/key"
    role: "training"
    gpus: [0, 1, 2, 3]
storage:
  staging_dir: "/data/staging"
fuxictr_paths:
  data_root: "./data/"
  model_root: "./checkpoints/"
transfer:
  method: "rsync"
  chunk_size: 104857600
  max_retries: 10
  parallel_workers: 4
  compression: true
  checksum_verify: true
  bandwidth_limit: "100M"
workflow:
  heartbeat_interval: 30
  log_rotation_size: 104857600
  checkpoint_interval: 1
  auto_resume: true
  notification:
    on_complete: false
    on_failure: true
    webhook_url: ""
"#;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write config");
        f
    }

    #[test]
    fn the_seed_example_loads() {
        let f = write(SEED_EXAMPLE);
        let c = FerryConfig::load(Some(f.path()), no_env()).expect("loads");
        assert_eq!(c.servers["training_server"].gpus, vec![0, 1, 2, 3]);
        assert_eq!(c.servers["training_server"].port, 22);
        assert_eq!(c.servers["server_21"].role, Role::DataSource);
        assert_eq!(c.transfer.bandwidth_limit, "100M");
        assert_eq!(c.workflow.agent_timeout(), Duration::from_secs(90));
    }

    #[test]
    fn environment_overrides_the_file() {
        let f = write(SEED_EXAMPLE);
        let env = [
            ("FERRY_WORKFLOW__HEARTBEAT_INTERVAL", "5"),
            ("FERRY_SERVERS__TRAINING_SERVER__GPUS", "[7]"),
            ("FERRY_COORDINATOR__LISTEN", "127.0.0.1:6000"),
            ("OTHER_VAR", "ignored"),
            ("FERRY_CONFIG", "/not/a/config/key"),
        ];
        let c = FerryConfig::load(Some(f.path()), env).expect("loads");
        assert_eq!(c.workflow.heartbeat_interval, 5);
        assert_eq!(c.servers["training_server"].gpus, vec![7]);
        assert_eq!(c.coordinator.listen, "127.0.0.1:6000");
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = write("workflow:\n  heartbeat_intervall: 3\n");
        let err = FerryConfig::load(Some(f.path()), no_env())
            .expect_err("typo")
            .to_string();
        assert!(err.contains("heartbeat_intervall"), "{err}");
        let err = FerryConfig::load(None, [("FERRY_TRANSFER__CHUNKSIZE", "1")])
            .expect_err("typo in env")
            .to_string();
        assert!(
            err.contains("chunksize") && err.contains("FERRY_* environment variables"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let f = write("workflow:\n  heartbeat_interval: soon\n");
        let err = FerryConfig::load(Some(f.path()), no_env())
            .expect_err("type")
            .to_string();
        assert!(err.contains("heartbeat_interval"), "{err}");
        let err = FerryConfig::from_yaml_str(
            "servers:\n  a: {host: h, username: u, key_path: k, role: gpu}\n",
        )
        .expect_err("role")
        .to_string();
        assert!(err.contains("gpu") && err.contains("role"), "{err}");
        let err = FerryConfig::from_yaml_str("transfer:\n  bandwidth_limit: fast\n")
            .expect_err("bwlimit")
            .to_string();
        assert_eq!(
            err,
            "invalid configuration: `transfer.bandwidth_limit`: `fast` is not a rate like 100M, 512K or 1G"
        );
        let err = FerryConfig::from_yaml_str("workflow:\n  heartbeat_interval: 0\n")
            .expect_err("zero")
            .to_string();
        assert!(err.contains("`workflow.heartbeat_interval`"), "{err}");
    }

    #[test]
    fn keys_that_would_mean_nothing_are_refused() {
        for (yaml, key) in [
            (
                "transfer:\n  method: scp\n",
                "`transfer.method`: only `rsync` is supported",
            ),
            (
                "transfer:\n  checksum_verify: false\n",
                "`transfer.checksum_verify`: `false` is not supported",
            ),
            (
                "workflow:\n  checkpoint_interval: 5\n",
                "`workflow.checkpoint_interval`: only 1 is supported",
            ),
            (
                "workflow:\n  notification:\n    webhook_url: \"https://hooks.example\"\n",
                "`workflow.notification.webhook_url`: `https://hooks.example` is not an http:// URL",
            ),
        ] {
            let err = FerryConfig::from_yaml_str(yaml)
                .expect_err(yaml)
                .to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
        // Enumerated settings parse once, into enums; a wrong one names its key.
        let err = FerryConfig::from_yaml_str("sql:\n  engine: presto\n")
            .expect_err("engine")
            .to_string();
        assert!(err.contains("engine") && err.contains("presto"), "{err}");
        let c = FerryConfig::from_yaml_str(
            "sql:\n  engine: spark-sql\ntransfer:\n  hash_algorithm: sha256\n",
        )
        .expect("valid");
        assert_eq!(c.sql.engine, SqlEngineKind::SparkSql);
        assert_eq!(c.transfer.hash_algorithm, HashAlgorithm::Sha256);
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = FerryConfig::load(Some(Path::new("/nonexistent/ferry.yaml")), no_env())
            .expect_err("missing");
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/ferry.yaml does not exist"
        );
    }

    #[test]
    fn every_shipped_deploy_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("deploy/config exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                FerryConfig::load(Some(&path), no_env())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert_eq!(seen, 4, "one config per daemon");
    }
}
