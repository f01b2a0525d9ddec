import { quoteIdent } from '../db/database.js';
import type { PoolClient } from '../db/pool.js';
import type { EntityConfig } from '../config/schema.js';
import type { ChecksumReads, KeyRange, KeyRangeReads, PlannedRun } from '../sources/port.js';
import type { Trigger } from './types.js';
import { targetScope, targetTable } from './segments.js';
import { closeComparison, compareKeys } from './verify-keys.js';

/**
 * Verification after a merged incremental run of an entity whose source
 * reads key ranges, when one is due (verificationDue): a source with
 * checksums is compared by key-hash bucket checksums over the cursor range
 * the target holds (verifyByChecksums); another by counts (verifyByCounts).
 * Either way the result is a row of sync.verification, and the keys found
 * missing or differing become gaps (sync.gaps) healed by a re-sync of just
 * those keys. Counts and timing go into the run (detail.verify, phases.verify).
 */
export async function verifyRun(args: {
  target: PoolClient; name: string; runId: number; def: EntityConfig; plan: PlannedRun; trigger: Trigger;
}): Promise<void> {
  const { target, name, runId, def, plan } = args;
  if (!plan.keyRange && !plan.checksums) return;
  // A re-sync of gaps is checked at once: it exists to heal them.
  if (args.trigger !== 'resync' && !(await verificationDue(target, name, def))) return;
  const started = Date.now();
  const found = await cursorRange(target, def, name);
  const range = found && def.cursor ? { column: def.cursor.column, ...found } : null;
  let detail: Record<string, unknown> | null = null;
  let fallback: string | undefined;
  if (plan.checksums) {
    try {
      detail = await verifyByChecksums({ target, name, runId, def, checksums: plan.checksums, targetColumns: plan.targetColumns, range });
    } catch (err) {
      // Counting still finds missing rows; the reason stays in the run.
      fallback = `checksums failed, counted instead: ${(err as Error).message}`;
    }
  }
  if (!detail && plan.keyRange) detail = { ...await verifyByCounts({ target, name, runId, def, source: plan.keyRange, range }), ...(fallback ? { fallback } : {}) };
  if (!detail) return;
  await target.query(
    `update sync.run set detail = detail || jsonb_build_object('verify', $2::jsonb),
                         phases = phases || jsonb_build_object('verify', $3::int) where id = $1`,
    [runId, JSON.stringify({ ...detail, ...(range ? { lo: range.lo, hi: range.hi } : {}) }), Date.now() - started]);
}

/** Whether an incremental run verifies now: none within the entity's interval (or verify_every), or a backfill since. */
async function verificationDue(target: PoolClient, name: string, def: EntityConfig): Promise<boolean> {
  const every = typeof def.verify === 'object' ? def.verify.every : null;
  const { rows } = await target.query<{ due: boolean }>('select sync.verification_due($1, $2::interval) as due', [name, every]);
  return rows[0].due;
}

/** Opens a verification row of a run's scheduled check; returns its id. */
async function openScheduled(target: PoolClient, name: string, runId: number, method: string): Promise<number> {
  const { rows } = await target.query<{ id: string }>(
    `insert into sync.verification (entity, requested_by, run_id) values ($1, 'schedule', $2) returning id`, [name, runId]);
  await target.query('select sync.start_verification($1, $2)', [rows[0].id, method]);
  return Number(rows[0].id);
}

/** The checksum comparison of a run's scheduled check: its differing keys become gaps (sync.record_gaps). */
async function verifyByChecksums(args: {
  target: PoolClient; name: string; runId: number; def: EntityConfig; checksums: ChecksumReads; targetColumns: string[]; range: KeyRange | null;
}): Promise<Record<string, unknown>> {
  const { target, name, runId } = args;
  const id = await openScheduled(target, name, runId, 'checksum');
  try {
    const c = await compareKeys({ ...args, id, prefix: `run_${runId}_verify` });
    await closeComparison(target, id, c, args.range);
    const gaps = (await target.query('select sync.record_gaps($1, $2) as g', [runId, id])).rows[0].g;
    return { method: 'checksum', verification_id: id, rows_compared: c.rowsCompared, segments: c.segments,
      missing: c.missing, extra: c.extra, changed: c.changed, gaps };
  } catch (err) {
    await target.query(`select sync.finish_verification($1, 'failed', jsonb_build_object('error', $2::text))`, [id, (err as Error).message]);
    throw err;
  }
}

/**
 * The count comparison: the source's record count against the target's.
 * When the target lacks more records than the quarantine explains, the
 * source's keys are staged and sync.detect_gaps records the missing ones.
 */
