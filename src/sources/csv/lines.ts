import { Transform } from 'node:stream';

export type LineEnding = 'crlf' | 'lf' | 'cr';

const NAMES: Record<LineEnding, string> = { crlf: 'CRLF', lf: 'LF', cr: 'CR' };

/** What the scan of a file's record delimiters found. */
export interface LineEndings {
  /** The delimiter of the first record, once seen. */
  first?: LineEnding;
  /** Where another delimiter first ends a record: the file changes its line endings midway. */
  change?: { line: number; to: LineEnding };
}

/** The doubt a change of line endings casts on a snapshot, as a sentence; null when there is none. */
export function lineEndingDoubt(e: LineEndings): string | null {
  if (!e.first || !e.change) return null;
  return `the file's line endings change at line ${e.change.line} (${NAMES[e.first]} before, ${NAMES[e.change.to]} there): `
    + 'it may be two files run together or a damaged upload';
}

/** A file whose records end otherwise than `lineEnding` says: its last values carry stray characters. */
export function configuredEndingDoubt(configured: string, e: LineEndings): string | null {
  if (configured === 'auto' || !e.first || e.first === configured) return null;
  return `the file's records end in ${NAMES[e.first]}, not ${NAMES[configured as LineEnding]} as the source's lineEnding says: `
    + 'set "lineEnding": "auto" (or the right one)';
}

/**
 * Passes text through unchanged while noting which delimiter ends each
 * record: only outside quoted values (a quoted cell may hold line breaks of
 * its own, as Excel writes LF inside CRLF files). The state carries across
 * chunks, so a CRLF split between two chunks is still one CRLF.
 */
export function lineEndingScanner(quote: string, delimiter: string, found: LineEndings): Transform {
  let quoted = false;
  let fieldStart = true;
  let pendingCr = false;
  // A quote closing a quoted value, unless the next character (maybe in the next chunk) doubles it.
  let pendingQuote = false;
  let line = 1;
  const seen = (e: LineEnding) => {
    if (!found.first) found.first = e;
    else if (e !== found.first && !found.change) found.change = { line, to: e };
    line++;
    fieldStart = true;
  };
  return new Transform({
    transform(chunk: string | Buffer, _enc, done) {
      const text = String(chunk);
      for (let i = 0; i < text.length; i++) {
        const c = text[i];
        if (pendingCr) {
          pendingCr = false;
          if (c === '\n') { seen('crlf'); continue; }
          seen('cr');
        }
        if (pendingQuote) {
          pendingQuote = false;
          if (c === quote) continue; // "" inside a quoted value
          quoted = false;
        }
        if (quoted) {
          if (c === quote) pendingQuote = true;
          else if (c === '\n') line++;
          continue;
        }
        if (c === '\r') pendingCr = true;
        else if (c === '\n') seen('lf');
        else if (c === quote && fieldStart) { quoted = true; fieldStart = false; }
        else fieldStart = c === delimiter;
      }
      done(null, chunk);
    },
    flush(done) {
      if (pendingCr) seen('cr');
      done();
    },
  });
}

/**
 * Whether a record's text holds a quoted value that spans a line break and
 * ends at a quote followed by more text. Relaxing quotes (as hand-written
 * sheets need: `"Big" Tony`) the parser then reads on as if the value were
 * not quoted, so a stray or lost quote silently runs the lines up to the next
 * quote together into one record, and the records on them go missing.
 * Follows csv-parse: "" inside a quoted value is a quote.
 */
export function quoteRunsLinesTogether(raw: string, quote: string, delimiter: string): boolean {
  let fieldStart = true;
  for (let i = 0; i < raw.length; i++) {
    if (!(fieldStart && raw[i] === quote)) {
      fieldStart = raw[i] === delimiter;
      continue;
    }
    let spans = false;
    for (i++; i < raw.length; i++) {
      const c = raw[i];
      if (c === '\r' || c === '\n') spans = true;
      if (c !== quote) continue;
      if (raw[i + 1] === quote) { i++; continue; }
      const next = raw[i + 1];
      if (next === undefined || next === delimiter || next === '\r' || next === '\n') break;
      if (spans) return true;
      break; // on the value's own line: read as text, as relaxed quotes want
    }
    fieldStart = false;
  }
  return false;
}
