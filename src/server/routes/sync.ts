/**
 * /api/sync: manual runs, their progress (JSON and server-sent events),
 * cancel, and the status, run log and trend the dashboard shows.
 */
import { z } from 'zod';
import { statusRows } from '../../health/status.js';
import { checkTicket, mintTicket, requireBearer, TICKET_TTL_S } from '../auth.js';
import { streamProgress } from '../events.js';
import { HttpError, parseWith, queryOf, readJson, sendJson } from '../http.js';
import { readProgress } from '../progress.js';
import type { Route, ServerContext, Request } from '../router.js';
import type { ServerResponse } from 'node:http';

const ManualBody = z.object({
  entity: z.string().min(1).optional(),
  entities: z.array(z.string().min(1)).min(1, 'name at least one entity').optional(),
  all: z.literal(true).optional(),
  dryRun: z.boolean().default(false),
  full: z.boolean().default(false),
}).strict().refine((b) => [b.entity, b.entities, b.all].filter((x) => x !== undefined).length === 1,
  'give exactly one of "entity": "name", "entities": ["a", "b"] or "all": true');

/** A positive whole number from a path segment, or a 400 saying so. */
export function idParam(value: string, what: string): number {
  if (!/^[1-9][0-9]{0,14}$/.test(value)) throw new HttpError(400, `${what} "${value}" is not a positive whole number`);
  return Number(value);
}

async function manual(ctx: ServerContext, req: Request, res: ServerResponse): Promise<void> {
  const body = parseWith(ManualBody, await readJson(req.raw), 'POST /api/sync/manual');
  const entities = body.entity ? [body.entity] : body.entities ?? null;
  const runs = await ctx.manual.start({ entities, dryRun: body.dryRun, full: body.full });
  const accepted = runs.some((r) => r.state !== 'already-running');
  const single = body.entity ? runs[0] : undefined;
  sendJson(res, accepted ? 202 : 200, {
    ...(single ? { entity: single.entity, runId: single.runId, state: single.state } : {}),
    dryRun: body.dryRun, runs,
  }, single?.runId ? { location: `/api/sync/progress/${single.runId}` } : {});
}

async function status(ctx: ServerContext, _req: Request, res: ServerResponse): Promise<void> {
  const rows = await statusRows(ctx.engine.pool);
  const running = rows.filter((r) => r.state === 'running' && r.last_run_id).map((r) => r.last_run_id!);
  const progress = new Map<number, unknown>();
  for (const id of running) progress.set(id, await readProgress(ctx.engine.pool, id));
  sendJson(res, 200, {
    entities: rows.map((r) => ({ ...r, progress: r.state === 'running' ? progress.get(r.last_run_id!) ?? null : null })),
  });
}

async function progress(ctx: ServerContext, req: Request, res: ServerResponse): Promise<void> {
  const runId = idParam(req.params.runId, 'run id');
  const wantsStream = /\btext\/event-stream\b/.test(req.raw.headers.accept ?? '') || req.url.searchParams.has('ticket');
  if (wantsStream) {
    const ticket = req.url.searchParams.get('ticket');
    if (ticket && !req.raw.headers.authorization) checkTicket(ctx.token, runId, ticket);
    else requireBearer(req.raw.headers.authorization, ctx.token);
  } else {
    requireBearer(req.raw.headers.authorization, ctx.token);
  }
  const p = await readProgress(ctx.engine.pool, runId);
  if (!p) throw new HttpError(404, `no run ${runId}`, 'GET /api/sync/status lists each entity\'s last run');
  if (wantsStream) streamProgress(ctx.hub, res, runId);
  else sendJson(res, 200, p);
}

async function ticket(ctx: ServerContext, req: Request, res: ServerResponse): Promise<void> {
  const runId = idParam(req.params.runId, 'run id');
  const { rowCount } = await ctx.engine.pool.query('select 1 from sync.run where id = $1', [runId]);
  if (!rowCount) throw new HttpError(404, `no run ${runId}`);
  const t = mintTicket(ctx.token, runId);
  sendJson(res, 200, {
    ticket: t.ticket, expiresAt: t.expiresAt, validSeconds: TICKET_TTL_S,
    url: `/api/sync/progress/${runId}?ticket=${encodeURIComponent(t.ticket)}`,
  });
}

async function cancel(ctx: ServerContext, req: Request, res: ServerResponse): Promise<void> {
  const runId = idParam(req.params.runId, 'run id');
  const { pool } = ctx.engine;
  const { rows } = await pool.query<{ entity: string; status: string; phase: string | null; finished_at: Date | null }>(
    `select entity, status, progress ->> 'phase' as phase, finished_at from sync.run where id = $1`, [runId]);
  if (!rows.length) throw new HttpError(404, `no run ${runId}`, 'GET /api/sync/status lists each entity\'s running run');
  const run = rows[0];
  const notRunning = () => new HttpError(409, `run ${runId} of ${run.entity} is not running (it ended ${run.status}); nothing to cancel`,
    'start another with POST /api/sync/manual if you need one', { status: run.status });
  if (run.status !== 'running') throw notRunning();
  const ok = (await pool.query<{ ok: boolean }>('select sync.cancel($1) as ok', [runId])).rows[0].ok;
  if (!ok) throw notRunning();
  sendJson(res, 202, {
    runId, entity: run.entity, cancelRequested: true, phase: run.phase,
    message: run.phase === 'merge'
      ? 'cancel requested, but the run is already merging: the merge is one transaction and completes; GET the progress to see how it ends'
      : 'cancel requested: the fetch stops within a second or two, nothing is merged, and the run ends cancelled',
  });
}

