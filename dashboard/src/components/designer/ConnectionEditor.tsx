// The selected connection: its ends, what the coordinator finds wrong with it, its
// destination file name (a connection is replaced to change it) and its removal.
import { useEffect, useId, useState, type FormEvent } from 'react';
import { describeEnd } from './GraphCanvas';
import type { ConnectionDef } from './graphApi';
import type { Problem } from './problems';

export function ConnectionEditor({
  index,
  connection,
  problems,
  editable,
  busy,
  onRename,
  onRemove,
}: {
  index: number;
  connection: ConnectionDef;
  problems: Problem[];
  editable: boolean;
  busy: boolean;
  onRename: (fileName: string) => void;
  onRemove: () => void;
}) {
  const uid = useId();
  const stored = connection.destination_file_name ?? '';
  const [fileName, setFileName] = useState(stored);
  useEffect(() => setFileName(stored), [stored, index]);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    onRename(fileName.trim());
  };
  return (
    <section className="conn-editor" aria-labelledby={`${uid}-h`} data-testid="connection-editor">
      <h2 id={`${uid}-h`}>Connection #{index}</h2>
      <p>
        From <strong>{describeEnd(connection.from)}</strong>
        <br />
        to <strong>{describeEnd(connection.to)}</strong>
      </p>
      {problems.length > 0 ? (
        <ul className="problem-list" aria-label={`Problems of connection ${index}`}>
          {problems.map((p, i) => (
            <li key={i}>
              <span aria-hidden="true">⚠ </span>
              {p.text}
              {p.build ? ' (from the last build)' : ''}
            </li>
          ))}
        </ul>
      ) : (
        <p className="ok-note">
          <span aria-hidden="true">✓ </span>No problem with this connection.
        </p>
      )}
      <form onSubmit={submit}>
        <fieldset disabled={!editable || busy}>
          <label>
            Destination file name
            <input
              value={fileName}
              onChange={(e) => setFileName(e.target.value)}
              placeholder="(the file's own name)"
              spellCheck={false}
            />
          </label>
          {editable && (
            <div className="buttons">
              <button type="submit" disabled={fileName.trim() === stored}>
                Save file name
              </button>
              <button type="button" className="danger" onClick={onRemove}>
                Remove connection
              </button>
            </div>
          )}
        </fieldset>
      </form>
    </section>
  );
}
