import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { from as copyFrom } from 'pg-copy-streams';
import type { EntityConfig, HttpSourceConfig } from '../../config/schema.js';
import { copyLine } from '../../db/copy.js';
import { quoteIdent } from '../../db/database.js';
import { inClientTransaction, type PoolClient } from '../../db/pool.js';
import { log } from '../../log.js';
import type { PlanInput, PlannedRun, SourceEnv, Staged, StageRun } from '../port.js';
import { RawWriter, type RawRecord } from '../raw-writer.js';
import { castRaw, castTyped, doubt, rawTable, typedPagesTable, wouldDelete } from '../staging.js';
import { PageWriter } from '../typed-writer.js';
import { recordReader, toText, type MappedRecord } from './fields.js';
import { apiCursor, cursorReader, withCursor, withCursorColumn } from './cursor.js';
import { compareVersions, paginate, type PageState } from './paginate.js';
import { getPath } from './path.js';
import type { HttpEntityOptions, Pagination } from './schema.js';
import { CrawlWatch, checkDrift, proveOffsetDeletes } from './snapshot.js';
import { recordHttpDetail } from './ratelimit.js';
import { httpSourceClient } from './source.js';

export { withCursor } from './cursor.js';

/**
 * A run of an entity on an http source: page by page, each page's records
 * COPYed typed into the run's typed pages (a page the database refuses goes
 * to the text staging instead) and the state to resume after it saved in
 * sync.run.detail in the same transaction, fetching page n+1 while page n is
 * written. Then sync.cast_typed (casting only the text pages, keeping the
 * last copy of a record an API sent twice) and the merge, once, at the end.
 */
