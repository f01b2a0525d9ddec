/**
 * The dashboard in a real browser (Debian's Chromium driven by
 * playwright-core) against a real server, worker and database: sign in with
 * the token, sync and watch the bar reach done, cancel a slow run,
 * acknowledge an alert (the name asked once), get the database's refusal of
 * a bad tunable, and screenshots at desktop and phone widths in
 * test-results/screenshots/. Then a new install: the "sign in directly" link
 * the server prints, and trend charts fitted to a few minutes of runs.
 */
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { makePool, type Pool } from '../src/db/pool.js';
import { Engine } from '../src/engine/run.js';
import { startWorker, type WorkerHandle } from '../src/worker/worker.js';
import { startServer, type RunningServer } from '../src/server/server.js';

const CHROMIUM = '/usr/bin/chromium';
const SCREENSHOTS = path.resolve('test-results/screenshots');
const TOKEN = 'e2e-token-9f8e7d6c5b4a3210';
const OPERATOR = 'Dana Operator';
const missing = !existsSync(CHROMIUM);
const ci = process.env.CI === 'true';
if (missing && !ci) console.warn(`skipping the dashboard browser tests: ${CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)`);

// Schedules that do not fire while the test runs (the worker is live): a
// cron run of customers would race the "Sync now" the test clicks.
const ENTITIES = {
  customers: { source: 'src', from: { table: 'customers' }, target: 'customers', key: ['id'], schedule: '0 2 * * 1' },
  orders: { source: 'src', from: { table: 'orders' }, target: 'orders', key: ['id'], dependsOn: ['customers'], interval: '1 day' },
  products: { source: 'src', from: { table: 'products' }, target: 'products', key: ['sku'], schedule: '30 4 1 * *', freshness: '2 hours' },
  // pg_sleep per 3 kB row: a fetch slow enough to cancel, with progress every few rows.
  inventory: { source: 'src', from: { query: `select sku, rpad(sku, 3000, '.') as note from products where pg_sleep(0.25) is not null` },
    target: 'inventory', key: ['sku'] },
  invoices: { source: 'src', from: { table: 'invoices_v2' }, target: 'invoices', key: ['id'], alerts: { failures: 1 } },
};

let sync: TestDatabase;
let source: TestDatabase;
let workerEngine: Engine;
let handle: WorkerHandle;
let apiPool: Pool;
let apiEngine: Engine;
let server: RunningServer;
let browser: Browser;
let page: Page;

async function seed(): Promise<void> {
  const ddl = `create table customers (id int primary key, name text, city text);
    create table orders (id int primary key, customer_id int references customers, total numeric(10,2));
    create table products (sku text primary key, title text, price numeric(10,2));
    create table invoices (id int primary key)`;
  await source.pool.query(`${ddl};
    insert into customers select i, 'customer ' || i, (array['Lyon','Porto','Gent','Turku'])[1 + i % 4] from generate_series(1, 2000) i;
    insert into orders select i, 1 + i % 2000, (i % 500) + 0.99 from generate_series(1, 6000) i;
    insert into products select 'P' || lpad(i::text, 5, '0'), 'product ' || i, 9.5 + i % 40 from generate_series(1, 200) i;
    analyze customers; analyze orders; analyze products`);
  await sync.pool.query(`${ddl}; create table inventory (sku text primary key, note text)`);
}

/**
 * Two days of history for the trend chart: real runs, each moved back in time
 * afterwards (the runs are real; only when they happened is staged).
 */
async function history(engine: Engine): Promise<void> {
  for (let i = 0; i < 16; i++) {
    await source.pool.query(`update customers set name = name || '.' where id % 97 = $1`, [i]);
    await source.pool.query(`update orders set total = total + 1 where id % 31 = $1`, [i]);
    const ids: number[] = [];
    for (const name of ['customers', 'orders', 'products', ...(i % 5 === 0 ? ['invoices'] : [])]) {
      const r = await engine.run(name, { trigger: 'cron' });
      if (r.runId) ids.push(r.runId);
    }
    const back = `${(16 - i) * 3 - 1} hours`;
    await sync.pool.query(`update sync.run set started_at = started_at - $2::interval, finished_at = finished_at - $2::interval
                            where id = any($1)`, [ids, back]);
  }
  // products has not succeeded for hours: the freshness check (the worker's sync_tick runs it) raises "stale".
  await sync.pool.query(`update sync.run set started_at = started_at - interval '3 hours', finished_at = finished_at - interval '3 hours'
                          where entity = 'products' and started_at > now() - interval '3 hours'`);
  await sync.pool.query('select sync.check_freshness()');
}

