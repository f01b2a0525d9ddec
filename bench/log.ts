/**
 * The log capture phase ("capture": "log", issue 15), on the bench table:
 *
 * - cost: an entity reading the source table `items` through a replication
 *   slot loads it into its own empty target (the slot's exported snapshot),
 *   then the same change as (c) and (d) (1% updated, 0.1% deleted, 0.1%
 *   inserted; other rows) is applied by one log run;
 * - latency: a writer commits LATENCY_RATE changes a second to the source
 *   (transactions of TX_CHANGES rows, inserts and updates, paced by a clock
 *   with catch-up) while the worker's log loop polls every second; an
 *   observer polls the target and records when each transaction's rows
 *   appear. Latency = seen − the moment the source's COMMIT returned (one
 *   process, one clock).
 */
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { Engine } from '../src/engine/run.js';
import { logPending } from '../src/sources/postgres/log/plan.js';
import { dropSlot, logNames } from '../src/sources/postgres/log/slot.js';
import { startLogLoop } from '../src/worker/log-loop.js';
import type { Timer } from './peers.js';
import { checksum, COLUMNS, generate } from './workload.js';

/** The log entity and its target table (in the Syncline database); its source is the bench's `items`. */
export const LOG_ENTITY = 'items_log';
/** The worker's poll of the slot: the "1 s schedule" the latency target is for. */
const POLL_MS = 1000;
/** Changes a second the writer commits, in transactions of TX_CHANGES (half inserts, half updates). */
const LATENCY_RATE = 1000;
const TX_CHANGES = 20;
const TX_INSERTS = TX_CHANGES / 2;
/** How often the observer looks at the target: the latencies are this coarse. */
const OBSERVE_MS = 20;
/** After the writer stops, how long the loop may take to apply the rest before the phase fails. */
const DRAIN_MS = 120_000;

type Change = { updated: number; deleted: number; inserted: number };

interface RunLike {
  seconds: number;
  fetch_ms: number | null;
  merge_ms: number | null;
  run: { inserted: number; updated: number; deleted: number };
}

/** The same amount of change applied by hand-written SQL from prepared tables: what any capture pays at least. */
export interface ApplyFloor { seconds: number; wal_bytes: number; updated: number; inserted: number; deleted: number; note: string }

export interface LogCost<S extends RunLike> {
  /** The first run: the snapshot the slot exported, into an empty target. */
  snapshot: S;
  /** The change (same shape as (c) and (d)), applied by one log run. */
  changed: S & { change: Change; verified: boolean; changes_read: number | null; keys: number | null; other_ms: number };
  floor: ApplyFloor;
}

export interface LogLatency {
  seconds: number;
  poll_ms: number;
  observe_ms: number;
  transactions: number;
  changes: number;
  /** Changes committed a second, from the first BEGIN to the last COMMIT. */
  changes_per_s: number;
  /** Transactions that started later than their slot on the writer's clock (it fell behind and caught up). */
  late_transactions: number;
  latency_ms: { median: number; p95: number; p99: number; max: number; min: number };
  runs: { count: number; mean_ms: number; max_ms: number; mean_changes: number; mean_fetch_ms: number; mean_merge_ms: number };
  /** How late the bench's own timers ran (the observer's and the writer's clock share the event loop with the runs). */
  event_loop_delay_ms: { p99: number; max: number };
  drained_ms: number;
  verified: boolean;
}

export interface LogPhaseArgs<S extends RunLike> {
  engine: Engine;
  src: pg.Pool;
  sync: pg.Pool;
  rows: number;
  time: Timer;
  syncRun: (entity: string, table: string, rows: number, full: boolean) => Promise<S>;
  /** What autovacuum would do after the initial load (the same settle as after (a)). */
  settle: (table: string) => Promise<void>;
  applyChange: (salt: number) => Promise<Change>;
  /** The next id free in the source table (inserts take ids from it on). */
  nextId: () => number;
  progress: (msg: string) => void;
}

const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

