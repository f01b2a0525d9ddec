import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A fake Directus 11 items API, written from its public documentation:
 * GET /items/<collection> with `limit` (default 100, -1 for all, capped at
 * the instance's QUERY_LIMIT_MAX), `offset`, `sort` (default the primary
 * key), `meta=filter_count` ({"meta": {"filter_count": n}}), and `filter` as
 * JSON (`_eq`, `_gt`, `_gte`, `_lt`, `_in`, `_null`, `_nnull`, `_or`,
 * `_and`) or in brackets (`filter[id][_in]=1,2`). A datetime compared with a
 * value that is not a date is a 400, as Directus answers an invalid query.
 * New items have date_updated null; an update sets it.
 */
export interface Item { id: number; title: string; date_created: string; date_updated: string | null }

export interface Seen { collection: string; limit: number | null; offset: number; filter: string | null; query: URLSearchParams }

const DATE_FIELDS = new Set(['date_created', 'date_updated']);

export class FakeDirectus {
  readonly collections = new Map<string, Item[]>();
  /** Every request to /items, in order. */
  readonly seen: Seen[] = [];
  /** Answer 503 to everything while true. */
  down = false;
  /** Pages to answer before going down (null: never). */
  downAfter: number | null = null;
  url = '';
  private server = http.createServer((req, res) => this.answer(req, res));
  private clock = Date.parse('2024-01-01T00:00:00.000Z');

  constructor(readonly token: string, readonly maxLimit: number) {}

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  items(collection: string): Item[] {
    let list = this.collections.get(collection);
    if (!list) this.collections.set(collection, list = []);
    return list;
  }

  /** The clock, one second on per call, as Directus writes timestamps. */
  tick(): string {
    this.clock += 1000;
    return new Date(this.clock).toISOString();
  }

  /** `seconds` before the clock: a change whose transaction commits late. */
  before(seconds: number): string {
    return new Date(this.clock - seconds * 1000).toISOString();
  }

  create(collection: string, title: string, stamp = this.tick()): Item {
    const list = this.items(collection);
    const item = { id: (list.at(-1)?.id ?? 0) + 1, title, date_created: stamp, date_updated: null };
    list.push(item);
    return item;
  }

  update(collection: string, id: number, title: string, stamp = this.tick()): void {
    const item = this.items(collection).find((i) => i.id === id)!;
    item.title = title;
    item.date_updated = stamp < item.date_created ? item.date_created : stamp;
  }

  requestsFor(collection: string): Seen[] {
    return this.seen.filter((s) => s.collection === collection);
  }

  private answer(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const m = /^\/items\/([^/]+)$/.exec(url.pathname);
    if (req.headers.authorization !== `Bearer ${this.token}`) return json(res, 401, { errors: [{ message: 'Invalid user credentials.' }] });
    if (!m) return json(res, 404, { errors: [{ message: 'Route doesn\'t exist.' }] });
    const collection = decodeURIComponent(m[1]);
    const q = url.searchParams;
    const rawLimit = q.get('limit');
    const offset = Number(q.get('offset') ?? 0);
    this.seen.push({ collection, limit: rawLimit === null ? null : Number(rawLimit), offset, filter: q.get('filter'), query: q });
    if (this.downAfter !== null && this.downAfter-- <= 0) this.down = true;
    if (this.down) return json(res, 503, { errors: [{ message: 'Service Unavailable' }] });
    let filter: unknown;
    try {
      filter = filterOf(q);
    } catch (err) {
      return json(res, 400, { errors: [{ message: `Invalid query. ${(err as Error).message}`, extensions: { code: 'INVALID_QUERY' } }] });
    }
    const sort = q.get('sort') ?? 'id';
    const desc = sort.startsWith('-');
    const field = sort.replace(/^-/, '') as keyof Item;
    let matching: Item[];
    try {
      matching = this.items(collection).filter((i) => matches(i, filter));
    } catch (err) {
      return json(res, 400, { errors: [{ message: `Invalid query. ${(err as Error).message}`, extensions: { code: 'INVALID_QUERY' } }] });
    }
    matching.sort((a, b) => (a[field]! < b[field]! ? -1 : a[field]! > b[field]! ? 1 : 0) * (desc ? -1 : 1));
    const asked = rawLimit === null ? 100 : Number(rawLimit);
    const limit = asked === -1 ? this.maxLimit : Math.min(asked, this.maxLimit);
    const body: Record<string, unknown> = { data: matching.slice(offset, offset + limit).map((i) => ({ ...i })) };
    const meta = q.get('meta');
    if (meta === 'filter_count' || meta === '*') body.meta = { filter_count: matching.length };
    json(res, 200, body);
  }
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
}

/** The filter of a query: the JSON `filter` parameter and/or filter[field][op] ones, all to hold. */
function filterOf(q: URLSearchParams): unknown {
  const all: unknown[] = [];
  const raw = q.get('filter');
  if (raw !== null) all.push(JSON.parse(raw));
  for (const [k, v] of q) {
    const m = /^filter\[([^\]]+)\]\[(_[a-z]+)\]$/.exec(k);
    if (m) all.push({ [m[1]]: { [m[2]]: m[2] === '_in' ? v.split(',') : v } });
  }
  return { _and: all };
}

function matches(item: Item, f: unknown): boolean {
  const o = f as Record<string, unknown>;
  return Object.entries(o).every(([k, v]) => {
    if (k === '_and') return (v as unknown[]).every((x) => matches(item, x));
    if (k === '_or') return (v as unknown[]).some((x) => matches(item, x));
    const value = item[k as keyof Item];
    return Object.entries(v as Record<string, unknown>).every(([op, arg]) => test(k, value, op, arg));
  });
}

function test(field: string, value: unknown, op: string, arg: unknown): boolean {
  const cmp = (a: unknown) => {
    if (DATE_FIELDS.has(field)) {
      const t = typeof a === 'string' && /^\d{4}-\d\d-\d\d/.test(a) ? Date.parse(a) : NaN;
      if (Number.isNaN(t)) throw new Error(`"${String(a)}" is not a valid datetime for field "${field}"`);
      return value === null ? null : Math.sign(Date.parse(value as string) - t);
    }
    const n = Number(a);
    return Math.sign(Number(value) - n);
  };
  switch (op) {
    case '_eq': return cmp(arg) === 0;
    case '_gt': return cmp(arg) === 1;
    case '_gte': { const c = cmp(arg); return c === 1 || c === 0; }
    case '_lt': return cmp(arg) === -1;
    case '_in': return (arg as unknown[]).map(String).includes(String(value));
    case '_null': return (value === null) === (arg === true || arg === 'true');
    case '_nnull': return (value !== null) === (arg === true || arg === 'true');
    default: throw new Error(`unknown filter operator "${op}"`);
  }
}
