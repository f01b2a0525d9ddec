import { createInterface } from 'node:readline';
import { Transform } from 'node:stream';
import type { EntityConfig, JsonlSourceConfig } from '../../config/schema.js';
import { fileLocation, openBytes } from '../files.js';
import { toText } from '../http/fields.js';
import { getPath } from '../http/path.js';

export interface JsonlRecord {
  /** Line of the file (1 = the first). */
  line: number;
  /** Values in the order of the reader's columns (none for an unreadable line). */
  values: (string | null)[];
  /** The record as read, for the quarantine. */
  raw: unknown;
  /** Why the line could not be read; such a record is quarantined (and, keyless, makes the snapshot doubtful). */
  error?: string;
}

export interface JsonlReader {
  /** Target column → the field it reads (a dotted path reaches into nested objects). */
  mapping: [string, string][];
  records: AsyncIterable<JsonlRecord>;
}

const JSONL_FILE = { kind: 'jsonl', notFound: 'check the URL' };

/** Bytes in the source's encoding → UTF-8 text. */
function decoder(encoding: string): Transform {
  const d = new TextDecoder(encoding, { fatal: false });
  return new Transform({
    transform(chunk: Buffer, _e, done) { done(null, d.decode(chunk, { stream: true })); },
    flush(done) { done(null, d.decode()); },
  });
}

/**
 * Target column → field: an explicit `columns` map names fields (dotted
 * paths), a list names fields of the same name, and without `columns` every
 * writable target column reads the field of its name.
 */
export function jsonlMapping(e: EntityConfig, targetColumns: string[], file: string): [string, string][] {
  const mapping: [string, string][] = e.columns && !Array.isArray(e.columns) ? Object.entries(e.columns)
    : (Array.isArray(e.columns) ? e.columns : targetColumns).map((c) => [c, c]);
  for (const k of e.key) {
    if (!mapping.some(([t]) => t === k)) throw new Error(`${file}: the key column "${k}" is not among the columns read — map it in "columns"`);
  }
  return mapping;
}

/**
 * Opens an entity's JSON-lines file. Records stream one line at a time
 * (memory stays flat); blank lines are skipped. A line that is not a JSON
 * object comes in order as a record with an `error` and no values: it is
 * quarantined with its line number, and having no readable key it makes
 * the snapshot doubtful (sync.merge), so a mirror deletes nothing.
 */
export async function openJsonl(src: JsonlSourceConfig, e: EntityConfig, targetColumns: string[], configDir: string,
  signal: AbortSignal): Promise<JsonlReader> {
  const file = (e.from as { file: string }).file;
  const bytes = await openBytes(fileLocation(src, file, configDir), src, signal, JSONL_FILE);
  const text = bytes.pipe(decoder(src.encoding));
  signal.addEventListener('abort', () => text.destroy(signal.reason as Error), { once: true });
  const mapping = jsonlMapping(e, targetColumns, file);
  const paths = mapping.map(([, f]) => f);
  async function* records(): AsyncGenerator<JsonlRecord> {
    let line = 0;
    for await (const raw of createInterface({ input: text, crlfDelay: Infinity })) {
      line += 1;
      const body = line === 1 ? raw.replace(/^\uFEFF/, '') : raw;
      if (!body.trim()) continue;
      let value: unknown;
      try {
        value = JSON.parse(body);
      } catch (err) {
        yield { line, values: [], raw: { line, text: body }, error: `line ${line}: not valid JSON (${(err as Error).message})` };
        continue;
      }
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        yield { line, values: [], raw: { line, text: body }, error: `line ${line}: not a JSON object — each line must hold one {…} record` };
        continue;
      }
      yield { line, values: paths.map((p) => toText(getPath(value, p))), raw: value };
    }
  }
  return { mapping, records: records() };
}
