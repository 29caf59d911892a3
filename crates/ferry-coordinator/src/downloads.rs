//! Outputs sent to the coordinator (seed 003's self-peer download). The coordinator is a
//! peer of the path hierarchy too: files land in
//! `{data_dir}/workflows/<coordinator>/<task>/jobs/<coordinator>/download/input/<agent>/<node>/`,
//! each written under a temporary name and kept only when its BLAKE3 matches the sender's.

use std::path::{Component, Path, PathBuf};

use ferry_core::jobpaths::JobPaths;
use ferry_core::workflow::is_valid_step_name;
use ferry_proto::v1::{self, output_chunk::Part};
use ferry_store::Store;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::Status;

/// Bytes per download message.
const CHUNK: usize = 1024 * 1024;
const PART_SUFFIX: &str = ".ferry-part";
/// An upload in progress, beside the node's directory it will replace.
const INCOMING: &str = ".ferry-incoming-";

pub struct Downloads {
    data_dir: PathBuf,
    coordinator: String,
}

/// One kept file.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub node: String,
    /// Relative to the node's directory, `/`-separated.
    pub path: String,
    pub full: PathBuf,
}

fn io_status(what: &str, path: &Path, e: std::io::Error) -> Status {
    Status::internal(format!("{what} {}: {e}", path.display()))
}

impl Downloads {
    pub fn new(data_dir: PathBuf, coordinator: String) -> Downloads {
        // Absolute, so what receipts and logs name is where the files are.
        let data_dir = if data_dir.is_absolute() {
            data_dir
        } else {
            std::env::current_dir().unwrap_or_default().join(data_dir)
        };
        Downloads {
            data_dir,
            coordinator,
        }
    }

    fn job(&self, task_id: i64) -> JobPaths {
        let root = self.data_dir.display().to_string();
        JobPaths::new(
            &root,
            &self.coordinator,
            &task_id.to_string(),
            &self.coordinator,
            "download",
        )
    }

    /// Receives one upload; the node's earlier files (an earlier attempt's) are replaced.
    /// `sender`: the agent the TLS certificate names (`None` without TLS, on loopback); it
    /// may upload only under its own name, for a task with a step it runs now.
    pub async fn receive(
        &self,
        store: &Store,
        sender: Option<&str>,
        mut stream: impl Stream<Item = Result<v1::OutputChunk, Status>> + Unpin,
    ) -> Result<v1::UploadReceipt, Status> {
        let header = match stream.next().await {
            Some(Ok(v1::OutputChunk {
                part: Some(Part::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "an upload starts with an UploadHeader",
                ));
            }
        };
        if !is_valid_step_name(&header.node) || !is_plain_name(&header.agent) {
            return Err(Status::invalid_argument(format!(
                "invalid node `{}` or agent `{}` in the upload header",
                header.node, header.agent
            )));
        }
        store
            .task(header.task_id)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found(format!("task {} not found", header.task_id)))?;
        if let Some(sender) = sender {
            let runs_a_step = header.agent == sender
                && store
                    .steps(header.task_id)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .iter()
                    .any(|s| {
                        s.agent_name.as_deref() == Some(sender)
                            && s.status
                                .parse::<ferry_core::StepStatus>()
                                .is_ok_and(|st| st.is_on_agent())
                    });
            if !runs_a_step {
                crate::auth::security_event(
                    &format!(
                        "upload for task {} as agent `{}` refused: the sender runs no step of it",
                        header.task_id, header.agent
                    ),
                    sender,
                );
                return Err(Status::permission_denied(format!(
                    "agent `{sender}` runs no step of task {} and cannot upload as `{}`",
                    header.task_id, header.agent
                )));
            }
        }
        // Received beside the node's directory and swapped in only when every file verified:
        // a failed upload leaves the last good output (or none), never a partial one.
        let final_dir = PathBuf::from(self.job(header.task_id).input(&header.agent, &header.node));
        // A swap a crash cut short gets its old content back first.
        ferry_fs::recover_dir(&final_dir)
            .map_err(|e| io_status("cannot recover", &final_dir, e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = PathBuf::from(format!("{}{INCOMING}{nanos}", final_dir.display()));
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_status("cannot create", &dir, e))?;
        let outcome: Result<(u32, u64), Status> = async {
        let mut open: Option<(
            PathBuf,
            PathBuf,
            tokio::io::BufWriter<tokio::fs::File>,
            blake3::Hasher,
            u64,
            u64,
        )> = None;
        let (mut files, mut bytes) = (0u32, 0u64);
        while let Some(msg) = stream.next().await {
            match msg?.part {
                Some(Part::File(f)) => {
                    if open.is_some() {
                        return Err(Status::invalid_argument(
                            "FileStart before the previous FileEnd",
                        ));
                    }
                    let rel = relative(&f.path)?;
                    let full = dir.join(&rel);
                    if let Some(parent) = full.parent() {
                        tokio::fs::create_dir_all(parent)
                            .await
                            .map_err(|e| io_status("cannot create", parent, e))?;
                    }
                    let part = PathBuf::from(format!("{}{PART_SUFFIX}", full.display()));
                    let file = tokio::fs::File::create(&part)
                        .await
                        .map_err(|e| io_status("cannot create", &part, e))?;
                    open = Some((
                        full,
                        part,
                        tokio::io::BufWriter::with_capacity(CHUNK, file),
                        blake3::Hasher::new(),
                        f.size,
                        0,
                    ));
                }
                Some(Part::Data(data)) => {
                    let Some((_, part, w, hasher, _, written)) = open.as_mut() else {
                        return Err(Status::invalid_argument("data outside a file"));
                    };
                    hasher.update(&data);
                    *written += data.len() as u64;
                    w.write_all(&data)
                        .await
                        .map_err(|e| io_status("cannot write", part, e))?;
                }
                Some(Part::End(end)) => {
                    let Some((full, part, mut w, hasher, size, written)) = open.take() else {
                        return Err(Status::invalid_argument("FileEnd outside a file"));
                    };
                    w.flush()
                        .await
                        .map_err(|e| io_status("cannot write", &part, e))?;
                    w.get_ref()
                        .sync_all()
                        .await
                        .map_err(|e| io_status("cannot write", &part, e))?;
                    let actual = hasher.finalize().to_hex().to_string();
                    if actual != end.blake3 || written != size {
                        let _ = tokio::fs::remove_file(&part).await;
                        return Err(Status::data_loss(format!(
                            "{} arrived damaged ({written} of {size} bytes, blake3 {actual}, sender said {}); nothing kept",
                            full.display(),
                            end.blake3
                        )));
                    }
                    tokio::fs::rename(&part, &full)
                        .await
                        .map_err(|e| io_status("cannot keep", &full, e))?;
                    files += 1;
                    bytes += written;
                }
                Some(Part::Header(_)) => {
                    return Err(Status::invalid_argument("a second UploadHeader"));
                }
                None => {}
            }
        }
        if let Some((full, ..)) = open {
            return Err(Status::aborted(format!(
                "the upload ended in the middle of {}",
                full.display()
            )));
        }
        Ok((files, bytes))
        }
        .await;
        let (files, bytes) = match outcome {
            Ok(counts) => counts,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Err(e);
            }
        };
        // The previous download is replaced as a whole, never left half-removed.
        let swap = {
            let (dir, final_dir) = (dir.clone(), final_dir.clone());
            tokio::task::spawn_blocking(move || ferry_fs::replace_dir(&dir, &final_dir))
        };
        swap.await
            .map_err(|e| Status::internal(format!("replacing {}: {e}", final_dir.display())))?
            .map_err(|e| io_status("cannot replace", &final_dir, e))?;
        Ok(v1::UploadReceipt {
            files,
            bytes,
            stored_at: final_dir.display().to_string(),
        })
    }

