// The designer's canvas: one node per graph node with a handle per interface (inputs on
// the left, outputs on the right), the coordinator as a sink for downloads, and one edge
// per connection. Any handle may be dropped on any other: the coordinator judges the
// connection, and its verdict is drawn on the edge and the nodes it names.
import { memo, useCallback, useEffect, useMemo, useRef, useState, type DragEvent, type RefObject } from 'react';
import {
  Background,
  BaseEdge,
  ConnectionMode,
  Controls,
  EdgeLabelRenderer,
  getBezierPath,
  Handle,
  MarkerType,
  Panel,
  Position,
  ReactFlow,
  useNodesState,
  useReactFlow,
  useUpdateNodeInternals,
  type Connection,
  type Edge,
  type EdgeChange,
  type EdgeProps,
  type Node,
  type NodeChange,
  type NodeProps,
  type Viewport,
} from '@xyflow/react';
import '@xyflow/react/dist/style.css';
import type { CanvasState, ConnectionDef, Endpoint, GraphDef, NodeDef } from './graphApi';
import type { Problem, Problems } from './problems';

/** The coordinator's node id (never a node name: those have no ':'). */
export const COORDINATOR = ':coordinator';
/** The drag-and-drop type a palette entry carries (its value: the service type). */
export const DRAG_TYPE = 'application/x-ferry-node';

export type Selection = { kind: 'node'; name: string } | { kind: 'connection'; index: number } | null;

/** One interface row of a node: a handle on the sides it can be connected from. */
interface Port {
  key: string;
  label: string;
  title: string;
  in?: string;
  out?: string;
  /** Named by a connection but not declared on the node. */
  missing?: boolean;
}

const portKey = (type: string, path?: string) => (type === 'MOUNT' ? `MOUNT:${path ?? ''}` : type);

function sides(type: string, mountFunction?: string): ('in' | 'out')[] {
  switch (type) {
    case 'STDIN':
      return ['in'];
    case 'STDOUT':
    case 'STDERR':
    case 'LOGS':
      return ['out'];
    case 'MOUNT':
      // Seed 003: OUTPUT = the peer sends to this job; INPUT = the peer receives from it.
      if (mountFunction === 'OUTPUT') return ['in'];
      if (mountFunction === 'INPUT') return ['out'];
      return ['in', 'out'];
    default:
      return ['in', 'out'];
  }
}

/** The port key a connection end names on `node` (a MOUNT without path: its first). */
function endKey(end: Endpoint, node: NodeDef | undefined): string {
  if (end.interface !== 'MOUNT') return end.interface;
  const path = end.path ?? node?.interfaces?.find((i) => i.type === 'MOUNT')?.path;
  return portKey('MOUNT', path);
}

function portsOf(node: NodeDef, connections: ConnectionDef[]): Port[] {
  const ports: Port[] = [];
  const byKey = new Map<string, Port>();
  for (const i of node.interfaces ?? []) {
    const key = portKey(i.type, i.path);
    let p = byKey.get(key);
    if (!p) {
      const label =
        i.type === 'MOUNT' ? `MOUNT ${i.path ?? ''}` : i.path ? `${i.type} ${i.path}` : i.type;
      p = { key, label, title: label };
      byKey.set(key, p);
      ports.push(p);
    } else if (i.path && i.type !== 'MOUNT') {
      p.label = `${i.type} (several)`;
      p.title += `, ${i.path}`;
    }
    for (const s of sides(i.type, i.mount_function)) p[s] = `${s}:${key}`;
    if (i.type === 'MOUNT' && i.mount_function) p.title += ` (${i.mount_function})`;
  }
  for (const c of connections) {
    for (const [end, side] of [
      [c.from, 'out'],
      [c.to, 'in'],
    ] as const) {
      if (end.node !== node.name) continue;
      const key = endKey(end, node);
      const known = byKey.get(key);
      // An edge leaves from a source handle only: a connection from an input gets one, so
      // that it is drawn (with the coordinator's verdict on it).
      if (known && side === 'out' && !known.out) known.out = `out:${key}`;
      if (known) continue;
      const p: Port = {
        key,
        label: key.replace(':', ' '),
        title: 'named by a connection, not declared on the node',
        missing: true,
        [side]: `${side}:${key}`,
      };
      byKey.set(key, p);
      ports.push(p);
    }
  }
  return ports;
}

