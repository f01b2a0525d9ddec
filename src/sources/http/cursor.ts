import type { EntityConfig } from '../../config/schema.js';
import type { Pool } from '../../db/pool.js';
import { toText, type MappedRecord } from './fields.js';
import { compareVersions } from './paginate.js';
import { getPath } from './path.js';
import type { HttpEntityOptions } from './schema.js';

/**
 * {{cursor}} in an endpoint's params becomes the cursor. On a first or full
 * run a param holding {{cursor}} anywhere is left out: an emptied filter
 * such as {"date_updated":{"_gt":""}} is one the API rejects or matches
 * nothing with, while leaving it out asks for everything. {{from}} and
 * {{to}} become a backfill chunk's bounds; outside a backfill their params
 * are left out.
 */
export function withCursor(http: HttpEntityOptions, cursor: string | null, range: { from: string; to: string } | null): HttpEntityOptions {
  const params: Record<string, string> = {};
  for (const [k, v] of Object.entries(http.params)) {
    if (v.includes('{{from}}') || v.includes('{{to}}')) {
      if (range) params[k] = v.replaceAll('{{from}}', range.from).replaceAll('{{to}}', range.to);
    } else if (!v.includes('{{cursor}}')) params[k] = v;
    else if (cursor !== null) params[k] = v.replaceAll('{{cursor}}', cursor);
  }
  return { ...http, params };
}

/**
 * The value an incremental run asks the API for records past: the stored
 * cursor less cursor.overlap (as the postgres source bounds its reads, so
 * late commits inside the overlap are read again and merge as unchanged).
 * Timestamps go out in ISO 8601 (UTC, milliseconds, truncated: a lower
 * bound only re-reads), the form APIs parse; numbers and other values as
 * stored.
 */
export async function apiCursor(pool: Pool, def: EntityConfig, stored: string, type: string): Promise<string> {
  const overlap = def.cursor?.overlap ?? 0;
  const { rows: [t] } = await pool.query<{ cat: string; name: string }>(
    'select typcategory as cat, typname as name from pg_type where oid = $1::regtype', [type]);
  const column = def.cursor?.column;
  if (t.cat === 'N') {
    if (typeof overlap === 'string') throw new Error(overlapMismatch(column, type, overlap, 'a number such as 100'));
    if (overlap === 0) return stored;
    return (await pool.query('select ($1::numeric - $2::numeric)::text as v', [stored, overlap])).rows[0].v as string;
  }
  if (t.cat === 'D' && ['timestamptz', 'timestamp', 'date'].includes(t.name)) {
    if (typeof overlap === 'number' && overlap !== 0) throw new Error(overlapMismatch(column, type, overlap, 'an interval such as "5 minutes"'));
    const interval = typeof overlap === 'string' ? overlap : '0';
    const sql = t.name === 'timestamptz'
      ? `to_char(($1::timestamptz - $2::interval) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`
      : t.name === 'timestamp' ? `to_char($1::timestamp - $2::interval, 'YYYY-MM-DD"T"HH24:MI:SS.MS')`
        : `($1::date - $2::interval)::date::text`;
    return (await pool.query(`select ${sql} as v`, [stored, interval])).rows[0].v as string;
  }
  if (overlap !== 0 && overlap !== '0') {
    throw new Error(`cursor.overlap of entity cursor column "${column}" (${type}) cannot be subtracted: `
      + 'an overlap needs a numeric or timestamp cursor column — remove "overlap" or use such a column');
  }
  return stored;
}

function overlapMismatch(column: string | undefined, type: string, overlap: string | number, want: string): string {
  return `cursor.overlap ${JSON.stringify(overlap)} does not fit cursor column "${column}" of type ${type}: write ${want}`;
}

/**
 * What a record's cursor value is: the field its column maps to or, with
 * cursor.from, the latest of those fields that are present (an API such as
 * Directus leaves date_updated empty until a record is first changed).
 */
export function cursorReader(def: EntityConfig, fields: Record<string, string>): (r: unknown) => string | null {
  const column = def.cursor?.column ?? '';
  const paths = def.cursor?.from ?? [fields[column] ?? column];
  return (r) => laterOf(paths.map((p) => toText(getPath(r, p))));
}

/**
 * A record reader that fills the cursor column from cursor.from: the column
 * is computed, so it is never "absent" from a record.
 */
export function withCursorColumn(def: EntityConfig, columns: readonly string[], fields: Record<string, string>,
  read: (r: unknown) => MappedRecord): (r: unknown) => MappedRecord {
  const at = def.cursor?.from ? columns.indexOf(def.cursor.column) : -1;
  if (at < 0) return read;
  const cursorOf = cursorReader(def, fields);
  const column = columns[at];
  return (r) => {
    const m = read(r);
    m.values[at] = cursorOf(r);
    if (m.absent) {
      const absent = m.absent.filter((c) => c !== column);
      return { values: m.values, absent: absent.length ? absent : undefined };
    }
    return m;
  };
}

/** The latest of some values (null ones left out): timestamps by instant, numbers by value, else by text. */
export function laterOf(values: (string | null)[]): string | null {
  let best: string | null = null;
  for (const v of values) {
    if (v !== null && (best === null || compareCursorValues(v, best) > 0)) best = v;
  }
  return best;
}

const NUMBER = /^-?\d+(\.\d+)?$/;
const TIMESTAMP = /^\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d+)?)?)?(Z|[+-]\d\d(:?\d\d)?)?$/;

export function compareCursorValues(a: string, b: string): number {
  if (NUMBER.test(a) && NUMBER.test(b)) {
    return a.includes('.') || b.includes('.') ? Math.sign(Number(a) - Number(b)) : compareVersions(a, b);
  }
  if (TIMESTAMP.test(a) && TIMESTAMP.test(b)) {
    const d = instant(a) - instant(b);
    // Same millisecond: the finer digits decide (as text, both being the same instant to the ms).
    if (d !== 0 && !Number.isNaN(d)) return Math.sign(d);
  }
  return compareVersions(a, b);
}

function instant(v: string): number {
  // Date.parse reads "2024-01-02 10:00:00+00" only in the T form with a full offset.
  const iso = v.replace(' ', 'T').replace(/([+-]\d\d)$/, '$1:00').replace(/([+-]\d\d)(\d\d)$/, '$1:$2');
  // A date-time without an offset is UTC here, as the source's values are compared with each other only.
  return Date.parse(/T/.test(iso) && !/(Z|[+-]\d\d:\d\d)$/.test(iso) ? `${iso}Z` : iso);
}
