import pg from 'pg';
import { log, maskUrls } from '../log.js';

// COPY hands bigint and numeric through as text; the merge results we read
// are jsonb. Parse int8 counts as numbers: they stay far below 2^53.
pg.types.setTypeParser(20, (v) => Number(v));

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

/** A pool whose idle-client errors are logged instead of crashing the process. */
export function makePool(connectionString: string, opts: pg.PoolConfig = {}): pg.Pool {
  const pool = new pg.Pool({ connectionString, max: 10, ...opts });
  pool.on('error', (err) => log.warn({ err: maskUrls(String(err)) }, 'idle database connection failed; it will be replaced'));
  // An error on a checked-out client (server restart, network cut) must not
  // crash the process; the query in flight rejects and the caller handles it.
  pool.on('connect', (client) => {
    client.on('error', (err) => log.warn({ err: maskUrls(String(err)) }, 'database connection failed'));
  });
  return pool;
}

export async function withClient<T>(pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    return await fn(client);
  } finally {
    client.release();
  }
}

export async function inTransaction<T>(pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  return withClient(pool, (c) => inClientTransaction(c, () => fn(c)));
}

/** `fn` inside a transaction on a connection the caller holds (a run's, which keeps its lock across transactions). */
export async function inClientTransaction<T>(c: pg.PoolClient, fn: () => Promise<T>): Promise<T> {
  await c.query('begin');
  try {
    const out = await fn();
    await c.query('commit');
    return out;
  } catch (err) {
    await c.query('rollback').catch(() => {});
    throw err;
  }
}

/** Host, port and database of a URL, without credentials, for messages. */
export function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || 5432}/${decodeURIComponent(u.pathname.slice(1))}`;
  } catch {
    return 'an unparseable connection string';
  }
}

/** Turns a connection failure into a sentence saying what to check. */
export function connectionHint(err: unknown, url: string, what: string): Error {
  const e = err as { code?: string; message?: string };
  const where = describeUrl(url);
  const hints: Record<string, string> = {
    ECONNREFUSED: `nothing listens at ${where}: is the server running, and are host and port right?`,
    ENOTFOUND: `the host of ${where} does not resolve: check the host name`,
    ETIMEDOUT: `${where} did not answer in time: check the network path and firewall`,
    '28P01': `the server at ${where} rejected the password: check the user and password`,
    '28000': `the server at ${where} refused this user: check pg_hba.conf and the user name`,
    '3D000': `the database in ${where} does not exist: create it or fix the name`,
  };
  const hint = (e.code && hints[e.code]) ?? `${maskUrls(e.message ?? String(err))} (${where})`;
  return new Error(`cannot connect to ${what}: ${hint}`, { cause: err });
}
