/**
 * The operator API over real HTTP, against a real database with a running
 * worker: auth, every route, manual runs to completion, one run an entity,
 * cancel, config through the database's own validation, alerts, metrics.
 */
import { until as waitFor } from './helpers/until.js';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { makePool, type Pool } from '../src/db/pool.js';
import { Engine } from '../src/engine/run.js';
import { startWorker, type WorkerHandle } from '../src/worker/worker.js';
import { startServer, type RunningServer } from '../src/server/server.js';
import { freePort } from '../src/db/embedded.js';

type Family = { name: string; type: string; metrics: { value: string; labels?: Record<string, string> }[] };
const parsePrometheus = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => Family[];

const TOKEN = 'test-token-0123456789abcdef';
const ODD = 'Parents/ß "odd"';

let sync: TestDatabase;
let source: TestDatabase;
let workerEngine: Engine;
let handle: WorkerHandle;
let workerStopped = false;
let apiPool: Pool;
let apiEngine: Engine;
let server: RunningServer;

const ENTITIES = {
  parents: { source: 'src', from: { table: 'parents' }, target: 'parents', key: ['id'] },
  children: { source: 'src', from: { table: 'children' }, target: 'children', key: ['id'], dependsOn: ['parents'] },
  // pg_sleep per row: a fetch that runs long enough to be cancelled.
  // Rows of 3 kB: the server flushes COPY output every 8 kB, so progress shows every few rows.
  slow: { source: 'src', from: { query: `select id, rpad(name, 3000, '.') as name from parents where pg_sleep(0.2) is not null` },
    target: 'slow_items', key: ['id'] },
  broken: { source: 'src', from: { table: 'missing_table' }, target: 'parents', key: ['id'], mode: 'upsert' },
  [ODD]: { source: 'src', from: { table: 'parents' }, target: 'parents', key: ['id'], mode: 'upsert', enabled: false },
};

const until = <T>(what: string, fn: () => Promise<T | null | undefined | false>) => waitFor(what, fn, 60_000);

interface Answer {
  status: number;
  headers: Headers;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  text: string;
}

async function call(path: string, opts: { method?: string; body?: unknown; token?: string | null; headers?: Record<string, string>; base?: string } = {}): Promise<Answer> {
  const token = opts.token === undefined ? TOKEN : opts.token;
  const res = await fetch(new URL(path, opts.base ?? server.url), {
    method: opts.method ?? 'GET',
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...opts.headers,
    },
    body: opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body),
  });
  const text = await res.text();
  let body: unknown = null;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, body, text };
}

const progressOf = async (runId: number) => (await call(`/api/sync/progress/${runId}`)).body;
const finished = (runId: number) => until(`run ${runId} to end`, async () => {
  const p = await progressOf(runId);
  return p.status !== 'running' && p;
});

beforeAll(async () => {
  ({ sync, source } = await testDatabases('server'));
  const ddl = `create table parents (id int primary key, name text);
    create table children (id int primary key, parent_id int references parents, name text)`;
  await source.pool.query(`${ddl}; insert into parents select i, 'p' || i from generate_series(1, 500) i;
    insert into children select i, 1 + i % 500, 'c' || i from generate_series(1, 800) i; analyze parents`);
  await sync.pool.query(`${ddl}; create table slow_items (id int primary key, name text)`);
  workerEngine = await engineFor(sync, source, ENTITIES);
  handle = await startWorker(workerEngine, { concurrency: 1 });
  // The server has its own pool, as beside the worker in `npm start`.
  apiPool = makePool(sync.url, { max: 8 });
  apiEngine = new Engine(apiPool, sync.url, workerEngine.config);
  server = await startServer({ engine: apiEngine, host: '127.0.0.1', port: 0, token: TOKEN, worker: handle });
});

afterAll(async () => {
  await server?.close();
  if (!workerStopped) await handle?.stop();
  await apiEngine?.close();
  await apiPool?.end();
  await workerEngine?.close();
});

