import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { loadConfig, ConfigError } from '../src/config/load.js';
import { findJsonError } from '../src/config/json-error.js';
import { closest } from '../src/config/issues.js';
import { EXIT } from '../src/cli/context.js';
import { configProblems } from './helpers/config.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-config-messages-'));

const base = () => ({
  sources: {
    remote: { kind: 'postgres', url: 'postgres://u:pw@db.example.com/app' } as Record<string, unknown>,
    shop: { kind: 'http', baseUrl: 'https://shop.example.com/api' } as Record<string, unknown>,
  },
  entities: {
    meters: { source: 'remote', from: { table: 'meters' }, target: 'meters', key: ['id'] } as Record<string, unknown>,
    products: { source: 'shop', from: { http: { path: 'products' } }, target: 'products', key: ['id'] } as Record<string, unknown>,
  } as Record<string, Record<string, unknown>>,
});

const problems = configProblems;

let files = 0;
function writeConfig(text: string): string {
  const file = path.join(dir, `config-${++files}.json`);
  writeFileSync(file, text);
  return file;
}

/** The one problem loadConfig reports for a file holding `text`. */
function jsonProblem(text: string): string {
  try {
    loadConfig(writeConfig(text), {});
  } catch (err) {
    if (err instanceof ConfigError) {
      expect(err.problems).toHaveLength(1);
      return err.problems[0];
    }
    throw err;
  }
  throw new Error('the file loaded');
}

describe('broken JSON in a config file', () => {
  it('a trailing comma: line, column, the line and a caret under the comma', () => {
    expect(jsonProblem('{\n  "sources": {},\n  "entities": {},\n}\n')).toBe([
      'not valid JSON at line 3, column 17: a trailing comma before "}" — JSON allows none after the last field: remove it',
      '    3 |   "entities": {},',
      '      |                 ^',
    ].join('\n'));
  });

  it('a trailing comma in a list', () => {
    expect(jsonProblem('{\n  "key": ["id", "day",]\n}')).toMatch(/^not valid JSON at line 2, column 22: a trailing comma before "\]"/);
  });

  it('a missing comma is shown where the comma goes', () => {
    expect(jsonProblem('{\n  "sources": {}\n  "entities": {}\n}\n')).toBe([
      'not valid JSON at line 2, column 16: a comma is missing here, before the next field — add ","',
      '    2 |   "sources": {}',
      '      |                ^',
    ].join('\n'));
  });

  it('a comment, of either kind', () => {
    expect(jsonProblem('{\n  // the sources\n  "sources": {}\n}')).toMatch(/^not valid JSON at line 2, column 3: a comment — JSON has none: remove it\n/);
    expect(jsonProblem('{\n  "sources": {}, /* none yet */\n  "entities": {}\n}')).toMatch(/^not valid JSON at line 2, column 18: a comment/);
  });

  it('single quotes and an unquoted field name', () => {
    expect(jsonProblem("{\n  'sources': {}\n}")).toMatch(/^not valid JSON at line 2, column 3: single quotes — .*double quotes/);
    expect(jsonProblem('{\n  sources: {}\n}')).toMatch(/^not valid JSON at line 2, column 3: a field name without quotes/);
  });

  it('an unterminated string is shown at its opening quote', () => {
    expect(jsonProblem('{\n  "sources": {"a": {"kind": "postgres", "url": "postgres://x}},\n  "entities": {}\n}')).toBe([
      'not valid JSON at line 2, column 48: this string is not closed on its line — add the closing "',
      '    2 |   "sources": {"a": {"kind": "postgres", "url": "postgres://x}},',
      '      |                                                ^',
    ].join('\n'));
  });

  it('an empty file, and one of blank lines, say so', () => {
    for (const text of ['', '\n\n  \n']) {
      expect(jsonProblem(text)).toBe('not valid JSON at line 1, column 1: the file is empty — a config is an object: {"sources": {…}, "entities": {…}}');
    }
  });

  it('a file cut short names the bracket left open', () => {
    expect(jsonProblem('{\n  "sources": {\n    "a": {"kind": "csv"}\n')).toMatch(
      /^not valid JSON at line 3, column 25: the file ends before the "\{" at line 2, column 14 is closed — a closing "\}" is missing/);
  });

  it('a CRLF file gets the same line and column as the LF one, and no stray carriage return', () => {
    const lf = '{\n  "sources": {},\n  "entities": {\n    "a": 1\n    "b": 2\n  }\n}\n';
    const crlf = lf.replace(/\n/g, '\r\n');
    expect(jsonProblem(crlf)).toBe(jsonProblem(lf));
    expect(jsonProblem(crlf)).toMatch(/^not valid JSON at line 4, column 11: a comma is missing/);
    expect(jsonProblem(crlf)).not.toContain('\r');
  });

  it('a minified one-line file: the column counts from the start of the file, the excerpt is cut around it', () => {
    const entities = Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`entity${i}`, { source: 'remote', from: { table: `t${i}` }, target: `t${i}`, key: ['id'] }]));
    const valid = JSON.stringify({ sources: { remote: { kind: 'postgres', url: 'postgres://db/app' } }, entities });
    const at = valid.indexOf('"target":"t5"');
    const text = `${valid.slice(0, at - 1)}${valid.slice(at)}`; // the comma before "target" of t5 dropped
    const p = jsonProblem(text);
    expect(p).toMatch(new RegExp(`^not valid JSON at line 1, column ${at}: a comma is missing here`));
    const [, shown, caret] = p.split('\n');
    expect(shown.length).toBeLessThan(140);
    expect(shown).toMatch(/^ {4}1 \| ….*…$/);
    // The caret sits where the comma goes: between {"table":"t5"} and "target".
    const c = caret.indexOf('^');
    expect(shown.slice(c - 5, c + 8)).toBe('"t5"}"target"');
  });

  it('counts columns in characters, not bytes or UTF-16 units', () => {
    expect(jsonProblem('{"name": "Zürich 🚉", "x": 1,}')).toMatch(/^not valid JSON at line 1, column 28: a trailing comma/);
  });

  it('finds an error exactly where JSON.parse does, and none in valid JSON (property)', () => {
    const damage = fc.constantFrom(',', '}', ']', '"', "'", '/', ':', '{', '[', '\n', '0', 'x', ' ', '\\');
    // Compact, and as an editor lays it out (indented, CRLF line ends).
    const documents = fc.oneof(fc.json(), fc.json().map((j) => JSON.stringify(JSON.parse(j), null, 2).replace(/\n/g, '\r\n')));
    fc.assert(fc.property(documents, fc.nat(), fc.nat(), damage, fc.boolean(), (json, at, len, ch, insert) => {
      const i = at % (json.length + 1);
      const text = insert ? json.slice(0, i) + ch + json.slice(i) : json.slice(0, i) + json.slice(i + 1 + (len % 3));
      let parses = true;
      try { JSON.parse(text); } catch { parses = false; }
      const found = findJsonError(text);
      expect(found === null).toBe(parses);
      if (found) expect(found.offset).toBeLessThanOrEqual(text.length);
    }), { numRuns: 500 });
  });
});

