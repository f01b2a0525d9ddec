/**
 * A local stand-in for the Lightspeed Retail (X-Series) API 2.0, for the
 * tests and the README walkthrough. It follows the contract the
 * `lightspeed-x` preset is built on (x-series-api.lightspeedhq.com:
 * Pagination, Rate Limiting, Authorization):
 *
 * - GET /api/2.0/<collection> with `Authorization: Bearer <token>` (401
 *   otherwise);
 * - collections page by a version cursor: `?after=<version>&page_size=<n>`
 *   answers {"data": […], "version": {"min", "max"}} with the records whose
 *   `version` is past `after`, lowest first; `version` is one global counter
 *   bumped on every change; an empty page ends the crawl;
 * - a deleted record stays in its collection with `deleted_at` set (and a
 *   new version), so an incremental crawl sees the deletion;
 * - /product_categories pages by category id instead: `?after=<id>` answers
 *   {"data": {"categories": […]}, "page_info": {"has_next", "last_seen"}};
 *   a category has `parent_category_id` (null at a root) and
 *   `root_category_id`;
 * - a sale carries its line items nested in `line_items`;
 * - 300 × registers + 50 requests per 5 minutes; past that, 429 with
 *   Retry-After (seconds until the oldest request leaves the window).
 *
 * Faults queued with `inject` are served one a request before the real
 * answer (429 with a short Retry-After, 500, 503, a connection reset, a
 * truncated body). The mutation helpers (add, update, remove, …) change the
 * store as a till would, bumping versions.
 *
 *   npx tsx examples/lightspeed-retail/lightspeed-server.ts   # the sample store on 127.0.0.1:8788
 *   (PORT, SALES, PAGE_DELAY_MS for a slow store, LIFETIME_MINUTES: it stops itself after 60)
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { fileURLToPath } from 'node:url';

export const TOKEN = 'lsxs_pt_demo0123456789abcdefDEMO';
export const API_PATH = '/api/2.0';
export const REGISTERS = 2;
/** The documented budget: 300 × registers + 50 requests per 5 minutes. */
export const documentedLimit = (registers: number) => ({ requests: 300 * registers + 50, windowMs: 300_000 });
// Without page_size the API chooses; this stand-in serves this many.
export const DEFAULT_PAGE_SIZE = 100;
export const MAX_PAGE_SIZE = 10_000;

export const VERSIONED = ['outlets', 'taxes', 'users', 'brands', 'suppliers', 'customer_groups',
  'products', 'customers', 'inventory', 'sales'] as const;
export type Versioned = typeof VERSIONED[number];
export type Collection = Versioned | 'product_categories';
export const COLLECTIONS: Collection[] = [...VERSIONED.slice(0, 6), 'product_categories', ...VERSIONED.slice(6)];

export type Json = string | number | boolean | null | Json[] | { [k: string]: Json };
export interface LsRecord { id: string; version: number; deleted_at: string | null; [field: string]: Json }
/** A line item as the till rings it up: unit price, unit tax and unit discount (before the totals). */
export interface LineItemInput {
  id: string; product_id: string; tax_id: string; sequence: number; quantity: number;
  price: number; tax: number; discount: number; note: string | null;
}
/** A line item as the API nests it in `line_items`, with its totals. */
export interface LineItem extends LineItemInput {
  price_total: number; tax_total: number; discount_total: number;
  [field: string]: Json;
}
export type Fault = 'ok' | '429' | '500' | '503' | 'reset' | 'truncated';

export interface Hit { collection: string; query: URLSearchParams; at: number; status: number; records: number }

