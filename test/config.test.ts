import { describe, it, expect, beforeAll } from 'vitest';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { parseConfig, substituteEnv, formatPath } from '../src/config/load.js';
import { findCycle, topoOrder } from '../src/config/schema.js';
import { configJsonSchema } from '../src/config/json-schema.js';
import { applyConfig, diffConfig } from '../src/config/apply.js';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { configProblems } from './helpers/config.js';

const base = {
  sources: { remote: { kind: 'postgres', url: 'postgres://u:pw@db.example.com/app' } },
  entities: {
    meters: { source: 'remote', from: { table: 'meters' }, target: 'public.meters', key: ['id'] },
  },
};

const problems = configProblems;

describe('config validation', () => {
  it('accepts a minimal config and fills defaults', () => {
    const cfg = parseConfig(base, {});
    expect(cfg.entities.meters).toMatchObject({ mode: 'mirror', direction: 'pull', dependsOn: [], enabled: true,
      target: { schema: 'public', table: 'meters' } });
  });

  it('tells a value of the wrong type from a missing one, without repeating the value (it may be a secret)', () => {
    const raw = structuredClone(base) as any;
    raw.entities.meters.key = 'id';
    raw.entities.meters.enabled = 'sekret-value';
    const p = problems(raw);
    expect(p).toContain('entities.meters.key: must be an array, not a string');
    expect(p).toContain('entities.meters.enabled: must be a boolean, not a string');
    expect(p.join('\n')).not.toContain('sekret-value');
  });

  it('names the JSON path of a bad field and says how to fix it', () => {
    const raw = structuredClone(base) as any;
    raw.entities.meters.mode = 'replace';
    raw.entities.meters.key = [];
    raw.entities.meters.colums = ['id'];
    const p = problems(raw);
    expect(p).toEqual(expect.arrayContaining([
      expect.stringMatching(/^entities\.meters\.mode: .*mirror/),
      expect.stringMatching(/^entities\.meters\.key: needs at least one key column/),
      'entities.meters: unknown field "colums" — did you mean "columns"?',
    ]));
  });

  it('rejects an undefined source and a dependency on an unknown entity', () => {
    const raw = structuredClone(base) as any;
    raw.entities.meters.source = 'nope';
    raw.entities.meters.dependsOn = ['ghost'];
    expect(problems(raw)).toEqual(expect.arrayContaining([
      'entities.meters.source: source "nope" is not defined — add it under "sources" or use one of: remote',
      'entities.meters.dependsOn[0]: entity "ghost" is not defined',
    ]));
  });

  it('reports a dependency cycle naming its members', () => {
    const raw = structuredClone(base) as any;
    raw.entities.a = { ...raw.entities.meters, dependsOn: ['b'] };
    raw.entities.b = { ...raw.entities.meters, dependsOn: ['a'] };
    expect(problems(raw).join('\n')).toMatch(/dependency cycle: a → b → a/);
  });

  it('substitutes ${ENV} and ${ENV:-default}, and names a missing variable with its path', () => {
    const raw = structuredClone(base) as any;
    raw.sources.remote.url = 'postgres://u:${PW}@${HOST:-localhost}/app';
    expect((parseConfig(raw, { PW: 's3cret' }).sources.remote as { url: string }).url).toBe('postgres://u:s3cret@localhost/app');
    expect(problems(raw, {})).toEqual([
      'sources.remote.url: environment variable PW is not set — export it or put it in .env',
    ]);
  });

  it('substitution leaves strings without references unchanged (property)', () => {
    fc.assert(fc.property(fc.string().filter((s) => !s.includes('${')), (s) => {
      const p: string[] = [];
      expect(substituteEnv({ a: [s] }, {}, p)).toEqual({ a: [s] });
      expect(p).toEqual([]);
    }));
  });

  it('formats paths people can read', () => {
    expect(formatPath(['entities', 'my entity', 'key', 0])).toBe('entities["my entity"].key[0]');
  });

  it('asks which copied parent columns identify the parent of nested records', () => {
    const raw = {
      sources: { shop: { kind: 'http', baseUrl: 'https://shop.example.com/api' } },
      entities: {
        items: { source: 'shop', target: 'items', key: ['id'],
          from: { http: { path: 'sales' }, nested: { path: 'line_items', parent: { sale_id: 'id', sale_version: 'version' } } } },
      },
    };
    expect(problems(raw).join()).toMatch(/^entities\.items\.from\.nested\.parentKey: "parent" copies several columns/);
  });

  it('needs exactly one of url and database on a postgres source', () => {
    const raw = structuredClone(base) as any;
    raw.sources.remote.database = 'other';
    expect(problems(raw).join()).toMatch(/exactly one of "url".*or "database"/);
  });
});

