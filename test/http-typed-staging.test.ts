/**
 * Issue 14, item 3: an http crawl COPYs each page typed while it streams; a
 * page PostgreSQL refuses goes through the text staging, where only its bad
 * records are quarantined. Against a small API on 127.0.0.1 serving a list
 * by offset, whatever the test puts in it (bad values, NULs, repeated keys,
 * fields left out).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it, expect, beforeAll, afterAll, vi } from 'vitest';
import fc from 'fast-check';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { parseConfig } from '../src/config/load.js';
import { applyConfig } from '../src/config/apply.js';
import { Engine, type RunResult } from '../src/engine/run.js';
import { PageWriter } from '../src/sources/typed-writer.js';

type Item = Record<string, unknown>;

let items: Item[] = [];
const server = http.createServer((req, res) => {
  const u = new URL(req.url ?? '/', 'http://x');
  res.setHeader('content-type', 'application/json');
  if (u.pathname === '/versions') {
    // Each position of the list is a version (X-Series 2.0): a key listed twice is a record sent again after a change.
    const after = Number(u.searchParams.get('after') ?? 0);
    const data = items.slice(after, after + Number(u.searchParams.get('page_size'))).map((it, i) => ({ ...it, version: after + i + 1 }));
    res.end(JSON.stringify({ data, version: data.length ? { max: after + data.length } : null }));
    return;
  }
  const offset = Number(u.searchParams.get('offset') ?? 0);
  const limit = Number(u.searchParams.get('limit') ?? 3);
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(items.slice(offset, offset + limit)));
});

let sync: TestDatabase;
let engine: Engine;
const PAGE = 4;
const COLUMNS = '(id int primary key, qty int, day date, at timestamp, paid timestamptz, price numeric(8,2), meta jsonb, note text)';

beforeAll(async () => {
  sync = await testDatabase('http_typed');
  await sync.pool.query(['t_items', 't_typed', 't_text', 'v_typed', 'v_text'].map((t) => `create table ${t} ${COLUMNS}`).join(';'));
  await sync.pool.query('alter table v_typed add column version bigint; alter table v_text add column version bigint');
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const entity = (target: string) => ({
    source: 'api', target, key: ['id'], mode: 'mirror', deleteGuard: false,
    columns: ['id', 'qty', 'day', 'at', 'paid', 'price', 'meta', 'note'],
    from: { http: { path: 'items', optional: ['qty', 'day', 'at', 'paid', 'price', 'meta', 'note'],
      pagination: { style: 'offset', offsetParam: 'offset', limitParam: 'limit', limit: PAGE } } },
  });
  const versioned = (target: string) => ({
    ...entity(target), columns: ['id', 'qty', 'day', 'at', 'paid', 'price', 'meta', 'note', 'version'], cursor: { column: 'version' },
    from: { http: { path: 'versions', recordsPath: 'data', optional: ['qty', 'day', 'at', 'paid', 'price', 'meta', 'note'],
      pagination: { style: 'version', param: 'after', versionPath: 'version.max', sizeParam: 'page_size', size: PAGE } } },
  });
  const cfg = parseConfig({
    sources: { api: { kind: 'http', baseUrl: url, timeZone: 'America/New_York', retries: { max: 2, baseMs: 5, maxMs: 20 } } },
    entities: { items: entity('t_items'), typed: entity('t_typed'), text: entity('t_text'),
      v_typed: versioned('v_typed'), v_text: versioned('v_text') },
  }, {});
  await applyConfig(sync.pool, cfg);
  engine = new Engine(sync.pool, sync.url, cfg);
}, 120_000);
afterAll(async () => {
  await engine.close();
  await new Promise((resolve) => server.close(resolve));
});

const good = (id: number): Item => ({
  id, qty: id * 2, day: `2024-03-${String((id % 28) + 1).padStart(2, '0')}`, at: '2024-03-10 08:30:00',
  paid: '2024-03-10 08:30:00', price: `${id}.5`, meta: { tags: [id], nested: { ok: true } }, note: `note ${id}`,
});

const table = (entity: string) => (entity.startsWith('v_') ? entity : `t_${entity}`);
const detail = async (runId: number | null) => (await sync.pool.query('select detail from sync.run where id = $1', [runId])).rows[0].detail;
const rows = async (table: string) => (await sync.pool.query(
  `select id, qty, day::text, at::text, paid, price::text, meta, note from ${table} order by id`)).rows;
const errors = async (runId: number | null) => (await sync.pool.query(
  'select key, message from sync.run_error where run_id = $1 order by message, key::text', [runId])).rows;

/** What the run's counts must add up to (issue 10): every fetched record lands somewhere. */
function accounts(r: RunResult): boolean {
  return r.fetched === (r.inserted ?? 0) + (r.updated ?? 0) + (r.unchanged ?? 0) + (r.quarantined ?? 0);
}

