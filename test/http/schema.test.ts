import { describe, expect, test } from 'vitest';
import { httpEntityOptions, httpSource } from '../../src/sources/http/schema.js';

const messages = (r: { success: boolean; error?: { issues: { path: PropertyKey[]; message: string }[] } }) =>
  (r.error?.issues ?? []).map((i) => `${i.path.join('.')}: ${i.message}`);

describe('http source config', () => {
  test('a Lightspeed-style source parses with defaults for timeouts and retries', () => {
    const s = httpSource.parse({
      kind: 'http', baseUrl: 'https://shop.retail.lightspeed.app/api/2.0', auth: { bearer: 'tok' },
      rateLimit: { requests: 350, perSeconds: 300 }, preset: 'lightspeed-x',
    });
    expect(s).toMatchObject({ timeoutMs: 30_000, retries: { max: 5, baseMs: 500, maxMs: 30_000, rateLimited: 20 }, headers: {} });
  });

  test('each auth form parses; anything else says which forms exist', () => {
    for (const auth of [{ bearer: 't' }, { basic: { username: 'u', password: 'p' } }, { header: { name: 'X-Key', value: 'v' } }, { query: { name: 'key', value: 'v' } }]) {
      expect(httpSource.safeParse({ kind: 'http', baseUrl: 'https://a.example', auth }).success).toBe(true);
    }
    const bad = httpSource.safeParse({ kind: 'http', baseUrl: 'https://a.example', auth: { token: 't' } });
    expect(messages(bad).join('\n')).toMatch(/auth: auth must be one of \{"bearer"/);
  });

  test('a base URL must be http(s)', () => {
    const bad = httpSource.safeParse({ kind: 'http', baseUrl: 'ftp://a.example' });
    expect(messages(bad)).toEqual(['baseUrl: must be an http:// or https:// URL such as "https://shop.retail.lightspeed.app/api/2.0"']);
  });
});

describe('http entity options', () => {
  test('pagination styles parse with their defaults', () => {
    expect(httpEntityOptions.parse({ path: 'items', pagination: { style: 'page' } }).pagination)
      .toEqual({ style: 'page', param: 'page', sizeParam: 'per_page', size: 100, start: 1 });
    expect(httpEntityOptions.parse({ path: 'products', pagination: { style: 'version' } }).pagination)
      .toEqual({ style: 'version', param: 'after', versionPath: 'version.max' });
    expect(httpEntityOptions.parse({ path: 'x' })).toEqual({ path: 'x', params: {}, pagination: { style: 'none' }, absent: 'keep' });
  });

  test('params become strings; fields must be dotted paths', () => {
    expect(httpEntityOptions.parse({ path: 'x', params: { deleted: false, limit: 5 } }).params).toEqual({ deleted: 'false', limit: '5' });
    expect(messages(httpEntityOptions.safeParse({ path: 'x', fields: { a: 'b..c' } })))
      .toEqual(['fields.a: must be a dotted path such as "data.items" (no empty segments)']);
  });

  test('a body next-link needs its path; an unknown style lists the known ones', () => {
    expect(messages(httpEntityOptions.safeParse({ path: 'x', pagination: { style: 'next-link', from: 'body' } })))
      .toEqual(['pagination.path: next-link from "body" needs "path", the dotted path to the next URL such as "links.next"']);
    expect(messages(httpEntityOptions.safeParse({ path: 'x', pagination: { style: 'pages' } })).join())
      .toMatch(/pagination.style must be one of "page", "offset", "cursor", "next-link", "version", "keyset" or "none"/);
  });
});
