/**
 * A run's progress as the API shows it: sync.run.progress (reported by the
 * engine about once a second), the run's status and counts so far, and a
 * total where the source gave one or the entity's last full fetch suggests one.
 */
import type { Pool } from '../db/pool.js';

export interface RunProgress {
  runId: number;
  entity: string;
  status: string;
  trigger: string;
  dryRun: boolean;
  /** fetch, merge or done as the engine reported it; "starting" before its first report. */
  phase: string;
  rows: number;
  pages: number | null;
  /** Records expected in all, where known. */
  total: number | null;
  /** The total is the entity's last full fetch, not a count the source gave. */
  totalEstimated: boolean;
  /** 0 to 100; 100 only once the run has succeeded. */
  percent: number | null;
  ratePerSecond: number | null;
  etaSeconds: number | null;
  cancelRequested: boolean;
  startedAt: Date;
  finishedAt: Date | null;
  elapsedSeconds: number;
  counts: Record<'fetched' | 'inserted' | 'updated' | 'deleted' | 'unchanged' | 'quarantined' | 'deferred' | 'held', number | null>;
  error: string | null;
}

interface Row {
  id: number;
  entity: string;
  status: string;
  trigger: string;
  dry_run: boolean;
  progress: { phase?: string; rows?: number; pages?: number | null; total?: number | null; rate?: number | null; eta_seconds?: number | null };
  cancel_requested: boolean;
  started_at: Date;
  finished_at: Date | null;
  elapsed: number;
  fetched: number | null;
  inserted: number | null;
  updated: number | null;
  deleted: number | null;
  unchanged: number | null;
  quarantined: number | null;
  deferred: number | null;
  held: number | null;
  error: string | null;
  previous_fetched: number | null;
}

/** The run's progress, or null when there is no such run. */
export async function readProgress(pool: Pool, runId: number): Promise<RunProgress | null> {
  const { rows } = await pool.query<Row>(
    `select r.id::float8 as id, r.entity, r.status, r.trigger, r.dry_run, r.progress, r.cancel_requested,
            r.started_at, r.finished_at, extract(epoch from coalesce(r.finished_at, now()) - r.started_at)::float8 as elapsed,
            r.fetched, r.inserted, r.updated, r.deleted, r.unchanged, r.quarantined, r.deferred, r.held, r.error,
            (select p.fetched from sync.run p
              where p.entity = r.entity and p.id < r.id and p.status in ('succeeded', 'partial') and p.full_refresh = r.full_refresh
                and p.detail -> 'keys' is null and p.detail -> 'window' is null
              order by p.id desc limit 1) as previous_fetched
       from sync.run r where r.id = $1`, [runId]);
  return rows.length ? toProgress(rows[0]) : null;
}

function toProgress(r: Row): RunProgress {
  const p = r.progress ?? {};
  const rows = Number(p.rows ?? r.fetched ?? 0);
  const reported = p.total ?? null;
  const total = reported ?? (r.previous_fetched || null);
  const rate = p.rate ?? null;
  const done = r.status === 'succeeded' || r.status === 'partial';
  return {
    runId: r.id, entity: r.entity, status: r.status, trigger: r.trigger, dryRun: r.dry_run,
    // The last report may be the merge's: a finished run is done whatever it said.
    phase: done ? 'done' : p.phase ?? (r.status === 'running' ? 'starting' : r.status),
    rows, pages: p.pages ?? null, total, totalEstimated: reported === null && total !== null,
    percent: done ? 100 : percentOf(rows, total, p.phase),
    ratePerSecond: rate,
    etaSeconds: r.status !== 'running' ? null : p.eta_seconds ?? (total && rate ? Math.max(0, Math.round((total - rows) / rate)) : null),
    cancelRequested: r.cancel_requested, startedAt: r.started_at, finishedAt: r.finished_at, elapsedSeconds: r.elapsed,
    counts: {
      fetched: r.fetched, inserted: r.inserted, updated: r.updated, deleted: r.deleted,
      unchanged: r.unchanged, quarantined: r.quarantined, deferred: r.deferred, held: r.held,
    },
    error: r.error,
  };
}

// Until the run has succeeded the bar stops short of full: an estimate can be
// low, and the merge still has to commit.
const MAX_RUNNING_PERCENT = 99;

function percentOf(rows: number, total: number | null, phase: string | undefined): number | null {
  if (phase === 'merge' || phase === 'done') return MAX_RUNNING_PERCENT;
  if (!total) return null;
  return Math.min(MAX_RUNNING_PERCENT, Math.floor((100 * rows) / total));
}
