import { readFileSync } from 'node:fs';
import type { Config } from '../config/schema.js';
import { inTransaction, type Pool } from '../db/pool.js';

// Serializes two setups of one database (two edges starting at once against
// the same cloud): the second waits and then finds everything in place.
const SETUP_LOCK = 'syncline:edge-setup';

/**
 * Runs a SQL file in one transaction. The files are written to be run again
 * and again (`if not exists`, `create or replace`), so setup is idempotent.
 */
export async function applySqlFile(pool: Pool, file: string): Promise<void> {
  const sql = readFileSync(file, 'utf8');
  await inTransaction(pool, async (c) => {
    await c.query('select pg_advisory_xact_lock(hashtext($1))', [SETUP_LOCK]);
    await c.query('set local client_min_messages = warning');
    await c.query(sql);
  });
}

/**
 * The source that plays the remote: the one the push entities write to, or
 * the one source the entities read, or the one named.
 */
export function remoteSource(cfg: Config, named?: string): string {
  if (named) {
    if (cfg.sources[named]?.kind !== 'postgres') throw new Error(`--source ${named}: not a postgres source of the config (it has: ${Object.keys(cfg.sources).join(', ')})`);
    return named;
  }
  const entities = Object.values(cfg.entities);
  const pushing = new Set(entities.filter((e) => e.direction === 'push').map((e) => e.source));
  const candidates = pushing.size ? pushing
    : new Set(entities.map((e) => e.source).filter((s) => cfg.sources[s]?.kind === 'postgres'));
  if (candidates.size !== 1) {
    throw new Error(`${candidates.size ? `several sources could be the remote (${[...candidates].join(', ')})` : 'no postgres source is used by an entity'} — name it with --source`);
  }
  return [...candidates][0];
}
