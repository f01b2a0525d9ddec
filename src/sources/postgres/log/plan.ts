/**
 * How a run of a "capture": "log" entity fills its staging table: the first
 * run (or one asked for with --full) loads a snapshot exported by the
 * slot's creation, every later run the changes since the applied position.
 * sync.merge applies both; the slot is confirmed after the merge committed.
 */
import type { EntityConfig } from '../../../config/schema.js';
import { log } from '../../../log.js';
import type { Pool, PoolClient } from '../../../db/pool.js';
import type { PlannedRun, ReadOptions, SourceEnv, StageRun, Staged } from '../../port.js';
import { stagingTable } from '../../staging.js';
import { LogSchemaError, stageChanges, type LogColumn, type LogRead } from './changes.js';
import { confirmSlot, createSlot, ensurePublication, logNames, logProblems, slotState, tableColumns, tableOid, type SlotState } from './slot.js';
import { lsnValue } from './pgoutput.js';

// Messages read at most in one run: a long backlog is applied in several runs, each in whole transactions.
const MAX_CHANGES = 500_000;

export interface LogPlanInput {
  env: SourceEnv;
  name: string;
  def: EntityConfig;
  opts: ReadOptions;
  sourceColumns: string[];
  targetColumns: string[];
  keySourceColumns: string[];
  /** COPY of the entity's whole table (its tenant's) into `into`, reading in the exported snapshot `snapshot`. */
  fetchAll: (run: StageRun, into: string, snapshot?: string) => Promise<number>;
}

/** The source table as the log knows it: its oid, and its columns as the log last described them. */
interface LogRelation { relid: number; columns: LogColumn[] | null }

/** What the Syncline database holds about the entity's log: null before its first snapshot. */
async function appliedState(pool: Pool, name: string): Promise<{ applied: string; relation: LogRelation | null } | null> {
  const { rows } = await pool.query(
    'select applied_lsn::text as applied, relation from sync.log_capture where entity = $1 and applied_lsn is not null', [name]);
  return rows[0] ?? null;
}

/** Records what the source says about the slot (and raises or resolves the slot alerts). */
async function observe(pool: Pool | PoolClient, name: string, slot: SlotState | null, extra: Record<string, unknown> = {}): Promise<void> {
  await pool.query('select sync.log_observe($1, $2)', [name, JSON.stringify({ ...slot, ...extra, wal_status: slot?.wal_status ?? 'missing' })]);
}

const setLog = (target: PoolClient, runId: number, log: Record<string, unknown>) =>
  target.query(`update sync.run set detail = detail || jsonb_build_object('log', $2::jsonb) where id = $1`, [runId, JSON.stringify(log)]);

/** The run's reads: a snapshot, or the changes since the applied position. */
export async function logCapturePlan(input: LogPlanInput): Promise<Partial<Pick<PlannedRun, 'stage' | 'copyInto' | 'checksums' | 'changesOnly'>>> {
  const { env, name, def, opts } = input;
  const { pool } = env.pgSource(def.source);
  const names = logNames(name);
  const problems = await logProblems(pool, def, input.keySourceColumns, input.sourceColumns);
  if (problems.length) throw new Error(`entity "${name}" cannot capture changes from the source's log: ${problems.join('; ')}`);
  const relid = (await tableOid(pool, def))!;
  const state = await appliedState(env.pool, name);
  const found = await slotState(pool, names.slot);
  const slot = state ? movedPast(found, state.applied) : found;
  await observe(env.pool, name, slot);
  if (opts.dryRun && !(state && slot)) {
    // A dry run creates nothing on the source: it reads the table as it is.
    return { stage: async (run) => { await input.fetchAll(run, stagingTable(run.runId)); return {}; }, copyInto: undefined, checksums: undefined };
  }
  if (!opts.full && state && (!slot || slot.wal_status === 'lost' || slot.wal_status === 'moved')) {
    const why = !slot ? 'gone' : slot.wal_status === 'lost' ? 'lost (the source removed WAL it needed)'
      : 'past the position the target holds (created again, or read by another client)';
    throw new Error(`the replication slot ${names.slot} on the source is ${why}: `
      + `the changes since the last run cannot be read. Take a new snapshot: syncline sync ${name} --full`);
  }
  if (opts.full || !state || !slot) {
    const copyInto = (run: StageRun, into: string) => snapshotInto(input, run, into, relid);
    return { copyInto, stage: async (run) => { await copyInto(run, stagingTable(run.runId)); return {}; }, checksums: undefined };
  }
  if (state.relation && state.relation.relid !== relid) {
    // The log names tables by oid: the new table's changes would never be read.
    const message = `${name}: the source table was dropped and created again since the last snapshot, so its log is another table's: `
      + `take a new snapshot: syncline sync ${name} --full`;
    await alert(env.pool, 'log_schema_changed', 'critical', name, message);
    throw new Error(message);
  }
  // The checksums stay for verification (`syncline verify`), not for a diff.
  return { stage: (run) => stageLog(input, run, state, relid), copyInto: undefined, changesOnly: true };
}

