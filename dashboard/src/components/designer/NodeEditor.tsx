// The selected node's settings: name, agent, image or program and arguments, environment
// and interfaces. Saving sends what changed as a JSON merge patch (PATCH .../nodes/NAME);
// the connect form is the keyboard's way to draw a connection from this node.
import { useEffect, useId, useMemo, useState, type FormEvent } from 'react';
import type { Agent } from '../../api';
import { joinWords, splitWords } from './args';
import { describeEnd } from './GraphCanvas';
import {
  INTERFACE_TYPES,
  MOUNT_FUNCTIONS,
  type ConnectionDef,
  type Endpoint,
  type InterfaceDef,
  type NodeDef,
} from './graphApi';
import type { Problem } from './problems';

interface Draft {
  name: string;
  agent: string;
  image: string;
  entrypoint: string;
  cmd: string;
  env: string;
  interfaces: InterfaceDef[];
}

function toDraft(n: NodeDef): Draft {
  return {
    name: n.name,
    agent: n.agent,
    image: n.image ?? '',
    entrypoint: joinWords(n.entrypoint),
    cmd: joinWords(n.cmd),
    env: Object.entries(n.env ?? {})
      .map(([k, v]) => `${k}=${v}`)
      .join('\n'),
    interfaces: (n.interfaces ?? []).map((i) => ({ ...i })),
  };
}

function parseEnv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') return;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new Error(`environment line ${i + 1} is not NAME=VALUE`);
    env[line.slice(0, eq).trim()] = line.slice(eq + 1);
  });
  return env;
}

function cleanInterface(i: InterfaceDef): InterfaceDef {
  const out: InterfaceDef = { type: i.type };
  if (i.path && i.path.trim()) out.path = i.path.trim();
  if (i.type === 'MOUNT' && i.mount_function) out.mount_function = i.mount_function;
  return out;
}

const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

/** What changed, as a JSON merge patch; throws on a field that cannot be read. */
function patchOf(n: NodeDef, d: Draft): Record<string, unknown> {
  const p: Record<string, unknown> = {};
  if (d.name.trim() !== n.name) p.name = d.name.trim();
  if (d.agent !== n.agent) p.agent = d.agent;
  const image = d.image.trim();
  if (image !== (n.image ?? '')) p.image = image || null;
  const entrypoint = splitWords(d.entrypoint);
  if (!same(entrypoint, n.entrypoint ?? [])) p.entrypoint = entrypoint;
  const cmd = splitWords(d.cmd);
  if (!same(cmd, n.cmd ?? [])) p.cmd = cmd;
  // Only changed names: a secret's value comes back masked and must not be sent back.
  const env = parseEnv(d.env);
  const old = n.env ?? {};
  const envPatch: Record<string, string | null> = {};
  for (const [k, v] of Object.entries(env)) if (old[k] !== v) envPatch[k] = v;
  for (const k of Object.keys(old)) if (!(k in env)) envPatch[k] = null;
  if (Object.keys(envPatch).length > 0) p.env = envPatch;
  const interfaces = d.interfaces.map(cleanInterface);
  if (!same(interfaces, (n.interfaces ?? []).map(cleanInterface))) p.interfaces = interfaces;
  return p;
}

