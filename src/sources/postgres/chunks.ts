/**
 * A full read of a big table split into block ranges ("snapshot": {"chunks":
 * N}) that the process running the run and any worker with a free slot
 * read in parallel, every one in ONE snapshot of the source, into the run's
 * one staging table; the engine merges once, after the last chunk.
 *
 * The work list is sync.run_chunk (migration 000020): a taker locks a
 * pending chunk, COPYs its blocks and marks it done in the same target
 * transaction, so a chunk lands exactly once and one whose taker dies
 * mid-COPY is pending again. The process running the run takes chunks too,
 * so a run with no worker running still completes.
 */
import { quoteIdent } from '../../db/database.js';
import { connectionHint, type Pool, type PoolClient } from '../../db/pool.js';
import type { EntityConfig } from '../../config/schema.js';
import { log } from '../../log.js';
import type { SourceEnv, StageRun } from '../port.js';
import { stagingTable } from '../staging.js';
import { beginSnapshot, copyInSnapshot, sourceSelect } from './read.js';

// How often the process running a chunked run looks at its chunks without
// being told (a lost NOTIFY, a taker that died and left its chunk pending).
const CHUNK_POLL_MS = 2000;

/** What a chunk reads and where it lands (stored in sync.chunked_run.spec for the workers). */
export interface ChunkSpec {
  sourceColumns: string[];
  targetColumns: string[];
  tenantSourceColumn?: string;
}

/** A snapshot of the source that other sessions can read in, valid until release(). */
export interface SharedSnapshot {
  name: string;
  release(): Promise<void>;
}

/**
 * Gives the snapshot the chunks read in. By default a transaction of our own
 * exports one (pg_export_snapshot) and stays open until release; log capture
 * hands in the snapshot its replication slot exported instead.
 */
export type SnapshotProvider = (pool: Pool) => Promise<SharedSnapshot>;

/** A snapshot another session exported and keeps open (the diff's, a slot's): nothing to release here. */
export const heldSnapshot = (name: string): SnapshotProvider => async () => ({ name, release: async () => {} });

export const exportSnapshot: SnapshotProvider = async (pool) => {
  const client = await pool.connect();
  try {
    await client.query('begin transaction isolation level repeatable read, read only');
    const { rows } = await client.query<{ name: string }>('select pg_export_snapshot() as name');
    return {
      name: rows[0].name,
      release: async () => {
        await client.query('rollback').catch(() => {});
        client.release();
      },
    };
  } catch (err) {
    client.release(true);
    throw err;
  }
};

/** The table's size in blocks, seen from a session in the shared snapshot. */
async function tableBlocks(pool: Pool, def: EntityConfig, snapshot: string): Promise<number> {
  const t = (def.from as { table: { schema: string; table: string } }).table;
  const client = await pool.connect();
  try {
    await beginSnapshot(client, snapshot);
    const { rows } = await client.query<{ blocks: string }>(
      `select pg_relation_size(to_regclass($1)) / current_setting('block_size')::int as blocks`,
      [`${quoteIdent(t.schema)}.${quoteIdent(t.table)}`]);
    return Number(rows[0].blocks ?? 0);
  } finally {
    await client.query('rollback').catch(() => {});
    client.release();
  }
}

interface Taker {
  env: SourceEnv;
  def: EntityConfig;
  runId: number;
  snapshot: string;
  spec: ChunkSpec;
  /** Who takes: a worker id, or "run" for the process running the run. */
  who: string;
  signal?: AbortSignal;
  onRows?: (rows: number) => void;
}

/**
 * Takes the next pending chunk of the run and reads it into the run's
 * staging; false when there is none to take. A failure gives the chunk back
 * (pending again) before it is thrown.
 */
export async function takeChunk(t: Taker): Promise<boolean> {
  const target = await t.env.pool.connect();
  let taken = false;
  try {
    await target.query('begin');
    const { rows: [chunk] } = await target.query<{ chunk: number; lo: string; hi: string | null }>(
      'select * from sync.take_chunk($1)', [t.runId]);
    taken = chunk !== undefined;
    if (taken) await copyChunk(t, target, chunk);
    await target.query('commit');
    target.release();
    return taken;
  } catch (err) {
    await giveBack(t.env.pool, target, taken ? t.runId : null);
    throw err;
  }
}

