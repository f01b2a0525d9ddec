import { z } from 'zod';
import type { Pagination } from '../schema.js';
import type { Preset, PresetEndpoint } from './types.js';

/*
 * Lightspeed Retail (X-Series) API 2.0, formerly Vend.
 *
 * Confirmed from the vendor's documentation (x-series-api.lightspeedhq.com:
 * Pagination, Rate Limiting, Authorization, and the API reference):
 * - base URL https://{domain_prefix}.retail.lightspeed.app/api/2.0, bearer
 *   token (a personal token or an OAuth access token);
 * - collections page by a version cursor: GET …?after=<version>&page_size=n
 *   answers {"data": […], "version": {"min", "max"}}, records ordered by
 *   their `version` (a global, monotonically increasing integer bumped on
 *   every change); pass version.max as `after` for the next page; an empty
 *   page ends the crawl;
 * - the rate limit is 300 × registers + 50 requests per 5 minutes, per
 *   retailer per application; every JSON answer carries X-RateLimit-Limit
 *   and X-RateLimit-Remaining (no Reset), and a 429 a Retry-After. The
 *   budget adopts the announced limit, so a wrong `registers` costs nothing;
 *   the window (no header names it) stays the documented 300 s;
 * - a sale carries its line items nested (`line_items`: id, product_id,
 *   quantity, price, tax, …), and `version`.
 * - product categories (`/product_categories`) page differently: an `after`
 *   category id with {"data": {"categories": […]}, "page_info":
 *   {"has_next", "last_seen"}}; a category has `parent_category_id` (null for
 *   a root) and `root_category_id`. That shape is documented for the
 *   date-versioned API (2026-xx); whether 2.0 serves the same under
 *   /api/2.0 is not confirmed — override `path`/`pagination` if it differs.
 *
 * Not confirmed, so left out on purpose: a default page size (the API's
 * own default applies; set "pagination": {"size": 1000} to choose one) and
 * field renames other than the category parent (records map to columns of
 * the same name: id, name, version, deleted_at, outlet_id, product_id, …).
 */

const API_PATH = '/api/2.0';

// Every 2.0 collection but categories: the version cursor.
const VERSION: Pagination & { style: 'version' } = {
  style: 'version', param: 'after', versionPath: 'version.max', sizeParam: 'page_size',
};

const collection = (path: string): PresetEndpoint => ({ path, pagination: { ...VERSION } });

const ENDPOINTS: Record<string, PresetEndpoint> = {
  outlets: collection('outlets'),
  taxes: collection('taxes'),
  users: collection('users'),
  brands: collection('brands'),
  suppliers: collection('suppliers'),
  customer_groups: collection('customer_groups'),
  product_categories: {
    path: 'product_categories',
    recordsPath: 'data.categories',
    pagination: { style: 'cursor', param: 'after', cursorPath: 'page_info.last_seen', sizeParam: 'page_size' },
    // The hierarchy: a column parent_id gets the parent category's id (null at a root).
    fields: { parent_id: 'parent_category_id' },
  },
  products: collection('products'),
  customers: collection('customers'),
  inventory: collection('inventory'),
  // Line items come nested in each sale (`line_items`): a jsonb column of that
  // name takes them whole; a separate line-item table needs nested records.
  sales: collection('sales'),
};

// The documented budget: 300 requests per register plus 50, per 5 minutes.
export const LIGHTSPEED_WINDOW_SECONDS = 300;
export const lightspeedRequests = (registers: number) => 300 * registers + 50;

const options = z.object({
  domainPrefix: z.string().regex(/^[a-z0-9][a-z0-9-]*$/i, 'must be the store\'s domain prefix, the part before .retail.lightspeed.app (e.g. "mystore")').optional()
    .describe('The store\'s domain prefix: https://<domainPrefix>.retail.lightspeed.app'),
  registers: z.number().int('must be a whole number').min(1, 'must be at least 1').max(10_000).default(1)
    .describe('Registers on the account: the rate limit is 300 × registers + 50 requests per 5 minutes.'),
  token: z.string().min(1, 'must not be empty').optional()
    .describe('Shorthand for auth: {"bearer": …}; write "${LIGHTSPEED_TOKEN}".'),
});

export const lightspeedX: Preset<z.infer<typeof options>> = {
  name: 'lightspeed-x',
  description: 'Lightspeed Retail (X-Series) API 2.0',
  options,
  source(o, given) {
    if (given.baseUrl === undefined && o.domainPrefix === undefined) {
      return { problem: 'preset "lightspeed-x" needs "domainPrefix" (the part of your store\'s address before .retail.lightspeed.app) or "baseUrl"' };
    }
    if (given.auth === undefined && o.token === undefined) {
      return { problem: 'preset "lightspeed-x" needs a token: "token": "${LIGHTSPEED_TOKEN}" (or "auth": {"bearer": …})' };
    }
    return {
      kind: 'http',
      ...(o.domainPrefix !== undefined ? { baseUrl: `https://${o.domainPrefix}.retail.lightspeed.app${API_PATH}` } : {}),
      ...(o.token !== undefined ? { auth: { bearer: o.token } } : {}),
      rateLimit: { requests: lightspeedRequests(o.registers), perSeconds: LIGHTSPEED_WINDOW_SECONDS },
    };
  },
  endpoint: (name) => (Object.hasOwn(ENDPOINTS, name) ? structuredClone(ENDPOINTS[name]) : undefined),
  endpointNames: Object.keys(ENDPOINTS),
};
