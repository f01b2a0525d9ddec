import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

// Rule text that a format() template would read as placeholders.
const COL = 'share %s %I %L %%';
const ddl = `create table rates (id int primary key, "${COL}" text, kind text, ref text, updated int);
  create table refs (code text primary key)`;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('rule_text'));
  await source.pool.query(ddl);
  await sync.pool.query(ddl);
  await sync.pool.query(`insert into refs values ('a%b'), ('%s')`);
  await source.pool.query(`insert into rates values
    (1, '50%', '%s', 'a%b', 1), (2, 'fifty', '%s', '%s', 1), (3, '10%', '%x', 'a%b', 1), (4, '5%', '%s', 'zz%', 1), (5, '7%', '%s', 'a%b', 1)`);
  await sync.pool.query(`insert into rates values (5, '7%', '%s', 'a%b', 9)`);
  engine = await engineFor(sync, source, {
    rates: {
      source: 'src', from: { table: 'rates' }, target: 'rates', key: ['id'], mode: 'upsert',
      validate: { formats: { [COL]: '^[0-9]+%$' }, allowed: { kind: ['%s', '100%'] }, references: { ref: 'public.refs.code' }, required: [COL] },
      version: { column: 'updated' },
    },
  });
});
afterAll(() => engine.close());

describe('validation rules holding % and format() placeholders', () => {
  it('quarantine records with the rule\'s own text in the reason and merge the rest', async () => {
    const r = await engine.run('rates', { trigger: 'manual' });
    expect(r.error).toBeUndefined();
    expect(r).toMatchObject({ status: 'partial', fetched: 5, inserted: 1, quarantined: 4 });
    const { rows } = await sync.pool.query('select key, message from sync.run_error where run_id = $1 order by key', [r.runId]);
    expect(rows).toEqual([
      { key: ['2'], message: `${COL} "fifty" does not match the format ^[0-9]+%$` },
      { key: ['3'], message: 'kind "%x" is not one of the allowed values: %s, 100%' },
      { key: ['4'], message: 'ref "zz%" has no match in public.refs.code' },
      { key: ['5'], message: 'conflict: the target holds a newer updated (9) than the source (1); not applied' },
    ]);
    expect((await sync.pool.query('select id from rates order by id')).rows).toEqual([{ id: 1 }, { id: 5 }]);
  });
});
