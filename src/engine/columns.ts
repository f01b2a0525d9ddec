import type { EntityConfig } from '../config/schema.js';
import { sourceColumns, sourceKeyIsUnique, type CursorFilter } from '../sources/postgres.js';
import type { EngineContext } from './types.js';

/** The target's columns a sync may write (generated ones excluded), in table order, with their types. */
export async function targetColumns(engine: EngineContext, name: string, def: EntityConfig): Promise<{ attname: string; type: string }[]> {
  const target = def.target as { schema: string; table: string };
  const { rows } = await engine.pool.query<{ attname: string; type: string }>(
    `select a.attname, format_type(a.atttypid, a.atttypmod) as type
       from pg_attribute a
      where a.attrelid = to_regclass(format('%I.%I', $1::text, $2::text)) and a.attnum > 0
        and not a.attisdropped and a.attgenerated = ''
      order by a.attnum`, [target.schema, target.table]);
  if (!rows.length) {
    throw new Error(`target table ${target.schema}.${target.table} of entity "${name}" does not exist — create it with your own migration`);
  }
  return rows;
}

/** Which target column is fed by which source column, and what the source guarantees. */
export interface Plan {
  targetColumns: string[];
  sourceColumns: string[];
  cursor?: CursorFilter & { sourceColumn: string };
  tenantSourceColumn?: string;
  /** The source table has a unique index within the key: it cannot repeat a key. */
  sourceKeyUnique: boolean;
}

export async function planColumns(engine: EngineContext, name: string, def: EntityConfig, cursor: string | null, full: boolean,
  window?: { from: string; to: string }): Promise<Plan> {
  const src = engine.config.sources[def.source];
  if (!src) {
    throw new Error(`entity "${name}" reads from source "${def.source}", which the config file does not define — add it under "sources"`);
  }
  const rows = await targetColumns(engine, name, def);
  const types = new Map(rows.map((r) => [r.attname, r.type]));
  let mapping: [string, string][];
  if (Array.isArray(def.columns)) mapping = def.columns.map((c) => [c, c]);
  else if (def.columns) mapping = Object.entries(def.columns);
  else {
    const { pool, url } = engine.pgSource(def.source);
    const available = new Set(await sourceColumns(pool, url, def, name));
    mapping = rows.map((r) => r.attname).filter((c) => available.has(c)).map((c) => [c, c]);
  }
  const sourceOf = (col: string) => mapping.find((m) => m[0] === col)?.[1] ?? col;
  const { pool: srcPool } = engine.pgSource(def.source);
  const plan: Plan = {
    targetColumns: mapping.map((m) => m[0]),
    sourceColumns: mapping.map((m) => m[1]),
    sourceKeyUnique: await sourceKeyIsUnique(srcPool, def, def.key.map(sourceOf)),
  };
  if (def.tenant) plan.tenantSourceColumn = sourceOf(def.tenant.column);
  if (window && !def.cursor) throw new Error(`entity "${name}" has no cursor column: a backfill needs one to split the range by`);
  if (def.cursor && (!full || window)) {
    const type = types.get(def.cursor.column);
    if (!type) throw new Error(`entity "${name}": cursor column "${def.cursor.column}" is not a column of the target table`);
    plan.cursor = { column: def.cursor.column, sourceColumn: sourceOf(def.cursor.column), value: cursor, overlap: def.cursor.overlap, type, window };
  }
  if (def.cursor && !plan.targetColumns.includes(def.cursor.column)) {
    throw new Error(`entity "${name}": cursor column "${def.cursor.column}" must be one of the synced columns`);
  }
  return plan;
}

