//! Chunk manifests: for every file under a root, its size and one checksum per chunk. The
//! source writes one beside the data; the destination verifies against it, so a damaged
//! chunk is found (and re-sent) alone, not its whole file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{TransferError, confine};

/// File name of the manifest, at the top of the transferred directory.
pub const MANIFEST_NAME: &str = ".ferry-manifest.json";
pub(crate) const FORMAT_VERSION: u32 = 1;
const READ_BUF: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// Fast (several GB/s per core); the default.
    Blake3,
    /// For sites that require SHA-256.
    Sha256,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    pub algorithm: HashAlgorithm,
    pub chunk_size: u64,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the manifest's root, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Hex checksum of each chunk, in order; none for an empty file.
    pub chunks: Vec<String>,
    /// The file's identity on the host that wrote this manifest, when it hashed it: a
    /// later build there reuses the checksums of a file whose identity is unchanged. It
    /// means nothing on another host (verification never reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<FileStat>,
}

/// What tells a file unchanged without reading it: size (in [`FileEntry`]), modification
/// and change times to the nanosecond, inode and device. The change time cannot be set
/// by a user, so a rewrite that puts the old mtime back is still seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStat {
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

impl FileStat {
    pub fn of(meta: &std::fs::Metadata) -> FileStat {
        use std::os::unix::fs::MetadataExt;
        FileStat {
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// The identity of `path` now, with its size.
    pub fn read(path: &Path) -> std::io::Result<(u64, FileStat)> {
        let meta = std::fs::metadata(path)?;
        Ok((meta.len(), FileStat::of(&meta)))
    }
}

/// One chunk of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRef {
    pub path: String,
    pub index: usize,
    pub offset: u64,
    pub len: u64,
    pub checksum: String,
}

impl ChunkRef {
    /// Stable id used in `transfer_chunks.chunk_id`.
    pub fn id(&self) -> String {
        format!("{}#{}", self.path, self.index)
    }
}

/// What verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub verified: Vec<ChunkRef>,
    pub bad: Vec<ChunkRef>,
    /// Files absent at the destination (all their chunks are also in `bad`).
    pub missing_files: Vec<String>,
    /// Files longer than the manifest says (extra bytes at the end).
    pub too_long: Vec<String>,
}

impl VerifyReport {
    pub fn is_complete(&self) -> bool {
        self.bad.is_empty() && self.missing_files.is_empty() && self.too_long.is_empty()
    }
}

impl Manifest {
    /// Hashes every regular file under `root` (in path order), on every core. Symlinks are
    /// refused: what a link points to on the source says nothing about the destination.
    pub fn build(
        root: &Path,
        chunk_size: u64,
        algorithm: HashAlgorithm,
    ) -> Result<Manifest, TransferError> {
        Self::build_with_threads(root, chunk_size, algorithm, 0)
    }

    /// `build` on at most `threads` threads (0: every core).
    pub fn build_with_threads(
        root: &Path,
        chunk_size: u64,
        algorithm: HashAlgorithm,
        threads: usize,
    ) -> Result<Manifest, TransferError> {
        let mut m = Manifest::scan(root, chunk_size, algorithm)?;
        m.hash_with_threads(root, threads)?;
        Ok(m)
    }

