//! Template rendering (`${task_id}`, `${task_name}`, `${param.NAME}`, `$$`): arbitrary
//! template text in arbitrary parameter structures, with arbitrary task parameters and name,
//! rendered and then checked as the step kind it belongs to.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use ferry_core::template::{self, TemplateContext, TemplateError};
use ferry_core::kinds;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Debug, Arbitrary)]
struct Input {
    task_id: i64,
    task_name: String,
    params: BTreeMap<String, String>,
    kind: u8,
    /// Keys and template texts of the step's parameters.
    fields: Vec<(String, String)>,
    /// The same texts nested in a list.
    nested: Vec<String>,
}

fuzz_target!(|input: Input| {
    let mut map = serde_json::Map::new();
    for (k, v) in &input.fields {
        map.insert(k.clone(), Value::String(v.clone()));
    }
    map.insert(
        "args".into(),
        Value::Array(input.nested.iter().cloned().map(Value::String).collect()),
    );
    let value = Value::Object(map);
    let ctx = TemplateContext {
        task_id: input.task_id,
        task_name: &input.task_name,
        params: &input.params,
    };
    let mut referenced = Vec::new();
    template::referenced_params(&value, &mut referenced);
    match template::render(&value, &ctx) {
        Ok(rendered) => {
            // The structure never changes; only strings are filled in.
            let (Value::Object(a), Value::Object(b)) = (&value, &rendered) else {
                panic!("render changed the value's type");
            };
            assert_eq!(a.len(), b.len());
            assert!(a.keys().eq(b.keys()));
            let kind = kinds::KNOWN_KINDS[input.kind as usize % kinds::KNOWN_KINDS.len()];
            let _ = kinds::validate_rendered(kind, &rendered);
            let _ = kinds::validate_params(kind, &value);
        }
        Err(TemplateError::MissingParam(p)) => {
            assert!(!input.params.contains_key(&p), "`{p}` was given but is reported missing");
            assert!(referenced.contains(&p), "`{p}` is needed but not listed as referenced");
        }
        Err(_) => {}
    }
    // Text without `$` renders to itself.
    for (_, v) in &input.fields {
        if !v.contains('$') {
            let s = Value::String(v.clone());
            assert_eq!(template::render(&s, &ctx).as_ref(), Ok(&s));
        }
    }
});
