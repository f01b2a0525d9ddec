import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * A vendor API on 127.0.0.1 for tests, one endpoint a pagination style, each
 * following the contract of the APIs Syncline targets:
 *
 * - GET /pages?page=&per_page=       → {"data": {"items": […]}, "meta": {"total": n}} (1-based pages)
 * - GET /offsets?offset=&limit=      → […] (a bare array)
 *   Both also answer ?ids=1,2,3 with just those records (a lookup by key).
 * - GET /keyset?after=&limit=        → {"data": […]}: records with id > after, by id
 * - GET /cursor?offset=&pageSize=    → {"records": […], "offset": "<token>"} (Airtable:
 *                                      the token is absent on the last page; see cursorBy)
 * - GET /link-body?p=                → {"results": […], "links": {"next": "/link-body?p=2"}}
 * - GET /link-header?p=              → […] with `Link: <http://…/link-header?p=2>; rel="next"`
 * - GET /updated?since=&before=&page= → {"data": {"items": […]}}: records updated in
 *                                      [since, before), by update time (updated_at: day <version> of 2024)
 * - GET /version?after=&page_size=   → {"data": […], "version": {"min", "max"}} (Lightspeed
 *                                      X-Series 2.0: records with version > after, by version;
 *                                      an empty page ends)
 *
 * Faults queued with `inject` are served one a request, before the answer
 * ('ok' serves that request normally).
 * The server closes itself after `lifetimeMs` whatever the test does (by
 * default long after any test's timeout: a safety net, never a deadline).
 * Tests wait for requests with `hit()`, never for time.
 */
export type Fault = 'ok' | '500' | '503' | '408' | 'reset' | 'timeout' | 'truncated' | 'cut' | '429';

export interface Rec { id: number; name: string; version: number; tags?: string[] }

/** A request as it arrived: `at` on performance.now()'s clock, `wall` on Date.now()'s (the one PostgreSQL's clock_timestamp() reads). */
export interface Hit { path: string; query: URLSearchParams; headers: http.IncomingHttpHeaders; at: number; wall: number }

// Far beyond any test's timeout: the server outlives every test that forgets to close it only by this much.
const DEFAULT_LIFETIME_MS = 10 * 60_000;

export const PAGE_SIZE = 3;

/** A record's update time on the vendor: day <version> of 2024, in ISO 8601 UTC. */
export const updatedAt = (version: number) => new Date(Date.UTC(2024, 0, 1) + version * 86_400_000).toISOString().replace('.000Z', 'Z');

export class Vendor {
  records: Rec[] = [];
  readonly hits: Hit[] = [];
  private faults: Fault[] = [];
  private version = 0;
  private server = http.createServer((req, res) => this.handle(req, res));
  private sockets = new Set<Socket>();
  private closed = false;
  private waiters: { match: (h: Hit) => boolean; resolve: (h: Hit) => void }[] = [];
  /** Called before each /version answer: the place to change records mid-crawl. */
  beforeVersionPage?: () => void;
  /** Called before every answer, with the request: the place to change records mid-crawl on any endpoint. */
  beforeAnswer?: (url: URL) => void;
  /** Called with every answer sent whole (200, no fault): exactly what the client received. */
  served?: (url: URL, body: string) => void;
  /**
   * What a /cursor token holds: 'offset' (default), a position in the
   * listing, so rows deleted mid-crawl shift the pages; 'key', the last id
   * sent, pages sorted by id (a stable cursor, as Airtable's is).
   */
  cursorBy: 'offset' | 'key' = 'offset';
  /** Answered instead of the normal handler when set (for one-off contracts). */
  override?: (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => boolean;
  retryAfter = '0';
  url = '';

  constructor(count = 0) {
    for (let i = 1; i <= count; i++) this.add(`r${i}`);
  }

  add(name: string): Rec {
    const r = { id: this.records.length + 1, name, version: ++this.version, tags: [name] };
    this.records.push(r);
    return r;
  }

  /** A new version of a record, as a vendor does on every change. */
  touch(id: number): void {
    const r = this.records.find((x) => x.id === id);
    if (r) Object.assign(r, { version: ++this.version, name: `${r.name}'` });
  }

  /** Forgets every fault still queued. */
  reset(): void {
    this.faults.length = 0;
    this.hits.length = 0;
  }

  inject(...faults: Fault[]): void {
    this.faults.push(...faults);
  }

  /**
   * The first request (already arrived or still to come) that `match`
   * accepts: the n-th with `vendor.hit((_, i) => i === n - 1)`. An event to
   * wait for instead of a sleep; the test's own timeout bounds the wait.
   */
  hit(match: (h: Hit, index: number) => boolean = () => true): Promise<Hit> {
    const seen = this.hits.find((h, i) => match(h, i));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.waiters.push({ match: (h) => match(h, this.hits.indexOf(h)), resolve }));
  }

  async start(lifetimeMs = DEFAULT_LIFETIME_MS): Promise<string> {
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    setTimeout(() => void this.close(), lifetimeMs).unref();
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.sockets) s.destroy(); // also the requests left unanswered on purpose
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', this.url);
    const hit: Hit = { path: url.pathname, query: url.searchParams, headers: req.headers, at: performance.now(), wall: Date.now() };
    this.hits.push(hit);
    const ready = this.waiters.filter((w) => w.match(hit));
    this.waiters = this.waiters.filter((w) => !ready.includes(w));
    for (const w of ready) w.resolve(hit);
    if (this.override?.(req, res, url)) return;
    const fault = this.faults.shift();
    if (fault && fault !== 'ok' && this.fail(fault, req, res, url)) return;
    const body = this.answer(url, res);
    if (body === undefined) return;
    if (fault === 'truncated') return this.truncate(res, body);
    if (fault === 'cut') return this.cut(res, body);
    this.served?.(url, body);
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  }

  /** Serves a fault; false for the faults that need the real body (truncated, cut). */
  private fail(fault: Fault, req: http.IncomingMessage, res: http.ServerResponse, _url: URL): boolean {
    switch (fault) {
      case '500': case '503': case '408':
        res.writeHead(Number(fault), { 'content-type': 'application/json' }).end('{"error":"try again"}');
        return true;
      case '429':
        res.writeHead(429, { 'retry-after': this.retryAfter }).end('{"error":"slow down"}');
        return true;
      case 'reset':
        req.socket.destroy();
        return true;
      case 'timeout':
        return true; // never answer; close() destroys the socket
      default:
        return false;
    }
  }

  /** A chunked body that ends cleanly half way: what a crashing proxy sends. */
  private truncate(res: http.ServerResponse, body: string): void {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(body.slice(0, Math.max(1, Math.floor(body.length / 2))));
  }

  /** A body shorter than its Content-Length, then the connection drops. */
  private cut(res: http.ServerResponse, body: string): void {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.write(body.slice(0, Math.max(1, Math.floor(body.length / 2))), () => res.socket?.destroy());
  }

  /** A /cursor page whose token is the last id sent: the records past it, by id. */
  private cursorByKey(q: URLSearchParams): string {
    const after = q.has('offset') ? Number(Buffer.from(q.get('offset')!, 'base64url').toString()) : 0;
    const rest = [...this.records].sort((a, b) => a.id - b.id).filter((r) => r.id > after);
    const page = rest.slice(0, q.has('pageSize') ? Number(q.get('pageSize')) : PAGE_SIZE);
    const more = rest.length > page.length;
    return JSON.stringify({ records: page, ...(more ? { offset: Buffer.from(String(page[page.length - 1].id)).toString('base64url') } : {}) });
  }

  private answer(url: URL, res: http.ServerResponse): string | undefined {
    const q = url.searchParams;
    const num = (name: string, dflt: number) => (q.has(name) ? Number(q.get(name)) : dflt);
    this.beforeAnswer?.(url);
    const ids = q.has('ids') ? new Set(q.get('ids')!.split(',').map(Number)) : null;
    switch (url.pathname) {
      case '/pages': {
        if (ids) return JSON.stringify({ data: { items: this.records.filter((r) => ids.has(r.id)) }, meta: { total: ids.size } });
        const size = num('per_page', PAGE_SIZE);
        const from = (num('page', 1) - 1) * size;
        return JSON.stringify({ data: { items: this.records.slice(from, from + size) }, meta: { total: this.records.length } });
      }
      case '/keyset': {
        const page = [...this.records].sort((a, b) => a.id - b.id).filter((r) => r.id > num('after', 0)).slice(0, num('limit', PAGE_SIZE));
        return JSON.stringify({ data: page });
      }
      case '/updated': {
        const since = q.get('since') ?? '';
        const before = q.get('before') ?? '9999';
        const from = (num('page', 1) - 1) * PAGE_SIZE;
        const items = this.records.map((r) => ({ ...r, updated_at: updatedAt(r.version) }))
          .filter((r) => r.updated_at >= since && r.updated_at < before).sort((a, b) => a.version - b.version);
        return JSON.stringify({ data: { items: items.slice(from, from + PAGE_SIZE) } });
      }
      case '/offsets': {
        if (ids) return JSON.stringify(this.records.filter((r) => ids.has(r.id)));
        const from = num('offset', 0);
        return JSON.stringify(this.records.slice(from, from + num('limit', PAGE_SIZE)));
      }
      case '/cursor': {
        if (this.cursorBy === 'key') return this.cursorByKey(q);
        const from = q.has('offset') ? Number(Buffer.from(q.get('offset')!, 'base64url').toString()) : 0;
        const to = from + num('pageSize', PAGE_SIZE);
        const more = to < this.records.length;
        return JSON.stringify({ records: this.records.slice(from, to), ...(more ? { offset: Buffer.from(String(to)).toString('base64url') } : {}) });
      }
      case '/link-body': {
        const p = num('p', 1);
        const more = p * PAGE_SIZE < this.records.length;
        return JSON.stringify({ results: this.records.slice((p - 1) * PAGE_SIZE, p * PAGE_SIZE), links: { next: more ? `/link-body?p=${p + 1}` : null } });
      }
      case '/link-header': {
        const p = num('p', 1);
        if (p * PAGE_SIZE < this.records.length) {
          res.setHeader('link', `<${this.url}/link-header?p=1>; rel="first", <${this.url}/link-header?p=${p + 1}>; rel="next"`);
        }
        return JSON.stringify(this.records.slice((p - 1) * PAGE_SIZE, p * PAGE_SIZE));
      }
      case '/version': {
        this.beforeVersionPage?.();
        const after = num('after', 0);
        const page = this.records.filter((r) => r.version > after).sort((a, b) => a.version - b.version)
          .slice(0, num('page_size', PAGE_SIZE)).map((r) => ({ ...r }));
        const version = page.length ? { min: page[0].version, max: page[page.length - 1].version } : null;
        return JSON.stringify({ data: page, version });
      }
      default:
        res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"no such endpoint"}');
        return undefined;
    }
  }
}

