/**
 * Reads an entity's changes from its slot into the run's staging table.
 *
 * The changes are peeked (pg_logical_slot_peek_binary_changes), not
 * consumed: the slot moves only after the merge that applied them committed
 * (confirmSlot), so a run killed at any moment reads them again. A
 * transaction that committed before the applied position was applied by an
 * earlier run whose confirmation never reached the source: it is skipped.
 *
 * Each change is one COPY line in commit order (_sl_seq): the row's values
 * (text, as the source printed them), whether it is a delete, and the
 * columns an update left out (unchanged TOASTed values). sync.log_prepare
 * makes one state a key of them in SQL.
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import type { EntityConfig } from '../../../config/schema.js';
import { copyLine } from '../../../db/copy.js';
import { quoteIdent } from '../../../db/database.js';
import type { Pool, PoolClient } from '../../../db/pool.js';
import { TEXT_SETTINGS } from '../../buckets.js';
import { decode, lsnValue, UNCHANGED, type Relation, type Value } from './pgoutput.js';
import { slotFree, tableSql } from './slot.js';

/** Messages fetched from the server at a time. */
const FETCH = 5000;

/** A schema change the synced columns cannot go on through. */
export class LogSchemaError extends Error {}

export interface LogRead {
  /** Changes staged. */
  rows: number;
  /** The position the target holds once these changes merged. */
  to: string;
  /** Commit time of the last transaction read. */
  commitAt: string | null;
  /** Everything committed before `to` was read: `readAt` bounds the lag. */
  caughtUp: boolean;
  readAt: string;
  sourceLsn: string;
  /** The _sl_seq of the last truncate of the table, when there was one. */
  truncatedSeq: number | null;
  /** The table's columns as the log last described them (null: no change of it was read). */
  columns: LogColumn[] | null;
}

export interface LogColumn { name: string; typeOid: number; key: boolean }

export interface ReadChanges {
  pool: Pool;
  slot: string;
  publication: string;
  /** The source table's oid: the log names relations by it (a table dropped and created again is another one). */
  relid: number;
  def: EntityConfig;
  sourceColumns: string[];
  targetColumns: string[];
  /** The position the target holds: transactions that committed before it are in already. */
  applied: string;
  target: PoolClient;
  into: string;
  maxChanges: number;
  signal?: AbortSignal;
  onRows?: (rows: number) => void;
}

const lit = (v: string) => pg.escapeLiteral(v);

/** Stages the changes since `applied` (at most about maxChanges, in whole transactions). */
export async function stageChanges(args: ReadChanges): Promise<LogRead> {
  await slotFree(args.pool, args.slot);
  const client = await args.pool.connect();
  let broken = false;
  try {
    // The end position first, then the snapshot (repeatable read: one for the
    // whole read): a value read from the table is that of the read's last
    // change or of a later one (fillFromSource).
    const { rows: [now] } = await client.query('select pg_current_wal_flush_lsn()::text as lsn, now() as at');
    await client.query('begin transaction isolation level repeatable read read only');
    await client.query(TEXT_SETTINGS);
    await client.query(`declare changes no scroll cursor for
      select data from pg_logical_slot_peek_binary_changes(${lit(args.slot)}, ${lit(now.lsn)}::pg_lsn, ${args.maxChanges},
                                                           'proto_version', '1', 'publication_names', ${lit(args.publication)})`);
    const state = new ChangeLines(args);
    const columns = [...args.targetColumns, '_sl_deleted', '_sl_seq', '_sl_unchanged'].map(quoteIdent).join(', ');
    const into = args.target.query(copyFrom(`copy ${args.into} (${columns}) from stdin`));
    const lines = Readable.from((async function* () {
      for (;;) {
        const { rows } = await client.query<{ data: Buffer }>(`fetch ${FETCH} from changes`);
        const chunk = rows.map((r) => state.add(r.data)).join('');
        if (chunk) yield chunk;
        args.onRows?.(state.seq);
        if (rows.length < FETCH) return;
      }
    })());
    if (args.signal) await pipeline(lines, into, { signal: args.signal });
    else await pipeline(lines, into);
    // Only a read with an update that left a TOASTed value out can need it.
    if (state.unchangedLines) await fillFromSource(client, args);
    await client.query('rollback');
    const caughtUp = state.messages < args.maxChanges;
    const to = caughtUp ? maxLsn(now.lsn, state.lastEnd ?? args.applied) : state.lastEnd ?? args.applied;
    return {
      rows: state.seq, to: maxLsn(to, args.applied), commitAt: state.commitAt, caughtUp, readAt: new Date(now.at).toISOString(),
      sourceLsn: now.lsn, truncatedSeq: state.truncatedSeq, columns: state.columns,
    };
  } catch (err) {
    broken = true;
    throw err;
  } finally {
    client.release(broken ? true : undefined);
  }
}

