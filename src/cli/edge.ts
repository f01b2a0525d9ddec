import { existsSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { applyConfig, formatDiff } from '../config/apply.js';
import { ConfigError, DEFAULT_CONFIG_FILE } from '../config/load.js';
import { connectionHint } from '../db/pool.js';
import { Edge } from '../edge/edge.js';
import { describeConnection, prepareEdgeEnv } from '../edge/env.js';
import { DEFAULT_INTERVAL_S, runLoop } from '../edge/loop.js';
import type { CycleResult } from '../edge/cycle.js';
import { applySqlFile, remoteSource } from '../edge/setup.js';
import { log } from '../log.js';
import { EXIT, openSession, UsageError, type GlobalOptions, type Session } from './context.js';

export interface EdgeOptions extends GlobalOptions {
  interval?: string;
  once?: boolean;
}

function intervalMs(value: string | undefined): number {
  if (value === undefined) return DEFAULT_INTERVAL_S * 1000;
  const s = Number(value);
  // Fractions of a second are for tests and demos; a real edge wants tens of seconds.
  if (!Number.isFinite(s) || s < 0.05) throw new UsageError(`--interval ${value}: give the seconds between cycles, e.g. 60`);
  return Math.round(s * 1000);
}

/** Checks a database the session has not opened yet, with a message naming host, port, database and user. */
async function reachLocal(url: string): Promise<void> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  try {
    await c.connect();
  } catch (err) {
    throw new Error(`${connectionHint(err, url, `the local (edge) database (${describeConnection(url)})`).message} — `
      + 'set DATABASE_URL or POSTGRES_SYNC_HOST/PORT/DB/USER/PASSWORD', { cause: err });
  } finally {
    await c.end().catch(() => {});
  }
}

/** The config's env, the local database checked first, then the session (migrated). */
async function edgeSession(opts: GlobalOptions): Promise<Session> {
  const filled = prepareEdgeEnv(opts.config);
  if (filled.length) log.info({ filled }, `connection URLs built from ${filled.map((f) => (f === 'DATABASE_URL' ? 'POSTGRES_SYNC_*' : 'POSTGRES_CLIENT_*')).join(' and ')}`);
  if (process.env.DATABASE_URL) await reachLocal(process.env.DATABASE_URL);
  try {
    return await openSession(opts);
  } catch (err) {
    if (!(err instanceof ConfigError) || !err.problems.some((p) => p.includes('POSTGRES_CLIENT_URL'))) throw err;
    throw new ConfigError(err.file, err.problems.map((p) => (p.includes('POSTGRES_CLIENT_URL')
      ? `${p}, or set POSTGRES_CLIENT_HOST/PORT/DB/USER/PASSWORD` : p)));
  }
}

/** Start-up check: says where both sides are; a remote that is down is reported, not fatal. */
async function startupCheck(s: Session, edge: Edge): Promise<void> {
  const v = await s.pool.query(`select current_setting('server_version') as v`);
  log.info(`local database: ${describeConnection(s.db.url)} (PostgreSQL ${v.rows[0].v}), sync schema migrated`);
  const sources = new Set(Object.values(s.config.entities).filter((e) => e.enabled).map((e) => e.source));
  for (const name of sources) {
    if (s.config.sources[name]?.kind !== 'postgres') continue;
    const problem = await edge.probe(name);
    if (problem) log.warn(`${problem} — the loop starts anyway and retries with backoff`);
    else log.info(`remote (source "${name}"): ${describeConnection(edge.remote(name).url)} reachable`);
  }
}

function exitFor(r: CycleResult): number {
  if (r.status !== 'done') return EXIT.failed;
  return r.pull.some((p) => p.status === 'partial') ? EXIT.partial : EXIT.ok;
}

/** Aborts on SIGINT/SIGTERM; the listeners stay, so a second signal cannot kill a batch half-way. */
function stopOnSignals(): { signal: AbortSignal; dispose(): void } {
  const ctl = new AbortController();
  const handler = (sig: NodeJS.Signals) => {
    if (ctl.signal.aborted) log.info('still stopping: waiting for the current batch to finish');
    else log.info({ signal: sig }, 'stopping: the current batch finishes, then the edge stops');
    ctl.abort();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return { signal: ctl.signal, dispose: () => { process.off('SIGINT', handler); process.off('SIGTERM', handler); } };
}

/** `edge [--interval s] [--once]`: the sync cycle (push, then pull) on a loop until SIGINT/SIGTERM. */
export async function edge(opts: EdgeOptions): Promise<number> {
  const ms = intervalMs(opts.interval);
  const s = await edgeSession(opts);
  const e = new Edge(s.engine);
  const stop = stopOnSignals();
  try {
    const diffs = await applyConfig(s.pool, s.config);
    if (diffs.length) log.info(`config applied:\n${formatDiff(diffs)}`);
    await startupCheck(s, e);
    if (!opts.once) log.info(`edge loop: a cycle every ${ms / 1000} s; Ctrl-C stops it after the current batch`);
    const last = await runLoop(e, { intervalMs: ms, once: opts.once, signal: stop.signal });
    return opts.once ? exitFor(last) : EXIT.ok;
  } finally {
    stop.dispose();
    await e.close();
    await s.close();
  }
}

export interface EdgeSetupOptions extends GlobalOptions {
  local?: string;
  remote?: string;
  source?: string;
}

function sqlFile(given: string | undefined, configFile: string, name: string, flag: string): string {
  const file = path.resolve(given ?? path.join(path.dirname(configFile), 'sql', name));
  if (!existsSync(file)) throw new UsageError(`${file} does not exist — pass ${flag} <file>`);
  return file;
}

/** `edge setup`: the SQL of both sides, local then remote, each in one transaction; safe to run again. */
export async function edgeSetup(opts: EdgeSetupOptions): Promise<number> {
  const configFile = path.resolve(opts.config ?? process.env.SYNCLINE_CONFIG ?? DEFAULT_CONFIG_FILE);
  const localSql = sqlFile(opts.local, configFile, 'local.sql', '--local');
  const remoteSql = sqlFile(opts.remote, configFile, 'remote.sql', '--remote');
  const s = await edgeSession(opts);
  const e = new Edge(s.engine);
  try {
    const source = remoteSource(s.config, opts.source);
    await applySqlFile(s.pool, localSql);
    process.stdout.write(`✓ local: ${path.relative(process.cwd(), localSql)} applied to ${describeConnection(s.db.url)}\n`);
    const { pool, url } = e.remote(source);
    const problem = await e.probe(source);
    if (problem) throw new Error(problem);
    await applySqlFile(pool, remoteSql);
    process.stdout.write(`✓ remote: ${path.relative(process.cwd(), remoteSql)} applied to ${describeConnection(url)} (source "${source}")\n`);
    return EXIT.ok;
  } finally {
    await e.close();
    await s.close();
  }
}