/** The handle a connection end is drawn from: its preferred side, else the other one. */
function handleFor(end: Endpoint, node: NodeDef | undefined, ports: Port[], prefer: 'in' | 'out') {
  if (!end.node) return `${prefer}:STDOUT`;
  const p = ports.find((q) => q.key === endKey(end, node));
  const other = prefer === 'in' ? 'out' : 'in';
  return p?.[prefer] ?? p?.[other] ?? `${prefer}:${endKey(end, node)}`;
}

/** A connection end from a handle id (`in:TYPE`, `out:MOUNT:/path/`). */
export function endpointOf(nodeId: string, handle: string | null | undefined): Endpoint {
  if (nodeId === COORDINATOR) return { interface: 'STDOUT' };
  const rest = (handle ?? '').replace(/^(in|out):/, '');
  if (rest.startsWith('MOUNT:')) {
    const path = rest.slice('MOUNT:'.length);
    return path ? { node: nodeId, interface: 'MOUNT', path } : { node: nodeId, interface: 'MOUNT' };
  }
  return { node: nodeId, interface: rest || 'STDOUT' };
}

export function describeEnd(end: Endpoint): string {
  if (!end.node) return 'the coordinator (download)';
  return `${end.node}.${end.interface}${end.interface === 'MOUNT' && end.path ? ` ${end.path}` : ''}`;
}

type ServiceData = {
  def: NodeDef;
  ports: Port[];
  problems: Problem[];
  editable: boolean;
};
type ServiceNodeType = Node<ServiceData, 'service'>;
type CoordinatorNodeType = Node<{ editable: boolean; count: number; asSource: boolean }, 'coordinator'>;
type AnyNode = ServiceNodeType | CoordinatorNodeType;

function ProblemList({ problems }: { problems: Problem[] }) {
  if (problems.length === 0) return null;
  return (
    <ul className="gnode-problems" aria-label="Problems">
      {problems.map((p, i) => (
        <li key={i}>
          <span aria-hidden="true">⚠ </span>
          {p.text}
        </li>
      ))}
    </ul>
  );
}

const ServiceNode = memo(function ServiceNode({ id, data, selected }: NodeProps<ServiceNodeType>) {
  const { def, ports, problems, editable } = data;
  const update = useUpdateNodeInternals();
  const shape = ports.map((p) => `${p.in ?? ''}|${p.out ?? ''}`).join(',');
  useEffect(() => update(id), [id, shape, update]);
  const bad = problems.length > 0;
  return (
    <div
      className={`gnode svc-${def.service_type.toLowerCase()}${bad ? ' has-problems' : ''}${selected ? ' selected' : ''}`}
      data-testid={`designer-node-${def.name}`}
      data-problems={problems.length}
    >
      <div className="gnode-head">
        <span className="gnode-type">{def.service_type}</span>
        <strong className="gnode-name">{def.name}</strong>
        {bad && (
          <span className="gnode-flag" title="This node has problems">
            ⚠ {problems.length} problem{problems.length === 1 ? '' : 's'}
          </span>
        )}
      </div>
      <div className="gnode-agent">
        on <code>{def.agent || '(no agent)'}</code>
      </div>
      <ul className="ports">
        {ports.length === 0 && <li className="port muted">no interfaces</li>}
        {ports.map((p) => (
          <li key={p.key} className={`port${p.missing ? ' missing' : ''}`} title={p.title}>
            {p.in && (
              <Handle
                type="target"
                position={Position.Left}
                id={p.in}
                isConnectable={editable}
                data-testid={`handle-${def.name}-${p.in}`}
                title={`${p.label}: drop an output here`}
              />
            )}
            <span className={`port-label${p.in ? ' port-in' : ''}${p.out ? ' port-out' : ''}`}>
              {p.label}
              {p.missing ? ' (missing)' : ''}
            </span>
            {p.out && (
              <Handle
                type="source"
                position={Position.Right}
                id={p.out}
                isConnectable={editable}
                data-testid={`handle-${def.name}-${p.out}`}
                title={`${p.label}: drag to an input`}
              />
            )}
          </li>
        ))}
      </ul>
      <ProblemList problems={problems} />
    </div>
  );
});

