//! `cargo xtask bench http`: the coordinator's HTTP/JSON face beside its gRPC API, in one
//! run against one release coordinator on loopback (SQLite state, no TLS).
//!
//! Requests: `GET /api/workflow/tasks/{id}` against `GetTask`, and `POST /api/workflow/tasks`
//! (a stored workflow's task) against `CreateTask`, each with the same number of callers, every
//! caller on its own connection (HTTP/1.1 keep-alive; one HTTP/2 channel per gRPC caller),
//! calling back to back for a fixed time. Rounds alternate which protocol goes first, so drift
//! (a growing database) falls on both. The created tasks' steps are placed on an agent that
//! never connects: creation is measured, not the work.
//!
//! Fan-out: followers of one task's log (WebSocket `logs/stream` against gRPC `FollowLogs`,
//! one task each, the same step) connect before its step starts writing lines; each follower
//! must receive every line id of the task exactly once (checked against `GET .../logs` at the
//! end). The delay is from the line's timestamp (the coordinator stamps a line as it takes it
//! from the agent) to its receipt by the follower, on the same clock.
//!
//! The load generator runs in a release build of xtask (it re-runs itself with `--release`
//! unless `--debug-client`), so that the client's own cost does not swamp the server's.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use ferry_e2e::{Client, Cluster};
use ferry_proto::v1;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Concurrent callers in the request benchmarks, each on its own connection.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds each protocol calls each endpoint per round.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Rounds of the request benchmarks (HTTP then gRPC, then the other way round, ...).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Followers of the task's log, per protocol.
    #[arg(long, default_value_t = 100)]
    followers: usize,
    /// Log lines the followed step writes.
    #[arg(long, default_value_t = 3000)]
    lines: usize,
    /// Lines per second the followed step writes, in batches every 50 ms (0: all at once).
    #[arg(long, default_value_t = 1000)]
    line_rate: usize,
    /// Run the load generator in this build, even an unoptimised one.
    #[arg(long)]
    debug_client: bool,
}

/// The goal: the HTTP face's latency within this factor of gRPC's.
const GOAL_RATIO: f64 = 1.5;

const CREATE_WORKFLOW: &str = "bench_http_create";
const LOG_WORKFLOW: &str = "bench_http_log";
/// An agent that never connects: the created tasks wait for it and do no work.
const ABSENT_AGENT: &str = "bench-absent";
const AGENT: &str = "bench-a";

pub fn run(opts: Options) -> anyhow::Result<()> {
    if cfg!(debug_assertions) && !opts.debug_client {
        // The load generator's own speed is part of every figure: measure with an optimised
        // client (the same command, built with --release).
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut cargo_args = vec!["run", "--release", "-q", "-p", "xtask", "--"];
        cargo_args.extend(args.iter().map(String::as_str));
        return crate::cargo(&cargo_args);
    }
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "ferry-coordinatord",
        "-p",
        "ferry-train-agentd",
    ])?;
    ensure!(opts.concurrency > 0, "--concurrency must be at least 1");
    ensure!(opts.rounds > 0, "--rounds must be at least 1");
    ensure!(opts.lines > 0, "--lines must be at least 1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(opts))
}

// ---------------------------------------------------------------------------------------
// The coordinator

