import type { Pool } from '../../db/pool.js';
import type { RequestBudget } from './client.js';
import type { RateLimit } from './schema.js';
import { sleep } from './timing.js';

// Waits are rounded up by this much: Postgres measures the window with its
// own clock, and a request must not leave before its reserved slot.
const WAIT_MARGIN_MS = 5;

/**
 * One http source's request budget, kept in PostgreSQL so that every job and
 * worker process pacing requests to the same source shares one count.
 */
export class HttpBudget implements RequestBudget {
  constructor(private readonly pool: Pool, readonly source: string, readonly limit: RateLimit) {}

  /** Resolves when a request to the source may start (its start is then counted). */
  async take(signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    // The database reserves this request's slot; waiting for it is all that is left.
    const { rows } = await this.pool.query<{ wait_ms: number }>(
      'select (extract(epoch from sync.take_http_request($1, $2, $3)) * 1000)::float8 as wait_ms',
      [this.source, this.limit.requests, this.limit.perSeconds]);
    const waitMs = rows[0].wait_ms;
    if (waitMs > 0) await sleep(Math.ceil(waitMs) + WAIT_MARGIN_MS, signal);
  }

  /** Tells the budget what the vendor said: requests left in its window, or how long to hold off. */
  async feedback(f: { remaining?: number; retryAfterMs?: number }): Promise<void> {
    if (f.remaining === undefined && f.retryAfterMs === undefined) return;
    await this.pool.query('select sync.http_feedback($1, $2, $3::float8 * interval \'1 millisecond\')',
      [this.source, f.remaining ?? null, f.retryAfterMs ?? null]);
  }
}
