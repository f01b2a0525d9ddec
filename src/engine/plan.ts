import type { EngineContext, RunOptions, RunResult } from './types.js';
import { runWave } from './wave.js';

/**
 * Runs entities as a wave, in this process: each once, in dependency order;
 * an entity whose dependency failed in the wave is skipped with the reason
 * recorded, independent ones carry on; parents that deferred deletes run
 * once more after their dependents, so one wave converges.
 */
export async function runMany(engine: EngineContext, names: string[], opts: RunOptions): Promise<RunResult[]> {
  const { rows } = await engine.pool.query<{ name: string }>('select name from sync.entity');
  const known = new Set(rows.map((r) => r.name));
  const unknown = names.filter((n) => !known.has(n));
  if (unknown.length) {
    throw new Error(`unknown entit${unknown.length > 1 ? 'ies' : 'y'} ${unknown.map((u) => `"${u}"`).join(', ')} — `
      + `known: ${[...known].sort().join(', ') || '(none; run `syncline config apply`)'}`);
  }
  return runWave(engine, [...new Set(names)], opts);
}

/** Process exit code for a set of results: 0 only when every run succeeded. */
export function exitCode(results: RunResult[]): number {
  if (results.some((r) => ['failed', 'cancelled', 'skipped', 'already-running'].includes(r.status))) return 1;
  if (results.some((r) => r.status === 'partial')) return 3;
  return 0;
}
