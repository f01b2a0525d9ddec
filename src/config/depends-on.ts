/**
 * "dependsOn": "auto": an entity's dependencies taken from its target
 * table's foreign keys. A foreign key from entity A's target to entity B's
 * target means B syncs first. Only the targets of the config's own pull
 * entities count (a table no entity fills is the user's, not a dependency),
 * and a foreign key from a table to itself is none (the merge orders a
 * self-referencing table's rows itself). Resolved from the catalog each time
 * the config is applied or compared, so sync.entity.depends_on always holds
 * names and follows the foreign keys as the migrations change them.
 */
import { openDatabase, type Database } from '../db/database.js';
import { connectionHint, makePool, type Pool, type PoolClient } from '../db/pool.js';
import { maskUrls } from '../log.js';
import { ConfigError, formatPath } from './load.js';
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

/**
 * A cycle among the dependencies "auto" derives: a config error (exit 2)
 * the user settles by writing one entity's list by hand.
 */
export class DependsOnError extends ConfigError {
  constructor(problem: string, readonly entity: string) {
    super('the config', [problem]);
    this.name = 'DependsOnError';
    // The file is not at hand where the config is applied; the path in the problem says where.
    this.message = `dependsOn "auto" cannot be resolved from the foreign keys:\n  - ${problem}`;
  }
}

const targetOf = (e: EntityConfig) => e.target as TableRef;
const tableKey = (t: TableRef) => `${t.schema}\u0000${t.table}`;
export const tableName = (t: TableRef) => `${t.schema}.${t.table}`;

/**
 * The foreign keys whose referencing table is one of `tables` (tables that
 * do not exist are skipped). The copies Postgres makes of a foreign key that
 * references a partitioned table, one per partition, are left out: the
 * original stands for them. A partition's own copy of its parent's key is
 * kept, for an entity that fills the partition itself.
 */
export async function foreignKeysOf(db: Pool | PoolClient, tables: TableRef[]): Promise<ForeignKey[]> {
  if (!tables.length) return [];
  const { rows } = await db.query<{ name: string; from_schema: string; from_table: string; to_schema: string; to_table: string }>(
    `select c.conname as name, fn.nspname as from_schema, fc.relname as from_table, tn.nspname as to_schema, tc.relname as to_table
       from pg_constraint c
       join pg_class fc on fc.oid = c.conrelid join pg_namespace fn on fn.oid = fc.relnamespace
       join pg_class tc on tc.oid = c.confrelid join pg_namespace tn on tn.oid = tc.relnamespace
       left join pg_constraint p on p.oid = c.conparentid
      where c.contype = 'f' and (p.oid is null or p.conrelid <> c.conrelid)
        and c.conrelid = any (select to_regclass(format('%I.%I', s, t)) from unnest($1::text[], $2::text[]) as x(s, t))
      order by fn.nspname, fc.relname, c.conname`,
    [tables.map((t) => t.schema), tables.map((t) => t.table)]);
  return rows.map((r) => ({ name: r.name, from: { schema: r.from_schema, table: r.from_table }, to: { schema: r.to_schema, table: r.to_table } }));
}

/** The pull entities' target tables (a push entity's target is on the remote). */
export function pullTargets(cfg: Config): TableRef[] {
  const seen = new Map<string, TableRef>();
  for (const e of Object.values(cfg.entities)) {
    if (e.direction === 'pull') seen.set(tableKey(targetOf(e)), targetOf(e));
  }
  return [...seen.values()];
}

/**
 * Entity → the entities its target references by a foreign key, with the
 * key that says so, sorted by name. Every entity filling a referenced table
 * counts (two tenants' entities feeding one table are both dependencies);
 * entities filling the entity's own table never do; push entities neither
 * depend nor are depended on.
 */
