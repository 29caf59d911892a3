// The workflow designer (seed 003) in a real Chromium against a real coordinator and agent:
// create a graph, drag a DATA and a STANDALONE node from the palette onto the canvas, set
// them up in the side panel, draw the connections with the mouse (one wrong on purpose, whose
// verdict from the coordinator shows on that connection), fix it, keep the view across a
// reload, execute, follow the run to its end and download its output from the run page.
// Screenshots go to FERRY_DASHBOARD_SCREENSHOTS (dashboard/test-output/ by default).
//
// Needs: the daemons built (see ../README.md), Chromium (CHROMIUM, /usr/bin/chromium by
// default) and `npm ci` here.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchBrowser, logIn, SHOTS, shot } from './browser.mjs';
import { Cluster } from './cluster.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const T = 90_000;
const GRAPH = 'shout_words';

let cluster;
let browser;
let page; // the admin's page
let failed = false;
let words; // the DATA node's file, on the agent
let taskId;

function login(token) {
  return logIn(browser, cluster.baseUrl, token, {
    viewport: { width: 1500, height: 1000 },
    acceptDownloads: true,
  });
}

function track(fn) {
  return async () => {
    try {
      await fn();
    } catch (e) {
      failed = true;
      await page?.screenshot({ path: path.join(SHOTS, 'designer-failure.png') }).catch(() => {});
      throw e;
    }
  };
}

/** Presses the mouse on one element's centre and releases it on another's, in steps, as a
 * person drags (React Flow draws connections from mouse events on the handles). */
async function drag(from, to) {
  const a = await from.boundingBox();
  const b = await to.boundingBox();
  assert.ok(a && b, 'both ends are on the page');
  await page.mouse.move(a.x + a.width / 2, a.y + a.height / 2);
  await page.mouse.down();
  await page.mouse.move(a.x + a.width / 2 + 20, a.y + a.height / 2 + 10, { steps: 5 });
  await page.mouse.move(b.x + b.width / 2, b.y + b.height / 2, { steps: 15 });
  await page.mouse.up();
}

const node = (name) => page.getByTestId(`designer-node-${name}`);
const handle = (name, id) => page.getByTestId(`handle-${name}-${id}`);

/** Waits for the graph's next answer from the coordinator after `action`. */
async function edited(action, method = /PATCH|POST|DELETE/) {
  const answer = page.waitForResponse(
    (r) => r.url().includes(`/api/graphs/${GRAPH}`) && method.test(r.request().method()),
  );
  await action();
  const res = await answer;
  assert.ok(res.ok(), `${res.request().method()} ${res.url()}: ${res.status()} ${await res.text()}`);
  return res.json();
}

before(async () => {
  assert.ok(
    fs.existsSync(path.join(here, '..', 'dist', 'index.html')),
    'dashboard/dist is missing: run `npm run build`',
  );
  cluster = new Cluster();
  // The DATA node offers a file under the agent's work_dir (the agent's roots).
  words = cluster.path('work/data/words.txt');
  fs.mkdirSync(path.dirname(words), { recursive: true });
  fs.writeFileSync(words, 'ferry\ncarries\nwords\nacross\n');
  await cluster.startCoordinator();
  cluster.startAgent('source', 'src-1');
  cluster.startAgent('train', 'train-1');
  await cluster.waitForAgents(2);
  browser = await launchBrowser();
  page = await login(cluster.adminToken);
});

after(async () => {
  await browser?.close();
  if (failed && cluster) {
    for (const name of ['coordinator', 'src-1', 'train-1']) {
      console.error(`---- ${name}.log (tail) ----\n${cluster.readLog(name).slice(-4000)}`);
    }
  }
  await cluster?.stop();
});

test(
  'a graph is created and its nodes are dragged from the palette onto the canvas',
  track(async () => {
    await page.getByRole('link', { name: 'Designer', exact: true }).click();
    await page.getByRole('heading', { name: 'Designer' }).waitFor();
    await page.getByLabel('Graph name').fill(GRAPH);
    await page.getByLabel('Description').fill('upper-case a file of words');
    await page.getByRole('button', { name: 'Create graph' }).click();
    await page.waitForURL(`**/designer/${GRAPH}`);
    const canvas = page.getByTestId('designer-canvas');
    await canvas.waitFor();
    // An empty graph: the coordinator says what is missing.
    await page.getByTestId('problems').getByText('workflow must have at least one node').waitFor();

    // HTML5 drag and drop from the palette, each to its own spot.
    const box = await canvas.boundingBox();
    await edited(() =>
      page.getByTestId('palette-DATA').dragTo(canvas, {
        targetPosition: { x: box.width * 0.15, y: box.height * 0.2 },
      }),
    );
    await node('data-1').waitFor();
    await edited(() =>
      page.getByTestId('palette-STANDALONE').dragTo(canvas, {
        targetPosition: { x: box.width * 0.4, y: box.height * 0.65 },
      }),
    );
    await node('standalone-1').waitFor();
    // Dropped where they were let go: the STANDALONE one lies right of and below the DATA one.
    const d = await node('data-1').boundingBox();
    const s = await node('standalone-1').boundingBox();
    assert.ok(s.x > d.x + 100 && s.y > d.y + 50, `positions ${JSON.stringify({ d, s })}`);
    const stored = await cluster.api('GET', `/api/graphs/${GRAPH}`);
    assert.deepEqual(
      stored.definition.nodes.map((n) => [n.name, n.service_type, n.agent]),
      [
        ['data-1', 'DATA', 'src-1'],
        ['standalone-1', 'STANDALONE', 'src-1'],
      ],
    );
    // New nodes lack their settings; each says so on itself.
    assert.match(await node('data-1').innerText(), /STDOUT needs a `path`/);
    assert.match(await node('standalone-1').innerText(), /needs an `entrypoint`/);
    assert.equal(await node('standalone-1').getAttribute('data-problems'), '1');
  }),
);

