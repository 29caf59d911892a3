//! What the coordinator accepts from an agent on `AgentService.Attach`: the raw bytes of one
//! stream message decoded as `AgentMessage` (prost, as tonic does), then the checks the engine
//! applies before anything reaches its state or the store: the registration (name, role,
//! roots and SSH peers, planned on), job states and error classes from the wire, log levels,
//! the size limit of checkpoints and progress, finite metrics, and every text made to fit its
//! column. Also the agent's own split of an oversized registration.
#![no_main]

use ferry_core::limits::{self, STEP_STATE_BYTES};
use ferry_core::pipeline::{self, CtrTaskRequest, HostInfo, PipelineSettings};
use ferry_core::Role;
use ferry_fuzz::fits;
use ferry_proto::v1::{self, agent_message, job_event};
use ferry_proto::{error_class_from_wire, job_state_from_wire};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn chunk(c: &v1::ChunkState) {
    fits(&c.chunk_id, limits::CHUNK_ID);
    fits(&c.source_path, limits::PATH);
    fits(&c.dest_path, limits::PATH);
    fits(&c.checksum, limits::CHECKSUM);
    fits(&c.status, limits::STATUS);
    fits(&c.error, limits::MESSAGE);
}

fn metric(m: &v1::JobMetric) {
    fits(&m.name, limits::METRIC_NAME);
    if let Ok(v) = limits::check_metric(&m.name, m.value) {
        assert!(v.is_finite());
    }
}

fn state_doc(json: &str) {
    if json.len() <= STEP_STATE_BYTES {
        fits(json, limits::DOCUMENT);
    }
}

fn job_event(ev: &v1::JobEvent) {
    fits(&ev.job_id, limits::IDENT);
    match &ev.event {
        Some(job_event::Event::State(s)) => {
            let _ = job_state_from_wire(s.state);
            let _ = error_class_from_wire(s.error_class);
            fits(&s.error, limits::MESSAGE);
        }
        Some(job_event::Event::Log(l)) => {
            let _ = v1::LogLevel::try_from(l.level);
            fits(&l.source, limits::LOG_SOURCE);
            fits(&l.message, limits::MESSAGE);
        }
        Some(job_event::Event::Checkpoint(c)) => state_doc(&c.data_json),
        Some(job_event::Event::Progress(p)) => state_doc(&p.data_json),
        Some(job_event::Event::Metric(m)) => metric(m),
        Some(job_event::Event::Chunks(c)) => c.chunks.iter().for_each(chunk),
        None => {}
    }
}

/// The hosts planners see once this agent is registered (as the training host).
fn plan_with(reg: &v1::Register, role: Role) {
    let mut hosts = ferry_fuzz::hosts();
    hosts.truncate(3);
    let name = reg.agent_name.trim().to_owned();
    if hosts.iter().any(|h| h.name == name) {
        return;
    }
    let slot = match role {
        Role::DataSource => 0,
        Role::Training => 1,
        Role::Inference => 2,
    };
    hosts[slot] = HostInfo {
        name: name.clone(),
        role: Some(role),
        paths: reg.paths.clone().into_iter().collect(),
        ssh_to: reg.ssh_to.clone(),
        connected: true,
    };
    let req = CtrTaskRequest {
        name: "campaign".into(),
        experiment_id: "DeepFM_test".into(),
        sample_sql: "SELECT * FROM campaign_sample".into(),
        infer_sql: "SELECT * FROM campaign_infer".into(),
        hive_table: "default.scores".into(),
        ..Default::default()
    };
    let Ok(selected) = pipeline::select_hosts(&req, &hosts) else {
        return;
    };
    if let Ok(def) = pipeline::plan(&req, &selected, &PipelineSettings::default(), "2026-01-22") {
        if let Err(e) = def.validate() {
            panic!("a plan on registered roots is an invalid workflow: {e}");
        }
        ferry_fuzz::check_workflow(&def);
    }
    // A graph node on this agent, delivering to and from the others.
    let graph = serde_json::json!({
        "name": "g",
        "nodes": [
            {"name": "src", "service_type": "DATA", "agent": "agent-a",
             "interfaces": [{"type": "STDOUT", "path": "/data/x"}]},
            {"name": "mid", "service_type": "STANDALONE", "agent": name,
             "entrypoint": ["cat"], "interfaces": [{"type": "STDIN"}, {"type": "STDOUT"}]},
        ],
        "connections": [
            {"from": {"node": "src", "interface": "STDOUT"}, "to": {"node": "mid", "interface": "STDIN"}},
            {"from": {"node": "mid", "interface": "STDOUT"}, "to": {"interface": "STDOUT"}},
        ],
    });
    if let Ok(graph) = serde_json::from_value::<ferry_core::graph::GraphDef>(graph) {
        let mut all = ferry_fuzz::hosts();
        all.push(hosts[slot].clone());
        if let Ok(def) = ferry_core::graph::plan(&graph, &all, "coordinator") {
            if let Err(e) = def.validate() {
                panic!("a graph plan on registered roots is an invalid workflow: {e}");
            }
            ferry_fuzz::check_workflow(&def);
        }
    }
}

fn register(reg: &v1::Register) {
    // `attach_agent`: a name, a known role.
    let name = reg.agent_name.trim();
    fits(name, limits::IDENT);
    let Ok(role) = reg.role.parse::<Role>() else {
        return;
    };
    if name.is_empty() {
        return;
    }
    // `reconcile_agent_jobs`: each report replayed as the live events it repeats.
    for r in &reg.jobs {
        fits(&r.job_id, limits::IDENT);
        fits(&r.step, limits::STEP_NAME);
        let _ = r.attempt as i32;
        let _ = job_state_from_wire(r.state);
        let _ = error_class_from_wire(r.error_class);
        fits(&r.error, limits::MESSAGE);
        r.chunks.iter().for_each(chunk);
        r.metrics.iter().for_each(metric);
        state_doc(&r.checkpoint_json);
        state_doc(&r.progress_json);
    }
    plan_with(reg, role);
    // The agent's side: an oversized registration split into a Register and job events.
    let (head, follow) = ferry_proto::split::split_register(reg.clone(), 256);
    let jobs: usize = follow.len();
    assert_eq!(head.jobs.len(), reg.jobs.len(), "split lost a job");
    let _ = jobs;
    for m in &follow {
        let bytes = m.encode_to_vec();
        let back = v1::AgentMessage::decode(bytes.as_slice()).expect("a split message decodes");
        assert_eq!(back.encoded_len(), bytes.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = v1::AgentMessage::decode(data) else {
        return;
    };
    // What was decoded encodes and decodes again. (Not compared field by field: a metric may
    // be NaN, which equals nothing; nor byte by byte: map entries encode in any order.)
    let bytes = msg.encode_to_vec();
    let again = v1::AgentMessage::decode(bytes.as_slice()).expect("re-decodes");
    assert_eq!(again.encoded_len(), bytes.len());
    match &msg.msg {
        Some(agent_message::Msg::Register(r)) => register(r),
        Some(agent_message::Msg::Heartbeat(_)) => {}
        Some(agent_message::Msg::JobCreated(c)) => {
            fits(&c.job_id, limits::IDENT);
            fits(&c.error, limits::MESSAGE);
        }
        Some(agent_message::Msg::JobEvent(ev)) => job_event(ev),
        None => {}
    }
});
