/**
 * The source side of log capture from the CLI: `config apply` sets up each
 * log entity's publication and says what the source still lacks; `capture
 * drop` removes an entity's slot and publication from its source (a slot
 * nobody reads keeps WAL on the source's disk forever).
 */
import type { EntityConfig, PostgresSourceConfig } from '../config/schema.js';
import { entity as entitySchema } from '../config/schema.js';
import { sourceUrl } from '../sources/postgres/read.js';
import { dropPublication, dropSlot, ensurePublication, logNames, logProblems } from '../sources/postgres/log/slot.js';
import { EXIT, openSession, UsageError, type GlobalOptions, type Session } from './context.js';

/** One line a log entity of the config: its publication set up, or what the source lacks and how to fix it. */
export async function setupLogCapture(s: Session): Promise<string[]> {
  const lines: string[] = [];
  for (const [name, def] of Object.entries(s.config.entities)) {
    if (def.capture !== 'log') continue;
    try {
      const { pool, url } = s.engine.pgSource(def.source);
      const problems = await logProblems(pool, def);
      const did = await ensurePublication(url, name, def);
      lines.push(problems.length ? `✗ ${name}: ${did}, but ${problems.join('; ')}` : `✓ ${name}: ${did}; the first run creates the slot ${logNames(name).slot}`);
    } catch (err) {
      lines.push(`✗ ${name}: ${(err as Error).message}`);
    }
  }
  return lines;
}

/** Log entities in sync.entity that the config no longer has: their slots stay on the source until dropped. */
export async function orphanedSlots(s: Session): Promise<string[]> {
  const { rows } = await s.pool.query<{ name: string; source: string }>(
    `select name, definition ->> 'source' as source from sync.entity
      where definition ->> 'capture' = 'log' and not (name = any ($1)) order by name`, [Object.keys(s.config.entities)]);
  return rows.map((r) => `note: ${r.name} captured changes from the log; its slot ${logNames(r.name).slot} stays on source "${r.source}" `
    + `and keeps WAL there until dropped: syncline capture drop ${r.name}${s.config.entities[r.name] ? '' : ` --source ${r.source}`}`);
}

/** `syncline capture drop <entity> [--source <name>]`. */
export async function captureDrop(entity: string, opts: GlobalOptions & { source?: string }): Promise<number> {
  const s = await openSession(opts);
  try {
    const stored = (await s.pool.query<{ definition: unknown }>('select definition from sync.entity where name = $1', [entity])).rows[0];
    const def: EntityConfig | undefined = s.config.entities[entity] ?? (stored ? entitySchema.parse(stored.definition) : undefined);
    const sourceName = opts.source ?? def?.source;
    if (!sourceName) throw new UsageError(`no entity "${entity}" in the config or sync.entity: name its source with --source <name>`);
    const src = s.config.sources[sourceName];
    if (src?.kind !== 'postgres') throw new UsageError(`source "${sourceName}" is not a postgres source of the config`);
    const url = sourceUrl(src as PostgresSourceConfig, s.db.url);
    const names = logNames(entity);
    const dropped = await dropSlot(url, names.slot);
    await dropPublication(url, entity);
    // The next run, if the entity still captures from the log, takes a new snapshot.
    await s.pool.query('delete from sync.log_capture where entity = $1', [entity]);
    await s.pool.query(`select sync.resolve_alerts($1, array['log_slot_lost', 'log_wal_retained'])`, [entity]);
    process.stdout.write(`${dropped ? `dropped the slot ${names.slot}` : `no slot ${names.slot} on the source`} and the publication ${names.publication} `
      + `on source "${sourceName}"${s.config.entities[entity]?.capture === 'log' ? `; the next run of ${entity} takes a new snapshot` : ''}\n`);
    return EXIT.ok;
  } finally {
    await s.close();
  }
}
