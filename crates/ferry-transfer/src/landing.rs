//! The destination's side of a verified transfer, so that verification hides behind the
//! wire instead of following it:
//!
//! - a [`Plan`] (files and sizes, known before any checksum) is all the destination needs
//!   to start;
//! - [`follow`] hashes each file as it lands under its final name with its planned size
//!   (rsync renames a file into place only once it is whole), on every core, while the
//!   rest still travels; the kernel says where files land (inotify), and where it cannot,
//!   the follower looks by name;
//! - at the end, [`Manifest::verify_landed`] compares the source's checksums with those
//!   and reads only the files that changed since they were hashed (or landed last).
//!
//! [`receive`] is the whole exchange over a pipe (`ferry manifest receive`, run on the other
//! host through the SSH master): the plan in, then the manifest as soon as the source is
//! hashed (while rsync still sends), then word that the data has gone; the verification
//! summary out. Nothing waits for an answer before rsync starts: rsync's own remote command
//! checks the space first ([`check_space`], `ferry manifest space`). This replaces a
//! `mkdir`, a `df`, a `du`, a manifest upload and a `ferry manifest verify`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use serde::{Deserialize, Serialize};

use crate::manifest::{
    FORMAT_VERSION, FileEntry, FileStat, HashAlgorithm, Landed, MANIFEST_NAME, Manifest,
    VerifySummary, hash_range, parallel_map,
};
use crate::{TransferError, confine};

const POLL: Duration = Duration::from_millis(25);

/// Where rsync keeps partly transferred files, inside the destination directory.
pub const PARTIAL_DIR: &str = ".ferry-partial";

/// The version of the exchange [`receive`] speaks; both hosts must speak the same one.
pub const EXCHANGE_VERSION: u32 = 2;

/// What the destination knows before the data arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// [`EXCHANGE_VERSION`] of the sender.
    pub version: u32,
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
            version: EXCHANGE_VERSION,
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
        let plan: Plan = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "{e} (is the same version of ferry installed on both hosts?)"
            ))
        })?;
        if plan.version != EXCHANGE_VERSION {
            return Err(bad(format!(
                "the other host speaks exchange version {}, this one {EXCHANGE_VERSION}: install the same version of ferry on both hosts",
                plan.version
            )));
        }
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
    follow_by(root, plan, Watching::Events)
}

/// How a follower learns that files landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watching {
    /// The kernel says (inotify); by polling where it cannot.
    Events,
    /// By looking (polling) only: what `Events` falls back to, chosen alone by tests.
    #[cfg_attr(not(test), allow(dead_code))]
    Polling,
}

