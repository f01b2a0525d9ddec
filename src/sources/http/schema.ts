import { z } from 'zod';

// Secrets arrive here already substituted from ${ENV} by the config loader;
// to this module they are plain strings that must never be logged.

const nonEmpty = z.string().min(1, 'must not be empty');

/** A dotted path into a JSON body: `data.items`, `meta.next`, `lines.0.sku`. */
// Segments may hold spaces: Airtable field names do ("fields.Unit Price").
export const dottedPath = z.string().regex(/^[^.]*[^.\s][^.]*(\.[^.]*[^.\s][^.]*)*$/,
  'must be a dotted path such as "data.items" (no empty segments)');

const headerName = z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'must be a valid HTTP header name such as "X-Api-Key"');

export const httpAuth = z.union([
  z.object({ bearer: nonEmpty.describe('Token sent as "Authorization: Bearer …"; write "${MY_TOKEN}".') }).strict(),
  z.object({ basic: z.object({ username: nonEmpty, password: z.string() }).strict() }).strict(),
  z.object({ header: z.object({ name: headerName, value: nonEmpty }).strict() }).strict(),
  z.object({ query: z.object({ name: nonEmpty, value: nonEmpty }).strict() }).strict(),
], { error: 'auth must be one of {"bearer": …}, {"basic": {"username", "password"}}, {"header": {"name", "value"}} or {"query": {"name", "value"}}' });
export type HttpAuth = z.infer<typeof httpAuth>;

export const rateLimit = z.object({
  requests: z.number().int().positive().describe('Requests allowed per window, for every job and worker together.'),
  perSeconds: z.number().int().positive().max(86_400).describe('Window length in seconds (sliding).'),
}).strict();
export type RateLimit = z.infer<typeof rateLimit>;

export const retries = z.object({
  max: z.number().int().min(0).max(20).default(5).describe('Retries after a failed attempt (5xx, 408, reset, timeout, truncated body).'),
  baseMs: z.number().int().positive().default(500).describe('First backoff ceiling; doubles each attempt (full jitter).'),
  maxMs: z.number().int().positive().default(30_000).describe('Largest backoff between two attempts.'),
  rateLimited: z.number().int().min(0).max(1000).default(20)
    .describe('429 answers waited out (per Retry-After) before giving up; they do not use up "max".'),
}).strict();
export type Retries = z.infer<typeof retries>;

/**
 * What a redirect to another origin does. "same-origin" (the default)
 * refuses it: the source's credentials stay with the host they were written
 * for. "follow-without-credentials" follows it with none of the configured
 * headers, auth or secret query parameters.
 */
export const redirectPolicy = z.enum(['same-origin', 'follow-without-credentials'], {
  error: 'redirects must be "same-origin" or "follow-without-credentials"',
});
export type RedirectPolicy = z.infer<typeof redirectPolicy>;

export const httpSource = z.object({
  kind: z.literal('http'),
  baseUrl: z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL such as "https://shop.retail.lightspeed.app/api/2.0"' }),
  auth: httpAuth.optional(),
  rateLimit: rateLimit.optional(),
  timeoutMs: z.number().int().positive().max(600_000).default(30_000).describe('Per attempt, body included.'),
  retries: retries.default({ max: 5, baseMs: 500, maxMs: 30_000, rateLimited: 20 }),
  headers: z.record(headerName, z.string()).default({}),
  redirects: redirectPolicy.default('same-origin')
    .describe('A redirect to another host: "same-origin" refuses it (credentials stay with baseUrl\'s host); "follow-without-credentials" follows it without the configured headers, auth or secret query parameters.'),
  timeZone: z.string().optional().describe('Time zone of timestamps the API sends without an offset, e.g. "Pacific/Auckland" (default: UTC).'),
  maxPageSize: z.number().int().positive().optional()
    .describe('The most records the API returns in one page (Directus: QUERY_LIMIT_MAX): pages are asked no larger, so a shorter page is known to be the last.'),
  preset: z.string().min(1).optional().describe('Name of a preset whose defaults this source builds on (e.g. "lightspeed-x").'),
}).strict();
export type HttpSourceConfig = z.infer<typeof httpSource>;
export type HttpSourceInput = z.input<typeof httpSource>;

