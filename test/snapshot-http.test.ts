/**
 * Issue 10 for http sources: a mirror deletes only on a snapshot it can
 * trust, one bad record never fails a run, and a field the API leaves out
 * never becomes a NULL. Everything runs against the fake vendor on
 * 127.0.0.1, changed mid-crawl through its beforeAnswer hook.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { awkwardText } from './helpers/gen.js';
import { parseConfig } from '../src/config/load.js';
import { applyConfig } from '../src/config/apply.js';
import { Engine, type RunOptions, type RunResult } from '../src/engine/run.js';
import { ENDPOINTS, Vendor, type Fault, type Rec } from './http/vendor.js';

let sync: TestDatabase;
let engine: Engine;
const vendor = new Vendor();
// A second origin (another port) that the vendor's /moved redirects to.
const elsewhere = new Vendor();

/** A vendor record as the tests shape it: any field may be missing (a back-end that dropped it) or null. */
type Item = { id: number; name?: string | null; version?: number | null; tags?: unknown };
type Row = { id: number; name: string | null; version: number | null; tags: unknown };
const FIELDS = ['name', 'version', 'tags'] as const;
type Field = typeof FIELDS[number];

const LOOKUP = { lookup: { param: 'ids' } };
const TOTAL = { totalPath: 'meta.total' };

/** Entities of the fixed scenarios: one target table each (t_<name>), named for the entity. */
const SCENARIOS: Record<string, object> = {
  off_plain: ENDPOINTS.offset,
  off_lookup: { ...ENDPOINTS.offset, ...LOOKUP },
  page_plain: ENDPOINTS.page,
  page_lookup: { ...ENDPOINTS.page, ...LOOKUP },
  page_total: { ...ENDPOINTS.page, ...TOTAL },
  keyset: ENDPOINTS.keyset,
  drift: ENDPOINTS.keyset,
  drift_optional: { ...ENDPOINTS.keyset, optional: ['name'] },
  drift_mapped: { ...ENDPOINTS.keyset, fields: { name: 'title' } },
  absent_some: ENDPOINTS.keyset,
  nul: ENDPOINTS.keyset,
  dup: { ...ENDPOINTS.offset, ...LOOKUP },
  // Pages of five: every copy of a repeated key fits on one keyset page.
  dup_nul: { ...ENDPOINTS.keyset, pagination: { ...ENDPOINTS.keyset.pagination, size: 5 } },
  versioned: ENDPOINTS.version,
};

/** Entities of the property: every endpoint that can list a whole snapshot, with and without its checks. */
const PROPERTY: Record<string, object> = {
  prop_offset: ENDPOINTS.offset,
  prop_offset_lookup: { ...ENDPOINTS.offset, ...LOOKUP },
  prop_page: ENDPOINTS.page,
  prop_page_lookup: { ...ENDPOINTS.page, ...LOOKUP },
  prop_page_total: { ...ENDPOINTS.page, ...TOTAL },
  prop_page_lookup_total: { ...ENDPOINTS.page, ...LOOKUP, ...TOTAL },
  prop_keyset: ENDPOINTS.keyset,
  prop_cursor: ENDPOINTS.cursor,
};

const table = (entity: string) => `t_${entity}`;

