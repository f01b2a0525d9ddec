/**
 * The verify phase: `syncline verify` (verifyEntity, what the verb and the
 * sync_verify task run) of an unchanged table against what it is judged by,
 * `select count(*)` of the source plus the target.
 */
import type pg from 'pg';
import type { Engine } from '../src/engine/run.js';
import { verifyEntity } from '../src/engine/verification.js';
import type { Timer } from './peers.js';

export interface VerifyPhase {
  /** `select count(*)` of the source table, then of the target table. */
  count_seconds: number;
  seconds: number | null;
  ratio_to_count: number | null;
  how: string | null;
  result: unknown;
  note: string;
}

export async function verifyPhase(args: { time: Timer; engine: Engine; src: pg.Pool; sync: pg.Pool; entity: string; table: string }): Promise<VerifyPhase> {
  const { time, engine, src, sync, entity, table } = args;
  const counted = await time(async () => {
    await src.query(`select count(*) from ${table}`);
    await sync.query(`select count(*) from ${table}`);
  });
  const v = await time(() => verifyEntity(engine, entity, { requestedBy: 'bench' }));
  const { keys: _keys, ...result } = v.value;
  return {
    count_seconds: counted.seconds, seconds: v.seconds, ratio_to_count: v.seconds / counted.seconds, how: 'verifyEntity',
    result: summarize(result), note: v.value.status === 'equal' ? '' : `verify found differences on an unchanged table: ${v.value.status}`,
  };
}

/** What verify returned, kept small for the JSON (a long list of keys would swamp it). */
function summarize(value: unknown): unknown {
  const text = JSON.stringify(value ?? null);
  return text.length <= 2000 ? value ?? null : `${text.slice(0, 2000)}…`;
}
