//! The CTR task request (seed 000 §8.2): the YAML file `ferry task create --request` reads and
//! the protobuf `CtrTaskRequest` the API decodes. Validate, pick hosts, plan, and check the
//! plan as the coordinator checks any workflow before it starts a task.
#![no_main]

use ferry_core::pipeline::{self, CtrTaskRequest, PipelineSettings};
use ferry_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check(req: &CtrTaskRequest) {
    if req.validate().is_err() {
        return;
    }
    let _ = req.model_name();
    let Ok(hosts) = pipeline::select_hosts(req, &ferry_fuzz::hosts()[..3]) else {
        return;
    };
    let _ = hosts.to_string();
    let settings = PipelineSettings {
        confirm_transfer_above: 1 << 30,
        cleanup_staging: true,
        keep_checkpoints: 2,
    };
    if let Ok(def) = pipeline::plan(req, &hosts, &settings, "2026-01-22") {
        if let Err(e) = def.validate() {
            panic!("the planned pipeline is an invalid workflow: {e}");
        }
        for s in &def.steps {
            let _ = pipeline::stage_of(&s.name);
            let _ = pipeline::log_label(&s.name);
        }
        // The engine renders the plan with the request's fields as the task's parameters.
        let mut params = std::collections::BTreeMap::new();
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(req) {
            for (k, v) in fields {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                params.insert(k, text);
            }
        }
        ferry_fuzz::render_steps(&def, &params);
        ferry_fuzz::check_workflow(&def);
    }
    // The CLI sends what it read over the wire; the coordinator converts it back.
    let wire = v1::CtrTaskRequest::from(req);
    let back = CtrTaskRequest::try_from(wire).expect("a valid request converts back");
    assert!(back.validate().is_ok(), "the wire form of a valid request is invalid");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(req) = serde_yaml::from_str::<CtrTaskRequest>(text)
    {
        check(&req);
    }
    if let Ok(wire) = v1::CtrTaskRequest::decode(data)
        && let Ok(req) = CtrTaskRequest::try_from(wire)
    {
        check(&req);
    }
});
