/**
 * The csv source kind: a file (a path or a URL) read record by record into
 * the run's text staging, typed by sync.cast_raw. A line the parser cannot
 * read is quarantined with its line number; line endings that change midway
 * make the snapshot doubtful.
 */
import type { CsvSourceConfig } from '../../config/schema.js';
import type { SourceKind } from '../port.js';
import { RawWriter, type RawRecord } from '../raw-writer.js';
import { doubt, inTransaction } from '../staging.js';
import { openCsv } from './read.js';

// CSV records a COPY: big enough that COPY's overhead vanishes, small enough
// that a refused record is found in one batch.
const CSV_BATCH = 5000;

export const csvSource: SourceKind = {
  async columns(env, _name, def) {
    const src = env.config.sources[def.source] as CsvSourceConfig;
    const ctl = new AbortController();
    const reader = await openCsv(src, def, def.key, env.configDir, ctl.signal);
    ctl.abort(new Error('checked'));
    return reader.header.length;
  },

  readsKeys: () => true,

  /**
   * Read the header (before the run opens), then COPY the records into the
   * run's text staging; sync.cast_raw types them, quarantining what its
   * column type rejects.
   */
  async plan({ env, def, targetColumns }) {
    const src = env.config.sources[def.source] as CsvSourceConfig;
    const writable = (await targetColumns()).map((c) => c.attname);
    const reading = new AbortController();
    const reader = await openCsv(src, def, writable, env.configDir, reading.signal);
    const columns = reader.mapping.map(([t]) => t);
    return {
      targetColumns: columns,
      sourceColumns: reader.mapping.map(([, h]) => h),
      sourceKeyUnique: false,
      countable: true,
      async stage({ target, name, runId, opts, fetchPhase }) {
        await fetchPhase(async (signal) => {
          signal.addEventListener('abort', () => reading.abort(signal.reason), { once: true });
          const { rows } = await target.query('select sync.create_raw_staging($1) as raw', [runId]);
          const writer = new RawWriter(target, rows[0].raw, columns, def.key);
          const none = columns.map(() => null);
          let count = 0;
          let batch: RawRecord[] = [];
          // Parsing the next batch overlaps writing the last one.
          let writing: Promise<void> = Promise.resolve();
          const flush = async () => {
            const b = batch;
            batch = [];
            await writing;
            writing = inTransaction(target, () => writer.write(b));
            opts.onProgress?.({ entity: name, runId, phase: 'fetch', rows: count, bytes: 0 });
          };
          for await (const r of reader.records) {
            count += 1;
            batch.push(r.error ? { line: r.line, values: none, raw: r.raw, error: r.error }
              : { line: r.line, values: r.values, raw: { line: r.line, record: r.raw } });
            if (batch.length >= CSV_BATCH) await flush();
          }
          await flush();
          await writing;
          for (const d of reader.doubts()) await doubt(target, runId, d);
        });
        return { cast: { timeZone: src.timeZone, keepLast: false } };
      },
    };
  },
};
