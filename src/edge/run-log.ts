import type { Pool, PoolClient } from '../db/pool.js';
import type { Trigger } from '../engine/run.js';
import { log, maskUrls } from '../log.js';

/**
 * A push run in sync.run. sync.start_run derives a staging table from a
 * local target, which a push does not have, so the row is written here: the
 * same columns and statuses as a pull's, counts kept per batch by the batch's
 * own local transaction.
 */
export async function openPushRun(local: PoolClient, entity: string, trigger: Trigger, detail: object): Promise<number> {
  // The caller holds the entity's lock, so a run still marked running died with its process.
  await local.query(`update sync.run set status = 'failed', finished_at = now(),
      error = 'abandoned: the process running it stopped before it finished'
    where entity = $1 and status = 'running'`, [entity]);
  const { rows } = await local.query(
    `insert into sync.run (entity, trigger, status, fetched, inserted, unchanged, detail)
     values ($1, $2, 'running', 0, 0, 0, $3) returning id`, [entity, trigger, JSON.stringify(detail)]);
  return rows[0].id as number;
}

export async function closePushRun(pool: Pool, runId: number, phases: object, detail: object): Promise<void> {
  await pool.query(`update sync.run set status = 'succeeded', finished_at = now(), phases = $2, detail = detail || $3
    where id = $1 and status = 'running'`, [runId, JSON.stringify(phases), JSON.stringify(detail)]);
}

/** What kind of failure an error is, in sync.run_error's categories. */
export function classify(err: unknown): string {
  const code = String((err as { code?: string }).code ?? '');
  if (/^(08|57P0)|^E(CONN|TIMEDOUT|NOTFOUND|PIPE|HOSTUNREACH|AI_AGAIN)/.test(code)) return 'network';
  if (/Connection terminated|connection timeout|not queryable/i.test((err as Error).message ?? '')) return 'network';
  if (code.startsWith('28')) return 'auth';
  if (code.startsWith('22')) return 'validation';
  if (code.startsWith('23')) return 'integrity';
  if (/^[0-9A-Z]{5}$/.test(code)) return 'database';
  return 'internal';
}

export function describeError(err: unknown): string {
  const e = err as { message?: string; detail?: string; hint?: string };
  return maskUrls([e.message ?? String(err), e.detail, e.hint && `hint: ${e.hint}`].filter(Boolean).join(' — '));
}

/** Closes the run as failed (opening a row for it if it never started) with the reason in sync.run_error. */
export async function failPushRun(pool: Pool, runId: number | null, entity: string, trigger: Trigger, err: unknown,
  phases: object = {}): Promise<number | null> {
  const message = describeError(err);
  try {
    if (runId === null) {
      const { rows } = await pool.query(`select sync.record_outcome($1, $2, 'failed', $3) as id`, [entity, trigger, message]);
      runId = rows[0].id as number;
    } else {
      await pool.query(`update sync.run set status = 'failed', finished_at = now(), error = $2, phases = $3
        where id = $1 and status = 'running'`, [runId, message, JSON.stringify(phases)]);
    }
    await pool.query('insert into sync.run_error (run_id, entity, category, message) values ($1, $2, $3, $4)',
      [runId, entity, classify(err), message]);
  } catch (recordErr) {
    log.error({ entity, runId, err: describeError(recordErr) }, 'could not record the failed push run');
  }
  return runId;
}
