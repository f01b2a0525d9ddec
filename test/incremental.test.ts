import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { awkwardText, contents, load, snapshot } from './helpers/gen.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const KEY = ['tenant', 'id'];
const OVERLAP = 3;
const ddl = (t: string) => `create table ${t} (tenant text not null, id int not null, name text, version int not null,
  updated_at timestamptz not null default '2020-01-01T00:00:00Z', primary key (tenant, id))`;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('incremental'));
  await source.pool.query(ddl('events'));
  await sync.pool.query(`${ddl('by_version')}; ${ddl('by_time')};
    -- A trigger, not a CHECK (which the merge quarantines): the merge itself must fail.
    create function refuse_bad() returns trigger language plpgsql as $$
      begin if new.name = 'bad' then raise exception 'name_is_not_bad'; end if; return new; end $$;
    create trigger name_is_not_bad before insert or update on by_version for each row execute function refuse_bad()`);
  engine = await engineFor(sync, source, {
    by_version: { source: 'src', from: { table: 'events' }, target: 'by_version', key: KEY, mode: 'mirror',
      tenant: { column: 'tenant', value: 't' }, cursor: { column: 'version', overlap: OVERLAP } },
    by_time: { source: 'src', from: { table: 'events' }, target: 'by_time', key: KEY, mode: 'mirror',
      cursor: { column: 'updated_at' } },
    by_time_overlap: { source: 'src', from: { table: 'events' }, target: 'by_time', key: KEY, mode: 'upsert',
      cursor: { column: 'updated_at', overlap: '5 minutes' } },
  });
});
afterAll(() => engine.close());

async function reset() {
  await source.pool.query('truncate events');
  await sync.pool.query('truncate by_version, by_time; update sync.entity set cursor_value = null');
}
const cursorOf = async (name: string) =>
  (await sync.pool.query('select cursor_value from sync.entity where name = $1', [name])).rows[0].cursor_value as string | null;

type Ev = { tenant: string; id: number; name: string | null; version: number };
const row = (maxVersion: number) => fc.record({
  tenant: fc.constantFrom('t', 'u'), id: fc.integer({ min: 1, max: 30 }), name: fc.option(awkwardText), version: fc.integer({ min: 0, max: maxVersion }),
  updated_at: fc.constant('2020-01-01T00:00:00Z'),
});
const rows = (maxVersion: number) => fc.uniqueArray(row(maxVersion), { selector: (r) => `${r.tenant}|${r.id}`, maxLength: 20 });
// A change to the source after the first run: rewrite a row with a new
// version (past the cursor, or a "late commit" at or just below it), add a
// row, or delete one.
const change = fc.record({
  kind: fc.constantFrom('update', 'insert', 'delete', 'touch'),
  pick: fc.nat(), id: fc.integer({ min: 31, max: 60 }), name: fc.option(awkwardText), bump: fc.integer({ min: -5, max: 5 }),
});

