//! The SSH masters of one agent: one per account (host, port, user, keys), kept across
//! steps and tasks so a hop pays no new login, and never reused once dead.
//!
//! - [`SessionPool::get`] probes a kept master with a round trip before handing it out; a
//!   master whose connection died (a link cut, a restarted sshd) is ended and replaced.
//! - [`SessionPool::discard`] ends a master after a failure that may be its fault, so the
//!   retry starts on a fresh connection whatever the probe would have said.
//! - Masters exit by themselves after `idle_timeout` without use (ssh's `ControlPersist`),
//!   [`SessionPool::close_all`] ends them when the agent stops, and [`reap_masters`] ends
//!   those a killed agent left behind when it starts again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::TransferError;
use crate::ssh::{SshSession, SshTarget};

pub use crate::ssh::reap_masters;

/// How long a kept master has to answer a `true` before it counts as dead.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A master that carried a transfer this recently is handed out without a probe (each
/// probe is a remote command: a shell start on the other host, 5–150 ms), once `ssh -O
/// check` says its process still runs. A cut in that window still ends in a failure that
/// discards it, and the retry connects afresh.
pub const TRUST_FOR: Duration = Duration::from_secs(10);

/// One master per account and key list: two server entries for the same account with
/// different keys each authenticate with their own.
type PoolKey = (String, u16, String, Vec<PathBuf>);

fn key(t: &SshTarget) -> PoolKey {
    (t.host.clone(), t.port, t.user.clone(), t.keys.clone())
}

pub struct SessionPool {
    base: PathBuf,
    probe_timeout: Duration,
    trust_for: Duration,
    sessions: Mutex<HashMap<PoolKey, Kept>>,
}

struct Kept {
    session: Arc<SshSession>,
    /// When the master last proved alive (a probe answered, or a transfer went through).
    alive_at: Instant,
}

impl SessionPool {
    /// Masters' control sockets go under `base`, one folder per account.
    pub fn new(base: &Path) -> SessionPool {
        SessionPool {
            base: base.to_owned(),
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            trust_for: TRUST_FOR,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_probe_timeout(mut self, timeout: Duration) -> SessionPool {
        self.probe_timeout = timeout;
        self
    }

    /// How long after it last proved alive a master is handed out without a probe.
    pub fn with_trust_for(mut self, window: Duration) -> SessionPool {
        self.trust_for = window;
        self
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// A live master for `target`: the kept one if it answers a round trip within the
    /// probe timeout, else a new one (the dead one ended first).
    pub async fn get(&self, target: &SshTarget) -> Result<Arc<SshSession>, TransferError> {
        let mut sessions = self.sessions.lock().await;
        if let Some(kept) = sessions.get_mut(&key(target)) {
            let s = kept.session.clone();
            // Recently proven: only the (local) check that its process still runs.
            if kept.alive_at.elapsed() < self.trust_for && s.master_running().await {
                return Ok(s);
            }
            if s.is_alive(self.probe_timeout).await {
                kept.alive_at = Instant::now();
                return Ok(s);
            }
            warn!(
                host = %target.host,
                port = target.port,
                "the ssh master to {} no longer answers; opening a new one",
                target.host
            );
            sessions.remove(&key(target));
            end(s).await;
        }
        let dir = self
            .base
            .join(format!("{}-{}-{}", target.host, target.port, target.user));
        let s = Arc::new(SshSession::connect(target, &dir).await?);
        sessions.insert(
            key(target),
            Kept {
                session: s.clone(),
                alive_at: Instant::now(),
            },
        );
        Ok(s)
    }

    /// Notes that the master for `target` just carried work (a transfer that succeeded),
    /// so a `get` soon after needs no probe.
    pub async fn worked(&self, target: &SshTarget) {
        if let Some(kept) = self.sessions.lock().await.get_mut(&key(target)) {
            kept.alive_at = Instant::now();
        }
    }

    /// Ends and forgets the master for `target` (after a failure that may be the
    /// connection's), so the next `get` connects afresh.
    pub async fn discard(&self, target: &SshTarget) {
        let removed = self.sessions.lock().await.remove(&key(target));
        if let Some(kept) = removed {
            end(kept.session).await;
        }
    }

    /// Ends every master (the agent is stopping).
    pub async fn close_all(&self) {
        let all: Vec<Arc<SshSession>> = self
            .sessions
            .lock()
            .await
            .drain()
            .map(|(_, kept)| kept.session)
            .collect();
        let n = all.len();
        for s in all {
            end(s).await;
        }
        if n > 0 {
            info!(masters = n, "ssh masters closed");
        }
    }

    /// How many masters are kept.
    pub async fn len(&self) -> usize {
        self.sessions.lock().await.len()
    }

    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

/// Closes a master once no transfer holds it any more; one still in use (a transfer that
/// is failing on it right now) is ended through its socket all the same.
async fn end(s: Arc<SshSession>) {
    match Arc::try_unwrap(s) {
        Ok(s) => s.close().await,
        Err(shared) => shared.exit_master().await,
    }
}
