/**
 * The checksum-segment diff, engine side: finds the key-hash buckets in
 * which a source (through its ChecksumSession) and the target differ,
 * refining level by level, with Postgres doing the set work.
 *
 * Segments are buckets of a 64-bit hash of the key,
 * hashtextextended(row(<key columns>)::text, 0), masked to its low bits (see
 * src/sources/postgres/checksum.ts): no collation or type-order dependence
 * between the two sides, even segment sizes whatever the keys, one scan a
 * level. A bucket's checksum is its row count and the sum (exact, numeric) of
 * its rows' hashes, hashtextextended(row(<synced columns>)::text, 0), each
 * value printed as the target type prints it.
 *
 * Used by the sync's checksum path (diff-run.ts) and by verification.
 */
import pg from 'pg';
import type { EntityConfig } from '../config/schema.js';
import { quoteIdent } from '../db/database.js';
import type { Pool, PoolClient } from '../db/pool.js';
import type { BucketFilter, ChecksumColumn, ChecksumSession, HashKind, KeyRange } from '../sources/port.js';
import { BUCKET_SETTINGS, bucketMask, inBuckets, inKeyRange, rowHash } from '../sources/buckets.js';

export type { BucketFilter, ChecksumColumn, ChecksumSession } from '../sources/port.js';

// The first level aims at this many rows a bucket. A level's cost is the
// hashing of every row, hardly the number of buckets, so small buckets are
// cheap: 1% of rows changed leaves ~8% of 8-row buckets differing (against
// ~27% of 32-row ones), often few enough to fetch without a second level.
const ROWS_PER_FIRST_BUCKET = 8;
// A first level of more than 2^20 buckets makes the bucket tables as large as the data.
const MAX_FIRST_BITS = 20;
// Each level splits a differing bucket into 2^5 children.
const BITS_PER_LEVEL = 5;
// Past 2^40 buckets a bucket holds one key however large the table: refining further finds nothing.
const MAX_BITS = 40;
// Stop refining when the differing buckets hold this few rows on average: fetching them is cheaper than another scan.
const ROWS_PER_FETCHED_BUCKET = 4;
// ...or when they hold no more than this share of the rows. Another level
// scans both sides once more but hashes only their keys, and whole rows
// only within the differing buckets: on the bench table (1M rows, 1.2%
// changed) a level costs less than fetching and merging the ~10% of rows
// that the first level's buckets hold (measured: 3.2 s to fetch and merge
// 97k rows); a fiftieth of the rows is about where the two meet.
const FETCHED_SHARE = 0.02;

/** The first level's bits for about `rows` rows: ceil(log2(rows / 8)) in [0, 20]. */
export function firstLevelBits(rows: number | undefined): number {
  if (!rows || rows <= ROWS_PER_FIRST_BUCKET) return 0;
  return Math.min(MAX_FIRST_BITS, Math.max(0, Math.ceil(Math.log2(rows / ROWS_PER_FIRST_BUCKET))));
}

/**
 * The synced target columns as the checksum prints them (in the order
 * given): their types, and whether they compare as text on both sides (a
 * type outside pg_catalog, or a length-limited char/bit type or array of one).
 */
export async function checksumColumns(target: PoolClient, def: EntityConfig, columns: string[]): Promise<ChecksumColumn[]> {
  const { rows } = await target.query<{ column: string; type: string; oid: number; typmod: number; as_text: boolean }>(
    `select a.attname as column, format_type(a.atttypid, a.atttypmod) as type, a.atttypid::int as oid, a.atttypmod as typmod,
            (ty.typnamespace <> 'pg_catalog'::regnamespace
              or (a.atttypmod <> -1 and coalesce(el.typcategory, ty.typcategory) in ('S', 'V'))) as as_text
       from pg_attribute a
       join pg_type ty on ty.oid = a.atttypid
       left join pg_type el on el.oid = ty.typelem and ty.typcategory = 'A'
      where a.attrelid = $1::regclass and a.attname = any($2::text[]) and a.attnum > 0 and not a.attisdropped`,
    [targetTable(def), columns]);
  const byName = new Map(rows.map((r) => [r.column, r]));
  return columns.map((c) => {
    const r = byName.get(c);
    if (!r) throw new Error(`column "${c}" is not a column of the target table ${targetTable(def)}`);
    return { column: c, type: r.type, typeOid: r.oid, typmod: r.typmod, asText: r.as_text };
  });
}

/** The key hash and row hash of a target row (alias `t`), of the kind the source hashes. */
export function targetHashes(def: EntityConfig, columns: ChecksumColumn[], hash: HashKind, alias = 't'): { key: string; row: string; keyText: string[] } {
  const value = (c: ChecksumColumn) => ({ expr: `${alias}.${quoteIdent(c.column)}${c.asText ? '::text' : ''}`, column: c });
  const byName = new Map(columns.map((c) => [c.column, c]));
  const keys = def.key.map((k) => {
    const c = byName.get(k);
    if (!c) throw new Error(`key column "${k}" is not one of the synced columns`);
    return value(c);
  });
  return { key: rowHash(hash, keys), row: rowHash(hash, columns.map(value)), keyText: keys.map((k) => `(${k.expr})::text`) };
}

