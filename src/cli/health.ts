/**
 * The health verbs: `status`, `alerts` and `runs`. They read the views and
 * functions of the sync schema (sync.status, sync.health, sync.alert,
 * sync.runs) and print them for an 80-column terminal; --json prints the
 * rows whole for scripts. None of them needs a valid config file: they
 * read only its "database" (the embedded server's database it keeps its
 * entities in), if it can be read.
 */
import os from 'node:os';
import path from 'node:path';
import { DEFAULT_CONFIG_FILE } from '../config/errors.js';
import { configDatabase, openMigratedPool } from '../db/database.js';
import type { Pool } from '../db/pool.js';
import { EXIT, UsageError, type GlobalOptions } from './context.js';
import { printTable } from './table.js';
import { statusRows, unhealthy } from '../health/status.js';

// Tables are cut to this width when stdout is not a terminal (a pipe, a log):
// wider lines wrap in an 80-column terminal and become unreadable.
const DEFAULT_WIDTH = 80;
// A free-text column (an error, a message) narrower than this says too little
// to be worth a column: it is printed under the table, one line a row, instead.
const MIN_TEXT_WIDTH = 30;
// Entity names longer than this are cut in tables (--json has them whole).
const ENTITY_WIDTH = 16;
// Names are cut no shorter than this to make a table fit.
const SHRINK_MIN = 8;

export const RUN_STATUSES = ['running', 'succeeded', 'partial', 'failed', 'cancelled', 'skipped'] as const;

async function withPool<T>(opts: GlobalOptions, fn: (pool: Pool) => Promise<T>): Promise<T> {
  const file = path.resolve(opts.config ?? process.env.SYNCLINE_CONFIG ?? DEFAULT_CONFIG_FILE);
  const { db, pool } = await openMigratedPool(process.env, configDatabase(file));
  try {
    return await fn(pool);
  } finally {
    await pool.end();
    await db.close();
  }
}

function outputWidth(): number {
  return process.stdout.isTTY && process.stdout.columns ? process.stdout.columns : DEFAULT_WIDTH;
}

/** One line, at most `n` characters (a cut value ends with …). */
export function cut(value: unknown, n: number): string {
  if (value === null || value === undefined) return '';
  const chars = [...String(value).replace(/\s+/g, ' ').trim()];
  return chars.length <= n ? chars.join('') : `${chars.slice(0, Math.max(n - 1, 0)).join('')}…`;
}

/** 45 s, 3 min, 5 h, 2 d: a span for people, rounded to its largest unit. */
export function human(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const min = Math.round(s / 60);
  if (min < 60) return `${min} min`;
  const h = Math.round(s / 3600);
  if (h < 24) return `${h} h`;
  return `${Math.round(s / 86_400)} d`;
}

export const ago = (seconds: number | null | undefined) => (seconds === null || seconds === undefined ? '' : `${human(seconds)} ago`);
const inFuture = (seconds: number | null | undefined) => (seconds === null || seconds === undefined ? '' : `in ${human(seconds)}`);

/** A run's duration: 0.4 s, 12 s, 3 min. */
export function duration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined) return '';
  return seconds < 10 ? `${seconds.toFixed(1)} s` : human(seconds);
}

// 99.6% shows as 99%, not 100%: 100% means no run failed (and 0% that none succeeded).
const pct = (v: number | null) => (v === null ? '–' : `${v >= 100 ? 100 : v <= 0 ? 0 : Math.min(99, Math.max(1, Math.round(v)))}%`);

/**
 * Prints rows with the table printer, keeping lines within the output width:
 * the `shrink` columns (names) are cut, in that order, down to SHRINK_MIN
 * characters while the table is too wide; the free-text column `text` gets
 * what is left, and when that is too little it leaves the table and follows
 * it as "<label>: <text>" lines.
 */
