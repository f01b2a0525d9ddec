/**
 * Config validation of "capture": "log" (issue 15): log capture reads the
 * write-ahead log of a postgres source's table, so an entity asking for it
 * with a query, with a cursor, or on an http, csv or jsonl source gets one
 * clear problem naming the path and saying what to change.
 */
import { describe, it, expect } from 'vitest';
import { configProblems as problems } from './helpers/config.js';

const config = (entity: Record<string, unknown>, sources: Record<string, unknown> = {}) => ({
  sources: {
    pg: { kind: 'postgres', url: 'postgres://u:pw@db.example.com/app' },
    shop: { kind: 'http', baseUrl: 'https://shop.example.com/api' },
    files: { kind: 'csv' },
    lines: { kind: 'jsonl' },
    ...sources,
  },
  entities: { items: { target: 'items', key: ['id'], capture: 'log', ...entity } },
});

describe('"capture": "log" in the config', () => {
  it('is valid on a postgres source entity reading a table', () => {
    expect(problems(config({ source: 'pg', from: { table: 'items' } }))).toEqual([]);
    expect(problems(config({ source: 'pg', from: { table: 'items' }, tenant: { column: 'tenant', value: 'acme' }, key: ['tenant', 'id'] }))).toEqual([]);
  });

  it('on a query entity: names entities.items.capture and says to read a table', () => {
    expect(problems(config({ source: 'pg', from: { query: 'select * from items' } }))).toEqual([
      'entities.items.capture: log capture reads a table\'s changes: use "from": {"table": …} with a postgres source, or remove "capture"',
    ]);
  });

  it('with a cursor: names entities.items.cursor and says to remove it', () => {
    expect(problems(config({ source: 'pg', from: { table: 'items' }, cursor: { column: 'updated_at' } }))).toEqual([
      'entities.items.cursor: log capture reads every change in commit order, no cursor needed — remove "cursor"',
    ]);
  });

  it('on an http source: names entities.items.capture', () => {
    const found = problems(config({ source: 'shop', from: { http: { path: 'items' } } }));
    expect(found.length, JSON.stringify(found)).toBeGreaterThan(0);
    expect(found.every((p) => p.startsWith('entities.items.capture: ')), JSON.stringify(found)).toBe(true);
    expect(found).toContain('entities.items.capture: log capture reads a PostgreSQL source\'s write-ahead log, and source "shop" is http — remove "capture"');
  });

  it('on a csv or jsonl source: names entities.items.capture and the source\'s kind', () => {
    for (const [source, kind] of [['files', 'csv'], ['lines', 'jsonl']]) {
      const found = problems(config({ source, from: { file: 'items.csv' } }));
      expect(found.length, JSON.stringify(found)).toBeGreaterThan(0);
      expect(found.every((p) => p.startsWith('entities.items.capture: ')), JSON.stringify(found)).toBe(true);
      expect(found.join('\n')).toMatch(new RegExp(`source "${source}" is ${kind} — remove "capture"`));
    }
  });
});
