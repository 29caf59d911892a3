// The DAG's layout, a pure function of its shape (run in a worker, off the main thread):
// columns by depth (a step sits one column right of its deepest input), and fan-outs
// collapsed: more than FANOUT_LIMIT steps in one column with the same inputs become one
// group node, which the user opens EXPAND_STEP steps at a time, so a run of thousands of
// steps stays readable and the graph drawn stays small.

export const COL = 250;
export const ROW = 110;
export const FANOUT_LIMIT = 12;
export const EXPAND_STEP = 50;

export interface ShapeStep {
  name: string;
  inputs: string[];
  order: number;
}

export interface LayoutNode {
  id: string;
  /** A step's name, or a group of steps (`members`). */
  kind: 'step' | 'group';
  members: string[];
  x: number;
  y: number;
}

export interface LayoutEdge {
  id: string;
  source: string;
  target: string;
}

export interface Layout {
  nodes: LayoutNode[];
  edges: LayoutEdge[];
  /** Node id of each step (its own, or its group's). */
  nodeOf: Record<string, string>;
}

/** Column of each step: 0 for steps without inputs, else one more than its deepest input. */
export function depths(steps: ShapeStep[]): Map<string, number> {
  const byName = new Map(steps.map((s) => [s.name, s]));
  const depth = new Map<string, number>();
  for (const s of steps) {
    if (depth.has(s.name)) continue;
    // Iterative depth-first walk: a long chain must not overflow the stack.
    const stack: { name: string; next: number }[] = [{ name: s.name, next: 0 }];
    const onStack = new Set([s.name]);
    while (stack.length > 0) {
      const top = stack[stack.length - 1];
      const inputs = byName.get(top.name)?.inputs ?? [];
      if (top.next < inputs.length) {
        const input = inputs[top.next++];
        if (byName.has(input) && !depth.has(input) && !onStack.has(input)) {
          stack.push({ name: input, next: 0 });
          onStack.add(input);
        }
        continue;
      }
      let d = 0;
      for (const input of inputs) {
        const di = depth.get(input);
        if (di !== undefined) d = Math.max(d, di + 1);
      }
      depth.set(top.name, d);
      onStack.delete(top.name);
      stack.pop();
    }
  }
  return depth;
}

export function groupId(depth: number, inputs: string[]): string {
  return `group:${depth}:${[...inputs].sort().join(',')}`;
}

/** `expanded`: how many of each group's steps are shown on their own, by group id. */
export function layout(steps: ShapeStep[], expanded: Record<string, number>): Layout {
  const depth = depths(steps);
  const sorted = [...steps].sort((a, b) => a.order - b.order);
  // Siblings: same column, same inputs.
  const siblings = new Map<string, string[]>();
  for (const s of sorted) {
    const key = groupId(depth.get(s.name) ?? 0, s.inputs);
    const list = siblings.get(key);
    if (list) list.push(s.name);
    else siblings.set(key, [s.name]);
  }
  const nodeOf: Record<string, string> = {};
  const nodes: LayoutNode[] = [];
  const rows = new Map<number, number>();
  const place = (col: number) => {
    const row = rows.get(col) ?? 0;
    rows.set(col, row + 1);
    return { x: col * COL, y: row * ROW };
  };
  const placedGroups = new Set<string>();
  for (const s of sorted) {
    const col = depth.get(s.name) ?? 0;
    const key = groupId(col, s.inputs);
    const members = siblings.get(key) ?? [s.name];
    const open = Math.max(0, expanded[key] ?? 0);
    const big = members.length > FANOUT_LIMIT;
    // The group keeps its place at the top of its fan-out; opened steps go below it.
    if (big && open < members.length && !placedGroups.has(key)) {
      placedGroups.add(key);
      nodes.push({ id: key, kind: 'group', members: members.slice(open), ...place(col) });
    }
    if (big && members.indexOf(s.name) >= open) {
      nodeOf[s.name] = key;
    } else {
      nodeOf[s.name] = s.name;
      nodes.push({ id: s.name, kind: 'step', members: [s.name], ...place(col) });
    }
  }
  const seen = new Set<string>();
  const edges: LayoutEdge[] = [];
  for (const s of sorted) {
    const target = nodeOf[s.name];
    for (const i of s.inputs) {
      const source = nodeOf[i];
      if (source === undefined || source === target) continue;
      const id = `${source}->${target}`;
      if (seen.has(id)) continue;
      seen.add(id);
      edges.push({ id, source, target });
    }
  }
  return { nodes, edges, nodeOf };
}
