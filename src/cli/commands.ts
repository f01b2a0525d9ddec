import { orphanedSlots, setupLogCapture } from './capture.js';
import { applyConfig, diffConfig, formatDiff } from '../config/apply.js';
import { maskSecrets } from '../config/load.js';
import { formatDependsOn, resolveForShow } from '../config/depends-on.js';
import { runMany, exitCode } from '../engine/plan.js';
import { prepareDemo } from '../demo/seed.js';
import { EXIT, openSession, readConfig, UsageError, type GlobalOptions, type Session } from './context.js';
import { makeChunkReporter, makeReporter } from './progress.js';
import { BackfillInputError, checkBackfillRange, enqueueBackfill, runBackfill } from '../engine/backfill.js';
import { summary, withRunSeconds } from '../engine/summary.js';

async function withSession<T>(opts: GlobalOptions, fn: (s: Session) => Promise<T>): Promise<T> {
  const s = await openSession(opts);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

export function configValidate(opts: GlobalOptions): number {
  const cfg = readConfig(opts);
  const entities = Object.keys(cfg.entities);
  process.stdout.write(`${opts.config ?? 'syncline.config.json'} is valid: ${Object.keys(cfg.sources).length} source(s), `
    + `${entities.length} entit${entities.length === 1 ? 'y' : 'ies'} (${entities.join(', ')})\n`);
  return EXIT.ok;
}

export async function configShow(opts: GlobalOptions): Promise<number> {
  const cfg = readConfig(opts);
  process.stdout.write(`${JSON.stringify(maskSecrets(cfg), null, 2)}\n`);
  // The dependencies and run order go to stderr: stdout stays the config's JSON, for jq or a file.
  process.stderr.write(formatDependsOn(cfg, await resolveForShow(cfg)));
  return EXIT.ok;
}

export async function configApply(opts: GlobalOptions & { dryRun?: boolean }): Promise<number> {
  return withSession(opts, async (s) => {
    // Read before the apply removes them.
    const orphans = await orphanedSlots(s);
    const diffs = opts.dryRun ? await diffConfig(s.pool, s.config) : await applyConfig(s.pool, s.config);
    process.stdout.write(`${formatDiff(diffs)}\n`);
    if (opts.dryRun && diffs.length) process.stdout.write('(dry run: nothing applied)\n');
    const lines = [...(opts.dryRun ? [] : await setupLogCapture(s)), ...orphans];
    if (lines.length) process.stdout.write(`${lines.join('\n')}\n`);
    return EXIT.ok;
  });
}

// `check` lives in its own file.
export { check } from './check.js';

export interface SyncOptions extends GlobalOptions {
  tables?: string;
  dryRun?: boolean;
  full?: boolean;
  verbose?: boolean;
  confirmDeletes?: boolean;
}

/**
 * Runs use the config given: its new and changed entities are applied
 * first, printed as `config apply` prints them. Entities the config does not
 * have stay (only `config apply` removes them), with a note.
 */
async function applyBeforeRuns(s: Session, verb: string): Promise<void> {
  const applied = await applyConfig(s.pool, s.config, { keepOthers: true });
  if (applied.length) process.stderr.write(`applied the config to sync.entity:\n${formatDiff(applied).replace(/^/gm, '  ')}\n`);
  const { rows } = await s.pool.query<{ name: string }>(
    'select name from sync.entity where not (name = any($1)) order by name', [Object.keys(s.config.entities)]);
  if (rows.length) {
    process.stderr.write(`note: sync.entity also has ${rows.map((r) => r.name).join(', ')}, which this config does not define: `
      + `\`${verb}\` leaves them be, \`config apply\` removes them\n`);
  }
}

export async function sync(entities: string[], opts: SyncOptions): Promise<number> {
  const selected = [...entities, ...(opts.tables ? opts.tables.split(',').map((t) => t.trim()).filter(Boolean) : [])];
  return withSession(opts, async (s) => {
    await prepareDemo(s.db.url, s.config, Boolean(s.db.embedded));
    await applyBeforeRuns(s, 'sync');
    // Push entities run in the edge cycle (`syncline edge`), not here.
    const mine = Object.entries(s.config.entities).filter(([, e]) => e.enabled && e.direction === 'pull').map(([n]) => n);
    const names = selected.length ? selected : mine;
    if (!names.length) throw new UsageError('no entities to sync — define some in the config');
    const { rows } = await s.pool.query<{ name: string; fetched: number | null }>(
      `select e.name, (select r.fetched from sync.run r where r.entity = e.name and r.fetched is not null
                        order by r.id desc limit 1) as fetched
         from sync.entity e where e.name = any($1) order by e.name`, [names]);
    const known = new Set((await s.pool.query<{ name: string }>('select name from sync.entity')).rows.map((r) => r.name));
    const unknown = names.filter((n) => !known.has(n));
    if (unknown.length) {
      throw new UsageError(`unknown entit${unknown.length > 1 ? 'ies' : 'y'} ${unknown.map((u) => `"${u}"`).join(', ')} — `
        + `the config defines: ${Object.keys(s.config.entities).sort().join(', ') || '(none)'}`);
    }
    const expected = new Map(rows.map((r) => [r.name, r.fetched]));
    const reporter = makeReporter();
    const started = new Set<string>();
    let results;
    try {
      results = await runMany(s.engine, names, {
        trigger: 'manual', dryRun: opts.dryRun, full: opts.full, confirmDeletes: opts.confirmDeletes,
        onProgress: (p) => {
          if (!started.has(p.entity)) {
            started.add(p.entity);
            reporter.start(p.entity, expected.get(p.entity) ?? null);
          }
          reporter.progress(p);
        },
      });
      // Each run's own seconds, from sync.run: not the time to the end of the command.
      results = await withRunSeconds(s.pool, results);
      for (const r of results) reporter.finish(r);
    } finally {
      reporter.close();
    }
    if (opts.dryRun || opts.verbose) {
      for (const r of results) {
        if (!r.runId) continue;
        if (opts.dryRun && r.sample?.length) {
          process.stdout.write(`  ${r.entity}: sample of the changes (dry run: nothing was written)\n`);
          for (const c of r.sample) {
            process.stdout.write(`    ${c.action.padEnd(6)} ${JSON.stringify(c.key)}${c.changed ? ` changed: ${c.changed.join(', ')}` : ''}\n`);
          }
        }
        if (opts.verbose) {
          const run = await s.pool.query('select phases, cursor_before, cursor_after from sync.run where id = $1', [r.runId]);
          const x = run.rows[0];
          process.stdout.write(`  ${r.entity}: phases ${JSON.stringify(x.phases)}, cursor ${x.cursor_before ?? '∅'} → ${x.cursor_after ?? '∅'}\n`);
        }
      }
    }
    return exitCode(results);
  });
}

// `status` lives with the other health verbs.
export { status } from './health.js';

export interface BackfillCliOptions extends GlobalOptions {
  from: string;
  to: string;
  chunk?: string;
  enqueue?: boolean;
}

/** `backfill <entity> --from --to`: chunk runs now with a progress bar, or handed to the worker with --enqueue. */
export async function backfill(entity: string, opts: BackfillCliOptions): Promise<number> {
  return withSession(opts, async (s) => {
    await applyBeforeRuns(s, 'backfill');
    const o = { from: opts.from, to: opts.to, chunk: opts.chunk };
    // A bad range is the caller's to fix (exit 2), found before any source is read.
    try {
      await checkBackfillRange(s.engine, entity, o);
    } catch (err) {
      if (err instanceof BackfillInputError) throw new UsageError(err.message, { cause: err });
      throw err;
    }
    if (opts.enqueue) {
      const n = await enqueueBackfill(s.engine, entity, o);
      process.stdout.write(`enqueued ${n} chunk job(s) for ${entity} on queue sync:${entity}; \`status\` shows progress\n`);
      return EXIT.ok;
    }
    const reporter = makeChunkReporter(entity);
    let results;
    try {
      results = await runBackfill(s.engine, entity, { ...o, onChunk: reporter.chunk });
    } finally {
      reporter.close();
    }
    for (const r of await withRunSeconds(s.pool, results)) process.stdout.write(`${summary(r)}\n`);
    const cursor = (await s.pool.query('select cursor_value from sync.entity where name = $1', [entity])).rows[0]?.cursor_value;
    const code = exitCode(results);
    if (code === EXIT.ok || code === EXIT.partial) {
      process.stdout.write(`backfill of ${entity} done: incremental runs continue from ${cursor ?? '(no rows loaded)'}\n`);
    }
    return code;
  });
}
