/**
 * The source side of log capture: the publication naming the entity's
 * table, the logical replication slot (pgoutput) that keeps its changes,
 * and what the source says about them. Everything but the publication and
 * the slot itself is read in the read-only sessions every source read uses.
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import type { EntityConfig } from '../../../config/schema.js';
import { quoteIdent } from '../../../db/database.js';
import { connectionHint, type Pool } from '../../../db/pool.js';

/** The slot's and the publication's name on the source: syncline_<entity>, made a valid slot name. */
export function logNames(entity: string): { slot: string; publication: string } {
  let base = `syncline_${entity.toLowerCase().replace(/[^a-z0-9_]/g, '_')}`;
  // Slot names are at most 63 characters; a cut name keeps a hash of the whole one.
  if (base.length > 63) base = `${base.slice(0, 54)}_${createHash('sha1').update(entity).digest('hex').slice(0, 8)}`;
  return { slot: base, publication: base };
}

export const sourceTable = (def: EntityConfig) => {
  if (!('table' in def.from)) throw new Error('log capture reads a table ("from": {"table": …}), not a query');
  return def.from.table as { schema: string; table: string };
};
/** The source table, quoted for SQL. */
export const tableSql = (def: EntityConfig) => { const t = sourceTable(def); return `${quoteIdent(t.schema)}.${quoteIdent(t.table)}`; };

/** The source table's oid (the log's name for it); null when the source has no such table. */
export async function tableOid(pool: Pool, def: EntityConfig): Promise<number | null> {
  const { rows } = await pool.query('select to_regclass($1)::oid::int8 as oid', [tableSql(def)]);
  return rows[0].oid === null ? null : Number(rows[0].oid);
}

/** The table's columns as its log describes them (generated columns are not in the log). */
export async function tableColumns(pool: Pool, relid: number): Promise<{ name: string; typeOid: number; key: boolean }[]> {
  const { rows } = await pool.query(
    `select a.attname as name, a.atttypid::int8 as "typeOid", false as key from pg_attribute a
      where a.attrelid = $1::oid and a.attnum > 0 and not a.attisdropped and a.attgenerated = '' order by a.attnum`, [relid]);
  return rows.map((r) => ({ ...r, typeOid: Number(r.typeOid) }));
}

/** What the source says about a slot now; null when it has no such slot in this database. */
export interface SlotState {
  wal_status: string;
  active: boolean;
  retained_bytes: string;
  source_lsn: string;
  confirmed_lsn: string | null;
}

export async function slotState(pool: Pool, slot: string): Promise<SlotState | null> {
  const { rows } = await pool.query<SlotState>(
    `select coalesce(s.wal_status, 'reserved') as wal_status, s.active,
            pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint::text as retained_bytes,
            pg_current_wal_flush_lsn()::text as source_lsn, s.confirmed_flush_lsn::text as confirmed_lsn
       from pg_replication_slots s where s.slot_name = $1 and s.database = current_database()`, [slot]);
  return rows[0] ?? null;
}

/** The source columns feeding the entity's key, as its column mapping says. */
const keySources = (def: EntityConfig) => {
  const mapped: Record<string, string> = def.columns && !Array.isArray(def.columns) ? def.columns : {};
  return def.key.map((k) => mapped[k] ?? k);
};

/**
 * Why this source cannot capture the entity's changes from its log, each
 * with how to fix it; empty when it can.
 */
