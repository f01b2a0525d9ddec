import type { Engine, RunOptions, RunResult } from './run.js';

export interface Chunk {
  from: string;
  to: string;
  done: boolean;
}

export interface BackfillOptions {
  from: string;
  to: string;
  /** An interval ('1 day') for time cursors, a number for numeric ones. */
  chunk?: string;
  onChunk?: (c: Chunk, index: number, total: number) => void;
  onProgress?: RunOptions['onProgress'];
  signal?: AbortSignal;
}

/** The chunks of a backfill, with those an earlier backfill run completed marked done. */
export async function backfillChunks(engine: Engine, entity: string, o: BackfillOptions): Promise<Chunk[]> {
  const { rows } = await engine.pool.query<{ chunk_from: string; chunk_to: string; done: boolean }>(
    'select * from sync.backfill_chunks($1, $2, $3, $4)', [entity, o.from, o.to, o.chunk ?? null]);
  return rows.map((r) => ({ from: r.chunk_from, to: r.chunk_to, done: r.done }));
}

/**
 * A historical import of [from, to) in chunks, one run a chunk (upserts, no
 * deletes), in order. Chunks an earlier backfill completed are skipped, so a
 * re-run picks up where a stopped one ended; each merge moves the cursor
 * forward only, so the incremental runs carry on from the newest row loaded.
 * Stops at the first chunk that fails.
 */
export async function runBackfill(engine: Engine, entity: string, o: BackfillOptions): Promise<RunResult[]> {
  const chunks = await backfillChunks(engine, entity, o);
  const results: RunResult[] = [];
  for (const [i, c] of chunks.entries()) {
    o.onChunk?.(c, i, chunks.length);
    if (c.done) continue;
    const r = await engine.run(entity, { trigger: 'backfill', window: { from: c.from, to: c.to }, onProgress: o.onProgress, signal: o.signal });
    results.push(r);
    if (!['succeeded', 'partial'].includes(r.status)) break;
  }
  return results;
}

/** Hands the chunks not yet done to the worker, one job a chunk on the entity's queue. Returns how many. */
export async function enqueueBackfill(engine: Engine, entity: string, o: BackfillOptions): Promise<number> {
  const todo = (await backfillChunks(engine, entity, o)).filter((c) => !c.done);
  await engine.pool.query(
    `select graphile_worker.add_job('sync_entity',
              json_build_object('entity', $1::text, 'trigger', 'backfill', 'window', json_build_object('from', c.f, 'to', c.t)),
              queue_name := 'sync:' || $1, job_key := format('backfill:%s:%s:%s', $1, c.f, c.t), max_attempts := 5)
       from unnest($2::text[], $3::text[]) as c(f, t)`,
    [entity, todo.map((c) => c.from), todo.map((c) => c.to)]);
  return todo.length;
}