describe('typed staging of an http crawl', () => {
  it('a clean crawl COPYs every page typed and lands exactly, timestamps read in the source\'s time zone', async () => {
    items = Array.from({ length: 10 }, (_, i) => good(i + 1));
    const r = await engine.run('items', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 10, inserted: 10, quarantined: 0 });
    expect(await detail(r.runId)).toMatchObject({ typed_pages: 3, text_pages: 0, records: 10 });
    const landed = await rows('t_items');
    expect(landed.map((x) => x.id)).toEqual(items.map((x) => x.id));
    expect(landed[0]).toMatchObject({ qty: 2, day: '2024-03-02', at: '2024-03-10 08:30:00', price: '1.50', note: 'note 1',
      meta: { tags: [1], nested: { ok: true } } });
    // 08:30 in New York (EDT from March 10th, 2024, 2 a.m.): 12:30 UTC.
    expect((landed[0].paid as Date).toISOString()).toBe('2024-03-10T12:30:00.000Z');
    // Nothing of the run's staging is left behind.
    const { rows: left } = await sync.pool.query(`select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = 'sync_staging' and relname like $1`, [`run_${r.runId}%`]);
    expect(left).toEqual([]);
  });

  it('a page with a bad value goes through text: only that record is quarantined, with its reason; the rest of the page and the other pages merge', async () => {
    items = Array.from({ length: 10 }, (_, i) => good(i + 1));
    items[5] = { ...items[5], qty: 'lots' }; // page 2
    items[9] = { ...items[9], note: 'a\u0000b' }; // page 3: a NUL no COPY takes
    const r = await engine.run('items', { trigger: 'manual', full: true });
    expect(r).toMatchObject({ status: 'partial', fetched: 10, quarantined: 2 });
    expect(accounts(r)).toBe(true);
    expect(await detail(r.runId)).toMatchObject({ typed_pages: 1, text_pages: 2 });
    const errs = await errors(r.runId);
    expect(errs).toHaveLength(2);
    expect(errs.find((e) => e.key?.[0] === '6')?.message).toMatch(/column qty: invalid input syntax for type integer: "lots"/);
    expect(errs.find((e) => e.key?.[0] === '10')?.message).toMatch(/NUL/);
    const landed = await rows('t_items');
    // Records 5, 7, 8 (page 2) and 9 (page 3) merged; 6 and 10 kept their earlier rows.
    expect(landed.map((x) => [x.id, x.qty])).toEqual(items.map((x) => [x.id, Number(x.id) * 2]));
  });

  it('gives the target, counts and quarantine the text path gives, for any records and bad values (property)', async () => {
    const bad = fc.constantFrom<[string, unknown]>(
      ['qty', 'lots'], ['qty', 1.5], ['qty', 99999999999], ['day', '2024-02-30'], ['day', 'tomorrow'], ['at', 'noon'],
      ['paid', '2024-13-01 00:00'], ['price', 'free'], ['price', 123456789], ['note', 'x\u0000y'], ['qty', { n: 1 }]);
    const record = fc.record({
      id: fc.integer({ min: 1, max: 12 }),
      bad: fc.oneof({ arbitrary: fc.constant(null), weight: 5 }, { arbitrary: bad, weight: 1 }),
      absent: fc.subarray(['qty', 'day', 'note', 'meta']),
      nulls: fc.subarray(['qty', 'price', 'paid']),
    }).map(({ id, bad: b, absent, nulls }) => {
      const it: Item = { ...good(id), qty: id * 3 };
      for (const k of nulls) it[k] = null;
      for (const k of absent) delete it[k];
      if (b) it[b[0]] = b[1];
      return it;
    });
    const before = fc.uniqueArray(fc.integer({ min: 1, max: 12 }), { maxLength: 8 });
    const textPath = async (run: () => Promise<RunResult>) => {
      // The text path of before: every page through the text staging and sync.cast_raw.
      const spy = vi.spyOn(PageWriter.prototype, 'write').mockImplementation(async function (this: PageWriter, records) {
        if (!records.length) return;
        await (this as unknown as { text: { write: (r: typeof records) => Promise<void> } }).text.write(records);
        this.textPages++;
      });
      try { return await run(); } finally { spy.mockRestore(); }
    };
    // By offset (every copy of a repeated key quarantined) and by version (the last copy wins).
    const pairs = fc.constantFrom(['typed', 'text'], ['v_typed', 'v_text']);
    await fc.assert(fc.asyncProperty(fc.array(record, { maxLength: 14 }), before, pairs, async (list, existing, [a, b]) => {
      items = list;
      for (const t of [table(a), table(b)]) {
        await sync.pool.query(`truncate ${t}`);
        await sync.pool.query(`insert into ${t} select g, g, '2020-01-01', '2020-01-01', '2020-01-01', 1, '{"old":1}', 'old' from unnest($1::int[]) g`,
          [existing]);
      }
      const typed = await engine.run(a, { trigger: 'manual', full: true });
      const text = await textPath(() => engine.run(b, { trigger: 'manual', full: true }));
      expect(accounts(typed)).toBe(true);
      const counts = (r: RunResult) => [r.status, r.fetched, r.inserted, r.updated, r.unchanged, r.deleted, r.quarantined];
      expect(counts(typed)).toEqual(counts(text));
      expect(await rows(table(a))).toEqual(await rows(table(b)));
      expect((await detail(typed.runId)).superseded).toEqual((await detail(text.runId)).superseded);
      expect(await errors(typed.runId)).toEqual(await errors(text.runId));
      expect((await detail(text.runId)).typed_pages ?? 0).toBe(0);
      const t = await detail(typed.runId);
      expect((t.typed_pages ?? 0) + (t.text_pages ?? 0)).toBe(Math.ceil(list.length / PAGE));
    }), { numRuns: 40 });
  }, 300_000);
});
