import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { describe, it, expect, beforeAll, afterAll, inject } from 'vitest';
import { testDatabase, testDatabases, type TestDatabase } from '../../test/helpers/db.js';
import { parseConfig, ConfigError } from '../../src/config/load.js';
import { applyConfig } from '../../src/config/apply.js';
import type { Config } from '../../src/config/schema.js';
import { quoteIdent } from '../../src/db/database.js';
import type { Pool } from '../../src/db/pool.js';
import { Engine, type RunOptions, type RunResult } from '../../src/engine/run.js';
import { runMany } from '../../src/engine/plan.js';
import { sourceUrl } from '../../src/sources/postgres/read.js';
import { demoSources, mutateDemo, prepareDemo, seedDemo } from '../../src/demo/seed.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const file = (name: string) => readFileSync(path.join(here, name), 'utf8');
const json = (name: string) => JSON.parse(file(name)) as Record<string, unknown>;

const ENTITIES = ['tenants', 'meters', 'registers', 'device_register'];
const TENANT = 'acme';
const REMOTE_TABLES = ['tenants', 'meters', 'registers', 'device_register'];

/**
 * What each local table must hold, as the same query on both sides: the
 * remote side renames columns as the entity's mapping does. Rows are compared
 * by count and by an md5 of their text form in key order.
 */
const COMPARED: Record<string, { remote: string; local: string; key: string }> = {
  tenants: {
    remote: 'select tenant_id, name, timezone, is_active, settings, updated_at from public.tenants',
    local: 'select tenant_id, name, timezone, is_active, settings, updated_at from metering.tenants',
    key: 'tenant_id',
  },
  meters: {
    remote: `select tenant_id, meter_id, serial_no, manufacturer, model, installed_on, location, latitude, longitude,
                    is_active, attributes, updated_at from public.meters`,
    local: `select tenant_id, meter_id, serial_no, manufacturer, model, installed_on, location, latitude, longitude,
                   is_active, attributes, updated_at from metering.meters`,
    key: 'tenant_id, meter_id',
  },
  registers: {
    remote: `select tenant_id, register_id, obis_code as obis, description as name, unit, multiplier as scale,
                    is_cumulative as cumulative, attrs as attributes, updated_at from public.registers`,
    local: `select tenant_id, register_id, obis, name, unit, scale, cumulative, attributes, updated_at from metering.registers`,
    key: 'tenant_id, register_id',
  },
  device_register: {
    remote: `select tenant_id, meter_id, register_id, channel, is_billing, installed_at, last_reading, attributes, updated_at
               from public.device_register`,
    local: `select tenant_id, meter_id, register_id, channel, is_billing, installed_at, last_reading, attributes, updated_at
              from metering.device_register`,
    key: 'tenant_id, meter_id, register_id',
  },
};

async function digest(pool: Pool, select: string, key: string, tenant?: string) {
  const { rows } = await pool.query(
    `select count(*)::int as rows, coalesce(md5(string_agg(q::text, E'\\n' order by ${key})), '') as md5
       from (${select}) q ${tenant === undefined ? '' : 'where q.tenant_id = $1'}`,
    tenant === undefined ? [] : [tenant]);
  return rows[0] as { rows: number; md5: string };
}

/** Per table: what the remote holds for the tenant and what the local table holds. */
async function compare(remote: Pool, local: Pool, tenant = TENANT) {
  const out: Record<string, { remote: unknown; local: unknown }> = {};
  for (const [t, q] of Object.entries(COMPARED)) {
    out[t] = { remote: await digest(remote, q.remote, q.key, tenant), local: await digest(local, q.local, q.key) };
  }
  return out;
}

async function expectLocalEqualsRemote(remote: Pool, local: Pool, tenant = TENANT) {
  const c = await compare(remote, local, tenant);
  for (const [t, { remote: r, local: l }] of Object.entries(c)) expect(l, `metering.${t}`).toEqual(r);
}

/** md5 of every remote table, to prove a sync never writes to it. */
async function remoteChecksum(remote: Pool): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const t of REMOTE_TABLES) {
    const { rows } = await remote.query(
      `select coalesce(md5(string_agg(x::text, E'\\n' order by x::text)), '') as md5 from public.${quoteIdent(t)} x`);
    out[t] = rows[0].md5;
  }
  return out;
}

