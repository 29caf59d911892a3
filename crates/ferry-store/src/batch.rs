//! The engine's unit of writing: one turn's row changes, made storable before they are
//! written, and split when the database still refuses them, so that one bad row never blocks
//! the rows around it (no poison pills).

use std::collections::HashMap;

use ferry_core::limits::{self, fit, fit_opt};

use crate::entity::{
    agent_cursor, step_metric, task_log, transfer_chunk, workflow_step, workflow_task,
};

/// Changes the engine commits together, in one transaction.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub tasks: Vec<workflow_task::Model>,
    pub steps: Vec<workflow_step::Model>,
    /// Inserted with their ids; a log id already stored is skipped, so a batch written again
    /// after a partial failure stores each line once.
    pub logs: Vec<task_log::Model>,
    /// Inserted (the id is assigned by the database).
    pub metrics: Vec<step_metric::Model>,
    /// Upserted by (task_id, step_name, chunk_id); the id is ignored.
    pub chunks: Vec<transfer_chunk::Model>,
    /// Upserted by agent: how far its numbered events are stored (with the rows they made).
    pub cursors: Vec<agent_cursor::Model>,
}

/// A row the database refused even alone. The rest of its batch was stored; this one is
/// logged, counted and shown on its task by the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub task_id: i64,
    /// What the row was, e.g. "metric `loss` of step `train`".
    pub what: String,
    pub error: String,
}

