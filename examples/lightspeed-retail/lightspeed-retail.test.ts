import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabase, type TestDatabase } from '../../test/helpers/db.js';
import { waitGone } from '../../test/helpers/gen.js';
import { parseConfig } from '../../src/config/load.js';
import { applyConfig } from '../../src/config/apply.js';
import type { Config, HttpSourceConfig } from '../../src/config/schema.js';
import type { HttpEntityOptions } from '../../src/sources/http/schema.js';
import { getPath } from '../../src/sources/http/path.js';
import { Engine, type RunOptions, type RunResult } from '../../src/engine/run.js';
import { runMany } from '../../src/engine/plan.js';
import {
  LightspeedServer, TOKEN, VERSIONED, sampleStore, uuid,
  type Collection, type Fault, type LineItem, type LsRecord,
} from './lightspeed-server.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const file = (name: string) => readFileSync(path.join(here, name), 'utf8');
type RawConfig = { sources: { shop: Record<string, unknown> }; entities: Record<string, Record<string, unknown> & { from: { http: Record<string, unknown> } }> };
const exampleConfig = () => JSON.parse(file('syncline.config.json')) as RawConfig;

const TABLES = ['taxes', 'outlets', 'users', 'brands', 'suppliers', 'customer_groups', 'product_categories',
  'products', 'customers', 'inventory', 'sales', 'sale_line_items'];
type Rows = Record<string, unknown>[];

const envFor = (server: LightspeedServer) => ({ LIGHTSPEED_URL: server.baseUrl, LIGHTSPEED_TOKEN: TOKEN });

/**
 * The example config for a test: backoff shortened, and small pages so every
 * crawl takes several (`pageSize`), as a big store would.
 */
function testConfig(pageSize = 7): RawConfig {
  const raw = exampleConfig();
  raw.sources.shop.retries = { max: 8, baseMs: 5, maxMs: 40, rateLimited: 50 };
  for (const e of Object.values(raw.entities)) e.from.http.pagination = { size: pageSize };
  raw.entities.product_categories.from.http.pagination = { size: 3 };
  return raw;
}

async function exampleDatabase(prefix: string, server: LightspeedServer, raw = testConfig()):
  Promise<{ db: TestDatabase; cfg: Config; engine: Engine }> {
  const db = await testDatabase(prefix);
  await db.pool.query(file('local.sql'));
  const cfg = parseConfig(raw, envFor(server), 'examples/lightspeed-retail/syncline.config.json');
  await applyConfig(db.pool, cfg);
  return { db, cfg, engine: new Engine(db.pool, db.url, cfg, here) };
}

/** The same value on both sides: numbers as numbers, times as UTC ISO strings. */
function norm(v: unknown): unknown {
  if (v instanceof Date) return v.toISOString();
  if (typeof v === 'string' && /^-?\d+(\.\d+)?$/.test(v)) return Number(v);
  if (typeof v === 'string' && /^\d{4}-\d\d-\d\dT/.test(v)) return new Date(v).toISOString();
  return v;
}
const normRow = (r: Record<string, unknown>) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, norm(v)]));
const byId = (rows: Rows) => rows.map(normRow).sort((a, b) => String(a.id).localeCompare(String(b.id)));

/** A record through an entity's columns map, each path required to exist in the record. */
function mapRecord(r: object, columns: Record<string, string>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(columns).map(([col, p]) => {
    const v = getPath(r, p);
    if (v === undefined) throw new Error(`the sample record ${JSON.stringify(r).slice(0, 80)} has nothing at "${p}" (column ${col})`);
    return [col, v];
  }));
}

/** What each local table must hold for the store: live records through the example's columns maps. */
function expected(server: LightspeedServer, tables = TABLES): Record<string, Rows> {
  const entities = exampleConfig().entities;
  const out: Record<string, Rows> = {};
  for (const t of tables) {
    const e = entities[t];
    const columns = e.columns as Record<string, string>;
    if (t === 'sale_line_items') {
      const nested = (e.from as unknown as { nested: { path: string; parent: Record<string, string> } }).nested;
      out[t] = byId(server.live('sales').flatMap((s) => (getPath(s, nested.path) as LineItem[]).map((li) => ({
        ...mapRecord(li, columns), ...mapRecord(s, nested.parent) }))));
    } else {
      out[t] = byId(server.live(t as Collection).map((r) => mapRecord(r, columns)));
    }
  }
  return out;
}

