//! The commit and the outbox: what a turn accumulates (rows, logs, agent commands, replies,
//! broadcasts), committed in one transaction, then sent. Persist, then act.

use super::*;

impl Engine {
    pub(super) fn log_step(&mut self, key: StepKey, level: &str, message: String) {
        let step = self.step(key).row.step_name.clone();
        self.log(key.0, &step, level, message);
    }

    pub(super) fn log(&mut self, task_id: i64, step: &str, level: &str, message: String) {
        info!(task_id, step, "{message}");
        self.push_log(task_id, step, level, LOG_SOURCE_ENGINE, message);
    }

    pub(super) fn push_log(
        &mut self,
        task_id: i64,
        step: &str,
        level: &str,
        source: &str,
        message: String,
    ) {
        let id = self.next_log_id;
        self.next_log_id += 1;
        self.new_logs.push(task_log::Model {
            id,
            task_id,
            step_name: step.to_owned(),
            ts: Utc::now(),
            level: level.to_owned(),
            source: source.to_owned(),
            message,
        });
    }

    pub(super) fn send(&mut self, agent: &str, msg: coordinator_message::Msg) {
        self.outbox.push((agent.to_owned(), msg));
    }

    /// Rows the store could not keep: logged, counted, and told on their task (in the next
    /// turn's commit, as an engine line that always fits).
    pub(super) fn quarantine(&mut self, report: ferry_store::CommitReport) {
        if report.adjusted > 0 {
            debug!(
                values = report.adjusted,
                "values cleaned or cut to fit their columns"
            );
        }
        if report.quarantined.is_empty() {
            return;
        }
        self.settings
            .observer
            .on_quarantined(report.quarantined.len() as u64);
        for q in report.quarantined {
            error!(task_id = q.task_id, row = %q.what, error = %q.error, "row quarantined");
            if self.tasks.contains_key(&q.task_id) {
                let message = format!(
                    "{} could not be stored and was quarantined: {}",
                    q.what,
                    ferry_core::limits::fitted(&q.error, 1024)
                );
                self.log(q.task_id, "", "WARN", message);
            }
        }
    }

    /// Commits this turn's changes, then sends what they imply. A commit the database does
    /// not answer is retried (nothing is sent before it succeeds): losing the state would be
    /// worse than waiting. Rows it refuses are split off by the store and quarantined, so one
    /// bad value never stops the engine.
    pub(super) async fn flush(&mut self, shutdown: &CancellationToken) {
        let mut batch = WriteBatch {
            tasks: self
                .dirty_tasks
                .iter()
                .filter_map(|id| self.tasks.get(id).map(|t| t.row.clone()))
                .collect(),
            steps: self
                .dirty_steps
                .iter()
                .filter_map(|(t, i)| self.tasks.get(t).map(|t| t.steps[*i].row.clone()))
                .collect(),
            logs: std::mem::take(&mut self.new_logs),
            metrics: std::mem::take(&mut self.new_metrics),
            chunks: std::mem::take(&mut self.new_chunks),
            cursors: self
                .dirty_cursors
                .iter()
                .filter_map(|name| {
                    self.cursors
                        .get(name)
                        .map(|c| ferry_store::agent_cursor::Model {
                            agent_name: name.clone(),
                            instance: c.instance as i64,
                            seq: c.seq as i64,
                        })
                })
                .collect(),
        };
        // Once this commit stores them, the agents may let their events go.
        for name in std::mem::take(&mut self.dirty_cursors) {
            if let Some(c) = self.cursors.get(&name) {
                let ack = coordinator_message::Msg::Ack(v1::Ack { seq: c.seq });
                self.outbox.push((name, ack));
            }
        }
        self.dirty_tasks.clear();
        self.dirty_steps.clear();
        let mut backoff = Duration::from_millis(100);
        let report = loop {
            match self.store.commit(&mut batch).await {
                Ok(report) => break report,
                Err(e) => {
                    error!(error = %e, "cannot persist engine state; retrying");
                    if shutdown.is_cancelled() && backoff >= Duration::from_secs(5) {
                        error!("giving up on persisting the last changes during shutdown");
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        self.quarantine(report);
        for (agent, msg) in self.outbox.drain(..) {
            let sent = self
                .agents
                .get(&agent)
                .and_then(|a| a.conn.as_ref())
                .is_some_and(|(_, tx)| {
                    tx.send(Ok(v1::CoordinatorMessage { msg: Some(msg) }))
                        .is_ok()
                });
            if !sent {
                // The agent is gone; its steps are recovered when it re-registers or times out.
                debug!(agent = %agent, "command not delivered: agent disconnected");
            }
        }
        for reply in self.replies.drain(..) {
            reply();
        }
        for log in batch.logs {
            let _ = self.broadcast.send(Broadcast::Log(log));
        }
        for b in self.broadcasts.drain(..) {
            let _ = self.broadcast.send(b);
        }
        for outcome in self.finished.drain(..) {
            self.settings.observer.on_task_finished(outcome);
        }
        // Forget finished tasks; the database has them.
        self.tasks
            .retain(|_, t| !matches!(t.status, TaskStatus::Completed | TaskStatus::Cancelled));
    }
}
