import { type FormEvent, useEffect, useId, useState } from 'react';
import { api, ApiError, type Step, type Task } from '../api';
import { asObject, parseJsonObject } from '../json';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type JsonObject = { [k: string]: Json };

function isObject(v: unknown): v is JsonObject {
  return asObject(v) !== null;
}

function equal(a: Json, b: Json): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** A JSON merge patch (RFC 7396) turning `from` into `to`: only the changed keys, `null` for
 * a removed key, nested objects patched key by key. Empty when nothing changed. */
function mergePatch(from: JsonObject, to: JsonObject): JsonObject {
  const patch: JsonObject = {};
  for (const k of Object.keys(from)) {
    if (!(k in to)) patch[k] = null;
  }
  for (const [k, v] of Object.entries(to)) {
    const old = from[k];
    if (k in from && isObject(old) && isObject(v)) {
      const inner = mergePatch(old, v);
      if (Object.keys(inner).length > 0) patch[k] = inner;
    } else if (!(k in from) || !equal(old, v)) {
      patch[k] = v;
    }
  }
  return patch;
}

/** The text's parameters, or why it is not a JSON object. */
function parse(text: string): { value?: JsonObject; error?: string } {
  const r = parseJsonObject(text);
  return r.value ? { value: r.value as JsonObject } : { error: r.error };
}

function describe(e: unknown): string {
  if (e instanceof ApiError) {
    return `${e.message} (${e.code}${e.field ? `, field ${e.field}` : ''})`;
  }
  return String(e);
}

/** Steps whose parameters may still change: not completed and not on an agent. */
const FIXED = new Set(['completed', 'running', 'dispatching']);

/**
 * Change the parameters of a failed or paused run's unfinished steps, then retry (failed)
 * or resume (paused) it. The values shown are the workflow definition's; each changed step
 * is sent as a merge patch of its changed keys only.
 */
export function RetryWithParams({
  task,
  steps,
  onDone,
  onClose,
}: {
  task: Task;
  steps: Step[];
  onDone: () => void;
  onClose: () => void;
}) {
  const uid = useId();
  const resume = task.status === 'paused';
  const open = steps.filter((s) => !FIXED.has(s.status));
  const [base, setBase] = useState<Record<string, JsonObject> | null>(null);
  const [texts, setTexts] = useState<Record<string, string>>({});
  const [loadError, setLoadError] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    let live = true;
    api
      .workflow(task.workflow)
      .then((w) => {
        if (!live) return;
        const def = w.definition as { steps?: { name: string; params?: unknown }[] } | null;
        const params: Record<string, JsonObject> = {};
        for (const s of def?.steps ?? []) {
          params[s.name] = isObject(s.params) ? (s.params as JsonObject) : {};
        }
        setBase(params);
        setTexts(
          Object.fromEntries(
            Object.entries(params).map(([k, v]) => [k, JSON.stringify(v, null, 2)]),
          ),
        );
      })
      .catch((e) => live && setLoadError(describe(e)));
    return () => {
      live = false;
    };
  }, [task.workflow]);

  const parsed = Object.fromEntries(open.map((s) => [s.name, parse(texts[s.name] ?? '{}')]));
  const invalid = open.some((s) => parsed[s.name].error);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!base || invalid || busy) return;
    setBusy(true);
    setError(null);
    const id = task.task_id;
    try {
      for (const s of open) {
        const patch = mergePatch(base[s.name] ?? {}, parsed[s.name].value ?? {});
        if (Object.keys(patch).length === 0) continue;
        try {
          await api.stepParams(id, s.name, patch);
        } catch (err) {
          throw new Error(`Step “${s.name}”: ${describe(err)}`);
        }
      }
      try {
        await (resume ? api.resume(id) : api.retry(id));
      } catch (err) {
        throw new Error(`${resume ? 'Resume' : 'Retry'}: ${describe(err)}`);
      }
      onDone();
      onClose();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  const verb = resume ? 'resume' : 'retry';
  return (
    <section className="panel retry-params" aria-labelledby={`${uid}-h`} data-testid="retry-params">
      <h2 id={`${uid}-h`}>Change parameters, then {verb}</h2>
      <p className="muted">
        Shown: each unfinished step's parameters from the workflow definition (changes made
        earlier to this run are not shown). Only the keys you change are sent.
      </p>
      {loadError && (
        <p className="error" role="alert">
          The workflow's parameters cannot be read: {loadError}
        </p>
      )}
      {!base && !loadError && <p>Loading…</p>}
      {base && (
        <form onSubmit={submit} noValidate>
          {open.length === 0 && <p>No step is left to change.</p>}
          {open.map((s) => {
            const fid = `${uid}-${s.name}`;
            const err = parsed[s.name].error;
            return (
              <div className="field" key={s.name}>
                <label htmlFor={fid}>
                  Parameters of step “{s.name}” <span className="muted">({s.kind}, {s.status})</span>
                </label>
                <textarea
                  id={fid}
                  rows={Math.min(16, Math.max(3, (texts[s.name] ?? '').split('\n').length))}
                  spellCheck={false}
                  value={texts[s.name] ?? '{}'}
                  aria-invalid={err ? true : undefined}
                  aria-describedby={err ? `${fid}-err` : undefined}
                  onChange={(ev) => setTexts((t) => ({ ...t, [s.name]: ev.target.value }))}
                />
                {err && (
                  <p className="error" id={`${fid}-err`}>
                    {err}
                  </p>
                )}
              </div>
            );
          })}
          {error && (
            <p className="error" role="alert">
              {error}
            </p>
          )}
          <div className="buttons">
            <button type="submit" className="primary" disabled={busy || invalid}>
              Apply changes and {verb}
            </button>
            <button type="button" disabled={busy} onClick={onClose}>
              Close
            </button>
          </div>
        </form>
      )}
    </section>
  );
}