async function local(pool: TestDatabase['pool'], tables = TABLES): Promise<Record<string, Rows>> {
  const entities = exampleConfig().entities;
  const out: Record<string, Rows> = {};
  for (const t of tables) {
    const e = entities[t];
    const cols = [...Object.keys(e.columns as object),
      ...Object.keys((e.from as { nested?: { parent: object } }).nested?.parent ?? {})];
    out[t] = byId((await pool.query(`select ${cols.map((c) => `"${c}"`).join(', ')} from pos.${t}`)).rows);
  }
  return out;
}

const accounted = (r: RunResult) => (r.inserted ?? 0) + (r.updated ?? 0) + (r.unchanged ?? 0) + (r.quarantined ?? 0) + (r.deleted ?? 0);

async function syncAll(engine: Engine, names = TABLES, opts: Partial<RunOptions> = {}): Promise<Record<string, RunResult>> {
  const results = await runMany(engine, names, { trigger: 'manual', ...opts });
  return Object.fromEntries(results.map((r) => [r.entity, r]));
}

const statuses = (r: Record<string, RunResult>) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, v.status === 'succeeded' ? v.status : `${v.status}: ${v.error}`]));
const allSucceeded = (names = TABLES) => Object.fromEntries(names.map((n) => [n, 'succeeded']));

/** Sales whose totals differ from the sum of their line items (or that have none). */
const TOTALS_CHECK = `
  select s.id, s.total_price, s.total_tax, sum(li.price_total) as items_price, sum(li.tax_total) as items_tax
    from pos.sales s left join pos.sale_line_items li on li.sale_id = s.id
   group by s.id
  having s.total_price is distinct from coalesce(sum(li.price_total), -1)
      or s.total_tax is distinct from coalesce(sum(li.tax_total), -1)`;

describe('the example config', () => {
  it('validates and expands the lightspeed-x preset: store URL, bearer token, 300 × 2 + 50 requests per 5 minutes', () => {
    const cfg = parseConfig(exampleConfig(), { LIGHTSPEED_DOMAIN_PREFIX: 'mystore', LIGHTSPEED_TOKEN: 'lsxs_pt_real' });
    expect(cfg.sources.shop).toMatchObject({
      kind: 'http', baseUrl: 'https://mystore.retail.lightspeed.app/api/2.0',
      auth: { bearer: 'lsxs_pt_real' }, rateLimit: { requests: 650, perSeconds: 300 },
    });
    expect(Object.keys(cfg.entities)).toEqual(TABLES);
    expect((cfg.entities.sales.from as { http: HttpEntityOptions }).http.pagination)
      .toEqual({ style: 'version', param: 'after', versionPath: 'version.max', sizeParam: 'page_size' });
    const categories = (cfg.entities.product_categories.from as { http: HttpEntityOptions }).http;
    expect(categories).toMatchObject({ path: 'product_categories', recordsPath: 'data.categories',
      pagination: { style: 'cursor', param: 'after', cursorPath: 'page_info.last_seen' } });
    expect(cfg.entities.product_categories.cursor).toBeUndefined();
    expect(cfg.entities.sale_line_items.from).toMatchObject({ http: { path: 'sales' },
      nested: { path: 'line_items', parent: { sale_id: 'id' } } });
    for (const t of TABLES.filter((n) => n !== 'product_categories')) expect(cfg.entities[t].cursor, t).toEqual({ column: 'version' });
    for (const t of TABLES) expect(cfg.entities[t].deletedWhen, t).toEqual({ column: 'deleted_at' });
    expect(cfg.entities.sale_line_items.dependsOn).toEqual(['sales', 'products', 'taxes']);
  });

  it('LIGHTSPEED_URL points the source at another server (the local one)', () => {
    const cfg = parseConfig(exampleConfig(), { LIGHTSPEED_URL: 'http://127.0.0.1:8788/api/2.0', LIGHTSPEED_TOKEN: TOKEN });
    expect((cfg.sources.shop as HttpSourceConfig).baseUrl).toBe('http://127.0.0.1:8788/api/2.0');
  });

  it('without the token, or without a store, validation says what to set', () => {
    expect(() => parseConfig(exampleConfig(), { LIGHTSPEED_DOMAIN_PREFIX: 'mystore' }))
      .toThrow(/sources\.shop\.token: environment variable LIGHTSPEED_TOKEN is not set/);
    expect(() => parseConfig(exampleConfig(), { LIGHTSPEED_TOKEN: TOKEN })).toThrow(/needs "domainPrefix"/);
  });
});

