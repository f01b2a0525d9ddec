/**
 * What the SIGKILL tests of a run share (kill-checksum, kill-log): a
 * `syncline sync <entity>` child process whose sessions carry a name of
 * their own, a sighting of what it runs on both databases, and aiming a
 * kill at a phase of its run.
 */
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TestDatabase } from './db.js';
import { waitGone } from './gen.js';

/** The name the postgres source gives its sessions (sources/postgres/read.ts). */
export const SOURCE_APP = 'syncline (read-only source)';

/** What the child was seen running: the most telling phase of its statements, its entity's running run, the Syncline database's clock. */
export interface Sighting<P extends string> { phase: P | 'other'; runId: number | null; at: Date }

export interface KillTarget<P extends string> {
  sync: TestDatabase;
  source: TestDatabase;
  configFile: string;
  entity: string;
  /** The phase a statement belongs to (on either database). */
  phaseOf: (query: string) => P | 'other';
  /** The phases, the most telling first (a merge in flight beside a read: the merge). */
  rank: readonly P[];
}

const activeQueries = async (db: TestDatabase, app: string) => (await db.pool.query<{ query: string }>(
  `select query from pg_stat_activity where datname = $1 and application_name = $2 and state = 'active'`, [db.name, app])).rows;

/** The child's statements in progress on the Syncline database or the source; null when it runs none. */
export async function sighting<P extends string>(t: KillTarget<P>, app: string): Promise<Sighting<P> | null> {
  // The source's sessions carry Syncline's own name; only the child reads the source while it is aimed at.
  const queries = [...await activeQueries(t.sync, app), ...await activeQueries(t.source, SOURCE_APP)];
  const { rows: [now] } = await t.sync.pool.query(
    `select clock_timestamp() as at, (select max(id) from sync.run where entity = $1 and status = 'running') as run_id`, [t.entity]);
  if (!queries.length) return null;
  const order = (p: P | 'other') => (p === 'other' ? t.rank.length : t.rank.indexOf(p));
  const phase = queries.map((r) => t.phaseOf(r.query)).sort((a, b) => order(a) - order(b))[0];
  return { phase, runId: now.run_id === null ? null : Number(now.run_id), at: now.at };
}

let children = 0;

/** A `syncline sync <entity>` child whose sessions are named `app`, so what it runs can be told apart. */
export interface SyncChild {
  app: string;
  alive(): boolean;
  kill(): void;
  /** Resolves once the child and its sessions are gone, with the signal that ended it. */
  gone(): Promise<NodeJS.Signals | null>;
}

export function syncChild(t: KillTarget<string>, label: string): SyncChild {
  const app = `syncline-test ${label} ${process.pid} ${++children}`;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'sync', t.entity], {
    env: { ...process.env, DATABASE_URL: t.sync.url, SYNCLINE_CONFIG: t.configFile, SYNCLINE_LOG_LEVEL: 'silent', PGAPPNAME: app },
    stdio: 'ignore',
  });
  let alive = true;
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => { alive = false; resolve(signal); }));
  return {
    app,
    alive: () => alive,
    kill: () => { child.kill('SIGKILL'); },
    async gone() {
      const signal = await exited;
      // A statement the killed process left running (a merge) goes on to its
      // end on the server, holding the entity lock; a session left reading
      // the source (a peek of a slot) would keep it busy for the next run.
      await waitGone(t.sync.pool, app);
      await waitGone(t.sync.pool, SOURCE_APP, t.source.name);
      return signal;
    },
  };
}

/**
 * Watches the child until `phase` is going on (or its run has started, for
 * 'run'), or it has ended; returns the last sighting and the run it saw.
 */
export async function aim<P extends string>(t: KillTarget<P>, child: SyncChild, phase: P | 'run'): Promise<{ seen: Sighting<P> | null; runId: number | null }> {
  let runId: number | null = null;
  let seen: Sighting<P> | null = null;
  while (child.alive()) {
    seen = await sighting(t, child.app);
    runId = seen?.runId ?? runId;
    if (phase === 'run' ? (seen?.runId ?? null) !== null : seen?.phase === phase) break;
    await sleep(2);
  }
  return { seen, runId };
}

/**
 * Kills the child `delayMs` after the sighting; returns what was in flight
 * then. With no delay the kill follows the sighting at once (a second look
 * could fall between two statements of the same phase and tell nothing).
 */
export async function killAfter<P extends string>(t: KillTarget<P>, child: SyncChild, seen: Sighting<P> | null, delayMs: number): Promise<Sighting<P> | null> {
  if (delayMs > 0) await sleep(delayMs);
  const at = delayMs > 0 ? await sighting(t, child.app) : seen;
  child.kill();
  return at;
}
