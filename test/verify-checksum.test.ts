import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { until } from './helpers/until.js';
import type { Engine } from '../src/engine/run.js';
import { verifyEntity } from '../src/engine/verification.js';
import { startWorker } from '../src/worker/worker.js';
import { makePool } from '../src/db/pool.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-verify-'));

const ENTITIES = {
  items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'], tenant: { column: 'tenant', value: 'a' } },
  events: { source: 'src', from: { table: 'events' }, target: 'events', key: ['id'], cursor: { column: 'at' } },
};

function cli(args: string[]) {
  const file = path.join(dir, 'syncline.config.json');
  writeFileSync(file, JSON.stringify({ sources: { src: { kind: 'postgres', url: source.url } }, entities: ENTITIES }));
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    encoding: 'utf8',
    env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: file, SYNCLINE_LOG_LEVEL: 'silent' },
    timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const rows = async (db: TestDatabase, table: string) =>
  (await db.pool.query(`select * from ${table} order by 1, 2`)).rows;

const keysOf = async (id: number) => (await sync.pool.query(
  `select kind, key, columns from sync.verification_key where verification_id = $1 order by kind collate "C", key`, [id])).rows;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('verify_checksum'));
  const ddl = `create table items (tenant text, id int, name text, price numeric(10, 2), at timestamptz, doc jsonb, primary key (tenant, id));
    create table events (id int primary key, at timestamptz not null, body text)`;
  await source.pool.query(`${ddl};
    insert into items select t, i, 'item ' || i, i * 1.5, timestamptz '2026-01-01' + i * interval '1 hour', jsonb_build_object('i', i)
      from unnest(array['a', 'b']) t, generate_series(1, 300) i`);
  await sync.pool.query(ddl);
  engine = await engineFor(sync, source, ENTITIES);
  expect((await engine.run('items', { trigger: 'manual' })).status).toBe('succeeded');
});
afterAll(() => engine.close());

describe('syncline verify', () => {
  it('equal tables: no differences, exit 0', async () => {
    const r = cli(['verify', 'items']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^items: 300 rows compared in \d+ segments: equal \(\d+\.\d s, verification \d+\)\n$/);
    const { rows: [v] } = await sync.pool.query(`select * from sync.verification order by id desc limit 1`);
    expect(v).toMatchObject({ entity: 'items', status: 'equal', method: 'checksum', rows_compared: 300, missing: 0, extra: 0, changed: 0 });
  });

  it('a deleted, an inserted and an updated row are listed with their kind, another tenant\'s change is not; exit 4', async () => {
    await source.pool.query(`delete from items where tenant = 'a' and id = 7;
      insert into items values ('a', 1001, 'new', 1, now(), '{}');
      update items set price = 99.5, doc = '{"i": 12, "x": 1}' where tenant = 'a' and id = 12;
      update items set name = 'other tenant' where tenant = 'b' and id = 12`);
    const r = cli(['verify', 'items']);
    expect(r.code).toBe(4);
    expect(r.out.split('\n').slice(0, 3)).toEqual([
      '- {"tenant":"a","id":"1001"}  (in the source, missing from the target)',
      '+ {"tenant":"a","id":"7"}  (in the target, not in the source)',
      '~ {"tenant":"a","id":"12"}  (differs: price, doc)',
    ]);
    expect(r.out).toMatch(/items: 300 rows compared in \d+ segments: 1 missing, 1 extra, 1 differing/);
    const { rows: [v] } = await sync.pool.query(`select id, status, missing, extra, changed from sync.verification order by id desc limit 1`);
    expect(v).toMatchObject({ status: 'differs', missing: 1, extra: 1, changed: 1 });
    expect(await keysOf(Number(v.id))).toEqual([
      { kind: '+', key: ['a', '7'], columns: null },
      { kind: '-', key: ['a', '1001'], columns: null },
      { kind: '~', key: ['a', '12'], columns: ['price', 'doc'] },
    ]);
  });

  it('--json prints the same keys for scripts', () => {
    const r = cli(['verify', 'items', '--json']);
    expect(r.code).toBe(4);
    const j = JSON.parse(r.out);
    expect(j).toMatchObject({ entity: 'items', status: 'differs', missing: 1, extra: 1, changed: 1 });
    expect(j.keys.map((k: { kind: string; key: string[] }) => `${k.kind}${k.key.join('/')}`)).toEqual(['-a/1001', '+a/7', '~a/12']);
  });

  it('--fix re-syncs exactly those keys, and a second verify is clean', async () => {
    const before = await sync.pool.query(`select * from items where tenant = 'b' order by id`);
    const r = cli(['verify', 'items', '--fix']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/fix: run \d+ re-synced 3 keys: \+1 inserted, ~1 updated, -1 deleted/);
    expect(r.out).toMatch(/verified again: items: 300 rows compared in \d+ segments: equal/);
    expect(await rows(sync, `items where tenant = 'a'`)).toEqual(await rows(source, `items where tenant = 'a'`));
    // The other tenant's rows are not the entity's: untouched.
    expect((await sync.pool.query(`select * from items where tenant = 'b' order by id`)).rows).toEqual(before.rows);
    const again = cli(['verify', 'items']);
    expect(again.code).toBe(0);
    const { rows: [v] } = await sync.pool.query(`select status, detail from sync.verification where fix order by id desc limit 1`);
    expect(v.status).toBe('fixed');
    expect(v.detail.fix).toMatchObject({ run_status: 'succeeded' });
  });

  it('an unknown entity is a usage error (exit 2)', () => {
    const r = cli(['verify', 'nope']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/unknown entity "nope" — the config defines: events, items/);
  });
});

