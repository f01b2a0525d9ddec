import fc from 'fast-check';
import { afterAll, describe, expect, test } from 'vitest';
import type { HttpClient } from '../../src/sources/http/client.js';
import { CriticalError } from '../../src/sources/http/errors.js';
import { compareVersions, nextFromLinkHeader, paginate, type Page, type PageState } from '../../src/sources/http/paginate.js';
import type { HttpEntityOptions } from '../../src/sources/http/schema.js';
import { endpoint, testClient, TIMEOUT_FAULT_MS } from './clients.js';
import { ENDPOINT_NAMES, PAGE_SIZE, Vendor, type Fault, type Rec } from './vendor.js';

// Every crawl in this file is bounded in pages and time: a paginator that
// loops must fail the test, not hang it. The time bound is far above what a
// crawl takes on a loaded machine (it only has to come before the test's timeout).
const MAX_TEST_PAGES = 60;
const CRAWL_MS = 60_000;

const vendors: Vendor[] = [];
afterAll(() => Promise.all(vendors.map((v) => v.close())));

async function vendorWith(count: number): Promise<Vendor> {
  const v = new Vendor(count);
  vendors.push(v);
  await v.start();
  return v;
}

async function crawl(client: HttpClient, entity: HttpEntityOptions, resumeFrom?: PageState): Promise<Page[]> {
  const pages: Page[] = [];
  for await (const page of paginate(client, entity, { resumeFrom, signal: AbortSignal.timeout(CRAWL_MS), entity: 'items' })) {
    pages.push(page);
    if (pages.length > MAX_TEST_PAGES) throw new Error(`more than ${MAX_TEST_PAGES} pages: the crawl does not end`);
  }
  return pages;
}

/** Polls a condition of this process (a callback's record) until it holds; the test's timeout bounds the wait. */
async function until(ok: () => boolean): Promise<void> {
  while (!ok()) await new Promise((r) => setTimeout(r, 5));
}

/** Requests a crawl of `pages` pages makes when faults are served in this order, one a request. */
function requestsFor(pages: number, schedule: Fault[]): number {
  let ok = 0;
  let requests = 0;
  for (const f of schedule) {
    if (ok === pages) break;
    requests++;
    if (f === 'ok') ok++;
  }
  return requests + (pages - ok);
}

// Styles without an end marker: they learn the end from one empty page.
const ENDS_ON_EMPTY_PAGE: string[] = ['version', 'keyset'];
// Offset and page crawls end on a page shorter than asked once a full page showed the API gives the size asked:
// an empty page follows a full last page, or a short first one.
const ENDS_ON_SHORT_PAGE: string[] = ['page', 'offset'];

const ids = (pages: Page[]) => pages.flatMap((p) => (p.records as Rec[]).map((r) => r.id));
const range = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe('every pagination style', () => {
  test.each(ENDPOINT_NAMES)('%s returns every record once, in order, a page at a time', async (name) => {
    const v = await vendorWith(10);
    const pages = await crawl(testClient(v.url), endpoint(name));
    expect(ids(pages)).toEqual(range(10));
    expect(pages.map((p) => p.records.length)).toEqual([3, 3, 3, 1]);
    expect(pages.map((p) => p.page)).toEqual([1, 2, 3, 4]);
    expect(pages.at(-1)!.next === null).toBe(!ENDS_ON_EMPTY_PAGE.includes(name));
    // The short last page ends offset and page crawls: no request for an empty page after it.
    // Styles without an end marker learn the end from one empty page.
    expect(v.hits).toHaveLength(ENDS_ON_EMPTY_PAGE.includes(name) ? 5 : 4);
  });

  test('page numbers, offsets and versions go into the configured parameters', async () => {
    const v = await vendorWith(4);
    await crawl(testClient(v.url), endpoint('page', { params: { status: 'active' } }));
    expect(v.hits.map((h) => h.query.toString())).toEqual([
      'status=active&page=1&per_page=3', 'status=active&page=2&per_page=3']);
    v.hits.length = 0;
    await crawl(testClient(v.url), endpoint('version'));
    expect(v.hits.map((h) => h.query.toString())).toEqual(['page_size=3', 'page_size=3&after=3', 'page_size=3&after=4']);
  });

  test('a short first page ends an offset crawl only where the API is known to give the size asked', async () => {
    const v = await vendorWith(2);
    const pages = async (sizeHonored: boolean) => {
      v.hits.length = 0;
      const got: Page[] = [];
      for await (const p of paginate(testClient(v.url), endpoint('offset'), { sizeHonored })) got.push(p);
      return got;
    };
    // Two records where three were asked: a small listing, or an API giving two a page?
    expect(ids(await pages(false))).toEqual([1, 2]);
    expect(v.hits).toHaveLength(2);
    // Declared (maxPageSize): the short page is the last.
    const declared = await pages(true);
    expect(ids(declared)).toEqual([1, 2]);
    expect(declared[0].next).toBeNull();
    expect(v.hits).toHaveLength(1);
  });

  test('an empty source yields no page', async () => {
    const v = await vendorWith(0);
    for (const name of ENDPOINT_NAMES) expect(await crawl(testClient(v.url), endpoint(name))).toEqual([]);
  });

  test('style "none" is one request', async () => {
    const v = await vendorWith(5);
    const pages = await crawl(testClient(v.url), endpoint('offset', { pagination: { style: 'none' }, params: { limit: 50 } }));
    expect(ids(pages)).toEqual(range(5));
    expect(pages[0].next).toBeNull();
    expect(v.hits).toHaveLength(1);
  });

  test('the Link header\'s rel="next" is found among other relations', () => {
    expect(nextFromLinkHeader('<https://a/x?p=1>; rel="first", <https://a/x?p=3>; rel="next"')).toBe('https://a/x?p=3');
    expect(nextFromLinkHeader('<https://a/x?p=3>; rel="prev next"')).toBe('https://a/x?p=3');
    expect(nextFromLinkHeader('<https://a/x?p=1>; rel="prev"')).toBeUndefined();
    expect(nextFromLinkHeader(null)).toBeUndefined();
  });

  test('versions compare as integers beyond 2^53', () => {
    expect(compareVersions('9007199254740993', '9007199254740992')).toBe(1);
    expect(compareVersions('10', '9')).toBe(1);
    expect(compareVersions('7', '7')).toBe(0);
  });
});