    /// The files and sizes under `root`, without checksums yet (`hash_all` fills them in);
    /// enough to check space and plan a transfer while hashing goes on.
    pub fn scan(
        root: &Path,
        chunk_size: u64,
        algorithm: HashAlgorithm,
    ) -> Result<Manifest, TransferError> {
        if !root.is_dir() {
            return Err(TransferError::MissingSource(root.to_owned()));
        }
        let chunk_size = chunk_size.max(1);
        // The manifest itself and temporary files of an interrupted save are not data.
        let found = ferry_fs::walk_files(root, ferry_fs::Symlinks::Refuse, |name| {
            name == MANIFEST_NAME || (name.starts_with('.') && name.contains(".tmp-"))
        })
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => TransferError::Confinement {
                root: root.to_owned(),
                path: e.to_string(),
                reason: "symlinks are not transferred".into(),
            },
            _ => TransferError::io(root, e),
        })?;
        let files = found
            .into_iter()
            .map(|f| FileEntry {
                stat: Some(FileStat::of(&f.meta)),
                path: f.rel,
                size: f.len,
                chunks: Vec::new(),
            })
            .collect();
        Ok(Manifest {
            version: FORMAT_VERSION,
            algorithm,
            chunk_size,
            files,
        })
    }

    /// `build`, reusing the checksums of the manifest already at the top of `root` for every
    /// file whose size and [`FileStat`] are unchanged since it was written there; only the
    /// others are read. Returns the manifest and how many files were reused.
    pub fn build_reusing(
        root: &Path,
        chunk_size: u64,
        algorithm: HashAlgorithm,
        threads: usize,
    ) -> Result<(Manifest, usize), TransferError> {
        let mut m = Manifest::scan(root, chunk_size, algorithm)?;
        let reused = m.reuse_from(&root.join(MANIFEST_NAME), root);
        m.hash_with_threads(root, threads)?;
        Ok((m, reused))
    }

    /// Fills in the checksums of unchanged files from the manifest saved at `saved` (if
    /// any, of the same chunk size and algorithm); returns how many files were filled.
    pub fn reuse_from(&mut self, saved: &Path, root: &Path) -> usize {
        let Ok(old) = Manifest::load(saved, root) else {
            return 0;
        };
        if old.chunk_size != self.chunk_size || old.algorithm != self.algorithm {
            return 0;
        }
        let known: std::collections::HashMap<&str, &FileEntry> =
            old.files.iter().map(|f| (f.path.as_str(), f)).collect();
        let mut reused = 0;
        for f in &mut self.files {
            if let Some(o) = known.get(f.path.as_str())
                && o.size == f.size
                && o.stat.is_some()
                && o.stat == f.stat
            {
                f.chunks = o.chunks.clone();
                reused += 1;
            }
        }
        reused
    }

    /// Computes every chunk checksum of a scanned manifest, spreading chunks over all cores.
    /// Files whose checksums are already filled in (see [`Manifest::reuse_from`]) are not
    /// read.
    pub fn hash_all(&mut self, root: &Path) -> Result<(), TransferError> {
        self.hash_with_threads(root, 0)
    }

    /// [`Manifest::hash_all`] on at most `threads` threads (0: every core).
    pub fn hash_with_threads(&mut self, root: &Path, threads: usize) -> Result<(), TransferError> {
        let cs = self.chunk_size;
        let tasks: Vec<(usize, u64, u64)> = self
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.chunks.len() as u64 != f.size.div_ceil(cs))
            .flat_map(|(i, f)| {
                (0..f.size.div_ceil(cs)).map(move |c| (i, c * cs, cs.min(f.size - c * cs)))
            })
            .collect();
        let paths: Vec<PathBuf> = self.files.iter().map(|f| root.join(&f.path)).collect();
        let largest = tasks.iter().map(|t| t.2).max().unwrap_or(0);
        let sums = parallel_map(&tasks, threads, largest, |&(i, offset, len), buf| {
            let mut f = File::open(&paths[i]).map_err(|e| TransferError::io(&paths[i], e))?;
            hash_range(&mut f, &paths[i], offset, len, self.algorithm, buf)
        })?;
        for (i, _, _) in &tasks {
            self.files[*i].chunks.clear();
        }
        for ((i, _, _), sum) in tasks.iter().zip(sums) {
            self.files[*i].chunks.push(sum);
        }
        Ok(())
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Every chunk in order. A manifest from `scan` (not hashed yet) yields empty checksums.
    pub fn chunks(&self) -> impl Iterator<Item = ChunkRef> + '_ {
        self.files.iter().flat_map(move |f| {
            (0..f.size.div_ceil(self.chunk_size)).map(move |i| {
                let offset = i * self.chunk_size;
                ChunkRef {
                    path: f.path.clone(),
                    index: i as usize,
                    offset,
                    len: self.chunk_size.min(f.size - offset),
                    checksum: f.chunks.get(i as usize).cloned().unwrap_or_default(),
                }
            })
        })
    }

    /// Reads and checks a manifest: known format, consistent chunk counts, and every path
    /// confined to `root`.
    pub fn load(path: &Path, root: &Path) -> Result<Manifest, TransferError> {
        let text = std::fs::read_to_string(path).map_err(|e| TransferError::io(path, e))?;
        Manifest::parse(&text, path, root)
    }

    /// [`Manifest::load`] of a manifest's text (`path` names it in errors): what the
    /// destination accepts from the other host, before it touches a file.
    pub fn parse(text: &str, path: &Path, root: &Path) -> Result<Manifest, TransferError> {
        let bad = |detail: String| TransferError::BadManifest {
            path: path.to_owned(),
            detail,
        };
        let m: Manifest = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if m.version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} is not supported",
                m.version
            )));
        }
        if m.chunk_size == 0 {
            return Err(bad("chunk_size is 0".into()));
        }
        let mut total: u64 = 0;
        for f in &m.files {
            confine::check_relative(root, &f.path)?;
            total = total.checked_add(f.size).ok_or_else(|| {
                bad(format!(
                    "the file sizes add up to more than {} bytes",
                    u64::MAX
                ))
            })?;
            if f.chunks.len() as u64 != f.size.div_ceil(m.chunk_size) {
                return Err(bad(format!(
                    "`{}` has {} chunks for {} bytes",
                    f.path,
                    f.chunks.len(),
                    f.size
                )));
            }
        }
        Ok(m)
    }

    /// Writes the manifest durably (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, path: &Path) -> Result<(), TransferError> {
        let text = serde_json::to_vec(self).map_err(|e| TransferError::BadManifest {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        ferry_fs::write_atomic(path, &text).map_err(|e| TransferError::io(path, e))
    }

    /// Checks every chunk under `root` against the manifest, on every core.
    pub fn verify(&self, root: &Path) -> Result<VerifyReport, TransferError> {
        Ok(self.verify_landed(root, &[])?.0)
    }

    /// [`Manifest::verify`], taking the checksums of files hashed as they landed (see
    /// the `landing` module) for those whose identity has not changed since; only the other
    /// chunks are read. Also returns, per file, its identity when every chunk of it
    /// verified (what [`Manifest::with_stats`] records for the next build on this host).
    pub fn verify_landed(
        &self,
        root: &Path,
        landed: &[Option<Landed>],
    ) -> Result<(VerifyReport, Vec<Option<FileStat>>), TransferError> {
        let mut report = VerifyReport::default();
        let mut present: Vec<Option<(PathBuf, u64, FileStat)>> =
            Vec::with_capacity(self.files.len());
        let mut joiner = confine::Joiner::new(root)?;
        for f in &self.files {
            let full = joiner.join(&f.path)?;
            match std::fs::metadata(&full) {
                Ok(meta) => {
                    if meta.len() > f.size {
                        report.too_long.push(f.path.clone());
                    }
                    present.push(Some((full, meta.len(), FileStat::of(&meta))));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    report.missing_files.push(f.path.clone());
                    present.push(None);
                }
                Err(e) => return Err(TransferError::io(&full, e)),
            }
        }
        // Chunks with an answer already (absent, short, or hashed as they landed) and
        // those to read.
        let mut answers: Vec<(usize, ChunkRef, Option<bool>)> = Vec::new();
        for (i, f) in self.files.iter().enumerate() {
            let still = match (&present[i], landed.get(i).and_then(Option::as_ref)) {
                (Some((_, len, stat)), Some(l)) if l.stat == *stat && l.size == *len => Some(l),
                _ => None,
            };
            for index in 0..f.size.div_ceil(self.chunk_size) {
                let offset = index * self.chunk_size;
                let c = ChunkRef {
                    path: f.path.clone(),
                    index: index as usize,
                    offset,
                    len: self.chunk_size.min(f.size - offset),
                    checksum: f.chunks.get(index as usize).cloned().unwrap_or_default(),
                };
                let known = match &present[i] {
                    None => Some(false),
                    Some((_, actual, _)) if c.offset + c.len > *actual => Some(false),
                    _ => still.map(|l| l.chunks.get(index as usize) == Some(&c.checksum)),
                };
                answers.push((i, c, known));
            }
        }
        let to_read: Vec<&(usize, ChunkRef, Option<bool>)> =
            answers.iter().filter(|a| a.2.is_none()).collect();
        let largest = to_read.iter().map(|a| a.1.len).max().unwrap_or(0);
        let read = parallel_map(&to_read, 0, largest, |(i, c, _), buf| {
            let Some((full, _, _)) = &present[*i] else {
                return Ok(false);
            };
            let mut f = File::open(full).map_err(|e| TransferError::io(full, e))?;
            Ok(hash_range(&mut f, full, c.offset, c.len, self.algorithm, buf)? == c.checksum)
        })?;
        let mut read = read.into_iter();
        let mut file_ok: Vec<bool> = present.iter().map(Option::is_some).collect();
        for (i, c, known) in answers {
            let ok = match known {
                Some(k) => k,
                None => read.next().unwrap_or(false),
            };
            if ok {
                report.verified.push(c);
            } else {
                file_ok[i] = false;
                report.bad.push(c);
            }
        }
        let stats = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| match &present[i] {
                Some((_, len, stat)) if file_ok[i] && *len == f.size => Some(*stat),
                _ => None,
            })
            .collect();
        Ok((report, stats))
    }

    /// This manifest with each file's identity on this host (`None` where unknown), as
    /// saved beside verified data so the next hop from here reuses its checksums.
    pub fn with_stats(&self, stats: &[Option<FileStat>]) -> Manifest {
        let mut m = self.clone();
        for (i, f) in m.files.iter_mut().enumerate() {
            f.stat = stats.get(i).copied().flatten();
        }
        m
    }

    /// One checksum of the whole manifest (chunk size, algorithm, and every file's path,
    /// size and chunk checksums, in path order; identities left out): two hosts with the
    /// same digest hold the same files, so the destination need only say this.
    pub fn digest(&self) -> String {
        let mut files: Vec<&FileEntry> = self.files.iter().collect();
        files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let mut h = blake3::Hasher::new();
        h.update(&u64::from(self.version).to_le_bytes());
        h.update(&self.chunk_size.to_le_bytes());
        h.update(match self.algorithm {
            HashAlgorithm::Blake3 => b"blake3",
            HashAlgorithm::Sha256 => b"sha256",
        });
        h.update(&(files.len() as u64).to_le_bytes());
        for f in files {
            // Lengths first: no two different manifests read as the same bytes.
            h.update(&(f.path.len() as u64).to_le_bytes());
            h.update(f.path.as_bytes());
            h.update(&f.size.to_le_bytes());
            h.update(&(f.chunks.len() as u64).to_le_bytes());
            for c in &f.chunks {
                h.update(&(c.len() as u64).to_le_bytes());
                h.update(c.as_bytes());
            }
        }
        h.finalize().to_hex().to_string()
    }

    /// This manifest without identities (what travels to the other host).
    pub fn without_stats(&self) -> Manifest {
        self.with_stats(&[])
    }
}

