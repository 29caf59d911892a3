//! `cargo xtask bench transfer`: Ferry's verified transfer against the plain `rsync -a` a
//! user would otherwise run, over the same private sshd on loopback, in one run.
//!
//! Each round runs both back to back (which goes first alternates) and the ratio is taken
//! per round, so a machine that drifts during the run cannot flatter either side; the
//! median and the worst of those paired ratios are reported. Cases:
//! - `mixed`: about 2 GiB of one large file, medium files and many small text files;
//! - `small`: 10,000 files of 4 KiB;
//! - `large`: one 2 GiB file;
//! - `hop`: the fixed cost of a 4 MiB transfer (Ferry on its kept master);
//! - `delay`: the mixed set, smaller, through a link with 20 ms one-way delay (a user-space
//!   proxy, as `tc netem delay 20ms`): plain rsync against Ferry with 1 and with N workers.
//!
//! Also printed: the CPU's SIMD level and BLAKE3's and SHA-256's hashing speed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_e2e::proxy::Proxy;
use ferry_e2e::sshd::Sshd;
use ferry_transfer::manifest::HashAlgorithm;
use ferry_transfer::rsync::{Direction, RsyncOptions};
use ferry_transfer::ssh::{SshSession, SshTarget};
use ferry_transfer::transfer::{self, ChunkUpdate, TransferEvents, TransferProgress, TransferSpec};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Size of the mixed and the large set in MiB.
    #[arg(long, default_value_t = 2048)]
    mib: u64,
    /// Paired rounds per case.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Cases to run (comma-separated): mixed, small, large, hop, delay, one-worker (the
    /// mixed set with a single rsync process, one against one).
    #[arg(long, default_value = "mixed,small,large,hop,delay,one-worker")]
    cases: String,
    /// rsync processes Ferry runs side by side (transfer.parallel_workers: 4, as Ferry is
    /// configured out of the box).
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// One-way delay of the delay case's link, in milliseconds.
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
    /// Size of the delay case's mixed set in MiB.
    #[arg(long, default_value_t = 256)]
    delay_mib: u64,
    /// Where both sides write (the same for both). By default a tmpfs (/dev/shm) when it has
    /// room: a disk mounted with `discard` stalls file creation for seconds after the previous
    /// round's 2 GiB were deleted, whichever tool runs next.
    #[arg(long)]
    dest_dir: Option<PathBuf>,
}

/// Set in the optimised build's environment (it must not build itself again).
const OPTIMISED: &str = "FERRY_BENCH_OPTIMISED";

/// Goals on this machine (issue: verified transfers at the speed of plain rsync).
const MEDIAN_GOAL: f64 = 0.95;
const WORST_GOAL: f64 = 0.85;
const HOP_GOAL_S: f64 = 0.5;
const DELAY_GOAL: f64 = 1.5;

struct Quiet;

impl TransferEvents for Quiet {
    fn chunks(&mut self, _: &[ChunkUpdate]) {}
    fn progress(&mut self, _: &TransferProgress) {}
    fn log(&mut self, _: &str) {}
}

/// Deterministic incompressible bytes.
struct Noise(u64);

impl Noise {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            v.extend_from_slice(&self.0.to_le_bytes());
        }
        v.truncate(n);
        v
    }

    fn file(&mut self, path: &Path, size: u64) -> anyhow::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(path)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(8 << 20);
            f.write_all(&self.bytes(n as usize))?;
            left -= n;
        }
        Ok(())
    }
}

/// Mixed files: one large random file, medium random files, and many small text files.
fn generate_mixed(dir: &Path, mib: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("text"))?;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut total = 0u64;
    let big = (mib / 2) * 1024 * 1024;
    noise.file(&dir.join("big.bin"), big)?;
    total += big;
    for i in 0..(mib * 3 / 8) / 8 {
        noise.file(&dir.join(format!("part-{i:04}.bin")), 8 << 20)?;
        total += 8 << 20;
    }
    let small_bytes = (mib * 1024 * 1024).saturating_sub(total);
    for i in 0..(small_bytes / (64 * 1024)).max(1) {
        let line = format!(
            "{i},user_{},campaign_{},0.{:06},click\n",
            i * 7919 % 100_000,
            i % 977,
            i * 104_729 % 1_000_000
        );
        std::fs::write(
            dir.join(format!("text/rows-{i:05}.csv")),
            line.repeat(64 * 1024 / line.len()),
        )?;
    }
    Ok(())
}

