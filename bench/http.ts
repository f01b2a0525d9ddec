/**
 * The http source's bench, run by bench/run.ts after the Postgres → Postgres
 * phases (or alone with BENCH_ONLY=http). Against a local vendor
 * (bench/http-server.ts, a forked child on 127.0.0.1 that answers each page
 * after BENCH_HTTP_LATENCY_MS) serving a product catalogue with X-Series 2.0
 * version-cursor pagination:
 *
 *   small      initial sync of BENCH_HTTP_ROWS/10 products (the RSS reference)
 *   full       initial sync of BENCH_HTTP_ROWS products, no rate limit: rows/s,
 *              and how much of the fetch phase the vendor was busy
 *   fetch only the same crawl with no staging at all (the engine's paginate,
 *              page n+1 requested as page n is handed over, each page read
 *              and dropped): what the full sync is measured against (≤ 1.2×)
 *   sequential the same crawl without overlap, by the bench itself: fetch
 *              page n, then COPY it (as the engine does, into a text staging
 *              table in its own transaction), then fetch page n+1
 *   limited    an initial sync through a source with rateLimit R requests per
 *              W s, against a vendor enforcing the same limit (429 +
 *              Retry-After): the share of the budget used, and the 429s
 *   wrong      the same crawl through a source whose configured rateLimit is
 *              wrong (BENCH_HTTP_WRONG_LIMIT, default the lightspeed-x
 *              preset's 350 / 300 s) against a vendor enforcing R per W s in
 *              fixed windows and saying so in X-RateLimit-Limit / -Remaining /
 *              -Reset: the budget must be learned from the headers
 *
 * Environment: BENCH_HTTP_ROWS (default 200,000, or BENCH_ROWS/5 when that is
 * smaller), BENCH_HTTP_LATENCY_MS (20), BENCH_HTTP_PAGE_SIZE (1000),
 * BENCH_HTTP_LIMIT (e.g. "20/2": 20 requests per 2 s), BENCH_HTTP_LIMIT_PAGES
 * (4 windows' worth: 80 pages, so 81 requests with the empty last page),
 * BENCH_HTTP_LIMIT_PAGE_SIZE (100 products a page in the rate-limited runs),
 * BENCH_HTTP_WRONG_LIMIT (the wrong configured limit, "350/300"),
 * BENCH_HTTP_SQL (SQL applied after the migrations of the http database
 * only; BENCH_SQL applies to it too when this is unset).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { applyConfig } from '../src/config/apply.js';
import { parseConfig } from '../src/config/load.js';
import { ensureDatabase, migrateDatabase, quoteIdent } from '../src/db/database.js';
import { freePort, startEmbedded, type EmbeddedServer } from '../src/db/embedded.js';
import { makePool } from '../src/db/pool.js';
import { Engine, type RunResult } from '../src/engine/run.js';
import { copyLine } from '../src/db/copy.js';
import { HttpClient } from '../src/sources/http/client.js';
import { withCursor } from '../src/sources/http/crawl.js';
import { recordMapper } from '../src/sources/http/fields.js';
import { paginate } from '../src/sources/http/paginate.js';
import type { HttpEntityOptions } from '../src/sources/http/schema.js';
import { httpSource } from '../src/sources/http/schema.js';
import type { ParentMessage, ServerMessage, TokenStats, VendorLimit } from './http-server.js';
import { autovacuumIdle, MB, measure } from './measure.js';
import type { Target } from './report.js';

const HTTP_DB = 'syncline_bench_http';
const FREE_TOKEN = 'bench-free-token';
const LIMITED_TOKEN = 'bench-limited-token';
const WRONG_TOKEN = 'bench-wrong-config-token';
const RSS_TOLERANCE_MB = 10;
const BUDGET_TARGET = 0.95;
const FETCH_RATIO_TARGET = 1.2;

const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
const mb = (bytes: number) => round(bytes / MB, 1);
const sign = (x: number) => `${x >= 0 ? '+' : ''}${x}`;

function progress(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] http: ${msg}\n`);
}

const DDL = (table: string) => `create table ${table} (
  id uuid primary key,
  variant_parent_id uuid,
  name text not null,
  variant_name text,
  handle text,
  sku text,
  supplier_code text,
  active boolean not null,
  has_inventory boolean,
  description text,
  created_at timestamptz,
  updated_at timestamptz,
  deleted_at timestamptz,
  version bigint not null,
  price_including_tax numeric(12,2),
  price_excluding_tax numeric(12,2),
  supply_price numeric(12,2),
  brand_id uuid,
  supplier_id uuid,
  category_id uuid,
  tag_ids jsonb,
  variant_options jsonb)`;

const FIELDS = { brand_id: 'brand.id', supplier_id: 'supplier.id', category_id: 'product_category.id' };

/** The vendor, forked so that its memory is not counted in the engine's RSS. */
class Vendor {
  private seq = 0;
  private waiting = new Map<number, (s: Record<string, TokenStats>) => void>();
  private constructor(private readonly child: ChildProcess, readonly url: string) {
    child.on('message', (m: ServerMessage) => {
      if (m.type === 'stats') {
        this.waiting.get(m.id)?.(m.stats);
        this.waiting.delete(m.id);
      }
    });
  }

