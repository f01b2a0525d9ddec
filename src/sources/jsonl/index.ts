/**
 * The jsonl source kind: a JSON-lines file (a path or a URL), one object a
 * line, read into the run's text staging and typed by sync.cast_raw. A line
 * that is not a JSON object is quarantined with its line number; having no
 * readable key, it makes the snapshot doubtful, so a mirror deletes nothing.
 * The walk-through of "Adding a source" in the README.
 */
import type { JsonlSourceConfig } from '../../config/schema.js';
import type { SourceKind } from '../port.js';
import { RawWriter, type RawRecord } from '../raw-writer.js';
import { inTransaction } from '../staging.js';
import { openJsonl } from './read.js';

// Records a COPY: big enough that COPY's overhead vanishes, small enough
// that a refused record is found in one batch.
const JSONL_BATCH = 5000;

export const jsonlSource: SourceKind = {
  /** The number of fields of the file's first record. */
  async columns(env, _name, def) {
    const src = env.config.sources[def.source] as JsonlSourceConfig;
    const ctl = new AbortController();
    const reader = await openJsonl(src, def, def.key, env.configDir, ctl.signal);
    try {
      for await (const r of reader.records) {
        if (r.error) throw new Error(r.error);
        return Object.keys(r.raw as object).length;
      }
      return 0; // an empty file
    } finally {
      ctl.abort(new Error('checked'));
    }
  },

  readsKeys: () => true,

  async plan({ env, def, targetColumns }) {
    const src = env.config.sources[def.source] as JsonlSourceConfig;
    const writable = (await targetColumns()).map((c) => c.attname);
    const reading = new AbortController();
    const reader = await openJsonl(src, def, writable, env.configDir, reading.signal);
    const columns = reader.mapping.map(([t]) => t);
    return {
      targetColumns: columns,
      sourceColumns: reader.mapping.map(([, f]) => f),
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
          const flush = async () => {
            await inTransaction(target, () => writer.write(batch));
            batch = [];
            opts.onProgress?.({ entity: name, runId, phase: 'fetch', rows: count, bytes: 0 });
          };
          for await (const r of reader.records) {
            count += 1;
            batch.push(r.error ? { line: r.line, values: none, raw: r.raw, error: r.error } : { line: r.line, values: r.values, raw: r.raw });
            if (batch.length >= JSONL_BATCH) await flush();
          }
          await flush();
        });
        return { cast: { timeZone: src.timeZone, keepLast: false } };
      },
    };
  },
};
