import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, it, expect, beforeAll } from 'vitest';
import { testDatabases, type TestDatabase } from '../../test/helpers/db.js';
import { tuplesWritten, waitGone } from '../../test/helpers/gen.js';
import { parseConfig, ConfigError } from '../../src/config/load.js';
import { applyConfig } from '../../src/config/apply.js';
import { Engine } from '../../src/engine/run.js';
import { Edge } from '../../src/edge/edge.js';
import { runCycle, type CycleResult } from '../../src/edge/cycle.js';
import { writeReadings } from './generator.js';
import { PROJECT, sqlFile, values } from './testing.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CONFIG = path.join(here, 'syncline.config.json');
const raw = () => JSON.parse(readFileSync(CONFIG, 'utf8'));
const CONFIG_TABLES = ['tenants', 'meters', 'registers', 'device_register'];

let local: TestDatabase;
let cloud: TestDatabase;

beforeAll(async () => {
  ({ sync: local, source: cloud } = await testDatabases('edge_meters'));
});

/** `syncline edge setup` on the example's config, against the test's two databases. */
function edgeSetup(): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'edge', 'setup', '-c', CONFIG], {
      cwd: PROJECT, env: { ...process.env, DATABASE_URL: local.url, POSTGRES_CLIENT_URL: cloud.url, SYNCLINE_LOG_LEVEL: 'warn' },
    });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    child.on('exit', (code) => resolve({ code, out }));
  });
}

/** One cycle with an engine and edge of its own, closed afterwards so their sessions' statistics are flushed. */
async function cycle(): Promise<CycleResult> {
  const cfg = parseConfig(raw(), { POSTGRES_CLIENT_URL: cloud.url }, CONFIG);
  await applyConfig(local.pool, cfg);
  const engine = new Engine(local.pool, local.url, cfg);
  const edge = new Edge(engine);
  try {
    return await runCycle(edge, { trigger: 'manual' });
  } finally {
    await edge.close();
    await engine.close();
    for (const app of ['syncline (read-only source)', 'syncline edge (push)']) await waitGone(local.pool, app, cloud.name);
  }
}

/** Makes the test's own sessions on the cloud flush their pending statistics, so none lands mid-comparison. */
async function flushOwnStats(): Promise<void> {
  const clients = await Promise.all(Array.from({ length: cloud.pool.totalCount }, () => cloud.pool.connect()));
  try {
    for (const c of clients) {
      await c.query('select pg_stat_force_next_flush()');
      await c.query('select 1');
    }
  } finally {
    for (const c of clients) c.release();
  }
}

async function cloudConfigState() {
  const out: Record<string, { digest: string; written: number }> = {};
  for (const t of CONFIG_TABLES) {
    const { rows } = await cloud.pool.query(`select md5(coalesce(string_agg(x::text, ',' order by x::text), '')) as d from public.${t} x`);
    out[t] = { digest: rows[0].d, written: await tuplesWritten(cloud.pool, `public.${t}`) };
  }
  return out;
}

const byEntity = (r: CycleResult) => Object.fromEntries([...r.push, ...r.pull].map((x) => [x.entity, x]));

