/**
 * Checksums of a postgres source by key-hash bucket, for the checksum diff
 * (src/engine/segments.ts) and verification.
 *
 * A segment is a bucket of a 64-bit hash of the key,
 * hashtextextended(row(<key columns>)::text, 0), masked to its low bits; a
 * finer level keeps the coarser level's low bits, so a child bucket's id
 * carries its parent's. Hash buckets rather than key ranges: no dependence on
 * collation or type order between source and target (text keys under
 * different collations, composite keys of mixed types), even bucket sizes
 * whatever the key distribution, and one scan of the source a level.
 *
 * Every value is printed as the TARGET type prints it (see ChecksumColumn),
 * under the same session settings on both sides, so equal sums mean a full
 * fetch would find nothing to change.
 */
import type { EntityConfig } from '../../config/schema.js';
import { quoteIdent } from '../../db/database.js';
import { connectionHint, type Pool } from '../../db/pool.js';
import { BUCKET_SETTINGS, bucketMask, hashKindOf, inBuckets, inKeyRange, rowHash } from '../buckets.js';
import type { BucketFilter, ChecksumColumn, ChecksumReads, ChecksumSession } from '../port.js';
import { beginSnapshot, copyInSnapshot, oneStatement, sourceSelect } from './read.js';

/** What the checksum reads need of a planned postgres run. */
export interface ChecksumPlan {
  targetColumns: string[];
  sourceColumns: string[];
  tenantSourceColumn?: string;
}

/**
 * A source column as the target prints it: as is when the source type is
 * the target's (built-in type oids are the same on every server), else
 * through text into the target type, exactly as COPY moves it (the source's
 * output, the target's input function with its typmod), or as text on both
 * sides (ChecksumColumn.asText).
 */
function sourceValue(col: ChecksumColumn, source: string, found: { oid: number; typmod: number } | undefined): string {
  const q = `q.${quoteIdent(source)}`;
  if (col.asText) return `${q}::text`;
  if (found && found.oid === col.typeOid && (col.typmod === -1 || found.typmod === col.typmod)) return q;
  return `${q}::text::${col.type}`;
}

/**
 * Reads everything the session sees into the run's staging some other way
 * (in chunks across workers, in the snapshot named); null: the session reads
 * it in one COPY.
 */
export type ReadAll = (args: { runId: number; snapshot: string; into: string; signal?: AbortSignal;
  onRows?: (rows: number, bytes: number) => void }) => Promise<number | null>;

const everything = (b: BucketFilter) => b.bits === 0;

/**
 * The checksum capability of a postgres source entity. `estimate`: the
 * planner's row estimate of the source (undefined when unknown); `readAll`:
 * how a fetch of everything may be read instead of one COPY.
 */
export function checksumReads(src: { pool: Pool; url: string }, def: EntityConfig, plan: ChecksumPlan,
  estimate: () => Promise<number | undefined>, readAll?: ReadAll): ChecksumReads {
  const sourceOf = (column: string) => plan.sourceColumns[plan.targetColumns.indexOf(column)] ?? column;
  return {
    estimatedRows: estimate,
    async open({ target, columns, range, runId }) {
      const client = await src.pool.connect().catch((err) => { throw connectionHint(err, src.url, `source "${def.source}"`); });
      let broken = false;
      try {
        await beginSnapshot(client);
        await client.query(BUCKET_SETTINGS);
        const needed = [...new Set([...columns.map((c) => sourceOf(c.column)), ...(range ? [sourceOf(range.column)] : [])])];
        const base = `${sourceSelect(def, needed, { tenantSourceColumn: plan.tenantSourceColumn })}`;
        const { fields } = await client.query(oneStatement(`select * from (\n${base}\n) q limit 0`));
        const types = new Map(fields.map((f) => [f.name, { oid: f.dataTypeID, typmod: f.dataTypeModifier }]));
        const value = new Map(columns.map((c) => [c.column, sourceValue(c, sourceOf(c.column), types.get(sourceOf(c.column)))]));
        const byColumn = new Map(columns.map((c) => [c.column, c]));
        const keyValues = def.key.map((k) => {
          const v = value.get(k);
          if (!v) throw new Error(`key column "${k}" is not one of the synced columns`);
          return { expr: v, column: byColumn.get(k)! };
        });
        const { rows: [version] } = await client.query<{ n: number }>(`select current_setting('server_version_num')::int as n`);
        const hash = hashKindOf(version.n);
        const keyHash = rowHash(hash, keyValues);
        const where = range ? `where ${inKeyRange('q', sourceOf(range.column), range)}` : '';
        const rows = `from (\n${base}\n) q ${where}`;
        const rowValues = columns.map((c) => ({ expr: value.get(c.column)!, column: c }));
        // The bucket filter goes with the scan, so rows outside it are never row-hashed.
        const inside = (within: BucketFilter | null) => (within ? `${where ? ' and' : ' where'} ${inBuckets(keyHash, within)}` : '');
        const hashed = (within: BucketFilter | null) => `select ${keyHash} as _sl_h, ${rowHash(hash, rowValues)} as _sl_r${
          keyValues.map((v, i) => `, (${v.expr})::text as _sl_k${i}`).join('')} ${rows}${inside(within)}`;
        const copy = (select: string, into: string, cols: string[], opts?: Parameters<ChecksumSession['copyRows']>[2]) =>
          copyInSnapshot({ client, entity: def, select, target, into, columns: cols, signal: opts?.signal, onRows: opts?.onRows })
            .catch((err) => { broken = true; throw err; });
        const session: ChecksumSession = {
          hash,
          copyBuckets: (bits, within, into) => copy(
            // offset 0 keeps the hashing in a subquery whose scan parallel workers run.
            `select x._sl_h & ${bucketMask(bits)} as bucket, count(*) as n, sum(x._sl_r) as s from (${hashed(within)} offset 0) x
              group by 1`, into, ['bucket', 'n', 's']),
          async copyRows(within, into, opts) {
            // Everything (most rows differ): in chunks across workers, all in this session's snapshot.
            if (readAll && runId !== undefined && !range && everything(within)) {
              const { rows: [x] } = await client.query<{ name: string }>('select pg_export_snapshot() as name');
              const n = await readAll({ runId, snapshot: x.name, into, signal: opts?.signal, onRows: opts?.onRows });
              if (n !== null) return n;
            }
            return copy(
              `select ${plan.sourceColumns.map((c) => `q.${quoteIdent(c)}`).join(', ')} ${rows}${inside(within)}`,
              into, plan.targetColumns, opts);
          },
          copyRowHashes: (within, into) => copy(
            `select ${keyValues.map((_, i) => `x._sl_k${i}`).join(', ')}, x._sl_h, x._sl_r from (${hashed(within)}) x`,
            into, [...def.key, '_sl_h', '_sl_r']),
          async close() {
            // Not commit: the snapshot was read-only; a rollback undoes any session setting a query changed.
            if (!broken) await client.query('rollback').catch(() => { broken = true; });
            client.release(broken ? true : undefined);
          },
        };
        return session;
      } catch (err) {
        await client.query('rollback').catch(() => {});
        client.release(true);
        throw err;
      }
    },
  };
}
