import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { parseConfig } from '../src/config/load.js';
import { applyConfig } from '../src/config/apply.js';
import { Engine } from '../src/engine/run.js';
import { updatedAt, Vendor } from './http/vendor.js';
import { runBackfill } from '../src/engine/backfill.js';

let sync: TestDatabase;
let engine: Engine;
const vendor = new Vendor(10);

const products = async () => (await sync.pool.query('select id, name, version, tags from products order by id')).rows;
const expected = () => vendor.records.map((r) => ({ id: r.id, name: r.name, version: r.version, tags: r.tags }));

beforeAll(async () => {
  sync = await testDatabase('http_run');
  await sync.pool.query(`create table products (id int primary key, name text not null, version bigint, tags jsonb);
    create table products_bf (like products);
    create table products_upd (id int primary key, name text, updated_at timestamptz not null)`);
  const url = await vendor.start();
  const cfg = parseConfig({
    sources: { shop: { kind: 'http', baseUrl: url, auth: { bearer: 'sekret-token' }, retries: { max: 8, baseMs: 5, maxMs: 20 } } },
    entities: {
      products: { source: 'shop', from: { http: { path: 'version', pagination: { style: 'version', sizeParam: 'page_size', size: 3 } } },
        target: 'products', key: ['id'], cursor: { column: 'version' } },
      products_bf: { source: 'shop', from: { http: { path: 'version', pagination: { style: 'version', sizeParam: 'page_size', size: 3 } } },
        target: 'products_bf', key: ['id'], cursor: { column: 'version' } },
      products_upd: { source: 'shop', from: { http: { path: 'updated', recordsPath: 'data.items', pagination: { style: 'page' },
        params: { since: '{{from}}', before: '{{to}}' } } }, target: 'products_upd', key: ['id'], cursor: { column: 'updated_at' } },
      products_pages: { source: 'shop', from: { http: { path: 'pages', recordsPath: 'data.items', pagination: { style: 'page' } } },
        target: 'products', key: ['id'] },
      products_pages_lookup: { source: 'shop', from: { http: { path: 'pages', recordsPath: 'data.items', pagination: { style: 'page' },
        totalPath: 'meta.total', lookup: { param: 'ids' } } }, target: 'products', key: ['id'] },
    },
  }, {});
  await applyConfig(sync.pool, cfg);
  engine = new Engine(sync.pool, sync.url, cfg);
});
afterAll(async () => {
  await engine.close();
  await vendor.close();
});

