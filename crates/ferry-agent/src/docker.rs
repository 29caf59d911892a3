//! The `docker` kind: seed 003's DOCKER service, run through a Docker-API-compatible engine
//! (Docker, or Podman's Docker-compatible service) over its Unix socket.
//!
//! One container per attempt, named after the job (`ferry-<job id>`): leftovers of earlier
//! attempts (an agent killed mid-run) are found by their job-directory label and removed
//! first; the job's mounts are
//! bind-mounted; delivered STDIN files are streamed through an attach; stdout and stderr
//! are followed (stdout captured to a file when a consumer reads it, logged otherwise); the
//! exit code decides the job's state; the container is always removed; cancel stops it.

use std::path::PathBuf;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ferry_core::config::FerryConfig;
use ferry_core::kinds::{self, DockerParams};
use ferry_proto::v1::LogLevel;
use ferry_transfer::transfer::human_bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::executor::{Executor, JobContext, JobError, JobFuture};
use crate::jobio;
use crate::output::{MAX_LINE, sleep_opt};
use crate::policy::{Policy, confine_within};

/// The Docker Engine API version spoken (Podman's compat service answers it too).
const API: &str = "/v1.41";
/// Seconds a cancelled container gets between SIGTERM and SIGKILL.
const STOP_GRACE_SECS: u64 = 5;
/// How long the output and input streams get to end once the container has.
const OUTPUT_DRAIN: Duration = Duration::from_secs(60);

pub struct DockerExecutor {
    engine: Engine,
    policy: Policy,
}

impl DockerExecutor {
    /// `agent.docker_host`, else `DOCKER_HOST`, else `/var/run/docker.sock`.
    pub fn new(config: &FerryConfig) -> DockerExecutor {
        let configured = if config.agent.docker_host.is_empty() {
            std::env::var("DOCKER_HOST").unwrap_or_default()
        } else {
            config.agent.docker_host.clone()
        };
        let socket = match configured.strip_prefix("unix://") {
            Some(path) => PathBuf::from(path),
            None if configured.is_empty() => PathBuf::from("/var/run/docker.sock"),
            None => PathBuf::from(configured),
        };
        DockerExecutor {
            engine: Engine { socket },
            policy: Policy::from_config(config),
        }
    }
}

impl Executor for DockerExecutor {
    fn kind(&self) -> &'static str {
        kinds::DOCKER
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let engine = self.engine.clone();
        let policy = self.policy.clone();
        Box::pin(async move { run_container(ctx, engine, policy).await })
    }
}

/// A Docker-API client over a Unix socket: one HTTP/1.1 connection per call.
#[derive(Clone)]
struct Engine {
    socket: PathBuf,
}

fn unreachable(socket: &std::path::Path, e: impl std::fmt::Display) -> JobError {
    JobError::transient(format!(
        "cannot reach the container engine at {} (set agent.docker_host): {e}",
        socket.display()
    ))
}

impl Engine {
    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, JobError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(&self.socket, e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&self.socket, e))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&self.socket, e))
    }

    fn request(method: Method, path: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = format!("http://engine{API}{path}")
            .parse()
            .unwrap_or_default();
        let h = req.headers_mut();
        h.insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_static("engine"),
        );
        h.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        req
    }

    /// A call whose answer is read whole: (status, JSON or `null`).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), JobError> {
        let resp = self.send(Self::request(method, path, body)).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&self.socket, e))?
            .to_bytes();
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn remove(&self, id: &str) -> Result<(), JobError> {
        let (status, body) = self
            .call(
                Method::DELETE,
                &format!("/containers/{id}?force=true&v=true"),
                None,
            )
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(JobError::transient(format!(
                "cannot remove container {id}: {}",
                engine_message(status, &body)
            )))
        }
    }
}

