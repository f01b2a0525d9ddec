/**
 * The edge push bench: readings pushed per second from an edge's backlog of
 * BENCH_EDGE_ROWS (default 1,000,000) to a remote database, exactly once
 * (batch → remote INSERT … ON CONFLICT DO NOTHING, COMMIT → local DELETE,
 * COMMIT), with the default batch of 100 and with BENCH_EDGE_BATCH (10,000),
 * against the floor: the same rows COPYed to the remote in one go and put in
 * with one INSERT … SELECT … ON CONFLICT DO NOTHING, in one transaction, and
 * nothing deleted locally. Both databases (the example's sql/local.sql and
 * sql/remote.sql) live on one server: BENCH_DATABASE_URL's, or a throwaway
 * embedded one.
 *
 * bench/run.ts runs it after the other phases (its figures join the report
 * and the JSON line, under "edge"), or alone with BENCH_ONLY=edge.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { applyConfig } from '../src/config/apply.js';
import { parseConfig } from '../src/config/load.js';
import { ensureDatabase, migrateDatabase, PROJECT_ROOT, quoteIdent } from '../src/db/database.js';
import { freePort, startEmbedded, type EmbeddedServer } from '../src/db/embedded.js';
import { makePool } from '../src/db/pool.js';
import { Engine } from '../src/engine/run.js';
import { Edge } from '../src/edge/edge.js';
import { runPush } from '../src/edge/push.js';
import { autovacuumIdle, MB, measure } from './measure.js';
import { table, type Target } from './report.js';

const LOCAL_DB = 'syncline_bench_edge';
const CLOUD_DB = 'syncline_bench_cloud';
const SQL_DIR = path.join(PROJECT_ROOT, 'examples', 'edge-meters', 'sql');
const COLS = 'tenant_id, meter_id, register_id, recorded_at, value, quality';
// Targets: a big batch should cost little over the floor; exactly once is not negotiable.
const BIG_BATCH_OVER_FLOOR = 2;

const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
const num = (x: number | null | undefined) => (x === null || x === undefined ? '' : x.toLocaleString('en'));

function progress(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] edge: ${msg}\n`);
}

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Edgy = any;

interface Phase {
  seconds: number;
  rows: number;
  rows_per_s: number;
  peak_rss_mb: number;
  wal_bytes: number;
  verified: boolean;
}

/** Every reading on the remote exactly once, none left pending locally. */
async function verify(local: pg.Pool, cloud: pg.Pool, n: number): Promise<boolean> {
  // The primary key (the natural key) makes every remote row a distinct reading.
  const r = (await cloud.query('select count(*)::int as n from readings')).rows[0];
  const l = (await local.query('select count(*)::int as n from edge.readings')).rows[0];
  return r.n === n && l.n === 0;
}

/** The floor: one COPY of all rows into a remote session table, one INSERT … SELECT, one COMMIT. Returns the INSERT's ms. */
async function floor(local: pg.Pool, cloud: pg.Pool): Promise<number> {
  const a = await local.connect();
  const b = await cloud.connect();
  try {
    await b.query('begin');
    await b.query(`create temp table stage on commit drop as select ${COLS} from readings with no data`);
    await pipeline(a.query(copyTo(`copy (select ${COLS} from edge.readings) to stdout`)), b.query(copyFrom(`copy stage (${COLS}) from stdin`)));
    const t = performance.now();
    await b.query(`insert into readings (${COLS}) select ${COLS} from stage
      on conflict (tenant_id, meter_id, register_id, recorded_at) do nothing`);
    await b.query('commit');
    return performance.now() - t;
  } finally {
    a.release();
    b.release();
  }
}