const RunsQuery = z.object({
  entity: z.string().min(1).optional(),
  status: z.enum(['running', 'succeeded', 'partial', 'failed', 'cancelled', 'skipped']).optional(),
  limit: z.coerce.number().int().min(1).max(500).default(20),
}).strict();

async function runs(ctx: ServerContext, req: Request, res: ServerResponse): Promise<void> {
  const q = parseWith(RunsQuery, queryOf(req.url), 'GET /api/sync/runs');
  const { rows } = await ctx.engine.pool.query(
    `select r.id::float8 as id, r.entity, r.trigger, r.status, r.dry_run as "dryRun", r.full_refresh as "full",
            r.started_at as "startedAt", r.finished_at as "finishedAt",
            extract(epoch from coalesce(r.finished_at, now()) - r.started_at)::float8 as seconds,
            r.fetched, r.inserted, r.updated, r.deleted, r.unchanged, r.quarantined, r.deferred, r.phases, r.error,
            r.detail -> 'http' as http
       from sync.runs($1, null, null, $2, $3) r`, [q.entity ?? null, q.status ?? null, q.limit]);
  sendJson(res, 200, { runs: rows });
}

const TrendQuery = z.object({
  granularity: z.enum(['minute', 'hour', 'day']).default('hour'),
  entity: z.string().min(1).optional(),
}).strict();

// The windows the trend chart shows: two hours by the minute (a new
// install's first runs), two days by the hour, a month by the day
// (sync.trend keeps 48 hours and 90 days).
const TREND_WINDOW = { minute: '119 minutes', hour: '47 hours', day: '29 days' } as const;

// sync.trend has no minutes: they come from sync.run, counted as the view
// counts hours. The finished_at bound lets run_finished_idx find the runs.
const MINUTE_TREND = `
  select date_trunc('minute', r.started_at) as bucket, count(*) as runs, count(*) filter (where r.status = 'failed') as failed,
         coalesce(sum(r.fetched), 0) as rows_fetched, coalesce(sum(r.inserted + r.updated + r.deleted), 0) as rows_changed,
         avg(extract(epoch from r.finished_at - r.started_at))::numeric as avg_seconds,
         round(max(extract(epoch from r.finished_at - r.started_at))::numeric, 3) as max_seconds
    from sync.run r
   where not r.dry_run and r.finished_at is not null and ($2::text is null or r.entity = $2)
     and r.started_at >= date_trunc($1, now()) - $3::interval and r.finished_at >= date_trunc($1, now()) - $3::interval
   group by 1`;

const VIEW_TREND = `
  select bucket, sum(runs) as runs, sum(failed) as failed, sum(rows_fetched) as rows_fetched, sum(rows_changed) as rows_changed,
         sum(avg_seconds * runs) / nullif(sum(runs), 0) as avg_seconds, max(max_seconds) as max_seconds
    from sync.trend where granularity = $1 and ($2::text is null or entity = $2) group by bucket`;

async function trend(ctx: ServerContext, req: Request, res: ServerResponse): Promise<void> {
  const q = parseWith(TrendQuery, queryOf(req.url), 'GET /api/sync/trend');
  const { pool } = ctx.engine;
  // Every bucket of the window, empty ones as zeros: a chart's x axis is time.
  const buckets = pool.query(
    `with buckets as (
       select generate_series(date_trunc($1, now()) - $3::interval, date_trunc($1, now()), ('1 ' || $1)::interval) as bucket),
     t as (${q.granularity === 'minute' ? MINUTE_TREND : VIEW_TREND})
     select b.bucket, coalesce(t.runs, 0)::float8 as runs, coalesce(t.failed, 0)::float8 as failed,
            coalesce(t.rows_fetched, 0)::float8 as "rowsFetched", coalesce(t.rows_changed, 0)::float8 as "rowsChanged",
            round(t.avg_seconds, 3)::float8 as "avgSeconds", t.max_seconds::float8 as "maxSeconds"
       from buckets b left join t on t.bucket = b.bucket order by b.bucket`,
    [q.granularity, q.entity ?? null, TREND_WINDOW[q.granularity]]);
  // When the runs begin (within sync.trend's 90 days): the dashboard's Auto range fits its axis to it.
  const first = pool.query<{ first: Date | null }>(
    `select min(started_at) as first from sync.run
      where not dry_run and finished_at is not null and started_at > now() - interval '90 days' and ($1::text is null or entity = $1)`,
    [q.entity ?? null]);
  const [{ rows }, { rows: [{ first: firstRunAt }] }] = await Promise.all([buckets, first]);
  sendJson(res, 200, { granularity: q.granularity, entity: q.entity ?? null, firstRunAt, buckets: rows });
}

export const syncRoutes: Route[] = [
  { method: 'POST', path: '/api/sync/manual', auth: 'bearer', handler: manual },
  { method: 'GET', path: '/api/sync/status', auth: 'bearer', handler: status },
  { method: 'GET', path: '/api/sync/progress/:runId', auth: 'stream', handler: progress },
  { method: 'POST', path: '/api/sync/progress/:runId/ticket', auth: 'bearer', handler: ticket },
  { method: 'POST', path: '/api/sync/cancel/:runId', auth: 'bearer', handler: cancel },
  { method: 'GET', path: '/api/sync/runs', auth: 'bearer', handler: runs },
  { method: 'GET', path: '/api/sync/trend', auth: 'bearer', handler: trend },
];
