import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { parseConfig, ConfigError } from '../src/config/load.js';
import type { Engine } from '../src/engine/run.js';

const exec = promisify(execFile);
let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const TABLES = ['items', 'items_rows', 'items_off', 'items_sd', 'items_p'];
const ddl = TABLES.map((t) => `create table ${t} (tenant text not null, id int not null, name text, primary key (tenant, id));`).join('\n');
const entity = (target: string, extra: object = {}) => ({
  source: 'src', from: { table: 'items' }, target, key: ['tenant', 'id'], tenant: { column: 'tenant', value: 'a' }, ...extra,
});

beforeAll(async () => {
  ({ sync, source } = await testDatabases('guard'));
  await source.pool.query(`create table items (tenant text not null, id int not null, name text, primary key (tenant, id))`);
  await sync.pool.query(`${ddl} alter table items_sd add column deleted_at timestamptz;`);
  engine = await engineFor(sync, source, {
    items: entity('items'),
    items_rows: entity('items_rows', { deleteGuard: { maxPercent: 100, maxRows: 2 } }),
    items_off: entity('items_off', { deleteGuard: false }),
    items_sd: entity('items_sd', { mode: 'soft-delete', softDelete: { column: 'deleted_at' } }),
    items_p: entity('items_p', { deleteGuard: { maxPercent: 100 } }),
  });
});
afterAll(() => engine.close());

/** The source holds ids 1..n of tenant a (and a row of tenant b). */
async function sourceHolds(ids: number[]): Promise<void> {
  await source.pool.query('truncate items');
  await source.pool.query(`insert into items select 'a', i, 'n' || i from unnest($1::int[]) i`, [ids]);
  await source.pool.query(`insert into items values ('b', 1, 'other')`);
}
const ids = async (table: string, where = 'true') =>
  (await sync.pool.query(`select id from ${table} where tenant = 'a' and ${where} order by id`)).rows.map((r) => r.id);
const range = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
const openAlerts = async (entity: string, kind: string) =>
  (await sync.pool.query('select * from sync.alert where entity = $1 and kind = $2 and resolved_at is null', [entity, kind])).rows;

