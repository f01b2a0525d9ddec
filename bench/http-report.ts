/**
 * The http phases in the bench's output: rows for the phase table and notes
 * (used by report.ts), and the glue run.ts calls: hold back the Postgres
 * phases' report and JSON line, run bench/http.ts, then print one report and
 * one JSON line with both (the JSON gains an `http` key, and its targets,
 * passed and missed count the http targets too).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PROJECT_ROOT } from '../src/db/database.js';
import { runHttpBench } from './http.js';
import { report, table, type Target } from './report.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Http = any;

const num = (x: number | undefined | null) => (x === undefined || x === null ? '' : x.toLocaleString('en'));
const secs = (ms: number | null | undefined) => (ms === null || ms === undefined ? '' : (ms / 1000).toFixed(2));
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

/** Rows of the phase table (its 9 columns) for the http phases. */
export function httpRows(h: Http): string[][] {
  const p = h.phases;
  const run = (label: string, x: Http, note: string): string[] => [
    label, x.seconds.toFixed(2), num(x.rows_per_s), x.peak_rss_mb.toFixed(1), (x.wal_bytes / 1024 / 1024).toFixed(1),
    `${secs(x.fetch_ms)} / ${secs(x.cast_ms)} / ${secs(x.merge_ms)}`,
    `+${num(x.run.inserted)} ~${num(x.run.updated)} -${num(x.run.deleted)} =${num(x.run.unchanged)}`, '',
    `${note}${x.verified ? '' : '; TARGET DIFFERS'}`,
  ];
  const r = h.rate_limit;
  return [
    run(`http: initial sync, ${num(h.small_rows)} records`, p.small, `RSS reference; ${p.small.requests} requests`),
    run(`http: initial sync, ${num(h.rows)} records, no limit`, p.full,
      `${p.full.requests} requests, vendor busy ${pct(h.overlap.server_busy_share)} of fetch`),
    ...(p.fetch_alone ? [['http: the same crawl, fetch only (no staging)', p.fetch_alone.seconds.toFixed(2), num(p.fetch_alone.rows_per_s),
      p.fetch_alone.peak_rss_mb.toFixed(1), '', '', '', '', `${p.fetch_alone.requests} requests; the full sync took ${h.fetch_ratio}× this`]] : []),
    ['http: sequential fetch → COPY (no overlap)', p.sequential.seconds.toFixed(2), num(p.sequential.rows_per_s),
      p.sequential.peak_rss_mb.toFixed(1), (p.sequential.wal_bytes / 1024 / 1024).toFixed(1),
      `${secs(p.sequential.fetch_ms)} / ${secs(p.sequential.copy_ms)}`, '', '', 'bench baseline: fetch / COPY s, no cast or merge'],
    run(`http: ${num(h.phases.limited.rows)} records, limit ${r.requests_per_window} req / ${r.window_seconds} s`, p.limited,
      `${r.requests} requests, ${r.http_429} × 429, budget ${pct(r.budget_used)}`),
  ];
}

/** Lines under the table explaining the http figures. */
export function httpNotes(h: Http): string[] {
  const o = h.overlap;
  const r = h.rate_limit;
  return [
    ...(h.experiment ? [`http: EXPERIMENT: ${h.experiment} applied on top of the migrations.`] : []),
    'http: "fetch / merge s" of the http rows is fetch (pages COPYed typed as they come) / stage (sync.cast_typed: only pages refused typed are cast) + analyze / merge.',
    ...(h.phases.fetch_alone ? [`http fetch alone: the engine's crawl (paginate, one page of fetch-ahead) reading and dropping every page took ${h.phases.fetch_alone.seconds} s; ` +
      `the initial sync of the same ${num(h.rows)} records took ${h.phases.full.seconds} s = ${h.fetch_ratio}× (target ≤ 1.2×)` +
      (h.fetch_ratio > 1.2 ? `: what the sync adds after the last page is stage ${secs(h.phases.full.phases.stage)} s, merge + validate ${secs(h.phases.full.merge_ms)} s, and the fetch phase itself ${secs(h.phases.full.fetch_ms)} s.` : '.')] : []),
    `http: vendor on 127.0.0.1 answering each page of ${num(h.page_size)} products after ${h.latency_ms} ms (version cursor, X-Series 2.0 style).`,
    `http overlap: engine fetch phase ${o.engine_fetch_s} s (crawl + COPY of each page; then cast + merge ${o.engine_cast_merge_s} s) ` +
      `against fetch ${o.sequential_fetch_s} s + COPY ${o.sequential_copy_s} s = ${o.sequential_total_s} s one after the other ` +
      `(perfect overlap: ${o.perfect_overlap_s} s): ${o.fetch_over_sequential}× the sequential time, ${pct(o.hidden_share)} of the shorter side hidden; ` +
      `the vendor was busy ${o.server_busy_s} s, ${pct(o.server_busy_share)} of the fetch phase.`,
    `http rate limit: ${r.requests} requests (${r.ok} answered, ${r.http_429} × 429) at ${r.requests_per_window} per ${r.window_seconds} s; ` +
      `per window from the first: ${r.per_window.join(' ')}; first → last request ${r.span_s} s where the limit allows ${r.ideal_span_s} s ` +
      `→ ${pct(r.budget_used)} of the budget used.` +
      (r.rejected.length ? ` 429s: ${r.rejected.map((x: Http) => `request ${x.request} came ${x.ms_after_window_start} ms after the one ${r.requests_per_window} accepted requests before it`).join('; ')}.` : ''),
    `http RSS: peak ${h.rss.full_peak_mb} MB at ${num(h.rows)} records (from ${h.phases.full.start_rss_mb}) against ${h.rss.small_peak_mb} MB ` +
      `(from ${h.phases.small.start_rss_mb}) at ${num(h.small_rows)}; judged on what each run added over its starting RSS.`,
  ];
}

