// Seed 003's workflow designer: the stored graphs (/designer) and one graph on a canvas
// (/designer/NAME). Every edit goes to the coordinator's graph API, whose answer (the graph
// and what validation finds now) is what the page shows; problems are drawn on the node or
// connection they name. Authors edit and build, operators execute, everyone else reads.
import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import { ReactFlowProvider } from '@xyflow/react';
import { api, ApiError, hasRole, type Agent } from '../api';
import { ConnectionEditor } from '../components/designer/ConnectionEditor';
import { describeEnd, GraphCanvas, type Selection } from '../components/designer/GraphCanvas';
import {
  graphApi,
  type CanvasState,
  type ConnectionDef,
  type GraphView,
  type NodeDef,
} from '../components/designer/graphApi';
import { NodeEditor } from '../components/designer/NodeEditor';
import { Palette } from '../components/designer/Palette';
import { buildProblems, parseProblem, sortProblems, type Problem } from '../components/designer/problems';
import '../components/designer/designer.css';
import { formatTime } from '../format';
import { Link, navigate } from '../router';
import { useSession } from '../session';

const message = (e: unknown) => (e instanceof ApiError ? e.message : String(e));

export function DesignerPage({ name }: { name?: string }) {
  if (!name) return <GraphList />;
  return <GraphEditor key={name} name={name} />;
}

