/**
 * Whether a run's snapshot can be trusted to delete: the checks a source
 * makes while and after it crawls. A doubt (sync.doubt_snapshot) stops every
 * delete of the run; an unprovable crawl (sync.require_confirmation) holds its
 * deletes until an operator confirms them.
 */
import { quoteIdent } from '../../db/database.js';
import type { PoolClient } from '../../db/pool.js';
import type { EntityConfig } from '../../config/schema.js';
import { doubt } from '../staging.js';
import type { HttpClient } from './client.js';
import type { Page } from './paginate.js';
import { getPath } from './path.js';
import type { HttpEntityOptions, Pagination } from './schema.js';

// Rows missing from an offset crawl that a lookup re-asks the API for. Past
// this many the deletes are held instead: asking costs a request per batch,
// and so many missing rows is itself a reason for a person to look.
export const MAX_LOOKUP_KEYS = 1000;

async function requireConfirmation(target: PoolClient, runId: number, reason: string): Promise<void> {
  await target.query('select sync.require_confirmation($1, $2)', [runId, reason]);
}

/**
 * Watches a crawl page by page for signs that it did not see the whole
 * listing: an answer from another origin, a total that moved or does not
 * match, a short page followed by more (page numbers then skip records).
 */
export class CrawlWatch {
  private firstTotal?: number;
  private lastTotal?: number;
  private records = 0;
  private crossOrigin = false;
  private lengths: number[] = [];
  private wasResumed = false;

  /** `whole`: the crawl reads the whole listing (no cursor, window or chosen keys), so its count must match the total. */
  constructor(private readonly pagination: Pagination, private readonly whole: boolean) {}

  resumed(): void {
    this.wasResumed = true;
  }

  page(p: Page): void {
    if (p.crossOrigin) this.crossOrigin = true;
    if (p.total !== undefined) {
      this.firstTotal ??= p.total;
      this.lastTotal = p.total;
    }
    this.records += p.records.length;
    this.lengths.push(p.records.length);
  }

  doubts(): string[] {
    const out: string[] = [];
    if (this.crossOrigin) {
      out.push('the API answered from another origin (a redirect followed without credentials), so the answer may not be the listing');
    }
    if (this.firstTotal !== undefined && this.firstTotal !== this.lastTotal) {
      out.push(`the listing changed during the crawl: the API reported ${this.firstTotal} records at the start and ${this.lastTotal} at the end`);
    } else if (this.whole && !this.wasResumed && this.lastTotal !== undefined && this.lastTotal !== this.records) {
      out.push(`the crawl received ${this.records} records but the API reports ${this.lastTotal}`);
    }
    if (this.pagination.style === 'page') {
      const full = Math.max(0, ...this.lengths);
      const short = this.lengths.findIndex((n, i) => n < full && this.lengths.slice(i + 1).some((m) => m > 0));
      if (short >= 0) {
        out.push(`page ${short + 1} held ${this.lengths[short]} records where others held ${full}, and more pages followed: `
          + 'records between them were skipped');
      }
    }
    return out;
  }

  /** A key seen twice in a crawl by position: rows moved while it ran, so others may have been skipped. */
  async checkRepeats(target: PoolClient, runId: number, key: string[]): Promise<void> {
    if (!['offset', 'page'].includes(this.pagination.style)) return;
    const cols = key.map(quoteIdent).join(', ');
    const typed = `sync_staging.${quoteIdent(`run_${runId}_typed`)}`;
    const { rows: [t] } = await target.query<{ exists: boolean }>('select to_regclass($1) is not null as exists', [typed]);
    // Keys of typed pages compared as text with those of text pages.
    const typedKeys = t.exists ? `union all select ${key.map((k) => `${quoteIdent(k)}::text`).join(', ')} from ${typed}` : '';
    const { rows } = await target.query<{ n: number }>(
      `select count(*)::int as n from (select ${cols} from (select ${cols} from sync_staging.${quoteIdent(`run_${runId}_raw`)}
        where _sl_error is null ${typedKeys}) k group by ${cols} having count(*) > 1) d`);
    if (rows[0].n > 0) {
      await doubt(target, runId, `${rows[0].n} key(s) came twice in a crawl paged by ${this.pagination.style}: `
        + 'rows were added or removed while it ran, so others may have been skipped');
    }
  }
}

/** A mapped field missing from every record is schema drift: the run fails rather than write NULLs. */
export async function checkDrift(target: PoolClient, runId: number, entity: string, optional: string[],
  fields: Record<string, string>): Promise<void> {
  const { rows } = await target.query<{ cols: string[] }>('select sync.absent_everywhere($1, $2) as cols', [runId, optional]);
  const cols = rows[0].cols;
  if (!cols.length) return;
  const named = cols.map((c) => (fields[c] && fields[c] !== c ? `"${fields[c]}" (column ${c})` : `"${c}"`)).join(', ');
  throw new Error(`schema drift in ${entity}: the field${cols.length > 1 ? 's' : ''} ${named} ${cols.length > 1 ? 'are' : 'is'} missing `
    + 'from every record the API sent, so the API no longer sends it (renamed or removed?); nothing was written. '
    + 'Fix the mapping ("columns" or from.http.fields), or list the column in from.http.optional to leave its values alone '
    + '(absent: "null" if the API leaves empty fields out)');
}

