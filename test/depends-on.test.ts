/**
 * "dependsOn": "auto": dependencies derived from the target tables' foreign
 * keys among the config's own entities, resolved wherever the config is
 * applied, shown by `config show`, and a cycle among them a config error.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { testDatabases, type TestDatabase } from './helpers/db.js';
import { parseConfig } from '../src/config/load.js';
import { applyConfig, diffConfig } from '../src/config/apply.js';
import { DependsOnError, resolveDependsOn, runLevels } from '../src/config/depends-on.js';
import { topoOrder } from '../src/config/schema.js';

let sync: TestDatabase;
let source: TestDatabase;
const dir = mkdtempSync(path.join(os.tmpdir(), 'syncline-depends-on-'));
let schemas = 0;

beforeAll(async () => {
  ({ sync, source } = await testDatabases('depends_on'));
});

/** A fresh schema of the Syncline database holding `sql` (tables written unqualified). */
async function schemaWith(sql: string): Promise<string> {
  const schema = `d${schemas++}`;
  await sync.pool.query(`create schema ${schema}; set search_path to ${schema}; ${sql}; reset search_path`);
  return schema;
}

const pull = (schema: string, table: string, extra: object = {}) =>
  ({ source: 'src', from: { table }, target: `${schema}.${table}`, key: ['id'], dependsOn: 'auto', ...extra });

const configOf = (entities: Record<string, unknown>) => parseConfig({ sources: { src: { kind: 'postgres', url: source.url } }, entities }, {});

async function namesOf(entities: Record<string, unknown>): Promise<Record<string, string[]>> {
  return (await resolveDependsOn(sync.pool, configOf(entities))).names;
}

