// The coordinator's HTTP/JSON API (served at /api, described at /api/openapi.json).
// The browser authenticates with the session cookie from POST /api/login; requests that
// change state carry the session's CSRF token in `X-CSRF-Token`.

export interface WhoAmI {
  name: string;
  roles: string[];
  auth_enabled: boolean;
  csrf_token?: string;
}

export interface Task {
  task_id: number;
  name: string;
  workflow: string;
  status: string;
  status_reason?: string;
  current_step: number;
  total_steps: number;
  completed_steps: number;
  created_at: string;
  updated_at: string;
  started_at?: string;
  completed_at?: string;
  params: Record<string, string>;
}

export interface TaskPage {
  tasks: Task[];
  next_before_id?: number;
}

export interface Step {
  name: string;
  step_order: number;
  kind: string;
  status: string;
  placement: string;
  inputs: string[];
  constraint: string;
  agent?: string;
  job_id?: string;
  retry_count: number;
  max_retries: number;
  attempt: number;
  error_message?: string;
  checkpoint?: unknown;
  progress?: unknown;
  started_at?: string;
  completed_at?: string;
}

export interface TaskDetail extends Task {
  steps: Step[];
}

export interface LogLine {
  id: number;
  task_id: number;
  step: string;
  timestamp: string;
  level: string;
  source: string;
  message: string;
}

export interface StepProgress {
  step: string;
  status: string;
  progress?: unknown;
  chunks_total: number;
  chunks_completed: number;
  chunks_failed: number;
  chunk_retries: number;
}

export interface Metric {
  step: string;
  name: string;
  value: number;
  /** The epoch (or other ordinal) the value belongs to. */
  index: number;
  timestamp: string;
}

export interface Approval {
  task_id: number;
  step: string;
  table?: string;
  partition?: string;
  preview: unknown[];
}

export interface Agent {
  name: string;
  role: string;
  kinds: string[];
  gpus: number[];
  connected: boolean;
  last_seen?: string;
  running_jobs: number;
  hostname: string;
  version: string;
  paths: Record<string, string>;
  ssh_to: string[];
  /** Steps it runs at once (0: no limit), and the slots its running steps take. */
  slots: number;
  slots_in_use: number;
  /** The GPU ids given to its running steps. */
  gpus_in_use: number[];
}

/** A ready step waiting for capacity (slots, GPUs, a pool, its workflow's limit). */
export interface QueuedStep {
  /** 1 is next. */
  position: number;
  task_id: number;
  task_name: string;
  workflow: string;
  step: string;
  priority: number;
  /** What it needs, in words ("1 slot, 1 GPU"). */
  needs: string;
  /** What it waits for, in words. */
  waits_for: string;
}

/** A stored workflow or a CTR task request run on a cron in a time zone. */
export interface Schedule {
  id: number;
  name: string;
  /** `workflow` or `ctr`. */
  target: string;
  workflow?: string;
  request?: unknown;
  params: Record<string, string>;
  cron: string;
  timezone: string;
  catchup: string;
  max_catchup: number;
  concurrency: string;
  priority: number;
  paused: boolean;
  /** The newest logical date considered. */
  cursor?: string;
  created_at: string;
  /** The next runs' logical dates (RFC 3339 with the zone's offset). */
  next_runs: string[];
}

/** One run of a schedule: a logical date and its task. */
export interface ScheduleRun {
  /** RFC 3339 with the schedule zone's offset. */
  logical_date: string;
  /** The logical date's calendar date in the schedule's zone (YYYY-MM-DD). */
  ds: string;
  task_id?: number;
  status?: string;
  backfill_id?: number;
  attempts: number;
}

export interface ScheduleDetail {
  schedule: Schedule;
  /** The newest 500, oldest first. */
  runs: ScheduleRun[];
}

export interface Backfill {
  id: number;
  schedule: string;
  start: string;
  end: string;
  reverse: boolean;
  max_active: number;
  priority: number;
  /** missing, failed or all. */
  reprocess: string;
  /** running, completed or cancelled. */
  status: string;
  done: number;
  running: number;
  failed: number;
  left: number;
  created_at: string;
}

export interface BackfillRequest {
  schedule: string;
  /** YYYY-MM-DD in the schedule's zone; both ends included. */
  start: string;
  end: string;
  max_active: number;
  reprocess: string;
  dry_run: boolean;
  reverse?: boolean;
  priority?: number;
}

export interface BackfillResult {
  /** Absent for a dry run. */
  backfill?: Backfill;
  /** The dates (`ds`) of the runs it creates (would create), in order. */
  runs: string[];
}

export interface Workflow {
  id: number;
  name: string;
  description: string;
  definition: unknown;
  created_at: string;
  updated_at: string;
}

/** One text frame of the task stream (WebSocket). */
export type StreamMessage =
  | ({ type: 'log' } & LogLine)
  | { type: 'step'; step: string; status: string; progress?: unknown }
  | { type: 'progress'; step: string; progress: unknown }
  | { type: 'end'; status: string; reason?: string }
  | { type: 'error'; message: string };

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field?: string;

  constructor(status: number, code: string, message: string, field?: string) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

let csrfToken: string | null = null;
const unauthenticatedListeners = new Set<() => void>();

export function setCsrfToken(token: string | null | undefined): void {
  csrfToken = token ?? null;
}