/** Rows of a local table pointing at a parent that is not there (foreign keys should make this impossible). */
async function orphans(local: Pool): Promise<Record<string, number>> {
  const { rows } = await local.query(`select
    (select count(*)::int from metering.meters m where not exists (select 1 from metering.tenants t where t.tenant_id = m.tenant_id)) as meters,
    (select count(*)::int from metering.registers r where not exists (select 1 from metering.tenants t where t.tenant_id = r.tenant_id)) as registers,
    (select count(*)::int from metering.device_register d where not exists (
       select 1 from metering.meters m where (m.tenant_id, m.meter_id) = (d.tenant_id, d.meter_id))) as device_meter,
    (select count(*)::int from metering.device_register d where not exists (
       select 1 from metering.registers r where (r.tenant_id, r.register_id) = (d.tenant_id, d.register_id))) as device_register_register,
    (select count(*)::int from pg_constraint where connamespace = 'metering'::regnamespace and not convalidated) as unvalidated`);
  return rows[0];
}

const NO_ORPHANS = { meters: 0, registers: 0, device_meter: 0, device_register_register: 0, unvalidated: 0 };

/** runMany over the given entities, checking the remote is untouched and local integrity holds. */
async function syncChecked(engine: Engine, remote: Pool, local: Pool, names = ENTITIES, opts: Partial<RunOptions> = {}) {
  const before = await remoteChecksum(remote);
  const results = await runMany(engine, names, { trigger: 'manual', ...opts });
  expect(await remoteChecksum(remote), 'the remote must never be written to').toEqual(before);
  expect(await orphans(local)).toEqual(NO_ORPHANS);
  return Object.fromEntries(results.map((r) => [r.entity, r])) as Record<string, RunResult>;
}

const counts = (r: RunResult) => ({ inserted: r.inserted, updated: r.updated, deleted: r.deleted });

/** Rows of each local table. */
async function snapshotCounts(local: Pool): Promise<Record<string, number>> {
  const { rows } = await local.query(`select (select count(*) from metering.tenants)::int as tenants, (select count(*) from metering.meters)::int as meters,
    (select count(*) from metering.registers)::int as registers, (select count(*) from metering.device_register)::int as device_register`);
  return rows[0];
}

describe('the example config', () => {
  it('validates, with the remote URL from the environment and acme as the default tenant', () => {
    const cfg = parseConfig(json('syncline.config.json'), { REMOTE_DATABASE_URL: 'postgres://reader:pw@db.example.com/metering' });
    expect(cfg.sources.remote).toEqual({ kind: 'postgres', url: 'postgres://reader:pw@db.example.com/metering' });
    expect(Object.keys(cfg.entities)).toEqual(ENTITIES);
    for (const e of Object.values(cfg.entities)) expect(e.tenant).toEqual({ column: 'tenant_id', value: 'acme' });
    expect(cfg.entities.device_register.key).toEqual(['tenant_id', 'meter_id', 'register_id']);
    expect(cfg.entities.device_register.dependsOn).toEqual(['meters', 'registers']);
    expect(cfg.entities.meters.cursor).toEqual({ column: 'updated_at', overlap: '5 minutes' });
    expect(cfg.entities.registers.from).toMatchObject({ query: expect.stringContaining('{{tenant}}') });
    expect(cfg.entities.registers.columns).toMatchObject({ obis: 'obis_code', scale: 'multiplier' });
    expect(parseConfig(json('syncline.config.json'), { REMOTE_DATABASE_URL: 'postgres://h/db', TENANT: 'globex' })
      .entities.meters.tenant?.value).toBe('globex');
  });

  it('says which variable to set when REMOTE_DATABASE_URL is missing', () => {
    expect(() => parseConfig(json('syncline.config.json'), {})).toThrow(ConfigError);
    expect(() => parseConfig(json('syncline.config.json'), {}))
      .toThrow('sources.remote.url: environment variable REMOTE_DATABASE_URL is not set — export it or put it in .env');
  });

  it('the demo config is the example on a demo database, every entity each minute', () => {
    const demo = parseConfig(json('demo.config.json'), {});
    const example = parseConfig(json('syncline.config.json'), { REMOTE_DATABASE_URL: 'postgres://h/db' });
    expect(demo.sources).toEqual({ remote: { kind: 'postgres', database: 'syncline_demo', demo: true } });
    expect(demoSources(demo)).toEqual([{ name: 'remote', database: 'syncline_demo' }]);
    expect(demoSources(example)).toEqual([]);
    for (const name of ENTITIES) {
      expect(demo.entities[name].schedule).toBe('* * * * *');
      expect({ ...demo.entities[name], schedule: undefined }).toEqual({ ...example.entities[name], schedule: undefined });
    }
  });
});

