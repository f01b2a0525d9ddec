import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabase, type TestDatabase } from '../../test/helpers/db.js';
import { parseConfig } from '../../src/config/load.js';
import { applyConfig } from '../../src/config/apply.js';
import type { Config, CsvSourceConfig } from '../../src/config/schema.js';
import type { Pool } from '../../src/db/pool.js';
import { Engine, type RunOptions, type RunResult } from '../../src/engine/run.js';
import { runMany } from '../../src/engine/plan.js';
import { csvLocation } from '../../src/sources/csv/read.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const file = (name: string) => readFileSync(path.join(here, name), 'utf8');
const exampleConfig = () => JSON.parse(file('syncline.config.json')) as Record<string, unknown>;

const ENTITIES = ['regions', 'sellers'];
/** The published spreadsheet on the fake Google: its id, and a gid for each tab (the first tab's is always 0). */
const DOC = '2PACX-1vTestSellerSheet';
const GID = { sellers: '0', regions: '1718055340' };

/** Env of a config reading the published sheet at `base` (http://host:port). */
const sheetEnv = (base: string) => ({
  SELLER_SHEET_URL: `${base}/spreadsheets/d/e/${DOC}`,
  SELLERS_TAB: `pub?gid=${GID.sellers}&single=true&output=csv`,
  REGIONS_TAB: `pub?gid=${GID.regions}&single=true&output=csv`,
});

/** The sample sheet's three bad lines: what a person sees in sync.run_error. */
const SAMPLE_ERRORS = [
  { line: 9, key: ['S-0008'], category: 'validation',
    message: 'line 9, column commission_pct: invalid input syntax for type numeric: "ten"' },
  { line: 17, key: null, category: 'validation', message: 'line 17: Invalid Record Length: expect 9, got 10 on line 17' },
  // A missing parent is found after the cast, on the typed row: the message names the key, not the line.
  { line: null, key: ['S-0023'], category: 'integrity',
    message: 'references a row of sales.regions that does not exist: {"region": "NROTH"}' },
];

const runErrors = async (pool: Pool, runId: number | null) => (await pool.query(
  `select (payload ->> 'line')::int as line, key, category, message
     from sync.run_error where run_id = $1 order by 1 nulls last, id`, [runId])).rows;

const sellers = async (pool: Pool) => (await pool.query(
  `select seller_number, name, email, commission_pct::text, region, joined_on::text, active, updated_at
     from sales.sellers order by seller_number`)).rows;

/** Text of every row of both tables, to compare two databases. */
const snapshot = async (pool: Pool) => (await pool.query(
  `select (select string_agg(r::text, E'\\n' order by region_code) from sales.regions r) as regions,
          (select string_agg(s::text, E'\\n' order by seller_number) from sales.sellers s) as sellers`)).rows[0];

/** xmin of every row: unchanged when nothing was written. */
const xmins = async (pool: Pool) => (await pool.query(
  `select (select string_agg(xmin::text, ',' order by region_code) from sales.regions) as regions,
          (select string_agg(xmin::text, ',' order by seller_number) from sales.sellers) as sellers`)).rows[0];

const accounted = (r: RunResult) => (r.inserted ?? 0) + (r.updated ?? 0) + (r.unchanged ?? 0) + (r.quarantined ?? 0);
const counts = (r: RunResult) => ({ inserted: r.inserted, updated: r.updated, deleted: r.deleted, quarantined: r.quarantined });

async function syncAll(engine: Engine, names = ENTITIES, opts: Partial<RunOptions> = {}): Promise<Record<string, RunResult>> {
  const results = await runMany(engine, names, { trigger: 'manual', ...opts });
  for (const r of results) {
    if (r.status === 'succeeded' || r.status === 'partial') expect(r.fetched, `${r.entity}: every fetched line accounted for`).toBe(accounted(r));
  }
  return Object.fromEntries(results.map((r) => [r.entity, r]));
}