describe('auth', () => {
  it('refuses /api and /metrics without the token, with a wrong one and with a malformed header, saying what to send', async () => {
    for (const path of ['/api/sync/status', '/api/health', '/metrics', '/api/alerts']) {
      const none = await call(path, { token: null });
      expect(none.status, path).toBe(401);
      expect(none.body.error).toBe('this route needs the API token');
      expect(none.body.hint).toMatch(/Authorization: Bearer <token>/);
      expect(none.headers.get('www-authenticate')).toBe('Bearer realm="syncline"');
    }
    const wrong = await call('/api/sync/status', { token: 'not-the-token-at-all-123' });
    expect(wrong.status).toBe(401);
    expect(wrong.body.error).toBe('the API token was refused');
    const basic = await call('/api/sync/status', { token: null, headers: { authorization: 'Basic dXNlcjpwdw==' } });
    expect(basic.status).toBe(401);
    expect(basic.body.error).toMatch(/not "Bearer <token>"/);
    const post = await call('/api/sync/manual', { method: 'POST', body: { entity: 'parents' }, token: 'nope-nope-nope-nope' });
    expect(post.status).toBe(401);
    expect((await sync.pool.query(`select count(*)::int as n from sync.run`)).rows[0].n).toBe(0);
  });

  it('serves the dashboard page without the token, with a policy that allows only its own scripts', async () => {
    const page = await call('/', { token: null });
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/text\/html/);
    expect(page.headers.get('content-security-policy')).toMatch(/script-src 'self'/);
    expect(page.text).toContain('<script type="module" src="/app.js">');
    const chart = await call('/vendor/uplot.esm.js', { token: null });
    expect(chart.status).toBe(200);
    expect(chart.text).toContain('export { uPlot as default }');
  });
});

describe('errors', () => {
  it('an unknown route is a JSON 404, a wrong method a 405 naming the allowed one', async () => {
    const missing = await call('/api/nothing-here');
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ error: 'no route GET /api/nothing-here' });
    const method = await call('/api/sync/manual');
    expect(method.status).toBe(405);
    expect(method.body.hint).toBe('use POST');
  });

  it('a bad body is a 400 that says what is wrong', async () => {
    const empty = await call('/api/sync/manual', { method: 'POST', body: {} });
    expect(empty.status).toBe(400);
    expect(empty.body.error).toMatch(/give exactly one of "entity": "name", "entities": \["a", "b"\] or "all": true/);
    const bad = await call('/api/sync/manual', { method: 'POST', body: '{"entity": ' });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toMatch(/^the body is not valid JSON/);
    const extra = await call('/api/sync/manual', { method: 'POST', body: { entity: 'parents', force: true } });
    expect(extra.status).toBe(400);
    expect(extra.body.error).toMatch(/unknown field "force"/);
    const type = await call('/api/sync/manual', { method: 'POST', body: '{}', headers: { 'content-type': 'text/plain' } });
    expect(type.status).toBe(415);
    const unknown = await call('/api/sync/manual', { method: 'POST', body: { entity: 'nope' } });
    expect(unknown.status).toBe(404);
    expect(unknown.body).toMatchObject({ error: 'unknown entity "nope"' });
    expect(unknown.body.hint).toMatch(/sync.entity has: .*broken, children, parents, slow/);
  });
});

describe('health', () => {
  it('is 200 with the database reachable and the worker of this process running', async () => {
    const r = await call('/api/health');
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ status: 'ready', database: { ok: true }, worker: { ok: true, how: 'in-process' } });
  });

  it('is 503 when no worker has run sync_tick, and when the database is unreachable', async () => {
    const alone = await startServer({ engine: apiEngine, host: '127.0.0.1', port: 0, token: TOKEN });
    try {
      const r = await call('/api/health', { base: alone.url });
      expect(r.status).toBe(503);
      expect(r.body).toMatchObject({ status: 'unavailable', database: { ok: true }, worker: { ok: false, error: 'no worker has run sync_tick yet' } });
      expect(r.body.worker.hint).toMatch(/npm start/);
    } finally {
      await alone.close();
    }
    const deadPool = makePool(`postgres://nobody@127.0.0.1:${await freePort()}/nothing`, { max: 1 });
    const deadEngine = new Engine(deadPool, 'postgres://nobody@127.0.0.1:1/nothing', workerEngine.config);
    const dead = await startServer({ engine: deadEngine, host: '127.0.0.1', port: 0, token: TOKEN });
    try {
      const r = await call('/api/health', { base: dead.url });
      expect(r.status).toBe(503);
      expect(r.body.database).toMatchObject({ ok: false, hint: 'check that PostgreSQL runs and DATABASE_URL points at it' });
      expect(r.body.database.error).toMatch(/^the database is not reachable/);
      const live = await call('/api/health?probe=live', { base: dead.url });
      expect(live.status).toBe(200);
      const status = await call('/api/sync/status', { base: dead.url });
      expect(status.status).toBe(503);
      expect(status.body.error).toMatch(/^the database is not reachable/);
    } finally {
      await dead.close();
      await deadEngine.close();
      await deadPool.end();
    }
  });
});

