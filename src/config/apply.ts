import type { Pool, PoolClient } from '../db/pool.js';
import { inTransaction } from '../db/pool.js';
import type { Config, EntityConfig } from './schema.js';
import { storedDefinition } from './stored.js';
import { resolveDependsOn } from './depends-on.js';

/** The sync.entity columns a config entity defines (the cursor value is the engine's). */
export interface EntityRow {
  name: string;
  source: string;
  direction: string;
  mode: string;
  target_schema: string;
  target_table: string;
  key_columns: string[];
  tenant_column: string | null;
  tenant_value: string | null;
  cursor_column: string | null;
  cursor_overlap: string | null;
  soft_delete_column: string | null;
  tombstone_column: string | null;
  depends_on: string[];
  schedule: string | null;
  enabled: boolean;
  definition: EntityConfig;
}

const COMPARED: (keyof EntityRow)[] = [
  'source', 'direction', 'mode', 'target_schema', 'target_table', 'key_columns', 'tenant_column', 'tenant_value',
  'cursor_column', 'cursor_overlap', 'soft_delete_column', 'tombstone_column', 'depends_on', 'schedule', 'enabled', 'definition',
];

/**
 * Tunables the config may set (sync.entity column → its value in the
 * entity). Only those the config sets are written: the rest belong to
 * whoever changes them with UPDATE, and applying the config leaves them alone.
 */
export function entityTunables(e: EntityConfig): Record<string, string | number | boolean> {
  const all: Record<string, string | number | boolean | undefined> = {
    sync_interval: e.interval,
    freshness: e.freshness,
    failure_threshold: e.alerts?.failures,
    gap_threshold: e.alerts?.gapThreshold,
    throughput_factor: e.alerts?.slowerThan,
    retry_limit: e.retry?.limit,
    retry_delay: e.retry?.delay,
    verify: e.verify === undefined ? undefined : e.verify !== false,
    delete_guard: e.deleteGuard === undefined ? undefined : e.deleteGuard !== false,
    delete_guard_percent: e.deleteGuard ? e.deleteGuard.maxPercent : undefined,
    delete_guard_rows: e.deleteGuard ? e.deleteGuard.maxRows : undefined,
  };
  return Object.fromEntries(Object.entries(all).filter(([, v]) => v !== undefined)) as Record<string, string | number | boolean>;
}

/** The row of one entity; `dependsOn` is its list with "auto" resolved (resolveDependsOn). */
export function entityRow(name: string, e: EntityConfig, cfg: Config, dependsOn: string[]): EntityRow {
  const target = e.target as { schema: string; table: string };
  return {
    name,
    source: e.source,
    direction: e.direction,
    mode: e.mode,
    target_schema: target.schema,
    target_table: target.table,
    key_columns: e.key,
    tenant_column: e.tenant?.column ?? null,
    tenant_value: e.tenant?.value ?? null,
    cursor_column: e.cursor?.column ?? null,
    cursor_overlap: e.cursor?.overlap === undefined ? null : String(e.cursor.overlap),
    soft_delete_column: e.softDelete?.column ?? null,
    tombstone_column: e.deletedWhen?.column ?? null,
    depends_on: dependsOn,
    schedule: e.schedule ?? null,
    enabled: e.enabled,
    // Secrets written in an entity stay in the config file (see stored.ts).
    // The runs read dependsOn from the definition too: it holds the names.
    definition: { ...storedDefinition(cfg, e), dependsOn },
  };
}

export interface EntityDiff {
  name: string;
  action: 'add' | 'change' | 'remove';
  fields: { field: string; before: unknown; after: unknown }[];
}

/** Canonical JSON (sorted keys) so jsonb read back compares equal to what we wrote. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(v ?? null);
}

/**
 * What applying the config would change in sync.entity. "dependsOn": "auto"
 * is resolved from the target tables' foreign keys as they are now (a cycle
 * throws a DependsOnError, a config error).
 */
export async function diffConfig(db: Pool | PoolClient, cfg: Config): Promise<EntityDiff[]> {
  return (await compare(db, cfg)).diffs;
}

