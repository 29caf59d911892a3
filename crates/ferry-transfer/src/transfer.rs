//! One verified directory transfer, push or pull:
//!
//! 1. the source side writes a manifest (chunk checksums) beside the data;
//! 2. the destination's free space is checked against what is still missing;
//! 3. rsync moves the data over the session (`--partial-dir`, so an interrupted file
//!    resumes and a half-written file never sits under its final name);
//! 4. the destination verifies every chunk against the manifest;
//! 5. each chunk that fails is re-sent alone (a `dd` of its byte range through the same
//!    session) and verified again, up to the retry limit.
//!
//! Chunk states and progress are reported through `TransferEvents` as they change.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use openssh::Stdio;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::landing::{
    DATA_SENT, Plan, READY, dir_bytes, free_bytes, parse_df_available, space_refusal,
};
use crate::manifest::{ChunkRef, HashAlgorithm, MANIFEST_NAME, Manifest};
use crate::rsync::{self, Direction, Progress, RsyncOptions, RsyncStats};
use crate::ssh::{SshSession, shell_quote};
use crate::{TransferError, confine};

pub use crate::landing::PARTIAL_DIR;

#[derive(Debug, Clone)]
pub struct TransferSpec {
    pub direction: Direction,
    /// The directory on this host (already confined by the caller).
    pub local: PathBuf,
    /// The directory on the other host.
    pub remote: String,
    pub chunk_size: u64,
    pub algorithm: HashAlgorithm,
    pub rsync: RsyncOptions,
    /// Re-sends of one chunk before the transfer fails (seed 000: 10).
    pub max_chunk_retries: u32,
    /// The `ferry` CLI on the other host (builds and verifies manifests there).
    pub remote_ferry: String,
    /// rsync processes run side by side, each on its share of the files (at most one per
    /// `bytes_per_worker`).
    pub parallel_workers: u32,
    /// See [`BYTES_PER_WORKER`].
    pub bytes_per_worker: u64,
    /// How long the other host may stay silent: its first answer (a dead SSH connection
    /// gives none) and rsync's `--timeout` (no data moving either way).
    pub io_timeout: std::time::Duration,
}

/// The default [`TransferSpec::io_timeout`].
pub const DEFAULT_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkStatus {
    Pending,
    InProgress,
    Completed,
    Failed,
}

impl ChunkStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkStatus::Pending => "pending",
            ChunkStatus::InProgress => "in_progress",
            ChunkStatus::Completed => "completed",
            ChunkStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkUpdate {
    pub chunk: ChunkRef,
    pub source_path: String,
    pub dest_path: String,
    pub status: ChunkStatus,
    pub retry_count: u32,
    pub error: Option<String>,
}

/// Progress of the whole transfer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TransferProgress {
    pub phase: &'static str,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub files_total: usize,
    pub percent: u32,
    pub rate: String,
    pub eta: String,
}

