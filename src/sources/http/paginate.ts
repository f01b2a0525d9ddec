import type { HttpClient, HttpResponse } from './client.js';
import { CriticalError } from './errors.js';
import { getPath } from './path.js';
import type { HttpEntityOptions, Pagination } from './schema.js';

// A crawl longer than this is almost certainly an API that keeps handing out
// new cursors for the same data; stop instead of looping for ever.
export const MAX_PAGES = 1_000_000;

/**
 * Where a crawl stands: everything needed to fetch one page, plain JSON so it
 * can be stored (in sync.run.detail, say) and handed back as resumeFrom.
 * `index` is the 0-based position of that page in the whole crawl.
 */
export type PageState =
  | { style: 'page'; index: number; page: number; size?: number }
  | { style: 'offset'; index: number; offset: number }
  | { style: 'cursor'; index: number; cursor: string | null }
  | { style: 'next-link'; index: number; url: string | null }
  | { style: 'version'; index: number; after: string | null }
  | { style: 'keyset'; index: number; after: string | null }
  | { style: 'none'; index: number };

export interface Page {
  records: unknown[];
  /** 1-based position of this page in the crawl, counting pages before a resume. */
  page: number;
  /** The state this page was fetched with. */
  state: PageState;
  /**
   * The state of the page after this one: store it once this page is safely
   * staged, and a killed run resumes there. Null when the crawl is complete.
   * For the version style it never is: its `after` is the cursor for the
   * next incremental run.
   */
  next: PageState | null;
  /** How many records the whole listing has, where the API says (from.http.totalPath). */
  total?: number;
  /** The answer came from another origin than the source's baseUrl (a redirect followed without credentials). */
  crossOrigin: boolean;
}

export interface PaginateOptions {
  /**
   * A `next` from an earlier crawl: continue after that page. An incremental
   * version crawl starts from `{ style: 'version', index: 0, after: cursor }`.
   */
  resumeFrom?: PageState;
  signal?: AbortSignal;
  /** The entity's name, for messages. */
  entity?: string;
  /**
   * The API is known to give pages of the size asked (the source declares
   * its maxPageSize), so even a short first page is the last.
   */
  sizeHonored?: boolean;
}

interface Fetched { state: PageState; records: unknown[]; next: PageState | null; total?: number; crossOrigin: boolean }

/** The state of a crawl's first page. */
export function firstState(p: Pagination): PageState {
  switch (p.style) {
    case 'page': return { style: 'page', index: 0, page: p.start, size: p.size };
    case 'offset': return { style: 'offset', index: 0, offset: 0 };
    case 'cursor': return { style: 'cursor', index: 0, cursor: null };
    case 'next-link': return { style: 'next-link', index: 0, url: null };
    case 'version': return { style: 'version', index: 0, after: null };
    case 'keyset': return { style: 'keyset', index: 0, after: null };
    case 'none': return { style: 'none', index: 0 };
  }
}

/**
 * The pages of one entity, in order. The request for page n+1 goes out when
 * page n is handed over, so fetching overlaps the caller's work on page n;
 * no more than that one page waits in memory. An empty page ends the crawl,
 * as does a page without a next cursor or link, and for offset and page
 * styles the page that reaches the total the API reports or, without one, a
 * page shorter than the size asked for: no request for an empty page after it.
 */
export async function* paginate(client: HttpClient, entity: HttpEntityOptions, opts: PaginateOptions = {}): AsyncGenerator<Page> {
  const start = opts.resumeFrom ?? firstState(entity.pagination);
  if (start.style !== entity.pagination.style) {
    throw new CriticalError(`cannot resume a "${start.style}" crawl with "${entity.pagination.style}" pagination; `
      + 'the entity\'s pagination changed since the run was interrupted — run it again with --full', 'internal', entity.path);
  }
  const stop = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
  const fetchOne = (s: PageState) => {
    const p = fetchPage(client, entity, s, signal, opts.entity);
    p.catch(() => {}); // awaited below; until then a rejection is not unhandled
    return p;
  };
  let pending: Promise<Fetched> | null = fetchOne(start);
  let seen = recordsBefore(entity.pagination, start);
  // A short page is the last only where the API is known to give the size
  // asked: the source says so (maxPageSize), or a page of this crawl came
  // full. An API capping pages below the size asked would otherwise end every
  // crawl after its first page, silently.
  let honored = opts.sizeHonored ?? false;
  try {
    while (pending) {
      const got: Fetched = await pending;
      pending = null;
      if (got.records.length === 0) return;
      if (got.state.index + 1 >= MAX_PAGES) throw tooManyPages(client, entity, got.state);
      seen += got.records.length;
      const asked = askedSize(entity.pagination);
      honored ||= got.records.length === asked;
      // With a total, a short page is not the end: the API caps pages below the size asked.
      const last = asked !== null && (got.total !== undefined ? seen >= got.total : honored && got.records.length < asked);
      const next = got.next && !last ? got.next : null;
      if (next) pending = fetchOne(next);
      yield { records: got.records, page: got.state.index + 1, state: got.state, next, total: got.total, crossOrigin: got.crossOrigin };
    }
  } finally {
    stop.abort(); // a caller that stops early must not leave a request running
  }
}

