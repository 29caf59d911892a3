//! The agent runtime: keep one stream to the coordinator open (reconnecting as needed),
//! register with role, kinds and GPUs, heartbeat, and run the jobs the coordinator creates
//! and starts.
//!
//! Jobs outlive connections. When the coordinator goes away, running jobs go on; their
//! events wait in a queue, and the next `Register` lists every job the agent knows so a
//! restarted coordinator can re-attach them. A job's final state is kept until the
//! coordinator confirms it persisted it (`ForgetJob`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_core::{ErrorClass, JobState, Role};
use ferry_proto::v1::{
    self, agent_message, agent_service_client::AgentServiceClient, coordinator_message,
};
use ferry_proto::{error_class_to_wire, job_state_to_wire};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::executor::{Executor, JobContext, JobRecord};
use crate::outbox::{MAX_UNACKED_BYTES, Outbox};

/// How long one attempt to connect (TCP, TLS and HTTP/2 handshakes) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything the runtime needs to know about this agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub name: String,
    pub role: Role,
    pub coordinator_url: String,
    /// `tls:`: the CA the coordinator's certificate must chain to, and this agent's own
    /// certificate (whose name is the agent's identity).
    pub tls: ferry_core::config::TlsConfig,
    pub work_dir: PathBuf,
    pub reconnect_interval: Duration,
    pub gpus: Vec<u32>,
    /// How many steps this agent runs at once (0: not limited), reported at registration;
    /// the coordinator dispatches no more.
    pub slots: u32,
    /// How long a graceful shutdown waits for cancelled jobs to report.
    pub shutdown_grace: Duration,
    /// Absolute roots reported at registration (data_root, model_root, staging_dir).
    pub paths: BTreeMap<String, String>,
    /// Servers this agent can reach over SSH (its config's `servers`, itself excluded).
    pub ssh_to: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create the work directory {}: {source}", path.display())]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid coordinator URL `{url}`: {message}")]
    BadUrl { url: String, message: String },
    #[error("agent name must not be empty")]
    NoName,
    #[error("cannot set up the agent: {0}")]
    Setup(String),
}

struct Job {
    task_id: i64,
    task_name: String,
    step: String,
    attempt: u32,
    kind: String,
    params: serde_json::Value,
    checkpoint: Option<serde_json::Value>,
    /// The GPUs the coordinator gave the job.
    gpu_ids: Vec<u32>,
    state: JobState,
    error: String,
    class: ErrorClass,
    cancel: CancellationToken,
    /// What the job reported that must survive a coordinator going down: re-sent at every
    /// registration.
    record: JobRecord,
}

struct Shared {
    settings: AgentSettings,
    executors: HashMap<&'static str, Arc<dyn Executor>>,
    jobs: Mutex<HashMap<String, Job>>,
    events: mpsc::UnboundedSender<v1::AgentMessage>,
    /// This process's instance id, sent at registration: event numbers count within it.
    instance: u64,
}

