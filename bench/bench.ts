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
import { autovacuumIdle, diffStats, flushStats, MB, measure, tupleStats, type Measured, type TupleStats } from './measure.js';
import { report, type Target } from './report.js';
import { changeSet, checksum, DDL, generate } from './workload.js';

const SRC_DB = 'syncline_bench_src';
const SYNC_DB = 'syncline_bench';

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
  run: { fetched: number; inserted: number; updated: number; deleted: number; unchanged: number; quarantined: number; run_change_rows: number };
  target_tuples: TupleStats;
}

export async function main(): Promise<void> {
  const N = Number(process.env.BENCH_ROWS ?? 1_000_000);
  if (!Number.isInteger(N) || N < 1000) throw new Error('BENCH_ROWS must be an integer of at least 1000');
  const SMALL = Math.min(100_000, Math.floor(N / 10));
  const LOOP_ROWS = Math.min(20_000, N);
  const BATCH_ROWS = Math.min(200_000, N);

  const rssAtStart = process.memoryUsage().rss;
  let server: EmbeddedServer | undefined;
  let dir: string | undefined;
  let adminUrl = process.env.BENCH_DATABASE_URL;
  const pools: pg.Pool[] = [];
  let engine: Engine | undefined;
  try {
    if (!adminUrl) {
      progress('starting a throwaway embedded PostgreSQL');
      dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-bench-'));
      server = await startEmbedded({ dir, port: await freePort(), persistent: false });
      adminUrl = server.url('postgres');
    }
    const admin = makePool(adminUrl, { max: 2 });
    pools.push(admin);
    for (const db of [SRC_DB, SYNC_DB]) await admin.query(`drop database if exists ${quoteIdent(db)} with (force)`);
    await ensureDatabase(adminUrl, SRC_DB);
    await ensureDatabase(adminUrl, SYNC_DB);
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
    for (const t of ['items', 'items_small', 'floor_items', 'loop_items', 'batch_items']) await sync.query(DDL(t));

    const cfg = parseConfig({
      sources: { src: { kind: 'postgres', url: srcUrl } },
      entities: {
        items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['tenant', 'id'], mode: 'mirror', cursor: { column: 'updated_at' } },
        items_small: { source: 'src', from: { table: 'items_small' }, target: 'items_small', key: ['tenant', 'id'], mode: 'mirror', cursor: { column: 'updated_at' } },
      },
    }, {});
    await applyConfig(sync, cfg);
    engine = new Engine(sync, syncUrl, cfg);
    const eng = engine;

    // Each timed phase starts after a CHECKPOINT, so a checkpoint that an
    // earlier phase's WAL provoked does not land inside it.
    const quiesce = async () => {
      await autovacuumIdle(admin);
      await admin.query('checkpoint');
    };
    const syncRun = async (entity: string, table: string, rows: number, full: boolean): Promise<SyncPhase & { result: RunResult }> => {
      await quiesce();
      await flushStats([sync]);
      const before = await tupleStats(reader, table);
      const m: Measured<RunResult> = await measure(admin, () => eng.run(entity, { trigger: 'manual', full }));
      const r = m.value;
      if (r.status !== 'succeeded') throw new Error(`run of ${entity} ended ${r.status}: ${r.error ?? ''}`);
      await flushStats([sync]);
      const after = await tupleStats(reader, table);
      const run = (await sync.query(`select phases, fetched, inserted, updated, deleted, unchanged, quarantined,
          (select count(*) from sync.run_change c where c.run_id = r.id)::bigint as changes from sync.run r where id = $1`, [r.runId])).rows[0];
      return {
        result: r,
        seconds: round(m.seconds),
        rows,
        rows_per_s: Math.round(rows / m.seconds),
        peak_rss_mb: mb(m.peakRssBytes),
        start_rss_mb: mb(m.startRssBytes),
        wal_bytes: m.walBytes,
        fetch_ms: run.phases.fetch ?? null,
        merge_ms: run.phases.merge === undefined ? null : run.phases.merge + (run.phases.validate ?? 0),
        run: {
          fetched: Number(run.fetched), inserted: Number(run.inserted), updated: Number(run.updated), deleted: Number(run.deleted),
          unchanged: Number(run.unchanged), quarantined: Number(run.quarantined), run_change_rows: Number(run.changes),
        },
        target_tuples: diffStats(before, after),
      };
    };
    const strip = ({ result: _r, ...rest }: SyncPhase & { result: RunResult }): SyncPhase => rest;

    // ---- the floor: raw COPY piped into COPY ------------------------------
    progress('raw COPY → COPY floor');
    await quiesce();
    const floorM = await measure(admin, () => copyFloor(src, sync, 'items', 'floor_items'));
    const floor = { seconds: round(floorM.seconds), rows: N, rows_per_s: Math.round(N / floorM.seconds), peak_rss_mb: mb(floorM.peakRssBytes), wal_bytes: floorM.walBytes };

    // ---- initial sync at the small size (RSS reference) -------------------
    progress(`initial sync of ${SMALL.toLocaleString('en')} rows (RSS reference)`);
    const small = strip(await syncRun('items_small', 'items_small', SMALL, true));

    // ---- (a) initial sync -------------------------------------------------
    progress('(a) initial sync into an empty target');
    const a = strip(await syncRun('items', 'items', N, true));

    // ---- settle: what autovacuum would do after a bulk load ---------------
    // With data checksums on (the PG 18 default), the first read of freshly
    // loaded pages sets hint bits and writes full-page images to WAL. A
    // vacuum sets them (and the visibility map) once, as autovacuum would
    // after (a); then a checkpoint, so (b) starts from a settled server.
    progress('settle: VACUUM (ANALYZE) target and sync.run_change, CHECKPOINT');
    const settleM = await measure(admin, async () => {
      await sync.query('vacuum (analyze) items');
      await sync.query('vacuum (analyze) sync.run_change');
      await sync.query('vacuum (analyze) sync.run');
      await autovacuumIdle(admin);
      await admin.query('checkpoint');
    });
    const settle = { seconds: round(settleM.seconds), wal_bytes: settleM.walBytes,
      note: 'VACUUM (ANALYZE) of the target, sync.run_change and sync.run after (a), as autovacuum would, then CHECKPOINT' };

    // ---- (b) unchanged re-sync --------------------------------------------
    progress('(b) unchanged re-sync');
    const b = strip(await syncRun('items', 'items', N, true));
    const bWritten = b.target_tuples.ins + b.target_tuples.upd + b.target_tuples.del;
    const bRunWritten = b.run.inserted + b.run.updated + b.run.deleted;

    // ---- (c) 1% updated, 0.1% deleted, 0.1% inserted, full refresh --------
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
    const verify = async (exceptDeleted?: string) => {
      const s = (await src.query(checksum('items'))).rows[0];
      const t = (await sync.query(checksum('items', exceptDeleted ? `not (${exceptDeleted})` : 'true'))).rows[0];
      return s.n === t.n && s.h === t.h;
    };
    progress('(c) change 1% / 0.1% / 0.1% on the source, full refresh');
    const cChange = await applyChange(0);
    const c = strip(await syncRun('items', 'items', N, true));
    const cVerified = await verify();

    // ---- (d) the same change by cursor ------------------------------------
    progress('(d) the same change again, incremental by the updated_at cursor');
    const beforeD = nextId;
    const dChange = await applyChange(1);
    const d = strip(await syncRun('items', 'items', N, false));
    // A cursor sees updates and inserts, not deletes: the rows (d) deleted
    // stay in the target until the next full refresh.
    const dVerified = await verify(`id % 1000 = 4 and id < ${beforeD}`);

    // The process's high-water mark over everything the sync needed (the
    // hand-written baselines below are the bench's own code, not the engine's).
    const maxRssSyncBytes = process.resourceUsage().maxRSS * 1024;

    // ---- baselines: hand-written upserts ----------------------------------
    progress(`row-by-row INSERT … ON CONFLICT, autocommit (${LOOP_ROWS.toLocaleString('en')} rows)`);
    await quiesce();
    const loopM = await measure(admin, () => rowByRow(src, sync, 'items', 'loop_items', LOOP_ROWS));
    progress(`batched upsert, 1,000 rows a statement (${BATCH_ROWS.toLocaleString('en')} rows)`);
    await quiesce();
    const batchM = await measure(admin, () => batched(src, sync, 'items', 'batch_items', BATCH_ROWS));
    const extrap = (m: Measured<number>) => ({
      sample_rows: m.value, sample_seconds: round(m.seconds), seconds: round(m.seconds * N / m.value),
      rows_per_s: Math.round(m.value / m.seconds), peak_rss_mb: mb(m.peakRssBytes), wal_bytes_sample: m.walBytes,
    });
    const rowLoop = extrap(loopM);
    const batch = extrap(batchM);

    // ---- figures ----------------------------------------------------------
    const maxRssBytes = process.resourceUsage().maxRSS * 1024;
    const peakSyncRss = Math.max(small.peak_rss_mb, a.peak_rss_mb, b.peak_rss_mb, c.peak_rss_mb, d.peak_rss_mb);
    const ratios = {
      a_over_floor: round(a.seconds / floor.seconds),
      row_loop_over_a: round(rowLoop.seconds / a.seconds, 1),
      batched_over_a: round(batch.seconds / a.seconds, 2),
      b_over_a: round(b.seconds / a.seconds),
      c_over_a: round(c.seconds / a.seconds),
      d_over_a: round(d.seconds / a.seconds, 4),
      // Peak RSS of (a) less that of the 100k-row initial sync.
      rss_growth_mb: round(a.peak_rss_mb - small.peak_rss_mb, 1),
      // The same, counting only what each run added over the RSS it started
      // with (after a full GC): what the sync itself holds, not the
      // allocator's history.
      rss_phase_growth_mb: round((a.peak_rss_mb - a.start_rss_mb) - (small.peak_rss_mb - small.start_rss_mb), 1),
    };
    const rssTolerance = 10;
    const targets: Target[] = [
      { name: '(a) ≤ 1.5× raw COPY floor', value: `${ratios.a_over_floor}×`, pass: ratios.a_over_floor <= 1.5 },
      { name: '(a) ≥ 40× faster than row-by-row upsert', value: `${ratios.row_loop_over_a}×`, pass: ratios.row_loop_over_a >= 40 },
      { name: '(a) ≥ 2× faster than batched upsert', value: `${ratios.batched_over_a}×`, pass: ratios.batched_over_a >= 2 },
      { name: '(b) ≤ 0.6× (a)', value: `${ratios.b_over_a}×`, pass: ratios.b_over_a <= 0.6 },
      { name: '(b) WAL < 1 MB', value: `${round(b.wal_bytes / 1024, 1)} kB`, pass: b.wal_bytes < MB },
      { name: '(b) 0 tuples written (pg_stat_user_tables)', value: String(bWritten), pass: bWritten === 0 },
      { name: '(b) 0 rows changed (sync.run)', value: String(bRunWritten), pass: bRunWritten === 0 },
      { name: '(c) counts match the change', value: `+${c.run.inserted} ~${c.run.updated} -${c.run.deleted}`,
        pass: c.run.inserted === cChange.inserted && c.run.updated === cChange.updated && c.run.deleted === cChange.deleted && cVerified },
      { name: '(d) ≤ 5% of (a)', value: `${round(ratios.d_over_a * 100, 2)}%`, pass: ratios.d_over_a <= 0.05 },
      { name: '(d) counts match the change (no deletes by cursor)', value: `+${d.run.inserted} ~${d.run.updated} -${d.run.deleted}`,
        pass: d.run.inserted === dChange.inserted && d.run.updated === dChange.updated && d.run.deleted === 0 && dVerified },
      { name: 'peak RSS ≤ 150 MB (maxRSS through (d))', value: `${mb(maxRssSyncBytes)} MB`, pass: maxRssSyncBytes <= 150 * MB },
      { name: `no RSS growth 100k → 1M rows (≤ ${rssTolerance} MB)`,
        value: `${sign(ratios.rss_phase_growth_mb)} MB in-run (${sign(ratios.rss_growth_mb)} MB peak)`,
        pass: ratios.rss_phase_growth_mb <= rssTolerance },
    ];

    const result = {
      bench: 'syncline',
      schema: 1,
      timestamp: new Date().toISOString(),
      commit: gitCommit(),
      experiment: experiment ?? null,
      rows: N,
      small_rows: SMALL,
      node: process.version,
      platform: `${os.platform()} ${os.arch()}, ${os.cpus().length} cpu`,
      server: { embedded: Boolean(server), ...serverInfo, version: String(serverInfo.version).split(' on ')[0] },
      source: { heap_bytes: Number(srcSize.h), total_bytes: Number(srcSize.b), generate_seconds: round(gen.seconds) },
      phases: {
        initial_small: small, floor, a, settle, b, c: { ...c, change: cChange, verified: cVerified },
        d: { ...d, change: dChange, verified: dVerified, note: 'a cursor does not see deletes; the next full refresh applies them' },
        row_loop: rowLoop, batched: batch,
      },
      ratios,
      peak_rss_mb: { sync_phases: peakSyncRss, max_rss_through_d: mb(maxRssSyncBytes), process_max: mb(maxRssBytes), at_start: mb(rssAtStart), after_migrate: mb(rssAfterMigrate) },
      targets: Object.fromEntries(targets.map((t) => [t.name, { value: t.value, pass: t.pass }])),
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
      for (const db of [SRC_DB, SYNC_DB]) await admin.query(`drop database if exists ${quoteIdent(db)} with (force)`);
    }
  } finally {
    const started = performance.now();
    await engine?.close().catch(() => {});
    for (const p of pools) await p.end().catch(() => {});
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