describe('remote Postgres → local, one tenant', () => {
  let sync: TestDatabase;
  let source: TestDatabase;
  let cfg: Config;
  let engine: Engine;
  const syncAll = (names = ENTITIES, opts: Partial<RunOptions> = {}) => syncChecked(engine, source.pool, sync.pool, names, opts);

  beforeAll(async () => {
    ({ sync, source } = await testDatabases('remote_pg'));
    await source.pool.query(file('remote.sql'));
    await source.pool.query(file('seed.sql'));
    await sync.pool.query(file('local.sql'));
    cfg = parseConfig(json('syncline.config.json'), { REMOTE_DATABASE_URL: source.url }, 'examples/remote-postgres/syncline.config.json');
    await applyConfig(sync.pool, cfg);
    engine = new Engine(sync.pool, sync.url, cfg);
  });
  afterAll(() => engine?.close());

  it('the seed spreads a few thousand rows over three tenants', async () => {
    const { rows } = await source.pool.query(`select t.tenant_id,
        (select count(*)::int from meters m where m.tenant_id = t.tenant_id) as meters,
        (select count(*)::int from registers r where r.tenant_id = t.tenant_id) as registers,
        (select count(*)::int from device_register d where d.tenant_id = t.tenant_id) as device_register
      from tenants t order by 1`);
    expect(rows.map((r) => r.tenant_id)).toEqual(['acme', 'globex', 'initech']);
    const total = rows.reduce((n, r) => n + r.meters + r.registers + r.device_register, 0);
    expect(total).toBeGreaterThan(3000);
    for (const r of rows) expect(r.device_register).toBeGreaterThan(r.meters);
  });

  it('a dry run previews the first sync and writes nothing', async () => {
    const results = await syncAll(ENTITIES, { dryRun: true });
    expect(results.tenants).toMatchObject({ status: 'succeeded', inserted: 1 });
    expect(results.meters).toMatchObject({ status: 'succeeded', inserted: 500 });
    const { rows } = await sync.pool.query(`select (select count(*)::int from metering.tenants) + (select count(*)::int from metering.meters)
      + (select count(*)::int from metering.registers) + (select count(*)::int from metering.device_register) as n`);
    expect(rows[0].n).toBe(0);
  });

  it('the first sync copies exactly the tenant\'s rows of every table, parents before children', async () => {
    const results = await runMany(engine, ENTITIES, { trigger: 'manual' });
    expect(results.map((r) => r.entity)).toEqual(['tenants', 'meters', 'registers', 'device_register']);
    expect(results.map((r) => r.status)).toEqual(['succeeded', 'succeeded', 'succeeded', 'succeeded']);
    const remote = await compare(source.pool, sync.pool);
    expect(results.map((r) => r.inserted)).toEqual(ENTITIES.map((t) => (remote[t].remote as { rows: number }).rows));
    await expectLocalEqualsRemote(source.pool, sync.pool);
    expect(await orphans(sync.pool)).toEqual(NO_ORPHANS);
    const other = await sync.pool.query(`select
      (select count(*)::int from metering.tenants where tenant_id <> 'acme') + (select count(*)::int from metering.meters where tenant_id <> 'acme')
      + (select count(*)::int from metering.registers where tenant_id <> 'acme') + (select count(*)::int from metering.device_register where tenant_id <> 'acme') as n`);
    expect(other.rows[0].n).toBe(0);
  });

  it('records the initial load in the change log, a composite key\'s history starting with it, and the meters cursor in sync.entity', async () => {
    // An initial load into an empty table is one entry of N rows, not a row per key.
    const { rows } = await sync.pool.query(`select c.action, c.key from sync.change c where c.entity = 'device_register'`);
    expect(rows).toEqual([{ action: expect.stringMatching(/^initial load, \d+ rows$/), key: null }]);
    const history = await sync.pool.query(`select what from sync.record_history('device_register', 'acme', '1', '1')`);
    expect(history.rows).toEqual([{ what: expect.stringMatching(/^initial load \(run \d+\)$/) }]);
    const cursor = await sync.pool.query(`select cursor_value from sync.entity where name = 'meters'`);
    const max = await source.pool.query(`select max(updated_at) as m from meters where tenant_id = 'acme'`);
    expect(new Date(cursor.rows[0].cursor_value).getTime()).toBe(max.rows[0].m.getTime());
  });

  it('re-syncing unchanged data writes nothing; the incremental entity reads only the overlap window', async () => {
    const xmin = `select string_agg(xmin::text, ',' order by tenant_id, meter_id) from metering.meters`;
    const before = (await sync.pool.query(xmin)).rows;
    const results = await syncAll();
    for (const r of Object.values(results)) expect(counts(r), r.entity).toEqual({ inserted: 0, updated: 0, deleted: 0 });
    expect((await sync.pool.query(xmin)).rows).toEqual(before);
    // The seed spaces updated_at seven minutes apart: only the newest meter is inside the 5-minute overlap.
    expect(results.meters.fetched).toBe(1);
    expect(results.device_register.fetched).toBe((await digest(source.pool, COMPARED.device_register.remote, 'tenant_id', TENANT)).rows);
  });

  it('inserts, updates and deletes on the remote reach the local tables in one pass, a still-referenced register included', async () => {
    await source.pool.query(`
      update meters set location = 'Harbour Road 1, unit 9', attributes = attributes || '{"firmware": "7.0.0"}', updated_at = now()
       where tenant_id = 'acme' and meter_id in (10, 11);
      update registers set description = 'Active energy import, peak', updated_at = now() where tenant_id = 'acme' and register_id = 3;
      update device_register set last_reading = last_reading + 12.5, updated_at = now() where tenant_id = 'acme' and meter_id = 20;
      insert into registers (tenant_id, register_id, obis_code, description, unit, multiplier, is_cumulative)
        values ('acme', 13, '1.8.3', 'Active energy import, tariff 3', 'kWh', 1, true);
      insert into meters (tenant_id, meter_id, serial_no, manufacturer, model, installed_on, attributes)
        values ('acme', 9001, 'ACM-009001', 'Kamstrup', 'Omnipower', current_date, '{"phases": 3}');
      insert into device_register (tenant_id, meter_id, register_id, channel, is_billing, installed_at, last_reading)
        select 'acme', 9001, register_id, register_id, true, now(), 0 from registers where tenant_id = 'acme' and register_id in (1, 2, 13);
      delete from device_register where tenant_id = 'acme' and meter_id = 30 and register_id = 2;
      -- Register 11 is referenced by local device_register rows; the cascade deletes those on the remote too.
      delete from registers where tenant_id = 'acme' and register_id = 11;
      -- Other tenants change too; none of it may show up locally.
      update meters set location = 'elsewhere', updated_at = now() where tenant_id = 'globex' and meter_id < 50;
      delete from registers where tenant_id = 'initech' and register_id = 12;`);
    const referencing = await sync.pool.query(`select count(*)::int as n from metering.device_register where tenant_id = 'acme' and register_id = 11`);
    expect(referencing.rows[0].n).toBeGreaterThan(0);

    const results = await syncAll();
    expect(results.tenants).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, deleted: 0 });
    expect(results.meters).toMatchObject({ status: 'succeeded', inserted: 1, updated: 2, deleted: 0 });
    expect(results.registers).toMatchObject({ status: 'succeeded', inserted: 1, updated: 1, deleted: 1, deferred: 0 });
    expect(results.device_register).toMatchObject({ status: 'succeeded', inserted: 3, deleted: referencing.rows[0].n + 1 });
    expect(results.device_register.updated).toBeGreaterThanOrEqual(1);
    await expectLocalEqualsRemote(source.pool, sync.pool);

    // The register's first run postponed the delete; the re-run after device_register made it.
    const runs = await sync.pool.query(`select deferred, deleted from sync.run where entity = 'registers' and not dry_run
       order by id desc limit 2`);
    expect(runs.rows).toEqual([{ deferred: 0, deleted: 1 }, { deferred: 1, deleted: 0 }]);
    const change = await sync.pool.query(`select c.action, c.changed from sync.run_change c
       where c.run_id = (select max(id) from sync.run where entity = 'registers' and inserted + updated > 0) and c.action = 'update'`);
    expect(change.rows).toEqual([{ action: 'update', changed: ['name', 'updated_at'] }]);
  });

  it('the incremental entity fetches only rows changed since its cursor', async () => {
    const cursor = (await sync.pool.query(`select cursor_value from sync.entity where name = 'meters'`)).rows[0].cursor_value;
    await source.pool.query(`update meters set is_active = not is_active, updated_at = now() + interval '1 second'
       where tenant_id = 'acme' and meter_id in (100, 101, 102)`);
    const window = await source.pool.query(
      `select count(*)::int as n from meters where tenant_id = 'acme' and updated_at > $1::timestamptz - interval '5 minutes'`, [cursor]);
    const results = await syncAll(['meters']);
    expect(results.meters).toMatchObject({ status: 'succeeded', fetched: window.rows[0].n, updated: 3, inserted: 0, deleted: 0 });
    expect(results.meters.fetched).toBeLessThan(10);
    await expectLocalEqualsRemote(source.pool, sync.pool);
  });

  it('a meter deleted on the remote leaves the local table on the next full run of meters', async () => {
    await source.pool.query(`delete from meters where tenant_id = 'acme' and meter_id = 40`);
    const incremental = await syncAll();
    expect(incremental.device_register.deleted).toBeGreaterThan(0);
    expect(incremental.meters.deleted).toBe(0);
    const full = await syncAll(['meters'], { full: true });
    expect(full.meters).toMatchObject({ status: 'succeeded', deleted: 1, inserted: 0, updated: 0 });
    await expectLocalEqualsRemote(source.pool, sync.pool);
  });

  it('changes in other tenants never reach the local tables', async () => {
    await source.pool.query(`update registers set description = description || ' (rev)', updated_at = now() where tenant_id <> 'acme';
      delete from device_register where tenant_id = 'globex' and meter_id < 100;
      insert into meters (tenant_id, meter_id, serial_no, manufacturer, model) values ('initech', 9999, 'INI-009999', 'Itron', 'SL7000')`);
    const results = await syncAll(ENTITIES, { full: true });
    for (const r of Object.values(results)) expect(counts(r), r.entity).toEqual({ inserted: 0, updated: 0, deleted: 0 });
    await expectLocalEqualsRemote(source.pool, sync.pool);
  });

  it('TENANT selects another tenant with the same config', async () => {
    const other = await testDatabase('remote_pg_globex');
    await other.pool.query(file('local.sql'));
    const globex = parseConfig(json('syncline.config.json'), { REMOTE_DATABASE_URL: source.url, TENANT: 'globex' });
    await applyConfig(other.pool, globex);
    const e = new Engine(other.pool, other.url, globex);
    try {
      const results = await syncChecked(e, source.pool, other.pool);
      expect(Object.values(results).map((r) => r.status)).toEqual(['succeeded', 'succeeded', 'succeeded', 'succeeded']);
      await expectLocalEqualsRemote(source.pool, other.pool, 'globex');
    } finally {
      await e.close();
    }
  });
});

