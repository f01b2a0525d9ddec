import { describe, it, expect, beforeAll } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import {
  createTables, EDGE_APP, exampleConfig, Ledger, spawnEdge, values, waitFor, waitSessionsGone, writeConfig,
} from '../examples/edge-meters/testing.js';

let local: TestDatabase;
let remote: TestDatabase;
let ledger: Ledger;

beforeAll(async () => {
  ({ sync: local, source: remote } = await testDatabases('edge_kill'));
  await createTables(local.pool, remote.pool);
  ledger = new Ledger(local.pool);
});

const lastRunId = async () => (await local.pool.query('select coalesce(max(id), 0)::int as id from sync.run')).rows[0].id as number;
const edge = (args: string[], batchSize: number) =>
  spawnEdge(args, { localUrl: local.url, configFile: writeConfig(exampleConfig(remote.url, { batchSize, pulls: false })) });

/**
 * What must hold whenever no edge process is alive: every reading committed
 * before `upTo` is still pending locally or on the remote; the remote holds
 * nothing else, each once; both sides hold at most one batch (`batchSize`,
 * the largest used), the one whose remote commit landed before the local
 * one could, and it is the oldest of the pending rows (batches go in order).
 */
async function expectNothingLost(upTo: number, batchSize: number): Promise<{ both: number[] }> {
  const pending = await values(local.pool, 'local');
  const sent = await values(remote.pool, 'remote');
  const sentSet = new Set(sent);
  expect(sentSet.size, 'a reading twice on the remote').toBe(sent.length);
  const here = new Set(pending);
  const lost = [];
  for (let v = 0; v < upTo; v++) if (!here.has(v) && !sentSet.has(v)) lost.push(v);
  expect(lost, 'readings neither pending locally nor on the remote').toEqual([]);
  expect(sent.filter((v) => v >= ledger.committed), 'readings on the remote that were never written').toEqual([]);
  const both = pending.filter((v) => sentSet.has(v)).sort((a, b) => a - b);
  expect(both.length).toBeLessThanOrEqual(batchSize);
  expect(both, 'rows sent but still pending are the oldest pending ones').toEqual(pending.sort((a, b) => a - b).slice(0, both.length));
  return { both };
}

/** One `edge --once` to the end: everything pending goes. */
async function drain(): Promise<void> {
  const p = edge(['--once'], 500);
  expect(await p.exited, p.stderr()).toBe(0);
}

