import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const ddl = `create table items (tenant text not null, id int not null, name text, price numeric(10,2), tags jsonb,
  updated_at timestamptz not null default now(), deleted_at timestamptz, primary key (tenant, id))`;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('merge'));
  await source.pool.query(ddl);
  await sync.pool.query(ddl);
  engine = await engineFor(sync, source, {
    items_a: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'], deleteGuard: false,
      columns: ['tenant', 'id', 'name', 'price', 'tags', 'updated_at'], tenant: { column: 'tenant', value: 'a' } },
  });
});
afterAll(() => engine.close());

const target = async () => (await sync.pool.query(
  `select tenant, id, name, price::text, tags from items order by tenant, id`)).rows;

describe('mirror merge', () => {
  it('inserts, updates and deletes within the tenant and logs each change', async () => {
    await sync.pool.query(`insert into items (tenant, id, name) values ('b', 1, 'other tenant'), ('a', 99, 'stale')`);
    await source.pool.query(`insert into items (tenant, id, name, price, tags) values
      ('a', 1, 'one', 1.50, '{"k": 1}'), ('a', 2, 'two', 2, null), ('b', 7, 'not mine', 0, null)`);
    const r = await engine.run('items_a', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 2, inserted: 2, updated: 0, deleted: 1, unchanged: 0 });
    expect(await target()).toEqual([
      { tenant: 'a', id: 1, name: 'one', price: '1.50', tags: { k: 1 } },
      { tenant: 'a', id: 2, name: 'two', price: '2.00', tags: null },
      { tenant: 'b', id: 1, name: 'other tenant', price: null, tags: null },
    ]);
    const changes = await sync.pool.query('select action, key from sync.run_change where run_id = $1 order by action, key', [r.runId]);
    expect(changes.rows).toEqual([
      { action: 'delete', key: ['a', '99'] },
      { action: 'insert', key: ['a', '1'] },
      { action: 'insert', key: ['a', '2'] },
    ]);
  });

  it('re-syncing unchanged data writes no tuple', async () => {
    const before = await sync.pool.query(`select xmin::text as x, id from items order by tenant, id`);
    const r = await engine.run('items_a', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, deleted: 0, unchanged: 2 });
    const after = await sync.pool.query(`select xmin::text as x, id from items order by tenant, id`);
    expect(after.rows).toEqual(before.rows);
  });

  it('records the names of the changed columns of an update', async () => {
    await source.pool.query(`update items set price = 9.99 where id = 1`);
    const r = await engine.run('items_a', { trigger: 'manual' });
    expect(r).toMatchObject({ updated: 1, unchanged: 1 });
    const { rows } = await sync.pool.query('select changed from sync.run_change where run_id = $1', [r.runId]);
    expect(rows).toEqual([{ changed: ['price'] }]);
  });

  it('a dry run reports the diff and changes nothing', async () => {
    await source.pool.query(`update items set name = 'TWO' where id = 2; insert into items (tenant, id, name) values ('a', 3, 'three')`);
    const before = await target();
    const r = await engine.run('items_a', { trigger: 'manual', dryRun: true });
    expect(r).toMatchObject({ status: 'succeeded', inserted: 1, updated: 1, deleted: 0 });
    expect(r.sample).toEqual(expect.arrayContaining([
      { action: 'insert', key: { tenant: 'a', id: 3 }, changed: null },
      { action: 'update', key: { tenant: 'a', id: 2 }, changed: ['name'] },
    ]));
    expect(await target()).toEqual(before);
    const { rows } = await sync.pool.query('select count(*)::int as n from sync.run_change where run_id = $1', [r.runId]);
    expect(rows[0].n).toBe(0);
  });

  it('quarantines duplicate and null keys with a reason and merges the rest', async () => {
    await source.pool.query(`alter table items drop constraint items_pkey; alter table items alter column id drop not null;
      insert into items (tenant, id, name) values ('a', 3, 'dup'), ('a', null, 'no key')`);
    const r = await engine.run('items_a', { trigger: 'manual' });
    expect(r.status).toBe('partial');
    expect(r.quarantined).toBe(3);
    expect(r.fetched).toBe((r.inserted ?? 0) + (r.updated ?? 0) + (r.unchanged ?? 0) + (r.quarantined ?? 0));
    const { rows } = await sync.pool.query('select category, message from sync.run_error where run_id = $1 order by message', [r.runId]);
    expect(rows).toEqual([
      { category: 'validation', message: 'a key column is null' },
      { category: 'integrity', message: 'the source has 2 records with this key; none of them was merged' },
      { category: 'integrity', message: 'the source has 2 records with this key; none of them was merged' },
    ]);
    expect((await target()).find((t) => t.id === 2)?.name).toBe('TWO');
  });
});
