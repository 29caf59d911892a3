//! The `transfer` kind: moves a directory between this agent and a server of the config,
//! verified chunk by chunk (see `ferry_transfer::transfer`). The agent's SSH masters
//! (`ferry_transfer::pool`, one per account) are kept across steps; a dead one is replaced.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_core::config::FerryConfig;
use ferry_core::kinds::{self, TransferDirection, TransferParams};
use ferry_proto::v1;
use ferry_transfer::manifest::{HashAlgorithm, Manifest};
use ferry_transfer::pool::SessionPool;
use ferry_transfer::rsync::{Direction, RsyncOptions};
use ferry_transfer::ssh::{HostKeyPolicy, SshSession, SshTarget};
use ferry_transfer::transfer::{
    self, ChunkUpdate, TransferEvents, TransferProgress, TransferSpec, human_bytes,
};
use ferry_transfer::{TransferError, confine};

use crate::executor::{Executor, JobContext, JobError, JobFuture};
use crate::paths::{confine_to_roots, tree_size};

pub struct TransferExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    config: FerryConfig,
    roots: Vec<PathBuf>,
    known_hosts: PathBuf,
    ssh: Arc<SessionPool>,
}

impl TransferExecutor {
    pub fn new(config: FerryConfig, ssh: Arc<SessionPool>) -> TransferExecutor {
        let roots = config.agent.effective_roots(&config);
        let known_hosts = if config.agent.known_hosts.as_os_str().is_empty() {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(".ssh/known_hosts")
        } else {
            config.agent.known_hosts.clone()
        };
        TransferExecutor {
            inner: Arc::new(Inner {
                roots,
                known_hosts,
                ssh,
                config,
            }),
        }
    }
}

impl Executor for TransferExecutor {
    fn kind(&self) -> &'static str {
        kinds::TRANSFER
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.run(ctx).await })
    }
}

fn job_error(e: TransferError) -> JobError {
    JobError {
        class: e.class(),
        message: e.to_string(),
    }
}

