/**
 * Who may use the operator API: the holder of one bearer token. The token
 * comes from the config (server.token, normally "${SYNCLINE_API_TOKEN}") or
 * the SYNCLINE_API_TOKEN variable; on a loopback address a missing token is
 * generated at start, elsewhere the server refuses to start without one.
 *
 * Browsers' EventSource cannot send an Authorization header, so the progress
 * stream also takes a ticket: an HMAC of (run id, expiry) under the token,
 * minted by an authenticated request, valid for one run for a minute. The
 * token itself never travels in a URL (access logs, history, Referer).
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import { MIN_API_TOKEN_LENGTH } from '../config/schema.js';
import { HttpError } from './http.js';

// A ticket only opens one run's progress stream; a minute covers a page that
// opens it at once, and EventSource's reconnects ask for a new one.
export const TICKET_TTL_S = 60;

export interface ApiToken {
  token: string;
  /** Made at start because none was configured (the server prints it). */
  generated: boolean;
}

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return h === '::1' || h === '::ffff:127.0.0.1';
}

/** The token to require: the configured one, SYNCLINE_API_TOKEN, or (loopback only) a new random one. */
export function resolveToken(host: string, configured: string | undefined, env: NodeJS.ProcessEnv = process.env): ApiToken {
  const token = configured || env.SYNCLINE_API_TOKEN || '';
  if (token) {
    if (token.length < MIN_API_TOKEN_LENGTH) {
      throw new Error(`the API token is ${token.length} characters long; use at least ${MIN_API_TOKEN_LENGTH} `
        + '— generate one, e.g. `export SYNCLINE_API_TOKEN=$(openssl rand -base64 24)`');
    }
    return { token, generated: false };
  }
  if (!isLoopback(host)) {
    throw new Error(`refusing to serve on ${host} without an API token: anyone who reaches it could start and cancel syncs — `
      + 'set SYNCLINE_API_TOKEN (e.g. `export SYNCLINE_API_TOKEN=$(openssl rand -base64 24)`) or server.token in the config, '
      + 'or listen on 127.0.0.1');
  }
  return { token: randomBytes(24).toString('base64url'), generated: true };
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Constant-time comparison (of digests, so lengths leak nothing either). */
export function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

/** Throws a 401 that says what to send unless the request carries the token. */
export function requireBearer(header: string | undefined, token: string): void {
  if (!header) {
    throw new HttpError(401, 'this route needs the API token',
      'send the header "Authorization: Bearer <token>" (the token is in SYNCLINE_API_TOKEN or server.token, or printed by `syncline serve` at start)');
  }
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!m) throw new HttpError(401, 'the Authorization header is not "Bearer <token>"', 'send "Authorization: Bearer <token>"');
  if (!sameSecret(m[1], token)) {
    throw new HttpError(401, 'the API token was refused', 'use the token set in SYNCLINE_API_TOKEN or server.token, or the one `syncline serve` printed at start');
  }
}

function sign(token: string, runId: number, expires: number): string {
  return createHmac('sha256', token).update(`progress:${runId}:${expires}`).digest('base64url');
}

/** A ticket for one run's progress stream, valid for TICKET_TTL_S seconds. */
export function mintTicket(token: string, runId: number, now = Date.now()): { ticket: string; expiresAt: Date } {
  const expires = Math.floor(now / 1000) + TICKET_TTL_S;
  return { ticket: `${expires}.${sign(token, runId, expires)}`, expiresAt: new Date(expires * 1000) };
}

export function checkTicket(token: string, runId: number, ticket: string, now = Date.now()): void {
  const m = /^(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(ticket);
  if (!m || !sameSecret(m[2], sign(token, runId, Number(m[1])))) {
    throw new HttpError(401, `the ticket is not valid for run ${runId}`,
      `get one with POST /api/sync/progress/${runId}/ticket (with the bearer token), or send the Authorization header instead`);
  }
  if (Number(m[1]) * 1000 < now) {
    throw new HttpError(401, 'the ticket has expired', `tickets last ${TICKET_TTL_S} s: get a new one with POST /api/sync/progress/${runId}/ticket`);
  }
}
