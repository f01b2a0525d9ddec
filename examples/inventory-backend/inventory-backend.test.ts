import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabase, type TestDatabase } from '../../test/helpers/db.js';
import { maskSecrets, parseConfig } from '../../src/config/load.js';
import { applyConfig } from '../../src/config/apply.js';
import type { Config, HttpSourceConfig } from '../../src/config/schema.js';
import type { HttpEntityOptions } from '../../src/sources/http/schema.js';
import { Engine, type RunOptions, type RunResult } from '../../src/engine/run.js';
import { runMany } from '../../src/engine/plan.js';
import { AirtableServer, BASE_ID, TOKEN, recId, sampleBase, type AirRecord, type Fault } from './airtable-server.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const file = (name: string) => readFileSync(path.join(here, name), 'utf8');
const exampleConfig = () => JSON.parse(file('syncline.config.json')) as Record<string, unknown>;

const ENTITIES = ['suppliers', 'locations', 'products', 'stock_levels'];

const envFor = (server: AirtableServer) => ({ INVENTORY_API_URL: server.baseUrl, INVENTORY_BASE_ID: BASE_ID, INVENTORY_TOKEN: TOKEN });

/** What each local table must hold for the server's records: the columns map applied by hand. */
function expected(server: AirtableServer) {
  const f = (r: AirRecord, k: string) => r.fields[k] ?? null;
  const first = (r: AirRecord, k: string) => (r.fields[k] as string[] | undefined)?.[0] ?? null;
  const ts = (v: unknown) => (v === null ? null : new Date(v as string).toISOString());
  const t = server.tables;
  return {
    suppliers: t.Suppliers.map((r) => ({ id: r.id, name: f(r, 'Name'), email: f(r, 'Email'), phone: f(r, 'Phone'), country: f(r, 'Country'), created_time: ts(r.createdTime) })),
    locations: t.Locations.map((r) => ({ id: r.id, name: f(r, 'Name'), code: f(r, 'Code') })),
    products: t.Products.map((r) => ({ id: r.id, sku: f(r, 'SKU'), name: f(r, 'Name'), unit_price: Number(f(r, 'Unit Price')).toFixed(2),
      supplier_id: first(r, 'Supplier'), active: f(r, 'Active') === true ? true : null, created_time: ts(r.createdTime) })),
    stock_levels: t['Stock Levels'].map((r) => ({ id: r.id, product_id: first(r, 'Product'), location_id: first(r, 'Location'),
      quantity: f(r, 'Quantity'), reorder_level: f(r, 'Reorder Level'), last_counted: ts(f(r, 'Last Counted')) })),
  } as Record<string, Record<string, unknown>[]>;
}

async function local(pool: TestDatabase['pool']): Promise<Record<string, Record<string, unknown>[]>> {
  const q = async (sql: string) => (await pool.query(sql)).rows.map((r) => Object.fromEntries(Object.entries(r)
    .map(([k, v]) => [k, v instanceof Date ? v.toISOString() : v])));
  return {
    suppliers: await q('select id, name, email, phone, country, created_time from inventory.suppliers'),
    locations: await q('select id, name, code from inventory.locations'),
    products: await q('select id, sku, name, unit_price::text, supplier_id, active, created_time from inventory.products'),
    stock_levels: await q('select id, product_id, location_id, quantity, reorder_level, last_counted from inventory.stock_levels'),
  };
}

const byId = (rows: Record<string, unknown>[]) => [...rows].sort((a, b) => String(a.id).localeCompare(String(b.id)));
const sorted = (t: Record<string, Record<string, unknown>[]>) => Object.fromEntries(Object.entries(t).map(([k, v]) => [k, byId(v)]));

/** xmin of every row of every table: unchanged when nothing was written. */
const xmins = async (pool: TestDatabase['pool']) => (await pool.query(
  `select (select string_agg(xmin::text, ',' order by id) from inventory.suppliers) as s,
          (select string_agg(xmin::text, ',' order by id) from inventory.locations) as l,
          (select string_agg(xmin::text, ',' order by id) from inventory.products) as p,
          (select string_agg(xmin::text, ',' order by id) from inventory.stock_levels) as st`)).rows[0];

const accounted = (r: RunResult) => (r.inserted ?? 0) + (r.updated ?? 0) + (r.unchanged ?? 0) + (r.quarantined ?? 0);

