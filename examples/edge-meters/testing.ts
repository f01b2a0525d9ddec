/**
 * Drives the example for tests (its own and test/edge-*.test.ts): real edge
 * processes (`node --import tsx src/cli/main.ts edge …`) whose JSON log lines
 * are collected, a writer of readings that keeps a ledger of what it
 * committed, and the example's SQL on a pair of databases.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Pool } from '../../src/db/pool.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const PROJECT = path.resolve(here, '../..');
export const sqlFile = (name: string) => readFileSync(path.join(here, 'sql', name), 'utf8');

/** The example's tables on both sides (what `edge setup` applies). */
export async function createTables(local: Pool, remote: Pool): Promise<void> {
  await local.query(`set client_min_messages = warning; ${sqlFile('local.sql')}`);
  await remote.query(`set client_min_messages = warning; ${sqlFile('remote.sql')}`);
}

export const READING_KEY = ['tenant_id', 'meter_id', 'register_id', 'recorded_at'];

/** The example's config with the remote's URL filled in, a given batch size, and the pull entities if asked for. */
export function exampleConfig(remoteUrl: string, opts: { batchSize?: number; afterPush?: 'delete' | 'mark'; pulls?: boolean } = {}) {
  const cfg = JSON.parse(readFileSync(path.join(here, 'syncline.config.json'), 'utf8'));
  cfg.sources.cloud.url = remoteUrl;
  delete cfg.$schema;
  cfg.entities.readings.push = { ...cfg.entities.readings.push, batchSize: opts.batchSize ?? 100, afterPush: opts.afterPush ?? 'delete' };
  if (opts.pulls === false) cfg.entities = { readings: cfg.entities.readings };
  return cfg;
}

/** Writes a config to a fresh temporary directory and returns its path. */
export function writeConfig(cfg: object): string {
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'syncline-edge-')), 'syncline.config.json');
  writeFileSync(file, JSON.stringify(cfg, null, 2));
  return file;
}

/**
 * Readings with a known identity: reading n has value n (and a distinct
 * natural key), so both sides can be compared with what was committed.
 */
export class Ledger {
  /** Readings 0 … committed-1 are committed locally. */
  committed = 0;
  private running: Promise<void> | null = null;
  private stopping = false;

  constructor(private pool: Pool, private meters = 50) {}

  /** Inserts readings [from, to) into `table`: the ledger's own rows (edge.readings), or what the remote holds once they arrived. */
  async insert(pool: Pool, table: 'edge.readings' | 'public.readings', from: number, to: number): Promise<void> {
    await pool.query(
      `insert into ${table} (tenant_id, meter_id, register_id, recorded_at, value)
       select 'acme', 1 + n % $3, 1 + n / $3 % 4, timestamptz '2026-01-01' + (n / ($3 * 4)) * interval '1 second', n
         from generate_series($1::bigint, $2::bigint - 1) n`, [from, to, this.meters]);
  }

  async add(count: number): Promise<void> {
    await this.insert(this.pool, 'edge.readings', this.committed, this.committed + count);
    this.committed += count;
  }

  /** Keeps writing `perTick` readings every `everyMs` until stop(). */
  start(perTick: number, everyMs: number): void {
    this.stopping = false;
    this.running = (async () => {
      while (!this.stopping) {
        await this.add(perTick);
        await sleep(everyMs);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.running;
    this.running = null;
  }
}

/** The reading values a side holds (local: pending only, unless `all`). */
export async function values(pool: Pool, side: 'local' | 'remote', all = false): Promise<number[]> {
  const table = side === 'local' ? `edge.readings${all ? '' : ' where not is_synchronized'}` : 'public.readings';
  const { rows } = await pool.query(`select value::bigint as v from ${table}`);
  return rows.map((r) => Number(r.v));
}

/** application_name of an edge process's sessions that name none themselves. */
export const EDGE_APP = 'syncline-test edge';

export interface LogLine { level: number; msg: string; [k: string]: unknown }

export interface EdgeProcess {
  child: ChildProcess;
  logs: LogLine[];
  /** Resolves with the exit code (null when killed by a signal). */
  exited: Promise<number | null>;
  stderr: () => string;
}

/** Starts `syncline edge <args>` against `localUrl`, with JSON logs collected line by line. */
export function spawnEdge(args: string[], env: { localUrl: string; configFile: string; extra?: NodeJS.ProcessEnv }): EdgeProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'edge', ...args], {
    cwd: PROJECT,
    // PGAPPNAME names the sessions that set no application_name of their own.
    env: { ...process.env, DATABASE_URL: env.localUrl, SYNCLINE_CONFIG: env.configFile, SYNCLINE_LOG_LEVEL: 'info',
      SYNCLINE_LOG_FORMAT: 'json', PGAPPNAME: EDGE_APP, ...env.extra },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  let buffered = '';
  let err = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    for (const l of lines) if (l.startsWith('{')) logs.push(JSON.parse(l));
  });
  child.stderr!.on('data', (chunk: Buffer) => { err += chunk.toString(); });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, logs, exited, stderr: () => err };
}

/** Polls `fn` until it returns something truthy; fails naming `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined | false> | T | null | undefined | false,
  timeoutMs = 60_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Waits until no session of a killed edge process is left: the server drops
 * a dead client's session (and its locks) once it notices the socket closed.
 */
export async function waitSessionsGone(admin: Pool, databases: string[]): Promise<void> {
  await waitFor('the killed process\'s sessions to end', async () => {
    const { rows } = await admin.query(
      `select count(*)::int as n from pg_stat_activity where datname = any($1) and application_name like 'syncline%'`, [databases]);
    return rows[0].n === 0;
  });
}
