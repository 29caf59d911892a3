//! Seed 000 stage 5 on a compute host: the `monitor` kind writes the task's report (its steps,
//! training metrics per epoch, inference figures, transfers) as asked by the built-in CTR
//! pipeline to `{model_root}/{dataset_id}/{model_id}_report.json` and archives older runs,
//! inside the agent's roots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_core::config::FerryConfig;
use ferry_core::kinds::{self, MonitorParams};
use ferry_proto::v1;
use ferry_proto::v1::workflow_service_client::WorkflowServiceClient;
use serde_json::{Value, json};

use ferry_agent::executor::{Executor, JobContext, JobError, JobFuture};
use ferry_agent::paths::confine_to_roots;

/// Suffix of the files that mark a directory under `model_root` as one pipeline run.
const REPORT_SUFFIX: &str = "_report.json";

pub struct MonitorExecutor {
    coordinator_url: String,
    /// The agent's own certificate: the coordinator lets agents read (role `viewer`).
    tls: ferry_core::config::TlsConfig,
    roots: Vec<PathBuf>,
}

impl MonitorExecutor {
    pub fn new(config: &FerryConfig, coordinator_url: &str) -> MonitorExecutor {
        MonitorExecutor {
            coordinator_url: coordinator_url.to_owned(),
            tls: config.tls.clone(),
            roots: config.agent.effective_roots(config),
        }
    }
}

impl Executor for MonitorExecutor {
    fn kind(&self) -> &'static str {
        kinds::MONITOR
    }

    fn run(&self, ctx: JobContext) -> JobFuture {
        let url = self.coordinator_url.clone();
        let tls = self.tls.clone();
        let roots = self.roots.clone();
        Box::pin(async move {
            let p: MonitorParams = ctx.params()?;
            let report_path = confine_to_roots(&roots, &p.report_path)
                .map_err(|e| JobError::permanent(e.to_string()))?;
            let facts = gather(&url, &tls, ctx.task_id).await?;
            let report = build_report(&facts, &p.facts);
            let total = report["total_seconds"].as_f64().unwrap_or(0.0);
            write_report(&report_path, &report).map_err(|e| {
                JobError::transient(format!("cannot write {}: {e}", report_path.display()))
            })?;
            if let Some(auc) = report["training"]["best_val_auc"].as_f64() {
                ctx.info(format!("best validation AUC {auc:.4}"));
            }
            if let Some(rows) = report["inference"]["rows"].as_f64() {
                ctx.info(format!(
                    "inference {rows:.0} rows at {:.0} rows/s",
                    report["inference"]["rows_per_sec"].as_f64().unwrap_or(0.0)
                ));
            }
            ctx.info(format!("report written to {}", report_path.display()));
            // The report is also the step's progress document, so the coordinator's clients
            // (the dashboard's run page) show it without reaching the training host.
            ctx.progress(&json!({
                "phase": "report",
                "report_path": report_path.display().to_string(),
                "report": report,
            }));
            if p.keep_checkpoints > 0
                && let Some(root) = &p.model_root
            {
                let root = confine_to_roots(&roots, root)
                    .map_err(|e| JobError::permanent(e.to_string()))?;
                let keep = p.keep_checkpoints as usize;
                let archived = tokio::task::spawn_blocking(move || archive_old_runs(&root, keep))
                    .await
                    .map_err(|e| JobError::transient(e.to_string()))?
                    .map_err(|e| JobError::transient(format!("archiving old runs: {e}")))?;
                for dir in &archived {
                    ctx.info(format!("archived the older run {}", dir.display()));
                }
            }
            ctx.info(format!(
                "workflow complete - total time: {}",
                ferry_core::units::format_duration(std::time::Duration::from_secs_f64(
                    total.max(0.0)
                ))
            ));
            ctx.save_checkpoint(&json!({"report": report_path.display().to_string()}));
            Ok(())
        })
    }
}

/// What the coordinator knows about the task.
struct TaskFacts {
    detail: v1::TaskDetail,
    metrics: Vec<v1::Metric>,
    progress: Vec<v1::StepProgress>,
}

async fn gather(
    url: &str,
    tls: &ferry_core::config::TlsConfig,
    task_id: i64,
) -> Result<TaskFacts, JobError> {
    let unreachable = |e: tonic::transport::Error| {
        JobError::transient(format!("cannot reach the coordinator at {url}: {e}"))
    };
    let status = |e: tonic::Status| JobError::transient(format!("coordinator: {}", e.message()));
    let channel = ferry_proto::tls::endpoint(url, tls)
        .map_err(|e| JobError::permanent(e.to_string()))?
        .connect()
        .await
        .map_err(unreachable)?;
    let mut client = WorkflowServiceClient::new(channel);
    let r = v1::TaskRef { task_id };
    let detail = client.get_task(r).await.map_err(status)?.into_inner();
    let metrics = client
        .get_metrics(r)
        .await
        .map_err(status)?
        .into_inner()
        .metrics;
    let progress = client
        .get_progress(r)
        .await
        .map_err(status)?
        .into_inner()
        .steps;
    Ok(TaskFacts {
        detail,
        metrics,
        progress,
    })
}