function GraphList() {
  const { me } = useSession();
  const canEdit = hasRole(me, 'author');
  const [graphs, setGraphs] = useState<GraphView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [newName, setNewName] = useState('');
  const [description, setDescription] = useState('');
  const [busy, setBusy] = useState(false);
  const [confirm, setConfirm] = useState<string | null>(null);

  const load = useCallback(async () => {
    try {
      setGraphs((await graphApi.list()).graphs);
      setError(null);
    } catch (e) {
      setError(message(e));
    }
  }, []);
  useEffect(() => {
    void load();
  }, [load]);

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    try {
      const g = await graphApi.create(newName.trim(), description.trim());
      navigate(`/designer/${encodeURIComponent(g.name)}`);
    } catch (err) {
      setError(message(err));
    } finally {
      setBusy(false);
    }
  };
  const remove = async (n: string) => {
    setBusy(true);
    try {
      await graphApi.remove(n);
      setConfirm(null);
      await load();
    } catch (err) {
      setError(message(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="page">
      <h1>Designer</h1>
      <p className="hint">
        Workflows as graphs: DATA, DOCKER and STANDALONE nodes on agents, their interfaces
        connected to each other or to the coordinator for download.
      </p>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {canEdit && (
        <form className="filters" onSubmit={create} aria-label="New graph">
          <label>
            Graph name
            <input
              value={newName}
              onChange={(e) => setNewName(e.target.value)}
              pattern="[A-Za-z0-9_.\-]{1,100}"
              title="1-100 letters, digits, '_', '-' or '.'"
              required
            />
          </label>
          <label>
            Description
            <input value={description} onChange={(e) => setDescription(e.target.value)} />
          </label>
          <button type="submit" className="primary" disabled={busy}>
            Create graph
          </button>
        </form>
      )}
      {graphs === null ? (
        !error && <p>Loading…</p>
      ) : graphs.length === 0 ? (
        <p>No graph yet.{canEdit ? ' Create one above.' : ''}</p>
      ) : (
        <div className="table-wrap">
          <table data-testid="graphs">
            <thead>
              <tr>
                <th scope="col">Graph</th>
                <th scope="col">Nodes</th>
                <th scope="col">Connections</th>
                <th scope="col">Validation</th>
                <th scope="col">Updated</th>
                {canEdit && <th scope="col">Actions</th>}
              </tr>
            </thead>
            <tbody>
              {graphs.map((g) => (
                <tr key={g.name}>
                  <th scope="row">
                    <Link href={`/designer/${encodeURIComponent(g.name)}`}>{g.name}</Link>
                    {g.definition.description && (
                      <div className="reason">{g.definition.description}</div>
                    )}
                  </th>
                  <td className="num">{g.definition.nodes?.length ?? 0}</td>
                  <td className="num">{g.definition.connections?.length ?? 0}</td>
                  <td>
                    {g.problems.length === 0 ? (
                      <span className="badge tone-good">✓ Ready</span>
                    ) : (
                      <span className="badge tone-bad">
                        ⚠ {g.problems.length} problem{g.problems.length === 1 ? '' : 's'}
                      </span>
                    )}
                  </td>
                  <td>{formatTime(g.updated_at)}</td>
                  {canEdit && (
                    <td>
                      {confirm === g.name ? (
                        <span className="confirm">
                          Delete {g.name}?{' '}
                          <button
                            type="button"
                            className="danger"
                            disabled={busy}
                            onClick={() => remove(g.name)}
                          >
                            Yes, delete
                          </button>{' '}
                          <button type="button" onClick={() => setConfirm(null)}>
                            No
                          </button>
                        </span>
                      ) : (
                        <button
                          type="button"
                          className="danger"
                          onClick={() => setConfirm(g.name)}
                          aria-label={`Delete graph ${g.name}`}
                        >
                          Delete…
                        </button>
                      )}
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </main>
  );
}

function defaultNode(type: string, name: string, agent: string, x: number, y: number): NodeDef {
  const interfaces =
    type === 'DATA' ? [{ type: 'STDOUT' }] : [{ type: 'STDIN' }, { type: 'STDOUT' }];
  return { name, service_type: type, agent, interfaces, gui_x: Math.round(x), gui_y: Math.round(y) };
}

function GraphEditor({ name }: { name: string }) {
  const { me } = useSession();
  const canEdit = hasRole(me, 'author');
  const canRun = hasRole(me, 'operator');
  const [graph, setGraph] = useState<GraphView | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [agents, setAgents] = useState<Agent[]>([]);
  const [selection, setSelection] = useState<Selection>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [status, setStatus] = useState('');
  const [fromBuild, setFromBuild] = useState<Problem[]>([]);
  const placeRef = useRef<(() => { x: number; y: number }) | null>(null);

  useEffect(() => {
    graphApi
      .get(name)
      .then(setGraph)
      .catch((e) => setLoadError(message(e)));
    api
      .agents()
      .then((a) => setAgents(a.agents))
      .catch(() => setAgents([]));
  }, [name]);

  /** Runs one edit; the server's answer becomes the page's graph. */
  const edit = useCallback(
    async (f: () => Promise<GraphView>, done?: string): Promise<boolean> => {
      setBusy(true);
      setError(null);
      try {
        const g = await f();
        setGraph(g);
        setFromBuild([]);
        setStatus(
          `${done ?? 'Saved'}. ${g.problems.length === 0 ? 'No problems.' : `${g.problems.length} problem${g.problems.length === 1 ? '' : 's'}.`}`,
        );
        return true;
      } catch (e) {
        setError(message(e));
        return false;
      } finally {
        setBusy(false);
      }
    },
    [],
  );

  const defs = graph?.definition.nodes ?? [];
  const connections = graph?.definition.connections ?? [];

  const addNode = useCallback(
    async (type: string, x?: number, y?: number) => {
      if (!graph) return;
      const taken = new Set((graph.definition.nodes ?? []).map((n) => n.name));
      let i = 1;
      while (taken.has(`${type.toLowerCase()}-${i}`)) i += 1;
      const nodeName = `${type.toLowerCase()}-${i}`;
      const at = x !== undefined && y !== undefined ? { x, y } : placeRef.current?.() ?? { x: 0, y: 0 };
      const agent = agents.find((a) => a.connected)?.name ?? agents[0]?.name ?? '';
      const ok = await edit(
        () => graphApi.addNode(name, defaultNode(type, nodeName, agent, at.x, at.y)),
        `Added ${type} node ${nodeName}`,
      );
      if (ok) setSelection({ kind: 'node', name: nodeName });
    },
    [graph, agents, edit, name],
  );

  const connect = useCallback(
    (c: ConnectionDef) =>
      void edit(
        () => graphApi.addConnection(name, c),
        `Connected ${describeEnd(c.from)} to ${describeEnd(c.to)}`,
      ).then((ok) => {
        if (ok) setSelection({ kind: 'connection', index: connections.length });
      }),
    [edit, name, connections.length],
  );

  const saveCanvas = useCallback(
    (c: CanvasState) => {
      if (!canEdit) return;
      graphApi.saveCanvas(name, c).catch((e) => setError(`The view was not saved: ${message(e)}`));
    },
    [canEdit, name],
  );

  const build = async () => {
    setBusy(true);
    setError(null);
    try {
      const wf = await graphApi.build(name);
      setFromBuild([]);
      const steps = wf.definition?.steps?.length;
      setStatus(`Built workflow ${wf.name}${steps ? ` (${steps} steps)` : ''}. It can be executed.`);
    } catch (e) {
      const m = message(e);
      setFromBuild(buildProblems(m));
      setError(`Build refused: ${m}`);
    } finally {
      setBusy(false);
    }
  };

  const execute = async () => {
    setBusy(true);
    setError(null);
    try {
      const task = await graphApi.execute(name);
      navigate(`/runs/${task.task_id}`);
    } catch (e) {
      const m = message(e);
      setFromBuild(buildProblems(m));
      setError(`Not executed: ${m}`);
      setBusy(false);
    }
  };

  if (!graph) {
    return (
      <main className="page">
        <p>
          <Link href="/designer">← Graphs</Link>
        </p>
        {loadError ? (
          <p className="error" role="alert">
            {loadError}
          </p>
        ) : (
          <p>Loading…</p>
        )}
      </main>
    );
  }

  const problems = sortProblems([
    ...graph.problems.map((p) => parseProblem(p)),
    ...fromBuild.filter((p) => !graph.problems.includes(p.message)),
  ]);
  const selectedNode =
    selection?.kind === 'node' ? defs.find((n) => n.name === selection.name) : undefined;
  const selectedConn = selection?.kind === 'connection' ? connections[selection.index] : undefined;

  return (
    <main className="page designer">
      <p>
        <Link href="/designer">← Graphs</Link>
      </p>
      <div className="designer-head">
        <h1>
          Graph <code>{graph.name}</code>
        </h1>
        {problems.all.length === 0 ? (
          <span className="badge tone-good" data-testid="graph-state">
            ✓ Ready to build
          </span>
        ) : (
          <span className="badge tone-bad" data-testid="graph-state">
            ⚠ {problems.all.length} problem{problems.all.length === 1 ? '' : 's'}
          </span>
        )}
        <div className="buttons">
          {canEdit && (
            <button type="button" onClick={build} disabled={busy}>
              Build
            </button>
          )}
          {canRun && (
            <button type="button" className="primary" onClick={execute} disabled={busy}>
              Execute
            </button>
          )}
        </div>
      </div>
      {graph.definition.description && <p className="reason">{graph.definition.description}</p>}
      {!canEdit && (
        <p className="hint" data-testid="read-only">
          Read only: editing a graph takes the author role.
        </p>
      )}
      <p className="designer-status" role="status" aria-live="polite">
        {status}
      </p>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      <div className={`designer-body${canEdit ? '' : ' read-only'}`}>
        {canEdit && <Palette onAdd={(t) => void addNode(t)} disabled={busy} />}
        <ReactFlowProvider>
          <GraphCanvas
            graph={graph.definition}
            problems={problems}
            editable={canEdit}
            selection={selection}
            onSelect={setSelection}
            onConnect={connect}
            onMoveNode={(n, x, y) => {
              const def = defs.find((d) => d.name === n);
              if (!def || (def.gui_x === x && def.gui_y === y)) return;
              void edit(() => graphApi.updateNode(name, n, { gui_x: x, gui_y: y }), `Moved ${n}`);
            }}
            onDropNode={(t, x, y) => void addNode(t, x, y)}
            onViewport={saveCanvas}
            placeRef={placeRef}
          />
        </ReactFlowProvider>
        <aside className="designer-side" aria-label="Selection">
          {selectedNode ? (
            <NodeEditor
              key={selectedNode.name}
              node={selectedNode}
              nodes={defs}
              connections={connections}
              agents={agents}
              problems={problems.byNode.get(selectedNode.name) ?? []}
              editable={canEdit}
              busy={busy}
              onSave={async (patch) => {
                const ok = await edit(
                  () => graphApi.updateNode(name, selectedNode.name, patch),
                  `Saved node ${typeof patch.name === 'string' ? patch.name : selectedNode.name}`,
                );
                if (ok && typeof patch.name === 'string') {
                  setSelection({ kind: 'node', name: patch.name });
                }
                return ok;
              }}
              onRemove={() =>
                void edit(
                  () => graphApi.removeNode(name, selectedNode.name),
                  `Removed node ${selectedNode.name}`,
                ).then((ok) => ok && setSelection(null))
              }
              onConnect={connect}
              onSelectConnection={(index) => setSelection({ kind: 'connection', index })}
            />
          ) : selectedConn && selection?.kind === 'connection' ? (
            <ConnectionEditor
              index={selection.index}
              connection={selectedConn}
              problems={problems.byConnection.get(selection.index) ?? []}
              editable={canEdit}
              busy={busy}
              onRename={(fileName) => {
                // A connection has no update: it is replaced (and goes to the end of the list).
                const c: ConnectionDef = { from: selectedConn.from, to: selectedConn.to };
                if (fileName) c.destination_file_name = fileName;
                void edit(async () => {
                  await graphApi.removeConnection(name, selection.index);
                  return graphApi.addConnection(name, c);
                }, `Saved connection`).then(
                  (ok) => ok && setSelection({ kind: 'connection', index: connections.length - 1 }),
                );
              }}
              onRemove={() =>
                void edit(
                  () => graphApi.removeConnection(name, selection.index),
                  `Removed connection #${selection.index}`,
                ).then((ok) => ok && setSelection(null))
              }
            />
          ) : (
            <div className="designer-help">
              <h2>Selection</h2>
              <p className="hint">
                Select a node or a connection to see {canEdit ? 'and edit ' : ''}its settings.
              </p>
              {canEdit && (
                <p className="hint">
                  Connect by dragging from an output handle (right side) to an input handle (left
                  side) or to the coordinator; or select a node and use its “Connect an output”
                  form. The coordinator checks each connection and its verdict is shown on it.
                </p>
              )}
            </div>
          )}
        </aside>
      </div>
      <ProblemsPanel problems={problems.all} onSelect={setSelection} />
    </main>
  );
}

function ProblemsPanel({
  problems,
  onSelect,
}: {
  problems: Problem[];
  onSelect: (s: Selection) => void;
}) {
  return (
    <section className="panel" aria-labelledby="problems-h" data-testid="problems">
      <h2 id="problems-h">Problems</h2>
      {problems.length === 0 ? (
        <p className="ok-note">
          <span aria-hidden="true">✓ </span>The coordinator finds no problem: the graph is ready to
          build.
        </p>
      ) : (
        <ul className="problem-list">
          {problems.map((p, i) => (
            <li key={i}>
              <span aria-hidden="true">⚠ </span>
              {p.node !== undefined || p.connection !== undefined ? (
                <button
                  type="button"
                  className="linklike"
                  onClick={() =>
                    onSelect(
                      p.node !== undefined
                        ? { kind: 'node', name: p.node }
                        : { kind: 'connection', index: p.connection ?? 0 },
                    )
                  }
                >
                  {p.message}
                </button>
              ) : (
                p.message
              )}
              {p.build ? ' (from the last build)' : ''}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
