import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { until } from './helpers/until.js';
import { engineFor } from './helpers/engine.js';
import type { Engine } from '../src/engine/run.js';
import { cronItems, startWorker, type WorkerHandle } from '../src/worker/worker.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;
let handle: WorkerHandle;

/** The cron identifiers the running graphile-worker registered (it records each schedule it serves). */
const served = async () => (await sync.pool.query(
  `select identifier from graphile_worker._private_known_crontabs order by identifier`)).rows.map((r) => r.identifier);

beforeAll(async () => {
  ({ sync, source } = await testDatabases('reload'));
  await source.pool.query('create table items (id int primary key)');
  await sync.pool.query('create table items (id int primary key)');
  engine = await engineFor(sync, source, {
    items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['id'] },
  });
  handle = await startWorker(engine, { concurrency: 1 });
});
afterAll(async () => {
  await handle.stop();
  await engine.close();
});

describe('sync_config changed with plain UPDATE', () => {
  it('reaches the running worker: a new interval becomes a schedule without a restart, and the change is audited', async () => {
    expect(await served()).not.toContain('sync:items');
    await sync.pool.query(`update sync.entity set sync_interval = '5 minutes' where name = 'items'`);
    await until('the reload', async () => handle.reloads >= 1);
    await until('the schedule served', async () => (await served()).includes('sync:items'));
    const { rows } = await sync.pool.query(
      `select action, changes, changed_by from sync.config_change where entity = 'items' and action = 'update' order by id`);
    expect(rows.at(-1)).toMatchObject({ action: 'update', changes: { sync_interval: { old: null, new: '00:05:00' } } });
    const status = (await sync.pool.query(`select next_run_at, sync_interval from sync.status where entity = 'items'`)).rows[0];
    expect(new Date(status.next_run_at).getUTCMinutes() % 5).toBe(0);
  });

  it('an invalid change is refused with what to fix, and the worker keeps what it had', async () => {
    const reloads = handle.reloads;
    await expect(sync.pool.query(`update sync.entity set sync_interval = '30 seconds' where name = 'items'`))
      .rejects.toThrow(/sync_interval 00:00:30 is below the minimum of 1 minute/);
    await expect(sync.pool.query(`update sync.entity set schedule = '*/5 * * *' where name = 'items'`))
      .rejects.toThrow(/set schedule or sync_interval, not both/);
    await sync.pool.query(`select pg_sleep(1)`);
    expect(handle.reloads).toBe(reloads);
  });

  it('a threshold change is audited but does not restart the schedules', async () => {
    const reloads = handle.reloads;
    await sync.pool.query(`update sync.entity set failure_threshold = 5 where name = 'items'`);
    await sync.pool.query(`select pg_sleep(1)`);
    expect(handle.reloads).toBe(reloads);
    const { rows } = await sync.pool.query(`select changes from sync.config_change where entity = 'items' order by id desc limit 1`);
    expect(rows[0].changes).toEqual({ failure_threshold: { old: 3, new: 5 } });
  });

  it('disabling the entity reloads the running worker\'s schedules, without the entity', async () => {
    await sync.pool.query(`update sync.entity set enabled = false where name = 'items'`);
    await until('the reload', async () => handle.reloads >= 2);
    expect((await cronItems(engine)).map((i) => i.identifier)).not.toContain('sync:items');
  });
});

describe('live progress', () => {
  it('a run records its progress in sync.run.progress and announces it on sync_progress', async () => {
    await source.pool.query('insert into items select generate_series(1, 20000) on conflict do nothing');
    await source.pool.query('analyze items');
    const listener = await sync.pool.connect();
    const heard: { run_id: number; entity: string; progress: { phase: string } }[] = [];
    listener.on('notification', (n) => { if (n.channel === 'sync_progress') heard.push(JSON.parse(n.payload!)); });
    await listener.query('listen sync_progress');
    try {
      const r = await engine.run('items', { trigger: 'manual' });
      expect(r.status).toBe('succeeded');
      // Reports are written beside the run, not awaited by it.
      const progress = await until('the last report', async () => {
        const { rows } = await sync.pool.query('select progress from sync.run where id = $1', [r.runId]);
        return rows[0].progress.phase === 'done' && rows[0].progress;
      });
      expect(progress).toMatchObject({ phase: 'done', rows: 20000 });
      await until('the notifications', async () => heard.some((h) => h.progress.phase === 'done'));
      expect(heard.every((h) => h.run_id === r.runId && h.entity === 'items')).toBe(true);
      expect(heard.map((h) => h.progress.phase)).toContain('fetch');
    } finally {
      await listener.query('unlisten sync_progress');
      listener.release();
    }
  });
});
