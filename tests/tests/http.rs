//! The coordinator's HTTP/JSON face (seed 000 §9) through the real daemon: seed 000 §14's
//! curl request runs the CTR pipeline to the end, every §9 path answers as documented, the
//! WebSocket and Server-Sent Events streams deliver a task's log whole and in order, a client
//! that stops reading costs the coordinator no memory, bad input is refused with a body that
//! names the problem and changes nothing, and tokens, sessions and CSRF guard it all.

use std::time::{Duration, Instant};

use ferry_e2e::Cluster;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(120);

/// An HTTP client for `c`'s API: trusting the cluster's CA when it has one.
fn http_client(c: &Cluster, timeout: Option<Duration>) -> reqwest::Client {
    let mut b = reqwest::Client::builder();
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    if let Some(s) = &c.secure {
        let pem = std::fs::read(s.pki.join("ca.pem")).expect("read the cluster's CA");
        b = b
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("the CA parses"));
    }
    b.build().expect("build the HTTP client")
}

/// Calls the API and gives back the status and the JSON body (`Null` for an empty one).
struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    fn new(c: &Cluster) -> Api {
        Api {
            base: c.http_url(),
            http: http_client(c, Some(Duration::from_secs(60))),
            token: c.secure.as_ref().map(|s| s.admin_token.clone()),
        }
    }

    fn with_token(&self, token: Option<&str>) -> Api {
        Api {
            base: self.base.clone(),
            http: self.http.clone(),
            token: token.map(str::to_owned),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let res = r.send().await.expect("the HTTP API answers");
        body(res).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.request(Method::POST, path).json(&body))
            .await
    }

    async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::POST, path)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// GET that must answer 200.
    async fn ok(&self, path: &str) -> Value {
        let (status, v) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {v}");
        v
    }

    async fn task_status(&self, id: i64) -> String {
        let v = self.ok(&format!("/api/workflow/tasks/{id}/status")).await;
        v["status"].as_str().expect("a status").to_owned()
    }

    /// Polls `GET .../status` until the task is `status`; panics with its log otherwise.
    async fn wait_status(&self, id: i64, status: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.task_status(id).await;
            if now == status {
                return;
            }
            if Instant::now() > deadline {
                let detail = self.ok(&format!("/api/workflow/tasks/{id}")).await;
                let logs = self.all_logs(id).await;
                // The end of the log, each line cut short: a flood's lines would bury the
                // reason (a failed step's error is among the last lines).
                let text: Vec<String> = logs
                    .iter()
                    .rev()
                    .take(40)
                    .rev()
                    .filter_map(|l| l["message"].as_str())
                    .map(|m| m.chars().take(300).collect())
                    .collect();
                panic!(
                    "task {id} is {now}, not {status}: {detail:#}\nthe last of {} log lines:\n{}",
                    logs.len(),
                    text.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every log line of the task, page by page.
    async fn all_logs(&self, id: i64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .ok(&format!(
                    "/api/workflow/tasks/{id}/logs?after_id={after}&limit=1000"
                ))
                .await;
            out.extend(page["entries"].as_array().expect("entries").iter().cloned());
            match page["next_after_id"].as_i64() {
                Some(n) => after = n,
                None => return out,
            }
        }
    }

    async fn task_count(&self) -> usize {
        let v = self.ok("/api/workflow/tasks").await;
        v["tasks"].as_array().expect("tasks").len()
    }
}

async fn body(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.expect("read the answer");
    if text.is_empty() {
        return (status, Value::Null);
    }
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text}"));
    (status, v)
}

/// The error body every refusal carries; gives back (code, field).
fn error_of(v: &Value) -> (String, Option<String>) {
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error body names the problem: {v}"
    );
    (
        e["code"].as_str().expect("error.code").to_owned(),
        e["field"].as_str().map(str::to_owned),
    )
}

/// A workflow of `exec` steps (name, inputs, shell script) on the data-source agent.
fn exec_workflow(name: &str, steps: &[(&str, &[&str], &str)]) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|(step, inputs, script)| {
            json!({
                "name": step,
                "kind": "exec",
                "placement": {"role": "data_source"},
                "inputs": inputs,
                "retry": {"max_retries": 0},
                "params": {"program": "sh", "args": ["-c", script]},
            })
        })
        .collect();
    json!({"name": name, "steps": steps})
}

async fn apply(api: &Api, def: Value) {
    let (status, v) = api.post("/api/workflows", def).await;
    assert_eq!(status, StatusCode::CREATED, "apply: {v}");
}

