import { describe, it, expect, beforeAll } from 'vitest';
import pg from 'pg';
import { quoteIdent } from '../src/db/database.js';
import { adminUrl } from './helpers/gen.js';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import {
  createTables, EDGE_APP, exampleConfig, Ledger, sqlFile, spawnEdge, values, waitFor, writeConfig, type EdgeProcess,
} from '../examples/edge-meters/testing.js';

let local: TestDatabase;
let remote: TestDatabase;
let ledger: Ledger;

beforeAll(async () => {
  ({ sync: local, source: remote } = await testDatabases('edge_remote'));
  await createTables(local.pool, remote.pool);
  await remote.pool.query(sqlFile('seed.sql'));
  ledger = new Ledger(local.pool);
});

async function admin<T>(sql: string): Promise<void> {
  const c = new pg.Client(adminUrl());
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

const cycles = (p: EdgeProcess, status: string) => p.logs.filter((l) => l.edgeCycle === status);

describe('a side going away', () => {
  it('mid-batch, its connections cut and refused for a while: the loop carries on, catches up when it returns, nothing lost or doubled', async () => {
    await ledger.add(5000);
    // Backoff waits 1 s, then 2 s, never past the 4 s interval.
    const p = spawnEdge(['--interval', '4'], { localUrl: local.url, configFile: writeConfig(exampleConfig(remote.url, { batchSize: 100 })) });
    const holder = await remote.pool.connect();
    ledger.start(3, 20);
    try {
      // Hold the cloud's table so a batch is caught between its COPY and its COMMIT.
      await holder.query('begin');
      await holder.query('lock table readings in share mode');
      await waitFor('a batch to wait on the remote', async () => (await local.pool.query(
        `select 1 from pg_stat_activity where datname = $1 and application_name = 'syncline edge (push)' and wait_event_type = 'Lock'`,
        [remote.name])).rowCount);
      await admin(`alter database ${quoteIdent(remote.name)} allow_connections false`);
      await admin(`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${pg.escapeLiteral(remote.name)} and application_name like 'syncline%'`);
      await holder.query('rollback');
      // The cycle that lost the batch fails; the loop keeps going while the remote refuses connections.
      await waitFor('a failed cycle, then one finding the remote down', () => cycles(p, 'failed').length && cycles(p, 'remote-down').length);
      expect(p.child.exitCode).toBeNull();
    } finally {
      holder.release();
      await admin(`alter database ${quoteIdent(remote.name)} allow_connections true`);
    }
    const failed = (await local.pool.query(`select r.id, e.category from sync.run r join sync.run_error e on e.run_id = r.id
      where r.entity = 'readings' and r.status = 'failed'`)).rows;
    expect(failed.map((f) => f.category)).toContain('network');
    await waitFor('a cycle after the remote came back', () => cycles(p, 'done').length > 0);
    await ledger.stop();
    await waitFor('the backlog to drain', async () => (await values(local.pool, 'local')).length === 0);
    p.child.kill('SIGTERM');
    expect(await p.exited, p.stderr()).toBe(0);

    const sent = (await values(remote.pool, 'remote')).sort((a, b) => a - b);
    expect(sent).toEqual(Array.from({ length: ledger.committed }, (_, i) => i));
    // Between the failures the waits grew; the pulls ran once it was back.
    const waits = p.logs.filter((l) => typeof l.waitMs === 'number').map((l) => l.waitMs as number);
    expect(waits.length).toBeGreaterThanOrEqual(2);
    expect(waits[1]).toBeGreaterThan(waits[0]);
    expect((await local.pool.query('select count(*)::int as n from edge.device_register')).rows[0].n).toBe(80);
  });

  it('the local database cutting the edge\'s sessions after the remote committed a batch: the loop reconnects and re-sends that batch as a no-op', async () => {
    await ledger.add(3000);
    const since = (await local.pool.query('select coalesce(max(id), 0)::int as id from sync.run')).rows[0].id;
    const p = spawnEdge(['--interval', '4'], { localUrl: local.url, configFile: writeConfig(exampleConfig(remote.url, { batchSize: 100, pulls: false })) });
    const run = await waitFor('the push run', async () => (await local.pool.query(
      `select id from sync.run where id > $1 and entity = 'readings' and status = 'running'`, [since])).rows[0]);
    const blocker = await local.pool.connect();
    try {
      await blocker.query('begin');
      await blocker.query('select 1 from sync.run where id = $1 for update', [run.id]);
      await waitFor('a batch committed remotely and waiting locally', async () => (await local.pool.query(
        `select 1 from pg_stat_activity where datname = $1 and application_name = $2 and wait_event_type = 'Lock'`, [local.name, EDGE_APP])).rowCount);
      await admin(`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${pg.escapeLiteral(local.name)}
        and application_name = ${pg.escapeLiteral(EDGE_APP)}`);
    } finally {
      await blocker.query('rollback');
      blocker.release();
    }
    await waitFor('the backlog to drain', async () => (await values(local.pool, 'local')).length === 0);
    p.child.kill('SIGTERM');
    expect(await p.exited, p.stderr()).toBe(0);
    expect((await values(remote.pool, 'remote')).sort((a, b) => a - b)).toEqual(Array.from({ length: ledger.committed }, (_, i) => i));
    const runs = (await local.pool.query(`select r.status, r.unchanged, e.category from sync.run r left join sync.run_error e on e.run_id = r.id
      where r.entity = 'readings' and r.id >= $1 order by r.id`, [run.id])).rows;
    expect(runs[0]).toMatchObject({ status: 'failed', category: 'network' });
    expect(runs.find((r) => r.status === 'succeeded')?.unchanged).toBe(100);
    expect(p.logs.some((l) => l.edgeCycle === 'failed')).toBe(true);
  });
});
