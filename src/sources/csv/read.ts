import { Transform, type Readable } from 'node:stream';
import { parse } from 'csv-parse';
import type { CsvSourceConfig, EntityConfig } from '../../config/schema.js';
import { fileLocation, openBytes } from '../files.js';
import { configuredEndingDoubt, lineEndingDoubt, lineEndingScanner, quoteRunsLinesTogether, type LineEndings } from './lines.js';

// A header row longer than this is not a header: refuse rather than guess.
const MAX_HEADER_COLUMNS = 1000;

export interface CsvRecord {
  /** Line of the file where the record starts (1 = the header). */
  line: number;
  /** Values in the order of the mapping's target columns (none for an unreadable line). */
  values: (string | null)[];
  /** The record as read, header → value, for the quarantine. */
  raw: Record<string, unknown>;
  /** Why the line could not be read; such a record is quarantined. */
  error?: string;
}

export interface CsvReader {
  /** The file's header row. */
  header: string[];
  /** Target column → header, as resolved against the file's header row. */
  mapping: [string, string][];
  records: AsyncIterable<CsvRecord>;
  /** Why the file may not be whole (known once the records are read); empty when nothing is in doubt. */
  doubts: () => string[];
}

/** A header as a column name: "Seller Number" → seller_number. */
export function normalizeHeader(h: string): string {
  return h.trim().toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_+|_+$/g, '');
}

/** Where an entity's file lives: a URL, or a path relative to the source's location (or the config's directory). */
export const csvLocation = fileLocation;

// What a csv source's fetch advises: a published Google Sheet is the common case.
const CSV_FILE = { kind: 'csv', notFound: 'check the URL (for a Google Sheet: File → Share → Publish to web → CSV)' };

/** Bytes in the source's encoding → UTF-8 text (a UTF-8 byte-order mark is dropped by the parser). */
function decoder(encoding: string): Transform {
  const d = new TextDecoder(encoding, { fatal: false });
  return new Transform({
    transform(chunk: Buffer, _e, done) { done(null, d.decode(chunk, { stream: true })); },
    flush(done) { done(null, d.decode()); },
  });
}

/**
 * Opens an entity's CSV file and reads its header. Records stream one at a
 * time (memory stays flat). A line the parser cannot read comes in order as
 * a record with an `error` (and no values): it is quarantined, and it makes
 * the snapshot doubtful, as does a file whose line endings change midway.
 */
export async function openCsv(src: CsvSourceConfig, e: EntityConfig, targetColumns: string[], configDir: string,
  signal: AbortSignal, opened?: Readable): Promise<CsvReader> {
  const file = (e.from as { file: string }).file;
  const bytes = opened ?? await openCsvBytes(src, e, configDir, signal);
  const rejects: CsvRecord[] = [];
  const endings: LineEndings = {};
  const parser = bytes.pipe(decoder(src.encoding)).pipe(lineEndingScanner(src.quote, src.delimiter, endings)).pipe(parse({
    ...parserOptions(src), info: true, raw: true, skip_records_with_error: true,
    on_skip: (err, raw) => { rejects.push(unreadable(err, raw)); },
  }));
  signal.addEventListener('abort', () => parser.destroy(signal.reason as Error), { once: true });
  const it = parser[Symbol.asyncIterator]() as AsyncIterator<{ record: string[]; info: { lines: number }; raw: string }>;
  const first = await it.next();
  if (first.done) throw new Error(`${file} is empty: it needs a header row`);
  const header = first.value.record;
  if (header.length > MAX_HEADER_COLUMNS) throw new Error(`${file}: the first line has ${header.length} fields; is it a header row?`);
  const mapping = resolveMapping(e, header, targetColumns, file);
  const index = mapping.map(([, h]) => header.indexOf(h));
  async function* records(): AsyncGenerator<CsvRecord> {
    for (;;) {
      const next = await it.next();
      // Lines skipped while reading up to this record come first, in file order.
      yield* rejects.splice(0);
      if (next.done) return;
      const { record, info, raw } = next.value;
      const line = info.lines - countedBreaks(raw);
      if (quoteRunsLinesTogether(raw, src.quote, src.delimiter)) {
        // A stray or lost quote, not a value with a line break: the lines it
        // swallowed are records of their own, so this one cannot be trusted.
        const last = line + breaks(raw.replace(/(\r\n|\n|\r)$/, ''));
        yield { line, values: [], raw: { line, text: raw }, error: `line ${line}: a quoted value opened on this line ends at a quote `
          + `inside the text of line ${last}, so lines ${line}–${last} were read as one record — check the quotes on line ${line}` };
        continue;
      }
      yield {
        line,
        values: index.map((i) => (record[i] === undefined || record[i] === '' ? null : record[i])),
        raw: Object.fromEntries(header.map((h, i) => [h, record[i]])),
      };
    }
  }
  return {
    header, mapping, records: records(),
    doubts: () => [lineEndingDoubt(endings), configuredEndingDoubt(src.lineEnding ?? 'auto', endings)]
      .filter((d): d is string => d !== null),
  };
}

