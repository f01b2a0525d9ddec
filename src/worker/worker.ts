import { EventEmitter } from 'node:events';
import { readFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import { run, parseCrontab, parseCronItems, type Runner, type ParsedCronItem, type Task, type WorkerEvents } from 'graphile-worker';
import type { Engine } from '../engine/run.js';
import { workerLogger } from '../db/database.js';
import { log } from '../log.js';
import { syncEntity } from '../../tasks/sync_entity.js';
import { syncCleanup } from '../../tasks/sync_cleanup.js';
import { syncAlert } from '../../tasks/sync_alert.js';
import { syncTick, syncMaintain } from '../../tasks/sync_maintain.js';
import { syncEdge } from '../../tasks/sync_edge.js';
import { syncSchedule } from '../../tasks/sync_schedule.js';
import { syncVerify } from '../../tasks/sync_verify.js';
import { syncChunk } from '../../tasks/sync_chunk.js';
import { Heartbeat } from './heartbeat.js';
import { startLogLoop } from './log-loop.js';

// After stop(), how long to wait for this worker's jobs to be released before
// releasing them ourselves (graphile-worker's stop() can return before a
// job's outcome is written).
const UNLOCK_WAIT_MS = 15_000;

export interface WorkerHandle {
  /** The graphile-worker runner serving. */
  readonly runner: Runner;
  /** This worker's ids (graphile-worker pool ids: the locked_by of its jobs). */
  readonly ids: string[];
  /** Rejects when the worker stops on its own (not by stop()). */
  readonly failed: Promise<never>;
  stop(): Promise<void>;
}

/**
 * Cron items: the crontab file, plus the schedule tick. Entity schedules are
 * not cron items: each minute sync.schedule_wave reads them from sync.entity
 * and starts one wave of every entity due, so an UPDATE of a schedule counts
 * from the next minute, with no restart.
 */
export async function cronItems(_engine: Engine, crontabFile?: string): Promise<ParsedCronItem[]> {
  const fromFile = crontabFile && existsSync(crontabFile) ? parseCrontab(readFileSync(crontabFile, 'utf8')) : [];
  // A missed tick is not replayed: the next run fetches everything missed anyway.
  return [...fromFile, ...parseCronItems([{
    task: 'sync_schedule', match: '* * * * *', identifier: 'sync_schedule',
    options: { backfillPeriod: 0, maxAttempts: 3, jobKey: 'sync_schedule', queueName: 'sync_schedule' },
  }])];
}

/** The tasks a worker runs. */
function taskList(engine: Engine): Record<string, Task> {
  return {
    sync_entity: syncEntity(engine), sync_schedule: syncSchedule, sync_cleanup: syncCleanup, sync_alert: syncAlert(engine),
    sync_tick: syncTick, sync_maintain: syncMaintain, sync_edge: syncEdge(engine), sync_verify: syncVerify(engine),
    sync_chunk: syncChunk(engine),
  };
}

export async function startWorker(engine: Engine, opts: { crontabFile?: string; concurrency?: number } = {}): Promise<WorkerHandle> {
  const ids = new Set<string>();
  const heartbeat = new Heartbeat(engine.pool, os.hostname(), process.pid);
  let stopping = false;
  let fail: (err: unknown) => void = () => {};
  const failed = new Promise<never>((_, reject) => { fail = reject; });
  failed.catch(() => {});
  // Our own emitter, listening before run() creates the pool: jobs are locked
  // with the pool's id (0.17; older releases used each worker's).
  const events: WorkerEvents = new EventEmitter();
  const announce = (id: string) => {
    ids.add(id);
    heartbeat.add(id);
  };
  events.on('pool:create', ({ workerPool }) => announce(workerPool.id));
  events.on('worker:create', ({ worker }) => announce(worker.workerId));
  const runner = await run({
    events,
    pgPool: engine.pool,
    taskList: taskList(engine),
    parsedCronItems: await cronItems(engine, opts.crontabFile),
    concurrency: opts.concurrency ?? 4,
    noHandleSignals: true,
    pollInterval: 2000,
    logger: workerLogger(),
  });
  await heartbeat.start();
  const logLoop = startLogLoop(engine);
  runner.promise.catch((err) => { if (!stopping) fail(err); });
  return {
    runner,
    get ids() { return [...ids]; },
    failed,
    async stop() {
      stopping = true;
      await logLoop.stop();
      await runner.stop();
      await releaseJobs(engine, [...ids]);
      await heartbeat.stop();
    },
  };
}

/** Waits until no job is locked by these workers; past the wait, unlocks them so they run again. */
async function releaseJobs(engine: Engine, ids: string[]): Promise<void> {
  if (!ids.length) return;
  const deadline = Date.now() + UNLOCK_WAIT_MS;
  for (;;) {
    const { rows } = await engine.pool.query<{ n: number }>(
      'select count(*)::int as n from graphile_worker.jobs where locked_by = any($1)', [ids]);
    if (rows[0].n === 0) return;
    if (Date.now() > deadline) {
      log.warn({ jobs: rows[0].n }, 'jobs still locked after shutdown; releasing them so another worker retries');
      await engine.pool.query('select graphile_worker.force_unlock_workers($1)', [ids]);
      return;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}
