//! `ferry workflow` subcommands for seed 003's graphs: create, edit nodes and connections,
//! save the canvas, build, execute, and download what nodes sent to the coordinator.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use ferry_core::graph::{ConnectionDef, Endpoint, GraphDef, InterfaceDef, NodeDef};
use ferry_proto::v1::{self, output_chunk::Part};
use tokio::io::AsyncWriteExt;

use crate::{parse_kv, print_json, print_table, status};

#[derive(Debug, Subcommand)]
pub enum GraphCmd {
    /// Create a graph workflow (empty, or from a YAML/JSON file of nodes and connections).
    Create {
        name: String,
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List graph workflows.
    Graphs,
    /// Show a graph and what validation finds in it.
    Graph { name: String },
    /// Delete a graph workflow.
    DeleteGraph { name: String },
    /// Add a node: from a YAML/JSON file, or from flags.
    AddNode {
        graph: String,
        #[arg(long, conflicts_with_all = ["name", "service_type"])]
        file: Option<PathBuf>,
        #[arg(long)]
        name: Option<String>,
        /// DATA, DOCKER or STANDALONE.
        #[arg(long = "type")]
        service_type: Option<String>,
        /// The agent that runs (or, for DATA, holds) it.
        #[arg(long, default_value = "")]
        agent: String,
        #[arg(long)]
        image: Option<String>,
        /// Repeat for each word (DOCKER: overrides ENTRYPOINT; STANDALONE: the program and
        /// its first arguments).
        #[arg(long, allow_hyphen_values = true)]
        entrypoint: Vec<String>,
        #[arg(long, allow_hyphen_values = true)]
        cmd: Vec<String>,
        #[arg(long, value_parser = parse_kv)]
        env: Vec<(String, String)>,
        /// `TYPE[:PATH[:FUNCTION]]`, e.g. `STDOUT`, `STDOUT:/data/day.csv`,
        /// `MOUNT:/input/:OUTPUT`; repeatable.
        #[arg(long = "interface")]
        interfaces: Vec<String>,
        /// Canvas position `X,Y`.
        #[arg(long, value_parser = parse_xy)]
        at: Option<(i64, i64)>,
    },
    /// Change a node with a JSON (or YAML) merge patch, e.g. `{"image": "local/x:2"}`.
    UpdateNode {
        graph: String,
        node: String,
        patch: String,
    },
    /// Remove a node and its connections.
    RemoveNode { graph: String, node: String },
    /// Connect `NODE.INTERFACE[:PATH]` to `NODE.INTERFACE[:PATH]` or to `coordinator`.
    Connect {
        graph: String,
        from: String,
        to: String,
        /// Rename the delivered file.
        #[arg(long)]
        file_name: Option<String>,
    },
    /// Remove connection number INDEX (as `ferry workflow graph` lists them).
    Disconnect { graph: String, index: u32 },
    /// Save the designer's view.
    Canvas {
        graph: String,
        #[arg(long, default_value_t = 1.0)]
        zoom: f64,
        #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
        pan_x: f64,
        #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
        pan_y: f64,
        #[arg(long)]
        snap_to_grid: bool,
    },
    /// Validate and plan a graph on the connected agents; print the steps.
    Build { graph: String },
    /// Build and start a task; prints its id at once (follow it with `ferry logs -f ID`).
    Execute {
        graph: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "param", short = 'p', value_parser = parse_kv)]
        params: Vec<(String, String)>,
    },
    /// Download what a task's nodes sent to the coordinator, verifying every file.
    Download {
        task: i64,
        /// One node's files (default: every node's, under NODE/).
        #[arg(long)]
        node: Option<String>,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        to: PathBuf,
    },
}

fn parse_xy(s: &str) -> Result<(i64, i64), String> {
    let (x, y) = s.split_once(',').ok_or("expected X,Y")?;
    Ok((
        x.trim().parse().map_err(|_| format!("bad X `{x}`"))?,
        y.trim().parse().map_err(|_| format!("bad Y `{y}`"))?,
    ))
}

