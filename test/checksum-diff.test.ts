import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { Engine } from '../src/engine/run.js';
import { makePool } from '../src/db/pool.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const run = async (entity: string) => {
  const r = await engine.run(entity, { trigger: 'manual' });
  const { rows: [row] } = await sync.pool.query('select detail, phases, cursor_after from sync.run where id = $1', [r.runId]);
  return { ...r, detail: row.detail, phases: row.phases, cursorAfter: row.cursor_after };
};
/** Every row with its physical version: unchanged rows keep ctid and xmin. */
const versions = async (table: string, where = 'true') =>
  (await sync.pool.query(`select ctid::text as ctid, xmin::text as xmin, t::text as row from ${table} t where ${where} order by t::text`)).rows;
const changes = async (runId: number | null) =>
  (await sync.pool.query(`select action, key, changed from sync.run_change where run_id = $1 order by action, key`, [runId])).rows;
/** The rows as the target prints them, on the target and (cast to the target's types) on the source. */
const targetItems = async () => (await sync.pool.query(
  `select tenant, id, price::text, at::text, doc::text, note from items order by tenant collate "C", id`)).rows;
const sourceItems = async () => (await source.pool.query(
  `select tenant, id, price::numeric(12, 2)::text as price, at::text, doc::jsonb::text as doc, note from items order by tenant collate "C", id`)).rows;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('checksum_diff'));
  await source.pool.query(`set timezone = 'UTC'`);
  // The source prints differently from the target (json text, numeric
  // without scale, text keys under the C collation): compared as the target prints them.
  await source.pool.query(`
    create table items (tenant text collate "C", id int, price numeric, at timestamptz, doc json, note text, primary key (tenant, id));
    insert into items select (array['a', 'B', 'b', 'ä'])[1 + i % 4], i, i * 1.5, '2026-01-01 00:00:00+00'::timestamptz + i * interval '1 hour',
                             ('{ "b": ' || i || ',  "a": "x" }')::json, case when i % 7 = 0 then '' when i % 11 = 0 then null else 'n' || i end
                        from generate_series(1, 3000) i;
    create table scoped (tenant text, id int, name text, primary key (tenant, id));
    insert into scoped select 't' || (i % 3), i, 'n' || i from generate_series(1, 900) i;
    create table casty (id int primary key, qty text);
    insert into casty select i, i::text from generate_series(1, 50) i;
    create table ruled (id int primary key, name text);
    insert into ruled select i, 'r' || i from generate_series(1, 50) i;
    create table events (at timestamptz, seq int, v text, primary key (at, seq));
    insert into events select '2026-03-01 00:30:00+00'::timestamptz + i * interval '37 minutes', i % 5, 'v' || i from generate_series(1, 2000) i`);
  await sync.pool.query(`
    create table items (tenant text, id int, price numeric(12, 2), at timestamptz, doc jsonb, note varchar(40), primary key (tenant, id));
    create table scoped (tenant text, id int, name text, primary key (tenant, id));
    insert into scoped select 't9', i, 'other' || i from generate_series(1, 100) i;
    create table casty (id int primary key, qty int);
    create table ruled (id int primary key, name text);
    create table events (at timestamptz, seq int, v text, primary key (at, seq))`);
  engine = await engineFor(sync, source, {
    items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'] },
    scoped: { source: 'src', from: { table: 'scoped' }, target: 'scoped', key: ['tenant', 'id'], tenant: { column: 'tenant', value: 't1' } },
    casty: { source: 'src', from: { table: 'casty' }, target: 'casty', key: ['id'] },
    ruled: { source: 'src', from: { table: 'ruled' }, target: 'ruled', key: ['id'], validate: { required: ['name'] } },
    events: { source: 'src', from: { table: 'events' }, target: 'events', key: ['at', 'seq'] },
  });
});
afterAll(() => engine.close());

