/**
 * The worker's loop for log capture: every log_poll_interval (1 second) it
 * asks each enabled "capture": "log" entity's slot whether anything is
 * waiting, and runs the entities that have changes (a disabled one's slot is
 * only watched: its retained WAL still raises alerts). A quiet poll starts no
 * run (so sync.run does not fill with empty ones) but moves the slot on.
 *
 * One worker at a time drives the loop (a session advisory lock: if that
 * worker dies, its session ends and another takes over); runs of one entity
 * never overlap (the entity lock, as for every run).
 */
import pg from 'pg';
import { entity as entitySchema } from '../config/schema.js';
import type { Engine } from '../engine/run.js';
import { log } from '../log.js';
import { entitySourceKind } from '../sources/registry.js';

// Whoever holds it drives the loop.
const LEADER_LOCK = `select pg_try_advisory_lock(hashtext('syncline log capture')) as ok`;
// A source that keeps failing is reported at most this often.
const REPORT_EVERY_MS = 60_000;
// An entity whose run failed waits before the next try: 2 s, doubling up to this.
const MAX_BACKOFF_MS = 5 * 60_000;

export interface LogLoop { stop(): Promise<void> }

export function startLogLoop(engine: Engine, opts: { everyMs?: number } = {}): LogLoop {
  let stopped = false;
  let wake: () => void = () => {};
  const leader = new pg.Client({ connectionString: engine.syncUrl, application_name: 'syncline (log capture loop)' });
  let connected: Promise<boolean> | null = null;
  const reported = new Map<string, number>();
  // A failing entity (a slot it cannot create, a schema change) is not retried every poll.
  const backoff = new Map<string, { failures: number; until: number }>();

  const tick = async (): Promise<void> => {
    connected ??= leader.connect().then(() => true);
    await connected;
    if (!(await leader.query(LEADER_LOCK)).rows[0].ok) return;
    const { rows } = await engine.pool.query<{ name: string; definition: unknown; enabled: boolean }>(
      `select name, definition, enabled from sync.entity where definition ->> 'capture' = 'log' and direction = 'pull'`);
    await Promise.all(rows.filter((r) => (backoff.get(r.name)?.until ?? 0) <= Date.now()).map((r) =>
      pollEntity(engine, r.name, r.definition, r.enabled).then(() => { backoff.delete(r.name); }, (err) => {
        const failures = (backoff.get(r.name)?.failures ?? 0) + 1;
        backoff.set(r.name, { failures, until: Date.now() + Math.min(1000 * 2 ** failures, MAX_BACKOFF_MS) });
        const last = reported.get(r.name) ?? 0;
        if (Date.now() - last > REPORT_EVERY_MS) {
          reported.set(r.name, Date.now());
          log.warn({ entity: r.name, failures, err: (err as Error).message }, 'log capture failed; trying again later');
        }
      })));
  };

  const interval = async (): Promise<number> => {
    if (opts.everyMs !== undefined) return opts.everyMs;
    const { rows } = await engine.pool.query(
      `select extract(epoch from sync.setting_interval('log_poll_interval')) * 1000 as ms`).catch(() => ({ rows: [{ ms: 1000 }] }));
    return Number(rows[0]?.ms ?? 1000);
  };

  const done = (async () => {
    while (!stopped) {
      const started = Date.now();
      await tick().catch((err) => log.warn({ err: (err as Error).message }, 'log capture loop'));
      const wait = Math.max(0, (await interval().catch(() => 1000)) - (Date.now() - started));
      if (!stopped) await new Promise<void>((resolve) => { wake = resolve; setTimeout(resolve, wait); });
    }
  })();

  return {
    async stop() {
      stopped = true;
      wake();
      await done;
      await leader.end().catch(() => {});
    },
  };
}

/**
 * Runs the entity when its slot has changes; does nothing while another run
 * has the entity. A disabled entity is only watched: its slot keeps WAL all the same.
 */
async function pollEntity(engine: Engine, name: string, definition: unknown, enabled: boolean): Promise<void> {
  const def = entitySchema.parse(definition);
  const kind = entitySourceKind(engine.config, name, def);
  if (!kind.pending) return;
  const client = await engine.pool.connect();
  let pending = false;
  try {
    if (!(await client.query('select pg_try_advisory_lock(sync.entity_lock_key($1)) as ok', [name])).rows[0].ok) return;
    try {
      pending = await kind.pending(engine, name, def, { watchOnly: !enabled });
    } finally {
      await client.query('select pg_advisory_unlock(sync.entity_lock_key($1))', [name]);
    }
  } finally {
    client.release();
  }
  if (pending) {
    const r = await engine.run(name, { trigger: 'cron' });
    if (r.status === 'failed') throw new Error(r.error ?? 'the run failed');
  }
}