describe('the npm start demo', () => {
  let sync: TestDatabase;
  let database: string;
  let srcUrl: string;
  let remote: Pool;

  beforeAll(async () => {
    sync = await testDatabase('remote_pg_demo');
    database = `${sync.name}_source`;
    srcUrl = sourceUrl({ kind: 'postgres', database }, sync.url);
  });
  afterAll(async () => {
    await remote?.end();
    const admin = new pg.Client(inject('adminUrl'));
    await admin.connect();
    try {
      await admin.query(`drop database if exists ${quoteIdent(database)} with (force)`);
    } finally {
      await admin.end();
    }
  });

  it('seedDemo creates and seeds the source and the local tables, and a second call changes nothing', async () => {
    await seedDemo(sync.url, database);
    remote = new pg.Pool({ connectionString: srcUrl, max: 2 });
    const seeded = await remoteChecksum(remote);
    const { rows } = await remote.query('select count(*)::int as n from meters');
    expect(rows[0].n).toBe(1000);
    await sync.pool.query(`insert into metering.tenants (tenant_id, name, timezone, is_active, updated_at)
      values ('mine', 'a row of my own', 'UTC', true, now())`);

    await seedDemo(sync.url, database);
    expect(await remoteChecksum(remote)).toEqual(seeded);
    const mine = await sync.pool.query(`select name from metering.tenants where tenant_id = 'mine'`);
    expect(mine.rows).toEqual([{ name: 'a row of my own' }]);
    await sync.pool.query(`delete from metering.tenants where tenant_id = 'mine'`);
  });

  it('seedDemo leaves a source that already has rows alone', async () => {
    await remote.query(`delete from device_register where tenant_id = 'initech'`);
    const before = await remoteChecksum(remote);
    await seedDemo(sync.url, database);
    expect(await remoteChecksum(remote)).toEqual(before);
  });

  it('mutateDemo makes inserts, updates and deletes that the next scheduled sync picks up', async () => {
    const raw = json('demo.config.json');
    raw.sources = { remote: { kind: 'postgres', database, demo: true } };
    const cfg = parseConfig(raw, {});
    // Only the embedded server gets the demo; a server the user names never does.
    expect(await prepareDemo(sync.url, cfg, false)).toEqual([]);
    expect(await prepareDemo(sync.url, cfg, true)).toEqual([srcUrl]);
    await applyConfig(sync.pool, cfg);
    const engine = new Engine(sync.pool, sync.url, cfg);
    try {
      await syncChecked(engine, remote, sync.pool, ENTITIES, { trigger: 'cron' });
      await expectLocalEqualsRemote(remote, sync.pool);

      await mutateDemo(srcUrl);
      const results = await syncChecked(engine, remote, sync.pool, ENTITIES, { trigger: 'cron' });
      expect(Object.values(results).every((r) => r.status === 'succeeded')).toBe(true);
      expect(results.meters.inserted).toBe(1);
      expect(results.meters.updated).toBeGreaterThanOrEqual(1);
      expect(results.device_register).toMatchObject({ inserted: 4, deleted: 1 });
      expect(results.device_register.updated).toBeGreaterThanOrEqual(1);
      await expectLocalEqualsRemote(remote, sync.pool);

      const status = await sync.pool.query(`select entity, state from sync.status order by entity`);
      expect(status.rows.map((r) => r.state)).toEqual(['ok', 'ok', 'ok', 'ok']);
    } finally {
      await engine.close();
    }
  });
});