/** A fresh Syncline database with the example's tables and config applied. */
async function exampleDatabase(prefix: string, env: NodeJS.ProcessEnv, configDir = here): Promise<{ db: TestDatabase; cfg: Config; engine: Engine }> {
  const db = await testDatabase(prefix);
  await db.pool.query(file('local.sql'));
  const cfg = parseConfig(exampleConfig(), env, 'examples/seller-sheet/syncline.config.json');
  await applyConfig(db.pool, cfg);
  return { db, cfg, engine: new Engine(db.pool, db.url, cfg, configDir) };
}

describe('the example config', () => {
  it('validates; by default it reads the CSV files beside it, in Berlin time, regions before sellers', () => {
    const cfg = parseConfig(exampleConfig(), {});
    const src = cfg.sources.sheet as CsvSourceConfig;
    expect(src).toMatchObject({ kind: 'csv', location: '.', timeZone: 'Europe/Berlin', delimiter: ',', encoding: 'utf-8' });
    expect(Object.keys(cfg.entities)).toEqual(ENTITIES);
    expect(cfg.entities.sellers).toMatchObject({ mode: 'mirror', key: ['seller_number'], dependsOn: ['regions'], target: { schema: 'sales', table: 'sellers' } });
    expect(cfg.entities.sellers.columns).toMatchObject({ email: 'E-mail', commission_pct: 'Commission %', updated_at: 'Last Updated' });
    expect(csvLocation(src, (cfg.entities.sellers.from as { file: string }).file, here)).toBe(path.join(here, 'sellers.csv'));
    expect(csvLocation(src, (cfg.entities.regions.from as { file: string }).file, here)).toBe(path.join(here, 'regions.csv'));
  });

  it('reads the published sheet, one URL a tab, when SELLER_SHEET_URL and the tabs are set', () => {
    const cfg = parseConfig(exampleConfig(), {
      SELLER_SHEET_URL: 'https://docs.google.com/spreadsheets/d/e/2PACX-1vQabc',
      SELLERS_TAB: 'pub?gid=0&single=true&output=csv',
      REGIONS_TAB: 'pub?gid=1718055340&single=true&output=csv',
    });
    const src = cfg.sources.sheet as CsvSourceConfig;
    const at = (e: string) => csvLocation(src, (cfg.entities[e].from as { file: string }).file, here);
    expect(at('sellers')).toBe('https://docs.google.com/spreadsheets/d/e/2PACX-1vQabc/pub?gid=0&single=true&output=csv');
    expect(at('regions')).toBe('https://docs.google.com/spreadsheets/d/e/2PACX-1vQabc/pub?gid=1718055340&single=true&output=csv');
    // A tab variable may also hold the whole link from the Publish dialog: a URL is used as is.
    const whole = parseConfig(exampleConfig(), { SELLERS_TAB: 'https://docs.google.com/spreadsheets/d/e/X/pub?gid=0&single=true&output=csv' });
    expect(csvLocation(whole.sources.sheet as CsvSourceConfig, (whole.entities.sellers.from as { file: string }).file, here))
      .toBe('https://docs.google.com/spreadsheets/d/e/X/pub?gid=0&single=true&output=csv');
  });
});

