import { useEffect, useState } from 'react';
import { api, ApiError, type Agent, type QueuedStep } from '../api';
import { formatTime } from '../format';
import { Link } from '../router';
import { Icon } from '../status';

const POLL_MS = 5000;

export function AgentsPage() {
  const [agents, setAgents] = useState<Agent[] | null>(null);
  const [queue, setQueue] = useState<QueuedStep[]>([]);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    const load = async () => {
      try {
        // The queue is extra: the agents show without it.
        const [out, queued] = await Promise.all([
          api.agents(),
          api.queue().catch(() => null),
        ]);
        if (!live) return;
        setAgents(out.agents);
        if (queued) setQueue(queued.steps);
        setError(null);
      } catch (e) {
        if (live) setError(e instanceof ApiError ? e.message : String(e));
      }
      if (live) timer = window.setTimeout(load, POLL_MS);
    };
    load();
    return () => {
      live = false;
      window.clearTimeout(timer);
    };
  }, []);

  return (
    <main className="page">
      <h1>Agents</h1>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {agents === null ? (
        <p>Loading…</p>
      ) : agents.length === 0 ? (
        <p>No agent has registered.</p>
      ) : (
        <div className="table-wrap">
          <table data-testid="agents">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Role</th>
                <th scope="col">Connection</th>
                <th scope="col">Last seen</th>
                <th scope="col">Running jobs</th>
                <th scope="col">Slots in use</th>
                <th scope="col">Host</th>
                <th scope="col">Version</th>
                <th scope="col">GPUs</th>
                <th scope="col">GPUs in use</th>
                <th scope="col">Step kinds</th>
              </tr>
            </thead>
            <tbody>
              {agents.map((a) => (
                <tr key={a.name}>
                  <th scope="row">{a.name}</th>
                  <td>{a.role}</td>
                  <td>
                    {a.connected ? (
                      <span className="badge tone-good">
                        <Icon name="check" />
                        Connected
                      </span>
                    ) : (
                      <span className="badge tone-bad">
                        <Icon name="cross" />
                        Disconnected
                      </span>
                    )}
                  </td>
                  <td>{formatTime(a.last_seen)}</td>
                  <td className="num">{a.running_jobs}</td>
                  <td className="num" data-testid={`slots-${a.name}`}>
                    {slots(a)}
                  </td>
                  <td>{a.hostname || '—'}</td>
                  <td>{a.version || '—'}</td>
                  <td>{a.gpus.length ? a.gpus.join(', ') : 'none'}</td>
                  <td>{a.gpus.length ? (a.gpus_in_use?.length ? a.gpus_in_use.join(', ') : 'none') : '—'}</td>
                  <td className="kinds">{a.kinds.join(', ')}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Queue steps={queue} />
    </main>
  );
}

/** `in use/slots`; an agent without a limit (slots 0) says so. */
function slots(a: Agent): string {
  const used = a.slots_in_use ?? 0;
  return a.slots ? `${used}/${a.slots}` : `${used} (no limit)`;
}

/** Ready steps waiting for capacity, in the order they get it; hidden when none waits. */
function Queue({ steps }: { steps: QueuedStep[] }) {
  if (steps.length === 0) return null;
  return (
    <section className="queue" aria-labelledby="queue-h">
      <h2 id="queue-h">Waiting for capacity</h2>
      <div className="table-wrap">
        <table data-testid="queue" className="compact">
          <thead>
            <tr>
              <th scope="col">#</th>
              <th scope="col">Run</th>
              <th scope="col">Step</th>
              <th scope="col">Needs</th>
              <th scope="col">Waits for</th>
            </tr>
          </thead>
          <tbody>
            {steps.map((q) => (
              <tr key={`${q.task_id}/${q.step}`}>
                <td className="num">{q.position}</td>
                <td>
                  <Link href={`/runs/${q.task_id}`}>{q.task_name}</Link>{' '}
                  <span className="muted">#{q.task_id}</span>
                </td>
                <td>{q.step}</td>
                <td>{q.needs}</td>
                <td>{q.waits_for}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
