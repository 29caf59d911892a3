//! The one confinement check: a path a step names stays under one of the agent's roots,
//! lexically (no `..`, relative paths only where relative ones are expected) and through
//! symlinks, which are resolved at the moment of the check, right before use.

use std::path::{Component, Path, PathBuf};

/// A path refused, or a root that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path `{path}` refused (root {}): {reason}", root.display())]
pub struct Refused {
    pub root: PathBuf,
    pub path: String,
    pub reason: String,
}

fn refuse(root: &Path, path: &str, reason: impl Into<String>) -> Refused {
    Refused {
        root: root.to_owned(),
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Checks the shape of a relative path: not empty, not absolute, no `..`.
pub fn check_relative(root: &Path, rel: &str) -> Result<(), Refused> {
    if rel.is_empty() {
        return Err(refuse(root, rel, "empty path"));
    }
    for c in Path::new(rel).components() {
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
pub fn join(root: &Path, rel: &str) -> Result<PathBuf, Refused> {
    check_relative(root, rel)?;
    let joined = root.join(rel);
    let canonical_root = root
        .canonicalize()
        .map_err(|e| refuse(root, rel, format!("the root cannot be read: {e}")))?;
    resolves_inside(&joined, &canonical_root).map_err(|reason| refuse(root, rel, reason))?;
    Ok(joined)
}

/// Whether `path` stays under `canonical_root` once symlinks are resolved: the deepest part
/// of it that exists is resolved (what does not exist yet cannot be a symlink).
fn resolves_inside(path: &Path, canonical_root: &Path) -> Result<(), &'static str> {
    let mut existing = path;
    while !existing.exists() && existing.symlink_metadata().is_err() {
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    let resolved = existing
        .canonicalize()
        .map_err(|_| "a symlink on the path points nowhere")?;
    if resolved.starts_with(canonical_root) {
        Ok(())
    } else {
        Err("a symlink leads outside the root")
    }
}

/// [`join`] for many paths under one root (a transfer's thousands of files): the root is
/// resolved once and each directory once, and each file costs one `lstat` (a file that is
/// itself a symlink is resolved in full). The same rule as `join`, at the moment of each call
/// for the file and at the first call for its directory.
pub struct Joiner {
    root: PathBuf,
    canonical_root: PathBuf,
    /// Directories (under `root`) already resolved: inside the root, or the reason not.
    dirs: std::collections::HashMap<PathBuf, Result<(), &'static str>>,
}

impl Joiner {
    pub fn new(root: &Path) -> Result<Joiner, Refused> {
        let canonical_root = root
            .canonicalize()
            .map_err(|e| refuse(root, "", format!("the root cannot be read: {e}")))?;
        Ok(Joiner {
            root: root.to_owned(),
            canonical_root,
            dirs: std::collections::HashMap::new(),
        })
    }

    pub fn join(&mut self, rel: &str) -> Result<PathBuf, Refused> {
        check_relative(&self.root, rel)?;
        let joined = self.root.join(rel);
        if joined
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            return join(&self.root, rel);
        }
        let Some(dir) = joined.parent() else {
            return Ok(joined);
        };
        let verdict = match self.dirs.get(dir) {
            Some(v) => *v,
            None => {
                let v = resolves_inside(dir, &self.canonical_root);
                // A directory that does not exist yet is resolved again next time.
                if dir.exists() {
                    self.dirs.insert(dir.to_owned(), v);
                }
                v
            }
        };
        verdict
            .map(|()| joined)
            .map_err(|reason| refuse(&self.root, rel, reason))
    }
}

/// `path` (absolute) if it lies under one of `roots`, lexically and through symlinks. A root
/// may be named as configured or by its resolved location. With `create_root`, the matching
/// root is created when missing (a destination that is about to be written).
pub fn under_roots(roots: &[PathBuf], path: &str, create_root: bool) -> Result<PathBuf, Refused> {
    let p = Path::new(path);
    let first = roots.first().cloned().unwrap_or_default();
    if !p.is_absolute() {
        return Err(refuse(&first, path, "not an absolute path"));
    }
    for root in roots {
        let named = std::iter::once(root.clone()).chain(root.canonicalize().ok());
        for form in named {
            let Ok(rel) = p.strip_prefix(&form) else {
                continue;
            };
            if create_root {
                std::fs::create_dir_all(root)
                    .map_err(|e| refuse(root, path, format!("cannot create the root: {e}")))?;
            }
            let rel = rel.to_string_lossy();
            if rel.is_empty() {
                return Ok(p.to_owned());
            }
            return join(&form, &rel);
        }
    }
    Err(refuse(
        &first,
        path,
        format!(
            "not under any of this agent's roots ({})",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
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
    }

    /// The joiner for many files keeps `join`'s rule: escaping directories, escaping file
    /// symlinks and a symlink planted after a directory was first seen are refused.
    #[test]
    fn a_joiner_refuses_what_join_refuses() {
        let outside = tempfile::tempdir().expect("tmp");
        std::fs::write(outside.path().join("secret"), b"x").expect("write");
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(root.path().join("data")).expect("mkdir");
        let mut j = Joiner::new(root.path()).expect("root");
        assert!(j.join("data/part-0.parquet").is_ok());
        assert!(j.join("data/part-1.parquet").is_ok());
        assert!(j.join("new/dir/file").is_ok());
        assert!(j.join("../etc/passwd").is_err());
        assert!(j.join("/etc/passwd").is_err());
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).expect("symlink");
        let err = j.join("escape/secret").expect_err("escapes");
        assert!(err.to_string().contains("symlink leads outside"), "{err}");
        // A file that is itself a link out.
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("data/link"))
            .expect("symlink");
        let err = j.join("data/link").expect_err("escapes");
        assert!(err.to_string().contains("symlink leads outside"), "{err}");
        // A directory that did not exist when first asked about is looked at again.
        std::os::unix::fs::symlink(outside.path(), root.path().join("new")).expect("symlink");
        assert!(j.join("new/dir/file").is_err());
    }

    #[test]
    fn an_absolute_path_must_lie_under_a_root() {
        let root = tempfile::tempdir().expect("tmp");
        let roots = vec![root.path().to_owned()];
        let inside = format!("{}/models/m1", root.path().display());
        assert_eq!(
            under_roots(&roots, &inside, false).expect("inside"),
            PathBuf::from(&inside)
        );
        for bad in ["/etc", "relative/path"] {
            assert!(under_roots(&roots, bad, false).is_err(), "{bad}");
        }
        let climb = format!("{}/../etc", root.path().display());
        let err = under_roots(&roots, &climb, false).expect_err("climbs");
        assert!(err.to_string().contains("`..`"), "{err}");
        // The same root through a symlink to it is the same root.
        let alias_dir = tempfile::tempdir().expect("tmp");
        let alias = alias_dir.path().join("alias");
        std::os::unix::fs::symlink(root.path(), &alias).expect("symlink");
        let via_alias = vec![alias.clone()];
        let real = format!("{}/x", root.path().canonicalize().expect("real").display());
        assert!(under_roots(&via_alias, &real, false).is_ok());
        // A missing root is created only when asked.
        let fresh = root.path().join("staging");
        let target = format!("{}/t1", fresh.display());
        assert!(under_roots(std::slice::from_ref(&fresh), &target, false).is_err());
        assert!(under_roots(std::slice::from_ref(&fresh), &target, true).is_ok());
        assert!(fresh.is_dir());
    }
}
