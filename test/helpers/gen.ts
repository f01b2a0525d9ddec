/**
 * Generators and observers for the property tests: random rows with awkward
 * values, random (source, prior target) pairs over composite keys, exact
 * snapshots of tables, and write counters that do not depend on timing.
 */
import fc from 'fast-check';
import pg from 'pg';
import { inject } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { quoteIdent } from '../../src/db/database.js';
import { makePool, type Pool } from '../../src/db/pool.js';
import { Engine } from '../../src/engine/run.js';
import type { TestDatabase } from './db.js';

export const q = quoteIdent;
export const lit = (v: string) => pg.escapeLiteral(v);
export const rel = (schema: string, table: string) => `${q(schema)}.${q(table)}`;

/** Columns of the standard `items` table used by most properties. */
export const ITEM_VALUE_COLUMNS = ['name', 'qty', 'price', 'at', 'data', 'flag'] as const;
export type ItemValues = { name: string | null; qty: number | null; price: string | null; at: string | null; data: unknown; flag: boolean | null };
export type Item = { tenant: string; id: number } & ItemValues;

export function itemsDdl(table = 'items'): string {
  return `create table ${q(table)} (tenant text not null, id int not null, name text, qty int, price numeric(12,2),
    at timestamptz, data jsonb, flag boolean, primary key (tenant, id))`;
}

// Characters that break naive quoting or COPY's text format.
const awkwardChar = fc.constantFrom('a', 'Z', '0', ' ', "'", '"', '\\', '\n', '\t', '\r', ';', '-', '%', ',', '{', '}',
  '(', ')', 'é', 'ß', '中', '😀', '\u200b', 'N');
export const awkwardText = fc.oneof(
  fc.constant(''),
  fc.constantFrom('\\N', 'NULL', 'null', "'; drop table canary; --", '"quoted"', ' '),
  fc.string({ unit: awkwardChar, maxLength: 12 }),
);

// Whole microseconds between 1970 and 2100, as an ISO string with 6 decimals.
export const timestamp = fc.bigInt({ min: 0n, max: 4_102_444_800_000_000n }).map((us) => {
  const ms = Number(us / 1000n);
  const iso = new Date(ms).toISOString();
  return `${iso.slice(0, 23)}${String(us % 1000n).padStart(3, '0')}Z`;
});

const json = fc.jsonValue({ maxDepth: 2 }).filter((v) => v !== null && !JSON.stringify(v).includes('\\u0000'));

export const itemValues: fc.Arbitrary<ItemValues> = fc.record({
  name: fc.option(awkwardText, { freq: 4 }),
  qty: fc.option(fc.integer({ min: -2_147_483_648, max: 2_147_483_647 }), { freq: 4 }),
  price: fc.option(fc.integer({ min: -99_999_999_999, max: 99_999_999_999 }).map((c) => (c / 100).toFixed(2)), { freq: 4 }),
  at: fc.option(timestamp, { freq: 4 }),
  data: fc.option(json, { freq: 4 }),
  flag: fc.option(fc.boolean(), { freq: 4 }),
});

/** How one key appears on both sides. */
export type Presence = 'same' | 'differs' | 'one-column' | 'source-only' | 'target-only';

export interface Scenario {
  source: Item[];
  target: Item[];
}

/**
 * A random pair (source rows, prior target rows) over keys (tenant, id): each
 * key is in both with the same values, in both with different values (all or
 * one column), or on one side only.
 */
