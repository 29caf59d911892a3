//! Seed 003's graphs as the designer sends them: a definition (JSON, or YAML as the CLI reads
//! it), then a sequence of edits applied the way the coordinator applies them (add, patch and
//! remove nodes, add and remove connections, save the canvas), validated after each edit and
//! planned on three agents at the end.
//!
//! Input: the definition's text up to the first NUL byte; the bytes after it choose the edits.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use ferry_core::graph::{CanvasState, ConnectionDef, GraphDef, NodeDef};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const NODES: &[&str] = &["dataset", "score", "check", "n4", "", "bad name"];
const SERVICES: &[&str] = &["DATA", "DOCKER", "STANDALONE", "docker", "VM"];
const AGENTS: &[&str] = &["agent-a", "agent-b", "agent-c", "nobody", ""];
const INTERFACES: &[&str] = &["STDIN", "STDOUT", "STDERR", "LOGS", "MOUNT", "SIDEWAYS"];
const PATHS: &[&str] = &[
    "/input/",
    "/output/",
    "/data/campaign.csv",
    "relative",
    "/",
    "/a/../../etc",
    "",
    "/in put/${task_id}",
    "/x/*",
];
const FUNCTIONS: &[&str] = &["INPUT", "OUTPUT", "BOTH", "SIDEWAYS"];
const WORDS: &[&str] = &[
    "sh",
    "-c",
    "wc -l",
    "${param.day}",
    "$$",
    "${",
    "",
    "/input/x",
];

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[i as usize % list.len()]
}

#[derive(Debug, Arbitrary)]
struct NodeSpec {
    name: u8,
    service: u8,
    agent: u8,
    interfaces: Vec<(u8, Option<u8>, Option<u8>)>,
    image: Option<u8>,
    entrypoint: Vec<u8>,
    cmd: Vec<u8>,
    env: Vec<(u8, u8)>,
    secret_env: Vec<u8>,
    gui: (i64, i64),
}

impl NodeSpec {
    fn json(&self) -> Value {
        let words = |v: &[u8]| v.iter().map(|w| pick(WORDS, *w)).collect::<Vec<_>>();
        json!({
            "name": pick(NODES, self.name),
            "service_type": pick(SERVICES, self.service),
            "agent": pick(AGENTS, self.agent),
            "interfaces": self.interfaces.iter().map(|(t, p, f)| json!({
                "type": pick(INTERFACES, *t),
                "path": p.map(|p| pick(PATHS, p)),
                "mount_function": f.map(|f| pick(FUNCTIONS, f)),
            })).collect::<Vec<_>>(),
            "image": self.image.map(|i| pick(WORDS, i)),
            "entrypoint": words(&self.entrypoint),
            "cmd": words(&self.cmd),
            "env": self.env.iter().map(|(k, v)| (pick(WORDS, *k).to_owned(), json!(pick(WORDS, *v)))).collect::<serde_json::Map<_, _>>(),
            "secret_env": words(&self.secret_env),
            "gui_x": self.gui.0,
            "gui_y": self.gui.1,
        })
    }
}

#[derive(Debug, Arbitrary)]
struct EndSpec {
    node: Option<u8>,
    interface: u8,
    path: Option<u8>,
}

impl EndSpec {
    fn json(&self) -> Value {
        json!({
            "node": self.node.map(|n| pick(NODES, n)),
            "interface": pick(INTERFACES, self.interface),
            "path": self.path.map(|p| pick(PATHS, p)),
        })
    }
}