describe('an edge process killed with SIGKILL', () => {
  it('at random moments while readings keep arriving: the remote ends with every reading exactly once, the edge with only unsent ones', async () => {
    await ledger.add(20_000);
    ledger.start(5, 10);
    let largestBatch = 0;
    try {
      await fc.assert(fc.asyncProperty(fc.integer({ min: 0, max: 1500 }), fc.constantFrom(10, 100, 250), async (killAfter, batchSize) => {
        largestBatch = Math.max(largestBatch, batchSize);
        const since = await lastRunId();
        const p = edge(['--interval', '0.2'], batchSize);
        let exited = false;
        void p.exited.then(() => { exited = true; });
        await waitFor('the edge process to start a push run', async () => exited
          || (await local.pool.query(`select 1 from sync.run where id > $1 and entity = 'readings'`, [since])).rowCount);
        await sleep(killAfter);
        p.child.kill('SIGKILL');
        expect(await p.exited).toBeNull();
        // A COMMIT already sent when the process died still lands: wait for its sessions to end.
        await waitSessionsGone(local.pool, [local.name, remote.name]);
        await expectNothingLost(ledger.committed, largestBatch);
      // Two early kills land in the first batches for certain.
      }), { numRuns: 8, examples: [[0, 10], [150, 100]] });
    } finally {
      await ledger.stop();
    }
    await drain();
    expect(await values(local.pool, 'local')).toEqual([]);
    expect((await values(remote.pool, 'remote')).sort((a, b) => a - b)).toEqual(Array.from({ length: ledger.committed }, (_, i) => i));
    // Some kills must have cut a run short, or this proved little.
    const { rows } = await local.pool.query(`select count(*)::int as n from sync.run where entity = 'readings' and error like 'abandoned%'`);
    expect(rows[0].n).toBeGreaterThan(0);
  });

  it('while the remote insert waits not a row has left the edge; killed there, nothing is lost and the next run completes it', async () => {
    await drain();
    const start = ledger.committed;
    await ledger.add(1000);
    // The cloud is slow to take the batch: its INSERT waits for this lock.
    const holder = await remote.pool.connect();
    let p;
    try {
      await holder.query('begin');
      await holder.query('lock table readings in share mode');
      p = edge(['--interval', '60'], 100);
      await waitFor('the batch\'s remote insert to wait', async () => (await local.pool.query(
        `select 1 from pg_stat_activity where datname = $1 and application_name = 'syncline edge (push)' and wait_event_type = 'Lock'`,
        [remote.name])).rowCount);
      const pending = await values(local.pool, 'local');
      expect(pending.filter((v) => v >= start).length, 'rows deleted locally before the remote committed them').toBe(1000);
      p.child.kill('SIGKILL');
      expect(await p.exited).toBeNull();
    } finally {
      await holder.query('rollback');
      holder.release();
    }
    await waitSessionsGone(local.pool, [local.name, remote.name]);
    // The remote had the whole INSERT; COMMIT when the process died, so it may
    // have committed the batch after the lock went: then it is still pending here too.
    const { both } = await expectNothingLost(ledger.committed, 100);
    expect((await values(remote.pool, 'remote')).filter((v) => v >= start)).toEqual(both);
    await drain();
    expect((await values(remote.pool, 'remote')).length).toBe(ledger.committed);
  });

  it('after the remote committed a batch and before the local delete: the next run re-sends that batch as a no-op', async () => {
    await drain();
    const start = ledger.committed;
    await ledger.add(30_000);
    const since = await lastRunId();
    const p = edge(['--interval', '60'], 100);
    const run = await waitFor('the push run', async () => (await local.pool.query(
      `select id from sync.run where id > $1 and entity = 'readings' and status = 'running'`, [since])).rows[0]);
    // Hold the run's row: the process's next batch commits on the remote,
    // deletes locally, then waits here to count the batch in sync.run.
    const blocker = await local.pool.connect();
    try {
      await blocker.query('begin');
      await blocker.query('select 1 from sync.run where id = $1 for update', [run.id]);
      await waitFor('the batch to wait between the remote commit and the local one', async () => (await local.pool.query(
        `select 1 from pg_stat_activity where datname = $1 and application_name = $2 and wait_event_type = 'Lock'`,
        [local.name, EDGE_APP])).rowCount);
      p.child.kill('SIGKILL');
      expect(await p.exited).toBeNull();
    } finally {
      await blocker.query('rollback');
      blocker.release();
    }
    await waitSessionsGone(local.pool, [local.name, remote.name]);
    const { both } = await expectNothingLost(ledger.committed, 100);
    expect(both.length, 'the batch the remote committed is still pending locally').toBe(100);

    const next = await lastRunId();
    await drain();
    const { rows } = await local.pool.query(
      `select status, fetched, inserted, unchanged from sync.run where id > $1 and entity = 'readings' order by id limit 1`, [next]);
    expect(rows[0]).toMatchObject({ status: 'succeeded', unchanged: 100 });
    expect(rows[0].inserted).toBe(rows[0].fetched - 100);
    expect((await local.pool.query('select status, error from sync.run where id = $1', [run.id])).rows[0])
      .toEqual({ status: 'failed', error: 'abandoned: the process running it stopped before it finished' });
    expect(await values(local.pool, 'local')).toEqual([]);
    const sent = await values(remote.pool, 'remote');
    expect(sent.length).toBe(ledger.committed);
    expect(sent.filter((v) => v >= start).length).toBe(30_000);
  });
});