fn seconds_between(a: &str, b: &str) -> Option<f64> {
    let a = chrono::DateTime::parse_from_rfc3339(a).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(b).ok()?;
    Some((b - a).num_milliseconds() as f64 / 1000.0)
}

fn build_report(f: &TaskFacts, extra: &BTreeMap<String, String>) -> Value {
    let task = f.detail.task.clone().unwrap_or_default();
    let now = chrono::Utc::now().to_rfc3339();
    let stages: Vec<Value> = f
        .detail
        .steps
        .iter()
        .map(|s| {
            json!({
                "stage": ferry_core::pipeline::stage_of(&s.name),
                "step": s.name, "kind": s.kind, "agent": s.agent, "status": s.status,
                "attempts": s.attempt,
                "started_at": s.started_at, "completed_at": s.completed_at,
                "seconds": seconds_between(&s.started_at, &s.completed_at),
            })
        })
        .collect();
    let kind_of: BTreeMap<&str, &str> = f
        .detail
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str()))
        .collect();
    // step -> metric -> index -> value
    let mut by_step: BTreeMap<&str, BTreeMap<&str, BTreeMap<i64, f64>>> = BTreeMap::new();
    for m in &f.metrics {
        by_step
            .entry(m.step.as_str())
            .or_default()
            .entry(m.name.as_str())
            .or_default()
            .insert(m.index, m.value);
    }
    let single = |step: &str, name: &str| {
        by_step
            .get(step)
            .and_then(|m| m.get(name))
            .and_then(|v| v.values().next_back().copied())
    };
    let mut training = json!({});
    for (step, metrics) in by_step
        .iter()
        .filter(|(s, _)| kind_of.get(*s) == Some(&kinds::TRAIN))
    {
        let mut epochs: BTreeMap<i64, serde_json::Map<String, Value>> = BTreeMap::new();
        for (name, values) in metrics {
            if *name == "best_val_auc" {
                continue;
            }
            for (epoch, v) in values {
                epochs
                    .entry(*epoch)
                    .or_default()
                    .insert((*name).to_owned(), json!(v));
            }
        }
        training = json!({
            "step": step,
            "epochs": epochs.into_iter().map(|(e, mut m)| {
                m.insert("epoch".into(), json!(e));
                Value::Object(m)
            }).collect::<Vec<_>>(),
            "best_val_auc": single(step, "best_val_auc"),
        });
    }
    let mut inference = json!({});
    for step in by_step
        .keys()
        .filter(|s| kind_of.get(*s) == Some(&kinds::INFER))
    {
        inference = json!({
            "step": step,
            "rows": single(step, "inference_rows"),
            "rows_per_sec": single(step, "inference_rows_per_sec"),
        });
    }
    let transfers: Vec<Value> = f
        .detail
        .steps
        .iter()
        .filter(|s| s.kind == kinds::TRANSFER)
        .map(|s| {
            let p = f.progress.iter().find(|p| p.step == s.name);
            json!({
                "step": s.name,
                "bytes": single(&s.name, "transfer_bytes"),
                "seconds": single(&s.name, "transfer_seconds"),
                "chunks_total": p.map(|p| p.chunks_total),
                "chunks_verified": p.map(|p| p.chunks_completed),
                "chunks_resent": p.map(|p| p.chunk_retries),
                "verified": p.is_some_and(|p| p.chunks_total > 0 && p.chunks_completed == p.chunks_total),
            })
        })
        .collect();
    let exports: Vec<Value> = f
        .detail
        .steps
        .iter()
        .filter(|s| s.kind == kinds::SQL_EXPORT)
        .map(|s| json!({"step": s.name, "rows": single(&s.name, "export_rows"), "bytes": single(&s.name, "export_bytes")}))
        .collect();
    let loads: Vec<Value> = f
        .detail
        .steps
        .iter()
        .filter(|s| s.kind == kinds::HIVE_LOAD)
        .map(|s| json!({"step": s.name, "rows": single(&s.name, "load_rows")}))
        .collect();
    json!({
        "task_id": task.id,
        "task_name": task.name,
        "workflow": task.workflow,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "generated_at": now,
        "total_seconds": seconds_between(&task.started_at, &now),
        "facts": extra,
        "stages": stages,
        "exports": exports,
        "transfers": transfers,
        "training": training,
        "inference": inference,
        "loads": loads,
    })
}

