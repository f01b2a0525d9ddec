import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { from as copyFrom } from 'pg-copy-streams';
import { copyLine } from '../db/copy.js';
import { quoteIdent } from '../db/database.js';
import type { PoolClient } from '../db/pool.js';
import { textArray, type RawRecord, type RawWriter } from './raw-writer.js';

/**
 * Writes a crawl's pages typed: each page is one COPY into the run's typed
 * pages (sync_staging.run_<id>_typed, sync.create_typed_pages), PostgreSQL's
 * input functions doing the typing as the rows arrive. A page the database
 * refuses (a bad date, a string for an int, a NUL) goes whole to the text
 * staging instead, where sync.cast_raw quarantines just its bad records.
 * Runs inside the caller's transaction.
 */
export class PageWriter {
  typedPages = 0;
  textPages = 0;
  private readonly copySql: string | null;

  /** `typed`: the typed pages table, or null to write every page as text. */
  constructor(private readonly client: PoolClient, typed: string | null, columns: string[],
    private readonly text: RawWriter, private readonly timeZone: string | undefined) {
    this.copySql = typed && `copy ${typed} (${columns.map(quoteIdent).join(', ')}, _sl_line, _sl_absent) from stdin`;
  }

  async write(records: RawRecord[]): Promise<void> {
    if (!records.length) return;
    // A record the source could not read, or a NUL that no COPY takes, would only fail the page.
    if (this.copySql && records.every(typable) && await this.tryTyped(this.copySql, records)) {
      this.typedPages++;
      return;
    }
    await this.text.write(records);
    this.textPages++;
  }

  private async tryTyped(copySql: string, records: RawRecord[]): Promise<boolean> {
    // Text without an offset is the source's local time, as sync.cast_raw reads it.
    if (this.timeZone) await this.client.query(`select set_config('timezone', $1, true)`, [this.timeZone]);
    await this.client.query('savepoint sl_typed');
    try {
      // One chunk a page: a write per line costs a system call each.
      const page = records.map((r) => copyLine([...r.values, r.line, r.absent?.length ? textArray(r.absent) : null])).join('');
      await pipeline(Readable.from([page]), this.client.query(copyFrom(copySql)));
      await this.client.query('release savepoint sl_typed');
      return true;
    } catch (err) {
      // Class 22: a value its column's type rejects. Anything else is a real failure.
      if (!String((err as { code?: string }).code ?? '').startsWith('22')) throw err;
      await this.client.query('rollback to savepoint sl_typed');
      return false;
    }
  }
}

function typable(r: RawRecord): boolean {
  return r.error === undefined && !r.values.some((v) => v !== null && v.includes('\u0000'));
}