export async function runEdgeBench(): Promise<{ result: Edgy; targets: Target[] }> {
  const N = Number(process.env.BENCH_EDGE_ROWS ?? 1_000_000);
  const BIG = Number(process.env.BENCH_EDGE_BATCH ?? 10_000);
  if (!Number.isInteger(N) || N < 1000) throw new Error('BENCH_EDGE_ROWS must be an integer of at least 1000');
  if (!Number.isInteger(BIG) || BIG < 1) throw new Error('BENCH_EDGE_BATCH must be a positive integer');
  let server: EmbeddedServer | undefined;
  let dir: string | undefined;
  let adminUrl = process.env.BENCH_DATABASE_URL;
  const pools: pg.Pool[] = [];
  let engine: Engine | undefined;
  let edge: Edge | undefined;
  try {
    if (!adminUrl) {
      progress('starting a throwaway embedded PostgreSQL');
      dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-bench-edge-'));
      server = await startEmbedded({ dir, port: await freePort(), persistent: false });
      adminUrl = server.url('postgres');
    }
    const admin = makePool(adminUrl, { max: 2 });
    pools.push(admin);
    for (const db of [LOCAL_DB, CLOUD_DB]) {
      await admin.query(`drop database if exists ${quoteIdent(db)} with (force)`);
      await ensureDatabase(adminUrl, db);
    }
    const localUrl = withDatabase(adminUrl, LOCAL_DB);
    const cloudUrl = withDatabase(adminUrl, CLOUD_DB);
    await migrateDatabase(localUrl);
    const local = makePool(localUrl, { max: 4 });
    const cloud = makePool(cloudUrl, { max: 2 });
    pools.push(local, cloud);
    await local.query(`set client_min_messages = warning; ${readFileSync(path.join(SQL_DIR, 'local.sql'), 'utf8')}`);
    await cloud.query(`set client_min_messages = warning; ${readFileSync(path.join(SQL_DIR, 'remote.sql'), 'utf8')}`);

    progress(`generating ${num(N)} readings in SQL`);
    // 500 meters × 4 registers, one reading each every second: a gateway's backlog of ~8 minutes… at scale.
    await local.query(`create table edge.readings_src as
      select 'acme'::text as tenant_id, (1 + g % 500)::bigint as meter_id, (1 + g / 500 % 4)::int as register_id,
             timestamptz '2026-01-01' + (g / 2000) * interval '1 second' as recorded_at, round((random() * 1e6)::numeric, 3) as value,
             0::smallint as quality
        from generate_series(0, ${N - 1}) g`);
    const refill = async () => {
      await local.query('truncate edge.readings');
      await local.query(`insert into edge.readings (${COLS}) select ${COLS} from edge.readings_src order by recorded_at`);
      await local.query('vacuum (analyze) edge.readings');
      await cloud.query('truncate readings');
      await autovacuumIdle(admin);
      await admin.query('checkpoint');
    };

    const configFor = (batchSize: number) => parseConfig({
      sources: { cloud: { kind: 'postgres', url: cloudUrl } },
      entities: { readings: { direction: 'push', source: 'cloud', from: { table: 'edge.readings' }, target: 'public.readings',
        key: ['tenant_id', 'meter_id', 'register_id', 'recorded_at'], push: { orderBy: 'recorded_at', batchSize } } },
    }, {});
    const baseCfg = configFor(100);
    await applyConfig(local, baseCfg);
    engine = new Engine(local, localUrl, baseCfg);
    edge = new Edge(engine);
    const e = edge;

    const push = async (batchSize: number): Promise<Phase & Edgy> => {
      progress(`push, batches of ${num(batchSize)}`);
      await refill();
      const def = configFor(batchSize).entities.readings;
      const m = await measure(admin, () => runPush(e.pushTarget(def), 'readings', def, { trigger: 'manual' }));
      if (m.value.status !== 'succeeded') throw new Error(`push of ${num(batchSize)} ended ${m.value.status}: ${m.value.error}`);
      const run = (await local.query('select phases, detail from sync.run where id = $1', [m.value.runId])).rows[0];
      return {
        seconds: round(m.seconds), rows: m.value.fetched, rows_per_s: Math.round(m.value.fetched / m.seconds), batch_size: batchSize,
        batches: m.value.batches, peak_rss_mb: round(m.peakRssBytes / MB, 1), wal_bytes: m.walBytes,
        run_phases_ms: run.phases, batch_ms: run.detail.batch_ms, verified: await verify(local, cloud, N),
      };
    };

    progress('floor: one COPY and one INSERT … SELECT');
    await refill();
    const f = await measure(admin, () => floor(local, cloud));
    const floorPhase = { seconds: round(f.seconds), rows: N, rows_per_s: Math.round(N / f.seconds), insert_select_seconds: round(f.value / 1000),
      peak_rss_mb: round(f.peakRssBytes / MB, 1), wal_bytes: f.walBytes,
      verified: (await cloud.query('select count(*)::int as n from readings')).rows[0].n === N,
      note: 'COPY of every row into a remote session table, one INSERT … SELECT … ON CONFLICT DO NOTHING, one COMMIT; nothing deleted locally' };
    const small = await push(100);
    const big = await push(BIG);

    const ratios = { default_over_floor: round(small.seconds / f.seconds, 2), big_over_floor: round(big.seconds / f.seconds, 2),
      default_over_big: round(small.seconds / big.seconds, 2) };
    const targets: Target[] = [
      { name: 'edge: every reading on the remote once, none left locally (both batch sizes)', value: `${small.verified && big.verified ? 'yes' : 'NO'}`,
        pass: small.verified && big.verified && floorPhase.verified },
      { name: `edge: batch ${num(BIG)} ≤ ${BIG_BATCH_OVER_FLOOR}× the one-statement floor`, value: `${ratios.big_over_floor}×`,
        pass: ratios.big_over_floor <= BIG_BATCH_OVER_FLOOR },
    ];
    const result = { rows: N, big_batch: BIG, phases: { floor: floorPhase, default_batch: small, big_batch: big }, ratios,
      targets: Object.fromEntries(targets.map((t) => [t.name, { value: t.value, pass: t.pass }])) };
    if (!process.env.BENCH_KEEP && !server) {
      await edge.close();
      await engine.close();
      edge = undefined;
      engine = undefined;
      for (const p of pools.splice(1)) await p.end();
      for (const db of [LOCAL_DB, CLOUD_DB]) await admin.query(`drop database if exists ${quoteIdent(db)} with (force)`);
    }
    return { result, targets };
  } finally {
    await edge?.close().catch(() => {});
    await engine?.close().catch(() => {});
    for (const p of pools) await p.end().catch(() => {});
    if (server && !process.env.BENCH_KEEP) {
      await server.stop().catch(() => {});
      if (dir) rmSync(dir, { recursive: true, force: true });
    } else if (server) progress(`BENCH_KEEP: server left running in ${dir} on port ${server.port}`);
  }
}

