//! Workflow definitions built from structured input, so that most of them parse and many
//! validate: step names from a small set (inputs refer to real steps, cycles happen), known
//! kinds, parameters made of the keys the kinds read and values with placeholders, paths
//! and SQL. The definition is written as YAML and goes through the real parser.
#![no_main]

use arbitrary::Arbitrary;
use ferry_core::workflow::WorkflowDef;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "bad name", ""];
const KINDS: &[&str] = &[
    "exec", "noop", "transfer", "sql_export", "hive_load", "train", "infer", "monitor",
    "cleanup", "data", "docker", "upload", "teleport",
];
const KEYS: &[&str] = &[
    "program", "args", "env", "secret_env", "workdir", "timeout_secs", "io", "sleep_ms",
    "direction", "server", "local_path", "remote_path", "algorithm", "chunk_size",
    "confirm_above", "compression", "sql", "output_dir", "rows_per_part", "table",
    "partition", "parts_dir", "expected_rows", "dataset_id", "sample_dir", "model", "labels",
    "valid_ratio", "model_id", "input_dir", "expid", "batch_size", "paths", "report_path",
    "keep_checkpoints", "facts", "image", "entrypoint", "cmd", "node", "file_name", "job_dir",
    "mounts", "stdin", "dir", "path", "sources", "capture_stdout", "permanent_exit_codes",
];
const PIECES: &[&str] = &[
    "${param.day}", "${param.out}", "${param.evil}", "${param.missing}", "${task_id}",
    "${task_name}", "$$", "${", "}", "$", "/srv/out", "..", "/", "data", "push", "pull",
    "local", "blake3", "sha256", "SELECT * FROM t WHERE dt = '", "'", ";", "DROP TABLE t",
    "db.table", "dt=2026-01-21", "x", " ", "\0", "é", "-", "=",
];

#[derive(Debug, Arbitrary)]
enum Val {
    Text(Vec<u8>),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Null,
    List(Vec<Val>),
    Map(Vec<(u8, Val)>),
}

impl Val {
    fn json(&self, depth: u32) -> Value {
        match self {
            Val::Text(pieces) => Value::String(
                pieces
                    .iter()
                    .map(|p| PIECES[*p as usize % PIECES.len()])
                    .collect(),
            ),
            Val::Int(i) => json!(i),
            Val::Uint(u) => json!(u),
            Val::Float(f) => json!(f),
            Val::Bool(b) => json!(b),
            Val::Null => Value::Null,
            Val::List(items) if depth < 4 => {
                Value::Array(items.iter().map(|v| v.json(depth + 1)).collect())
            }
            Val::Map(entries) if depth < 4 => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (KEYS[*k as usize % KEYS.len()].to_owned(), v.json(depth + 1)))
                    .collect::<Map<_, _>>(),
            ),
            _ => Value::Null,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Step {
    name: u8,
    kind: u8,
    params: Vec<(u8, Val)>,
    agent: Option<u8>,
    role: u8,
    inputs: Vec<u8>,
    retry: Option<(Option<u32>, Option<u64>)>,
    timeout_secs: Option<u64>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    name: u8,
    steps: Vec<Step>,
}

fn build(input: &Input) -> Value {
    let name = |i: u8| NAMES[i as usize % NAMES.len()];
    let steps: Vec<Value> = input
        .steps
        .iter()
        .map(|s| {
            let roles = ["data_source", "training", "inference"];
            let placement = match s.agent {
                Some(a) => json!({"agent": name(a)}),
                None => json!({"role": roles[s.role as usize % 3]}),
            };
            let mut step = json!({
                "name": name(s.name),
                "kind": KINDS[s.kind as usize % KINDS.len()],
                "params": Value::Object(
                    s.params
                        .iter()
                        .map(|(k, v)| (KEYS[*k as usize % KEYS.len()].to_owned(), v.json(0)))
                        .collect(),
                ),
                "placement": placement,
                "inputs": s.inputs.iter().map(|i| name(*i)).collect::<Vec<_>>(),
            });
            if let Some((max_retries, backoff_ms)) = s.retry {
                step["retry"] = json!({"max_retries": max_retries, "backoff_ms": backoff_ms});
            }
            if let Some(t) = s.timeout_secs {
                step["timeout_secs"] = json!(t);
            }
            step
        })
        .collect();
    let name = ["w", "ctr.v1", "", "bad/name"][input.name as usize % 4];
    json!({"name": name, "steps": steps})
}

fuzz_target!(|input: Input| {
    let Ok(yaml) = serde_yaml::to_string(&build(&input)) else {
        return;
    };
    if let Ok(def) = WorkflowDef::from_yaml(&yaml) {
        ferry_fuzz::check_workflow(&def);
    }
});
