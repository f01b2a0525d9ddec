/**
 * PostgreSQL parses a csv file: its bytes go to COPY … (FORMAT csv) as they
 * arrive, while a scan of the same bytes stops the COPY at the first thing
 * COPY would read otherwise than the JavaScript parser (a quote inside an
 * unquoted value, a change of line endings, an empty line, a NUL byte …).
 * A file COPY rejects, or the scan stops, goes to the JavaScript parser,
 * which locates and quarantines the bad lines (read.ts).
 */
import { createWriteStream } from 'node:fs';
import { PassThrough, Readable, Transform } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import pg from 'pg';
import { parse as parseSync } from 'csv-parse/sync';
import { from as copyFrom } from 'pg-copy-streams';
import type { CsvSourceConfig } from '../../config/schema.js';
import { quoteIdent } from '../../db/database.js';
import type { PoolClient } from '../../db/pool.js';
import type { LineEnding } from './lines.js';

const CR = 0x0d;
const LF = 0x0a;
const BACKSLASH = 0x5c;
const DOT = 0x2e;

// Node's name of an encoding (TextDecoder's) → PostgreSQL's. Only encodings
// in which a delimiter, a quote and a line break are single ASCII bytes that
// no other character contains: the scan reads bytes.
const PG_ENCODINGS: Record<string, string> = {
  'utf-8': 'UTF8', 'windows-1252': 'WIN1252', 'windows-1250': 'WIN1250', 'windows-1251': 'WIN1251',
  'iso-8859-2': 'LATIN2', 'iso-8859-15': 'LATIN9',
};

// Delimiters COPY and the JavaScript parser read alike.
const COPY_DELIMITERS = new Set([',', ';', '\t', '|', ':', ' ']);

/** The PostgreSQL encoding for the source's, or why COPY cannot read the file. */
export function copyOptions(src: CsvSourceConfig): { encoding: string } | { reason: string } {
  // A switch for the operator (and the tests) to compare the two parsers.
  if (process.env.SYNCLINE_CSV_PARSER === 'javascript') return { reason: 'SYNCLINE_CSV_PARSER=javascript' };
  const encoding = PG_ENCODINGS[new TextDecoder(src.encoding).encoding];
  if (!encoding) return { reason: `the encoding ${src.encoding} is read by the JavaScript parser` };
  // csv-parse escapes a quote with '"' whatever the quote is; COPY with the quote itself.
  if (src.quote !== '"') return { reason: `the quote ${JSON.stringify(src.quote)} is read by the JavaScript parser` };
  if (!COPY_DELIMITERS.has(src.delimiter)) return { reason: `the delimiter ${JSON.stringify(src.delimiter)} is read by the JavaScript parser` };
  return { encoding };
}

// A header row longer than this is not one (a stray quote ran on): the
// JavaScript path reads the file, rather than holding all of it in memory.
const MAX_HEADER_BYTES = 1 << 20;

/** A file opened for a run: its header, and its bytes from the first one on. */
export interface CsvHead {
  /** The header as the JavaScript parser reads it; undefined when the file starts without one (it takes the JavaScript path). */
  header?: string[];
  bytes: Readable;
}

/**
 * Reads a file's first bytes up to the end of its header row and parses that
 * row with csv-parse (as read.ts would); the bytes read are replayed, so
 * the whole file, header included, still streams to COPY.
 */
export async function readHead(bytes: Readable, src: CsvSourceConfig, parserOptions: object): Promise<CsvHead> {
  const it = bytes[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const chunks: Buffer[] = [];
  const quote = src.quote.charCodeAt(0);
  let quoted = false;
  let end = -1;
  let seen = 0;
  while (end < 0 && seen < MAX_HEADER_BYTES) {
    const next = await it.next();
    if (next.done) break;
    const chunk = next.value;
    chunks.push(chunk);
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i];
      if (c === quote) quoted = !quoted;
      else if (!quoted && (c === CR || c === LF)) { end = seen + i; break; }
    }
    seen += chunk.length;
  }
  const all = Buffer.concat(chunks);
  const capped = end < 0 && seen >= MAX_HEADER_BYTES;
  const header = capped ? undefined : headerRow(new TextDecoder(src.encoding).decode(end < 0 ? all : all.subarray(0, end)), parserOptions);
  const replay = Readable.from((async function* () {
    try {
      yield all;
      for (;;) {
        const next = await it.next();
        if (next.done) return;
        yield next.value;
      }
    } finally {
      bytes.destroy();
    }
  })(), { objectMode: false });
  return { header, bytes: replay };
}

