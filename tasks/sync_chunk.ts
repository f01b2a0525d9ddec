import type { Task } from 'graphile-worker';
import { z } from 'zod';
import type { Engine } from '../src/engine/run.js';
import { takeRunChunks } from '../src/sources/postgres/chunks.js';
import { log } from '../src/log.js';

const Payload = z.object({
  run: z.union([z.number().int().positive(), z.string().regex(/^[1-9][0-9]*$/).transform(Number)]),
});

/**
 * A worker's share of a chunked full read (sync.plan_chunks queued it):
 * reads pending chunks of the run into its staging until none is left. A
 * job for a run that is over, or whose chunks are all taken, does nothing;
 * it never fails (the process running the run takes what is left).
 */
export const syncChunk = (engine: Engine): Task => async (payload, helpers) => {
  const { run } = Payload.parse(payload);
  const taken = await takeRunChunks(engine, run, helpers.job.locked_by ?? `job ${helpers.job.id}`, helpers.abortSignal);
  if (taken) log.info({ runId: run, chunks: taken }, 'chunks read');
};