/// 10,000 files of 4 KiB in 100 folders.
fn generate_small(dir: &Path) -> anyhow::Result<()> {
    let mut noise = Noise(0x2545_f491_4f6c_dd1d);
    for d in 0..100 {
        let sub = dir.join(format!("d{d:03}"));
        std::fs::create_dir_all(&sub)?;
        for f in 0..100 {
            std::fs::write(sub.join(format!("f{f:03}.bin")), noise.bytes(4096))?;
        }
    }
    Ok(())
}

fn generate_one(dir: &Path, bytes: u64, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    Noise(seed).file(&dir.join("one.bin"), bytes)
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if cfg!(debug_assertions) && std::env::var_os(OPTIMISED).is_none() {
        // Ferry's side of each round runs in this process: it is timed as the agents run
        // it, optimised (unoptimised, its scan and JSON alone cost half a second on 10,000
        // files).
        println!("building the benchmark optimised, as the agents are built...");
        // In one build: apart, the two would unify features differently and each would
        // rebuild the other's dependencies every time.
        crate::cargo(&["build", "--release", "-p", "xtask", "-p", "ferry-cli"])?;
        let status = Command::new(crate::target_dir().join("release/xtask"))
            .args(std::env::args_os().skip(1))
            .env(OPTIMISED, "1")
            .status()
            .context("cannot run the optimised benchmark")?;
        if !status.success() {
            bail!("the benchmark failed ({status})");
        }
        return Ok(());
    }
    crate::ensure_system_packages()?;
    if std::env::var_os(OPTIMISED).is_none() {
        crate::cargo(&["build", "--release", "-p", "ferry-cli"])?;
    }
    let ferry = crate::target_dir().join("release/ferry");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(opts, ferry))
}

fn remove(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(())
}

/// The CPU's widest SIMD extension BLAKE3 can use (it picks its kernel at run time).
fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            "AVX-512"
        } else if std::arch::is_x86_feature_detected!("avx2") {
            "AVX2 (no AVX-512)"
        } else if std::arch::is_x86_feature_detected!("sse4.1") {
            "SSE4.1 (no AVX2)"
        } else {
            "SSE2"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "NEON"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "portable"
    }
}

/// GB/s of `ferry manifest build` over `dir` (warm cache) on `threads` threads.
fn hash_speed(
    ferry: &Path,
    dir: &Path,
    bytes: u64,
    algorithm: &str,
    threads: usize,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = Command::new(ferry)
        .args(["manifest", "build", "--no-reuse", "--threads"])
        .arg(threads.to_string())
        .args(["--algorithm", algorithm])
        .arg(dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "ferry manifest build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e9)
}

fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn tree_bytes(dir: &Path) -> (u64, usize) {
    let mut total = (0, 0);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            let (b, n) = tree_bytes(&p);
            total.0 += b;
            total.1 += n;
        } else if let Ok(m) = e.metadata() {
            total.0 += m.len();
            total.1 += 1;
        }
    }
    total
}

/// One way to move `src` to the other side of the link.
struct Link<'a> {
    target: SshTarget,
    session: SshSession,
    /// `-e` for plain rsync (its own connection each time, as a user types it).
    ssh_e: String,
    ferry: &'a Path,
}

