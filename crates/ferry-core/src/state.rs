//! The state machines of jobs (on agents), steps (in the coordinator) and tasks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Declares a string-backed enum with `as_str`, `Display`, `FromStr` and a list of all values.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        what: stringify!($name),
                        value: s.to_owned(),
                        expected: vec![$($text),+],
                    }),
                }
            }
        }
    };
}

/// A string that names no value of an enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}` (expected one of: {})", expected.join(", "))]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
    pub expected: Vec<&'static str>,
}

string_enum! {
    /// The server role an agent plays (seed 000 §3.2).
    Role {
        DataSource => "data_source",
        Training => "training",
        Inference => "inference",
    }
}

string_enum! {
    /// A job's state on its agent (seed 003): created IDLE, READY once started and its
    /// constraint holds, RUNNING, then one terminal state.
    JobState {
        Idle => "IDLE",
        Ready => "READY",
        Running => "RUNNING",
        Completed => "COMPLETED",
        Failed => "FAILED",
        Cancelled => "CANCELLED",
    }
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }

    /// Whether a job may move from `self` to `next`. Any live state may be cancelled or fail;
    /// otherwise states only move forward one step at a time (READY may be skipped by a job
    /// that starts the moment its start command arrives).
    pub fn can_transition_to(self, next: JobState) -> bool {
        use JobState::*;
        match (self, next) {
            (a, b) if a == b => false,
            (a, _) if a.is_terminal() => false,
            (_, Cancelled) | (_, Failed) => true,
            (Idle, Ready) | (Idle, Running) | (Ready, Running) | (Running, Completed) => true,
            _ => false,
        }
    }
}

string_enum! {
    /// A step's state in the coordinator's database (`workflow_steps.status`).
    StepStatus {
        /// IDLE: waiting for its inputs (INPUTS_READY), an agent, or its retry back-off.
        Pending => "pending",
        /// Phase one sent: the job is being created on its agent.
        Dispatching => "dispatching",
        /// Phase two sent: the agent has the job and was told to start it.
        Ready => "ready",
        Running => "running",
        /// Held until a person approves or rejects it; no job exists.
        AwaitingApproval => "awaiting_approval",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Completed | StepStatus::Failed | StepStatus::Cancelled
        )
    }

    /// A job exists (or may exist) on an agent for this step.
    pub fn is_on_agent(self) -> bool {
        matches!(
            self,
            StepStatus::Dispatching | StepStatus::Ready | StepStatus::Running
        )
    }
}

string_enum! {
    /// A task's state (`workflow_tasks.status`).
    TaskStatus {
        Pending => "pending",
        Running => "running",
        Paused => "paused",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Cancelled)
    }
}

string_enum! {
    /// How the engine treats a failed job (seed 000 §7.1).
    ErrorClass {
        /// Retry with exponential back-off, up to the step's limit.
        Transient => "transient",
        /// Retrying cannot help (bad credentials, bad input): the task pauses with the reason.
        Permanent => "permanent",
        /// The step may only run once a person approves it (seed 000 §7.3): the step waits in
        /// `awaiting_approval`, the task pauses, and `ferry approve|reject` decides.
        Approval => "approval",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_only_move_forward() {
        use JobState::*;
        assert!(Idle.can_transition_to(Ready));
        assert!(Ready.can_transition_to(Running));
        assert!(Running.can_transition_to(Completed));
        assert!(Running.can_transition_to(Cancelled));
        assert!(Idle.can_transition_to(Failed));
        assert!(!Completed.can_transition_to(Running));
        assert!(!Cancelled.can_transition_to(Completed));
        assert!(!Running.can_transition_to(Ready));
        assert!(!Idle.can_transition_to(Completed));
    }

    #[test]
    fn roles_parse_and_name_the_alternatives() {
        assert_eq!("training".parse::<Role>(), Ok(Role::Training));
        let err = "gpu".parse::<Role>().expect_err("gpu is no role");
        assert_eq!(
            err.to_string(),
            "unknown Role `gpu` (expected one of: data_source, training, inference)"
        );
    }
}