describe('a published Google Sheet (CSV over HTTP, redirected, UTF-8 with BOM)', () => {
  let db: TestDatabase;
  let engine: Engine;
  let server: http.Server;
  /** What each tab of the fake sheet holds, as lines (the header first). */
  const tabs: Record<string, string[]> = {
    [GID.sellers]: file('sellers.csv').trimEnd().split('\n'),
    [GID.regions]: file('regions.csv').trimEnd().split('\n'),
  };
  const served: string[] = [];
  const sellersTab = tabs[GID.sellers];
  const regionsTab = tabs[GID.regions];
  /** Replaces the line of the sellers tab that starts with `number,`. */
  const editSeller = (number: string, line: string | null) => {
    const i = sellersTab.findIndex((l) => l.startsWith(`${number},`));
    expect(i, number).toBeGreaterThan(0);
    if (line === null) sellersTab.splice(i, 1);
    else sellersTab[i] = line;
  };

  beforeAll(async () => {
    // Google answers the published link with a redirect to a short-lived
    // googleusercontent URL, which serves text/csv with CRLF line ends.
    server = http.createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://sheet');
      served.push(url.pathname + url.search);
      const gid = url.searchParams.get('gid') ?? '0';
      if (url.pathname === `/spreadsheets/d/e/${DOC}/pub` && url.searchParams.get('output') === 'csv' && gid in tabs) {
        res.writeHead(307, { location: `/pub/${DOC}/${Date.now()}?gid=${gid}&single=true&output=csv` });
        res.end();
      } else if (url.pathname.startsWith(`/pub/${DOC}/`) && gid in tabs) {
        res.writeHead(200, { 'content-type': 'text/csv; charset=utf-8', 'content-disposition': `attachment; filename="tab-${gid}.csv"` });
        res.end(`\uFEFF${tabs[gid].join('\r\n')}\r\n`);
      } else {
        res.writeHead(404, { 'content-type': 'text/html' });
        res.end('<html>Page not found</html>');
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    ({ db, engine } = await exampleDatabase('seller_sheet_http', sheetEnv(base)));
  });
  afterAll(async () => {
    await engine?.close();
    await new Promise((r) => server.close(r));
  });

  it('a dry run previews the first sync and writes nothing', async () => {
    const results = await syncAll(engine, ENTITIES, { dryRun: true });
    expect(results.regions).toMatchObject({ status: 'succeeded', fetched: 6, inserted: 6 });
    expect(results.sellers).toMatchObject({ fetched: 36, inserted: 34, quarantined: 2 });
    expect((await db.pool.query('select (select count(*)::int from sales.regions) + (select count(*)::int from sales.sellers) as n')).rows[0].n).toBe(0);
  });

  it('the first sync loads regions, then sellers; the bad lines are quarantined with line and reason, the rest load', async () => {
    served.length = 0;
    const results = await syncAll(engine);
    expect(Object.keys(results)).toEqual(['regions', 'sellers']);
    expect(results.regions).toMatchObject({ status: 'succeeded', fetched: 6, inserted: 6, quarantined: 0 });
    expect(results.sellers).toMatchObject({ status: 'partial', fetched: 36, inserted: 33, updated: 0, quarantined: 3 });
    // Each tab: the published link, then the redirect's target.
    expect(served.filter((u) => u.startsWith(`/spreadsheets/d/e/${DOC}/pub?`))).toHaveLength(2);
    expect(served.filter((u) => u.startsWith(`/pub/${DOC}/`))).toHaveLength(2);
    expect(await runErrors(db.pool, results.sellers.runId)).toEqual(SAMPLE_ERRORS);
    // The quarantine keeps the line as read, header → cell, for whoever fixes the sheet.
    const payload = await db.pool.query(`select payload from sync.run_error where run_id = $1 and key = array['S-0008']`, [results.sellers.runId]);
    expect(payload.rows[0].payload).toMatchObject({ line: 9, record: { 'Seller Number': 'S-0008', 'Commission %': 'ten', Notes: '' } });
    const loaded = (await sellers(db.pool)).map((s) => s.seller_number);
    expect(loaded).toHaveLength(33);
    expect(loaded).not.toContain('S-0008');
    expect(loaded).not.toContain('S-0016');
    expect(loaded).not.toContain('S-0023');
  });

  it('casts every cell to its column: mapped headers, quoted commas, UTF-8, empty cells, dates, checkboxes, Berlin time', async () => {
    const rows = Object.fromEntries((await sellers(db.pool)).map((s) => [s.seller_number, s]));
    expect(rows['S-0001']).toEqual({ seller_number: 'S-0001', name: 'Anna Schmidt', email: 'anna.schmidt@example.com',
      commission_pct: '12.50', region: 'NORTH', joined_on: '2019-04-01', active: true, updated_at: new Date('2024-05-02T12:30:00Z') });
    expect(rows['S-0003']).toMatchObject({ name: 'Müller, Jürgen', commission_pct: '11.25', region: 'SOUTH', joined_on: '2018-02-12' });
    expect(rows['S-0006'].email).toBeNull();
    expect(rows['S-0007'].active).toBe(false);
    expect(rows['S-0010'].commission_pct).toBe('11.00');
    expect(rows['S-0018'].commission_pct).toBeNull();
    // 12:00 in Berlin in December is 11:00 UTC (CET); in May it is 12:30 → 10:30 (CEST).
    expect(rows['S-0020'].updated_at.toISOString()).toBe('2023-12-20T11:00:00.000Z');
    const regions = (await db.pool.query(`select region_code, name, country, updated_at from sales.regions order by region_code`)).rows;
    expect(regions.map((r) => r.region_code)).toEqual(['ALPS', 'BENELUX', 'EAST', 'NORTH', 'SOUTH', 'WEST']);
    expect(regions[1]).toEqual({ region_code: 'BENELUX', name: 'Benelux (Amsterdam, Brussels)', country: 'NL',
      updated_at: new Date('2024-03-04T10:30:00Z') });
  });

  it('re-running the unchanged sheet writes nothing', async () => {
    const before = await xmins(db.pool);
    const results = await syncAll(engine);
    expect(counts(results.regions)).toEqual({ inserted: 0, updated: 0, deleted: 0, quarantined: 0 });
    expect(results.regions.unchanged).toBe(6);
    expect(counts(results.sellers)).toEqual({ inserted: 0, updated: 0, deleted: 0, quarantined: 3 });
    expect(results.sellers.unchanged).toBe(33);
    expect(await xmins(db.pool)).toEqual(before);
  });

  it('the fixed sheet quarantines nothing and changes only what changed, naming the changed columns', async () => {
    editSeller('S-0008', 'S-0008,Laura Fischer,laura.fischer@example.com,10.00,WEST,2020-03-02,TRUE,2024-05-08 09:00:00,');
    editSeller('S-0016', 'S-0016,"Lopez, Maria",maria.lopez@example.com,9.75,WEST,2021-01-11,TRUE,2024-05-08 09:01:00,');
    editSeller('S-0023', 'S-0023,Lea Hofmann,lea.hofmann@example.com,10.25,NORTH,2021-04-26,TRUE,2024-05-08 09:02:00,');
    // And a raise for Jonas (his Notes cell changes too: Syncline does not read that column).
    editSeller('S-0002', 'S-0002,Jonas Weber,jonas.weber@example.com,10.50,NORTH,2020-09-15,TRUE,2024-05-08 09:05:00,Raise from May');
    const results = await syncAll(engine);
    expect(results.regions).toMatchObject({ status: 'succeeded', inserted: 0, updated: 0, deleted: 0 });
    expect(results.sellers).toMatchObject({ status: 'succeeded', fetched: 36, inserted: 3, updated: 1, deleted: 0, unchanged: 32, quarantined: 0 });
    expect(await runErrors(db.pool, results.sellers.runId)).toEqual([]);
    const changes = await db.pool.query(`select action, key, (select array_agg(c order by c) from unnest(changed) c) as changed
       from sync.run_change where run_id = $1 order by key`, [results.sellers.runId]);
    expect(changes.rows).toEqual([
      { action: 'update', key: ['S-0002'], changed: ['commission_pct', 'updated_at'] },
      { action: 'insert', key: ['S-0008'], changed: null },
      { action: 'insert', key: ['S-0016'], changed: null },
      { action: 'insert', key: ['S-0023'], changed: null },
    ]);
    const jonas = await db.pool.query(`select commission_pct::text from sales.sellers where seller_number = 'S-0002'`);
    expect(jonas.rows[0].commission_pct).toBe('10.50');
    expect((await sellers(db.pool))).toHaveLength(36);
  });

  it('a row removed from the sheet is deleted (mirror)', async () => {
    editSeller('S-0020', null);
    const results = await syncAll(engine);
    expect(counts(results.sellers)).toEqual({ inserted: 0, updated: 0, deleted: 1, quarantined: 0 });
    const change = await db.pool.query(`select action, key from sync.change where run_id = $1`, [results.sellers.runId]);
    expect(change.rows).toEqual([{ action: 'delete', key: { seller_number: 'S-0020' } }]);
    expect((await sellers(db.pool)).map((s) => s.seller_number)).not.toContain('S-0020');
  });

  it('a seller moved to a region the regions tab does not have is quarantined, keeps the old row, and lands once the region exists', async () => {
    editSeller('S-0004', 'S-0004,Sophie Becker,sophie.becker@example.com,9.50,NORDICS,2021-06-01,TRUE,2024-05-09 08:00:00,Opens Nordics');
    const first = await syncAll(engine);
    expect(first.sellers).toMatchObject({ status: 'partial', inserted: 0, updated: 0, deleted: 0, quarantined: 1 });
    expect(await runErrors(db.pool, first.sellers.runId)).toEqual([{ line: null, key: ['S-0004'], category: 'integrity',
      message: 'references a row of sales.regions that does not exist: {"region": "NORDICS"}' }]);
    const kept = await db.pool.query(`select region from sales.sellers where seller_number = 'S-0004'`);
    expect(kept.rows).toEqual([{ region: 'SOUTH' }]);

    regionsTab.push('NORDICS,Nordics (Stockholm),SE,astrid.lund@example.com,2024-05-09 08:05:00');
    const second = await syncAll(engine);
    expect(second.regions).toMatchObject({ status: 'succeeded', inserted: 1 });
    expect(second.sellers).toMatchObject({ status: 'succeeded', updated: 1, quarantined: 0 });
    const moved = await db.pool.query(`select region from sales.sellers where seller_number = 'S-0004'`);
    expect(moved.rows).toEqual([{ region: 'NORDICS' }]);
  });

  it('a region removed from the sheet together with its sellers goes in one sync', async () => {
    const alps = sellersTab.filter((l) => l.split(',')[4] === 'ALPS').map((l) => l.split(',')[0]);
    expect(alps.length).toBeGreaterThan(0);
    for (const n of alps) editSeller(n, null);
    regionsTab.splice(regionsTab.findIndex((l) => l.startsWith('ALPS,')), 1);
    const results = await syncAll(engine);
    expect(results.regions).toMatchObject({ status: 'succeeded', deleted: 1, deferred: 0 });
    expect(results.sellers).toMatchObject({ status: 'succeeded', deleted: alps.length });
    const left = await db.pool.query(`select count(*)::int as n from sales.sellers where region = 'ALPS'`);
    expect(left.rows[0].n).toBe(0);
  });

  it('status shows both entities ok, and the runs are in sync.run', async () => {
    const status = await db.pool.query(`select entity, state, last_status from sync.status order by entity`);
    expect(status.rows).toEqual([
      { entity: 'regions', state: 'ok', last_status: 'succeeded' },
      { entity: 'sellers', state: 'ok', last_status: 'succeeded' },
    ]);
  });

  it('each full read of the sheet records its count check: records merged or unchanged equal the rows in the table', async () => {
    const { rows } = await db.pool.query(`select r.detail -> 'verify' as verify, (select count(*)::int from sales.sellers) as n
      from sync.run r where r.entity = 'sellers' and r.status in ('succeeded', 'partial') order by r.id desc limit 1`);
    expect(rows[0].verify).toEqual({ source: rows[0].n, target: rows[0].n, quarantined: 0 });
    expect((await db.pool.query(`select count(*)::int as n from sync.alert where kind = 'gap'`)).rows[0].n).toBe(0);
  });

  it('a tab that is not published says what to check', async () => {
    const cfg = parseConfig(exampleConfig(), { ...sheetEnv(`http://127.0.0.1:${(server.address() as AddressInfo).port}`),
      REGIONS_TAB: 'pub?gid=999&single=true&output=csv' });
    await applyConfig(db.pool, cfg);
    const e = new Engine(db.pool, db.url, cfg, here);
    try {
      const r = await e.run('regions', { trigger: 'manual' });
      expect(r.status).toBe('failed');
      expect(r.error).toMatch(/answered 404: check the URL \(for a Google Sheet: File → Share → Publish to web → CSV\)/);
    } finally {
      await e.close();
    }
  });
});

describe('the CSV files beside the config', () => {
  it('load the same rows as the published sheet, with the same three lines quarantined', async () => {
    const { db, engine } = await exampleDatabase('seller_sheet_files', {});
    try {
      const results = await syncAll(engine);
      expect(results.regions).toMatchObject({ status: 'succeeded', inserted: 6 });
      expect(results.sellers).toMatchObject({ status: 'partial', fetched: 36, inserted: 33, quarantined: 3 });
      expect(await runErrors(db.pool, results.sellers.runId)).toEqual(SAMPLE_ERRORS);
      expect((await sellers(db.pool)).find((s) => s.seller_number === 'S-0003')).toMatchObject({ name: 'Müller, Jürgen' });
    } finally {
      await engine.close();
    }
  });

  it('a file saved by Excel (UTF-8 with BOM, CRLF) reads the same as the sample', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'seller-sheet-'));
    for (const f of ['sellers.csv', 'regions.csv']) writeFileSync(path.join(dir, f), `\uFEFF${file(f).replace(/\n/g, '\r\n')}`);
    const a = await exampleDatabase('seller_sheet_bom', {}, dir);
    const b = await exampleDatabase('seller_sheet_plain', {});
    try {
      await syncAll(a.engine);
      await syncAll(b.engine);
      expect(await snapshot(a.db.pool)).toEqual(await snapshot(b.db.pool));
    } finally {
      await a.engine.close();
      await b.engine.close();
    }
  });
});

