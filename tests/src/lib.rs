//! A harness that runs Ferry's real daemons as child processes on loopback ports, each
//! cluster in its own temporary directory, and kills them all when dropped.
//!
//! The binaries come from `FERRY_BIN_DIR`, or from the cargo target directory the test
//! executable lives in; `cargo xtask test` builds them first.

pub mod podman;
pub mod sshd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::workflow::WorkflowDef;
use ferry_proto::v1::{self, workflow_service_client::WorkflowServiceClient};
use tonic::transport::Channel;

pub type Client = WorkflowServiceClient<Channel>;

/// Where the daemons were built.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("the test binary lives in target/<profile>/deps")
}

pub fn bin(name: &str) -> PathBuf {
    bin_in(&bin_dir(), name)
}

fn bin_in(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the daemons first (`cargo build --workspace --bins`, or run `cargo xtask test`)",
        path.display()
    );
    path
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// `host:port` the coordinator listens on; stable across restarts.
    pub addr: String,
    /// Where the daemon binaries are (the test build's directory by default).
    pub bin_dir: PathBuf,
    /// Extra environment for every daemon (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    coordinator: Option<Child>,
    agents: HashMap<String, Child>,
}

impl Cluster {
    /// A cluster directory and config: 1 s heartbeats, agents declared lost after 3 s.
    pub fn new() -> Cluster {
        Self::with_config("")
    }

    /// Like `new`, with extra YAML appended to the config.
    pub fn with_config(extra: &str) -> Cluster {
        Self::with_agent_config("", extra)
    }

