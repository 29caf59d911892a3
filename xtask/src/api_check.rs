//! `cargo xtask api-check`: a client no one here wrote, schemathesis (from PyPI), against the
//! coordinator's HTTP API as its OpenAPI document describes it.
//!
//! Installs schemathesis into a virtual environment cached outside the clone, starts a real
//! coordinator on loopback with tokens on (a bootstrap admin token) and a temporary SQLite
//! database, stores a workflow, a task of it and a graph through the API so that paths with
//! ids reach real entities, then runs `st run BASE/api/openapi.json` with the admin token and
//! schemathesis' default checks: no server error, answers (status, content type, headers,
//! body) as documented, schema-valid requests accepted and invalid ones refused, and
//! authentication enforced (the document declares its security schemes, so schemathesis
//! also sends each request without credentials and expects a 401). Fails when schemathesis
//! reports a failure; its JUnit report stays in the report directory it names.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{is_root, target_dir};

/// The schemathesis release this task installs and was checked with.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Test cases per API operation and phase.
    #[arg(long, default_value_t = 30)]
    max_examples: u32,
    /// Seed for schemathesis' generator (a run is reproducible with the same seed).
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    /// Where the reports go (default: a new directory under the system's temporary one).
    #[arg(long)]
    report_dir: Option<PathBuf>,
}

/// Operations left out of the run, each with why a generic HTTP fuzzer cannot test it.
const EXCLUDED_PATHS: &[(&str, &str)] = &[(
    "/api/workflow/tasks/{id}/logs/stream",
    // Its only success is `101 Switching Protocols` to a WebSocket; a request/response fuzzer
    // cannot carry on the protocol after it, and without the upgrade headers the answer is
    // always the documented 426. The same messages are checked through the Server-Sent
    // Events path, `/api/workflow/tasks/{id}/events`.
    "WebSocket upgrade",
)];

/// Per-operation settings: refusals the schema cannot express. Each is a `400` for a value
/// that is well-formed but wrong for reasons a JSON schema cannot state (see the comments),
/// so for these operations schemathesis' "schema-valid request rejected" check also accepts
/// a 400. Every other check stays on for them.
const CONFIG: &str = r#"
# Written by `cargo xtask api-check`.
# A task's event stream stays open while the task runs (the stored task waits for an agent
# that never connects): read its first events (the steps' states, then the log), not until
# the request times out.
max-stream-events = 3

[generation]
database = "none"

# A CTR task's SQL must be read-only SQL that parses; `hive_table` must be `db.table`;
# `partition` a partition spec. A stored workflow's task needs the workflow's parameters.
[[operations]]
include-name = "POST /api/workflow/tasks"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

# A definition's steps must form a DAG whose inputs name other steps, each kind with its
# own parameters.
[[operations]]
include-name = "POST /api/workflows"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

# A graph's nodes and connections must refer to each other (a connection's ends are nodes
# of the graph with those interfaces), each node type with its own fields.
[[operations]]
include-name-regex = "^(POST|PATCH) /api/graphs"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

# A schedule's cron must parse and fire, its time zone be an IANA name, its workflow exist
# (or its CTR request be valid once a date fills it in); a backfill's dates must be dates of
# a range with runs, of a schedule that exists, not overlapping a running backfill.
[[operations]]
include-name-regex = "^POST /api/(schedules|backfills)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

# Only a running backfill can be cancelled.
[[operations]]
include-name = "POST /api/backfills/{id}/cancel"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

# Approving, rejecting or changing a step depends on the step's state and kind.
[[operations]]
include-path-regex = "^/api/workflow/tasks/\\{id\\}/steps/"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
"#;

