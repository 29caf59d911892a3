//! `cargo xtask bench transfer`: about 2 GiB of mixed files over loopback SSH (a private
//! sshd), moved by Ferry (manifest, rsync over the session's master, verification on the
//! other side) and by plain `rsync -a` over the same sshd, alternately in one run. Prints
//! the goodput of each, their ratio, and the hashing speed per core.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use ferry_e2e::sshd::Sshd;
use ferry_transfer::manifest::HashAlgorithm;
use ferry_transfer::rsync::{Direction, RsyncOptions};
use ferry_transfer::ssh::SshSession;
use ferry_transfer::transfer::{self, ChunkUpdate, TransferEvents, TransferProgress, TransferSpec};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Approximate data size in MiB.
    #[arg(long, default_value_t = 2048)]
    mib: u64,
    /// Rounds of (plain rsync, Ferry); the best of each is compared.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// rsync processes Ferry runs in parallel (transfer.parallel_workers).
    #[arg(long, default_value_t = 1)]
    workers: u32,
}

const TARGET_RATIO: f64 = 0.95;

struct Quiet;

impl TransferEvents for Quiet {
    fn chunks(&mut self, _: &[ChunkUpdate]) {}
    fn progress(&mut self, _: &TransferProgress) {}
    fn log(&mut self, _: &str) {}
}

/// Mixed files: one large random file, medium random files, and many small text files.
fn generate(dir: &Path, mib: u64) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir.join("text"))?;
    let mut total = 0u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.extend_from_slice(&state.to_le_bytes());
        }
        v.truncate(n);
        v
    };
    let big = (mib / 2) * 1024 * 1024;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.join("big.bin"))?;
        let mut left = big;
        while left > 0 {
            let n = left.min(8 << 20);
            f.write_all(&random(n as usize))?;
            left -= n;
        }
    }
    total += big;
    let medium_count = (mib * 3 / 8) / 8;
    for i in 0..medium_count {
        std::fs::write(dir.join(format!("part-{i:04}.bin")), random(8 << 20))?;
        total += 8 << 20;
    }
    let small_bytes = (mib * 1024 * 1024).saturating_sub(total);
    let small_count = (small_bytes / (64 * 1024)).max(1);
    for i in 0..small_count {
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
        total += (64 * 1024 / line.len() * line.len()) as u64;
    }
    Ok(total)
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::ensure_system_packages()?;
    crate::cargo(&["build", "--release", "-p", "ferry-cli"])?;
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

async fn bench(opts: Options, ferry: PathBuf) -> anyhow::Result<()> {
    let sshd = Sshd::start();
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    println!("generating about {} MiB of mixed files...", opts.mib);
    let bytes = generate(&src, opts.mib)?;
    let files = walk_count(&src);
    let gib = bytes as f64 / (1u64 << 30) as f64;

    // Hashing speed: one thread, warm cache, the release CLI.
    let _ = Command::new(&ferry)
        .args(["manifest", "build"])
        .arg(&src)
        .output()?; // warm the cache
    let hash_speed = |algorithm: &str| -> anyhow::Result<f64> {
        let t = Instant::now();
        let out = Command::new(&ferry)
            .args([
                "manifest",
                "build",
                "--threads",
                "1",
                "--algorithm",
                algorithm,
            ])
            .arg(&src)
            .output()?;
        if !out.status.success() {
            bail!(
                "ferry manifest build failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e9)
    };
    let blake3_gbps = hash_speed("blake3")?;
    let sha256_gbps = hash_speed("sha256")?;
    std::fs::remove_file(src.join(ferry_transfer::MANIFEST_NAME))?;

    let target = sshd.target();
    let ssh_e = format!(
        "ssh -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes -p {}",
        sshd.path("user_key").display(),
        sshd.path("known_hosts").display(),
        sshd.port
    );
    let session = SshSession::connect(&target, &sshd.path("ctl")).await?;
    let mut plain_runs = Vec::new();
    let mut ferry_runs = Vec::new();
    for round in 1..=opts.rounds {
        // Alternate who goes first, so neither side always follows the other.
        let order = if round % 2 == 0 {
            ["ferry", "plain"]
        } else {
            ["plain", "ferry"]
        };
        for which in order {
            // Start each run with no dirty pages of the previous one still being written.
            Command::new("sync").status()?;
            if which == "plain" {
                let dst = work.path().join("dst-plain");
                remove(&dst)?;
                let t = Instant::now();
                let status = Command::new("rsync")
                    .arg("-a")
                    .arg("-e")
                    .arg(&ssh_e)
                    .arg(format!("{}/", src.display()))
                    .arg(format!("{}:{}/", target.destination(), dst.display()))
                    .status()?;
                if !status.success() {
                    bail!("plain rsync failed: {status}");
                }
                plain_runs.push(t.elapsed().as_secs_f64());
                remove(&dst)?;
            } else {
                let dst = work.path().join("dst-ferry");
                remove(&dst)?;
                let spec = TransferSpec {
                    direction: Direction::Push,
                    local: src.clone(),
                    remote: dst.display().to_string(),
                    chunk_size: 100 << 20,
                    algorithm: HashAlgorithm::Blake3,
                    rsync: RsyncOptions::default(),
                    max_chunk_retries: 10,
                    remote_ferry: ferry.display().to_string(),
                    parallel_workers: opts.workers,
                };
                let t = Instant::now();
                let outcome = transfer::run(&session, &spec, &mut Quiet).await?;
                ferry_runs.push(t.elapsed().as_secs_f64());
                if outcome.chunks_resent != 0 {
                    bail!("unexpected re-sends: {outcome:?}");
                }
                remove(&dst)?;
                let _ = std::fs::remove_file(src.join(ferry_transfer::MANIFEST_NAME));
            }
        }
        let (p, f) = (plain_runs[round - 1], ferry_runs[round - 1]);
        println!(
            "round {round}: plain rsync -a {p:.2} s ({:.0} MB/s), Ferry verified {f:.2} s ({:.0} MB/s)",
            bytes as f64 / p / 1e6,
            bytes as f64 / f / 1e6
        );
    }
    session.close().await;
    let best = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (best_plain, best_ferry) = (best(&plain_runs), best(&ferry_runs));
    let ratio = best_plain / best_ferry;
    let median_ratio = median(&plain_runs) / median(&ferry_runs);
    println!();
    println!(
        "transfer benchmark ({gib:.2} GiB in {files} files, loopback SSH, same sshd, {} rounds)",
        opts.rounds
    );
    println!(
        "  plain rsync -a:            best {:.0} MB/s",
        bytes as f64 / best_plain / 1e6
    );
    println!(
        "  Ferry (blake3 verified, {} worker{}): best {:.0} MB/s",
        opts.workers,
        if opts.workers == 1 { "" } else { "s" },
        bytes as f64 / best_ferry / 1e6
    );
    println!(
        "  goodput ratio Ferry / plain: best {ratio:.3}x, median {median_ratio:.3}x (target >= {TARGET_RATIO})"
    );
    println!(
        "  hashing, one thread: blake3 {blake3_gbps:.2} GB/s, sha256 {sha256_gbps:.2} GB/s per core"
    );
    Ok(())
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk_count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
