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
    // Due only on 1 January at 00:00: the real minute's tick never finds it due during a test.
    parents: { source: 'src', from: { table: 'parents' }, target: 'parents', key: ['id'], schedule: '0 0 1 1 *' },
    children: { source: 'src', from: { table: 'children' }, target: 'children', key: ['id'], dependsOn: ['parents'] },
    // pg_sleep per row makes a fetch that outlives a graceful-shutdown deadline.
    slow: { source: 'src', from: { query: 'select id, name from parents where pg_sleep(0.5) is not null' },
      target: 'parents', key: ['id'], mode: 'upsert' },
};

describe('worker', () => {
  it('sync.request starts a wave: a job for the entity on its own queue, its dependents waiting; repeated requests join it', async () => {
    const { rows: [a] } = await sync.pool.query(`select sync.request('parents') as wave`);
    const { rows: [b] } = await sync.pool.query(`select sync.request('parents') as wave`);
    expect(b.wave).toBe(a.wave);
    expect(await jobs()).toEqual([
      { queue_name: 'sync:parents', key: `wave:${a.wave}:1:parents`, task_identifier: 'sync_entity', locked_by: null, attempts: 0 },
    ]);
    const members = await sync.pool.query('select entity, trigger, state, after from sync.wave_entity where wave_id = $1 order by entity', [a.wave]);
    expect(members.rows).toEqual([
      { entity: 'children', trigger: 'dependency', state: 'waiting', after: ['parents'] },
      { entity: 'parents', trigger: 'manual', state: 'ready', after: [] },
    ]);
  });

  it('sync.request rejects an unknown entity with a hint', async () => {
    await expect(sync.pool.query(`select sync.request('nope')`)).rejects.toThrow(/unknown entity nope/);
  });

  it('serves one schedule tick a minute; entity schedules and fullSchedules are read from sync.entity at each tick', async () => {
    const items = await cronItems(engine);
    expect(items.map((i) => [i.identifier, i.task])).toEqual([['sync_schedule', 'sync_schedule']]);
    await sync.pool.query(`update sync.entity set definition = definition || '{"fullSchedule": "0 3 1 1 *"}' where name = 'parents'`);
    const wave = async (tick: string) => {
      const { rows } = await sync.pool.query('select sync.schedule_wave($1) as id', [tick]);
      if (!rows[0].id) return null;
      return (await sync.pool.query('select entity, trigger, full_refresh from sync.wave_entity where wave_id = $1 order by entity', [rows[0].id])).rows;
    };
    // Waves of the minutes at hand: parents is pending in the request's wave, so these ticks leave it there.
    await sync.pool.query(`update sync.wave set finished_at = now() where finished_at is null`);
    expect(await wave('2030-01-01T00:01:30Z')).toBeNull();
    expect(await wave('2030-01-01T00:00:10Z')).toEqual([
      { entity: 'children', trigger: 'dependency', full_refresh: false },
      { entity: 'parents', trigger: 'cron', full_refresh: false },
    ]);
    expect(await wave('2030-01-01T00:00:40Z')).toBeNull(); // one wave a tick
    await sync.pool.query(`update sync.wave set finished_at = now() where finished_at is null`);
    expect(await wave('2031-01-01T03:00:00Z')).toEqual([
      { entity: 'children', trigger: 'dependency', full_refresh: false },
      { entity: 'parents', trigger: 'cron', full_refresh: true },
    ]);
    await sync.pool.query(`update sync.entity set definition = definition - 'fullSchedule' where name = 'parents'`);
    await sync.pool.query(`update sync.wave set finished_at = now() where finished_at is null;
      select graphile_worker.remove_job(key) from graphile_worker.jobs where key like 'wave:%'`);
  });

  it('runs a requested sync, then its dependents, and records the job id and the wave', async () => {
    const { rows: [req] } = await sync.pool.query(`select sync.request('parents') as wave`);
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
      const wave = await until('the wave closed', async () => (await sync.pool.query(
        'select finished_at is not null as done from sync.wave where id = $1', [req.wave])).rows[0].done);
      expect(wave).toBe(true);
      const waveRuns = await sync.pool.query(`select entity from sync.run where wave_id = $1 order by id`, [req.wave]);
      expect(waveRuns.rows.map((r) => r.entity)).toEqual(['parents', 'children']);
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
