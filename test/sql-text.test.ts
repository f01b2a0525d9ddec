/**
 * The query lexer (src/sources/sql-text.ts): where PostgreSQL's lexer says a
 * statement ends, and whether a from.query is one SELECT. Examples, fast-check
 * properties, and PostgreSQL itself as the oracle for the tricky rules.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { renderTemplate, statementProblem, templateProblem, tokenize, SqlTextError } from '../src/sources/postgres/sql-text.js';
import { SourcePools } from '../src/sources/postgres/read.js';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import type { Pool } from '../src/db/pool.js';

const accepted = (sql: string) => statementProblem(sql) === null;

// Texts PostgreSQL reads as ONE statement: the ";" are inside strings,
// identifiers or comments, by rules a naive scanner gets wrong.
const ONE = [
  'select 1', 'SELECT 1;', 'select 1;;  -- done', 'select 1; /* trailing */', '(select 1) union (select 2)',
  'with x as (select 1) select * from x', 'values (1), (2)', 'table pg_class',
  `select ';' as a, 1 as "x;y", $$;$$ as c, $q$ $$ ; $q$ as d, E'\\';' as e`, 'select 1 /* a /* b */ ; select 2 */',
  'select 1 -- ; select 2\n', 'select /* /* ; */ ; */ 1', 'select 1 /*/ ; */',
  "select 'x'\n'\\'';select 2;--'", // a plain string continues plainly: \ is a character, '' a quote
  "select 'a;\\' as a", "select U&'d;\\0061' as a", "select 'a' -- c\n'b;' as a",
];
// Texts PostgreSQL reads as TWO statements.
const TWO = [
  'select 1; select 2', 'select 1 as x$a$;select 2 as y$a$', // $ continues a name: no dollar quote
  'select 1 as é$a$;select 2 as y$a$', 'select 1 as x\u00a0$a$;select 2 as y$a$', 'select 1 as 😀$a$;select 2 as y$a$',
  "select E'x'\n'\\'';select 2;--'", // the continuation of an E'' string keeps its escapes
  "select E'x' -- c\n'\\'';select 2;--'", 'select 1 --c\r;select 2', 'select 1 /* a /* b */ */ ; select 2',
];