/**
 * The slot as the entity sees it: "moved" when it is confirmed past the
 * position the target holds. Syncline moves the applied position first and
 * the slot after it, so a slot ahead was created again under its name (or a
 * --full run that created it was killed before its merge) or read by
 * another client: the changes in between are in no slot, and reading on
 * would lose them without a word.
 */
function movedPast(slot: SlotState | null, applied: string): SlotState | null {
  if (!slot?.confirmed_lsn || lsnValue(slot.confirmed_lsn) <= lsnValue(applied)) return slot;
  return { ...slot, wal_status: 'moved' };
}

/**
 * The snapshot: a new slot exports the snapshot it starts at, and the table
 * is read in it. The replication connection keeps the snapshot alive until
 * the read has imported it.
 */
async function snapshotInto(input: LogPlanInput, run: StageRun, into: string, relid: number): Promise<number> {
  const { env, name, def } = input;
  const { url } = env.pgSource(def.source);
  const names = logNames(name);
  await ensurePublication(url, name, def);
  // Committed at once, outside the run's transaction: should this run die
  // after the new slot exists, the next one must take a snapshot again, not
  // read the new slot as if it went on from the old position.
  await env.pool.query('update sync.log_capture set applied_lsn = null where entity = $1', [name]);
  const exported = await createSlot(url, names.slot);
  // As the catalog says now: a change of them is told from the log's first description.
  const columns = await tableColumns(env.pgSource(def.source).pool, relid);
  let rows: number;
  try {
    rows = await input.fetchAll(run, into, exported.snapshot);
  } finally {
    await exported.close();
  }
  await setLog(run.target, run.runId, {
    snapshot: true, slot: names.slot, publication: names.publication, to: exported.lsn, source_lsn: exported.lsn,
    caught_up: true, read_at: new Date().toISOString(), relation: { relid, columns },
  });
  return rows;
}

/** The changes since the applied position, staged; merged by sync.merge after sync.log_prepare. */
async function stageLog(input: LogPlanInput, run: StageRun, state: { applied: string; relation: LogRelation | null }, relid: number): Promise<Staged> {
  const { env, name, def } = input;
  const { pool } = env.pgSource(def.source);
  const names = logNames(name);
  const into = stagingTable(run.runId);
  await run.target.query(`alter table ${into} add column _sl_deleted boolean not null default false,
    add column _sl_seq bigint, add column _sl_unchanged text[]`);
  let read: LogRead;
  try {
    read = await run.fetchPhase((signal) => stageChanges({
      pool, slot: names.slot, publication: names.publication, relid, def, sourceColumns: input.sourceColumns, targetColumns: input.targetColumns,
      applied: state.applied, target: run.target, into, maxChanges: MAX_CHANGES, signal,
      onRows: (rows) => run.opts.onProgress?.({ entity: name, runId: run.runId, phase: 'fetch', rows, bytes: 0 }),
    }));
  } catch (err) {
    if (err instanceof LogSchemaError) {
      await alert(run.target, 'log_schema_changed', 'critical', name, `${name}: ${err.message}: its changes cannot be applied. `
        + `Change the entity's columns (or the table back), apply the config, then take a new snapshot: syncline sync ${name} --full`);
    }
    throw err;
  }
  await reportSchemaChange(run.target, name, state.relation?.columns ?? null, read.columns);
  if (read.truncatedSeq !== null) {
    await alert(run.target, 'log_truncate', 'warning', name, `${name}: the source table was truncated; `
      + (def.mode === 'upsert' || def.mode === 'append' ? `in mode ${def.mode} the target keeps its rows`
        : 'the run applies it as a snapshot: the target keeps only the rows written after it (the delete guard may hold the deletes)'));
  }
  await setLog(run.target, run.runId, {
    changes: read.truncatedSeq === null, slot: names.slot, publication: names.publication, from: state.applied, to: read.to,
    source_lsn: read.sourceLsn, commit_at: read.commitAt, caught_up: read.caughtUp, read_at: read.readAt, changes_read: read.rows,
    truncated_seq: read.truncatedSeq, relation: { relid, columns: read.columns ?? state.relation?.columns ?? null },
  });
  return {
    beforeMerge: async () => { await run.target.query('select sync.log_prepare($1)', [run.runId]); },
    afterMerge: async () => { if (!run.opts.dryRun) await confirmAfterMerge(pool, name, names.slot, read.to); },
  };
}

