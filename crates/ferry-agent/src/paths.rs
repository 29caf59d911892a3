//! Paths a step names, kept under the agent's roots (`ferry_fs::confine`), and their sizes:
//! shared by the `transfer` and `monitor` kinds.

use std::path::{Path, PathBuf};

use ferry_transfer::TransferError;

/// `path` if it lies under one of `roots` (symlinks included); the root is created when
/// missing (a destination about to be written).
pub fn confine_to_roots(roots: &[PathBuf], path: &str) -> Result<PathBuf, TransferError> {
    ferry_transfer::confine::under_roots(roots, path, true)
}

/// Bytes in the regular files under `path`.
pub fn tree_size(path: &Path) -> std::io::Result<u64> {
    Ok(
        ferry_fs::walk_files(path, ferry_fs::Symlinks::Skip, |_| false)?
            .iter()
            .map(|f| f.len)
            .sum(),
    )
}
