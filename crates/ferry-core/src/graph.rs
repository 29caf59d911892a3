//! Seed 003's general workflows: nodes of three service types (DATA, DOCKER, STANDALONE) whose
//! interfaces (STDIN, STDOUT, STDERR, LOGS, MOUNT) are wired by connections, and the
//! validation of seed 003 "Validation Rules" (phases 1-3) that runs before execution.
//!
//! Values stay as the user wrote them (strings) so that validation can name what is wrong
//! ("invalid mount function `SIDEWAYS` on node `train`") instead of failing to parse.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pipeline::HostInfo;
use crate::workflow::WorkflowDef;

/// A workflow as seed 003's designer builds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub nodes: Vec<NodeDef>,
    #[serde(default)]
    pub connections: Vec<ConnectionDef>,
    /// The designer's view (zoom, pan, snap-to-grid); kept, never interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canvas: Option<CanvasState>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanvasState {
    #[serde(default = "one")]
    pub zoom: f64,
    #[serde(default)]
    pub pan_x: f64,
    #[serde(default)]
    pub pan_y: f64,
    #[serde(default)]
    pub snap_to_grid: bool,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    pub name: String,
    /// DATA, DOCKER or STANDALONE.
    pub service_type: String,
    /// The agent that runs (or, for DATA, holds) it.
    pub agent: String,
    #[serde(default)]
    pub interfaces: Vec<InterfaceDef>,
    /// DOCKER: the image to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// DOCKER: overrides the image's ENTRYPOINT; STANDALONE: the program and its first args.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Names in `env` whose values are secret: never returned by the read API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<String>,
    /// Canvas position.
    #[serde(default)]
    pub gui_x: i64,
    #[serde(default)]
    pub gui_y: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceDef {
    /// STDIN, STDOUT, STDERR, LOGS or MOUNT.
    #[serde(rename = "type")]
    pub interface_type: String,
    /// MOUNT: the path inside the job (`/input/`); DATA STDOUT: the files it offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// MOUNT: INPUT, OUTPUT or BOTH (seed 003 "Mount Function Semantics").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_function: Option<String>,
}

/// One end of a connection: a node's interface, or the coordinator itself (`node` absent:
/// seed 003's "self-peer", i.e. a download).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub interface: String,
    /// Which MOUNT interface, when a node has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionDef {
    pub from: Endpoint,
    pub to: Endpoint,
    /// Rename the delivered file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_file_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    Data,
    Docker,
    Standalone,
}

impl ServiceType {
    pub fn parse(s: &str) -> Option<ServiceType> {
        match s {
            "DATA" => Some(ServiceType::Data),
            "DOCKER" => Some(ServiceType::Docker),
            "STANDALONE" => Some(ServiceType::Standalone),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InterfaceType {
    Stdin,
    Stdout,
    Stderr,
    Logs,
    Mount,
}

impl InterfaceType {
    pub fn parse(s: &str) -> Option<InterfaceType> {
        match s {
            "STDIN" => Some(InterfaceType::Stdin),
            "STDOUT" => Some(InterfaceType::Stdout),
            "STDERR" => Some(InterfaceType::Stderr),
            "LOGS" => Some(InterfaceType::Logs),
            "MOUNT" => Some(InterfaceType::Mount),
            _ => None,
        }
    }
}

impl fmt::Display for InterfaceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InterfaceType::Stdin => "STDIN",
            InterfaceType::Stdout => "STDOUT",
            InterfaceType::Stderr => "STDERR",
            InterfaceType::Logs => "LOGS",
            InterfaceType::Mount => "MOUNT",
        })
    }
}

const MOUNT_FUNCTIONS: &[&str] = &["INPUT", "OUTPUT", "BOTH"];

/// Seed 003 "Interface Type Mapping": the allowed (from, to) pairs.
pub fn compatible(from: InterfaceType, to: InterfaceType) -> bool {
    use InterfaceType::*;
    matches!(
        (from, to),
        (Stdout, Stdin) | (Stdout, Mount) | (Mount, Mount) | (Mount, Stdin)
    )
}

