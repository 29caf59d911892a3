//! Seed 003's DATA service (`data` kind: files that already exist, published for the
//! transfers that carry them to their consumers) and the self-peer download (`upload` kind:
//! a job's output sent to the coordinator, checksummed file by file).

use std::path::PathBuf;

use ferry_core::config::FerryConfig;
use ferry_core::kinds::{self, DataParams, UploadParams};
use ferry_proto::v1::{self, agent_service_client::AgentServiceClient, output_chunk::Part};
use ferry_transfer::transfer::human_bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::executor::{Executor, JobContext, JobError, JobFuture};
use crate::jobio::{link_or_copy, regular_files};

/// Bytes per upload message.
const UPLOAD_CHUNK: usize = 1024 * 1024;

pub struct DataExecutor {
    roots: Vec<PathBuf>,
}

impl DataExecutor {
    pub fn new(config: &FerryConfig) -> DataExecutor {
        DataExecutor {
            roots: config.agent.effective_roots(config),
        }
    }
}

impl Executor for DataExecutor {
    fn kind(&self) -> &'static str {
        kinds::DATA
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let roots = self.roots.clone();
        Box::pin(async move {
            let p: DataParams = ctx.params()?;
            let (files, bytes) = tokio::task::spawn_blocking(move || publish(&p, &roots))
                .await
                .map_err(|e| JobError::transient(format!("publishing data: {e}")))??;
            ctx.info(format!(
                "offering {files} files ({}) to this node's consumers",
                human_bytes(bytes)
            ));
            ctx.metric("data_bytes", bytes as f64, 0);
            Ok(())
        })
    }
}

/// Links the offered files into `output_dir` (replacing what an earlier attempt left).
fn publish(p: &DataParams, roots: &[PathBuf]) -> Result<(usize, u64), JobError> {
    // Every offered path is checked before anything is cleared or read.
    let mut offered = Vec::with_capacity(p.paths.len());
    for raw in &p.paths {
        let src = ferry_fs::confine::under_roots(roots, raw, false).map_err(|e| {
            JobError::permanent(format!("offered data `{raw}` is refused: {}", e.reason))
        })?;
        offered.push((raw, src));
    }
    let out = PathBuf::from(&p.output_dir);
    match std::fs::remove_dir_all(&out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(JobError::transient(format!(
                "cannot clear {}: {e}",
                out.display()
            )));
        }
    }
    std::fs::create_dir_all(&out)
        .map_err(|e| JobError::transient(format!("cannot create {}: {e}", out.display())))?;
    let (mut files, mut bytes) = (0, 0);
    for (offered, src) in offered {
        let meta = std::fs::metadata(&src).map_err(|e| {
            JobError::permanent(format!("offered data `{offered}` cannot be read: {e}"))
        })?;
        if meta.is_file() {
            let name = src.file_name().ok_or_else(|| {
                JobError::permanent(format!("offered data `{offered}` has no file name"))
            })?;
            link_or_copy(&src, &out.join(name))?;
            files += 1;
            bytes += meta.len();
        } else {
            for (rel, full, len) in regular_files(&src)? {
                link_or_copy(&full, &out.join(rel))?;
                files += 1;
                bytes += len;
            }
        }
    }
    Ok((files, bytes))
}

pub struct UploadExecutor {
    coordinator_url: String,
    agent: String,
}

impl UploadExecutor {
    pub fn new(coordinator_url: &str, agent: &str) -> UploadExecutor {
        UploadExecutor {
            coordinator_url: coordinator_url.to_owned(),
            agent: agent.to_owned(),
        }
    }
}

impl Executor for UploadExecutor {
    fn kind(&self) -> &'static str {
        kinds::UPLOAD
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let url = self.coordinator_url.clone();
        let agent = self.agent.clone();
        Box::pin(async move { upload(ctx, url, agent).await })
    }
}

async fn upload(ctx: JobContext, url: String, agent: String) -> Result<(), JobError> {
    let p: UploadParams = ctx.params()?;
    let root = PathBuf::from(&p.local_path);
    let mut files = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || regular_files(&root))
            .await
            .map_err(|e| JobError::transient(format!("listing output: {e}")))??
    };
    if let Some(name) = &p.file_name {
        match files.as_mut_slice() {
            [(rel, _, _)] => *rel = name.clone(),
            _ => {
                return Err(JobError::permanent(format!(
                    "destination_file_name `{name}` needs exactly one file, but {} holds {}",
                    root.display(),
                    files.len()
                )));
            }
        }
    }
    let total: u64 = files.iter().map(|f| f.2).sum();
    ctx.info(format!(
        "sending {} files ({}) to the coordinator",
        files.len(),
        human_bytes(total)
    ));
    let mut client = AgentServiceClient::connect(url.clone())
        .await
        .map_err(|e| JobError::transient(format!("cannot reach the coordinator at {url}: {e}")))?
        .max_decoding_message_size(8 * 1024 * 1024)
        .max_encoding_message_size(8 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<v1::OutputChunk>(4);
    let header = v1::UploadHeader {
        task_id: ctx.task_id,
        node: p.node.clone(),
        agent,
    };
    let producer = tokio::spawn(async move {
        let send = |part: Part| {
            let tx = tx.clone();
            async move {
                tx.send(v1::OutputChunk { part: Some(part) })
                    .await
                    .map_err(|_| "the coordinator closed the upload".to_owned())
            }
        };
        send(Part::Header(header)).await?;
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        for (rel, full, size) in files {
            send(Part::File(v1::FileStart { path: rel, size })).await?;
            let mut f = tokio::fs::File::open(&full)
                .await
                .map_err(|e| format!("cannot open {}: {e}", full.display()))?;
            let mut hasher = blake3::Hasher::new();
            loop {
                let n = f
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("reading {}: {e}", full.display()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                send(Part::Data(buf[..n].to_vec())).await?;
            }
            send(Part::End(v1::FileEnd {
                blake3: hasher.finalize().to_hex().to_string(),
            }))
            .await?;
        }
        Ok::<(), String>(())
    });
    let result = tokio::select! {
        r = client.upload_output(ReceiverStream::new(rx)) => r,
        _ = ctx.cancellation().cancelled() => {
            producer.abort();
            return Err(JobError::transient("cancelled"));
        }
    };
    let produced = producer
        .await
        .map_err(|e| JobError::transient(format!("upload: {e}")))?;
    // A read error here explains a refused (truncated) upload better than the refusal.
    produced.map_err(JobError::transient)?;
    let receipt = result
        .map_err(|s| {
            JobError::transient(format!("coordinator refused the upload: {}", s.message()))
        })?
        .into_inner();
    ctx.info(format!(
        "coordinator verified {} files ({}) and keeps them in {}",
        receipt.files,
        human_bytes(receipt.bytes),
        receipt.stored_at
    ));
    ctx.metric("upload_bytes", receipt.bytes as f64, 0);
    Ok(())
}