/// Where a transfer reports what happens.
pub trait TransferEvents: Send {
    fn chunks(&mut self, updates: &[ChunkUpdate]);
    fn progress(&mut self, progress: &TransferProgress);
    fn log(&mut self, message: &str);
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransferOutcome {
    pub bytes_total: u64,
    pub files: usize,
    pub chunks: usize,
    /// Chunks that failed verification and were re-sent alone.
    pub chunks_resent: usize,
    /// File bytes rsync sent as literal data (not matched from the destination).
    pub rsync: RsyncStats,
    pub seconds: f64,
}

pub use crate::manifest::VerifySummary;

/// Runs one transfer over `session`.
pub async fn run(
    session: &SshSession,
    spec: &TransferSpec,
    events: &mut dyn TransferEvents,
) -> Result<TransferOutcome, TransferError> {
    let started = Instant::now();
    let (src_root, dst_root) = match spec.direction {
        Direction::Push => (spec.local.display().to_string(), spec.remote.clone()),
        Direction::Pull => (spec.remote.clone(), spec.local.display().to_string()),
    };
    let update =
        |c: &ChunkRef, status: ChunkStatus, retry_count: u32, error: Option<String>| ChunkUpdate {
            source_path: format!("{src_root}/{}", c.path),
            dest_path: format!("{dst_root}/{}", c.path),
            chunk: c.clone(),
            status,
            retry_count,
            error,
        };
    let (manifest, summary, stats) = match spec.direction {
        Direction::Push => push(session, spec, events, &update).await?,
        Direction::Pull => pull(session, spec, events, &update).await?,
    };
    let total = manifest.total_bytes();
    let mut progress = TransferProgress {
        phase: "verifying",
        bytes_total: total,
        bytes_done: total,
        files_total: manifest.files.len(),
        percent: 100,
        ..Default::default()
    };
    let all: Vec<ChunkRef> = manifest.chunks().collect();

    // Verify, then re-send what is wrong, chunk by chunk.
    let mut retries: std::collections::HashMap<String, u32> = Default::default();
    let mut resent = 0;
    let mut summary = summary;
    loop {
        if summary.complete {
            break;
        }
        if !summary.missing_files.is_empty() {
            // Whole files are absent (deleted or never written): let rsync bring them.
            events.log(&format!(
                "{} files missing at the destination; sending them again",
                summary.missing_files.len()
            ));
            rsync_dir(session, spec, None, |_| {}).await?;
        }
        for path in &summary.too_long {
            let entry = manifest.files.iter().find(|f| &f.path == path);
            if let Some(f) = entry {
                truncate_destination(session, spec, path, f.size).await?;
            }
        }
        let bad: Vec<&ChunkRef> = all
            .iter()
            .filter(|c| summary.bad.contains(&c.id()))
            .collect();
        let mut failed_updates = Vec::new();
        for c in &bad {
            let n = retries.entry(c.id()).or_insert(0);
            *n += 1;
            if *n > spec.max_chunk_retries {
                events.chunks(&[update(
                    c,
                    ChunkStatus::Failed,
                    *n - 1,
                    Some("checksum mismatch after every retry".into()),
                )]);
                return Err(TransferError::Verification {
                    path: PathBuf::from(format!("{dst_root}/{}", c.path)),
                    detail: format!(
                        "chunk {} still differs after {} re-sends",
                        c.index, spec.max_chunk_retries
                    ),
                });
            }
            failed_updates.push(update(
                c,
                ChunkStatus::Failed,
                *n,
                Some("checksum mismatch; re-sending".into()),
            ));
        }
        if !failed_updates.is_empty() {
            events.chunks(&failed_updates);
            events.log(&format!(
                "{} chunks failed verification; re-sending them alone",
                bad.len()
            ));
        }
        for c in bad {
            send_chunk(session, spec, c).await?;
            resent += 1;
        }
        summary = verify_destination(session, spec, &manifest).await?;
    }
    events.chunks(
        &all.iter()
            .map(|c| {
                update(
                    c,
                    ChunkStatus::Completed,
                    retries.get(&c.id()).copied().unwrap_or(0),
                    None,
                )
            })
            .collect::<Vec<_>>(),
    );
    progress.phase = "verified";
    progress.bytes_done = total;
    progress.percent = 100;
    events.progress(&progress);
    Ok(TransferOutcome {
        bytes_total: total,
        files: manifest.files.len(),
        chunks: all.len(),
        chunks_resent: resent,
        rsync: stats,
        seconds: started.elapsed().as_secs_f64(),
    })
}

type Update<'a> = dyn Fn(&ChunkRef, ChunkStatus, u32, Option<String>) -> ChunkUpdate + Sync + 'a;

/// What the first pass leaves for verification and repair: the manifest, the first
/// verification's summary, rsync's counts.
type FirstPass = (Manifest, VerifySummary, RsyncStats);

/// Announces the planned chunks and the transfer's size.
fn announce(
    plan: &Manifest,
    reused: Option<usize>,
    events: &mut dyn TransferEvents,
    update: &Update<'_>,
) {
    let chunks: Vec<ChunkRef> = plan.chunks().collect();
    events.log(&format!(
        "{} files, {} chunks of {}, {} in all; checksums: {}{}",
        plan.files.len(),
        chunks.len(),
        human_bytes(plan.chunk_size),
        human_bytes(plan.total_bytes()),
        plan.algorithm_name(),
        match reused {
            Some(n) if n > 0 => format!(" ({n} files unchanged since their last manifest)"),
            _ => String::new(),
        }
    ));
    events.chunks(
        &chunks
            .iter()
            .map(|c| update(c, ChunkStatus::InProgress, 0, None))
            .collect::<Vec<_>>(),
    );
}

/// rsync with progress reports at most twice a second; also what rsync's remote command
/// said on its standard error.
async fn rsync_with_progress(
    session: &SshSession,
    spec: &TransferSpec,
    plan: &Plan,
    events: &mut dyn TransferEvents,
) -> Result<(RsyncStats, String), TransferError> {
    let total = plan.total_bytes();
    let mut progress = TransferProgress {
        phase: "transferring",
        bytes_total: total,
        files_total: plan.files.len(),
        ..Default::default()
    };
    let mut last_report = Instant::now();
    let stats = rsync_dir(session, spec, Some(plan), |p: Progress| {
        if last_report.elapsed().as_millis() >= 500 {
            last_report = Instant::now();
            progress.bytes_done = p.bytes.min(total);
            progress.percent = p.percent;
            progress.rate = p.rate.clone();
            progress.eta = p.eta.clone();
            events.progress(&progress);
        }
    })
    .await;
    match stats {
        Ok(s) => Ok(s),
        Err(e) => Err(on_rsync_error(session, spec, total, e).await),
    }
}

/// Whether a push lands through one rsync process whose remote command verifies
/// (`ferry manifest land`): every push but one split across parallel workers.
fn lands_alone(spec: &TransferSpec, plan: &Plan) -> bool {
    spec.direction == Direction::Push
        && workers_for(spec.parallel_workers, spec.bytes_per_worker, plan) <= 1
}

/// Push: checksums are computed here while rsync sends (reusing those of files unchanged
/// since the last manifest), and the other host hashes files as they land, so verification
/// ends soon after the data does. With one rsync process, the other host's side is rsync's
/// own remote command (`ferry manifest land`): it checks the space, hashes what lands and
/// says the digest of the whole tree, which is compared here; only when the digests differ
/// is the manifest sent for a chunk-by-chunk verification (`ferry manifest receive`).
/// Parallel workers each have their own rsync, so `ferry manifest receive` follows them
/// all from the start.
async fn push(
    session: &SshSession,
    spec: &TransferSpec,
    events: &mut dyn TransferEvents,
    update: &Update<'_>,
) -> Result<FirstPass, TransferError> {
    let mut plan = Manifest::scan(&spec.local, spec.chunk_size, spec.algorithm)?;
    let reused = plan.reuse_from(&spec.local.join(MANIFEST_NAME), &spec.local);
    let hashing = {
        let mut m = plan.clone();
        let root = spec.local.clone();
        tokio::task::spawn_blocking(move || m.hash_all(&root).map(|()| m))
    };
    let hashed = async {
        hashing.await.map_err(|e| TransferError::Verification {
            path: spec.local.clone(),
            detail: format!("hashing stopped: {e}"),
        })?
    };
    announce(&plan, Some(reused), events, update);
    let planned = Plan::of(&plan);
    // Kept beside the source (with this host's file identities) for the next transfer,
    // written while the other host's answer is read.
    let save = |m: &Manifest| {
        let (m, path) = (m.clone(), spec.local.join(MANIFEST_NAME));
        tokio::task::spawn_blocking(move || m.save(&path))
    };
    let (manifest, summary, stats, saving) = if lands_alone(spec, &planned) {
        let sending = rsync_with_progress(session, spec, &planned, events);
        let ((stats, said), manifest) = tokio::try_join!(sending, hashed)?;
        let saving = save(&manifest);
        let summary = match crate::landing::Heard::read(&said) {
            Some(crate::landing::Heard::Landed { digest, .. }) if digest == manifest.digest() => {
                VerifySummary {
                    complete: true,
                    verified: manifest.chunks().count(),
                    ..Default::default()
                }
            }
            heard => {
                events.log(&match heard {
                    Some(crate::landing::Heard::Unverified(why)) => format!(
                        "the destination could not hash what landed ({why}); verifying chunk by chunk"
                    ),
                    Some(_) => "the destination's files differ from this manifest; verifying chunk by chunk".to_owned(),
                    None => "no word from the destination on what landed; verifying chunk by chunk".to_owned(),
                });
                let mut receiver = Receiver::start(session, spec).await?;
                receiver
                    .feed(session, spec, &planned, async { Ok(manifest.clone()) })
                    .await?;
                receiver.finish().await?
            }
        };
        (manifest, summary, stats, saving)
    } else {
        let mut receiver = Receiver::start(session, spec).await?;
        let feeding = receiver.feed(session, spec, &planned, hashed);
        let sending = rsync_with_progress(session, spec, &planned, events);
        let (manifest, (stats, _)) = tokio::try_join!(feeding, sending)?;
        let saving = save(&manifest);
        let summary = receiver.finish().await?;
        (manifest, summary, stats, saving)
    };
    saving.await.map_err(|e| TransferError::Verification {
        path: spec.local.clone(),
        detail: format!("saving the manifest stopped: {e}"),
    })??;
    Ok((manifest, summary, stats))
}

/// `ferry manifest receive` on the other host: told the plan, then the manifest, then that
/// the data has gone; answers with the verification's summary.
struct Receiver<'s> {
    child: openssh::Child<&'s openssh::Session>,
    to: openssh::ChildStdin,
    from: tokio::io::BufReader<openssh::ChildStdout>,
    stderr: Option<openssh::ChildStderr>,
    what: String,
}

