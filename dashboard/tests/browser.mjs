// The browser side of the dashboard's tests: Debian's Chromium driven by playwright-core,
// screenshots, and logging in with a token through the page.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
/** Where screenshots go (kept as CI artifacts, not committed). */
export const SHOTS = process.env.FERRY_DASHBOARD_SCREENSHOTS ?? path.join(here, '..', 'test-output');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** A headless Chromium (CHROMIUM, /usr/bin/chromium by default). */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking'],
  });
}

/** A full-page screenshot `name`.png in SHOTS. */
export async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** A new browser context whose page reports its errors, logged in at `baseUrl` with `token`. */
export async function logIn(browser, baseUrl, token, contextOptions = {}) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, ...contextOptions });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`page error: ${e.message}`));
  await page.goto(`${baseUrl}/runs`);
  await page.getByLabel('Access token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { name: 'Runs' }).waitFor();
  return page;
}
