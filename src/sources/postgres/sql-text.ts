/**
 * PostgreSQL's lexical rules, as far as they decide where a statement ends:
 * '…' strings ('' is a quote), E'…' strings (a backslash escapes the next
 * character), $tag$…$tag$ strings, "…" identifiers, -- line comments and
 * nested block comments. A source query reaches the source inside
 * `COPY (…) TO STDOUT`, which pg-copy-streams sends over the simple query
 * protocol: every statement in the text runs. This lexer is how a query is
 * proven to be one statement before that.
 *
 * It assumes standard_conforming_strings = on, which every source session
 * sets: a backslash in a plain '…' string is an ordinary character.
 */

export type TokenKind = 'space' | 'comment' | 'string' | 'quoted' | 'word' | 'placeholder' | 'symbol';
export interface Token { kind: TokenKind; text: string; line: number }

/** Text that ends inside a string, identifier or comment. */
export class SqlTextError extends Error {
  constructor(message: string, readonly line: number) {
    super(message);
    this.name = 'SqlTextError';
  }
}

// Character classes of PostgreSQL's scan.l: every byte of a multi-byte
// character (here: every UTF-16 unit from U+0080) is a letter, and `$` may
// continue a name, so `x$a$` is one name, not a dollar quote.
const SPACE = /[ \t\n\r\f\v]+/y;
const WORD = /[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*/y;
const DOLLAR_TAG = /\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/y;
const PLACEHOLDER = /\{\{(?:tenant|cursor)\}\}/y;
const PLACEHOLDER_IN = /\{\{(?:tenant|cursor)\}\}/;
// Two string literals separated by whitespace holding a newline are one
// literal, and the second part keeps the first part's escaping rules.
const CONTINUATION = /(?:[ \t\f]|--[^\n\r]*)*[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*[\n\r])*'/y;

/** Where the regular expression matches at `i` ends, or -1. */
function matchAt(re: RegExp, sql: string, i: number): number {
  re.lastIndex = i;
  return re.test(sql) ? re.lastIndex : -1;
}

function lineAt(sql: string, i: number): number {
  let line = 1;
  for (let j = sql.indexOf('\n'); j !== -1 && j < i; j = sql.indexOf('\n', j + 1)) line++;
  return line;
}

function unterminated(sql: string, start: number, what: string, close: string): SqlTextError {
  const line = lineAt(sql, start);
  return new SqlTextError(`has an unterminated ${what} starting on line ${line} — close it with ${close}`, line);
}

/** The end of the string literal whose opening quote is at `open`, continuations included. */
function stringEnd(sql: string, open: number, backslashes: boolean): number {
  let i = open + 1;
  for (;;) {
    while (i < sql.length && sql[i] !== "'") i += backslashes && sql[i] === '\\' ? 2 : 1;
    if (i >= sql.length) return -1;
    if (sql[i + 1] === "'") { i += 2; continue; }
    const next = matchAt(CONTINUATION, sql, i + 1);
    if (next === -1) return i + 1;
    i = next;
  }
}

function quotedEnd(sql: string, open: number): number {
  for (let i = open + 1; i < sql.length; i++) {
    if (sql[i] !== '"') continue;
    if (sql[i + 1] !== '"') return i + 1;
    i++;
  }
  return -1;
}

function blockCommentEnd(sql: string, open: number): number {
  let depth = 0;
  for (let i = open; i < sql.length;) {
    if (sql.startsWith('/*', i)) { depth++; i += 2; } else if (sql.startsWith('*/', i)) {
      i += 2;
      if (--depth === 0) return i;
    } else i++;
  }
  return -1;
}

function lineCommentEnd(sql: string, i: number): number {
  while (i < sql.length && sql[i] !== '\n' && sql[i] !== '\r') i++;
  return i;
}

/** Kind and end of the token starting at `i`. */
function scan(sql: string, i: number): [TokenKind, number] {
  const c = sql[i];
  const or = (end: number, what: string, close: string): number => {
    if (end === -1) throw unterminated(sql, i, what, close);
    return end;
  };
  if (sql.startsWith('--', i)) return ['comment', lineCommentEnd(sql, i)];
  if (sql.startsWith('/*', i)) return ['comment', or(blockCommentEnd(sql, i), 'block comment', '*/')];
  if ((c === 'e' || c === 'E') && sql[i + 1] === "'") return ['string', or(stringEnd(sql, i + 1, true), 'E\'…\' string', "'")];
  if (c === "'") return ['string', or(stringEnd(sql, i, false), 'quoted string', "'")];
  if (c === '"') return ['quoted', or(quotedEnd(sql, i), 'quoted identifier', '"')];
  const tagEnd = c === '$' ? matchAt(DOLLAR_TAG, sql, i) : -1;
  if (tagEnd !== -1) {
    const tag = sql.slice(i, tagEnd);
    const close = sql.indexOf(tag, tagEnd);
    return ['string', or(close === -1 ? -1 : close + tag.length, `dollar-quoted string ${tag}`, tag)];
  }
  for (const [kind, re] of [['space', SPACE], ['word', WORD], ['placeholder', PLACEHOLDER]] as const) {
    const end = matchAt(re, sql, i);
    if (end !== -1) return [kind, end];
  }
  return ['symbol', i + 1];
}

/** The text as PostgreSQL's lexer splits it; throws SqlTextError when it ends inside a string or comment. */
export function tokenize(sql: string): Token[] {
  const tokens: Token[] = [];
  let line = 1;
  for (let i = 0; i < sql.length;) {
    const [kind, end] = scan(sql, i);
    const text = sql.slice(i, end);
    tokens.push({ kind, text, line });
    line += text.split('\n').length - 1;
    i = end;
  }
  return tokens;
}

const isCode = (t: Token) => t.kind !== 'space' && t.kind !== 'comment';
const isSemicolon = (t: Token) => t.kind === 'symbol' && t.text === ';';
const STARTS = new Set(['select', 'with', 'values', 'table']);

/** Why the tokens are not one statement: a ";" with more SQL after it, or unbalanced parentheses. */
function structureProblem(code: Token[]): string | null {
  const semi = code.findIndex(isSemicolon);
  if (semi !== -1 && !code.slice(semi).every(isSemicolon)) {
    return `has a ";" on line ${code[semi].line} followed by more SQL — a source query is exactly one statement: remove the ";" and what follows it`;
  }
  const open: Token[] = [];
  for (const t of code) {
    if (t.kind !== 'symbol') continue;
    if (t.text === '(') open.push(t);
    if (t.text === ')' && !open.pop()) return `has a ")" on line ${t.line} without a matching "(" — balance the parentheses`;
  }
  return open.length ? `has a "(" on line ${open[0].line} that is never closed — balance the parentheses` : null;
}

/**
 * Why `sql` is not exactly one SELECT (or WITH, VALUES, TABLE) statement, as
 * a phrase that says how to fix it; null when it is one. Trailing semicolons
 * and comments are allowed.
 */
export function statementProblem(sql: string): string | null {
  let tokens: Token[];
  try {
    tokens = tokenize(sql);
  } catch (err) {
    if (err instanceof SqlTextError) return err.message;
    throw err;
  }
  const code = tokens.filter(isCode);
  const first = code.find((t) => t.text !== '(');
  if (!first) return 'is empty — write one SELECT';
  if (first.kind !== 'word' || !STARTS.has(first.text.toLowerCase())) {
    // A literal is not echoed: the query may hold a value from ${ENV}.
    const what = first.kind === 'string' ? 'a string' : `"${first.text.slice(0, 20)}"`;
    return `starts with ${what}, not SELECT, WITH, VALUES or TABLE — a source is read with one SELECT`;
  }
  return structureProblem(code);
}

/**
 * statementProblem of a from.query template, which also must not hold a
 * placeholder inside a string: it is not replaced there.
 */
export function templateProblem(sql: string): string | null {
  const problem = statementProblem(sql);
  if (problem) return problem;
  const quoted = tokenize(sql).find((t) => t.kind === 'string' && PLACEHOLDER_IN.test(t.text));
  if (!quoted) return null;
  const name = PLACEHOLDER_IN.exec(quoted.text)![0];
  return `has ${name} inside a quoted string on line ${quoted.line}, where it is not replaced — write it bare, it becomes a quoted literal: tenant_id = ${name}`;
}

/**
 * The query template with each {{tenant}} and {{cursor}} outside strings and
 * comments replaced by its value, in one pass (a value is never searched for
 * placeholders), and trailing semicolons and comments cut off so the query
 * can be wrapped in a subquery.
 */
export function renderTemplate(sql: string, values: { tenant: string; cursor: string }): string {
  const tokens = tokenize(sql);
  const semi = tokens.findIndex(isSemicolon);
  const trailing = semi !== -1 && tokens.slice(semi).every((t) => !isCode(t) || isSemicolon(t));
  return (trailing ? tokens.slice(0, semi) : tokens)
    .map((t) => (t.kind === 'placeholder' ? values[t.text.slice(2, -2) as 'tenant' | 'cursor'] : t.text)).join('');
}