export async function logProblems(pool: Pool, def: EntityConfig, keySourceColumns = keySources(def), sourceColumns: string[] = []): Promise<string[]> {
  const t = sourceTable(def);
  const { rows: [s] } = await pool.query(
    `select current_setting('wal_level') as wal_level,
            (select rolreplication or rolsuper from pg_roles where rolname = current_user) as can_replicate,
            current_setting('max_replication_slots')::int - (select count(*) from pg_replication_slots)::int as free_slots,
            to_regclass($1) as rel,
            (select c.relreplident from pg_class c where c.oid = to_regclass($1)) as identity,
            (select array_agg(a.attname::text) from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey::int2[])
              where i.indrelid = to_regclass($1) and (i.indisreplident or (i.indisprimary and (select c.relreplident from pg_class c where c.oid = to_regclass($1)) = 'd'))) as identity_columns,
            (select array_agg(a.attname::text) from pg_attribute a
              where a.attrelid = to_regclass($1) and a.attgenerated <> '' and a.attname = any ($2::text[])) as generated`,
    [`${quoteIdent(t.schema)}.${quoteIdent(t.table)}`, sourceColumns]);
  const problems: string[] = [];
  if (s.wal_level !== 'logical') {
    problems.push(`wal_level is ${s.wal_level} on the source, and log capture needs logical: set wal_level = logical in its postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart it`);
  }
  if (!s.can_replicate) {
    problems.push('the source role may not replicate: ALTER ROLE <the role in the source url> WITH REPLICATION (and grant it SELECT on the table)');
  }
  if (!s.rel) problems.push(`the source has no table ${t.schema}.${t.table}`);
  else if (s.identity === 'n' || (s.identity !== 'f' && !keySourceColumns.every((k) => (s.identity_columns ?? []).includes(k)))) {
    problems.push(`the log of ${t.schema}.${t.table} does not carry the key (${keySourceColumns.join(', ')}) of deleted rows: `
      + `make it the table's primary key or replica identity index, or ALTER TABLE ${tableSql(def)} REPLICA IDENTITY FULL`);
  }
  if (s.generated?.length) {
    problems.push(`the log does not carry generated columns (${s.generated.join(', ')}): leave them out of "columns", or compute them on the target`);
  }
  if (s.free_slots < 1) {
    problems.push('the source has no free replication slot: raise max_replication_slots on it (a restart) or drop an unused slot');
  }
  return problems;
}

/**
 * `fn` on a session of its own that may write (setting up the publication
 * and the slot is not a read: the source pool's sessions are read-only).
 */
async function withSetupClient<T>(url: string, what: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url, application_name: 'syncline (log capture setup)' });
  await c.connect().catch((err) => { throw connectionHint(err, url, what); });
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => {});
  }
}

/** Whether the publication exists and names the table (null: it does not exist). */
async function publicationHasTable(client: pg.ClientBase, publication: string, def: EntityConfig): Promise<boolean | null> {
  const t = sourceTable(def);
  const { rows } = await client.query(
    `select exists (select 1 from pg_publication_tables where pubname = $1 and schemaname = $2 and tablename = $3) as has
       from pg_publication where pubname = $1`, [publication, t.schema, t.table]);
  return rows.length ? rows[0].has : null;
}

/**
 * Creates the entity's publication, or adds its table to it: the only thing
 * Syncline writes on a source (it needs the table's owner, or a DBA runs the
 * statement printed in the error). Returns what it did.
 */
export async function ensurePublication(url: string, entity: string, def: EntityConfig): Promise<string> {
  const { publication } = logNames(entity);
  // Changes of a partitioned table's partitions then come as the table's own.
  const statement = `create publication ${quoteIdent(publication)} for table ${tableSql(def)} with (publish_via_partition_root = true)`;
  return withSetupClient(url, `source "${def.source}"`, async (c) => {
    const has = await publicationHasTable(c, publication, def);
    if (has) return `publication ${publication} names ${sourceTable(def).schema}.${sourceTable(def).table}`;
    const sql = has === null ? statement : `alter publication ${quoteIdent(publication)} add table ${tableSql(def)}`;
    await c.query(sql).catch((err) => {
      throw new Error(`could not set up the publication on the source (${(err as Error).message}): run as the table's owner: ${sql}`);
    });
    return has === null ? `publication ${publication} created` : `table added to publication ${publication}`;
  });
}