/// `TYPE[:PATH[:FUNCTION]]`.
fn parse_interface(s: &str) -> InterfaceDef {
    let mut parts = s.splitn(3, ':');
    let interface_type = parts.next().unwrap_or_default().to_ascii_uppercase();
    let path = parts.next().filter(|p| !p.is_empty()).map(str::to_owned);
    let mount_function = parts.next().map(str::to_ascii_uppercase);
    InterfaceDef {
        interface_type,
        path,
        mount_function,
    }
}

/// `NODE.INTERFACE[:PATH]`, or `coordinator`.
fn parse_endpoint(s: &str, coordinator_interface: &str) -> anyhow::Result<Endpoint> {
    if s == "coordinator" {
        return Ok(Endpoint {
            node: None,
            interface: coordinator_interface.to_owned(),
            path: None,
        });
    }
    let (node, rest) = s
        .split_once('.')
        .with_context(|| format!("`{s}` is not NODE.INTERFACE[:PATH] or `coordinator`"))?;
    let (interface, path) = match rest.split_once(':') {
        Some((i, p)) => (i, Some(p.to_owned())),
        None => (rest, None),
    };
    Ok(Endpoint {
        node: Some(node.to_owned()),
        interface: interface.to_ascii_uppercase(),
        path,
    })
}

fn read_yaml<T: serde::de::DeserializeOwned>(file: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{} is not valid", file.display()))
}

