import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { makePool, type Pool } from '../../src/db/pool.js';
import { HttpBudget } from '../../src/sources/http/ratelimit.js';
import { httpSource } from '../../src/sources/http/schema.js';
import { httpSourceClient } from '../../src/sources/http/source.js';
import { testDatabase, type TestDatabase } from '../helpers/db.js';
import { testClient } from './clients.js';
import { Vendor } from './vendor.js';

// Server-side arrival times trail the grant in Postgres by a round trip; a
// grant exactly one window after another may arrive this much sooner.
const ARRIVAL_JITTER_MS = 60;

let db: TestDatabase;
let pools: [Pool, Pool];
let vendor: Vendor;
let sources = 0;
const freshSource = () => `shop${++sources}`;

beforeAll(async () => {
  db = await testDatabase('http_budget');
  // Two "worker processes": separate pools, so nothing is shared in memory.
  pools = [makePool(db.url, { max: 3 }), makePool(db.url, { max: 3 })];
  vendor = new Vendor(3);
  await vendor.start();
});
afterAll(async () => {
  await vendor.close();
  await Promise.all(pools.map((p) => p.end()));
});

async function waitMs(source: string, limit: number, windowSeconds: number): Promise<number> {
  const { rows } = await db.pool.query<{ ms: number }>(
    'select (extract(epoch from sync.take_http_request($1, $2, $3)) * 1000)::float8 as ms', [source, limit, windowSeconds]);
  return rows[0].ms;
}

/** Most request starts within any `windowMs`-long span. */
function busiestWindow(starts: number[], windowMs: number): number {
  const s = [...starts].sort((a, b) => a - b);
  let best = 0;
  for (let i = 0; i < s.length; i++) {
    let j = i;
    while (j < s.length && s[j] < s[i] + windowMs) j++;
    best = Math.max(best, j - i);
  }
  return best;
}

describe('sync.take_http_request', () => {
  test('grants `limit` requests, then reserves the slot when the oldest leaves the window (plus a 40 ms guard)', async () => {
    const src = freshSource();
    for (let i = 0; i < 3; i++) expect(await waitMs(src, 3, 2)).toBe(0);
    const wait = await waitMs(src, 3, 2);
    expect(wait).toBeGreaterThan(1_800);
    expect(wait).toBeLessThanOrEqual(2_040);
    // The slot is reserved: the next caller gets the one after it.
    expect(await waitMs(src, 3, 2)).toBeGreaterThan(wait - 50);
    const { rows } = await db.pool.query('select cardinality(started) as n, request_limit, window_seconds from sync.http_budget where source = $1', [src]);
    expect(rows[0]).toEqual({ n: 5, request_limit: 3, window_seconds: 2 });
  });

  test('a 429\'s Retry-After blocks every caller until it has passed', async () => {
    const src = freshSource();
    expect(await waitMs(src, 100, 1)).toBe(0);
    await db.pool.query(`select sync.http_feedback($1, null, interval '1.5 seconds')`, [src]);
    const wait = await waitMs(src, 100, 1);
    expect(wait).toBeGreaterThan(1_300);
    expect(wait).toBeLessThanOrEqual(1_500);
  });

  test('X-RateLimit-Remaining below our own count spends the difference', async () => {
    const src = freshSource();
    expect(await waitMs(src, 5, 1)).toBe(0);
    await db.pool.query('select sync.http_feedback($1, 10, null)', [src]); // vendor has more left than we think: no change
    expect(await waitMs(src, 5, 1)).toBe(0);
    await db.pool.query('select sync.http_feedback($1, 0, null)', [src]); // someone else spent it
    expect(await waitMs(src, 5, 1)).toBeGreaterThan(800);
  });

  test('feedback for a source without a budget is ignored', async () => {
    await db.pool.query('select sync.http_feedback($1, 0, interval \'1 hour\')', ['nobody']);
    const { rows } = await db.pool.query('select count(*)::int as n from sync.http_budget where source = $1', ['nobody']);
    expect(rows[0].n).toBe(0);
  });
});

describe('HttpBudget', () => {
  test('a source with a rateLimit gets a client paced through the database; one without does not', async () => {
    const limited = httpSourceClient('paced', httpSource.parse({ kind: 'http', baseUrl: vendor.url, rateLimit: { requests: 9, perSeconds: 1 } }), pools[0]);
    const free = httpSourceClient('free', httpSource.parse({ kind: 'http', baseUrl: vendor.url }), pools[0]);
    await limited.getJson('offsets');
    await free.getJson('offsets');
    const { rows } = await db.pool.query('select source, cardinality(started) as n from sync.http_budget where source in ($1, $2)', ['paced', 'free']);
    expect(rows).toEqual([{ source: 'paced', n: 1 }]);
  });

  test('take() waits out a full window and can be aborted', async () => {
    const budget = new HttpBudget(pools[0], freshSource(), { requests: 1, perSeconds: 2 });
    await budget.take();
    const started = performance.now();
    await expect(budget.take(AbortSignal.timeout(200))).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(performance.now() - started).toBeLessThan(600);
  });

  test('a 429 seen by one worker holds back the other for the Retry-After', async () => {
    const src = freshSource();
    const limit = { requests: 50, perSeconds: 1 };
    const [a, b] = pools.map((p) => testClient(vendor.url, {}, { budget: new HttpBudget(p, src, limit) }));
    vendor.reset();
    vendor.retryAfter = '1';
    vendor.inject('429');
    await a.getJson('offsets');
    const afterA = performance.now();
    await b.getJson('offsets');
    const [first, , third] = vendor.hits;
    expect(third.at - first.at).toBeGreaterThanOrEqual(1_000 - ARRIVAL_JITTER_MS);
    expect(performance.now() - afterA).toBeLessThan(500); // B went once the block was over, not a window later
  });

  test('two workers on two pools never start more than `limit` requests within any window, and use the budget', async () => {
    await fc.assert(fc.asyncProperty(
      fc.integer({ min: 2, max: 4 }), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 5 }),
      async (limit, perWorkerA, perWorkerB) => {
        const src = freshSource();
        const rate = { requests: limit, perSeconds: 1 };
        const clients = pools.map((p) => testClient(vendor.url, {}, { budget: new HttpBudget(p, src, rate) }));
        vendor.reset();
        const started = performance.now();
        // Each worker fires all its requests at once, as parallel jobs would.
        const work = (i: 0 | 1, n: number) => Promise.all(Array.from({ length: n }, () => clients[i].getJson('offsets')));
        await Promise.all([work(0, perWorkerA), work(1, perWorkerB)]);
        const elapsed = performance.now() - started;
        const total = perWorkerA + perWorkerB;
        expect(vendor.hits).toHaveLength(total);
        expect(busiestWindow(vendor.hits.map((h) => h.at), 1_000 - ARRIVAL_JITTER_MS)).toBeLessThanOrEqual(limit);
        // Not stingier than needed: full windows wait one window each.
        expect(elapsed).toBeLessThan((Math.ceil(total / limit) - 1) * 1_000 + 700);
      }), { numRuns: 5 });
  });
});
