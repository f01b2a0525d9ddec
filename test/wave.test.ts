import { describe, it, expect, beforeAll, afterAll, beforeEach } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { until } from './helpers/until.js';
import { runMany } from '../src/engine/plan.js';
import type { Engine } from '../src/engine/run.js';
import { ManualSyncs } from '../src/server/manual.js';
import { startWorker } from '../src/worker/worker.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

// grandchild → child → parent, each referencing the one above with a
// restricting foreign key on the target; left and right both feed `joined`.
const TABLES = `
  create table parent (id int primary key, name text);
  create table child (id int primary key, parent_id int, name text);
  create table grandchild (id int primary key, child_id int, name text);
  create table lefts (id int primary key);
  create table rights (id int primary key);
  create table joined (id int primary key, l int, r int);`;
const FKS = `
  alter table child add foreign key (parent_id) references parent;
  alter table grandchild add foreign key (child_id) references child;`;
const mirror = (t: string, dependsOn: string[] = [], extra: object = {}) => ({
  source: 'src', from: { table: t }, target: t, key: ['id'], deleteGuard: false, dependsOn, ...extra,
});
const ENTITIES = {
  parent: mirror('parent'),
  child: mirror('child', ['parent']),
  grandchild: mirror('grandchild', ['child']),
  lefts: mirror('lefts'),
  rights: mirror('rights'),
  joined: mirror('joined', ['lefts', 'rights']),
  // Its fetch waits while the test holds advisory lock 4242 on the source (a run "under way elsewhere").
  gated: { ...mirror('parent'), from: { query: 'select p.* from parent p where pg_advisory_xact_lock_shared(4242) is not null' },
    target: 'parent_copy' },
};

beforeAll(async () => {
  ({ sync, source } = await testDatabases('wave'));
  await source.pool.query(TABLES);
  await sync.pool.query(`${TABLES} ${FKS} create table parent_copy (id int primary key, name text)`);
  engine = await engineFor(sync, source, ENTITIES);
});
afterAll(() => engine.close());

/** Source and target hold the family 1 (parent 1, child 10, grandchild 100); the source then loses all of it. */
async function familyGone(): Promise<void> {
  await sync.pool.query('truncate grandchild, child, parent cascade');
  await sync.pool.query(`insert into parent values (1, 'p'), (2, 'q'); insert into child values (10, 1, 'c'), (20, 2, 'd');
    insert into grandchild values (100, 10, 'g'), (200, 20, 'h')`);
  await source.pool.query('truncate grandchild, child, parent');
  await source.pool.query(`insert into parent values (2, 'q'); insert into child values (20, 2, 'd'); insert into grandchild values (200, 20, 'h')`);
}

const ids = async (t: string) => (await sync.pool.query(`select id from ${t} order by id`)).rows.map((r) => r.id);
const runsOfWave = async (wave: number) => (await sync.pool.query(
  `select entity, status, deferred, deleted from sync.run where wave_id = $1 order by id`, [wave])).rows;
const lastWave = async () => Number((await sync.pool.query('select max(id) as id from sync.wave')).rows[0].id);

async function expectFamilyConverged(wave: number): Promise<void> {
  expect(await ids('parent')).toEqual([2]);
  expect(await ids('child')).toEqual([20]);
  expect(await ids('grandchild')).toEqual([200]);
  // Each entity once, then the two that deferred once more, children first.
  expect((await runsOfWave(wave)).map((r) => [r.entity, r.status, Number(r.deferred)])).toEqual([
    ['parent', 'succeeded', 1], ['child', 'succeeded', 1], ['grandchild', 'succeeded', 0],
    ['child', 'succeeded', 0], ['parent', 'succeeded', 0],
  ]);
  expect((await sync.pool.query('select finished_at is not null as done from sync.wave where id = $1', [wave])).rows[0].done).toBe(true);
}

