//! Following a task: its log from a given line, then live lines, step state changes and
//! progress, then its end state. One implementation behind gRPC's `FollowLogs` and the HTTP
//! face's WebSocket and Server-Sent Events streams.
//!
//! Memory stays bounded per follower whatever the follower does: events pass through a
//! channel of [`FOLLOW_BUFFER`] entries; while it is full the follower's task waits, the
//! engine's broadcast ring moves on without it, and on waking the follower re-reads what it
//! missed from the store (logs from its last line, a fresh snapshot of the steps), so a slow
//! reader is skipped ahead rather than buffered for.

use ferry_store::{Store, task_log, workflow_step};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::engine::{Broadcast, EngineHandle};
use crate::error::EngineError;

/// Events buffered per follower before its task waits.
pub const FOLLOW_BUFFER: usize = 256;
const LOG_PAGE: u64 = 1000;

#[derive(Debug, Clone)]
pub enum FollowEvent {
    Log(task_log::Model),
    /// A step's state (sent for every step at the start, after a skip, and on each change).
    Step {
        step: String,
        status: String,
        progress_json: Option<String>,
    },
    Progress {
        step: String,
        progress_json: String,
    },
    /// The task can make no more progress on its own; the last event.
    End {
        status: String,
        reason: Option<String>,
    },
}

/// What a follower wants besides log lines.
#[derive(Debug, Clone, Copy)]
pub struct FollowOptions {
    /// Step states and progress too (the HTTP streams); logs only for gRPC's `FollowLogs`.
    pub states: bool,
}

/// Whether a task in `status` ends a follow.
pub fn ends_follow(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// Starts following `task_id` from log lines after `after_id`. The caller has checked the
/// task exists and that the caller may read it.
pub fn follow(
    store: Store,
    engine: &EngineHandle,
    task_id: i64,
    after_id: i64,
    options: FollowOptions,
) -> mpsc::Receiver<Result<FollowEvent, EngineError>> {
    // Subscribe before reading history so nothing falls between the two.
    let mut sub = engine.subscribe();
    let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
    tokio::spawn(async move {
        let mut f = Follower {
            store,
            task_id,
            last: after_id,
            tx,
            options,
        };
        if !f.catch_up().await {
            return;
        }
        if !f.snapshot().await {
            return;
        }
        match f.store.task(task_id).await {
            Ok(Some(t)) if ends_follow(&t.status) => {
                f.finish(t.status, t.status_reason).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = f.tx.send(Err(EngineError::Store(e))).await;
                return;
            }
        }
        loop {
            let ok = match sub.recv().await {
                Ok(Broadcast::Log(l)) if l.task_id == task_id && l.id > f.last => {
                    f.last = l.id;
                    f.send(FollowEvent::Log(l)).await
                }
                Ok(Broadcast::Step {
                    task_id: t,
                    step,
                    status,
                }) if t == task_id && options.states => {
                    f.send(FollowEvent::Step {
                        step,
                        status: status.as_str().to_owned(),
                        progress_json: None,
                    })
                    .await
                }
                Ok(Broadcast::Progress {
                    task_id: t,
                    step,
                    progress_json,
                }) if t == task_id && options.states => {
                    f.send(FollowEvent::Progress {
                        step,
                        progress_json,
                    })
                    .await
                }
                Ok(Broadcast::TaskStatus { task_id: t, status })
                    if t == task_id && ends_follow(status.as_str()) =>
                {
                    let reason = match f.store.task(task_id).await {
                        Ok(Some(t)) => t.status_reason,
                        _ => None,
                    };
                    f.finish(status.as_str().to_owned(), reason).await;
                    return;
                }
                Ok(_) => true,
                Err(RecvError::Lagged(_)) => f.catch_up().await && f.snapshot().await,
                Err(RecvError::Closed) => return,
            };
            if !ok {
                return;
            }
        }
    });
    rx
}

struct Follower {
    store: Store,
    task_id: i64,
    last: i64,
    tx: mpsc::Sender<Result<FollowEvent, EngineError>>,
    options: FollowOptions,
}

impl Follower {
    /// False when the follower went away.
    async fn send(&self, event: FollowEvent) -> bool {
        self.tx.send(Ok(event)).await.is_ok()
    }

    /// Sends every stored line after `last`.
    async fn catch_up(&mut self) -> bool {
        loop {
            let rows = match self.store.logs(self.task_id, self.last, LOG_PAGE).await {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = self.tx.send(Err(EngineError::Store(e))).await;
                    return false;
                }
            };
            if rows.is_empty() {
                return true;
            }
            for row in rows {
                self.last = row.id;
                if !self.send(FollowEvent::Log(row)).await {
                    return false;
                }
            }
        }
    }

    /// Every step's state and progress as stored now (when states are followed).
    async fn snapshot(&self) -> bool {
        if !self.options.states {
            return true;
        }
        let steps: Vec<workflow_step::Model> = match self.store.steps(self.task_id).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.tx.send(Err(EngineError::Store(e))).await;
                return false;
            }
        };
        for s in steps {
            let event = FollowEvent::Step {
                step: s.step_name,
                status: s.status,
                progress_json: s.progress,
            };
            if !self.send(event).await {
                return false;
            }
        }
        true
    }

    async fn finish(&mut self, status: String, reason: Option<String>) {
        if self.catch_up().await && self.snapshot().await {
            let _ = self.send(FollowEvent::End { status, reason }).await;
        }
    }
}
