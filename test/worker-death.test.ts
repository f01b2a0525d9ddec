import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { until } from './helpers/until.js';
import { loadConfig } from '../src/config/load.js';
import { applyConfig } from '../src/config/apply.js';
import { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let configFile: string;
const children = new Set<ChildProcess>();

// Rows the slow entity fetches, each after a pause while source.ctl.slow is on.
const ROWS = 400;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('death'));
  await source.pool.query(`create table ctl (slow boolean not null, merge_ms int not null);
    insert into ctl values (true, 0);
    create table items (id int primary key, name text);
    insert into items select i, 'n' || i from generate_series(1, ${ROWS}) i`);
  await sync.pool.query(`create table items (id int primary key, name text);
    create table merge_pause (ms int not null); insert into merge_pause values (0);
    create function slow_merge() returns trigger language plpgsql as $$
    begin perform pg_sleep((select ms from merge_pause) / 1000.0); return null; end $$;
    create trigger slow_merge after insert or update or delete on items for each statement execute function slow_merge();
    update sync.setting set value = '1 second' where name = 'worker_heartbeat';
    update sync.setting set value = '5 seconds' where name = 'worker_timeout'`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-death-'));
  configFile = path.join(dir, 'syncline.config.json');
  writeFileSync(configFile, JSON.stringify({
    server: { withWorker: false },
    sources: { src: { kind: 'postgres', url: source.url } },
    entities: {
      items: { source: 'src', from: { query: 'select id, name from items where pg_sleep(case when (select slow from ctl) then 0.02 + id * 0 else 0 end) is not null' },
        target: 'items', key: ['id'], mode: 'upsert' },
    },
  }));
  // Synced once before any worker starts: a worker's start-up wave (entities
  // never synced) must not race the tests' own requests.
  const cfg = loadConfig(configFile, { ...process.env });
  await applyConfig(sync.pool, cfg);
  const engine = new Engine(sync.pool, sync.url, cfg);
  await source.pool.query('update ctl set slow = false');
  expect((await engine.run('items', { trigger: 'manual' })).status).toBe('succeeded');
  await engine.close();
});
afterEach(() => {
  for (const c of children) c.kill('SIGKILL');
  children.clear();
});
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
});

/** A worker process of its own (the CLI's `worker`), once it has announced itself in sync.worker. */
async function startWorkerProcess(): Promise<{ child: ChildProcess; pid: number }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'worker', '--concurrency', '1'], {
    env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: configFile, SYNCLINE_LOG_LEVEL: 'silent' }, stdio: 'ignore',
  });
  children.add(child);
  await until('the worker announced', async () => (await sync.pool.query(
    'select 1 from sync.worker where pid = $1 and stopped_at is null', [child.pid])).rowCount, 60_000);
  return { child, pid: child.pid! };
}

const runsOf = async () => (await sync.pool.query(
  `select id, status, error, worker_id from sync.run where entity = 'items' order by id`)).rows;
const stateOf = async () => (await sync.pool.query(`select state from sync.status where entity = 'items'`)).rows[0].state as string;

/**
 * Two workers; kills (kill -9) the one running items once its run reached
 * `phase`; returns the states sync.status showed until the entity ran again.
 */