export function NodeEditor({
  node,
  nodes,
  connections,
  agents,
  problems,
  editable,
  busy,
  onSave,
  onRemove,
  onConnect,
  onSelectConnection,
}: {
  node: NodeDef;
  nodes: NodeDef[];
  connections: ConnectionDef[];
  agents: Agent[];
  problems: Problem[];
  editable: boolean;
  busy: boolean;
  onSave: (patch: Record<string, unknown>) => Promise<boolean>;
  onRemove: () => void;
  onConnect: (c: ConnectionDef) => void;
  onSelectConnection: (index: number) => void;
}) {
  const uid = useId();
  const [draft, setDraft] = useState(() => toDraft(node));
  const [formError, setFormError] = useState<string | null>(null);
  const [confirmRemove, setConfirmRemove] = useState(false);
  // A new node, or this one changed on the server: the form shows it afresh.
  const stored = JSON.stringify(node);
  useEffect(() => {
    setDraft(toDraft(JSON.parse(stored) as NodeDef));
    setFormError(null);
    setConfirmRemove(false);
  }, [stored]);

  const set = <K extends keyof Draft>(k: K, v: Draft[K]) => setDraft((d) => ({ ...d, [k]: v }));
  const setIface = (i: number, v: Partial<InterfaceDef>) =>
    setDraft((d) => ({
      ...d,
      interfaces: d.interfaces.map((x, j) => (j === i ? { ...x, ...v } : x)),
    }));

  let patch: Record<string, unknown> | null = null;
  let parseError: string | null = null;
  try {
    patch = patchOf(node, draft);
  } catch (e) {
    parseError = e instanceof Error ? e.message : String(e);
  }
  const dirty = patch !== null && Object.keys(patch).length > 0;

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!patch) {
      setFormError(parseError);
      return;
    }
    if (!dirty) return;
    setFormError(null);
    await onSave(patch);
  };

  const t = node.service_type;
  const agentNames = agents.map((a) => a.name);
  const touching = connections
    .map((c, index) => ({ c, index }))
    .filter(({ c }) => c.from.node === node.name || c.to.node === node.name);

  return (
    <section className="node-editor" aria-labelledby={`${uid}-h`} data-testid="node-editor">
      <h2 id={`${uid}-h`}>
        {t} node <code>{node.name}</code>
      </h2>
      {problems.length > 0 && (
        <ul className="problem-list" aria-label={`Problems of node ${node.name}`}>
          {problems.map((p, i) => (
            <li key={i}>
              <span aria-hidden="true">⚠ </span>
              {p.text}
              {p.build ? ' (from the last build)' : ''}
            </li>
          ))}
        </ul>
      )}
      <form onSubmit={submit}>
        <fieldset disabled={!editable || busy}>
          <label>
            Node name
            <input value={draft.name} onChange={(e) => set('name', e.target.value)} required />
          </label>
          <label>
            Agent
            <select value={draft.agent} onChange={(e) => set('agent', e.target.value)}>
              <option value="">— choose an agent —</option>
              {agents.map((a) => (
                <option key={a.name} value={a.name}>
                  {a.name}
                  {a.connected ? '' : ' (not connected)'}
                </option>
              ))}
              {draft.agent && !agentNames.includes(draft.agent) && (
                <option value={draft.agent}>{draft.agent} (unknown)</option>
              )}
            </select>
          </label>
          {(t === 'DOCKER' || node.image) && (
            <label>
              Image
              <input
                value={draft.image}
                onChange={(e) => set('image', e.target.value)}
                placeholder="localhost/ferry-score:1"
              />
            </label>
          )}
          {t !== 'DATA' && (
            <>
              <label>
                {t === 'STANDALONE' ? 'Program and arguments (entrypoint)' : 'Entrypoint'}
                <input
                  value={draft.entrypoint}
                  onChange={(e) => set('entrypoint', e.target.value)}
                  placeholder={t === 'STANDALONE' ? "sh -c 'wc -l'" : 'python3'}
                  spellCheck={false}
                />
              </label>
              <label>
                Command (cmd)
                <input
                  value={draft.cmd}
                  onChange={(e) => set('cmd', e.target.value)}
                  placeholder="train.py --epochs 10"
                  spellCheck={false}
                />
              </label>
              <p className="hint">Words as in a shell line; quote a word with spaces.</p>
              <label>
                Environment (NAME=VALUE, one a line)
                <textarea
                  rows={3}
                  value={draft.env}
                  onChange={(e) => set('env', e.target.value)}
                  spellCheck={false}
                />
              </label>
              {(node.secret_env ?? []).length > 0 && (
                <p className="hint">Secret values ({node.secret_env?.join(', ')}) are shown masked.</p>
              )}
            </>
          )}
          <fieldset className="interfaces">
            <legend>Interfaces</legend>
            {draft.interfaces.length === 0 && <p className="hint">No interfaces.</p>}
            {draft.interfaces.map((i, n) => (
              <div className="iface-row" key={n} data-testid={`interface-${n + 1}`}>
                <select
                  aria-label={`Interface ${n + 1} type`}
                  value={i.type}
                  onChange={(e) => setIface(n, { type: e.target.value })}
                >
                  {INTERFACE_TYPES.map((x) => (
                    <option key={x}>{x}</option>
                  ))}
                  {!(INTERFACE_TYPES as readonly string[]).includes(i.type) && <option>{i.type}</option>}
                </select>
                <input
                  aria-label={`Interface ${n + 1} path`}
                  value={i.path ?? ''}
                  onChange={(e) => setIface(n, { path: e.target.value })}
                  placeholder={i.type === 'MOUNT' ? '/input/' : t === 'DATA' ? '/data/file.csv' : 'path'}
                  spellCheck={false}
                />
                {i.type === 'MOUNT' && (
                  <select
                    aria-label={`Interface ${n + 1} mount function`}
                    value={i.mount_function ?? ''}
                    onChange={(e) => setIface(n, { mount_function: e.target.value || undefined })}
                  >
                    <option value="">(any)</option>
                    {MOUNT_FUNCTIONS.map((x) => (
                      <option key={x}>{x}</option>
                    ))}
                  </select>
                )}
                {editable && (
                  <button
                    type="button"
                    aria-label={`Remove interface ${n + 1}`}
                    onClick={() =>
                      setDraft((d) => ({
                        ...d,
                        interfaces: d.interfaces.filter((_, j) => j !== n),
                      }))
                    }
                  >
                    ✕
                  </button>
                )}
              </div>
            ))}
            {editable && (
              <button
                type="button"
                onClick={() =>
                  setDraft((d) => ({
                    ...d,
                    interfaces: [...d.interfaces, { type: t === 'DATA' ? 'STDOUT' : 'MOUNT' }],
                  }))
                }
              >
                Add interface
              </button>
            )}
            <p className="hint">
              MOUNT function: OUTPUT = the peer sends to this job (an input), INPUT = the peer
              receives from it (an output).
            </p>
          </fieldset>
          {(formError || parseError) && (
            <p className="error" role="alert">
              {formError ?? parseError}
            </p>
          )}
          {editable && (
            <div className="buttons">
              <button type="submit" className="primary" disabled={!dirty || !!parseError}>
                Save node
              </button>
              <button type="button" disabled={!dirty} onClick={() => setDraft(toDraft(node))}>
                Undo changes
              </button>
            </div>
          )}
        </fieldset>
      </form>
      {editable && (
        <ConnectForm node={node} nodes={nodes} onConnect={onConnect} busy={busy} />
      )}
      {touching.length > 0 && (
        <>
          <h3>Connections</h3>
          <ul className="conn-list">
            {touching.map(({ c, index }) => (
              <li key={index}>
                <button type="button" className="linklike" onClick={() => onSelectConnection(index)}>
                  #{index} {describeEnd(c.from)} → {describeEnd(c.to)}
                </button>
              </li>
            ))}
          </ul>
        </>
      )}
      {editable &&
        (confirmRemove ? (
          <p className="confirm">
            Remove node {node.name} and its connections?{' '}
            <button type="button" className="danger" onClick={onRemove} disabled={busy}>
              Yes, remove it
            </button>{' '}
            <button type="button" onClick={() => setConfirmRemove(false)}>
              No
            </button>
          </p>
        ) : (
          <p>
            <button type="button" className="danger" onClick={() => setConfirmRemove(true)}>
              Remove node…
            </button>
          </p>
        ))}
    </section>
  );
}

