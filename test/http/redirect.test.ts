/**
 * Credentials stay with their origin: redirects of an http source and of a
 * csv URL, against real local servers. A different port is a different
 * origin, so "the vendor" and "another host" are two servers on 127.0.0.1.
 * Every test starts its own servers: no test sees another's requests.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, test } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { openCsv } from '../../src/sources/csv/read.js';
import { CriticalError } from '../../src/sources/http/errors.js';
import { MAX_REDIRECTS } from '../../src/sources/http/redirect.js';
import { testClient } from './clients.js';

const TOKEN = 'tok-redirect-s3cr3t';
const KEY = 'key-redirect-s3cr3t';

interface Hit { path: string; query: URLSearchParams; headers: http.IncomingHttpHeaders }

interface Server {
  url: string;
  origin: string;
  hits: Hit[];
  close(): Promise<void>;
}

const open: Server[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

/** A server on 127.0.0.1 (port 0) answering with `handle`; closed after the test. */
async function serve(handle: (url: URL, res: http.ServerResponse, self: Server) => void): Promise<Server> {
  const hits: Hit[] = [];
  const self = { hits } as Server;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', self.url);
    hits.push({ path: url.pathname, query: url.searchParams, headers: req.headers });
    handle(url, res, self);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  self.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  self.origin = self.url;
  self.close = () => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  });
  open.push(self);
  return self;
}

const json = (res: http.ServerResponse, body: unknown) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
const moved = (res: http.ServerResponse, location: string, status = 302) => res.writeHead(status, { location }).end('moved');

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the request to fail');
}

/** Headers and query of a request that must carry nothing of the source's credentials. */
function expectNoCredentials(hit: Hit): void {
  const everything = JSON.stringify({ headers: hit.headers, query: [...hit.query] });
  expect(everything).not.toContain(TOKEN);
  expect(everything).not.toContain(KEY);
  expect(hit.headers['x-api-key']).toBeUndefined();
  expect(hit.headers.authorization).toBeUndefined();
  expect(hit.query.has('api_key')).toBe(false);
}