impl Shared {
    fn jobs(&self) -> MutexGuard<'_, HashMap<String, Job>> {
        // A panic while holding the lock leaves the map usable; keep serving.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running_jobs(&self) -> u32 {
        self.jobs()
            .values()
            .filter(|j| !j.state.is_terminal())
            .count() as u32
    }

    fn emit_state(&self, job_id: &str, state: JobState, error: &str, class: ErrorClass) {
        let _ = self.events.send(v1::AgentMessage {
            msg: Some(agent_message::Msg::JobEvent(v1::JobEvent {
                job_id: job_id.to_owned(),
                event: Some(v1::job_event::Event::State(v1::JobStateChange {
                    state: job_state_to_wire(state) as i32,
                    error: error.to_owned(),
                    error_class: error_class_to_wire(class) as i32,
                })),
            })),
            seq: 0,
        });
    }

    /// What a new connection starts with: the `Register` (and, when it would not fit one
    /// message, the job data that follows it), then every event the coordinator has not
    /// acknowledged. A job that ended but still has events waiting is reported running, and
    /// its end follows those events, so the coordinator takes them while the job is current.
    ///
    /// The jobs are read before the events still queued are taken into the outbox: a job
    /// reads as ended only after every event it sent is queued, so a job whose last events
    /// were never sent is always among those waiting, however its end and this call interleave.
    fn connect_messages(
        &self,
        outbox: &mut Outbox,
        events_rx: &mut mpsc::UnboundedReceiver<v1::AgentMessage>,
    ) -> Vec<v1::AgentMessage> {
        let Some(agent_message::Msg::Register(mut reg)) = self.register_message().msg else {
            return Vec::new();
        };
        while let Ok(ev) = events_rx.try_recv() {
            outbox.push(ev);
        }
        let waiting: std::collections::HashSet<String> =
            outbox.jobs_waiting().map(str::to_owned).collect();
        let ends: Vec<v1::AgentMessage> = reg
            .jobs
            .iter_mut()
            .filter(|job| waiting.contains(&job.job_id))
            .filter_map(ferry_proto::split::defer_end)
            .collect();
        let (reg, follow) =
            ferry_proto::split::split_register(reg, ferry_proto::split::MESSAGE_BUDGET);
        let mut all = vec![v1::AgentMessage {
            msg: Some(agent_message::Msg::Register(reg)),
            seq: 0,
        }];
        all.extend(follow);
        all.extend(outbox.replay());
        all.extend(ends);
        all
    }

    fn register_message(&self) -> v1::AgentMessage {
        let mut kinds: Vec<String> = self.executors.keys().map(|k| (*k).to_owned()).collect();
        kinds.sort();
        let jobs = self
            .jobs()
            .iter()
            .map(|(id, j)| v1::JobReport {
                job_id: id.clone(),
                task_id: j.task_id,
                step: j.step.clone(),
                attempt: j.attempt,
                state: job_state_to_wire(j.state) as i32,
                error: j.error.clone(),
                error_class: error_class_to_wire(j.class) as i32,
                ..j.record
                    .lock()
                    .map(|r| v1::JobReport {
                        chunks: r.chunks.values().cloned().collect(),
                        checkpoint_json: r.checkpoint.clone().unwrap_or_default(),
                        progress_json: r.progress.clone().unwrap_or_default(),
                        ..Default::default()
                    })
                    .unwrap_or_default()
            })
            .collect();
        v1::AgentMessage {
            msg: Some(agent_message::Msg::Register(v1::Register {
                agent_name: self.settings.name.clone(),
                role: self.settings.role.to_string(),
                kinds,
                gpus: self.settings.gpus.clone(),
                slots: self.settings.slots,
                hostname: hostname(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                jobs,
                paths: self.settings.paths.clone().into_iter().collect(),
                ssh_to: self.settings.ssh_to.clone(),
                instance: self.instance,
            })),
            seq: 0,
        }
    }
}

