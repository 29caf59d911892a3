//! What the coordinator tells the outside world about its work: Prometheus metrics with
//! seed 000 §13.1's names, served as text at `/metrics` on the HTTP listener (`coordinator.http_listen`), and webhook
//! notifications when a task completes or fails (`workflow.notification`).
//!
//! The engine calls the `on_*` hooks from its loop; they only update counters under a
//! short lock or spawn the HTTP POST, so the engine never waits on the network.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::config::NotificationConfig;
use tokio::net::TcpStream;
use tracing::{info, warn};

/// Bucket bounds in seconds: from a no-op step to a day-long training run.
const BUCKETS: &[f64] = &[
    0.01,
    0.1,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    24.0 * 3600.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Default)]
struct Registry {
    workflow_duration: BTreeMap<Labels, Histogram>,
    stage_duration: BTreeMap<Labels, Histogram>,
    transfer_duration: BTreeMap<Labels, Histogram>,
    transfer_bytes: BTreeMap<Labels, f64>,
    retries: BTreeMap<Labels, f64>,
    training_loss: BTreeMap<Labels, f64>,
    inference_throughput: BTreeMap<Labels, f64>,
    quarantined_rows: BTreeMap<Labels, f64>,
    queue_length: BTreeMap<Labels, f64>,
    agent_slots: BTreeMap<Labels, f64>,
    agent_slots_in_use: BTreeMap<Labels, f64>,
    agent_gpus: BTreeMap<Labels, f64>,
    agent_gpus_in_use: BTreeMap<Labels, f64>,
}

/// One agent's capacity and what is taken of it, for the gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentLoad {
    pub agent: String,
    /// 0: not limited.
    pub slots: u32,
    pub slots_in_use: u32,
    pub gpus: u32,
    pub gpus_in_use: u32,
}

/// A finished task, as the webhook reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskOutcome {
    pub task_id: i64,
    pub name: String,
    pub workflow: String,
    pub status: String,
    pub reason: Option<String>,
    pub duration_seconds: f64,
    pub completed_steps: usize,
    pub total_steps: usize,
}

pub struct Observer {
    registry: Mutex<Registry>,
    notification: NotificationConfig,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer").finish_non_exhaustive()
    }
}

impl Observer {
    pub fn new(notification: NotificationConfig) -> Arc<Observer> {
        Arc::new(Observer {
            registry: Mutex::new(Registry::default()),
            notification,
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        // A panic elsewhere while holding the lock leaves plain numbers behind; keep going.
        let mut guard = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn on_step_completed(&self, workflow: &str, stage: &str, kind: &str, seconds: f64) {
        let labels = vec![
            ("workflow", workflow.to_owned()),
            ("stage", stage.to_owned()),
            ("kind", kind.to_owned()),
        ];
        self.with(|r| r.stage_duration.entry(labels).or_default().observe(seconds));
    }

    pub fn on_retry(&self, workflow: &str, kind: &str) {
        let labels = vec![("workflow", workflow.to_owned()), ("kind", kind.to_owned())];
        self.with(|r| *r.retries.entry(labels).or_default() += 1.0);
    }

    /// Rows the store refused even alone and set aside (see `Store::commit`).
    pub fn on_quarantined(&self, rows: u64) {
        self.with(|r| *r.quarantined_rows.entry(Vec::new()).or_default() += rows as f64);
    }

    /// A metric an agent reported for a step.
    pub fn on_step_metric(&self, task_id: i64, step: &str, name: &str, value: f64) {
        let task = || vec![("task_id", task_id.to_string()), ("step", step.to_owned())];
        self.with(|r| match name {
            "transfer_bytes" => {
                *r.transfer_bytes
                    .entry(vec![("step", step.to_owned())])
                    .or_default() += value;
            }
            "transfer_seconds" => r
                .transfer_duration
                .entry(vec![("step", step.to_owned())])
                .or_default()
                .observe(value),
            "train_loss" => {
                r.training_loss.insert(task(), value);
            }
            "inference_rows_per_sec" => {
                r.inference_throughput.insert(task(), value);
            }
            _ => {}
        });
    }

    /// A task reached a final state: record its duration and notify when configured.
    pub fn on_task_finished(&self, outcome: TaskOutcome) {
        let labels = vec![
            ("workflow", outcome.workflow.clone()),
            ("status", outcome.status.clone()),
        ];
        self.with(|r| {
            r.workflow_duration
                .entry(labels)
                .or_default()
                .observe(outcome.duration_seconds)
        });
        let n = &self.notification;
        let wanted = match outcome.status.as_str() {
            "completed" => n.on_complete,
            "failed" => n.on_failure,
            _ => false,
        };
        if wanted && !n.webhook_url.is_empty() {
            let url = n.webhook_url.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    match post_json(&url, &outcome).await {
                        Ok(code) => {
                            info!(task_id = outcome.task_id, %url, code, "notification sent")
                        }
                        Err(e) => {
                            warn!(task_id = outcome.task_id, %url, "notification failed: {e}")
                        }
                    }
                });
            }
        }
    }

