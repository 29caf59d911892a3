//! A graph job's connections on disk (seed 003): deliveries linked into the job's mounts
//! before it starts, delivered files streamed into its standard input, its standard output
//! captured to a file for its consumers. Shared by the `exec` (STANDALONE) and `docker`
//! kinds so both see their inputs the same way.

use std::path::{Path, PathBuf};

use ferry_core::jobpaths::STDOUT_FILE;
use ferry_core::kinds::{Delivery, JobIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::executor::JobError;
use crate::policy::{confine_within, join_within};

/// What `prepare` made ready.
#[derive(Debug, Clone)]
pub struct PreparedIo {
    /// Fed to standard input in this order.
    pub stdin_files: Vec<PathBuf>,
    /// Where standard output goes when a consumer reads it.
    pub stdout_file: Option<PathBuf>,
    /// (path inside the job, directory on this host).
    pub mounts: Vec<(String, PathBuf)>,
    /// `{job_dir}/mounts`: a STANDALONE job's working directory.
    pub mounts_root: PathBuf,
}

/// Creates the job's directories and links every delivery into place. Blocking.
///
/// Every path is confined first, symlinks resolved, before anything is cleared or read: the
/// job directory under `roots`, its mount and output directories inside the job directory
/// (the only host directories a container gets), deliveries under `roots`.
pub fn prepare(io: &JobIo, roots: &[PathBuf]) -> Result<PreparedIo, JobError> {
    let job_dir = ferry_fs::confine::under_roots(roots, &io.job_dir, true).map_err(|e| {
        JobError::permanent(format!(
            "job directory `{}` is refused: {}",
            e.path, e.reason
        ))
    })?;
    mkdir(&job_dir)?;
    let mounts_root = join_within(&job_dir, "job directory", "mounts")?;
    mkdir(&mounts_root)?;
    let stdout_dir = if io.capture_stdout {
        Some(join_within(&job_dir, "job directory", "output/stdout")?)
    } else {
        None
    };
    let mut mount_dirs = Vec::with_capacity(io.mounts.len());
    for m in &io.mounts {
        mount_dirs.push(confine_within(&job_dir, "mount directory", &m.dir)?);
    }
    for d in io
        .stdin
        .iter()
        .chain(io.mounts.iter().flat_map(|m| &m.sources))
    {
        ferry_fs::confine::under_roots(roots, &d.dir, false).map_err(|e| {
            JobError::permanent(format!("input `{}` is refused: {}", e.path, e.reason))
        })?;
    }
    // Every attempt starts from empty mounts and output: nothing an earlier attempt left
    // behind is fed to this one or shipped to consumers.
    let stdout_file = match stdout_dir {
        Some(dir) => {
            recreate_dir(&dir)?;
            Some(dir.join(STDOUT_FILE))
        }
        None => None,
    };
    let mut mounts = Vec::with_capacity(io.mounts.len());
    for (m, dir) in io.mounts.iter().zip(mount_dirs) {
        recreate_dir(&dir)?;
        for source in &m.sources {
            link_delivery(source, &dir)?;
        }
        mounts.push((m.path.clone(), dir));
    }
    let mut stdin_files = Vec::new();
    for d in &io.stdin {
        stdin_files.extend(delivered_files(d)?.into_iter().map(|(_, full)| full));
    }
    Ok(PreparedIo {
        stdin_files,
        stdout_file,
        mounts,
        mounts_root,
    })
}

/// Removes `dir` with its contents (if present) and creates it empty.
pub fn recreate_dir(dir: &Path) -> Result<(), JobError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(JobError::transient(format!(
                "cannot clear {}: {e}",
                dir.display()
            )));
        }
    }
    mkdir(dir)
}

fn mkdir(dir: &Path) -> Result<(), JobError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| JobError::transient(format!("cannot create {}: {e}", dir.display())))
}

/// The regular files of a delivery, relative path and full path, in path order.
fn delivered_files(d: &Delivery) -> Result<Vec<(String, PathBuf)>, JobError> {
    let root = PathBuf::from(&d.dir);
    if !root.is_dir() {
        // The engine starts a job only after its deliveries verified; a missing one means
        // someone removed it since.
        return Err(JobError::permanent(format!(
            "input {} was not delivered (or was removed after its transfer verified)",
            root.display()
        )));
    }
    Ok(regular_files(&root)?
        .into_iter()
        .map(|(rel, full, _)| (rel, full))
        .collect())
}