/** How many records of the listing come before a crawl's starting state (offset and page styles; 0 for others). */
function recordsBefore(p: Pagination, s: PageState): number {
  if (s.style === 'offset') return s.offset;
  if (s.style === 'page' && p.style === 'page') return (s.page - p.start) * (s.size ?? p.size);
  return 0;
}

/** The page size an offset or page crawl asks for; null for styles that end by their own marker. */
function askedSize(p: Pagination): number | null {
  return p.style === 'offset' ? p.limit : p.style === 'page' ? p.size : null;
}

async function fetchPage(client: HttpClient, entity: HttpEntityOptions, state: PageState,
  signal: AbortSignal, name: string | undefined): Promise<Fetched> {
  const { path, params } = request(entity, state);
  const res = await client.getJson(path, params, signal);
  const records = recordsOf(client, entity, res, name);
  return {
    state, records, next: records.length === 0 ? null : nextState(client, entity.pagination, state, res, records),
    total: totalOf(client, entity, res), crossOrigin: Boolean((res as { crossOrigin?: boolean }).crossOrigin),
  };
}

/** The listing's size as the response reports it at totalPath; a clear error when it is not a number. */
function totalOf(client: HttpClient, entity: HttpEntityOptions, res: HttpResponse): number | undefined {
  if (!entity.totalPath) return undefined;
  const v = getPath(res.body, entity.totalPath);
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) {
    throw new CriticalError(`the response of GET ${client.describe(res.url)} has no record count at "${entity.totalPath}"; `
      + 'set totalPath to where the API reports the total (Directus: add "meta": "filter_count" to params and use "meta.filter_count"), or remove it',
    'validation', client.describe(res.url));
  }
  return n;
}

/** The path (or absolute URL) and query parameters a state asks for. */
function request(entity: HttpEntityOptions, s: PageState): { path: string; params: Record<string, string> } {
  const p = entity.pagination;
  const params = { ...entity.params };
  if (s.style === 'page' && p.style === 'page') Object.assign(params, { [p.param]: String(s.page), [p.sizeParam]: String(p.size) });
  if (s.style === 'offset' && p.style === 'offset') Object.assign(params, { [p.offsetParam]: String(s.offset), [p.limitParam]: String(p.limit) });
  if ((p.style === 'cursor' || p.style === 'version') && p.sizeParam && p.size) params[p.sizeParam] = String(p.size);
  if (s.style === 'cursor' && p.style === 'cursor' && s.cursor !== null) params[p.param] = s.cursor;
  if (s.style === 'version' && p.style === 'version' && s.after !== null) params[p.param] = s.after;
  if (p.style === 'keyset' && p.sizeParam && p.size) params[p.sizeParam] = String(p.size);
  if (s.style === 'keyset' && p.style === 'keyset' && s.after !== null) params[p.param] = s.after;
  // A next link already carries every parameter the API wants.
  if (s.style === 'next-link' && s.url !== null) return { path: s.url, params: {} };
  return { path: entity.path, params };
}

function recordsOf(client: HttpClient, entity: HttpEntityOptions, res: HttpResponse, name: string | undefined): unknown[] {
  const at = entity.recordsPath ?? (entity.pagination.style === 'version' ? 'data' : undefined);
  const found = getPath(res.body, at);
  if (Array.isArray(found)) return found;
  if (found === null) return [];
  const keys = typeof res.body === 'object' && res.body !== null ? Object.keys(res.body).slice(0, 10).join(', ') : typeof res.body;
  throw new CriticalError(`the response of GET ${client.describe(res.url)} has no record array at ${at ? `"${at}"` : 'its top level'}; `
    + `set recordsPath of entity ${name ?? entity.path} to where the records are (the body's top-level keys: ${keys || 'none'})`,
  'validation', client.describe(res.url));
}

