//! Keeping an agent inside its configured roots: relative paths from manifests and requests
//! are refused when absolute, when they climb with `..`, or when a symlink leads outside. The
//! rule itself is `ferry_fs::confine`; this maps its refusals to transfer errors (permanent).

use std::path::{Path, PathBuf};

use crate::TransferError;

fn refused(r: ferry_fs::confine::Refused) -> TransferError {
    TransferError::Confinement {
        root: r.root,
        path: r.path,
        reason: r.reason,
    }
}

/// Checks the shape of a relative path: not empty, not absolute, no `..`.
pub fn check_relative(root: &Path, rel: &str) -> Result<(), TransferError> {
    ferry_fs::confine::check_relative(root, rel).map_err(refused)
}

/// `root/rel`, guaranteed to stay under `root` even through symlinks that already exist.
pub fn join(root: &Path, rel: &str) -> Result<PathBuf, TransferError> {
    ferry_fs::confine::join(root, rel).map_err(refused)
}

/// [`join`] for many files under one root, resolving each directory once.
pub struct Joiner(ferry_fs::confine::Joiner);

impl Joiner {
    pub fn new(root: &Path) -> Result<Joiner, TransferError> {
        ferry_fs::confine::Joiner::new(root)
            .map(Joiner)
            .map_err(refused)
    }

    pub fn join(&mut self, rel: &str) -> Result<PathBuf, TransferError> {
        self.0.join(rel).map_err(refused)
    }
}

/// `path` (absolute) if it lies under one of `roots`; see `ferry_fs::confine::under_roots`.
pub fn under_roots(
    roots: &[PathBuf],
    path: &str,
    create_root: bool,
) -> Result<PathBuf, TransferError> {
    ferry_fs::confine::under_roots(roots, path, create_root).map_err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules are `ferry_fs::confine`'s (tested there); a refusal here is a permanent
    /// transfer error that keeps the rule's reason.
    #[test]
    fn a_refusal_is_a_permanent_transfer_error_with_its_reason() {
        let outside = tempfile::tempdir().expect("tmp");
        let root = tempfile::tempdir().expect("tmp");
        assert!(join(root.path(), "data/part-0.parquet").is_ok());
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).expect("symlink");
        let err = join(root.path(), "escape/secret").expect_err("escapes");
        assert!(err.to_string().contains("symlink leads outside"), "{err}");
        assert_eq!(err.class(), ferry_core::ErrorClass::Permanent);
        let err = under_roots(&[root.path().to_owned()], "/etc", false).expect_err("outside");
        assert!(
            err.to_string()
                .contains("not under any of this agent's roots"),
            "{err}"
        );
        assert_eq!(err.class(), ferry_core::ErrorClass::Permanent);
    }
}
