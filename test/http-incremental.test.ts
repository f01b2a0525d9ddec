import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { parseConfig } from '../src/config/load.js';
import { applyConfig } from '../src/config/apply.js';
import { Engine } from '../src/engine/run.js';
import { FakeDirectus, type Item } from './http/directus.js';
import { configProblems } from './helpers/config.js';
import { laterOf } from '../src/sources/http/cursor.js';

// Incremental reads of a Directus 11 instance (a fake written from its
// docs) that caps pages at 50 records whatever is asked.
const MAX = 50;
const TOKEN = 'directus-static-token';
const directus = new FakeDirectus(TOKEN, MAX);
let sync: TestDatabase;
let engine: Engine;

// Directus leaves date_updated empty on new items: both fields, in one filter.
const updatedSince = JSON.stringify({ _or: [{ date_updated: { _gt: '{{cursor}}' } }, { date_created: { _gt: '{{cursor}}' } }] });
const changed = (overlap?: string) => ({ column: 'changed_at', from: ['date_updated', 'date_created'], ...(overlap ? { overlap } : {}) });
const TABLES = ['articles', 'late', 'prop', 'big', 'small', 'capped', 'plain', 'resumable'];
const CURSORED = ['articles', 'late', 'prop'];

beforeAll(async () => {
  sync = await testDatabase('http_incremental');
  for (const t of TABLES) {
    const cursor = CURSORED.includes(t) ? ', changed_at timestamptz' : '';
    await sync.pool.query(`create table ${t} (id int primary key, title text, date_created timestamptz, date_updated timestamptz${cursor})`);
  }
  const url = await directus.start();
  const retries = { max: 1, baseMs: 1, maxMs: 2 };
  const cfg = parseConfig({
    sources: {
      cms: { preset: 'directus', url, token: '${DIRECTUS_TOKEN}', maxPageSize: MAX, retries },
      // The same instance with its cap left undeclared: only the total tells where the listing ends.
      undeclared: { preset: 'directus', url, token: '${DIRECTUS_TOKEN}', retries },
      bare: { kind: 'http', baseUrl: url, auth: { bearer: '${DIRECTUS_TOKEN}' }, retries },
    },
    entities: {
      articles: { source: 'cms', from: { http: { endpoint: 'articles', params: { filter: updatedSince } } },
        target: 'articles', key: ['id'], mode: 'upsert', cursor: changed() },
      late: { source: 'cms', from: { http: { endpoint: 'late', params: { filter: updatedSince } } },
        target: 'late', key: ['id'], mode: 'upsert', cursor: changed('1 minute') },
      prop: { source: 'cms', from: { http: { endpoint: 'prop', params: { filter: updatedSince } } },
        target: 'prop', key: ['id'], mode: 'upsert', cursor: changed('1 minute') },
      big: { source: 'cms', from: { http: { endpoint: 'big' } }, target: 'big', key: ['id'], mode: 'upsert' },
      small: { source: 'cms', from: { http: { endpoint: 'small' } }, target: 'small', key: ['id'], mode: 'upsert' },
      capped: { source: 'undeclared', from: { http: { endpoint: 'big' } }, target: 'capped', key: ['id'], mode: 'upsert' },
      // No total: the short page alone ends the crawl.
      plain: { source: 'bare', from: { http: { path: 'items/big', recordsPath: 'data', pagination: { style: 'offset', limit: MAX } } },
        target: 'plain', key: ['id'], mode: 'upsert' },
      resumable: { source: 'cms', from: { http: { endpoint: 'resumable' } }, target: 'resumable', key: ['id'], mode: 'upsert' },
    },
  }, { DIRECTUS_TOKEN: TOKEN });
  await applyConfig(sync.pool, cfg);
  engine = new Engine(sync.pool, sync.url, cfg);
  for (let i = 0; i < 2575; i++) directus.create('big', `b${i}`);
  for (let i = 0; i < 3; i++) directus.create('small', `s${i}`);
  for (let i = 0; i < 500; i++) directus.create('resumable', `r${i}`);
});
afterAll(async () => {
  await engine?.close();
  await directus.close();
});

const run = (name: string) => engine.run(name, { trigger: 'manual' });

/** The target's rows as the API sends items. */
async function rows(table: string): Promise<Item[]> {
  const { rows: r } = await sync.pool.query(`select id, title, date_created, date_updated from ${table} order by id`);
  return r.map((x) => ({ id: x.id, title: x.title, date_created: x.date_created.toISOString(), date_updated: x.date_updated?.toISOString() ?? null }));
}

const changes = async (runId: number | null) =>
  (await sync.pool.query('select count(*)::int as n from sync.run_change where run_id = $1', [runId])).rows[0].n as number;
const cursorOf = async (name: string) =>
  (await sync.pool.query('select cursor_value from sync.entity where name = $1', [name])).rows[0].cursor_value as string | null;
