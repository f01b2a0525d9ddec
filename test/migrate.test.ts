import { describe, it, expect } from 'vitest';
import { testDatabase } from './helpers/db.js';
import { migrateDatabase } from '../src/db/database.js';

describe('migrating the Syncline database', () => {
  it('two processes starting at once both come up: the second waits for the first instead of failing', async () => {
    const db = await testDatabase('migrate_race', { migrated: false });
    await Promise.all([migrateDatabase(db.url), migrateDatabase(db.url), migrateDatabase(db.url)]);
    const { rows } = await db.pool.query(`select count(*)::int as n, count(distinct filename)::int as files from graphile_migrate.migrations`);
    expect(rows[0].n).toBe(rows[0].files);
    expect(rows[0].n).toBeGreaterThanOrEqual(7);
    expect((await db.pool.query(`select to_regclass('sync.heartbeat') is not null as ok`)).rows[0].ok).toBe(true);
  });
});