/** The edge phases as lines of the bench's report. */
export function edgeReport(r: Edgy): string[] {
  const p = r.phases;
  const ms = (x: Edgy) => `${(x.run_phases_ms.pick / 1000).toFixed(1)} / ${(x.run_phases_ms.transfer / 1000).toFixed(1)} / `
    + `${(x.run_phases_ms.remote_commit / 1000).toFixed(1)} / ${(x.run_phases_ms.local_commit / 1000).toFixed(1)}`;
  const row = (label: string, x: Edgy, note: string) => [label, x.seconds.toFixed(2), num(x.rows_per_s), x.peak_rss_mb.toFixed(1),
    (x.wal_bytes / MB).toFixed(1), x.run_phases_ms ? ms(x) : '', x.batch_ms ? `${x.batch_ms.p50} / ${x.batch_ms.p95}` : '',
    `${note}${x.verified ? '' : '; NOT EXACTLY ONCE'}`];
  return [
    '',
    `Edge push — ${num(r.rows)} readings waiting on the edge, pushed to the cloud (one server, two databases)`,
    '',
    table(['phase', 'seconds', 'rows/s', 'peak RSS MB', 'WAL MB', 'pick / copy / remote / local s', 'batch p50 / p95 ms', 'note'], [
      row('floor: 1 COPY + 1 INSERT … SELECT', p.floor, `INSERT … SELECT alone ${p.floor.insert_select_seconds.toFixed(2)} s; no local delete`),
      row('push, batches of 100 (default)', p.default_batch, `${num(p.default_batch.batches)} batches, ${r.ratios.default_over_floor}× the floor`),
      row(`push, batches of ${num(r.big_batch)}`, p.big_batch, `${num(p.big_batch.batches)} batches, ${r.ratios.big_over_floor}× the floor`),
    ], [false, true, true, true, true, true, true, false]),
    '',
    'edge: each push batch is a remote transaction (COPY into a session table, INSERT … ON CONFLICT DO NOTHING, COMMIT) '
      + 'followed by a local one (DELETE of the batch, its counts in sync.run, COMMIT): two commits a batch.',
    `edge ratios: ${Object.entries(r.ratios).map(([k, v]) => `${k}=${v}`).join('  ')}`,
  ];
}

