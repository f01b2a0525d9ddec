/**
 * Secrets stay secret (issue 10, rule 7): a config with a distinct canary in
 * every secret-bearing field, some from ${ENV} and some written in the file.
 * `config show`, the operator API, the logs of a worker that syncs an http
 * entity through a 500 and a same-origin 302, and of one whose vendor quotes
 * the credentials back in an error (at the most verbose level),
 * and every text column of the `sync` and `graphile_worker` schemas must
 * hold none of them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { maskSecrets, parseConfig } from '../src/config/load.js';
import { quoteIdent } from '../src/db/database.js';
import { maskUrls } from '../src/log.js';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { until } from './helpers/until.js';

const canary = (field: string) => `CANARY_${field}_${randomBytes(6).toString('hex')}`;

// Given through the environment (${NAME} in the file).
const ENV = {
  HTTP_TOKEN: canary('httpAuthQuery'),
  HTTP_HEADER: canary('httpHeaderEnv'),
  PG_PASSWORD: canary('postgresUserPassword'),
  CSV_SIG: canary('csvLocationSig'),
  SMTP_PASSWORD: canary('smtpPassword'),
  WEBHOOK_TOKEN: canary('webhookQueryToken'),
  API_TOKEN: canary('serverToken'),
  TENANT: canary('tenantValue'),
};

// Written literally in the file.
const LITERAL = {
  httpHeader: canary('httpHeaderLiteral'),
  pgQueryPassword: canary('postgresQueryPassword'),
  pgSslPassword: canary('postgresSslPassword'),
  csvHeader: canary('csvHeader'),
  csvFileSig: canary('csvFileSig'),
  webhookPath: canary('webhookPath'),
  webhookHeader: canary('webhookHeader'),
};

const ALL = [...Object.values(ENV), ...Object.values(LITERAL)];

// What sync.entity (and its audit, sync.config_change) holds by design: the
// entity's tenant value, which its merges scope by (data, not a credential;
// `config show` and the API still mask it). A signed csv URL's token is
// stored masked and taken from the config file at each run.
const ENTITY_DATA = new Set([ENV.TENANT]);
const ENTITY_COLUMNS = new Set(['sync.entity.tenant_value', 'sync.entity.definition', 'sync.config_change.changes']);

const RECORDS = [{ id: 1, name: 'alpha' }, { id: 2, name: 'beta' }, { id: 3, name: 'gamma' }];

let sync: TestDatabase;
let vendor: http.Server;
let vendorUrl = '';
const vendorHits: { path: string; query: URLSearchParams; headers: http.IncomingHttpHeaders; status: number }[] = [];
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-secrets-'));
const configFile = path.join(dir, 'syncline.config.json');

/** Which canaries `text` contains. */
const leaked = (text: string, canaries: readonly string[] = ALL) => canaries.filter((c) => text.includes(c));

function config() {
  return {
    server: { host: '127.0.0.1', port: 0, token: '${API_TOKEN}' },
    alerts: {
      email: { smtp: 'smtp://alerts:${SMTP_PASSWORD}@127.0.0.1:2525', from: 'syncline@example.com', to: ['ops@example.com'] },
      webhook: {
        url: `https://hooks.example.com/services/${LITERAL.webhookPath}?channel=ops&token=\${WEBHOOK_TOKEN}`,
        headers: { Authorization: `Bearer ${LITERAL.webhookHeader}` },
      },
    },
    sources: {
      shop: {
        kind: 'http', baseUrl: vendorUrl, timeoutMs: 5_000, retries: { max: 3, baseMs: 1, maxMs: 5 },
        auth: { query: { name: 'api_key', value: '${HTTP_TOKEN}' } },
        headers: { 'X-Api-Key': LITERAL.httpHeader, 'X-Shop-Token': '${HTTP_HEADER}' },
      },
      remote: {
        kind: 'postgres',
        url: `postgres://app:\${PG_PASSWORD}@127.0.0.1:1/app?sslmode=disable&password=${LITERAL.pgQueryPassword}&sslpassword=${LITERAL.pgSslPassword}`,
      },
      sheet: {
        kind: 'csv', location: 'https://sheets.example.com/pub?output=csv&sig=${CSV_SIG}',
        headers: { 'X-Sheet-Key': LITERAL.csvHeader },
      },
    },
    entities: {
      items: { source: 'shop', from: { http: { path: 'items' } }, target: 'items', key: ['id'] },
      // A run that fails on a vendor quoting the credentials back in its error.
      echo: { source: 'shop', from: { http: { path: 'echo' } }, target: 'echoes', key: ['id'], mode: 'upsert' },
      meters: {
        // Enabled: its run fails (nothing listens there), and the failure must not quote the URL's passwords.
        source: 'remote', from: { table: 'meters' }, target: 'meters', key: ['id'],
        tenant: { column: 'tenant', value: '${TENANT}' },
      },
      sellers: {
        source: 'sheet', from: { file: `https://files.example.com/sellers.csv?sig=${LITERAL.csvFileSig}` },
        target: 'sellers', key: ['id'], enabled: false,
      },
    },
  };
}

