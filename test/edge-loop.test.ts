import { describe, it, expect, beforeAll } from 'vitest';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { EDGE_LOCK } from '../src/edge/cycle.js';
import {
  createTables, exampleConfig, Ledger, sqlFile, spawnEdge, values, waitFor, writeConfig, type EdgeProcess,
} from '../examples/edge-meters/testing.js';

let local: TestDatabase;
let remote: TestDatabase;
let ledger: Ledger;

beforeAll(async () => {
  ({ sync: local, source: remote } = await testDatabases('edge_loop'));
  await createTables(local.pool, remote.pool);
  await remote.pool.query(sqlFile('seed.sql'));
  ledger = new Ledger(local.pool);
});

const lastRunId = async () => (await local.pool.query('select coalesce(max(id), 0)::int as id from sync.run')).rows[0].id as number;
/** The cycles a process ran (not those it skipped), each with its span on the database's clock. */
const ran = (p: EdgeProcess) => p.logs.filter((l) => l.edgeCycle && l.started);
const SKIPPED = 'another edge cycle is running';
const skips = (p: EdgeProcess) => p.logs.filter((l) => l.msg.startsWith(SKIPPED)).length;

/** A connection of the test's own, to hold locks on one side. */
async function session(db: TestDatabase): Promise<pg.Client> {
  const c = new pg.Client(db.url);
  await c.connect();
  return c;
}

/** Whether the process is stopped (SIGSTOP has taken effect): state T in /proc/<pid>/stat. */
function stopped(pid: number): boolean {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T');
}

