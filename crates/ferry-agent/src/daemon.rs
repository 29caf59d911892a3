//! What the three agent daemons share: their command line, and turning config + arguments
//! into a running agent for one role.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_transfer::pool::SessionPool;
use std::time::Duration;

use ferry_core::Role;
use ferry_core::config::FerryConfig;
use tokio_util::sync::CancellationToken;

use crate::cleanup::CleanupExecutor;
use crate::docker::DockerExecutor;
use crate::exec::{ExecExecutor, NoopExecutor};
use crate::executor::Executor;
use crate::policy::Policy;
use crate::runtime::{AgentError, AgentSettings};
use crate::services::{DataExecutor, UploadExecutor};
use crate::transfer::TransferExecutor;

/// Command line of `ferry-source-agentd`, `ferry-train-agentd` and `ferry-infer-agentd`.
#[derive(Debug, Clone, clap::Parser)]
pub struct AgentArgs {
    /// YAML config file (see deploy/); `FERRY_*` variables override it.
    #[arg(long, short, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Agent name (default: `agent.name` from the config, else the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Coordinator URL (default: `agent.coordinator_url`).
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Work directory (default: `agent.work_dir`).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// `plain` or `json`.
    #[arg(long, default_value = "plain")]
    pub log_format: String,
}

/// The executors an agent of `role` offers. Role-specific kinds (SQL on the data-source
/// host, training and inference on the compute hosts) join these in their own crates.
/// `run_daemon_with` puts them all behind the host's `Policy` (`policy::guard`).
pub fn executors_for(
    _role: Role,
    config: &FerryConfig,
    settings: &AgentSettings,
    ssh: Arc<SessionPool>,
) -> Vec<Arc<dyn Executor>> {
    let config = &effective_config(config, settings);
    vec![
        Arc::new(ExecExecutor::new(config)),
        Arc::new(NoopExecutor),
        Arc::new(TransferExecutor::new(config.clone(), ssh)),
        Arc::new(CleanupExecutor::new(config)),
        Arc::new(DataExecutor::new(config)),
        Arc::new(DockerExecutor::new(config)),
        Arc::new(UploadExecutor::new(
            &settings.coordinator_url,
            &settings.name,
            config,
        )),
    ]
}

/// What this agent lets its steps do and reach: `agent.allow` and the roots of
/// `effective_config`.
pub fn policy(config: &FerryConfig, settings: &AgentSettings) -> Policy {
    Policy::from_config(&effective_config(config, settings))
}

/// The config executors work with: the work dir given on the command line (the one jobs and
/// graph deliveries use), and roots (and the FuxiCTR and staging directories) made absolute,
/// as the coordinator plans with them.
pub fn effective_config(config: &FerryConfig, settings: &AgentSettings) -> FerryConfig {
    let mut config = config.clone();
    config.agent.work_dir = settings.work_dir.clone();
    let cwd = std::env::current_dir().unwrap_or_default();
    for dir in [
        &mut config.fuxictr_paths.data_root,
        &mut config.fuxictr_paths.model_root,
        &mut config.storage.staging_dir,
    ] {
        *dir = normalize(&cwd.join(&*dir));
    }
    config.agent.roots = config
        .agent
        .effective_roots(&config)
        .into_iter()
        .map(|r| normalize(&cwd.join(r)))
        .collect();
    config
}

/// Resolves the agent's settings from config and arguments.
pub fn settings(role: Role, config: &FerryConfig, args: &AgentArgs) -> AgentSettings {
    let name = args
        .name
        .clone()
        .or_else(|| config.agent.name.clone())
        .unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| format!("{role}-agent"))
        });
    // GPUs come from this agent's entry in `servers`, when it has one.
    let gpus = config
        .servers
        .get(&name)
        .map(|s| s.gpus.clone())
        .unwrap_or_default();
    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| config.agent.work_dir.clone());
    AgentSettings {
        role,
        coordinator_url: args
            .coordinator
            .clone()
            .unwrap_or_else(|| config.agent.coordinator_url.clone()),
        reconnect_interval: Duration::from_millis(config.agent.reconnect_interval_ms),
        tls: config.tls.clone(),
        gpus,
        // Absent: one step per core.
        slots: config.agent.slots.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().min(u32::MAX as usize) as u32)
        }),
        shutdown_grace: Duration::from_secs(10),
        paths: reported_paths(config, &work_dir),
        work_dir,
        ssh_to: config
            .servers
            .keys()
            .filter(|s| **s != name)
            .cloned()
            .collect(),
        name,
    }
}

/// Runs an agent of `role` until SIGTERM or Ctrl-C.
pub async fn run_daemon(
    role: Role,
    config: FerryConfig,
    args: AgentArgs,
) -> Result<(), AgentError> {
    run_daemon_with(role, config, args, Vec::new()).await
}

/// `run_daemon` with the role's own step kinds added (the source agent's SQL kinds live in
/// `ferry-agent-sql`, so only that daemon links DataFusion).
pub async fn run_daemon_with(
    role: Role,
    config: FerryConfig,
    args: AgentArgs,
    extra: Vec<Arc<dyn Executor>>,
) -> Result<(), AgentError> {
    ferry_core::kinds::check_allowed_kinds(&config.agent.allow.kinds).map_err(AgentError::Setup)?;
    let settings = settings(role, &config, &args);
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            shutdown.cancel();
        }
    });
    // The SSH masters of this agent: those a killed predecessor left are ended first, and
    // every one is closed when the agent stops.
    let ssh = Arc::new(SessionPool::new(&settings.work_dir.join("ssh")));
    ferry_transfer::pool::reap_masters(ssh.base()).await;
    let mut executors = executors_for(role, &config, &settings, ssh.clone());
    executors.extend(extra);
    let executors = crate::policy::guard(executors, &policy(&config, &settings));
    let result = crate::runtime::run(settings, executors, shutdown).await;
    ssh.close_all().await;
    result
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The roots the coordinator plans paths with, made absolute against the working directory
/// (config paths like `./data/` are relative to where the daemon runs).
fn reported_paths(config: &FerryConfig, work_dir: &std::path::Path) -> BTreeMap<String, String> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let work_dir = work_dir.to_path_buf();
    [
        ("work_dir", &work_dir),
        ("data_root", &config.fuxictr_paths.data_root),
        ("model_root", &config.fuxictr_paths.model_root),
        ("staging_dir", &config.storage.staging_dir),
    ]
    .into_iter()
    .map(|(k, p)| {
        let abs = if p.is_absolute() {
            p.clone()
        } else {
            cwd.join(p)
        };
        (k.to_owned(), normalize(&abs).display().to_string())
    })
    .collect()
}

/// Removes `.` and resolves `..` lexically (the directories may not exist yet).
fn normalize(p: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
