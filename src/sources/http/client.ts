import { log as rootLog, type Logger } from '../../log.js';
import { CriticalError, TransientError, type ErrorCategory } from './errors.js';
import { parseJson } from './json.js';
import type { HttpSourceConfig } from './schema.js';
import { fetchFollowing } from './redirect.js';
import { makeMasker, secretsOf } from './secrets.js';
import { backoffMs, parseRateHeaders, parseRetryAfter, sleep, throttleBackoffMs, type RateHeaders } from './timing.js';

// A Retry-After beyond this is not waited out inside a run: the run fails as
// transient and the next scheduled run starts after the vendor's block ends,
// instead of holding a worker (and the entity's lock) for hours.
const MAX_RETRY_AFTER_MS = 15 * 60_000;

// Without Retry-After (or a reset time) a 429 still needs a pause: 1 s,
// doubled for each consecutive 429 up to this (Airtable's penalty for
// exceeding its limit is 30 s), never a whole configured window.
const RATE_LIMIT_BACKOFF_CAP_MS = 30_000;

// How much of an error body goes into a message: enough to show the vendor's
// explanation, not a whole HTML page.
const ERROR_SNIPPET_CHARS = 300;

// What every request sends; a request to another origin sends only these.
const BARE_HEADERS: Readonly<Record<string, string>> = { accept: 'application/json', 'user-agent': 'syncline' };

/** What a response told about the vendor's budget: its rate-limit headers, and how long it asked us to hold off. */
export interface VendorSaid extends RateHeaders {
  /** The grant (from take) whose request this answered; absent: the latest. */
  seq?: number;
  retryAfterMs?: number;
}

/** Where the client takes a turn before each attempt and reports what the vendor said. */
export interface RequestBudget {
  /** Resolves when the request may start; may return the grant's number for feedback. */
  take(signal?: AbortSignal): Promise<number | void>;
  feedback(f: VendorSaid): Promise<void>;
}

/** What one client's requests cost so far (a client serves one run). */
export interface HttpStats {
  /** Requests sent (every attempt). */
  requests: number;
  /** Attempts after the first of a request: failures and 429s retried. */
  retries: number;
  /** 429 answers. */
  throttled: number;
  /** Time spent waiting for the shared budget before requests. */
  budgetWaitMs: number;
  /** Time spent pausing before retries (backoff, Retry-After). */
  retryWaitMs: number;
}

export interface HttpResponse {
  /** The URL requested (with credentials; use client.describe() for messages). */
  url: URL;
  /** Where the answer came from after redirects (url when there were none). */
  finalUrl: URL;
  /**
   * The answer came from another origin than baseUrl's, or by way of one
   * (redirects: "follow-without-credentials"): it was fetched without the
   * source's credentials, so it may hold less than the API has.
   */
  crossOrigin: boolean;
  status: number;
  headers: Headers;
  body: unknown;
}

export interface HttpClientOptions {
  /** The source's name in the config, for messages ("sources.<name>.auth"). */
  name: string;
  budget?: RequestBudget;
  logger?: Logger;
  /** Replaceable for tests: a number in [0, 1). */
  random?: () => number;
}

type Attempt =
  | { kind: 'ok'; response: HttpResponse; rate?: RateHeaders }
  | { kind: 'retry'; what: string; category: ErrorCategory; cause?: unknown; rate?: RateHeaders }
  | { kind: 'rate-limited'; what: string; retryAfterMs?: number; rate?: RateHeaders };

/**
 * GETs JSON from one http source: auth, timeouts, retries with backoff,
 * 429 handling and the shared request budget. Every message it produces has
 * the source's secrets masked.
 *
 * Retry policy: 5xx, 408, connection failures, timeouts and truncated bodies
 * count toward `retries.max`. A 429 waits exactly as long as Retry-After says
 * (or until the reset its rate-limit headers give; without either, a short
 * doubling backoff) and counts only toward `retries.rateLimited`: a vendor
 * saying "later" is not a failure, but a vendor saying it forever must still
 * end the run. Every answer's rate-limit headers go to the shared budget,
 * which adopts the vendor's limit and window.
 *
 * Redirects (redirect.ts): on baseUrl's origin they keep the headers and
 * auth; to another origin they are a critical error, unless the source sets
 * redirects: "follow-without-credentials" (then the response is crossOrigin).
 */