/** Endpoints by a `<select>` value. */
function endValue(e: Endpoint): string {
  return JSON.stringify(e);
}

function outputsOf(n: NodeDef): Endpoint[] {
  const out: Endpoint[] = [];
  const seen = new Set<string>();
  for (const i of n.interfaces ?? []) {
    const e: Endpoint =
      i.type === 'MOUNT' ? { node: n.name, interface: 'MOUNT', path: i.path } : { node: n.name, interface: i.type };
    const k = endValue(e);
    if (i.type === 'STDIN' || seen.has(k)) continue;
    if (i.type === 'MOUNT' && i.mount_function === 'OUTPUT') continue;
    seen.add(k);
    out.push(e);
  }
  return out;
}

function inputsOf(n: NodeDef): Endpoint[] {
  const out: Endpoint[] = [];
  for (const i of n.interfaces ?? []) {
    if (i.type === 'STDIN') out.push({ node: n.name, interface: 'STDIN' });
    if (i.type === 'MOUNT' && i.mount_function !== 'INPUT') {
      out.push({ node: n.name, interface: 'MOUNT', path: i.path });
    }
  }
  return out;
}

/** The keyboard's way to draw a connection: one of this node's outputs to an input. */
function ConnectForm({
  node,
  nodes,
  onConnect,
  busy,
}: {
  node: NodeDef;
  nodes: NodeDef[];
  onConnect: (c: ConnectionDef) => void;
  busy: boolean;
}) {
  const uid = useId();
  const outputs = useMemo(() => outputsOf(node), [node]);
  const targets = useMemo(
    () => [{ interface: 'STDOUT' } as Endpoint, ...nodes.filter((n) => n.name !== node.name).flatMap(inputsOf)],
    [nodes, node.name],
  );
  const [from, setFrom] = useState('');
  const [to, setTo] = useState('');
  const [fileName, setFileName] = useState('');
  const fromValue = from || (outputs[0] ? endValue(outputs[0]) : '');
  const toValue = to || endValue(targets[0]);
  if (outputs.length === 0) return null;
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const c: ConnectionDef = { from: JSON.parse(fromValue) as Endpoint, to: JSON.parse(toValue) as Endpoint };
    if (fileName.trim()) c.destination_file_name = fileName.trim();
    onConnect(c);
    setFileName('');
  };
  return (
    <form className="connect-form" onSubmit={submit} aria-labelledby={`${uid}-h`}>
      <h3 id={`${uid}-h`}>Connect an output</h3>
      <label htmlFor={`${uid}-from`}>From</label>
      <select id={`${uid}-from`} value={fromValue} onChange={(e) => setFrom(e.target.value)}>
        {outputs.map((o) => (
          <option key={endValue(o)} value={endValue(o)}>
            {describeEnd(o)}
          </option>
        ))}
      </select>
      <label htmlFor={`${uid}-to`}>To</label>
      <select id={`${uid}-to`} value={toValue} onChange={(e) => setTo(e.target.value)}>
        {targets.map((o) => (
          <option key={endValue(o)} value={endValue(o)}>
            {describeEnd(o)}
          </option>
        ))}
      </select>
      <label>
        Destination file name (optional)
        <input value={fileName} onChange={(e) => setFileName(e.target.value)} spellCheck={false} />
      </label>
      <button type="submit" disabled={busy}>
        Connect
      </button>
    </form>
  );
}