describe('manual sync', () => {
  it('answers 202 with the run id, and the run completes', async () => {
    const r = await call('/api/sync/manual', { method: 'POST', body: { entity: 'parents' } });
    expect(r.status).toBe(202);
    expect(r.body).toMatchObject({ entity: 'parents', state: 'started', dryRun: false });
    expect(r.body.runId).toEqual(expect.any(Number));
    expect(r.headers.get('location')).toBe(`/api/sync/progress/${r.body.runId}`);
    const p = await finished(r.body.runId);
    expect(p).toMatchObject({ status: 'succeeded', phase: 'done', percent: 100, trigger: 'api', rows: 500 });
    expect(p.counts).toMatchObject({ fetched: 500, inserted: 500, quarantined: 0 });
    expect((await sync.pool.query('select count(*)::int as n from parents')).rows[0].n).toBe(500);
  });

  it('a dry run writes nothing', async () => {
    await source.pool.query(`update parents set name = 'changed' where id <= 3`);
    const r = await call('/api/sync/manual', { method: 'POST', body: { entity: 'parents', dryRun: true } });
    expect(r.status).toBe(202);
    const p = await finished(r.body.runId);
    expect(p).toMatchObject({ status: 'succeeded', dryRun: true, counts: { updated: 3 } });
    expect((await sync.pool.query(`select count(*)::int as n from parents where name = 'changed'`)).rows[0].n).toBe(0);
  });

  it('runs a list in dependency order and answers with the runs that have started', async () => {
    const r = await call('/api/sync/manual', { method: 'POST', body: { entities: ['children', 'parents'] } });
    expect(r.status).toBe(202);
    expect(r.body.runs.map((x: { entity: string }) => x.entity)).toEqual(['parents', 'children']);
    expect(r.body.runs[0]).toMatchObject({ entity: 'parents', state: 'started', runId: expect.any(Number) });
    const runs = await until('both runs', async () => {
      const { rows } = await sync.pool.query(
        `select entity, status from sync.run where trigger = 'api' and id >= $1 and not dry_run order by id`, [r.body.runs[0].runId]);
      return rows.length === 2 && rows.every((x) => x.status !== 'running') && rows;
    });
    expect(runs).toEqual([{ entity: 'parents', status: 'succeeded' }, { entity: 'children', status: 'succeeded' }]);
    expect((await sync.pool.query('select count(*)::int as n from children')).rows[0].n).toBe(800);
  });

  it('a second request while the entity runs returns that run; cancel ends it cancelled with nothing merged', async () => {
    const first = await call('/api/sync/manual', { method: 'POST', body: { entity: 'slow' } });
    expect(first.status).toBe(202);
    const runId = first.body.runId;
    await until('rows fetched', async () => (await progressOf(runId)).rows > 0);
    const second = await call('/api/sync/manual', { method: 'POST', body: { entity: 'slow' } });
    expect(second.status).toBe(200);
    expect(second.body).toMatchObject({ entity: 'slow', runId, state: 'already-running' });
    const viaList = await call('/api/sync/manual', { method: 'POST', body: { entities: ['slow'] } });
    expect(viaList.body.runs).toEqual([{ entity: 'slow', runId, state: 'already-running' }]);
    const running = await progressOf(runId);
    expect(running).toMatchObject({ status: 'running', phase: 'fetch', totalEstimated: false });

    const cancel = await call(`/api/sync/cancel/${runId}`, { method: 'POST' });
    expect(cancel.status).toBe(202);
    expect(cancel.body).toMatchObject({ runId, entity: 'slow', cancelRequested: true });
    const p = await finished(runId);
    expect(p).toMatchObject({ status: 'cancelled', error: 'cancelled on request (sync.cancel)', cancelRequested: true });
    expect(p.rows).toBeLessThan(500);
    expect((await sync.pool.query('select count(*)::int as n from slow_items')).rows[0].n).toBe(0);
    expect((await sync.pool.query('select count(*)::int as n from sync.run_change where run_id = $1', [runId])).rows[0].n).toBe(0);

    const again = await call(`/api/sync/cancel/${runId}`, { method: 'POST' });
    expect(again.status).toBe(409);
    expect(again.body.error).toBe(`run ${runId} of slow is not running (it ended cancelled); nothing to cancel`);
    expect((await call('/api/sync/cancel/999999', { method: 'POST' })).status).toBe(404);
    expect((await call('/api/sync/cancel/abc', { method: 'POST' })).body.error).toBe('run id "abc" is not a positive whole number');
  });

  it('streams progress as server-sent events with a ticket, ending with the final state', async () => {
    const start = await call('/api/sync/manual', { method: 'POST', body: { entity: 'slow' } });
    const runId = start.body.runId;
    const unauth = await call(`/api/sync/progress/${runId}`, { token: null, headers: { accept: 'text/event-stream' } });
    expect(unauth.status).toBe(401);
    const other = (await call(`/api/sync/progress/${runId - 1}/ticket`, { method: 'POST' })).body.ticket;
    const wrongRun = await call(`/api/sync/progress/${runId}?ticket=${encodeURIComponent(other)}`, { token: null });
    expect(wrongRun.status).toBe(401);
    expect(wrongRun.body.error).toBe(`the ticket is not valid for run ${runId}`);

    const t = await call(`/api/sync/progress/${runId}/ticket`, { method: 'POST' });
    expect(t.body).toMatchObject({ validSeconds: 60, url: expect.stringMatching(new RegExp(`^/api/sync/progress/${runId}\\?ticket=`)) });
    const res = await fetch(new URL(t.body.url, server.url), { headers: { accept: 'text/event-stream' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const events: { event: string; data: { status: string; rows: number; runId: number } }[] = [];
    const decoder = new TextDecoder();
    let buffer = '';
    let cancelled = false;
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let i;
      while ((i = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, i);
        buffer = buffer.slice(i + 2);
        const event = /^event: (.+)$/m.exec(block)?.[1];
        const data = /^data: (.+)$/m.exec(block)?.[1];
        if (event && data) events.push({ event, data: JSON.parse(data) });
      }
      if (!cancelled && events.some((e) => e.event === 'progress' && e.data.rows > 0)) {
        cancelled = true;
        expect((await call(`/api/sync/cancel/${runId}`, { method: 'POST' })).status).toBe(202);
      }
    }
    expect(events[0]).toMatchObject({ event: 'progress', data: { runId, status: 'running' } });
    expect(events.at(-1)).toMatchObject({ event: 'end', data: { runId, status: 'cancelled' } });
    expect(events.filter((e) => e.event === 'end')).toHaveLength(1);
  });
});

describe('runs this server did not start', () => {
  it('a request for an entity the worker is running returns the worker\'s run, which cancel stops', async () => {
    await sync.pool.query(`select sync.request('slow')`);
    const runId = await until('the worker\'s run', async () => (await sync.pool.query(
      `select id::float8 as id from sync.run where entity = 'slow' and status = 'running' and trigger = 'manual'`)).rows[0]?.id);
    const r = await call('/api/sync/manual', { method: 'POST', body: { entity: 'slow' } });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ entity: 'slow', runId, state: 'already-running' });
    expect((await call(`/api/sync/cancel/${runId}`, { method: 'POST' })).status).toBe(202);
    expect(await finished(runId)).toMatchObject({ status: 'cancelled', trigger: 'manual' });
    expect((await sync.pool.query('select count(*)::int as n from slow_items')).rows[0].n).toBe(0);
  });
});