function env(): NodeJS.ProcessEnv {
  return {
    ...process.env, ...ENV, DATABASE_URL: sync.url, SYNCLINE_CONFIG: configFile,
    // The most verbose level there is: debug and everything above it.
    SYNCLINE_LOG_LEVEL: 'trace', SYNCLINE_LOG_FORMAT: 'json',
  };
}

/** Runs the CLI; asynchronously, so the vendor in this process can answer it meanwhile. */
async function cli(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => { out += String(d); });
  child.stderr.on('data', (d) => { err += String(d); });
  const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
  return { code, out, err };
}

/**
 * A vendor that fails every other request to /items with a 500 and
 * otherwise moves it (302) to /v2/items on the same origin, which answers
 * only with both credentials: the run goes through a retry and a redirect.
 */
function handle(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = new URL(req.url ?? '/', vendorUrl);
  const hit = { path: url.pathname, query: url.searchParams, headers: req.headers, status: 0 };
  vendorHits.push(hit);
  const answer = (status: number, body: string, headers: Record<string, string> = {}) => {
    hit.status = status;
    res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(body);
  };
  if (url.pathname === '/items') {
    const tries = vendorHits.filter((h) => h.path === '/items').length;
    if (tries % 2 === 1) return answer(500, JSON.stringify({ error: `try again, ${url.searchParams.get('api_key')}` }));
    return answer(302, '', { location: '/v2/items' });
  }
  if (url.pathname === '/v2/items') {
    const ok = url.searchParams.get('api_key') === ENV.HTTP_TOKEN && req.headers['x-api-key'] === LITERAL.httpHeader
      && req.headers['x-shop-token'] === ENV.HTTP_HEADER;
    return ok ? answer(200, JSON.stringify(RECORDS)) : answer(401, '{"error":"bad credentials"}');
  }
  if (url.pathname === '/echo') {
    const said = [url.searchParams.get('api_key'), req.headers['x-api-key'], req.headers['x-shop-token']].join(', ');
    return answer(400, JSON.stringify({ error: `bad request from ${said}` }));
  }
  answer(404, '{"error":"no such endpoint"}');
}

let worker: ChildProcess | undefined;
let workerOut = '';
let workerExit: Promise<number | null> | undefined;

beforeAll(async () => {
  sync = await testDatabase('secrets');
  await sync.pool.query(`create table items (id int primary key, name text);
    create table meters (id int primary key, tenant text, reading numeric);
    create table sellers (id int primary key, name text);
    create table echoes (id int primary key, name text)`);
  vendor = http.createServer(handle);
  await new Promise<void>((resolve) => vendor.listen(0, '127.0.0.1', resolve));
  vendorUrl = `http://127.0.0.1:${(vendor.address() as AddressInfo).port}`;
  writeFileSync(configFile, JSON.stringify(config(), null, 2));
});

afterAll(async () => {
  if (worker && worker.exitCode === null) {
    worker.kill('SIGTERM');
    await workerExit;
  }
  vendor?.closeAllConnections();
  await new Promise<void>((resolve) => (vendor ? vendor.close(() => resolve()) : resolve()));
});

