//! The `exec` kind (seed 003's STANDALONE service) and the `noop` kind.
//!
//! A program talks back to Ferry through stdout lines that start with a marker:
//! `::ferry-checkpoint:: {json}` saves the step's checkpoint (given back to a retried or
//! resumed attempt in `FERRY_CHECKPOINT`), `::ferry-progress:: {json}` reports progress, and
//! `::ferry-metric:: NAME VALUE [INDEX]` records a metric. Every other line is a log line.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::config::FerryConfig;
use ferry_core::kinds::{self, ExecParams, NoopParams};
use ferry_proto::v1::LogLevel;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, BufReader};
use tokio::process::Command;

use crate::executor::{Executor, JobContext, JobError, JobFuture};
use crate::jobio;
use crate::output::{MAX_LINE, read_line_bounded, sleep_opt};
use crate::policy::{Policy, join_within};
use ferry_transfer::transfer::human_bytes;

/// How long a cancelled program gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Runs the step's program, if `agent.allow.programs` lets it, among directories under the
/// agent's roots.
pub struct ExecExecutor {
    policy: Policy,
}

impl ExecExecutor {
    pub fn new(config: &FerryConfig) -> ExecExecutor {
        ExecExecutor {
            policy: Policy::from_config(config),
        }
    }
}

impl Executor for ExecExecutor {
    fn kind(&self) -> &'static str {
        kinds::EXEC
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        Box::pin(run_exec(ctx, self.policy.clone()))
    }
}

