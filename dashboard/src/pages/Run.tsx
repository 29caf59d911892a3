import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import {
  api,
  ApiError,
  hasRole,
  streamUrl,
  type Approval,
  type LogLine,
  type StepProgress,
  type StreamMessage,
  type Step,
  type TaskDetail,
} from '../api';
import { ApprovalCard } from '../components/ApprovalCard';
import { Dag } from '../components/Dag';
import { LogPanel } from '../components/LogPanel';
import { MetricsPanel } from '../components/MetricsPanel';
import { Outputs } from '../components/Outputs';
import { ProgressPanel } from '../components/progress';
import { ReportPanel } from '../components/ReportPanel';
import { RetryWithParams } from '../components/RetryWithParams';
import { StepsTable } from '../components/StepsTable';
import { Timeline } from '../components/Timeline';
import { duration, formatTime } from '../format';
import { Link } from '../router';
import { useSession } from '../session';
import { Icon, isTerminal, StatusBadge } from '../status';

/** Log lines kept in the page; older ones are dropped (the API keeps them all). */
const MAX_LINES = 50_000;
/** While the run is under way, the task is re-read this often (pauses by others, attempts). */
const REFRESH_MS = 5000;

type Conn = 'connecting' | 'live' | 'reconnecting' | 'ended';

interface Live {
  status: string;
  progress?: unknown;
  /** When it arrived (see `liveSeq`). */
  seq: number;
}