/// The coordinator process, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the release coordinator on the cluster's config with both listeners on free
/// loopback ports; returns it with its gRPC and HTTP addresses.
async fn start_coordinator(c: &Cluster) -> anyhow::Result<(Daemon, String, String)> {
    let grpc_file = c.path("coordinator.addr");
    let http_file = c.path("coordinator-http.addr");
    let log = std::fs::File::create(c.path("coordinator.log"))?;
    let child = Command::new(c.bin_dir.join("ferry-coordinatord"))
        .envs(c.env.iter().cloned())
        .arg("--config")
        .arg(&c.config)
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--addr-file")
        .arg(&grpc_file)
        .arg("--http-addr-file")
        .arg(&http_file)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting ferry-coordinatord")?;
    let mut daemon = Daemon(child);
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let (Some(grpc), Some(http)) = (read(&grpc_file), read(&http_file)) {
            return Ok((daemon, grpc, http));
        }
        if let Some(status) = daemon.0.try_wait()? {
            bail!(
                "the coordinator exited ({status}): {}",
                std::fs::read_to_string(c.path("coordinator.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("the coordinator wrote no addresses within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stored workflow of three chained steps on an agent that never connects.
fn create_workflow() -> String {
    let steps: Vec<_> = (0..3)
        .map(|i| {
            let mut s = serde_json::json!({
                "name": format!("s{i}"),
                "kind": "exec",
                "placement": {"agent": ABSENT_AGENT},
                "params": {"program": "echo", "args": ["${param.day}"]},
            });
            if i > 0 {
                s["inputs"] = serde_json::json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    // JSON is YAML.
    serde_json::json!({"name": CREATE_WORKFLOW, "steps": steps}).to_string()
}

/// One step that waits for the file `${param.gate}`, then writes `lines` lines to stdout,
/// `rate` a second in batches every 50 ms (all at once when 0).
fn log_workflow(lines: usize, rate: usize) -> String {
    let (batch, pause) = if rate == 0 {
        (0, 0.0)
    } else {
        ((rate / 20).max(1), 0.05)
    };
    let script = format!(
        "while [ ! -e \"${{param.gate}}\" ]; do sleep 0.01; done; \
         awk -v n={lines} -v b={batch} -v s={pause} 'BEGIN {{ for (i = 1; i <= n; i++) {{ \
         printf \"line %d of the followed step, about as long as a typical log line\\n\", i; \
         if (b > 0 && i % b == 0) {{ fflush(); system(\"sleep \" s) }} }} }}'"
    );
    serde_json::json!({
        "name": LOG_WORKFLOW,
        "steps": [{
            "name": "write",
            "kind": "exec",
            "placement": {"agent": AGENT},
            "params": {"program": "sh", "args": ["-c", script]},
        }],
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------
// Request benchmarks

type Body = Full<Bytes>;

/// One HTTP/1.1 keep-alive connection.
struct HttpConn {
    tx: SendRequest<Body>,
    host: String,
}

impl HttpConn {
    async fn connect(addr: &str) -> anyhow::Result<HttpConn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(HttpConn {
            tx,
            host: addr.to_owned(),
        })
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.tx.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let res = self
            .tx
            .send_request(req.body(Full::new(body.unwrap_or_default()))?)
            .await?;
        let status = res.status();
        let bytes = res.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// A JSON answer with the expected status, decoded.
    async fn json<T: serde::de::DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        expect: StatusCode,
    ) -> anyhow::Result<T> {
        let (status, bytes) = self.call(method, path, body).await?;
        ensure!(
            status == expect,
            "{path}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).with_context(|| format!("decoding the answer of {path}"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Proto {
    Http,
    Grpc,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Op {
    Get,
    Create,
}

enum Conn {
    Http(HttpConn),
    Grpc(Client),
}

/// What a call needs besides its connection.
struct Target {
    task_id: i64,
    create_body: Bytes,
    params: HashMap<String, String>,
}

impl Conn {
    async fn call(&mut self, op: Op, t: &Target) -> anyhow::Result<()> {
        match (self, op) {
            (Conn::Http(h), Op::Get) => {
                let path = format!("/api/workflow/tasks/{}", t.task_id);
                let v: serde_json::Value = h.json(Method::GET, &path, None, StatusCode::OK).await?;
                ensure!(v["task_id"] == t.task_id, "another task: {v}");
            }
            (Conn::Http(h), Op::Create) => {
                let v: serde_json::Value = h
                    .json(
                        Method::POST,
                        "/api/workflow/tasks",
                        Some(t.create_body.clone()),
                        StatusCode::CREATED,
                    )
                    .await?;
                ensure!(v["task_id"].as_i64().is_some(), "no task id: {v}");
            }
            (Conn::Grpc(g), Op::Get) => {
                let d = g
                    .get_task(v1::TaskRef { task_id: t.task_id })
                    .await?
                    .into_inner();
                ensure!(
                    d.task.as_ref().map(|t| t.id) == Some(t.task_id),
                    "another task"
                );
            }
            (Conn::Grpc(g), Op::Create) => {
                let task = g
                    .create_task(v1::CreateTaskRequest {
                        workflow: CREATE_WORKFLOW.into(),
                        name: String::new(),
                        params: t.params.clone(),
                        priority: None,
                    })
                    .await?
                    .into_inner();
                ensure!(task.id > 0, "no task id");
            }
        }
        Ok(())
    }
}

/// Calls of one protocol and operation, over every round.
#[derive(Default)]
struct Load {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    latencies_us: Vec<u64>,
    secs: f64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }

    fn pct_ms(&mut self, p: f64) -> f64 {
        percentile(&mut self.latencies_us, p) as f64 / 1000.0
    }
}

/// The `p` quantile (0-1) of `v` (sorted in place; 0 when empty).
fn percentile<T: Copy + Ord + Default>(v: &mut [T], p: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Every connection calls `op` back to back for `secs`; the connections come back with the
/// calls' figures added to `load`.
async fn drive(
    conns: Vec<Conn>,
    op: Op,
    target: &Arc<Target>,
    secs: f64,
    load: Option<&mut Load>,
) -> anyhow::Result<Vec<Conn>> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let (mut errors, mut first_error) = (0usize, None);
                while Instant::now() < deadline && errors < 100 {
                    let t = Instant::now();
                    match conn.call(op, &target).await {
                        Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (conn, lat, errors, first_error)
            })
        })
        .collect();
    let mut back = Vec::new();
    let mut sink = Load::default();
    let load = load.unwrap_or(&mut sink);
    for w in workers {
        let (conn, lat, errors, first_error) = w.await?;
        back.push(conn);
        load.ok += lat.len();
        load.latencies_us.extend(lat);
        load.errors += errors;
        if load.first_error.is_none() {
            load.first_error = first_error;
        }
    }
    load.secs += started.elapsed().as_secs_f64();
    Ok(back)
}

// ---------------------------------------------------------------------------------------
// Fan-out

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn ts_us(s: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("bad timestamp `{s}`"))?
        .timestamp_micros())
}

/// What one follower received.
#[derive(Default)]
struct Received {
    /// Line id and when it arrived (µs since the epoch).
    lines: Vec<(i64, i64)>,
    /// The stream ended as a finished task's stream ends (`end`; gRPC: the stream closed).
    ended: bool,
    error: Option<String>,
}

#[derive(Deserialize)]
struct WsMessage<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: Option<i64>,
    status: Option<&'a str>,
    message: Option<&'a str>,
}

async fn ws_follower(url: String, ready: mpsc::UnboundedSender<Result<(), String>>) -> Received {
    let mut r = Received::default();
    let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            let _ = ready.send(Err(format!("{e}")));
            r.error = Some(format!("connecting: {e}"));
            return r;
        }
    };
    let _ = ready.send(Ok(()));
    while let Some(frame) = ws.next().await {
        let now = unix_us();
        match frame {
            Ok(Message::Text(text)) => match serde_json::from_str::<WsMessage<'_>>(text.as_str()) {
                Ok(m) => match m.kind {
                    "log" => r.lines.push((m.id.unwrap_or(-1), now)),
                    "end" => {
                        r.ended = m.status == Some("completed");
                        if !r.ended {
                            r.error = Some(format!("the task ended {:?}", m.status));
                        }
                    }
                    "error" => {
                        r.error = Some(format!("stream error: {}", m.message.unwrap_or("")));
                    }
                    _ => {}
                },
                Err(e) => r.error = Some(format!("bad message {text}: {e}")),
            },
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) => {
                r.error = Some(format!("{e}"));
                break;
            }
        }
    }
    if !r.ended && r.error.is_none() {
        r.error = Some("the stream closed without an `end` message".into());
    }
    r
}

async fn grpc_follower(
    mut client: Client,
    task_id: i64,
    ready: mpsc::UnboundedSender<Result<(), String>>,
) -> Received {
    let mut r = Received::default();
    let mut stream = match client
        .follow_logs(v1::GetLogsRequest {
            task_id,
            after_id: 0,
            limit: 0,
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => {
            let _ = ready.send(Err(format!("{e}")));
            r.error = Some(format!("FollowLogs: {e}"));
            return r;
        }
    };
    let _ = ready.send(Ok(()));
    loop {
        match stream.message().await {
            Ok(Some(entry)) => r.lines.push((entry.id, unix_us())),
            Ok(None) => {
                r.ended = true;
                break;
            }
            Err(e) => {
                r.error = Some(format!("{e}"));
                break;
            }
        }
    }
    r
}

#[derive(Deserialize)]
struct LogRow {
    id: i64,
    timestamp: String,
    source: String,
}

#[derive(Deserialize)]
struct LogPage {
    entries: Vec<LogRow>,
    next_after_id: Option<i64>,
}

/// The task's whole log, from `GET .../logs`, a page at a time.
async fn all_logs(h: &mut HttpConn, task_id: i64) -> anyhow::Result<Vec<LogRow>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/api/workflow/tasks/{task_id}/logs?after_id={after}");
        let page: LogPage = h.json(Method::GET, &path, None, StatusCode::OK).await?;
        out.extend(page.entries);
        match page.next_after_id {
            Some(a) => after = a,
            None => return Ok(out),
        }
    }
}

struct Fanout {
    followers: usize,
    /// Lines in the task's log (the step's and the engine's).
    task_lines: usize,
    /// Deliveries of the step's lines, across followers.
    delivered: usize,
    /// The step's lines delivered per second, across followers: from the first line's
    /// timestamp to the last receipt.
    lines_per_s: f64,
    /// The coordinator's intake of the step's lines: lines per second between the first
    /// and the last line's timestamps.
    intake_per_s: f64,
    delay_p50_ms: f64,
    delay_p99_ms: f64,
    delay_max_ms: f64,
    lost: usize,
    duplicated: usize,
    /// Line ids a follower received that are not in the task's log.
    unknown: usize,
    out_of_order: usize,
    errors: Vec<String>,
}

/// Runs one task of the log workflow with `followers` followers of `proto` connected before
/// its step writes a line.
async fn fanout(
    c: &Cluster,
    http_addr: &str,
    proto: Proto,
    opts: &Options,
) -> anyhow::Result<Fanout> {
    let gate = c.path(&format!("gate-{proto:?}"));
    let mut client = c.client().await;
    let task = client
        .create_task(v1::CreateTaskRequest {
            workflow: LOG_WORKFLOW.into(),
            name: format!("bench-http-follow-{proto:?}"),
            params: [("gate".to_owned(), gate.display().to_string())].into(),
            priority: None,
        })
        .await?
        .into_inner();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut handles = Vec::new();
    for _ in 0..opts.followers {
        let ready = ready_tx.clone();
        handles.push(match proto {
            Proto::Http => tokio::spawn(ws_follower(
                format!(
                    "ws://{http_addr}/api/workflow/tasks/{}/logs/stream?after_id=0",
                    task.id
                ),
                ready,
            )),
            Proto::Grpc => {
                let client = c.client().await;
                tokio::spawn(grpc_follower(client, task.id, ready))
            }
        });
    }
    drop(ready_tx);
    let mut connected = 0;
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => connected += 1,
            Err(e) => bail!("a {proto:?} follower could not connect: {e}"),
        }
        if connected == opts.followers {
            break;
        }
    }
    // Every follower is subscribed: let the step write.
    std::fs::write(&gate, b"")?;
    let limit = Duration::from_secs(60)
        + Duration::from_secs_f64(opts.lines as f64 / opts.line_rate.max(1) as f64);
    let mut received = Vec::new();
    for h in handles {
        received.push(
            tokio::time::timeout(limit, h)
                .await
                .context("a follower did not finish")??,
        );
    }
    let done = c
        .wait_status(task.id, "completed", Duration::from_secs(30))
        .await;
    ensure!(done.task.is_some(), "the followed task is gone");

    let mut h = HttpConn::connect(http_addr).await?;
    let log = all_logs(&mut h, task.id).await?;
    let expected: HashMap<i64, (i64, bool)> = log
        .iter()
        .map(|l| Ok((l.id, (ts_us(&l.timestamp)?, l.source == "stdout"))))
        .collect::<anyhow::Result<_>>()?;
    let stdout_ts: Vec<i64> = log
        .iter()
        .filter(|l| l.source == "stdout")
        .map(|l| expected[&l.id].0)
        .collect();
    ensure!(
        stdout_ts.len() == opts.lines,
        "the step wrote {} lines, not {}",
        stdout_ts.len(),
        opts.lines
    );
    let (first_ts, last_ts) = (
        stdout_ts.iter().copied().min().unwrap_or_default(),
        stdout_ts.iter().copied().max().unwrap_or_default(),
    );

    let mut f = Fanout {
        followers: opts.followers,
        task_lines: log.len(),
        delivered: 0,
        lines_per_s: 0.0,
        intake_per_s: opts.lines as f64 / ((last_ts - first_ts) as f64 / 1e6).max(1e-6),
        delay_p50_ms: 0.0,
        delay_p99_ms: 0.0,
        delay_max_ms: 0.0,
        lost: 0,
        duplicated: 0,
        unknown: 0,
        out_of_order: 0,
        errors: Vec::new(),
    };
    let mut delays = Vec::with_capacity(opts.followers * opts.lines);
    let mut last_receipt = first_ts;
    for (i, r) in received.iter().enumerate() {
        if let Some(e) = &r.error {
            f.errors.push(format!("follower {i}: {e}"));
        }
        let mut seen: HashMap<i64, usize> = HashMap::with_capacity(log.len());
        let mut prev = i64::MIN;
        for &(id, at) in &r.lines {
            *seen.entry(id).or_default() += 1;
            if id <= prev {
                f.out_of_order += 1;
            }
            prev = id;
            match expected.get(&id) {
                Some(&(ts, true)) => {
                    f.delivered += 1;
                    delays.push(at - ts);
                    last_receipt = last_receipt.max(at);
                }
                Some(_) => {}
                None => f.unknown += 1,
            }
        }
        f.duplicated += seen.values().map(|n| n - 1).sum::<usize>();
        f.lost += expected.keys().filter(|id| !seen.contains_key(id)).count();
    }
    f.lines_per_s = f.delivered as f64 / ((last_receipt - first_ts) as f64 / 1e6).max(1e-6);
    f.delay_p50_ms = percentile(&mut delays, 0.50) as f64 / 1000.0;
    f.delay_p99_ms = percentile(&mut delays, 0.99) as f64 / 1000.0;
    f.delay_max_ms = delays.last().copied().unwrap_or_default() as f64 / 1000.0;
    Ok(f)
}