describe('dependency order', () => {
  const graphs = fc.dictionary(fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f'), fc.array(fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f')));
  it('every acyclic graph orders each entity after its dependencies (property)', () => {
    fc.assert(fc.property(graphs, (g) => {
      fc.pre(findCycle(g) === null);
      const order = topoOrder(g);
      expect(new Set(order)).toEqual(new Set(Object.keys(g)));
      for (const [n, deps] of Object.entries(g)) {
        for (const d of deps) if (d in g) expect(order.indexOf(d)).toBeLessThan(order.indexOf(n));
      }
    }));
  });
  it('a reported cycle is a real closed path of the graph (property)', () => {
    fc.assert(fc.property(graphs, (g) => {
      const cycle = findCycle(g);
      if (!cycle) return;
      expect(cycle[0]).toBe(cycle[cycle.length - 1]);
      for (let i = 0; i + 1 < cycle.length; i++) expect(g[cycle[i]]).toContain(cycle[i + 1]);
    }));
  });
});

describe('JSON Schema', () => {
  it('the committed syncline.config.schema.json is generated from the zod schema (npm run config:schema)', () => {
    const committed = JSON.parse(readFileSync(new URL('../syncline.config.schema.json', import.meta.url), 'utf8'));
    expect(committed).toEqual(JSON.parse(JSON.stringify(configJsonSchema())));
  });
});

describe('config apply', () => {
  let db: TestDatabase;
  beforeAll(async () => { db = await testDatabase('config'); });

  it('applies the entities, then re-applying changes nothing', async () => {
    const cfg = parseConfig(base, {});
    expect(await applyConfig(db.pool, cfg)).toEqual([{ name: 'meters', action: 'add', fields: [] }]);
    const before = await db.pool.query('select updated_at, xmin::text from sync.entity');
    expect(await applyConfig(db.pool, cfg)).toEqual([]);
    expect((await db.pool.query('select updated_at, xmin::text from sync.entity')).rows).toEqual(before.rows);
  });

  it('prints field-level changes and removes entities dropped from the config', async () => {
    const raw = structuredClone(base) as any;
    raw.entities.meters.mode = 'upsert';
    raw.entities.other = { ...base.entities.meters };
    const diffs = await diffConfig(db.pool, parseConfig(raw, {}));
    expect(diffs.find((d) => d.name === 'meters')?.fields.map((f) => f.field)).toEqual(['mode', 'definition']);
    expect(diffs.find((d) => d.name === 'other')?.action).toBe('add');
    await applyConfig(db.pool, parseConfig(raw, {}));
    delete raw.entities.meters;
    expect(await applyConfig(db.pool, parseConfig(raw, {}))).toEqual([{ name: 'meters', action: 'remove', fields: [] }]);
  });

  it('never stores a source secret in sync tables', async () => {
    const { rows } = await db.pool.query(`select count(*)::int as n from sync.entity where definition::text like '%pw@%' or definition::text like '%db.example.com%'`);
    expect(rows[0].n).toBe(0);
  });
});
