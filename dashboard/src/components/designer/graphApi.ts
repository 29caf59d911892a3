// Seed 003's graphs on the coordinator's API (/api/graphs...): the types of a graph's
// definition as crates/ferry-core/src/graph.rs serialises it, and the calls the designer
// makes. Every edit answers the whole graph with what validation finds now (`problems`).
import { request, type Task } from '../../api';

export const SERVICE_TYPES = ['DATA', 'DOCKER', 'STANDALONE'] as const;
export type ServiceType = (typeof SERVICE_TYPES)[number];
export const INTERFACE_TYPES = ['STDIN', 'STDOUT', 'STDERR', 'LOGS', 'MOUNT'] as const;
export const MOUNT_FUNCTIONS = ['INPUT', 'OUTPUT', 'BOTH'] as const;

export interface InterfaceDef {
  type: string;
  path?: string;
  mount_function?: string;
}

export interface NodeDef {
  name: string;
  service_type: string;
  agent: string;
  interfaces?: InterfaceDef[];
  image?: string;
  entrypoint?: string[];
  cmd?: string[];
  env?: Record<string, string>;
  secret_env?: string[];
  gui_x?: number;
  gui_y?: number;
}

/** A connection end: a node's interface, or the coordinator (no `node`: a download). */
export interface Endpoint {
  node?: string;
  interface: string;
  path?: string;
}

export interface ConnectionDef {
  from: Endpoint;
  to: Endpoint;
  destination_file_name?: string;
}

export interface CanvasState {
  zoom: number;
  pan_x: number;
  pan_y: number;
  snap_to_grid: boolean;
}

export interface GraphDef {
  name: string;
  description?: string;
  nodes?: NodeDef[];
  connections?: ConnectionDef[];
  canvas?: CanvasState;
}

export interface GraphView {
  name: string;
  definition: GraphDef;
  created_at: string;
  updated_at: string;
  /** What validation finds now; empty when the graph is ready to build. */
  problems: string[];
}

export interface PlannedWorkflow {
  name: string;
  definition?: { steps?: unknown[] };
}

const enc = encodeURIComponent;
const g = (name: string) => `/api/graphs/${enc(name)}`;

export const graphApi = {
  list: () => request<{ graphs: GraphView[] }>('/api/graphs'),
  get: (name: string) => request<GraphView>(g(name)),
  create: (name: string, description: string) =>
    request<GraphView>('/api/graphs', { method: 'POST', body: { name, description } }),
  remove: (name: string) => request<GraphView>(g(name), { method: 'DELETE' }),
  addNode: (graph: string, node: NodeDef) =>
    request<GraphView>(`${g(graph)}/nodes`, { method: 'POST', body: node }),
  /** A JSON merge patch of the node; a new name is carried into its connections. */
  updateNode: (graph: string, node: string, patch: Record<string, unknown>) =>
    request<GraphView>(`${g(graph)}/nodes/${enc(node)}`, { method: 'PATCH', body: patch }),
  removeNode: (graph: string, node: string) =>
    request<GraphView>(`${g(graph)}/nodes/${enc(node)}`, { method: 'DELETE' }),
  addConnection: (graph: string, c: ConnectionDef) =>
    request<GraphView>(`${g(graph)}/connections`, { method: 'POST', body: c }),
  removeConnection: (graph: string, index: number) =>
    request<GraphView>(`${g(graph)}/connections/${index}`, { method: 'DELETE' }),
  saveCanvas: (graph: string, c: CanvasState) =>
    request<GraphView>(`${g(graph)}/canvas`, { method: 'PUT', body: c }),
  build: (graph: string) => request<PlannedWorkflow>(`${g(graph)}/build`, { method: 'POST' }),
  execute: (graph: string) => request<Task>(`${g(graph)}/execute`, { method: 'POST', body: {} }),
};
