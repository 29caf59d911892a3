//! Retry policy with exponential back-off (seed 000 §7.2).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Seed 000 §7.2 defaults.
pub const SSH_CONNECT_MAX_RETRIES: u32 = 5;
pub const SSH_CONNECT_BACKOFF: Duration = Duration::from_secs(2);
pub const TRANSFER_MAX_RETRIES: u32 = 10;
pub const TRAIN_MAX_RESTARTS: u32 = 3;
pub const INFER_MAX_RETRIES: u32 = 5;
/// For step kinds the seed does not name (commands, SQL, loads).
pub const DEFAULT_MAX_RETRIES: u32 = 3;
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);
/// No single back-off waits longer than this, however many retries came before.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A step's retry limits as written in a workflow definition; missing fields take the
/// defaults of the step's kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// First back-off in milliseconds; each further retry doubles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

/// Resolved retry limits of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub backoff_ms: u64,
}

impl RetryPolicy {
    pub fn for_kind(kind: &str) -> Self {
        let max_retries = match kind {
            "transfer" => TRANSFER_MAX_RETRIES,
            "train" => TRAIN_MAX_RESTARTS,
            "infer" => INFER_MAX_RETRIES,
            _ => DEFAULT_MAX_RETRIES,
        };
        RetryPolicy {
            max_retries,
            backoff_ms: DEFAULT_BACKOFF.as_millis() as u64,
        }
    }

    pub fn with_overrides(self, spec: Option<RetrySpec>) -> Self {
        let spec = spec.unwrap_or_default();
        RetryPolicy {
            max_retries: spec.max_retries.unwrap_or(self.max_retries),
            backoff_ms: spec.backoff_ms.unwrap_or(self.backoff_ms),
        }
    }

    /// Whether a step that has already been retried `retry_count` times may be retried again.
    pub fn allows_retry(self, retry_count: u32) -> bool {
        retry_count < self.max_retries
    }

    /// Wait before retry number `retry` (1-based): base, 2×base, 4×base, … capped.
    pub fn backoff(self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(30);
        let ms = self.backoff_ms.saturating_mul(1u64 << exponent);
        Duration::from_millis(ms).min(MAX_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            backoff_ms: 2000,
        };
        assert_eq!(p.backoff(1), Duration::from_secs(2));
        assert_eq!(p.backoff(2), Duration::from_secs(4));
        assert_eq!(p.backoff(3), Duration::from_secs(8));
        assert_eq!(p.backoff(20), MAX_BACKOFF);
    }

    #[test]
    fn kind_defaults_follow_the_seed_and_overrides_win() {
        assert_eq!(RetryPolicy::for_kind("transfer").max_retries, 10);
        assert_eq!(RetryPolicy::for_kind("train").max_retries, 3);
        assert_eq!(RetryPolicy::for_kind("infer").max_retries, 5);
        let p = RetryPolicy::for_kind("exec").with_overrides(Some(RetrySpec {
            max_retries: Some(0),
            backoff_ms: None,
        }));
        assert_eq!(p.max_retries, 0);
        assert!(!p.allows_retry(0));
        assert_eq!(p.backoff_ms, 2000);
    }
}