// ---------------------------------------------------------------------------------------

async fn bench(opts: Options) -> anyhow::Result<()> {
    let mut c = Cluster::new();
    c.bin_dir = crate::target_dir().join("release");
    c.env.push(("RUST_LOG".into(), "warn".into()));
    let (coordinator, grpc_addr, http_addr) = start_coordinator(&c).await?;
    c.addr = grpc_addr;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = c.try_client(None).await {
        ensure!(
            Instant::now() < deadline,
            "the coordinator does not answer: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.start_agent("train", AGENT);
    c.wait_for_agents(1).await;
    c.apply(&create_workflow())
        .await
        .context("applying the create workflow")?;
    c.apply(&log_workflow(opts.lines, opts.line_rate))
        .await
        .context("applying the log workflow")?;

    let params: HashMap<String, String> = [("day".to_owned(), "2026-01-01".to_owned())].into();
    let create_body = serde_json::to_vec(&serde_json::json!({
        "workflow": CREATE_WORKFLOW,
        "params": params,
    }))?;
    let first = c
        .client()
        .await
        .create_task(v1::CreateTaskRequest {
            workflow: CREATE_WORKFLOW.into(),
            name: String::new(),
            params: params.clone(),
            priority: None,
        })
        .await?
        .into_inner();
    let target = Arc::new(Target {
        task_id: first.id,
        create_body: create_body.into(),
        params,
    });

    // ---- requests
    let mut http = Vec::new();
    let mut grpc = Vec::new();
    for _ in 0..opts.concurrency {
        http.push(Conn::Http(HttpConn::connect(&http_addr).await?));
        grpc.push(Conn::Grpc(c.client().await));
    }
    let mut conns: HashMap<Proto, Vec<Conn>> = [(Proto::Http, http), (Proto::Grpc, grpc)].into();
    let mut loads: HashMap<(Proto, Op), Load> = HashMap::new();
    // Warm-up: every path once for a while, not counted.
    for op in [Op::Get, Op::Create] {
        for proto in [Proto::Http, Proto::Grpc] {
            let cs = conns.remove(&proto).unwrap_or_default();
            conns.insert(proto, drive(cs, op, &target, 0.5, None).await?);
        }
    }
    for round in 0..opts.rounds {
        let order = if round % 2 == 0 {
            [Proto::Http, Proto::Grpc]
        } else {
            [Proto::Grpc, Proto::Http]
        };
        for op in [Op::Get, Op::Create] {
            for proto in order {
                let cs = conns.remove(&proto).unwrap_or_default();
                let load = loads.entry((proto, op)).or_default();
                conns.insert(proto, drive(cs, op, &target, opts.secs, Some(load)).await?);
            }
        }
    }
    drop(conns);

    // ---- fan-out
    let ws = fanout(&c, &http_addr, Proto::Http, &opts).await?;
    let gf = fanout(&c, &http_addr, Proto::Grpc, &opts).await?;
    drop(coordinator);

    // ---- report
    println!();
    println!(
        "HTTP face benchmark (release coordinator, SQLite, loopback, no TLS): {} callers, each on \
         its own connection, {} rounds x {:.1} s per call and protocol",
        opts.concurrency, opts.rounds, opts.secs
    );
    println!(
        "  {:<34} {:>14} {:>14} {:>11}",
        "", "HTTP/JSON", "gRPC", "HTTP/gRPC"
    );
    let mut worst_ratio: f64 = 0.0;
    let mut errors = Vec::new();
    for (op, label) in [
        (Op::Get, "GET /tasks/{id} | GetTask"),
        (Op::Create, "POST /tasks | CreateTask"),
    ] {
        let mut h = loads.remove(&(Proto::Http, op)).unwrap_or_default();
        let mut g = loads.remove(&(Proto::Grpc, op)).unwrap_or_default();
        println!("  {label}");
        println!(
            "  {:<34} {:>14.0} {:>14.0} {:>10.2}x",
            "    requests/s",
            h.rate(),
            g.rate(),
            h.rate() / g.rate().max(1e-9)
        );
        for (name, p) in [("p50", 0.50), ("p99", 0.99)] {
            let (hp, gp) = (h.pct_ms(p), g.pct_ms(p));
            let ratio = hp / gp.max(1e-9);
            worst_ratio = worst_ratio.max(ratio);
            println!(
                "  {:<34} {:>14.3} {:>14.3} {:>10.2}x",
                format!("    {name} latency ms"),
                hp,
                gp,
                ratio
            );
        }
        for (proto, l) in [("HTTP", &h), ("gRPC", &g)] {
            if l.errors > 0 {
                errors.push(format!(
                    "{label} over {proto}: {} errors, the first: {}",
                    l.errors,
                    l.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
    }
    println!(
        "  {} followers of one task's log ({} lines at {}), per protocol: {:>4} {:>14} {:>11}",
        opts.followers,
        opts.lines,
        if opts.line_rate == 0 {
            "once".to_owned()
        } else {
            format!("{}/s", opts.line_rate)
        },
        "",
        "",
        ""
    );
    println!("  {:<34} {:>14} {:>14}", "", "WebSocket", "FollowLogs");
    let row = |name: &str, h: f64, g: f64, decimals: usize, ratio: bool| {
        let r = if ratio {
            format!("{:>10.2}x", h / g.max(1e-9))
        } else {
            String::new()
        };
        println!("  {name:<34} {h:>14.decimals$} {g:>14.decimals$} {r}");
    };
    row(
        "    step lines delivered/s",
        ws.lines_per_s,
        gf.lines_per_s,
        0,
        true,
    );
    row(
        "    coordinator intake lines/s",
        ws.intake_per_s,
        gf.intake_per_s,
        0,
        false,
    );
    row(
        "    delay p50 ms",
        ws.delay_p50_ms,
        gf.delay_p50_ms,
        2,
        true,
    );
    row(
        "    delay p99 ms",
        ws.delay_p99_ms,
        gf.delay_p99_ms,
        2,
        true,
    );
    row(
        "    delay max ms",
        ws.delay_max_ms,
        gf.delay_max_ms,
        2,
        true,
    );
    for (name, h, g) in [
        ("    deliveries of step lines", ws.delivered, gf.delivered),
        (
            "    task log lines (all sources)",
            ws.task_lines,
            gf.task_lines,
        ),
        ("    lost (line x follower)", ws.lost, gf.lost),
        ("    duplicated", ws.duplicated, gf.duplicated),
        ("    not in the task's log", ws.unknown, gf.unknown),
        ("    out of order", ws.out_of_order, gf.out_of_order),
        (
            "    followers with an error",
            ws.errors.len(),
            gf.errors.len(),
        ),
    ] {
        println!("  {name:<34} {h:>14} {g:>14}");
    }
    for (proto, f) in [("WebSocket", &ws), ("FollowLogs", &gf)] {
        errors.extend(f.errors.iter().take(5).map(|e| format!("{proto}: {e}")));
    }
    let latency_met = worst_ratio <= GOAL_RATIO;
    let lossless = ws.lost + ws.duplicated + ws.unknown == 0
        && gf.lost + gf.duplicated + gf.unknown == 0
        && ws.followers == opts.followers;
    println!(
        "  goal: HTTP latency within {GOAL_RATIO}x of gRPC's (worst p50/p99 ratio {worst_ratio:.2}x): {}",
        if latency_met { "met" } else { "NOT met" }
    );
    println!(
        "  goal: {} WebSocket followers without lost or repeated lines: {}",
        opts.followers,
        if lossless { "met" } else { "NOT met" }
    );
    for e in &errors {
        println!("  error: {e}");
    }
    if !lossless || !errors.is_empty() {
        bail!(
            "the HTTP benchmark saw {} (lines lost or repeated: WebSocket {}, FollowLogs {})",
            if errors.is_empty() {
                "no errors".to_owned()
            } else {
                format!("{} errors", errors.len())
            },
            ws.lost + ws.duplicated + ws.unknown,
            gf.lost + gf.duplicated + gf.unknown
        );
    }
    Ok(())
}
