// Training curves: the metrics the steps reported (loss, AUC, ... per epoch), one small
// chart per kind of metric, a line per step and metric name, each with its values as a table.
import { useEffect, useState } from 'react';
import { api, type Metric } from '../api';

/** While the run is under way, the metrics are re-read this often. */
const POLL_MS = 4000;

const COLORS = ['#0550ae', '#bc4c00', '#116329', '#8250df', '#a40e26', '#1b7c83', '#7d4e00', '#424a53'];
const DASHES = ['', '6 3', '2 3', '8 3 2 3'];

interface Series {
  key: string;
  label: string;
  points: { x: number; y: number }[];
}

interface Group {
  title: string;
  series: Series[];
}

/** The chart a metric belongs to: every loss together, every AUC together, others by name. */
function groupOf(name: string): string {
  const n = name.toLowerCase();
  if (n.includes('auc')) return 'AUC';
  if (n.includes('loss')) return 'Loss';
  return name.replace(/_\d+$/, '');
}

export function groupMetrics(metrics: Metric[]): Group[] {
  const steps = new Set(metrics.map((m) => m.step));
  const groups = new Map<string, Map<string, Series>>();
  for (const m of metrics) {
    if (!Number.isFinite(m.value) || !Number.isFinite(m.index)) continue;
    const g = groupOf(m.name);
    let bySeries = groups.get(g);
    if (!bySeries) groups.set(g, (bySeries = new Map()));
    const key = `${m.step}\u0000${m.name}`;
    let s = bySeries.get(key);
    if (!s) {
      s = { key, label: steps.size > 1 ? `${m.step}: ${m.name}` : m.name, points: [] };
      bySeries.set(key, s);
    }
    // A value reported again for the same index (a retried attempt) replaces the older one.
    const at = s.points.findIndex((p) => p.x === m.index);
    if (at >= 0) s.points[at] = { x: m.index, y: m.value };
    else s.points.push({ x: m.index, y: m.value });
  }
  const order = (t: string) => (t === 'Loss' ? 0 : t === 'AUC' ? 1 : 2);
  return [...groups.entries()]
    .map(([title, bySeries]) => ({
      title,
      series: [...bySeries.values()]
        .map((s) => ({ ...s, points: s.points.sort((a, b) => a.x - b.x) }))
        .sort((a, b) => a.label.localeCompare(b.label)),
    }))
    .sort((a, b) => order(a.title) - order(b.title) || a.title.localeCompare(b.title));
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1000 || a < 0.001) return v.toExponential(2);
  return v.toPrecision(4).replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, '');
}

const W = 340;
const H = 170;
const M = { l: 48, r: 10, t: 10, b: 28 };

