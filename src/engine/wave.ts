/**
 * Waves: a set of entities run once each, every one after its dependencies
 * in the wave, then once more for the parents whose deletes waited on a
 * dependent (sync.start_wave, sync.wave_advance decide in SQL). The worker
 * runs a wave's entities as jobs; the CLI and the API run theirs here, one at
 * a time, through the same SQL.
 */
import { topoOrder } from '../config/schema.js';
import type { Pool } from '../db/pool.js';
import type { EngineContext, RunOptions, RunResult, RunStatus } from './types.js';

// How long a wave waits for a run of one of its entities that another
// process started (it joins that run instead of starting a second).
const JOIN_WAIT = '10min';

/** An entity of a wave, as sync.wave_claim (or a worker job) hands it over. */
export interface WaveClaim {
  entity: string;
  trigger: RunOptions['trigger'];
  full: boolean;
  pass: number;
  /** Its dependencies in the wave (all done): a dry run previews against them. */
  after: string[];
}

/**
 * Runs the entities of a wave in this process (the CLI, the API): plans the
 * wave, then claims and runs its ready entities until none is left. Returns
 * one result an entity, in dependency order; an entity run twice (its
 * deferred deletes) carries both runs in `passes`.
 */
export async function runWave(engine: EngineContext, names: string[], opts: RunOptions): Promise<RunResult[]> {
  const { pool } = engine;
  const waveId = await startWave(pool, names, opts);
  const results = new Map<string, RunResult>();
  for (;;) {
    const { rows } = await pool.query<{ entity: string; trigger: RunOptions['trigger']; full_refresh: boolean; pass: number; after: string[] }>(
      'select * from sync.wave_claim($1)', [waveId]);
    if (!rows.length) break;
    const c = rows[0];
    const claim = { entity: c.entity, trigger: c.trigger, full: c.full_refresh, pass: c.pass, after: c.after };
    const r = await runWaveEntity(engine, waveId, claim, opts);
    const first = results.get(c.entity);
    results.set(c.entity, first ? withSecondPass(first, r) : r);
  }
  const { rows: states } = await pool.query<{ entity: string; state: string; run_ids: string[]; note: string | null }>(
    'select entity, state, run_ids::float8[]::text[] as run_ids, note from sync.wave_entity where wave_id = $1', [waveId]);
  // Skipped in SQL (a dependency failed in the wave): the run records why.
  for (const s of states) {
    if (results.has(s.entity)) continue;
    const runId = s.run_ids.length ? Number(s.run_ids[s.run_ids.length - 1]) : null;
    results.set(s.entity, runId ? await resultOf(pool, s.entity, runId)
      : { entity: s.entity, runId, status: 'skipped', error: `skipped: ${s.note ?? 'not run'} in this wave` });
  }
  const graph = await dependencyGraph(pool);
  return topoOrder(graph, [...results.keys()]).map((n) => results.get(n)!);
}

async function startWave(pool: Pool, names: string[], opts: RunOptions): Promise<number> {
  const options = { dryRun: Boolean(opts.dryRun), full: Boolean(opts.full), confirmDeletes: Boolean(opts.confirmDeletes) };
  const { rows } = await pool.query<{ id: string }>(
    'select sync.start_wave($1, $2, $3, $4::jsonb, false) as id', [names, opts.trigger, 'local', JSON.stringify(options)]);
  return Number(rows[0].id);
}

async function dependencyGraph(pool: Pool): Promise<Record<string, string[]>> {
  const { rows } = await pool.query<{ name: string; depends_on: string[] }>('select name, depends_on from sync.entity');
  return Object.fromEntries(rows.map((r) => [r.name, r.depends_on]));
}

/**
 * One entity of a wave: its run (or, when another process is running it
 * already, that run, once it ends), recorded with sync.wave_done so the wave
 * moves on. The worker's sync_entity task calls it for a job of a wave.
 */
