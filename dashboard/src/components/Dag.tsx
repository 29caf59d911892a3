// The task's DAG: one node per step, placed in columns by depth, edges from inputs; a fan-out
// of many steps with the same inputs is one group node (with its states counted), opened a
// few dozen steps at a time. The layout is computed in a worker, so a big graph does not block the page, and
// React Flow draws only the nodes in view. Each node shows its state as an icon and a word
// besides its colour.
import { memo, useEffect, useMemo, useRef, useState } from 'react';
import {
  Background,
  Controls,
  Handle,
  MarkerType,
  Position,
  ReactFlow,
  type Edge,
  type Node,
  type NodeProps,
  useNodesState,
} from '@xyflow/react';
import '@xyflow/react/dist/style.css';
import type { Step } from '../api';
import { EXPAND_STEP, layout as layoutNow, type Layout, type ShapeStep } from '../dag/layout';
import { StatusIcon, statusStyle } from '../status';
import { progressPercent } from './progress';

type StepNodeData = { step: Step; focused: boolean };
type GroupNodeData = {
  id: string;
  steps: Step[];
  status: string;
  focused: boolean;
  onExpand: (id: string) => void;
};
type StepNodeType = Node<StepNodeData, 'step'>;
type GroupNodeType = Node<GroupNodeData, 'group'>;
type DagNode = StepNodeType | GroupNodeType;

const StepNode = memo(function StepNode({ data }: NodeProps<StepNodeType>) {
  const { step, focused } = data;
  const s = statusStyle(step.status);
  const pct = progressPercent(step.progress);
  return (
    <div
      className={`dag-node tone-${s.tone}${focused ? ' focused' : ''}`}
      data-testid={`dag-node-${step.name}`}
      data-status={step.status}
    >
      <Handle type="target" position={Position.Left} isConnectable={false} />
      <div className="dag-node-name">{step.name}</div>
      <div className="dag-node-kind">{step.kind}</div>
      <div className="dag-node-state">
        <StatusIcon status={step.status} /> {s.label}
        {pct !== null && step.status === 'running' ? ` · ${pct}%` : ''}
        {step.attempt > 1 ? ` · try ${step.attempt}` : ''}
      </div>
      <Handle type="source" position={Position.Right} isConnectable={false} />
    </div>
  );
});

/** The state a group shows: a failure first, then work under way, then what is left. */
function groupStatus(steps: Step[]): string {
  const has = (st: string) => steps.some((s) => s.status === st);
  if (has('failed')) return 'failed';
  if (has('awaiting_approval')) return 'awaiting_approval';
  if (has('running') || has('dispatching') || has('ready')) return 'running';
  if (steps.every((s) => s.status === 'completed')) return 'completed';
  if (has('paused')) return 'paused';
  if (steps.every((s) => s.status === 'cancelled')) return 'cancelled';
  return 'pending';
}

function counts(steps: Step[]): string {
  const by = new Map<string, number>();
  for (const s of steps) by.set(s.status, (by.get(s.status) ?? 0) + 1);
  return [...by.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([st, n]) => `${n} ${statusStyle(st).label.toLowerCase()}`)
    .join(', ');
}

const GroupNode = memo(function GroupNode({ data }: NodeProps<GroupNodeType>) {
  const s = statusStyle(data.status);
  const first = data.steps[0]?.name ?? '';
  const last = data.steps[data.steps.length - 1]?.name ?? '';
  return (
    <div
      className={`dag-node dag-group tone-${s.tone}${data.focused ? ' focused' : ''}`}
      data-testid="dag-group"
      data-status={data.status}
      data-size={data.steps.length}
    >
      <Handle type="target" position={Position.Left} isConnectable={false} />
      <div className="dag-node-name">
        {data.steps.length} steps: {first} … {last}
      </div>
      <div className="dag-node-state">
        <StatusIcon status={data.status} /> {counts(data.steps)}
      </div>
      <button
        type="button"
        className="linklike nodrag"
        onClick={(e) => {
          e.stopPropagation();
          data.onExpand(data.id);
        }}
      >
        Show {Math.min(EXPAND_STEP, data.steps.length)} of them
      </button>
      <Handle type="source" position={Position.Right} isConnectable={false} />
    </div>
  );
});

const nodeTypes = { step: StepNode, group: GroupNode };