/**
 * Confirms the slot once the merge committed. A confirmation that fails (the
 * source went away) loses nothing: the next run reads those changes again
 * and skips them, so the committed run stays a success.
 */
async function confirmAfterMerge(pool: Pool, name: string, slot: string, lsn: string): Promise<void> {
  await confirmSlot(pool, slot, lsn).catch((err) => {
    log.warn({ entity: name, slot, lsn, err: (err as Error).message }, 'could not confirm the slot; the next run skips what this one applied');
  });
}

async function alert(target: Pool | PoolClient, kind: string, severity: string, entity: string, message: string): Promise<void> {
  await target.query('select sync.raise_alert($1, $2, $3, $4)', [kind, severity, entity, message]);
}

/** Columns added, dropped or retyped on the source since the log last described the table: worth a look, not a stop. */
async function reportSchemaChange(target: PoolClient, name: string, before: LogColumn[] | null, after: LogColumn[] | null): Promise<void> {
  if (!after || !before) return;
  const was = new Map(before.map((c) => [c.name, c.typeOid]));
  const now = new Map(after.map((c) => [c.name, c.typeOid]));
  const changes = [
    ...[...now.keys()].filter((c) => !was.has(c)).map((c) => `${c} added`),
    ...[...was.keys()].filter((c) => !now.has(c)).map((c) => `${c} dropped`),
    ...[...now].filter(([c, t]) => was.has(c) && was.get(c) !== t).map(([c]) => `${c} changed type`),
  ];
  if (changes.length) {
    await alert(target, 'log_schema_changed', 'warning', name,
      `${name}: the source table's columns changed (${changes.join(', ')}); the synced columns go on. Map new columns in the config if you want them`);
  }
}

/**
 * Whether a run would find changes, without starting one: the slot is
 * peeked for one change before the source's current position. With none,
 * the applied position (and the slot) move to that position, so the slot
 * never holds WAL the entity does not need, and the entity counts as caught up.
 * Run under the entity's lock.
 */
export async function logPending(env: SourceEnv, name: string, def: EntityConfig, opts: { watchOnly?: boolean } = {}): Promise<boolean> {
  const { pool } = env.pgSource(def.source);
  const names = logNames(name);
  const state = await appliedState(env.pool, name);
  if (!state) return !opts.watchOnly;
  const slot = movedPast(await slotState(pool, names.slot), state.applied);
  if (!slot || slot.wal_status === 'lost' || slot.wal_status === 'moved' || opts.watchOnly) {
    // The alert says what to do; running every second would only fail every second.
    await observe(env.pool, name, slot);
    return false;
  }
  // Held by a run's session that is going (or gone): look again next time.
  if (slot.active) return false;
  const { rows: [peek] } = await pool.query(
    `select count(*)::int as n from pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, 1, 'proto_version', '1', 'publication_names', $3)`,
    [names.slot, slot.source_lsn, names.publication]);
  if (peek.n > 0) {
    await observe(env.pool, name, slot);
    return true;
  }
  await observe(env.pool, name, slot, { applied_lsn: slot.source_lsn, caught_up_at: new Date().toISOString() });
  await confirmSlot(pool, names.slot, slot.source_lsn);
  return false;
}
