import { entity as entitySchema, type Config, type EntityConfig } from '../config/schema.js';
import { withSecrets } from '../config/stored.js';
import type { Pool, PoolClient } from '../db/pool.js';
import { log, maskUrls } from '../log.js';
import { SourcePools } from '../sources/postgres/read.js';
import { entitySourceKind, sourceKind } from '../sources/registry.js';
import { targetColumns } from './columns.js';
import { blockingDependency, CancelledError, waitForDependencies } from './guards.js';
import { fullFetchReason, loadByChecksum, recordDiff } from './diff-run.js';
import { loadDirect, loadStaged, type LoadContext, type MergeResult } from './load.js';
import { recordCounts, verifyRun } from './verify.js';
import { reportingProgress } from './progress.js';
import type { EngineContext, RunOptions, RunResult, RunStatus, Trigger } from './types.js';

export type { Trigger, RunStatus, RunOptions, Progress, RunResult, EngineContext } from './types.js';

/** The engine's shared parts: the Syncline database, the config's sources, their pools. */
export class Engine implements EngineContext {
  readonly sources: SourcePools;
  /** `configDir`: where relative file paths in the config (csv sources) start. */
  constructor(readonly pool: Pool, readonly syncUrl: string, public config: Config, readonly configDir = process.cwd()) {
    this.sources = new SourcePools(syncUrl);
  }

  /** The pool and URL of a postgres source; a clear error for anything else. */
  pgSource(name: string): { pool: Pool; url: string } {
    return this.sources.of(this.config.sources, name);
  }

  async close(): Promise<void> {
    await this.sources.close();
  }

  /** The entity as applied to sync.entity (the database is the source of truth for runs). */
  async loadEntity(name: string): Promise<{ def: EntityConfig; cursor: string | null; enabled: boolean; dependsOn: string[]; verify: boolean }> {
    const { rows } = await this.pool.query(
      'select definition, cursor_value, enabled, depends_on, verify from sync.entity where name = $1', [name]);
    if (!rows.length) {
      throw new Error(`unknown entity "${name}" — add it to the config and run \`syncline config apply\``);
    }
    return {
      def: withSecrets(name, entitySchema.parse(rows[0].definition), this.config.entities[name]),
      cursor: rows[0].cursor_value, enabled: rows[0].enabled,
      dependsOn: rows[0].depends_on, verify: rows[0].verify,
    };
  }

  run(name: string, opts: RunOptions): Promise<RunResult> {
    return runEntity(this, name, opts);
  }
}

function classify(err: unknown): string {
  // The http client classifies its own errors (network, rate_limit, auth, validation).
  const category = (err as { category?: string }).category;
  if (category) return category;
  const code = String((err as { code?: string }).code ?? '');
  if (/^(08|57P0)|^E(CONN|TIMEDOUT|NOTFOUND|PIPE|HOSTUNREACH)/.test(code)) return 'network';
  if (code.startsWith('28')) return 'auth';
  if (code.startsWith('22')) return 'validation';
  if (code.startsWith('23')) return 'integrity';
  if (/^[0-9A-Z]{5}$/.test(code)) return 'database';
  return 'internal';
}

function errorMessage(err: unknown): string {
  const e = err as { message?: string; detail?: string; hint?: string; where?: string };
  const parts = [e.message ?? String(err)];
  if (e.detail) parts.push(e.detail);
  if (e.hint) parts.push(`hint: ${e.hint}`);
  return maskUrls(parts.join(' — '));
}

/**
 * One sync run of one entity, the same path for every source kind: lock,
 * plan (with the source), open the run, stage (the source COPYs its records
 * in), cast text staging, merge (one SQL transaction), verify (with what the
 * source can do), record. Never throws for a failed run: the failure is in
 * the result and in sync.run.
 */