describe('a Lightspeed store → Postgres', () => {
  const server = new LightspeedServer();
  let db: TestDatabase;
  let engine: Engine;
  let cursors: Record<string, string | null> = {};

  beforeAll(async () => {
    await server.start();
    ({ db, engine } = await exampleDatabase('lightspeed', server));
  });
  afterAll(async () => {
    await engine.close();
    await server.close();
  });

  const storedCursors = async () => Object.fromEntries((await db.pool.query('select name, cursor_value from sync.entity')).rows
    .map((r) => [r.name, r.cursor_value as string | null]));

  it('the historical import lands every table, parents first, paging by version until an empty page', async () => {
    server.reset();
    const r = await syncAll(engine);
    expect(statuses(r)).toEqual(allSucceeded());
    for (const x of Object.values(r)) expect(x.fetched, x.entity).toBe(accounted(x));
    expect(await local(db.pool)).toEqual(expected(server));
    // Parents before children.
    const first = (c: string) => server.hits.findIndex((h) => h.collection === c);
    const last = (c: string) => server.hits.map((h) => h.collection).lastIndexOf(c);
    expect(last('taxes')).toBeLessThan(first('outlets'));
    expect(last('brands')).toBeLessThan(first('products'));
    expect(last('product_categories')).toBeLessThan(first('products'));
    expect(last('products')).toBeLessThan(first('inventory'));
    expect(last('customers')).toBeLessThan(first('sales'));
    // Version paging: no after at first, then the previous page's version.max, to an empty page.
    const sales = server.hits.filter((h) => h.collection === 'sales' && h.status === 200).slice(0, 6);
    expect(sales[0].query.has('after')).toBe(false);
    expect(sales.map((h) => h.query.get('page_size'))).toEqual(Array(sales.length).fill('7'));
    const versions = server.store.sales.map((s) => s.version).sort((a, b) => a - b);
    expect(sales[1].query.get('after')).toBe(String(versions[6]));
    const crawl = server.hits.filter((h) => h.collection === 'sales' && h.status === 200);
    expect(crawl.at(-1)!.records).toBe(0);
    // One crawl of sales feeds the sales and their line items.
    expect(crawl.length).toBe(Math.ceil(server.store.sales.length / 7) + 1);
    cursors = await storedCursors();
    expect(cursors.sales).toBe(String(versions.at(-1)));
  });

  it('the category tree converges in one run: children listed before their parents, every parent present', async () => {
    const { rows } = await db.pool.query(`
      with recursive tree as (
        select id, name, 1 as depth, name as path from pos.product_categories where parent_id is null
        union all
        select c.id, c.name, t.depth + 1, t.path || ' > ' || c.name from pos.product_categories c join tree t on c.parent_id = t.id)
      select path, depth from tree order by path`);
    expect(rows).toEqual([
      { path: 'Drinks', depth: 1 }, { path: 'Drinks > Coffee', depth: 2 }, { path: 'Drinks > Coffee > Beans', depth: 3 },
      { path: 'Drinks > Coffee > Ground', depth: 3 }, { path: 'Drinks > Tea', depth: 2 }, { path: 'Homeware', depth: 1 },
      { path: 'Homeware > Mugs', depth: 2 }]);
    // Paged by id, three a page: after=<the last id seen>, until an empty page.
    const pages = server.hits.filter((h) => h.collection === 'product_categories' && h.status === 200);
    expect(pages.map((h) => [h.query.get('after'), h.records])).toEqual([
      [null, 3], [uuid('category', 3), 3], [uuid('category', 8), 1], [uuid('category', 9), 0]]);
  });

  it('the foreign keys hold and sale totals equal the sum of their line items', async () => {
    expect((await db.pool.query(TOTALS_CHECK)).rows).toEqual([]);
    const { rows } = await db.pool.query(`select
      (select count(*)::int from pos.sale_line_items li left join pos.products p on p.id = li.product_id where p.id is null) as orphan_items,
      (select count(*)::int from pos.sales) as sales, (select count(*)::int from pos.sale_line_items) as items`);
    expect(rows[0]).toEqual({ orphan_items: 0, sales: 30, items: expected(server, ['sale_line_items']).sale_line_items.length });
  });

  it('re-syncing an unchanged store asks only for versions past each cursor and writes nothing', async () => {
    server.reset();
    const r = await syncAll(engine);
    expect(statuses(r)).toEqual(allSucceeded());
    for (const t of VERSIONED) {
      const hits = server.hits.filter((h) => h.collection === t);
      // Sales are read once: the line items nested in them come from the records the sales run kept.
      expect(hits.map((h) => [h.query.get('after'), h.records]), t).toEqual([[cursors[t], 0]]);
    }
    expect(Object.values(r).map((x) => x.inserted! + x.updated! + x.deleted!)).toEqual(TABLES.map(() => 0));
  });

  it('an incremental run fetches only newer versions and merges the changes', async () => {
    const product = server.live('products')[4];
    server.update('products', product.id, { name: 'Flat White Beans', price_excluding_tax: 19.5 });
    const customer = server.add('customers', { id: uuid('customer', 900), customer_code: 'C0900', first_name: 'Hemi', last_name: 'Ngata',
      email: 'hemi@mail.example', customer_group_id: uuid('group', 2), loyalty_balance: 0, created_at: server.now(), updated_at: server.now() });
    const sale = server.store.sales[2];
    server.setQuantity(sale.id, (sale.line_items as LineItem[])[0].id, 5);
    server.reset();
    const r = await syncAll(engine);
    expect(statuses(r)).toEqual(allSucceeded());
    expect(server.hits.filter((h) => h.collection === 'products')[0].query.get('after')).toBe(cursors.products);
    expect(server.hits.filter((h) => h.collection === 'sales')[0].query.get('after')).toBe(cursors.sales);
    expect(r.products).toMatchObject({ fetched: 1, updated: 1, inserted: 0 });
    expect(r.customers).toMatchObject({ fetched: 1, inserted: 1 });
    expect(r.sales).toMatchObject({ fetched: 1, updated: 1 });
    expect(r.taxes).toMatchObject({ fetched: 0 });
    expect((await db.pool.query('select name, price_excluding_tax::text from pos.products where id = $1', [product.id])).rows)
      .toEqual([{ name: 'Flat White Beans', price_excluding_tax: '19.50000' }]);
    expect((await db.pool.query('select first_name from pos.customers where id = $1', [customer.id])).rows).toEqual([{ first_name: 'Hemi' }]);
    expect(await local(db.pool)).toEqual(expected(server));
    cursors = await storedCursors();
  });

  it('a record deleted on the vendor (deleted_at) is deleted locally by an incremental run', async () => {
    const soldTo = new Set(server.store.sales.map((s) => s.customer_id));
    const customer = server.live('customers').find((c) => !soldTo.has(c.id))!;
    const brand = server.get('brands', uuid('brand', 4)); // no product has it
    server.remove('customers', customer.id);
    server.remove('brands', brand.id);
    server.reset();
    const r = await syncAll(engine, ['customers', 'brands']);
    expect(r.customers).toMatchObject({ status: 'succeeded', fetched: 1, deleted: 1, inserted: 0 });
    expect(r.brands).toMatchObject({ status: 'succeeded', fetched: 1, deleted: 1, inserted: 0 });
    expect((await db.pool.query('select count(*)::int as n from pos.customers where id = $1', [customer.id])).rows[0].n).toBe(0);
    expect(await local(db.pool, ['customers', 'brands'])).toEqual(expected(server, ['customers', 'brands']));
  });

  // Expected to fail until the engine keeps deferred tombstones: a product's
  // inventory rows reference it, so the products run defers its delete until
  // the inventory run has deleted them. runMany re-runs products after
  // inventory, but that re-run is incremental and the cursor already moved
  // past the deletion (sync.merge sets it from every staged record), so the
  // product stays until a --full run.
  it('a product deleted on the vendor with its stock records is gone after one sync', async () => {
    const sold = new Set(server.store.sales.flatMap((s) => (s.line_items as LineItem[]).map((l) => l.product_id)));
    const product = server.live('products').find((p) => !sold.has(p.id))!;
    server.remove('products', product.id);
    for (const inv of server.live('inventory').filter((i) => i.product_id === product.id)) server.remove('inventory', inv.id);
    const r = await syncAll(engine, ['products', 'inventory']);
    expect(statuses(r)).toEqual(allSucceeded(['products', 'inventory']));
    expect(r.inventory).toMatchObject({ deleted: 2 });
    expect((await db.pool.query('select count(*)::int as n from pos.products where id = $1', [product.id])).rows[0].n).toBe(0);
    expect(await local(db.pool, ['products', 'inventory'])).toEqual(expected(server, ['products', 'inventory']));
  });

  it('a line item removed from a sale disappears locally; other sales keep theirs', async () => {
    const sale = server.store.sales.find((s) => (s.line_items as LineItem[]).length >= 3)!;
    const removed = (sale.line_items as LineItem[])[1];
    server.removeLineItem(sale.id, removed.id);
    const before = (await db.pool.query('select id, sale_id, xmin::text from pos.sale_line_items where sale_id <> $1 order by id', [sale.id])).rows;
    const r = await syncAll(engine, ['sales', 'sale_line_items']);
    expect(statuses(r)).toEqual(allSucceeded(['sales', 'sale_line_items']));
    expect(r.sale_line_items).toMatchObject({ deleted: 1, inserted: 0 });
    const items = (await db.pool.query('select id from pos.sale_line_items where sale_id = $1 order by id', [sale.id])).rows.map((x) => x.id);
    expect(items).toEqual((sale.line_items as LineItem[]).map((l) => l.id).sort());
    expect(items).not.toContain(removed.id);
    // Items of sales not in this run are untouched.
    expect((await db.pool.query('select id, sale_id, xmin::text from pos.sale_line_items where sale_id <> $1 order by id', [sale.id])).rows).toEqual(before);
    expect((await db.pool.query(TOTALS_CHECK)).rows).toEqual([]);
    expect(await local(db.pool, ['sales', 'sale_line_items'])).toEqual(expected(server, ['sales', 'sale_line_items']));
  });

  it('a new sale rung up arrives with its items, totals matching', async () => {
    const sale = server.add('sales', { ...structuredClone(server.store.sales[5]), id: uuid('sale', 500), invoice_number: 'INV-9500',
      line_items: (server.store.sales[5].line_items as LineItem[]).map((l, k) => ({ ...l, id: uuid('line', 5000 + k) })) } as LsRecord);
    const r = await syncAll(engine, ['sales', 'sale_line_items']);
    expect(r.sales).toMatchObject({ status: 'succeeded', fetched: 1, inserted: 1 });
    expect(r.sale_line_items).toMatchObject({ status: 'succeeded', inserted: (sale.line_items as LineItem[]).length });
    expect((await db.pool.query(TOTALS_CHECK)).rows).toEqual([]);
    expect(await local(db.pool, ['sales', 'sale_line_items'])).toEqual(expected(server, ['sales', 'sale_line_items']));
  });

  it('a wrong token fails the run with what to fix; the token appears nowhere in the sync tables', async () => {
    const bad = new LightspeedServer(sampleStore(), 'lsxs_pt_other');
    await bad.start();
    const other = await exampleDatabase('lightspeed_auth', bad);
    try {
      const r = await syncAll(other.engine, ['taxes']);
      expect(r.taxes.status).toBe('failed');
      expect(r.taxes.error).toMatch(/401.*check the token in sources\.shop\.auth/);
      expect(r.taxes.error).not.toContain(TOKEN);
      const errors = await other.db.pool.query('select category from sync.run_error where run_id = $1', [r.taxes.runId]);
      expect(errors.rows).toEqual([{ category: 'auth' }]);
    } finally {
      await other.engine.close();
      await bad.close();
    }
    // Everything Syncline stored for the runs above: runs, errors, changes, entities, budgets.
    const { rows } = await db.pool.query(`select table_schema, table_name from information_schema.tables
      where table_schema in ('sync', 'sync_staging') and table_type = 'BASE TABLE'`);
    expect(rows.length).toBeGreaterThan(3);
    for (const t of rows) {
      const dump = await db.pool.query(`select t::text as row from "${t.table_schema}"."${t.table_name}" t`);
      expect(dump.rows.map((x) => x.row).join('\n'), `${t.table_schema}.${t.table_name}`).not.toContain(TOKEN);
    }
  });
});