async function syncAll(engine: Engine, names = ENTITIES, opts: Partial<RunOptions> = {}): Promise<Record<string, RunResult>> {
  const results = await runMany(engine, names, { trigger: 'manual', ...opts });
  for (const r of results) {
    if (r.status === 'succeeded' || r.status === 'partial') expect(r.fetched, `${r.entity}: every fetched record accounted for`).toBe(accounted(r));
  }
  return Object.fromEntries(results.map((r) => [r.entity, r]));
}

/** A fresh Syncline database with the example's tables and config (backoff shortened for tests) applied. */
async function exampleDatabase(prefix: string, server: AirtableServer): Promise<{ db: TestDatabase; cfg: Config; engine: Engine }> {
  const db = await testDatabase(prefix);
  await db.pool.query(file('local.sql'));
  const raw = exampleConfig() as { sources: { inventory: Record<string, unknown> } };
  raw.sources.inventory.retries = { max: 8, baseMs: 5, maxMs: 40 };
  const cfg = parseConfig(raw, envFor(server), 'examples/inventory-backend/syncline.config.json');
  await applyConfig(db.pool, cfg);
  return { db, cfg, engine: new Engine(db.pool, db.url, cfg, here) };
}

describe('the example config', () => {
  it('validates and expands the airtable preset: base URL, bearer token, 5 requests/s, offset paging', () => {
    const cfg = parseConfig(exampleConfig(), { INVENTORY_BASE_ID: 'appRealBase123', INVENTORY_TOKEN: 'patReal.secret' });
    expect(cfg.sources.inventory).toMatchObject({
      kind: 'http', preset: 'airtable', baseUrl: 'https://api.airtable.com/v0/appRealBase123',
      auth: { bearer: 'patReal.secret' }, rateLimit: { requests: 5, perSeconds: 1 },
    });
    expect(Object.keys(cfg.entities)).toEqual(ENTITIES);
    expect((cfg.entities.stock_levels.from as { http: HttpEntityOptions }).http).toEqual({
      path: 'Stock%20Levels', params: {}, recordsPath: 'records',
      pagination: { style: 'cursor', param: 'offset', cursorPath: 'offset', sizeParam: 'pageSize', size: 100 },
      // The preset's default for a created_time column; this entity has none, so it is unused.
      fields: { created_time: 'createdTime' },
      // Airtable leaves empty cells out: a missing field is empty, not schema drift.
      absent: 'null',
    });
    // Where the entity's columns map names the column, the preset's field gives way.
    expect((cfg.entities.products.from as { http: HttpEntityOptions }).http.fields).toBeUndefined();
    expect(cfg.entities.stock_levels.dependsOn).toEqual(['products', 'locations']);
    expect(cfg.entities.products.columns).toMatchObject({ unit_price: 'fields.Unit Price', supplier_id: 'fields.Supplier.0' });
  });

  it('INVENTORY_API_URL points the source at another server (a local one)', () => {
    const cfg = parseConfig(exampleConfig(), { INVENTORY_API_URL: 'http://127.0.0.1:8787/v0/appInventoryDemo', INVENTORY_BASE_ID: BASE_ID, INVENTORY_TOKEN: TOKEN });
    expect((cfg.sources.inventory as HttpSourceConfig).baseUrl).toBe('http://127.0.0.1:8787/v0/appInventoryDemo');
  });

  it('without the token, validation names the variable to set', () => {
    expect(() => parseConfig(exampleConfig(), { INVENTORY_BASE_ID: BASE_ID }))
      .toThrow(/sources\.inventory\.token: environment variable INVENTORY_TOKEN is not set/);
  });

  // Expected to fail until maskSecrets (src/config/load.ts) masks http auth: `config show` prints the token today.
  it('config show masks the token', () => {
    const cfg = parseConfig(exampleConfig(), { INVENTORY_BASE_ID: BASE_ID, INVENTORY_TOKEN: TOKEN });
    expect(JSON.stringify(maskSecrets(cfg))).not.toContain(TOKEN);
  });
});

