// A schedule's runs by logical date: a month grid (weeks as rows, Monday first) where a day
// with runs shows its state in words and colour and links to its run; several runs a day
// (a sub-daily cadence) show their count and the worst state, linking to the newest run in
// that state. Days without a run stay blank.
import { useMemo } from 'react';
import type { ScheduleRun } from '../api';
import {
  type Day,
  WEEKDAYS,
  monthName,
  monthWeeks,
  monthsWithRuns,
  runDate,
  runsByDay,
  todayIn,
} from '../calendar';
import { Link } from '../router';
import { Icon, statusStyle } from '../status';

export function RunCalendar({
  runs,
  timezone,
  month,
  onMonth,
}: {
  /** Oldest first. */
  runs: ScheduleRun[];
  timezone: string;
  /** YYYY-MM; the newest month with runs (else this month) when absent. */
  month?: string;
  onMonth: (month: string) => void;
}) {
  const days = useMemo(() => runsByDay(runs), [runs]);
  const months = useMemo(() => monthsWithRuns(days), [days]);
  const today = todayIn(timezone);
  const shown = month ?? months[months.length - 1] ?? today.slice(0, 7);
  const weeks = monthWeeks(shown);
  const prev = months.filter((m) => m < shown).pop();
  const next = months.find((m) => m > shown);
  const inMonth = runs.filter((r) => runDate(r).startsWith(`${shown}-`)).length;

  return (
    <section className="panel" aria-labelledby="calendar-h" data-testid="calendar" data-month={shown}>
      <div className="cal-head">
        <h2 id="calendar-h">Runs by logical date</h2>
        <nav className="cal-nav" aria-label="Months with runs">
          <button type="button" disabled={!prev} onClick={() => prev && onMonth(prev)}>
            ← {prev ? monthName(prev) : 'Earlier'}
          </button>
          <span className="cal-month" aria-live="polite">
            {monthName(shown)}
          </span>
          <button type="button" disabled={!next} onClick={() => next && onMonth(next)}>
            {next ? monthName(next) : 'Later'} →
          </button>
        </nav>
      </div>
      <p className="muted">
        Dates in {timezone || 'UTC'}.{' '}
        {runs.length === 0
          ? 'No run yet.'
          : `${inMonth} run${inMonth === 1 ? '' : 's'} this month` +
            (runs.length >= 500 ? ' (the newest 500 runs are shown).' : '.')}
      </p>
      <div className="table-wrap">
        <table className="calendar">
          <caption className="visually-hidden">{monthName(shown)}</caption>
          <thead>
            <tr>
              {WEEKDAYS.map((d) => (
                <th scope="col" key={d}>
                  {d}
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {weeks.map((week, i) => (
              <tr key={i}>
                {week.map((date, j) =>
                  date ? (
                    <DayCell key={date} date={date} day={days.get(date)} today={date === today} />
                  ) : (
                    <td key={`pad-${j}`} className="cal-pad" />
                  ),
                )}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}

function DayCell({ date, day, today }: { date: string; day?: Day; today: boolean }) {
  const n = day?.runs.length ?? 0;
  const s = day ? statusStyle(day.status) : null;
  const summary = day?.counts.map(([st, c]) => `${c} ${statusStyle(st).label.toLowerCase()}`).join(', ');
  const label = day && s
    ? n === 1
      ? `${date}: ${s.label}, run #${day.run.task_id ?? '?'}`
      : `${date}: ${s.label} (worst of ${n} runs: ${summary})`
    : '';
  return (
    <td
      className={`cal-day${today ? ' cal-today' : ''}`}
      data-date={date}
      data-status={day?.status}
      aria-current={today ? 'date' : undefined}
    >
      <span className="cal-num">{Number(date.slice(8))}</span>
      {day && s && (
        <>
          {day.run.task_id ? (
            <Link
              href={`/runs/${day.run.task_id}`}
              className={`badge tone-${s.tone}`}
              data-status={day.status}
              aria-label={label}
              title={summary}
            >
              <Icon name={s.icon} />
              {s.label}
            </Link>
          ) : (
            <span className={`badge tone-${s.tone}`} data-status={day.status} title={summary}>
              <Icon name={s.icon} />
              {s.label}
            </span>
          )}
          {n > 1 && <span className="cal-count">{n} runs</span>}
        </>
      )}
    </td>
  );
}