export async function planHttpRun(input: PlanInput): Promise<PlannedRun> {
  const { env, name, def, opts, cursor } = input;
  const src = env.config.sources[def.source] as HttpSourceConfig;
  const { http, nested } = def.from as { http: HttpEntityOptions; nested?: Nested };
  const fields = recordFields(def, http);
  const parentColumns = nested ? Object.keys(nested.parent) : [];
  const parentKey = nested?.parentKey ?? parentColumns;
  const listed = Array.isArray(def.columns) ? def.columns
    : def.columns ? Object.keys(def.columns) : (await input.targetColumns()).map((c) => c.attname);
  const columns = [...listed, ...parentColumns.filter((c) => !listed.includes(c))];
  const parent = nested ? await feedingParent(env, def, http) : null;
  const feeds = parent && !opts.full && !opts.window && !opts.keys ? await parentFeeds(env, name, parent.name) : null;
  // Cast and merge a nested entity's staged records: each parent seen has its child set replaced.
  const nestedMerge = (target: PoolClient, runId: number, cast: boolean): Staged => ({
    cast: cast ? { timeZone: src.timeZone, keepLast: http.pagination.style === 'version' } : undefined,
    beforeMerge: async () => {
      await target.query(`update sync.run set detail = detail || jsonb_build_object('parent_scope', $2::jsonb) where id = $1`,
        [runId, JSON.stringify(parentKey)]);
    },
    afterMerge: async () => {
      await target.query('select sync.drop_spent_feeds()');
    },
  });
  const stage = async (run: StageRun): Promise<Staged> => {
    const { target, runId } = run;
    if (nested && feeds) {
      await feedNested({ run, feeds, columns, fields, nested, parentKey, keepAbsent: http.absent === 'keep' });
      if (http.absent === 'keep') await checkDrift(target, runId, name, http.optional ?? [], fields);
      return nestedMerge(target, runId, true);
    }
    const incremental = def.cursor && !opts.full && !opts.window && !opts.keys && cursor !== null
      ? await apiCursor(env.pool, def, cursor, await cursorType(input, def.cursor.column)) : null;
    const window = opts.window ? backfillWindow(def, http, opts.window) : null;
    const endpoint = withPageCap(withCursor(http, incremental, window?.params ?? null), src.maxPageSize);
    const client = httpSourceClient(def.source, src, env.pool);
    const keepAbsent = http.absent === 'keep';
    const read = withCursorColumn(def, columns, fields, recordReader(columns, fields));
    const map = nested ? nestedMapper(columns, fields, nested, keepAbsent)
      : ((r2) => (r: unknown) => [{ ...r2(r), raw: r }])(absentAware(read, keepAbsent));
    const synced = parent ? await parentsSyncedUpTo(env, runId, parent) : null;
    const children = nested || opts.dryRun || opts.keys ? [] : await nestedChildren(env, name, def, http);
    // Only a whole listing can be checked against the total the API reports.
    const watch = new CrawlWatch(endpoint.pagination, !incremental && !window && !nested && !opts.keys);
    await run.fetchPhase(async (signal) => {
      const resumed = await adoptPages(target, runId, columns, endpoint.pagination);
      const raw = resumed ? rawTable(runId)
        : (await target.query('select sync.create_raw_staging($1) as raw', [runId])).rows[0].raw as string;
      // Records kept for nested entities (sync.keep_feed) are read from the text staging, so those crawls stay text.
      const typed = children.length ? null : await typedPages(target, runId, Boolean(resumed));
      const writer = new PageWriter(target, typed, columns, new RawWriter(target, raw, columns, def.key), src.timeZone);
      const parents = nested ? await parentsTable(target, runId, parentKey, !resumed) : null;
      const after = window ? window.after : incremental;
      const resumeFrom = resumed ? resumed.resume ?? undefined
        : endpoint.pagination.style === 'version' && after !== null
          ? { style: 'version' as const, index: 0, after } : undefined;
      let line = resumed?.records ?? 0;
      if (resumed) watch.resumed();
      // Resumed after the last page was saved: everything is fetched already.
      const pages = resumed && resumed.resume === null ? [] : paginate(client, endpoint,
        { resumeFrom, signal, entity: name, sizeHonored: src.maxPageSize !== undefined });
      // Page n is written while page n+1 is fetched and mapped: one write at a time on the connection.
      let writing: Promise<void> = Promise.resolve();
      try {
        for await (const page of pages) {
          watch.page(page);
          const staged: RawRecord[] = [];
          // Children only of parents their own entity has merged: a sale rung up
          // after the sales run would otherwise bring line items with no sale.
          const inWindow = window ? page.records.filter(window.keeps) : page.records;
          const records = synced ? inWindow.filter(synced) : inWindow;
          for (const [i, r] of records.entries()) {
            for (const m of map(r)) staged.push({ line: ++line, ...m });
            // Let timers run now and then: the next page's request must leave on its reserved slot.
            if (i % YIELD_EVERY === YIELD_EVERY - 1) await new Promise((resolve) => setImmediate(resolve));
          }
          await writing;
          const upTo = line;
          writing = inClientTransaction(target, async () => {
            // A commit lost in a crash only means fetching that page again: no need to wait for the disk.
            await target.query('set local synchronous_commit to off');
            await writer.write(staged);
            if (parents && nested && records.length) {
              const keys = records.map((p) => copyLine(parentKey.map((c) => toText(getPath(p, nested.parent[c])))));
              await pipeline(Readable.from(keys), target.query(copyFrom(`copy ${parents} from stdin`)));
            }
            await target.query(
              `update sync.run set detail = detail || jsonb_build_object('resume', $2::jsonb, 'pages', $3::int, 'records', $4::int,
                                                                         'typed_pages', $5::int, 'text_pages', $6::int)
                where id = $1`, [runId, JSON.stringify(page.next), page.page, upTo, writer.typedPages, writer.textPages]);
          }).then(() => opts.onProgress?.({ entity: name, runId, phase: 'fetch', rows: upTo, bytes: 0, pages: page.page }));
          writing.catch(() => {}); // awaited before the next page's write or after the last
          // A backfill chunk ends where its window does: versions only grow.
          if (window && inWindow.length < page.records.length) break;
        }
      } finally {
        // Whatever ended the crawl, the connection is free again only when the last write has ended.
        await writing.catch(() => {});
      }
      await writing;
      // Every page is in: a run failing after this (drift, cast, merge) leaves nothing to resume, its pages are fetched again.
      await target.query(`update sync.run set detail = detail || '{"resume": null}'::jsonb where id = $1`, [runId]);
      for (const d of watch.doubts()) await doubt(target, runId, d);
    });
    await recordHttpDetail(target, runId, client);
    if (keepAbsent) await checkDrift(target, runId, name, http.optional ?? [], fields);
    if (children.length) await target.query('select sync.keep_feed($1, $2)', [runId, children]);
    const keepLast = endpoint.pagination.style === 'version';
    if (nested) {
      await castTyped(target, runId, src.timeZone, keepLast);
      return nestedMerge(target, runId, false);
    }
    const deleting = wouldDelete(def, opts);
    if (deleting) await watch.checkRepeats(target, runId, def.key);
    await castTyped(target, runId, src.timeZone, keepLast);
    return {
      beforeMerge: deleting ? async () => {
        await proveOffsetDeletes({ target, runId, def, http: endpoint, client, fields,
          stage: (found: unknown[]) => stageFound(target, runId, columns, def.key, found, map, src.timeZone) });
      } : undefined,
    };
  };
  return {
    targetColumns: columns,
    sourceColumns: columns.map((c) => fields[c] ?? c),
    sourceKeyUnique: false,
    countable: !nested,
    stage,
  };
}

