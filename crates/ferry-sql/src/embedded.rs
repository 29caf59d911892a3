//! The embedded engine: DataFusion over a local warehouse directory laid out like Hive,
//! `<warehouse>/<db>.db/<table>/[<col>=<value>/]*.parquet`, partitions discovered as columns.
//! Databases are schemas (`default` is the default one), tables are what the directories hold
//! at the moment of the query.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::common::config::SqlParserOptions;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use futures_util::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use tracing::{debug, warn};

use crate::{PartitionSpec, SqlError, TableRef};

const CATALOG: &str = "datafusion";
const DEFAULT_DB: &str = "default";

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Rows per Parquet part; a new part starts beyond it.
    pub rows_per_part: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            rows_per_part: 1_000_000,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    pub rows: u64,
    pub parts: usize,
    pub bytes: u64,
    /// `name: type` of each column.
    pub schema: Vec<String>,
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LoadSummary {
    pub table: String,
    pub partition: String,
    pub rows: u64,
    pub parts: usize,
}

pub struct EmbeddedEngine {
    warehouse: PathBuf,
}

/// Classifies by the innermost error (DataFusion wraps planning errors in diagnostics and
/// context layers).
fn df_error(e: DataFusionError) -> SqlError {
    let root = e.find_root();
    match root {
        DataFusionError::SQL(inner, _) => SqlError::Syntax(inner.to_string()),
        DataFusionError::Plan(msg) if msg.starts_with("table '") && msg.ends_with("not found") => {
            SqlError::MissingTable(msg.clone())
        }
        _ => SqlError::Query(e.to_string()),
    }
}

impl EmbeddedEngine {
    pub fn new(warehouse: impl Into<PathBuf>) -> EmbeddedEngine {
        EmbeddedEngine {
            warehouse: warehouse.into(),
        }
    }

    pub fn warehouse(&self) -> &Path {
        &self.warehouse
    }

    /// Directory of a table.
    pub fn table_dir(&self, t: &TableRef) -> PathBuf {
        self.warehouse
            .join(format!("{}.db", t.database))
            .join(&t.table)
    }

    /// A session that sees every table of the warehouse as it is now.
    pub async fn context(&self) -> Result<SessionContext, SqlError> {
        let mut config = SessionConfig::new()
            .with_create_default_catalog_and_schema(true)
            .with_default_catalog_and_schema(CATALOG, DEFAULT_DB)
            .with_information_schema(true);
        // Column names match as written (`I1`, `C26`), the way warehouse users write them;
        // DataFusion would otherwise fold unquoted names to lower case.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        // One scan partition and no round-robin shuffle: files are read in path order, so an
        // export of the same data writes the same rows in the same order and a model trained
        // on it comes out the same. (With several partitions the rows' order depends on
        // which partition's reads finish first.) The single Parquet writer is the export's
        // bottleneck anyway.
        config = config.with_target_partitions(1);
        config
            .options_mut()
            .optimizer
            .enable_round_robin_repartition = false;
        let ctx = SessionContext::new_with_config(config);
        let Ok(dbs) = std::fs::read_dir(&self.warehouse) else {
            return Ok(ctx); // an empty warehouse has no tables
        };
        let catalog = ctx
            .catalog(CATALOG)
            .ok_or_else(|| SqlError::Query("the default catalog is missing".into()))?;
        for db in dbs.flatten() {
            let name = db.file_name().to_string_lossy().into_owned();
            let Some(db_name) = name.strip_suffix(".db") else {
                continue;
            };
            if ferry_core::ident::check_identifier(db_name).is_err() || !db.path().is_dir() {
                continue;
            }
            if catalog.schema(db_name).is_none() {
                let _ = catalog.register_schema(db_name, Arc::new(MemorySchemaProvider::new()));
            }
            for table in std::fs::read_dir(db.path())
                .map_err(|e| SqlError::io(db.path(), e))?
                .flatten()
            {
                let t = table.file_name().to_string_lossy().into_owned();
                if ferry_core::ident::check_identifier(&t).is_err() || !table.path().is_dir() {
                    continue;
                }
                match self.listing_table(&ctx, &table.path()).await {
                    Ok(Some(provider)) => {
                        ctx.register_table(TableReference::partial(db_name, t.as_str()), provider)
                            .map_err(df_error)?;
                    }
                    Ok(None) => debug!(table = %t, "no data files yet; not registered"),
                    Err(e) => warn!(table = %t, error = %e, "table skipped"),
                }
            }
        }
        Ok(ctx)
    }

