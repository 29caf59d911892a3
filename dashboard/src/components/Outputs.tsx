// The files a task's nodes sent to the coordinator (seed 003's downloads:
// GET /api/workflow/tasks/ID/outputs), each a link that downloads it. Shown when the task
// has upload steps or files; re-read as those steps and the task move on.
import { useEffect, useState } from 'react';
import { ApiError, request, type Step } from '../api';
import { formatBytes } from '../format';

interface OutputFile {
  node: string;
  path: string;
  size: number;
  url: string;
}

export function Outputs({ taskId, status, steps }: { taskId: number; status: string; steps: Step[] }) {
  const [files, setFiles] = useState<OutputFile[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const uploads = steps.filter((s) => s.kind === 'upload');
  // Changes when an upload step or the task changes state: the list is read again then.
  const version = `${status}|${uploads.map((s) => `${s.name}:${s.status}`).join(',')}`;
  useEffect(() => {
    let live = true;
    request<{ files: OutputFile[] }>(`/api/workflow/tasks/${taskId}/outputs`)
      .then((r) => {
        if (!live) return;
        setFiles(r.files);
        setError(null);
      })
      .catch((e) => live && setError(e instanceof ApiError ? e.message : String(e)));
    return () => {
      live = false;
    };
  }, [taskId, version]);

  if (uploads.length === 0 && (files === null || files.length === 0)) return null;
  return (
    <section className="panel" aria-labelledby="outputs-h" data-testid="outputs">
      <h2 id="outputs-h">Outputs</h2>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {files === null ? (
        !error && <p>Loading…</p>
      ) : files.length === 0 ? (
        <p className="muted">No file has reached the coordinator yet.</p>
      ) : (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">File</th>
                <th scope="col">From node</th>
                <th scope="col">Size</th>
              </tr>
            </thead>
            <tbody>
              {files.map((f) => (
                <tr key={`${f.node}/${f.path}`}>
                  <th scope="row">
                    <a href={f.url} download={f.path.split('/').pop()}>
                      {f.path}
                    </a>
                  </th>
                  <td>{f.node}</td>
                  <td className="num">{formatBytes(f.size)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
