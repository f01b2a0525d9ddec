import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { until } from './helpers/until.js';
import { checksum } from './helpers/gen.js';
import { loadConfig } from '../src/config/load.js';
import { applyConfig } from '../src/config/apply.js';
import { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let configFile: string;
let engine: Engine;
const children = new Set<ChildProcess>();

const ROWS = 4000;
const CHUNKS = 16;

/*
 * The target's name column is a domain whose check sleeps while ctl.ms > 0:
 * the staging table takes the target's types, so every chunk's COPY into it
 * is slow while the tests need it to be, and fast otherwise.
 */
beforeAll(async () => {
  ({ sync, source } = await testDatabases('chunkw'));
  await source.pool.query(`create table items (tenant text, id int, name text, pad text, primary key (tenant, id));
    insert into items select case when i % 3 = 0 then 'b' else 'a' end, i, 'n' || i, repeat('x', 500) from generate_series(1, ${ROWS}) i`);
  await sync.pool.query(`create table ctl (ms float8 not null); insert into ctl values (0);
    create function slow_row() returns boolean language plpgsql volatile as $$
    declare v_ms float8 := (select ms from ctl);
    begin if v_ms > 0 then perform pg_sleep(v_ms / 1000); end if; return true; end $$;
    create domain slow_text as text check (slow_row());
    create table items (tenant text, id int, name slow_text, pad text, primary key (tenant, id));
    update sync.setting set value = '1 second' where name = 'worker_heartbeat'`);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-chunks-'));
  configFile = path.join(dir, 'syncline.config.json');
  writeFileSync(configFile, JSON.stringify({
    server: { withWorker: false },
    sources: { src: { kind: 'postgres', url: source.url } },
    entities: {
      items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'], tenant: { column: 'tenant', value: 'a' },
        diff: 'off', snapshot: { chunks: CHUNKS, minRows: 0 } },
    },
  }));
  const cfg = loadConfig(configFile, { ...process.env });
  await applyConfig(sync.pool, cfg);
  engine = new Engine(sync.pool, sync.url, cfg);
  // Synced before any worker starts: a worker's start-up wave (entities
  // never synced) must not race the tests' own runs.
  expect((await engine.run('items', { trigger: 'manual' })).status).toBe('succeeded');
});
afterEach(async () => {
  for (const c of children) c.kill('SIGKILL');
  children.clear();
  await sync.pool.query('update ctl set ms = 0');
});
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await engine?.close();
});

/** A `syncline worker` process whose sessions on the Syncline database carry `app` as application_name. */
async function startWorkerProcess(app: string): Promise<ChildProcess> {
  const url = new URL(sync.url);
  url.searchParams.set('application_name', app);
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'worker', '--concurrency', '2'], {
    env: { ...process.env, DATABASE_URL: url.toString(), SYNCLINE_CONFIG: configFile, SYNCLINE_LOG_LEVEL: 'silent' }, stdio: 'ignore',
  });
  children.add(child);
  await until(`worker ${app} announced`, async () => (await sync.pool.query(
    'select 1 from sync.worker where pid = $1 and stopped_at is null', [child.pid])).rowCount, 60_000);
  return child;
}

const sourceA = () => checksum(source.pool, `(select * from items where tenant = 'a')`);
const chunksOf = async (runId: number | null) => (await sync.pool.query(
  `select chunk, status, rows::int, taken_by from sync.run_chunk where run_id = $1 order by chunk`, [runId])).rows;
const copyingIn = (app: string) => sync.pool.query(
  `select pid from pg_stat_activity where application_name = $1 and state = 'active' and query ilike 'copy sync_staging.%'`, [app]);