describe('schema messages a person can act on', () => {
  const withEntity = (patch: Record<string, unknown>, name = 'meters') => {
    const raw = base();
    Object.assign(raw.entities[name], patch);
    return raw;
  };

  it('a misspelt top-level field gets "did you mean"', () => {
    const { entities, ...rest } = base();
    expect(problems({ ...rest, entitys: entities })).toContain('(top level): unknown field "entitys" — did you mean "entities"?');
  });

  it('misspelt entity fields: dependOn → dependsOn, primaryKey and keys → key', () => {
    expect(problems(withEntity({ dependOn: ['products'] }))).toEqual(['entities.meters: unknown field "dependOn" — did you mean "dependsOn"?']);
    expect(problems(withEntity({ keys: ['id'] }))).toEqual(['entities.meters: unknown field "keys" — did you mean "key"?']);
    const raw = withEntity({ primaryKey: ['id'] });
    delete raw.entities.meters.key;
    expect(problems(raw)).toEqual([
      'entities.meters.key: is required (array) — add it',
      'entities.meters: unknown field "primaryKey" — did you mean "key"?',
    ]);
  });

  it('a misspelt field inside "from"', () => {
    expect(problems(withEntity({ from: { tabel: 'meters' } }))).toEqual(['entities.meters.from: unknown field "tabel" — did you mean "table"?']);
  });

  it('misspelt fields of an http source, its auth and its endpoint', () => {
    const raw = base();
    raw.sources.shop.timeout = 5000;
    raw.sources.shop.auth = { bearr: 'x' };
    (raw.entities.products.from as { http: Record<string, unknown> }).http.recordPath = 'data';
    expect(problems(raw)).toEqual(expect.arrayContaining([
      'sources.shop: unknown field "timeout" — did you mean "timeoutMs"?',
      'sources.shop.auth: unknown field "bearr" — did you mean "bearer"?',
      'entities.products.from.http: unknown field "recordPath" — did you mean "recordsPath"?',
    ]));
  });

  it('a field nothing resembles lists the fields that exist where there are few', () => {
    expect(problems(withEntity({ tenant: { column: 'org', wert: 1 } }))).toEqual(expect.arrayContaining([
      'entities.meters.tenant: unknown field "wert" — remove it, or use one of "column", "value"',
    ]));
  });

  it('a wrong enum value shows the value, a suggestion and the allowed ones', () => {
    expect(problems(withEntity({ mode: 'mirorr' }))).toEqual([
      'entities.meters.mode: "mirorr" is not allowed — did you mean "mirror"? (one of "mirror", "upsert", "append", "soft-delete")',
    ]);
    expect(problems(withEntity({ mode: 'replace' }))).toEqual([
      'entities.meters.mode: "replace" is not allowed — use one of "mirror", "upsert", "append", "soft-delete"',
    ]);
  });

  it('a source "kind" no source has, or none at all', () => {
    const raw = base();
    raw.sources.remote.kind = 'postgress';
    expect(problems(raw)).toEqual(['sources.remote.kind: "postgress" is not allowed — did you mean "postgres"? (one of "postgres", "csv", "http", "jsonl")']);
    delete raw.sources.remote.kind;
    expect(problems(raw)).toEqual(['sources.remote.kind: is required — use one of "postgres", "csv", "http", "jsonl"']);
  });

  it('an http pagination "style" that does not exist', () => {
    const raw = withEntity({ from: { http: { path: 'products', pagination: { style: 'pages' } } } }, 'products');
    expect(problems(raw)).toEqual([
      'entities.products.from.http.pagination.style: "pages" is not allowed — did you mean "page"? '
        + '(one of "page", "offset", "cursor", "next-link", "version", "keyset", "none")',
    ]);
  });

  it('dependsOn: "auto" misspelt, and a value of the wrong kind', () => {
    expect(problems(withEntity({ dependsOn: 'autp' }))).toEqual([
      'entities.meters.dependsOn: "autp" is not allowed — did you mean "auto"? (must be "auto" or an array)',
    ]);
    expect(problems(withEntity({ dependsOn: 3 }))).toEqual(['entities.meters.dependsOn: must be "auto" or an array, not a number']);
    expect(problems(withEntity({ deleteGuard: true }))).toEqual(['entities.meters.deleteGuard: must be false or an object, not a boolean']);
  });

  it('an unknown dependsOn entity and an unknown source are reported beside another error', () => {
    const raw = withEntity({ dependsOn: ['products', 'ghost'], source: 'nope', mode: 'mirorr' });
    expect(problems(raw)).toEqual([
      'entities.meters.mode: "mirorr" is not allowed — did you mean "mirror"? (one of "mirror", "upsert", "append", "soft-delete")',
      'entities.meters.source: source "nope" is not defined — add it under "sources" or use one of: remote, shop',
      'entities.meters.dependsOn[1]: entity "ghost" is not defined',
    ]);
  });

  it('an unknown dependsOn entity or source alone is reported once', () => {
    expect(problems(withEntity({ dependsOn: ['ghost'] }))).toEqual(['entities.meters.dependsOn[0]: entity "ghost" is not defined']);
    expect(problems(withEntity({ source: 'nope' }))).toEqual([
      'entities.meters.source: source "nope" is not defined — add it under "sources" or use one of: remote, shop',
    ]);
  });

  it('a source named like a property every object has is no source', () => {
    expect(problems(withEntity({ source: 'constructor' }))).toEqual([
      'entities.meters.source: source "constructor" is not defined — add it under "sources" or use one of: remote, shop',
    ]);
  });

  it('dependsOn "auto" is no unknown entity, beside another error too', () => {
    expect(problems(withEntity({ dependsOn: 'auto', mode: 'mirorr' }))).toEqual([
      'entities.meters.mode: "mirorr" is not allowed — did you mean "mirror"? (one of "mirror", "upsert", "append", "soft-delete")',
    ]);
    expect(problems(withEntity({ dependsOn: 'auto' }))).toEqual([]);
  });

  it('suggests only what is near: closest', () => {
    expect(closest('depends_on', ['dependsOn', 'direction'])).toBe('dependsOn');
    expect(closest('delimeter', ['delimiter', 'quote'])).toBe('delimiter');
    expect(closest('primaryKey', ['key', 'columns'])).toBe('key');
    expect(closest('frobnicate', ['key', 'columns', 'mode'])).toBeUndefined();
    expect(closest('ab', ['cd'])).toBeUndefined();
  });
});

