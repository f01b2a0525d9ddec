import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { from as copyFrom } from 'pg-copy-streams';
import { quoteIdent } from '../db/database.js';
import type { PoolClient } from '../db/pool.js';
import { copyLine } from '../db/copy.js';

/** One record of a text source on its way into a run's raw staging (sync_staging.run_<id>_raw). */
export interface RawRecord {
  /** Line of the file (csv) or ordinal in the crawl (http). */
  line: number;
  /** Text values in the order of the writer's columns; null for a null. */
  values: (string | null)[];
  /** The record as read, kept with a quarantined record. */
  raw: unknown;
  /** Why the record cannot be loaded as it is (an unreadable line): it is quarantined with this reason. */
  error?: string;
  /** Columns whose field the record lacks: the merge leaves those values alone. */
  absent?: string[];
}

// PostgreSQL text cannot hold U+0000; JSON escapes it, and jsonb refuses that too.
const NUL = '\u0000';
const NUL_SHOWN = '\u2400';

/**
 * Writes records into a run's raw staging with COPY, inside the caller's
 * transaction. A record the database refuses (a NUL byte, a character the
 * server encoding cannot hold) never fails the batch: it is written again
 * with the reason in _sl_error and quarantined by sync.cast_raw, keeping its
 * key where it can.
 */
export class RawWriter {
  private readonly copySql: string;
  private readonly keyAt: Set<number>;

  constructor(private readonly client: PoolClient, table: string, private readonly columns: string[], keys: string[]) {
    this.copySql = `copy ${table} (_sl_line, ${columns.map(quoteIdent).join(', ')}, _sl_raw, _sl_error, _sl_absent) from stdin`;
    this.keyAt = new Set(keys.map((k) => columns.indexOf(k)).filter((i) => i >= 0));
  }

  async write(records: RawRecord[]): Promise<void> {
    if (!records.length) return;
    const clean = records.map((r) => this.withoutNul(r));
    if (await this.tryCopy(clean.map(lineOf))) return;
    // One COPY a record, to find the ones the database refuses.
    for (const r of clean) {
      if (await this.tryCopy([lineOf(r)])) continue;
      const why = this.lastError;
      const keyOnly = { ...r, values: r.values.map((v, i) => (this.keyAt.has(i) ? v : null)), error: refusal(why) };
      if (await this.tryCopy([lineOf(keyOnly)])) continue;
      const bare = { line: r.line, values: r.values.map(() => null), raw: null, error: refusal(why) };
      if (!(await this.tryCopy([lineOf(bare)]))) throw new Error(`cannot stage record at line ${r.line}: ${this.lastError}`);
    }
  }

  private lastError = '';

  /** One COPY under a savepoint; false (rolled back to it) when the data is refused. */
  private async tryCopy(lines: string[]): Promise<boolean> {
    await this.client.query('savepoint sl_raw');
    try {
      await pipeline(Readable.from([lines.join('')]), this.client.query(copyFrom(this.copySql)));
      await this.client.query('release savepoint sl_raw');
      return true;
    } catch (err) {
      const code = String((err as { code?: string }).code ?? '');
      // Class 22: data exceptions (encoding, a value too long for text …).
      if (!code.startsWith('22')) throw err;
      this.lastError = (err as Error).message;
      await this.client.query('rollback to savepoint sl_raw');
      return false;
    }
  }

  private withoutNul(r: RawRecord): RawRecord {
    const bad = r.values.findIndex((v) => v !== null && v.includes(NUL));
    if (bad < 0) return r;
    const values = r.values.map((v) => (v !== null && v.includes(NUL) ? null : v));
    const error = r.error ?? `column ${this.columns[bad]}: the value holds a NUL character (0x00), which PostgreSQL text cannot store`;
    return { ...r, values, error };
  }
}

function refusal(message: string): string {
  return `the database refused a value of this record: ${message}`;
}

/** A raw record as one line of COPY text. */
function lineOf(r: RawRecord): string {
  return copyLine([r.line, ...r.values, rawJson(r.raw), r.error ?? null, r.absent?.length ? textArray(r.absent) : null]);
}

/** The raw record as JSON that jsonb accepts (a NUL shown as ␀). */
export function rawJson(raw: unknown): string | null {
  if (raw === null || raw === undefined) return null;
  const text = JSON.stringify(raw, (_k, v) => (typeof v === 'string' && v.includes(NUL) ? v.replaceAll(NUL, NUL_SHOWN) : v));
  // Object keys escape NUL too; an escaped backslash before "u0000" is text, not an escape.
  return text.includes('\\u0000') ? text.replace(/(?<!\\)((?:\\\\)*)\\u0000/g, '$1\\u2400') : text;
}

/** A text[] literal (COPY's escaping is applied on top by copyLine). */
export function textArray(items: string[]): string {
  return `{${items.map((s) => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`).join(',')}}`;
}
