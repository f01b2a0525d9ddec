/**
 * Log capture ("capture": "log", issue 15): a postgres source entity whose
 * runs read the source's write-ahead log through a replication slot. The
 * first run loads the snapshot the slot was created at; every later run
 * applies the changes since (inserts, updates, deletes, key changes,
 * TOASTed values an update left alone, truncates), tenant-scoped, and moves
 * the slot only after its merge committed.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { checksum } from './helpers/gen.js';
import type { Engine } from '../src/engine/run.js';
import { startLogLoop } from '../src/worker/log-loop.js';
import { until } from './helpers/until.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const DDL = `create table items (tenant text not null, id int not null, name text, qty int, big text, primary key (tenant, id))`;
const ENTITIES = {
  items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'], capture: 'log', deleteGuard: false },
  chunky: { source: 'src', from: { table: 'chunky' }, target: 'chunky', key: ['id'], capture: 'log', snapshot: { chunks: 4, minRows: 0 } },
  evolving: { source: 'src', from: { table: 'evolving' }, target: 'evolving', key: ['id'], capture: 'log', columns: ['id', 'name'] },
  acme: { source: 'src', from: { table: 'items' }, target: 'acme_items', key: ['tenant', 'id'], capture: 'log', tenant: { column: 'tenant', value: 'acme' }, deleteGuard: false },
};

const state = (db: TestDatabase, table = 'items') => checksum(db.pool, table);
const acmeOfSource = async () => (await source.pool.query(
  `select count(*) || ':' || coalesce(md5(string_agg(i::text, ',' order by tenant, id)), '') as s from items i where tenant = 'acme'`)).rows[0].s as string;
const acmeOfTarget = async () => (await sync.pool.query(
  `select count(*) || ':' || coalesce(md5(string_agg(i::text, ',' order by tenant, id)), '') as s from acme_items i`)).rows[0].s as string;
const changesOf = async (runId: number | null) => (await sync.pool.query(
  `select action, key from sync.run_change where run_id = $1 order by action, key::text`, [runId])).rows;
const detailLog = async (runId: number | null) => (await sync.pool.query(`select detail -> 'log' as log from sync.run where id = $1`, [runId])).rows[0].log;
const slotConfirmed = async (slot: string) => (await source.pool.query(
  'select confirmed_flush_lsn::text as lsn from pg_replication_slots where slot_name = $1', [slot])).rows[0]?.lsn as string | undefined;
const openAlerts = async (kind: string) => (await sync.pool.query(
  `select entity, severity, message from sync.alert where kind = $1 and resolved_at is null`, [kind])).rows;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('log_capture'));
  await source.pool.query(`${DDL};
    insert into items select case when i % 2 = 0 then 'acme' else 'globex' end, i, 'n' || i, i, null from generate_series(1, 200) i`);
  await sync.pool.query(`${DDL}; ${DDL.replace('items', 'acme_items')}; create table evolving (id int primary key, name text)`);
  await source.pool.query(`create table evolving (id int primary key, name text); insert into evolving values (1, 'one')`);
  await source.pool.query(`create table chunky (id int primary key, pad text);
    insert into chunky select i, repeat('p', 300) from generate_series(1, 6000) i; analyze chunky`);
  await sync.pool.query('create table chunky (id int primary key, pad text)');
  engine = await engineFor(sync, source, ENTITIES);
});

afterAll(async () => {
  await engine?.close();
});

describe('log capture', () => {
  it('loads the snapshot the slot starts at, then applies inserts, updates, deletes and key changes', async () => {
    const first = await engine.run('items', { trigger: 'manual' });
    expect(first).toMatchObject({ status: 'succeeded', inserted: 200 });
    expect(await detailLog(first.runId)).toMatchObject({ snapshot: true, slot: 'syncline_items' });
    expect(await state(sync)).toEqual(await state(source));
    const lc = (await sync.pool.query(`select applied_lsn::text, snapshot_lsn::text from sync.log_capture where entity = 'items'`)).rows[0];
    expect(lc.applied_lsn).toBe(lc.snapshot_lsn);

    await source.pool.query(`insert into items values ('acme', 1000, 'new', 1, null), ('globex', 1001, 'new', 2, null);
      update items set name = 'changed' where id in (2, 3);
      delete from items where id in (4, 5);
      update items set id = 2000 where tenant = 'acme' and id = 6;
      insert into items values ('acme', 3000, 'short-lived', 0, null);
      update items set qty = 7 where id = 3000;
      delete from items where id = 3000`);
    const r = await engine.run('items', { trigger: 'manual' });
    expect(r.status, r.error).toBe('succeeded');
    // One state a key (the short-lived key's insert, update and delete cancel out); a delete is no "unchanged" record.
    expect(r).toMatchObject({ status: 'succeeded', fetched: 8, inserted: 3, updated: 2, deleted: 3, unchanged: 0 });
    expect(await detailLog(r.runId)).toMatchObject({ changes: true, caught_up: true });
    expect(await state(sync)).toEqual(await state(source));
    expect((await changesOf(r.runId)).map((c) => `${c.action} ${c.key.join('/')}`)).toEqual([
      'delete acme/4', 'delete acme/6', 'delete globex/5',
      'insert acme/1000', 'insert acme/2000', 'insert globex/1001',
      'update acme/2', 'update globex/3',
    ]);
    // The slot is confirmed up to what was applied.
    const applied = (await sync.pool.query(`select applied_lsn::text as l from sync.log_capture where entity = 'items'`)).rows[0].l;
    expect(await slotConfirmed('syncline_items')).toBe(applied);

    // Nothing new: a run changes nothing.
    const again = await engine.run('items', { trigger: 'manual' });
    expect(again).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, deleted: 0, fetched: 0 });
  });

  it('keeps a TOASTed value an update did not touch', async () => {
    await source.pool.query(`update items set big = (select string_agg(md5(g::text), '') from generate_series(1, 400) g) where id = 10`);
    await source.pool.query(`update items set name = 'big row renamed' where id = 10`);
    const r = await engine.run('items', { trigger: 'manual' });
    expect(r.status, r.error).toBe('succeeded');
    expect(await state(sync)).toEqual(await state(source));
    // Only the second update in this run: the value comes from the target's row.
    await source.pool.query(`update items set qty = 99 where id = 10`);
    const r2 = await engine.run('items', { trigger: 'manual' });
    expect(r2).toMatchObject({ status: 'succeeded', updated: 1 });
    expect(await state(sync)).toEqual(await state(source));
    expect((await sync.pool.query('select length(big) as n from items where id = 10')).rows[0].n).toBe(12800);
  });

  it('applies only its tenant, and a row moving to another tenant leaves it', async () => {
    const first = await engine.run('acme', { trigger: 'manual' });
    expect(first.status, first.error).toBe('succeeded');
    expect(await acmeOfTarget()).toEqual(await acmeOfSource());
    await source.pool.query(`insert into items values ('acme', 5000, 'a', 1, null), ('globex', 5001, 'g', 1, null);
      update items set name = 'g changed' where tenant = 'globex' and id = 7;
      update items set tenant = 'globex' where tenant = 'acme' and id = 8;
      delete from items where tenant = 'globex' and id = 9`);
    const r = await engine.run('acme', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', inserted: 1, updated: 0, deleted: 1 });
    expect(await acmeOfTarget()).toEqual(await acmeOfSource());
  });

  it('polls without starting runs, moving the slot past WAL it does not need', async () => {
    await engine.run('items', { trigger: 'manual' });
    const before = await slotConfirmed('syncline_items');
    await source.pool.query('create table other (x int); insert into other select generate_series(1, 1000)');
    const runs = async () => (await sync.pool.query(`select count(*)::int as n from sync.run where entity = 'items'`)).rows[0].n as number;
    const n = await runs();
    const loop = startLogLoop(engine, { everyMs: 50 });
    try {
      await until('the slot moved past the other table\'s writes', async () => {
        const now = await slotConfirmed('syncline_items');
        return now !== before && now;
      });
      expect(await runs()).toBe(n);
      await source.pool.query(`insert into items values ('acme', 7000, 'via the loop', 1, null)`);
      await until('the loop applied the insert', async () =>
        (await sync.pool.query('select 1 from items where id = 7000')).rows.length > 0);
    } finally {
      await loop.stop();
    }
    const status = (await sync.pool.query(`select capture, log_lag_seconds, log_retained_bytes, state from sync.status where entity = 'items'`)).rows[0];
    expect(status).toMatchObject({ capture: 'log', state: 'ok' });
    expect(Number(status.log_lag_seconds)).toBeGreaterThanOrEqual(0);
  });

  it('applies a truncate as a snapshot, with an alert', async () => {
    await source.pool.query(`truncate items; insert into items values ('acme', 1, 'after', 1, null)`);
    const r = await engine.run('items', { trigger: 'manual' });
    expect(r.status, r.error).toBe('succeeded');
    expect(await state(sync)).toEqual(await state(source));
    expect(await openAlerts('log_truncate')).toMatchObject([{ entity: 'items' }]);
  });

  it('reports a lost slot, runs nothing until asked, and a --full run takes a new snapshot', async () => {
    await source.pool.query(`select pg_drop_replication_slot('syncline_items')`);
    await source.pool.query(`insert into items values ('globex', 8000, 'while lost', 1, null)`);
    const r = await engine.run('items', { trigger: 'manual' });
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/syncline_items.*gone.*syncline sync items --full/);
    expect(await openAlerts('log_slot_lost')).toMatchObject([{ entity: 'items', severity: 'critical' }]);
    const full = await engine.run('items', { trigger: 'manual', full: true });
    expect(full.status, full.error).toBe('succeeded');
    expect(await state(sync)).toEqual(await state(source));
    expect(await openAlerts('log_slot_lost')).toEqual([]);
    await source.pool.query(`update items set name = 'after the new snapshot' where id = 8000`);
    expect(await engine.run('items', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', updated: 1 });
    expect(await state(sync)).toEqual(await state(source));
  });

  it('reports schema changes: a new column is a warning, a synced column dropped or the table created again stops the runs until a new snapshot', async () => {
    const evolving = () => engine.run('evolving', { trigger: 'manual' });
    expect((await evolving()).status).toBe('succeeded');
    await source.pool.query(`alter table evolving add column extra int; insert into evolving values (2, 'two', 2)`);
    expect(await evolving()).toMatchObject({ status: 'succeeded', inserted: 1 });
    expect(await openAlerts('log_schema_changed')).toMatchObject([{ entity: 'evolving', severity: 'warning', message: expect.stringMatching(/extra added/) }]);
    await sync.pool.query(`select sync.resolve_alerts('evolving', array['log_schema_changed'])`);

    await source.pool.query(`drop table evolving; create table evolving (id int primary key, name text); insert into evolving values (3, 'three')`);
    const stopped = await evolving();
    expect(stopped.status).toBe('failed');
    expect(stopped.error).toMatch(/dropped and created again.*syncline sync evolving --full/);
    expect(await openAlerts('log_schema_changed')).toMatchObject([{ entity: 'evolving', severity: 'critical' }]);
    // The new snapshot lacks the old table's rows: the delete guard holds deleting two thirds of the target.
    expect(await engine.run('evolving', { trigger: 'manual', full: true })).toMatchObject({ status: 'partial', inserted: 1, deleted: 0, held: 2 });
    await source.pool.query(`insert into evolving values (4, 'four')`);
    expect(await evolving()).toMatchObject({ status: 'succeeded', inserted: 1 });

    await source.pool.query(`alter table evolving drop column name`);
    await source.pool.query(`insert into evolving values (5)`);
    const gone = await evolving();
    expect(gone.status).toBe('failed');
    expect(gone.error).toMatch(/name/);
  });

  it('reads a big snapshot in chunks, all in the slot\'s exported snapshot, then goes on from the log', async () => {
    // The loop of an earlier test may have loaded it already: a new snapshot either way.
    const first = await engine.run('chunky', { trigger: 'manual', full: true });
    expect(first.status, first.error).toBe('succeeded');
    expect(first.fetched).toBe(6000);
    const detail = (await sync.pool.query('select detail from sync.run where id = $1', [first.runId])).rows[0].detail;
    expect(detail.log).toMatchObject({ snapshot: true });
    expect(detail.chunks).toMatchObject({ total: 4, done: 4 });
    expect(await state(sync, 'chunky')).toEqual(await state(source, 'chunky'));
    await source.pool.query(`update chunky set pad = 'changed' where id % 100 = 0; delete from chunky where id > 5990; insert into chunky values (7000, 'new')`);
    expect(await engine.run('chunky', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', inserted: 1, updated: 59, deleted: 10 });
    expect(await state(sync, 'chunky')).toEqual(await state(source, 'chunky'));
  });

  // Last: it applies a config of its own.
  it('backs off an entity whose runs fail instead of failing it every poll', async () => {
    await sync.pool.query('create table gone (id int primary key)');
    const broken = await engineFor(sync, source, { gone: { source: 'src', from: { table: 'gone' }, target: 'gone', key: ['id'], capture: 'log' } });
    const failed = async () => (await sync.pool.query<{ at: Date }>(
      `select started_at as at from sync.run where entity = 'gone' and status = 'failed' order by id`)).rows.map((r) => r.at.getTime());
    const loop = startLogLoop(broken, { everyMs: 20 });
    try {
      await until('three failed runs', async () => (await failed()).length >= 3);
    } finally {
      await loop.stop();
      await broken.close();
    }
    const [a, b, c] = await failed();
    // Polled every 20 ms, it waited 2 s, then 4 s (at least; a loaded machine only waits longer).
    expect(b - a).toBeGreaterThanOrEqual(1900);
    expect(c - b).toBeGreaterThanOrEqual(3900);
    expect((await sync.pool.query(`select error from sync.run where entity = 'gone' order by id desc limit 1`)).rows[0].error)
      .toMatch(/from\.table cannot be read/);
  }, 120_000);
});