async function compare(db: Pool | PoolClient, cfg: Config): Promise<{ diffs: EntityDiff[]; wanted: Map<string, EntityRow> }> {
  const { names } = await resolveDependsOn(db, cfg);
  const { rows } = await db.query<EntityRow>(`select ${['name', ...COMPARED].join(', ')} from sync.entity order by name`);
  const current = new Map(rows.map((r) => [r.name, r]));
  const diffs: EntityDiff[] = [];
  const wanted = new Map<string, EntityRow>();
  for (const [name, e] of Object.entries(cfg.entities)) {
    const want = entityRow(name, e, cfg, names[name]);
    wanted.set(name, want);
    const have = current.get(name);
    if (!have) {
      diffs.push({ name, action: 'add', fields: [] });
      continue;
    }
    const fields = COMPARED.filter((f) => canonical(have[f]) !== canonical(want[f]))
      .map((f) => ({ field: f, before: have[f], after: want[f] }));
    if (fields.length) diffs.push({ name, action: 'change', fields });
  }
  for (const name of current.keys()) {
    if (!Object.hasOwn(cfg.entities, name)) diffs.push({ name, action: 'remove', fields: [] });
  }
  return { diffs, wanted };
}

export function formatDiff(diffs: EntityDiff[]): string {
  if (!diffs.length) return 'sync.entity already matches the config: nothing to apply.';
  return diffs.map((d) => {
    if (d.action === 'add') return `+ ${d.name}`;
    if (d.action === 'remove') return `- ${d.name} (its run history stays in sync.run)`;
    const fields = d.fields.filter((f) => f.field !== 'definition' || d.fields.length === 1);
    return [`~ ${d.name}`, ...fields.flatMap((f) => (f.field === 'definition'
      ? definitionChanges(f.before, f.after) : [`    ${f.field}: ${shown(f.before)} → ${shown(f.after)}`]))].join('\n');
  }).join('\n');
}

// A value longer than this is cut in the middle, where the change is rarely.
const SHOWN_CHARS = 160;

function shown(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v ?? null);
  return s.length > SHOWN_CHARS ? `${s.slice(0, SHOWN_CHARS / 2 - 1)}…${s.slice(-SHOWN_CHARS / 2)}` : s;
}

/** The keys of an entity definition that differ, one line each (nested keys by path). */
function definitionChanges(before: unknown, after: unknown, at = 'definition'): string[] {
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (!isObject(before) || !isObject(after)) return canonical(before) === canonical(after) ? [] : [`    ${at}: ${shown(before)} → ${shown(after)}`];
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  return keys.flatMap((k) => definitionChanges(before[k], after[k], `${at}.${k}`));
}

/**
 * Writes the config's entities into sync.entity in one transaction and
 * returns what changed. Unchanged rows are not touched, so re-applying is a
 * no-op; a changed cursor column resets the stored cursor. `keepOthers`
 * leaves entities the config does not have in place.
 */
export async function applyConfig(pool: Pool, cfg: Config, opts: { keepOthers?: boolean } = {}): Promise<EntityDiff[]> {
  return inTransaction(pool, async (c) => {
    await c.query('lock table sync.entity in share row exclusive mode');
    const { diffs: all, wanted } = await compare(c, cfg);
    const diffs = all.filter((d) => !opts.keepOthers || d.action !== 'remove');
    for (const d of diffs) {
      if (d.action === 'remove') {
        await c.query('delete from sync.entity where name = $1', [d.name]);
        continue;
      }
      const row = wanted.get(d.name)!;
      await c.query(
        `insert into sync.entity as e (name, ${COMPARED.join(', ')})
         values ($1, ${COMPARED.map((_, i) => `$${i + 2}`).join(', ')})
         on conflict (name) do update set ${COMPARED.map((f) => `${f} = excluded.${f}`).join(', ')},
           cursor_value = case when e.cursor_column is distinct from excluded.cursor_column then null else e.cursor_value end,
           sync_interval = case when excluded.schedule is not null then null else e.sync_interval end,
           updated_at = now()`,
        [row.name, ...COMPARED.map((f) => (f === 'definition' ? JSON.stringify(row[f]) : row[f]))],
      );
      await applyTunables(c, d.name, entityTunables(cfg.entities[d.name]));
    }
    if (cfg.retention) {
      await c.query(`update sync.setting set value = $1 where name = 'retention' and value::interval <> $1::interval`, [cfg.retention]);
    }
    return diffs;
  });
}

/** Writes the tunables the config sets; the database's validation trigger has the last word. */
async function applyTunables(c: PoolClient, name: string, tunables: Record<string, string | number | boolean>): Promise<void> {
  const cols = Object.keys(tunables);
  if (!cols.length) return;
  // A schedule from the config replaces an interval set in SQL, and the other way round.
  const other = 'sync_interval' in tunables ? ', schedule = null' : '';
  await c.query(
    `update sync.entity set ${cols.map((k, i) => `${k} = $${i + 2}`).join(', ')}${other} where name = $1
        and (${cols.map((k, i) => `${k} is distinct from $${i + 2}`).join(' or ')})`,
    [name, ...cols.map((k) => tunables[k])]);
}
