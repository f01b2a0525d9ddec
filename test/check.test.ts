/**
 * `syncline check` catches what the first run would hit (issue 12, item 3):
 * each rule broken by one config, against real databases and a local API
 * that behaves as Directus does, through the CLI.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { testClient } from './http/clients.js';
import { CriticalError } from '../src/sources/http/errors.js';

let sync: TestDatabase;
let source: TestDatabase;
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-check-'));

/**
 * The CLI as a child process, awaited without blocking this process: the
 * local API below must answer while it runs.
 */
function cli(args: string[], config: unknown): Promise<{ code: number | null; out: string; err: string }> {
  const file = path.join(dir, `config-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(config));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
      env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: file, SYNCLINE_LOG_LEVEL: 'silent' },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out, err }));
  });
}

const check = (config: unknown) => cli(['check'], config);

/** Lines of a mark: '✓', '✗' or '!'. */
const marked = (out: string, mark: string) => out.split('\n').filter((l) => l.startsWith(`${mark} `));

// The meters entity as the issue has it, healthy: key meter_id fed by the source's id.
const meters = (over: Record<string, unknown> = {}) => ({
  source: 'src', from: { table: 'meters' }, target: 'metering.meters', key: ['meter_id'],
  columns: { meter_id: 'id', serial: 'serial', updated_at: 'updated_at' }, cursor: { column: 'updated_at' }, ...over,
});
const readings = (over: Record<string, unknown> = {}) => ({
  source: 'src', from: { table: 'readings' }, target: 'metering.readings', key: ['id'], dependsOn: ['meters'], ...over,
});
const pgConfig = (entities: Record<string, unknown>) => ({ sources: { src: { kind: 'postgres', url: source.url } }, entities });

beforeAll(async () => {
  ({ sync, source } = await testDatabases('check'));
  await source.pool.query(`
    create table meters (id int primary key, serial text, updated_at timestamptz not null, payload json, pos point);
    create table readings (id int primary key, meter_id int not null, value numeric);
    create table loose (id int, name text);
    insert into meters values (1, 'S-1', now(), '{}', point(1, 2));`);
  await sync.pool.query(`
    create schema metering;
    create table metering.meters (meter_id int primary key, serial text, updated_at timestamptz not null, payload json, pos point,
      label text generated always as ('meter ' || meter_id) stored);
    create table metering.readings (id int primary key, meter_id int not null references metering.meters (meter_id), value numeric);
    create table metering.loose (id int, name text);
    create table metering.composite (id int, name text, unique (id));`);
});

describe('check on postgres entities', () => {
  it('a healthy config gets every line ✓ and exits 0', async () => {
    const r = await check(pgConfig({ meters: meters(), readings: readings() }));
    expect(r.code, r.out + r.err).toBe(0);
    expect(marked(r.out, '✗')).toEqual([]);
    expect(marked(r.out, '!')).toEqual([]);
    expect(r.out).toMatch(/^✓ source src: .* reachable$/m);
    expect(r.out).toMatch(/^✓ entity meters: source yields 5 columns, target metering\.meters exists, key \(meter_id\) unique, cursor updated_at orderable/m);
    expect(r.out).toMatch(/^✓ entity readings: source yields 3 columns, target metering\.readings exists, key \(id\) unique/m);
  });

  it('a target table that does not exist is ✗, exit 1', async () => {
    const r = await check(pgConfig({ meters: meters({ target: 'metering.meterz' }) }));
    expect(r.out).toContain('✗ entity meters: target table metering.meterz does not exist — create it with your migrations');
    expect(r.out).not.toMatch(/^✓ entity meters/m);
    expect(r.code).toBe(1);
  });

  it('a key column the target lacks ("meter_idd") is ✗ with the name it probably means, exit 1', async () => {
    const r = await check(pgConfig({
      meters: meters({ key: ['meter_idd'], columns: { meter_idd: 'id', serial: 'serial', updated_at: 'updated_at' } }),
    }));
    expect(r.out).toContain('✗ entity meters: key column "meter_idd" is not a column of target metering.meters — '
      + 'did you mean "meter_id"? Correct entities.meters.key[0]');
    // Said once, not again as a mapped column.
    expect(r.out.match(/"meter_idd"/g)).toHaveLength(1);
    expect(r.code).toBe(1);
  });

  it('a mapped column the target lacks is ✗, exit 1', async () => {
    const r = await check(pgConfig({ meters: meters({ columns: { meter_id: 'id', serial_no: 'serial', updated_at: 'updated_at' } }) }));
    expect(r.out).toContain('✗ entity meters: mapped column "serial_no" is not a column of target metering.meters — '
      + 'did you mean "serial"? Correct entities.meters.columns.serial_no');
    expect(r.code).toBe(1);
  });

  it('a mapped column the target computes itself is ✗, exit 1', async () => {
    const r = await check(pgConfig({ meters: meters({ columns: { meter_id: 'id', label: 'serial', updated_at: 'updated_at' } }) }));
    expect(r.out).toContain('✗ entity meters: mapped column "label" of target metering.meters is generated, so a sync cannot write it');
    expect(r.code).toBe(1);
  });

  it('a source column the postgres source does not have is ✗, with what the source has, exit 1', async () => {
    const r = await check(pgConfig({ meters: meters({ columns: { meter_id: 'id', serial: 'serial_no', updated_at: 'updated_at' } }) }));
    expect(r.out).toContain('✗ entity meters: source column "serial_no" (for target column "serial") is not among the columns the source yields '
      + '(id, serial, updated_at, payload, pos) — did you mean "serial"? correct entities.meters.columns.serial, or the source\'s "from"');
    expect(r.code).toBe(1);
  });

  it('without "columns", the key must be among the source\'s columns too', async () => {
    const r = await check(pgConfig({ readings: readings({ from: { query: 'select meter_id, value from readings' }, dependsOn: [] }) }));
    expect(r.out).toMatch(/^✗ entity readings: source column "id" is not among the columns the source yields \(meter_id, value\) — correct entities\.readings\.key\[0\]/m);
    expect(r.code).toBe(1);
  });

  it('a key no primary key or unique index covers is ✗ with the index to add, exit 1', async () => {
    const r = await check(pgConfig({ loose: { source: 'src', from: { table: 'loose' }, target: 'metering.loose', key: ['id'] } }));
    expect(r.out).toContain('✗ entity loose: no primary key or unique index of target metering.loose covers the key (id), '
      + 'so nothing keeps a record from landing twice — add one with your migrations (create unique index on "metering"."loose" ("id")), '
      + 'or correct entities.loose.key');
    expect(r.code).toBe(1);
  });

  it('a unique index on part of the key covers it', async () => {
    const r = await check(pgConfig({ loose: { source: 'src', from: { table: 'loose' }, target: 'metering.composite', key: ['id', 'name'] } }));
    expect(r.out).toMatch(/^✓ entity loose: .*key \(id, name\) unique/m);
    expect(r.code, r.out).toBe(0);
  });

  it('a cursor column the target lacks is ✗, exit 1', async () => {
    const r = await check(pgConfig({
      meters: meters({ columns: { meter_id: 'id', serial: 'serial', updated: 'updated_at' }, cursor: { column: 'updated' } }),
    }));
    expect(r.out).toContain('✗ entity meters: cursor column "updated" is not a column of target metering.meters — did you mean "updated_at"? '
      + 'Correct entities.meters.cursor.column');
    expect(r.code).toBe(1);
  });

  it.each([['payload', 'json'], ['pos', 'point']])('a cursor column of a type with no order (%s, %s) is ✗, exit 1', async (column, type) => {
    const r = await check(pgConfig({
      meters: meters({ columns: { meter_id: 'id', serial: 'serial', [column]: column }, cursor: { column } }),
    }));
    expect(r.out).toContain(`✗ entity meters: cursor column "${column}" is of type ${type}, which has no order (max() is undefined for it) — `
      + 'point entities.meters.cursor.column at a timestamp, number or text column');
    expect(r.code).toBe(1);
  });

  it('a cursor column left out of "columns" is ✗, exit 1', async () => {
    const r = await check(pgConfig({ meters: meters({ columns: { meter_id: 'id', serial: 'serial' } }) }));
    expect(r.out).toContain('✗ entity meters: cursor column "updated_at" is not among the synced columns — add it to entities.meters.columns');
    expect(r.code).toBe(1);
  });

  it('a foreign key to another entity\'s target without dependsOn is a warning saying what to add; the exit code stays 0', async () => {
    const r = await check(pgConfig({ meters: meters(), readings: readings({ dependsOn: [] }) }));
    expect(r.out).toMatch(/^✓ entity readings: /m);
    expect(marked(r.out, '!')).toEqual(['! entity readings: target metering.readings references metering.meters by readings_meter_id_fkey '
      + '(filled by entity meters), but dependsOn does not list meters — set entities.readings.dependsOn to ["meters"] (or "auto"), '
      + 'else a run may load readings before meters']);
    expect(marked(r.out, '✗')).toEqual([]);
    expect(r.code).toBe(0);
  });

  it.each([['"auto"', 'auto'], ['the right list', ['meters']]])('with dependsOn %s the foreign key needs nothing more', async (_, dependsOn) => {
    const r = await check(pgConfig({ meters: meters(), readings: readings({ dependsOn }) }));
    expect(marked(r.out, '!')).toEqual([]);
    expect(r.code, r.out + r.err).toBe(0);
  });
});

/**
 * A Directus-like API: GET /items/products?fields=…&offset=&limit= →
 * {"data": […]}. A literal "{{" in a parameter is a 500 (Directus fails to
 * parse such a filter); a field it does not know is a 403, as Directus
 * answers for a field that does not exist.
 */
class Directus {
  readonly queries: URLSearchParams[] = [];
  readonly records = [1, 2, 3].map((id) => ({ id, name: `p${id}`, date_updated: `2026-01-0${id}T00:00:00Z` }));
  /** Collections the token may not read: a plain 403, as Directus sends for a missing permission. */
  readonly forbidden = new Set<string>();
  private server = http.createServer((req, res) => this.answer(req, res));

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private answer(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    this.queries.push(url.searchParams);
    const send = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    if ([...url.searchParams.values()].some((v) => v.includes('{{'))) {
      return send(500, { errors: [{ message: 'An unexpected error occurred.', extensions: { code: 'INTERNAL_SERVER_ERROR' } }] });
    }
    if (this.forbidden.has(url.pathname)) {
      return send(403, { errors: [{ message: 'You don\'t have permission to access this.', extensions: { code: 'FORBIDDEN' } }] });
    }
    const unknown = (url.searchParams.get('fields') ?? '').split(',').find((f) => f && !(f in this.records[0]));
    if (unknown) {
      return send(403, { errors: [{ message: `You don't have permission to access field "${unknown}" in collection "products" or it does not exist.`,
        extensions: { code: 'FORBIDDEN' } }] });
    }
    const offset = Number(url.searchParams.get('offset') ?? 0);
    const limit = Number(url.searchParams.get('limit') ?? 100);
    send(200, { data: this.records.slice(offset, offset + limit) });
  }
}

