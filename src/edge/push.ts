import { takeEntityLock } from '../engine/run.js';
import { performance } from 'node:perf_hooks';
import type { EntityConfig } from '../config/schema.js';
import { connectionHint, type Pool, type PoolClient } from '../db/pool.js';
import type { Trigger } from '../engine/run.js';
import { log } from '../log.js';
import { batchSql, pushBatch, type BatchOutcome } from './batch.js';
import { planPush, type PushPlan } from './plan.js';
import { classify, closePushRun, describeError, failPushRun, openPushRun } from './run-log.js';

export interface PushResult {
  entity: string;
  runId: number | null;
  status: 'succeeded' | 'failed' | 'already-running';
  /** Rows read locally and sent. */
  fetched: number;
  /** Rows new on the remote. */
  inserted: number;
  /** Rows the remote already had: re-sent after a crash between its commit and the local delete. */
  unchanged: number;
  /** Rows deleted (or marked) locally. */
  retired: number;
  batches: number;
  /** Stopped between batches by a shutdown, with rows left for the next cycle. */
  stopped?: boolean;
  error?: string;
  category?: string;
}

export interface PushTarget {
  /** The Syncline (edge) database: the local table, sync.run. */
  pool: Pool;
  /** The remote server's pool and URL (for messages). */
  remote: Pool;
  remoteUrl: string;
  source: string;
}

// How long a push waits for its entity's lock before reporting that a run
// has it (sync.cleanup takes it for a moment to find dead runs).
/** What a run's batches add up to: counts, milliseconds per phase, and each batch's duration. */
class Tally {
  rows = 0;
  inserted = 0;
  retired = 0;
  ms = { pick: 0, transfer: 0, remote: 0, local: 0 };
  durations: number[] = [];
  started = performance.now();

  add(b: BatchOutcome) {
    this.rows += b.rows;
    this.inserted += b.inserted;
    this.retired += b.retired;
    for (const k of Object.keys(this.ms) as (keyof Tally['ms'])[]) this.ms[k] += b.ms[k];
    this.durations.push(b.ms.total);
  }

  counts() {
    return { fetched: this.rows, inserted: this.inserted, unchanged: this.rows - this.inserted, retired: this.retired, batches: this.durations.length };
  }

  phases() {
    const r = Math.round;
    return { push: r(performance.now() - this.started), pick: r(this.ms.pick), transfer: r(this.ms.transfer),
      remote_commit: r(this.ms.remote), local_commit: r(this.ms.local) };
  }

  detail(plan: PushPlan, stopped: boolean) {
    const sorted = [...this.durations].sort((a, b) => a - b);
    const at = (p: number) => (sorted.length ? Math.round(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] * 10) / 10 : null);
    const seconds = (performance.now() - this.started) / 1000;
    return {
      batches: sorted.length, batch_size: plan.settings.batchSize, after_push: plan.settings.afterPush, retired_locally: this.retired,
      batch_ms: { p50: at(0.5), p95: at(0.95), max: at(1) }, rows_per_s: Math.round(this.rows / Math.max(seconds, 0.001)),
      ...(stopped ? { stopped: 'shutdown' } : {}),
    };
  }
}

/**
 * Pushes the entity's pending rows, batch after batch, up to as many as were
 * pending when it started (rows arriving meanwhile wait for the next cycle,
 * so a busy writer cannot keep a run going forever). A stop request ends it
 * between batches. Never throws for a failed run: the failure is in the
 * result and in sync.run.
 */
export async function runPush(t: PushTarget, entity: string, def: EntityConfig,
  opts: { trigger: Trigger; signal?: AbortSignal }): Promise<PushResult> {
  const local = await t.pool.connect();
  let remote: PoolClient | undefined;
  let broken = false;
  let locked = false;
  let runId: number | null = null;
  const tally = new Tally();
  try {
    locked = await takeEntityLock(local, entity);
    if (!locked) return { entity, runId: null, status: 'already-running', ...tally.counts() };
    runId = await openPushRun(local, entity, opts.trigger, { direction: 'push' });
    remote = await t.remote.connect().catch((err) => { throw connectionHint(err, t.remoteUrl, `source "${t.source}"`); });
    const plan = await planPush(entity, def, local, remote, t.source);
    const stopped = await pushAll(local, remote, plan, runId, tally, opts.signal);
    await closePushRun(t.pool, runId, tally.phases(), tally.detail(plan, stopped));
    return { entity, runId, status: 'succeeded', ...tally.counts(), stopped };
  } catch (err) {
    // A batch cut short can leave either connection mid-COPY or mid-transaction: drop both.
    broken = true;
    runId = await failPushRun(t.pool, runId, entity, opts.trigger, err, tally.phases());
    const error = describeError(err);
    log.warn({ entity, runId, err: error }, 'push run failed');
    return { entity, runId, status: 'failed', ...tally.counts(), error, category: classify(err) };
  } finally {
    if (locked && !broken) await local.query('select pg_advisory_unlock(sync.entity_lock_key($1))', [entity]).catch(() => {});
    local.release(broken ? true : undefined);
    remote?.release(broken ? true : undefined);
  }
}

/** The batches of one run; true when a stop request ended it early. */
async function pushAll(local: PoolClient, remote: PoolClient, plan: PushPlan, runId: number, tally: Tally,
  signal?: AbortSignal): Promise<boolean> {
  const sql = batchSql(plan);
  await local.query(sql.prepareLocal);
  await remote.query(sql.prepareRemote);
  const pending = (await local.query(sql.pending)).rows[0].n as number;
  let sent = 0;
  let last: string | null = null;
  while (sent < pending) {
    if (signal?.aborted) return true;
    const b = await pushBatch(local, remote, sql, runId, last);
    if (b.rows === 0) break;
    tally.add(b);
    sent += b.rows;
    last = b.last;
    if (b.rows < plan.settings.batchSize) break;
  }
  return false;
}
