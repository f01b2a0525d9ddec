/**
 * The SQL of key-hash buckets, shared by the sources that checksum their
 * records and the engine that compares them with the target (both must
 * print exactly the same expressions).
 */
import type { BucketFilter } from './port.js';

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

/** The hash of a row of values: the text of the row value, hashed to int8 (a sum of them is exact as numeric). */
export const rowHash = (values: string[]) => `hashtextextended(row(${values.join(', ')})::text, 0)`;
