import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { contents, itemsDdl, load, scenario, snapshot, type Scenario, type RowState } from './helpers/gen.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const TENANTS = ['a', 'b'];
const KEY = ['tenant', 'id'];
// Any change, however large: the delete guard has tests of its own.
const common = { source: 'src', from: { table: 'items' }, key: KEY, tenant: { column: 'tenant', value: 'a' }, deleteGuard: false as const };

beforeAll(async () => {
  ({ sync, source } = await testDatabases('modes'));
  await source.pool.query(`${itemsDdl()};
    create table members (org text not null, user_id int not null, primary key (org, user_id))`);
  await sync.pool.query(`${itemsDdl()}; ${itemsDdl('items_sd')}; alter table items_sd add column deleted_at timestamptz;
    create table members (org text not null, user_id int not null, deleted_at timestamptz, primary key (org, user_id));
    create table links (org text not null, user_id int not null, primary key (org, user_id))`);
  engine = await engineFor(sync, source, {
    mirror_a: { ...common, target: 'items', mode: 'mirror' },
    upsert_a: { ...common, target: 'items', mode: 'upsert' },
    append_a: { ...common, target: 'items', mode: 'append' },
    soft_a: { ...common, target: 'items_sd', mode: 'soft-delete', softDelete: { column: 'deleted_at' } },
    members: { source: 'src', from: { table: 'members' }, target: 'members', key: ['org', 'user_id'], mode: 'soft-delete',
      softDelete: { column: 'deleted_at' } },
    links: { source: 'src', from: { table: 'members' }, target: 'links', key: ['org', 'user_id'], mode: 'mirror' },
  });
});
afterAll(() => engine.close());

async function reset(sc: Scenario, stamped: (i: number) => boolean = () => false) {
  await source.pool.query('truncate items, members');
  await sync.pool.query('truncate items, items_sd, members');
  await load(source.pool, 'items', sc.source);
  await load(sync.pool, 'items', sc.target);
  await load(sync.pool, 'items_sd', sc.target.map((r, i) => ({ ...r, deleted_at: stamped(i) ? '2001-02-03T04:05:06Z' : null })));
}

const isA = (c: Record<string, string | null>) => c.tenant === 'a';
const notA = (c: Record<string, string | null>) => c.tenant !== 'a';
const values = (r: RowState | undefined) => (r ? Object.fromEntries(Object.entries(r.cols).filter(([c]) => c !== 'deleted_at')) : undefined);
const RUNS = { numRuns: 20 };
const arb = fc.tuple(scenario(TENANTS), fc.integer());