beforeAll(async () => {
  sync = await testDatabase('snapshot_http');
  const names = [...Object.keys(SCENARIOS), ...Object.keys(PROPERTY), 'moved'];
  await sync.pool.query(names.map((n) => `create table ${table(n)} (id int primary key, name text, version bigint, tags jsonb)`).join(';'));
  const url = await vendor.start(600_000);
  await elsewhere.start(600_000);
  // A stable cursor (the last id sent), as Airtable's is: an offset in disguise could not be checked.
  vendor.cursorBy = 'key';
  vendor.override = (_req, res, u) => {
    if (u.pathname !== '/moved') return false;
    res.writeHead(302, { location: `${elsewhere.url}/keyset${u.search}` }).end();
    return true;
  };
  const retries = { max: 8, baseMs: 5, maxMs: 20 };
  const entity = (source: string, name: string, http: object) => ({
    source, from: { http }, target: table(name), key: ['id'], columns: ['id', 'name', 'version', 'tags'], deleteGuard: false,
  });
  const cfg = parseConfig({
    sources: {
      shop: { kind: 'http', baseUrl: url, retries },
      away: { kind: 'http', baseUrl: url, retries, auth: { bearer: 'sekret-token-0123456789' }, redirects: 'follow-without-credentials' },
    },
    entities: {
      ...Object.fromEntries(Object.entries({ ...SCENARIOS, ...PROPERTY }).map(([n, http]) => [n, entity('shop', n, http)])),
      moved: entity('away', 'moved', { ...ENDPOINTS.keyset, path: 'moved' }),
    },
  }, {});
  await applyConfig(sync.pool, cfg);
  engine = new Engine(sync.pool, sync.url, cfg);
});

afterAll(async () => {
  await engine?.close();
  await vendor.close();
  await elsewhere.close();
});

// ---------------------------------------------------------------- helpers

const clone = <T>(x: T): T => structuredClone(x);
const nine = (): Item[] => Array.from({ length: 9 }, (_, i) => ({ id: i + 1, name: `r${i + 1}`, version: 1, tags: [`t${i + 1}`] }));
const ids = (rs: { id: number }[]) => rs.map((r) => r.id).sort((a, b) => a - b);
const asRow = (r: Item): Row => ({ id: r.id, name: r.name ?? null, version: r.version ?? null, tags: r.tags ?? null });

async function rows(entity: string): Promise<Row[]> {
  return (await sync.pool.query<Row>(`select id, name, version::int as version, tags from ${table(entity)} order by id`)).rows;
}

/** The entity's target holds exactly these rows (a prior target state). */
async function seed(entity: string, items: Item[]): Promise<void> {
  await sync.pool.query(`truncate ${table(entity)}`);
  await sync.pool.query(`insert into ${table(entity)} select * from jsonb_populate_recordset(null::${table(entity)}, $1)`,
    [JSON.stringify(items.map(asRow))]);
}

/** The vendor lists these records, in this order. */
function list(items: Item[]): void {
  vendor.records = items as unknown as Rec[];
}

/**
 * Calls `fn` once, just before the vendor answers the crawl's `n`th page
 * (1-based; a lookup by ids is not a page, a retried page is the same page).
 */
function beforePage(n: number, fn: () => void): void {
  const pages = new Set<string>();
  vendor.beforeAnswer = (url) => {
    if (url.searchParams.has('ids') || pages.has(url.pathname + url.search)) return;
    pages.add(url.pathname + url.search);
    if (pages.size === n) fn();
  };
}

/** The records the vendor's whole answers carried, crawl pages and lookups apart. */
function recordServed(): { crawl: Item[]; lookup: Item[] } {
  const out = { crawl: [] as Item[], lookup: [] as Item[] };
  vendor.served = (url, body) => {
    const b = JSON.parse(body);
    const records = (Array.isArray(b) ? b : b.data?.items ?? b.records ?? b.data) as Item[];
    (url.searchParams.has('ids') ? out.lookup : out.crawl).push(...records);
  };
  return out;
}

/** Forgets every hook, fault and record of the last test. */
function quiet(): void {
  vendor.beforeAnswer = undefined;
  vendor.served = undefined;
  vendor.reset();
}

async function run(entity: string, opts: Partial<RunOptions> = {}): Promise<RunResult> {
  return engine.run(entity, { trigger: 'manual', ...opts });
}

async function runRow(r: RunResult) {
  const { rows: [row] } = await sync.pool.query(
    'select status, error, doubts, held, detail from sync.run where id = $1', [r.runId]);
  return row as { status: string; error: string | null; doubts: string[]; held: string | null; detail: Record<string, unknown> };
}

