/**
 * Sets the example up on one PostgreSQL server (the embedded one under
 * .syncline/, or DATABASE_URL's): Syncline's database plays the edge, a
 * second database `syncline_cloud` plays the cloud. Creates the cloud
 * database, writes POSTGRES_CLIENT_URL to the .env beside the config unless
 * that file exists, runs what `syncline edge setup` runs (sql/local.sql
 * here, sql/remote.sql there) and seeds the cloud's configuration. Safe to
 * run again.
 *
 *   npx tsx examples/edge-meters/setup.ts            # set up
 *   npx tsx examples/edge-meters/setup.ts --mutate   # change configuration in the cloud
 */
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureDatabase, migrateDatabase, configDatabase, openDatabase } from '../../src/db/database.js';
import { makePool } from '../../src/db/pool.js';
import { prepareEdgeEnv } from '../../src/edge/env.js';
import { applySqlFile } from '../../src/edge/setup.js';
import { sourceUrl } from '../../src/sources/postgres/read.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const sql = (name: string) => path.join(here, 'sql', name);
const CLOUD_DATABASE = process.env.CLOUD_DATABASE ?? 'syncline_cloud';

prepareEdgeEnv(path.join(here, 'syncline.config.json'));
const db = await openDatabase(process.env, configDatabase(path.join(here, 'syncline.config.json')));
try {
  const cloudUrl = process.env.POSTGRES_CLIENT_URL ?? sourceUrl({ kind: 'postgres', database: CLOUD_DATABASE }, db.url);
  const cloud = makePool(cloudUrl, { max: 1 });
  const local = makePool(db.url, { max: 1 });
  try {
    if (process.argv.includes('--mutate')) {
      await applySqlFile(cloud, sql('mutate.sql'));
      console.log('cloud: meter 3 moved, meters 21 and 22 installed (22 with a malformed serial), a register of meter 20 removed');
    } else {
      if (!process.env.POSTGRES_CLIENT_URL) await ensureDatabase(db.url, CLOUD_DATABASE);
      await migrateDatabase(db.url);
      await applySqlFile(local, sql('local.sql'));
      await applySqlFile(cloud, sql('remote.sql'));
      await applySqlFile(cloud, sql('seed.sql'));
      console.log('edge ready: schema edge (readings, tenants, meters, registers, device_register) in Syncline\'s database');
      console.log(`cloud ready: database ${new URL(cloudUrl).pathname.slice(1)}, seeded with tenants acme and globex`);
      const envFile = path.join(here, '.env');
      const line = `POSTGRES_CLIENT_URL=${cloudUrl}`;
      if (existsSync(envFile)) console.log(`${path.relative(process.cwd(), envFile)} exists; make sure it holds POSTGRES_CLIENT_URL (or POSTGRES_CLIENT_HOST/…)`);
      else {
        writeFileSync(envFile, `${line}\n`);
        console.log(`wrote ${path.relative(process.cwd(), envFile)} with POSTGRES_CLIENT_URL`);
      }
    }
  } finally {
    await cloud.end();
    await local.end();
  }
} finally {
  await db.close();
}
