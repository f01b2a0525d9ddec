/**
 * The SQL of key-hash buckets, shared by the sources that checksum their
 * records and the engine that compares them with the target (both must
 * print exactly the same expressions).
 */
import pg from 'pg';
import { quoteIdent } from '../db/database.js';
import type { BucketFilter, ChecksumColumn, HashKind, KeyRange } from './port.js';

/** The mask keeping the low `bits` bits of a key hash, as an int8 literal. */
export function bucketMask(bits: number): string {
  if (!Number.isInteger(bits) || bits < 0 || bits > 62) throw new Error(`bucket bits must be an integer in [0, 62], not ${bits}`);
  return `${((1n << BigInt(bits)) - 1n).toString()}::int8`;
}

/** `(<hash> & mask) = any('{…}')`: rows of the chosen buckets (PostgreSQL 14+ hashes the constant array). */
export function inBuckets(hash: string, within: BucketFilter): string {
  if (!within.buckets.length) return 'false';
  for (const b of within.buckets) if (!/^-?\d{1,20}$/.test(b)) throw new Error(`a bucket id must be an integer, not ${JSON.stringify(b)}`);
  return `(${hash} & ${bucketMask(within.bits)}) = any('{${within.buckets.join(',')}}'::int8[])`;
}

/** A value to hash: its expression, typed as its target column (or as text when the column compares as text). */
export interface HashedValue {
  expr: string;
  column: Pick<ChecksumColumn, 'typeOid' | 'asText'>;
}

// Built-in types whose hash tells values apart exactly as their text does
// (sync._cmp_expr's list, less bpchar, whose hash ignores trailing blanks).
const OWN_HASH = new Set([20, 21, 23, 25, 1043, 16, 2950, 1082, 1114, 1184, 1083, 17, 18, 19, 26]);
// Text hashes by its collation: "C" hashes the bytes, whatever collation the column has.
const COLLATED = new Set([25, 1043]);
const NUMERIC = 1700;

/** The fields a value contributes to a `record` hash. */
function recordFields(v: HashedValue): string[] {
  const { typeOid, asText } = v.column;
  if (asText) return [`(${v.expr})::text collate "C"`];
  if (typeOid === NUMERIC) return [v.expr, `scale(${v.expr})`];
  if (COLLATED.has(typeOid)) return [`(${v.expr}) collate "C"`];
  if (OWN_HASH.has(typeOid)) return [v.expr];
  return [`(${v.expr})::text collate "C"`];
}

/**
 * The int8 hash of a row of values, of one kind (both sides must agree):
 * - `record`: hash_record_extended (PostgreSQL 14+), each value by its
 *   type's own hash function where equal values have one text form
 *   (integers, text, timestamps, uuid …), a numeric with its scale, anything
 *   else as text. Hashing costs about half of `text`'s (measured on the
 *   bench table): no value is printed that need not be (a timestamptz's
 *   output alone costs more than its hash). In a level the bucket
 *   group-by, not the hashing, is then the larger part.
 * - `text`: the text of the row value, hashed (older sources).
 * Either way a row hash is an int8, and a sum of them is exact as numeric.
 */
export function rowHash(kind: HashKind, values: HashedValue[]): string {
  if (kind === 'text') return `hashtextextended(row(${values.map((v) => v.expr).join(', ')})::text, 0)`;
  return `hash_record_extended(row(${values.flatMap(recordFields).join(', ')}), 0)`;
}

/** The hash kind a server can compute: `record` from PostgreSQL 14. */
export const hashKindOf = (serverVersionNum: number): HashKind => (serverVersionNum >= 140000 ? 'record' : 'text');

/**
 * Planner settings for a bucket group-by, `set local` inside its
 * transaction. The planner takes the hash of a unique key for as many groups
 * as rows and cannot see what hashing a row's text costs: by default it
 * sorts on disk in one process. With these it hashes in memory and spreads
 * the row hashing over parallel workers (measured 300k rows: 3.3 s -> 1.5 s).
 */
/**
 * How values print, `set local` in every session that reads or hashes them
 * as text: the source's COPY and checksums, and the target's bucket sums. A
 * target server whose own defaults differ (another TimeZone or DateStyle)
 * would otherwise print the same timestamptz otherwise than the source, and
 * every bucket would differ.
 */
export const TEXT_SETTINGS = `set local datestyle = 'ISO, YMD'; set local intervalstyle = 'postgres';
  set local extra_float_digits = 3; set local bytea_output = 'hex'; set local timezone = 'UTC'`;

export const BUCKET_SETTINGS = `set local work_mem = '64MB'; set local parallel_setup_cost = 10; set local parallel_tuple_cost = 0.001;
  ${TEXT_SETTINGS}`;

/**
 * `<alias>.<column>` within a cursor range, compared in the target column's
 * type: the same condition on the source (its column feeding the target's)
 * and on the target, so both sides count, hash and list the same rows.
 */
export function inKeyRange(alias: string, column: string, range: KeyRange): string {
  return `${alias}.${quoteIdent(column)} between ${pg.escapeLiteral(range.lo)}::${range.type} and ${pg.escapeLiteral(range.hi)}::${range.type}`;
}