export class LightspeedServer {
  readonly store: Record<Collection, LsRecord[]>;
  readonly hits: Hit[] = [];
  /** The server's own limit; by default the documented one for REGISTERS registers. */
  rateLimit = documentedLimit(REGISTERS);
  /** Retry-After (seconds) of injected 429s. */
  injectedRetryAfter = '0.05';
  /** Requests refused by the rate limit (not counting injected 429s). */
  limited = 0;
  /** Milliseconds to wait before answering a page of data (a slow store, for the resume demo). */
  pageDelayMs = 0;
  /**
   * Data pages of this collection still to be answered; every request for
   * one after them is held, never answered (a store that hangs mid-crawl, for
   * tests that kill a crawl: it is then surely mid-way, however slow the machine).
   * close() drops the held requests.
   */
  hold?: { collection: Collection; pages: number };
  /** Called before a data page is served: a test may change the store between pages. */
  beforePage?: (collection: Collection, hit: Hit) => void;
  private version: number;
  private faults: Fault[] = [];
  private recent: number[] = [];
  private server = http.createServer((req, res) => void this.handle(req, res));
  private sockets = new Set<Socket>();
  private clock = Date.UTC(2025, 2, 1, 9);
  url = '';

  constructor(store: Record<Collection, LsRecord[]> = sampleStore(), readonly token = TOKEN) {
    this.store = store;
    this.version = Math.max(0, ...Object.values(store).flat().map((r) => r.version));
  }

  inject(...faults: Fault[]): void {
    this.faults.push(...faults);
  }

  /** Forgets queued faults and recorded hits. */
  reset(): void {
    this.faults.length = 0;
    this.hits.length = 0;
    this.limited = 0;
    this.recent.length = 0;
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

  /** What LIGHTSPEED_URL is set to: the API root, as the preset's baseUrl. */
  get baseUrl(): string {
    return `${this.url}${API_PATH}`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // ── the store, as a till changes it ───────────────────────────────────

  /** The version the next change gets. */
  nextVersion(): number {
    this.version += Math.ceil(Math.random() * 3); // global and increasing, not by one
    return this.version;
  }

  /** A later "now" on every call, as ISO 8601 with an offset like the API's. */
  now(): string {
    this.clock += 61_000;
    return new Date(this.clock).toISOString().replace(/\.\d+Z$/, '+00:00');
  }

  get(collection: Collection, id: string): LsRecord {
    const r = this.store[collection].find((x) => x.id === id);
    if (!r) throw new Error(`no ${collection} record ${id}`);
    return r;
  }

  /** Live (not deleted) records of a collection. */
  live(collection: Collection): LsRecord[] {
    return this.store[collection].filter((r) => r.deleted_at === null);
  }

  add(collection: Collection, record: Omit<LsRecord, 'version' | 'deleted_at'>): LsRecord {
    const r = { ...record, deleted_at: null, version: this.nextVersion() } as LsRecord;
    this.store[collection].push(r);
    return r;
  }

  update(collection: Collection, id: string, patch: Record<string, Json>): LsRecord {
    const r = this.get(collection, id);
    Object.assign(r, patch, { version: this.nextVersion() });
    if ('updated_at' in r) r.updated_at = this.now();
    return r;
  }

  /** Deletes as the API does: the record stays, with deleted_at and a new version. */
  remove(collection: Collection, id: string): LsRecord {
    return this.update(collection, id, { deleted_at: this.now() });
  }

  /** Takes a line item out of a sale (a return edited on the till), recomputing the totals. */
  removeLineItem(saleId: string, lineItemId: string): LsRecord {
    const sale = this.get('sales', saleId);
    const items = (sale.line_items as LineItem[]).filter((l) => l.id !== lineItemId);
    if (items.length === (sale.line_items as LineItem[]).length) throw new Error(`sale ${saleId} has no line item ${lineItemId}`);
    return this.update('sales', saleId, { line_items: items, ...saleTotals(items) });
  }

  /** Changes a line item's quantity, recomputing its and the sale's totals. */
  setQuantity(saleId: string, lineItemId: string, quantity: number): LsRecord {
    const sale = this.get('sales', saleId);
    const items = (sale.line_items as LineItem[]).map((l) => (l.id === lineItemId ? lineItem({ ...l, quantity }) : l));
    return this.update('sales', saleId, { line_items: items, ...saleTotals(items) });
  }

  // ── HTTP ──────────────────────────────────────────────────────────────

  private send(res: http.ServerResponse, hit: Hit, status: number, body: unknown, headers: Record<string, string> = {}): void {
    hit.status = status;
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...headers }).end(JSON.stringify(body));
  }