/// Creates a task of a stored workflow; gives back its id.
async fn start_task(api: &Api, workflow: &str, params: Value) -> i64 {
    let (status, v) = api
        .post(
            "/api/workflow/tasks",
            json!({"workflow": workflow, "params": params}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "create: {v}");
    v["task_id"].as_i64().expect("task_id")
}

/// A cluster without TLS or tokens. This suite tests the HTTP face, not agent liveness, and
/// its log flood starves every process on a small machine: agents are declared lost only
/// after 20 s of silence (the liveness suites keep 3 s).
async fn plain_cluster(agents: usize) -> Cluster {
    let mut c = Cluster::with_agent_timeout(20);
    c.start_coordinator().await;
    for i in 0..agents {
        c.start_agent("source", &format!("src-{i}"));
    }
    c.wait_for_agents(agents).await;
    c
}

fn ws_url(c: &Cluster, id: i64, after: i64) -> String {
    format!(
        "ws://{}/api/workflow/tasks/{id}/logs/stream?after_id={after}",
        c.http_addr
    )
}

/// Reads a task's WebSocket stream to its end: the messages, the last being `end`.
async fn read_ws(url: String) -> Vec<Value> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the WebSocket opens");
    let mut out = Vec::new();
    loop {
        let frame = tokio::time::timeout(T, ws.next())
            .await
            .expect("a message in time")
            .unwrap_or_else(|| panic!("the stream closed before `end`: {out:?}"))
            .expect("a WebSocket frame");
        match frame {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("each frame is JSON");
                let end = v["type"] == "end";
                assert_ne!(v["type"], "error", "{v}");
                out.push(v);
                if end {
                    return out;
                }
            }
            Message::Close(f) => panic!("closed before `end` ({f:?}): {out:?}"),
            _ => {}
        }
    }
}

/// Reads a task's Server-Sent Events to the `end` event: (event name, data) pairs.
async fn read_sse(http: reqwest::Client, url: String) -> Vec<(String, Value)> {
    let mut res = http
        .get(url)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .expect("the event stream opens");
    assert_eq!(res.status(), StatusCode::OK);
    let kind = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    let mut buf = String::new();
    let mut out = Vec::new();
    loop {
        let chunk = tokio::time::timeout(T, res.chunk())
            .await
            .expect("an event in time")
            .expect("read the event stream")
            .unwrap_or_else(|| panic!("the event stream ended before `end`: {out:?}"));
        buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8 events"));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let mut event = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let v: Value = serde_json::from_str(&data).expect("each event's data is JSON");
            let end = event == "end";
            out.push((event, v));
            if end {
                return out;
            }
        }
    }
}

fn log_ids(messages: &[Value]) -> Vec<i64> {
    messages
        .iter()
        .filter(|m| m["type"] == "log")
        .map(|m| m["id"].as_i64().expect("a log message has an id"))
        .collect()
}

fn assert_strictly_increasing(ids: &[i64], what: &str) {
    for w in ids.windows(2) {
        assert!(w[0] < w[1], "{what}: ids not strictly increasing at {w:?}");
    }
}

// ---- 1. seed 000 §14's curl request ----

