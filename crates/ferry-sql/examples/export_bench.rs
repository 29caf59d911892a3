//! The export benchmark behind `cargo xtask bench sql` (built in release): generates the
//! sample warehouse, then exports `campaign_sample` with the embedded engine and reports
//! rows/s. Usage: `export_bench ROWS WORKDIR`.

use std::time::Instant;

use ferry_sampledata::{SampleSpec, generate};
use ferry_sql::{EmbeddedEngine, ExportOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args
        .next()
        .ok_or("usage: export_bench ROWS WORKDIR")?
        .parse()?;
    let work = std::path::PathBuf::from(args.next().ok_or("usage: export_bench ROWS WORKDIR")?);
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
        println!(
            "embedded export, {label}: {} rows in {secs:.2}s = {:.0} rows/s ({} parts, {:.1} MB)",
            s.rows,
            s.rows as f64 / secs,
            s.parts,
            s.bytes as f64 / 1e6
        );
    }
    Ok(())
}