describe('a value taken from ${ENV} is never repeated in a message', () => {
  // Where a value from the environment goes wrong: a wrong type, a wrong
  // enum or union value, a name that is not defined, a schema message that
  // quotes what it refused (a target with two dots).
  const places: [string, (raw: ReturnType<typeof base>, ref: string) => void][] = [
    ['mode', (raw, ref) => { raw.entities.meters.mode = ref; }],
    ['enabled', (raw, ref) => { raw.entities.meters.enabled = ref; }],
    ['key', (raw, ref) => { raw.entities.meters.key = ref; }],
    ['kind', (raw, ref) => { raw.sources.remote.kind = ref; }],
    ['dependsOn', (raw, ref) => { raw.entities.meters.dependsOn = ref; }],
    ['deleteGuard', (raw, ref) => { raw.entities.meters.deleteGuard = ref; }],
    ['target', (raw, ref) => { raw.entities.meters.target = `a.b.${ref}`; }],
    ['source', (raw, ref) => { raw.entities.meters.source = ref; }],
    ['dependsOn[0]', (raw, ref) => { raw.entities.meters.dependsOn = [ref]; raw.entities.meters.mode = 'mirorr'; }],
    ['style', (raw, ref) => { raw.entities.products.from = { http: { path: 'p', pagination: { style: ref } } }; }],
  ];
  const names = new Set(['mirror', 'upsert', 'append', 'soft-delete', 'postgres', 'csv', 'http', 'auto', 'remote', 'shop', 'meters', 'products',
    'page', 'offset', 'cursor', 'next-link', 'version', 'keyset', 'none']);

  it('wrongly typed or not allowed, whole or inside a longer string (property)', () => {
    // Three characters and more: shorter values are masked only where quoted
    // whole. A "*" could re-form the value out of the mask itself.
    const secret = fc.string({ minLength: 3, maxLength: 30 }).filter((s) => !s.includes('*') && !s.includes('${') && !names.has(s));
    fc.assert(fc.property(secret, fc.constantFrom(...places), fc.constantFrom('', 'x-'), (value, [, put], prefix) => {
      const raw = base();
      put(raw, `${prefix}\${SECRET}`);
      const p = problems(raw, { SECRET: value });
      expect(p.length).toBeGreaterThan(0);
      // Only the text after the path: a path holds field names, never substituted.
      const texts = p.map((line) => line.slice(line.indexOf(': ')));
      for (const t of texts) {
        expect(t).not.toContain(value);
        expect(t).not.toContain(JSON.stringify(value).slice(1, -1));
      }
    }), { numRuns: 300 });
  });

  it('names the problem without the value', () => {
    const raw = base();
    raw.entities.meters.mode = '${MODE}';
    raw.entities.meters.source = '${SOURCE}';
    expect(problems(raw, { MODE: 'mirrorr', SOURCE: 'db-password-9' })).toEqual([
      'entities.meters.mode: the value taken from the environment is not allowed — use one of "mirror", "upsert", "append", "soft-delete"',
      'entities.meters.source: source "***" is not defined — add it under "sources" or use one of: remote, shop',
    ]);
  });
});

