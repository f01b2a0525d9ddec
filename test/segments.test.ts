import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import type { Engine } from '../src/engine/run.js';
import type { EntityConfig } from '../src/config/schema.js';
import { targetColumns } from '../src/engine/columns.js';
import { checksumColumns, diffSegments, dropSegmentTables, targetHashes, targetScope, targetTable } from '../src/engine/segments.js';
import { postgresSource } from '../src/sources/postgres/index.js';
import { inBuckets } from '../src/sources/buckets.js';
import type { ChecksumReads } from '../src/sources/port.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

async function checksums(name: string): Promise<{ reads: ChecksumReads; columns: string[] }> {
  const ent = await engine.loadEntity(name);
  const plan = await postgresSource.plan({ env: engine, name, def: ent.def, cursor: null, opts: {},
    targetColumns: () => targetColumns(engine, name, ent.def) });
  return { reads: plan.checksums!, columns: plan.targetColumns };
}

/** The keys (as text) in the differing buckets on either side whose row hashes differ: what a verification lists. */
async function differingKeys(name: string, prefix: string) {
  const { reads, columns } = await checksums(name);
  const def = (await engine.loadEntity(name)).def;
  const target = await sync.pool.connect();
  const session = await reads.open({ target, columns: await checksumColumns(target, def, columns) });
  try {
    const cols = await checksumColumns(target, def, columns);
    const diff = await diffSegments({ target, session, def, columns: cols, prefix, estimatedRows: 2000, pool: sync.pool });
    await target.query(`create temp table src_rows (tenant text, id text, _sl_h int8, _sl_r int8)`);
    await session.copyRowHashes(diff.differing, 'src_rows');
    const h = targetHashes(def, cols, session.hash);
    const { rows } = await target.query(
      `select coalesce(s.tenant || '/' || s.id, t.k) as key from src_rows s
         full join (select ${h.keyText.join(` || '/' || `)} as k, ${h.row} as r from ${targetTable(def)} t where ${targetScope(def)} and ${inBuckets(h.key, diff.differing)}) t
           on t.k = s.tenant || '/' || s.id
        where s._sl_r is distinct from t.r order by 1`);
    await target.query('drop table src_rows');
    await dropSegmentTables(target, prefix);
    return { keys: rows.map((r) => r.key), diff };
  } finally {
    await session.close();
    target.release();
  }
}

beforeAll(async () => {
  ({ sync, source } = await testDatabases('segments'));
  // The source prints its values differently (json text, numeric without
  // scale, a text key under another collation): compared as the target prints them.
  await source.pool.query(`
    create table items (tenant text collate "C", id int, price numeric, at timestamptz, doc json, note text, primary key (tenant, id));
    insert into items select 't' || (i % 3), i, i * 1.5, '2026-01-01'::timestamptz + i * interval '1 hour',
                             ('{ "b": ' || i || ',  "a": "x" }')::json, case when i % 7 = 0 then '' when i % 11 = 0 then null else 'n' || i end
                        from generate_series(1, 2000) i`);
  await sync.pool.query(`
    create table items (tenant text, id int, price numeric(12, 2), at timestamptz, doc jsonb, note varchar(20), primary key (tenant, id))`);
  // Equal values of other forms: what sync.merge writes as changes (sync._cmp_expr), a checksum must see.
  for (const db of [source, sync]) {
    const ci = await db.pool.query(`create collation ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)`)
      .then(() => true, () => false);
    await db.pool.query(`
      create table forms (tenant text, id int, n numeric, f float8, j jsonb, ts timestamptz, c text ${ci ? 'collate ci' : ''},
                          primary key (tenant, id));
      insert into forms select 'f', i, 1.5, 0, '{"a": 1.0}', '2026-01-01 00:00:00+00', 'Bob' from generate_series(1, 50) i`);
  }
  await sync.pool.query(`
    insert into items select 't' || (i % 3), i, i * 1.5, '2026-01-01'::timestamptz + i * interval '1 hour',
                             ('{"a": "x", "b": ' || i || '}')::jsonb, case when i % 7 = 0 then '' when i % 11 = 0 then null else 'n' || i end
                        from generate_series(1, 2000) i`);
  engine = await engineFor(sync, source, {
    items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'] },
    items_t1: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'], tenant: { column: 'tenant', value: 't1' } },
    forms: { source: 'src', from: { table: 'forms' }, target: 'forms', key: ['tenant', 'id'] },
  });
});
afterAll(() => engine.close());

