import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../config/schema.js';
import { ensureDatabase, PROJECT_ROOT } from '../db/database.js';
import { connectionHint, inTransaction, makePool, type Pool } from '../db/pool.js';
import { sourceUrl } from '../sources/postgres/read.js';
import { log } from '../log.js';

/**
 * The demo that `npm start` runs on a fresh machine is the "Remote Postgres →
 * local" example: a second database on Syncline's own server plays the remote
 * (examples/remote-postgres/remote.sql + seed.sql) and the example's local
 * tables (local.sql, schema `metering`) live in Syncline's database.
 */
export const DEMO_EXAMPLE_DIR = path.join(PROJECT_ROOT, 'examples', 'remote-postgres');
/** The config `npm start` ships as syncline.config.json. */
export const DEMO_CONFIG_FILE = path.join(DEMO_EXAMPLE_DIR, 'demo.config.json');

// Serializes two processes seeding the same database (two `npm start`s, or
// `npm start` beside the example's setup script): the second waits, then
// finds the tables and rows there and does nothing.
const SEED_LOCK = 'syncline:demo-seed';

function exampleSql(file: string): string {
  return readFileSync(path.join(DEMO_EXAMPLE_DIR, file), 'utf8');
}

async function withPool<T>(url: string, what: string, fn: (pool: Pool) => Promise<T>): Promise<T> {
  const pool = makePool(url, { max: 1, application_name: 'syncline demo' });
  try {
    await pool.query('select 1').catch((err) => { throw connectionHint(err, url, what); });
    return await fn(pool);
  } finally {
    await pool.end();
  }
}

/**
 * Prepares the demo on the server of `syncUrl`: creates the database
 * `sourceDatabase` if missing, its remote schema, and the demo rows when its
 * tenants table is empty; creates the example's local tables in Syncline's
 * database if missing. Idempotent, and never drops or rewrites existing rows
 * on either side.
 */
export async function seedDemo(syncUrl: string, sourceDatabase: string): Promise<void> {
  await ensureDatabase(syncUrl, sourceDatabase);
  const srcUrl = sourceUrl({ kind: 'postgres', database: sourceDatabase }, syncUrl);
  const seeded = await withPool(srcUrl, `the demo source database "${sourceDatabase}"`, (pool) => inTransaction(pool, async (c) => {
    await c.query('select pg_advisory_xact_lock(hashtext($1))', [SEED_LOCK]);
    await c.query('set local client_min_messages = warning');
    await c.query(exampleSql('remote.sql'));
    const { rows } = await c.query('select exists (select 1 from public.tenants) as has_rows');
    if (rows[0].has_rows) return false;
    await c.query(exampleSql('seed.sql'));
    return true;
  }));
  await withPool(syncUrl, 'the Syncline database', (pool) => inTransaction(pool, async (c) => {
    await c.query('select pg_advisory_xact_lock(hashtext($1))', [SEED_LOCK]);
    await c.query('set local client_min_messages = warning');
    await c.query(exampleSql('local.sql'));
  }));
  if (seeded) log.info({ database: sourceDatabase }, 'seeded the demo source database with three tenants of metering data');
}

/**
 * One minute of simulated activity on the demo source (examples/remote-postgres/mutate.sql):
 * in each tenant a few meters and readings change with updated_at bumped, a
 * meter is installed with four registers, and one meter ↔ register assignment
 * is removed, so the next scheduled runs show inserts, updates and deletes.
 */
export async function mutateDemo(sourceUrl: string): Promise<void> {
  await withPool(sourceUrl, 'the demo source database', async (pool) => {
    await pool.query(exampleSql('mutate.sql'));
  });
}

/** The config's demo sources (postgres, `database` on Syncline's server, `demo: true`). */
export function demoSources(cfg: Config): { name: string; database: string }[] {
  return Object.entries(cfg.sources).flatMap(([name, s]) =>
    (s.kind === 'postgres' && s.demo === true && s.database !== undefined ? [{ name, database: s.database }] : []));
}

/** Why a demo source is not seeded on a server the user gave (DATABASE_URL), and what to do. */
export function demoNotSeeded(cfg: Config): string | null {
  const demo = demoSources(cfg);
  if (!demo.length) return null;
  return `note: the demo source${demo.length > 1 ? 's' : ''} ${demo.map((d) => `"${d.name}" (database ${d.database})`).join(', ')} `
    + 'is seeded only on the embedded server, never on a server named by DATABASE_URL. '
    + 'Replace syncline.config.json with your own config (see examples/), or unset DATABASE_URL to run the demo.\n';
}

/**
 * Seeds every demo source of `cfg` and returns their connection strings (for
 * mutateDemo) — only on the embedded server: the demo never lands in a
 * user's database by surprise. A config without demo sources, or a server
 * the user gave, returns [] and touches nothing.
 */
export async function prepareDemo(syncUrl: string, cfg: Config, embedded: boolean): Promise<string[]> {
  if (!embedded) {
    const note = demoNotSeeded(cfg);
    if (note) process.stderr.write(note);
    return [];
  }
  const urls: string[] = [];
  for (const { database } of demoSources(cfg)) {
    await seedDemo(syncUrl, database);
    urls.push(sourceUrl({ kind: 'postgres', database }, syncUrl));
  }
  return urls;
}
