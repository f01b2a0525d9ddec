/**
 * What every text source shares on its way into a run's staging: the raw
 * staging table (or a crawl's typed pages), the cast to types, and the one way a
 * source reports that its snapshot may not be whole (sync.doubt_snapshot).
 */
import type { EntityConfig } from '../config/schema.js';
import { quoteIdent } from '../db/database.js';
import type { PoolClient } from '../db/pool.js';
import type { ReadOptions } from './port.js';

/** A reason to doubt the run's snapshot: every delete of the run stops (sync.doubt_snapshot). */
export async function doubt(target: PoolClient, runId: number, reason: string): Promise<void> {
  await target.query('select sync.doubt_snapshot($1, $2)', [runId, reason]);
}

/** Whether a run of this entity would delete rows its snapshot lacks (sync.merge's rule). */
export function wouldDelete(def: EntityConfig, opts: ReadOptions): boolean {
  return ['mirror', 'soft-delete'].includes(def.mode) && (!def.cursor || Boolean(opts.full)) && !opts.keys && !opts.window;
}

/** sync.cast_raw, timed as the run's stage phase (text staging → typed staging). */
export async function castRaw(target: PoolClient, runId: number, timeZone: string | undefined, keepLast: boolean): Promise<void> {
  await timedStage(target, runId, 'select sync.cast_raw($1, $2, $3)', [runId, timeZone ?? null, keepLast]);
}

/**
 * sync.cast_typed, timed as the run's stage phase: pages COPYed typed become
 * the run's staging, and only the pages that went through text are cast.
 */
export async function castTyped(target: PoolClient, runId: number, timeZone: string | undefined, keepLast: boolean): Promise<void> {
  await timedStage(target, runId, 'select sync.cast_typed($1, $2, $3)', [runId, timeZone ?? null, keepLast]);
}

async function timedStage(target: PoolClient, runId: number, sql: string, params: unknown[]): Promise<void> {
  const started = Date.now();
  await target.query(sql, params);
  await target.query(`update sync.run set phases = phases || jsonb_build_object('stage', $2::int) where id = $1`,
    [runId, Date.now() - started]);
}

/** A run's staging table: what the source fills and sync.merge reads. */
export function stagingTable(runId: number): string {
  return `sync_staging.${quoteIdent(`run_${runId}`)}`;
}

export function rawTable(runId: number): string {
  return `sync_staging.${quoteIdent(`run_${runId}_raw`)}`;
}

/** A crawl's typed pages (sync.create_typed_pages), before sync.cast_typed makes them the run's staging. */
export function typedPagesTable(runId: number): string {
  return `sync_staging.${quoteIdent(`run_${runId}_typed`)}`;
}
