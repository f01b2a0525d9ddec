import { describe, it, expect, beforeAll } from 'vitest';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { checksum, runChanges } from './helpers/gen.js';
import { configProblems } from './helpers/config.js';
import { until } from './helpers/until.js';
import { entity } from '../src/config/schema.js';
import { sourceSelect } from '../src/sources/postgres/read.js';

let sync: TestDatabase;
let source: TestDatabase;

// Wide rows, so a few hundred of them fill several blocks of the source table.
const PAD = 300;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('chunks'));
  await source.pool.query(`create table items (tenant text, id int, name text, pad text, primary key (tenant, id))`);
  await sync.pool.query(`
    create table single (tenant text, id int, name text, pad text, primary key (tenant, id));
    create table chunked (tenant text, id int, name text, pad text, primary key (tenant, id))`);
});

const entities = (chunks: number) => {
  const e = { source: 'src', from: { table: 'items' }, key: ['tenant', 'id'], tenant: { column: 'tenant', value: 'a' }, diff: 'off' };
  return {
    single: { ...e, target: 'single' },
    chunked: { ...e, target: 'chunked', snapshot: { chunks, minRows: 0 } },
  };
};

const runRow = async (id: number | null) => (await sync.pool.query(
  `select status, fetched, inserted, updated, deleted, unchanged, quarantined, detail from sync.run where id = $1`, [id])).rows[0];
const compact = async (id: number | null) =>
  (await sync.pool.query(`select action, key from sync.change where run_id = $1 order by action, key::text`, [id])).rows;

describe('a chunked full read', () => {
  it('loads and re-syncs the same rows, counts and change records as one COPY, for random tables and chunk counts', async () => {
    await fc.assert(fc.asyncProperty(
      fc.integer({ min: 2, max: 12 }),
      fc.array(fc.record({ tenant: fc.constantFrom('a', 'b'), id: fc.integer({ min: 1, max: 3000 }), name: fc.string({ maxLength: 8 }) }),
        { minLength: 50, maxLength: 600 }),
      fc.integer({ min: 0, max: 100 }),
      async (chunks, rows, churn) => {
        await source.pool.query('truncate items');
        await sync.pool.query('truncate single, chunked');
        await source.pool.query(`insert into items select r.tenant, r.id, r.name, repeat('x', ${PAD})
            from jsonb_to_recordset($1::jsonb) r(tenant text, id int, name text) on conflict do nothing`, [JSON.stringify(rows)]);
        const engine = await engineFor(sync, source, entities(chunks));
        try {
          for (const pass of [1, 2]) {
            if (pass === 2) {
              // Rows move, vanish and appear between the runs.
              await source.pool.query(`update items set name = name || '!' where id % 7 < $1 % 7`, [churn]);
              await source.pool.query(`delete from items where id % 11 = $1 % 11`, [churn]);
              await source.pool.query(`insert into items select 'a', 4000 + i, 'new', repeat('y', ${PAD}) from generate_series(1, $1::int) i`, [churn]);
            }
            const one = await engine.run('single', { trigger: 'manual', full: pass === 2 });
            const many = await engine.run('chunked', { trigger: 'manual', full: pass === 2 });
            expect(many.status).toBe('succeeded');
            expect(await checksum(sync.pool, 'chunked')).toBe(await checksum(sync.pool, 'single'));
            const [a, b] = [await runRow(one.runId), await runRow(many.runId)];
            // The definitions differ (target, snapshot): their md5 in detail.diff does too.
            const { chunks: progress, ...restB } = b.detail;
            delete restB.diff?.definition;
            delete a.detail.diff?.definition;
            expect({ ...b, detail: restB }).toEqual(a);
            const blocks = Number((await source.pool.query(`select pg_relation_size('items') / current_setting('block_size')::int as n`)).rows[0].n);
            expect(progress).toEqual({ total: Math.min(chunks, blocks), done: Math.min(chunks, blocks), rows: b.fetched });
            expect(await compact(many.runId)).toEqual(await compact(one.runId));
            expect(await runChanges(sync.pool, many.runId, ['tenant', 'id'])).toEqual(await runChanges(sync.pool, one.runId, ['tenant', 'id']));
          }
        } finally {
          await engine.close();
        }
      }), { numRuns: 5, endOnFailure: true });
  }, 180_000);
});