impl<'s> Receiver<'s> {
    async fn start(session: &'s SshSession, spec: &'s TransferSpec) -> Result<Self, TransferError> {
        let what = format!(
            "`{} manifest receive` on {}",
            spec.remote_ferry, session.target.host
        );
        let failed = |detail: String| TransferError::Command {
            what: what.clone(),
            detail,
        };
        let mut child = session
            .command(&spec.remote_ferry)
            .arg("manifest")
            .arg("receive")
            .arg(&spec.remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let to = child
            .stdin()
            .take()
            .ok_or_else(|| failed("no stdin".into()))?;
        let from = tokio::io::BufReader::new(
            child
                .stdout()
                .take()
                .ok_or_else(|| failed("no stdout".into()))?,
        );
        let stderr = child.stderr().take();
        Ok(Receiver {
            child,
            to,
            from,
            stderr,
            what,
        })
    }

    fn failed(&self, detail: String) -> TransferError {
        TransferError::Command {
            what: self.what.clone(),
            detail,
        }
    }

    /// The receiver's error, with its own words (they say more than a broken pipe).
    async fn complaint(&mut self, detail: String) -> TransferError {
        let said = complaint(self.stderr.take()).await;
        self.failed(if detail.is_empty() {
            said
        } else {
            format!("{detail}; {said}")
        })
    }

    /// Sends the plan at once and the manifest as soon as it is known. The receiver's first
    /// answer is bounded: a connection that died before its first word never fails by itself.
    async fn feed(
        &mut self,
        session: &SshSession,
        spec: &TransferSpec,
        plan: &Plan,
        manifest: impl std::future::Future<Output = Result<Manifest, TransferError>>,
    ) -> Result<Manifest, TransferError> {
        if let Err(e) = send_line(&mut self.to, plan).await {
            return Err(self.complaint(e.to_string()).await);
        }
        match first_answer(session, spec, read_raw_line(&mut self.from)).await? {
            Ok(Some(line)) if line.trim() == READY => {}
            Ok(Some(line)) => {
                return Err(self.failed(format!("unexpected answer: {}", line.trim())));
            }
            Ok(None) => return Err(self.complaint(String::new()).await),
            Err(e) => return Err(self.complaint(e).await),
        }
        let manifest = manifest.await?;
        if let Err(e) = send_line(&mut self.to, &manifest.without_stats()).await {
            return Err(self.complaint(e.to_string()).await);
        }
        Ok(manifest)
    }

    /// Says the data has gone and reads the summary; the receiver saves its manifest
    /// before it ends.
    async fn finish(mut self) -> Result<VerifySummary, TransferError> {
        let sent = self.to.write_all(format!("{DATA_SENT}\n").as_bytes()).await;
        if let Err(e) = sent {
            return Err(self.complaint(e.to_string()).await);
        }
        let _ = self.to.shutdown().await;
        let summary = match read_line(&mut self.from).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(self.complaint(String::new()).await),
            Err(e) => return Err(self.failed(e)),
        };
        let _ = self.child.wait().await;
        Ok(summary)
    }
}
/// Pull: the other host scans (and hashes, reusing its last manifest) while rsync brings
/// the data, and files here are hashed as they land.
async fn pull(
    session: &SshSession,
    spec: &TransferSpec,
    events: &mut dyn TransferEvents,
    update: &Update<'_>,
) -> Result<FirstPass, TransferError> {
    let chunk = spec.chunk_size.to_string();
    let what = format!(
        "`{} manifest build` on {}",
        spec.remote_ferry, session.target.host
    );
    let failed = |detail: String| TransferError::Command {
        what: what.clone(),
        detail,
    };
    let mut builder = session
        .command(&spec.remote_ferry)
        .arg("manifest")
        .arg("build")
        .arg(&spec.remote)
        .arg("--chunk-size")
        .arg(&chunk)
        .arg("--algorithm")
        .arg(algorithm_arg(spec.algorithm))
        .arg("--stream")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut from = tokio::io::BufReader::new(
        builder
            .stdout()
            .take()
            .ok_or_else(|| failed("no stdout".into()))?,
    );
    let mut stderr = builder.stderr().take();
    let plan_text = match first_answer(session, spec, read_raw_line(&mut from)).await? {
        Ok(Some(t)) => t,
        Ok(None) => {
            let said = complaint(stderr.take()).await;
            return Err(missing_remote_source(spec, failed(said)));
        }
        Err(e) => return Err(failed(e)),
    };
    let planned = Plan::parse(&plan_text, &spec.local)?;
    let shell = planned.unhashed();
    announce(&shell, None, events, update);
    std::fs::create_dir_all(&spec.local).map_err(|e| TransferError::io(&spec.local, e))?;
    let present = crate::landing::present_bytes(&planned, &spec.local)?;
    let free = free_bytes(&spec.local);
    let needed = planned.total_bytes().saturating_sub(present);
    if needed > free {
        return Err(disk_full(session, spec, needed, free));
    }

    let landing = crate::landing::follow(&spec.local, &planned);
    let (stats, _) = rsync_with_progress(session, spec, &planned, events).await?;
    let manifest_text = match read_raw_line(&mut from).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(failed(complaint(stderr.take()).await)),
        Err(e) => return Err(failed(e)),
    };
    drop(from);
    let _ = builder.wait().await;
    let manifest = Manifest::parse(
        &manifest_text,
        &PathBuf::from(format!("{}/{MANIFEST_NAME}", spec.remote)),
        &spec.local,
    )?;
    let landed = landing.finish();
    let landed = if Plan::of(&manifest) == planned {
        landed
    } else {
        Vec::new()
    };
    let root = spec.local.clone();
    let m = manifest.clone();
    let (report, file_stats) = tokio::task::spawn_blocking(move || m.verify_landed(&root, &landed))
        .await
        .map_err(|e| TransferError::Verification {
            path: spec.local.clone(),
            detail: format!("verification stopped: {e}"),
        })??;
    manifest
        .with_stats(&file_stats)
        .save(&spec.local.join(MANIFEST_NAME))?;
    Ok((manifest, VerifySummary::from(&report), stats))
}