describe('status', () => {
  it('lists every entity from sync.status with its rates', async () => {
    const r = await call('/api/sync/status');
    expect(r.status).toBe(200);
    const parents = r.body.entities.find((e: { entity: string }) => e.entity === 'parents');
    expect(parents).toMatchObject({ state: 'ok', last_status: 'succeeded', success_rate_24h: 100, open_gaps: 0, progress: null });
    expect(parents.runs_24h).toBeGreaterThanOrEqual(2);
    expect(r.body.entities.find((e: { entity: string }) => e.entity === 'slow')).toMatchObject({ state: 'cancelled', last_status: 'cancelled' });
  });

  it('lists runs newest first and the trend with a bucket for every hour', async () => {
    const runs = await call('/api/sync/runs?entity=parents&limit=2');
    expect(runs.body.runs).toHaveLength(2);
    expect(runs.body.runs[0].id).toBeGreaterThan(runs.body.runs[1].id);
    expect((await call('/api/sync/runs?limit=0')).status).toBe(400);
    const trend = await call('/api/sync/trend?granularity=hour&entity=parents');
    expect(trend.body.buckets).toHaveLength(48);
    expect(trend.body.buckets.at(-1).runs).toBeGreaterThanOrEqual(2);
    expect((await call('/api/sync/trend?granularity=week')).status).toBe(400);
  });

  it('gives the trend by the minute for two hours, from sync.run, and when the runs begin (firstRunAt)', async () => {
    const trend = await call('/api/sync/trend?granularity=minute&entity=parents');
    expect(trend.status).toBe(200);
    expect(trend.body).toMatchObject({ granularity: 'minute', entity: 'parents' });
    const times = trend.body.buckets.map((b: { bucket: string }) => Date.parse(b.bucket));
    expect(times).toHaveLength(120);
    expect(times.slice(1).every((t: number, i: number) => t - times[i] === 60_000)).toBe(true);
    // Every run of this file is minutes old: all of them are in the window, each in the minute it started.
    const { rows: [db] } = await sync.pool.query<{ first: Date; runs: number; minutes: number }>(
      `select min(started_at) as first, count(*)::int as runs, count(distinct date_trunc('minute', started_at))::int as minutes
         from sync.run where entity = 'parents' and not dry_run and finished_at is not null`);
    const runs = trend.body.buckets.map((b: { runs: number }) => b.runs);
    expect(runs.reduce((a: number, b: number) => a + b, 0)).toBe(db.runs);
    expect(runs.filter((n: number) => n > 0)).toHaveLength(db.minutes);
    expect(new Date(trend.body.firstRunAt)).toEqual(db.first);
    expect(Date.parse(trend.body.firstRunAt)).toBeGreaterThanOrEqual(times[0]);
    // firstRunAt is in every granularity's answer; null for an entity that never ran.
    expect((await call('/api/sync/trend?granularity=day')).body.firstRunAt).toEqual(expect.any(String));
    const never = await call(`/api/sync/trend?granularity=minute&entity=${encodeURIComponent(ODD)}`);
    expect(never.body.firstRunAt).toBeNull();
    expect(never.body.buckets.every((b: { runs: number }) => b.runs === 0)).toBe(true);
  });
});