describe('syncline config validate', () => {
  function validate(text: string, env: Record<string, string> = {}) {
    const file = writeConfig(text);
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'config', 'validate', '--config', file], {
      encoding: 'utf8',
      env: { ...process.env, SYNCLINE_LOG_LEVEL: 'silent', ...env },
      timeout: 60_000,
    });
    return { code: r.status, out: r.stdout, err: r.stderr, file };
  }

  it('prints where the JSON breaks, with the line and a caret, and exits with the config-error code', () => {
    const r = validate('{\n  "sources": {},\n  "entities": {},\n}\n');
    expect(r.code).toBe(EXIT.usage);
    expect(r.err).toBe([
      `${r.file} is not valid:`,
      '  - not valid JSON at line 3, column 17: a trailing comma before "}" — JSON allows none after the last field: remove it',
      '    3 |   "entities": {},',
      '      |                 ^',
      '',
    ].join('\n'));
  });

  it('prints a did-you-mean, an enum message and an unknown dependsOn together', () => {
    const raw = base();
    raw.entities.meters.dependOn = ['products'];
    raw.entities.products.mode = 'mirorr';
    raw.entities.products.dependsOn = ['ghost'];
    const r = validate(JSON.stringify(raw, null, 2));
    expect(r.code).toBe(EXIT.usage);
    expect(r.err).toContain('  - entities.meters: unknown field "dependOn" — did you mean "dependsOn"?\n');
    expect(r.err).toContain('  - entities.products.mode: "mirorr" is not allowed — did you mean "mirror"? (one of "mirror", "upsert", "append", "soft-delete")\n');
    expect(r.err).toContain('  - entities.products.dependsOn[0]: entity "ghost" is not defined\n');
  });

  it('never prints a value from the environment', () => {
    const raw = base();
    raw.entities.meters.mode = '${SYNC_MODE}';
    raw.entities.meters.target = 'a.b.${SYNC_MODE}';
    const r = validate(JSON.stringify(raw), { SYNC_MODE: 'hunter2-secret' });
    expect(r.code).toBe(EXIT.usage);
    expect(r.err).toMatch(/entities\.meters\.mode: the value taken from the environment is not allowed/);
    expect(r.err).not.toContain('hunter2');
  });

  it('exits 0 for a valid file', () => {
    const r = validate(JSON.stringify(base(), null, 2));
    expect(r.err).toBe('');
    expect(r.code).toBe(EXIT.ok);
    expect(r.out).toContain('is valid: 2 source(s), 2 entities (meters, products)');
  });
});