/** The report when only the http phases ran (BENCH_ONLY=http). */
export function httpOnlyReport(r: Http, targets: Target[]): string {
  const out = ['', `Syncline bench — http source only (BENCH_ONLY=http), ${num(r.http.rows)} records; node ${r.node}, ${r.platform}`, ''];
  out.push(table(
    ['phase', 'seconds', 'rows/s', 'peak RSS MB', 'WAL MB', 'fetch / merge s', 'sync.run +ins ~upd -del =same', 'target ins/upd/del', 'note'],
    httpRows(r.http), [false, true, true, true, true, true, false, false, false]));
  out.push('', ...httpNotes(r.http), '');
  out.push(table(['target', 'value', ''], targets.map((t) => [t.name, t.value, t.pass ? 'PASS' : 'MISS']), [false, true, false]));
  out.push('', `${r.passed} of ${r.passed + r.missed} targets met`, '');
  return out.join('\n');
}

/** stdout of the Postgres phases, with their report, results line and JSON line held back. */
export interface Held {
  report: string | null;
  resultsLine: string | null;
  json: string | null;
  stop(): void;
  /** Writes out whatever was held (when the http phases cannot run). */
  flush(): void;
}

export function holdReport(): Held {
  const write = process.stdout.write.bind(process.stdout);
  const held: Held = {
    report: null, resultsLine: null, json: null,
    stop: () => { process.stdout.write = write; },
    flush: () => { for (const s of [held.report, held.resultsLine, held.json]) if (s) write(s); },
  };
  process.stdout.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    const s = typeof chunk === 'string' ? chunk : null;
    if (s?.startsWith('\nSyncline bench — ')) held.report = s;
    else if (s?.startsWith('results: ')) held.resultsLine = s;
    else if (s?.startsWith('{"bench":"syncline"')) held.json = s;
    else return (write as (...a: unknown[]) => boolean)(chunk, ...rest);
    return true;
  }) as typeof process.stdout.write;
  return held;
}

/** Runs the http phases and prints the one report and JSON line (with the held Postgres results, if any). */
export async function finishWithHttp(held: Held | null): Promise<void> {
  let http;
  try {
    const rows = process.env.BENCH_ROWS === undefined ? undefined : Number(process.env.BENCH_ROWS);
    http = await runHttpBench(held ? rows : undefined);
  } catch (err) {
    held?.flush(); // the Postgres figures are not lost when the http phases fail
    throw err;
  }
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  let result: any;
  if (held?.json) result = JSON.parse(held.json);
  else {
    let commit: string | null = null;
    try {
      commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: PROJECT_ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch { /* not a checkout */ }
    result = { bench: 'syncline', schema: 1, timestamp: new Date().toISOString(), commit, only: 'http',
      node: process.version, platform: `${os.platform()} ${os.arch()}, ${os.cpus().length} cpu`, targets: {} };
  }
  result.http = http.result;
  result.targets = { ...result.targets, ...(http.result.targets as object) };
  const targets: Target[] = Object.entries(result.targets as Record<string, { value: string; pass: boolean }>)
    .map(([name, t]) => ({ name, value: t.value, pass: t.pass }));
  result.passed = targets.filter((t) => t.pass).length;
  result.missed = targets.filter((t) => !t.pass).length;

  const outDir = path.join(PROJECT_ROOT, 'bench-results');
  mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `${String(result.timestamp).replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  process.stdout.write(report(result, targets));
  process.stdout.write(`results: ${path.relative(process.cwd(), file)}\n`);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