/// One broken rule, naming the node or connection (connections by `#index from → to`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphProblem {
    #[error("workflow must have at least one node")]
    NoNodes,
    #[error("node name `{0}` is used twice")]
    DuplicateNode(String),
    #[error("node `{node}`: unknown service type `{value}` (DATA, DOCKER or STANDALONE)")]
    ServiceType { node: String, value: String },
    #[error("node `{node}`: {message}")]
    NodeConfig { node: String, message: String },
    #[error(
        "node `{node}`: invalid interface type `{value}` (STDIN, STDOUT, STDERR, LOGS or MOUNT)"
    )]
    InterfaceType { node: String, value: String },
    #[error("node `{node}`: invalid mount function `{value}` (INPUT, OUTPUT or BOTH)")]
    MountFunction { node: String, value: String },
    #[error("node `{node}`: a DATA service must have a STDOUT interface")]
    DataWithoutStdout { node: String },
    #[error("connection {connection}: references non-existent node `{node}`")]
    UnknownNode { connection: String, node: String },
    #[error("connection {connection}: node `{node}` has no {interface} interface")]
    MissingInterface {
        connection: String,
        node: String,
        interface: String,
    },
    #[error(
        "connection {connection}: {from} → {to} is not allowed (allowed: STDOUT→STDIN, STDOUT→MOUNT, MOUNT→MOUNT, MOUNT→STDIN)"
    )]
    Incompatible {
        connection: String,
        from: String,
        to: String,
    },
    #[error(
        "connection {connection}: cannot download from DATA service `{from}` to DATA service `{to}` (DATA feeds DOCKER/STANDALONE nodes or the coordinator)"
    )]
    DataToData {
        connection: String,
        from: String,
        to: String,
    },
    #[error("connection {connection}: the coordinator can only be a destination")]
    CoordinatorAsSource { connection: String },
    #[error("connections form a cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
    #[error("node `{node}`: {message}")]
    InterfaceConfig { node: String, message: String },
    #[error(
        "connection {connection}: MOUNT `{path}` of node `{node}` has mount function {function}, so it cannot be {role} (seed 003: OUTPUT = its peer sends to this job, INPUT = its peer receives from it)"
    )]
    MountDirection {
        connection: String,
        node: String,
        path: String,
        function: String,
        role: &'static str,
    },
    #[error(
        "connection {connection}: DATA service `{node}` takes no inputs (its files already exist)"
    )]
    DataAsDestination { connection: String, node: String },
    #[error(
        "connection {connection}: `{from}` already feeds `{to}` through connection #{first}; one connection per pair of nodes (its delivery is input/<sender>/<sender_job>/)"
    )]
    DuplicatePair {
        connection: String,
        from: String,
        to: String,
        first: usize,
    },
}

/// Every problem found, in the order of seed 003's phases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid workflow: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidGraph {
    pub problems: Vec<GraphProblem>,
}

impl ConnectionDef {
    fn label(&self, index: usize) -> String {
        let end = |e: &Endpoint| match &e.node {
            Some(n) => format!("{n}.{}", e.interface),
            None => format!("coordinator.{}", e.interface),
        };
        format!("#{index} {} → {}", end(&self.from), end(&self.to))
    }
}

fn valid_mount_path(p: &str) -> bool {
    // `:` would change the meaning of a Docker bind (`host:container:ro`).
    p.starts_with('/')
        && !crate::jobpaths::mount_dir_name(p).is_empty()
        && !p.split('/').any(|c| c == "..")
        && !p.contains(':')
}

impl NodeDef {
    /// The interface a connection end names (by type, and by path when it gives one).
    pub fn interface_for(&self, end: &Endpoint) -> Option<&InterfaceDef> {
        self.interfaces.iter().find(|i| {
            i.interface_type == end.interface && (end.path.is_none() || i.path == end.path)
        })
    }
}

impl GraphDef {
    /// This graph with every secret env value replaced by [`crate::kinds::MASK`].
    pub fn masked(&self) -> GraphDef {
        let mut g = self.clone();
        for n in &mut g.nodes {
            for k in &n.secret_env {
                if let Some(v) = n.env.get_mut(k) {
                    *v = crate::kinds::MASK.into();
                }
            }
        }
        g
    }