describe('check on an http entity', () => {
  const api = new Directus();
  let baseUrl = '';
  const httpConfig = (params: Record<string, string>) => ({
    sources: { api: { kind: 'http', baseUrl, auth: { bearer: 'static-token' }, retries: { max: 1, baseMs: 5, maxMs: 10 } } },
    entities: {
      products: {
        source: 'api', target: 'products', key: ['id'], cursor: { column: 'date_updated' },
        from: { http: { path: 'items/products', recordsPath: 'data', pagination: { style: 'offset', limit: 2 }, params } },
      },
    },
  });

  beforeAll(async () => {
    baseUrl = await api.start();
    await sync.pool.query('create table products (id int primary key, name text, date_updated timestamptz)');
  });
  afterAll(() => api.close());

  it('sends the first request as the first run does: {{cursor}} rendered (a param that is only {{cursor}} left out)', async () => {
    api.queries.length = 0;
    const r = await check(httpConfig({ fields: 'id,name,date_updated', 'filter[date_updated][_gt]': '{{cursor}}', sort: 'date_updated' }));
    expect(r.code, r.out + r.err).toBe(0);
    expect(r.out).toMatch(/^✓ entity products: source yields 3 columns, target public\.products exists, key \(id\) unique, cursor date_updated orderable/m);
    expect(api.queries.length).toBeGreaterThanOrEqual(1);
    expect(api.queries.every((q) => ![...q.values()].some((v) => v.includes('{{')))).toBe(true);
    expect(Object.fromEntries(api.queries[0])).toEqual({ fields: 'id,name,date_updated', sort: 'date_updated', offset: '0', limit: '2' });
  });

  it('a 403 for a field the API does not know is reported as such, not as an auth problem', async () => {
    const r = await check(httpConfig({ fields: 'id,name,colour' }));
    const [line] = marked(r.out, '✗');
    expect(line).toMatch(/^✗ entity products: the source cannot be read: GET .* answered HTTP 403 .*field \\?"colour\\?".* — this is not an auth problem: check the field names/);
    expect(line).not.toContain('check the token');
    expect(r.out + r.err).not.toContain('static-token');
    expect(r.code).toBe(1);
  });

  it('the client classes a 403 about an unknown field as a request to fix, a plain 403 still as auth', async () => {
    const refusal = (params: Record<string, string>) => testClient(baseUrl, { auth: { bearer: 'static-token' } })
      .getJson('items/products', params).then(() => null, (err: unknown) => err as CriticalError);
    const field = await refusal({ fields: 'id,colour' });
    expect(field).toBeInstanceOf(CriticalError);
    expect(field).toMatchObject({ category: 'validation', status: 403 });
    expect(field!.message).toContain('this is not an auth problem');
    api.forbidden.add('/items/products');
    const plain = await refusal({});
    api.forbidden.clear();
    expect(plain).toMatchObject({ category: 'auth', status: 403 });
    expect(plain!.message).toContain('check the token in sources.shop.auth');
  });
});
