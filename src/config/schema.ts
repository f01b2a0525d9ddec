import { z } from 'zod';
import { dottedPath, httpEntityOptions, httpSource, redirectPolicy, type HttpSourceConfig } from '../sources/http/schema.js';
import { templateProblem } from '../sources/postgres/sql-text.js';

// Names reach SQL only through format('%I') or quoteIdent, so any character
// is safe; these limits only keep them printable and within Postgres' 63 bytes.
// Bytes, not characters: Postgres cuts a longer name to 63 bytes, and the
// cut name is then "a column that does not exist".
const MAX_IDENTIFIER_BYTES = 63;
const identifierTooLong = (s: string) =>
  `must be at most ${MAX_IDENTIFIER_BYTES} bytes in UTF-8 (a Postgres identifier; "é" takes 2) — this one has ${Buffer.byteLength(s)}: shorten it`;
const identifier = z.string().min(1, 'must not be empty')
  // .max (characters) stays for the JSON Schema; the byte count is the real limit.
  .max(MAX_IDENTIFIER_BYTES, { abort: true, error: (iss) => identifierTooLong(iss.input as string) })
  .refine((s) => Buffer.byteLength(s) <= MAX_IDENTIFIER_BYTES, { abort: true, error: (iss) => identifierTooLong(iss.input as string) })
  .refine((s) => !/[\u0000-\u001f]/.test(s), 'must not contain control characters');

/** `table`, `schema.table`, or {schema, table} for names that contain dots. */
export const tableRef = z.union([
  z.string().min(1).transform((s, ctx) => {
    const parts = s.split('.');
    if (parts.length > 2 || parts.some((p) => p === '')) {
      ctx.addIssue({ code: 'custom', message: `"${s}" is not "table" or "schema.table" — use {"schema": …, "table": …} for names containing dots` });
      return z.NEVER;
    }
    const long = parts.find((p) => Buffer.byteLength(p) > MAX_IDENTIFIER_BYTES);
    if (long) {
      ctx.addIssue({ code: 'custom', message: `"${long}" ${identifierTooLong(long)}` });
      return z.NEVER;
    }
    return parts.length === 2 ? { schema: parts[0], table: parts[1] } : { schema: 'public', table: parts[0] };
  }),
  z.object({ schema: identifier.default('public'), table: identifier }).strict(),
]);
export type TableRef = { schema: string; table: string };

const interval = (example: string) => z.string().regex(
  /^\s*\d+(\.\d+)?\s*(seconds?|minutes?|hours?|days?|weeks?|mins?|secs?|s|m|h|d)\s*$/i,
  `must be an interval such as "${example}"`);

const cron = z.string().regex(/^(\S+\s+){4}\S+$/, 'must be a five-field cron expression such as "*/5 * * * *" (UTC)');

