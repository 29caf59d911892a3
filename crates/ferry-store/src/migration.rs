//! Schema migrations. A migration, once released, is never edited: schema changes go in a
//! new `mNNNN_*` module appended to `Migrator::migrations`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_workflow_graphs::Migration),
            Box::new(m0003_step_timeout::Migration),
            Box::new(m0004_agent_cursors::Migration),
            Box::new(m0005_task_log_archives::Migration),
            Box::new(m0006_tokens_and_audit::Migration),
            Box::new(m0007_capacity::Migration),
            Box::new(m0008_schedules::Migration),
        ]
    }
}

fn a(name: &str) -> Alias {
    Alias::new(name)
}

#[allow(elided_lifetimes_in_paths)] // the trait is declared with an elided lifetime
mod m0001_initial {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m0001_initial"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table(a("workflows"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(string_uniq(a("name")))
                        .col(text(a("description")))
                        .col(text(a("definition")))
                        .col(timestamp_with_time_zone(a("created_at")))
                        .col(timestamp_with_time_zone(a("updated_at")))
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(a("workflow_tasks"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(string_len(a("name"), 255))
                        .col(big_integer(a("workflow_id")))
                        .col(string_len(a("workflow_name"), 255))
                        .col(string_len_null(a("experiment_id"), 100))
                        .col(text_null(a("sample_sql")))
                        .col(text_null(a("infer_sql")))
                        .col(string_len_null(a("hdfs_path"), 500))
                        .col(string_len_null(a("hive_table"), 255))
                        .col(string_len(a("status"), 50).default("pending"))
                        .col(text_null(a("status_reason")))
                        .col(integer(a("current_step")).default(0))
                        .col(integer(a("total_steps")).default(5))
                        .col(string_len_null(a("training_server"), 100))
                        .col(string_len_null(a("inference_server"), 100))
                        .col(text(a("params")))
                        .col(timestamp_with_time_zone(a("created_at")))
                        .col(timestamp_with_time_zone(a("updated_at")))
                        .col(timestamp_with_time_zone_null(a("started_at")))
                        .col(timestamp_with_time_zone_null(a("completed_at")))
                        .foreign_key(
                            ForeignKey::create()
                                .from(a("workflow_tasks"), a("workflow_id"))
                                .to(a("workflows"), a("id")),
                        )
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(a("workflow_steps"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(big_integer(a("task_id")))
                        .col(string_len(a("step_name"), 50))
                        .col(integer(a("step_order")))
                        .col(string_len(a("kind"), 50))
                        .col(text(a("params")))
                        .col(string(a("placement")))
                        .col(text(a("depends_on")))
                        .col(string_len(a("exec_constraint"), 20))
                        .col(string_len(a("status"), 50).default("pending"))
                        .col(string_null(a("agent_name")))
                        .col(string_null(a("job_id")))
                        .col(integer(a("attempt")).default(0))
                        .col(integer(a("retry_count")).default(0))
                        .col(integer(a("max_retries")))
                        .col(big_integer(a("backoff_ms")))
                        .col(timestamp_with_time_zone_null(a("next_attempt_at")))
                        .col(timestamp_with_time_zone_null(a("started_at")))
                        .col(timestamp_with_time_zone_null(a("completed_at")))
                        .col(text_null(a("error_message")))
                        .col(text_null(a("checkpoint_data")))
                        .col(text_null(a("progress")))
                        .col(timestamp_with_time_zone(a("updated_at")))
                        .foreign_key(
                            ForeignKey::create()
                                .from(a("workflow_steps"), a("task_id"))
                                .to(a("workflow_tasks"), a("id")),
                        )
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(a("transfer_chunks"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(big_integer(a("task_id")))
                        .col(string_len(a("step_name"), 50))
                        .col(string_len(a("chunk_id"), 100))
                        .col(string_len_null(a("source_path"), 500))
                        .col(string_len_null(a("dest_path"), 500))
                        .col(big_integer_null(a("offset")))
                        .col(big_integer_null(a("size")))
                        .col(string_len_null(a("checksum"), 64))
                        .col(string_len(a("status"), 50).default("pending"))
                        .col(timestamp_with_time_zone_null(a("started_at")))
                        .col(timestamp_with_time_zone_null(a("completed_at")))
                        .col(integer(a("retry_count")).default(0))
                        .col(text_null(a("error_message")))
                        .foreign_key(
                            ForeignKey::create()
                                .from(a("transfer_chunks"), a("task_id"))
                                .to(a("workflow_tasks"), a("id")),
                        )
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(a("task_logs"))
                        .if_not_exists()
                        .col(big_integer(a("id")).primary_key())
                        .col(big_integer(a("task_id")))
                        .col(string_len(a("step_name"), 50))
                        .col(timestamp_with_time_zone(a("ts")))
                        .col(string_len(a("level"), 10))
                        .col(string_len(a("source"), 20))
                        .col(text(a("message")))
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(a("step_metrics"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(big_integer(a("task_id")))
                        .col(string_len(a("step_name"), 50))
                        .col(string_len(a("name"), 100))
                        .col(double(a("value")))
                        .col(big_integer(a("idx")))
                        .col(timestamp_with_time_zone(a("ts")))
                        .to_owned(),
                )
                .await?;
            // Seed 000 Appendix B's indexes, plus the ones the engine's queries need.
            let indexes = [
                ("idx_task_status", "workflow_tasks", &["status"][..], false),
                (
                    "idx_step_status",
                    "workflow_steps",
                    &["task_id", "status"][..],
                    false,
                ),
                (
                    "idx_step_name",
                    "workflow_steps",
                    &["task_id", "step_name"][..],
                    true,
                ),
                (
                    "idx_transfer_status",
                    "transfer_chunks",
                    &["task_id", "status"][..],
                    false,
                ),
                (
                    "idx_transfer_chunk",
                    "transfer_chunks",
                    &["task_id", "step_name", "chunk_id"][..],
                    true,
                ),
                ("idx_log_task", "task_logs", &["task_id", "id"][..], false),
                (
                    "idx_metric_task",
                    "step_metrics",
                    &["task_id", "step_name"][..],
                    false,
                ),
            ];
            for (name, table, cols, unique) in indexes {
                let mut idx = Index::create();
                idx.name(name).table(a(table)).if_not_exists();
                for c in cols {
                    idx.col(a(c));
                }
                if unique {
                    idx.unique();
                }
                manager.create_index(idx.to_owned()).await?;
            }
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            for t in [
                "step_metrics",
                "task_logs",
                "transfer_chunks",
                "workflow_steps",
                "workflow_tasks",
                "workflows",
            ] {
                manager
                    .drop_table(Table::drop().table(a(t)).if_exists().to_owned())
                    .await?;
            }
            Ok(())
        }
    }
}

#[allow(elided_lifetimes_in_paths)] // the trait is declared with an elided lifetime
mod m0002_workflow_graphs {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m0002_workflow_graphs"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table(a("workflow_graphs"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(string_uniq(a("name")))
                        .col(text(a("definition")))
                        .col(timestamp_with_time_zone(a("created_at")))
                        .col(timestamp_with_time_zone(a("updated_at")))
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(a("workflow_graphs")).to_owned())
                .await
        }
    }
}

/// A step's own time limit (`timeout_secs` in its definition), enforced by the engine.
#[allow(elided_lifetimes_in_paths)]
mod m0003_step_timeout {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m0003_step_timeout"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .alter_table(
                    Table::alter()
                        .table(a("workflow_steps"))
                        .add_column(big_integer_null(a("timeout_secs")))
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .alter_table(
                    Table::alter()
                        .table(a("workflow_steps"))
                        .drop_column(a("timeout_secs"))
                        .to_owned(),
                )
                .await
        }
    }
}