async function runErrors(r: RunResult) {
  return (await sync.pool.query<{ key: string[] | null; category: string; message: string }>(
    'select key, category, message from sync.run_error where run_id = $1 order by id', [r.runId])).rows;
}

/** fetched = inserted + updated + unchanged + quarantined, and one sync.run_error row a quarantined record. */
async function expectAccounted(r: RunResult): Promise<void> {
  expect(r.error).toBeUndefined();
  expect(r.unchanged).toBeGreaterThanOrEqual(0);
  expect(r.fetched).toBe(r.inserted! + r.updated! + r.unchanged! + r.quarantined!);
  expect((await runErrors(r)).length).toBe(r.quarantined);
}

async function openAlerts(entity: string): Promise<string[]> {
  return (await sync.pool.query<{ kind: string }>(
    'select kind from sync.alert where entity = $1 and resolved_at is null order by kind', [entity])).rows.map((a) => a.kind);
}

// ---------------------------------------------------------------- tests

describe('an offset or page crawl while rows are deleted in the vendor', () => {
  // Nine records, three a page. Before page 2 the vendor deletes record 2
  // (already sent on page 1) and record 5 (not yet sent): every later record
  // moves back one place, so a crawl by position never sees record 4.
  const deleteMidCrawl = async (entity: string) => {
    quiet();
    list(nine());
    await seed(entity, nine());
    beforePage(2, () => list((vendor.records as unknown as Item[]).filter((r) => r.id !== 2 && r.id !== 5)));
  };
  const live = () => ids(vendor.records);

  for (const [entity, crawl] of [['off_plain', 'an offset crawl'], ['page_plain', 'a page crawl']]) {
    it(`${crawl} without a lookup or a total holds every delete, so the live row that shifted is not deleted; a confirmation deletes only what is still gone`, async () => {
      await deleteMidCrawl(entity);
      const r = await run(entity);
      expect(r).toMatchObject({ status: 'partial', deleted: 0, held: 2 });
      expect(r.note).toMatch(/keyset pagination, or set from\.http\.lookup/);
      expect(ids(await rows(entity))).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
      expect(live()).toContain(4);
      const held = await sync.pool.query('select key from sync.held_delete where run_id = $1 order by key', [r.runId]);
      expect(held.rows.map((h) => h.key)).toEqual([['4'], ['5']]);
      await expectAccounted(r);
      // Confirmed, the deletes apply to the rows still missing (5), not to row 4, which the next crawl sees.
      quiet();
      const confirmed = await run(entity, { confirmDeletes: true });
      expect(confirmed).toMatchObject({ deleted: 1, held: 1 });
      expect(ids(await rows(entity))).toEqual([1, 2, 3, 4, 6, 7, 8, 9]);
    });
  }

  for (const [entity, crawl] of [['off_lookup', 'an offset crawl'], ['page_lookup', 'a page crawl']]) {
    it(`${crawl} with a lookup asks for the rows it missed: only the row really gone is deleted, every live row stays`, async () => {
      await deleteMidCrawl(entity);
      const asked: string[] = [];
      const served = recordServed();
      const seen = vendor.beforeAnswer!;
      vendor.beforeAnswer = (url) => { if (url.searchParams.has('ids')) asked.push(url.searchParams.get('ids')!); seen(url); };
      const r = await run(entity);
      expect(asked).toEqual(['4,5']);
      expect(r).toMatchObject({ status: 'succeeded', deleted: 1, held: 0 });
      // Record 2 was sent on page 1 before it went: this run keeps it, the next deletes it.
      expect(ids(await rows(entity))).toEqual([1, 2, 3, 4, 6, 7, 8, 9]);
      expect((await runRow(r)).detail.lookup).toEqual({ asked: 2, found: 1 });
      expect(r.fetched).toBe(served.crawl.length + served.lookup.length);
      await expectAccounted(r);
      quiet();
      expect(await run(entity)).toMatchObject({ status: 'succeeded', deleted: 1 });
      expect(await rows(entity)).toEqual((vendor.records as unknown as Item[]).map(asRow).sort((a, b) => a.id - b.id));
    });
  }

  it('a page crawl with the API\'s total: a total that moved during the crawl makes the snapshot doubtful, nothing is deleted', async () => {
    await deleteMidCrawl('page_total');
    const r = await run('page_total');
    expect(r).toMatchObject({ status: 'partial', deleted: 0 });
    const row = await runRow(r);
    expect(row.doubts.join()).toMatch(/the listing changed during the crawl: the API reported 9 records at the start and 7 at the end/);
    expect(row.error).toMatch(/the snapshot is doubtful, so nothing was deleted \(2 rows it lacks were kept\)/);
    expect(row.detail.kept).toBe(2);
    expect(await openAlerts('page_total')).toContain('doubtful_snapshot');
    expect(ids(await rows('page_total'))).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    await expectAccounted(r);
  });

  it('a page crawl with the API\'s total: a row deleted and another added between pages leave the total as it was, and the live row that shifted is not deleted', async () => {
    quiet();
    list(nine());
    await seed('page_total', nine());
    // Record 2 (sent on page 1) goes and record 10 comes at the end: 9 records
    // at the start, 9 at the end, 9 received, yet record 4 was never sent.
    beforePage(2, () => list([...nine().filter((r) => r.id !== 2), { id: 10, name: 'r10', version: 1, tags: ['t10'] }]));
    const r = await run('page_total');
    expect(ids(vendor.records)).toContain(4);
    expect(ids(await rows('page_total'))).toContain(4);
    expect(r.deleted).toBe(0);
  });

  it('a keyset crawl asks for the keys after the last seen: only the row really gone is deleted, and the next run equals the vendor', async () => {
    await deleteMidCrawl('keyset');
    const r = await run('keyset');
    expect(r).toMatchObject({ status: 'succeeded', deleted: 1, held: 0 });
    // Record 2 came on page 1, before the vendor deleted it.
    expect(ids(await rows('keyset'))).toEqual([...live(), 2].sort((a, b) => a - b));
    await expectAccounted(r);
    quiet();
    expect(await run('keyset')).toMatchObject({ status: 'succeeded', deleted: 1 });
    expect(await rows('keyset')).toEqual((vendor.records as unknown as Item[]).map(asRow));
  });
});