describe('the delete guard', () => {
  it('holds the deletes of a run that would remove more than half of the tenant\'s rows, merges the rest and says how to confirm', async () => {
    await sourceHolds(range(10));
    expect((await engine.run('items', { trigger: 'manual' })).inserted).toBe(10);
    await sourceHolds([1, 2, 3, 11]);
    await source.pool.query(`update items set name = 'changed' where id = 1`);
    const r = await engine.run('items', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'partial', inserted: 1, updated: 1, deleted: 0, held: 7, unchanged: 2, quarantined: 0 });
    expect(r.note).toMatch(/7 deletes held: it would delete 7 of 10 rows \(70(\.0)?%\), above the delete guard of 50%/);
    expect(r.note).toContain(`select sync.confirm_deletes(${r.runId})`);
    expect(r.note).toContain('syncline sync items --confirm-deletes');
    expect(await ids('items')).toEqual([...range(11)]);
    const held = await sync.pool.query('select key from sync.held_delete where run_id = $1 order by key[2]::int', [r.runId]);
    expect(held.rows.map((h) => h.key)).toEqual([4, 5, 6, 7, 8, 9, 10].map((i) => ['a', String(i)]));
    const [alert] = await openAlerts('items', 'deletes_held');
    expect(alert.message).toContain(`sync.confirm_deletes(${r.runId})`);
    const run = await sync.pool.query('select held, error, status from sync.run where id = $1', [r.runId]);
    expect(run.rows[0]).toMatchObject({ held: 7, status: 'partial' });
  });

  it('a dry run reports what the guard would hold and keeps no keys', async () => {
    const r = await engine.run('items', { trigger: 'manual', dryRun: true });
    expect(r).toMatchObject({ held: 7, deleted: 0 });
    expect((await sync.pool.query('select count(*)::int as n from sync.held_delete where run_id = $1', [r.runId])).rows[0].n).toBe(0);
    expect(r.sample?.filter((s) => s.action === 'held')).toHaveLength(7);
  });

  it('a run holding again keeps only its own keys; sync.confirm_deletes queues a run that deletes them and resolves the alert', async () => {
    const again = await engine.run('items', { trigger: 'manual' });
    expect(again.held).toBe(7);
    const kept = await sync.pool.query('select distinct run_id from sync.held_delete');
    expect(kept.rows).toEqual([{ run_id: again.runId }]);
    // Meanwhile the source gets one row back: a confirmed delete never removes a row the source has.
    await source.pool.query(`insert into items values ('a', 4, 'back')`);
    const { rows } = await sync.pool.query(`select sync.confirm_deletes($1, 'dba') as n`, [again.runId]);
    expect(rows[0].n).toBe(7);
    const jobs = await sync.pool.query(`select task_identifier, queue_name from graphile_worker.jobs where queue_name = 'sync:items'`);
    expect(jobs.rows).toEqual([{ task_identifier: 'sync_entity', queue_name: 'sync:items' }]);
    expect(await openAlerts('items', 'deletes_held')).toMatchObject([{ acknowledged_by: 'dba' }]);
    const r = await engine.run('items', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', deleted: 6, held: 0, inserted: 0 });
    expect(await ids('items')).toEqual([1, 2, 3, 4, 11]);
    expect(await openAlerts('items', 'deletes_held')).toEqual([]);
    expect((await sync.pool.query('select count(*)::int as n from sync.held_delete')).rows[0].n).toBe(0);
    await expect(sync.pool.query('select sync.confirm_deletes($1)', [again.runId])).rejects.toThrow(/holds no deletes awaiting confirmation/);
  });

  it('an empty snapshot of a filled target is held whatever the percentage allows; the guard off lets it through', async () => {
    await sourceHolds(range(3));
    await engine.run('items_p', { trigger: 'manual' });
    await engine.run('items_off', { trigger: 'manual' });
    await sourceHolds([]);
    const held = await engine.run('items_p', { trigger: 'manual' });
    expect(held).toMatchObject({ status: 'partial', held: 3, deleted: 0 });
    expect(held.note).toMatch(/the snapshot holds none of the 3 rows/);
    expect(await ids('items_p')).toEqual([1, 2, 3]);
    expect(await engine.run('items_off', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', deleted: 3, held: 0 });
    expect(await ids('items_off')).toEqual([]);
  });

  it('maxRows holds a run deleting more rows than allowed, whatever their share', async () => {
    await sourceHolds(range(10));
    await engine.run('items_rows', { trigger: 'manual' });
    await sourceHolds(range(8));
    expect(await engine.run('items_rows', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', deleted: 2 });
    await sourceHolds(range(5));
    const r = await engine.run('items_rows', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'partial', deleted: 0, held: 3 });
    expect(r.note).toMatch(/it would delete 3 rows, above the delete guard of 2 rows/);
  });

  it('guards soft-delete stamps like deletes', async () => {
    await sourceHolds(range(4));
    await engine.run('items_sd', { trigger: 'manual' });
    await sourceHolds([1]);
    const r = await engine.run('items_sd', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'partial', deleted: 0, held: 3 });
    expect(await ids('items_sd', 'deleted_at is null')).toEqual([1, 2, 3, 4]);
    const ok = await engine.run('items_sd', { trigger: 'manual', confirmDeletes: true });
    expect(ok).toMatchObject({ status: 'succeeded', deleted: 3 });
    expect(await ids('items_sd', 'deleted_at is null')).toEqual([1]);
  });

  it('the CLI confirms with --confirm-deletes and exits 0 once the deletes are made', async () => {
    await sourceHolds(range(6));
    await engine.run('items', { trigger: 'manual' });
    await sourceHolds([1]);
    expect((await engine.run('items', { trigger: 'manual' })).held).toBe(5);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'guard-cli-'));
    const file = path.join(dir, 'syncline.config.json');
    writeFileSync(file, JSON.stringify({ sources: { src: { kind: 'postgres', url: source.url } }, entities: { items: entity('items') } }));
    const cli = (...args: string[]) => exec('node', ['--import', 'tsx', 'src/cli/main.ts', ...args, '--config', file],
      { env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_LOG_LEVEL: 'silent' } }).then(
      (r) => ({ code: 0, out: r.stdout }), (e) => ({ code: e.code as number, out: `${e.stdout}${e.stderr}` }));
    const plain = await cli('sync', 'items');
    expect(plain.code).toBe(3);
    expect(plain.out).toMatch(/5 deletes held/);
    const confirmed = await cli('sync', 'items', '--confirm-deletes');
    expect(confirmed).toMatchObject({ code: 0 });
    expect(confirmed.out).toMatch(/-5 deleted/);
    expect(await ids('items')).toEqual([1]);
  });

  it('the database refuses a bad guard setting and the config file says what is wrong', async () => {
    await expect(sync.pool.query(`update sync.entity set delete_guard_percent = 150 where name = 'items'`))
      .rejects.toThrow(/delete_guard_percent 150 is not between 0 and 100/);
    await expect(sync.pool.query(`update sync.entity set delete_guard_rows = -1 where name = 'items'`))
      .rejects.toThrow(/delete_guard_rows -1 is negative/);
    const bad = () => parseConfig({ sources: { s: { kind: 'postgres', database: 'x' } },
      entities: { e: { source: 's', from: { table: 't' }, target: 't', key: ['id'], deleteGuard: { maxPercent: 120 } } } }, {});
    expect(bad).toThrow(ConfigError);
    expect(bad).toThrow(/entities\.e\.deleteGuard\.maxPercent/);
    const { rows } = await sync.pool.query(`select delete_guard, delete_guard_percent::float8 as p, delete_guard_rows
      from sync.entity where name in ('items', 'items_off', 'items_rows') order by name`);
    expect(rows).toEqual([{ delete_guard: true, p: 50, delete_guard_rows: null },
      { delete_guard: false, p: 50, delete_guard_rows: null }, { delete_guard: true, p: 100, delete_guard_rows: 2 }]);
  });
});
