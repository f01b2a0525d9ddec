import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { applyConfig } from '../src/config/apply.js';
import { parseConfig } from '../src/config/load.js';
import { ensureDatabase, migrateDatabase, PROJECT_ROOT, quoteIdent } from '../src/db/database.js';
import { freePort, startEmbedded, type EmbeddedServer } from '../src/db/embedded.js';
import { makePool } from '../src/db/pool.js';
import { Engine, type RunResult } from '../src/engine/run.js';
import { batched, copyFloor, rowByRow } from './baselines.js';
import { CHUNK_TABLES, chunkEntities, chunksPhase, type ChunksPhase } from './chunks.js';
import { CSV_TABLES, csvPhase, writeCsv } from './csv.js';
import { autovacuumIdle, diffStats, flushStats, MB, measure, tupleStats, type Measured, type TupleStats } from './measure.js';
import { dropLogSlot, LOG_ENTITY, logCost, logLatency, type LogCost, type LogLatency } from './log.js';
import { installPeers, pgcopydb, pgloaderDatabase, type PeerResult, type Timer } from './peers.js';
import { report, type Target } from './report.js';
import { verifyPhase } from './verify-phase.js';
import { changeSet, checksum, COLUMNS, DDL, generate } from './workload.js';

const SRC_DB = 'syncline_bench_src';
const SYNC_DB = 'syncline_bench';
/** Where the peers load the table: a table of the same name as the source's, which the Syncline database already uses. */
const PEER_DB = 'syncline_bench_peer';

/** Phase groups BENCH_ONLY can pick (comma-separated); all of them when it is unset. */
export const GROUPS = ['sync', 'peers', 'csv', 'verify', 'chunks', 'log'] as const;
type Group = typeof GROUPS[number];

