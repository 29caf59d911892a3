//! Job events on their way to the coordinator, delivered at least once: each is numbered
//! and kept until the coordinator acknowledges that it stored it; after a reconnect the
//! unacknowledged ones go again, and the coordinator skips those it already has. So a
//! coordinator killed mid-stream loses no log line and stores none twice.
//!
//! Memory is bounded: past [`MAX_UNACKED_BYTES`] of waiting events (a coordinator away for
//! long while jobs print), further log lines are dropped and counted per job, and the count is
//! reported as a log line of that job once the coordinator is back. Every other event (state
//! changes, metrics, checkpoints, progress, chunk states) is always kept.

use std::collections::{BTreeMap, VecDeque};

use ferry_proto::v1::{self, agent_message, job_event};
use prost::Message;

/// How many bytes of unacknowledged events an agent keeps.
pub(crate) const MAX_UNACKED_BYTES: usize = 64 * 1024 * 1024;

pub(crate) struct Outbox {
    next_seq: u64,
    unacked: VecDeque<(u64, v1::AgentMessage, usize)>,
    bytes: usize,
    limit: usize,
    dropped_logs: BTreeMap<String, u64>,
}

impl Outbox {
    pub(crate) fn new(limit: usize) -> Outbox {
        Outbox {
            next_seq: 1,
            unacked: VecDeque::new(),
            bytes: 0,
            limit,
            dropped_logs: BTreeMap::new(),
        }
    }

    /// Numbers `m` and keeps it until acknowledged; returns what to send, or `None` for a log
    /// line dropped for lack of room.
    pub(crate) fn push(&mut self, m: v1::AgentMessage) -> Option<v1::AgentMessage> {
        let size = m.encoded_len();
        if self.bytes + size > self.limit
            && let Some(job) = log_job(&m)
        {
            *self.dropped_logs.entry(job.to_owned()).or_default() += 1;
            return None;
        }
        Some(self.keep(m, size))
    }

    /// Numbers `m` (of `size` encoded bytes) and keeps it, whatever room is left.
    fn keep(&mut self, mut m: v1::AgentMessage, size: usize) -> v1::AgentMessage {
        m.seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += size;
        self.unacked.push_back((m.seq, m.clone(), size));
        m
    }

    /// The coordinator stored every event up to `seq`.
    pub(crate) fn ack(&mut self, seq: u64) {
        while let Some((s, _, size)) = self.unacked.front() {
            if *s > seq {
                break;
            }
            self.bytes -= size;
            self.unacked.pop_front();
        }
    }

    /// Jobs with events still unacknowledged.
    pub(crate) fn jobs_waiting(&self) -> impl Iterator<Item = &str> {
        self.unacked.iter().filter_map(|(_, m, _)| match &m.msg {
            Some(agent_message::Msg::JobEvent(e)) => Some(e.job_id.as_str()),
            _ => None,
        })
    }

    /// What follows a `Register` on a new connection: every unacknowledged event, in order,
    /// with its number, then for each job that lost log lines a line saying how many.
    pub(crate) fn replay(&mut self) -> Vec<v1::AgentMessage> {
        let mut out: Vec<v1::AgentMessage> =
            self.unacked.iter().map(|(_, m, _)| m.clone()).collect();
        for (job, n) in std::mem::take(&mut self.dropped_logs) {
            let note = v1::AgentMessage {
                msg: Some(agent_message::Msg::JobEvent(v1::JobEvent {
                    job_id: job,
                    event: Some(job_event::Event::Log(v1::JobLog {
                        level: v1::LogLevel::Warn as i32,
                        source: "agent".into(),
                        message: format!(
                            "{n} log lines were dropped while the coordinator was unreachable \
                             (the agent keeps at most {} MiB of unsent events)",
                            self.limit / (1024 * 1024)
                        ),
                        timestamp: String::new(),
                    })),
                })),
                seq: 0,
            };
            let size = note.encoded_len();
            out.push(self.keep(note, size));
        }
        out
    }
}

fn log_job(m: &v1::AgentMessage) -> Option<&str> {
    match &m.msg {
        Some(agent_message::Msg::JobEvent(v1::JobEvent {
            job_id,
            event: Some(job_event::Event::Log(_)),
        })) => Some(job_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(job: &str, text: &str) -> v1::AgentMessage {
        v1::AgentMessage {
            msg: Some(agent_message::Msg::JobEvent(v1::JobEvent {
                job_id: job.into(),
                event: Some(job_event::Event::Log(v1::JobLog {
                    message: text.into(),
                    ..Default::default()
                })),
            })),
            seq: 0,
        }
    }

    fn state(job: &str) -> v1::AgentMessage {
        v1::AgentMessage {
            msg: Some(agent_message::Msg::JobEvent(v1::JobEvent {
                job_id: job.into(),
                event: Some(job_event::Event::State(v1::JobStateChange {
                    state: v1::JobState::Completed as i32,
                    ..Default::default()
                })),
            })),
            seq: 0,
        }
    }

    #[test]
    fn events_are_numbered_kept_until_acknowledged_and_replayed_in_order() {
        let mut o = Outbox::new(MAX_UNACKED_BYTES);
        let seqs: Vec<u64> = (0..5)
            .map(|i| o.push(log("j", &format!("line {i}"))).expect("room").seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        o.ack(3);
        let again: Vec<u64> = o.replay().iter().map(|m| m.seq).collect();
        assert_eq!(again, [4, 5]);
        o.ack(5);
        assert!(o.replay().is_empty());
        assert_eq!(o.bytes, 0);
    }

    #[test]
    fn past_the_limit_log_lines_are_dropped_and_counted_but_states_kept() {
        let one = log("j", "0123456789").encoded_len();
        let mut o = Outbox::new(one * 3);
        for _ in 0..5 {
            o.push(log("j", "0123456789"));
        }
        assert!(
            o.push(state("j")).is_some(),
            "a state change is always kept"
        );
        let replay = o.replay();
        assert_eq!(replay.len(), 3 + 1 + 1);
        let note = replay.last().expect("the note");
        let Some(agent_message::Msg::JobEvent(v1::JobEvent {
            event: Some(job_event::Event::Log(l)),
            ..
        })) = &note.msg
        else {
            panic!("{note:?}")
        };
        assert!(
            l.message.starts_with("2 log lines were dropped"),
            "{}",
            l.message
        );
        assert!(note.seq > 0);
    }
}