describe('modes (property, composite key, tenant a)', () => {
  it('upsert inserts and updates the tenant\'s rows, never deletes, and leaves rows missing from the source untouched', async () => {
    await fc.assert(fc.asyncProperty(arb, async ([sc]) => {
      await reset(sc);
      const before = await snapshot(sync.pool, 'items', KEY);
      const r = await engine.run('upsert_a', { trigger: 'manual' });
      expect(r).toMatchObject({ status: 'succeeded', deleted: 0 });
      const after = await snapshot(sync.pool, 'items', KEY);
      const src = await snapshot(source.pool, 'items', KEY);
      for (const [k, row] of src) if (isA(row.cols)) expect(after.get(k)?.cols).toEqual(row.cols);
      for (const [k, row] of before) {
        expect(after.has(k)).toBe(true);
        if (!src.has(k) || notA(row.cols)) expect(after.get(k)).toEqual(row);
      }
      expect(after.size).toBe(before.size + r.inserted!);
    }), RUNS);
  });

  it('append inserts only keys the target lacks and never modifies or deletes an existing row', async () => {
    await fc.assert(fc.asyncProperty(arb, async ([sc]) => {
      await reset(sc);
      const before = await snapshot(sync.pool, 'items', KEY);
      const r = await engine.run('append_a', { trigger: 'manual' });
      expect(r).toMatchObject({ status: 'succeeded', updated: 0, deleted: 0 });
      const after = await snapshot(sync.pool, 'items', KEY);
      const src = await snapshot(source.pool, 'items', KEY);
      for (const [k, row] of before) expect(after.get(k)).toEqual(row); // same values, same tuple
      const added = [...after.keys()].filter((k) => !before.has(k)).sort();
      const expected = [...src].filter(([k, row]) => isA(row.cols) && !before.has(k)).map(([k]) => k).sort();
      expect(added).toEqual(expected);
      for (const k of added) expect(after.get(k)?.cols).toEqual(src.get(k)?.cols);
      expect(r.inserted).toBe(added.length);
    }), RUNS);
  });

  it('soft-delete stamps the tenant\'s rows missing from the source, keeps earlier stamps, and clears the stamp of rows in the source', async () => {
    await fc.assert(fc.asyncProperty(arb, async ([sc, mask]) => {
      await reset(sc, (i) => ((mask >>> (i % 31)) & 1) === 1);
      const before = await snapshot(sync.pool, 'items_sd', KEY);
      const r = await engine.run('soft_a', { trigger: 'manual' });
      expect(r.status).toBe('succeeded');
      const after = await snapshot(sync.pool, 'items_sd', KEY);
      const src = await snapshot(source.pool, 'items', KEY);
      expect(after.size).toBe(before.size + r.inserted!);
      let stamped = 0;
      for (const [k, row] of after) {
        const was = before.get(k);
        if (notA(row.cols)) expect(row).toEqual(was);
        else if (src.has(k)) {
          expect(values(row)).toEqual(src.get(k)?.cols);
          expect(row.cols.deleted_at).toBeNull();
        } else if (was?.cols.deleted_at !== null) {
          expect(row).toEqual(was); // already stamped: stamp kept, row not rewritten
        } else {
          expect(row.cols.deleted_at).not.toBeNull();
          expect(values(row)).toEqual(values(was));
          stamped++;
        }
      }
      expect(r.deleted).toBe(stamped);
    }), RUNS);
  });

  it('mirror deletes rows missing from the source only within the tenant', async () => {
    await fc.assert(fc.asyncProperty(arb, async ([sc]) => {
      await reset(sc);
      const before = await snapshot(sync.pool, 'items', KEY);
      const r = await engine.run('mirror_a', { trigger: 'manual' });
      expect(r.status).toBe('succeeded');
      const after = await snapshot(sync.pool, 'items', KEY);
      const src = await snapshot(source.pool, 'items', KEY);
      const gone = [...before.keys()].filter((k) => !after.has(k)).sort();
      expect(gone).toEqual([...before].filter(([k, row]) => isA(row.cols) && !src.has(k)).map(([k]) => k).sort());
      expect(contents(after, notA)).toEqual(contents(before, notA));
      expect(r.deleted).toBe(gone.length);
    }), RUNS);
  });
});

describe('dry run in every mode (property)', () => {
  it('a dry run changes nothing and reports the counts of the real run that follows', async () => {
    await fc.assert(fc.asyncProperty(arb, fc.constantFrom('mirror_a', 'upsert_a', 'append_a', 'soft_a'), async ([sc, mask], name) => {
      await reset(sc, (i) => ((mask >>> (i % 31)) & 1) === 1);
      const table = name === 'soft_a' ? 'items_sd' : 'items';
      const before = await snapshot(sync.pool, table, KEY);
      const dry = await engine.run(name, { trigger: 'manual', dryRun: true });
      expect(dry.status).toBe('succeeded');
      expect(await snapshot(sync.pool, table, KEY)).toEqual(before);
      const real = await engine.run(name, { trigger: 'manual' });
      const counts = (x: typeof real) => [x.fetched, x.inserted, x.updated, x.deleted, x.unchanged, x.quarantined, x.deferred];
      expect(counts(dry)).toEqual(counts(real));
    }), RUNS);
  });
});