const paramName = nonEmpty;

export const pagination = z.discriminatedUnion('style', [
  z.object({
    style: z.literal('page'),
    param: paramName.default('page'),
    sizeParam: paramName.default('per_page'),
    size: z.number().int().positive().default(100),
    start: z.number().int().min(0).default(1).describe('Number of the first page (0 or 1 usually).'),
  }).strict(),
  z.object({
    style: z.literal('offset'),
    offsetParam: paramName.default('offset'),
    limitParam: paramName.default('limit'),
    limit: z.number().int().positive().default(100),
  }).strict(),
  z.object({
    style: z.literal('cursor'),
    param: paramName.describe('Query parameter that carries the token, e.g. "offset" for Airtable.'),
    cursorPath: dottedPath.describe('Where the next token is in the body; absent or null ends the crawl.'),
    sizeParam: paramName.optional(),
    size: z.number().int().positive().optional(),
  }).strict(),
  z.object({
    style: z.literal('next-link'),
    from: z.enum(['body', 'header']).describe('"header" reads the Link header\'s rel="next".'),
    path: dottedPath.optional().describe('Where the next URL is in the body (from: "body").'),
  }).strict().refine((p) => p.from === 'header' || p.path !== undefined,
    { message: 'next-link from "body" needs "path", the dotted path to the next URL such as "links.next"', path: ['path'] }),
  z.object({
    style: z.literal('version'),
    param: paramName.default('after'),
    versionPath: dottedPath.default('version.max'),
    sizeParam: paramName.optional(),
    size: z.number().int().positive().optional(),
  }).strict(),
  z.object({
    style: z.literal('keyset'),
    param: paramName.describe('Query parameter that asks for records whose key is past a value, e.g. "filter[id][_gt]" (Directus) or "since_id".'),
    keyPath: dottedPath.default('id').describe('Where each record holds the key the API sorts by; the last record\'s value goes into "param".'),
    sizeParam: paramName.optional(),
    size: z.number().int().positive().optional(),
  }).strict().describe('Keyset pagination: each page asks for the records after the last key seen, sorted by key (put the sort in params, e.g. "sort": "id"). Rows deleted or added during a crawl cannot shift the pages: recommended for mirrors.'),
  z.object({ style: z.literal('none') }).strict(),
], { error: 'pagination.style must be one of "page", "offset", "cursor", "next-link", "version", "keyset" or "none"' });
export type Pagination = z.infer<typeof pagination>;

export const httpEntityOptions = z.object({
  path: nonEmpty.describe('Path under baseUrl, e.g. "products".'),
  params: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()]).transform(String)).default({}),
  recordsPath: dottedPath.optional().describe('Where the record array is in the body; default: the body itself (or "data" for the version style).'),
  pagination: pagination.default({ style: 'none' }),
  fields: z.record(nonEmpty, dottedPath).optional().describe('{targetColumn: "path.in.record"}; unlisted columns map by the same name.'),
  totalPath: dottedPath.optional()
    .describe('Where each response reports how many records the whole listing has, e.g. "meta.filter_count" (Directus, with "meta": "filter_count" in params): a crawl whose count or total moves is not a complete snapshot.'),
  lookup: z.object({
    param: paramName.describe('Query parameter that filters by a list of keys, e.g. "filter[id][_in]".'),
    separator: z.string().min(1).default(','),
    batch: z.number().int().min(1).max(1000).default(100).describe('Keys asked for in one request.'),
  }).strict().optional()
    .describe('How to ask the API for chosen records by key: before a mirror crawled by offset or page deletes rows, it asks for exactly those keys, and any the API still has are merged instead.'),
  absent: z.enum(['keep', 'null']).default('keep')
    .describe('A mapped field missing from a record: "keep" (default) leaves the row\'s value alone, and a field missing from every record fails the run (schema drift); "null" reads it as empty (APIs that leave empty fields out, as Airtable does).'),
  optional: z.array(nonEmpty).optional()
    .describe('Columns whose field may be missing from every record without failing the run (their values are left alone).'),
}).strict();
export type HttpEntityOptions = z.infer<typeof httpEntityOptions>;
export type HttpEntityInput = z.input<typeof httpEntityOptions>;
