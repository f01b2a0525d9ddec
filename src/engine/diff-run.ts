/**
 * The checksum path of a sync run: compare key-hash bucket checksums of the
 * source (one read-only snapshot) and the target (segments.ts), stage only
 * the records of the buckets that differ, in the same snapshot, and merge
 * them as a full fetch would (sync.merge reads detail.diff_scope: deletes
 * only among target rows of the differing buckets, the records of equal
 * buckets counted as fetched and unchanged). Anything the checksum phase
 * cannot do falls back to the full fetch, with the reason in
 * sync.run.detail.diff: the diff never fails a run.
 */
import pg from 'pg';
import { log } from '../log.js';
import type { EntityConfig } from '../config/schema.js';
import { inClientTransaction, type PoolClient } from '../db/pool.js';
import type { BucketFilter, ChecksumReads, HashKind } from '../sources/port.js';
import { bucketMask, rowHash, TEXT_SETTINGS } from '../sources/buckets.js';
import { CancelledError, throwIfCancelRequested } from './guards.js';
import { mergeStaging, stagingTable, stageRun, type LoadContext, type MergeResult } from './load.js';
import { checksumColumns, diffSegments, dropSegmentTables, segmentTables, targetScope, targetTable, type SegmentLevel } from './segments.js';

// Past this share of the rows in differing buckets at the first level,
// fetching everything costs less than refining and fetching by bucket.
const MAX_DIFFERING_SHARE = 0.5;

/** What sync.run.detail.diff says about a run. */
export interface DiffDetail {
  path: 'checksum' | 'full';
  reason: string;
  levels?: SegmentLevel[];
  rows_compared?: number;
  target_rows?: number;
  rows_fetched?: number;
  ms?: number;
  /** md5 of the entity's definition: a run after a change of it fetches everything once. */
  definition?: string;
}

/**
 * Why this run fetches everything, or null when the checksum path may run.
 * Called for runs whose source can checksum (PlannedRun.checksums).
 */
export async function fullFetchReason(ctx: LoadContext): Promise<string | null> {
  const { def, opts, target, name } = ctx;
  const fixed = fixedReason(def, opts);
  if (fixed) return fixed;
  const { rows: [r] } = await target.query<{ empty: boolean; changed: boolean }>(
    `select not exists (select 1 from ${targetTable(def)} t where ${targetScope(def)}) as empty,
            (select r.detail #>> '{diff,definition}' from sync.run r
              where r.entity = $1 and r.id <> $2 and r.status in ('succeeded', 'partial') and not r.dry_run
              order by r.id desc limit 1) is distinct from (select md5(e.definition::text) from sync.entity e where e.name = $1) as changed`,
    [name, ctx.runId]);
  if (r.empty) return 'the target holds no rows of the entity: a first load fetches everything';
  if (r.changed) return 'the entity\'s definition changed since its last successful run (or that run did not record it): this run fetches everything once';
  return null;
}

/** The reasons for a full fetch that the run's options and the entity's definition give alone. */
function fixedReason(def: EntityConfig, opts: LoadContext['opts']): string | null {
  if (def.diff === 'off') return 'diff is "off" for this entity';
  if (opts.dryRun) return 'a dry run fetches everything';
  if (opts.keys) return 'a run of chosen keys fetches just them';
  if (opts.window) return 'a backfill window fetches its range';
  if (def.cursor && !opts.full) return 'an incremental run fetches past its cursor';
  if (def.mode !== 'mirror' && def.mode !== 'upsert') return `mode "${def.mode}" fetches everything`;
  if (def.validate) return 'validate rules judge every record';
  if (def.version) return 'a version column judges every record';
  if (def.deletedWhen) return 'records marked deleted (deletedWhen) are applied from every fetch';
  return null;
}

/** Records detail.diff (with the definition's md5) and, for the checksum path, its phase time. */
export async function recordDiff(target: PoolClient, runId: number, name: string, detail: DiffDetail): Promise<void> {
  await target.query(
    `update sync.run set detail = detail || jsonb_build_object('diff', $2::jsonb
                                   || jsonb_build_object('definition', (select md5(e.definition::text) from sync.entity e where e.name = $3))),
                         phases = phases || coalesce(jsonb_build_object('diff', $4::int), '{}') where id = $1`,
    [runId, JSON.stringify(detail), name, detail.ms ?? null]);
}

/**
 * The checksum path: diff, stage the records of the differing buckets, merge.
 * Returns null, having recorded why and left the staging table empty, when
 * the diff could not be made or most rows differ: the caller fetches
 * everything then.
 */
export async function loadByChecksum(ctx: LoadContext, reads: ChecksumReads): Promise<MergeResult | null> {
  const { target, runId, name } = ctx;
  const started = Date.now();
  const prefix = `run_${runId}`;
  let detail: DiffDetail;
  try {
    detail = await diffAndStage(ctx, reads, prefix, started);
  } catch (err) {
    if (err instanceof CancelledError) throw err;
    const reason = `the checksum diff failed: ${(err as Error).message}`;
    log.info({ entity: name, runId, reason }, 'checksum diff failed; fetching everything');
    await target.query(`truncate ${stagingTable(runId)}`);
    await target.query(`update sync.run set detail = detail - 'diff_scope' where id = $1`, [runId]);
    await dropSegmentTables(target, prefix);
    await recordDiff(target, runId, name, { path: 'full', reason, ms: Date.now() - started });
    return null;
  }
  const t = segmentTables(prefix);
  await target.query(`drop table if exists ${t.source}, ${t.target}`);
  if (detail.path === 'full') await dropSegmentTables(target, prefix);
  await recordDiff(target, runId, name, detail);
  return mergeStaging(ctx);
}

