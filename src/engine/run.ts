import { entity as entitySchema, type Config, type EntityConfig } from '../config/schema.js';
import type { Pool, PoolClient } from '../db/pool.js';
import { log, maskUrls } from '../log.js';
import { copySourceToStaging, sourceColumns, sourceSelect, SourcePools, type CursorFilter } from '../sources/postgres.js';

export type Trigger = 'cron' | 'manual' | 'backfill' | 'resync' | 'dependency' | 'api';
export type RunStatus = 'succeeded' | 'partial' | 'failed' | 'cancelled' | 'skipped' | 'already-running';

export interface RunOptions {
  trigger: Trigger;
  dryRun?: boolean;
  full?: boolean;
  jobId?: string;
  /** Aborts the fetch (worker shutdown); the run ends cancelled. */
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  /**
   * Dry runs only: entities previewed in the same batch before this one. Their
   * target tables count as filled, so rows referencing them are not
   * quarantined for a missing parent that the real run would have inserted.
   */
  previewedParents?: string[];
}

export interface Progress {
  entity: string;
  runId: number;
  phase: 'fetch' | 'merge' | 'done';
  rows: number;
  bytes: number;
}

export interface RunResult {
  entity: string;
  runId: number | null;
  status: RunStatus;
  fetched?: number;
  inserted?: number;
  updated?: number;
  deleted?: number;
  unchanged?: number;
  quarantined?: number;
  deferred?: number;
  cursor?: string | null;
  sample?: { action: string; key: Record<string, unknown>; changed: string[] | null }[];
  error?: string;
}

// How often a running fetch checks sync.run.cancel_requested.
const CANCEL_POLL_MS = 1000;

export class CancelledError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'CancelledError';
  }
}

/** The engine's shared parts: the Syncline database, the config's sources, their pools. */
export class Engine {
  readonly sources: SourcePools;
  constructor(readonly pool: Pool, readonly syncUrl: string, public config: Config) {
    this.sources = new SourcePools(syncUrl);
  }

  async close(): Promise<void> {
    await this.sources.close();
  }

  /** The entity as applied to sync.entity (the database is the source of truth for runs). */
  async loadEntity(name: string): Promise<{ def: EntityConfig; cursor: string | null; enabled: boolean; dependsOn: string[] }> {
    const { rows } = await this.pool.query(
      'select definition, cursor_value, enabled, depends_on from sync.entity where name = $1', [name]);
    if (!rows.length) {
      throw new Error(`unknown entity "${name}" — add it to the config and run \`syncline config apply\``);
    }
    return { def: entitySchema.parse(rows[0].definition), cursor: rows[0].cursor_value, enabled: rows[0].enabled, dependsOn: rows[0].depends_on };
  }

  run(name: string, opts: RunOptions): Promise<RunResult> {
    return runEntity(this, name, opts);
  }
}