function Chart({ group, id }: { group: Group; id: string }) {
  const all = group.series.flatMap((s) => s.points);
  let x0 = Math.min(...all.map((p) => p.x));
  let x1 = Math.max(...all.map((p) => p.x));
  let y0 = Math.min(...all.map((p) => p.y));
  let y1 = Math.max(...all.map((p) => p.y));
  if (x0 === x1) {
    x0 -= 1;
    x1 += 1;
  }
  if (y0 === y1) {
    const d = Math.abs(y0) * 0.05 || 1;
    y0 -= d;
    y1 += d;
  } else {
    const pad = (y1 - y0) * 0.05;
    y0 -= pad;
    y1 += pad;
  }
  const sx = (x: number) => M.l + ((x - x0) / (x1 - x0)) * (W - M.l - M.r);
  const sy = (y: number) => H - M.b - ((y - y0) / (y1 - y0)) * (H - M.t - M.b);
  const yTicks = [0, 0.5, 1].map((f) => y0 + f * (y1 - y0));
  const xs = [...new Set(all.map((p) => p.x))].sort((a, b) => a - b);
  const step = Math.max(1, Math.ceil(xs.length / 6));
  const xTicks = xs.filter((_, i) => i % step === 0);
  const summary =
    `${group.title} by epoch: ` +
    group.series
      .map((s) => `${s.label} ${s.points.map((p) => `epoch ${p.x} ${fmt(p.y)}`).join(', ')}`)
      .join('; ');
  return (
    <figure className="chart" data-testid={`metrics-chart-${group.title}`}>
      <figcaption id={`${id}-t`}>{group.title}</figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={summary}>
        {yTicks.map((v, i) => (
          <g key={i}>
            <line x1={M.l} x2={W - M.r} y1={sy(v)} y2={sy(v)} className="grid" />
            <text x={M.l - 4} y={sy(v) + 4} textAnchor="end">
              {fmt(v)}
            </text>
          </g>
        ))}
        {xTicks.map((x) => (
          <text key={x} x={sx(x)} y={H - M.b + 14} textAnchor="middle">
            {x}
          </text>
        ))}
        <text x={(M.l + W - M.r) / 2} y={H - 2} textAnchor="middle" className="axis">
          epoch
        </text>
        {group.series.map((s, i) => {
          const color = COLORS[i % COLORS.length];
          const d = s.points.map((p, j) => `${j ? 'L' : 'M'}${sx(p.x)},${sy(p.y)}`).join('');
          return (
            <g key={s.key}>
              <path
                d={d}
                fill="none"
                stroke={color}
                strokeWidth={2}
                strokeDasharray={DASHES[i % DASHES.length]}
              />
              {s.points.map((p) => (
                <circle key={p.x} cx={sx(p.x)} cy={sy(p.y)} r={2.5} fill={color} />
              ))}
            </g>
          );
        })}
      </svg>
      <ul className="legend">
        {group.series.map((s, i) => (
          <li key={s.key}>
            <svg width="22" height="8" aria-hidden="true">
              <line
                x1="0"
                x2="22"
                y1="4"
                y2="4"
                stroke={COLORS[i % COLORS.length]}
                strokeWidth={2}
                strokeDasharray={DASHES[i % DASHES.length]}
              />
            </svg>
            {s.label}
          </li>
        ))}
      </ul>
      <details>
        <summary>Values</summary>
        <div className="table-wrap">
          <table aria-labelledby={`${id}-t`}>
            <thead>
              <tr>
                <th scope="col">Epoch</th>
                {group.series.map((s) => (
                  <th key={s.key} scope="col">
                    {s.label}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {xs.map((x) => (
                <tr key={x}>
                  <th scope="row">{x}</th>
                  {group.series.map((s) => {
                    const p = s.points.find((q) => q.x === x);
                    return (
                      <td key={s.key} className="num">
                        {p ? fmt(p.y) : ''}
                      </td>
                    );
                  })}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </details>
    </figure>
  );
}

/**
 * The task's training curves, read from its metrics: re-read every few seconds while the
 * run is under way and whenever `version` changes (a step's state or progress moved).
 * Nothing is drawn while there are no metrics.
 */
export function MetricsPanel({
  taskId,
  running,
  version,
}: {
  taskId: number;
  running: boolean;
  version: string;
}) {
  const [metrics, setMetrics] = useState<Metric[]>([]);

  useEffect(() => {
    setMetrics([]);
  }, [taskId]);

  useEffect(() => {
    let stopped = false;
    const load = async () => {
      try {
        const r = await api.metrics(taskId);
        if (!stopped) setMetrics(r.metrics ?? []);
      } catch {
        // the curves are a nicety; a failed read keeps what is shown
      }
    };
    void load();
    const t = running ? window.setInterval(load, POLL_MS) : undefined;
    return () => {
      stopped = true;
      window.clearInterval(t);
    };
  }, [taskId, running, version]);

  if (metrics.length === 0) return null;
  const groups = groupMetrics(metrics);
  if (groups.length === 0) return null;
  return (
    <section aria-labelledby="metrics-h" className="panel" data-testid="metrics">
      <h2 id="metrics-h">Training curves</h2>
      <div className="charts">
        {groups.map((g, i) => (
          <Chart key={g.title} group={g} id={`metrics-${i}`} />
        ))}
      </div>
    </section>
  );
}
