import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { applyConfig } from '../../src/config/apply.js';
import { parseConfig } from '../../src/config/load.js';
import { Engine } from '../../src/engine/run.js';
import { parseRateHeaders, parseReset, throttleBackoffMs } from '../../src/sources/http/timing.js';
import { testDatabase, type TestDatabase } from '../helpers/db.js';
import { Vendor } from './vendor.js';

// Nothing here measures how long a run took. The vendor counts the requests
// of each of its windows; the waits asserted are the ones the run recorded
// in sync.run.detail.http, compared with what the vendor asked for.

// The vendor's real limit: small, so that a run spans several windows in seconds.
const REAL = { requests: 6, windowMs: 1_000 };
// Records, one a page: a run of RECORDS + 1 requests (the empty page ends it).
const RECORDS = 30;
// The margin a recorded wait may exceed what the vendor asked: timers and a loaded machine.
const WAIT_MARGIN_MS = 500;
// The guard sync.http_take adds after a reset, in milliseconds.
const GUARD_MS = 40;

let db: TestDatabase;
let vendor: Vendor;
let engine: Engine | undefined;
let runs = 0;

beforeAll(async () => {
  db = await testDatabase('http_rate_headers');
});
afterEach(async () => {
  await engine?.close();
  engine = undefined;
  await vendor?.close();
});
afterAll(async () => {
  await db.pool.end();
});

type ResetStyle = 'epoch' | 'seconds';

/**
 * A vendor enforcing REAL in fixed windows aligned to the clock (as most do),
 * saying so in its headers, and answering 429 to a request over it. Returns
 * the arrival times of the requests it answered and the 429s it sent.
 */
function limitedVendor(v: Vendor, style: ResetStyle, prefix: 'x-ratelimit' | 'ratelimit') {
  const answered: number[] = [];
  let throttled = 0;
  const counts = new Map<number, number>();
  v.override = (_req, res) => {
    const now = Date.now();
    const window = Math.floor(now / REAL.windowMs);
    const used = counts.get(window) ?? 0;
    const resetAt = (window + 1) * REAL.windowMs;
    const reset = style === 'epoch' ? String(resetAt / 1000) : ((resetAt - now) / 1000).toFixed(3);
    if (used >= REAL.requests) {
      throttled++;
      res.writeHead(429, { [`${prefix}-limit`]: String(REAL.requests), [`${prefix}-remaining`]: '0', [`${prefix}-reset`]: reset })
        .end('{"error":"slow down"}');
      return true;
    }
    counts.set(window, used + 1);
    answered.push(now);
    res.setHeader(`${prefix}-limit`, String(REAL.requests));
    res.setHeader(`${prefix}-remaining`, String(REAL.requests - used - 1));
    res.setHeader(`${prefix}-reset`, reset);
    return false; // the normal answer, with these headers
  };
  return { answered, throttled: () => throttled };
}

/** Requests in each whole window between the first and the last (both partial: the run starts and ends inside them). */
function wholeWindows(arrivals: number[]): number[] {
  const windows = arrivals.map((t) => Math.floor(t / REAL.windowMs));
  const first = Math.min(...windows);
  const last = Math.max(...windows);
  const counts: number[] = [];
  for (let w = first + 1; w < last; w++) counts.push(windows.filter((x) => x === w).length);
  return counts;
}

interface HttpDetail {
  requests: number; retries: number; throttled: number;
  wait_ms: { budget: number; retry: number };
  limit: { requests: number; seconds: number; from: string; window_from: string } | null;
}

/** One entity on a fresh vendor with RECORDS records, read a page of one record at a time. */
async function setUp(rateLimit: { requests: number; perSeconds: number } | undefined, records = RECORDS) {
  vendor = new Vendor(records);
  const url = await vendor.start();
  const table = `items_${++runs}`;
  await db.pool.query(`create table ${table} (id int primary key, name text not null, version bigint)`);
  const cfg = parseConfig({
    sources: { [`shop${runs}`]: { kind: 'http', baseUrl: url, ...(rateLimit ? { rateLimit } : {}),
      retries: { max: 3, baseMs: 5, maxMs: 20, rateLimited: 10 } } },
    entities: {
      [table]: { source: `shop${runs}`, target: table, key: ['id'], columns: ['id', 'name', 'version'],
        from: { http: { path: 'version', pagination: { style: 'version', param: 'after', versionPath: 'version.max', sizeParam: 'page_size', size: 1 } } } },
    },
  }, {});
  await applyConfig(db.pool, cfg);
  engine = new Engine(db.pool, db.url, cfg);
  return table;
}

async function run(table: string) {
  const r = await engine!.run(table, { trigger: 'manual' });
  const { rows } = await db.pool.query('select detail from sync.run where id = $1', [r.runId]);
  return { r, http: rows[0].detail.http as HttpDetail };
}

