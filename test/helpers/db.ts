import { inject, afterAll } from 'vitest';
import pg from 'pg';
import { makePool, type Pool } from '../../src/db/pool.js';
import { quoteIdent } from '../../src/db/database.js';
import { TEMPLATE, withDatabase } from './global-setup.js';

let counter = 0;

interface TaskLike { result?: { state?: string }; tasks?: TaskLike[] }
function anyFailed(task: TaskLike): boolean {
  return task.result?.state === 'fail' || (task.tasks ?? []).some(anyFailed);
}

export interface TestDatabase {
  name: string;
  url: string;
  pool: Pool;
}

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client(inject('adminUrl'));
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

function uniqueName(prefix: string): string {
  return `${prefix}_${process.pid}_${Date.now().toString(36)}_${counter++}`.toLowerCase();
}

/**
 * A fresh database for this test file: a clone of the migrated template
 * (`migrated: true`, the Syncline side) or an empty one (a source). Dropped
 * after the file's tests pass; kept for inspection when any failed.
 */
export async function testDatabase(prefix: string, opts: { migrated?: boolean } = {}): Promise<TestDatabase> {
  const name = uniqueName(prefix);
  const template = opts.migrated === false ? 'template0' : TEMPLATE;
  await admin((c) => c.query(`create database ${quoteIdent(name)} template ${quoteIdent(template)}`));
  const url = withDatabase(inject('adminUrl'), name);
  const pool = makePool(url, { max: 6 });
  afterAll(async (suite) => {
    await pool.end();
    if (!anyFailed(suite)) {
      // A database with a replication slot (log capture's source) cannot be dropped.
      await admin(async (c) => {
        await c.query('select pg_terminate_backend(active_pid) from pg_replication_slots where database = $1 and active_pid is not null', [name]);
        await c.query('select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = $1 and not active', [name]);
      }).catch(() => {});
      await admin((c) => c.query(`drop database if exists ${quoteIdent(name)} with (force)`));
    }
  });
  return { name, url, pool };
}

/** Syncline's database (migrated) and a source database, for one test file. */
export async function testDatabases(prefix: string): Promise<{ sync: TestDatabase; source: TestDatabase }> {
  const [sync, source] = await Promise.all([
    testDatabase(`${prefix}_sync`),
    testDatabase(`${prefix}_src`, { migrated: false }),
  ]);
  return { sync, source };
}
