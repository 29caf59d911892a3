import { useCallback, useEffect, useState } from 'react';
import { api, ApiError, hasRole, type Backfill, type ScheduleDetail } from '../api';
import { formatIn, formatLogical, isMonth } from '../calendar';
import { Backfills } from '../components/Backfills';
import { RunCalendar } from '../components/RunCalendar';
import { formatTime } from '../format';
import { Link, navigate, useLocation } from '../router';
import { useSession } from '../session';
import { Icon } from '../status';
import { ScheduleState, scheduleTarget } from './Schedules';

const POLL_MS = 3000;

export function SchedulePage({ name }: { name: string }) {
  const { me } = useSession();
  const { search } = useLocation();
  const month = search.get('month');
  const [detail, setDetail] = useState<ScheduleDetail | null>(null);
  const [backfills, setBackfills] = useState<Backfill[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [missing, setMissing] = useState(false);
  const [version, setVersion] = useState(0);
  const reload = useCallback(() => setVersion((v) => v + 1), []);

  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    const load = async () => {
      try {
        const [d, b] = await Promise.all([api.schedule(name), api.backfills(name)]);
        if (!live) return;
        setDetail(d);
        setBackfills(b.backfills);
        setError(null);
      } catch (e) {
        if (!live) return;
        if (e instanceof ApiError && e.status === 404) {
          setMissing(true);
          return;
        }
        setError(e instanceof ApiError ? e.message : String(e));
      }
      if (live) timer = window.setTimeout(load, POLL_MS);
    };
    load();
    return () => {
      live = false;
      window.clearTimeout(timer);
    };
  }, [name, version]);

  const setMonth = (m: string) => {
    const next = new URLSearchParams(search);
    next.set('month', m);
    navigate(`/schedules/${encodeURIComponent(name)}?${next.toString()}`, { replace: true });
  };

  if (missing || !detail) {
    return (
      <main className="page">
        <p>
          <Link href="/schedules">← Schedules</Link>
        </p>
        {missing ? (
          <p role="alert">
            No schedule is named <code>{name}</code>.
          </p>
        ) : error ? (
          <p className="error" role="alert">
            {error}
          </p>
        ) : (
          <p>Loading…</p>
        )}
      </main>
    );
  }

  const s = detail.schedule;
  const operator = hasRole(me, 'operator');
  const params = Object.entries(s.params);
  return (
    <main className="page schedule">
      <p>
        <Link href="/schedules">← Schedules</Link>
      </p>
      <div className="run-head">
        <h1>{s.name}</h1>
        <span data-testid="schedule-state">
          <ScheduleState paused={s.paused} />
        </span>
      </div>
      <dl className="facts" data-testid="schedule-settings">
        <dt>Runs</dt>
        <dd>{scheduleTarget(s)}</dd>
        <dt>Parameters</dt>
        <dd>
          {params.length === 0 ? (
            'none'
          ) : (
            <ul className="plain">
              {params.map(([k, v]) => (
                <li key={k}>
                  <code>
                    {k}={v}
                  </code>
                </li>
              ))}
            </ul>
          )}
        </dd>
        <dt>Cron</dt>
        <dd>
          <code>{s.cron}</code> in {s.timezone || 'UTC'}
        </dd>
        <dt>Catch-up</dt>
        <dd>
          {s.catchup}
          {s.catchup !== 'none' && ` (at most ${s.max_catchup} missed run${s.max_catchup === 1 ? '' : 's'})`}
        </dd>
        <dt>While a run still runs</dt>
        <dd>{s.concurrency}</dd>
        <dt>Priority</dt>
        <dd>{s.priority}</dd>
        <dt>Created</dt>
        <dd>{formatTime(s.created_at)}</dd>
        <dt>Newest date considered</dt>
        <dd>{s.cursor ? `${formatIn(s.cursor, s.timezone)} ${s.timezone || 'UTC'}` : '—'}</dd>
        <dt>Next runs (logical dates)</dt>
        <dd data-testid="next-runs">
          {s.paused ? (
            'none while paused'
          ) : s.next_runs.length === 0 ? (
            '—'
          ) : (
            <ul className="plain">
              {s.next_runs.map((r) => (
                <li key={r}>{formatLogical(r)}</li>
              ))}
            </ul>
          )}
        </dd>
      </dl>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {operator && <Actions name={s.name} paused={s.paused} onDone={reload} />}
      <RunCalendar
        runs={detail.runs}
        timezone={s.timezone}
        month={isMonth(month) ? month : undefined}
        onMonth={setMonth}
      />
      <Backfills schedule={s.name} backfills={backfills} canOperate={operator} onChanged={reload} />
    </main>
  );
}

/** Pause or resume, and delete (operators only). */
function Actions({ name, paused, onDone }: { name: string; paused: boolean; onDone: () => void }) {
  const [busy, setBusy] = useState(false);
  const [confirmDelete, setConfirmDelete] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const run = async (f: () => Promise<unknown>, after: () => void = onDone) => {
    setBusy(true);
    setError(null);
    try {
      await f();
      after();
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    } finally {
      setBusy(false);
      setConfirmDelete(false);
    }
  };
  return (
    <div className="actions" role="group" aria-label="Schedule actions" data-testid="actions">
      {paused ? (
        <button type="button" disabled={busy} onClick={() => run(() => api.resumeSchedule(name))}>
          <Icon name="play" /> Resume
        </button>
      ) : (
        <button type="button" disabled={busy} onClick={() => run(() => api.pauseSchedule(name))}>
          <Icon name="pause" /> Pause
        </button>
      )}
      {confirmDelete ? (
        <span className="confirm">
          Delete this schedule? Its running backfills are cancelled; its runs stay.
          <button
            type="button"
            className="danger"
            disabled={busy}
            onClick={() =>
              run(
                () => api.deleteSchedule(name),
                () => navigate('/schedules'),
              )
            }
          >
            Yes, delete the schedule
          </button>
          <button type="button" disabled={busy} onClick={() => setConfirmDelete(false)}>
            No
          </button>
        </span>
      ) : (
        <button type="button" className="danger" onClick={() => setConfirmDelete(true)}>
          <Icon name="cross" /> Delete…
        </button>
      )}
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
    </div>
  );
}
