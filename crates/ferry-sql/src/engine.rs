//! The engine a data-source agent uses, chosen by `sql.engine`: the embedded DataFusion
//! warehouse, or an external spark-sql / beeline / hive process.

use std::path::Path;

use ferry_core::config::{SqlConfig, SqlEngineKind};

use crate::embedded::{EmbeddedEngine, ExportOptions, ExportSummary, LoadSummary};
use crate::external::{ExternalEngine, ExternalKind};
use crate::{PartitionSpec, SqlError, TableRef};

pub enum SqlEngine {
    Embedded(EmbeddedEngine),
    External(ExternalEngine),
}

impl SqlEngine {
    pub fn from_config(config: &SqlConfig) -> Result<SqlEngine, SqlError> {
        let external = |kind| {
            Ok(SqlEngine::External(ExternalEngine::new(
                kind,
                config.command.clone(),
            )))
        };
        match config.engine {
            SqlEngineKind::Embedded => Ok(SqlEngine::Embedded(EmbeddedEngine::new(
                config.warehouse_dir.clone(),
            ))),
            SqlEngineKind::SparkSql => external(ExternalKind::SparkSql),
            SqlEngineKind::Beeline => external(ExternalKind::Beeline),
            SqlEngineKind::Hive => external(ExternalKind::Hive),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            SqlEngine::Embedded(_) => "embedded",
            SqlEngine::External(e) => match e.kind {
                ExternalKind::SparkSql => "spark-sql",
                ExternalKind::Beeline => "beeline",
                ExternalKind::Hive => "hive",
            },
        }
    }

    pub async fn export(
        &self,
        sql: &str,
        out_dir: &Path,
        opts: &ExportOptions,
    ) -> Result<ExportSummary, SqlError> {
        match self {
            SqlEngine::Embedded(e) => e.export(sql, out_dir, opts).await,
            SqlEngine::External(e) => e.export(sql, out_dir).await,
        }
    }

    pub async fn load_partition(
        &self,
        table: &TableRef,
        partition: &PartitionSpec,
        parts_dir: &Path,
        expected_rows: Option<u64>,
    ) -> Result<LoadSummary, SqlError> {
        match self {
            SqlEngine::Embedded(e) => {
                e.load_partition(table, partition, parts_dir, expected_rows)
                    .await
            }
            SqlEngine::External(e) => {
                e.load_partition(table, partition, parts_dir, expected_rows)
                    .await
            }
        }
    }

    pub async fn count_rows(
        &self,
        table: &TableRef,
        partition: Option<&PartitionSpec>,
    ) -> Result<u64, SqlError> {
        match self {
            SqlEngine::Embedded(e) => e.count_rows(table, partition).await,
            SqlEngine::External(e) => e.count_rows(table, partition).await,
        }
    }
}