describe('faults and 429s from the store', () => {
  const server = new LightspeedServer(sampleStore({ products: 24, sales: 20 }));
  let db: TestDatabase;
  let engine: Engine;
  const ENTITIES = ['products', 'inventory', 'sales', 'sale_line_items'];

  beforeAll(async () => {
    await server.start();
    ({ db, engine } = await exampleDatabase('lightspeed_faults', server, testConfig(5)));
    const r = await syncAll(engine);
    expect(statuses(r)).toEqual(allSucceeded());
  });
  afterAll(async () => {
    await engine.close();
    await server.close();
  });

  const fault = fc.constantFrom<Fault>('ok', 'ok', '429', '429', '429', '500', '503', 'reset', 'truncated');
  const edit = fc.record({
    kind: fc.constantFrom('reprice', 'restock', 'drop-line', 'requantity', 'sale'),
    at: fc.nat({ max: 10_000 }),
    n: fc.integer({ min: 1, max: 9 }),
  });

  it('any schedule of faults and 429s, with the store changing between and during crawls, ends equal to the store', async () => {
    let added = 700;
    await fc.assert(fc.asyncProperty(fc.array(fault, { maxLength: 8 }), fc.array(edit, { maxLength: 5 }), fc.array(edit, { maxLength: 2 }),
      async (faults, edits, during) => {
        const apply = (e: { kind: string; at: number; n: number }) => {
          const products = server.live('products');
          const sales = server.live('sales');
          const sale = sales[e.at % sales.length];
          const items = sale.line_items as LineItem[];
          if (e.kind === 'reprice') server.update('products', products[e.at % products.length].id, { price_excluding_tax: e.n * 1.25 });
          else if (e.kind === 'restock') { const inv = server.live('inventory'); server.update('inventory', inv[e.at % inv.length].id, { inventory_level: e.n * 4 }); }
          else if (e.kind === 'drop-line' && items.length > 1) server.removeLineItem(sale.id, items[e.at % items.length].id);
          else if (e.kind === 'requantity') server.setQuantity(sale.id, items[e.at % items.length].id, e.n);
          else if (e.kind === 'sale') {
            added += 1;
            const n = added;
            server.add('sales', { ...structuredClone(sale), id: uuid('sale', n), invoice_number: `INV-${n}`,
              line_items: items.map((l, k) => ({ ...l, id: uuid('line', n * 10 + k) })) } as LsRecord);
          }
        };
        for (const e of edits) apply(e);
        server.reset();
        server.inject(...faults);
        // Changes during the crawl: a record changed after its page was served comes again later.
        let pages = 0;
        const pending = [...during];
        server.beforePage = () => { pages += 1; if (pages % 3 === 2 && pending.length) apply(pending.shift()!); };
        const r = await syncAll(engine, ENTITIES);
        server.beforePage = undefined;
        for (const e of pending) apply(e);
        expect(statuses(r)).toEqual(allSucceeded(ENTITIES));
        // Whatever the crawl missed at its end, the next run picks up: then the tables equal the store.
        const again = await syncAll(engine, ENTITIES);
        expect(statuses(again)).toEqual(allSucceeded(ENTITIES));
        expect(await local(db.pool, ENTITIES)).toEqual(expected(server, ENTITIES));
        expect((await db.pool.query(TOTALS_CHECK)).rows).toEqual([]);
      }), { numRuns: 8, endOnFailure: true });
  });

  it('past the store\'s own limit, 429s with Retry-After are waited out: nothing lost, nothing doubled', async () => {
    // Another app on the same token spent most of the budget: the store allows 4 requests a second now.
    server.rateLimit = { requests: 4, windowMs: 1000 };
    server.reset();
    try {
      const r = await syncAll(engine, ['products', 'inventory'], { full: true });
      expect(statuses(r)).toEqual(allSucceeded(['products', 'inventory']));
      expect(server.limited).toBeGreaterThan(0);
      expect(r.products.fetched).toBe(server.store.products.length);
      expect(r.inventory.fetched).toBe(server.store.inventory.length);
      // Each 429 was followed by a pause of about Retry-After (1 s).
      const limitedAt = server.hits.findIndex((h) => h.status === 429);
      expect(server.hits[limitedAt + 1].at - server.hits[limitedAt].at).toBeGreaterThanOrEqual(300);
      expect(await local(db.pool, ['products', 'inventory'])).toEqual(expected(server, ['products', 'inventory']));
    } finally {
      server.rateLimit = { requests: 650, windowMs: 300_000 };
    }
  });

  it('an injected 429 is waited out for as long as Retry-After says', async () => {
    server.reset();
    server.injectedRetryAfter = '0.4';
    server.inject('429');
    const r = await syncAll(engine, ['taxes']);
    server.injectedRetryAfter = '0.05';
    expect(r.taxes.status).toBe('succeeded');
    const [limited, next] = server.hits;
    expect(limited.status).toBe(429);
    expect(next.at - limited.at).toBeGreaterThanOrEqual(390);
  });
});