const CoordinatorNode = memo(function CoordinatorNode({ id, data, selected }: NodeProps<CoordinatorNodeType>) {
  const update = useUpdateNodeInternals();
  useEffect(() => update(id), [id, data.asSource, update]);
  return (
    <div className={`gnode coordinator${selected ? ' selected' : ''}`} data-testid="designer-node-coordinator">
      <div className="gnode-head">
        <span className="gnode-type">COORDINATOR</span>
        <strong className="gnode-name">Download</strong>
      </div>
      <ul className="ports">
        <li className="port">
          <Handle
            type="target"
            position={Position.Left}
            id="in:STDOUT"
            isConnectable={data.editable}
            data-testid="handle-coordinator"
            title="Drop an output here to download it from the run page"
          />
          <span className="port-label port-in">
            {data.count === 0 ? 'drop an output here' : `${data.count} download${data.count === 1 ? '' : 's'}`}
          </span>
          {data.asSource && (
            // Only to draw a connection that (wrongly) starts here.
            <Handle type="source" position={Position.Right} id="out:STDOUT" isConnectable={false} />
          )}
        </li>
      </ul>
    </div>
  );
});

type EdgeData = {
  index: number;
  label: string;
  describe: string;
  problems: Problem[];
  onSelect: (index: number) => void;
};
type GraphEdgeType = Edge<EdgeData, 'connection'>;

function ConnectionEdge(props: EdgeProps<GraphEdgeType>) {
  const { id, data, selected, markerEnd } = props;
  const [path, labelX, labelY] = getBezierPath(props);
  const problems = data?.problems ?? [];
  const bad = problems.length > 0;
  const showLabel = bad || !!data?.label || selected;
  return (
    <>
      <BaseEdge
        id={id}
        path={path}
        markerEnd={markerEnd}
        className={bad ? 'edge-bad' : undefined}
        style={bad ? { stroke: 'var(--bad-fg)', strokeWidth: 2.5, strokeDasharray: '6 4' } : undefined}
      />
      {showLabel && data && (
        <EdgeLabelRenderer>
          <div
            className={`edge-label nodrag nopan${bad ? ' bad' : ''}${selected ? ' selected' : ''}`}
            style={{ transform: `translate(-50%, -50%) translate(${labelX}px, ${labelY}px)` }}
            data-testid={`connection-${data.index}`}
            data-problems={problems.length}
            onClick={() => data.onSelect(data.index)}
          >
            <span className="edge-name">
              #{data.index}
              {data.label ? ` → ${data.label}` : ''}
            </span>
            {problems.map((p, i) => (
              <span className="edge-problem" key={i}>
                <span aria-hidden="true">⚠ </span>
                {p.text}
              </span>
            ))}
          </div>
        </EdgeLabelRenderer>
      )}
    </>
  );
}

/** Near `at`, a spot where no node lies (a node added without a drop must not hide one). */
function freeSpot(at: { x: number; y: number }, taken: { x: number; y: number }[]) {
  const free = (x: number, y: number) =>
    taken.every((p) => Math.abs(p.x - x) > 250 || Math.abs(p.y - y) > 150);
  const around = [
    [0, 0],
    [0, 1],
    [1, 0],
    [0, -1],
    [-1, 0],
    [1, 1],
    [-1, 1],
    [1, -1],
    [-1, -1],
  ];
  for (let ring = 1; ring < 8; ring++) {
    for (const [dx, dy] of around) {
      const x = Math.round(at.x + dx * ring * 260);
      const y = Math.round(at.y + dy * ring * 160);
      if (free(x, y)) return { x, y };
    }
  }
  return at;
}

const nodeTypes = { service: ServiceNode, coordinator: CoordinatorNode };
const edgeTypes = { connection: ConnectionEdge };

export interface GraphCanvasProps {
  graph: GraphDef;
  problems: Problems;
  editable: boolean;
  selection: Selection;
  onSelect: (s: Selection) => void;
  onConnect: (c: ConnectionDef) => void;
  onMoveNode: (name: string, x: number, y: number) => void;
  onDropNode: (serviceType: string, x: number, y: number) => void;
  onViewport: (c: CanvasState) => void;
  /** Set by the canvas: where a node added without a drop goes (near the view's centre,
   * where no node lies). */
  placeRef: RefObject<(() => { x: number; y: number }) | null>;
}

