/**
 * A log-capture slot that goes away while the worker's loop (startLogLoop)
 * drives the entity (issue 15, "slot loss"): the loop notices it at its next
 * polls, raises one log_slot_lost alert (its occurrences may grow) and does
 * not start a failing run every poll; the entity's changes wait; a run with
 * `full: true` takes a new snapshot, resolves the alert, and the loop goes on
 * applying changes from the new slot. A slot that comes back under the same
 * name but further on (created again by hand, or read by someone else) has
 * lost the changes in between: that is reported the same way, never applied
 * as if nothing was missing.
 *
 * The source removing WAL a slot needs (wal_status "lost") needs
 * max_slot_wal_keep_size, a server-wide setting the test files share: not
 * changed here.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { checksum } from './helpers/gen.js';
import { until } from './helpers/until.js';
import type { Engine } from '../src/engine/run.js';
import { startLogLoop, type LogLoop } from '../src/worker/log-loop.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

// Slot names are server-wide and test files run side by side on one server: entity names of this file's own.
const ENTITY = 'loss_items';
const SLOT = 'syncline_loss_items';
const DDL = `create table items (tenant text not null, id int not null, name text, primary key (tenant, id))`;
const ENTITIES = {
  [ENTITY]: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'], capture: 'log', deleteGuard: false },
  loss_taken: { source: 'src', from: { table: 'items' }, target: 'taken', key: ['tenant', 'id'], capture: 'log', deleteGuard: false },
};

const state = (db: TestDatabase) => checksum(db.pool, 'items');
const has = async (id: number) => (await sync.pool.query('select 1 from items where id = $1', [id])).rows.length > 0;
const runsSince = async (id: number) => (await sync.pool.query<{ status: string; n: number }>(
  `select status, count(*)::int as n from sync.run where entity = $2 and id > $1 group by 1 order by 1`, [id, ENTITY])).rows;
const lastRunId = async () => Number((await sync.pool.query(`select coalesce(max(id), 0) as id from sync.run`)).rows[0].id);
const openAlerts = async (kind: string) => (await sync.pool.query(
  `select severity, message, occurrences from sync.alert where kind = $1 and entity = $2 and resolved_at is null`, [kind, ENTITY])).rows;
const observedAt = async () => (await sync.pool.query(
  'select observed_at, wal_status from sync.log_capture where entity = $1', [ENTITY])).rows[0] as { observed_at: Date | null; wal_status: string };

/** Waits until the loop has looked at the slot `polls` more times (each look records its time). */
async function polls(n: number): Promise<void> {
  let last = (await observedAt()).observed_at?.getTime() ?? 0;
  for (let i = 0; i < n; i++) {
    last = await until(`poll ${i + 1} of ${n}`, async () => {
      const at = (await observedAt()).observed_at?.getTime() ?? 0;
      return at > last && at;
    });
  }
}

/** Drops the slot; a poll may be peeking it at that moment (the slot is then active), so it is tried again. */
const dropSlot = () => until('the slot dropped', async () =>
  source.pool.query('select pg_drop_replication_slot($1)', [SLOT]).then(() => true, (err: Error) => {
    if (!/is active/.test(err.message)) throw err;
    return false;
  }));

let loop: LogLoop | undefined;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('log_slot_loss'));
  await source.pool.query(`${DDL}; insert into items select 'acme', i, 'n' || i from generate_series(1, 100) i`);
  await sync.pool.query(`${DDL}; ${DDL.replace('items', 'taken')}`);
  engine = await engineFor(sync, source, ENTITIES);
  const first = await engine.run(ENTITY, { trigger: 'manual' });
  expect(first, first.error).toMatchObject({ status: 'succeeded', inserted: 100 });
});

afterAll(async () => {
  await loop?.stop();
  await engine?.close();
});