    pub fn node(&self, name: &str) -> Option<&NodeDef> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Seed 003's phases 1-3; every failure names the node or connection and the rule.
    pub fn validate(&self) -> Result<(), InvalidGraph> {
        let mut problems = Vec::new();
        // Phase 1: basic.
        if self.nodes.is_empty() {
            problems.push(GraphProblem::NoNodes);
        }
        let mut seen = HashSet::new();
        let mut types: HashMap<&str, ServiceType> = HashMap::new();
        for n in &self.nodes {
            if !seen.insert(n.name.as_str()) {
                problems.push(GraphProblem::DuplicateNode(n.name.clone()));
            }
            let Some(t) = ServiceType::parse(&n.service_type) else {
                problems.push(GraphProblem::ServiceType {
                    node: n.name.clone(),
                    value: n.service_type.clone(),
                });
                continue;
            };
            types.insert(&n.name, t);
            let config = |message: &str| GraphProblem::NodeConfig {
                node: n.name.clone(),
                message: message.to_owned(),
            };
            if !crate::workflow::is_valid_step_name(&n.name) {
                problems.push(config(
                    "a node name is 1-50 letters, digits, '_' or '-' (it names the job's directory)",
                ));
            }
            if n.agent.trim().is_empty() {
                problems.push(config("`agent` must name the agent that runs or holds it"));
            }
            if let Some(k) = n.secret_env.iter().find(|k| !n.env.contains_key(*k)) {
                problems.push(config(&format!(
                    "`secret_env` names `{k}`, which is not in `env`"
                )));
            }
            match t {
                ServiceType::Docker if n.image.as_deref().is_none_or(|i| i.trim().is_empty()) => {
                    problems.push(config("a DOCKER service needs an `image`"));
                }
                ServiceType::Standalone
                    if n.entrypoint.first().is_none_or(|p| p.trim().is_empty()) =>
                {
                    problems.push(config(
                        "a STANDALONE service needs an `entrypoint` (the program)",
                    ));
                }
                _ => {}
            }
        }
        // Phase 2: interfaces.
        for n in &self.nodes {
            let mut has_stdout = false;
            let mut counts: HashMap<InterfaceType, usize> = HashMap::new();
            let mut mounts = HashSet::new();
            let iface = |message: String| GraphProblem::InterfaceConfig {
                node: n.name.clone(),
                message,
            };
            let service = types.get(n.name.as_str()).copied();
            for i in &n.interfaces {
                let parsed = InterfaceType::parse(&i.interface_type);
                match parsed {
                    Some(InterfaceType::Stdout) => has_stdout = true,
                    Some(_) => {}
                    None => problems.push(GraphProblem::InterfaceType {
                        node: n.name.clone(),
                        value: i.interface_type.clone(),
                    }),
                }
                if let Some(t) = parsed {
                    *counts.entry(t).or_default() += 1;
                }
                match (parsed, service) {
                    (Some(InterfaceType::Mount), _) => match i.path.as_deref() {
                        Some(p) if valid_mount_path(p) => {
                            if !mounts.insert(crate::jobpaths::mount_dir_name(p)) {
                                problems.push(iface(format!("MOUNT `{p}` is declared twice")));
                            }
                        }
                        Some(p) => problems.push(iface(format!(
                            "MOUNT path `{p}` must be an absolute path inside the job, without `..` or `:`"
                        ))),
                        None => problems.push(iface("a MOUNT interface needs a `path`".into())),
                    },
                    (Some(InterfaceType::Stdout), Some(ServiceType::Data))
                        if i.path.as_deref().is_none_or(|p| p.trim().is_empty()) =>
                    {
                        problems.push(iface(
                            "a DATA service's STDOUT needs a `path`: the files it offers".into(),
                        ));
                    }
                    _ => {}
                }
                if let Some(f) = &i.mount_function
                    && !MOUNT_FUNCTIONS.contains(&f.as_str())
                {
                    problems.push(GraphProblem::MountFunction {
                        node: n.name.clone(),
                        value: f.clone(),
                    });
                }
            }
            if service == Some(ServiceType::Data) && !has_stdout {
                problems.push(GraphProblem::DataWithoutStdout {
                    node: n.name.clone(),
                });
            }
            if service != Some(ServiceType::Data) {
                for t in [InterfaceType::Stdin, InterfaceType::Stdout] {
                    if counts.get(&t).copied().unwrap_or(0) > 1 {
                        problems.push(iface(format!("a job has one {t}; it is declared twice")));
                    }
                }
            }
        }
        // Phase 3: connections.
        let mut edges: Vec<(&str, &str)> = Vec::new();
        let mut pairs: HashMap<(&str, &str), usize> = HashMap::new();
        for (index, c) in self.connections.iter().enumerate() {
            let label = c.label(index);
            let Some(from_name) = &c.from.node else {
                problems.push(GraphProblem::CoordinatorAsSource { connection: label });
                continue;
            };
            let mut ends_ok = true;
            for e in [&c.from, &c.to] {
                let Some(name) = &e.node else { continue };
                match self.node(name) {
                    None => {
                        problems.push(GraphProblem::UnknownNode {
                            connection: label.clone(),
                            node: name.clone(),
                        });
                        ends_ok = false;
                    }
                    Some(node) => {
                        let has = node.interfaces.iter().any(|i| {
                            i.interface_type == e.interface
                                && (e.path.is_none() || i.path == e.path)
                        });
                        if !has {
                            problems.push(GraphProblem::MissingInterface {
                                connection: label.clone(),
                                node: name.clone(),
                                interface: e.interface.clone(),
                            });
                            ends_ok = false;
                        }
                    }
                }
            }
            if !ends_ok {
                continue;
            }
            let (Some(from), Some(to)) = (
                InterfaceType::parse(&c.from.interface),
                InterfaceType::parse(&c.to.interface),
            ) else {
                continue; // reported in phase 2
            };
            let to_coordinator = c.to.node.is_none();
            let allowed = if to_coordinator {
                matches!(from, InterfaceType::Stdout | InterfaceType::Mount)
            } else {
                compatible(from, to)
            };
            if !allowed {
                problems.push(GraphProblem::Incompatible {
                    connection: label.clone(),
                    from: from.to_string(),
                    to: to.to_string(),
                });
            }
            for (end, role, refused) in [
                (&c.from, "a source", "OUTPUT"),
                (&c.to, "a destination", "INPUT"),
            ] {
                let Some(node) = end.node.as_deref().and_then(|n| self.node(n)) else {
                    continue;
                };
                if end.interface != "MOUNT" {
                    continue;
                }
                if let Some(i) = node.interface_for(end)
                    && i.mount_function.as_deref() == Some(refused)
                {
                    problems.push(GraphProblem::MountDirection {
                        connection: label.clone(),
                        node: node.name.clone(),
                        path: i.path.clone().unwrap_or_default(),
                        function: refused.to_owned(),
                        role,
                    });
                }
            }
            if let Some(to_name) = &c.to.node {
                let data_to = types.get(to_name.as_str()) == Some(&ServiceType::Data);
                if types.get(from_name.as_str()) == Some(&ServiceType::Data) && data_to {
                    problems.push(GraphProblem::DataToData {
                        connection: label.clone(),
                        from: from_name.clone(),
                        to: to_name.clone(),
                    });
                } else if data_to {
                    problems.push(GraphProblem::DataAsDestination {
                        connection: label.clone(),
                        node: to_name.clone(),
                    });
                }
                if let Some(first) = pairs.insert((from_name, to_name), index) {
                    problems.push(GraphProblem::DuplicatePair {
                        connection: label,
                        from: from_name.clone(),
                        to: to_name.clone(),
                        first,
                    });
                }
                edges.push((from_name, to_name));
            } else if let Some(first) = pairs.insert((from_name, ""), index) {
                problems.push(GraphProblem::DuplicatePair {
                    connection: label,
                    from: from_name.clone(),
                    to: "coordinator".into(),
                    first,
                });
            }
        }
        if let Some(cycle) = find_cycle(&self.nodes, &edges) {
            problems.push(GraphProblem::Cycle(cycle));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidGraph { problems })
        }
    }
}

