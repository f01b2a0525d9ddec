/**
 * /api/alerts: sync.alert, open ones first; acknowledging goes through
 * sync.ack_alert, as from psql and the CLI.
 */
import type { ServerResponse } from 'node:http';
import { z } from 'zod';
import type { Pool } from '../../db/pool.js';
import { HttpError, parseWith, queryOf, readJson, sendJson } from '../http.js';
import type { Request, Route, ServerContext } from '../router.js';
import { idParam } from './sync.js';

const ALERT_COLUMNS = `a.id::float8 as id, a.kind, a.severity, a.entity, a.message, a.details, a.occurrences,
  case when a.resolved_at is not null then 'resolved' when a.acknowledged_at is not null then 'acknowledged' else 'open' end as state,
  a.created_at as "createdAt", a.last_seen_at as "lastSeenAt", a.acknowledged_by as "acknowledgedBy",
  a.acknowledged_at as "acknowledgedAt", a.resolved_at as "resolvedAt"`;

const AlertsQuery = z.object({
  state: z.enum(['open', 'all']).default('open'),
  entity: z.string().min(1).optional(),
}).strict();

async function list(ctx: ServerContext, req: Request, res: ServerResponse): Promise<void> {
  const q = parseWith(AlertsQuery, queryOf(req.url), 'GET /api/alerts');
  // "all": the open ones and those acknowledged or resolved in the last 7 days (as `syncline alerts --all`).
  const { rows } = await ctx.engine.pool.query(
    `select ${ALERT_COLUMNS} from sync.alert a
      where ($2::text is null or a.entity = $2)
        and ((a.acknowledged_at is null and a.resolved_at is null)
             or ($1 and greatest(a.acknowledged_at, a.resolved_at) > now() - interval '7 days'))
      order by (a.acknowledged_at is null and a.resolved_at is null) desc,
               case a.severity when 'critical' then 0 when 'warning' then 1 else 2 end, a.created_at desc, a.id desc`,
    [q.state === 'all', q.entity ?? null]);
  sendJson(res, 200, { alerts: rows });
}

const AckBody = z.object({
  by: z.string().trim().min(1, 'must not be empty').max(200),
}).strict();

async function readAlert(pool: Pool, id: number) {
  return (await pool.query(`select ${ALERT_COLUMNS} from sync.alert a where a.id = $1`, [id])).rows[0];
}

async function ack(ctx: ServerContext, req: Request, res: ServerResponse): Promise<void> {
  const id = idParam(req.params.id, 'alert id');
  const { by } = parseWith(AckBody, await readJson(req.raw), `POST /api/alerts/${id}/ack`, 'say who acknowledges: {"by": "your name"}');
  const { pool } = ctx.engine;
  const before = await readAlert(pool, id);
  if (!before) throw new HttpError(404, `no alert ${id}`, 'GET /api/alerts?state=all lists the recent ones');
  const what = `alert ${id} (${before.severity} ${before.kind}${before.entity ? ` on ${before.entity}` : ''})`;
  if (before.state === 'acknowledged') {
    throw new HttpError(409, `${what} is not open: ${before.acknowledgedBy} acknowledged it already`, undefined, { alert: before });
  }
  if (before.state === 'resolved') {
    throw new HttpError(409, `${what} is not open: it was resolved when its condition ended; nothing to acknowledge`, undefined, { alert: before });
  }
  const ok = (await pool.query<{ ok: boolean }>('select sync.ack_alert($1, $2) as ok', [id, by])).rows[0].ok;
  if (!ok) throw new HttpError(409, `${what} is not open: it was acknowledged meanwhile`, undefined, { alert: await readAlert(pool, id) });
  sendJson(res, 200, { alert: await readAlert(pool, id) });
}

export const alertRoutes: Route[] = [
  { method: 'GET', path: '/api/alerts', auth: 'bearer', handler: list },
  { method: 'POST', path: '/api/alerts/:id/ack', auth: 'bearer', handler: ack },
];