export function RunPage({ id }: { id: number }) {
  const { me } = useSession();
  const [detail, setDetail] = useState<TaskDetail | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [live, setLive] = useState<Record<string, Live>>({});
  const [lines, setLines] = useState<LogLine[]>([]);
  const [dropped, setDropped] = useState(0);
  const [chunks, setChunks] = useState<Record<string, StepProgress>>({});
  const [approvals, setApprovals] = useState<Approval[]>([]);
  const [conn, setConn] = useState<Conn>('connecting');
  const [streamError, setStreamError] = useState<string | null>(null);
  const [focus, setFocus] = useState('');
  const [now, setNow] = useState(Date.now());
  // Bumped when a finished run starts again (retry, resume): the ended stream is reopened.
  const [streamEpoch, setStreamEpoch] = useState(0);

  // Streamed states are numbered as they arrive; a read of the task replaces only those that
  // arrived before it was asked for, and an answer older than one already applied is dropped.
  const liveSeq = useRef(0);
  const readSeq = useRef({ asked: 0, applied: 0 });
  const loadDetail = useCallback(async () => {
    const mark = liveSeq.current;
    const read = ++readSeq.current.asked;
    try {
      const d = await api.task(id);
      if (read < readSeq.current.applied) return;
      readSeq.current.applied = read;
      // Rows that did not change keep their objects (see `steps` below).
      setDetail((old) => {
        if (!old || old.task_id !== d.task_id) return d;
        const before = new Map(old.steps.map((s) => [s.name, s]));
        const steps = d.steps.map((s) => {
          const o = before.get(s.name);
          return o && sameStep(o, s) ? o : s;
        });
        return { ...d, steps };
      });
      setError(null);
      // The stored states are newer than any state message received before they were read.
      setLive((l) => {
        const kept = Object.entries(l).filter(([, v]) => v.seq > mark);
        return kept.length === Object.keys(l).length ? l : Object.fromEntries(kept);
      });
      if (d.steps.some((s) => s.status === 'awaiting_approval')) {
        setApprovals((await api.approvals(id)).approvals);
      } else {
        setApprovals([]);
      }
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    }
  }, [id]);

  const loadChunks = useCallback(async () => {
    try {
      const p = await api.progress(id);
      setChunks(Object.fromEntries(p.steps.map((s) => [s.step, s])));
    } catch {
      // progress is a nicety; the stream carries the rest
    }
  }, [id]);

  // Re-reads coalesced: many messages in a burst cause one request.
  const timers = useRef<{ detail?: number; chunks?: number }>({});
  const soonDetail = useCallback(() => {
    if (timers.current.detail !== undefined) return;
    timers.current.detail = window.setTimeout(() => {
      timers.current.detail = undefined;
      void loadDetail();
    }, 250);
  }, [loadDetail]);
  const soonChunks = useCallback(() => {
    if (timers.current.chunks !== undefined) return;
    timers.current.chunks = window.setTimeout(() => {
      timers.current.chunks = undefined;
      void loadChunks();
    }, 1500);
  }, [loadChunks]);

  useEffect(() => {
    setDetail(null);
    setLines([]);
    setDropped(0);
    setLive({});
    void loadDetail();
    void loadChunks();
    const t = timers.current;
    return () => {
      window.clearTimeout(t.detail);
      window.clearTimeout(t.chunks);
      t.detail = undefined;
      t.chunks = undefined;
    };
  }, [loadDetail, loadChunks]);

  // The live stream: log lines, step states and progress, then the end state. A dropped
  // connection is reopened from the last line received.
  const handlers = useRef({ soonDetail, soonChunks });
  handlers.current = { soonDetail, soonChunks };
  useEffect(() => {
    let ws: WebSocket | null = null;
    let stopped = false;
    let ended = false;
    let lastId = 0;
    let attempt = 0;
    let retryTimer: number | undefined;
    let pending: LogLine[] = [];
    // Step states and progress documents, newest per step, applied with the lines: a burst
    // (a wide fan-out finishing, the history of a big run) is one render, not one per message.
    let pendingLive: Record<string, { status?: string; progress?: unknown }> = {};
    let liveChanged = false;
    let progressChanged = false;
    let flushTimer: number | undefined;

    const flush = () => {
      flushTimer = undefined;
      if (liveChanged) {
        const changes = pendingLive;
        pendingLive = {};
        liveChanged = false;
        const seq = ++liveSeq.current;
        setLive((l) => {
          const next = { ...l };
          for (const [step, c] of Object.entries(changes)) {
            const old = next[step];
            next[step] = {
              status: c.status ?? old?.status ?? '',
              progress: c.progress !== undefined ? c.progress : old?.progress,
              seq,
            };
          }
          return next;
        });
        handlers.current.soonDetail();
      }
      if (progressChanged) {
        progressChanged = false;
        handlers.current.soonChunks();
      }
      const batch = pending;
      pending = [];
      if (batch.length === 0) return;
      setLines((old) => {
        const all = old.concat(batch);
        if (all.length <= MAX_LINES) return all;
        const cut = all.length - MAX_LINES;
        setDropped((d) => d + cut);
        return all.slice(cut);
      });
    };

    const onMessage = (msg: StreamMessage) => {
      switch (msg.type) {
        case 'log':
          if (msg.id <= lastId) return;
          lastId = msg.id;
          pending.push(msg);
          if (flushTimer === undefined) flushTimer = window.setTimeout(flush, 100);
          break;
        case 'step':
          pendingLive[msg.step] = {
            status: msg.status,
            progress: msg.progress ?? pendingLive[msg.step]?.progress,
          };
          liveChanged = true;
          if (msg.progress !== undefined) progressChanged = true;
          if (flushTimer === undefined) flushTimer = window.setTimeout(flush, 100);
          break;
        case 'progress':
          pendingLive[msg.step] = { ...pendingLive[msg.step], progress: msg.progress };
          liveChanged = true;
          progressChanged = true;
          if (flushTimer === undefined) flushTimer = window.setTimeout(flush, 100);
          break;
        case 'end':
          ended = true;
          flush();
          setConn('ended');
          handlers.current.soonDetail();
          handlers.current.soonChunks();
          break;
        case 'error':
          setStreamError(msg.message);
          break;
      }
    };

    const connect = () => {
      setConn(attempt === 0 ? 'connecting' : 'reconnecting');
      const sock = new WebSocket(streamUrl(id, lastId));
      ws = sock;
      sock.onopen = () => {
        attempt = 0;
        setConn('live');
        setStreamError(null);
      };
      sock.onmessage = (ev) => {
        if (typeof ev.data !== 'string') return;
        try {
          onMessage(JSON.parse(ev.data) as StreamMessage);
        } catch {
          // a frame that is not JSON is ignored
        }
      };
      sock.onclose = () => {
        if (stopped || ended) return;
        setConn('reconnecting');
        const delay = Math.min(10_000, 500 * 2 ** attempt);
        attempt += 1;
        retryTimer = window.setTimeout(connect, delay);
      };
    };
    connect();
    return () => {
      stopped = true;
      window.clearTimeout(retryTimer);
      window.clearTimeout(flushTimer);
      ws?.close();
    };
  }, [id, streamEpoch]);

  const terminal = detail ? isTerminal(detail.status) : false;
  const wasTerminal = useRef<boolean | null>(null);
  useEffect(() => {
    if (!detail) return;
    if (wasTerminal.current === true && !terminal) {
      // The stream ended with the run; it is read again from its first line.
      setLines([]);
      setDropped(0);
      setStreamEpoch((e) => e + 1);
    }
    wasTerminal.current = terminal;
  }, [detail, terminal]);
  useEffect(() => {
    wasTerminal.current = null;
  }, [id]);
  // After a retry or resume from this page: a run that ended may finish again before the
  // next read of its state, so its stream is reopened at once.
  const restarted = useCallback(() => {
    if (!wasTerminal.current) return;
    setLines([]);
    setDropped(0);
    setStreamEpoch((e) => e + 1);
  }, []);
  useEffect(() => {
    if (terminal) return;
    const t = window.setInterval(() => {
      setNow(Date.now());
      void loadDetail();
    }, REFRESH_MS);
    return () => window.clearInterval(t);
  }, [terminal, loadDetail]);

  // Stored steps with the newest streamed states over them. A step whose stored row and
  // streamed state did not change keeps its object, so its row and node are not drawn again.
  const merged = useRef(new Map<string, { s: Step; l: Live; m: Step }>());
  const steps = useMemo(() => {
    const cache = merged.current;
    const next = new Map<string, { s: Step; l: Live; m: Step }>();
    const out = (detail?.steps ?? []).map((s) => {
      const l = live[s.name];
      if (!l) return s;
      const hit = cache.get(s.name);
      const m =
        hit && hit.s === s && hit.l === l
          ? hit.m
          : {
              ...s,
              status: l.status || s.status,
              progress: l.progress !== undefined ? l.progress : s.progress,
            };
      next.set(s.name, { s, l, m });
      return m;
    });
    merged.current = next;
    return out;
  }, [detail, live]);

  // Changes when a step's state or progress moves, so the curves are re-read then too.
  const metricsVersion = useMemo(
    () =>
      steps
        .map((s) => {
          const d = s.progress as { epoch?: unknown } | null | undefined;
          return `${s.status}:${d && typeof d === 'object' ? String(d.epoch ?? '') : ''}`;
        })
        .join(',') + `|${detail?.completed_steps ?? 0}`,
    [steps, detail],
  );

  if (!detail) {
    return (
      <main className="page">
        <p>
          <Link href="/runs">← Runs</Link>
        </p>
        {error ? (
          <p className="error" role="alert">
            {error}
          </p>
        ) : (
          <p>Loading…</p>
        )}
      </main>
    );
  }

  return (
    <main className="page run">
      <p>
        <Link href="/runs">← Runs</Link>
      </p>
      <div className="run-head">
        <h1>
          {detail.name} <span className="muted">#{detail.task_id}</span>
        </h1>
        <StatusBadge status={detail.status} />
        <StreamState conn={conn} />
      </div>
      {detail.status_reason && <p className="reason">{detail.status_reason}</p>}
      <dl className="facts">
        <dt>Workflow</dt>
        <dd>{detail.workflow}</dd>
        <dt>Created</dt>
        <dd>{formatTime(detail.created_at)}</dd>
        <dt>Started</dt>
        <dd>{formatTime(detail.started_at)}</dd>
        <dt>Duration</dt>
        <dd>{duration(detail.started_at, detail.completed_at, now)}</dd>
        <dt>Steps done</dt>
        <dd>
          {detail.completed_steps} of {detail.total_steps}
        </dd>
      </dl>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {streamError && (
        <p className="error" role="alert">
          Live stream: {streamError}
        </p>
      )}
      {hasRole(me, 'operator') && (
        <Actions
          task={detail}
          steps={steps}
          held={steps.some((s) => s.status === 'awaiting_approval')}
          onDone={loadDetail}
          onRestarted={restarted}
        />
      )}
      {approvals.map((a) => (
        <ApprovalCard
          key={a.step}
          approval={a}
          canDecide={hasRole(me, 'approver')}
          onDecided={loadDetail}
        />
      ))}
      <section className="panel" aria-labelledby="dag-h">
        <h2 id="dag-h">Steps</h2>
        <Dag steps={steps} focus={focus} onSelect={setFocus} />
        <StepsTable steps={steps} focus={focus} onSelect={setFocus} now={now} />
      </section>
      <Timeline task={detail} steps={steps} now={now} focus={focus} onSelect={setFocus} />
      <ProgressPanel steps={steps} chunks={chunks} />
      <MetricsPanel taskId={detail.task_id} running={!terminal} version={metricsVersion} />
      <ReportPanel steps={steps} />
      <Outputs taskId={detail.task_id} status={detail.status} steps={steps} />
      <LogPanel lines={lines} dropped={dropped} steps={steps} step={focus} onStep={setFocus} />
    </main>
  );
}