describe('a verification whose process died', () => {
  it('is closed as failed by the next verification; one whose session is alive stays running', async () => {
    const open = async (client: { query: typeof sync.pool.query }) => {
      const { rows } = await client.query(`insert into sync.verification (entity, requested_by) values ('items', 'test') returning id`);
      await client.query(`select sync.start_verification($1, 'checksum')`, [rows[0].id]);
      return Number(rows[0].id);
    };
    // One session that ends (a killed CLI's connection is dropped the same way), one that stays.
    const gone = makePool(sync.url, { max: 1 });
    const alive = makePool(sync.url, { max: 1 });
    const client = await alive.connect();
    try {
      const goneId = await open(gone);
      const { rows: [{ pid }] } = await gone.query('select pg_backend_pid() as pid');
      await gone.end();
      await until('the ended session to leave pg_stat_activity', async () => !(await sync.pool.query('select 1 from pg_stat_activity where pid = $1', [pid])).rows.length);
      const aliveId = await open(client);
      const r = await verifyEntity(engine, 'items', { requestedBy: 'test' });
      expect(r.status).toBe('equal');
      const { rows } = await sync.pool.query(`select id::int as id, status, detail ->> 'error' as error from sync.verification where id = any($1) order by id`,
        [[goneId, aliveId]]);
      expect(rows).toEqual([
        { id: goneId, status: 'failed', error: expect.stringMatching(/ended mid-way/) },
        { id: aliveId, status: 'running', error: null },
      ]);
    } finally {
      client.release();
      await alive.end();
    }
  });
});

describe('select sync.verify()', () => {
  it('with a worker running, records the same keys as the CLI, and fix => true heals', async () => {
    await source.pool.query(`delete from items where tenant = 'a' and id = 20;
      insert into items values ('a', 2001, 'new', 1, now(), null);
      update items set name = null where tenant = 'a' and id = 21`);
    const direct = await verifyEntity(engine, 'items');
    expect(direct.status).toBe('differs');
    const worker = await startWorker(engine, { concurrency: 1 });
    try {
      const id = Number((await sync.pool.query(`select sync.verify('items') as id`)).rows[0].id);
      const done = await until('the queued verification', async () => (await sync.pool.query(
        `select status, requested_by from sync.verification where id = $1 and finished_at is not null`, [id])).rows[0]);
      expect(done.status).toBe('differs');
      expect(await keysOf(id)).toEqual(await keysOf(direct.id));
      expect((await keysOf(id)).map((k) => k.kind).sort()).toEqual(['+', '-', '~']);
      const fixId = Number((await sync.pool.query(`select sync.verify('items', fix => true) as id`)).rows[0].id);
      const fixed = await until('the fix', async () => (await sync.pool.query(
        `select status, detail from sync.verification where id = $1 and status in ('fixed', 'differs', 'failed')
            and detail ? 'fix'`, [fixId])).rows[0]);
      expect(fixed.status).toBe('fixed');
    } finally {
      await worker.stop();
    }
    expect(await rows(sync, `items where tenant = 'a'`)).toEqual(await rows(source, `items where tenant = 'a'`));
  });

  it('rejects an unknown entity with a hint', async () => {
    await expect(sync.pool.query(`select sync.verify('nope')`)).rejects.toThrow(/unknown entity "nope"/);
  });
});