describe('a re-sync of a postgres source by checksums', () => {
  it('the first load fetches everything, and says why', async () => {
    const r = await run('items');
    expect(r).toMatchObject({ status: 'succeeded', inserted: 3000 });
    expect(r.detail.diff).toMatchObject({ path: 'full', reason: expect.stringMatching(/first load/) });
    expect(await targetItems()).toEqual(await sourceItems());
  });

  it('an unchanged re-sync takes the checksum path, writes no tuple and counts every record as unchanged', async () => {
    const before = await versions('items');
    const r = await run('items');
    expect(r).toMatchObject({ status: 'succeeded', fetched: 3000, inserted: 0, updated: 0, deleted: 0, unchanged: 3000 });
    expect(r.detail.diff).toMatchObject({ path: 'checksum', rows_compared: 3000, target_rows: 3000, rows_fetched: 0,
      levels: [{ differing: 0 }] });
    expect(r.phases).toHaveProperty('diff');
    expect(await versions('items')).toEqual(before);
    expect(await changes(r.runId)).toEqual([]);
    expect((await sync.pool.query(`select count(*)::int as n from pg_tables where schemaname = 'sync_staging'`)).rows[0].n).toBe(0);
  });

  it('a change set lands with exact counts and sync.run_change, fetching only differing buckets', async () => {
    await source.pool.query(`
      update items set price = price + 0.01 where id = 10;
      update items set note = null where id = 14;          -- '' becomes NULL
      update items set note = '' where id = 22;            -- NULL becomes ''
      update items set doc = '{"a":"x","b":17}' where id = 17;   -- same jsonb, other text: unchanged
      update items set price = 30.000 where id = 20;       -- same value at the target's scale: unchanged
      insert into items values ('B', 5000, 1, '2026-02-01 00:00:00+00', '{}', 'new');
      delete from items where id = 33`);
    const r = await run('items');
    expect(r).toMatchObject({ status: 'succeeded', fetched: 3000, inserted: 1, updated: 3, deleted: 1, unchanged: 2996 });
    expect(r.detail.diff.path).toBe('checksum');
    expect(r.detail.diff.rows_fetched).toBeLessThan(100);
    expect(await changes(r.runId)).toEqual([
      { action: 'delete', key: ['B', '33'], changed: null },
      { action: 'insert', key: ['B', '5000'], changed: null },
      { action: 'update', key: ['b', '10'], changed: ['price'] },
      { action: 'update', key: ['b', '14'], changed: ['note'] },
      { action: 'update', key: ['b', '22'], changed: ['note'] },
    ]);
    expect(await targetItems()).toEqual(await sourceItems());
  });

  it('stays within the tenant: other tenants\' target rows untouched, other tenants\' source rows ignored', async () => {
    expect(await run('scoped')).toMatchObject({ status: 'succeeded', inserted: 300 });
    const others = await versions('scoped', `tenant = 't9'`);
    await source.pool.query(`update scoped set name = 'changed' where id in (1, 2, 3, 4);
                              delete from scoped where id in (7, 8, 9)`);
    const r = await run('scoped');
    expect(r).toMatchObject({ status: 'succeeded', fetched: 299, inserted: 0, updated: 2, deleted: 1, unchanged: 297 });
    expect(r.detail.diff).toMatchObject({ path: 'checksum', rows_compared: 299, target_rows: 300 });
    expect(await changes(r.runId)).toEqual([
      { action: 'delete', key: ['t1', '7'], changed: null },
      { action: 'update', key: ['t1', '1'], changed: ['name'] },
      { action: 'update', key: ['t1', '4'], changed: ['name'] },
    ]);
    expect(await versions('scoped', `tenant = 't9'`)).toEqual(others);
    expect((await sync.pool.query(`select count(*)::int as n from scoped where tenant <> 't9'`)).rows[0].n).toBe(299);
  });

  it('falls back to the full fetch, with the reason, when a value does not cast to the target type', async () => {
    expect(await run('casty')).toMatchObject({ status: 'succeeded', inserted: 50 });
    await source.pool.query(`update casty set qty = 'many' where id = 5`);
    const r = await run('casty');
    expect(r.detail.diff).toMatchObject({ path: 'full', reason: expect.stringMatching(/checksum diff failed: .*invalid input syntax for type integer/) });
    // The full fetch then meets the value as it always did: COPY refuses it.
    expect(r).toMatchObject({ status: 'failed', error: expect.stringMatching(/invalid input syntax for type integer: "many"/) });
    expect((await sync.pool.query(`select count(*)::int as n from pg_tables where schemaname = 'sync_staging'`)).rows[0].n).toBe(0);
  });

  it('fetches everything for an entity with validate rules', async () => {
    await run('ruled');
    const r = await run('ruled');
    expect(r.detail.diff).toMatchObject({ path: 'full', reason: 'validate rules judge every record' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 50, unchanged: 50 });
  });

  it('judges buckets the same on a target whose sessions print timestamps otherwise (TimeZone, DateStyle): a timestamptz key deletes only what the source lost', async () => {
    // Sessions on the target in another zone and date style, as a server's own defaults may be.
    const pool = makePool(sync.url, { max: 2, options: '-c timezone=Pacific/Chatham -c datestyle=SQL,DMY -c extra_float_digits=0' });
    const local = new Engine(pool, sync.url, engine.config);
    try {
      expect((await local.run('events', { trigger: 'manual' })).status).toBe('succeeded');
      const before = await versions('events');
      await source.pool.query(`delete from events where v = 'v100'; update events set v = 'changed' where v = 'v200'`);
      const r = await local.run('events', { trigger: 'manual' });
      const { rows: [row] } = await sync.pool.query('select detail from sync.run where id = $1', [r.runId]);
      expect(row.detail.diff).toMatchObject({ path: 'checksum' });
      expect(r).toMatchObject({ status: 'succeeded', fetched: 1999, inserted: 0, updated: 1, deleted: 1, unchanged: 1998 });
      const after = await versions('events');
      expect(after.length).toBe(1999);
      expect(after.filter((a) => !before.some((b) => b.ctid === a.ctid && b.xmin === a.xmin)).map((a) => a.row)).toEqual([
        expect.stringContaining('changed'),
      ]);
    } finally {
      await local.close();
      await pool.end();
    }
  });
});
