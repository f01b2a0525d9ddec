import { parseConfig } from '../../src/config/load.js';
import { applyConfig } from '../../src/config/apply.js';
import { Engine } from '../../src/engine/run.js';
import type { TestDatabase } from './db.js';

/**
 * An Engine on the test's Syncline database with `entities` applied; the
 * source "src" is the test's source database.
 */
export async function engineFor(sync: TestDatabase, source: TestDatabase, entities: Record<string, unknown>): Promise<Engine> {
  const cfg = parseConfig({ sources: { src: { kind: 'postgres', url: source.url } }, entities }, {});
  await applyConfig(sync.pool, cfg);
  return new Engine(sync.pool, sync.url, cfg);
}