/**
 * A nested entity's records taken from the records its parent entity's runs
 * kept (sync.feed_nested): exploded in SQL, no request to the API.
 */
async function feedNested(a: { run: StageRun;
  feeds: number[]; columns: string[]; fields: Record<string, string>; nested: Nested; parentKey: string[]; keepAbsent: boolean }): Promise<void> {
  const { target, runId, opts, name } = a.run;
  const { nested } = a;
  await a.run.fetchPhase(async () => {
    await target.query('select sync.create_raw_staging($1)', [runId]);
    await parentsTable(target, runId, a.parentKey, true);
    const spec = {
      path: nested.path,
      columns: a.columns.map((c) => nested.parent[c] !== undefined
        ? { column: c, path: nested.parent[c], parent: true } : { column: c, path: a.fields[c] ?? c, parent: false }),
      parentKey: a.parentKey.map((c) => ({ column: c, path: nested.parent[c] })),
      keepAbsent: a.keepAbsent,
    };
    const { rows } = await target.query('select sync.feed_nested($1, $2, $3) as n', [runId, a.feeds, JSON.stringify(spec)]);
    log.debug({ entity: name, runId, feeds: a.feeds, records: rows[0].n }, 'nested records taken from the parent\'s runs');
    opts.onProgress?.({ entity: name, runId, phase: 'fetch', rows: Number(rows[0].n), bytes: 0 });
  });
}

/** The runs of the parent entity whose kept records this nested entity takes; null when it must crawl. */
async function parentFeeds(env: SourceEnv, name: string, parent: string): Promise<number[] | null> {
  const { rows } = await env.pool.query('select sync.parent_feeds($1, $2) as feeds', [name, parent]);
  return rows[0].feeds === null ? null : (rows[0].feeds as string[]).map(Number);
}

/** Entities nested in this one's records (same source and endpoint, depending on it): its records feed them. */
async function nestedChildren(env: SourceEnv, name: string, def: EntityConfig, http: HttpEntityOptions): Promise<string[]> {
  const { rows } = await env.pool.query<{ name: string; definition: EntityConfig }>(
    'select name, definition from sync.entity where $1 = any(depends_on) and enabled order by name', [name]);
  return rows.filter((r) => {
    const from = r.definition.from as { http?: HttpEntityOptions; nested?: unknown };
    return r.definition.source === def.source && from.nested && from.http?.path === http.path;
  }).map((r) => r.name);
}

/**
 * The entity a nested entity's records come nested in: a dependency on the
 * same source and endpoint whose own records are not nested. Null when none.
 */
async function feedingParent(env: SourceEnv, def: EntityConfig, http: HttpEntityOptions) {
  for (const dep of def.dependsOn) {
    const parent = await env.loadEntity(dep);
    const from = parent.def.from as { http?: HttpEntityOptions; nested?: unknown };
    if (parent.def.source === def.source && from.http && !from.nested && from.http.path === http.path) {
      return { name: dep, ...parent, http: from.http };
    }
  }
  return null;
}

interface Nested {
  path: string;
  parent: Record<string, string>;
  parentKey?: string[];
}

/** Each parent record → its nested children, each with the parent's columns (sale_id ← the sale's id). */
function nestedMapper(columns: string[], fields: Record<string, string>, nested: Nested, keepAbsent: boolean) {
  const child = absentAware(recordReader(columns, fields), keepAbsent);
  const fromParent = columns.map((c) => nested.parent[c]);
  return (parent: unknown) => {
    const items = getPath(parent, nested.path);
    return (Array.isArray(items) ? items : []).map((item) => {
      const { values, absent } = child(item);
      fromParent.forEach((p, i) => { if (p !== undefined) values[i] = toText(getPath(parent, p)); });
      const own = absent?.filter((c) => nested.parent[c] === undefined);
      return { values, absent: own?.length ? own : undefined, raw: item };
    });
  };
}

/** With absent: "null" (an API that leaves empty fields out) a missing field is simply null. */
function absentAware(read: (r: unknown) => MappedRecord, keepAbsent: boolean): (r: unknown) => MappedRecord {
  return keepAbsent ? read : (r) => ({ values: read(r).values });
}

