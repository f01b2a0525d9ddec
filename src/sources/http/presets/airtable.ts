import { z } from 'zod';
import type { Preset } from './types.js';

/*
 * Airtable's Web API (and table back-ends that copy it), from its public
 * documentation (airtable.com/developers/web/api):
 * - GET https://api.airtable.com/v0/{baseId}/{tableIdOrName}, bearer token
 *   (a personal access token);
 * - answers {"records": [{"id": "rec…", "createdTime": "…", "fields": {…}}],
 *   "offset": "…"}: `offset` is present while more records follow and goes
 *   back as the `offset` query parameter; `pageSize` is at most 100 (the
 *   default);
 * - a cell is under fields.<Field Name>; an empty cell is left out of
 *   `fields` (so it arrives as null); a linked record is an array of
 *   record ids (fields.Supplier.0 is the first);
 * - 5 requests per second per base (and 50 per second per token across
 *   bases); past that the API answers 429 and the next requests fail for
 *   30 seconds. Its answers name no limit headers and the 429 no
 *   Retry-After: pacing at 5 per 1 s avoids the 429; one that still comes
 *   (another client on the base) is retried after 1, 2, 4, 8, 16 s, past
 *   the 30 s penalty within the default retries.rateLimited.
 *
 * The endpoint is the table's name (or id): "endpoint": "Products".
 * Map columns with the entity's "columns": {"unit_price": "fields.Unit Price"}.
 */

export const AIRTABLE_API = 'https://api.airtable.com/v0';
// Airtable refuses a pageSize above 100.
export const AIRTABLE_MAX_PAGE_SIZE = 100;

const options = z.object({
  baseId: z.string().regex(/^[A-Za-z0-9_-]+$/, 'must be the base\'s id as in its URL, e.g. "appAbC123xyz"').optional()
    .describe('The base: https://api.airtable.com/v0/<baseId>'),
  token: z.string().min(1, 'must not be empty').optional()
    .describe('Shorthand for auth: {"bearer": …}; write "${AIRTABLE_TOKEN}".'),
});

export const airtable: Preset<z.infer<typeof options>> = {
  name: 'airtable',
  description: 'Airtable Web API (a table back-end)',
  options,
  source(o, given) {
    if (given.baseUrl === undefined && o.baseId === undefined) {
      return { problem: 'preset "airtable" needs "baseId" (the app… part of the base\'s URL) or "baseUrl"' };
    }
    if (given.auth === undefined && o.token === undefined) {
      return { problem: 'preset "airtable" needs a token: "token": "${AIRTABLE_TOKEN}" (or "auth": {"bearer": …})' };
    }
    return {
      kind: 'http',
      ...(o.baseId !== undefined ? { baseUrl: `${AIRTABLE_API}/${o.baseId}` } : {}),
      ...(o.token !== undefined ? { auth: { bearer: o.token } } : {}),
      rateLimit: { requests: 5, perSeconds: 1 },
    };
  },
  endpoint: (table) => (table.trim() === '' ? undefined : {
    // A table name may hold spaces or slashes: one path segment, encoded.
    path: encodeURIComponent(table),
    recordsPath: 'records',
    pagination: { style: 'cursor', param: 'offset', cursorPath: 'offset', sizeParam: 'pageSize', size: AIRTABLE_MAX_PAGE_SIZE },
    fields: { created_time: 'createdTime' },
    // Airtable leaves an empty cell out of `fields`: missing is empty here.
    absent: 'null',
  }),
  endpointNames: 'the name (or id) of a table of the base',
};