fn follow_by(root: &Path, plan: &Plan, how: Watching) -> Landing {
    let stop = Arc::new(AtomicBool::new(false));
    let hashed = Arc::new(AtomicUsize::new(0));
    let files = plan.files.len();
    let thread = std::thread::Builder::new()
        .name("ferry-landing".into())
        .spawn({
            let (stop, hashed) = (stop.clone(), hashed.clone());
            let root = root.to_owned();
            let plan = plan.clone();
            move || watch(&root, &plan, &stop, &hashed, how)
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

fn watch(
    root: &Path,
    plan: &Plan,
    stop: &AtomicBool,
    hashed: &AtomicUsize,
    how: Watching,
) -> Vec<Option<Landed>> {
    let mut follower = Follower {
        root,
        plan,
        stop,
        hashed,
        done: vec![None; plan.files.len()],
        // Resolved (confined) only once a file has landed: its directory exists by then,
        // and is resolved once for all its files.
        joiner: confine::Joiner::new(root).ok(),
        paths: vec![None; plan.files.len()],
    };
    // Told by the kernel where files land (no polling); polling where it cannot tell
    // (no inotify, or its limits reached).
    let told = (how == Watching::Events)
        .then(|| Events::new(root, plan))
        .flatten()
        .is_some_and(|events| events.follow(&mut follower));
    if !told {
        follower.poll();
    }
    follower.done
}

/// What following has found so far, whichever way it learns of landed files.
struct Follower<'a> {
    root: &'a Path,
    plan: &'a Plan,
    stop: &'a AtomicBool,
    hashed: &'a AtomicUsize,
    done: Vec<Option<Landed>>,
    joiner: Option<confine::Joiner>,
    paths: Vec<Option<PathBuf>>,
}

impl Follower<'_> {
    /// The planned file `n`'s identity when it is a regular file at its final name with
    /// its planned size.
    fn landed(&mut self, n: usize) -> Option<FileStat> {
        let file = &self.plan.files[n];
        if self.paths[n].is_none() {
            self.paths[n] = self.joiner.as_mut().and_then(|j| j.join(&file.path).ok());
        }
        let path = self.paths[n].as_ref()?;
        match path.symlink_metadata() {
            Ok(m) if m.is_file() && m.len() == file.size => Some(FileStat::of(&m)),
            _ => None,
        }
    }

    /// Hashes the landed files `(key, n, identity)`; the keys of those hashed whole and
    /// unchanged while they were read.
    fn take<K: Copy>(&mut self, landed: Vec<(K, usize, FileStat)>) -> Vec<K> {
        let hashes = hash_files(
            &self.paths,
            self.plan,
            &landed.iter().map(|&(_, n, _)| n).collect::<Vec<_>>(),
            self.stop,
        );
        let mut taken = Vec::new();
        for ((key, n, before), chunks) in landed.into_iter().zip(hashes) {
            let Some(chunks) = chunks else { continue };
            let Some(path) = &self.paths[n] else { continue };
            // Still the same file after it was read.
            if let Ok((len, after)) = FileStat::read(path)
                && len == self.plan.files[n].size
                && after == before
            {
                self.done[n] = Some(Landed {
                    size: len,
                    stat: before,
                    chunks,
                });
                self.hashed.fetch_add(1, Ordering::SeqCst);
                taken.push(key);
            }
        }
        taken
    }

    /// Looks for landed files by their names: most passes look at the front of the list
    /// (where rsync is), every tenth at all of it.
    fn poll(&mut self) {
        let plan = self.plan;
        // In path order, roughly the order rsync sends in; what the kernel already told of
        // is done.
        let mut pending: Vec<usize> = (0..plan.files.len())
            .filter(|&i| plan.files[i].size > 0 && self.done[i].is_none())
            .collect();
        pending.sort_by(|a, b| plan.files[*a].path.cmp(&plan.files[*b].path));
        let mut pass = 0u64;
        while !pending.is_empty() && !self.stop.load(Ordering::SeqCst) {
            pass += 1;
            // Parallel workers send several parts of the list at once: hence the full passes.
            let full = pass.is_multiple_of(10);
            let mut landed = Vec::new();
            let mut misses = 0;
            for (at, &n) in pending.iter().enumerate() {
                if !full && misses >= WINDOW {
                    break;
                }
                // Not there yet: one lstat, before anything is resolved.
                let here = self.root.join(&plan.files[n].path);
                if !here
                    .symlink_metadata()
                    .is_ok_and(|m| m.is_file() && m.len() == plan.files[n].size)
                {
                    misses += 1;
                    continue;
                }
                match self.landed(n) {
                    Some(stat) => landed.push((at, n, stat)),
                    None => misses += 1,
                }
            }
            if landed.is_empty() {
                std::thread::sleep(POLL);
                continue;
            }
            for at in self.take(landed).into_iter().rev() {
                pending.remove(at);
            }
        }
    }
}

/// The kernel's word (inotify) on files renamed or written into the planned directories.
struct Events {
    inotify: Inotify,
    /// Watched directory → its path under the root ("" for the root).
    watched: HashMap<WatchDescriptor, String>,
    /// The directories that hold planned files, and theirs up to the root.
    wanted: HashSet<String>,
    /// Planned file path → its index, for files with data.
    index: HashMap<String, usize>,
    /// Planned files found when the watches began.
    found: Vec<usize>,
    /// The kernel's watches ran out: following goes on by polling.
    exhausted: bool,
}

impl Events {
    fn new(root: &Path, plan: &Plan) -> Option<Events> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let mut wanted = HashSet::from([String::new()]);
        let mut index = HashMap::new();
        for (n, f) in plan.files.iter().enumerate() {
            if f.size == 0 {
                continue;
            }
            index.insert(f.path.clone(), n);
            let mut dir = f.path.as_str();
            while let Some((parent, _)) = dir.rsplit_once('/') {
                if !wanted.insert(parent.to_owned()) {
                    break;
                }
                dir = parent;
            }
        }
        let mut events = Events {
            inotify,
            watched: HashMap::new(),
            wanted,
            index,
            found: Vec::new(),
            exhausted: false,
        };
        let mut found = Vec::new();
        // Without a watch on the root nothing would ever be heard.
        if !events.add(root, "", &mut found) {
            return None;
        }
        events.found = found;
        Some(events)
    }

    /// Watches `dir` (under `root`) and the wanted directories under it, and lists the
    /// planned files already there (they landed before the watch began).
    fn add(&mut self, root: &Path, dir: &str, found: &mut Vec<usize>) -> bool {
        let path = if dir.is_empty() {
            root.to_owned()
        } else {
            root.join(dir)
        };
        // A symlink is neither watched nor followed.
        let mask = AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW;
        let wd = match self.inotify.add_watch(&path, mask) {
            Ok(wd) => wd,
            Err(e) => {
                // Out of watches: what is left is found by looking. (A directory that went
                // away, or a symlink, is simply not watched.)
                if matches!(e, nix::errno::Errno::ENOSPC | nix::errno::Errno::ENOMEM) {
                    self.exhausted = true;
                }
                return false;
            }
        };
        self.watched.insert(wd, dir.to_owned());
        let Ok(entries) = std::fs::read_dir(&path) else {
            return true;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(|n| under(dir, n)) else {
                continue;
            };
            match entry.file_type() {
                Ok(t) if t.is_dir() && self.wanted.contains(&name) => {
                    self.add(root, &name, found);
                }
                Ok(t) if t.is_file() => found.extend(self.index.get(&name)),
                _ => {}
            }
        }
        true
    }

    /// Follows until every planned file is hashed or it is stopped (true), or until the
    /// kernel can no longer tell (false: the caller polls for the rest).
    fn follow(mut self, f: &mut Follower<'_>) -> bool {
        let mut pending = self.index.len();
        let mut landed = std::mem::take(&mut self.found);
        while !f.stop.load(Ordering::SeqCst) {
            if self.exhausted {
                return false;
            }
            // All the kernel has to say, then the files that landed are hashed together,
            // then a pause while more land.
            loop {
                match self.inotify.read_events() {
                    Ok(events) => self.note(events, f.root, &mut landed),
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(_) => return false,
                }
            }
            landed.sort_unstable();
            landed.dedup();
            let ready: Vec<(usize, usize, FileStat)> = landed
                .drain(..)
                .filter_map(|n| {
                    if f.done[n].is_some() {
                        return None;
                    }
                    f.landed(n).map(|stat| (n, n, stat))
                })
                .collect();
            if !ready.is_empty() {
                pending -= f.take(ready).len();
            }
            if pending == 0 {
                return true;
            }
            std::thread::sleep(POLL);
        }
        true
    }

    /// The planned files `events` say landed; new wanted directories are watched.
    fn note(&mut self, events: Vec<InotifyEvent>, root: &Path, landed: &mut Vec<usize>) {
        for e in events {
            if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Events were lost: look at everything again.
                self.add(root, "", landed);
                continue;
            }
            let (Some(dir), Some(name)) = (
                self.watched.get(&e.wd),
                e.name.as_deref().and_then(|n| n.to_str()),
            ) else {
                continue;
            };
            let name = under(dir, name);
            if e.mask.contains(AddWatchFlags::IN_ISDIR) {
                if self.wanted.contains(&name) {
                    self.add(root, &name, landed);
                }
            } else if let Some(&n) = self.index.get(&name)
                && e.mask
                    .intersects(AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE)
            {
                landed.push(n);
            }
        }
    }
}