/// How far each agent's numbered events are stored, so events sent again after a reconnect
/// (or a coordinator restart) are stored once.
#[allow(elided_lifetimes_in_paths)]
mod m0004_agent_cursors {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m0004_agent_cursors"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table(a("agent_cursors"))
                        .if_not_exists()
                        .col(string_len(a("agent_name"), 255).primary_key())
                        .col(big_integer(a("instance")))
                        .col(big_integer(a("seq")))
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(a("agent_cursors")).to_owned())
                .await
        }
    }
}

/// Older log lines of a task, rotated out of `task_logs` past `workflow.log_rotation_size`:
/// gzip-compressed JSON lines, still served in order by the log API.
#[allow(elided_lifetimes_in_paths)]
mod m0005_task_log_archives {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m0005_task_log_archives"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table(a("task_log_archives"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(big_integer(a("task_id")))
                        .col(big_integer(a("first_id")))
                        .col(big_integer(a("last_id")))
                        .col(big_integer(a("lines")))
                        .col(big_integer(a("bytes")))
                        .col(blob(a("data")))
                        .col(timestamp_with_time_zone(a("created_at")))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("idx_task_log_archives_task")
                        .table(a("task_log_archives"))
                        .col(a("task_id"))
                        .col(a("first_id"))
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(a("task_log_archives")).to_owned())
                .await
        }
    }
}

#[allow(elided_lifetimes_in_paths)]
mod m0006_tokens_and_audit {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m0006_tokens_and_audit"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table(a("api_tokens"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(string_len(a("name"), 100))
                        .col(string_len(a("roles"), 100))
                        .col(string_len_uniq(a("token_hash"), 64))
                        .col(string_len(a("created_by"), 100))
                        .col(timestamp_with_time_zone(a("created_at")))
                        .col(timestamp_with_time_zone_null(a("revoked_at")))
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(a("audit_log"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(timestamp_with_time_zone(a("ts")))
                        .col(string_len(a("actor"), 100))
                        .col(string_len(a("action"), 50))
                        .col(string_len(a("target"), 255))
                        .col(text(a("detail")))
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .drop_table(Table::drop().table(a("audit_log")).to_owned())
                .await?;
            manager
                .drop_table(Table::drop().table(a("api_tokens")).to_owned())
                .await
        }
    }
}

