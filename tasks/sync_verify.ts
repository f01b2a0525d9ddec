import type { Task } from 'graphile-worker';
import { z } from 'zod';
import type { Engine } from '../src/engine/run.js';
import { verifyEntity } from '../src/engine/verification.js';
import { log } from '../src/log.js';

const Payload = z.object({
  verification: z.union([z.number().int().positive(), z.string().regex(/^[1-9][0-9]*$/).transform(Number)]),
});

/**
 * A verification sync.verify() queued: compares and records the result in
 * its sync.verification row (a failure too, as status failed). Run again
 * after its worker died, it compares again from scratch. Already finished
 * (a retry after the result was written): nothing to do.
 */
export const syncVerify = (engine: Engine): Task => async (payload) => {
  const { verification } = Payload.parse(payload);
  const { rows } = await engine.pool.query<{ entity: string; fix: boolean; status: string; requested_by: string | null }>(
    'select entity, fix, status, requested_by from sync.verification where id = $1', [verification]);
  if (!rows.length || !['queued', 'running'].includes(rows[0].status)) return;
  const { entity, fix } = rows[0];
  const r = await verifyEntity(engine, entity, { id: verification, fix });
  log.info({ entity, verification, status: r.status, missing: r.missing, extra: r.extra, changed: r.changed }, 'verification finished');
};
