import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { engineFor } from './helpers/engine.js';
import { awkwardText, contents, load, snapshot } from './helpers/gen.js';
import { runMany } from '../src/engine/plan.js';
import type { Engine } from '../src/engine/run.js';

let sync: TestDatabase;
let source: TestDatabase;
let engine: Engine;

const TABLES = `
  create table meters (tenant text not null, id int not null, name text, primary key (tenant, id));
  create table registers (tenant text not null, id int not null, code text, primary key (tenant, id));
  create table device_register (tenant text not null, meter_id int not null, register_id int not null, since int,
    primary key (tenant, meter_id, register_id));
  create table notes (tenant text not null, id int not null, body text, primary key (tenant, id));`;
const FKS = `
  alter table device_register add foreign key (tenant, meter_id) references meters (tenant, id),
    add foreign key (tenant, register_id) references registers (tenant, id);`;
const KEYS: Record<string, string[]> = {
  meters: ['tenant', 'id'], registers: ['tenant', 'id'], device_register: ['tenant', 'meter_id', 'register_id'], notes: ['tenant', 'id'],
};
const NAMES = Object.keys(KEYS);
const entity = (t: string, extra: object = {}) => ({
  // Merge mechanics (deferred deletes): the delete guard has tests of its own.
  source: 'src', from: { table: t }, target: t, key: KEYS[t], mode: 'mirror', tenant: { column: 'tenant', value: 'x' }, deleteGuard: false, ...extra,
});

beforeAll(async () => {
  ({ sync, source } = await testDatabases('order'));
  await source.pool.query(TABLES);
  await sync.pool.query(TABLES + FKS);
  engine = await engineFor(sync, source, {
    meters: entity('meters'),
    registers: entity('registers'),
    device_register: entity('device_register', { dependsOn: ['meters', 'registers'] }),
    notes: entity('notes'),
  });
});
afterAll(() => engine.close());

interface State { meters: object[]; registers: object[]; device_register: object[]; notes: object[] }
const ids = fc.uniqueArray(fc.integer({ min: 1, max: 8 }), { maxLength: 6 });
// A consistent state of one or two tenants: every link points at an existing meter and register.
const tenantState = (tenant: string) => fc.record({
  meters: ids, registers: ids, links: fc.array(fc.tuple(fc.nat(), fc.nat(), fc.option(fc.integer())), { maxLength: 10 }),
  notes: ids, text: awkwardText,
}).map(({ meters, registers, links, notes, text }) => {
  const pairs = new Map<string, object>();
  if (meters.length && registers.length) {
    for (const [m, r, since] of links) {
      const meter_id = meters[m % meters.length];
      const register_id = registers[r % registers.length];
      pairs.set(`${meter_id}/${register_id}`, { tenant, meter_id, register_id, since });
    }
  }
  return {
    meters: meters.map((id) => ({ tenant, id, name: `${text}${id}` })),
    registers: registers.map((id) => ({ tenant, id, code: `r${id}` })),
    device_register: [...pairs.values()],
    notes: notes.map((id) => ({ tenant, id, body: text })),
  };
});
const join = (a: State, b: State): State => ({
  meters: [...a.meters, ...b.meters], registers: [...a.registers, ...b.registers],
  device_register: [...a.device_register, ...b.device_register], notes: [...a.notes, ...b.notes],
});

async function put(db: TestDatabase, s: State) {
  await db.pool.query('truncate device_register, meters, registers, notes');
  for (const t of ['meters', 'registers', 'device_register', 'notes'] as const) await load(db.pool, t, s[t]);
}
const tenantX = (c: Record<string, string | null>) => c.tenant === 'x';

describe('runMany (property)', () => {
  it('runs parents before dependents in any selection order and converges, completing deletes of referenced parents', async () => {
    await fc.assert(fc.asyncProperty(
      tenantState('x'), tenantState('x'), tenantState('other'), fc.shuffledSubarray(NAMES, { minLength: NAMES.length }),
      async (prior, wanted, other, selection) => {
        await put(sync, join(prior, other));
        await put(source, join(wanted, other));
        const firstRun = (await sync.pool.query('select coalesce(max(id), 0) as id from sync.run')).rows[0].id;
        const results = await runMany(engine, selection, { trigger: 'manual' });
        expect(results.map((r) => [r.entity, r.status, r.error])).toEqual(expect.arrayContaining(
          NAMES.map((n) => [n, 'succeeded', undefined])));
        const pos = (n: string) => results.findIndex((r) => r.entity === n);
        expect(pos('meters')).toBeLessThan(pos('device_register'));
        expect(pos('registers')).toBeLessThan(pos('device_register'));
        // The runs as recorded: every first run of a parent precedes the dependent's.
        const { rows } = await sync.pool.query<{ entity: string; id: number }>(
          'select entity, min(id)::int as id from sync.run where id > $1 group by entity', [firstRun]);
        const first = Object.fromEntries(rows.map((r) => [r.entity, r.id]));
        expect(first.meters).toBeLessThan(first.device_register);
        expect(first.registers).toBeLessThan(first.device_register);
        for (const t of NAMES) {
          const after = await snapshot(sync.pool, t, KEYS[t]);
          expect(contents(after, tenantX)).toEqual(contents(await snapshot(source.pool, t, KEYS[t]), tenantX));
          expect(contents(after, (c) => !tenantX(c))).toEqual(contents(await snapshot(source.pool, t, KEYS[t]), (c) => !tenantX(c)));
        }
        for (const r of results) expect(r.deferred ?? 0).toBe(0);
      }), { numRuns: 20 });
  });
});

