import { useEffect, useState } from 'react';
import { api, ApiError, hasRole, type Step, type Task } from '../api';
import { useSession } from '../session';
import { duration, formatTime } from '../format';
import { Link, navigate, useLocation } from '../router';
import { StatusBadge, TASK_STATUSES, isTerminal, statusStyle } from '../status';

const POLL_MS = 3000;
const PAGE = 50;

/** The filters live in the address (`?status=&workflow=&name=&before_id=`). */
function setQuery(search: URLSearchParams, changes: Record<string, string>) {
  const next = new URLSearchParams(search);
  for (const [k, v] of Object.entries(changes)) {
    if (v) next.set(k, v);
    else next.delete(k);
  }
  // A new filter starts from the newest page.
  if (!('before_id' in changes)) next.delete('before_id');
  const qs = next.toString();
  navigate(`/runs${qs ? `?${qs}` : ''}`, { replace: true });
}

export function RunsPage() {
  const { me } = useSession();
  const { search } = useLocation();
  const status = search.get('status') ?? '';
  const workflow = search.get('workflow') ?? '';
  const name = search.get('name') ?? '';
  const beforeId = search.get('before_id') ?? '';

  const [tasks, setTasks] = useState<Task[] | null>(null);
  const [next, setNext] = useState<number | undefined>();
  const [error, setError] = useState<string | null>(null);
  const [workflows, setWorkflows] = useState<string[]>([]);
  const [nameInput, setNameInput] = useState(name);
  const [now, setNow] = useState(Date.now());
  const [current, setCurrent] = useState<Record<number, string>>({});

  useEffect(() => setNameInput(name), [name]);

  // The name filter follows typing after a pause.
  useEffect(() => {
    if (nameInput === name) return;
    const t = window.setTimeout(() => setQuery(search, { name: nameInput }), 400);
    return () => window.clearTimeout(t);
  }, [nameInput, name, search]);

  useEffect(() => {
    api
      .workflows()
      .then((w) => setWorkflows(w.workflows.map((x) => x.name).sort()))
      .catch(() => setWorkflows([]));
  }, []);

  const queryKey = `${status}|${workflow}|${name}|${beforeId}`;
  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    const ctl = new AbortController();
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (status) q.set('status', status);
    if (workflow) q.set('workflow', workflow);
    if (name) q.set('name', name);
    if (beforeId) q.set('before_id', beforeId);
    const load = async () => {
      try {
        const page = await api.tasks(q, ctl.signal);
        if (!live) return;
        setTasks(page.tasks);
        setNext(page.next_before_id);
        setError(null);
        setNow(Date.now());
        // The list has no step names: ask for the steps of the runs that are under way.
        const active = page.tasks.filter((t) => !isTerminal(t.status)).slice(0, 20);
        const names = await Promise.all(
          active.map((t) =>
            api
              .steps(t.task_id, ctl.signal)
              .then((s) => [t.task_id, currentSteps(s.steps)] as const)
              .catch(() => [t.task_id, ''] as const),
          ),
        );
        if (live) setCurrent(Object.fromEntries(names));
      } catch (e) {
        if (!live) return;
        if (e instanceof DOMException && e.name === 'AbortError') return;
        setError(e instanceof ApiError ? e.message : String(e));
      }
      if (live) timer = window.setTimeout(load, POLL_MS);
    };
    load();
    return () => {
      live = false;
      ctl.abort();
      window.clearTimeout(timer);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [queryKey]);

  const filtered = Boolean(status || workflow || name);

  return (
    <main className="page">
      <div className="page-head">
        <h1>Runs</h1>
        {hasRole(me, 'operator') && (
          <Link href="/runs/new" className="button primary">
            Start a run
          </Link>
        )}
      </div>
      <form className="filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <label>
          Status
          <select value={status} onChange={(e) => setQuery(search, { status: e.target.value })}>
            <option value="">Any</option>
            {TASK_STATUSES.map((s) => (
              <option key={s} value={s}>
                {statusStyle(s).label}
              </option>
            ))}
          </select>
        </label>
        <label>
          Workflow
          <select
            value={workflow}
            onChange={(e) => setQuery(search, { workflow: e.target.value })}
          >
            <option value="">Any</option>
            {[...new Set([...workflows, ...(workflow ? [workflow] : [])])].map((w) => (
              <option key={w} value={w}>
                {w}
              </option>
            ))}
          </select>
        </label>
        <label>
          Name contains
          <input
            type="search"
            value={nameInput}
            onChange={(e) => setNameInput(e.target.value)}
            placeholder="any"
          />
        </label>
        {filtered && (
          <button type="button" onClick={() => navigate('/runs', { replace: true })}>
            Clear filters
          </button>
        )}
      </form>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {tasks === null ? (
        <p>Loading…</p>
      ) : tasks.length === 0 ? (
        <p>{filtered ? 'No run matches these filters.' : 'No runs yet.'}</p>
      ) : (
        <div className="table-wrap">
          <table data-testid="runs">
            <thead>
              <tr>
                <th scope="col">ID</th>
                <th scope="col">Name</th>
                <th scope="col">Status</th>
                <th scope="col">Workflow</th>
                <th scope="col">Started</th>
                <th scope="col">Duration</th>
                <th scope="col">Steps</th>
              </tr>
            </thead>
            <tbody>
              {tasks.map((t) => (
                <tr key={t.task_id}>
                  <td className="num">{t.task_id}</td>
                  <td>
                    <Link href={`/runs/${t.task_id}`}>{t.name}</Link>
                  </td>
                  <td>
                    <StatusBadge status={t.status} />
                    {t.status_reason && <div className="reason">{t.status_reason}</div>}
                  </td>
                  <td>{t.workflow}</td>
                  <td>{formatTime(t.started_at ?? t.created_at)}</td>
                  <td>{duration(t.started_at, t.completed_at, now)}</td>
                  <td>
                    <StepCount task={t} current={current[t.task_id]} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <div className="pager">
        {beforeId && (
          <button type="button" onClick={() => setQuery(search, { before_id: '' })}>
            ← Newest
          </button>
        )}
        {next !== undefined && (
          <button type="button" onClick={() => setQuery(search, { before_id: String(next) })}>
            Older →
          </button>
        )}
      </div>
    </main>
  );
}

/** The steps a run is at: those on an agent or waiting for a person. */
function currentSteps(steps: Step[]): string {
  const at = steps.filter((s) =>
    ['dispatching', 'ready', 'running', 'awaiting_approval'].includes(s.status),
  );
  return at.map((s) => (s.status === 'awaiting_approval' ? `${s.name} (approval)` : s.name)).join(', ');
}

function StepCount({ task, current }: { task: Task; current?: string }) {
  const { completed_steps: done, total_steps: total } = task;
  return (
    <span className="stepcount">
      <progress max={Math.max(total, 1)} value={done} aria-label="Steps completed" />
      <span>
        {done}/{total} done
        {!isTerminal(task.status) && current ? (
          <>
            {' · '}
            <span className="current-step">{current}</span>
          </>
        ) : null}
      </span>
    </span>
  );
}
