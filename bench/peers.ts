/**
 * The tools a user would otherwise reach for, measured on the same table and
 * server as the sync: pgcopydb (`copy table-data`) and pgloader (a database
 * load, and a csv load), plus `psql \copy` of a csv file. bench/peers.sh
 * installs the first two from apt when they are missing; a tool that stays
 * missing (or refuses the server) is skipped with a note, never failing the bench.
 *
 * Passwords never reach a command line, a load file or the output: the tools
 * get URLs without one and PGPASSWORD in their environment, and anything they
 * print is masked before it is shown.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { PROJECT_ROOT } from '../src/db/database.js';
import { COLUMNS } from './workload.js';

export interface PeerResult {
  tool: string;
  /** Wall clock of the tool's whole process (start-up included), or null when skipped. */
  seconds: number | null;
  rows: number | null;
  wal_bytes: number | null;
  note: string;
}

const cols = COLUMNS.join(', ');

function onPath(cmd: string): string | null {
  try {
    return execFileSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || null;
  } catch {
    return null;
  }
}

let installed = false;
/** Runs bench/peers.sh once (apt-get install of what is missing; it never fails). */
export function installPeers(): void {
  if (installed) return;
  installed = true;
  try {
    execFileSync('sh', [path.join(PROJECT_ROOT, 'bench', 'peers.sh')], { stdio: ['ignore', 'inherit', 'inherit'], timeout: 600_000 });
  } catch {
    // peers.sh reports its own trouble; whatever is still missing is skipped below.
  }
}

/** A URL the tools can take (no password) and the password for PGPASSWORD. */
function split(url: string): { url: string; password: string } {
  const u = new URL(url);
  const password = decodeURIComponent(u.password);
  u.password = '';
  return { url: u.toString(), password };
}

/** libpq's and pgloader's URLs need a host; a socket-only BENCH_DATABASE_URL cannot be handed to them as is. */
function tcpProblem(url: string): string | null {
  const u = new URL(url);
  return u.hostname ? null : 'needs a TCP URL (host:port); BENCH_DATABASE_URL has no host';
}

const mask = (text: string, secret: string) => (secret ? text.split(secret).join('***') : text);

/** Runs a tool, resolving with its exit code and the tail of what it printed (masked). */
function run(cmd: string, args: string[], password: string, cwd: string): Promise<{ code: number | null; tail: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd, env: { ...process.env, PGPASSWORD: password }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const keep = (b: Buffer) => { out = (out + b.toString()).slice(-4000); };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('error', (err) => resolve({ code: -1, tail: String(err) }));
    child.on('close', (code) => resolve({ code, tail: mask(out, password).trim().split('\n').slice(-6).join('\n') }));
  });
}

async function count(pool: pg.Pool, table: string): Promise<number> {
  return Number((await pool.query(`select count(*)::bigint as n from ${table}`)).rows[0].n);
}

/** Times `fn` as the bench times a phase (after a CHECKPOINT, with the WAL it caused). */
export type Timer = <T>(fn: () => Promise<T>) => Promise<{ value: T; seconds: number; walBytes: number }>;

/**
 * Times one tool's run into `table` of `dst` (empty, with the same PK) and
 * checks it loaded `expected` rows; a missing tool, a failure or a short
 * load becomes a skipped result with the reason.
 */