/** Seeded remote and local databases for the example, with one sync done. */
async function syncedExample(prefix: string): Promise<{ sync: TestDatabase; source: TestDatabase; engine: Engine }> {
  const { sync, source } = await testDatabases(prefix);
  await source.pool.query(file('remote.sql'));
  await source.pool.query(file('seed.sql'));
  await sync.pool.query(file('local.sql'));
  const cfg = parseConfig(json('syncline.config.json'), { REMOTE_DATABASE_URL: source.url });
  await applyConfig(sync.pool, cfg);
  const engine = new Engine(sync.pool, sync.url, cfg);
  await syncChecked(engine, source.pool, sync.pool);
  return { sync, source, engine };
}

describe('a tenant removed on the remote', () => {
  let sync: TestDatabase;
  let source: TestDatabase;
  let engine: Engine;

  beforeAll(async () => {
    ({ sync, source, engine } = await syncedExample('remote_pg_offboard'));
  });
  afterAll(() => engine?.close());

  // An empty snapshot of a filled table is exactly what a broken source looks
  // like: the delete guard holds every delete until an operator confirms.
  it('holds every delete of the full sync, then empties the local tables once confirmed, parents included', async () => {
    await source.pool.query(`delete from tenants where tenant_id = 'acme'`);
    const before = await snapshotCounts(sync.pool);
    const held = await syncChecked(engine, source.pool, sync.pool, ENTITIES, { full: true });
    expect(Object.values(held).map((r) => [r.status, r.deleted])).toEqual(ENTITIES.map(() => ['partial', 0]));
    expect(held.tenants.held).toBe(1);
    expect(held.tenants.note).toMatch(/--confirm-deletes/);
    expect(await snapshotCounts(sync.pool)).toEqual(before);
    const alerts = await sync.pool.query(`select entity from sync.alert where kind = 'deletes_held' and resolved_at is null order by entity`);
    expect(alerts.rows.map((a) => a.entity)).toEqual([...ENTITIES].sort());
    // Every level of the local hierarchy defers its deletes until the level
    // below lets go: one confirmed `sync` still converges, because runMany
    // re-runs deferred entities children first.
    const results = await syncChecked(engine, source.pool, sync.pool, ENTITIES, { full: true, confirmDeletes: true });
    expect(Object.values(results).map((r) => r.status)).toEqual(['succeeded', 'succeeded', 'succeeded', 'succeeded']);
    await expectLocalEqualsRemote(source.pool, sync.pool);
    expect(results.tenants).toMatchObject({ deleted: 1, deferred: 0 });
    expect((await sync.pool.query(`select count(*)::int as n from sync.alert where kind = 'deletes_held' and resolved_at is null`)).rows[0].n)
      .toBe(0);
  });
});