describe('a field the back-end stopped sending', () => {
  // Five records, each with a new version and no name at all.
  const nameless = (): Item[] => nine().slice(0, 5).map(({ name: _gone, ...r }) => ({ ...r, version: 2 }));

  it('dropped from every record of a full mirror: the run fails naming the field, and no value becomes NULL', async () => {
    quiet();
    await seed('drift', nine().slice(0, 6));
    list(nameless());
    const r = await run('drift');
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/schema drift in drift: the field "name" is missing from every record the API sent/);
    expect((await runRow(r)).status).toBe('failed');
    // Nothing written: not the names, not the versions, not the delete of row 6.
    expect(await rows('drift')).toEqual(nine().slice(0, 6).map(asRow));
  });

  it('dropped from every record, with a mapped field: the message names the field and its column', async () => {
    quiet();
    await seed('drift_mapped', nine().slice(0, 3));
    list(nine().slice(0, 3).map(({ name: _gone, ...r }) => ({ ...r, version: 2 })));
    const r = await run('drift_mapped');
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/the field "title" \(column name\) is missing from every record/);
    expect(await rows('drift_mapped')).toEqual(nine().slice(0, 3).map(asRow));
  });

  it('dropped from every record, with its column in from.http.optional: the run succeeds and those values stay', async () => {
    quiet();
    await seed('drift_optional', nine().slice(0, 6));
    list(nameless());
    const r = await run('drift_optional');
    expect(r).toMatchObject({ status: 'succeeded', fetched: 5, updated: 5, deleted: 1 });
    expect(await rows('drift_optional')).toEqual(nine().slice(0, 5).map((x) => asRow({ ...x, version: 2 })));
    await expectAccounted(r);
  });

  it('dropped from some records only: those rows keep their values, the others update (an explicit null is a null)', async () => {
    quiet();
    await seed('absent_some', nine().slice(0, 6));
    const next: Item[] = nine().slice(0, 6).map((r) => ({ ...r, name: `${r.name} v2`, version: 2 }));
    delete next[1].name;
    delete next[4].tags;
    next[5].name = null;
    list(next);
    const r = await run('absent_some');
    expect(r).toMatchObject({ status: 'succeeded', updated: 6, quarantined: 0 });
    const got = await rows('absent_some');
    expect(got[1]).toEqual({ id: 2, name: 'r2', version: 2, tags: ['t2'] });
    expect(got[4]).toEqual({ id: 5, name: 'r5 v2', version: 2, tags: ['t5'] });
    expect(got[5]).toEqual({ id: 6, name: null, version: 2, tags: ['t6'] });
    expect(got.filter((g) => ![2, 5, 6].includes(g.id))).toEqual(next.filter((n) => ![2, 5, 6].includes(n.id)).map(asRow));
    await expectAccounted(r);
  });
});

