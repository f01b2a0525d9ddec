import type { Task } from 'graphile-worker';
import { z } from 'zod';
import type { AlertingConfig } from '../src/config/schema.js';
import type { Pool } from '../src/db/pool.js';
import { deliverAlert } from '../src/alerts/deliver.js';

const Payload = z.object({
  id: z.union([z.number().int().positive(), z.string().regex(/^[1-9][0-9]*$/).transform(Number)]),
});

/** What the task needs of the Engine: its pool and the config's "alerts" (read at each job, so a reloaded config counts). */
export interface AlertContext {
  pool: Pool;
  config: { alerts?: AlertingConfig };
}

/**
 * Delivers one sync.alert row (enqueued by the insert trigger). A failed
 * channel is recorded in sync.alert_delivery; throwing hands the job back to
 * graphile-worker, which retries it, and the claim keeps a channel that
 * already delivered from sending twice.
 */
export const syncAlert = (ctx: AlertContext): Task => async (payload) => {
  const { id } = Payload.parse(payload);
  const outcomes = await deliverAlert(ctx.pool, ctx.config.alerts, id);
  const failed = outcomes.filter((o) => o.status === 'failed');
  if (failed.length) {
    throw new Error(`alert ${id} not delivered: ${failed.map((f) => `${f.channel}: ${f.error}`).join('; ')}`);
  }
};
