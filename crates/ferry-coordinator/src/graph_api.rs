//! Seed 003's workflow building (Flow 1) and execution (Flow 2) behind the client API.
//!
//! Edits are read-modify-write of the stored graph, one at a time (`graph_edits`), and
//! never refuse an incomplete graph: each answer carries what validation finds now, so a
//! designer can show it. Building and executing refuse an invalid graph, naming every
//! node or connection at fault.

use ferry_core::graph::{CanvasState, ConnectionDef, GraphDef, NodeDef};
use ferry_proto::v1;
use ferry_store::{Store, workflow_graph};
use tonic::{Response, Status};

use crate::api::{WorkflowApi, store_err, task_to_wire, ts, workflow_to_wire};
use crate::engine::ApiRequest;
use ferry_core::json::merge_patch;

pub fn graph_to_wire(row: &workflow_graph::Model) -> Result<v1::Graph, Status> {
    let graph = Store::graph_of(row).map_err(store_err)?;
    let problems = match graph.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    };
    // Secret env values never leave the coordinator.
    let definition_json = serde_json::to_string(&graph.masked())
        .map_err(|e| Status::internal(format!("cannot serialise graph `{}`: {e}", row.name)))?;
    Ok(v1::Graph {
        name: row.name.clone(),
        definition_json,
        created_at: ts(row.created_at),
        updated_at: ts(row.updated_at),
        problems,
    })
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, Status> {
    serde_json::from_str(json)
        .map_err(|e| Status::invalid_argument(format!("`{what}` is not a valid {what}: {e}")))
}

impl WorkflowApi {
    async fn graph_row(&self, name: &str) -> Result<workflow_graph::Model, Status> {
        self.store
            .graph_by_name(name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Status::not_found(format!("graph `{name}` not found")))
    }

    pub(crate) async fn load_graph(&self, name: &str) -> Result<GraphDef, Status> {
        Store::graph_of(&self.graph_row(name).await?).map_err(store_err)
    }

    /// Applies `edit` to the stored graph and stores the result.
    async fn edit_graph(
        &self,
        name: &str,
        edit: impl FnOnce(&mut GraphDef) -> Result<(), Status>,
    ) -> Result<Response<v1::Graph>, Status> {
        let _one_at_a_time = self.graph_edits.lock().await;
        let mut graph = self.load_graph(name).await?;
        edit(&mut graph)?;
        let row = self.store.save_graph(&graph).await.map_err(store_err)?;
        Ok(Response::new(graph_to_wire(&row)?))
    }

