/**
 * The http bench's vendor: a product catalogue on 127.0.0.1 with version-cursor
 * pagination as the Lightspeed Retail X-Series API 2.0 serves it, run in a
 * child process (forked by bench/http.ts) so its memory and CPU time are not
 * the engine's RSS.
 *
 *   GET /c/<n>/products?after=<version>&page_size=<k>
 *     → {"data": [products with version > after, by version, at most k],
 *        "version": {"min", "max"}}   ({"data": [], "version": null} ends the crawl)
 *
 * <n> is the catalogue's size; product i (1..n) is generated from i alone, so
 * a catalogue of any size costs no memory. Every answer is sent `latencyMs`
 * after the request arrived (a vendor's think time plus the network).
 *
 * Rate limit, per bearer token (vendors count per token): a token in `limits`
 * may start `requests` requests in any sliding window of `perSeconds`
 * seconds; one more is answered 429 with Retry-After (whole seconds, rounded
 * up) and not counted. Every answer to a limited token carries
 * X-RateLimit-Limit and X-RateLimit-Remaining. A token with `fixed: true`
 * is counted in fixed windows aligned to the clock (a new one every
 * `perSeconds` s since the epoch) instead, and its answers also carry
 * X-RateLimit-Reset (the window's end, epoch seconds): the vendor telling the
 * truth, whatever the client's configuration assumed.
 *
 * Bounded: it listens on 127.0.0.1 only, exits when its parent disconnects
 * and after `lifetimeMs` whatever happens. Statistics (per token: arrival and
 * finish times, statuses, busy time) go to the parent over IPC.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

export interface ServerOptions {
  latencyMs: number;
  lifetimeMs: number;
  limits: Record<string, VendorLimit>;
}

export interface VendorLimit {
  requests: number;
  perSeconds: number;
  /** Fixed windows aligned to the clock, announced with X-RateLimit-Reset; else a sliding window without it. */
  fixed?: boolean;
}

export interface TokenStats {
  requests: number;
  ok: number;
  rateLimited: number;
  other: number;
  /** Sum over answered requests of (answer sent − arrival), ms. */
  busyMs: number;
  /** Arrival and finish times (ms, this process's performance.now()) of every request, in arrival order. */
  arrivals: number[];
  /** The same arrivals on the wall clock (Date.now()), which fixed windows are aligned to. */
  wallArrivals: number[];
  finishes: number[];
  statuses: number[];
  records: number;
  bytes: number;
}

export type ServerMessage =
  | { type: 'listening'; url: string }
  | { type: 'stats'; id: number; stats: Record<string, TokenStats> };

export type ParentMessage = { type: 'stats'; id: number; reset: boolean } | { type: 'stop' };

const BASE_VERSION = 7_000_000_000; // Lightspeed versions are large integers

const uuid = (i: number, kind: number) =>
  `0${kind}000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`;

const COLORS = ['Black', 'White', 'Navy', 'Red', 'Olive', 'Sand'];
const SIZES = ['XS', 'S', 'M', 'L', 'XL'];

/** Product i, shaped like an X-Series 2.0 product (a subset of its fields). */
export function product(i: number) {
  const price = Math.round(((i % 9000) + 100) * 1.15) / 100 + 0.99;
  const created = Date.UTC(2023, 0, 1) + i * 60_000;
  return {
    id: uuid(i, 1),
    source_id: null,
    variant_parent_id: i % 5 === 0 ? null : uuid(i - (i % 5), 1),
    name: `Product ${i} ${COLORS[i % COLORS.length]} / ${SIZES[i % SIZES.length]}`,
    variant_name: `${COLORS[i % COLORS.length]} / ${SIZES[i % SIZES.length]}`,
    handle: `product-${i}`,
    sku: `SKU-${String(i).padStart(8, '0')}`,
    supplier_code: i % 3 === 0 ? null : `SUP-${i % 997}`,
    active: i % 17 !== 0,
    has_inventory: true,
    is_composite: false,
    description: `<p>Product ${i}: a sturdy everyday item, ${COLORS[i % COLORS.length].toLowerCase()}, size ${SIZES[i % SIZES.length]}.</p>`,
    created_at: new Date(created).toISOString().replace('.000Z', '+00:00'),
    updated_at: new Date(created + (i % 1000) * 3_600_000).toISOString().replace('.000Z', '+00:00'),
    deleted_at: null,
    version: BASE_VERSION + i * 3,
    price_including_tax: Number((price * 1.15).toFixed(2)),
    price_excluding_tax: price,
    supply_price: Number((price * 0.45).toFixed(2)),
    brand: { id: uuid(i % 40, 2), name: `Brand ${i % 40}` },
    supplier: { id: uuid(i % 25, 3), name: `Supplier ${i % 25}` },
    product_category: { id: uuid(i % 60, 4), name: `Category ${i % 60}` },
    tag_ids: [uuid(i % 11, 5), uuid(i % 13, 5)],
    variant_options: [{ name: 'Colour', value: COLORS[i % COLORS.length] }, { name: 'Size', value: SIZES[i % SIZES.length] }],
  };
}

/** Index of the first product whose version is > after (1-based). */
const firstAfter = (after: number) => Math.max(1, Math.floor((after - BASE_VERSION) / 3) + 1);