beforeAll(async () => {
  if (missing) {
    throw new Error(`${CHROMIUM} is missing: the dashboard browser tests need Debian's chromium — .ci/run installs it (apt-get install -y chromium)`);
  }
  ({ sync, source } = await testDatabases('e2e'));
  await seed();
  workerEngine = await engineFor(sync, source, ENTITIES);
  await history(workerEngine);
  handle = await startWorker(workerEngine, { concurrency: 1 });
  apiPool = makePool(sync.url, { max: 8 });
  apiEngine = new Engine(apiPool, sync.url, workerEngine.config);
  server = await startServer({ engine: apiEngine, host: '127.0.0.1', port: 0, token: TOKEN, worker: handle });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
  page = await browser.newPage({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  page.setDefaultTimeout(30_000);
  mkdirSync(SCREENSHOTS, { recursive: true });
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
  await handle?.stop();
  await apiEngine?.close();
  await apiPool?.end();
  await workerEngine?.close();
});

const row = (entity: string, on = page) => on.locator(`tr.entity-row[data-entity="${entity}"]`);
const progress = (entity: string) => page.locator(`tr[data-progress-for="${entity}"]`);
// Waits on what the page shows (it updates from the server as runs go), within the test's own bound.
const poll = <T>(fn: () => Promise<T> | T) => expect.poll(fn, { timeout: 30_000, interval: 100 });
const shot = (name: string, fullPage = true, on = page) => on.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage });

/** What the runs chart shows, from the uPlot instance the page keeps on its element (not from pixels). */
const chartOf = (on: Page) => on.evaluate(() => {
  const u = (document.querySelector('#chart-runs') as HTMLElement & { uplot?: { data: (number | null)[][]; scales: { x: { min: number; max: number } } } }).uplot;
  if (!u) return null;
  const [xs, runs] = u.data as number[][];
  return { buckets: xs.length, stepSeconds: xs[1] - xs[0], xs, runs, xMin: u.scales.x.min, xMax: u.scales.x.max };
});