function classify(err: unknown): 'network' | 'auth' | 'validation' | 'integrity' | 'database' | 'internal' {
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

interface Plan {
  targetColumns: string[];
  sourceColumns: string[];
  cursor?: CursorFilter & { sourceColumn: string };
  tenantSourceColumn?: string;
}

/** Which target column is fed by which source column. */
async function planColumns(engine: Engine, name: string, def: EntityConfig, cursor: string | null, full: boolean): Promise<Plan> {
  const src = engine.config.sources[def.source];
  if (!src) {
    throw new Error(`entity "${name}" reads from source "${def.source}", which the config file does not define — add it under "sources"`);
  }
  const target = def.target as { schema: string; table: string };
  const { rows } = await engine.pool.query<{ attname: string; type: string }>(
    `select a.attname, format_type(a.atttypid, a.atttypmod) as type
       from pg_attribute a
      where a.attrelid = to_regclass(format('%I.%I', $1::text, $2::text)) and a.attnum > 0
        and not a.attisdropped and a.attgenerated = ''
      order by a.attnum`, [target.schema, target.table]);
  if (!rows.length) {
    throw new Error(`target table ${target.schema}.${target.table} of entity "${name}" does not exist — create it with your own migration`);
  }
  const types = new Map(rows.map((r) => [r.attname, r.type]));
  let mapping: [string, string][];
  if (Array.isArray(def.columns)) mapping = def.columns.map((c) => [c, c]);
  else if (def.columns) mapping = Object.entries(def.columns);
  else {
    const { pool, url } = engine.sources.get(def.source, src);
    const available = new Set(await sourceColumns(pool, url, def));
    mapping = rows.map((r) => r.attname).filter((c) => available.has(c)).map((c) => [c, c]);
  }
  const plan: Plan = { targetColumns: mapping.map((m) => m[0]), sourceColumns: mapping.map((m) => m[1]) };
  const sourceOf = (col: string) => mapping.find((m) => m[0] === col)?.[1] ?? col;
  if (def.tenant) plan.tenantSourceColumn = sourceOf(def.tenant.column);
  if (def.cursor && !full) {
    const type = types.get(def.cursor.column);
    if (!type) throw new Error(`entity "${name}": cursor column "${def.cursor.column}" is not a column of the target table`);
    plan.cursor = { column: def.cursor.column, sourceColumn: sourceOf(def.cursor.column), value: cursor, overlap: def.cursor.overlap, type };
  }
  if (def.cursor && !plan.targetColumns.includes(def.cursor.column)) {
    throw new Error(`entity "${name}": cursor column "${def.cursor.column}" must be one of the synced columns`);
  }
  return plan;
}

/** Watches sync.run.cancel_requested and the caller's signal; aborts the fetch on either. */
function cancelWatch(pool: Pool, runId: number, signal?: AbortSignal) {
  const ctl = new AbortController();
  let reason = '';
  const abort = (why: string) => { if (!ctl.signal.aborted) { reason = why; ctl.abort(new CancelledError(why)); } };
  const onSignal = () => abort('the worker is shutting down');
  if (signal?.aborted) onSignal();
  signal?.addEventListener('abort', onSignal, { once: true });
  const timer = setInterval(() => {
    pool.query('select cancel_requested from sync.run where id = $1', [runId])
      .then(({ rows }) => { if (rows[0]?.cancel_requested) abort('cancelled on request (sync.cancel)'); })
      .catch(() => {});
  }, CANCEL_POLL_MS);
  return {
    signal: ctl.signal,
    reason: () => reason,
    stop: () => { clearInterval(timer); signal?.removeEventListener('abort', onSignal); },
  };
}

// A dependency's run can take long; past this the dependent gives up (and
// the worker retries it later) rather than holding a worker slot forever.
const DEPENDENCY_WAIT = '10min';

/**
 * Waits while a dependency is being synced (it holds its entity lock), so a
 * scheduled child never reads parents that are half a run behind.
 */
async function waitForDependencies(client: PoolClient, dependsOn: string[]): Promise<void> {
  if (!dependsOn.length) return;
  await client.query('begin');
  try {
    await client.query(`set local lock_timeout = '${DEPENDENCY_WAIT}'`);
    await client.query('select pg_advisory_xact_lock_shared(sync.entity_lock_key(d)) from unnest($1::text[]) d', [dependsOn]);
    await client.query('commit');
  } catch (err) {
    await client.query('rollback').catch(() => {});
    if ((err as { code?: string }).code === '55P03') {
      throw new Error(`a dependency (${dependsOn.join(', ')}) has been running for over ${DEPENDENCY_WAIT}; not starting`, { cause: err });
    }
    throw err;
  }
}

async function blockingDependency(pool: Pool, dependsOn: string[]): Promise<string | null> {
  if (!dependsOn.length) return null;
  const { rows } = await pool.query(
    `select d.name, r.id, r.status
       from unnest($1::text[]) d(name)
       join lateral (select id, status from sync.run where entity = d.name and not dry_run and status <> 'running'
                      order by started_at desc, id desc limit 1) r on true
      where r.status in ('failed', 'cancelled', 'skipped')
      order by d.name limit 1`, [dependsOn]);
  return rows.length ? `dependency "${rows[0].name}" ${rows[0].status} (run ${rows[0].id})` : null;
}

/**
 * One sync run of one entity: lock, stage (COPY from the source), merge (one
 * SQL transaction), record. Never throws for a failed run: the failure is in
 * the result and in sync.run.
 */
export async function runEntity(engine: Engine, name: string, opts: RunOptions): Promise<RunResult> {
  const { pool } = engine;
  const target = await pool.connect();
  let targetBroken = false;
  let runId: number | null = null;
  let locked = false;
  try {
    const lock = await target.query('select pg_try_advisory_lock(sync.entity_lock_key($1)) as ok', [name]);
    locked = lock.rows[0].ok;
    if (!locked) {
      const { rows } = await pool.query(
        `select id from sync.run where entity = $1 and status = 'running' order by id desc limit 1`, [name]);
      return { entity: name, runId: rows[0]?.id ?? null, status: 'already-running' };
    }
    const ent = await engine.loadEntity(name);
    if (!opts.dryRun) {
      await waitForDependencies(target, ent.dependsOn);
      const blocker = await blockingDependency(pool, ent.dependsOn);
      if (blocker) {
        const reason = `skipped: ${blocker}`;
        const { rows } = await pool.query(`select sync.record_outcome($1, $2, 'skipped', $3) as id`, [name, opts.trigger, reason]);
        return { entity: name, runId: rows[0].id, status: 'skipped', error: reason };
      }
    }
    const full = Boolean(opts.full);
    const plan = await planColumns(engine, name, ent.def, ent.cursor, full);
    const started = await target.query('select sync.start_run($1, $2, $3, $4, $5, $6) as id',
      [name, opts.trigger, Boolean(opts.dryRun), full, plan.targetColumns, opts.jobId ?? null]);
    runId = started.rows[0].id as number;
    const id = runId;
    const staging = `sync_staging."run_${id}"`;
    const src = engine.config.sources[ent.def.source];
    const { pool: srcPool, url } = engine.sources.get(ent.def.source, src);
    const select = sourceSelect(ent.def, plan.sourceColumns, { tenantSourceColumn: plan.tenantSourceColumn, cursor: plan.cursor });
    log.debug({ entity: name, runId: id }, 'fetching');

    const watch = cancelWatch(pool, id, opts.signal);
    const fetchStart = Date.now();
    try {
      await copySourceToStaging({
        pool: srcPool, url, entity: ent.def, select, target, staging, columns: plan.targetColumns,
        signal: watch.signal,
        onRows: (rows, bytes) => opts.onProgress?.({ entity: name, runId: id, phase: 'fetch', rows, bytes }),
      });
    } catch (err) {
      if (watch.signal.aborted) throw new CancelledError(watch.reason());
      throw err;
    } finally {
      watch.stop();
    }
    await target.query(`analyze ${staging}`);
    await target.query(`update sync.run set phases = phases || jsonb_build_object('fetch', $2::int) where id = $1`,
      [id, Date.now() - fetchStart]);
    const cancelled = await pool.query('select cancel_requested from sync.run where id = $1', [id]);
    if (cancelled.rows[0].cancel_requested) throw new CancelledError('cancelled on request (sync.cancel)');
    if (opts.dryRun && opts.previewedParents?.length) {
      await target.query(
        `update sync.run set detail = detail || jsonb_build_object('unchecked_parents',
           (select jsonb_agg(to_regclass(format('%I.%I', target_schema, target_table))::oid)
              from sync.entity where name = any($2)))
          where id = $1`, [id, opts.previewedParents]);
    }
    opts.onProgress?.({ entity: name, runId: id, phase: 'merge', rows: 0, bytes: 0 });
    const merged = await target.query('select sync.merge($1) as r', [id]);
    const r = merged.rows[0].r;
    opts.onProgress?.({ entity: name, runId: id, phase: 'done', rows: r.fetched, bytes: 0 });
    return {
      entity: name, runId: id, status: r.status, fetched: r.fetched, inserted: r.inserted, updated: r.updated,
      deleted: r.deleted, unchanged: r.unchanged, quarantined: r.quarantined, deferred: r.deferred,
      cursor: r.cursor, sample: r.sample ?? undefined,
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