export class HttpClient {
  readonly mask: (text: string) => string;
  private readonly base: URL;
  private readonly log: Logger;
  private readonly random: () => number;
  readonly stats: HttpStats = { requests: 0, retries: 0, throttled: 0, budgetWaitMs: 0, retryWaitMs: 0 };
  /** The rate-limit headers of the latest answer that had any. */
  lastRate?: RateHeaders;

  constructor(readonly source: HttpSourceConfig, private readonly opts: HttpClientOptions) {
    this.mask = makeMasker(source.auth, Object.values(source.headers));
    this.base = new URL(source.baseUrl);
    this.log = opts.logger ?? rootLog;
    this.random = opts.random ?? Math.random;
  }

  get budget(): RequestBudget | undefined {
    return this.opts.budget;
  }

  /** A path under baseUrl, or an absolute URL on baseUrl's origin, with query parameters set. */
  resolve(pathOrUrl: string, params: Record<string, string> = {}): URL {
    const absolute = /^https?:\/\//i.test(pathOrUrl);
    const url = absolute ? new URL(pathOrUrl)
      : new URL(`${this.source.baseUrl.replace(/\/+$/, '')}/${pathOrUrl.replace(/^\/+/, '')}`);
    if (url.origin !== this.base.origin) {
      // Following it would send this source's credentials to another host.
      throw new CriticalError(`${this.describe(url)} is not on ${this.base.origin}, the origin of sources.${this.opts.name}.baseUrl; `
        + 'Syncline does not send credentials to another host — check the API\'s next links or the baseUrl', 'validation', this.describe(url));
    }
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    return url;
  }

  /** A URL as it may appear in logs and messages: secrets masked. */
  describe(url: URL | string): string {
    return this.mask(String(url));
  }