describe('config', () => {
  it('lists the tunables with intervals as people write them', async () => {
    const r = await call('/api/sync/config');
    const parents = r.body.entities.find((e: { entity: string }) => e.entity === 'parents');
    expect(parents).toMatchObject({ retry_delay: '5 minutes', failure_threshold: 3, throughput_factor: 3, verify: true, enabled: true, sync_interval: null });
  });

  it('applies a change through UPDATE, audited as the API', async () => {
    const r = await call('/api/sync/config/parents', { method: 'PUT', body: { failure_threshold: 5, sync_interval: '15 minutes' } });
    expect(r.status).toBe(200);
    expect(r.body.changed.sort()).toEqual(['failure_threshold', 'sync_interval']);
    expect(r.body.entity).toMatchObject({ failure_threshold: 5, sync_interval: '15 minutes' });
    const { rows } = await sync.pool.query(`select failure_threshold, sync_interval::text from sync.entity where name = 'parents'`);
    expect(rows[0]).toEqual({ failure_threshold: 5, sync_interval: '00:15:00' });
    const audit = await sync.pool.query(`select application, changes from sync.config_change where entity = 'parents' order by id desc limit 1`);
    expect(audit.rows[0]).toMatchObject({ application: 'syncline api', changes: { failure_threshold: { old: 3, new: 5 } } });
    const odd = await call(`/api/sync/config/${encodeURIComponent(ODD)}`, { method: 'PUT', body: { retry_limit: '7' } });
    expect(odd.status).toBe(200);
    expect(odd.body.entity).toMatchObject({ entity: ODD, retry_limit: 7 });
  });

  it('refuses what the database refuses, with its message, hint and the field', async () => {
    const zero = await call('/api/sync/config/parents', { method: 'PUT', body: { failure_threshold: 0 } });
    expect(zero.status).toBe(400);
    expect(zero.body).toEqual({
      error: 'entity parents: failure_threshold 0 is not between 1 and 100',
      hint: 'the number of failed runs in a row that raises an alert, e.g. 3', field: 'failure_threshold',
    });
    const both = await call('/api/sync/config/parents', { method: 'PUT', body: { schedule: '*/5 * * * *' } });
    expect(both.status).toBe(400);
    expect(both.body).toMatchObject({ error: 'entity parents: set schedule or sync_interval, not both', field: 'schedule' });
    const short = await call('/api/sync/config/parents', { method: 'PUT', body: { retry_delay: '2 seconds' } });
    expect(short.body).toMatchObject({ error: 'entity parents: retry_delay 00:00:02 is below the minimum of 10 seconds', field: 'retry_delay' });
    const words = await call('/api/sync/config/parents', { method: 'PUT', body: { freshness: 'soonish' } });
    expect(words.status).toBe(400);
    expect(words.body).toMatchObject({ error: 'freshness: "soonish" is not an interval', field: 'freshness' });
    const type = await call('/api/sync/config/parents', { method: 'PUT', body: { retry_limit: 'many' } });
    expect(type.body).toEqual({ error: 'PUT /api/sync/config/parents: retry_limit: must be a whole number', field: 'retry_limit' });
    const unknown = await call('/api/sync/config/parents', { method: 'PUT', body: { mode: 'append' } });
    expect(unknown.body.error).toMatch(/unknown field "mode"/);
    expect((await call('/api/sync/config/nope', { method: 'PUT', body: { verify: false } })).status).toBe(404);
    const { rows } = await sync.pool.query(`select failure_threshold, schedule, freshness, retry_delay::text from sync.entity where name = 'parents'`);
    expect(rows[0]).toEqual({ failure_threshold: 5, schedule: null, freshness: null, retry_delay: '00:05:00' });
  });

  it('changes the delete guard like any tunable, and the database judges its values', async () => {
    const set = await call('/api/sync/config/parents', { method: 'PUT', body: { delete_guard_percent: '20', delete_guard_rows: '100' } });
    expect(set.status).toBe(200);
    expect(set.body.entity).toMatchObject({ delete_guard: true, delete_guard_percent: 20, delete_guard_rows: 100 });
    expect(set.body.changed).toEqual(['delete_guard_percent', 'delete_guard_rows']);
    const cleared = await call('/api/sync/config/parents', { method: 'PUT', body: { delete_guard_rows: '', delete_guard: false } });
    expect(cleared.body.entity).toMatchObject({ delete_guard: false, delete_guard_rows: null });
    const bad = await call('/api/sync/config/parents', { method: 'PUT', body: { delete_guard_percent: 150 } });
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ error: 'entity parents: delete_guard_percent 150 is not between 0 and 100', field: 'delete_guard_percent' });
    await call('/api/sync/config/parents', { method: 'PUT', body: { delete_guard: true, delete_guard_percent: 50 } });
  });

  it('reads a number given as text only in decimal digits: "0x10", "1e3", " 16 ", "Infinity" are a 400', async () => {
    for (const v of ['0x10', '1e3', ' 16 ', 'Infinity', '16.0.1']) {
      const r = await call('/api/sync/config/parents', { method: 'PUT', body: { failure_threshold: v } });
      expect({ status: r.status, body: r.body }, v).toEqual({ status: 400,
        body: { error: 'PUT /api/sync/config/parents: failure_threshold: must be a whole number', field: 'failure_threshold' } });
    }
    const factor = await call('/api/sync/config/parents', { method: 'PUT', body: { throughput_factor: '2.5' } });
    expect(factor.body.entity).toMatchObject({ throughput_factor: 2.5 });
    await call('/api/sync/config/parents', { method: 'PUT', body: { throughput_factor: 3 } });
    const { rows } = await sync.pool.query(`select failure_threshold from sync.entity where name = 'parents'`);
    expect(rows[0].failure_threshold).toBe(5);
  });

  it('answers a U+0000 anywhere in a body or a path with a 4xx naming the field, not a 500', async () => {
    for (const field of ['schedule', 'retry_delay', 'freshness']) {
      const r = await call('/api/sync/config/parents', { method: 'PUT', body: { [field]: '5 minutes\u0000' } });
      expect({ status: r.status, body: r.body }, field).toEqual({ status: 400, body: {
        error: `PUT /api/sync/config/parents: ${field}: must not contain the character U+0000`, hint: 'remove the \\u0000 from the value', field } });
    }
    const ack = await call('/api/alerts/1/ack', { method: 'POST', body: { by: 'ops\u0000' } });
    expect(ack).toMatchObject({ status: 400, body: { field: 'by' } });
    const manual = await call('/api/sync/manual', { method: 'POST', body: { entities: ['parents', 'x\u0000'] } });
    expect(manual).toMatchObject({ status: 400, body: { error: expect.stringMatching(/entities\[1\]: must not contain the character U\+0000/), field: 'entities' } });
    expect((await call('/api/sync/config/par%00ents', { method: 'PUT', body: { verify: true } })).status).toBe(404);
    const { rows } = await sync.pool.query(`select schedule, freshness, retry_delay::text from sync.entity where name = 'parents'`);
    expect(rows[0]).toEqual({ schedule: null, freshness: null, retry_delay: '00:05:00' });
  });
});

