/**
 * The http source kind: an API crawled page by page into the run's text
 * staging (resumable from the last saved page), nested records fed from a
 * parent's runs, backfill windows, and the checks that decide whether a
 * crawl may delete.
 */
import type { HttpSourceConfig } from '../../config/schema.js';
import type { SourceKind } from '../port.js';
import { planHttpRun, withCursor } from './crawl.js';
import { paginate } from './paginate.js';
import type { HttpEntityOptions } from './schema.js';
import { httpSourceClient } from './source.js';

export const httpSource: SourceKind = {
  /**
   * The first page of an http entity, requested exactly as a first run
   * requests it: the run's own params rendering (no cursor yet) and the
   * crawl's first page state. The crawl is stopped after that page; the
   * number of fields of its first record is the answer.
   */
  async columns(env, name, def) {
    const src = env.config.sources[def.source] as HttpSourceConfig;
    const http = (def.from as { http: HttpEntityOptions }).http;
    const client = httpSourceClient(def.source, src, env.pool);
    for await (const page of paginate(client, withCursor(http, null, null), { entity: name })) {
      return Object.keys(page.records[0] ?? {}).length;
    }
    return 0; // an empty listing
  },

  // Nested records are replaced by parent: they re-sync with their parents, not by key.
  readsKeys: (def) => !('nested' in def.from),

  plan: planHttpRun,
};
