/**
 * The source of a pull is read-only by construction (issue 10, rule 5),
 * against a real source database: a from.query is one statement, checked at
 * `config validate` and again at run time (the extended protocol, the lexer
 * before COPY); placeholders are filled in one pass; every source session is
 * read-only, also after a commit. And a broken query says what is broken.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { parseConfig, ConfigError } from '../src/config/load.js';
import { entity as entitySchema } from '../src/config/schema.js';
import { sourceColumns, sourceConnection, SourcePools } from '../src/sources/postgres/read.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const TENANT = "acme {{cursor}} ' \\ {{tenant}}";
const ROWS = 5;

const ENTITIES = {
  items: { source: 'src', from: { query: 'select id, tenant, name, updated_at from items' }, target: 'items', key: ['id'], mode: 'upsert' },
  listed: { source: 'src', from: { query: 'select id, tenant, name, updated_at from items' }, target: 'items', key: ['id'], mode: 'upsert',
    columns: ['id', 'tenant', 'name', 'updated_at'] },
  tenant_items: {
    source: 'src', target: 'items', key: ['id'], mode: 'mirror', tenant: { column: 'tenant', value: TENANT }, cursor: { column: 'updated_at' },
    from: { query: 'select id, tenant, name, updated_at from items\n where tenant = {{tenant}} and ({{cursor}} is null or updated_at > {{cursor}})' },
  },
};

// Queries that end the wrapper's subquery and run more statements: today's
// attack on the simple query protocol, with the ";" after comments and strings.
const HOSTILE = [
  'select * from items) q; commit; delete from items; select (1',
  'select * from items -- ;\n) q; commit; delete from items; select (1',
  'select * from items /* ; */) q; commit; /* ; */ delete from items; select (1',
  'select $$;$$ as s, * from items) q; commit; delete from items; select (1',
  'select $a$ ) q; $a$ as s, * from items) q; commit; delete from items; select (1',
  // A new transaction after the commit would still be read-only: this one asks for read-write first.
  'select * from items) q; commit; set transaction read write; delete from items; select (1',
];

const sourceRows = async () => Number((await source.pool.query('select count(*) as n from items')).rows[0].n);
const configWith = (query: string) => ({ sources: { src: { kind: 'postgres', url: source.url } },
  entities: { items: { ...ENTITIES.items, from: { query } } } });

/** Writes a definition straight into sync.entity, past config validation (as a DBA could). */
async function setQuery(name: string, query: string): Promise<void> {
  await sync.pool.query(`update sync.entity set definition = jsonb_set(definition, '{from}', jsonb_build_object('query', $2::text))
    where name = $1`, [name, query]);
}

beforeAll(async () => {
  ({ sync, source } = await testDatabases('readonly'));
  const ddl = 'create table items (id int primary key, tenant text not null, name text, updated_at timestamptz not null)';
  await source.pool.query(ddl);
  await sync.pool.query(ddl);
  await source.pool.query(`insert into items select i, case when i % 2 = 0 then $1 else 'other' end, 'n' || i,
    timestamptz '2024-01-01' + i * interval '1 hour' from generate_series(1, $2) i`, [TENANT, ROWS]);
  engine = await engineFor(sync, source, ENTITIES);
});

afterAll(async () => {
  await engine?.close();
});

describe('a from.query is one statement', () => {
  it('config validation refuses every hostile query at its JSON path, saying how to fix it', () => {
    for (const query of HOSTILE) {
      expect(() => parseConfig(configWith(query), {}), query).toThrow(ConfigError);
      expect(() => parseConfig(configWith(query), {}), query)
        .toThrow(/entities\.items\.from\.query: has a ";" on line \d followed by more SQL — a source query is exactly one statement/);
    }
    expect(() => parseConfig(configWith('select 1 as id; -- fine\n'), {})).not.toThrow();
  });

  it('written into sync.entity past validation, a hostile query fails its run and the source keeps every row', async () => {
    for (const name of ['items', 'listed']) {
      for (const query of HOSTILE) {
        // The run reads its definition from sync.entity, through the entity schema alone.
        expect(entitySchema.safeParse({ ...ENTITIES.items, from: { query } }).success).toBe(true);
        await setQuery(name, query);
        const r = await engine.run(name, { trigger: 'manual' });
        expect(r.status, `${name}: ${query}`).toBe('failed');
        expect(await sourceRows(), `${name}: ${query}`).toBe(ROWS);
        // Without "columns" the column probe refuses it; with them, the check before COPY.
        expect(r.error, `${name}: ${query}`).toMatch(name === 'items'
          ? /^entity "items": from\.query cannot be run: it holds more than one statement \(a ";" followed by more SQL\) — fix the SELECT/
          : /^the source query has a ";" on line \d+ followed by more SQL .*; nothing was run/);
      }
    }
  });

  it('the column probe runs over the extended protocol: PostgreSQL itself refuses a second statement', async () => {
    const def = entitySchema.parse({ ...ENTITIES.items, from: { query: HOSTILE[0] } });
    const { pool, url } = engine.pgSource('src');
    await expect(sourceColumns(pool, url, def, 'items')).rejects.toThrow(
      'entity "items": from.query cannot be run: it holds more than one statement (a ";" followed by more SQL) — fix the SELECT');
    expect(await sourceRows()).toBe(ROWS);
  });
});

