import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TestProject } from 'vitest/node';
import { startEmbedded, freePort, type EmbeddedServer } from '../../src/db/embedded.js';
import { ensureDatabase, migrateDatabase } from '../../src/db/database.js';
import { makePool } from '../../src/db/pool.js';

export const TEMPLATE = 'syncline_template';

/**
 * One server for the whole run: TEST_DATABASE_URL's, or a throwaway embedded
 * one. A migrated template database is made once; every test file clones it.
 */
export default async function setup(project: TestProject) {
  let server: EmbeddedServer | undefined;
  let dir: string | undefined;
  let adminUrl = process.env.TEST_DATABASE_URL;
  if (!adminUrl) {
    dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-test-'));
    server = await startEmbedded({ dir, port: await freePort(), persistent: false });
    adminUrl = server.url('postgres');
  }
  const templateUrl = withDatabase(adminUrl, TEMPLATE);
  const admin = makePool(adminUrl, { max: 1 });
  await admin.query(`drop database if exists ${TEMPLATE} with (force)`);
  await admin.end();
  await ensureDatabase(adminUrl, TEMPLATE);
  await migrateDatabase(templateUrl);
  project.provide('adminUrl', adminUrl);
  return async () => {
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  };
}

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${encodeURIComponent(database)}`;
  return u.toString();
}

declare module 'vitest' {
  export interface ProvidedContext {
    adminUrl: string;
  }
}
