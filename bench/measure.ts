import { performance } from 'node:perf_hooks';
import v8 from 'node:v8';
import vm from 'node:vm';
import type pg from 'pg';

export const MB = 1024 * 1024;

// A full GC before each phase, so a phase's peak RSS is not the garbage an
// earlier phase left behind.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Highest process.memoryUsage().rss seen, sampled every 50 ms while running. */
export class RssSampler {
  private timer: NodeJS.Timeout | undefined;
  private peak = 0;

  start(initial = process.memoryUsage().rss): void {
    this.peak = initial;
    this.timer = setInterval(() => this.sample(), 50);
  }

  private sample(): void {
    const rss = process.memoryUsage().rss;
    if (rss > this.peak) this.peak = rss;
  }

  stop(): number {
    this.sample();
    clearInterval(this.timer);
    return this.peak;
  }
}

export interface Measured<T> {
  value: T;
  seconds: number;
  peakRssBytes: number;
  /** RSS when the phase started (after a full GC). */
  startRssBytes: number;
  walBytes: number;
}

/** Runs `fn`, timing it, sampling RSS and measuring the WAL the whole server wrote meanwhile. */
export async function measure<T>(admin: pg.Pool, fn: () => Promise<T>): Promise<Measured<T>> {
  const lsn = (await admin.query<{ lsn: string }>('select pg_current_wal_lsn()::text as lsn')).rows[0].lsn;
  gc();
  const startRssBytes = process.memoryUsage().rss;
  const rss = new RssSampler();
  rss.start(startRssBytes);
  const t0 = performance.now();
  let value: T;
  let seconds = 0;
  let peakRssBytes = 0;
  try {
    value = await fn();
  } finally {
    seconds = (performance.now() - t0) / 1000;
    peakRssBytes = rss.stop();
  }
  const wal = await admin.query<{ bytes: string }>(
    'select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint::text as bytes', [lsn]);
  return { value, seconds, peakRssBytes, startRssBytes, walBytes: Number(wal.rows[0].bytes) };
}

export interface TupleStats {
  ins: number;
  upd: number;
  del: number;
  hot: number;
}

/**
 * Makes every backend of `pools` flush its pending table statistics now
 * (they otherwise flush at most once a second), so pg_stat_user_tables is
 * current when read.
 */
export async function flushStats(pools: pg.Pool[]): Promise<void> {
  for (const pool of pools) {
    const n = pool.totalCount;
    const clients = await Promise.all(Array.from({ length: n }, () => pool.connect()));
    try {
      for (const c of clients) {
        await c.query('select pg_stat_force_next_flush()');
        await c.query('select 1'); // the flush happens when a transaction ends
      }
    } finally {
      for (const c of clients) c.release();
    }
  }
}

/** Cumulative tuple counters of a table, read with a fresh statistics snapshot. */
export async function tupleStats(reader: pg.Pool, table: string): Promise<TupleStats> {
  const c = await reader.connect();
  try {
    await c.query('select pg_stat_clear_snapshot()');
    const { rows } = await c.query(
      `select n_tup_ins::bigint as ins, n_tup_upd::bigint as upd, n_tup_del::bigint as del, n_tup_hot_upd::bigint as hot
         from pg_stat_user_tables where relid = $1::regclass`, [table]);
    const r = rows[0] ?? { ins: 0, upd: 0, del: 0, hot: 0 };
    return { ins: Number(r.ins), upd: Number(r.upd), del: Number(r.del), hot: Number(r.hot) };
  } finally {
    c.release();
  }
}

export function diffStats(a: TupleStats, b: TupleStats): TupleStats {
  return { ins: b.ins - a.ins, upd: b.upd - a.upd, del: b.del - a.del, hot: b.hot - a.hot };
}

/** Waits (up to `ms`) until no autovacuum worker runs, so it does not write WAL into the next measurement. */
export async function autovacuumIdle(admin: pg.Pool, ms = 30_000): Promise<boolean> {
  const until = Date.now() + ms;
  for (;;) {
    const { rows } = await admin.query(
      `select count(*)::int as n from pg_stat_activity where backend_type = 'autovacuum worker' and state is distinct from 'idle'`);
    if (rows[0].n === 0) return true;
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 200));
  }
}
