import type { EntityConfig } from '../config/schema.js';
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