describe('soft-delete lifecycle', () => {
  it('stamps a row when it leaves the source and clears the stamp when it comes back', async () => {
    await reset({ source: [], target: [] });
    await source.pool.query(`insert into items (tenant, id, name) values ('a', 1, 'one'), ('a', 2, 'two'), ('b', 1, 'other')`);
    expect(await engine.run('soft_a', { trigger: 'manual' })).toMatchObject({ inserted: 2, deleted: 0 });
    await source.pool.query(`delete from items where tenant = 'a' and id = 2`);
    const gone = await engine.run('soft_a', { trigger: 'manual' });
    expect(gone).toMatchObject({ status: 'succeeded', deleted: 1, updated: 0, unchanged: 1 });
    const stamped = (await sync.pool.query(`select id, deleted_at is not null as deleted from items_sd order by id`)).rows;
    expect(stamped).toEqual([{ id: 1, deleted: false }, { id: 2, deleted: true }]);
    const log = await sync.pool.query(`select action, key, changed from sync.run_change where run_id = $1`, [gone.runId]);
    expect(log.rows).toEqual([{ action: 'delete', key: ['a', '2'], changed: ['deleted_at'] }]);
    await source.pool.query(`insert into items (tenant, id, name) values ('a', 2, 'two again')`);
    const back = await engine.run('soft_a', { trigger: 'manual' });
    expect(back).toMatchObject({ status: 'succeeded', updated: 1, deleted: 0, inserted: 0 });
    expect((await sync.pool.query(`select id, name, deleted_at from items_sd order by id`)).rows).toEqual([
      { id: 1, name: 'one', deleted_at: null }, { id: 2, name: 'two again', deleted_at: null }]);
    const log2 = await sync.pool.query(`select action, changed from sync.run_change where run_id = $1`, [back.runId]);
    expect(log2.rows).toEqual([{ action: 'update', changed: ['name', 'deleted_at'] }]);
  });

  it('soft-delete revives a returning row of a table whose synced columns are all key columns', async () => {
    await source.pool.query(`truncate members; insert into members values ('o', 1), ('o', 2)`);
    await sync.pool.query(`truncate members`);
    expect(await engine.run('members', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', inserted: 2 });
    await source.pool.query(`delete from members where user_id = 2`);
    expect(await engine.run('members', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', deleted: 1 });
    await source.pool.query(`insert into members values ('o', 2)`);
    const dry = await engine.run('members', { trigger: 'manual', dryRun: true });
    const back = await engine.run('members', { trigger: 'manual' });
    expect((await sync.pool.query(`select user_id, deleted_at from members order by user_id`)).rows).toEqual([
      { user_id: 1, deleted_at: null }, { user_id: 2, deleted_at: null }]);
    expect(back).toMatchObject({ status: 'succeeded', updated: 1, unchanged: 1 });
    expect(dry.error).toBeUndefined();
    expect([dry.inserted, dry.updated, dry.deleted]).toEqual([back.inserted, back.updated, back.deleted]);
  });

  it('upsert and append never delete a row of another tenant or of their own', async () => {
    await reset({ source: [], target: [] });
    await sync.pool.query(`insert into items (tenant, id, name) values ('a', 1, 'kept'), ('b', 1, 'other')`);
    for (const name of ['upsert_a', 'append_a']) {
      expect(await engine.run(name, { trigger: 'manual', full: true })).toMatchObject({ status: 'succeeded', deleted: 0, fetched: 0 });
    }
    expect((await sync.pool.query(`select tenant, id, name from items order by tenant`)).rows).toEqual([
      { tenant: 'a', id: 1, name: 'kept' }, { tenant: 'b', id: 1, name: 'other' }]);
  });
});

describe('tables whose synced columns are all key columns', () => {
  it('a mirror dry run reports the counts of the real run that follows', async () => {
    await source.pool.query(`truncate members; insert into members values ('o', 1), ('o', 2)`);
    await sync.pool.query(`truncate links; insert into links values ('o', 2), ('o', 3)`);
    const dry = await engine.run('links', { trigger: 'manual', dryRun: true });
    expect(dry.error).toBeUndefined();
    expect(dry).toMatchObject({ status: 'succeeded', inserted: 1, updated: 0, deleted: 1, unchanged: 1 });
    const real = await engine.run('links', { trigger: 'manual' });
    expect(real).toMatchObject({ status: 'succeeded', inserted: 1, updated: 0, deleted: 1, unchanged: 1 });
    expect((await sync.pool.query('select user_id from links order by user_id')).rows).toEqual([{ user_id: 1 }, { user_id: 2 }]);
  });
});