    /// The scheduler's state now: steps waiting for capacity, and each agent's load.
    pub fn set_capacity(&self, queued: usize, agents: &[AgentLoad]) {
        self.with(|r| {
            r.queue_length = BTreeMap::from([(Vec::new(), queued as f64)]);
            let series = |f: fn(&AgentLoad) -> u32| {
                agents
                    .iter()
                    .map(|a| (vec![("agent", a.agent.clone())], f64::from(f(a))))
                    .collect::<BTreeMap<Labels, f64>>()
            };
            r.agent_slots = series(|a| a.slots);
            r.agent_slots_in_use = series(|a| a.slots_in_use);
            r.agent_gpus = series(|a| a.gpus);
            r.agent_gpus_in_use = series(|a| a.gpus_in_use);
        });
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.with(|r| {
            let mut out = String::new();
            histogram(
                &mut out,
                "workflow_duration_seconds",
                "Total workflow (task) time",
                &r.workflow_duration,
            );
            histogram(
                &mut out,
                "stage_duration_seconds",
                "Per-stage (step) duration",
                &r.stage_duration,
            );
            scalar(
                &mut out,
                "transfer_bytes_total",
                "counter",
                "Total bytes transferred",
                &r.transfer_bytes,
            );
            histogram(
                &mut out,
                "transfer_duration_seconds",
                "Transfer time",
                &r.transfer_duration,
            );
            scalar(
                &mut out,
                "training_loss",
                "gauge",
                "Training loss of the latest epoch",
                &r.training_loss,
            );
            scalar(
                &mut out,
                "inference_throughput",
                "gauge",
                "Inference rows per second",
                &r.inference_throughput,
            );
            scalar(
                &mut out,
                "retry_count_total",
                "counter",
                "Number of step retries",
                &r.retries,
            );
            scalar(
                &mut out,
                "ferry_quarantined_rows_total",
                "counter",
                "Rows the database refused even alone, set aside so the engine goes on",
                &r.quarantined_rows,
            );
            scalar(
                &mut out,
                "ferry_queue_length",
                "gauge",
                "Ready steps waiting for capacity (slots, GPUs, a pool, max_active_tasks)",
                &r.queue_length,
            );
            scalar(
                &mut out,
                "ferry_agent_slots",
                "gauge",
                "Steps an agent runs at once (0: not limited)",
                &r.agent_slots,
            );
            scalar(
                &mut out,
                "ferry_agent_slots_in_use",
                "gauge",
                "Slots taken by the steps running on an agent",
                &r.agent_slots_in_use,
            );
            scalar(
                &mut out,
                "ferry_agent_gpus",
                "gauge",
                "GPUs an agent declares",
                &r.agent_gpus,
            );
            scalar(
                &mut out,
                "ferry_agent_gpus_in_use",
                "gauge",
                "GPUs given to the steps running on an agent",
                &r.agent_gpus_in_use,
            );
            out
        })
    }
}