const iso = async (v: string | null) => (await sync.pool.query(
  `select to_char($1::timestamptz at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as v`, [v])).rows[0].v as string;

describe('incremental reads of Directus 11', () => {
  it('a first run leaves out the filter holding {{cursor}} instead of sending it emptied, and reads everything', async () => {
    for (let i = 0; i < 3; i++) directus.create('articles', `a${i}`);
    const from = directus.seen.length;
    const r = await run('articles');
    expect(r).toMatchObject({ status: 'succeeded', inserted: 3 });
    const asked = directus.seen.slice(from);
    expect(asked.map((s) => s.filter)).toEqual([null]);
    expect(await rows('articles')).toEqual(directus.items('articles'));
  });

  it('the cursor is the latest of date_updated and date_created: new items (no date_updated) and updated ones both come next', async () => {
    directus.update('articles', 1, 'a0 edited');
    directus.create('articles', 'a3');
    expect(await cursorOf('articles')).not.toBeNull();
    const from = directus.seen.length;
    const r = await run('articles');
    expect(r).toMatchObject({ status: 'succeeded', fetched: 2, inserted: 1, updated: 1 });
    expect(await rows('articles')).toEqual(directus.items('articles'));
    const latest = directus.items('articles').map((i) => [i.date_updated, i.date_created].filter(Boolean).sort().at(-1)!).sort().at(-1)!;
    expect(await iso(await cursorOf('articles'))).toBe(latest);
    // The filter went out with the stored cursor, in ISO 8601.
    const sent = JSON.parse(directus.seen[from].filter!);
    expect(sent._or[0].date_updated._gt).toBe(directus.items('articles')[2].date_created);
    const { rows: c } = await sync.pool.query(
      `select id, to_char(changed_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as c from articles order by id`);
    expect(c.map((x) => x.c)).toEqual(directus.items('articles').map((i) => i.date_updated ?? i.date_created));
  });

  it('cursor.overlap reads again what committed late below the cursor; records read again merge as unchanged', async () => {
    for (let i = 0; i < 4; i++) directus.create('late', `l${i}`);
    expect(await run('late')).toMatchObject({ status: 'succeeded', inserted: 4 });
    const cursor = await iso(await cursorOf('late'));
    // Committed after that run, stamped 20 s and 40 s before the clock (and the cursor).
    directus.create('late', 'late insert', directus.before(20));
    directus.update('late', 2, 'late update', directus.before(40));
    const from = directus.seen.length;
    const r = await run('late');
    expect(r).toMatchObject({ status: 'succeeded', inserted: 1, updated: 1 });
    expect(await rows('late')).toEqual(directus.items('late'));
    // Everything after cursor - 1 minute came back (the 4 items and the late one); only the two changes were logged.
    expect(r.fetched).toBe(5);
    expect(await changes(r.runId)).toBe(2);
    const bound = JSON.parse(directus.seen[from].filter!)._or[1].date_created._gt;
    expect(Date.parse(cursor) - Date.parse(bound)).toBe(60_000);
    const again = await run('late');
    expect(again).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0 });
    expect(await changes(again.runId)).toBe(0);
  });

  it('an offset crawl ends on the page that reaches the total: 52 requests for 2575 items, none for an empty page', async () => {
    const from = directus.seen.length;
    const r = await run('big');
    expect(r).toMatchObject({ status: 'succeeded', inserted: 2575 });
    const asked = directus.seen.slice(from);
    expect(asked).toHaveLength(52);
    // maxPageSize: pages are asked no larger than the instance gives.
    expect(new Set(asked.map((s) => s.limit))).toEqual(new Set([MAX]));
    expect(asked.map((s) => s.offset)).toEqual(Array.from({ length: 52 }, (_, i) => i * MAX));
  });

  it('a small listing is one request, every run', async () => {
    for (let i = 0; i < 2; i++) {
      const from = directus.seen.length;
      expect(await run('small')).toMatchObject({ status: 'succeeded', fetched: 3 });
      expect(directus.seen.slice(from)).toHaveLength(1);
    }
  });

  it('an API capping pages below what was asked (cap undeclared) is crawled to its total, not stopped at its first "short" page', async () => {
    const from = directus.seen.length;
    const r = await run('capped');
    expect(r).toMatchObject({ status: 'succeeded', inserted: 2575 });
    const asked = directus.seen.slice(from);
    expect(asked).toHaveLength(52);
    expect(asked[0].limit).toBe(1000);
    expect(await rows('capped')).toEqual(directus.items('big'));
  });

  it('without a total, a page shorter than asked ends the crawl', async () => {
    const from = directus.seen.length;
    expect(await run('plain')).toMatchObject({ status: 'succeeded', inserted: 2575 });
    expect(directus.seen.slice(from)).toHaveLength(52);
  });

  it('a crawl the API stopped with 503s resumes from its last saved page on the next run', async () => {
    directus.downAfter = 4;
    const failed = await run('resumable');
    expect(failed.status).toBe('failed');
    const { rows: [f] } = await sync.pool.query('select status, detail from sync.run where id = $1', [failed.runId]);
    expect(f.status).toBe('failed');
    expect(f.detail.resume).toMatchObject({ style: 'offset', offset: 4 * MAX });
    directus.down = false;
    directus.downAfter = null;
    const from = directus.seen.length;
    const r = await run('resumable');
    expect(r).toMatchObject({ status: 'succeeded', fetched: 500, inserted: 500 });
    expect(directus.seen.slice(from).map((s) => s.offset)).toEqual([200, 250, 300, 350, 400, 450]);
    expect(await rows('resumable')).toEqual(directus.items('resumable'));
    const { rows: [d] } = await sync.pool.query('select detail from sync.run where id = $1', [r.runId]);
    expect(d.detail.resumed_from_run).toBe(failed.runId);
  });
});