describe('a log-capture slot lost while the worker loop runs', () => {
  it('a slot of the same name in another database of the source server is named in the error, not dropped', async () => {
    // Slot names are server-wide: the Syncline database stands in for another database on the source's server.
    await sync.pool.query(`select pg_create_logical_replication_slot('syncline_loss_taken', 'pgoutput')`);
    try {
      const r = await engine.run('loss_taken', { trigger: 'manual' });
      expect(r.status).toBe('failed');
      expect(r.error).toContain(`the source server has a slot of that name in database ${sync.name} (slot names are server-wide)`);
      expect(r.error).toMatch(/Rename the entity, or drop that slot if nothing uses it: select pg_drop_replication_slot\('syncline_loss_taken'\)/);
      expect((await sync.pool.query(`select 1 from pg_replication_slots where slot_name = 'syncline_loss_taken'`)).rows).toHaveLength(1);
    } finally {
      await sync.pool.query(`select pg_drop_replication_slot('syncline_loss_taken')`);
    }
    const again = await engine.run('loss_taken', { trigger: 'manual' });
    expect(again, again.error).toMatchObject({ status: 'succeeded', inserted: 100 });
  });

  it('raises one alert, starts no failing runs, waits, and a full run recovers', async () => {
    loop = startLogLoop(engine, { everyMs: 50 });
    await source.pool.query(`insert into items values ('acme', 1000, 'before the loss')`);
    await until('the loop applied the insert', () => has(1000));

    const since = await lastRunId();
    await dropSlot();
    await source.pool.query(`insert into items values ('acme', 1001, 'while lost')`);
    await until('the loss is reported', async () => (await openAlerts('log_slot_lost')).length > 0);
    await polls(10);

    // One open alert, critical, saying what to do; the polls after it only count.
    const alerts = await openAlerts('log_slot_lost');
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatchObject({ severity: 'critical', message: expect.stringMatching(/syncline_loss_items.*gone.*syncline sync loss_items --full/) });
    expect((await observedAt()).wal_status).toBe('missing');
    // No run every poll: at most the one that found the slot gone failed.
    const runs = await runsSince(since);
    expect(runs.filter((r) => r.status !== 'failed'), JSON.stringify(runs)).toEqual([]);
    expect(runs.reduce((n, r) => n + r.n, 0), JSON.stringify(runs)).toBeLessThanOrEqual(1);
    expect(await has(1001)).toBe(false);

    const full = await engine.run(ENTITY, { trigger: 'manual', full: true });
    expect(full.status, full.error).toBe('succeeded');
    expect(await state(sync)).toEqual(await state(source));
    expect(await openAlerts('log_slot_lost')).toEqual([]);
    // The loop goes on with the new slot.
    await source.pool.query(`insert into items values ('acme', 1002, 'after the new snapshot'); update items set name = 'renamed' where id = 1`);
    await until('the loop applied the changes after the new snapshot', async () => (await state(sync)) === (await state(source)));
    expect(await openAlerts('log_slot_lost')).toEqual([]);
  }, 180_000);

  it('a slot created again under its name, past the applied position, is reported as lost, not read from', async () => {
    await until('the loop caught up', async () => (await state(sync)) === (await state(source)));
    await loop!.stop();
    loop = undefined;
    await dropSlot();
    // These changes are in no slot: a slot created now starts after them.
    await source.pool.query(`insert into items values ('acme', 2000, 'in no slot'); delete from items where id = 2`);
    await source.pool.query(`select pg_create_logical_replication_slot($1, 'pgoutput')`, [SLOT]);
    await source.pool.query(`insert into items values ('acme', 2001, 'in the new slot')`);

    const r = await engine.run(ENTITY, { trigger: 'manual' });
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/syncline_loss_items.*past the position.*syncline sync loss_items --full/);
    expect(await openAlerts('log_slot_lost')).toHaveLength(1);
    expect(await has(2001)).toBe(false);

    // The loop does not run it either.
    const since = await lastRunId();
    loop = startLogLoop(engine, { everyMs: 50 });
    await polls(5);
    expect(await runsSince(since)).toEqual([]);
    expect(await openAlerts('log_slot_lost')).toHaveLength(1);

    const full = await engine.run(ENTITY, { trigger: 'manual', full: true });
    expect(full.status, full.error).toBe('succeeded');
    expect(await state(sync)).toEqual(await state(source));
    expect(await openAlerts('log_slot_lost')).toEqual([]);
  }, 180_000);
});