/// Runs the agent until `shutdown` fires. On shutdown, running jobs are cancelled (the
/// coordinator retries them) and their final states are sent if the coordinator is reachable.
pub async fn run(
    settings: AgentSettings,
    executors: Vec<Arc<dyn Executor>>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    if settings.name.trim().is_empty() {
        return Err(AgentError::NoName);
    }
    std::fs::create_dir_all(&settings.work_dir).map_err(|source| AgentError::WorkDir {
        path: settings.work_dir.clone(),
        source,
    })?;
    if settings.tls.enabled() && settings.tls.cert.as_os_str().is_empty() {
        return Err(AgentError::Setup(
            "`tls.cert` and `tls.key` must name this agent's certificate (`ferry pki issue --agent NAME`)".into(),
        ));
    }
    let endpoint = ferry_proto::tls::endpoint(&settings.coordinator_url, &settings.tls)
        .map_err(|e| AgentError::BadUrl {
            url: settings.coordinator_url.clone(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    let (events, mut events_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        executors: executors.into_iter().map(|e| (e.kind(), e)).collect(),
        settings,
        jobs: Mutex::new(HashMap::new()),
        events,
        instance: uuid::Uuid::new_v4().as_u64_pair().0,
    });
    info!(agent = %shared.settings.name, role = %shared.settings.role, "agent starting");
    let mut outbox = Outbox::new(MAX_UNACKED_BYTES);
    while !shutdown.is_cancelled() {
        // Connecting may take long (a coordinator that accepts connections before it
        // serves): events go on into the outbox meanwhile, and a handshake that does not
        // finish in time is tried again.
        let connecting = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect());
        tokio::pin!(connecting);
        let channel = loop {
            tokio::select! {
                c = &mut connecting => break Some(c),
                _ = shutdown.cancelled() => break None,
                Some(ev) = events_rx.recv() => { outbox.push(ev); }
            }
        };
        let Some(channel) = channel else { break };
        match channel {
            Err(_) => debug!(
                url = %shared.settings.coordinator_url,
                "coordinator did not finish the handshake in {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
            Ok(Err(e)) => {
                debug!(error = %e, url = %shared.settings.coordinator_url, "coordinator unreachable")
            }
            Ok(Ok(channel)) => {
                match session(&shared, channel, &mut events_rx, &mut outbox, &shutdown).await {
                    SessionEnd::Shutdown => break,
                    SessionEnd::Broken(reason) => {
                        warn!(reason = %reason, "lost the coordinator; reconnecting")
                    }
                }
            }
        }
        // While away, events still go into the (bounded) outbox.
        let wait = tokio::time::sleep(shared.settings.reconnect_interval);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                _ = shutdown.cancelled() => break,
                ev = events_rx.recv() => match ev {
                    Some(ev) => { outbox.push(ev); }
                    None => break,
                },
            }
        }
    }
    // Shutting down without a coordinator to report to: still stop every job cleanly.
    cancel_all(&shared);
    let deadline = tokio::time::Instant::now() + shared.settings.shutdown_grace;
    while shared.running_jobs() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    info!("agent stopped");
    Ok(())
}

enum SessionEnd {
    Shutdown,
    Broken(String),
}

