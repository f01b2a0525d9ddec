import type { Pool, PoolClient } from '../../db/pool.js';
import { log } from '../../log.js';
import type { HttpClient, RequestBudget, VendorSaid } from './client.js';
import type { RateLimit } from './schema.js';
import { sleep } from './timing.js';

// Waits are rounded up by this much: Postgres measures the window with its
// own clock, and a request must not leave before its reserved slot.
const WAIT_MARGIN_MS = 5;
// Grants remembered for their answers; past this many the oldest is
// forgotten (its request was never answered).
const MAX_OPEN_SLOTS = 1_000;

/** The limit a budget paces by, and whether the vendor announced it or the config assumed it. */
export interface LearnedLimit {
  requests: number;
  seconds: number;
  from: 'headers' | 'config';
  /** Where the window's length comes from (the limit may be announced while the window is not). */
  window_from: 'headers' | 'config';
}

/**
 * One http source's request budget, kept in PostgreSQL so that every job and
 * worker process pacing requests to the same source shares one count. The
 * configured limit is the starting assumption; what the vendor's headers
 * announce replaces it (sync.http_feedback).
 */
export class HttpBudget implements RequestBudget {
  // The slot of each grant still waiting for its answer, exactly as the
  // database wrote it (microseconds): the answer moves it to its arrival.
  private readonly slots = new Map<number, string>();

  constructor(private readonly pool: Pool, readonly source: string, readonly limit: RateLimit) {}

  /** Resolves when a request to the source may start (its start is then counted); the grant's number goes back with feedback. */
  async take(signal?: AbortSignal): Promise<number> {
    signal?.throwIfAborted();
    // The database reserves this request's slot; waiting for it is all that is left.
    const { rows } = await this.pool.query<{ wait_ms: number; seq: string; slot: string }>(
      'select wait_ms, seq, slot::text as slot from sync.http_take($1, $2, $3)', [this.source, this.limit.requests, this.limit.perSeconds]);
    const waitMs = rows[0].wait_ms;
    const seq = Number(rows[0].seq);
    this.slots.set(seq, rows[0].slot);
    // A request never answered (aborted, failed) leaves its slot as granted.
    if (this.slots.size > MAX_OPEN_SLOTS) this.slots.delete(this.slots.keys().next().value!);
    if (waitMs > 0) await sleep(Math.ceil(waitMs) + WAIT_MARGIN_MS, signal);
    return seq;
  }

  /** Tells the budget what the vendor said in its answer to grant `seq`. */
  async feedback(f: VendorSaid): Promise<void> {
    const { seq, limit, remaining, resetMs, windowSeconds, retryAfterMs } = f;
    const slot = seq === undefined ? undefined : this.slots.get(seq);
    if (seq !== undefined) this.slots.delete(seq);
    if ([limit, remaining, resetMs, windowSeconds, retryAfterMs].every((v) => v === undefined)) return;
    await this.pool.query(
      `select sync.http_feedback($1, $2, $3, $4, $5::float8 * interval '1 millisecond', $6, $7::float8 * interval '1 millisecond', $8::timestamptz)`,
      [this.source, seq ?? null, limit ?? null, remaining ?? null, resetMs ?? null, windowSeconds ?? null, retryAfterMs ?? null, slot ?? null]);
  }

  /** The limit and window the budget paces by now. */
  async learned(): Promise<LearnedLimit | null> {
    const { rows } = await this.pool.query<LearnedLimit>(
      `select request_limit as requests, window_seconds as seconds, limit_from as "from", window_from
         from sync.http_budget where source = $1`, [this.source]);
    return rows[0] ?? null;
  }
}

/**
 * What a run's requests cost, into sync.run.detail.http: requests, retries,
 * 429s, the time spent waiting for the budget and for retries, and the limit
 * paced by (announced by the vendor or assumed from the config).
 */
export async function recordHttpDetail(target: PoolClient | Pool, runId: number, client: HttpClient): Promise<void> {
  const budget = client.budget instanceof HttpBudget ? await client.budget.learned() : null;
  const s = client.stats;
  const limit = budget ?? (client.lastRate?.limit !== undefined
    ? { requests: client.lastRate.limit, seconds: client.lastRate.windowSeconds ?? null, from: 'headers' } : null);
  const http = {
    requests: s.requests, retries: s.retries, throttled: s.throttled,
    wait_ms: { budget: Math.round(s.budgetWaitMs), retry: Math.round(s.retryWaitMs) },
    limit,
  };
  log.info({ runId, http }, 'http requests of the run');
  await target.query(`update sync.run set detail = detail || jsonb_build_object('http', $2::jsonb) where id = $1`,
    [runId, JSON.stringify(http)]);
}
