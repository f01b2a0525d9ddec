import { describe, it, expect, beforeAll, afterAll, inject } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { withDatabase } from './helpers/global-setup.js';

// sql/roles.sql is a psql script (variables, \if, \gexec): it runs through
// psql itself, as a DBA runs it.
function findPsql(): string | null {
  const onPath = spawnSync('psql', ['--version'], { encoding: 'utf8' });
  if (onPath.status === 0) return 'psql';
  const debian = '/usr/lib/postgresql';
  const versions = existsSync(debian) ? readdirSync(debian).sort().reverse() : [];
  const found = versions.map((v) => path.join(debian, v, 'bin', 'psql')).find(existsSync);
  return found ?? null;
}
const psql = findPsql();

const tag = `${process.pid}_${Date.now().toString(36)}`;
const role = `sl_role_${tag}`;
const reader = `sl_reader_${tag}`;
const password = `pw ${tag} 'quoted'`;
const readerPassword = `rpw ${tag}`;
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-roles-'));

let sync: TestDatabase;
let source: TestDatabase;
let migrated: TestDatabase; // migrated by the superuser before roles.sql runs

/** The URL of `db` for a login role (a trust-auth server ignores the password). */
function urlAs(db: TestDatabase, user: string, pass: string): string {
  const u = new URL(db.url);
  u.username = user;
  u.password = pass;
  return u.toString();
}

