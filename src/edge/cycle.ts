import { entity as entitySchema, type EntityConfig } from '../config/schema.js';
import type { Pool } from '../db/pool.js';
import { runMany } from '../engine/plan.js';
import type { RunResult, Trigger } from '../engine/run.js';
import { log } from '../log.js';
import type { Edge } from './edge.js';
import { runPush, type PushResult } from './push.js';

/**
 * The advisory lock a cycle holds on the edge's database, so two edge
 * processes (or the CLI loop and the worker task) never run cycles at once.
 * The two-int form lives in a key space apart from the bigint entity locks.
 */
export const EDGE_LOCK: [number, number] = [0x53594e43, 0x45444745];

export type CycleStatus = 'done' | 'failed' | 'remote-down' | 'skipped';

export interface CycleResult {
  status: CycleStatus;
  push: PushResult[];
  pull: RunResult[];
  /** Stopped early by a shutdown request. */
  stopped: boolean;
  /** The cycle's span on the local database's clock (null when skipped). */
  started: Date | null;
  finished: Date | null;
  error?: string;
}

export interface CycleOptions {
  trigger: Trigger;
  /** A stop request: the running batch finishes, nothing new starts. */
  signal?: AbortSignal;
}

interface CycleEntities {
  push: { name: string; def: EntityConfig }[];
  /** Pull entities with no schedule of their own: the worker's cron runs scheduled ones. */
  pull: string[];
  /** The sources all of them use. */
  sources: string[];
}

async function cycleEntities(pool: Pool): Promise<CycleEntities> {
  const { rows } = await pool.query<{ name: string; direction: string; source: string; definition: unknown; scheduled: boolean }>(
    `select name, direction, source, definition, schedule is not null or sync_interval is not null as scheduled
       from sync.entity where enabled order by name`);
  const push = rows.filter((r) => r.direction === 'push');
  const pull = rows.filter((r) => r.direction === 'pull' && !r.scheduled);
  return {
    push: push.map((r) => ({ name: r.name, def: entitySchema.parse(r.definition) })),
    pull: pull.map((r) => r.name),
    sources: [...push, ...pull].map((r) => r.source),
  };
}

/** The first remote that does not answer, as a message; null when all do. */
async function probeSources(edge: Edge, sources: string[]): Promise<string | null> {
  for (const s of new Set(sources)) {
    if (edge.engine.config.sources[s]?.kind !== 'postgres') continue;
    const problem = await edge.probe(s);
    if (problem) return problem;
  }
  return null;
}

const empty = () => ({ push: [], pull: [], stopped: false, started: null, finished: null });

/** Push, then pull: the body of a cycle, run while holding EDGE_LOCK. */
async function cycleBody(edge: Edge, opts: CycleOptions): Promise<Omit<CycleResult, 'started' | 'finished'>> {
  const { engine } = edge;
  const todo = await cycleEntities(engine.pool);
  if (!todo.push.length && !todo.pull.length) {
    throw new Error('the edge cycle has nothing to do: add a push entity, or pull entities without a schedule, and run `syncline config apply`');
  }
  const down = await probeSources(edge, todo.sources);
  if (down) return { ...empty(), status: 'remote-down', error: down };
  const push: PushResult[] = [];
  for (const p of todo.push) {
    if (opts.signal?.aborted) return { ...empty(), status: 'done', push, stopped: true };
    push.push(await runPush(edge.pushTarget(p.def), p.name, p.def, opts));
  }
  if (push.some((r) => r.stopped) || opts.signal?.aborted) return { ...empty(), status: 'done', push, stopped: true };
  // A connection lost mid-push (either side) will not serve the pulls either: the backoff waits for it.
  const lost = push.find((r) => r.status === 'failed' && r.category === 'network');
  if (lost) return { ...empty(), status: 'failed', push, error: `push of ${lost.entity} lost a connection: ${lost.error}` };
  const pull = todo.pull.length ? await runMany(engine, todo.pull, { trigger: opts.trigger }) : [];
  const failed = push.some((r) => r.status === 'failed') || pull.some((r) => ['failed', 'cancelled', 'skipped'].includes(r.status));
  return { ...empty(), status: failed ? 'failed' : 'done', push, pull };
}

/**
 * One edge cycle: take EDGE_LOCK (or skip, when another process holds it),
 * push every enabled push entity, then pull the enabled pull entities that
 * have no schedule of their own, in dependency order. Throws when the local
 * database cannot be reached, or there is nothing to do.
 */
export async function runCycle(edge: Edge, opts: CycleOptions): Promise<CycleResult> {
  const lock = await edge.engine.pool.connect();
  let broken = false;
  try {
    const { rows } = await lock.query('select pg_try_advisory_lock($1, $2) as ok, clock_timestamp() as at', EDGE_LOCK);
    if (!rows[0].ok) {
      log.info('another edge cycle is running (it holds the edge lock); skipping this one');
      return { ...empty(), status: 'skipped' };
    }
    try {
      const body = await cycleBody(edge, opts);
      const done = await lock.query('select clock_timestamp() as at');
      return { ...body, started: rows[0].at, finished: done.rows[0].at };
    } finally {
      await lock.query('select pg_advisory_unlock($1, $2)', EDGE_LOCK).catch(() => { broken = true; });
    }
  } catch (err) {
    broken = true;
    throw err;
  } finally {
    // A dropped session has released the lock already; never pool it again.
    lock.release(broken ? true : undefined);
  }
}