describe('fetching ahead', () => {
  test('page n+1 is requested while the caller works on page n, and never page n+2', async () => {
    const v = await vendorWith(12);
    let seen = 0;
    const answered: string[] = [];
    v.served = (url) => answered.push(url.search);
    for await (const page of paginate(testClient(v.url), endpoint('offset'), { signal: AbortSignal.timeout(CRAWL_MS) })) {
      seen++;
      // The caller is busy with page n: the request for page n+1 arrives meanwhile.
      await v.hit((_, i) => i === seen);
      // Once that request has been answered, a paginator that fetched further
      // ahead would ask for page n+2 right away: give it the chance. (A pause
      // can only hide such a request on a slow machine, never invent one.)
      await until(() => answered.length > seen);
      await new Promise((r) => setTimeout(r, 50));
      expect(v.hits).toHaveLength(seen + 1);
      expect(page.page).toBe(seen);
    }
    expect(seen).toBe(4);
  });

  test('a caller that stops early cancels the request fetched ahead', async () => {
    const v = await vendorWith(12);
    let closed: (unanswered: boolean) => void;
    const cancelled = new Promise<boolean>((resolve) => { closed = resolve; });
    v.override = (_req, res, url) => {
      if (url.searchParams.get('offset') !== '3') return false;
      res.on('close', () => closed(!res.writableEnded));
      return true; // never answers page 2
    };
    // The client's own timeout lies beyond the test's: only the cancel can end the request.
    for await (const page of paginate(testClient(v.url), endpoint('offset'))) {
      expect(page.page).toBe(1);
      await v.hit((h) => h.query.get('offset') === '3'); // the request fetched ahead is out
      break;
    }
    expect(await cancelled).toBe(true);
  });
});

describe('bad contracts are critical', () => {
  test('a records path that is not in the body names the keys that are', async () => {
    const v = await vendorWith(3);
    const err = await crawl(testClient(v.url), endpoint('page', { recordsPath: 'items' })).catch((e) => e);
    expect(err).toBeInstanceOf(CriticalError);
    expect(err.message).toMatch(/no record array at "items"; set recordsPath of entity items .*top-level keys: data/);
  });

  test('a cursor that does not move stops the crawl instead of looping', async () => {
    const v = await vendorWith(3);
    v.override = (_req, res) => {
      res.writeHead(200).end(JSON.stringify({ records: [{ id: 1 }], offset: 'same' }));
      return true;
    };
    await expect(crawl(testClient(v.url), endpoint('cursor'))).rejects.toThrow(/same cursor it was called with/);
    expect(v.hits.length).toBeLessThanOrEqual(3);
  });

  test('a version that does not grow stops the crawl instead of looping', async () => {
    const v = await vendorWith(3);
    v.override = (_req, res) => {
      res.writeHead(200).end(JSON.stringify({ data: [{ id: 1 }], version: { min: 5, max: 5 } }));
      return true;
    };
    await expect(crawl(testClient(v.url), endpoint('version'))).rejects.toThrow(/version 5, not past the 5/);
  });

  test('a resume state of another style is refused', async () => {
    const v = await vendorWith(3);
    await expect(crawl(testClient(v.url), endpoint('page'), { style: 'offset', index: 1, offset: 3 })).rejects.toThrow(/cannot resume a "offset" crawl/);
  });
});