// Keys looked up on the source at a time.
const FILL_BATCH = 1000;

/**
 * A key's latest change can leave a TOASTed value out ("unchanged") where
 * neither this read nor the target has it: the update changed the row's
 * key, or moved it into the entity's tenant, or the key was deleted earlier
 * in the read (so a target row of that key is an older one). Those values
 * are read from the source table in the read's snapshot, taken after its
 * end position: the value of that change or of a later one, which a later
 * run applies anyway. Any other unchanged value sync.log_prepare takes from
 * the read or the target.
 */
async function fillFromSource(source: pg.ClientBase, args: ReadChanges): Promise<void> {
  const { def, into, target } = args;
  const key = def.key.map(quoteIdent);
  const on = (a: string, b: string) => key.map((k) => `${a}.${k} is not distinct from ${b}.${k}`).join(' and ');
  const t = def.target as { schema: string; table: string };
  const scope = def.tenant ? ` and t.${quoteIdent(def.tenant.column)} = ${lit(def.tenant.value)}` : '';
  const { rows } = await target.query<{ seq: string; cols: string[]; key: (string | null)[] }>(
    `select l._sl_seq::text as seq, l._sl_unchanged as cols, array[${key.map((k) => `l.${k}::text`).join(', ')}] as key
       from (select distinct on (${key.join(', ')}) * from ${into} order by ${key.join(', ')}, _sl_seq desc) l
      where not l._sl_deleted and cardinality(l._sl_unchanged) > 0
        and (not exists (select 1 from ${quoteIdent(t.schema)}.${quoteIdent(t.table)} t where ${on('t', 'l')}${scope})
             or exists (select 1 from ${into} d where ${on('d', 'l')} and d._sl_deleted and d._sl_seq < l._sl_seq))`);
  if (!rows.length) return;
  const columns = [...new Set(rows.flatMap((r) => r.cols))];
  const sourceOf = (c: string) => quoteIdent(args.sourceColumns[args.targetColumns.indexOf(c)]);
  const rel = tableSql(def);
  const keySource = def.key.map(sourceOf);
  const { rows: types } = await target.query<{ name: string; type: string }>(
    `select attname as name, format_type(atttypid, atttypmod) as type from pg_attribute
      where attrelid = $1::regclass and attname = any($2) and not attisdropped`, [into, columns]);
  const typeOf = new Map(types.map((r) => [r.name, r.type]));
  for (let i = 0; i < rows.length; i += FILL_BATCH) {
    const batch = rows.slice(i, i + FILL_BATCH);
    // The keys as the source's own columns, typed by its row type (so its key index finds them).
    const keys = batch.map((r) => Object.fromEntries([['_sl_seq', r.seq], ...def.key.map((k, j) => [args.sourceColumns[args.targetColumns.indexOf(k)], r.key[j]])]));
    const { rows: found } = await source.query(
      `select k.e ->> '_sl_seq' as "_sl_seq", ${columns.map((c) => `t.${sourceOf(c)}::text as ${quoteIdent(c)}`).join(', ')}
         from jsonb_array_elements($1::jsonb) k(e), lateral jsonb_populate_record(null::${rel}, k.e) r
         join ${rel} t on ${keySource.map((c) => `t.${c} = r.${c}`).join(' and ')}`, [JSON.stringify(keys)]);
    if (!found.length) continue;
    await target.query(
      `update ${into} s set ${columns.map((c) => `${quoteIdent(c)} = case when ${lit(c)} = any (s._sl_unchanged) then v.${quoteIdent(c)}::${typeOf.get(c)} else s.${quoteIdent(c)} end`).join(', ')},
              _sl_unchanged = null
         from jsonb_to_recordset($1::jsonb) v("_sl_seq" bigint, ${columns.map((c) => `${quoteIdent(c)} text`).join(', ')})
        where s._sl_seq = v._sl_seq`, [JSON.stringify(found)]);
  }
}