describe('incremental runs converge (property)', () => {
  type Op = { kind: 'create' | 'update' | 'late-create' | 'late-update' | 'run'; which: number; lag: number };
  const op = fc.record({
    kind: fc.constantFrom<Op['kind']>('create', 'create', 'update', 'late-create', 'late-update', 'run'),
    which: fc.nat(),
    // Late commits stay inside the one-minute overlap.
    lag: fc.integer({ min: 1, max: 50 }),
  });

  it('any sequence of inserts, updates and late commits inside the overlap, with incremental runs between, ends equal to the source', async () => {
    let n = 0;
    await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 14 }), async (ops) => {
      directus.collections.set('prop', []);
      await sync.pool.query('truncate prop');
      await sync.pool.query(`update sync.entity set cursor_value = null where name = 'prop'`);
      for (const o of ops) {
        const items = directus.items('prop');
        const title = `t${++n}`;
        if (o.kind === 'run') {
          expect((await run('prop')).status).toBe('succeeded');
        } else if (o.kind === 'create' || (o.kind !== 'late-create' && items.length === 0)) {
          directus.create('prop', title);
        } else if (o.kind === 'late-create') {
          directus.tick();
          directus.create('prop', title, directus.before(o.lag));
        } else {
          const id = items[o.which % items.length].id;
          if (o.kind === 'update') directus.update('prop', id, title);
          else { directus.tick(); directus.update('prop', id, title, directus.before(o.lag)); }
        }
      }
      expect((await run('prop')).status).toBe('succeeded');
      expect(await rows('prop')).toEqual(directus.items('prop'));
    }), { numRuns: 15 });
  });
});

describe('cursor.from', () => {
  const entity = (cursor: unknown, extra: Record<string, unknown> = {}) => ({
    sources: { cms: { kind: 'http', baseUrl: 'https://cms.example.com' }, pg: { kind: 'postgres', database: 'x' } },
    entities: { a: { source: 'cms', from: { http: { path: 'items/a', ...extra } }, target: 'a', key: ['id'], cursor } },
  });

  it('is checked with messages that say what to write', () => {
    expect(configProblems(entity({ column: 'changed_at', from: ['date_updated'] }))[0])
      .toMatch(/cursor\.from: list two or more record fields.*for one field map the column in from\.http\.fields/);
    expect(configProblems(entity({ column: 'changed_at', from: ['date_updated', 'date_created'] }, { fields: { changed_at: 'x' } }))[0])
      .toMatch(/column "changed_at" is filled from cursor\.from, so it must not also be mapped in from\.http\.fields/);
    const pg = { ...entity(null), entities: { a: { source: 'pg', from: { table: 'a' }, target: 'a', key: ['id'], cursor: { column: 'c', from: ['a', 'b'] } } } };
    expect(configProblems(pg)[0]).toMatch(/cursor\.from reads record fields of an http source.*greatest\(updated_at, created_at\)/);
    expect(configProblems(entity({ column: 'changed_at', from: ['date_updated', 'date_created'], overlap: '1 minute' }))).toEqual([]);
  });

  it('takes the latest set value: timestamps by instant whatever their spelling, numbers by value', () => {
    expect(laterOf([null, '2024-01-01T10:00:00.000Z'])).toBe('2024-01-01T10:00:00.000Z');
    expect(laterOf(['2024-01-01T10:00:00+02:00', '2024-01-01T09:00:00Z'])).toBe('2024-01-01T09:00:00Z');
    expect(laterOf(['2024-01-01 10:00:00.5+00', '2024-01-01T10:00:00.400Z'])).toBe('2024-01-01 10:00:00.5+00');
    expect(laterOf(['9', '10', null])).toBe('10');
    expect(laterOf(['9007199254740993', '9007199254740992'])).toBe('9007199254740993');
    expect(laterOf([null, null])).toBeNull();
  });
});
