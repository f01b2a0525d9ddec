/**
 * /api/sync/config: the tunables of sync.entity. A change is a plain UPDATE,
 * so the table's trigger judges it exactly as it judges one from psql; its
 * message and hint come back as a 400. The audit (sync.config_change) names
 * this API as the application, and running workers follow the change.
 */
import type { ServerResponse } from 'node:http';
import { z } from 'zod';
import { quoteIdent } from '../../db/database.js';
import { HttpError, parseWith, readJson, sendJson } from '../http.js';
import type { Request, Route, ServerContext } from '../router.js';

// Each tunable column and the SQL type its value is cast to.
const TUNABLES = {
  schedule: 'text', sync_interval: 'interval', freshness: 'interval', failure_threshold: 'integer', gap_threshold: 'bigint',
  throughput_factor: 'numeric', retry_limit: 'integer', retry_delay: 'interval', verify: 'boolean', enabled: 'boolean',
  delete_guard: 'boolean', delete_guard_percent: 'numeric', delete_guard_rows: 'bigint',
} as const;
type Tunable = keyof typeof TUNABLES;
const INTERVALS = Object.keys(TUNABLES).filter((k) => TUNABLES[k as Tunable] === 'interval') as Tunable[];

// What the audit records as the application that made the change.
const APPLICATION_NAME = 'syncline api';

const INT32 = 2 ** 31;
// What a form field holds: plain decimal digits. Number() would also read
// "0x10", "1e3", " 16 " and "Infinity", which nobody types meaning a count.
const DECIMAL = /^-?\d+(\.\d+)?$/;
/** A number given as a number or a decimal string (a form field), within the column type's range. */
const numberField = (whole: boolean, max: number) => z.preprocess(
  (v) => (typeof v === 'string' && DECIMAL.test(v) ? Number(v) : v),
  z.number({ error: whole ? 'must be a whole number' : 'must be a number' })
    .refine((n) => !whole || Number.isInteger(n), 'must be a whole number')
    .refine((n) => Math.abs(n) < max, `must be between -${max} and ${max}`));
/** Text that may be cleared: an empty string is null. */
const nullableText = z.string().trim().max(200).nullable().transform((s) => (s === '' ? null : s));

const ConfigBody = z.object({
  schedule: nullableText,
  sync_interval: nullableText,
  freshness: nullableText,
  failure_threshold: numberField(true, INT32),
  gap_threshold: numberField(true, Number.MAX_SAFE_INTEGER),
  throughput_factor: numberField(false, 1e12),
  retry_limit: numberField(true, INT32),
  retry_delay: z.string().trim().min(1, 'must not be empty: an interval such as "5 minutes"').max(200),
  verify: z.boolean(),
  enabled: z.boolean(),
  delete_guard: z.boolean(),
  delete_guard_percent: numberField(false, 1e12),
  // Empty clears the limit by count.
  delete_guard_rows: z.union([z.literal('').transform(() => null), z.null(), numberField(true, Number.MAX_SAFE_INTEGER)]),
}).partial().strict().refine((b) => Object.keys(b).length > 0, `give at least one of: ${Object.keys(TUNABLES).join(', ')}`);

const SELECT_TUNABLES = `select e.name as entity, e.enabled, e.mode, e.source, e.target_schema || '.' || e.target_table as target,
    e.depends_on as "dependsOn", e.schedule,
    ${INTERVALS.map((c) => `extract(epoch from e.${c})::float8 as ${c}_s, e.${c}::text as ${c}_text`).join(', ')},
    e.failure_threshold, e.gap_threshold, e.throughput_factor::float8 as throughput_factor, e.retry_limit, e.verify,
    e.delete_guard, e.delete_guard_percent::float8 as delete_guard_percent, e.delete_guard_rows
  from sync.entity e`;

/** An interval as people write it and Postgres reads it back: "15 minutes", "2 hours". */
export function formatInterval(seconds: number | null, text: string | null): string | null {
  if (seconds === null) return null;
  const units: [number, string][] = [[86_400, 'day'], [3600, 'hour'], [60, 'minute'], [1, 'second']];
  for (const [size, unit] of units) {
    if (seconds > 0 && seconds % size === 0) {
      const n = seconds / size;
      return `${n} ${unit}${n === 1 ? '' : 's'}`;
    }
  }
  return text;
}