describe('secrets', () => {
  it('config show prints none of them, and still shows what is not secret', async () => {
    const r = await cli(['config', 'show']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(leaked(r.out + r.err)).toEqual([]);
    const shown = JSON.parse(r.out);
    expect(shown.sources.shop.auth).toEqual({ query: { name: 'api_key', value: '***' } });
    expect(shown.sources.shop.headers).toEqual({ 'X-Api-Key': '***', 'X-Shop-Token': '***' });
    expect(shown.sources.remote.url).toBe('postgres://app:***@127.0.0.1:1/app?sslmode=disable&password=***&sslpassword=***');
    expect(shown.sources.sheet.location).toBe('https://sheets.example.com/pub?output=***&sig=***');
    expect(shown.entities.sellers.from.file).toBe('https://files.example.com/sellers.csv?sig=***');
    expect(shown.entities.meters.tenant).toEqual({ column: 'tenant', value: '***' });
    expect(shown.alerts.email.smtp).toBe('smtp://alerts:***@127.0.0.1:2525');
    expect(shown.alerts.webhook.url).toBe('https://hooks.example.com/***?channel=***&token=***');
    expect(shown.alerts.webhook.headers).toEqual({ Authorization: '***' });
    expect(shown.server.token).toBe('***');
    expect(shown.sources.shop.baseUrl).toBe(vendorUrl);
  });

  it('a worker syncs the http entity through a 500 and a same-origin redirect; its API, logs and tables hold none of them', async () => {
    worker = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'worker'], { env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
    worker.stdout!.on('data', (d) => { workerOut += String(d); });
    worker.stderr!.on('data', (d) => { workerOut += String(d); });
    workerExit = new Promise((resolve) => worker!.once('exit', (code) => resolve(code)));
    const api = await until('the worker\'s API to listen', async () => workerOut.match(/dashboard and API: (http:\/\/\S+)/)?.[1], 60_000);
    const ended = (entity: string) => until(`the ${entity} run to end`, async () => {
      const { rows } = await sync.pool.query(`select id::int, status, error from sync.run where entity = $1 and status <> 'running'`, [entity]);
      return rows[0] as { id: number; status: string; error: string | null } | undefined;
    }, 60_000);
    const run = await ended('items');
    expect(run, run.error ?? '').toMatchObject({ status: 'succeeded' });
    const meters = await ended('meters');
    expect(meters).toMatchObject({ status: 'failed', error: expect.stringMatching(/nothing listens at 127\.0\.0\.1:1/) });
    const echo = await ended('echo');
    expect(echo.status).toBe('failed');
    expect(echo.error).toMatch(/answered HTTP 400 Bad Request \(\{"error":"bad request from \*\*\*, \*\*\*, \*\*\*"\}\)/);
    expect((await sync.pool.query('select id, name from items order by id')).rows).toEqual(RECORDS);
    // The run went through the 500, the retry and the redirect, with both credentials all the way.
    expect(vendorHits.filter((h) => h.path !== '/echo').map((h) => `${h.path} ${h.status}`)).toEqual(['/items 500', '/items 302', '/v2/items 200']);

    const call = async (route: string, init: RequestInit = {}) => {
      const res = await fetch(new URL(route, api), {
        ...init, headers: { authorization: `Bearer ${ENV.API_TOKEN}`, 'content-type': 'application/json', ...init.headers },
      });
      return { route, status: res.status, text: await res.text() };
    };
    const answers = [
      await call('/api/sync/config'),
      await call('/api/sync/config/items', { method: 'PUT', body: JSON.stringify({ retry_limit: 4 }) }),
      await call('/api/sync/status'),
      await call('/api/sync/runs'),
      await call(`/api/sync/progress/${run.id}`),
      await call('/api/sync/trend'),
      await call('/api/health'),
      await call('/api/alerts'),
      await call('/metrics'),
    ];
    for (const a of answers) {
      expect(a.status, `${a.route}: ${a.text}`).toBeLessThan(300);
      expect(leaked(a.text), a.route).toEqual([]);
    }
    expect(JSON.parse(answers[0].text).entities.map((e: { entity: string }) => e.entity)).toEqual(['echo', 'items', 'meters', 'sellers']);

    worker.kill('SIGTERM');
    expect(await workerExit).toBe(0);
    expect(workerOut).toContain('"msg":"retrying HTTP request"'); // the debug-level log ran, and says what happened
    expect(leaked(workerOut)).toEqual([]);
  });

  it('a CLI sync logs none of them either', async () => {
    const r = await cli(['sync', 'items', '--verbose']);
    expect(r.code, r.out + r.err).toBe(0);
    expect(r.out).toMatch(/✓ items/);
    expect(leaked(r.out + r.err)).toEqual([]);
  });

  it('no text column of the sync and graphile_worker schemas holds one', async () => {
    const { rows: columns } = await sync.pool.query<{ schema: string; table: string; column: string }>(
      `select c.table_schema as schema, c.table_name as table, c.column_name as column
         from information_schema.columns c
         join information_schema.tables t on t.table_schema = c.table_schema and t.table_name = c.table_name
        where c.table_schema in ('sync', 'graphile_worker') and t.table_type = 'BASE TABLE'
          and c.data_type in ('text', 'character varying', 'character', 'json', 'jsonb', 'ARRAY')
        order by 1, 2, 3`);
    expect(columns.map((c) => `${c.schema}.${c.table}`)).toContain('sync.run');
    expect(columns.map((c) => `${c.schema}.${c.table}`)).toContain('graphile_worker._private_jobs');
    expect((await sync.pool.query('select count(*)::int as n from sync.run')).rows[0].n).toBeGreaterThanOrEqual(2);
    const found: string[] = [];
    for (const { schema, table, column } of columns) {
      const where = `${schema}.${table}.${column}`;
      const canaries = ENTITY_COLUMNS.has(where) ? ALL.filter((c) => !ENTITY_DATA.has(c)) : ALL;
      const { rows } = await sync.pool.query<{ canary: string }>(
        `select distinct c as canary from ${quoteIdent(schema)}.${quoteIdent(table)} t, unnest($1::text[]) c
          where strpos(t.${quoteIdent(column)}::text, c) > 0`, [canaries]);
      found.push(...rows.map((r) => `${where}: ${r.canary}`));
    }
    expect(found).toEqual([]);
  });
});

describe('masking rules', () => {
  const raw = {
    sources: {
      api: { kind: 'http', baseUrl: 'https://${SHOP}.example.com/${VERSION:-v2}', headers: { 'X-Region': '${REGION}' } },
      db: { kind: 'postgres', database: '${DB}' },
    },
    entities: {
      e: { source: 'db', from: { query: 'select * from t where region = \'${REGION}\'' }, target: 't', key: ['id'] },
    },
  };

  it('masks a value from the environment wherever it occurs, a short one only where it is the whole string, never a default from the file', () => {
    const shown = maskSecrets(parseConfig(raw, { SHOP: 'acme', REGION: 'eu', DB: 'sales' }));
    expect(shown.sources.api).toMatchObject({ baseUrl: 'https://***.example.com/v2', headers: { 'X-Region': '***' } });
    expect(shown.sources.db).toMatchObject({ database: '***' });
    expect(shown.entities.e.from).toEqual({ query: 'select * from t where region = \'eu\'' });
  });

  it('a config parsed without the environment keeps all but the fields known to hold secrets', () => {
    const cfg = parseConfig({ ...raw, sources: { ...raw.sources, api: { ...raw.sources.api, baseUrl: 'https://acme.example.com' } } },
      { SHOP: 'acme', REGION: 'eu', DB: 'sales' });
    const again = parseConfig(JSON.parse(JSON.stringify(cfg)), {});
    expect(maskSecrets(again).sources.api).toMatchObject({ baseUrl: 'https://acme.example.com', headers: { 'X-Region': '***' } });
    expect(maskSecrets(again).sources.db).toMatchObject({ database: 'sales' });
  });

  it('log messages lose the password of any URL and a postgres URL\'s password parameters', () => {
    expect(maskUrls('postgres://app:pw@db/app?sslmode=require&password=a&sslpassword=b&sslkey=/k is down; so is smtp://u:s3cret@mail:25'))
      .toBe('postgres://app:***@db/app?sslmode=require&password=***&sslpassword=***&sslkey=*** is down; so is smtp://u:***@mail:25');
  });
});
