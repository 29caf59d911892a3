//! Podman's Docker-compatible service on a private socket, with a busybox image built
//! locally (no registry can be reached), for DOCKER jobs in tests and `cargo xtask e2e`.
//!
//! Podman 4.3 from Debian needs the `containers.conf` below to run containers here (crun
//! cannot raise the rlimits; the cgroup layout needs runc with cgroupfs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The image every DOCKER test node runs.
pub const TEST_IMAGE: &str = "localhost/ferry-test/busybox:1";

const CONTAINERS_CONF: &str = "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n";

pub struct Podman {
    child: Child,
    pub socket: PathBuf,
    pub conf: PathBuf,
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Podman {
    /// `docker_host` for an agent's config.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs `podman ARGS` with this service's configuration.
    pub fn command(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .output()
    }
}

pub fn installed() -> bool {
    Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds `TEST_IMAGE` from the host's static busybox and starts the service under `dir`.
pub fn start(dir: &Path) -> Result<Podman, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let conf = dir.join("containers.conf");
    std::fs::write(&conf, CONTAINERS_CONF).map_err(|e| e.to_string())?;
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(|e| format!("/bin/busybox (package busybox-static) is needed: {e}"))?;
    for tool in [
        "sh", "cat", "tr", "wc", "sort", "ls", "echo", "head", "sed", "cut", "sleep",
    ] {
        let link = bin.join(tool);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(|e| e.to_string())?;
        }
    }
    let import = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -c . | podman import - {TEST_IMAGE}",
            rootfs.display()
        ))
        .env("CONTAINERS_CONF", &conf)
        .output()
        .map_err(|e| format!("podman import: {e}"))?;
    if !import.status.success() {
        return Err(format!(
            "podman import failed: {}",
            String::from_utf8_lossy(&import.stderr)
        ));
    }
    let socket = dir.join("podman.sock");
    let child = Command::new("podman")
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .env("CONTAINERS_CONF", &conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("podman system service: {e}"))?;
    let podman = Podman {
        child,
        socket,
        conf,
    };
    for _ in 0..150 {
        if podman.socket.exists() {
            return Ok(podman);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "the podman service did not open {}",
        podman.socket.display()
    ))
}