pub fn run(opts: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let st = ensure_schemathesis()?;
    crate::cargo(&["build", "-p", "ferry-coordinatord"])?;
    let bin = target_dir().join("debug").join("ferry-coordinatord");

    let work = tempfile::Builder::new()
        .prefix("ferry-api-check-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let dir = work.path();
    let token = new_token()?;
    ferry_e2e::write_private(&dir.join("bootstrap.token"), &token);
    let config = format!(
        "coordinator:\n  database_url: \"sqlite://{d}/ferry.db?mode=rwc\"\n  data_dir: \"{d}/data\"\nauth:\n  bootstrap_token_file: \"{d}/bootstrap.token\"\n",
        d = dir.display()
    );
    std::fs::write(dir.join("coordinator.yaml"), config)?;
    let log = std::fs::File::create(dir.join("coordinator.log"))?;
    let http_addr_file = dir.join("http.addr");
    let child = Command::new(&bin)
        .arg("--config")
        .arg(dir.join("coordinator.yaml"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--http-addr-file")
        .arg(&http_addr_file)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut coordinator = Daemon(child);
    let addr = wait_for_file(&http_addr_file, &mut coordinator, Duration::from_secs(60))?;
    println!("api-check: coordinator's HTTP API at http://{addr} (tokens on)");

    seed(&addr, &token).context("storing the data the run reads")?;

    let report_dir = match &opts.report_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "ferry-api-check-report-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        )),
    };
    std::fs::create_dir_all(&report_dir)
        .with_context(|| format!("cannot create {}", report_dir.display()))?;
    let config_file = report_dir.join("schemathesis.toml");
    std::fs::write(&config_file, CONFIG)?;

    let mut cmd = Command::new(&st);
    cmd.arg("--config-file")
        .arg(&config_file)
        .arg("run")
        .arg(format!("http://{addr}/api/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", &opts.max_examples.to_string()])
        .args(["--seed", &opts.seed.to_string()])
        .args(["--workers", "2", "--request-timeout", "10"])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(&report_dir);
    for (path, _why) in EXCLUDED_PATHS {
        cmd.args(["--exclude-path", path]);
    }
    println!(
        "api-check: st run http://{addr}/api/openapi.json --header 'Authorization: Bearer ***' --max-examples {} --seed {} (schemathesis {SCHEMATHESIS_VERSION}, default checks)",
        opts.max_examples, opts.seed
    );
    let status = cmd
        .current_dir(&report_dir)
        .status()
        .with_context(|| format!("cannot run {}", st.display()))?;
    let alive = coordinator.0.try_wait()?.is_none();
    drop(coordinator);
    let kept_log = report_dir.join("coordinator.log");
    let _ = std::fs::copy(dir.join("coordinator.log"), &kept_log);
    println!(
        "api-check: report in {} (JUnit), coordinator log {}; {:.0} s in all",
        report_dir.display(),
        kept_log.display(),
        started.elapsed().as_secs_f64()
    );
    if !alive {
        bail!("the coordinator exited during the run (see its log)");
    }
    if !status.success() {
        bail!("schemathesis reported failures ({status})");
    }
    println!("api-check: passed");
    Ok(())
}

/// The coordinator, stopped when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The venv's `st`, after installing schemathesis into it when it is not the pinned release.
fn ensure_schemathesis() -> anyhow::Result<PathBuf> {
    let venv = match std::env::var_os("FERRY_SCHEMATHESIS_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            PathBuf::from(home).join(".cache/ferry-schemathesis")
        }
    };
    let st = venv.join("bin/st");
    let installed = Command::new(&st)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(SCHEMATHESIS_VERSION))
        .unwrap_or(false);
    if installed {
        return Ok(st);
    }
    if !venv.join("bin/python").exists() && !python_venv(&venv)? {
        if !is_root() {
            bail!(
                "cannot create a Python virtual environment at {}; install python3-venv (sudo apt-get install -y python3-venv)",
                venv.display()
            );
        }
        eprintln!("xtask: installing python3-venv");
        let ok = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()?
            .success()
            && Command::new("apt-get")
                .args(["install", "-y", "-qq", "python3-venv"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()?
                .success();
        if !ok || !python_venv(&venv)? {
            bail!(
                "cannot create a Python virtual environment at {}",
                venv.display()
            );
        }
    }
    println!(
        "api-check: installing schemathesis {SCHEMATHESIS_VERSION} into {}",
        venv.display()
    );
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}"))
        .status()
        .context("cannot run pip")?;
    if !status.success() {
        bail!("pip could not install schemathesis {SCHEMATHESIS_VERSION} ({status})");
    }
    Ok(st)
}

/// Creates a venv at `dir`; false when Python cannot (no `venv`/`ensurepip` module).
fn python_venv(dir: &Path) -> anyhow::Result<bool> {
    let _ = std::fs::remove_dir_all(dir);
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .context("cannot run python3")?
        .success();
    Ok(ok && dir.join("bin/pip").exists())
}

/// A bootstrap token: 32 random bytes, hex.
fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(format!(
        "ferry_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Waits for the daemon to write its address file.
fn wait_for_file(path: &Path, daemon: &mut Daemon, limit: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_owned());
        }
        if let Some(status) = daemon.0.try_wait()? {
            bail!("the coordinator exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!("the coordinator did not listen within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stores, through the API, a workflow (one step for an agent that never connects, so its
/// task stays running), a task of it, and a graph with one node.
fn seed(addr: &str, token: &str) -> anyhow::Result<()> {
    let workflow = serde_json::json!({
        "name": "api-check",
        "description": "stored by cargo xtask api-check",
        "steps": [
            {"name": "first", "kind": "noop", "placement": {"agent": "absent"}},
            {"name": "second", "kind": "noop", "placement": {"role": "training"}, "inputs": ["first"]},
        ],
    });
    post(addr, token, "/api/workflows", &workflow)?;
    let task = post(
        addr,
        token,
        "/api/workflow/tasks",
        &serde_json::json!({"workflow": "api-check", "name": "api-check-task"}),
    )?;
    println!(
        "api-check: stored workflow `api-check`, task {}, graph `api-check-graph`",
        task.get("task_id").unwrap_or(&serde_json::Value::Null)
    );
    post(
        addr,
        token,
        "/api/graphs",
        &serde_json::json!({"name": "api-check-graph", "description": "stored by cargo xtask api-check"}),
    )?;
    post(
        addr,
        token,
        "/api/graphs/api-check-graph/nodes",
        &serde_json::json!({
            "name": "words", "service_type": "DATA", "agent": "absent",
            "interfaces": [{"type": "STDOUT", "path": "/tmp/words.txt"}],
        }),
    )?;
    Ok(())
}

/// POSTs JSON over plain HTTP/1.1 and returns the JSON answer (a 2xx), else fails with it.
fn post(
    addr: &str,
    token: &str,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let body = body.to_string();
    let mut s = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, rest) = answer
        .split_once("\r\n\r\n")
        .context("an answer without headers")?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if !status.starts_with('2') {
        bail!("POST {path}: {head}\n{rest}");
    }
    // The answers are small and sent whole (Content-Length), not chunked.
    serde_json::from_str(rest).with_context(|| format!("POST {path}: not JSON: {rest}"))
}