test(
  'the side panel sets each node up through the graph API',
  track(async () => {
    await node('data-1').click();
    const editor = page.getByTestId('node-editor');
    await editor.getByLabel('Node name').fill('words');
    // Both agents are offered; the nodes stay together on src-1 (a local delivery, no SSH).
    const agents = await editor.getByLabel('Agent').locator('option').allInnerTexts();
    assert.ok(agents.includes('src-1') && agents.includes('train-1'), agents.join(', '));
    await editor.getByLabel('Agent').selectOption('src-1');
    await editor.getByLabel('Interface 1 path').fill(words);
    await edited(() => editor.getByRole('button', { name: 'Save node' }).click());
    await node('words').waitFor();
    assert.equal(await node('words').getAttribute('data-problems'), '0');

    await node('standalone-1').click();
    await editor.getByLabel('Node name').fill('shout');
    await editor.getByLabel(/entrypoint/).fill(`sh -c 'tr a-z A-Z'`);
    await edited(() => editor.getByRole('button', { name: 'Save node' }).click());
    await node('shout').waitFor();
    const shout = (await cluster.api('GET', `/api/graphs/${GRAPH}`)).definition.nodes[1];
    assert.deepEqual(shout.entrypoint, ['sh', '-c', 'tr a-z A-Z']);
    assert.deepEqual(
      shout.interfaces.map((i) => i.type),
      ['STDIN', 'STDOUT'],
    );
    await page.getByTestId('graph-state').filter({ hasText: 'Ready to build' }).waitFor();
  }),
);

