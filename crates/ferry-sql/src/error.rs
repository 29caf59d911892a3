//! SQL errors, in the classes the engine acts on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The query names a table (or partition) that does not exist: "source data not ready".
    #[error("source data not ready: {0}")]
    MissingTable(String),
    #[error("source data not ready: the query returned 0 rows")]
    NoRows,
    #[error("SQL syntax error: {0}")]
    Syntax(String),
    /// The export's SQL is not exactly one read-only query (found before it ran).
    #[error(transparent)]
    NotReadOnly(#[from] ferry_core::sql_guard::SqlGuardError),
    /// The engine itself refused an export's statement as not read-only.
    #[error("{0}: an export runs one SELECT or WITH query")]
    WriteRefused(String),
    /// An external engine's shell would read the export's text differently from its parser.
    #[error("this export cannot be handed to {engine} safely: {reason}")]
    UnsafeForShell {
        engine: &'static str,
        reason: &'static str,
    },
    #[error("query failed: {0}")]
    Query(String),
    #[error(transparent)]
    BadIdentifier(#[from] ferry_core::ident::IdentError),
    #[error("I/O on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Parquet {}: {detail}", path.display())]
    Parquet { path: PathBuf, detail: String },
    #[error("load verification failed for {table}: {expected} rows expected, {found} found")]
    RowCountMismatch {
        table: String,
        expected: u64,
        found: u64,
    },
}

impl SqlError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SqlError::Io {
            path: path.into(),
            source,
        }
    }

    /// Retrying the same SQL against the same data cannot fix a missing table, a syntax
    /// error, a write where a read belongs or a bad name; I/O and verification may recover.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            SqlError::MissingTable(_)
                | SqlError::NoRows
                | SqlError::Syntax(_)
                | SqlError::NotReadOnly(_)
                | SqlError::WriteRefused(_)
                | SqlError::UnsafeForShell { .. }
                | SqlError::BadIdentifier(_)
        )
    }
}
