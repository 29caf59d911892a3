// Start a run: the built-in CTR pipeline from seed 000 §8.2's task request, or a stored
// workflow with its parameters. The server checks every value; its answer names the field
// that is wrong, and the form shows the message beside that field.
import { type FormEvent, useEffect, useState } from 'react';
import { api, ApiError, hasRole, request, type Agent } from '../api';
import { Field, type FieldError } from '../components/Field';
import { parseJsonObject } from '../json';
import { Link, navigate } from '../router';
import { useSession } from '../session';

type Mode = 'ctr' | 'workflow';

interface Ctr {
  name: string;
  experiment_id: string;
  sample_sql: string;
  infer_sql: string;
  hive_table: string;
  partition: string;
  model: string;
  epochs: string;
  batch_size: string;
  source_server: string;
  training_server: string;
  inference_server: string;
  model_params: string;
  fuxictr_config: string;
}

const EMPTY: Ctr = {
  name: '',
  experiment_id: '',
  sample_sql: '',
  infer_sql: '',
  hive_table: '',
  partition: '',
  model: '',
  epochs: '',
  batch_size: '',
  source_server: '',
  training_server: '',
  inference_server: '',
  model_params: '',
  fuxictr_config: '',
};

// The models the training host builds (FuxiCTR's names).
const MODELS = [
  'LR', 'FM', 'DNN', 'WideDeep', 'DeepFM', 'PNN', 'DCN', 'DCNv2', 'xDeepFM', 'AutoInt', 'FiBiNET',
  'FinalMLP', 'DIN', 'MMoE', 'ShareBottom', 'PLE',
];

/** The request body, or the field that cannot be sent as typed. */
function ctrBody(f: Ctr): { body?: Record<string, unknown>; field?: string; error?: string } {
  const body: Record<string, unknown> = {
    name: f.name.trim(),
    experiment_id: f.experiment_id.trim(),
    sample_sql: f.sample_sql,
    infer_sql: f.infer_sql,
    hive_table: f.hive_table.trim(),
  };
  const text = (k: keyof Ctr) => {
    if (f[k].trim()) body[k] = f[k].trim();
  };
  text('partition');
  text('model');
  text('source_server');
  text('training_server');
  text('inference_server');
  text('fuxictr_config');
  for (const k of ['epochs', 'batch_size'] as const) {
    if (!f[k].trim()) continue;
    const n = Number(f[k]);
    if (!Number.isInteger(n) || n < 1) return { field: k, error: 'a whole number, at least 1' };
    body[k] = n;
  }
  if (f.model_params.trim()) {
    const { value, error } = parseJsonObject(f.model_params);
    if (!value) return { field: 'model_params', error };
    body.model_params = value;
  }
  return { body };
}