describe('an Airtable base → Postgres', () => {
  const server = new AirtableServer();
  let db: TestDatabase;
  let engine: Engine;

  beforeAll(async () => {
    await server.start();
    ({ db, engine } = await exampleDatabase('inventory', server));
  });
  afterAll(async () => {
    await engine.close();
    await server.close();
  });

  it('a dry run previews the first sync and writes nothing', async () => {
    const r = await syncAll(engine, ENTITIES, { dryRun: true });
    expect(Object.values(r).map((x) => x.status)).toEqual(['succeeded', 'succeeded', 'succeeded', 'succeeded']);
    expect(r.products).toMatchObject({ fetched: 120, inserted: 120 });
    expect(await local(db.pool)).toEqual({ suppliers: [], locations: [], products: [], stock_levels: [] });
  });

  it('the first sync lands every table, in dependency order, paging with offset tokens at 5 requests/s', async () => {
    server.reset();
    const results = await runMany(engine, ENTITIES, { trigger: 'manual' });
    expect(results.map((r) => r.entity)).toEqual(['locations', 'suppliers', 'products', 'stock_levels']);
    expect(results.map((r) => r.status)).toEqual(['succeeded', 'succeeded', 'succeeded', 'succeeded']);
    expect(results.map((r) => r.inserted)).toEqual([3, 6, 120, 240]);
    expect(sorted(await local(db.pool))).toEqual(sorted(expected(server)));
    // Parents before children: every Suppliers request before the first Products one, and so on.
    const order = [...new Set(server.hits.filter((h) => h.status === 200).map((h) => h.table))];
    expect(order).toEqual(['Locations', 'Suppliers', 'Products', 'Stock Levels']);
    const stock = server.hits.filter((h) => h.table === 'Stock Levels' && h.status === 200);
    expect(stock.map((h) => h.query.get('pageSize'))).toEqual(['100', '100', '100']);
    expect(stock[0].query.has('offset')).toBe(false);
    expect(stock[1].query.get('offset')).toMatch(/^itr\d+\/rec/);
    // The shared budget paces requests at 5 a second as they start; the base
    // counts them as they arrive, so a rare 429 at a window's edge is possible
    // (and waited out: the tables above are complete). Pacing held overall:
    // 7 pages in at least (7 - 5) / 5 s.
    const ok = server.hits.filter((h) => h.status === 200);
    expect(ok).toHaveLength(7);
    expect(ok[6].at - ok[0].at).toBeGreaterThanOrEqual(380);
    expect(server.limited).toBeLessThanOrEqual(2);
  });

  it('re-syncing unchanged data writes nothing', async () => {
    const before = await xmins(db.pool);
    const r = await syncAll(engine);
    expect(Object.values(r).map((x) => [x.inserted, x.updated, x.deleted])).toEqual([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]);
    expect(r.stock_levels.unchanged).toBe(240);
    expect(await xmins(db.pool)).toEqual(before);
  });

  it('--tables suppliers,products runs only those, suppliers first', async () => {
    server.reset();
    server.tables.Products[1].fields['Unit Price'] = 9.99;
    const results = await runMany(engine, ['products', 'suppliers'], { trigger: 'manual' });
    expect(results.map((r) => [r.entity, r.status])).toEqual([['suppliers', 'succeeded'], ['products', 'succeeded']]);
    expect(results[1]).toMatchObject({ updated: 1 });
    expect(new Set(server.hits.map((h) => h.table))).toEqual(new Set(['Suppliers', 'Products']));
    const runs = await db.pool.query(`select entity from sync.run where id > $1 order by id`, [results[0].runId! - 1]);
    expect(runs.rows.map((r) => r.entity)).toEqual(['suppliers', 'products']);
  });

  it('a dry run shows a changed record and writes nothing', async () => {
    server.tables.Products[2].fields.Name = 'Renamed product';
    const before = { rows: await local(db.pool), xmin: await xmins(db.pool) };
    const r = await syncAll(engine, ['products'], { dryRun: true });
    expect(r.products).toMatchObject({ status: 'succeeded', updated: 1, inserted: 0, deleted: 0 });
    expect(r.products.sample).toEqual([{ action: 'update', key: { id: recId('Pro', 3) }, changed: ['name'] }]);
    expect(await local(db.pool)).toEqual(before.rows);
    expect(await xmins(db.pool)).toEqual(before.xmin);
    await syncAll(engine, ['products']);
  });

  it('a 403 on one table fails that entity with what to fix; its dependents are skipped, the others sync', async () => {
    server.forbidden.add('Products');
    server.tables.Suppliers[0].fields.Phone = '+49 30 99999';
    server.tables.Locations[0].fields.Code = 'BWH';
    const results = await runMany(engine, ENTITIES, { trigger: 'manual' });
    server.forbidden.delete('Products');
    const by = Object.fromEntries(results.map((r) => [r.entity, r]));
    expect(results.map((r) => [r.entity, r.status])).toEqual([
      ['locations', 'succeeded'], ['suppliers', 'succeeded'], ['products', 'failed'], ['stock_levels', 'skipped']]);
    expect(by.suppliers.updated).toBe(1);
    expect(by.locations.updated).toBe(1);
    expect(by.products.error).toMatch(/answered HTTP 403.*INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND.*check the token in sources\.inventory\.auth/);
    expect(by.stock_levels.error).toMatch(/^skipped: dependency "products" failed in this wave \(wave \d+\)$/);
    const errors = await db.pool.query('select category, message from sync.run_error where run_id = $1', [by.products.runId]);
    expect(errors.rows.map((e) => e.category)).toEqual(['auth']);
    const stored = JSON.stringify([errors.rows, (await db.pool.query('select * from sync.run where id = any($1)', [results.map((r) => r.runId)])).rows]);
    expect(stored).not.toContain(TOKEN);
    expect(by.products.error).not.toContain(TOKEN);
    // The next sync, with access restored, catches up.
    const again = await syncAll(engine);
    expect(Object.values(again).map((r) => r.status)).toEqual(['succeeded', 'succeeded', 'succeeded', 'succeeded']);
    expect(sorted(await local(db.pool))).toEqual(sorted(expected(server)));
  });

  it('a table removed from the base fails with the same hint, nothing is deleted', async () => {
    const rows = await local(db.pool);
    const saved = server.tables['Stock Levels'];
    delete server.tables['Stock Levels'];
    const r = await syncAll(engine, ['stock_levels']);
    server.tables['Stock Levels'] = saved;
    expect(r.stock_levels.status).toBe('failed');
    expect(await local(db.pool)).toEqual(rows);
  });
});