describe('verification after incremental runs, on a schedule', () => {
  const verifications = async () => Number((await sync.pool.query(
    `select count(*) as n from sync.verification where entity = 'events' and requested_by = 'schedule'`)).rows[0].n);
  const addEvents = (from: number, to: number) => source.pool.query(
    `insert into events select g, timestamptz '2026-01-01' + g * interval '1 minute', 'e' || g from generate_series($1::int, $2::int) g`, [from, to]);

  it('a run right after a verification does not verify again; one after the interval does, and finds the gap', async () => {
    await sync.pool.query(`update sync.setting set value = '1 hour' where name = 'verify_every'`);
    await addEvents(1, 50);
    // The first run verifies (none before).
    const first = await engine.run('events', { trigger: 'manual' });
    expect(first.status).toBe('succeeded');
    expect(await verifications()).toBe(1);
    expect((await sync.pool.query('select detail from sync.run where id = $1', [first.runId])).rows[0].detail.verify)
      .toMatchObject({ method: 'checksum', rows_compared: 50, missing: 0, extra: 0, changed: 0 });
    // A row lost behind Syncline's back: the next run is within the hour and does not look.
    await sync.pool.query('delete from events where id = 5');
    await addEvents(61, 62);
    const second = await engine.run('events', { trigger: 'manual' });
    expect(second.status).toBe('succeeded');
    expect(await verifications()).toBe(1);
    expect((await sync.pool.query('select detail from sync.run where id = $1', [second.runId])).rows[0].detail.verify).toBeUndefined();
    // An hour later (the last verification moved back), the next run verifies and finds it.
    await sync.pool.query(`update sync.verification set started_at = started_at - interval '61 minutes' where entity = 'events'`);
    const third = await engine.run('events', { trigger: 'manual' });
    expect(await verifications()).toBe(2);
    const detail = (await sync.pool.query('select detail from sync.run where id = $1', [third.runId])).rows[0].detail;
    expect(detail.verify).toMatchObject({ method: 'checksum', missing: 1, extra: 0, changed: 0 });
    expect((await sync.pool.query(`select key_values, kind from sync.gaps where entity = 'events'`)).rows).toEqual([{ key_values: ['5'], kind: '-' }]);
  });

  it('an entity\'s own interval wins over the setting, and a backfill makes the next run verify', async () => {
    const due = async (every: string | null) => (await sync.pool.query(
      'select sync.verification_due($1, $2::interval) as due', ['events', every])).rows[0].due;
    expect(await due(null)).toBe(false);
    await sync.pool.query(`update sync.verification set started_at = started_at - interval '10 minutes' where entity = 'events'`);
    expect(await due('5m')).toBe(true);
    expect(await due(null)).toBe(false);
    await addEvents(63, 64);
    expect((await engine.run('events', { trigger: 'backfill', window: { from: '2026-01-01', to: '2026-01-02' } })).status).toBe('succeeded');
    expect(await due(null)).toBe(true);
  });

  it('a successful full run counts as a verification: the next incremental run does not verify', async () => {
    await sync.pool.query(`update sync.verification set started_at = started_at - interval '2 hours' where entity = 'events'`);
    await sync.pool.query(`update sync.run set finished_at = finished_at - interval '2 hours' where entity = 'events' and trigger = 'backfill'`);
    const n = await verifications();
    expect((await engine.run('events', { trigger: 'manual', full: true })).status).toBe('succeeded');
    await addEvents(65, 66);
    const r = await engine.run('events', { trigger: 'manual' });
    expect(r.status).toBe('succeeded');
    expect(await verifications()).toBe(n);
    expect((await sync.pool.query('select detail from sync.run where id = $1', [r.runId])).rows[0].detail.verify).toBeUndefined();
  });
});
