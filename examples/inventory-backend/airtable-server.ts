/**
 * A local stand-in for Airtable's Web API, for the tests and the README
 * walkthrough. It follows the documented contract
 * (airtable.com/developers/web/api/list-records, …/rate-limits, …/errors):
 *
 * - GET /v0/{baseId}/{tableName}?pageSize=&offset= with
 *   `Authorization: Bearer <token>`;
 * - {"records": [{"id": "rec…", "createdTime": "…", "fields": {…}}],
 *   "offset": "itr…/rec…"}: `offset` only while more records follow;
 *   pageSize 1–100 (default 100), anything else is a 422;
 * - empty cells (null, "", false, []) are left out of `fields`; a linked
 *   record is an array of record ids;
 * - more than 5 requests in a second on a base: 429 with Retry-After;
 * - 401 without a valid token; 403 INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND
 *   for a table the token may not read (or that does not exist).
 *
 * Faults queued with `inject` are served one a request before the real
 * answer (429 with a short Retry-After, 500, 503, reset, truncated body).
 *
 *   npx tsx examples/inventory-backend/airtable-server.ts   # serves the sample on 127.0.0.1:8787
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { fileURLToPath } from 'node:url';

export type Cell = string | number | boolean | string[] | null;
export interface AirRecord { id: string; createdTime: string; fields: Record<string, Cell> }
export type Fault = 'ok' | '429' | '500' | '503' | 'reset' | 'truncated';

export const BASE_ID = 'appInventoryDemo';
export const TOKEN = 'patInventoryDemo.0123456789abcdef';
// Airtable's documented limits.
export const MAX_PAGE_SIZE = 100;
export const REQUESTS_PER_SECOND = 5;

export interface Hit { table: string; query: URLSearchParams; at: number; status: number }

export class AirtableServer {
  /** Table name → records, in the order the API lists them. */
  tables: Record<string, AirRecord[]>;
  readonly hits: Hit[] = [];
  /** Tables the token may not read: answered 403. */
  readonly forbidden = new Set<string>();
  /** Retry-After (seconds) of the 429 the rate limit answers, and of injected 429s. */
  retryAfter = { limit: '1', injected: '0.05' };
  /** Requests refused by the 5 requests/s limit (not counting injected 429s). */
  limited = 0;
  private faults: Fault[] = [];
  private recent: number[] = [];
  private server = http.createServer((req, res) => this.handle(req, res));
  private sockets = new Set<Socket>();
  private iterator = 0;
  url = '';

  constructor(tables: Record<string, AirRecord[]> = sampleBase(), readonly token = TOKEN, readonly baseId = BASE_ID) {
    this.tables = tables;
  }

  inject(...faults: Fault[]): void {
    this.faults.push(...faults);
  }

  /** Forgets queued faults and recorded hits. */
  reset(): void {
    this.faults.length = 0;
    this.hits.length = 0;
    this.limited = 0;
  }

  async start(port = 0): Promise<string> {
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.server.listen(port, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  /** What INVENTORY_API_URL is set to: the API root with the base, as the preset's baseUrl. */
  get baseUrl(): string {
    return `${this.url}/v0/${this.baseId}`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private send(res: http.ServerResponse, hit: Hit, status: number, body: unknown, headers: Record<string, string> = {}): void {
    hit.status = status;
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers }).end(JSON.stringify(body));
  }

  /**
   * For the walkthrough, not part of Airtable's API: POST /_forbid/<table>,
   * /_allow/<table>, /_price/<SKU>/<price>.
   */
  private admin(url: URL, res: http.ServerResponse): void {
    const [verb, a, b] = url.pathname.slice(2).split('/').map(decodeURIComponent);
    if (verb === 'forbid') this.forbidden.add(a);
    else if (verb === 'allow') this.forbidden.delete(a);
    else if (verb === 'price') {
      const p = this.tables.Products?.find((r) => r.fields.SKU === a);
      if (!p) return void res.writeHead(404).end('no such SKU\n');
      p.fields['Unit Price'] = Number(b);
    } else return void res.writeHead(404).end('unknown\n');
    res.writeHead(200).end('ok\n');
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (req.method === 'POST' && url.pathname.startsWith('/_')) return this.admin(url, res);
    const parts = url.pathname.split('/').slice(1).map(decodeURIComponent);
    const hit: Hit = { table: parts[2] ?? '', query: url.searchParams, at: performance.now(), status: 0 };
    this.hits.push(hit);
    const now = Date.now();
    this.recent = this.recent.filter((t) => now - t < 1000);
    this.recent.push(now);
    if (this.recent.length > REQUESTS_PER_SECOND) {
      this.limited += 1;
      return this.send(res, hit, 429, { errors: [{ error: 'RATE_LIMIT_REACHED', message: 'Rate limit exceeded. Please try again later' }] },
        { 'retry-after': this.retryAfter.limit });
    }
    const fault = this.faults.shift();
    if (fault === '429') {
      return this.send(res, hit, 429, { errors: [{ error: 'RATE_LIMIT_REACHED', message: 'Rate limit exceeded. Please try again later' }] },
        { 'retry-after': this.retryAfter.injected });
    }
    if (fault === '500' || fault === '503') return this.send(res, hit, Number(fault), { error: { type: 'SERVER_ERROR', message: 'Try again.' } });
    if (fault === 'reset') {
      hit.status = -1;
      req.socket.destroy();
      return;
    }
    if (req.headers.authorization !== `Bearer ${this.token}`) {
      return this.send(res, hit, 401, { error: { type: 'AUTHENTICATION_REQUIRED', message: 'Authentication required' } });
    }
    if (req.method !== 'GET' || parts[0] !== 'v0' || parts.length !== 3) return this.send(res, hit, 404, { error: 'NOT_FOUND' });
    const [, base, table] = parts;
    if (base !== this.baseId || !Object.hasOwn(this.tables, table) || this.forbidden.has(table)) {
      return this.send(res, hit, 403, { error: { type: 'INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND',
        message: 'Invalid permissions, or the requested model was not found. Check that both your user and your token have the required permissions, and that the model names and/or ids are correct.' } });
    }
    const q = url.searchParams;
    const pageSize = q.has('pageSize') ? Number(q.get('pageSize')) : MAX_PAGE_SIZE;
    if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > MAX_PAGE_SIZE) {
      return this.send(res, hit, 422, { error: { type: 'INVALID_REQUEST_UNKNOWN', message: `Invalid request: parameter validation failed. Check your request data.` } });
    }
    const records = this.tables[table];
    let from = 0;
    if (q.has('offset')) {
      // itr<n>/<id of the last record served>: continue after that record.
      const m = /^itr\d+\/(rec\w+)$/.exec(q.get('offset')!);
      const at = m ? records.findIndex((r) => r.id === m[1]) : -1;
      if (at < 0) return this.send(res, hit, 422, { error: { type: 'LIST_RECORDS_ITERATOR_NOT_AVAILABLE', message: 'The iterator is no longer available.' } });
      from = at + 1;
    }
    const page = records.slice(from, from + pageSize).map(present);
    const more = from + pageSize < records.length;
    const body = JSON.stringify({ records: page, ...(more ? { offset: `itr${++this.iterator}/${page[page.length - 1].id}` } : {}) });
    hit.status = 200;
    if (fault === 'truncated') {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' }).end(body.slice(0, Math.max(1, Math.floor(body.length / 2))));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' }).end(body);
  }
}