/// Links a delivery's files into a mount directory; `file_name` renames a single file.
fn link_delivery(d: &Delivery, mount_dir: &Path) -> Result<(), JobError> {
    let files = delivered_files(d)?;
    // Two deliveries into one mount must not silently replace each other's files.
    let place = |src: &Path, dst: &Path| {
        if dst.exists() {
            return Err(JobError::permanent(format!(
                "{} is delivered twice into one mount (again from {}); give the connections distinct destination_file_name",
                dst.display(),
                d.dir
            )));
        }
        link_or_copy(src, dst)
    };
    match (&d.file_name, files.as_slice()) {
        (Some(name), [(_, only)]) => place(only, &mount_dir.join(name)),
        (Some(name), _) => Err(JobError::permanent(format!(
            "destination_file_name `{name}` needs exactly one delivered file, but {} holds {}",
            d.dir,
            files.len()
        ))),
        (None, _) => {
            for (rel, full) in &files {
                place(full, &mount_dir.join(rel))?;
            }
            Ok(())
        }
    }
}

/// A hard link where the filesystem allows it (no copy of large inputs), a copy otherwise.
/// An existing destination (an earlier attempt's) is replaced.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<(), JobError> {
    let err = |what: &str, e: std::io::Error| {
        JobError::transient(format!(
            "cannot {what} {} to {}: {e}",
            src.display(),
            dst.display()
        ))
    };
    if let Some(parent) = dst.parent() {
        mkdir(parent)?;
    }
    match std::fs::remove_file(dst) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("replace", e)),
    }
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst)
        .map(|_| ())
        .map_err(|e| err("copy", e))
}

/// Streams `files` into `sink` one after the other, 64 KiB at a time, so an input of any
/// size passes through a fixed amount of memory. A job that stops reading early (closes its
/// standard input) is not an error.
pub async fn feed(files: Vec<PathBuf>, mut sink: impl AsyncWrite + Unpin) -> Result<u64, String> {
    let mut total = 0;
    for f in files {
        let file = tokio::fs::File::open(&f)
            .await
            .map_err(|e| format!("cannot open input {}: {e}", f.display()))?;
        let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, file);
        match tokio::io::copy_buf(&mut reader, &mut sink).await {
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(total),
            Err(e) => return Err(format!("feeding {} to standard input: {e}", f.display())),
        }
    }
    match sink.shutdown().await {
        Ok(()) => Ok(total),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(total),
        Err(e) => Err(format!("closing standard input: {e}")),
    }
}

/// Copies a stream to `path` (created or truncated), returning the byte count.
pub async fn capture(mut stream: impl AsyncRead + Unpin, path: &Path) -> Result<u64, String> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let n = tokio::io::copy(&mut stream, &mut file)
        .await
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    file.sync_all()
        .await
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(n)
}