describe('alerts', () => {
  let alertId: number;

  it('lists the alert a failing entity raised', async () => {
    await call('/api/sync/config/broken', { method: 'PUT', body: { failure_threshold: 1 } });
    const r = await call('/api/sync/manual', { method: 'POST', body: { entity: 'broken' } });
    const p = await finished(r.body.runId);
    expect(p.status).toBe('failed');
    const list = await call('/api/alerts');
    const alert = list.body.alerts.find((a: { entity: string }) => a.entity === 'broken');
    expect(alert).toMatchObject({ kind: 'consecutive_failures', severity: 'critical', state: 'open' });
    alertId = alert.id;
  });

  it('acknowledges it once, with who did', async () => {
    const noName = await call(`/api/alerts/${alertId}/ack`, { method: 'POST', body: {} });
    expect(noName.status).toBe(400);
    expect(noName.body).toEqual({ error: `POST /api/alerts/${alertId}/ack: by: is required (string)`, hint: 'say who acknowledges: {"by": "your name"}', field: 'by' });
    const ok = await call(`/api/alerts/${alertId}/ack`, { method: 'POST', body: { by: 'alice' } });
    expect(ok.status).toBe(200);
    expect(ok.body.alert).toMatchObject({ id: alertId, state: 'acknowledged', acknowledgedBy: 'alice' });
    const again = await call(`/api/alerts/${alertId}/ack`, { method: 'POST', body: { by: 'bob' } });
    expect(again.status).toBe(409);
    expect(again.body.error).toMatch(/is not open: alice acknowledged it already/);
    expect((await call('/api/alerts/999999/ack', { method: 'POST', body: { by: 'bob' } })).status).toBe(404);
    expect((await call('/api/alerts')).body.alerts.some((a: { id: number }) => a.id === alertId)).toBe(false);
    const all = await call('/api/alerts?state=all');
    expect(all.body.alerts.find((a: { id: number }) => a.id === alertId)).toMatchObject({ state: 'acknowledged' });
  });
});

