//! Ferry's file-system rules, one place each, for every crate that writes or reads a host's
//! files:
//!
//! - **durable write-then-rename** ([`write_atomic`], [`persist`]): content is fsynced before
//!   it takes its final name, and the directory after, so a crash leaves either the old file
//!   or the new one, never a torn one under the final name;
//! - **one directory walk** ([`walk_files`]): regular files under a root, symlinks not
//!   followed, in path order;
//! - **one confinement check** ([`confine`]): a path stays under a root, with symlinks
//!   resolved at the moment of use.
//!
//! Synchronous (`std::fs`): async callers run these on blocking threads.

pub mod confine;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why a secret file (a private key, a token) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("does not exist")]
    Missing,
    #[error("cannot be read: {0}")]
    Unreadable(io::Error),
    #[error("is not a regular file")]
    NotAFile,
    #[error(
        "has mode {mode:04o}: a secret must not be accessible by group or others; run `chmod 600 {path}`"
    )]
    TooOpen { mode: u32, path: String },
}

/// The one check of a secret file (SSH and TLS private keys, token files): it exists, is a
/// regular file, and neither group nor others may access it.
pub fn check_private(path: &Path) -> Result<(), PrivateFileError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PrivateFileError::Missing),
        Err(e) => return Err(PrivateFileError::Unreadable(e)),
    };
    if !meta.is_file() {
        return Err(PrivateFileError::NotAFile);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::TooOpen {
            mode,
            path: path.display().to_string(),
        });
    }
    Ok(())
}

/// Writes `bytes` to `path` durably: a hidden temporary file in the same directory, fsynced,
/// renamed over `path`, then the directory fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        rename_and_sync(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Gives a file written under a temporary name its final name durably: the file is fsynced,
/// renamed to `path`, and the directory fsynced.
pub fn persist(tmp: &Path, path: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    rename_and_sync(tmp, path)
}