async function verifyByCounts(args: {
  target: PoolClient; name: string; runId: number; def: EntityConfig; source: KeyRangeReads; range: KeyRange | null;
}): Promise<Record<string, unknown>> {
  const { target, name, runId, def, source, range } = args;
  const id = await openScheduled(target, name, runId, 'count');
  const [sourceCount, { rows: [tgt] }] = await Promise.all([
    source.count(range),
    target.query<{ n: string; quarantined: string }>(
      `select (select count(*) from ${targetTable(def)} t where ${targetScope(def, range)}) as n,
              (select count(*) from sync.run_error e where e.entity = $1 and e.resolved_at is null and e.key is not null
                  and not exists (select 1 from ${targetTable(def)} t where ${keyArray(def)} = e.key)) as quarantined`,
      [name]),
  ]);
  const missing = sourceCount - Number(tgt.n);
  const detail: Record<string, unknown> = {
    method: 'count', verification_id: id, source: sourceCount, target: Number(tgt.n), quarantined_missing: Number(tgt.quarantined),
  };
  if (missing > Number(tgt.quarantined) || await hasOpenGaps(target, name)) {
    const { rows } = await target.query('select sync.create_key_staging($1) as t', [runId]);
    await source.copyKeys(range, target, rows[0].t);
    detail.gaps = (await target.query('select sync.detect_gaps($1) as g', [runId])).rows[0].g;
  }
  await target.query('update sync.verification set rows_compared = $2, missing = $3 where id = $1',
    [id, Math.max(sourceCount, Number(tgt.n)), Math.max(missing, 0)]);
  await target.query('update sync.verification set status = $2, finished_at = now(), detail = $3::jsonb where id = $1',
    [id, missing === 0 ? 'equal' : 'differs', JSON.stringify(detail)]);
  return detail;
}

/**
 * For an entity with a cursor: the cursor range the target is meant to hold,
 * from its oldest row (a backfill may have started anywhere) to the cursor.
 * Source rows outside it are not missing, just not synced yet (or never asked for).
 */
export async function cursorRange(target: PoolClient, def: EntityConfig, name: string): Promise<{ lo: string; hi: string; type: string } | null> {
  if (!def.cursor) return null;
  const col = quoteIdent(def.cursor.column);
  const { rows: [t] } = await target.query<{ type: string }>(
    'select format_type(a.atttypid, a.atttypmod) as type from pg_attribute a where a.attrelid = $1::regclass and a.attname = $2',
    [targetTable(def), def.cursor.column]);
  // The low end never rises: rows lost from the bottom of the range are gaps too.
  const { rows } = await target.query<{ lo: string | null; hi: string | null }>(
    `select least((select min(t.${col}) from ${targetTable(def)} t where ${targetScope(def)}),
                  (select (r.detail #>> '{verify,lo}')::${t.type} from sync.run r
                    where r.entity = $1 and r.detail #> '{verify,lo}' is not null order by r.id desc limit 1))::text as lo,
            (select cursor_value from sync.entity where name = $1) as hi`,
    [name]);
  const r = { ...rows[0], type: t.type };
  return r && r.lo !== null && r.hi !== null ? { lo: r.lo, hi: r.hi, type: r.type } : null;
}

/**
 * The count check of a full read of a file or an API: the records merged or
 * found unchanged (plus deletes deferred for references) against the target's
 * rows after the merge, in sync.run.detail.verify. A plain mirror must match
 * (quarantined records may keep an older row); a difference raises a gap
 * alert, a match resolves it.
 */
export async function recordCounts(args: { target: PoolClient; name: string; runId: number; def: EntityConfig }): Promise<void> {
  const { target, name, runId, def } = args;
  const started = Date.now();
  const { rows: [c] } = await target.query<{ source: string; target: string; quarantined: string; kept: string }>(
    `select r.inserted + r.updated + r.unchanged + coalesce(r.deferred, 0) as source, r.quarantined,
            coalesce(r.held, 0) + coalesce((r.detail ->> 'kept')::bigint, 0) as kept,
            (select count(*) from ${targetTable(def)} t where ${targetScope(def)}) as target
       from sync.run r where r.id = $1`, [runId]);
  // Rows whose delete was held or skipped (a doubtful snapshot) are still there, on purpose.
  const detail = { source: Number(c.source) + Number(c.kept), target: Number(c.target), quarantined: Number(c.quarantined) };
  await target.query(
    `update sync.run set detail = detail || jsonb_build_object('verify', $2::jsonb),
                         phases = phases || jsonb_build_object('verify', $3::int) where id = $1`,
    [runId, JSON.stringify(detail), Date.now() - started]);
  // Records a source marks deleted count as fetched but are not rows: only a plain mirror must match.
  if (def.mode !== 'mirror' || def.deletedWhen) return;
  // A quarantined record keeps the row it would have replaced: the target may hold up to that many more.
  if (detail.target < detail.source || detail.target > detail.source + detail.quarantined) {
    await target.query(
      `select sync.raise_alert('gap', 'warning', $1, $2, $3::jsonb)`,
      [name, `${name}: the source had ${detail.source} records (and ${detail.quarantined} quarantined) and the target holds ${detail.target} after a full run (run ${runId})`,
        JSON.stringify({ ...detail, run_id: runId })]);
  } else {
    await target.query(`select sync.resolve_alerts($1, array['gap'])`, [name]);
  }
}

async function hasOpenGaps(target: PoolClient, entity: string): Promise<boolean> {
  const { rows } = await target.query('select exists (select 1 from sync.gap where entity = $1 and resolved_at is null) as g', [entity]);
  return rows[0].g;
}

function keyArray(def: EntityConfig): string {
  return `array[${def.key.map((k) => `t.${quoteIdent(k)}::text`).join(', ')}]`;
}