describe('the edge-meters example', () => {
  it('its config validates, and names both ways to give the remote when neither is set', () => {
    const cfg = parseConfig(raw(), { POSTGRES_CLIENT_URL: 'postgres://edge:pw@cloud.example.com/metering' });
    expect(cfg.entities.readings).toMatchObject({ direction: 'push', source: 'cloud', target: { schema: 'public', table: 'readings' },
      push: { syncedColumn: 'is_synchronized', orderBy: ['recorded_at'], batchSize: 100, afterPush: 'delete' } });
    expect(Object.keys(cfg.entities)).toEqual(['readings', 'tenants', 'meters', 'registers', 'device_register']);
    expect(cfg.entities.device_register.dependsOn).toEqual(['meters', 'registers']);
    expect(() => parseConfig(raw(), {})).toThrow(ConfigError);
  });

  it('`edge setup` creates both sides\' tables, and running it again changes nothing', async () => {
    const first = await edgeSetup();
    expect(first.code, first.out).toBe(0);
    expect(first.out).toContain(`✓ local: examples/edge-meters/sql/local.sql applied to user postgres at`);
    expect(first.out).toContain('(source "cloud")');
    await cloud.pool.query(sqlFile('seed.sql'));
    await local.pool.query(`insert into edge.readings (tenant_id, meter_id, register_id, recorded_at, value) values ('acme', 1, 1, now(), 1)`);
    const again = await edgeSetup();
    expect(again.code, again.out).toBe(0);
    expect((await local.pool.query('select count(*)::int as n from edge.readings')).rows[0].n).toBe(1);
    expect((await cloud.pool.query('select count(*)::int as n from meters')).rows[0].n).toBe(30);
    const { rows } = await local.pool.query(`select indexrelid::regclass::text as i from pg_index where indrelid = 'edge.readings'::regclass order by 1`);
    expect(rows.map((r) => r.i)).toEqual(['edge.readings_meter_idx', 'edge.readings_pending_idx', 'edge.readings_pkey']);
  });

  it('a cycle pushes the generator\'s readings and pulls the tenant\'s configuration, parents first', async () => {
    expect(await writeReadings(local.pool, 'acme')).toBe(5); // no configuration yet: meters 1–5
    const r = await cycle();
    expect(r.status).toBe('done');
    expect(r.pull.map((p) => p.entity)).toEqual(['tenants', 'meters', 'registers', 'device_register']);
    expect(byEntity(r)).toMatchObject({ readings: { inserted: 6, retired: 6 }, meters: { inserted: 20 }, device_register: { inserted: 80 } });
    expect(await writeReadings(local.pool, 'acme')).toBe(80); // one a register of each meter, now that they are known
    expect(byEntity(await cycle()).readings).toMatchObject({ inserted: 80, unchanged: 0 });
    expect(await values(local.pool, 'local', true)).toEqual([]);
    expect((await cloud.pool.query('select count(*)::int as n from readings')).rows[0].n).toBe(86);
    const { rows } = await local.pool.query(`select (select count(*)::int from edge.meters) as meters,
      (select count(*)::int from edge.meters where tenant_id <> 'acme') as other_tenants`);
    expect(rows[0]).toEqual({ meters: 20, other_tenants: 0 });
  });

  it('a configuration change comes down with each update\'s changed fields; a bad meter and its assignments are quarantined, the rest merge', async () => {
    await cloud.pool.query(sqlFile('mutate.sql'));
    const r = byEntity(await cycle());
    expect(r.meters).toMatchObject({ status: 'partial', inserted: 1, updated: 1, quarantined: 1 });
    expect(r.device_register).toMatchObject({ status: 'partial', inserted: 2, deleted: 1, quarantined: 1 });
    const { rows: changes } = await local.pool.query(`select r.entity, c.action, c.key, c.changed from sync.run_change c
      join sync.run r on r.id = c.run_id where r.id = any($1) order by 1, 2, 3::text`, [[r.meters.runId, r.device_register.runId]]);
    expect(changes.map((c) => ({ ...c, changed: c.changed && [...c.changed].sort() }))).toEqual([
      { entity: 'device_register', action: 'delete', key: ['acme', '20', '4'], changed: null },
      { entity: 'device_register', action: 'insert', key: ['acme', '21', '1'], changed: null },
      { entity: 'device_register', action: 'insert', key: ['acme', '21', '2'], changed: null },
      { entity: 'meters', action: 'insert', key: ['acme', '21'], changed: null },
      { entity: 'meters', action: 'update', key: ['acme', '3'], changed: ['location', 'model', 'updated_at'] },
    ]);
    const { rows: errors } = await local.pool.query(`select entity, key, category, message from sync.run_error where run_id = any($1) order by entity`,
      [[r.meters.runId, r.device_register.runId]]);
    expect(errors).toEqual([
      { entity: 'device_register', key: ['acme', '22', '1'], category: 'integrity', message: expect.stringContaining('edge.meters') },
      { entity: 'meters', key: ['acme', '22'], category: 'validation', message: expect.stringContaining('serial_no') },
    ]);
  });

  it('never writes to the cloud\'s configuration tables: same contents, no tuple written', async () => {
    await flushOwnStats();
    const before = await cloudConfigState();
    await writeReadings(local.pool, 'acme');
    const r = await cycle();
    expect(r.status).toBe('done');
    // 80 assignments, +2 for meter 21, -1 deleted on meter 20; meter 22's waits in quarantine.
    expect(byEntity(r).readings).toMatchObject({ inserted: 81 });
    expect(await cloudConfigState()).toEqual(before);
  });
});