/// `name` in the directory `dir` (relative to the root, "" for the root).
fn under(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Files looked at past the last one that landed, on most passes.
const WINDOW: usize = 256;

/// The chunk checksums of each landed file, its chunks spread over every core; `None` for
/// a file that could not be read whole.
fn hash_files(
    paths: &[Option<PathBuf>],
    plan: &Plan,
    landed: &[usize],
    stop: &AtomicBool,
) -> Vec<Option<Vec<String>>> {
    let files: Vec<(&Path, u64)> = landed
        .iter()
        .map(|&n| {
            (
                paths[n].as_deref().unwrap_or(Path::new("")),
                plan.files[n].size,
            )
        })
        .collect();
    hash_whole(&files, plan.chunk_size, plan.algorithm, stop)
}

/// Bytes below which a batch of landed files is hashed on the follower's own thread.
const INLINE_BYTES: u64 = 8 << 20;

/// The chunk checksums of each `(path, size)`, the chunks spread over every core; `None`
/// for a file that could not be read whole (or when stopped).
fn hash_whole(
    files: &[(&Path, u64)],
    cs: u64,
    algorithm: HashAlgorithm,
    stop: &AtomicBool,
) -> Vec<Option<Vec<String>>> {
    let tasks: Vec<(usize, u64, u64)> = files
        .iter()
        .enumerate()
        .flat_map(|(k, &(_, size))| {
            (0..size.div_ceil(cs)).map(move |c| (k, c * cs, cs.min(size - c * cs)))
        })
        .collect();
    // A batch worth less than a few milliseconds of hashing is read on this thread.
    let bytes: u64 = files.iter().map(|f| f.1).sum();
    let threads = if bytes < INLINE_BYTES { 1 } else { 0 };
    let largest = tasks.iter().map(|t| t.2).max().unwrap_or(0);
    let sums = parallel_map(&tasks, threads, largest, |&(k, offset, len), buf| {
        let path = files[k].0;
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let read = std::fs::File::open(path)
            .map_err(|e| TransferError::io(path, e))
            .and_then(|mut f| hash_range(&mut f, path, offset, len, algorithm, buf));
        Ok(read.ok())
    });
    let mut out: Vec<Option<Vec<String>>> = vec![Some(Vec::new()); files.len()];
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
        Err(_) => vec![None; files.len()],
    }
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

/// What the destination's side of rsync prints when [`check_space`] refuses, before the
/// human words: the sender reads the figures back from rsync's error ([`space_refusal`]).
pub const NO_SPACE_MARK: &str = "ferry-no-space:";

/// The check rsync's remote command makes before rsync writes anything (`ferry manifest
/// space --need BYTES DIR && rsync …`): creates `dir` and refuses when what is not there
/// yet does not fit. What is already under `dir` (a resumed transfer's files, whole or
/// partial) counts as present, up to `need`.
pub fn check_space(dir: &Path, need: u64) -> Result<(), TransferError> {
    std::fs::create_dir_all(dir).map_err(|e| TransferError::io(dir, e))?;
    let needed = need.saturating_sub(dir_bytes(dir));
    let free = free_bytes(dir);
    if needed > free {
        return Err(TransferError::DiskFull {
            host: "this host".into(),
            path: dir.to_owned(),
            needed,
            free,
        });
    }
    Ok(())
}

/// The line [`check_space`]'s refusal is printed as on the other host.
pub fn no_space_line(needed: u64, free: u64) -> String {
    format!("{NO_SPACE_MARK} needed={needed} free={free}")
}

/// (bytes needed, bytes free) from the other host's words, when its space check refused.
pub fn space_refusal(text: &str) -> Option<(u64, u64)> {
    let rest = &text[text.find(NO_SPACE_MARK)? + NO_SPACE_MARK.len()..];
    let mut words = rest.split_whitespace();
    let needed = words.next()?.strip_prefix("needed=")?.parse().ok()?;
    let free = words.next()?.strip_prefix("free=")?.parse().ok()?;
    Some((needed, free))
}

/// Bytes of the regular files under `dir`, its subdirectories included.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// The line that tells [`receive`] the data has gone (rsync ended well).
pub const DATA_SENT: &str = "\"sent\"";

/// [`receive`]'s first answer, once it has the plan: the sender learns that the connection
/// carries (a dead one never answers, and rsync waits without a time limit for its first
/// word).
pub const READY: &str = "\"ready\"";

/// The destination's whole exchange (`ferry manifest receive DIR`): reads the plan (one
/// JSON line), creates `dir`, follows the files as they land and answers [`READY`]; reads the manifest (one
/// JSON line, sent as soon as the source is hashed) and then [`DATA_SENT`]; verifies,
/// answers with the [`VerifySummary`] and saves the manifest beside the data (with this
/// host's file identities for what verified). A sender that goes away before the data has
/// gone ends it with an error and nothing saved.
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
    let landing = follow(dir, &plan);
    writeln!(output, "{READY}").map_err(pipe)?;
    output.flush().map_err(pipe)?;
    let ended = |before: &str| TransferError::Command {
        what: format!("receiving into {}", dir.display()),
        detail: format!("the sender closed the connection before {before}"),
    };
    line.clear();
    if input.read_line(&mut line).map_err(pipe)? == 0 {
        return Err(ended("sending the manifest"));
    }
    let manifest = Manifest::parse(line.trim(), &dir.join(MANIFEST_NAME), dir)?;
    line.clear();
    input.read_line(&mut line).map_err(pipe)?;
    if line.trim() != DATA_SENT {
        return Err(ended("its data had gone"));
    }
    let landed = landing.finish();
    // The follower watched the plan's files; the manifest must describe the same ones.
    let landed = if Plan::of(&manifest) == plan {
        landed
    } else {
        Vec::new()
    };
    let (report, stats) = manifest.verify_landed(dir, &landed)?;
    // The answer first: the sender saves its own manifest meanwhile and waits for this
    // process to end, so the saved manifest is there when the transfer is over.
    writeln!(output, "{}", json(&VerifySummary::from(&report))?).map_err(pipe)?;
    output.flush().map_err(pipe)?;
    manifest.with_stats(&stats).save(&dir.join(MANIFEST_NAME))
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

/// What `ferry manifest land` prints on its standard error, which rsync passes through to
/// the sender: [`LANDING_READY`] once it is up, then one [`Heard`] line after rsync.
pub const LANDING_MARK: &str = "ferry-landing:";

/// [`land`]'s first word: the sender's sign that the connection carries.
pub const LANDING_READY: &str = "ferry-landing: ready";

/// What the destination said after rsync ([`land`]), read back by the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// The tree as it landed: its files, bytes and [`Manifest::digest`].
    Landed {
        files: usize,
        bytes: u64,
        digest: String,
    },
    /// The destination could not hash what landed; why.
    Unverified(String),
}

