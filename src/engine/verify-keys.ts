/**
 * The keys that differ between an entity's source and target, found at
 * checksum cost: the key-hash bucket checksums of segments.ts narrow the
 * comparison to a few differing buckets; the key and row hash of the
 * source's rows in those buckets are copied to the target (same snapshot),
 * and Postgres lists the differences there in one statement, as a diff
 * reads: `-` in the source and missing from the target, `+` in the target
 * and not in the source, `~` on both sides with different values.
 *
 * Buckets of a hash of the key, not key ranges: source and target need not
 * agree on collation or type order, and a bucket holds about as many rows
 * wherever the keys lie.
 */
import { quoteIdent } from '../db/database.js';
import type { PoolClient } from '../db/pool.js';
import type { EntityConfig } from '../config/schema.js';
import type { ChecksumReads, KeyRange } from '../sources/port.js';
import { inBuckets, TEXT_SETTINGS } from '../sources/buckets.js';
import { checksumColumns, diffSegments, firstLevelBits, dropSegmentTables, targetHashes, targetScope, targetTable, type SegmentLevel } from './segments.js';

/** What a comparison covered and found (the keys are in sync.verification_key). */
export interface KeyComparison {
  rowsCompared: number;
  segments: number;
  levels: SegmentLevel[];
  missing: number;
  extra: number;
  changed: number;
  /** Why the changed columns of `~` keys are not listed, when they are not. */
  columnsNote?: string;
}

/**
 * Closes verification `id` with what a comparison found: rows and segments
 * compared, equal or differs, the levels and the range (and `detail`).
 * Returns whether keys differ.
 */
export async function closeComparison(target: PoolClient, id: number, c: KeyComparison, range: KeyRange | null,
  detail: Record<string, unknown> = {}): Promise<boolean> {
  const differs = c.missing + c.extra + c.changed > 0;
  await target.query('update sync.verification set rows_compared = $2, segments = $3 where id = $1', [id, c.rowsCompared, c.segments]);
  await target.query('select sync.finish_verification($1, $2, $3::jsonb)', [id, differs ? 'differs' : 'equal',
    JSON.stringify({ levels: c.levels, ...(range ? { lo: range.lo, hi: range.hi } : {}), ...detail })]);
  return differs;
}

// When more than this share of the rows is in differing buckets after the
// first level, refining further costs more scans than listing every key.
const MOSTLY_DIFFERENT = 0.5;
const MIN_BITS_TO_JUDGE = 5;
// Bits 0: the one bucket holding every row.
const EVERY_BUCKET = { bits: 0, buckets: ['0'] };

// The output settings a source snapshot reads under (src/sources/postgres/read.ts):
// the target's hashes must print timestamps, floats and bytes the same way.
const TARGET_SESSION = TEXT_SETTINGS;

/** Modes whose target keeps rows the source dropped: a `+` key is not a difference there. */
export function keepsExtraRows(def: EntityConfig): boolean {
  return def.mode === 'upsert' || def.mode === 'append';
}

/**
 * Compares the entity's source and target (its tenant's rows; within
 * `range` of the cursor when given) and writes the differing keys into
 * sync.verification_key for verification `id`. `target` must hold no open
 * transaction: the comparison runs in its own, with the source's output
 * settings; its tables (sync_staging.<prefix>_*) are created and dropped
 * inside it.
 */
