//! The contract between the agent runtime and the code that does a step's work.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use ferry_core::ErrorClass;
use ferry_proto::v1::{self, agent_message, job_event};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A failed attempt, classified so the engine knows whether a retry can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
}

impl JobError {
    pub fn transient(message: impl Into<String>) -> Self {
        JobError {
            class: ErrorClass::Transient,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        JobError {
            class: ErrorClass::Permanent,
            message: message.into(),
        }
    }

    /// The step must wait for a person's approval; the engine holds it and pauses the task.
    pub fn approval(message: impl Into<String>) -> Self {
        JobError {
            class: ErrorClass::Approval,
            message: message.into(),
        }
    }
}

pub type JobFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;

/// Runs one step kind. One executor per kind; the runtime calls `run` once per job attempt.
pub trait Executor: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    fn run(&self, ctx: JobContext) -> JobFuture;
}

/// Everything a job needs: its parameters, what an earlier attempt saved, a way to report,
/// and the signal that it must stop. Cloneable, so blocking work (training, inference) can
/// report from its own thread.
#[derive(Clone)]
pub struct JobContext {
    pub job_id: String,
    pub task_id: i64,
    pub task_name: String,
    pub step: String,
    pub attempt: u32,
    pub params: serde_json::Value,
    /// What the step saved with `save_checkpoint` on an earlier attempt.
    pub checkpoint: Option<serde_json::Value>,
    /// The GPUs the coordinator gave this job (ids among the agent's `gpus`): the job uses
    /// these and no others. Empty: none given.
    pub gpu_ids: Vec<u32>,
    /// The agent's work directory (jobs put their scratch files under it).
    pub work_dir: PathBuf,
    pub(crate) cancel: CancellationToken,
    pub(crate) events: mpsc::UnboundedSender<v1::AgentMessage>,
    pub(crate) record: JobRecord,
}

impl JobContext {
    /// Parses the parameters; malformed parameters are a permanent error (retrying the same
    /// parameters cannot help).
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        ferry_core::kinds::parse_params(&self.params).map_err(JobError::permanent)
    }

    /// Who approved this step and when, if the engine recorded an approval in its checkpoint
    /// (see `JobError::approval`).
    pub fn approved_by(&self) -> Option<String> {
        let a = self.checkpoint.as_ref()?.get("approval")?;
        (a.get("decision")?.as_str()? == "approved").then(|| {
            format!(
                "{} at {}",
                a.get("by").and_then(|v| v.as_str()).unwrap_or("?"),
                a.get("at").and_then(|v| v.as_str()).unwrap_or("?")
            )
        })
    }

    /// Fires when the job is cancelled.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn log(&self, level: v1::LogLevel, source: &str, message: impl Into<String>) {
        self.emit(job_event::Event::Log(v1::JobLog {
            level: level as i32,
            source: source.to_owned(),
            message: message.into(),
            timestamp: unix_timestamp(),
        }));
    }

    pub fn info(&self, message: impl Into<String>) {
        self.log(v1::LogLevel::Info, "agent", message);
    }

    /// Persists `data` in the step's `checkpoint_data`; a retry or resume receives it back.
    pub fn save_checkpoint(&self, data: &serde_json::Value) {
        if let Ok(mut r) = self.record.lock() {
            r.checkpoint = Some(data.to_string());
        }
        self.emit(job_event::Event::Checkpoint(v1::JobCheckpoint {
            data_json: data.to_string(),
        }));
    }

    pub fn progress(&self, data: &serde_json::Value) {
        if let Ok(mut r) = self.record.lock() {
            r.progress = Some(data.to_string());
        }
        self.emit(job_event::Event::Progress(v1::JobProgress {
            data_json: data.to_string(),
        }));
    }

    pub fn metric(&self, name: &str, value: f64, index: i64) {
        let metric = v1::JobMetric {
            name: name.to_owned(),
            value,
            index,
        };
        // Delivered at least once and stored once (the outbox); not re-reported at
        // registration, where a repeat would be stored twice.
        self.emit(job_event::Event::Metric(metric));
    }

    /// Reports state changes of transfer chunks (recorded in `transfer_chunks`).
    pub fn chunks(&self, chunks: Vec<v1::ChunkState>) {
        if let Ok(mut r) = self.record.lock() {
            for c in &chunks {
                r.chunks.insert(c.chunk_id.clone(), c.clone());
            }
        }
        self.emit(job_event::Event::Chunks(v1::JobChunks { chunks }));
    }

    fn emit(&self, event: job_event::Event) {
        let _ = self.events.send(v1::AgentMessage {
            msg: Some(agent_message::Msg::JobEvent(v1::JobEvent {
                job_id: self.job_id.clone(),
                event: Some(event),
            })),
            seq: 0,
        });
    }
}

/// Seconds since the epoch with milliseconds (`1769077800.123`). The coordinator stamps
/// entries with its own clock; this travels for reference only.
fn unix_timestamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// A job's chunk states (latest per chunk) and latest checkpoint and progress, re-reported at
/// every registration (idempotent: chunk rows are upserted, the others replaced); shared by a
/// job and its context.
pub(crate) type JobRecord = std::sync::Arc<std::sync::Mutex<Reported>>;

#[derive(Default)]
pub(crate) struct Reported {
    pub(crate) chunks: std::collections::BTreeMap<String, v1::ChunkState>,
    pub(crate) checkpoint: Option<String>,
    pub(crate) progress: Option<String>,
}

/// A job context for executor tests: its events go nowhere.
#[cfg(test)]
pub(crate) fn test_context(params: serde_json::Value, work_dir: &std::path::Path) -> JobContext {
    let (events, _rx) = mpsc::unbounded_channel();
    JobContext {
        job_id: "agent-1-abc".into(),
        task_id: 7,
        task_name: "t".into(),
        step: "s".into(),
        attempt: 1,
        params,
        checkpoint: None,
        gpu_ids: Vec::new(),
        work_dir: work_dir.to_owned(),
        cancel: CancellationToken::new(),
        events,
        record: JobRecord::default(),
    }
}