/// The other host's first answer, or a connection error (transient: the master is
/// discarded and the step retried) when none comes within the I/O timeout: a master whose
/// connection died hangs rather than fails.
async fn first_answer<T>(
    session: &SshSession,
    spec: &TransferSpec,
    answer: impl std::future::Future<Output = T>,
) -> Result<T, TransferError> {
    tokio::time::timeout(spec.io_timeout, answer)
        .await
        .map_err(|_| TransferError::Connect {
            host: session.target.host.clone(),
            port: session.target.port,
            detail: format!(
                "no answer within {} s through the SSH connection (it may be dead)",
                spec.io_timeout.as_secs_f64()
            ),
        })
}

async fn send_line<T: Serialize>(
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    value: &T,
) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    text.push(b'\n');
    to.write_all(&text).await?;
    to.flush().await
}

/// What the other side said on its standard error when it stopped answering.
async fn complaint(stderr: Option<openssh::ChildStderr>) -> String {
    let mut text = String::new();
    if let Some(mut e) = stderr {
        let _ = e.read_to_string(&mut text).await;
    }
    let text = text.trim();
    if text.is_empty() {
        "it ended without an answer".to_owned()
    } else {
        text.to_owned()
    }
}

/// One line of the other side's answer; `None` when it ended first.
async fn read_raw_line(
    from: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> Result<Option<String>, String> {
    let mut line = String::new();
    match from.read_line(&mut line).await {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(line)),
        Err(e) => Err(e.to_string()),
    }
}