/** Called when any request answers 401 (the session ended): the app shows the login page. */
export function onUnauthenticated(listener: () => void): () => void {
  unauthenticatedListeners.add(listener);
  return () => unauthenticatedListeners.delete(listener);
}

interface RequestOptions {
  method?: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE';
  body?: unknown;
  signal?: AbortSignal;
  /** Don't report a 401 to the app (the login call itself). */
  quiet401?: boolean;
}

export async function request<T>(path: string, opts: RequestOptions = {}): Promise<T> {
  const method = opts.method ?? 'GET';
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      credentials: 'same-origin',
      signal: opts.signal,
    });
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    throw new ApiError(0, 'unavailable', 'the coordinator cannot be reached');
  }
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let json: unknown = undefined;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    // not JSON: reported below when the status says it failed
  }
  if (!res.ok) {
    const err = (json as { error?: { code?: string; message?: string; field?: string } })?.error;
    if (res.status === 401 && !opts.quiet401) unauthenticatedListeners.forEach((l) => l());
    throw new ApiError(
      res.status,
      err?.code ?? 'error',
      err?.message ?? `${res.status} ${res.statusText}`,
      err?.field,
    );
  }
  return json as T;
}

const enc = encodeURIComponent;

export const api = {
  whoami: () => request<WhoAmI>('/api/whoami', { quiet401: true }),
  login: (token: string) =>
    request<WhoAmI>('/api/login', { method: 'POST', body: { token }, quiet401: true }),
  logout: () => request<void>('/api/logout', { method: 'POST' }),
  tasks: (query: URLSearchParams, signal?: AbortSignal) =>
    request<TaskPage>(`/api/workflow/tasks?${query.toString()}`, { signal }),
  task: (id: number) => request<TaskDetail>(`/api/workflow/tasks/${id}`),
  steps: (id: number, signal?: AbortSignal) =>
    request<{ steps: Step[] }>(`/api/workflow/tasks/${id}/steps`, { signal }),
  progress: (id: number) =>
    request<{ steps: StepProgress[] }>(`/api/workflow/tasks/${id}/progress`),
  metrics: (id: number) =>
    request<{ metrics: Metric[] }>(`/api/workflow/tasks/${id}/metrics`),
  approvals: (id: number) =>
    request<{ approvals: Approval[] }>(`/api/workflow/tasks/${id}/approvals`),
  approve: (id: number, step: string, comment: string) =>
    request<Task>(`/api/workflow/tasks/${id}/steps/${enc(step)}/approve`, {
      method: 'POST',
      body: { comment },
    }),
  reject: (id: number, step: string, comment: string) =>
    request<Task>(`/api/workflow/tasks/${id}/steps/${enc(step)}/reject`, {
      method: 'POST',
      body: { comment },
    }),
  pause: (id: number) => request<Task>(`/api/workflow/tasks/${id}/pause`, { method: 'POST' }),
  resume: (id: number) => request<Task>(`/api/workflow/tasks/${id}/resume`, { method: 'POST' }),
  retry: (id: number) => request<Task>(`/api/workflow/tasks/${id}/retry`, { method: 'POST' }),
  /** Changes a not-yet-completed step's parameters (a JSON merge patch) of a paused or
   * failed task. */
  stepParams: (id: number, step: string, patch: Record<string, unknown>) =>
    request<Task>(`/api/workflow/tasks/${id}/steps/${enc(step)}/params`, {
      method: 'PATCH',
      body: patch,
    }),
  cancel: (id: number) => request<Task>(`/api/workflow/tasks/${id}`, { method: 'DELETE' }),
  agents: () => request<{ agents: Agent[] }>('/api/agents'),
  queue: () => request<{ steps: QueuedStep[] }>('/api/queue'),
  schedules: () => request<{ schedules: Schedule[] }>('/api/schedules'),
  schedule: (name: string) => request<ScheduleDetail>(`/api/schedules/${enc(name)}`),
  pauseSchedule: (name: string) =>
    request<Schedule>(`/api/schedules/${enc(name)}/pause`, { method: 'POST' }),
  resumeSchedule: (name: string) =>
    request<Schedule>(`/api/schedules/${enc(name)}/resume`, { method: 'POST' }),
  deleteSchedule: (name: string) =>
    request<Schedule>(`/api/schedules/${enc(name)}`, { method: 'DELETE' }),
  backfills: (schedule: string) =>
    request<{ backfills: Backfill[] }>(`/api/backfills?schedule=${enc(schedule)}`),
  /** Starts a backfill, or with `dry_run` lists the runs it would create. */
  backfill: (body: BackfillRequest) =>
    request<BackfillResult>('/api/backfills', { method: 'POST', body }),
  cancelBackfill: (id: number) =>
    request<Backfill>(`/api/backfills/${id}/cancel`, { method: 'POST' }),
  workflows: () => request<{ workflows: Workflow[] }>('/api/workflows'),
  workflow: (name: string) => request<Workflow>(`/api/workflows/${enc(name)}`),
};

/** The WebSocket URL of a task's live stream, from the line after `afterId`. */
export function streamUrl(id: number, afterId: number): string {
  const proto = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${window.location.host}/api/workflow/tasks/${id}/logs/stream?after_id=${afterId}`;
}

/** Whether the caller holds `role` (admin holds every role). */
export function hasRole(me: WhoAmI | null, role: string): boolean {
  if (!me) return false;
  return me.roles.includes('admin') || me.roles.includes(role);
}
