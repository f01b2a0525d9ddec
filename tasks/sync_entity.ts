import type { Task } from 'graphile-worker';
import { z } from 'zod';
import type { Engine } from '../src/engine/run.js';
import { summary } from '../src/engine/summary.js';
import { finishInWave, runWaveEntity, takeInWave } from '../src/engine/wave.js';
import { log } from '../src/log.js';

const Payload = z.object({
  entity: z.string().min(1),
  trigger: z.enum(['cron', 'manual', 'backfill', 'resync', 'dependency', 'api']).default('cron'),
  full: z.boolean().default(false),
  dryRun: z.boolean().default(false),
  window: z.object({ from: z.string(), to: z.string() }).optional(),
  keys: z.array(z.array(z.string())).optional(),
  /** The wave (sync.wave) and pass this job runs the entity for. */
  wave: z.union([z.number().int().positive(), z.string().regex(/^[1-9][0-9]*$/).transform(Number)]).optional(),
  pass: z.number().int().min(1).max(2).default(1),
});

/**
 * One sync run of one entity. A failed run is already recorded in sync.run;
 * throwing hands the job back to graphile-worker, which retries with
 * backoff. In a wave, the outcome moves the wave on (sync.wave_done) once the
 * run succeeded or its last attempt failed: the entity's dependents wait for
 * the retries, then run or are skipped.
 */
export const syncEntity = (engine: Engine): Task => async (payload, helpers) => {
  const p = Payload.parse(payload);
  const opts = {
    trigger: p.trigger, full: p.full, dryRun: p.dryRun, window: p.window, keys: p.keys,
    jobId: String(helpers.job.id), workerId: helpers.job.locked_by ?? undefined, signal: helpers.abortSignal,
  };
  const claim = { entity: p.entity, trigger: p.trigger, full: p.full, pass: p.pass, after: [] };
  // A job run again after its worker died may find its pass of the wave over already.
  if (p.wave && !(await takeInWave(engine, p.wave, p.entity, p.pass))) {
    log.info({ entity: p.entity, wave: p.wave }, 'already run in this wave; not run again');
    return;
  }
  const result = p.wave ? await runWaveEntity(engine, p.wave, claim, opts, false) : await engine.run(p.entity, opts);
  log.info({ entity: p.entity, runId: result.runId, trigger: p.trigger, wave: p.wave }, summary(result));
  // Cut short by shutdown: run again when a worker is back.
  if (result.status === 'cancelled' && helpers.abortSignal?.aborted) throw new Error(`sync of ${p.entity} interrupted by shutdown`);
  const retry = result.status === 'failed' && helpers.job.attempts < helpers.job.max_attempts;
  if (p.wave && !retry) await finishInWave(engine.pool, p.wave, p.entity, result);
  if (result.status === 'failed') throw new Error(`sync of ${p.entity} failed (run ${result.runId}): ${result.error}`);
};
