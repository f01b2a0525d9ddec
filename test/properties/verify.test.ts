import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { testDatabase, type TestDatabase } from '../helpers/db.js';
import { engineFor } from '../helpers/engine.js';
import { awkwardText } from '../helpers/gen.js';
import type { Engine } from '../../src/engine/run.js';
import { verifyEntity } from '../../src/engine/verification.js';

// The source is a schema of the same database: the keys that differ can then
// be computed in SQL, by a full join of the two tables, and compared with
// what the verification (checksums, buckets, a copy of key hashes) lists.
let db: TestDatabase;
let engine: Engine;

const DDL = (t: string) => `create table ${t} (tenant text, code text, n int, d date, name text, amount numeric, doc jsonb,
  primary key (tenant, code, n, d))`;

type Row = { tenant: string; code: string; n: number; d: string; name: string | null; amount: string | null; doc: unknown };

const key = fc.record({
  tenant: fc.constantFrom('a', 'b'),
  code: awkwardText,
  n: fc.integer({ min: -3, max: 3 }),
  d: fc.integer({ min: 0, max: 3 }).map((i) => `2026-01-0${i + 1}`),
});
const values = fc.record({
  name: fc.option(awkwardText, { freq: 3 }),
  // Scale matters: 1.5 and 1.50 print differently, and a full fetch would rewrite one as the other.
  amount: fc.option(fc.constantFrom('0', '1.5', '1.50', '-2', '1e3', '123456789.000001'), { freq: 3 }),
  doc: fc.option(fc.constantFrom({}, { a: 1 }, { b: [1, 2] }, 'text', 0, [null]), { freq: 3 }),
});
// What happens to a row of the target on the source.
const change = fc.oneof(
  { weight: 4, arbitrary: fc.constant({ kind: 'same' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'deleted' as const }) },
  { weight: 2, arbitrary: values.map((v) => ({ kind: 'updated' as const, v })) },
  { weight: 1, arbitrary: fc.record({ col: fc.constantFrom('name', 'amount', 'doc'), v: values }).map((x) => ({ kind: 'one' as const, ...x })) },
);
const scenario = fc.record({
  target: fc.uniqueArray(fc.record({ k: key, v: values, c: change }), { selector: (r) => JSON.stringify(r.k), maxLength: 40 }),
  inserted: fc.uniqueArray(fc.record({ k: key, v: values }), { selector: (r) => JSON.stringify(r.k), maxLength: 8 }),
  // With a row estimate the comparison may judge that most rows differ (every filler row changed) and list them all at once.
  analyzed: fc.boolean(),
  fillerChanged: fc.boolean(),
});

async function load(table: string, rows: Row[]) {
  await db.pool.query(`insert into ${table} select * from jsonb_populate_recordset(null::${table}, $1::jsonb)`, [JSON.stringify(rows)]);
}

beforeAll(async () => {
  db = await testDatabase('prop_verify');
  await db.pool.query(`create schema src; ${DDL('src.t')}; ${DDL('public.t')}`);
  engine = await engineFor(db, db, {
    t: { source: 'src', from: { table: 'src.t' }, target: 't', key: ['tenant', 'code', 'n', 'd'], tenant: { column: 'tenant', value: 'a' } },
  });
});
afterAll(() => engine.close());

describe('verify (property)', () => {
  it('lists exactly the keys of the tenant whose rows differ, each with its kind', async () => {
    await fc.assert(fc.asyncProperty(scenario, async (sc) => {
      await db.pool.query('truncate src.t, public.t');
      const row = (k: Omit<Row, 'name' | 'amount' | 'doc'>, v: Pick<Row, 'name' | 'amount' | 'doc'>): Row => ({ ...k, ...v });
      const target = sc.target.map((r) => row(r.k, r.v));
      const taken = new Set(sc.target.map((r) => JSON.stringify(r.k)));
      const source = [
        ...sc.target.flatMap((r) => {
          switch (r.c.kind) {
            case 'same': return [row(r.k, r.v)];
            case 'deleted': return [];
            case 'updated': return [row(r.k, r.c.v)];
            default: return [row(r.k, { ...r.v, [r.c.col]: r.c.v[r.c.col as keyof typeof r.c.v] })];
          }
        }),
        ...sc.inserted.filter((r) => !taken.has(JSON.stringify(r.k))).map((r) => row(r.k, r.v)),
      ];
      await load('src.t', source);
      await load('public.t', target);
      // Equal rows around the changes: the differing buckets are found through several levels.
      for (const t of ['src.t', 'public.t']) {
        const name = t === 'src.t' && sc.fillerChanged ? 'y' : 'x';
        await db.pool.query(`insert into ${t} select 'a', 'filler ' || i, i, date '2026-02-01', $1, i, null from generate_series(1, 2000) i`, [name]);
      }
      await db.pool.query(sc.analyzed ? 'analyze src.t' : `select 1`);
      const { rows: expected } = await db.pool.query<{ kind: string; key: string[] }>(`
        with s as (select array[tenant, code, n::text, to_char(d, 'YYYY-MM-DD')] as key, row(name, amount, doc)::text as r from src.t where tenant = 'a'),
             t as (select array[tenant, code, n::text, to_char(d, 'YYYY-MM-DD')] as key, row(name, amount, doc)::text as r from public.t where tenant = 'a')
        select case when t.key is null then '-' when s.key is null then '+' else '~' end as kind, coalesce(s.key, t.key) as key
          from s full join t on s.key = t.key
         where s.key is null or t.key is null or s.r is distinct from t.r`);
      const r = await verifyEntity(engine, 't');
      expect(r.error).toBeUndefined();
      const asText = (k: { kind: string; key: string[] }) => `${k.kind} ${JSON.stringify(k.key)}`;
      expect(r.keys.map(asText).sort()).toEqual(expected.map(asText).sort());
      expect(r.status).toBe(expected.length ? 'differs' : 'equal');
      if (expected.length) expect(r.segments).toBeGreaterThan(1);
      expect(r.rowsCompared).toBe(2000 + Math.max(source.filter((x) => x.tenant === 'a').length, target.filter((x) => x.tenant === 'a').length));
    }), { numRuns: 30 });
  });
});