/// Why a valid graph cannot be planned on the agents that are connected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphPlanError {
    #[error(transparent)]
    Invalid(#[from] InvalidGraph),
    #[error("node `{node}`: no connected agent named `{agent}`{}", crate::pipeline::known_list(.known))]
    UnknownAgent {
        node: String,
        agent: String,
        known: Vec<String>,
    },
    #[error("agent `{0}` did not report an absolute `work_dir` at registration")]
    MissingWorkDir(String),
    #[error(
        "connection {connection}: no SSH key between `{from}` and `{to}`: give `{from}` a `servers.{to}` entry (push) or `{to}` a `servers.{from}` entry (pull)"
    )]
    NoSshRoute {
        connection: String,
        from: String,
        to: String,
    },
}

/// The name of a graph's delivery step for connection `index`, unique among the node names
/// and the deliveries named so far (`taken` records it).
fn delivery_step(
    index: usize,
    from: &str,
    to: Option<&str>,
    taken: &mut HashSet<String>,
) -> String {
    let readable = format!("{from}-to-{}", to.unwrap_or("coordinator"));
    let mut name = readable.clone();
    let mut n = 0;
    while !crate::workflow::is_valid_step_name(&name) || taken.contains(&name) {
        n += 1;
        name = if n == 1 && crate::workflow::is_valid_step_name(&format!("{readable}-{index}")) {
            format!("{readable}-{index}")
        } else {
            format!("connection-{index}-{n}")
        };
    }
    taken.insert(name.clone());
    name
}