async function timed(tool: string, time: Timer, dst: pg.Pool, table: string, expected: number,
  go: (work: string) => Promise<{ code: number | null; tail: string }>): Promise<PeerResult> {
  if (!onPath(tool)) return { tool, seconds: null, rows: null, wal_bytes: null, note: `${tool} is not installed (bench/peers.sh could not install it): skipped` };
  const work = mkdtempSync(path.join(os.tmpdir(), `syncline-bench-${path.basename(tool)}-`));
  try {
    const { value: r, seconds, walBytes } = await time(() => go(work));
    const rows = await count(dst, table);
    if (r.code !== 0) return { tool, seconds: null, rows, wal_bytes: null, note: `${tool} failed (exit ${r.code}): ${r.tail}` };
    if (rows !== expected) return { tool, seconds: null, rows, wal_bytes: null, note: `${tool} loaded ${rows} of ${expected} rows: ${r.tail}` };
    return { tool, seconds, rows, wal_bytes: walBytes, note: '' };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** pgcopydb copy table-data of public.<table> into the same table of `dstUrl` (it must exist, empty). */
export function pgcopydb(time: Timer, srcUrl: string, dstUrl: string, dst: pg.Pool, table: string, expected: number): Promise<PeerResult> {
  const problem = tcpProblem(srcUrl);
  if (problem) return Promise.resolve({ tool: 'pgcopydb', seconds: null, rows: null, wal_bytes: null, note: `pgcopydb ${problem}: skipped` });
  const s = split(srcUrl);
  const d = split(dstUrl);
  return timed('pgcopydb', time, dst, table, expected, (work) => {
    writeFileSync(path.join(work, 'filters.ini'), `[include-only-table]\npublic.${table}\n`);
    return run('pgcopydb', ['copy', 'table-data', '--source', s.url, '--target', d.url,
      '--filters', path.join(work, 'filters.ini'), '--dir', path.join(work, 'dir')], s.password, work);
  });
}

/** pgloader LOAD DATABASE, data only, of public.<table> into the same table of `dstUrl` (it must exist, empty). */
export function pgloaderDatabase(time: Timer, srcUrl: string, dstUrl: string, dst: pg.Pool, table: string, expected: number): Promise<PeerResult> {
  const problem = tcpProblem(srcUrl);
  if (problem) return Promise.resolve({ tool: 'pgloader', seconds: null, rows: null, wal_bytes: null, note: `pgloader ${problem}: skipped` });
  const s = split(srcUrl);
  const d = split(dstUrl);
  return timed('pgloader', time, dst, table, expected, (work) => {
    const file = path.join(work, 'load');
    writeFileSync(file, `LOAD DATABASE
  FROM ${s.url.replace(/^postgres(ql)?:/, 'pgsql:')}
  INTO ${d.url.replace(/^postgres(ql)?:/, 'pgsql:')}
  WITH data only
  INCLUDING ONLY TABLE NAMES MATCHING '${table}' IN SCHEMA 'public';\n`);
    return run('pgloader', [file], s.password, work);
  });
}

/** pgloader LOAD CSV of `file` (with a header line) into `table` of `dstUrl` (empty, same PK). */
export function pgloaderCsv(time: Timer, file: string, dstUrl: string, dst: pg.Pool, table: string, expected: number): Promise<PeerResult> {
  const problem = tcpProblem(dstUrl);
  if (problem) return Promise.resolve({ tool: 'pgloader', seconds: null, rows: null, wal_bytes: null, note: `pgloader ${problem}: skipped` });
  const d = split(dstUrl);
  return timed('pgloader', time, dst, table, expected, (work) => {
    const load = path.join(work, 'load');
    writeFileSync(load, `LOAD CSV
  FROM '${file.replace(/'/g, "''")}' (${cols})
  INTO ${d.url.replace(/^postgres(ql)?:/, 'pgsql:')}
  TARGET TABLE public.${table} (${cols})
  WITH skip header = 1, fields optionally enclosed by '"', fields escaped by double-quote, fields terminated by ',';\n`);
    return run('pgloader', [load], d.password, work);
  });
}

const PSQL_CANDIDATES = ['/usr/lib/postgresql/15/bin/psql', 'psql'];

/** A psql to run, or null. */
export const psqlPath = (): string | null => PSQL_CANDIDATES.find((p) => (p.includes('/') ? existsSync(p) : onPath(p))) ?? null;

/**
 * `psql \copy` of `file` (csv with a header) into `table`; without a psql,
 * COPY FROM STDIN through pg-copy-streams of the same file (the note says which).
 */
export async function psqlCopy(time: Timer, file: string, dstUrl: string, dst: pg.Pool, table: string, expected: number): Promise<PeerResult> {
  const psql = psqlPath();
  if (!psql) {
    const { seconds, walBytes } = await time(async () => {
      const c = await dst.connect();
      try {
        await pipeline(createReadStream(file), c.query(copyFrom(`copy ${table} (${cols}) from stdin with (format csv, header)`)));
      } finally {
        c.release();
      }
    });
    return { tool: 'COPY FROM STDIN', seconds, rows: await count(dst, table), wal_bytes: walBytes, note: 'psql is missing: COPY FROM STDIN through pg-copy-streams instead' };
  }
  const d = split(dstUrl);
  const r = await timed(psql, time, dst, table, expected, () =>
    run(psql, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', d.url,
      '-c', `\\copy ${table} (${cols}) from '${file.replace(/'/g, "''")}' with (format csv, header)`], d.password, os.tmpdir()));
  return { ...r, tool: 'psql \\copy', note: r.note || psql };
}
