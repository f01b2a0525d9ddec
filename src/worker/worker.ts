import { EventEmitter } from 'node:events';
import { readFileSync, existsSync } from 'node:fs';
import { run, parseCrontab, parseCronItems, type Runner, type CronItem, type ParsedCronItem, type WorkerEvents } from 'graphile-worker';
import type { Engine } from '../engine/run.js';
import { workerLogger } from '../db/database.js';
import { log } from '../log.js';
import { syncEntity } from '../../tasks/sync_entity.js';
import { syncCleanup } from '../../tasks/sync_cleanup.js';
import { syncAlert } from '../../tasks/sync_alert.js';
import { syncTick, syncMaintain } from '../../tasks/sync_maintain.js';
import { syncEdge } from '../../tasks/sync_edge.js';
import { listenForConfig } from './reload.js';

// After stop(), how long to wait for this worker's jobs to be released before
// releasing them ourselves (graphile-worker's stop() can return before a
// job's outcome is written).
const UNLOCK_WAIT_MS = 15_000;

// Config changes arriving within this window restart the schedules once.
const RELOAD_DEBOUNCE_MS = 500;

export interface WorkerHandle {
  /** The graphile-worker runner now serving (a schedule change replaces it). */
  readonly runner: Runner;
  /** Times the schedules were reloaded after a change to sync.entity. */
  readonly reloads: number;
  /** Rejects when the worker stops on its own (not by stop() or a reload). */
  readonly failed: Promise<never>;
  stop(): Promise<void>;
}

/** Cron items: the crontab file plus each enabled entity's schedule. */
export async function cronItems(engine: Engine, crontabFile?: string): Promise<ParsedCronItem[]> {
  const fromFile = crontabFile && existsSync(crontabFile) ? parseCrontab(readFileSync(crontabFile, 'utf8')) : [];
  const { rows } = await engine.pool.query<{ name: string; schedule: string | null; full_schedule: string | null }>(
    `select name, coalesce(schedule, sync.interval_cron(sync_interval)) as schedule, definition ->> 'fullSchedule' as full_schedule
       from sync.entity
      where enabled and (schedule is not null or sync_interval is not null or definition ? 'fullSchedule') order by name`);
  // A missed tick is not replayed: the next run fetches everything missed anyway.
  const item = (name: string, match: string, full: boolean): CronItem => ({
    task: 'sync_entity',
    match,
    identifier: `${full ? 'sync-full' : 'sync'}:${name}`,
    payload: full ? { entity: name, trigger: 'cron', full: true } : { entity: name, trigger: 'cron' },
    options: { backfillPeriod: 0, queueName: `sync:${name}`, jobKey: `${full ? 'sync-full' : 'sync'}:${name}`, maxAttempts: 5 },
  });
  const items: CronItem[] = rows.flatMap((r) => [
    ...(r.schedule ? [item(r.name, r.schedule, false)] : []),
    ...(r.full_schedule ? [item(r.name, r.full_schedule, true)] : []),
  ]);
  return [...fromFile, ...parseCronItems(items)];
}

export async function startWorker(engine: Engine, opts: { crontabFile?: string; concurrency?: number } = {}): Promise<WorkerHandle> {
  const workerIds = new Set<string>();
  let reloads = 0;
  let stopping = false;
  let fail: (err: unknown) => void = () => {};
  const failed = new Promise<never>((_, reject) => { fail = reject; });
  failed.catch(() => {});
  const start = async () => {
    // Our own emitter, listening before run() creates the pool: jobs are
    // locked with the pool's id (0.17; older releases used each worker's).
    const events: WorkerEvents = new EventEmitter();
    events.on('pool:create', ({ workerPool }) => workerIds.add(workerPool.id));
    events.on('worker:create', ({ worker }) => workerIds.add(worker.workerId));
    const r = await run({
      events,
      pgPool: engine.pool,
      taskList: { sync_entity: syncEntity(engine), sync_cleanup: syncCleanup, sync_alert: syncAlert(engine), sync_tick: syncTick, sync_maintain: syncMaintain, sync_edge: syncEdge(engine) },
      parsedCronItems: await cronItems(engine, opts.crontabFile),
      concurrency: opts.concurrency ?? 4,
      noHandleSignals: true,
      pollInterval: 2000,
      logger: workerLogger(),
    });
    r.promise.catch((err) => { if (!stopping && r === runner) fail(err); });
    return r;
  };
  let runner = await start();
  // graphile-worker reads its cron items once: a schedule changed with UPDATE
  // (or an entity added, removed, enabled or disabled) restarts the runner.
  // Running jobs finish first; queued ones wait in the database.
  let reloading: Promise<void> = Promise.resolve();
  let timer: NodeJS.Timeout | undefined;
  const reload = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      reloading = reloading.then(async () => {
        if (stopping) return;
        const old = runner;
        runner = await start();
        await old.stop();
        reloads += 1;
        log.info({ reloads }, 'schedules reloaded after a change to sync.entity');
      }).catch((err) => fail(err));
    }, RELOAD_DEBOUNCE_MS);
  };
  const listener = await listenForConfig(engine.pool, (change) => {
    if (change.action !== 'update' || change.columns.some((c) => SCHEDULE_COLUMNS.includes(c))) reload();
  });
  return {
    get runner() { return runner; },
    get reloads() { return reloads; },
    failed,
    async stop() {
      stopping = true;
      clearTimeout(timer);
      await listener.stop();
      await reloading;
      await runner.stop();
      await releaseJobs(engine, [...workerIds]);
    },
  };
}

// Columns of sync.entity that change what the cron items are.
const SCHEDULE_COLUMNS = ['schedule', 'sync_interval', 'enabled', 'definition'];

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