describe('a wave', () => {
  beforeEach(async () => {
    await sync.pool.query(`update sync.wave set finished_at = now() where finished_at is null`);
  });

  it('from the CLI: multi-level deferred deletes converge in one wave, each entity run once, then once more children first', async () => {
    await familyGone();
    const results = await runMany(engine, ['grandchild', 'parent', 'child'], { trigger: 'manual' });
    expect(results.map((r) => [r.entity, r.status, r.deleted, r.passes?.length ?? 1])).toEqual([
      ['parent', 'succeeded', 1, 2], ['child', 'succeeded', 1, 2], ['grandchild', 'succeeded', 1, 1],
    ]);
    await expectFamilyConverged(await lastWave());
  });

  it('from the API: the same wave, in this process', async () => {
    await familyGone();
    const manual = new ManualSyncs(engine);
    const started = await manual.start({ entities: ['parent', 'child', 'grandchild'], dryRun: false, full: false });
    expect(started.map((s) => s.entity)).toEqual(['parent', 'child', 'grandchild']);
    const wave = await lastWave();
    await until('the wave closed', async () => (await sync.pool.query(
      'select finished_at is not null as done from sync.wave where id = $1', [wave])).rows[0].done);
    await manual.close();
    await expectFamilyConverged(wave);
  });

  it('from the worker: sync.request of the root runs its dependents in the same wave', async () => {
    await familyGone();
    const { rows: [req] } = await sync.pool.query(`select sync.request('parent') as wave`);
    const handle = await startWorker(engine, { concurrency: 2 });
    try {
      await until('the wave closed', async () => (await sync.pool.query(
        'select finished_at is not null as done from sync.wave where id = $1', [req.wave])).rows[0].done, 60_000);
    } finally {
      await handle.stop();
    }
    await expectFamilyConverged(Number(req.wave));
  });

  it('an entity whose deletes wait on a dependent outside the wave runs once: no second pass that could not help', async () => {
    await familyGone();
    const [r] = await runMany(engine, ['child'], { trigger: 'manual' });
    expect(r).toMatchObject({ entity: 'child', status: 'succeeded', deleted: 0, deferred: 1 });
    expect(r.passes).toBeUndefined();
    expect((await runsOfWave(await lastWave())).map((x) => x.entity)).toEqual(['child']);
  });

  it('runs an entity with two dependencies once, after both', async () => {
    await source.pool.query(`insert into lefts values (1); insert into rights values (1); insert into joined values (1, 1, 1)`);
    const results = await runMany(engine, ['joined', 'rights', 'lefts'], { trigger: 'manual' });
    expect(results.map((r) => r.entity)).toEqual(['lefts', 'rights', 'joined']);
    const runs = await sync.pool.query(`select entity, started_at, finished_at from sync.run where wave_id = $1 order by id`, [await lastWave()]);
    expect(runs.rows.map((x) => x.entity).sort()).toEqual(['joined', 'lefts', 'rights']);
    const joined = runs.rows.find((x) => x.entity === 'joined');
    for (const dep of runs.rows.filter((x) => x.entity !== 'joined')) expect(joined.started_at >= dep.finished_at).toBe(true);
  });

  it('joins a run of one of its entities that another process has under way, and records no misleading skipped run', async () => {
    const gate = await source.pool.connect();
    await gate.query('select pg_advisory_lock(4242)');
    const other = engine.run('gated', { trigger: 'api' });
    await until('the other run under way', async () => (await sync.pool.query(
      `select 1 from sync.run where entity = 'gated' and status = 'running'`)).rowCount);
    const wave = runMany(engine, ['gated'], { trigger: 'manual' });
    // The wave found the entity running, and waits to join that run (a shared wait on its entity lock).
    await until('the wave joining it', async () => (await sync.pool.query(
      `select 1 from pg_locks l join pg_database d on d.oid = l.database where d.datname = current_database()
        and l.locktype = 'advisory' and l.mode = 'ShareLock' and not l.granted`)).rowCount, 60_000);
    await gate.query('select pg_advisory_unlock(4242)');
    gate.release();
    const [[mine], theirs] = [await wave, await other];
    expect(mine).toMatchObject({ entity: 'gated', runId: theirs.runId, status: 'succeeded', joined: true });
    const runs = await sync.pool.query(`select status from sync.run where entity = 'gated'`);
    expect(runs.rows).toEqual([{ status: 'succeeded' }]);
  });

  it('records the real duration of a slow merge', async () => {
    await sync.pool.query(`create function pause() returns trigger language plpgsql as $$ begin perform pg_sleep(1.5); return null; end $$;
      create trigger pause after insert on rights for each statement execute function pause()`);
    await source.pool.query('insert into rights values (2)');
    const [r] = await runMany(engine, ['rights'], { trigger: 'manual' });
    const { rows } = await sync.pool.query(
      `select extract(epoch from finished_at - started_at)::float8 as s, (phases ->> 'merge')::int as merge_ms from sync.run where id = $1`, [r.runId]);
    expect(rows[0].s).toBeGreaterThanOrEqual(1.5);
    expect(rows[0].merge_ms).toBeGreaterThanOrEqual(1500);
    await sync.pool.query('drop trigger pause on rights');
  });
});
