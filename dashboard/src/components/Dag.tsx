// The task's DAG: one node per step, placed in columns by depth (a step sits one column
// right of its deepest input), edges from inputs. Each node shows its state as an icon and
// a word besides its colour.
import { memo, useEffect, useMemo } from 'react';
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
import { StatusIcon, statusStyle } from '../status';
import { progressPercent } from './progress';

const COL = 250;
const ROW = 110;

type StepNodeData = { step: Step; focused: boolean };
type StepNodeType = Node<StepNodeData, 'step'>;

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

const nodeTypes = { step: StepNode };

/** Column of each step: 0 for steps without inputs, else one more than its deepest input. */
export function layers(steps: Step[]): Map<string, number> {
  const byName = new Map(steps.map((s) => [s.name, s]));
  const depth = new Map<string, number>();
  const visiting = new Set<string>();
  const visit = (name: string): number => {
    const known = depth.get(name);
    if (known !== undefined) return known;
    if (visiting.has(name)) return 0; // a cycle cannot be stored; stay finite anyway
    visiting.add(name);
    const step = byName.get(name);
    let d = 0;
    for (const input of step?.inputs ?? []) {
      if (byName.has(input)) d = Math.max(d, visit(input) + 1);
    }
    visiting.delete(name);
    depth.set(name, d);
    return d;
  };
  steps.forEach((s) => visit(s.name));
  return depth;
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
  const shape = steps.map((s) => `${s.name}<${s.inputs.join(',')}`).join(';');
  const positions = useMemo(() => {
    const depth = layers(steps);
    const rows = new Map<number, number>();
    const pos = new Map<string, { x: number; y: number }>();
    [...steps]
      .sort((a, b) => a.step_order - b.step_order)
      .forEach((s) => {
        const col = depth.get(s.name) ?? 0;
        const row = rows.get(col) ?? 0;
        rows.set(col, row + 1);
        pos.set(s.name, { x: col * COL, y: row * ROW });
      });
    return pos;
    // The layout changes only with the DAG's shape, not with states.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [shape]);

  // Nodes are state, updated in place: each keeps what React Flow measured of it (a node
  // object made afresh would be hidden until measured again).
  const [nodes, setNodes, onNodesChange] = useNodesState<StepNodeType>([]);
  useEffect(() => {
    setNodes((old) => {
      const prev = new Map(old.map((n) => [n.id, n]));
      return steps.map((s) => {
        const data = { step: s, focused: s.name === focus };
        const ariaLabel = `Step ${s.name}: ${statusStyle(s.status).label}`;
        const position = positions.get(s.name) ?? { x: 0, y: 0 };
        const p = prev.get(s.name);
        if (p) return { ...p, data, ariaLabel, position };
        return {
          id: s.name,
          type: 'step' as const,
          position,
          data,
          ariaLabel,
          draggable: false,
          connectable: false,
        };
      });
    });
  }, [steps, focus, positions, setNodes]);
  const running = new Set(steps.filter((s) => s.status === 'running').map((s) => s.name));
  const edges: Edge[] = steps.flatMap((s) =>
    s.inputs
      .filter((i) => positions.has(i))
      .map((i) => ({
        id: `${i}->${s.name}`,
        source: i,
        target: s.name,
        animated: running.has(s.name),
        markerEnd: { type: MarkerType.ArrowClosed },
      })),
  );

  return (
    <div className="dag" data-testid="dag">
      <ReactFlow
        nodes={nodes}
        edges={edges}
        onNodesChange={onNodesChange}
        nodeTypes={nodeTypes}
        fitView
        fitViewOptions={{ padding: 0.2, maxZoom: 1.2 }}
        nodesDraggable={false}
        nodesConnectable={false}
        elementsSelectable
        onNodeClick={(_, n) => onSelect(n.id)}
        onSelectionChange={({ nodes: sel }) => {
          if (sel.length === 1 && sel[0].id !== focus) onSelect(sel[0].id);
        }}
        minZoom={0.2}
        aria-label="Workflow steps"
      >
        <Background gap={16} />
        <Controls showInteractive={false} />
      </ReactFlow>
    </div>
  );
}
