import { Transform, type Writable, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { to as copyTo, from as copyFrom } from 'pg-copy-streams';
import type { EntityConfig, PostgresSourceConfig, SourceConfig } from '../../config/schema.js';
import { quoteIdent } from '../../db/database.js';
import { connectionHint, makePool, type Pool } from '../../db/pool.js';
import { TEXT_SETTINGS } from '../buckets.js';
import { renderTemplate, SqlTextError, statementProblem } from './sql-text.js';

const lit = (v: string) => pg.escapeLiteral(v);

// Session settings that make the source's text output parse identically on
// the target whatever the source server's defaults are.
const SOURCE_SESSION = TEXT_SETTINGS;

export interface CursorFilter {
  column: string;
  /** Last merged value, text form; null on the first run. */
  value: string | null;
  overlap: string | number | undefined;
  /** Type of the cursor column, as format_type prints it on the target. */
  type: string;
  /** A backfill reads this half-open range of the cursor instead of "past the stored value". */
  window?: { from: string; to: string };
}

/** Connection string of a postgres source: its own URL, or a database beside Syncline's. */
export function sourceUrl(src: PostgresSourceConfig, syncUrl: string): string {
  if (src.url) return src.url;
  const u = new URL(syncUrl);
  u.pathname = `/${encodeURIComponent(src.database!)}`;
  return u.toString();
}

// Every source session starts read-only, so a statement outside our own
// read-only transactions cannot write either; and with standard strings, so
// a backslash in '…' means what the query lexer (sql-text.ts) assumes.
const SOURCE_OPTIONS = '-c default_transaction_read_only=on -c standard_conforming_strings=on';

/**
 * Connection settings of a source session. pg lets an `options` parameter
 * in the URL replace the `options` we pass: it is moved in front of ours,
 * so ours come last and win.
 */
export function sourceConnection(url: string): { connectionString: string; options: string } {
  if (!/[?&]options=/.test(url)) return { connectionString: url, options: SOURCE_OPTIONS };
  const u = new URL(url);
  const own = u.searchParams.get('options');
  u.searchParams.delete('options');
  return { connectionString: u.toString(), options: `${own} ${SOURCE_OPTIONS}` };
}

/** One pool a source, shared by every entity reading from it. */
export class SourcePools {
  private pools = new Map<string, Pool>();
  constructor(private syncUrl: string) {}

  /** The pool and URL of the configured source `name`; a clear error for anything but a postgres source. */
  of(sources: Record<string, SourceConfig>, name: string): { pool: Pool; url: string } {
    const src = sources[name];
    if (!src) throw new Error(`source "${name}" is not defined in the config file — add it under "sources"`);
    if (src.kind !== 'postgres') throw new Error(`source "${name}" is a ${src.kind} source, not postgres`);
    return this.get(name, src);
  }

  get(name: string, src: PostgresSourceConfig): { pool: Pool; url: string } {
    const url = sourceUrl(src, this.syncUrl);
    let pool = this.pools.get(name);
    if (!pool) {
      const { connectionString, options } = sourceConnection(url);
      pool = makePool(connectionString, { max: 4, application_name: 'syncline (read-only source)', options });
      this.pools.set(name, pool);
    }
    return { pool, url };
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.end().catch(() => {})));
    this.pools.clear();
  }
}

/** A table's physical block range: blocks lo up to hi (to the end when hi is null). */
export interface BlockRange {
  lo: number;
  hi: number | null;
}

/** The rows of a block range: PostgreSQL 14+ reads just those blocks (a TID Range Scan). */
function inBlocks(b: BlockRange): string {
  const block = (n: number) => {
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`invalid block number ${n}`);
    return `'(${n},0)'::tid`;
  };
  return `ctid >= ${block(b.lo)}${b.hi === null ? '' : ` and ctid < ${block(b.hi)}`}`;
}

function baseQuery(e: EntityConfig, tenant: string | undefined, cursorLiteral: string, blocks?: BlockRange): string {
  if ('table' in e.from) {
    const t = e.from.table as { schema: string; table: string };
    return `select * from ${quoteIdent(t.schema)}.${quoteIdent(t.table)}${blocks ? ` where ${inBlocks(blocks)}` : ''}`;
  }
  if (blocks) throw new Error('a block range reads a table source, not a query');
  if (!('query' in e.from)) throw new Error('a postgres source reads a table or a query, not a file');
  try {
    return renderTemplate(e.from.query, { tenant: tenant === undefined ? 'null' : lit(tenant), cursor: cursorLiteral });
  } catch (err) {
    if (err instanceof SqlTextError) throw new Error(`from.query ${err.message}`, { cause: err });
    throw err;
  }
}

function cursorBound(c: CursorFilter): string | null {
  if (c.value === null) return null;
  const value = `${lit(c.value)}::${c.type}`;
  if (c.overlap === undefined || c.overlap === 0 || c.overlap === '0') return value;
  return typeof c.overlap === 'number' ? `(${value} - ${c.overlap})` : `(${value} - ${lit(c.overlap)}::interval)`;
}