/// Capacity: a step's `resources` override and the GPU ids it was given, a task's priority.
#[allow(elided_lifetimes_in_paths)] // the trait is declared with an elided lifetime
mod m0007_capacity {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m0007_capacity"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            // One column per statement: SQLite alters a table one column at a time.
            for column in ["resources", "gpu_ids"] {
                manager
                    .alter_table(
                        Table::alter()
                            .table(a("workflow_steps"))
                            .add_column(text_null(a(column)))
                            .to_owned(),
                    )
                    .await?;
            }
            manager
                .alter_table(
                    Table::alter()
                        .table(a("workflow_tasks"))
                        .add_column(integer(a("priority")).default(0))
                        .to_owned(),
                )
                .await
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            for column in ["resources", "gpu_ids"] {
                manager
                    .alter_table(
                        Table::alter()
                            .table(a("workflow_steps"))
                            .drop_column(a(column))
                            .to_owned(),
                    )
                    .await?;
            }
            manager
                .alter_table(
                    Table::alter()
                        .table(a("workflow_tasks"))
                        .drop_column(a("priority"))
                        .to_owned(),
                )
                .await
        }
    }
}

/// Schedules, their runs (unique per schedule and logical date: a run is never created twice)
/// and backfills.
#[allow(elided_lifetimes_in_paths)] // the trait is declared with an elided lifetime
mod m0008_schedules {
    use super::*;

    pub struct Migration;

    impl MigrationName for Migration {
        fn name(&self) -> &str {
            "m0008_schedules"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for Migration {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .create_table(
                    Table::create()
                        .table(a("schedules"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(string_uniq(a("name")))
                        .col(string_len(a("target"), 20))
                        .col(string_null(a("workflow")))
                        .col(text_null(a("request")))
                        .col(text(a("params")))
                        .col(string(a("cron")))
                        .col(string(a("timezone")))
                        .col(string_len(a("catchup"), 20))
                        .col(integer(a("max_catchup")))
                        .col(string_len(a("concurrency"), 20))
                        .col(integer(a("priority")).default(0))
                        .col(boolean(a("paused")).default(false))
                        .col(timestamp_with_time_zone_null(a("cursor")))
                        .col(timestamp_with_time_zone(a("created_at")))
                        .col(timestamp_with_time_zone(a("updated_at")))
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(a("backfills"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(big_integer(a("schedule_id")))
                        .col(string_len(a("start_date"), 10))
                        .col(string_len(a("end_date"), 10))
                        .col(boolean(a("reverse")).default(false))
                        .col(integer(a("max_active")))
                        .col(integer(a("priority")).default(0))
                        .col(string_len(a("reprocess"), 20))
                        .col(string_len(a("status"), 20))
                        .col(timestamp_with_time_zone(a("created_at")))
                        .col(timestamp_with_time_zone(a("updated_at")))
                        .col(timestamp_with_time_zone_null(a("finished_at")))
                        .foreign_key(
                            ForeignKey::create()
                                .from(a("backfills"), a("schedule_id"))
                                .to(a("schedules"), a("id")),
                        )
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(a("schedule_runs"))
                        .if_not_exists()
                        .col(big_pk_auto(a("id")))
                        .col(big_integer(a("schedule_id")))
                        .col(timestamp_with_time_zone(a("logical_date")))
                        .col(big_integer_null(a("task_id")))
                        .col(big_integer_null(a("backfill_id")))
                        .col(integer(a("attempts")).default(0))
                        .col(timestamp_with_time_zone(a("created_at")))
                        .col(timestamp_with_time_zone(a("updated_at")))
                        .foreign_key(
                            ForeignKey::create()
                                .from(a("schedule_runs"), a("schedule_id"))
                                .to(a("schedules"), a("id")),
                        )
                        .foreign_key(
                            ForeignKey::create()
                                .from(a("schedule_runs"), a("task_id"))
                                .to(a("workflow_tasks"), a("id")),
                        )
                        .foreign_key(
                            ForeignKey::create()
                                .from(a("schedule_runs"), a("backfill_id"))
                                .to(a("backfills"), a("id")),
                        )
                        .to_owned(),
                )
                .await?;
            // The unique index is the guarantee that a run is never created twice; it also
            // serves every lookup by schedule (its first column).
            let indexes = [
                (
                    "idx_schedule_run_date",
                    "schedule_runs",
                    &["schedule_id", "logical_date"][..],
                    true,
                ),
                (
                    "idx_schedule_run_backfill",
                    "schedule_runs",
                    &["backfill_id"][..],
                    false,
                ),
                (
                    "idx_backfill_schedule",
                    "backfills",
                    &["schedule_id"][..],
                    false,
                ),
                ("idx_backfill_status", "backfills", &["status"][..], false),
            ];
            for (name, table, cols, unique) in indexes {
                let mut idx = Index::create();
                idx.name(name).table(a(table)).if_not_exists();
                for c in cols {
                    idx.col(a(c));
                }
                if unique {
                    idx.unique();
                }
                manager.create_index(idx.to_owned()).await?;
            }
            Ok(())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            for t in ["schedule_runs", "backfills", "schedules"] {
                manager
                    .drop_table(Table::drop().table(a(t)).if_exists().to_owned())
                    .await?;
            }
            Ok(())
        }
    }
}
