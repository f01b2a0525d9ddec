/**
 * The meter gateway's side of the example: writes readings into
 * edge.readings continuously, as the gateway's acquisition would, one
 * reading for every register of every meter of the tenant each tick (from
 * the configuration the edge has pulled; before the first pull, for meters
 * 1–5). Ctrl-C stops it.
 *
 *   npx tsx examples/edge-meters/generator.ts [--every 1] [--tenant acme]
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { configDatabase, openDatabase } from '../../src/db/database.js';
import { makePool, type Pool } from '../../src/db/pool.js';
import { prepareEdgeEnv } from '../../src/edge/env.js';

/**
 * One tick: a reading for every (meter, register) the tenant's configuration
 * lists, in one INSERT … SELECT. Returns the readings written.
 */
export async function writeReadings(pool: Pool, tenant: string): Promise<number> {
  const { rowCount } = await pool.query(
    `with assigned as (
       select d.meter_id, d.register_id from edge.device_register d where d.tenant_id = $1
       union all
       select m, 1 from generate_series(1, 5) m where not exists (select 1 from edge.device_register where tenant_id = $1))
     insert into edge.readings (tenant_id, meter_id, register_id, recorded_at, value)
     select $1, a.meter_id, a.register_id, date_trunc('milliseconds', clock_timestamp()),
            round((case a.register_id when 3 then 230 + random() * 10 when 4 then random() * 40
                   else extract(epoch from clock_timestamp()) / 3600 * a.meter_id end)::numeric, 3)
       from assigned a`, [tenant]);
  return rowCount ?? 0;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { every: { type: 'string', default: '1' }, tenant: { type: 'string', default: process.env.EDGE_TENANT ?? 'acme' } } });
  const everyMs = Number(values.every) * 1000;
  if (!(everyMs > 0)) throw new Error(`--every ${values.every}: give the seconds between ticks, e.g. 1`);
  prepareEdgeEnv(path.join(path.dirname(fileURLToPath(import.meta.url)), 'syncline.config.json'));
  const db = await openDatabase(process.env, configDatabase(path.join(path.dirname(fileURLToPath(import.meta.url)), 'syncline.config.json')));
  const pool = makePool(db.url, { max: 1, application_name: 'edge-meters generator' });
  const stop = new AbortController();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => stop.abort());
  let total = 0;
  try {
    while (!stop.signal.aborted) {
      total += await writeReadings(pool, values.tenant!);
      process.stdout.write(`\r${total.toLocaleString('en')} readings written`);
      await sleep(everyMs, undefined, { signal: stop.signal }).catch(() => {});
    }
  } finally {
    process.stdout.write('\n');
    await pool.end();
    await db.close();
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
