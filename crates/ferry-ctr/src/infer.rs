//! Part-level inference (seed 000 §4 stage 3): each input part becomes
//! `{output_dir}/part_N.parquet` with the id columns and one `{label}_score` column per task,
//! written to a hidden temporary name and renamed when complete. A `.inference_lock` guards the
//! directory while a job runs; a rerun skips the parts that exist, so a crash costs at most the
//! parts that were in flight. Row counts and schemas are verified at the end.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use arrow::array::{ArrayRef, Float32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use burn::tensor::Device;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::dataset::{parquet_files, read_batches};
use crate::error::{CtrError, Result};
use crate::features::{EncodedBatch, FeatureProcessor, write_atomic};
use crate::model::{CtrModel, Inputs};
use crate::train::{ModelCard, load_trained};

pub const LOCK_FILE: &str = ".inference_lock";
pub const SUMMARY_FILE: &str = "_inference.json";
/// What the existing parts were computed from (input files and model); see [`infer`].
pub const INPUTS_FILE: &str = "_inputs.json";

#[derive(Clone, Debug)]
pub struct InferOptions {
    /// Raw inference input (Parquet parts as exported).
    pub input_dir: PathBuf,
    /// `{data_root}/{dataset_id}`: its fitted feature processor is used when present, else
    /// the copy in `model_dir`.
    pub data_dir: PathBuf,
    /// `{model_root}/{dataset_id}`.
    pub model_dir: PathBuf,
    pub model_id: String,
    /// `{data_root}/{dataset_id}/{expid}_inference_result`.
    pub output_dir: PathBuf,
    /// Rows per forward pass (config `inference.batch_size`, default 10,000).
    pub batch_size: usize,
    /// Parts are spread over these devices, one worker each.
    pub devices: Vec<Device>,
    /// Stop after computing this many parts (as if killed), for tests and time slicing.
    pub stop_after_parts: Option<usize>,
    /// Read and encode the next batches, and write the finished ones, on their own threads
    /// while the model scores (default); off only to measure what it gains.
    pub pipelined: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartResult {
    pub part: String,
    pub input: String,
    pub rows: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferOutcome {
    pub parts_total: usize,
    pub parts_computed: usize,
    pub parts_skipped: usize,
    /// Rows scored by this call.
    pub rows_computed: u64,
    /// Rows in all output parts (after verification; 0 when not finished).
    pub rows_total: u64,
    pub seconds: f64,
    pub finished: bool,
    pub score_columns: Vec<String>,
    pub parts: Vec<PartResult>,
}

impl InferOutcome {
    pub fn rows_per_sec(&self) -> f64 {
        self.rows_computed as f64 / self.seconds.max(1e-9)
    }
}

pub trait InferObserver: Sync {
    fn on_part(&self, _done: usize, _total: usize, _rows: u64) {}
    fn cancelled(&self) -> bool {
        false
    }
}

impl InferObserver for () {}

/// Holds `.inference_lock`; removed on drop. A lock left by a dead process is taken over.
struct Lock(PathBuf);

impl Lock {
    fn acquire(dir: &Path) -> Result<Lock> {
        let path = dir.join(LOCK_FILE);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    writeln!(f, "{}", std::process::id()).map_err(CtrError::io(&path))?;
                    return Ok(Lock(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    let alive = holder.is_some_and(|pid| {
                        pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
                    });
                    if alive {
                        return Err(CtrError::Locked(path));
                    }
                    // Stale: its process is gone (a crash); take it over.
                    std::fs::remove_file(&path).map_err(CtrError::io(&path))?;
                }
                Err(e) => return Err(CtrError::Io { path, source: e }),
            }
        }
        Err(CtrError::Locked(path))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn output_schema(input: &Schema, id_columns: &[String], scores: &[String]) -> Result<SchemaRef> {
    let mut fields = Vec::new();
    for id in id_columns {
        let f = input
            .field_with_name(id)
            .map_err(|_| CtrError::Data(format!("inference input has no id column {id}")))?;
        fields.push(f.clone());
    }
    for s in scores {
        fields.push(Field::new(s, DataType::Float32, false));
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[allow(clippy::too_many_arguments)]
fn score_part(
    model: &CtrModel,
    card: &ModelCard,
    processor: &FeatureProcessor,
    input: &Path,
    output: &Path,
    batch_size: usize,
    device: &Device,
    score_columns: &[String],
    pipelined: bool,
    pools: &[rayon::ThreadPool],
) -> Result<u64> {
    let tmp = output.with_file_name(format!(
        ".{}.tmp",
        output
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let tasks = card.shape.num_tasks;
    let mut sink = PartWriter {
        tmp,
        writer: None,
        rows: 0,
        id_columns: &processor.spec.id_columns,
        score_columns,
        tasks,
    };
    let predict = |encoded: &EncodedBatch| -> Result<Vec<f32>> {
        model
            .predict(&Inputs::new(encoded, &card.shape, device)?)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| CtrError::Data(format!("cannot read predictions: {e:?}")))
    };
    // With `pools` (the pipelined scorer on the CPU) each batch's row ranges are scored at the
    // same time, as training computes them. Rows are scored independently, so the split
    // changes nothing in the result.
    let score = |encoded: &EncodedBatch| -> Result<Vec<f32>> {
        if pools.is_empty() || encoded.rows < 2 * pools.len() {
            return predict(encoded);
        }
        let ranges = encoded.split_rows(pools.len(), &processor.spec);
        let mut probs = Vec::with_capacity(encoded.rows * tasks);
        for part in crate::parallel::on_pools(&ranges, pools, |_, range| predict(range)) {
            probs.extend(part?);
        }
        Ok(probs)
    };
    let inputs = [input.to_owned()];
    let encoded = || {
        read_batches(&inputs, batch_size).map(|batch| {
            let batch = batch?;
            let encoded = processor.encode(&batch, false)?;
            Ok((batch, encoded))
        })
    };
    if !pipelined {
        for item in encoded() {
            let (batch, enc) = item?;
            let probs = score(&enc)?;
            sink.write(&batch, &probs)?;
        }
        return sink.finish(input, output);
    }
    // Three stages on three threads: read + encode, score (here), build + write. Bounded
    // channels keep at most two batches in flight on each side.
    std::thread::scope(|scope| {
        let (to_score, scored_in) =
            std::sync::mpsc::sync_channel::<Result<(RecordBatch, EncodedBatch)>>(2);
        scope.spawn(move || {
            // Built on this thread: the reader is not `Send`.
            for item in encoded() {
                if to_score.send(item).is_err() {
                    break;
                }
            }
        });
        let (to_write, write_in) = std::sync::mpsc::sync_channel::<WriteMsg>(2);
        let writer = scope.spawn(move || -> Result<u64> {
            for msg in write_in {
                match msg {
                    WriteMsg::Batch(batch, probs) => sink.write(&batch, &probs)?,
                    // Only an explicit end completes the part: a scoring failure drops the
                    // channel without it, and the temporary file is never renamed.
                    WriteMsg::Done => return sink.finish(input, output),
                }
            }
            Err(CtrError::Data(format!(
                "scoring {} stopped before its end",
                input.display()
            )))
        });
        let scored: Result<()> = (|| {
            for item in scored_in {
                let (batch, enc) = item?;
                let probs = score(&enc)?;
                if to_write.send(WriteMsg::Batch(batch, probs)).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        if scored.is_ok() {
            let _ = to_write.send(WriteMsg::Done);
        }
        drop(to_write);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(CtrError::Data("the part writer panicked".into())));
        scored?;
        written
    })
}

enum WriteMsg {
    Batch(RecordBatch, Vec<f32>),
    Done,
}

/// Builds the output batches (id columns and one score column per task) and writes them to
/// the part's temporary file; `finish` renames it into place.
struct PartWriter<'a> {
    tmp: PathBuf,
    writer: Option<ArrowWriter<File>>,
    rows: u64,
    id_columns: &'a [String],
    score_columns: &'a [String],
    tasks: usize,
}

impl PartWriter<'_> {
    fn write(&mut self, batch: &RecordBatch, probs: &[f32]) -> Result<()> {
        let schema = output_schema(&batch.schema(), self.id_columns, self.score_columns)?;
        let mut columns: Vec<ArrayRef> = Vec::new();
        for id in self.id_columns {
            columns.push(
                batch
                    .column_by_name(id)
                    .cloned()
                    .ok_or_else(|| CtrError::Data(format!("no id column {id}")))?,
            );
        }
        let tasks = self.tasks;
        for t in 0..tasks {
            columns.push(Arc::new(Float32Array::from_iter_values(
                (0..batch.num_rows()).map(|r| probs[r * tasks + t]),
            )));
        }
        let out = RecordBatch::try_new(schema.clone(), columns)?;
        if self.writer.is_none() {
            let file = File::create(&self.tmp).map_err(CtrError::io(&self.tmp))?;
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build();
            self.writer = Some(
                ArrowWriter::try_new(file, schema, Some(props))
                    .map_err(CtrError::parquet(&self.tmp))?,
            );
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(&out).map_err(CtrError::parquet(&self.tmp))?;
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn finish(self, input: &Path, output: &Path) -> Result<u64> {
        let Some(w) = self.writer else {
            return Err(CtrError::Data(format!("{} has no rows", input.display())));
        };
        let file = w.into_inner().map_err(CtrError::parquet(&self.tmp))?;
        drop(file);
        ferry_fs::persist(&self.tmp, output).map_err(CtrError::io(output))?;
        Ok(self.rows)
    }
}

/// Input files (path, size, mtime) and the model file (size, mtime).
fn inputs_fingerprint(inputs: &[PathBuf], model: &Path) -> Result<serde_json::Value> {
    let stamp = |p: &Path| -> Result<serde_json::Value> {
        let m = std::fs::metadata(p).map_err(CtrError::io(p))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(
            serde_json::json!({"path": p.display().to_string(), "bytes": m.len(), "mtime_ns": mtime}),
        )
    };
    Ok(serde_json::json!({
        "inputs": inputs.iter().map(|p| stamp(p)).collect::<Result<Vec<_>>>()?,
        "model": stamp(model)?,
    }))
}

fn parquet_rows(path: &Path) -> Result<(u64, SchemaRef)> {
    let f = File::open(path).map_err(CtrError::io(path))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(CtrError::parquet(path))?;
    Ok((
        b.metadata().file_metadata().num_rows() as u64,
        b.schema().clone(),
    ))
}

/// Scores every input part not yet scored; verifies all parts when none is missing.
pub fn infer(opts: &InferOptions, observer: &dyn InferObserver) -> Result<InferOutcome> {
    let started = Instant::now();
    if opts.devices.is_empty() {
        return Err(CtrError::Device("no device to run inference on".into()));
    }
    // The dataset's processor when this host prepared it, else the copy beside the model.
    let processor = if opts
        .data_dir
        .join(crate::features::PROCESSOR_FILE)
        .is_file()
    {
        FeatureProcessor::load(&opts.data_dir)?
    } else {
        FeatureProcessor::load(&opts.model_dir)?
    };
    let inputs = parquet_files(&opts.input_dir)?;
    if inputs.is_empty() {
        return Err(CtrError::Data(format!(
            "no Parquet parts under {}",
            opts.input_dir.display()
        )));
    }
    std::fs::create_dir_all(&opts.output_dir).map_err(CtrError::io(&opts.output_dir))?;
    let _lock = Lock::acquire(&opts.output_dir)?;
    // Leftovers of parts that were in flight when a previous run died.
    for entry in std::fs::read_dir(&opts.output_dir).map_err(CtrError::io(&opts.output_dir))? {
        let entry = entry.map_err(CtrError::io(&opts.output_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(CtrError::io(&p))?;
        }
    }
    // Parts are only reused when they were computed from the same input files and the same
    // model; otherwise (new export, retrained model) every old part is removed first, so a
    // load never mixes results of two runs.
    let model_path = opts.model_dir.join(format!("{}.model", opts.model_id));
    let fingerprint = inputs_fingerprint(&inputs, &model_path)?;
    let fingerprint_path = opts.output_dir.join(INPUTS_FILE);
    let previous = std::fs::read(&fingerprint_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if previous.as_ref() != Some(&fingerprint) {
        for entry in std::fs::read_dir(&opts.output_dir).map_err(CtrError::io(&opts.output_dir))? {
            let entry = entry.map_err(CtrError::io(&opts.output_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if (name.starts_with("part_") && name.ends_with(".parquet")) || name == SUMMARY_FILE {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(CtrError::io(&p))?;
            }
        }
        let json = serde_json::to_vec_pretty(&fingerprint)
            .map_err(|e| CtrError::Data(format!("cannot serialise {INPUTS_FILE}: {e}")))?;
        write_atomic(&fingerprint_path, &json)?;
    }
    let outputs: Vec<PathBuf> = (0..inputs.len())
        .map(|i| opts.output_dir.join(format!("part_{i}.parquet")))
        .collect();
    let todo: Vec<usize> = (0..inputs.len())
        .filter(|&i| !outputs[i].exists())
        .collect();
    let skipped = inputs.len() - todo.len();

    // Each worker loads its own copy of the model on its device.
    let card = ModelCard::load(&ModelCard::path(&opts.model_dir, &opts.model_id))?;
    let score_columns: Vec<String> = card.labels.iter().map(|l| format!("{l}_score")).collect();
    let next = AtomicUsize::new(0);
    let computed = AtomicUsize::new(0);
    let rows_computed = std::sync::atomic::AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let limit = opts.stop_after_parts.unwrap_or(usize::MAX);
    let first_error: std::sync::Mutex<Option<CtrError>> = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for device in &opts.devices {
            let (next, computed, rows_computed, stop, first_error) =
                (&next, &computed, &rows_computed, &stop, &first_error);
            let (todo, inputs, outputs, processor, score_columns) =
                (&todo, &inputs, &outputs, &processor, &score_columns);
            scope.spawn(move || {
                let work = || -> Result<()> {
                    let (model, card) = load_trained(&opts.model_dir, &opts.model_id, device)?;
                    let model = burn::module::Module::valid(&model);
                    // Once per worker: the pipelined scorer on the CPU splits each batch
                    // over the cores (see `score_part`).
                    let pools = if opts.pipelined && *device == Device::flex() {
                        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                        crate::parallel::single_thread_pools(cores, "ferry-infer")
                    } else {
                        Vec::new()
                    };
                    loop {
                        if stop.load(Ordering::SeqCst) || observer.cancelled() {
                            return Ok(());
                        }
                        let k = next.fetch_add(1, Ordering::SeqCst);
                        if k >= todo.len() || k >= limit {
                            return Ok(());
                        }
                        let i = todo[k];
                        let rows = score_part(
                            &model,
                            &card,
                            processor,
                            &inputs[i],
                            &outputs[i],
                            opts.batch_size.max(1),
                            device,
                            score_columns,
                            opts.pipelined,
                            &pools,
                        )?;
                        rows_computed.fetch_add(rows, Ordering::SeqCst);
                        let done = computed.fetch_add(1, Ordering::SeqCst) + 1;
                        observer.on_part(skipped + done, inputs.len(), rows);
                    }
                };
                if let Err(e) = work() {
                    stop.store(true, Ordering::SeqCst);
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    if observer.cancelled() {
        return Err(CtrError::Cancelled);
    }
    let parts_computed = computed.into_inner();
    let mut outcome = InferOutcome {
        parts_total: inputs.len(),
        parts_computed,
        parts_skipped: skipped,
        rows_computed: rows_computed.into_inner(),
        rows_total: 0,
        seconds: started.elapsed().as_secs_f64(),
        finished: false,
        score_columns: score_columns.clone(),
        parts: Vec::new(),
    };
    if outputs.iter().any(|o| !o.exists()) {
        return Ok(outcome);
    }
    // Verify: every output part has its input's row count and the expected columns.
    let mut expected_schema: Option<SchemaRef> = None;
    for (input, output) in inputs.iter().zip(&outputs) {
        let (in_rows, in_schema) = parquet_rows(input)?;
        let (out_rows, out_schema) = parquet_rows(output)?;
        if in_rows != out_rows {
            return Err(CtrError::Data(format!(
                "{} has {out_rows} rows but its input {} has {in_rows}; remove it and rerun",
                output.display(),
                input.display()
            )));
        }
        let want = output_schema(&in_schema, &processor.spec.id_columns, &score_columns)?;
        let names =
            |s: &Schema| -> Vec<String> { s.fields().iter().map(|f| f.name().clone()).collect() };
        if names(&out_schema) != names(&want) {
            return Err(CtrError::Data(format!(
                "{} has columns {:?}, expected {:?}",
                output.display(),
                names(&out_schema),
                names(&want)
            )));
        }
        expected_schema.get_or_insert(out_schema);
        outcome.rows_total += out_rows;
        outcome.parts.push(PartResult {
            part: output
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            input: input.display().to_string(),
            rows: out_rows,
        });
    }
    outcome.finished = true;
    let json = serde_json::to_vec_pretty(&outcome)
        .map_err(|e| CtrError::Data(format!("cannot serialise the summary: {e}")))?;
    write_atomic(&opts.output_dir.join(SUMMARY_FILE), &json)?;
    Ok(outcome)
}
