import { z } from 'zod';
import type { Preset } from './types.js';

/*
 * Directus 11's REST API, from its public documentation (directus.io/docs:
 * "Query parameters", "Items", "Authentication") and its source:
 * - GET {url}/items/{collection}, a static or login token as
 *   "Authorization: Bearer …";
 * - answers {"data": [...]} and, asked with meta=filter_count, {"meta":
 *   {"filter_count": n}}: the number of items matching the filter;
 * - `limit` (default QUERY_LIMIT_DEFAULT, 100) and `offset` page the
 *   listing; an instance may cap `limit` at QUERY_LIMIT_MAX (unlimited by
 *   default);
 * - `filter` is JSON with operators such as _gt, _in, _null, _or;
 *   `filter[id][_in]=1,2` asks for chosen keys;
 * - date_created is set on create, date_updated only on a later update
 *   (null until then): an updated-since filter needs both, with cursor.from.
 *
 * The endpoint is the collection's name: "endpoint": "articles".
 */

// Directus pages of 100 by default; larger pages cost fewer requests.
const PAGE_SIZE = 1000;

const options = z.object({
  url: z.url({ protocol: /^https?$/, error: 'must be the Directus instance\'s URL, e.g. "https://cms.example.com"' }).optional()
    .describe('The instance: https://cms.example.com (baseUrl)'),
  token: z.string().min(1, 'must not be empty').optional()
    .describe('Shorthand for auth: {"bearer": …}; write "${DIRECTUS_TOKEN}".'),
});

export const directus: Preset<z.infer<typeof options>> = {
  name: 'directus',
  description: 'Directus 11 items API (a headless CMS on SQL tables)',
  options,
  source(o, given) {
    if (given.baseUrl === undefined && o.url === undefined) {
      return { problem: 'preset "directus" needs "url" (the instance, e.g. "https://cms.example.com") or "baseUrl"' };
    }
    return {
      kind: 'http',
      ...(o.url !== undefined ? { baseUrl: o.url.replace(/\/+$/, '') } : {}),
      ...(o.token !== undefined ? { auth: { bearer: o.token } } : {}),
    };
  },
  endpoint: (collection) => (collection.trim() === '' ? undefined : {
    path: `items/${encodeURIComponent(collection)}`,
    params: { meta: 'filter_count' },
    recordsPath: 'data',
    totalPath: 'meta.filter_count',
    pagination: { style: 'offset', offsetParam: 'offset', limitParam: 'limit', limit: PAGE_SIZE },
    // Before a mirror deletes, the keys it would delete are asked for (the primary key named id, Directus's default).
    lookup: { param: 'filter[id][_in]', separator: ',' },
  }),
  endpointNames: 'the name of a collection',
};