// DESIGN.md, scenario 2: integrity rules (required fields, formats, references)
// quarantine the records that break them, and "every fetched record is
// accounted for": the target's own NOT NULL and CHECK constraints included.
describe('required fields and formats of your own table', () => {
  const HEADER = 'Seller Number,Name,E-mail,Commission %,Region,Joined On,Active,Last Updated';
  const sheetWith = async (prefix: string, bad: string) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'seller-sheet-'));
    writeFileSync(path.join(dir, 'regions.csv'), file('regions.csv'));
    writeFileSync(path.join(dir, 'sellers.csv'), `${HEADER}\nS-0001,Anna Schmidt,,12.50,NORTH,2019-04-01,TRUE,2024-05-02 14:30:00\n${bad}\n`);
    const ex = await exampleDatabase(prefix, {}, dir);
    await ex.engine.run('regions', { trigger: 'manual' });
    return ex;
  };

  it('a line without a Name (NOT NULL) is quarantined, not a failed run', async () => {
    const { engine } = await sheetWith('seller_sheet_notnull', 'S-0002,,,10.00,NORTH,2020-09-15,TRUE,2024-05-02 14:31:00');
    try {
      const r = await engine.run('sellers', { trigger: 'manual' });
      expect(r).toMatchObject({ status: 'partial', inserted: 1, quarantined: 1 });
    } finally {
      await engine.close();
    }
  });

  it('a seller number that breaks the CHECK format is quarantined, not a failed run', async () => {
    const { engine } = await sheetWith('seller_sheet_check', 'S-42,Jonas Weber,,10.00,NORTH,2020-09-15,TRUE,2024-05-02 14:31:00');
    try {
      const r = await engine.run('sellers', { trigger: 'manual' });
      expect(r).toMatchObject({ status: 'partial', inserted: 1, quarantined: 1 });
    } finally {
      await engine.close();
    }
  });

  it('a commission out of range is quarantined with the broken check named, and the rest is written', async () => {
    const { db, engine } = await sheetWith('seller_sheet_check_range', 'S-0002,Jonas Weber,,150,NORTH,2020-09-15,TRUE,2024-05-02 14:31:00');
    try {
      const r = await engine.run('sellers', { trigger: 'manual' });
      expect(r).toMatchObject({ status: 'partial', inserted: 1, quarantined: 1 });
      const { rows } = await db.pool.query('select message from sync.run_error where run_id = $1', [r.runId]);
      expect(rows[0].message).toMatch(/^breaks the check sellers_commission_pct_check: /);
      expect((await db.pool.query('select count(*)::int as n from sales.sellers')).rows[0].n).toBe(1);
    } finally {
      await engine.close();
    }
  });
});
