import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const ids = async (db: TestDatabase, table: string) =>
  (await db.pool.query(`select id from ${table} order by id`)).rows.map((r) => Number(r.id));

/** The re-sync jobs sync.detect_gaps and sync.request_retries queued, oldest first; removed from the queue. */
async function takeKeyJobs(entity: string): Promise<{ trigger: string; keys: string[][] }[]> {
  const { rows } = await sync.pool.query(
    `delete from graphile_worker._private_jobs j using graphile_worker._private_tasks t
      where t.id = j.task_id and t.identifier = 'sync_entity' and j.payload ->> 'entity' = $1 and j.payload::jsonb ? 'keys'
      returning j.id, j.payload`, [entity]);
  return rows.sort((a, b) => Number(a.id) - Number(b.id)).map((r) => r.payload);
}

/** What the worker would do with those jobs: a run of just their keys. */
async function runKeyJobs(entity: string) {
  const results = [];
  for (const job of await takeKeyJobs(entity)) {
    results.push(await engine.run(entity, { trigger: job.trigger as 'resync', keys: job.keys }));
  }
  return results;
}

beforeAll(async () => {
  ({ sync, source } = await testDatabases('verify'));
  await source.pool.query(`
    create table events (id int primary key, at timestamptz not null, body text);
    create table sellers (id int primary key, seller_number text, status text, property_id int, version int not null);
    create table properties (id int primary key)`);
  await sync.pool.query(`
    create table events (id int primary key, at timestamptz not null, body text);
    create table properties (id int primary key);
    create table sellers (id int primary key, seller_number text, status text, property_id int, version int not null)`);
  await sync.pool.query('insert into properties select generate_series(1, 5)');
  // These tests are about what a verification finds and heals: every run verifies
  // (the schedule, at most once every verify_every, is tested in verify-checksum.test.ts).
  await sync.pool.query(`update sync.setting set value = '0' where name = 'verify_every'`);
  engine = await engineFor(sync, source, {
    events: { source: 'src', from: { table: 'events' }, target: 'events', key: ['id'], cursor: { column: 'at' } },
    sellers: {
      source: 'src', from: { table: 'sellers' }, target: 'sellers', key: ['id'],
      validate: {
        required: ['seller_number'],
        formats: { seller_number: '^S[0-9]{4}$' },
        allowed: { status: ['active', 'closed'] },
        references: { property_id: 'public.properties.id' },
      },
      version: { column: 'version' },
      retry: { limit: 2, delay: '10 seconds' },
    },
  });
});
afterAll(async () => {
  await engine.close();
});