describe('a budget that learns the vendor\'s limit from its headers', () => {
  const cases: { name: string; rateLimit: { requests: number; perSeconds: number }; style: ResetStyle; prefix: 'x-ratelimit' | 'ratelimit' }[] = [
    { name: 'configured far slower than the vendor (the lightspeed-x default, 350 per 300 s), Reset in seconds', rateLimit: { requests: 350, perSeconds: 300 }, style: 'seconds', prefix: 'x-ratelimit' },
    { name: 'configured slower (2 per 1 s), Reset as an epoch timestamp', rateLimit: { requests: 2, perSeconds: 1 }, style: 'epoch', prefix: 'x-ratelimit' },
    { name: 'configured faster than the vendor allows (100 per 1 s), IETF RateLimit-* headers', rateLimit: { requests: 100, perSeconds: 1 }, style: 'seconds', prefix: 'ratelimit' },
  ];
  for (const c of cases) {
    test(`${c.name}: 0 avoidable 429s, >= 90% of the real budget used`, async () => {
      const table = await setUp(c.rateLimit);
      const seen = limitedVendor(vendor, c.style, c.prefix);
      const { r, http } = await run(table);
      expect(r).toMatchObject({ status: 'succeeded', inserted: RECORDS });
      // The headers told the truth: every 429 would have been avoidable.
      expect(seen.throttled()).toBe(0);
      expect(http).toMatchObject({ requests: RECORDS + 1, retries: 0, throttled: 0 });
      const whole = wholeWindows(seen.answered);
      expect(whole.length).toBeGreaterThanOrEqual(2);
      for (const n of whole) expect(n).toBeLessThanOrEqual(REAL.requests);
      const used = whole.reduce((a, b) => a + b, 0) / (whole.length * REAL.requests);
      expect(used).toBeGreaterThanOrEqual(0.9);
      // The limit paced by is the vendor's, its window no longer than the vendor's.
      expect(http.limit).toMatchObject({ requests: REAL.requests, from: 'headers', window_from: 'headers' });
      expect(http.limit!.seconds).toBeGreaterThan(0);
      expect(http.limit!.seconds).toBeLessThanOrEqual(REAL.windowMs / 1000);
      // The budget waited for the vendor's resets, never for a window of the configuration's.
      expect(http.wait_ms.budget).toBeLessThan((whole.length + 2) * REAL.windowMs);
    });
  }

  test('a 429 without Retry-After is retried after a short backoff, not a configured window', async () => {
    const table = await setUp({ requests: 350, perSeconds: 300 }, 3);
    let bare = 2;
    vendor.override = (_req, res) => {
      if (bare <= 0) return false;
      bare--;
      res.writeHead(429).end('{"error":"slow down"}');
      return true;
    };
    const { r, http } = await run(table);
    expect(r).toMatchObject({ status: 'succeeded', inserted: 3 });
    expect(http).toMatchObject({ requests: 4 + 2, retries: 2, throttled: 2 });
    // 1 s then 2 s at most (with jitter, at least half of each): far below the 300 s window.
    expect(http.wait_ms.retry).toBeGreaterThanOrEqual(500 + 1_000 - 20);
    expect(http.wait_ms.retry).toBeLessThanOrEqual(1_000 + 2_000 + WAIT_MARGIN_MS);
    expect(http.wait_ms.budget).toBeLessThan(WAIT_MARGIN_MS * 2);
    // No headers said otherwise: the configured limit is still the one paced by.
    expect(http.limit).toMatchObject({ requests: 350, seconds: 300, from: 'config' });
  });

  test('Retry-After is waited out, and not exceeded by more than a margin', async () => {
    const table = await setUp({ requests: 350, perSeconds: 300 }, 3);
    let once = true;
    vendor.override = (_req, res) => {
      if (!once) return false;
      once = false;
      res.writeHead(429, { 'retry-after': '2' }).end('{"error":"slow down"}');
      return true;
    };
    const { r, http } = await run(table);
    expect(r).toMatchObject({ status: 'succeeded', inserted: 3 });
    expect(http).toMatchObject({ requests: 5, retries: 1, throttled: 1 });
    expect(http.wait_ms.retry).toBeGreaterThanOrEqual(2_000 - 20);
    // The budget held the retry until the same moment: together no longer than asked, plus a margin.
    expect(http.wait_ms.retry + http.wait_ms.budget).toBeLessThanOrEqual(2_000 + WAIT_MARGIN_MS);
  });

  test('a source without a rateLimit still records its requests', async () => {
    const table = await setUp(undefined, 2);
    const { r, http } = await run(table);
    expect(r).toMatchObject({ status: 'succeeded', inserted: 2 });
    expect(http).toEqual({ requests: 3, retries: 0, throttled: 0, wait_ms: { budget: 0, retry: 0 }, limit: null });
  });
});

