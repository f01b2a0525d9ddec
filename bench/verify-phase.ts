/**
 * The verify phase: `syncline verify` of an unchanged table against what
 * it is judged by, `select count(*)` of the source plus the target. The
 * verify feature lands separately; this finds it at run time (an `verify`
 * method on the engine, or a `verifyEntity` export of src/engine/verify.ts)
 * and otherwise reports it as not available in this build.
 */
import type pg from 'pg';
import type { Engine } from '../src/engine/run.js';
import type { Timer } from './peers.js';

type VerifyCall = (entity: string) => Promise<unknown>;

/** The build's verify entry point, or null. The call shape is the lead's to confirm when the feature merges. */
async function findVerify(engine: Engine): Promise<{ how: string; call: VerifyCall } | null> {
  const method = (engine as unknown as Record<string, unknown>).verify;
  if (typeof method === 'function') return { how: 'Engine.verify', call: (entity) => method.call(engine, entity) };
  const mod = await import('../src/engine/verify.js') as Record<string, unknown>;
  const fn = mod.verifyEntity;
  if (typeof fn === 'function') return { how: 'verifyEntity', call: (entity) => fn({ engine, pool: engine.pool, name: entity }) };
  return null;
}

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
  const found = await findVerify(engine);
  if (!found) {
    return { count_seconds: counted.seconds, seconds: null, ratio_to_count: null, how: null, result: null, note: 'verify: not available in this build' };
  }
  const v = await time(() => found.call(entity));
  return {
    count_seconds: counted.seconds, seconds: v.seconds, ratio_to_count: v.seconds / counted.seconds, how: found.how,
    result: summarize(v.value), note: '',
  };
}

/** What verify returned, kept small for the JSON (a long list of keys would swamp it). */
function summarize(value: unknown): unknown {
  const text = JSON.stringify(value ?? null);
  return text.length <= 2000 ? value ?? null : `${text.slice(0, 2000)}…`;
}
