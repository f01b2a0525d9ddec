import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { pino } from 'pino';
import type { Logger } from '../../src/log.js';
import { CriticalError, TransientError } from '../../src/sources/http/errors.js';
import { backoffMs, parseRetryAfter } from '../../src/sources/http/timing.js';
import { testClient, TIMEOUT_FAULT_MS } from './clients.js';
import { Vendor } from './vendor.js';

const TOKEN = 'tok-s3cr3t-value';
let vendor: Vendor;
let base: string;

// A vendor of its own for every test: a request a test leaves behind (a
// retry, an unanswered request) can never land among the next test's hits.
beforeEach(async () => {
  vendor = new Vendor(5);
  base = await vendor.start();
});
afterEach(() => vendor.close());

/** The warnings a client logs, one object a line: its retries, each with the wait it chose. */
function warnings(): { lines: Record<string, unknown>[]; logger: Logger } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'warn' }, new Writable({ write(chunk, _e, cb) { lines.push(JSON.parse(String(chunk))); cb(); } }));
  return { lines, logger };
}

/** Answers every request with a fixed status and body. */
function answerAlways(status: number, body: string, headers: Record<string, string> = {}) {
  vendor.override = (_req, res) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(body);
    return true;
  };
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the request to fail');
}

describe('auth', () => {
  test('bearer, basic and header auth arrive as headers, query auth as a parameter', async () => {
    await testClient(base, { auth: { bearer: TOKEN } }).getJson('offsets');
    await testClient(base, { auth: { basic: { username: 'u', password: 'p w' } } }).getJson('offsets');
    await testClient(base, { auth: { header: { name: 'X-Api-Key', value: TOKEN } } }).getJson('offsets');
    await testClient(base, { auth: { query: { name: 'api_key', value: TOKEN } } }).getJson('offsets', { limit: '1' });
    const [bearer, basic, header, query] = vendor.hits;
    expect(bearer.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(basic.headers.authorization).toBe(`Basic ${Buffer.from('u:p w').toString('base64')}`);
    expect(header.headers['x-api-key']).toBe(TOKEN);
    expect(query.query.get('api_key')).toBe(TOKEN);
    expect(query.query.get('limit')).toBe('1');
  });

  test('configured headers are sent and paths join the base URL whatever their slashes', async () => {
    const client = testClient(`${base}/v2/`, { headers: { 'X-Tenant': 't1' } });
    expect(client.resolve('/items').toString()).toBe(`${base}/v2/items`);
    await testClient(base, { headers: { 'X-Tenant': 't1' } }).getJson('/offsets');
    expect(vendor.hits[0].headers['x-tenant']).toBe('t1');
    expect(vendor.hits[0].path).toBe('/offsets');
  });

  test('401 and 403 stop at once with an auth error naming the config entry, never the token', async () => {
    for (const status of [401, 403]) {
      answerAlways(status, JSON.stringify({ error: `token ${TOKEN} rejected` }));
      const err = await rejection(testClient(base, { auth: { query: { name: 'key', value: TOKEN } } }).getJson('offsets'));
      expect(err).toBeInstanceOf(CriticalError);
      expect((err as CriticalError).category).toBe('auth');
      expect(err.message).toContain('check the token in sources.shop.auth');
      expect(err.message).not.toContain(TOKEN);
    }
    expect(vendor.hits).toHaveLength(2); // no retries
  });

  test('404 is an unknown endpoint: check the path', async () => {
    const err = await rejection(testClient(base, { auth: { bearer: TOKEN } }).getJson('no-such-thing'));
    expect(err).toBeInstanceOf(CriticalError);
    expect(err.message).toMatch(/check the path of the entity and sources\.shop\.baseUrl/);
    expect((err as CriticalError).status).toBe(404);
    expect(vendor.hits).toHaveLength(1);
  });

  test('other 4xx answers are critical, quote the vendor with secrets masked', async () => {
    answerAlways(400, `{"error":"bad filter","echo":"${TOKEN}"}`);
    const err = await rejection(testClient(base, { auth: { header: { name: 'X-Key', value: TOKEN } } }).getJson('offsets'));
    expect(err).toBeInstanceOf(CriticalError);
    expect((err as CriticalError).category).toBe('validation');
    expect(err.message).toContain('bad filter');
    expect(err.message).not.toContain(TOKEN);
    expect(vendor.hits).toHaveLength(1);
  });
});

describe('retries', () => {
  test.each(['500', '503', '408', 'reset', 'timeout', 'truncated', 'cut'] as const)('%s is retried and the request then succeeds', async (fault) => {
    vendor.inject(fault, fault);
    const res = await testClient(base, fault === 'timeout' ? { timeoutMs: TIMEOUT_FAULT_MS } : {}).getJson('offsets', { limit: '5' });
    expect(res.body).toEqual(vendor.records);
    expect(vendor.hits).toHaveLength(3);
  });

  test('retries stop at the limit with a transient error naming the URL and the last problem, secrets masked', async () => {
    answerAlways(503, '{}');
    const { lines, logger } = warnings();
    const client = testClient(base, { auth: { query: { name: 'token', value: TOKEN } }, retries: { max: 2, baseMs: 1, maxMs: 2 } }, { logger });
    const err = await rejection(client.getJson('offsets', { page: '7' }));
    expect(err).toBeInstanceOf(TransientError);
    expect((err as TransientError).category).toBe('network');
    expect(err.message).toContain(`GET ${base}/offsets?page=7 failed`);
    expect(err.message).toContain('failed 3 times (last: HTTP 503 Service Unavailable)');
    expect(vendor.hits).toHaveLength(3);
    expect(lines).toHaveLength(2); // one warning a retry
    expect(JSON.stringify(lines)).not.toContain(TOKEN);
  });

  test('a 200 answer that is not JSON is critical and not retried', async () => {
    answerAlways(200, '<html><body>Login</body></html>');
    const err = await rejection(testClient(base).getJson('offsets'));
    expect(err).toBeInstanceOf(CriticalError);
    expect(err.message).toMatch(/not JSON \(<html><body>Login/);
    expect(vendor.hits).toHaveLength(1);
  });

  test('the caller\'s abort ends a request at once, without retries', async () => {
    // The vendor never answers, and the client's own timeout lies beyond the
    // test's: only the caller's abort, sent once the request has arrived, can
    // end this request in time. Its error is the caller's reason, not a retry's.
    const caller = new AbortController();
    vendor.override = () => {
      caller.abort(new DOMException('the caller gave up', 'TimeoutError'));
      return true;
    };
    const client = testClient(base, { timeoutMs: 600_000 });
    const err = await rejection(client.getJson('offsets', {}, caller.signal));
    expect(err.name).toBe('TimeoutError');
    expect(err.message).toBe('the caller gave up');
    expect(vendor.hits).toHaveLength(1);
  });

  test('a URL that carries the query token (a vendor\'s next link echoes it) is masked in messages', () => {
    const client = testClient(base, { auth: { query: { name: 'api key', value: 'a&b=c' } } });
    const url = client.resolve('items', { 'api key': 'a&b=c', page: '2' });
    expect(client.describe(url)).toBe(`${base}/items?api+key=***&page=2`);
    expect(client.describe(`${base}/items?page=2&api%20key=a%26b%3Dc`)).toBe(`${base}/items?page=2&api%20key=***`);
  });

  test('a next link to another host is refused before any credentials leave', () => {
    const client = testClient(base, { auth: { bearer: TOKEN } });
    expect(() => client.resolve('http://evil.example.com/items')).toThrow(/does not send credentials to another host/);
  });
});

describe('429', () => {
  // The client says how long it waits in its retry warning: that is what is
  // asserted exactly. The gap between the requests can only be longer than
  // the wait on a slow machine, so it is asserted as a lower bound alone.
  test('waits as long as Retry-After says in seconds', async () => {
    vendor.retryAfter = '1';
    vendor.inject('429');
    const { lines, logger } = warnings();
    await testClient(base, {}, { logger }).getJson('offsets');
    expect(lines.map((l) => l.waitMs)).toEqual([1_000]);
    expect(vendor.hits).toHaveLength(2);
    expect(vendor.hits[1].at - vendor.hits[0].at).toBeGreaterThanOrEqual(990);
  });

  test('waits until the HTTP date Retry-After gives', async () => {
    // Whole seconds, between 3 and 4 s from now: still ahead when the 429 arrives on a loaded machine.
    const until = new Date(Math.floor((Date.now() + 4_000) / 1000) * 1000);
    vendor.retryAfter = until.toUTCString();
    vendor.inject('429');
    const { lines, logger } = warnings();
    await testClient(base, {}, { logger }).getJson('offsets');
    expect(lines).toHaveLength(1);
    expect(lines[0].waitMs).toBeGreaterThan(0);
    expect(lines[0].waitMs).toBeLessThanOrEqual(4_000);
    expect(vendor.hits).toHaveLength(2);
    expect(vendor.hits[1].wall).toBeGreaterThanOrEqual(until.getTime() - 20);
  });

  test('429s do not use up the failure retries, only their own limit', async () => {
    vendor.inject('429', '429', '429', '500', '429');
    const client = testClient(base, { retries: { max: 1, baseMs: 1, maxMs: 2, rateLimited: 4 } });
    await expect(client.getJson('offsets')).resolves.toMatchObject({ status: 200 });
    expect(vendor.hits).toHaveLength(6);

    vendor.inject('429', '429', '429');
    const strict = testClient(base, { retries: { max: 5, baseMs: 1, maxMs: 2, rateLimited: 2 } });
    const err = await rejection(strict.getJson('offsets'));
    expect(err).toBeInstanceOf(TransientError);
    expect((err as TransientError).category).toBe('rate_limit');
    expect(err.message).toMatch(/rate limited 3 times/);
  });

  test('a Retry-After beyond the longest wait fails the run instead of holding the worker', async () => {
    vendor.retryAfter = '3600';
    vendor.inject('429');
    const err = await rejection(testClient(base).getJson('offsets'));
    expect(err).toBeInstanceOf(TransientError);
    expect((err as TransientError).category).toBe('rate_limit');
    expect(vendor.hits).toHaveLength(1);
  });

  test('X-RateLimit-Remaining and Retry-After reach the budget', async () => {
    const told: unknown[] = [];
    const budget = { take: async () => {}, feedback: async (f: unknown) => { told.push(f); } };
    vendor.override = (_req, res) => {
      if (vendor.hits.length === 1) res.writeHead(429, { 'retry-after': '0' }).end();
      else res.writeHead(200, { 'x-ratelimit-remaining': '41' }).end('[]');
      return true;
    };
    await testClient(base, {}, { budget }).getJson('offsets');
    expect(told).toEqual([{ retryAfterMs: 0 }, { remaining: 41 }]);
  });
});

describe('429 without Retry-After', () => {
  test('holds the budget off for a short jittered backoff (never "the window is spent"), and passes the rate headers on', async () => {
    const told: unknown[] = [];
    let seq = 0;
    const budget = { take: async () => ++seq, feedback: async (f: unknown) => { told.push(f); } };
    vendor.override = (_req, res) => {
      if (vendor.hits.length === 1) res.writeHead(429).end();
      else res.writeHead(200, { 'x-ratelimit-limit': '20', 'x-ratelimit-remaining': '19', 'x-ratelimit-reset': '9' }).end('[]');
      return true;
    };
    const { lines, logger } = warnings();
    await testClient(base, {}, { budget, logger, random: () => 0 }).getJson('offsets');
    // 1 s ceiling, the lower half fixed: 500 ms with random() = 0.
    expect(lines.map((l) => l.waitMs)).toEqual([500]);
    expect(told).toEqual([{ seq: 1, retryAfterMs: 500 }, { seq: 2, limit: 20, remaining: 19, resetMs: 9_000 }]);
  });
});

describe('timing', () => {
  test('backoff is full jitter under a doubling ceiling capped at maxMs', () => {
    expect(backoffMs(0, 100, 10_000, () => 0.999)).toBe(99);
    expect(backoffMs(3, 100, 10_000, () => 0.5)).toBe(400);
    expect(backoffMs(20, 100, 10_000, () => 0.999)).toBe(9_990);
    expect(backoffMs(5, 100, 10_000, () => 0)).toBe(0);
  });

  test('Retry-After reads seconds and HTTP dates; a past date means now', () => {
    const now = Date.parse('Wed, 21 Oct 2015 07:28:00 GMT');
    expect(parseRetryAfter('120', now)).toBe(120_000);
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:28:30 GMT', now)).toBe(30_000);
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter(null, now)).toBeUndefined();
  });
});
