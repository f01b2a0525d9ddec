/**
 * The chunks phase (BENCH_ONLY group "chunks"): the initial load of the
 * source table into an empty target in one COPY, against the same load
 * split into block-range chunks ("snapshot": {"chunks": N}) read by the
 * run's own process and two worker processes (bench/chunk-worker.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type pg from 'pg';
import { PROJECT_ROOT } from '../src/db/database.js';
import type { Engine } from '../src/engine/run.js';
import type { Timer } from './peers.js';
import { checksum } from './workload.js';

export const CHUNK_TABLES = { single: 'load_single', chunked: 'load_chunked' } as const;
export const CHUNKS = 8;
const WORKERS = 2;
// Worker processes announce themselves within seconds; far beyond that, the bench fails.
const WORKER_START_MS = 120_000;

/** The two entities of the phase, for the bench's config. */
export function chunkEntities(): Record<string, unknown> {
  const e = { source: 'src', from: { table: 'items' }, key: ['tenant', 'id'], mode: 'mirror' };
  return {
    [CHUNK_TABLES.single]: { ...e, target: CHUNK_TABLES.single },
    [CHUNK_TABLES.chunked]: { ...e, target: CHUNK_TABLES.chunked, snapshot: { chunks: CHUNKS, minRows: 0 } },
  };
}

export interface ChunksPhase {
  rows: number;
  chunks: number;
  workers: number;
  single_seconds: number;
  chunked_seconds: number;
  chunked_over_single: number;
  /** sync.run.phases of each run (ms): where the time went. */
  phases: { single: Record<string, number>; chunked: Record<string, number> };
  /** Sessions that read the chunked run's chunks: the run's own process and the workers'. */
  readers: Record<string, number>;
  equal: boolean;
}

/** Starts the workers (into `started`, so the caller stops them also when this fails) and waits until each has announced itself. */
async function startWorkers(sync: pg.Pool, syncUrl: string, config: unknown, started: ChildProcess[]): Promise<void> {
  const children = Array.from({ length: WORKERS }, () => spawn(process.execPath, ['--import', 'tsx', 'bench/chunk-worker.ts'], {
    cwd: PROJECT_ROOT, stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, DATABASE_URL: syncUrl, BENCH_CHUNK_CONFIG: JSON.stringify(config) },
  }));
  started.push(...children);
  const deadline = Date.now() + WORKER_START_MS;
  for (;;) {
    const { rows } = await sync.query(`select count(distinct pid)::int as n from sync.worker where pid = any($1) and stopped_at is null`,
      [children.map((c) => c.pid)]);
    if (rows[0].n === WORKERS) return;
    if (Date.now() > deadline) throw new Error('the chunk workers did not start');
    await new Promise((r) => setTimeout(r, 200));
  }
}

export async function chunksPhase(args: {
  time: Timer; engine: Engine; src: pg.Pool; sync: pg.Pool; syncUrl: string; config: unknown; rows: number;
  progress: (msg: string) => void;
}): Promise<ChunksPhase> {
  const { time, engine, src, sync, syncUrl, config, progress } = args;
  const run = async (entity: string) => {
    const t = await time(() => engine.run(entity, { trigger: 'manual' }));
    if (t.value.status !== 'succeeded') throw new Error(`run of ${entity} ended ${t.value.status}: ${t.value.error ?? ''}`);
    return t;
  };
  progress(`chunks: starting ${WORKERS} worker processes`);
  const workers: ChildProcess[] = [];
  try {
    await startWorkers(sync, syncUrl, config, workers);
    progress(`chunks: initial load in ${CHUNKS} chunks, run + ${WORKERS} workers`);
    const chunked = await run(CHUNK_TABLES.chunked);
    progress('chunks: the same initial load in one COPY');
    const single = await run(CHUNK_TABLES.single);
    const { rows: readers } = await sync.query<{ who: string; n: number }>(
      `select taken_by ->> 'who' as who, count(*)::int as n from sync.run_chunk where run_id = $1 group by 1 order by 1`, [chunked.value.runId]);
    const phasesOf = async (id: number | null) => (await sync.query('select phases from sync.run where id = $1', [id])).rows[0].phases;
    const s = (await src.query(checksum('items'))).rows[0];
    const [a, b] = [(await sync.query(checksum(CHUNK_TABLES.single))).rows[0], (await sync.query(checksum(CHUNK_TABLES.chunked))).rows[0]];
    const ratio = Math.round((chunked.seconds / single.seconds) * 1000) / 1000;
    progress(`chunks: chunked ${chunked.seconds} s, single ${single.seconds} s: ${ratio}× the single COPY`);
    return {
      rows: chunked.value.fetched ?? 0, chunks: CHUNKS, workers: WORKERS, single_seconds: single.seconds, chunked_seconds: chunked.seconds,
      chunked_over_single: ratio, phases: { single: await phasesOf(single.value.runId), chunked: await phasesOf(chunked.value.runId) }, readers: Object.fromEntries(readers.map((r) => [r.who, r.n])),
      equal: s.n === a.n && s.h === a.h && s.n === b.n && s.h === b.h,
    };
  } finally {
    for (const w of workers) w.kill('SIGTERM');
    await Promise.all(workers.map((w) => new Promise((r) => (w.exitCode !== null ? r(null) : w.once('exit', r)))));
  }
}