/** Records found by a lookup, staged and typed after the crawl's own (their lines follow on). */
async function stageFound(target: PoolClient, runId: number, columns: string[], key: string[], found: unknown[],
  map: (r: unknown) => (MappedRecord & { raw: unknown })[], timeZone: string | undefined): Promise<void> {
  const { rows } = await target.query('select sync.create_raw_staging($1) as raw', [runId]);
  const { rows: [n] } = await target.query<{ lines: number }>(
    `select coalesce((detail ->> 'records')::int, 0) as lines from sync.run where id = $1`, [runId]);
  let line = n.lines;
  const staged = found.flatMap((r) => map(r).map((m) => ({ line: ++line, ...m })));
  await inClientTransaction(target, () => new RawWriter(target, rows[0].raw, columns, key).write(staged));
  await castRaw(target, runId, timeZone, false);
}

/**
 * What a backfill chunk [from, to) reads. An endpoint with {{from}} / {{to}}
 * in its params asks the API for the range (an updated-since filter); a
 * version-paginated one starts after from - 1 and stops at the first version
 * past the window.
 */
function backfillWindow(def: EntityConfig, http: HttpEntityOptions, w: { from: string; to: string }) {
  if (Object.values(http.params).some((v) => v.includes('{{from}}') || v.includes('{{to}}'))) {
    return { after: null, keeps: () => true, params: { from: apiTime(w.from), to: apiTime(w.to) } };
  }
  if (http.pagination.style !== 'version' || !def.cursor || !/^\d+$/.test(w.from) || !/^\d+$/.test(w.to)) {
    throw new Error('a backfill of an http entity needs the API to filter by the range or to page by version: '
      + 'put {{from}} and {{to}} in from.http.params (e.g. "updated_since": "{{from}}", "updated_before": "{{to}}"), '
      + 'or use version pagination with a numeric version cursor');
  }
  const cursorOf = cursorReader(def, recordFields(def, http));
  return {
    after: (BigInt(w.from) - 1n).toString(),
    keeps: (r: unknown) => {
      const v = cursorOf(r);
      return v !== null && compareVersions(v, w.to) < 0;
    },
    params: null,
  };
}

/** Target column → the record path it reads: the endpoint's fields, else the entity's column mapping. */
function recordFields(def: EntityConfig, http: HttpEntityOptions): Record<string, string> {
  return { ...(def.columns && !Array.isArray(def.columns) ? def.columns : {}), ...http.fields };
}

/** The target type of the cursor column, as format_type spells it. */
async function cursorType(input: PlanInput, column: string): Promise<string> {
  const found = (await input.targetColumns()).find((c) => c.attname === column);
  if (!found) {
    throw new Error(`the cursor column "${column}" of entity "${input.name}" is not a column of its target table — `
      + 'add the column (it holds the value runs continue from) or name an existing one in cursor.column');
  }
  return found.type;
}

/**
 * The endpoint asking for pages no larger than the API gives (the source's
 * maxPageSize): a short page then really is the last, and a lookup batch
 * fits in one answer.
 */
export function withPageCap(http: HttpEntityOptions, max: number | undefined): HttpEntityOptions {
  if (max === undefined) return http;
  const p = http.pagination;
  const pagination: Pagination = p.style === 'page' ? { ...p, size: Math.min(p.size, max) }
    : p.style === 'offset' ? { ...p, limit: Math.min(p.limit, max) }
      : (p.style === 'cursor' || p.style === 'version' || p.style === 'keyset') && p.size !== undefined ? { ...p, size: Math.min(p.size, max) }
        : p;
  const lookup = http.lookup ? { ...http.lookup, batch: Math.min(http.lookup.batch, max) } : undefined;
  return { ...http, pagination, ...(lookup ? { lookup } : {}) };
}

/** A chunk bound as an API wants it: a Postgres timestamp in ISO 8601 UTC, anything else as it is. */
function apiTime(value: string): string {
  if (!/^\d{4}-\d\d-\d\d[ T]\d\d:\d\d/.test(value)) return value;
  const t = new Date(value.replace(' ', 'T').replace(/([+-]\d\d)$/, '$1:00'));
  return Number.isNaN(t.getTime()) ? value : t.toISOString().replace('.000Z', 'Z');
}

/**
 * A nested entity crawling the API itself: a filter keeping the parent
 * records its parent entity has already merged, by that entity's cursor
 * (null without one). The parent's last run is noted in the run
 * (parents_upto): the records of later parent runs feed the next run.
 */
