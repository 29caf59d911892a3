//! Ferry's SQL side (the data-source host): run the user's SQL, export the result as Parquet
//! parts into staging, and load result parts back into a Hive-style table idempotently.
//!
//! The embedded engine (DataFusion over a warehouse directory laid out like Hive) is the
//! default for one machine, the demo and the tests.

pub mod embedded;
pub mod error;

pub use embedded::{EmbeddedEngine, ExportOptions, ExportSummary, LoadSummary};
pub use error::SqlError;
pub use ferry_core::ident::{IdentError, PartitionSpec, TableRef};
