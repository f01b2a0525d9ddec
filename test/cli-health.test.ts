/**
 * The health verbs of the CLI (status, alerts, runs) in a child process, on a
 * test database whose entities and runs are written with SQL. They need no
 * config file: SYNCLINE_CONFIG points at none.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { testDatabase, type TestDatabase } from './helpers/db.js';

let db: TestDatabase;

function cli(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    encoding: 'utf8',
    env: {
      ...process.env, DATABASE_URL: db.url, SYNCLINE_LOG_LEVEL: 'silent',
      SYNCLINE_CONFIG: path.join(os.tmpdir(), `no-such-config-${process.pid}.json`), ...env,
    },
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** The first cell of each table row: what a table printed, row by row. */
const firstCells = (out: string) => out.split('\n').map((l) => /^(\S+)\s+│/.exec(l)?.[1]).filter((c): c is string => !!c && !/^(id|entity)$/.test(c));
const width = (out: string) => Math.max(0, ...out.split('\n').map((l) => [...l].length));

async function addEntity(name: string, settings = ''): Promise<void> {
  await db.pool.query(`insert into sync.entity (name, source, mode, target_schema, target_table, key_columns)
    values ($1, 'src', 'mirror', 'public', 'items', '{id}')`, [name]);
  if (settings) await db.pool.query(`update sync.entity set ${settings} where name = $1`, [name]);
}

/** A finished run started `ago` before now, lasting `seconds`. */
async function addRun(entity: string, status: string, ago: string, opts: { seconds?: number; error?: string; fetched?: number } = {}): Promise<number> {
  const { rows } = await db.pool.query(
    `insert into sync.run (entity, trigger, status, started_at, finished_at, fetched, inserted, updated, deleted, quarantined, error)
     select $1, 'cron', $2, t, t + make_interval(secs => $4), $5, $6, $6, $6, $6, $7
       from (select now() - $3::interval as t) x
     returning id`,
    [entity, status, ago, opts.seconds ?? 2, opts.fetched ?? null, opts.fetched === undefined ? null : 0, opts.error ?? null]);
  return Number(rows[0].id);
}

beforeAll(async () => {
  db = await testDatabase('cli_health');
  await addEntity('meters', `schedule = '*/5 * * * *'`);
  await addEntity('sellers', `sync_interval = '15 minutes'`);
  await addRun('meters', 'succeeded', '3 minutes', { fetched: 25 });
});