/// Turns a graph into the engine's DAG on the connected agents (`agents` with their
/// absolute `work_dir`; `coordinator` names the first level of the path hierarchy).
///
/// Every node becomes a step of its kind (DATA → `data`, DOCKER → `docker`, STANDALONE →
/// `exec`); every connection becomes a delivery step after its source: a verified
/// `transfer` into the destination's `input/<sender>/<sender_job>/` (pushed by the sender
/// when it holds a key for the receiver, else pulled; a local copy when both are on one
/// agent), or an `upload` to the coordinator. A destination waits for its deliveries
/// (INPUTS_READY), so it starts only on verified inputs.
pub fn plan(
    graph: &GraphDef,
    agents: &[HostInfo],
    coordinator: &str,
) -> Result<WorkflowDef, GraphPlanError> {
    use crate::jobpaths::JobPaths;
    use crate::kinds::{self, Delivery, JobIo, MountIo};
    use crate::pipeline::{literal, literal_value};
    use crate::workflow::{Placement, StepDef};
    use serde_json::{Value, json};

    graph.validate()?;
    let host = |node: &NodeDef| -> Result<(&HostInfo, String), GraphPlanError> {
        let agent = agents
            .iter()
            .find(|a| a.name == node.agent)
            .ok_or_else(|| GraphPlanError::UnknownAgent {
                node: node.name.clone(),
                agent: node.agent.clone(),
                known: agents.iter().map(|a| a.name.clone()).collect(),
            })?;
        let work_dir = agent
            .paths
            .get("work_dir")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| GraphPlanError::MissingWorkDir(agent.name.clone()))?;
        Ok((agent, literal(work_dir)))
    };
    let mut paths: HashMap<&str, JobPaths> = HashMap::new();
    for n in &graph.nodes {
        let (_, root) = host(n)?;
        paths.insert(
            &n.name,
            JobPaths::new(&root, coordinator, "${task_id}", &n.agent, &n.name),
        );
    }
    let mut io: HashMap<&str, JobIo> = graph
        .nodes
        .iter()
        .map(|n| {
            let p = &paths[n.name.as_str()];
            let mounts = n
                .interfaces
                .iter()
                .filter(|i| i.interface_type == "MOUNT")
                .filter_map(|i| i.path.as_deref())
                .map(|path| MountIo {
                    path: literal(path),
                    dir: p.mount(&literal(path)),
                    sources: Vec::new(),
                })
                .collect();
            let io = JobIo {
                job_dir: p.dir().to_owned(),
                mounts,
                ..Default::default()
            };
            (n.name.as_str(), io)
        })
        .collect();
    let mut waits_for: HashMap<&str, Vec<String>> = HashMap::new();
    let mut steps: Vec<StepDef> = Vec::new();
    let mut taken: HashSet<String> = graph.nodes.iter().map(|n| n.name.clone()).collect();
    let step =
        |name: String, kind: &str, agent: &str, params: Value, inputs: Vec<String>| StepDef {
            name,
            kind: kind.to_owned(),
            params,
            placement: Placement::Agent(agent.to_owned()),
            inputs,
            retry: None,
            timeout_secs: None,
            resources: None,
        };
    for (index, c) in graph.connections.iter().enumerate() {
        // validate() guarantees both ends exist and the source is a node.
        let Some(from) = c.from.node.as_deref().and_then(|n| graph.node(n)) else {
            continue;
        };
        let from_paths = &paths[from.name.as_str()];
        let source_dir = if c.from.interface == "MOUNT" {
            let path = from
                .interface_for(&c.from)
                .and_then(|i| i.path.as_deref())
                .unwrap_or_default();
            from_paths.mount(&literal(path))
        } else {
            if let Some(io) = io.get_mut(from.name.as_str()) {
                io.capture_stdout = true;
            }
            from_paths.stdout_dir()
        };
        let file_name = c.destination_file_name.as_deref().map(literal);
        let name = delivery_step(index, &from.name, c.to.node.as_deref(), &mut taken);
        let Some(to) = c.to.node.as_deref().and_then(|n| graph.node(n)) else {
            let mut params = json!({"local_path": source_dir, "node": from.name});
            if let Some(f) = &file_name {
                params["file_name"] = json!(f);
            }
            steps.push(step(
                name,
                kinds::UPLOAD,
                &from.agent,
                params,
                vec![from.name.clone()],
            ));
            continue;
        };
        let dest = paths[to.name.as_str()].input(&from.agent, &from.name);
        let (from_host, _) = host(from)?;
        let (to_host, _) = host(to)?;
        let (runner, params) = if from.agent == to.agent {
            (
                &from.agent,
                json!({"direction": "local", "local_path": source_dir, "remote_path": dest}),
            )
        } else if from_host.ssh_to.contains(&to.agent) {
            (
                &from.agent,
                json!({"direction": "push", "server": to.agent, "local_path": source_dir, "remote_path": dest}),
            )
        } else if to_host.ssh_to.contains(&from.agent) {
            (
                &to.agent,
                json!({"direction": "pull", "server": from.agent, "local_path": dest, "remote_path": source_dir}),
            )
        } else {
            return Err(GraphPlanError::NoSshRoute {
                connection: c.label(index),
                from: from.agent.clone(),
                to: to.agent.clone(),
            });
        };
        steps.push(step(
            name.clone(),
            kinds::TRANSFER,
            runner,
            params,
            vec![from.name.clone()],
        ));
        waits_for.entry(&to.name).or_default().push(name);
        let delivery = Delivery {
            dir: dest,
            file_name,
        };
        if let Some(io) = io.get_mut(to.name.as_str()) {
            if c.to.interface == "STDIN" {
                io.stdin.push(delivery);
            } else {
                let path = to
                    .interface_for(&c.to)
                    .and_then(|i| i.path.as_deref())
                    .map(literal)
                    .unwrap_or_default();
                if let Some(m) = io.mounts.iter_mut().find(|m| m.path == path) {
                    m.sources.push(delivery);
                }
            }
        }
    }
    let mut node_steps = Vec::with_capacity(graph.nodes.len());
    for n in &graph.nodes {
        let job_io = io.remove(n.name.as_str()).unwrap_or_default();
        let env = literal_value(&json!(n.env));
        let (kind, params) = match ServiceType::parse(&n.service_type) {
            Some(ServiceType::Data) => {
                let offered: Vec<String> = n
                    .interfaces
                    .iter()
                    .filter(|i| i.interface_type == "STDOUT")
                    .filter_map(|i| i.path.as_deref().map(literal))
                    .collect();
                let output_dir = paths[n.name.as_str()].stdout_dir();
                (
                    kinds::DATA,
                    json!({"paths": offered, "output_dir": output_dir}),
                )
            }
            Some(ServiceType::Docker) => (
                kinds::DOCKER,
                json!({
                    "image": literal(n.image.as_deref().unwrap_or_default()),
                    "entrypoint": literal_value(&json!(n.entrypoint)),
                    "cmd": literal_value(&json!(n.cmd)),
                    "env": env,
                    "secret_env": n.secret_env,
                    "io": job_io,
                }),
            ),
            _ => {
                let program = n.entrypoint.first().map(|p| literal(p)).unwrap_or_default();
                let args: Vec<String> = n
                    .entrypoint
                    .iter()
                    .skip(1)
                    .chain(&n.cmd)
                    .map(|a| literal(a))
                    .collect();
                (
                    kinds::EXEC,
                    json!({"program": program, "args": args, "env": env,
                        "secret_env": n.secret_env, "io": job_io}),
                )
            }
        };
        let inputs = waits_for.remove(n.name.as_str()).unwrap_or_default();
        node_steps.push(step(n.name.clone(), kind, &n.agent, params, inputs));
    }
    node_steps.extend(steps);
    Ok(WorkflowDef {
        name: graph.name.clone(),
        description: graph.description.clone(),
        max_active_tasks: None,
        priority: None,
        steps: node_steps,
    })
}

