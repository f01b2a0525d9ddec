/**
 * Request and response helpers of the operator API: JSON in and out, errors
 * as {error, hint?} with the status code that fits, zod at the door.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { z } from 'zod';
import { formatPath } from '../config/load.js';

// API bodies are a few fields; anything larger is a mistake or an attack.
const MAX_BODY_BYTES = 64 * 1024;

/** An error the client caused or can act on: its message and hint are sent as they are. */
export class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly hint?: string, readonly extra: Record<string, unknown> = {}) {
    super(message);
    this.name = 'HttpError';
  }
}

/** Headers every answer carries: no sniffing, no framing, nothing cached that holds data. */
const COMMON_HEADERS = {
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
};

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body, null, 2);
  res.writeHead(status, {
    ...COMMON_HEADERS, 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text), ...headers,
  });
  res.end(text);
}

export function sendText(res: ServerResponse, status: number, body: string | Buffer, contentType: string,
  headers: Record<string, string> = {}): void {
  res.writeHead(status, { ...COMMON_HEADERS, 'content-type': contentType, 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

export function sendError(res: ServerResponse, err: HttpError, headers: Record<string, string> = {}): void {
  sendJson(res, err.status, { error: err.message, ...(err.hint ? { hint: err.hint } : {}), ...err.extra }, headers);
}

/** The request body parsed as JSON (an empty body is `{}`). */
export async function readJson(req: IncomingMessage): Promise<unknown> {
  const type = req.headers['content-type'] ?? '';
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `the request body is over ${MAX_BODY_BYTES / 1024} kB`, 'send only the fields the route takes');
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (!text) return {};
  if (!/^application\/json\b/i.test(type)) {
    throw new HttpError(415, `the body must be JSON, not "${type || 'no content type'}"`, 'send Content-Type: application/json');
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `the body is not valid JSON: ${(err as Error).message}`, 'check quotes and commas');
  }
}

/** The path of the first string (value or key) in `value` holding U+0000, or null. */
function nulAt(value: unknown, path: (string | number)[] = []): (string | number)[] | null {
  if (typeof value === 'string') return value.includes('\u0000') ? path : null;
  if (typeof value !== 'object' || value === null) return null;
  for (const [k, v] of Object.entries(value)) {
    const found = k.includes('\u0000') ? [...path, k] : nulAt(v, [...path, Array.isArray(value) ? Number(k) : k]);
    if (found) return found;
  }
  return null;
}

/** `value` validated by `schema`, or a 400 naming each field and what is wrong with it. */
export function parseWith<T extends z.ZodType>(schema: T, value: unknown, what: string, hint?: string): z.infer<T> {
  // Postgres text cannot hold U+0000: refused here, it is a 400 and not a failed query.
  const nul = nulAt(value);
  if (nul) {
    throw new HttpError(400, `${what}: ${nul.length ? `${formatPath(nul)}: ` : ''}must not contain the character U+0000`,
      'remove the \\u0000 from the value', nul.length ? { field: String(nul[0]) } : {});
  }
  // reportInput: a type issue whose input is undefined is a missing field (JSON has no undefined).
  const result = schema.safeParse(value, { reportInput: true });
  if (result.success) return result.data;
  const problems = result.error.issues.map((i) => {
    if (i.code === 'unrecognized_keys') return `unknown field${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => `"${k}"`).join(', ')}`;
    const message = i.code === 'invalid_type' && i.input === undefined ? `is required (${i.expected})` : i.message;
    return i.path.length ? `${formatPath(i.path)}: ${message}` : message;
  });
  // One bad field is named apart too, so a form can mark it.
  const [first] = result.error.issues;
  const field = result.error.issues.length === 1 && first.path.length ? { field: String(first.path[0]) } : {};
  throw new HttpError(400, `${what}: ${problems.join('; ')}`, hint, field);
}

/** The query string as a plain object (the last value of a repeated name wins). */
export function queryOf(url: URL): Record<string, string> {
  return Object.fromEntries(url.searchParams.entries());
}
