/**
 * GET /api/health: ready when the database answers and a worker is alive.
 * Any answer at all (200 or 503) shows the process is live; `?probe=live`
 * answers 200 without checking anything, for a liveness probe.
 */
import type { ServerResponse } from 'node:http';
import type { Pool } from '../../db/pool.js';
import type { WorkerHandle } from '../../worker/worker.js';
import { sendJson } from '../http.js';
import type { Request, Route, ServerContext } from '../router.js';

// A database that takes longer than this to answer `select 1` is not ready.
const DB_TIMEOUT_MS = 3000;
// sync_tick runs every minute; two missed ticks mean no worker is running it.
const WORKER_SILENCE = '2 minutes';

interface Check {
  ok: boolean;
  [k: string]: unknown;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms / 1000} s`)), ms); });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

async function databaseCheck(pool: Pool): Promise<Check> {
  const started = Date.now();
  try {
    await withTimeout(pool.query('select 1'), DB_TIMEOUT_MS, 'the database');
    return { ok: true, latencyMs: Date.now() - started };
  } catch (err) {
    return { ok: false, error: `the database is not reachable: ${(err as Error).message}`, hint: 'check that PostgreSQL runs and DATABASE_URL points at it' };
  }
}

/** Whether a promise has settled, without waiting for it. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(() => { done = true; }, () => { done = true; });
  await new Promise((r) => setImmediate(r));
  return done;
}

async function inProcessWorker(handle: WorkerHandle): Promise<Check> {
  if (await settled(handle.failed)) return { ok: false, how: 'in-process', error: 'the worker of this process stopped unexpectedly', hint: 'see its log; restart `npm start`' };
  if (await settled(handle.runner.promise)) return { ok: false, how: 'in-process', error: 'the worker of this process has stopped' };
  return { ok: true, how: 'in-process' };
}

/** A worker anywhere: its sync_tick task stamps sync.heartbeat every minute. */
async function tickingWorker(pool: Pool): Promise<Check> {
  const { rows } = await pool.query<{ last: Date | null; recent: boolean | null; ago: number | null }>(
    `select beat_at as last, beat_at > now() - $1::interval as recent, extract(epoch from now() - beat_at)::float8 as ago
       from sync.heartbeat where name = 'worker'`, [WORKER_SILENCE]);
  const r = rows[0];
  if (r?.recent) return { ok: true, how: 'sync_tick', lastTickAt: r.last, secondsAgo: Math.round(r.ago ?? 0) };
  return {
    ok: false, how: 'sync_tick', lastTickAt: r?.last ?? null,
    error: r?.last ? `no worker has run sync_tick for ${Math.round((r.ago ?? 0) / 60)} minutes` : 'no worker has run sync_tick yet',
    hint: 'start one with `npm start` or `syncline worker` (its crontab runs sync_tick every minute)',
  };
}

async function workerCheck(ctx: ServerContext): Promise<Check> {
  if (ctx.worker) return inProcessWorker(ctx.worker);
  try {
    return await withTimeout(tickingWorker(ctx.engine.pool), DB_TIMEOUT_MS, 'the database');
  } catch (err) {
    return { ok: false, how: 'sync_tick', error: `cannot tell whether a worker runs: ${(err as Error).message}` };
  }
}

async function health(ctx: ServerContext, req: Request, res: ServerResponse): Promise<void> {
  if (req.url.searchParams.get('probe') === 'live') {
    sendJson(res, 200, { live: true, startedAt: ctx.startedAt });
    return;
  }
  const database = await databaseCheck(ctx.engine.pool);
  const worker = database.ok || ctx.worker ? await workerCheck(ctx) : { ok: false, error: 'unknown: the database is not reachable' };
  const ready = database.ok && worker.ok;
  sendJson(res, ready ? 200 : 503, { status: ready ? 'ready' : 'unavailable', live: true, database, worker, startedAt: ctx.startedAt });
}

export const healthRoutes: Route[] = [
  { method: 'GET', path: '/api/health', auth: 'bearer', handler: health },
];
