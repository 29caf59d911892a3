//! The sample campaign data of `data-spec.md`: Criteo-like advertising logs with labels from
//! a hidden teacher, written as Hive-style Parquet tables. Seeded and deterministic: the same
//! seed gives byte-identical files.
//!
//! Tables (in `<warehouse>/default.db/`):
//! - `campaign_sample/dt=<day>/part-*.parquet`: `sample_id`, `user_id`, `I1..I13` (DOUBLE,
//!   heavy-tailed, ~5% NULL), `C1..C26` (STRING, Zipf-like tokens, vocabularies from a handful
//!   to ~100,000), `click_history` (STRING: the ads — `C10` tokens — the user clicked before,
//!   `^`-separated, newest last), `click`, `conversion` (a conversion only follows a click);
//! - `campaign_infer/dt=<next day>/part-*.parquet`: the same ids and features, no labels.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, Int32Builder, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

pub const NUMERIC_FIELDS: usize = 13;
pub const CATEGORICAL_FIELDS: usize = 26;
pub const SAMPLE_TABLE: &str = "campaign_sample";
pub const INFER_TABLE: &str = "campaign_infer";
pub const DATABASE: &str = "default";
/// The sequence column: earlier clicked ads, tokens of the categorical field `C10`.
pub const HISTORY_COLUMN: &str = "click_history";
/// The categorical field whose tokens the history holds (0-based index of `C10`).
pub const HISTORY_FIELD: usize = 9;
/// Longest history.
pub const HISTORY_MAX: u64 = 10;

