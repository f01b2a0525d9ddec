/**
 * A verification a person asks for (`syncline verify`, sync.verify() through
 * the sync_verify task): the entity's source against its target by key-hash
 * bucket checksums, listing every differing key in sync.verification_key;
 * with `fix`, a re-sync of exactly those keys (a keys run: a mirror deletes
 * the keys the source lacks) and a second comparison.
 *
 * The scope is the entity's: its tenant's rows, and for an entity with a
 * cursor the range the target is meant to hold (its oldest row to the
 * cursor), as the verification after an incremental run compares.
 */
import os from 'node:os';
import type { PoolClient } from '../db/pool.js';
import { entitySourceKind } from '../sources/registry.js';
import { targetColumns } from './columns.js';
import { takeEntityLock } from './run.js';
import type { EngineContext, RunResult } from './types.js';
import { cursorRange } from './verify.js';
import { closeComparison, compareKeys, type KeyComparison } from './verify-keys.js';

export type VerificationStatus = 'equal' | 'differs' | 'fixed' | 'failed';

export interface VerifiedKey {
  key: string[];
  kind: '-' | '+' | '~';
  columns: string[] | null;
}

export interface VerificationResult {
  id: number;
  entity: string;
  status: VerificationStatus;
  keyColumns: string[];
  rowsCompared: number;
  segments: number;
  missing: number;
  extra: number;
  changed: number;
  ms: number;
  /** The cursor range compared, for an entity with a cursor. */
  range?: { column: string; lo: string; hi: string };
  keys: VerifiedKey[];
  columnsNote?: string;
  error?: string;
  /** With fix: the re-sync and the second comparison (a verification of its own). */
  fix?: { run: RunResult; after: VerificationResult };
}

/**
 * Verifies `name` now. `id`: a verification sync.verify() queued (else a
 * new row is opened, requested by the OS user). A failure to compare ends
 * the verification `failed` (detail.error) and is returned, not thrown.
 */
export async function verifyEntity(engine: EngineContext, name: string, opts: { id?: number; fix?: boolean; requestedBy?: string } = {}): Promise<VerificationResult> {
  const id = opts.id ?? await openVerification(engine, name, opts.fix ?? false, opts.requestedBy ?? os.userInfo().username);
  const started = Date.now();
  const result = await compareOnce(engine, name, id);
  result.ms = Date.now() - started;
  const differs = result.missing + result.extra + result.changed > 0;
  if (!opts.fix || !differs || result.status === 'failed') return result;
  // Exactly the keys found (compareKeys leaves out the + keys an upsert or append target keeps):
  // a keys run upserts those the source has and, in a mirror, deletes the rest.
  const keys = result.keys.map((k) => k.key);
  const run = await engine.run(name, { trigger: 'manual', keys });
  const after = await verifyEntity(engine, name, { requestedBy: 'fix', fix: false });
  const healed = after.status === 'equal';
  await engine.pool.query(
    `update sync.verification set status = $2, detail = detail || jsonb_build_object('fix', $3::jsonb) where id = $1`,
    [id, healed ? 'fixed' : 'differs', JSON.stringify({ run_id: run.runId, run_status: run.status, verification_id: after.id })]);
  await engine.pool.query(
    `update sync.verification set detail = detail || jsonb_build_object('after_fix_of', $2::bigint) where id = $1`, [after.id, id]);
  return { ...result, status: healed ? 'fixed' : 'differs', fix: { run, after } };
}

async function openVerification(engine: EngineContext, name: string, fix: boolean, by: string): Promise<number> {
  const { rows } = await engine.pool.query<{ id: string }>(
    'insert into sync.verification (entity, requested_by, fix) values ($1, $2, $3) returning id', [name, by, fix]);
  return Number(rows[0].id);
}

/** One comparison, recorded in verification `id`. */
async function compareOnce(engine: EngineContext, name: string, id: number): Promise<VerificationResult> {
  const base: VerificationResult = {
    id, entity: name, status: 'failed', keyColumns: [], rowsCompared: 0, segments: 0, missing: 0, extra: 0, changed: 0, ms: 0, keys: [],
  };
  const target = await engine.pool.connect();
  let locked = false;
  let broken = false;
  try {
    await target.query(`select sync.start_verification($1, 'checksum')`, [id]);
    const ent = await engine.loadEntity(name);
    base.keyColumns = ent.def.key;
    if (ent.def.direction === 'push') throw new Error(`"${name}" is a push entity: verify compares the target of a pull with its source`);
    const plan = await entitySourceKind(engine.config, name, ent.def).plan({
      env: engine, name, def: ent.def, cursor: ent.cursor, opts: {}, targetColumns: () => targetColumns(engine, name, ent.def) });
    if (!plan.checksums) {
      throw new Error(`the source of "${name}" cannot checksum its records (postgres sources can): `
        + `a full run (\`syncline sync ${name} --full\`) compares it with the target`);
    }
    // A run merging meanwhile would show its own changes as differences.
    locked = await takeEntityLock(target, name);
    if (!locked) throw new Error(`a run of "${name}" is in progress — verify again when it has ended`);
    const found = await cursorRange(target, ent.def, name);
    const range = found && ent.def.cursor ? { column: ent.def.cursor.column, ...found } : null;
    let c: KeyComparison;
    try {
      c = await compareKeys({ target, def: ent.def, checksums: plan.checksums, targetColumns: plan.targetColumns, range, id, prefix: `verify_${id}` });
    } catch (err) {
      broken = true;
      throw err;
    }
    const differs = await closeComparison(target, id, c, range, {
      ...(ent.def.tenant ? { tenant: ent.def.tenant.value } : {}), ...(c.columnsNote ? { columns_note: c.columnsNote } : {}),
    });
    return {
      ...base, status: differs ? 'differs' : 'equal', rowsCompared: c.rowsCompared, segments: c.segments,
      missing: c.missing, extra: c.extra, changed: c.changed, keys: await keysOf(target, id),
      ...(range ? { range: { column: range.column, lo: range.lo, hi: range.hi } } : {}), ...(c.columnsNote ? { columnsNote: c.columnsNote } : {}),
    };
  } catch (err) {
    const message = (err as Error).message ?? String(err);
    await engine.pool.query(`select sync.finish_verification($1, 'failed', jsonb_build_object('error', $2::text))`, [id, message]);
    return { ...base, error: message };
  } finally {
    if (locked && !broken) await target.query('select pg_advisory_unlock(sync.entity_lock_key($1))', [name]).catch(() => {});
    target.release(broken ? true : undefined);
  }
}

async function keysOf(target: PoolClient, id: number): Promise<VerifiedKey[]> {
  const { rows } = await target.query<VerifiedKey>(
    `select key, kind, columns from sync.verification_key where verification_id = $1
      order by case kind when '-' then 1 when '+' then 2 else 3 end, key`, [id]);
  return rows;
}