describe('status', () => {
  it('prints each entity in a table within 80 columns and exits 0 while none is failing or stale', () => {
    const r = cli(['status']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(firstCells(r.out)).toEqual(['meters', 'sellers']);
    expect(r.out).toMatch(/^meters +│ ok +│ \d+ min ago +│ in \d+ (s|min)/m);
    expect(r.out).toMatch(/^sellers +│ never run +│ never +│ in \d+ (s|min)/m);
    expect(width(r.out)).toBeLessThanOrEqual(80);
  });

  it('--json prints the rows of sync.status with sync.health\'s rates', () => {
    const r = cli(['status', '--json']);
    expect(r.code).toBe(0);
    const rows = JSON.parse(r.out);
    expect(rows.map((x: { entity: string }) => x.entity)).toEqual(['meters', 'sellers']);
    expect(rows[0]).toMatchObject({ entity: 'meters', state: 'ok', last_status: 'succeeded', stale: false, runs_24h: 1,
      success_rate_24h: 100, open_alerts: 0, open_gaps: 0, schedule: '*/5 * * * *' });
    expect(rows[1]).toMatchObject({ entity: 'sellers', state: 'never run', last_success_at: null, success_rate_7d: null });
  });

  it('exits 1 while an enabled entity is stale, and 0 again once it is disabled', async () => {
    await addEntity('stock', `freshness = '1 hour'`);
    await addRun('stock', 'succeeded', '3 hours');
    let r = cli(['status']);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/^stock +│ ok, stale +│ 3 h ago/m);
    await db.pool.query(`update sync.entity set enabled = false where name = 'stock'`);
    r = cli(['status']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^stock +│ disabled /m);
  });

  it('exits 1 with a failing entity and shows its last error, cut to fit', async () => {
    await addEntity('orders');
    await addRun('orders', 'failed', '4 days', { error: 'an old failure' });
    await addRun('orders', 'succeeded', '2 days', { fetched: 10 });
    const long = `connect ECONNREFUSED 127.0.0.1:5432 ${'while reading the source '.repeat(10)}`;
    for (const ago of ['3 hours', '2 hours', '1 hour']) await addRun('orders', 'failed', ago, { error: long });
    const r = cli(['status']);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/^orders +│ failing +│ 2 d ago /m);
    expect(r.out).toMatch(/orders: connect ECONNREFUSED 127\.0\.0\.1:5432 while reading .*…$/m);
    expect(width(r.out)).toBeLessThanOrEqual(80);
  });

  it('--help documents the exit code', () => {
    const r = cli(['status', '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^Usage: syncline status/);
    expect(r.out).toMatch(/Exit code: 1 when an entity is failing .* or stale/s);
  });
});

describe('alerts', () => {
  let alertId: string;

  it('lists the open alert of a failing entity, newest first, within 80 columns', async () => {
    const { rows } = await db.pool.query(`select id from sync.alert where entity = 'orders' and kind = 'consecutive_failures' and resolved_at is null`);
    expect(rows).toHaveLength(1);
    alertId = String(rows[0].id);
    await db.pool.query(`select sync.raise_alert('gap', 'warning', 'meters', '2 records of meters are in the source but not in the target')`);
    const r = cli(['alerts']);
    expect(r.code).toBe(0);
    const ids = firstCells(r.out);
    expect(ids).toHaveLength(2);
    expect(ids[1]).toBe(alertId);
    expect(r.out).toMatch(new RegExp(`^${alertId} +│ \\d+ (s|min) ago +│ critical +│ consecutive_failures +│ orders +│ 1`, 'm'));
    expect(r.out).toContain('3 runs of orders failed in a row');
    expect(width(r.out)).toBeLessThanOrEqual(80);
    const json = JSON.parse(cli(['alerts', '--json']).out);
    expect(json.map((a: { kind: string }) => a.kind)).toEqual(['gap', 'consecutive_failures']);
  });

  it('--ack ID --by NAME acknowledges it; it then shows only with --all', async () => {
    const r = cli(['alerts', '--ack', alertId, '--by', 'tester']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toContain(`acknowledged alert ${alertId} (critical consecutive_failures on orders) as tester`);
    const { rows } = await db.pool.query('select acknowledged_by, acknowledged_at from sync.alert where id = $1', [alertId]);
    expect(rows[0].acknowledged_by).toBe('tester');
    expect(rows[0].acknowledged_at).not.toBeNull();
    expect(firstCells(cli(['alerts']).out)).not.toContain(alertId);
    const all = cli(['alerts', '--all']);
    expect(all.out).toMatch(new RegExp(`^${alertId} +│.*│ ack tester`, 'm'));
  });

  it('--ack of an alert that is not open exits 1 and says why', () => {
    const again = cli(['alerts', '--ack', alertId, '--by', 'tester']);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(new RegExp(`alert ${alertId} .* is not open: tester acknowledged it already`));
    const none = cli(['alerts', '--ack', '987654', '--by', 'tester']);
    expect(none.code).toBe(1);
    expect(none.err).toContain('no alert 987654');
  });

  it('--ack takes the name from $USER when --by is not given; a bad id is a usage error', async () => {
    const { rows } = await db.pool.query(`select id from sync.alert where entity = 'meters' and kind = 'gap'`);
    const r = cli(['alerts', '--ack', String(rows[0].id)], { USER: 'dba_from_env' });
    expect(r.code).toBe(0);
    expect((await db.pool.query('select acknowledged_by from sync.alert where id = $1', [rows[0].id])).rows[0].acknowledged_by).toBe('dba_from_env');
    const bad = cli(['alerts', '--ack', 'twelve']);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/--ack: "twelve" is not an alert id/);
    expect(cli(['alerts']).out).toContain('no open alerts');
  });
});

describe('runs', () => {
  it('--entity --status --since prints only the matching runs', async () => {
    const { rows } = await db.pool.query(`select id from sync.run where entity = 'orders' and status = 'failed'
      and started_at >= now() - interval '1 day' order by id desc`);
    const expected = rows.map((x) => String(x.id));
    expect(expected).toHaveLength(3);
    await addRun('meters', 'failed', '10 minutes', { error: 'another entity' });
    const r = cli(['runs', '--entity', 'orders', '--status', 'failed', '--since', '1d']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(firstCells(r.out)).toEqual(expected);
    expect(r.out).not.toContain('an old failure');
    expect(width(r.out)).toBeLessThanOrEqual(80);
    const json = JSON.parse(cli(['runs', '--entity', 'orders', '--status', 'failed', '--since', '1d', '--json']).out);
    expect(json.map((x: { id: number }) => String(x.id))).toEqual(expected);
  });

  it('--since and --until take what Postgres reads as well as 30m/2h/1d; --limit caps', async () => {
    const old = cli(['runs', '--entity', 'orders', '--until', '3d', '--json']);
    expect(JSON.parse(old.out).map((x: { error: string }) => x.error)).toEqual(['an old failure']);
    const window = cli(['runs', '--entity', 'orders', '--since', '2000-01-01', '--until', '1d', '--json']);
    expect(JSON.parse(window.out).map((x: { status: string }) => x.status)).toEqual(['succeeded', 'failed']);
    const recent = cli(['runs', '--since', '90m']);
    expect(firstCells(recent.out)).toHaveLength(3); // orders' last failure, meters' failure and success
    expect(recent.out).toContain('rows: fetched +inserted ~updated -deleted !quarantined');
    expect(firstCells(cli(['runs', '--limit', '2']).out)).toHaveLength(2);
  });

  it('a bad --since is a usage error naming the option and an example', () => {
    const r = cli(['runs', '--since', 'yesterdayish']);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err).toMatch(/^--since: "yesterdayish" is not a time/);
    expect(r.err).toMatch(/2h/);
  });

  it('a bad --status, --limit or --entity is a usage error', () => {
    expect(cli(['runs', '--status', 'broken'])).toMatchObject({ code: 2, err: expect.stringMatching(/--status: "broken" is not a run status — use one of running, succeeded/) });
    expect(cli(['runs', '--limit', '-3'])).toMatchObject({ code: 2, err: expect.stringMatching(/--limit/) });
    expect(cli(['runs', '--entity', 'nope'])).toMatchObject({ code: 2, err: expect.stringMatching(/--entity: no entity "nope" — sync.entity has: meters, orders, sellers, stock/) });
  });

  it('alerts and runs have --help', () => {
    for (const verb of ['alerts', 'runs']) {
      const r = cli([verb, '--help']);
      expect(r.code, verb).toBe(0);
      expect(r.out).toMatch(new RegExp(`^Usage: syncline ${verb}`));
    }
  });
});