export async function runWaveEntity(engine: EngineContext, waveId: number, claim: WaveClaim, opts: RunOptions,
  record = true): Promise<RunResult> {
  const run = await engine.run(claim.entity, {
    ...opts, trigger: claim.trigger, full: opts.full || claim.full, waveId,
    previewedParents: opts.dryRun ? claim.after : undefined,
  });
  let r = run.status === 'already-running' && run.runId ? await joinRun(engine.pool, run) : run;
  // The run joined belonged to a process that died: run the entity now.
  if (r === null) r = await engine.run(claim.entity, { ...opts, trigger: claim.trigger, full: opts.full || claim.full, waveId });
  if (record) await finishInWave(engine.pool, waveId, claim.entity, r);
  return r;
}

/** Marks a worker wave's entity running; false when its pass is over already (a job run twice). */
export async function takeInWave(engine: EngineContext, waveId: number, entity: string, pass: number): Promise<boolean> {
  const { rows } = await engine.pool.query<{ ok: boolean }>('select sync.wave_take($1, $2, $3) as ok', [waveId, entity, pass]);
  return rows[0].ok;
}

/** Records an entity's outcome in its wave (and moves the wave on). */
export async function finishInWave(pool: Pool, waveId: number, entity: string, r: RunResult): Promise<void> {
  await pool.query('select sync.wave_done($1, $2, $3, $4)', [waveId, entity, r.runId, r.status]);
}

/**
 * Waits until a run another process started ends (its entity lock is free),
 * and takes its outcome as this wave's: the entity is not run twice. Null
 * when that run never ended (its process died): it must be run again.
 */
async function joinRun(pool: Pool, running: RunResult): Promise<RunResult | null> {
  const client = await pool.connect();
  try {
    await client.query('begin');
    await client.query(`set local lock_timeout = '${JOIN_WAIT}'`);
    await client.query('select pg_advisory_xact_lock_shared(sync.entity_lock_key($1))', [running.entity]);
    await client.query('commit');
  } catch (err) {
    await client.query('rollback').catch(() => {});
    if ((err as { code?: string }).code !== '55P03') throw err;
    return { ...running, error: `run ${running.runId} of another process still runs after ${JOIN_WAIT}` };
  } finally {
    client.release();
  }
  const { rows } = await pool.query('select status from sync.run where id = $1', [running.runId]);
  if (rows[0]?.status === 'running' || rows[0]?.status === 'abandoned') return null;
  return { ...(await resultOf(pool, running.entity, running.runId!)), joined: true };
}

/** A finished run's result as sync.run recorded it. */
export async function resultOf(pool: Pool, entity: string, runId: number): Promise<RunResult> {
  const { rows } = await pool.query(
    `select status, fetched, inserted, updated, deleted, unchanged, quarantined, deferred, held, error, cursor_after as cursor
       from sync.run where id = $1`, [runId]);
  const r = rows[0] ?? { status: 'failed', error: `run ${runId} is not in sync.run` };
  return {
    entity, runId, status: (r.status === 'running' || r.status === 'abandoned' ? 'failed' : r.status) as RunStatus,
    fetched: r.fetched ?? undefined, inserted: r.inserted ?? undefined, updated: r.updated ?? undefined, deleted: r.deleted ?? undefined,
    unchanged: r.unchanged ?? undefined, quarantined: r.quarantined ?? undefined, deferred: r.deferred ?? undefined,
    held: r.held ?? 0, cursor: r.cursor, error: r.error ?? undefined,
  };
}

/** An entity's second run in a wave (its deferred deletes): the outcome is the second's, the changes both. */
function withSecondPass(first: RunResult, second: RunResult): RunResult {
  const add = (k: 'inserted' | 'updated' | 'deleted') => (first[k] ?? 0) + (second[k] ?? 0);
  return { ...second, inserted: add('inserted'), updated: add('updated'), deleted: add('deleted'), passes: [first, second] };
}