export function scenario(tenants: string[], opts: { maxKeys?: number; maxId?: number } = {}): fc.Arbitrary<Scenario> {
  const entry = fc.record({
    tenant: fc.constantFrom(...tenants),
    id: fc.integer({ min: -3, max: opts.maxId ?? 40 }),
    a: itemValues,
    b: itemValues,
    col: fc.constantFrom(...ITEM_VALUE_COLUMNS),
    presence: fc.constantFrom<Presence>('same', 'differs', 'one-column', 'source-only', 'target-only'),
  });
  return fc.uniqueArray(entry, { selector: (e) => `${e.tenant}\u0000${e.id}`, maxLength: opts.maxKeys ?? 25 }).map((entries) => {
    const source: Item[] = [];
    const target: Item[] = [];
    for (const e of entries) {
      const key = { tenant: e.tenant, id: e.id };
      if (e.presence !== 'target-only') source.push({ ...key, ...e.a });
      if (e.presence === 'same') target.push({ ...key, ...e.a });
      if (e.presence === 'differs' || e.presence === 'target-only') target.push({ ...key, ...e.b });
      if (e.presence === 'one-column') target.push({ ...key, ...e.a, [e.col]: e.b[e.col] });
    }
    return { source, target };
  });
}

/** Inserts rows given as JSON objects (column names as keys) into a table. */
export async function load(db: pg.Pool | pg.ClientBase, table: string, rows: object[]): Promise<void> {
  if (!rows.length) return;
  await db.query(`insert into ${table} select * from jsonb_populate_recordset(null::${table}, $1::jsonb)`,
    [JSON.stringify(rows)]);
}

export interface RowState {
  /** Each column's value in text form (null for SQL null). */
  cols: Record<string, string | null>;
  /** The tuple's identity: it changes whenever the row is written, even with identical values. */
  version: string;
}

/** Every row of a table keyed by its key columns (JSON of their text forms), with text values and tuple identity. */
export async function snapshot(db: pg.Pool | pg.ClientBase, table: string, key: string[]): Promise<Map<string, RowState>> {
  const { rows: cols } = await db.query<{ attname: string }>(
    `select attname from pg_attribute where attrelid = $1::regclass and attnum > 0 and not attisdropped order by attnum`, [table]);
  const names = cols.map((c) => c.attname);
  const { rows } = await db.query<{ k: (string | null)[]; v: (string | null)[]; version: string }>(
    `select array[${key.map((k) => `t.${q(k)}::text`).join(', ')}]::text[] as k,
            array[${names.map((c) => `t.${q(c)}::text`).join(', ')}]::text[] as v,
            xmin::text || '@' || ctid::text as version
       from ${table} t`);
  const out = new Map<string, RowState>();
  for (const r of rows) {
    out.set(keyOf(r.k), { cols: Object.fromEntries(names.map((n, i) => [n, r.v[i]])), version: r.version });
  }
  return out;
}

export function keyOf(values: unknown[]): string {
  return JSON.stringify(values.map((v) => (v === null ? null : String(v))));
}

/** Values only (no tuple identity), for equality of contents. */
export function contents(snap: Map<string, RowState>, filter: (cols: Record<string, string | null>) => boolean = () => true):
  Record<string, Record<string, string | null>> {
  return Object.fromEntries([...snap].filter(([, r]) => filter(r.cols)).map(([k, r]) => [k, r.cols]).sort(([a], [b]) => (a < b ? -1 : 1)));
}

export interface Diff {
  inserted: string[];
  deleted: string[];
  updated: Map<string, string[]>;
}

/** What changed between two snapshots, computed here, independently of the engine. */
export function diff(before: Map<string, RowState>, after: Map<string, RowState>): Diff {
  const d: Diff = { inserted: [], deleted: [], updated: new Map() };
  for (const [k, a] of after) {
    const b = before.get(k);
    if (!b) d.inserted.push(k);
    else {
      const changed = Object.keys(a.cols).filter((c) => a.cols[c] !== b.cols[c]);
      if (changed.length) d.updated.set(k, changed.sort());
    }
  }
  for (const k of before.keys()) if (!after.has(k)) d.deleted.push(k);
  d.inserted.sort();
  d.deleted.sort();
  return d;
}