describe('a broken from.query says what is broken', () => {
  it('names the entity, the database\'s reason and the line of the query', async () => {
    const { pool, url } = engine.pgSource('src');
    const broken = (query: string) => sourceColumns(pool, url, entitySchema.parse({ ...ENTITIES.items, from: { query } }), 'x');
    await expect(broken('select id,\n  name\n  frm items')).rejects.toThrow(
      'entity "x": from.query cannot be run: syntax error at or near "items" (line 3) — fix the SELECT');
    await expect(broken('select id, nmae\nfrom items')).rejects.toThrow(
      'entity "x": from.query cannot be run: column "nmae" does not exist (line 1) — fix the SELECT');
    await expect(broken("select 'id\nfrom items")).rejects.toThrow(
      "entity \"x\": from.query has an unterminated quoted string starting on line 1 — close it with '");
    await expect(broken('select from items')).rejects.toThrow(
      'entity "x": from.query cannot be run: it yields no columns: select the columns to sync — fix the SELECT');
  });

  it('a run reports it, never "Cannot read properties of undefined"', async () => {
    await setQuery('items', 'select id,\n  name\n  frm items');
    const r = await engine.run('items', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'failed', error: expect.stringMatching(/^entity "items": from\.query cannot be run: syntax error at or near "items" \(line 3\) — fix the SELECT/) });
    const { rows } = await sync.pool.query('select category from sync.run_error where run_id = $1', [r.runId]);
    expect(rows).toEqual([{ category: 'database' }]);
  });
});

describe('placeholders', () => {
  it('a tenant value holding {{cursor}}, a quote and a backslash is read literally, on the first run and the next', async () => {
    const first = await engine.run('tenant_items', { trigger: 'manual' });
    expect(first, first.error).toMatchObject({ status: 'succeeded', inserted: 2 });
    const mine = () => sync.pool.query('select id from items where tenant = $1 order by id', [TENANT]).then((r) => r.rows.map((x) => x.id));
    expect(await mine()).toEqual([2, 4]);
    await source.pool.query(`insert into items values (6, $1, 'n6', '2024-02-01')`, [TENANT]);
    const next = await engine.run('tenant_items', { trigger: 'manual' });
    expect(next).toMatchObject({ status: 'succeeded', inserted: 1, fetched: 1 });
    expect(await mine()).toEqual([2, 4, 6]);
    await source.pool.query('delete from items where id = 6');
  });
});

describe('source sessions are read-only', () => {
  it('a source pool\'s session is read-only by default, also after a commit', async () => {
    const client = await engine.pgSource('src').pool.connect();
    try {
      expect((await client.query('show default_transaction_read_only')).rows[0]).toEqual({ default_transaction_read_only: 'on' });
      await client.query('begin');
      await client.query('commit');
      await expect(client.query('delete from items')).rejects.toThrow(/cannot execute DELETE in a read-only transaction/);
    } finally {
      client.release();
    }
    expect(await sourceRows()).toBe(ROWS);
  });

  it('a query that turns the session default off in passing leaves every pooled session read-only', async () => {
    const flip = "select id, tenant, name, updated_at from items where set_config('default_transaction_read_only', 'off', false) = 'off'";
    await setQuery('items', flip);
    expect(await engine.run('items', { trigger: 'manual' })).toMatchObject({ status: 'succeeded' });
    const { pool } = engine.pgSource('src');
    const clients = await Promise.all(Array.from({ length: pool.totalCount }, () => pool.connect()));
    try {
      for (const c of clients) expect((await c.query('show default_transaction_read_only')).rows[0].default_transaction_read_only).toBe('on');
    } finally {
      for (const c of clients) c.release();
    }
  });

  it('`check` reaches the source in a read-only session and names a broken query\'s problem and line', () => {
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'syncline-readonly-')), 'syncline.config.json');
    writeFileSync(file, JSON.stringify({ sources: { src: { kind: 'postgres', url: source.url } }, entities: {
      items: ENTITIES.items, bad: { ...ENTITIES.items, from: { query: 'select id,\n  nmae\nfrom items' } } } }));
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'check'], { encoding: 'utf8', timeout: 60_000,
      env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: file, SYNCLINE_LOG_LEVEL: 'silent' } });
    expect(r.stdout).toMatch(/✓ source src: .* reachable/);
    expect(r.stdout).toMatch(/✓ entity items: source yields 4 columns/);
    expect(r.stdout, r.stderr).toMatch(/✗ entity bad: the source cannot be read: from\.query cannot be run: column "nmae" does not exist \(line 2\) — fix the SELECT$/m);
    expect(r.status).toBe(1);
  });

  it('options in the source URL are kept, and the read-only settings come last so they win', async () => {
    const url = `${source.url}?options=${encodeURIComponent('-c search_path=pg_catalog -c default_transaction_read_only=off')}`;
    const c = new pg.Client(sourceConnection(url));
    await c.connect();
    try {
      const { rows } = await c.query(`select current_setting('search_path') as path, current_setting('default_transaction_read_only') as ro,
        current_setting('standard_conforming_strings') as scs`);
      expect(rows[0]).toEqual({ path: 'pg_catalog', ro: 'on', scs: 'on' });
    } finally {
      await c.end();
    }
    const pools = new SourcePools(sync.url);
    const { pool } = pools.get('src', { kind: 'postgres', url });
    await expect(pool.query('delete from public.items')).rejects.toThrow(/read-only transaction/);
    await pools.close();
    expect(await sourceRows()).toBe(ROWS);
  });
});
