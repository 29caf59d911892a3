//! The destination's side of a verified transfer, so that verification hides behind the
//! wire instead of following it:
//!
//! - a [`Plan`] (files and sizes, known before any checksum) is all the destination needs
//!   to start;
//! - [`follow`] hashes each file as it lands under its final name with its planned size
//!   (rsync renames a file into place only once it is whole), on every core, while the
//!   rest still travels;
//! - at the end, [`Manifest::verify_landed`] compares the source's checksums with those
//!   and reads only the files that changed since they were hashed (or landed last).
//!
//! [`receive`] is the whole exchange over a pipe (`ferry manifest receive`, run on the other
//! host through the SSH master): the plan in, the space answer out, the manifest in once
//! the data has gone, the verification summary out. One round trip replaces a `mkdir`, a
//! `df`, a `du`, a manifest upload and a `ferry manifest verify`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manifest::{
    FORMAT_VERSION, FileEntry, FileStat, HashAlgorithm, Landed, MANIFEST_NAME, Manifest,
    VerifySummary, hash_range, parallel_map,
};
use crate::{TransferError, confine};

const POLL: Duration = Duration::from_millis(25);

/// What the destination knows before the data arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub chunk_size: u64,
    pub algorithm: HashAlgorithm,
    pub files: Vec<PlannedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedFile {
    pub path: String,
    pub size: u64,
}

impl Plan {
    pub fn of(m: &Manifest) -> Plan {
        Plan {
            chunk_size: m.chunk_size,
            algorithm: m.algorithm,
            files: m
                .files
                .iter()
                .map(|f| PlannedFile {
                    path: f.path.clone(),
                    size: f.size,
                })
                .collect(),
        }
    }

    /// Reads a plan from the other host: every path confined to `root`, sizes that add up.
    pub fn parse(text: &str, root: &Path) -> Result<Plan, TransferError> {
        let bad = |detail: String| TransferError::BadManifest {
            path: root.join(MANIFEST_NAME),
            detail: format!("transfer plan: {detail}"),
        };
        let plan: Plan = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if plan.chunk_size == 0 {
            return Err(bad("chunk_size is 0".into()));
        }
        let mut total: u64 = 0;
        for f in &plan.files {
            confine::check_relative(root, &f.path)?;
            total = total
                .checked_add(f.size)
                .ok_or_else(|| bad("the file sizes overflow".into()))?;
        }
        Ok(plan)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The manifest this plan will become, without its checksums yet.
    pub fn unhashed(&self) -> Manifest {
        Manifest {
            version: FORMAT_VERSION,
            algorithm: self.algorithm,
            chunk_size: self.chunk_size,
            files: self
                .files
                .iter()
                .map(|f| FileEntry {
                    path: f.path.clone(),
                    size: f.size,
                    chunks: Vec::new(),
                    stat: None,
                })
                .collect(),
        }
    }
}

/// Files being hashed as they land; [`Landing::finish`] stops and hands over what was done.
pub struct Landing {
    stop: Arc<AtomicBool>,
    hashed: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<Option<Landed>>>>,
    files: usize,
}

/// Starts following `plan`'s files under `root` on a thread of its own.
pub fn follow(root: &Path, plan: &Plan) -> Landing {
    let stop = Arc::new(AtomicBool::new(false));
    let hashed = Arc::new(AtomicUsize::new(0));
    let files = plan.files.len();
    let thread = std::thread::Builder::new()
        .name("ferry-landing".into())
        .spawn({
            let (stop, hashed) = (stop.clone(), hashed.clone());
            let root = root.to_owned();
            let plan = plan.clone();
            move || watch(&root, &plan, &stop, &hashed)
        })
        .ok();
    Landing {
        stop,
        hashed,
        thread,
        files,
    }
}

impl Landing {
    /// Files hashed whole so far.
    pub fn hashed(&self) -> usize {
        self.hashed.load(Ordering::SeqCst)
    }