impl Link<'_> {
    async fn plain(&self, src: &Path, dst: &Path) -> anyhow::Result<Run> {
        remove(dst)?;
        Command::new("sync").status()?;
        let c = busy();
        let t = Instant::now();
        let status = tokio::process::Command::new("rsync")
            .arg("-a")
            .arg("-e")
            .arg(&self.ssh_e)
            .arg(format!("{}/", src.display()))
            .arg(format!("{}:{}/", self.target.destination(), dst.display()))
            .status()
            .await?;
        if !status.success() {
            bail!("plain rsync failed: {status}");
        }
        let s = t.elapsed().as_secs_f64();
        let cpu = busy() - c;
        remove(dst)?;
        Ok(Run { seconds: s, cpu })
    }

    async fn ferry(&self, src: &Path, dst: &Path, workers: u32) -> anyhow::Result<Run> {
        remove(dst)?;
        // Cold, as for freshly exported data: no manifest of an earlier run to reuse.
        if std::env::var_os("WARM").is_none() {
            let _ = std::fs::remove_file(src.join(ferry_transfer::MANIFEST_NAME));
        }
        Command::new("sync").status()?;
        let spec = TransferSpec {
            direction: Direction::Push,
            local: src.to_owned(),
            remote: dst.display().to_string(),
            chunk_size: 100 << 20,
            algorithm: HashAlgorithm::Blake3,
            rsync: RsyncOptions::default(),
            max_chunk_retries: 10,
            remote_ferry: self.ferry.display().to_string(),
            parallel_workers: workers,
            bytes_per_worker: transfer::BYTES_PER_WORKER,
            io_timeout: transfer::DEFAULT_IO_TIMEOUT,
        };
        let c = busy();
        let t = Instant::now();
        let outcome = transfer::run(&self.session, &spec, &mut Quiet).await?;
        let s = t.elapsed().as_secs_f64();
        let cpu = busy() - c;
        if outcome.chunks_resent != 0 {
            bail!("unexpected re-sends: {outcome:?}");
        }
        remove(dst)?;
        Ok(Run { seconds: s, cpu })
    }
}

/// One timed run: wall seconds and the CPU seconds the whole machine was busy meanwhile
/// (both sides of the link run here).
struct Run {
    seconds: f64,
    cpu: f64,
}

fn median(v: &[f64]) -> f64 {
    crate::soak::median(v.to_vec())
}

fn worst(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Paired rounds of plain rsync and Ferry on `src`; the ratios plain time / Ferry time.
async fn paired(
    link: &Link<'_>,
    name: &str,
    src: &Path,
    work: &Path,
    rounds: usize,
    workers: u32,
) -> anyhow::Result<Vec<f64>> {
    let (bytes, files) = tree_bytes(src);
    println!(
        "\n== {name}: {:.2} GiB in {files} files, {rounds} paired rounds, Ferry with at most {workers} rsync process{}",
        bytes as f64 / (1u64 << 30) as f64,
        if workers == 1 { "" } else { "es" }
    );
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let ferry_first = round % 2 == 0;
        let (plain, ferry) = if ferry_first {
            let f = link.ferry(src, &work.join("dst-ferry"), workers).await?;
            let p = link.plain(src, &work.join("dst-plain")).await?;
            (p, f)
        } else {
            let p = link.plain(src, &work.join("dst-plain")).await?;
            let f = link.ferry(src, &work.join("dst-ferry"), workers).await?;
            (p, f)
        };
        let ratio = plain.seconds / ferry.seconds;
        println!(
            "  round {round} ({} first): plain rsync -a {:.2} s ({:.0} MB/s, {:.1} CPU-s), Ferry verified {:.2} s ({:.0} MB/s, {:.1} CPU-s): {ratio:.3}x",
            if ferry_first { "Ferry" } else { "plain" },
            plain.seconds,
            bytes as f64 / plain.seconds / 1e6,
            plain.cpu,
            ferry.seconds,
            bytes as f64 / ferry.seconds / 1e6,
            ferry.cpu,
        );
        ratios.push(ratio);
    }
    let (m, w) = (median(&ratios), worst(&ratios));
    println!(
        "  {name}: paired ratio Ferry / plain: median {m:.3}x (goal >= {MEDIAN_GOAL}: {}), worst {w:.3}x (goal >= {WORST_GOAL}: {})",
        verdict(m >= MEDIAN_GOAL),
        verdict(w >= WORST_GOAL)
    );
    Ok(ratios)
}