    pub(crate) async fn create_graph(
        &self,
        r: v1::CreateGraphRequest,
    ) -> Result<Response<v1::Graph>, Status> {
        let mut graph = if r.definition_json.trim().is_empty() {
            GraphDef::default()
        } else {
            parse::<GraphDef>("graph", &r.definition_json)?
        };
        if graph.name.is_empty() {
            graph.name = r.name.clone();
        }
        if graph.name != r.name {
            return Err(Status::invalid_argument(format!(
                "the definition is named `{}` but the request `{}`",
                graph.name, r.name
            )));
        }
        // A graph builds into the workflow of the same name.
        if !ferry_core::workflow::is_valid_workflow_name(&r.name) {
            return Err(Status::invalid_argument(format!(
                "graph name `{}` must be 1-100 letters, digits, '_', '-' or '.'",
                r.name
            )));
        }
        if !r.description.is_empty() {
            graph.description = r.description;
        }
        let _one_at_a_time = self.graph_edits.lock().await;
        if self
            .store
            .graph_by_name(&r.name)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(Status::already_exists(format!(
                "graph `{}` already exists; edit it, or delete it first",
                r.name
            )));
        }
        let row = self.store.save_graph(&graph).await.map_err(store_err)?;
        Ok(Response::new(graph_to_wire(&row)?))
    }

    pub(crate) async fn get_graph(&self, name: &str) -> Result<Response<v1::Graph>, Status> {
        Ok(Response::new(graph_to_wire(&self.graph_row(name).await?)?))
    }

    pub(crate) async fn list_graphs(&self) -> Result<Response<v1::ListGraphsResponse>, Status> {
        let rows = self.store.list_graphs().await.map_err(store_err)?;
        let graphs = rows.iter().map(graph_to_wire).collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ListGraphsResponse { graphs }))
    }

    pub(crate) async fn delete_graph(&self, name: &str) -> Result<Response<v1::Graph>, Status> {
        let _one_at_a_time = self.graph_edits.lock().await;
        let row = self.graph_row(name).await?;
        self.store.delete_graph(name).await.map_err(store_err)?;
        Ok(Response::new(graph_to_wire(&row)?))
    }

    pub(crate) async fn add_node(&self, e: v1::NodeEdit) -> Result<Response<v1::Graph>, Status> {
        let node: NodeDef = parse("node", &e.node_json)?;
        self.edit_graph(&e.graph, |g| {
            if g.node(&node.name).is_some() {
                return Err(Status::already_exists(format!(
                    "node `{}` already exists in graph `{}`",
                    node.name, g.name
                )));
            }
            g.nodes.push(node);
            Ok(())
        })
        .await
    }

    /// A JSON merge patch of the node; a new `name` is carried into its connections.
    pub(crate) async fn update_node(&self, e: v1::NodeEdit) -> Result<Response<v1::Graph>, Status> {
        let patch: serde_json::Value = parse("patch", &e.node_json)?;
        self.edit_graph(&e.graph, |g| {
            let index = g
                .nodes
                .iter()
                .position(|n| n.name == e.node)
                .ok_or_else(|| missing_node(&e.node, &g.name))?;
            let mut value = serde_json::to_value(&g.nodes[index])
                .map_err(|err| Status::internal(err.to_string()))?;
            merge_patch(&mut value, &patch);
            let updated: NodeDef = serde_json::from_value(value).map_err(|err| {
                Status::invalid_argument(format!("the patched node is invalid: {err}"))
            })?;
            if updated.name != e.node {
                if g.node(&updated.name).is_some() {
                    return Err(Status::already_exists(format!(
                        "node `{}` already exists in graph `{}`",
                        updated.name, g.name
                    )));
                }
                for c in &mut g.connections {
                    for end in [&mut c.from, &mut c.to] {
                        if end.node.as_deref() == Some(e.node.as_str()) {
                            end.node = Some(updated.name.clone());
                        }
                    }
                }
            }
            g.nodes[index] = updated;
            Ok(())
        })
        .await
    }

    /// Removes the node and every connection that touches it.
    pub(crate) async fn remove_node(&self, e: v1::NodeEdit) -> Result<Response<v1::Graph>, Status> {
        self.edit_graph(&e.graph, |g| {
            let before = g.nodes.len();
            g.nodes.retain(|n| n.name != e.node);
            if g.nodes.len() == before {
                return Err(missing_node(&e.node, &g.name));
            }
            let gone = Some(e.node.as_str());
            g.connections
                .retain(|c| c.from.node.as_deref() != gone && c.to.node.as_deref() != gone);
            Ok(())
        })
        .await
    }

    pub(crate) async fn add_connection(
        &self,
        e: v1::ConnectionEdit,
    ) -> Result<Response<v1::Graph>, Status> {
        let connection: ConnectionDef = parse("connection", &e.connection_json)?;
        self.edit_graph(&e.graph, |g| {
            for end in [&connection.from, &connection.to] {
                if let Some(n) = &end.node
                    && g.node(n).is_none()
                {
                    return Err(missing_node(n, &g.name));
                }
            }
            g.connections.push(connection);
            Ok(())
        })
        .await
    }

    pub(crate) async fn remove_connection(
        &self,
        e: v1::ConnectionEdit,
    ) -> Result<Response<v1::Graph>, Status> {
        self.edit_graph(&e.graph, |g| {
            let index = e.index as usize;
            if index >= g.connections.len() {
                return Err(Status::not_found(format!(
                    "graph `{}` has {} connections; there is no #{index}",
                    g.name,
                    g.connections.len()
                )));
            }
            g.connections.remove(index);
            Ok(())
        })
        .await
    }

    pub(crate) async fn save_canvas(
        &self,
        e: v1::CanvasEdit,
    ) -> Result<Response<v1::Graph>, Status> {
        if !(e.zoom.is_finite() && e.zoom > 0.0 && e.pan_x.is_finite() && e.pan_y.is_finite()) {
            return Err(Status::invalid_argument(
                "`zoom` must be a positive number and `pan_x`/`pan_y` finite",
            ));
        }
        self.edit_graph(&e.graph, |g| {
            g.canvas = Some(CanvasState {
                zoom: e.zoom,
                pan_x: e.pan_x,
                pan_y: e.pan_y,
                snap_to_grid: e.snap_to_grid,
            });
            Ok(())
        })
        .await
    }

    /// Validates and plans the graph on the connected agents and stores the plan as the
    /// workflow of the same name.
    pub(crate) async fn build_graph(
        &self,
        name: &str,
    ) -> Result<ferry_store::workflow::Model, Status> {
        let graph = self.load_graph(name).await?;
        let def = self.engine.plan_graph(&graph)?;
        // The plan passes the same checks as any stored workflow before it replaces one.
        def.validate()
            .map_err(|e| Status::internal(format!("the planned workflow is invalid: {e}")))?;
        self.store.apply_workflow(&def).await.map_err(store_err)
    }

    pub(crate) async fn build_graph_reply(
        &self,
        name: &str,
    ) -> Result<Response<v1::Workflow>, Status> {
        let row = self.build_graph(name).await?;
        Ok(Response::new(workflow_to_wire(&row)?))
    }

    /// Builds, then starts a task; answers as soon as the task exists (the two-phase start
    /// goes on in the engine).
    pub(crate) async fn execute_graph(
        &self,
        r: v1::ExecuteGraphRequest,
    ) -> Result<Response<v1::Task>, Status> {
        let wf = self.build_graph(&r.graph).await?;
        let row = self
            .engine
            .request(|reply| ApiRequest::CreateTask {
                workflow: wf.name.clone(),
                name: r.task_name,
                params: r.params.into_iter().collect(),
                opts: Default::default(),
                reply,
            })
            .await?;
        Ok(Response::new(task_to_wire(&row, 0)))
    }
}

fn missing_node(node: &str, graph: &str) -> Status {
    Status::not_found(format!("graph `{graph}` has no node `{node}`"))
}
