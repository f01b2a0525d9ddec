import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from '../helpers/db.js';
import { engineFor } from '../helpers/engine.js';
import type { Engine, RunResult } from '../../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

// A composite key of mixed types (text under the C collation on the source, the
// database's on the target; int; date) and values each side prints its own way.
const SOURCE_DDL = `create table p (k1 text collate "C", k2 int, k3 date, tenant text, a int, b text, j json, n numeric, u timestamptz,
  primary key (k1, k2, k3))`;
const TARGET_DDL = (t: string) => `create table ${t} (k1 text, k2 int, k3 date, tenant text, a int, b varchar(40), j jsonb, n numeric(12, 2),
  u timestamptz, primary key (k1, k2, k3))`;
const COLUMNS = ['k1', 'k2', 'k3', 'tenant', 'a', 'b', 'j', 'n', 'u'] as const;

type Row = { k1: string; k2: number; k3: string; tenant: string; a: number | null; b: string | null; j: string | null; n: string | null; u: string };

const key = (r: Row) => `${r.k1}\u0000${r.k2}\u0000${r.k3}`;
const jsonText = fc.option(fc.tuple(fc.dictionary(fc.constantFrom('a', 'b', 'é', 'a b'), fc.oneof(fc.integer({ min: -9, max: 9 }), fc.constantFrom(null, 'x', ''))),
  fc.constantFrom(0, 1, 3)).map(([o, space]) => JSON.stringify(o, null, space)), { nil: null });
const values = {
  tenant: fc.constantFrom('x', 'y'),
  a: fc.option(fc.integer({ min: -3, max: 3 }), { nil: null }),
  b: fc.option(fc.constantFrom('', ' ', 'b', 'B', 'ä', 'a"b', 'c\\d'), { nil: null }),
  j: jsonText,
  // Up to 3 decimals against the target's 2: the target keeps what COPY rounds to.
  n: fc.option(fc.integer({ min: -20000, max: 20000 }).map((i) => (i / 1000).toString()), { nil: null }),
  // Spread wide, so the largest cursor is one row's, fetched or not.
  u: fc.integer({ min: 0, max: 500_000 }).map((m) => new Date(Date.UTC(2026, 2, 1) + m * 60_000).toISOString()),
};
const row = fc.record({
  k1: fc.constantFrom('a', 'B', 'b', 'ä', '', 'A b'), k2: fc.integer({ min: -2, max: 100 }), k3: fc.constantFrom('2026-01-01', '2025-12-31'),
  ...values,
});
const change = fc.oneof(
  fc.record({ op: fc.constant('update' as const), at: fc.nat(), column: fc.constantFrom('tenant', 'a', 'b', 'j', 'n', 'u') as fc.Arbitrary<keyof typeof values>, seed: fc.nat() }),
  fc.record({ op: fc.constant('insert' as const), row }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat() }),
);
const scenario = fc.record({
  rows: fc.uniqueArray(row, { selector: key, minLength: 150, maxLength: 400 }),
  changes: fc.array(change, { maxLength: 8 }),
  // Rows of another tenant already in the target (keys the source never has): never touched.
  others: fc.uniqueArray(row.map((r) => ({ ...r, k1: `z${r.k1}`, tenant: 'z' })), { selector: key, maxLength: 10 }),
  // The stored cursor forgotten before the compared runs (a cursor column changed, an operator's reset):
  // the cursor then comes from the rows themselves, fetched or not.
  resetCursor: fc.boolean(),
});

async function load(db: TestDatabase, table: string, rows: Row[]) {
  if (rows.length) await db.pool.query(`insert into ${table} select * from json_populate_recordset(null::${table}, $1) on conflict do nothing`, [JSON.stringify(rows)]);
}

/** The change set applied to the source: updates of one column (a value drawn from the seed), inserts, deletes. */
type Change = { op: string; at?: number; column?: keyof typeof values; seed?: number; row?: Row };

