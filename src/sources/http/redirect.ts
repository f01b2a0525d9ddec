/**
 * Redirects followed by hand, so credentials stay with their origin. fetch's
 * own following drops only Authorization on a cross-origin hop: an
 * X-Api-Key header, a custom header or an auth query parameter would go to
 * whatever host a 302 names.
 */
import { CriticalError } from './errors.js';
import type { RedirectPolicy } from './schema.js';
import { MIN_SECRET_LENGTH } from './secrets.js';

export type { RedirectPolicy } from './schema.js';

// Hops followed for one request. Real services redirect once or twice (a
// moved endpoint, a published sheet to its storage host); more is a
// misconfigured proxy, and a loop would otherwise hold the run until its
// timeout.
export const MAX_REDIRECTS = 5;

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

export interface RedirectRequest {
  /** The first URL, with the credentials it carries (an auth query parameter). */
  url: URL;
  /** The origin the credentials were written for: the source's baseUrl's, or the file URL's. */
  home: string;
  /** Headers of a request to home: configured and auth headers included. */
  headers: Record<string, string>;
  /** Headers of a request to another origin: none of the configured ones. */
  bareHeaders: Record<string, string>;
  /** Puts the credentials a URL on home carries (an auth query parameter) on a redirect's target. */
  authorize?: (url: URL) => URL;
  /** Values that are secrets: a query parameter holding one is removed from a URL on another origin. */
  secrets: readonly string[];
  /** Query parameters removed from a URL on another origin whatever they hold (the auth query parameter). */
  secretParams?: readonly string[];
  policy: RedirectPolicy;
  /** A URL as a message may show it (secrets masked). */
  describe: (url: URL | string) => string;
  /** What the user can change about a cross-origin redirect, given the origin it leads to. */
  advice: (otherOrigin: string) => string;
  signal?: AbortSignal;
}

export interface Followed {
  /** The answer that is not a redirect; its body is unread. */
  response: Response;
  /** Where that answer came from. */
  url: URL;
  /**
   * The answer came from another origin than home, or by way of one: it was
   * fetched without the source's credentials and may hold less than they see.
   */
  crossOrigin: boolean;
}

/**
 * GETs `req.url` and follows 301/302/303/307/308 itself: on home, with the
 * headers and credentials; to another origin, only under
 * "follow-without-credentials" and then with none of them (and no credential
 * returns on a later hop). Anything else is a CriticalError saying what to
 * change; so are a loop and more than MAX_REDIRECTS hops.
 */
export async function fetchFollowing(req: RedirectRequest): Promise<Followed> {
  const chain: URL[] = [];
  let url = req.url;
  let away = false;
  for (;;) {
    const res = await fetch(url, { headers: away ? req.bareHeaders : req.headers, signal: req.signal, redirect: 'manual' });
    if (!REDIRECT_STATUSES.has(res.status)) return { response: res, url, crossOrigin: away || url.origin !== req.home };
    // The redirect's own body is not wanted; reading it to the end frees the connection.
    await res.arrayBuffer().catch(() => undefined);
    chain.push(url);
    const location = res.headers.get('location');
    const start = req.describe(req.url);
    if (!location) {
      throw new CriticalError(`GET ${req.describe(url)} answered ${res.status} without a Location header to follow; `
        + 'the server is misconfigured — check the URL', 'validation', start, res.status);
    }
    let next: URL;
    try {
      next = new URL(location, url);
    } catch (err) {
      throw new CriticalError(`GET ${req.describe(url)} redirected to an unreadable Location; the server is misconfigured — check the URL`,
        'validation', start, res.status, { cause: err });
    }
    if (next.protocol !== 'http:' && next.protocol !== 'https:') {
      throw new CriticalError(`GET ${req.describe(url)} redirected to a ${next.protocol} URL; only http and https are followed — check the URL`,
        'validation', start, res.status);
    }
    if (!away && next.origin === req.home) {
      next = req.authorize ? req.authorize(next) : next;
    } else {
      if (req.policy !== 'follow-without-credentials') {
        throw new CriticalError(`GET ${req.describe(url)} redirected from ${req.describe(req.home)} to another origin, ${req.describe(next.origin)}; `
          + `Syncline does not send this source's credentials to another host — ${req.advice(next.origin)}`, 'validation', start, res.status);
      }
      away = true;
      next = withoutSecrets(next, req);
    }
    if (chain.some((u) => u.href === next.href)) {
      throw new CriticalError(`GET ${start} redirects in a loop (${[...chain, next].map((u) => req.describe(u)).join(' → ')}); `
        + 'the server is misconfigured — check the URL, or ask the vendor', 'validation', start, res.status);
    }
    if (chain.length > MAX_REDIRECTS) {
      throw new CriticalError(`GET ${start} was redirected more than ${MAX_REDIRECTS} times (last to ${req.describe(next)}); `
        + 'point the configured URL at where the data is', 'validation', start, res.status);
    }
    url = next;
  }
}

/** A URL on another origin with every query parameter that is, or holds, a credential removed. */
function withoutSecrets(url: URL, req: RedirectRequest): URL {
  const secrets = new Set(req.secrets.filter((s) => s.length >= MIN_SECRET_LENGTH));
  const names = new Set(req.secretParams ?? []);
  const out = new URL(url);
  for (const [name, value] of [...url.searchParams]) {
    if (names.has(name) || [...secrets].some((s) => value.includes(s))) out.searchParams.delete(name);
  }
  // The user and password of a URL are credentials too.
  out.username = '';
  out.password = '';
  return out;
}