fn label_text(labels: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(out: &mut String, name: &str, help: &str, series: &BTreeMap<Labels, Histogram>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, h) in series {
        for (i, b) in BUCKETS.iter().enumerate() {
            let le = label_text(labels, Some(("le", b.to_string())));
            let _ = writeln!(
                out,
                "{name}_bucket{le} {}",
                h.counts.get(i).copied().unwrap_or(0)
            );
        }
        let inf = label_text(labels, Some(("le", "+Inf".into())));
        let _ = writeln!(out, "{name}_bucket{inf} {}", h.count);
        let l = label_text(labels, None);
        let _ = writeln!(out, "{name}_sum{l} {}", h.sum);
        let _ = writeln!(out, "{name}_count{l} {}", h.count);
    }
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, series: &BTreeMap<Labels, f64>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in series {
        let _ = writeln!(out, "{name}{} {v}", label_text(labels, None));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("`{0}` is not an http://host[:port]/path URL")]
    BadUrl(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within 10 s")]
    Timeout,
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the server answered `{0}`")]
    Status(String),
}

/// POSTs `body` as JSON with HTTP/1.1 (hyper's client) and returns the status code (2xx only).
pub async fn post_json(url: &str, body: &impl serde::Serialize) -> Result<u16, WebhookError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| WebhookError::BadUrl(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(WebhookError::BadUrl(url.to_owned()));
    }
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let json = serde_json::to_string(body).map_err(|e| std::io::Error::other(e.to_string()))?;
    let request = axum::http::Request::post(path)
        .header(axum::http::header::HOST, authority)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .header(axum::http::header::USER_AGENT, "ferry-coordinator")
        .body(http_body_util::Full::new(axum::body::Bytes::from(json)))
        .map_err(|_| WebhookError::BadUrl(url.to_owned()))?;
    let exchange = async {
        let stream = TcpStream::connect(&addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| WebhookError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| WebhookError::Http(e.to_string()))?;
        Ok::<_, WebhookError>(answer.status())
    };
    let status = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| WebhookError::Timeout)??;
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(WebhookError::Status(status.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn renders_the_seed_metric_names_with_labels() {
        let o = Observer::new(NotificationConfig::default());
        o.on_step_completed("ctr_pipeline", "train", "train", 42.0);
        o.on_step_metric(7, "ship_sample", "transfer_bytes", 1000.0);
        o.on_step_metric(7, "ship_model", "transfer_bytes", 24.0);
        o.on_step_metric(7, "ship_sample", "transfer_seconds", 2.0);
        o.on_step_metric(7, "train", "train_loss", 0.45);
        o.on_step_metric(7, "infer", "inference_rows_per_sec", 48000.0);
        o.on_retry("ctr_pipeline", "transfer");
        o.on_task_finished(TaskOutcome {
            task_id: 7,
            name: "t".into(),
            workflow: "ctr_pipeline".into(),
            status: "completed".into(),
            reason: None,
            duration_seconds: 100.0,
            completed_steps: 10,
            total_steps: 10,
        });
        let text = o.render();
        for line in [
            "stage_duration_seconds_bucket{workflow=\"ctr_pipeline\",stage=\"train\",kind=\"train\",le=\"60\"} 1",
            "stage_duration_seconds_bucket{workflow=\"ctr_pipeline\",stage=\"train\",kind=\"train\",le=\"15\"} 0",
            "transfer_bytes_total{step=\"ship_sample\"} 1000",
            "transfer_duration_seconds_count{step=\"ship_sample\"} 1",
            "training_loss{task_id=\"7\",step=\"train\"} 0.45",
            "inference_throughput{task_id=\"7\",step=\"infer\"} 48000",
            "retry_count_total{workflow=\"ctr_pipeline\",kind=\"transfer\"} 1",
            "workflow_duration_seconds_sum{workflow=\"ctr_pipeline\",status=\"completed\"} 100",
            "# TYPE transfer_bytes_total counter",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }

    #[tokio::test]
    async fn webhook_posts_json_and_reports_http_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for answer in ["200 OK", "500 Internal Server Error"] {
                let (mut s, _) = listener.accept().await.expect("accept");
                // The body ends the request (it is JSON, closed by `}`).
                let mut got = Vec::new();
                let mut buf = vec![0u8; 8192];
                while !got.ends_with(b"}") {
                    let n = s.read(&mut buf).await.expect("read");
                    assert!(n > 0, "request cut short");
                    got.extend_from_slice(&buf[..n]);
                }
                bodies.push(String::from_utf8_lossy(&got).to_string());
                let reply = format!("HTTP/1.1 {answer}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(reply.as_bytes()).await.expect("write");
            }
            bodies
        });
        let url = format!("http://127.0.0.1:{port}/hooks/ferry");
        let body = serde_json::json!({"task_id": 3, "status": "failed"});
        assert_eq!(post_json(&url, &body).await.expect("posted"), 200);
        let e = post_json(&url, &body).await.expect_err("500");
        assert!(e.to_string().contains("500"), "{e}");
        let bodies = server.await.expect("server");
        assert!(
            bodies[0].starts_with("POST /hooks/ferry HTTP/1.1\r\n"),
            "{}",
            bodies[0]
        );
        assert!(
            bodies[0].ends_with("{\"status\":\"failed\",\"task_id\":3}"),
            "{}",
            bodies[0]
        );
        let e = post_json("https://x", &body).await.expect_err("https");
        assert!(e.to_string().contains("not an http://"), "{e}");
    }
}
