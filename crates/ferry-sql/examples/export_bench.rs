//! The export benchmark behind `cargo xtask bench sql` (built in release): generates the
//! sample warehouse, then exports `campaign_sample` with the embedded engine and reports
//! rows/s. Usage: `export_bench ROWS WORKDIR [SPARK_SQL_LAUNCHER]`; with a launcher the same
//! queries also run on spark-sql in local mode, side by side, over the same Parquet files.

use std::time::Instant;

use ferry_sampledata::{SampleSpec, generate};
use ferry_sql::{EmbeddedEngine, ExportOptions, ExternalEngine};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args
        .next()
        .ok_or("usage: export_bench ROWS WORKDIR")?
        .parse()?;
    let work = std::path::PathBuf::from(args.next().ok_or("usage: export_bench ROWS WORKDIR")?);
    let spark_launcher = args.next();
    let warehouse = work.join("warehouse");
    let t = Instant::now();
    let mut spec = SampleSpec::new(rows, 2024);
    spec.infer_rows = rows / 10;
    generate(&warehouse, &spec)?;
    println!("generated {rows} rows in {:.1}s", t.elapsed().as_secs_f64());

    let engine = EmbeddedEngine::new(&warehouse);
    let out = work.join("export");
    let queries = [
        (
            "full rows (41 columns)",
            "SELECT * FROM campaign_sample WHERE dt = '2026-01-21'",
        ),
        (
            "projection + filter",
            "SELECT sample_id, user_id, I1, C1, C2, click FROM campaign_sample WHERE dt = '2026-01-21' AND click = 1",
        ),
    ];
    for (label, sql) in queries {
        // One warm-up run, then the measured one.
        engine.export(sql, &out, &ExportOptions::default()).await?;
        let t = Instant::now();
        let s = engine.export(sql, &out, &ExportOptions::default()).await?;
        let secs = t.elapsed().as_secs_f64();
        let embedded_rate = s.rows as f64 / secs;
        println!(
            "embedded export, {label}: {} rows in {secs:.2}s = {embedded_rate:.0} rows/s ({} parts, {:.1} MB)",
            s.rows,
            s.parts,
            s.bytes as f64 / 1e6
        );
        if let Some(launcher) = &spark_launcher {
            // Spark reads the same files through its parquet data source; the partition column
            // is discovered from the dt=... directories as in the embedded engine.
            let table = warehouse.join("default.db/campaign_sample");
            let spark_sql = sql.replace(
                "FROM campaign_sample",
                &format!("FROM parquet.`{}`", table.display()),
            );
            let spark = ExternalEngine::spark_local(launcher, &work.join("spark"));
            let t = Instant::now();
            let s = spark.export(&spark_sql, &work.join("spark_export")).await?;
            let secs = t.elapsed().as_secs_f64();
            let spark_rate = s.rows as f64 / secs;
            println!(
                "spark-sql export, {label}: {} rows in {secs:.2}s = {spark_rate:.0} rows/s (JVM start included); embedded/spark = {:.2}x",
                s.rows,
                embedded_rate / spark_rate
            );
        }
    }
    Ok(())
}