describe('metrics', () => {
  it('are Prometheus text: runs, rows, durations, open alerts and lag per entity', async () => {
    await sync.pool.query(`select sync.raise_alert('stale', 'warning', 'children', 'children is late', '{}')`);
    const r = await call('/metrics');
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
    // Every line is a HELP, a TYPE or a sample, per the exposition format.
    const sample = /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\["\\n])*",?)*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/;
    for (const line of r.text.trimEnd().split('\n')) {
      expect(line.startsWith('# HELP ') || line.startsWith('# TYPE ') || sample.test(line), line).toBe(true);
    }
    const families = new Map(parsePrometheus(r.text).map((f) => [f.name, f]));
    const value = (name: string, labels: Record<string, string>) =>
      Number(families.get(name)?.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))?.value);
    expect(value('syncline_runs_24h', { entity: 'parents', status: 'succeeded' })).toBeGreaterThanOrEqual(2);
    const cancelled = (await sync.pool.query(`select count(*)::int as n from sync.run where entity = 'slow' and status = 'cancelled'`)).rows[0].n;
    expect(cancelled).toBeGreaterThanOrEqual(3);
    expect(value('syncline_runs_24h', { entity: 'slow', status: 'cancelled' })).toBe(cancelled);
    // A name with a quote and a slash is escaped, not broken.
    expect(value('syncline_entity_state', { entity: ODD, state: 'disabled' })).toBe(1);
    expect(value('syncline_rows_24h', { entity: 'parents', action: 'inserted' })).toBe(500);
    expect(value('syncline_entity_state', { entity: 'parents', state: 'ok' })).toBe(1);
    expect(value('syncline_entity_state', { entity: 'parents', state: 'failing' })).toBe(0);
    expect(value('syncline_lag_seconds', { entity: 'parents' })).toBeGreaterThanOrEqual(0);
    expect(value('syncline_last_run_duration_seconds', { entity: 'parents' })).toBeGreaterThan(0);
    expect(value('syncline_phase_duration_seconds', { entity: 'parents', phase: 'fetch', quantile: '0.5' })).toBeGreaterThanOrEqual(0);
    expect(value('syncline_open_alerts', { entity: 'children', severity: 'warning' })).toBe(1);
    expect(families.get('syncline_open_alerts')?.metrics.some((m) => m.labels?.entity === 'broken')).toBe(false);
    expect(families.get('syncline_lag_seconds')?.type).toBe('GAUGE');
  });
});

