//! Step kinds the engine knows, and the parameters each takes.
//!
//! The coordinator validates parameters when a workflow is applied, so a typo fails at
//! `ferry workflow apply` instead of on an agent hours later. Agents parse the same structs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Run a program on the agent (seed 003's STANDALONE service).
pub const EXEC: &str = "exec";
/// Do nothing and succeed; kept for benchmarking the engine itself.
pub const NOOP: &str = "noop";

/// Every kind a workflow may name.
pub const KNOWN_KINDS: &[&str] = &[EXEC, NOOP];

/// Parameters of an `exec` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory on the agent; the agent's own work dir when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Exit codes that mean "retrying cannot help": the task pauses instead of retrying.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permanent_exit_codes: Vec<i32>,
    /// Kill the program (and fail the attempt, transiently) after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Parameters of a `noop` step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopParams {
    /// Optional pause before succeeding.
    #[serde(default)]
    pub sleep_ms: u64,
}

/// Checks that `params` are well-formed for `kind`. Returns a message fit to follow
/// "step `x`: ".
pub fn validate_params(kind: &str, params: &Value) -> Result<(), String> {
    match kind {
        EXEC => {
            let p: ExecParams = parse_params(params)?;
            if p.program.trim().is_empty() {
                return Err("`program` must not be empty".into());
            }
            if p.timeout_secs == Some(0) {
                return Err("`timeout_secs` must be at least 1".into());
            }
            Ok(())
        }
        NOOP => parse_params::<NoopParams>(params).map(|_| ()),
        other => Err(format!(
            "unknown step kind `{other}` (known kinds: {})",
            KNOWN_KINDS.join(", ")
        )),
    }
}

/// Deserializes a step's parameters; `null` counts as an empty object.
pub fn parse_params<T: serde::de::DeserializeOwned>(params: &Value) -> Result<T, String> {
    let value = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params.clone()
    };
    serde_json::from_value(value).map_err(|e| format!("invalid params: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exec_needs_a_program_and_rejects_unknown_fields() {
        assert!(validate_params(EXEC, &json!({"program": "true"})).is_ok());
        let err = validate_params(EXEC, &json!({})).expect_err("program missing");
        assert!(err.contains("program"), "{err}");
        let err = validate_params(EXEC, &json!({"program": "x", "argz": []})).expect_err("typo");
        assert!(err.contains("argz"), "{err}");
    }

    #[test]
    fn unknown_kinds_list_the_known_ones() {
        let err = validate_params("frobnicate", &Value::Null).expect_err("unknown");
        assert_eq!(
            err,
            "unknown step kind `frobnicate` (known kinds: exec, noop)"
        );
    }
}