describe('an http source', () => {
  it('crawls every page into the target, through injected faults, and sets the version cursor', async () => {
    vendor.inject('500', 'ok', 'reset', 'truncated', 'ok', '503');
    const r = await engine.run('products', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 10, inserted: 10 });
    expect(await products()).toEqual(expected());
    expect(r.cursor).toBe('10');
    const detail = (await sync.pool.query('select detail from sync.run where id = $1', [r.runId])).rows[0].detail;
    expect(detail).toMatchObject({ records: 10 });
  });

  it('an incremental run asks only for versions after the cursor and merges the changes', async () => {
    vendor.reset();
    vendor.touch(3);
    vendor.add('r11');
    const r = await engine.run('products', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 2, inserted: 1, updated: 1 });
    expect(vendor.hits[0].query.get('after')).toBe('10');
    expect(await products()).toEqual(expected());
  });

  it('a record changed during the crawl arrives twice; the last copy wins, nothing is quarantined', async () => {
    // Record 1 is on the first page; changed before the second, it comes again at the end.
    let pages = 0;
    vendor.beforeVersionPage = () => { pages += 1; if (pages === 2) vendor.touch(1); };
    const r = await engine.run('products', { trigger: 'manual', full: true });
    vendor.beforeVersionPage = undefined;
    expect(r).toMatchObject({ status: 'succeeded', quarantined: 0, updated: 1 });
    expect(await products()).toEqual(expected());
    const copies = vendor.hits.filter((h) => h.path === '/version').length;
    expect(copies).toBeGreaterThan(2);
  });

  it('a mirror entity on page-number pagination holds what the API no longer lists until it can check, then deletes it', async () => {
    vendor.records.splice(4, 1);
    const held = await engine.run('products_pages', { trigger: 'manual' });
    expect(held).toMatchObject({ status: 'partial', deleted: 0, held: 1 });
    expect(held.note).toMatch(/paged by page.*keyset pagination, or set from.http.lookup/);
    // Asked for exactly the row it would delete, the API confirms it is gone.
    const r = await engine.run('products_pages_lookup', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', deleted: 1 });
    expect(vendor.hits.filter((h) => h.query.has('ids')).map((h) => h.query.get('ids'))).toEqual(['5']);
    expect((await products()).map((p) => p.id)).toEqual(vendor.records.map((v) => v.id));
  });

  it('a 401 fails the run with what to fix, the token masked, and the category auth', async () => {
    vendor.override = (_req, res) => { res.statusCode = 401; res.end('{"error":"bad token sekret-token"}'); return true; };
    const r = await engine.run('products', { trigger: 'manual' });
    vendor.override = undefined;
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/check the token/);
    expect(r.error).not.toContain('sekret-token');
    const { rows } = await sync.pool.query('select category from sync.run_error where run_id = $1 and key is null', [r.runId]);
    expect(rows).toEqual([{ category: 'auth' }]);
  });

  it('backfills a version range in chunks, reading only that range, and hands over to the cursor', async () => {
    vendor.reset();
    const results = await runBackfill(engine, 'products_bf', { from: '1', to: '7', chunk: '3' });
    const inRange = (lo: number, hi: number) => vendor.records.filter((r) => r.version >= lo && r.version < hi).length;
    expect(results.map((r) => [r.status, r.inserted])).toEqual([['succeeded', inRange(1, 4)], ['succeeded', inRange(4, 7)]]);
    const versions = (await sync.pool.query('select version from products_bf order by version')).rows.map((r) => Number(r.version));
    expect(versions).toEqual(vendor.records.map((r) => r.version).filter((v) => v >= 1 && v < 7).sort((a, b) => a - b));
    expect(vendor.hits.map((h) => h.query.get('after'))).toContain('0');
    const next = await engine.run('products_bf', { trigger: 'manual' });
    expect(next.inserted).toBe(vendor.records.filter((r) => r.version >= 7).length);
    expect(vendor.hits.at(-1)?.query.get('after')).not.toBe('0');
  });

  it('backfills a date range through the API\'s own filter params, one request stream a chunk, and a normal run leaves them out', async () => {
    vendor.reset();
    const results = await runBackfill(engine, 'products_upd', { from: '2024-01-02', to: '2024-01-08', chunk: '3 days' });
    const inRange = (lo: string, hi: string) => vendor.records.filter((r) => updatedAt(r.version) >= lo && updatedAt(r.version) < hi).length;
    expect(results.map((r) => [r.status, r.inserted])).toEqual([
      ['succeeded', inRange('2024-01-02', '2024-01-05')], ['succeeded', inRange('2024-01-05', '2024-01-08')]]);
    const asked = vendor.hits.filter((h) => h.path === '/updated').map((h) => [h.query.get('since'), h.query.get('before')]);
    expect(new Set(asked.map((a) => a.join(' ')))).toEqual(new Set(['2024-01-02T00:00:00Z 2024-01-05T00:00:00Z', '2024-01-05T00:00:00Z 2024-01-08T00:00:00Z']));
    // Re-running skips the chunks done.
    vendor.reset();
    expect(await runBackfill(engine, 'products_upd', { from: '2024-01-02', to: '2024-01-08', chunk: '3 days' })).toEqual([]);
    expect(vendor.hits).toEqual([]);
    const next = await engine.run('products_upd', { trigger: 'manual' });
    expect(vendor.hits.every((h) => !h.query.has('since') && !h.query.has('before'))).toBe(true);
    expect(next).toMatchObject({ status: 'succeeded', inserted: vendor.records.length - inRange('2024-01-02', '2024-01-08') });
  });

  it('a backfill of an entity the API can neither filter nor page by version says what to add', async () => {
    const r = await engine.run('products_pages', { trigger: 'backfill', window: { from: '1', to: '3' } });
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/\{\{from\}\} and \{\{to\}\} in from\.http\.params/);
  });
});
