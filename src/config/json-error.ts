/**
 * Where a config file's JSON breaks, as a person fixes it: line and column
 * (JSON.parse gives a character offset, and not always that), the line with
 * a caret, and the likely slip — a trailing comma, a missing comma or quote,
 * a comment (JSON has none), single quotes, an unquoted name.
 */

class Broken {
  constructor(readonly offset: number, readonly problem: string) {}
}

const COMMENT = 'a comment — JSON has none: remove it';
const SINGLE_QUOTES = 'single quotes — JSON strings and field names need double quotes: "…"';
// What may start a value: after a complete value, one of these means a comma was left out.
const VALUE_START = /["{[\-\d\w']/;

/** The first place `text` is not JSON and what is likely wrong there, or null when it is JSON. */
export function findJsonError(text: string): { offset: number; problem: string } | null {
  let i = 0;
  const opened: number[] = []; // offsets of the brackets not closed yet
  const fail = (offset: number, problem: string): never => { throw new Broken(offset, problem); };
  const skipSpace = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i++; };
  const isComment = () => text[i] === '/' && (text[i + 1] === '/' || text[i + 1] === '*');
  const atEnd = () => {
    if (i < text.length) return;
    // Shown at the end of the last line that has text, not on a blank one after it.
    const end = text.trimEnd().length;
    const open = opened.at(-1);
    if (open === undefined) fail(end, text.trim() === '' ? 'the file is empty — a config is an object: {"sources": {…}, "entities": {…}}' : 'the file ends where a value should be');
    const [bracket, close] = text[open!] === '{' ? ['{', '}'] : ['[', ']'];
    fail(end, `the file ends before the "${bracket}" at ${where(text, open!)} is closed — a closing "${close}" is missing`);
  };

  const value = (): void => {
    skipSpace();
    atEnd();
    const c = text[i];
    if (c === '{') return list('}', member, 'field');
    if (c === '[') return list(']', value, 'element');
    if (c === '"') return string();
    if (c === '-' || (c >= '0' && c <= '9')) return number();
    if (isComment()) fail(i, COMMENT);
    if (c === "'") fail(i, SINGLE_QUOTES);
    if (c === ',') fail(i, 'a value is missing before this comma (two commas in a row?)');
    if (c === '}' || c === ']') fail(i, `a value is missing before "${c}"`);
    const word = /[A-Za-z_$][\w$]*/y;
    word.lastIndex = i;
    const m = word.exec(text);
    if (m && ['true', 'false', 'null'].includes(m[0])) { i += m[0].length; return; }
    if (m) fail(i, 'text without quotes — a string needs double quotes ("…"); the only bare words JSON knows are true, false and null');
    fail(i, `unexpected "${c}" where a value should be`);
  };

  /** An object's or array's items up to `close`, with the commas between them. */
  const list = (close: '}' | ']', item: () => void, noun: 'field' | 'element'): void => {
    opened.push(i++);
    skipSpace();
    if (text[i] === close) { i++; opened.pop(); return; }
    for (;;) {
      item();
      const after = i;
      skipSpace();
      atEnd();
      const next = text[i];
      if (next === close) { i++; opened.pop(); return; }
      if (next === ',') {
        const comma = i++;
        skipSpace();
        if (text[i] === close) fail(comma, `a trailing comma before "${close}" — JSON allows none after the last ${noun}: remove it`);
        continue;
      }
      if (isComment()) fail(i, COMMENT);
      if (VALUE_START.test(next)) fail(after, `a comma is missing here, before the next ${noun} — add ","`);
      fail(i, `unexpected "${next}" after a value — a "," or the closing "${close}" should come here`);
    }
  };

  const member = (): void => {
    skipSpace();
    atEnd();
    const c = text[i];
    if (c !== '"') {
      if (isComment()) fail(i, COMMENT);
      if (c === "'") fail(i, SINGLE_QUOTES);
      if (/[A-Za-z_$]/.test(c)) fail(i, 'a field name without quotes — JSON needs double quotes: "name": …');
      fail(i, `unexpected "${c}" where a field name in double quotes should be`);
    }
    string();
    const afterName = i;
    skipSpace();
    atEnd();
    if (text[i] !== ':') fail(afterName, 'a colon is missing after the field name — write "name": value');
    i++;
    value();
  };

  const string = (): void => {
    const open = i++;
    for (;;) {
      const c = text[i];
      // JSON strings never span lines: one that reaches a line end lacks its closing quote.
      if (c === undefined || c === '\n' || c === '\r') fail(open, 'this string is not closed on its line — add the closing "');
      if (c === '"') { i++; return; }
      if (c < ' ') fail(i, 'a tab or control character inside a string — write it as \\t (or \\n …)');
      if (c === '\\') {
        const e = text[i + 1];
        if (e === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) { i += 6; continue; }
        if (e === undefined || !'"\\/bfnrt'.includes(e)) {
          fail(i, 'a backslash starts an escape ("\\n", "\\"") — write "\\\\" for a backslash itself (or "/" in a Windows path)');
        }
        i += 2;
        continue;
      }
      i++;
    }
  };

  const number = (): void => {
    const valid = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
    valid.lastIndex = i;
    const m = valid.exec(text);
    const next = m ? text[i + m[0].length] ?? '' : '';
    if (!m || /[\d.eE]/.test(next)) fail(i, 'not a valid number — write e.g. 7, -2, 1.5 or 1e6 (no leading zeros, digits after a point)');
    i += m![0].length;
  };

  try {
    if (text.charCodeAt(0) === 0xfeff) fail(0, 'the file starts with a byte-order mark — save it as UTF-8 without BOM');
    value();
    skipSpace();
    if (i < text.length) {
      fail(i, text[i] === '}' || text[i] === ']'
        ? `a "${text[i]}" too many — the JSON is already complete before it: remove it or check the brackets above`
        : isComment() ? COMMENT : 'more text after the end of the JSON — the whole config is one object');
    }
    return null;
  } catch (err) {
    if (err instanceof Broken) return { offset: err.offset, problem: err.problem };
    return null; // too deep to follow (a RangeError): the caller falls back on JSON.parse's message
  }
}

