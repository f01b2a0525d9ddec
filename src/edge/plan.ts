import { createHash } from 'node:crypto';
import { pushOptions, type EntityConfig, type PushOptions, type TableRef } from '../config/schema.js';
import { quoteIdent as q } from '../db/database.js';
import type { Pool, PoolClient } from '../db/pool.js';

type Db = Pool | PoolClient;
type Column = { name: string; type: string; notNull: boolean; writable: boolean };

/** Everything a push run needs to know about both tables, resolved once a run. */
export interface PushPlan {
  entity: string;
  settings: Required<Omit<PushOptions, 'orderBy'>> & { orderBy: string[] };
  /** Quoted schema.table on each side. */
  local: string;
  remote: string;
  /** The remote columns written (with their types there), and the local column feeding each. */
  remoteColumns: string[];
  remoteTypes: string[];
  localColumns: string[];
  /** Local primary key: breaks ties in the order, so a run resumes exactly after the last batch. */
  localKey: Column[];
  /** orderBy then the rest of the primary key: a total order, so batches resume exactly where the last stopped. */
  order: Column[];
  /** The remote natural key, covered by a unique index there. */
  key: string[];
  /** Session-local table names (one a entity, so two push entities never share one). */
  batchTable: string;
  stageTable: string;
}

const rel = (t: TableRef) => `${q(t.schema)}.${q(t.table)}`;
const name = (t: TableRef) => `${t.schema}.${t.table}`;

export function pushSettings(def: EntityConfig): PushPlan['settings'] {
  const p = def.push ?? pushOptions.parse({});
  return { ...p, orderBy: p.orderBy ?? def.key };
}

async function columns(db: Db, t: TableRef): Promise<Column[]> {
  const { rows } = await db.query<Column>(
    `select a.attname as name, format_type(a.atttypid, a.atttypmod) as type, a.attnotnull as "notNull",
            a.attgenerated = '' and a.attidentity <> 'a' as writable
       from pg_attribute a
      where a.attrelid = to_regclass(format('%I.%I', $1::text, $2::text)) and a.attnum > 0 and not a.attisdropped
      order by a.attnum`, [t.schema, t.table]);
  return rows;
}

async function primaryKey(db: Db, t: TableRef): Promise<string[]> {
  const { rows } = await db.query<{ name: string }>(
    `select a.attname as name
       from pg_index i
       join lateral unnest(i.indkey::int2[]) with ordinality k(attnum, n) on true
       join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
      where i.indrelid = to_regclass(format('%I.%I', $1::text, $2::text)) and i.indisprimary
      order by k.n`, [t.schema, t.table]);
  return rows.map((r) => r.name);
}

/** Whether a unique index (no predicate, no expressions) covers exactly these columns: ON CONFLICT needs one. */
async function hasUniqueIndex(db: Db, t: TableRef, cols: string[]): Promise<boolean> {
  const { rows } = await db.query(
    `select 1 from pg_index i
      where i.indrelid = to_regclass(format('%I.%I', $1::text, $2::text))
        and i.indisunique and i.indpred is null and i.indexprs is null and i.indimmediate
        and (select array_agg(a.attname::text order by a.attname) from pg_attribute a
              where a.attrelid = i.indrelid and a.attnum = any (i.indkey::int2[]))
            = (select array_agg(c order by c) from unnest($3::text[]) c)`, [t.schema, t.table, cols]);
  return rows.length > 0;
}

/** Which remote column each local column feeds: the config's mapping, or every writable remote column the local table also has. */
function mapping(def: EntityConfig, remote: Column[], local: Column[], localKey: string[], synced: string): [string, string][] {
  if (Array.isArray(def.columns)) return def.columns.map((c) => [c, c]);
  if (def.columns) return Object.entries(def.columns);
  const have = new Set(local.map((c) => c.name));
  // A local surrogate key (an identity id) means nothing on the remote: it is
  // sent only when it is part of the natural key.
  return remote.filter((c) => c.writable && have.has(c.name) && c.name !== synced
    && (!localKey.includes(c.name) || def.key.includes(c.name))).map((c) => [c.name, c.name]);
}

/**
 * Resolves a push entity against the local table and the remote one, with an
 * error that says what to fix for anything that would break exactly-once.
 */
export async function planPush(entity: string, def: EntityConfig, local: Db, remote: Db, source: string): Promise<PushPlan> {
  const settings = pushSettings(def);
  const lt = (def.from as { table: TableRef }).table;
  const rt = def.target as TableRef;
  const where = `push entity "${entity}"`;
  const lcols = await columns(local, lt);
  if (!lcols.length) throw new Error(`${where}: the local table ${name(lt)} does not exist — create it (see \`syncline edge setup\`)`);
  const rcols = await columns(remote, rt);
  if (!rcols.length) {
    throw new Error(`${where}: the table ${name(rt)} does not exist on source "${source}" — create it there (see \`syncline edge setup\`)`);
  }
  const lget = (c: string) => lcols.find((x) => x.name === c);
  const synced = lget(settings.syncedColumn);
  if (!synced || synced.type !== 'boolean') {
    throw new Error(`${where}: push.syncedColumn "${settings.syncedColumn}" is not a boolean column of ${name(lt)} — add it: ${q(settings.syncedColumn)} boolean not null default false`);
  }
  const pk = await primaryKey(local, lt);
  if (!pk.length) throw new Error(`${where}: ${name(lt)} has no primary key — it orders rows with equal push.orderBy values; add one (an identity column will do)`);
  for (const c of settings.orderBy) {
    const col = lget(c);
    if (!col) throw new Error(`${where}: push.orderBy column "${c}" is not a column of ${name(lt)}`);
    if (!col.notNull) throw new Error(`${where}: push.orderBy column "${c}" of ${name(lt)} may be null, and a null never orders — make it NOT NULL`);
  }
  const pairs = mapping(def, rcols, lcols, pk, settings.syncedColumn);
  for (const [r, l] of pairs) {
    const rc = rcols.find((x) => x.name === r);
    if (!rc?.writable) throw new Error(`${where}: "${r}" is not a writable column of ${name(rt)} on source "${source}"`);
    if (!lget(l)) throw new Error(`${where}: "${l}" is not a column of the local table ${name(lt)}`);
  }
  const remoteColumns = pairs.map((p) => p[0]);
  const remoteTypes = remoteColumns.map((c) => rcols.find((x) => x.name === c)!.type);
  for (const k of def.key) {
    if (!remoteColumns.includes(k)) throw new Error(`${where}: key column "${k}" is not among the columns pushed to ${name(rt)}`);
  }
  if (!(await hasUniqueIndex(remote, rt, def.key))) {
    throw new Error(`${where}: ${name(rt)} on source "${source}" has no unique index on exactly (${def.key.join(', ')}), `
      + `which makes a re-sent row a no-op — create unique index on ${rel(rt)} (${def.key.map(q).join(', ')})`);
  }
  const order = [...settings.orderBy, ...pk.filter((c) => !settings.orderBy.includes(c))].map((c) => lget(c)!);
  const tag = createHash('sha1').update(entity).digest('hex').slice(0, 12);
  return {
    entity, settings, local: rel(lt), remote: rel(rt), remoteColumns, remoteTypes, localColumns: pairs.map((p) => p[1]),
    localKey: pk.map((c) => lget(c)!), order, key: def.key,
    batchTable: `pg_temp.${q(`syncline_push_${tag}`)}`, stageTable: `pg_temp.${q(`syncline_stage_${tag}`)}`,
  };
}