/// Vocabulary size of each categorical field: from a handful to about 100,000, as in Criteo.
pub const VOCAB_SIZES: [u64; CATEGORICAL_FIELDS] = [
    4, 8, 12, 20, 30, 50, 80, 120, 200, 300, 500, 800, 1_200, 2_000, 3_000, 5_000, 8_000, 12_000,
    18_000, 25_000, 35_000, 50_000, 65_000, 80_000, 90_000, 100_000,
];

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write Parquet {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("cannot build a batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("invalid sample spec: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct SampleSpec {
    pub rows: usize,
    pub infer_rows: usize,
    pub seed: u64,
    pub rows_per_part: usize,
    pub sample_day: String,
    pub infer_day: String,
}

impl SampleSpec {
    /// `rows` training rows and a quarter as many inference rows, 2026-01-21/22.
    pub fn new(rows: usize, seed: u64) -> SampleSpec {
        SampleSpec {
            rows,
            infer_rows: (rows / 4).max(1),
            seed,
            rows_per_part: 250_000,
            sample_day: "2026-01-21".into(),
            infer_day: "2026-01-22".into(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedTable {
    pub table: String,
    pub partition: String,
    pub dir: PathBuf,
    pub rows: usize,
    pub parts: usize,
    pub clicks: usize,
    pub conversions: usize,
}

/// Writes both tables under `warehouse` (replacing their partitions for these days).
pub fn generate(warehouse: &Path, spec: &SampleSpec) -> Result<Vec<GeneratedTable>, SampleError> {
    if spec.rows == 0 || spec.rows_per_part == 0 {
        return Err(SampleError::Invalid(
            "rows and rows_per_part must be at least 1".into(),
        ));
    }
    let teacher = Teacher::new(spec.seed);
    let sample = write_table(
        warehouse,
        SAMPLE_TABLE,
        &spec.sample_day,
        spec.rows,
        spec.rows_per_part,
        &teacher,
        true,
        0,
    )?;
    let infer = write_table(
        warehouse,
        INFER_TABLE,
        &spec.infer_day,
        spec.infer_rows,
        spec.rows_per_part,
        &teacher,
        false,
        spec.rows as u64,
    )?;
    Ok(vec![sample, infer])
}

pub fn schema(with_labels: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("sample_id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
    ];
    for i in 1..=NUMERIC_FIELDS {
        fields.push(Field::new(format!("I{i}"), DataType::Float64, true));
    }
    for i in 1..=CATEGORICAL_FIELDS {
        fields.push(Field::new(format!("C{i}"), DataType::Utf8, true));
    }
    fields.push(Field::new(HISTORY_COLUMN, DataType::Utf8, false));
    if with_labels {
        fields.push(Field::new("click", DataType::Int32, false));
        fields.push(Field::new("conversion", DataType::Int32, false));
    }
    Arc::new(Schema::new(fields))
}

#[allow(clippy::too_many_arguments)]
fn write_table(
    warehouse: &Path,
    table: &str,
    day: &str,
    rows: usize,
    rows_per_part: usize,
    teacher: &Teacher,
    with_labels: bool,
    first_id: u64,
) -> Result<GeneratedTable, SampleError> {
    let dir = warehouse
        .join(format!("{DATABASE}.db"))
        .join(table)
        .join(format!("dt={day}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| SampleError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&dir).map_err(|source| SampleError::Io {
        path: dir.clone(),
        source,
    })?;
    let schema = schema(with_labels);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by("ferry-sampledata".into())
        .build();
    let mut out = GeneratedTable {
        table: table.into(),
        partition: format!("dt={day}"),
        dir: dir.clone(),
        rows,
        parts: 0,
        clicks: 0,
        conversions: 0,
    };
    let mut row = 0usize;
    while row < rows {
        let part_rows = rows_per_part.min(rows - row);
        let path = dir.join(format!("part-{:05}.parquet", out.parts));
        let file = File::create(&path).map_err(|source| SampleError::Io {
            path: path.clone(),
            source,
        })?;
        let mut writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props.clone())).map_err(|source| {
                SampleError::Parquet {
                    path: path.clone(),
                    source,
                }
            })?;
        let mut done = 0;
        while done < part_rows {
            let n = BATCH.min(part_rows - done);
            let ids = first_id + (row + done) as u64;
            let (batch, clicks, conversions) = teacher.batch(&schema, ids, n, with_labels)?;
            out.clicks += clicks;
            out.conversions += conversions;
            writer
                .write(&batch)
                .map_err(|source| SampleError::Parquet {
                    path: path.clone(),
                    source,
                })?;
            done += n;
        }
        writer.close().map_err(|source| SampleError::Parquet {
            path: path.clone(),
            source,
        })?;
        out.parts += 1;
        row += part_rows;
    }
    Ok(out)
}

const BATCH: usize = 16_384;

/// SplitMix64: a stateless hash of a 64-bit value, used both as the row generator (keyed by
/// row id, so any row can be generated independently) and for the teacher's weights.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in [0, 1).
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Standard normal from two hashes (Box–Muller).
fn normal(a: u64, b: u64) -> f64 {
    let u1 = unit(a).max(1e-12);
    let u2 = unit(b);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A row's random stream: values keyed by (row, slot).
struct RowRng {
    base: u64,
}

impl RowRng {
    fn at(&self, slot: u64) -> u64 {
        mix(self.base ^ mix(slot))
    }
}

/// The hidden model that labels the rows: a logistic model over per-token weights, a few
/// hashed crosses and transformed numerics (click), and a second correlated one (conversion).
struct Teacher {
    seed: u64,
    numeric_weights: [f64; NUMERIC_FIELDS],
}

/// Field pairs whose joint tokens carry extra signal.
const CROSSES: [(usize, usize); 4] = [(0, 1), (2, 6), (4, 10), (8, 14)];

impl Teacher {
    fn new(seed: u64) -> Teacher {
        let mut numeric_weights = [0.0; NUMERIC_FIELDS];
        for (i, w) in numeric_weights.iter_mut().enumerate() {
            *w = 0.35 * normal(mix(seed ^ 0x1000 ^ i as u64), mix(seed ^ 0x2000 ^ i as u64));
        }
        Teacher {
            seed,
            numeric_weights,
        }
    }

    /// Weight of token `rank` of field `field` for task `task` (0 click, 1 conversion).
    /// Rarer tokens carry more variance; conversion shares half of click's signal.
    fn token_weight(&self, task: u64, field: usize, rank: u64) -> f64 {
        let key = self.seed ^ ((field as u64) << 40) ^ rank;
        let shared = normal(mix(key ^ 0xa1), mix(key ^ 0xb2));
        let scale = 0.25 + 0.15 * ((rank + 1) as f64).ln().min(6.0) / 6.0;
        if task == 0 {
            scale * shared
        } else {
            scale * (0.5 * shared + 0.5 * normal(mix(key ^ 0xc3), mix(key ^ 0xd4)))
        }
    }

    /// A token of categorical field `field` by its rank.
    fn token(&self, field: usize, rank: u64) -> String {
        format!(
            "{:08x}",
            mix(self.seed ^ ((field as u64) << 40) ^ rank) as u32
        )
    }

    /// The row's click history: 1 to 10 ads drawn like `C10`, holding the row's own ad more
    /// often when the row is clicked (people click again what they clicked before). The
    /// labels do not depend on it, so every other column and label is as without it; a model
    /// that compares the ad with the history (DIN) finds extra signal there.
    fn history(&self, rng: &RowRng, ad_rank: u64, clicked: bool) -> String {
        let v = VOCAB_SIZES[HISTORY_FIELD];
        let len = 1 + rng.at(1000) % HISTORY_MAX;
        let mut tokens: Vec<String> = (0..len)
            .map(|k| {
                let u = unit(rng.at(1001 + k));
                let rank = ((((v + 1) as f64).ln() * u).exp().floor() as u64).clamp(1, v) - 1;
                self.token(HISTORY_FIELD, rank)
            })
            .collect();
        let again = if clicked { 0.6 } else { 0.05 };
        if unit(rng.at(1100)) < again {
            let at = (rng.at(1101) % len) as usize;
            tokens[at] = self.token(HISTORY_FIELD, ad_rank);
        }
        tokens.join("^")
    }

    fn cross_weight(&self, pair: usize, a: u64, b: u64) -> f64 {
        let key = self.seed ^ 0x5eed_0000 ^ ((pair as u64) << 48) ^ (a << 24) ^ b;
        0.6 * normal(mix(key ^ 0xe5), mix(key ^ 0xf6))
    }

    fn batch(
        &self,
        schema: &SchemaRef,
        first_id: u64,
        n: usize,
        with_labels: bool,
    ) -> Result<(RecordBatch, usize, usize), SampleError> {
        let mut sample_id = Int64Builder::with_capacity(n);
        let mut user_id = Int64Builder::with_capacity(n);
        let mut numerics: Vec<Float64Builder> = (0..NUMERIC_FIELDS)
            .map(|_| Float64Builder::with_capacity(n))
            .collect();
        let mut cats: Vec<StringBuilder> = (0..CATEGORICAL_FIELDS)
            .map(|_| StringBuilder::with_capacity(n, n * 8))
            .collect();
        let mut history = StringBuilder::with_capacity(n, n * 40);
        let mut click = Int32Builder::with_capacity(n);
        let mut conversion = Int32Builder::with_capacity(n);
        let (mut clicks, mut conversions) = (0, 0);
        let mut ranks = [0u64; CATEGORICAL_FIELDS];
        for r in 0..n {
            let id = first_id + r as u64;
            let rng = RowRng {
                base: mix(self.seed ^ mix(id)),
            };
            sample_id.append_value(id as i64);
            user_id.append_value((rng.at(1) % 2_000_000) as i64);
            let mut logit_click = -3.1;
            let mut logit_conv = -1.6;
            for (k, b) in numerics.iter_mut().enumerate() {
                let h = rng.at(100 + k as u64);
                if unit(h) < 0.05 {
                    b.append_null();
                } else {
                    // Heavy-tailed counts: exp of a normal, floored.
                    let v = (normal(rng.at(200 + k as u64), rng.at(300 + k as u64))
                        * (1.0 + k as f64 * 0.1)
                        + 1.0)
                        .exp()
                        .floor()
                        - 1.0;
                    let v = v.max(0.0);
                    b.append_value(v);
                    let t = (1.0 + v).ln() - 1.2;
                    logit_click += self.numeric_weights[k] * t;
                    logit_conv += 0.5 * self.numeric_weights[k] * t;
                }
            }
            for (f, b) in cats.iter_mut().enumerate() {
                let v = VOCAB_SIZES[f];
                // Zipf-like rank: log-uniform over 1..=V, so frequency falls as 1/rank.
                let u = unit(rng.at(400 + f as u64));
                let rank = ((((v + 1) as f64).ln() * u).exp().floor() as u64).clamp(1, v) - 1;
                ranks[f] = rank;
                if unit(rng.at(500 + f as u64)) < 0.02 {
                    b.append_null();
                    continue;
                }
                b.append_value(self.token(f, rank));
                logit_click += self.token_weight(0, f, rank);
                logit_conv += self.token_weight(1, f, rank);
            }
            for (i, (a, b)) in CROSSES.iter().enumerate() {
                logit_click += self.cross_weight(i, ranks[*a], ranks[*b]);
            }
            let p_click = 1.0 / (1.0 + (-logit_click).exp());
            // Whether this row is (or, in the inference table, would be) clicked: drawn from
            // its own slot whether or not the label is written, so both tables agree.
            let clicked = unit(rng.at(900)) < p_click;
            history.append_value(self.history(&rng, ranks[HISTORY_FIELD], clicked));
            if with_labels {
                let c = clicked;
                let p_conv = 1.0 / (1.0 + (-logit_conv).exp());
                let v = c && unit(rng.at(901)) < p_conv;
                click.append_value(i32::from(c));
                conversion.append_value(i32::from(v));
                clicks += usize::from(c);
                conversions += usize::from(v);
            }
        }
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(sample_id.finish()), Arc::new(user_id.finish())];
        columns.extend(
            numerics
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.extend(cats.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(history.finish()));
        if with_labels {
            columns.push(Arc::new(click.finish()));
            columns.push(Arc::new(conversion.finish()));
        }
        Ok((
            RecordBatch::try_new(schema.clone(), columns)?,
            clicks,
            conversions,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for table in [SAMPLE_TABLE, INFER_TABLE] {
            let t = dir.join("default.db").join(table);
            for part in std::fs::read_dir(&t).expect("table").flatten() {
                for f in std::fs::read_dir(part.path()).expect("partition").flatten() {
                    out.push((
                        f.path()
                            .strip_prefix(dir)
                            .expect("rel")
                            .display()
                            .to_string(),
                        std::fs::read(f.path()).expect("read"),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_same_seed_gives_byte_identical_files_and_another_seed_does_not() {
        let mut spec = SampleSpec::new(5_000, 7);
        spec.rows_per_part = 2_000;
        let (a, b, c) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let ga = generate(a.path(), &spec).expect("generate");
        generate(b.path(), &spec).expect("generate");
        assert_eq!(ga[0].parts, 3);
        assert_eq!(ga[1].rows, 1_250);
        assert_eq!(files(a.path()), files(b.path()));
        spec.seed = 8;
        generate(c.path(), &spec).expect("generate");
        assert_ne!(files(a.path()), files(c.path()));
        assert!(
            a.path()
                .join("default.db/campaign_sample/dt=2026-01-21/part-00000.parquet")
                .is_file()
        );
    }

    #[test]
    fn the_click_history_holds_the_ad_more_often_when_clicked() {
        use arrow::array::{Array, AsArray, Int32Array};
        let spec = SampleSpec::new(20_000, 2024);
        let dir = tempfile::tempdir().expect("tmp");
        let g = generate(dir.path(), &spec).expect("generate");
        let (mut with, mut rows) = ([0usize; 2], [0usize; 2]);
        for part in std::fs::read_dir(&g[0].dir).expect("partition").flatten() {
            let file = File::open(part.path()).expect("open");
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .expect("parquet")
                    .build()
                    .expect("reader");
            for b in reader {
                let b = b.expect("batch");
                let ad = b
                    .column_by_name("C10")
                    .expect("C10")
                    .as_string::<i32>()
                    .clone();
                let hist = b
                    .column_by_name(HISTORY_COLUMN)
                    .expect("history")
                    .as_string::<i32>()
                    .clone();
                let click = b
                    .column_by_name("click")
                    .and_then(|c| c.as_any().downcast_ref::<Int32Array>().cloned())
                    .expect("click");
                for r in 0..b.num_rows() {
                    let tokens: Vec<&str> = hist.value(r).split('^').collect();
                    assert!((1..=HISTORY_MAX as usize).contains(&tokens.len()));
                    if ad.is_null(r) {
                        continue;
                    }
                    let c = click.value(r) as usize;
                    rows[c] += 1;
                    with[c] += usize::from(tokens.contains(&ad.value(r)));
                }
            }
        }
        let rate = |c: usize| with[c] as f64 / rows[c].max(1) as f64;
        assert!(
            rate(1) > 0.5 && rate(0) < 0.2,
            "clicked {}, not clicked {}",
            rate(1),
            rate(0)
        );
    }

    #[test]
    fn labels_look_like_a_campaign() {
        let spec = SampleSpec::new(20_000, 2024);
        let dir = tempfile::tempdir().expect("tmp");
        let g = generate(dir.path(), &spec).expect("generate");
        let rate = g[0].clicks as f64 / g[0].rows as f64;
        assert!((0.03..0.30).contains(&rate), "click rate {rate}");
        assert!(
            g[0].conversions > 0 && g[0].conversions < g[0].clicks,
            "{g:?}"
        );
    }
}