/// Seed 000 §14's `curl -X POST .../api/workflow/tasks` with its body, unchanged, against the
/// three agents: 201 with `task_id` and `status`, and the task runs the whole CTR pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_curl_request_creates_a_task_that_completes() {
    let _shared = MEASURED_ALONE.read().await;
    let sshd = ferry_e2e::sshd::Sshd::start();
    let area = sshd.path("area");
    std::fs::create_dir_all(&area).expect("area");
    let warehouse = area.join("source/warehouse");
    let mut spec = ferry_sampledata::SampleSpec::new(3_000, 7);
    spec.infer_rows = 600;
    spec.rows_per_part = 1_500;
    ferry_sampledata::generate(&warehouse, &spec).expect("sample data");
    // The request filters on `date`: the tables are partitioned by it.
    for (table, day) in [
        ("campaign_sample", "2026-01-21"),
        ("campaign_infer", "2026-01-22"),
    ] {
        let dir = warehouse.join("default.db").join(table);
        std::fs::rename(
            dir.join(format!("dt={day}")),
            dir.join(format!("date={day}")),
        )
        .expect("partition by date");
    }
    let server = |name: &str, role: &str| {
        format!(
            "  {name}:\n    host: 127.0.0.1\n    port: {}\n    username: {}\n    key_path: \"{}\"\n    role: {role}\n",
            sshd.port,
            ferry_e2e::sshd::whoami(),
            sshd.path("user_key").display(),
        )
    };
    let agent_lines = format!(
        "  roots: [\"{}\"]\n  known_hosts: \"{}\"\n",
        area.display(),
        sshd.path("known_hosts").display()
    );
    let bin_dir = ferry_e2e::bin_dir();
    let extra = format!(
        "servers:\n{}{}{}transfer:\n  remote_ferry: \"{}\"\nsql:\n  warehouse_dir: \"{}\"\n  rows_per_part: 1000\n",
        server("server_21", "data_source"),
        server("training_server", "training"),
        server("inference_server", "inference"),
        bin_dir.join("ferry").display(),
        warehouse.display(),
    );
    let mut c = Cluster::with_agent_config(&agent_lines, &extra);
    c.start_coordinator().await;
    let roots = |host: &str| {
        vec![
            (
                "FERRY_STORAGE__STAGING_DIR".to_owned(),
                area.join(host).join("staging").display().to_string(),
            ),
            (
                "FERRY_FUXICTR_PATHS__DATA_ROOT".to_owned(),
                area.join(host).join("data").display().to_string(),
            ),
            (
                "FERRY_FUXICTR_PATHS__MODEL_ROOT".to_owned(),
                area.join(host).join("models").display().to_string(),
            ),
        ]
    };
    c.start_agent_with_env("source", "server_21", &roots("source"));
    c.start_agent_with_env("train", "training_server", &roots("train"));
    c.start_agent_with_env("infer", "inference_server", &roots("infer"));
    c.wait_for_agents(3).await;

    // Exactly seed 000 §14's body, sent as curl sends it.
    let body = r#"{
        "name": "campaign_2026_01_22",
        "experiment_id": "MMoE_test_v1",
        "sample_sql": "SELECT * FROM campaign_sample WHERE date = '2026-01-21'",
        "infer_sql": "SELECT * FROM campaign_infer WHERE date = '2026-01-22'",
        "hdfs_path": "/hdfs/data/campaign",
        "hive_table": "prod.campaign_scores"
    }"#;
    let api = Api::new(&c);
    let (status, v) = api
        .send(
            api.request(Method::POST, "/api/workflow/tasks")
                .header(header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let id = v["task_id"].as_i64().expect("the answer has task_id");
    let first = v["status"].as_str().expect("the answer has status");
    assert!(
        ["pending", "running"].contains(&first),
        "a new task is pending or running: {v}"
    );
    assert_eq!(v["workflow"], "ctr_pipeline", "{v}");

    api.wait_status(id, "completed", Duration::from_secs(300))
        .await;
    let detail = api.ok(&format!("/api/workflow/tasks/{id}")).await;
    let steps = detail["steps"].as_array().expect("steps");
    assert!(
        steps.iter().all(|s| s["status"] == "completed"),
        "every step completed: {detail:#}"
    );
    let metrics = api.ok(&format!("/api/workflow/tasks/{id}/metrics")).await;
    assert!(
        metrics["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .any(|m| m["name"].as_str().is_some_and(|n| n.contains("auc"))),
        "training reported an AUC: {metrics}"
    );
    let logs = api.all_logs(id).await;
    assert!(
        logs.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("rows") && m.contains("prod.campaign_scores"))),
        "the scores were loaded into prod.campaign_scores: {logs:#?}"
    );
}

// ---- 2. every §9 path ----

