//! Every failure of the CTR library names what is wrong; the agent maps them to the engine's
//! transient / permanent classes (`CtrError::is_transient`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CtrError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: Parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The input does not have the columns or types the feature spec names.
    #[error("data integrity: {0}")]
    Data(String),
    /// A model or training setting is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// A saved file (feature processor, checkpoint, model) cannot be read back.
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// The requested device is not available in this build or on this host.
    #[error("device: {0}")]
    Device(String),
    /// Another process holds the lock of this output directory.
    #[error("{0} is held by another running job (remove it only if no job is running)")]
    Locked(PathBuf),
    /// Training diverged and rolling back did not help within the allowed attempts.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// The caller cancelled the work; what was completed is kept.
    #[error("cancelled")]
    Cancelled,
}

impl CtrError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CtrError {
        let path = path.into();
        move |source| CtrError::Io { path, source }
    }

    pub(crate) fn parquet(
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(parquet::errors::ParquetError) -> CtrError {
        let path = path.into();
        move |source| CtrError::Parquet { path, source }
    }

    /// Whether retrying the same work may succeed (I/O hiccups) as opposed to needing a person
    /// (bad data, bad config, divergence).
    pub fn is_transient(&self) -> bool {
        match self {
            CtrError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            CtrError::Locked(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = CtrError> = std::result::Result<T, E>;
