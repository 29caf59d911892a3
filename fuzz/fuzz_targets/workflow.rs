//! Workflow definitions as users send them: a YAML (or JSON) file (`ferry workflow apply`),
//! and the protobuf `WorkflowDefinition` the API decodes. Parse, validate, order, store, load,
//! render.
#![no_main]

use ferry_core::workflow::WorkflowDef;
use ferry_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(def) = WorkflowDef::from_yaml(text)
    {
        ferry_fuzz::check_workflow(&def);
    }
    if let Ok(wire) = v1::WorkflowDefinition::decode(data)
        && let Ok(def) = WorkflowDef::try_from(wire)
    {
        ferry_fuzz::check_workflow(&def);
    }
});
