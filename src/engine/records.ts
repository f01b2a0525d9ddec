import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { from as copyFrom } from 'pg-copy-streams';
import type { CsvSourceConfig, EntityConfig } from '../config/schema.js';
import { quoteIdent } from '../db/database.js';
import type { PoolClient } from '../db/pool.js';
import { copyLine, openCsv } from '../sources/csv.js';
import { cancelWatch, CancelledError } from './guards.js';
import { mergeStaging, type MergeResult } from './load.js';
import type { Engine, RunOptions } from './run.js';

/**
 * A run of an entity whose source yields text records (a CSV file): read the
 * header, open the run, COPY the records into the run's text staging, let
 * sync.cast_raw type them (quarantining what its column type rejects), then
 * merge as any other run.
 */
export async function loadCsvRun(args: {
  engine: Engine;
  target: PoolClient;
  name: string;
  def: EntityConfig;
  opts: RunOptions;
  /** Opens the run (sync.start_run) for these target columns; returns its id. */
  start: (columns: string[]) => Promise<number>;
}): Promise<MergeResult> {
  const { engine, target, name, def, opts } = args;
  const src = engine.config.sources[def.source] as CsvSourceConfig;
  const targetColumns = await writableColumns(engine, def);
  const reading = new AbortController();
  const reader = await openCsv(src, def, targetColumns, engine.configDir, reading.signal);
  const columns = reader.mapping.map(([t]) => t);
  const runId = await args.start(columns);
  const watch = cancelWatch(engine.pool, runId, opts.signal);
  watch.signal.addEventListener('abort', () => reading.abort(watch.signal.reason), { once: true });
  const started = Date.now();
  try {
    const { rows } = await target.query('select sync.create_raw_staging($1) as raw', [runId]);
    let count = 0;
    async function* lines() {
      for await (const r of reader.records) {
        count += 1;
        if (count % 1000 === 0) opts.onProgress?.({ entity: name, runId, phase: 'fetch', rows: count, bytes: 0 });
        yield copyLine([r.line, ...r.values, JSON.stringify({ line: r.line, record: r.raw })]);
      }
    }
    await pipeline(Readable.from(lines()), target.query(copyFrom(
      `copy ${rows[0].raw} (_sl_line, ${columns.map(quoteIdent).join(', ')}, _sl_raw) from stdin`)));
    opts.onProgress?.({ entity: name, runId, phase: 'fetch', rows: count, bytes: 0 });
    await recordRejects(target, runId, name, reader.rejects);
  } catch (err) {
    if (watch.signal.aborted) throw new CancelledError(watch.reason());
    throw err;
  } finally {
    watch.stop();
  }
  await target.query(`update sync.run set phases = phases || jsonb_build_object('fetch', $2::int) where id = $1`,
    [runId, Date.now() - started]);
  await target.query('select sync.cast_raw($1, $2)', [runId, src.timeZone ?? null]);
  return mergeStaging({
    engine, target, name, runId, def, opts,
    plan: { targetColumns: columns, sourceColumns: reader.mapping.map(([, h]) => h), sourceKeyUnique: false },
  });
}

/** Target columns a record source may fill (generated columns excluded). */
async function writableColumns(engine: Engine, def: EntityConfig): Promise<string[]> {
  const t = def.target as { schema: string; table: string };
  const { rows } = await engine.pool.query<{ attname: string }>(
    `select a.attname from pg_attribute a
      where a.attrelid = to_regclass(format('%I.%I', $1::text, $2::text)) and a.attnum > 0
        and not a.attisdropped and a.attgenerated = '' order by a.attnum`, [t.schema, t.table]);
  if (!rows.length) throw new Error(`target table ${t.schema}.${t.table} does not exist — create it with your own migration`);
  return rows.map((r) => r.attname);
}

/** Lines the parser could not read: quarantined with their line number, counted as fetched. */
async function recordRejects(target: PoolClient, runId: number, entity: string,
  rejects: { line: number; message: string; raw: string | undefined }[]): Promise<void> {
  if (!rejects.length) return;
  await target.query(
    `with r as (select * from jsonb_to_recordset($3::jsonb) as x(line bigint, message text, raw text))
     insert into sync.run_error (run_id, entity, category, message, payload)
     select $1, $2, 'validation', format('line %s: %s', r.line, r.message), jsonb_build_object('line', r.line, 'text', r.raw) from r`,
    [runId, entity, JSON.stringify(rejects)]);
  await target.query(
    `update sync.run set detail = detail || jsonb_build_object('unkeyed_rejects',
       coalesce((detail ->> 'unkeyed_rejects')::bigint, 0) + $2) where id = $1`, [runId, rejects.length]);
}