    /// Like `with_config`, with extra lines (indented two spaces) in the `agent` section.
    pub fn with_agent_config(agent_lines: &str, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("ferry.yaml");
        let db = dir.path().join("ferry.db");
        let text = format!(
            "workflow:\n  heartbeat_interval: 1\n  agent_timeout: 3\ncoordinator:\n  listen: \"127.0.0.1:0\"\n  database_url: \"sqlite://{}?mode=rwc\"\n  data_dir: \"{}\"\nagent:\n  reconnect_interval_ms: 200\n  work_dir: \"{}\"\n{agent_lines}{extra}",
            db.display(),
            dir.path().join("coordinator-data").display(),
            dir.path().join("work").display()
        );
        std::fs::write(&config, text).expect("write config");
        Cluster {
            dir,
            config,
            addr: String::new(),
            bin_dir: bin_dir(),
            env: Vec::new(),
            coordinator: None,
            agents: HashMap::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .expect("open log file")
    }

    /// Starts (or restarts, on the same address and database) the coordinator and waits
    /// until it answers.
    pub async fn start_coordinator(&mut self) {
        let addr_file = self.path("coordinator.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(bin_in(&self.bin_dir, "ferry-coordinatord"));
        cmd.envs(self.env.iter().cloned());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--addr-file")
            .arg(&addr_file);
        if !self.addr.is_empty() {
            cmd.arg("--listen").arg(&self.addr);
        }
        let log = self.log_file("coordinator");
        let child = cmd
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ferry-coordinatord");
        self.coordinator = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && !a.is_empty()
            {
                self.addr = a.trim().to_owned();
                break;
            }
            if let Some(status) = self
                .coordinator
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "coordinator exited with {status}: {}",
                    self.read_log("coordinator")
                );
            }
            assert!(
                Instant::now() < deadline,
                "coordinator did not start: {}",
                self.read_log("coordinator")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Client::connect(self.url()).await.is_err() {
            assert!(Instant::now() < deadline, "coordinator does not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `role` is `source`, `train` or `infer`.
    pub fn start_agent(&mut self, role: &str, name: &str) {
        self.start_agent_with_env(role, name, &[]);
    }

    /// Like `start_agent`, with extra environment (e.g. `FERRY_FUXICTR_PATHS__DATA_ROOT` to
    /// give each "host" its own directories on one machine).
    pub fn start_agent_with_env(&mut self, role: &str, name: &str, env: &[(String, String)]) {
        let log = self.log_file(name);
        let child = Command::new(bin_in(&self.bin_dir, &format!("ferry-{role}-agentd")))
            .envs(self.env.iter().cloned())
            .envs(env.iter().cloned())
            .arg("--config")
            .arg(&self.config)
            .arg("--name")
            .arg(name)
            .arg("--coordinator")
            .arg(self.url())
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn agent");
        self.agents.insert(name.to_owned(), child);
    }

    /// The process id of a running agent.
    pub fn coordinator_pid(&self) -> Option<u32> {
        self.coordinator.as_ref().map(Child::id)
    }

    pub fn agent_pid(&self, name: &str) -> Option<u32> {
        self.agents.get(name).map(Child::id)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill_coordinator(&mut self) {
        if let Some(mut c) = self.coordinator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kill_agent(&mut self, name: &str) {
        if let Some(mut c) = self.agents.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the coordinator to exit; returns its exit status.
    pub fn stop_coordinator(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.coordinator.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.url())
            .await
            .expect("connect to coordinator")
    }

    /// Waits until `n` agents are connected.
    pub async fn wait_for_agents(&self, n: usize) {
        let mut client = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let agents = client
                .list_agents(v1::ListAgentsRequest {})
                .await
                .expect("list agents")
                .into_inner()
                .agents;
            if agents.iter().filter(|a| a.connected).count() >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {agents:?} connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Applies a workflow written in YAML.
    pub async fn apply(&self, yaml: &str) -> Result<v1::Workflow, tonic::Status> {
        let def = WorkflowDef::from_yaml(yaml).expect("test workflow parses");
        self.client()
            .await
            .apply_workflow(v1::ApplyWorkflowRequest {
                definition: Some((&def).into()),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn create_task(&self, workflow: &str) -> v1::Task {
        self.client()
            .await
            .create_task(v1::CreateTaskRequest {
                workflow: workflow.to_owned(),
                name: String::new(),
                params: Default::default(),
            })
            .await
            .expect("create task")
            .into_inner()
    }

    pub async fn metrics(&self, id: i64) -> v1::MetricList {
        self.client()
            .await
            .get_metrics(v1::TaskRef { task_id: id })
            .await
            .expect("get metrics")
            .into_inner()
    }

    /// Runs the `ferry` CLI against this cluster's coordinator.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin_in(&self.bin_dir, "ferry"))
            .arg("--coordinator")
            .arg(self.url())
            .args(args)
            .output()
            .expect("run ferry")
    }

    pub async fn task(&self, id: i64) -> v1::TaskDetail {
        self.client()
            .await
            .get_task(v1::TaskRef { task_id: id })
            .await
            .expect("get task")
            .into_inner()
    }

    /// Polls the task until `done` holds for it, or panics after `timeout` with the task's
    /// state and logs.
    pub async fn wait_until(
        &self,
        id: i64,
        timeout: Duration,
        what: &str,
        done: impl Fn(&v1::TaskDetail) -> bool,
    ) -> v1::TaskDetail {
        let deadline = Instant::now() + timeout;
        loop {
            // The coordinator may be restarting; keep trying until the deadline.
            if let Ok(mut client) = Client::connect(self.url()).await
                && let Ok(detail) = client.get_task(v1::TaskRef { task_id: id }).await
            {
                let detail = detail.into_inner();
                if done(&detail) {
                    return detail;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out waiting for task {id} to be {what}: {detail:#?}\nlogs:\n{}",
                        self.logs_text(id).await
                    );
                }
            } else if Instant::now() > deadline {
                panic!("timed out waiting for task {id} to be {what}: coordinator unreachable");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_status(&self, id: i64, status: &str, timeout: Duration) -> v1::TaskDetail {
        self.wait_until(id, timeout, status, |d| {
            d.task.as_ref().is_some_and(|t| t.status == status)
        })
        .await
    }

    pub async fn logs_text(&self, id: i64) -> String {
        let Ok(mut client) = Client::connect(self.url()).await else {
            return String::new();
        };
        match client
            .get_logs(v1::GetLogsRequest {
                task_id: id,
                after_id: 0,
                limit: 0,
            })
            .await
        {
            Ok(l) => l
                .into_inner()
                .entries
                .iter()
                .map(|e| format!("[{}] [{}] {}: {}", e.timestamp, e.step, e.source, e.message))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("(no logs: {e})"),
        }
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut c) in self.agents.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_coordinator();
    }
}

/// The step named `name`.
pub fn step<'a>(detail: &'a v1::TaskDetail, name: &str) -> &'a v1::Step {
    detail
        .steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("task has no step {name}: {detail:#?}"))
}

/// Lines of a side-effect file (empty if absent).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