    /// Stops following; per planned file, its checksums if it was hashed whole.
    pub fn finish(mut self) -> Vec<Option<Landed>> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(done)) => done,
            _ => vec![None; self.files],
        }
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn watch(root: &Path, plan: &Plan, stop: &AtomicBool, hashed: &AtomicUsize) -> Vec<Option<Landed>> {
    let mut done: Vec<Option<Landed>> = vec![None; plan.files.len()];
    // Resolved (confined) only once a file has landed: its directory exists by then, and is
    // resolved once for all its files.
    let mut joiner = confine::Joiner::new(root).ok();
    let mut paths: Vec<Option<PathBuf>> = vec![None; plan.files.len()];
    // In path order, roughly the order rsync sends in.
    let mut pending: Vec<usize> = (0..plan.files.len())
        .filter(|&i| plan.files[i].size > 0)
        .collect();
    pending.sort_by(|a, b| plan.files[*a].path.cmp(&plan.files[*b].path));
    let mut pass = 0u64;
    while !pending.is_empty() && !stop.load(Ordering::SeqCst) {
        pass += 1;
        // Most passes look at the front of the list (where rsync is) until WINDOW files in
        // a row have not landed; every tenth looks at all (parallel workers send several
        // parts of the list at once).
        let full = pass.is_multiple_of(10);
        let mut landed = Vec::new();
        let mut misses = 0;
        for (at, &n) in pending.iter().enumerate() {
            if !full && misses >= WINDOW {
                break;
            }
            let file = &plan.files[n];
            // A regular file (not a link) at its final name with its planned size.
            let here = root.join(&file.path);
            match here.symlink_metadata() {
                Ok(m) if m.is_file() && m.len() == file.size => {}
                _ => {
                    misses += 1;
                    continue;
                }
            }
            if paths[n].is_none() {
                paths[n] = joiner.as_mut().and_then(|j| j.join(&file.path).ok());
            }
            let Some(path) = &paths[n] else { continue };
            match FileStat::read(path) {
                Ok((len, stat)) if len == file.size => landed.push((at, n, stat)),
                _ => misses += 1,
            }
        }
        if landed.is_empty() {
            std::thread::sleep(POLL);
            continue;
        }
        let hashes = hash_files(&paths, plan, &landed, stop);
        let mut taken = Vec::new();
        for ((at, n, before), chunks) in landed.into_iter().zip(hashes) {
            let Some(chunks) = chunks else { continue };
            let Some(path) = &paths[n] else { continue };
            // Still the same file after it was read.
            if let Ok((len, after)) = FileStat::read(path)
                && len == plan.files[n].size
                && after == before
            {
                done[n] = Some(Landed {
                    size: len,
                    stat: before,
                    chunks,
                });
                hashed.fetch_add(1, Ordering::SeqCst);
                taken.push(at);
            }
        }
        for at in taken.into_iter().rev() {
            pending.remove(at);
        }
    }
    done
}

/// Files looked at past the last one that landed, on most passes.
const WINDOW: usize = 256;

/// The chunk checksums of each landed file, its chunks spread over every core; `None` for
/// a file that could not be read whole.
fn hash_files(
    paths: &[Option<PathBuf>],
    plan: &Plan,
    landed: &[(usize, usize, FileStat)],
    stop: &AtomicBool,
) -> Vec<Option<Vec<String>>> {
    let cs = plan.chunk_size;
    let tasks: Vec<(usize, u64, u64)> = landed
        .iter()
        .enumerate()
        .flat_map(|(k, &(_, n, _))| {
            let size = plan.files[n].size;
            (0..size.div_ceil(cs)).map(move |c| (k, c * cs, cs.min(size - c * cs)))
        })
        .collect();
    let sums = parallel_map(&tasks, 0, |&(k, offset, len), buf| {
        let n = landed[k].1;
        let path = paths[n].as_deref().unwrap_or(Path::new(""));
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let read = std::fs::File::open(path)
            .map_err(|e| TransferError::io(path, e))
            .and_then(|mut f| hash_range(&mut f, path, offset, len, plan.algorithm, buf));
        Ok(read.ok())
    });
    let mut out: Vec<Option<Vec<String>>> = vec![Some(Vec::new()); landed.len()];
    match sums {
        Ok(sums) => {
            for ((k, _, _), sum) in tasks.iter().zip(sums) {
                match (sum, &mut out[*k]) {
                    (Some(s), Some(v)) => v.push(s),
                    (None, slot) => *slot = None,
                    _ => {}
                }
            }
            out
        }
        Err(_) => vec![None; landed.len()],
    }
}

