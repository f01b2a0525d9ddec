import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { makePool, type Pool } from '../../src/db/pool.js';
import { HttpBudget } from '../../src/sources/http/ratelimit.js';
import { httpSource } from '../../src/sources/http/schema.js';
import { httpSourceClient } from '../../src/sources/http/source.js';
import { testDatabase, type TestDatabase } from '../helpers/db.js';
import { testClient } from './clients.js';
import { Vendor } from './vendor.js';

// No test here measures how long anything took: the budget's decisions are
// read back from sync.http_budget, where PostgreSQL's clock stamped them,
// and compared exactly. A wait that is only computed (never slept) uses a
// window of an hour, so that no delay of a loaded machine moves a slot out
// of its window.
const HOUR = 3_600;
// The margin take_http_request adds to a slot computed from an earlier one.
const GUARD_MS = 40;
// Date.now() counts whole milliseconds; PostgreSQL's clock microseconds.
const CLOCK_MS = 1;

let db: TestDatabase;
let pools: [Pool, Pool];
let vendor: Vendor;
let sources = 0;
const freshSource = () => `shop${++sources}`;

beforeAll(async () => {
  db = await testDatabase('http_budget');
  // Two "worker processes": separate pools, so nothing is shared in memory.
  pools = [makePool(db.url, { max: 3 }), makePool(db.url, { max: 3 })];
});
afterAll(async () => {
  await Promise.all(pools.map((p) => p.end()));
});
// A vendor of its own for every test: no other test's request among its hits.
beforeEach(async () => {
  vendor = new Vendor(3);
  await vendor.start();
});
afterEach(() => vendor.close());

async function waitMs(source: string, limit: number, windowSeconds: number): Promise<number> {
  const { rows } = await db.pool.query<{ ms: number }>(
    'select (extract(epoch from sync.take_http_request($1, $2, $3)) * 1000)::float8 as ms', [source, limit, windowSeconds]);
  return rows[0].ms;
}

/** A source's budget row (none yet: no slots), times as epoch milliseconds (microsecond fractions kept): the slots granted, sorted. */
async function budget(source: string): Promise<{ started: number[]; updatedAt: number; blockedUntil: number | null }> {
  const { rows } = await db.pool.query(
    `select array(select extract(epoch from s)::float8 * 1000 from unnest(started) s order by s) as started,
            extract(epoch from updated_at)::float8 * 1000 as updated_at,
            extract(epoch from blocked_until)::float8 * 1000 as blocked_until
       from sync.http_budget where source = $1`, [source]);
  if (!rows.length) return { started: [], updatedAt: Number.NaN, blockedUntil: null };
  return { started: rows[0].started, updatedAt: rows[0].updated_at, blockedUntil: rows[0].blocked_until };
}

/** Most of `times` within any `windowMs`-long span. */
function busiestWindow(times: number[], windowMs: number): number {
  const s = [...times].sort((a, b) => a - b);
  let best = 0;
  for (let i = 0; i < s.length; i++) {
    let j = i;
    while (j < s.length && s[j] < s[i] + windowMs) j++;
    best = Math.max(best, j - i);
  }
  return best;
}

/**
 * The pool as HttpBudget uses it, noting each wait sync.take_http_request
 * answered: what the budget told a request to wait, whatever the machine's speed.
 */
function noting(pool: Pool, waits: number[]): Pool {
  return {
    query: async (...args: Parameters<Pool['query']>) => {
      const r = await (pool.query as (...a: unknown[]) => Promise<{ rows: { wait_ms?: number }[] }>)(...args);
      if (typeof r.rows[0]?.wait_ms === 'number') waits.push(r.rows[0].wait_ms);
      return r;
    },
  } as unknown as Pool;
}