function printFitted(rows: Record<string, string>[], opts: { text: string; label: (r: Record<string, string>) => string; shrink?: string[] }): void {
  if (!rows.length) {
    printTable([]);
    return;
  }
  const width = outputWidth();
  const { text } = opts;
  const others = Object.keys(rows[0]).filter((c) => c !== text);
  const widths = new Map(others.map((c) => [c, Math.max(c.length, ...rows.map((r) => [...r[c]].length))]));
  const used = () => [...widths.values()].reduce((a, b) => a + b, 0) + 3 * (others.length - 1);
  const shrinkable = (opts.shrink ?? []).filter((c) => widths.has(c));
  while (used() > width) {
    const next = shrinkable.find((c) => widths.get(c)! > Math.max(SHRINK_MIN, c.length));
    if (!next) break;
    widths.set(next, widths.get(next)! - 1);
  }
  const cells = rows.map((r) => Object.fromEntries(others.map((c) => [c, cut(r[c], widths.get(c)!)])));
  const room = width - used() - 3;
  const withText = rows.filter((r) => r[text]);
  if (!withText.length) {
    printTable(cells);
  } else if (room >= MIN_TEXT_WIDTH) {
    printTable(cells.map((c, i) => ({ ...c, [text]: cut(rows[i][text], room) })));
  } else {
    printTable(cells);
    process.stdout.write(`${text}:\n`);
    for (const r of withText) {
      const head = `  ${opts.label(r)}: `;
      process.stdout.write(`${head}${cut(r[text], width - head.length)}\n`);
    }
  }
}

// ---------------------------------------------------------------- status

export async function status(opts: GlobalOptions & { json?: boolean }): Promise<number> {
  return withPool(opts, async (pool) => {
    const rows = await statusRows(pool);
    if (opts.json) {
      process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    } else {
      printFitted(rows.map((r) => ({
        entity: cut(r.entity, ENTITY_WIDTH),
        // The stale flag rides on the state: one column fewer keeps the table within 80.
        state: r.stale && r.enabled ? `${r.state}, stale` : r.state,
        'last ok': r.last_success_at ? ago(r.lag_seconds) : 'never',
        'next run': inFuture(r.next_run_in_seconds),
        'ok 24h/7d': r.runs_7d ? `${pct(r.success_rate_24h)}/${pct(r.success_rate_7d)}` : '–',
        gaps: String(r.open_gaps),
        alerts: String(r.open_alerts),
        'last error': ['failing', 'skipped', 'stalled'].includes(r.state) ? (r.last_error ?? '') : '',
      })), { text: 'last error', label: (r) => r.entity, shrink: ['entity'] });
    }
    return rows.some(unhealthy) ? EXIT.failed : EXIT.ok;
  });
}

// ---------------------------------------------------------------- alerts

export interface AlertsOptions extends GlobalOptions {
  all?: boolean;
  ack?: string;
  by?: string;
  json?: boolean;
}

interface AlertRow {
  id: number;
  created_at: Date;
  age_seconds: number;
  severity: string;
  kind: string;
  entity: string | null;
  occurrences: number;
  message: string;
  state: 'open' | 'acknowledged' | 'resolved';
  acknowledged_by: string | null;
  acknowledged_at: Date | null;
  resolved_at: Date | null;
  last_seen_at: Date;
}

const ALERT_COLUMNS = `a.id::float8 as id, a.created_at, extract(epoch from now() - a.created_at)::float8 as age_seconds,
  a.severity, a.kind, a.entity, a.occurrences, a.message, a.details,
  case when a.resolved_at is not null then 'resolved' when a.acknowledged_at is not null then 'acknowledged' else 'open' end as state,
  a.acknowledged_by, a.acknowledged_at, a.resolved_at, a.last_seen_at`;

function defaultAcker(): string {
  if (process.env.USER) return process.env.USER;
  try {
    return os.userInfo().username;
  } catch {
    return '';
  }
}

export async function alerts(opts: AlertsOptions): Promise<number> {
  if (opts.by !== undefined && opts.ack === undefined) throw new UsageError('--by names who acknowledges: use it with --ack <id>');
  let ackId: number | undefined;
  if (opts.ack !== undefined) {
    if (!/^[1-9][0-9]{0,17}$/.test(opts.ack.trim())) throw new UsageError(`--ack: "${opts.ack}" is not an alert id — give the number in the id column of \`alerts\`, e.g. --ack 12`);
    ackId = Number(opts.ack.trim());
  }
  const by = (opts.by ?? defaultAcker()).trim();
  if (ackId !== undefined && !by) throw new UsageError('--by: say who acknowledges, e.g. --by "$USER" (no user name was found in $USER)');
  return withPool(opts, async (pool) => (ackId !== undefined ? acknowledge(pool, ackId, by, opts.json) : listAlerts(pool, opts)));
}