function emptyStats(): TokenStats {
  return { requests: 0, ok: 0, rateLimited: 0, other: 0, busyMs: 0, arrivals: [], wallArrivals: [], finishes: [], statuses: [], records: 0, bytes: 0 };
}

export async function serve(opts: ServerOptions, send: (m: ServerMessage) => void): Promise<() => Promise<void>> {
  let stats: Record<string, TokenStats> = {};
  const windows = new Map<string, number[]>(); // accepted arrival times per limited token
  const sockets = new Set<Socket>();
  const fixedCounts = new Map<string, { window: number; used: number }>();

  /** A request against a fixed-window limit: counted if there is room; the headers say the truth either way. */
  const fixedWindow = (token: string, limit: VendorLimit) => {
    const now = Date.now();
    const windowMs = limit.perSeconds * 1000;
    const window = Math.floor(now / windowMs);
    const c = fixedCounts.get(token);
    const used = c && c.window === window ? c.used : 0;
    const resetAt = (window + 1) * windowMs;
    const ok = used < limit.requests;
    if (ok) fixedCounts.set(token, { window, used: used + 1 });
    const headers: Record<string, string | number> = {
      'x-ratelimit-limit': limit.requests,
      'x-ratelimit-remaining': ok ? limit.requests - used - 1 : 0,
      'x-ratelimit-reset': String(resetAt / 1000),
    };
    if (!ok) headers['retry-after'] = String(Math.ceil((resetAt - now) / 1000));
    return { ok, headers };
  };

  const server = http.createServer((req, res) => {
    const arrived = performance.now();
    const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '-';
    const s = (stats[token] ??= emptyStats());
    s.requests++;
    s.arrivals.push(arrived);
    s.wallArrivals.push(Date.now());
    const slot = s.arrivals.length - 1;
    const finish = (status: number, headers: Record<string, string | number>, body: string) => {
      const wait = Math.max(0, arrived + opts.latencyMs - performance.now());
      setTimeout(() => {
        res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(body, () => {
          const done = performance.now();
          s.finishes[slot] = done;
          s.busyMs += done - arrived;
        });
      }, wait);
      s.statuses[slot] = status;
    };

    const limit = opts.limits[token];
    let rlHeaders: Record<string, string | number> = {};
    if (limit?.fixed) {
      const f = fixedWindow(token, limit);
      if (!f.ok) {
        s.rateLimited++;
        return finish(429, f.headers, '{"error":"Too Many Requests"}');
      }
      rlHeaders = f.headers;
    } else if (limit) {
      const w = limit.perSeconds * 1000;
      const recent = (windows.get(token) ?? []).filter((t) => t > arrived - w);
      if (recent.length >= limit.requests) {
        windows.set(token, recent);
        s.rateLimited++;
        const freeInMs = recent[recent.length - limit.requests] + w - arrived;
        return finish(429, { 'retry-after': String(Math.ceil(freeInMs / 1000)), 'x-ratelimit-limit': limit.requests, 'x-ratelimit-remaining': 0 },
          '{"error":"Too Many Requests"}');
      }
      recent.push(arrived);
      windows.set(token, recent);
      rlHeaders['x-ratelimit-limit'] = limit.requests;
      rlHeaders['x-ratelimit-remaining'] = limit.requests - recent.length;
    }

    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const m = /^\/c\/(\d+)\/products$/.exec(url.pathname);
    if (!m || req.method !== 'GET') {
      s.other++;
      return finish(404, rlHeaders, '{"error":"Not Found"}');
    }
    const n = Number(m[1]);
    const after = url.searchParams.has('after') ? Number(url.searchParams.get('after')) : 0;
    const size = Math.min(10_000, Number(url.searchParams.get('page_size') ?? 1000) || 1000);
    const from = firstAfter(after);
    const to = Math.min(n, from + size - 1);
    const data = [];
    for (let i = from; i <= to; i++) data.push(product(i));
    const body = JSON.stringify({ data, version: data.length ? { min: data[0].version, max: data[data.length - 1].version } : null });
    s.ok++;
    s.records += data.length;
    s.bytes += Buffer.byteLength(body);
    finish(200, rlHeaders, body);
  });
  server.keepAliveTimeout = 30_000;
  server.on('connection', (sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  send({ type: 'listening', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });

  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    for (const sock of sockets) sock.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  const onMessage = (msg: ParentMessage) => {
    if (msg.type === 'stats') {
      send({ type: 'stats', id: msg.id, stats });
      if (msg.reset) {
        stats = {};
        windows.clear();
        fixedCounts.clear();
      }
    } else if (msg.type === 'stop') void close().then(() => process.exit(0));
  };
  process.on('message', onMessage);
  return close;
}

// Run as a forked child: options in argv[2] (JSON), messages over IPC.
if (process.send && process.argv[2]) {
  const opts = JSON.parse(process.argv[2]) as ServerOptions;
  const send = (m: ServerMessage) => process.send?.(m);
  const close = await serve(opts, send);
  const quit = () => void close().finally(() => process.exit(0));
  process.on('disconnect', quit);
  setTimeout(quit, opts.lifetimeMs).unref();
}
