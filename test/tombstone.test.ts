import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const ids = async (table: string) => (await sync.pool.query(`select id from ${table} order by id`)).rows.map((r) => r.id);

beforeAll(async () => {
  ({ sync, source } = await testDatabases('tombstone'));
  await source.pool.query(`create table customers (id int primary key, name text, version int, deleted_at timestamptz);
    insert into customers select i, 'c' || i, i, null from generate_series(1, 6) i`);
  await sync.pool.query(`create table customers (id int primary key, name text, version int, deleted_at timestamptz);
    create table customers_upsert (like customers including all)`);
  engine = await engineFor(sync, source, {
    customers: { source: 'src', from: { table: 'customers' }, target: 'customers', key: ['id'],
      cursor: { column: 'version' }, deletedWhen: { column: 'deleted_at' } },
    customers_upsert: { source: 'src', from: { table: 'customers' }, target: 'customers_upsert', key: ['id'], mode: 'upsert',
      deletedWhen: { column: 'deleted_at' } },
  });
});
afterAll(() => engine.close());

describe('records the source marks deleted', () => {
  it('delete their rows in an incremental run, and are never inserted', async () => {
    await source.pool.query(`update customers set deleted_at = now() where id = 6`);
    const first = await engine.run('customers', { trigger: 'manual' });
    expect(first).toMatchObject({ status: 'succeeded', inserted: 5 });
    expect(await ids('customers')).toEqual([1, 2, 3, 4, 5]);
    await source.pool.query(`update customers set deleted_at = now(), version = 10 where id = 2`);
    const incremental = await engine.run('customers', { trigger: 'manual' });
    expect(incremental).toMatchObject({ status: 'succeeded', fetched: 1, deleted: 1, inserted: 0, updated: 0 });
    expect(await ids('customers')).toEqual([1, 3, 4, 5]);
    const { rows } = await sync.pool.query(`select action, key from sync.run_change where run_id = $1`, [incremental.runId]);
    expect(rows).toEqual([{ action: 'delete', key: ['2'] }]);
  });

  it('delete in upsert mode too, which otherwise never deletes', async () => {
    const r = await engine.run('customers_upsert', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', inserted: 4 });
    expect(await ids('customers_upsert')).toEqual([1, 3, 4, 5]);
    await source.pool.query(`delete from customers where id = 1`);
    expect((await engine.run('customers_upsert', { trigger: 'manual' })).deleted).toBe(0);
    expect(await ids('customers_upsert')).toEqual([1, 3, 4, 5]);
  });

  it('a dry run reports the same deletions and changes nothing', async () => {
    await source.pool.query(`update customers set deleted_at = now(), version = 11 where id = 3`);
    const dry = await engine.run('customers', { trigger: 'manual', dryRun: true });
    expect(dry).toMatchObject({ deleted: 1 });
    expect(await ids('customers')).toEqual([1, 3, 4, 5]);
  });
});
