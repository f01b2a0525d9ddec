import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { until } from './helpers/until.js';
import { engineFor } from './helpers/engine.js';
import type { Engine } from '../src/engine/run.js';
import { startWorker, cronItems, type WorkerHandle } from '../src/worker/worker.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const jobs = async () => (await sync.pool.query(
  `select queue_name, key, task_identifier, locked_by, attempts from graphile_worker.jobs order by id`)).rows;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('worker'));
  const ddl = `create table parents (id int primary key, name text);
    create table children (id int primary key, parent_id int references parents, name text)`;
  await source.pool.query(`${ddl}; insert into parents select i, 'p' || i from generate_series(1, 50) i;
    insert into children select i, 1 + i % 50, 'c' || i from generate_series(1, 200) i`);
  await sync.pool.query(ddl);
  engine = await engineFor(sync, source, ENTITIES);
});
afterAll(() => engine.close());

const ENTITIES = {
    parents: { source: 'src', from: { table: 'parents' }, target: 'parents', key: ['id'], schedule: '*/5 * * * *' },
    children: { source: 'src', from: { table: 'children' }, target: 'children', key: ['id'], dependsOn: ['parents'] },
    // pg_sleep per row makes a fetch that outlives a graceful-shutdown deadline.
    slow: { source: 'src', from: { query: 'select id, name from parents where pg_sleep(0.5) is not null' },
      target: 'parents', key: ['id'], mode: 'upsert' },
};

describe('worker', () => {
  it('sync.request enqueues one job per entity on its own queue; repeated requests collapse', async () => {
    await sync.pool.query(`select sync.request('parents'), sync.request('parents')`);
    expect(await jobs()).toEqual([
      { queue_name: 'sync:parents', key: 'sync:parents', task_identifier: 'sync_entity', locked_by: null, attempts: 0 },
    ]);
  });

  it('sync.request rejects an unknown entity with a hint', async () => {
    await expect(sync.pool.query(`select sync.request('nope')`)).rejects.toThrow(/unknown entity nope/);
  });

  it('turns a fullSchedule into a full-run cron item on the same queue', async () => {
    const withFull = await engineFor(sync, source, {
      parents: { source: 'src', from: { table: 'parents' }, target: 'parents', key: ['id'], schedule: '*/5 * * * *',
        cursor: { column: 'id' }, fullSchedule: '0 3 * * *' },
    });
    const items = await cronItems(withFull);
    expect(items.map((i) => [i.identifier, i.options.queueName, i.payload])).toEqual([
      ['sync:parents', 'sync:parents', { entity: 'parents', trigger: 'cron' }],
      ['sync-full:parents', 'sync:parents', { entity: 'parents', trigger: 'cron', full: true }],
    ]);
    await withFull.close();
    engine = await engineFor(sync, source, ENTITIES);
  });

  it('turns entity schedules into cron items with the entity queue', async () => {
    const items = await cronItems(engine);
    expect(items.map((i) => [i.identifier, i.task, i.options.queueName, i.payload])).toEqual([
      ['sync:parents', 'sync_entity', 'sync:parents', { entity: 'parents', trigger: 'cron' }],
    ]);
  });

  it('runs a requested sync, then its dependents, and records the job id', async () => {
    const handle = await startWorker(engine, { concurrency: 2 });
    try {
      const runs = await until('parents and children synced', async () => {
        const { rows } = await sync.pool.query(
          `select entity, trigger, status, job_id is not null as from_job from sync.run where entity <> 'slow' order by id`);
        return rows.length >= 2 && rows.every((r) => r.status !== 'running') ? rows : null;
      });
      expect(runs).toEqual([
        { entity: 'parents', trigger: 'manual', status: 'succeeded', from_job: true },
        { entity: 'children', trigger: 'dependency', status: 'succeeded', from_job: true },
      ]);
      expect((await sync.pool.query('select count(*)::int as n from children')).rows[0].n).toBe(200);
    } finally {
      await handle.stop();
    }
  });

  it('graceful shutdown during a long fetch cancels the run, merges nothing and leaves the job unlocked for a retry', async () => {
    await sync.pool.query(`update parents set name = 'local edit' where id = 1`);
    const handle: WorkerHandle = await startWorker(engine, { concurrency: 1 });
    await sync.pool.query(`select sync.request('slow')`);
    await until('slow run started', async () => (await sync.pool.query(
      `select 1 from sync.run where entity = 'slow' and status = 'running'`)).rowCount);
    await handle.stop();
    const run = (await sync.pool.query(`select status, error from sync.run where entity = 'slow' order by id desc limit 1`)).rows[0];
    expect(run).toEqual({ status: 'cancelled', error: 'the worker is shutting down' });
    expect((await sync.pool.query(`select name from parents where id = 1`)).rows[0].name).toBe('local edit');
    const left = await jobs();
    expect(left).toEqual([expect.objectContaining({ queue_name: 'sync:slow', locked_by: null, attempts: 1 })]);
    expect((await sync.pool.query(`select count(*)::int as n from sync.run where status = 'running'`)).rows[0].n).toBe(0);
  });
});
