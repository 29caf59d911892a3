//! The transport against a real sshd: a private server on a loopback port with freshly
//! generated host and user keys (Debian's openssh-server; `.ci/run` installs it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_core::ErrorClass;
use ferry_e2e::sshd::{Sshd, keygen};
use ferry_transfer::TransferError;
use ferry_transfer::manifest::{HashAlgorithm, MANIFEST_NAME, Manifest};
use ferry_transfer::rsync::{self, Direction, RsyncOptions};
use ferry_transfer::ssh::{HostKeyPolicy, SshSession};

fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root.join("train/nested")).expect("mkdir");
    for i in 0..40 {
        std::fs::write(
            root.join(format!("train/nested/small-{i:02}.txt")),
            format!("row {i}\n").repeat(i + 1),
        )
        .expect("write");
    }
    // 3.5 chunks of 1 MiB, with content that differs chunk to chunk.
    let big: Vec<u8> = (0..(3 * 1024 * 1024 + 512 * 1024) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("train/part-000.bin"), big).expect("write");
    std::fs::write(root.join("empty.txt"), b"").expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_pushes_and_pulls_over_one_session_and_verifies() {
    let sshd = Sshd::start();
    let src = tempfile::tempdir().expect("tmp");
    sample_tree(src.path());
    let manifest = Manifest::build(src.path(), 1 << 20, HashAlgorithm::Blake3).expect("manifest");
    assert_eq!(manifest.files.len(), 42);
    assert_eq!(manifest.chunks().count(), 40 + 4);
    manifest
        .save(&src.path().join(MANIFEST_NAME))
        .expect("save");

    let session = SshSession::connect(&sshd.target(), &sshd.path("ctl"))
        .await
        .expect("connect");
    let out = session
        .run("echo", &["hello"])
        .await
        .expect("remote command");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");

    let remote = tempfile::tempdir().expect("tmp");
    let mut updates = 0;
    let stats = rsync::transfer(
        &session,
        Direction::Push,
        src.path(),
        &remote.path().display().to_string(),
        &RsyncOptions::default(),
        |_| updates += 1,
    )
    .await
    .expect("push");
    assert!(stats.literal_bytes >= manifest.total_bytes(), "{stats:?}");
    assert!(updates > 0, "progress was reported");
    let arrived = Manifest::load(&remote.path().join(MANIFEST_NAME), remote.path())
        .expect("manifest arrived");
    let report = arrived.verify(remote.path()).expect("verify");
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.verified.len(), 44);

    // A second push sends no file data: everything is already there.
    let again = rsync::transfer(
        &session,
        Direction::Push,
        src.path(),
        &remote.path().display().to_string(),
        &RsyncOptions {
            compress: true,
            ..Default::default()
        },
        |_| {},
    )
    .await
    .expect("push again");
    assert_eq!(again.literal_bytes, 0, "{again:?}");

    let back = tempfile::tempdir().expect("tmp");
    rsync::transfer(
        &session,
        Direction::Pull,
        back.path(),
        &remote.path().display().to_string(),
        &RsyncOptions::default(),
        |_| {},
    )
    .await
    .expect("pull");
    assert!(manifest.verify(back.path()).expect("verify").is_complete());
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_a_permanent_authentication_error_naming_host_and_key() {
    let sshd = Sshd::start();
    keygen(&sshd.path("other_key"));
    let mut target = sshd.target();
    target.keys = vec![sshd.path("other_key")];
    let err = SshSession::connect(&target, &sshd.path("ctl"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, TransferError::Auth { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("127.0.0.1:{}", sshd.port)) && msg.contains("other_key"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_tried_in_order_so_a_rotation_needs_no_downtime() {
    let sshd = Sshd::start();
    // The server knows only `user_key`; the old key comes first, as during a rotation.
    keygen(&sshd.path("retired_key"));
    let mut target = sshd.target();
    target.keys = vec![sshd.path("retired_key"), sshd.path("user_key")];
    let session = SshSession::connect(&target, &sshd.path("ctl"))
        .await
        .expect("the second key authenticates");
    let src = tempfile::tempdir().expect("tmp");
    sample_tree(src.path());
    let dst = tempfile::tempdir().expect("tmp");
    let out = transfer::run(
        &session,
        &spec(Direction::Push, src.path(), dst.path()),
        &mut Recorder::default(),
    )
    .await
    .expect("transfer through the rotated key");
    assert_eq!((out.files, out.chunks, out.chunks_resent), (42, 44, 0));
    session.close().await;

    // rsync's own ssh, should the master be gone, holds to the same keys and known_hosts.
    let session = SshSession::connect(&target, &sshd.path("ctl"))
        .await
        .expect("connect");
    let e = session.ssh_command();
    let retired = sshd.path("retired_key").display().to_string();
    let current = sshd.path("user_key").display().to_string();
    let (r, c) = (
        e.find(&format!("-i {retired}"))
            .expect("retired key offered"),
        e.find(&format!("-i {current}"))
            .expect("current key offered"),
    );
    assert!(r < c, "in order: {e}");
    assert!(
        e.contains("IdentitiesOnly=yes") && e.contains("StrictHostKeyChecking=yes"),
        "{e}"
    );
    // Stop the master: rsync's ssh then connects by itself, with the same keys...
    let stopped = Command::new("ssh")
        .arg("-S")
        .arg(session.control_socket())
        .args(["-O", "exit", "none"])
        .output()
        .expect("ssh -O exit");
    assert!(stopped.status.success(), "{stopped:?}");
    let small = tempfile::tempdir().expect("tmp");
    std::fs::write(small.path().join("f"), b"data").expect("write");
    let again = tempfile::tempdir().expect("tmp");
    let remote = again.path().display().to_string();
    rsync::transfer(
        &session,
        Direction::Push,
        small.path(),
        &remote,
        &RsyncOptions::default(),
        |_| {},
    )
    .await
    .expect("rsync without the master");
    assert_eq!(
        std::fs::read(again.path().join("f")).expect("arrived"),
        b"data"
    );
    // ...and the same pinned known_hosts: a host it does not list is refused.
    let pinned = std::fs::read_to_string(sshd.path("known_hosts")).expect("known_hosts");
    std::fs::write(sshd.path("known_hosts"), "").expect("forget the host");
    let err = rsync::transfer(
        &session,
        Direction::Push,
        small.path(),
        &remote,
        &RsyncOptions::default(),
        |_| {},
    )
    .await
    .expect_err("unknown host refused");
    assert!(
        err.to_string().contains("Host key verification failed"),
        "{err}"
    );
    session.close().await;
    std::fs::write(sshd.path("known_hosts"), pinned).expect("known_hosts");

    // Neither key accepted: the error names both, in order.
    keygen(&sshd.path("stranger_key"));
    target.keys = vec![sshd.path("retired_key"), sshd.path("stranger_key")];
    let err = SshSession::connect(&target, &sshd.path("ctl"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, TransferError::Auth { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "keys {retired}, {}",
            sshd.path("stranger_key").display()
        )),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_others_can_read_is_refused_before_connecting() {
    use std::os::unix::fs::PermissionsExt;
    let sshd = Sshd::start();
    let key = sshd.path("user_key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = SshSession::connect(&sshd.target(), &sshd.path("ctl"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, TransferError::KeyFile { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(
        err.to_string(),
        format!(
            "SSH private key {0}: has mode 0644: a secret must not be accessible by group or others; run `chmod 600 {0}`",
            key.display()
        )
    );
    // Even as the second key, after one that works: every key is checked.
    let mut target = sshd.target();
    keygen(&sshd.path("new_key"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(sshd.path("new_key"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    target.keys.push(sshd.path("new_key"));
    let err = SshSession::connect(&target, &sshd.path("ctl"))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("new_key: has mode 0640"), "{err}");
    // A missing key is named too.
    target.keys = vec![sshd.path("no_such_key")];
    let err = SshSession::connect(&target, &sshd.path("ctl"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, TransferError::KeyFile { .. }), "{err}");
    assert!(
        err.to_string().ends_with("no_such_key: does not exist"),
        "{err}"
    );
    // No session was attempted: nothing in the control directory.
    let leftovers = std::fs::read_dir(sshd.path("ctl"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftovers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_a_permanent_error() {
    let sshd = Sshd::start();
    keygen(&sshd.path("impostor"));
    let impostor = std::fs::read_to_string(sshd.path("impostor.pub")).expect("key");
    std::fs::write(
        sshd.path("known_hosts"),
        format!("[127.0.0.1]:{} {impostor}", sshd.port),
    )
    .expect("known_hosts");
    let err = SshSession::connect(&sshd.target(), &sshd.path("ctl"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, TransferError::HostKey { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_needs_accept_new() {
    let sshd = Sshd::start();
    std::fs::write(sshd.path("known_hosts"), "").expect("empty known_hosts");
    let err = SshSession::connect(&sshd.target(), &sshd.path("ctl"))
        .await
        .err()
        .expect("strict refuses");
    assert!(matches!(err, TransferError::UnknownHostKey { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(
        err.to_string().contains("accept_new_host_keys")
            && err
                .to_string()
                .contains(&sshd.path("known_hosts").display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(sshd.path("known_hosts")).expect("read"),
        "",
        "strict checking records nothing"
    );

    let mut target = sshd.target();
    target.host_key_policy = HostKeyPolicy::AcceptNew;
    let session = SshSession::connect(&target, &sshd.path("ctl2"))
        .await
        .expect("accept-new connects");
    session.close().await;
    let known = std::fs::read_to_string(sshd.path("known_hosts")).expect("read");
    // The entry's host part may be hashed (HashKnownHosts); its key is the server's.
    let host_pub = std::fs::read_to_string(sshd.path("host_key.pub")).expect("host key");
    let key = host_pub.split_whitespace().nth(1).expect("key field");
    assert!(known.contains(key), "first contact recorded: {known}");
    // From now on strict checking passes.
    SshSession::connect(&sshd.target(), &sshd.path("ctl3"))
        .await
        .expect("strict now connects")
        .close()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_transient_after_the_retries() {
    let sshd = Sshd::start();
    let mut target = sshd.target();
    target.port = TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let err = SshSession::connect(&target, &sshd.path("ctl"))
        .await
        .err()
        .expect("nothing listens");
    assert!(matches!(err, TransferError::Connect { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Transient);
}

// ---- verified transfers ------------------------------------------------------------------

use ferry_transfer::transfer::{
    self, ChunkStatus, ChunkUpdate, TransferEvents, TransferProgress, TransferSpec,
};

const MIB: u64 = 1024 * 1024;

/// The `ferry` CLI the other end runs to build and verify manifests.
fn ferry_cli() -> String {
    ferry_e2e::bin("ferry").display().to_string()
}

#[derive(Default)]
struct Recorder {
    chunks: Vec<ChunkUpdate>,
    progress: Vec<TransferProgress>,
    logs: Vec<String>,
}

impl TransferEvents for Recorder {
    fn chunks(&mut self, updates: &[ChunkUpdate]) {
        self.chunks.extend_from_slice(updates);
    }
    fn progress(&mut self, p: &TransferProgress) {
        self.progress.push(p.clone());
    }
    fn log(&mut self, m: &str) {
        self.logs.push(m.to_owned());
    }
}

impl Recorder {
    fn last_status(&self, id: &str) -> Option<ChunkStatus> {
        self.chunks
            .iter()
            .rev()
            .find(|u| u.chunk.id() == id)
            .map(|u| u.status)
    }
}

fn spec(direction: Direction, local: &Path, remote: &Path) -> TransferSpec {
    TransferSpec {
        direction,
        local: local.to_owned(),
        remote: remote.display().to_string(),
        chunk_size: MIB,
        algorithm: HashAlgorithm::Blake3,
        rsync: RsyncOptions::default(),
        max_chunk_retries: 3,
        remote_ferry: ferry_cli(),
        parallel_workers: 1,
        bytes_per_worker: transfer::BYTES_PER_WORKER,
        io_timeout: Duration::from_secs(30),
    }
}

/// Flips one byte and keeps the file's mtime, so only checksums can notice (bit rot).
fn flip_byte_keep_mtime(file: &Path, at: usize) {
    let mtime = std::fs::metadata(file)
        .and_then(|m| m.modified())
        .expect("mtime");
    let mut bytes = std::fs::read(file).expect("read");
    bytes[at] ^= 0x5a;
    std::fs::write(file, &bytes).expect("write");
    std::fs::File::options()
        .write(true)
        .open(file)
        .and_then(|f| f.set_modified(mtime))
        .expect("restore mtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_verifies_every_chunk_and_a_damaged_chunk_is_resent_alone() {
    let sshd = Sshd::start();
    let src = tempfile::tempdir().expect("tmp");
    sample_tree(src.path());
    let dst = tempfile::tempdir().expect("tmp");
    let session = SshSession::connect(&sshd.target(), &sshd.path("ctl"))
        .await
        .expect("connect");
    let s = spec(Direction::Push, src.path(), dst.path());

    let mut rec = Recorder::default();
    let out = transfer::run(&session, &s, &mut rec)
        .await
        .expect("transfer");
    assert_eq!((out.files, out.chunks, out.chunks_resent), (42, 44, 0));
    assert!(
        rec.chunks
            .iter()
            .filter(|u| u.status == ChunkStatus::Completed)
            .count()
            == 44
    );
    assert_eq!(rec.progress.last().map(|p| p.phase), Some("verified"));
    // The destination said the digest of what landed, and it matched: no manifest had to
    // travel for a chunk-by-chunk check.
    let chunk_by_chunk = |rec: &Recorder| {
        rec.logs
            .iter()
            .any(|l| l.contains("verifying chunk by chunk"))
    };
    assert!(!chunk_by_chunk(&rec), "{:?}", rec.logs);
    let here = Manifest::load(&src.path().join(MANIFEST_NAME), src.path()).expect("manifest");
    let there = Manifest::load(&dst.path().join(MANIFEST_NAME), dst.path()).expect("manifest");
    assert_eq!(there.without_stats(), here.without_stats());
    assert!(
        there.files.iter().all(|f| f.stat.is_some()),
        "local identities kept"
    );

    // Silent corruption in chunk 2 of the big file: rsync's quick check cannot see it.
    flip_byte_keep_mtime(
        &dst.path().join("train/part-000.bin"),
        (2 * MIB + 100) as usize,
    );
    let mut rec = Recorder::default();
    let out = transfer::run(&session, &s, &mut rec).await.expect("repair");
    assert!(
        rec.logs
            .iter()
            .any(|l| l.contains("the destination's files differ from this manifest")),
        "{:?}",
        rec.logs
    );
    assert_eq!(out.chunks_resent, 1, "only the damaged chunk is re-sent");
    assert_eq!(
        out.rsync.literal_bytes, 0,
        "rsync itself sent no file data: {:?}",
        out.rsync
    );
    let failed: Vec<String> = rec
        .chunks
        .iter()
        .filter(|u| u.status == ChunkStatus::Failed)
        .map(|u| u.chunk.id())
        .collect();
    assert_eq!(failed, ["train/part-000.bin#2"]);
    assert_eq!(
        rec.last_status("train/part-000.bin#2"),
        Some(ChunkStatus::Completed)
    );
    let m = Manifest::load(&src.path().join(MANIFEST_NAME), src.path()).expect("manifest");
    assert!(m.verify(dst.path()).expect("verify").is_complete());

    // A file at the destination that the source does not have: the digests differ, the
    // chunk-by-chunk check finds every source chunk there, and the extra file stays.
    std::fs::write(dst.path().join("left-over.txt"), b"from before").expect("write");
    let mut rec = Recorder::default();
    let out = transfer::run(&session, &s, &mut rec).await.expect("extra");
    assert!(chunk_by_chunk(&rec), "{:?}", rec.logs);
    assert_eq!((out.chunks, out.chunks_resent), (44, 0));
    assert!(dst.path().join("left-over.txt").exists());
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_killed_mid_file_resumes_without_resending_what_arrived() {
    let sshd = Sshd::start();
    let src = tempfile::tempdir().expect("tmp");
    let size = 8 * MIB as usize;
    let data: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    std::fs::write(src.path().join("big.bin"), &data).expect("write");
    let dst = tempfile::tempdir().expect("tmp");
    let session = SshSession::connect(&sshd.target(), &sshd.path("ctl"))
        .await
        .expect("connect");
    let mut slow = spec(Direction::Push, src.path(), dst.path());
    slow.rsync.bandwidth_limit = "2000".into(); // KiB/s: about four seconds for 8 MiB

    // Start, let part of the file arrive, then kill the transfer (rsync with it).
    let partial = dst.path().join(transfer::PARTIAL_DIR).join("big.bin");
    let handle = {
        let s = slow.clone();
        let target = sshd.target();
        let ctl = sshd.path("ctl-slow");
        tokio::spawn(async move {
            let session = SshSession::connect(&target, &ctl).await.expect("connect");
            transfer::run(&session, &s, &mut Recorder::default()).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // rsync writes into a temp file in the destination dir and moves it into the
        // partial dir when killed; wait until a few MiB are on their way.
        let in_flight: u64 = std::fs::read_dir(dst.path())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".big.bin"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if in_flight >= 3 * MIB {
            break;
        }
        assert!(Instant::now() < deadline, "the transfer made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.abort();
    let _ = handle.await;
    // rsync, killed, keeps what it had in the partial dir (give it a moment to move it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !partial.exists() {
        assert!(Instant::now() < deadline, "no partial file kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = std::fs::metadata(&partial).expect("partial").len();
    assert!((2 * MIB..8 * MIB).contains(&kept), "kept {kept} bytes");
    assert!(
        !dst.path().join("big.bin").exists(),
        "a partial file never sits under its final name"
    );

    let fast = spec(Direction::Push, src.path(), dst.path());
    let mut rec = Recorder::default();
    let out = transfer::run(&session, &fast, &mut rec)
        .await
        .expect("resume");
    let remaining = 8 * MIB - kept;
    assert!(
        out.rsync.literal_bytes <= remaining + MIB,
        "re-sent {} bytes; {remaining} were missing (+ at most one chunk allowed)",
        out.rsync.literal_bytes
    );
    assert_eq!(
        std::fs::read(dst.path().join("big.bin")).expect("arrived"),
        data
    );
    assert!(
        !dst.path()
            .join(transfer::PARTIAL_DIR)
            .join("big.bin")
            .exists()
    );
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_destination_is_a_disk_full_error_with_needed_and_free() {
    if Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() != "0")
        .unwrap_or(true)
    {
        eprintln!("not root: cannot mount a small tmpfs; the disk-full case is skipped");
        return;
    }
    let sshd = Sshd::start();
    let src = tempfile::tempdir().expect("tmp");
    sample_tree(src.path()); // about 3.5 MiB
    let small = tempfile::tempdir().expect("tmp");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(small.path())
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount a 2 MiB tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(small.path().to_owned());
    let session = SshSession::connect(&sshd.target(), &sshd.path("ctl"))
        .await
        .expect("connect");
    let mut rec = Recorder::default();
    let err = transfer::run(
        &session,
        &spec(Direction::Push, src.path(), small.path()),
        &mut rec,
    )
    .await
    .expect_err("does not fit");
    assert!(matches!(err, TransferError::DiskFull { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Transient);
    let msg = err.to_string();
    assert!(
        msg.contains("bytes needed") && msg.contains("free"),
        "{msg}"
    );
    let TransferError::DiskFull { needed, free, .. } = err else {
        unreachable!()
    };
    assert!(
        needed > free && needed > 3 * MIB,
        "needed {needed}, free {free}"
    );
    assert!(
        rec.chunks
            .iter()
            .all(|u| u.status != ChunkStatus::Completed),
        "nothing is reported complete"
    );
    let leftovers: Vec<_> = std::fs::read_dir(small.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "no partial files left: {leftovers:?}");
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_repairs_a_damaged_local_chunk_and_missing_sources_are_named() {
    let sshd = Sshd::start();
    let remote = tempfile::tempdir().expect("tmp");
    sample_tree(remote.path());
    let local = tempfile::tempdir().expect("tmp");
    let session = SshSession::connect(&sshd.target(), &sshd.path("ctl"))
        .await
        .expect("connect");
    let s = spec(Direction::Pull, local.path(), remote.path());
    transfer::run(&session, &s, &mut Recorder::default())
        .await
        .expect("pull");
    flip_byte_keep_mtime(&local.path().join("train/part-000.bin"), 10);
    let out = transfer::run(&session, &s, &mut Recorder::default())
        .await
        .expect("pull again");
    assert_eq!(out.chunks_resent, 1);
    assert_eq!(
        std::fs::read(local.path().join("train/part-000.bin")).expect("local"),
        std::fs::read(remote.path().join("train/part-000.bin")).expect("remote")
    );

    let gone = spec(
        Direction::Pull,
        local.path(),
        Path::new("/nonexistent/export"),
    );
    let err = transfer::run(&session, &gone, &mut Recorder::default())
        .await
        .expect_err("missing remote source");
    assert_eq!(err.to_string(), "source /nonexistent/export does not exist");
    assert_eq!(err.class(), ErrorClass::Permanent);
    let gone = spec(
        Direction::Push,
        Path::new("/nonexistent/staging"),
        remote.path(),
    );
    let err = transfer::run(&session, &gone, &mut Recorder::default())
        .await
        .expect_err("missing local source");
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_workers_split_the_files_and_the_result_verifies() {
    let sshd = Sshd::start();
    let src = tempfile::tempdir().expect("tmp");
    sample_tree(src.path());
    let dst = tempfile::tempdir().expect("tmp");
    let session = SshSession::connect(&sshd.target(), &sshd.path("ctl"))
        .await
        .expect("connect");
    let mut s = spec(Direction::Push, src.path(), dst.path());
    s.parallel_workers = 3;
    // A small tree, split all the same.
    s.bytes_per_worker = 1;
    let mut rec = Recorder::default();
    let out = transfer::run(&session, &s, &mut rec)
        .await
        .expect("transfer");
    assert_eq!((out.files, out.chunks, out.chunks_resent), (42, 44, 0));
    // 42 data files, each through exactly one worker (the manifest follows on its own).
    assert_eq!(
        out.rsync.files_transferred, 42,
        "every file went through exactly one worker: {:?}",
        out.rsync
    );
    let m = Manifest::load(&dst.path().join(MANIFEST_NAME), dst.path()).expect("manifest arrived");
    assert!(m.verify(dst.path()).expect("verify").is_complete());
    session.close().await;
}

use ferry_transfer::ssh::ssh_processes_under;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_link_was_cut_is_replaced_and_the_next_transfer_succeeds_on_its_first_retry()
{
    use ferry_e2e::proxy::Proxy;
    use ferry_transfer::pool::SessionPool;

    let sshd = Sshd::start();
    let link = Proxy::start(sshd.port, Duration::ZERO).await;
    // The same server seen through the link's port.
    let host_pub = std::fs::read_to_string(sshd.path("host_key.pub")).expect("host key");
    let known = sshd.path("known_hosts_link");
    std::fs::write(&known, format!("[127.0.0.1]:{} {host_pub}", link.port)).expect("write");
    let mut target = sshd.target();
    target.port = link.port;
    target.known_hosts = known;
    let masters = sshd.path("masters");
    let pool = SessionPool::new(&masters)
        .with_probe_timeout(Duration::from_secs(2))
        .with_trust_for(Duration::from_secs(1));

    let src = tempfile::tempdir().expect("tmp");
    sample_tree(src.path());
    let dst = tempfile::tempdir().expect("tmp");
    let m = Manifest::build(src.path(), MIB, HashAlgorithm::Blake3).expect("manifest");
    // What an agent does: an attempt, and on a failure that may be the master's, the
    // master is discarded and the step retried. Returns the attempts it took.
    let ship = |name: &'static str| {
        let (pool, target, src, dst, m) = (&pool, &target, src.path(), dst.path(), &m);
        async move {
            let mut s = spec(Direction::Push, src, &dst.join(name));
            s.io_timeout = Duration::from_secs(3);
            let mut attempts = 0;
            loop {
                attempts += 1;
                let attempt = async {
                    let session = pool.get(target).await?;
                    let out = transfer::run(&session, &s, &mut Recorder::default()).await;
                    drop(session);
                    if out.is_ok() {
                        pool.worked(target).await;
                    }
                    out
                };
                match tokio::time::timeout(Duration::from_secs(60), attempt).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        assert!(attempts < 2, "{name}: the retry failed too: {e}");
                        pool.discard(target).await;
                    }
                    Err(_) => panic!("{name}: attempt {attempts} hung on the dead master"),
                }
            }
            assert!(m.verify(&dst.join(name)).expect("verify").is_complete());
            attempts
        }
    };
    let socket = || async {
        let s = pool.get(&target).await.expect("live master");
        s.control_socket().to_owned()
    };

    assert_eq!(ship("first").await, 1);
    let first_master = ssh_processes_under(&masters);
    assert_eq!(first_master.len(), 1, "one master: {first_master:?}");
    let first_socket = socket().await;

    // The link dies under the live master (its process and socket stay, its TCP
    // connection carries nothing any more) right after it carried a transfer, so it is
    // handed out unprobed: the attempt gets no answer, fails, and the retry connects afresh.
    link.cut();
    let started = Instant::now();
    assert_eq!(ship("second").await, 2, "succeeds on its first retry");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let second_socket = socket().await;
    assert_ne!(
        second_socket, first_socket,
        "a new master, not the dead one"
    );

    // Cut again, and come back after the trust window: the probe finds the master dead
    // and the first attempt already goes through a new one.
    link.cut();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ship("third").await, 1, "the probe replaced the dead master");
    assert_ne!(socket().await, second_socket);

    // The dead masters were ended, not left behind.
    let after = ssh_processes_under(&masters);
    let described: Vec<String> = after
        .iter()
        .map(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(after.len(), 1, "only the newest master runs: {described:?}");
    assert!(
        !after.contains(&first_master[0]),
        "the dead master {} still runs",
        first_master[0]
    );

    pool.close_all().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ssh_processes_under(&masters).is_empty() {
        assert!(Instant::now() < deadline, "masters left after close_all");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_left_by_a_killed_agent_are_ended_at_the_next_start_and_idle_ones_exit() {
    use ferry_transfer::pool::{SessionPool, reap_masters};

    let sshd = Sshd::start();
    let masters = sshd.path("masters");
    // An agent that dies without closing its pool (SIGKILL): its master lives on.
    {
        let pool = SessionPool::new(&masters);
        let session = pool.get(&sshd.target()).await.expect("connect");
        session.run("true", &[]).await.expect("use");
        std::mem::forget(session);
        std::mem::forget(pool);
    }
    assert_eq!(ssh_processes_under(&masters).len(), 1);
    assert!(reap_masters(&masters).await >= 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ssh_processes_under(&masters).is_empty() {
        assert!(Instant::now() < deadline, "the leftover master still runs");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A master nobody uses exits by itself after the idle timeout.
    let mut target = sshd.target();
    target.idle_timeout = Duration::from_secs(1);
    let session = SshSession::connect(&target, &sshd.path("idle"))
        .await
        .expect("connect");
    let idle_dir = sshd.path("idle");
    assert_eq!(ssh_processes_under(&idle_dir).len(), 1);
    std::mem::forget(session);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ssh_processes_under(&idle_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "an idle master outlived its timeout"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