async fn run_exec(ctx: JobContext, policy: Policy) -> Result<(), JobError> {
    let p: ExecParams = ctx.params()?;
    // Everything is checked before an input is cleared or read.
    let program = policy.program(&p.program, &p.env)?;
    let workdir = match (&p.workdir, &p.io) {
        (Some(dir), _) => Some(policy.confine_dest("working directory", dir)?),
        (None, Some(_)) => None,
        (None, None) => Some(join_within(
            &ctx.work_dir,
            "working directory",
            &format!("task-{}/{}", ctx.task_id, ctx.step),
        )?),
    };
    let io = match &p.io {
        Some(io) => {
            let io = io.clone();
            let roots = policy.roots().to_vec();
            Some(
                tokio::task::spawn_blocking(move || jobio::prepare(&io, &roots))
                    .await
                    .map_err(|e| JobError::transient(format!("preparing inputs: {e}")))??,
            )
        }
        None => None,
    };
    let workdir = match (workdir, &io) {
        (Some(dir), _) => dir,
        // A graph job works among its mounts: MOUNT `/input/` is `./input/`.
        (None, Some(io)) => io.mounts_root.clone(),
        (None, None) => ctx.work_dir.clone(),
    };
    let stdin_files = io
        .as_ref()
        .map(|io| io.stdin_files.clone())
        .unwrap_or_default();
    let stdout_file = io.as_ref().and_then(|io| io.stdout_file.clone());
    tokio::fs::create_dir_all(&workdir).await.map_err(|e| {
        JobError::transient(format!(
            "cannot create working directory {}: {e}",
            workdir.display()
        ))
    })?;
    let mut cmd = Command::new(&program);
    // The GPUs the coordinator gave the job, and only those, are visible to CUDA programs.
    if !ctx.gpu_ids.is_empty() {
        cmd.env("CUDA_VISIBLE_DEVICES", gpu_list(&ctx.gpu_ids));
    }
    cmd.arg0(&p.program)
        .args(&p.args)
        .envs(&p.env)
        .env("FERRY_TASK_ID", ctx.task_id.to_string())
        .env("FERRY_TASK_NAME", &ctx.task_name)
        .env("FERRY_STEP", &ctx.step)
        .env("FERRY_ATTEMPT", ctx.attempt.to_string())
        .env("FERRY_JOB_ID", &ctx.job_id)
        .env("FERRY_GPU_IDS", gpu_list(&ctx.gpu_ids))
        .env(
            "FERRY_CHECKPOINT",
            ctx.checkpoint
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        )
        .current_dir(&workdir)
        .stdin(if stdin_files.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so cancel reaches the program's children too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        let msg = format!("cannot start `{}`: {e}", p.program);
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                JobError::permanent(msg)
            }
            _ => JobError::transient(msg),
        }
    })?;
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    ctx.info(format!(
        "started `{}` (pid {})",
        p.program,
        child.id().unwrap_or(0)
    ));
    let ctx = Arc::new(ctx);
    let feeder = child.stdin.take().map(|sink| {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let n = jobio::feed(stdin_files, sink).await?;
            ctx.info(format!("fed {} to standard input", human_bytes(n)));
            Ok::<(), String>(())
        })
    });
    let out = child.stdout.take().map(|s| {
        let ctx = ctx.clone();
        match stdout_file.clone() {
            // A consumer reads it: the bytes go to a file, unparsed and unbuffered.
            Some(path) => tokio::spawn(async move {
                let n = jobio::capture(s, &path).await?;
                ctx.info(format!("captured {} of standard output", human_bytes(n)));
                Ok(())
            }),
            None => tokio::spawn(async move {
                forward_lines(s, ctx, "stdout", LogLevel::Info).await;
                Ok(())
            }),
        }
    });
    let err = child.stderr.take().map(|s| {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            forward_lines(s, ctx, "stderr", LogLevel::Warn).await;
            Ok(())
        })
    });
    let timeout = p.timeout_secs.map(Duration::from_secs);

    enum Outcome {
        Exited(std::process::ExitStatus),
        Cancelled,
        TimedOut,
    }
    let outcome = tokio::select! {
        status = child.wait() => Outcome::Exited(status.map_err(|e| JobError::transient(format!("waiting for `{}` failed: {e}", p.program)))?),
        _ = ctx.cancel.cancelled() => Outcome::Cancelled,
        _ = sleep_opt(timeout) => Outcome::TimedOut,
    };
    if !matches!(outcome, Outcome::Exited(_)) {
        terminate(&mut child, pid).await;
    }
    // Every line the program wrote is forwarded (and its output captured) before the job
    // reports its end.
    let mut io_error = None;
    for h in [feeder, out, err].into_iter().flatten() {
        if let Ok(Err(e)) = h.await {
            io_error.get_or_insert(e);
        }
    }
    if let (Some(e), Outcome::Exited(_)) = (io_error, &outcome) {
        return Err(JobError::transient(e));
    }
    match outcome {
        Outcome::Cancelled => Err(JobError::transient("cancelled")),
        Outcome::TimedOut => Err(JobError::transient(format!(
            "`{}` did not finish within {}s and was killed",
            p.program,
            p.timeout_secs.unwrap_or_default()
        ))),
        Outcome::Exited(status) => match status.code() {
            Some(0) => Ok(()),
            Some(code) if p.permanent_exit_codes.contains(&code) => Err(JobError::permanent(
                format!("`{}` exited with code {code}", p.program),
            )),
            Some(code) => Err(JobError::transient(format!(
                "`{}` exited with code {code}",
                p.program
            ))),
            None => Err(JobError::transient(format!(
                "`{}` was killed by signal {}",
                p.program,
                status.signal().unwrap_or(0)
            ))),
        },
    }
}

/// SIGTERM to the whole process group, then SIGKILL if it lingers.
async fn terminate(child: &mut tokio::process::Child, pid: Option<Pid>) {
    if let Some(pid) = pid {
        let _ = killpg(pid, Signal::SIGTERM);
        if tokio::time::timeout(TERM_GRACE, child.wait()).await.is_ok() {
            // The leader is gone; make sure no straggler of its group survives.
            let _ = killpg(pid, Signal::SIGKILL);
            return;
        }
        let _ = killpg(pid, Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    ctx: Arc<JobContext>,
    source: &'static str,
    level: LogLevel,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        match read_line_bounded(&mut reader, &mut buf, MAX_LINE).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                let line = String::from_utf8_lossy(&buf);
                if source == "stdout" && handle_marker(&ctx, &line) {
                    continue;
                }
                ctx.log(level, source, line.into_owned());
            }
        }
    }
}