/** A record as the API shows it: empty cells left out. */
function present(r: AirRecord): AirRecord {
  const fields = Object.fromEntries(Object.entries(r.fields)
    .filter(([, v]) => v !== null && v !== '' && v !== false && !(Array.isArray(v) && v.length === 0)));
  return { id: r.id, createdTime: r.createdTime, fields };
}

/** A record id as Airtable writes them: "rec" and 14 characters. */
export const recId = (table: string, n: number) => `rec${table.slice(0, 3)}${String(n).padStart(11, '0')}`;

const created = (n: number) => new Date(Date.UTC(2024, 0, 1) + n * 3_600_000).toISOString().replace(/\.\d+Z$/, '.000Z');

/**
 * The sample base: 6 suppliers, 3 locations, 120 products (two pages),
 * 240 stock levels (three pages), the same on every call.
 */
export function sampleBase(): Record<string, AirRecord[]> {
  const countries = ['DE', 'NL', 'FR', 'PL', 'IT', 'ES'];
  const suppliers = countries.map((c, i) => ({ id: recId('Sup', i + 1), createdTime: created(i), fields: {
    Name: `Supplier ${i + 1} (${c})`, Email: i === 3 ? null : `orders@supplier${i + 1}.example`, Phone: `+49 30 ${1000 + i}`, Country: c,
  } }));
  const locations = ['Berlin Warehouse', 'Hamburg Store', 'Munich Store'].map((name, i) => ({ id: recId('Loc', i + 1), createdTime: created(10 + i),
    fields: { Name: name, Code: name.split(' ')[0].slice(0, 3).toUpperCase() } }));
  const products = Array.from({ length: 120 }, (_, i) => ({ id: recId('Pro', i + 1), createdTime: created(20 + i), fields: {
    SKU: `SKU-${String(i + 1).padStart(4, '0')}`,
    Name: `Product ${i + 1}${i % 7 === 0 ? ', large' : ''}`,
    'Unit Price': Math.round((2.5 + i * 1.37) * 100) / 100,
    Supplier: [suppliers[i % suppliers.length].id],
    Active: i % 10 !== 9,
  } as Record<string, Cell> }));
  const stock = products.flatMap((p, i) => [0, 1].map((k) => {
    const n = i * 2 + k;
    return { id: recId('Sto', n + 1), createdTime: created(200 + n), fields: {
      Product: [p.id], Location: [locations[(i + k) % locations.length].id],
      Quantity: (i * 7 + k * 3) % 50, 'Reorder Level': k === 0 ? 10 : null,
      'Last Counted': new Date(Date.UTC(2024, 4, 1 + (n % 28), 9, 30)).toISOString(),
    } as Record<string, Cell> };
  }));
  return { Suppliers: suppliers, Locations: locations, Products: products, 'Stock Levels': stock };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const server = new AirtableServer();
  await server.start(Number(process.env.PORT ?? 8787));
  process.stdout.write(`fake Airtable base serving on ${server.url}\n`
    + `  export INVENTORY_API_URL=${server.baseUrl}\n  export INVENTORY_BASE_ID=${BASE_ID}\n  export INVENTORY_TOKEN=${TOKEN}\n`
    + `  forbid a table: curl -X POST ${server.url}/_forbid/Products (allow again: /_allow/Products); reprice: /_price/SKU-0002/9.99\n`);
}
