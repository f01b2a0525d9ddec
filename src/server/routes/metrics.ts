/**
 * GET /metrics in the Prometheus text format (0.0.4). Everything is read
 * from the sync schema at scrape time, so every Syncline process reports the
 * same numbers. They are gauges over windows (runs in the last 24 hours…):
 * retention deletes old runs, so counters since the beginning would shrink.
 */
import type { ServerResponse } from 'node:http';
import type { Pool } from '../../db/pool.js';
import { sendText } from '../http.js';
import type { Request, Route, ServerContext } from '../router.js';

type Labels = Record<string, string>;
interface Family {
  name: string;
  help: string;
  samples: { labels: Labels; value: number }[];
}

const escapeLabel = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
const escapeHelp = (v: string) => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v > 0 ? '+Inf' : '-Inf';
  return String(v);
}

export function render(families: Family[]): string {
  const out: string[] = [];
  for (const f of families) {
    out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} gauge`);
    for (const s of f.samples) {
      const labels = Object.entries(s.labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',');
      out.push(`${f.name}${labels ? `{${labels}}` : ''} ${formatValue(s.value)}`);
    }
  }
  return `${out.join('\n')}\n`;
}

const STATES = ['ok', 'failing', 'stalled', 'running', 'cancelled', 'never run', 'skipped', 'disabled'];

interface EntityRow {
  entity: string;
  state: string;
  stale: boolean;
  lag_s: number | null;
  last_success_ts: number | null;
  last_duration_s: number | null;
  open_gaps: number;
  quarantined: number;
  rate_24h: number | null;
  rate_7d: number | null;
}

async function entityFamilies(pool: Pool): Promise<Family[]> {
  const { rows } = await pool.query<EntityRow>(
    `select s.entity, s.state, coalesce(s.stale, false) as stale, extract(epoch from s.lag)::float8 as lag_s,
            extract(epoch from s.last_success_at)::float8 as last_success_ts,
            (select extract(epoch from r.finished_at - r.started_at)::float8 from sync.run r
              where r.entity = s.entity and not r.dry_run and r.finished_at is not null order by r.id desc limit 1) as last_duration_s,
            s.open_gaps::float8 as open_gaps, coalesce(h.quarantined_records, 0)::float8 as quarantined,
            h.success_rate_24h::float8 / 100 as rate_24h, h.success_rate_7d::float8 / 100 as rate_7d
       from sync.status s left join sync.health h on h.entity = s.entity order by s.entity`);
  const per = (pick: (r: EntityRow) => number | null) =>
    rows.filter((r) => pick(r) !== null).map((r) => ({ labels: { entity: r.entity }, value: pick(r)! }));
  return [
    { name: 'syncline_entity_state', help: 'The entity\'s state as sync.status shows it: 1 for the current one.',
      samples: rows.flatMap((r) => STATES.map((s) => ({ labels: { entity: r.entity, state: s }, value: r.state === s ? 1 : 0 }))) },
    { name: 'syncline_entity_stale', help: 'Whether the entity is past its freshness window without a successful run.', samples: per((r) => (r.stale ? 1 : 0)) },
    { name: 'syncline_lag_seconds', help: 'Seconds since the entity\'s last successful run ended.', samples: per((r) => r.lag_s) },
    { name: 'syncline_last_success_timestamp_seconds', help: 'When the entity\'s last successful run ended (Unix time).', samples: per((r) => r.last_success_ts) },
    { name: 'syncline_last_run_duration_seconds', help: 'How long the entity\'s last finished run took.', samples: per((r) => r.last_duration_s) },
    { name: 'syncline_open_gaps', help: 'Records the source has and the target lacks (sync.gaps).', samples: per((r) => r.open_gaps) },
    { name: 'syncline_quarantined_records', help: 'Records held in quarantine (sync.run_error, unresolved).', samples: per((r) => r.quarantined) },
    { name: 'syncline_success_ratio', help: 'Succeeded (or partial) runs among finished ones, skipped and cancelled aside (sync.health).',
      samples: [...rows.filter((r) => r.rate_24h !== null).map((r) => ({ labels: { entity: r.entity, window: '24h' }, value: r.rate_24h! })),
        ...rows.filter((r) => r.rate_7d !== null).map((r) => ({ labels: { entity: r.entity, window: '7d' }, value: r.rate_7d! }))] },
  ];
}

async function runFamilies(pool: Pool): Promise<Family[]> {
  const { rows } = await pool.query<{ entity: string; status: string; runs: number; seconds: number; fetched: number;
    inserted: number; updated: number; deleted: number; quarantined: number }>(
    `select entity, status, count(*)::float8 as runs,
            coalesce(sum(extract(epoch from finished_at - started_at)), 0)::float8 as seconds,
            coalesce(sum(fetched), 0)::float8 as fetched, coalesce(sum(inserted), 0)::float8 as inserted,
            coalesce(sum(updated), 0)::float8 as updated, coalesce(sum(deleted), 0)::float8 as deleted,
            coalesce(sum(quarantined), 0)::float8 as quarantined
       from sync.run where not dry_run and started_at > now() - interval '24 hours'
      group by entity, status order by entity, status`);
  const actions = ['fetched', 'inserted', 'updated', 'deleted', 'quarantined'] as const;
  const byEntity = new Map<string, Record<string, number>>();
  for (const r of rows) {
    const sums = byEntity.get(r.entity) ?? Object.fromEntries(actions.map((a) => [a, 0]));
    for (const a of actions) sums[a] += r[a];
    byEntity.set(r.entity, sums);
  }
  return [
    { name: 'syncline_runs_24h', help: 'Runs started in the last 24 hours, by status (dry runs aside).',
      samples: rows.map((r) => ({ labels: { entity: r.entity, status: r.status }, value: r.runs })) },
    { name: 'syncline_run_seconds_24h', help: 'Seconds spent in the finished runs of the last 24 hours, by status (divide by syncline_runs_24h for the mean).',
      samples: rows.filter((r) => r.status !== 'running').map((r) => ({ labels: { entity: r.entity, status: r.status }, value: r.seconds })) },
    { name: 'syncline_rows_24h', help: 'Records fetched, inserted, updated, deleted and quarantined by the runs of the last 24 hours.',
      samples: [...byEntity].flatMap(([entity, sums]) => actions.map((a) => ({ labels: { entity, action: a }, value: sums[a] }))) },
  ];
}

async function phaseFamily(pool: Pool): Promise<Family> {
  const { rows } = await pool.query<{ entity: string; phase: string; p50: number; p95: number }>(
    `select entity, phase, p50_ms::float8 / 1000 as p50, p95_ms::float8 / 1000 as p95 from sync.phase_stats order by entity, phase`);
  return {
    name: 'syncline_phase_duration_seconds', help: 'Median and 95th percentile of each phase of the successful runs of the last 7 days (sync.phase_stats).',
    samples: rows.flatMap((r) => [
      { labels: { entity: r.entity, phase: r.phase, quantile: '0.5' }, value: r.p50 },
      { labels: { entity: r.entity, phase: r.phase, quantile: '0.95' }, value: r.p95 },
    ]),
  };
}

/** Log capture: how far each entity is behind its source's log, and the WAL its slot keeps there. */
async function logFamilies(pool: Pool): Promise<Family[]> {
  const { rows } = await pool.query<{ entity: string; lag_bytes: number | null; lag_s: number | null; retained: number | null; lost: boolean }>(
    `select entity, log_lag_bytes::float8 as lag_bytes, log_lag_seconds::float8 as lag_s, log_retained_bytes::float8 as retained,
            coalesce(log_wal_status in ('lost', 'missing', 'moved'), false) as lost
       from sync.status where capture = 'log' order by entity`);
  const per = (pick: (r: (typeof rows)[number]) => number | null) =>
    rows.filter((r) => pick(r) !== null).map((r) => ({ labels: { entity: r.entity }, value: pick(r)! }));
  return [
    { name: 'syncline_log_lag_bytes', help: 'Log capture: WAL between the position applied to the target and the source\'s position when last read (bytes).', samples: per((r) => r.lag_bytes) },
    { name: 'syncline_log_lag_seconds', help: 'Log capture: seconds since the entity was last caught up with its source\'s log (every commit before then is in the target).', samples: per((r) => r.lag_s) },
    { name: 'syncline_log_retained_wal_bytes', help: 'Log capture: WAL the entity\'s replication slot keeps on the source\'s disk.', samples: per((r) => r.retained) },
    { name: 'syncline_log_slot_lost', help: 'Log capture: 1 when the entity\'s replication slot is gone or lost (a new snapshot is needed: syncline sync <entity> --full).', samples: per((r) => (r.lost ? 1 : 0)) },
  ];
}

async function alertFamily(pool: Pool): Promise<Family> {
  const { rows } = await pool.query<{ entity: string; severity: string; n: number }>(
    `select coalesce(entity, '') as entity, severity, count(*)::float8 as n from sync.alert
      where acknowledged_at is null and resolved_at is null group by 1, 2 order by 1, 2`);
  return {
    name: 'syncline_open_alerts', help: 'Alerts neither acknowledged nor resolved, by entity and severity.',
    samples: rows.map((r) => ({ labels: { entity: r.entity, severity: r.severity }, value: r.n })),
  };
}

async function metrics(ctx: ServerContext, _req: Request, res: ServerResponse): Promise<void> {
  const { pool } = ctx.engine;
  const families = [...await entityFamilies(pool), ...await runFamilies(pool), await phaseFamily(pool), await alertFamily(pool),
    ...await logFamilies(pool)];
  sendText(res, 200, render(families), 'text/plain; version=0.0.4; charset=utf-8', { 'cache-control': 'no-store' });
}

export const metricsRoutes: Route[] = [
  { method: 'GET', path: '/metrics', auth: 'bearer', handler: metrics },
];
