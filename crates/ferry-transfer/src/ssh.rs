//! SSH sessions with the `openssh` crate: key authentication only (several keys offered in
//! order, so a key can be rotated without downtime), private keys checked before use (mode
//! 600 or narrower), strict host-key checking against a known_hosts file (accept-new only
//! when asked), keepalives, and connect retries with exponential back-off. One multiplexed
//! master per (host, port, user, keys); every command and rsync run goes through its control
//! socket, so there is no second authentication.
//!
//! The master is started here rather than by `openssh::SessionBuilder`, which passes one
//! `-i` only: ssh itself, given several `-i` with `IdentitiesOnly=yes`, offers them in order
//! on one connection: a retired key the server declines is not a failed login, so a
//! rotation does not trip sshd's per-source penalties (each key offered does count against
//! the server's `MaxAuthTries`, 6 by default). openssh then drives the master's socket.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use ferry_core::ErrorClass;
use openssh::Session;
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

impl HostKeyPolicy {
    /// ssh's `StrictHostKeyChecking` value.
    fn ssh_value(self) -> &'static str {
        match self {
            HostKeyPolicy::Strict => "yes",
            HostKeyPolicy::AcceptNew => "accept-new",
        }
    }
}

/// How long an unused master stays up by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Private keys offered in order (`ServerConfig::keys()`): the first the server accepts
    /// authenticates. Each must exist and be mode 600 or narrower.
    pub keys: Vec<PathBuf>,
    pub known_hosts: PathBuf,
    pub host_key_policy: HostKeyPolicy,
    pub keepalive: Duration,
    pub connect_timeout: Duration,
    /// Connection attempts before giving up (seed 000 §7.2: 5).
    pub connect_attempts: u32,
    /// First back-off between attempts (seed 000 §7.2: 2 s), doubled each time.
    pub connect_backoff: Duration,
    /// A master with no command or transfer running through it for this long exits by
    /// itself (ssh's `ControlPersist`), so a master outlives neither its use nor an agent
    /// that was killed without closing it.
    pub idle_timeout: Duration,
}

