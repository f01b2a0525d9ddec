import type { EngineContext, RunOptions, RunResult } from './types.js';

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

/**
 * A backfill asked for something that cannot be: an unknown entity, one
 * without a cursor, bounds or a chunk size its cursor type does not read, an
 * empty range. The message names the option (`--from`, `--to`, `--chunk`)
 * and the value; nothing was run.
 */
export class BackfillInputError extends Error {}

const EXAMPLES = {
  time: 'a date or time Postgres reads (e.g. 2026-01-01 or \'2026-01-01 08:00+00\')',
  interval: 'an interval Postgres reads (e.g. \'1 day\' or \'6 hours\')',
} as const;

/** Postgres refused a value as input for a type (SQLSTATE class 22: invalid syntax, out of range …). */
const isDataError = (err: unknown) => String((err as { code?: string }).code ?? '').startsWith('22');

/**
 * Checks a backfill's range against the entity's cursor column before
 * anything runs: both bounds read as the column's type, --from before --to,
 * and a chunk size greater than zero of the right kind (an interval for
 * dates and times, a number for numbers).
 */
export async function checkBackfillRange(engine: EngineContext, entity: string, o: BackfillOptions): Promise<void> {
  const { rows } = await engine.pool.query<{ cursor_column: string | null; target: string; type: string | null; category: string | null }>(
    `select e.cursor_column, format('%I.%I', e.target_schema, e.target_table) as target,
            format_type(a.atttypid, a.atttypmod) as type, t.typcategory::text as category
       from sync.entity e
       left join pg_attribute a on a.attrelid = to_regclass(format('%I.%I', e.target_schema, e.target_table))
                               and a.attname = e.cursor_column and not a.attisdropped
       left join pg_type t on t.oid = a.atttypid
      where e.name = $1`, [entity]);
  const known = async () => (await engine.pool.query<{ name: string }>('select name from sync.entity order by name')).rows.map((r) => r.name);
  if (!rows.length) {
    throw new BackfillInputError(`unknown entity ${entity} — sync.entity has: ${(await known()).join(', ') || '(none)'}; new entities need \`config apply\``);
  }
  const { cursor_column: column, target, type, category } = rows[0];
  if (!column) {
    throw new BackfillInputError(`entity ${entity} has no cursor column: a backfill needs one to split the range by — add "cursor": {"column": …} to the entity`);
  }
  if (!type) {
    throw new Error(`the cursor column "${column}" of ${entity} is not a column of its target table ${target} — create it with your migrations, or fix "cursor" in the config`);
  }
  const kind = category === 'D' ? 'time' : category === 'N' ? 'number' : null;
  if (!kind) {
    throw new BackfillInputError(`entity ${entity}: the cursor column "${column}" is ${type}; a backfill splits a range of dates, times or numbers`);
  }
  const what = kind === 'time' ? EXAMPLES.time : `a number of the cursor column's type (${type})`;
  // The type is the catalog's own rendering (format_type quotes what needs it);
  // each value goes in as a parameter and through the type's input function,
  // as sync.backfill_chunks reads it.
  const read = async (flag: string, value: string, sql: string, description: string) => {
    try {
      return (await engine.pool.query(sql, [value])).rows[0].v;
    } catch (err) {
      if (!isDataError(err)) throw err;
      throw new BackfillInputError(`${flag} ${JSON.stringify(value)} is not ${description}`, { cause: err });
    }
  };
  await read('--from', o.from, `select $1::${type} as v`, what);
  await read('--to', o.to, `select $1::${type} as v`, what);
  const before = (await engine.pool.query(`select $1::${type} < $2::${type} as v`, [o.from, o.to])).rows[0].v;
  if (!before) {
    throw new BackfillInputError(`--from ${JSON.stringify(o.from)} is not before --to ${JSON.stringify(o.to)}: a backfill reads [--from, --to), so --from must come first`);
  }
  if (o.chunk !== undefined) {
    const positive = kind === 'time'
      ? await read('--chunk', o.chunk, `select $1::interval > interval '0' as v`, EXAMPLES.interval)
      : await read('--chunk', o.chunk, `select $1::${type} > 0 as v`, `a number of the cursor column's type (${type})`);
    if (!positive) throw new BackfillInputError(`--chunk ${JSON.stringify(o.chunk)} is not greater than zero: give the size of one chunk, e.g. --chunk ${kind === 'time' ? '\'1 day\'' : '10000'}`);
  }
}

/** The chunks of a backfill, with those an earlier backfill run completed marked done. */
export async function backfillChunks(engine: EngineContext, entity: string, o: BackfillOptions): Promise<Chunk[]> {
  await checkBackfillRange(engine, entity, o);
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
export async function runBackfill(engine: EngineContext, entity: string, o: BackfillOptions): Promise<RunResult[]> {
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
export async function enqueueBackfill(engine: EngineContext, entity: string, o: BackfillOptions): Promise<number> {
  const todo = (await backfillChunks(engine, entity, o)).filter((c) => !c.done);
  await engine.pool.query(
    `select graphile_worker.add_job('sync_entity',
              json_build_object('entity', $1::text, 'trigger', 'backfill', 'window', json_build_object('from', c.f, 'to', c.t)),
              queue_name := 'sync:' || $1, job_key := format('backfill:%s:%s:%s', $1, c.f, c.t), max_attempts := 5)
       from unnest($2::text[], $3::text[]) as c(f, t)`,
    [entity, todo.map((c) => c.from), todo.map((c) => c.to)]);
  return todo.length;
}
