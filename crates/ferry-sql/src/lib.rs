//! Ferry's SQL side (the data-source host): run the user's SQL, export the result as Parquet
//! parts into staging, and load result parts back into a Hive-style table idempotently.
//!
//! Two families of engines: the embedded one (DataFusion over a warehouse directory laid
//! out like Hive; the default for one machine, the demo and the tests) and external ones
//! (spark-sql, beeline, hive) driven as processes for production clusters.

pub mod embedded;
pub mod engine;
pub mod error;
pub mod external;

pub use embedded::{EmbeddedEngine, ExportOptions, ExportSummary, LoadSummary, preview_parts};
pub use engine::SqlEngine;
pub use error::SqlError;
pub use external::{ExternalEngine, ExternalKind};
pub use ferry_core::ident::{IdentError, PartitionSpec, TableRef};
