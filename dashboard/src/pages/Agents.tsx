import { useEffect, useState } from 'react';
import { api, ApiError, type Agent } from '../api';
import { formatTime } from '../format';
import { Icon } from '../status';

const POLL_MS = 5000;

export function AgentsPage() {
  const [agents, setAgents] = useState<Agent[] | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    const load = async () => {
      try {
        const out = await api.agents();
        if (!live) return;
        setAgents(out.agents);
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
                <th scope="col">Host</th>
                <th scope="col">Version</th>
                <th scope="col">GPUs</th>
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
                  <td>{a.hostname || '—'}</td>
                  <td>{a.version || '—'}</td>
                  <td>{a.gpus.length ? a.gpus.join(', ') : 'none'}</td>
                  <td className="kinds">{a.kinds.join(', ')}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </main>
  );
}