impl Heard {
    fn line(&self) -> String {
        match self {
            Heard::Landed {
                files,
                bytes,
                digest,
            } => format!("{LANDING_MARK} landed files={files} bytes={bytes} digest={digest}"),
            Heard::Unverified(why) => {
                format!("{LANDING_MARK} unverified {}", why.replace('\n', " "))
            }
        }
    }

    /// The last [`Heard`] line in the other host's words, if any.
    pub fn read(text: &str) -> Option<Heard> {
        text.lines().rev().find_map(|line| {
            let rest = line.trim().strip_prefix(LANDING_MARK)?.trim_start();
            if let Some(why) = rest.strip_prefix("unverified") {
                return Some(Heard::Unverified(why.trim().to_owned()));
            }
            let mut words = rest.strip_prefix("landed")?.split_whitespace();
            let files = words.next()?.strip_prefix("files=")?.parse().ok()?;
            let bytes = words.next()?.strip_prefix("bytes=")?.parse().ok()?;
            let digest = words.next()?.strip_prefix("digest=")?.to_owned();
            Some(Heard::Landed {
                files,
                bytes,
                digest,
            })
        })
    }
}

/// How [`land`] hashes and how much room it needs.
#[derive(Debug, Clone, Copy)]
pub struct LandOptions {
    pub need: u64,
    pub chunk_size: u64,
    pub algorithm: HashAlgorithm,
}