describe('the edge loop', () => {
  it('stops on SIGTERM after the batch in flight: that batch is both sent and deleted, the rest waits', async () => {
    await ledger.add(50_000);
    const since = await lastRunId();
    const p = spawnEdge(['--interval', '60'], { localUrl: local.url, configFile: writeConfig(exampleConfig(remote.url, { batchSize: 100, pulls: false })) });
    const run = await waitFor('a few batches', async () => (await local.pool.query(
      `select id from sync.run where id > $1 and entity = 'readings' and fetched >= 300`, [since])).rows[0]);
    // The cloud is slow to take the next batch (its INSERT waits for this
    // lock): SIGTERM arrives while that batch is in flight, however fast the machine.
    const holder = await session(remote);
    try {
      await holder.query('begin');
      await holder.query('lock table readings in share mode');
      await waitFor('a batch\'s remote insert to wait', async () => (await local.pool.query(
        `select 1 from pg_stat_activity where datname = $1 and application_name = 'syncline edge (push)' and wait_event_type = 'Lock'`,
        [remote.name])).rowCount);
      p.child.kill('SIGTERM');
      await waitFor('the process to say it is stopping', () => p.logs.some((l) => l.msg.startsWith('stopping: the current batch finishes')));
    } finally {
      await holder.query('rollback');
      await holder.end();
    }
    expect(await p.exited, p.stderr()).toBe(0);
    expect(p.logs.map((l) => l.msg)).toContain('stopping: the current batch finishes, then the edge stops');
    const row = (await local.pool.query('select status, fetched, inserted, unchanged, detail from sync.run where id = $1', [run.id])).rows[0];
    expect(row).toMatchObject({ status: 'succeeded', unchanged: 0, detail: { stopped: 'shutdown' } });
    expect(row.fetched).toBeLessThan(50_000);
    expect(row.fetched % 100).toBe(0); // whole batches only
    const pending = await values(local.pool, 'local');
    const sent = await values(remote.pool, 'remote');
    const sentSet = new Set(sent);
    expect(pending.filter((v) => sentSet.has(v)), 'a batch left half done').toEqual([]);
    expect(sent.length).toBe(row.fetched);
    expect(pending.length + sent.length).toBe(ledger.committed);
    expect((await local.pool.query(`select count(*)::int as n from sync.run where status = 'running'`)).rows[0].n).toBe(0);
  });

  it('two processes on one edge database never run cycles at the same time', async () => {
    // The test decides who runs, instead of hoping their timers interleave: a
    // cycle's first pull waits at a gate (an advisory lock on the remote the
    // test holds), and between cycles the test holds the edge lock itself.
    const GATE = 8_471_003;
    const cfg = exampleConfig(remote.url, { batchSize: 500 });
    cfg.entities.tenants.from = { query: `select t.* from public.tenants t where pg_advisory_xact_lock_shared(${GATE}) is not null` };
    const configFile = writeConfig(cfg);
    const since = await lastRunId();
    const edgeLock = await session(local);
    const gate = await session(remote);
    await edgeLock.query('select pg_advisory_lock($1, $2)', EDGE_LOCK);
    await gate.query('select pg_advisory_lock($1)', [GATE]);
    ledger.start(20, 50);
    // A short interval: a process that finds the lock taken tries again soon.
    const apps = ['syncline-test edge A', 'syncline-test edge B'];
    const procs = apps.map((app) => spawnEdge(['--interval', '0.2'], { localUrl: local.url, configFile, extra: { PGAPPNAME: app } }));
    const holder = async () => (await local.pool.query(
      `select a.application_name as app from pg_locks l join pg_stat_activity a on a.pid = l.pid
        where l.locktype = 'advisory' and l.granted and l.database = (select oid from pg_database where datname = $1)
          and l.classid::int8 = $2 and l.objid::int8 = $3 and l.objsubid = 2`, [local.name, ...EDGE_LOCK])).rows[0]?.app as string | undefined;
    const edgeLockPid = (await edgeLock.query('select pg_backend_pid() as pid')).rows[0].pid;
    try {
      // Both are up and in their loops (not applying the config, say) before either is held still.
      await waitFor('both processes to try the edge lock', () => procs.every((p) => skips(p) > 0));
      // Each round, the process that ran last is held still (SIGSTOP) while
      // the test lets go of the edge lock: the other one takes it and runs a
      // cycle, up to the gate. Woken, the held one tries, finds the cycle
      // running and skips. The test queues for the edge lock, opens the gate,
      // and has the lock again the moment the cycle ends.
      let last = 1;
      for (let round = 0; round < 20 && !procs.every((p) => ran(p).length >= 3); round++) {
        const held = procs[last];
        held.child.kill('SIGSTOP');
        await waitFor('the held process to stop', () => stopped(held.child.pid!));
        await edgeLock.query('select pg_advisory_unlock($1, $2)', EDGE_LOCK);
        const app = await waitFor('a process to take the edge lock', holder);
        held.child.kill('SIGCONT');
        const runner = apps.indexOf(app);
        expect(runner).toBeGreaterThanOrEqual(0);
        await waitFor('the cycle to wait at the gate', async () => (await remote.pool.query(
          `select 1 from pg_locks where locktype = 'advisory' and not granted and objid::int8 = $1 and objsubid = 1`, [GATE])).rowCount);
        const other = procs[1 - runner];
        const skipped = skips(other);
        const cycles = ran(procs[runner]).length;
        await waitFor('the other process to try and skip', () => skips(other) > skipped);
        const relock = edgeLock.query('select pg_advisory_lock($1, $2)', EDGE_LOCK);
        await waitFor('the test to queue for the edge lock', async () => (await local.pool.query(
          `select 1 from pg_locks where pid = $1 and locktype = 'advisory' and not granted`, [edgeLockPid])).rowCount);
        await gate.query('select pg_advisory_unlock($1)', [GATE]);
        await relock;
        await gate.query('select pg_advisory_lock($1)', [GATE]);
        await waitFor('the cycle\'s log line', () => ran(procs[runner]).length > cycles);
        last = runner;
      }
    } finally {
      for (const p of procs) p.child.kill('SIGCONT');
      await ledger.stop();
      await gate.end();
      await edgeLock.end();
      for (const p of procs) p.child.kill('SIGTERM');
    }
    for (const p of procs) expect(await p.exited, p.stderr()).toBe(0);
    for (const p of procs) expect(ran(p).length).toBeGreaterThanOrEqual(3);

    // On the database's clock: each cycle's span, and every run's, is disjoint from all others.
    const spans = procs.flatMap((p) => ran(p).map((l) => ({ pid: l.pid, from: Date.parse(l.started as string), to: Date.parse(l.finished as string) })))
      .sort((a, b) => a.from - b.from);
    expect(new Set(spans.map((s) => s.pid)).size).toBe(2);
    for (let i = 1; i < spans.length; i++) expect(spans[i].from, `cycle ${i} overlaps cycle ${i - 1}`).toBeGreaterThanOrEqual(spans[i - 1].to);
    const { rows: runs } = await local.pool.query(`select id, entity, started_at, finished_at from sync.run
      where id > $1 and finished_at is not null order by started_at, id`, [since]);
    expect(runs.length).toBeGreaterThanOrEqual(6 * 5);
    for (let i = 1; i < runs.length; i++) {
      expect(runs[i].started_at.getTime(), `run ${runs[i].id} started before run ${runs[i - 1].id} finished`)
        .toBeGreaterThanOrEqual(runs[i - 1].finished_at.getTime());
    }
    expect(procs.flatMap((p) => ran(p).map((l) => l.edgeCycle)).filter((s) => s !== 'done')).toEqual([]);
    // The readings written meanwhile went up once each, and the pulls did their work.
    const sent = new Set(await values(remote.pool, 'remote'));
    expect(sent.size + (await values(local.pool, 'local')).length).toBe(ledger.committed);
    expect((await local.pool.query('select count(*)::int as n from edge.meters')).rows[0].n).toBe(20);
  });
});
