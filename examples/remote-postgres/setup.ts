/**
 * Sets the example up on Syncline's own server (the embedded one under
 * .syncline/, or DATABASE_URL's): a database `syncline_demo` (the one
 * `npm start` uses) playing the remote, seeded with three tenants, and the
 * local tables (schema metering) in this example's own Syncline database (syncline_remote_postgres). Writes REMOTE_DATABASE_URL to the .env beside the
 * config unless that file exists. Safe to run again.
 *
 *   npx tsx examples/remote-postgres/setup.ts            # set up
 *   npx tsx examples/remote-postgres/setup.ts --mutate   # simulate a minute of remote activity
 */
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { configDatabase, openDatabase } from '../../src/db/database.js';
import { DEMO_EXAMPLE_DIR, mutateDemo, seedDemo } from '../../src/demo/seed.js';
import { sourceUrl } from '../../src/sources/postgres/read.js';

const REMOTE_DATABASE = process.env.REMOTE_DATABASE ?? 'syncline_demo';

const db = await openDatabase(process.env, configDatabase(path.join(DEMO_EXAMPLE_DIR, 'syncline.config.json')));
try {
  const remoteUrl = sourceUrl({ kind: 'postgres', database: REMOTE_DATABASE }, db.url);
  if (process.argv.includes('--mutate')) {
    await mutateDemo(remoteUrl);
    console.log(`changed a few meters, readings and register assignments in every tenant of ${REMOTE_DATABASE}`);
  } else {
    await seedDemo(db.url, REMOTE_DATABASE);
    console.log(`remote database ready: ${REMOTE_DATABASE} (tables tenants, meters, registers, device_register)`);
    console.log('local tables ready: metering.tenants, metering.meters, metering.registers, metering.device_register');
    const envFile = path.join(DEMO_EXAMPLE_DIR, '.env');
    const line = `REMOTE_DATABASE_URL=${remoteUrl}`;
    if (existsSync(envFile)) {
      console.log(`${path.relative(process.cwd(), envFile)} exists; make sure it holds\n  ${line}`);
    } else {
      writeFileSync(envFile, `${line}\n`);
      console.log(`wrote ${path.relative(process.cwd(), envFile)}: ${line}`);
    }
  }
} finally {
  await db.close();
}
