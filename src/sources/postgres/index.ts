/**
 * The postgres source kind: a table or a query on another PostgreSQL,
 * streamed with COPY in a read-only repeatable-read transaction, typed all
 * the way. It can COPY straight into a table (an empty target's direct load)
 * read key ranges (gap detection after incremental runs) and checksum its
 * records by key-hash bucket (the checksum diff; see checksum.ts). A full
 * read of a big table may be split into chunks that workers read in
 * parallel in one snapshot (chunks.ts).
 */
import pg from 'pg';
import type { EntityConfig, PostgresSourceConfig } from '../../config/schema.js';
import { quoteIdent } from '../../db/database.js';
import { connectionHint, describeUrl, type Pool } from '../../db/pool.js';
import type { KeyRange, KeyRangeReads, PlanInput, PlannedRun, SourceKind, StageRun } from '../port.js';
import { fetchChunked, heldSnapshot, readChunksIn, type ChunkSpec } from './chunks.js';
import { inKeyRange } from '../buckets.js';
import { stagingTable } from '../staging.js';
import { checksumReads, type ReadAll } from './checksum.js';
import { logCapturePlan, logPending } from './log/plan.js';
import { copyFromSource, querySource, sourceColumns, sourceConnection, sourceKeyIsUnique, sourceSelect, sourceUrl,
  type CursorFilter } from './read.js';

/** Which target column is fed by which source column, and what the source guarantees. */
interface Plan {
  targetColumns: string[];
  sourceColumns: string[];
  cursor?: CursorFilter & { sourceColumn: string };
  tenantSourceColumn?: string;
  /** The source table has a unique index within the key: it cannot repeat a key. */
  sourceKeyUnique: boolean;
}

/** The source column feeding a target column (its own name when the mapping does not say). */
const sourceOf = (plan: Pick<Plan, 'targetColumns' | 'sourceColumns'>, column: string) =>
  plan.sourceColumns[plan.targetColumns.indexOf(column)] ?? column;

export const postgresSource: SourceKind = {
  columns(env, _name, def) {
    const { pool, url } = env.pgSource(def.source);
    return sourceColumns(pool, url, def);
  },

  /** Reachable in a read-only session with the same settings as a sync's source connections. */
  async check(env, source) {
    const url = sourceUrl(env.config.sources[source] as PostgresSourceConfig, env.syncUrl);
    const c = new pg.Client({ ...sourceConnection(url), connectionTimeoutMillis: 10_000 });
    try {
      await c.connect();
      await c.query('begin transaction read only; select 1; rollback');
      return `${describeUrl(url)} reachable`;
    } catch (err) {
      throw connectionHint(err, url, `source "${source}"`);
    } finally {
      await c.end().catch(() => {});
    }
  },

  readsKeys: () => true,

  pending: (env, name, def, opts) => (def.capture === 'log' ? logPending(env, name, def, opts) : Promise.resolve(true)),

  async plan({ env, name, def, cursor, opts, targetColumns }) {
    const full = Boolean(opts.full) || Boolean(opts.keys);
    const window = opts.window;
    const rows = await targetColumns();
    const types = new Map(rows.map((r) => [r.attname, r.type]));
    let mapping: [string, string][];
    if (Array.isArray(def.columns)) mapping = def.columns.map((c) => [c, c]);
    else if (def.columns) mapping = Object.entries(def.columns);
    else {
      const { pool, url } = env.pgSource(def.source);
      const available = new Set(await sourceColumns(pool, url, def, name));
      mapping = rows.map((r) => r.attname).filter((c) => available.has(c)).map((c) => [c, c]);
    }
    const columns = { targetColumns: mapping.map((m) => m[0]), sourceColumns: mapping.map((m) => m[1]) };
    const { pool: srcPool } = env.pgSource(def.source);
    const plan: Plan = {
      ...columns,
      sourceKeyUnique: await sourceKeyIsUnique(srcPool, def, def.key.map((k) => sourceOf(columns, k))),
    };
    if (def.tenant) plan.tenantSourceColumn = sourceOf(plan, def.tenant.column);
    if (window && !def.cursor) throw new Error(`entity "${name}" has no cursor column: a backfill needs one to split the range by`);
    if (def.cursor && (!full || window)) {
      const type = types.get(def.cursor.column);
      if (!type) throw new Error(`entity "${name}": cursor column "${def.cursor.column}" is not a column of the target table`);
      plan.cursor = { column: def.cursor.column, sourceColumn: sourceOf(plan, def.cursor.column), value: cursor, overlap: def.cursor.overlap, type, window };
    }
    if (def.cursor && !plan.targetColumns.includes(def.cursor.column)) {
      throw new Error(`entity "${name}": cursor column "${def.cursor.column}" must be one of the synced columns`);
    }
    const split = chunked(def, opts, plan);
    const chunking = split && { ...split, spec: chunkSpec(plan), estimate: () => estimatedRows(srcPool, def) };
    // In `snapshot` (exported by another session) when given; in chunks when the entity asks for them.
    const readWhole = async (run: StageRun, into: string, snapshot?: string) => (chunking ? await fetchChunked(run, {
      ...chunking, into, ...(snapshot ? { snapshots: heldSnapshot(snapshot) } : {}),
    }) : null) ?? fetchInto(run, plan, into, snapshot);
    const copyInto = (run: StageRun, into: string) => readWhole(run, into);
    const readAll: ReadAll | undefined = chunking
      ? ({ runId, snapshot, into, signal, onRows }) => readChunksIn({ ...chunking, env, def, name, runId, snapshot, into, signal, onRows })
      : undefined;
    // Log capture reads a snapshot or the log; chosen keys (a retry, a gap) are read from the table.
    const log = def.capture === 'log' && !opts.keys && !window ? await logCapturePlan({
      env, name, def, opts, sourceColumns: plan.sourceColumns, targetColumns: plan.targetColumns,
      keySourceColumns: def.key.map((k) => sourceOf(plan, k)), fetchAll: readWhole,
    }) : null;
    const planned: PlannedRun = {
      targetColumns: plan.targetColumns,
      sourceColumns: plan.sourceColumns,
      sourceKeyUnique: plan.sourceKeyUnique,
      countable: false,
      copyInto,
      async stage(run) {
        await copyInto(run, stagingTable(run.runId));
        return {};
      },
      keyRange: keyRangeReads(env.pgSource(def.source), def, plan),
      checksums: checksumReads(env.pgSource(def.source), def, plan, () => estimatedRows(srcPool, def), readAll),
      ...log,
    };
    return planned;
  },
};