describe('verification after a run', () => {
  it('finds records deleted from the target behind its back and heals them by a re-sync of just those keys', async () => {
    let next = 1;
    await fc.assert(fc.asyncProperty(
      fc.integer({ min: 1, max: 30 }), fc.array(fc.nat({ max: 1000 }), { maxLength: 10 }), fc.integer({ min: 0, max: 5 }),
      async (added, lost, later) => {
        // New events at increasing times; an incremental run brings them.
        await source.pool.query(
          `insert into events select g, timestamptz '2026-01-01' + g * interval '1 minute', 'e' || g from generate_series($1::int, $2::int) g`,
          [next, next + added - 1]);
        next += added;
        expect((await engine.run('events', { trigger: 'manual' })).status).toBe('succeeded');
        await takeKeyJobs('events');
        // Rows vanish from the target; the cursor never sees them again.
        const present = await ids(sync, 'events');
        const gone = [...new Set(lost.map((i) => present[i % present.length]))].sort((a, b) => a - b);
        await sync.pool.query('delete from events where id = any($1)', [gone]);
        await source.pool.query(
          `insert into events select g, timestamptz '2026-01-01' + g * interval '1 minute', 'e' || g from generate_series($1::int, $2::int) g`,
          [next, next + later - 1]);
        next += later;
        const cursor = (await sync.pool.query(`select cursor_value from sync.entity where name = 'events'`)).rows[0].cursor_value;
        const r = await engine.run('events', { trigger: 'manual' });
        expect(r.status).toBe('succeeded');
        const open = (await sync.pool.query(`select key_values from sync.gaps where entity = 'events' order by 1`)).rows;
        expect(open.map((g) => Number(g.key_values[0])).sort((a, b) => a - b)).toEqual(gone);
        const detail = (await sync.pool.query('select detail from sync.run where id = $1', [r.runId])).rows[0].detail;
        if (gone.length) expect(detail.gaps.open).toBe(gone.length);
        // The re-sync the verification queued brings exactly those rows back and leaves the cursor alone.
        const resyncs = await runKeyJobs('events');
        expect(resyncs.length).toBe(gone.length ? 1 : 0);
        for (const x of resyncs) expect(x).toMatchObject({ status: 'succeeded', inserted: gone.length, deleted: 0 });
        expect(await ids(sync, 'events')).toEqual(await ids(source, 'events'));
        expect((await sync.pool.query(`select count(*)::int as n from sync.gaps where entity = 'events'`)).rows[0].n).toBe(0);
        if (resyncs.length) {
          const after = (await sync.pool.query(`select cursor_value from sync.entity where name = 'events'`)).rows[0].cursor_value;
          expect(after).toBe((await sync.pool.query('select cursor_after from sync.run where id = $1', [r.runId])).rows[0].cursor_after);
          expect(after >= cursor).toBe(true);
        }
      }), { numRuns: 15 });
    // Healed gaps resolved the gap alert too.
    const { rows } = await sync.pool.query(`select count(*)::int as n from sync.alert where kind = 'gap' and resolved_at is null`);
    expect(rows[0].n).toBe(0);
  });

  it('a gap the re-sync cannot heal raises resync_failed', async () => {
    // A row the target refuses on every attempt: a trigger deletes it again.
    const id = Number((await source.pool.query('select min(id) as id from events')).rows[0].id);
    await sync.pool.query(`create function drop_row() returns trigger language plpgsql as $$
      begin delete from events where id = ${id}; return null; end $$;
      create trigger drop_row after insert or update on events for each statement execute function drop_row()`);
    try {
      await source.pool.query(`update events set at = timestamptz '2027-01-01', body = 'moved' where id = $1`, [id]);
      const r = await engine.run('events', { trigger: 'manual' });
      expect(r.status).toBe('succeeded');
      const resync = await runKeyJobs('events');
      expect(resync.map((x) => x.status)).toEqual(['succeeded']);
      const { rows } = await sync.pool.query(`select kind, severity, message from sync.alert where entity = 'events' and resolved_at is null`);
      expect(rows.map((a) => a.kind).sort()).toEqual(['gap', 'resync_failed']);
      expect(rows.find((a) => a.kind === 'resync_failed').message).toMatch(/still missing after a re-sync/);
    } finally {
      await sync.pool.query('drop trigger drop_row on events; drop function drop_row()');
    }
  });
  it('a target emptied behind its back: the incremental run loads straight in, the cursor stays, and the re-sync restores every row', async () => {
    await takeKeyJobs('events');
    await sync.pool.query(`update sync.gap set resolved_at = now() where resolved_at is null`);
    const cursor = (await sync.pool.query(`select cursor_value from sync.entity where name = 'events'`)).rows[0].cursor_value;
    await sync.pool.query('delete from events');
    const r = await engine.run('events', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 0 });
    expect((await sync.pool.query(`select cursor_value from sync.entity where name = 'events'`)).rows[0].cursor_value).toBe(cursor);
    const all = await ids(source, 'events');
    expect((await sync.pool.query(`select count(*)::int as n from sync.gaps where entity = 'events'`)).rows[0].n).toBe(all.length);
    await runKeyJobs('events');
    expect(await ids(sync, 'events')).toEqual(all);
  });
});

