/**
 * "dependsOn": "auto": an entity's dependencies taken from its target
 * table's foreign keys. A foreign key from entity A's target to entity B's
 * target means B syncs first. Only the targets of the config's own pull
 * entities count (a table no entity fills is the user's, not a dependency),
 * and a foreign key from a table to itself is none (the merge orders a
 * self-referencing table's rows itself). Resolved from the catalog when the
 * config is applied, so sync.entity.depends_on always holds names.
 */
import type { Pool, PoolClient } from '../db/pool.js';
import { formatPath } from './load.js';
import { findCycle, type Config, type EntityConfig, type TableRef } from './schema.js';

/** A foreign key between two tables, as pg_constraint holds it. */
export interface ForeignKey {
  name: string;
  from: TableRef;
  to: TableRef;
}

/** One dependency an entity's target implies: the entity it references, by which foreign key. */
export interface DerivedDependency {
  entity: string;
  via: ForeignKey;
}

/** A cycle among the dependencies "auto" derives: a config error the user settles by writing one list by hand. */
export class DependsOnError extends Error {
  override name = 'DependsOnError';
  constructor(message: string, readonly entity: string) {
    super(message);
  }
}

const targetOf = (e: EntityConfig) => e.target as TableRef;
const tableKey = (t: TableRef) => `${t.schema}\u0000${t.table}`;
export const tableName = (t: TableRef) => `${t.schema}.${t.table}`;

/**
 * The foreign keys whose referencing table is one of `tables` (tables that
 * do not exist are skipped). A partition's copies of its parent's foreign
 * key are left out: the parent's own constraint stands for them.
 */
export async function foreignKeysOf(db: Pool | PoolClient, tables: TableRef[]): Promise<ForeignKey[]> {
  if (!tables.length) return [];
  const { rows } = await db.query<{ name: string; from_schema: string; from_table: string; to_schema: string; to_table: string }>(
    `select c.conname as name, fn.nspname as from_schema, fc.relname as from_table, tn.nspname as to_schema, tc.relname as to_table
       from pg_constraint c
       join pg_class fc on fc.oid = c.conrelid join pg_namespace fn on fn.oid = fc.relnamespace
       join pg_class tc on tc.oid = c.confrelid join pg_namespace tn on tn.oid = tc.relnamespace
      where c.contype = 'f' and c.conparentid = 0
        and c.conrelid = any (select to_regclass(format('%I.%I', s, t)) from unnest($1::text[], $2::text[]) as x(s, t))
      order by fn.nspname, fc.relname, c.conname`,
    [tables.map((t) => t.schema), tables.map((t) => t.table)]);
  return rows.map((r) => ({ name: r.name, from: { schema: r.from_schema, table: r.from_table }, to: { schema: r.to_schema, table: r.to_table } }));
}

/** The pull entities' targets: a push entity's target is on the remote, and nothing depends on a push entity. */
function pullTargets(cfg: Config): TableRef[] {
  const seen = new Map<string, TableRef>();
  for (const e of Object.values(cfg.entities)) {
    if (e.direction === 'pull') seen.set(tableKey(targetOf(e)), targetOf(e));
  }
  return [...seen.values()];
}

/**
 * Entity → the entities its target references by a foreign key, with the
 * key that says so. Every entity filling a referenced table counts (two
 * tenants' entities feeding one table are both dependencies); entities
 * filling the entity's own table never do.
 */
export function derivedDependencies(cfg: Config, fks: ForeignKey[]): Map<string, DerivedDependency[]> {
  const fillers = new Map<string, string[]>();
  for (const [name, e] of Object.entries(cfg.entities)) {
    if (e.direction !== 'pull') continue;
    const k = tableKey(targetOf(e));
    fillers.set(k, [...(fillers.get(k) ?? []), name]);
  }
  const out = new Map<string, DerivedDependency[]>();
  for (const [name, e] of Object.entries(cfg.entities)) {
    if (e.direction !== 'pull') continue;
    const own = tableKey(targetOf(e));
    const deps: DerivedDependency[] = [];
    for (const fk of fks) {
      if (tableKey(fk.from) !== own || tableKey(fk.to) === own) continue;
      for (const other of fillers.get(tableKey(fk.to)) ?? []) {
        if (!deps.some((d) => d.entity === other)) deps.push({ entity: other, via: fk });
      }
    }
    out.set(name, deps.sort((a, b) => (a.entity < b.entity ? -1 : a.entity > b.entity ? 1 : 0)));
  }
  return out;
}

// The entities whose dependsOn was "auto" before resolveDependsOn filled it in.
const RESOLVED = new WeakMap<EntityConfig, DerivedDependency[]>();

/** For an entity whose "auto" was resolved: the dependencies found and the keys behind them; undefined otherwise. */
export function autoResolved(e: EntityConfig): DerivedDependency[] | undefined {
  return RESOLVED.get(e);
}

/** Whether any entity of the config asks for "dependsOn": "auto" (still unresolved). */
export function hasAutoDependsOn(cfg: Config): boolean {
  return Object.values(cfg.entities).some((e) => e.dependsOn === 'auto');
}

/**
 * Fills every "dependsOn": "auto" of `cfg` with the entities its target's
 * foreign keys reference, in place (the config object keeps its identity,
 * which the masking of ${ENV} values is keyed on), and returns what was
 * resolved. A cycle the derived dependencies close throws a DependsOnError
 * naming the entities and foreign keys, and leaves `cfg` as it was.
 */
export async function resolveDependsOn(db: Pool | PoolClient, cfg: Config): Promise<Map<string, DerivedDependency[]>> {
  const auto = Object.entries(cfg.entities).filter(([, e]) => e.dependsOn === 'auto');
  if (!auto.length) return new Map();
  const derived = derivedDependencies(cfg, await foreignKeysOf(db, pullTargets(cfg)));
  const resolved = new Map(auto.map(([name]) => [name, derived.get(name) ?? []]));
  const graph = Object.fromEntries(Object.entries(cfg.entities).map(([name, e]) =>
    [name, resolved.has(name) ? resolved.get(name)!.map((d) => d.entity) : e.dependsOn as string[]]));
  const cycle = findCycle(graph);
  if (cycle) {
    const links = cycle.slice(0, -1).map((from, i) => {
      const via = resolved.get(from)?.find((d) => d.entity === cycle[i + 1])?.via;
      return via ? `${tableName(via.from)} references ${tableName(via.to)} by ${via.name}`
        : `${from} lists ${cycle[i + 1]} in dependsOn`;
    });
    const first = cycle.find((n) => resolved.has(n))!;
    throw new DependsOnError(`${formatPath(['entities', first, 'dependsOn'])}: "auto" finds a dependency cycle in the target tables' foreign keys: `
      + `${cycle.join(' → ')} (${links.join('; ')}) — write dependsOn as a list of names for one of these entities to choose which syncs first`, first);
  }
  for (const [name, deps] of resolved) {
    const e = cfg.entities[name];
    e.dependsOn = deps.map((d) => d.entity);
    RESOLVED.set(e, deps);
  }
  return resolved;
}

/** The names an entity depends on; "auto" must have been resolved (resolveDependsOn) before the config is applied. */
export function dependsOnNames(name: string, e: EntityConfig): string[] {
  if (e.dependsOn === 'auto') {
    throw new Error(`entity "${name}": dependsOn "auto" was not resolved — resolveDependsOn() must run before the config is applied`);
  }
  return e.dependsOn;
}
