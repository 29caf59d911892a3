// The CTR pipeline from the dashboard, in a real Chromium, on `cargo xtask demo`'s cluster:
// the coordinator with TLS and tokens, the data-source, training and inference agents as real
// processes, and a private sshd every transfer goes through. The run is started from the
// page's form; the test watches its steps turn completed on the DAG, a transfer's progress
// bar move, the training curve gain a point per epoch, and approves the load into the
// production table from its card after reading the preview rows.
//
// Needs: the workspace's binaries built (`cargo build --workspace --bins`), Chromium
// (CHROMIUM, /usr/bin/chromium by default) and `npm ci` here.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { launchBrowser, logIn, SHOTS, shot } from './browser.mjs';
import { binDir, waitFor } from './cluster.mjs';

const EPOCHS = 3;
const T = 300_000;

let dir;
let demo;
let demoExited;
let ready;
let browser;
let page;

function demoLog() {
  try {
    return fs.readFileSync(path.join(dir, 'demo.log'), 'utf8');
  } catch {
    return '';
  }
}

before(async () => {
  const xtask = path.join(binDir(), 'xtask');
  assert.ok(fs.existsSync(xtask), `${xtask} is missing: build the workspace first`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-dashboard-pipeline-'));
  const log = fs.openSync(path.join(dir, 'demo.log'), 'w');
  const readyFile = path.join(dir, 'ready.json');
  demo = spawn(
    xtask,
    [
      'demo',
      '--no-build',
      '--no-task',
      '--production',
      // Enough rows that each epoch takes seconds (dev builds train at release speed),
      // so the page sees the loss curve grow between epochs.
      '--rows', '100000',
      '--epochs', String(EPOCHS),
      // Slow enough that a transfer's bar is seen between empty and full.
      '--bandwidth-limit', '512K',
      '--chunk-size', '262144',
      '--ready-file', readyFile,
    ],
    {
      stdio: ['ignore', log, log],
      // The demo finds the daemons in the Cargo target dir the binaries came from.
      env: { ...process.env, CARGO_TARGET_DIR: path.dirname(binDir()) },
    },
  );
  demoExited = new Promise((resolve) => demo.once('exit', resolve));
  demo.once('exit', (code, signal) => {
    if (!ready) console.error(`demo exited (${code ?? signal}) before it was ready:\n${demoLog()}`);
  });
  ready = await waitFor(
    'the demo cluster',
    () => {
      if (demo.exitCode !== null) throw new Error(`the demo exited: ${demoLog().slice(-3000)}`);
      return fs.existsSync(readyFile) ? JSON.parse(fs.readFileSync(readyFile, 'utf8')) : null;
    },
    240_000,
    250,
  );
  browser = await launchBrowser();
});

let failed = false;

after(async () => {
  await browser?.close();
  if (demo && demo.exitCode === null) {
    demo.kill('SIGTERM');
    const stopped = await Promise.race([
      demoExited.then(() => true),
      new Promise((r) => setTimeout(() => r(false), 20_000)),
    ]);
    if (!stopped) demo.kill('SIGKILL');
  }
  if (failed) console.error(`---- demo log (tail) ----\n${demoLog().slice(-6000)}`);
  if (dir && !failed && ready) fs.rmSync(dir, { recursive: true, force: true });
});

test('the CTR pipeline started from the page runs to its approval and completes', async () => {
  try {
    const token = fs.readFileSync(ready.token_file, 'utf8').trim();
    // The demo's coordinator has a certificate from the run's own CA.
    page = await logIn(browser, ready.base, token, { ignoreHTTPSErrors: true });

    // Start it from the form, as seed 000 §8.2's request.
    await page.getByRole('link', { name: 'Start a run' }).click();
    await page.getByRole('heading', { name: 'Start a run' }).waitFor();
    const r = ready.request;
    await page.getByLabel('Task name').fill(r.name);
    await page.getByLabel('Experiment id').fill(r.experiment_id);
    await page.getByLabel('Training data SQL').fill(r.sample_sql);
    await page.getByLabel('Inference data SQL').fill(r.infer_sql);
    await page.getByLabel('Result table').fill(r.hive_table);
    await page.getByLabel('Partition').fill(r.partition);
    await page.getByLabel('Batch size').fill(String(r.batch_size));
    await page.getByLabel('Model settings (JSON)').fill(JSON.stringify(r.model_params));
    // A wrong value is named by the server and shown beside its field; nothing is created.
    await page.getByLabel('Epochs').fill('0');
    await page.getByRole('button', { name: 'Start the run' }).click();
    await page.getByText('a whole number, at least 1').waitFor();
    // Beside a FuxiCTR configuration, the settings it brings are refused by name.
    await page.getByLabel('Epochs').fill(String(EPOCHS));
    await page.getByLabel('FuxiCTR configuration').fill('/srv/fuxictr/DeepFM/config');
    await page.getByRole('button', { name: 'Start the run' }).click();
    const settingsError = page.locator('.field.invalid').filter({ has: page.getByLabel('Model settings (JSON)') });
    await settingsError.getByRole('alert').waitFor();
    assert.match(await settingsError.getByRole('alert').innerText(), /FuxiCTR configuration/);
    await page.getByLabel('FuxiCTR configuration').fill('');
    await page.getByLabel('Result table').fill('no table');
    await page.getByLabel('Epochs').fill(String(EPOCHS));
    await page.getByRole('button', { name: 'Start the run' }).click();
    const tableError = page.locator('.field.invalid').filter({ has: page.getByLabel('Result table') });
    await tableError.getByRole('alert').waitFor();
    assert.match(await tableError.getByRole('alert').innerText(), /hive_table|table/);
    await page.screenshot({ path: path.join(SHOTS, 'new-run-error.png') });
    await page.getByLabel('Result table').fill(r.hive_table);
    await page.getByRole('button', { name: 'Start the run' }).click();
    await page.waitForURL(/\/runs\/\d+$/);
    const taskId = Number(page.url().match(/\/runs\/(\d+)$/)[1]);
    await page.getByTestId('dag-node-train').waitFor({ timeout: T });

    // Sample what the page shows while the run goes on.
    await page.evaluate(() => {
      const w = window;
      w.__bars = {}; // step → distinct bar values seen (0 < value < max)
      w.__points = []; // the loss chart's point counts, in order
      w.__states = {};
      const sample = () => {
        for (const li of document.querySelectorAll('[data-testid^="progress-ship_"]')) {
          const step = li.getAttribute('data-testid').slice('progress-'.length);
          for (const bar of li.querySelectorAll('progress')) {
            const v = Number(bar.value);
            const max = Number(bar.max);
            if (v > 0 && v < max) {
              const seen = (w.__bars[step] ??= []);
              if (!seen.includes(v)) seen.push(v);
            }
          }
        }
        const loss = document.querySelector('[data-testid="metrics-chart-Loss"]');
        if (loss) {
          const n = loss.querySelectorAll('circle').length;
          if (w.__points[w.__points.length - 1] !== n) w.__points.push(n);
        }
        for (const node of document.querySelectorAll('[data-testid^="dag-node-"]')) {
          const name = node.getAttribute('data-testid').slice('dag-node-'.length);
          const s = node.getAttribute('data-status');
          const seen = (w.__states[name] ??= []);
          if (seen[seen.length - 1] !== s) seen.push(s);
        }
      };
      sample();
      w.__timer = setInterval(sample, 50);
    });
    let shotProgress = false;

    // The load into the production table waits for an approver: its card shows the table,
    // the partition and preview rows of what would be loaded.
    const card = page.getByTestId('approval-load');
    const deadline = Date.now() + T;
    while (!(await card.isVisible())) {
      assert.ok(Date.now() < deadline, 'no approval card within the time limit');
      if (!shotProgress && (await page.locator('[data-testid^="progress-ship_"] progress').count()) > 0) {
        await shot(page, 'run-progress');
        shotProgress = true;
      }
      const d = await page.evaluate(() => document.querySelector('.run-head [data-status]')?.getAttribute('data-status'));
      assert.ok(!['failed', 'cancelled'].includes(d), `the run ended ${d}`);
      await page.waitForTimeout(250);
    }
    const text = await card.innerText();
    assert.match(text, new RegExp(r.hive_table.replace('.', '\\.')));
    assert.match(text, new RegExp(r.partition));
    const previewRows = await card.locator('table.preview tbody tr').count();
    assert.ok(previewRows >= 1, `preview rows: ${previewRows}`);
    await shot(page, 'run-approval');
    await card.getByLabel(/Comment/).fill(`checked ${previewRows} preview rows`);
    await card.getByRole('button', { name: 'Approve' }).click();
    await card.waitFor({ state: 'detached', timeout: T });

    await page.waitForFunction(
      () => {
        const nodes = [...document.querySelectorAll('[data-testid^="dag-node-"]')];
        return nodes.length > 0 && nodes.every((n) => n.getAttribute('data-status') === 'completed');
      },
      null,
      { timeout: T },
    );
    await page.locator('.run-head [data-status="completed"]').waitFor({ timeout: T });
    const seen = await page.evaluate(() => {
      clearInterval(window.__timer);
      return { bars: window.__bars, points: window.__points, states: window.__states };
    });
    console.log(`progress bar values seen between empty and full: ${JSON.stringify(seen.bars)}`);
    console.log(`loss chart points over time: ${seen.points.join(' → ')}`);
    // Steps turned completed on the DAG while the page watched (not only at the end).
    const followed = Object.entries(seen.states).filter(([, s]) => s.length >= 2 && s.at(-1) === 'completed');
    assert.ok(followed.length >= 3, `steps followed live: ${JSON.stringify(seen.states)}`);
    // A transfer's bar moved: at least two values strictly between empty and full.
    assert.ok(
      Object.values(seen.bars).some((v) => v.length >= 2),
      `a transfer's progress bar moved: ${JSON.stringify(seen.bars)}`,
    );
    // The curve gained its points epoch by epoch: two lines (train loss, validation
    // logloss), so 2, 4, 6 points; at least one intermediate count was drawn.
    const last = seen.points.at(-1);
    assert.ok(last >= EPOCHS, `points at the end: ${last}`);
    assert.ok(
      seen.points.some((n) => n > 0 && n < last),
      `the curve grew while training ran: ${seen.points.join(' → ')}`,
    );
    for (let i = 1; i < seen.points.length; i++) {
      assert.ok(seen.points[i] >= seen.points[i - 1], `points never go back: ${seen.points}`);
    }
    // The monitor stage's report, sent with its step: headline figures and the epochs.
    const report = page.getByTestId('report');
    await report.waitFor({ timeout: T });
    assert.match(await report.innerText(), /Best validation AUC\s+0\.\d{4}/);
    assert.equal(await report.getByRole('table', { name: 'Training epochs' }).locator('tbody tr').count(), EPOCHS);
    await page.getByTestId('timeline').waitFor();
    await shot(page, 'run-pipeline');
    console.log(`task ${taskId} completed`);
  } catch (e) {
    failed = true;
    throw e;
  }
});