export async function runEntity(engine: Engine, name: string, opts: RunOptions): Promise<RunResult> {
  const { pool } = engine;
  opts = { ...opts, onProgress: reportingProgress(pool, opts.onProgress) };
  const target = await pool.connect();
  let targetBroken = false;
  let runId: number | null = null;
  let locked = false;
  try {
    locked = await takeEntityLock(target, name);
    if (!locked) {
      const { rows } = await pool.query(
        `select id from sync.run where entity = $1 and status = 'running' order by id desc limit 1`, [name]);
      return { entity: name, runId: rows[0]?.id ?? null, status: 'already-running' };
    }
    const ent = await engine.loadEntity(name);
    if (ent.def.direction === 'push') {
      // Read as a pull, a push entity would copy the remote table down over unsent local rows.
      return { entity: name, runId: null, status: 'skipped',
        error: 'a push entity runs in the edge cycle (`syncline edge` or the sync_edge task), not as a pull' };
    }
    // A source that cannot read chosen keys (nested records are replaced by parent) re-syncs them with the rest.
    const configured = engine.config.sources[ent.def.source];
    if (opts.keys && configured && !sourceKind(configured.kind)?.readsKeys(ent.def)) opts = { ...opts, keys: undefined };
    if (!opts.dryRun) {
      await waitForDependencies(target, ent.dependsOn);
      const blocker = await blockingDependency(pool, ent.dependsOn);
      if (blocker) {
        const reason = `skipped: ${blocker}`;
        const { rows } = await pool.query(`select sync.record_outcome($1, $2, 'skipped', $3) as id`, [name, opts.trigger, reason]);
        return { entity: name, runId: rows[0].id, status: 'skipped', error: reason };
      }
    }
    if (opts.confirmDeletes && !opts.dryRun) opts = { ...opts, full: await confirmHeld(pool, name) || opts.full };
    const full = Boolean(opts.full);
    const start = async (columns: string[]) => {
      const started = await target.query('select sync.start_run($1, $2, $3, $4, $5, $6) as id',
        [name, opts.trigger, Boolean(opts.dryRun), full, columns, opts.jobId ?? null]);
      runId = started.rows[0].id as number;
      opts.onStart?.(runId);
      if (opts.waveId !== undefined || opts.workerId !== undefined) {
        await target.query('update sync.run set wave_id = $2, worker_id = $3 where id = $1', [runId, opts.waveId ?? null, opts.workerId ?? null]);
      }
      if (opts.window) {
        await target.query(`update sync.run set detail = detail || jsonb_build_object('window', $2::jsonb) where id = $1`,
          [runId, JSON.stringify(opts.window)]);
      }
      return runId;
    };
    const kind = entitySourceKind(engine.config, name, ent.def);
    const plan = await kind.plan({ env: engine, name, def: ent.def, cursor: ent.cursor, opts,
      targetColumns: () => targetColumns(engine, name, ent.def) });
    const ctx: LoadContext = { engine, target, name, runId: await start(plan.targetColumns), def: ent.def, plan, opts };
    // A source that can COPY into a table loads an empty target directly.
    // Rules and version checks run in sync.merge: a direct load would skip them.
    const direct = plan.copyInto && !opts.dryRun && !opts.keys && !ent.def.validate && !ent.def.version
      && (await target.query('select sync.can_load_direct($1) as ok', [name])).rows[0].ok;
    // A source that can checksum its records fetches only what differs, when that is cheaper (diff-run.ts).
    const diffable = plan.checksums && !plan.changesOnly;
    const fullReason = diffable ? await fullFetchReason(ctx) : null;
    if (diffable && fullReason) await recordDiff(target, ctx.runId, name, { path: 'full', reason: fullReason });
    const r: MergeResult = (direct && plan.copyInto ? await loadDirect(ctx, plan.copyInto) : null)
      ?? (diffable && plan.checksums && !fullReason ? await loadByChecksum(ctx, plan.checksums) : null)
      ?? await loadStaged(ctx);
    if (!opts.dryRun && ['succeeded', 'partial'].includes(r.status) && ent.verify) {
      if (plan.keyRange || plan.checksums) {
        // A full snapshot leaves the target equal to the source by construction;
        // an incremental run cannot see what went missing below its cursor.
        const incremental = Boolean(ent.def.cursor) && !full;
        if (incremental && !opts.window) await verifyRun({ target, name, runId: Number(r.run_id), def: ent.def, plan, trigger: opts.trigger });
      } else if ((!ent.def.cursor || full) && !opts.keys && plan.countable) {
        // Without key-range reads, a full read is checked by its counts.
        await recordCounts({ target, name, runId: Number(r.run_id), def: ent.def });
      }
    }
    const id = Number(r.run_id);
    opts.onProgress?.({ entity: name, runId: id, phase: 'done', rows: r.fetched, bytes: 0 });
    return {
      entity: name, runId: id, status: r.status as RunStatus, fetched: r.fetched, inserted: r.inserted as number,
      updated: r.updated as number, deleted: r.deleted as number, unchanged: r.unchanged as number,
      quarantined: r.quarantined as number, deferred: r.deferred as number, cursor: r.cursor as string | null,
      held: (r.held as number | undefined) ?? 0, note: (r.note as string | null | undefined) ?? null,
      sample: (r.sample as RunResult['sample']) ?? undefined,
    };
  } catch (err) {
    targetBroken = true;
    const cancelled = err instanceof CancelledError;
    const message = cancelled ? err.message : errorMessage(err);
    runId = await recordFailure(pool, runId, name, opts.trigger, cancelled ? 'cancelled' : 'failed', message, classify(err));
    if (!cancelled) log.warn({ entity: name, runId, err: message }, 'sync run failed');
    return { entity: name, runId, status: cancelled ? 'cancelled' : 'failed', error: message };
  } finally {
    if (locked && !targetBroken) await target.query('select pg_advisory_unlock(sync.entity_lock_key($1))', [name]).catch(() => {});
    // A failed COPY can leave the connection mid-protocol; dropping it also
    // releases the advisory lock.
    target.release(targetBroken ? true : undefined);
  }
}

