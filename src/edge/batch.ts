import { performance } from 'node:perf_hooks';
import { pipeline } from 'node:stream/promises';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { quoteIdent as q } from '../db/database.js';
import type { PoolClient } from '../db/pool.js';
import type { PushPlan } from './plan.js';

// The local transaction of a batch. Its text output must parse identically
// on the remote whatever either server's defaults are (the settings a pull's
// source gets). Its commit need not be durable: a batch whose local commit a
// crash loses is pending again and re-sent as a no-op, its counts in
// sync.run lost with it; so no fsync waits on it.
const LOCAL_TXN = `begin; set local datestyle = 'ISO, YMD'; set local intervalstyle = 'postgres';
  set local extra_float_digits = 3; set local bytea_output = 'hex'; set local timezone = 'UTC';
  set local synchronous_commit = off`;
// The remote commit is what lets the batch go locally: it must be durable
// even on a server whose default says otherwise.
const REMOTE_TXN = 'begin; set local synchronous_commit = on';

/** Integers only: they are inlined into multi-statement strings, which cannot take parameters. */
function int(n: number): string {
  if (!Number.isSafeInteger(n)) throw new Error(`not an integer: ${n}`);
  return String(n);
}

/** The SQL of a push batch, built once a run from the plan (every name quoted). */
export function batchSql(p: PushPlan) {
  const ord = p.order.map((c) => q(c.name));
  // The batch's rows by tuple id: a TID scan, where a join with the session
  // table (which has no statistics) plans as a hash join over the whole
  // table. Exact: the pick locked the rows FOR UPDATE, so no one else can
  // move them, and this transaction does not, until it commits.
  const inBatch = `l.ctid = any (array(select _sl_tid from ${p.batchTable}))`;
  const bound = `(${ord.map((c) => `l.${c}`).join(', ')}) > (${p.order.map((c, i) => `($1::jsonb ->> ${i})::${c.type}`).join(', ')})`;
  const pick = (after: boolean) => `with picked as (
      insert into ${p.batchTable} (${ord.join(', ')}, _sl_tid)
      select ${ord.map((c) => `l.${c}`).join(', ')}, l.ctid from ${p.local} l
       where not l.${q(p.settings.syncedColumn)}${after ? ` and ${bound}` : ''}
       order by ${ord.map((c) => `l.${c}`).join(', ')} limit ${int(p.settings.batchSize)}
       for update of l
      returning *)
    select count(*)::int as n, (array_agg(json_build_array(${ord.join(', ')}) order by ${ord.map((c) => `${c} desc`).join(', ')}))[1]::text as last
      from picked`;
  const cols = p.remoteColumns.map(q).join(', ');
  return {
    /** Session-local tables: the picked keys (local), the batch as the remote's types (remote). */
    prepareLocal: `drop table if exists ${p.batchTable};
      create temp table ${p.batchTable} (${p.order.map((c) => `${q(c.name)} ${c.type}`).join(', ')}, _sl_tid tid) on commit delete rows`,
    // Declared from the remote's column types, not selected from its table: a
    // gateway's role needs INSERT on it, and SELECT only on the key ON CONFLICT reads.
    prepareRemote: `drop table if exists ${p.stageTable};
      create temp table ${p.stageTable} (${p.remoteColumns.map((c, i) => `${q(c)} ${p.remoteTypes[i]}`).join(', ')}) on commit delete rows`,
    pickFirst: pick(false),
    pickNext: pick(true),
    copyOut: `copy (select ${p.localColumns.map((c) => `l.${q(c)}`).join(', ')} from ${p.local} l where ${inBatch}
      order by ${ord.map((c) => `l.${c}`).join(', ')}) to stdout`,
    copyIn: `copy ${p.stageTable} (${cols}) from stdin`,
    insertAndCommit: `insert into ${p.remote} (${cols}) select ${cols} from ${p.stageTable}
      on conflict (${p.key.map(q).join(', ')}) do nothing; commit`,
    retire: p.settings.afterPush === 'delete'
      ? `delete from ${p.local} l where ${inBatch}`
      : `update ${p.local} l set ${q(p.settings.syncedColumn)} = true where ${inBatch}`,
    pending: `select count(*)::int as n from ${p.local} where not ${q(p.settings.syncedColumn)}`,
  };
}
export type BatchSql = ReturnType<typeof batchSql>;

export interface BatchOutcome {
  rows: number;
  inserted: number;
  /** Rows deleted or marked locally (the batch's rows: they were locked since the pick). */
  retired: number;
  /** The last row's order key (JSON): the next batch starts after it. */
  last: string | null;
  ms: { pick: number; transfer: number; remote: number; local: number; total: number };
}

/** Rows of a multi-statement result's first statement. */
const firstRowCount = (res: unknown) => (Array.isArray(res) ? res[0].rowCount : (res as { rowCount: number }).rowCount) ?? 0;

/**
 * One batch, exactly once: pick and lock the next pending rows locally, COPY
 * them into the remote's session table, INSERT … ON CONFLICT DO NOTHING and
 * COMMIT there, and only then retire them locally (delete or mark) and count
 * them in sync.run, in the local transaction that picked them.
 *
 * Dying before the remote INSERT; COMMIT is sent leaves nothing on the
 * remote; dying after (the remote may commit it yet) leaves the rows pending
 * locally, as their local transaction never commits, and the next attempt
 * re-sends them as no-ops. Rows inserted meanwhile are not in the batch
 * table, so they are never retired unsent.
 */
export async function pushBatch(local: PoolClient, remote: PoolClient, sql: BatchSql, runId: number, last: string | null): Promise<BatchOutcome> {
  const t0 = performance.now();
  await local.query(LOCAL_TXN);
  const [picked] = await Promise.all([
    last === null ? local.query(sql.pickFirst) : local.query(sql.pickNext, [last]),
    remote.query(REMOTE_TXN),
  ]);
  const rows = picked.rows[0].n as number;
  const t1 = performance.now();
  if (rows === 0) {
    await Promise.all([local.query('rollback'), remote.query('rollback')]);
    return { rows: 0, inserted: 0, retired: 0, last, ms: { pick: t1 - t0, transfer: 0, remote: 0, local: 0, total: t1 - t0 } };
  }
  await pipeline(local.query(copyTo(sql.copyOut)), remote.query(copyFrom(sql.copyIn)));
  const t2 = performance.now();
  const inserted = firstRowCount(await remote.query(sql.insertAndCommit));
  const t3 = performance.now();
  // COMMIT goes on its own: a process that dies before sending it leaves the
  // batch pending locally, whatever the server had still to execute.
  const retired = firstRowCount(await local.query(`${sql.retire}; update sync.run set fetched = coalesce(fetched, 0) + ${int(rows)},
      inserted = coalesce(inserted, 0) + ${int(inserted)}, unchanged = coalesce(unchanged, 0) + ${int(rows - inserted)}
    where id = ${int(runId)}`));
  await local.query('commit');
  const t4 = performance.now();
  return {
    rows, inserted, retired, last: picked.rows[0].last,
    ms: { pick: t1 - t0, transfer: t2 - t1, remote: t3 - t2, local: t4 - t3, total: t4 - t0 },
  };
}