test(
  "a connection drawn to the wrong handle shows the coordinator's verdict on it, and is fixed",
  track(async () => {
    // words' STDOUT dropped on shout's STDOUT (its output, not its input).
    const g = await edited(() => drag(handle('words', 'out:STDOUT'), handle('shout', 'out:STDOUT')));
    assert.deepEqual(g.definition.connections[0], {
      from: { node: 'words', interface: 'STDOUT' },
      to: { node: 'shout', interface: 'STDOUT' },
    });
    assert.equal(g.problems.length, 1);
    assert.match(g.problems[0], /^connection #0 words\.STDOUT → shout\.STDOUT: STDOUT → STDOUT is not allowed/);
    // The verdict is drawn on the offending connection, in words besides the colour.
    const wrong = page.getByTestId('connection-0');
    await wrong.waitFor();
    assert.equal(await wrong.getAttribute('data-problems'), '1');
    assert.match(await wrong.innerText(), /STDOUT → STDOUT is not allowed/);
    await page.getByTestId('graph-state').filter({ hasText: '1 problem' }).waitFor();
    await page.getByTestId('problems').getByText(/connection #0 words\.STDOUT → shout\.STDOUT/).waitFor();
    // Build names the same problem and refuses.
    await page.getByRole('button', { name: 'Build' }).click();
    await page.getByRole('alert').filter({ hasText: 'Build refused' }).waitFor();
    await shot(page, 'designer-wrong-connection');

    // Fixed: the connection is removed from its panel and drawn to the input.
    await wrong.click();
    const panel = page.getByTestId('connection-editor');
    await panel.getByText('STDOUT → STDOUT is not allowed').waitFor();
    await edited(() => panel.getByRole('button', { name: 'Remove connection' }).click());
    await page.getByTestId('connection-0').waitFor({ state: 'detached' });
    // Dragged from the input to the output this time: the connection still runs output → input.
    let after = await edited(() => drag(handle('shout', 'in:STDIN'), handle('words', 'out:STDOUT')));
    assert.deepEqual(after.definition.connections, [
      { from: { node: 'words', interface: 'STDOUT' }, to: { node: 'shout', interface: 'STDIN' } },
    ]);
    assert.deepEqual(after.problems, []);
    // shout's output goes to the coordinator, renamed on the connection's panel.
    after = await edited(() => drag(handle('shout', 'out:STDOUT'), page.getByTestId('handle-coordinator')));
    assert.deepEqual(after.definition.connections[1], {
      from: { node: 'shout', interface: 'STDOUT' },
      to: { interface: 'STDOUT' },
    });
    await page.getByTestId('connection-editor').getByLabel('Destination file name').fill('shouted.txt');
    await edited(() => page.getByRole('button', { name: 'Save file name' }).click(), /POST/);
    await page.getByTestId('connection-1').filter({ hasText: 'shouted.txt' }).waitFor();
    const stored = await cluster.api('GET', `/api/graphs/${GRAPH}`);
    assert.equal(stored.definition.connections[1].destination_file_name, 'shouted.txt');
    assert.deepEqual(stored.problems, []);
    await page.getByTestId('graph-state').filter({ hasText: 'Ready to build' }).waitFor();
    await page.getByRole('button', { name: 'Build' }).click();
    await page.getByRole('status').filter({ hasText: /Built workflow shout_words/ }).waitFor();
  }),
);

test(
  'the zoom and pan are saved and come back after a reload',
  track(async () => {
    const viewport = () =>
      page.locator('.react-flow__viewport').evaluate((el) => el.style.transform);
    await edited(
      () => page.getByRole('button', { name: 'Zoom out' }).click(),
      /PUT/,
    );
    const before = await viewport();
    const stored = (await cluster.api('GET', `/api/graphs/${GRAPH}`)).definition.canvas;
    assert.ok(stored && stored.zoom > 0 && stored.zoom < 2.5, JSON.stringify(stored));
    await page.reload();
    await node('words').waitFor();
    assert.equal(await viewport(), before);
    await shot(page, 'designer');
  }),
);

test(
  'executing opens the run, which ends with the output to download',
  track(async () => {
    await page.getByRole('button', { name: 'Execute' }).click();
    await page.waitForURL(/\/runs\/\d+$/);
    taskId = Number(new URL(page.url()).pathname.split('/').pop());
    await page.getByTestId('dag-node-shout').waitFor({ timeout: T });
    await page.locator('.run-head [data-status="completed"]').waitFor({ timeout: T });
    const outputs = page.getByTestId('outputs');
    const link = outputs.getByRole('link', { name: 'shouted.txt' });
    await link.waitFor({ timeout: T });
    const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
    assert.equal(download.suggestedFilename(), 'shouted.txt');
    const got = fs.readFileSync(await download.path(), 'utf8');
    assert.equal(got, 'FERRY\nCARRIES\nWORDS\nACROSS\n');
    await shot(page, 'designer-run-outputs');
    const listed = await cluster.api('GET', `/api/workflow/tasks/${taskId}/outputs`);
    assert.deepEqual(
      listed.files.map((f) => [f.node, f.path]),
      [['shout', 'shouted.txt']],
    );
  }),
);

test(
  'the keyboard alone adds a node, connects it and removes it',
  track(async () => {
    await page.goto(`${cluster.baseUrl}/designer/${GRAPH}`);
    await node('words').waitFor();
    const add = page.getByRole('button', { name: 'Add DOCKER node' });
    await add.focus();
    const outline = await add.evaluate((el) => getComputedStyle(el).outlineStyle);
    assert.notEqual(outline, 'none', 'a visible focus ring');
    await edited(() => page.keyboard.press('Enter'));
    await node('docker-1').waitFor();
    assert.match(await node('docker-1').innerText(), /needs an `image`/);
    const editor = page.getByTestId('node-editor');
    await editor.getByRole('heading', { name: /DOCKER node docker-1/ }).waitFor();
    // Its "Connect an output" form: words' output could feed it, shout's output too.
    await node('shout').click();
    await editor.getByLabel('To', { exact: true }).selectOption({ label: 'docker-1.STDIN' });
    const g = await edited(() => editor.getByRole('button', { name: 'Connect' }).click());
    assert.deepEqual(g.definition.connections[2], {
      from: { node: 'shout', interface: 'STDOUT' },
      to: { node: 'docker-1', interface: 'STDIN' },
    });
    await page.getByTestId('connection-editor').waitFor();
    await node('docker-1').click();
    await editor.getByRole('button', { name: 'Remove node…' }).click();
    const after = await edited(() => editor.getByRole('button', { name: 'Yes, remove it' }).click());
    assert.deepEqual(
      after.definition.nodes.map((n) => n.name),
      ['words', 'shout'],
    );
    assert.equal(after.definition.connections.length, 2);
    assert.deepEqual(after.problems, []);
  }),
);

test(
  'a viewer sees the graph and its state, but no palette and no edits',
  track(async () => {
    const created = await cluster.api('POST', '/api/tokens', { name: 'vic', roles: ['viewer'] });
    const viewer = await login(created.token);
    await viewer.goto(`${cluster.baseUrl}/designer/${GRAPH}`);
    await viewer.getByTestId('designer-node-words').waitFor();
    await viewer.getByTestId('read-only').waitFor();
    for (const name of ['Add DATA node', 'Build', 'Execute']) {
      assert.equal(await viewer.getByRole('button', { name }).count(), 0, `button ${name}`);
    }
    await viewer.getByTestId('designer-node-shout').click();
    assert.ok(await viewer.getByTestId('node-editor').getByLabel('Node name').isDisabled());
    assert.equal(await viewer.getByRole('button', { name: 'Save node' }).count(), 0);
    await shot(viewer, 'designer-viewer');
    await viewer.context().close();
  }),
);
