import { memo, useMemo, useState } from 'react';
import type { Step } from '../api';
import { duration, formatTime } from '../format';
import { StatusBadge } from '../status';

/** Rows drawn at first in a big run (the rest behind "Show more" and the search). */
const PAGE = 200;
const URGENT = new Set(['failed', 'running', 'dispatching', 'awaiting_approval']);

export function StepsTable({
  steps,
  focus,
  onSelect,
  now,
}: {
  steps: Step[];
  focus: string;
  onSelect: (step: string) => void;
  now: number;
}) {
  const [query, setQuery] = useState('');
  const [limit, setLimit] = useState(PAGE);
  const big = steps.length > PAGE;
  const needle = query.trim().toLowerCase();
  // In a big run: the steps that failed or are under way first, then in order.
  const listed = useMemo(() => {
    const found = needle ? steps.filter((s) => s.name.toLowerCase().includes(needle)) : steps;
    if (!big) return found;
    const first = found.filter((s) => URGENT.has(s.status));
    return first.length === 0 ? found : first.concat(found.filter((s) => !URGENT.has(s.status)));
  }, [steps, needle, big]);
  const rows = listed.length > limit ? listed.slice(0, limit) : listed;
  return (
    <div className="table-wrap">
      {big && (
        <div className="steps-find">
          <label>
            Find a step{' '}
            <input type="search" value={query} onChange={(e) => setQuery(e.target.value)} />
          </label>{' '}
          <span className="muted" aria-live="polite">
            {rows.length} of {listed.length} shown
            {needle ? ` (${steps.length} steps in all)` : ''}; failed and running first
          </span>
        </div>
      )}
      <table data-testid="steps">
        <thead>
          <tr>
            <th scope="col">#</th>
            <th scope="col">Step</th>
            <th scope="col">Kind</th>
            <th scope="col">Status</th>
            <th scope="col">Agent</th>
            <th scope="col">Attempt</th>
            <th scope="col">Retries</th>
            <th scope="col">Started</th>
            <th scope="col">Finished</th>
            <th scope="col">Duration</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((s) => (
            <StepRow
              key={s.name}
              step={s}
              focused={s.name === focus}
              onSelect={onSelect}
              // Only a step under way changes with the clock.
              now={s.started_at && !s.completed_at ? now : 0}
            />
          ))}
        </tbody>
      </table>
      {listed.length > rows.length && (
        <button type="button" onClick={() => setLimit((l) => l + PAGE)}>
          Show {Math.min(PAGE, listed.length - rows.length)} more
        </button>
      )}
    </div>
  );
}

const StepRow = memo(function StepRow({
  step: s,
  focused,
  onSelect,
  now,
}: {
  step: Step;
  focused: boolean;
  onSelect: (step: string) => void;
  now: number;
}) {
  return (
    <tr className={focused ? 'focused' : undefined}>
      <td className="num">{s.step_order}</td>
      <th scope="row">
        <button
          type="button"
          className="linklike"
          aria-pressed={focused}
          title="Show only this step's log lines"
          onClick={() => onSelect(focused ? '' : s.name)}
        >
          {s.name}
        </button>
        {s.error_message && <div className="reason">{s.error_message}</div>}
      </th>
      <td>{s.kind}</td>
      <td>
        <StatusBadge status={s.status} />
      </td>
      <td>{s.agent ?? s.placement ?? '—'}</td>
      <td className="num">{s.attempt}</td>
      <td className="num">
        {s.retry_count} of {s.max_retries}
      </td>
      <td>{formatTime(s.started_at)}</td>
      <td>{formatTime(s.completed_at)}</td>
      <td>{duration(s.started_at, s.completed_at, now || Date.now())}</td>
    </tr>
  );
});
