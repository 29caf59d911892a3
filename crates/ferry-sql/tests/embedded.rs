//! The embedded engine against a generated warehouse: exports, clear errors, idempotent loads.

use std::path::Path;

use ferry_sampledata::{SampleSpec, generate};
use ferry_sql::{EmbeddedEngine, ExportOptions, PartitionSpec, SqlError, TableRef};

fn warehouse(rows: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let mut spec = SampleSpec::new(rows, 11);
    spec.rows_per_part = 1_000;
    generate(dir.path(), &spec).expect("sample data");
    dir
}

fn parquet_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn export_with_a_where_on_the_partition_column_writes_parts_with_counts_and_schema() {
    let wh = warehouse(3_000);
    let engine = EmbeddedEngine::new(wh.path());
    let out = tempfile::tempdir().expect("tmp");
    let summary = engine
        .export(
            "SELECT sample_id, user_id, I1, C1, click, conversion FROM campaign_sample WHERE dt = '2026-01-21' AND sample_id % 2 = 0",
            out.path(),
            &ExportOptions { rows_per_part: 600 },
        )
        .await
        .expect("export");
    assert_eq!(summary.rows, 1_500);
    assert_eq!(summary.parts, 3);
    assert_eq!(
        parquet_files(out.path()),
        [
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );
    assert!(summary.bytes > 0);
    assert_eq!(summary.schema[0], "sample_id: Int64");
    assert!(
        summary
            .schema
            .iter()
            .any(|c| c == "C1: Utf8" || c == "C1: Utf8View"),
        "{:?}",
        summary.schema
    );

    // The partition column itself is queryable.
    let infer = engine
        .export(
            "SELECT * FROM campaign_infer WHERE dt = '2026-01-22'",
            out.path(),
            &ExportOptions::default(),
        )
        .await
        .expect("infer export");
    assert_eq!(infer.rows, 750);
    assert_eq!(
        parquet_files(out.path()),
        ["part-00000.parquet"],
        "earlier parts were replaced"
    );
}

#[tokio::test]
async fn missing_tables_bad_sql_and_empty_results_are_clear_errors() {
    let wh = warehouse(1_000);
    let engine = EmbeddedEngine::new(wh.path());
    let out = tempfile::tempdir().expect("tmp");
    let err = engine
        .export(
            "SELECT * FROM campaign_nowhere",
            out.path(),
            &ExportOptions::default(),
        )
        .await
        .expect_err("missing");
    assert!(matches!(err, SqlError::MissingTable(_)), "{err}");
    assert!(
        err.to_string().starts_with("source data not ready:")
            && err.to_string().contains("campaign_nowhere"),
        "{err}"
    );
    assert!(err.is_permanent());

    let err = engine
        .export(
            "SELECT * FROM campaign_sample WHERE",
            out.path(),
            &ExportOptions::default(),
        )
        .await
        .expect_err("syntax");
    assert!(matches!(err, SqlError::Syntax(_)), "{err}");
    assert!(err.is_permanent());

    // Not a query at all: refused before DataFusion sees it.
    let err = engine
        .export(
            "SELEC * FROM campaign_sample",
            out.path(),
            &ExportOptions::default(),
        )
        .await
        .expect_err("not a query");
    assert_eq!(
        err.to_string(),
        "an export runs one SELECT or WITH query; this one starts with `SELEC`"
    );
    assert!(err.is_permanent());

    let err = engine
        .export(
            "SELECT * FROM campaign_sample WHERE dt = '1999-01-01'",
            out.path(),
            &ExportOptions::default(),
        )
        .await
        .expect_err("no rows");
    assert_eq!(
        err.to_string(),
        "source data not ready: the query returned 0 rows"
    );
}

async fn results(engine: &EmbeddedEngine, rows_per_part: usize) -> tempfile::TempDir {
    let out = tempfile::tempdir().expect("tmp");
    engine
        .export(
            "SELECT sample_id, user_id, CAST(sample_id % 100 AS DOUBLE) / 100.0 AS click_score FROM campaign_infer",
            out.path(),
            &ExportOptions { rows_per_part },
        )
        .await
        .expect("results");
    out
}

#[tokio::test]
async fn loading_twice_or_after_a_crash_never_duplicates_rows() {
    let wh = warehouse(4_000);
    let engine = EmbeddedEngine::new(wh.path());
    let parts = results(&engine, 400).await;
    let table = TableRef::parse("prod.campaign_scores").expect("name");
    let partition = PartitionSpec::parse("dt=2026-01-22").expect("partition");

    let first = engine
        .load_partition(&table, &partition, parts.path(), Some(1_000))
        .await
        .expect("load");
    assert_eq!((first.rows, first.parts), (1_000, 3));
    engine
        .load_partition(&table, &partition, parts.path(), Some(1_000))
        .await
        .expect("load again");
    assert_eq!(
        engine
            .count_rows(&table, Some(&partition))
            .await
            .expect("count"),
        1_000
    );
    assert_eq!(engine.count_rows(&table, None).await.expect("count"), 1_000);

    // Crash between the two renames of the swap: the live partition is gone, the staged one
    // is complete. The next load (the resumed step) recovers and still counts 1,000.
    let table_dir = wh.path().join("prod.db/campaign_scores");
    let live = table_dir.join("dt=2026-01-22");
    std::fs::rename(&live, table_dir.join(".trash-dt=2026-01-22")).expect("simulate");
    std::fs::create_dir_all(table_dir.join(".staging-dt=2026-01-22")).expect("staging");
    for f in std::fs::read_dir(parts.path()).expect("parts").flatten() {
        std::fs::copy(
            f.path(),
            table_dir.join(".staging-dt=2026-01-22").join(f.file_name()),
        )
        .expect("copy");
    }
    std::fs::write(table_dir.join(".staging-dt=2026-01-22/_FERRY_STAGED"), b"").expect("mark");
    engine
        .load_partition(&table, &partition, parts.path(), Some(1_000))
        .await
        .expect("resumed load");
    assert_eq!(
        engine
            .count_rows(&table, Some(&partition))
            .await
            .expect("count"),
        1_000
    );

    // Crash while staging (no completion mark): the half-staged copy is discarded.
    std::fs::create_dir_all(table_dir.join(".staging-dt=2026-01-22")).expect("staging");
    std::fs::copy(
        parts.path().join("part-00000.parquet"),
        table_dir.join(".staging-dt=2026-01-22/part-00000.parquet"),
    )
    .expect("copy");
    engine
        .load_partition(&table, &partition, parts.path(), Some(1_000))
        .await
        .expect("resumed load");
    assert_eq!(
        engine
            .count_rows(&table, Some(&partition))
            .await
            .expect("count"),
        1_000
    );
    let leftovers: Vec<_> = std::fs::read_dir(&table_dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers,
        [std::ffi::OsString::from("dt=2026-01-22")],
        "no staging or trash left behind"
    );

    // A wrong expectation is caught by the verification.
    let err = engine
        .load_partition(&table, &partition, parts.path(), Some(999))
        .await
        .expect_err("mismatch");
    assert!(
        matches!(
            err,
            SqlError::RowCountMismatch {
                expected: 999,
                found: 1_000,
                ..
            }
        ),
        "{err}"
    );

    let preview = engine
        .preview(&table, Some(&partition), 3)
        .await
        .expect("preview");
    assert_eq!(preview.len(), 3);
    assert!(preview[0].get("click_score").is_some(), "{preview:?}");
}

#[tokio::test]
async fn names_that_could_inject_sql_are_refused_before_anything_runs() {
    let err = SqlError::from(TableRef::parse("a; DROP TABLE b").expect_err("refused"));
    assert_eq!(
        err.to_string(),
        "invalid identifier `a; DROP TABLE b`: the table part is not a plain identifier"
    );
    assert!(err.is_permanent());
    assert!(PartitionSpec::parse("dt=x' OR '1'='1").is_err());
}

/// An export is one read: anything else is refused with a message naming what was found,
/// nothing is written, and loads (which write files, not SQL) keep working.
#[tokio::test]
async fn exports_run_one_read_only_query() {
    let wh = warehouse(1_000);
    let engine = EmbeddedEngine::new(wh.path());
    let out = tempfile::tempdir().expect("tmp");
    let copy_to = out.path().join("copied");
    let before = engine
        .count_rows(
            &TableRef::parse("default.campaign_infer").expect("name"),
            None,
        )
        .await
        .expect("count");
    for (sql, message) in [
        (
            "SELECT 1; DROP TABLE campaign_infer".to_owned(),
            "an export runs exactly one statement; found a second one: `DROP TABLE campaign_infer`",
        ),
        (
            "SELECT 1 -- ;\n; DROP TABLE campaign_infer".to_owned(),
            "an export runs exactly one statement; found a second one: `DROP TABLE campaign_infer`",
        ),
        (
            format!("COPY (SELECT 1) TO '{}'", copy_to.display()),
            "`COPY` is not a read: an export runs one SELECT or WITH query",
        ),
        (
            "INSERT INTO campaign_infer SELECT * FROM campaign_infer".to_owned(),
            "`INSERT` is not a read: an export runs one SELECT or WITH query",
        ),
        (
            "!sh rm -rf /".to_owned(),
            "`!sh rm -rf /` is a command of the SQL shell (a line starting with `!`), not a query",
        ),
    ] {
        let err = engine
            .export(&sql, out.path(), &ExportOptions::default())
            .await
            .expect_err(&sql);
        assert_eq!(err.to_string(), message, "{sql}");
        assert!(err.is_permanent(), "{sql}");
    }
    assert!(!copy_to.exists());
    assert_eq!(
        engine
            .count_rows(
                &TableRef::parse("default.campaign_infer").expect("name"),
                None
            )
            .await
            .expect("count"),
        before
    );

    for sql in [
        "WITH a AS (SELECT sample_id FROM campaign_infer) SELECT * FROM a",
        "SELECT ';' AS x, sample_id FROM campaign_infer;",
    ] {
        let summary = engine
            .export(sql, out.path(), &ExportOptions::default())
            .await
            .expect(sql);
        assert_eq!(summary.rows, before, "{sql}");
    }

    // Loading into a table still works: it is not an export.
    let table = TableRef::parse("results.scores").expect("name");
    let partition = PartitionSpec::parse("dt=2026-01-22").expect("partition");
    let loaded = engine
        .load_partition(&table, &partition, out.path(), Some(before))
        .await
        .expect("load");
    assert_eq!(loaded.rows, before);
}

/// The same query over the same files writes the same rows in the same order every time, so
/// a model trained on an export is reproducible (and a re-run after a crash matches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_of_a_multi_file_table_are_identical_run_after_run() {
    let wh = warehouse(6_000); // six files of 1,000 rows in the training partition
    let engine = EmbeddedEngine::new(wh.path());
    let mut first: Option<Vec<Vec<u8>>> = None;
    for run in 0..6 {
        let out = tempfile::tempdir().expect("tmp");
        engine
            .export(
                "SELECT * FROM campaign_sample WHERE dt = '2026-01-21'",
                out.path(),
                &ExportOptions {
                    rows_per_part: 1_000,
                },
            )
            .await
            .expect("export");
        let bytes: Vec<Vec<u8>> = parquet_files(out.path())
            .iter()
            .map(|f| std::fs::read(out.path().join(f)).expect("read part"))
            .collect();
        match &first {
            None => first = Some(bytes),
            Some(f) => assert!(f == &bytes, "run {run} wrote different parts"),
        }
    }
}
