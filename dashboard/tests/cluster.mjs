// A real Ferry cluster for the browser test: the coordinator daemon (with tokens on and its
// HTTP listener, which serves the dashboard) and agents, from the Cargo build's binaries.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export function binDir() {
  if (process.env.FERRY_BIN_DIR) return process.env.FERRY_BIN_DIR;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), '.cache', 'ferry-target');
  return path.join(target, 'debug');
}

function bin(name) {
  const p = path.join(binDir(), name);
  if (!fs.existsSync(p)) {
    throw new Error(
      `${p} is missing: build it first (cargo build -p ferry-coordinatord -p ferry-source-agentd -p ferry-train-agentd -p ferry-cli), or set FERRY_BIN_DIR`,
    );
  }
  return p;
}

async function waitFor(what, fn, timeoutMs = 30_000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

export { waitFor };

export class Cluster {
  constructor(extraConfig = '') {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-dashboard-'));
    this.children = new Map();
    this.adminToken = execFileSync(bin('ferry'), ['token', 'generate'], { encoding: 'utf8' }).trim();
    const tokenFile = path.join(this.dir, 'bootstrap.token');
    fs.writeFileSync(tokenFile, `${this.adminToken}\n`, { mode: 0o600 });
    fs.chmodSync(tokenFile, 0o600);
    this.config = path.join(this.dir, 'ferry.yaml');
    const q = (p) => JSON.stringify(p);
    fs.writeFileSync(
      this.config,
      [
        'workflow:',
        '  heartbeat_interval: 1',
        '  agent_timeout: 3',
        'coordinator:',
        '  listen: "127.0.0.1:0"',
        `  database_url: ${q(`sqlite://${path.join(this.dir, 'ferry.db')}?mode=rwc`)}`,
        `  data_dir: ${q(path.join(this.dir, 'coordinator-data'))}`,
        'agent:',
        '  reconnect_interval_ms: 200',
        `  work_dir: ${q(path.join(this.dir, 'work'))}`,
        'auth:',
        `  bootstrap_token_file: ${q(tokenFile)}`,
        extraConfig,
      ].join('\n'),
    );
  }

  path(rel) {
    return path.join(this.dir, rel);
  }

  #spawn(name, program, args, env = {}) {
    const log = fs.openSync(this.path(`${name}.log`), 'a');
    const child = spawn(bin(program), args, {
      stdio: ['ignore', log, log],
      env: { ...process.env, ...env },
    });
    fs.closeSync(log);
    this.children.set(name, child);
    return child;
  }

  /** `env`: extra variables, e.g. config overrides (`FERRY_WORKFLOW__SCHEDULE_INTERVAL`). */
  async startCoordinator({ env = {} } = {}) {
    const addrFile = this.path('coordinator.addr');
    const httpFile = this.path('coordinator-http.addr');
    const child = this.#spawn('coordinator', 'ferry-coordinatord', [
      '--config',
      this.config,
      '--addr-file',
      addrFile,
      '--http-listen',
      '127.0.0.1:0',
      '--http-addr-file',
      httpFile,
    ], env);
    let exited = null;
    child.once('exit', (code) => (exited = code));
    await waitFor('the coordinator to listen', () => {
      if (exited !== null) {
        throw new Error(`the coordinator exited (${exited}):\n${this.readLog('coordinator')}`);
      }
      const a = fs.existsSync(addrFile) && fs.readFileSync(addrFile, 'utf8').trim();
      const h = fs.existsSync(httpFile) && fs.readFileSync(httpFile, 'utf8').trim();
      if (a && h) {
        this.addr = a;
        this.httpAddr = h;
        return true;
      }
      return false;
    });
    this.baseUrl = `http://${this.httpAddr}`;
  }

  /** `role` is `source`, `train` or `infer`. */
  startAgent(role, name) {
    this.#spawn(name, `ferry-${role}-agentd`, [
      '--config',
      this.config,
      '--name',
      name,
      '--coordinator',
      `http://${this.addr}`,
    ]);
  }

  /** A JSON API call with a bearer token (the admin's by default). */
  async api(method, p, body, token = this.adminToken) {
    const res = await fetch(`${this.baseUrl}${p}`, {
      method,
      headers: {
        Authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  }

  async waitForAgents(n) {
    await waitFor(`${n} connected agents`, async () => {
      const { agents } = await this.api('GET', '/api/agents');
      return agents.filter((a) => a.connected).length >= n;
    });
  }

  readLog(name) {
    try {
      return fs.readFileSync(this.path(`${name}.log`), 'utf8');
    } catch {
      return '';
    }
  }

  async stop({ keep = false } = {}) {
    const exits = [];
    for (const [, child] of this.children) {
      if (child.exitCode === null && child.signalCode === null) {
        exits.push(new Promise((r) => child.once('exit', r)));
        child.kill('SIGTERM');
      }
    }
    await Promise.race([Promise.all(exits), sleep(10_000)]);
    for (const [, child] of this.children) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
    if (!keep) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
