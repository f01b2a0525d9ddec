import type { PoolClient } from '../db/pool.js';
import { quoteIdent } from '../db/database.js';
import { log } from '../log.js';
import type { EntityConfig } from '../config/schema.js';
import type { PlannedRun, StageRun } from '../sources/port.js';
import { castRaw, stagingTable } from '../sources/staging.js';
import { fetchPhase, throwIfCancelRequested } from './guards.js';
import type { EngineContext, RunOptions } from './types.js';

export interface LoadContext {
  engine: EngineContext;
  /** The connection holding the entity lock; stages and merges. */
  target: PoolClient;
  name: string;
  runId: number;
  def: EntityConfig;
  plan: PlannedRun;
  opts: RunOptions;
}

/** The run as its source sees it while staging. */
export function stageRun(ctx: LoadContext): StageRun {
  const { engine, target, name, def, runId, opts } = ctx;
  return {
    env: engine, target, name, def, runId, opts,
    fetchPhase: (fn) => fetchPhase(engine.pool, target, runId, opts.signal, fn),
  };
}

/** The result of sync.merge or sync.merge_direct. */
export type MergeResult = Record<string, unknown> & { status: string; fetched: number };

/**
 * The initial load of an empty target: COPY straight into it and record the
 * run, in one transaction; the data is written once instead of twice. Returns
 * null, having rolled back, when the target's own constraints reject the
 * data (a null or repeated key, a missing parent): the staging path then
 * quarantines those records and merges the rest.
 */
export async function loadDirect(ctx: LoadContext, copyInto: NonNullable<PlannedRun['copyInto']>): Promise<MergeResult | null> {
  const { target, def, runId } = ctx;
  const t = def.target as { schema: string; table: string };
  await target.query('begin');
  try {
    const copied = await copyInto(stageRun(ctx), `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`);
    await throwIfCancelRequested(ctx.engine.pool, runId);
    ctx.opts.onProgress?.({ entity: ctx.name, runId, phase: 'merge', rows: copied, bytes: 0 });
    const { rows } = await target.query('select sync.merge_direct($1, $2) as r', [runId, copied]);
    await target.query('commit');
    return rows[0].r;
  } catch (err) {
    await target.query('rollback').catch(() => {});
    const code = String((err as { code?: string }).code ?? '');
    if (code.startsWith('23') || code === 'SL001') {
      log.info({ entity: ctx.name, runId, reason: (err as Error).message }, 'direct load rejected; loading through staging');
      return null;
    }
    throw err;
  }
}

/**
 * The general path: the source stages the run's records (typed, or as text
 * that sync.cast_raw types), then sync.merge in one transaction.
 */
export async function loadStaged(ctx: LoadContext): Promise<MergeResult> {
  const staged = await ctx.plan.stage(stageRun(ctx));
  if (staged.cast) await castRaw(ctx.target, ctx.runId, staged.cast.timeZone, staged.cast.keepLast);
  await staged.beforeMerge?.();
  const merged = await mergeStaging(ctx);
  await staged.afterMerge?.();
  return merged;
}

export { stagingTable };

/** sync.merge of a filled staging table, with what the source guarantees and what a dry run may trust. */
export async function mergeStaging(ctx: LoadContext): Promise<MergeResult> {
  const { target, runId, opts, plan, engine } = ctx;
  if (opts.keys) await scopeToKeys(ctx, opts.keys);
  await target.query(`analyze ${stagingTable(runId)}`);
  await throwIfCancelRequested(engine.pool, runId);
  await target.query(
    `update sync.run set detail = detail || jsonb_strip_nulls(jsonb_build_object(
        'source_unique_key', $2::boolean,
        'unchecked_parents', (select jsonb_agg(to_regclass(format('%I.%I', target_schema, target_table))::oid)
                                from sync.entity where name = any($3::text[]))))
      where id = $1`,
    [runId, plan.sourceKeyUnique || null, opts.dryRun ? opts.previewedParents ?? [] : []]);
  opts.onProgress?.({ entity: ctx.name, runId, phase: 'merge', rows: 0, bytes: 0 });
  const { rows } = await target.query('select sync.merge($1) as r', [runId]);
  return rows[0].r;
}

/**
 * A run of chosen keys (a gap's re-sync, a quarantined record's retry): only
 * those records merge, and only those a mirror may delete (the source no
 * longer has them). sync.merge leaves the cursor alone for such a run.
 */
async function scopeToKeys(ctx: LoadContext, keys: string[][]): Promise<void> {
  const { target, runId, def } = ctx;
  const scope = `sync_staging.${quoteIdent(`run_${runId}_parents`)}`;
  const cols = def.key.map(quoteIdent);
  await target.query(`drop table if exists ${scope}`);
  await target.query(`create unlogged table ${scope} (${cols.map((c) => `${c} text`).join(', ')})`);
  await target.query(
    `insert into ${scope} select ${def.key.map((_, i) => `k ->> ${i}`).join(', ')} from jsonb_array_elements($1::jsonb) k`,
    [JSON.stringify(keys)]);
  await target.query(`delete from ${stagingTable(runId)} s where not exists (select 1 from ${scope} p where ${
    cols.map((c) => `p.${c} = s.${c}::text`).join(' and ')})`);
  await target.query(
    `update sync.run set detail = detail || jsonb_build_object('keys', $2::int, 'parent_scope', $3::jsonb) where id = $1`,
    [runId, keys.length, JSON.stringify(def.key)]);
}
