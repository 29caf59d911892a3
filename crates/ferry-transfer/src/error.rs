//! Transfer errors, each in the class the engine acts on (seed 000 §7.1).

use std::path::PathBuf;

use ferry_core::ErrorClass;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(
        "SSH authentication to {user}@{host}:{port} with {} failed: {detail}",
        crate::ssh::key_list(keys)
    )]
    Auth {
        user: String,
        host: String,
        port: u16,
        /// Every key offered, in order.
        keys: Vec<PathBuf>,
        detail: String,
    },
    /// A private key that is missing or readable by others; refused before connecting.
    #[error("SSH private key {}: {detail}", path.display())]
    KeyFile { path: PathBuf, detail: String },
    #[error("host key of {host}:{port} does not match {} (possible man-in-the-middle; update known_hosts if the host was reinstalled): {detail}", known_hosts.display())]
    HostKey {
        host: String,
        port: u16,
        known_hosts: PathBuf,
        detail: String,
    },
    #[error("host key of {host}:{port} is not in {} and new host keys are not accepted: check the host's fingerprint and add it (`ssh-keyscan -p {port} {host} >> {}`), or set `agent.accept_new_host_keys` for first contact: {detail}", known_hosts.display(), known_hosts.display())]
    UnknownHostKey {
        host: String,
        port: u16,
        known_hosts: PathBuf,
        detail: String,
    },
    #[error("cannot connect to {host}:{port}: {detail}")]
    Connect {
        host: String,
        port: u16,
        detail: String,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("not enough space on {host} for {}: {needed} bytes needed, {free} free", path.display())]
    DiskFull {
        host: String,
        path: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("source {} does not exist", .0.display())]
    MissingSource(PathBuf),
    #[error("path `{path}` is outside the allowed root {}: {reason}", root.display())]
    Confinement {
        root: PathBuf,
        path: String,
        reason: String,
    },
    #[error("manifest {}: {detail}", path.display())]
    BadManifest { path: PathBuf, detail: String },
    #[error("{} failed verification: {detail}", path.display())]
    Verification { path: PathBuf, detail: String },
    #[error("I/O on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl TransferError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TransferError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether retrying can help. Credentials, host keys, confinement and missing sources
    /// need a person; networks and disks may recover.
    pub fn class(&self) -> ErrorClass {
        match self {
            TransferError::Auth { .. }
            | TransferError::KeyFile { .. }
            | TransferError::HostKey { .. }
            | TransferError::UnknownHostKey { .. }
            | TransferError::MissingSource(_)
            | TransferError::Confinement { .. }
            | TransferError::BadManifest { .. } => ErrorClass::Permanent,
            TransferError::Connect { .. }
            | TransferError::Command { .. }
            | TransferError::DiskFull { .. }
            | TransferError::Verification { .. }
            | TransferError::Io { .. } => ErrorClass::Transient,
        }
    }
}
