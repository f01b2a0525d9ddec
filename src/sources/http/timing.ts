/**
 * Full-jitter exponential backoff: a random wait between 0 and
 * min(maxMs, baseMs · 2^attempt). Spreads the retries of many workers hit by
 * the same outage instead of having them return in lockstep.
 */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * Retry-After as milliseconds: delta-seconds ("120") or an HTTP date
 * ("Wed, 21 Oct 2015 07:28:00 GMT"). Undefined when absent or unreadable;
 * a date in the past means "now" (0).
 */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Math.ceil(Number(v) * 1000);
  const at = Date.parse(v);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - now);
}

/** Waits ms milliseconds, or rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** What a response said about the vendor's rate limit; a field is absent when the vendor did not say. */
export interface RateHeaders {
  /** Requests allowed per window (X-RateLimit-Limit, RateLimit-Limit). */
  limit?: number;
  /** Requests left in the current window. */
  remaining?: number;
  /** Milliseconds until the current window resets. */
  resetMs?: number;
  /** The window's length, when the vendor names it (RateLimit-Policy / Limit "w="). */
  windowSeconds?: number;
}

// A Reset above this is a point in time (epoch seconds), below it a number of
// seconds: no window lasts 30 years, and no clock reads 1970 plus 30 years.
const EPOCH_SECONDS_FROM = 1e9;
const EPOCH_MS_FROM = 1e12;

/**
 * The rate-limit headers of a response, in either spelling: X-RateLimit-*
 * (Lightspeed X-Series, GitHub, most APIs) or the IETF draft's RateLimit-*.
 * Reset is read as seconds from now, epoch seconds (or milliseconds), or a
 * date; a value in the past means "now".
 */
export function parseRateHeaders(headers: Headers, now: number = Date.now()): RateHeaders {
  const get = (name: string) => headers.get(`x-ratelimit-${name}`) ?? headers.get(`ratelimit-${name}`);
  const out: RateHeaders = {};
  const limitText = get('limit');
  const limit = leadingNumber(limitText);
  if (limit !== undefined && limit > 0) out.limit = Math.floor(limit);
  const remaining = leadingNumber(get('remaining'));
  if (remaining !== undefined) out.remaining = Math.max(0, Math.floor(remaining));
  const resetMs = parseReset(get('reset'), now);
  if (resetMs !== undefined) out.resetMs = resetMs;
  // "100, 100;w=60" (draft 03) or RateLimit-Policy: 100;w=60.
  const w = /(?:^|[;,\s])w=(\d+(?:\.\d+)?)/.exec(`${limitText ?? ''} ${headers.get('ratelimit-policy') ?? ''}`);
  if (w && Number(w[1]) > 0) out.windowSeconds = Number(w[1]);
  return out;
}

function leadingNumber(value: string | null): number | undefined {
  const m = value === null ? null : /^\s*(\d+(?:\.\d+)?)/.exec(value);
  return m ? Number(m[1]) : undefined;
}

/** A Reset header as milliseconds from `now`. */
export function parseReset(value: string | null, now: number = Date.now()): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) {
    const n = Number(v);
    if (n >= EPOCH_MS_FROM) return Math.max(0, Math.ceil(n - now));
    if (n >= EPOCH_SECONDS_FROM) return Math.max(0, Math.ceil(n * 1000 - now));
    return Math.ceil(n * 1000);
  }
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/**
 * The pause after a 429 that named no Retry-After: 1 s, 2 s, 4 s … up to
 * capMs, of which the upper half is random ("equal jitter"): always a real
 * pause, but workers hit at once do not return in lockstep.
 */
export function throttleBackoffMs(attempt: number, capMs: number, random: () => number = Math.random, baseMs = 1_000): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.ceil(ceiling / 2 + random() * (ceiling / 2));
}