/// The destination's side of a push in rsync's own remote command (`--rsync-path='ferry
/// manifest land … DIR -- rsync'`), so that verification costs no command of its own:
/// checks the space ([`check_space`]), says [`LANDING_READY`], runs rsync's server side
/// (`rsync --server …`, on this process's standard input and output), hashing files as rsync
/// renames them into place; once rsync ends well, hashes what is left (reusing the last
/// manifest's checksums of unchanged files), saves the manifest of what is here and says
/// [`Heard`]. The sender compares the digest with its own; only when they differ does it
/// send its manifest for a chunk-by-chunk verification. Returns rsync's exit code.
pub fn land(
    dir: &Path,
    o: &LandOptions,
    rsync: &[String],
    say: &mut dyn Write,
) -> Result<i32, TransferError> {
    let refused = |detail: String| TransferError::Command {
        what: format!("landing into {}", dir.display()),
        detail,
    };
    if rsync.first().map(String::as_str) != Some("rsync")
        || rsync.get(1).map(String::as_str) != Some("--server")
    {
        return Err(refused(
            "runs only rsync's server side (`-- rsync --server …`)".into(),
        ));
    }
    if o.chunk_size == 0 {
        return Err(refused("chunk size 0".into()));
    }
    check_space(dir, o.need)?;
    let pipe = |e: std::io::Error| refused(e.to_string());
    writeln!(say, "{LANDING_READY}").map_err(pipe)?;
    say.flush().map_err(pipe)?;
    let stop = Arc::new(AtomicBool::new(false));
    let following = std::thread::Builder::new()
        .name("ferry-arrivals".into())
        .spawn({
            let (root, stop, o) = (dir.to_owned(), stop.clone(), *o);
            move || arrivals(&root, &o, &stop)
        })
        .ok();
    let status = std::process::Command::new(&rsync[0])
        .args(&rsync[1..])
        .status()
        .map_err(|e| refused(format!("rsync: {e}")));
    stop.store(true, Ordering::SeqCst);
    let landed = following
        .map(|t| t.join().unwrap_or_default())
        .unwrap_or_default();
    let status = status?;
    if !status.success() {
        return Ok(status.code().unwrap_or(1));
    }
    let heard = match settle(dir, o, &landed) {
        Ok(m) => Heard::Landed {
            files: m.files.len(),
            bytes: m.total_bytes(),
            digest: m.digest(),
        },
        Err(e) => Heard::Unverified(e.to_string()),
    };
    writeln!(say, "{}", heard.line()).map_err(pipe)?;
    say.flush().map_err(pipe)?;
    Ok(0)
}