describe('checksum segments', () => {
  it('find no differing bucket when source and target hold the same values, however each side prints them', async () => {
    const { keys, diff } = await differingKeys('items', 'seg_a');
    expect(keys).toEqual([]);
    expect(diff.differing.buckets).toEqual([]);
    expect(diff).toMatchObject({ sourceRows: 2000, targetRows: 2000, levels: [{ bits: 8, differing: 0 }] });
  });

  it('find exactly the keys that differ: an update, an insert, a delete, NULL against an empty string', async () => {
    await source.pool.query(`
      update items set price = price + 0.01 where id = 10;
      update items set note = null where id = 14;
      insert into items values ('t2', 5000, 1, now(), '{}', 'new');
      delete from items where id = 33`);
    const { keys, diff } = await differingKeys('items', 'seg_b');
    expect(keys).toEqual(['t0/33', 't1/10', 't2/14', 't2/5000']);
    // Refined until fetching the differing buckets costs less than another level.
    expect(Math.max(diff.differingRows.source, diff.differingRows.target))
      .toBeLessThanOrEqual(Math.max(4 * diff.differing.buckets.length, 0.1 * 2001));
  });

  it('see a change of form only, as sync.merge does: a numeric\'s scale, -0, a jsonb number\'s scale, a microsecond, a letter\'s case under a case-blind collation', async () => {
    expect((await differingKeys('forms', 'seg_f')).keys).toEqual([]);
    await source.pool.query(`
      update forms set n = 1.50 where id = 1;
      update forms set f = '-0' where id = 2;
      update forms set j = '{"a": 1.00}' where id = 3;
      update forms set ts = ts + interval '1 microsecond' where id = 4;
      update forms set c = 'bob' where id = 5`);
    expect((await differingKeys('forms', 'seg_f')).keys).toEqual(['f/1', 'f/2', 'f/3', 'f/4', 'f/5']);
  });

  it('bucket a key in SQL (sync._checksum_key_hash, for the merge\'s delete scope) exactly as targetHashes does, for both hash kinds', async () => {
    await sync.pool.query(`
      create table keyed (n numeric, ts timestamptz, c text, v varchar(3), j jsonb, primary key (n, ts, c, v, j));
      insert into keyed select i / 4.0, '2026-01-01 00:00:00+00'::timestamptz + i * interval '1 minute', 'c' || i, 'v' || (i % 9),
                               jsonb_build_object('i', i) from generate_series(1, 300) i`);
    const def = { key: ['n', 'ts', 'c', 'v', 'j'], target: { schema: 'public', table: 'keyed' } } as unknown as EntityConfig;
    const target = await sync.pool.connect();
    try {
      const cols = await checksumColumns(target, def, def.key);
      for (const kind of ['record', 'text'] as const) {
        const { rows: [{ expr }] } = await target.query(`select sync._checksum_key_hash('keyed'::regclass, $1, 't', $2) as expr`, [def.key, kind]);
        const { rows } = await target.query(`select count(*)::int as n, count(*) filter (where ${targetHashes(def, cols, kind).key} = ${expr})::int as same from keyed t`);
        expect(rows[0]).toEqual({ n: 300, same: 300 });
      }
    } finally {
      target.release();
    }
  });

  it('stay within the tenant', async () => {
    const { keys, diff } = await differingKeys('items_t1', 'seg_c');
    expect(keys).toEqual(['t1/10']);
    expect(diff.sourceRows).toBe(667);
  });

  it('copy the rows of chosen buckets as a fetch stages them', async () => {
    const { reads, columns } = await checksums('items');
    const def = (await engine.loadEntity('items')).def;
    const target = await sync.pool.connect();
    try {
      const cols = await checksumColumns(target, def, columns);
      const session = await reads.open({ target, columns: cols });
      try {
        const diff = await diffSegments({ target, session, def, columns: cols, prefix: 'seg_d', estimatedRows: 2000 });
        await target.query('create temp table fetched (like items)');
        const n = await session.copyRows(diff.differing, 'fetched');
        expect(n).toBe(diff.differingRows.source);
        const { rows } = await target.query(`select tenant, id, price::text, note from fetched where id in (10, 14, 5000) order by id`);
        expect(rows).toEqual([
          { tenant: 't1', id: 10, price: '15.01', note: 'n10' },
          { tenant: 't2', id: 14, price: '21.00', note: null },
          { tenant: 't2', id: 5000, price: '1.00', note: 'new' },
        ]);
      } finally {
        await session.close();
        await dropSegmentTables(target, 'seg_d');
      }
    } finally {
      target.release();
    }
  });
});