  /**
   * For the walkthrough, not part of Lightspeed's API: POST /_rename/<product id>/<name>,
   * /_delete/<collection>/<id>, /_drop-line/<sale id>/<line item id>, /_sale (a new sale).
   */
  private admin(url: URL, res: http.ServerResponse): void {
    const [verb, a, b] = url.pathname.slice(2).split('/').map(decodeURIComponent);
    try {
      let r: LsRecord;
      if (verb === 'rename') r = this.update('products', a, { name: b });
      else if (verb === 'delete' && (COLLECTIONS as string[]).includes(a)) r = this.remove(a as Collection, b);
      else if (verb === 'drop-line') r = this.removeLineItem(a, b);
      else if (verb === 'sale') r = this.add('sales', newSale(this, this.store.sales.length + 1));
      else return void res.writeHead(404).end('unknown: use /_rename/<product>/<name>, /_delete/<collection>/<id>, /_drop-line/<sale>/<line item>, /_sale\n');
      res.writeHead(200, { 'content-type': 'application/json' }).end(`${JSON.stringify({ id: r.id, version: r.version })}\n`);
    } catch (err) {
      res.writeHead(404).end(`${(err as Error).message}\n`);
    }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (req.method === 'POST' && url.pathname.startsWith('/_')) return this.admin(url, res);
    const collection = url.pathname.startsWith(`${API_PATH}/`) ? url.pathname.slice(API_PATH.length + 1) : '';
    const hit: Hit = { collection, query: url.searchParams, at: performance.now(), status: 0, records: 0 };
    this.hits.push(hit);
    const now = Date.now();
    this.recent = this.recent.filter((t) => now - t < this.rateLimit.windowMs);
    if (this.recent.length >= this.rateLimit.requests) {
      this.limited += 1;
      const wait = Math.max(1, Math.ceil((this.recent[0] + this.rateLimit.windowMs - now) / 1000));
      return this.send(res, hit, 429, { error: 'Too Many Requests', message: 'Rate limit exceeded' }, { 'retry-after': String(wait) });
    }
    this.recent.push(now);
    const fault = this.faults.shift();
    if (fault === '429') {
      return this.send(res, hit, 429, { error: 'Too Many Requests', message: 'Rate limit exceeded' }, { 'retry-after': this.injectedRetryAfter });
    }
    if (fault === '500' || fault === '503') {
      return this.send(res, hit, Number(fault), { error: fault === '500' ? 'Internal Server Error' : 'Service Unavailable' });
    }
    if (fault === 'reset') {
      hit.status = -1;
      req.socket.destroy();
      return;
    }
    if (req.headers.authorization !== `Bearer ${this.token}`) {
      return this.send(res, hit, 401, { error: 'Unauthorized', error_description: 'The access token is missing, invalid or expired' });
    }
    if (req.method !== 'GET' || !(COLLECTIONS as string[]).includes(collection)) {
      return this.send(res, hit, 404, { error: 'Not Found', details: `no such resource: ${url.pathname}` });
    }
    const q = url.searchParams;
    const size = q.has('page_size') ? Number(q.get('page_size')) : DEFAULT_PAGE_SIZE;
    if (!Number.isInteger(size) || size < 1 || size > MAX_PAGE_SIZE) {
      return this.send(res, hit, 400, { error: 'Bad Request', details: `page_size must be between 1 and ${MAX_PAGE_SIZE}` });
    }
    this.beforePage?.(collection as Collection, hit);
    if (this.hold?.collection === collection) {
      if (this.hold.pages <= 0) return; // held: no answer
      this.hold.pages -= 1;
    }
    if (this.pageDelayMs) await new Promise((r) => setTimeout(r, this.pageDelayMs));
    let body: unknown;
    if (collection === 'product_categories') {
      // Paged by id: the categories after the last one seen, in id order.
      const all = [...this.store.product_categories].sort((x, y) => (x.id < y.id ? -1 : 1));
      const after = q.get('after');
      const rest = after === null ? all : all.filter((c) => c.id > after);
      const page = rest.slice(0, size);
      hit.records = page.length;
      body = { data: { categories: page }, page_info: { has_next: rest.length > size, last_seen: page.at(-1)?.id ?? null } };
    } else {
      const after = q.has('after') ? Number(q.get('after')) : 0;
      if (!Number.isInteger(after) || after < 0) return this.send(res, hit, 400, { error: 'Bad Request', details: 'after must be a version number' });
      const page = this.store[collection as Versioned].filter((r) => r.version > after)
        .sort((x, y) => x.version - y.version).slice(0, size);
      hit.records = page.length;
      body = page.length ? { data: page, version: { min: page[0].version, max: page.at(-1)!.version } } : { data: [], version: { min: null, max: null } };
    }
    const text = JSON.stringify(body);
    hit.status = 200;
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' })
      .end(fault === 'truncated' ? text.slice(0, Math.max(1, Math.floor(text.length / 2))) : text);
  }
}