describe('syncline serve', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-serve-'));
  const configFile = (server: Record<string, unknown> = {}) => {
    const file = path.join(dir, `config-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, JSON.stringify({ server, sources: { src: { kind: 'postgres', url: source.url } }, entities: { parents: ENTITIES.parents } }));
    return file;
  };
  const env = (extra: Record<string, string> = {}) => {
    const e: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: sync.url, SYNCLINE_LOG_LEVEL: 'silent', ...extra };
    if (!('SYNCLINE_API_TOKEN' in extra)) delete e.SYNCLINE_API_TOKEN;
    return e;
  };
  const cli = ['--import', 'tsx', 'src/cli/main.ts'];

  it('refuses a non-loopback address without a token, saying how to set one', () => {
    const r = spawnSync(process.execPath, [...cli, 'serve', '--host', '0.0.0.0', '-c', configFile()], { encoding: 'utf8', env: env(), timeout: 60_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^refusing to serve on 0\.0\.0\.0 without an API token: .* set SYNCLINE_API_TOKEN/);
    const weak = spawnSync(process.execPath, [...cli, 'serve', '--host', '0.0.0.0', '-c', configFile()],
      { encoding: 'utf8', env: env({ SYNCLINE_API_TOKEN: 'short' }), timeout: 60_000 });
    expect(weak.status).toBe(2);
    expect(weak.stderr).toMatch(/the API token is 5 characters long; use at least 16/);
  });

  it('config show masks the token', () => {
    const secret = 'a-secret-token-that-must-not-show';
    const r = spawnSync(process.execPath, [...cli, 'config', 'show', '-c', configFile({ token: '${SYNCLINE_API_TOKEN}' })],
      { encoding: 'utf8', env: env({ SYNCLINE_API_TOKEN: secret }), timeout: 60_000 });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).server).toEqual({ token: '***', host: '127.0.0.1', port: 8377, withWorker: true });
    expect(r.stdout).not.toContain(secret);
  });

  it('on loopback generates a token, prints it (not to the log) and serves with it until SIGTERM', async () => {
    const child = spawn(process.execPath, [...cli, 'serve', '--port', '0', '-c', configFile()],
      { env: env({ SYNCLINE_LOG_LEVEL: 'info', SYNCLINE_LOG_FORMAT: 'json' }), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const [, url, token, link] = await until('the announcement', async () =>
        /dashboard and API: (http:\/\/127\.0\.0\.1:\d+\/)\n {2}API token \(generated for this process[^)]*\): (\S+)\n {2}sign in directly: (\S+)\n/
          .exec(out));
      // The link the dashboard signs in with (test/e2e-dashboard.test.ts opens one): the page, the token in the fragment.
      expect(link).toBe(`${url}#token=${token}`);
      const status = await call('/api/sync/status', { base: url, token });
      expect(status.status).toBe(200);
      expect(status.body.entities.map((e: { entity: string }) => e.entity)).toContain('parents');
      expect((await call('/api/sync/status', { base: url, token: TOKEN })).status).toBe(401);
      // The log lines (JSON) never carry the token; only the announcement does.
      const logLines = out.split('\n').filter((l) => l.startsWith('{'));
      expect(logLines.some((l) => l.includes('operator API listening'))).toBe(true);
      expect(logLines.some((l) => l.includes(token))).toBe(false);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });
});

describe('shutdown', () => {
  it('health turns 503 once the worker of this process has stopped', async () => {
    await handle.stop();
    workerStopped = true;
    const r = await call('/api/health');
    expect(r.status).toBe(503);
    expect(r.body.worker).toMatchObject({ ok: false, error: 'the worker of this process has stopped' });
  });
});