/** The groups asked for, or null when BENCH_ONLY names something else (http, edge: run.ts handles those). */
export function onlyGroups(only = process.env.BENCH_ONLY): Set<Group> | null {
  if (!only) return new Set(GROUPS);
  const names = only.split(',').map((x) => x.trim()).filter(Boolean);
  return names.every((n) => (GROUPS as readonly string[]).includes(n)) ? new Set(names as Group[]) : null;
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
const mb = (bytes: number) => round(bytes / MB, 1);
const sign = (x: number) => `${x >= 0 ? '+' : ''}${x}`;

function progress(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function gitCommit(): string | null {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: PROJECT_ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

interface SyncPhase {
  seconds: number;
  rows: number;
  rows_per_s: number;
  peak_rss_mb: number;
  start_rss_mb: number;
  wal_bytes: number;
  fetch_ms: number | null;
  merge_ms: number | null;
  verify_ms: number | null;
  run: { fetched: number; inserted: number; updated: number; deleted: number; unchanged: number; quarantined: number; run_change_rows: number };
  /** sync.run.detail.diff: which path the run took (checksum segments or a full fetch), when the engine records it. */
  diff: unknown;
  target_tuples: TupleStats;
}

type Extrapolated = { sample_rows: number; sample_seconds: number; seconds: number; rows_per_s: number; peak_rss_mb: number; wal_bytes_sample: number };
type Change = { updated: number; deleted: number; inserted: number };
type Floor = { seconds: number; rows: number; rows_per_s: number; peak_rss_mb: number; wal_bytes: number };
type Peers = { pgcopydb: PeerResult; pgloader: PeerResult };
type Csv = Awaited<ReturnType<typeof csvPhase<SyncPhase>>>;
type Verify = Awaited<ReturnType<typeof verifyPhase>>;

/** Everything measured; a group BENCH_ONLY left out leaves its phases undefined. */
interface Figures {
  floor?: Floor;
  peers?: Peers;
  small?: SyncPhase;
  a?: SyncPhase;
  b?: SyncPhase;
  c?: SyncPhase & { change: Change; verified: boolean };
  d?: SyncPhase & { change: Change; verified: boolean };
  rowLoop?: Extrapolated;
  batch?: Extrapolated;
  verify?: Verify;
  csv?: Csv;
  chunks?: ChunksPhase;
  log?: { cost: LogCost<SyncPhase>; latency: LogLatency };
  maxRssSyncBytes?: number;
}

const ratio = (x: number | null | undefined, y: number | null | undefined, d = 3) => (x == null || y == null || y === 0 ? null : round(x / y, d));

function ratiosOf(f: Figures): Record<string, number | null> {
  const { floor, peers, small, a, b, c, d, rowLoop, batch, verify, csv } = f;
  const r: Record<string, number | null> = {};
  if (a && floor) r.a_over_floor = ratio(a.seconds, floor.seconds);
  if (peers && floor) {
    r.pgcopydb_over_floor = ratio(peers.pgcopydb.seconds, floor.seconds);
    r.pgloader_over_floor = ratio(peers.pgloader.seconds, floor.seconds);
  }
  if (peers && a) {
    r.a_over_pgcopydb = ratio(a.seconds, peers.pgcopydb.seconds);
    r.a_over_pgloader = ratio(a.seconds, peers.pgloader.seconds);
  }
  if (a && rowLoop && batch) {
    r.row_loop_over_a = ratio(rowLoop.seconds, a.seconds, 1);
    r.batched_over_a = ratio(batch.seconds, a.seconds, 2);
  }
  if (a && b && c && d) {
    r.b_over_a = ratio(b.seconds, a.seconds);
    r.c_over_a = ratio(c.seconds, a.seconds);
    r.d_over_a = ratio(d.seconds, a.seconds, 4);
  }
  if (f.log && a) {
    r.log_snapshot_over_a = ratio(f.log.cost.snapshot.seconds, a.seconds);
    r.log_over_a = ratio(f.log.cost.changed.seconds, a.seconds, 4);
    r.log_floor_over_a = ratio(f.log.cost.floor.seconds, a.seconds, 4);
    if (c) r.log_over_c = ratio(f.log.cost.changed.seconds, c.seconds);
    if (d) r.log_over_d = ratio(f.log.cost.changed.seconds, d.seconds);
  }
  if (verify) r.verify_over_count = verify.ratio_to_count === null ? null : round(verify.ratio_to_count);
  if (f.chunks) r.chunked_over_single = f.chunks.chunked_over_single;
  if (csv) {
    r.csv_empty_over_copy = ratio(csv.empty.seconds, csv.copy.seconds);
    r.csv_changed_over_copy = ratio(csv.changed.seconds, csv.copy.seconds);
    r.csv_pgloader_over_copy = ratio(csv.pgloader.seconds, csv.copy.seconds);
  }
  if (a && small) {
    // Peak RSS of (a) less that of the 100k-row initial sync.
    r.rss_growth_mb = round(a.peak_rss_mb - small.peak_rss_mb, 1);
    // The same, counting only what each run added over the RSS it started
    // with (after a full GC): what the sync itself holds, not the
    // allocator's history.
    r.rss_phase_growth_mb = round((a.peak_rss_mb - a.start_rss_mb) - (small.peak_rss_mb - small.start_rss_mb), 1);
  }
  return r;
}

const RSS_TOLERANCE_MB = 10;

/** A target that could not be measured (a peer or a feature missing): shown as SKIP, with the reason. */
const skipped = (name: string, why: string): Target => ({ name, value: 'n/a', pass: false, skipped: true, why });
const judged = (name: string, value: string, pass: boolean, why: string): Target => ({ name, value, pass, ...(pass ? {} : { why }) });

function targetsOf(f: Figures, r: Record<string, number | null>): Target[] {
  const { floor, peers, a, b, c, d, rowLoop, batch, verify, csv, maxRssSyncBytes } = f;
  const t: Target[] = [];
  if (a && floor) {
    t.push(judged('(a) ≤ 1.15× raw COPY floor', `${r.a_over_floor}×`, r.a_over_floor! <= 1.15,
      `the initial load takes ${r.a_over_floor}× the COPY floor (${a.seconds} s against ${floor.seconds} s; fetch ${(a.fetch_ms ?? 0) / 1000} s, merge ${(a.merge_ms ?? 0) / 1000} s)`));
  }
  if (a && peers) {
    const p = peers.pgloader;
    t.push(p.seconds === null ? skipped('(a) faster than pgloader', p.note)
      : judged('(a) faster than pgloader', `${r.a_over_pgloader}× pgloader`, a.seconds < p.seconds, `pgloader loaded the table in ${round(p.seconds)} s, (a) took ${a.seconds} s`));
  }
  if (a && rowLoop && batch) {
    t.push(judged('(a) ≥ 40× faster than row-by-row upsert', `${r.row_loop_over_a}×`, r.row_loop_over_a! >= 40, 'the row-by-row baseline is closer than 40×'));
    t.push(judged('(a) ≥ 2× faster than batched upsert', `${r.batched_over_a}×`, r.batched_over_a! >= 2, 'the batched baseline is closer than 2×'));
  }
  if (a && b && c && d) {
    const bWritten = b.target_tuples.ins + b.target_tuples.upd + b.target_tuples.del;
    const bRunWritten = b.run.inserted + b.run.updated + b.run.deleted;
    t.push(judged('(b) ≤ 0.15× (a)', `${r.b_over_a}×`, r.b_over_a! <= 0.15,
      `an unchanged re-sync costs ${r.b_over_a}× the initial load (fetch ${(b.fetch_ms ?? 0) / 1000} s, merge ${(b.merge_ms ?? 0) / 1000} s; path: ${diffPath(b.diff)})`));
    t.push(judged('(b) WAL < 1 MB', `${round(b.wal_bytes / 1024, 1)} kB`, b.wal_bytes < MB, 'the unchanged re-sync wrote WAL'));
    t.push(judged('(b) 0 tuples written (pg_stat_user_tables)', String(bWritten), bWritten === 0, 'the unchanged re-sync wrote target tuples'));
    t.push(judged('(b) 0 rows changed (sync.run)', String(bRunWritten), bRunWritten === 0, 'the unchanged re-sync counted changes'));
    t.push(judged('(c) ≤ 0.4× (a)', `${r.c_over_a}×`, r.c_over_a! <= 0.4,
      `a 1% change costs ${r.c_over_a}× the initial load (fetch ${(c.fetch_ms ?? 0) / 1000} s, merge ${(c.merge_ms ?? 0) / 1000} s; path: ${diffPath(c.diff)})`));
    t.push(judged('(c) counts match the change', `+${c.run.inserted} ~${c.run.updated} -${c.run.deleted}`,
      c.run.inserted === c.change.inserted && c.run.updated === c.change.updated && c.run.deleted === c.change.deleted && c.verified,
      c.verified ? `expected +${c.change.inserted} ~${c.change.updated} -${c.change.deleted}` : 'the target differs from the source'));
    t.push(judged('(d) ≤ 5% of (a)', `${round(r.d_over_a! * 100, 2)}%`, r.d_over_a! <= 0.05,
      `the incremental run takes ${round(r.d_over_a! * 100, 2)}% of (a) (verify ${d.verify_ms ?? 0} ms of it)`));
    t.push(judged('(d) counts match the change (no deletes by cursor)', `+${d.run.inserted} ~${d.run.updated} -${d.run.deleted}`,
      d.run.inserted === d.change.inserted && d.run.updated === d.change.updated && d.run.deleted === 0 && d.verified,
      d.verified ? `expected +${d.change.inserted} ~${d.change.updated} -0` : 'the target differs from the source'));
  }
  if (f.log && a) t.push(...logTargets(f.log, a, r));
  if (csv) {
    const copyName = csv.copy.tool === 'psql \\copy' ? '\\copy' : csv.copy.tool;
    if (csv.copy.seconds === null) {
      t.push(skipped('csv into an empty target ≤ 2× \\copy', csv.copy.note), skipped('csv with changes ≤ 3× \\copy', csv.copy.note));
    } else {
      t.push(judged(`csv into an empty target ≤ 2× ${copyName}`, `${r.csv_empty_over_copy}×`, r.csv_empty_over_copy! <= 2,
        `the csv source took ${csv.empty.seconds} s against ${round(csv.copy.seconds)} s (fetch ${(csv.empty.fetch_ms ?? 0) / 1000} s, merge ${(csv.empty.merge_ms ?? 0) / 1000} s)`));
      t.push(judged(`csv with changes ≤ 3× ${copyName}`, `${r.csv_changed_over_copy}×`, r.csv_changed_over_copy! <= 3,
        `the re-sync took ${csv.changed.seconds} s (fetch ${(csv.changed.fetch_ms ?? 0) / 1000} s, merge ${(csv.changed.merge_ms ?? 0) / 1000} s)`));
    }
    const ch = csv.changed;
    t.push(judged('csv counts match the change', `+${ch.run.inserted} ~${ch.run.updated} -${ch.run.deleted}`,
      ch.run.inserted === ch.change.inserted && ch.run.updated === ch.change.updated && ch.run.deleted === ch.change.deleted && ch.verified,
      ch.verified ? `expected +${ch.change.inserted} ~${ch.change.updated} -${ch.change.deleted}` : 'the target differs from the file'));
  }
  if (verify) {
    t.push(verify.seconds === null ? skipped('verify ≤ 3× count(*) of source + target', verify.note)
      : judged('verify ≤ 3× count(*) of source + target', `${r.verify_over_count}×`, r.verify_over_count! <= 3,
        `verify took ${round(verify.seconds)} s against ${round(verify.count_seconds)} s for both counts`));
  }
  if (f.chunks) {
    const c = f.chunks;
    t.push(judged(`chunked first load (${c.chunks} chunks, run + ${c.workers} workers) faster than one COPY`, `${c.chunked_over_single}×`,
      c.chunked_over_single < 1 && c.equal,
      c.equal ? `${c.chunked_seconds} s chunked against ${c.single_seconds} s in one COPY (chunks read by ${JSON.stringify(c.readers)}; a chunked load writes staging, then the target)`
        : 'the chunked load differs from the source'));
  }
  if (maxRssSyncBytes !== undefined && r.rss_phase_growth_mb != null) {
    t.push(judged('peak RSS ≤ 150 MB (maxRSS through (d))', `${mb(maxRssSyncBytes)} MB`, maxRssSyncBytes <= 150 * MB, 'the process grew past 150 MB during the syncs'));
    t.push(judged(`no RSS growth 100k → 1M rows (≤ ${RSS_TOLERANCE_MB} MB)`,
      `${sign(r.rss_phase_growth_mb)} MB in-run (${sign(r.rss_growth_mb!)} MB peak)`, r.rss_phase_growth_mb <= RSS_TOLERANCE_MB,
      'the 1M-row initial sync held more than the 100k-row one'));
  }
  return t;
}

/** Log capture: a 1% change ≤ 2% of (a), its counts, and commit-to-target p99 ≤ 2 s with the loop polling every second. */
function logTargets(log: NonNullable<Figures['log']>, a: SyncPhase, r: Record<string, number | null>): Target[] {
  const ch = log.cost.changed;
  const lat = log.latency;
  return [
    judged('log: 1% change ≤ 2% of (a)', `${round(r.log_over_a! * 100, 2)}%`, r.log_over_a! <= 0.02,
      `the log run took ${ch.seconds} s against ${a.seconds} s for (a) (read ${(ch.fetch_ms ?? 0) / 1000} s, merge ${(ch.merge_ms ?? 0) / 1000} s, `
      + `the rest ${ch.other_ms / 1000} s: planning, sync.log_prepare, confirming the slot); applying the same amount of change in SQL `
      + `from prepared tables alone takes ${log.cost.floor.seconds} s, ${round(r.log_floor_over_a! * 100, 2)}% of (a)`),
    judged('log: counts match the change', `+${ch.run.inserted} ~${ch.run.updated} -${ch.run.deleted}`,
      ch.run.inserted === ch.change.inserted && ch.run.updated === ch.change.updated && ch.run.deleted === ch.change.deleted && ch.verified,
      ch.verified ? `expected +${ch.change.inserted} ~${ch.change.updated} -${ch.change.deleted}` : 'the target differs from the source'),
    judged(`log: commit → target p99 ≤ 2 s (${lat.poll_ms / 1000} s poll)`, `${round(lat.latency_ms.p99 / 1000, 2)} s`, lat.latency_ms.p99 <= 2000,
      `at ${lat.changes_per_s} changes/s, runs took ${lat.runs.mean_ms} ms on average (max ${lat.runs.max_ms} ms; read ${lat.runs.mean_fetch_ms} ms, `
      + `merge ${lat.runs.mean_merge_ms} ms) for ${lat.runs.mean_changes} changes, on top of up to ${lat.poll_ms} ms waiting for the poll`),
    judged('log: target = source after the stream', lat.verified ? 'equal' : 'DIFFERS', lat.verified,
      `after the writer stopped the target did not reach the source's state within the drain (${lat.drained_ms} ms)`),
  ];
}

/** The path a run took, from sync.run.detail.diff (recorded by engines that choose one). */
function diffPath(diff: unknown): string {
  if (diff === null || diff === undefined) return 'not recorded';
  if (typeof diff === 'object' && 'path' in diff) return String((diff as { path: unknown }).path);
  return JSON.stringify(diff).slice(0, 80);
}

/** pgcopydb, then pgloader, each into an empty copy of the table in the peer database. */
async function runPeers(time: Timer, srcUrl: string, peerUrl: string, rows: number): Promise<Peers> {
  installPeers();
  const peer = makePool(peerUrl, { max: 1 });
  try {
    await peer.query(DDL('items'));
    progress('peer: pgcopydb copy table-data');
    const copydb = await pgcopydb(time, srcUrl, peerUrl, peer, 'items', rows);
    await peer.query('truncate items');
    progress('peer: pgloader LOAD DATABASE, data only');
    const loader = await pgloaderDatabase(time, srcUrl, peerUrl, peer, 'items', rows);
    await peer.query('truncate items');
    return { pgcopydb: copydb, pgloader: loader };
  } finally {
    await peer.end();
  }
}

export async function main(groups: Set<Group> = onlyGroups() ?? new Set(GROUPS)): Promise<void> {
  const want = (g: Group) => groups.has(g);
  const N = Number(process.env.BENCH_ROWS ?? 1_000_000);
  if (!Number.isInteger(N) || N < 1000) throw new Error('BENCH_ROWS must be an integer of at least 1000');
  const SMALL = Math.min(100_000, Math.floor(N / 10));
  const LOOP_ROWS = Math.min(20_000, N);
  const BATCH_ROWS = Math.min(200_000, N);
  const LOG_SECONDS = Number(process.env.BENCH_LOG_SECONDS ?? 60);
  if (!(LOG_SECONDS > 0)) throw new Error('BENCH_LOG_SECONDS must be a number of seconds above 0');

  const rssAtStart = process.memoryUsage().rss;
  // Ratios from one run on a shared machine: the load it ran under goes into the report.
  const loadAtStart = os.loadavg()[0];
  let server: EmbeddedServer | undefined;
  let dir: string | undefined;
  let adminUrl = process.env.BENCH_DATABASE_URL;
  const pools: pg.Pool[] = [];
  let engine: Engine | undefined;
  const csvDir = mkdtempSync(path.join(os.tmpdir(), 'syncline-bench-csv-'));
  const csvFile = path.join(csvDir, 'items.csv');
  const databases = [SRC_DB, SYNC_DB, PEER_DB];
  try {
    if (!adminUrl) {
      progress('starting a throwaway embedded PostgreSQL');
      dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-bench-'));
      server = await startEmbedded({ dir, port: await freePort(), persistent: false });
      adminUrl = server.url('postgres');
    }
    const admin = makePool(adminUrl, { max: 2 });
    pools.push(admin);
    // A database with a replication slot (a kept earlier run's log phase) cannot be dropped.
    await admin.query('select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = any($1) and not active', [databases]);
    for (const db of databases) await admin.query(`drop database if exists ${quoteIdent(db)} with (force)`);
    await ensureDatabase(adminUrl, SRC_DB);
    await ensureDatabase(adminUrl, SYNC_DB);
    if (want('peers')) await ensureDatabase(adminUrl, PEER_DB);
    const srcUrl = withDatabase(adminUrl, SRC_DB);
    const syncUrl = withDatabase(adminUrl, SYNC_DB);
    progress('migrating the Syncline database');
    await migrateDatabase(syncUrl);
    // An experiment: SQL applied on top of the migrations (a changed
    // sync.merge, say), so a proposal can be measured without editing them.
    const experiment = process.env.BENCH_SQL;
    if (experiment) {
      progress(`applying BENCH_SQL ${experiment} to the Syncline database (experiment)`);
      const c = makePool(syncUrl, { max: 1 });
      try { await c.query(readFileSync(path.resolve(experiment), 'utf8')); } finally { await c.end(); }
    }
    const rssAfterMigrate = process.memoryUsage().rss;
    const src = makePool(srcUrl, { max: 3 });
    const sync = makePool(syncUrl, { max: 4 });
    const reader = makePool(syncUrl, { max: 1 });
    pools.push(src, sync, reader);

    const serverInfo = (await admin.query(`select version() as version,
        current_setting('server_version_num')::int as version_num,
        current_setting('data_checksums') as data_checksums, current_setting('fsync') as fsync,
        current_setting('synchronous_commit') as synchronous_commit, current_setting('shared_buffers') as shared_buffers,
        current_setting('wal_level') as wal_level, current_setting('max_wal_size') as max_wal_size,
        current_setting('full_page_writes') as full_page_writes, current_setting('work_mem') as work_mem,
        current_setting('maintenance_work_mem') as maintenance_work_mem`)).rows[0];

    // ---- data -------------------------------------------------------------
    progress(`generating ${N.toLocaleString('en')} source rows in SQL`);
    const gen = await measure(admin, async () => {
      await src.query(`${DDL('items').replace(',\n  primary key (tenant, id))', ')')}`);
      await src.query(generate('items', 1, N));
      await src.query('alter table items add primary key (tenant, id)');
      await src.query('create index items_updated_at_idx on items (updated_at)');
      await src.query(`create table items_small (like items including all)`);
      await src.query(`insert into items_small select * from items where id <= ${SMALL}`);
      // As autovacuum would after a bulk load: sets hint bits and the visibility map.
      await src.query('vacuum (analyze) items');
      await src.query('vacuum (analyze) items_small');
    });
    const srcSize = (await src.query(`select pg_total_relation_size('items')::bigint as b, pg_relation_size('items')::bigint as h`)).rows[0];
    for (const t of ['items', 'items_small', 'floor_items', 'loop_items', 'batch_items', LOG_ENTITY, ...Object.values(CSV_TABLES), ...Object.values(CHUNK_TABLES)]) {
      await sync.query(DDL(t));
    }
    // The file is the table as generated, before (c) and (d) change it.
    if (want('csv')) {
      progress('writing the table as a csv file');
      await writeCsv(src, `items (${COLUMNS.join(', ')})`, csvFile, srcUrl);
    }

    const rawConfig = {
      sources: { src: { kind: 'postgres', url: srcUrl }, files: { kind: 'csv', location: csvDir } },
      entities: {
        items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'], mode: 'mirror', cursor: { column: 'updated_at' } },
        items_small: { source: 'src', from: { table: 'items_small' }, target: 'items_small', key: ['tenant', 'id'], mode: 'mirror', cursor: { column: 'updated_at' } },
        // The same source table, read from its log into a target of its own.
        [LOG_ENTITY]: { source: 'src', from: { table: 'items' }, target: LOG_ENTITY, key: ['tenant', 'id'], mode: 'mirror', capture: 'log' },
        [CSV_TABLES.sync]: { source: 'files', from: { file: 'items.csv' }, target: CSV_TABLES.sync, key: ['tenant', 'id'], mode: 'mirror' },
        ...(want('chunks') ? chunkEntities() : {}),
      },
    };
    const cfg = parseConfig(rawConfig, {});
    await applyConfig(sync, cfg);
    engine = new Engine(sync, syncUrl, cfg);
    const eng = engine;

    // Each timed phase starts after a CHECKPOINT, so a checkpoint that an
    // earlier phase's WAL provoked does not land inside it.
    const quiesce = async () => {
      await autovacuumIdle(admin);
      await admin.query('checkpoint');
    };
    const time: Timer = async (fn) => {
      await quiesce();
      const m = await measure(admin, fn);
      return { value: m.value, seconds: round(m.seconds), walBytes: m.walBytes };
    };
    const syncRun = async (entity: string, table: string, rows: number, full: boolean): Promise<SyncPhase> => {
      await quiesce();
      await flushStats([sync]);
      const before = await tupleStats(reader, table);
      const m: Measured<RunResult> = await measure(admin, () => eng.run(entity, { trigger: 'manual', full }));
      const r = m.value;
      if (r.status !== 'succeeded') throw new Error(`run of ${entity} ended ${r.status}: ${r.error ?? ''}`);
      await flushStats([sync]);
      const after = await tupleStats(reader, table);
      const run = (await sync.query(`select phases, fetched, inserted, updated, deleted, unchanged, quarantined, detail -> 'diff' as diff,
          (select count(*) from sync.run_change c where c.run_id = r.id)::bigint as changes from sync.run r where id = $1`, [r.runId])).rows[0];
      return {
        seconds: round(m.seconds),
        rows,
        rows_per_s: Math.round(rows / m.seconds),
        peak_rss_mb: mb(m.peakRssBytes),
        start_rss_mb: mb(m.startRssBytes),
        wal_bytes: m.walBytes,
        fetch_ms: run.phases.fetch ?? null,
        merge_ms: run.phases.merge === undefined ? null : run.phases.merge + (run.phases.validate ?? 0),
        verify_ms: run.phases.verify ?? null,
        run: {
          fetched: Number(run.fetched), inserted: Number(run.inserted), updated: Number(run.updated), deleted: Number(run.deleted),
          unchanged: Number(run.unchanged), quarantined: Number(run.quarantined), run_change_rows: Number(run.changes),
        },
        diff: run.diff ?? null,
        target_tuples: diffStats(before, after),
      };
    };
    // What autovacuum would do after a bulk load into `table`.
    const settleTarget = async (table: string) => {
      await sync.query(`vacuum (analyze) ${table}`);
      await sync.query('vacuum (analyze) sync.run_change');
      await sync.query('vacuum (analyze) sync.run');
      await autovacuumIdle(admin);
      await admin.query('checkpoint');
    };
    // One change set of the bench (1% / 0.1% / 0.1%) on the source; `salt` picks other rows each time.
    let nextId = N + 1;
    const applyChange = async (salt: number) => {
      const cs = changeSet('items', N, nextId, salt);
      const u = await src.query(cs.update);
      const d = await src.query(cs.delete);
      if (cs.insert) await src.query(cs.insert);
      nextId += cs.inserts;
      await src.query('analyze items');
      return { updated: u.rowCount ?? 0, deleted: d.rowCount ?? 0, inserted: cs.inserts };
    };
    const f: Figures = {};

    // ---- the floor: raw COPY piped into COPY ------------------------------
    if (want('sync') || want('peers')) {
      progress('raw COPY → COPY floor');
      await quiesce();
      const floorM = await measure(admin, () => copyFloor(src, sync, 'items', 'floor_items'));
      f.floor = { seconds: round(floorM.seconds), rows: N, rows_per_s: Math.round(N / floorM.seconds), peak_rss_mb: mb(floorM.peakRssBytes), wal_bytes: floorM.walBytes };
    }

    // ---- peers: pgcopydb and pgloader on the same table -------------------
    if (want('peers')) f.peers = await runPeers(time, srcUrl, withDatabase(adminUrl, PEER_DB), N);

    // ---- initial sync at the small size (RSS reference) -------------------
    if (want('sync')) {
      progress(`initial sync of ${SMALL.toLocaleString('en')} rows (RSS reference)`);
      f.small = await syncRun('items_small', 'items_small', SMALL, true);
    }

    // ---- (a) initial sync -------------------------------------------------
    let settle: { seconds: number; wal_bytes: number; note: string } | undefined;
    if (want('sync') || want('verify') || want('log')) {
      progress('(a) initial sync into an empty target');
      f.a = await syncRun('items', 'items', N, true);

      // ---- settle: what autovacuum would do after a bulk load -------------
      // With data checksums on (the PG 18 default), the first read of freshly
      // loaded pages sets hint bits and writes full-page images to WAL. A
      // vacuum sets them (and the visibility map) once, as autovacuum would
      // after (a); then a checkpoint, so (b) starts from a settled server.
      progress('settle: VACUUM (ANALYZE) target and sync.run_change, CHECKPOINT');
      const settleM = await measure(admin, () => settleTarget('items'));
      settle = { seconds: round(settleM.seconds), wal_bytes: settleM.walBytes,
        note: 'VACUUM (ANALYZE) of the target, sync.run_change and sync.run after (a), as autovacuum would, then CHECKPOINT' };
    }

    // ---- (b) unchanged re-sync --------------------------------------------
    if (want('sync')) {
      progress('(b) unchanged re-sync');
      f.b = await syncRun('items', 'items', N, true);
    }

    // ---- verify of the unchanged table ------------------------------------
    if (want('verify')) {
      progress('verify of the unchanged table, against count(*) of source and target');
      f.verify = await verifyPhase({ time, engine: eng, src, sync, entity: 'items', table: 'items' });
      if (f.verify.note) progress(f.verify.note);
    }

    if (want('sync')) {
      // ---- (c) 1% updated, 0.1% deleted, 0.1% inserted, full refresh ------
      const verify = async (exceptDeleted?: string) => {
        const s = (await src.query(checksum('items'))).rows[0];
        const t = (await sync.query(checksum('items', exceptDeleted ? `not (${exceptDeleted})` : 'true'))).rows[0];
        return s.n === t.n && s.h === t.h;
      };
      progress('(c) change 1% / 0.1% / 0.1% on the source, full refresh');
      const cChange = await applyChange(0);
      const c = await syncRun('items', 'items', N, true);
      f.c = { ...c, change: cChange, verified: await verify() };

      // ---- (d) the same change by cursor ----------------------------------
      progress('(d) the same change again, incremental by the updated_at cursor');
      const beforeD = nextId;
      const dChange = await applyChange(1);
      const d = await syncRun('items', 'items', N, false);
      // A cursor sees updates and inserts, not deletes: the rows (d) deleted
      // stay in the target until the next full refresh.
      f.d = { ...d, change: dChange, verified: await verify(`id % 1000 = 4 and id < ${beforeD}`) };

      // The process's high-water mark over everything the sync needed (the
      // hand-written baselines below are the bench's own code, not the engine's).
      f.maxRssSyncBytes = process.resourceUsage().maxRSS * 1024;

      // ---- baselines: hand-written upserts --------------------------------
      progress(`row-by-row INSERT … ON CONFLICT, autocommit (${LOOP_ROWS.toLocaleString('en')} rows)`);
      await quiesce();
      const loopM = await measure(admin, () => rowByRow(src, sync, 'items', 'loop_items', LOOP_ROWS));
      progress(`batched upsert, 1,000 rows a statement (${BATCH_ROWS.toLocaleString('en')} rows)`);
      await quiesce();
      const batchM = await measure(admin, () => batched(src, sync, 'items', 'batch_items', BATCH_ROWS));
      const extrap = (m: Measured<number>): Extrapolated => ({
        sample_rows: m.value, sample_seconds: round(m.seconds), seconds: round(m.seconds * N / m.value),
        rows_per_s: Math.round(m.value / m.seconds), peak_rss_mb: mb(m.peakRssBytes), wal_bytes_sample: m.walBytes,
      });
      f.rowLoop = extrap(loopM);
      f.batch = extrap(batchM);
    }

    // ---- log capture: cost of the same change, then commit-to-target latency
    if (want('log')) {
      const args = { engine: eng, src, sync, rows: N, time, syncRun, settle: settleTarget, applyChange, nextId: () => nextId, progress };
      try {
        const cost = await logCost(args);
        const latency = await logLatency(args, LOG_SECONDS);
        f.log = { cost, latency };
      } finally {
        await dropLogSlot(srcUrl);
      }
    }

    // ---- csv: the same table as a file ------------------------------------
    if (want('csv')) {
      installPeers();
      f.csv = await csvPhase({ time, src, sync, syncUrl, file: csvFile, rows: N, entity: CSV_TABLES.sync, syncRun, progress });
    }

    // ---- chunks: the initial load in one COPY and split across workers ---
    if (want('chunks')) f.chunks = await chunksPhase({ time, engine: eng, src, sync, syncUrl, config: rawConfig, rows: N, progress });

    // ---- figures ----------------------------------------------------------
    const maxRssBytes = process.resourceUsage().maxRSS * 1024;
    const syncPhases = [f.small, f.a, f.b, f.c, f.d].filter((x) => x !== undefined);
    const ratios = ratiosOf(f);
    const targets = targetsOf(f, ratios);

    const result = {
      bench: 'syncline',
      schema: 1,
      timestamp: new Date().toISOString(),
      commit: gitCommit(),
      experiment: experiment ?? null,
      only: groups.size === GROUPS.length ? null : [...groups],
      rows: N,
      small_rows: SMALL,
      node: process.version,
      platform: `${os.platform()} ${os.arch()}, ${os.cpus().length} cpu`,
      load_average_1m: { start: round(loadAtStart, 2), end: round(os.loadavg()[0], 2) },
      server: { embedded: Boolean(server), ...serverInfo, version: String(serverInfo.version).split(' on ')[0] },
      source: { heap_bytes: Number(srcSize.h), total_bytes: Number(srcSize.b), generate_seconds: round(gen.seconds) },
      phases: {
        initial_small: f.small, floor: f.floor, peers: f.peers, a: f.a, settle, b: f.b, verify: f.verify, c: f.c,
        d: f.d && { ...f.d, note: 'a cursor does not see deletes; the next full refresh applies them' },
        row_loop: f.rowLoop, batched: f.batch, csv: f.csv, chunks: f.chunks, log: f.log,
      },
      ratios,
      peak_rss_mb: {
        sync_phases: syncPhases.length ? Math.max(...syncPhases.map((x) => x.peak_rss_mb)) : null,
        max_rss_through_d: f.maxRssSyncBytes === undefined ? null : mb(f.maxRssSyncBytes),
        process_max: mb(maxRssBytes), at_start: mb(rssAtStart), after_migrate: mb(rssAfterMigrate),
      },
      targets: Object.fromEntries(targets.map((t) => [t.name, { value: t.value, pass: t.pass, ...(t.skipped ? { skipped: true } : {}), ...(t.why ? { why: t.why } : {}) }])),
      passed: targets.filter((t) => t.pass).length,
      missed: targets.filter((t) => !t.pass).length,
    };

    const outDir = path.join(PROJECT_ROOT, 'bench-results');
    mkdirSync(outDir, { recursive: true });
    const file = path.join(outDir, `${result.timestamp.replace(/[:.]/g, '-')}.json`);
    writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);

    process.stdout.write(report(result, targets));
    process.stdout.write(`results: ${path.relative(process.cwd(), file)}\n`);
    process.stdout.write(`${JSON.stringify(result)}\n`);

    if (!process.env.BENCH_KEEP && !server) {
      for (const p of pools.splice(1)) await p.end();
      await engine.close();
      engine = undefined;
      for (const db of databases) await admin.query(`drop database if exists ${quoteIdent(db)} with (force)`);
    }
  } finally {
    const started = performance.now();
    await engine?.close().catch(() => {});
    for (const p of pools) await p.end().catch(() => {});
    rmSync(csvDir, { recursive: true, force: true });
    if (server) {
      if (process.env.BENCH_KEEP) progress(`BENCH_KEEP: server left running in ${dir} on port ${server.port}`);
      else {
        await server.stop().catch(() => {});
        if (dir) rmSync(dir, { recursive: true, force: true });
      }
    }
    progress(`cleaned up in ${round((performance.now() - started) / 1000, 1)} s`);
  }
}
