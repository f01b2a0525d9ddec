/**
 * Log capture from the CLI (issue 15): `config apply` creates the
 * publication, `check` says what a source lacks for log capture and how the
 * slot stands, `sync` captures, `config apply` reminds of the slot of a
 * removed entity, and `capture drop` removes slot and publication.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { startServer } from '../src/server/server.js';

let sync: TestDatabase;
let source: TestDatabase;
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-log-cli-'));

function cli(args: string[], config: unknown) {
  const file = path.join(dir, `config-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(config));
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    encoding: 'utf8', env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: file, SYNCLINE_LOG_LEVEL: 'silent' }, timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const config = (entities: Record<string, unknown>) => ({ sources: { src: { kind: 'postgres', url: source.url } }, entities });
const orders = { source: 'src', from: { table: 'orders' }, target: 'orders', key: ['id'], capture: 'log' };
// No primary key and the default replica identity: the log cannot say which row a delete removed.
const notes = { source: 'src', from: { table: 'notes' }, target: 'notes', key: ['id'], capture: 'log' };

const publications = async () => (await source.pool.query<{ pubname: string }>('select pubname from pg_publication order by 1')).rows.map((r) => r.pubname);
/** GET /metrics of an operator API on the test's database. */
async function metricsText(entities: Record<string, unknown>): Promise<string> {
  const engine = await engineFor(sync, source, entities);
  const token = 'log-capture-metrics-token';
  const server = await startServer({ engine, host: '127.0.0.1', port: 0, token });
  try {
    const res = await fetch(`${server.url}metrics`, { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(200);
    return await res.text();
  } finally {
    await server.close();
    await engine.close();
  }
}

const slots = async () => (await source.pool.query<{ slot_name: string }>('select slot_name from pg_replication_slots where database = current_database() order by 1'))
  .rows.map((r) => r.slot_name);

beforeAll(async () => {
  ({ sync, source } = await testDatabases('log_cli'));
  await source.pool.query(`create table orders (id int primary key, total numeric(10,2));
    insert into orders select i, i * 1.5 from generate_series(1, 50) i;
    create table notes (id int not null, body text)`);
  await sync.pool.query('create table orders (id int primary key, total numeric(10,2)); create table notes (id int primary key, body text)');
});

describe('log capture from the CLI', () => {
  it('config apply creates the publication; check names what the source lacks and the fix', () => {
    const applied = cli(['config', 'apply'], config({ orders, notes }));
    expect(applied.code, applied.err).toBe(0);
    expect(applied.out).toMatch(/✓ orders: publication syncline_orders created; the first run creates the slot syncline_orders/);
    expect(applied.out).toMatch(/✗ notes: .*REPLICA IDENTITY FULL/);
    const checked = cli(['check'], config({ orders, notes }));
    expect(checked.code).toBe(1);
    expect(checked.out).toMatch(/✓ entity orders: .*log capture ready \(the first run creates the slot syncline_orders\)/);
    expect(checked.out).toMatch(/✗ entity notes: log capture: the log of public\.notes does not carry the key \(id\) of deleted rows: .*ALTER TABLE "public"\."notes" REPLICA IDENTITY FULL/);
  });

  it('sync captures; sync.status and /metrics have the lag, the WAL the slot keeps and a lost slot; removing the entity names its slot; capture drop removes it', async () => {
    expect(await publications()).toContain('syncline_orders');
    const first = cli(['sync', 'orders'], config({ orders }));
    expect(first.code, first.err).toBe(0);
    expect(await slots()).toEqual(['syncline_orders']);
    await source.pool.query('delete from orders where id <= 10; update orders set total = 0 where id = 11');
    const second = cli(['sync', 'orders'], config({ orders }));
    expect(second.code, second.err).toBe(0);
    expect((await sync.pool.query('select count(*)::int as n, sum(total)::text as s from orders')).rows[0])
      .toEqual((await source.pool.query('select count(*)::int as n, sum(total)::text as s from orders')).rows[0]);
    const status = (await sync.pool.query(`select capture, log_lag_bytes, log_retained_bytes, log_wal_status from sync.status where entity = 'orders'`)).rows[0];
    expect(status).toMatchObject({ capture: 'log', log_wal_status: 'reserved' });
    expect(Number(status.log_retained_bytes)).toBeGreaterThan(0);
    // /metrics exports the same, per entity.
    const metrics = await metricsText({ orders });
    expect(metrics).toMatch(/^syncline_log_retained_wal_bytes\{entity="orders"\} [1-9][0-9]*$/m);
    expect(metrics).toMatch(/^syncline_log_lag_bytes\{entity="orders"\} [0-9]+$/m);
    expect(metrics).toMatch(/^syncline_log_slot_lost\{entity="orders"\} 0$/m);
    await source.pool.query(`select pg_drop_replication_slot('syncline_orders')`);
    await sync.pool.query(`select sync.log_observe('orders', '{"wal_status": "missing"}')`);
    expect(await metricsText({ orders })).toMatch(/^syncline_log_slot_lost\{entity="orders"\} 1$/m);
    expect(cli(['sync', 'orders', '--full'], config({ orders })).code).toBe(0);

    const removed = cli(['config', 'apply'], config({}));
    expect(removed.code, removed.err).toBe(0);
    expect(removed.out).toMatch(/note: orders captured changes from the log; its slot syncline_orders stays on source "src" .*syncline capture drop orders --source src/);
    const dropped = cli(['capture', 'drop', 'orders', '--source', 'src'], config({}));
    expect(dropped.code, dropped.err).toBe(0);
    expect(dropped.out).toMatch(/dropped the slot syncline_orders and the publication syncline_orders on source "src"/);
    expect(await slots()).toEqual([]);
    expect(await publications()).not.toContain('syncline_orders');
  });

  it('a log entity on a query, with a cursor or on a csv source is refused with the path and the fix', () => {
    const bad = cli(['config', 'validate'], {
      sources: { src: { kind: 'postgres', url: source.url }, sheet: { kind: 'csv', location: dir } },
      entities: {
        q: { source: 'src', from: { query: 'select 1 as id' }, target: 'q', key: ['id'], capture: 'log' },
        c: { source: 'src', from: { table: 'orders' }, target: 'orders', key: ['id'], capture: 'log', cursor: { column: 'id' } },
        f: { source: 'sheet', from: { file: 'x.csv' }, target: 'x', key: ['id'], capture: 'log' },
      },
    });
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/entities\.q\.capture: log capture reads a table's changes/);
    expect(bad.err).toMatch(/entities\.c\.cursor: log capture reads every change in commit order, no cursor needed/);
    expect(bad.err).toMatch(/entities\.f\.capture: log capture reads a PostgreSQL source's write-ahead log, and source "sheet" is csv/);
  });
});
