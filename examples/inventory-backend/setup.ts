/**
 * Creates the example's tables (local.sql: schema inventory, tables
 * suppliers, locations, products, stock_levels) in Syncline's own database:
 * the embedded one under .syncline/, or DATABASE_URL's. Safe to run again;
 * never drops anything.
 *
 *   npx tsx examples/inventory-backend/setup.ts
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { configDatabase, openDatabase } from '../../src/db/database.js';
import { makePool } from '../../src/db/pool.js';

const here = path.dirname(fileURLToPath(import.meta.url));

const db = await openDatabase(process.env, configDatabase(path.join(here, 'syncline.config.json')));
const pool = makePool(db.url, { max: 1 });
try {
  await pool.query(readFileSync(path.join(here, 'local.sql'), 'utf8'));
  console.log('tables ready: inventory.suppliers, inventory.locations, inventory.products, inventory.stock_levels');
} finally {
  await pool.end();
  await db.close();
}