function StreamState({ conn }: { conn: Conn }) {
  const text = {
    connecting: 'Connecting…',
    live: 'Live',
    reconnecting: 'Reconnecting…',
    ended: 'Finished',
  }[conn];
  return (
    <span className={`stream stream-${conn}`} data-testid="stream-state">
      {text}
    </span>
  );
}

/** Pause, resume, retry and cancel, as the task's state allows (operators only). */
function Actions({
  task,
  steps,
  held,
  onDone,
  onRestarted,
}: {
  task: TaskDetail;
  steps: Step[];
  held: boolean;
  onDone: () => void;
  onRestarted: () => void;
}) {
  const [busy, setBusy] = useState(false);
  const [confirmCancel, setConfirmCancel] = useState(false);
  const [editing, setEditing] = useState(false);
  const openerRef = useRef<HTMLButtonElement>(null);
  const [error, setError] = useState<string | null>(null);
  const run = async (f: () => Promise<unknown>) => {
    setBusy(true);
    setError(null);
    try {
      await f();
      onDone();
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    } finally {
      setBusy(false);
      setConfirmCancel(false);
    }
  };
  const id = task.task_id;
  const s = task.status;
  // Parameters change only while the task is failed, or paused (not held for an approval).
  const canEdit = s === 'failed' || (s === 'paused' && !held);
  const closeEditor = () => {
    setEditing(false);
    window.setTimeout(() => openerRef.current?.focus(), 0);
  };
  return (
    <>
      <div className="actions" role="group" aria-label="Run actions" data-testid="actions">
        {s === 'running' && (
          <button type="button" disabled={busy} onClick={() => run(() => api.pause(id))}>
            <Icon name="pause" /> Pause
          </button>
        )}
        {/* A task held for an approval resumes through the decision, not this button. */}
        {s === 'paused' && !held && (
          <button type="button" disabled={busy} onClick={() => run(() => api.resume(id))}>
            <Icon name="play" /> Resume
          </button>
        )}
        {(s === 'failed' || s === 'cancelled') && (
          <button type="button" disabled={busy} onClick={() => run(() => api.retry(id).then(onRestarted))}>
            Retry failed steps
          </button>
        )}
        {canEdit && (
          <button
            type="button"
            ref={openerRef}
            aria-expanded={editing}
            onClick={() => setEditing((e) => !e)}
          >
            {s === 'paused' ? 'Resume' : 'Retry'} with changed parameters…
          </button>
        )}
        {!isTerminal(s) &&
          (confirmCancel ? (
            <span className="confirm">
              Cancel this run? Running steps are stopped.
              <button
                type="button"
                className="danger"
                disabled={busy}
                onClick={() => run(() => api.cancel(id))}
              >
                Yes, cancel the run
              </button>
              <button type="button" disabled={busy} onClick={() => setConfirmCancel(false)}>
                No
              </button>
            </span>
          ) : (
            <button type="button" className="danger" onClick={() => setConfirmCancel(true)}>
              <Icon name="slash" /> Cancel…
            </button>
          ))}
        {error && (
          <p className="error" role="alert">
            {error}
          </p>
        )}
      </div>
      {canEdit && editing && (
        <RetryWithParams
          task={task}
          steps={steps}
          onDone={() => {
            onRestarted();
            onDone();
          }}
          onClose={closeEditor}
        />
      )}
    </>
  );
}

/** Whether two reads of a step are the same (its fields are plain JSON). */
function sameStep(a: Step, b: Step): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
