import { useState } from 'react';
import { api, ApiError, type Approval } from '../api';
import { Icon } from '../status';

function previewTable(rows: unknown[]) {
  if (rows.length === 0) return <p className="muted">No preview rows.</p>;
  const objects = rows.every((r) => r && typeof r === 'object' && !Array.isArray(r));
  const cell = (v: unknown) =>
    v === null || v === undefined ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
  if (objects) {
    const cols = [...new Set(rows.flatMap((r) => Object.keys(r as object)))];
    return (
      <table className="preview">
        <thead>
          <tr>
            {cols.map((c) => (
              <th key={c} scope="col">
                {c}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((r, i) => (
            <tr key={i}>
              {cols.map((c) => (
                <td key={c}>{cell((r as Record<string, unknown>)[c])}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    );
  }
  return (
    <table className="preview">
      <tbody>
        {rows.map((r, i) => (
          <tr key={i}>
            {(Array.isArray(r) ? r : [r]).map((v, j) => (
              <td key={j}>{cell(v)}</td>
            ))}
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** A step held for a person's decision: what it would write, and approve/reject. */
export function ApprovalCard({
  approval,
  canDecide,
  onDecided,
}: {
  approval: Approval;
  canDecide: boolean;
  onDecided: () => void;
}) {
  const [comment, setComment] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const id = `approval-${approval.step}`;

  const decide = async (approve: boolean) => {
    setBusy(true);
    setError(null);
    try {
      if (approve) await api.approve(approval.task_id, approval.step, comment);
      else await api.reject(approval.task_id, approval.step, comment);
      onDecided();
    } catch (e) {
      setError(e instanceof ApiError ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section className="approval" aria-labelledby={`${id}-h`} data-testid={id}>
      <h2 id={`${id}-h`}>
        <Icon name="flag" /> Step “{approval.step}” awaits approval
      </h2>
      <dl className="facts">
        <dt>Table</dt>
        <dd>{approval.table ?? '—'}</dd>
        <dt>Partition</dt>
        <dd>{approval.partition ?? '—'}</dd>
      </dl>
      <h3>First rows it would write</h3>
      <div className="table-wrap">{previewTable(approval.preview)}</div>
      {canDecide ? (
        <form onSubmit={(e) => e.preventDefault()}>
          <label htmlFor={`${id}-comment`}>Comment (recorded with the decision)</label>
          <textarea
            id={`${id}-comment`}
            rows={2}
            value={comment}
            onChange={(e) => setComment(e.target.value)}
          />
          {error && (
            <p className="error" role="alert">
              {error}
            </p>
          )}
          <div className="buttons">
            <button type="button" className="primary" disabled={busy} onClick={() => decide(true)}>
              Approve
            </button>
            <button type="button" className="danger" disabled={busy} onClick={() => decide(false)}>
              Reject
            </button>
          </div>
        </form>
      ) : (
        <p className="muted">A person with the approver role decides.</p>
      )}
    </section>
  );
}