describe('a chunked first load the target refuses', () => {
  it('falls back to the staging path with the chunks already read, as a single read does: the repeated key is quarantined', async () => {
    await source.pool.query(`create table dups (id int, name text, pad text);
      insert into dups select i, 'n' || i, repeat('x', ${PAD}) from generate_series(1, 300) i;
      insert into dups values (7, 'again', 'x')`);
    await sync.pool.query(`create table dups_single (id int primary key, name text, pad text);
      create table dups_chunked (id int primary key, name text, pad text)`);
    const e = { source: 'src', from: { table: 'dups' }, key: ['id'] };
    const engine = await engineFor(sync, source, {
      dups_single: { ...e, target: 'dups_single' }, dups_chunked: { ...e, target: 'dups_chunked', snapshot: { chunks: 4, minRows: 0 } },
    });
    try {
      const one = await engine.run('dups_single', { trigger: 'manual' });
      const many = await engine.run('dups_chunked', { trigger: 'manual' });
      expect(one).toMatchObject({ status: 'partial', quarantined: 2, fetched: 301 });
      expect(many).toMatchObject({ status: one.status, quarantined: one.quarantined, fetched: one.fetched, inserted: one.inserted });
      expect((await runRow(many.runId)).detail.chunks).toEqual({ total: 4, done: 4, rows: 301 });
      expect(await checksum(sync.pool, 'dups_chunked')).toBe(await checksum(sync.pool, 'dups_single'));
    } finally {
      await engine.close();
    }
  });
});

describe('a checksum diff that finds most rows changed', () => {
  it('fetches everything in chunks, in the diff\'s own snapshot, and merges it as a full fetch', async () => {
    await source.pool.query(`create table diffed (id int primary key, name text, pad text);
      insert into diffed select i, 'n' || i, repeat('x', ${PAD}) from generate_series(1, 400) i`);
    await sync.pool.query(`create table diffed (id int primary key, name text, pad text)`);
    const engine = await engineFor(sync, source, {
      diffed: { source: 'src', from: { table: 'diffed' }, target: 'diffed', key: ['id'], snapshot: { chunks: 3, minRows: 0 } },
    });
    try {
      expect((await engine.run('diffed', { trigger: 'manual' })).status).toBe('succeeded');
      await source.pool.query(`update diffed set name = name || '!' where id % 10 < 8; delete from diffed where id % 10 = 9;
        insert into diffed select i, 'late', 'y' from generate_series(401, 450) i`);
      const r = await engine.run('diffed', { trigger: 'manual' });
      expect(r).toMatchObject({ status: 'succeeded', updated: 320, deleted: 40, inserted: 50, quarantined: 0 });
      const { detail } = await runRow(r.runId);
      expect(detail.diff).toMatchObject({ path: 'full', reason: expect.stringMatching(/differing buckets/) });
      expect(detail.chunks).toEqual({ total: 3, done: 3, rows: 410 });
      expect(await checksum(sync.pool, 'diffed')).toBe(await checksum(source.pool, 'diffed'));
    } finally {
      await engine.close();
    }
  });
});

describe('a chunk', () => {
  it('reads only its blocks (a TID Range Scan), keeping the tenant filter', async () => {
    const def = entity.parse({ source: 'src', from: { table: 'items' }, target: 't', key: ['tenant', 'id'], tenant: { column: 'tenant', value: 'a' } });
    for (const blocks of [{ lo: 2, hi: 5 }, { lo: 7, hi: null }]) {
      const select = sourceSelect(def, ['tenant', 'id', 'name'], { tenantSourceColumn: 'tenant', blocks });
      const { rows } = await source.pool.query(`explain ${select}`);
      const plan = rows.map((r) => r['QUERY PLAN']).join('\n');
      expect(plan).toMatch(/Tid Range Scan on items/);
      expect(plan).toMatch(blocks.hi === null ? /ctid >= '\(7,0\)'/ : /ctid >= '\(2,0\)'.*ctid < '\(5,0\)'/);
      expect(plan).toMatch(/tenant = 'a'/);
    }
  });
});