/// Regular files under `root` (the transfer's bookkeeping skipped, symlinks left out):
/// relative path, full path, size; in path order.
pub(crate) fn regular_files(root: &Path) -> Result<Vec<(String, PathBuf, u64)>, JobError> {
    let found = ferry_fs::walk_files(
        root,
        ferry_fs::Symlinks::Skip,
        ferry_transfer::is_transfer_metadata,
    )
    .map_err(|e| JobError::permanent(format!("cannot read {}: {e}", root.display())))?;
    Ok(found.into_iter().map(|f| (f.rel, f.path, f.len)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::kinds::MountIo;

    #[test]
    fn deliveries_are_linked_into_mounts_and_renamed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let delivered = tmp.path().join("job/input/a/raw");
        std::fs::create_dir_all(delivered.join("sub")).expect("mkdir");
        std::fs::write(delivered.join("one.csv"), "1\n").expect("write");
        std::fs::write(delivered.join("sub/two.csv"), "2\n").expect("write");
        let single = tmp.path().join("job/input/b/sum");
        std::fs::create_dir_all(&single).expect("mkdir");
        std::fs::write(single.join("stdout"), "3\n").expect("write");
        // What the transfer keeps beside a delivery is not part of it.
        std::fs::write(single.join(".ferry-manifest.json"), "{}").expect("write");
        std::fs::write(delivered.join(".ferry-manifest.json"), "{}").expect("write");
        let d = |dir: &Path, name: Option<&str>| Delivery {
            dir: dir.display().to_string(),
            file_name: name.map(str::to_owned),
        };
        let io = JobIo {
            job_dir: tmp.path().join("job").display().to_string(),
            stdin: vec![d(&delivered, None)],
            mounts: vec![MountIo {
                path: "/input/".into(),
                dir: tmp.path().join("job/mounts/input").display().to_string(),
                sources: vec![d(&delivered, None), d(&single, Some("total.txt"))],
            }],
            capture_stdout: true,
        };
        let roots = [tmp.path().to_owned()];
        let p = prepare(&io, &roots).expect("prepared");
        let m = tmp.path().join("job/mounts/input");
        assert_eq!(
            std::fs::read_to_string(m.join("one.csv")).ok().as_deref(),
            Some("1\n")
        );
        assert_eq!(
            std::fs::read_to_string(m.join("sub/two.csv"))
                .ok()
                .as_deref(),
            Some("2\n")
        );
        assert_eq!(
            std::fs::read_to_string(m.join("total.txt")).ok().as_deref(),
            Some("3\n")
        );
        assert_eq!(
            p.stdin_files,
            [delivered.join("one.csv"), delivered.join("sub/two.csv")]
        );
        assert_eq!(
            p.stdout_file,
            Some(tmp.path().join("job/output/stdout/stdout"))
        );
        // A second attempt finds the links in place and replaces them.
        prepare(&io, &roots).expect("prepared again");
        // Renaming several files into one name is refused with the reason.
        let bad = JobIo {
            mounts: vec![MountIo {
                path: "/x/".into(),
                dir: tmp.path().join("job/mounts/x").display().to_string(),
                sources: vec![d(&delivered, Some("one.txt"))],
            }],
            ..io
        };
        let e = prepare(&bad, &roots).expect_err("refused");
        assert!(
            e.message.contains("needs exactly one delivered file"),
            "{e}"
        );
    }

    #[test]
    fn mounts_outside_the_job_and_inputs_outside_the_roots_are_refused_before_any_clearing() {
        let root = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("tmp");
        let sentinel = outside.path().join("sentinel");
        std::fs::write(&sentinel, "keep").expect("write");
        let roots = [root.path().to_owned()];
        let job = root.path().join("job");
        let io = |mount_dir: &Path, source: Option<&Path>| JobIo {
            job_dir: job.display().to_string(),
            mounts: vec![MountIo {
                path: "/m/".into(),
                dir: mount_dir.display().to_string(),
                sources: source
                    .map(|s| Delivery {
                        dir: s.display().to_string(),
                        file_name: None,
                    })
                    .into_iter()
                    .collect(),
            }],
            ..Default::default()
        };
        // A mount directory outside the job directory (here outside the roots too).
        let e = prepare(&io(outside.path(), None), &roots).expect_err("outside");
        assert!(e.message.starts_with("mount directory `"), "{e}");
        assert!(sentinel.exists(), "nothing was cleared");
        // Inside the roots but not inside the job: also refused, and so is the job itself.
        let e = prepare(&io(&root.path().join("other"), None), &roots).expect_err("beside");
        assert!(e.message.contains("refused"), "{e}");
        let e = prepare(&io(&job, None), &roots).expect_err("the job dir");
        assert!(e.message.contains("must lie inside"), "{e}");
        // A symlink in the job directory that leads out.
        std::fs::create_dir_all(job.join("mounts")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), job.join("mounts/m")).expect("symlink");
        let e = prepare(&io(&job.join("mounts/m"), None), &roots).expect_err("symlink");
        assert!(e.message.contains("symlink"), "{e}");
        assert!(sentinel.exists(), "nothing was cleared through the symlink");
        // A delivery read from outside the roots.
        let e = prepare(&io(&job.join("mounts/in"), Some(outside.path())), &roots)
            .expect_err("input outside");
        assert!(e.message.starts_with("input `"), "{e}");
        // A job directory outside the roots.
        let bad = JobIo {
            job_dir: outside.path().join("job").display().to_string(),
            ..Default::default()
        };
        let e = prepare(&bad, &roots).expect_err("job outside");
        assert!(e.message.starts_with("job directory `"), "{e}");
        assert!(!outside.path().join("job").exists());
    }
}