async fn read_line<T: serde::de::DeserializeOwned>(
    from: &mut (impl tokio::io::AsyncBufRead + Unpin),
) -> Result<Option<T>, String> {
    match read_raw_line(from).await? {
        None => Ok(None),
        Some(line) => serde_json::from_str(line.trim())
            .map(Some)
            .map_err(|e| format!("unreadable answer: {e}")),
    }
}

impl Manifest {
    fn algorithm_name(&self) -> &'static str {
        match self.algorithm {
            HashAlgorithm::Blake3 => "blake3",
            HashAlgorithm::Sha256 => "sha256",
        }
    }
}

fn algorithm_arg(a: HashAlgorithm) -> &'static str {
    match a {
        HashAlgorithm::Blake3 => "blake3",
        HashAlgorithm::Sha256 => "sha256",
    }
}

fn missing_remote_source(spec: &TransferSpec, e: TransferError) -> TransferError {
    match &e {
        TransferError::Command { detail, .. } if detail.contains("does not exist") => {
            TransferError::MissingSource(PathBuf::from(&spec.remote))
        }
        _ => e,
    }
}

/// rsync of the whole directory: one process, or (with `parallel_workers` > 1 and a
/// manifest to split by) one per share of the files, all through the same SSH master.
async fn rsync_dir(
    session: &SshSession,
    spec: &TransferSpec,
    plan: Option<&Plan>,
    mut on_progress: impl FnMut(Progress),
) -> Result<(RsyncStats, String), TransferError> {
    // The destination directory exists: the receiver (push) or `pull` created it.
    let mut opts = spec.rsync.clone();
    opts.extra.push(format!("--partial-dir={PARTIAL_DIR}"));
    opts.extra
        .push(format!("--timeout={}", spec.io_timeout.as_secs().max(1)));
    if plan.is_some_and(many_small_files) {
        // rsync writes a progress line after every file; for thousands of small files,
        // those writes and the wake-ups reading them cost a third of the transfer
        // (10,000 x 4 KiB: 1.75 s against 1.15 s). Block-buffered, they arrive in bursts,
        // which is all a report every half second needs.
        opts.extra.push("--outbuf=B".into());
    }
    // Each side writes its own manifest (with its own file identities); it never travels
    // as data.
    opts.extra.push(format!("--exclude=/{MANIFEST_NAME}"));
    let mut greeting = None;
    if let (Direction::Push, Some(p)) = (spec.direction, plan) {
        // The other host creates the destination and checks its space before rsync writes
        // anything there, in rsync's own remote command (no round trip of its own); alone,
        // that command also hashes what lands (see `push`).
        let ferry = shell_quote(&spec.remote_ferry);
        let dir = shell_quote(&spec.remote);
        let need = p.total_bytes();
        opts.extra.push(if lands_alone(spec, p) {
            greeting = Some(rsync::Greeting {
                line: crate::landing::LANDING_READY.to_owned(),
                within: spec.io_timeout,
            });
            format!(
                "--rsync-path={ferry} manifest land --need {need} --chunk-size {} --algorithm {} {dir} -- rsync",
                p.chunk_size,
                algorithm_arg(p.algorithm)
            )
        } else {
            format!("--rsync-path={ferry} manifest space --need {need} {dir} && rsync")
        });
    }
    let workers = plan.map_or(1, |p| {
        workers_for(spec.parallel_workers, spec.bytes_per_worker, p)
    });
    let groups = match plan {
        Some(p) if workers > 1 && p.files.len() > 1 => split_files(p, workers),
        _ => {
            return rsync::transfer_heard(
                session,
                spec.direction,
                &spec.local,
                &spec.remote,
                &opts,
                greeting,
                on_progress,
            )
            .await;
        }
    };
    let lists = tempfile::tempdir().map_err(|e| TransferError::io(std::env::temp_dir(), e))?;
    let done = std::sync::Mutex::new(vec![0u64; groups.len()]);
    let report = std::sync::Mutex::new(&mut on_progress);
    let mut runs = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let list = lists.path().join(format!("files-{i}"));
        std::fs::write(&list, group.join("\n") + "\n").map_err(|e| TransferError::io(&list, e))?;
        let mut o = opts.clone();
        o.extra.push(format!("--files-from={}", list.display()));
        let (done, report) = (&done, &report);
        runs.push(async move {
            rsync::transfer(
                session,
                spec.direction,
                &spec.local,
                &spec.remote,
                &o,
                move |p: Progress| {
                    let sum: u64 = {
                        let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
                        d[i] = p.bytes;
                        d.iter().sum()
                    };
                    let mut f = report.lock().unwrap_or_else(|e| e.into_inner());
                    (*f)(Progress { bytes: sum, ..p });
                },
            )
            .await
        });
    }
    let mut total = RsyncStats::default();
    for r in futures_join_all(runs).await {
        let s = r?;
        total.literal_bytes += s.literal_bytes;
        total.bytes_sent += s.bytes_sent;
        total.files_transferred += s.files_transferred;
    }
    Ok((total, String::new()))
}

