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
            CtrError::Io { source, .. } => io_is_transient(source),
            // Parquet and Arrow wrap the I/O errors of the files they write: a full disk
            // while writing a dataset part is as transient as one while writing a checkpoint.
            CtrError::Parquet {
                source: parquet::errors::ParquetError::External(e),
                ..
            } => e
                .downcast_ref::<std::io::Error>()
                .is_some_and(io_is_transient),
            CtrError::Arrow(arrow::error::ArrowError::IoError(_, e)) => io_is_transient(e),
            CtrError::Locked(_) => true,
            _ => false,
        }
    }
}

/// I/O errors worth another attempt: anything but a missing file or a refused permission.
fn io_is_transient(e: &std::io::Error) -> bool {
    !matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
    )
}

pub type Result<T, E = CtrError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo xtask chaos`: a disk full while the training step wrote a dataset part
    /// (a Parquet error around the I/O error) failed the step permanently and paused the task.
    #[test]
    fn a_full_disk_under_parquet_or_arrow_is_transient() {
        let full = || std::io::Error::from_raw_os_error(28);
        let parquet = CtrError::Parquet {
            path: "part-000000.parquet".into(),
            source: parquet::errors::ParquetError::from(full()),
        };
        assert!(parquet.is_transient(), "{parquet}");
        let arrow = CtrError::Arrow(arrow::error::ArrowError::IoError("write".into(), full()));
        assert!(arrow.is_transient(), "{arrow}");
        let bad_file = CtrError::Parquet {
            path: "part-000000.parquet".into(),
            source: parquet::errors::ParquetError::General("invalid footer".into()),
        };
        assert!(!bad_file.is_transient(), "{bad_file}");
        let missing = CtrError::Parquet {
            path: "part-000000.parquet".into(),
            source: parquet::errors::ParquetError::from(std::io::Error::from(
                std::io::ErrorKind::NotFound,
            )),
        };
        assert!(!missing.is_transient(), "{missing}");
    }
}
