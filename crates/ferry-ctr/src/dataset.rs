//! The dataset directory of seed 000 §2 (`{data_root}/{dataset_id}/`): raw exported Parquet is
//! split into train/valid, the feature processor is fitted on the training split, and both
//! splits are written encoded as `train/part-NNNNNN.parquet` and `valid/part-NNNNNN.parquet`
//! (FuxiCTR's folder-of-parts form). Everything streams batch by batch; reading the encoded
//! parts for training shuffles one part at a time, so memory stays bounded by the part size.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::{CtrError, Result};
use crate::features::{
    EncodedBatch, FeatureFitter, FeatureProcessor, FeatureSpec, encoded_schema, write_atomic,
};
use crate::rng::{SplitMix64, shuffle};

/// Written last: its presence means the dataset directory is complete.
pub const PREPARED_FILE: &str = "dataset.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrepareOptions {
    /// Fraction of rows (by a hash of the first id column) kept for validation.
    pub valid_ratio: f64,
    pub seed: u64,
    pub rows_per_part: usize,
    pub read_batch_rows: usize,
    /// Validation rows from these files instead of split off the input (FuxiCTR's
    /// `valid_data`): every row under `raw_dir` is then a training row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_dir: Option<PathBuf>,
    /// Test rows (FuxiCTR's `test_data`), encoded beside the others for an evaluation of the
    /// best model after training; never trained or validated on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_dir: Option<PathBuf>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            valid_ratio: 0.1,
            seed: 2024,
            rows_per_part: 100_000,
            read_batch_rows: 65_536,
            valid_dir: None,
            test_dir: None,
        }
    }
}

/// What a prepared dataset holds (the content of `dataset.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreparedDataset {
    pub dataset_id: String,
    pub train_rows: u64,
    pub valid_rows: u64,
    pub train_parts: Vec<String>,
    pub valid_parts: Vec<String>,
    /// Rows and parts of the test split, when the input has one.
    #[serde(default)]
    pub test_rows: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_parts: Vec<String>,
    /// Positive rate of each label in the training split.
    pub label_rates: Vec<f64>,
    /// Digest of the raw input files (names, sizes, times) and the preparation settings: a
    /// changed export rebuilds the dataset, and checkpoints of the old one are not resumed.
    #[serde(default)]
    pub source_fingerprint: u64,
}

/// A stable digest of the raw files under `raw_dir` and the settings that shape the dataset.
fn source_fingerprint(
    files: &[PathBuf],
    raw_dir: &Path,
    spec: &FeatureSpec,
    opts: &PrepareOptions,
) -> Result<u64> {
    let mut text =
        serde_json::json!({"spec": spec, "valid_ratio": opts.valid_ratio, "seed": opts.seed})
            .to_string();
    // Only when set, so datasets prepared before the options existed keep their fingerprint.
    let mut given = Vec::new();
    for (key, dir) in [("valid_dir", &opts.valid_dir), ("test_dir", &opts.test_dir)] {
        if let Some(dir) = dir {
            text.push_str(&format!("|{key}:{}", dir.display()));
            given.extend(input_files(dir)?);
        }
    }
    for f in files.iter().chain(&given) {
        let m = std::fs::metadata(f).map_err(CtrError::io(f))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let rel = f.strip_prefix(raw_dir).unwrap_or(f);
        text.push_str(&format!("|{}:{}:{mtime}", rel.display(), m.len()));
    }
    Ok(text
        .bytes()
        .fold(0x5EED_u64, |h, b| SplitMix64::hash(h ^ b as u64)))
}

impl PreparedDataset {
    pub fn load(dir: &Path) -> Result<Option<PreparedDataset>> {
        let path = dir.join(PREPARED_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CtrError::Corrupt {
                    path,
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CtrError::Io { path, source: e }),
        }
    }

    pub fn train_files(&self, dir: &Path) -> Vec<PathBuf> {
        self.train_parts.iter().map(|p| dir.join(p)).collect()
    }

