import { memo, useEffect, useLayoutEffect, useMemo, useRef, useState } from 'react';
import type { LogLine, Step } from '../api';
import { formatTime } from '../format';

const LEVELS = ['DEBUG', 'INFO', 'WARN', 'ERROR'];
/** Lines drawn at once (the newest that match); the rest are counted. */
const SHOWN = 2000;
/** The step filter's value for the engine's own lines (they name no step). */
export const ENGINE = '\u0000engine';

export function LogPanel({
  lines,
  dropped,
  steps,
  step,
  onStep,
}: {
  lines: LogLine[];
  dropped: number;
  steps: Step[];
  step: string;
  onStep: (step: string) => void;
}) {
  const [follow, setFollow] = useState(true);
  const [search, setSearch] = useState('');
  const [level, setLevel] = useState('DEBUG');
  const box = useRef<HTMLDivElement>(null);

  const matching = useMemo(() => {
    const min = LEVELS.indexOf(level);
    const needle = search.trim().toLowerCase();
    return lines.filter(
      (l) =>
        (min <= 0 || LEVELS.indexOf(l.level) >= min) &&
        (!step || (step === ENGINE ? l.step === '' : l.step === step)) &&
        (!needle || l.message.toLowerCase().includes(needle)),
    );
  }, [lines, level, search, step]);
  const shown = useMemo(
    () => (matching.length > SHOWN ? matching.slice(-SHOWN) : matching),
    [matching],
  );

  // Only when lines change: reading scrollHeight makes the browser lay the page out.
  useLayoutEffect(() => {
    if (follow && box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [follow, shown]);

  // Copy and download take every line that matches the filters (not only those drawn).
  const [copied, setCopied] = useState('');
  const text = () => matching.map(lineText).join('\n') + '\n';
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text());
      setCopied(`${matching.length} lines copied`);
    } catch {
      setCopied('the browser did not allow copying; use Download');
    }
    window.setTimeout(() => setCopied(''), 4000);
  };
  const download = () => {
    const url = URL.createObjectURL(new Blob([text()], { type: 'text/plain' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = `task-${lines[0]?.task_id ?? 'log'}${step && step !== ENGINE ? `-${step}` : ''}.log`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
  };

  // Scrolling up stops following; scrolling back to the end resumes it.
  const onScroll = () => {
    const el = box.current;
    if (!el) return;
    const atEnd = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
    if (atEnd !== follow) setFollow(atEnd);
  };

  useEffect(() => {
    if (step && step !== ENGINE && !steps.some((s) => s.name === step)) onStep('');
  }, [step, steps, onStep]);

  return (
    <section className="panel" aria-labelledby="log-h">
      <h2 id="log-h">Log</h2>
      <div className="log-controls" role="group" aria-label="Log filters">
        <label>
          Search
          <input
            type="search"
            value={search}
            onChange={(e) => setSearch(e.target.value)}
            placeholder="text in the message"
          />
        </label>
        <label>
          Level
          <select value={level} onChange={(e) => setLevel(e.target.value)}>
            <option value="DEBUG">All levels</option>
            <option value="INFO">INFO and above</option>
            <option value="WARN">WARN and above</option>
            <option value="ERROR">ERROR only</option>
          </select>
        </label>
        <label>
          Step
          <select value={step} onChange={(e) => onStep(e.target.value)}>
            <option value="">All steps</option>
            <option value={ENGINE}>Engine (task)</option>
            {steps.map((s) => (
              <option key={s.name} value={s.name}>
                {s.name}
              </option>
            ))}
          </select>
        </label>
        <label className="check">
          <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} />
          Follow
        </label>
        <button type="button" onClick={copy} disabled={matching.length === 0}>
          Copy
        </button>
        <button type="button" onClick={download} disabled={matching.length === 0}>
          Download
        </button>
        {copied && <span role="status">{copied}</span>}
        <span className="muted" aria-live="polite">
          {matching.length === lines.length
            ? `${lines.length} lines`
            : `${matching.length} of ${lines.length} lines match`}
          {matching.length > SHOWN ? ` (newest ${SHOWN} shown)` : ''}
          {dropped > 0 ? ` · ${dropped} older lines not kept` : ''}
        </span>
      </div>
      <div className="log" ref={box} onScroll={onScroll} tabIndex={0} aria-label="Log lines">
        {shown.length === 0 ? (
          <p className="muted">{lines.length === 0 ? 'No log lines yet.' : 'No line matches.'}</p>
        ) : (
          <ol data-testid="log-lines">
            {shown.map((l) => (
              <LogRow key={l.id} line={l} />
            ))}
          </ol>
        )}
      </div>
    </section>
  );
}

function lineText(l: LogLine): string {
  return `${l.timestamp} ${l.level} [${l.step || 'engine'}] ${l.message}`;
}

const LogRow = memo(function LogRow({ line: l }: { line: LogLine }) {
  return (
    <li className={`lvl-${l.level.toLowerCase()}`}>
      <time dateTime={l.timestamp}>{formatTime(l.timestamp).slice(11)}</time>
      <span className="lvl">{l.level}</span>
      <span className="src">{l.step || 'engine'}</span>
      <span className="msg">{l.message}</span>
    </li>
  );
});
