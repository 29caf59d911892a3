// A schedule's runs on a calendar: by the calendar date of their logical date in the
// schedule's zone (`ds`), a month at a time, weeks from Monday.
import type { ScheduleRun } from './api';

/** Worst first: the state a day with several runs shows. */
const SEVERITY = [
  'failed',
  'cancelled',
  'unknown',
  'paused',
  'awaiting_approval',
  'pending',
  'dispatching',
  'ready',
  'running',
  'completed',
];

function rank(status: string): number {
  const i = SEVERITY.indexOf(status);
  return i < 0 ? SEVERITY.indexOf('unknown') : i;
}

/** A run's state: its task's status (`unknown` when its task is gone). */
export function runStatus(r: ScheduleRun): string {
  if (r.status) return r.status;
  return r.task_id ? 'pending' : 'unknown';
}

/** The calendar date (YYYY-MM-DD) a run belongs to. */
export function runDate(r: ScheduleRun): string {
  return r.ds || r.logical_date.slice(0, 10);
}

export interface Day {
  date: string;
  /** Oldest first. */
  runs: ScheduleRun[];
  /** The worst of its runs' states. */
  status: string;
  /** The newest run in that state: the one the day links to. */
  run: ScheduleRun;
  /** Runs by state, worst first. */
  counts: [string, number][];
}

/** The runs (oldest first) grouped by date. */
export function runsByDay(runs: ScheduleRun[]): Map<string, Day> {
  const out = new Map<string, Day>();
  for (const r of runs) {
    const date = runDate(r);
    const status = runStatus(r);
    const day = out.get(date);
    if (!day) {
      out.set(date, { date, runs: [r], status, run: r, counts: [] });
    } else {
      day.runs.push(r);
      if (rank(status) <= rank(day.status)) {
        day.status = status;
        day.run = r;
      }
    }
  }
  for (const day of out.values()) {
    const counts = new Map<string, number>();
    for (const r of day.runs) counts.set(runStatus(r), (counts.get(runStatus(r)) ?? 0) + 1);
    day.counts = [...counts].sort((a, b) => rank(a[0]) - rank(b[0]));
  }
  return out;
}

/** The months (YYYY-MM) that have runs, oldest first. */
export function monthsWithRuns(days: Map<string, Day>): string[] {
  return [...new Set([...days.keys()].map((d) => d.slice(0, 7)))].sort();
}

/** The month's weeks, Monday first: each a row of 7 dates, `null` outside the month. */
export function monthWeeks(month: string): (string | null)[][] {
  const [y, m] = month.split('-').map(Number);
  const lead = (new Date(Date.UTC(y, m - 1, 1)).getUTCDay() + 6) % 7;
  const days = new Date(Date.UTC(y, m, 0)).getUTCDate();
  const cells: (string | null)[] = Array.from({ length: lead }, () => null);
  for (let d = 1; d <= days; d++) cells.push(`${month}-${String(d).padStart(2, '0')}`);
  while (cells.length % 7) cells.push(null);
  const weeks: (string | null)[][] = [];
  for (let i = 0; i < cells.length; i += 7) weeks.push(cells.slice(i, i + 7));
  return weeks;
}

export const WEEKDAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'];
const MONTHS = [
  'January', 'February', 'March', 'April', 'May', 'June',
  'July', 'August', 'September', 'October', 'November', 'December',
];

/** `2026-01` → `January 2026`. */
export function monthName(month: string): string {
  const [y, m] = month.split('-').map(Number);
  return `${MONTHS[m - 1] ?? month} ${y}`;
}

export function isMonth(s: string | null | undefined): s is string {
  return !!s && /^\d{4}-(0[1-9]|1[0-2])$/.test(s);
}

/** Today's date (YYYY-MM-DD) in `timezone`, or in the browser's when the zone is unknown. */
export function todayIn(timezone: string, now = new Date()): string {
  try {
    const parts = new Intl.DateTimeFormat('en-CA', {
      timeZone: timezone || 'UTC',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
    }).formatToParts(now);
    const get = (t: string) => parts.find((p) => p.type === t)?.value ?? '';
    return `${get('year')}-${get('month')}-${get('day')}`;
  } catch {
    const pad = (n: number) => String(n).padStart(2, '0');
    return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
  }
}

/** A logical date as the schedule's zone writes it: `2026-01-22 00:00:00 +08:00`. */
export function formatLogical(s?: string): string {
  if (!s) return '—';
  const m = s.match(/^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})$/);
  if (!m) return s;
  return `${m[1]} ${m[2]} ${m[3] === 'Z' ? 'UTC' : m[3]}`;
}

/** An instant as `YYYY-MM-DD HH:MM:SS` in `timezone` (the browser's when it is unknown). */
export function formatIn(iso: string | undefined, timezone: string): string {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  try {
    const parts = new Intl.DateTimeFormat('en-CA', {
      timeZone: timezone || 'UTC',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      hourCycle: 'h23',
    }).formatToParts(d);
    const get = (t: string) => parts.find((p) => p.type === t)?.value ?? '';
    return `${get('year')}-${get('month')}-${get('day')} ${get('hour')}:${get('minute')}:${get('second')}`;
  } catch {
    return iso;
  }
}
