import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { parseConfig } from '../src/config/load.js';
import { applyConfig } from '../src/config/apply.js';
import { Engine } from '../src/engine/run.js';

interface Sale { id: string; version: number; total: string; line_items: { id: string; product: string; price: string }[] }

let sync: TestDatabase;
let engine: Engine;
let version = 0;
const sales: Sale[] = [];
let requests = 0;
const server = http.createServer((req, res) => {
  requests += 1;
  // Lightspeed X-Series 2.0's version cursor: records past `after`, by version; an empty page ends.
  const url = new URL(req.url ?? '/', 'http://x');
  const after = Number(url.searchParams.get('after') ?? 0);
  const data = sales.filter((s) => s.version > after).sort((a, b) => a.version - b.version).slice(0, 2);
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ data, version: { min: data[0]?.version ?? null, max: data.at(-1)?.version ?? null } }));
});

function put(id: string, items: [string, string, string][]) {
  const s = sales.find((x) => x.id === id);
  const sale: Sale = { id, version: ++version, line_items: items.map(([i, product, price]) => ({ id: i, product, price })),
    total: items.reduce((t, [, , p]) => t + Number(p), 0).toFixed(2) };
  if (s) Object.assign(s, sale); else sales.push(sale);
}

const feeds = async () => (await sync.pool.query(
  `select count(*)::int as n from pg_tables where schemaname = 'sync_staging' and tablename like '%\\_feed'`)).rows[0].n;
const items = async () => (await sync.pool.query('select id, sale_id, product, price::text from line_items order by id')).rows;

beforeAll(async () => {
  sync = await testDatabase('nested');
  await sync.pool.query(`create table sales (id text primary key, version bigint, total numeric(10,2));
    create table line_items (id text primary key, sale_id text not null references sales, product text, price numeric(10,2));
    create table line_items_inc (id text primary key, sale_id text not null, sale_version bigint, product text)`);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const endpoint = { path: 'sales', pagination: { style: 'version' } };
  const cfg = parseConfig({
    sources: { shop: { kind: 'http', baseUrl: base } },
    entities: {
      sales: { source: 'shop', from: { http: endpoint }, target: 'sales', key: ['id'], columns: ['id', 'version', 'total'],
        cursor: { column: 'version' } },
      line_items: { source: 'shop', from: { http: endpoint, nested: { path: 'line_items', parent: { sale_id: 'id' } } },
        target: 'line_items', key: ['id'], columns: ['id', 'product', 'price'], dependsOn: ['sales'] },
      // Incremental: only sales changed since the last run come, with their whole child sets.
      line_items_inc: { source: 'shop', from: { http: endpoint, nested: { path: 'line_items', parent: { sale_id: 'id', sale_version: 'version' }, parentKey: ['sale_id'] } },
        target: 'line_items_inc', key: ['id'], columns: ['id', 'product'], cursor: { column: 'sale_version' } },
    },
  }, {});
  await applyConfig(sync.pool, cfg);
  engine = new Engine(sync.pool, sync.url, cfg);
  put('s1', [['a', 'tea', '2.50'], ['b', 'cake', '4.00']]);
  put('s2', [['c', 'coffee', '3.00']]);
  put('s3', []);
});
afterAll(async () => {
  await engine.close();
  await new Promise((r) => server.close(r));
});

describe('records nested in an API record', () => {
  it('become rows of their own table with the parent key carried down', async () => {
    expect((await engine.run('sales', { trigger: 'manual' })).status).toBe('succeeded');
    expect(await feeds()).toBe(1);
    requests = 0;
    const r = await engine.run('line_items', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 3, inserted: 3 });
    // One response feeds both: the items come from the records the sales run kept, not from the API again.
    expect(requests).toBe(0);
    expect(await feeds()).toBe(0);
    expect(await items()).toEqual([
      { id: 'a', sale_id: 's1', product: 'tea', price: '2.50' },
      { id: 'b', sale_id: 's1', product: 'cake', price: '4.00' },
      { id: 'c', sale_id: 's2', product: 'coffee', price: '3.00' },
    ]);
  });

  it('a parent\'s child set is replaced as a whole; children of other parents stay', async () => {
    put('s1', [['a', 'tea', '2.75']]); // b removed from the sale, a repriced
    // Children follow their parent entity: until sales has merged s1's new version, s1's items wait.
    expect(await engine.run('line_items', { trigger: 'manual' })).toMatchObject({ fetched: 0, updated: 0, deleted: 0 });
    expect((await engine.run('sales', { trigger: 'manual' })).updated).toBe(1);
    requests = 0;
    const r = await engine.run('line_items', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 1, updated: 1, deleted: 1 });
    expect(requests).toBe(0);
    expect(await items()).toEqual([
      { id: 'a', sale_id: 's1', product: 'tea', price: '2.75' },
      { id: 'c', sale_id: 's2', product: 'coffee', price: '3.00' },
    ]);
  });

  it('an incremental run replaces the child sets of the parents it sees and leaves the others alone', async () => {
    expect((await engine.run('line_items_inc', { trigger: 'manual' })).inserted).toBe(2);
    put('s2', []); // every item of s2 removed; s1 not sent again
    const r = await engine.run('line_items_inc', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 0, deleted: 1 });
    expect((await sync.pool.query('select id, sale_id from line_items_inc order by id')).rows).toEqual([{ id: 'a', sale_id: 's1' }]);
  });

  it('without the parent\'s kept records (dropped, or taken by no one yet) the children crawl the API and still converge', async () => {
    put('s2', [['c', 'coffee', '3.10'], ['d', 'scone', '3.50']]);
    expect((await engine.run('sales', { trigger: 'manual' })).updated).toBe(1);
    await sync.pool.query(`select format('drop table sync_staging.%I', tablename) as q from pg_tables
      where schemaname = 'sync_staging' and tablename like '%\\_feed'`).then(async ({ rows }) => {
      for (const r of rows) await sync.pool.query(r.q);
    });
    requests = 0;
    expect(await engine.run('line_items', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', inserted: 1, updated: 1 });
    expect(requests).toBeGreaterThan(0);
    // The crawl noted the parent run it followed: the next parent run feeds the children again.
    put('s1', [['a', 'tea', '2.75'], ['e', 'jam', '1.00']]);
    expect((await engine.run('sales', { trigger: 'manual' })).updated).toBe(1);
    requests = 0;
    expect(await engine.run('line_items', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', fetched: 2, inserted: 1 });
    expect(requests).toBe(0);
    expect((await sync.pool.query(`select sync.cleanup() ->> 'staging_dropped' as n`)).rows[0].n).toBe('0');
    expect(await feeds()).toBe(0);
  });

  it('sale totals equal the sum of their line items after sync', async () => {
    await engine.run('sales', { trigger: 'manual' });
    await engine.run('line_items', { trigger: 'manual' });
    const { rows } = await sync.pool.query(`select s.id from sales s left join line_items l on l.sale_id = s.id
      group by s.id, s.total having s.total is distinct from coalesce(sum(l.price), 0)`);
    expect(rows).toEqual([]);
  });
});
