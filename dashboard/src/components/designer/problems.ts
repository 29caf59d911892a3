// The coordinator's validation messages (crates/ferry-core/src/graph.rs, GraphProblem and
// GraphPlanError) name what they are about: "node `NAME`: …" or "connection #INDEX FROM →
// TO: …". They are sorted here onto the node or connection they name, so the canvas can
// show each one where it belongs; the rest stay graph-wide.

export interface Problem {
  /** The message as the coordinator wrote it. */
  message: string;
  /** The part after the node or connection it names. */
  text: string;
  node?: string;
  connection?: number;
  /** Nodes a cycle runs through. */
  cycle?: string[];
  /** From a refused build (the agents), not from the stored graph's validation. */
  build?: boolean;
}

export interface Problems {
  all: Problem[];
  byNode: Map<string, Problem[]>;
  byConnection: Map<number, Problem[]>;
}

const NODE = /^node `([^`]+)`: (.*)$/s;
const CONNECTION = /^connection #(\d+) [^:]*: (.*)$/s;
const DUPLICATE = /^node name `([^`]+)` is used twice$/;
const CYCLE = /^connections form a cycle: (.*)$/;

export function parseProblem(message: string, build = false): Problem {
  let m = message.match(NODE);
  if (m) return { message, text: m[2], node: m[1], build };
  m = message.match(CONNECTION);
  if (m) return { message, text: m[2], connection: Number(m[1]), build };
  m = message.match(DUPLICATE);
  if (m) return { message, text: message, node: m[1], build };
  m = message.match(CYCLE);
  if (m) return { message, text: message, cycle: m[1].split(' → '), build };
  return { message, text: message, build };
}

/** A refused build's message: "invalid workflow: A; B" (validation), or one plan error. */
export function buildProblems(message: string): Problem[] {
  const at = message.indexOf('invalid workflow: ');
  if (at < 0) return [parseProblem(message.trim(), true)];
  return splitProblems(message.slice(at + 'invalid workflow: '.length)).map((p) =>
    parseProblem(p, true),
  );
}

/** Splits "A; B; C" where a part may itself hold "; " (no part starts with a lower-case
 * continuation of another: each starts "node", "connection" or "workflow"). */
function splitProblems(text: string): string[] {
  const parts: string[] = [];
  for (const piece of text.split('; ')) {
    if (parts.length > 0 && !/^(node|connection|workflow)\b/.test(piece)) {
      parts[parts.length - 1] += `; ${piece}`;
    } else {
      parts.push(piece);
    }
  }
  return parts;
}

export function sortProblems(list: Problem[]): Problems {
  const byNode = new Map<string, Problem[]>();
  const byConnection = new Map<number, Problem[]>();
  const add = <K,>(map: Map<K, Problem[]>, key: K, p: Problem) => {
    const l = map.get(key);
    if (l) l.push(p);
    else map.set(key, [p]);
  };
  for (const p of list) {
    if (p.node !== undefined) add(byNode, p.node, p);
    if (p.connection !== undefined) add(byConnection, p.connection, p);
    for (const n of new Set(p.cycle ?? [])) add(byNode, n, p);
  }
  return { all: list, byNode, byConnection };
}