describe('an http source', () => {
  const credentials = { auth: { query: { name: 'api_key', value: TOKEN } }, headers: { 'X-Api-Key': KEY } } as const;

  test('a redirect within the origin keeps the X-Api-Key header and the auth query parameter, for every redirect status', async () => {
    const vendor = await serve((url, res) => {
      const status = url.pathname.match(/^\/old\/(\d+)$/)?.[1];
      if (status) return moved(res, `/v2/items?from=${status}`, Number(status));
      json(res, [{ id: 1 }]);
    });
    for (const status of [301, 302, 303, 307, 308]) {
      const res = await testClient(vendor.url, credentials).getJson(`old/${status}`);
      expect(res.body).toEqual([{ id: 1 }]);
      expect(res.crossOrigin).toBe(false);
      expect(res.finalUrl.pathname).toBe('/v2/items');
    }
    const followed = vendor.hits.filter((h) => h.path === '/v2/items');
    expect(followed).toHaveLength(5);
    for (const hit of followed) {
      expect(hit.headers['x-api-key']).toBe(KEY);
      expect(hit.query.get('api_key')).toBe(TOKEN);
    }
  });

  test('a 302 to another origin is refused before anything reaches it, with a hint naming both origins', async () => {
    const elsewhere = await serve((_url, res) => json(res, [{ id: 666 }]));
    const vendor = await serve((_url, res) => moved(res, `${elsewhere.url}/items?api_key=${TOKEN}`));
    const err = await rejection(testClient(vendor.url, credentials).getJson('items'));
    expect(err).toBeInstanceOf(CriticalError);
    expect((err as CriticalError).category).toBe('validation');
    expect(err.message).toContain(vendor.origin);
    expect(err.message).toContain(elsewhere.origin);
    expect(err.message).toContain('sources.shop.baseUrl');
    expect(err.message).toContain('"follow-without-credentials"');
    expect(err.message).not.toContain(TOKEN);
    expect(elsewhere.hits).toHaveLength(0);
    expect(vendor.hits).toHaveLength(1); // critical: not retried
  });

  test('with redirects "follow-without-credentials" another origin is reached with no configured header, auth or secret parameter', async () => {
    const elsewhere = await serve((_url, res) => json(res, [{ id: 2 }]));
    // The vendor echoes the credentials into the Location, as some do.
    const vendor = await serve((_url, res) => moved(res, `${elsewhere.url}/export?api_key=${TOKEN}&sig=${KEY}&format=json`));
    for (const auth of [credentials.auth, { bearer: TOKEN }, { header: { name: 'X-Api-Key', value: TOKEN } }] as const) {
      const client = testClient(vendor.url, { auth, headers: { 'X-Api-Key': KEY, 'X-Tenant': 'acme' }, redirects: 'follow-without-credentials' });
      const res = await client.getJson('items');
      expect(res.body).toEqual([{ id: 2 }]);
      expect(res.crossOrigin).toBe(true);
      expect(res.finalUrl.origin).toBe(elsewhere.origin);
    }
    expect(elsewhere.hits).toHaveLength(3);
    for (const hit of elsewhere.hits) {
      expectNoCredentials(hit);
      expect(hit.headers['x-tenant']).toBeUndefined();
      expect(hit.query.has('sig')).toBe(false);
      expect(hit.query.get('format')).toBe('json');
    }
  });

  test('once away from its origin a request stays without credentials, and the answer counts as cross-origin', async () => {
    let vendorUrl = '';
    const elsewhere = await serve((_url, res) => moved(res, `${vendorUrl}/back`));
    const vendor = await serve((url, res) => (url.pathname === '/back' ? json(res, []) : moved(res, `${elsewhere.url}/hop`)));
    vendorUrl = vendor.url;
    const res = await testClient(vendor.url, { ...credentials, redirects: 'follow-without-credentials' }).getJson('items');
    expect(res.crossOrigin).toBe(true);
    expectNoCredentials(vendor.hits.find((h) => h.path === '/back')!);
  });

  test('a redirect loop ends with a clear error, and so does a chain longer than the limit', async () => {
    const vendor = await serve((url, res) => {
      if (url.pathname === '/a') return moved(res, '/b');
      if (url.pathname === '/b') return moved(res, '/a');
      const n = Number(url.pathname.slice('/chain/'.length));
      moved(res, `/chain/${n + 1}`);
    });
    const loop = await rejection(testClient(vendor.url, credentials).getJson('a'));
    expect(loop).toBeInstanceOf(CriticalError);
    expect(loop.message).toMatch(/redirects in a loop \(.*\/a.* → .*\/b.* → .*\/a/);
    expect(loop.message).not.toContain(TOKEN);
    const long = await rejection(testClient(vendor.url).getJson('chain/0'));
    expect(long).toBeInstanceOf(CriticalError);
    expect(long.message).toContain(`redirected more than ${MAX_REDIRECTS} times`);
    expect(vendor.hits.filter((h) => h.path.startsWith('/chain/'))).toHaveLength(MAX_REDIRECTS + 1);
  });
});

describe('a csv URL', () => {
  const SHEET = 'id,name\n1,alpha\n2,beta\n';
  const sheet = (res: http.ServerResponse) => res.writeHead(200, { 'content-type': 'text/csv' }).end(SHEET);

  /** Reads the entity's file through openCsv and returns its records' values. */
  async function read(source: Record<string, unknown>, file: string): Promise<(string | number | null)[][]> {
    const cfg = parseConfig({
      sources: { sheet: { kind: 'csv', ...source } },
      entities: { sellers: { source: 'sheet', from: { file }, target: 'sellers', key: ['id'] } },
    }, {});
    const src = cfg.sources.sheet;
    if (src.kind !== 'csv') throw new Error('not a csv source');
    const reader = await openCsv(src, cfg.entities.sellers, ['id', 'name'], '.', AbortSignal.timeout(10_000));
    const out: (string | number | null)[][] = [];
    for await (const r of reader.records) out.push(r.values);
    return out;
  }

  test('a redirect within the origin keeps the configured headers', async () => {
    const host = await serve((url, res) => (url.pathname === '/export' ? moved(res, '/files/sellers.csv') : sheet(res)));
    expect(await read({ headers: { 'X-Api-Key': KEY } }, `${host.url}/export`)).toEqual([['1', 'alpha'], ['2', 'beta']]);
    expect(host.hits.map((h) => [h.path, h.headers['x-api-key']])).toEqual([['/export', KEY], ['/files/sellers.csv', KEY]]);
  });

  test('a redirect to another origin is refused when the source has headers, with a hint', async () => {
    const elsewhere = await serve((_url, res) => sheet(res));
    const host = await serve((_url, res) => moved(res, `${elsewhere.url}/sellers.csv`));
    const err = await rejection(read({ headers: { 'X-Api-Key': KEY } }, `${host.url}/export?sig=${TOKEN}`));
    expect(err).toBeInstanceOf(CriticalError);
    expect(err.message).toContain(host.origin);
    expect(err.message).toContain(elsewhere.origin);
    expect(err.message).toContain('"redirects": "follow-without-credentials"');
    expect(err.message).not.toContain(TOKEN);
    expect(elsewhere.hits).toHaveLength(0);
  });

  test('with redirects "follow-without-credentials" the other origin is reached without the headers', async () => {
    const elsewhere = await serve((_url, res) => sheet(res));
    const host = await serve((_url, res) => moved(res, `${elsewhere.url}/sellers.csv?token=${KEY}&gid=0`));
    const rows = await read({ headers: { 'X-Api-Key': KEY }, redirects: 'follow-without-credentials' }, `${host.url}/export`);
    expect(rows).toHaveLength(2);
    expect(elsewhere.hits).toHaveLength(1);
    expectNoCredentials(elsewhere.hits[0]);
    expect(elsewhere.hits[0].query.get('gid')).toBe('0');
  });

  test('without headers a redirect to another origin is followed, as a published Google Sheet needs', async () => {
    // docs.google.com/…/pub?output=csv answers 307 to *.googleusercontent.com.
    const storage = await serve((_url, res) => sheet(res));
    const docs = await serve((_url, res) => moved(res, `${storage.url}/pub/sheet?output=csv`, 307));
    expect(await read({ location: `${docs.url}/spreadsheets/d/e/abc/pub?output=csv` }, '?gid=0')).toHaveLength(2);
    expect(storage.hits.map((h) => h.path)).toEqual(['/pub/sheet']);
  });

  test('a redirect loop ends with a clear error', async () => {
    const host = await serve((url, res) => moved(res, url.pathname === '/a.csv' ? '/b.csv' : '/a.csv'));
    const err = await rejection(read({ headers: { 'X-Api-Key': KEY } }, `${host.url}/a.csv`));
    expect(err).toBeInstanceOf(CriticalError);
    expect(err.message).toMatch(/redirects in a loop/);
    expect(host.hits).toHaveLength(2);
  });
});
