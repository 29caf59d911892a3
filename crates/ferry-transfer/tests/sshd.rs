//! The transport against a real sshd: a private server on a loopback port with freshly
//! generated host and user keys (Debian's openssh-server; `.ci/run` installs it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::ErrorClass;
use ferry_transfer::TransferError;
use ferry_transfer::manifest::{HashAlgorithm, MANIFEST_NAME, Manifest};
use ferry_transfer::rsync::{self, Direction, RsyncOptions};
use ferry_transfer::ssh::{HostKeyPolicy, SshSession, SshTarget};

struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Sshd {
    fn start() -> Sshd {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "sshd is not installed: install Debian's openssh-server and rsync (.ci/run does)",
            );
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("user_key"));
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/host_key\nPidFile {0}/sshd.pid\nAuthorizedKeysFile {0}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nLogLevel ERROR\n",
            d.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("config");
        // sshd running as root wants its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(d.join("sshd.log")).expect("log"),
            ))
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .expect("known_hosts");
        Sshd { dir, port, child }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn target(&self) -> SshTarget {
        let mut t = SshTarget::new(
            "127.0.0.1",
            self.port,
            &whoami(),
            &self.path("user_key"),
            &self.path("known_hosts"),
        );
        t.connect_attempts = 2;
        t.connect_backoff = Duration::from_millis(50);
        t
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    target.key_path = sshd.path("other_key");
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
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");

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
