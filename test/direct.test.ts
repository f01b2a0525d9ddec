import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { until } from './helpers/until.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const detail = async (runId: number | null) =>
  (await sync.pool.query('select detail from sync.run where id = $1', [runId])).rows[0].detail;
const changeRows = async (runId: number | null) =>
  (await sync.pool.query(`select count(*)::int as n from sync.run_change where run_id = $1`, [runId])).rows[0].n;
const history = async (entity: string, key: string) =>
  (await sync.pool.query(`select run_id::int, what from sync.record_history($1, $2)`, [entity, key])).rows;
const count = async (table: string) => (await sync.pool.query(`select count(*)::int as n from ${table}`)).rows[0].n;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('direct'));
  await source.pool.query(`
    create table parents (id int primary key, name text);
    insert into parents select i, 'p' || i from generate_series(1, 100) i;
    create table keyed (id int primary key, name text);
    insert into keyed select i, 'p' || i from generate_series(1, 100) i;
    create table loose (id int, name text, updated_at timestamptz default now());
    insert into loose select i, 'l' || i, '2026-01-01'::timestamptz + i * interval '1 minute' from generate_series(1, 100) i;
    create table kids (id int primary key, parent_id int, name text);
    insert into kids select i, i, 'k' || i from generate_series(1, 100) i`);
  await sync.pool.query(`
    create table parents (id int primary key, name text);
    create table keyed (id int primary key, name text);
    create table loose (id int primary key, name text, updated_at timestamptz);
    create table kids (id int primary key, parent_id int references parents, name text);
    create table slow_target (id int primary key, name text)`);
  engine = await engineFor(sync, source, {
    parents: { source: 'src', from: { table: 'parents' }, target: 'parents', key: ['id'] },
    keyed: { source: 'src', from: { table: 'keyed' }, target: 'keyed', key: ['id'], history: 'keys' },
    loose: { source: 'src', from: { table: 'loose' }, target: 'loose', key: ['id'], cursor: { column: 'updated_at' } },
    kids: { source: 'src', from: { table: 'kids' }, target: 'kids', key: ['id'] },
    slow: { source: 'src', from: { query: 'select id, name from parents where pg_sleep(0.05) is not null' },
      target: 'slow_target', key: ['id'] },
  });
});
afterAll(() => engine.close());

describe('the initial load of an empty target', () => {
  it('copies straight into the target and records the run as one initial load of N rows, no row per key', async () => {
    const r = await engine.run('parents', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 100, inserted: 100, unchanged: 0 });
    expect(await detail(r.runId)).toMatchObject({ direct: true, initial_load: 100, per_key_history: false });
    expect(await changeRows(r.runId)).toBe(0);
    expect((await sync.pool.query(`select action, key from sync.change where run_id = $1`, [r.runId])).rows)
      .toEqual([{ action: 'initial load, 100 rows', key: null }]);
    expect(await count('parents')).toBe(100);
    expect((await sync.pool.query(`select count(*)::int as n from pg_tables where schemaname = 'sync_staging'`)).rows[0].n).toBe(0);
  });

  it('the next run goes through staging and writes nothing', async () => {
    const r = await engine.run('parents', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, deleted: 0, unchanged: 100 });
    expect(await detail(r.runId)).not.toHaveProperty('direct');
  });

  it('changes after the initial load are recorded per key, and a key\'s history starts with "initial load (run N)"', async () => {
    const load = (await sync.pool.query(`select id::int from sync.run where entity = 'parents' and detail ? 'initial_load'`)).rows[0].id;
    await source.pool.query(`update parents set name = 'changed' where id = 5; delete from parents where id = 6;
      insert into parents values (101, 'new')`);
    const r = await engine.run('parents', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', inserted: 1, updated: 1, deleted: 1 });
    const { rows } = await sync.pool.query(`select action, key from sync.run_change where run_id = $1 order by action`, [r.runId]);
    expect(rows).toEqual([{ action: 'delete', key: ['6'] }, { action: 'insert', key: ['101'] }, { action: 'update', key: ['5'] }]);
    expect(await history('parents', '5')).toEqual([{ run_id: load, what: `initial load (run ${load})` }, { run_id: r.runId, what: 'update' }]);
    expect(await history('parents', '6')).toEqual([{ run_id: load, what: `initial load (run ${load})` }, { run_id: r.runId, what: 'delete' }]);
    expect(await history('parents', '7')).toEqual([{ run_id: load, what: `initial load (run ${load})` }]);
    expect(await history('parents', '101')).toEqual([{ run_id: r.runId, what: 'insert' }]);
    expect(await history('parents', '999')).toEqual([]);
    // Put parent 6 back for the kids below.
    await source.pool.query(`insert into parents values (6, 'p6')`);
    expect(await engine.run('parents', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', inserted: 1 });
  });

  it('an entity with "history": "keys" records every key of its initial load', async () => {
    const r = await engine.run('keyed', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 100, inserted: 100 });
    expect(await detail(r.runId)).toMatchObject({ direct: true, initial_load: 100, per_key_history: true });
    expect((await sync.pool.query(`select count(*)::int as n from sync.run_change where run_id = $1 and action = 'insert'`, [r.runId])).rows[0].n).toBe(100);
    expect(await history('keyed', '7')).toEqual([{ run_id: r.runId, what: 'insert' }]);
    expect((await sync.pool.query(`select count(*)::int as n from sync.change where run_id = $1 and key is null`, [r.runId])).rows[0].n).toBe(0);
  });

  it('falls back to staging when the source repeats a key: the repeats are quarantined, the rest load', async () => {
    await source.pool.query(`insert into loose values (7, 'again', now())`);
    const r = await engine.run('loose', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'partial', fetched: 101, inserted: 99, quarantined: 2 });
    expect(await detail(r.runId)).not.toHaveProperty('direct');
    expect(await count('loose')).toBe(99);
    const cursor = (await sync.pool.query(`select cursor_value from sync.entity where name = 'loose'`)).rows[0].cursor_value;
    expect(cursor).not.toBeNull();
  });

  it('falls back to staging when a record has no parent: it is quarantined, the rest load', async () => {
    await source.pool.query(`update kids set parent_id = 5000 where id = 3`);
    const r = await engine.run('kids', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'partial', inserted: 99, quarantined: 1 });
    const { rows } = await sync.pool.query('select category, message from sync.run_error where run_id = $1', [r.runId]);
    expect(rows).toEqual([{ category: 'integrity', message: expect.stringMatching(/references a row of parents that does not exist: \{"parent_id": 5000\}/) }]);
  });

  it('a cancelled direct load leaves the target empty', async () => {
    const run = engine.run('slow', { trigger: 'manual' });
    const runId = await until('the run to start', async () =>
      (await sync.pool.query(`select id from sync.run where entity = 'slow' and status = 'running'`)).rows[0]?.id as number | undefined);
    await sync.pool.query('select sync.cancel($1)', [runId]);
    expect((await run).status).toBe('cancelled');
    expect(await count('slow_target')).toBe(0);
  });
});

describe('the duplicate-key search', () => {
  it('is skipped for a source table with a unique index within the key, and kept for one without', async () => {
    const withPk = await engine.run('parents', { trigger: 'manual' });
    expect(await detail(withPk.runId)).toMatchObject({ source_unique_key: true });
    const without = await engine.run('loose', { trigger: 'manual', full: true });
    expect(await detail(without.runId)).not.toHaveProperty('source_unique_key');
    expect(without.quarantined).toBe(2);
  });
});