function gitCommit(): string | null {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: PROJECT_ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

function save(result: Edgy): string {
  const outDir = path.join(PROJECT_ROOT, 'bench-results');
  mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `${String(result.timestamp).replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  return path.relative(process.cwd(), file);
}

/** BENCH_ONLY=edge: the edge phases alone, a report and one JSON line. */
export async function edgeOnly(): Promise<void> {
  const { result: edge, targets } = await runEdgeBench();
  const result = { bench: 'syncline', schema: 1, timestamp: new Date().toISOString(), commit: gitCommit(), only: 'edge',
    node: process.version, platform: `${os.platform()} ${os.arch()}, ${os.cpus().length} cpu`, edge, targets: edge.targets,
    passed: targets.filter((t) => t.pass).length, missed: targets.filter((t) => !t.pass).length };
  const file = save(result);
  process.stdout.write([...edgeReport(edge), '', table(['target', 'value', ''], targets.map((t) => [t.name, t.value, t.pass ? 'PASS' : 'MISS']),
    [false, true, false]), '', `results: ${file}`, ''].join('\n'));
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

/**
 * Runs `fn` (the other phases, which print a report, a results line and a
 * JSON line), holding back its last two lines; then the edge phases; then
 * prints the edge section, and the results line and JSON line with "edge"
 * added (the file rewritten to match).
 */
export async function thenEdge(fn: () => Promise<void>): Promise<void> {
  const write = process.stdout.write.bind(process.stdout);
  let resultsLine: string | null = null;
  let json: string | null = null;
  process.stdout.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    const s = typeof chunk === 'string' ? chunk : null;
    if (s?.startsWith('results: ')) resultsLine = s;
    else if (s?.startsWith('{"bench":"syncline"')) json = s;
    else return (write as (...a: unknown[]) => boolean)(chunk, ...rest);
    return true;
  }) as typeof process.stdout.write;
  try {
    await fn();
  } finally {
    process.stdout.write = write;
  }
  let edge;
  try {
    edge = await runEdgeBench();
  } catch (err) {
    for (const s of [resultsLine, json]) if (s) write(s); // the other figures are not lost
    throw err;
  }
  const result = json ? JSON.parse(json) : { bench: 'syncline', schema: 1, timestamp: new Date().toISOString(), targets: {} };
  result.edge = edge.result;
  result.targets = { ...result.targets, ...edge.result.targets };
  const all = Object.values(result.targets as Record<string, { pass: boolean }>);
  result.passed = all.filter((t) => t.pass).length;
  result.missed = all.filter((t) => !t.pass).length;
  const file = save(result);
  write([...edgeReport(edge.result), '', table(['target', 'value', ''], edge.targets.map((t) => [t.name, t.value, t.pass ? 'PASS' : 'MISS']),
    [false, true, false]), '', `${result.passed} of ${result.passed + result.missed} targets met (all phases)`, `results: ${file}`, ''].join('\n'));
  write(`${JSON.stringify(result)}\n`);
}
