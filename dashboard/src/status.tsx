// Task and step states: each shown with an icon AND its name, never colour alone. The
// icons are drawn (SVG), so they look the same whatever fonts the browser has.
import type { ReactElement } from 'react';

type IconName = 'circle' | 'quarter' | 'half' | 'play' | 'pause' | 'flag' | 'check' | 'cross' | 'slash' | 'unknown';

interface StatusStyle {
  label: string;
  icon: IconName;
  tone: 'idle' | 'active' | 'wait' | 'good' | 'bad' | 'muted';
}

const STYLES: Record<string, StatusStyle> = {
  pending: { label: 'Pending', icon: 'circle', tone: 'idle' },
  dispatching: { label: 'Dispatching', icon: 'quarter', tone: 'active' },
  ready: { label: 'Ready', icon: 'half', tone: 'active' },
  running: { label: 'Running', icon: 'play', tone: 'active' },
  paused: { label: 'Paused', icon: 'pause', tone: 'wait' },
  awaiting_approval: { label: 'Awaiting approval', icon: 'flag', tone: 'wait' },
  completed: { label: 'Completed', icon: 'check', tone: 'good' },
  failed: { label: 'Failed', icon: 'cross', tone: 'bad' },
  cancelled: { label: 'Cancelled', icon: 'slash', tone: 'muted' },
};

export function statusStyle(status: string): StatusStyle {
  return STYLES[status] ?? { label: status || 'Unknown', icon: 'unknown', tone: 'idle' };
}

export const TASK_STATUSES = ['pending', 'running', 'paused', 'completed', 'failed', 'cancelled'];

export function isTerminal(status: string): boolean {
  return status === 'completed' || status === 'failed' || status === 'cancelled';
}

const PATHS: Record<IconName, ReactElement> = {
  circle: <circle cx="8" cy="8" r="5.5" fill="none" stroke="currentColor" strokeWidth="2" />,
  quarter: (
    <>
      <circle cx="8" cy="8" r="5.5" fill="none" stroke="currentColor" strokeWidth="2" />
      <path d="M8 8V2.5A5.5 5.5 0 0 1 13.5 8Z" fill="currentColor" />
    </>
  ),
  half: (
    <>
      <circle cx="8" cy="8" r="5.5" fill="none" stroke="currentColor" strokeWidth="2" />
      <path d="M8 2.5a5.5 5.5 0 0 1 0 11Z" fill="currentColor" />
    </>
  ),
  play: <path d="M4 2.5v11l9-5.5Z" fill="currentColor" />,
  pause: <path d="M3.5 2.5h3v11h-3ZM9.5 2.5h3v11h-3Z" fill="currentColor" />,
  flag: <path d="M3 1.5v13h2V9.5h7.5L10.5 6l2-3.5H5V1.5Z" fill="currentColor" />,
  check: (
    <path d="M2.5 8.5l3.5 3.5 7.5-8" fill="none" stroke="currentColor" strokeWidth="2.4" />
  ),
  cross: (
    <path d="M3.5 3.5l9 9M12.5 3.5l-9 9" fill="none" stroke="currentColor" strokeWidth="2.4" />
  ),
  slash: (
    <>
      <circle cx="8" cy="8" r="5.5" fill="none" stroke="currentColor" strokeWidth="2" />
      <path d="M4.2 11.8l7.6-7.6" stroke="currentColor" strokeWidth="2" />
    </>
  ),
  unknown: <circle cx="8" cy="8" r="2.5" fill="currentColor" />,
};

export function Icon({ name }: { name: IconName }) {
  return (
    <svg className="icon" viewBox="0 0 16 16" width="12" height="12" aria-hidden="true" focusable="false">
      {PATHS[name]}
    </svg>
  );
}

export function StatusIcon({ status }: { status: string }) {
  return <Icon name={statusStyle(status).icon} />;
}

export function StatusBadge({ status }: { status: string }) {
  const s = statusStyle(status);
  return (
    <span className={`badge tone-${s.tone}`} data-status={status}>
      <Icon name={s.icon} />
      {s.label}
    </span>
  );
}