/// A cycle among the nodes, as a path that returns to its start.
fn find_cycle(nodes: &[NodeDef], edges: &[(&str, &str)]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (a, b) in edges {
        if let (Some(&a), Some(&b)) = (index.get(a), index.get(b)) {
            next[a].push(b);
        }
    }
    let cycle = crate::dag::find_cycle(&next)?;
    Some(cycle.iter().map(|&i| nodes[i].name.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 003's example: DATA on A → DOCKER on B → STANDALONE on C → download.
    fn example() -> GraphDef {
        GraphDef::from_yaml_for_tests(
            r#"
name: produce_score_check
nodes:
  - name: dataset
    service_type: DATA
    agent: agent-a
    interfaces: [{type: STDOUT, path: /data/campaign.csv}]
  - name: score
    service_type: DOCKER
    agent: agent-b
    image: localhost/ferry-score:1
    cmd: ["/input/campaign.csv"]
    interfaces:
      - {type: MOUNT, path: /input/, mount_function: OUTPUT}
      - {type: STDOUT}
  - name: check
    service_type: STANDALONE
    agent: agent-c
    entrypoint: ["sh", "-c", "wc -l"]
    interfaces: [{type: STDIN}, {type: STDOUT}]
connections:
  - {from: {node: dataset, interface: STDOUT}, to: {node: score, interface: MOUNT, path: /input/}}
  - {from: {node: score, interface: STDOUT}, to: {node: check, interface: STDIN}}
  - {from: {node: check, interface: STDOUT}, to: {interface: STDOUT}, destination_file_name: lines.txt}
"#,
        )
    }

    impl GraphDef {
        fn from_yaml_for_tests(text: &str) -> GraphDef {
            serde_yaml::from_str(text).expect("test graph parses")
        }
    }

    /// A connection between `(node, interface, path)` ends; `None` as the node is the coordinator.
    fn connection(
        from: (Option<&str>, &str, Option<&str>),
        to: (Option<&str>, &str, Option<&str>),
    ) -> ConnectionDef {
        let end = |(node, interface, path): (Option<&str>, &str, Option<&str>)| Endpoint {
            node: node.map(Into::into),
            interface: interface.into(),
            path: path.map(Into::into),
        };
        ConnectionDef {
            from: end(from),
            to: end(to),
            destination_file_name: None,
        }
    }

    fn problems(g: &GraphDef) -> Vec<String> {
        match g.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_example_is_valid() {
        assert_eq!(problems(&example()), Vec::<String>::new());
    }

    /// Found by the `graph_edits` fuzz target: a secret env name missing from `env` passed
    /// the graph's validation, and only the planned step's check refused it, so Build failed
    /// with "the planned workflow is invalid" (an internal error) instead of naming the node.
    #[test]
    fn a_secret_env_name_missing_from_env_names_the_node() {
        let mut g = example();
        g.nodes[2].secret_env = vec!["TOKEN".into()];
        assert_eq!(
            problems(&g),
            ["node `check`: `secret_env` names `TOKEN`, which is not in `env`"]
        );
        g.nodes[2].env.insert("TOKEN".into(), "s3cret".into());
        assert_eq!(problems(&g), Vec::<String>::new());
    }

    #[test]
    fn data_to_data_is_refused() {
        let mut g = example();
        g.nodes.push(NodeDef {
            name: "mirror".into(),
            service_type: "DATA".into(),
            agent: "agent-c".into(),
            interfaces: vec![
                InterfaceDef {
                    interface_type: "STDOUT".into(),
                    path: Some("/data/mirror.csv".into()),
                    ..Default::default()
                },
                InterfaceDef {
                    interface_type: "MOUNT".into(),
                    path: Some("/in/".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        g.connections.push(connection(
            (Some("dataset"), "STDOUT", None),
            (Some("mirror"), "MOUNT", None),
        ));
        assert_eq!(
            problems(&g),
            [
                "connection #3 dataset.STDOUT → mirror.MOUNT: cannot download from DATA service `dataset` to DATA service `mirror` (DATA feeds DOCKER/STANDALONE nodes or the coordinator)"
            ]
        );
    }

    #[test]
    fn reversed_interfaces_are_refused() {
        let mut g = example();
        g.connections[1] = connection(
            (Some("check"), "STDIN", None),
            (Some("score"), "STDOUT", None),
        );
        let p = problems(&g);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with(
                "connection #1 check.STDIN → score.STDOUT: STDIN → STDOUT is not allowed"
            ),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_nodes_are_named() {
        let mut g = example();
        g.connections[1].to.node = Some("chekc".into());
        assert_eq!(
            problems(&g),
            ["connection #1 score.STDOUT → chekc.STDIN: references non-existent node `chekc`"]
        );
    }

    #[test]
    fn data_without_stdout_is_refused() {
        let mut g = example();
        g.nodes[0].interfaces[0].interface_type = "MOUNT".into();
        g.connections.remove(0);
        assert_eq!(
            problems(&g),
            ["node `dataset`: a DATA service must have a STDOUT interface"]
        );
    }

    #[test]
    fn invalid_mount_functions_and_interface_types_are_named() {
        let mut g = example();
        g.nodes[1].interfaces[0].mount_function = Some("SIDEWAYS".into());
        g.nodes[2].interfaces.push(InterfaceDef {
            interface_type: "SOCKET".into(),
            ..Default::default()
        });
        assert_eq!(
            problems(&g),
            [
                "node `score`: invalid mount function `SIDEWAYS` (INPUT, OUTPUT or BOTH)",
                "node `check`: invalid interface type `SOCKET` (STDIN, STDOUT, STDERR, LOGS or MOUNT)",
            ]
        );
    }

    #[test]
    fn cycles_are_refused_with_their_path() {
        let mut g = example();
        g.nodes[1].interfaces.push(InterfaceDef {
            interface_type: "STDIN".into(),
            ..Default::default()
        });
        g.connections.push(connection(
            (Some("check"), "STDOUT", None),
            (Some("score"), "STDIN", None),
        ));
        assert_eq!(
            problems(&g),
            ["connections form a cycle: score → check → score"]
        );
    }

    #[test]
    fn node_configuration_and_the_coordinator_end_are_checked() {
        let mut g = example();
        g.nodes[1].image = None;
        g.nodes[2].entrypoint.clear();
        g.connections.push(connection(
            (None, "STDOUT", None),
            (Some("check"), "STDIN", None),
        ));
        assert_eq!(
            problems(&g),
            [
                "node `score`: a DOCKER service needs an `image`",
                "node `check`: a STANDALONE service needs an `entrypoint` (the program)",
                "connection #3 coordinator.STDOUT → check.STDIN: the coordinator can only be a destination",
            ]
        );
        assert_eq!(
            problems(&GraphDef::default()),
            ["workflow must have at least one node"]
        );
        // A blank program is no program (found by the graph_edits fuzz target).
        let mut g = example();
        g.nodes[2].entrypoint = vec![" ".into(), "--flag".into()];
        assert_eq!(
            problems(&g),
            ["node `check`: a STANDALONE service needs an `entrypoint` (the program)"]
        );
    }

    #[test]
    fn a_mount_is_fed_only_in_the_direction_its_function_allows() {
        let mut g = example();
        g.nodes[1].interfaces[0].mount_function = Some("INPUT".into());
        assert_eq!(
            problems(&g),
            [
                "connection #0 dataset.STDOUT → score.MOUNT: MOUNT `/input/` of node `score` has mount function INPUT, so it cannot be a destination (seed 003: OUTPUT = its peer sends to this job, INPUT = its peer receives from it)"
            ]
        );
    }

    #[test]
    fn one_connection_per_pair_of_nodes_and_none_into_data() {
        let mut g = example();
        let again = g.connections[1].clone();
        g.connections.push(again);
        g.nodes[2].interfaces.push(InterfaceDef {
            interface_type: "STDOUT".into(),
            ..Default::default()
        });
        let p = problems(&g);
        assert_eq!(
            p,
            [
                "node `check`: a job has one STDOUT; it is declared twice",
                "connection #3 score.STDOUT → check.STDIN: `score` already feeds `check` through connection #1; one connection per pair of nodes (its delivery is input/<sender>/<sender_job>/)",
            ]
        );
    }

    fn agent(name: &str, ssh_to: &[&str]) -> HostInfo {
        HostInfo {
            name: name.into(),
            role: None,
            paths: [("work_dir".to_owned(), format!("/srv/{name}/work"))].into(),
            ssh_to: ssh_to.iter().map(|s| (*s).to_owned()).collect(),
            connected: true,
        }
    }

    #[test]
    fn the_plan_delivers_each_connection_before_its_consumer_starts() {
        let agents = [
            agent("agent-a", &["agent-b"]),
            agent("agent-b", &[]),
            agent("agent-c", &["agent-b"]),
        ];
        let wf = plan(&example(), &agents, "coord").expect("plans");
        let names: Vec<&str> = wf.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dataset",
                "score",
                "check",
                "dataset-to-score",
                "score-to-check",
                "check-to-coordinator"
            ]
        );
        let by = |n: &str| wf.steps.iter().find(|s| s.name == n).expect("step");
        // A pushes to B (A holds B's key); C pulls from B (neither B nor A hold C's).
        let push = by("dataset-to-score");
        assert_eq!(
            push.placement,
            crate::workflow::Placement::Agent("agent-a".into())
        );
        assert_eq!(push.params["direction"], "push");
        assert_eq!(
            push.params["local_path"],
            "/srv/agent-a/work/workflows/coord/${task_id}/jobs/agent-a/dataset/output/stdout"
        );
        assert_eq!(
            push.params["remote_path"],
            "/srv/agent-b/work/workflows/coord/${task_id}/jobs/agent-b/score/input/agent-a/dataset"
        );
        let pull = by("score-to-check");
        assert_eq!(
            pull.placement,
            crate::workflow::Placement::Agent("agent-c".into())
        );
        assert_eq!(pull.params["direction"], "pull");
        assert_eq!(pull.params["server"], "agent-b");
        // Consumers wait for their deliveries; the delivered dir is what they read.
        assert_eq!(by("score").inputs, ["dataset-to-score"]);
        assert_eq!(by("check").inputs, ["score-to-check"]);
        let score = &by("score").params["io"];
        assert_eq!(score["mounts"][0]["path"], "/input/");
        assert_eq!(
            score["mounts"][0]["sources"][0]["dir"],
            push.params["remote_path"]
        );
        assert_eq!(score["capture_stdout"], true);
        assert_eq!(
            by("check").params["io"]["stdin"][0]["dir"],
            pull.params["local_path"]
        );
        assert_eq!(by("check-to-coordinator").kind, "upload");
        assert_eq!(by("check-to-coordinator").params["file_name"], "lines.txt");
        assert_eq!(by("dataset").kind, "data");
        assert!(wf.validate().is_ok(), "{:?}", wf.validate());
    }

    #[test]
    fn the_plan_names_what_is_missing_on_the_agents() {
        let mut agents = vec![
            agent("agent-a", &[]),
            agent("agent-b", &[]),
            agent("agent-c", &["agent-b"]),
        ];
        let err = plan(&example(), &agents, "coord").expect_err("no route");
        assert_eq!(
            err.to_string(),
            "connection #0 dataset.STDOUT → score.MOUNT: no SSH key between `agent-a` and `agent-b`: give `agent-a` a `servers.agent-b` entry (push) or `agent-b` a `servers.agent-a` entry (pull)"
        );
        agents.pop();
        let err = plan(&example(), &agents, "coord").expect_err("no agent");
        assert_eq!(
            err.to_string(),
            "node `check`: no connected agent named `agent-c` (connected: agent-a, agent-b)"
        );
        // Both ends on one agent: a local, verified copy.
        let mut g = example();
        for n in &mut g.nodes {
            n.agent = "agent-a".into();
        }
        let wf = plan(&g, &[agent("agent-a", &[])], "coord").expect("plans");
        assert_eq!(wf.steps[3].params["direction"], "local");
    }

    #[test]
    fn one_output_feeds_many_inputs_each_by_its_own_delivery() {
        let mut g = example();
        g.nodes.push(NodeDef {
            name: "audit".into(),
            service_type: "STANDALONE".into(),
            agent: "agent-c".into(),
            entrypoint: vec!["wc".into(), "-c".into()],
            interfaces: vec![InterfaceDef {
                interface_type: "MOUNT".into(),
                path: Some("/seen/".into()),
                mount_function: Some("OUTPUT".into()),
            }],
            ..Default::default()
        });
        g.connections.push(connection(
            (Some("dataset"), "STDOUT", None),
            (Some("audit"), "MOUNT", Some("/seen/")),
        ));
        let agents = [
            agent("agent-a", &["agent-b", "agent-c"]),
            agent("agent-b", &[]),
            agent("agent-c", &["agent-b"]),
        ];
        let wf = plan(&g, &agents, "coord").expect("plans");
        let from_dataset: Vec<&str> = wf
            .steps
            .iter()
            .filter(|s| s.inputs == ["dataset"])
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(from_dataset, ["dataset-to-score", "dataset-to-audit"]);
        let audit = wf.steps.iter().find(|s| s.name == "audit").expect("audit");
        assert_eq!(audit.inputs, ["dataset-to-audit"]);
        assert_eq!(
            audit.params["io"]["mounts"][0]["sources"][0]["dir"],
            "/srv/agent-c/work/workflows/coord/${task_id}/jobs/agent-c/audit/input/agent-a/dataset"
        );
    }

    #[test]
    fn delivery_names_never_collide() {
        let node = |name: &str| NodeDef {
            name: name.into(),
            service_type: "STANDALONE".into(),
            agent: "agent-a".into(),
            entrypoint: vec!["cat".into()],
            interfaces: vec![
                InterfaceDef {
                    interface_type: "STDIN".into(),
                    ..Default::default()
                },
                InterfaceDef {
                    interface_type: "STDOUT".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let link = |from: &str, to: &str| {
            connection((Some(from), "STDOUT", None), (Some(to), "STDIN", None))
        };
        // `a` → `b-to-c` and `a-to-b` → `c` would both be `a-to-b-to-c`.
        let g = GraphDef {
            name: "clash".into(),
            nodes: ["a", "b-to-c", "a-to-b", "c"].map(node).to_vec(),
            connections: vec![link("a", "b-to-c"), link("a-to-b", "c")],
            ..Default::default()
        };
        let wf = plan(&g, &[agent("agent-a", &[])], "coord").expect("plans");
        assert!(wf.validate().is_ok(), "{:?}", wf.validate());
        let names: HashSet<&str> = wf.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), wf.steps.len());
    }
}