describe('a chunked run with workers', () => {
  it('spreads its chunks over the workers\' sessions and merges once', async () => {
    await Promise.all([startWorkerProcess('chunk-w1'), startWorkerProcess('chunk-w2')]);
    await sync.pool.query('update ctl set ms = 0.5');
    const r = await engine.run('items', { trigger: 'manual', full: true });
    expect(r).toMatchObject({ status: 'succeeded', quarantined: 0, fetched: Math.ceil(ROWS * 2 / 3) });
    const chunks = await chunksOf(r.runId);
    expect(chunks).toHaveLength(CHUNKS);
    expect(chunks.every((c) => c.status === 'done')).toBe(true);
    expect(new Set(chunks.map((c) => c.taken_by.pid)).size).toBeGreaterThan(1);
    expect(chunks.some((c) => c.taken_by.who !== 'run')).toBe(true);
    expect(chunks.reduce((n, c) => n + c.rows, 0)).toBe(r.fetched);
    expect((await sync.pool.query(`select detail -> 'chunks' as c from sync.run where id = $1`, [r.runId])).rows[0].c)
      .toEqual({ total: CHUNKS, done: CHUNKS, rows: r.fetched });
    expect(await checksum(sync.pool, 'items')).toBe(await sourceA());
    expect((await sync.pool.query(`select count(*)::int as n from sync.run where entity = 'items' and id >= $1`, [r.runId])).rows[0].n).toBe(1);
  }, 120_000);

  it('reads every chunk in one snapshot: rows the source moves, deletes and adds meanwhile do not tear it', async () => {
    await sync.pool.query('update ctl set ms = 0.5');
    const before = await sourceA();
    let runId: number | null = null;
    const run = engine.run('items', { trigger: 'manual', full: true, onStart: (id) => { runId = id; } });
    await until('a chunk is read', async () => runId !== null && (await sync.pool.query(
      `select 1 from sync.run_chunk where run_id = $1 and status = 'done'`, [runId])).rowCount);
    // Every row gets a new version in other blocks (some past the split's
    // last block), some go, some come: a chunk reading now would see them.
    await source.pool.query(`begin; update items set name = name || '*';
      delete from items where id % 5 = 0; insert into items select 'a', ${ROWS} + i, 'late', repeat('z', 500) from generate_series(1, 500) i; commit`);
    const r = await run;
    expect(r).toMatchObject({ status: 'succeeded', quarantined: 0 });
    expect(await checksum(sync.pool, 'items')).toBe(before);
    await sync.pool.query('update ctl set ms = 0');
    expect((await engine.run('items', { trigger: 'manual', full: true })).status).toBe('succeeded');
    expect(await checksum(sync.pool, 'items')).toBe(await sourceA());
  }, 120_000);

  it('takes again a chunk whose worker was killed mid-COPY: the run completes with every row once', async () => {
    const victim = await startWorkerProcess('chunk-victim');
    await sync.pool.query('update ctl set ms = 1');
    const r0 = (await sync.pool.query(`select coalesce(max(id), 0)::int as id from sync.run`)).rows[0].id;
    const run = engine.run('items', { trigger: 'manual', full: true });
    const copying = await until('the worker copies a chunk', async () => (await copyingIn('chunk-victim')).rows[0]);
    victim.kill('SIGKILL');
    await until('the killed worker\'s session is gone', async () =>
      !(await sync.pool.query('select 1 from pg_stat_activity where pid = $1', [copying.pid])).rowCount);
    await sync.pool.query('update ctl set ms = 0');
    const r = await run;
    expect(r.runId).toBeGreaterThan(r0);
    expect(r).toMatchObject({ status: 'succeeded', quarantined: 0 });
    const chunks = await chunksOf(r.runId);
    expect(chunks.every((c) => c.status === 'done')).toBe(true);
    expect(chunks.reduce((n, c) => n + c.rows, 0)).toBe(r.fetched);
    expect(await checksum(sync.pool, 'items')).toBe(await sourceA());
  }, 120_000);

  it('sync.cancel stops a chunked run: nothing merges, its pending chunks are cancelled and its queued jobs removed', async () => {
    await sync.pool.query('update ctl set ms = 0.5');
    const before = await checksum(sync.pool, 'items');
    await source.pool.query(`update items set name = name || '+' where id % 2 = 0`);
    let runId: number | null = null;
    const run = engine.run('items', { trigger: 'manual', full: true, onStart: (id) => { runId = id; } });
    await until('a chunk is read', async () => runId !== null && (await sync.pool.query(
      `select 1 from sync.run_chunk where run_id = $1 and status = 'done'`, [runId])).rowCount);
    await sync.pool.query('select sync.cancel($1)', [runId]);
    const r = await run;
    expect(r.status).toBe('cancelled');
    expect(await checksum(sync.pool, 'items')).toBe(before);
    const states = (await chunksOf(r.runId)).map((c) => c.status);
    expect(states).toContain('cancelled');
    expect(states.every((s) => s !== 'pending')).toBe(true);
    expect((await sync.pool.query(`select count(*)::int as n from graphile_worker.jobs where key like $1`, [`chunk:${r.runId}:%`])).rows[0].n).toBe(0);
  }, 120_000);

  it('a run whose process was killed leaves chunks that block nothing: the next run completes', async () => {
    await sync.pool.query('update ctl set ms = 0.5');
    const r0 = (await sync.pool.query(`select coalesce(max(id), 0)::int as id from sync.run`)).rows[0].id;
    const url = new URL(sync.url);
    url.searchParams.set('application_name', 'chunk-coordinator');
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'sync', 'items', '--full'], {
      env: { ...process.env, DATABASE_URL: url.toString(), SYNCLINE_CONFIG: configFile, SYNCLINE_LOG_LEVEL: 'silent' }, stdio: 'ignore',
    });
    children.add(child);
    const killed = await until('the CLI run read a chunk', async () => (await sync.pool.query(
      `select c.run_id::int as id from sync.run_chunk c where c.run_id > $1 and c.status = 'done' limit 1`, [r0])).rows[0]?.id);
    child.kill('SIGKILL');
    await until('its sessions are gone', async () =>
      !(await sync.pool.query(`select 1 from pg_stat_activity where application_name = 'chunk-coordinator'`)).rowCount);
    await sync.pool.query('update ctl set ms = 0');
    const r = await engine.run('items', { trigger: 'manual', full: true });
    expect(r).toMatchObject({ status: 'succeeded', quarantined: 0 });
    expect(await checksum(sync.pool, 'items')).toBe(await sourceA());
    expect((await sync.pool.query(`select status from sync.run where id = $1`, [killed])).rows[0].status).toBe('abandoned');
    // Its queued jobs, run by a worker now, find nothing to do.
    await startWorkerProcess('chunk-after-kill');
    await until('its jobs ran', async () => !(await sync.pool.query(
      `select 1 from graphile_worker.jobs where key like $1`, [`chunk:${killed}:%`])).rowCount);
    expect((await sync.pool.query(`select count(*)::int as n from sync.run_chunk where run_id = $1 and status = 'done'`, [killed])).rows[0].n)
      .toBeLessThan(CHUNKS);
  }, 120_000);

  it('the CLI prints the chunks as they come in', async () => {
    const out = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'sync', 'items', '--full'], {
        env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: configFile, SYNCLINE_LOG_LEVEL: 'silent' }, stdio: ['ignore', 'ignore', 'pipe'],
      });
      children.add(child);
      let err = '';
      child.stderr!.on('data', (d) => { err += String(d); });
      child.on('exit', (code) => resolve({ code, err }));
    });
    expect(out.code).toBe(0);
    expect(out.err).toContain(`items: ${CHUNKS} of ${CHUNKS} chunks read`);
  }, 120_000);

  it('a late sync_chunk job of a finished run does nothing', async () => {
    const { rows: [last] } = await sync.pool.query(`select max(run_id)::int as id from sync.chunked_run`);
    await sync.pool.query(`select graphile_worker.add_job('sync_chunk', json_build_object('run', $1::int), job_key := 'late')`, [last.id]);
    await startWorkerProcess('chunk-late');
    await until('the late job ran', async () => !(await sync.pool.query(`select 1 from graphile_worker.jobs where key = 'late'`)).rowCount);
    expect((await sync.pool.query(`select count(*)::int as n from sync.run_chunk where run_id = $1 and status <> 'done'`, [last.id])).rows[0].n).toBe(0);
    expect(await checksum(sync.pool, 'items')).toBe(await sourceA());
  }, 120_000);
});