describe('validation rules and version conflicts', () => {
  const seller = (id: number, number: string | null, status: string, property: number | null, version = 1) =>
    [id, number, status, property, version];

  it('quarantine each failing record with its rule and category; the rest merge; every record is accounted for', async () => {
    const rows = [
      seller(1, 'S0001', 'active', 1), seller(2, null, 'active', 1), seller(3, 'X12', 'active', 2),
      seller(4, 'S0004', 'dormant', 3), seller(5, 'S0005', 'closed', 99), seller(6, 'S0006', 'closed', null),
    ];
    for (const r of rows) await source.pool.query('insert into sellers values ($1, $2, $3, $4, $5)', r);
    const r = await engine.run('sellers', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'partial', fetched: 6, inserted: 2, quarantined: 4 });
    expect(r.fetched).toBe(r.inserted! + r.updated! + r.unchanged! + r.quarantined!);
    expect(await ids(sync, 'sellers')).toEqual([1, 6]);
    const { rows: errors } = await sync.pool.query(
      `select key, category, message from sync.run_error where run_id = $1 order by key`, [r.runId]);
    expect(errors).toEqual([
      { key: ['2'], category: 'validation', message: 'seller_number is required but empty' },
      { key: ['3'], category: 'validation', message: 'seller_number "X12" does not match the format ^S[0-9]{4}$' },
      { key: ['4'], category: 'validation', message: 'status "dormant" is not one of the allowed values: active, closed' },
      { key: ['5'], category: 'integrity', message: 'property_id "99" has no match in public.properties.id' },
    ]);
  });

  it('a quarantined record is offered again after the delay, merges once fixed, and stops being offered past the limit', async () => {
    const due = async () => (await sync.pool.query(
      `select key[1] as id, retry_count, next_retry_at is not null as waiting from sync.run_error
        where entity = 'sellers' and resolved_at is null order by key`)).rows;
    expect(await due()).toEqual([2, 3, 4, 5].map((id) => ({ id: String(id), retry_count: 0, waiting: true })));
    // Fix two in the source; make all due now.
    await source.pool.query(`update sellers set seller_number = 'S0003' where id = 3; update sellers set status = 'active' where id = 4`);
    await sync.pool.query(`update sync.run_error set next_retry_at = now() where entity = 'sellers' and resolved_at is null`);
    expect((await sync.pool.query('select sync.request_retries() as n')).rows[0].n).toBe(4);
    const [retry] = await runKeyJobs('sellers');
    expect(retry).toMatchObject({ status: 'partial', fetched: 4, inserted: 2, quarantined: 2 });
    expect(await ids(sync, 'sellers')).toEqual([1, 3, 4, 6]);
    expect(await due()).toEqual([2, 5].map((id) => ({ id: String(id), retry_count: 1, waiting: true })));
    // The limit is 2: the second retry leaves them quarantined for good.
    await sync.pool.query(`update sync.run_error set next_retry_at = now() where entity = 'sellers' and resolved_at is null`);
    await sync.pool.query('select sync.request_retries()');
    await runKeyJobs('sellers');
    expect(await due()).toEqual([2, 5].map((id) => ({ id: String(id), retry_count: 2, waiting: false })));
    expect((await sync.pool.query('select sync.request_retries() as n')).rows[0].n).toBe(0);
  });

  it('sync.replay re-offers records after a fix, whatever their retry count', async () => {
    await sync.pool.query('insert into properties values (99)');
    const { rows } = await sync.pool.query(`select id from sync.run_error where entity = 'sellers' and resolved_at is null and key = '{5}'`);
    expect((await sync.pool.query('select sync.replay($1) as n', [rows[0].id])).rows[0].n).toBe(1);
    const [replayed] = await runKeyJobs('sellers');
    expect(replayed).toMatchObject({ status: 'succeeded', inserted: 1 });
    expect(await ids(sync, 'sellers')).toEqual([1, 3, 4, 5, 6]);
  });

  it('a source record older than the target\'s row is not applied, and the conflict is recorded without retries', async () => {
    await sync.pool.query(`update sellers set version = 5, status = 'closed' where id = 1`);
    await source.pool.query(`update sellers set status = 'active', version = 3 where id = 1; update sellers set version = 2, status = 'closed' where id = 6`);
    const r = await engine.run('sellers', { trigger: 'manual' });
    expect(r).toMatchObject({ updated: 1 });
    expect((await sync.pool.query('select status, version from sellers where id = 1')).rows[0]).toEqual({ status: 'closed', version: 5 });
    expect((await sync.pool.query('select status, version from sellers where id = 6')).rows[0]).toEqual({ status: 'closed', version: 2 });
    const { rows } = await sync.pool.query(
      `select message, next_retry_at from sync.run_error where run_id = $1 and key = '{1}'`, [r.runId]);
    expect(rows).toEqual([{ message: 'conflict: the target holds a newer version (5) than the source (3); not applied', next_retry_at: null }]);
    // A mirror run does not delete the row whose update it refused.
    expect(await ids(sync, 'sellers')).toContain(1);
  });

  it('sync.record_history tells one record\'s story: quarantined, retried, then merged', async () => {
    const { rows } = await sync.pool.query(`select what, detail from sync.record_history('sellers', '5')`);
    expect(rows.map((r) => r.what)).toEqual(['quarantined: integrity', 'quarantined: integrity', 'quarantined: integrity', 'insert']);
    expect(rows[0].detail).toBe('property_id "99" has no match in public.properties.id');
    expect(rows.at(-1)!.detail).toBe('manual');
  });
});

describe('retention and the record key index', () => {
  it('sync.maintain indexes closed months of sync.run_change by key, not the month being written', async () => {
    await sync.pool.query(`select sync.ensure_log_partitions(now() - interval '2 months')`);
    const r = (await sync.pool.query(`select sync.maintain() as r`)).rows[0].r;
    expect(r.change_partitions_indexed).toBeGreaterThanOrEqual(1);
    const { rows } = await sync.pool.query(`
      select c.relname, exists (select 1 from pg_index i join pg_class x on x.oid = i.indexrelid
                                 where i.indrelid = c.oid and x.relname like '%\\_key\\_idx') as keyed,
             (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz <= now() - interval '1 day' as closed
        from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = 'sync.run_change'::regclass`);
    for (const p of rows) expect(p.keyed, p.relname).toBe(p.closed);
    expect((await sync.pool.query(`select sync.maintain() as r`)).rows[0].r.change_partitions_indexed).toBe(0);
  });
});
