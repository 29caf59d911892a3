//! External engines for production clusters: `spark-sql`, `beeline` (HiveServer2) and the
//! `hive` CLI, driven as processes on the data-source host from command templates whose
//! `{sql}` argument is replaced by the statement to run.
//!
//! Exports use HiveQL's `INSERT OVERWRITE DIRECTORY … STORED AS PARQUET <user SQL>` (the
//! user's text follows unchanged); loads use `LOAD DATA LOCAL INPATH … OVERWRITE INTO TABLE …
//! PARTITION (…)`, which replaces the partition, so a rerun never duplicates rows. Cancelling
//! the step kills the engine process (and with it a local-mode job).

use std::fs::File;
use std::path::Path;
use std::process::Stdio;

use parquet::file::reader::{FileReader, SerializedFileReader};
use tokio::process::Command;

use crate::embedded::{ExportSummary, LoadSummary};
use crate::{PartitionSpec, SqlError, TableRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalKind {
    SparkSql,
    Beeline,
    Hive,
}

impl ExternalKind {
    /// The engine's command, as users know it.
    pub fn command_name(self) -> &'static str {
        match self {
            ExternalKind::SparkSql => "spark-sql",
            ExternalKind::Beeline => "beeline",
            ExternalKind::Hive => "hive",
        }
    }

    /// The command a site gets unless it configures its own.
    pub fn default_command(self) -> Vec<String> {
        let v: &[&str] = match self {
            ExternalKind::SparkSql => &["spark-sql", "-S", "-e", "{sql}"],
            ExternalKind::Beeline => &[
                "beeline",
                "-u",
                "jdbc:hive2://localhost:10000/default",
                "--silent=true",
                "--showHeader=false",
                "--outputformat=tsv2",
                "-e",
                "{sql}",
            ],
            ExternalKind::Hive => &["hive", "-S", "-e", "{sql}"],
        };
        v.iter().map(|s| (*s).to_owned()).collect()
    }
}

pub struct ExternalEngine {
    pub kind: ExternalKind,
    command: Vec<String>,
}

/// Paths spliced into statements must not be able to close the quoted literal.
fn quoted_path(p: &Path) -> Result<String, SqlError> {
    let s = p.display().to_string();
    if s.contains('\'') || s.contains('\\') || s.contains('`') {
        return Err(SqlError::Query(format!(
            "path {s} contains a quote character"
        )));
    }
    Ok(s)
}

impl ExternalEngine {
    pub fn new(kind: ExternalKind, command: Vec<String>) -> ExternalEngine {
        let command = if command.is_empty() {
            kind.default_command()
        } else {
            command
        };
        ExternalEngine { kind, command }
    }

    /// spark-sql in local mode with its warehouse and Derby metastore under `work`: what the
    /// Spark test tier and `cargo xtask bench sql` run (one JVM per statement).
    pub fn spark_local(launcher: &str, work: &Path) -> ExternalEngine {
        let w = work.display();
        let command = vec![
            launcher.to_owned(),
            "-S".into(),
            "--master".into(),
            "local[2]".into(),
            "--conf".into(),
            format!("spark.sql.warehouse.dir={w}/spark-warehouse"),
            "--conf".into(),
            format!(
                "spark.hadoop.javax.jdo.option.ConnectionURL=jdbc:derby:;databaseName={w}/metastore_db;create=true"
            ),
            "--conf".into(),
            format!("spark.driver.extraJavaOptions=-Dderby.system.home={w}"),
            "--conf".into(),
            "spark.ui.enabled=false".into(),
            "-e".into(),
            "{sql}".into(),
        ];
        ExternalEngine::new(ExternalKind::SparkSql, command)
    }

