//! SSH sessions with the `openssh` crate: key authentication only, strict host-key checking
//! against a known_hosts file (accept-new only when asked), keepalives, and connect retries
//! with exponential back-off. One multiplexed master per (host, port, user); every command
//! and rsync run goes through its control socket, so there is no second authentication.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ferry_core::ErrorClass;
use openssh::{KnownHosts, Session, SessionBuilder};
use tracing::{info, warn};

use crate::TransferError;

/// How an unknown host key is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// The host must already be in known_hosts (the default).
    Strict,
    /// First contact adds the host; a changed key is still refused.
    AcceptNew,
}

#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key_path: PathBuf,
    pub known_hosts: PathBuf,
    pub host_key_policy: HostKeyPolicy,
    pub keepalive: Duration,
    pub connect_timeout: Duration,
    /// Connection attempts before giving up (seed 000 §7.2: 5).
    pub connect_attempts: u32,
    /// First back-off between attempts (seed 000 §7.2: 2 s), doubled each time.
    pub connect_backoff: Duration,
}

impl SshTarget {
    pub fn new(
        host: &str,
        port: u16,
        user: &str,
        key_path: &Path,
        known_hosts: &Path,
    ) -> SshTarget {
        SshTarget {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            key_path: key_path.to_owned(),
            known_hosts: known_hosts.to_owned(),
            host_key_policy: HostKeyPolicy::Strict,
            keepalive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            connect_attempts: ferry_core::retry::SSH_CONNECT_MAX_RETRIES,
            connect_backoff: ferry_core::retry::SSH_CONNECT_BACKOFF,
        }
    }

    /// `user@host`, as rsync wants it.
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }
}

/// A live master connection.
pub struct SshSession {
    pub target: SshTarget,
    session: Session,
}

impl SshSession {
    /// Connects, retrying transient failures with exponential back-off; authentication and
    /// host-key failures are returned at once (retrying cannot fix them).
    pub async fn connect(
        target: &SshTarget,
        control_dir: &Path,
    ) -> Result<SshSession, TransferError> {
        let control_dir = &usable_control_dir(control_dir)?;
        let attempts = target.connect_attempts.max(1);
        let mut backoff = target.connect_backoff;
        let mut attempt = 1;
        loop {
            let mut b = SessionBuilder::default();
            b.user(target.user.clone())
                .port(target.port)
                .keyfile(&target.key_path)
                .known_hosts_check(match target.host_key_policy {
                    HostKeyPolicy::Strict => KnownHosts::Strict,
                    HostKeyPolicy::AcceptNew => KnownHosts::Add,
                })
                .user_known_hosts_file(&target.known_hosts)
                .server_alive_interval(target.keepalive)
                .connect_timeout(target.connect_timeout)
                .control_directory(control_dir);
            match b.connect(&target.host).await {
                Ok(session) => {
                    info!(host = %target.host, port = target.port, user = %target.user, "ssh session open");
                    return Ok(SshSession {
                        target: target.clone(),
                        session,
                    });
                }
                Err(e) => {
                    let err = classify(target, &error_chain(&e));
                    if err.class() == ErrorClass::Permanent || attempt >= attempts {
                        return Err(err);
                    }
                    warn!(host = %target.host, attempt, error = %err, "ssh connect failed; retrying in {:?}", backoff);
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        }
    }

    pub fn control_socket(&self) -> &Path {
        self.session.control_socket()
    }

    /// The `-e` argument that makes rsync (or anything else) reuse this session's master.
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -S {} -o ControlMaster=no -o BatchMode=yes -p {}",
            shell_quote(&self.control_socket().to_string_lossy()),
            self.target.port
        )
    }

    /// Runs a command on the remote host and collects its output. A non-zero exit is an
    /// error carrying the command's stderr.
    pub async fn run(&self, program: &str, args: &[&str]) -> Result<Output, TransferError> {
        let what = format!("`{program} {}` on {}", args.join(" "), self.target.host);
        let out = self
            .session
            .command(program)
            .args(args.iter().copied())
            .output()
            .await
            .map_err(|e| TransferError::Command {
                what: what.clone(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(TransferError::Command {
                what,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out)
    }

    /// A command on the remote host, for callers that stream its stdin or stdout.
    pub fn command<'a>(&'a self, program: &'a str) -> openssh::OwningCommand<&'a Session> {
        self.session.command(program)
    }

    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

/// The error and its sources in one line: openssh keeps ssh's own words in the source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

/// Names the failure the way the engine must act on it.
fn classify(t: &SshTarget, message: &str) -> TransferError {
    let detail = message.trim().to_owned();
    if detail.contains("Permission denied") || detail.contains("Too many authentication failures") {
        TransferError::Auth {
            user: t.user.clone(),
            host: t.host.clone(),
            port: t.port,
            key: t.key_path.clone(),
            detail,
        }
    } else if detail.contains("Host key verification failed")
        || detail.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || detail.contains("host key for")
    {
        TransferError::HostKey {
            host: t.host.clone(),
            port: t.port,
            known_hosts: t.known_hosts.clone(),
            detail,
        }
    } else {
        TransferError::Connect {
            host: t.host.clone(),
            port: t.port,
            detail,
        }
    }
}

/// Single-quotes a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified() {
        let t = SshTarget::new("h", 22, "u", Path::new("/k"), Path::new("/kh"));
        assert_eq!(
            classify(&t, "u@h: Permission denied (publickey).").class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(&t, "Host key verification failed.").class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(&t, "connect to host h port 22: Connection refused").class(),
            ErrorClass::Transient
        );
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("/tmp/ctl.sock"), "/tmp/ctl.sock");
    }
}

/// What ssh adds under the control directory: `/.ssh-connectionXXXXXX/master.` and 16
/// random characters.
const CONTROL_SUFFIX_LEN: usize = 50;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// `dir`, created, when the master's socket path fits a Unix socket's 107 bytes; otherwise
/// a short private directory under /tmp named after `dir` (deep work directories are common,
/// and ssh would fail with "path too long for Unix domain socket").
fn usable_control_dir(dir: &Path) -> Result<std::path::PathBuf, TransferError> {
    let chosen = if dir.as_os_str().len() + CONTROL_SUFFIX_LEN <= MAX_SOCKET_PATH {
        dir.to_owned()
    } else {
        let hash = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
        std::path::PathBuf::from("/tmp").join(format!("ferry-ssh-{}", &hash.as_str()[..16]))
    };
    std::fs::create_dir_all(&chosen).map_err(|e| TransferError::io(&chosen, e))?;
    // Others must not reach the master through its socket.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&chosen, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| TransferError::io(&chosen, e))?;
    Ok(chosen)
}

#[cfg(test)]
mod control_dir_tests {
    use super::*;

    #[test]
    fn deep_control_directories_move_to_a_short_private_one() {
        let tmp = tempfile::tempdir().expect("tmp");
        let short = tmp.path().join("ssh");
        assert_eq!(usable_control_dir(&short).expect("short"), short);
        let deep = tmp
            .path()
            .join("a".repeat(60))
            .join("10.231.162.23-22-root");
        let chosen = usable_control_dir(&deep).expect("deep");
        assert!(
            chosen.to_string_lossy().starts_with("/tmp/ferry-ssh-"),
            "{}",
            chosen.display()
        );
        assert!(chosen.as_os_str().len() + CONTROL_SUFFIX_LEN <= MAX_SOCKET_PATH);
        assert_eq!(
            usable_control_dir(&deep).expect("again"),
            chosen,
            "stable per directory"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&chosen)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let _ = std::fs::remove_dir_all(&chosen);
    }
}