describe('statementProblem', () => {
  it('accepts one statement whatever its strings, identifiers and comments hold', () => {
    for (const sql of ONE) expect(statementProblem(sql), sql).toBeNull();
  });

  it('rejects a second statement hidden by rules a naive scanner gets wrong', () => {
    for (const sql of TWO) expect(statementProblem(sql), sql).toMatch(/^has a ";" on line \d+ followed by more SQL/);
  });

  it('rejects the query that deleted from the source, with the line and how to fix it', () => {
    expect(statementProblem('select * from t) q; commit; delete from t; select (1')).toBe(
      'has a ";" on line 1 followed by more SQL — a source query is exactly one statement: remove the ";" and what follows it');
    expect(statementProblem('select *\nfrom t where (a = 1')).toBe('has a "(" on line 2 that is never closed — balance the parentheses');
    expect(statementProblem('select *\n\nfrom t) q')).toBe('has a ")" on line 3 without a matching "(" — balance the parentheses');
  });

  it('rejects what is not a SELECT, WITH, VALUES or TABLE', () => {
    for (const sql of ['delete from t', 'commit', '-- c\nupdate t set a = 1', 'set transaction read write', 'copy t to stdout']) {
      expect(statementProblem(sql), sql).toMatch(/^starts with "\w+", not SELECT, WITH, VALUES or TABLE/);
    }
    expect(statementProblem("'s3cret' union select 1")).toBe('starts with a string, not SELECT, WITH, VALUES or TABLE — a source is read with one SELECT');
    expect(statementProblem(' -- nothing\n')).toBe('is empty — write one SELECT');
  });

  it('names the line where an unterminated string, identifier or comment starts', () => {
    expect(statementProblem("select 1,\n'abc")).toBe("has an unterminated quoted string starting on line 2 — close it with '");
    expect(statementProblem("select 1,\n\nE'abc\\'")).toMatch(/^has an unterminated E'…' string starting on line 3/);
    expect(statementProblem('select $x$ a $y$')).toBe('has an unterminated dollar-quoted string $x$ starting on line 1 — close it with $x$');
    expect(statementProblem('select "a')).toMatch(/^has an unterminated quoted identifier starting on line 1/);
    expect(statementProblem('select 1 /* a /* b */')).toMatch(/^has an unterminated block comment starting on line 1 — close it with \*\//);
  });

  it('refuses a placeholder inside a string, where it would never be replaced', () => {
    expect(templateProblem("select * from t where tenant = '{{tenant}}'")).toMatch(/^has \{\{tenant\}\} inside a quoted string on line 1/);
    expect(templateProblem('select * from t -- {{tenant}}\nwhere tenant = {{tenant}}')).toBeNull();
    // Once filled in, a value may hold anything.
    expect(statementProblem("select * from t where tenant = '{{cursor}}'")).toBeNull();
  });
});

describe('renderTemplate', () => {
  it('replaces placeholders in one pass, never inside a value, a string or a comment', () => {
    expect(renderTemplate("select {{tenant}} as t, '{{cursor}}' as s -- {{cursor}}\n, {{cursor}} as c",
      { tenant: "'{{cursor}}'", cursor: "'2024'::date" }))
      .toBe("select '{{cursor}}' as t, '{{cursor}}' as s -- {{cursor}}\n, '2024'::date as c");
  });

  it('cuts trailing semicolons and comments, and nothing else', () => {
    expect(renderTemplate('select 1 -- one\n;; -- done', { tenant: '', cursor: '' })).toBe('select 1 -- one\n');
    expect(renderTemplate('select 1; select 2', { tenant: '', cursor: '' })).toBe('select 1; select 2');
  });

  it('throws SqlTextError with the line for unterminated text', () => {
    expect(() => tokenize("select 1\n'")).toThrow(SqlTextError);
  });
});

// Random pieces of one statement with ";", parens, quotes and comment marks inside them.
const tricky = fc.string({ unit: fc.constantFrom(';', '(', ')', "'", '"', '\\', '$', '-', '/', '*', '\n', 'e', 'E', 'a', ' ', 'é', 'q'), maxLength: 12 });
const lineText = tricky.map((s) => s.replace(/[\n\r]/g, ' '));
const escaped = (s: string) => s.replaceAll('\\', '\\\\').replaceAll("'", "\\'");
const literal = fc.oneof(
  tricky.map((s) => `'${s.replaceAll("'", "''")}'`),
  fc.tuple(tricky, fc.boolean()).map(([s, doubled]) => `E'${s.replaceAll('\\', '\\\\').replaceAll("'", doubled ? "''" : "\\'")}'`),
  fc.tuple(fc.constantFrom('', 'a', 'q_1', 'é'), tricky).map(([tag, s]) => [`$${tag}$`, s, `$${tag}$`] as const)
    .filter(([open, s]) => `${s}${open}`.indexOf(open) === s.length).map((p) => p.join('')),
  // Two literals with a newline between are one, and the second keeps the first one's escapes.
  fc.tuple(tricky, lineText, tricky).map(([a, c, b]) => `'${a.replaceAll("'", "''")}' -- ${c}\n  '${b.replaceAll("'", "''")}'`),
  fc.tuple(tricky, tricky).map(([a, b]) => `E'${escaped(a)}'\n'${escaped(b)}'`),
);
const noCommentMarks = tricky.filter((s) => !/\/\*|\*\//.test(s));
const comment = fc.oneof(
  lineText.map((s) => ` -- ${s}\n`),
  noCommentMarks.map((s) => ` /* ${s} */ `),
  noCommentMarks.map((s) => ` /* a /* ${s} */ b */ `),
);
const alias = tricky.filter((s) => s.length > 0 && !s.includes('\u0000')).map((s) => ` as "${s.replaceAll('"', '""')}"`);
const item = fc.tuple(fc.option(comment), literal, fc.option(comment), fc.option(alias, { nil: '' }))
  .map(([c1, lit, c2, as]) => `${c1 ?? ''}(${lit})${c2 ?? ''}${as}`);
const statement = fc.array(item, { minLength: 1, maxLength: 4 }).map((items) => `select ${items.join(', ')}`);
/** A second statement after one of the items, outside every string and comment. */
const injected = (...tails: string[]) => fc.tuple(fc.array(item, { minLength: 1, maxLength: 4 }), fc.nat(), fc.constantFrom(...tails))
  .map(([items, at, tail]) => {
    const i = at % items.length;
    return `select ${[...items.slice(0, i), `${items[i]}${tail}`, ...items.slice(i + 1)].join(', ')}`;
  });

describe('statementProblem (properties)', () => {
  it('a statement made of strings, identifiers and comments holding ";" and parens is accepted', () => {
    fc.assert(fc.property(statement, fc.constantFrom('', ';', '; -- end', ';\n;'), (sql, end) => {
      expect(statementProblem(`${sql}${end}`)).toBeNull();
    }), { numRuns: 2000 });
  });

  it('the same with a "; delete …" injected outside them is rejected', () => {
    fc.assert(fc.property(injected('; delete from t', ';delete from t -- x\n', ' ;\ndelete from t;'), (sql) => {
      expect(statementProblem(sql)).toMatch(/^has a ";" on line \d+ followed by more SQL/);
    }), { numRuns: 2000 });
  });
});

describe('statementProblem agrees with PostgreSQL', () => {
  let db: TestDatabase;
  let pools: SourcePools;
  let pool: Pool;
  beforeAll(async () => {
    db = await testDatabase('sql_text', { migrated: false });
    pools = new SourcePools(db.url);
    // A source session: standard_conforming_strings is on, as the lexer assumes.
    pool = pools.get('src', { kind: 'postgres', url: db.url }).pool;
  });
  afterAll(async () => { await pools.close(); });

  /** How many statements PostgreSQL ran: the simple protocol answers one result each. */
  const statements = async (sql: string) => {
    const res = await pool.query(sql);
    return Array.isArray(res) ? res.length : 1;
  };

  it('on the tricky examples', async () => {
    for (const sql of ONE) expect(await statements(sql), sql).toBe(1);
    for (const sql of TWO) expect(await statements(sql), sql).toBe(2);
  });

  it('on random statements, with and without a second one injected (property)', async () => {
    await fc.assert(fc.asyncProperty(fc.oneof(statement, injected('; select 2', ' ;\nselect 2 -- x\n')), async (sql) => {
      expect(accepted(sql)).toBe(await statements(sql) === 1);
    }), { numRuns: 300 });
  });
});
