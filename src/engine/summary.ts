import type { RunResult } from './run.js';

const fmt = new Intl.NumberFormat('en-US');
export const formatCount = (v: number | undefined | null) => fmt.format(v ?? 0);
const n = formatCount;

/** One line saying what a run did, for the CLI and the worker's log. */
export function summary(r: RunResult, ms?: number): string {
  const mark = { succeeded: '✓', partial: '!', failed: '✗', cancelled: '✗', skipped: '-', 'already-running': '…' }[r.status];
  const head = `${mark} ${r.entity}`;
  if (r.status === 'skipped' || r.status === 'failed' || r.status === 'cancelled') {
    return `${head}: ${r.status}${r.runId ? ` (run ${r.runId})` : ''} — ${r.error}`;
  }
  if (r.status === 'already-running') return `${head}: already running as run ${r.runId}; not started again`;
  const parts = [`fetched ${n(r.fetched)}`, `+${n(r.inserted)} inserted`, `~${n(r.updated)} updated`,
    `-${n(r.deleted)} deleted`, `${n(r.unchanged)} unchanged`];
  if (r.quarantined) parts.push(`${n(r.quarantined)} quarantined (see sync.run_error)`);
  if (r.deferred) parts.push(`${n(r.deferred)} deletes deferred`);
  if (r.held) parts.push(`${n(r.held)} deletes held`);
  const line = `${head}: ${parts.join(', ')} — run ${r.runId}${ms === undefined ? '' : `, ${(ms / 1000).toFixed(1)} s`}`;
  // Why nothing (or not everything) was deleted, and how to confirm.
  return r.note ? `${line}\n    ${r.note}` : line;
}