    pub fn valid_files(&self, dir: &Path) -> Vec<PathBuf> {
        self.valid_parts.iter().map(|p| dir.join(p)).collect()
    }

    pub fn test_files(&self, dir: &Path) -> Vec<PathBuf> {
        self.test_parts.iter().map(|p| dir.join(p)).collect()
    }
}

/// The `.parquet` files under `dir` (recursively, for Hive-style partition folders), sorted.
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>> {
    files_with(dir, &["parquet"])
}

/// The input files of a split, Parquet or CSV (FuxiCTR's `data_format`): those under `dir`
/// (recursively), sorted, or `dir` itself when it is a file.
pub fn input_files(dir: &Path) -> Result<Vec<PathBuf>> {
    files_with(dir, &["parquet", "csv"])
}

fn files_with(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    // A single file (FuxiCTR's `train_data: .../train.parquet`) is its own list.
    if dir.is_file() {
        return Ok(vec![dir.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(CtrError::io(&d))?;
        for entry in entries {
            let entry = entry.map_err(CtrError::io(&d))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with('_') {
                continue; // hidden, temporary and marker files
            }
            if path.is_dir() {
                stack.push(path);
            } else if extensions
                .iter()
                .any(|e| name.strip_suffix(e).is_some_and(|n| n.ends_with('.')))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// Streams the record batches of input files (Parquet or CSV) in order. CSV is read as
/// FuxiCTR reads it with `dtype: str` categorical columns: a header line, `,` between fields,
/// categorical and other columns as text, numeric (and quantile-bucketed) columns and labels
/// as numbers, an empty field missing.
pub fn read_input<'a>(
    files: &'a [PathBuf],
    spec: &'a FeatureSpec,
    batch_rows: usize,
) -> impl Iterator<Item = Result<RecordBatch>> + 'a {
    files.iter().flat_map(move |path| {
        let items: Box<dyn Iterator<Item = Result<RecordBatch>> + 'a> = if is_csv(path) {
            match csv_reader(path, spec, batch_rows) {
                Ok(r) => Box::new(r.map(move |b| {
                    b.map_err(|e| CtrError::Data(format!("{}: {e}", path.display())))
                })),
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        } else {
            Box::new(read_batches(std::slice::from_ref(path), batch_rows))
        };
        items
    })
}

fn csv_reader(
    path: &Path,
    spec: &FeatureSpec,
    batch_rows: usize,
) -> Result<arrow::csv::Reader<File>> {
    use std::io::{Seek, SeekFrom};
    let bad = |e: arrow::error::ArrowError| CtrError::Data(format!("{}: {e}", path.display()));
    let mut file = File::open(path).map_err(CtrError::io(path))?;
    // The header names the columns; their types come from the features.
    let (header, _) = arrow::csv::reader::Format::default()
        .with_header(true)
        .infer_schema(&mut file, Some(0))
        .map_err(bad)?;
    file.seek(SeekFrom::Start(0)).map_err(CtrError::io(path))?;
    // Quantile-bucketed fields are numbers too.
    let quantiles = (spec.bucketize.iter())
        .filter(|(_, b)| matches!(b, crate::features::Bucketize::QuantileBucket { .. }))
        .map(|(name, _)| name);
    let numbers: std::collections::HashSet<&str> = spec
        .numeric
        .iter()
        .chain(&spec.labels)
        .chain(quantiles)
        .map(String::as_str)
        .collect();
    let fields: Vec<arrow::datatypes::Field> = header
        .fields()
        .iter()
        .map(|f| {
            let t = if numbers.contains(f.name().as_str()) {
                DataType::Float64
            } else {
                DataType::Utf8
            };
            arrow::datatypes::Field::new(f.name(), t, true)
        })
        .collect();
    arrow::csv::ReaderBuilder::new(std::sync::Arc::new(arrow::datatypes::Schema::new(fields)))
        .with_header(true)
        .with_batch_size(batch_rows.max(1))
        .build(file)
        .map_err(bad)
}

/// Streams the record batches of Parquet files in order.
pub fn read_batches(
    files: &[PathBuf],
    batch_rows: usize,
) -> impl Iterator<Item = Result<RecordBatch>> + '_ {
    files.iter().flat_map(move |path| {
        let reader = File::open(path)
            .map_err(CtrError::io(path))
            .and_then(|f| {
                ParquetRecordBatchReaderBuilder::try_new(f).map_err(CtrError::parquet(path))
            })
            .and_then(|b| {
                b.with_batch_size(batch_rows)
                    .build()
                    .map_err(CtrError::parquet(path))
            });
        let items: Box<dyn Iterator<Item = Result<RecordBatch>>> = match reader {
            Ok(r) => Box::new(r.map(move |b| b.map_err(CtrError::from))),
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        items
    })
}

fn valid_mask(
    batch: &RecordBatch,
    spec: &FeatureSpec,
    opts: &PrepareOptions,
    row_offset: u64,
) -> Result<Vec<bool>> {
    let ids: Option<Vec<u64>> = match spec.id_columns.first() {
        Some(name) => match batch.column_by_name(name) {
            Some(col) if col.data_type().is_integer() => {
                let cast = arrow::compute::cast(col, &DataType::Int64)?;
                let a = cast.as_primitive::<Int64Type>();
                Some((0..a.len()).map(|i| a.value(i) as u64).collect())
            }
            _ => None,
        },
        None => None,
    };
    let threshold = (opts.valid_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    Ok((0..batch.num_rows())
        .map(|i| {
            let key = ids.as_ref().map_or(row_offset + i as u64, |v| v[i]);
            SplitMix64::hash(key ^ opts.seed.rotate_left(29)) < threshold
        })
        .collect())
}

/// Writes encoded parts of at most `rows_per_part` rows into `dir`.
struct PartWriter<'a> {
    dir: PathBuf,
    spec: &'a FeatureSpec,
    rows_per_part: usize,
    pending: Vec<EncodedBatch>,
    pending_rows: usize,
    parts: Vec<String>,
    rows: u64,
    positives: Vec<f64>,
}

impl<'a> PartWriter<'a> {
    fn new(dir: PathBuf, spec: &'a FeatureSpec, rows_per_part: usize) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(CtrError::io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(CtrError::io(&dir))?;
        Ok(PartWriter {
            dir,
            spec,
            rows_per_part: rows_per_part.max(1),
            pending: Vec::new(),
            pending_rows: 0,
            parts: Vec::new(),
            rows: 0,
            positives: vec![0.0; spec.labels.len()],
        })
    }

    fn push(&mut self, batch: EncodedBatch) -> Result<()> {
        let l = batch.label_width();
        for (j, p) in self.positives.iter_mut().enumerate().take(l) {
            *p += (0..batch.rows)
                .map(|r| batch.labels[r * l + j] as f64)
                .sum::<f64>();
        }
        self.rows += batch.rows as u64;
        self.pending_rows += batch.rows;
        self.pending.push(batch);
        if self.pending_rows >= self.rows_per_part {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let name = format!("part-{:06}.parquet", self.parts.len());
        let path = self.dir.join(&name);
        let file = File::create(&path).map_err(CtrError::io(&path))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut w = ArrowWriter::try_new(file, encoded_schema(self.spec, true), Some(props))
            .map_err(CtrError::parquet(&path))?;
        for b in self.pending.drain(..) {
            w.write(&b.to_record_batch(self.spec)?)
                .map_err(CtrError::parquet(&path))?;
        }
        w.close().map_err(CtrError::parquet(&path))?;
        self.parts.push(name);
        self.pending_rows = 0;
        Ok(())
    }
}

/// The files of a split given in its own folder (FuxiCTR's `valid_data`, `test_data`); none
/// when it is not given, an error when it is given empty.
fn given_split(dir: Option<&Path>, split: &str) -> Result<Vec<PathBuf>> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let found = input_files(dir)?;
    if found.is_empty() {
        return Err(CtrError::Data(format!(
            "no Parquet or CSV files under the {split} folder {}",
            dir.display()
        )));
    }
    Ok(found)
}

/// Builds `{dataset_dir}` from the raw exported Parquet under `raw_dir`, or returns the existing
/// one when `dataset.json` says it is complete (a resumed step does not redo it).
pub fn prepare_dataset(
    raw_dir: &Path,
    dataset_dir: &Path,
    dataset_id: &str,
    spec: &FeatureSpec,
    opts: &PrepareOptions,
) -> Result<(FeatureProcessor, PreparedDataset)> {
    spec.validate()?;
    // The raw export may be gone (staging cleaned) once the dataset exists: then reuse it.
    let files = if raw_dir.exists() {
        input_files(raw_dir)?
    } else {
        Vec::new()
    };
    if let Some(done) = PreparedDataset::load(dataset_dir)? {
        let unchanged = files.is_empty()
            || source_fingerprint(&files, raw_dir, spec, opts)? == done.source_fingerprint;
        if unchanged {
            return Ok((FeatureProcessor::load(dataset_dir)?, done));
        }
        // A new export under the same dataset id: rebuild from it.
        std::fs::remove_file(dataset_dir.join(PREPARED_FILE))
            .map_err(CtrError::io(dataset_dir.join(PREPARED_FILE)))?;
    }
    if files.is_empty() {
        return Err(CtrError::Data(format!(
            "no Parquet or CSV files under {}",
            raw_dir.display()
        )));
    }
    let valid_files = given_split(opts.valid_dir.as_deref(), "validation")?;
    let test_files = given_split(opts.test_dir.as_deref(), "test")?;
    // Which rows of the input are validation rows: a hash split, or none when the validation
    // rows come from their own files.
    let split = |batch: &RecordBatch, offset: u64| -> Result<Vec<bool>> {
        if opts.valid_dir.is_some() {
            Ok(vec![false; batch.num_rows()])
        } else {
            valid_mask(batch, spec, opts, offset)
        }
    };

    // Pass 1: fit on the training split only.
    let mut fitter = FeatureFitter::new(spec.clone())?;
    let mut offset = 0u64;
    for batch in read_input(&files, spec, opts.read_batch_rows) {
        let batch = batch?;
        let keep: Vec<bool> = split(&batch, offset)?.into_iter().map(|v| !v).collect();
        fitter.observe(&batch, &keep)?;
        offset += batch.num_rows() as u64;
    }
    let processor = fitter.finish(dataset_id)?;
    processor.save(dataset_dir)?;

    // Pass 2: encode both splits, with the fitted spec (it knows each sequence's length).
    let fitted = &processor.spec;
    let mut train = PartWriter::new(dataset_dir.join("train"), fitted, opts.rows_per_part)?;
    let mut valid = PartWriter::new(dataset_dir.join("valid"), fitted, opts.rows_per_part)?;
    let mut offset = 0u64;
    for batch in read_input(&files, spec, opts.read_batch_rows) {
        let batch = batch?;
        let mask = split(&batch, offset)?;
        offset += batch.num_rows() as u64;
        let encoded = processor.encode(&batch, true)?;
        let (v, t): (Vec<usize>, Vec<usize>) = (0..encoded.rows).partition(|&r| mask[r]);
        train.push(encoded.permute(&t, fitted))?;
        valid.push(encoded.permute(&v, fitted))?;
    }
    for batch in read_input(&valid_files, spec, opts.read_batch_rows) {
        valid.push(processor.encode(&batch?, true)?)?;
    }
    train.flush()?;
    valid.flush()?;
    let test = if test_files.is_empty() {
        let stale = dataset_dir.join("test");
        if stale.exists() {
            std::fs::remove_dir_all(&stale).map_err(CtrError::io(&stale))?;
        }
        None
    } else {
        let mut test = PartWriter::new(dataset_dir.join("test"), fitted, opts.rows_per_part)?;
        for batch in read_input(&test_files, spec, opts.read_batch_rows) {
            test.push(processor.encode(&batch?, true)?)?;
        }
        test.flush()?;
        Some(test)
    };
    if valid.rows == 0 {
        return Err(CtrError::Data(format!(
            "the validation split is empty ({} rows, valid_ratio {})",
            train.rows, opts.valid_ratio
        )));
    }
    let prepared = PreparedDataset {
        source_fingerprint: source_fingerprint(&files, raw_dir, spec, opts)?,
        dataset_id: dataset_id.to_owned(),
        train_rows: train.rows,
        valid_rows: valid.rows,
        train_parts: train.parts.iter().map(|p| format!("train/{p}")).collect(),
        valid_parts: valid.parts.iter().map(|p| format!("valid/{p}")).collect(),
        test_rows: test.as_ref().map_or(0, |t| t.rows),
        test_parts: test
            .as_ref()
            .map(|t| t.parts.iter().map(|p| format!("test/{p}")).collect())
            .unwrap_or_default(),
        label_rates: train
            .positives
            .iter()
            .map(|p| p / train.rows.max(1) as f64)
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&prepared)
        .map_err(|e| CtrError::Data(format!("cannot serialise dataset.json: {e}")))?;
    write_atomic(&dataset_dir.join(PREPARED_FILE), &json)?;
    Ok((processor, prepared))
}

/// Encoded batches of exactly `batch_size` rows (the last may be shorter) from encoded parts.
/// With a seed, the part order and the rows within each part are shuffled (deterministically:
/// the same seed gives the same order, which is what makes resumed training reproducible).
pub struct EncodedBatches<'a> {
    spec: &'a FeatureSpec,
    files: Vec<PathBuf>,
    next_file: usize,
    batch_size: usize,
    rng: Option<SplitMix64>,
    current: Option<EncodedBatch>,
    cursor: usize,
}

impl<'a> EncodedBatches<'a> {
    pub fn new(
        spec: &'a FeatureSpec,
        files: &[PathBuf],
        batch_size: usize,
        shuffle_seed: Option<u64>,
    ) -> EncodedBatches<'a> {
        let mut files = files.to_vec();
        let mut rng = shuffle_seed.map(SplitMix64::new);
        if let Some(rng) = rng.as_mut() {
            shuffle(&mut files, rng);
        }
        EncodedBatches {
            spec,
            files,
            next_file: 0,
            batch_size: batch_size.max(1),
            rng,
            current: None,
            cursor: 0,
        }
    }

    fn load_part(&mut self, path: &Path) -> Result<EncodedBatch> {
        let mut whole = EncodedBatch::default();
        for rb in read_batches(std::slice::from_ref(&path.to_owned()), 65_536) {
            let b = EncodedBatch::from_record_batch(&rb?, self.spec)?;
            whole.append(b);
        }
        if let Some(rng) = self.rng.as_mut() {
            let mut order: Vec<usize> = (0..whole.rows).collect();
            shuffle(&mut order, rng);
            whole = whole.permute(&order, self.spec);
        }
        Ok(whole)
    }
}

impl Iterator for EncodedBatches<'_> {
    type Item = Result<EncodedBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut out: Option<EncodedBatch> = None;
        loop {
            let need = self.batch_size - out.as_ref().map_or(0, |b| b.rows);
            if need == 0 {
                return out.map(Ok);
            }
            match &self.current {
                Some(cur) if self.cursor < cur.rows => {
                    let end = (self.cursor + need).min(cur.rows);
                    let piece = cur.slice(self.cursor, end, self.spec);
                    self.cursor = end;
                    out = Some(match out {
                        None => piece,
                        Some(mut acc) => {
                            acc.append(piece);
                            acc
                        }
                    });
                }
                _ => {
                    let Some(path) = self.files.get(self.next_file).cloned() else {
                        return out.map(Ok);
                    };
                    self.next_file += 1;
                    match self.load_part(&path) {
                        Ok(part) => {
                            self.current = Some(part);
                            self.cursor = 0;
                        }
                        Err(e) => return Some(Err(e)),
                    }
                }
            }
        }
    }
}