/** Entity options (input form) for each vendor endpoint. */
export const ENDPOINTS = {
  page: { path: 'pages', recordsPath: 'data.items', pagination: { style: 'page', param: 'page', sizeParam: 'per_page', size: PAGE_SIZE, start: 1 } },
  offset: { path: 'offsets', pagination: { style: 'offset', offsetParam: 'offset', limitParam: 'limit', limit: PAGE_SIZE } },
  cursor: { path: 'cursor', recordsPath: 'records', pagination: { style: 'cursor', param: 'offset', cursorPath: 'offset', sizeParam: 'pageSize', size: PAGE_SIZE } },
  'next-link-body': { path: 'link-body', recordsPath: 'results', pagination: { style: 'next-link', from: 'body', path: 'links.next' } },
  'next-link-header': { path: 'link-header', pagination: { style: 'next-link', from: 'header' } },
  version: { path: 'version', pagination: { style: 'version', param: 'after', versionPath: 'version.max', sizeParam: 'page_size', size: PAGE_SIZE } },
  keyset: { path: 'keyset', recordsPath: 'data', pagination: { style: 'keyset', param: 'after', keyPath: 'id', sizeParam: 'limit', size: PAGE_SIZE } },
} as const;
export type EndpointName = keyof typeof ENDPOINTS;
export const ENDPOINT_NAMES = Object.keys(ENDPOINTS) as EndpointName[];