async fn bench(opts: Options, ferry: PathBuf) -> anyhow::Result<()> {
    let cases: Vec<&str> = opts.cases.split(',').map(str::trim).collect();
    for c in &cases {
        if !["mixed", "small", "large", "hop", "delay", "one-worker"].contains(c) {
            bail!("unknown case `{c}` (mixed, small, large, hop, delay, one-worker)");
        }
    }
    let sshd = Sshd::start();
    let work = tempfile::tempdir()?;
    let dest_parent = match &opts.dest_dir {
        Some(d) => d.clone(),
        None if Path::new("/dev/shm").is_dir()
            && (3 * (opts.mib << 20)..u64::MAX)
                .contains(&ferry_transfer::landing::free_bytes(Path::new("/dev/shm"))) =>
        {
            PathBuf::from("/dev/shm")
        }
        None => std::env::temp_dir(),
    };
    let dest = tempfile::tempdir_in(&dest_parent)
        .with_context(|| format!("a destination under {}", dest_parent.display()))?;
    println!(
        "sources under {}, destinations under {} ({})",
        work.path().display(),
        dest.path().display(),
        fs_type(dest.path())
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Hashing speed on a warm 256 MiB file.
    let probe = work.path().join("hash-probe");
    generate_one(&probe, 256 << 20, 7)?;
    let _ = hash_speed(&ferry, &probe, 256 << 20, "blake3", 1)?;
    let b1 = hash_speed(&ferry, &probe, 256 << 20, "blake3", 1)?;
    let ball = hash_speed(&ferry, &probe, 256 << 20, "blake3", 0)?;
    let s1 = hash_speed(&ferry, &probe, 256 << 20, "sha256", 1)?;
    remove(&probe)?;
    println!(
        "CPU: {} cores, SIMD {}, BLAKE3 kernel {} (chosen at run time); hashing: blake3 {b1:.2} GB/s on one core, {ball:.2} GB/s on {cores}; sha256 {s1:.2} GB/s on one core",
        cores,
        simd_level(),
        ferry_transfer::manifest::blake3_kernel()
    );

    let target = sshd.target();
    let ssh_e = |port: u16, known_hosts: &Path| {
        format!(
            "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -p {port}",
            sshd.path("user_key").display(),
            known_hosts.display(),
        )
    };
    let direct = Link {
        session: SshSession::connect(&target, &sshd.path("ctl")).await?,
        ssh_e: ssh_e(sshd.port, &sshd.path("known_hosts")),
        target: target.clone(),
        ferry: &ferry,
    };
    let src = work.path().join("src");
    let mut summary = Vec::new();

    // The paired cases: (case, what the round says, how its files are made, rsync processes).
    type Generate = fn(&Path, u64) -> anyhow::Result<()>;
    let paired_cases: [(&str, &str, Generate, u32); 4] = [
        ("mixed", "mixed", generate_mixed, opts.workers),
        (
            "small",
            "small (10,000 x 4 KiB)",
            |d, _| generate_small(d),
            opts.workers,
        ),
        (
            "large",
            "large (one file)",
            |d, mib| generate_one(d, mib << 20, 11),
            opts.workers,
        ),
        ("one-worker", "mixed, one rsync process", generate_mixed, 1),
    ];
    for (case, title, generate, workers) in paired_cases {
        if !cases.contains(&case) {
            continue;
        }
        remove(&src)?;
        generate(&src, opts.mib)?;
        let r = paired(&direct, title, &src, dest.path(), opts.rounds, workers).await?;
        summary.push((case, median(&r), worst(&r)));
    }
    let mut hop = None;
    if cases.contains(&"hop") {
        remove(&src)?;
        generate_one(&src, 4 << 20, 13)?;
        println!(
            "\n== hop: one 4 MiB file, Ferry on its kept master, plain rsync with its own login"
        );
        let (mut plain, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..opts.rounds.max(3) * 2 {
            ours.push(
                direct
                    .ferry(&src, &dest.path().join("dst-ferry"), 1)
                    .await?
                    .seconds,
            );
            plain.push(
                direct
                    .plain(&src, &dest.path().join("dst-plain"))
                    .await?
                    .seconds,
            );
        }
        let (p, f) = (median(&plain), median(&ours));
        let slowest = ours.iter().copied().fold(0.0, f64::max);
        // Each remote command starts the account's shell on the other host (its rc files
        // included); a hop runs two (the receiver and rsync's server).
        let mut shell = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            direct.session.run("true", &[]).await?;
            shell.push(t.elapsed().as_secs_f64());
        }
        println!(
            "  hop: Ferry verified median {f:.3} s, slowest {slowest:.3} s (goal <= {HOP_GOAL_S} s: {}); plain rsync -a median {p:.3} s; one remote command through the master {:.3} s",
            verdict(f <= HOP_GOAL_S),
            median(&shell)
        );
        hop = Some(f);
    }
    let mut delay = None;
    if cases.contains(&"delay") {
        let link = Proxy::start(sshd.port, Duration::from_millis(opts.delay_ms)).await;
        let host_pub = std::fs::read_to_string(sshd.path("host_key.pub"))?;
        let known = sshd.path("known_hosts_delay");
        std::fs::write(&known, format!("[127.0.0.1]:{} {host_pub}", link.port))?;
        let mut t = target.clone();
        t.port = link.port;
        t.known_hosts = known.clone();
        let slow = Link {
            session: SshSession::connect(&t, &sshd.path("ctl-delay")).await?,
            ssh_e: ssh_e(link.port, &known),
            target: t,
            ferry: &ferry,
        };
        remove(&src)?;
        generate_mixed(&src, opts.delay_mib)?;
        let (bytes, files) = tree_bytes(&src);
        println!(
            "\n== delay: {:.0} MiB in {files} files through a link with {} ms each way, {} rounds",
            bytes as f64 / (1u64 << 20) as f64,
            opts.delay_ms,
            opts.rounds
        );
        let (mut one, mut many) = (Vec::new(), Vec::new());
        for round in 1..=opts.rounds {
            let p = slow
                .plain(&src, &dest.path().join("dst-plain"))
                .await?
                .seconds;
            let f1 = slow
                .ferry(&src, &dest.path().join("dst-ferry"), 1)
                .await?
                .seconds;
            let fn_ = slow
                .ferry(&src, &dest.path().join("dst-ferry"), opts.workers)
                .await?
                .seconds;
            println!(
                "  round {round}: plain rsync -a {p:.2} s, Ferry 1 worker {f1:.2} s ({:.2}x), Ferry {} workers {fn_:.2} s ({:.2}x)",
                p / f1,
                opts.workers,
                p / fn_
            );
            one.push(p / f1);
            many.push(p / fn_);
        }
        let m = median(&many);
        println!(
            "  delay: paired ratio Ferry / plain: 1 worker median {:.2}x; {} workers median {m:.2}x, worst {:.2}x (goal >= {DELAY_GOAL}: {})",
            median(&one),
            opts.workers,
            worst(&many),
            verdict(m >= DELAY_GOAL)
        );
        delay = Some(m);
        slow.session.close().await;
    }
    direct.session.close().await;

    println!(
        "\ntransfer benchmark, loopback SSH, SIMD {}, BLAKE3 kernel {}, blake3 {b1:.2} GB/s per core:",
        simd_level(),
        ferry_transfer::manifest::blake3_kernel()
    );
    for (name, m, w) in &summary {
        if *name == "one-worker" {
            println!("  mixed, one rsync process: paired ratio median {m:.3}x, worst {w:.3}x");
            continue;
        }
        println!(
            "  {name:<6} paired ratio median {m:.3}x ({}), worst {w:.3}x ({})",
            verdict(*m >= MEDIAN_GOAL),
            verdict(*w >= WORST_GOAL)
        );
    }
    if let Some(h) = hop {
        println!(
            "  hop    4 MiB verified in {h:.3} s ({})",
            verdict(h <= HOP_GOAL_S)
        );
    }
    if let Some(d) = delay {
        println!(
            "  delay  {} workers {d:.2}x plain rsync ({})",
            opts.workers,
            verdict(d >= DELAY_GOAL)
        );
    }
    Ok(())
}

/// CPU seconds all cores have been busy since boot (`/proc/stat`, in clock ticks of 1/100 s).
fn busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (ticks.iter().sum::<f64>() - idle) / 100.0
}