async function listAlerts(pool: Pool, opts: AlertsOptions): Promise<number> {
  const { rows } = await pool.query<AlertRow>(
    `select ${ALERT_COLUMNS} from sync.alert a
      where (a.acknowledged_at is null and a.resolved_at is null)
         or ($1 and greatest(a.acknowledged_at, a.resolved_at) > now() - interval '7 days')
      order by a.created_at desc, a.id desc`, [opts.all ?? false]);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    return EXIT.ok;
  }
  printFitted(rows.map((a) => ({
    id: String(a.id),
    when: ago(a.age_seconds),
    severity: a.severity,
    kind: cut(a.kind, 20),
    entity: cut(a.entity ?? '', ENTITY_WIDTH),
    times: String(a.occurrences),
    ...(opts.all ? { state: a.state === 'acknowledged' ? `ack ${a.acknowledged_by ?? ''}` : a.state } : {}),
    message: a.message,
  })), { text: 'message', label: (a) => `#${a.id}`, shrink: ['entity', 'kind', 'state'] });
  if (!rows.length && !opts.all) process.stdout.write('no open alerts (`alerts --all` shows those of the last 7 days)\n');
  return EXIT.ok;
}

async function acknowledge(pool: Pool, id: number, by: string, json?: boolean): Promise<number> {
  const before = (await pool.query<AlertRow>(`select ${ALERT_COLUMNS} from sync.alert a where a.id = $1`, [id])).rows[0];
  const what = before ? `alert ${id} (${before.severity} ${before.kind}${before.entity ? ` on ${before.entity}` : ''})` : '';
  let problem: string | undefined;
  if (!before) problem = `no alert ${id} — \`alerts --all\` lists the recent ones`;
  else if (before.acknowledged_at) problem = `${what} is not open: ${before.acknowledged_by} acknowledged it already (${before.acknowledged_at.toISOString()})`;
  else if (before.resolved_at) problem = `${what} is not open: it was resolved (${before.resolved_at.toISOString()}) when its condition ended; nothing to acknowledge`;
  else if (!(await pool.query<{ ok: boolean }>('select sync.ack_alert($1, $2) as ok', [id, by])).rows[0].ok) {
    problem = `${what} is not open: it was acknowledged meanwhile`;
  }
  if (problem) {
    process.stderr.write(`${problem}\n`);
    return EXIT.failed;
  }
  const after = (await pool.query<AlertRow>(`select ${ALERT_COLUMNS} from sync.alert a where a.id = $1`, [id])).rows[0];
  if (json) process.stdout.write(`${JSON.stringify(after, null, 2)}\n`);
  else process.stdout.write(`${cut(`acknowledged ${what} as ${by}`, outputWidth())}\n  ${cut(after.message, outputWidth() - 2)}\n`);
  return EXIT.ok;
}

// ---------------------------------------------------------------- runs

export interface RunsOptions extends GlobalOptions {
  entity?: string;
  since?: string;
  until?: string;
  status?: string;
  limit?: string;
  json?: boolean;
}

// Shorthand for "this long ago": 30m, 2h, 1d, 1w (also 90s).
const AGO_UNITS: Record<string, string> = { s: 'seconds', m: 'minutes', min: 'minutes', h: 'hours', d: 'days', w: 'weeks' };
const AGO = /^(\d{1,6})\s*(s|m|min|h|d|w)$/i;

/** A --since/--until value as a timestamptz text: "2h" is now() minus 2 hours, anything else is what Postgres reads. */
export async function resolveTime(pool: Pool, option: string, value: string): Promise<string> {
  const m = AGO.exec(value.trim());
  try {
    const { rows } = m
      ? await pool.query<{ t: string }>('select (now() - $1::interval)::text as t', [`${m[1]} ${AGO_UNITS[m[2].toLowerCase()]}`])
      : await pool.query<{ t: string }>('select $1::timestamptz::text as t', [value]);
    return rows[0].t;
  } catch (err) {
    if (!/^22/.test((err as { code?: string }).code ?? '')) throw err;
    throw new UsageError(`${option}: "${value}" is not a time — give one Postgres reads (e.g. ${option} '2026-11-20 08:00' `
      + `or ${option} yesterday) or a span back from now: 30m, 2h, 1d, 1w`, { cause: err });
  }
}

