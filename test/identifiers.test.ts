/**
 * Names in the config are checked against Postgres' limit of 63 bytes, not
 * characters (issue 10, rule 8): a longer name is cut by Postgres and then
 * found missing ("column … does not exist"), which says nothing useful.
 */
import { describe, it, expect } from 'vitest';
import { parseConfig, ConfigError } from '../src/config/load.js';

const config = (entity: Record<string, unknown>) => ({
  sources: { remote: { kind: 'postgres', url: 'postgres://u@db.example.com/app' } },
  entities: { meters: { source: 'remote', from: { table: 'meters' }, target: 'meters', key: ['id'], ...entity } },
});

function problems(raw: unknown): string[] {
  try {
    parseConfig(raw, {});
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

const E40 = 'é'.repeat(40); // 40 characters, 80 bytes

describe('identifier length', () => {
  it('counts bytes: 40 × "é" is refused with the byte count, 63 bytes pass', () => {
    expect(problems(config({ key: [E40] }))).toEqual([
      'entities.meters.key[0]: must be at most 63 bytes in UTF-8 (a Postgres identifier; "é" takes 2) — this one has 80: shorten it',
    ]);
    expect(problems(config({ key: [`${'é'.repeat(31)}a`], columns: [`${'é'.repeat(31)}a`] }))).toEqual([]);
    expect(problems(config({ key: ['a'.repeat(64)] }))).toEqual([
      'entities.meters.key[0]: must be at most 63 bytes in UTF-8 (a Postgres identifier; "é" takes 2) — this one has 64: shorten it',
    ]);
  });

  it('checks every name: columns, tenant, cursor, and the tables of "schema.table" strings', () => {
    const p = problems(config({ columns: ['id', E40], tenant: { column: E40, value: 't' }, cursor: { column: E40 },
      from: { table: `public.${E40}` } }));
    expect(p).toEqual(expect.arrayContaining([
      expect.stringMatching(/^entities\.meters\.columns\[1\]: must be at most 63 bytes .* has 80/),
      expect.stringMatching(/^entities\.meters\.tenant\.column: must be at most 63 bytes .* has 80/),
      expect.stringMatching(/^entities\.meters\.cursor\.column: must be at most 63 bytes .* has 80/),
      expect.stringMatching(/^entities\.meters\.from\.table: "é{40}" must be at most 63 bytes .* has 80: shorten it/),
    ]));
  });
});
