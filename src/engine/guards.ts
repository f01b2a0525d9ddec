import type { Pool, PoolClient } from '../db/pool.js';

// How often a running fetch checks sync.run.cancel_requested.
const CANCEL_POLL_MS = 1000;
// A dependency's run can take long; past this the dependent gives up (and
// the worker retries it later) rather than holding a worker slot forever.
const DEPENDENCY_WAIT = '10min';

export class CancelledError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'CancelledError';
  }
}

/** Watches sync.run.cancel_requested and the caller's signal; aborts the fetch on either. */
export function cancelWatch(pool: Pool, runId: number, signal?: AbortSignal) {
  const ctl = new AbortController();
  let reason = '';
  const abort = (why: string) => { if (!ctl.signal.aborted) { reason = why; ctl.abort(new CancelledError(why)); } };
  const onSignal = () => abort('the worker is shutting down');
  if (signal?.aborted) onSignal();
  signal?.addEventListener('abort', onSignal, { once: true });
  const timer = setInterval(() => {
    pool.query('select cancel_requested from sync.run where id = $1', [runId])
      .then(({ rows }) => { if (rows[0]?.cancel_requested) abort('cancelled on request (sync.cancel)'); })
      .catch(() => {});
  }, CANCEL_POLL_MS);
  return {
    signal: ctl.signal,
    reason: () => reason,
    stop: () => { clearInterval(timer); signal?.removeEventListener('abort', onSignal); },
  };
}

export async function throwIfCancelRequested(pool: Pool, runId: number): Promise<void> {
  const { rows } = await pool.query('select cancel_requested from sync.run where id = $1', [runId]);
  if (rows[0]?.cancel_requested) throw new CancelledError('cancelled on request (sync.cancel)');
}

/**
 * Waits while a dependency is being synced (it holds its entity lock), so a
 * scheduled child never reads parents that are half a run behind.
 */
export async function waitForDependencies(client: PoolClient, dependsOn: string[]): Promise<void> {
  if (!dependsOn.length) return;
  await client.query('begin');
  try {
    await client.query(`set local lock_timeout = '${DEPENDENCY_WAIT}'`);
    await client.query('select pg_advisory_xact_lock_shared(sync.entity_lock_key(d)) from unnest($1::text[]) d', [dependsOn]);
    await client.query('commit');
  } catch (err) {
    await client.query('rollback').catch(() => {});
    if ((err as { code?: string }).code === '55P03') {
      throw new Error(`a dependency (${dependsOn.join(', ')}) has been running for over ${DEPENDENCY_WAIT}; not starting`, { cause: err });
    }
    throw err;
  }
}

/** The first dependency whose last run failed, was cancelled, skipped or abandoned, as a reason; null if none. */
export async function blockingDependency(pool: Pool, dependsOn: string[]): Promise<string | null> {
  if (!dependsOn.length) return null;
  const { rows } = await pool.query(
    `select d.name, r.id, r.status
       from unnest($1::text[]) d(name)
       join lateral (select id, status from sync.run where entity = d.name and not dry_run and status <> 'running'
                      order by started_at desc, id desc limit 1) r on true
      where r.status in ('failed', 'cancelled', 'skipped', 'abandoned')
      order by d.name limit 1`, [dependsOn]);
  return rows.length ? `dependency "${rows[0].name}" ${rows[0].status} (run ${rows[0].id})` : null;
}

/**
 * The fetch phase of a run: `fn` gets a signal that fires on sync.cancel and
 * on shutdown (then the run ends cancelled), and the phase's milliseconds go
 * into sync.run.phases.
 */
export async function fetchPhase<T>(pool: Pool, target: PoolClient, runId: number, signal: AbortSignal | undefined,
  fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const watch = cancelWatch(pool, runId, signal);
  const started = Date.now();
  try {
    const out = await fn(watch.signal);
    await target.query(`update sync.run set phases = phases || jsonb_build_object('fetch', $2::int) where id = $1`,
      [runId, Date.now() - started]);
    return out;
  } catch (err) {
    if (watch.signal.aborted) throw new CancelledError(watch.reason());
    throw err;
  } finally {
    watch.stop();
  }
}