// ── the sample store ────────────────────────────────────────────────────

const KIND: Record<string, number> = {
  outlet: 1, tax: 2, user: 3, brand: 4, supplier: 5, group: 6, category: 7, product: 8, customer: 9, inventory: 10, sale: 11, line: 12, register: 13,
};

/** A deterministic UUID (version 4 layout) for the n-th record of a kind, as Lightspeed's ids look. */
export const uuid = (kind: keyof typeof KIND, n: number) =>
  `0a${KIND[kind].toString(16).padStart(6, '0')}-0000-4000-8000-${n.toString(16).padStart(12, '0')}`;

/** Money with Lightspeed's five decimal places, from an integer number of 1/100000. */
const money = (units: number) => units / 100_000;
const units = (m: number) => Math.round(m * 100_000);

/** A line item with its totals computed from unit price, unit tax, unit discount and quantity. */
export function lineItem(l: LineItemInput): LineItem {
  return { id: l.id, product_id: l.product_id, tax_id: l.tax_id, sequence: l.sequence, quantity: l.quantity,
    price: l.price, tax: l.tax, discount: l.discount, note: l.note, price_total: money(units(l.price) * l.quantity), tax_total: money(units(l.tax) * l.quantity),
    discount_total: money(units(l.discount) * l.quantity) };
}

/** A sale's totals: the sums of its line items (exactly, in 1/100000). */
export function saleTotals(items: LineItem[]): { total_price: number; total_tax: number } {
  return {
    total_price: money(items.reduce((s, l) => s + units(l.price_total), 0)),
    total_tax: money(items.reduce((s, l) => s + units(l.tax_total), 0)),
  };
}