function runRoles(db: TestDatabase, vars: Record<string, string>) {
  const args = ['-X', '-q', '-d', db.url, '-f', 'sql/roles.sql'];
  for (const [k, v] of Object.entries(vars)) args.push('-v', `${k}=${v}`);
  const r = spawnSync(psql!, args, { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const syncPart = (extra: Record<string, string> = {}) => ({ role, password, target_schema: 'tgt', ...extra });
const sourcePart = { reader, reader_password: readerPassword, source_schema: 'public' };

function config(entities: Record<string, unknown>) {
  return {
    sources: { src: { kind: 'postgres', url: urlAs(source, reader, readerPassword) } },
    entities,
  };
}
const items = { items: { source: 'src', from: { table: 'public.items' }, target: 'tgt.items', key: ['id'] } };

/** The syncline command, as the least-privilege role. */
function cli(db: TestDatabase, args: string[], cfg: unknown) {
  const file = path.join(dir, `config-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(cfg));
  const r = spawnSync(process.execPath, ['bin/syncline.js', ...args], {
    encoding: 'utf8',
    env: { ...process.env, DATABASE_URL: urlAs(db, role, password), SYNCLINE_CONFIG: file, SYNCLINE_LOG_LEVEL: 'silent' },
    timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

async function as<T>(db: TestDatabase, user: string, pass: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client(urlAs(db, user, pass));
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** The SQLSTATE a statement fails with as `user`, or 'ok'. */
async function attempt(db: TestDatabase, user: string, pass: string, sql: string): Promise<string> {
  return as(db, user, pass, (c) => c.query(sql).then(() => 'ok', (err: { code?: string }) => err.code ?? 'error'));
}

/** Everything roles.sql decides in one database, passwords aside. */
async function grantsState(db: TestDatabase): Promise<unknown> {
  const { rows } = await db.pool.query(`
    select (select json_agg(r order by rolname) from (select rolname, rolsuper, rolcreatedb, rolcreaterole, rolcanlogin, rolreplication, rolbypassrls
                                                        from pg_roles where rolname = any($1)) r) as roles,
           (select json_agg(s order by s::text) from pg_db_role_setting s join pg_roles r on r.oid = s.setrole where r.rolname = any($1)) as settings,
           (select datacl::text from pg_database where datname = current_database()) as database_acl,
           (select json_agg(n order by nspname) from (select nspname, nspowner::regrole::text, nspacl::text from pg_namespace
                                                       where nspname not like 'pg\\_%') n) as schemas,
           (select json_agg(c order by name) from (select c.oid::regclass::text as name, c.relowner::regrole::text, c.relacl::text from pg_class c
                                                      join pg_namespace n on n.oid = c.relnamespace where n.nspname not like 'pg\\_%'
                                                       and n.nspname <> 'information_schema') c) as relations,
           (select json_agg(p order by name) from (select p.oid::regprocedure::text as name, p.proowner::regrole::text from pg_proc p
                                                      join pg_namespace n on n.oid = p.pronamespace where n.nspname in ('sync', 'graphile_worker')) p) as routines,
           (select json_agg(d order by d::text) from (select defaclrole::regrole::text, defaclnamespace::regnamespace::text, defaclobjtype, defaclacl::text
                                                         from pg_default_acl) d) as default_acl`, [[role, reader]]);
  return rows[0];
}

beforeAll(async () => {
  if (!psql) return;
  // Syncline's database starts empty: the role's first command migrates it.
  [sync, source, migrated] = await Promise.all([
    testDatabase('roles_sync', { migrated: false }),
    testDatabase('roles_src', { migrated: false }),
    testDatabase('roles_old'),
  ]);
  await source.pool.query(`create table items (id int primary key, name text);
    insert into items select i, 'item ' || i from generate_series(1, 25) i;
    create schema private; create table private.secrets (id int)`);
  await sync.pool.query(`create schema tgt; create table tgt.items (id int primary key, name text);
    create table public.other (id int primary key, name text)`);
  await migrated.pool.query('create schema tgt; create table tgt.items (id int primary key, name text)');
});

afterAll(async () => {
  if (!psql) return;
  // Roles belong to the server, not to a test database: drop them, and what
  // they own in the databases still there.
  const admin = inject('adminUrl');
  for (const db of [sync, source, migrated]) {
    const a = new pg.Client(admin);
    await a.connect();
    const { rowCount } = await a.query('select from pg_database where datname = $1', [db.name]);
    await a.end();
    if (!rowCount) continue;
    const c = new pg.Client(withDatabase(admin, db.name));
    await c.connect();
    await c.query(`drop owned by "${role}", "${reader}" cascade`).catch(() => {});
    await c.end();
  }
  const a = new pg.Client(admin);
  await a.connect();
  await a.query(`drop role if exists "${role}"`);
  await a.query(`drop role if exists "${reader}"`);
  await a.end();
});

describe.skipIf(!psql)('sql/roles.sql: least-privilege roles', () => {
  it('refuses to run without variables, naming what to give', () => {
    const r = runRoles(sync, {});
    expect(r.code).not.toBe(0);
    expect(r.err).toContain('sql/roles.sql: nothing to do — give -v password=');
  });

  it('sets up Syncline\'s role and a source reader', () => {
    const own = runRoles(sync, syncPart());
    expect(own.code, own.err).toBe(0);
    const reading = runRoles(source, sourcePart);
    expect(reading.code, reading.err).toBe(0);
  });

  it('config apply and sync as the role migrate an empty database and fill the granted target', async () => {
    const apply = cli(sync, ['config', 'apply'], config(items));
    expect(apply.code, apply.err).toBe(0);
    expect(apply.out).toContain('+ items');
    const run = cli(sync, ['sync'], config(items));
    expect(run.code, run.err).toBe(0);
    expect(run.out).toMatch(/✓ items: fetched 25, \+25 inserted/);
    expect((await sync.pool.query('select count(*)::int as n from tgt.items')).rows[0].n).toBe(25);
    const { rows } = await sync.pool.query(`select nspname, nspowner::regrole::text as owner from pg_namespace
      where nspname in ('sync', 'sync_staging', 'graphile_worker', 'graphile_migrate') order by 1`);
    expect(rows).toEqual(['graphile_migrate', 'graphile_worker', 'sync', 'sync_staging'].map((nspname) => ({ nspname, owner: role })));
  });

  it('the role cannot write what it was not granted', async () => {
    const outside = { other: { source: 'src', from: { table: 'public.items' }, target: 'public.other', key: ['id'] } };
    const run = cli(sync, ['sync', 'other'], config(outside));
    expect(run.code).toBe(1);
    expect(run.out).toMatch(/✗ other: failed .*permission denied for table other/);
    expect((await sync.pool.query('select count(*)::int as n from public.other')).rows[0].n).toBe(0);
    expect(await attempt(sync, role, password, 'insert into public.other values (1)')).toBe('42501');
    expect(await attempt(sync, role, password, 'truncate tgt.items')).toBe('42501');
    expect(await attempt(sync, role, password, 'create table tgt.extra (id int)')).toBe('42501');
    expect(await attempt(sync, role, password, 'alter table tgt.items add column x int')).toBe('42501');
    expect(await attempt(sync, role, password, 'create role sneaky')).toBe('42501');
  });

  it('the reader only reads the source schema it was given', async () => {
    expect(await attempt(source, reader, readerPassword, 'select count(*) from public.items')).toBe('ok');
    // read-only by default: writing fails before privileges are even checked
    expect(await attempt(source, reader, readerPassword, 'insert into public.items values (100, \'x\')')).toBe('25006');
    expect(await attempt(source, reader, readerPassword, 'create table public.mine (id int)')).toBe('25006');
    expect(await attempt(source, reader, readerPassword, 'select * from private.secrets')).toBe('42501');
    // and without INSERT, a transaction made read-write gets nowhere either
    const write = await as(source, reader, readerPassword, async (c) => {
      await c.query('begin read write');
      return c.query('insert into public.items values (100, \'x\')').then(() => 'ok', (err: { code?: string }) => err.code);
    });
    expect(write).toBe('42501');
  });

  it('running it again changes nothing', async () => {
    const before = [await grantsState(sync), await grantsState(source)];
    expect(runRoles(sync, syncPart()).code).toBe(0);
    expect(runRoles(source, sourcePart).code).toBe(0);
    expect([await grantsState(sync), await grantsState(source)]).toEqual(before);
  });

  it('refuses to take a superuser for either role, which it would demote', async () => {
    const admin = decodeURIComponent(new URL(inject('adminUrl')).username);
    const own = runRoles(sync, { role: admin, password: 'x', target_schema: 'tgt' });
    expect(own.code).not.toBe(0);
    expect(own.err).toContain('the role -v role= names is a superuser');
    const reading = runRoles(source, { reader: admin, reader_password: 'x', source_schema: 'public' });
    expect(reading.code).not.toBe(0);
    expect(reading.err).toContain('the role -v reader= names is a superuser');
    const { rows } = await sync.pool.query('select rolsuper from pg_roles where rolname = $1', [admin]);
    expect(rows).toEqual([{ rolsuper: true }]);
  });

  it('refuses to make the role read-only where it keeps Syncline\'s schemas', () => {
    const r = runRoles(sync, { reader: role, source_schema: 'public' });
    expect(r.code).not.toBe(0);
    expect(r.err).toContain('the reader owns Syncline\'s schemas in this database');
  });

  it('hands a database migrated by a superuser over to the role', async () => {
    // the role exists: no password needed to add a database and its target schema
    const r = runRoles(migrated, { role, target_schema: 'tgt' });
    expect(r.code, r.err).toBe(0);
    const { rows } = await migrated.pool.query(`
      select count(*) filter (where c.relowner <> $1::regrole)::int as others, count(*)::int as all
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where n.nspname in ('sync', 'sync_staging', 'graphile_worker', 'graphile_migrate')`, [role]);
    expect(rows[0].all).toBeGreaterThan(0);
    expect(rows[0].others).toBe(0);
    const run = cli(migrated, ['sync'], config(items));
    expect(run.code, run.err).toBe(0);
    expect(run.out).toMatch(/✓ items: fetched 25, \+25 inserted/);
  });

  it('with -v log_capture=on the reader may replicate: a log entity captures as the reader once the owner made its publication', async () => {
    const r = runRoles(source, { ...sourcePart, log_capture: 'on' });
    expect(r.code, r.err).toBe(0);
    expect((await source.pool.query('select rolreplication from pg_roles where rolname = $1', [reader])).rows[0].rolreplication).toBe(true);
    await sync.pool.query('create table tgt.items_log (id int primary key, name text)');
    const logged = { items_log: { source: 'src', from: { table: 'public.items' }, target: 'tgt.items_log', key: ['id'], capture: 'log' } };
    const apply = cli(sync, ['config', 'apply'], config({ ...items, ...logged }));
    expect(apply.code, apply.err).toBe(0);
    // The reader cannot create the publication (read-only, not the owner): the line says what the owner runs.
    expect(apply.out).toMatch(/✗ items_log: could not set up the publication .* run as the table's owner: create publication "syncline_items_log" for table "public"\."items"/);
    await source.pool.query('create publication syncline_items_log for table public.items');
    const first = cli(sync, ['sync', 'items_log'], config({ ...items, ...logged }));
    expect(first.code, first.err).toBe(0);
    expect(first.out).toMatch(/✓ items_log: fetched 25, \+25 inserted/);
    await source.pool.query(`insert into items values (26, 'item 26'); delete from items where id = 1`);
    const next = cli(sync, ['sync', 'items_log'], config({ ...items, ...logged }));
    expect(next.code, next.err).toBe(0);
    expect(next.out).toMatch(/✓ items_log: fetched 2, \+1 inserted.*-1 deleted/);
    expect((await sync.pool.query('select count(*)::int as n, min(id) as lo, max(id) as hi from tgt.items_log')).rows[0]).toEqual({ n: 25, lo: 2, hi: 26 });
  });
});