export function derivedDependencies(cfg: Config, fks: ForeignKey[]): Map<string, DerivedDependency[]> {
  const pulls = Object.entries(cfg.entities).filter(([, e]) => e.direction === 'pull');
  const fillers = new Map<string, string[]>();
  for (const [name, e] of pulls) {
    const k = tableKey(targetOf(e));
    fillers.set(k, [...(fillers.get(k) ?? []), name]);
  }
  const out = new Map<string, DerivedDependency[]>();
  for (const [name, e] of pulls) {
    const own = tableKey(targetOf(e));
    const deps = new Map<string, DerivedDependency>();
    for (const fk of fks) {
      if (tableKey(fk.from) !== own || tableKey(fk.to) === own) continue;
      for (const other of fillers.get(tableKey(fk.to)) ?? []) {
        if (!deps.has(other)) deps.set(other, { entity: other, via: fk });
      }
    }
    out.set(name, [...deps.values()].sort((a, b) => (a.entity < b.entity ? -1 : a.entity > b.entity ? 1 : 0)));
  }
  return out;
}

/** Every entity's dependencies as names, and for the "auto" ones what was derived and from which keys. */
export interface ResolvedDependsOn {
  names: Record<string, string[]>;
  auto: Map<string, DerivedDependency[]>;
}

const isAuto = (e: EntityConfig) => e.dependsOn === 'auto';

/**
 * The config's dependencies with every "auto" resolved from the catalog (no
 * query when the config has none). The config itself is left as written.
 * A cycle the derived dependencies close throws a DependsOnError naming the
 * entities and foreign keys.
 */
export async function resolveDependsOn(db: Pool | PoolClient, cfg: Config): Promise<ResolvedDependsOn> {
  const anyAuto = Object.values(cfg.entities).some(isAuto);
  return withDerived(cfg, anyAuto ? derivedDependencies(cfg, await foreignKeysOf(db, pullTargets(cfg))) : new Map());
}

/** Every entity's names: its own list, or for "auto" what `derived` holds. */
function withDerived(cfg: Config, derived: Map<string, DerivedDependency[]>): ResolvedDependsOn {
  const entries = Object.entries(cfg.entities);
  const auto = new Map(entries.filter(([, e]) => isAuto(e)).map(([n]) => [n, derived.get(n) ?? []]));
  const names = Object.fromEntries(entries.map(([n, e]) => [n, auto.get(n)?.map((d) => d.entity) ?? e.dependsOn as string[]]));
  const cycle = auto.size ? findCycle(names) : null;
  if (cycle) throw cycleError(cycle, names, auto);
  return { names, auto };
}

function cycleError(cycle: string[], names: Record<string, string[]>, auto: Map<string, DerivedDependency[]>): DependsOnError {
  const links = cycle.slice(0, -1).map((from, i) => {
    const via = auto.get(from)?.find((d) => d.entity === cycle[i + 1])?.via;
    return via ? `${tableName(via.from)} references ${tableName(via.to)} by ${via.name}` : `${from} lists ${cycle[i + 1]} in dependsOn`;
  });
  // The settlement named: the first "auto" entity of the cycle, written by hand without the link that closes it.
  const at = cycle.findIndex((n) => auto.has(n));
  const entity = cycle[at];
  const without = names[entity].filter((d) => d !== cycle[at + 1]);
  return new DependsOnError(`${formatPath(['entities', entity, 'dependsOn'])}: "auto" finds a dependency cycle in the target tables' `
    + `foreign keys: ${cycle.join(' → ')} (${links.join('; ')}) — choose which entity syncs first by writing one of these lists by hand, `
    + `e.g. "dependsOn": ${JSON.stringify(without)} for ${entity} (its foreign key to ${cycle[at + 1]}'s table must then accept rows `
    + 'whose parent arrives later: nullable, or deferrable)', entity);
}

/**
 * The entities level by level, for people to read: the first level depends
 * on nothing in `graph`, every other entity sits one level past its deepest
 * dependency. `graph` must have no cycle.
 */
export function runLevels(graph: Record<string, string[]>): string[][] {
  const level = new Map<string, number>();
  const levelOf = (n: string): number => {
    if (!level.has(n)) level.set(n, Math.max(-1, ...(graph[n] ?? []).filter((d) => Object.hasOwn(graph, d)).map(levelOf)) + 1);
    return level.get(n)!;
  };
  const levels: string[][] = [];
  for (const n of Object.keys(graph).sort()) (levels[levelOf(n)] ??= []).push(n);
  return levels;
}

