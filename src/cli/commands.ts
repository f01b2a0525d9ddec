import { Edge } from '../edge/edge.js';
import pg from 'pg';
import { applyConfig, diffConfig, formatDiff } from '../config/apply.js';
import { maskSecrets } from '../config/load.js';
import { connectionHint, describeUrl } from '../db/pool.js';
import { runMany, exitCode } from '../engine/plan.js';
import { sourceColumns, sourceConnection, sourceUrl } from '../sources/postgres.js';
import { prepareDemo } from '../demo/seed.js';
import { openCsv } from '../sources/csv.js';
import { httpSourceClient } from '../sources/http/source.js';
import { getPath } from '../sources/http/path.js';
import type { HttpEntityOptions } from '../sources/http/schema.js';
import type { EntityConfig } from '../config/schema.js';
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

export function configShow(opts: GlobalOptions): number {
  process.stdout.write(`${JSON.stringify(maskSecrets(readConfig(opts)), null, 2)}\n`);
  return EXIT.ok;
}

export async function configApply(opts: GlobalOptions & { dryRun?: boolean }): Promise<number> {
  return withSession(opts, async (s) => {
    const diffs = opts.dryRun ? await diffConfig(s.pool, s.config) : await applyConfig(s.pool, s.config);
    process.stdout.write(`${formatDiff(diffs)}\n`);
    if (opts.dryRun && diffs.length) process.stdout.write('(dry run: nothing applied)\n');
    return EXIT.ok;
  });
}

/** Database, every source, every entity's source relation and target table. */
export async function check(opts: GlobalOptions): Promise<number> {
  return withSession(opts, async (s) => {
    await prepareDemo(s.db.url, s.config, Boolean(s.db.embedded));
    let ok = true;
    const line = (good: boolean, text: string) => {
      ok &&= good;
      process.stdout.write(`${good ? '✓' : '✗'} ${text}\n`);
    };
    const v = await s.pool.query('select current_setting($1) as v', ['server_version']);
    line(true, `database ${describeUrl(s.db.url)} (PostgreSQL ${v.rows[0].v}), sync schema migrated`);
    for (const [name, src] of Object.entries(s.config.sources)) {
      if (src.kind !== 'postgres') continue; // a file source is checked through its entities below
      const url = sourceUrl(src, s.db.url);
      // The same read-only session settings as a sync's source connections.
      const c = new pg.Client({ ...sourceConnection(url), connectionTimeoutMillis: 10_000 });
      try {
        await c.connect();
        await c.query('begin transaction read only; select 1; rollback');
        line(true, `source ${name}: ${describeUrl(url)} reachable`);
      } catch (err) {
        line(false, `source ${name}: ${connectionHint(err, url, `source "${name}"`).message}`);
      } finally {
        await c.end().catch(() => {});
      }
    }
    const applied = await s.pool.query<{ name: string }>('select name from sync.entity');
    const appliedNames = new Set(applied.rows.map((r) => r.name));
    const edge = new Edge(s.engine);
    for (const [name, e] of Object.entries(s.config.entities)) {
      if (e.direction === 'push') {
        // Its target is on the remote: the push plan checks both sides.
        await edge.describePush(name, e).then((d) => line(true, `entity ${name}: ${d}`),
          (err) => line(false, `entity ${name}: ${(err as Error).message}`));
        continue;
      }
      const target = e.target as { schema: string; table: string };
      const t = await s.pool.query('select to_regclass(format($$%I.%I$$, $1::text, $2::text)) as r', [target.schema, target.table]);
      if (!t.rows[0].r) {
        line(false, `entity ${name}: target table ${target.schema}.${target.table} does not exist — create it with your migrations`);
        continue;
      }
      const note = appliedNames.has(name) ? '' : ' (not applied yet: run `config apply`)';
      try {
        const cols = await sourceColumnCount(s, e);
        line(true, `entity ${name}: source yields ${cols} columns, target ${target.schema}.${target.table} exists${note}`);
      } catch (err) {
        // A message that already says how to fix it (after " — ") needs no second hint.
        const message = (err as Error).message;
        line(false, `entity ${name}: the source cannot be read: ${message}${message.includes(' — ') ? '' : ' — check "from" in the config'}`);
      }
    }
    await edge.close();
    return ok ? EXIT.ok : EXIT.failed;
  });
}

/** Columns the entity's source yields: a query's result columns, or a CSV file's header fields (read, then closed). */
async function sourceColumnCount(s: Session, e: EntityConfig): Promise<number> {
  const src = s.config.sources[e.source];
  if (src.kind === 'postgres') {
    const { pool, url } = s.engine.pgSource(e.source);
    return (await sourceColumns(pool, url, e)).length;
  }
  if (src.kind === 'http') {
    const http = (e.from as { http: HttpEntityOptions }).http;
    const client = httpSourceClient(e.source, src, s.pool);
    const res = await client.getJson(http.path, http.params);
    const records = getPath(res.body, http.recordsPath ?? (http.pagination.style === 'version' ? 'data' : undefined));
    if (!Array.isArray(records)) throw new Error(`${client.describe(res.url)} answered without a record array at "${http.recordsPath ?? '(the body)'}" — check recordsPath`);
    return Object.keys(records[0] ?? {}).length;
  }
  const ctl = new AbortController();
  const reader = await openCsv(src, e, e.key, s.engine.configDir, ctl.signal);
  ctl.abort(new Error('checked'));
  return reader.header.length;
}

export interface SyncOptions extends GlobalOptions {
  tables?: string;
  dryRun?: boolean;
  full?: boolean;
  verbose?: boolean;
  confirmDeletes?: boolean;
}

export async function sync(entities: string[], opts: SyncOptions): Promise<number> {
  const selected = [...entities, ...(opts.tables ? opts.tables.split(',').map((t) => t.trim()).filter(Boolean) : [])];
  return withSession(opts, async (s) => {
    await prepareDemo(s.db.url, s.config, Boolean(s.db.embedded));
    // Runs use the config given: its new and changed entities are applied
    // first, printed as `config apply` prints them. Entities the config does
    // not have stay (only `config apply` removes them).
    const applied = await applyConfig(s.pool, s.config, { keepOthers: true });
    if (applied.length) process.stderr.write(`applied the config to sync.entity:\n${formatDiff(applied).replace(/^/gm, '  ')}\n`);
    const others = (await diffConfig(s.pool, s.config)).filter((d) => d.action === 'remove').map((d) => d.name);
    if (others.length) {
      process.stderr.write(`note: sync.entity also has ${others.join(', ')}, which this config does not define: `
        + '`sync` leaves them be, `config apply` removes them\n');
    }
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
    await applyConfig(s.pool, s.config, { onlyAdd: true });
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