/** Whether the log entity's target holds exactly the source table's rows. */
async function sameAsSource(src: pg.Pool, sync: pg.Pool): Promise<boolean> {
  const [s, t] = await Promise.all([src.query(checksum('items')), sync.query(checksum(LOG_ENTITY))]);
  return s.rows[0].n === t.rows[0].n && s.rows[0].h === t.rows[0].h;
}

/**
 * A worker's quiet poll: the slot (and the applied position) move to the
 * source's current position. The target lives on the same server here, so
 * the WAL of its initial load is in the source's WAL; a running worker
 * would have moved past it within a second of the load.
 */
async function quietPoll(engine: Engine): Promise<boolean> {
  const { def } = await engine.loadEntity(LOG_ENTITY);
  return logPending(engine, LOG_ENTITY, def);
}

export async function logCost<S extends RunLike>(a: LogPhaseArgs<S>): Promise<LogCost<S>> {
  a.progress('log: snapshot of the source table (a new slot\'s exported snapshot) into an empty target');
  const snapshot = await a.syncRun(LOG_ENTITY, LOG_ENTITY, a.rows, false);
  await a.settle(LOG_ENTITY);
  if (await quietPoll(a.engine)) throw new Error('log: the slot has changes before the source was changed: something else writes to items');
  a.progress('log: the same change as (c) and (d) (other rows), applied by one log run');
  const change = await a.applyChange(2);
  const run = await a.syncRun(LOG_ENTITY, LOG_ENTITY, a.rows, false);
  const { rows: [d] } = await a.sync.query(
    `select (detail #>> '{log,changes_read}')::bigint as read from sync.run where entity = $1 order by id desc limit 1`, [LOG_ENTITY]);
  const keys = change.updated + change.deleted + change.inserted;
  a.progress('log: the floor: the same amount of change applied in SQL from prepared tables');
  const floor = await applyFloor(a.sync, a.time, a.rows);
  return {
    snapshot,
    floor,
    changed: {
      ...run, change, verified: await sameAsSource(a.src, a.sync),
      changes_read: d?.read === null || d?.read === undefined ? null : Number(d.read), keys,
      // What is neither the read nor the merge: planning, sync.log_prepare, analyze, confirming the slot.
      other_ms: Math.round(run.seconds * 1000 - (run.fetch_ms ?? 0) - (run.merge_ms ?? 0)),
    },
  };
}

/**
 * The floor of applying the change: 1% of the rows updated, 0.1% inserted,
 * 0.1% deleted, from tables prepared beforehand, in one transaction with
 * index lookups (no read, no diff, no audit), after a CHECKPOINT as every
 * phase. It runs on the target of (a) (and (b)–(d)), which no later phase compares
 * with its source.
 */
export async function applyFloor(sync: pg.Pool, time: Timer, rows: number): Promise<ApplyFloor> {
  const cols = COLUMNS.join(', ');
  await sync.query(`drop table if exists floor_upd, floor_ins, floor_del;
    create unlogged table floor_upd as select ${cols} from items where id % 100 = 11;
    update floor_upd set price = price + 1, qty = qty + 1, attrs = attrs || '{"changed": true}', updated_at = now();
    create unlogged table floor_ins as select ${COLUMNS.map((c) => (c === 'id' ? `id + ${10 * rows} as id` : c)).join(', ')} from items where id <= ${Math.floor(rows / 1000)};
    create unlogged table floor_del as select tenant, id from items where id % 1000 = 7;
    analyze floor_upd, floor_ins, floor_del`);
  const c = await sync.connect();
  try {
    const m = await time(async () => {
      await c.query('begin; set local enable_hashjoin = off; set local enable_mergejoin = off');
      const u = await c.query(`update items t set ${COLUMNS.filter((x) => x !== 'tenant' && x !== 'id').map((x) => `${x} = s.${x}`).join(', ')}
        from floor_upd s where t.tenant = s.tenant and t.id = s.id`);
      const i = await c.query(`insert into items (${cols}) select ${cols} from floor_ins`);
      const d = await c.query('delete from items t using floor_del s where t.tenant = s.tenant and t.id = s.id');
      await c.query('commit');
      return { updated: u.rowCount ?? 0, inserted: i.rowCount ?? 0, deleted: d.rowCount ?? 0 };
    });
    return { seconds: m.seconds, wal_bytes: m.walBytes, ...m.value,
      note: 'the same amount of change applied in SQL from prepared tables, one transaction, index lookups: no read, no diff, no audit' };
  } finally {
    c.release();
    await sync.query('drop table if exists floor_upd, floor_ins, floor_del');
  }
}

