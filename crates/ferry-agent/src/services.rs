//! Seed 003's DATA service (`data` kind: files that already exist, published for the
//! transfers that carry them to their consumers) and the self-peer download (`upload` kind:
//! a job's output sent to the coordinator, checksummed file by file).

use ferry_core::config::FerryConfig;
use ferry_core::kinds::{self, DataParams, UploadParams};
use ferry_proto::v1::{self, agent_service_client::AgentServiceClient, output_chunk::Part};
use ferry_transfer::transfer::human_bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::executor::{Executor, JobContext, JobError, JobFuture};
use crate::jobio::{link_or_copy, regular_files};
use crate::policy::Policy;

/// Bytes per upload message.
const UPLOAD_CHUNK: usize = 1024 * 1024;

pub struct DataExecutor {
    policy: Policy,
}

impl DataExecutor {
    pub fn new(config: &FerryConfig) -> DataExecutor {
        DataExecutor {
            policy: Policy::from_config(config),
        }
    }
}

impl Executor for DataExecutor {
    fn kind(&self) -> &'static str {
        kinds::DATA
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let policy = self.policy.clone();
        Box::pin(async move {
            let p: DataParams = ctx.params()?;
            let (files, bytes) = tokio::task::spawn_blocking(move || publish(&p, &policy))
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
fn publish(p: &DataParams, policy: &Policy) -> Result<(usize, u64), JobError> {
    // Every path, offered or written, is checked before anything is cleared or read.
    let mut offered = Vec::with_capacity(p.paths.len());
    for raw in &p.paths {
        offered.push((raw, policy.confine("offered data", raw)?));
    }
    let out = policy.confine_replaced("output directory", &p.output_dir)?;
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
    tls: ferry_core::config::TlsConfig,
    agent: String,
    policy: Policy,
}

impl UploadExecutor {
    pub fn new(coordinator_url: &str, agent: &str, config: &FerryConfig) -> UploadExecutor {
        UploadExecutor {
            coordinator_url: coordinator_url.to_owned(),
            tls: config.tls.clone(),
            agent: agent.to_owned(),
            policy: Policy::from_config(config),
        }
    }
}

impl Executor for UploadExecutor {
    fn kind(&self) -> &'static str {
        kinds::UPLOAD
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let url = self.coordinator_url.clone();
        let tls = self.tls.clone();
        let agent = self.agent.clone();
        let policy = self.policy.clone();
        Box::pin(async move { upload(ctx, url, &tls, agent, policy).await })
    }
}

async fn upload(
    ctx: JobContext,
    url: String,
    tls: &ferry_core::config::TlsConfig,
    agent: String,
    policy: Policy,
) -> Result<(), JobError> {
    let p: UploadParams = ctx.params()?;
    // Only what lies under the agent's roots leaves the host.
    let root = policy.confine("upload source", &p.local_path)?;
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
    let endpoint =
        ferry_proto::tls::endpoint(&url, tls).map_err(|e| JobError::permanent(e.to_string()))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| JobError::transient(format!("cannot reach the coordinator at {url}: {e}")))?;
    let mut client = AgentServiceClient::new(channel)
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::config::AllowConfig;

    #[test]
    fn data_output_outside_the_roots_is_refused_before_it_is_cleared() {
        let root = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("tmp");
        let sentinel = outside.path().join("sentinel");
        std::fs::write(&sentinel, "keep").expect("write");
        std::fs::write(root.path().join("offered.csv"), "1\n").expect("write");
        let policy = Policy::new(vec![root.path().to_owned()], AllowConfig::default());
        let p = |output_dir: &std::path::Path| DataParams {
            paths: vec![root.path().join("offered.csv").display().to_string()],
            output_dir: output_dir.display().to_string(),
        };
        let e = publish(&p(outside.path()), &policy).expect_err("outside");
        assert!(e.message.starts_with("output directory `"), "{e}");
        assert!(sentinel.exists(), "nothing was cleared");
        let e = publish(&p(root.path()), &policy).expect_err("a root");
        assert!(e.message.contains("one of this agent's roots"), "{e}");
        assert_eq!(
            publish(&p(&root.path().join("out")), &policy).expect("inside"),
            (1, 2)
        );
    }

    #[tokio::test]
    async fn an_upload_from_outside_the_roots_is_refused_before_anything_is_read() {
        let root = tempfile::tempdir().expect("tmp");
        let policy = Policy::new(vec![root.path().to_owned()], AllowConfig::default());
        let ctx = crate::executor::test_context(
            serde_json::json!({"local_path": "/etc", "node": "n"}),
            root.path(),
        );
        // No coordinator listens there: the refusal comes first.
        let tls = ferry_core::config::TlsConfig::default();
        let e = upload(ctx, "http://127.0.0.1:1".into(), &tls, "a".into(), policy)
            .await
            .expect_err("refused");
        assert!(
            e.message.starts_with(
                "upload source `/etc` is refused: not under any of this agent's roots"
            ),
            "{e}"
        );
        assert_eq!(e.class, ferry_core::ErrorClass::Permanent);
    }
}