function cli(args: string[], config: unknown, env: Record<string, string> = {}) {
  const file = path.join(dir, `config-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(file, JSON.stringify(config));
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    encoding: 'utf8',
    env: { ...process.env, DATABASE_URL: sync.url, SYNCLINE_CONFIG: file, SYNCLINE_LOG_LEVEL: 'silent', ...env },
    timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

describe('dependsOn "auto" derives the order from the foreign keys', () => {
  it('a chain', async () => {
    const s = await schemaWith(`create table a (id int primary key);
      create table b (id int primary key, a_id int references a);
      create table c (id int primary key, b_id int references b)`);
    expect(await namesOf({ a: pull(s, 'a'), b: pull(s, 'b'), c: pull(s, 'c') })).toEqual({ a: [], b: ['a'], c: ['b'] });
  });

  it('a diamond, with the foreign keys behind each dependency', async () => {
    const s = await schemaWith(`create table top (id int primary key);
      create table l (id int primary key, top_id int constraint l_top_fk references top);
      create table r (id int primary key, top_id int constraint r_top_fk references top);
      create table bottom (id int primary key, l_id int constraint bottom_l_fk references l, r_id int constraint bottom_r_fk references r)`);
    const resolved = await resolveDependsOn(sync.pool, configOf({ top: pull(s, 'top'), l: pull(s, 'l'), r: pull(s, 'r'), bottom: pull(s, 'bottom') }));
    expect(resolved.names).toEqual({ top: [], l: ['top'], r: ['top'], bottom: ['l', 'r'] });
    expect(resolved.auto.get('bottom')!.map((d) => [d.entity, d.via.name])).toEqual([['l', 'bottom_l_fk'], ['r', 'bottom_r_fk']]);
    expect(runLevels(resolved.names)).toEqual([['top'], ['l', 'r'], ['bottom']]);
  });

  it('two entities filling one referenced table are both dependencies; a hand-written list stays as written', async () => {
    const s = await schemaWith(`create table customers (tenant text, id int primary key);
      create table orders (id int primary key, customer_id int references customers)`);
    const tenant = (value: string) => ({ tenant: { column: 'tenant', value } });
    expect(await namesOf({
      customers_acme: pull(s, 'customers', tenant('acme')),
      customers_globex: pull(s, 'customers', { ...tenant('globex'), dependsOn: ['customers_acme'] }),
      orders: pull(s, 'orders'),
    })).toEqual({ customers_acme: [], customers_globex: ['customers_acme'], orders: ['customers_acme', 'customers_globex'] });
  });

  it('a self-reference is no dependency', async () => {
    const s = await schemaWith('create table categories (id int primary key, parent_id int references categories)');
    expect(await namesOf({ categories: pull(s, 'categories') })).toEqual({ categories: [] });
  });

  it('a foreign key to a table no entity fills is no dependency', async () => {
    const s = await schemaWith(`create table currencies (code text primary key);
      create table prices (id int primary key, currency text references currencies)`);
    expect(await namesOf({ prices: pull(s, 'prices') })).toEqual({ prices: [] });
  });

  it('a push entity is never a dependency, even when its target has the name of a referenced table', async () => {
    const s = await schemaWith(`create table readings (id int primary key, is_synchronized boolean not null default false);
      create table alarms (id int primary key, reading_id int references readings)`);
    expect(await namesOf({
      up: { direction: 'push', source: 'src', from: { table: `${s}.readings` }, target: `${s}.readings`, key: ['id'] },
      alarms: pull(s, 'alarms'),
    })).toEqual({ up: [], alarms: [] });
  });

  it('partitioned tables: one dependency for a key to a partitioned table, and an entity filling a partition has its key', async () => {
    const s = await schemaWith(`create table events (id int, at date, primary key (id, at)) partition by range (at);
      create table events_2026 partition of events for values from ('2026-01-01') to ('2027-01-01');
      create table events_2027 partition of events for values from ('2027-01-01') to ('2028-01-01');
      create table notes (id int, at date, event_id int, event_at date, primary key (id, at),
        constraint notes_event_fk foreign key (event_id, event_at) references events) partition by range (at);
      create table notes_2026 partition of notes for values from ('2026-01-01') to ('2027-01-01')`);
    const resolved = await resolveDependsOn(sync.pool, configOf({
      events: pull(s, 'events'), notes: pull(s, 'notes'), notes_2026: pull(s, 'notes_2026'),
    }));
    expect(resolved.names).toEqual({ events: [], notes: ['events'], notes_2026: ['events'] });
    expect(resolved.auto.get('notes')!.map((d) => d.via.name)).toEqual(['notes_event_fk']);
  });

  it('a target table that does not exist yet derives nothing', async () => {
    expect(await namesOf({ ghost: pull('public', 'no_such_table') })).toEqual({ ghost: [] });
  });
});

describe('applying a config with "auto"', () => {
  it('writes the derived dependencies to sync.entity.depends_on and the stored definition, and re-applying changes nothing', async () => {
    const s = await schemaWith(`create table parents (id int primary key);
      create table kids (id int primary key, parent_id int references parents)`);
    const cfg = configOf({ parents: pull(s, 'parents'), kids: pull(s, 'kids') });
    await applyConfig(sync.pool, cfg);
    const { rows } = await sync.pool.query(
      `select name, depends_on, definition->'dependsOn' as stored from sync.entity where name in ('parents', 'kids') order by name`);
    expect(rows).toEqual([{ name: 'kids', depends_on: ['parents'], stored: ['parents'] }, { name: 'parents', depends_on: [], stored: [] }]);
    expect(cfg.entities.kids.dependsOn).toBe('auto');
    expect((await diffConfig(sync.pool, cfg)).filter((d) => d.action !== 'remove')).toEqual([]);
  });

  it('a derived cycle throws a DependsOnError naming the foreign keys and the fix', async () => {
    const s = await schemaWith(`create table x (id int primary key, y_id int);
      create table y (id int primary key, x_id int constraint y_x_fk references x);
      alter table x add constraint x_y_fk foreign key (y_id) references y`);
    const cfg = configOf({ x: pull(s, 'x'), y: pull(s, 'y') });
    const err = await applyConfig(sync.pool, cfg).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DependsOnError);
    expect((err as Error).message).toContain('entities.x.dependsOn: "auto" finds a dependency cycle');
    expect((err as Error).message).toContain(`x → y → x (${s}.x references ${s}.y by x_y_fk; ${s}.y references ${s}.x by y_x_fk)`);
    expect((err as Error).message).toContain('"dependsOn": [] for x');
    // Settled as the message says: x by hand, y still "auto".
    expect(await namesOf({ x: pull(s, 'x', { dependsOn: [] }), y: pull(s, 'y') })).toEqual({ x: [], y: ['x'] });
  });
});

describe('the CLI', () => {
  // Names chosen so that the child sorts first: only the derived order puts the parent before it.
  const PAIR = `create table aa_lines (id int primary key, order_id int not null, qty int);
    create table zz_orders (id int primary key, customer text)`;

  it('a derived cycle is a config error (exit 2) in config apply, its dry run, sync and the worker start, not a stack trace', async () => {
    const s = await schemaWith(`create table p (id int primary key, q_id int);
      create table q (id int primary key, p_id int constraint q_p_fk references p);
      alter table p add constraint p_q_fk foreign key (q_id) references q`);
    const config = { sources: { src: { kind: 'postgres', url: source.url } }, entities: { p: pull(s, 'p'), q: pull(s, 'q') } };
    for (const args of [['config', 'apply'], ['config', 'apply', '--dry-run'], ['sync'], ['worker']]) {
      const r = cli(args, config);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err).toContain('dependsOn "auto" cannot be resolved from the foreign keys:');
      expect(r.err).toContain('p_q_fk');
      expect(r.err).toContain('q_p_fk');
      expect(r.err).toContain('— choose which entity syncs first by writing one of these lists by hand');
      expect(r.err).not.toMatch(/\n\s+at /);
    }
  });

  it('config show prints the JSON as written on stdout, the resolved dependencies and the run order on stderr', async () => {
    const s = await schemaWith(`create table customers (id int primary key);
      create table products (id int primary key);
      create table orders (id int primary key, customer_id int constraint orders_customer_fk references customers,
        product_id int constraint orders_product_fk references products);
      create table notes (id int primary key)`);
    const config = {
      sources: { src: { kind: 'postgres', url: source.url } },
      entities: {
        customers: pull(s, 'customers'), products: pull(s, 'products', { dependsOn: [] }), orders: pull(s, 'orders'),
        notes: pull(s, 'notes', { dependsOn: ['orders'], enabled: false }), ghost: pull(s, 'ghost'),
      },
    };
    const r = cli(['config', 'show'], config);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).entities.orders.dependsOn).toBe('auto');
    expect(r.err).toBe([
      'dependsOn "auto", from the target tables\' foreign keys:',
      '  customers ← nothing (no foreign key to another entity\'s table)',
      '  orders ← customers, products (auto: orders_customer_fk, orders_product_fk)',
      `  ghost ← nothing (target ${s}.ghost does not exist yet: create it, then apply the config again)`,
      'run order, level by level (an entity runs once the entities it depends on have):',
      '  1. customers, ghost, products',
      '  2. orders',
      '  3. notes (disabled)',
      '',
    ].join('\n'));
  });

  it('config show without a reachable database shows the config and says "auto" could not be resolved', () => {
    const config = { sources: { src: { kind: 'postgres', url: source.url } }, entities: { kids: pull('public', 'kids') } };
    const r = cli(['config', 'show'], config, { DATABASE_URL: 'postgres://nobody:secret-pw@127.0.0.1:1/nothing' });
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out).entities.kids.dependsOn).toBe('auto');
    expect(r.err).toContain('dependsOn "auto" (kids) could not be resolved: cannot connect to the database: nothing listens at 127.0.0.1:1/nothing');
    expect(r.err).not.toContain('secret-pw');
  });

  it('config show of a config without dependencies prints the JSON only', () => {
    const r = cli(['config', 'show'], { sources: { src: { kind: 'postgres', url: source.url } }, entities: { a: pull('public', 'a', { dependsOn: [] }) } });
    expect(r.code).toBe(0);
    expect(r.err).toBe('');
  });

  it('sync of a parent/child pair with "auto" runs the parent first: no foreign key violation', async () => {
    await source.pool.query(`${PAIR}; insert into zz_orders select i, 'c' || i from generate_series(1, 20) i;
      insert into aa_lines select i, 1 + i % 20, i from generate_series(1, 50) i`);
    const s = await schemaWith(`${PAIR}; alter table aa_lines add constraint lines_order_fk foreign key (order_id) references zz_orders`);
    const config = { sources: { src: { kind: 'postgres', url: source.url } }, entities: {
      aa_lines: { ...pull(s, 'aa_lines'), from: { table: 'public.aa_lines' } },
      zz_orders: { ...pull(s, 'zz_orders'), from: { table: 'public.zz_orders' } },
    } };
    const r = cli(['sync'], config);
    expect(r.err).not.toContain('violates foreign key');
    expect(r.code).toBe(0);
    const { rows } = await sync.pool.query(`select (select count(*) from ${s}.zz_orders) as orders, (select count(*) from ${s}.aa_lines) as lines`);
    expect(rows[0]).toEqual({ orders: 20, lines: 50 });
    const runs = await sync.pool.query<{ entity: string }>(`select entity from sync.run where entity in ('aa_lines', 'zz_orders') order by id`);
    expect(runs.rows.map((x) => x.entity)).toEqual(['zz_orders', 'aa_lines']);
    expect((await sync.pool.query(`select depends_on from sync.entity where name = 'aa_lines'`)).rows[0].depends_on).toEqual(['zz_orders']);
  });
});

describe('property', () => {
  it('for random DAGs of foreign-key-linked tables, the resolved order never places a referencing entity before a referenced one', async () => {
    // Table i may reference tables j < i; entity names are shuffled so their alphabetical order says nothing.
    const dag = fc.integer({ min: 2, max: 7 }).chain((n) => fc.record({
      edges: fc.uniqueArray(fc.tuple(fc.integer({ min: 1, max: n - 1 }), fc.nat()).map(([i, k]) => [i, k % i] as const),
        { selector: ([i, j]) => `${i}/${j}`, maxLength: 12 }),
      names: fc.shuffledSubarray([...'abcdefghij'].map((c) => `e_${c}`), { minLength: n, maxLength: n }),
      selfRefs: fc.subarray([...Array(n).keys()]),
    }));
    await fc.assert(fc.asyncProperty(dag, async ({ edges, names, selfRefs }) => {
      const n = names.length;
      const ddl = [...Array(n).keys()].map((i) => `create table t${i} (id int primary key${
        edges.filter(([a]) => a === i).map(([, j]) => `, r${j} int references t${j}`).join('')}${selfRefs.includes(i) ? `, up int references t${i}` : ''})`);
      const s = await schemaWith(ddl.join(';\n'));
      const entities = Object.fromEntries(names.map((name, i) => [name, pull(s, `t${i}`)]));
      const { names: graph } = await resolveDependsOn(sync.pool, configOf(entities));
      const expected = Object.fromEntries(names.map((name, i) => [name, edges.filter(([a]) => a === i).map(([, j]) => names[j]).sort()]));
      expect(graph).toEqual(expected);
      const order = topoOrder(graph);
      const level = new Map(runLevels(graph).flatMap((level, l) => level.map((e) => [e, l] as const)));
      for (const [i, j] of edges) {
        expect(order.indexOf(names[j])).toBeLessThan(order.indexOf(names[i]));
        expect(level.get(names[j])!).toBeLessThan(level.get(names[i])!);
      }
    }), { numRuns: 30 });
  });
});