/** Lays out in a worker where the browser has them; a stale answer is dropped. */
function useLayout(
  shape: ShapeStep[],
  shapeKey: string,
  expanded: Record<string, number>,
): Layout | null {
  const [result, setResult] = useState<Layout | null>(null);
  const worker = useRef<Worker | null>(null);
  const seq = useRef(0);
  useEffect(() => {
    if (typeof Worker === 'undefined') return;
    const w = new Worker(new URL('../dag/layout.worker.ts', import.meta.url), { type: 'module' });
    worker.current = w;
    w.onmessage = (e: MessageEvent<{ seq: number; layout: Layout }>) => {
      if (e.data.seq === seq.current) setResult(e.data.layout);
    };
    return () => {
      w.terminate();
      worker.current = null;
    };
  }, []);
  const expandedKey = JSON.stringify(expanded);
  useEffect(() => {
    seq.current += 1;
    if (worker.current) {
      worker.current.postMessage({ seq: seq.current, steps: shape, expanded });
    } else {
      setResult(layoutNow(shape, expanded));
    }
    // The shape's key and the expanded groups are what the layout depends on.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [shapeKey, expandedKey]);
  return result;
}

export function Dag({
  steps,
  focus,
  onSelect,
}: {
  steps: Step[];
  focus: string;
  onSelect: (step: string) => void;
}) {
  const shapeKey = steps.map((s) => `${s.name}<${s.inputs.join(',')}`).join(';');
  const shape = useMemo(
    () => steps.map((s) => ({ name: s.name, inputs: s.inputs, order: s.step_order })),
    // Only the shape matters, not the states.
    // eslint-disable-next-line react-hooks/exhaustive-deps
    [shapeKey],
  );
  const [expanded, setExpanded] = useState<Record<string, number>>({});
  const lay = useLayout(shape, shapeKey, expanded);

  // Nodes are state, updated in place: each keeps what React Flow measured of it (a node
  // object made afresh would be hidden until measured again).
  const [nodes, setNodes, onNodesChange] = useNodesState<DagNode>([]);
  useEffect(() => {
    if (!lay) return;
    const byName = new Map(steps.map((s) => [s.name, s]));
    const onExpand = (id: string) =>
      setExpanded((e) => ({ ...e, [id]: (e[id] ?? 0) + EXPAND_STEP }));
    setNodes((old) => {
      const prev = new Map(old.map((n) => [n.id, n]));
      return lay.nodes.map((ln): DagNode => {
        const position = { x: ln.x, y: ln.y };
        const p = prev.get(ln.id);
        if (ln.kind === 'group') {
          const members = ln.members.map((m) => byName.get(m)).filter((s): s is Step => !!s);
          const status = groupStatus(members);
          const data: GroupNodeData = {
            id: ln.id,
            steps: members,
            status,
            focused: ln.members.includes(focus),
            onExpand,
          };
          const ariaLabel = `${members.length} steps, ${counts(members)}`;
          if (p && p.type === 'group') return { ...p, data, ariaLabel, position };
          return {
            id: ln.id,
            type: 'group',
            position,
            data,
            ariaLabel,
            draggable: false,
            connectable: false,
          };
        }
        const step = byName.get(ln.id);
        const data: StepNodeData = {
          step: step ?? ({ name: ln.id, inputs: [], status: '', kind: '' } as unknown as Step),
          focused: ln.id === focus,
        };
        const ariaLabel = `Step ${ln.id}: ${statusStyle(step?.status ?? '').label}`;
        if (p && p.type === 'step') return { ...p, data, ariaLabel, position };
        return {
          id: ln.id,
          type: 'step',
          position,
          data,
          ariaLabel,
          draggable: false,
          connectable: false,
        };
      });
    });
  }, [lay, steps, focus, setNodes]);

  const running = useMemo(
    () => new Set(steps.filter((s) => s.status === 'running').map((s) => s.name)),
    [steps],
  );
  const edges: Edge[] = useMemo(
    () =>
      (lay?.edges ?? []).map((e) => ({
        id: e.id,
        source: e.source,
        target: e.target,
        animated: running.has(e.target),
        markerEnd: { type: MarkerType.ArrowClosed },
      })),
    [lay, running],
  );

  return (
    <div
      className="dag"
      data-testid="dag"
      data-laid-out={lay ? 'yes' : 'no'}
      data-nodes={lay?.nodes.length ?? 0}
    >
      {Object.keys(expanded).length > 0 && (
        <button type="button" className="dag-collapse" onClick={() => setExpanded({})}>
          Collapse fan-outs
        </button>
      )}
      <ReactFlow
        nodes={nodes}
        edges={edges}
        onNodesChange={onNodesChange}
        nodeTypes={nodeTypes}
        fitView
        fitViewOptions={{ padding: 0.2, maxZoom: 1.2 }}
        onlyRenderVisibleElements
        nodesDraggable={false}
        nodesConnectable={false}
        elementsSelectable
        onNodeClick={(_, n) => {
          if (n.type === 'step') onSelect(n.id);
        }}
        onSelectionChange={({ nodes: sel }) => {
          if (sel.length === 1 && sel[0].type === 'step' && sel[0].id !== focus) onSelect(sel[0].id);
        }}
        minZoom={0.05}
        aria-label="Workflow steps"
      >
        <Background gap={16} />
        <Controls showInteractive={false} />
      </ReactFlow>
    </div>
  );
}