describe('a NUL character in a record', () => {
  it('a NUL in a string value, or nested in a jsonb value, quarantines that record with the reason; the others merge', async () => {
    quiet();
    await seed('nul', nine().slice(0, 6));
    const next: Item[] = nine().slice(0, 5).map((r) => ({ ...r, name: `${r.name} v2`, version: 2 }));
    next[1].name = 'bad\u0000name';
    next[3].tags = ['x\u0000y'];
    next[4].tags = { 'k\u0000': 1 };
    list(next);
    const r = await run('nul');
    expect(r.status).toBe('partial');
    expect(r).toMatchObject({ fetched: 5, quarantined: 3, updated: 2, deleted: 1 });
    await expectAccounted(r);
    const errors = (await runErrors(r)).sort((a, b) => Number(a.key) - Number(b.key));
    expect(errors.map((e) => e.key)).toEqual([['2'], ['4'], ['5']]);
    expect(errors[0].message).toMatch(/column name: the value holds a NUL character \(0x00\)/);
    expect(errors[1].message).toMatch(/column tags: unsupported Unicode escape sequence/);
    expect(errors[2].message).toMatch(/column tags: unsupported Unicode escape sequence/);
    // Quarantined rows are left as they were, neither updated nor deleted.
    const got = await rows('nul');
    expect(got.map((g) => g.id)).toEqual([1, 2, 3, 4, 5]);
    expect(got.filter((g) => [2, 4, 5].includes(g.id))).toEqual(nine().filter((n) => [2, 4, 5].includes(n.id)).map(asRow));
  });
});