/// One connection's life: register, then pump events up and commands down.
async fn session(
    shared: &Arc<Shared>,
    channel: Channel,
    events_rx: &mut mpsc::UnboundedReceiver<v1::AgentMessage>,
    outbox: &mut Outbox,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let mut client = AgentServiceClient::new(channel);
    let (out, out_rx) = mpsc::channel::<v1::AgentMessage>(4096);
    let mut first = shared.connect_messages(outbox, events_rx).into_iter();
    if let Some(register) = first.next()
        && out.send(register).await.is_err()
    {
        return SessionEnd::Broken("stream closed before register".into());
    }
    let response = match client.attach(ReceiverStream::new(out_rx)).await {
        Ok(r) => r,
        Err(status) => {
            return SessionEnd::Broken(format!("register refused: {}", status.message()));
        }
    };
    let mut inbound = response.into_inner();
    info!(coordinator = %shared.settings.coordinator_url, "registered with the coordinator");
    let mut heartbeat = tokio::time::interval(Duration::from_secs(30));
    let mut seq = 0u64;
    // Set on shutdown: keep forwarding the cancelled jobs' final events until this instant.
    let mut drain_deadline = None;
    // The rest of the start (job data, unacknowledged events, deferred ends), once the
    // coordinator accepted the registration.
    for m in first {
        if out.send(m).await.is_err() {
            return SessionEnd::Broken("stream closed".into());
        }
    }
    loop {
        if drain_deadline.is_some() && shared.running_jobs() == 0 && events_rx.is_empty() {
            return SessionEnd::Shutdown;
        }
        tokio::select! {
            cmd = inbound.message() => match cmd {
                Ok(Some(v1::CoordinatorMessage { msg: Some(coordinator_message::Msg::Ack(a)) })) => {
                    outbox.ack(a.seq);
                }
                Ok(Some(v1::CoordinatorMessage { msg: Some(msg) })) => {
                    if let coordinator_message::Msg::Registered(r) = &msg
                        && r.heartbeat_interval_ms > 0
                    {
                        heartbeat = tokio::time::interval(Duration::from_millis(r.heartbeat_interval_ms));
                    }
                    handle_command(shared, msg, &out).await;
                }
                Ok(Some(_)) => {}
                Ok(None) => return SessionEnd::Broken("the coordinator closed the stream".into()),
                Err(status) => return SessionEnd::Broken(status.message().to_owned()),
            },
            ev = events_rx.recv() => {
                let Some(ev) = ev else { return SessionEnd::Shutdown };
                // Kept until acknowledged: if the stream breaks, the next connection sends it.
                if let Some(ev) = outbox.push(ev)
                    && out.send(ev).await.is_err()
                {
                    return SessionEnd::Broken("stream closed".into());
                }
            }
            _ = heartbeat.tick() => {
                seq += 1;
                let hb = v1::AgentMessage {
                    msg: Some(agent_message::Msg::Heartbeat(v1::Heartbeat { seq, running_jobs: shared.running_jobs() })),
                    seq: 0,
                };
                if out.send(hb).await.is_err() {
                    return SessionEnd::Broken("stream closed".into());
                }
            }
            _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                cancel_all(shared);
                drain_deadline = Some(tokio::time::Instant::now() + shared.settings.shutdown_grace);
            }
            _ = sleep_until_opt(drain_deadline) => return SessionEnd::Shutdown,
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn cancel_all(shared: &Shared) {
    let jobs = shared.jobs();
    let live = jobs.values().filter(|j| !j.state.is_terminal()).count();
    if live > 0 {
        info!(jobs = live, "shutting down: cancelling running jobs");
    }
    for j in jobs.values() {
        j.cancel.cancel();
    }
}

async fn handle_command(
    shared: &Arc<Shared>,
    msg: coordinator_message::Msg,
    out: &mpsc::Sender<v1::AgentMessage>,
) {
    match msg {
        coordinator_message::Msg::Registered(_) | coordinator_message::Msg::Ack(_) => {}
        coordinator_message::Msg::CreateJob(c) => {
            let reply = create_job(shared, c);
            let _ = out.send(reply).await;
        }
        coordinator_message::Msg::StartJob(s) => start_job(shared, &s.job_id),
        coordinator_message::Msg::CancelJob(c) => cancel_job(shared, &c.job_id, &c.reason),
        coordinator_message::Msg::ForgetJob(f) => {
            let mut jobs = shared.jobs();
            if jobs.get(&f.job_id).is_some_and(|j| j.state.is_terminal()) {
                jobs.remove(&f.job_id);
            }
        }
    }
}

/// Phase one: record the job (IDLE) and answer with its id. Idempotent per
/// (task, step, attempt), so a create repeated by a restarted coordinator finds the same job.
fn create_job(shared: &Shared, c: v1::CreateJob) -> v1::AgentMessage {
    let answer = |job_id: String, error: String| v1::AgentMessage {
        msg: Some(agent_message::Msg::JobCreated(v1::JobCreated {
            request_id: c.request_id,
            job_id,
            error,
        })),
        seq: 0,
    };
    if !shared.executors.contains_key(c.kind.as_str()) {
        return answer(
            String::new(),
            format!("this agent cannot run step kind `{}`", c.kind),
        );
    }
    let params = match serde_json::from_str(&c.params_json) {
        Ok(p) => p,
        Err(e) => return answer(String::new(), format!("params are not valid JSON: {e}")),
    };
    let checkpoint = (!c.checkpoint_json.is_empty())
        .then(|| serde_json::from_str(&c.checkpoint_json).ok())
        .flatten();
    let mut jobs = shared.jobs();
    if let Some((id, _)) = jobs
        .iter()
        .find(|(_, j)| j.task_id == c.task_id && j.step == c.step && j.attempt == c.attempt)
    {
        return answer(id.clone(), String::new());
    }
    let job_id = format!(
        "{}-{}",
        shared.settings.name,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    debug!(job = %job_id, task_id = c.task_id, step = %c.step, "job created");
    jobs.insert(
        job_id.clone(),
        Job {
            task_id: c.task_id,
            task_name: c.task_name,
            step: c.step,
            attempt: c.attempt,
            kind: c.kind,
            params,
            checkpoint,
            gpu_ids: c.gpu_ids,
            state: JobState::Idle,
            error: String::new(),
            class: ErrorClass::Transient,
            cancel: CancellationToken::new(),
            record: JobRecord::default(),
        },
    );
    answer(job_id, String::new())
}

/// Phase two: the job's inputs are ready (the coordinator starts a job only then), so it
/// goes READY and straight to RUNNING.
fn start_job(shared: &Arc<Shared>, job_id: &str) {
    let (ctx, executor) = {
        let mut jobs = shared.jobs();
        let Some(job) = jobs.get_mut(job_id) else {
            warn!(job = %job_id, "start for an unknown job");
            shared.emit_state(
                job_id,
                JobState::Failed,
                "the agent does not know this job",
                ErrorClass::Transient,
            );
            return;
        };
        if job.state != JobState::Idle {
            return; // already started; a repeated start is harmless
        }
        let Some(executor) = shared.executors.get(job.kind.as_str()).cloned() else {
            return;
        };
        job.state = JobState::Running;
        let ctx = JobContext {
            job_id: job_id.to_owned(),
            task_id: job.task_id,
            task_name: job.task_name.clone(),
            step: job.step.clone(),
            attempt: job.attempt,
            params: job.params.clone(),
            checkpoint: job.checkpoint.clone(),
            gpu_ids: job.gpu_ids.clone(),
            work_dir: shared.settings.work_dir.clone(),
            cancel: job.cancel.clone(),
            events: shared.events.clone(),
            record: job.record.clone(),
        };
        (ctx, executor)
    };
    info!(job = %job_id, task_id = ctx.task_id, step = %ctx.step, attempt = ctx.attempt, "job started");
    shared.emit_state(job_id, JobState::Running, "", ErrorClass::Transient);
    let shared = shared.clone();
    let job_id = job_id.to_owned();
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        let (state, error, class) = run_attempt(executor, ctx, cancel).await;
        if let Some(job) = shared.jobs().get_mut(&job_id) {
            job.state = state;
            job.error = error.clone();
            job.class = class;
        }
        info!(job = %job_id, state = %state, error = %error, "job finished");
        shared.emit_state(&job_id, state, &error, class);
    });
}

/// Runs one attempt to its end state. The executor runs as a task of its own so that a panic
/// in it becomes a failed job (transient: the next attempt may not meet the same state) with
/// the panic's message, instead of a job that never ends.
async fn run_attempt(
    executor: Arc<dyn Executor>,
    ctx: JobContext,
    cancel: CancellationToken,
) -> (JobState, String, ErrorClass) {
    match tokio::spawn(executor.run(ctx)).await {
        Ok(Ok(())) => (JobState::Completed, String::new(), ErrorClass::Transient),
        Ok(Err(_)) if cancel.is_cancelled() => (
            JobState::Cancelled,
            "cancelled".to_owned(),
            ErrorClass::Transient,
        ),
        Ok(Err(e)) => (JobState::Failed, e.message, e.class),
        Err(join) => (
            JobState::Failed,
            format!("the executor panicked: {}", panic_message(join)),
            ErrorClass::Transient,
        ),
    }
}

/// What a panicked (or aborted) executor task said.
fn panic_message(join: tokio::task::JoinError) -> String {
    if !join.is_panic() {
        return "its task was aborted".to_owned();
    }
    let payload = join.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

fn cancel_job(shared: &Shared, job_id: &str, reason: &str) {
    let mut jobs = shared.jobs();
    let Some(job) = jobs.get_mut(job_id) else {
        return;
    };
    info!(job = %job_id, reason = %reason, "cancelling job");
    if job.state == JobState::Idle {
        job.state = JobState::Cancelled;
        drop(jobs);
        shared.emit_state(job_id, JobState::Cancelled, reason, ErrorClass::Transient);
        return;
    }
    job.cancel.cancel();
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{JobError, JobFuture};

    struct Panics;

    impl Executor for Panics {
        fn kind(&self) -> &'static str {
            "panics"
        }

        fn run(&self, ctx: JobContext) -> JobFuture {
            Box::pin(async move {
                if ctx.attempt > 0 {
                    panic!("index out of bounds: the len is 0 but the index is 3");
                }
                Err(JobError::permanent("unreachable"))
            })
        }
    }

    fn job_event(job: &str, event: v1::job_event::Event) -> v1::AgentMessage {
        v1::AgentMessage {
            msg: Some(agent_message::Msg::JobEvent(v1::JobEvent {
                job_id: job.into(),
                event: Some(event),
            })),
            seq: 0,
        }
    }

    /// A job that ended while the agent was still connecting: its last events are in the
    /// queue, not yet in the outbox. The registration must report it running and send its end
    /// after those events; reported ended, the coordinator would let the job go and drop them.
    #[test]
    fn a_job_that_ended_with_events_still_queued_ends_after_them() {
        let (events, mut events_rx) = mpsc::unbounded_channel();
        let shared = Shared {
            settings: AgentSettings {
                name: "inference_server".into(),
                role: Role::Inference,
                coordinator_url: "https://127.0.0.1:1".into(),
                tls: Default::default(),
                work_dir: std::env::temp_dir(),
                reconnect_interval: Duration::from_secs(1),
                gpus: Vec::new(),
                slots: 0,
                shutdown_grace: Duration::from_secs(1),
                paths: BTreeMap::new(),
                ssh_to: Vec::new(),
            },
            executors: HashMap::new(),
            jobs: Mutex::new(HashMap::new()),
            events: events.clone(),
            instance: 7,
        };
        shared.jobs().insert(
            "j".into(),
            Job {
                task_id: 1,
                task_name: "t".into(),
                step: "infer".into(),
                attempt: 1,
                kind: "ctr_infer".into(),
                params: serde_json::Value::Null,
                checkpoint: None,
                gpu_ids: Vec::new(),
                state: JobState::Completed,
                error: String::new(),
                class: ErrorClass::Transient,
                cancel: CancellationToken::new(),
                record: JobRecord::default(),
            },
        );
        let metric = v1::job_event::Event::Metric(v1::JobMetric {
            name: "inference_rows".into(),
            value: 10_000.0,
            index: 0,
        });
        events.send(job_event("j", metric.clone())).ok();
        shared.emit_state("j", JobState::Completed, "", ErrorClass::Transient);
        let mut outbox = Outbox::new(MAX_UNACKED_BYTES);

        let sent = shared.connect_messages(&mut outbox, &mut events_rx);

        let Some(agent_message::Msg::Register(reg)) = &sent[0].msg else {
            panic!("the first message is not the registration: {:?}", sent[0]);
        };
        assert_eq!(reg.jobs.len(), 1);
        assert_eq!(reg.jobs[0].state, v1::JobState::Running as i32);
        let events: Vec<_> = sent[1..]
            .iter()
            .map(|m| match &m.msg {
                Some(agent_message::Msg::JobEvent(e)) => (m.seq, e.event.clone()),
                other => panic!("not a job event: {other:?}"),
            })
            .collect();
        let end = Some(v1::job_event::Event::State(v1::JobStateChange {
            state: v1::JobState::Completed as i32,
            error: String::new(),
            error_class: error_class_to_wire(ErrorClass::Transient) as i32,
        }));
        assert_eq!(
            events,
            vec![(1, Some(metric)), (2, end.clone()), (0, end)],
            "the queued events, numbered, then the deferred end"
        );
        assert!(events_rx.try_recv().is_err(), "the queue is taken whole");
    }

    #[tokio::test]
    async fn a_panicking_executor_is_a_failed_transient_job_with_the_message() {
        let (events, _rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let ctx = JobContext {
            job_id: "j".into(),
            task_id: 1,
            task_name: "t".into(),
            step: "s".into(),
            attempt: 1,
            params: serde_json::Value::Null,
            checkpoint: None,
            gpu_ids: Vec::new(),
            work_dir: std::env::temp_dir(),
            cancel: cancel.clone(),
            events,
            record: JobRecord::default(),
        };
        let (state, error, class) = run_attempt(Arc::new(Panics), ctx, cancel).await;
        assert_eq!(state, JobState::Failed);
        assert_eq!(class, ErrorClass::Transient);
        assert_eq!(
            error,
            "the executor panicked: index out of bounds: the len is 0 but the index is 3"
        );
    }
}