/// What the destination answers to a plan before the data comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// Bytes free for an unprivileged writer (`df`'s "available").
    pub free: u64,
    /// Bytes of the planned files already there (a resumed transfer needs only the rest).
    pub present: u64,
}

/// Free bytes under `dir` (statvfs via `df -Pk`), `u64::MAX` when unknown.
pub fn free_bytes(dir: &Path) -> u64 {
    std::process::Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| parse_df_available(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or(u64::MAX)
}

/// `df -Pk` → available bytes.
pub(crate) fn parse_df_available(out: &str) -> Option<u64> {
    let line = out.lines().nth(1)?;
    let kb: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kb * 1024)
}

/// The destination's whole exchange (`ferry manifest receive DIR`): reads the plan (one
/// JSON line), creates `dir`, answers with [`Space`], follows the files as they land, reads
/// the manifest (one JSON line, sent once the data has gone), verifies, saves the manifest
/// beside the data (with this host's file identities for what verified), and answers with
/// the [`VerifySummary`]. A sender that goes away before the manifest ends it with an error
/// and nothing saved.
pub fn receive(
    dir: &Path,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> Result<(), TransferError> {
    let pipe = |e: std::io::Error| TransferError::Command {
        what: format!("receiving into {}", dir.display()),
        detail: e.to_string(),
    };
    let mut line = String::new();
    input.read_line(&mut line).map_err(pipe)?;
    let plan = Plan::parse(line.trim(), dir)?;
    std::fs::create_dir_all(dir).map_err(|e| TransferError::io(dir, e))?;
    let space = Space {
        free: free_bytes(dir),
        present: present_bytes(&plan, dir)?,
    };
    writeln!(output, "{}", json(&space)?).map_err(pipe)?;
    output.flush().map_err(pipe)?;

    let landing = follow(dir, &plan);
    line.clear();
    let n = input.read_line(&mut line).map_err(pipe)?;
    if n == 0 {
        return Err(TransferError::Command {
            what: format!("receiving into {}", dir.display()),
            detail: "the sender closed the connection before sending the manifest".into(),
        });
    }
    let manifest = Manifest::parse(line.trim(), &dir.join(MANIFEST_NAME), dir)?;
    let landed = landing.finish();
    // The follower watched the plan's files; the manifest must describe the same ones.
    let landed = if Plan::of(&manifest) == plan {
        landed
    } else {
        Vec::new()
    };
    let (report, stats) = manifest.verify_landed(dir, &landed)?;
    manifest.with_stats(&stats).save(&dir.join(MANIFEST_NAME))?;
    writeln!(output, "{}", json(&VerifySummary::from(&report))?).map_err(pipe)?;
    output.flush().map_err(pipe)
}

/// Bytes of the plan's files already under `root` (a resumed transfer needs only the rest).
pub fn present_bytes(plan: &Plan, root: &Path) -> Result<u64, TransferError> {
    // A new (empty) destination holds nothing of the plan.
    if std::fs::read_dir(root).map_or(true, |mut d| d.next().is_none()) {
        return Ok(0);
    }
    let mut joiner = confine::Joiner::new(root)?;
    Ok(plan
        .files
        .iter()
        .filter_map(|f| {
            let full = joiner.join(&f.path).ok()?;
            std::fs::metadata(full).ok().map(|m| m.len().min(f.size))
        })
        .sum())
}

fn json<T: Serialize>(v: &T) -> Result<String, TransferError> {
    serde_json::to_string(v).map_err(|e| TransferError::Command {
        what: "encoding an answer".into(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, bytes).expect("write");
    }

    fn noise(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    #[test]
    fn files_are_hashed_as_they_land_and_only_changed_ones_are_read_again() {
        let src = tempfile::tempdir().expect("tmp");
        write(src.path(), "big/a.bin", &noise(3 << 20, 1));
        write(src.path(), "b.bin", &noise(2 << 20, 2));
        write(src.path(), "small.txt", b"hello");
        let m = Manifest::build(src.path(), 1 << 20, HashAlgorithm::Blake3).expect("build");

        let dst = tempfile::tempdir().expect("tmp");
        let landing = follow(dst.path(), &Plan::of(&m));
        // Files arrive while it watches: whole, under their final names.
        std::thread::sleep(Duration::from_millis(60));
        for f in ["big/a.bin", "b.bin", "small.txt"] {
            let bytes = std::fs::read(src.path().join(f)).expect("read");
            let tmp = dst.path().join(format!("{f}.partial"));
            write(dst.path(), &format!("{f}.partial"), &bytes);
            std::fs::rename(tmp, dst.path().join(f)).expect("rename");
        }
        // Let the follower catch up before it is stopped.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while landing.hashed() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let landed = landing.finish();
        let hashed = landed.iter().filter(|l| l.is_some()).count();
        assert!(
            hashed >= 2,
            "the files were hashed as they landed: {hashed}"
        );
        let (report, stats) = m.verify_landed(dst.path(), &landed).expect("verify");
        assert!(report.is_complete(), "{report:?}");
        assert!(stats.iter().all(Option::is_some));

        // A file rewritten after it was hashed (same size) is read again, and caught.
        let mut bytes = std::fs::read(dst.path().join("b.bin")).expect("read");
        bytes[(1 << 20) + 5] ^= 0xff;
        std::fs::write(dst.path().join("b.bin"), &bytes).expect("write");
        let (report, _) = m.verify_landed(dst.path(), &landed).expect("verify");
        assert_eq!(
            report.bad.iter().map(|c| c.id()).collect::<Vec<_>>(),
            ["b.bin#1"]
        );
    }

    #[test]
    fn receive_answers_space_then_verifies_and_saves_the_manifest_with_local_identities() {
        let src = tempfile::tempdir().expect("tmp");
        write(src.path(), "a.bin", &noise(1 << 20, 3));
        write(src.path(), "t/b.txt", b"rows\n");
        let m = Manifest::build(src.path(), 1 << 19, HashAlgorithm::Blake3).expect("build");
        let dst = tempfile::tempdir().expect("tmp");
        let root = dst.path().join("into");
        // The data is already there (as if rsync had run).
        for f in ["a.bin", "t/b.txt"] {
            write(&root, f, &std::fs::read(src.path().join(f)).expect("read"));
        }
        let input = format!(
            "{}\n{}\n",
            serde_json::to_string(&Plan::of(&m)).expect("plan"),
            serde_json::to_string(&m.without_stats()).expect("manifest")
        );
        let mut out = Vec::new();
        receive(&root, &mut input.as_bytes(), &mut out).expect("receive");
        let text = String::from_utf8(out).expect("utf8");
        let mut lines = text.lines();
        let space: Space = serde_json::from_str(lines.next().expect("space")).expect("space");
        assert_eq!(space.present, m.total_bytes());
        let summary: VerifySummary =
            serde_json::from_str(lines.next().expect("summary")).expect("summary");
        assert!(summary.complete && summary.verified == 3, "{summary:?}");
        let saved = Manifest::load(&root.join(MANIFEST_NAME), &root).expect("saved");
        assert!(saved.files.iter().all(|f| f.stat.is_some()));
        // The next hop from this host reuses every checksum.
        let (again, reused) =
            Manifest::build_reusing(&root, 1 << 19, HashAlgorithm::Blake3, 0).expect("build");
        assert_eq!(reused, 2);
        assert_eq!(again.without_stats(), m.without_stats());

        // A hostile plan is refused before anything is created.
        let evil = r#"{"chunk_size":1,"algorithm":"blake3","files":[{"path":"../x","size":1}]}"#;
        let err = receive(
            &dst.path().join("other"),
            &mut format!("{evil}\n").as_bytes(),
            &mut Vec::new(),
        )
        .expect_err("refused");
        assert!(err.to_string().contains(".."), "{err}");
        // A sender that goes away before the manifest: an error, nothing saved.
        let fresh = dst.path().join("fresh");
        let half = format!("{}\n", serde_json::to_string(&Plan::of(&m)).expect("plan"));
        assert!(receive(&fresh, &mut half.as_bytes(), &mut Vec::new()).is_err());
        assert!(!fresh.join(MANIFEST_NAME).exists());
    }
}
