// The node palette: each service type is a button that can be dragged onto the canvas
// (placed where it is dropped) or pressed (placed in the middle of the view).
import type { DragEvent } from 'react';
import { DRAG_TYPE } from './GraphCanvas';
import { SERVICE_TYPES } from './graphApi';

const ABOUT: Record<string, string> = {
  DATA: 'files that already exist on an agent',
  DOCKER: 'a container image run by Docker or Podman',
  STANDALONE: 'a program run directly on the agent',
};

export function Palette({ onAdd, disabled }: { onAdd: (type: string) => void; disabled: boolean }) {
  const start = (e: DragEvent<HTMLButtonElement>, type: string) => {
    e.dataTransfer.setData(DRAG_TYPE, type);
    e.dataTransfer.setData('text/plain', type);
    e.dataTransfer.effectAllowed = 'copy';
  };
  return (
    <section className="palette" aria-labelledby="palette-h">
      <h2 id="palette-h">Nodes</h2>
      <p className="hint">Drag one onto the canvas, or press it to add it.</p>
      <ul>
        {SERVICE_TYPES.map((t) => (
          <li key={t}>
            <button
              type="button"
              className={`palette-item svc-${t.toLowerCase()}`}
              draggable={!disabled}
              disabled={disabled}
              onDragStart={(e) => start(e, t)}
              onClick={() => onAdd(t)}
              aria-label={`Add ${t} node`}
              data-testid={`palette-${t}`}
            >
              <strong>{t}</strong>
              <span className="palette-about">{ABOUT[t]}</span>
            </button>
          </li>
        ))}
      </ul>
    </section>
  );
}
