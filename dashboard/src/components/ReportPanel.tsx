// The report of the pipeline's monitor stage (seed 000 stage 5): the monitor step sends it
// as its progress document when it writes it on the training host. Headline figures, the
// training epochs and the transfers as tables, and the whole document for whoever wants it.
import type { Step } from '../api';
import { formatBytes, formatDuration } from '../format';
import { asObject, finiteNumber, objects, type JsonObject } from '../json';

function fixed(v: unknown, digits: number): string {
  const n = finiteNumber(v);
  return n === null ? '—' : n.toFixed(digits);
}

export function reportOf(steps: Step[]): { step: string; path?: string; report: JsonObject } | null {
  for (const s of steps) {
    if (s.kind !== 'monitor') continue;
    const p = asObject(s.progress);
    const report = asObject(p?.report);
    if (report) {
      return { step: s.name, path: typeof p?.report_path === 'string' ? p.report_path : undefined, report };
    }
  }
  return null;
}

export function ReportPanel({ steps }: { steps: Step[] }) {
  const found = reportOf(steps);
  if (!found) return null;
  const { report } = found;
  const training = asObject(report.training);
  const inference = asObject(report.inference);
  const epochs = objects(training?.epochs);
  const columns = [...new Set(epochs.flatMap((e) => Object.keys(e)))].filter((k) => k !== 'epoch').sort();
  const transfers = objects(report.transfers);
  const total = finiteNumber(report.total_seconds);
  return (
    <section className="panel" aria-labelledby="report-h" data-testid="report">
      <h2 id="report-h">Report</h2>
      <dl className="facts">
        <dt>Total time</dt>
        <dd>{total === null ? '—' : formatDuration(total * 1000)}</dd>
        <dt>Best validation AUC</dt>
        <dd>{fixed(training?.best_val_auc, 4)}</dd>
        <dt>Inference</dt>
        <dd>
          {finiteNumber(inference?.rows) === null
            ? '—'
            : `${fixed(inference?.rows, 0)} rows at ${fixed(inference?.rows_per_sec, 0)} rows/s`}
        </dd>
        {found.path && (
          <>
            <dt>Written to</dt>
            <dd>
              <code>{found.path}</code> (by step {found.step})
            </dd>
          </>
        )}
      </dl>
      {epochs.length > 0 && (
        <div className="table-wrap">
          <table aria-label="Training epochs">
            <thead>
              <tr>
                <th scope="col">Epoch</th>
                {columns.map((c) => (
                  <th scope="col" key={c}>
                    {c}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {epochs.map((e) => (
                <tr key={String(e.epoch)}>
                  <th scope="row">{String(e.epoch)}</th>
                  {columns.map((c) => (
                    <td className="num" key={c}>
                      {fixed(e[c], finiteNumber(e[c]) !== null && Math.abs(finiteNumber(e[c]) ?? 0) >= 100 ? 0 : 4)}
                    </td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {transfers.length > 0 && (
        <div className="table-wrap">
          <table aria-label="Transfers">
            <thead>
              <tr>
                <th scope="col">Transfer</th>
                <th scope="col">Size</th>
                <th scope="col">Time</th>
                <th scope="col">Chunks verified</th>
                <th scope="col">Re-sent</th>
              </tr>
            </thead>
            <tbody>
              {transfers.map((t) => (
                <tr key={String(t.step)}>
                  <th scope="row">{String(t.step)}</th>
                  <td className="num">{finiteNumber(t.bytes) === null ? '—' : formatBytes(finiteNumber(t.bytes) ?? 0)}</td>
                  <td className="num">{finiteNumber(t.seconds) === null ? '—' : `${fixed(t.seconds, 1)} s`}</td>
                  <td className="num">
                    {fixed(t.chunks_verified, 0)} of {fixed(t.chunks_total, 0)}
                    {t.verified === true ? ' ✓' : ''}
                  </td>
                  <td className="num">{fixed(t.chunks_resent, 0)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <details>
        <summary>The whole report (JSON)</summary>
        <pre className="report-json">{JSON.stringify(report, null, 2)}</pre>
      </details>
    </section>
  );
}
