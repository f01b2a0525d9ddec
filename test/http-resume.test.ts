import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { parseConfig } from '../src/config/load.js';
import { applyConfig } from '../src/config/apply.js';
import { Engine } from '../src/engine/run.js';
import fc from 'fast-check';
import { Vendor } from './http/vendor.js';
import { waitGone } from './helpers/gen.js';

let sync: TestDatabase;
let configFile: string;
const vendor = new Vendor(600);

const config = (url: string) => ({
  sources: { shop: { kind: 'http', baseUrl: url, retries: { max: 3, baseMs: 5, maxMs: 20 } } },
  entities: {
    products: { source: 'shop', from: { http: { path: 'version', pagination: { style: 'version', sizeParam: 'page_size', size: 3 } } },
      target: 'products', key: ['id'], cursor: { column: 'version' } },
  },
});

beforeAll(async () => {
  sync = await testDatabase('http_resume');
  await sync.pool.query('create table products (id int primary key, name text not null, version bigint, tags jsonb)');
  const url = await vendor.start();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-resume-'));
  configFile = path.join(dir, 'syncline.config.json');
  writeFileSync(configFile, JSON.stringify(config(url)));
  // While a kill is pending, the vendor answers `answerPages` pages and then
  // holds every further request: the crawl is surely mid-way when killed,
  // however slow the machine.
  vendor.override = (_req, _res, url2) => {
    if (url2.pathname !== '/version' || answerPages === null) return false;
    if (answerPages > 0) { answerPages -= 1; return false; }
    return true; // no answer: the request hangs until its client is killed
  };
});

let answerPages: number | null = null;
afterAll(() => vendor.close());

let children = 0;

/**
 * `sync products` in a child process, SIGKILLed once the run has saved
 * `pages` pages. Resolves once the child's sessions are gone too: the server
 * drops a dead client's session, and with it the entity lock, only when it
 * notices the socket closed. (The child names its sessions, PGAPPNAME, so
 * that nothing else on the server is waited for.)
 */
async function syncKilledAfterPages(pages: number): Promise<void> {
  // One more than saved: the fetch-ahead request for page n+1 goes out while page n is written.
  answerPages = pages + 1;
  const app = `syncline-test resume ${process.pid} ${++children}`;
  await new Promise<void>((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'sync', 'products'], {
      env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: configFile, SYNCLINE_LOG_LEVEL: 'silent', PGAPPNAME: app },
      stdio: 'ignore',
    });
    let exited = false;
    child.on('exit', () => { exited = true; answerPages = null; resolve(); });
    const watch = async () => {
      while (!exited) {
        const { rows } = await sync.pool.query(`select (detail ->> 'pages')::int as p from sync.run where status = 'running'`);
        if (rows[0]?.p >= pages) { child.kill('SIGKILL'); return; }
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    void watch();
  });
  await waitGone(sync.pool, app);
}

describe('an http crawl killed with SIGKILL', () => {
  it('resumes from the last saved page, wherever it was killed: the result equals an uninterrupted crawl (property)', async () => {
    const cfg = parseConfig(config(vendor.url), {});
    await applyConfig(sync.pool, cfg);
    const engine = new Engine(sync.pool, sync.url, cfg);
    try {
      await fc.assert(fc.asyncProperty(fc.integer({ min: 1, max: 150 }), async (pages) => {
        await sync.pool.query(`truncate products; update sync.entity set cursor_value = null where name = 'products'`);
        await syncKilledAfterPages(pages);
        const killed = (await sync.pool.query(`select id, detail from sync.run order by id desc limit 1`)).rows[0];
        // Killed mid-crawl: nothing merged yet.
        expect((await sync.pool.query('select count(*)::int as n from products')).rows[0].n).toBe(0);
        vendor.reset();
        const r = await engine.run('products', { trigger: 'manual' });
        expect(r).toMatchObject({ status: 'succeeded', fetched: 600, inserted: 600 });
        if (killed.detail.resume) {
          // The first request of the resumed run continues after the last saved page.
          expect(vendor.hits[0].query.get('after')).toBe(String(killed.detail.resume.after));
          const detail = (await sync.pool.query('select detail from sync.run where id = $1', [r.runId])).rows[0].detail;
          expect(detail.resumed_from_run).toBe(killed.id);
        }
        const rows = (await sync.pool.query('select id, version from products order by id')).rows;
        expect(rows).toEqual(vendor.records.map((v) => ({ id: v.id, version: v.version })));
      }), { numRuns: 3, examples: [[20]] });
    } finally {
      await engine.close();
    }
  });

  it('does not resume from pages a server restart emptied: unlogged staging is gone, so the crawl starts at page 1 and loses nothing', async () => {
    const cfg = parseConfig(config(vendor.url), {});
    await applyConfig(sync.pool, cfg);
    const engine = new Engine(sync.pool, sync.url, cfg);
    try {
      await sync.pool.query(`truncate products; update sync.entity set cursor_value = null where name = 'products'`);
      await syncKilledAfterPages(40);
      const killed = (await sync.pool.query(`select id, detail from sync.run order by id desc limit 1`)).rows[0];
      expect(killed.detail.resume).toBeTruthy();
      // What a crash of the server does to unlogged tables, while sync.run (logged) keeps the resume state.
      const { rows: tables } = await sync.pool.query(
        `select relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = 'sync_staging' and relname ~ $1`, [`^run_${killed.id}_(raw|typed)$`]);
      expect(tables.length).toBeGreaterThan(0);
      for (const t of tables) await sync.pool.query(`truncate sync_staging.${JSON.stringify(t.relname)}`);
      vendor.reset();
      const r = await engine.run('products', { trigger: 'manual' });
      expect(r).toMatchObject({ status: 'succeeded', fetched: 600, inserted: 600 });
      expect(vendor.hits[0].query.get('after')).toBeNull();
      const detail = (await sync.pool.query('select detail from sync.run where id = $1', [r.runId])).rows[0].detail;
      expect(detail.resumed_from_run).toBeUndefined();
      expect(detail.resume_refused).toMatchObject({ run_id: killed.id });
      expect((await sync.pool.query('select count(*)::int as n from products')).rows[0].n).toBe(600);
    } finally {
      await engine.close();
    }
  });
});
