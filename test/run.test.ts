import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import pg from 'pg';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { until } from './helpers/until.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('run'));
  const ddl = `create table parents (id int primary key, name text);
    create table children (id int primary key, parent_id int references parents, name text)`;
  await source.pool.query(`${ddl}; insert into parents select i, 'p' || i from generate_series(1, 20) i;
    insert into children select i, 1 + i % 20, 'c' || i from generate_series(1, 40) i`);
  await sync.pool.query(ddl);
  engine = await engineFor(sync, source, {
    parents: { source: 'src', from: { table: 'parents' }, target: 'parents', key: ['id'] },
    children: { source: 'src', from: { table: 'children' }, target: 'children', key: ['id'], dependsOn: ['parents'] },
    ghost: { source: 'src', from: { table: 'parents' }, target: 'no_such_table', key: ['id'] },
    slow: { source: 'src', from: { query: 'select id, name from parents where pg_sleep(0.2) is not null' },
      target: 'parents', key: ['id'], mode: 'upsert' },
  });
});
afterAll(() => engine.close());

async function holdLock(entity: string) {
  const c = new pg.Client(sync.url);
  await c.connect();
  await c.query('select pg_advisory_lock(sync.entity_lock_key($1))', [entity]);
  return { release: async () => { await c.end(); } };
}

describe('a run', () => {
  it('does not start while another run of the entity holds its lock', async () => {
    const lock = await holdLock('parents');
    try {
      const r = await engine.run('parents', { trigger: 'manual' });
      expect(r.status).toBe('already-running');
    } finally {
      await lock.release();
    }
    expect((await engine.run('parents', { trigger: 'manual' })).status).toBe('succeeded');
  });

  it('of a dependent waits until a running dependency finishes', async () => {
    const lock = await holdLock('parents');
    let settled = false;
    const child = engine.run('children', { trigger: 'manual' }).finally(() => { settled = true; });
    // It is queued for the dependency's lock: an event, not a guess after a pause.
    await until('the dependent run to wait for the dependency\'s lock', async () => (await sync.pool.query(
      `select 1 from pg_locks where locktype = 'advisory' and not granted
          and database = (select oid from pg_database where datname = current_database())`)).rowCount);
    expect(settled).toBe(false);
    await lock.release();
    expect((await child).status).toBe('succeeded');
  });

  it('records a missing target table as a failed run with a hint', async () => {
    const r = await engine.run('ghost', { trigger: 'manual' });
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/target table public.no_such_table of entity "ghost" does not exist — create it/);
    const { rows } = await sync.pool.query(`select status, error from sync.run where id = $1`, [r.runId]);
    expect(rows[0].status).toBe('failed');
    expect((await sync.pool.query(`select state from sync.status where entity = 'ghost'`)).rows[0].state).toBe('failing');
  });

  it('is skipped, with the reason, while a dependency\'s last run failed', async () => {
    await sync.pool.query(`select sync.record_outcome('parents', 'manual', 'failed', 'boom')`);
    const r = await engine.run('children', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'skipped' });
    expect(r.error).toMatch(/dependency "parents" failed/);
    expect((await engine.run('parents', { trigger: 'manual' })).status).toBe('succeeded');
    expect((await engine.run('children', { trigger: 'manual' })).status).toBe('succeeded');
  });

  it('sync.cancel stops the fetch, merges nothing and ends the run cancelled', async () => {
    await sync.pool.query(`update parents set name = 'edited' where id = 1`);
    const run = engine.run('slow', { trigger: 'manual' });
    const runId = await until('the run to start', async () =>
      (await sync.pool.query(`select id from sync.run where entity = 'slow' and status = 'running'`)).rows[0]?.id as number | undefined);
    expect((await sync.pool.query('select sync.cancel($1) as ok', [runId])).rows[0].ok).toBe(true);
    const r = await run;
    expect(r.status).toBe('cancelled');
    expect((await sync.pool.query(`select name from parents where id = 1`)).rows[0].name).toBe('edited');
    const staging = await sync.pool.query(`select count(*)::int as n from pg_tables where schemaname = 'sync_staging'`);
    expect(staging.rows[0].n).toBe(0);
  });

  it('sync.cleanup closes runs left running by a dead process and drops their staging tables', async () => {
    const { rows } = await sync.pool.query(
      `select sync.start_run('parents', 'manual', false, false, array['id', 'name'], null) as id`);
    const r = await sync.pool.query('select sync.cleanup() as r');
    expect(r.rows[0].r).toMatchObject({ runs_closed: 1 });
    const run = await sync.pool.query('select status, error from sync.run where id = $1', [rows[0].id]);
    expect(run.rows[0]).toEqual({ status: 'abandoned', error: 'abandoned: the process running it stopped before it finished' });
    const staging = await sync.pool.query(`select count(*)::int as n from pg_tables where schemaname = 'sync_staging'`);
    expect(staging.rows[0].n).toBe(0);
  });

  it('the next run of an entity drops what its killed runs left in sync_staging, but the pages the run before it may resume from', async () => {
    // Two runs killed long ago left their tables (no process ran sync.cleanup since).
    const left = async () => (await sync.pool.query(`select tablename from pg_tables where schemaname = 'sync_staging' order by 1`)).rows
      .map((r) => r.tablename);
    const started = async () => Number((await sync.pool.query(
      `select sync.start_run('parents', 'manual', false, false, array['id', 'name'], null) as id`)).rows[0].id);
    const old = await started();
    const resumable = await started();
    await sync.pool.query(`create table sync_staging.run_${old}_raw (x int)`);
    await sync.pool.query(`create table sync_staging.run_${old}_parents (x int)`);
    await sync.pool.query(`create table sync_staging.run_${resumable}_raw (x int)`);
    await sync.pool.query(`update sync.run set detail = detail || '{"resume": {"style": "page", "index": 3, "page": 4}}' where id = $1`, [resumable]);
    // The second start closed the first as abandoned; the second died the same way.
    expect(await left()).toEqual([`run_${old}_parents`, `run_${old}_raw`, `run_${resumable}`, `run_${resumable}_raw`].sort());
    const r = await engine.run('parents', { trigger: 'manual' });
    expect(r.status).toBe('succeeded');
    expect(await left()).toEqual([`run_${resumable}_raw`]);
    const closed = await sync.pool.query('select id, status from sync.run where id = any($1) order by id', [[old, resumable]]);
    expect(closed.rows).toEqual([{ id: old, status: 'abandoned' }, { id: resumable, status: 'abandoned' }]);
    await sync.pool.query(`drop table sync_staging.run_${resumable}_raw`);
  });

  it('never writes to the source: its transaction is read-only', async () => {
    const evil = await engineFor(sync, source, {
      evil: { source: 'src', from: { query: `select id, name from parents, lateral (select 1 from (select nextval('s')) x) y` },
        target: 'parents', key: ['id'], mode: 'upsert' },
    });
    await source.pool.query('create sequence if not exists s');
    const r = await evil.run('evil', { trigger: 'manual' });
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/read-only transaction/);
    await evil.close();
  });
});
