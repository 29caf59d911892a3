//! What the fuzz targets share: a per-allocation limit (libFuzzer's `-malloc_limit_mb` needs
//! a sanitizer's malloc hooks; this works without one), the hosts graphs and pipelines are
//! planned on, and the checks every accepted definition must pass.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::io::Write;

use ferry_core::pipeline::HostInfo;
use ferry_core::template::{self, TemplateContext};
use ferry_core::workflow::WorkflowDef;
use ferry_core::{Role, kinds, limits};

/// The largest single allocation a target may make. Inputs are at most a few hundred KiB
/// (`-max_len`); anything near this size is an allocation sized by a number in the input.
pub const ALLOCATION_LIMIT: usize = 512 << 20;

pub struct Bounded;

// SAFETY: forwards to the system allocator; refuses (aborts) only above the limit.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > ALLOCATION_LIMIT {
        // No allocation here: stderr is unbuffered and the message is static.
        let _ = std::io::stderr()
            .write_all(b"==ferry-fuzz== single allocation above 512 MiB: unbounded allocation\n");
        std::process::abort();
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

/// Three connected agents, one per role, each with absolute roots and keys for the others:
/// what a planner sees on a healthy deployment. Graph nodes name `agent-a`..`agent-c`.
pub fn hosts() -> Vec<HostInfo> {
    let names = [
        ("source-1", Role::DataSource),
        ("train-1", Role::Training),
        ("infer-1", Role::Inference),
        ("agent-a", Role::DataSource),
        ("agent-b", Role::Training),
        ("agent-c", Role::Inference),
    ];
    names
        .iter()
        .enumerate()
        .map(|(i, (name, role))| {
            let root = format!("/srv/{name}");
            let paths = ["work_dir", "data_root", "model_root", "staging_dir"]
                .iter()
                .map(|k| ((*k).to_owned(), format!("{root}/{k}")))
                .collect();
            HostInfo {
                name: (*name).to_owned(),
                role: Some(*role),
                paths,
                // Every other agent but one, so plans use push, pull and (same agent) local.
                ssh_to: names
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i && (*j + 1) % names.len() != i)
                    .map(|(_, (n, _))| (*n).to_owned())
                    .collect(),
                connected: true,
            }
        })
        .collect()
}

/// Task parameters a fuzzed workflow may refer to.
pub fn task_params() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("day".to_owned(), "2026-01-21".to_owned()),
        ("out".to_owned(), "/srv/out".to_owned()),
        ("area".to_owned(), "/srv/area".to_owned()),
        ("infer_day".to_owned(), "2026-01-22".to_owned()),
        (
            "evil".to_owned(),
            "../../etc'; DROP TABLE x; --${".to_owned(),
        ),
    ])
}

/// What the coordinator does with a definition it is given (`apply`, then a task): validate,
/// order, store as JSON and load back, render every step with the task's parameters and check
/// the result. Panics when an accepted definition breaks a promise the engine relies on.
pub fn check_workflow(def: &WorkflowDef) {
    if def.validate().is_err() {
        return;
    }
    // Every step once, after its inputs.
    let order = def.topological_order();
    assert_eq!(
        order.len(),
        def.steps.len(),
        "topological order drops steps"
    );
    let mut seen = std::collections::HashSet::new();
    for s in &order {
        for i in &s.inputs {
            assert!(
                seen.contains(i.as_str()),
                "`{}` ordered before its input `{i}`",
                s.name
            );
        }
        seen.insert(s.name.as_str());
    }
    // The store keeps definitions as JSON and loads them back.
    let json = serde_json::to_string(def).expect("a valid definition serialises");
    let back: WorkflowDef = serde_json::from_str(&json).expect("a stored definition loads");
    assert_eq!(&back, def, "a stored definition loads as something else");
    // The wire form (the API) carries the same definition.
    let wire = ferry_proto::v1::WorkflowDefinition::from(def);
    let back = WorkflowDef::try_from(wire).expect("the wire form converts back");
    assert!(
        back.validate().is_ok(),
        "the wire form of a valid definition is invalid"
    );
    // The engine adds an attempt's time limit to the time now.
    for s in &def.steps {
        if let Some(t) = s.timeout_secs {
            assert!(
                std::time::Instant::now()
                    .checked_add(std::time::Duration::from_secs(t))
                    .is_some(),
                "step `{}`: timeout_secs {t} passes validation but overflows a deadline",
                s.name
            );
        }
        let _ = s.retry_policy().backoff(u32::MAX);
    }
    render_steps(def, &task_params());
}

/// Task creation: every step's parameters rendered, then checked as rendered.
pub fn render_steps(def: &WorkflowDef, params: &BTreeMap<String, String>) {
    let ctx = TemplateContext {
        task_id: i64::MAX,
        task_name: "fuzz",
        params,
    };
    for s in &def.steps {
        let mut referenced = Vec::new();
        template::referenced_params(&s.params, &mut referenced);
        match template::render(&s.params, &ctx) {
            Ok(rendered) => {
                let _ = kinds::validate_rendered(&s.kind, &rendered);
                let mut masked = rendered;
                kinds::mask_secrets(&mut masked);
            }
            Err(template::TemplateError::MissingParam(p)) => assert!(
                referenced.contains(&p),
                "render wants parameter `{p}` that referenced_params does not list"
            ),
            Err(_) => {}
        }
    }
}

/// Makes an arbitrary string storable the way the store does, and checks that it then fits.
pub fn fits(s: &str, max: usize) {
    let mut s = s.to_owned();
    limits::fit(&mut s, max);
    assert!(
        s.chars().count() <= max,
        "fit leaves {} > {max} chars",
        s.chars().count()
    );
    assert!(!s.contains('\0'), "fit leaves a NUL byte");
}