/** The rows an entity owns in its target (alias `t`): its tenant's, not soft-deleted, within `range` when given. */
export function targetScope(def: EntityConfig, range?: KeyRange | null, alias = 't'): string {
  const parts = ['true'];
  if (def.tenant) parts.push(`${alias}.${quoteIdent(def.tenant.column)} = ${pg.escapeLiteral(def.tenant.value)}`);
  if (def.mode === 'soft-delete' && def.softDelete) parts.push(`${alias}.${quoteIdent(def.softDelete.column)} is null`);
  if (range) {
    parts.push(inKeyRange(alias, range.column, range));
  }
  return parts.join(' and ');
}

export function targetTable(def: EntityConfig): string {
  const t = def.target as { schema: string; table: string };
  return `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`;
}

/**
 * The tables (in sync_staging) a diff named `prefix` uses: source and target
 * bucket sums, differing buckets. Name a diff `run_<id>` after a running run:
 * sync.cleanup keeps the run_<id>_<name> tables of running runs and drops
 * other tables in sync_staging.
 */
export function segmentTables(prefix: string): { source: string; target: string; differing: string } {
  const t = (s: string) => `sync_staging.${quoteIdent(`${prefix}_${s}`)}`;
  return { source: t('srcsums'), target: t('tgtsums'), differing: t('differing') };
}

/** Drops the tables of the diff named `prefix` (also the differing-buckets table a SegmentDiff returned). */
export async function dropSegmentTables(target: PoolClient | Pool, prefix: string): Promise<void> {
  const t = segmentTables(prefix);
  await target.query(`drop table if exists ${t.source}, ${t.target}, ${t.differing}`);
}

export interface SegmentLevel {
  bits: number;
  /** Buckets holding rows on either side. */
  segments: number;
  differing: number;
}

/** Where source and target differ. */
export interface SegmentDiff {
  levels: SegmentLevel[];
  /**
   * The differing buckets of the last level (empty: source and target are
   * equal within the scope), also held in `table`.
   */
  differing: BucketFilter;
  /** sync_staging table of the last level's differing buckets: (bucket int8, src_n int8, tgt_n int8). */
  table: string;
  /** Rows in the scope on each side (counted at the first level). */
  sourceRows: number;
  targetRows: number;
  /** Rows on each side in the last level's differing buckets. */
  differingRows: { source: number; target: number };
  /** Set when the first level already showed more than `maxShare` of the rows differing: `differing` is then that level's. */
  tooMany?: boolean;
  /**
   * With `maxOf`: the largest value of that target column among the rows of
   * the buckets found equal (as text; null when none), which equal the
   * source's rows there: what a cursor needs of the rows not fetched.
   */
  equalMax?: string | null;
}

/**
 * Compares the source (an open ChecksumSession) with the entity's target
 * rows (its tenant's; within `range` of the cursor when given), level by
 * level: the first at firstLevelBits(estimatedRows) bits, each next one 5
 * bits finer and only within the buckets that differed, until the differing
 * buckets hold 4 rows or fewer on average or a fiftieth of the rows or fewer
 * (by the larger side), or 40 bits.
 *
 * `prefix` names its tables in sync_staging (e.g. `run_42`); drop them with
 * dropSegmentTables when done. `pool`, when given, computes the target's
 * sums on a second connection while the source's stream in. `maxShare`
 * stops after the first level when more than that share of the rows
 * (0 to 1) is in differing buckets (`tooMany`).
 */