describe('properties', () => {
  test('resuming from any page\'s state yields what an uninterrupted crawl yields', async () => {
    const v = await vendorWith(0);
    await fc.assert(fc.asyncProperty(
      fc.constantFrom(...ENDPOINT_NAMES), fc.integer({ min: 1, max: 11 }), fc.nat(),
      async (name, count, pick) => {
        v.records = [];
        for (let i = 1; i <= count; i++) v.add(`r${i}`);
        const client = testClient(v.url);
        const whole = await crawl(client, endpoint(name));
        const k = pick % whole.length;
        // The state goes through storage (JSON) as it would in sync.run.
        const stored = whole[k].next === null ? null : JSON.parse(JSON.stringify(whole[k].next)) as PageState;
        const rest = stored === null ? [] : await crawl(client, endpoint(name), stored);
        expect([...ids(whole.slice(0, k + 1)), ...ids(rest)]).toEqual(ids(whole));
        expect(ids(whole)).toEqual(range(count));
        expect(rest.map((p) => p.page)).toEqual(whole.slice(k + 1).map((p) => p.page));
      }), { numRuns: 40 });
  });

  test('any bounded schedule of faults ends with exactly the vendor\'s records', async () => {
    const v = await vendorWith(0);
    const fault = fc.constantFrom<Fault>('ok', 'ok', '500', '503', 'reset', 'timeout', 'truncated', 'cut', '429');
    await fc.assert(fc.asyncProperty(
      fc.constantFrom(...ENDPOINT_NAMES), fc.integer({ min: 0, max: 10 }),
      fc.array(fault, { maxLength: 8 }).filter((s) => s.filter((f) => f === 'timeout').length <= 2),
      async (name, count, schedule) => {
        v.records = [];
        for (let i = 1; i <= count; i++) v.add(`r${i}`);
        v.reset();
        v.inject(...schedule);
        // A healthy request that outlived the timeout would be one request more than counted.
        const timeout = schedule.includes('timeout') ? { timeoutMs: TIMEOUT_FAULT_MS } : {};
        const client = testClient(v.url, { ...timeout, retries: { max: 8, baseMs: 1, maxMs: 4, rateLimited: 8 } });
        const pages = await crawl(client, endpoint(name));
        expect(ids(pages)).toEqual(range(count));
        expect(pages.flatMap((p) => p.records)).toEqual(v.records);
        // Each fault cost exactly one extra request: nothing was fetched twice.
        const emptyLast = ENDS_ON_EMPTY_PAGE.includes(name) || count === 0 || (ENDS_ON_SHORT_PAGE.includes(name) && (count % PAGE_SIZE === 0 || count < PAGE_SIZE));
        const pagesNeeded = Math.ceil(count / PAGE_SIZE) + (emptyLast ? 1 : 0);
        expect(v.hits).toHaveLength(requestsFor(pagesNeeded, schedule));
      }), { numRuns: 30 });
  });

  test('version pagination neither skips nor repeats records that change during the crawl', async () => {
    const v = await vendorWith(0);
    const change = fc.record({ atPage: fc.integer({ min: 1, max: 6 }), kind: fc.constantFrom('touch', 'add'), which: fc.nat() });
    await fc.assert(fc.asyncProperty(fc.integer({ min: 1, max: 12 }), fc.array(change, { maxLength: 10 }), async (count, changes) => {
      v.records = [];
      for (let i = 1; i <= count; i++) v.add(`r${i}`);
      let served = 0;
      v.beforeVersionPage = () => {
        served++;
        for (const c of changes.filter((x) => x.atPage === served)) {
          if (c.kind === 'add') v.add(`new${c.which}`);
          else v.touch(1 + (c.which % v.records.length));
        }
      };
      const pages = await crawl(testClient(v.url), endpoint('version'));
      v.beforeVersionPage = undefined;
      const seen = pages.flatMap((p) => p.records as Rec[]);
      // No record version twice, versions in increasing order.
      const versions = seen.map((r) => r.version);
      expect(versions).toEqual([...versions].sort((a, b) => a - b));
      expect(new Set(versions).size).toBe(versions.length);
      // The last version seen of each record is the vendor's final one.
      const last = new Map(seen.map((r) => [r.id, r]));
      expect([...last.values()].sort((a, b) => a.id - b.id)).toEqual(v.records);
      // The final state doubles as the next incremental run's cursor: nothing left after it.
      expect(await crawl(testClient(v.url), endpoint('version'), pages.at(-1)!.next!)).toEqual([]);
    }), { numRuns: 40 });
  });
});