interface RunRow {
  id: number;
  entity: string;
  trigger: string;
  status: string;
  started_at: Date;
  started: string;
  seconds: number | null;
  fetched: number | null;
  inserted: number | null;
  updated: number | null;
  deleted: number | null;
  quarantined: number | null;
  error: string | null;
  /** An http run's requests (detail.http): requests, retries, 429s, waits, the limit paced by. */
  http: { requests: number; throttled: number; wait_ms: { budget: number; retry: number } } | null;
}

export async function runs(opts: RunsOptions): Promise<number> {
  if (opts.status !== undefined && !(RUN_STATUSES as readonly string[]).includes(opts.status)) {
    throw new UsageError(`--status: "${opts.status}" is not a run status — use one of ${RUN_STATUSES.join(', ')}`);
  }
  let limit = 30;
  if (opts.limit !== undefined) {
    if (!/^[1-9][0-9]{0,6}$/.test(opts.limit.trim())) throw new UsageError(`--limit: "${opts.limit}" is not a positive number of runs, e.g. --limit 50`);
    limit = Number(opts.limit.trim());
  }
  return withPool(opts, async (pool) => {
    const since = opts.since === undefined ? null : await resolveTime(pool, '--since', opts.since);
    const until = opts.until === undefined ? null : await resolveTime(pool, '--until', opts.until);
    if (opts.entity !== undefined) {
      const known = (await pool.query<{ name: string }>('select name from sync.entity order by name')).rows.map((r) => r.name);
      const ran = (await pool.query('select 1 from sync.run where entity = $1 limit 1', [opts.entity])).rowCount;
      if (!known.includes(opts.entity) && !ran) {
        throw new UsageError(`--entity: no entity "${opts.entity}" — sync.entity has: ${known.join(', ') || '(none)'}`);
      }
    }
    const { rows } = await pool.query<RunRow>(
      `select r.id::float8 as id, r.entity, r.trigger, r.status, r.dry_run, r.full_refresh, r.started_at, r.finished_at,
              to_char(r.started_at at time zone 'UTC', 'MM-DD HH24:MI') as started,
              extract(epoch from coalesce(r.finished_at, now()) - r.started_at)::float8 as seconds,
              r.fetched::float8 as fetched, r.inserted::float8 as inserted, r.updated::float8 as updated,
              r.deleted::float8 as deleted, r.unchanged::float8 as unchanged, r.quarantined::float8 as quarantined,
              r.deferred::float8 as deferred, r.phases, r.error, r.detail -> 'http' as http
         from sync.runs($1, $2::timestamptz, $3::timestamptz, $4, $5) r`,
      [opts.entity ?? null, since, until, opts.status ?? null, limit]);
    if (opts.json) {
      process.stdout.write(`${JSON.stringify(rows.map(({ started: _, ...r }) => r), null, 2)}\n`);
      return EXIT.ok;
    }
    // fetched, +ins ~upd -del and quarantined share one column: ten columns do not fit in 80.
    const rowCounts = (r: RunRow) => [
      r.fetched === null ? '' : String(r.fetched),
      r.inserted === null ? '' : `+${r.inserted} ~${r.updated ?? 0} -${r.deleted ?? 0}`,
      r.quarantined ? `!${r.quarantined}` : '',
      r.http?.throttled ? `${r.http.throttled}×429` : '',
    ].filter(Boolean).join(' ');
    printFitted(rows.map((r) => ({
      id: String(r.id),
      entity: cut(r.entity, ENTITY_WIDTH),
      trigger: r.trigger,
      status: r.status,
      'started UTC': r.started,
      took: r.status === 'running' ? '' : duration(r.seconds),
      rows: rowCounts(r),
      error: r.error ?? '',
    })), { text: 'error', label: (r) => `run ${r.id}`, shrink: ['entity', 'trigger'] });
    if (rows.some((r) => r.fetched !== null)) process.stdout.write('rows: fetched +inserted ~updated -deleted !quarantined\n');
    if (rows.some((r) => r.http?.throttled)) process.stdout.write('N×429: the vendor answered 429 (rate limited) N times; --json shows the http requests and waits of each run\n');
    return EXIT.ok;
  });
}