/** What `config show` tells of the dependencies: "auto" resolved, or why it could not be. */
export type ShownDependsOn = { resolved: ResolvedDependsOn; missing: Set<string> } | { unresolved: string };

/**
 * Resolves "auto" for `config show`, which reads the catalog only: the
 * database is opened (the embedded one started if need be) but not
 * migrated. A database that cannot be reached is a reason to show, not an
 * error; a cycle is the DependsOnError the apply would throw.
 */
export async function resolveForShow(cfg: Config, env: NodeJS.ProcessEnv = process.env): Promise<ShownDependsOn> {
  if (!Object.values(cfg.entities).some(isAuto)) return { resolved: withDerived(cfg, new Map()), missing: new Set() };
  let db: Database | undefined;
  let pool: Pool | undefined;
  try {
    db = await openDatabase(env, cfg.database);
    pool = makePool(db.url, { max: 1 });
    const resolved = await resolveDependsOn(pool, cfg);
    const auto = Object.entries(cfg.entities).filter(([n]) => resolved.auto.has(n));
    const { rows } = await pool.query<{ i: number }>(
      `select i from unnest($1::text[], $2::text[]) with ordinality as x(s, t, i) where to_regclass(format('%I.%I', s, t)) is null`,
      [auto.map(([, e]) => targetOf(e).schema), auto.map(([, e]) => targetOf(e).table)]);
    return { resolved, missing: new Set(rows.map((r) => auto[Number(r.i) - 1][0])) };
  } catch (err) {
    if (err instanceof DependsOnError) throw err;
    return { unresolved: db ? connectionHint(err, db.url, 'the database').message : maskUrls((err as Error).message) };
  } finally {
    await pool?.end();
    await db?.close();
  }
}

/**
 * `config show`'s lines on the dependencies, for a DBA: each "auto"
 * entity's derived list with the foreign keys behind it, then the run order
 * level by level. Empty when no entity depends on another.
 */
export function formatDependsOn(cfg: Config, shown: ShownDependsOn): string {
  const auto = Object.keys(cfg.entities).filter((n) => isAuto(cfg.entities[n]));
  if ('unresolved' in shown) {
    return `dependsOn "auto" (${auto.join(', ')}) could not be resolved: ${shown.unresolved} — it is read from the target tables' `
      + 'foreign keys: start the database or set DATABASE_URL, then run `config show` again\n';
  }
  const { resolved, missing } = shown;
  const lines: string[] = [];
  if (auto.length) {
    lines.push('dependsOn "auto", from the target tables\' foreign keys:');
    for (const n of auto) {
      const deps = resolved.auto.get(n)!;
      const why = missing.has(n) ? ` (target ${tableName(targetOf(cfg.entities[n]))} does not exist yet: create it, then apply the config again)`
        : deps.length ? ` (auto: ${[...new Set(deps.map((d) => d.via.name))].join(', ')})` : ' (no foreign key to another entity\'s table)';
      lines.push(`  ${n} ← ${deps.map((d) => d.entity).join(', ') || 'nothing'}${why}`);
    }
  }
  const pulls = Object.keys(cfg.entities).filter((n) => cfg.entities[n].direction === 'pull');
  if (!auto.length && pulls.every((n) => !resolved.names[n].length)) return '';
  lines.push('run order, level by level (an entity runs once the entities it depends on have):');
  const graph = Object.fromEntries(pulls.map((n) => [n, resolved.names[n]]));
  runLevels(graph).forEach((level, i) => lines.push(`  ${i + 1}. ${level.map((n) => (cfg.entities[n].enabled ? n : `${n} (disabled)`)).join(', ')}`));
  const pushes = Object.keys(cfg.entities).filter((n) => cfg.entities[n].direction === 'push');
  if (pushes.length) lines.push(`  push entities run first in the edge cycle: ${pushes.join(', ')}`);
  return `${lines.join('\n')}\n`;
}
