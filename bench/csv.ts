/**
 * The csv phase: the bench table written as a csv file, loaded by
 * `psql \copy` (the reference), by the csv source into an empty target, and
 * by pgloader; then 1% of the file's rows updated, 0.1% deleted and 0.1%
 * inserted, and the csv source re-syncs it (a file is always read whole).
 */
import { execFileSync } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { pgloaderCsv, psqlCopy, psqlPath, type PeerResult, type Timer } from './peers.js';
import { changeSet, checksum, COLUMNS, DDL } from './workload.js';

const cols = COLUMNS.join(', ');

/** Target tables of the csv phase, created empty (with the bench's PK) in the Syncline database. */
export const CSV_TABLES = { copy: 'csv_copy', sync: 'csv_items', pgloader: 'csv_pgloader' } as const;
/** The source table the changed file is made from (in the source database). */
const CHANGED = 'csv_src';

/** COPY `query` (a table, or a table and its columns) TO a csv file with a header line (what a user's export would be). */
export async function writeCsv(pool: pg.Pool, query: string, file: string, url?: string): Promise<void> {
  // In a psql of its own when there is one: the bench process's high-water
  // RSS (judged against the syncs) should not count the bench's own export.
  const psql = url ? psqlPath() : null;
  if (psql && url) {
    execFileSync(psql, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c',
      `\\copy ${query} to '${file.replace(/'/g, "''")}' with (format csv, header)`], { stdio: ['ignore', 'ignore', 'inherit'] });
    return;
  }
  const c = await pool.connect();
  try {
    await pipeline(c.query(copyTo(`copy ${query} to stdout with (format csv, header)`)), createWriteStream(file));
  } finally {
    c.release();
  }
}

interface RunLike {
  seconds: number;
  run: { inserted: number; updated: number; deleted: number };
}

export interface CsvPhase<S extends RunLike> {
  copy: PeerResult;
  empty: S;
  pgloader: PeerResult;
  changed: S & { change: { updated: number; deleted: number; inserted: number }; verified: boolean };
}

export async function csvPhase<S extends RunLike>(args: {
  time: Timer; src: pg.Pool; sync: pg.Pool; syncUrl: string; file: string; rows: number; entity: string;
  syncRun: (entity: string, table: string, rows: number, full: boolean) => Promise<S>; progress: (msg: string) => void;
}): Promise<CsvPhase<S>> {
  const { time, src, sync, syncUrl, file, rows, entity, syncRun, progress } = args;
  progress('csv: psql \\copy of the file into an empty table');
  const copy = await psqlCopy(time, file, syncUrl, sync, CSV_TABLES.copy, rows);
  progress('csv: the csv source into an empty target');
  const empty = await syncRun(entity, CSV_TABLES.sync, rows, true);
  progress('csv: pgloader LOAD CSV of the file into an empty table');
  const pgloader = await pgloaderCsv(time, file, syncUrl, sync, CSV_TABLES.pgloader, rows);
  progress('csv: 1% / 0.1% / 0.1% changed in the file, re-sync');
  const change = await changeFile(src, file, rows);
  const changed = await syncRun(entity, CSV_TABLES.sync, rows, true);
  const s = (await src.query(checksum(CHANGED))).rows[0];
  const t = (await sync.query(checksum(CSV_TABLES.sync))).rows[0];
  return { copy, empty, pgloader, changed: { ...changed, change, verified: s.n === t.n && s.h === t.h } };
}

/** Rewrites the file with the bench's change set applied, going through a source table (untimed). */
async function changeFile(src: pg.Pool, file: string, rows: number): Promise<{ updated: number; deleted: number; inserted: number }> {
  await src.query(`drop table if exists ${CHANGED}`);
  await src.query(DDL(CHANGED));
  const c = await src.connect();
  try {
    await pipeline(createReadStream(file), c.query(copyFrom(`copy ${CHANGED} (${cols}) from stdin with (format csv, header)`)));
  } finally {
    c.release();
  }
  const cs = changeSet(CHANGED, rows, rows + 1, 0);
  const u = await src.query(cs.update);
  const d = await src.query(cs.delete);
  if (cs.insert) await src.query(cs.insert);
  await writeCsv(src, `${CHANGED} (${cols})`, file);
  return { updated: u.rowCount ?? 0, deleted: d.rowCount ?? 0, inserted: cs.inserts };
}
