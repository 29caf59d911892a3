//! A harness that runs Ferry's real daemons as child processes on loopback ports, each
//! cluster in its own temporary directory, and kills them all when dropped.
//!
//! The binaries come from `FERRY_BIN_DIR`, or from the cargo target directory the test
//! executable lives in; `cargo xtask test` builds them first.

pub mod podman;
pub mod proxy;
pub mod sshd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::config::TlsConfig;
use ferry_core::workflow::WorkflowDef;
use ferry_proto::pki::{self, Subject};
use ferry_proto::v1::{self, workflow_service_client::WorkflowServiceClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use ferry_proto::bearer::Bearer;

pub type Client = WorkflowServiceClient<InterceptedService<Channel, Bearer>>;

/// A cluster run as production would: mutual TLS from its own CA, and tokens.
pub struct Secure {
    /// The CA's directory (certificates are issued into it).
    pub pki: PathBuf,
    /// The bootstrap token (role `admin`).
    pub admin_token: String,
}

impl Secure {
    /// The CLI's and tests' TLS: the CA only (they authenticate with tokens).
    pub fn client_tls(&self) -> TlsConfig {
        TlsConfig {
            ca: self.pki.join("ca.pem"),
            ..TlsConfig::default()
        }
    }

    /// Issues (once) the certificate of agent `name`; returns its cert and key paths.
    pub fn agent_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        let cert = self.pki.join(format!("agent-{name}.pem"));
        let key = self.pki.join(format!("agent-{name}-key.pem"));
        if !cert.is_file() {
            pki::issue(&self.pki, &Subject::Agent(name.into()), 30, &self.pki)
                .expect("issue agent certificate");
        }
        (cert, key)
    }
}