function nextState(client: HttpClient, p: Pagination, s: PageState, res: HttpResponse, records: unknown[]): PageState | null {
  const index = s.index + 1;
  switch (s.style) {
    case 'page': return { style: 'page', index, page: s.page + 1, size: s.size };
    case 'offset': return { style: 'offset', index, offset: s.offset + records.length };
    case 'cursor': {
      const token = getPath(res.body, p.style === 'cursor' ? p.cursorPath : undefined);
      if (token === null || token === undefined || token === '') return null;
      if (String(token) === s.cursor) throw stuck(client, res, 'the same cursor');
      return { style: 'cursor', index, cursor: String(token) };
    }
    case 'next-link': {
      const link = p.style === 'next-link' && p.from === 'body' ? getPath(res.body, p.path) : nextFromLinkHeader(res.headers.get('link'));
      if (typeof link !== 'string' || link === '') return null;
      const url = new URL(link, res.url).toString();
      if (url === s.url) throw stuck(client, res, 'a next link to itself');
      return { style: 'next-link', index, url };
    }
    case 'version': return { style: 'version', index, after: nextVersion(client, p, s.after, res) };
    case 'keyset': return { style: 'keyset', index, after: lastKey(client, p, s.after, res, records) };
    case 'none': return null;
  }
}

function nextVersion(client: HttpClient, p: Pagination, after: string | null, res: HttpResponse): string {
  const path = p.style === 'version' ? p.versionPath : 'version.max';
  const v = getPath(res.body, path);
  if (typeof v !== 'number' && typeof v !== 'string') {
    throw new CriticalError(`the response of GET ${client.describe(res.url)} has records but no version at "${path}"; `
      + 'set pagination.versionPath to where the highest version of the page is', 'validation', client.describe(res.url));
  }
  const next = String(v);
  if (after !== null && compareVersions(next, after) <= 0) throw stuck(client, res, `version ${next}, not past the ${after}`);
  return next;
}

/** The key of a keyset page's last record, checked to have moved past the page's own start. */
function lastKey(client: HttpClient, p: Pagination, after: string | null, res: HttpResponse, records: unknown[]): string {
  const path = p.style === 'keyset' ? p.keyPath : 'id';
  const v = getPath(records[records.length - 1], path);
  if (typeof v !== 'number' && typeof v !== 'string') {
    throw new CriticalError(`the last record of GET ${client.describe(res.url)} has no key at "${path}"; `
      + 'set pagination.keyPath to where each record holds the key the API sorts by', 'validation', client.describe(res.url));
  }
  const key = String(v);
  if (after !== null && compareVersions(key, after) <= 0) {
    throw new CriticalError(`GET ${client.describe(res.url)} returned records up to key ${key}, not past ${after}: the API does not sort `
      + `by "${path}" or ignores the filter — add the sort to params (e.g. "sort": "${path}") and check pagination.param`,
    'validation', client.describe(res.url));
  }
  return key;
}

/** Versions as Lightspeed sends them: integers beyond 2^53 compare exactly; other strings by text. */
export function compareVersions(a: string, b: string): number {
  if (/^\d+$/.test(a) && /^\d+$/.test(b)) {
    const d = BigInt(a) - BigInt(b);
    return d === 0n ? 0 : d > 0n ? 1 : -1;
  }
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The rel="next" target of an RFC 8288 Link header, if any. */
export function nextFromLinkHeader(header: string | null): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(/,(?=\s*<)/)) {
    const m = /^\s*<([^>]*)>(.*)$/.exec(part);
    if (m && /;\s*rel\s*=\s*"?(?:[^";]*\s)?next(?:\s[^";]*)?"?\s*(;|$)/i.test(m[2])) return m[1];
  }
  return undefined;
}

function stuck(client: HttpClient, res: HttpResponse, what: string): CriticalError {
  return new CriticalError(`GET ${client.describe(res.url)} returned ${what} it was called with, so the crawl would never end; `
    + 'check the entity\'s pagination settings (param, cursorPath, versionPath) against the API documentation', 'validation', client.describe(res.url));
}

function tooManyPages(client: HttpClient, entity: HttpEntityOptions, s: PageState): CriticalError {
  return new CriticalError(`entity path "${entity.path}" went past ${MAX_PAGES} pages (last state ${JSON.stringify(s)}); `
    + 'the API probably repeats pages — check the pagination settings', 'validation', client.describe(entity.path));
}