describe('reading rate-limit headers', () => {
  const now = Date.parse('2026-12-05T12:00:00Z');
  const h = (o: Record<string, string>) => new Headers(o);

  test('Reset as seconds, epoch seconds, epoch milliseconds or a date; past means now', () => {
    expect(parseReset('7', now)).toBe(7_000);
    expect(parseReset('0.25', now)).toBe(250);
    expect(parseReset(String(now / 1000 + 30), now)).toBe(30_000);
    expect(parseReset(String(now + 1_500), now)).toBe(1_500);
    expect(parseReset(String(now / 1000 - 30), now)).toBe(0);
    expect(parseReset('Sat, 05 Dec 2026 12:00:10 GMT', now)).toBe(10_000);
    expect(parseReset('soon', now)).toBeUndefined();
  });

  test('X-RateLimit-* and RateLimit-* (with a policy\'s window) are both read', () => {
    expect(parseRateHeaders(h({ 'x-ratelimit-limit': '20', 'x-ratelimit-remaining': '19', 'x-ratelimit-reset': '10' }), now))
      .toEqual({ limit: 20, remaining: 19, resetMs: 10_000 });
    expect(parseRateHeaders(h({ 'ratelimit-limit': '100, 100;w=60', 'ratelimit-remaining': '3', 'ratelimit-reset': '12' }), now))
      .toEqual({ limit: 100, remaining: 3, resetMs: 12_000, windowSeconds: 60 });
    expect(parseRateHeaders(h({ 'ratelimit-policy': '50;w=5' }), now)).toEqual({ windowSeconds: 5 });
    expect(parseRateHeaders(h({}), now)).toEqual({});
  });

  test('a bare 429\'s backoff doubles from 1 s to its cap, at least half of each step', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 40 }), fc.double({ min: 0, max: 0.999_999, noNaN: true }), (attempt, r) => {
      const ms = throttleBackoffMs(attempt, 30_000, () => r);
      const step = Math.min(30_000, 1_000 * 2 ** attempt);
      expect(ms).toBeGreaterThanOrEqual(step / 2);
      expect(ms).toBeLessThanOrEqual(step);
    }));
  });
});

describe('the budget\'s rules (sync.http_take / sync.http_feedback)', () => {
  type Op = { take: true } | { limit?: number; remaining?: number; resetS?: number };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.constant({ take: true as const }),
    fc.record({ limit: fc.option(fc.integer({ min: 1, max: 50 }), { nil: undefined }),
      remaining: fc.option(fc.integer({ min: 0, max: 50 }), { nil: undefined }),
      // Resets far away (minutes): a slow machine's milliseconds do not move anything across them.
      resetS: fc.option(fc.integer({ min: 60, max: 3_600 }), { nil: undefined }) }, { requiredKeys: [] }),
  );

  test('never negative, never a wait past the vendor\'s reset while it allows requests, the announced limit adopted', async () => {
    let n = 0;
    await fc.assert(fc.asyncProperty(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 1, max: 600 }), fc.array(op, { maxLength: 25 }),
      async (cfgLimit, cfgWindow, ops) => {
        const src = `prop${++n}`;
        let seq: number | null = null;
        let announced: number | undefined;
        for (const o of ops) {
          if ('take' in o) {
            const before = (await db.pool.query('select * from sync.http_budget where source = $1', [src])).rows[0];
            const { rows } = await db.pool.query<{ wait_ms: number; seq: string }>(
              'select wait_ms, seq from sync.http_take($1, $2, $3)', [src, cfgLimit, cfgWindow]);
            const after = (await db.pool.query(
              `select *, extract(epoch from updated_at)::float8 * 1000 as now_ms, extract(epoch from reset_at)::float8 * 1000 as reset_ms,
                      (select max(extract(epoch from s) * 1000)::float8 from unnest(started) s) as slot_ms
                 from sync.http_budget where source = $1`, [src])).rows[0];
            seq = Number(rows[0].seq);
            expect(rows[0].wait_ms).toBeGreaterThanOrEqual(0);
            expect(after.request_limit).toBe(announced ?? cfgLimit);
            if (after.vendor_left !== null) expect(after.vendor_left).toBeGreaterThanOrEqual(0);
            // Within the vendor's window (a config window of a second may have passed on a slow machine):
            const known = before && before.vendor_left !== null && before.reset_at !== null && Number(after.now_ms) < Number(after.reset_ms);
            if (known && before.vendor_left > 0) expect(rows[0].wait_ms).toBe(0);
            if (known && before.vendor_left === 0) {
              const afterReset = (before.started as Date[]).filter((s) => s >= before.reset_at).length;
              // The vendor's reset (and guard) at the latest, while it allows more in its next window
              // (its whole limit when it announced the reset; one when the reset is our guess).
              if (afterReset < (before.reset_announced ? before.request_limit : 1)) expect(after.slot_ms).toBeLessThanOrEqual(Number(after.reset_ms) + GUARD_MS + 1);
            }
          } else {
            if (seq === null) continue; // an answer needs a request
            await db.pool.query(
              `select sync.http_feedback($1, $2, $3, $4, $5::float8 * interval '1 second', null, null)`,
              [src, seq, o.limit ?? null, o.remaining ?? null, o.resetS ?? null]);
            if (o.limit !== undefined) announced = o.limit;
            const b = (await db.pool.query('select request_limit, limit_from, vendor_left from sync.http_budget where source = $1', [src])).rows[0];
            expect(b.request_limit).toBe(announced ?? cfgLimit);
            expect(b.limit_from).toBe(announced === undefined ? 'config' : 'headers');
            if (b.vendor_left !== null) expect(b.vendor_left).toBeGreaterThanOrEqual(0);
          }
        }
      }), { numRuns: 60 });
  });
});
