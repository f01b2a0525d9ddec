import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from '../helpers/db.js';
import { engineFor } from '../helpers/engine.js';
import { awkwardText, contents, load, snapshot } from '../helpers/gen.js';
import type { Engine } from '../../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const KEY = ['tenant', 'id'];
const ddl = `create table categories (tenant text not null, id int not null, parent_id int, name text, primary key (tenant, id))`;
const fk = `alter table categories add constraint categories_parent_fk foreign key (tenant, parent_id) references categories (tenant, id)`;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('prop_tree'));
  await source.pool.query(ddl);
  await sync.pool.query(`${ddl}; ${fk}`);
  engine = await engineFor(sync, source, {
    categories: { source: 'src', from: { table: 'categories' }, target: 'categories', key: KEY, mode: 'mirror',
      tenant: { column: 'tenant', value: 't' }, deleteGuard: false },
  });
});
afterAll(() => engine.close());

type Node = { tenant: string; id: number; parent_id: number | null; name: string | null };
/** A random forest: each node's parent is an earlier node or none, so there is no cycle. */
const forest = (tenant: string) => fc.uniqueArray(fc.integer({ min: 1, max: 16 }), { maxLength: 12 }).chain((ids) =>
  fc.tuple(fc.array(fc.nat(), { minLength: ids.length, maxLength: ids.length }),
    fc.array(fc.option(awkwardText), { minLength: ids.length, maxLength: ids.length })).map(([picks, names]) =>
    ids.map((id, i): Node => {
      const p = picks[i] % (i + 1);
      return { tenant, id, parent_id: p === i ? null : ids[p], name: names[i] };
    })));

async function reset(source_: Node[], target: Node[]) {
  await source.pool.query('truncate categories');
  await sync.pool.query('truncate categories');
  await load(source.pool, 'categories', source_);
  await load(sync.pool, 'categories', target);
}
const inT = (c: Record<string, string | null>) => c.tenant === 't';

describe('self-referencing table (property)', () => {
  it('a mirror sync converges from any tree to any tree: inserts, re-parenting and deletes of subtrees in one run', async () => {
    await fc.assert(fc.asyncProperty(forest('t'), forest('t'), forest('u'), async (prior, wanted, other) => {
      await reset([...wanted, ...other], [...prior, ...other]);
      const before = await snapshot(sync.pool, 'categories', KEY);
      const r = await engine.run('categories', { trigger: 'manual' });
      expect(r.error).toBeUndefined();
      expect(r).toMatchObject({ status: 'succeeded', deferred: 0 });
      const after = await snapshot(sync.pool, 'categories', KEY);
      expect(contents(after, inT)).toEqual(contents(await snapshot(source.pool, 'categories', KEY), inT));
      expect(contents(after, (c) => !inT(c))).toEqual(contents(before, (c) => !inT(c)));
    }), { numRuns: 30 });
  });
});

describe('self-referencing table', () => {
  it('re-parents an existing node under a node that is new in the same run', async () => {
    await reset(
      [{ tenant: 't', id: 1, parent_id: 2, name: 'child' }, { tenant: 't', id: 2, parent_id: null, name: 'new parent' }],
      [{ tenant: 't', id: 1, parent_id: null, name: 'child' }]);
    const r = await engine.run('categories', { trigger: 'manual' });
    expect(r.error).toBeUndefined();
    expect(r).toMatchObject({ status: 'succeeded', inserted: 1, updated: 1 });
    expect((await sync.pool.query('select id, parent_id from categories order by id')).rows).toEqual([
      { id: 1, parent_id: 2 }, { id: 2, parent_id: null }]);
  });

  it('deletes a whole subtree missing from the source in one run and keeps the rest', async () => {
    await reset(
      [{ tenant: 't', id: 1, parent_id: null, name: 'root' }],
      [{ tenant: 't', id: 1, parent_id: null, name: 'root' }, { tenant: 't', id: 2, parent_id: 1, name: 'a' },
        { tenant: 't', id: 3, parent_id: 2, name: 'b' }, { tenant: 't', id: 4, parent_id: 3, name: 'c' }]);
    const r = await engine.run('categories', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', deleted: 3, deferred: 0, unchanged: 1 });
    expect((await sync.pool.query('select id from categories order by id')).rows).toEqual([{ id: 1 }]);
  });
});