describe('faults and 429s from the base', () => {
  const server = new AirtableServer();
  let db: TestDatabase;
  let engine: Engine;

  beforeAll(async () => {
    await server.start();
    ({ db, engine } = await exampleDatabase('inventory_faults', server));
    await syncAll(engine);
  });
  afterAll(async () => {
    await engine.close();
    await server.close();
  });

  const fault = fc.constantFrom<Fault>('ok', 'ok', '429', '429', '500', '503', 'reset', 'truncated');
  const edit = fc.record({
    kind: fc.constantFrom('price', 'delete', 'add'),
    at: fc.nat({ max: 10_000 }),
    price: fc.integer({ min: 0, max: 99_999 }).map((c) => c / 100),
  });

  it('any schedule of faults ends with the tables equal to the base, nothing lost or doubled', async () => {
    let added = 1000;
    await fc.assert(fc.asyncProperty(fc.array(fault, { maxLength: 6 }), fc.array(edit, { maxLength: 4 }), async (faults, edits) => {
      const products = server.tables.Products;
      for (const e of edits) {
        const i = e.at % products.length;
        // Only products no stock level points at may go: a mirror keeps rows still referenced.
        if (e.kind === 'delete' && !server.tables['Stock Levels'].some((s) => (s.fields.Product as string[])[0] === products[i].id)) products.splice(i, 1);
        else if (e.kind === 'price') products[i].fields['Unit Price'] = e.price;
        else if (e.kind === 'add') {
          added += 1;
          products.splice(i, 0, { id: recId('Pro', added), createdTime: '2024-06-01T00:00:00.000Z',
            fields: { SKU: `SKU-${added}`, Name: `New ${added}`, 'Unit Price': e.price, Supplier: [server.tables.Suppliers[0].id], Active: true } });
        }
      }
      server.reset();
      server.inject(...faults);
      const r = await syncAll(engine, ['products']);
      expect(r.products.status).toBe('succeeded');
      // Every page staged once: the run fetched exactly the base's records.
      expect(r.products.fetched).toBe(products.length);
      expect(byId((await local(db.pool)).products)).toEqual(byId(expected(server).products));
    }), { numRuns: 8, endOnFailure: true });
  });

  it('a 429 is waited out for as long as Retry-After says', async () => {
    server.reset();
    server.retryAfter.injected = '0.4';
    server.inject('429');
    const r = await syncAll(engine, ['suppliers']);
    server.retryAfter.injected = '0.05';
    expect(r.suppliers.status).toBe('succeeded');
    const [limited, next] = server.hits;
    expect(limited.status).toBe(429);
    expect(next.at - limited.at).toBeGreaterThanOrEqual(390);
  });
});

describe('the sample base', () => {
  it('has links that resolve: every product\'s supplier and every stock level\'s product and location exist', () => {
    const t = sampleBase();
    const ids = (name: string) => new Set(t[name].map((r) => r.id));
    expect(t.Products.every((p) => ids('Suppliers').has((p.fields.Supplier as string[])[0]))).toBe(true);
    expect(t['Stock Levels'].every((s) => ids('Products').has((s.fields.Product as string[])[0]) && ids('Locations').has((s.fields.Location as string[])[0]))).toBe(true);
    expect(t.Products).toHaveLength(120);
    expect(t['Stock Levels']).toHaveLength(240);
  });
});