    /// The kept files of a task (of one node when `node` is given), in order.
    pub fn files(&self, task_id: i64, node: Option<&str>) -> Result<Vec<StoredFile>, Status> {
        let input = PathBuf::from(self.job(task_id).input("x", "x"));
        // `.../input/<agent>/<node>/`: list every agent's directory.
        let Some(root) = input.parent().and_then(Path::parent) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let agents = match std::fs::read_dir(root) {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_status("cannot read", root, e)),
        };
        for agent in agents.flatten() {
            let Ok(nodes) = std::fs::read_dir(agent.path()) else {
                continue;
            };
            for n in nodes.flatten() {
                let name = n.file_name().to_string_lossy().into_owned();
                if name.contains(INCOMING) || node.is_some_and(|want| want != name) {
                    continue;
                }
                let base = n.path();
                let mut found = Vec::new();
                walk(&base, &base, &mut found).map_err(|e| io_status("cannot read", &base, e))?;
                out.extend(found.into_iter().map(|(path, full)| StoredFile {
                    node: name.clone(),
                    path,
                    full,
                }));
            }
        }
        out.sort_by(|a, b| (&a.node, &a.path).cmp(&(&b.node, &b.path)));
        Ok(out)
    }

    /// Streams `files` as FileStart, data, FileEnd (BLAKE3 of what was read) each.
    pub fn stream(
        files: Vec<StoredFile>,
        prefix_node: bool,
    ) -> mpsc::Receiver<Result<v1::OutputChunk, Status>> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let send = |part: Part| {
                let tx = tx.clone();
                async move {
                    tx.send(Ok(v1::OutputChunk { part: Some(part) }))
                        .await
                        .is_ok()
                }
            };
            let mut buf = vec![0u8; CHUNK];
            for f in files {
                let result: Result<(), Status> = async {
                    let mut file = tokio::fs::File::open(&f.full)
                        .await
                        .map_err(|e| io_status("cannot open", &f.full, e))?;
                    let size = file
                        .metadata()
                        .await
                        .map_err(|e| io_status("cannot read", &f.full, e))?
                        .len();
                    let path = if prefix_node {
                        format!("{}/{}", f.node, f.path)
                    } else {
                        f.path.clone()
                    };
                    if !send(Part::File(v1::FileStart { path, size })).await {
                        return Ok(());
                    }
                    let mut hasher = blake3::Hasher::new();
                    loop {
                        let n = file
                            .read(&mut buf)
                            .await
                            .map_err(|e| io_status("cannot read", &f.full, e))?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                        if !send(Part::Data(buf[..n].to_vec())).await {
                            return Ok(());
                        }
                    }
                    send(Part::End(v1::FileEnd {
                        blake3: hasher.finalize().to_hex().to_string(),
                    }))
                    .await;
                    Ok(())
                }
                .await;
                if let Err(e) = result {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        });
        rx
    }
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// A sender's relative path, refused when absolute or climbing with `..`.
fn relative(path: &str) -> Result<PathBuf, Status> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && !path.ends_with(PART_SUFFIX)
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(p.to_owned())
    } else {
        Err(Status::invalid_argument(format!(
            "file path `{path}` must be relative, without `..`"
        )))
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() && !path.to_string_lossy().ends_with(PART_SUFFIX) {
            let rel = path
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((rel, path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_paths_cannot_leave_the_download_directory() {
        assert!(relative("a/b.txt").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "x.ferry-part"] {
            assert!(relative(bad).is_err(), "{bad}");
        }
    }
}