/// What `ferry manifest verify --json` prints, for verification on the other host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifySummary {
    pub complete: bool,
    pub verified: usize,
    /// Chunk ids (`path#index`) that are missing or wrong.
    pub bad: Vec<String>,
    pub missing_files: Vec<String>,
    pub too_long: Vec<String>,
}

impl From<&VerifyReport> for VerifySummary {
    fn from(r: &VerifyReport) -> Self {
        VerifySummary {
            complete: r.is_complete(),
            verified: r.verified.len(),
            bad: r.bad.iter().map(ChunkRef::id).collect(),
            missing_files: r.missing_files.clone(),
            too_long: r.too_long.clone(),
        }
    }
}

/// The checksums of one file hashed as it landed, with the identity it had then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landed {
    pub size: u64,
    pub stat: FileStat,
    pub chunks: Vec<String>,
}

/// Applies `f` to every item on `threads` threads (0: all available cores) (each thread with its own read
/// buffer) and returns the results in order; the first error wins.
pub(crate) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    largest: u64,
    f: impl Fn(&T, &mut [u8]) -> Result<R, TransferError> + Sync,
) -> Result<Vec<R>, TransferError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Asked once: the answer reads the cgroup's CPU quota files each time.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Read buffers no larger than the largest read: a follower's batch of small files
    // costs no megabyte cleared per thread.
    let buf_len = usize::try_from(largest).map_or(READ_BUF, |l| l.clamp(1, READ_BUF));
    let threads = if threads == 0 { cores } else { threads }
        .min(items.len())
        .max(1);
    if threads == 1 {
        // No thread of its own for one (a follower's handful of files, a single chunk).
        let mut buf = vec![0u8; buf_len];
        return items.iter().map(|item| f(item, &mut buf)).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<R, TransferError>>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut buf = vec![0u8; buf_len];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item, &mut buf);
                    let failed = r.is_err();
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                    if failed {
                        // Stop handing out work; the error is reported below.
                        next.store(items.len(), Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    for slot in results {
        match slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(r)) => out.push(r),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    if out.len() != items.len() {
        return Err(TransferError::Verification {
            path: PathBuf::new(),
            detail: "hashing stopped early".into(),
        });
    }
    Ok(out)
}

/// The BLAKE3 kernel this CPU runs (chosen at run time: `AVX512`, `AVX2`, `SSE41`, `NEON`,
/// ...; `Portable` would mean a build without the SIMD kernels).
pub fn blake3_kernel() -> String {
    format!("{:?}", blake3::platform::Platform::detect())
}

/// Hex checksum of `len` bytes of `file` from `offset`. `file` is freshly opened (at its
/// start): a chunk at offset 0 costs no seek.
pub fn hash_range(
    file: &mut (impl Read + Seek),
    path: &Path,
    offset: u64,
    len: u64,
    algorithm: HashAlgorithm,
    buf: &mut [u8],
) -> Result<String, TransferError> {
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| TransferError::io(path, e))?;
    }
    let mut remaining = len;
    enum H {
        B(Box<blake3::Hasher>),
        S(sha2::Sha256),
    }
    let mut h = match algorithm {
        HashAlgorithm::Blake3 => H::B(Box::new(blake3::Hasher::new())),
        HashAlgorithm::Sha256 => H::S(<sha2::Sha256 as sha2::Digest>::new()),
    };
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        let n = file
            .read(&mut buf[..want])
            .map_err(|e| TransferError::io(path, e))?;
        if n == 0 {
            return Err(TransferError::Verification {
                path: path.to_owned(),
                detail: format!("file ends before byte {}", offset + len),
            });
        }
        match &mut h {
            H::B(b) => {
                b.update(&buf[..n]);
            }
            H::S(s) => sha2::Digest::update(s, &buf[..n]),
        }
        remaining -= n as u64;
    }
    Ok(match h {
        H::B(b) => b.finalize().to_hex().to_string(),
        H::S(s) => sha2::Digest::finalize(s)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) {
        std::fs::create_dir_all(dir.join("train")).expect("mkdir");
        let big: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect(); // 40,000 bytes
        std::fs::write(dir.join("train/part-0.bin"), &big).expect("write");
        std::fs::write(dir.join("empty.txt"), b"").expect("write");
        std::fs::write(dir.join("small.txt"), b"hello").expect("write");
    }

    /// Found by the `manifest` fuzz target: sizes that add up past `u64::MAX` were accepted,
    /// and `total_bytes` (the destination's space check) overflowed: a panic in debug builds,
    /// a wrapped, too small total in release builds.
    #[test]
    fn sizes_adding_up_past_u64_max_are_refused() {
        let root = tempfile::tempdir().expect("tmp");
        let text = r#"{"version":1,"algorithm":"blake3","chunk_size":18446744073709551615,"files":[{"path":"a","size":18446744073709551615,"chunks":["x"]},{"path":"b","size":1,"chunks":["y"]}]}"#;
        let err = Manifest::parse(text, Path::new("m.json"), root.path()).expect_err("overflow");
        assert!(err.to_string().contains("add up to more than"), "{err}");
        let fits = text
            .replace(r#""size":1,"#, r#""size":0,"#)
            .replace(r#"["y"]"#, "[]");
        let m = Manifest::parse(&fits, Path::new("m.json"), root.path()).expect("fits");
        assert_eq!(m.total_bytes(), u64::MAX);
    }

    #[test]
    fn build_verify_and_find_a_single_damaged_chunk() {
        for algorithm in [HashAlgorithm::Blake3, HashAlgorithm::Sha256] {
            let src = tempfile::tempdir().expect("tmp");
            sample(src.path());
            let m = Manifest::build(src.path(), 16_384, algorithm).expect("build");
            assert_eq!(m.files.len(), 3);
            assert_eq!(m.total_bytes(), 40_005);
            let big = m
                .files
                .iter()
                .find(|f| f.path == "train/part-0.bin")
                .expect("big file");
            assert_eq!(big.chunks.len(), 3, "40,000 bytes in 16 KiB chunks");
            assert!(
                m.files
                    .iter()
                    .any(|f| f.path == "empty.txt" && f.chunks.is_empty())
            );
            assert!(m.verify(src.path()).expect("verify").is_complete());

            // Flip one byte in the middle chunk.
            let target = src.path().join("train/part-0.bin");
            let mut bytes = std::fs::read(&target).expect("read");
            bytes[20_000] ^= 0xff;
            std::fs::write(&target, &bytes).expect("write");
            let report = m.verify(src.path()).expect("verify");
            assert_eq!(report.bad.len(), 1);
            assert_eq!(report.bad[0].id(), "train/part-0.bin#1");
            assert_eq!((report.bad[0].offset, report.bad[0].len), (16_384, 16_384));

            std::fs::remove_file(src.path().join("small.txt")).expect("rm");
            let report = m.verify(src.path()).expect("verify");
            assert_eq!(report.missing_files, ["small.txt"]);
        }
    }

    #[test]
    fn manifests_round_trip_and_hostile_paths_are_refused() {
        let src = tempfile::tempdir().expect("tmp");
        sample(src.path());
        let m = Manifest::build(src.path(), 1 << 20, HashAlgorithm::Blake3).expect("build");
        let path = src.path().join(MANIFEST_NAME);
        m.save(&path).expect("save");
        assert_eq!(Manifest::load(&path, src.path()).expect("load"), m);
        // The manifest itself is not part of the next build.
        assert_eq!(
            Manifest::build(src.path(), 1 << 20, HashAlgorithm::Blake3).expect("rebuild"),
            m
        );

        let mut evil = m.clone();
        evil.files[0].path = "../../etc/passwd".into();
        evil.save(&path).expect("save");
        let err = Manifest::load(&path, src.path()).expect_err("refused");
        assert!(err.to_string().contains("`..` is not allowed"), "{err}");
        assert_eq!(err.class(), ferry_core::ErrorClass::Permanent);
    }

    /// The build must keep BLAKE3's run-time dispatch: on a CPU with AVX2 the AVX2 (or a
    /// wider) kernel runs, never the portable one.
    #[test]
    fn blake3_uses_the_widest_kernel_the_cpu_has() {
        let kernel = blake3_kernel();
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(kernel == "AVX2" || kernel == "AVX512", "{kernel}");
        }
        assert_ne!(kernel, "Portable");
    }

    #[test]
    fn a_missing_source_is_a_clear_permanent_error() {
        let err = Manifest::build(
            Path::new("/nonexistent/export"),
            1024,
            HashAlgorithm::Blake3,
        )
        .expect_err("missing");
        assert_eq!(err.to_string(), "source /nonexistent/export does not exist");
        assert_eq!(err.class(), ferry_core::ErrorClass::Permanent);
    }
}