    async fn listing_table(
        &self,
        ctx: &SessionContext,
        dir: &Path,
    ) -> Result<Option<Arc<ListingTable>>, SqlError> {
        let partition_cols = discover_partition_columns(dir);
        if !has_parquet(dir) {
            return Ok(None);
        }
        let url = ListingTableUrl::parse(format!("{}/", dir.display())).map_err(df_error)?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(
                partition_cols
                    .into_iter()
                    .map(|c| (c, DataType::Utf8))
                    .collect(),
            );
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await
            .map_err(df_error)?;
        Ok(Some(Arc::new(
            ListingTable::try_new(config).map_err(df_error)?,
        )))
    }

    /// Runs `sql`, which must be one read-only query, and writes its result as
    /// `part-NNNNN.parquet` files into `out_dir` (replacing earlier parts), streaming batch by
    /// batch so memory stays bounded.
    pub async fn export(
        &self,
        sql: &str,
        out_dir: &Path,
        opts: &ExportOptions,
    ) -> Result<ExportSummary, SqlError> {
        ferry_core::sql_guard::check_read_only(sql)?;
        let ctx = self.context().await?;
        let plan = read_only_plan(&ctx, sql).await?;
        let df = ctx.execute_logical_plan(plan).await.map_err(df_error)?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let streams = df.execute_stream_partitioned().await.map_err(df_error)?;
        prepare_dir(out_dir)?;
        let mut writer = PartWriter::new(out_dir, schema.clone(), opts.rows_per_part.max(1));
        // Partitions are written one after the other, in order, for a reproducible export;
        // the later ones scan ahead meanwhile, a few batches each, so the cores stay busy and
        // memory stays bounded.
        let receivers: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    while let Some(batch) = stream.next().await {
                        if tx.send(batch).await.is_err() {
                            break;
                        }
                    }
                });
                rx
            })
            .collect();
        for mut rx in receivers {
            while let Some(batch) = rx.recv().await {
                writer.write(&batch.map_err(df_error)?)?;
            }
        }
        let mut summary = writer.finish()?;
        summary.schema = schema
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect();
        if summary.rows == 0 {
            return Err(SqlError::NoRows);
        }
        Ok(summary)
    }

    /// Rows of `table` (in `partition` when given).
    pub async fn count_rows(
        &self,
        table: &TableRef,
        partition: Option<&PartitionSpec>,
    ) -> Result<u64, SqlError> {
        let ctx = self.context().await?;
        // Names are validated identifiers; the partition value is a validated literal.
        let mut sql = format!(
            "SELECT COUNT(*) AS n FROM \"{}\".\"{}\"",
            table.database, table.table
        );
        if let Some(p) = partition {
            sql.push_str(&format!(" WHERE \"{}\" = '{}'", p.column, p.value));
        }
        let batches = match ctx.sql(&sql).await {
            Ok(df) => df.collect().await.map_err(df_error)?,
            Err(e) => match df_error(e) {
                SqlError::MissingTable(_) => return Ok(0),
                other => return Err(other),
            },
        };
        Ok(first_count(&batches))
    }

    /// Loads the Parquet parts in `parts_dir` into `table`'s `partition`, replacing whatever
    /// the partition held: the parts are staged beside the table and swapped in with renames,
    /// so running it twice, or again after a crash, never duplicates rows. Then checks the
    /// partition's row count against `expected_rows`.
    pub async fn load_partition(
        &self,
        table: &TableRef,
        partition: &PartitionSpec,
        parts_dir: &Path,
        expected_rows: Option<u64>,
    ) -> Result<LoadSummary, SqlError> {
        let table_dir = self.table_dir(table);
        std::fs::create_dir_all(&table_dir).map_err(|e| SqlError::io(&table_dir, e))?;
        recover_interrupted_swap(&table_dir, partition)?;
        let mut parts: Vec<PathBuf> = std::fs::read_dir(parts_dir)
            .map_err(|e| SqlError::io(parts_dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        parts.sort();
        let staging = table_dir.join(format!(".staging-{}", partition.dir_name()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| SqlError::io(&staging, e))?;
        }
        std::fs::create_dir_all(&staging).map_err(|e| SqlError::io(&staging, e))?;
        let mut rows = 0;
        for (i, part) in parts.iter().enumerate() {
            rows += parquet_rows(part)?;
            let dest = staging.join(format!("part-{i:05}.parquet"));
            std::fs::copy(part, &dest).map_err(|e| SqlError::io(&dest, e))?;
        }
        sync_dir(&staging)?;
        // Marks the staged partition complete: recovery may only swap in a complete one.
        std::fs::write(staging.join(COMPLETE_MARK), b"").map_err(|e| SqlError::io(&staging, e))?;
        swap_in(&table_dir, partition, &staging)?;
        let summary = LoadSummary {
            table: table.to_string(),
            partition: partition.dir_name(),
            rows,
            parts: parts.len(),
        };
        if let Some(expected) = expected_rows {
            let found = self.count_rows(table, Some(partition)).await?;
            if found != expected {
                return Err(SqlError::RowCountMismatch {
                    table: format!("{table} {}", partition.dir_name()),
                    expected,
                    found,
                });
            }
        }
        Ok(summary)
    }

    /// Up to `limit` rows of `table`'s `partition` as JSON objects (for approval previews).
    pub async fn preview(
        &self,
        table: &TableRef,
        partition: Option<&PartitionSpec>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, SqlError> {
        let ctx = self.context().await?;
        let mut sql = format!("SELECT * FROM \"{}\".\"{}\"", table.database, table.table);
        if let Some(p) = partition {
            sql.push_str(&format!(" WHERE \"{}\" = '{}'", p.column, p.value));
        }
        sql.push_str(&format!(" LIMIT {limit}"));
        let batches = ctx
            .sql(&sql)
            .await
            .map_err(df_error)?
            .collect()
            .await
            .map_err(df_error)?;
        batches_to_json(&batches)
    }
}

/// DataFusion's own read-only check of an export, whatever the lexical one said: `sql` must
/// parse (with the session's dialect) to exactly one query, and its plan may hold no DDL
/// (`SELECT ... INTO t` plans as `CREATE TABLE`), DML (`INSERT`, `COPY`) or statement
/// (`SET`). This is `SessionContext::sql_with_options` with DDL, DML and statements
/// disallowed, in two steps so a refusal is told apart from a query that fails to plan.
/// Loads (`load_partition`) write files directly and never run SQL that writes.
async fn read_only_plan(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan, SqlError> {
    let state = ctx.state();
    let statement = one_query(&state.config().options().sql_parser, sql)?;
    let plan = state.statement_to_plan(statement).await.map_err(df_error)?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| {
            SqlError::WriteRefused(format!(
                "the query's plan is not a read ({})",
                e.find_root()
            ))
        })?;
    Ok(plan)
}

/// `sql` parsed as the session parses it, if it is exactly one query. (Not async: the
/// parser's dialect may not be held across an `.await`.)
fn one_query(options: &SqlParserOptions, sql: &str) -> Result<DfStatement, SqlError> {
    let dialect = dialect_from_str(options.dialect)
        .ok_or_else(|| SqlError::Query(format!("unknown SQL dialect {:?}", options.dialect)))?;
    let statements = DFParserBuilder::new(sql)
        .with_dialect(dialect.as_ref())
        .with_recursion_limit(options.recursion_limit.get())
        .build()
        .and_then(|mut parser| parser.parse_statements())
        .map_err(df_error)?;
    let mut statements = statements.into_iter();
    let (Some(statement), None) = (statements.next(), statements.next()) else {
        return Err(SqlError::WriteRefused("not exactly one statement".into()));
    };
    let is_query =
        matches!(&statement, DfStatement::Statement(s) if matches!(**s, SqlStatement::Query(_)));
    if !is_query {
        let text = statement.to_string();
        let head = text.split_whitespace().next().unwrap_or_default();
        return Err(SqlError::WriteRefused(format!("`{head}` is not a read")));
    }
    Ok(statement)
}

/// Up to `limit` rows of the Parquet files in `dir` as JSON objects: what an approver sees of
/// the rows a load would write (read locally, whichever engine runs the load).
pub async fn preview_parts(dir: &Path, limit: usize) -> Result<Vec<serde_json::Value>, SqlError> {
    let ctx = SessionContext::new();
    let path = dir.display().to_string();
    ctx.register_parquet(
        "parts",
        &path,
        datafusion::prelude::ParquetReadOptions::default().file_extension(".parquet"),
    )
    .await
    .map_err(df_error)?;
    let batches = ctx
        .sql(&format!("SELECT * FROM parts LIMIT {limit}"))
        .await
        .map_err(df_error)?
        .collect()
        .await
        .map_err(df_error)?;
    batches_to_json(&batches)
}

fn batches_to_json(batches: &[RecordBatch]) -> Result<Vec<serde_json::Value>, SqlError> {
    {
        let mut buf = Vec::new();
        {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
            for b in batches {
                w.write(b).map_err(|e| SqlError::Query(e.to_string()))?;
            }
            w.finish().map_err(|e| SqlError::Query(e.to_string()))?;
        }
        if buf.is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_slice(&buf).map_err(|e| SqlError::Query(e.to_string()))
    }
}

const COMPLETE_MARK: &str = "_FERRY_STAGED";

/// The partition dir is replaced in two renames: old → trash, staged → live. A crash between
/// them leaves no live partition but a complete staged one, which recovery swaps in.
fn swap_in(table_dir: &Path, p: &PartitionSpec, staging: &Path) -> Result<(), SqlError> {
    let live = table_dir.join(p.dir_name());
    let trash = table_dir.join(format!(".trash-{}", p.dir_name()));
    if trash.exists() {
        std::fs::remove_dir_all(&trash).map_err(|e| SqlError::io(&trash, e))?;
    }
    if live.exists() {
        std::fs::rename(&live, &trash).map_err(|e| SqlError::io(&live, e))?;
    }
    std::fs::rename(staging, &live).map_err(|e| SqlError::io(staging, e))?;
    let _ = std::fs::remove_file(live.join(COMPLETE_MARK));
    sync_dir(table_dir)?;
    if trash.exists() {
        std::fs::remove_dir_all(&trash).map_err(|e| SqlError::io(&trash, e))?;
    }
    Ok(())
}

/// Finishes or discards a swap a crash interrupted.
fn recover_interrupted_swap(table_dir: &Path, p: &PartitionSpec) -> Result<(), SqlError> {
    let live = table_dir.join(p.dir_name());
    let staging = table_dir.join(format!(".staging-{}", p.dir_name()));
    let trash = table_dir.join(format!(".trash-{}", p.dir_name()));
    if !live.exists() && staging.join(COMPLETE_MARK).exists() {
        std::fs::rename(&staging, &live).map_err(|e| SqlError::io(&staging, e))?;
        let _ = std::fs::remove_file(live.join(COMPLETE_MARK));
    }
    if trash.exists() {
        std::fs::remove_dir_all(&trash).map_err(|e| SqlError::io(&trash, e))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), SqlError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SqlError::io(dir, e))
}

fn parquet_rows(path: &Path) -> Result<u64, SqlError> {
    let file = File::open(path).map_err(|e| SqlError::io(path, e))?;
    let reader =
        parquet::file::serialized_reader::SerializedFileReader::new(file).map_err(|e| {
            SqlError::Parquet {
                path: path.to_owned(),
                detail: e.to_string(),
            }
        })?;
    use parquet::file::reader::FileReader;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

fn first_count(batches: &[RecordBatch]) -> u64 {
    batches
        .first()
        .and_then(|b| {
            let col = b.column(0);
            col.as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map(|a| a.value(0).max(0) as u64)
        })
        .unwrap_or(0)
}

/// `col=value` directory levels below a table directory, in order.
fn discover_partition_columns(dir: &Path) -> Vec<String> {
    let mut cols = Vec::new();
    let mut current = dir.to_owned();
    loop {
        let Ok(entries) = std::fs::read_dir(&current) else {
            break;
        };
        let next = entries.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (e.path().is_dir() && !name.starts_with('.') && !name.starts_with('_'))
                .then(|| name.split_once('=').map(|(c, _)| (c.to_owned(), e.path())))
                .flatten()
        });
        match next {
            Some((col, path)) => {
                cols.push(col);
                current = path;
            }
            None => break,
        }
    }
    cols
}