/// Makes the entries of `dir` (a rename into it, a new file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn rename_and_sync(tmp: &Path, path: &Path) -> io::Result<()> {
    std::fs::rename(tmp, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Puts the directory `new` in place of `target` (replacing what was there), so that `target`
/// always holds either the whole old content or the whole new one: the old one is moved to a
/// hidden sibling, the new one renamed into place, the parent fsynced, the old one removed.
/// A crash between the two renames leaves the old content in the sibling;
/// [`recover_dir`] puts it back.
pub fn replace_dir(new: &Path, target: &Path) -> io::Result<()> {
    sync_dir(new)?;
    let old = old_sibling(target);
    match std::fs::remove_dir_all(&old) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let had_old = match std::fs::rename(target, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    rename_and_sync(new, target)?;
    if had_old {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Undoes a [`replace_dir`] that a crash cut between its renames: if `target` is missing and
/// its old content waits in the hidden sibling, it goes back.
pub fn recover_dir(target: &Path) -> io::Result<()> {
    let old = old_sibling(target);
    if !target.exists() && old.is_dir() {
        rename_and_sync(&old, target)?;
    }
    Ok(())
}

fn old_sibling(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.old"))
}

/// `dir/.name.tmp-PID`: hidden, next to its final name (a rename never crosses devices), and
/// distinct per process.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// A regular file found by [`walk_files`].
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Relative to the root, `/`-separated.
    pub rel: String,
    pub path: PathBuf,
    pub len: u64,
    /// The file's metadata as the walk read it (not following a final symlink).
    pub meta: std::fs::Metadata,
}

/// What [`walk_files`] does with a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    /// Leave it out.
    Skip,
    /// Fail with `InvalidInput` naming it (a transfer never follows one).
    Refuse,
}

/// The regular files under `root` (or `root` itself when it is a file), in path order;
/// entries whose name `skip` accepts are left out (with everything under them).
pub fn walk_files(
    root: &Path,
    symlinks: Symlinks,
    skip: impl Fn(&str) -> bool,
) -> io::Result<Vec<FileEntry>> {
    let meta = std::fs::symlink_metadata(root)?;
    if meta.is_file() {
        return Ok(vec![FileEntry {
            rel: String::new(),
            path: root.to_owned(),
            len: meta.len(),
            meta,
        }]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if skip(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                match symlinks {
                    Symlinks::Skip => continue,
                    Symlinks::Refuse => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("{} is a symlink", relative(root, &path)),
                        ));
                    }
                }
            } else if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() {
                let meta = entry.metadata()?;
                out.push(FileEntry {
                    rel: relative(root, &path),
                    len: meta.len(),
                    meta,
                    path,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// `path` relative to `root`, `/`-separated.
pub fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace(std::path::MAIN_SEPARATOR, "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"{\"a\":1}").expect("first");
        write_atomic(&path, b"{}").expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"{}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        // A directory that does not exist is an error, not a panic.
        assert!(write_atomic(&dir.path().join("no/such/file"), b"x").is_err());
    }

    #[test]
    fn replace_dir_swaps_whole_contents_and_recovers_a_cut_swap() {
        let dir = tempfile::tempdir().expect("tmp");
        let target = dir.path().join("download");
        let fill = |name: &str, file: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join(file), file).expect("write");
            d
        };
        replace_dir(&fill("new1", "a"), &target).expect("first");
        replace_dir(&fill("new2", "b"), &target).expect("second");
        let names: Vec<_> = std::fs::read_dir(&target)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["b"], "the old content is gone, not merged");
        // A crash after the first rename: the old content waits in the sibling.
        std::fs::rename(&target, old_sibling(&target)).expect("cut");
        recover_dir(&target).expect("recover");
        assert!(target.join("b").is_file());
        recover_dir(&target).expect("nothing to do");
    }

    #[test]
    fn persist_gives_a_written_file_its_final_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let final_path = dir.path().join("part-0.parquet");
        let tmp = temp_path(&final_path);
        std::fs::write(&tmp, b"data").expect("write");
        persist(&tmp, &final_path).expect("persist");
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&final_path).expect("read"), b"data");
    }

    #[test]
    fn the_walk_lists_regular_files_in_order_and_treats_symlinks_as_asked() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/c")).expect("mkdir");
        std::fs::write(root.join("b/c/z.bin"), b"12345").expect("write");
        std::fs::write(root.join("a.txt"), b"1").expect("write");
        std::fs::write(root.join(".ferry-partial"), b"skip").expect("write");
        let found = walk_files(root, Symlinks::Refuse, |n| n.starts_with(".ferry")).expect("walk");
        let rels: Vec<(&str, u64)> = found.iter().map(|f| (f.rel.as_str(), f.len)).collect();
        assert_eq!(rels, [("a.txt", 1), ("b/c/z.bin", 5)]);
        std::os::unix::fs::symlink("/etc", root.join("etc")).expect("symlink");
        let err = walk_files(root, Symlinks::Refuse, |_| false).expect_err("symlink");
        assert_eq!(err.to_string(), "etc is a symlink");
        assert_eq!(
            walk_files(root, Symlinks::Skip, |_| false)
                .expect("walk")
                .len(),
            3
        );
        let one = walk_files(&root.join("a.txt"), Symlinks::Skip, |_| false).expect("file");
        assert_eq!(one[0].len, 1);
    }
}

#[cfg(test)]
mod private_tests {
    use super::*;

    #[test]
    fn secrets_must_be_the_owners_alone() -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("key");
        assert!(matches!(
            check_private(&key),
            Err(PrivateFileError::Missing)
        ));
        std::fs::write(&key, "secret")?;
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode))?;
            let err = check_private(&key).map(|_| ()).map_err(|e| e.to_string());
            assert!(
                err.as_ref().is_err_and(|e| e.contains("chmod 600")),
                "{mode:o}: {err:?}"
            );
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        assert!(check_private(&key).is_ok());
        assert!(matches!(
            check_private(dir.path()),
            Err(PrivateFileError::NotAFile)
        ));
        Ok(())
    }
}
