import { describe, it, expect, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testDatabases, type TestDatabase } from './helpers/db.js';

let sync: TestDatabase;
let source: TestDatabase;
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-cli-'));

function cli(args: string[], config: unknown = null, env: Record<string, string> = {}) {
  const file = path.join(dir, `config-${Math.random().toString(36).slice(2)}.json`);
  if (config) writeFileSync(file, JSON.stringify(config));
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    encoding: 'utf8',
    env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: file, SYNCLINE_LOG_LEVEL: 'silent', ...env },
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** The source URL with its password taken from ${SRC_PASSWORD} (any password passes a trust-auth server). */
function sourceUrlWithEnvPassword(): string {
  const u = new URL(source.url);
  return `postgres://${u.username}:\${SRC_PASSWORD}@${u.host}${u.pathname}`;
}

const config = (extra: Record<string, unknown> = {}) => ({
  sources: { src: { kind: 'postgres', url: sourceUrlWithEnvPassword() } },
  entities: {
    items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['id'] },
    ...extra,
  },
});
const password = () => decodeURIComponent(new URL(source.url).password) || 'trust-auth-ignores-it';

beforeAll(async () => {
  ({ sync, source } = await testDatabases('cli'));
  await source.pool.query(`create table items (id int primary key, name text);
    insert into items select i, 'item ' || i from generate_series(1, 25) i`);
  await sync.pool.query('create table items (id int primary key, name text)');
});

describe('the CLI', () => {
  it('config validate names the bad field and exits 2', () => {
    const bad = config();
    (bad.entities.items as Record<string, unknown>).mode = 'sometimes';
    const r = cli(['config', 'validate'], bad, { SRC_PASSWORD: 'x' });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/entities\.items\.mode: /);
  });

  it('config validate names a missing environment variable', () => {
    const r = cli(['config', 'validate'], config());
    expect(r.code).toBe(2);
    expect(r.err).toContain('sources.src.url: environment variable SRC_PASSWORD is not set — export it or put it in .env');
  });

  it('config show masks the password', () => {
    const r = cli(['config', 'show'], config(), { SRC_PASSWORD: password() });
    expect(r.code).toBe(0);
    expect(r.out).toContain('***@');
    expect(r.out).not.toContain(password());
  });

  it('config apply prints the difference, and a second apply changes nothing', () => {
    const first = cli(['config', 'apply'], config(), { SRC_PASSWORD: password() });
    expect(first.code).toBe(0);
    expect(first.out).toContain('+ items');
    const again = cli(['config', 'apply'], config(), { SRC_PASSWORD: password() });
    expect(again.out).toContain('nothing to apply');
  });

  it('sync --dry-run shows counts and a sample and writes nothing', async () => {
    const r = cli(['sync', '--dry-run'], config(), { SRC_PASSWORD: password() });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/✓ items: fetched 25, \+25 inserted/);
    expect(r.out).toMatch(/insert +\{"id":1\}/);
    expect((await sync.pool.query('select count(*)::int as n from items')).rows[0].n).toBe(0);
  });

  it('sync merges, prints one line an entity, and exits 0', async () => {
    const r = cli(['sync', 'items'], config(), { SRC_PASSWORD: password() });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/✓ items: fetched 25, \+25 inserted, ~0 updated, -0 deleted, 0 unchanged — run \d+/);
    expect((await sync.pool.query('select count(*)::int as n from items')).rows[0].n).toBe(25);
  });

  it('sync of an unknown entity exits 2 and lists the config\'s entities', () => {
    const r = cli(['sync', 'itemz'], config(), { SRC_PASSWORD: password() });
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/unknown entity "itemz" — the config defines: items/);
  });

  it('sync applies the config it is given; a failed run exits 1 and says why', () => {
    const cfg = config({ broken: { source: 'src', from: { table: 'items' }, target: 'missing_table', key: ['id'] } });
    const r = cli(['sync', '--tables', 'broken,items'], cfg, { SRC_PASSWORD: password() });
    expect(r.err).toContain('applied the config to sync.entity:\n  + broken');
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/✗ broken: failed \(run \d+\) — target table public.missing_table/);
    expect(r.out).toMatch(/✓ items/);
  });

  it('status prints the sync.status view; --json for scripts', () => {
    const r = cli(['status', '--json'], config(), { SRC_PASSWORD: password() });
    const rows = JSON.parse(r.out);
    expect(rows.find((x: { entity: string }) => x.entity === 'items')).toMatchObject({ state: 'ok', last_status: 'succeeded' });
    expect(rows.find((x: { entity: string }) => x.entity === 'broken')).toMatchObject({ state: 'failing' });
    expect(r.code).toBe(1);
  });

  it('check reports an unreachable source with a hint and exits 1', () => {
    const cfg = config();
    cfg.sources.src.url = 'postgres://nobody:pw@127.0.0.1:1/nothing';
    const r = cli(['check'], cfg);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/✗ source src: cannot connect to source "src": nothing listens at 127.0.0.1:1\/nothing/);
    expect(r.out).not.toContain(':pw@');
  });

  it('every verb has --help', () => {
    for (const verb of [['config', 'validate'], ['config', 'show'], ['config', 'apply'], ['check'], ['sync'], ['status'], ['worker']]) {
      const r = cli([...verb, '--help']);
      expect(r.code, verb.join(' ')).toBe(0);
      expect(r.out).toMatch(/^Usage: syncline /);
    }
  });
});
