//! Seed 003's general workflows: nodes of three service types (DATA, DOCKER, STANDALONE) whose
//! interfaces (STDIN, STDOUT, STDERR, LOGS, MOUNT) are wired by connections, and the
//! validation of seed 003 "Validation Rules" (phases 1-3) that runs before execution.
//!
//! Values stay as the user wrote them (strings) so that validation can name what is wrong
//! ("invalid mount function `SIDEWAYS` on node `train`") instead of failing to parse.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

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

impl GraphDef {
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
            if n.agent.trim().is_empty() {
                problems.push(config("`agent` must name the agent that runs or holds it"));
            }
            match t {
                ServiceType::Docker if n.image.as_deref().is_none_or(|i| i.trim().is_empty()) => {
                    problems.push(config("a DOCKER service needs an `image`"));
                }
                ServiceType::Standalone if n.entrypoint.is_empty() => {
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
            for i in &n.interfaces {
                match InterfaceType::parse(&i.interface_type) {
                    Some(InterfaceType::Stdout) => has_stdout = true,
                    Some(_) => {}
                    None => problems.push(GraphProblem::InterfaceType {
                        node: n.name.clone(),
                        value: i.interface_type.clone(),
                    }),
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
            if types.get(n.name.as_str()) == Some(&ServiceType::Data) && !has_stdout {
                problems.push(GraphProblem::DataWithoutStdout {
                    node: n.name.clone(),
                });
            }
        }
        // Phase 3: connections.
        let mut edges: Vec<(&str, &str)> = Vec::new();
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
            if let Some(to_name) = &c.to.node {
                if types.get(from_name.as_str()) == Some(&ServiceType::Data)
                    && types.get(to_name.as_str()) == Some(&ServiceType::Data)
                {
                    problems.push(GraphProblem::DataToData {
                        connection: label,
                        from: from_name.clone(),
                        to: to_name.clone(),
                    });
                }
                edges.push((from_name, to_name));
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

/// A cycle among the nodes, as a path that returns to its start.
fn find_cycle(nodes: &[NodeDef], edges: &[(&str, &str)]) -> Option<Vec<String>> {
    let mut next: HashMap<&str, Vec<&str>> = HashMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut mark: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        n: &'a str,
        next: &HashMap<&'a str, Vec<&'a str>>,
        mark: &mut HashMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        mark.insert(n, 1);
        path.push(n);
        for m in next.get(n).into_iter().flatten() {
            match mark.get(m).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|p| p == m).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|s| (*s).to_owned()).collect();
                    cycle.push((*m).to_owned());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, next, mark, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        mark.insert(n, 2);
        None
    }
    for n in nodes {
        if mark.get(n.name.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(&n.name, &next, &mut mark, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
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
        g.connections.push(ConnectionDef {
            from: Endpoint {
                node: Some("dataset".into()),
                interface: "STDOUT".into(),
                path: None,
            },
            to: Endpoint {
                node: Some("mirror".into()),
                interface: "MOUNT".into(),
                path: None,
            },
            destination_file_name: None,
        });
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
        g.connections[1] = ConnectionDef {
            from: Endpoint {
                node: Some("check".into()),
                interface: "STDIN".into(),
                path: None,
            },
            to: Endpoint {
                node: Some("score".into()),
                interface: "STDOUT".into(),
                path: None,
            },
            destination_file_name: None,
        };
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
        g.connections.push(ConnectionDef {
            from: Endpoint {
                node: Some("check".into()),
                interface: "STDOUT".into(),
                path: None,
            },
            to: Endpoint {
                node: Some("score".into()),
                interface: "STDIN".into(),
                path: None,
            },
            destination_file_name: None,
        });
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
        g.connections.push(ConnectionDef {
            from: Endpoint {
                node: None,
                interface: "STDOUT".into(),
                path: None,
            },
            to: Endpoint {
                node: Some("check".into()),
                interface: "STDIN".into(),
                path: None,
            },
            destination_file_name: None,
        });
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
    }
}
