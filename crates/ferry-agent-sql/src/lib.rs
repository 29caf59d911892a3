//! The data-source host's step kinds, `sql_export` and `hive_load`, on the embedded engine.
//! A separate crate (not a feature of `ferry-agent`) so that only the source agent links
//! DataFusion, however the workspace is built.

use std::sync::Arc;

use ferry_agent::daemon::{AgentArgs, run_daemon_with};
use ferry_agent::policy::Policy;
use ferry_agent::{AgentError, Executor, JobContext, JobError, JobFuture};
use ferry_core::Role;
use ferry_core::config::FerryConfig;
use ferry_core::kinds::{self, HiveLoadParams, SqlExportParams};
use ferry_sql::{ExportOptions, PartitionSpec, SqlEngine, SqlError, TableRef};

/// Runs `ferry-source-agentd`: the generic kinds plus the SQL ones.
pub async fn run_source_agent(config: FerryConfig, args: AgentArgs) -> Result<(), AgentError> {
    let engine = Arc::new(
        SqlEngine::from_config(&config.sql).map_err(|e| AgentError::Setup(e.to_string()))?,
    );
    let settings = ferry_agent::daemon::settings(Role::DataSource, &config, &args);
    let policy = ferry_agent::daemon::policy(&config, &settings);
    let extra: Vec<Arc<dyn Executor>> = vec![
        Arc::new(SqlExportExecutor {
            engine: engine.clone(),
            rows_per_part: config.sql.rows_per_part,
            policy: policy.clone(),
        }),
        Arc::new(HiveLoadExecutor {
            engine,
            production_tables: config.sql.production_tables.clone(),
            policy,
        }),
    ];
    run_daemon_with(Role::DataSource, config, args, extra).await
}

fn job_error(e: SqlError) -> JobError {
    if e.is_permanent() {
        JobError::permanent(e.to_string())
    } else {
        JobError::transient(e.to_string())
    }
}

/// Runs the step's future unless the job is cancelled first.
async fn cancellable<T>(
    ctx: &JobContext,
    work: impl std::future::Future<Output = T>,
) -> Result<T, JobError> {
    tokio::select! {
        r = work => Ok(r),
        _ = ctx.cancellation().cancelled() => Err(JobError::transient("cancelled")),
    }
}

pub struct SqlExportExecutor {
    engine: Arc<SqlEngine>,
    rows_per_part: usize,
    /// `output_dir` must lie under the agent's roots.
    policy: Policy,
}

impl Executor for SqlExportExecutor {
    fn kind(&self) -> &'static str {
        kinds::SQL_EXPORT
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let engine = self.engine.clone();
        let default_rows = self.rows_per_part;
        let policy = self.policy.clone();
        Box::pin(async move {
            let p: SqlExportParams = ctx.params()?;
            // Checked at task creation too; this is the rendered text, checked where it runs.
            ferry_core::sql_guard::check_read_only(&p.sql)
                .map_err(|e| JobError::permanent(e.to_string()))?;
            // Earlier parts in it are removed: checked (symlinks resolved) before that.
            let out = policy.confine_replaced("output directory", &p.output_dir)?;
            ctx.info(format!("executing SQL on the {} engine...", engine.name()));
            let started = std::time::Instant::now();
            let opts = ExportOptions {
                rows_per_part: p.rows_per_part.unwrap_or(default_rows),
            };
            let summary = cancellable(&ctx, engine.export(&p.sql, &out, &opts))
                .await?
                .map_err(job_error)?;
            let secs = started.elapsed().as_secs_f64();
            ctx.info(format!(
                "exported {} rows to {} ({} parts, {} bytes) in {:.1}s",
                summary.rows,
                out.display(),
                summary.parts,
                summary.bytes,
                secs
            ));
            ctx.metric("export_rows", summary.rows as f64, 0);
            ctx.metric("export_bytes", summary.bytes as f64, 0);
            ctx.progress(&serde_json::json!({
                "rows": summary.rows, "parts": summary.parts, "bytes": summary.bytes,
                "schema": summary.schema, "output_dir": out,
            }));
            ctx.save_checkpoint(&serde_json::json!({"rows": summary.rows, "files": summary.files}));
            Ok(())
        })
    }
}

pub struct HiveLoadExecutor {
    engine: Arc<SqlEngine>,
    /// `sql.production_tables`: loads into these need an approval first.
    production_tables: Vec<String>,
    /// `parts_dir` must lie under the agent's roots.
    policy: Policy,
}

impl Executor for HiveLoadExecutor {
    fn kind(&self) -> &'static str {
        kinds::HIVE_LOAD
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let engine = self.engine.clone();
        let production = self.production_tables.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let p: HiveLoadParams = ctx.params()?;
            let table =
                TableRef::parse(&p.table).map_err(|e| JobError::permanent(e.to_string()))?;
            let partition = PartitionSpec::parse(&p.partition)
                .map_err(|e| JobError::permanent(e.to_string()))?;
            let parts = policy.confine("parts directory", &p.parts_dir)?;
            let parts = parts.as_path();
            if !parts.is_dir() {
                return Err(JobError::permanent(format!(
                    "parts directory {} does not exist",
                    parts.display()
                )));
            }
            if let Some(pattern) = production
                .iter()
                .find(|pat| ferry_core::ident::table_matches(pat, &table))
            {
                match ctx.approved_by() {
                    Some(who) => ctx.info(format!(
                        "{table} is a production table ({pattern}); load approved by {who}"
                    )),
                    None => {
                        // Show the approver what would be written.
                        let preview = ferry_sql::preview_parts(parts, 5)
                            .await
                            .map_err(job_error)?;
                        ctx.progress(&serde_json::json!({
                            "awaiting_approval": true, "table": table.to_string(),
                            "partition": partition.dir_name(), "preview": preview,
                        }));
                        ctx.info(format!(
                            "preview of the rows to load into {table}: {}",
                            serde_json::Value::Array(preview)
                        ));
                        return Err(JobError::approval(format!(
                            "loading into production table {table} (matches `{pattern}`) needs an approval"
                        )));
                    }
                }
            }
            ctx.info(format!(
                "loading data to Hive table {table} ({})...",
                partition.dir_name()
            ));
            let summary = cancellable(
                &ctx,
                engine.load_partition(&table, &partition, parts, p.expected_rows),
            )
            .await?
            .map_err(job_error)?;
            ctx.info(format!(
                "loaded {} rows in {} parts into {table} {}{}",
                summary.rows,
                summary.parts,
                summary.partition,
                if p.expected_rows.is_some() {
                    "; row count verified"
                } else {
                    ""
                }
            ));
            ctx.metric("load_rows", summary.rows as f64, 0);
            ctx.progress(&serde_json::json!({"table": summary.table, "partition": summary.partition, "rows": summary.rows}));
            Ok(())
        })
    }
}