export function GraphCanvas(props: GraphCanvasProps) {
  const { graph, problems, editable, selection, onSelect } = props;
  const [snapToGrid, setSnapToGrid] = useState(graph.canvas?.snap_to_grid ?? false);
  const flow = useReactFlow();
  const wrapper = useRef<HTMLDivElement>(null);
  const defs = useMemo(() => graph.nodes ?? [], [graph.nodes]);
  const connections = useMemo(() => graph.connections ?? [], [graph.connections]);

  // The coordinator sits right of the nodes as first loaded; moving it is not stored.
  const [coordPos, setCoordPos] = useState(() => {
    const xs = defs.map((n) => n.gui_x ?? 0);
    const ys = defs.map((n) => n.gui_y ?? 0);
    return { x: xs.length ? Math.max(...xs) + 340 : 620, y: ys.length ? Math.min(...ys) : 40 };
  });

  const ports = useMemo(
    () => new Map(defs.map((n) => [n.name, portsOf(n, connections)])),
    [defs, connections],
  );

  const [nodes, setNodes, applyNodeChanges] = useNodesState<AnyNode>([]);
  useEffect(() => {
    setNodes((old) => {
      const prev = new Map(old.map((n) => [n.id, n]));
      const list: AnyNode[] = defs.map((def) => {
        const data: ServiceData = {
          def,
          ports: ports.get(def.name) ?? [],
          problems: problems.byNode.get(def.name) ?? [],
          editable,
        };
        const p = prev.get(def.name);
        const position = { x: def.gui_x ?? 0, y: def.gui_y ?? 0 };
        const selected = selection?.kind === 'node' && selection.name === def.name;
        const ariaLabel = `${def.service_type} node ${def.name}${data.problems.length ? `, ${data.problems.length} problems` : ''}`;
        if (p && p.type === 'service') return { ...p, data, position, selected, ariaLabel };
        return { id: def.name, type: 'service', position, data, selected, ariaLabel, draggable: editable };
      });
      const c = prev.get(COORDINATOR);
      const count = connections.filter((x) => !x.to.node).length;
      const coord: CoordinatorNodeType = {
        ...(c?.type === 'coordinator' ? c : {}),
        id: COORDINATOR,
        type: 'coordinator',
        position: coordPos,
        data: { editable, count, asSource: connections.some((x) => !x.from.node) },
        selectable: false,
        ariaLabel: 'The coordinator: outputs connected here are downloaded',
      };
      list.push(coord);
      return list;
    });
  }, [defs, ports, problems, editable, selection, connections, coordPos, setNodes]);

  const selectConnection = useCallback((index: number) => onSelect({ kind: 'connection', index }), [onSelect]);
  const edges: GraphEdgeType[] = useMemo(
    () =>
      connections.map((c, index) => {
        const fromDef = defs.find((n) => n.name === c.from.node);
        const toDef = defs.find((n) => n.name === c.to.node);
        const source = c.from.node ?? COORDINATOR;
        const target = c.to.node ?? COORDINATOR;
        const list = problems.byConnection.get(index) ?? [];
        return {
          id: `c${index}`,
          type: 'connection' as const,
          source,
          target,
          sourceHandle: handleFor(c.from, fromDef, ports.get(source) ?? [], 'out'),
          targetHandle: handleFor(c.to, toDef, ports.get(target) ?? [], 'in'),
          selected: selection?.kind === 'connection' && selection.index === index,
          markerEnd: { type: MarkerType.ArrowClosed },
          ariaLabel: `Connection #${index} from ${describeEnd(c.from)} to ${describeEnd(c.to)}${list.length ? `: ${list.map((p) => p.text).join('; ')}` : ''}`,
          data: {
            index,
            label: c.destination_file_name ?? '',
            describe: `${describeEnd(c.from)} → ${describeEnd(c.to)}`,
            problems: list,
            onSelect: selectConnection,
          },
        };
      }),
    [connections, defs, ports, problems, selection, selectConnection],
  );

  const onNodesChange = useCallback(
    (changes: NodeChange<AnyNode>[]) => {
      applyNodeChanges(changes.filter((c) => c.type !== 'remove'));
      for (const c of changes) {
        if (c.type === 'select' && c.selected && c.id !== COORDINATOR) {
          onSelect({ kind: 'node', name: c.id });
        }
      }
    },
    [applyNodeChanges, onSelect],
  );
  const onEdgesChange = useCallback(
    (changes: EdgeChange<GraphEdgeType>[]) => {
      for (const c of changes) {
        if (c.type === 'select' && c.selected) onSelect({ kind: 'connection', index: Number(c.id.slice(1)) });
      }
    },
    [onSelect],
  );

  const onConnect = useCallback(
    (c: Connection) => {
      props.onConnect({ from: endpointOf(c.source, c.sourceHandle), to: endpointOf(c.target, c.targetHandle) });
    },
    [props],
  );

  // Saved after the view has rested a moment.
  const saveTimer = useRef<number | undefined>(undefined);
  const onMoveEnd = useCallback(
    (_: unknown, vp: Viewport) => {
      window.clearTimeout(saveTimer.current);
      saveTimer.current = window.setTimeout(
        () => props.onViewport({ zoom: vp.zoom, pan_x: vp.x, pan_y: vp.y, snap_to_grid: snapToGrid }),
        600,
      );
    },
    [props, snapToGrid],
  );
  useEffect(() => () => window.clearTimeout(saveTimer.current), []);

  const { placeRef } = props;
  useEffect(() => {
    placeRef.current = () => {
      const r = wrapper.current?.getBoundingClientRect();
      const centre = r
        ? flow.screenToFlowPosition({ x: r.left + r.width / 2 - 110, y: r.top + r.height / 2 - 50 })
        : { x: 0, y: 0 };
      return freeSpot(centre, [...defs.map((n) => ({ x: n.gui_x ?? 0, y: n.gui_y ?? 0 })), coordPos]);
    };
    return () => {
      placeRef.current = null;
    };
  }, [flow, placeRef, defs, coordPos]);

  const onDragOver = (e: DragEvent) => {
    if (!editable || !e.dataTransfer.types.includes(DRAG_TYPE)) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = 'copy';
  };
  const onDrop = (e: DragEvent) => {
    const type = e.dataTransfer.getData(DRAG_TYPE);
    if (!editable || !type) return;
    e.preventDefault();
    const p = flow.screenToFlowPosition({ x: e.clientX, y: e.clientY });
    props.onDropNode(type, p.x, p.y);
  };

  const canvas = graph.canvas;
  return (
    <div className="designer-canvas" ref={wrapper} onDragOver={onDragOver} onDrop={onDrop} data-testid="designer-canvas">
      <ReactFlow
        nodes={nodes}
        edges={edges}
        nodeTypes={nodeTypes}
        edgeTypes={edgeTypes}
        onNodesChange={onNodesChange}
        onEdgesChange={onEdgesChange}
        onConnect={onConnect}
        connectionMode={ConnectionMode.Loose}
        nodesDraggable={editable}
        nodesConnectable={editable}
        elementsSelectable
        deleteKeyCode={null}
        snapToGrid={snapToGrid}
        snapGrid={[20, 20]}
        onNodeDragStop={(_, node) => {
          const x = Math.round(node.position.x);
          const y = Math.round(node.position.y);
          if (node.id === COORDINATOR) setCoordPos({ x, y });
          else props.onMoveNode(node.id, x, y);
        }}
        onPaneClick={() => onSelect(null)}
        onMoveEnd={editable ? onMoveEnd : undefined}
        defaultViewport={
          canvas ? { x: canvas.pan_x, y: canvas.pan_y, zoom: canvas.zoom } : { x: 20, y: 20, zoom: 1 }
        }
        // A graph without a stored view is fitted, unless it is empty: then the coordinator
        // waits at the right and nodes are dropped at their own size.
        fitView={!canvas && defs.length > 0}
        fitViewOptions={{ padding: 0.25, maxZoom: 1 }}
        minZoom={0.2}
        maxZoom={2.5}
        aria-label={`Graph ${graph.name}`}
      >
        <Background gap={20} />
        <Controls showInteractive={false} />
        {editable && (
          <Panel position="top-right" className="snap">
            <label>
              <input
                type="checkbox"
                checked={snapToGrid}
                onChange={(e) => {
                  const snap = e.target.checked;
                  setSnapToGrid(snap);
                  const vp = flow.getViewport();
                  props.onViewport({ zoom: vp.zoom, pan_x: vp.x, pan_y: vp.y, snap_to_grid: snap });
                }}
              />{' '}
              Snap to grid
            </label>
          </Panel>
        )}
      </ReactFlow>
    </div>
  );
}
