import { Writable } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, test } from 'vitest';
import { pino } from 'pino';
import { CriticalError, TransientError } from '../../src/sources/http/errors.js';
import { backoffMs, parseRetryAfter } from '../../src/sources/http/timing.js';
import { testClient } from './clients.js';
import { Vendor } from './vendor.js';

const TOKEN = 'tok-s3cr3t-value';
let vendor: Vendor;
let base: string;

beforeAll(async () => {
  vendor = new Vendor(5);
  base = await vendor.start();
});
afterAll(() => vendor.close());
beforeEach(() => {
  vendor.reset(); // a failed test must not leave faults for the next
  vendor.override = undefined;
  vendor.retryAfter = '0';
});

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
    const res = await testClient(base).getJson('offsets', { limit: '5' });
    expect(res.body).toEqual(vendor.records);
    expect(vendor.hits).toHaveLength(3);
  });

  test('retries stop at the limit with a transient error naming the URL and the last problem, secrets masked', async () => {
    answerAlways(503, '{}');
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, new Writable({ write(chunk, _e, cb) { lines.push(String(chunk)); cb(); } }));
    const client = testClient(base, { auth: { query: { name: 'token', value: TOKEN } }, retries: { max: 2, baseMs: 1, maxMs: 2 } }, { logger });
    const err = await rejection(client.getJson('offsets', { page: '7' }));
    expect(err).toBeInstanceOf(TransientError);
    expect((err as TransientError).category).toBe('network');
    expect(err.message).toContain(`GET ${base}/offsets?page=7 failed`);
    expect(err.message).toContain('failed 3 times (last: HTTP 503 Service Unavailable)');
    expect(vendor.hits).toHaveLength(3);
    expect(lines).toHaveLength(2); // one warning a retry
    expect(lines.join('\n')).not.toContain(TOKEN);
  });

  test('a 200 answer that is not JSON is critical and not retried', async () => {
    answerAlways(200, '<html><body>Login</body></html>');
    const err = await rejection(testClient(base).getJson('offsets'));
    expect(err).toBeInstanceOf(CriticalError);
    expect(err.message).toMatch(/not JSON \(<html><body>Login/);
    expect(vendor.hits).toHaveLength(1);
  });

  test('the caller\'s abort ends a request at once, without retries', async () => {
    vendor.inject('timeout');
    const client = testClient(base, { timeoutMs: 5_000 });
    const started = performance.now();
    const err = await rejection(client.getJson('offsets', {}, AbortSignal.timeout(100)));
    expect(err.name).toBe('TimeoutError');
    expect(performance.now() - started).toBeLessThan(1_000);
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
  test('waits as long as Retry-After says in seconds', async () => {
    vendor.retryAfter = '1';
    vendor.inject('429');
    const started = performance.now();
    await testClient(base).getJson('offsets');
    const waited = vendor.hits[1].at - vendor.hits[0].at;
    expect(waited).toBeGreaterThanOrEqual(990);
    expect(performance.now() - started).toBeLessThan(1_600);
  });

  test('waits until the HTTP date Retry-After gives', async () => {
    const until = new Date(Date.now() + 2_000);
    vendor.retryAfter = until.toUTCString(); // whole seconds: between 1 and 2 s from now
    vendor.inject('429');
    await testClient(base).getJson('offsets');
    expect(Date.now()).toBeGreaterThanOrEqual(Math.floor(until.getTime() / 1000) * 1000 - 20);
    expect(vendor.hits[1].at - vendor.hits[0].at).toBeGreaterThanOrEqual(950);
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
