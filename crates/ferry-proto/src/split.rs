//! Keeping every message under the size peers accept: a registration that lists more than
//! fits is sent as a smaller `Register` followed by the job data it left out, as the live
//! events the coordinator applies the same way.

use prost::Message;

use crate::v1::{self, agent_message, job_event};

/// Peers accept 4 MiB per message by default; stay well below it.
pub const MESSAGE_BUDGET: usize = 2 * 1024 * 1024;
/// Chunk states per follow-up event.
const CHUNKS_PER_EVENT: usize = 2048;

/// `reg` as it may be sent: unchanged when it fits `budget`; otherwise without its jobs'
/// chunk states, metrics, checkpoints and progress, which follow as job events in the order
/// the coordinator would have applied them. A job that already ended is reported running in
/// the `Register` and its end follows its data, so nothing it measured arrives after the
/// coordinator has let it go.
pub fn split_register(
    mut reg: v1::Register,
    budget: usize,
) -> (v1::Register, Vec<v1::AgentMessage>) {
    if reg.encoded_len() <= budget {
        return (reg, Vec::new());
    }
    let mut follow = Vec::new();
    let event = |job_id: &str, event: job_event::Event| v1::AgentMessage {
        msg: Some(agent_message::Msg::JobEvent(v1::JobEvent {
            job_id: job_id.to_owned(),
            event: Some(event),
        })),
        seq: 0,
    };
    for job in &mut reg.jobs {
        let chunks = std::mem::take(&mut job.chunks);
        for part in chunks.chunks(CHUNKS_PER_EVENT) {
            follow.push(event(
                &job.job_id,
                job_event::Event::Chunks(v1::JobChunks {
                    chunks: part.to_vec(),
                }),
            ));
        }
        for m in std::mem::take(&mut job.metrics) {
            follow.push(event(&job.job_id, job_event::Event::Metric(m)));
        }
        let checkpoint = std::mem::take(&mut job.checkpoint_json);
        if !checkpoint.is_empty() {
            follow.push(event(
                &job.job_id,
                job_event::Event::Checkpoint(v1::JobCheckpoint {
                    data_json: checkpoint,
                }),
            ));
        }
        let progress = std::mem::take(&mut job.progress_json);
        if !progress.is_empty() {
            follow.push(event(
                &job.job_id,
                job_event::Event::Progress(v1::JobProgress {
                    data_json: progress,
                }),
            ));
        }
        follow.extend(defer_end(job));
    }
    (reg, follow)
}

/// For a job that already ended: reports it running instead and returns its end as the job
/// event to send after its data, so the coordinator takes that data while the job is current.
/// `None` (and the report unchanged) for a job still live.
pub fn defer_end(job: &mut v1::JobReport) -> Option<v1::AgentMessage> {
    let state = v1::JobState::try_from(job.state).unwrap_or(v1::JobState::Unspecified);
    if !matches!(
        state,
        v1::JobState::Completed | v1::JobState::Failed | v1::JobState::Cancelled
    ) {
        return None;
    }
    let end = v1::AgentMessage {
        msg: Some(agent_message::Msg::JobEvent(v1::JobEvent {
            job_id: job.job_id.clone(),
            event: Some(job_event::Event::State(v1::JobStateChange {
                state: job.state,
                error: std::mem::take(&mut job.error),
                error_class: job.error_class,
            })),
        })),
        seq: 0,
    };
    job.state = v1::JobState::Running as i32;
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: usize) -> v1::ChunkState {
        v1::ChunkState {
            chunk_id: format!("train/part-{i:05}.parquet#0"),
            source_path: format!("/data/export/train/part-{i:05}.parquet"),
            dest_path: format!("/data/incoming/train/part-{i:05}.parquet"),
            checksum: "ab".repeat(32),
            status: "completed".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_small_registration_is_sent_whole() {
        let reg = v1::Register {
            agent_name: "a".into(),
            jobs: vec![v1::JobReport {
                job_id: "j".into(),
                chunks: vec![chunk(1)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (sent, follow) = split_register(reg.clone(), MESSAGE_BUDGET);
        assert_eq!(sent, reg);
        assert!(follow.is_empty());
    }

    #[test]
    fn a_large_registration_is_split_under_the_budget_losing_nothing() {
        let reg = v1::Register {
            agent_name: "a".into(),
            jobs: vec![
                v1::JobReport {
                    job_id: "done".into(),
                    state: v1::JobState::Completed as i32,
                    chunks: (0..40_000).map(chunk).collect(),
                    metrics: vec![v1::JobMetric {
                        name: "transfer_bytes".into(),
                        value: 1.0,
                        index: 0,
                    }],
                    checkpoint_json: "{}".into(),
                    ..Default::default()
                },
                v1::JobReport {
                    job_id: "running".into(),
                    state: v1::JobState::Running as i32,
                    chunks: (0..10).map(chunk).collect(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert!(reg.encoded_len() > MESSAGE_BUDGET);
        let (sent, follow) = split_register(reg, MESSAGE_BUDGET);
        assert!(sent.encoded_len() <= MESSAGE_BUDGET);
        assert!(follow.iter().all(|m| m.encoded_len() <= MESSAGE_BUDGET));
        assert_eq!(sent.jobs[0].state, v1::JobState::Running as i32);
        let events: Vec<(&str, &job_event::Event)> = follow
            .iter()
            .filter_map(|m| match &m.msg {
                Some(agent_message::Msg::JobEvent(e)) => {
                    Some((e.job_id.as_str(), e.event.as_ref()?))
                }
                _ => None,
            })
            .collect();
        let chunks: usize = events
            .iter()
            .map(|(_, e)| match e {
                job_event::Event::Chunks(c) => c.chunks.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(chunks, 40_010);
        // The finished job's end comes after all of its data.
        let end = events
            .iter()
            .position(|(j, e)| *j == "done" && matches!(e, job_event::Event::State(_)))
            .expect("the end follows");
        assert!(events[..end].iter().all(|(j, _)| *j == "done"));
        assert!(matches!(events[end - 1].1, job_event::Event::Checkpoint(_)));
    }
}
