import { describe, it, expect, beforeAll } from 'vitest';
import { testDatabase, type TestDatabase } from './helpers/db.js';

// The migrations are the schema's one written definition; a DBA reads it in
// psql (\d+, \df+), so every object a DBA uses says what it is for.

let db: TestDatabase;

beforeAll(async () => {
  db = await testDatabase('schema_comments');
});

describe('schema sync', () => {
  it('every table, view and public function (not partitions, trigger functions or _helpers) carries a comment', async () => {
    const { rows } = await db.pool.query<{ object: string; what: string | null }>(`
      select c.relname as object, obj_description(c.oid, 'pg_class') as what
        from pg_class c where c.relnamespace = 'sync'::regnamespace and c.relkind in ('r', 'v', 'p') and not c.relispartition
      union all
      select p.oid::regprocedure::text, obj_description(p.oid, 'pg_proc')
        from pg_proc p where p.pronamespace = 'sync'::regnamespace and p.proname !~ '^_' and p.prorettype <> 'trigger'::regtype`);
    expect(rows.length).toBeGreaterThan(30);
    expect(rows.filter((r) => !r.what?.trim()).map((r) => r.object)).toEqual([]);
  });
});