#[derive(Debug, Arbitrary)]
enum Text<T> {
    Built(T),
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum Edit {
    AddNode(Text<NodeSpec>),
    /// A merge patch: a node spec with some fields nulled, or raw text.
    UpdateNode(u8, Text<(NodeSpec, Vec<u8>)>),
    RemoveNode(u8),
    AddConnection(Text<(EndSpec, EndSpec, Option<u8>)>),
    RemoveConnection(u32),
    Canvas(f64, f64, f64, bool),
}

const NODE_FIELDS: &[&str] = &[
    "name",
    "service_type",
    "agent",
    "interfaces",
    "image",
    "entrypoint",
    "cmd",
    "env",
    "secret_env",
    "gui_x",
    "gui_y",
];

/// The coordinator's `graph_api` edits, on the definition in memory. An `Err` is a refusal
/// (the API answers it as a status); the graph is then left as it was.
fn apply(g: &mut GraphDef, edit: Edit) -> Result<(), String> {
    match edit {
        Edit::AddNode(t) => {
            let text = match t {
                Text::Built(spec) => spec.json().to_string(),
                Text::Raw(s) => s,
            };
            let node: NodeDef = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if g.node(&node.name).is_some() {
                return Err("exists".into());
            }
            g.nodes.push(node);
        }
        Edit::UpdateNode(which, t) => {
            let Some(current) = g.nodes.get(which as usize % g.nodes.len().max(1)) else {
                return Err("no node".into());
            };
            let name = current.name.clone();
            let patch: Value = match t {
                Text::Built((spec, nulls)) => {
                    let mut p = spec.json();
                    for f in nulls {
                        p[pick(NODE_FIELDS, f)] = Value::Null;
                    }
                    p
                }
                Text::Raw(s) => serde_json::from_str(&s).map_err(|e| e.to_string())?,
            };
            let index = g.nodes.iter().position(|n| n.name == name).ok_or("gone")?;
            let mut value = serde_json::to_value(&g.nodes[index]).map_err(|e| e.to_string())?;
            ferry_core::json::merge_patch(&mut value, &patch);
            let updated: NodeDef = serde_json::from_value(value).map_err(|e| e.to_string())?;
            if updated.name != name {
                if g.node(&updated.name).is_some() {
                    return Err("exists".into());
                }
                for c in &mut g.connections {
                    for end in [&mut c.from, &mut c.to] {
                        if end.node.as_deref() == Some(name.as_str()) {
                            end.node = Some(updated.name.clone());
                        }
                    }
                }
            }
            g.nodes[index] = updated;
        }
        Edit::RemoveNode(which) => {
            let name = pick(NODES, which);
            let before = g.nodes.len();
            g.nodes.retain(|n| n.name != name);
            if g.nodes.len() == before {
                return Err("no node".into());
            }
            g.connections.retain(|c| {
                c.from.node.as_deref() != Some(name) && c.to.node.as_deref() != Some(name)
            });
        }
        Edit::AddConnection(t) => {
            let text = match t {
                Text::Built((from, to, file)) => json!({
                    "from": from.json(),
                    "to": to.json(),
                    "destination_file_name": file.map(|f| pick(PATHS, f)),
                })
                .to_string(),
                Text::Raw(s) => s,
            };
            let c: ConnectionDef = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            for end in [&c.from, &c.to] {
                if let Some(n) = &end.node
                    && g.node(n).is_none()
                {
                    return Err("no node".into());
                }
            }
            g.connections.push(c);
        }
        Edit::RemoveConnection(index) => {
            let index = index as usize;
            if index >= g.connections.len() {
                return Err("no connection".into());
            }
            g.connections.remove(index);
        }
        Edit::Canvas(zoom, pan_x, pan_y, snap_to_grid) => {
            if !(zoom.is_finite() && zoom > 0.0 && pan_x.is_finite() && pan_y.is_finite()) {
                return Err("bad canvas".into());
            }
            g.canvas = Some(CanvasState {
                zoom,
                pan_x,
                pan_y,
                snap_to_grid,
            });
        }
    }
    Ok(())
}

/// What every answer carries, and what the store keeps.
fn answer(g: &GraphDef) {
    if let Err(e) = g.validate() {
        let _: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
    }
    let masked = serde_json::to_string(&g.masked()).expect("a graph serialises");
    let stored = serde_json::to_string(g).expect("a graph serialises");
    // serde_json's `float_roundtrip` feature is on, so the canvas floats load back exactly.
    let back: GraphDef = serde_json::from_str(&stored).expect("a stored graph loads");
    assert_eq!(&back, g, "a stored graph loads as something else");
    let _ = masked;
}

fuzz_target!(|data: &[u8]| {
    let (text, rest) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    // The API takes JSON; the CLI reads YAML files and sends them as JSON.
    let Ok(mut graph) =
        serde_json::from_str::<GraphDef>(text).or_else(|_| serde_yaml::from_str::<GraphDef>(text))
    else {
        return;
    };
    // `CreateGraph` refuses a name that cannot name the workflow it builds into.
    if !ferry_core::workflow::is_valid_workflow_name(&graph.name) {
        return;
    }
    answer(&graph);
    let mut u = Unstructured::new(rest);
    let mut edits = 0;
    while !u.is_empty() && edits < 64 {
        let Ok(edit) = Edit::arbitrary(&mut u) else {
            break;
        };
        edits += 1;
        let before = graph.clone();
        if apply(&mut graph, edit).is_err() {
            graph = before;
        }
        answer(&graph);
    }
    // Build: plan on the agents, then the checks every stored workflow passes.
    if let Ok(def) = ferry_core::graph::plan(&graph, &ferry_fuzz::hosts(), "coordinator") {
        if let Err(e) = def.validate() {
            panic!("graph plan is an invalid workflow: {e}");
        }
        ferry_fuzz::check_workflow(&def);
    }
});
