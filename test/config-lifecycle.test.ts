import { describe, it, expect, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testDatabases, type TestDatabase } from './helpers/db.js';

let sync: TestDatabase;
let source: TestDatabase;
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-lifecycle-'));

function cli(args: string[], config: unknown, env: Record<string, string> = {}) {
  const file = path.join(dir, `config-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(config));
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args, '--config', file], {
    encoding: 'utf8', env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_LOG_LEVEL: 'silent', ...env }, timeout: 90_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const entity = (extra: object = {}) => ({ source: 'src', from: { table: 'items' }, target: 'items', key: ['id'], ...extra });
const config = (entities: Record<string, unknown>) => ({ sources: { src: { kind: 'postgres', url: source.url } }, entities });

beforeAll(async () => {
  ({ sync, source } = await testDatabases('lifecycle'));
  await source.pool.query(`create table items (id int primary key, name text, code text);
    insert into items select i, 'n' || i, 'c' || i from generate_series(1, 5) i`);
  await sync.pool.query('create table items (id int primary key, name text, code text); create table other (id int primary key)');
});

describe('a config and sync.entity', () => {
  it('sync runs the config it is given: new and changed entities are applied first and printed; others stay, and are not run', async () => {
    expect(cli(['config', 'apply'], config({ items: entity({ columns: ['id', 'name'] }), elsewhere: { ...entity(), target: 'other' } })).code).toBe(0);
    const r = cli(['sync'], config({ items: entity({ columns: ['id', 'name', 'code'] }) }));
    expect(r.code).toBe(0);
    expect(r.err).toMatch(/applied the config to sync\.entity:\n\s+~ items\n\s+definition\.columns: \["id","name"\] → \["id","name","code"\]/);
    expect(r.err).toMatch(/sync\.entity also has elsewhere, which this config does not define/);
    expect((await sync.pool.query('select count(*)::int as n from items where code is not null')).rows[0].n).toBe(5);
    expect((await sync.pool.query(`select entity from sync.run order by id`)).rows).toEqual([{ entity: 'items' }]);
    expect((await sync.pool.query(`select name from sync.entity order by name`)).rows.map((x) => x.name)).toEqual(['elsewhere', 'items']);
  });

  it('removing an entity drops its queued jobs, resolves its alerts and closes its places in waves; its runs stay', async () => {
    await sync.pool.query(`select sync.request('elsewhere')`);
    await sync.pool.query(`select sync.raise_alert('stale', 'warning', 'elsewhere', 'old news')`);
    expect((await sync.pool.query(`select count(*)::int as n from graphile_worker.jobs where queue_name = 'sync:elsewhere'`)).rows[0].n).toBe(1);
    expect(cli(['config', 'apply'], config({ items: entity({ columns: ['id', 'name', 'code'] }) })).code).toBe(0);
    expect((await sync.pool.query(`select count(*)::int as n from graphile_worker.jobs where queue_name = 'sync:elsewhere'`)).rows[0].n).toBe(0);
    expect((await sync.pool.query(`select count(*)::int as n from sync.alert where entity = 'elsewhere' and resolved_at is null`)).rows[0].n).toBe(0);
    const waves = await sync.pool.query(`select we.state, w.finished_at is not null as closed from sync.wave_entity we
      join sync.wave w on w.id = we.wave_id where we.entity = 'elsewhere'`);
    expect(waves.rows).toEqual([{ state: 'skipped', closed: true }]);
  });

  it('with DATABASE_URL set, the demo is never seeded: check says so and creates no database', async () => {
    const demo = { sources: { remote: { kind: 'postgres', database: 'syncline_demo_lifecycle', demo: true } },
      entities: { tenants: { source: 'remote', from: { table: 'public.tenants' }, target: 'items', key: ['id'] } } };
    const r = cli(['check'], demo);
    expect(r.err).toMatch(/the demo source "remote" \(database syncline_demo_lifecycle\) is seeded only on the embedded server/);
    const exists = await sync.pool.query(`select count(*)::int as n from pg_database where datname = 'syncline_demo_lifecycle'`);
    expect(exists.rows[0].n).toBe(0);
  });

  it('backfill runs the config it is given too: its changes are applied first and printed', async () => {
    const cursor = { cursor: { column: 'id' } };
    expect(cli(['config', 'apply'], config({ items: entity({ columns: ['id', 'name'], ...cursor }) })).code).toBe(0);
    await sync.pool.query('update items set code = null');
    const r = cli(['backfill', 'items', '--from', '0', '--to', '10', '--chunk', '10'], config({ items: entity({ columns: ['id', 'name', 'code'], ...cursor }) }));
    expect(r.code, r.err).toBe(0);
    expect(r.err).toMatch(/applied the config to sync\.entity:\n\s+~ items\n\s+definition\.columns: \["id","name"\] → \["id","name","code"\]/);
    expect((await sync.pool.query('select count(*)::int as n from items where code is not null')).rows[0].n).toBe(5);
  });
});