describe('incremental sync by an integer version with overlap (property)', () => {
  it('fetches only rows past the cursor less the overlap, rewrites only changed rows, never deletes, and advances the cursor', async () => {
    await fc.assert(fc.asyncProperty(rows(50), fc.array(change, { maxLength: 12 }), async (initial, changes) => {
      await reset();
      await load(source.pool, 'events', initial);
      const first = await engine.run('by_version', { trigger: 'manual' });
      expect(first.status).toBe('succeeded');
      const mine = (rs: Ev[]) => rs.filter((r) => r.tenant === 't');
      expect(first.fetched).toBe(mine(initial).length);
      const c1 = mine(initial).length ? Math.max(...mine(initial).map((r) => r.version)) : null;
      expect(await cursorOf('by_version')).toBe(c1 === null ? null : String(c1));

      const live: Ev[] = initial.map((r) => ({ ...r }));
      for (const ch of changes) {
        const base = c1 ?? 0;
        if (ch.kind === 'insert' && !live.some((r) => r.tenant === 't' && r.id === ch.id)) {
          const r = { tenant: 't', id: ch.id, name: ch.name, version: base + ch.bump };
          live.push(r);
          await source.pool.query('insert into events (tenant, id, name, version) values ($1, $2, $3, $4)', [r.tenant, r.id, r.name, r.version]);
        } else if (live.length) {
          const r = live[ch.pick % live.length];
          if (ch.kind === 'delete') {
            live.splice(live.indexOf(r), 1);
            await source.pool.query('delete from events where tenant = $1 and id = $2', [r.tenant, r.id]);
          } else {
            // 'update' changes the name; 'touch' only moves the version.
            if (ch.kind === 'update') r.name = ch.name;
            r.version = base + ch.bump;
            await source.pool.query('update events set name = $3, version = $4 where tenant = $1 and id = $2', [r.tenant, r.id, r.name, r.version]);
          }
        }
      }
      const before = await snapshot(sync.pool, 'by_version', KEY);
      const second = await engine.run('by_version', { trigger: 'manual' });
      expect(second.status).toBe('succeeded');
      const fetchedRows = mine(live).filter((r) => c1 === null || r.version > c1 - OVERLAP);
      expect(second.fetched).toBe(fetchedRows.length);
      expect(second.deleted).toBe(0);
      const after = await snapshot(sync.pool, 'by_version', KEY);
      const src = await snapshot(source.pool, 'events', KEY);
      for (const r of fetchedRows) {
        const k = JSON.stringify([r.tenant, String(r.id)]);
        expect(after.get(k)?.cols).toEqual(src.get(k)?.cols);
      }
      // Rows not fetched, or fetched with the values the target already
      // has, keep their tuple: the overlap re-reads without rewriting.
      let rewritten = 0;
      for (const [k, b] of before) {
        const a = after.get(k);
        expect(a).toBeDefined(); // never deleted
        if (a!.version !== b.version) rewritten++;
        if (JSON.stringify(a!.cols) === JSON.stringify(b.cols)) expect(a!.version).toBe(b.version);
      }
      expect(second.updated).toBe(rewritten);
      expect(second.inserted).toBe(after.size - before.size);
      const c2 = Math.max(c1 ?? -Infinity, ...fetchedRows.map((r) => r.version));
      expect(await cursorOf('by_version')).toBe(Number.isFinite(c2) ? String(c2) : null);
      expect(second.cursor).toBe(Number.isFinite(c2) ? String(c2) : null);
    }), { numRuns: 25 });
  });
});