export async function diffSegments(args: {
  target: PoolClient;
  session: ChecksumSession;
  def: EntityConfig;
  columns: ChecksumColumn[];
  prefix: string;
  estimatedRows?: number;
  range?: KeyRange | null;
  pool?: Pool;
  maxShare?: number;
  /** A synced target column whose largest value among the rows of equal buckets the diff returns (equalMax). */
  maxOf?: string;
  /** `target` is inside the caller's transaction (a verification): the settings are set there, no transaction of its own. */
  inTransaction?: boolean;
}): Promise<SegmentDiff> {
  const { target, session, def, columns, prefix } = args;
  const tables = segmentTables(prefix);
  const hashes = targetHashes(def, columns, session.hash);
  const scope = targetScope(def, args.range);
  await dropSegmentTables(target, prefix);
  await target.query(`create unlogged table ${tables.source} (bucket int8, n int8, s numeric)`);
  await target.query(`create unlogged table ${tables.differing} (bucket int8 primary key, src_n int8, tgt_n int8)`);
  const levels: SegmentLevel[] = [];
  let bits = firstLevelBits(args.estimatedRows);
  let within: BucketFilter | null = null;
  let totals = { source: 0, target: 0 };
  const maxOf = args.maxOf ? columns.find((c) => c.column === args.maxOf) : undefined;
  if (args.maxOf && !maxOf) throw new Error(`maxOf: "${args.maxOf}" is not one of the synced columns`);
  const equalMaxes: (string | null)[] = [];
  for (;;) {
    await target.query(`truncate ${tables.source}`);
    await target.query(`drop table if exists ${tables.target}`);
    // A separate CREATE TABLE AS (not a CTE of the comparison) may run in parallel.
    const targetSums = `create unlogged table ${tables.target} as
      select x.h & ${bucketMask(bits)} as bucket, count(*) as n, sum(x.r) as s${maxOf ? ', max(x.m) as m' : ''}
        from (select ${hashes.key} as h, ${hashes.row} as r${maxOf ? `, t.${quoteIdent(maxOf.column)} as m` : ''}
                from ${targetTable(def)} t where ${scope}${within ? ` and ${inBuckets(hashes.key, within)}` : ''} offset 0) x
       group by 1`;
    // Both settle before an error is thrown, so no statement outlives the diff's tables.
    const sides = await Promise.allSettled([
      session.copyBuckets(bits, within, tables.source),
      args.pool ? withBucketSettings(args.pool, targetSums) : null,
    ]);
    for (const s of sides) if (s.status === 'rejected') throw s.reason;
    if (!args.pool && args.inTransaction) await target.query(`${BUCKET_SETTINGS}; ${targetSums}`);
    else if (!args.pool) await withBucketSettings(target, targetSums);
    await target.query(`truncate ${tables.differing}`);
    const { rows: [c] } = await target.query<Record<string, string>>(
      `with c as (
         select coalesce(s.bucket, t.bucket) as bucket, coalesce(s.n, 0) as src_n, coalesce(t.n, 0) as tgt_n,
                (s.n is not distinct from t.n and s.s is not distinct from t.s) as same
           from ${tables.source} s full join ${tables.target} t on t.bucket = s.bucket),
       d as (insert into ${tables.differing} select bucket, src_n, tgt_n from c where not same returning *)
       select count(*) as segments, coalesce(sum(src_n), 0) as src_rows, coalesce(sum(tgt_n), 0) as tgt_rows,
              (select count(*) from d) as differing, (select coalesce(sum(greatest(src_n, tgt_n)), 0) from d) as diff_rows,
              (select coalesce(sum(src_n), 0) from d) as diff_src, (select coalesce(sum(tgt_n), 0) from d) as diff_tgt
         from c`);
    const differing = Number(c.differing);
    if (maxOf) {
      const { rows: [m] } = await target.query<{ m: string | null }>(
        `select max(t.m)::text as m from ${tables.target} t where not exists (select 1 from ${tables.differing} d where d.bucket = t.bucket)`);
      equalMaxes.push(m.m);
    }
    levels.push({ bits, segments: Number(c.segments), differing });
    if (!within) totals = { source: Number(c.src_rows), target: Number(c.tgt_rows) };
    const result = async (tooMany?: boolean): Promise<SegmentDiff> => {
      const { rows: [b] } = await target.query<{ buckets: string[] }>(
        `select coalesce(array_agg(bucket order by bucket)::text[], '{}') as buckets from ${tables.differing}`);
      let equalMax: string | null | undefined;
      if (maxOf) {
        const { rows: [m] } = await target.query<{ m: string | null }>(
          `select max(v::${maxOf.type})::text as m from unnest($1::text[]) v`, [equalMaxes]);
        equalMax = m.m;
      }
      return {
        ...(maxOf ? { equalMax } : {}),
        levels, differing: { bits, buckets: b.buckets }, table: tables.differing,
        sourceRows: totals.source, targetRows: totals.target,
        differingRows: { source: Number(c.diff_src), target: Number(c.diff_tgt) }, ...(tooMany ? { tooMany } : {}),
      };
    };
    if (!within && args.maxShare !== undefined && Number(c.diff_rows) > args.maxShare * Math.max(totals.source, totals.target, 1)) {
      return result(true);
    }
    const few = Number(c.diff_rows) <= Math.max(ROWS_PER_FETCHED_BUCKET * differing, FETCHED_SHARE * Math.max(totals.source, totals.target));
    if (differing === 0 || few || bits >= MAX_BITS) return result();
    within = (await result()).differing;
    bits = Math.min(bits + BITS_PER_LEVEL, MAX_BITS);
  }
}

/** A bucket group-by in its own transaction, with the planner settings it needs (BUCKET_SETTINGS). */
async function withBucketSettings(db: Pool | PoolClient, sql: string): Promise<void> {
  const client = 'release' in db ? db : await (db as Pool).connect();
  try {
    await client.query('begin');
    await client.query(BUCKET_SETTINGS);
    await client.query(sql);
    await client.query('commit');
  } catch (err) {
    await client.query('rollback').catch(() => {});
    throw err;
  } finally {
    if (client !== db) (client as PoolClient).release();
  }
}
