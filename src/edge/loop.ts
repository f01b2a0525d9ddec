import { setTimeout as sleep } from 'node:timers/promises';
import { formatCount as n, summary } from '../engine/summary.js';
import type { Trigger } from '../engine/run.js';
import { log } from '../log.js';
import { runCycle, type CycleResult } from './cycle.js';
import type { Edge } from './edge.js';
import { describeError } from './run-log.js';
import type { PushResult } from './push.js';

export const DEFAULT_INTERVAL_S = 60;
// First retry after a failed cycle (a remote gone away); it doubles with each
// failure in a row, never past the interval, so a remote that comes back is
// caught up with within a few seconds without hammering one that stays down.
const RETRY_BASE_MS = 1000;

/** The wait before attempt `failures + 1` after that many failed cycles in a row. */
export function backoffMs(failures: number, intervalMs: number, random: () => number = Math.random): number {
  const ms = Math.min(intervalMs, RETRY_BASE_MS * 2 ** Math.min(failures, 30));
  // Jitter: edges that lost the same cloud do not all return at the same instant.
  return Math.round(Math.min(intervalMs, ms * (0.8 + 0.4 * random())));
}

export function pushSummary(r: PushResult): string {
  if (r.status === 'already-running') return `… ${r.entity}: a run of it is going on elsewhere; not started`;
  const head = `↑ ${r.entity}: ${n(r.fetched)} pushed (+${n(r.inserted)} new on the remote, ${n(r.unchanged)} it had already), `
    + `${n(r.retired)} retired locally in ${n(r.batches)} batch${r.batches === 1 ? '' : 'es'}`;
  if (r.status === 'failed') return `✗ ${head}, then failed (run ${r.runId}) — ${r.error}`;
  return `✓ ${head}${r.stopped ? ', stopped for shutdown' : ''} — run ${r.runId}`;
}

function report(r: CycleResult): void {
  for (const p of r.push) log[p.status === 'failed' ? 'warn' : 'info']({ entity: p.entity, runId: p.runId }, pushSummary(p));
  for (const p of r.pull) log[p.status === 'failed' ? 'warn' : 'info']({ entity: p.entity, runId: p.runId }, summary(p));
  const span = r.started && r.finished ? { started: r.started.toISOString(), finished: r.finished.toISOString() } : {};
  const fields = { edgeCycle: r.status, pid: process.pid, ...span };
  if (r.status === 'remote-down') log.warn({ ...fields, err: r.error }, `edge cycle: the remote is unreachable — ${r.error}`);
  else if (r.status === 'failed') log.warn({ ...fields, err: r.error }, `edge cycle failed${r.error ? ` — ${r.error}` : ''}`);
  else if (r.status === 'done') log.info(fields, `edge cycle done${r.stopped ? ' (stopped for shutdown)' : ''}`);
}

/** A cycle that never throws: a local database that is down is a failed cycle like any other. */
export async function safeCycle(edge: Edge, trigger: Trigger, signal?: AbortSignal): Promise<CycleResult> {
  try {
    return await runCycle(edge, { trigger, signal });
  } catch (err) {
    const error = describeError(err);
    return { status: 'failed', push: [], pull: [], stopped: false, started: null, finished: null, error };
  }
}

export interface LoopOptions {
  intervalMs: number;
  once?: boolean;
  signal: AbortSignal;
}

/**
 * Runs a cycle (push, then pull) every interval, start to start, until the
 * signal fires; after a failed cycle the next comes sooner, with exponential
 * backoff. Returns the last cycle's result.
 */
export async function runLoop(edge: Edge, opts: LoopOptions): Promise<CycleResult> {
  let failures = 0;
  for (;;) {
    const started = Date.now();
    const r = await safeCycle(edge, opts.once ? 'manual' : 'cron', opts.signal);
    report(r);
    if (opts.once || opts.signal.aborted) return r;
    const ok = r.status === 'done' || r.status === 'skipped';
    failures = ok ? 0 : failures + 1;
    const wait = ok ? Math.max(0, opts.intervalMs - (Date.now() - started)) : backoffMs(failures - 1, opts.intervalMs);
    if (!ok) log.warn({ failures, waitMs: wait }, `next edge cycle in ${(wait / 1000).toFixed(1)} s (failure ${failures} in a row)`);
    await sleep(wait, undefined, { signal: opts.signal }).catch(() => {});
    if (opts.signal.aborted) return r;
  }
}
