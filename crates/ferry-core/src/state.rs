//! The states of jobs (on agents), steps and tasks (in the coordinator), and the declared
//! state machines of steps and tasks: one table each, (state, event) → state. The engine
//! changes a status only through [`StepStatus::on`] / [`TaskStatus::on`], so an event that
//! arrives in a state where it means nothing (a completion racing a cancel, a start for a
//! step that was already given up) is an error the engine logs and ignores, never a silent
//! corruption.

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

    /// Whether steps of a task in this state may be dispatched (a retry timer firing after a
    /// pause dispatches nothing).
    pub fn dispatches(self) -> bool {
        self == TaskStatus::Running
    }
}

string_enum! {
    /// What happens to a step; every status change in the engine is one of these.
    StepEvent {
        /// Phase one: `CreateJob` sent to the chosen agent.
        Dispatch => "dispatch",
        /// The agent holds the job (it answered `JobCreated`, or re-reported it idle at
        /// registration); phase two, `StartJob`, is sent.
        Created => "created",
        /// The agent reports the job running.
        Started => "started",
        /// The job completed.
        Completed => "completed",
        /// A failed attempt with retries left (or a job that never started and is dispatched
        /// again): back to pending.
        Requeue => "requeue",
        /// A failed attempt with no retry left, or a permanent error.
        Failed => "failed",
        /// The executor asks for a person's decision (seed 000 §7.3).
        AwaitApproval => "await_approval",
        Approved => "approved",
        Rejected => "rejected",
        /// The task is cancelled.
        Cancel => "cancel",
        /// A user retries or resumes the task: failed and cancelled steps start afresh.
        Reset => "reset",
    }
}

string_enum! {
    /// What happens to a task; every status change in the engine is one of these.
    TaskEvent {
        /// A user pauses the task.
        Pause => "pause",
        /// The engine holds the task: a step awaits approval or failed permanently, or the
        /// coordinator restarted with `workflow.auto_resume` off.
        Hold => "hold",
        /// A user resumes it, or approves the step it waited for.
        Resume => "resume",
        /// A user retries it from its failed steps.
        Retry => "retry",
        /// Every step completed.
        Complete => "complete",
        /// A step failed after its retries.
        Fail => "fail",
        Cancel => "cancel",
    }
}

/// An event that means nothing in the state it arrived in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal {what} transition: `{event}` in state `{state}`")]
pub struct IllegalTransition {
    pub what: &'static str,
    pub state: &'static str,
    pub event: &'static str,
}

/// The step machine: (state, event) → state. What is not listed is illegal.
pub const STEP_TRANSITIONS: &[(StepStatus, StepEvent, StepStatus)] = {
    use StepEvent as E;
    use StepStatus as S;
    &[
        (S::Pending, E::Dispatch, S::Dispatching),
        (S::Pending, E::Cancel, S::Cancelled),
        (S::Dispatching, E::Created, S::Ready),
        (S::Dispatching, E::Started, S::Running),
        (S::Dispatching, E::Completed, S::Completed),
        (S::Dispatching, E::Requeue, S::Pending),
        (S::Dispatching, E::Failed, S::Failed),
        (S::Dispatching, E::AwaitApproval, S::AwaitingApproval),
        (S::Dispatching, E::Cancel, S::Cancelled),
        (S::Ready, E::Created, S::Ready),
        (S::Ready, E::Started, S::Running),
        (S::Ready, E::Completed, S::Completed),
        (S::Ready, E::Requeue, S::Pending),
        (S::Ready, E::Failed, S::Failed),
        (S::Ready, E::AwaitApproval, S::AwaitingApproval),
        (S::Ready, E::Cancel, S::Cancelled),
        (S::Running, E::Completed, S::Completed),
        (S::Running, E::Requeue, S::Pending),
        (S::Running, E::Failed, S::Failed),
        (S::Running, E::AwaitApproval, S::AwaitingApproval),
        (S::Running, E::Cancel, S::Cancelled),
        (S::AwaitingApproval, E::Approved, S::Pending),
        (S::AwaitingApproval, E::Rejected, S::Failed),
        (S::AwaitingApproval, E::Cancel, S::Cancelled),
        (S::Failed, E::Reset, S::Pending),
        (S::Cancelled, E::Reset, S::Pending),
    ]
};

/// The task machine: (state, event) → state. What is not listed is illegal.
pub const TASK_TRANSITIONS: &[(TaskStatus, TaskEvent, TaskStatus)] = {
    use TaskEvent as E;
    use TaskStatus as S;
    &[
        (S::Pending, E::Pause, S::Paused),
        (S::Pending, E::Cancel, S::Cancelled),
        (S::Running, E::Pause, S::Paused),
        (S::Running, E::Hold, S::Paused),
        (S::Running, E::Complete, S::Completed),
        (S::Running, E::Fail, S::Failed),
        (S::Running, E::Cancel, S::Cancelled),
        (S::Paused, E::Hold, S::Paused),
        (S::Paused, E::Resume, S::Running),
        (S::Paused, E::Retry, S::Running),
        // Steps already running when the task paused still finish.
        (S::Paused, E::Complete, S::Completed),
        (S::Paused, E::Fail, S::Failed),
        (S::Paused, E::Cancel, S::Cancelled),
        (S::Failed, E::Retry, S::Running),
        (S::Failed, E::Cancel, S::Cancelled),
        (S::Cancelled, E::Retry, S::Running),
    ]
};

/// The state `event` leads to from `state` in `table`; what is not listed is illegal.
fn next<S, E>(
    table: &[(S, E, S)],
    what: &'static str,
    state: S,
    event: E,
    name: impl Fn(S, E) -> (&'static str, &'static str),
) -> Result<S, IllegalTransition>
where
    S: Copy + PartialEq,
    E: Copy + PartialEq,
{
    table
        .iter()
        .find(|(from, e, _)| *from == state && *e == event)
        .map(|(_, _, to)| *to)
        .ok_or_else(|| {
            let (state, event) = name(state, event);
            IllegalTransition { what, state, event }
        })
}

