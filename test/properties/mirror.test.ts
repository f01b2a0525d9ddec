import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from '../helpers/db.js';
import { engineFor } from '../helpers/engine.js';
import { contents, diff, itemsDdl, load, runChanges, scenario, snapshot, type Scenario } from '../helpers/gen.js';
import type { Engine } from '../../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

// Tenant values that need quoting; the entity of tenant i is items_<i>.
const TENANTS = ['a', "o'brien", 'x"; drop table items; --'];
const KEY = ['tenant', 'id'];

beforeAll(async () => {
  ({ sync, source } = await testDatabases('prop_mirror'));
  await source.pool.query(itemsDdl());
  await sync.pool.query(itemsDdl());
  const forms = `create extension if not exists citext;
    create table forms (id int primary key, amount numeric, doc jsonb, email citext, ratio float8)`;
  await source.pool.query(forms);
  await sync.pool.query(forms);
  engine = await engineFor(sync, source, Object.fromEntries(TENANTS.map((t, i): [string, object] => [`items_${i}`, {
    source: 'src', from: { table: 'items' }, target: 'items', key: KEY, mode: 'mirror',
    tenant: { column: 'tenant', value: t }, deleteGuard: false, // any change, however large: the guard has tests of its own
  }]).concat([['forms', { source: 'src', from: { table: 'forms' }, target: 'forms', key: ['id'], mode: 'mirror', deleteGuard: false }]])));
});
afterAll(() => engine.close());

async function reset(sc: Scenario) {
  await source.pool.query('truncate items');
  await sync.pool.query('truncate items; truncate sync.run_change');
  await load(source.pool, 'items', sc.source);
  await load(sync.pool, 'items', sc.target);
}

const RUNS = { numRuns: 25 };
const inTenant = (t: string) => (c: Record<string, string | null>) => c.tenant === t;
const notInTenant = (t: string) => (c: Record<string, string | null>) => c.tenant !== t;