  async getJson(pathOrUrl: string, params: Record<string, string> = {}, signal?: AbortSignal): Promise<HttpResponse> {
    const url = this.resolve(pathOrUrl, params);
    const { retries } = this.source;
    let failures = 0;
    let limited = 0;
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) this.stats.retries++;
      const seq = await this.take(signal);
      this.stats.requests++;
      const a = await this.attempt(url, signal);
      if (a.rate && Object.keys(a.rate).length) this.lastRate = a.rate;
      if (a.kind !== 'rate-limited') await this.tell({ seq: seq ?? undefined, ...a.rate });
      if (a.kind === 'ok') return a.response;
      let waitMs: number;
      if (a.kind === 'rate-limited') {
        limited++;
        this.stats.throttled++;
        waitMs = a.retryAfterMs ?? resetWhenSpent(a.rate)
          ?? throttleBackoffMs(limited - 1, RATE_LIMIT_BACKOFF_CAP_MS, this.random);
        // Other workers hold off as long, and no longer: the vendor's window is not assumed spent.
        await this.tell({ seq: seq ?? undefined, ...a.rate, retryAfterMs: waitMs });
        if (limited > retries.rateLimited || waitMs > MAX_RETRY_AFTER_MS) {
          throw new TransientError(`GET ${this.describe(url)} was rate limited ${limited} times (last: ${a.what}); `
            + `the request budget of sources.${this.opts.name} is spent — the next run will continue, or lower rateLimit.requests so Syncline paces itself`,
          'rate_limit', this.describe(url));
        }
      } else {
        failures++;
        if (failures > retries.max) {
          throw new TransientError(`GET ${this.describe(url)} failed ${failures} times (last: ${a.what}); `
            + `the API or the network is having trouble — the run can be retried later, or raise sources.${this.opts.name}.retries.max`,
          a.category, this.describe(url), { cause: a.cause });
        }
        waitMs = backoffMs(failures - 1, retries.baseMs, retries.maxMs, this.random);
      }
      this.log.warn({ source: this.opts.name, target: this.describe(url), problem: a.what, waitMs }, 'retrying HTTP request');
      const pausedAt = performance.now();
      await sleep(waitMs, signal);
      this.stats.retryWaitMs += performance.now() - pausedAt;
    }
  }

  private async take(signal?: AbortSignal): Promise<number | void> {
    if (!this.opts.budget) return;
    const askedAt = performance.now();
    const seq = await this.opts.budget.take(signal);
    this.stats.budgetWaitMs += performance.now() - askedAt;
    return seq;
  }

  private async tell(said: VendorSaid): Promise<void> {
    const { seq, ...rest } = said;
    // With nothing to say, a grant's number still goes back: the budget forgets it.
    if (!this.opts.budget || (seq === undefined && Object.values(rest).every((v) => v === undefined))) return;
    await this.opts.budget.feedback(seq === undefined ? rest : said);
  }

  private headers(): Record<string, string> {
    const h: Record<string, string> = { ...BARE_HEADERS, ...this.source.headers };
    const auth = this.source.auth;
    if (auth && 'bearer' in auth) h.authorization = `Bearer ${auth.bearer}`;
    if (auth && 'basic' in auth) h.authorization = `Basic ${Buffer.from(`${auth.basic.username}:${auth.basic.password}`).toString('base64')}`;
    if (auth && 'header' in auth) h[auth.header.name] = auth.header.value;
    return h;
  }

  private authorized(url: URL): URL {
    const auth = this.source.auth;
    if (!auth || !('query' in auth)) return url;
    const u = new URL(url);
    u.searchParams.set(auth.query.name, auth.query.value);
    return u;
  }

  /** One request: never throws for a retryable problem, only for a caller abort or a critical answer. */
  private async attempt(url: URL, signal?: AbortSignal): Promise<Attempt> {
    const timeout = AbortSignal.timeout(this.source.timeoutMs);
    const both = signal ? AbortSignal.any([signal, timeout]) : timeout;
    let res: Response;
    let text: string;
    let finalUrl: URL;
    let crossOrigin: boolean;
    try {
      ({ response: res, url: finalUrl, crossOrigin } = await fetchFollowing({
        url: this.authorized(url), home: this.base.origin, headers: this.headers(), bareHeaders: BARE_HEADERS,
        authorize: (u) => this.authorized(u), secrets: [...secretsOf(this.source.auth), ...Object.values(this.source.headers)],
        secretParams: this.source.auth && 'query' in this.source.auth ? [this.source.auth.query.name] : [],
        policy: this.source.redirects, describe: (u) => this.describe(u), signal: both,
        advice: (other) => `point sources.${this.opts.name}.baseUrl at ${this.describe(other)} if that is where the API lives, `
          + `or set sources.${this.opts.name}.redirects to "follow-without-credentials" to follow such redirects without the configured headers, auth and secret query parameters`,
      }));
      text = await res.text();
    } catch (err) {
      if (err instanceof CriticalError) throw err;
      if (signal?.aborted) throw signal.reason;
      if (timeout.aborted) return { kind: 'retry', what: `no complete answer within ${this.source.timeoutMs} ms`, category: 'network', cause: err };
      return { kind: 'retry', what: this.mask(networkProblem(err)), category: 'network', cause: err };
    }
    const rate = parseRateHeaders(res.headers);
    return { ...this.judge(url, res, text, { finalUrl, crossOrigin }), rate };
  }

  private judge(url: URL, res: Response, text: string, via: { finalUrl: URL; crossOrigin: boolean }): Attempt {
    const status = `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}`;
    if (res.status === 429) return { kind: 'rate-limited', what: status, retryAfterMs: parseRetryAfter(res.headers.get('retry-after')) };
    if (res.status >= 500 || res.status === 408) return { kind: 'retry', what: status, category: 'network' };
    if (res.status >= 200 && res.status < 300) {
      const parsed = parseJson(text);
      if (parsed.ok) return { kind: 'ok', response: { url, ...via, status: res.status, headers: res.headers, body: parsed.value } };
      if (parsed.truncated) return { kind: 'retry', what: `${status} with a truncated JSON body (${text.length} characters)`, category: 'network' };
      throw new CriticalError(`GET ${this.describe(url)} answered ${status} with a body that is not JSON (${this.snippet(text)}); `
        + `check sources.${this.opts.name}.baseUrl and the entity's path point at the JSON API`, 'validation', this.describe(url), res.status);
    }
    throw this.critical(url, res.status, status, text);
  }

  private critical(url: URL, code: number, status: string, text: string): CriticalError {
    const where = this.describe(url);
    const said = text.trim() ? ` (${this.snippet(text)})` : '';
    if (code === 403 && UNKNOWN_FIELD.test(text) && NOT_THERE.test(text)) {
      // Directus and others answer 403 for a field that does not exist (so as not to tell which ones do): the token is fine.
      return new CriticalError(`GET ${where} answered ${status}${said}: the API refuses a field the request names, which may not exist `
        + '(any more) — this is not an auth problem: check the field names in the entity\'s params '
        + '(fields, sort, filter) and pagination against the API', 'validation', where, code);
    }
    if (code === 401 || code === 403) {
      return new CriticalError(`GET ${where} answered ${status}${said}: check the token in sources.${this.opts.name}.auth — `
        + 'the environment variable it comes from may be unset, expired, or lack access to this endpoint'
        + (code === 403 ? ' (some APIs, Directus among them, also answer 403 for a field in the params that does not exist)' : ''),
      'auth', where, code);
    }
    if (code === 404) {
      return new CriticalError(`GET ${where} answered ${status}: check the path of the entity and sources.${this.opts.name}.baseUrl — `
        + 'this endpoint does not exist', 'validation', where, code);
    }
    return new CriticalError(`GET ${where} answered ${status}${said}: the API refused the request — `
      + 'check the entity\'s params and pagination settings against the API documentation', 'validation', where, code);
  }

  private snippet(text: string): string {
    const t = text.replace(/\s+/g, ' ').trim();
    return this.mask(t.length > ERROR_SNIPPET_CHARS ? `${t.slice(0, ERROR_SNIPPET_CHARS)}…` : t);
  }
}

