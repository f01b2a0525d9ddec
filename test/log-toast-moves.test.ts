/**
 * TOASTed values an update left alone, under log capture (issue 15): the log
 * does not carry them (pgoutput sends "unchanged"), and sync.log_prepare
 * fills them from the key's earlier change in the read, else from the
 * target's row of the key. A key change, or a row moving into a
 * tenant-scoped entity's tenant, has no such row: the value is read from
 * the source in the read's snapshot. Found by the property test of
 * test/properties/log-capture.test.ts (the value became NULL).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

// Slot names are server-wide and test files run side by side on one server: entity names of this file's own.
const DDL = (t: string) => `create table ${t} (tenant text not null, id int primary key, name text, big text)`;
const ENTITIES = {
  toast_all: { source: 'src', from: { table: 'items' }, target: 'items', key: ['id'], capture: 'log', deleteGuard: false },
  toast_acme: { source: 'src', from: { table: 'items' }, target: 'acme_items', key: ['id'], capture: 'log', deleteGuard: false,
    tenant: { column: 'tenant', value: 'acme' } },
};
// ~10 kB that compresses badly: stored out of line.
const BIG = `(select string_agg(md5(g::text), '') from generate_series(1, 300) g)`;
const bigOf = async (db: TestDatabase, table: string, id: number) => {
  const { rows } = await db.pool.query(`select length(big) as n from ${table} where id = $1`, [id]);
  return rows.length ? rows[0].n : 'no row';
};

beforeAll(async () => {
  ({ sync, source } = await testDatabases('log_toast_moves'));
  await source.pool.query(`${DDL('items')}; insert into items values ('acme', 1, 'a', ${BIG}), ('globex', 2, 'g', ${BIG})`);
  await sync.pool.query(`${DDL('items')}; ${DDL('acme_items')}`);
  engine = await engineFor(sync, source, ENTITIES);
  for (const e of Object.keys(ENTITIES)) expect(await engine.run(e, { trigger: 'manual' })).toMatchObject({ status: 'succeeded' });
});
afterAll(() => engine?.close());

describe('log capture of TOASTed values an update left alone', () => {
  it('keeps the value of a row whose key changed', async () => {
    await source.pool.query('update items set id = 10 where id = 1');
    expect(await engine.run('toast_all', { trigger: 'manual' })).toMatchObject({ status: 'succeeded' });
    expect(await bigOf(sync, 'items', 10)).toBe(9600);
  });

  it('keeps the value of a row moving into the tenant', async () => {
    await source.pool.query(`update items set tenant = 'acme' where id = 2`);
    expect(await engine.run('toast_acme', { trigger: 'manual' })).toMatchObject({ status: 'succeeded' });
    expect(await bigOf(sync, 'acme_items', 2)).toBe(9600);
  });

  it('takes the moved row\'s value, not that of the row its key held before it was deleted in the same read', async () => {
    await source.pool.query(`insert into items values ('globex', 20, 'old', 'x' || ${BIG}), ('globex', 21, 'mover', ${BIG})`);
    expect(await engine.run('toast_all', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', inserted: 2 });
    await source.pool.query('begin; delete from items where id = 20; update items set id = 20 where id = 21; commit');
    expect(await engine.run('toast_all', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', updated: 1, deleted: 1 });
    const md5 = async (db: TestDatabase) => (await db.pool.query('select name, md5(big) as h from items where id = 20')).rows;
    expect(await md5(sync)).toEqual(await md5(source));
    expect(await bigOf(sync, 'items', 20)).toBe(9600);
  });
});
