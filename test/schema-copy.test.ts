import { describe, it, expect, beforeAll } from 'vitest';
import { readFileSync } from 'node:fs';
import { runMigrations } from 'graphile-worker';
import { testDatabase, type TestDatabase } from './helpers/db.js';

let migrated: TestDatabase;
let fromCopy: TestDatabase;

/** Everything of schema sync that a DBA sees: columns, constraints, indexes, functions, views, triggers, comments. */
const CATALOG = `
  select 'column' as kind, c.relname || '.' || a.attname as name,
         format_type(a.atttypid, a.atttypmod) || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') || case when a.attnotnull then ' not null' else '' end as def
    from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
    left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
   where n.nspname = 'sync' and a.attnum > 0 and not a.attisdropped
  union all
  select 'constraint', c.conrelid::regclass::text || '.' || c.conname, pg_get_constraintdef(c.oid)
    from pg_constraint c join pg_namespace n on n.oid = c.connamespace where n.nspname = 'sync'
  union all
  select 'index', indexrelid::regclass::text, pg_get_indexdef(indexrelid)
    from pg_index i join pg_class c on c.oid = i.indrelid join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'sync'
  union all
  select 'function', p.oid::regprocedure::text, pg_get_functiondef(p.oid)
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'sync'
  union all
  select 'view', c.oid::regclass::text, pg_get_viewdef(c.oid)
    from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'sync' and c.relkind = 'v'
  union all
  select 'trigger', t.tgname, pg_get_triggerdef(t.oid)
    from pg_trigger t join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = 'sync' and not t.tgisinternal
  union all
  select 'comment', d.classoid::regclass::text || ':' || d.objoid || ':' || d.objsubid, d.description
    from pg_description d join pg_class c on c.oid = d.objoid join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'sync'
  order by 1, 2, 3`;

beforeAll(async () => {
  migrated = await testDatabase('schema_migrated');
  fromCopy = await testDatabase('schema_copy', { migrated: false });
  await runMigrations({ pgPool: fromCopy.pool });
  await fromCopy.pool.query(readFileSync(new URL('../sql/sync-schema.sql', import.meta.url), 'utf8'));
});

describe('sql/sync-schema.sql', () => {
  it('defines exactly the schema the migrations build', async () => {
    const [a, b] = await Promise.all([migrated.pool.query(CATALOG), fromCopy.pool.query(CATALOG)]);
    const strip = (rows: { kind: string; name: string; def: string }[]) =>
      rows.filter((r) => r.kind !== 'comment').map((r) => `${r.kind} ${r.name}: ${r.def}`);
    expect(strip(b.rows)).toEqual(strip(a.rows));
    expect(b.rows.filter((r) => r.kind === 'comment').map((r) => r.def).sort())
      .toEqual(a.rows.filter((r) => r.kind === 'comment').map((r) => r.def).sort());
    expect(a.rows.length).toBeGreaterThan(50);
  });
});