/// The manifest of what is under `dir` now, saved there: checksums of files hashed as
/// they landed (still the same file), then of the last manifest's unchanged files, the
/// rest read now.
fn settle(
    dir: &Path,
    o: &LandOptions,
    landed: &HashMap<String, Landed>,
) -> Result<Manifest, TransferError> {
    let mut m = Manifest::scan(dir, o.chunk_size, o.algorithm)?;
    m.reuse_from(&dir.join(MANIFEST_NAME), dir);
    for f in &mut m.files {
        if let Some(l) = landed.get(&f.path)
            && l.size == f.size
            && f.stat == Some(l.stat)
        {
            f.chunks.clone_from(&l.chunks);
        }
    }
    m.hash_all(dir)?;
    m.save(&dir.join(MANIFEST_NAME))?;
    Ok(m)
}

/// Files renamed into place under `root` (how rsync lands a whole file), hashed as they
/// arrive until `stop`, when nothing says beforehand which to expect: every directory is
/// watched as it appears (rsync's partial directory aside). Without inotify, or past its
/// limits, what is missed is read by [`settle`].
fn arrivals(root: &Path, o: &LandOptions, stop: &AtomicBool) -> HashMap<String, Landed> {
    let mut done = HashMap::new();
    let Ok(inotify) = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) else {
        return done;
    };
    let cs = o.chunk_size.max(1);
    let mut buf = vec![0u8; usize::try_from(cs).map_or(INLINE_BUF, |c| c.min(INLINE_BUF))];
    let mut watch = Arrivals {
        inotify,
        watched: HashMap::new(),
    };
    let mut arrived = Vec::new();
    if !watch.add(root, "", &mut arrived) {
        return done;
    }
    while !stop.load(Ordering::SeqCst) {
        loop {
            match watch.inotify.read_events() {
                Ok(events) => watch.note(events, root, &mut arrived),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => return done,
            }
        }
        arrived.sort_unstable();
        arrived.dedup();
        // Opened as they are named (a symlink is not followed) and known by the open file
        // from then on: no path is looked up twice. What is taken is checked again by
        // identity against the tree at the end (`settle`).
        let ready: Vec<Arrived> = arrived
            .drain(..)
            .filter_map(|rel| {
                let full = root.join(&rel);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                    .open(&full)
                    .ok()?;
                let meta = file.metadata().ok()?;
                meta.is_file().then(|| Arrived {
                    rel,
                    full,
                    size: meta.len(),
                    stat: FileStat::of(&meta),
                    file,
                })
            })
            .collect();
        if ready.is_empty() {
            std::thread::sleep(POLL);
            continue;
        }
        let bytes: u64 = ready.iter().map(|a| a.size).sum();
        let sums: Vec<Option<Vec<String>>> = if bytes < INLINE_BYTES {
            // A small batch is read here, from the open files, with one buffer.
            ready
                .iter()
                .map(|a| {
                    let mut f = &a.file;
                    (0..a.size.div_ceil(cs))
                        .map(|c| {
                            let (offset, len) = (c * cs, cs.min(a.size - c * cs));
                            hash_range(&mut f, &a.full, offset, len, o.algorithm, &mut buf).ok()
                        })
                        .collect()
                })
                .collect()
        } else {
            let files: Vec<(&Path, u64)> =
                ready.iter().map(|a| (a.full.as_path(), a.size)).collect();
            hash_whole(&files, cs, o.algorithm, stop)
        };
        for (a, chunks) in ready.into_iter().zip(sums) {
            // Still the same file after it was read.
            if let Some(chunks) = chunks
                && let Ok(after) = a.file.metadata()
                && after.len() == a.size
                && FileStat::of(&after) == a.stat
            {
                done.insert(
                    a.rel,
                    Landed {
                        size: a.size,
                        stat: a.stat,
                        chunks,
                    },
                );
            }
        }
    }
    done
}

