import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runMigrations } from 'graphile-worker';
import { migrate as graphileMigrate } from 'graphile-migrate';
import { clearAllPools } from 'graphile-migrate/dist/pg.js';
import { startEmbedded, type EmbeddedServer } from './embedded.js';
import { connectionHint, makePool, type Pool } from './pool.js';
import { log } from '../log.js';

export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const MIGRATIONS_FOLDER = path.join(PROJECT_ROOT, 'migrations');
export const EMBEDDED_DATABASE = 'syncline';

export interface Database {
  url: string;
  /** The embedded server when DATABASE_URL was not set. */
  embedded?: EmbeddedServer;
  close(): Promise<void>;
}

/**
 * DATABASE_URL if set, otherwise the embedded server under .syncline/
 * (started, or reused when another Syncline process runs it; the last
 * process to leave stops it), in the
 * database `database` (a config's own: each example has one, so it never
 * touches the demo's entities).
 */
export async function openDatabase(env = process.env, database = EMBEDDED_DATABASE): Promise<Database> {
  if (env.DATABASE_URL) return { url: env.DATABASE_URL, close: async () => {} };
  const embedded = await startEmbedded({ dir: env.SYNCLINE_HOME ?? path.join(PROJECT_ROOT, '.syncline'), shared: true });
  await ensureDatabase(embedded.url('postgres'), database);
  return { url: embedded.url(database), embedded, close: () => embedded.stop() };
}

/** The embedded database a config file names (top-level "database"), read without validating the rest. */
export function configDatabase(configFile: string): string {
  try {
    const { database } = JSON.parse(readFileSync(configFile, 'utf8')) as { database?: unknown };
    return typeof database === 'string' && database !== '' ? database : EMBEDDED_DATABASE;
  } catch {
    return EMBEDDED_DATABASE;
  }
}

/** Creates `name` on the server of `adminUrl` unless it exists. */
export async function ensureDatabase(adminUrl: string, name: string, template?: string): Promise<void> {
  const pool = makePool(adminUrl, { max: 1 });
  try {
    const { rowCount } = await pool.query('select 1 from pg_database where datname = $1', [name]);
    if (!rowCount) {
      const tpl = template ? ` template ${quoteIdent(template)}` : '';
      await pool.query(`create database ${quoteIdent(name)}${tpl}`).catch((err) => {
        // Created meanwhile by another process: 42P04 once it committed, a
        // unique violation on pg_database while its CREATE was still running.
        if (err.code !== '42P04' && !(err.code === '23505' && err.constraint === 'pg_database_datname_index')) throw err;
      });
    }
  } finally {
    await pool.end();
  }
}

export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Installs the graphile-worker schema, then applies committed migrations. */
export async function migrateDatabase(url: string): Promise<void> {
  const pool = makePool(url, { max: 2 });
  try {
    await pool.query('select 1').catch((err) => { throw connectionHint(err, url, 'the Syncline database'); });
    await runMigrations({ pgPool: pool, logger: workerLogger() });
  } finally {
    await pool.end();
  }
  try {
    await migrateWaiting(url);
  } finally {
    // graphile-migrate keeps its pool open for a moment after use and calls
    // process.exit(1) if an idle connection of it fails: close it now, before
    // anything (the CLI stopping the embedded server) can cut it.
    clearAllPools();
  }
}

// graphile-migrate refuses (instead of waiting) while another process
// migrates the same database: a worker and a CLI started together both do.
const MIGRATE_RETRIES = 20;
const MIGRATE_RETRY_MS = 250;

async function migrateWaiting(url: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await graphileMigrate({ connectionString: url, migrationsFolder: MIGRATIONS_FOLDER, logger: migrateLogger() });
      return;
    } catch (err) {
      if ((err as Error).message !== 'Failed to get exclusive lock' || attempt >= MIGRATE_RETRIES) throw err;
      await new Promise((r) => setTimeout(r, MIGRATE_RETRY_MS * attempt));
    }
  }
}

import { Logger as GraphileLogger } from 'graphile-worker';
import { Logger as MigrateLogger } from '@graphile/logger';

// graphile-worker reports every job at info; Syncline logs its own one-line
// summary a run, so the worker's chatter moves down a level.
const LEVELS: Record<string, 'error' | 'warn' | 'debug' | 'trace'> = {
  error: 'error', warning: 'warn', info: 'debug', debug: 'trace',
};

function logFactory(scope: Record<string, unknown>) {
  return (level: string, message: string, meta?: unknown) => {
    const pinoLevel = LEVELS[level] ?? 'info';
    log[pinoLevel]({ ...scope, ...(meta && typeof meta === 'object' ? { meta } : {}) }, message);
  };
}

export function workerLogger(): GraphileLogger {
  return new GraphileLogger((scope) => logFactory({ component: 'worker', ...scope }));
}

function migrateLogger(): MigrateLogger {
  // graphile-migrate reports each migration at info; ours go to debug so
  // `npm start` stays quiet on an up-to-date database.
  return new MigrateLogger(() => (level: string, message: string) => {
    log[level === 'error' ? 'error' : level === 'warning' ? 'warn' : 'debug']({ component: 'migrate' }, message);
  });
}

export async function openMigratedPool(env = process.env, database?: string): Promise<{ db: Database; pool: Pool }> {
  const db = await openDatabase(env, database);
  await migrateDatabase(db.url);
  return { db, pool: makePool(db.url) };
}
