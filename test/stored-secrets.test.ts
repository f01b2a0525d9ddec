import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { parseConfig } from '../src/config/load.js';
import { applyConfig, diffConfig } from '../src/config/apply.js';
import { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let server: http.Server;
let base = '';
const SIG = 'sig-canary-7f3a';
const KEY = 'key-canary-91be';

beforeAll(async () => {
  sync = await testDatabase('stored_secrets');
  await sync.pool.query('create table sheet (id int primary key, name text); create table api (id int primary key, name text)');
  // Answers only with the signed URL's token, or the API key.
  server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/sheet.csv' && url.searchParams.get('sig') === SIG) return void res.end('id,name\n1,one\n2,two\n');
    if (url.pathname === '/api' && url.searchParams.get('api_key') === KEY) return void res.end(JSON.stringify([{ id: 1, name: 'one' }]));
    res.writeHead(403).end('{}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

const config = (entities: boolean) => parseConfig({
  sources: { files: { kind: 'csv', location: base }, api: { kind: 'http', baseUrl: base } },
  entities: entities ? {
    sheet: { source: 'files', from: { file: `sheet.csv?sig=${SIG}` }, target: 'sheet', key: ['id'] },
    api: { source: 'api', from: { http: { path: 'api', params: { api_key: '${API_KEY}', page: 'all' } } }, target: 'api', key: ['id'] },
  } : {},
}, { API_KEY: KEY });

describe('secrets written in an entity', () => {
  it('are stored masked in sync.entity and its audit, and taken from the config file by each run', async () => {
    const cfg = config(true);
    await applyConfig(sync.pool, cfg);
    const stored = await sync.pool.query(`select definition::text as d from sync.entity union all select changes::text from sync.config_change`);
    expect(stored.rows.filter((r) => r.d.includes(SIG) || r.d.includes(KEY))).toEqual([]);
    const defs = await sync.pool.query(`select name, definition -> 'from' as f from sync.entity order by name`);
    expect(defs.rows).toEqual([
      { name: 'api', f: { http: expect.objectContaining({ params: { api_key: '***', page: 'all' } }) } },
      { name: 'sheet', f: { file: 'sheet.csv?sig=***' } },
    ]);
    expect(await diffConfig(sync.pool, cfg)).toEqual([]);
    const engine = new Engine(sync.pool, sync.url, cfg);
    try {
      expect(await engine.run('sheet', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', inserted: 2 });
      expect(await engine.run('api', { trigger: 'manual' })).toMatchObject({ status: 'succeeded', inserted: 1 });
    } finally {
      await engine.close();
    }
  });

  it('a process whose config lacks the entity cannot run it, and says why', async () => {
    const engine = new Engine(sync.pool, sync.url, config(false));
    try {
      const r = await engine.run('sheet', { trigger: 'manual' });
      expect(r.status).toBe('failed');
      expect(r.error).toMatch(/holds a secret that is not stored there.*config file defines the entity/);
    } finally {
      await engine.close();
    }
  });
});