describe('mirror sync (property)', () => {
  it('makes the tenant\'s target rows equal the source rows exactly and leaves other tenants\' rows untouched', async () => {
    await fc.assert(fc.asyncProperty(scenario(TENANTS), fc.integer({ min: 0, max: TENANTS.length - 1 }), async (sc, ti) => {
      await reset(sc);
      const tenant = TENANTS[ti];
      const before = await snapshot(sync.pool, 'items', KEY);
      const r = await engine.run(`items_${ti}`, { trigger: 'manual' });
      expect(r.error).toBeUndefined();
      expect(r.status).toBe('succeeded');
      const after = await snapshot(sync.pool, 'items', KEY);
      const src = await snapshot(source.pool, 'items', KEY);
      expect(contents(after, inTenant(tenant))).toEqual(contents(src, inTenant(tenant)));
      expect(contents(after, notInTenant(tenant))).toEqual(contents(before, notInTenant(tenant)));
      // Other tenants' rows are not even rewritten with the same values.
      for (const [k, row] of before) {
        if (row.cols.tenant !== tenant) expect(after.get(k)?.version).toBe(row.version);
      }
    }), RUNS);
  });

  it('reports counts equal to the real diff, accounts for every fetched row and logs exactly the changed keys and columns', async () => {
    await fc.assert(fc.asyncProperty(scenario(TENANTS), fc.integer({ min: 0, max: TENANTS.length - 1 }), async (sc, ti) => {
      await reset(sc);
      const tenant = TENANTS[ti];
      const before = await snapshot(sync.pool, 'items', KEY);
      const r = await engine.run(`items_${ti}`, { trigger: 'manual' });
      expect(r.status).toBe('succeeded');
      const after = await snapshot(sync.pool, 'items', KEY);
      const d = diff(before, after);
      expect({ inserted: r.inserted, updated: r.updated, deleted: r.deleted }).toEqual(
        { inserted: d.inserted.length, updated: d.updated.size, deleted: d.deleted.length });
      expect(r.fetched).toBe(sc.source.filter((s) => s.tenant === tenant).length);
      expect(r.fetched).toBe(r.inserted! + r.updated! + r.unchanged! + r.quarantined!);
      expect(r.quarantined).toBe(0);
      const logged = await runChanges(sync.pool, r.runId, KEY);
      // An initial load into an empty target is logged as one entry of N rows, no key (sync.run.detail.initial_load).
      const { rows: [{ detail }] } = await sync.pool.query('select detail from sync.run where id = $1', [r.runId]);
      if (detail.per_key_history === false) expect(detail.initial_load).toBe(d.inserted.length);
      expect(logged.inserted).toEqual(detail.per_key_history === false ? [] : d.inserted);
      expect(logged.deleted).toEqual(d.deleted);
      expect(Object.fromEntries(logged.updated)).toEqual(Object.fromEntries(d.updated));
      const row = (await sync.pool.query('select fetched, inserted, updated, deleted, unchanged, status from sync.run where id = $1', [r.runId])).rows[0];
      expect(row).toEqual({ fetched: r.fetched, inserted: r.inserted, updated: r.updated, deleted: r.deleted, unchanged: r.unchanged, status: 'succeeded' });
      const staging = await sync.pool.query(`select count(*)::int as n from pg_tables where schemaname = 'sync_staging'`);
      expect(staging.rows[0].n).toBe(0);
    }), RUNS);
  });

  it('a dry run reports the counts of the real run that follows and leaves the target and the change log untouched', async () => {
    await fc.assert(fc.asyncProperty(scenario(TENANTS), fc.integer({ min: 0, max: TENANTS.length - 1 }), async (sc, ti) => {
      await reset(sc);
      const before = await snapshot(sync.pool, 'items', KEY);
      const dry = await engine.run(`items_${ti}`, { trigger: 'manual', dryRun: true });
      expect(dry.status).toBe('succeeded');
      const afterDry = await snapshot(sync.pool, 'items', KEY);
      expect(afterDry).toEqual(before); // values and tuple identities
      const logged = await sync.pool.query('select count(*)::int as n from sync.run_change where run_id = $1', [dry.runId]);
      expect(logged.rows[0].n).toBe(0);
      const real = await engine.run(`items_${ti}`, { trigger: 'manual' });
      const counts = (x: typeof real) => [x.fetched, x.inserted, x.updated, x.deleted, x.unchanged, x.quarantined, x.deferred];
      expect(counts(dry)).toEqual(counts(real));
      // The sample names real changes: every sampled key is one the real run logged.
      const changes = await runChanges(sync.pool, real.runId, KEY);
      // An initial load into an empty target logs no key (sync.run.detail.initial_load): its inserts are the target's rows.
      const { rows: [{ detail }] } = await sync.pool.query('select detail from sync.run where id = $1', [real.runId]);
      const inserted = detail.per_key_history === false ? [...(await snapshot(sync.pool, 'items', KEY)).keys()] : changes.inserted;
      for (const s of dry.sample ?? []) {
        const k = JSON.stringify(KEY.map((c) => String(s.key[c])));
        if (s.action === 'insert') expect(inserted).toContain(k);
        if (s.action === 'delete') expect(changes.deleted).toContain(k);
        if (s.action === 'update') expect([...(s.changed ?? [])].sort()).toEqual(changes.updated.get(k));
      }
    }), RUNS);
  });
});

describe('mirror sync of values that compare equal but are not the same', () => {
  it('copies the source\'s form of numeric scale, jsonb numbers, citext case and float zero sign', async () => {
    await source.pool.query(`truncate forms; insert into forms values (1, 1.5, '{"v": 1.0}', 'bob@example.com', '-0')`);
    await sync.pool.query(`truncate forms; insert into forms values (1, 1.50, '{"v": 1}', 'Bob@Example.com', '0')`);
    const r = await engine.run('forms', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', updated: 1, unchanged: 0 });
    const text = `select amount::text, doc::text, email::text, ratio::text from forms`;
    expect((await sync.pool.query(text)).rows).toEqual((await source.pool.query(text)).rows);
    const { rows } = await sync.pool.query('select changed from sync.run_change where run_id = $1', [r.runId]);
    expect(rows).toEqual([{ changed: ['amount', 'doc', 'email', 'ratio'] }]);
  });
});
