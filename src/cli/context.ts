import path from 'node:path';
import { loadConfig, ConfigError, DEFAULT_CONFIG_FILE } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { openDatabase, migrateDatabase, type Database } from '../db/database.js';
import { prepareEdgeEnv } from '../edge/env.js';
import { makePool, type Pool } from '../db/pool.js';
import { Engine } from '../engine/run.js';

/** Exit codes the CLI documents. */
export const EXIT = { ok: 0, failed: 1, usage: 2, partial: 3, differs: 4 } as const;

export class UsageError extends Error {}

export interface GlobalOptions {
  config?: string;
}

export interface Session {
  config: Config;
  db: Database;
  pool: Pool;
  engine: Engine;
  close(): Promise<void>;
}

export function readConfig(opts: GlobalOptions): Config {
  return loadConfig(opts.config);
}

/**
 * Config + database (DATABASE_URL, or the embedded one), migrated, with an
 * Engine. close() ends pools and stops an embedded server this process started.
 */
export async function openSession(opts: GlobalOptions): Promise<Session> {
  const config = readConfig(opts);
  // POSTGRES_SYNC_* (this database) and POSTGRES_CLIENT_* (an edge's remote)
  // stand in for DATABASE_URL and POSTGRES_CLIENT_URL in every command.
  prepareEdgeEnv(opts.config);
  const db = await openDatabase(process.env, config.database);
  try {
    await migrateDatabase(db.url);
  } catch (err) {
    await db.close();
    throw err;
  }
  const pool = makePool(db.url);
  const configFile = path.resolve(opts.config ?? process.env.SYNCLINE_CONFIG ?? DEFAULT_CONFIG_FILE);
  const engine = new Engine(pool, db.url, config, path.dirname(configFile));
  return {
    config, db, pool, engine,
    async close() {
      await engine.close();
      await pool.end();
      await db.close();
    },
  };
}

/** Prints a failure the way a person needs it and returns the exit code. */
export function reportError(err: unknown): number {
  if (err instanceof ConfigError) {
    process.stderr.write(`${err.message}\n`);
    return EXIT.usage;
  }
  if (err instanceof UsageError) {
    process.stderr.write(`${err.message}\n`);
    return EXIT.usage;
  }
  const e = err as Error;
  process.stderr.write(`error: ${e.message ?? String(err)}\n`);
  if (process.env.SYNCLINE_DEBUG && e.stack) process.stderr.write(`${e.stack}\n`);
  return EXIT.failed;
}
