/**
 * What a sync writes, measured by the server rather than by the engine's own
 * report: tuple identities (xmin, ctid) of every target row, and the
 * cumulative statistics n_tup_ins + n_tup_upd + n_tup_del of the target and
 * source tables.
 *
 * Statistics are flushed by each backend asynchronously (PostgreSQL 15+: at
 * most once a second while idle, and always when the backend exits), so a
 * counter read right after a run may miss that run's writes. Every write
 * here therefore happens on a pool that is ended and whose backends are seen
 * gone from pg_stat_activity before counters are read (helpers/gen.ts,
 * withOwnPool / withFlushedEngine): exact and sleep-free. A control assertion
 * (the first run's counter delta equals its reported changes) proves the
 * counters do see the engine's writes, so "did not move" is meaningful.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from '../helpers/db.js';
import { engineFor } from '../helpers/engine.js';
import {
  checksum, itemsDdl, load, scenario, snapshot, tuplesWritten, withFlushedEngine, withOwnPool, type Scenario,
} from '../helpers/gen.js';

let sync: TestDatabase;
let source: TestDatabase;

const TENANTS = ['a', 'b', "c'"];
const KEY = ['tenant', 'id'];
const ENTITIES: Record<string, unknown> = {
  ...Object.fromEntries(TENANTS.map((t, i) => [`mirror_${i}`, {
    source: 'src', from: { table: 'items' }, target: 'items', key: KEY, mode: 'mirror', tenant: { column: 'tenant', value: t },
    deleteGuard: false, // any change, however large: the delete guard has tests of its own
  }])),
  upsert_all: { source: 'src', from: { table: 'items' }, target: 'items', key: KEY, mode: 'upsert' },
  append_all: { source: 'src', from: { table: 'items' }, target: 'items', key: KEY, mode: 'append' },
  hostile_query: { source: 'src', from: { query: 'select * from items where public.write_something()' }, target: 'items', key: KEY },
};
const NAMES = [...TENANTS.map((_, i) => `mirror_${i}`), 'upsert_all', 'append_all'];

beforeAll(async () => {
  ({ sync, source } = await testDatabases('prop_writes'));
  await source.pool.query(`${itemsDdl()}; create table canary (n int);
    create function write_something() returns boolean language sql volatile as 'insert into canary values (1) returning true'`);
  await sync.pool.query(itemsDdl());
  // Only applies the config: every run below uses withFlushedEngine.
  const applied = await engineFor(sync, source, ENTITIES);
  await applied.close();
});

async function reset(sc: Scenario) {
  await withOwnPool(source, async (p) => { await p.query('truncate items'); await load(p, 'items', sc.source); });
  await withOwnPool(sync, async (p) => { await p.query('truncate items'); await load(p, 'items', sc.target); });
}

const sourceWrites = async () => {
  const { rows } = await source.pool.query(`select pg_stat_clear_snapshot()`).then(() => source.pool.query(
    `select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8 as n, count(*)::int as tables from pg_stat_user_tables`));
  return rows[0];
};
const sourceRelations = async () => (await source.pool.query(
  `select string_agg(c.oid::regclass::text, ',' order by c.oid) as r from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')`)).rows[0].r;

describe('writes (property)', () => {
  it('a second sync of unchanged data writes no tuple and reports nothing inserted, updated or deleted', async () => {
    await fc.assert(fc.asyncProperty(scenario(TENANTS), fc.constantFrom(...NAMES), async (sc, name) => {
      await reset(sc);
      const w0 = await tuplesWritten(sync.pool, 'items');
      const first = await withFlushedEngine(sync, source, ENTITIES, (e) => e.run(name, { trigger: 'manual' }));
      expect(first.status).toBe('succeeded');
      const w1 = await tuplesWritten(sync.pool, 'items');
      // Control: the counters see exactly the first run's writes.
      expect(w1 - w0).toBe(first.inserted! + first.updated! + first.deleted!);
      const before = await snapshot(sync.pool, 'items', KEY);

      const second = await withFlushedEngine(sync, source, ENTITIES, (e) => e.run(name, { trigger: 'manual' }));
      expect(second).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, deleted: 0, quarantined: 0, unchanged: second.fetched });
      expect(second.fetched).toBe(first.fetched);
      expect(await tuplesWritten(sync.pool, 'items')).toBe(w1);
      expect(await snapshot(sync.pool, 'items', KEY)).toEqual(before); // same values and same xmin/ctid
      const logged = await sync.pool.query('select count(*)::int as n from sync.run_change where run_id = $1', [second.runId]);
      expect(logged.rows[0].n).toBe(0);
    }), { numRuns: 15 });
  });

  it('the source database is never written by a sync, a dry run or a full run', async () => {
    await fc.assert(fc.asyncProperty(scenario(TENANTS), fc.constantFrom(...NAMES), fc.boolean(), async (sc, name, dryRun) => {
      await reset(sc);
      const before = { rows: await checksum(source.pool, 'items'), stats: await sourceWrites(), relations: await sourceRelations() };
      const results = await withFlushedEngine(sync, source, ENTITIES, async (e) => [
        await e.run(name, { trigger: 'manual', dryRun }),
        await e.run(name, { trigger: 'manual', full: true }),
      ]);
      expect(results.map((r) => r.status)).toEqual(['succeeded', 'succeeded']);
      const after = { rows: await checksum(source.pool, 'items'), stats: await sourceWrites(), relations: await sourceRelations() };
      expect(after).toEqual(before);
    }), { numRuns: 15 });
  });

  it('a source query that tries to write fails in the read-only transaction and writes nothing', async () => {
    await reset({ source: [{ tenant: 'a', id: 1, name: 'x', qty: 1, price: null, at: null, data: null, flag: null }], target: [] });
    const r = await withFlushedEngine(sync, source, ENTITIES, (e) => e.run('hostile_query', { trigger: 'manual' }));
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/read-only transaction/);
    expect((await source.pool.query('select count(*)::int as n from canary')).rows[0].n).toBe(0);
    expect((await sync.pool.query('select count(*)::int as n from items')).rows[0].n).toBe(0);
  });
});