/** 1-based line and column of `offset` (columns in characters, as editors count them). */
export function lineAndColumn(text: string, offset: number): { line: number; column: number; lineText: string } {
  const before = text.slice(0, offset);
  const start = before.lastIndexOf('\n') + 1;
  const stop = text.indexOf('\n', start);
  const lineText = text.slice(start, stop < 0 ? text.length : stop).replace(/\r$/, '');
  return { line: before.split('\n').length, column: Array.from(text.slice(start, offset)).length + 1, lineText };
}

function where(text: string, offset: number): string {
  const { line, column } = lineAndColumn(text, offset);
  return `line ${line}, column ${column}`;
}

// Characters of a long line shown on each side of the column (a minified file is one line).
const EXCERPT_SIDE = 60;

/** The line with a caret under the column, indented to sit under a problem's bullet. */
export function excerpt(text: string, offset: number, indent = '    '): string {
  const { line, column, lineText } = lineAndColumn(text, offset);
  const chars = Array.from(lineText);
  const from = Math.max(0, column - 1 - EXCERPT_SIDE);
  const to = Math.min(chars.length, column - 1 + EXCERPT_SIDE);
  const shownText = `${from > 0 ? '…' : ''}${chars.slice(from, to).join('')}${to < chars.length ? '…' : ''}`;
  // Tabs before the column stay tabs, so the caret lines up however they are shown.
  const pad = `${from > 0 ? ' ' : ''}${chars.slice(from, column - 1).map((c) => (c === '\t' ? '\t' : ' ')).join('')}`;
  const gutter = String(line);
  return `${indent}${gutter} | ${shownText}\n${indent}${' '.repeat(gutter.length)} | ${pad}^`;
}

/** A ConfigError problem for a file JSON.parse refused: line, column, the likely slip, the line itself. */
export function describeJsonError(text: string, err: Error): string {
  const found = findJsonError(text);
  if (!found) return `not valid JSON: ${err.message}`;
  const message = `not valid JSON at ${where(text, found.offset)}: ${found.problem}`;
  // An empty file has no line worth showing.
  return text.trim() === '' ? message : `${message}\n${excerpt(text, found.offset)}`;
}