// A 403 body that speaks of a field that is not there (Directus: 'You don't
// have permission to access field "x" in collection "y" or it does not
// exist'); both must match, so a plain "permission denied" stays an auth error.
const UNKNOWN_FIELD = /\bfields?\b/i;
const NOT_THERE = /not exist|n't exist|unknown|no longer|not found|invalid/i;

/** A 429 that named no Retry-After but said the window is spent until its reset: wait for that. */
function resetWhenSpent(rate: RateHeaders | undefined): number | undefined {
  return rate?.remaining === 0 ? rate.resetMs : undefined;
}

/** A failed fetch as a sentence: undici hides the socket error in `cause`. */
function networkProblem(err: unknown): string {
  const e = err as { message?: string; cause?: { code?: string; message?: string } };
  const code = e.cause?.code;
  const known: Record<string, string> = {
    ECONNRESET: 'the connection was reset',
    ECONNREFUSED: 'the connection was refused (is the host and port right, is the API up?)',
    ENOTFOUND: 'the host name does not resolve',
    EAI_AGAIN: 'the host name could not be resolved right now',
    ETIMEDOUT: 'the connection timed out',
    UND_ERR_SOCKET: 'the server closed the connection',
    UND_ERR_CONNECT_TIMEOUT: 'the connection timed out',
  };
  if (code && known[code]) return known[code];
  if (e.message === 'terminated') return 'the connection closed before the body was complete';
  return e.cause?.message ?? e.message ?? String(err);
}