describe('incremental sync by timestamp', () => {
  it('a second run fetches only rows updated after the stored cursor', async () => {
    await reset();
    await source.pool.query(`insert into events (tenant, id, name, version, updated_at) values
      ('t', 1, 'one', 0, '2024-01-01T10:00:00.123456Z'), ('t', 2, 'two', 0, '2024-01-01T11:00:00Z'), ('u', 1, 'x', 0, '2023-12-31T00:00:00Z')`);
    const first = await engine.run('by_time', { trigger: 'manual' });
    expect(first).toMatchObject({ status: 'succeeded', fetched: 3, inserted: 3 });
    const c1 = await cursorOf('by_time');
    const same = await sync.pool.query(`select $1::timestamptz = '2024-01-01T11:00:00Z'::timestamptz as ok`, [c1]);
    expect(same.rows[0].ok).toBe(true);
    await source.pool.query(`insert into events (tenant, id, name, version, updated_at) values ('t', 3, 'three', 0, '2024-01-01T11:00:00.000001Z');
      update events set name = 'ONE', updated_at = '2024-01-02T00:00:00Z' where id = 1 and tenant = 't';
      update events set name = 'late' where tenant = 'u'`);
    const second = await engine.run('by_time', { trigger: 'manual' });
    expect(second).toMatchObject({ status: 'succeeded', fetched: 2, inserted: 1, updated: 1, unchanged: 0, deleted: 0 });
    const c2 = await sync.pool.query(`select cursor_value::timestamptz = '2024-01-02T00:00:00Z'::timestamptz as ok from sync.entity where name = 'by_time'`);
    expect(c2.rows[0].ok).toBe(true);
    // The late change at an older timestamp is (by design, without overlap) not seen.
    expect((await sync.pool.query(`select name from by_time where tenant = 'u'`)).rows).toEqual([{ name: 'x' }]);
    const third = await engine.run('by_time', { trigger: 'manual' });
    expect(third).toMatchObject({ status: 'succeeded', fetched: 0, inserted: 0, updated: 0 });
  });

  it('an interval overlap re-reads late commits within it, without rewriting unchanged rows', async () => {
    await reset();
    await source.pool.query(`insert into events (tenant, id, name, version, updated_at) values
      ('t', 1, 'a', 0, '2024-01-01T12:00:00Z'), ('t', 2, 'b', 0, '2024-01-01T11:58:00Z')`);
    expect(await engine.run('by_time_overlap', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', fetched: 2, inserted: 2 });
    const before = await snapshot(sync.pool, 'by_time', KEY);
    // Committed late: stamped before the cursor, inside and outside the overlap.
    await source.pool.query(`insert into events (tenant, id, name, version, updated_at) values
      ('t', 3, 'late', 0, '2024-01-01T11:56:00Z'), ('t', 4, 'too late', 0, '2024-01-01T11:50:00Z')`);
    const r = await engine.run('by_time_overlap', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 3, inserted: 1, updated: 0, unchanged: 2 });
    const after = await snapshot(sync.pool, 'by_time', KEY);
    for (const [k, row] of before) expect(after.get(k)?.version).toBe(row.version);
    expect([...after.keys()].sort()).toEqual([...before.keys(), JSON.stringify(['t', '3'])].sort());
  });

  it('incremental runs never delete; a full run deletes rows missing from the source', async () => {
    await reset();
    await source.pool.query(`insert into events (tenant, id, name, version) values ('t', 1, 'a', 1), ('t', 2, 'b', 2)`);
    await engine.run('by_time', { trigger: 'manual' });
    await source.pool.query(`delete from events where id = 2`);
    const inc = await engine.run('by_time', { trigger: 'manual' });
    expect(inc).toMatchObject({ status: 'succeeded', fetched: 0, deleted: 0 });
    expect((await sync.pool.query('select count(*)::int as n from by_time')).rows[0].n).toBe(2);
    const full = await engine.run('by_time', { trigger: 'manual', full: true });
    expect(full).toMatchObject({ status: 'succeeded', fetched: 1, deleted: 1, unchanged: 1 });
    expect(contents(await snapshot(sync.pool, 'by_time', KEY))).toEqual(contents(await snapshot(source.pool, 'events', KEY)));
  });
});

describe('cursor and merge are one transaction', () => {
  it('a merge that fails leaves the cursor, the target and the change log as they were; the fixed row is merged next time', async () => {
    await reset();
    await source.pool.query(`insert into events (tenant, id, name, version) values ('t', 1, 'a', 5), ('t', 2, 'b', 7)`);
    expect(await engine.run('by_version', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', inserted: 2 });
    expect(await cursorOf('by_version')).toBe('7');
    const before = await snapshot(sync.pool, 'by_version', KEY);
    await source.pool.query(`insert into events (tenant, id, name, version) values ('t', 3, 'bad', 100), ('t', 4, 'fine', 90);
      update events set name = 'A' , version = 95 where id = 1`);
    const failed = await engine.run('by_version', { trigger: 'manual' });
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatch(/name_is_not_bad/);
    expect(await cursorOf('by_version')).toBe('7');
    expect(await snapshot(sync.pool, 'by_version', KEY)).toEqual(before);
    const run = (await sync.pool.query('select status, cursor_before, cursor_after from sync.run where id = $1', [failed.runId])).rows[0];
    expect(run).toEqual({ status: 'failed', cursor_before: '7', cursor_after: null });
    expect((await sync.pool.query('select count(*)::int as n from sync.run_change where run_id = $1', [failed.runId])).rows[0].n).toBe(0);
    await source.pool.query(`update events set name = 'good' where id = 3`);
    const fixed = await engine.run('by_version', { trigger: 'manual' });
    // Overlap 3 below cursor 7 also re-reads id 2 (version 7), unchanged.
    expect(fixed).toMatchObject({ status: 'succeeded', fetched: 4, inserted: 2, updated: 1, unchanged: 1 });
    expect(await cursorOf('by_version')).toBe('100');
  });

  it('a dry run does not move the cursor', async () => {
    await reset();
    await source.pool.query(`insert into events (tenant, id, name, version) values ('t', 1, 'a', 5)`);
    const dry = await engine.run('by_version', { trigger: 'manual', dryRun: true });
    expect(dry).toMatchObject({ status: 'succeeded', inserted: 1 });
    expect(await cursorOf('by_version')).toBeNull();
    expect((await sync.pool.query('select count(*)::int as n from by_version')).rows[0].n).toBe(0);
  });
});