/**
 * The SELECT run on the source: the table or query template, wrapped so the
 * tenant and cursor filters apply (Postgres pushes them down into the query).
 * Every value reaches SQL as an escaped literal, every name quoted.
 */
export function sourceSelect(
  e: EntityConfig,
  sourceColumns: string[] | '*',
  opts: { tenantSourceColumn?: string; cursor?: CursorFilter & { sourceColumn: string };
    /** Only these keys (a re-sync of chosen records): source key columns and their values as text. */
    keys?: { sourceColumns: string[]; values: string[][] };
    /** Only this block range of a table source (a chunk of a chunked read). */
    blocks?: BlockRange },
): string {
  const window = opts.cursor?.window;
  const bound = opts.cursor && !window ? cursorBound(opts.cursor) : null;
  const base = baseQuery(e, e.tenant?.value, bound ?? 'null', opts.blocks);
  const where: string[] = [];
  if (e.tenant && opts.tenantSourceColumn) where.push(`q.${quoteIdent(opts.tenantSourceColumn)} = ${lit(e.tenant.value)}`);
  if (opts.cursor && bound) where.push(`q.${quoteIdent(opts.cursor.sourceColumn)} > ${bound}`);
  if (opts.cursor && window) {
    const col = `q.${quoteIdent(opts.cursor.sourceColumn)}`;
    where.push(`${col} >= ${lit(window.from)}::${opts.cursor.type} and ${col} < ${lit(window.to)}::${opts.cursor.type}`);
  }
  if (opts.keys) {
    const cols = opts.keys.sourceColumns.map((c) => `q.${quoteIdent(c)}::text`).join(', ');
    const rows = opts.keys.values.map((v) => `(${v.map(lit).join(', ')})`).join(', ');
    where.push(opts.keys.values.length ? `(${cols}) in (values ${rows})` : 'false');
  }
  const list = sourceColumns === '*' ? '*' : sourceColumns.map((c) => `q.${quoteIdent(c)}`).join(', ');
  // The query on lines of its own: a trailing -- comment ends at its newline.
  return `select ${list} from (\n${base}\n) q${where.length ? ` where ${where.join(' and ')}` : ''}`;
}

/**
 * A query over the extended protocol, which PostgreSQL runs only when the
 * text is one statement ("cannot insert multiple commands into a prepared
 * statement" otherwise): a query that hides a second statement fails here.
 */
export const oneStatement = (text: string): pg.QueryConfig => ({ text, values: [], queryMode: 'extended' }) as pg.QueryConfig;

/** One query on a source in a read-only transaction, rolled back so nothing the query sets outlives it. */
export async function querySource<R extends pg.QueryResultRow>(pool: Pool, text: string): Promise<pg.QueryResult<R>> {
  const client = await pool.connect();
  try {
    await client.query('begin transaction read only');
    return await client.query<R>(oneStatement(text));
  } finally {
    await client.query('rollback').catch(() => {});
    client.release();
  }
}

// SQLSTATEs of a lost connection or a server shutting down: not the query's fault.
const CONNECTION_LOST = /^(08|57P0)/;

/**
 * Why PostgreSQL refused the wrapped query, with the line of the user's
 * query it points at; `wrapLines`: the lines of `text` before the query.
 */
function refusal(err: { message?: string; position?: string }, text: string, e: EntityConfig, wrapLines: number): string {
  if (/cannot insert multiple commands/.test(err.message ?? '')) return 'it holds more than one statement (a ";" followed by more SQL)';
  const at = Number(err.position);
  const line = at > 0 ? text.slice(0, at - 1).split('\n').length - wrapLines : 0;
  const inQuery = 'query' in e.from && line >= 1 && line <= e.from.query.split('\n').length;
  return `${err.message ?? String(err)}${inQuery ? ` (line ${line})` : ''}`;
}

/** A failed read of the entity's source as a sentence about its "from"; the SQLSTATE stays for classification. */
function unreadable(err: unknown, e: EntityConfig, text: string, wrapLines: number, name?: string): unknown {
  const pgErr = err as { code?: string; message?: string; position?: string; cause?: unknown };
  if (CONNECTION_LOST.test(pgErr.code ?? '')) return err;
  const who = name === undefined ? '' : `entity "${name}": `;
  if (pgErr.cause instanceof SqlTextError) return new Error(`${who}${pgErr.message}`, { cause: err });
  const [what, fix] = 'query' in e.from ? ['from.query cannot be run', 'fix the SELECT']
    : ['from.table cannot be read', 'check the table name and that the source\'s user may read it'];
  return Object.assign(new Error(`${who}${what}: ${refusal(pgErr, text, e, wrapLines)} — ${fix}`, { cause: err }), { code: pgErr.code });
}

