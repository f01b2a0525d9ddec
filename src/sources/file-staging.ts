/**
 * Staging a file read record by record (csv, jsonl): batches of records into
 * the run's text staging with COPY, parsing the next batch while the last
 * one is written; sync.cast_raw types them afterwards.
 */
import type { StageRun } from './port.js';
import { RawWriter, type RawRecord } from './raw-writer.js';
import { inClientTransaction } from '../db/pool.js';
import { doubt } from './staging.js';

// Records a COPY: big enough that COPY's overhead vanishes, small enough
// that a refused record is found in one batch.
const BATCH = 5000;

export interface FileRecords {
  /** The target columns the records' values fill, in order. */
  columns: string[];
  records: AsyncIterable<RawRecord>;
  /** Aborted with the run (sync.cancel, shutdown): stops the reading. */
  reading: AbortController;
  /** Why the snapshot may be incomplete, once every record was read. */
  doubts?: () => string[];
}

export async function stageFileRecords({ target, name, def, runId, opts, fetchPhase }: StageRun, file: FileRecords): Promise<void> {
  await fetchPhase(async (signal) => {
    signal.addEventListener('abort', () => file.reading.abort(signal.reason), { once: true });
    const { rows } = await target.query('select sync.create_raw_staging($1) as raw', [runId]);
    const writer = new RawWriter(target, rows[0].raw, file.columns, def.key);
    let count = 0;
    let batch: RawRecord[] = [];
    let writing: Promise<void> = Promise.resolve();
    const flush = async () => {
      const b = batch;
      batch = [];
      await writing;
      writing = inClientTransaction(target, () => writer.write(b));
      opts.onProgress?.({ entity: name, runId, phase: 'fetch', rows: count, bytes: 0 });
    };
    for await (const r of file.records) {
      count += 1;
      batch.push(r);
      if (batch.length >= BATCH) await flush();
    }
    await flush();
    await writing;
    for (const d of file.doubts?.() ?? []) await doubt(target, runId, d);
  });
}