/** The bytes of an entity's file (a path or a URL). */
export function openCsvBytes(src: CsvSourceConfig, e: EntityConfig, configDir: string, signal: AbortSignal): Promise<Readable> {
  return openBytes(fileLocation(src, (e.from as { file: string }).file, configDir), src, signal, CSV_FILE);
}

/** How csv-parse reads the source's files: the header row (copy.ts) and the records alike. */
export function parserOptions(src: CsvSourceConfig) {
  return {
    bom: true, delimiter: src.delimiter, quote: src.quote, relax_quotes: true,
    record_delimiter: RECORD_DELIMITERS[src.lineEnding ?? 'auto'], skip_empty_lines: true,
  };
}

// "auto" accepts every line ending (and the scan reports a file that mixes them).
const RECORD_DELIMITERS: Record<string, string[]> = {
  auto: ['\r\n', '\n', '\r'], lf: ['\n'], crlf: ['\r\n'], cr: ['\r'],
};

/** Line breaks in a text. */
function breaks(text: string): number {
  return text.match(/\r\n|\n|\r/g)?.length ?? 0;
}

/**
 * Line breaks inside a record's text as csv-parse counts them in `lines`:
 * a \r and a \n each (a CRLF in a quoted value counts twice), and not the
 * break that ends the record (or the file).
 */
function countedBreaks(raw: string): number {
  return (raw.match(/[\r\n]/g)?.length ?? 0) - (/[\r\n]$/.test(raw) ? 1 : 0);
}

/** A line the parser skipped, as a record carrying the reason, numbered where it starts. */
function unreadable(err: { code?: string; lines?: number; message?: string } | undefined, raw: string | undefined): CsvRecord {
  const text = raw ?? '';
  const end = Number(err?.lines ?? 0);
  const line = end - countedBreaks(text);
  if (err?.code === 'CSV_QUOTE_NOT_CLOSED') {
    // The parser read on to the end of the file looking for the closing quote.
    const last = line + breaks(text.replace(/(\r\n|\n|\r)$/, ''));
    return { line, values: [], raw: { line, text }, error: `line ${line}: a quoted value opened on this line is never closed, `
      + `so lines ${line}–${last} could not be read — check the quotes on line ${line}` };
  }
  return { line, values: [], raw: { line, text }, error: `line ${line}: ${err?.message ?? 'unreadable line'}` };
}

/**
 * Target column → header. An explicit `columns` map names headers; a list or
 * no `columns` matches headers by name, also after normalizing them
 * ("Seller Number" feeds seller_number).
 */
export function resolveMapping(e: EntityConfig, header: string[], targetColumns: string[], file: string): [string, string][] {
  const byNormal = new Map(header.map((h) => [normalizeHeader(h), h]));
  const find = (name: string) => (header.includes(name) ? name : byNormal.get(normalizeHeader(name)));
  let wanted: [string, string | undefined][];
  if (e.columns && !Array.isArray(e.columns)) wanted = Object.entries(e.columns).map(([t, h]) => [t, find(h)]);
  else if (Array.isArray(e.columns)) wanted = e.columns.map((c) => [c, find(c)]);
  else wanted = targetColumns.map((c): [string, string | undefined] => [c, find(c)]).filter(([, h]) => h !== undefined);
  const missing = wanted.filter(([, h]) => h === undefined).map(([t]) => t);
  if (missing.length) {
    throw new Error(`${file} has no header for ${missing.map((m) => `"${m}"`).join(', ')} — its headers are: ${header.join(', ')}; map them in "columns": {"target": "Header"}`);
  }
  for (const k of e.key) {
    if (!wanted.some(([t]) => t === k)) throw new Error(`${file} has no header for the key column "${k}" — map it in "columns"`);
  }
  return wanted as [string, string][];
}
