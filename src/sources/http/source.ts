import type { Pool } from '../../db/pool.js';
import type { Logger } from '../../log.js';
import { HttpClient } from './client.js';
import { HttpBudget } from './ratelimit.js';
import type { HttpSourceConfig } from './schema.js';

/**
 * The client for one configured http source: paced by the shared budget in
 * Syncline's database when the source declares a rateLimit. Without one, a
 * 429 is still honoured, but only by the job that received it.
 */
export function httpSourceClient(name: string, source: HttpSourceConfig, syncPool: Pool, logger?: Logger): HttpClient {
  const budget = source.rateLimit ? new HttpBudget(syncPool, name, source.rateLimit) : undefined;
  return new HttpClient(source, { name, budget, logger });
}