const CHECKPOINT_MARKER: &str = "::ferry-checkpoint::";
const PROGRESS_MARKER: &str = "::ferry-progress::";
const METRIC_MARKER: &str = "::ferry-metric::";

/// Applies a marker line; false when the line is an ordinary log line. A malformed marker
/// is logged as a warning rather than dropped, so the author sees what went wrong.
fn handle_marker(ctx: &JobContext, line: &str) -> bool {
    let parse_json =
        |rest: &str, what: &str| match serde_json::from_str::<serde_json::Value>(rest.trim()) {
            Ok(v) => Some(v),
            Err(e) => {
                ctx.log(
                    LogLevel::Warn,
                    "agent",
                    format!("ignored {what}: not JSON ({e}): {}", rest.trim()),
                );
                None
            }
        };
    if let Some(rest) = line.strip_prefix(CHECKPOINT_MARKER) {
        if let Some(v) = parse_json(rest, "checkpoint") {
            ctx.save_checkpoint(&v);
        }
    } else if let Some(rest) = line.strip_prefix(PROGRESS_MARKER) {
        if let Some(v) = parse_json(rest, "progress") {
            ctx.progress(&v);
        }
    } else if let Some(rest) = line.strip_prefix(METRIC_MARKER) {
        let mut parts = rest.split_whitespace();
        let name = parts.next();
        let value = parts.next().and_then(|v| v.parse::<f64>().ok());
        let index = parts
            .next()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        match (name, value) {
            (Some(name), Some(value)) => ctx.metric(name, value, index),
            _ => ctx.log(
                LogLevel::Warn,
                "agent",
                format!(
                    "ignored metric: expected NAME VALUE [INDEX]: {}",
                    rest.trim()
                ),
            ),
        }
    } else {
        return false;
    }
    true
}

/// Succeeds (after an optional pause); the engine benchmark's step.
pub struct NoopExecutor;

impl Executor for NoopExecutor {
    fn kind(&self) -> &'static str {
        kinds::NOOP
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        Box::pin(async move {
            let p: NoopParams = ctx.params()?;
            if p.sleep_ms > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(p.sleep_ms)) => {}
                    _ = ctx.cancel.cancelled() => return Err(JobError::transient("cancelled")),
                }
            }
            Ok(())
        })
    }
}

/// GPU ids as CUDA and `FERRY_GPU_IDS` read them: `0,1`.
fn gpu_list(ids: &[u32]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::config::AllowConfig;

    #[tokio::test]
    async fn a_program_off_the_list_and_a_working_directory_outside_the_roots_are_refused() {
        let root = tempfile::tempdir().expect("tmp");
        let policy = Policy::new(
            vec![root.path().to_owned()],
            AllowConfig {
                programs: vec!["true".into()],
                ..Default::default()
            },
        );
        let run = |params| {
            run_exec(
                crate::executor::test_context(params, root.path()),
                policy.clone(),
            )
        };
        let e = run(serde_json::json!({"program": "sh", "args": ["-c", "true"]}))
            .await
            .expect_err("not listed");
        assert_eq!(
            e.message,
            "program `sh` is not allowed on this host (agent.allow.programs: true)"
        );
        assert_eq!(e.class, ferry_core::ErrorClass::Permanent);
        let e = run(serde_json::json!({"program": "true", "workdir": "/etc"}))
            .await
            .expect_err("outside");
        assert!(
            e.message.starts_with("working directory `/etc` is refused"),
            "{e}"
        );
        run(serde_json::json!({"program": "true"}))
            .await
            .expect("listed, in the job's own directory");
        assert!(root.path().join("task-7/s").is_dir());
    }
}