/// A token-shaped secret for tests (not from a CSPRNG; tests only).
fn test_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("ferry_test_{:032x}{:08x}", nanos, std::process::id())
}

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
    /// `host:port` of the coordinator's HTTP API; stable across restarts.
    pub http_addr: String,
    /// Where the daemon binaries are (the test build's directory by default).
    pub bin_dir: PathBuf,
    /// Extra environment for every daemon (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// TLS and tokens, when the cluster runs as production would.
    pub secure: Option<Secure>,
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
        Self::build(agent_lines, extra, 3)
    }

    /// Like `new`, with agents declared lost after `secs` of silence: for suites that load
    /// the machine heavily (log floods) and test something other than agent liveness, where
    /// a starved agent process must not read as a lost one.
    pub fn with_agent_timeout(secs: u64) -> Cluster {
        Self::build("", "", secs)
    }

    fn build(agent_lines: &str, extra: &str, agent_timeout: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("ferry.yaml");
        let db = dir.path().join("ferry.db");
        let text = format!(
            "workflow:\n  heartbeat_interval: 1\n  agent_timeout: {agent_timeout}\ncoordinator:\n  listen: \"127.0.0.1:0\"\n  database_url: \"sqlite://{}?mode=rwc\"\n  data_dir: \"{}\"\nagent:\n  reconnect_interval_ms: 200\n  work_dir: \"{}\"\n{agent_lines}{extra}",
            db.display(),
            dir.path().join("coordinator-data").display(),
            dir.path().join("work").display()
        );
        std::fs::write(&config, text).expect("write config");
        Cluster {
            dir,
            config,
            addr: String::new(),
            http_addr: String::new(),
            bin_dir: bin_dir(),
            env: Vec::new(),
            secure: None,
            coordinator: None,
            agents: HashMap::new(),
        }
    }

    /// A cluster with mutual TLS (a fresh CA; the coordinator's certificate for 127.0.0.1;
    /// one per agent as it starts) and tokens (a bootstrap admin token), as production runs.
    pub fn secure(extra: &str) -> Cluster {
        Self::with_config(extra).into_secure()
    }

    /// This cluster with TLS and tokens (see [`Cluster::secure`]); before it starts.
    pub fn into_secure(self) -> Cluster {
        let mut c = self;
        let pki_dir = c.path("pki");
        pki::init(&pki_dir, 30).expect("create CA");
        pki::issue(
            &pki_dir,
            &Subject::Coordinator(vec!["127.0.0.1".into(), "localhost".into()]),
            30,
            &pki_dir,
        )
        .expect("issue coordinator certificate");
        let admin_token = test_token();
        let token_file = pki_dir.join("bootstrap.token");
        write_private(&token_file, &admin_token);
        let mut text = std::fs::read_to_string(&c.config).expect("read config");
        text.push_str(&format!(
            "tls:\n  ca: \"{p}/ca.pem\"\n  cert: \"{p}/coordinator.pem\"\n  key: \"{p}/coordinator-key.pem\"\nauth:\n  bootstrap_token_file: \"{t}\"\n",
            p = pki_dir.display(),
            t = token_file.display()
        ));
        std::fs::write(&c.config, text).expect("write config");
        // The CLI's own config: the CA, and the token in a file only its owner reads.
        let cli_token = c.path("cli.token");
        write_private(&cli_token, &admin_token);
        std::fs::write(
            c.path("cli.yaml"),
            format!(
                "tls:\n  ca: \"{}/ca.pem\"\nauth:\n  token_file: \"{}\"\n",
                pki_dir.display(),
                cli_token.display()
            ),
        )
        .expect("write CLI config");
        c.secure = Some(Secure {
            pki: pki_dir,
            admin_token,
        });
        c
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
        let http_addr_file = self.path("coordinator-http.addr");
        let _ = std::fs::remove_file(&http_addr_file);
        let mut cmd = Command::new(bin_in(&self.bin_dir, "ferry-coordinatord"));
        cmd.envs(self.env.iter().cloned());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--addr-file")
            .arg(&addr_file);
        if !self.addr.is_empty() {
            cmd.arg("--listen").arg(&self.addr);
        }
        let http_listen = if self.http_addr.is_empty() {
            "127.0.0.1:0"
        } else {
            self.http_addr.as_str()
        };
        cmd.arg("--http-listen")
            .arg(http_listen)
            .arg("--http-addr-file")
            .arg(&http_addr_file);
        let log = self.log_file("coordinator");
        let child = cmd
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ferry-coordinatord");
        self.coordinator = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The HTTP address is written after the gRPC one.
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && !a.is_empty()
                && let Ok(h) = std::fs::read_to_string(&http_addr_file)
                && !h.is_empty()
            {
                self.addr = a.trim().to_owned();
                self.http_addr = h.trim().to_owned();
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
        while self.try_client(None).await.is_err() {
            assert!(Instant::now() < deadline, "coordinator does not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        if self.secure.is_some() {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The base URL of the coordinator's HTTP API (`https` on a secure cluster).
    pub fn http_url(&self) -> String {
        if self.secure.is_some() {
            format!("https://{}", self.http_addr)
        } else {
            format!("http://{}", self.http_addr)
        }
    }

    /// A client sending `token` (the admin token of a secure cluster when `None`).
    pub async fn try_client(&self, token: Option<&str>) -> Result<Client, String> {
        let token = token
            .map(str::to_owned)
            .or_else(|| self.secure.as_ref().map(|s| s.admin_token.clone()));
        self.connect_with(token).await
    }

    /// A client that sends no token at all.
    pub async fn anonymous_client(&self) -> Client {
        self.connect_with(None).await.expect("connect")
    }

    async fn connect_with(&self, token: Option<String>) -> Result<Client, String> {
        let tls = self
            .secure
            .as_ref()
            .map(Secure::client_tls)
            .unwrap_or_default();
        let channel = ferry_proto::tls::endpoint(&self.url(), &tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let bearer = Bearer::new(token.as_deref())?;
        Ok(WorkflowServiceClient::with_interceptor(channel, bearer))
    }

    /// `role` is `source`, `train` or `infer`.
    pub fn start_agent(&mut self, role: &str, name: &str) {
        self.start_agent_with_env(role, name, &[]);
    }

    /// Like `start_agent`, with extra environment (e.g. `FERRY_FUXICTR_PATHS__DATA_ROOT` to
    /// give each "host" its own directories on one machine).
    pub fn start_agent_with_env(&mut self, role: &str, name: &str, env: &[(String, String)]) {
        let log = self.log_file(name);
        let mut tls_env = Vec::new();
        if let Some(s) = &self.secure {
            let (cert, key) = s.agent_cert(name);
            tls_env.push(("FERRY_TLS__CERT".to_owned(), cert.display().to_string()));
            tls_env.push(("FERRY_TLS__KEY".to_owned(), key.display().to_string()));
        }
        let child = Command::new(bin_in(&self.bin_dir, &format!("ferry-{role}-agentd")))
            .envs(self.env.iter().cloned())
            .envs(tls_env)
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
        let c = self.coordinator.take()?;
        terminate(c, Duration::from_secs(20))
    }

    /// SIGTERM to every agent, as systemd stops them, and wait for each to exit (SIGKILL
    /// after `grace`).
    pub fn stop_agents(&mut self, grace: Duration) {
        let agents: Vec<Child> = self.agents.drain().map(|(_, c)| c).collect();
        for c in &agents {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        for c in agents {
            terminate(c, grace);
        }
    }

    pub fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    pub async fn client(&self) -> Client {
        self.try_client(None).await.expect("connect to coordinator")
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
                priority: None,
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
        self.cli_with_env(args, &[])
    }

    /// Runs the `ferry` CLI with extra environment (e.g. `FERRY_TOKEN` to act as someone
    /// else than the admin of a secure cluster).
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = Command::new(bin_in(&self.bin_dir, "ferry"));
        cmd.env_remove("FERRY_TOKEN").env_remove("FERRY_CONFIG");
        if self.secure.is_some() {
            cmd.arg("--config").arg(self.path("cli.yaml"));
        }
        cmd.arg("--coordinator")
            .arg(self.url())
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
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
            if let Ok(mut client) = self.try_client(None).await
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
        let Ok(mut client) = self.try_client(None).await else {
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

/// SIGTERM, then SIGKILL if `c` has not exited after `grace`; its exit status.
pub fn terminate(mut c: Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            return c.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents get to close their SSH masters; one that lingers is killed.
        self.stop_agents(Duration::from_secs(2));
        self.kill_coordinator();
        if std::thread::panicking() {
            self.print_log_tails();
        }
    }
}

impl Cluster {
    /// A failed test's evidence: the last lines of every daemon's log (the temporary
    /// directory that holds them goes with the cluster).
    fn print_log_tails(&self) {
        // FERRY_TEST_LOG_TAIL=N shows more of each log.
        let lines_wanted: usize = std::env::var("FERRY_TEST_LOG_TAIL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60);
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let Ok(text) = std::fs::read(&log) else {
                continue;
            };
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- the last {} of {} lines of {} ----",
                lines_wanted.min(lines.len()),
                lines.len(),
                log.display()
            );
            for line in &lines[lines.len().saturating_sub(lines_wanted)..] {
                let cut: String = line.chars().take(400).collect();
                eprintln!("{cut}");
            }
        }
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

/// Writes a secret readable by its owner only.
pub fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create secret file");
    f.write_all(text.as_bytes()).expect("write secret file");
}
