/**
 * The jsonl source kind: a JSON-lines file (a path or a URL), one object a
 * line, read into the run's text staging and typed by sync.cast_raw. A line
 * that is not a JSON object is quarantined with its line number; having no
 * readable key, it makes the snapshot doubtful, so a mirror deletes nothing.
 * The walk-through of "Adding a source" in the README.
 */
import type { JsonlSourceConfig } from '../../config/schema.js';
import type { SourceKind } from '../port.js';
import { stageFileRecords } from '../file-staging.js';
import { openJsonl } from './read.js';

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
      async stage(run) {
        const none = columns.map(() => null);
        await stageFileRecords(run, {
          columns, reading,
          records: (async function* () {
            for await (const r of reader.records) {
              yield r.error ? { line: r.line, values: none, raw: r.raw, error: r.error } : { line: r.line, values: r.values, raw: r.raw };
            }
          })(),
        });
        return { cast: { timeZone: src.timeZone, keepLast: false } };
      },
    };
  },
};