const maxLsn = (a: string, b: string) => (lsnValue(a) >= lsnValue(b) ? a : b);

/** Turns pgoutput messages into COPY lines of the staging table. */
class ChangeLines {
  seq = 0;
  messages = 0;
  /** Lines of updates that left a TOASTed value out. */
  unchangedLines = 0;
  lastEnd: string | null = null;
  commitAt: string | null = null;
  truncatedSeq: number | null = null;
  columns: LogColumn[] | null = null;
  private relId: number | null = null;
  /** For each target column, its column's position in the log's tuples. */
  private positions: number[] = [];
  private keyPositions: number[] = [];
  private skip = false;
  private readonly applied: bigint;

  constructor(private args: ReadChanges) {
    this.applied = lsnValue(args.applied);
  }

  add(data: Buffer): string {
    this.messages++;
    const m = decode(data);
    switch (m.tag) {
      case 'begin':
        // Committed before the applied position: applied already.
        this.skip = lsnValue(m.commitLsn) < this.applied;
        return '';
      case 'commit':
        this.lastEnd = m.endLsn;
        if (!this.skip) this.commitAt = m.commitTime.toISOString();
        return '';
      case 'relation':
        if (m.relation.id === this.args.relid) this.described(m.relation);
        return '';
      case 'insert':
        return this.mine(m.relation) ? this.line(m.values, false) : '';
      case 'update': {
        if (!this.mine(m.relation)) return '';
        // The key changed: the old key's row goes.
        const moved = m.old && this.keyPositions.some((p) => m.old![p] !== m.values[p] && m.old![p] !== UNCHANGED);
        return (moved ? this.line(m.old!, true) : '') + this.line(m.values, false);
      }
      case 'delete':
        return this.mine(m.relation) ? this.line(m.old, true) : '';
      case 'truncate':
        if (!this.skip && this.relId !== null && m.relations.includes(this.relId)) this.truncatedSeq = ++this.seq;
        return '';
      default:
        return '';
    }
  }

  private mine(relation: number): boolean {
    return !this.skip && relation === this.relId;
  }

  private described(r: Relation): void {
    const names = r.columns.map((c) => c.name);
    const missing = this.args.sourceColumns.filter((c) => !names.includes(c));
    if (missing.length) {
      throw new LogSchemaError(`the source table ${r.schema}.${r.table} no longer has the column(s) ${missing.join(', ')} the entity syncs`);
    }
    this.relId = r.id;
    this.positions = this.args.sourceColumns.map((c) => names.indexOf(c));
    this.keyPositions = this.args.def.key.map((k) => this.positions[this.args.targetColumns.indexOf(k)]);
    this.columns = r.columns.map((c) => ({ name: c.name, typeOid: c.typeOid, key: c.key }));
  }

  private line(values: Value[], deleted: boolean): string {
    const unchanged: string[] = [];
    const row = this.positions.map((p, i) => {
      const v = values[p];
      if (v === UNCHANGED) { unchanged.push(this.args.targetColumns[i]); return null; }
      return v ?? null;
    });
    if (unchanged.length) this.unchangedLines++;
    const list = unchanged.length ? `{${unchanged.map((c) => `"${c.replace(/["\\]/g, '\\$&')}"`).join(',')}}` : null;
    return copyLine([...row, deleted ? 't' : 'f', ++this.seq, list]);
  }
}