/// Written durably under a temporary name, then renamed: a reader never sees half a report.
fn write_report(path: &Path, report: &Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    ferry_fs::write_atomic(path, text.as_bytes())
}

/// Keeps the `keep` most recent run directories under `model_root` (those holding a
/// report) and moves the others into `{model_root}/archive/`. Returns what moved.
fn archive_old_runs(model_root: &Path, keep: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut runs: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(model_root)? {
        let dir = entry?.path();
        if !dir.is_dir() || dir.file_name().is_some_and(|n| n == "archive") {
            continue;
        }
        let mut newest = None;
        for f in std::fs::read_dir(&dir)? {
            let f = f?;
            if f.file_name().to_string_lossy().ends_with(REPORT_SUFFIX) {
                let t = f.metadata()?.modified()?;
                newest = newest.max(Some(t));
            }
        }
        if let Some(t) = newest {
            runs.push((t, dir));
        }
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut moved = Vec::new();
    if runs.len() <= keep {
        return Ok(moved);
    }
    let archive = model_root.join("archive");
    std::fs::create_dir_all(&archive)?;
    for (_, dir) in runs.into_iter().skip(keep) {
        let name = dir.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let mut target = archive.join(&name);
        let mut n = 1;
        while target.exists() {
            target = archive.join(format!("{}.{n}", name.to_string_lossy()));
            n += 1;
        }
        std::fs::rename(&dir, &target)?;
        moved.push(target);
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_runs_stay() {
        let root = tempfile::tempdir().expect("tmp");
        for (i, name) in ["run_a", "run_b", "run_c"].iter().enumerate() {
            let d = root.path().join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            let f = d.join(format!("m{REPORT_SUFFIX}"));
            std::fs::write(&f, "{}").expect("write");
            let t = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&f)
                .and_then(|h| h.set_modified(t))
                .expect("mtime");
        }
        // A directory without a report is not a pipeline run and is left alone.
        std::fs::create_dir_all(root.path().join("manual")).expect("mkdir");
        let moved = archive_old_runs(root.path(), 2).expect("archive");
        assert_eq!(moved, vec![root.path().join("archive/run_a")]);
        assert!(root.path().join("run_b").is_dir() && root.path().join("run_c").is_dir());
        assert!(root.path().join("manual").is_dir());
        assert!(archive_old_runs(root.path(), 2).expect("again").is_empty());
    }

    #[test]
    fn report_groups_training_epochs_and_transfer_verification() {
        let step = |name: &str, kind: &str| v1::Step {
            name: name.into(),
            kind: kind.into(),
            status: "completed".into(),
            started_at: "2026-01-22T10:00:00Z".into(),
            completed_at: "2026-01-22T10:00:30Z".into(),
            ..Default::default()
        };
        let metric = |step: &str, name: &str, index: i64, value: f64| v1::Metric {
            step: step.into(),
            name: name.into(),
            index,
            value,
            ..Default::default()
        };
        let facts = TaskFacts {
            detail: v1::TaskDetail {
                task: Some(v1::Task {
                    id: 9,
                    started_at: "2026-01-22T10:00:00Z".into(),
                    ..Default::default()
                }),
                steps: vec![
                    step("ship_sample", "transfer"),
                    step("train", "train"),
                    step("infer", "infer"),
                ],
            },
            metrics: vec![
                metric("train", "train_loss", 1, 0.5),
                metric("train", "val_auc", 1, 0.70),
                metric("train", "train_loss", 2, 0.4),
                metric("train", "val_auc", 2, 0.75),
                metric("train", "best_val_auc", 0, 0.75),
                metric("infer", "inference_rows", 0, 500.0),
                metric("ship_sample", "transfer_bytes", 0, 1024.0),
            ],
            progress: vec![v1::StepProgress {
                step: "ship_sample".into(),
                chunks_total: 3,
                chunks_completed: 3,
                ..Default::default()
            }],
        };
        let r = build_report(&facts, &BTreeMap::new());
        assert_eq!(
            r["training"]["epochs"][1],
            json!({"epoch": 2, "train_loss": 0.4, "val_auc": 0.75})
        );
        assert_eq!(r["training"]["best_val_auc"], 0.75);
        assert_eq!(r["inference"]["rows"], 500.0);
        assert_eq!(r["transfers"][0]["verified"], true);
        assert_eq!(r["stages"][1]["seconds"], 30.0);
        assert_eq!(r["stages"][0]["stage"], "data_fetch");
    }
}
