import { describe, it, expect, beforeAll, afterAll, beforeEach } from 'vitest';
import fc from 'fast-check';
import { runOnce } from 'graphile-worker';
import { workerLogger } from '../src/db/database.js';
import { syncEdge } from '../tasks/sync_edge.js';
import { parseConfig, ConfigError } from '../src/config/load.js';
import { applyConfig } from '../src/config/apply.js';
import type { Config } from '../src/config/schema.js';
import { Engine } from '../src/engine/run.js';
import { Edge } from '../src/edge/edge.js';
import { runPush } from '../src/edge/push.js';
import { pushSettings } from '../src/edge/plan.js';
import { EDGE_LOCK, runCycle } from '../src/edge/cycle.js';
import { backoffMs } from '../src/edge/loop.js';
import { describeConnection, prepareEdgeEnv, urlFromParts } from '../src/edge/env.js';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { createTables, exampleConfig, Ledger, values } from '../examples/edge-meters/testing.js';

let local: TestDatabase;
let remote: TestDatabase;
let ledger: Ledger;
const open: { engine: Engine; edge: Edge }[] = [];

beforeAll(async () => {
  ({ sync: local, source: remote } = await testDatabases('edge_push'));
  await createTables(local.pool, remote.pool);
  ledger = new Ledger(local.pool);
});
afterAll(async () => {
  for (const o of open) {
    await o.edge.close();
    await o.engine.close();
  }
});

async function edgeFor(raw: object): Promise<{ cfg: Config; edge: Edge }> {
  const cfg = parseConfig(raw, {});
  await applyConfig(local.pool, cfg);
  const engine = new Engine(local.pool, local.url, cfg);
  const edge = new Edge(engine);
  open.push({ engine, edge });
  return { cfg, edge };
}

async function push(raw: object) {
  const { cfg, edge } = await edgeFor(raw);
  const def = cfg.entities.readings;
  return runPush(edge.pushTarget(def), 'readings', def, { trigger: 'manual' });
}

const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);
const runRow = async (id: number | null) => (await local.pool.query('select * from sync.run where id = $1', [id])).rows[0];

/** Every committed reading is on exactly one side, and the remote holds nothing else. */
async function expectAccountedFor(): Promise<{ local: number[]; remote: number[] }> {
  const l = await values(local.pool, 'local');
  const r = await values(remote.pool, 'remote');
  const remoteSet = new Set(r);
  expect(l.filter((v) => remoteSet.has(v)), 'rows both sent and still pending').toEqual([]);
  expect(sorted([...l, ...r])).toEqual(range(0, ledger.committed));
  return { local: l, remote: r };
}

describe('push entity config', () => {
  const base = (readings: object) => ({ sources: { cloud: { kind: 'postgres', url: 'postgres://u:pw@cloud/db' } }, entities: { readings } });
  const entity = { direction: 'push', source: 'cloud', from: { table: 'edge.readings' }, target: 'readings', key: ['tenant_id', 'meter_id', 'recorded_at'] };
  const problems = (raw: object) => {
    try {
      parseConfig(raw, {});
      return [];
    } catch (err) {
      if (err instanceof ConfigError) return err.problems;
      throw err;
    }
  };

  it('the example validates, and a push entity without "push" gets the defaults', () => {
    const cfg = parseConfig(exampleConfig('postgres://u:pw@cloud/db'), {});
    expect(pushSettings(cfg.entities.readings)).toEqual({ syncedColumn: 'is_synchronized', orderBy: ['recorded_at'], batchSize: 100, afterPush: 'delete' });
    const bare = parseConfig(base(entity), {}).entities.readings;
    expect(pushSettings(bare)).toEqual({ syncedColumn: 'is_synchronized', orderBy: ['tenant_id', 'meter_id', 'recorded_at'], batchSize: 100, afterPush: 'delete' });
  });

  it('rejects what a push cannot do, saying what to change', () => {
    expect(problems(base({ ...entity, cursor: { column: 'recorded_at' }, schedule: '* * * * *', dependsOn: ['x'] }))).toEqual(expect.arrayContaining([
      expect.stringMatching(/^entities\.readings\.cursor: does not apply to a push entity \(the rows to push are those whose push\.syncedColumn is false\) — remove it$/),
      expect.stringMatching(/^entities\.readings\.schedule: does not apply to a push entity .*edge cycle/),
      expect.stringMatching(/^entities\.readings\.dependsOn: a push entity runs first in the edge cycle and depends on nothing/),
    ]));
    expect(problems(base({ ...entity, from: { query: 'select 1' } }))).toContain(
      'entities.readings.from: a push entity reads a local table: use "from": {"table": "readings"}');
    expect(problems(base({ ...entity, direction: 'pull', push: { batchSize: 10 } }))).toContain(
      'entities.readings.push: "push" applies to "direction": "push" only — add the direction or remove "push"');
    expect(problems(base({ ...entity, push: { batchSize: 0 } }))[0]).toMatch(/^entities\.readings\.push\.batchSize: /);
    const raw = base(entity) as { entities: Record<string, object> };
    raw.entities.meters = { source: 'cloud', from: { table: 'meters' }, target: 'meters', key: ['id'], dependsOn: ['readings'] };
    expect(problems(raw)).toEqual([expect.stringMatching(/^entities\.meters\.dependsOn\[0\]: entity "readings" is a push entity/)]);
  });
});

