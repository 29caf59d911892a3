//! The `cleanup` kind: removes a pipeline task's staging data, inside the agent's roots.

use std::path::{Path, PathBuf};

use ferry_core::config::FerryConfig;
use ferry_core::kinds::{self, CleanupParams};
use ferry_transfer::transfer::human_bytes;

use crate::executor::{Executor, JobContext, JobError, JobFuture};
use crate::paths::{confine_to_roots, tree_size};

pub struct CleanupExecutor {
    roots: Vec<PathBuf>,
}

impl CleanupExecutor {
    pub fn new(config: &FerryConfig) -> CleanupExecutor {
        CleanupExecutor {
            roots: config.agent.effective_roots(config),
        }
    }
}

impl Executor for CleanupExecutor {
    fn kind(&self) -> &'static str {
        kinds::CLEANUP
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let roots = self.roots.clone();
        Box::pin(async move {
            let p: CleanupParams = ctx.params()?;
            for raw in &p.paths {
                let path = confine_to_roots(&roots, raw)
                    .map_err(|e| JobError::permanent(e.to_string()))?;
                if roots.iter().any(|r| r == &path) {
                    return Err(JobError::permanent(format!(
                        "refusing to remove {}: it is one of this agent's roots",
                        path.display()
                    )));
                }
                let target = path.clone();
                let freed = tokio::task::spawn_blocking(move || remove_tree(&target))
                    .await
                    .map_err(|e| JobError::transient(e.to_string()))?
                    .map_err(|e| {
                        JobError::transient(format!("cannot remove {}: {e}", path.display()))
                    })?;
                match freed {
                    Some(bytes) => ctx.info(format!(
                        "removed {} ({})",
                        path.display(),
                        human_bytes(bytes)
                    )),
                    None => ctx.info(format!("{} was already gone", path.display())),
                }
            }
            Ok(())
        })
    }
}

/// Removes `path`; `None` when it did not exist (a retried cleanup is not an error).
fn remove_tree(path: &Path) -> std::io::Result<Option<u64>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bytes = tree_size(path).unwrap_or(0);
    if meta.is_dir() {
        std::fs::remove_dir_all(path)?;
    } else {
        std::fs::remove_file(path)?;
    }
    Ok(Some(bytes))
}
