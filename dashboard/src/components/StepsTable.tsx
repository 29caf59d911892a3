import type { Step } from '../api';
import { duration, formatTime } from '../format';
import { StatusBadge } from '../status';

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
  return (
    <div className="table-wrap">
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
          {steps.map((s) => (
            <tr key={s.name} className={s.name === focus ? 'focused' : undefined}>
              <td className="num">{s.step_order}</td>
              <th scope="row">
                <button
                  type="button"
                  className="linklike"
                  aria-pressed={s.name === focus}
                  title="Show only this step's log lines"
                  onClick={() => onSelect(s.name === focus ? '' : s.name)}
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
              <td>{duration(s.started_at, s.completed_at, now)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