/** The header row's fields; undefined when there is none to read (the JavaScript path then says what is wrong). */
function headerRow(text: string, parserOptions: object): string[] | undefined {
  try {
    const records = parseSync(text, { ...parserOptions, to: 1 }) as string[][];
    return records[0]?.length && text.trim() ? records[0] : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The byte scan beside COPY: the first thing in the file that COPY (FORMAT
 * csv) would read otherwise than the JavaScript parser, as a sentence, or
 * nothing. The JavaScript parser relaxes quotes (`Big "Tony"` keeps its
 * quotes; COPY drops them), skips empty lines (COPY reads a null record),
 * reports a change of line endings as a doubt (COPY fails the file), and
 * COPY ends the data at a line `\.`.
 */
export class CsvScan {
  line = 1;
  records = 0;
  problem?: string;
  private quoted = false;
  private fieldStart = true;
  private recordStart = true;
  private pendingCr = false;
  private pendingQuote = false;
  private slashAtStart = false;
  private first?: LineEnding;
  private readonly quote: number;
  private readonly delimiter: number;

  constructor(src: CsvSourceConfig) {
    this.quote = src.quote.charCodeAt(0);
    this.delimiter = src.delimiter.charCodeAt(0);
    this.configured = src.lineEnding ?? 'auto';
  }

  private readonly configured: string;

  /** Scans the next bytes; the problem, once there is one. */
  push(chunk: Buffer): string | undefined {
    for (let i = 0; i < chunk.length && !this.problem; i++) this.byte(chunk[i]);
    return this.problem;
  }

  /** The end of the file. */
  end(): string | undefined {
    if (this.problem) return this.problem;
    if (this.pendingCr) this.eol('cr');
    if (this.quoted && !this.pendingQuote) this.problem = `line ${this.line}: a quoted value is never closed`;
    if (!this.recordStart && !this.problem) this.records++;
    return this.problem;
  }

  private byte(c: number): void {
    if (c === 0) { this.problem = `line ${this.line}: a NUL byte`; return; }
    if (this.pendingCr) {
      this.pendingCr = false;
      if (c === LF) { this.eol('crlf'); return; }
      this.eol('cr');
      if (this.problem) return;
    }
    if (this.slashAtStart) {
      this.slashAtStart = false;
      if (c === DOT) { this.problem = `line ${this.line}: a line starting with \\. (COPY's end-of-data mark)`; return; }
    }
    if (this.pendingQuote) {
      this.pendingQuote = false;
      if (c === this.quote) return; // "" inside a quoted value
      this.quoted = false;
      if (c !== this.delimiter && c !== CR && c !== LF) { this.problem = `line ${this.line}: text after a closing quote`; return; }
    }
    if (this.quoted) {
      if (c === this.quote) this.pendingQuote = true;
      else if (c === LF) this.line++;
      return;
    }
    if (c === CR) { this.pendingCr = true; return; }
    if (c === LF) { this.eol('lf'); return; }
    if (c === this.quote) {
      if (!this.fieldStart) { this.problem = `line ${this.line}: a quote inside an unquoted value`; return; }
      this.quoted = true;
    } else if (this.recordStart && c === BACKSLASH) {
      this.slashAtStart = true;
    }
    this.fieldStart = c === this.delimiter;
    this.recordStart = false;
  }

  private eol(e: LineEnding): void {
    if (this.recordStart) { this.problem = `line ${this.line}: an empty line`; return; }
    if (!this.first) this.first = e;
    else if (e !== this.first) { this.problem = `line ${this.line}: the line endings change`; return; }
    if (this.configured !== 'auto' && e !== this.configured) {
      this.problem = `line ${this.line}: the line ends otherwise than the source's lineEnding says`;
      return;
    }
    this.records++;
    this.line++;
    this.fieldStart = true;
    this.recordStart = true;
  }
}

export interface CsvCopy {
  /** The table to COPY into (quoted). */
  table: string;
  /** The table's column for each field of the header, in file order. */
  columns: string[];
  /** Columns where an empty quoted value ("") is null too, as the JavaScript parser reads it. */
  forceNull: string[];
  encoding: string;
  timeZone?: string;
}

/** Why COPY did not load the file: the JavaScript path takes it, or (a constraint of the table) the staging path. */
export class CopyRejected extends Error {
  /** The table's constraint refused a row (a repeated key, say), not the file's text. */
  readonly constraint: boolean;
  constructor(message: string, opts?: { cause?: unknown; constraint?: boolean }) {
    super(message, { cause: opts?.cause });
    this.constraint = opts?.constraint ?? false;
  }
}

/**
 * COPY the file into a table inside the caller's transaction; the rows
 * copied. Throws CopyRejected (the transaction is then aborted: roll back)
 * when COPY or the scan refuses the file; any other error (a cancel, a lost
 * connection) as it is.
 */
export async function copyCsv(client: PoolClient, copy: CsvCopy, src: CsvSourceConfig, bytes: Readable, signal: AbortSignal,
  onProgress: (rows: number, bytes: number) => void, spoolTo?: string): Promise<number> {
  if (!spoolTo) return copyBytes(client, copy, src, bytes, signal, onProgress);
  // The whole file goes to the spool, also after COPY stopped, so a fallback
  // reads the same bytes without fetching them again.
  const spool = createWriteStream(spoolTo);
  const spooled = finished(spool);
  const toCopy = new PassThrough();
  const stop = () => bytes.destroy(signal.reason as Error);
  signal.addEventListener('abort', stop, { once: true });
  bytes.on('error', (err) => { spool.destroy(err); toCopy.destroy(err); });
  bytes.pipe(spool);
  bytes.pipe(toCopy);
  try {
    return await copyBytes(client, copy, src, toCopy, signal, onProgress);
  } finally {
    await spooled.catch((err) => { if (!signal.aborted) throw err; });
    signal.removeEventListener('abort', stop);
  }
}

async function copyBytes(client: PoolClient, copy: CsvCopy, src: CsvSourceConfig, bytes: Readable, signal: AbortSignal,
  onProgress: (rows: number, bytes: number) => void): Promise<number> {
  const lit = pg.escapeLiteral;
  const sql = `copy ${copy.table} (${copy.columns.map(quoteIdent).join(', ')}) from stdin with (format csv, header true, `
    + `delimiter ${lit(src.delimiter)}, quote ${lit(src.quote)}, escape ${lit(src.quote)}, encoding ${lit(copy.encoding)}, `
    + `force_null (${copy.forceNull.map(quoteIdent).join(', ')}))`;
  // Text without an offset is the source's local time, as sync.cast_raw reads it.
  if (copy.timeZone) await client.query(`select set_config('timezone', $1, true)`, [copy.timeZone]);
  const scan = new CsvScan(src);
  let read = 0;
  let reported = 0;
  const scanning = new Transform({
    transform(chunk: Buffer, _e, done) {
      read += chunk.length;
      if (scan.push(chunk)) { done(new CopyRejected(scan.problem!)); return; }
      if (read - reported > 4 << 20) { reported = read; onProgress(Math.max(0, scan.records - 1), read); }
      done(null, chunk);
    },
    flush(done) {
      done(scan.end() ? new CopyRejected(scan.problem!) : null);
    },
  });
  const stream = client.query(copyFrom(sql));
  try {
    await pipeline(bytes, scanning, stream, { signal });
  } catch (err) {
    if (signal.aborted) throw err;
    if (scan.problem) throw new CopyRejected(scan.problem, { cause: err });
    const code = String((err as { code?: string }).code ?? '');
    // Class 22 (a bad value, a wrong column count, an unterminated quote, an
    // encoding error) and 23 (a constraint of the table) are the file's.
    if (code.startsWith('22') || code.startsWith('23')) {
      const where = (err as { where?: string }).where;
      throw new CopyRejected(`${(err as Error).message}${where ? ` (${where.replace(/^COPY [^,]+, /, '')})` : ''}`,
        { cause: err, constraint: code.startsWith('23') });
    }
    throw err;
  }
  onProgress(stream.rowCount, read);
  return stream.rowCount;
}
