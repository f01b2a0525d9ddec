import { describe, it, expect, beforeAll } from 'vitest';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from '../helpers/db.js';
import { engineFor } from '../helpers/engine.js';
import { awkwardText, contents, load, q, rel, snapshot } from '../helpers/gen.js';

let sync: TestDatabase;
let source: TestDatabase;

const CANARY = `create table public.canary (alive boolean); insert into public.canary values (true)`;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('prop_hostile'));
  await sync.pool.query(CANARY);
  await source.pool.query(CANARY);
});

// Pieces of names that break naive quoting, string building or format().
const PIECES = ['select', 'order', 'user', 'Order', '"', "'", ';', '--', ' ', '/*', '*/', 'ü', '中', '😀', '\\', '.', '%I', '%s',
  '%%', '$1', '$q$', 'drop table canary', ')', '(', ',', 'x'];
const utf8 = (s: string) => Buffer.byteLength(s, 'utf8');
// Postgres keeps 63 bytes of a name; stay within that so names are not truncated.
const ident = fc.array(fc.constantFrom(...PIECES), { minLength: 1, maxLength: 5 }).map((p) => p.join(''))
  .filter((s) => utf8(s) <= 62); // one byte left for the "_" of mapped source names
const entityName = fc.array(fc.constantFrom(...PIECES), { minLength: 1, maxLength: 8 }).map((p) => p.join(''))
  .filter((s) => s.length <= 100);
const tenantValue = fc.oneof(awkwardText, fc.constantFrom("'; drop table canary; --", "\\'", "E'\\x00'", '$$'));

const names = fc.uniqueArray(ident, { minLength: 6, maxLength: 6 });

const canaryAlive = async (db: TestDatabase) => (await db.pool.query('select alive from public.canary')).rows;
let created: { schema: string }[] = [];

async function dropCreated() {
  for (const { schema } of created) {
    await sync.pool.query(`drop schema if exists ${q(schema)} cascade`);
    await source.pool.query(`drop schema if exists ${q(schema)} cascade`);
  }
  created = [];
}