/// Runs futures concurrently on the current task and returns their results in order.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// Bytes an extra rsync process must have to pay for itself (its own process pair and a
/// remote shell start): below it, splitting costs more than it saves (`cargo xtask bench
/// transfer`: 10,000 files of 4 KiB took 1.5 s with one process and 1.7 s with four).
pub const BYTES_PER_WORKER: u64 = 64 << 20;

/// How many rsync processes a plan gets: at most `configured`, and one per `bytes_per_worker`
/// ([`BYTES_PER_WORKER`] by default).
pub fn workers_for(configured: u32, bytes_per_worker: u64, p: &Plan) -> usize {
    let by_size = (p.total_bytes() / bytes_per_worker.max(1)).max(1);
    (configured.max(1) as u64).min(by_size) as usize
}

/// Thousands of files averaging under 1 MiB: rsync's progress is better block-buffered.
/// (A few large files keep it line-buffered: a block of progress lines would take minutes
/// to fill.)
fn many_small_files(p: &Plan) -> bool {
    let files = p.files.len() as u64;
    files >= 1000 && p.total_bytes() / files < (1 << 20)
}

/// Splits the plan's files into `n` groups of similar size.
fn split_files(p: &Plan, n: usize) -> Vec<Vec<String>> {
    let mut files: Vec<(&str, u64)> = p.files.iter().map(|f| (f.path.as_str(), f.size)).collect();
    files.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut groups: Vec<(u64, Vec<String>)> = vec![(0, Vec::new()); n.min(files.len()).max(1)];
    for (path, size) in files {
        if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
            g.0 += size.max(1);
            g.1.push(path.to_owned());
        }
    }
    groups
        .into_iter()
        .map(|g| g.1)
        .filter(|g| !g.is_empty())
        .collect()
}

/// Free bytes on the destination and bytes already there.
async fn destination_space(
    session: &SshSession,
    spec: &TransferSpec,
) -> Result<(u64, u64), TransferError> {
    match spec.direction {
        Direction::Push => {
            session.run("mkdir", &["-p", &spec.remote]).await?;
            let df = session.run("df", &["-Pk", &spec.remote]).await?;
            let free = parse_df_available(&String::from_utf8_lossy(&df.stdout)).unwrap_or(u64::MAX);
            let du = session.run("du", &["-sb", &spec.remote]).await?;
            let used = String::from_utf8_lossy(&du.stdout)
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Ok((free, used))
        }
        Direction::Pull => {
            std::fs::create_dir_all(&spec.local).map_err(|e| TransferError::io(&spec.local, e))?;
            Ok((free_bytes(&spec.local), dir_bytes(&spec.local)))
        }
    }
}