/** COPYs the chunk's blocks into the run's staging and marks it done, in the target's open transaction. */
async function copyChunk(t: Taker, target: PoolClient, c: { chunk: number; lo: string; hi: string | null }): Promise<void> {
  const { pool, url } = t.env.pgSource(t.def.source);
  const started = new Date();
  const source = await pool.connect().catch((err) => { throw connectionHint(err, url, `source "${t.def.source}"`); });
  try {
    await beginSnapshot(source, t.snapshot);
    const select = sourceSelect(t.def, t.spec.sourceColumns, {
      tenantSourceColumn: t.spec.tenantSourceColumn, blocks: { lo: Number(c.lo), hi: c.hi === null ? null : Number(c.hi) } });
    const copied = await copyInSnapshot({
      client: source, entity: t.def, select, target, into: stagingTable(t.runId), columns: t.spec.targetColumns,
      signal: t.signal, onRows: t.onRows && ((r) => t.onRows!(r)),
    });
    await target.query('select sync.finish_chunk($1, $2, $3, $4, $5)', [t.runId, c.chunk, copied, t.who, started]);
    await source.query('rollback');
    source.release();
  } catch (err) {
    source.release(true);
    throw err;
  }
}

/**
 * After a failed read: rolls back on the still usable connection (an aborted
 * COPY FROM ends with CopyFail), so the chunk is pending again at once, not
 * whenever the server notices a dropped connection; then, if the run is
 * over, cancels its pending chunks, which nobody would read.
 */
async function giveBack(pool: Pool, target: PoolClient, runId: number | null): Promise<void> {
  const rolledBack = await target.query('rollback').then(() => true, () => false);
  target.release(rolledBack ? undefined : true);
  if (rolledBack && runId !== null) {
    await pool.query('select sync.close_chunks_if_over($1)', [runId])
      .catch((err) => log.warn({ runId, err: (err as Error).message }, 'could not close the chunks of an ended run'));
  }
}

/**
 * A worker's part (the sync_chunk task): takes chunks of the run until none
 * is pending. Never fails the job: whatever it leaves, the process running
 * the run takes itself. Returns the chunks it read.
 */
export async function takeRunChunks(env: SourceEnv, runId: number, who: string, signal?: AbortSignal): Promise<number> {
  const { rows } = await env.pool.query<{ entity: string; snapshot: string; spec: ChunkSpec }>(
    `select c.entity, c.snapshot, c.spec from sync.chunked_run c join sync.run r on r.id = c.run_id
      where c.run_id = $1 and r.status = 'running'
        and exists (select 1 from sync.run_chunk k where k.run_id = c.run_id and k.status = 'pending')`, [runId]);
  if (!rows.length) return 0;
  let taken = 0;
  try {
    const { def } = await env.loadEntity(rows[0].entity);
    while (!signal?.aborted && await takeChunk({ env, def, runId, snapshot: rows[0].snapshot, spec: rows[0].spec, who, signal })) taken++;
  } catch (err) {
    // Typically the run ended (its snapshot is gone): nothing is lost.
    log.info({ runId, err: (err as Error).message }, 'stopped taking chunks');
  }
  return taken;
}

interface ChunkCounts { total: number; done: number; cancelled: number; rows: number }

async function chunkCounts(pool: Pool, runId: number): Promise<ChunkCounts> {
  const { rows: [c] } = await pool.query(
    `select count(*)::int as total, count(*) filter (where status = 'done')::int as done,
            count(*) filter (where status = 'cancelled')::int as cancelled, coalesce(sum(rows), 0)::float8 as rows
       from sync.run_chunk where run_id = $1`, [runId]);
  return c;
}

/** Resolves on the next NOTIFY sync_chunk for the run, or after CHUNK_POLL_MS; remembers one that came in between. */
function chunkEvents(listener: PoolClient, runId: number) {
  let told = false;
  let wake = () => {};
  const onNotice = (m: { channel: string; payload?: string }) => {
    if (m.channel === 'sync_chunk' && m.payload === String(runId)) { told = true; wake(); }
  };
  listener.on('notification', onNotice);
  return {
    next: (signal: AbortSignal) => new Promise<void>((resolve) => {
      const done = () => { clearTimeout(timer); signal.removeEventListener('abort', done); wake = () => {}; told = false; resolve(); };
      const timer = setTimeout(done, CHUNK_POLL_MS);
      signal.addEventListener('abort', done, { once: true });
      wake = done;
      if (told || signal.aborted) done();
    }),
    stop: () => listener.off('notification', onNotice),
  };
}

/**
 * The process running the run: takes chunks itself until none is pending,
 * then waits (NOTIFY, with a poll) for the others' to be done, taking any
 * that come back pending. Returns the rows all chunks read.
 */
async function driveChunks(t: Taker, signal: AbortSignal, report: (rows: number, c: ChunkCounts) => void): Promise<number> {
  const listener = await t.env.pool.connect();
  const events = chunkEvents(listener, t.runId);
  let counts = await chunkCounts(t.env.pool, t.runId);
  try {
    await listener.query('listen sync_chunk');
    for (;;) {
      while (await takeChunk({ ...t, signal, onRows: (r) => report(counts.rows + r, counts) })) {
        counts = await chunkCounts(t.env.pool, t.runId);
        report(counts.rows, counts);
      }
      counts = await chunkCounts(t.env.pool, t.runId);
      report(counts.rows, counts);
      if (counts.done === counts.total) return counts.rows;
      if (counts.cancelled) throw new Error(`${counts.cancelled} chunks of run ${t.runId} were cancelled (sync.close_chunks): the run cannot complete`);
      await events.next(signal);
      signal.throwIfAborted();
    }
  } finally {
    await listener.query('unlisten sync_chunk').catch(() => {});
    events.stop();
    listener.release();
  }
}

