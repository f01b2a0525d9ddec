/**
 * The csv source kind: a file (a path or a URL) that PostgreSQL parses with
 * COPY … (FORMAT csv), typed, into the run's staging or straight into an
 * empty target (copy.ts). A file COPY rejects, or reads otherwise than the
 * JavaScript parser, is read record by record into text staging instead,
 * typed by sync.cast_raw: a line the parser cannot read is quarantined with
 * its line number; line endings that change midway make the snapshot
 * doubtful. sync.run.detail.parse says which ("copy" or "javascript", with
 * parse_reason).
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { CsvSourceConfig, EntityConfig } from '../../config/schema.js';
import { quoteIdent } from '../../db/database.js';
import { inClientTransaction, type PoolClient } from '../../db/pool.js';
import type { PlannedRun, SourceKind, StageRun, Staged } from '../port.js';
import { stageFileRecords } from '../file-staging.js';
import { fileLocation } from '../files.js';
import { copyCsv, copyOptions, CopyRejected, readHead, type CsvCopy } from './copy.js';
import { openCsv, openCsvBytes, parserOptions, resolveMapping, type CsvReader } from './read.js';

export const csvSource: SourceKind = {
  async columns(env, _name, def) {
    const src = env.config.sources[def.source] as CsvSourceConfig;
    const ctl = new AbortController();
    const reader = await openCsv(src, def, def.key, env.configDir, ctl.signal);
    ctl.abort(new Error('checked'));
    return reader.header.length;
  },

  readsKeys: () => true,

  /** Read the header (before the run opens); the records are COPYed or read when the run stages them. */
  async plan({ env, def, targetColumns }) {
    const src = env.config.sources[def.source] as CsvSourceConfig;
    const writable = (await targetColumns()).map((c) => c.attname);
    const reading = new AbortController();
    const head = await readHead(await openCsvBytes(src, def, env.configDir, reading.signal), src, parserOptions(src));
    const options = copyOptions(src);
    const file = (def.from as { file: string }).file;
    const open = { src, def, writable, configDir: env.configDir, reading };
    if (!head.header) return javascriptPlan(open, await openCsv(src, def, writable, env.configDir, reading.signal, head.bytes), 'the file does not start with a header row');
    if ('reason' in options) return javascriptPlan(open, await openCsv(src, def, writable, env.configDir, reading.signal, head.bytes), options.reason);
    const header = head.header;
    const mapping = resolveMapping(def, header, writable, file);
    const columns = mapping.map(([t]) => t);
    // The target column each field of the file fills, in file order (none: a field no column reads).
    const fields: (string | undefined)[] = header.map(() => undefined);
    for (const [t, h] of mapping) {
      const at = header.indexOf(h);
      if (fields[at] !== undefined) {
        const reader = await openCsv(src, def, writable, env.configDir, reading.signal, head.bytes);
        return javascriptPlan(open, reader, `the columns ${fields[at]} and ${t} read the same field "${h}"`);
      }
      fields[at] = t;
    }
    let bytes: Readable | undefined = head.bytes;
    // A URL is fetched once a run: its bytes go to COPY and to a spool on disk that a second read takes.
    const remote = /^https?:\/\//.test(fileLocation(src, file, env.configDir));
    let spool: string | undefined;
    let spoolDir: string | undefined;
    // The bytes read for the header go to the first COPY; another reads the file (or its spool) again.
    const take = async (signal: AbortSignal): Promise<{ bytes: Readable; spoolTo?: string }> => {
      if (spool) return { bytes: createReadStream(spool) };
      const b = bytes ?? await openCsvBytes(src, def, env.configDir, signal);
      bytes = undefined;
      if (!remote) return { bytes: b };
      spoolDir = await mkdtemp(path.join(os.tmpdir(), 'syncline-csv-'));
      return { bytes: b, spoolTo: path.join(spoolDir, 'file.csv') };
    };
    const copyFrom = async (run: StageRun, into: CsvCopy, signal: AbortSignal) => {
      const { bytes: b, spoolTo } = await take(signal);
      try {
        return await copyCsv(run.target, into, src, b, signal, progress(run), spoolTo);
      } finally {
        spool = spoolTo ?? spool;
      }
    };
    const cleanUp = async () => {
      if (spoolDir) await rm(spoolDir, { recursive: true, force: true });
      spool = undefined;
      spoolDir = undefined;
    };
    const copy = (table: string, into: string[]): CsvCopy => ({
      table, columns: into, forceNull: columns, encoding: options.encoding, timeZone: src.timeZone });
    let rejected: string | undefined;

    return {
      targetColumns: columns,
      sourceColumns: mapping.map(([, h]) => h),
      sourceKeyUnique: false,
      countable: true,
      async stage(run) {
        if (!rejected) {
          try {
            await run.fetchPhase((signal) => inClientTransaction(run.target, async () => {
              const table = `sync_staging.${quoteIdent(`run_${run.runId}`)}`;
              // Fields no column reads go to columns of their own, dropped after the COPY.
              const into = fields.map((t, i) => t ?? `_sl_skip_${i}`);
              const skipped = into.filter((_, i) => fields[i] === undefined);
              for (const s of skipped) await run.target.query(`alter table ${table} add column ${quoteIdent(s)} text`);
              await copyFrom(run, copy(table, into), signal);
              for (const s of skipped) await run.target.query(`alter table ${table} drop column ${quoteIdent(s)}`);
              await recordParse(run.target, run.runId, 'copy');
            }));
            await cleanUp();
            return {};
          } catch (err) {
            if (!(err instanceof CopyRejected)) { await cleanUp(); throw err; }
            rejected = err.message;
          }
        }
        try {
          const reader = await openCsv(src, def, writable, env.configDir, reading.signal, spool ? createReadStream(spool) : bytes);
          bytes = undefined;
          if (JSON.stringify(reader.mapping) !== JSON.stringify(mapping)) {
            throw new Error(`${file} changed while it was read (its header is now ${reader.header.join(', ')}) — run the sync again`);
          }
          return await stageJavascript(run, open, reader, `COPY did not take the file: ${rejected}`);
        } finally {
          await cleanUp();
        }
      },
      // Straight into an empty target: only when every field of the file fills a column.
      copyInto: fields.every((t) => t !== undefined) ? async (run, table) => {
        try {
          const copied = await run.fetchPhase(async (signal) => {
            const n = await copyFrom(run, copy(table, fields as string[]), signal);
            await recordParse(run.target, run.runId, 'copy');
            return n;
          });
          await cleanUp();
          return copied;
        } catch (err) {
          if (!(err instanceof CopyRejected)) { await cleanUp(); throw err; }
          // A repeated or null key: the staging path COPYs again and the merge quarantines those rows.
          if (err.constraint) throw err.cause;
          rejected = err.message;
          throw Object.assign(new Error(`COPY did not take the file (${err.message}); the JavaScript parser reads it`), { code: 'SL001' });
        }
      } : undefined,
    };
  },
};