describe('runMany', () => {
  it('a parent whose target table is missing fails, its dependent is skipped with the reason, an independent entity succeeds', async () => {
    const s: State = {
      meters: [{ tenant: 'x', id: 1, name: 'm' }], registers: [{ tenant: 'x', id: 1, code: 'r' }],
      device_register: [{ tenant: 'x', meter_id: 1, register_id: 1, since: 1 }], notes: [{ tenant: 'x', id: 1, body: 'n' }],
    };
    await put(sync, { meters: [], registers: [], device_register: [], notes: [] });
    await put(source, s);
    await sync.pool.query('alter table registers rename to registers_away');
    try {
      const results = await runMany(engine, ['notes', 'device_register', 'registers', 'meters'], { trigger: 'manual' });
      const by = Object.fromEntries(results.map((r) => [r.entity, r]));
      expect(by.registers.status).toBe('failed');
      expect(by.registers.error).toMatch(/registers.*does not exist/);
      expect(by.device_register.status).toBe('skipped');
      expect(by.device_register.error).toMatch(/dependency "registers"/);
      expect(by.meters).toMatchObject({ status: 'succeeded', inserted: 1 });
      expect(by.notes).toMatchObject({ status: 'succeeded', inserted: 1 });
      const run = (await sync.pool.query('select status, error from sync.run where id = $1', [by.device_register.runId])).rows[0];
      expect(run.status).toBe('skipped');
      expect(run.error).toMatch(/dependency "registers"/);
      expect((await sync.pool.query('select count(*)::int as n from device_register')).rows[0].n).toBe(0);
      // Run alone, the dependent is still held back by its failed parent.
      const alone = await engine.run('device_register', { trigger: 'manual' });
      expect(alone.status).toBe('skipped');
    } finally {
      await sync.pool.query('alter table registers_away rename to registers');
    }
    // Once the table is back, a pass over everything runs the parent first and the dependent again.
    const all = await runMany(engine, NAMES, { trigger: 'manual' });
    expect(all.map((r) => r.status)).toEqual(['succeeded', 'succeeded', 'succeeded', 'succeeded']);
    expect((await sync.pool.query('select count(*)::int as n from device_register')).rows[0].n).toBe(1);
  });

  it('a delete of a parent still referenced is deferred by its own run and completed by runMany after the dependent', async () => {
    await put(sync, {
      meters: [{ tenant: 'x', id: 1, name: 'gone' }, { tenant: 'x', id: 2, name: 'kept' }], registers: [{ tenant: 'x', id: 1, code: 'r' }],
      device_register: [{ tenant: 'x', meter_id: 1, register_id: 1, since: 1 }], notes: [],
    });
    await put(source, { meters: [{ tenant: 'x', id: 2, name: 'kept' }], registers: [{ tenant: 'x', id: 1, code: 'r' }], device_register: [], notes: [] });
    const alone = await engine.run('meters', { trigger: 'manual' });
    expect(alone).toMatchObject({ status: 'succeeded', deleted: 0, deferred: 1 });
    expect((await sync.pool.query('select count(*)::int as n from sync.run_change where run_id = $1', [alone.runId])).rows[0].n).toBe(0);
    expect((await sync.pool.query('select id from meters order by id')).rows).toEqual([{ id: 1 }, { id: 2 }]);
    const results = await runMany(engine, ['meters', 'device_register'], { trigger: 'manual' });
    const by = Object.fromEntries(results.map((r) => [r.entity, r]));
    expect(by.device_register, JSON.stringify(by.device_register)).toMatchObject({ status: 'succeeded', deleted: 1 });
    expect(by.meters).toMatchObject({ status: 'succeeded', deleted: 1, deferred: 0 });
    expect((await sync.pool.query('select id from meters order by id')).rows).toEqual([{ id: 2 }]);
    const log = await sync.pool.query(`select c.action, c.key from sync.run_change c join sync.run r on r.id = c.run_id
      where r.entity = 'meters' and r.id > $1`, [alone.runId]);
    expect(log.rows).toEqual([{ action: 'delete', key: ['x', '1'] }]);
  });

  it('a run that deletes some unreferenced rows and defers referenced ones reports every deferred row, and runMany deletes them', async () => {
    await put(sync, {
      meters: [{ tenant: 'x', id: 1, name: 'm' }],
      registers: [{ tenant: 'x', id: 1, code: 'free' }, { tenant: 'x', id: 2, code: 'referenced' }],
      device_register: [{ tenant: 'x', meter_id: 1, register_id: 2, since: null }], notes: [],
    });
    await put(source, { meters: [{ tenant: 'x', id: 1, name: 'm' }], registers: [], device_register: [], notes: [] });
    const dry = await engine.run('registers', { trigger: 'manual', dryRun: true });
    expect(dry).toMatchObject({ status: 'succeeded', deleted: 1, deferred: 1 });
    const alone = await engine.run('registers', { trigger: 'manual' });
    expect(alone).toMatchObject({ status: 'succeeded', deleted: 1, deferred: 1 });
    const results = await runMany(engine, ['registers', 'device_register'], { trigger: 'manual' });
    expect(results.map((r) => [r.entity, r.status])).toEqual([['registers', 'succeeded'], ['device_register', 'succeeded']]);
    expect((await sync.pool.query('select id from registers')).rows).toEqual([]);
  });
});