/// What a commit had to do besides writing.
#[derive(Debug, Default)]
pub struct CommitReport {
    /// Values changed to fit their columns (NUL bytes replaced, text cut) and duplicate rows
    /// merged.
    pub adjusted: usize,
    /// Rows that could not be stored.
    pub quarantined: Vec<Quarantined>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
            + self.steps.len()
            + self.logs.len()
            + self.metrics.len()
            + self.chunks.len()
            + self.cursors.len()
    }

    /// Makes every row storable on every backend: text fits its column without NUL bytes,
    /// metrics are finite (others are removed and reported), and the chunk upsert holds each
    /// key once (the last report wins), which PostgreSQL requires of one statement.
    pub fn sanitize(&mut self, report: &mut CommitReport) {
        let mut n = 0usize;
        let mut count = |changed: bool| n += usize::from(changed);
        for t in &mut self.tasks {
            count(fit(&mut t.name, limits::TASK_NAME));
            count(fit(&mut t.workflow_name, limits::TASK_NAME));
            count(fit_opt(&mut t.experiment_id, limits::SHORT_NAME));
            count(fit_opt(&mut t.sample_sql, limits::DOCUMENT));
            count(fit_opt(&mut t.infer_sql, limits::DOCUMENT));
            count(fit_opt(&mut t.hdfs_path, limits::PATH));
            count(fit_opt(&mut t.hive_table, limits::TABLE_NAME));
            count(fit(&mut t.status, limits::STATUS));
            count(fit_opt(&mut t.status_reason, limits::MESSAGE));
            count(fit_opt(&mut t.training_server, limits::SHORT_NAME));
            count(fit_opt(&mut t.inference_server, limits::SHORT_NAME));
            count(fit(&mut t.params, limits::DOCUMENT));
        }
        for s in &mut self.steps {
            count(fit(&mut s.step_name, limits::STEP_NAME));
            count(fit(&mut s.kind, limits::KIND));
            count(fit(&mut s.params, limits::DOCUMENT));
            count(fit(&mut s.placement, limits::DOCUMENT));
            count(fit(&mut s.depends_on, limits::DOCUMENT));
            count(fit(&mut s.exec_constraint, limits::CONSTRAINT));
            count(fit(&mut s.status, limits::STATUS));
            count(fit_opt(&mut s.agent_name, limits::IDENT));
            count(fit_opt(&mut s.job_id, limits::IDENT));
            count(fit_opt(&mut s.error_message, limits::MESSAGE));
            count(fit_opt(&mut s.checkpoint_data, limits::DOCUMENT));
            count(fit_opt(&mut s.progress, limits::DOCUMENT));
        }
        for l in &mut self.logs {
            count(fit(&mut l.step_name, limits::STEP_NAME));
            count(fit(&mut l.level, limits::LOG_LEVEL));
            count(fit(&mut l.source, limits::LOG_SOURCE));
            count(fit(&mut l.message, limits::MESSAGE));
        }
        let mut finite = Vec::with_capacity(self.metrics.len());
        for mut m in std::mem::take(&mut self.metrics) {
            count(fit(&mut m.step_name, limits::STEP_NAME));
            count(fit(&mut m.name, limits::METRIC_NAME));
            match limits::check_metric(&m.name, m.value) {
                Ok(_) => finite.push(m),
                Err(error) => report.quarantined.push(Quarantined {
                    task_id: m.task_id,
                    what: format!("metric `{}` of step `{}`", m.name, m.step_name),
                    error,
                }),
            }
        }
        self.metrics = finite;
        for c in &mut self.cursors {
            count(fit(&mut c.agent_name, limits::IDENT));
        }
        for c in &mut self.chunks {
            count(fit(&mut c.step_name, limits::STEP_NAME));
            count(fit(&mut c.chunk_id, limits::CHUNK_ID));
            count(fit_opt(&mut c.source_path, limits::PATH));
            count(fit_opt(&mut c.dest_path, limits::PATH));
            count(fit_opt(&mut c.checksum, limits::CHECKSUM));
            count(fit(&mut c.status, limits::STATUS));
            count(fit_opt(&mut c.error_message, limits::MESSAGE));
        }
        // One row per chunk key, at the place of its last report.
        let mut last: HashMap<(i64, String, String), usize> = HashMap::new();
        for (i, c) in self.chunks.iter().enumerate() {
            last.insert((c.task_id, c.step_name.clone(), c.chunk_id.clone()), i);
        }
        if last.len() < self.chunks.len() {
            n += self.chunks.len() - last.len();
            let keep: std::collections::HashSet<usize> = last.into_values().collect();
            let mut i = 0;
            self.chunks.retain(|_| {
                let k = keep.contains(&i);
                i += 1;
                k
            });
        }
        report.adjusted += n;
    }

    /// The first `at` rows (in the order tasks, steps, logs, metrics, chunks) and the rest.
    pub(crate) fn split_at(&self, at: usize) -> (WriteBatch, WriteBatch) {
        let mut left = WriteBatch::default();
        let mut right = WriteBatch::default();
        let mut budget = at;
        fn take<T: Clone>(rows: &[T], budget: &mut usize, l: &mut Vec<T>, r: &mut Vec<T>) {
            let n = rows.len().min(*budget);
            l.extend_from_slice(&rows[..n]);
            r.extend_from_slice(&rows[n..]);
            *budget -= n;
        }
        take(&self.tasks, &mut budget, &mut left.tasks, &mut right.tasks);
        take(&self.steps, &mut budget, &mut left.steps, &mut right.steps);
        take(&self.logs, &mut budget, &mut left.logs, &mut right.logs);
        take(
            &self.metrics,
            &mut budget,
            &mut left.metrics,
            &mut right.metrics,
        );
        take(
            &self.chunks,
            &mut budget,
            &mut left.chunks,
            &mut right.chunks,
        );
        take(
            &self.cursors,
            &mut budget,
            &mut left.cursors,
            &mut right.cursors,
        );
        (left, right)
    }

    /// Names the one row of a single-row batch, for a quarantine record.
    pub(crate) fn describe_single(&self, error: String) -> Quarantined {
        let (task_id, what) = if let Some(t) = self.tasks.first() {
            (t.id, format!("task row {}", t.id))
        } else if let Some(s) = self.steps.first() {
            (s.task_id, format!("step `{}`", s.step_name))
        } else if let Some(l) = self.logs.first() {
            (
                l.task_id,
                format!("log line {} of step `{}`", l.id, l.step_name),
            )
        } else if let Some(m) = self.metrics.first() {
            (
                m.task_id,
                format!("metric `{}` of step `{}`", m.name, m.step_name),
            )
        } else if let Some(c) = self.chunks.first() {
            (
                c.task_id,
                format!("chunk `{}` of step `{}`", c.chunk_id, c.step_name),
            )
        } else if let Some(c) = self.cursors.first() {
            (0, format!("event cursor of agent `{}`", c.agent_name))
        } else {
            (0, "nothing".to_owned())
        };
        Quarantined {
            task_id,
            what,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn metric(name: &str, value: f64) -> step_metric::Model {
        step_metric::Model {
            id: 0,
            task_id: 1,
            step_name: "train".into(),
            name: name.into(),
            value,
            idx: 0,
            ts: Utc::now(),
        }
    }

    fn chunk(id: &str, status: &str) -> transfer_chunk::Model {
        transfer_chunk::Model {
            id: 0,
            task_id: 1,
            step_name: "ship".into(),
            chunk_id: id.into(),
            source_path: None,
            dest_path: None,
            offset: None,
            size: None,
            checksum: None,
            status: status.into(),
            started_at: None,
            completed_at: None,
            retry_count: 0,
            error_message: None,
        }
    }

    #[test]
    fn sanitize_removes_non_finite_metrics_and_merges_duplicate_chunks() {
        let mut b = WriteBatch {
            metrics: vec![
                metric("loss", 0.5),
                metric("loss", f64::NAN),
                metric("x\0", 1.0),
            ],
            chunks: vec![
                chunk("a", "in_progress"),
                chunk("b", "in_progress"),
                chunk("a", "completed"),
            ],
            ..Default::default()
        };
        let mut report = CommitReport::default();
        b.sanitize(&mut report);
        assert_eq!(b.metrics.len(), 2);
        assert_eq!(b.metrics[1].name, "x\u{FFFD}");
        assert_eq!(report.quarantined.len(), 1);
        assert_eq!(report.quarantined[0].what, "metric `loss` of step `train`");
        let kept: Vec<(&str, &str)> = b
            .chunks
            .iter()
            .map(|c| (c.chunk_id.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(kept, [("b", "in_progress"), ("a", "completed")]);
        assert_eq!(report.adjusted, 2, "one NUL replaced, one duplicate merged");
    }

    #[test]
    fn split_keeps_every_row_once_in_order() {
        let b = WriteBatch {
            metrics: vec![metric("a", 1.0), metric("b", 2.0)],
            chunks: vec![chunk("c", "completed")],
            cursors: vec![agent_cursor::Model {
                agent_name: "a".into(),
                instance: 1,
                seq: 2,
            }],
            ..Default::default()
        };
        let (l, r) = b.split_at(1);
        assert_eq!((l.len(), r.len()), (1, 3));
        assert_eq!(r.cursors.len(), 1);
        assert_eq!(l.metrics[0].name, "a");
        assert_eq!(r.metrics[0].name, "b");
        assert_eq!(r.chunks[0].chunk_id, "c");
        assert_eq!(
            r.describe_single("e".into()).what,
            "metric `b` of step `train`"
        );
    }
}
