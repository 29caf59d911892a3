// Schedules in a real Chromium against a real coordinator (its schedule pass every second)
// and a data-source agent: a schedule's runs on its calendar by logical date, linked to
// their runs; pause and resume; a backfill's dry run from the form, a refused range shown
// beside its field, the backfill started with its progress, months with runs browsed; a
// backfill cancelled and a schedule deleted; what a viewer is offered; the capacity queue
// and the agents' slots on the agents page. Screenshots go to
// FERRY_DASHBOARD_SCREENSHOTS (dashboard/test-output/ by default).
//
// Needs: the daemons built (see ../README.md), Chromium (CHROMIUM, /usr/bin/chromium by
// default) and `npm ci` here.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { launchBrowser, logIn, shot } from './browser.mjs';
import { Cluster, waitFor } from './cluster.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const T = 30_000;
const ZONE = 'Asia/Shanghai';

let cluster;
let browser;
let admin;
let failed = false;

/** A date (YYYY-MM-DD) in `zone`, `days` from today. */
function dateIn(zone, days = 0) {
  const parts = new Intl.DateTimeFormat('en-CA', {
    timeZone: zone,
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
  }).formatToParts(new Date());
  const get = (t) => Number(parts.find((p) => p.type === t).value);
  return new Date(Date.UTC(get('year'), get('month') - 1, get('day') + days))
    .toISOString()
    .slice(0, 10);
}

/** `days` after the date `ymd`. */
function addDays(ymd, days) {
  const [y, m, d] = ymd.split('-').map(Number);
  return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10);
}

before(async () => {
  assert.ok(
    fs.existsSync(path.join(here, '..', 'dist', 'index.html')),
    'dashboard/dist is missing: run `npm run build`',
  );
  cluster = new Cluster();
  await cluster.startCoordinator({ env: { FERRY_WORKFLOW__SCHEDULE_INTERVAL: '1' } });
  cluster.startAgent('source', 'src-1');
  await cluster.waitForAgents(1);
  browser = await launchBrowser();
  admin = await logIn(browser, cluster.baseUrl, cluster.adminToken);
  await cluster.api('POST', '/api/workflows', {
    name: 'tick',
    description: 'one quick step',
    steps: [{ name: 'tick', kind: 'exec', placement: { role: 'data_source' }, params: { program: 'true' } }],
  });
});

after(async () => {
  await browser?.close();
  if (failed && cluster) {
    for (const name of ['coordinator', 'src-1']) {
      console.error(`---- ${name}.log (tail) ----\n${cluster.readLog(name).slice(-4000)}`);
    }
  }
  await cluster?.stop();
});

function track() {
  return async (fn) => {
    try {
      await fn();
    } catch (e) {
      failed = true;
      throw e;
    }
  };
}