describe('edge connections', () => {
  it('builds a URL from POSTGRES_*_HOST/PORT/DB/USER/PASSWORD, encoding what a URL cannot hold', () => {
    const env = { POSTGRES_CLIENT_HOST: 'cloud.example.com', POSTGRES_CLIENT_PORT: '6432', POSTGRES_CLIENT_DB: 'metering',
      POSTGRES_CLIENT_USER: 'edge@site 7', POSTGRES_CLIENT_PASSWORD: 'p@ss:w/rd%41' };
    const url = new URL(urlFromParts('POSTGRES_CLIENT', env)!);
    expect([url.hostname, url.port, url.pathname]).toEqual(['cloud.example.com', '6432', '/metering']);
    expect([decodeURIComponent(url.username), decodeURIComponent(url.password)]).toEqual(['edge@site 7', 'p@ss:w/rd%41']);
    expect(describeConnection(url.toString())).toBe('user edge@site 7 at cloud.example.com:6432/metering');
    expect(urlFromParts('POSTGRES_SYNC', {})).toBeUndefined();
    expect(() => urlFromParts('POSTGRES_SYNC', { POSTGRES_SYNC_HOST: 'h', POSTGRES_SYNC_USER: 'u' }))
      .toThrow('POSTGRES_SYNC_HOST is set but POSTGRES_SYNC_DB is not — set it, or give the whole URL instead');
  });

  it('fills DATABASE_URL and POSTGRES_CLIENT_URL from the parts, never over a URL that is given', () => {
    const env: NodeJS.ProcessEnv = { POSTGRES_SYNC_HOST: 'localhost', POSTGRES_SYNC_DB: 'edge', POSTGRES_SYNC_USER: 'edge',
      POSTGRES_CLIENT_HOST: 'cloud', POSTGRES_CLIENT_DB: 'c', POSTGRES_CLIENT_USER: 'u', POSTGRES_CLIENT_URL: 'postgres://given/db' };
    expect(prepareEdgeEnv('/nonexistent/syncline.config.json', env)).toEqual(['DATABASE_URL']);
    expect(env.DATABASE_URL).toBe('postgres://edge@localhost:5432/edge');
    expect(env.POSTGRES_CLIENT_URL).toBe('postgres://given/db');
  });

  it('backs off exponentially from a second, never past the interval', () => {
    const half = () => 0.5;
    expect([0, 1, 2, 3, 4, 5, 6, 7].map((f) => backoffMs(f, 60_000, half))).toEqual([1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
    for (let f = 0; f < 10; f++) {
      expect(backoffMs(f, 60_000, () => 0)).toBeGreaterThanOrEqual(0.8 * Math.min(60_000, 1000 * 2 ** f));
      expect(backoffMs(f, 60_000, () => 0.999)).toBeLessThanOrEqual(60_000);
    }
  });
});

describe('pushing readings', () => {
  beforeEach(async () => {
    // Every test starts with everything committed so far delivered.
    await local.pool.query('truncate edge.readings');
    await remote.pool.query('truncate readings');
    await ledger.insert(remote.pool, 'public.readings', 0, ledger.committed);
  });

  it('sends every pending row once, in recorded_at order, batch by batch, and deletes each batch only after the remote has it', async () => {
    const before = ledger.committed;
    await ledger.add(1050);
    const r = await push(exampleConfig(remote.url, { batchSize: 100, pulls: false }));
    expect(r).toMatchObject({ status: 'succeeded', fetched: 1050, inserted: 1050, unchanged: 0, retired: 1050, batches: 11 });
    await expectAccountedFor();
    expect(await values(local.pool, 'local', true)).toEqual([]);
    // One remote transaction a batch: its rows share received_at (now()), and batch k+1 comes after batch k.
    const { rows } = await remote.pool.query(`select count(*)::int as n, min(recorded_at) as lo, max(recorded_at) as hi
      from readings where value >= $1 group by received_at order by received_at`, [before]);
    expect(rows.map((b) => b.n)).toEqual([...Array(10).fill(100), 50]);
    for (let i = 1; i < rows.length; i++) expect(rows[i].lo.getTime()).toBeGreaterThanOrEqual(rows[i - 1].hi.getTime());
    const run = await runRow(r.runId);
    expect(run).toMatchObject({ entity: 'readings', trigger: 'manual', status: 'succeeded', fetched: 1050, inserted: 1050, unchanged: 0 });
    expect(Object.keys(run.phases).sort()).toEqual(['local_commit', 'pick', 'push', 'remote_commit', 'transfer']);
    expect(run.detail).toMatchObject({ direction: 'push', batches: 11, batch_size: 100, after_push: 'delete', retired_locally: 1050 });
    expect(run.detail.batch_ms.p50).toBeGreaterThan(0);
  });

  it('with afterPush "mark" keeps the rows, marked, and a second run sends nothing', async () => {
    await ledger.add(230);
    const cfg = exampleConfig(remote.url, { batchSize: 64, afterPush: 'mark', pulls: false });
    expect(await push(cfg)).toMatchObject({ status: 'succeeded', fetched: 230, inserted: 230, retired: 230, batches: 4 });
    const { rows } = await local.pool.query('select count(*)::int as n, bool_and(is_synchronized) as all_marked from edge.readings');
    expect(rows[0]).toEqual({ n: 230, all_marked: true });
    expect(await push(cfg)).toMatchObject({ status: 'succeeded', fetched: 0, batches: 0 });
    await expectAccountedFor();
  });

  it('re-sends a batch the remote already committed (a crash before the local delete) as a no-op, counted unchanged', async () => {
    const first = ledger.committed;
    await ledger.add(300);
    // What the remote holds when a process died after its COMMIT and before the local DELETE.
    await ledger.insert(remote.pool, 'public.readings', first, first + 100);
    const r = await push(exampleConfig(remote.url, { batchSize: 100, pulls: false }));
    expect(r).toMatchObject({ status: 'succeeded', fetched: 300, inserted: 200, unchanged: 100, retired: 300 });
    expect(await runRow(r.runId)).toMatchObject({ fetched: 300, inserted: 200, unchanged: 100 });
    await expectAccountedFor();
  });

  it('never retires a row it did not send, whatever arrives while it pushes', async () => {
    await fc.assert(fc.asyncProperty(
      fc.integer({ min: 0, max: 400 }), fc.integer({ min: 5, max: 60 }), fc.integer({ min: 0, max: 5 }),
      async (backlog, batchSize, perTick) => {
        if (backlog) await ledger.add(backlog);
        if (perTick) ledger.start(perTick, 5);
        let r;
        try {
          r = await push(exampleConfig(remote.url, { batchSize, pulls: false }));
        } finally {
          await ledger.stop();
        }
        expect(r.status).toBe('succeeded');
        // At least the backlog went (rows arriving meanwhile may go too, or wait for the next run).
        expect(r.fetched).toBeGreaterThanOrEqual(backlog);
        await expectAccountedFor();
      }), { numRuns: 12 });
  });

  it('refuses a remote table without a unique index on the key, moving nothing, and says what to create', async () => {
    await remote.pool.query('create table if not exists readings_loose (like readings)');
    await ledger.add(10);
    const cfg = exampleConfig(remote.url, { pulls: false });
    cfg.entities.readings.target = 'public.readings_loose';
    const r = await push(cfg);
    expect(r.status).toBe('failed');
    expect(r.error).toBe('push entity "readings": public.readings_loose on source "cloud" has no unique index on exactly '
      + '(tenant_id, meter_id, register_id, recorded_at), which makes a re-sent row a no-op — create unique index on '
      + '"public"."readings_loose" ("tenant_id", "meter_id", "register_id", "recorded_at")');
    expect((await local.pool.query('select count(*)::int as n from edge.readings')).rows[0].n).toBe(10);
    expect((await local.pool.query('select category from sync.run_error where run_id = $1', [r.runId])).rows).toEqual([{ category: 'internal' }]);
    expect((await runRow(r.runId)).status).toBe('failed');
  });

  it('stops at a batch the remote rejects: earlier batches delivered and deleted, that one and the rest kept', async () => {
    const first = ledger.committed;
    await ledger.add(250);
    // The remote refuses one reading of the third batch.
    await remote.pool.query(`alter table readings add constraint readings_not_poison check (value <> ${first + 222})`);
    try {
      const r = await push(exampleConfig(remote.url, { batchSize: 100, pulls: false }));
      expect(r).toMatchObject({ status: 'failed', category: 'integrity', fetched: 200, inserted: 200, batches: 2 });
      expect(r.error).toMatch(/readings_not_poison/);
      expect(await runRow(r.runId)).toMatchObject({ status: 'failed', fetched: 200, inserted: 200 });
      const { local: pending } = await expectAccountedFor();
      expect(sorted(pending)).toEqual(range(first + 200, first + 250));
    } finally {
      await remote.pool.query('alter table readings drop constraint readings_not_poison');
    }
  });

  it('a pull run started on a push entity by mistake deletes none of its unsent rows', async () => {
    // The dangerous case: the local table has the remote's name, so a pull would mirror the remote into it.
    await local.pool.query('create table public.readings (like edge.readings including all)');
    try {
      await local.pool.query(`insert into public.readings (tenant_id, meter_id, register_id, recorded_at, value)
        select 'acme', 999, 1, timestamptz '2030-01-01' + n * interval '1 second', -n from generate_series(1, 3) n`);
      const before = (await local.pool.query('select id, value, is_synchronized from public.readings order by id')).rows;
      const cfg = exampleConfig(remote.url, { pulls: false });
      cfg.entities.readings.from = { table: 'public.readings' };
      const { edge } = await edgeFor(cfg);
      expect((await local.pool.query(`select mode from sync.entity where name = 'readings'`)).rows[0].mode).toBe('append');
      await edge.engine.run('readings', { trigger: 'manual' });
      const after = (await local.pool.query('select id, value, is_synchronized from public.readings where meter_id = 999 order by id')).rows;
      expect(after).toEqual(before);
    } finally {
      await local.pool.query('drop table public.readings');
    }
  });

  it('needs nothing on the remote but INSERT on its table and SELECT on the key (ON CONFLICT reads it)', async () => {
    const role = `edge_gateway_${process.pid}`;
    await remote.pool.query(`create role ${role} login password 'gateway-pw'`);
    try {
      await remote.pool.query(`grant connect on database ${remote.name} to ${role}; grant usage on schema public to ${role};
        grant insert on readings to ${role}; grant select (tenant_id, meter_id, register_id, recorded_at) on readings to ${role}`);
      const url = new URL(remote.url);
      url.username = role;
      url.password = 'gateway-pw';
      const start = ledger.committed;
      await ledger.add(150);
      const r = await push(exampleConfig(url.toString(), { batchSize: 100, pulls: false }));
      expect(r, r.error).toMatchObject({ status: 'succeeded', inserted: 150 });
      expect((await values(remote.pool, 'remote')).filter((v) => v >= start).length).toBe(150);
    } finally {
      for (const o of open.splice(0)) {
        await o.edge.close();
        await o.engine.close();
      }
      await remote.pool.query(`drop owned by ${role}; drop role ${role}`);
    }
  });

  it('says which local column is missing or wrong', async () => {
    const cfg = exampleConfig(remote.url, { pulls: false });
    cfg.entities.readings.push.syncedColumn = 'sent';
    expect((await push(cfg)).error).toBe('push entity "readings": push.syncedColumn "sent" is not a boolean column of edge.readings '
      + '— add it: "sent" boolean not null default false');
    const nullable = exampleConfig(remote.url, { pulls: false });
    nullable.entities.readings.push.orderBy = 'quality';
    await local.pool.query('alter table edge.readings alter column quality drop not null');
    try {
      expect((await push(nullable)).error).toBe('push entity "readings": push.orderBy column "quality" of edge.readings may be null, '
        + 'and a null never orders — make it NOT NULL');
    } finally {
      await local.pool.query('alter table edge.readings alter column quality set not null');
    }
  });
});

describe('checking a push entity', () => {
  it('describes both tables in one line, or says what to fix', async () => {
    const { cfg, edge } = await edgeFor(exampleConfig(remote.url, { pulls: false }));
    await local.pool.query('truncate edge.readings');
    await ledger.add(7);
    expect(await edge.describePush('readings', cfg.entities.readings)).toBe('pushes "edge"."readings" to "public"."readings" on source "cloud": '
      + '6 columns, key (tenant_id, meter_id, register_id, recorded_at) unique there, 7 rows pending');
    const wrong = parseConfig(exampleConfig(remote.url, { pulls: false }), {});
    wrong.entities.readings.key = ['tenant_id', 'meter_id'];
    await expect(edge.describePush('readings', wrong.entities.readings)).rejects.toThrow(/has no unique index on exactly \(tenant_id, meter_id\)/);
  });
});

describe('the edge cycle', () => {
  it('skips while another process holds the edge lock, recording nothing', async () => {
    const { edge } = await edgeFor(exampleConfig(remote.url, { pulls: false }));
    const holder = await local.pool.connect();
    try {
      await holder.query('select pg_advisory_lock($1, $2)', EDGE_LOCK);
      const runs = (await local.pool.query('select count(*)::int as n from sync.run')).rows[0].n;
      const r = await runCycle(edge, { trigger: 'manual' });
      expect(r).toMatchObject({ status: 'skipped', push: [], pull: [], started: null });
      expect((await local.pool.query('select count(*)::int as n from sync.run')).rows[0].n).toBe(runs);
    } finally {
      await holder.query('select pg_advisory_unlock($1, $2)', EDGE_LOCK);
      holder.release();
    }
  });

  it('reports a remote that does not answer by host, port, database and user, never the password, and pushes nothing', async () => {
    await ledger.add(5);
    const dead = 'postgres://edge:s3cret-pw@127.0.0.1:1/cloud';
    const { edge } = await edgeFor(exampleConfig(dead, { pulls: false }));
    const runs = (await local.pool.query('select count(*)::int as n from sync.run')).rows[0].n;
    const r = await runCycle(edge, { trigger: 'manual' });
    expect(r.status).toBe('remote-down');
    expect(r.error).toContain('user edge at 127.0.0.1:1/cloud');
    expect(r.error).toContain('nothing listens at 127.0.0.1:1/cloud');
    expect(r.error).not.toContain('s3cret');
    expect((await local.pool.query('select count(*)::int as n from sync.run')).rows[0].n).toBe(runs);
    expect((await values(local.pool, 'local')).length).toBeGreaterThanOrEqual(5);
  });
});

describe('the sync_edge worker task', () => {
  /** Runs the queued sync_edge jobs as a worker would, and waits until their outcomes are written. */
  async function work(edgeEngine: Engine): Promise<void> {
    await runOnce({ pgPool: local.pool, taskList: { sync_edge: syncEdge(edgeEngine) }, logger: workerLogger() });
    // Far beyond how long writing the outcome takes on a loaded machine.
    const until = Date.now() + 60_000;
    // Only this task's jobs: the failed runs above raised alerts, whose sync_alert jobs wait for another worker.
    const jobs = `select count(*)::int as n from graphile_worker.jobs where task_identifier = 'sync_edge'`;
    while ((await local.pool.query(jobs)).rows[0].n > 0) {
      if (Date.now() > until) throw new Error('sync_edge job still queued 60 s after the worker ran');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  it('runs a cycle, and while another cycle holds the edge lock succeeds without running one', async () => {
    const { edge } = await edgeFor(exampleConfig(remote.url, { pulls: false }));
    const start = ledger.committed;
    await ledger.add(120);
    const holder = await local.pool.connect();
    try {
      await holder.query('select pg_advisory_lock($1, $2)', EDGE_LOCK);
      const runs = (await local.pool.query('select count(*)::int as n from sync.run')).rows[0].n;
      await local.pool.query(`select graphile_worker.add_job('sync_edge', '{}'::json)`);
      await work(edge.engine);
      expect((await local.pool.query('select count(*)::int as n from sync.run')).rows[0].n).toBe(runs);
    } finally {
      await holder.query('select pg_advisory_unlock($1, $2)', EDGE_LOCK);
      holder.release();
    }
    await local.pool.query(`select graphile_worker.add_job('sync_edge', '{}'::json)`);
    await work(edge.engine);
    const { rows } = await local.pool.query(`select trigger, status, fetched from sync.run where entity = 'readings' order by id desc limit 1`);
    expect(rows[0]).toMatchObject({ trigger: 'cron', status: 'succeeded' });
    expect(rows[0].fetched).toBeGreaterThanOrEqual(120);
    expect((await values(remote.pool, 'remote')).filter((v) => v >= start).length).toBe(120);
  });
});
