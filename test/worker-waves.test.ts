import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { until } from './helpers/until.js';

let sync: TestDatabase;
let source: TestDatabase;
let configFile: string;
const children = new Set<ChildProcess>();

// a → b → c, a → d, and e + f → g: chains and a diamond, every root scheduled each minute.
const GRAPH: Record<string, string[]> = { a: [], b: ['a'], c: ['b'], d: ['a'], e: [], f: [], g: ['e', 'f'] };
const NAMES = Object.keys(GRAPH);
const WAVES = 4;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('waves3'));
  for (const n of NAMES) {
    await source.pool.query(`create table ${n} (id int primary key, v text); insert into ${n} select i, 'v' || i from generate_series(1, 200) i`);
    await sync.pool.query(`create table ${n} (id int primary key, v text)`);
  }
  await sync.pool.query(`update sync.setting set value = '1 second' where name = 'worker_heartbeat';
    update sync.setting set value = '5 seconds' where name = 'worker_timeout'`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-waves-'));
  configFile = path.join(dir, 'syncline.config.json');
  writeFileSync(configFile, JSON.stringify({
    server: { withWorker: false },
    sources: { src: { kind: 'postgres', url: source.url } },
    entities: Object.fromEntries(NAMES.map((n) => [n, {
      source: 'src', target: n, key: ['id'], mode: 'upsert', dependsOn: GRAPH[n],
      // A few milliseconds a row: long enough for a kill to land mid-run.
      from: { query: `select id, v from ${n} where pg_sleep(0.004 + id * 0) is not null` },
      // Due only at the ticks the test queues (1 January, 03:00): the real
      // minute's tick, which the workers queue too, never finds them due.
      ...(GRAPH[n].length ? {} : { schedule: '0 3 1 1 *' }),
    }])),
  }));
});
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
});

function startWorkerProcess(): ChildProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'worker', '--concurrency', '2'], {
    env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: configFile, SYNCLINE_LOG_LEVEL: 'silent' }, stdio: 'ignore',
  });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

/** 1 January, 03:00, of the w-th year from 2030: a tick at which the roots are due. */
const tickAt = (w: number) => new Date(Date.UTC(2030 + w, 0, 1, 3, 0));

/** The schedule tick of that moment, as graphile-worker's cron would queue it. */
async function tick(w: number): Promise<void> {
  await sync.pool.query(`select graphile_worker.add_job('sync_schedule', json_build_object('_cron', json_build_object('ts', $1::text)))`,
    [tickAt(w).toISOString()]);
}

describe('three workers, scheduled waves, random kills', () => {
  it('no two runs of an entity overlap, and every wave runs each entity once', async () => {
    const kills = fc.sample(fc.integer({ min: 300, max: 2500 }), { seed: 42, numRuns: WAVES });
    for (let i = 0; i < 3; i++) startWorkerProcess();
    await until('three workers announced', async () => (await sync.pool.query(
      `select count(distinct pid)::int as n from sync.worker where stopped_at is null and dead_at is null`)).rows[0].n >= 3, 90_000);
    // The first worker up syncs the never-synced entities in a start-up wave: let it end.
    await until('the start-up wave closed', async () => (await sync.pool.query(
      `select count(*) filter (where finished_at is null) = 0 and count(*) > 0 as done from sync.wave`)).rows[0].done, 90_000);
    for (let w = 0; w < WAVES; w++) {
      for (const n of NAMES) await source.pool.query(`update ${n} set v = 'w${w}-' || id`);
      await tick(w);
      const wave = await until(`wave ${w} started`, async () => (await sync.pool.query(
        'select id from sync.wave where tick = $1', [tickAt(w)])).rows[0]?.id, 60_000);
      // Kill -9 whichever worker holds a run of this wave after a while, and start another.
      await until(`a run of wave ${w} under way`, async () => (await sync.pool.query(
        `select 1 from sync.run where wave_id = $1 and status = 'running'`, [wave])).rowCount, 60_000);
      await new Promise((r) => setTimeout(r, kills[w]));
      const { rows: [victim] } = await sync.pool.query(`select w.pid from sync.run r join sync.worker w on w.id = r.worker_id
        where r.wave_id = $1 and r.status = 'running' limit 1`, [wave]);
      const child = [...children].find((c) => c.pid === victim?.pid);
      if (child) {
        child.kill('SIGKILL');
        startWorkerProcess();
      }
      await until(`wave ${w} closed`, async () => (await sync.pool.query(
        'select finished_at is not null as done from sync.wave where id = $1', [wave])).rows[0].done, 110_000);
    }
    const { rows: runs } = await sync.pool.query(`select id, entity, wave_id, status, started_at, finished_at from sync.run order by entity, started_at`);
    expect(runs.filter((r) => r.status === 'running')).toEqual([]);
    expect(runs.some((r) => r.status === 'abandoned')).toBe(true);
    for (const n of NAMES) {
      const mine = runs.filter((r) => r.entity === n);
      for (let i = 1; i < mine.length; i++) {
        expect(mine[i].started_at >= mine[i - 1].finished_at, `${n}: run ${mine[i].id} started before run ${mine[i - 1].id} ended`).toBe(true);
      }
    }
    const { rows: waves } = await sync.pool.query('select id from sync.wave order by id');
    expect(waves).toHaveLength(WAVES + 1);
    for (const { id } of waves) {
      const done = runs.filter((r) => Number(r.wave_id) === Number(id) && r.status === 'succeeded').map((r) => r.entity).sort();
      expect(done, `wave ${id}`).toEqual([...NAMES].sort());
    }
    // The target equals the source after the last wave.
    for (const n of NAMES) {
      const { rows } = await sync.pool.query(`select count(*)::int as n, count(*) filter (where v like 'w${WAVES - 1}-%')::int as last from ${n}`);
      expect(rows[0], n).toEqual({ n: 200, last: 200 });
    }
  });
});