impl Inner {
    async fn run(&self, ctx: JobContext) -> Result<(), JobError> {
        let p: TransferParams = ctx.params()?;
        if p.direction == TransferDirection::Local {
            return self.run_local(&ctx, &p).await;
        }
        let server = self.config.servers.get(&p.server).ok_or_else(|| {
            let known: Vec<&str> = self.config.servers.keys().map(String::as_str).collect();
            JobError::permanent(format!(
                "server `{}` is not in this agent's config (known: {})",
                p.server,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })?;
        let local = self.confine(&p.local_path).map_err(job_error)?;
        let t = &self.config.transfer;
        let algorithm = hash_algorithm(&p, t);
        let spec = TransferSpec {
            direction: match p.direction {
                TransferDirection::Push | TransferDirection::Local => Direction::Push,
                TransferDirection::Pull => Direction::Pull,
            },
            local,
            remote: p.remote_path.clone(),
            chunk_size: p.chunk_size.unwrap_or(t.chunk_size),
            algorithm,
            rsync: RsyncOptions {
                compress: p.compression.unwrap_or(t.compression),
                bandwidth_limit: t.bandwidth_limit.clone(),
                extra: Vec::new(),
            },
            max_chunk_retries: t.max_retries,
            remote_ferry: t.remote_ferry.clone(),
            parallel_workers: t.parallel_workers,
            bytes_per_worker: transfer::BYTES_PER_WORKER,
            io_timeout: transfer::DEFAULT_IO_TIMEOUT,
        };
        let mut target = SshTarget::new(
            &server.host,
            server.port,
            &server.username,
            &server.keys(),
            &self.known_hosts,
        );
        // Strict unless the operator asked for first-contact trust.
        target.host_key_policy = if self.config.agent.accept_new_host_keys {
            HostKeyPolicy::AcceptNew
        } else {
            HostKeyPolicy::Strict
        };
        target.keepalive =
            std::time::Duration::from_secs(self.config.workflow.heartbeat_interval.max(1));
        target.idle_timeout = std::time::Duration::from_secs(t.ssh_idle_timeout.max(1));
        let (from, to) = match p.direction {
            TransferDirection::Push | TransferDirection::Local => (
                format!("{}", spec.local.display()),
                format!("{}:{}", p.server, p.remote_path),
            ),
            TransferDirection::Pull => (
                format!("{}:{}", p.server, p.remote_path),
                format!("{}", spec.local.display()),
            ),
        };
        ctx.info(format!(
            "connecting to {} ({}@{}:{})...",
            p.server, server.username, server.host, server.port
        ));
        let session = self.ssh.get(&target).await.map_err(job_error)?;
        if let Some(limit) = p.confirm_above {
            let confirmed = self.confirm_size(&ctx, &session, &p, &spec, limit).await;
            if let Err(e) = confirmed {
                if e.class == ferry_core::ErrorClass::Transient {
                    // A remote `du` that failed may have failed on a dead master.
                    drop(session);
                    self.ssh.discard(&target).await;
                }
                return Err(e);
            }
        }
        ctx.info(format!("starting transfer {from} -> {to}"));
        let mut events = JobEvents { ctx: &ctx };
        let work = transfer::run(&session, &spec, &mut events);
        let outcome = tokio::select! {
            r = work => r,
            _ = ctx.cancellation().cancelled() => return Err(JobError::transient("cancelled")),
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                if matches!(
                    e,
                    TransferError::Connect { .. } | TransferError::Command { .. }
                ) {
                    // The master may be dead: it is ended, and the next attempt opens a
                    // fresh one whatever a probe would say.
                    drop(session);
                    self.ssh.discard(&target).await;
                }
                return Err(job_error(e));
            }
        };
        drop(session);
        self.ssh.worked(&target).await;
        let rate = outcome.bytes_total as f64 / outcome.seconds.max(1e-6);
        ctx.info(format!(
            "transfer complete: {} in {} files, {} chunks verified ({} re-sent), {:.1}s ({}/s)",
            human_bytes(outcome.bytes_total),
            outcome.files,
            outcome.chunks,
            outcome.chunks_resent,
            outcome.seconds,
            human_bytes(rate as u64)
        ));
        ctx.metric("transfer_bytes", outcome.bytes_total as f64, 0);
        ctx.metric("transfer_seconds", outcome.seconds, 0);
        ctx.metric(
            "transfer_literal_bytes",
            outcome.rsync.literal_bytes as f64,
            0,
        );
        ctx.save_checkpoint(&serde_json::json!({
            "verified_chunks": outcome.chunks,
            "bytes": outcome.bytes_total,
        }));
        Ok(())
    }

    /// Both ends on this agent (seed 003's "local move"): the source's manifest is built,
    /// its files linked (or copied) into the destination, and the destination verified
    /// against the manifest like any transfer.
    async fn run_local(&self, ctx: &JobContext, p: &TransferParams) -> Result<(), JobError> {
        let src = self.confine(&p.local_path).map_err(job_error)?;
        let dst = self.confine(&p.remote_path).map_err(job_error)?;
        // The destination is emptied below: never a whole root.
        crate::policy::Policy::new(self.roots.clone(), Default::default())
            .confine_replaced("transfer destination", &p.remote_path)?;
        let t = &self.config.transfer;
        let algorithm = hash_algorithm(p, t);
        let chunk_size = p.chunk_size.unwrap_or(t.chunk_size);
        ctx.info(format!(
            "starting local transfer {} -> {}",
            src.display(),
            dst.display()
        ));
        let started = std::time::Instant::now();
        let (files, bytes, chunks) = tokio::task::spawn_blocking(move || {
            let manifest = Manifest::build(&src, chunk_size, algorithm).map_err(job_error)?;
            // The destination is the receiver's own copy, as over SSH: cleared of an earlier
            // attempt's files, and copied (not linked) so a consumer that writes to its input
            // cannot change the sender's files.
            crate::jobio::recreate_dir(&dst)?;
            for f in &manifest.files {
                let to = confine::join(&dst, &f.path).map_err(job_error)?;
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        JobError::transient(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                std::fs::copy(src.join(&f.path), &to).map_err(|e| {
                    JobError::transient(format!("cannot copy to {}: {e}", to.display()))
                })?;
            }
            let report = manifest.verify(&dst).map_err(job_error)?;
            if !report.is_complete() {
                return Err(JobError::transient(format!(
                    "local copy did not verify: {} bad chunks, missing {:?}",
                    report.bad.len(),
                    report.missing_files
                )));
            }
            Ok((
                manifest.files.len(),
                manifest.total_bytes(),
                report.verified.len(),
            ))
        })
        .await
        .map_err(|e| JobError::transient(format!("local transfer: {e}")))??;
        let seconds = started.elapsed().as_secs_f64();
        ctx.info(format!(
            "transfer complete: {} in {files} files, {chunks} chunks verified, {seconds:.1}s (local)",
            human_bytes(bytes)
        ));
        ctx.metric("transfer_bytes", bytes as f64, 0);
        ctx.metric("transfer_seconds", seconds, 0);
        ctx.save_checkpoint(&serde_json::json!({"verified_chunks": chunks, "bytes": bytes}));
        Ok(())
    }

    /// Seed 000 §7.3: a transfer larger than `limit` bytes waits for a person's
    /// confirmation, once; the approval then stays in the step's checkpoint.
    async fn confirm_size(
        &self,
        ctx: &JobContext,
        session: &SshSession,
        p: &TransferParams,
        spec: &TransferSpec,
        limit: u64,
    ) -> Result<(), JobError> {
        let bytes = match p.direction {
            TransferDirection::Push | TransferDirection::Local => {
                let local = spec.local.clone();
                tokio::task::spawn_blocking(move || tree_size(&local))
                    .await
                    .map_err(|e| JobError::transient(e.to_string()))?
                    .map_err(|e| {
                        JobError::permanent(format!("cannot size {}: {e}", spec.local.display()))
                    })?
            }
            TransferDirection::Pull => {
                let out = session
                    .run("du", &["-sb", "--", &p.remote_path])
                    .await
                    .map_err(job_error)?;
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        JobError::transient(format!("cannot read the size of {}", p.remote_path))
                    })?
            }
        };
        if bytes <= limit {
            return Ok(());
        }
        if let Some(who) = ctx.approved_by() {
            ctx.info(format!(
                "{} to move (over the {} confirmation limit); confirmed by {who}",
                human_bytes(bytes),
                human_bytes(limit)
            ));
            return Ok(());
        }
        ctx.progress(&serde_json::json!({
            "awaiting_approval": true, "bytes": bytes, "confirm_above": limit,
            "server": p.server, "local_path": p.local_path, "remote_path": p.remote_path,
        }));
        Err(JobError::approval(format!(
            "transfer of {} is larger than transfer.confirm_above ({})",
            human_bytes(bytes),
            human_bytes(limit)
        )))
    }