fn disk_full(session: &SshSession, spec: &TransferSpec, needed: u64, free: u64) -> TransferError {
    let (host, path) = match spec.direction {
        Direction::Push => (session.target.host.clone(), PathBuf::from(&spec.remote)),
        Direction::Pull => ("this host".to_owned(), spec.local.clone()),
    };
    TransferError::DiskFull {
        host,
        path,
        needed,
        free,
    }
}

/// An rsync failure: a full destination has its temporary files removed and is reported
/// with the space needed and free.
async fn on_rsync_error(
    session: &SshSession,
    spec: &TransferSpec,
    total: u64,
    e: TransferError,
) -> TransferError {
    // Refused before anything was written (rsync's remote command checks first).
    if let TransferError::Command { detail, .. } = &e
        && let Some((needed, free)) = space_refusal(detail)
    {
        return disk_full(session, spec, needed, free);
    }
    let full = matches!(&e, TransferError::Command { detail, .. } if detail.contains("No space left on device") || detail.contains("Disk quota exceeded"));
    if !full {
        return e;
    }
    let _ = clean_partial(session, spec).await;
    match destination_space(session, spec).await {
        Ok((free, present)) => disk_full(session, spec, total.saturating_sub(present), free),
        Err(_) => disk_full(session, spec, total, 0),
    }
}

/// Removes rsync's partial files at the destination (the step's temporary files).
pub async fn clean_partial(session: &SshSession, spec: &TransferSpec) -> Result<(), TransferError> {
    match spec.direction {
        Direction::Push => {
            session
                .run(
                    "find",
                    &[
                        &spec.remote,
                        "-type",
                        "d",
                        "-name",
                        PARTIAL_DIR,
                        "-prune",
                        "-exec",
                        "rm",
                        "-rf",
                        "{}",
                        "+",
                    ],
                )
                .await?;
        }
        Direction::Pull => remove_partial_dirs(&spec.local),
    }
    Ok(())
}

fn remove_partial_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if e.file_name() == PARTIAL_DIR {
                let _ = std::fs::remove_dir_all(e.path());
            } else {
                remove_partial_dirs(&e.path());
            }
        }
    }
}

async fn verify_destination(
    session: &SshSession,
    spec: &TransferSpec,
    manifest: &Manifest,
) -> Result<VerifySummary, TransferError> {
    match spec.direction {
        Direction::Pull => {
            let report = manifest.verify(&spec.local)?;
            Ok(VerifySummary::from(&report))
        }
        Direction::Push => {
            let out = session
                .run(
                    &spec.remote_ferry,
                    &["manifest", "verify", &spec.remote, "--json"],
                )
                .await?;
            serde_json::from_slice(&out.stdout).map_err(|e| TransferError::Command {
                what: format!(
                    "`{} manifest verify` on {}",
                    spec.remote_ferry, session.target.host
                ),
                detail: format!("unreadable answer: {e}"),
            })
        }
    }
}

async fn truncate_destination(
    session: &SshSession,
    spec: &TransferSpec,
    path: &str,
    size: u64,
) -> Result<(), TransferError> {
    match spec.direction {
        Direction::Push => {
            session
                .run(
                    "truncate",
                    &["-s", &size.to_string(), &format!("{}/{path}", spec.remote)],
                )
                .await?;
        }
        Direction::Pull => {
            let full = confine::join(&spec.local, path)?;
            let f = OpenOptions::new()
                .write(true)
                .open(&full)
                .map_err(|e| TransferError::io(&full, e))?;
            f.set_len(size).map_err(|e| TransferError::io(&full, e))?;
        }
    }
    Ok(())
}