/** The rows sync.run_change holds for a run, in the shape of a Diff. */
export async function runChanges(pool: Pool, runId: number | null, key: string[]): Promise<Diff> {
  // run_change.key holds the key columns' values as text, in key order.
  const { rows } = await pool.query<{ action: string; key: string[]; changed: string[] | null }>(
    'select action, key, changed from sync.run_change where run_id = $1', [runId]);
  const d: Diff = { inserted: [], deleted: [], updated: new Map() };
  for (const r of rows) {
    if (r.key.length !== key.length) throw new Error(`run_change key ${JSON.stringify(r.key)} does not have ${key.length} values`);
    const k = keyOf(r.key);
    if (r.action === 'insert') d.inserted.push(k);
    if (r.action === 'delete') d.deleted.push(k);
    if (r.action === 'update') {
      if (d.updated.has(k)) throw new Error(`two update rows for key ${k} in run ${runId}`);
      d.updated.set(k, [...(r.changed ?? [])].sort());
    }
  }
  d.inserted.sort();
  d.deleted.sort();
  return d;
}

export function applicationName(label: string): string {
  return `syncline-test ${label} ${process.pid} ${Math.random().toString(36).slice(2, 8)}`;
}

// How long backends may take to exit: a killed client's statement runs to
// its end first, which takes a while on a loaded machine. Far beyond that,
// only so that a backend that never exits fails the test with its name.
const BACKENDS_EXIT_MS = 90_000;

/** Waits until no backend with this application_name is left (its statistics are flushed when it exits). */
export async function waitGone(observer: Pool, app: string, database?: string): Promise<void> {
  const deadline = Date.now() + BACKENDS_EXIT_MS;
  for (;;) {
    const { rows } = await observer.query(`select count(*)::int as n from pg_stat_activity
      where application_name = $1 and ($2::text is null or datname = $2)`, [app, database ?? null]);
    if (rows[0].n === 0) return;
    if (Date.now() > deadline) throw new Error(`backends named "${app}" did not exit within ${BACKENDS_EXIT_MS / 1000} s`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Runs `fn` with a pool of its own and ends it, waiting until its backends
 * have exited. Cumulative statistics (pg_stat_user_tables) are flushed by a
 * backend at the latest when it exits, so counters read afterwards include
 * everything `fn` wrote: no sleeps, no dependence on the 1 s flush interval.
 */
export async function withOwnPool<T>(db: TestDatabase, fn: (pool: Pool) => Promise<T>): Promise<T> {
  const app = applicationName('writer');
  const pool = makePool(db.url, { max: 4, application_name: app });
  try {
    return await fn(pool);
  } finally {
    await pool.end();
    await waitGone(db.pool, app);
  }
}

/**
 * An engine whose connections (to the Syncline database and to the source)
 * all end when `fn` returns, so their statistics are flushed. The config must
 * already be applied (engineFor).
 */
export async function withFlushedEngine<T>(sync: TestDatabase, source: TestDatabase, entities: Record<string, unknown>,
  fn: (engine: Engine) => Promise<T>): Promise<T> {
  const cfg = parseConfig({ sources: { src: { kind: 'postgres', url: source.url } }, entities }, {});
  return withOwnPool(sync, async (pool) => {
    const engine = new Engine(pool, sync.url, cfg);
    try {
      return await fn(engine);
    } finally {
      await engine.close();
      // Only engines made here may read this source meanwhile.
      await waitGone(sync.pool, 'syncline (read-only source)', source.name);
    }
  });
}

/** Tuples inserted + updated + deleted in a table, as the cumulative statistics count them. */
export async function tuplesWritten(pool: Pool, table: string): Promise<number> {
  const c = await pool.connect();
  try {
    await c.query('select pg_stat_clear_snapshot()');
    const { rows } = await c.query(
      `select (n_tup_ins + n_tup_upd + n_tup_del)::int8 as n from pg_stat_user_tables where relid = $1::regclass`, [table]);
    return Number(rows[0].n);
  } finally {
    c.release();
  }
}

/** An order-independent digest of a table's contents. */
export async function checksum(db: pg.Pool | pg.ClientBase, table: string): Promise<string> {
  const { rows } = await db.query(`select count(*)::int as n, md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) as h from ${table} t`);
  return `${rows[0].n}:${rows[0].h}`;
}

/** Admin connection URL of the test server. */
export function adminUrl(): string {
  return inject('adminUrl');
}
