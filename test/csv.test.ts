import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { parseConfig } from '../src/config/load.js';
import { applyConfig } from '../src/config/apply.js';
import { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let engine: Engine;
let server: http.Server;
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-csv-'));
let sheet = '';

const write = (file: string, text: string, encoding: BufferEncoding = 'utf8') => writeFileSync(path.join(dir, file), text, encoding);
const sellers = async () => (await sync.pool.query(
  `select seller_number, name, commission::text, joined_at, active from sellers order by seller_number`)).rows;

beforeAll(async () => {
  sync = await testDatabase('csv');
  await sync.pool.query(`create table sellers (seller_number text primary key, name text not null, commission numeric(5,2),
    joined_at timestamptz, active boolean, region text)`);
  server = http.createServer((_req, res) => { res.setHeader('content-type', 'text/csv'); res.end(sheet); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  const cfg = parseConfig({
    sources: {
      files: { kind: 'csv', location: dir, timeZone: 'Europe/Berlin' },
      latin: { kind: 'csv', location: dir, delimiter: ';', encoding: 'windows-1252' },
      sheet: { kind: 'csv', location: `http://127.0.0.1:${port}/export` },
    },
    entities: {
      sellers: { source: 'files', from: { file: 'sellers.csv' }, target: 'sellers', key: ['seller_number'] },
      sellers_latin: { source: 'latin', from: { file: 'latin.csv' }, target: 'sellers', key: ['seller_number'], mode: 'upsert',
        columns: { seller_number: 'Nr', name: 'Verkäufer' } },
      sellers_sheet: { source: 'sheet', from: { file: '?format=csv&gid=0' }, target: 'sellers', key: ['seller_number'], mode: 'upsert' },
    },
  }, {});
  await applyConfig(sync.pool, cfg);
  engine = new Engine(sync.pool, sync.url, cfg, dir);
});
afterAll(async () => {
  await engine.close();
  await new Promise((r) => server.close(r));
});

describe('a csv source', () => {
  it('loads a sheet: BOM, headers matched by name, quoted commas and newlines, local times in the source time zone', async () => {
    write('sellers.csv', '\uFEFFSeller Number,Name,Commission,Joined At,Active\n'
      + 'S-001,"Smith, Anna",12.5,2024-03-01 09:30,true\n'
      + 'S-002,"Two\nLines",7,2024-03-01T09:30:00+00:00,false\n');
    const r = await engine.run('sellers', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', fetched: 2, inserted: 2 });
    const rows = await sellers();
    expect(rows.map((x) => [x.seller_number, x.name, x.commission, x.active])).toEqual([
      ['S-001', 'Smith, Anna', '12.50', true], ['S-002', 'Two\nLines', '7.00', false]]);
    // 09:30 in Berlin (UTC+1 in March) is 08:30 UTC; an explicit offset is kept.
    expect(rows.map((x) => x.joined_at.toISOString())).toEqual(['2024-03-01T08:30:00.000Z', '2024-03-01T09:30:00.000Z']);
  });

  it('quarantines a malformed line with its line number and a bad value with its column, loads the rest', async () => {
    write('sellers.csv', 'Seller Number,Name,Commission,Joined At,Active\n'
      + 'S-001,"Smith, Anna",12.5,2024-03-01 09:30,true\n'
      + 'S-002,Bob,seven,2024-03-01 09:30,false\n'
      + 'S-003,Carol,3,2024-03-02 10:00,true,unexpected\n'
      + 'S-004,Dan,4,2024-03-02 10:00,maybe\n'
      + 'S-005,Eve,5,,true\n');
    const r = await engine.run('sellers', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'partial', quarantined: 3, inserted: 1 });
    expect(r.fetched).toBe((r.inserted ?? 0) + (r.updated ?? 0) + (r.unchanged ?? 0) + (r.quarantined ?? 0));
    const errors = (await sync.pool.query('select key, message from sync.run_error where run_id = $1 order by message', [r.runId])).rows;
    expect(errors).toEqual([
      { key: ['S-002'], message: 'line 3, column commission: invalid input syntax for type numeric: "seven"' },
      { key: null, message: 'line 4: Invalid Record Length: expect 5, got 6 on line 4' },
      { key: ['S-004'], message: 'line 5, column active: invalid input syntax for type boolean: "maybe"' },
    ]);
    // Mirror: S-002's bad value is no deletion, its row stays (S-004 was never loaded); S-003's line
    // could not be read at all, so nothing identifies a row to keep.
    expect((await sellers()).map((x) => x.seller_number)).toEqual(['S-001', 'S-002', 'S-005']);
  });

  it('reads another encoding and delimiter, with an explicit header mapping', async () => {
    write('latin.csv', 'Nr;Verkäufer\nS-010;Jürgen Müller\n', 'latin1');
    const r = await engine.run('sellers_latin', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', inserted: 1 });
    expect((await sync.pool.query(`select name from sellers where seller_number = 'S-010'`)).rows[0].name).toBe('Jürgen Müller');
  });

  it('fetches a published sheet over HTTP', async () => {
    sheet = 'seller_number,name\nS-020,From the sheet\n';
    const r = await engine.run('sellers_sheet', { trigger: 'manual' });
    expect(r).toMatchObject({ status: 'succeeded', inserted: 1 });
  });

  it('says what to fix when the file is missing or a key header is absent', async () => {
    write('latin.csv', 'Nummer;Verkäufer\nS-010;X\n', 'latin1');
    const r = await engine.run('sellers_latin', { trigger: 'manual' });
    expect(r.status).toBe('failed');
    expect(r.error).toMatch(/latin.csv has no header for "seller_number" — its headers are: Nummer, Verkäufer/);
  });
});