function newSale(server: LightspeedServer | null, n: number, store?: Record<Collection, LsRecord[]>): Omit<LsRecord, 'version' | 'deleted_at'> {
  const s = server?.store ?? store!;
  const products = s.products.filter((p) => p.deleted_at === null);
  const customers = s.customers.filter((c) => c.deleted_at === null);
  const outlets = s.outlets.filter((o) => o.deleted_at === null);
  const taxes = s.taxes;
  const items = Array.from({ length: 1 + (n % 4) }, (_, k) => {
    // The last four products are never sold in the sample (one of them may be deleted cleanly).
    const p = products[(n * 7 + k * 3) % Math.max(1, products.length - 4)];
    const tax = taxes[(n + k) % 2];
    const price = p.price_excluding_tax as number;
    return lineItem({
      id: uuid('line', n * 10 + k), product_id: p.id, tax_id: tax.id, sequence: k, quantity: 1 + ((n + k) % 3),
      price, tax: money(Math.round(units(price) * (tax.rate as number))), discount: k === 1 ? money(50_000) : 0,
      note: k === 2 ? 'gift wrap' : null,
    });
  });
  const at = new Date(Date.UTC(2025, 0, 2, 10) + n * 5_400_000).toISOString().replace(/\.\d+Z$/, '+00:00');
  return {
    id: uuid('sale', n), outlet_id: outlets[n % outlets.length].id, register_id: uuid('register', 1 + (n % REGISTERS)),
    user_id: s.users[n % s.users.length].id, customer_id: n % 5 === 0 ? null : customers[n % customers.length].id,
    invoice_number: `INV-${String(1000 + n)}`, status: n % 9 === 0 ? 'ONACCOUNT' : 'CLOSED', note: n % 6 === 0 ? 'paid by card' : null,
    sale_date: at, created_at: at, updated_at: at, ...saleTotals(items), line_items: items,
  };
}

/**
 * The sample store: 2 outlets, 2 taxes, 3 users, 4 brands, 3 suppliers,
 * 2 customer groups, 7 categories in three levels, `products` products,
 * 20 customers, stock of every product at both outlets, and `sales` sales
 * of 1–4 line items. The same on every call.
 */
