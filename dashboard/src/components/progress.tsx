// A step's progress document (bytes, chunks, ETA, epochs), read leniently: agents of
// different kinds report different fields.
import type { Step, StepProgress } from '../api';
import { formatBytes } from '../format';
import { asObject, type JsonObject } from '../json';

type Doc = JsonObject;

function num(d: Doc, ...keys: string[]): number | null {
  for (const k of keys) {
    const v = d[k];
    if (typeof v === 'number' && Number.isFinite(v)) return v;
  }
  return null;
}

function str(d: Doc, ...keys: string[]): string | null {
  for (const k of keys) {
    const v = d[k];
    if (typeof v === 'string' && v) return v;
  }
  return null;
}

/** A percentage the document states or implies, if any. */
export function progressPercent(p: unknown): number | null {
  const d = asObject(p);
  if (!d) return null;
  const pct = num(d, 'percent');
  if (pct !== null) return Math.max(0, Math.min(100, Math.round(pct)));
  const done = num(d, 'bytes_done');
  const total = num(d, 'bytes_total');
  if (done !== null && total) return Math.round((100 * done) / total);
  return null;
}

interface Bar {
  label: string;
  value: number;
  max: number;
  text: string;
}

function bars(step: Step, chunks: StepProgress | undefined): { bars: Bar[]; notes: string[] } {
  const out: Bar[] = [];
  const notes: string[] = [];
  const d = asObject(step.progress);
  if (d) {
    const done = num(d, 'bytes_done');
    const total = num(d, 'bytes_total');
    if (done !== null && total) {
      const pct = Math.round((100 * done) / total);
      out.push({
        label: 'Bytes',
        value: done,
        max: total,
        text: `${formatBytes(done)} of ${formatBytes(total)} (${pct}%)`,
      });
    } else {
      const pct = num(d, 'percent');
      if (pct !== null) out.push({ label: 'Progress', value: pct, max: 100, text: `${pct}%` });
    }
    const epoch = num(d, 'epoch');
    const epochs = num(d, 'epochs', 'total_epochs');
    if (epoch !== null && epochs) {
      out.push({ label: 'Epochs', value: epoch, max: epochs, text: `${epoch} of ${epochs}` });
    }
    const phase = str(d, 'phase');
    const rate = str(d, 'rate');
    const eta = str(d, 'eta');
    if (phase) notes.push(`phase ${phase}`);
    if (rate) notes.push(rate);
    if (eta) notes.push(`ETA ${eta}`);
  }
  const ct = chunks?.chunks_total || (d && num(d, 'chunks_total')) || 0;
  if (ct > 0) {
    const cd = chunks?.chunks_completed ?? (d && num(d, 'chunks_completed')) ?? 0;
    const failed = chunks?.chunks_failed ?? 0;
    const retries = chunks?.chunk_retries ?? 0;
    let text = `${cd} of ${ct} chunks verified`;
    if (failed) text += `, ${failed} failed`;
    if (retries) text += `, ${retries} re-sent`;
    out.push({ label: 'Chunks', value: cd, max: ct, text });
  }
  return { bars: out, notes };
}

/** Progress bars of the steps that report any. */
export function ProgressPanel({
  steps,
  chunks,
}: {
  steps: Step[];
  chunks: Record<string, StepProgress>;
}) {
  const rows = steps
    .map((s) => ({ step: s, ...bars(s, chunks[s.name]) }))
    .filter((r) => r.bars.length > 0);
  if (rows.length === 0) return null;
  return (
    <section aria-labelledby="progress-h" className="panel">
      <h2 id="progress-h">Progress</h2>
      <ul className="progress-list">
        {rows.map((r) => (
          <li key={r.step.name} data-testid={`progress-${r.step.name}`}>
            <div className="progress-step">
              <strong>{r.step.name}</strong>
              {r.notes.length > 0 && <span className="muted"> · {r.notes.join(' · ')}</span>}
            </div>
            {r.bars.map((b) => (
              <div key={b.label} className="bar">
                <span className="bar-label">{b.label}</span>
                <progress
                  value={b.value}
                  max={b.max}
                  aria-label={`${r.step.name} ${b.label.toLowerCase()}`}
                />
                <span className="bar-text">{b.text}</span>
              </div>
            ))}
          </li>
        ))}
      </ul>
    </section>
  );
}