/** The value below which a share q of `sorted` lies (nearest rank). */
export function percentile(sorted: number[], q: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

interface Tx { firstId: number; changes: number; committed: number; seen?: number }

/** Keys of n distinct existing source rows: never one a change set deleted (id % 1000 in 3..5). */
function updateKeys(rows: number, n: number): string {
  const keys: string[] = [];
  const taken = new Set<number>();
  while (keys.length < n) {
    const g = 1 + Math.floor(Math.random() * rows);
    const m = g % 1000;
    if ((m >= 3 && m <= 5) || taken.has(g)) continue;
    taken.add(g);
    keys.push(`('t${String(g % 50).padStart(2, '0')}', ${g})`);
  }
  return keys.join(', ');
}

/** One writer transaction: TX_INSERTS new rows and TX_CHANGES − TX_INSERTS updates, one round trip. */
function txSql(table: string, firstId: number, updates: string): string {
  const insert = generate(table, firstId, firstId + TX_INSERTS - 1)
    .replace(`timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'`, 'now()');
  return `begin; ${insert}; update ${table} set qty = qty + 1, updated_at = now() where (tenant, id) in (${updates}); commit`;
}

/** Commits LATENCY_RATE changes a second until `stopAt`, each transaction at its slot on the clock (or at once when behind). */
async function write(client: pg.PoolClient, rows: number, firstId: number, stopAt: number, txs: Tx[]): Promise<{ late: number; started: number; ended: number }> {
  const everyMs = 1000 * TX_CHANGES / LATENCY_RATE;
  const started = performance.now();
  let late = 0;
  for (let k = 0; ; k++) {
    const due = started + k * everyMs;
    if (due >= stopAt) break;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    else if (k > 0 && wait < -everyMs) late++;
    const id = firstId + k * TX_INSERTS;
    const results = await client.query(txSql('items', id, updateKeys(rows, TX_CHANGES - TX_INSERTS))) as unknown as pg.QueryResult[];
    const committed = performance.now();
    const changes = results.reduce((n, r) => n + (r.command === 'INSERT' || r.command === 'UPDATE' ? r.rowCount ?? 0 : 0), 0);
    txs.push({ firstId: id, changes, committed });
  }
  return { late, started, ended: performance.now() };
}

/**
 * Looks at the target every OBSERVE_MS for the first inserted row of each
 * committed transaction not seen yet (one indexed query). A run applies
 * whole transactions, atomically: when one row of a transaction is there,
 * all its changes are. The time taken is when the query was sent: its
 * snapshot is taken then, so a row it finds was applied before.
 */
function observe(sync: pg.Pool, txs: Tx[]): { stop(): Promise<void>; pending(): number } {
  let stopped = false;
  let from = 0;
  const pending = () => txs.slice(from).filter((t) => t.seen === undefined).length;
  const done = (async () => {
    const c = await sync.connect();
    try {
      while (!stopped) {
        const next = performance.now() + OBSERVE_MS;
        const open = txs.slice(from).filter((t) => t.seen === undefined);
        if (open.length) {
          const sent = performance.now();
          const { rows } = await c.query<{ id: number }>(
            `select t.id from unnest($1::int[]) k(id) join ${LOG_ENTITY} t on t.tenant = 't' || lpad((k.id % 50)::text, 2, '0') and t.id = k.id`,
            [open.map((t) => t.firstId)]);
          const found = new Set(rows.map((r) => r.id));
          for (const t of open) if (found.has(t.firstId)) t.seen = sent;
          while (from < txs.length && txs[from].seen !== undefined) from++;
        }
        const wait = next - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
    } finally {
      c.release();
    }
  })();
  return { async stop() { stopped = true; await done; }, pending };
}

export async function logLatency(a: LogPhaseArgs<RunLike>, seconds: number): Promise<LogLatency> {
  a.progress(`log: latency, ${LATENCY_RATE.toLocaleString('en')} changes/s for ${seconds} s, the worker's log loop polling every ${POLL_MS} ms`);
  const txs: Tx[] = [];
  const { rows: [mark] } = await a.sync.query(`select coalesce(max(id), 0) as id from sync.run where entity = $1`, [LOG_ENTITY]);
  const delay = monitorEventLoopDelay({ resolution: 10 });
  const loop = startLogLoop(a.engine, { everyMs: POLL_MS });
  const observer = observe(a.sync, txs);
  const writer = await a.src.connect();
  let written: Awaited<ReturnType<typeof write>>;
  let drainedMs: number;
  try {
    delay.enable();
    written = await write(writer, a.rows, a.nextId(), performance.now() + seconds * 1000, txs);
    const stopped = performance.now();
    while (observer.pending() > 0 && performance.now() - stopped < DRAIN_MS) await new Promise((r) => setTimeout(r, OBSERVE_MS));
    drainedMs = Math.round(performance.now() - stopped);
    delay.disable();
  } finally {
    writer.release();
    await observer.stop();
    await loop.stop();
  }
  const unseen = txs.filter((t) => t.seen === undefined).length;
  if (unseen) a.progress(`log: ${unseen} of ${txs.length} transactions never reached the target within ${DRAIN_MS / 1000} s after the writer stopped`);
  const verified = unseen === 0 && await sameAsSource(a.src, a.sync);

  // One latency a change: each change of a transaction shares its transaction's.
  const perChange = txs.filter((t) => t.seen !== undefined).flatMap((t) => Array<number>(t.changes).fill(t.seen! - t.committed)).sort((x, y) => x - y);
  const changes = txs.reduce((n, t) => n + t.changes, 0);
  const { rows: [runs] } = await a.sync.query(
    `select count(*)::int as n, avg(extract(epoch from finished_at - started_at) * 1000) as mean_ms,
            max(extract(epoch from finished_at - started_at) * 1000) as max_ms, avg(fetched) as changes,
            avg((phases ->> 'fetch')::numeric) as fetch_ms, avg((phases ->> 'merge')::numeric + coalesce((phases ->> 'validate')::numeric, 0)) as merge_ms
       from sync.run where entity = $1 and id > $2 and status in ('succeeded', 'partial')`, [LOG_ENTITY, mark.id]);
  const ms = (x: number) => round(x, 1);
  return {
    seconds,
    poll_ms: POLL_MS,
    observe_ms: OBSERVE_MS,
    transactions: txs.length,
    changes,
    changes_per_s: Math.round(changes / ((written.ended - written.started) / 1000)),
    late_transactions: written.late,
    latency_ms: {
      median: ms(percentile(perChange, 0.5)), p95: ms(percentile(perChange, 0.95)), p99: ms(percentile(perChange, 0.99)),
      max: ms(perChange.at(-1) ?? NaN), min: ms(perChange[0] ?? NaN),
    },
    runs: {
      count: runs.n, mean_ms: Math.round(Number(runs.mean_ms ?? 0)), max_ms: Math.round(Number(runs.max_ms ?? 0)),
      mean_changes: Math.round(Number(runs.changes ?? 0)), mean_fetch_ms: Math.round(Number(runs.fetch_ms ?? 0)),
      mean_merge_ms: Math.round(Number(runs.merge_ms ?? 0)),
    },
    event_loop_delay_ms: { p99: ms(delay.percentile(99) / 1e6), max: ms(delay.max / 1e6) },
    drained_ms: drainedMs,
    verified,
  };
}

/** The slot holds WAL on the source for as long as it exists: gone once the phase is done. */
export async function dropLogSlot(srcUrl: string): Promise<void> {
  await dropSlot(srcUrl, logNames(LOG_ENTITY).slot);
}