describe('sync.take_http_request', () => {
  test('grants `limit` requests, then reserves the slot when the oldest leaves the window (plus a 40 ms guard)', async () => {
    const src = freshSource();
    for (let i = 0; i < 3; i++) expect(await waitMs(src, 3, HOUR)).toBe(0);
    const wait = await waitMs(src, 3, HOUR);
    const b = await budget(src);
    // The fourth slot is one window and the guard after the first; the wait
    // runs from the moment of the call (updated_at) to that slot.
    expect(b.started[3] - b.started[0]).toBeCloseTo(HOUR * 1000 + GUARD_MS, 2);
    expect(wait).toBeCloseTo(b.started[3] - b.updatedAt, 2);
    // The slot is reserved: the next caller gets the one after it.
    const next = await waitMs(src, 3, HOUR);
    const after = await budget(src);
    expect(after.started[4] - after.started[1]).toBeCloseTo(HOUR * 1000 + GUARD_MS, 2);
    expect(next).toBeCloseTo(after.started[4] - after.updatedAt, 2);
    const { rows } = await db.pool.query('select cardinality(started) as n, request_limit, window_seconds from sync.http_budget where source = $1', [src]);
    expect(rows[0]).toEqual({ n: 5, request_limit: 3, window_seconds: HOUR });
  });

  test('a 429\'s Retry-After blocks every caller until it has passed', async () => {
    const src = freshSource();
    expect(await waitMs(src, 100, 1)).toBe(0);
    await db.pool.query(`select sync.http_feedback($1, null, interval '1 hour')`, [src]);
    const blocked = await budget(src);
    expect(blocked.blockedUntil! - blocked.updatedAt).toBeCloseTo(HOUR * 1000, 2);
    // Two callers, far below the limit: neither may start before the block ends.
    const waits = [await waitMs(src, 100, 1), await waitMs(src, 100, 1)];
    const b = await budget(src);
    expect(b.started.slice(-2)).toEqual([blocked.blockedUntil, blocked.blockedUntil]);
    expect(waits[1]).toBeCloseTo(blocked.blockedUntil! - b.updatedAt, 2);
    expect(waits[0]).toBeGreaterThan(waits[1]);
  });

  test('X-RateLimit-Remaining is the vendor\'s count: its room is used, a spent count waits for its reset, and nothing unsent is booked', async () => {
    const src = freshSource();
    expect(await waitMs(src, 2, HOUR)).toBe(0);
    // The vendor has more left than our limit allows: its count decides until its window ends.
    await db.pool.query('select sync.http_feedback($1, 3, null)', [src]);
    for (let i = 0; i < 3; i++) expect(await waitMs(src, 2, HOUR)).toBe(0);
    await db.pool.query('select sync.http_feedback($1, 0, null)', [src]); // someone else spent it
    const spent = await budget(src);
    // Only the requests granted are in the log: none booked for the vendor's zero.
    expect(spent.started).toHaveLength(4);
    const { rows } = await db.pool.query('select reset_at, vendor_left from sync.http_budget where source = $1', [src]);
    expect(rows[0].vendor_left).toBe(0);
    // Without a reset in the headers, the vendor's window ends at the latest a window after our oldest request.
    const resetAt = (rows[0].reset_at as Date).getTime();
    expect(resetAt - spent.started[0]).toBeCloseTo(HOUR * 1000, -1);
    const wait = await waitMs(src, 2, HOUR);
    const b = await budget(src);
    // The vendor's reset decides, not our own log of the (configured) 2 per window, which would free a slot later.
    expect(b.started[4]).toBeCloseTo(resetAt + GUARD_MS, -1);
    expect(b.started[4]).toBeLessThan(spent.started[3] + HOUR * 1000 + GUARD_MS);
    expect(wait).toBeCloseTo(b.started[4] - b.updatedAt, 2);
  });

  test('an answer moves its grant from its slot to its arrival: our log never counts a late request as early', async () => {
    const src = freshSource();
    const { rows } = await db.pool.query('select seq, slot::text as slot from sync.http_take($1, 5, $2)', [src, HOUR]);
    await db.pool.query('select sync.http_take($1, 5, $2)', [src, HOUR]);
    const before = await budget(src);
    await db.pool.query(`select sync.http_feedback($1, $2, null, 3, null, null, null, $3::timestamptz)`, [src, rows[0].seq, rows[0].slot]);
    const after = await budget(src);
    // The first grant now counts from the answer (updated_at); the other is untouched.
    expect(after.started).toHaveLength(2);
    expect(after.started).toContain(before.started[1]);
    expect(after.started).toContain(after.updatedAt);
    expect(after.started).not.toContain(before.started[0]);
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
    const src = freshSource();
    const b = new HttpBudget(pools[0], src, { requests: 1, perSeconds: HOUR });
    await b.take();
    const caller = new AbortController();
    let settled = false;
    const second = b.take(caller.signal).finally(() => { settled = true; });
    // Its slot is reserved a window after the first: it is waiting for it.
    const reserved = await reached(async () => {
      const s = (await budget(src)).started;
      return s.length === 2 && s;
    });
    expect(reserved[1] - reserved[0]).toBeCloseTo(HOUR * 1000 + GUARD_MS, 2);
    expect(settled).toBe(false);
    caller.abort();
    await expect(second).rejects.toMatchObject({ name: 'AbortError' });
  });

  test('a 429 seen by one worker holds back the other for the Retry-After, and not longer', async () => {
    const src = freshSource();
    // A window of an hour: a request held "a window later" would never come.
    const limit = { requests: 50, perSeconds: HOUR };
    const waitsB: number[] = [];
    const a = testClient(vendor.url, {}, { budget: new HttpBudget(pools[0], src, limit) });
    const b = testClient(vendor.url, {}, { budget: new HttpBudget(noting(pools[1], waitsB), src, limit) });
    vendor.retryAfter = '3';
    vendor.inject('429');
    const first = a.getJson('offsets');
    first.catch(() => {}); // awaited below; a failure before that must not go unhandled
    // B asks once A has been told 429 and has passed it on, while the block is on.
    const blockedUntil = await reached(async () => (await budget(src)).blockedUntil);
    await b.getJson('offsets');
    await first;
    expect(vendor.hits).toHaveLength(3);
    const [limited, ...after] = vendor.hits;
    // No request after the 429 reached the vendor before the block ended …
    for (const h of after) expect(h.wall).toBeGreaterThanOrEqual(Math.floor(blockedUntil) - CLOCK_MS);
    expect(Math.min(...after.map((h) => h.at)) - limited.at).toBeGreaterThanOrEqual(3_000 - 2 * CLOCK_MS);
    // … B was held back by it, to the block's end exactly, not a window on
    // (a window is an hour: a request held that long would never come).
    expect(waitsB).toHaveLength(1);
    expect(waitsB[0]).toBeGreaterThan(0);
    const { started } = await budget(src);
    expect(started).toHaveLength(3);
    expect(started).toContain(blockedUntil);
    for (const s of started.slice(1)) expect(s).toBeGreaterThanOrEqual(blockedUntil);
  });

  test('two workers on two pools never start more than `limit` requests within any window, and wait no longer than the budget needs', async () => {
    const windowMs = 1_000;
    await fc.assert(fc.asyncProperty(
      fc.integer({ min: 2, max: 4 }), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 5 }),
      async (limit, perWorkerA, perWorkerB) => {
        const src = freshSource();
        const rate = { requests: limit, perSeconds: windowMs / 1000 };
        const waits: number[] = [];
        const clients = pools.map((p) => testClient(vendor.url, {}, { budget: new HttpBudget(noting(p, waits), src, rate) }));
        vendor.reset();
        // Each worker fires all its requests at once, as parallel jobs would.
        const work = (i: 0 | 1, n: number) => Promise.all(Array.from({ length: n }, () => clients[i].getJson('offsets')));
        await Promise.all([work(0, perWorkerA), work(1, perWorkerB)]);
        const total = perWorkerA + perWorkerB;
        expect(vendor.hits).toHaveLength(total);
        expect(waits).toHaveLength(total);
        // The slots the database granted: never more than `limit` in a window.
        const { started } = await budget(src);
        expect(started).toHaveLength(total);
        expect(busiestWindow(started, windowMs)).toBeLessThanOrEqual(limit);
        // No request reached the vendor before its slot (the i-th arrival is
        // not before the i-th slot): the vendor saw the same pace, or slower.
        const arrivals = vendor.hits.map((h) => h.wall).sort((x, y) => x - y);
        arrivals.forEach((t, i) => expect(t).toBeGreaterThanOrEqual(Math.floor(started[i]) - CLOCK_MS));
        // Not stingier than needed: the k-th request to ask waits at most one
        // window (and guard) for each `limit` requests ahead of it, however
        // late any of them asked. Sorted, the waits keep that bound.
        const sorted = [...waits].sort((x, y) => x - y);
        sorted.forEach((w, k) => expect(w).toBeLessThanOrEqual(Math.floor(k / limit) * (windowMs + GUARD_MS) + CLOCK_MS));
        expect(sorted.slice(0, Math.min(limit, total)).every((w) => w === 0)).toBe(true);
      }), { numRuns: 5 });
  });
});

/** Polls `fn` until it returns something truthy (a state the database reached); the test's timeout bounds it. */
async function reached<T>(fn: () => Promise<T | null | undefined | false>): Promise<T> {
  for (;;) {
    const v = await fn();
    if (v) return v;
    await new Promise((r) => setTimeout(r, 10));
  }
}