impl StepStatus {
    /// The state `event` leads to from `self`, per [`STEP_TRANSITIONS`].
    pub fn on(self, event: StepEvent) -> Result<StepStatus, IllegalTransition> {
        next(STEP_TRANSITIONS, "step", self, event, |s, e| {
            (s.as_str(), e.as_str())
        })
    }
}

impl TaskStatus {
    /// The state `event` leads to from `self`, per [`TASK_TRANSITIONS`].
    pub fn on(self, event: TaskEvent) -> Result<TaskStatus, IllegalTransition> {
        next(TASK_TRANSITIONS, "task", self, event, |s, e| {
            (s.as_str(), e.as_str())
        })
    }
}

/// A table as Markdown, rows in declaration order: how `docs/ARCHITECTURE.md` shows it (a
/// test keeps the two equal).
pub fn transitions_markdown<S: fmt::Display, E: fmt::Display>(rows: &[(S, E, S)]) -> String {
    let mut out = String::from("| state | event | next state |\n|---|---|---|\n");
    for (from, event, to) in rows {
        out.push_str(&format!("| `{from}` | `{event}` | `{to}` |\n"));
    }
    out
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
    fn the_architecture_document_shows_these_tables() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/ARCHITECTURE.md");
        let doc = std::fs::read_to_string(path).expect("docs/ARCHITECTURE.md");
        for table in [
            transitions_markdown(STEP_TRANSITIONS),
            transitions_markdown(TASK_TRANSITIONS),
        ] {
            assert!(doc.contains(&table), "ARCHITECTURE.md lacks:\n{table}");
        }
    }

    #[test]
    fn each_state_and_event_has_at_most_one_transition() {
        for (i, (from, event, _)) in STEP_TRANSITIONS.iter().enumerate() {
            assert!(
                !STEP_TRANSITIONS[i + 1..]
                    .iter()
                    .any(|(f, e, _)| f == from && e == event),
                "{from} × {event} twice"
            );
        }
        for (i, (from, event, _)) in TASK_TRANSITIONS.iter().enumerate() {
            assert!(
                !TASK_TRANSITIONS[i + 1..]
                    .iter()
                    .any(|(f, e, _)| f == from && e == event),
                "{from} × {event} twice"
            );
        }
    }

    #[test]
    fn terminal_states_only_leave_by_a_user_reset() {
        for (from, event, _) in STEP_TRANSITIONS {
            if *from == StepStatus::Completed {
                panic!("completed steps never change, yet `{event}` leaves it");
            }
            if from.is_terminal() {
                assert_eq!(*event, StepEvent::Reset);
            }
        }
        for (from, event, _) in TASK_TRANSITIONS {
            assert_ne!(*from, TaskStatus::Completed, "`{event}` leaves completed");
        }
    }

    #[test]
    fn a_failure_while_dispatching_requeues_or_fails() {
        let s = StepStatus::Pending
            .on(StepEvent::Dispatch)
            .expect("dispatch");
        assert_eq!(s, StepStatus::Dispatching);
        assert_eq!(s.on(StepEvent::Requeue), Ok(StepStatus::Pending));
        assert_eq!(s.on(StepEvent::Failed), Ok(StepStatus::Failed));
        // The agent's answer to the abandoned create arrives later: no longer meaningful.
        assert!(StepStatus::Pending.on(StepEvent::Created).is_err());
    }

    #[test]
    fn a_completion_racing_a_cancel_is_refused() {
        let s = StepStatus::Running.on(StepEvent::Cancel).expect("cancel");
        let err = s.on(StepEvent::Completed).expect_err("too late");
        assert_eq!(
            err.to_string(),
            "illegal step transition: `completed` in state `cancelled`"
        );
        // And the other order: a cancel after completion changes nothing.
        assert!(StepStatus::Completed.on(StepEvent::Cancel).is_err());
        assert!(TaskStatus::Completed.on(TaskEvent::Cancel).is_err());
    }

    #[test]
    fn a_job_reported_after_the_engine_gave_it_up_cannot_revive_the_step() {
        // The engine thought the job lost and put the step back to pending; the agent then
        // re-registers and reports it running. The step does not start from that report (the
        // engine cancels the superseded job); only a new dispatch moves it.
        let s = StepStatus::Running.on(StepEvent::Requeue).expect("lost");
        assert!(s.on(StepEvent::Started).is_err());
        assert!(s.on(StepEvent::Completed).is_err());
        assert_eq!(s.on(StepEvent::Dispatch), Ok(StepStatus::Dispatching));
    }

    #[test]
    fn a_retry_timer_firing_after_a_pause_dispatches_nothing() {
        let task = TaskStatus::Running.on(TaskEvent::Pause).expect("pause");
        assert!(!task.dispatches());
        assert!(task.on(TaskEvent::Resume).expect("resume").dispatches());
        // Pausing twice is a user error; the engine holding a paused task is not.
        assert!(task.on(TaskEvent::Pause).is_err());
        assert_eq!(task.on(TaskEvent::Hold), Ok(TaskStatus::Paused));
    }

    #[test]
    fn approval_moves_only_a_waiting_step() {
        let s = StepStatus::Running
            .on(StepEvent::AwaitApproval)
            .expect("ask");
        assert_eq!(s.on(StepEvent::Approved), Ok(StepStatus::Pending));
        assert_eq!(s.on(StepEvent::Rejected), Ok(StepStatus::Failed));
        assert!(StepStatus::Pending.on(StepEvent::Approved).is_err());
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