describe('the chunks of a run that ended', () => {
  const pending = async (run: number) => (await sync.pool.query(
    `select count(*)::int as n from sync.run_chunk where run_id = $1 and status = 'pending'`, [run])).rows[0].n;
  const planned = async () => {
    const { rows: [r] } = await sync.pool.query(`select sync.start_run('chunked', 'manual', false, true, array['tenant', 'id', 'name', 'pad']) as id`);
    await sync.pool.query(`select sync.plan_chunks($1, 'snap', 30, 3, '{}')`, [r.id]);
    return Number(r.id);
  };
  // A taker: locks a chunk as sync.take_chunk does, and gives it back as a failed read does.
  const taker = async (run: number) => {
    const c = await sync.pool.connect();
    await c.query('begin');
    expect((await c.query('select * from sync.take_chunk($1)', [run])).rowCount).toBe(1);
    return {
      giveBack: async () => {
        await c.query('rollback');
        try { return (await c.query('select sync.close_chunks_if_over($1) as n', [run])).rows[0].n; } finally { c.release(); }
      },
    };
  };

  it('are never left pending, whether a failed taker gives its chunk back before, during or after the run ends', async () => {
    const engine = await engineFor(sync, source, entities(3));
    try {
      // Before: the run's end finds the chunk free.
      let run = await planned();
      let t = await taker(run);
      expect(await t.giveBack()).toBe(0);
      await sync.pool.query(`select sync.finish_run($1, 'failed', 'x')`, [run]);
      expect(await pending(run)).toBe(0);

      // After: the end skipped the locked chunk; the taker sees the run over.
      run = await planned();
      t = await taker(run);
      await sync.pool.query(`select sync.finish_run($1, 'failed', 'x')`, [run]);
      expect(await pending(run)).toBe(1);
      expect(await t.giveBack()).toBe(1);
      expect(await pending(run)).toBe(0);

      // During: the taker looks while the run's end is not committed yet; it
      // waits for that commit instead of reading the status before it.
      run = await planned();
      t = await taker(run);
      const ender = await sync.pool.connect();
      try {
        await ender.query('begin');
        await ender.query(`select sync.finish_run($1, 'failed', 'x')`, [run]);
        const given = t.giveBack();
        await until('the taker waits for the run\'s end', async () => (await sync.pool.query(
          `select 1 from pg_stat_activity where wait_event_type = 'Lock' and query like '%close_chunks_if_over%'`)).rowCount);
        await ender.query('commit');
        expect(await given).toBe(1);
      } finally {
        ender.release();
      }
      expect(await pending(run)).toBe(0);
      expect((await sync.pool.query(`select count(*)::int as n from graphile_worker.jobs where key like $1`, [`chunk:${run}:%`])).rows[0].n).toBe(0);
    } finally {
      await engine.close();
    }
  });
});

describe('snapshot config', () => {
  const src = { src: { kind: 'postgres', url: 'postgres://x/y' } };
  it('is refused on a query entity, on a non-postgres source and out of range, with the path', () => {
    const problems = (e: object, sources: object = src) => configProblems({ sources, entities: { e: { source: 'src', target: 't', key: ['id'], ...e } } });
    expect(problems({ from: { query: 'select 1 as id' }, snapshot: { chunks: 4 } }).join('\n')).toMatch(/entities\.e\.snapshot.*needs "from": \{"table"/);
    expect(problems({ from: { file: 'a.csv' }, snapshot: { chunks: 4 } }, { src: { kind: 'csv', dir: '.' } }).join('\n'))
      .toMatch(/entities\.e\.snapshot/);
    expect(problems({ from: { table: 'items' }, snapshot: { chunks: 65 } }).join('\n')).toMatch(/entities\.e\.snapshot\.chunks/);
    expect(problems({ from: { table: 'items' }, snapshot: { chunks: 4, rows: 1 } }).join('\n')).toMatch(/entities\.e\.snapshot/);
    expect(problems({ from: { table: 'items' }, snapshot: { chunks: 4 } })).toEqual([]);
  });
});