describe.skipIf(missing && !ci)('dashboard in Chromium', () => {
  it('refuses a wrong token, then signs in with the right one', async () => {
    await page.goto(server.url);
    await page.getByLabel('API token').fill('not-the-right-token-123');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await poll(() => page.locator('#login-error').textContent()).toMatch(/That token was refused/);
    await shot('login', false);
    await page.getByLabel('API token').fill(TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await row('customers').waitFor();
    await poll(() => page.locator('#health').textContent()).toMatch(/Worker alive/);
    expect(await row('invoices').locator('.badge').textContent()).toBe('failing');
    expect(await row('products').locator('.badge').textContent()).toBe('stale');
    // The chart library drew the trend (a canvas a chart); with two days of
    // runs the Auto range is the 48 hours by the hour.
    await poll(() => page.locator('.chart canvas').count()).toBe(3);
    expect(await chartOf(page)).toMatchObject({ buckets: 48, stepSeconds: 3600 });
    expect(await page.locator('[data-unit]').textContent()).toBe('per hour');
  });

  it('"Sync now" starts a run whose progress bar reaches done', async () => {
    await row('customers').getByRole('button', { name: 'Sync now' }).click();
    const bar = progress('customers').getByRole('progressbar');
    await bar.waitFor();
    await poll(() => bar.getAttribute('aria-valuenow')).toBe('100');
    expect(await bar.getAttribute('aria-valuetext')).toBe('succeeded');
    expect(await progress('customers').textContent()).toMatch(/succeeded.*2,000 fetched/);
    const { rows } = await sync.pool.query(`select status, trigger from sync.run where entity = 'customers' order by id desc limit 1`);
    expect(rows[0]).toEqual({ status: 'succeeded', trigger: 'api' });
  });

  it('cancels a slow run: it ends cancelled and nothing is merged', async () => {
    await row('inventory').getByRole('button', { name: 'Sync now' }).click();
    const box = progress('inventory');
    await poll(() => box.textContent()).toMatch(/Fetching\s*[1-9]/);
    await shot('sync-in-progress', false);
    await box.getByRole('button', { name: 'Cancel' }).click();
    await poll(() => box.getByRole('progressbar').getAttribute('aria-valuetext')).toBe('cancelled');
    const { rows } = await sync.pool.query(`select status, error from sync.run where entity = 'inventory' order by id desc limit 1`);
    expect(rows[0]).toEqual({ status: 'cancelled', error: 'cancelled on request (sync.cancel)' });
    expect((await sync.pool.query('select count(*)::int as n from inventory')).rows[0].n).toBe(0);
  });

  it('asks who acknowledges at the first Acknowledge (Cancel acknowledges nothing), records the name, and asks no more', async () => {
    const ackedBy = async (entity: string, kind: string) => (await sync.pool.query(
      'select acknowledged_by from sync.alert where entity = $1 and kind = $2 order by id desc limit 1', [entity, kind])).rows[0].acknowledged_by;
    const alert = page.locator('li.alert', { hasText: 'consecutive failures' }).filter({ hasText: 'invoices' });
    const dialog = page.getByRole('dialog', { name: 'Who acknowledges?' });
    await alert.waitFor();
    await alert.getByRole('button', { name: 'Acknowledge' }).click();
    await dialog.waitFor();
    await shot('name-asked', false);
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'hidden' });
    expect(await ackedBy('invoices', 'consecutive_failures')).toBeNull();
    await alert.getByRole('button', { name: 'Acknowledge' }).click();
    await dialog.getByLabel('Your name').fill(OPERATOR);
    await dialog.getByRole('button', { name: 'Acknowledge' }).click();
    await alert.waitFor({ state: 'detached' });
    expect(await ackedBy('invoices', 'consecutive_failures')).toBe(OPERATOR);
    expect(await page.locator('#user').textContent()).toBe(OPERATOR);
    // The next acknowledgement goes out under the same name, with no question.
    const stale = page.locator('li.alert', { hasText: 'stale' });
    expect(await stale.count()).toBe(1);
    await stale.getByRole('button', { name: 'Acknowledge' }).click();
    await stale.waitFor({ state: 'detached' });
    expect(await dialog.isVisible()).toBe(false);
    expect(await ackedBy('products', 'stale')).toBe(OPERATOR);
  });

  it('shows the database\'s message for a bad tunable and saves a good one', async () => {
    await page.locator('#config-entity').selectOption('orders');
    const threshold = page.getByLabel('Failure threshold');
    await threshold.fill('0');
    await page.getByRole('button', { name: 'Save changes' }).click();
    const message = page.locator('#config-message');
    await poll(() => message.textContent()).toMatch(/entity orders: failure_threshold 0 is not between 1 and 100/);
    expect(await message.textContent()).toMatch(/Hint: the number of failed runs in a row that raises an alert/);
    expect(await threshold.getAttribute('aria-invalid')).toBe('true');
    await shot('config-refused', false);
    await threshold.fill('4');
    await page.getByRole('button', { name: 'Save changes' }).click();
    await poll(() => message.textContent()).toMatch(/Saved orders: failure_threshold = 4/);
    expect((await sync.pool.query(`select failure_threshold from sync.entity where name = 'orders'`)).rows[0].failure_threshold).toBe(4);
  });

  it('looks right on a desktop and on a phone', async () => {
    // A run in progress beside the finished ones, as an operator would see it.
    await row('inventory').getByRole('button', { name: 'Sync now' }).click();
    await poll(() => progress('inventory').textContent()).toMatch(/Fetching\s*[1-9]/);
    await shot('dashboard-desktop');
    await page.setViewportSize({ width: 390, height: 844 });
    await poll(() => page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    // On a phone each entity is a card: its name above its cells, the action a full-width button.
    const box = await row('customers').boundingBox();
    expect(box!.width).toBeLessThanOrEqual(390);
    await shot('dashboard-narrow');
    await page.setViewportSize({ width: 1440, height: 900 });
    await progress('inventory').getByRole('button', { name: 'Cancel' }).click();
    await poll(() => progress('inventory').getByRole('progressbar').getAttribute('aria-valuetext')).toBe('cancelled');
  });
});