  static async start(opts: { latencyMs: number; limits: Record<string, VendorLimit> }): Promise<Vendor> {
    const script = path.join(path.dirname(fileURLToPath(import.meta.url)), 'http-server.ts');
    const child = fork(script, [JSON.stringify({ ...opts, lifetimeMs: 30 * 60_000 })], {
      execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const url = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('the bench vendor did not start within 20 s')), 20_000);
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`the bench vendor exited with ${code}`)));
      child.on('message', (m: ServerMessage) => {
        if (m.type === 'listening') {
          clearTimeout(t);
          resolve(m.url);
        }
      });
    });
    return new Vendor(child, url);
  }

  /** Per-token statistics since the last reset; `reset` starts them (and the rate windows) afresh. */
  stats(reset = true): Promise<Record<string, TokenStats>> {
    const id = ++this.seq;
    return new Promise((resolve) => {
      this.waiting.set(id, resolve);
      this.child.send({ type: 'stats', id, reset } satisfies ParentMessage);
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.send({ type: 'stop' } satisfies ParentMessage);
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(t);
  }
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

interface RunPhase {
  seconds: number;
  rows: number;
  rows_per_s: number;
  peak_rss_mb: number;
  start_rss_mb: number;
  wal_bytes: number;
  fetch_ms: number | null;
  merge_ms: number | null;
  cast_ms: number;
  phases: Record<string, number>;
  run: { fetched: number; inserted: number; updated: number; deleted: number; unchanged: number; quarantined: number; run_change_rows: number };
  requests: number;
  http_429: number;
  server_busy_ms: number;
  verified: boolean;
}

/** Server-side view of a crawl: requests, busy time, and the first arrival → last answer span. */
function crawlStats(s: TokenStats | undefined) {
  if (!s || !s.arrivals.length) return { requests: 0, ok: 0, r429: 0, busyMs: 0, spanMs: 0, okArrivals: [] as number[], okWall: [] as number[], all: [] as { at: number; status: number }[] };
  const finishes = s.finishes.filter((x) => x !== undefined);
  return {
    requests: s.requests, ok: s.ok, r429: s.rateLimited, busyMs: s.busyMs,
    spanMs: Math.max(...finishes) - s.arrivals[0],
    okArrivals: s.arrivals.filter((_, i) => s.statuses[i] === 200),
    okWall: s.wallArrivals.filter((_, i) => s.statuses[i] === 200),
    all: s.arrivals.map((at, i) => ({ at, status: s.statuses[i] })),
  };
}

export interface HttpBenchResult {
  result: Record<string, unknown>;
  targets: Target[];
}

export async function runHttpBench(benchRows: number | undefined): Promise<HttpBenchResult> {
  const dflt = benchRows === undefined ? 200_000 : Math.min(200_000, Math.max(10_000, Math.floor(benchRows / 5)));
  const N = Number(process.env.BENCH_HTTP_ROWS ?? dflt);
  if (!Number.isInteger(N) || N < 1000) throw new Error('BENCH_HTTP_ROWS must be an integer of at least 1000');
  const SMALL = Math.floor(N / 10);
  const latencyMs = Number(process.env.BENCH_HTTP_LATENCY_MS ?? 20);
  const pageSize = Number(process.env.BENCH_HTTP_PAGE_SIZE ?? 1000);
  const [limReq, limSec] = (process.env.BENCH_HTTP_LIMIT ?? '20/2').split('/').map(Number);
  const limitPages = Number(process.env.BENCH_HTTP_LIMIT_PAGES ?? limReq * 4);
  // Pages of the rate-limited runs: small enough that the limit, not the
  // engine's speed on a 2-core machine, bounds the crawl (what is measured
  // there is how much of the vendor's budget the pacing uses).
  const limitPageSize = Number(process.env.BENCH_HTTP_LIMIT_PAGE_SIZE ?? 100);
  const LIMITED_ROWS = limitPages * limitPageSize;
  const [wrongReq, wrongSec] = (process.env.BENCH_HTTP_WRONG_LIMIT ?? '350/300').split('/').map(Number);

  let server: EmbeddedServer | undefined;
  let dir: string | undefined;
  let adminUrl = process.env.BENCH_DATABASE_URL;
  const pools: pg.Pool[] = [];
  let engine: Engine | undefined;
  let vendor: Vendor | undefined;
  try {
    if (!adminUrl) {
      progress('starting a throwaway embedded PostgreSQL');
      dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-bench-http-'));
      server = await startEmbedded({ dir, port: await freePort(), persistent: false });
      adminUrl = server.url('postgres');
    }
    const admin = makePool(adminUrl, { max: 2 });
    pools.push(admin);
    await admin.query(`drop database if exists ${quoteIdent(HTTP_DB)} with (force)`);
    await ensureDatabase(adminUrl, HTTP_DB);
    const syncUrl = withDatabase(adminUrl, HTTP_DB);
    progress('migrating the Syncline database');
    await migrateDatabase(syncUrl);
    // As in the Postgres phases: SQL applied on top of the migrations (a
    // changed sync.cast_raw, say), to measure a proposal without editing them.
    // BENCH_HTTP_SQL applies to the http phases only.
    const experiment = process.env.BENCH_HTTP_SQL ?? process.env.BENCH_SQL;
    if (experiment) {
      progress(`applying BENCH_SQL ${experiment} (experiment)`);
      const c = makePool(syncUrl, { max: 1 });
      try { await c.query(readFileSync(path.resolve(experiment), 'utf8')); } finally { await c.end(); }
    }
    const sync = makePool(syncUrl, { max: 4 });
    pools.push(sync);
    for (const t of ['products_small', 'products', 'products_limited', 'products_wrong']) await sync.query(DDL(t));

    vendor = await Vendor.start({ latencyMs, limits: {
      [LIMITED_TOKEN]: { requests: limReq, perSeconds: limSec },
      [WRONG_TOKEN]: { requests: limReq, perSeconds: limSec, fixed: true },
    } });
    const v = vendor;
    progress(`vendor on ${v.url}: ${latencyMs} ms a page, ${pageSize} products a page; ${LIMITED_TOKEN} limited to ${limReq} requests / ${limSec} s`);

    const entity = (n: number, src: string, target: string, size = pageSize) => ({
      source: src, target, key: ['id'], mode: 'mirror', cursor: { column: 'version' },
      from: { http: { path: `c/${n}/products`, pagination: { style: 'version', param: 'after', sizeParam: 'page_size', size }, fields: FIELDS } },
    });
    const cfg = parseConfig({
      sources: {
        catalogue: { kind: 'http', baseUrl: v.url, auth: { bearer: FREE_TOKEN } },
        catalogue_limited: { kind: 'http', baseUrl: v.url, auth: { bearer: LIMITED_TOKEN }, rateLimit: { requests: limReq, perSeconds: limSec } },
        catalogue_wrong: { kind: 'http', baseUrl: v.url, auth: { bearer: WRONG_TOKEN }, rateLimit: { requests: wrongReq, perSeconds: wrongSec } },
      },
      entities: {
        products_small: entity(SMALL, 'catalogue', 'products_small'),
        products: entity(N, 'catalogue', 'products'),
        products_limited: entity(LIMITED_ROWS, 'catalogue_limited', 'products_limited', limitPageSize),
        products_wrong: entity(LIMITED_ROWS, 'catalogue_wrong', 'products_wrong', limitPageSize),
      },
    }, {});
    await applyConfig(sync, cfg);
    engine = new Engine(sync, syncUrl, cfg);
    const eng = engine;

    const quiesce = async () => {
      await autovacuumIdle(admin);
      await admin.query('checkpoint');
    };
    /** An initial (full) sync of one entity, measured; with the vendor's view of it. */
    const syncRun = async (name: string, table: string, rows: number, token: string): Promise<RunPhase & { stats: ReturnType<typeof crawlStats> }> => {
      await quiesce();
      await v.stats(true);
      const m = await measure(admin, () => eng.run(name, { trigger: 'manual', full: true }));
      const r: RunResult = m.value;
      const st = crawlStats((await v.stats(true))[token]);
      if (r.status !== 'succeeded') throw new Error(`run of ${name} ended ${r.status}: ${r.error ?? ''}`);
      const run = (await sync.query(`select phases, fetched, inserted, updated, deleted, unchanged, quarantined,
          (select count(*) from sync.run_change c where c.run_id = r.id)::bigint as changes from sync.run r where id = $1`, [r.runId])).rows[0];
      // Every product landed once, with its version: count, distinct ids, version sum.
      const chk = (await sync.query(`select count(*)::bigint as n, count(distinct id)::bigint as d, coalesce(sum(version), 0)::text as s,
          count(*) filter (where brand_id is null or tag_ids is null or price_including_tax is null)::bigint as holes from ${table}`)).rows[0];
      const expectSum = (BigInt(rows) * 7_000_000_000n + 3n * BigInt(rows) * BigInt(rows + 1) / 2n).toString();
      const verified = Number(chk.n) === rows && Number(chk.d) === rows && chk.s === expectSum && Number(chk.holes) === 0;
      return {
        seconds: round(m.seconds), rows, rows_per_s: Math.round(rows / m.seconds),
        peak_rss_mb: mb(m.peakRssBytes), start_rss_mb: mb(m.startRssBytes), wal_bytes: m.walBytes,
        fetch_ms: run.phases.fetch ?? null, merge_ms: run.phases.merge === undefined ? null : run.phases.merge + (run.phases.validate ?? 0), phases: run.phases,
        // After the fetch: sync.cast_raw (typing, keep-last de-duplication), analyze, then sync.merge.
        cast_ms: Math.round(m.seconds * 1000 - (run.phases.fetch ?? 0) - (run.phases.merge ?? 0)),
        run: {
          fetched: Number(run.fetched), inserted: Number(run.inserted), updated: Number(run.updated), deleted: Number(run.deleted),
          unchanged: Number(run.unchanged), quarantined: Number(run.quarantined), run_change_rows: Number(run.changes),
        },
        requests: st.requests, http_429: st.r429, server_busy_ms: Math.round(st.busyMs), verified, stats: st,
      };
    };
    const strip = ({ stats: _s, ...rest }: RunPhase & { stats: unknown }): RunPhase => rest;

    // ---- small: the RSS reference -------------------------------------------
    progress(`initial sync of ${SMALL.toLocaleString('en')} products (RSS reference)`);
    const smallRun = await syncRun('products_small', 'products_small', SMALL, FREE_TOKEN);
    const small = strip(smallRun);

    // ---- full, no rate limit ----------------------------------------------
    progress(`initial sync of ${N.toLocaleString('en')} products, no rate limit`);
    const fullRun = await syncRun('products', 'products', N, FREE_TOKEN);
    const full = strip(fullRun);

    // ---- fetch only: the same crawl, every page read and dropped ----------
    progress(`the same ${N.toLocaleString('en')} products fetched alone: no staging, each page dropped`);
    await quiesce();
    await v.stats(true);
    const crawl = withCursor((cfg.entities.products.from as { http: HttpEntityOptions }).http, null, null);
    const reader = new HttpClient(httpSource.parse({ kind: 'http', baseUrl: v.url, auth: { bearer: FREE_TOKEN } }), { name: 'catalogue' });
    const aloneM = await measure(admin, async () => {
      let records = 0;
      for await (const page of paginate(reader, crawl, { entity: 'products' })) records += page.records.length;
      return records;
    });
    const aloneStats = crawlStats((await v.stats(true))[FREE_TOKEN]);
    const fetchAlone = {
      seconds: round(aloneM.seconds), rows: aloneM.value, rows_per_s: Math.round(aloneM.value / aloneM.seconds),
      peak_rss_mb: mb(aloneM.peakRssBytes), requests: aloneStats.requests, server_busy_ms: Math.round(aloneStats.busyMs),
    };
    const fetchRatio = round(full.seconds / fetchAlone.seconds, 2);

    // ---- sequential baseline: fetch page n, COPY it, then fetch page n+1 ----
    progress('sequential baseline: fetch a page, then COPY it, no overlap');
    await quiesce();
    await v.stats(true);
    const columns = (await sync.query<{ attname: string }>(
      `select attname from pg_attribute where attrelid = 'products'::regclass and attnum > 0 and not attisdropped order by attnum`)).rows.map((r) => r.attname);
    await sync.query(`create unlogged table bench_http_seq (_sl_line bigint not null, ${columns.map((c) => `${quoteIdent(c)} text`).join(', ')}, _sl_raw jsonb)`);
    await sync.query('create table bench_http_seq_state (id int primary key, detail jsonb)');
    await sync.query(`insert into bench_http_seq_state values (1, '{}')`);
    const client = new HttpClient(httpSource.parse({ kind: 'http', baseUrl: v.url, auth: { bearer: FREE_TOKEN } }), { name: 'catalogue' });
    const map = recordMapper(columns, FIELDS);
    const copySql = `copy bench_http_seq (_sl_line, ${columns.map(quoteIdent).join(', ')}, _sl_raw) from stdin`;
    let fetchMs = 0;
    let copyMs = 0;
    const seqM = await measure(admin, async () => {
      const c = await sync.connect();
      try {
        let after: string | null = null;
        let line = 0;
        for (let page = 1; ; page++) {
          const t0 = performance.now();
          const params: Record<string, string> = { page_size: String(pageSize) };
          if (after !== null) params.after = after;
          const res = await client.getJson(`c/${N}/products`, params);
          const body = res.body as { data: unknown[]; version: { max: number } | null };
          const t1 = performance.now();
          fetchMs += t1 - t0;
          if (!body.data.length) break;
          after = String(body.version!.max);
          const lines = body.data.map((r) => copyLine([++line, ...map(r), JSON.stringify(r)]));
          await c.query('begin');
          await pipeline(Readable.from(lines), c.query(copyFrom(copySql)));
          await c.query(`update bench_http_seq_state set detail = detail || jsonb_build_object('resume', $1::jsonb, 'pages', $2::int) where id = 1`,
            [JSON.stringify({ after }), page]);
          await c.query('commit');
          copyMs += performance.now() - t1;
        }
        return line;
      } finally {
        c.release();
      }
    });
    const seqStats = crawlStats((await v.stats(true))[FREE_TOKEN]);
    const sequential = {
      seconds: round(seqM.seconds), rows: seqM.value, rows_per_s: Math.round(seqM.value / seqM.seconds),
      peak_rss_mb: mb(seqM.peakRssBytes), wal_bytes: seqM.walBytes,
      fetch_ms: Math.round(fetchMs), copy_ms: Math.round(copyMs), requests: seqStats.requests, server_busy_ms: Math.round(seqStats.busyMs),
    };
    await sync.query('drop table bench_http_seq, bench_http_seq_state');

    // ---- rate-limited -------------------------------------------------------
    progress(`initial sync of ${LIMITED_ROWS.toLocaleString('en')} products through a source limited to ${limReq} requests / ${limSec} s`);
    await sync.query('delete from sync.http_budget');
    const limRun = await syncRun('products_limited', 'products_limited', LIMITED_ROWS, LIMITED_TOKEN);
    const limited = strip(limRun);
    const httpDetail = async (entity: string) =>
      (await sync.query(`select detail -> 'http' as http from sync.run where entity = $1 order by id desc limit 1`, [entity])).rows[0]?.http ?? null;
    const limDetail = await httpDetail('products_limited');
    const arr = limRun.stats.okArrivals;
    const windowMs = limSec * 1000;
    const spanMs = arr.length > 1 ? arr[arr.length - 1] - arr[0] : 0;
    // From an empty budget, request k (0-based) can start no sooner than
    // floor(k / R) windows after the first: the fastest the limit allows.
    const idealSpanMs = Math.floor((arr.length - 1) / limReq) * windowMs;
    const perWindow: number[] = [];
    for (const t of arr) {
      const w = Math.floor((t - arr[0]) / windowMs);
      perWindow[w] = (perWindow[w] ?? 0) + 1;
    }
    const budgetUsed = spanMs > 0 ? Math.min(1, idealSpanMs / spanMs) : 0;
    // The 429s with a limit the engine knows exactly: every one was avoidable.
    const avoidable429 = limRun.stats.r429;
    // Each 429: how long after the accepted request R places before it it arrived (< W: too early).
    const all = limRun.stats.all;
    const early = all.flatMap((x, i) => {
      if (x.status !== 429) return [];
      const okBefore = all.slice(0, i).filter((y) => y.status === 200);
      const ref = okBefore[okBefore.length - limReq];
      return [{ request: i + 1, ms_after_window_start: ref ? round(x.at - ref.at, 1) : null }];
    });
    const rateLimit = {
      requests_per_window: limReq, window_seconds: limSec, pages: limitPages, page_size: limitPageSize, requests: limRun.stats.requests, ok: limRun.stats.ok,
      http_429: limRun.stats.r429, avoidable_429: avoidable429, rejected: early,
      span_s: round(spanMs / 1000), ideal_span_s: round(idealSpanMs / 1000), budget_used: round(budgetUsed, 4),
      per_window: Array.from(perWindow, (x) => x ?? 0),
      detail_http: limDetail,
      budget_row: (await sync.query(`select request_limit, window_seconds, cardinality(started) as started, blocked_until from sync.http_budget`)).rows,
    };

    // ---- rate-limited, configured limit wrong, the vendor's headers right ----
    progress(`the same through a source configured for ${wrongReq} requests / ${wrongSec} s; the vendor allows ${limReq} / ${limSec} s and says so in its headers`);
    const wrongRun = await syncRun('products_wrong', 'products_wrong', LIMITED_ROWS, WRONG_TOKEN);
    const wrong = strip(wrongRun);
    // The vendor's windows are fixed and aligned to the clock: the first and
    // the last are partial (the run starts and ends inside them), the ones
    // between show the budget used.
    const wrongWindows = wrongRun.stats.okWall.map((t) => Math.floor(t / windowMs));
    const perFixedWindow: number[] = [];
    for (const w of wrongWindows) perFixedWindow[w - wrongWindows[0]] = (perFixedWindow[w - wrongWindows[0]] ?? 0) + 1;
    const counts = Array.from(perFixedWindow, (x) => x ?? 0);
    const whole = counts.slice(1, -1);
    const wrongUsed = whole.length ? whole.reduce((a, b) => a + b, 0) / (whole.length * limReq) : 0;
    const wrongDetail = await httpDetail('products_wrong');
    // Why a budget share is short: how long of its fetch phase the run
    // waited for the budget (the database round trip of each turn included);
    // the rest it spent on its pages (engine-bound when that is most of it).
    const why = (used: number, detail: { wait_ms?: { budget: number } } | null, fetchMs: number | null) => (used >= BUDGET_TARGET || !detail?.wait_ms ? ''
      : ` (waited for the budget ${round(detail.wait_ms.budget / 1000, 1)} s of a ${round((fetchMs ?? 0) / 1000, 1)} s fetch`
        + `${detail.wait_ms.budget < 0.5 * (fetchMs ?? 0) ? ': mostly busy with its pages, engine-bound' : ''})`);
    const rateLimitWrong = {
      configured: { requests: wrongReq, seconds: wrongSec }, vendor: { requests: limReq, seconds: limSec, windows: 'fixed, announced' },
      requests: wrongRun.stats.requests, ok: wrongRun.stats.ok, http_429: wrongRun.stats.r429, per_window: counts,
      whole_windows: whole.length, budget_used: round(wrongUsed, 4), seconds: wrong.seconds, detail_http: wrongDetail,
    };

    // ---- figures ----------------------------------------------------------
    const fetchPhaseMs = full.fetch_ms ?? full.seconds * 1000;
    const overlap = {
      // The engine's fetch phase (crawl + COPY of every page) against the
      // same pages fetched and COPYed one after the other.
      engine_fetch_s: round(fetchPhaseMs / 1000),
      engine_cast_merge_s: round(full.seconds - fetchPhaseMs / 1000),
      server_busy_s: round(full.server_busy_ms / 1000),
      // Share of the engine's fetch phase during which the vendor was answering.
      server_busy_share: round(full.server_busy_ms / fetchPhaseMs, 3),
      sequential_fetch_s: round(sequential.fetch_ms / 1000),
      sequential_copy_s: round(sequential.copy_ms / 1000),
      sequential_total_s: round((sequential.fetch_ms + sequential.copy_ms) / 1000),
      // Best possible with one page of fetch-ahead: the longer of the two.
      perfect_overlap_s: round(Math.max(sequential.fetch_ms, sequential.copy_ms) / 1000),
      fetch_over_sequential: round(fetchPhaseMs / (sequential.fetch_ms + sequential.copy_ms)),
      // How much of the shorter side the overlap hid (1 = all of it).
      hidden_share: round((sequential.fetch_ms + sequential.copy_ms - fetchPhaseMs) / Math.min(sequential.fetch_ms, sequential.copy_ms), 3),
    };
    const rss = {
      small_peak_mb: small.peak_rss_mb, full_peak_mb: full.peak_rss_mb,
      growth_mb: round(full.peak_rss_mb - small.peak_rss_mb, 1),
      phase_growth_mb: round((full.peak_rss_mb - full.start_rss_mb) - (small.peak_rss_mb - small.start_rss_mb), 1),
    };
    const targets: Target[] = [
      { name: `http: ${N.toLocaleString('en')} records ≤ ${FETCH_RATIO_TARGET}× fetching the pages alone`,
        value: `${fetchRatio}× (${full.seconds} s / ${fetchAlone.seconds} s)`, pass: fetchAlone.rows === N && fetchRatio <= FETCH_RATIO_TARGET },
      { name: 'http: 0 avoidable 429s', value: String(avoidable429), pass: avoidable429 === 0 },
      { name: `http: configured limit wrong (${wrongReq} / ${wrongSec} s), headers true (${limReq} / ${limSec} s): budget used ≥ ${BUDGET_TARGET * 100}%`,
        value: whole.length ? `${round(wrongUsed * 100, 1)}%${why(wrongUsed, wrongDetail, wrong.fetch_ms)}` : `no whole window (${counts.join(' ')}): raise BENCH_HTTP_LIMIT_PAGES`,
        pass: whole.length > 0 && wrongUsed >= BUDGET_TARGET },
      { name: 'http: configured limit wrong, headers true: 0 avoidable 429s', value: String(wrongRun.stats.r429), pass: wrongRun.stats.r429 === 0 },
      { name: `http: no RSS growth ${SMALL.toLocaleString('en')} → ${N.toLocaleString('en')} records (≤ ${RSS_TOLERANCE_MB} MB)`,
        value: `${sign(rss.phase_growth_mb)} MB in-run (${sign(rss.growth_mb)} MB peak)`, pass: rss.phase_growth_mb <= RSS_TOLERANCE_MB },
      { name: 'http: every product landed once (4 runs)', value: [small, full, limited, wrong].map((p) => (p.verified ? 'ok' : 'DIFF')).join(' '),
        pass: small.verified && full.verified && limited.verified && wrong.verified },
    ];

    const result = {
      rows: N, small_rows: SMALL, page_size: pageSize, latency_ms: latencyMs, experiment: experiment ?? null,
      database: server ? 'embedded' : 'BENCH_DATABASE_URL',
      phases: { small, full, fetch_alone: fetchAlone, sequential, limited, wrong },
      fetch_ratio: fetchRatio,
      overlap, rate_limit: rateLimit, rate_limit_wrong: rateLimitWrong, rss,
      targets: Object.fromEntries(targets.map((t) => [t.name, { value: t.value, pass: t.pass }])),
    };

    await vendor.stop();
    vendor = undefined;
    if (!process.env.BENCH_KEEP && !server) {
      for (const p of pools.splice(1)) await p.end();
      await engine.close();
      engine = undefined;
      await admin.query(`drop database if exists ${quoteIdent(HTTP_DB)} with (force)`);
    }
    return { result, targets };
  } finally {
    await vendor?.stop().catch(() => {});
    await engine?.close().catch(() => {});
    for (const p of pools) await p.end().catch(() => {});
    if (server) {
      if (process.env.BENCH_KEEP) progress(`BENCH_KEEP: server left running in ${dir} on port ${server.port}`);
      else {
        await server.stop().catch(() => {});
        if (dir) rmSync(dir, { recursive: true, force: true });
      }
    }
  }
}
