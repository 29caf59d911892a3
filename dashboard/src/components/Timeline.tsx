// The run's timeline (a Gantt chart): one row per step, from when it could start (its last
// input finished, or the run started) to when it started — the time it queued — and from
// then to its end or now. Each row says its times, attempt and retries in words as well as
// in the bar; only the rows in view are drawn, so a run of thousands of steps stays light.
import { memo, useMemo, useState } from 'react';
import type { Step, Task } from '../api';
import { formatDuration } from '../format';
import { isTerminal, StatusIcon, statusStyle } from '../status';

const ROW = 26;
const VIEW_ROWS = 16;

interface Row {
  step: Step;
  /** When it could start (ms since the epoch), if known. */
  ready?: number;
  start?: number;
  end?: number;
}

function ms(iso?: string): number | undefined {
  if (!iso) return undefined;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? undefined : t;
}

/** Each step's ready, start and end times; ready is its inputs' last end (or the run's start). */
export function timelineRows(task: Task, steps: Step[], now: number): Row[] {
  const end = new Map<string, number | undefined>();
  for (const s of steps) end.set(s.name, ms(s.completed_at));
  const runStart = ms(task.started_at) ?? ms(task.created_at);
  return [...steps]
    .sort((a, b) => a.step_order - b.step_order)
    .map((s) => {
      let ready: number | undefined = runStart;
      for (const i of s.inputs) {
        const e = end.get(i);
        if (e === undefined) {
          ready = undefined;
          break;
        }
        ready = Math.max(ready ?? e, e);
      }
      const start = ms(s.started_at);
      const finished = ms(s.completed_at);
      const running = start !== undefined && finished === undefined && !isTerminal(s.status);
      const waiting = start === undefined && (s.status === 'ready' || s.status === 'dispatching');
      return {
        step: s,
        ready: start !== undefined || waiting ? ready : undefined,
        start,
        end: finished ?? (running ? now : undefined),
      };
    });
}

function describe(r: Row, now: number): string {
  const parts = [statusStyle(r.step.status).label];
  if (r.ready !== undefined && (r.start ?? now) > r.ready) {
    parts.push(`queued ${formatDuration((r.start ?? now) - r.ready)}`);
  }
  if (r.start !== undefined && r.end !== undefined) parts.push(`ran ${formatDuration(r.end - r.start)}`);
  if (r.step.attempt > 1) parts.push(`attempt ${r.step.attempt}`);
  if (r.step.retry_count > 0) {
    parts.push(`${r.step.retry_count} ${r.step.retry_count === 1 ? 'retry' : 'retries'}`);
  }
  return parts.join(', ');
}

const TimelineRow = memo(function TimelineRow({
  row,
  t0,
  span,
  now,
  focused,
  onSelect,
}: {
  row: Row;
  t0: number;
  span: number;
  now: number;
  focused: boolean;
  onSelect: (step: string) => void;
}) {
  const pct = (t: number) => `${(((t - t0) / span) * 100).toFixed(3)}%`;
  const width = (a: number, b: number) => `${Math.max(0.3, ((b - a) / span) * 100).toFixed(3)}%`;
  const s = statusStyle(row.step.status);
  const text = describe(row, now);
  const queuedUntil = row.start ?? (row.ready !== undefined ? now : undefined);
  return (
    <li
      className={`tl-row${focused ? ' focused' : ''}`}
      style={{ height: ROW }}
      data-testid={`timeline-${row.step.name}`}
      data-status={row.step.status}
    >
      <button
        type="button"
        className="linklike tl-name"
        aria-pressed={focused}
        onClick={() => onSelect(focused ? '' : row.step.name)}
        title={row.step.name}
      >
        {row.step.name}
      </button>
      <div className="tl-track" role="img" aria-label={`${row.step.name}: ${text}`}>
        {row.ready !== undefined && queuedUntil !== undefined && queuedUntil > row.ready && (
          <span
            className="tl-queue"
            style={{ left: pct(row.ready), width: width(row.ready, queuedUntil) }}
          />
        )}
        {row.start !== undefined && row.end !== undefined && (
          <span
            className={`tl-run tone-${s.tone}`}
            style={{ left: pct(row.start), width: width(row.start, row.end) }}
          >
            {row.step.attempt > 1 && <span className="tl-try">×{row.step.attempt}</span>}
          </span>
        )}
      </div>
      <span className="tl-text">
        <StatusIcon status={row.step.status} /> {text}
      </span>
    </li>
  );
});

export function Timeline({
  task,
  steps,
  now,
  focus,
  onSelect,
}: {
  task: Task;
  steps: Step[];
  now: number;
  focus: string;
  onSelect: (step: string) => void;
}) {
  const [scroll, setScroll] = useState(0);
  const rows = useMemo(() => timelineRows(task, steps, now), [task, steps, now]);
  const times = rows.flatMap((r) => [r.ready, r.start, r.end]).filter((t): t is number => t !== undefined);
  if (times.length === 0) return null;
  const t0 = Math.min(...times);
  const t1 = Math.max(...times, t0 + 1000);
  const span = t1 - t0;
  const first = Math.max(0, Math.floor(scroll / ROW) - 4);
  const last = Math.min(rows.length, first + VIEW_ROWS + 8);
  return (
    <section className="panel" aria-labelledby="timeline-h" data-testid="timeline">
      <h2 id="timeline-h">Timeline</h2>
      <p className="hint">
        {formatDuration(span)} from the first step's start; hatched: waiting for an agent after its
        inputs were ready; solid: running (×N: the attempt).
      </p>
      <div
        className="tl-scroll"
        style={{ maxHeight: ROW * VIEW_ROWS }}
        onScroll={(e) => setScroll(e.currentTarget.scrollTop)}
      >
        <ol className="tl" style={{ height: rows.length * ROW, paddingTop: first * ROW }}>
          {rows.slice(first, last).map((r) => (
            <TimelineRow
              key={r.step.name}
              row={r}
              t0={t0}
              span={span}
              now={now}
              focused={focus === r.step.name}
              onSelect={onSelect}
            />
          ))}
        </ol>
      </div>
    </section>
  );
}
