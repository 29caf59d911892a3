//! The export and load a data engineer would run by hand with the embedded engine, without
//! Ferry's orchestration (see `cargo xtask bench pipeline`).
//!
//! ```text
//! sql_tool export WAREHOUSE SQL OUT_DIR ROWS_PER_PART
//! sql_tool load WAREHOUSE TABLE PARTITION PARTS_DIR
//! ```

use std::path::Path;

use ferry_sql::embedded::{EmbeddedEngine, ExportOptions};
use ferry_sql::{PartitionSpec, TableRef};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["export", warehouse, sql, out, rows_per_part] => {
            let engine = EmbeddedEngine::new(*warehouse);
            let opts = ExportOptions {
                rows_per_part: rows_per_part.parse()?,
            };
            let s = engine.export(sql, Path::new(out), &opts).await?;
            println!("exported {} rows in {} parts", s.rows, s.parts);
        }
        ["load", warehouse, table, partition, parts] => {
            let engine = EmbeddedEngine::new(*warehouse);
            let s = engine
                .load_partition(
                    &TableRef::parse(table)?,
                    &PartitionSpec::parse(partition)?,
                    Path::new(parts),
                    None,
                )
                .await?;
            println!("loaded {} rows", s.rows);
        }
        _ => return Err("usage: sql_tool export WAREHOUSE SQL OUT_DIR ROWS_PER_PART | load WAREHOUSE TABLE PARTITION PARTS_DIR".into()),
    }
    Ok(())
}
