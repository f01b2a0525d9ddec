/**
 * Usage errors exit 2 as the README says: commander's refusals (unknown verb
 * or option, a missing or excess argument, a bad value) and a backfill range
 * that cannot be (a bound the cursor type does not read, --from not before
 * --to, a bad --chunk), each message naming the problem. The backfill's
 * source is unreachable on purpose: the range is checked before any source
 * is read.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testDatabase, type TestDatabase } from './helpers/db.js';

let db: TestDatabase;
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-cli-usage-'));
const configFile = path.join(dir, 'syncline.config.json');

function cli(args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    encoding: 'utf8',
    env: { ...process.env, DATABASE_URL: db.url, SYNCLINE_CONFIG: configFile, SYNCLINE_LOG_LEVEL: 'silent' },
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

beforeAll(async () => {
  db = await testDatabase('cli_usage');
  await db.pool.query(`create table events (id int primary key, at timestamptz not null);
    create table readings (id bigint primary key, seq integer not null)`);
  writeFileSync(configFile, JSON.stringify({
    // Nothing listens on port 1: a backfill that reached for the source would fail with exit 1.
    sources: { src: { kind: 'postgres', url: 'postgres://nobody:pw@127.0.0.1:1/nothing' } },
    entities: {
      events: { source: 'src', from: { table: 'events' }, target: 'events', key: ['id'], cursor: { column: 'at' } },
      readings: { source: 'src', from: { table: 'readings' }, target: 'readings', key: ['id'], cursor: { column: 'seq' } },
    },
  }));
});

describe('usage errors exit 2', () => {
  it('an unknown verb exits 2, names it and points to --help', () => {
    const r = cli(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.err).toContain("unknown command 'frobnicate'");
    expect(r.err).toContain('(run `syncline --help` for usage)');
  });

  it('an unknown option exits 2 and names it, in a nested command too', () => {
    const top = cli(['sync', '--bogus']);
    expect(top.code).toBe(2);
    expect(top.err).toContain("unknown option '--bogus'");
    expect(top.err).toContain('(run `syncline sync --help` for usage)');
    const nested = cli(['config', 'apply', '--bogus']);
    expect(nested.code).toBe(2);
    expect(nested.err).toContain("unknown option '--bogus'");
    expect(nested.err).toContain('(run `syncline config apply --help` for usage)');
  });

  it('a missing required option exits 2 and names the option', () => {
    const r = cli(['backfill', 'events', '--from', '1']);
    expect(r.code).toBe(2);
    expect(r.err).toContain("required option '--to <value>' not specified");
  });

  it('excess arguments exit 2 and say how many were expected', () => {
    const r = cli(['config', 'validate', 'extra']);
    expect(r.code).toBe(2);
    expect(r.err).toContain("too many arguments for 'validate'. Expected 0 arguments but got 1.");
  });

  it('a bad option value exits 2 and names the option', () => {
    const r = cli(['serve', '--port', 'eighty']);
    expect(r.code).toBe(2);
    expect(r.err).toContain("option '--port <n>' argument 'eighty' is invalid");
  });

  it('a missing verb exits 2 with the help; --help and --version exit 0', () => {
    const help = cli(['edge', 'setup', '--help']);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/^Usage: syncline edge setup /);
    expect(cli(['--version']).code).toBe(0);
    const bare = cli(['config']);
    expect(bare.code).toBe(2);
    expect(bare.err).toMatch(/^Usage: syncline config /);
  });
});

describe('backfill checks its range before reading the source', () => {
  it('--from after --to exits 2 naming both flags and values', () => {
    const r = cli(['backfill', 'events', '--from', '2026-01-08', '--to', '2026-01-05']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--from "2026-01-08" is not before --to "2026-01-05"');
    expect(r.out).not.toContain('backfill of events done');
  });

  it('a bad date exits 2 naming the flag, not the cast error', () => {
    const r = cli(['backfill', 'events', '--from', 'yesterdayx', '--to', '2026-01-05']);
    expect(r.code).toBe(2);
    expect(r.err).toContain(`--from "yesterdayx" is not a date or time Postgres reads (e.g. 2026-01-01 or '2026-01-01 08:00+00')`);
    expect(r.err).not.toContain('invalid input syntax');
  });

  it('a bound a numeric cursor cannot hold exits 2 naming the flag and the type', () => {
    const r = cli(['backfill', 'readings', '--from', '1', '--to', '99999999999']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--to "99999999999" is not a number of the cursor column\'s type (integer)');
  });

  it('a bad or empty --chunk exits 2 naming --chunk', () => {
    const bad = cli(['backfill', 'events', '--from', '2026-01-01', '--to', '2026-01-05', '--chunk', 'one day']);
    expect(bad.code).toBe(2);
    expect(bad.err).toContain(`--chunk "one day" is not an interval Postgres reads`);
    const zero = cli(['backfill', 'readings', '--from', '1', '--to', '100', '--chunk', '0']);
    expect(zero.code).toBe(2);
    expect(zero.err).toContain('--chunk "0" is not greater than zero');
  });
});