interface Open {
  src: CsvSourceConfig;
  def: EntityConfig;
  writable: string[];
  configDir: string;
  reading: AbortController;
}

/** A run whose file the JavaScript parser reads. */
function javascriptPlan(open: Open, reader: CsvReader, reason: string): PlannedRun {
  return {
    targetColumns: reader.mapping.map(([t]) => t),
    sourceColumns: reader.mapping.map(([, h]) => h),
    sourceKeyUnique: false,
    countable: true,
    stage: (run) => stageJavascript(run, open, reader, reason),
  };
}

/** COPY the records as text into the run's text staging; sync.cast_raw types them, quarantining what its column type rejects. */
async function stageJavascript(run: StageRun, open: Open, reader: CsvReader, reason: string): Promise<Staged> {
  await recordParse(run.target, run.runId, 'javascript', reason);
  const columns = reader.mapping.map(([t]) => t);
  const none = columns.map(() => null);
  await stageFileRecords(run, {
    columns, reading: open.reading, doubts: () => reader.doubts(),
    records: (async function* () {
      for await (const r of reader.records) {
        yield r.error ? { line: r.line, values: none, raw: r.raw, error: r.error }
          : { line: r.line, values: r.values, raw: { line: r.line, record: r.raw } };
      }
    })(),
  });
  return { cast: { timeZone: open.src.timeZone, keepLast: false } };
}

function progress(run: StageRun): (rows: number, bytes: number) => void {
  return (rows, bytes) => run.opts.onProgress?.({ entity: run.name, runId: run.runId, phase: 'fetch', rows, bytes });
}

/** Which parser read the file (sync.run.detail.parse), and why not COPY. */
async function recordParse(target: PoolClient, runId: number, parse: 'copy' | 'javascript', reason?: string): Promise<void> {
  await target.query(`update sync.run set detail = detail || jsonb_strip_nulls(jsonb_build_object('parse', $2::text, 'parse_reason', $3::text))
     where id = $1`, [runId, parse, reason ?? null]);
}