fn has_parquet(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            return false;
        }
        let p = e.path();
        if p.is_dir() {
            has_parquet(&p)
        } else {
            name.ends_with(".parquet")
        }
    })
}

/// Empties (or creates) an export directory of earlier parts.
fn prepare_dir(dir: &Path) -> Result<(), SqlError> {
    std::fs::create_dir_all(dir).map_err(|e| SqlError::io(dir, e))?;
    for e in std::fs::read_dir(dir)
        .map_err(|e| SqlError::io(dir, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-")
            && (name.ends_with(".parquet") || name.ends_with(".parquet.tmp"))
        {
            std::fs::remove_file(e.path()).map_err(|err| SqlError::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// Writes batches into numbered parts, each under a temporary name until complete.
struct PartWriter {
    dir: PathBuf,
    schema: SchemaRef,
    rows_per_part: usize,
    current: Option<(ArrowWriter<File>, PathBuf, usize)>,
    summary: ExportSummary,
}

impl PartWriter {
    fn new(dir: &Path, schema: SchemaRef, rows_per_part: usize) -> PartWriter {
        PartWriter {
            dir: dir.to_owned(),
            schema,
            rows_per_part,
            current: None,
            summary: ExportSummary::default(),
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), SqlError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                let tmp = self
                    .dir
                    .join(format!("part-{:05}.parquet.tmp", self.summary.parts));
                let file = File::create(&tmp).map_err(|e| SqlError::io(&tmp, e))?;
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                let w =
                    ArrowWriter::try_new(file, self.schema.clone(), Some(props)).map_err(|e| {
                        SqlError::Parquet {
                            path: tmp.clone(),
                            detail: e.to_string(),
                        }
                    })?;
                self.current = Some((w, tmp, 0));
            }
            let Some((w, tmp, in_part)) = self.current.as_mut() else {
                break;
            };
            let take = (self.rows_per_part - *in_part).min(batch.num_rows() - offset);
            w.write(&batch.slice(offset, take))
                .map_err(|e| SqlError::Parquet {
                    path: tmp.clone(),
                    detail: e.to_string(),
                })?;
            *in_part += take;
            offset += take;
            self.summary.rows += take as u64;
            if *in_part >= self.rows_per_part {
                self.close_part()?;
            }
        }
        Ok(())
    }

    fn close_part(&mut self) -> Result<(), SqlError> {
        if let Some((w, tmp, _)) = self.current.take() {
            w.close().map_err(|e| SqlError::Parquet {
                path: tmp.clone(),
                detail: e.to_string(),
            })?;
            let done = tmp.with_extension("");
            ferry_fs::persist(&tmp, &done).map_err(|e| SqlError::io(&tmp, e))?;
            self.summary.bytes += std::fs::metadata(&done).map(|m| m.len()).unwrap_or(0);
            self.summary.files.push(
                done.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            self.summary.parts += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<ExportSummary, SqlError> {
        self.close_part()?;
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session with one table, `t`, of one row.
    async fn session() -> SessionContext {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE t AS SELECT 1 AS x")
            .await
            .expect("create")
            .collect()
            .await
            .expect("run");
        ctx
    }

    fn assert_send<T: Send>(_: &T) {}

    /// Agents run exports on a multi-threaded runtime.
    #[test]
    fn an_export_can_move_between_threads() {
        let engine = EmbeddedEngine::new("/nonexistent");
        let opts = ExportOptions::default();
        let export = engine.export("SELECT 1", Path::new("/nonexistent"), &opts);
        assert_send(&export);
    }

    async fn rows_of_t(ctx: &SessionContext) -> usize {
        ctx.sql("SELECT * FROM t")
            .await
            .expect("select")
            .collect()
            .await
            .expect("run")
            .iter()
            .map(RecordBatch::num_rows)
            .sum()
    }

    /// What stands behind the lexical guard: these reach DataFusion only if someone calls the
    /// engine without `check_read_only`, and DataFusion refuses them anyway.
    #[tokio::test]
    async fn datafusion_refuses_writes_that_bypass_the_guard() {
        let ctx = session().await;
        let copy_to = std::env::temp_dir().join(format!("ferry-copy-{}", uuid::Uuid::new_v4()));
        for (sql, why) in [
            ("INSERT INTO t SELECT 2", "`INSERT` is not a read"),
            ("CREATE TABLE u (y INT)", "`CREATE` is not a read"),
            ("DROP TABLE t", "`DROP` is not a read"),
            (
                "SET datafusion.execution.batch_size = 1",
                "`SET` is not a read",
            ),
            (
                &format!("COPY (SELECT 1) TO '{}'", copy_to.display()),
                "`COPY` is not a read",
            ),
            ("SELECT 1; DROP TABLE t", "not exactly one statement"),
            // Parsed as a query; planned as `CREATE TABLE`: SQLOptions refuses the DDL.
            (
                "SELECT x INTO u FROM t",
                "the query's plan is not a read (Error during planning: DDL not supported: CreateMemoryTable)",
            ),
        ] {
            let err = read_only_plan(&ctx, sql).await.expect_err(sql);
            assert!(matches!(err, SqlError::WriteRefused(_)), "{sql}: {err}");
            assert_eq!(
                err.to_string(),
                format!("{why}: an export runs one SELECT or WITH query"),
                "{sql}"
            );
            assert!(err.is_permanent());
        }
        // A write inside a WITH is refused whether DataFusion plans it or not.
        let sql = "WITH a AS (SELECT 2 AS x) INSERT INTO t SELECT x FROM a";
        assert!(read_only_plan(&ctx, sql).await.is_err(), "{sql}");
        assert_eq!(rows_of_t(&ctx).await, 1, "t is unchanged");
        assert!(ctx.table_exist("u").is_ok_and(|exists| !exists));
        assert!(!copy_to.exists());

        let plan = read_only_plan(&ctx, "WITH a AS (SELECT x FROM t) SELECT * FROM a;")
            .await
            .expect("a query");
        let batches = ctx
            .execute_logical_plan(plan)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
        let err = read_only_plan(&ctx, "SELEC 1").await.expect_err("syntax");
        assert!(matches!(err, SqlError::Syntax(_)), "{err}");
    }
}