describe('hostile identifiers and values (property)', () => {
  it('schema, table, column, entity names and tenant values cannot inject SQL: syncs converge and the canary survives', async () => {
    await fc.assert(fc.asyncProperty(
      names, entityName, tenantValue, fc.boolean(), fc.constantFrom('mirror', 'upsert', 'soft-delete'),
      fc.uniqueArray(fc.record({ id: fc.integer({ min: 1, max: 9 }), mine: fc.boolean(), a: fc.option(awkwardText), b: fc.option(awkwardText) }),
        { selector: (r) => `${r.id}/${r.mine}`, maxLength: 6 }),
      fc.uniqueArray(fc.record({ id: fc.integer({ min: 1, max: 9 }), mine: fc.boolean(), a: fc.option(awkwardText), b: fc.option(awkwardText) }),
        { selector: (r) => `${r.id}/${r.mine}`, maxLength: 6 }),
      async ([schema, table, tenantCol, idCol, colA, colB], entity, tenant, mapped, mode, srcRows, tgtRows) => {
        await dropCreated();
        created.push({ schema });
        // The source may name its columns differently (a {target: source} mapping).
        const sc = mapped ? { t: `${tenantCol}_`, i: `${idCol}_`, a: `${colA}_`, b: `${colB}_` } : { t: tenantCol, i: idCol, a: colA, b: colB };
        const sd = mode === 'soft-delete' ? `, ${q('deleted at; "x"')} timestamptz` : '';
        await source.pool.query(`create schema ${q(schema)}; create table ${rel(schema, table)} (${q(sc.t)} text not null,
          ${q(sc.i)} int not null, ${q(sc.a)} text, ${q(sc.b)} text, primary key (${q(sc.t)}, ${q(sc.i)}))`);
        await sync.pool.query(`create schema ${q(schema)}; create table ${rel(schema, table)} (${q(tenantCol)} text not null,
          ${q(idCol)} int not null, ${q(colA)} text, ${q(colB)} text ${sd}, primary key (${q(tenantCol)}, ${q(idCol)}))`);
        const row = (r: { id: number; mine: boolean; a: string | null; b: string | null }, c: typeof sc) =>
          ({ [c.t]: r.mine ? tenant : `${tenant}'other`, [c.i]: r.id, [c.a]: r.a, [c.b]: r.b });
        await load(source.pool, rel(schema, table), srcRows.map((r) => row(r, sc)));
        await load(sync.pool, rel(schema, table), tgtRows.map((r) => row(r, { t: tenantCol, i: idCol, a: colA, b: colB })));

        const engine = await engineFor(sync, source, {
          [entity]: {
            source: 'src', from: { table: { schema, table } }, target: { schema, table }, key: [tenantCol, idCol], mode, deleteGuard: false,
            columns: mapped ? { [tenantCol]: sc.t, [idCol]: sc.i, [colA]: sc.a, [colB]: sc.b } : [tenantCol, idCol, colA, colB],
            tenant: { column: tenantCol, value: tenant },
            ...(mode === 'soft-delete' ? { softDelete: { column: 'deleted at; "x"' } } : {}),
          },
        });
        try {
          const before = await snapshot(sync.pool, rel(schema, table), [tenantCol, idCol]);
          const first = await engine.run(entity, { trigger: 'manual' });
          expect(first.error).toBeUndefined();
          expect(first.status).toBe('succeeded');
          const second = await engine.run(entity, { trigger: 'manual' });
          expect(second).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, deleted: 0 });
          const after = await snapshot(sync.pool, rel(schema, table), [tenantCol, idCol]);
          const mine = (c: Record<string, string | null>) => c[tenantCol] === tenant;
          const values = (m: typeof after, f: (c: Record<string, string | null>) => boolean, c: typeof sc) => Object.fromEntries(
            Object.entries(contents(m, f)).map(([k, v]) => [k, [v[c.t], v[c.i], v[c.a], v[c.b]]]));
          const srcSnap = await snapshot(source.pool, rel(schema, table), [sc.t, sc.i]);
          expect(values(after, mine, { t: tenantCol, i: idCol, a: colA, b: colB }))
            .toEqual(mode === 'mirror' ? values(srcSnap, (c) => c[sc.t] === tenant, sc)
              : { ...values(before, mine, { t: tenantCol, i: idCol, a: colA, b: colB }), ...values(srcSnap, (c) => c[sc.t] === tenant, sc) });
          expect(contents(after, (c) => !mine(c))).toEqual(contents(before, (c) => !mine(c)));
          const recorded = await sync.pool.query('select name, tenant_value from sync.entity');
          expect(recorded.rows).toEqual([{ name: entity, tenant_value: tenant }]);
          const runs = await sync.pool.query('select count(*)::int as n from sync.run where entity = $1 and id in ($2, $3)', [entity, first.runId, second.runId]);
          expect(runs.rows[0].n).toBe(2);
        } finally {
          await engine.close();
        }
        expect(await canaryAlive(sync)).toEqual([{ alive: true }]);
        expect(await canaryAlive(source)).toEqual([{ alive: true }]);
      }), { numRuns: 25 });
    await dropCreated();
  });
});

describe('column names the merge uses internally', () => {
  for (const col of ['n', 'k', 's', 't', 'c', 'd', 'x', 'bad', 'dup']) {
    it(`a table with a column named "${col}" syncs, including a source with a duplicate key`, async () => {
      const ddl = `drop table if exists internal_names; create table internal_names (id int, ${q(col)} text)`;
      await source.pool.query(`${ddl}; insert into internal_names values (1, 'one'), (2, 'two'), (2, 'dup')`);
      await sync.pool.query(`${ddl.replace('(id int,', '(id int primary key,')}; insert into internal_names values (3, 'stale')`);
      const engine = await engineFor(sync, source, {
        internal: { source: 'src', from: { table: 'internal_names' }, target: 'internal_names', key: ['id'], deleteGuard: false },
      });
      try {
        const r = await engine.run('internal', { trigger: 'manual' });
        expect(r.error).toBeUndefined();
        expect(r).toMatchObject({ status: 'partial', inserted: 1, deleted: 1, quarantined: 2 });
        expect((await sync.pool.query(`select id, ${q(col)} as v from internal_names order by id`)).rows).toEqual([{ id: 1, v: 'one' }]);
      } finally {
        await engine.close();
      }
    });
  }
});