export const postgresSource = z.object({
  kind: z.literal('postgres'),
  url: z.string().regex(/^(postgres(ql)?:\/\/|\$\{)/, 'must be a postgres:// connection string').optional()
    .describe('Connection string; put the password in the environment: "postgres://app:${REMOTE_PASSWORD}@db.example.com/app".'),
  database: identifier.optional()
    .describe('A database on the same server as Syncline\'s own (instead of url).'),
  demo: z.boolean().optional()
    .describe('Seeded with demo data by `npm start` when empty (the shipped example).'),
}).strict().refine((s) => (s.url === undefined) !== (s.database === undefined), {
  message: 'give exactly one of "url" (another server) or "database" (a database on Syncline\'s own server)',
});

export const csvSource = z.object({
  kind: z.literal('csv'),
  location: z.string().min(1).optional()
    .describe('Directory or base URL the entities\' files are relative to (default: the config file\'s directory). A published Google Sheet: its CSV export URL.'),
  delimiter: z.string().length(1, 'must be one character').default(','),
  quote: z.string().length(1, 'must be one character').default('"'),
  lineEnding: z.enum(['auto', 'lf', 'crlf', 'cr']).default('auto')
    .describe('What ends a record: "auto" (default) reads LF, CRLF and CR alike and treats a file that mixes them as possibly damaged (a mirror then deletes nothing); "lf", "crlf" or "cr" accept only that one.'),
  encoding: z.string().default('utf-8').refine((enc) => { try { new TextDecoder(enc); return true; } catch { return false; } },
    'is not an encoding this Node.js knows — use e.g. "utf-8", "windows-1252", "latin1"'),
  timeZone: z.string().optional()
    .describe('Time zone of timestamps written without an offset, e.g. "Europe/Berlin" (default: UTC).'),
  headers: z.record(z.string(), z.string()).optional().describe('HTTP headers for a URL (put tokens in ${ENV}).'),
  redirects: redirectPolicy.optional().describe('A redirect to another host: without "headers" it is followed (a published Google Sheet moves to googleusercontent.com); with them "same-origin" (the default) refuses it and "follow-without-credentials" follows it without the headers.'),
}).strict();

export const jsonlSource = z.object({
  kind: z.literal('jsonl'),
  location: z.string().min(1).optional()
    .describe('Directory or base URL the entities\' files are relative to (default: the config file\'s directory).'),
  encoding: z.string().default('utf-8').refine((enc) => { try { new TextDecoder(enc); return true; } catch { return false; } },
    'is not an encoding this Node.js knows — use e.g. "utf-8", "windows-1252", "latin1"'),
  timeZone: z.string().optional()
    .describe('Time zone of timestamps written without an offset, e.g. "Europe/Berlin" (default: UTC).'),
  headers: z.record(z.string(), z.string()).optional().describe('HTTP headers for a URL (put tokens in ${ENV}).'),
  redirects: redirectPolicy.optional().describe('A redirect to another host: without "headers" it is followed; with them "same-origin" (the default) refuses it and "follow-without-credentials" follows it without the headers.'),
}).strict().describe('A JSON-lines file: one JSON object a line; "columns" maps target columns to fields (dotted paths reach nested ones).');

export const source = z.discriminatedUnion('kind', [postgresSource, csvSource, httpSource, jsonlSource]);
export type SourceConfig = z.infer<typeof source>;
export type PostgresSourceConfig = z.infer<typeof postgresSource>;
export type CsvSourceConfig = z.infer<typeof csvSource>;
export type JsonlSourceConfig = z.infer<typeof jsonlSource>;
export type { HttpSourceConfig };

const overlap = z.union([
  z.number().nonnegative(),
  z.string().regex(/^\s*\d+(\.\d+)?\s*(microseconds?|milliseconds?|seconds?|minutes?|hours?|days?|weeks?|mins?|secs?|ms|s|m|h|d)\s*$/i,
    'must be an interval such as "5 minutes" (timestamp cursors) or a number (numeric cursors)'),
]);

// A batch is one remote transaction: past this it holds the remote's locks
// and WAL for long, and exactly-once needs nothing bigger.
const MAX_PUSH_BATCH = 1_000_000;
// More chunks than this gain nothing but a queue of jobs and source sessions
// each holding the same snapshot open.
const MAX_SNAPSHOT_CHUNKS = 64;

/** How a push entity picks, sends and retires local rows. */
export const pushOptions = z.object({
  syncedColumn: identifier.default('is_synchronized')
    .describe('A boolean NOT NULL column of the local table: false marks a row not pushed yet.'),
  orderBy: z.union([identifier.transform((c) => [c]), z.array(identifier).min(1)]).optional()
    .describe('Local NOT NULL column(s) the rows are pushed in, e.g. "recorded_at"; the local primary key breaks ties. Default: the key.'),
  batchSize: z.number().int().min(1).max(MAX_PUSH_BATCH).default(100)
    .describe('Rows a batch: each batch is one remote transaction, and leaves the local table only after it commits.'),
  afterPush: z.enum(['delete', 'mark']).default('delete')
    .describe('What happens to a row once the remote has committed it: "delete" it locally, or "mark" it (syncedColumn = true).'),
}).strict();
export type PushOptions = z.infer<typeof pushOptions>;

// Fields of a pull entity that mean nothing for a push entity, and why.
const PUSH_UNUSED: [string, string][] = [
  ['cursor', 'the rows to push are those whose push.syncedColumn is false'],
  ['tenant', 'a push sends every pending row of the local table'],
  ['softDelete', 'a push never deletes on the remote'],
  ['deletedWhen', 'a push never deletes on the remote'],
  ['deleteGuard', 'a push never deletes on the remote'],
  ['validate', 'the remote table\'s own constraints judge pushed rows'],
  ['version', 'a push only inserts rows the remote does not have'],
  ['verify', 'a push accounts for every row in sync.run'],
  ['diff', 'a push sends the rows not pushed yet, compared with nothing'],
  ['snapshot', 'a push sends the rows not pushed yet, never a snapshot of the remote'],
  ['schedule', 'push entities run in the edge cycle (`syncline edge`, or the sync_edge task)'],
  ['interval', 'push entities run in the edge cycle (`syncline edge --interval`)'],
  ['fullSchedule', 'push entities run in the edge cycle'],
];

export const entity = z.object({
  source: identifier.describe('Name of a source in "sources".'),
  direction: z.enum(['pull', 'push']).default('pull')
    .describe('"pull" (default): the source into the target. "push": rows of a local table (from) up to the source\'s table (target), exactly once (its mode is always "append"); see "push".'),
  from: z.union([
    z.object({ table: tableRef }).strict(),
    z.object({
      http: httpEntityOptions,
      nested: z.object({
        path: z.string().min(1).describe('Where each parent record holds its children, e.g. "line_items".'),
        parent: z.record(identifier, z.string().min(1)).describe('Child columns taken from the parent record: {"sale_id": "id"}.'),
        parentKey: z.array(identifier).min(1).optional()
          .describe('The child columns of "parent" that identify the parent (default: all of them); other parent columns (a version) are just copied.'),
      }).strict().describe('Children nested in each record of the endpoint (a sale\'s line items): every record is a parent whose child set is replaced as a whole.'),
    }).strict(),
    z.object({ http: httpEntityOptions.describe('An http source\'s endpoint: path, params ({{cursor}} becomes the cursor; a param holding {{cursor}} is left out on a first or full run), recordsPath, pagination, fields.') }).strict(),
    z.object({ file: z.string().min(1).describe('A csv or jsonl source\'s file: a path relative to the source\'s location, or a URL.') }).strict(),
    z.object({ query: z.string().min(1).describe('One SELECT (WITH, VALUES or TABLE), no other statement: it runs on a read-only session. {{tenant}} becomes the tenant value and {{cursor}} the cursor lower bound, as quoted literals; {{cursor}} is null on a first or --full run, so write ({{cursor}} is null or updated_at > {{cursor}}). Tenant and cursor filters are also applied around the query.') }).strict(),
  ]).describe('What to read on the source: a table, or a query template.'),
  target: tableRef.describe('The target table (yours; Syncline never creates it).'),
  key: z.array(identifier).min(1, 'needs at least one key column').describe('Target columns identifying a record.'),
  columns: z.union([
    z.array(identifier).min(1),
    z.record(identifier, identifier),
  ]).optional().describe('Target columns to sync: a list (same names on the source), or {target: sourceColumn}. Default: every target column the source also has.'),
  mode: z.enum(['mirror', 'upsert', 'append', 'soft-delete']).default('mirror'),
  tenant: z.object({ column: identifier, value: z.union([z.string(), z.number()]).transform(String) }).strict().optional()
    .describe('Restricts reads and deletes to one tenant.'),
  cursor: z.object({
    column: identifier,
    overlap: overlap.optional(),
    from: z.array(dottedPath).min(2, 'list two or more record fields, e.g. ["date_updated", "date_created"]; for one field map the column in from.http.fields')
      .refine((f) => new Set(f).size === f.length, 'names a field twice').optional()
      .describe('http sources: the column holds the latest of these record fields that are set (e.g. ["date_updated", "date_created"] when an API leaves date_updated empty on new records); the cursor is the highest such value.'),
  }).strict().optional()
    .describe('Incremental sync: fetch only rows whose column is past the last merged value (less overlap, for late commits).'),
  softDelete: z.object({ column: identifier }).strict().optional(),
  deletedWhen: z.object({ column: identifier }).strict().optional()
    .describe('A source column that marks a record deleted (an API\'s deleted_at): such a record deletes its row, even in an incremental run.'),
  dependsOn: z.union([z.literal('auto'), z.array(identifier)]).default([])
    .describe('Entities that must sync first: a list of names, or "auto" to take them from the foreign keys of the target table that point at other entities\' targets (resolved when the config is applied). Absent: none.'),
  schedule: cron.optional(),
  fullSchedule: cron.optional()
    .describe('When to run a full snapshot of an incremental entity: a cursor never sees deletions an API does not mark, a full run finds them.'),
  interval: interval('15 minutes').optional()
    .describe('Instead of "schedule": run every this long (at least 1 minute; minutes dividing an hour or hours dividing a day).'),
  enabled: z.boolean().default(true),
  freshness: interval('2 hours').optional()
    .describe('Raise a "stale" alert when the entity has had no successful run for this long.'),
  alerts: z.object({
    failures: z.number().int().min(1).max(100).default(3).describe('Consecutive failed runs that raise an alert.'),
    gapThreshold: z.number().int().min(0).default(0).describe('Source keys missing from the target above which a "gap" alert is raised.'),
    slowerThan: z.number().gt(1).default(3).describe('A run taking this many times the entity\'s recent median raises a "throughput" alert.'),
  }).strict().optional(),
  retry: z.object({
    limit: z.number().int().min(0).max(100).default(3).describe('Times a quarantined record is offered again before it stays quarantined.'),
    delay: interval('5 minutes').default('5 minutes').describe('Wait before a quarantined record is offered again.'),
  }).strict().optional(),
  capture: z.literal('log').optional()
    .describe('Postgres sources: read every insert, update and delete from the source\'s write-ahead log (logical replication, pgoutput) instead of re-reading the table. Needs wal_level = logical and a role WITH REPLICATION on the source; Syncline creates the publication and the slot syncline_<entity> (see README, "Log capture"). A worker polls the slot every log_poll_interval (1 second).'),
  diff: z.enum(['auto', 'off']).optional()
    .describe('How a full mirror or upsert run of a postgres source compares: "auto" (default) compares checksums of key-hash buckets on both sides and fetches only the records of buckets that differ, or everything when that is cheaper; "off" always fetches everything.'),
  snapshot: z.object({
    chunks: z.number().int().min(1).max(MAX_SNAPSHOT_CHUNKS)
      .describe('Block ranges a full read of the table is split into, read in parallel by the process running the run and by every worker with a free slot, all in one snapshot of the source; merged once. 1: one COPY.'),
    minRows: z.number().int().min(0).default(100_000)
      .describe('A table the source\'s planner estimates below this many rows is read in one piece (default 100000).'),
  }).strict().optional()
    .describe('Big postgres tables: a full read (first load, --full, a diff that fetches everything, "diff": "off") split into block-range chunks read by several workers in one exported snapshot of the source. Progress: sync.run.detail.chunks.'),
  verify: z.union([
    z.boolean(),
    z.object({
      every: interval('5m').describe('At most this often an incremental run verifies (default: the verify_every setting, 15 minutes).'),
    }).strict(),
  ]).optional()
    .describe('Verification: an incremental run compares source and target (key-hash checksums over the cursor range for a postgres source, counts otherwise) at most every verify_every, and re-syncs the keys that differ (sync.gaps). false turns it off; {"every": "5m"} sets this entity\'s interval.'),
  validate: z.object({
    required: z.array(identifier).optional().describe('Columns that must not be empty (null or blank).'),
    formats: z.record(identifier, z.string().refine((r) => { try { new RegExp(r); return true; } catch { return false; } }, 'is not a valid regular expression'))
      .optional().describe('Column → regular expression (POSIX, as Postgres ~ reads it) its value must match, e.g. {"seller_number": "^S[0-9]{6}$"}.'),
    allowed: z.record(identifier, z.array(z.union([z.string(), z.number(), z.boolean()]).transform(String)).min(1)).optional()
      .describe('Column → the values it may take.'),
    references: z.record(identifier, z.string().regex(/^[^.]+(\.[^.]+)?\.[^.]+$/, 'must be "table.column" or "schema.table.column"')).optional()
      .describe('Column → "schema.table.column" that must hold the value (a property record the seller refers to).'),
  }).strict().optional().describe('Rules checked before the merge: failing records are quarantined in sync.run_error with the reason; the rest merge.'),
  history: z.enum(['changes', 'keys']).optional()
    .describe('What sync.run_change keeps: "changes" (default) records every change per key, but an initial load into an empty target as one entry ("initial load, N rows", sync.run.detail.initial_load); "keys" also records each key an initial load inserted (slower, more WAL).'),
  version: z.object({ column: identifier }).strict().optional()
    .describe('A version or updated-at column: a source record older than the target\'s row is not applied, and the conflict is recorded.'),
  deleteGuard: z.union([
    z.literal(false),
    z.object({
      maxPercent: z.number().min(0).max(100).optional()
        .describe('Hold the deletes of a run that would delete more than this percentage of the entity\'s rows (default 50).'),
      maxRows: z.number().int().min(0).optional()
        .describe('Hold the deletes of a run that would delete more than this many rows (default: no limit by count).'),
    }).strict(),
  ]).optional().describe('Mirror and soft-delete runs hold large deletes for confirmation (`syncline sync <entity> --confirm-deletes`, or select sync.confirm_deletes(run_id)); a run that would delete every row is always held. false turns the guard off.'),
  push: pushOptions.optional()
    .describe('For "direction": "push": "from" is the local table, "target" the table on the source\'s server, "key" its natural key (it needs a unique index there); pending rows go up in ordered batches.'),
}).strict().superRefine((e, ctx) => {
  if (e.schedule && e.interval) {
    ctx.addIssue({ code: 'custom', path: ['interval'], message: 'give "schedule" (cron) or "interval", not both' });
  }
  if (e.mode === 'soft-delete' && !e.softDelete) {
    ctx.addIssue({ code: 'custom', path: ['softDelete'], message: 'mode "soft-delete" needs softDelete: {"column": "deleted_at"}' });
  }
  const mapped = e.columns === undefined ? undefined : Array.isArray(e.columns) ? e.columns : Object.keys(e.columns);
  for (const k of e.key) {
    if (mapped && !mapped.includes(k)) {
      ctx.addIssue({ code: 'custom', path: ['key'], message: `key column "${k}" is not among "columns" — add it there` });
    }
  }
  if ('nested' in e.from && Object.keys(e.from.nested.parent).length > 1 && !e.from.nested.parentKey) {
    ctx.addIssue({ code: 'custom', path: ['from', 'nested', 'parentKey'],
      message: '"parent" copies several columns: name the ones that identify the parent in "parentKey", e.g. ["sale_id"] (a copied version would make a changed parent look like another)' });
  }
  if ('query' in e.from && e.from.query.includes('{{cursor}}') && !e.cursor) {
    ctx.addIssue({ code: 'custom', path: ['from', 'query'], message: '{{cursor}} needs a "cursor" on the entity — add cursor: {"column": …} or remove the placeholder' });
  }
  if (e.snapshot && e.direction !== 'push' && !('table' in e.from)) {
    ctx.addIssue({ code: 'custom', path: ['snapshot'],
      message: '"snapshot" splits a postgres table into block ranges: it needs "from": {"table": …} — remove it for a query, http or file entity' });
  }
  checkPush(e, ctx);
  checkCapture(e, ctx);
// A push only ever adds rows the remote lacks: its mode is "append". Should a
// pull run ever be started on it, append never deletes or updates the local
// table (mirror would delete the rows not yet pushed).
}).transform((e) => (e.direction === 'push' ? { ...e, mode: 'append' as const } : e));

/** Log capture reads a table's changes; a cursor or a query means nothing to it. */
function checkCapture(e: { capture?: string; from: object; cursor?: unknown; direction: string }, ctx: z.RefinementCtx): void {
  if (e.capture !== 'log') return;
  if (!('table' in e.from)) {
    ctx.addIssue({ code: 'custom', path: ['capture'], message: 'log capture reads a table\'s changes: use "from": {"table": …} with a postgres source, or remove "capture"' });
  }
  if (e.cursor) {
    ctx.addIssue({ code: 'custom', path: ['cursor'], message: 'log capture reads every change in commit order, no cursor needed — remove "cursor"' });
  }
  if (e.direction === 'push') {
    ctx.addIssue({ code: 'custom', path: ['capture'], message: 'log capture is for pull entities — remove "capture"' });
  }
}

/** A push entity reads a local table and has none of the pull-only fields. */
function checkPush(e: { direction: string; mode: string; push?: unknown; from: object; dependsOn: string[] | 'auto' } & Record<string, unknown>, ctx: z.RefinementCtx): void {
  if (e.push !== undefined && e.direction !== 'push') {
    ctx.addIssue({ code: 'custom', path: ['push'], message: '"push" applies to "direction": "push" only — add the direction or remove "push"' });
  }
  if (e.direction !== 'push') return;
  if (!('table' in e.from)) {
    ctx.addIssue({ code: 'custom', path: ['from'], message: 'a push entity reads a local table: use "from": {"table": "readings"}' });
  }
  if (e.mode === 'upsert' || e.mode === 'soft-delete') {
    ctx.addIssue({ code: 'custom', path: ['mode'], message: 'a push only inserts rows the remote does not have (mode "append") — remove "mode"' });
  }
  for (const [field, why] of PUSH_UNUSED) {
    if (e[field] !== undefined) ctx.addIssue({ code: 'custom', path: [field], message: `does not apply to a push entity (${why}) — remove it` });
  }
  if (e.dependsOn.length) {
    ctx.addIssue({ code: 'custom', path: ['dependsOn'], message: 'a push entity runs first in the edge cycle and depends on nothing — remove "dependsOn"' });
  }
}
export type EntityConfig = z.infer<typeof entity>;

const alerting = z.object({
  email: z.object({
    smtp: z.string().regex(/^(smtps?:\/\/|\$\{)/, 'must be an smtp:// or smtps:// URL, e.g. "smtp://alerts:${SMTP_PASSWORD}@mail.example.com:587"'),
    from: z.string().min(3).describe('Sender address, e.g. "Syncline <syncline@example.com>".'),
    to: z.array(z.string().min(3)).min(1, 'needs at least one recipient'),
  }).strict().optional(),
  webhook: z.object({
    url: z.string().regex(/^(https?:\/\/|\$\{)/, 'must be an http(s):// URL'),
    headers: z.record(z.string(), z.string()).optional().describe('Put tokens in ${ENV}.'),
  }).strict().optional(),
  perHour: z.number().int().min(1).max(60).default(1).describe('E-mails at most per alert kind per entity per hour.'),
}).strict();

// A shorter bearer token is guessable; 16 characters of base64 are 96 bits.
export const MIN_API_TOKEN_LENGTH = 16;
export const DEFAULT_API_PORT = 8377;

/** The operator API and dashboard (`syncline serve`, and `npm start` beside the worker). */
export const serverOptions = z.object({
  host: z.string().min(1).default('127.0.0.1')
    .describe('Address to listen on (default 127.0.0.1). A non-loopback address needs a token.'),
  port: z.number().int().min(0).max(65535).default(DEFAULT_API_PORT)
    .describe(`TCP port (default ${DEFAULT_API_PORT}; 0 picks a free one).`),
  token: z.string().refine((t) => t === '' || t.length >= MIN_API_TOKEN_LENGTH,
    `must be at least ${MIN_API_TOKEN_LENGTH} characters — generate one, e.g. \`openssl rand -base64 24\``).optional()
    .describe('Bearer token required by /api and /metrics; keep it in the environment: "${SYNCLINE_API_TOKEN}". Absent or empty: the SYNCLINE_API_TOKEN variable, else a token generated at start (loopback only).'),
  withWorker: z.boolean().default(true)
    .describe('`syncline worker` (what `npm start` runs) also serves the API and dashboard (default true).'),
}).strict();
export type ServerConfig = z.infer<typeof serverOptions>;

export const config = z.object({
  $schema: z.string().optional(),
  database: identifier.optional()
    .describe('The database on the embedded server this config keeps its entities, runs and alerts in (default "syncline"): the demo and each example have their own, so none touches another\'s entities. Ignored when DATABASE_URL is set.'),
  server: serverOptions.optional().describe('The operator API and dashboard: address, port, bearer token.'),
  alerts: alerting.optional().describe('Where alerts go besides sync.alert: e-mail over SMTP and a webhook.'),
  retention: interval('90 days').optional().describe('How long run logs, changes, errors and closed alerts are kept (default 90 days; written to sync.setting \'retention\', where a DBA may change it with UPDATE).'),
  sources: z.record(identifier, source),
  entities: z.record(z.string().min(1).max(100).refine((s) => !/[\u0000-\u001f]/.test(s), 'must not contain control characters'), entity),
}).strict().superRefine((c, ctx) => {
  for (const [name, e] of Object.entries(c.entities)) {
    // An unknown source or dependsOn name is referenceProblems' (references.ts) to report.
    const src = Object.hasOwn(c.sources, e.source) ? c.sources[e.source] : undefined;
    if ((src?.kind === 'csv' || src?.kind === 'jsonl') && !('file' in e.from)) {
      ctx.addIssue({ code: 'custom', path: ['entities', name, 'from'], message: `source "${e.source}" is a ${src.kind} source: use "from": {"file": "name.${src.kind}"}` });
    }
    if (src?.kind === 'postgres' && 'file' in e.from) {
      ctx.addIssue({ code: 'custom', path: ['entities', name, 'from'], message: `source "${e.source}" is a postgres source: use "from": {"table": …} or {"query": …}` });
    }
    if (src?.kind === 'http' && !('http' in e.from)) {
      ctx.addIssue({ code: 'custom', path: ['entities', name, 'from'], message: `source "${e.source}" is an http source: use "from": {"http": {"path": …, "pagination": …}}` });
    }
    if (src?.kind !== 'http' && 'http' in e.from) {
      ctx.addIssue({ code: 'custom', path: ['entities', name, 'from'], message: `source "${e.source}" is not an http source: "from": {"http": …} needs one` });
    }
    if (e.cursor?.from && src && src.kind !== 'http') {
      ctx.addIssue({ code: 'custom', path: ['entities', name, 'cursor', 'from'],
        message: `cursor.from reads record fields of an http source; source "${e.source}" is a ${src.kind} source — for a postgres source compute the column in from.query (greatest(updated_at, created_at) as changed_at)` });
    }
    if (e.cursor?.from && 'http' in e.from && e.from.http.fields?.[e.cursor.column] !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['entities', name, 'from', 'http', 'fields', e.cursor.column],
        message: `column "${e.cursor.column}" is filled from cursor.from, so it must not also be mapped in from.http.fields — remove one of the two` });
    }
    if (e.snapshot && src && src.kind !== 'postgres') {
      ctx.addIssue({ code: 'custom', path: ['entities', name, 'snapshot'], message: `"snapshot" splits a postgres table; source "${e.source}" is a ${src.kind} source — remove it` });
    }
    if ((src?.kind === 'csv' || src?.kind === 'jsonl') && e.cursor) {
      ctx.addIssue({ code: 'custom', path: ['entities', name, 'cursor'], message: `a ${src.kind} file is read whole on every run: remove "cursor"` });
    }
    // Here and not in the entity schema: a definition written into sync.entity
    // by hand meets the run's own defenses (sourceColumns, copyFromSource).
    const queryProblem = 'query' in e.from ? templateProblem(e.from.query) : null;
    if (queryProblem) ctx.addIssue({ code: 'custom', path: ['entities', name, 'from', 'query'], message: queryProblem });
    (e.dependsOn === 'auto' ? [] : e.dependsOn).forEach((d, i) => {
      if (Object.hasOwn(c.entities, d) && c.entities[d].direction === 'push') {
        ctx.addIssue({ code: 'custom', path: ['entities', name, 'dependsOn', i],
          message: `entity "${d}" is a push entity: the edge cycle pushes before it pulls, so nothing needs to depend on it — remove it` });
      }
    });
  }
  const cycle = findCycle(Object.fromEntries(Object.entries(c.entities).map(([n, e]) => [n, e.dependsOn === 'auto' ? [] : e.dependsOn])));
  if (cycle) {
    ctx.addIssue({ code: 'custom', path: ['entities', cycle[0], 'dependsOn'],
      message: `dependency cycle: ${cycle.join(' → ')} — remove one of these dependsOn entries` });
  }
});
export type Config = z.infer<typeof config>;
export type AlertingConfig = z.infer<typeof alerting>;

/** The first cycle in a dependency graph, as a closed path, or null. */
export function findCycle(graph: Record<string, string[]>): string[] | null {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string): string[] | null => {
    if (state.get(n) === 'done') return null;
    if (state.get(n) === 'open') return [...stack.slice(stack.indexOf(n)), n];
    state.set(n, 'open');
    stack.push(n);
    for (const d of graph[n] ?? []) {
      const found = Object.hasOwn(graph, d) ? visit(d) : null;
      if (found) return found;
    }
    stack.pop();
    state.set(n, 'done');
    return null;
  };
  for (const n of Object.keys(graph)) {
    const found = visit(n);
    if (found) return found;
  }
  return null;
}

/** Entities in an order where each comes after what it depends on. */
export function topoOrder(graph: Record<string, string[]>, selection: string[] = Object.keys(graph)): string[] {
  const wanted = new Set(selection);
  const out: string[] = [];
  const seen = new Set<string>();
  const visit = (n: string) => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const d of graph[n] ?? []) visit(d);
    if (wanted.has(n)) out.push(n);
  };
  for (const n of [...selection].sort()) visit(n);
  return out;
}