/// Writes `bytes` into a file on the other host: at `offset` leaving the rest intact, or
/// (without an offset) as the whole new content.
async fn write_remote(
    session: &SshSession,
    remote_file: &str,
    offset: Option<u64>,
    bytes: &[u8],
) -> Result<(), TransferError> {
    let err = |detail: String| TransferError::Command {
        what: format!(
            "writing {} bytes to {remote_file} on {}",
            bytes.len(),
            session.target.host
        ),
        detail,
    };
    let mut cmd = session.command("dd");
    cmd.arg(format!("of={remote_file}"))
        .arg("bs=1M")
        .arg("status=none");
    if let Some(offset) = offset {
        cmd.arg(format!("seek={offset}"))
            .arg("oflag=seek_bytes")
            .arg("conv=notrunc");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .await
        .map_err(|e| err(e.to_string()))?;
    if let Some(mut stdin) = child.stdin().take() {
        stdin
            .write_all(bytes)
            .await
            .map_err(|e| err(e.to_string()))?;
        stdin.shutdown().await.map_err(|e| err(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}

/// Re-sends one chunk's byte range, nothing else.
async fn send_chunk(
    session: &SshSession,
    spec: &TransferSpec,
    c: &ChunkRef,
) -> Result<(), TransferError> {
    let remote_file = format!("{}/{}", spec.remote, c.path);
    let what = || format!("re-sending chunk {} of {}", c.index, c.path);
    match spec.direction {
        Direction::Push => {
            let local = confine::join(&spec.local, &c.path)?;
            let mut buf = vec![0u8; c.len as usize];
            {
                let mut f =
                    std::fs::File::open(&local).map_err(|e| TransferError::io(&local, e))?;
                f.seek(SeekFrom::Start(c.offset))
                    .and_then(|_| f.read_exact(&mut buf))
                    .map_err(|e| TransferError::io(&local, e))?;
            }
            write_remote(session, &remote_file, Some(c.offset), &buf).await?;
        }
        Direction::Pull => {
            let mut child = session
                .command("dd")
                .arg(format!("if={remote_file}"))
                .arg("bs=1M")
                .arg(format!("skip={}", c.offset))
                .arg(format!("count={}", c.len))
                .arg("iflag=skip_bytes,count_bytes")
                .arg("status=none")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .await
                .map_err(|e| TransferError::Command {
                    what: what(),
                    detail: e.to_string(),
                })?;
            let mut buf = Vec::with_capacity(c.len as usize);
            if let Some(mut stdout) = child.stdout().take() {
                stdout
                    .read_to_end(&mut buf)
                    .await
                    .map_err(|e| TransferError::Command {
                        what: what(),
                        detail: e.to_string(),
                    })?;
            }
            let out = child
                .wait_with_output()
                .await
                .map_err(|e| TransferError::Command {
                    what: what(),
                    detail: e.to_string(),
                })?;
            if !out.status.success() || buf.len() as u64 != c.len {
                return Err(TransferError::Command {
                    what: what(),
                    detail: format!(
                        "got {} of {} bytes: {}",
                        buf.len(),
                        c.len,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
            let local = confine::join(&spec.local, &c.path)?;
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&local)
                .map_err(|e| TransferError::io(&local, e))?;
            f.seek(SeekFrom::Start(c.offset))
                .and_then(|_| f.write_all(&buf))
                .and_then(|()| f.sync_data())
                .map_err(|e| TransferError::io(&local, e))?;
        }
    }
    Ok(())
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_split_into_balanced_groups() {
        let m = Manifest {
            version: 1,
            algorithm: HashAlgorithm::Blake3,
            chunk_size: 10,
            files: [("a", 100u64), ("b", 60), ("c", 50), ("d", 10)]
                .iter()
                .map(|(p, size)| crate::manifest::FileEntry {
                    path: (*p).to_owned(),
                    size: *size,
                    chunks: vec![String::new(); size.div_ceil(10) as usize],
                    stat: None,
                })
                .collect(),
        };
        let p = Plan::of(&m);
        let groups = split_files(&p, 2);
        // Largest first onto the lighter group: 100 + 10 against 60 + 50.
        assert_eq!(
            groups,
            vec![
                vec!["a".to_owned(), "d".into()],
                vec!["b".to_owned(), "c".into()]
            ]
        );
        assert_eq!(split_files(&p, 8).len(), 4, "never more groups than files");
    }

    #[test]
    fn small_trees_get_one_rsync_process() {
        let plan = |files: u64, size: u64| Plan {
            version: crate::landing::EXCHANGE_VERSION,
            chunk_size: 1 << 20,
            algorithm: HashAlgorithm::Blake3,
            files: (0..files)
                .map(|i| crate::landing::PlannedFile {
                    path: format!("f{i}"),
                    size,
                })
                .collect(),
        };
        assert_eq!(
            workers_for(4, BYTES_PER_WORKER, &plan(10_000, 4096)),
            1,
            "40 MiB"
        );
        assert_eq!(
            workers_for(4, BYTES_PER_WORKER, &plan(4, 64 << 20)),
            4,
            "256 MiB"
        );
        assert_eq!(workers_for(4, BYTES_PER_WORKER, &plan(2, 64 << 20)), 2);
        assert_eq!(
            workers_for(1, BYTES_PER_WORKER, &plan(100, 1 << 30)),
            1,
            "as configured"
        );
        assert_eq!(workers_for(0, BYTES_PER_WORKER, &plan(1, 1)), 1);
    }

    #[test]
    fn df_output_parses() {
        let out = "Filesystem     1024-blocks  Used Available Capacity Mounted on\ntmpfs                 2048     4      2044       1% /mnt/x\n";
        assert_eq!(parse_df_available(out), Some(2044 * 1024));
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
