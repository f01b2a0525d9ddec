import type { Task } from 'graphile-worker';
import { z } from 'zod';
import type { Engine } from '../src/engine/run.js';
import { summary } from '../src/engine/summary.js';
import { log } from '../src/log.js';

const Payload = z.object({
  entity: z.string().min(1),
  trigger: z.enum(['cron', 'manual', 'backfill', 'resync', 'dependency', 'api']).default('cron'),
  full: z.boolean().default(false),
  dryRun: z.boolean().default(false),
  window: z.object({ from: z.string(), to: z.string() }).optional(),
  keys: z.array(z.array(z.string())).optional(),
});

/**
 * One sync run of one entity. A failed run is already recorded in sync.run;
 * throwing hands the job back to graphile-worker, which retries with backoff.
 */
export const syncEntity = (engine: Engine): Task => async (payload, helpers) => {
  const p = Payload.parse(payload);
  const result = await engine.run(p.entity, {
    trigger: p.trigger, full: p.full, dryRun: p.dryRun, window: p.window, keys: p.keys, jobId: String(helpers.job.id), signal: helpers.abortSignal,
  });
  log.info({ entity: p.entity, runId: result.runId, trigger: p.trigger }, summary(result));
  if (result.status === 'failed') throw new Error(`sync of ${p.entity} failed (run ${result.runId}): ${result.error}`);
  // Cut short by shutdown: run again when a worker is back.
  if (result.status === 'cancelled' && helpers.abortSignal?.aborted) throw new Error(`sync of ${p.entity} interrupted by shutdown`);
};