fn engine_message(status: StatusCode, body: &Value) -> String {
    match body.get("message").and_then(Value::as_str) {
        Some(m) => format!("{m} (HTTP {})", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// `ferry-<job id>` (the job id starts with the agent's name): unique across attempts,
/// agents and coordinators sharing one engine.
fn container_name(ctx: &JobContext) -> String {
    let id: String = ctx
        .job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("ferry-{id}")
}

/// Removes containers an earlier attempt of this job left behind (the agent died while they
/// ran): they carry the job directory, which is unique per coordinator, task and node.
async fn remove_leftovers(engine: &Engine, job_dir: &str) -> Result<(), JobError> {
    let filters = json!({"label": [format!("ferry.job_dir={job_dir}")]}).to_string();
    let (status, body) = engine
        .call(
            Method::GET,
            &format!(
                "/containers/json?all=true&filters={}",
                percent_encode(&filters)
            ),
            None,
        )
        .await?;
    if !status.is_success() {
        return Err(JobError::transient(format!(
            "cannot list containers: {}",
            engine_message(status, &body)
        )));
    }
    for c in body.as_array().into_iter().flatten() {
        if let Some(id) = c.get("Id").and_then(Value::as_str) {
            engine.remove(id).await?;
        }
    }
    Ok(())
}

/// Query-string encoding for the engine's JSON filters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn run_container(ctx: JobContext, engine: Engine, policy: Policy) -> Result<(), JobError> {
    let p: DockerParams = ctx.params()?;
    // Refused before any input is cleared or read.
    let network = policy.docker_network(p.network.as_deref())?;
    let io = {
        let io = p.io.clone();
        let roots = policy.roots().to_vec();
        tokio::task::spawn_blocking(move || jobio::prepare(&io, &roots))
            .await
            .map_err(|e| JobError::transient(format!("preparing inputs: {e}")))??
    };
    let name = container_name(&ctx);
    let spec = container_spec(&ctx, &p, &io, &network)?;
    remove_leftovers(&engine, &p.io.job_dir).await?;
    let (status, body) = engine
        .call(
            Method::POST,
            &format!("/containers/create?name={name}"),
            Some(&spec),
        )
        .await?;
    if status == StatusCode::NOT_FOUND {
        return Err(JobError::permanent(format!(
            "image `{}` is not on this agent's container engine (no registry is used: build or load it there): {}",
            p.image,
            engine_message(status, &body)
        )));
    }
    if !status.is_success() {
        let msg = format!(
            "cannot create the container: {}",
            engine_message(status, &body)
        );
        return Err(if status.is_client_error() {
            JobError::permanent(msg)
        } else {
            JobError::transient(msg)
        });
    }
    let id = body
        .get("Id")
        .and_then(Value::as_str)
        .unwrap_or(&name)
        .to_owned();
    let outcome = supervise(&ctx, &engine, &p, &id, &name, io).await;
    // Always removed, whatever happened; a failure to remove is only logged.
    if let Err(e) = engine.remove(&id).await {
        ctx.log(LogLevel::Warn, "agent", e.message);
    }
    outcome
}

async fn supervise(
    ctx: &JobContext,
    engine: &Engine,
    p: &DockerParams,
    id: &str,
    name: &str,
    io: jobio::PreparedIo,
) -> Result<(), JobError> {
    // Standard input is attached before the start, so no byte is lost.
    let feeder = if io.stdin_files.is_empty() {
        None
    } else {
        let mut req = Engine::request(
            Method::POST,
            &format!("/containers/{id}/attach?stream=1&stdin=1"),
            None,
        );
        let h = req.headers_mut();
        h.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("Upgrade"),
        );
        h.insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static("tcp"),
        );
        let resp = engine.send(req).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS && !resp.status().is_success() {
            return Err(JobError::transient(format!(
                "cannot attach to the container's standard input: HTTP {}",
                resp.status().as_u16()
            )));
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(|e| {
            JobError::transient(format!(
                "cannot attach to the container's standard input: {e}"
            ))
        })?;
        let files = io.stdin_files.clone();
        let ctx = ctx.clone();
        Some(tokio::spawn(async move {
            let n = jobio::feed(files, TokioIo::new(upgraded)).await?;
            ctx.info(format!("fed {} to standard input", human_bytes(n)));
            Ok::<(), String>(())
        }))
    };
    let (status, body) = engine
        .call(Method::POST, &format!("/containers/{id}/start"), None)
        .await?;
    if !status.is_success() && status != StatusCode::NOT_MODIFIED {
        return Err(JobError::transient(format!(
            "cannot start the container: {}",
            engine_message(status, &body)
        )));
    }
    ctx.info(format!("started container {name} from {}", p.image));
    // Followed in its own task: an engine may send the answer's headers only with the
    // first output, and a silent container must not hold up waiting or cancelling.
    let follower = {
        let ctx = ctx.clone();
        let stdout_file = io.stdout_file.clone();
        let engine = engine.clone();
        let path = format!("/containers/{id}/logs?follow=1&stdout=1&stderr=1");
        tokio::spawn(async move {
            let logs = engine
                .send(Engine::request(Method::GET, &path, None))
                .await
                .map_err(|e| e.message)?;
            if !logs.status().is_success() {
                // An error body is not a frame stream: never mistake it for (empty) output.
                return Err(format!(
                    "cannot follow the container's output: HTTP {}",
                    logs.status().as_u16()
                ));
            }
            follow(logs.into_body(), ctx, stdout_file).await
        })
    };
    let timeout = p.timeout_secs.map(Duration::from_secs);
    enum End {
        Exited(i64),
        Cancelled,
        TimedOut,
    }
    let wait_path = format!("/containers/{id}/wait");
    let end = tokio::select! {
        r = engine.call(Method::POST, &wait_path, None) => {
            let (status, body) = r?;
            if !status.is_success() {
                return Err(JobError::transient(format!("waiting for the container: {}", engine_message(status, &body))));
            }
            End::Exited(body.get("StatusCode").and_then(Value::as_i64).unwrap_or(-1))
        }
        _ = ctx.cancellation().cancelled() => End::Cancelled,
        _ = sleep_opt(timeout) => End::TimedOut,
    };
    if !matches!(end, End::Exited(_)) {
        let _ = engine
            .call(
                Method::POST,
                &format!("/containers/{id}/stop?t={STOP_GRACE_SECS}"),
                None,
            )
            .await;
    }
    let mut io_error = None;
    // The output ends with the container; a stream the engine never closes is cut short.
    let abort_follower = follower.abort_handle();
    let follower = async {
        match tokio::time::timeout(OUTPUT_DRAIN, follower).await {
            Ok(joined) => joined,
            Err(_) => {
                // Stopped, so it cannot write into a later attempt's output.
                abort_follower.abort();
                Ok(Err(
                    "the container's output did not end after it stopped".to_owned()
                ))
            }
        }
    };
    match follower.await {
        Ok(Err(e)) => io_error = Some(e),
        Err(e) => io_error = Some(format!("following the container's output: {e}")),
        Ok(Ok(())) => {}
    }
    if let Some(f) = feeder {
        let abort_feeder = f.abort_handle();
        match tokio::time::timeout(OUTPUT_DRAIN, f).await {
            Ok(Ok(Err(e))) => {
                io_error.get_or_insert(e);
            }
            Ok(_) => {}
            Err(_) => abort_feeder.abort(),
        }
    }
    match end {
        End::Cancelled => Err(JobError::transient("cancelled")),
        End::TimedOut => Err(JobError::transient(format!(
            "container {name} did not finish within {}s and was stopped",
            p.timeout_secs.unwrap_or_default()
        ))),
        End::Exited(0) => match io_error {
            Some(e) => Err(JobError::transient(e)),
            None => Ok(()),
        },
        End::Exited(code) => Err(JobError::transient(format!(
            "container {name} exited with code {code}"
        ))),
    }
}

/// The container the engine is asked to create: the job's mount directories (each inside the
/// job directory, checked again here) bind-mounted, the network `network` (`none` unless the
/// host allows one: `Policy::docker_network`), nothing else from the host.
fn container_spec(
    ctx: &JobContext,
    p: &DockerParams,
    io: &jobio::PreparedIo,
    network: &str,
) -> Result<Value, JobError> {
    let job_dir = PathBuf::from(&p.io.job_dir);
    let mut binds = Vec::with_capacity(io.mounts.len());
    for (path, dir) in &io.mounts {
        let host = dir.display().to_string();
        confine_within(&job_dir, "mount directory", &host)?;
        let inside = match path.trim_end_matches('/') {
            "" => "/",
            p => p,
        };
        // `host:inside` is split at colons: neither side may add one.
        if host.contains(':') || inside.contains(':') {
            return Err(JobError::permanent(format!(
                "mount `{path}` from {host}: a bind path may not contain `:`"
            )));
        }
        binds.push(format!("{host}:{inside}"));
    }
    let has_stdin = !io.stdin_files.is_empty();
    let mut spec = json!({
        "Image": p.image,
        "Env": p.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "Tty": false,
        "OpenStdin": has_stdin,
        "StdinOnce": has_stdin,
        "AttachStdin": has_stdin,
        "Labels": {
            "ferry.task": ctx.task_id.to_string(),
            "ferry.step": ctx.step,
            "ferry.job": ctx.job_id,
            "ferry.job_dir": p.io.job_dir,
        },
        "HostConfig": {"Binds": binds, "NetworkMode": network},
    });
    if !p.entrypoint.is_empty() {
        spec["Entrypoint"] = json!(p.entrypoint);
    }
    if !p.cmd.is_empty() {
        spec["Cmd"] = json!(p.cmd);
    }
    Ok(spec)
}

/// Splits the engine's multiplexed log stream (8-byte headers: stream, 0, 0, 0, length)
/// into stdout (captured to `stdout_file`, or logged) and stderr (logged as warnings).
async fn follow(
    mut body: Incoming,
    ctx: JobContext,
    stdout_file: Option<PathBuf>,
) -> Result<(), String> {
    let mut file = match &stdout_file {
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut buf = BytesMut::new();
    let mut lines = [Vec::new(), Vec::new()];
    let mut captured = 0u64;
    loop {
        while buf.len() >= 8 {
            let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            if buf.len() < 8 + len {
                break;
            }
            let stream = buf[0];
            buf.advance(8);
            let payload = buf.split_to(len);
            match (stream, file.as_mut()) {
                (1, Some(f)) => {
                    f.write_all(&payload)
                        .await
                        .map_err(|e| format!("writing standard output: {e}"))?;
                    captured += len as u64;
                }
                (1, None) => log_lines(&ctx, &mut lines[0], &payload, "stdout", LogLevel::Info),
                _ => log_lines(&ctx, &mut lines[1], &payload, "stderr", LogLevel::Warn),
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(format!("following the container's output: {e}")),
            None => break,
        }
    }
    for (pending, (source, level)) in lines
        .iter_mut()
        .zip([("stdout", LogLevel::Info), ("stderr", LogLevel::Warn)])
    {
        if !pending.is_empty() {
            ctx.log(level, source, String::from_utf8_lossy(pending).into_owned());
        }
    }
    if let Some(mut f) = file {
        f.flush()
            .await
            .and(f.sync_all().await)
            .map_err(|e| format!("writing standard output: {e}"))?;
        ctx.info(format!(
            "captured {} of standard output",
            human_bytes(captured)
        ));
    }
    Ok(())
}

fn log_lines(ctx: &JobContext, pending: &mut Vec<u8>, data: &[u8], source: &str, level: LogLevel) {
    for &b in data {
        if b == b'\n' {
            let line = String::from_utf8_lossy(pending)
                .trim_end_matches('\r')
                .to_owned();
            ctx.log(level, source, line);
            pending.clear();
        } else if pending.len() < MAX_LINE {
            pending.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::config::AllowConfig;
    use ferry_core::kinds::{JobIo, MountIo};

    fn ctx() -> JobContext {
        crate::executor::test_context(Value::Null, &std::env::temp_dir())
    }

    fn params(job_dir: &std::path::Path, network: Option<&str>) -> DockerParams {
        DockerParams {
            image: "alpine".into(),
            entrypoint: Vec::new(),
            cmd: vec!["true".into()],
            env: Default::default(),
            secret_env: Vec::new(),
            io: JobIo {
                job_dir: job_dir.display().to_string(),
                mounts: vec![MountIo {
                    path: "/input/".into(),
                    dir: job_dir.join("mounts/input").display().to_string(),
                    sources: Vec::new(),
                }],
                ..Default::default()
            },
            network: network.map(str::to_owned),
            timeout_secs: None,
        }
    }

    #[test]
    fn containers_get_no_network_unless_allowed_and_only_the_jobs_own_directories() {
        let root = tempfile::tempdir().expect("tmp");
        let roots = vec![root.path().to_owned()];
        let job_dir = root.path().join("jobs/a/score");
        let closed = Policy::new(roots.clone(), AllowConfig::default());
        // No network asked: none.
        let p = params(&job_dir, None);
        let network = closed.docker_network(p.network.as_deref()).expect("none");
        let io = jobio::prepare(&p.io, &roots).expect("prepared");
        let spec = container_spec(&ctx(), &p, &io, &network).expect("spec");
        assert_eq!(spec["HostConfig"]["NetworkMode"], "none");
        assert_eq!(
            spec["HostConfig"]["Binds"],
            json!([format!("{}:/input", job_dir.join("mounts/input").display())])
        );
        // A network asked for on a host that does not allow one: refused.
        let e = closed
            .docker_network(params(&job_dir, Some("host")).network.as_deref())
            .expect_err("refused");
        assert!(e.message.contains("agent.allow.docker_network"), "{e}");
        // Allowed: the step's network.
        let open = Policy::new(
            roots.clone(),
            AllowConfig {
                docker_network: true,
                ..Default::default()
            },
        );
        let p = params(&job_dir, Some("bridge"));
        let network = open.docker_network(p.network.as_deref()).expect("allowed");
        let spec = container_spec(&ctx(), &p, &io, &network).expect("spec");
        assert_eq!(spec["HostConfig"]["NetworkMode"], "bridge");
        // A bind from outside the job directory never reaches the engine.
        let mut escaped = io.clone();
        escaped.mounts = vec![("/etc/".into(), PathBuf::from("/etc"))];
        let e = container_spec(&ctx(), &p, &escaped, "none").expect_err("outside");
        assert!(e.message.contains("must lie inside"), "{e}");
    }
}