/** A new slot and the snapshot it was created at, exported while `close` has not been called. */
export interface ExportedSlot { lsn: string; snapshot: string; close(): Promise<void> }

/**
 * Creates the slot over a replication connection with EXPORT_SNAPSHOT: a
 * transaction that imports the snapshot sees exactly the changes before the
 * slot's first one, so none is lost or applied twice. A slot left by an
 * earlier attempt is dropped first.
 */
export async function createSlot(url: string, slot: string): Promise<ExportedSlot> {
  await dropSlot(url, slot);
  const c = new pg.Client({ connectionString: url, replication: 'database', application_name: 'syncline (log capture snapshot)' } as pg.ClientConfig);
  await c.connect().catch((err) => { throw connectionHint(err, url, 'the source (replication connection)'); });
  try {
    const { rows: [r] } = await c.query(`CREATE_REPLICATION_SLOT ${quoteIdent(slot)} LOGICAL pgoutput EXPORT_SNAPSHOT`);
    return { lsn: r.consistent_point, snapshot: r.snapshot_name, close: () => c.end().catch(() => {}) };
  } catch (err) {
    await c.end().catch(() => {});
    if ((err as { code?: string }).code === '42710') throw await slotTaken(url, slot, err);
    throw new Error(`could not create the replication slot ${slot} on the source: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Slot names are one namespace for the whole source server: another
 * database's slot of that name (another Syncline syncing an entity of the
 * same name from it) is not ours to drop.
 */
async function slotTaken(url: string, slot: string, cause: unknown): Promise<Error> {
  const database = await withSetupClient(url, 'the source', (c) => c.query('select database from pg_replication_slots where slot_name = $1', [slot]))
    .then((r) => r.rows[0]?.database as string | undefined, () => undefined);
  return new Error(`could not create the replication slot ${slot} on the source: the source server has a slot of that name`
    + `${database ? ` in database ${database}` : ''} (slot names are server-wide), used for another database's changes. `
    + 'Rename the entity, or drop that slot if nothing uses it: select pg_drop_replication_slot(\'' + slot + '\')', { cause });
}

/** Drops the slot if the source has it (in this database). */
export async function dropSlot(url: string, slot: string): Promise<boolean> {
  const { rows } = await withSetupClient(url, 'the source', (c) => c.query(
    `select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1 and database = current_database()`, [slot]));
  return rows.length > 0;
}

/** Drops the entity's publication if the source has it. */
export async function dropPublication(url: string, entity: string): Promise<void> {
  await withSetupClient(url, 'the source', (c) => c.query(`drop publication if exists ${quoteIdent(logNames(entity).publication)}`));
}

// How long a read waits for the slot to be free: a killed run's session may
// still hold it until its server notices the client is gone.
const SLOT_FREE_WAIT_MS = 60_000;

/**
 * Waits until no session holds the slot (a killed run's session may, for a
 * while). Throws when it stays held past the wait: another process reads it.
 */
export async function slotFree(pool: Pool, slot: string): Promise<void> {
  const deadline = Date.now() + SLOT_FREE_WAIT_MS;
  for (;;) {
    const { rows } = await pool.query(
      'select active_pid from pg_replication_slots where slot_name = $1 and database = current_database()', [slot]);
    if (!rows[0]?.active_pid) return;
    if (Date.now() > deadline) {
      throw new Error(`the replication slot ${slot} is in use by the source's process ${rows[0].active_pid}: is another Syncline reading it? `
        + '(only one Syncline database may capture an entity of that name from this source)');
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Confirms the slot up to `lsn`: the source may now remove the WAL before it. */
export async function confirmSlot(pool: Pool, slot: string, lsn: string): Promise<void> {
  await pool.query(
    `select pg_replication_slot_advance($1, $2::pg_lsn)
      where $2::pg_lsn > (select confirmed_flush_lsn from pg_replication_slots where slot_name = $1 and database = current_database())`,
    [slot, lsn]);
}