describe('duplicated keys', () => {
  it('on the offset endpoint both copies are quarantined and counted, and the run deletes nothing', async () => {
    quiet();
    await seed('dup', nine().slice(0, 6));
    const next = nine().slice(0, 5).map((r) => ({ ...r, version: 2 }));
    next.splice(3, 0, { ...next[1], name: 'r2 again' });
    list(next);
    const r = await run('dup');
    expect(r).toMatchObject({ status: 'partial', fetched: 6, quarantined: 2, updated: 4, deleted: 0 });
    await expectAccounted(r);
    const errors = await runErrors(r);
    expect(errors).toEqual([1, 2].map(() => ({ key: ['2'], category: 'integrity',
      message: 'the source has 2 records with this key; none of them was merged' })));
    expect((await runRow(r)).doubts.join()).toMatch(/1 key\(s\) came twice in a crawl paged by offset/);
    const got = await rows('dup');
    expect(ids(got)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(got[1]).toEqual(asRow(nine()[1]));
  });

  it('a key sent twice, one copy holding a NUL: neither copy is merged', async () => {
    quiet();
    await seed('dup_nul', nine().slice(0, 3));
    list([{ ...nine()[0], version: 2 }, { ...nine()[1], name: 'copy one', version: 2 }, { ...nine()[1], name: 'copy\u0000two', version: 2 },
      { ...nine()[2], version: 2 }]);
    const r = await run('dup_nul');
    await expectAccounted(r);
    expect(r).toMatchObject({ status: 'partial', fetched: 4, quarantined: 2, updated: 2 });
    expect((await rows('dup_nul'))[1]).toEqual(asRow(nine()[1]));
  });

  it('a key sent three times, one copy holding a NUL: one sync.run_error row a quarantined record', async () => {
    quiet();
    await seed('dup_nul', nine().slice(0, 3));
    const two = nine()[1];
    list([nine()[0], { ...two, name: 'copy one' }, { ...two, name: 'copy\u0000two' }, { ...two, name: 'copy three' }, nine()[2]]);
    const served = recordServed();
    const r = await run('dup_nul');
    expect(served.crawl.filter((x) => x.id === 2)).toHaveLength(3);
    expect(r).toMatchObject({ fetched: served.crawl.length, quarantined: 3 });
    await expectAccounted(r);
  });

  it('on the version endpoint a record changed mid-crawl supersedes its earlier copy: counted as superseded, not fetched', async () => {
    quiet();
    vendor.records = [];
    for (let i = 1; i <= 7; i++) vendor.add(`v${i}`);
    await seed('versioned', []);
    const served = recordServed();
    beforePage(2, () => vendor.touch(1));
    const r = await run('versioned');
    expect(served.crawl.filter((s) => s.id === 1)).toHaveLength(2);
    expect(r).toMatchObject({ status: 'succeeded', fetched: served.crawl.length - 1, inserted: 7, quarantined: 0 });
    expect((await runRow(r)).detail.superseded).toBe(1);
    await expectAccounted(r);
    expect(await rows('versioned')).toEqual(vendor.records.map((v) => asRow(v as Item)));
  });
});

describe('a redirect to another origin', () => {
  it('followed without credentials, its answer makes the snapshot doubtful: nothing is deleted', async () => {
    quiet();
    elsewhere.records = nine().slice(0, 3) as unknown as Rec[];
    await seed('moved', nine().slice(0, 6).map((r) => ({ ...r, version: 0 })));
    const r = await run('moved');
    expect(r).toMatchObject({ status: 'partial', fetched: 3, updated: 3, deleted: 0 });
    const row = await runRow(r);
    expect(row.doubts.join()).toMatch(/the API answered from another origin/);
    expect(row.detail.kept).toBe(3);
    expect(await openAlerts('moved')).toContain('doubtful_snapshot');
    expect(ids(await rows('moved'))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(elsewhere.hits.length).toBeGreaterThan(0);
    expect(elsewhere.hits.every((h) => h.headers.authorization === undefined)).toBe(true);
    await expectAccounted(r);
  });
});

// ---------------------------------------------------------------- property

/**
 * Bugs this property once found, each with a test above of its own; kept
 * as switches to steer the property clear of one again while it is fixed.
 */
const AVOID = {
  // "a key sent twice (three times), one copy holding a NUL": the clean copy merges, and
  // run_error rows outnumber quarantined records.
  nulInDuplicate: false,
  // "a page crawl with the API's total: a row deleted and another added between pages …":
  // the totals cannot see it, and a live row is deleted.
  totalWithDeleteAndAdd: false,
};

/**
 * A change the vendor makes before it answers a page: delete a record (one
 * it already sent, or one it has yet to send), add a new one at a position.
 */
type Change = { page: number; del: { sent: boolean; pick: number } | null; add: number | null };

interface Case {
  entity: string;
  records: Item[];
  target: Item[];
  transport: Fault[];
  dups: number[];
  drop: { field: Field; which: 'all' | number[] } | null;
  nul: { at: number; in: 'name' | 'tags' } | null;
  changes: Change[];
}

const name = fc.option(awkwardText, { nil: null, freq: 6 });
/** A record fault in one case of three: several at once mostly hide each other (a duplicate already stops every delete). */
const rarely = <T, N>(arb: fc.Arbitrary<T>, none: N) => fc.oneof({ arbitrary: fc.constant(none), weight: 2 }, { arbitrary: arb, weight: 1 });

const values = fc.record({
  name,
  version: fc.option(fc.integer({ min: 0, max: 50 }), { nil: null, freq: 6 }),
  tags: fc.option(fc.array(fc.constantFrom('a', 'b', 'ü', '"'), { maxLength: 2 }), { nil: null, freq: 6 }),
});
const item = fc.tuple(fc.integer({ min: 1, max: 30 }), values).map(([id, v]) => ({ id, ...v }));

const arbCase: fc.Arbitrary<Case> = fc.record({
  entity: fc.constantFrom(...Object.keys(PROPERTY)),
  records: fc.uniqueArray(item, { selector: (r) => r.id, maxLength: 14, size: 'medium' }),
  // The target as an earlier run left it: most of the vendor's records, some since changed, and rows the vendor no longer has.
  prior: fc.array(fc.record({ has: fc.integer({ min: 0, max: 4 }).map((n) => n > 0), changed: fc.option(values, { nil: null }) }), { maxLength: 14 }),
  stale: fc.uniqueArray(item, { selector: (r) => r.id, maxLength: 4 }),
  transport: fc.array(fc.constantFrom<Fault>('ok', 'ok', '500', 'reset', 'truncated', 'cut'), { maxLength: 6 }),
  dups: rarely(fc.array(fc.nat(), { minLength: 1, maxLength: 2 }), []),
  drop: rarely(fc.record({ field: fc.constantFrom(...FIELDS), which: fc.oneof(fc.constant('all' as const), fc.array(fc.nat(), { minLength: 1, maxLength: 4 })) }),
    null),
  nul: rarely(fc.record({ at: fc.nat(), in: fc.constantFrom('name' as const, 'tags' as const) }), null),
  changes: fc.array(fc.record({
    page: fc.integer({ min: 2, max: 4 }),
    del: fc.option(fc.record({ sent: fc.boolean(), pick: fc.nat() }), { nil: null }),
    add: fc.option(fc.nat(), { nil: null }),
  }), { maxLength: 3 }),
}).map(({ prior, stale, ...c }) => ({
  ...c,
  target: [
    ...c.records.flatMap((r, i) => (prior[i]?.has === false ? [] : [{ ...r, ...(prior[i]?.changed ?? {}) }])),
    ...stale.filter((s) => !c.records.some((r) => r.id === s.id)),
  ],
}));

/**
 * Plays a case on the vendor: `truth` is what the vendor really holds (it
 * moves with the changes between pages); the listing it sends is the truth
 * with the case's record faults (duplicates, a dropped field, a NUL).
 */
function play(c: Case, served: { crawl: Item[] }): { truth: Item[] } {
  const truth = clone(c.records);
  const dropped = new Set(c.drop && c.drop.which !== 'all' ? c.drop.which.map((i) => truth[i % Math.max(1, truth.length)]?.id) : []);
  const fault = (r: Item): Item => {
    const out = clone(r);
    if (c.drop && (c.drop.which === 'all' || dropped.has(r.id))) delete out[c.drop.field];
    return out;
  };
  const listing = truth.map(fault);
  for (const d of c.dups) {
    if (!listing.length) break;
    const at = d % listing.length;
    listing.splice(at + 1, 0, { ...clone(listing[at]), name: 'a second copy' });
  }
  const single = AVOID.nulInDuplicate ? listing.filter((r) => listing.filter((x) => x.id === r.id).length === 1) : listing;
  if (c.nul && single.length) {
    const r = single[c.nul.at % single.length];
    if (c.nul.in === 'name') r.name = `x\u0000${r.name ?? ''}`;
    else r.tags = ['x\u0000y'];
  }
  list(listing);
  let nextId = 100;
  const byPage = new Map<number, Change[]>();
  for (const ch of c.changes) byPage.set(ch.page, [...(byPage.get(ch.page) ?? []), ch]);
  const pages = new Set<string>();
  vendor.beforeAnswer = (url) => {
    if (url.searchParams.has('ids') || pages.has(url.search)) return;
    pages.add(url.search);
    for (const ch of byPage.get(pages.size) ?? []) {
      const now = vendor.records as unknown as Item[];
      const sent = new Set(served.crawl.map((r) => r.id));
      const candidates = ch.del ? truth.filter((r) => sent.has(r.id) === ch.del!.sent) : [];
      if (ch.del && candidates.length) {
        const gone = candidates[ch.del.pick % candidates.length].id;
        truth.splice(truth.findIndex((r) => r.id === gone), 1);
        list(now.filter((r) => r.id !== gone));
      }
      if (ch.add !== null && !(AVOID.totalWithDeleteAndAdd && c.entity === 'prop_page_total' && c.changes.some((x) => x.del !== null))) {
        // A new record gets a new key, as a real back-end's does.
        const added = { id: nextId++, name: `new ${nextId}`, version: 1, tags: ['n'] };
        truth.push(added);
        const listed = vendor.records as unknown as Item[];
        listed.splice(ch.add % (listed.length + 1), 0, fault(added));
      }
    }
  };
  return { truth };
}

describe('an http mirror under faults (property)', () => {
  it('never deletes a row the vendor still has, never nulls a value a record left out, accounts for every record, and converges', async () => {
    await fc.assert(fc.asyncProperty(arbCase, async (c) => {
      quiet();
      const { entity } = c;
      // Deletes an earlier case held must not be confirmed in this one.
      await sync.pool.query(`delete from sync.held_delete h using sync.run r where r.id = h.run_id and r.entity = $1`, [entity]);
      await seed(entity, c.target);
      const before = await rows(entity);
      const served = recordServed();
      const { truth } = play(c, served);
      vendor.inject(...c.transport);
      const r = await run(entity);
      vendor.beforeAnswer = undefined;
      const after = await rows(entity);

      // A field missing from every record the crawl received is schema drift: the run fails and writes nothing.
      const drifted = FIELDS.filter((f) => served.crawl.length > 0 && served.crawl.every((s) => !(f in s)));
      if (drifted.length) {
        expect(r.status).toBe('failed');
        expect(r.error).toMatch(new RegExp(`schema drift in ${entity}: the fields? .*"${drifted[0]}"`));
        expect(after).toEqual(before);
      } else {
        expect(r.error).toBeUndefined();
        expect(['succeeded', 'partial']).toContain(r.status);
        // (c) every record received is accounted for, one run_error a quarantined record.
        expect(r.fetched).toBe(served.crawl.length + served.lookup.length);
        await expectAccounted(r);
      }
      // (a) no row whose record the vendor still has is deleted.
      const kept = new Set(ids(after));
      const live = new Set(truth.map((t) => t.id));
      expect(before.filter((b) => live.has(b.id) && !kept.has(b.id)).map((b) => b.id)).toEqual([]);
      // (b) a field missing from a record never turns a value into NULL: a row whose records all lacked it keeps it.
      const received = [...served.crawl, ...served.lookup];
      for (const b of before) {
        const a = after.find((x) => x.id === b.id);
        const got = received.filter((s) => s.id === b.id);
        if (!a || !got.length) continue;
        for (const f of FIELDS) {
          if (b[f] !== null && got.every((s) => !(f in s))) expect({ id: b.id, [f]: a[f] }).toEqual({ id: b.id, [f]: b[f] });
          if (b[f] !== null && a[f] === null) expect(got.some((s) => s[f] === null)).toBe(true);
        }
      }

      // (d) With the faults gone, a run and a confirming run leave the target equal to the vendor.
      quiet();
      list(clone(truth));
      await run(entity);
      const last = await run(entity, { confirmDeletes: true });
      expect(last.error).toBeUndefined();
      expect(last.status).toBe('succeeded');
      expect(await rows(entity)).toEqual(truth.map(asRow).sort((x, y) => x.id - y.id));
    }), { numRuns: 25 });
  });
});