export async function compareKeys(args: {
  target: PoolClient; def: EntityConfig; checksums: ChecksumReads; targetColumns: string[];
  range: KeyRange | null; id: number; prefix: string;
}): Promise<KeyComparison> {
  const { target, def, checksums, range, id, prefix } = args;
  const columns = await checksumColumns(target, def, args.targetColumns);
  const srcRows = `sync_staging.${quoteIdent(`${prefix}_src_rows`)}`;
  const srcFull = `sync_staging.${quoteIdent(`${prefix}_src_full`)}`;
  await target.query('begin');
  await target.query(TARGET_SESSION);
  const session = await checksums.open({ target, columns, range }).catch(async (err) => {
    await target.query('rollback').catch(() => {});
    throw err;
  });
  try {
    await target.query('delete from sync.verification_key where verification_id = $1', [id]);
    const estimatedRows = await checksums.estimatedRows();
    // A first level of a few buckets (no estimate, a small table) says nothing about the share that differs.
    const maxShare = firstLevelBits(estimatedRows) >= MIN_BITS_TO_JUDGE ? MOSTLY_DIFFERENT : undefined;
    const diff = await diffSegments({ target, session, def, columns, prefix, estimatedRows, range, maxShare, inTransaction: true });
    // Most rows differ (an emptied target, say): every key is listed, so no bucket list is worth sending.
    const within = diff.tooMany ? EVERY_BUCKET : diff.differing;
    const found: KeyComparison = {
      rowsCompared: Math.max(diff.sourceRows, diff.targetRows), segments: diff.levels.reduce((n, l) => n + l.segments, 0),
      levels: diff.levels, missing: 0, extra: 0, changed: 0,
    };
    if (diff.differing.buckets.length) {
      await target.query(`create unlogged table ${srcRows} (${def.key.map((k) => `${quoteIdent(k)} text`).join(', ')}, _sl_h int8, _sl_r int8)`);
      await session.copyRowHashes(within, srcRows);
      const counts = await insertKeys(target, def, targetHashes(def, columns, session.hash), within, srcRows, range, id);
      Object.assign(found, counts);
      if (counts.changed) found.columnsNote = await changedColumns(target, def, args.targetColumns, () => session.copyRows(within, srcFull), srcFull, id);
    }
    // Dropped before the commit: no other session ever sees these tables (sync.cleanup cannot take them mid-way).
    await dropSegmentTables(target, prefix);
    await target.query(`drop table if exists ${srcRows}, ${srcFull}`);
    await target.query('commit');
    return found;
  } catch (err) {
    await target.query('rollback').catch(() => {});
    throw err;
  } finally {
    await session.close();
  }
}

/** The differing keys of the differing buckets, by a full join of the source's key and row hashes with the target's. */
async function insertKeys(
  target: PoolClient, def: EntityConfig, h: ReturnType<typeof targetHashes>, differing: { bits: number; buckets: string[] },
  srcRows: string, range: KeyRange | null, id: number,
): Promise<{ missing: number; extra: number; changed: number }> {
  const { rows } = await target.query<{ kind: string; n: string }>(
    `with s as (select array[${def.key.map((k) => `s.${quoteIdent(k)}`).join(', ')}] as key, s._sl_r as r from ${srcRows} s),
          t as (select array[${h.keyText.join(', ')}] as key, ${h.row} as r
                  from ${targetTable(def)} t where ${targetScope(def, range)} and ${inBuckets(h.key, differing)}),
          d as (select coalesce(s.key, t.key) as key, case when t.key is null then '-' when s.key is null then '+' else '~' end as kind
                  from s full join t on t.key = s.key
                 where (s.key is null or t.key is null or s.r <> t.r) and not (s.key is null and $2)),
          k as (insert into sync.verification_key (verification_id, key, kind) select $1, key, kind from d returning kind)
     select kind, count(*) as n from k group by kind`, [id, keepsExtraRows(def)]);
  const n = (kind: string) => Number(rows.find((r) => r.kind === kind)?.n ?? 0);
  return { missing: n('-'), extra: n('+'), changed: n('~') };
}

/**
 * The columns that differ for each `~` key: the source's rows of the
 * differing buckets (a few rows each) typed as the target's columns, compared
 * column by column as text. Returns why not, when the source's values do not
 * fit the target's types (the keys stay listed, without columns).
 */
async function changedColumns(
  target: PoolClient, def: EntityConfig, synced: string[], copy: () => Promise<number>, srcFull: string, id: number,
): Promise<string | undefined> {
  const cols = synced.map(quoteIdent);
  await target.query('savepoint changed_columns');
  try {
    await target.query(`create unlogged table ${srcFull} as select ${cols.map((c) => `t.${c}`).join(', ')} from ${targetTable(def)} t with no data`);
    await copy();
    const differs = synced.map((c, i) => `case when s.${cols[i]}::text is distinct from t.${cols[i]}::text then ${quoteLiteral(c)} end`);
    // Source and target rows meet on the typed key (the target's key index), then the listed keys by their text.
    await target.query(
      `update sync.verification_key k set columns = array_remove(array[${differs.join(', ')}], null)
         from ${srcFull} s join ${targetTable(def)} t on ${def.key.map((c) => `t.${quoteIdent(c)} = s.${quoteIdent(c)}`).join(' and ')}
        where k.verification_id = $1 and k.kind = '~' and ${targetScope(def)}
          and array[${def.key.map((c) => `s.${quoteIdent(c)}::text`).join(', ')}] = k.key`, [id]);
    await target.query('release savepoint changed_columns');
    return undefined;
  } catch (err) {
    await target.query('rollback to savepoint changed_columns');
    return `the changed columns are not listed: ${(err as Error).message}`;
  }
}

function quoteLiteral(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}
