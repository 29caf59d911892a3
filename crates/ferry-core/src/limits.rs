//! How large and what shape a stored value may be: the column sizes of the coordinator's
//! tables and the cleaning every value from an agent or a user goes through before it is
//! stored. One place, so the engine (which checks values as they arrive) and the store (which
//! makes every row fit its column on every backend) apply the same rules.
//!
//! Sizes count characters, as PostgreSQL's `varchar(n)` does; SQLite enforces none, so a
//! value that fits here fits everywhere.

/// `workflow_steps.step_name`, `task_logs.step_name`, `step_metrics.step_name`, ….
pub const STEP_NAME: usize = 50;
/// `workflow_tasks.name` and `workflow_name`.
pub const TASK_NAME: usize = 255;
/// `step_metrics.name`.
pub const METRIC_NAME: usize = 100;
/// `transfer_chunks.chunk_id`.
pub const CHUNK_ID: usize = 100;
/// `transfer_chunks.source_path` / `dest_path`, `workflow_tasks.hdfs_path`.
pub const PATH: usize = 500;
/// `transfer_chunks.checksum`.
pub const CHECKSUM: usize = 64;
/// Every `status` column.
pub const STATUS: usize = 50;
/// `task_logs.level`.
pub const LOG_LEVEL: usize = 10;
/// `task_logs.source`.
pub const LOG_SOURCE: usize = 20;
/// `workflow_steps.kind`.
pub const KIND: usize = 50;
/// `workflow_steps.exec_constraint`.
pub const CONSTRAINT: usize = 20;
/// `workflow_tasks.experiment_id`, `training_server`, `inference_server`.
pub const SHORT_NAME: usize = 100;
/// `workflow_tasks.hive_table`.
pub const TABLE_NAME: usize = 255;
/// Agent names and job ids (`varchar` without a size; bounded here so nothing unbounded
/// reaches an index).
pub const IDENT: usize = 255;
/// Free text: a log line, an error message, a status reason. Longer text is cut with a note.
pub const MESSAGE: usize = 64 * 1024;
/// Structured text the engine stores whole (step parameters, checkpoints, progress): bounded
/// far above what a gRPC message can carry, so only a value that never came through the API
/// is ever cut.
pub const DOCUMENT: usize = 16 * 1024 * 1024;

/// The most bytes a step's rendered parameters may take: a `CreateJob` carries them (with the
/// step's checkpoint, bounded the same), and every gRPC message must stay under the 4 MiB
/// that peers accept by default. A task whose step would exceed it is refused at creation.
pub const STEP_PARAMS_BYTES: usize = 1024 * 1024;
/// The most bytes of a checkpoint or progress document an agent may report; a larger one is
/// refused with a log line and the previous one kept.
pub const STEP_STATE_BYTES: usize = 1024 * 1024;

/// The most bytes one client request or answer may take (a workflow definition of 100,000
/// steps is about 6 MiB); the coordinator and the CLI accept this much.
pub const REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// What [`fit`] appends to a value it had to cut.
const CUT_MARK: &str = "…";

/// Makes `s` storable in a column of `max` characters: NUL bytes (which PostgreSQL's text
/// types refuse) are replaced by U+FFFD, and a longer value is cut on a character boundary,
/// ending in `…`. Returns whether anything changed.
pub fn fit(s: &mut String, max: usize) -> bool {
    let mut changed = false;
    if s.contains('\0') {
        *s = s.replace('\0', "\u{FFFD}");
        changed = true;
    }
    if let Some((cut, _)) = s.char_indices().nth(max) {
        // Leave room for the mark when the column can hold it.
        let keep = if max > CUT_MARK.chars().count() {
            s.char_indices()
                .nth(max - CUT_MARK.chars().count())
                .map_or(cut, |(i, _)| i)
        } else {
            cut
        };
        s.truncate(keep);
        if max > CUT_MARK.chars().count() {
            s.push_str(CUT_MARK);
        }
        changed = true;
    }
    changed
}

/// [`fit`] for an optional column.
pub fn fit_opt(s: &mut Option<String>, max: usize) -> bool {
    s.as_mut().is_some_and(|s| fit(s, max))
}

/// An owned copy of `s` made to fit `max` characters.
pub fn fitted(s: &str, max: usize) -> String {
    let mut s = s.to_owned();
    fit(&mut s, max);
    s
}

/// Why a value a user gave cannot be stored (their request is refused; nothing is cut).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{what} contains a NUL byte")]
    Nul { what: String },
    #[error("{what} is {len} characters long; at most {max} are allowed")]
    TooLong {
        what: String,
        len: usize,
        max: usize,
    },
}

/// Checks a value a user typed, for a column of `max` characters (`None`: unbounded text).
pub fn check_user_text(what: &str, s: &str, max: Option<usize>) -> Result<(), ValueError> {
    if s.contains('\0') {
        return Err(ValueError::Nul { what: what.into() });
    }
    if let Some(max) = max {
        let len = s.chars().count();
        if len > max {
            return Err(ValueError::TooLong {
                what: what.into(),
                len,
                max,
            });
        }
    }
    Ok(())
}

/// A metric value the store can keep: finite. NaN and infinities (a diverging training run
/// reports them) are refused with a message the engine logs on the task.
pub fn check_metric(name: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!(
            "metric `{}` = {value} is not a finite number; not stored",
            fitted(name, METRIC_NAME)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_are_replaced() {
        let mut s = String::from("a\0b");
        assert!(fit(&mut s, 10));
        assert_eq!(s, "a\u{FFFD}b");
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary_with_a_mark() {
        let mut s = "é".repeat(60);
        assert!(fit(&mut s, 50));
        assert_eq!(s.chars().count(), 50);
        assert!(s.ends_with('…'));
        let mut short = String::from("fits");
        assert!(!fit(&mut short, 4));
        assert_eq!(short, "fits");
        let mut tiny = String::from("abc");
        assert!(fit(&mut tiny, 1));
        assert_eq!(tiny, "a");
    }

    #[test]
    fn non_finite_metrics_are_refused_by_name() {
        assert_eq!(check_metric("loss", 0.5), Ok(0.5));
        let err = check_metric("loss", f64::NAN).expect_err("NaN");
        assert_eq!(
            err,
            "metric `loss` = NaN is not a finite number; not stored"
        );
        assert!(check_metric("auc", f64::INFINITY).is_err());
        assert!(check_metric("auc", f64::NEG_INFINITY).is_err());
    }

    #[test]
    fn user_text_is_refused_not_cut() {
        assert!(check_user_text("task name", "ok", Some(255)).is_ok());
        assert_eq!(
            check_user_text("task name", &"x".repeat(256), Some(255)),
            Err(ValueError::TooLong {
                what: "task name".into(),
                len: 256,
                max: 255
            })
        );
        assert_eq!(
            check_user_text("parameter `day`", "a\0", None)
                .expect_err("NUL")
                .to_string(),
            "parameter `day` contains a NUL byte"
        );
    }
}
