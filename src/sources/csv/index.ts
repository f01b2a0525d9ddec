/**
 * The csv source kind: a file (a path or a URL) read record by record into
 * the run's text staging, typed by sync.cast_raw. A line the parser cannot
 * read is quarantined with its line number; line endings that change midway
 * make the snapshot doubtful.
 */
import type { CsvSourceConfig } from '../../config/schema.js';
import type { SourceKind } from '../port.js';
import { stageFileRecords } from '../file-staging.js';
import { openCsv } from './read.js';

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
      async stage(run) {
        const none = columns.map(() => null);
        await stageFileRecords(run, {
          columns, reading, doubts: () => reader.doubts(),
          records: (async function* () {
            for await (const r of reader.records) {
              yield r.error ? { line: r.line, values: none, raw: r.raw, error: r.error }
                : { line: r.line, values: r.values, raw: { line: r.line, record: r.raw } };
            }
          })(),
        });
        return { cast: { timeZone: src.timeZone, keepLast: false } };
      },
    };
  },
};