/** How an entity's full read is split ("snapshot" in its definition) and what a chunk reads. */
export interface Chunking {
  spec: ChunkSpec;
  chunks: number;
  minRows: number;
  estimate: () => Promise<number | undefined>;
}

/** A chunked read of one run, wherever it happens (a full fetch, the checksum diff's fetch of everything). */
interface ChunkedRead extends Chunking {
  env: SourceEnv;
  def: EntityConfig;
  runId: number;
  name: string;
  /** The snapshot every chunk reads in; by default one exported for the read. */
  snapshots?: SnapshotProvider;
  /** Runs the reading of the chunks (the run's fetch phase, or the caller's own). */
  phase: (fn: (signal: AbortSignal) => Promise<number>) => Promise<number>;
  report: (rows: number, chunks: { total: number; done: number }, total?: number) => void;
}

/**
 * A chunked full read into `into` (the run's staging, or an empty target
 * for a direct load, filled from the staging in the caller's transaction).
 * Null when the table is too small to split: the caller reads it in one COPY.
 */
export async function fetchChunked(run: StageRun, args: Chunking & { into: string; snapshots?: SnapshotProvider }): Promise<number | null> {
  const { env, def, runId, name, opts } = run;
  const rows = await chunkedRows(env.pool, runId) ?? await readChunks({
    ...args, env, def, runId, name, phase: (fn) => run.fetchPhase(fn),
    report: (r, chunks, total) => opts.onProgress?.({ entity: name, runId, phase: 'fetch', rows: r, bytes: 0, total, chunks }),
  });
  if (rows === null) return null;
  if (args.into === stagingTable(runId)) return rows;
  const cols = args.spec.targetColumns.map(quoteIdent).join(', ');
  const { rowCount } = await run.target.query(`insert into ${args.into} (${cols}) select ${cols} from ${stagingTable(runId)}`);
  log.debug({ entity: name, runId, rows: rowCount, target: def.target }, 'chunks copied into the empty target');
  return rowCount ?? 0;
}

/**
 * A chunked read of everything into the run's staging, in a snapshot the
 * caller holds open (the checksum diff's, when most rows differ); null when
 * the table is too small to split or `into` is not the run's staging.
 */
export function readChunksIn(args: Chunking & {
  env: SourceEnv; def: EntityConfig; runId: number; name: string; snapshot: string; into: string;
  signal?: AbortSignal; onRows?: (rows: number, bytes: number) => void;
}): Promise<number | null> {
  if (args.into !== stagingTable(args.runId)) return Promise.resolve(null);
  const signal = args.signal ?? new AbortController().signal;
  return readChunks({
    ...args, snapshots: heldSnapshot(args.snapshot),
    phase: (fn) => fn(signal), report: (rows) => args.onRows?.(rows, 0),
  });
}

/** The rows of a run whose chunks are all done already (a direct load that fell back to staging); else null. */
async function chunkedRows(pool: Pool, runId: number): Promise<number | null> {
  const c = await chunkCounts(pool, runId);
  if (!c.total) return null;
  if (c.done !== c.total) throw new Error(`run ${runId} was split into chunks that are not all read; run it again`);
  return c.rows;
}

async function readChunks(args: ChunkedRead): Promise<number | null> {
  const { env, def, runId, name } = args;
  const estimate = await args.estimate();
  if (estimate !== undefined && estimate < args.minRows) return null;
  const { pool } = env.pgSource(def.source);
  const snapshot = await (args.snapshots ?? exportSnapshot)(pool);
  try {
    const blocks = await tableBlocks(pool, def, snapshot.name);
    if (Math.min(args.chunks, blocks) < 2) return null;
    const { rows: [p] } = await env.pool.query<{ n: number }>('select sync.plan_chunks($1, $2, $3, $4, $5) as n',
      [runId, snapshot.name, blocks, args.chunks, JSON.stringify(args.spec)]);
    log.info({ entity: name, runId, chunks: p.n, blocks }, 'full read split into chunks');
    const taker: Taker = { env, def, runId, snapshot: snapshot.name, spec: args.spec, who: 'run' };
    return await args.phase((signal) => driveChunks(taker, signal, (r, c) => args.report(r, { total: c.total, done: c.done }, estimate)));
  } finally {
    await env.pool.query('select sync.close_chunks($1)', [runId])
      .catch((err) => log.warn({ entity: name, runId, err: (err as Error).message }, 'could not close the run\'s chunks'));
    await snapshot.release();
  }
}
