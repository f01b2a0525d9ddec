import type { Task } from 'graphile-worker';
import { z } from 'zod';
import type { Engine } from '../src/engine/run.js';
import { Edge } from '../src/edge/edge.js';
import { runCycle } from '../src/edge/cycle.js';
import { pushSummary } from '../src/edge/loop.js';
import { summary } from '../src/engine/summary.js';
import { log } from '../src/log.js';

const Payload = z.object({
  trigger: z.enum(['cron', 'manual', 'api']).default('cron'),
}).strict();

/**
 * One edge cycle (push, then pull) from the crontab, e.g. every minute:
 * `* * * * * sync_edge ?id=sync_edge&max=1`. The cycle takes the edge lock,
 * so it never overlaps a `syncline edge` loop or another worker's cycle; a
 * cycle that finds the lock taken, or the remote down, is logged and the job
 * succeeds: the next tick is the retry (a job retried by graphile-worker
 * would only run beside it).
 */
export const syncEdge = (engine: Engine): Task => async (payload, helpers) => {
  const { trigger } = Payload.parse(payload ?? {});
  const edge = new Edge(engine);
  try {
    const r = await runCycle(edge, { trigger, signal: helpers.abortSignal });
    for (const p of r.push) log.info({ entity: p.entity, runId: p.runId }, pushSummary(p));
    for (const p of r.pull) log.info({ entity: p.entity, runId: p.runId }, summary(p));
    if (r.status === 'remote-down' || r.status === 'failed') log.warn({ edgeCycle: r.status, err: r.error }, `edge cycle ${r.status}: ${r.error ?? ''}`);
  } finally {
    await edge.close();
  }
};