test("a schedule's runs show on its calendar, today's linked to its run", async () =>
  track()(async () => {
    await cluster.api('POST', '/api/schedules', {
      name: 'every-second',
      workflow: 'tick',
      cron: '* * * * * *',
      timezone: ZONE,
    });
    await waitFor('a scheduled run', async () => {
      const d = await cluster.api('GET', '/api/schedules/every-second');
      return d.runs.some((r) => r.task_id);
    }, T, 250);

    await admin.getByRole('link', { name: 'Schedules', exact: true }).click();
    const list = admin.getByTestId('schedules');
    await list.waitFor();
    const row = list.getByRole('row').filter({ hasText: 'every-second' });
    assert.match(await row.innerText(), /workflow tick/);
    assert.match(await row.innerText(), /\* \* \* \* \* \*\s+in Asia\/Shanghai/);
    assert.match(await row.innerText(), /Active/);
    await shot(admin, 'schedules');

    await row.getByRole('link', { name: 'every-second' }).click();
    await admin.waitForURL(/\/schedules\/every-second$/);
    await admin.getByRole('heading', { name: 'every-second' }).waitFor();
    const settings = admin.getByTestId('schedule-settings');
    assert.match(await settings.innerText(), /Asia\/Shanghai/);
    assert.match(await settings.innerText(), /\+08:00/);

    // Today in the schedule's zone: marked, with its runs' worst state in words, linked.
    const today = dateIn(ZONE);
    const calendar = admin.getByTestId('calendar');
    assert.equal(await calendar.getAttribute('data-month'), today.slice(0, 7));
    const cell = calendar.locator(`td[data-date="${today}"]`);
    assert.equal(await cell.getAttribute('aria-current'), 'date');
    const link = cell.locator('a[href^="/runs/"]');
    await link.waitFor({ timeout: T });
    assert.match(await link.innerText(), /Completed|Running|Pending|Failed|Cancelled/);
    const href = await link.getAttribute('href');
    const { runs } = await cluster.api('GET', '/api/schedules/every-second');
    const ids = runs.map((r) => `/runs/${r.task_id}`);
    assert.ok(ids.includes(href), `${href} is one of the schedule's runs: ${ids.join(' ')}`);
    assert.ok(runs.every((r) => r.ds === today || r.ds === dateIn(ZONE, -1)), 'dates in the zone');
    // Several runs a day: their count.
    await cell.getByText(/^\d+ runs$/).waitFor({ timeout: T });
    // Other days stay blank.
    assert.equal(await calendar.locator('td.cal-day a').count(), 1);
    await shot(admin, 'schedule-calendar');

    // The day links to its newest run in the worst state, which changes as runs come.
    await link.click();
    await admin.waitForURL(/\/runs\/\d+$/);
    const opened = new URL(admin.url()).pathname;
    const now = (await cluster.api('GET', '/api/schedules/every-second')).runs;
    assert.ok(now.some((r) => `/runs/${r.task_id}` === opened), `${opened} is a run of the schedule`);
    await admin.getByRole('heading', { name: /#\d+/ }).waitFor();
  }));

test('pausing a schedule stops its runs; the calendar settles on their states', async () =>
  track()(async () => {
    await admin.goto(`${cluster.baseUrl}/schedules/every-second`);
    const state = admin.getByTestId('schedule-state');
    await state.waitFor({ timeout: T });
    assert.match(await state.innerText(), /Active/);
    await admin.getByRole('button', { name: 'Pause' }).click();
    await state.getByText('Paused').waitFor({ timeout: T });
    assert.equal((await cluster.api('GET', '/api/schedules/every-second')).schedule.paused, true);
    assert.match(await admin.getByTestId('next-runs').innerText(), /none while paused/);
    // No new run; the last one finishes on the agent, and the day shows them all completed.
    const today = admin.getByTestId('calendar').locator(`td[data-date="${dateIn(ZONE)}"]`);
    await admin
      .waitForFunction(
        (date) =>
          document.querySelector(`td[data-date="${date}"]`)?.getAttribute('data-status') === 'completed',
        dateIn(ZONE),
        { timeout: T },
      )
      .catch(async (e) => {
        throw new Error(`${e.message}: the day shows ${await today.innerText()}`);
      });
    assert.match(await today.innerText(), /Completed/);
    await shot(admin, 'schedule-paused');
    await admin.getByRole('button', { name: 'Resume' }).click();
    await state.getByText('Active').waitFor({ timeout: T });
    await admin.getByRole('button', { name: 'Pause' }).click();
    await state.getByText('Paused').waitFor({ timeout: T });

    // A range with more runs than a backfill takes: the message shows beside End.
    const form = admin.getByRole('form', { name: 'Backfill' });
    await form.getByLabel('Start').fill(dateIn(ZONE, -3));
    await form.getByLabel('End').fill(dateIn(ZONE, -2));
    await form.getByRole('button', { name: 'Dry run' }).click();
    const endField = form.locator('.field.invalid').filter({ has: admin.getByLabel('End') });
    await endField.getByRole('alert').waitFor({ timeout: T });
    assert.equal(await form.getByLabel('End').getAttribute('aria-invalid'), 'true');
    assert.ok(await form.getByRole('button', { name: 'Start the backfill' }).isDisabled());
  }));

test('a backfill: a dry run lists its dates, then it runs with its progress', async () =>
  track()(async () => {
    // A daily schedule, paused: only the backfill makes runs. Its range spans the end of
    // the month before last, so the calendar has two months to browse.
    await cluster.api('POST', '/api/schedules', {
      name: 'nightly',
      workflow: 'tick',
      cron: '0 2 * * *',
      timezone: ZONE,
      paused: true,
    });
    const firstOfLastMonth = `${addDays(`${dateIn(ZONE).slice(0, 7)}-01`, -1).slice(0, 7)}-01`;
    const start = addDays(firstOfLastMonth, -2);
    const end = addDays(firstOfLastMonth, 1);
    const dates = [0, 1, 2, 3].map((i) => addDays(start, i));

    await admin.goto(`${cluster.baseUrl}/schedules/nightly`);
    await admin.getByRole('heading', { name: 'nightly' }).waitFor();
    const form = admin.getByRole('form', { name: 'Backfill' });
    await form.getByLabel('Start').fill(start);
    await form.getByLabel('End').fill(end);
    await form.getByLabel('Max at once').fill('4');
    await form.getByLabel('Reprocess').selectOption('missing');
    const startButton = form.getByRole('button', { name: 'Start the backfill' });
    assert.ok(await startButton.isDisabled(), 'a dry run comes first');
    await form.getByRole('button', { name: 'Dry run' }).click();
    const preview = admin.getByTestId('backfill-dry-run');
    await preview.waitFor({ timeout: T });
    assert.match(await preview.innerText(), /It would create 4 runs on 4 dates/);
    assert.deepEqual(await preview.locator('li').allInnerTexts(), dates);
    // A dry run stores nothing.
    assert.deepEqual((await cluster.api('GET', '/api/backfills?schedule=nightly')).backfills, []);
    await shot(admin, 'backfill-dry-run');

    await startButton.click();
    await form.getByRole('status').filter({ hasText: /Backfill \d+ started: 4 runs/ }).waitFor({ timeout: T });
    const table = admin.getByTestId('backfills');
    await table.waitFor({ timeout: T });
    assert.match(await table.innerText(), new RegExp(`${start} to ${end}`));
    await table
      .getByText('4 done, 0 running, 0 failed, 0 left')
      .waitFor({ timeout: T })
      .catch(async (e) => {
        throw new Error(`${e.message}: the backfills show ${await table.innerText()}`);
      });
    await table.locator('[data-status="completed"]').waitFor({ timeout: T });
    assert.equal(await table.getByRole('button', { name: 'Cancel…' }).count(), 0);

    // The calendar opens on the newest month with runs and goes back to the one before.
    const calendar = admin.getByTestId('calendar');
    await admin.waitForFunction(
      (d) => document.querySelector(`td[data-date="${d}"]`)?.getAttribute('data-status') === 'completed',
      end,
      { timeout: T },
    );
    assert.equal(await calendar.getAttribute('data-month'), end.slice(0, 7));
    assert.equal(await calendar.locator('td.cal-day a[href^="/runs/"]').count(), 2);
    assert.ok(await calendar.getByRole('button', { name: /→$/ }).isDisabled());
    await shot(admin, 'schedule-backfilled');
    await calendar.getByRole('button', { name: /^← / }).click();
    await admin.waitForURL(new RegExp(`month=${start.slice(0, 7)}`));
    assert.equal(await calendar.getAttribute('data-month'), start.slice(0, 7));
    for (const d of [dates[0], dates[1]]) {
      const cell = calendar.locator(`td[data-date="${d}"]`);
      assert.equal(await cell.getAttribute('data-status'), 'completed');
      assert.match(await cell.innerText(), /Completed/);
    }
    assert.equal(await calendar.locator('td.cal-day a').count(), 2);
  }));

test('a backfill is cancelled from its row; a schedule is deleted from its page', async () =>
  track()(async () => {
    await cluster.api('POST', '/api/workflows', {
      name: 'nap',
      steps: [
        { name: 'nap', kind: 'exec', placement: { role: 'data_source' }, params: { program: 'sleep', args: ['60'] } },
      ],
    });
    await cluster.api('POST', '/api/schedules', {
      name: 'slow',
      workflow: 'nap',
      cron: '0 3 * * *',
      timezone: ZONE,
      paused: true,
    });
    const { backfill } = await cluster.api('POST', '/api/backfills', {
      schedule: 'slow',
      start: dateIn(ZONE, -4),
      end: dateIn(ZONE, -2),
      max_active: 1,
    });
    await admin.goto(`${cluster.baseUrl}/schedules/slow`);
    const row = admin.getByTestId(`backfill-${backfill.id}`);
    await row.getByText('1 running').waitFor({ timeout: T });
    assert.match(await row.innerText(), /0 done, 1 running, 0 failed, 2 left/);
    assert.equal(
      await row.getByRole('img').getAttribute('aria-label'),
      '0 done, 1 running, 0 failed, 2 left of 3',
    );
    await admin.getByTestId('calendar').locator('td[data-status="running"] a').waitFor({ timeout: T });
    await shot(admin, 'backfill-running');
    await row.getByRole('button', { name: 'Cancel…' }).click();
    await row.getByRole('button', { name: `Yes, cancel backfill ${backfill.id}` }).click();
    await row.locator('[data-status="cancelled"]').waitFor({ timeout: T });
    assert.equal(await row.getByRole('button', { name: /Cancel/ }).count(), 0);
    // Its running task is cancelled with it.
    await admin
      .getByTestId('calendar')
      .locator('td[data-status="cancelled"] a')
      .waitFor({ timeout: T });

    await admin.getByRole('button', { name: 'Delete…' }).click();
    await admin.getByRole('button', { name: 'Yes, delete the schedule' }).click();
    await admin.waitForURL(/\/schedules$/);
    await admin.getByTestId('schedules').waitFor();
    assert.equal(await admin.getByRole('link', { name: 'slow', exact: true }).count(), 0);
    const { schedules } = await cluster.api('GET', '/api/schedules');
    assert.deepEqual(schedules.map((x) => x.name).sort(), ['every-second', 'nightly']);
  }));

test('a viewer sees the schedule but no actions and no backfill form', async () =>
  track()(async () => {
    const created = await cluster.api('POST', '/api/tokens', { name: 'vic', roles: ['viewer'] });
    const viewer = await logIn(browser, cluster.baseUrl, created.token);
    await viewer.goto(`${cluster.baseUrl}/schedules/nightly`);
    await viewer.getByTestId('calendar').waitFor({ timeout: T });
    await viewer.getByTestId('backfills').waitFor({ timeout: T });
    assert.equal(await viewer.getByTestId('actions').count(), 0);
    assert.equal(await viewer.getByRole('form', { name: 'Backfill' }).count(), 0);
    for (const name of ['Pause', 'Resume', /Delete/, /Cancel/]) {
      assert.equal(await viewer.getByRole('button', { name }).count(), 0, `button ${name}`);
    }
    await viewer.context().close();
  }));

test('the agents page shows slots and the capacity queue, hidden when empty', async () =>
  track()(async () => {
    await admin.getByRole('link', { name: 'Agents', exact: true }).click();
    await admin.getByTestId('agents').waitFor();
    assert.match(await admin.getByTestId('slots-src-1').innerText(), /^\d+(\/\d+| \(no limit\))$/);
    assert.equal(await admin.getByTestId('queue').count(), 0);
    // A queue (answered by the browser here): one row per waiting step, linked to its run.
    await admin.route('**/api/queue', (route) =>
      route.fulfill({
        json: {
          steps: [
            {
              position: 1,
              task_id: 7,
              task_name: 'train-nightly',
              workflow: 'ctr',
              step: 'train',
              priority: 0,
              needs: '1 slot, 2 GPUs',
              waits_for: 'a GPU on train-1',
            },
          ],
        },
      }),
    );
    const queue = admin.getByTestId('queue');
    await queue.waitFor({ timeout: T });
    assert.match(await queue.innerText(), /1\s+train-nightly #7\s+train\s+1 slot, 2 GPUs\s+a GPU on train-1/);
    assert.equal(await queue.getByRole('link', { name: 'train-nightly' }).getAttribute('href'), '/runs/7');
    await shot(admin, 'agents-queue');
    await admin.unroute('**/api/queue');
    await queue.waitFor({ state: 'detached', timeout: T });
  }));
