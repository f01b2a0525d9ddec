import type { Pool } from '../db/pool.js';
import { log } from '../log.js';
import type { Progress } from './types.js';

// Progress reaches sync.run.progress at most this often (and at each phase change).
const REPORT_EVERY_MS = 1000;

/**
 * Wraps a run's progress callback so the progress also lands in
 * sync.run.progress (sync.report_progress, which NOTIFYs sync_progress):
 * the operator API and dashboard read it from any process. Throttled; a
 * failed report is logged and skipped, never failing the run.
 */
export function reportingProgress(pool: Pool, onProgress?: (p: Progress) => void): (p: Progress) => void {
  let last = 0;
  let lastPhase = '';
  let startedAt = 0;
  let firstRows = 0;
  // One report at a time, in order: the last one written is the last one made.
  let pending: Promise<unknown> = Promise.resolve();
  return (p) => {
    onProgress?.(p);
    const now = Date.now();
    if (p.phase === 'fetch' && lastPhase !== 'fetch') { startedAt = now; firstRows = p.rows; }
    if (p.phase === lastPhase && now - last < REPORT_EVERY_MS && p.phase !== 'done') return;
    last = now;
    lastPhase = p.phase;
    const seconds = (now - startedAt) / 1000;
    const rate = p.phase === 'fetch' && seconds > 0 ? Math.round((p.rows - firstRows) / seconds) : null;
    const total = p.total ?? null;
    const eta = total !== null && rate ? Math.max(0, Math.round((total - p.rows) / rate)) : null;
    const report = JSON.stringify({ phase: p.phase, rows: p.rows, pages: p.pages ?? null, total, rate, eta_seconds: eta, chunks: p.chunks ?? null });
    pending = pending.then(() => pool.query('select sync.report_progress($1, $2)', [p.runId, report]))
      .catch((err) => log.debug({ err: String(err), runId: p.runId }, 'could not record progress'));
  };
}