async function killDuring(phase: 'fetch' | 'merge'): Promise<{ killed: number; states: string[] }> {
  const workers = [await startWorkerProcess(), await startWorkerProcess()];
  const { rows: [req] } = await sync.pool.query(`select sync.request('items') as wave`);
  // A slow source sends its rows at the end of the fetch: no progress before.
  const run = await until(`a run in its ${phase}`, async () => (await sync.pool.query(
    `select id, worker_id from sync.run where entity = 'items' and status = 'running' and wave_id = $1
        and coalesce(progress ->> 'phase', 'fetch') = $2 and started_at < now() - interval '1 second'`,
    [req.wave, phase])).rows[0], 60_000).catch(async (err) => {
    const runs = (await sync.pool.query('select id, status, wave_id, worker_id, progress, error from sync.run order by id')).rows;
    const waves = (await sync.pool.query('select * from sync.wave_entity')).rows;
    const jobs = (await sync.pool.query('select key, locked_by, attempts, last_error from graphile_worker.jobs')).rows;
    throw new Error(`${err.message}: ${JSON.stringify({ req, runs, waves, jobs })}`);
  });
  const { rows: [owner] } = await sync.pool.query('select pid from sync.worker where id = $1', [run.worker_id]);
  const victim = workers.find((w) => w.pid === owner.pid)!;
  const survivor = workers.find((w) => w !== victim)!;
  victim.child.kill('SIGKILL');
  await source.pool.query('update ctl set slow = false');
  await sync.pool.query('update merge_pause set ms = 0');
  const states: string[] = [];
  await until('the entity ran again and the wave closed', async () => {
    states.push(await stateOf());
    const { rows } = await sync.pool.query(`select finished_at is not null as done from sync.wave where id = $1`, [req.wave]);
    return rows[0].done;
  }, 110_000);
  const dead = await sync.pool.query('select bool_and(dead_at is not null) as dead from sync.worker where pid = $1', [victim.pid]);
  expect(dead.rows[0].dead).toBe(true);
  const runs = (await runsOf()).filter((r) => r.id >= run.id);
  if (phase === 'fetch') {
    expect(runs[0]).toMatchObject({ id: run.id, status: 'abandoned', worker_id: run.worker_id });
    expect(runs.at(-1)).toMatchObject({ status: 'succeeded' });
    const { rows: [last] } = await sync.pool.query('select pid from sync.worker where id = $1', [runs.at(-1)!.worker_id]);
    expect(last.pid).toBe(survivor.pid);
  } else {
    // The merge is one statement the server runs to its end whatever became
    // of the client: it committed whole (or, cut off, rolled back whole).
    expect(['succeeded', 'abandoned']).toContain(runs[0].status);
    expect(runs.at(-1)).toMatchObject({ status: 'succeeded' });
  }
  expect(runs.filter((r) => r.status === 'running')).toEqual([]);
  const staging = await sync.pool.query(`select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'sync_staging' and relname like $1`, [`run_${run.id}%`]);
  expect(staging.rows).toEqual([]);
  survivor.child.kill('SIGTERM');
  return { killed: run.id, states };
}

describe('a worker killed with SIGKILL while another is alive', () => {
  it('mid-fetch: its job and queue are released, the entity runs again on the live worker, and sync.status shows it stalled meanwhile', async () => {
    await source.pool.query('update ctl set slow = true');
    const { states } = await killDuring('fetch');
    expect(states).toContain('stalled');
    expect(states.at(-1)).toBe('ok');
    const alerts = await sync.pool.query(`select kind, resolved_at is not null as resolved from sync.alert where entity = 'items' and kind = 'stalled'`);
    expect(alerts.rows).toEqual([{ kind: 'stalled', resolved: true }]);
    expect((await sync.pool.query('select count(*)::int as n from items')).rows[0].n).toBe(ROWS);
  });

  it('mid-merge: the merge commits or rolls back whole, nothing stays running, and the target equals the source', async () => {
    // Every row changes: the run merges through staging, where the pause is.
    await source.pool.query(`update ctl set slow = false; update items set name = name || '+'`);
    await sync.pool.query('update merge_pause set ms = 3000');
    const { killed } = await killDuring('merge');
    const { rows: [k] } = await sync.pool.query('select status, updated from sync.run where id = $1', [killed]);
    const changes = await sync.pool.query('select count(*)::int as n from sync.run_change where run_id = $1', [killed]);
    expect(changes.rows[0].n).toBe(k.status === 'succeeded' ? ROWS : 0);
    const target = await sync.pool.query(`select count(*)::int as n, count(*) filter (where name like '%+')::int as changed from items`);
    expect(target.rows[0]).toEqual({ n: ROWS, changed: ROWS });
  });
});