export function NewRunPage() {
  const { me } = useSession();
  const [mode, setMode] = useState<Mode>('ctr');
  const [ctr, setCtr] = useState<Ctr>(EMPTY);
  const [workflows, setWorkflows] = useState<string[]>([]);
  const [agents, setAgents] = useState<Agent[]>([]);
  const [wf, setWf] = useState({ workflow: '', name: '', params: '' });
  const [error, setError] = useState<FieldError | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    api
      .workflows()
      .then((w) => setWorkflows(w.workflows.map((x) => x.name).sort()))
      .catch(() => setWorkflows([]));
    api
      .agents()
      .then((a) => setAgents(a.agents))
      .catch(() => setAgents([]));
  }, []);

  if (!hasRole(me, 'operator')) {
    return (
      <main className="page">
        <h1>Start a run</h1>
        <p>Starting a run takes the operator role. <Link href="/runs">Back to the runs</Link>.</p>
      </main>
    );
  }

  const setC = (k: keyof Ctr) => (e: { target: { value: string } }) =>
    setCtr((c) => ({ ...c, [k]: e.target.value }));

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    let body: Record<string, unknown>;
    if (mode === 'ctr') {
      const r = ctrBody(ctr);
      if (!r.body) {
        setError({ field: r.field, message: r.error ?? 'invalid' });
        return;
      }
      body = r.body;
    } else {
      if (!wf.workflow) {
        setError({ field: 'workflow', message: 'choose a workflow' });
        return;
      }
      body = { workflow: wf.workflow };
      if (wf.name.trim()) body.name = wf.name.trim();
      if (wf.params.trim()) {
        const { value, error: why } = parseJsonObject(wf.params);
        if (!value) {
          setError({ field: 'params', message: why ?? 'invalid' });
          return;
        }
        body.params = value;
      }
    }
    setBusy(true);
    try {
      const created = await request<{ task_id: number }>('/api/workflow/tasks', {
        method: 'POST',
        body,
      });
      navigate(`/runs/${created.task_id}`);
    } catch (err) {
      if (err instanceof ApiError) setError({ field: err.field, message: err.message });
      else setError({ message: String(err) });
    } finally {
      setBusy(false);
    }
  };

  const byRole = (role: string) => agents.filter((a) => a.role === role).map((a) => a.name);
  const server = (k: 'source_server' | 'training_server' | 'inference_server', label: string, role: string) => (
    <Field label={label} name={k} error={error}>
      {(p) => (
        <select {...p} value={ctr[k]} onChange={setC(k)}>
          <option value="">any connected {role.replace('_', '-')} agent</option>
          {byRole(role).map((n) => (
            <option key={n} value={n}>
              {n}
            </option>
          ))}
        </select>
      )}
    </Field>
  );
  const unplaced = error && (!error.field || !fieldShown(mode, error.field));

  return (
    <main className="page new-run">
      <h1>Start a run</h1>
      <fieldset className="mode">
        <legend>What to run</legend>
        <label>
          <input type="radio" name="mode" checked={mode === 'ctr'} onChange={() => setMode('ctr')} />{' '}
          The CTR pipeline
        </label>
        <label>
          <input
            type="radio"
            name="mode"
            checked={mode === 'workflow'}
            onChange={() => setMode('workflow')}
          />{' '}
          A stored workflow
        </label>
      </fieldset>
      <form onSubmit={submit} noValidate aria-label={mode === 'ctr' ? 'CTR pipeline run' : 'Workflow run'}>
        {mode === 'ctr' ? (
          <div className="form-grid">
            <Field label="Task name" name="name" error={error}>
              {(p) => <input {...p} value={ctr.name} onChange={setC('name')} required />}
            </Field>
            <Field label="Experiment id" name="experiment_id" error={error} hint="becomes the model id, e.g. DeepFM_campaign_v1">
              {(p) => <input {...p} value={ctr.experiment_id} onChange={setC('experiment_id')} required />}
            </Field>
            <Field label="Training data SQL" name="sample_sql" error={error}>
              {(p) => <textarea {...p} rows={3} value={ctr.sample_sql} onChange={setC('sample_sql')} spellCheck={false} />}
            </Field>
            <Field label="Inference data SQL" name="infer_sql" error={error}>
              {(p) => <textarea {...p} rows={3} value={ctr.infer_sql} onChange={setC('infer_sql')} spellCheck={false} />}
            </Field>
            <Field label="Result table" name="hive_table" error={error} hint="database.table the scores are loaded into">
              {(p) => <input {...p} value={ctr.hive_table} onChange={setC('hive_table')} />}
            </Field>
            <Field label="Partition" name="partition" error={error} hint="dt=YYYY-MM-DD; today when empty">
              {(p) => <input {...p} value={ctr.partition} onChange={setC('partition')} />}
            </Field>
            <Field label="Model" name="model" error={error}>
              {(p) => (
                <select {...p} value={ctr.model} onChange={setC('model')}>
                  <option value="">from the experiment id</option>
                  {MODELS.map((m) => (
                    <option key={m}>{m}</option>
                  ))}
                </select>
              )}
            </Field>
            <Field label="Epochs" name="epochs" error={error}>
              {(p) => <input {...p} inputMode="numeric" value={ctr.epochs} onChange={setC('epochs')} />}
            </Field>
            <Field label="Batch size" name="batch_size" error={error}>
              {(p) => <input {...p} inputMode="numeric" value={ctr.batch_size} onChange={setC('batch_size')} />}
            </Field>
            {server('source_server', 'Data-source host', 'data_source')}
            {server('training_server', 'Training host', 'training')}
            {server('inference_server', 'Inference host', 'inference')}
            <Field label="Model settings (JSON)" name="model_params" error={error} hint='e.g. {"embedding_dim": 8, "learning_rate": 0.002}'>
              {(p) => <textarea {...p} rows={3} value={ctr.model_params} onChange={setC('model_params')} spellCheck={false} />}
            </Field>
            <Field
              label="FuxiCTR configuration"
              name="fuxictr_config"
              error={error}
              hint="a folder on the training host with model_config.yaml and dataset_config.yaml: the experiment id there brings the model, its settings, the features and the labels"
            >
              {(p) => <input {...p} value={ctr.fuxictr_config} onChange={setC('fuxictr_config')} spellCheck={false} />}
            </Field>
          </div>
        ) : (
          <div className="form-grid">
            <Field label="Workflow" name="workflow" error={error}>
              {(p) => (
                <select {...p} value={wf.workflow} onChange={(e) => setWf({ ...wf, workflow: e.target.value })}>
                  <option value="">choose…</option>
                  {workflows.map((w) => (
                    <option key={w}>{w}</option>
                  ))}
                </select>
              )}
            </Field>
            <Field label="Task name" name="name" error={error} hint="the workflow's name when empty">
              {(p) => <input {...p} value={wf.name} onChange={(e) => setWf({ ...wf, name: e.target.value })} />}
            </Field>
            <Field label="Parameters (JSON)" name="params" error={error} hint='fills ${param.NAME}, e.g. {"out": "/data/out"}'>
              {(p) => (
                <textarea
                  {...p}
                  rows={4}
                  value={wf.params}
                  onChange={(e) => setWf({ ...wf, params: e.target.value })}
                  spellCheck={false}
                />
              )}
            </Field>
          </div>
        )}
        {unplaced && (
          <p className="error" role="alert">
            {error?.message}
          </p>
        )}
        <div className="actions">
          <button type="submit" className="primary" disabled={busy}>
            {busy ? 'Starting…' : 'Start the run'}
          </button>
          <Link href="/runs">Cancel</Link>
        </div>
      </form>
    </main>
  );
}

const CTR_FIELDS = [
  'name', 'experiment_id', 'sample_sql', 'infer_sql', 'hive_table', 'partition', 'model', 'epochs',
  'batch_size', 'source_server', 'training_server', 'inference_server', 'model_params',
  'fuxictr_config',
];

/** Whether the form has a field the server's error names (else it is shown under the form). */
function fieldShown(mode: Mode, field: string): boolean {
  const top = field.split(/[.[]/)[0];
  return mode === 'ctr' ? CTR_FIELDS.includes(top) : ['workflow', 'name', 'params'].includes(top);
}