async function parentsSyncedUpTo(env: SourceEnv, runId: number,
  parent: { name: string; def: EntityConfig; http: HttpEntityOptions }): Promise<((r: unknown) => boolean) | null> {
  const { rows } = await env.pool.query(
    `with p as (
       select e.cursor_value, (select max(r.id) from sync.run r
                                where r.entity = e.name and r.status in ('succeeded', 'partial') and not r.dry_run) as upto
         from sync.entity e where e.name = $2)
     update sync.run set detail = detail || jsonb_strip_nulls(jsonb_build_object('parents_upto', p.upto))
       from p where id = $1 returning p.cursor_value`, [runId, parent.name]);
  if (!parent.def.cursor) return null;
  const cursorOf = cursorReader(parent.def, recordFields(parent.def, parent.http));
  const upTo = rows[0]?.cursor_value as string | null;
  return (r) => {
    const v = cursorOf(r);
    return upTo !== null && v !== null && compareVersions(v, upTo) <= 0;
  };
}

/** The keys of every parent record a run saw (with or without children): the scope of its child deletes. */
async function parentsTable(target: PoolClient, runId: number, columns: string[], create: boolean): Promise<string> {
  const name = `sync_staging.${quoteIdent(`run_${runId}_parents`)}`;
  if (create) await target.query(`create unlogged table ${name} (${columns.map((c) => `${quoteIdent(c)} text`).join(', ')})`);
  else await target.query(`create unlogged table if not exists ${name} (${columns.map((c) => `${quoteIdent(c)} text`).join(', ')})`);
  return name;
}

// Records mapped between two turns of the event loop.
const YIELD_EVERY = 200;

/**
 * The pages an interrupted run of the entity fetched, taken over by this run
 * (sync.adopt_raw), with where to go on: `resume` null means every page was
 * fetched. Pages fetched for other columns, or by another pagination (a
 * page size changed: page n is other records now), are dropped: this run
 * starts over.
 */
async function adoptPages(target: PoolClient, runId: number, columns: string[], pagination: Pagination):
  Promise<{ resume: PageState | null; records: number } | null> {
  const { rows } = await target.query('select sync.adopt_raw($1) as a', [runId]);
  const adopted = rows[0].a as { resume: PageState | null; records: number | null; run_id: number } | null;
  if (!adopted) return null;
  const { rows: cols } = await target.query<{ name: string }>(
    `select attname as name from pg_attribute where attrelid = $1::regclass and attnum > 0 and not attisdropped order by attnum`,
    [rawTable(runId)]);
  const expected = ['_sl_line', ...columns, '_sl_raw', '_sl_error', '_sl_absent'];
  // Typed pages must still have the staging's types (the target may have changed in between).
  const typed = await columnsOf(target, typedPagesTable(runId));
  const staging = (await columnsOf(target, `sync_staging.${quoteIdent(`run_${runId}`)}`))?.filter((c) => c !== '_sl_quarantined boolean') ?? [];
  if (cols.map((c) => c.name).join('\u0000') !== expected.join('\u0000')
    || (typed && typed.join('\u0000') !== [...staging, '_sl_line bigint', '_sl_absent text[]'].join('\u0000'))
    || (adopted.resume && !continues(adopted.resume, pagination))) {
    await target.query(`drop table ${rawTable(runId)}`);
    await target.query(`drop table if exists ${typedPagesTable(runId)}`);
    return null;
  }
  log.info({ runId, from: adopted.run_id, records: adopted.records }, 'resuming the interrupted crawl of an earlier run');
  return { resume: adopted.resume, records: adopted.records ?? 0 };
}

/** A table's columns in order, each as "name type"; null when it does not exist. */
async function columnsOf(target: PoolClient, table: string): Promise<string[] | null> {
  const { rows } = await target.query<{ c: string }>(
    `select attname || ' ' || format_type(atttypid, atttypmod) as c from pg_attribute
      where attrelid = to_regclass($1) and attnum > 0 and not attisdropped order by attnum`, [table]);
  return rows.length ? rows.map((r) => r.c) : null;
}

/** The crawl's typed pages: those an interrupted run left (adopted with its text pages), else a new table. */
async function typedPages(target: PoolClient, runId: number, resumed: boolean): Promise<string> {
  if (resumed && await columnsOf(target, typedPagesTable(runId))) return typedPagesTable(runId);
  const { rows } = await target.query('select sync.create_typed_pages($1) as t', [runId]);
  return rows[0].t as string;
}

/** Whether a saved crawl state still means the same place under the entity's pagination. */
function continues(state: PageState, p: Pagination): boolean {
  if (state.style !== p.style) return false;
  return state.style !== 'page' || p.style !== 'page' || state.size === undefined || state.size === p.size;
}