async function applyChanges(rows: Row[], changes: Change[]) {
  for (const c of changes) {
    const target = rows.length ? rows[(c.at ?? 0) % rows.length] : undefined;
    if (c.op === 'insert' && c.row) {
      await source.pool.query(`insert into p select * from json_populate_record(null::p, $1) on conflict do nothing`, [JSON.stringify(c.row)]);
    } else if (c.op === 'delete' && target) {
      await source.pool.query('delete from p where k1 = $1 and k2 = $2 and k3 = $3', [target.k1, target.k2, target.k3]);
    } else if (c.op === 'update' && target && c.column) {
      const [value] = fc.sample(values[c.column] as fc.Arbitrary<unknown>, { seed: c.seed, numRuns: 1 });
      await source.pool.query(`update p set ${c.column} = $4 where k1 = $1 and k2 = $2 and k3 = $3`, [target.k1, target.k2, target.k3, value]);
    }
  }
}

const contents = async (table: string) =>
  (await sync.pool.query(`select ${COLUMNS.map((c) => `${c}::text`).join(', ')} from ${table} order by k1 collate "C", k2, k3`)).rows;
const versions = async (table: string) =>
  (await sync.pool.query(`select ctid::text, xmin::text from ${table} order by k1 collate "C", k2, k3`)).rows;
const changesOf = async (runId: number | null) =>
  (await sync.pool.query(`select action, key, changed from sync.run_change where run_id = $1 order by action, key`, [runId])).rows;
const counts = (r: RunResult) => ({ status: r.status, fetched: r.fetched, inserted: r.inserted, updated: r.updated,
  deleted: r.deleted, unchanged: r.unchanged, quarantined: r.quarantined, cursor: r.cursor });
const detailOf = async (runId: number | null) => (await sync.pool.query('select detail from sync.run where id = $1', [runId])).rows[0].detail;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('prop_checksum'));
  await source.pool.query(SOURCE_DDL);
  await sync.pool.query(`${TARGET_DDL('p_chk')}; ${TARGET_DDL('p_full')}`);
  const entity = (target: string, diff: string) => ({
    source: 'src', from: { table: 'p' }, target, key: ['k1', 'k2', 'k3'], mode: 'mirror', diff,
    tenant: { column: 'tenant', value: 'x' }, cursor: { column: 'u' }, deleteGuard: false,
  });
  engine = await engineFor(sync, source, { chk: entity('p_chk', 'auto'), full: entity('p_full', 'off') });
});
afterAll(() => engine.close());

describe('checksum diff (property)', () => {
  it('gives the same target, counts, sync.run_change and cursor as a full fetch, and a second run writes nothing', async () => {
    const paths: string[] = [];
    await fc.assert(fc.asyncProperty(scenario, async ({ rows, changes, others, resetCursor }) => {
      await source.pool.query('truncate p');
      await sync.pool.query('truncate p_chk, p_full');
      await sync.pool.query(`update sync.entity set cursor_value = null where name in ('chk', 'full')`);
      await load(source, 'p', rows);
      await load(sync, 'p_chk', others);
      await load(sync, 'p_full', others);
      for (const e of ['chk', 'full']) expect((await engine.run(e, { trigger: 'manual', full: true })).status).toBe('succeeded');
      await applyChanges(rows, changes);
      if (resetCursor) await sync.pool.query(`update sync.entity set cursor_value = null where name in ('chk', 'full')`);

      const chk = await engine.run('chk', { trigger: 'manual', full: true });
      const full = await engine.run('full', { trigger: 'manual', full: true });
      paths.push((await detailOf(chk.runId)).diff.path);
      expect((await detailOf(full.runId)).diff).toMatchObject({ path: 'full', reason: 'diff is "off" for this entity' });
      expect(counts(chk)).toEqual(counts(full));
      expect(await contents('p_chk')).toEqual(await contents('p_full'));
      expect(await changesOf(chk.runId)).toEqual(await changesOf(full.runId));

      const before = await versions('p_chk');
      const again = await engine.run('chk', { trigger: 'manual', full: true });
      expect(again).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, deleted: 0, fetched: full.fetched });
      expect((await detailOf(again.runId)).diff.path).toBe('checksum');
      expect(await versions('p_chk')).toEqual(before);
    }), { numRuns: 30 });
    // Most change sets are small against their table (a few buckets of 16 or more): the checksum path ran, not its fallback.
    expect(paths.filter((p) => p === 'checksum').length).toBeGreaterThan(paths.length / 2);
  }, 180_000);
});