describe('a child row whose parent the incremental entity did not fetch', () => {
  let sync: TestDatabase;
  let source: TestDatabase;
  let engine: Engine;

  beforeAll(async () => {
    ({ sync, source, engine } = await syncedExample('remote_pg_orphan'));
  });
  afterAll(() => engine?.close());

  // A meter committed with an updated_at older than the cursor less the
  // overlap (a backdated import, a long transaction) is not fetched by the
  // incremental meters run, so its device_register rows have no local parent.
  // "Every fetched record is accounted for: merged, unchanged, or quarantined
  // with a reason": the rows are quarantined, not a failed run.
  it('quarantines the rows without a local parent and merges the rest', async () => {
    await source.pool.query(`
      insert into meters (tenant_id, meter_id, serial_no, manufacturer, model, updated_at)
        values ('acme', 7000, 'ACM-007000', 'Itron', 'E360', '2020-01-01');
      insert into device_register (tenant_id, meter_id, register_id, channel, installed_at)
        values ('acme', 7000, 1, 1, now()), ('acme', 7000, 2, 2, now());
      update device_register set last_reading = 1, updated_at = now() where tenant_id = 'acme' and meter_id = 1 and register_id = 1;`);
    const results = await syncChecked(engine, source.pool, sync.pool);
    expect(results.meters).toMatchObject({ status: 'succeeded', fetched: 1, inserted: 0 });
    expect(results.device_register).toMatchObject({ status: 'partial', quarantined: 2, updated: 1, inserted: 0 });
    const errors = await sync.pool.query(`select key, category from sync.run_error where run_id = $1 order by key`,
      [results.device_register.runId]);
    expect(errors.rows).toEqual([
      { key: ['acme', '7000', '1'], category: 'integrity' },
      { key: ['acme', '7000', '2'], category: 'integrity' },
    ]);
    // Once the parent arrives (a full run of meters), the next run merges them.
    await syncChecked(engine, source.pool, sync.pool, ['meters'], { full: true });
    const again = await syncChecked(engine, source.pool, sync.pool, ['device_register']);
    expect(again.device_register).toMatchObject({ status: 'succeeded', inserted: 2 });
    await expectLocalEqualsRemote(source.pool, sync.pool);
  });
});