// How long a run waits for its entity's lock before reporting that another
// run has it: long enough for the server to notice that a killed process's
// session is gone (it holds the lock until then), short for a real overlap.
const LOCK_WAIT = '3s';

/** The entity's session lock: at once if free, else after up to LOCK_WAIT; false when another run keeps it. */
export async function takeEntityLock(client: PoolClient, name: string): Promise<boolean> {
  const { rows } = await client.query('select pg_try_advisory_lock(sync.entity_lock_key($1)) as ok', [name]);
  if (rows[0].ok) return true;
  try {
    await client.query(`set lock_timeout = '${LOCK_WAIT}'`);
    await client.query('select pg_advisory_lock(sync.entity_lock_key($1))', [name]);
    return true;
  } catch (err) {
    if ((err as { code?: string }).code === '55P03') return false;
    throw err;
  } finally {
    await client.query('reset lock_timeout').catch(() => {});
  }
}

/**
 * Confirms the deletes the entity's latest holding run held, so this run may
 * make them; true when that run read a full snapshot (this one must too).
 */
async function confirmHeld(pool: Pool, name: string): Promise<boolean> {
  const { rows } = await pool.query<{ id: number; full_refresh: boolean }>(
    `select r.id, r.full_refresh from sync.run r
      where r.entity = $1 and r.deletes_confirmed_at is null and exists (select 1 from sync.held_delete h where h.run_id = r.id)
      order by r.id desc limit 1`, [name]);
  if (!rows.length) return false;
  await pool.query('select sync.confirm_deletes($1, $2, false)', [rows[0].id, process.env.USER ?? null]);
  log.info({ entity: name, runId: rows[0].id }, 'held deletes confirmed');
  return rows[0].full_refresh;
}

/** Closes the run as failed or cancelled (opening a row for it if it never started). */
async function recordFailure(
  pool: Pool, runId: number | null, entity: string, trigger: Trigger, status: string, message: string, category: string,
): Promise<number | null> {
  try {
    if (runId === null) {
      const { rows } = await pool.query('select sync.record_outcome($1, $2, $3, $4) as id', [entity, trigger, status, message]);
      runId = rows[0].id as number;
    } else {
      await pool.query('select sync.finish_run($1, $2, $3)', [runId, status, message]);
    }
    if (status === 'failed') {
      await pool.query(
        `insert into sync.run_error (run_id, entity, category, message) values ($1, $2, $3, $4)`,
        [runId, entity, category, message]);
    }
  } catch (err) {
    log.error({ entity, runId, err: errorMessage(err) }, 'could not record the failed run');
  }
  return runId;
}