/**
 * The entity's chunking when this run reads its whole table: a first load,
 * a full refresh, a diff that fetches everything. Not for a cursor, chosen
 * keys, a backfill window or a dry run: those read little or preview.
 */
function chunked(def: EntityConfig, opts: PlanInput['opts'], plan: Plan): { chunks: number; minRows: number } | undefined {
  const s = def.snapshot;
  if (!s || s.chunks < 2 || !('table' in def.from) || plan.cursor || opts.keys || opts.window || opts.dryRun) return undefined;
  return { chunks: s.chunks, minRows: s.minRows };
}

const chunkSpec = (p: Plan): ChunkSpec =>
  ({ sourceColumns: p.sourceColumns, targetColumns: p.targetColumns, tenantSourceColumn: p.tenantSourceColumn });

/** COPY from the source into `into`, stoppable by sync.cancel and by shutdown. Returns the rows copied. */
async function fetchInto(run: StageRun, plan: Plan, into: string, snapshot?: string): Promise<number> {
  const { env, def, name, runId, opts } = run;
  const { pool, url } = env.pgSource(def.source);
  const keys = opts.keys
    ? { sourceColumns: def.key.map((k) => sourceOf(plan, k)), values: opts.keys } : undefined;
  const select = sourceSelect(def, plan.sourceColumns, { tenantSourceColumn: plan.tenantSourceColumn, cursor: plan.cursor, keys });
  const total = plan.cursor || opts.keys ? undefined : await estimatedRows(pool, def);
  return run.fetchPhase((signal) => copyFromSource({
    pool, url, entity: def, select, target: run.target, into, columns: plan.targetColumns, signal, snapshot,
    onRows: (r, bytes) => opts.onProgress?.({ entity: name, runId, phase: 'fetch', rows: r, bytes, total }),
  }));
}

/** The planner's row estimate of a table source (for progress and ETA); undefined for a query or an unanalyzed table. */
async function estimatedRows(pool: Pool, def: EntityConfig): Promise<number | undefined> {
  if (!('table' in def.from)) return undefined;
  const t = def.from.table as { schema: string; table: string };
  const { rows } = await pool.query<{ n: number | null }>(
    `select nullif(reltuples, -1)::float8 as n from pg_class where oid = to_regclass($1)`,
    [`${quoteIdent(t.schema)}.${quoteIdent(t.table)}`]).catch(() => ({ rows: [] as { n: number | null }[] }));
  const n = rows[0]?.n;
  return n && n > 0 ? Math.round(n) : undefined;
}

/** Counting and copying the source's keys within a cursor range (in the entity's tenant). */
function keyRangeReads({ pool, url }: { pool: Pool; url: string }, def: EntityConfig, plan: Plan): KeyRangeReads {
  const keySource = def.key.map((k) => sourceOf(plan, k));
  const select = (cols: string[], range: KeyRange | null) => `select * from (${sourceSelect(def, cols, { tenantSourceColumn: plan.tenantSourceColumn })}) s
    where ${range ? inKeyRange('s', sourceOf(plan, range.column), range) : 'true'}`;
  return {
    async count(range) {
      const { rows: [src] } = await querySource<{ n: string }>(pool, `select count(*) as n from (${select(plan.sourceColumns, range)}) v`);
      return Number(src.n);
    },
    async copyKeys(range, target, into) {
      await copyFromSource({
        pool, url, entity: def, target, into, columns: def.key, signal: new AbortController().signal, onRows: () => {},
        select: range ? `select ${keySource.map((c) => `s.${quoteIdent(c)}`).join(', ')} from (${select(
          [...new Set([...keySource, sourceOf(plan, range.column)])], range)}) s` : sourceSelect(def, keySource, { tenantSourceColumn: plan.tenantSourceColumn }),
      });
    },
  };
}
