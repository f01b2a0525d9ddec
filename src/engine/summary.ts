import type { Pool } from '../db/pool.js';
import type { RunResult } from './types.js';

const fmt = new Intl.NumberFormat('en-US');
export const formatCount = (v: number | undefined | null) => fmt.format(v ?? 0);
const n = formatCount;

type Count = 'fetched' | 'inserted' | 'updated' | 'deleted' | 'unchanged' | 'quarantined';

/**
 * The runs behind a result: its passes when the entity ran more than once in
 * a wave (a deferred-delete pass), else the result itself.
 */
const runsOf = (r: RunResult): RunResult[] => (r.passes?.length ? r.passes : [r]);

const hasRun = (r: RunResult) => r.runId !== null && r.runId !== undefined;

/** "run 42" or "2 runs (42, 43)"; null when no run was recorded. */
function runLabel(r: RunResult): string | null {
  const runs = runsOf(r).filter(hasRun);
  if (!runs.length) return null;
  return runs.length > 1 ? `${runs.length} runs (${runs.map((p) => p.runId).join(', ')})` : `run ${runs[0].runId}`;
}

/** Seconds the runs took by sync.run (every pass's, added up), else the caller's milliseconds. */
function seconds(r: RunResult, ms?: number): number | undefined {
  const runs = runsOf(r);
  if (runs.every((p) => typeof p.seconds === 'number')) return runs.reduce((s, p) => s + p.seconds!, 0);
  if (typeof r.seconds === 'number') return r.seconds;
  return ms === undefined ? undefined : ms / 1000;
}

/** One line saying what a run did (or the runs of an entity run twice in a wave), for the CLI and the worker's log. */
export function summary(r: RunResult, ms?: number): string {
  const mark = { succeeded: '✓', partial: '!', failed: '✗', cancelled: '✗', skipped: '-', 'already-running': '…' }[r.status];
  const head = `${mark} ${r.entity}`;
  const label = runLabel(r);
  if (r.status === 'skipped' || r.status === 'failed' || r.status === 'cancelled') {
    return `${head}: ${r.status}${label ? ` (${label})` : ' before it started'} — ${r.error ?? 'no reason was recorded'}`;
  }
  if (r.status === 'already-running') {
    return `${head}: already running${label ? ` as ${label}` : ' (its run has not recorded itself yet)'}; not started again`;
  }
  const runs = runsOf(r);
  const sum = (k: Count) => runs.reduce((s, p) => s + (p[k] ?? 0), 0);
  // Deferred and held deletes are what the last pass left waiting, not a sum.
  const last = runs[runs.length - 1];
  const parts = [`fetched ${n(sum('fetched'))}`, `+${n(sum('inserted'))} inserted`, `~${n(sum('updated'))} updated`,
    `-${n(sum('deleted'))} deleted`, `${n(sum('unchanged'))} unchanged`];
  if (sum('quarantined')) parts.push(`${n(sum('quarantined'))} quarantined (see sync.run_error)`);
  if (last.deferred) parts.push(`${n(last.deferred)} deletes deferred`);
  if (last.held) parts.push(`${n(last.held)} deletes held`);
  const secs = seconds(r, ms);
  const joined = r.joined ? ' (another process ran it; joined)' : '';
  const line = `${head}: ${parts.join(', ')} — ${label ?? 'no run recorded'}${joined}${secs === undefined ? '' : `, ${secs.toFixed(1)} s`}`;
  // Why nothing (or not everything) was deleted, and how to confirm.
  const note = last.note ?? r.note;
  return note ? `${line}\n    ${note}` : line;
}

/**
 * The results with `seconds` from sync.run (finished_at - started_at) on each
 * one and each pass that has a finished run: the run's own time, whenever the
 * caller gets to print it. Results without a finished run are returned as
 * they are.
 */
export async function withRunSeconds(pool: Pool, results: RunResult[]): Promise<RunResult[]> {
  const ids = results.flatMap((r) => [r, ...(r.passes ?? [])]).map((r) => r.runId).filter((id): id is number => id != null);
  if (!ids.length) return results;
  const { rows } = await pool.query<{ id: string; seconds: number }>(
    `select id, extract(epoch from finished_at - started_at)::float8 as seconds
       from sync.run where id = any($1::bigint[]) and finished_at is not null`, [ids]);
  const byId = new Map(rows.map((row) => [Number(row.id), row.seconds]));
  const timed = (r: RunResult): RunResult => {
    const s = r.runId == null ? undefined : byId.get(Number(r.runId));
    return { ...r, ...(s === undefined ? {} : { seconds: s }), ...(r.passes ? { passes: r.passes.map(timed) } : {}) };
  };
  return results.map(timed);
}