/// rsync's name for a file it is still writing (`.NAME.XXXXXX`), renamed into place once
/// whole: not worth reading before then (what is missed is read at the end anyway).
fn rsync_temporary(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.rsplit_once('.'))
        .is_some_and(|(_, suffix)| {
            suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// A file that arrived, open.
struct Arrived {
    rel: String,
    full: PathBuf,
    size: u64,
    stat: FileStat,
    file: std::fs::File,
}

/// The follower's own read buffer.
const INLINE_BUF: usize = 1 << 20;

/// The kernel's word on files renamed into any directory under a root.
struct Arrivals {
    inotify: Inotify,
    watched: HashMap<WatchDescriptor, String>,
}

impl Arrivals {
    /// Watches `dir` and the directories under it, listing the files already there.
    fn add(&mut self, root: &Path, dir: &str, found: &mut Vec<String>) -> bool {
        let path = if dir.is_empty() {
            root.to_owned()
        } else {
            root.join(dir)
        };
        let mask = AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW;
        let Ok(wd) = self.inotify.add_watch(&path, mask) else {
            return false;
        };
        self.watched.insert(wd, dir.to_owned());
        let Ok(entries) = std::fs::read_dir(&path) else {
            return true;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            match entry.file_type() {
                Ok(t) if t.is_dir() && name != PARTIAL_DIR => {
                    self.add(root, &under(dir, &name), found);
                }
                Ok(t) if t.is_file() && name != MANIFEST_NAME && !rsync_temporary(&name) => {
                    found.push(under(dir, &name));
                }
                _ => {}
            }
        }
        true
    }

    fn note(&mut self, events: Vec<InotifyEvent>, root: &Path, arrived: &mut Vec<String>) {
        for e in events {
            let (Some(dir), Some(name)) = (
                self.watched.get(&e.wd),
                e.name.as_deref().and_then(|n| n.to_str()),
            ) else {
                // A lost event (queue overflow) is read at the end.
                continue;
            };
            let rel = under(dir, name);
            if e.mask.contains(AddWatchFlags::IN_ISDIR) {
                if name != PARTIAL_DIR {
                    self.add(root, &rel, arrived);
                }
            } else if e.mask.contains(AddWatchFlags::IN_MOVED_TO) && name != MANIFEST_NAME {
                arrived.push(rel);
            }
        }
    }
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
    fn both_ways_of_following_hash_files_landing_in_new_directories() {
        for how in [Watching::Events, Watching::Polling] {
            let src = tempfile::tempdir().expect("tmp");
            for i in 0..300 {
                write(
                    src.path(),
                    &format!("d{}/e/f{i}", i % 30),
                    &noise(100 + i, i as u32),
                );
            }
            let m = Manifest::build(src.path(), 64, HashAlgorithm::Blake3).expect("build");
            let dst = tempfile::tempdir().expect("tmp");
            let landing = follow_by(dst.path(), &Plan::of(&m), how);
            // As rsync lands them: a temporary name, then renamed whole, directories made
            // on the way.
            for f in &m.files {
                let bytes = std::fs::read(src.path().join(&f.path)).expect("read");
                let tmp = format!("{}.tmp", f.path);
                write(dst.path(), &tmp, &bytes);
                std::fs::rename(dst.path().join(&tmp), dst.path().join(&f.path)).expect("rename");
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while landing.hashed() < 300 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(landing.hashed(), 300, "{how:?}");
            let landed = landing.finish();
            let (report, _) = m.verify_landed(dst.path(), &landed).expect("verify");
            assert!(report.is_complete(), "{how:?}: {report:?}");
        }
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
    fn receive_verifies_and_saves_the_manifest_with_local_identities() {
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
            "{}\n{}\n{DATA_SENT}\n",
            serde_json::to_string(&Plan::of(&m)).expect("plan"),
            serde_json::to_string(&m.without_stats()).expect("manifest")
        );
        let mut out = Vec::new();
        receive(&root, &mut input.as_bytes(), &mut out).expect("receive");
        let text = String::from_utf8(out).expect("utf8");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(READY));
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
        let evil = r#"{"version":2,"chunk_size":1,"algorithm":"blake3","files":[{"path":"../x","size":1}]}"#;
        let err = receive(
            &dst.path().join("other"),
            &mut format!("{evil}\n").as_bytes(),
            &mut Vec::new(),
        )
        .expect_err("refused");
        assert!(err.to_string().contains(".."), "{err}");
        // A sender that goes away before the manifest, or before its data has gone: an
        // error, nothing saved.
        let fresh = dst.path().join("fresh");
        let plan = format!("{}\n", serde_json::to_string(&Plan::of(&m)).expect("plan"));
        let manifest = format!("{}\n", serde_json::to_string(&m).expect("manifest"));
        for input in [plan.clone(), plan + &manifest] {
            let err = receive(&fresh, &mut input.as_bytes(), &mut Vec::new()).expect_err("ended");
            assert!(err.to_string().contains("closed the connection"), "{err}");
            assert!(!fresh.join(MANIFEST_NAME).exists());
        }

        // A sender of another version is told so.
        let old = r#"{"chunk_size":1,"algorithm":"blake3","files":[]}"#;
        let err = receive(&fresh, &mut format!("{old}\n").as_bytes(), &mut Vec::new())
            .expect_err("refused");
        assert!(err.to_string().contains("same version of ferry"), "{err}");
    }
}

#[cfg(test)]
mod space_tests {
    use super::*;

    #[test]
    fn a_refused_space_check_is_read_back_from_the_other_hosts_words() {
        let dir = tempfile::tempdir().expect("tmp");
        let into = dir.path().join("a/b");
        check_space(&into, 10).expect("fits");
        assert!(into.is_dir(), "the destination is created");
        std::fs::write(into.join("x"), vec![0u8; 4096]).expect("write");
        // What is there already counts: a resumed transfer needs only the rest.
        let err = check_space(&into, u64::MAX).expect_err("too big");
        assert!(
            matches!(err, TransferError::DiskFull { needed, .. } if needed == u64::MAX - 4096),
            "{err}"
        );
        let said = format!(
            "bash: warning\n{}\nrsync: connection unexpectedly closed (0 bytes received so far) [sender]",
            no_space_line(123, 45)
        );
        assert_eq!(space_refusal(&said), Some((123, 45)));
        assert_eq!(space_refusal("rsync: connection unexpectedly closed"), None);
    }
}

#[cfg(test)]
mod land_tests {
    use super::*;

    #[test]
    fn the_destination_s_words_after_rsync_read_back_and_only_rsync_s_server_runs() {
        let landed = Heard::Landed {
            files: 3,
            bytes: 12,
            digest: "ab12".into(),
        };
        let said = format!("bash: warning\n{LANDING_READY}\n{}\n", landed.line());
        assert_eq!(Heard::read(&said), Some(landed));
        let failed = Heard::Unverified("disk on fire\nreally".into());
        assert_eq!(
            Heard::read(&failed.line()),
            Some(Heard::Unverified("disk on fire really".into()))
        );
        assert_eq!(Heard::read("rsync: connection unexpectedly closed"), None);
        assert!(rsync_temporary(".part-0.bin.a1B2c3"));
        assert!(!rsync_temporary("part-0.bin") && !rsync_temporary(".hidden"));

        let dir = tempfile::tempdir().expect("tmp");
        let o = LandOptions {
            need: 0,
            chunk_size: 4,
            algorithm: HashAlgorithm::Blake3,
        };
        let mut said = Vec::new();
        for args in [
            vec!["sh", "-c", "true"],
            vec!["rsync", "-a", "x", "y"],
            vec![],
        ] {
            let args: Vec<String> = args.into_iter().map(String::from).collect();
            let err = land(dir.path(), &o, &args, &mut said).expect_err("refused");
            assert!(err.to_string().contains("rsync's server side"), "{err}");
        }
        assert!(said.is_empty(), "nothing said, nothing run");
    }

    #[test]
    fn files_renamed_into_place_are_hashed_as_they_arrive_and_the_digest_is_the_trees() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().to_owned();
        let o = LandOptions {
            need: 0,
            chunk_size: 1000,
            algorithm: HashAlgorithm::Blake3,
        };
        std::fs::write(root.join("before.txt"), b"already here").expect("write");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (root, stop) = (root.clone(), stop.clone());
            std::thread::spawn(move || arrivals(&root, &o, &stop))
        };
        std::thread::sleep(Duration::from_millis(100));
        // As rsync lands files: a temporary name, then a rename into place, in new
        // directories; its partial directory is not data.
        for d in 0..5 {
            let sub = root.join(format!("d{d}/e"));
            std::fs::create_dir_all(&sub).expect("mkdir");
            for f in 0..20 {
                let tmp = sub.join(format!(".f{f}.XXXXXX"));
                std::fs::write(&tmp, vec![(d * 20 + f) as u8; 2500]).expect("write");
                std::fs::rename(&tmp, sub.join(format!("f{f}"))).expect("rename");
            }
        }
        std::fs::create_dir_all(root.join(PARTIAL_DIR)).expect("mkdir");
        std::fs::write(root.join(PARTIAL_DIR).join("half"), b"x").expect("write");
        // Time to hash a hundred small files, then rsync ends.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        let arrived = thread.join().expect("follower");
        assert!(arrived.len() >= 90, "{} of 101 followed", arrived.len());
        assert!(arrived.keys().all(|k| !k.contains(".ferry-partial")));
        assert!(
            arrived.keys().all(|k| !k.contains("XXXXXX")),
            "temporary names"
        );
        std::fs::remove_dir_all(root.join(PARTIAL_DIR)).expect("rm");

        let settled = settle(&root, &o, &arrived).expect("settle");
        let built = Manifest::build(&root, o.chunk_size, o.algorithm).expect("build");
        assert_eq!(settled.without_stats(), built.without_stats());
        assert_eq!(settled.digest(), built.digest());
        let saved = Manifest::load(&root.join(MANIFEST_NAME), &root).expect("saved");
        assert_eq!(saved, settled);
        // One byte elsewhere, or a file more, is another digest.
        let mut other = built.clone();
        other.files[3].chunks[1] = "00".into();
        assert_ne!(other.digest(), built.digest());
        let mut more = built.clone();
        more.files.push(FileEntry {
            path: "z".into(),
            size: 0,
            chunks: Vec::new(),
            stat: None,
        });
        assert_ne!(more.digest(), built.digest());
    }
}