impl SshTarget {
    pub fn new(
        host: &str,
        port: u16,
        user: &str,
        keys: &[PathBuf],
        known_hosts: &Path,
    ) -> SshTarget {
        SshTarget {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            keys: keys.to_vec(),
            known_hosts: known_hosts.to_owned(),
            host_key_policy: HostKeyPolicy::Strict,
            keepalive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            connect_attempts: ferry_core::retry::SSH_CONNECT_MAX_RETRIES,
            connect_backoff: ferry_core::retry::SSH_CONNECT_BACKOFF,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// `user@host`, as rsync wants it.
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// The options every ssh process for this target gets, the master and rsync's alike:
    /// only these keys, in order, public-key authentication only, and the host key checked
    /// against this known_hosts file. (rsync's ssh normally rides the master's socket; if
    /// the master is gone it connects by itself, and must be held to the same rules.)
    fn ssh_options(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "PreferredAuthentications=publickey",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        for key in &self.keys {
            args.push("-i".into());
            args.push(escape_percent(&key.to_string_lossy()));
        }
        args.extend([
            "-o".into(),
            format!("StrictHostKeyChecking={}", self.host_key_policy.ssh_value()),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                ssh_option_path(&self.known_hosts.to_string_lossy())
            ),
            "-o".into(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
            "-o".into(),
            format!("ServerAliveInterval={}", self.keepalive.as_secs().max(1)),
            "-o".into(),
            format!("Ciphers={}", cipher_preference()),
            "-p".into(),
            self.port.to_string(),
        ]);
        args
    }

    fn key_list(&self) -> String {
        key_list(&self.keys)
    }
}

/// The keys as an error message names them.
pub(crate) fn key_list(keys: &[PathBuf]) -> String {
    match keys {
        [] => "no key".to_owned(),
        [one] => format!("key {}", one.display()),
        many => format!(
            "keys {} (tried in order)",
            many.iter()
                .map(|k| k.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Refuses a private key that is missing, not a file, or readable or writable by group or
/// others (ssh would ignore it and the failure would read as a wrong key).
pub fn check_private_key(path: &Path) -> Result<(), TransferError> {
    ferry_fs::check_private(path).map_err(|e| TransferError::KeyFile {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// A live master connection.
pub struct SshSession {
    pub target: SshTarget,
    session: Session,
}

impl SshSession {
    /// Checks the keys, then connects, retrying transient failures with exponential
    /// back-off; key, authentication and host-key failures are returned at once (retrying
    /// cannot fix them).
    pub async fn connect(
        target: &SshTarget,
        control_dir: &Path,
    ) -> Result<SshSession, TransferError> {
        if target.keys.is_empty() {
            return Err(TransferError::Auth {
                user: target.user.clone(),
                host: target.host.clone(),
                port: target.port,
                keys: Vec::new(),
                detail: "no private key is configured (`key_path` or `key_paths`)".into(),
            });
        }
        for key in &target.keys {
            check_private_key(key)?;
        }
        let control_dir = &usable_control_dir(control_dir)?;
        let attempts = target.connect_attempts.max(1);
        let mut backoff = target.connect_backoff;
        let mut attempt = 1;
        loop {
            match launch_master(target, control_dir).await {
                Ok(dir) => {
                    info!(
                        host = %target.host,
                        port = target.port,
                        user = %target.user,
                        keys = %target.key_list(),
                        "ssh session open"
                    );
                    return Ok(SshSession {
                        target: target.clone(),
                        session: Session::new_process_mux(dir),
                    });
                }
                Err(err) => {
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

    /// The `-e` argument that makes rsync (or anything else) reuse this session's master,
    /// with the target's keys and host-key rules should it have to connect by itself. Each
    /// word is quoted the way both rsync and a POSIX shell read it.
    pub fn ssh_command(&self) -> String {
        let mut words = vec![
            "ssh".to_owned(),
            "-S".into(),
            self.control_socket().to_string_lossy().into_owned(),
            "-o".into(),
            "ControlMaster=no".into(),
        ];
        words.extend(self.target.ssh_options());
        words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" ")
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

    /// Whether the master process still answers on its control socket (local, no round
    /// trip): false once it has exited, true even when its connection is dead.
    pub async fn master_running(&self) -> bool {
        self.session.check().await.is_ok()
    }

    /// Whether the master still carries commands: its process answers on the control
    /// socket *and* a `true` run through it on the other host comes back within `within`.
    /// A master whose TCP connection died (a link cut, a restarted sshd, a NAT that forgot
    /// the flow) keeps its process and socket, and would hang or fail every command sent
    /// through it; only a round trip tells.
    pub async fn is_alive(&self, within: Duration) -> bool {
        if self.session.check().await.is_err() {
            return false;
        }
        let mut probe = self.session.command("true");
        probe
            .stdin(openssh::Stdio::null())
            .stdout(openssh::Stdio::null())
            .stderr(openssh::Stdio::null());
        matches!(tokio::time::timeout(within, probe.status()).await, Ok(Ok(s)) if s.success())
    }

    /// Ends the master (`ssh -O exit` on its socket; the process exits even when its
    /// connection is dead), also while others still hold this session. Bounded: a master
    /// that does not answer within a few seconds is killed by its pid.
    pub async fn exit_master(&self) {
        let socket = self.control_socket().to_owned();
        let pid = master_pid(&socket).await;
        if !exit_through(&socket).await
            && let Some(pid) = pid
        {
            kill(pid);
        }
    }

    /// Ends the master and removes its control directory.
    pub async fn close(self) {
        self.exit_master().await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.session.close()).await;
    }
}

/// Starts the multiplexed master the way `openssh::SessionBuilder::launch_master` does (a
/// `.ssh-connection*` directory holding the `master` socket and the `log`, which openssh
/// reads), with every key of the target. ssh forks into the background once authenticated.
async fn launch_master(
    t: &SshTarget,
    control_dir: &Path,
) -> Result<tempfile::TempDir, TransferError> {
    let dir = tempfile::Builder::new()
        .prefix(".ssh-connection")
        .tempdir_in(control_dir)
        .map_err(|e| TransferError::io(control_dir, e))?;
    let log = dir.path().join("log");
    let status = tokio::process::Command::new("ssh")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .arg("-E")
        .arg(&log)
        .arg("-S")
        .arg(dir.path().join("master"))
        .args(["-M", "-f", "-N", "-o"])
        .arg(format!(
            "ControlPersist={}s",
            t.idle_timeout.as_secs().max(1)
        ))
        .args(t.ssh_options())
        .arg("-l")
        .arg(&t.user)
        .arg("--")
        .arg(&t.host)
        .status()
        .await
        .map_err(|e| TransferError::Connect {
            host: t.host.clone(),
            port: t.port,
            detail: format!("cannot run ssh: {e}"),
        })?;
    if status.success() {
        return Ok(dir);
    }
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let detail = if said.trim().is_empty() {
        format!("ssh exited with {status}")
    } else {
        said
    };
    Err(classify(t, &detail))
}

/// Names the failure the way the engine must act on it.
fn classify(t: &SshTarget, message: &str) -> TransferError {
    let detail = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect::<Vec<_>>()
        .join("; ");
    if detail.contains("Permission denied") || detail.contains("Too many authentication failures") {
        TransferError::Auth {
            user: t.user.clone(),
            host: t.host.clone(),
            port: t.port,
            keys: t.keys.clone(),
            detail,
        }
    } else if detail.contains("host key is known for") {
        TransferError::UnknownHostKey {
            host: t.host.clone(),
            port: t.port,
            known_hosts: t.known_hosts.clone(),
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

/// The ciphers offered, fastest first for this CPU. With AES instructions, AES-GCM costs
/// about two thirds of ChaCha20-Poly1305's CPU (2.97 against 2.07 GB/s per core here, `openssl
/// speed`), and on a host where rsync, ssh and two hashers share the cores that is time the
/// transfer gets back. Without them ChaCha20 leads, as in OpenSSH's own default. Only AEAD
/// ciphers and OpenSSH's CTR modes are offered: nothing weaker than its default list.
fn cipher_preference() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    let aes = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes = std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let aes = false;
    if aes {
        "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr"
    } else {
        "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr"
    }
}

/// Single-quotes a string for a POSIX shell, in a form rsync's `-e` parser reads the same
/// way (it knows quotes but not backslashes, so a `'` inside becomes `'"'"'`).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r#"'"'"'"#))
    }
}

/// ssh expands `%` tokens in key and known_hosts paths; `%%` is a literal `%`.
fn escape_percent(path: &str) -> String {
    path.replace('%', "%%")
}

/// A path as the value of an `-o` option: ssh splits such values on whitespace (several
/// known_hosts files) unless double-quoted.
fn ssh_option_path(path: &str) -> String {
    let p = escape_percent(path);
    if p.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        format!("\"{}\"", p.replace('\\', r"\\").replace('"', "\\\""))
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(keys: &[&str]) -> SshTarget {
        let keys: Vec<PathBuf> = keys.iter().map(PathBuf::from).collect();
        SshTarget::new("h", 22, "u", &keys, Path::new("/kh"))
    }

    #[test]
    fn failures_are_classified() {
        let t = target(&["/k"]);
        assert_eq!(
            classify(&t, "u@h: Permission denied (publickey).").class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(&t, "Host key verification failed.").class(),
            ErrorClass::Permanent
        );
        let unknown = classify(
            &t,
            "No ED25519 host key is known for [h]:22 and you have requested strict checking.\nHost key verification failed.\n",
        );
        assert!(
            matches!(unknown, TransferError::UnknownHostKey { .. }),
            "{unknown}"
        );
        assert_eq!(unknown.class(), ErrorClass::Permanent);
        assert!(unknown.to_string().contains("/kh"), "{unknown}");
        assert_eq!(
            classify(&t, "connect to host h port 22: Connection refused").class(),
            ErrorClass::Transient
        );
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("/tmp/ctl.sock"), "/tmp/ctl.sock");
        assert_eq!(shell_quote("it's"), r#"'it'"'"'s'"#);
    }

    #[test]
    fn an_authentication_failure_names_every_key_in_order() {
        let t = target(&["/keys/old", "/keys/new"]);
        let err = classify(&t, "u@h: Permission denied (publickey).");
        assert_eq!(
            err.to_string(),
            "SSH authentication to u@h:22 with keys /keys/old, /keys/new (tried in order) failed: u@h: Permission denied (publickey)."
        );
    }

    #[test]
    fn every_ssh_gets_the_keys_in_order_and_the_pinned_known_hosts() {
        let mut t = target(&["/keys/old", "/keys/50%"]);
        t.known_hosts = PathBuf::from("/etc/ferry/known hosts");
        let args = t.ssh_options().join(" ");
        assert!(
            args.contains("-o IdentitiesOnly=yes -o PreferredAuthentications=publickey -i /keys/old -i /keys/50%% "),
            "{args}"
        );
        assert!(args.contains("-o StrictHostKeyChecking=yes "), "{args}");
        assert!(
            args.contains(r#"-o UserKnownHostsFile="/etc/ferry/known hosts" "#),
            "{args}"
        );
        assert!(args.ends_with("-p 22"), "{args}");
        t.host_key_policy = HostKeyPolicy::AcceptNew;
        assert!(
            t.ssh_options()
                .join(" ")
                .contains("-o StrictHostKeyChecking=accept-new ")
        );
    }

    #[test]
    fn private_keys_must_exist_and_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let key = tmp.path().join("id_ed25519");
        std::fs::write(&key, "not really a key").expect("write");
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
            check_private_key(&key).expect("private");
        }
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = check_private_key(&key).expect_err("too open");
            assert_eq!(err.class(), ErrorClass::Permanent);
            let msg = err.to_string();
            assert!(
                msg.contains(&key.display().to_string())
                    && msg.contains(&format!("mode {mode:04o}"))
                    && msg.contains(&format!("chmod 600 {}", key.display())),
                "{msg}"
            );
        }
        let missing = tmp.path().join("gone");
        let err = check_private_key(&missing).expect_err("missing");
        assert_eq!(
            err.to_string(),
            format!("SSH private key {}: does not exist", missing.display())
        );
        assert!(check_private_key(tmp.path()).is_err(), "a directory");
    }
}

/// What ssh adds under the control directory: `/.ssh-connectionXXXXXX/master.` and 16
/// random characters.
const CONTROL_SUFFIX_LEN: usize = 50;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Where masters for `dir` really live: `dir` itself when the master's socket path fits a
/// Unix socket's 107 bytes, otherwise a short private directory under /tmp named after
/// `dir` (deep work directories are common, and ssh would fail with "path too long for
/// Unix domain socket").
fn socket_dir(dir: &Path) -> PathBuf {
    if dir.as_os_str().len() + CONTROL_SUFFIX_LEN <= MAX_SOCKET_PATH {
        dir.to_owned()
    } else {
        let hash = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
        PathBuf::from("/tmp").join(format!("ferry-ssh-{}", &hash.as_str()[..16]))
    }
}

/// [`socket_dir`], created private (mode 700). `dir` itself is created too, so that
/// [`reap_masters`] finds it.
fn usable_control_dir(dir: &Path) -> Result<PathBuf, TransferError> {
    std::fs::create_dir_all(dir).map_err(|e| TransferError::io(dir, e))?;
    let chosen = socket_dir(dir);
    std::fs::create_dir_all(&chosen).map_err(|e| TransferError::io(&chosen, e))?;
    // Others must not reach the master through its socket.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&chosen, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| TransferError::io(&chosen, e))?;
    Ok(chosen)
}

/// How long `ssh -O exit` (or `-O check`) may take before the master is killed instead.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The pid of the master serving `socket`, as `ssh -O check` reports it.
async fn master_pid(socket: &Path) -> Option<u32> {
    let out = tokio::process::Command::new("ssh")
        .arg("-S")
        .arg(socket)
        .args(["-o", "BatchMode=yes", "-O", "check", "ferry-master"])
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(CLOSE_TIMEOUT, out).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let start = text.find("pid=")? + 4;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Asks the master behind `socket` to exit (`ssh -O exit`); whether it agreed in time.
async fn exit_through(socket: &Path) -> bool {
    let exit = tokio::process::Command::new("ssh")
        .arg("-S")
        .arg(socket)
        .args(["-o", "BatchMode=yes", "-O", "exit", "ferry-master"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    matches!(tokio::time::timeout(CLOSE_TIMEOUT, exit).await, Ok(Ok(s)) if s.success())
}

fn kill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Ends every master a previous run left under `base` (the agent's `ssh` directory, one
/// folder per account): an agent that was killed could not close its own. Each is asked to
/// exit on its socket; any ssh process still naming one of those control directories (its
/// socket already gone) is sent SIGTERM. The control directories are removed. Returns how
/// many masters were ended.
pub async fn reap_masters(base: &Path) -> usize {
    let Ok(accounts) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut leftovers = Vec::new();
    for account in accounts.flatten() {
        if !account.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = socket_dir(&account.path());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(".ssh-connection")
            {
                leftovers.push(e.path());
            }
        }
    }
    let mut ended = 0;
    for dir in &leftovers {
        let socket = dir.join("master");
        if socket.exists() && exit_through(&socket).await {
            ended += 1;
        }
    }
    for pid in ssh_processes_naming(&leftovers) {
        kill(pid);
        ended += 1;
    }
    for dir in &leftovers {
        let _ = std::fs::remove_dir_all(dir);
    }
    if ended > 0 {
        info!(base = %base.display(), ended, "ended ssh masters left by an earlier run");
    }
    ended
}

/// Pids of `ssh` processes (masters and their clients) that belong to control directories
/// anywhere under `root`, including the short aliases of deep ones: what a stopped agent,
/// test or demo must not leave behind.
pub fn ssh_processes_under(root: &Path) -> Vec<u32> {
    let mut dirs = vec![root.to_owned()];
    let mut stack = vec![(root.to_owned(), 0)];
    while let Some((d, depth)) = stack.pop() {
        if depth >= 8 {
            continue;
        }
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let alias = socket_dir(&e.path());
                if alias != e.path() {
                    dirs.push(alias);
                }
                stack.push((e.path(), depth + 1));
            }
        }
    }
    let mut found = ssh_processes_naming(&dirs);
    found.sort_unstable();
    found.dedup();
    found
}

/// Pids of `ssh` processes whose command line names a path under one of `dirs`.
pub fn ssh_processes_naming(dirs: &[PathBuf]) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let prefixes: Vec<String> = dirs
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
        let is_ssh = args
            .next()
            .is_some_and(|a| a == "ssh" || a.ends_with("/ssh"));
        if is_ssh && args.any(|a| prefixes.iter().any(|d| a.starts_with(d.as_str()))) {
            found.push(pid);
        }
    }
    found
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
