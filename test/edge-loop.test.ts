import { describe, it, expect, beforeAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
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

describe('the edge loop', () => {
  it('stops on SIGTERM after the batch in flight: that batch is both sent and deleted, the rest waits', async () => {
    await ledger.add(50_000);
    const since = await lastRunId();
    const p = spawnEdge(['--interval', '60'], { localUrl: local.url, configFile: writeConfig(exampleConfig(remote.url, { batchSize: 100, pulls: false })) });
    const run = await waitFor('a few batches', async () => (await local.pool.query(
      `select id from sync.run where id > $1 and entity = 'readings' and fetched >= 300`, [since])).rows[0]);
    p.child.kill('SIGTERM');
    expect(await p.exited, p.stderr()).toBe(0);
    expect(p.logs.map((l) => l.msg)).toContain('stopping: the current batch finishes, then the edge stops');
    const row = (await local.pool.query('select status, fetched, inserted, unchanged, detail from sync.run where id = $1', [run.id])).rows[0];
    expect(row).toMatchObject({ status: 'succeeded', unchanged: 0, detail: { stopped: 'shutdown' } });
    expect(row.fetched).toBeLessThan(50_000);
    const pending = await values(local.pool, 'local');
    const sent = await values(remote.pool, 'remote');
    const sentSet = new Set(sent);
    expect(pending.filter((v) => sentSet.has(v)), 'a batch left half done').toEqual([]);
    expect(sent.length).toBe(row.fetched);
    expect(pending.length + sent.length).toBe(ledger.committed);
    expect((await local.pool.query(`select count(*)::int as n from sync.run where status = 'running'`)).rows[0].n).toBe(0);
  });

  it('two processes on one edge database never run cycles at the same time', async () => {
    const cfg = exampleConfig(remote.url, { batchSize: 500 });
    // A slow pull makes each cycle last a while (under the interval, or the
    // process holding the lock would take it again at once), so the two contend.
    cfg.entities.tenants.from = { query: 'select t.* from public.tenants t, pg_sleep(0.1)' };
    const configFile = writeConfig(cfg);
    const since = await lastRunId();
    ledger.start(20, 50);
    // Different intervals: with the same one, the second process's tries stay
    // in phase with the first's cycles and it only ever skips (a hot standby).
    const procs = ['1', '0.7'].map((s) => spawnEdge(['--interval', s], { localUrl: local.url, configFile }));
    try {
      await waitFor('both processes to run cycles', () => procs.every((p) => ran(p).length >= 3), 90_000);
    } finally {
      await ledger.stop();
      for (const p of procs) p.child.kill('SIGTERM');
    }
    for (const p of procs) expect(await p.exited, p.stderr()).toBe(0);

    // On the database's clock: each cycle's span, and every run's, is disjoint from all others.
    const spans = procs.flatMap((p) => ran(p).map((l) => ({ pid: l.pid, from: Date.parse(l.started as string), to: Date.parse(l.finished as string) })))
      .sort((a, b) => a.from - b.from);
    expect(new Set(spans.map((s) => s.pid)).size).toBe(2);
    for (let i = 1; i < spans.length; i++) expect(spans[i].from, `cycle ${i} overlaps cycle ${i - 1}`).toBeGreaterThanOrEqual(spans[i - 1].to);
    const { rows: runs } = await local.pool.query(`select id, entity, started_at, finished_at from sync.run
      where id > $1 and finished_at is not null order by started_at, id`, [since]);
    expect(runs.length).toBeGreaterThanOrEqual(4 * 5);
    for (let i = 1; i < runs.length; i++) {
      expect(runs[i].started_at.getTime(), `run ${runs[i].id} started before run ${runs[i - 1].id} finished`)
        .toBeGreaterThanOrEqual(runs[i - 1].finished_at.getTime());
    }
    expect(procs.flatMap((p) => ran(p).map((l) => l.edgeCycle)).filter((s) => s !== 'done')).toEqual([]);
    // They did contend: a process found the other's cycle running and skipped.
    expect(procs.some((p) => p.logs.some((l) => l.msg.startsWith('another edge cycle is running')))).toBe(true);
    // The readings written meanwhile went up once each, and the pulls did their work.
    const sent = new Set(await values(remote.pool, 'remote'));
    expect(sent.size + (await values(local.pool, 'local')).length).toBe(ledger.committed);
    expect((await local.pool.query('select count(*)::int as n from edge.meters')).rows[0].n).toBe(20);
  });
});