/**
 * An offset or page-number crawl cannot prove its deletes: a row deleted
 * while it ran shifts later rows back a page, and one of them looks
 * deleted. Ask the API for exactly the missing keys (lookup) and stage what
 * it still has, or else hold the deletes for confirmation. The API's total
 * (totalPath) finds a crawl the listing moved under, but cannot prove a
 * delete: a row removed before the crawl's position and another added
 * after it leave the total as it was, and a live row was skipped.
 */
export async function proveOffsetDeletes(a: {
  target: PoolClient; runId: number; def: EntityConfig; http: HttpEntityOptions;
  client: HttpClient; fields: Record<string, string>; stage: (found: unknown[]) => Promise<void>;
}): Promise<void> {
  const { target, runId, http } = a;
  const style = http.pagination.style;
  if (style !== 'offset' && style !== 'page') return;
  if (http.lookup) return lookupMissing(a, http.lookup);
  await requireConfirmation(target, runId, `the crawl paged by ${style}, so a row deleted while it ran would make another look deleted; `
    + 'use keyset pagination, or set from.http.lookup so Syncline can ask the API for the rows it would delete');
}

async function lookupMissing(a: Parameters<typeof proveOffsetDeletes>[0], lookup: NonNullable<HttpEntityOptions['lookup']>): Promise<void> {
  const { target, runId, def, http, client } = a;
  if (def.key.length !== 1) {
    return requireConfirmation(target, runId, 'from.http.lookup needs a one-column key; the deletes of this offset crawl cannot be checked');
  }
  const missing = await missingKeys(target, runId, def);
  if (missing.length > MAX_LOOKUP_KEYS) {
    return requireConfirmation(target, runId, `more than ${MAX_LOOKUP_KEYS} rows are missing from the crawl, too many to ask the API for one by one`);
  }
  const keyPath = a.fields[def.key[0]] ?? def.key[0];
  const found: unknown[] = [];
  for (let i = 0; i < missing.length; i += lookup.batch) {
    const batch = missing.slice(i, i + lookup.batch);
    const params = { ...http.params, [lookup.param]: batch.join(lookup.separator), ...sizeParams(http.pagination, batch.length) };
    const res = await client.getJson(http.path, params);
    const records = getPath(res.body, http.recordsPath);
    const asked = new Set(batch);
    if (!Array.isArray(records) || records.some((r) => !asked.has(String(getPath(r, keyPath))))) {
      return requireConfirmation(target, runId, `the API did not answer the lookup by ${lookup.param} with just the keys asked for, `
        + 'so the deletes of this offset crawl cannot be checked — check from.http.lookup');
    }
    found.push(...records);
  }
  await target.query(`update sync.run set detail = detail || jsonb_build_object('lookup', jsonb_build_object('asked', $2::int, 'found', $3::int))
                       where id = $1`, [runId, missing.length, found.length]);
  if (found.length) await a.stage(found);
}

function sizeParams(p: Pagination, n: number): Record<string, string> {
  if (p.style === 'offset') return { [p.offsetParam]: '0', [p.limitParam]: String(Math.max(n, p.limit)) };
  if (p.style === 'page') return { [p.param]: String(p.start), [p.sizeParam]: String(Math.max(n, p.size)) };
  return {};
}

/** Keys of the entity's rows (in its tenant, live) that the run's typed staging lacks, as text; one past the lookup limit at most. */
async function missingKeys(target: PoolClient, runId: number, def: EntityConfig): Promise<string[]> {
  const t = def.target as { schema: string; table: string };
  const k = quoteIdent(def.key[0]);
  const scope = ['true'];
  if (def.tenant) scope.push(`t.${quoteIdent(def.tenant.column)} = $1`);
  if (def.mode === 'soft-delete' && def.softDelete) scope.push(`t.${quoteIdent(def.softDelete.column)} is null`);
  const { rows } = await target.query<{ k: string }>(
    `select t.${k}::text as k from ${quoteIdent(t.schema)}.${quoteIdent(t.table)} t
      where ${scope.join(' and ')}
        and not exists (select 1 from sync_staging.${quoteIdent(`run_${runId}`)} s where s.${k} = t.${k})
      order by 1 limit ${MAX_LOOKUP_KEYS + 1}`, def.tenant ? [def.tenant.value] : []);
  return rows.map((r) => r.k);
}
