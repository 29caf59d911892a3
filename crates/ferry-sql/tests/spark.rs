//! The same export and load cases against real Spark (spark-sql in local mode with a local
//! Derby metastore), when `FERRY_TEST_SPARK_SQL` names a spark-sql launcher (`.ci/run`
//! installs pyspark from PyPI and sets it).

use std::path::Path;

use ferry_sampledata::{SampleSpec, generate};
use ferry_sql::{EmbeddedEngine, ExportOptions, ExternalEngine, PartitionSpec, SqlError, TableRef};

fn spark(work: &Path, launcher: &str) -> ExternalEngine {
    ExternalEngine::spark_local(launcher, work)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_sql_exports_and_loads_like_the_embedded_engine() {
    let Ok(launcher) = std::env::var("FERRY_TEST_SPARK_SQL") else {
        eprintln!("FERRY_TEST_SPARK_SQL is not set: the Spark tier is skipped");
        return;
    };
    let work = tempfile::tempdir().expect("tmp");
    let mut spec = SampleSpec::new(2_000, 3);
    spec.rows_per_part = 1_000;
    generate(&work.path().join("warehouse"), &spec).expect("sample data");
    let engine = spark(work.path(), &launcher);
    let table_dir = work.path().join("warehouse/default.db/campaign_sample");

    // Export with a WHERE on the partition column (discovered from the dt=... directories).
    let query = |from: &str| {
        format!(
            "SELECT sample_id, user_id, C1, click FROM {from} WHERE dt = '2026-01-21' AND click = 1"
        )
    };
    let out = work.path().join("spark_export");
    let spark_export = engine
        .export(&query(&format!("parquet.`{}`", table_dir.display())), &out)
        .await
        .expect("spark export");
    let embedded = EmbeddedEngine::new(work.path().join("warehouse"));
    let reference = embedded
        .export(
            &query("campaign_sample"),
            &work.path().join("embedded_export"),
            &ExportOptions::default(),
        )
        .await
        .expect("embedded export");
    assert_eq!(
        spark_export.rows, reference.rows,
        "both engines select the same rows"
    );
    assert!(spark_export.parts >= 1);

    let err = engine
        .export("SELECT * FROM campaign_nowhere", &work.path().join("x"))
        .await
        .expect_err("missing");
    assert!(matches!(err, SqlError::MissingTable(_)), "{err}");
    let err = engine
        .export("SELECT (1", &work.path().join("y"))
        .await
        .expect_err("syntax");
    assert!(matches!(err, SqlError::Syntax(_)), "{err}");

    // Load twice into a real Hive table partition: the same row count both times.
    let table = TableRef::parse("scores.campaign_copy").expect("name");
    let partition = PartitionSpec::parse("dt=2026-01-21").expect("partition");
    let first = engine
        .load_partition(&table, &partition, &out, Some(spark_export.rows))
        .await
        .expect("load");
    assert_eq!(first.rows, spark_export.rows);
    engine
        .load_partition(&table, &partition, &out, Some(spark_export.rows))
        .await
        .expect("load again");
    assert_eq!(
        engine
            .count_rows(&table, Some(&partition))
            .await
            .expect("count"),
        spark_export.rows
    );
}