describe('a historical import killed mid-way', () => {
  const server = new LightspeedServer(sampleStore({ sales: 240 }));
  let db: TestDatabase;
  let configFile: string;
  const raw = testConfig(20);

  beforeAll(async () => {
    await server.start();
    let engine: Engine;
    ({ db, engine } = await exampleDatabase('lightspeed_resume', server, raw));
    try {
      const r = await syncAll(engine, TABLES.filter((t) => t !== 'sales' && t !== 'sale_line_items'));
      expect(Object.values(r).every((x) => x.status === 'succeeded')).toBe(true);
    } finally {
      await engine.close();
    }
    const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-lightspeed-'));
    configFile = path.join(dir, 'syncline.config.json');
    writeFileSync(configFile, JSON.stringify({ ...raw, $schema: undefined }));
  });
  afterAll(() => server.close());

  /**
   * `sync sales` in a child process, SIGKILLed once the run has saved `pages`
   * pages; the store answers one page more (the one fetched ahead) and then
   * hangs, so the crawl is surely mid-way. Resolves once the child's sessions
   * are gone too (they hold the entity lock until the server notices).
   */
  async function syncKilledAfterPages(pages: number): Promise<void> {
    const app = `syncline-test lightspeed ${process.pid}`;
    server.hold = { collection: 'sales', pages: pages + 1 };
    await new Promise<void>((resolve) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'sync', 'sales'], {
        cwd: path.resolve(here, '../..'),
        env: { ...process.env, ...envFor(server), DATABASE_URL: db.url, SYNCLINE_CONFIG: configFile, SYNCLINE_LOG_LEVEL: 'silent', PGAPPNAME: app },
        stdio: 'ignore',
      });
      let exited = false;
      child.on('exit', () => { exited = true; resolve(); });
      const watch = async () => {
        while (!exited) {
          const { rows } = await db.pool.query(`select (detail ->> 'pages')::int as p from sync.run where entity = 'sales' and status = 'running'`);
          if (rows[0]?.p >= pages) { child.kill('SIGKILL'); return; }
          await new Promise((r) => setTimeout(r, 5));
        }
      };
      void watch();
    });
    server.hold = undefined;
    await waitGone(db.pool, app);
  }

  it('continues from its last saved page: no page fetched twice, every sale once', async () => {
    await syncKilledAfterPages(4);
    const killed = (await db.pool.query(`select id, detail from sync.run where entity = 'sales' order by id desc limit 1`)).rows[0];
    expect(killed.detail.pages).toBeGreaterThanOrEqual(4);
    expect(killed.detail.pages).toBeLessThan(12);
    const savedAfter = killed.detail.resume.after;
    expect((await db.pool.query('select count(*)::int as n from pos.sales')).rows[0].n).toBe(0);

    server.reset();
    const cfg = parseConfig(raw, envFor(server));
    await applyConfig(db.pool, cfg);
    const engine = new Engine(db.pool, db.url, cfg, here);
    try {
      const r = await syncAll(engine, ['sales']);
      expect(r.sales).toMatchObject({ status: 'succeeded', fetched: 240, inserted: 240 });
      expect(server.hits[0].query.get('after')).toBe(String(savedAfter));
      expect(server.hits.filter((h) => h.collection === 'sales' && h.status === 200).length).toBe(12 - killed.detail.pages + 1);
      expect(await local(db.pool, ['sales'])).toEqual(expected(server, ['sales']));
    } finally {
      await engine.close();
    }
  });
});

describe('the sample store', () => {
  it('has references that resolve and sale totals that add up', () => {
    const s = sampleStore();
    const ids = (c: Collection) => new Set(s[c].map((r) => r.id));
    expect(s.products.every((p) => ids('product_categories').has((p.categories as { id: string }[])[0].id))).toBe(true);
    expect(s.product_categories.every((c) => c.parent_category_id === null || ids('product_categories').has(c.parent_category_id as string))).toBe(true);
    for (const sale of s.sales) {
      const items = sale.line_items as LineItem[];
      expect(items.every((l) => ids('products').has(l.product_id))).toBe(true);
      const sum = items.reduce((a, l) => a + Math.round(l.price_total * 1e5), 0);
      expect(Math.round((sale.total_price as number) * 1e5)).toBe(sum);
    }
    expect(s.inventory).toHaveLength(80);
  });
});
