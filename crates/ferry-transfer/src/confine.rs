//! Keeping an agent inside its configured roots: relative paths from manifests and requests
//! are refused when absolute, when they climb with `..`, or when a symlink leads outside.

use std::path::{Component, Path, PathBuf};

use crate::TransferError;

fn refuse(root: &Path, path: &str, reason: &str) -> TransferError {
    TransferError::Confinement {
        root: root.to_owned(),
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Checks the shape of a relative path: not empty, not absolute, no `..`.
pub fn check_relative(root: &Path, rel: &str) -> Result<(), TransferError> {
    if rel.is_empty() {
        return Err(refuse(root, rel, "empty path"));
    }
    let p = Path::new(rel);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(refuse(root, rel, "`..` is not allowed")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse(root, rel, "absolute paths are not allowed"));
            }
        }
    }
    Ok(())
}

/// `root/rel`, guaranteed to stay under `root` even through symlinks that already exist.
pub fn join(root: &Path, rel: &str) -> Result<PathBuf, TransferError> {
    check_relative(root, rel)?;
    let joined = root.join(rel);
    let canonical_root = root
        .canonicalize()
        .map_err(|e| TransferError::io(root, e))?;
    // Resolve the deepest part of the path that exists; what does not exist yet cannot be a
    // symlink.
    let mut existing = joined.as_path();
    while !existing.exists() && existing.symlink_metadata().is_err() {
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    let resolved = existing
        .canonicalize()
        .map_err(|_| refuse(root, rel, "a symlink on the path points nowhere"))?;
    if !resolved.starts_with(&canonical_root) {
        return Err(refuse(root, rel, "a symlink leads outside the root"));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn climbing_absolute_and_escaping_symlinks_are_refused() {
        let outside = tempfile::tempdir().expect("tmp");
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(root.path().join("data")).expect("mkdir");
        assert!(join(root.path(), "data/part-0.parquet").is_ok());
        assert!(join(root.path(), "new/dir/file").is_ok());
        let err = join(root.path(), "../etc/passwd").expect_err("climbs");
        assert!(err.to_string().contains("`..` is not allowed"), "{err}");
        let err = join(root.path(), "/etc/passwd").expect_err("absolute");
        assert!(
            err.to_string().contains("absolute paths are not allowed"),
            "{err}"
        );
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).expect("symlink");
        let err = join(root.path(), "escape/secret").expect_err("escapes");
        assert!(err.to_string().contains("symlink leads outside"), "{err}");
        assert_eq!(err.class(), ferry_core::ErrorClass::Permanent);
    }
}
