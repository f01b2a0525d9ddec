import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import type { Engine } from '../src/engine/run.js';
import { backfillChunks, enqueueBackfill, runBackfill } from '../src/engine/backfill.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const target = async () => (await sync.pool.query('select id from events order by id')).rows.map((r) => r.id);

beforeAll(async () => {
  ({ sync, source } = await testDatabases('backfill'));
  // One event every 6 hours through January 2026: ids 1..124.
  await source.pool.query(`create table events (id int primary key, at timestamptz not null, v text);
    insert into events select i, '2026-01-01T00:00:00Z'::timestamptz + (i - 1) * interval '6 hours', 'e' || i
      from generate_series(1, 124) i`);
  await sync.pool.query('create table events (id int primary key, at timestamptz not null, v text)');
  engine = await engineFor(sync, source, {
    events: { source: 'src', from: { table: 'events' }, target: 'events', key: ['id'], cursor: { column: 'at' } },
  });
});
afterAll(() => engine.close());

describe('backfill', () => {
  it('splits the range into half-open chunks of the cursor type', async () => {
    const chunks = await backfillChunks(engine, 'events', { from: '2026-01-05', to: '2026-01-08', chunk: '1 day' });
    expect(chunks.map((c) => [c.from.slice(0, 10), c.to.slice(0, 10), c.done])).toEqual([
      ['2026-01-05', '2026-01-06', false], ['2026-01-06', '2026-01-07', false], ['2026-01-07', '2026-01-08', false]]);
  });

  it('loads exactly the range, one run a chunk, and moves the cursor to the newest row loaded', async () => {
    const results = await runBackfill(engine, 'events', { from: '2026-01-05', to: '2026-01-08', chunk: '1 day' });
    expect(results.map((r) => [r.status, r.inserted])).toEqual([['succeeded', 4], ['succeeded', 4], ['succeeded', 4]]);
    // Jan 5 00:00 is event 17; Jan 7 18:00 is event 28.
    expect(await target()).toEqual(Array.from({ length: 12 }, (_, i) => 17 + i));
    const cursor = (await sync.pool.query(`select cursor_value from sync.entity where name = 'events'`)).rows[0].cursor_value;
    expect(new Date(cursor).toISOString()).toBe('2026-01-07T18:00:00.000Z');
  });

  it('re-running skips the chunks already done and writes nothing', async () => {
    const runsBefore = (await sync.pool.query('select count(*)::int as n from sync.run')).rows[0].n;
    const seen: boolean[] = [];
    const results = await runBackfill(engine, 'events', { from: '2026-01-05', to: '2026-01-08', chunk: '1 day', onChunk: (c) => seen.push(c.done) });
    expect(results).toEqual([]);
    expect(seen).toEqual([true, true, true]);
    expect((await sync.pool.query('select count(*)::int as n from sync.run')).rows[0].n).toBe(runsBefore);
  });

  it('hands over to the incremental cursor: the next run fetches only rows after the backfill', async () => {
    const r = await engine.run('events', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 124 - 28, inserted: 124 - 28, deleted: 0 });
  });

  it('--enqueue puts one job a remaining chunk on the entity queue', async () => {
    // Chunks of 2 days from Jan 1: [1,3) [3,5) [5,7) [7,8); the last is the 1-day chunk done above.
    const n = await enqueueBackfill(engine, 'events', { from: '2026-01-01', to: '2026-01-08', chunk: '2 days' });
    expect(n).toBe(3);
    const { rows } = await sync.pool.query(`select queue_name, key from graphile_worker.jobs order by key`);
    expect(rows.map((r) => r.queue_name)).toEqual(['sync:events', 'sync:events', 'sync:events']);
    expect(rows.map((r) => r.key.slice(0, 26))).toEqual(['backfill:events:2026-01-01', 'backfill:events:2026-01-03', 'backfill:events:2026-01-05']);
  });

  it('refuses an entity without a cursor with a hint', async () => {
    await expect(backfillChunks(engine, 'nope', { from: '1', to: '2' })).rejects.toThrow(/unknown entity nope/);
  });
});
