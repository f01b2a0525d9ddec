import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { waitGone } from './helpers/gen.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let configFile: string;
let engine: Engine;

// Enough that a run spends a while both fetching (COPY) and merging, so that
// a kill aimed at either phase finds it going on; small enough that eight
// killed runs and their recoveries take well under a minute.
const ROWS = 40_000;

const ENTITIES = { items: { source: 'src', from: { table: 'items' }, target: 'items', key: ['id'] } };

const state = async (db: TestDatabase) => (await db.pool.query(
  `select count(*)::int as n, coalesce(sum(hashtext(id::text || name)), 0)::text as h from items`)).rows[0];

/** Where a kill is aimed: once the run has started, its fetch or its merge is seen going on, then `delayMs` later. */
interface Moment { phase: 'run' | 'fetch' | 'merge'; delayMs: number }

/** What was in flight when the kill was sent. */
type Landed = 'fetch' | 'merge' | 'elsewhere' | 'after the end';

/** The killed child's statement in progress on the Syncline database, on the database's clock; null when it runs none. */
async function inFlight(app: string): Promise<{ phase: 'fetch' | 'merge' | 'other'; runId: number | null; at: Date } | null> {
  const { rows } = await sync.pool.query(
    `select a.query, clock_timestamp() as at, (select max(id) from sync.run where entity = 'items' and status = 'running') as run_id
       from pg_stat_activity a where a.datname = $1 and a.application_name = $2 and a.state = 'active'
      order by a.query ~* '^\\s*copy|sync\\.merge' desc limit 1`, [sync.name, app]);
  if (!rows.length) return null;
  const q: string = rows[0].query;
  // The fetch COPYs into the staging table (or, for a first load, into the target itself); the merge is one function call.
  const phase = /^\s*copy\b[\s\S]*\bfrom stdin/i.test(q) ? 'fetch' : /sync\.merge(_direct)?\(/.test(q) ? 'merge' : 'other';
  return { phase, runId: rows[0].run_id === null ? null : Number(rows[0].run_id), at: rows[0].at };
}

let children = 0;

/**
 * Runs `sync items --full` in a child process and SIGKILLs it at `moment`.
 * Every child names its sessions (PGAPPNAME), so what it runs can be told
 * apart from everything else, and its end is an event: its sessions are gone.
 * Resolves once the child and all its sessions are gone, with where the kill landed.
 */
async function syncKilledAt(moment: Moment): Promise<Landed> {
  const app = `syncline-test kill ${process.pid} ${++children}`;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'sync', 'items', '--full'], {
    env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: configFile, SYNCLINE_LOG_LEVEL: 'silent', PGAPPNAME: app },
    stdio: 'ignore',
  });
  let alive = true;
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => { alive = false; resolve(signal); }));
  // Aim: wait until the phase is going on (or the run has started, for 'run').
  for (;;) {
    if (!alive) break;
    const now = await inFlight(app);
    if (moment.phase === 'run' ? (now?.runId ?? null) !== null : now?.phase === moment.phase) break;
    await sleep(5);
  }
  let at = null;
  if (alive) {
    await sleep(moment.delayMs);
    at = await inFlight(app);
    child.kill('SIGKILL');
  }
  const signal = await exited;
  // A statement the killed process left running (a merge) goes on to its end
  // on the server, holding the entity lock until then.
  await waitGone(sync.pool, app);
  if (signal !== 'SIGKILL') return 'after the end';
  if (!at || at.runId === null || at.phase === 'other') return 'elsewhere';
  const run = (await sync.pool.query(
    `select status, phases ? 'fetch' as fetched, finished_at > $2 as finished_after from sync.run where id = $1`, [at.runId, at.at])).rows[0];
  // The COPY was going on, and the fetch never finished (it records its time when it does).
  if (at.phase === 'fetch' && !run.fetched) return 'fetch';
  // The merge was going on, and it ended after the kill or never (rolled back with the process's transaction).
  if (at.phase === 'merge' && (run.status !== 'succeeded' || run.finished_after)) return 'merge';
  return 'elsewhere';
}

beforeAll(async () => {
  ({ sync, source } = await testDatabases('kill'));
  await source.pool.query(`create table items (id int primary key, name text, payload text);
    insert into items select i, 'v0-' || i, repeat('x', 100) from generate_series(1, ${ROWS}) i`);
  await sync.pool.query('create table items (id int primary key, name text, payload text)');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-kill-'));
  configFile = path.join(dir, 'syncline.config.json');
  writeFileSync(configFile, JSON.stringify({ sources: { src: { kind: 'postgres', url: source.url } }, entities: ENTITIES }));
  engine = await engineFor(sync, source, ENTITIES);
});
afterAll(() => engine?.close());

describe('killing a sync with SIGKILL at any moment', () => {
  it('leaves the target at the state before or after the run, never between, and the next run converges', async () => {
    let version = 0;
    const landed: Landed[] = [];
    const moment = fc.record({ phase: fc.constantFrom<Moment['phase']>('run', 'fetch', 'merge'), delayMs: fc.integer({ min: 0, max: 300 }) });
    await fc.assert(fc.asyncProperty(moment, async (m) => {
      version += 1;
      // Change a third of the rows, delete some, add some: a run has real work.
      await source.pool.query(`update items set name = 'v${version}-' || id where id % 3 = ${version % 3};
        delete from items where id % 97 = ${version % 97}; insert into items select i, 'new', 'y' from generate_series(${ROWS + version * 10}, ${ROWS + version * 10 + 9}) i`);
      const before = await state(sync);
      const after = await state(source);
      landed.push(await syncKilledAt(m));
      expect([before, after]).toContainEqual(await state(sync));
      expect((await sync.pool.query(`select count(*)::int as n from sync.run_change c join sync.run r on r.id = c.run_id
        where r.status = 'running'`)).rows[0].n).toBe(0);
      // The next run closes the killed run as abandoned and converges.
      const r = await engine.run('items', { trigger: 'manual', full: true });
      expect(r.status).toBe('succeeded');
      expect(await state(sync)).toEqual(await state(source));
      expect((await sync.pool.query(`select count(*)::int as n from sync.run where status = 'running'`)).rows[0].n).toBe(0);
    // The first three moments are fixed: kills at the start of each phase,
    // the first in an initial load (COPY straight into the empty target).
    }), { numRuns: 8, examples: [[{ phase: 'fetch', delayMs: 0 }], [{ phase: 'merge', delayMs: 0 }], [{ phase: 'merge', delayMs: 0 }]] });
    // Kills must have landed mid-fetch and mid-merge, or this proved little.
    expect(landed, JSON.stringify(landed)).toContain('fetch');
    expect(landed, JSON.stringify(landed)).toContain('merge');
    const abandoned = await sync.pool.query(`select count(*)::int as n from sync.run where error like 'abandoned%'`);
    expect(abandoned.rows[0].n).toBeGreaterThan(0);
  // About 20 s on an idle machine (eight child processes and their
  // recoveries); a loaded one can take several times that.
  }, 300_000);
});