function shape(row: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(row)) {
    if (k.endsWith('_s') || k.endsWith('_text')) continue;
    out[k] = v;
  }
  for (const c of INTERVALS) out[c] = formatInterval(row[`${c}_s`] as number | null, row[`${c}_text`] as string | null);
  return out;
}

async function list(ctx: ServerContext, _req: Request, res: ServerResponse): Promise<void> {
  const { rows } = await ctx.engine.pool.query(`${SELECT_TUNABLES} order by e.name`);
  sendJson(res, 200, { entities: rows.map(shape) });
}

/** The field a trigger's message is about ("entity x: retry_delay … is below …"). */
function fieldOf(message: string, entity: string): Tunable | undefined {
  const prefix = `entity ${entity}: `;
  const text = message.startsWith(prefix) ? message.slice(prefix.length) : message;
  const hits = (Object.keys(TUNABLES) as Tunable[]).map((k) => [k, text.search(new RegExp(`\\b${k}\\b`))] as const)
    .filter(([, i]) => i >= 0).sort((a, b) => a[1] - b[1]);
  return hits[0]?.[0];
}

async function update(ctx: ServerContext, req: Request, res: ServerResponse): Promise<void> {
  const entity = req.params.entity;
  const body = parseWith(ConfigBody, await readJson(req.raw), `PUT /api/sync/config/${entity}`) as Partial<Record<Tunable, unknown>>;
  const fields = Object.keys(body) as Tunable[];
  const client = await ctx.engine.pool.connect();
  try {
    await client.query('begin');
    await client.query('select set_config($1, $2, true)', ['application_name', APPLICATION_NAME]);
    const before = await client.query(`${SELECT_TUNABLES} where e.name = $1 for update`, [entity]);
    if (!before.rowCount) throw new HttpError(404, `no entity "${entity}"`, 'GET /api/sync/config lists them');
    for (const f of fields.filter((k) => TUNABLES[k] === 'interval' && body[k] !== null)) await checkInterval(client, f, String(body[f]));
    const sets = fields.map((f, i) => `${quoteIdent(f)} = $${i + 2}::${TUNABLES[f]}`);
    await client.query(`update sync.entity set ${sets.join(', ')} where name = $1`, [entity, ...fields.map((f) => body[f])]);
    const after = await client.query(`${SELECT_TUNABLES} where e.name = $1`, [entity]);
    await client.query('commit');
    const was = shape(before.rows[0]);
    const now = shape(after.rows[0]);
    sendJson(res, 200, { entity: now, changed: Object.keys(TUNABLES).filter((k) => JSON.stringify(was[k]) !== JSON.stringify(now[k])) });
  } catch (err) {
    await client.query('rollback').catch(() => {});
    throw asValidation(err, entity);
  } finally {
    client.release();
  }
}

type Queryable = { query: (text: string, values?: unknown[]) => Promise<unknown> };

/** A 400 naming the field when Postgres cannot read the value as an interval. */
async function checkInterval(client: Queryable, field: Tunable, value: string): Promise<void> {
  try {
    await client.query('savepoint interval_check');
    await client.query('select $1::interval', [value]);
    await client.query('release savepoint interval_check');
  } catch (err) {
    if (!/^22/.test((err as { code?: string }).code ?? '')) throw err;
    await client.query('rollback to savepoint interval_check');
    throw new HttpError(400, `${field}: "${value}" is not an interval`, 'write it as Postgres reads an interval, e.g. "15 minutes", "2 hours", "1 day"', { field });
  }
}

/** The trigger's refusal (SQLSTATE 23514) as a 400 with its message and hint; anything else passes. */
function asValidation(err: unknown, entity: string): unknown {
  const e = err as { code?: string; message?: string; hint?: string };
  if (e.code !== '23514') return err;
  return new HttpError(400, e.message ?? 'the change was refused', e.hint, { field: fieldOf(e.message ?? '', entity) ?? null });
}

export const configRoutes: Route[] = [
  { method: 'GET', path: '/api/sync/config', auth: 'bearer', handler: list },
  { method: 'PUT', path: '/api/sync/config/:entity', auth: 'bearer', handler: update },
];