// A new install: the first few minutes of runs, and the link `syncline serve`
// and `npm start` print (test/server-api.test.ts checks that they print it
// as `<url>#token=<token>`).
describe.skipIf(missing && !ci)('a new install, opened from the "sign in directly" link', () => {
  const FRESH_TOKEN = 'e2e-fresh-token-0a1b2c3d4e5f';
  const RUNS = 5;
  let fresh: RunningServer;
  let freshEngine: Engine;
  const contexts: BrowserContext[] = [];

  /** A page in a context of its own: no sessionStorage or localStorage from the tests above. */
  async function freshPage(): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
    contexts.push(context);
    const p = await context.newPage();
    p.setDefaultTimeout(30_000);
    return p;
  }

  beforeAll(async () => {
    const dbs = await testDatabases('e2e_new');
    await dbs.source.pool.query(`create table customers (id int primary key, name text);
      insert into customers select i, 'customer ' || i from generate_series(1, 300) i`);
    await dbs.sync.pool.query('create table customers (id int primary key, name text)');
    freshEngine = await engineFor(dbs.sync, dbs.source, { customers: ENTITIES.customers });
    // One run a minute for the last few minutes: real runs, each moved back
    // afterwards (as in history() above), i minutes for the i-th from the end.
    for (let i = RUNS - 1; i >= 0; i--) {
      await dbs.source.pool.query(`update customers set name = name || '.' where id % 7 = $1`, [i]);
      const r = await freshEngine.run('customers', { trigger: 'cron' });
      await dbs.sync.pool.query(`update sync.run set started_at = started_at - $2::interval, finished_at = finished_at - $2::interval
                                  where id = $1`, [r.runId, `${i} minutes`]);
    }
    fresh = await startServer({ engine: freshEngine, host: '127.0.0.1', port: 0, token: FRESH_TOKEN });
  });

  afterAll(async () => {
    for (const c of contexts) await c.close();
    await fresh?.close();
    await freshEngine?.close();
  });

  it('signs in at once: the dashboard, no sign-in form, no name asked, the token gone from the address bar; a reload stays in', async () => {
    const p = await freshPage();
    await p.goto(`${fresh.url}#token=${FRESH_TOKEN}`);
    await row('customers', p).waitFor();
    expect(await p.locator('#login').isVisible()).toBe(false);
    expect(await p.getByRole('dialog').count()).toBe(0);
    expect(await p.getByLabel('Your name').isVisible()).toBe(false);
    expect(p.url()).toBe(fresh.url);
    expect(p.url()).not.toContain(FRESH_TOKEN);
    // The tab keeps the token (sessionStorage), not the address: a reload stays signed in.
    await p.reload();
    await row('customers', p).waitFor();
    expect(await p.locator('#login').isVisible()).toBe(false);
    expect(p.url()).toBe(fresh.url);
  });

  it('fits the trend to a few minutes of runs: a minute axis with every run, not a spike at the edge of 48 hours', async () => {
    const p = await freshPage();
    await p.goto(`${fresh.url}#token=${FRESH_TOKEN}`);
    await poll(async () => (await chartOf(p))?.stepSeconds).toBe(60);
    const chart = (await chartOf(p))!;
    expect(await p.locator('[data-unit]').textContent()).toBe('per minute');
    // Every run is on the chart, each in its own minute, with room for them all on an axis of minutes, not hours.
    expect(chart.runs.reduce((a, b) => a + (b ?? 0), 0)).toBe(RUNS);
    expect(chart.runs.filter((n) => n)).toHaveLength(RUNS);
    expect(chart.buckets).toBeGreaterThanOrEqual(RUNS);
    expect(chart.buckets).toBeLessThan(60);
    // The x scale spans the buckets (half a bucket either side), and the first run is not at the left edge.
    expect(chart.xMin).toBeLessThan(chart.xs[0]);
    expect(chart.xMax).toBeGreaterThan(chart.xs.at(-1)!);
    expect(chart.xMax - chart.xMin).toBeLessThan(3600);
    expect(chart.runs.findIndex((n) => n)).toBeGreaterThan(0);
    await shot('trend-new-install', false, p);
    // The fixed ranges stay one click away: 48 hours by the hour.
    await p.getByRole('button', { name: '48 hours' }).click();
    await poll(async () => (await chartOf(p))?.buckets).toBe(48);
    expect((await chartOf(p))!.stepSeconds).toBe(3600);
  });

  it('a link with a wrong token shows the sign-in form saying the link was refused, and the right token then signs in', async () => {
    const p = await freshPage();
    await p.goto(`${fresh.url}#token=not-the-current-token-42`);
    await poll(() => p.locator('#login-error').textContent()).toMatch(/The token in that link was refused/);
    expect(await p.locator('#app').isVisible()).toBe(false);
    expect(p.url()).toBe(fresh.url);
    expect(await p.evaluate(() => sessionStorage.getItem('syncline.token'))).toBeNull();
    await p.getByLabel('API token').fill(FRESH_TOKEN);
    await p.getByRole('button', { name: 'Sign in' }).click();
    await row('customers', p).waitFor();
  });
});
