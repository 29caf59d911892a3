import { useEffect, useState } from 'react';
import { api, ApiError, type Schedule } from '../api';
import { formatLogical } from '../calendar';
import { Link } from '../router';
import { Icon } from '../status';

const POLL_MS = 5000;

/** What a schedule runs, in words. */
export function scheduleTarget(s: Schedule): string {
  if (s.target === 'workflow') return `workflow ${s.workflow ?? '?'}`;
  const name = (s.request as { name?: unknown } | undefined)?.name;
  return typeof name === 'string' && name ? `CTR pipeline ${name}` : 'CTR pipeline';
}

export function ScheduleState({ paused }: { paused: boolean }) {
  return paused ? (
    <span className="badge tone-wait" data-state="paused">
      <Icon name="pause" />
      Paused
    </span>
  ) : (
    <span className="badge tone-good" data-state="active">
      <Icon name="play" />
      Active
    </span>
  );
}

export function SchedulesPage() {
  const [schedules, setSchedules] = useState<Schedule[] | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    const load = async () => {
      try {
        const out = await api.schedules();
        if (!live) return;
        setSchedules(out.schedules);
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
      <h1>Schedules</h1>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {schedules === null ? (
        <p>Loading…</p>
      ) : schedules.length === 0 ? (
        <p>
          No schedules. Create one with <code>ferry schedule create</code>.
        </p>
      ) : (
        <div className="table-wrap">
          <table data-testid="schedules">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Runs</th>
                <th scope="col">Cron</th>
                <th scope="col">State</th>
                <th scope="col">Next run (logical date)</th>
              </tr>
            </thead>
            <tbody>
              {schedules.map((s) => (
                <tr key={s.name}>
                  <td>
                    <Link href={`/schedules/${encodeURIComponent(s.name)}`}>{s.name}</Link>
                  </td>
                  <td>{scheduleTarget(s)}</td>
                  <td>
                    <code>{s.cron}</code> <span className="muted">in {s.timezone || 'UTC'}</span>
                  </td>
                  <td>
                    <ScheduleState paused={s.paused} />
                  </td>
                  <td>{s.paused ? <span className="muted">none while paused</span> : formatLogical(s.next_runs[0])}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </main>
  );
}
