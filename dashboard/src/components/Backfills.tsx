// A schedule's backfills with their progress (done, running, failed, left) and, for
// operators, cancel and a form that starts one: a dry run lists the dates it would create,
// then the same values start it. The server checks every value; the field its error names
// shows the message.
import { type FormEvent, useState } from 'react';
import { api, ApiError, type Backfill } from '../api';
import { formatTime } from '../format';
import { StatusBadge } from '../status';
import { Field, type FieldError } from './Field';

const REPROCESS: [string, string][] = [
  ['missing', 'Missing dates'],
  ['failed', 'Missing and failed'],
  ['all', 'All dates'],
];
const FORM_FIELDS = ['start', 'end', 'max_active', 'reprocess'];
/** Dates listed by a dry run before the rest are counted. */
const SHOWN_DATES = 60;

export function Backfills({
  schedule,
  backfills,
  canOperate,
  onChanged,
}: {
  schedule: string;
  backfills: Backfill[] | null;
  canOperate: boolean;
  onChanged: () => void;
}) {
  return (
    <section className="panel" aria-labelledby="backfills-h">
      <h2 id="backfills-h">Backfills</h2>
      {backfills === null ? (
        <p>Loading…</p>
      ) : backfills.length === 0 ? (
        <p>No backfill of this schedule.</p>
      ) : (
        <div className="table-wrap">
          <table data-testid="backfills">
            <thead>
              <tr>
                <th scope="col">ID</th>
                <th scope="col">Dates</th>
                <th scope="col">Status</th>
                <th scope="col">Progress</th>
                <th scope="col">At once</th>
                <th scope="col">Reprocess</th>
                <th scope="col">Created</th>
                {canOperate && <th scope="col">Actions</th>}
              </tr>
            </thead>
            <tbody>
              {backfills.map((b) => (
                <tr key={b.id} data-testid={`backfill-${b.id}`}>
                  <td className="num">{b.id}</td>
                  <td>
                    {b.start} to {b.end}
                    {b.reverse && <span className="muted"> (newest first)</span>}
                  </td>
                  <td>
                    <StatusBadge status={b.status} />
                  </td>
                  <td>
                    <BackfillProgress b={b} />
                  </td>
                  <td className="num">{b.max_active}</td>
                  <td>{b.reprocess}</td>
                  <td>{formatTime(b.created_at)}</td>
                  {canOperate && (
                    <td>{b.status === 'running' && <CancelBackfill id={b.id} onDone={onChanged} />}</td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {canOperate && <BackfillForm schedule={schedule} onStarted={onChanged} />}
    </section>
  );
}

/** One bar in four parts, with the numbers in words beside it. */
function BackfillProgress({ b }: { b: Backfill }) {
  const total = b.done + b.running + b.failed + b.left;
  const text = `${b.done} done, ${b.running} running, ${b.failed} failed, ${b.left} left`;
  const part = (n: number, cls: string) =>
    n > 0 ? <span className={`bf-${cls}`} style={{ flexGrow: n }} /> : null;
  return (
    <span className="bf-progress">
      <span className="bf-bar" role="img" aria-label={`${text} of ${total}`}>
        {part(b.done, 'done')}
        {part(b.running, 'running')}
        {part(b.failed, 'failed')}
        {part(b.left, 'left')}
      </span>
      <span className="bf-text">{text}</span>
    </span>
  );
}

function CancelBackfill({ id, onDone }: { id: number; onDone: () => void }) {
  const [confirm, setConfirm] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const cancel = async () => {
    setBusy(true);
    setError(null);
    try {
      await api.cancelBackfill(id);
      onDone();
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    } finally {
      setBusy(false);
      setConfirm(false);
    }
  };
  return (
    <>
      {confirm ? (
        <span className="confirm">
          Its running tasks are cancelled.
          <button type="button" className="danger" disabled={busy} onClick={cancel}>
            Yes, cancel backfill {id}
          </button>
          <button type="button" disabled={busy} onClick={() => setConfirm(false)}>
            No
          </button>
        </span>
      ) : (
        <button type="button" className="danger" onClick={() => setConfirm(true)}>
          Cancel…
        </button>
      )}
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
    </>
  );
}

interface Form {
  start: string;
  end: string;
  max_active: string;
  reprocess: string;
}

/** The dates of a dry run, each with its number of runs (several a day on a sub-daily
 * cadence), in the order they would run. */
function datesOf(runs: string[]): [string, number][] {
  const out: [string, number][] = [];
  for (const ds of runs) {
    const last = out[out.length - 1];
    if (last && last[0] === ds) last[1] += 1;
    else out.push([ds, 1]);
  }
  return out;
}

function BackfillForm({ schedule, onStarted }: { schedule: string; onStarted: () => void }) {
  const [form, setForm] = useState<Form>({ start: '', end: '', max_active: '1', reprocess: 'missing' });
  const [error, setError] = useState<FieldError | null>(null);
  const [busy, setBusy] = useState(false);
  /** The dry run of the form's current values. */
  const [preview, setPreview] = useState<string[] | null>(null);
  const [started, setStarted] = useState<string | null>(null);

  const set = (k: keyof Form) => (e: { target: { value: string } }) => {
    setForm((f) => ({ ...f, [k]: e.target.value }));
    setPreview(null);
    setStarted(null);
  };

  const send = async (dryRun: boolean) => {
    setError(null);
    setStarted(null);
    const max = Number(form.max_active);
    if (!Number.isInteger(max) || max < 1) {
      setError({ field: 'max_active', message: 'a whole number, at least 1' });
      return;
    }
    setBusy(true);
    try {
      const out = await api.backfill({
        schedule,
        start: form.start,
        end: form.end,
        max_active: max,
        reprocess: form.reprocess,
        dry_run: dryRun,
      });
      if (dryRun) {
        setPreview(out.runs);
      } else {
        setPreview(null);
        const n = out.runs.length;
        setStarted(
          `Backfill ${out.backfill?.id ?? ''} started: ${n} run${n === 1 ? '' : 's'} to create.`,
        );
        onStarted();
      }
    } catch (err) {
      setPreview(null);
      if (err instanceof ApiError) setError({ field: err.field, message: err.message });
      else setError({ message: String(err) });
    } finally {
      setBusy(false);
    }
  };

  const dryRun = (e: FormEvent) => {
    e.preventDefault();
    void send(true);
  };
  const unplaced = error && (!error.field || !FORM_FIELDS.includes(error.field));
  const dates = preview ? datesOf(preview) : [];

  return (
    <form className="backfill-form" onSubmit={dryRun} noValidate aria-label="Backfill">
      <h3>Backfill</h3>
      <p className="hint">
        Runs the schedule once per logical date between the two dates (in its zone, both
        included). A dry run lists the dates first.
      </p>
      <div className="form-grid compact">
        <Field label="Start" name="start" error={error}>
          {(p) => <input {...p} type="date" value={form.start} onChange={set('start')} required />}
        </Field>
        <Field label="End" name="end" error={error}>
          {(p) => <input {...p} type="date" value={form.end} onChange={set('end')} required />}
        </Field>
        <Field label="Max at once" name="max_active" error={error}>
          {(p) => (
            <input
              {...p}
              type="number"
              min={1}
              inputMode="numeric"
              value={form.max_active}
              onChange={set('max_active')}
            />
          )}
        </Field>
        <Field
          label="Reprocess"
          name="reprocess"
          error={error}
          hint="dates without a run; or also those whose run failed; or every date again"
        >
          {(p) => (
            <select {...p} value={form.reprocess} onChange={set('reprocess')}>
              {REPROCESS.map(([v, text]) => (
                <option key={v} value={v}>
                  {text}
                </option>
              ))}
            </select>
          )}
        </Field>
      </div>
      {unplaced && (
        <p className="error" role="alert">
          {error?.message}
        </p>
      )}
      {preview && (
        <div className="dry-run" data-testid="backfill-dry-run" aria-live="polite">
          {preview.length === 0 ? (
            <p>Nothing to create: every date in the range already has a run this setting keeps.</p>
          ) : (
            <>
              <p>
                It would create {preview.length} run{preview.length === 1 ? '' : 's'} on{' '}
                {dates.length} date{dates.length === 1 ? '' : 's'}:
              </p>
              <ol className="dates">
                {dates.slice(0, SHOWN_DATES).map(([ds, n]) => (
                  <li key={ds}>
                    {ds}
                    {n > 1 && <span className="muted"> ({n} runs)</span>}
                  </li>
                ))}
              </ol>
              {dates.length > SHOWN_DATES && (
                <p className="muted">and {dates.length - SHOWN_DATES} more dates</p>
              )}
            </>
          )}
        </div>
      )}
      {started && (
        <p className="notice" role="status">
          {started}
        </p>
      )}
      <div className="actions">
        <button type="submit" disabled={busy}>
          {busy ? 'Working…' : 'Dry run'}
        </button>
        <button
          type="button"
          className="primary"
          disabled={busy || !preview || preview.length === 0}
          onClick={() => void send(false)}
        >
          Start the backfill
        </button>
        {!preview && <span className="hint">A dry run of these values comes first.</span>}
      </div>
    </form>
  );
}