/// Seed 000 §9's paths, each as documented, and a sample of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_section_9_path_answers_as_documented() {
    let _shared = MEASURED_ALONE.read().await;
    let c = plain_cluster(1).await;
    let api = Api::new(&c);
    let flag = c.path("flag");
    apply(
        &api,
        exec_workflow(
            "two_steps",
            &[
                ("first", &[], "sleep ${param.wait}; echo first done"),
                (
                    "second",
                    &["first"],
                    "test -f ${param.flag} && echo second done",
                ),
            ],
        ),
    )
    .await;

    // Workflows: list and show.
    let list = api.ok("/api/workflows").await;
    assert!(
        list["workflows"]
            .as_array()
            .expect("workflows")
            .iter()
            .any(|w| w["name"] == "two_steps"),
        "{list}"
    );
    let shown = api.ok("/api/workflows/two_steps").await;
    assert_eq!(
        shown["definition"]["steps"].as_array().map(Vec::len),
        Some(2)
    );
    let (status, v) = api.get("/api/workflows/no_such_workflow").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");

    // POST: a task, 201 with task_id and status.
    let params = json!({"wait": "3", "flag": flag.display().to_string()});
    let id = start_task(&api, "two_steps", params.clone()).await;

    // GET list, GET one, status, steps.
    let list = api.ok("/api/workflow/tasks").await;
    assert!(
        list["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .any(|t| t["task_id"] == id),
        "{list}"
    );
    let one = api.ok(&format!("/api/workflow/tasks/{id}")).await;
    assert_eq!(one["task_id"], id);
    assert_eq!(one["workflow"], "two_steps");
    assert_eq!(one["steps"].as_array().map(Vec::len), Some(2), "{one}");
    let steps = api.ok(&format!("/api/workflow/tasks/{id}/steps")).await;
    let names: Vec<&str> = steps["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["first", "second"]);

    // Pause while `first` sleeps, then resume.
    api.wait_status(id, "running", T).await;
    let (status, v) = api
        .post_empty(&format!("/api/workflow/tasks/{id}/pause"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "paused", "{v}");
    assert_eq!(api.task_status(id).await, "paused");
    let (status, v) = api
        .post_empty(&format!("/api/workflow/tasks/{id}/resume"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "running", "{v}");

    // `second` fails without the flag; retry after it is set completes the task.
    api.wait_status(id, "failed", T).await;
    std::fs::write(&flag, "").expect("set the flag");
    let (status, v) = api
        .post_empty(&format!("/api/workflow/tasks/{id}/retry"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "running", "{v}");
    api.wait_status(id, "completed", T).await;

    // Logs, metrics, progress.
    let logs = api.ok(&format!("/api/workflow/tasks/{id}/logs")).await;
    let messages: Vec<&str> = logs["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert!(messages.contains(&"first done"), "{messages:?}");
    assert!(messages.contains(&"second done"), "{messages:?}");
    let page = api
        .ok(&format!("/api/workflow/tasks/{id}/logs?after_id=0&limit=1"))
        .await;
    assert_eq!(page["entries"].as_array().map(Vec::len), Some(1));
    assert!(page["next_after_id"].as_i64().is_some(), "{page}");
    let metrics = api.ok(&format!("/api/workflow/tasks/{id}/metrics")).await;
    assert!(metrics["metrics"].is_array(), "{metrics}");
    let progress = api.ok(&format!("/api/workflow/tasks/{id}/progress")).await;
    let progress_steps: Vec<&str> = progress["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["step"].as_str())
        .collect();
    assert_eq!(progress_steps, ["first", "second"], "{progress}");

    // The stream of a finished task: its whole log, then `end` with the final state.
    let messages = read_ws(ws_url(&c, id, 0)).await;
    let end = messages.last().expect("an end message");
    assert_eq!(end["status"], "completed", "{end}");
    assert_eq!(
        log_ids(&messages),
        logs["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|l| l["id"].as_i64())
            .collect::<Vec<_>>()
    );
    // The same path without a WebSocket upgrade says what it is.
    let (status, v) = api
        .get(&format!("/api/workflow/tasks/{id}/logs/stream"))
        .await;
    assert!(status.is_client_error(), "{status}: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("WebSocket")),
        "{v}"
    );

    // DELETE cancels a running task.
    let long = start_task(
        &api,
        "two_steps",
        json!({"wait": "60", "flag": flag.display().to_string()}),
    )
    .await;
    api.wait_status(long, "running", T).await;
    let (status, v) = api.delete(&format!("/api/workflow/tasks/{long}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(api.task_status(long).await, "cancelled");
    // Resuming or pausing what cannot be is a 4xx naming why, not a change.
    let (status, v) = api
        .post_empty(&format!("/api/workflow/tasks/{long}/pause"))
        .await;
    assert!(status.is_client_error(), "{status}: {v}");
    error_of(&v);
    assert_eq!(api.task_status(long).await, "cancelled");

    // Graphs: create and add a node.
    let (status, v) = api
        .post(
            "/api/graphs",
            json!({"name": "g1", "description": "a graph"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = api
        .post(
            "/api/graphs/g1/nodes",
            json!({"name": "hello", "service_type": "STANDALONE", "agent": "src-0",
                   "entrypoint": ["echo", "hello"], "interfaces": [{"type": "STDOUT"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["definition"]["nodes"][0]["name"], "hello", "{v}");
    let graphs = api.ok("/api/graphs").await;
    assert_eq!(graphs["graphs"][0]["name"], "g1", "{graphs}");

    // Agents, whoami, /metrics, health, the OpenAPI document.
    let agents = api.ok("/api/agents").await;
    assert_eq!(agents["agents"][0]["name"], "src-0", "{agents}");
    assert_eq!(agents["agents"][0]["connected"], true, "{agents}");
    let who = api.ok("/api/whoami").await;
    assert_eq!(who["auth_enabled"], false, "{who}");
    let res = api
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.expect("metrics text");
    assert!(text.contains("# TYPE"), "Prometheus text: {text}");
    assert_eq!(api.ok("/api/health").await["status"], "serving");
    let doc = api.ok("/api/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/workflow/tasks",
        "/api/workflow/tasks/{id}",
        "/api/workflow/tasks/{id}/retry",
        "/api/workflow/tasks/{id}/pause",
        "/api/workflow/tasks/{id}/resume",
        "/api/workflow/tasks/{id}/status",
        "/api/workflow/tasks/{id}/steps",
        "/api/workflow/tasks/{id}/logs",
        "/api/workflow/tasks/{id}/logs/stream",
        "/api/workflow/tasks/{id}/metrics",
        "/api/workflow/tasks/{id}/progress",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    let (status, v) = api.get("/api/no/such/path").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&v).0, "not_found");
}

// ---- 3. the streams deliver every line once, in order ----

/// A running task's WebSocket stream and its Server-Sent Events, both opened as it starts:
/// every log line once, ids strictly increasing, the same set `GET .../logs` holds after the
/// end, and a last message `{"type": "end", "status": ...}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_deliver_every_line_once_in_order_and_end_with_the_state() {
    let _shared = MEASURED_ALONE.read().await;
    let c = plain_cluster(1).await;
    let api = Api::new(&c);
    // Lines in bursts over a few seconds, so the streams see history and live lines.
    let script = |tag: &str| {
        format!("for i in $(seq 1 30); do seq -f '{tag}-'$i'-%g' 1 100; sleep 0.1; done")
    };
    apply(
        &api,
        exec_workflow(
            "chatty",
            &[
                ("one", &[], &script("one")),
                ("two", &["one"], &script("two")),
            ],
        ),
    )
    .await;
    let id = start_task(&api, "chatty", json!({})).await;
    let sse_http = http_client(&c, None);
    let (ws, sse) = tokio::join!(
        read_ws(ws_url(&c, id, 0)),
        read_sse(
            sse_http,
            format!("{}/api/workflow/tasks/{id}/events?after_id=0", c.http_url())
        )
    );
    assert_eq!(api.task_status(id).await, "completed");
    let stored = api.all_logs(id).await;
    let stored_ids: Vec<i64> = stored.iter().filter_map(|l| l["id"].as_i64()).collect();
    let stdout = stored.iter().filter(|l| l["source"] == "stdout").count();
    assert_eq!(stdout, 6_000, "both steps' lines are stored");

    let end = ws.last().expect("messages");
    assert_eq!(end["type"], "end");
    assert_eq!(end["status"], "completed", "{end}");
    let ws_ids = log_ids(&ws);
    assert_strictly_increasing(&ws_ids, "WebSocket");
    assert_eq!(
        ws_ids, stored_ids,
        "the WebSocket carried exactly the stored lines"
    );
    // The lines' text came through in order too.
    let ws_text: Vec<&str> = ws
        .iter()
        .filter(|m| m["type"] == "log" && m["source"] == "stdout")
        .filter_map(|m| m["message"].as_str())
        .collect();
    assert_eq!(ws_text.first(), Some(&"one-1-1"));
    assert_eq!(ws_text.last(), Some(&"two-30-100"));
    assert!(
        ws.iter()
            .any(|m| m["type"] == "step" && m["step"] == "two" && m["status"] == "completed"),
        "step states are streamed too"
    );

    let (last_event, last) = sse.last().expect("events");
    assert_eq!(last_event, "end");
    assert_eq!(last["status"], "completed", "{last}");
    let sse_messages: Vec<Value> = sse
        .iter()
        .map(|(event, v)| {
            assert_eq!(v["type"], event.as_str(), "an event is named by its type");
            v.clone()
        })
        .collect();
    let sse_ids = log_ids(&sse_messages);
    assert_strictly_increasing(&sse_ids, "SSE");
    assert_eq!(
        sse_ids, stored_ids,
        "the event stream carried exactly the stored lines"
    );

    // From a given line: only what follows it.
    let middle = stored_ids[stored_ids.len() / 2];
    let rest = read_ws(ws_url(&c, id, middle)).await;
    let expected: Vec<i64> = stored_ids.iter().copied().filter(|i| *i > middle).collect();
    assert_eq!(log_ids(&rest), expected);
}

// ---- 4. a client that stops reading ----

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process lives");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The memory test runs alone; the others may run together (they take it shared).
static MEASURED_ALONE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// WebSocket and event-stream clients that never read, following a task that writes far more
/// log than the bound: the coordinator's resident memory peaks at most the bound above the
/// same flood followed by a client that reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_grow_the_coordinator() {
    // Measured with no other test's daemons competing for the two cores: a starved
    // coordinator buffers more before its followers' queues apply their bound.
    let _alone = MEASURED_ALONE.write().await;
    const BOUND_MIB: u64 = 64;
    const LINE: usize = 1000;
    let c = plain_cluster(1).await;
    let api = Api::new(&c);
    let pid = c.coordinator_pid().expect("the coordinator runs");
    apply(
        &api,
        exec_workflow(
            "flood",
            &[(
                "flood",
                &[],
                &format!("yes \"$(printf '%0{LINE}d' 0)\" | head -n ${{param.lines}}"),
            )],
        ),
    )
    .await;
    // A warm-up run of the same size, followed by a client that reads everything, brings the
    // coordinator to what it holds for any such task whoever follows it (the engine's ring
    // of recent events, the database's cache, the allocator's pages): the baseline.
    let lines: u64 = 280_000;
    let warm = start_task(&api, "flood", json!({"lines": lines.to_string()})).await;
    let read = read_ws(ws_url(&c, warm, 0)).await;
    assert!(
        log_ids(&read).len() as u64 >= lines,
        "the reader got every line"
    );
    api.wait_status(warm, "completed", T).await;
    let before = rss_kib(pid);

    // The control: the same flood followed by a client that reads everything. Its peak is
    // what processing such a flood costs, followers or not (the engine's batches, the
    // database, the allocator); stalled followers may add at most the bound to it.
    let control = start_task(&api, "flood", json!({"lines": lines.to_string()})).await;
    let reader = tokio::spawn(read_ws(ws_url(&c, control, 0)));
    let mut control_peak = before;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        control_peak = control_peak.max(rss_kib(pid));
        if api.task_status(control).await == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the control flood did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let read = reader.await.expect("the reader ran");
    assert!(
        log_ids(&read).len() as u64 >= lines,
        "the control's reader got every line"
    );
    control_peak = control_peak.max(rss_kib(pid));

    let id = start_task(&api, "flood", json!({"lines": lines.to_string()})).await;
    // Four followers that never read: two WebSockets, two event streams.
    let mut stalled_ws = Vec::new();
    for _ in 0..2 {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(&c, id, 0))
            .await
            .expect("the WebSocket opens");
        stalled_ws.push(ws);
    }
    let sse_http = http_client(&c, None);
    let mut stalled_sse = Vec::new();
    for _ in 0..2 {
        let res = sse_http
            .get(format!("{}/api/workflow/tasks/{id}/events", c.http_url()))
            .send()
            .await
            .expect("the event stream opens");
        assert_eq!(res.status(), StatusCode::OK);
        stalled_sse.push(res);
    }
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        peak = peak.max(rss_kib(pid));
        if api.task_status(id).await == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "the flood did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    peak = peak.max(rss_kib(pid));

    // What passed through the coordinator's log while the followers did not read.
    let last = api
        .ok(&format!("/api/workflow/tasks/{id}/logs?after_id=0&limit=1"))
        .await["entries"][0]["id"]
        .as_i64()
        .expect("a first line");
    let tail = api.all_logs_after(id, last + lines as i64 - 10).await;
    let stored = tail
        .last()
        .and_then(|l| l["id"].as_i64())
        .map_or(0, |end| (end - last + 1) as u64);
    let passed_mib = stored * (LINE as u64 + 1) / (1024 * 1024);
    assert!(
        passed_mib >= 4 * BOUND_MIB,
        "the log ({stored} lines, {passed_mib} MiB) is at least four times the bound"
    );
    let grew_mib = peak.saturating_sub(control_peak) / 1024;
    eprintln!(
        "stalled followers: peak {} MiB; with a reader: peak {} MiB; after the warm-up {} MiB; \
         {passed_mib} MiB of log passed",
        peak / 1024,
        control_peak / 1024,
        before / 1024
    );
    assert!(
        grew_mib <= BOUND_MIB,
        "with followers that did not read, the coordinator peaked {grew_mib} MiB above the same \
         flood with a reader ({} MiB against {} MiB) while {passed_mib} MiB of log passed",
        peak / 1024,
        control_peak / 1024
    );
    // The coordinator still answers, and a reader that comes now gets the whole end.
    let (status, _) = api.get("/api/health").await;
    assert_eq!(status, StatusCode::OK);
    drop(stalled_ws);
    drop(stalled_sse);
}

impl Api {
    /// Log lines after `after_id` (at most one page).
    async fn all_logs_after(&self, id: i64, after_id: i64) -> Vec<Value> {
        let page = self
            .ok(&format!(
                "/api/workflow/tasks/{id}/logs?after_id={after_id}"
            ))
            .await;
        page["entries"].as_array().expect("entries").clone()
    }
}

// ---- 5. bad input ----

/// Bad JSON, a missing field, a wrong type, an unknown task, a body over 32 MiB, the wrong
/// content type: each a 4xx whose body names the problem, and no task appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_problem_named_and_nothing_changes() {
    let _shared = MEASURED_ALONE.read().await;
    let c = plain_cluster(0).await;
    let api = Api::new(&c);
    assert_eq!(api.task_count().await, 0);
    let good = json!({
        "name": "campaign_2026_01_22",
        "experiment_id": "MMoE_test_v1",
        "sample_sql": "SELECT * FROM campaign_sample WHERE date = '2026-01-21'",
        "infer_sql": "SELECT * FROM campaign_infer WHERE date = '2026-01-22'",
        "hdfs_path": "/hdfs/data/campaign",
        "hive_table": "prod.campaign_scores",
    });
    let raw = |body: Vec<u8>, kind: &str| {
        api.request(Method::POST, "/api/workflow/tasks")
            .header(header::CONTENT_TYPE, kind)
            .body(body)
    };

    // Not JSON.
    let (status, v) = api
        .send(raw(b"{\"name\": \"x\",".to_vec(), "application/json"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(error_of(&v).0, "invalid_argument");
    assert_eq!(api.task_count().await, 0);

    // A missing field: named.
    let mut missing = good.clone();
    missing
        .as_object_mut()
        .expect("object")
        .remove("hive_table");
    let (status, v) = api.post("/api/workflow/tasks", missing).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        error_of(&v),
        ("invalid_argument".to_owned(), Some("hive_table".to_owned()))
    );
    assert_eq!(api.task_count().await, 0);

    // A wrong type: named.
    let mut wrong = good.clone();
    wrong["name"] = json!(3);
    let (status, v) = api.post("/api/workflow/tasks", wrong).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        error_of(&v),
        ("invalid_argument".to_owned(), Some("name".to_owned()))
    );
    let mut wrong = good.clone();
    wrong["epochs"] = json!("many");
    let (status, v) = api.post("/api/workflow/tasks", wrong).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(error_of(&v).1.as_deref(), Some("epochs"), "{v}");
    // An invalid value (the service's own check): named too.
    let mut bad = good.clone();
    bad["hive_table"] = json!("prod.scores; DROP TABLE x");
    let (status, v) = api.post("/api/workflow/tasks", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    // Fails while the service's conversion of the request (api.rs, `create_ctr_task`) turns
    // its `RequestError` into a bare `Status` and so drops the field it names.
    assert_eq!(error_of(&v).1.as_deref(), Some("hive_table"), "{v}");
    // Not an object.
    let (status, v) = api.post("/api/workflow/tasks", json!([1, 2])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    error_of(&v);
    assert_eq!(api.task_count().await, 0);

    // An unknown task: 404 for reading it and for acting on it.
    for (method, path) in [
        (Method::GET, "/api/workflow/tasks/424242"),
        (Method::GET, "/api/workflow/tasks/424242/logs"),
        (Method::POST, "/api/workflow/tasks/424242/retry"),
        (Method::DELETE, "/api/workflow/tasks/424242"),
    ] {
        let (status, v) = api.send(api.request(method.clone(), path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        assert_eq!(error_of(&v).0, "not_found");
    }
    // A task id that is not a number.
    let (status, v) = api.get("/api/workflow/tasks/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    error_of(&v);
    // A bad query parameter: named.
    let (status, v) = api.get("/api/workflow/tasks?limit=lots").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(error_of(&v).1.as_deref(), Some("limit"), "{v}");

    // Over 32 MiB: 413.
    let mut huge = good.clone();
    huge["name"] = json!("x".repeat(33 * 1024 * 1024));
    let big = serde_json::to_vec(&huge).expect("JSON");
    assert!(big.len() > 32 * 1024 * 1024);
    let (status, v) = api.send(raw(big, "application/json")).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(error_of(&v).0, "payload_too_large");
    assert_eq!(api.task_count().await, 0);

    // The wrong content type: 415, even for a body that is JSON.
    let text = serde_json::to_vec(&good).expect("JSON");
    let (status, v) = api.send(raw(text.clone(), "text/plain")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
    assert_eq!(error_of(&v).0, "unsupported_media_type");
    let (status, v) = api
        .send(api.request(Method::POST, "/api/workflow/tasks").body(text))
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");

    assert_eq!(api.task_count().await, 0, "no refused request left a task");
}

// ---- 6. authentication ----

fn set_cookie(res: &reqwest::Response) -> String {
    res.headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a Set-Cookie header")
        .to_owned()
}

/// HTTPS with the cluster's CA; 401 without a token; a viewer cannot change anything; login
/// gives an HttpOnly, SameSite=Strict cookie that needs the CSRF token to change state; a
/// revoked token's session ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_sessions_and_csrf_guard_the_http_api() {
    let _shared = MEASURED_ALONE.read().await;
    let mut c = Cluster::secure("");
    c.start_coordinator().await;
    assert!(c.http_url().starts_with("https://"), "{}", c.http_url());
    let admin = Api::new(&c);
    let anonymous = admin.with_token(None);

    // HTTPS with the cluster's CA works; a client without it is refused by TLS.
    let who = admin.ok("/api/whoami").await;
    assert_eq!(who["auth_enabled"], true, "{who}");
    assert!(
        who["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .any(|r| r == "admin"),
        "{who}"
    );
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .expect("client");
    assert!(
        untrusting
            .get(format!("{}/api/health", c.http_url()))
            .send()
            .await
            .is_err(),
        "a certificate from another CA is not trusted"
    );

    // No token: 401 with a challenge; a wrong one: 401.
    let res = anonymous
        .request(Method::GET, "/api/workflow/tasks")
        .send()
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
    let (_, v) = body(res).await;
    assert_eq!(error_of(&v).0, "unauthenticated");
    let (status, _) = admin
        .with_token(Some("ferry_not_a_token"))
        .get("/api/workflow/tasks")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = anonymous.get("/metrics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Health needs no token.
    let (status, _) = anonymous.get("/api/health").await;
    assert_eq!(status, StatusCode::OK);

    // A viewer reads but cannot change anything.
    let (status, v) = admin
        .post("/api/tokens", json!({"name": "vera", "roles": ["viewer"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let viewer_secret = v["token"].as_str().expect("the secret").to_owned();
    let viewer_id = v["info"]["id"].as_i64().expect("token id");
    let viewer = admin.with_token(Some(&viewer_secret));
    assert_eq!(viewer.task_count().await, 0);
    let def = exec_workflow("w", &[("s", &[], "echo hi")]);
    let (status, v) = viewer.post("/api/workflows", def.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(error_of(&v).0, "permission_denied");
    let (status, v) = viewer
        .post("/api/workflow/tasks", json!({"workflow": "w"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, _) = viewer.get("/api/tokens").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Admin surfaces: tokens and the audit log.
    let tokens = admin.ok("/api/tokens").await;
    assert!(
        tokens["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .any(|t| t["name"] == "vera" && t.get("token").is_none()),
        "tokens are listed without their secrets: {tokens}"
    );
    let audit = admin.ok("/api/audit").await;
    assert!(
        audit["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["target"].as_str().is_some_and(|t| t.contains("vera"))
                || e["detail"].as_str().is_some_and(|t| t.contains("vera"))),
        "creating the token is audited: {audit}"
    );
    let metrics = admin
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("answer");
    assert_eq!(metrics.status(), StatusCode::OK);

    // Log in with the admin token: an HttpOnly, SameSite=Strict, Secure cookie.
    let admin_token = c.secure.as_ref().expect("secure").admin_token.clone();
    let res = anonymous
        .request(Method::POST, "/api/login")
        .json(&json!({"token": admin_token}))
        .send()
        .await
        .expect("login answers");
    assert_eq!(res.status(), StatusCode::OK);
    let cookie_header = set_cookie(&res);
    let attrs: Vec<String> = cookie_header
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert!(attrs.iter().any(|a| a == "httponly"), "{cookie_header}");
    assert!(
        attrs.iter().any(|a| a == "samesite=strict"),
        "{cookie_header}"
    );
    assert!(attrs.iter().any(|a| a == "secure"), "{cookie_header}");
    let cookie = cookie_header
        .split(';')
        .next()
        .expect("name=value")
        .to_owned();
    assert!(cookie.starts_with("ferry_session="), "{cookie}");
    let (_, login) = body(res).await;
    let csrf = login["csrf_token"]
        .as_str()
        .expect("the answer carries the CSRF token")
        .to_owned();

    // Reading with the cookie needs no CSRF token.
    let (status, v) = anonymous
        .send(
            anonymous
                .request(Method::GET, "/api/whoami")
                .header(header::COOKIE, &cookie),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["csrf_token"], csrf.as_str());
    // Changing state with the cookie but without the CSRF token: 403, nothing stored.
    let (status, v) = anonymous
        .send(
            anonymous
                .request(Method::POST, "/api/workflows")
                .header(header::COOKIE, &cookie)
                .json(&def),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, _) = anonymous
        .send(
            anonymous
                .request(Method::POST, "/api/workflows")
                .header(header::COOKIE, &cookie)
                .header("X-CSRF-Token", "not-the-token")
                .json(&def),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, v) = admin.get("/api/workflows/w").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    // With it: done.
    let (status, v) = anonymous
        .send(
            anonymous
                .request(Method::POST, "/api/workflows")
                .header(header::COOKIE, &cookie)
                .header("X-CSRF-Token", &csrf)
                .json(&def),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    admin.ok("/api/workflows/w").await;

    // A session opened with a token ends when the token is revoked.
    let res = anonymous
        .request(Method::POST, "/api/login")
        .json(&json!({"token": viewer_secret}))
        .send()
        .await
        .expect("login answers");
    assert_eq!(res.status(), StatusCode::OK);
    let viewer_cookie = set_cookie(&res)
        .split(';')
        .next()
        .expect("name=value")
        .to_owned();
    let with_viewer_cookie = || {
        anonymous
            .request(Method::GET, "/api/workflow/tasks")
            .header(header::COOKIE, &viewer_cookie)
    };
    let (status, v) = anonymous.send(with_viewer_cookie()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = admin.delete(&format!("/api/tokens/{viewer_id}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = anonymous.send(with_viewer_cookie()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    let (status, _) = viewer.get("/api/workflow/tasks").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the token itself is refused too"
    );
    // A revoked token cannot log in again.
    let (status, _) = anonymous
        .post("/api/login", json!({"token": viewer_secret}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Logging out ends the admin's session.
    let (status, _) = anonymous
        .send(
            anonymous
                .request(Method::POST, "/api/logout")
                .header(header::COOKIE, &cookie),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = anonymous
        .send(
            anonymous
                .request(Method::GET, "/api/whoami")
                .header(header::COOKIE, &cookie),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