/**
 * In one source snapshot: the levels of the diff, then the records of the
 * differing buckets (or of all, when most differ) into the run's staging
 * table; detail.diff_scope tells sync.merge what was left out.
 */
async function diffAndStage(ctx: LoadContext, reads: ChecksumReads, prefix: string, started: number): Promise<DiffDetail> {
  const { target, runId, def, engine } = ctx;
  const columns = await checksumColumns(target, def, ctx.plan.targetColumns);
  const session = await reads.open({ target, columns, runId });
  try {
    const diff = await diffSegments({
      target, session, def, columns, prefix, estimatedRows: await estimate(ctx, reads), pool: engine.pool, maxShare: MAX_DIFFERING_SHARE,
      maxOf: def.cursor?.column,
    });
    await throwIfCancelRequested(engine.pool, runId);
    const counted = { levels: diff.levels, rows_compared: diff.sourceRows, target_rows: diff.targetRows, ms: Date.now() - started };
    const fetch = (buckets: BucketFilter) => stageRun(ctx).fetchPhase((signal) =>
      session.copyRows(buckets, stagingTable(runId), { signal, onRows: progress(ctx) }));
    if (diff.tooMany) {
      // Most rows differ: fetch everything, as a full run does, from the snapshot already open.
      const rows = await fetch({ bits: 0, buckets: ['0'] });
      return { path: 'full', ...counted, rows_fetched: rows,
        reason: `${diff.differingRows.source + diff.differingRows.target} of ${diff.sourceRows + diff.targetRows} rows are in differing buckets: fetching everything costs less` };
    }
    const buckets = await withOpenErrors(ctx, diff.table, diff.differing.bits, session.hash);
    const rows = buckets.length ? await fetch({ bits: diff.differing.bits, buckets }) : 0;
    await target.query(
      `update sync.run set detail = detail || jsonb_build_object('diff_scope', $2::jsonb) where id = $1`,
      [runId, JSON.stringify({ bits: diff.differing.bits, hash: session.hash, buckets: buckets.length, equal_rows: diff.sourceRows - rows,
        ...(def.cursor ? { cursor_max: diff.equalMax ?? null } : {}) })]);
    return { path: 'checksum', reason: `${buckets.length} of ${diff.levels[diff.levels.length - 1].segments} buckets differ`,
      ...counted, rows_fetched: rows };
  } finally {
    await session.close();
  }
}

/** Rows to expect: the source's estimate, else the target's, else the target's count. */
async function estimate(ctx: LoadContext, reads: ChecksumReads): Promise<number | undefined> {
  const n = await reads.estimatedRows();
  if (n) return n;
  const { rows: [t] } = await ctx.target.query<{ n: number }>(
    `select coalesce(nullif((select greatest(reltuples, 0)::float8 from pg_class where oid = $1::regclass), 0),
                     (select count(*) from ${targetTable(ctx.def)} t where ${targetScope(ctx.def)}))::float8 as n`, [targetTable(ctx.def)]);
  return t.n || undefined;
}

function progress(ctx: LoadContext) {
  return (rows: number, bytes: number) => ctx.opts.onProgress?.({ entity: ctx.name, runId: ctx.runId, phase: 'fetch', rows, bytes });
}

/**
 * Adds to the differing buckets those holding a key with an open quarantine
 * entry, and returns them all: a full fetch would stage such a record again
 * (and resolve its entry once it merges), even when its bucket is equal.
 */
async function withOpenErrors(ctx: LoadContext, table: string, bits: number, hash: HashKind): Promise<string[]> {
  const { target, def, name } = ctx;
  const columns = await checksumColumns(target, def, def.key);
  const keyed = columns.map((c, i) => ({ expr: c.asText ? `e.key[${i + 1}]` : `e.key[${i + 1}]::${c.type}`, column: c }));
  // Hashed under the diff's text settings, as its buckets were (a timestamp key prints by TimeZone).
  const insert = `insert into ${table} (bucket, src_n, tgt_n)
     select distinct ${rowHash(hash, keyed)} & ${bucketMask(bits)}, null::int8, null::int8
       from sync.run_error e
      where e.entity = $1 and e.resolved_at is null and cardinality(e.key) = ${columns.length}
        ${columns.map((c, i) => (c.asText ? '' : `and sync._is_valid(e.key[${i + 1}], ${pg.escapeLiteral(c.type)})`)).join(' ')}
     on conflict (bucket) do nothing`;
  await inClientTransaction(target, async () => {
    await target.query(TEXT_SETTINGS);
    await target.query(insert, [name]);
  });
  const { rows } = await target.query<{ buckets: string[] }>(
    `select coalesce(array_agg(bucket order by bucket)::text[], '{}') as buckets from ${table}`);
  return rows[0].buckets;
}