    /// `path` if it lies under one of this agent's roots (symlinks included).
    fn confine(&self, path: &str) -> Result<PathBuf, TransferError> {
        confine_to_roots(&self.roots, path)
    }
}

/// Forwards transfer events to the coordinator as job events.
struct JobEvents<'a> {
    ctx: &'a JobContext,
}

impl TransferEvents for JobEvents<'_> {
    fn chunks(&mut self, updates: &[ChunkUpdate]) {
        // Large transfers have many chunks; send them in reasonably sized messages.
        for batch in updates.chunks(1000) {
            self.ctx.chunks(
                batch
                    .iter()
                    .map(|u| v1::ChunkState {
                        chunk_id: u.chunk.id(),
                        source_path: u.source_path.clone(),
                        dest_path: u.dest_path.clone(),
                        offset: u.chunk.offset as i64,
                        size: u.chunk.len as i64,
                        checksum: u.chunk.checksum.clone(),
                        status: u.status.as_str().to_owned(),
                        retry_count: u.retry_count,
                        error: u.error.clone().unwrap_or_default(),
                    })
                    .collect(),
            );
        }
    }

    fn progress(&mut self, p: &TransferProgress) {
        self.ctx
            .progress(&serde_json::to_value(p).unwrap_or_default());
    }

    fn log(&mut self, message: &str) {
        self.ctx.info(message);
    }
}

/// The step's `algorithm` (validated with its parameters) or the configured default.
fn hash_algorithm(p: &TransferParams, t: &ferry_core::config::TransferConfig) -> HashAlgorithm {
    let chosen = p
        .algorithm
        .as_deref()
        .and_then(|a| a.parse().ok())
        .unwrap_or(t.hash_algorithm);
    match chosen {
        ferry_core::config::HashAlgorithm::Blake3 => HashAlgorithm::Blake3,
        ferry_core::config::HashAlgorithm::Sha256 => HashAlgorithm::Sha256,
    }
}