    /// Runs one statement; returns its stdout. Errors are classified from stderr.
    pub async fn run(&self, sql: &str) -> Result<String, SqlError> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(SqlError::Query("the engine command is empty".into()));
        };
        let args: Vec<String> = args.iter().map(|a| a.replace("{sql}", sql)).collect();
        let out = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| SqlError::Query(format!("cannot run `{program}`: {e}")))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(classify(&stderr, out.status.code()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `sql`, which must be one read-only query, into Parquet files in `out_dir`.
    pub async fn export(&self, sql: &str, out_dir: &Path) -> Result<ExportSummary, SqlError> {
        ferry_core::sql_guard::check_read_only(sql)?;
        let query = self.shell_safe(sql)?;
        let dir = quoted_path(out_dir)?;
        let statement = format!("INSERT OVERWRITE DIRECTORY '{dir}' STORED AS PARQUET {query}");
        self.run(&statement).await?;
        let mut summary = ExportSummary::default();
        let mut files: Vec<_> = std::fs::read_dir(out_dir)
            .map_err(|e| SqlError::io(out_dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                !n.starts_with('.') && !n.starts_with('_')
            })
            .collect();
        files.sort();
        for f in files {
            let (rows, fields) = parquet_summary(&f)?;
            summary.rows += rows;
            summary.bytes += std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            summary.parts += 1;
            summary.files.push(
                f.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            if summary.schema.is_empty() {
                summary.schema = fields;
            }
        }
        if summary.rows == 0 {
            return Err(SqlError::NoRows);
        }
        Ok(summary)
    }

    /// The query without its trailing `;`, once it is clear the shell will pass it to its
    /// parser as it is. The shells work on the text before the parser does, by their own
    /// rules (which differ between versions): they split it at `;`, substitute `${...}`
    /// variables and strip comments, each even inside strings in some versions. So an export
    /// for them holds none of those; `check_read_only` has already refused the rest.
    fn shell_safe<'a>(&self, sql: &'a str) -> Result<&'a str, SqlError> {
        let trimmed = sql.trim_end();
        let query = trimmed.strip_suffix(';').unwrap_or(trimmed);
        let reason = if query.contains(';') {
            Some(
                "its shell splits the text at every `;`, even one inside a string or a comment \
                 (write chr(59) for a `;` in a string)",
            )
        } else if query.contains("${") {
            Some(
                "its shell substitutes `${...}` variables (`${env:NAME}`, `${hiveconf:NAME}`), \
                 even inside strings, before the query is parsed",
            )
        } else if query.contains("--") || query.contains("/*") {
            Some("its shell strips comments by its own rules; remove the comments")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(SqlError::UnsafeForShell {
                engine: self.kind.command_name(),
                reason,
            }),
            None => Ok(query),
        }
    }

    pub async fn count_rows(
        &self,
        table: &TableRef,
        partition: Option<&PartitionSpec>,
    ) -> Result<u64, SqlError> {
        let mut sql = format!("SELECT COUNT(*) FROM {}.{}", table.database, table.table);
        if let Some(p) = partition {
            sql.push_str(&format!(" WHERE {} = '{}'", p.column, p.value));
        }
        let out = self.run(&sql).await?;
        out.lines()
            .rev()
            .find_map(|l| l.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                SqlError::Query(format!("no count in the engine's answer: {}", out.trim()))
            })
    }

    /// Creates the table if needed (columns from the parts' Parquet schema), then replaces the
    /// partition with the parts and verifies the count.
    pub async fn load_partition(
        &self,
        table: &TableRef,
        partition: &PartitionSpec,
        parts_dir: &Path,
        expected_rows: Option<u64>,
    ) -> Result<LoadSummary, SqlError> {
        let dir = quoted_path(parts_dir)?;
        let mut parts: Vec<_> = std::fs::read_dir(parts_dir)
            .map_err(|e| SqlError::io(parts_dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        parts.sort();
        let first = parts
            .first()
            .ok_or_else(|| SqlError::Query(format!("no Parquet parts in {dir}")))?;
        let columns = hive_columns(first)?;
        let mut rows = 0;
        for p in &parts {
            rows += parquet_summary(p)?.0;
        }
        let statement = format!(
            "CREATE DATABASE IF NOT EXISTS {db}; \
             CREATE TABLE IF NOT EXISTS {db}.{t} ({columns}) PARTITIONED BY ({pc} STRING) STORED AS PARQUET; \
             LOAD DATA LOCAL INPATH '{dir}' OVERWRITE INTO TABLE {db}.{t} PARTITION ({pc}='{pv}')",
            db = table.database,
            t = table.table,
            pc = partition.column,
            pv = partition.value,
        );
        self.run(&statement).await?;
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
        Ok(LoadSummary {
            table: table.to_string(),
            partition: partition.dir_name(),
            rows,
            parts: parts.len(),
        })
    }
}

fn classify(stderr: &str, code: Option<i32>) -> SqlError {
    let s = stderr.trim();
    let last = s
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(20)
        .collect::<Vec<_>>()
        .join("\n");
    if s.contains("TABLE_OR_VIEW_NOT_FOUND")
        || s.contains("Table or view not found")
        || s.contains("Table not found")
    {
        SqlError::MissingTable(last)
    } else if s.contains("PARSE_SYNTAX_ERROR")
        || s.contains("ParseException")
        || s.contains("mismatched input")
    {
        SqlError::Syntax(last)
    } else {
        SqlError::Query(format!("engine exited with {code:?}: {last}"))
    }
}

fn parquet_summary(path: &Path) -> Result<(u64, Vec<String>), SqlError> {
    let f = File::open(path).map_err(|e| SqlError::io(path, e))?;
    let r = SerializedFileReader::new(f).map_err(|e| SqlError::Parquet {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    let md = r.metadata().file_metadata();
    let fields = md
        .schema_descr()
        .columns()
        .iter()
        .map(|c| format!("{}: {:?}", c.name(), c.physical_type()))
        .collect();
    Ok((md.num_rows().max(0) as u64, fields))
}

/// `name TYPE, ...` for a Hive table over Parquet files like `path`.
fn hive_columns(path: &Path) -> Result<String, SqlError> {
    use parquet::basic::Type as Physical;
    let f = File::open(path).map_err(|e| SqlError::io(path, e))?;
    let r = SerializedFileReader::new(f).map_err(|e| SqlError::Parquet {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    let md = r.metadata().file_metadata();
    let mut cols = Vec::new();
    for c in md.schema_descr().columns() {
        let name = c.name();
        ferry_core::ident::check_identifier(name)?;
        let ty = match c.physical_type() {
            Physical::BYTE_ARRAY => "STRING",
            Physical::INT64 => "BIGINT",
            Physical::INT32 => "INT",
            Physical::DOUBLE => "DOUBLE",
            Physical::FLOAT => "FLOAT",
            Physical::BOOLEAN => "BOOLEAN",
            other => {
                return Err(SqlError::Query(format!(
                    "column `{name}` has a type Hive loads are not set up for: {other:?}"
                )));
            }
        };
        cols.push(format!("{name} {ty}"));
    }
    Ok(cols.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_are_classified() {
        assert!(matches!(
            classify(
                "[TABLE_OR_VIEW_NOT_FOUND] The table or view `nope` cannot be found.",
                Some(1)
            ),
            SqlError::MissingTable(_)
        ));
        assert!(matches!(
            classify(
                "[PARSE_SYNTAX_ERROR] Syntax error at or near 'SELEC'",
                Some(1)
            ),
            SqlError::Syntax(_)
        ));
        assert!(matches!(
            classify("java.lang.OutOfMemoryError", Some(1)),
            SqlError::Query(_)
        ));
        assert!(quoted_path(Path::new("/tmp/x'; DROP")).is_err());
    }

    #[test]
    fn only_text_the_shell_passes_on_unchanged_reaches_it() {
        let engine = ExternalEngine::new(ExternalKind::Beeline, Vec::new());
        assert_eq!(
            engine
                .shell_safe("SELECT * FROM t WHERE dt = '2026-01-22' ;\n")
                .expect("safe"),
            "SELECT * FROM t WHERE dt = '2026-01-22' "
        );
        for (sql, says) in [
            ("SELECT ';' AS x", "splits the text at every `;`"),
            (
                "SELECT '${env:AWS_SECRET_ACCESS_KEY}' AS x",
                "substitutes `${...}`",
            ),
            ("SELECT 1 -- note", "strips comments"),
            ("SELECT /* note */ 1", "strips comments"),
        ] {
            let err = engine.shell_safe(sql).expect_err(sql);
            assert!(err.is_permanent());
            let message = err.to_string();
            assert!(
                message.starts_with("this export cannot be handed to beeline safely: ")
                    && message.contains(says),
                "{sql}: {message}"
            );
        }
    }

    /// A refused export never starts the engine: the command would leave a file behind.
    #[tokio::test]
    async fn refused_exports_never_run_the_engine() {
        let work = tempfile::tempdir().expect("tmp");
        let ran = work.path().join("ran");
        let engine = ExternalEngine::new(
            ExternalKind::SparkSql,
            vec!["touch".into(), ran.display().to_string(), "{sql}".into()],
        );
        for sql in [
            "SELECT 1; DROP TABLE t",
            "COPY (SELECT 1) TO '/tmp/x'",
            "INSERT INTO t SELECT 1",
            "!sh rm -rf /",
            "SELECT 1 -- ;\n; DROP TABLE t",
            "WITH a AS (SELECT 1) INSERT OVERWRITE TABLE t SELECT * FROM a",
            "SELECT ';' AS x",
        ] {
            let err = engine
                .export(sql, &work.path().join("out"))
                .await
                .expect_err(sql);
            assert!(
                matches!(
                    err,
                    SqlError::NotReadOnly(_) | SqlError::UnsafeForShell { .. }
                ),
                "{sql}: {err}"
            );
            assert!(err.is_permanent());
        }
        assert!(!ran.exists(), "the engine was started");
        let err = engine
            .export("SELECT 1; DROP TABLE t", work.path())
            .await
            .expect_err("two statements");
        assert_eq!(
            err.to_string(),
            "an export runs exactly one statement; found a second one: `DROP TABLE t`"
        );
    }
}