fn print_graph(g: &v1::Graph, json: bool) -> anyhow::Result<()> {
    let def: GraphDef = serde_json::from_str(&g.definition_json)?;
    if json {
        return print_json(&serde_json::json!({
            "graph": def, "problems": g.problems, "updated_at": g.updated_at,
        }));
    }
    println!(
        "graph {} ({} nodes, {} connections)",
        def.name,
        def.nodes.len(),
        def.connections.len()
    );
    let rows = def
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.service_type.clone(),
                n.agent.clone(),
                n.interfaces
                    .iter()
                    .map(|i| {
                        let mut s = i.interface_type.clone();
                        if let Some(p) = &i.path {
                            s.push(':');
                            s.push_str(p);
                        }
                        if let Some(f) = &i.mount_function {
                            s.push(':');
                            s.push_str(f);
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    print_table(&["NODE", "TYPE", "AGENT", "INTERFACES"], rows);
    let end = |e: &Endpoint| match (&e.node, &e.path) {
        (None, _) => "coordinator".to_owned(),
        (Some(n), Some(p)) => format!("{n}.{}:{p}", e.interface),
        (Some(n), None) => format!("{n}.{}", e.interface),
    };
    let rows = def
        .connections
        .iter()
        .enumerate()
        .map(|(i, c)| {
            vec![
                format!("#{i}"),
                end(&c.from),
                end(&c.to),
                c.destination_file_name.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["#", "FROM", "TO", "FILE NAME"], rows);
    if g.problems.is_empty() {
        println!("valid: ready to build");
    } else {
        println!("not valid yet:");
        for p in &g.problems {
            println!("  - {p}");
        }
    }
    Ok(())
}

pub async fn run(
    cmd: GraphCmd,
    client: &mut crate::access::Client,
    json: bool,
) -> anyhow::Result<()> {
    let graph = match cmd {
        GraphCmd::Create {
            name,
            from,
            description,
        } => {
            let definition_json = match from {
                Some(file) => serde_json::to_string(&read_yaml::<GraphDef>(&file)?)?,
                None => String::new(),
            };
            client
                .create_graph(v1::CreateGraphRequest {
                    name,
                    description,
                    definition_json,
                })
                .await
        }
        GraphCmd::Graphs => {
            let list = client
                .list_graphs(v1::ListGraphsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json {
                let all: Vec<serde_json::Value> = list
                    .graphs
                    .iter()
                    .map(|g| {
                        serde_json::json!({"name": g.name, "problems": g.problems, "updated_at": g.updated_at})
                    })
                    .collect();
                return print_json(&serde_json::Value::Array(all));
            }
            let rows = list
                .graphs
                .iter()
                .map(|g| {
                    let def: GraphDef =
                        serde_json::from_str(&g.definition_json).unwrap_or_default();
                    vec![
                        g.name.clone(),
                        def.nodes.len().to_string(),
                        def.connections.len().to_string(),
                        if g.problems.is_empty() {
                            "valid".into()
                        } else {
                            format!("{} problems", g.problems.len())
                        },
                        g.updated_at.clone(),
                    ]
                })
                .collect();
            print_table(&["NAME", "NODES", "CONNECTIONS", "STATE", "UPDATED"], rows);
            return Ok(());
        }
        GraphCmd::Graph { name } => client.get_graph(v1::GraphRef { name }).await,
        GraphCmd::DeleteGraph { name } => client.delete_graph(v1::GraphRef { name }).await,
        GraphCmd::AddNode {
            graph,
            file,
            name,
            service_type,
            agent,
            image,
            entrypoint,
            cmd,
            env,
            interfaces,
            at,
        } => {
            let node = match file {
                Some(f) => read_yaml::<NodeDef>(&f)?,
                None => NodeDef {
                    name: name.context("--name (or --file) is required")?,
                    service_type: service_type
                        .context("--type (or --file) is required")?
                        .to_ascii_uppercase(),
                    agent,
                    interfaces: interfaces.iter().map(|i| parse_interface(i)).collect(),
                    image,
                    entrypoint,
                    cmd,
                    env: env.into_iter().collect(),
                    secret_env: Vec::new(),
                    gui_x: at.map(|a| a.0).unwrap_or_default(),
                    gui_y: at.map(|a| a.1).unwrap_or_default(),
                },
            };
            client
                .add_node(v1::NodeEdit {
                    graph,
                    node: node.name.clone(),
                    node_json: serde_json::to_string(&node)?,
                })
                .await
        }
        GraphCmd::UpdateNode { graph, node, patch } => {
            let value: serde_json::Value =
                serde_yaml::from_str(&patch).context("the patch is not JSON or YAML")?;
            client
                .update_node(v1::NodeEdit {
                    graph,
                    node,
                    node_json: value.to_string(),
                })
                .await
        }
        GraphCmd::RemoveNode { graph, node } => {
            client
                .remove_node(v1::NodeEdit {
                    graph,
                    node,
                    node_json: String::new(),
                })
                .await
        }
        GraphCmd::Connect {
            graph,
            from,
            to,
            file_name,
        } => {
            let from = parse_endpoint(&from, "STDOUT")?;
            if from.node.is_none() {
                bail!("the coordinator can only be a destination");
            }
            let to = parse_endpoint(&to, &from.interface)?;
            let c = ConnectionDef {
                from,
                to,
                destination_file_name: file_name,
            };
            client
                .add_connection(v1::ConnectionEdit {
                    graph,
                    connection_json: serde_json::to_string(&c)?,
                    index: 0,
                })
                .await
        }
        GraphCmd::Disconnect { graph, index } => {
            client
                .remove_connection(v1::ConnectionEdit {
                    graph,
                    connection_json: String::new(),
                    index,
                })
                .await
        }
        GraphCmd::Canvas {
            graph,
            zoom,
            pan_x,
            pan_y,
            snap_to_grid,
        } => {
            client
                .save_canvas(v1::CanvasEdit {
                    graph,
                    zoom,
                    pan_x,
                    pan_y,
                    snap_to_grid,
                })
                .await
        }
        GraphCmd::Build { graph } => {
            let wf = client
                .build_graph(v1::GraphRef { name: graph })
                .await
                .map_err(status)?
                .into_inner();
            let def = wf.definition.unwrap_or_default();
            if json {
                return print_json(&serde_json::json!({
                    "id": wf.id,
                    "steps": def.steps.iter().map(|s| serde_json::json!({
                        "name": s.name, "kind": s.kind, "inputs": s.inputs,
                    })).collect::<Vec<_>>(),
                }));
            }
            let rows = def
                .steps
                .iter()
                .map(|s| {
                    let placement = match &s.placement {
                        Some(v1::step_definition::Placement::Agent(a)) => a.clone(),
                        Some(v1::step_definition::Placement::Role(r)) => format!("role {r}"),
                        None => String::new(),
                    };
                    vec![
                        s.name.clone(),
                        s.kind.clone(),
                        placement,
                        s.inputs.join(", "),
                    ]
                })
                .collect();
            println!("built {} ({} steps):", def.name, def.steps.len());
            print_table(&["STEP", "KIND", "AGENT", "WAITS FOR"], rows);
            return Ok(());
        }
        GraphCmd::Execute {
            graph,
            name,
            params,
        } => {
            let task = client
                .execute_graph(v1::ExecuteGraphRequest {
                    graph,
                    task_name: name.unwrap_or_default(),
                    params: params.into_iter().collect(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if json {
                return print_json(
                    &serde_json::json!({"id": task.id, "name": task.name, "status": task.status}),
                );
            }
            println!(
                "task {} started ({}): follow it with `ferry logs -f {}`",
                task.id, task.name, task.id
            );
            return Ok(());
        }
        GraphCmd::Download { task, node, to } => {
            return download(client, task, node, &to, json).await;
        }
    };
    let graph = graph.map_err(status)?.into_inner();
    print_graph(&graph, json)
}

/// Writes each file under a temporary name and keeps it only when its BLAKE3 matches.
async fn download(
    client: &mut crate::access::Client,
    task: i64,
    node: Option<String>,
    to: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let mut stream = client
        .download_output(v1::DownloadRequest {
            task_id: task,
            node: node.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut current: Option<(PathBuf, PathBuf, tokio::fs::File, blake3::Hasher, u64)> = None;
    let mut kept: Vec<(String, u64)> = Vec::new();
    while let Some(msg) = stream.message().await.map_err(status)? {
        match msg.part {
            Some(Part::File(f)) => {
                let rel = Path::new(&f.path);
                if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                    bail!("the coordinator sent an unsafe path `{}`", f.path);
                }
                let full = to.join(rel);
                if let Some(parent) = full.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                let part = PathBuf::from(format!("{}.part", full.display()));
                let file = tokio::fs::File::create(&part)
                    .await
                    .with_context(|| format!("cannot create {}", part.display()))?;
                current = Some((full, part, file, blake3::Hasher::new(), 0));
            }
            Some(Part::Data(data)) => {
                let Some((_, part, file, hasher, n)) = current.as_mut() else {
                    bail!("the coordinator sent data outside a file");
                };
                hasher.update(&data);
                *n += data.len() as u64;
                file.write_all(&data)
                    .await
                    .with_context(|| format!("cannot write {}", part.display()))?;
            }
            Some(Part::End(end)) => {
                let Some((full, part, file, hasher, n)) = current.take() else {
                    bail!("the coordinator sent a file end outside a file");
                };
                file.sync_all().await?;
                let actual = hasher.finalize().to_hex().to_string();
                if actual != end.blake3 {
                    let _ = std::fs::remove_file(&part);
                    bail!(
                        "{} arrived damaged (blake3 {actual}, expected {})",
                        full.display(),
                        end.blake3
                    );
                }
                drop(file);
                ferry_fs::persist(&part, &full)
                    .with_context(|| format!("cannot write {}", full.display()))?;
                kept.push((full.display().to_string(), n));
            }
            _ => {}
        }
    }
    if current.is_some() {
        bail!("the download ended in the middle of a file");
    }
    if json {
        return print_json(&serde_json::json!(
            kept.iter()
                .map(|(p, n)| serde_json::json!({"path": p, "bytes": n}))
                .collect::<Vec<_>>()
        ));
    }
    for (p, n) in &kept {
        println!("{p} ({n} bytes, verified)");
    }
    Ok(())
}