export function sampleStore(opts: { products?: number; sales?: number } = {}): Record<Collection, LsRecord[]> {
  let v = 1000;
  const rec = (r: Record<string, Json>): LsRecord => ({ ...r, deleted_at: null, version: (v += 3) } as LsRecord);
  const at = (n: number) => new Date(Date.UTC(2024, 5, 1) + n * 3_600_000).toISOString().replace(/\.\d+Z$/, '+00:00');
  const taxes = [rec({ id: uuid('tax', 1), name: 'GST', rate: 0.15 }), rec({ id: uuid('tax', 2), name: 'No Tax', rate: 0 })];
  const outlets = [
    rec({ id: uuid('outlet', 1), name: 'Main Street', currency: 'NZD', time_zone: 'Pacific/Auckland', default_tax_id: taxes[0].id }),
    rec({ id: uuid('outlet', 2), name: 'Harbour Kiosk', currency: 'NZD', time_zone: 'Pacific/Auckland', default_tax_id: taxes[0].id }),
  ];
  const users = ['ana', 'ben', 'chloe'].map((u, i) => rec({ id: uuid('user', i + 1), username: u, display_name: u[0].toUpperCase() + u.slice(1),
    email: `${u}@shop.example`, account_type: i === 0 ? 'admin' : 'cashier', created_at: at(i) }));
  const brands = ['Kiwi Roasters', 'Tui Teas', 'Ponga Ware', 'Generic Brand'].map((name, i) => rec({ id: uuid('brand', i + 1), name, description: i === 3 ? null : `${name} products` }));
  const suppliers = ['Roastery Ltd', 'Leaf & Co', 'Clayworks'].map((name, i) => rec({ id: uuid('supplier', i + 1), name, description: null, source: 'USER' }));
  const groups = ['All Customers', 'Wholesale'].map((name, i) => rec({ id: uuid('group', i + 1), name, group_id: `${i}` }));
  // Ids chosen so that a child sorts before its parent: the crawl (by id) meets children first.
  const cat = (n: number, name: string, parent: number | null, root: number) =>
    rec({ id: uuid('category', n), name, parent_category_id: parent === null ? null : uuid('category', parent), root_category_id: uuid('category', root) });
  const categories = [
    cat(9, 'Drinks', null, 9), cat(3, 'Coffee', 9, 9), cat(1, 'Beans', 3, 9), cat(2, 'Ground', 3, 9), cat(4, 'Tea', 9, 9),
    cat(8, 'Homeware', null, 8), cat(5, 'Mugs', 8, 8),
  ];
  const leaves = [1, 2, 4, 5].map((n) => categories.find((c) => c.id === uuid('category', n))!);
  const products = Array.from({ length: opts.products ?? 40 }, (_, i) => {
    const c = leaves[i % leaves.length];
    return rec({
      id: uuid('product', i + 1), handle: `item-${i + 1}`, sku: `SKU-${String(10_000 + i)}`, name: `${c.name} no. ${i + 1}`,
      brand_id: i % 5 === 4 ? null : brands[i % 3].id, supplier_id: suppliers[i % 3].id,
      categories: [{ id: c.id, name: c.name }], price_excluding_tax: money(250_000 + i * 137_391), supply_price: money(120_000 + i * 50_000),
      is_active: i % 11 !== 10, created_at: at(10 + i), updated_at: at(10 + i),
    });
  });
  const customers = Array.from({ length: 20 }, (_, i) => rec({
    id: uuid('customer', i + 1), customer_code: `C${String(i + 1).padStart(4, '0')}`, first_name: ['Aroha', 'Liam', 'Mere', 'Noah', 'Ruby'][i % 5],
    last_name: ['Ngata', 'Smith', 'Walker', 'Chen', 'Patel'][(i * 3) % 5], email: i % 4 === 3 ? null : `customer${i + 1}@mail.example`,
    customer_group_id: groups[i % 7 === 0 ? 1 : 0].id, loyalty_balance: money(i * 25_000), created_at: at(100 + i), updated_at: at(100 + i),
  }));
  const inventory = products.flatMap((p, i) => outlets.map((o, k) => rec({
    id: uuid('inventory', i * 2 + k + 1), product_id: p.id, outlet_id: o.id, inventory_level: (i * 13 + k * 7) % 60 - (i % 17 === 0 ? 2 : 0),
    reorder_point: k === 0 ? 10 : null, reorder_amount: k === 0 ? 24 : null, average_cost: p.supply_price,
  })));
  const store: Record<Collection, LsRecord[]> = {
    outlets, taxes, users, brands, suppliers, customer_groups: groups, product_categories: categories, products, customers, inventory, sales: [],
  };
  for (let n = 1; n <= (opts.sales ?? 30); n++) store.sales.push(rec(newSale(null, n, store)));
  return store;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const server = new LightspeedServer(sampleStore({ sales: Number(process.env.SALES ?? 30) }));
  server.pageDelayMs = Number(process.env.PAGE_DELAY_MS ?? 0);
  await server.start(Number(process.env.PORT ?? 8788));
  const p = server.live('products')[1].id;
  const s = server.store.sales[3];
  const sold = new Set(server.store.sales.map((x) => x.customer_id));
  const c = server.live('customers').find((x) => !sold.has(x.id))!.id;
  // Bounded: a forgotten demo server does not run for ever.
  const minutes = Number(process.env.LIFETIME_MINUTES ?? 60);
  setTimeout(() => {
    process.stdout.write(`stopping after ${minutes} minutes (LIFETIME_MINUTES)\n`);
    void server.close().then(() => process.exit(0));
  }, minutes * 60_000);
  process.stdout.write(`fake Lightspeed X-Series store serving on ${server.url}\n`
    + `  export LIGHTSPEED_URL=${server.baseUrl}\n  export LIGHTSPEED_TOKEN=${TOKEN}\n`
    + `  rename a product:    curl -X POST ${server.url}/_rename/${p}/Flat%20White%20Beans\n`
    + `  delete a customer:   curl -X POST ${server.url}/_delete/customers/${c}\n`
    + `  drop a line item:    curl -X POST ${server.url}/_drop-line/${s.id}/${(s.line_items as LineItem[])[0].id}\n`
    + `  ring up a new sale:  curl -X POST ${server.url}/_sale\n`);
}