/** Column names the source query yields: it runs with limit 0, as one statement. */
export async function sourceColumns(pool: Pool, url: string, e: EntityConfig, name?: string): Promise<string[]> {
  const client = await pool.connect().catch((err) => { throw connectionHint(err, url, `source "${e.source}"`); });
  let text = '';
  try {
    await client.query('begin transaction isolation level repeatable read, read only');
    text = `${sourceSelect(e, '*', {})} limit 0`;
    const res = await client.query(oneStatement(text));
    if (!res.fields?.length) throw new Error('it yields no columns: select the columns to sync');
    return res.fields.map((f) => f.name);
  } catch (err) {
    // sourceSelect puts the user's query on lines of its own, from line 2.
    throw unreadable(err, e, text, 1, name);
  } finally {
    await client.query('rollback').catch(() => {});
    client.release();
  }
}

/**
 * Whether a table source cannot repeat the key: it has a unique index (no
 * predicate, no expressions) on some of the key's source columns. A query
 * source promises nothing.
 */
export async function sourceKeyIsUnique(pool: Pool, e: EntityConfig, keySourceColumns: string[]): Promise<boolean> {
  if (!('table' in e.from)) return false;
  const t = e.from.table as { schema: string; table: string };
  const { rows } = await pool.query(
    `select exists (
       select 1 from pg_index i
        where i.indrelid = to_regclass(format('%I.%I', $1::text, $2::text))
          and i.indisunique and i.indpred is null and i.indexprs is null
          and (select array_agg(a.attname::text) from pg_attribute a
                where a.attrelid = i.indrelid and a.attnum = any (i.indkey::int2[])) <@ $3::text[]) as ok`,
    [t.schema, t.table, keySourceColumns]);
  return rows[0].ok;
}

/** Counts rows by counting newlines: COPY text format escapes those inside values. */
function rowCounter(onRows: (rows: number, bytes: number) => void): Transform {
  let rows = 0;
  let bytes = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      bytes += chunk.length;
      let i = -1;
      while ((i = chunk.indexOf(10, i + 1)) !== -1) rows++;
      onRows(rows, bytes);
      done(null, chunk);
    },
  });
}

/**
 * Streams the source SELECT into a table with COPY, inside a
 * read-only repeatable-read transaction on the source: memory stays flat and
 * the source is never written to.
 */
export async function copyFromSource(args: {
  pool: Pool;
  url: string;
  entity: EntityConfig;
  select: string;
  target: pg.ClientBase;
  /** The table to COPY into: a run's staging table, or the target itself for a direct load. */
  into: string;
  columns: string[];
  signal: AbortSignal;
  onRows: (rows: number, bytes: number) => void;
  /** Read in this exported snapshot (a replication slot's starting point) instead of a new one. */
  snapshot?: string;
}): Promise<number> {
  // COPY goes over the simple protocol, which runs every statement in the
  // text: it must be one, by our lexer and then by PostgreSQL's parser.
  const problem = statementProblem(args.select);
  if (problem) throw new Error(`the source query ${problem}; nothing was run`);
  const client = await args.pool.connect().catch((err) => { throw connectionHint(err, args.url, `source "${args.entity.source}"`); });
  let broken = false;
  try {
    await beginSnapshot(client, args.snapshot);
    const rows = await copyInSnapshot({ ...args, client });
    // Not commit: a read-only transaction has nothing to keep, and a rollback
    // undoes a session setting the query changed (set_config(…, false)).
    await client.query('rollback');
    return rows;
  } catch (err) {
    broken = true;
    throw err;
  } finally {
    // A COPY cut short leaves the connection mid-protocol: drop it.
    client.release(broken ? true : undefined);
  }
}

/** Opens the read-only repeatable-read transaction a fetch reads in (in `exported`, a snapshot another session exported, when given), with the session settings that make its text output parse the same on the target. */
export async function beginSnapshot(client: pg.ClientBase, exported?: string): Promise<void> {
  await client.query('begin transaction isolation level repeatable read, read only');
  // Before any query of the transaction, or PostgreSQL refuses it.
  if (exported !== undefined) await client.query(`set transaction snapshot ${lit(exported)}`);
  await client.query(SOURCE_SESSION);
}

/**
 * COPY of `select` into a table on the target, on a source client whose
 * snapshot is already open (beginSnapshot): a query the source refuses is
 * reported against the entity's "from" before any row moves. Returns the rows copied.
 */
export async function copyInSnapshot(args: {
  client: pg.ClientBase;
  entity: EntityConfig;
  select: string;
  target: pg.ClientBase;
  into: string;
  columns: string[];
  signal?: AbortSignal;
  onRows?: (rows: number, bytes: number) => void;
}): Promise<number> {
  const problem = statementProblem(args.select);
  if (problem) throw new Error(`the source query ${problem}; nothing was run`);
  const probe = `select * from (\n${args.select}\n) s limit 0`;
  await args.client.query(oneStatement(probe)).catch((err) => { throw unreadable(err, args.entity, probe, 2); });
  let rows = 0;
  const from: Readable = args.client.query(copyTo(`copy (\n${args.select}\n) to stdout`));
  const into: Writable = args.target.query(copyFrom(
    `copy ${args.into} (${args.columns.map(quoteIdent).join(', ')}) from stdin`));
  const counter = rowCounter((r, b) => { rows = r; args.onRows?.(r, b); });
  if (args.signal) await pipeline(from, counter, into, { signal: args.signal });
  else await pipeline(from, counter, into);
  return rows;
}
