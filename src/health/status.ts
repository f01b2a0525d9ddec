/**
 * sync.status as the CLI and the operator API read it: one row an entity,
 * with sync.health's rates, numbers as numbers. Here, not in either, so a
 * server never depends on a terminal program.
 */
import type { Pool } from '../db/pool.js';

export interface StatusRow {
  entity: string;
  enabled: boolean;
  state: string;
  stale: boolean;
  last_status: string | null;
  last_run_id: number | null;
  last_success_at: Date | null;
  lag: string | null;
  lag_seconds: number | null;
  next_run_at: Date | null;
  next_run_in_seconds: number | null;
  schedule: string | null;
  sync_interval: string | null;
  freshness: string | null;
  runs_24h: number;
  success_rate_24h: number | null;
  runs_7d: number;
  success_rate_7d: number | null;
  open_gaps: number;
  open_alerts: number;
  quarantined_records: number;
  last_error: string | null;
  /** "log" for log capture, else null; then its lag behind the source's log and the WAL its slot keeps. */
  capture: string | null;
  log_lag_bytes: number | null;
  log_lag_seconds: number | null;
  log_retained_bytes: number | null;
  log_wal_status: string | null;
}

/** Rows of sync.status with sync.health's rates, numbers as numbers. */
export async function statusRows(pool: Pool): Promise<StatusRow[]> {
  const { rows } = await pool.query<StatusRow>(
    `select s.entity, s.enabled, s.state, s.stale, s.last_status, s.last_run_id::float8 as last_run_id,
            s.last_started_at, s.last_finished_at, s.last_success_at,
            case when s.lag is null then null else date_trunc('second', s.lag)::text end as lag,
            extract(epoch from s.lag)::float8 as lag_seconds,
            s.next_run_at, extract(epoch from s.next_run_at - now())::float8 as next_run_in_seconds,
            s.schedule, s.sync_interval::text as sync_interval, s.freshness::text as freshness,
            coalesce(h.runs_24h, 0)::int as runs_24h, h.success_rate_24h::float8 as success_rate_24h,
            coalesce(h.runs_7d, 0)::int as runs_7d, h.success_rate_7d::float8 as success_rate_7d,
            s.open_gaps::int as open_gaps, s.open_alerts::int as open_alerts,
            coalesce(h.quarantined_records, 0)::int as quarantined_records,
            s.last_inserted::float8 as last_inserted, s.last_updated::float8 as last_updated,
            s.last_deleted::float8 as last_deleted, s.last_quarantined::float8 as last_quarantined,
            s.cursor, s.last_error, s.capture, s.log_lag_bytes::float8 as log_lag_bytes,
            s.log_lag_seconds::float8 as log_lag_seconds, s.log_retained_bytes::float8 as log_retained_bytes, s.log_wal_status
       from sync.status s left join sync.health h on h.entity = s.entity
      order by s.entity`);
  return rows;
}

/** Whether the entity needs a person: its last run failed, or it is enabled and past its freshness window. */
export const unhealthy = (r: Pick<StatusRow, 'state' | 'stale' | 'enabled'>) => ['failing', 'stalled'].includes(r.state) || (r.enabled && r.stale);
